/*
 * views.c — what operators see and do with the serving machinery: the
 * set-returning functions behind mms.cache, mms.pools, mms.workers,
 * mms.events, mms.stat_models, mms.stat_latency and mms.stat_info,
 * mms_stat_reset(), and mms_load / mms_unload. Each reads a snapshot through
 * its owner's verbs, then builds rows.
 */
#include "postgres.h"

#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "serve.h"

/*
 * pg_stat_statements' rule: the serving state of every database is visible to
 * superusers, mms_admin and pg_read_all_stats; everyone else sees what
 * concerns the database they are connected to, without worker pids.
 */
static bool
sees_everything(void)
{
	return mms_is_admin(GetUserId()) || has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS);
}

/* A served model is visible when one of its registrations is. */
static bool
served_visible(bool all, const MmsServed *s)
{
	if (s->sha256[0] == '\0')
		return false;
	if (all)
		return true;
	for (int u = 0; u < s->n_users; u++)
		if (s->users[u].dboid == MyDatabaseId)
			return true;
	return false;
}

/* The name a viewer sees for a served model: a registration of its own database first. */
static Datum
served_name(bool all, const MmsServed *s, bool *isnull)
{
	for (int pass = 0; pass < 2; pass++)
		for (int u = 0; u < s->n_users; u++)
			if (s->users[u].dboid == MyDatabaseId || (pass == 1 && all))
			{
				*isnull = false;
				return CStringGetTextDatum(psprintf("%s:%d", s->users[u].name, s->users[u].version));
			}
	*isnull = true;
	return (Datum) 0;
}

static Datum
db_name(Oid dboid)
{
	char	   *name = get_database_name(dboid);

	return CStringGetTextDatum(name ? name : "?");
}

static Datum
ts_or_null(TimestampTz t, bool *isnull)
{
	*isnull = (t == 0);
	return TimestampTzGetDatum(t);
}

/*
 * The row layouts are 0.2.0's: a database whose catalog is older would hand
 * these functions its old column list (and get garbage, or worse).
 */
static void
require_layout(void)
{
	mms_require_serving();
	mms_require_current_catalog();
}

static MmsServed *
served_dir(void)
{
	MmsServed  *dir = palloc(sizeof(MmsServed) * MMS_MAX_SERVED);

	mms_served_snapshot(dir);
	return dir;
}

PG_FUNCTION_INFO_V1(mms_cache);

/* mms_cache(): one row per served model whose weights are loaded or loading. */
Datum
mms_cache(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MmsServed  *dir;
	bool		all = sees_everything();

	require_layout();
	InitMaterializedSRF(fcinfo, 0);
	dir = served_dir();
	for (int i = 0; i < MMS_MAX_SERVED; i++)
	{
		MmsServed  *s = &dir[i];
		Datum		v[10];
		bool		n[10] = {0};
		Datum	   *names = palloc(sizeof(Datum) * MMS_MAX_USERS);
		int			n_names = 0;

		if (!served_visible(all, s) ||
			(s->state != MMS_S_READY && s->state != MMS_S_LOADING && s->state != MMS_S_WANTED))
			continue;
		for (int u = 0; u < s->n_users; u++)
			if (all || s->users[u].dboid == MyDatabaseId)
			{
				char	   *db = get_database_name(s->users[u].dboid);

				names[n_names++] = CStringGetTextDatum(psprintf("%s/%s:%d", db ? db : "?",
																s->users[u].name, s->users[u].version));
			}
		v[0] = CStringGetTextDatum(s->sha256);
		v[1] = PointerGetDatum(construct_array(names, n_names, TEXTOID, -1, false, TYPALIGN_INT));
		v[2] = Int64GetDatum((int64) s->seg_bytes);
		n[2] = s->state != MMS_S_READY;
		v[3] = CStringGetTextDatum(s->state == MMS_S_READY ? "ready" : "loading");
		v[4] = Int32GetDatum(s->refcount);
		v[5] = BoolGetDatum(s->pool.pinned);
		v[6] = Int32GetDatum(s->pool.priority);
		v[7] = ts_or_null(s->last_used, &n[7]);
		v[8] = ts_or_null(s->loaded_at, &n[8]);
		v[9] = Float8GetDatum(s->load_ms);
		n[9] = s->state != MMS_S_READY;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
	}
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(mms_pools);

/* mms_pools(): one row per served model: its pool settings, workers and queue. */
Datum
mms_pools(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MmsServed  *dir;
	bool		all = sees_everything();
	TimestampTz now = GetCurrentTimestamp();

	require_layout();
	InitMaterializedSRF(fcinfo, 0);
	dir = served_dir();
	for (int i = 0; i < MMS_MAX_SERVED; i++)
	{
		MmsServed  *s = &dir[i];
		Datum		v[14];
		bool		n[14] = {0};
		int			queued,
					running;
		TimestampTz oldest;

		if (!served_visible(all, s))
			continue;
		mms_queue_depth(i, &queued, &running, &oldest);
		v[0] = CStringGetTextDatum(s->sha256);
		v[1] = served_name(all, s, &n[1]);
		v[2] = Int32GetDatum(s->pool.min_workers);
		v[3] = Int32GetDatum(s->pool.max_workers);
		v[4] = BoolGetDatum(s->pool.pinned);
		v[5] = Int32GetDatum(s->pool.priority);
		v[6] = Int32GetDatum(mms_workers_count(i, NULL));
		v[7] = Int32GetDatum(queued);
		v[8] = Int32GetDatum(running);
		v[9] = Float8GetDatum(oldest ? (double) (now - oldest) / 1000.0 : 0);
		n[9] = oldest == 0;
		v[10] = Int64GetDatum((int64) s->steps);
		v[11] = Int64GetDatum((int64) s->rows);
		v[12] = Int32GetDatum(s->max_batch);
		v[13] = Int64GetDatum((int64) s->loads);
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
		case MMS_W_STARTING:
			return "starting";
		case MMS_W_ATTACHING:
			return "loading";
		case MMS_W_READY:
			return "ready";
		case MMS_W_DRAINING:
			return "draining";
		default:
			return "exited";
	}
}

PG_FUNCTION_INFO_V1(mms_workers);

/* mms_workers(): one row per inference worker. */
Datum
mms_workers(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MmsWorker  *ws = palloc(sizeof(mms_shared->workers));
	MmsServed  *dir;
	bool		all = sees_everything();

	require_layout();
	InitMaterializedSRF(fcinfo, 0);
	dir = served_dir();
	mms_workers_snapshot(ws);
	for (int i = 0; i < MMS_WORKER_SLOTS; i++)
	{
		MmsWorker  *w = &ws[i];
		MmsServed  *s;
		Datum		v[9];
		bool		n[9] = {0};

		if (w->kind != MMS_WK_INFERENCE || w->state == MMS_W_FREE || w->state == MMS_W_EXITED ||
			w->served < 0)
			continue;
		s = &dir[w->served];
		if (!served_visible(all, s) || s->generation != w->served_gen)
			continue;
		v[0] = Int32GetDatum(w->pid);
		n[0] = w->pid == 0 || !all;
		v[1] = CStringGetTextDatum(s->sha256);
		v[2] = served_name(all, s, &n[2]);
		v[3] = CStringGetTextDatum(worker_state(w->state));
		v[4] = Int32GetDatum(w->batch);
		v[5] = Int32GetDatum(w->held);
		v[6] = Int64GetDatum((int64) w->requests_served);
		v[7] = ts_or_null(w->started_at, &n[7]);
		v[8] = ts_or_null(w->last_active, &n[8]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
	}
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(mms_events);

/* mms_events(): the recent serving decisions, oldest first. */
Datum
mms_events(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MmsEvent   *evs = palloc(sizeof(MmsEvent) * MMS_MAX_EVENTS);
	MmsServed  *dir;
	bool		all = sees_everything();
	int			n_ev;

	require_layout();
	InitMaterializedSRF(fcinfo, 0);
	dir = served_dir();
	n_ev = mms_events_snapshot(evs);
	for (int j = 0; j < n_ev; j++)
	{
		MmsEvent   *e = &evs[j];
		Datum		v[5];
		bool		n[5] = {0};

		if (!all)
		{
			int			i;

			/* other databases' decisions stay theirs */
			for (i = 0; i < MMS_MAX_SERVED; i++)
				if (served_visible(false, &dir[i]) && strcmp(dir[i].sha256, e->sha256) == 0)
					break;
			if (i == MMS_MAX_SERVED)
				continue;
		}
		v[0] = TimestampTzGetDatum(e->at);
		v[1] = CStringGetTextDatum(e->kind);
		v[2] = CStringGetTextDatum(e->model);
		n[2] = e->model[0] == '\0';
		v[3] = CStringGetTextDatum(e->sha256);
		n[3] = e->sha256[0] == '\0';
		v[4] = CStringGetTextDatum(e->detail);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
	}
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(mms_stat_models);

/*
 * mms_stat_models(): counters per (database, role, model version) since the
 * last mms_stat_reset(); the decoder's counters are its served model's.
 */
Datum
mms_stat_models(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MmsServed  *dir;
	MmsStatEntry *st;
	int			n_st;
	uint64		dealloc;
	TimestampTz reset;
	bool		all = sees_everything();

	require_layout();
	InitMaterializedSRF(fcinfo, 0);
	dir = served_dir();
	st = mms_stats_snapshot(&n_st, &dealloc, &reset);
	for (int j = 0; j < n_st; j++)
	{
		MmsStatEntry *e = &st[j];
		MmsServed  *s = NULL;
		Datum		v[17];
		bool		n[17] = {0};
		char	   *role;

		if (!all && e->key.dboid != MyDatabaseId)
			continue;
		for (int i = 0; i < MMS_MAX_SERVED; i++)
			if (dir[i].sha256[0] != '\0' && strcmp(dir[i].sha256, e->sha256) == 0)
				s = &dir[i];
		role = GetUserNameFromId(e->key.roleid, true);
		v[0] = db_name(e->key.dboid);
		v[1] = role ? CStringGetTextDatum(role) : (Datum) 0;
		n[1] = role == NULL;	/* dropped since */
		v[2] = CStringGetTextDatum(psprintf("%s:%d", e->name, e->version));
		v[3] = Int64GetDatum((int64) e->c.calls);
		v[4] = Int64GetDatum((int64) e->c.input_tokens);
		v[5] = Int64GetDatum((int64) e->c.output_tokens);
		v[6] = Float8GetDatum(e->c.total_ms);
		v[7] = Float8GetDatum(e->c.calls ? e->c.total_ms / e->c.calls : 0);
		n[7] = e->c.calls == 0;
		v[8] = Float8GetDatum(e->c.queue_ms);
		v[9] = Int64GetDatum((int64) e->c.errors);
		v[10] = Int64GetDatum((int64) e->c.cancels);
		v[11] = Int64GetDatum(s ? (int64) s->loads : 0);
		v[12] = Int64GetDatum(s ? (int64) s->steps : 0);
		v[13] = Int64GetDatum(s ? (int64) s->rows : 0);
		v[14] = Float8GetDatum(s && s->steps ? (double) s->rows / s->steps : 0);
		n[14] = s == NULL || s->steps == 0;
		v[15] = Int32GetDatum(s ? s->max_batch : 0);
		v[16] = TimestampTzGetDatum(reset);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
	}
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(mms_stat_info);

/* mms_stat_info(): statistics entries evicted for room (never silently lost) and the last reset. */
Datum
mms_stat_info(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		v[3];
	bool		n[3] = {0};
	int			n_st;
	uint64		dealloc;
	TimestampTz reset;

	require_layout();
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	(void) mms_stats_snapshot(&n_st, &dealloc, &reset);
	v[0] = Int32GetDatum(n_st);
	v[1] = Int64GetDatum((int64) dealloc);
	v[2] = TimestampTzGetDatum(reset);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), v, n)));
}

PG_FUNCTION_INFO_V1(mms_stat_latency);

/*
 * mms_stat_latency(): per (database, model version) and metric, quantiles
 * estimated from the histogram buckets, the count and the sum; the same
 * visibility as mms_stat_models.
 */
Datum
mms_stat_latency(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MmsHistEntry *hs;
	int			n_hs;
	bool		all = sees_everything();
	static const double qs[3] = {0.5, 0.9, 0.99};

	require_layout();
	InitMaterializedSRF(fcinfo, 0);
	hs = mms_hist_snapshot(&n_hs);
	for (int j = 0; j < n_hs; j++)
	{
		MmsHistEntry *e = &hs[j];

		if (!all && e->key.dboid != MyDatabaseId)
			continue;
		for (int m = 0; m < MMS_H_N; m++)
		{
			const MmsHistogram *h = &e->h[m];
			Datum		v[8];
			bool		n[8] = {0};

			if (h->count == 0)
				continue;
			v[0] = db_name(e->key.dboid);
			v[1] = CStringGetTextDatum(psprintf("%s:%d", e->name, e->version));
			v[2] = CStringGetTextDatum(mms_hist_metric_name((MmsHistMetric) m));
			for (int k = 0; k < 3; k++)
				v[3 + k] = Float8GetDatum(mms_hist_quantile(h, (MmsHistMetric) m, qs[k]));
			v[6] = Int64GetDatum((int64) h->count);
			v[7] = Float8GetDatum(h->sum);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
		}
	}
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(mms_stat_reset);

Datum
mms_stat_reset(PG_FUNCTION_ARGS)
{
	mms_require_serving();
	mms_require_admin("reset mms statistics");
	mms_stats_reset();
	mms_served_reset_stats();
	mms_hist_reset();
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(mms_load);

/*
 * mms_load(model text) RETURNS boolean: loads the model's weights into the
 * shared cache (a loader reads them) and returns once they are there.
 */
Datum
mms_load(PG_FUNCTION_ARGS)
{
	char	   *ref = text_to_cstring(PG_GETARG_TEXT_PP(0));
	MmsModel	m;
	uint32		gen;
	int			i;

	mms_require_serving();
	/* warming the cache can evict other models: an operator's call */
	mms_require_admin("load models");
	mms_resolve_model(ref, true, &m);
	i = mms_served_acquire(&m, MyDatabaseId, &gen);
	mms_served_want(i, gen);
	for (;;)
	{
		MmsServed	s;

		if (!mms_served_get(i, gen, &s))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("model \"%s:%d\" was unregistered while loading", m.name, m.version)));
		if (s.state == MMS_S_READY)
			PG_RETURN_BOOL(true);
		if (s.state == MMS_S_FAILED)
			ereport(ERROR,
					(errcode(s.load_err.sqlstate ? s.load_err.sqlstate : ERRCODE_SYSTEM_ERROR),
					 errmsg("could not load model \"%s:%d\": %s", m.name, m.version, s.load_err.msg),
					 s.load_err.hint[0] ? errhint("%s", s.load_err.hint) : 0));
		if (s.state == MMS_S_EMPTY)
			mms_served_want(i, gen);	/* evicted meanwhile: again */
		mms_wait_shared(100);
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
	TimestampTz deadline;
	int			i;
	int			queued,
				running;

	mms_require_serving();
	mms_require_admin("unload models");
	mms_resolve_model(ref, false, &m);
	i = mms_served_lookup(m.sha256);
	if (i < 0)
		PG_RETURN_BOOL(false);
	mms_queue_depth(i, &queued, &running, NULL);
	if (queued > 0 || running > 0)
	{
		ereport(NOTICE,
				(errmsg("model \"%s:%d\" is in use and stays loaded", m.name, m.version)));
		PG_RETURN_BOOL(false);
	}
	mms_workers_drain_served(i);
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 10000);
	for (;;)
	{
		MmsServed	s;

		if (!mms_served_get(i, 0, &s) || strcmp(s.sha256, m.sha256) != 0 || s.state != MMS_S_READY)
			PG_RETURN_BOOL(false);
		if (s.refcount == 0 && mms_served_unload(i, false, "mms_unload"))
			PG_RETURN_BOOL(true);
		if (GetCurrentTimestamp() > deadline)
		{
			ereport(NOTICE,
					(errmsg("model \"%s:%d\" is still attached by a worker and stays loaded",
							m.name, m.version)));
			PG_RETURN_BOOL(false);
		}
		mms_wait_shared(100);
	}
}
