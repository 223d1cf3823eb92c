/*
 * alerts.c — alerts inside the database: the evaluation pass that the
 * per-database maintenance process runs (usage_flush.c) every
 * mms.alert_interval, and the shared state behind mms.alerts. The functions
 * that write the rules are alert_rules.c's; when a database's maintenance
 * process runs is the launcher's decision.
 *
 * Shared state (its own lock, tranche "mms alerts", the last in the lock
 * order; held briefly, nothing waits or ERRORs while holding it):
 *  - rule states, keyed by (database, rule name): ok, pending or firing, since
 *    when, the last value, and the totals of the previous evaluation, from
 *    which the rates of the next window are differences. Written by the
 *    evaluation pass alone (one maintenance process at a time), read by
 *    mms.alerts. A state whose rule is gone is dropped by the next pass.
 *  - counters per (database, model name): calls, errors and quota rejections
 *    since the server started, added by every call through mms_usage_add
 *    (also during abort: no palloc, no ERROR). Usage rows cannot serve: a
 *    flush subtracts what it wrote. When the table is full, the counter used
 *    least recently is taken over; a total that went down is a new baseline.
 *  - the databases that have rules, which the launcher visits every
 *    mms.alert_interval: added by mms_set_alert at once, and set or cleared
 *    by every pass from what it found.
 * The rules themselves are rows of each database, so they are dumped,
 * replicated and restored with it. A hot standby evaluates them and logs
 * its transitions; it can neither write events nor NOTIFY.
 */
#include "postgres.h"

#include <math.h>

#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/timestamp.h"

#include "serve.h"

#define MAX_RULE_STATES 256		/* rules evaluated at once, all databases */
#define MAX_COUNTERS 512		/* (database, model) counters */
#define MAX_ALERT_DBS 64		/* databases with rules */
#define METRIC_LEN 32

typedef enum AlertState
{
	ALERT_OK = 0,
	ALERT_PENDING,
	ALERT_FIRING
} AlertState;

static const char *const state_names[] = {"ok", "pending", "firing"};

typedef enum AlertMetric
{
	M_P99_LATENCY = 0,
	M_ERROR_RATIO,
	M_QUEUE_WAIT,
	M_REQUESTS_WAITING,
	M_QUOTA_REJECTIONS,
	M_CACHE_USED,
	M_N
} AlertMetric;

static const char *const metric_names[M_N] = {
	"p99_latency_ms", "error_ratio", "queue_wait_ms", "requests_waiting",
	"quota_rejections_per_minute", "cache_used_fraction"
};

/* Totals a window is the difference of. */
typedef struct AlertTotals
{
	uint64		calls;
	uint64		errors;
	uint64		rejections;
} AlertTotals;

typedef struct RuleState
{
	Oid			dboid;			/* InvalidOid: free */
	char		name[NAMEDATALEN];
	AlertMetric metric;			/* the rule this state was built for: a change starts over */
	char		model[NAMEDATALEN];	/* "" = every model of the database */
	AlertState	state;
	TimestampTz since;			/* entered the current state */
	bool		has_value;		/* the last evaluation had a value */
	double		value;
	TimestampTz evaluated_at;
	bool		has_base;		/* totals of the previous evaluation */
	TimestampTz base_at;
	AlertTotals base;
	uint64		base_hist[MMS_HIST_BUCKETS + 1];
} RuleState;

typedef struct Counter
{
	Oid			dboid;			/* InvalidOid: free */
	char		model[NAMEDATALEN];
	TimestampTz last_add;
	AlertTotals t;
} Counter;

typedef struct AlertsShared
{
	LWLock	   *lock;
	Oid			dbs[MAX_ALERT_DBS];
	RuleState	rules[MAX_RULE_STATES];
	Counter		counters[MAX_COUNTERS];
} AlertsShared;

static AlertsShared *alerts = NULL;

/* ---- shared memory ---------------------------------------------------------- */

void
mms_alerts_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(AlertsShared)));
	RequestNamedLWLockTranche("mms alerts", 1);
}

/* AddinShmemInitLock held. */
void
mms_alerts_shmem_init(void)
{
	bool		found;

	alerts = ShmemInitStruct("mms alerts", sizeof(AlertsShared), &found);
	if (!found)
	{
		memset(alerts, 0, sizeof(AlertsShared));
		alerts->lock = &(GetNamedLWLockTranche("mms alerts"))[0].lock;
	}
}

void
mms_alerts_count(Oid dboid, const char *model, uint64 calls, uint64 errors, uint64 rejections)
{
	Counter    *c = NULL;
	Counter    *oldest = NULL;
	TimestampTz now;

	if (alerts == NULL || (calls == 0 && errors == 0 && rejections == 0))
		return;
	now = GetCurrentTimestamp();
	LWLockAcquire(alerts->lock, LW_EXCLUSIVE);
	for (int i = 0; i < MAX_COUNTERS && c == NULL; i++)
	{
		Counter    *x = &alerts->counters[i];

		if (x->dboid == dboid && strcmp(x->model, model) == 0)
			c = x;
		else if (oldest == NULL || x->dboid == InvalidOid ||
				 (oldest->dboid != InvalidOid && x->last_add < oldest->last_add))
			oldest = x;
	}
	if (c == NULL)
	{
		c = oldest;
		memset(c, 0, sizeof(*c));
		c->dboid = dboid;
		strlcpy(c->model, model, sizeof(c->model));
	}
	c->last_add = now;
	c->t.calls += calls;
	c->t.errors += errors;
	c->t.rejections += rejections;
	LWLockRelease(alerts->lock);
}

bool
mms_alerts_set_database(Oid dboid, bool has_rules)
{
	int			free_at = -1;
	bool		ok = true;

	if (alerts == NULL)
		return true;			/* not preloaded: nothing is evaluated anyway */
	LWLockAcquire(alerts->lock, LW_EXCLUSIVE);
	for (int i = 0; i < MAX_ALERT_DBS; i++)
	{
		if (alerts->dbs[i] == dboid)
		{
			if (!has_rules)
				alerts->dbs[i] = InvalidOid;
			LWLockRelease(alerts->lock);
			return true;
		}
		if (alerts->dbs[i] == InvalidOid && free_at < 0)
			free_at = i;
	}
	if (has_rules)
	{
		if (free_at >= 0)
			alerts->dbs[free_at] = dboid;
		else
			ok = false;
	}
	LWLockRelease(alerts->lock);
	return ok;
}

void
mms_alerts_forget_database(Oid dboid)
{
	if (alerts == NULL)
		return;
	LWLockAcquire(alerts->lock, LW_EXCLUSIVE);
	for (int i = 0; i < MAX_ALERT_DBS; i++)
		if (alerts->dbs[i] == dboid)
			alerts->dbs[i] = InvalidOid;
	for (int i = 0; i < MAX_RULE_STATES; i++)
		if (alerts->rules[i].dboid == dboid)
			memset(&alerts->rules[i], 0, sizeof(RuleState));
	for (int i = 0; i < MAX_COUNTERS; i++)
		if (alerts->counters[i].dboid == dboid)
			memset(&alerts->counters[i], 0, sizeof(Counter));
	LWLockRelease(alerts->lock);
}

List *
mms_alerts_databases(void)
{
	List	   *dbs = NIL;

	if (alerts == NULL)
		return NIL;
	LWLockAcquire(alerts->lock, LW_SHARED);
	for (int i = 0; i < MAX_ALERT_DBS; i++)
		if (alerts->dbs[i] != InvalidOid)
			dbs = lappend_oid(dbs, alerts->dbs[i]);
	LWLockRelease(alerts->lock);
	return dbs;
}

/* ---- the evaluation pass ------------------------------------------------------ */

/* A row of mms.alert_rules. */
typedef struct Rule
{
	char		name[NAMEDATALEN];
	AlertMetric metric;
	double		threshold;
	double		for_ms;
	char		model[NAMEDATALEN];	/* "" = every model */
} Rule;

/* What every rule of the pass reads: shared state copied once. */
typedef struct PassInputs
{
	TimestampTz now;
	MmsServed  *dir;
	int			queued[MMS_MAX_SERVED];
	TimestampTz oldest[MMS_MAX_SERVED];
	Counter    *counters;		/* this database's */
	int			n_counters;
	MmsHistEntry *hists;		/* latency histograms, this database's */
	int			n_hists;
} PassInputs;

/* A transition to report once the shared table is released. */
typedef struct Transition
{
	Rule		rule;
	bool		firing;			/* else resolved */
	bool		has_value;
	double		value;
} Transition;

static AlertMetric
metric_of(const char *name)
{
	for (int m = 0; m < M_N; m++)
		if (strcmp(name, metric_names[m]) == 0)
			return (AlertMetric) m;
	return M_N;
}

bool
mms_alert_metric_exists(const char *name)
{
	return metric_of(name) != M_N;
}

/* Does served entry s serve the rule's model (or any model) of this database? */
static bool
served_matches(const MmsServed *s, const Rule *r)
{
	if (s->sha256[0] == '\0')
		return false;
	for (int u = 0; u < s->n_users; u++)
		if (s->users[u].dboid == MyDatabaseId &&
			(r->model[0] == '\0' || strcmp(s->users[u].name, r->model) == 0))
			return true;
	return false;
}

static void
sum_totals(const PassInputs *in, const Rule *r, AlertTotals *out)
{
	memset(out, 0, sizeof(*out));
	for (int i = 0; i < in->n_counters; i++)
	{
		const Counter *c = &in->counters[i];

		if (r->model[0] != '\0' && strcmp(c->model, r->model) != 0)
			continue;
		out->calls += c->t.calls;
		out->errors += c->t.errors;
		out->rejections += c->t.rejections;
	}
}

/*
 * p99 of the time from call to result in the window: the difference of the
 * bucket counts since the previous evaluation, summed over the model's
 * versions (or every model of the database).
 */
static bool
p99_value(const PassInputs *in, const Rule *r, RuleState *st, double *value)
{
	MmsHistogram now;
	MmsHistogram window;
	bool		have = st->has_base;
	double		q;

	memset(&now, 0, sizeof(now));
	for (int i = 0; i < in->n_hists; i++)
	{
		const MmsHistogram *h = &in->hists[i].h[MMS_H_TOTAL];

		if (r->model[0] != '\0' && strcmp(in->hists[i].name, r->model) != 0)
			continue;
		for (int b = 0; b <= MMS_HIST_BUCKETS; b++)
			now.counts[b] += h->counts[b];
	}
	memset(&window, 0, sizeof(window));
	for (int b = 0; b <= MMS_HIST_BUCKETS && have; b++)
	{
		/* a count that went down: histograms reset or evicted, the window starts again */
		if (now.counts[b] < st->base_hist[b])
			have = false;
		else
		{
			window.counts[b] = now.counts[b] - st->base_hist[b];
			window.count += window.counts[b];
		}
	}
	memcpy(st->base_hist, now.counts, sizeof(st->base_hist));
	st->has_base = true;
	st->base_at = in->now;
	if (!have || window.count == 0)
		return false;
	q = mms_hist_quantile(&window, MMS_H_TOTAL, 0.99);
	if (isnan(q))
		return false;
	*value = q * 1000.0;
	return true;
}

/*
 * The rule's value now; false when it has none (no window yet, no calls in
 * it, no cache budget, no latency data). Rates are over the window since the
 * previous evaluation, whose totals st keeps; alerts lock held.
 */
static bool
rule_value(const PassInputs *in, const Rule *r, RuleState *st, double *value)
{
	AlertTotals t;
	bool		have = false;
	double		window_ms;

	switch (r->metric)
	{
		case M_QUEUE_WAIT:
		case M_REQUESTS_WAITING:
			{
				int			waiting = 0;
				TimestampTz oldest = 0;

				for (int i = 0; i < MMS_MAX_SERVED; i++)
				{
					if (!served_matches(&in->dir[i], r))
						continue;
					waiting += in->queued[i];
					if (in->oldest[i] != 0 && (oldest == 0 || in->oldest[i] < oldest))
						oldest = in->oldest[i];
				}
				if (r->metric == M_REQUESTS_WAITING)
					*value = waiting;
				else
					*value = oldest != 0 && in->now > oldest ? (double) (in->now - oldest) / 1000.0 : 0;
				return true;
			}
		case M_CACHE_USED:
			{
				double		bytes = 0;

				if (mms_cache_size_mb <= 0)
					return false;
				for (int i = 0; i < MMS_MAX_SERVED; i++)
				{
					const MmsServed *s = &in->dir[i];

					if (s->state != MMS_S_READY && s->state != MMS_S_LOADING)
						continue;
					/* every model: the whole cache, which all databases share */
					if (r->model[0] != '\0' && !served_matches(s, r))
						continue;
					bytes += s->state == MMS_S_READY ? (double) s->seg_bytes : (double) s->size_bytes;
				}
				*value = bytes / ((double) mms_cache_size_mb * 1024.0 * 1024.0);
				return true;
			}
		case M_P99_LATENCY:
			return p99_value(in, r, st, value);
		case M_ERROR_RATIO:
		case M_QUOTA_REJECTIONS:
			break;
		case M_N:
			return false;
	}

	sum_totals(in, r, &t);
	window_ms = (double) (in->now - st->base_at) / 1000.0;
	/* a total that went down lost its counter: the window starts again */
	if (st->has_base && t.calls >= st->base.calls && t.errors >= st->base.errors &&
		t.rejections >= st->base.rejections && window_ms > 0)
	{
		uint64		calls = t.calls - st->base.calls;

		if (r->metric == M_ERROR_RATIO && calls > 0)
		{
			*value = (double) (t.errors - st->base.errors) / (double) calls;
			have = true;
		}
		else if (r->metric == M_QUOTA_REJECTIONS)
		{
			*value = (double) (t.rejections - st->base.rejections) * 60000.0 / window_ms;
			have = true;
		}
	}
	st->has_base = true;
	st->base = t;
	st->base_at = in->now;
	return have;
}

/* Alerts lock held: the state of (this database, rule), created if new; NULL when the table is full. */
static RuleState *
find_state(const Rule *r)
{
	RuleState  *st = NULL;

	for (int i = 0; i < MAX_RULE_STATES && st == NULL; i++)
		if (alerts->rules[i].dboid == MyDatabaseId && strcmp(alerts->rules[i].name, r->name) == 0)
			st = &alerts->rules[i];
	if (st != NULL && st->metric == r->metric && strcmp(st->model, r->model) == 0)
		return st;
	/* new, or redefined: starts over from ok */
	for (int i = 0; i < MAX_RULE_STATES && st == NULL; i++)
		if (alerts->rules[i].dboid == InvalidOid)
			st = &alerts->rules[i];
	if (st == NULL)
		return NULL;
	memset(st, 0, sizeof(*st));
	st->dboid = MyDatabaseId;
	strlcpy(st->name, r->name, sizeof(st->name));
	st->metric = r->metric;
	strlcpy(st->model, r->model, sizeof(st->model));
	st->state = ALERT_OK;
	return st;
}

/* Alerts lock held: one evaluation of r; true with *tr filled on a transition. */
static bool
evaluate(const PassInputs *in, const Rule *r, RuleState *st, Transition *tr)
{
	double		value = 0;
	bool		have = rule_value(in, r, st, &value);
	bool		above = have && value > r->threshold;

	if (st->evaluated_at == 0)
		st->since = in->now;
	st->has_value = have;
	st->value = value;
	st->evaluated_at = in->now;
	memset(tr, 0, sizeof(*tr));
	tr->rule = *r;
	tr->has_value = have;
	tr->value = value;
	if (above)
	{
		if (st->state == ALERT_OK)
		{
			st->state = ALERT_PENDING;
			st->since = in->now;
		}
		if (st->state == ALERT_PENDING && (double) (in->now - st->since) / 1000.0 >= r->for_ms)
		{
			st->state = ALERT_FIRING;
			st->since = in->now;
			tr->firing = true;
			return true;
		}
		return false;
	}
	if (st->state == ALERT_OK)
		return false;
	st->since = in->now;
	if (st->state == ALERT_FIRING)
	{
		st->state = ALERT_OK;
		tr->firing = false;
		return true;
	}
	st->state = ALERT_OK;
	return false;
}

static const char *
value_text(const Transition *tr)
{
	return tr->has_value ? psprintf("%g", tr->value) : "null";
}

/* The NOTIFY payload: a JSON object. */
static char *
payload(const Transition *tr, TimestampTz at)
{
	StringInfoData s;

	initStringInfo(&s);
	appendStringInfoString(&s, "{\"rule\": ");
	escape_json(&s, tr->rule.name);
	appendStringInfo(&s, ", \"metric\": \"%s\", \"model\": ", metric_names[tr->rule.metric]);
	if (tr->rule.model[0])
		escape_json(&s, tr->rule.model);
	else
		appendStringInfoString(&s, "null");
	appendStringInfo(&s, ", \"state\": \"%s\", \"value\": %s, \"threshold\": %g, \"at\": ",
					 tr->firing ? "firing" : "resolved", value_text(tr), tr->rule.threshold);
	escape_json(&s, timestamptz_to_str(at));
	appendStringInfoChar(&s, '}');
	return s.data;
}

/* Catalog session entered: logs a transition; on a primary also a row and a notification. */
static void
report(const Transition *tr, TimestampTz at)
{
	const Rule *r = &tr->rule;

	if (tr->firing)
		ereport(WARNING,
				(errmsg("mms alert \"%s\" is firing: %s%s%s is %s, above %g",
						r->name, metric_names[r->metric], r->model[0] ? " of model " : "",
						r->model, value_text(tr), r->threshold)));
	else
		ereport(WARNING,
				(errmsg("mms alert \"%s\" resolved: %s%s%s is %s, threshold %g",
						r->name, metric_names[r->metric], r->model[0] ? " of model " : "",
						r->model, value_text(tr), r->threshold)));
	/* during recovery no row can be written, and NOTIFY needs a transaction id */
	if (RecoveryInProgress())
		return;
	{
		Oid			t[7] = {TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, FLOAT8OID, FLOAT8OID};
		Datum		v[7];
		char		n[8] = "       ";

		v[0] = TimestampTzGetDatum(at);
		v[1] = CStringGetTextDatum(r->name);
		v[2] = CStringGetTextDatum(metric_names[r->metric]);
		v[3] = r->model[0] ? CStringGetTextDatum(r->model) : (Datum) 0;
		n[3] = r->model[0] ? ' ' : 'n';
		v[4] = CStringGetTextDatum(tr->firing ? "firing" : "resolved");
		v[5] = Float8GetDatum(tr->value);
		n[5] = tr->has_value ? ' ' : 'n';
		v[6] = Float8GetDatum(r->threshold);
		mms_spi_exec("INSERT INTO mms.alert_events (at, rule, metric, model, state, value, threshold)"
					 " VALUES ($1, $2, $3, $4, $5, $6, $7)",
					 7, t, v, n, SPI_OK_INSERT);
	}
	Async_Notify("mms_alerts", payload(tr, at));
}

static int
read_rules(Rule **out)
{
	uint64		n;
	Rule	   *rules;

	n = mms_spi_exec("SELECT r.name, r.metric, r.threshold,"
					 " pg_catalog.date_part('epoch', r.for_interval) OPERATOR(pg_catalog.*) 1000,"
					 " r.model FROM mms.alert_rules r ORDER BY r.name",
					 0, NULL, NULL, NULL, SPI_OK_SELECT);
	rules = palloc0(sizeof(Rule) * Max(n, 1));
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *s;

		strlcpy(rules[i].name, SPI_getvalue(tup, desc, 1), NAMEDATALEN);
		rules[i].metric = metric_of(SPI_getvalue(tup, desc, 2));
		rules[i].threshold = DatumGetFloat8(SPI_getbinval(tup, desc, 3, &isnull));
		rules[i].for_ms = DatumGetFloat8(SPI_getbinval(tup, desc, 4, &isnull));
		if ((s = SPI_getvalue(tup, desc, 5)) != NULL)
			strlcpy(rules[i].model, s, NAMEDATALEN);
	}
	*out = rules;
	return (int) n;
}

static void
read_inputs(PassInputs *in)
{
	in->now = GetCurrentTimestamp();
	in->dir = palloc(sizeof(MmsServed) * MMS_MAX_SERVED);
	mms_served_snapshot(in->dir);
	for (int i = 0; i < MMS_MAX_SERVED; i++)
	{
		int			running;

		mms_queue_depth(i, &in->queued[i], &running, &in->oldest[i]);
	}
	in->counters = palloc(sizeof(Counter) * MAX_COUNTERS);
	in->n_counters = 0;
	{
		int			n;
		MmsHistEntry *all = mms_hist_snapshot(&n);

		in->hists = palloc(sizeof(MmsHistEntry) * Max(n, 1));
		in->n_hists = 0;
		for (int i = 0; i < n; i++)
			if (all[i].key.dboid == MyDatabaseId)
				in->hists[in->n_hists++] = all[i];
	}
	LWLockAcquire(alerts->lock, LW_SHARED);
	for (int i = 0; i < MAX_COUNTERS; i++)
		if (alerts->counters[i].dboid == MyDatabaseId)
			in->counters[in->n_counters++] = alerts->counters[i];
	LWLockRelease(alerts->lock);
}

/*
 * The pass of one database, in a transaction of the maintenance process
 * connected to it: reads the rules, evaluates each, reports transitions
 * (rows and notifications commit with the transaction) and tells the
 * launcher whether to come back.
 */
void
mms_alerts_pass(void)
{
	MmsCatalogSession s;
	Rule	   *rules;
	int			n;
	PassInputs	in;
	Transition *trs;
	int			n_tr = 0;
	int			lost = 0;

	if (alerts == NULL)
		return;
	if (!mms_catalog_is_current())
	{
		(void) mms_alerts_set_database(MyDatabaseId, false);
		return;
	}
	mms_catalog_enter(&s);
	n = read_rules(&rules);
	if (!mms_alerts_set_database(MyDatabaseId, n > 0))
		ereport(WARNING,
				(errmsg("mms: alert rules of database \"%s\" are not evaluated: more than %d databases have rules",
						get_database_name(MyDatabaseId), MAX_ALERT_DBS)));
	read_inputs(&in);
	trs = palloc(sizeof(Transition) * Max(n, 1));

	LWLockAcquire(alerts->lock, LW_EXCLUSIVE);
	/* states of rules that are gone */
	for (int i = 0; i < MAX_RULE_STATES; i++)
	{
		RuleState  *st = &alerts->rules[i];
		bool		kept = false;

		if (st->dboid != MyDatabaseId)
			continue;
		for (int k = 0; k < n && !kept; k++)
			kept = strcmp(rules[k].name, st->name) == 0;
		if (!kept)
			memset(st, 0, sizeof(*st));
	}
	for (int k = 0; k < n; k++)
	{
		RuleState  *st;

		if (rules[k].metric == M_N)
			continue;
		if ((st = find_state(&rules[k])) == NULL)
		{
			lost++;
			continue;
		}
		if (evaluate(&in, &rules[k], st, &trs[n_tr]))
			n_tr++;
	}
	LWLockRelease(alerts->lock);

	if (lost > 0)
		ereport(WARNING,
				(errmsg("mms: %d alert rules of database \"%s\" are not evaluated: more than %d rules are in use",
						lost, get_database_name(MyDatabaseId), MAX_RULE_STATES)));
	for (int i = 0; i < n_tr; i++)
		report(&trs[i], in.now);
	mms_catalog_leave(&s);
}

/* ---- mms.alerts ------------------------------------------------------------------ */

PG_FUNCTION_INFO_V1(mms_alert_states);

/* mms.alert_states(): the states of this database's rules, behind mms.alerts. */
Datum
mms_alert_states(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	RuleState  *copy;
	int			n = 0;

	InitMaterializedSRF(fcinfo, 0);
	if (alerts == NULL)
		return (Datum) 0;
	copy = palloc(sizeof(RuleState) * MAX_RULE_STATES);
	LWLockAcquire(alerts->lock, LW_SHARED);
	for (int i = 0; i < MAX_RULE_STATES; i++)
		if (alerts->rules[i].dboid == MyDatabaseId)
			copy[n++] = alerts->rules[i];
	LWLockRelease(alerts->lock);
	for (int i = 0; i < n; i++)
	{
		Datum		v[6];
		bool		nulls[6] = {false};

		v[0] = CStringGetTextDatum(copy[i].name);
		v[1] = CStringGetTextDatum(metric_names[copy[i].metric]);
		v[2] = CStringGetTextDatum(state_names[copy[i].state]);
		v[3] = TimestampTzGetDatum(copy[i].since);
		nulls[3] = copy[i].since == 0;
		v[4] = Float8GetDatum(copy[i].value);
		nulls[4] = !copy[i].has_value;
		v[5] = TimestampTzGetDatum(copy[i].evaluated_at);
		nulls[5] = copy[i].evaluated_at == 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nulls);
	}
	return (Datum) 0;
}
