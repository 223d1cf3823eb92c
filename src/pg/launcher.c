/*
 * launcher.c — the launcher background worker (in mms.so, no BLAS), which
 * makes every serving decision: it starts loaders for served models that are
 * wanted, sizes each model's worker pool (up when requests wait, within
 * min_workers .. max_workers and mms.max_workers; workers leave by
 * themselves when idle), makes room for a model whose requests have no
 * worker by draining one of a busy model, reaps workers that died, and at
 * start reads every database's pinned models. Each decision is an event
 * (mms.events, and a LOG line). It starts a maintenance process for each
 * database with something to do, one at a time: every
 * mms.usage_flush_interval (sooner when asked) for usage to write, every
 * mms.alert_interval for alert rules to evaluate. It connects to no
 * database, so it blocks none; it reads pg_database only.
 */
#include "postgres.h"

#include <signal.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "serve.h"

/* a pool's only worker is not drained for another model before it served this long */
#define MIN_SLICE_MS 1000
/* every database is visited for alert rules this often (rules may come by restore, copy or WAL) */
#define ALERT_DISCOVERY_MS (300 * 1000)

static BackgroundWorkerHandle *handles[MMS_WORKER_SLOTS];
static List *scan_todo = NIL;	/* databases whose pinned models are still to read */
static List *usage_todo = NIL;	/* databases whose usage this round still has to write */
static TimestampTz usage_round_at = 0;	/* start of the last round of usage flushes */
static List *alert_todo = NIL;	/* databases whose alert rules this round still has to evaluate */
static TimestampTz alert_round_at = 0;
static TimestampTz alert_discovery_at = 0;	/* 0: every database is visited once first */
static uint64 usage_dropped_seen = 0;

void
mms_launcher_register(void)
{
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	/* consistent state: also on hot standbys */
	bgw.bgw_start_time = BgWorkerStart_ConsistentState;
	bgw.bgw_restart_time = 5;
	strlcpy(bgw.bgw_library_name, "mms", BGW_MAXLEN);
	strlcpy(bgw.bgw_function_name, "mms_launcher_main", BGW_MAXLEN);
	strlcpy(bgw.bgw_name, "mms launcher", BGW_MAXLEN);
	strlcpy(bgw.bgw_type, "mms launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&bgw);
}

void
mms_wake_launcher(void)
{
	if (mms_shared)
		mms_wake_procno(mms_shared->launcher_procno);
}

static void
launcher_exit(int code, Datum arg)
{
	LWLockAcquire(mms_shared->workers_lock, LW_EXCLUSIVE);
	if (mms_shared->launcher_pid == MyProcPid)
	{
		mms_shared->launcher_procno = -1;
		mms_shared->launcher_pid = 0;
	}
	LWLockRelease(mms_shared->workers_lock);
}

static const char *
kind_name(MmsWorkerKind k)
{
	return k == MMS_WK_LOADER ? "mms loader" : k == MMS_WK_SCAN ? "mms scan" :
		k == MMS_WK_USAGE ? "mms maintenance" : "mms worker";
}

/*
 * Registers the process of worker entry i. Without a free background worker
 * slot, the requests that only this process could serve fail at once rather
 * than wait for a slot that may never come.
 */
static bool
launch(int i, const MmsWorker *w, const char *what, bool sole, uint32 flags)
{
	BackgroundWorker bgw;
	bool		ok;

	memset(&bgw, 0, sizeof(bgw));
	/* inference workers initialize a connection to no database; loaders and scans connect to one, briefly */
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_ConsistentState;
	bgw.bgw_restart_time = BGW_NEVER_RESTART;
	/* the only library that links OpenBLAS, loaded by these processes alone; a flush needs no engine */
	strlcpy(bgw.bgw_library_name, w->kind == MMS_WK_USAGE ? "mms" : "mms_worker", BGW_MAXLEN);
	strlcpy(bgw.bgw_function_name,
			w->kind == MMS_WK_LOADER ? "mms_loader_main" :
			w->kind == MMS_WK_SCAN ? "mms_scan_main" :
			w->kind == MMS_WK_USAGE ? "mms_usage_flush_main" : "mms_worker_main", BGW_MAXLEN);
	snprintf(bgw.bgw_name, BGW_MAXLEN, "%s for %s", kind_name(w->kind), what);
	strlcpy(bgw.bgw_type, kind_name(w->kind), BGW_MAXLEN);
	bgw.bgw_main_arg = Int32GetDatum(i);
	memcpy(bgw.bgw_extra, &w->generation, sizeof(w->generation));
	/* a maintenance process: what to do (MMS_MAINT_*) */
	memcpy(bgw.bgw_extra + sizeof(w->generation), &flags, sizeof(flags));
	bgw.bgw_notify_pid = MyProcPid;
	if (handles[i])
	{
		pfree(handles[i]);
		handles[i] = NULL;
	}
	{
		/* handles outlive the pass's memory */
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		ok = RegisterDynamicBackgroundWorker(&bgw, &handles[i]);
		MemoryContextSwitchTo(old);
	}
	mms_workers_launched(i, w->generation, ok);
	if (!ok && sole && w->served >= 0)
	{
		MmsSlotError err;

		mms_set_error(&err, ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
					  "could not start an inference process: no background worker slot is free",
					  "Raise max_worker_processes (it must exceed mms.max_workers plus other background workers).");
		if (w->kind == MMS_WK_LOADER)
			mms_served_load_failed(w->served, &err);
		else
			mms_queue_fail_all(w->served, &err);
	}
	if (!ok)
		ereport(WARNING,
				(errmsg("mms: could not start %s: no background worker slot is free", kind_name(w->kind)),
				 errhint("Raise max_worker_processes (it must exceed mms.max_workers plus other background workers).")));
	return ok;
}

/*
 * Is the process of entry i still there? A restarted launcher has no handles
 * for workers started before; it goes by their pid.
 */
static bool
alive(const MmsWorker *w, int i)
{
	pid_t		pid;

	if (handles[i])
		return GetBackgroundWorkerPid(handles[i], &pid) != BGWH_STOPPED;
	return w->pid > 0 && kill(w->pid, 0) == 0;
}

/* Frees the entries of processes that are gone; a crash fails what they ran. */
static void
reap(MmsWorker *ws, const MmsServed *dir)
{
	for (int i = 0; i < MMS_WORKER_SLOTS; i++)
	{
		MmsWorker  *w = &ws[i];

		if ((w->state == MMS_W_STARTING || w->state == MMS_W_ATTACHING || w->state == MMS_W_READY ||
			 w->state == MMS_W_DRAINING) && !alive(w, i))
		{
			/* gone without its exit callback (or started by an earlier launcher) */
			mms_queue_orphan(i, "the inference worker exited while running this request");
			mms_workers_vanished(i);
			w->state = MMS_W_EXITED;
			w->clean_exit = false;
		}
		if (w->state != MMS_W_EXITED)
			continue;
		/*
		 * Its entry, and its place in mms.max_workers, go with the process
		 * (and its background worker slot), not when it said it leaves; the
		 * postmaster wakes us when it is gone.
		 */
		if (alive(w, i))
			continue;
		if (!w->clean_exit && w->kind == MMS_WK_INFERENCE)
			mms_event("worker_exit", &dir[w->served], "worker exited unexpectedly; see the server log");
		if (handles[i])
		{
			pfree(handles[i]);
			handles[i] = NULL;
		}
		mms_workers_free(i);
		w->state = MMS_W_FREE;
	}
}

/*
 * The databases that accept connections (shared catalog: no database
 * needed), templates too or not, in TopMemoryContext.
 */
static List *
list_databases(bool templates)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	MemoryContext old;
	List	   *dbs = NIL;
	MemoryContext caller = CurrentMemoryContext;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (!db->datallowconn || (db->datistemplate && !templates))
			continue;
		old = MemoryContextSwitchTo(TopMemoryContext);
		dbs = lappend_oid(dbs, db->oid);
		MemoryContextSwitchTo(old);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);	/* the commit left TopMemoryContext current */
	return dbs;
}

/*
 * Keeps the databases of dbs (TopMemoryContext) that still exist and accept
 * connections: a process started for one that does not would fail at every
 * interval (a database dropped on the primary of a standby, or closed with
 * ALLOW_CONNECTIONS false). Alert states of databases that are gone go too.
 */
static List *
connectable_only(List *dbs)
{
	List	   *ok = list_databases(false);
	List	   *out = NIL;
	ListCell   *lc;
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	foreach(lc, dbs)
	{
		if (list_member_oid(ok, lfirst_oid(lc)))
			out = lappend_oid(out, lfirst_oid(lc));
		else
			mms_alerts_forget_database(lfirst_oid(lc));
	}
	MemoryContextSwitchTo(old);
	list_free(dbs);
	list_free(ok);
	return out;
}

/* One scan at a time, until every database was read. */
static void
scan_next(const MmsWorker *ws)
{
	MmsWorker	w;
	int			i;

	for (i = 0; i < MMS_WORKER_SLOTS; i++)
		if (ws[i].kind == MMS_WK_SCAN && ws[i].state != MMS_W_FREE)
			return;
	if (scan_todo == NIL)
		return;
	if ((i = mms_workers_request(MMS_WK_SCAN, -1, 0, linitial_oid(scan_todo), &w)) < 0)
		return;
	scan_todo = list_delete_first(scan_todo);
	(void) launch(i, &w, "pinned models", false, 0);
}

/*
 * Maintenance, one process at a time, connected to one database:
 *  - usage: a round every mms.usage_flush_interval, or at once when asked
 *    (mms_usage_flush(), or the shared table filling up), writes the usage
 *    of every database that has some due. A hot standby writes none: its
 *    usage stays in shared memory.
 *  - alerts: a round every mms.alert_interval evaluates the rules of every
 *    database that has some (alerts.c keeps the list). The first round after
 *    the launcher starts visits every database that is not a template, to
 *    find them, and so does one every ALERT_DISCOVERY_MS: rules can arrive
 *    without mms_set_alert (CREATE DATABASE ... TEMPLATE, a restore, the WAL
 *    on a standby). Every visit evaluates the database's rules, whatever it
 *    came for. Databases gone or closed to connections are left out.
 * A database due for both gets one process that does both.
 */
static void
maintenance_next(const MmsWorker *ws)
{
	TimestampTz now = GetCurrentTimestamp();
	uint64		dropped = mms_usage_dropped();
	bool		force = false;
	MmsWorker	w;
	uint32		flags = 0;
	Oid			dboid;
	int			i;

	if (dropped > usage_dropped_seen)
	{
		ereport(WARNING,
				(errmsg("mms: " UINT64_FORMAT " rows of usage were dropped to make room", dropped - usage_dropped_seen),
				 errhint("Raise mms.max_usage_entries, or look in the server log for why usage is not flushed.")));
		usage_dropped_seen = dropped;
	}
	for (i = 0; i < MMS_WORKER_SLOTS; i++)
		if (ws[i].kind == MMS_WK_USAGE && ws[i].state != MMS_W_FREE)
			return;
	if (usage_todo == NIL && !RecoveryInProgress() &&
		(mms_usage_take_flush_request(&force) ||
		 now - usage_round_at >= (int64) mms_usage_flush_interval_ms * 1000))
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		usage_todo = mms_usage_due_databases(force);
		MemoryContextSwitchTo(old);
		usage_round_at = now;
	}
	if (alert_todo == NIL &&
		(alert_discovery_at == 0 || now - alert_discovery_at >= (int64) ALERT_DISCOVERY_MS * 1000))
	{
		alert_todo = list_databases(false);
		alert_discovery_at = alert_round_at = now;
	}
	else if (alert_todo == NIL && now - alert_round_at >= (int64) mms_alert_interval_ms * 1000)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		alert_todo = mms_alerts_databases();
		MemoryContextSwitchTo(old);
		alert_round_at = now;
		alert_todo = connectable_only(alert_todo);
	}
	if (usage_todo != NIL && usage_round_at == now)
		usage_todo = connectable_only(usage_todo);
	if (usage_todo == NIL && alert_todo == NIL)
		return;
	dboid = usage_todo != NIL ? linitial_oid(usage_todo) : linitial_oid(alert_todo);
	if ((i = mms_workers_request(MMS_WK_USAGE, -1, 0, dboid, &w)) < 0)
		return;
	if (list_member_oid(usage_todo, dboid))
		flags |= MMS_MAINT_USAGE;
	/* a visit evaluates the database's rules too: rules that came by restore or copy are found */
	flags |= MMS_MAINT_ALERTS;
	usage_todo = list_delete_oid(usage_todo, dboid);
	alert_todo = list_delete_oid(alert_todo, dboid);
	(void) launch(i, &w, "database", false, flags);
}

/* What the launcher knows of one served model in a pass. */
typedef struct Pool
{
	int			workers;		/* up or coming */
	int			ready;
	int			draining;
	bool		loading;		/* a loader runs for it */
	int			queued;
	int			running;
	TimestampTz oldest;
} Pool;

static void
count_pools(const MmsWorker *ws, Pool *pools, int *total, int *loaders)
{
	memset(pools, 0, sizeof(Pool) * MMS_MAX_SERVED);
	*total = 0;
	*loaders = 0;
	for (int i = 0; i < MMS_WORKER_SLOTS; i++)
	{
		const MmsWorker *w = &ws[i];

		if (w->state == MMS_W_FREE || w->served < 0)
			continue;
		if (w->state == MMS_W_EXITED)
		{
			/* left its pool, but its process (reap keeps the entry until it is gone) still counts */
			if (w->kind == MMS_WK_INFERENCE)
				(*total)++;
			continue;
		}
		if (w->kind == MMS_WK_LOADER)
		{
			pools[w->served].loading = true;
			(*loaders)++;
			continue;
		}
		if (w->kind != MMS_WK_INFERENCE)
			continue;
		(*total)++;				/* draining ones still hold a process */
		if (w->state == MMS_W_DRAINING)
			pools[w->served].draining++;
		else
		{
			pools[w->served].workers++;
			if (w->state == MMS_W_READY)
				pools[w->served].ready++;
		}
	}
	for (int i = 0; i < MMS_MAX_SERVED; i++)
		mms_queue_depth(i, &pools[i].queued, &pools[i].running, &pools[i].oldest);
}

/* How many workers pool i should have now. */
static int
pool_target(const MmsServed *s, const Pool *p, TimestampTz now)
{
	int			want = p->workers;
	int			max = Max(1, s->pool.max_workers);

	if (want < s->pool.min_workers && !s->doomed)
		want = s->pool.min_workers;
	if (p->queued > 0 && p->workers == 0)
		want = Max(want, 1);
	/* grow by one while requests wait: more outstanding than the target per worker, or waiting too long */
	if (p->workers > 0 && p->workers == p->ready && !s->doomed &&
		(p->queued + p->running > mms_pool_target_requests * p->workers ||
		 (p->queued > 0 && now - p->oldest > (int64) mms_pool_upscale_wait_ms * 1000)))
		want = p->workers + 1;
	return Min(want, max);
}

/*
 * Within mms.max_workers, a pool whose requests have no worker gets one,
 * within one decoder step when another pool has two or more workers:
 *   - an idle worker of another pool is drained (it has nothing to finish);
 *   - else a worker of the largest pool with two or more is preempted: its
 *     running requests go back to the head of its queue, where the pool's
 *     other workers take them (restarted: greedy, beam and seeded sampling
 *     give the same result), and it exits;
 *   - else the only worker of a pool that has run at least MIN_SLICE_MS is
 *     drained: it finishes its requests first. A pool never loses its last
 *     worker to preemption, so two models contending for one place take
 *     turns instead of restarting each other's requests forever.
 */
static void
make_worker_room(const MmsWorker *ws, const MmsServed *dir, const Pool *pools, int starving)
{
	int			victim = -1;
	int			rank = 0;		/* 3 idle, 2 in a pool of two or more, 1 an only worker */
	TimestampTz now = GetCurrentTimestamp();

	for (int i = 0; i < MMS_WORKER_SLOTS; i++)
		if (ws[i].kind == MMS_WK_INFERENCE &&
			(ws[i].state == MMS_W_DRAINING || ws[i].state == MMS_W_EXITED))
			return;				/* one is on its way out already */
	for (int i = 0; i < MMS_WORKER_SLOTS; i++)
	{
		const MmsWorker *w = &ws[i];
		const Pool *p;
		int			r;

		if (w->kind != MMS_WK_INFERENCE || w->state != MMS_W_READY || w->served == starving)
			continue;
		p = &pools[w->served];
		if (w->held == 0 && p->queued == 0)
			r = 3;
		else if (p->workers > 1)
			r = 2;
		else if (now - w->started_at > (int64) MIN_SLICE_MS * 1000)
			r = 1;
		else
			continue;
		if (r > rank || (r == rank && r == 3 && w->last_active < ws[victim].last_active) ||
			(r == rank && r == 2 && p->workers > pools[ws[victim].served].workers) ||
			(r == rank && r == 1 && w->started_at < ws[victim].started_at))
		{
			victim = i;
			rank = r;
		}
	}
	if (victim < 0)
		return;
	mms_workers_drain(victim, rank == 2);
	mms_event("scale_down", &dir[ws[victim].served], "worker %d %s to make room for model %s:%d",
			  ws[victim].pid, rank == 2 ? "preempted" : "drained",
			  dir[starving].users[0].name, dir[starving].users[0].version);
}

static void
decide(MmsWorker *ws, const MmsServed *dir)
{
	Pool		pools[MMS_MAX_SERVED];
	int			total;
	int			loaders;
	TimestampTz now = GetCurrentTimestamp();

	int			order[MMS_MAX_SERVED];
	int			n_order = 0;
	bool		starving = false;

	count_pools(ws, pools, &total, &loaders);
	/*
	 * Pools whose requests have no worker first; while one has none, no other
	 * pool grows, so that a place freed for it is not taken again by another.
	 */
	for (int pass = 0; pass < 2; pass++)
		for (int i = 0; i < MMS_MAX_SERVED; i++)
		{
			bool		none = dir[i].sha256[0] != '\0' && pools[i].queued > 0 && pools[i].workers == 0;

			if (none == (pass == 0))
				order[n_order++] = i;
			starving |= none;
		}
	for (int j = 0; j < n_order; j++)
	{
		int			i = order[j];
		const MmsServed *s = &dir[i];
		const Pool *p = &pools[i];
		int			want;
		char		what[NAMEDATALEN + 16];

		if (s->sha256[0] == '\0')
			continue;
		snprintf(what, sizeof(what), "%s:%d", s->n_users > 0 ? s->users[0].name : "?",
				 s->n_users > 0 ? s->users[0].version : 0);
		if (s->n_users == 0 && s->state != MMS_S_READY && s->state != MMS_S_LOADING)
		{
			mms_served_settle_unused(i);	/* re-checked under its lock */
			continue;
		}
		if ((s->state == MMS_S_EMPTY && (p->queued > 0 || s->pool.pinned) && s->n_users > 0))
			mms_served_want(i, s->generation);
		if (s->state == MMS_S_WANTED && !p->loading && loaders < MMS_MAX_LOADERS)
		{
			MmsWorker	w;
			int			k = mms_workers_request(MMS_WK_LOADER, i, s->generation, s->users[0].dboid, &w);

			if (k >= 0 && launch(k, &w, what, true, 0))
				loaders++;
			continue;
		}
		if (s->state != MMS_S_READY)
			continue;
		/* unregistered while it loaded, or once what was queued is done: nothing will detach it */
		if (s->doomed && p->workers == 0 && p->draining == 0 && p->queued == 0 && p->running == 0 &&
			mms_served_unload(i, true, "unregistered"))
			continue;
		want = pool_target(s, p, now);
		if (starving && p->workers > 0)
			continue;
		for (int n = p->workers; n < want; n++)
		{
			MmsWorker	w;
			int			k;

			if (total >= mms_max_workers)
			{
				if (p->workers == 0 && p->queued > 0)
					make_worker_room(ws, dir, pools, i);
				break;
			}
			if ((k = mms_workers_request(MMS_WK_INFERENCE, i, s->generation, InvalidOid, &w)) < 0)
				break;
			if (!launch(k, &w, what, p->workers == 0, 0))
				break;
			total++;
			if (p->workers > 0)
				mms_event("scale_up", s, "%d -> %d workers (%d queued, %d running)",
						  p->workers, n + 1, p->queued, p->running);
		}
	}
}

static void
launcher_pass(void)
{
	MmsWorker  *ws = palloc(sizeof(mms_shared->workers));
	MmsServed  *dir = palloc(sizeof(mms_shared->served));

	mms_served_snapshot(dir);
	mms_workers_snapshot(ws);
	reap(ws, dir);
	scan_next(ws);
	maintenance_next(ws);
	decide(ws, dir);
	pfree(ws);
	pfree(dir);
}

/* The launcher ticks faster while requests wait (upscale decisions look at wait times). */
static long
next_tick(void)
{
	for (int i = 0; i < MMS_MAX_SERVED; i++)
	{
		int			q,
					r;

		mms_queue_depth(i, &q, &r, NULL);
		if (q > 0)
			return Max(10L, Min(100L, mms_pool_upscale_wait_ms / 4));
	}
	return scan_todo != NIL || usage_todo != NIL || alert_todo != NIL ? 100L : 1000L;
}

void
mms_launcher_main(Datum arg)
{
	MemoryContext pass_cxt;

	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();

	LWLockAcquire(mms_shared->workers_lock, LW_EXCLUSIVE);
	mms_shared->launcher_procno = MyProc->pgprocno;
	mms_shared->launcher_pid = MyProcPid;
	LWLockRelease(mms_shared->workers_lock);
	before_shmem_exit(launcher_exit, 0);

	/* no database: pg_database is a shared catalog */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	if (!mms_shared->scanned)
	{
		scan_todo = list_databases(true);
		mms_shared->scanned = true;
	}
	pass_cxt = AllocSetContextCreate(TopMemoryContext, "mms launcher pass", ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		MemoryContext old;

		if (ShutdownRequestPending)
			proc_exit(1);		/* 1: the postmaster restarts us unless it is shutting down */
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		old = MemoryContextSwitchTo(pass_cxt);
		launcher_pass();
		MemoryContextSwitchTo(old);
		MemoryContextReset(pass_cxt);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 next_tick(), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		/* absorbs procsignal barriers (DROP DATABASE waits for every connected process) */
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Before DROP DATABASE: only loaders, start-up scans and maintenance ever
 * connect to a database, briefly; waits (up to 5 s) for those connected to
 * the one going away. Inference workers connect to none and never block the
 * drop.
 */
void
mms_release_database(Oid dboid)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 5000);
	MmsWorker  *ws;

	if (mms_shared == NULL || !OidIsValid(dboid))
		return;
	ws = palloc(sizeof(mms_shared->workers));
	for (;;)
	{
		bool		waiting = false;

		mms_workers_snapshot(ws);
		for (int i = 0; i < MMS_WORKER_SLOTS; i++)
			if (ws[i].kind != MMS_WK_INFERENCE && ws[i].dboid == dboid &&
				ws[i].state != MMS_W_FREE && ws[i].state != MMS_W_EXITED)
				waiting = true;
		if (!waiting || GetCurrentTimestamp() > deadline)
			break;
		mms_wait_shared(100);
	}
	pfree(ws);
}

void
mms_forget_models(Oid dboid, int64 model_id)
{
	if (mms_shared == NULL || !OidIsValid(dboid))
		return;
	mms_served_forget(dboid, model_id);
	mms_stats_forget(dboid, model_id);
	mms_hist_forget(dboid, model_id);
	/* the whole database or its registry is gone, and its mms.usage with it */
	if (model_id == 0)
	{
		mms_usage_forget_database(dboid);
		mms_alerts_forget_database(dboid);
	}
}
