/*
 * worker_loader.c — the short-lived processes that connect to a database
 * (in mms_worker.so, since filling the arena uses the engine's loader):
 *
 *   loader  loads one served model: reads the GGUF header from the large
 *           object, makes room in mms.cache_size, creates the DSM segment,
 *           streams the large object straight into it (no private copy:
 *           peak memory is the segment), verifies the sha256, dequantizes
 *           into the segment's arena, pins and publishes it, and exits.
 *   scan    at server start, reads one database's pinned models and asks
 *           for them to be loaded, then exits.
 *
 * Being short-lived, they never keep a database busy: inference workers have
 * no database connection at all.
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/extension.h"
#include "libpq/pqsignal.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/dsm.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "serve.h"
#include "t5.h"
#include "worker.h"

/* how long a load waits for idle workers of other models to make room */
#define MAKE_ROOM_WAIT_MS 10000
#define HEADER_FIRST_READ (256 * 1024)

static int	my_index = -1;
static uint32 my_generation = 0;
static int	claimed = -1;		/* served entry this loader claimed, until published */

static void
loader_exit(int code, Datum arg)
{
	if (claimed >= 0)
	{
		MmsSlotError err;

		/* ended before load() could say why (e.g. the database is gone) */
		mms_set_error(&err, ERRCODE_SYSTEM_ERROR, "the model loader exited before the weights were loaded",
					  "The server log shows why.");
		mms_served_load_failed(claimed, &err);
		claimed = -1;
	}
	mms_workers_exited(my_index, my_generation, code == 0);
	mms_wake_launcher();
}

static void
start(Datum arg, MmsWorker *me)
{
	my_index = DatumGetInt32(arg);
	memcpy(&my_generation, MyBgworkerEntry->bgw_extra, sizeof(my_generation));
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	if (mms_shared == NULL || !mms_workers_begin(my_index, my_generation, me))
		proc_exit(0);
	before_shmem_exit(loader_exit, 0);
}

/*
 * This process's peak private memory in kB: the peak resident set (VmHWM)
 * less the shared pages it maps now (the segment, shared buffers the large
 * object passed through) and its files (libraries). Read before detaching,
 * so the shared pages are all still counted. 0 if unknown.
 */
static long
peak_private_kb(void)
{
	FILE	   *f = fopen("/proc/self/status", "r");
	char		line[256];
	long		hwm = 0,
				shmem = 0,
				file = 0,
				v;

	if (f == NULL)
		return 0;
	while (fgets(line, sizeof(line), f))
	{
		if (sscanf(line, "VmHWM: %ld kB", &v) == 1)
			hwm = v;
		else if (sscanf(line, "RssShmem: %ld kB", &v) == 1)
			shmem = v;
		else if (sscanf(line, "RssFile: %ld kB", &v) == 1)
			file = v;
	}
	fclose(f);
	return Max(0, hwm - shmem - file);
}

static MmsModel
model_of(const MmsServed *s)
{
	MmsModel	m;

	memset(&m, 0, sizeof(m));
	m.id = s->users[0].model_id;
	strlcpy(m.name, s->users[0].name, sizeof(m.name));
	m.version = s->users[0].version;
	m.weights = s->users[0].weights;
	m.size_bytes = s->size_bytes;
	strlcpy(m.sha256, s->sha256, sizeof(m.sha256));
	return m;
}

static void
engine_error(const MmsModel *m, const MmsError *err)
{
	ereport(ERROR,
			(errcode(mms_engine_sqlstate(err->code)),
			 errmsg("could not load model \"%s:%d\": %s", m->name, m->version, err->msg)));
}

/* Floats of the dequantization arena, from the GGUF header alone. */
static size_t
arena_floats(const MmsModel *m)
{
	MmsGguf    *g = NULL;
	MmsError	err;
	size_t		floats;

	for (Size want = HEADER_FIRST_READ;; want *= 4)
	{
		Size		got;
		char	   *buf = mms_read_weights_prefix(m, want, &got);

		g = mms_gguf_parse_prefix_pg(buf, got, (uint64) m->size_bytes, &err);
		if (g != NULL || err.code != MMS_ERR_LIMIT || got >= (Size) m->size_bytes)
			break;
		pfree(buf);
	}
	if (g == NULL)
		engine_error(m, &err);
	if (mms_t5_arena_floats(g, &floats, &err) != MMS_OK)
		engine_error(m, &err);
	return floats;
}

/*
 * Makes room for need bytes within mms.cache_size: unused models of no
 * higher priority are evicted; idle workers of such models are asked to
 * stop, and their weights go once they have. ERROR after MAKE_ROOM_WAIT_MS.
 */
static void
make_room(const MmsModel *m, Size need)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), MAKE_ROOM_WAIT_MS);
	Size		used = 0;

	if (need > (Size) mms_cache_size_mb * 1024 * 1024)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("model \"%s:%d\" needs %zu MB of cache, more than mms.cache_size (%d MB)",
						m->name, m->version, need / (1024 * 1024) + 1, mms_cache_size_mb),
				 errhint("Raise mms.cache_size in postgresql.conf and reload.")));
	while (!mms_served_make_room(need, claimed, &used))
	{
		MmsServed  *dir = palloc(sizeof(MmsServed) * MMS_MAX_SERVED);
		MmsServed	me;

		(void) mms_served_get(claimed, 0, &me);
		mms_served_snapshot(dir);
		for (int i = 0; i < MMS_MAX_SERVED; i++)
		{
			int			q,
						r;

			if (i == claimed || dir[i].state != MMS_S_READY || dir[i].pool.pinned ||
				dir[i].pool.priority > me.pool.priority)
				continue;
			mms_queue_depth(i, &q, &r, NULL);
			if (q == 0 && r == 0)
				mms_workers_drain_served(i);
		}
		pfree(dir);
		if (GetCurrentTimestamp() > deadline)
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("model cache is full: model \"%s:%d\" needs %zu kB, %zu kB of mms.cache_size (%d MB) hold models in use",
							m->name, m->version, need / 1024, used / 1024, mms_cache_size_mb),
					 errhint("Raise mms.cache_size, or retry when other models are idle.")));
		mms_wait_shared(200);
	}
}

static dsm_segment *
create_segment(Size bytes, const MmsModel *m)
{
	MemoryContext cxt = CurrentMemoryContext;
	dsm_segment *seg = NULL;

	PG_TRY();
	{
		seg = dsm_create(bytes, DSM_CREATE_NULL_IF_MAXSEGMENTS);
	}
	PG_CATCH();
	{
		ErrorData  *ed;

		MemoryContextSwitchTo(cxt);
		ed = CopyErrorData();
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not allocate %zu MB of shared memory for model \"%s:%d\": %s",
						bytes / (1024 * 1024) + 1, m->name, m->version, ed->message),
				 errhint("Cached weights live in dynamic shared memory (/dev/shm on Linux): enlarge it "
						 "(e.g. docker --shm-size) or lower mms.cache_size.")));
	}
	PG_END_TRY();
	if (seg == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("could not allocate shared memory for model \"%s:%d\": too many dynamic shared memory segments",
						m->name, m->version),
				 errhint("Raise max_connections, or cache fewer models (mms.cache_size).")));
	return seg;
}

/* Loads a claimed served entry; ERROR on failure (record_failure tells the callers). */
static void
load(const MmsServed *s)
{
	TimestampTz t0 = GetCurrentTimestamp();
	MmsModel	m = model_of(s);
	size_t		floats;
	Size		arena_off;
	Size		total;
	dsm_segment *seg;
	char	   *base;
	MmsGguf		g;
	MmsT5	   *model;
	MmsError	err;

	mms_check_model_size(m.size_bytes);
	floats = arena_floats(&m);
	arena_off = TYPEALIGN(MMS_ARENA_ALIGN, (Size) m.size_bytes);
	total = add_size(arena_off, mul_size(floats, sizeof(float)));
	make_room(&m, total);
	seg = create_segment(total, &m);
	base = dsm_segment_address(seg);
	mms_read_weights_into(&m, base);
	if (mms_gguf_parse(base, (size_t) m.size_bytes, &g, &err) != MMS_OK)
		engine_error(&m, &err);
	if (mms_t5_load_with_arena(&g, (float *) (base + arena_off), floats, 1, &model, &err) != MMS_OK)
		engine_error(&m, &err);
	/* the model object is this process's; the segment alone is shared */
	mms_t5_free(model);
	mms_gguf_free(&g);
	/* nothing below may fail: the segment now outlives this process */
	dsm_pin_segment(seg);
	mms_served_loaded(claimed, dsm_segment_handle(seg), total, (Size) m.size_bytes, arena_off, floats,
					  (double) (GetCurrentTimestamp() - t0) / 1000.0, peak_private_kb());
	claimed = -1;
	dsm_detach(seg);
}

/* The error that ended a load becomes the callers' error. */
static void
record_failure(void)
{
	ErrorData  *ed = CopyErrorData();
	MmsSlotError err;

	mms_set_error(&err, ed->sqlerrcode, ed->message ? ed->message : "could not load the model", ed->hint);
	if (claimed >= 0)
		mms_served_load_failed(claimed, &err);
	claimed = -1;
}

void
mms_loader_main(Datum arg)
{
	MmsWorker	me;
	MmsServed	s;
	MemoryContext cxt;

	start(arg, &me);
	if (!mms_served_claim_load(me.served, me.served_gen, &s))
		proc_exit(0);			/* loaded, or no longer wanted */
	claimed = me.served;
	/* as the bootstrap superuser; the weights are read with the registry owner's rights */
	BackgroundWorkerInitializeConnectionByOid(s.users[0].dboid, InvalidOid, 0);
	cxt = CurrentMemoryContext;
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	PG_TRY();
	{
		load(&s);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		record_failure();
		PG_RE_THROW();
	}
	PG_END_TRY();
	PopActiveSnapshot();
	CommitTransactionCommand();
	proc_exit(0);
}

void
mms_scan_main(Datum arg)
{
	MmsWorker	me;
	MmsModel   *models;
	int			n = 0;

	start(arg, &me);
	BackgroundWorkerInitializeConnectionByOid(me.dboid, InvalidOid, 0);
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (OidIsValid(get_extension_oid("mms", true)))
		n = mms_pinned_models(&models);
	for (int i = 0; i < n; i++)
	{
		uint32		gen;
		int			si = mms_served_acquire(&models[i], MyDatabaseId, &gen);

		mms_served_want(si, gen);
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	proc_exit(0);
}
