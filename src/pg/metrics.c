/*
 * metrics.c — mms_metrics(): the serving state in the Prometheus text
 * exposition format 0.0.4, for a scraper that runs one query. It reads
 * snapshots through the owners' verbs (stats, histograms, served models,
 * workers, queues, events) and writes nothing.
 *
 * Names follow vLLM's where one exists (mms_time_to_first_token_seconds,
 * mms_num_requests_waiting, ...), carry their unit, and counters end in
 * _total. Request counters are per (database, model, role); histograms per
 * (database, model); gauges of served models are labelled with the
 * registration the weights were loaded for. Counters restart from zero after
 * mms_stat_reset() or a server restart, which Prometheus' rate() handles.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_authid.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"

#include "serve.h"

/* One histogram family: its metric and how the exposition names and explains it. */
typedef struct HistFamily
{
	MmsHistMetric metric;
	const char *name;
	const char *help;
} HistFamily;

static const HistFamily hist_families[] = {
	{MMS_H_QUEUE_WAIT, "mms_request_queue_time_seconds",
	"Time requests waited in their model's queue before a worker took them."},
	{MMS_H_TTFT, "mms_time_to_first_token_seconds",
	"Time from a generation request entering the queue to its first output token."},
	{MMS_H_TOTAL, "mms_e2e_request_latency_seconds",
	"Time from a request entering the queue to its result."},
	{MMS_H_TPOT, "mms_time_per_output_token_seconds",
	"Time per output token after the first."},
	{MMS_H_BATCH, "mms_decoder_batch_size",
	"Rows (sequences) decoded together in one decoder step."},
};

static void
family(StringInfo out, const char *name, const char *type, const char *help)
{
	appendStringInfo(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value, escaped as the format asks (backslash, double quote, newline). */
static void
append_value(StringInfo out, const char *v)
{
	appendStringInfoChar(out, '"');
	for (; *v; v++)
	{
		if (*v == '\\' || *v == '"')
			appendStringInfoChar(out, '\\');
		if (*v == '\n')
		{
			appendStringInfoString(out, "\\n");
			continue;
		}
		appendStringInfoChar(out, *v);
	}
	appendStringInfoChar(out, '"');
}

/*
 * Starts a sample: name{labels...; NULL-terminated name/value pairs}. The
 * caller appends the value and the newline.
 */
static void
sample(StringInfo out, const char *name,...)
{
	va_list		ap;
	const char *k;
	bool		first = true;

	appendStringInfoString(out, name);
	va_start(ap, name);
	while ((k = va_arg(ap, const char *)) != NULL)
	{
		const char *v = va_arg(ap, const char *);

		appendStringInfoString(out, first ? "{" : ",");
		appendStringInfo(out, "%s=", k);
		append_value(out, v);
		first = false;
	}
	va_end(ap);
	if (!first)
		appendStringInfoChar(out, '}');
	appendStringInfoChar(out, ' ');
}

static void
append_double(StringInfo out, double v)
{
	if (isnan(v))
		appendStringInfoString(out, "NaN\n");
	else if (isinf(v))
		appendStringInfoString(out, v > 0 ? "+Inf\n" : "-Inf\n");
	else
		appendStringInfo(out, "%.17g\n", v);
}

static void
append_count(StringInfo out, uint64 v)
{
	appendStringInfo(out, UINT64_FORMAT "\n", v);
}

static const char *
db_label(Oid dboid)
{
	char	   *name = get_database_name(dboid);

	return name ? name : psprintf("%u", dboid);
}

static const char *
role_label(Oid roleid)
{
	char	   *name = GetUserNameFromId(roleid, true);

	return name ? name : psprintf("%u", roleid);	/* dropped since */
}

/* The label of a served model: the registration it was loaded for; NULL when it has none. */
static bool
served_labels(const MmsServed *s, const char **db, const char **model)
{
	if (s->sha256[0] == '\0' || s->n_users == 0)
		return false;
	*db = db_label(s->users[0].dboid);
	*model = psprintf("%s:%d", s->users[0].name, s->users[0].version);
	return true;
}

static void
requests(StringInfo out, const MmsStatEntry *st, int n_st)
{
	static const char *const outcomes[] = {"ok", "error", "cancelled", "rejected"};

	family(out, "mms_requests_total", "counter",
		   "Inference requests by outcome: ok, error, cancelled, or rejected by a quota.");
	for (int j = 0; j < n_st; j++)
	{
		const MmsStatEntry *e = &st[j];
		const char *db = db_label(e->key.dboid);
		const char *model = psprintf("%s:%d", e->name, e->version);
		const char *role = role_label(e->key.roleid);
		uint64		failed = e->c.errors + e->c.cancels;
		uint64		v[4];

		v[0] = e->c.calls > failed ? e->c.calls - failed : 0;
		v[1] = e->c.errors;
		v[2] = e->c.cancels;
		v[3] = e->c.rejections;
		for (int k = 0; k < 4; k++)
		{
			sample(out, "mms_requests_total", "database", db, "model", model, "role", role,
				   "outcome", outcomes[k], NULL);
			append_count(out, v[k]);
		}
	}
	family(out, "mms_prompt_tokens_total", "counter", "Input tokens of finished requests.");
	for (int j = 0; j < n_st; j++)
	{
		const MmsStatEntry *e = &st[j];

		sample(out, "mms_prompt_tokens_total", "database", db_label(e->key.dboid),
			   "model", psprintf("%s:%d", e->name, e->version), "role", role_label(e->key.roleid), NULL);
		append_count(out, e->c.input_tokens);
	}
	family(out, "mms_generation_tokens_total", "counter",
		   "Output tokens of finished requests (generated, or the target's when scoring).");
	for (int j = 0; j < n_st; j++)
	{
		const MmsStatEntry *e = &st[j];

		sample(out, "mms_generation_tokens_total", "database", db_label(e->key.dboid),
			   "model", psprintf("%s:%d", e->name, e->version), "role", role_label(e->key.roleid), NULL);
		append_count(out, e->c.output_tokens);
	}
	family(out, "mms_quota_rejections_total", "counter", "Requests refused by a role quota.");
	for (int j = 0; j < n_st; j++)
	{
		const MmsStatEntry *e = &st[j];

		sample(out, "mms_quota_rejections_total", "database", db_label(e->key.dboid),
			   "model", psprintf("%s:%d", e->name, e->version), "role", role_label(e->key.roleid), NULL);
		append_count(out, e->c.rejections);
	}
}

static void
histograms(StringInfo out, const MmsHistEntry *hs, int n_hs)
{
	for (int f = 0; f < lengthof(hist_families); f++)
	{
		const HistFamily *hf = &hist_families[f];
		char	   *bucket = psprintf("%s_bucket", hf->name);
		char	   *sum = psprintf("%s_sum", hf->name);
		char	   *count = psprintf("%s_count", hf->name);
		int			n_bounds;
		const double *bounds = mms_hist_bounds(hf->metric, &n_bounds);

		family(out, hf->name, "histogram", hf->help);
		for (int j = 0; j < n_hs; j++)
		{
			const MmsHistEntry *e = &hs[j];
			const MmsHistogram *h = &e->h[hf->metric];
			const char *db = db_label(e->key.dboid);
			const char *model = psprintf("%s:%d", e->name, e->version);
			uint64		cum = 0;

			if (h->count == 0)
				continue;
			for (int k = 0; k < n_bounds; k++)
			{
				cum += h->counts[k];
				sample(out, bucket, "database", db, "model", model, "le", psprintf("%g", bounds[k]), NULL);
				append_count(out, cum);
			}
			sample(out, bucket, "database", db, "model", model, "le", "+Inf", NULL);
			append_count(out, h->count);
			sample(out, sum, "database", db, "model", model, NULL);
			append_double(out, h->sum);
			sample(out, count, "database", db, "model", model, NULL);
			append_count(out, h->count);
		}
	}
}

static void
served_models(StringInfo out, const MmsServed *dir, const MmsWorker *ws)
{
	static const char *const states[] = {"starting", "loading", "ready", "draining"};
	int			queued[MMS_MAX_SERVED];
	int			running[MMS_MAX_SERVED];
	int			workers[MMS_MAX_SERVED][4];
	const char *db;
	const char *model;
	Size		used = 0;

	memset(workers, 0, sizeof(workers));
	for (int i = 0; i < MMS_WORKER_SLOTS; i++)
	{
		const MmsWorker *w = &ws[i];
		int			k;

		if (w->kind != MMS_WK_INFERENCE || w->served < 0 || w->served >= MMS_MAX_SERVED ||
			dir[w->served].generation != w->served_gen)
			continue;
		switch (w->state)
		{
			case MMS_W_REQUESTED:
			case MMS_W_STARTING:
				k = 0;
				break;
			case MMS_W_ATTACHING:
				k = 1;
				break;
			case MMS_W_READY:
				k = 2;
				break;
			case MMS_W_DRAINING:
				k = 3;
				break;
			default:
				continue;
		}
		workers[w->served][k]++;
	}
	for (int i = 0; i < MMS_MAX_SERVED; i++)
	{
		queued[i] = running[i] = 0;
		if (dir[i].sha256[0] != '\0')
			mms_queue_depth(i, &queued[i], &running[i], NULL);
		if (dir[i].state == MMS_S_READY || dir[i].state == MMS_S_LOADING)
			used += dir[i].seg_bytes;
	}

	family(out, "mms_num_requests_waiting", "gauge", "Requests queued for a model, not yet taken by a worker.");
	for (int i = 0; i < MMS_MAX_SERVED; i++)
		if (served_labels(&dir[i], &db, &model))
		{
			sample(out, "mms_num_requests_waiting", "database", db, "model", model, NULL);
			appendStringInfo(out, "%d\n", queued[i]);
		}
	family(out, "mms_num_requests_running", "gauge", "Requests a worker of the model is running.");
	for (int i = 0; i < MMS_MAX_SERVED; i++)
		if (served_labels(&dir[i], &db, &model))
		{
			sample(out, "mms_num_requests_running", "database", db, "model", model, NULL);
			appendStringInfo(out, "%d\n", running[i]);
		}
	family(out, "mms_workers", "gauge", "Inference workers of a model by state.");
	for (int i = 0; i < MMS_MAX_SERVED; i++)
		if (served_labels(&dir[i], &db, &model))
			for (int k = 0; k < 4; k++)
			{
				sample(out, "mms_workers", "database", db, "model", model, "state", states[k], NULL);
				appendStringInfo(out, "%d\n", workers[i][k]);
			}
	family(out, "mms_model_loaded", "gauge", "1 while the model's weights are in the cache, else 0.");
	for (int i = 0; i < MMS_MAX_SERVED; i++)
		if (served_labels(&dir[i], &db, &model))
		{
			sample(out, "mms_model_loaded", "database", db, "model", model, NULL);
			appendStringInfo(out, "%d\n", dir[i].state == MMS_S_READY ? 1 : 0);
		}
	family(out, "mms_model_loads_total", "counter", "Loads of the model's weights into the cache.");
	for (int i = 0; i < MMS_MAX_SERVED; i++)
		if (served_labels(&dir[i], &db, &model))
		{
			sample(out, "mms_model_loads_total", "database", db, "model", model, NULL);
			append_count(out, dir[i].loads);
		}
	family(out, "mms_model_load_duration_seconds", "gauge", "Time the last load of the model's weights took.");
	for (int i = 0; i < MMS_MAX_SERVED; i++)
		if (served_labels(&dir[i], &db, &model) && dir[i].loads > 0)
		{
			sample(out, "mms_model_load_duration_seconds", "database", db, "model", model, NULL);
			append_double(out, dir[i].load_ms / 1000.0);
		}
	family(out, "mms_cache_used_bytes", "gauge", "Bytes of weights loaded or loading in the shared cache.");
	sample(out, "mms_cache_used_bytes", NULL);
	append_count(out, (uint64) used);
	family(out, "mms_cache_budget_bytes", "gauge", "Size of the shared cache of weights (mms.cache_size).");
	sample(out, "mms_cache_budget_bytes", NULL);
	append_count(out, (uint64) mms_cache_size_mb * 1024 * 1024);
}

static uint64
kind_count(const uint64 *c, const char *kind)
{
	for (int k = 0; k < MMS_EVENT_KINDS; k++)
		if (strcmp(mms_event_kinds[k], kind) == 0)
			return c[k];
	return 0;
}

static void
events(StringInfo out)
{
	uint64		c[MMS_EVENT_KINDS];

	mms_events_counts(c);
	family(out, "mms_model_load_failures_total", "counter", "Loads of weights that failed.");
	sample(out, "mms_model_load_failures_total", NULL);
	append_count(out, kind_count(c, "load_failed"));
	family(out, "mms_cache_evictions_total", "counter", "Weights evicted from the cache to make room.");
	sample(out, "mms_cache_evictions_total", NULL);
	append_count(out, kind_count(c, "evict"));
	family(out, "mms_pool_scaling_events_total", "counter", "Workers added to or removed from a pool.");
	sample(out, "mms_pool_scaling_events_total", "direction", "up", NULL);
	append_count(out, kind_count(c, "scale_up"));
	sample(out, "mms_pool_scaling_events_total", "direction", "down", NULL);
	append_count(out, kind_count(c, "scale_down"));
	family(out, "mms_worker_exits_total", "counter",
		   "Inference workers that exited unexpectedly or because their model was unregistered.");
	sample(out, "mms_worker_exits_total", NULL);
	append_count(out, kind_count(c, "worker_exit"));
}

PG_FUNCTION_INFO_V1(mms_metrics);

/* mms_metrics() RETURNS text: superusers, mms_admin and pg_monitor members. */
Datum
mms_metrics(PG_FUNCTION_ARGS)
{
	StringInfoData out;
	MmsStatEntry *st;
	int			n_st;
	uint64		dealloc;
	TimestampTz reset;
	MmsHistEntry *hs;
	int			n_hs;
	MmsServed  *dir;
	MmsWorker  *ws;

	mms_require_serving();
	if (!mms_is_admin(GetUserId()) && !has_privs_of_role(GetUserId(), ROLE_PG_MONITOR))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function mms_metrics"),
				 errhint("Only superusers and members of roles \"mms_admin\" or \"pg_monitor\" may read mms metrics.")));

	/* every snapshot first (each under its own lock), then formatting without any */
	st = mms_stats_snapshot(&n_st, &dealloc, &reset);
	hs = mms_hist_snapshot(&n_hs);
	dir = palloc(sizeof(MmsServed) * MMS_MAX_SERVED);
	mms_served_snapshot(dir);
	ws = palloc(sizeof(MmsWorker) * MMS_WORKER_SLOTS);
	mms_workers_snapshot(ws);

	initStringInfo(&out);
	requests(&out, st, n_st);
	histograms(&out, hs, n_hs);
	served_models(&out, dir, ws);
	events(&out);
	family(&out, "mms_stat_entries_evicted_total", "counter",
		   "Entries of request statistics evicted to make room (mms.max_stats).");
	sample(&out, "mms_stat_entries_evicted_total", NULL);
	append_count(&out, dealloc);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(out.data, out.len));
}
