/*
 * resolve.c — model references ('name', 'name:version', 'name@alias') turned
 * into one registered version with its pool settings, and the rule for who
 * may use a model. The one resolver that tokenization, inference and the
 * launcher share; mms.resolve() is its SQL face. Writing the catalog is
 * register.c's, manage.c's and configure.c's job.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"

#include "mms.h"

/*
 * A version and its name's pool settings, in one query: every call resolves
 * its model, so the settings cost no extra round trip. NULL settings (no row)
 * are the defaults.
 */
#define MODEL_COLUMNS \
	"m.id, m.name, m.version, m.owner::pg_catalog.oid, m.weights, m.size_bytes, m.sha256, m.arch," \
	" p.min_workers, p.max_workers, p.pinned, p.priority"
#define JOIN_POOL \
	" LEFT JOIN mms.model_pool_settings p ON p.name OPERATOR(pg_catalog.=) m.name"

/* What a model without a row in mms.model_pool_settings gets (the table's defaults). */
static const MmsPoolConfig default_pool = {
	.min_workers = 0,
	.max_workers = 1,
	.pinned = false,
	.priority = 0,
};

static void
fill_model(HeapTuple tup, TupleDesc desc, MmsModel *out)
{
	bool		isnull;
	char	   *s;
	Datum		d;

	out->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	s = SPI_getvalue(tup, desc, 2);
	strlcpy(out->name, s, sizeof(out->name));
	out->version = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
	out->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 4, &isnull));
	out->weights = DatumGetObjectId(SPI_getbinval(tup, desc, 5, &isnull));
	out->size_bytes = DatumGetInt64(SPI_getbinval(tup, desc, 6, &isnull));
	s = SPI_getvalue(tup, desc, 7);
	strlcpy(out->sha256, s, sizeof(out->sha256));
	s = SPI_getvalue(tup, desc, 8);
	strlcpy(out->arch, s, sizeof(out->arch));

	out->pool = default_pool;
	d = SPI_getbinval(tup, desc, 9, &isnull);
	if (isnull)
		return;
	out->pool.min_workers = DatumGetInt32(d);
	out->pool.max_workers = DatumGetInt32(SPI_getbinval(tup, desc, 10, &isnull));
	out->pool.pinned = DatumGetBool(SPI_getbinval(tup, desc, 11, &isnull));
	out->pool.priority = DatumGetInt32(SPI_getbinval(tup, desc, 12, &isnull));
}

/* Runs a one-row model query; false when it found nothing. */
static bool
fetch_model(const char *sql, int nargs, Oid *types, Datum *values, MmsModel *out)
{
	if (mms_spi_exec(sql, nargs, types, values, NULL, SPI_OK_SELECT) == 0)
		return false;
	fill_model(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, out);
	return true;
}

static bool
name_exists_spi(const char *name)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};

	return mms_spi_exec("SELECT 1 FROM mms.model_versions m"
						" WHERE m.name OPERATOR(pg_catalog.=) $1 LIMIT 1",
						1, types, values, NULL, SPI_OK_SELECT) > 0;
}

bool
mms_model_exists(const char *name)
{
	MmsCatalogSession s;
	bool		found;

	mms_catalog_enter(&s);
	found = name_exists_spi(name);
	mms_catalog_leave(&s);
	return found;
}

static void
no_such_model(const char *name)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("model \"%s\" does not exist", name)));
}

/* Splits a reference; *version = 0 and *alias = NULL when absent. */
static void
parse_ref(const char *ref, char *name, int32 *version, const char **alias)
{
	const char *sep = strpbrk(ref, ":@");
	size_t		name_len = sep ? (size_t) (sep - ref) : strlen(ref);

	*version = 0;
	*alias = NULL;
	if (name_len == 0 || name_len >= NAMEDATALEN || (sep && sep[1] == '\0') ||
		(sep && strpbrk(sep + 1, ":@") != NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid model reference \"%s\"", ref),
				 errhint("A model reference is 'name', 'name:version' or 'name@alias'.")));
	memcpy(name, ref, name_len);
	name[name_len] = '\0';
	if (sep && *sep == ':')
		*version = mms_parse_version(sep + 1);
	else if (sep)
		*alias = sep + 1;
}

/* Resolution proper; SPI connected, as the registry owner. */
static void
resolve_spi(const char *ref, MmsModel *out)
{
	char		name[NAMEDATALEN];
	int32		version;
	const char *alias;
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];

	parse_ref(ref, name, &version, &alias);
	values[0] = CStringGetTextDatum(name);
	if (version > 0)
	{
		types[1] = INT4OID;
		values[1] = Int32GetDatum(version);
		if (fetch_model("SELECT " MODEL_COLUMNS " FROM mms.model_versions m" JOIN_POOL
						" WHERE m.name OPERATOR(pg_catalog.=) $1"
						" AND m.version OPERATOR(pg_catalog.=) $2",
						2, types, values, out))
			return;
		if (!name_exists_spi(name))
			no_such_model(name);
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" has no version %d", name, version)));
	}

	/* 'name' means the version aliased "default", else the highest one */
	values[1] = CStringGetTextDatum(alias ? alias : "default");
	if (fetch_model("SELECT " MODEL_COLUMNS " FROM mms.model_aliases a"
					" JOIN mms.model_versions m"
					" ON m.name OPERATOR(pg_catalog.=) a.name"
					" AND m.version OPERATOR(pg_catalog.=) a.version" JOIN_POOL
					" WHERE a.name OPERATOR(pg_catalog.=) $1"
					" AND a.alias OPERATOR(pg_catalog.=) $2",
					2, types, values, out))
		return;
	if (alias == NULL &&
		fetch_model("SELECT " MODEL_COLUMNS " FROM mms.model_versions m" JOIN_POOL
					" WHERE m.name OPERATOR(pg_catalog.=) $1"
					" ORDER BY m.version DESC LIMIT 1",
					1, types, values, out))
		return;
	if (!name_exists_spi(name))
		no_such_model(name);
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("model \"%s\" has no alias \"%s\"", name, alias)));
}

/*
 * Use rights: the owner (and roles with its privileges), mms_admin members and
 * superusers, and grantees of the model's name (grantee 0 = PUBLIC).
 * SPI connected, as the registry owner.
 */
static bool
may_use_spi(Oid roleid, const MmsModel *m)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(m->name)};
	uint64		n;

	if (has_privs_of_role(roleid, m->owner) || mms_is_admin(roleid))
		return true;
	n = mms_spi_exec("SELECT g.grantee::pg_catalog.oid FROM mms.model_grants g"
					 " WHERE g.name OPERATOR(pg_catalog.=) $1",
					 1, types, values, NULL, SPI_OK_SELECT);
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		Oid			grantee = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
															 SPI_tuptable->tupdesc, 1, &isnull));

		if (grantee == InvalidOid || has_privs_of_role(roleid, grantee))
			return true;
	}
	return false;
}

bool
mms_role_may_use(Oid roleid, const MmsModel *m)
{
	MmsCatalogSession s;
	bool		ok;

	mms_catalog_enter(&s);
	ok = may_use_spi(roleid, m);
	mms_catalog_leave(&s);
	return ok;
}

void
mms_resolve_model(const char *ref, bool for_use, MmsModel *out)
{
	MmsCatalogSession s;
	bool		ok = true;

	mms_require_current_catalog();
	mms_catalog_enter(&s);
	resolve_spi(ref, out);
	if (for_use)
		ok = may_use_spi(s.caller, out);
	mms_catalog_leave(&s);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for model \"%s:%d\"", out->name, out->version),
				 errhint("A member of role \"mms_admin\" can allow it with mms_grant('%s', role).",
						 out->name)));
}

/*
 * The launcher loads pinned models when the server starts: of each pinned
 * name, the version its plain name resolves to (the "default" alias, else the
 * highest version), as that is the version calls without a version use.
 * Zero in a database without the registry or with one older than pinning.
 */
int
mms_pinned_models(MmsModel **out)
{
	MmsCatalogSession s;
	uint64		n;

	*out = NULL;
	if (!mms_catalog_is_current())
		return 0;
	mms_catalog_enter(&s);
	n = mms_spi_exec("SELECT DISTINCT ON (m.name) " MODEL_COLUMNS
					 " FROM mms.model_versions m" JOIN_POOL
					 " LEFT JOIN mms.model_aliases a ON a.name OPERATOR(pg_catalog.=) m.name"
					 " AND a.version OPERATOR(pg_catalog.=) m.version"
					 " AND a.alias OPERATOR(pg_catalog.=) 'default'"
					 " WHERE p.pinned"
					 " ORDER BY m.name, a.alias IS NOT NULL DESC, m.version DESC",
					 0, NULL, NULL, NULL, SPI_OK_SELECT);
	if (n > 0)
	{
		*out = MemoryContextAlloc(s.caller_cxt, sizeof(MmsModel) * n);
		for (uint64 i = 0; i < n; i++)
			fill_model(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, &(*out)[i]);
	}
	mms_catalog_leave(&s);
	return (int) n;
}

PG_FUNCTION_INFO_V1(mms_resolve);

/* mms.resolve(ref text) RETURNS bigint: the id of the version ref names. */
Datum
mms_resolve(PG_FUNCTION_ARGS)
{
	char	   *ref = text_to_cstring(PG_GETARG_TEXT_PP(0));
	MmsModel	m;

	mms_resolve_model(ref, false, &m);
	PG_RETURN_INT64(m.id);
}
