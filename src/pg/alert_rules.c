/*
 * alert_rules.c — the SQL functions that write mms.alert_rules:
 * mms_set_alert and mms_drop_alert (mms_admin, audited). Evaluating the
 * rules, and their states, are alerts.c's.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "serve.h"

/* The rule name argument: not null, a valid name. */
static char *
alert_name_arg(FunctionCallInfo fcinfo)
{
	char	   *name;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("alert name must not be null")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	mms_check_name(name, "alert name");
	return name;
}

static void
require_not_null(FunctionCallInfo fcinfo, int arg, const char *what)
{
	if (PG_ARGISNULL(arg))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
}

PG_FUNCTION_INFO_V1(mms_set_alert);

/*
 * mms_set_alert(name, metric, threshold, for_interval, model) RETURNS
 * mms.alert_rules: creates the rule or sets it to exactly these values. A
 * rule whose metric or model changes starts again from ok.
 */
Datum
mms_set_alert(PG_FUNCTION_ARGS)
{
	char	   *name;
	char	   *metric;
	double		threshold;
	Interval   *for_iv;
	double		for_us;
	char	   *model = NULL;
	MmsCatalogSession s;
	Oid			t[5] = {TEXTOID, TEXTOID, FLOAT8OID, INTERVALOID, TEXTOID};
	Datum		v[5];
	char		nulls[6] = "     ";
	Datum		result;

	mms_require_admin("set alerts");
	name = alert_name_arg(fcinfo);
	require_not_null(fcinfo, 1, "metric");
	metric = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (!mms_alert_metric_exists(metric))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown alert metric \"%s\"", metric),
				 errhint("The metrics are p99_latency_ms, error_ratio, queue_wait_ms, requests_waiting, quota_rejections_per_minute and cache_used_fraction.")));
	require_not_null(fcinfo, 2, "threshold");
	threshold = PG_GETARG_FLOAT8(2);
	if (isnan(threshold) || isinf(threshold))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("threshold must be a finite number")));
	require_not_null(fcinfo, 3, "for_interval");
	for_iv = PG_GETARG_INTERVAL_P(3);
	for_us = (double) for_iv->time +
		((double) for_iv->day + (double) for_iv->month * DAYS_PER_MONTH) * USECS_PER_DAY;
	if (for_us < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("for_interval must not be negative"),
				 errhint("0 fires at the first evaluation above the threshold.")));
	if (!PG_ARGISNULL(4))
	{
		model = text_to_cstring(PG_GETARG_TEXT_PP(4));
		if (strpbrk(model, ":@") != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("alerts apply to a model name, not to \"%s\"", model),
					 errdetail("An alert on a model covers every version of it.")));
		if (!mms_model_exists(model))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("model \"%s\" does not exist", model)));
	}
	mms_require_current_catalog();

	v[0] = CStringGetTextDatum(name);
	v[1] = CStringGetTextDatum(metric);
	v[2] = Float8GetDatum(threshold);
	v[3] = IntervalPGetDatum(for_iv);
	v[4] = model ? CStringGetTextDatum(model) : (Datum) 0;
	nulls[4] = model ? ' ' : 'n';
	mms_catalog_enter(&s);
	mms_spi_exec("INSERT INTO mms.alert_rules AS a (name, metric, threshold, for_interval, model)"
				 " VALUES ($1, $2, $3, $4, $5)"
				 " ON CONFLICT (name) DO UPDATE SET metric = $2, threshold = $3,"
				 " for_interval = $4, model = $5, set_at = pg_catalog.now()"
				 " RETURNING a.*",
				 5, t, v, nulls, SPI_OK_INSERT_RETURNING);
	result = PointerGetDatum(SPI_returntuple(SPI_tuptable->vals[0], SPI_tuptable->tupdesc));
	{
		MmsAuditField d[] = {
			{"name", TEXTOID, v[0], false},
			{"metric", TEXTOID, v[1], false},
			{"threshold", FLOAT8OID, v[2], false},
			{"for_seconds", FLOAT8OID, Float8GetDatum(for_us / 1e6), false},
		};

		mms_audit(&s, "set_alert", model, d, lengthof(d));
	}
	mms_catalog_leave(&s);
	/* the launcher visits the database from the next round (a rollback: the pass clears it) */
	if (!mms_alerts_set_database(MyDatabaseId, true))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many databases have alert rules"),
				 errdetail("The server evaluates the rules of at most 64 databases; drop the rules of another one.")));
	PG_RETURN_DATUM(result);
}

PG_FUNCTION_INFO_V1(mms_drop_alert);

/* mms_drop_alert(name) RETURNS boolean: false if there was no such rule. */
Datum
mms_drop_alert(PG_FUNCTION_ARGS)
{
	char	   *name;
	MmsCatalogSession s;
	Oid			t[1] = {TEXTOID};
	Datum		v[1];
	uint64		n;

	mms_require_admin("drop alerts");
	name = alert_name_arg(fcinfo);
	mms_require_current_catalog();
	v[0] = CStringGetTextDatum(name);
	mms_catalog_enter(&s);
	n = mms_spi_exec("DELETE FROM mms.alert_rules a WHERE a.name OPERATOR(pg_catalog.=) $1"
					 " RETURNING a.model",
					 1, t, v, NULL, SPI_OK_DELETE_RETURNING);
	if (n > 0)
	{
		char	   *model = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		MmsAuditField d[] = {{"name", TEXTOID, v[0], false}};

		mms_audit(&s, "drop_alert", model, d, lengthof(d));
	}
	mms_catalog_leave(&s);
	PG_RETURN_BOOL(n > 0);
}
