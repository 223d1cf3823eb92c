/*
 * worker_cache.c — the inference worker's side of the model cache: attach to
 * a model's DSM segment when another worker loaded it, or load it (read the
 * large object once, copy the GGUF bytes into a new segment, dequantize into
 * the segment's arena, pin) within mms.cache_size, evicting unused models
 * least recently used first. Part of mms_worker.so. The directory: serve.h.
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/dsm.h"
#include "storage/ipc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "serve.h"
#include "t5.h"
#include "worker.h"

#define ARENA_ALIGN 64
/* how long a load waits for idle workers of other models to make room */
#define MAKE_ROOM_WAIT_MS 10000

static int	loading_entry = -1;	/* claimed LOADING entry, reset if we die */
static int	attached_entry = -1;	/* counted in its refcount */

static Size
cache_budget(void)
{
	return (Size) mms_cache_size_mb * 1024 * 1024;
}

/* Lock held: the entry for k (LOADING or READY), or -1. */
static int
find_entry(const MmsModelKey *k)
{
	for (int i = 0; i < MMS_MAX_CACHED; i++)
	{
		MmsCacheEntry *e = &mms_shared->cache[i];

		if (e->state != MMS_C_EMPTY && !e->doomed && mms_key_equal(&e->model, k))
			return i;
	}
	return -1;
}

/* Lock held: the least recently used READY entry nobody is attached to, or -1. */
static int
lru_unused(void)
{
	int			best = -1;

	for (int i = 0; i < MMS_MAX_CACHED; i++)
	{
		MmsCacheEntry *e = &mms_shared->cache[i];

		if (e->state == MMS_C_READY && e->refcount == 0 && !e->doomed &&
			(best < 0 || e->last_used < mms_shared->cache[best].last_used))
			best = i;
	}
	return best;
}

dsm_handle
mms_worker_cache_release(void)
{
	dsm_handle	unpin = 0;

	if (attached_entry >= 0)
	{
		MmsCacheEntry *e = &mms_shared->cache[attached_entry];

		if (e->refcount > 0)
			e->refcount--;
		e->last_used = GetCurrentTimestamp();
		/* the last worker of a dropped model frees its weights */
		if (e->doomed && e->refcount == 0 && e->state == MMS_C_READY)
			unpin = mms_cache_evict_locked(attached_entry);
		attached_entry = -1;
	}
	if (loading_entry >= 0)
	{
		mms_shared->cache[loading_entry].state = MMS_C_EMPTY;
		mms_shared->cache[loading_entry].doomed = false;
		loading_entry = -1;
	}
	return unpin;
}

/*
 * Makes room for need bytes: evicts unused models, least recently used
 * first; when the rest are in use, asks idle workers of other models to stop
 * and waits for them. ERROR when the budget cannot be met.
 */
static void
make_room(Size need, const MmsModelKey *k)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), MAKE_ROOM_WAIT_MS);
	Size		budget = cache_budget();

	if (need > budget)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("model \"%s:%d\" needs %zu MB of cache, more than mms.cache_size (%d MB)",
						k->name, k->version, need / (1024 * 1024) + 1, mms_cache_size_mb),
				 errhint("Raise mms.cache_size in postgresql.conf and reload.")));
	for (;;)
	{
		Size		used = 0;
		int			victim;
		bool		asked = false;

		LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
		for (int i = 0; i < MMS_MAX_CACHED; i++)
			if (mms_shared->cache[i].state == MMS_C_READY)
				used += mms_shared->cache[i].seg_bytes;
		if (used + need <= budget)
		{
			LWLockRelease(mms_shared->lock);
			break;
		}
		victim = lru_unused();
		if (victim >= 0)
		{
			dsm_handle	h = mms_cache_evict_locked(victim);

			LWLockRelease(mms_shared->lock);
			/* the segment goes away when its last mapping does */
			dsm_unpin_segment(h);
			continue;
		}
		/* everything cached is attached: idle workers of other models may go */
		for (int i = 0; i < MMS_MAX_WORKERS; i++)
		{
			MmsWorker  *w = &mms_shared->workers[i];

			if (w->state == MMS_W_READY && !mms_key_equal(&w->model, k) &&
				w->held == 0 && mms_worker_queued(i) == 0)
			{
				w->stop_requested = true;
				mms_wake_procno(w->procno);
				asked = true;
			}
			else if (w->state != MMS_W_FREE && w->state != MMS_W_EXITED && !mms_key_equal(&w->model, k))
			{
				/*
				 * Busy right now (a request in flight, or one just answered
				 * and not yet released): it may go idle before the deadline.
				 */
				asked = true;
			}
		}
		LWLockRelease(mms_shared->lock);
		/*
		 * Even with nobody to ask, wait until the deadline: a worker that was
		 * just told to stop (or just exited) releases its attachment only
		 * when its process detaches, a moment after its state changes.
		 */
		(void) asked;
		if (GetCurrentTimestamp() > deadline)
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("model cache is full: model \"%s:%d\" needs %zu kB, %zu kB of mms.cache_size (%d MB) hold models in use",
							k->name, k->version, need / 1024, used / 1024, mms_cache_size_mb),
					 errhint("Raise mms.cache_size, or retry when other models are idle.")));
		(void) ConditionVariableTimedSleep(&mms_shared->cv, 200, PG_WAIT_EXTENSION);
		ConditionVariableCancelSleep();
		CHECK_FOR_INTERRUPTS();
	}
}

static dsm_segment *
create_segment(Size bytes, const MmsModelKey *k)
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
						bytes / (1024 * 1024) + 1, k->name, k->version, ed->message),
				 errhint("Cached weights live in dynamic shared memory (/dev/shm on Linux): enlarge it "
						 "(e.g. docker --shm-size) or lower mms.cache_size.")));
	}
	PG_END_TRY();
	if (seg == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("could not allocate shared memory for model \"%s:%d\": too many dynamic shared memory segments",
						k->name, k->version),
				 errhint("Raise max_connections, or cache fewer models (mms.cache_size).")));
	return seg;
}

static void
engine_error(const MmsModelKey *k, const MmsError *err)
{
	ereport(ERROR,
			(errcode(mms_engine_sqlstate(err->code)),
			 errmsg("could not load model \"%s:%d\": %s", k->name, k->version, err->msg)));
}

/* Reads the model, fills a new segment, publishes it. */
static void
load(const MmsModelKey *k, int ci, MmsLoaded *out)
{
	TimestampTz t0 = GetCurrentTimestamp();
	MmsModel	m;
	MmsGguf		g;
	MmsError	err;
	Size		size;
	size_t		floats;
	Size		arena_off;
	Size		total;
	char	   *buf;
	char	   *base;
	dsm_segment *seg;
	MmsCacheEntry *e;

	memset(&m, 0, sizeof(m));
	m.id = k->model_id;
	strlcpy(m.name, k->name, sizeof(m.name));
	m.version = k->version;
	m.weights = k->weights;
	m.size_bytes = k->size_bytes;
	strlcpy(m.sha256, k->sha256, sizeof(m.sha256));

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	/* as the registry owner, checked against the registered sha256 */
	buf = mms_read_weights(&m, &size);

	if (mms_gguf_parse(buf, size, &g, &err) != MMS_OK)
		engine_error(k, &err);
	if (mms_t5_arena_floats(&g, &floats, &err) != MMS_OK)
	{
		mms_gguf_free(&g);
		engine_error(k, &err);
	}
	mms_gguf_free(&g);
	arena_off = TYPEALIGN(ARENA_ALIGN, size);
	total = add_size(arena_off, mul_size(floats, sizeof(float)));

	make_room(total, k);
	seg = create_segment(total, k);
	base = dsm_segment_address(seg);
	memcpy(base, buf, size);
	pfree(buf);

	if (mms_gguf_parse(base, size, &out->g, &err) != MMS_OK)
		engine_error(k, &err);
	if (mms_t5_load_with_arena(&out->g, (float *) (base + arena_off), floats, 1, &out->model, &err) != MMS_OK)
	{
		mms_gguf_free(&out->g);
		engine_error(k, &err);
	}
	/* nothing below may fail: the segment now outlives this process */
	dsm_pin_segment(seg);
	dsm_pin_mapping(seg);
	PopActiveSnapshot();
	CommitTransactionCommand();

	LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
	e = &mms_shared->cache[ci];
	e->state = MMS_C_READY;
	e->handle = dsm_segment_handle(seg);
	e->seg_bytes = total;
	e->gguf_bytes = size;
	e->arena_off = arena_off;
	e->arena_floats = floats;
	e->refcount = 1;
	e->loaded_at = GetCurrentTimestamp();
	e->last_used = e->loaded_at;
	e->load_ms = (double) (e->loaded_at - t0) / 1000.0;
	{
		MmsStat    *st = mms_stat_for(k);

		if (st)
			st->cache_loads++;
	}
	loading_entry = -1;
	attached_entry = ci;
	ConditionVariableBroadcast(&mms_shared->cv);
	LWLockRelease(mms_shared->lock);
	out->seg = seg;
}

/* Maps a READY entry's segment (refcount already taken); false if it vanished. */
static bool
attach(const MmsModelKey *k, dsm_handle h, Size gguf_bytes, Size arena_off, Size floats,
	   MmsLoaded *out)
{
	dsm_segment *seg = dsm_attach(h);
	MmsError	err;
	char	   *base;

	if (seg == NULL)
		return false;
	dsm_pin_mapping(seg);
	base = dsm_segment_address(seg);
	if (mms_gguf_parse(base, gguf_bytes, &out->g, &err) != MMS_OK)
		engine_error(k, &err);
	/* fill = 0: the loader dequantized into the arena already */
	if (mms_t5_load_with_arena(&out->g, (float *) (base + arena_off), floats, 0, &out->model, &err) != MMS_OK)
	{
		mms_gguf_free(&out->g);
		engine_error(k, &err);
	}
	out->seg = seg;
	return true;
}

void
mms_worker_cache_get(const MmsModelKey *k, MmsLoaded *out)
{
	for (;;)
	{
		int			ci;

		CHECK_FOR_INTERRUPTS();
		LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
		ci = find_entry(k);
		if (ci >= 0 && mms_shared->cache[ci].state == MMS_C_READY)
		{
			MmsCacheEntry *e = &mms_shared->cache[ci];
			dsm_handle	h = e->handle;
			Size		gguf_bytes = e->gguf_bytes;
			Size		arena_off = e->arena_off;
			Size		floats = e->arena_floats;

			e->refcount++;
			e->last_used = GetCurrentTimestamp();
			attached_entry = ci;
			LWLockRelease(mms_shared->lock);
			if (attach(k, h, gguf_bytes, arena_off, floats, out))
				return;
			/* evicted between the lookup and the attach: look again */
			{
				dsm_handle	unpin;

				LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
				unpin = mms_worker_cache_release();
				LWLockRelease(mms_shared->lock);
				if (unpin != 0)
					dsm_unpin_segment(unpin);
			}
			continue;
		}
		if (ci >= 0)
		{
			/* another worker is loading it */
			LWLockRelease(mms_shared->lock);
			(void) ConditionVariableTimedSleep(&mms_shared->cv, 200, PG_WAIT_EXTENSION);
			ConditionVariableCancelSleep();
			continue;
		}
		for (int i = 0; i < MMS_MAX_CACHED && ci < 0; i++)
			if (mms_shared->cache[i].state == MMS_C_EMPTY)
				ci = i;
		if (ci < 0 && (ci = lru_unused()) >= 0)
		{
			dsm_handle	h = mms_cache_evict_locked(ci);

			LWLockRelease(mms_shared->lock);
			dsm_unpin_segment(h);
			continue;
		}
		if (ci < 0)
		{
			LWLockRelease(mms_shared->lock);
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("the model cache directory is full (%d models in use)", MMS_MAX_CACHED)));
		}
		memset(&mms_shared->cache[ci], 0, sizeof(MmsCacheEntry));
		mms_shared->cache[ci].state = MMS_C_LOADING;
		mms_shared->cache[ci].model = *k;
		mms_shared->cache[ci].loader_pid = MyProcPid;
		loading_entry = ci;
		LWLockRelease(mms_shared->lock);
		load(k, ci, out);
		return;
	}
}
