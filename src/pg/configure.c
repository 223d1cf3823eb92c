/*
 * configure.c — mms_configure: a model's worker pool and cache settings, rows
 * of mms.model_pool_settings (shown with the defaults by the view
 * mms.model_config). It records them and hands them to the served models at
 * commit (at_commit.c); the resolver reads them for every call (resolve.c),
 * and the launcher acts on them.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "utils/builtins.h"

#include "mms.h"

/*
 * The table's CHECK constraints hold the same limits; checking first gives
 * the caller an error that names the setting.
 */
#define MAX_POOL_WORKERS 64
#define MAX_PRIORITY 1000

/* Arguments of mms_configure, in order; NULL leaves a setting unchanged. */
enum
{
	ARG_MODEL,
	ARG_MIN_WORKERS,
	ARG_MAX_WORKERS,
	ARG_PINNED,
	ARG_PRIORITY,
	N_ARGS
};

static int32
int_arg(FunctionCallInfo fcinfo, int argno, const char *setting, int32 lo, int32 hi,
		int32 current)
{
	int32		value;

	if (PG_ARGISNULL(argno))
		return current;
	value = PG_GETARG_INT32(argno);
	if (value < lo || value > hi)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for %s: %d", setting, value),
				 errdetail("%s must be between %d and %d.", setting, lo, hi)));
	return value;
}

/* The settings' row for name, created with the defaults if missing, locked. */
static MmsPoolConfig
lock_settings_spi(const char *name)
{
	Oid			t[1] = {TEXTOID};
	Datum		v[1] = {CStringGetTextDatum(name)};
	MmsPoolConfig pool;
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;

	/*
	 * FOR KEY SHARE holds the versions until commit: an unregistration of the
	 * last one waits, then removes the settings written here with it (or has
	 * removed the versions already, and the model does not exist).
	 */
	if (mms_spi_exec("SELECT 1 FROM mms.model_versions m WHERE m.name OPERATOR(pg_catalog.=) $1"
					 " FOR KEY SHARE",
					 1, t, v, NULL, SPI_OK_SELECT) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist", name)));
	/* read and written under the row lock, so concurrent calls merge in turn */
	mms_spi_exec("INSERT INTO mms.model_pool_settings (name) VALUES ($1)"
				 " ON CONFLICT (name) DO NOTHING",
				 1, t, v, NULL, SPI_OK_INSERT);
	if (mms_spi_exec("SELECT p.min_workers, p.max_workers, p.pinned, p.priority"
					 " FROM mms.model_pool_settings p WHERE p.name OPERATOR(pg_catalog.=) $1"
					 " FOR UPDATE",
					 1, t, v, NULL, SPI_OK_SELECT) != 1)
		elog(ERROR, "pool settings of model \"%s\" vanished", name);
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	pool.min_workers = DatumGetInt32(SPI_getbinval(row, desc, 1, &isnull));
	pool.max_workers = DatumGetInt32(SPI_getbinval(row, desc, 2, &isnull));
	pool.pinned = DatumGetBool(SPI_getbinval(row, desc, 3, &isnull));
	pool.priority = DatumGetInt32(SPI_getbinval(row, desc, 4, &isnull));
	return pool;
}

/*
 * The audit row of a configuration: the settings the call gave, with the
 * values they now have. A call that gives none changes nothing and is not
 * logged.
 */
static void
audit_configure(const MmsCatalogSession *s, FunctionCallInfo fcinfo, const char *name,
				const Oid *types, const Datum *values)
{
	static const char *const keys[N_ARGS] = {
		[ARG_MIN_WORKERS] = "min_workers",
		[ARG_MAX_WORKERS] = "max_workers",
		[ARG_PINNED] = "pinned",
		[ARG_PRIORITY] = "priority",
	};
	MmsAuditField d[N_ARGS];
	int			n = 0;

	for (int i = ARG_MODEL + 1; i < N_ARGS; i++)
	{
		if (PG_ARGISNULL(i))
			continue;
		d[n].key = keys[i];
		d[n].type = types[i];
		d[n].value = values[i];
		d[n].isnull = false;
		n++;
	}
	if (n > 0)
		mms_audit(s, "configure", name, d, n);
}

PG_FUNCTION_INFO_V1(mms_configure);

/*
 * mms_configure(model text, min_workers int, max_workers int, pinned bool,
 * priority int) RETURNS mms.model_config: sets the given settings of a model
 * (a name: every version shares them) and returns all of them.
 */
Datum
mms_configure(PG_FUNCTION_ARGS)
{
	char	   *name;
	MmsPoolConfig pool;
	MmsCatalogSession s;
	TupleDesc	desc;
	Oid			t[N_ARGS] = {TEXTOID, INT4OID, INT4OID, BOOLOID, INT4OID};
	Datum		v[N_ARGS];
	bool		nulls[N_ARGS] = {false};

	if (PG_ARGISNULL(ARG_MODEL))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("model name must not be null")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(ARG_MODEL));
	mms_require_admin("configure models");
	if (strpbrk(name, ":@") != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("settings apply to a model name, not to \"%s\"", name),
				 errdetail("Every version of a model shares the model's settings.")));
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "mms_configure must return a row type");
	mms_require_current_catalog();
	/* allocated here, not in SPI's context: the result tuple uses it */
	v[ARG_MODEL] = CStringGetTextDatum(name);

	mms_catalog_enter(&s);
	pool = lock_settings_spi(name);
	pool.min_workers = int_arg(fcinfo, ARG_MIN_WORKERS, "min_workers", 0, MAX_POOL_WORKERS,
							   pool.min_workers);
	pool.max_workers = int_arg(fcinfo, ARG_MAX_WORKERS, "max_workers", 1, MAX_POOL_WORKERS,
							   pool.max_workers);
	if (!PG_ARGISNULL(ARG_PINNED))
		pool.pinned = PG_GETARG_BOOL(ARG_PINNED);
	pool.priority = int_arg(fcinfo, ARG_PRIORITY, "priority", -MAX_PRIORITY, MAX_PRIORITY,
							pool.priority);
	if (pool.min_workers > pool.max_workers)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("min_workers must not exceed max_workers"),
				 errdetail("Model \"%s\" would have min_workers %d and max_workers %d.",
						   name, pool.min_workers, pool.max_workers),
				 errhint("Set both in the same call.")));

	v[ARG_MIN_WORKERS] = Int32GetDatum(pool.min_workers);
	v[ARG_MAX_WORKERS] = Int32GetDatum(pool.max_workers);
	v[ARG_PINNED] = BoolGetDatum(pool.pinned);
	v[ARG_PRIORITY] = Int32GetDatum(pool.priority);
	mms_spi_exec("UPDATE mms.model_pool_settings p SET min_workers = $2, max_workers = $3,"
				 " pinned = $4, priority = $5 WHERE p.name OPERATOR(pg_catalog.=) $1",
				 N_ARGS, t, v, NULL, SPI_OK_UPDATE);
	audit_configure(&s, fcinfo, name, t, v);
	mms_catalog_leave(&s);
	mms_registry_generation++;
	/* served models of the name take them when (and only if) this commits */
	mms_pool_config_at_commit(name, &pool);

	/* the row of mms.model_config: model, then the settings, as the arguments */
	desc = BlessTupleDesc(desc);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, v, nulls)));
}
