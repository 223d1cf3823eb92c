/*
 * views.c — what operators see and do with the serving machinery: the
 * set-returning functions behind mms.cache, mms.workers and mms.stat_models,
 * mms_stat_reset(), and mms_load / mms_unload (warm and drop a model's cached
 * weights). Reads shared state under the lock, copies, then builds rows.
 */
#include "postgres.h"

#include "catalog/pg_authid.h"
#include "commands/dbcommands.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "serve.h"

/*
 * pg_stat_statements' rule: the serving state of every database is visible to
 * superusers, mms_admin and pg_read_all_stats; everyone else sees the rows of
 * the database they are connected to, without worker pids.
 */
static bool
sees_everything(void)
{
	return mms_is_admin(GetUserId()) || has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS);
}

static bool
row_visible(bool all, Oid dboid)
{
	return all || dboid == MyDatabaseId;
}

static Datum
db_name(Oid dboid)
{
	char	   *name = get_database_name(dboid);

	return CStringGetTextDatum(name ? name : "?");
}

static Datum
model_ref(const char *name, int32 version)
{
	return CStringGetTextDatum(psprintf("%s:%d", name, version));
}

static Datum
ts_or_null(TimestampTz t, bool *isnull)
{
	*isnull = (t == 0);
	return TimestampTzGetDatum(t);
}

PG_FUNCTION_INFO_V1(mms_cache);

/* mms_cache(): one row per cached (or loading) model. */
Datum
mms_cache(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MmsCacheEntry *copy = palloc(sizeof(mms_shared->cache));
	bool		all = sees_everything();

	mms_require_serving();
	InitMaterializedSRF(fcinfo, 0);
	LWLockAcquire(mms_shared->lock, LW_SHARED);
	memcpy(copy, mms_shared->cache, sizeof(mms_shared->cache));
	LWLockRelease(mms_shared->lock);
	for (int i = 0; i < MMS_MAX_CACHED; i++)
	{
		MmsCacheEntry *e = &copy[i];
		Datum		v[9];
		bool		n[9] = {0};

		if (e->state == MMS_C_EMPTY || !row_visible(all, e->model.dboid))
			continue;
		v[0] = db_name(e->model.dboid);
		v[1] = model_ref(e->model.name, e->model.version);
		v[2] = Int64GetDatum(e->model.model_id);
		v[3] = Int64GetDatum((int64) e->seg_bytes);
		n[3] = e->state != MMS_C_READY;
		v[4] = CStringGetTextDatum(e->state == MMS_C_READY ? "ready" : "loading");
		v[5] = Int32GetDatum(e->refcount);
		v[6] = ts_or_null(e->last_used, &n[6]);
		v[7] = ts_or_null(e->loaded_at, &n[7]);
		v[8] = Float8GetDatum(e->load_ms);
		n[8] = e->state != MMS_C_READY;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
	}
	return (Datum) 0;
}

static const char *
worker_state(MmsWorkerState st)
{
	switch (st)
	{
		case MMS_W_REQUESTED:
			return "requested";
		case MMS_W_STARTING:
			return "starting";
		case MMS_W_LOADING:
			return "loading";
		case MMS_W_READY:
			return "ready";
		case MMS_W_EXITED:
			return "exited";
		default:
			return "free";
	}
}

PG_FUNCTION_INFO_V1(mms_workers);

/* mms_workers(): one row per inference worker (starting, running or just exited). */
Datum
mms_workers(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MmsWorker  *copy = palloc(sizeof(mms_shared->workers));
	int			queued[MMS_MAX_WORKERS];
	bool		all = sees_everything();

	mms_require_serving();
	InitMaterializedSRF(fcinfo, 0);
	LWLockAcquire(mms_shared->lock, LW_SHARED);
	memcpy(copy, mms_shared->workers, sizeof(mms_shared->workers));
	for (int i = 0; i < MMS_MAX_WORKERS; i++)
		queued[i] = copy[i].state == MMS_W_FREE ? 0 : mms_worker_queued(i);
	LWLockRelease(mms_shared->lock);
	for (int i = 0; i < MMS_MAX_WORKERS; i++)
	{
		MmsWorker  *w = &copy[i];
		Datum		v[9];
		bool		n[9] = {0};

		if (w->state == MMS_W_FREE || !row_visible(all, w->model.dboid))
			continue;
		v[0] = Int32GetDatum(w->pid);
		n[0] = w->pid == 0 || !all;
		v[1] = db_name(w->model.dboid);
		v[2] = model_ref(w->model.name, w->model.version);
		v[3] = CStringGetTextDatum(w->stop_requested && w->state == MMS_W_READY ? "stopping" :
								   worker_state(w->state));
		v[4] = Int32GetDatum(w->batch);
		v[5] = Int32GetDatum(queued[i]);
		v[6] = Int64GetDatum((int64) w->served);
		v[7] = ts_or_null(w->started_at, &n[7]);
		v[8] = ts_or_null(w->last_active, &n[8]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
	}
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(mms_stat_models);

/* mms_stat_models(): per-model counters since the last mms_stat_reset(). */
Datum
mms_stat_models(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MmsStat    *copy = palloc(sizeof(mms_shared->stats));
	TimestampTz reset;
	bool		all = sees_everything();

	mms_require_serving();
	InitMaterializedSRF(fcinfo, 0);
	LWLockAcquire(mms_shared->lock, LW_SHARED);
	memcpy(copy, mms_shared->stats, sizeof(mms_shared->stats));
	reset = mms_shared->stats_reset;
	LWLockRelease(mms_shared->lock);
	for (int i = 0; i < MMS_MAX_STATS; i++)
	{
		MmsStat    *s = &copy[i];
		Datum		v[16];
		bool		n[16] = {0};

		if (!s->used || !row_visible(all, s->dboid))
			continue;
		v[0] = db_name(s->dboid);
		v[1] = model_ref(s->name, s->version);
		v[2] = Int64GetDatum((int64) s->calls);
		v[3] = Int64GetDatum((int64) s->input_tokens);
		v[4] = Int64GetDatum((int64) s->output_tokens);
		v[5] = Float8GetDatum(s->total_ms);
		v[6] = Float8GetDatum(s->calls ? s->total_ms / s->calls : 0);
		n[6] = s->calls == 0;
		v[7] = Float8GetDatum(s->queue_ms);
		v[8] = Int64GetDatum((int64) s->errors);
		v[9] = Int64GetDatum((int64) s->cancels);
		v[10] = Int64GetDatum((int64) s->cache_loads);
		v[11] = Int64GetDatum((int64) s->steps);
		v[12] = Int64GetDatum((int64) s->rows);
		v[13] = Float8GetDatum(s->steps ? (double) s->rows / s->steps : 0);
		n[13] = s->steps == 0;
		v[14] = Int32GetDatum(s->max_batch);
		v[15] = TimestampTzGetDatum(reset);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
	}
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(mms_stat_reset);

Datum
mms_stat_reset(PG_FUNCTION_ARGS)
{
	mms_require_serving();
	mms_require_admin("reset mms statistics");
	LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
	memset(mms_shared->stats, 0, sizeof(mms_shared->stats));
	mms_shared->stats_reset = GetCurrentTimestamp();
	LWLockRelease(mms_shared->lock);
	PG_RETURN_VOID();
}

/* Waits on the shared condition variable (with interrupts) for up to ms. */
static void
wait_a_little(long ms)
{
	(void) ConditionVariableTimedSleep(&mms_shared->cv, ms, PG_WAIT_EXTENSION);
	ConditionVariableCancelSleep();
	CHECK_FOR_INTERRUPTS();
}

PG_FUNCTION_INFO_V1(mms_load);

/*
 * mms_load(model text) RETURNS boolean: starts the model's worker, which
 * loads (or attaches) the weights; returns once it can serve.
 */
Datum
mms_load(PG_FUNCTION_ARGS)
{
	char	   *ref = text_to_cstring(PG_GETARG_TEXT_PP(0));
	MmsModel	m;
	MmsModelKey key;

	mms_require_serving();
	/* warming the cache can make other models' idle workers stop: an operator's call */
	mms_require_admin("load models");
	mms_resolve_model(ref, true, &m);
	mms_key_from_model(&key, &m);
	for (;;)
	{
		int			w;
		MmsWorker	copy;

		LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
		w = mms_find_worker(&key);
		if (w < 0)
			w = mms_want_worker(&key);
		if (w >= 0)
			copy = mms_shared->workers[w];
		LWLockRelease(mms_shared->lock);
		if (w < 0)
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("too many inference workers requested")));
		mms_wake_launcher();
		/* follow this entry until it serves or gives up */
		for (;;)
		{
			if (copy.state == MMS_W_READY)
				PG_RETURN_BOOL(true);
			if (copy.exit_reason == MMS_EXIT_LOAD_FAILED && copy.err.sqlstate != 0)
				ereport(ERROR,
						(errcode(copy.err.sqlstate),
						 errmsg("could not load model \"%s:%d\": %s", m.name, m.version, copy.err.msg),
						 copy.err.hint[0] ? errhint("%s", copy.err.hint) : 0));
			if (copy.state == MMS_W_FREE || !mms_key_equal(&copy.model, &key) ||
				(copy.state == MMS_W_EXITED && copy.exit_reason != MMS_EXIT_OTHER))
				break;			/* gone (idle, stopped, reused): ask again */
			wait_a_little(100);
			LWLockAcquire(mms_shared->lock, LW_SHARED);
			copy = mms_shared->workers[w];
			LWLockRelease(mms_shared->lock);
		}
	}
}

PG_FUNCTION_INFO_V1(mms_unload);

/*
 * mms_unload(model text) RETURNS boolean: stops the model's idle workers and
 * drops its cached weights. false when the model is busy or not cached.
 */
Datum
mms_unload(PG_FUNCTION_ARGS)
{
	char	   *ref = text_to_cstring(PG_GETARG_TEXT_PP(0));
	MmsModel	m;
	MmsModelKey key;
	TimestampTz deadline;
	bool		busy = false;

	mms_require_serving();
	mms_require_admin("unload models");
	mms_resolve_model(ref, false, &m);
	mms_key_from_model(&key, &m);

	LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < MMS_MAX_WORKERS; i++)
	{
		MmsWorker  *w = &mms_shared->workers[i];

		if (w->state != MMS_W_FREE && w->state != MMS_W_EXITED && mms_key_equal(&w->model, &key) &&
			(w->held > 0 || mms_worker_queued(i) > 0))
			busy = true;
	}
	if (!busy)
		for (int i = 0; i < MMS_MAX_WORKERS; i++)
		{
			MmsWorker  *w = &mms_shared->workers[i];

			if (w->state != MMS_W_FREE && w->state != MMS_W_EXITED && mms_key_equal(&w->model, &key))
			{
				w->stop_requested = true;
				mms_wake_procno(w->procno);
			}
		}
	LWLockRelease(mms_shared->lock);
	if (busy)
	{
		ereport(NOTICE,
				(errmsg("model \"%s:%d\" is in use and stays loaded", m.name, m.version)));
		PG_RETURN_BOOL(false);
	}
	mms_wake_launcher();

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 10000);
	for (;;)
	{
		int			ci = -1;
		int			refs = 0;
		dsm_handle	h = 0;

		LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
		for (int i = 0; i < MMS_MAX_CACHED; i++)
		{
			MmsCacheEntry *e = &mms_shared->cache[i];

			if (e->state == MMS_C_READY && mms_key_equal(&e->model, &key))
			{
				ci = i;
				refs = e->refcount;
			}
		}
		if (ci >= 0 && refs == 0)
			h = mms_cache_evict_locked(ci);
		LWLockRelease(mms_shared->lock);
		if (ci < 0)
			PG_RETURN_BOOL(false);
		if (refs == 0)
		{
			dsm_unpin_segment(h);
			PG_RETURN_BOOL(true);
		}
		if (GetCurrentTimestamp() > deadline)
		{
			ereport(NOTICE,
					(errmsg("model \"%s:%d\" is still attached by a worker and stays loaded",
							m.name, m.version)));
			PG_RETURN_BOOL(false);
		}
		wait_a_little(100);
	}
}
