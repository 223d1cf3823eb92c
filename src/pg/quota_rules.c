/*
 * quota_rules.c — which quota applies to a call, and the SQL functions over
 * mms.role_quotas: mms_set_quota, mms_drop_quota and mms_quota_status. The
 * buckets the limits are charged against are quota.c's.
 *
 * The most specific row applies, whole: (role, model), then (role, every
 * model), then (public, model), then (public, every model); a NULL limit in
 * it is unlimited. Every call needs its limits, so a backend keeps those it
 * looked up until the rows change: the writers here send a relcache
 * invalidation of the table, which reaches every backend at commit (and
 * standbys through the WAL), and the callback below empties the cache.
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "serve.h"

#define MAX_WEIGHT 1000

typedef struct CacheKey
{
	Oid			roleid;
	char		model[NAMEDATALEN];
} CacheKey;

typedef struct CacheEntry
{
	CacheKey	key;
	MmsQuotaLimits limits;
} CacheEntry;

static HTAB *cache = NULL;
static bool cache_stale = false;
static bool callback_registered = false;

static Oid
quotas_relid(void)
{
	Oid			nsp = get_namespace_oid("mms", true);

	return OidIsValid(nsp) ? get_relname_relid("role_quotas", nsp) : InvalidOid;
}

/* Any relcache invalidation of the table (or of everything) drops the cache; cheap to refill. */
static void
invalidate(Datum arg, Oid relid)
{
	cache_stale = true;
}

static void
read_limits(HeapTuple tup, TupleDesc desc, MmsQuotaLimits *out)
{
	bool		isnull;
	Datum		d;
	char	   *s;

	memset(out, 0, sizeof(*out));
	out->weight = 1;
	out->row = true;
	out->row_role = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
	s = SPI_getvalue(tup, desc, 2);
	if (s)
		strlcpy(out->row_model, s, sizeof(out->row_model));
#define INT_COL(col, field, get) \
	d = SPI_getbinval(tup, desc, col, &isnull); \
	if (!isnull) \
		out->field = get(d)
	INT_COL(3, requests_per_minute, DatumGetInt32);
	INT_COL(4, tokens_per_minute, DatumGetInt32);
	INT_COL(5, tokens_per_day, DatumGetInt64);
	INT_COL(6, max_concurrent, DatumGetInt32);
	INT_COL(7, weight, DatumGetInt32);
#undef INT_COL
}

/* model NULL: the row for every model only. Catalog session entered. */
static void
lookup_spi(Oid roleid, const char *model, MmsQuotaLimits *out)
{
	Oid			t[2] = {OIDOID, TEXTOID};
	Datum		v[2];
	char		nulls[2] = "  ";

	v[0] = ObjectIdGetDatum(roleid);
	if (model)
		v[1] = CStringGetTextDatum(model);
	else
		nulls[1] = 'n';
	memset(out, 0, sizeof(*out));
	out->weight = 1;
	if (mms_spi_exec("SELECT q.role, q.model, q.requests_per_minute, q.tokens_per_minute,"
					 " q.tokens_per_day, q.max_concurrent, q.weight FROM mms.role_quotas q"
					 " WHERE q.role OPERATOR(pg_catalog.=) ANY (ARRAY[$1, 0::pg_catalog.oid])"
					 " AND (q.model IS NULL OR q.model OPERATOR(pg_catalog.=) $2)"
					 " ORDER BY q.role OPERATOR(pg_catalog.=) 0::pg_catalog.oid, q.model IS NULL"
					 " LIMIT 1",
					 2, t, v, nulls, SPI_OK_SELECT) == 1)
		read_limits(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, out);
}

void
mms_quota_limits(Oid roleid, const char *model, MmsQuotaLimits *out)
{
	CacheKey	k;
	CacheEntry *e;
	bool		found;
	MmsCatalogSession s;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(invalidate, (Datum) 0);
		callback_registered = true;
	}
	if (cache == NULL || cache_stale)
	{
		HASHCTL		info;

		if (cache)
			hash_destroy(cache);
		memset(&info, 0, sizeof(info));
		info.keysize = sizeof(CacheKey);
		info.entrysize = sizeof(CacheEntry);
		info.hcxt = TopMemoryContext;
		cache = hash_create("mms quota limits", 64, &info, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		cache_stale = false;
	}
	memset(&k, 0, sizeof(k));
	k.roleid = roleid;
	strlcpy(k.model, model, sizeof(k.model));
	e = hash_search(cache, &k, HASH_FIND, NULL);
	if (e)
	{
		*out = e->limits;
		return;
	}
	mms_require_current_catalog();
	mms_catalog_enter(&s);
	lookup_spi(roleid, model, out);
	mms_catalog_leave(&s);
	/* an invalidation that arrived during the lookup leaves the cache stale: not kept */
	if (cache_stale)
		return;
	if (hash_get_num_entries(cache) >= 1024)
		cache_stale = true;		/* bounded: start again next time */
	e = hash_search(cache, &k, HASH_ENTER, &found);
	e->limits = *out;
}

void
mms_quota_key(const MmsQuotaLimits *l, Oid roleid, MmsQuotaKey *out)
{
	memset(out, 0, sizeof(*out));
	out->dboid = MyDatabaseId;
	out->roleid = roleid;
	strlcpy(out->model, l->row_model, sizeof(out->model));
}

/* ---- mms_set_quota, mms_drop_quota ---------------------------------------- */

enum
{
	ARG_ROLE, ARG_MODEL, ARG_RPM, ARG_TPM, ARG_TPD, ARG_CONC, ARG_WEIGHT, N_ARGS
};

static const char *const limit_names[N_ARGS] = {
	"role", "model", "requests_per_minute", "tokens_per_minute", "tokens_per_day",
	"max_concurrent", "weight"
};

/* The model argument: NULL (every model) or the name of a registered model. */
static char *
quota_model_arg(FunctionCallInfo fcinfo, bool must_exist)
{
	char	   *name;

	if (PG_ARGISNULL(ARG_MODEL))
		return NULL;
	name = text_to_cstring(PG_GETARG_TEXT_PP(ARG_MODEL));
	if (strpbrk(name, ":@") != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("quotas apply to a model name, not to \"%s\"", name),
				 errdetail("A quota on a model covers every version of it.")));
	if (must_exist && !mms_model_exists(name))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist", name)));
	return name;
}

static Oid
quota_role_arg(FunctionCallInfo fcinfo)
{
	if (PG_ARGISNULL(ARG_ROLE))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("role must not be null"),
				 errhint("Write 'public' for the default of every role.")));
	return mms_role_or_public(text_to_cstring(PG_GETARG_TEXT_PP(ARG_ROLE)));
}

/* 'public' or the role's name, as text. */
static Datum
role_label(Oid roleid)
{
	return CStringGetTextDatum(OidIsValid(roleid) ? GetUserNameFromId(roleid, false) : "public");
}

/* The table's rows changed: every backend drops its cached limits when this commits. */
void
mms_quota_rows_changed(void)
{
	Oid			relid = quotas_relid();

	if (OidIsValid(relid))
		CacheInvalidateRelcacheByRelid(relid);
}

PG_FUNCTION_INFO_V1(mms_set_quota);

/*
 * mms_set_quota(role, model, requests_per_minute, tokens_per_minute,
 * tokens_per_day, max_concurrent, weight) RETURNS mms.quotas: sets the row of
 * (role, model) to exactly these limits (NULL = unlimited, weight 1).
 */
Datum
mms_set_quota(PG_FUNCTION_ARGS)
{
	Oid			roleid;
	char	   *model;
	MmsCatalogSession s;
	TupleDesc	desc;
	Oid			t[N_ARGS] = {OIDOID, TEXTOID, INT4OID, INT4OID, INT8OID, INT4OID, INT4OID};
	Datum		v[N_ARGS + 1];
	char		nulls[N_ARGS + 1];
	Datum		out[8];
	bool		out_null[8] = {false};

	mms_require_admin("set quotas");
	roleid = quota_role_arg(fcinfo);
	model = quota_model_arg(fcinfo, true);
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "mms_set_quota must return a row type");
	mms_require_current_catalog();
	memset(nulls, ' ', sizeof(nulls));
	for (int a = ARG_RPM; a < N_ARGS; a++)
	{
		int64		x;

		if (PG_ARGISNULL(a))
		{
			nulls[a] = 'n';
			v[a] = (Datum) 0;
			continue;
		}
		x = a == ARG_TPD ? PG_GETARG_INT64(a) : PG_GETARG_INT32(a);
		if (x <= 0 || (a == ARG_WEIGHT && x > MAX_WEIGHT))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s must be %s, not " INT64_FORMAT, limit_names[a],
							a == ARG_WEIGHT ? "between 1 and 1000" : "positive", x),
					 a != ARG_WEIGHT ? errhint("NULL means no limit.") : 0));
		v[a] = PG_GETARG_DATUM(a);
	}
	v[ARG_ROLE] = ObjectIdGetDatum(roleid);
	if (model)
		v[ARG_MODEL] = CStringGetTextDatum(model);
	else
		nulls[ARG_MODEL] = 'n';
	/* the role's name, which a dump carries (see mms.restore_quota_role) */
	v[N_ARGS] = OidIsValid(roleid) ? mms_role_name_datum(roleid) : (Datum) 0;
	nulls[N_ARGS] = OidIsValid(roleid) ? ' ' : 'n';

	mms_catalog_enter(&s);
	{
		Oid			types[N_ARGS + 1];

		memcpy(types, t, sizeof(t));
		types[N_ARGS] = NAMEOID;
		mms_spi_exec("INSERT INTO mms.role_quotas AS q (role, model, requests_per_minute,"
					 " tokens_per_minute, tokens_per_day, max_concurrent, weight, role_name)"
					 " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
					 " ON CONFLICT (role, model) DO UPDATE SET"
					 " requests_per_minute = $3, tokens_per_minute = $4, tokens_per_day = $5,"
					 " max_concurrent = $6, weight = $7, role_name = $8,"
					 " set_at = pg_catalog.now()",
					 N_ARGS + 1, types, v, nulls, SPI_OK_INSERT);
	}
	{
		MmsAuditField d[N_ARGS - 1];

		d[0] = (MmsAuditField) {"role", TEXTOID, role_label(roleid), false};
		for (int a = ARG_RPM; a < N_ARGS; a++)
			d[a - 1] = (MmsAuditField) {limit_names[a], t[a], v[a], nulls[a] == 'n'};
		mms_audit(&s, "set_quota", model, d, lengthof(d));
	}
	mms_catalog_leave(&s);
	mms_quota_rows_changed();

	/* the row of mms.quotas */
	out[0] = role_label(roleid);
	out[1] = model ? CStringGetTextDatum(model) : (Datum) 0;
	out_null[1] = model == NULL;
	for (int a = ARG_RPM; a < N_ARGS; a++)
	{
		out[a] = v[a];
		out_null[a] = nulls[a] == 'n';
	}
	if (out_null[ARG_WEIGHT])
	{
		out[ARG_WEIGHT] = Int32GetDatum(1);
		out_null[ARG_WEIGHT] = false;
	}
	out[7] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	desc = BlessTupleDesc(desc);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, out, out_null)));
}

PG_FUNCTION_INFO_V1(mms_drop_quota);

/* mms_drop_quota(role, model) RETURNS boolean: false if there was no such row. */
Datum
mms_drop_quota(PG_FUNCTION_ARGS)
{
	Oid			roleid;
	char	   *model;
	MmsCatalogSession s;
	Oid			t[2] = {OIDOID, TEXTOID};
	Datum		v[2];
	char		nulls[2] = "  ";
	uint64		n;

	mms_require_admin("drop quotas");
	roleid = quota_role_arg(fcinfo);
	model = quota_model_arg(fcinfo, false);
	mms_require_current_catalog();
	v[0] = ObjectIdGetDatum(roleid);
	if (model)
		v[1] = CStringGetTextDatum(model);
	else
		nulls[1] = 'n';
	mms_catalog_enter(&s);
	n = mms_spi_exec("DELETE FROM mms.role_quotas q WHERE q.role OPERATOR(pg_catalog.=) $1"
					 " AND q.model IS NOT DISTINCT FROM $2",
					 2, t, v, nulls, SPI_OK_DELETE);
	if (n > 0)
	{
		MmsAuditField d[] = {{"role", TEXTOID, role_label(roleid)}};

		mms_audit(&s, "drop_quota", model, d, lengthof(d));
	}
	mms_catalog_leave(&s);
	if (n > 0)
		mms_quota_rows_changed();
	PG_RETURN_BOOL(n > 0);
}

/* ---- mms_quota_status ----------------------------------------------------- */

static void
status_row(ReturnSetInfo *rsi, const char *model, const MmsQuotaLimits *l, const char *name,
		   int64 limit, double remaining, double full_in)
{
	Datum		v[7];
	bool		n[7] = {false};

	if (limit == 0)
		return;
	v[0] = model ? CStringGetTextDatum(model) : (Datum) 0;
	n[0] = model == NULL;
	v[1] = CStringGetTextDatum(OidIsValid(l->row_role) ? GetUserNameFromId(l->row_role, false) :
							   "public");
	v[2] = l->row_model[0] ? CStringGetTextDatum(l->row_model) : (Datum) 0;
	n[2] = l->row_model[0] == '\0';
	v[3] = CStringGetTextDatum(name);
	v[4] = Int64GetDatum(limit);
	v[5] = Int64GetDatum((int64) Max(0, floor(remaining + 1e-6)));
	v[6] = Float8GetDatum(Max(0, full_in));
	tuplestore_putvalues(rsi->setResult, rsi->setDesc, v, n);
}

PG_FUNCTION_INFO_V1(mms_quota_status);

/*
 * mms_quota_status(model text) RETURNS SETOF (model, quota_role, quota_model,
 * limit_name, limit, remaining, reset_seconds): for the calling role, each
 * limit of the row that applies to model (NULL: the row for every model), what
 * is left now and in how many seconds it is whole again. Superusers, who are
 * exempt, get no rows.
 */
Datum
mms_quota_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsi = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			roleid = GetUserId();
	char	   *model = NULL;
	MmsQuotaLimits l;
	MmsQuotaKey k;
	MmsQuotaRemaining r;

	InitMaterializedSRF(fcinfo, 0);
	if (superuser())
		return (Datum) 0;
	if (!PG_ARGISNULL(0))
	{
		MmsModel	m;

		mms_resolve_model(text_to_cstring(PG_GETARG_TEXT_PP(0)), true, &m);
		model = pstrdup(m.name);
	}
	if (model)
		mms_quota_limits(roleid, model, &l);
	else
	{
		MmsCatalogSession s;

		mms_require_current_catalog();
		mms_catalog_enter(&s);
		lookup_spi(roleid, NULL, &l);
		mms_catalog_leave(&s);
	}
	if (!l.row)
		return (Datum) 0;
	mms_require_serving();
	mms_quota_key(&l, roleid, &k);
	mms_quota_remaining(&k, &l, &r);
	status_row(rsi, model, &l, "requests_per_minute", l.requests_per_minute, r.requests,
			   r.requests_full_in);
	status_row(rsi, model, &l, "tokens_per_minute", l.tokens_per_minute, r.tokens, r.tokens_full_in);
	status_row(rsi, model, &l, "tokens_per_day", l.tokens_per_day, r.day_tokens,
			   r.day_tokens_full_in);
	status_row(rsi, model, &l, "max_concurrent", l.max_concurrent,
			   l.max_concurrent - r.in_flight, 0);
	return (Datum) 0;
}
