/*
 * progress.c — what each backend's current statement has asked of the
 * serving machinery, behind mms.progress: a shared array with one entry per
 * backend (indexed by pgprocno), written by request.c's calls into the verbs
 * below and read by mms_progress_rows(). It does not own the request slots;
 * it only reads the running requests' token counts from them.
 *
 * Protocol: an entry has a single writer, its own backend, which takes no
 * lock. It bumps changecount before and after each change (odd while it
 * writes), as PgBackendStatus does with st_changecount; a reader copies the
 * entry and retries until it saw the same even count on both sides, so it
 * never sees a torn row. Writes are a few stores, never an ERROR, and also
 * run in abort paths.
 *
 * Counting is per top-level statement: the first request set a statement
 * begins (its GetCurrentStatementStartTimestamp() differs from the entry's)
 * zeroes the counts. Nothing runs at statement end: a reader shows an entry
 * while its backend has a request set open, or while pg_stat_activity still
 * shows the same statement running (state active, same query_start). A
 * finished statement's row thus disappears, as pg_stat_progress_* rows do.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "commands/dbcommands.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/acl.h"
#include "utils/backend_status.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "serve.h"

typedef struct MmsProgress
{
	uint32		changecount;	/* odd while its backend writes */
	int			pid;			/* 0: never used */
	Oid			dboid;
	Oid			roleid;			/* who the last request set runs as */
	char		model[NAMEDATALEN];	/* the last model used */
	int32		version;
	int32		n_sets;			/* request sets open now */
	TimestampTz stmt_start;		/* the statement counted */
	TimestampTz first_at;		/* its first request */
	int64		submitted;
	int64		finished;
	int64		failed;			/* errors and cancels */
	int64		tokens;			/* output tokens of its finished requests */
} MmsProgress;

static MmsProgress *progress = NULL;	/* MaxBackends entries */

Size
mms_progress_shmem_size(void)
{
	return mul_size(MaxBackends, sizeof(MmsProgress));
}

void
mms_progress_shmem_init(void)
{
	bool		found;

	progress = ShmemInitStruct("mms progress", mms_progress_shmem_size(), &found);
	if (!found)
		memset(progress, 0, mms_progress_shmem_size());
}

/* This backend's entry; NULL without the preloaded library or outside a regular backend. */
static volatile MmsProgress *
my_entry(void)
{
	if (progress == NULL || MyProc == NULL || MyProc->pgprocno < 0 ||
		MyProc->pgprocno >= MaxBackends)
		return NULL;
	return &progress[MyProc->pgprocno];
}

static inline void
begin_write(volatile MmsProgress *e)
{
	e->changecount++;
	pg_write_barrier();
}

static inline void
end_write(volatile MmsProgress *e)
{
	pg_write_barrier();
	e->changecount++;
}

void
mms_progress_begin(const MmsModel *m, Oid roleid)
{
	volatile MmsProgress *e = my_entry();
	TimestampTz stmt = GetCurrentStatementStartTimestamp();

	if (e == NULL)
		return;
	begin_write(e);
	if (e->pid != MyProcPid)
	{
		e->pid = MyProcPid;
		e->n_sets = 0;
		e->stmt_start = 0;
	}
	if (e->stmt_start != stmt)
	{
		/* a new statement: its counts start from zero */
		e->stmt_start = stmt;
		e->first_at = 0;
		e->submitted = e->finished = e->failed = e->tokens = 0;
	}
	e->dboid = MyDatabaseId;
	e->roleid = roleid;
	strlcpy((char *) e->model, m->name, NAMEDATALEN);
	e->version = m->version;
	e->n_sets++;
	end_write(e);
}

void
mms_progress_added(void)
{
	volatile MmsProgress *e = my_entry();

	if (e == NULL)
		return;
	begin_write(e);
	if (e->first_at == 0)
		e->first_at = GetCurrentTimestamp();
	e->submitted++;
	end_write(e);
}

void
mms_progress_done(bool ok, int32 n_tokens)
{
	volatile MmsProgress *e = my_entry();

	if (e == NULL)
		return;
	begin_write(e);
	if (ok)
		e->finished++;
	else
		e->failed++;
	e->tokens += n_tokens;
	end_write(e);
}

void
mms_progress_end(int n_undone)
{
	volatile MmsProgress *e = my_entry();

	if (e == NULL || e->pid != MyProcPid)
		return;
	begin_write(e);
	e->failed += n_undone;
	if (e->n_sets > 0)
		e->n_sets--;
	end_write(e);
}

/* A consistent copy of entry i (the changecount protocol above). */
static void
read_entry(int i, MmsProgress *out)
{
	volatile MmsProgress *e = &progress[i];

	for (;;)
	{
		uint32		before = e->changecount;
		uint32		after;

		pg_read_barrier();
		memcpy(out, (const MmsProgress *) e, sizeof(MmsProgress));
		pg_read_barrier();
		after = e->changecount;
		if (before == after && (before & 1) == 0)
			return;
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Is the entry's statement still in flight? Its backend must still exist;
 * then either a request set is open or pg_stat_activity (this transaction's
 * snapshot of it) shows the same statement running.
 */
static bool
in_flight(const MmsProgress *e)
{
	int			n = pgstat_fetch_stat_numbackends();

	for (int i = 1; i <= n; i++)
	{
		LocalPgBackendStatus *l = pgstat_fetch_stat_local_beentry(i);
		PgBackendStatus *b;

		if (l == NULL || l->backendStatus.st_procpid != e->pid)
			continue;
		b = &l->backendStatus;
		return e->n_sets > 0 ||
			((b->st_state == STATE_RUNNING || b->st_state == STATE_FASTPATH) &&
			 b->st_activity_start_timestamp == e->stmt_start);
	}
	return false;
}

static Datum
interval_us(int64 us)
{
	Interval   *iv = palloc0(sizeof(Interval));

	iv->time = us;
	return IntervalPGetDatum(iv);
}

PG_FUNCTION_INFO_V1(mms_progress_rows);

/*
 * mms_progress_rows(): one row per backend with a statement in flight that
 * made inference requests. Visible as in pg_stat_activity: a role sees the
 * rows of roles it has the privileges of; superusers, mms_admin and
 * pg_read_all_stats see every row.
 */
Datum
mms_progress_rows(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			me = GetUserId();
	bool		all = mms_is_admin(me) || has_privs_of_role(me, ROLE_PG_READ_ALL_STATS);
	MmsProgress *rows;
	int64	   *running_tokens;
	int32	   *queued;
	int32	   *running;
	TimestampTz now = GetCurrentTimestamp();

	mms_require_serving();
	InitMaterializedSRF(fcinfo, 0);
	rows = palloc(sizeof(MmsProgress) * MaxBackends);
	running_tokens = palloc0(sizeof(int64) * MaxBackends);
	queued = palloc0(sizeof(int32) * MaxBackends);
	running = palloc0(sizeof(int32) * MaxBackends);
	for (int i = 0; i < MaxBackends; i++)
	{
		read_entry(i, &rows[i]);
		if (rows[i].pid != 0 && !in_flight(&rows[i]))
			rows[i].pid = 0;
	}

	/*
	 * Requests in the queues, and running ones' tokens so far: read without
	 * the queue locks, as mms_queue_progress's readers do (a request may be
	 * counted in a state it has just left). A DONE request not yet collected
	 * still counts its tokens, so the sum does not dip before it is collected.
	 */
	for (int i = 0; i < mms_shared->n_slots; i++)
	{
		volatile MmsSlot *s = mms_slot(i);
		MmsSlotState st = s->state;
		int			procno = s->owner_procno;
		int			pid = s->owner_pid;
		/* scoring counts target tokens as it goes: not generated, and never added at the end */
		int32		n_gen = s->kind == MMS_REQ_GENERATE ? s->n_generated : 0;

		if (procno < 0 || procno >= MaxBackends || pid == 0 || rows[procno].pid != pid)
			continue;
		if (st == MMS_SLOT_QUEUED)
			queued[procno]++;
		else if (st == MMS_SLOT_RUNNING)
			running[procno]++, running_tokens[procno] += n_gen;
		else if (st == MMS_SLOT_DONE)
			running_tokens[procno] += n_gen;
	}

	for (int i = 0; i < MaxBackends; i++)
	{
		MmsProgress *e = &rows[i];
		Datum		v[13];
		bool		n[13] = {0};
		char	   *db;
		char	   *role;
		int64		done;
		int64		open;

		if (e->pid == 0 || !(all || has_privs_of_role(me, e->roleid)))
			continue;
		db = get_database_name(e->dboid);
		role = GetUserNameFromId(e->roleid, true);
		done = e->finished + e->failed;
		open = Max(0, e->submitted - done);
		v[0] = Int32GetDatum(e->pid);
		v[1] = db ? CStringGetTextDatum(db) : (Datum) 0;
		n[1] = db == NULL;
		v[2] = role ? CStringGetTextDatum(role) : (Datum) 0;
		n[2] = role == NULL;
		v[3] = CStringGetTextDatum(psprintf("%s:%d", e->model, e->version));
		v[4] = TimestampTzGetDatum(e->stmt_start);
		v[5] = Int64GetDatum(e->submitted);
		v[6] = Int64GetDatum(e->finished);
		v[7] = Int64GetDatum(e->failed);
		v[8] = Int32GetDatum(queued[i]);
		v[9] = Int32GetDatum(running[i]);
		v[10] = Int64GetDatum(e->tokens + running_tokens[i]);
		v[11] = interval_us(Max(0, now - e->stmt_start));
		/* the rate so far, from the first request: remaining requests x time per request */
		n[12] = done == 0 || e->first_at == 0;
		if (!n[12])
			v[12] = interval_us((int64) ((double) open * Max(0, now - e->first_at) / done));
		else
			v[12] = (Datum) 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
	}
	return (Datum) 0;
}
