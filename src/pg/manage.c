/*
 * manage.c — the registry's administrative writes besides registration:
 * mms_unregister, mms_set_alias / mms_drop_alias, mms_grant / mms_revoke.
 * Each checks that the caller administers models, then writes as the registry
 * owner inside the caller's transaction.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"

#include "serve.h"

static char *
required_text(FunctionCallInfo fcinfo, int argno, const char *what)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
	return text_to_cstring(PG_GETARG_TEXT_PP(argno));
}

/*
 * Removes one version (catalog session entered): its row, its aliases (by
 * cascade), its large object, and the grants, pool settings and quotas of its name
 * when it was the last version; its cached weights are dropped when the
 * transaction commits. false if the row was already gone.
 */
bool
mms_unregister_spi(int64 id, const char *name, Oid weights)
{
	Oid			t[1] = {INT8OID};
	Datum		v[1];

	v[0] = Int64GetDatum(id);
	if (mms_spi_exec("DELETE FROM mms.model_versions m WHERE m.id OPERATOR(pg_catalog.=) $1",
					 1, t, v, NULL, SPI_OK_DELETE) != 1)
		return false;
	t[0] = TEXTOID;
	v[0] = CStringGetTextDatum(name);
	mms_spi_exec("DELETE FROM mms.model_grants g WHERE g.name OPERATOR(pg_catalog.=) $1"
				 " AND NOT EXISTS (SELECT 1 FROM mms.model_versions m"
				 " WHERE m.name OPERATOR(pg_catalog.=) $1)",
				 1, t, v, NULL, SPI_OK_DELETE);
	mms_spi_exec("DELETE FROM mms.model_pool_settings p WHERE p.name OPERATOR(pg_catalog.=) $1"
				 " AND NOT EXISTS (SELECT 1 FROM mms.model_versions m"
				 " WHERE m.name OPERATOR(pg_catalog.=) $1)",
				 1, t, v, NULL, SPI_OK_DELETE);
	/* (its quotas too: a model registered again under the name starts without them) */
	if (mms_catalog_is_current() &&
		mms_spi_exec("DELETE FROM mms.role_quotas q WHERE q.model OPERATOR(pg_catalog.=) $1"
					 " AND NOT EXISTS (SELECT 1 FROM mms.model_versions m"
					 " WHERE m.name OPERATOR(pg_catalog.=) $1)",
					 1, t, v, NULL, SPI_OK_DELETE) > 0)
		mms_quota_rows_changed();
	/* as the registry owner, which owns the large object */
	mms_lo_unlink(weights);
	mms_forget_models_at_commit(MyDatabaseId, id);
	mms_registry_generation++;
	return true;
}

PG_FUNCTION_INFO_V1(mms_unregister);

/* mms_unregister(model text) RETURNS int: removes the version the reference resolves to. */
Datum
mms_unregister(PG_FUNCTION_ARGS)
{
	char	   *ref = required_text(fcinfo, 0, "model reference");
	MmsModel	m;
	MmsCatalogSession s;

	mms_require_admin("unregister models");
	mms_resolve_model(ref, false, &m);

	mms_catalog_enter(&s);
	if (!mms_unregister_spi(m.id, m.name, m.weights))
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("model \"%s:%d\" was unregistered concurrently", m.name, m.version)));
	{
		MmsAuditField d[] = {{"version", INT4OID, Int32GetDatum(m.version)}};

		mms_audit(&s, "unregister", m.name, d, lengthof(d));
	}
	mms_catalog_leave(&s);
	PG_RETURN_INT32(m.version);
}

/* The audit row of an alias change: the alias and the version it names (or named). */
static void
audit_alias(const MmsCatalogSession *s, const char *action, const char *name,
			const char *alias, int32 version)
{
	MmsAuditField d[] = {
		{"alias", TEXTOID, CStringGetTextDatum(alias)},
		{"version", INT4OID, Int32GetDatum(version)},
	};

	mms_audit(s, action, name, d, lengthof(d));
}

PG_FUNCTION_INFO_V1(mms_set_alias);

/* mms_set_alias(name, alias, version int): creates or moves an alias. */
Datum
mms_set_alias(PG_FUNCTION_ARGS)
{
	char	   *name = required_text(fcinfo, 0, "model name");
	char	   *alias = required_text(fcinfo, 1, "alias");
	int32		version;
	char		ref[NAMEDATALEN + 16];
	MmsModel	m;
	MmsCatalogSession s;
	Oid			t[3] = {TEXTOID, TEXTOID, INT4OID};
	Datum		v[3];

	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("version must not be null"),
				 errhint("Use mms_drop_alias() to remove an alias.")));
	version = PG_GETARG_INT32(2);
	mms_require_admin("manage model aliases");
	mms_check_name(name, "model name");
	mms_check_name(alias, "alias");
	if (version <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid version %d", version),
				 errdetail("A version is a positive integer such as 1 or 12.")));
	snprintf(ref, sizeof(ref), "%s:%d", name, version);
	mms_resolve_model(ref, false, &m);

	mms_catalog_enter(&s);
	v[0] = CStringGetTextDatum(name);
	v[1] = CStringGetTextDatum(alias);
	v[2] = Int32GetDatum(version);
	mms_spi_exec("INSERT INTO mms.model_aliases AS a (name, alias, version) VALUES ($1, $2, $3)"
				 " ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version",
				 3, t, v, NULL, SPI_OK_INSERT);
	audit_alias(&s, "set_alias", name, alias, version);
	mms_catalog_leave(&s);
	mms_registry_generation++;
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(mms_drop_alias);

/* mms_drop_alias(name, alias) */
Datum
mms_drop_alias(PG_FUNCTION_ARGS)
{
	char	   *name = required_text(fcinfo, 0, "model name");
	char	   *alias = required_text(fcinfo, 1, "alias");
	MmsCatalogSession s;
	Oid			t[2] = {TEXTOID, TEXTOID};
	Datum		v[2];
	uint64		n;

	mms_require_admin("manage model aliases");
	mms_catalog_enter(&s);
	v[0] = CStringGetTextDatum(name);
	v[1] = CStringGetTextDatum(alias);
	n = mms_spi_exec("DELETE FROM mms.model_aliases a WHERE a.name OPERATOR(pg_catalog.=) $1"
					 " AND a.alias OPERATOR(pg_catalog.=) $2 RETURNING a.version",
					 2, t, v, NULL, SPI_OK_DELETE_RETURNING);
	if (n > 0)
	{
		bool		isnull;
		int32		version = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
														  SPI_tuptable->tupdesc, 1, &isnull));

		audit_alias(&s, "drop_alias", name, alias, version);
	}
	mms_catalog_leave(&s);
	if (n == 0)
	{
		if (!mms_model_exists(name))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("model \"%s\" does not exist", name)));
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" has no alias \"%s\"", name, alias)));
	}
	mms_registry_generation++;
	PG_RETURN_VOID();
}

/*
 * Grants name a model, not one version: every version of "datefix" is
 * usable by whoever may use "datefix", so a new version needs no new grants.
 */
static char *
grant_model_name(FunctionCallInfo fcinfo)
{
	char	   *name = required_text(fcinfo, 0, "model name");

	if (strpbrk(name, ":@") != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("grants apply to a model name, not to \"%s\"", name),
				 errdetail("Every version of a model shares the model's grants.")));
	if (!mms_model_exists(name))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist", name)));
	return name;
}

/*
 * The audit row of a grant or revoke that changed something (granting twice
 * or revoking nothing is not logged): the grantee as given, 'public' or the
 * role's name.
 */
static void
audit_grant(const MmsCatalogSession *s, const char *action, const char *name,
			const char *grantee)
{
	MmsAuditField d[] = {{"grantee", TEXTOID, CStringGetTextDatum(grantee)}};

	mms_audit(s, action, name, d, lengthof(d));
}

PG_FUNCTION_INFO_V1(mms_grant);

/* mms_grant(model, role): lets role (or 'public') use every version of model. */
Datum
mms_grant(PG_FUNCTION_ARGS)
{
	char	   *name;
	Oid			grantee;
	Oid			grantor = GetUserId();
	char	   *role;
	MmsCatalogSession s;
	Oid			t[5] = {TEXTOID, OIDOID, NAMEOID, OIDOID, NAMEOID};
	Datum		v[5];
	char		nulls[5] = "     ";

	mms_require_admin("grant the use of models");
	name = grant_model_name(fcinfo);
	role = required_text(fcinfo, 1, "role");
	/* 'public' (lower case) is PUBLIC, stored as role 0; other names match exactly */
	grantee = mms_role_or_public(role);
	v[0] = CStringGetTextDatum(name);
	v[1] = ObjectIdGetDatum(grantee);
	if (OidIsValid(grantee))
		v[2] = mms_role_name_datum(grantee);
	else
		nulls[2] = 'n';			/* PUBLIC */
	v[3] = ObjectIdGetDatum(grantor);
	v[4] = mms_role_name_datum(grantor);
	mms_catalog_enter(&s);
	if (mms_spi_exec("INSERT INTO mms.model_grants (name, grantee, grantee_name, grantor, grantor_name)"
					 " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name, grantee) DO NOTHING",
					 5, t, v, nulls, SPI_OK_INSERT) > 0)
		audit_grant(&s, "grant", name, role);
	mms_catalog_leave(&s);
	mms_registry_generation++;
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(mms_revoke);

/*
 * A grant whose role was dropped while this database was not looking (DROP
 * ROLE run in another database) binds nobody; it is revoked by the name the
 * role had. Returns the number of such grants removed.
 */
static uint64
revoke_dropped_role(const char *name, const char *role)
{
	MmsCatalogSession s;
	Oid			t[2] = {TEXTOID, NAMEOID};
	Datum		v[2];
	uint64		n;

	v[0] = CStringGetTextDatum(name);
	v[1] = DirectFunctionCall1(namein, CStringGetDatum(role));
	mms_catalog_enter(&s);
	n = mms_spi_exec("DELETE FROM mms.model_grants g WHERE g.name OPERATOR(pg_catalog.=) $1"
					 " AND g.grantee_name OPERATOR(pg_catalog.=) $2"
					 " AND g.grantee OPERATOR(pg_catalog.<>) 0"
					 " AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r"
					 " WHERE r.oid OPERATOR(pg_catalog.=) g.grantee)",
					 2, t, v, NULL, SPI_OK_DELETE);
	if (n > 0)
		audit_grant(&s, "revoke", name, role);
	mms_catalog_leave(&s);
	return n;
}

/* mms_revoke(model, role): undoes mms_grant; revoking nothing is not an error, as in REVOKE. */
Datum
mms_revoke(PG_FUNCTION_ARGS)
{
	char	   *name;
	Oid			grantee;
	MmsCatalogSession s;
	Oid			t[2] = {TEXTOID, OIDOID};
	Datum		v[2];
	char	   *role;

	mms_require_admin("revoke the use of models");
	name = grant_model_name(fcinfo);
	role = required_text(fcinfo, 1, "role");
	if (strcmp(role, "public") != 0 && !OidIsValid(get_role_oid(role, true)) &&
		revoke_dropped_role(name, role) > 0)
	{
		mms_registry_generation++;
		PG_RETURN_VOID();
	}
	grantee = mms_role_or_public(role);
	mms_catalog_enter(&s);
	v[0] = CStringGetTextDatum(name);
	v[1] = ObjectIdGetDatum(grantee);
	if (mms_spi_exec("DELETE FROM mms.model_grants g WHERE g.name OPERATOR(pg_catalog.=) $1"
					 " AND g.grantee OPERATOR(pg_catalog.=) $2",
					 2, t, v, NULL, SPI_OK_DELETE) > 0)
		audit_grant(&s, "revoke", name, role);
	mms_catalog_leave(&s);
	mms_registry_generation++;
	PG_RETURN_VOID();
}
