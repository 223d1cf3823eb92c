/*
 * api_models.c — which models the HTTP API's SQL functions show their caller:
 * mms.api_resolve(ref) and mms.api_may_use(id). The API answers "does not
 * exist" (42704) for a model the caller may not use, so that the holder of a
 * key learns nothing of models beyond its grants. The rule itself (owner,
 * mms_admin, grants) is resolve.c's.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"

#include "mms.h"

/* The owners of the versions of a model name (none if there is no such name). */
static List *
version_owners(const char *name)
{
	MmsCatalogSession s;
	Oid			t[1] = {TEXTOID};
	Datum		v[1] = {CStringGetTextDatum(name)};
	List	   *owners = NIL;
	uint64		n;

	mms_catalog_enter(&s);
	n = mms_spi_exec("SELECT DISTINCT m.owner FROM mms.model_versions m"
					 " WHERE m.name OPERATOR(pg_catalog.=) $1",
					 1, t, v, NULL, SPI_OK_SELECT);
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		MemoryContext old = MemoryContextSwitchTo(s.caller_cxt);

		owners = lappend_oid(owners, DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
																	SPI_tuptable->tupdesc, 1, &isnull)));
		MemoryContextSwitchTo(old);
	}
	mms_catalog_leave(&s);
	return owners;
}

/* May the current user use some version of the name? */
static bool
may_use_name(const char *name)
{
	Oid			me = GetUserId();
	ListCell   *lc;
	MmsModel	m;

	if (mms_is_admin(me))
		return mms_model_exists(name);
	memset(&m, 0, sizeof(m));
	strlcpy(m.name, name, sizeof(m.name));
	foreach(lc, version_owners(name))
	{
		m.owner = lfirst_oid(lc);
		if (mms_role_may_use(me, &m))
			return true;
	}
	return false;
}

PG_FUNCTION_INFO_V1(mms_api_resolve);

/*
 * mms.api_resolve(ref text) RETURNS bigint: the id of the version ref names,
 * as mms.resolve, when the caller may use it; 42704 otherwise, as if it did
 * not exist. Errors that say more (no such version or alias) are only given
 * to a caller who may use some version of the name.
 */
Datum
mms_api_resolve(PG_FUNCTION_ARGS)
{
	char	   *ref = text_to_cstring(PG_GETARG_TEXT_PP(0));
	size_t		name_len = strcspn(ref, ":@");
	MmsModel	m;

	mms_require_current_catalog();
	if (name_len > 0 && name_len < NAMEDATALEN)
	{
		char	   *name = pnstrdup(ref, name_len);

		if (!may_use_name(name))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("model \"%s\" does not exist", name)));
	}
	/* a malformed reference gets the resolver's own error */
	mms_resolve_model(ref, false, &m);
	if (!mms_role_may_use(GetUserId(), &m))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist", ref)));
	PG_RETURN_INT64(m.id);
}

PG_FUNCTION_INFO_V1(mms_api_may_use);

/* mms.api_may_use(id bigint) RETURNS boolean: may the caller use version id? false if there is none. */
Datum
mms_api_may_use(PG_FUNCTION_ARGS)
{
	MmsCatalogSession s;
	Oid			t[1] = {INT8OID};
	Datum		v[1] = {PG_GETARG_DATUM(0)};
	MmsModel	m;
	bool		found;

	mms_require_current_catalog();
	memset(&m, 0, sizeof(m));
	mms_catalog_enter(&s);
	found = mms_spi_exec("SELECT m.name, m.owner FROM mms.model_versions m"
						 " WHERE m.id OPERATOR(pg_catalog.=) $1",
						 1, t, v, NULL, SPI_OK_SELECT) > 0;
	if (found)
	{
		bool		isnull;

		strlcpy(m.name, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), sizeof(m.name));
		m.owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	}
	mms_catalog_leave(&s);
	PG_RETURN_BOOL(found && mms_role_may_use(GetUserId(), &m));
}
