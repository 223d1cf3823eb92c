/*
 * utility.c — DDL that concerns the registry, seen through ProcessUtility:
 * roles named by models, grants, quotas and API keys (DROP ROLE, DROP OWNED,
 * REASSIGN OWNED, ALTER ROLE ... RENAME), DROP EXTENSION mms with models
 * registered, and DROP DATABASE (its workers and cached weights). What the
 * rows mean stays with manage.c, register.c, quota_rules.c and api_keys.c;
 * this file only keeps them consistent.
 *
 * Roles are handled as PostgreSQL handles the roles of objects in a database:
 * DROP ROLE is refused while a model or grant of the current database names
 * the role (core's pg_shdepend check, which cannot see rows of an extension's
 * tables); REASSIGN OWNED moves models and grants made, DROP OWNED unregisters
 * the role's models and removes the grants to it. Like core, each acts on the
 * current database only: a registry in another database is checked when the
 * statement runs there. A grant whose role was dropped from another database
 * binds nobody (roles are bound by oid) and can be removed with mms_revoke().
 *
 * API keys are a role's credentials rather than objects it owns: a live key
 * (neither revoked nor expired) blocks DROP ROLE, and the role's dead keys go
 * with it; DROP OWNED removes all its keys; REASSIGN OWNED leaves them (a key
 * must not start acting as another role).
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "serve.h"

/* detail lines listed before "and N more", as core lists dependent objects */
#define MAX_LISTED 20

static ProcessUtility_hook_type prev_process_utility = NULL;

/* Is the registry installed in this database? */
static bool
registry_here(void)
{
	return OidIsValid(get_extension_oid("mms", true));
}

/*
 * Does this database's registry have the table? A registry one version behind
 * the library still gets its roles kept consistent: 0.2.0 has no quotas,
 * 0.3.0 no API keys.
 */
static bool
registry_has(const char *relname)
{
	Oid			nsp = get_namespace_oid("mms", true);

	return OidIsValid(nsp) && OidIsValid(get_relname_relid(relname, nsp));
}

/* A key that still works: what makes DROP ROLE wait (with $1 its role). */
#define LIVE_KEYS_OF_ROLE \
	" FROM mms.api_key_rows k WHERE k.role OPERATOR(pg_catalog.=) $1 AND k.revoked IS NULL" \
	" AND (k.expires IS NULL OR k.expires OPERATOR(pg_catalog.>) pg_catalog.now())"

/*
 * What of the current database's registry names the role; NULL if nothing.
 * *live_keys: whether that includes API keys.
 */
static char *
role_references(Oid roleid, bool *live_keys)
{
	MmsCatalogSession s;
	Oid			t[1] = {OIDOID};
	Datum		v[1] = {ObjectIdGetDatum(roleid)};
	uint64		n;
	StringInfoData buf;
	char	   *result = NULL;
	bool		quotas = registry_has("role_quotas");
	bool		keys = registry_has("api_key_rows");

	mms_catalog_enter(&s);
	/* constant parts only: nothing of the caller's goes into the statement */
	n = mms_spi_exec(psprintf("%s%s%s ORDER BY 1",
							  "SELECT 'owner of model \"' || m.name || ':' || m.version || '\"'"
							  " FROM mms.model_versions m WHERE m.owner OPERATOR(pg_catalog.=) $1"
							  " UNION ALL SELECT 'use of model \"' || g.name || '\" granted to it'"
							  " FROM mms.model_grants g WHERE g.grantee OPERATOR(pg_catalog.=) $1"
							  " UNION ALL SELECT 'use of model \"' || g.name || '\" granted by it'"
							  " FROM mms.model_grants g WHERE g.grantor OPERATOR(pg_catalog.=) $1",
							  quotas ?
							  " UNION ALL SELECT 'quota on ' || coalesce('model \"' || q.model || '\"', 'every model')"
							  " FROM mms.role_quotas q WHERE q.role OPERATOR(pg_catalog.=) $1" : "",
							  keys ?
							  " UNION ALL SELECT 'API key ' || k.id || ' (' || k.prefix || '...)'"
							  LIVE_KEYS_OF_ROLE : ""),
					 1, t, v, NULL, SPI_OK_SELECT);
	if (n > 0)
	{
		MemoryContext old = MemoryContextSwitchTo(s.caller_cxt);

		initStringInfo(&buf);
		for (uint64 i = 0; i < n && i < MAX_LISTED; i++)
			appendStringInfo(&buf, "%s%s", i > 0 ? "\n" : "",
							 SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
		if (n > MAX_LISTED)
			appendStringInfo(&buf, "\nand " UINT64_FORMAT " other objects", n - MAX_LISTED);
		result = buf.data;
		MemoryContextSwitchTo(old);
	}
	*live_keys = n > 0 && keys &&
		mms_spi_exec("SELECT 1" LIVE_KEYS_OF_ROLE, 1, t, v, NULL, SPI_OK_SELECT) > 0;
	mms_catalog_leave(&s);
	return result;
}

/* The roles a DROP ROLE names that exist, after checking that nothing here needs them. */
static List *
check_drop_role(DropRoleStmt *stmt)
{
	ListCell   *lc;
	List	   *dropped = NIL;

	foreach(lc, stmt->roles)
	{
		RoleSpec   *spec = lfirst(lc);
		Oid			roleid;
		char	   *refs;
		bool		live_keys;

		/* core reports missing roles (or skips them with IF EXISTS) */
		if (spec->roletype != ROLESPEC_CSTRING ||
			!OidIsValid(roleid = get_role_oid(spec->rolename, true)))
			continue;
		if ((refs = role_references(roleid, &live_keys)) != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
					 errmsg("role \"%s\" cannot be dropped because some objects depend on it",
							spec->rolename),
					 errdetail("%s", refs),
					 live_keys ?
					 errhint("Drop them with DROP OWNED BY, or use mms_revoke_api_key() for the keys "
							 "and mms_revoke(), mms_drop_quota() and mms_unregister() for the rest.") :
					 errhint("Move them with REASSIGN OWNED BY or drop them with DROP OWNED BY, "
							 "or use mms_revoke(), mms_drop_quota() and mms_unregister().")));
		dropped = lappend_oid(dropped, roleid);
	}
	return dropped;
}

/* After DROP ROLE: the keys left were dead (revoked or expired); they go with their role. */
static void
drop_dead_keys(List *dropped)
{
	MmsCatalogSession s;
	ListCell   *lc;
	Oid			t[1] = {OIDOID};
	Datum		v[1];

	if (dropped == NIL || !registry_has("api_key_rows"))
		return;
	mms_catalog_enter(&s);
	foreach(lc, dropped)
	{
		v[0] = ObjectIdGetDatum(lfirst_oid(lc));
		mms_spi_exec("DELETE FROM mms.api_key_rows k WHERE k.role OPERATOR(pg_catalog.=) $1",
					 1, t, v, NULL, SPI_OK_DELETE);
	}
	mms_catalog_leave(&s);
}

/* The role oids a statement's role list names (all exist: core checked). */
static List *
role_oids(List *roles)
{
	List	   *oids = NIL;
	ListCell   *lc;

	foreach(lc, roles)
		oids = lappend_oid(oids, get_rolespec_oid(lfirst(lc), false));
	return oids;
}

/* After REASSIGN OWNED BY old TO new: models and grants made follow. */
static void
reassign_owned(ReassignOwnedStmt *stmt)
{
	Oid			newrole = get_rolespec_oid(stmt->newrole, false);
	List	   *old = role_oids(stmt->roles);
	MmsCatalogSession s;
	ListCell   *lc;
	Oid			t[3] = {OIDOID, NAMEOID, OIDOID};
	Datum		v[3];

	v[0] = ObjectIdGetDatum(newrole);
	v[1] = mms_role_name_datum(newrole);
	mms_catalog_enter(&s);
	foreach(lc, old)
	{
		v[2] = ObjectIdGetDatum(lfirst_oid(lc));
		mms_spi_exec("UPDATE mms.model_versions m SET owner = $1, owner_name = $2"
					 " WHERE m.owner OPERATOR(pg_catalog.=) $3",
					 3, t, v, NULL, SPI_OK_UPDATE);
		mms_spi_exec("UPDATE mms.model_grants g SET grantor = $1, grantor_name = $2"
					 " WHERE g.grantor OPERATOR(pg_catalog.=) $3",
					 3, t, v, NULL, SPI_OK_UPDATE);
	}
	mms_catalog_leave(&s);
	mms_registry_generation++;
}

/* Audit rows for the n rows SPI just returned (their first column: the model). */
static void
audit_removed(MmsCatalogSession *s, const char *action, const char *key, Oid roleid, uint64 n)
{
	SPITupleTable *rows = SPI_tuptable;

	for (uint64 i = 0; i < n; i++)
	{
		MmsAuditField d[] = {
			{key, TEXTOID, CStringGetTextDatum(GetUserNameFromId(roleid, false))},
			{"by", TEXTOID, CStringGetTextDatum("drop owned")},
		};

		mms_audit(s, action, SPI_getvalue(rows->vals[i], rows->tupdesc, 1), d, lengthof(d));
	}
}

/* Audit rows for the n keys SPI just returned (id, prefix, live) that worked until now. */
static void
audit_removed_keys(MmsCatalogSession *s, Oid roleid, uint64 n)
{
	SPITupleTable *rows = SPI_tuptable;

	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		MmsAuditField d[] = {
			{"id", INT8OID, SPI_getbinval(rows->vals[i], rows->tupdesc, 1, &isnull)},
			{"prefix", TEXTOID, SPI_getbinval(rows->vals[i], rows->tupdesc, 2, &isnull)},
			{"role", TEXTOID, CStringGetTextDatum(GetUserNameFromId(roleid, false))},
			{"by", TEXTOID, CStringGetTextDatum("drop owned")},
		};

		if (DatumGetBool(SPI_getbinval(rows->vals[i], rows->tupdesc, 3, &isnull)))
			mms_audit(s, "revoke_api_key", NULL, d, lengthof(d));
	}
}

/*
 * After DROP OWNED BY: the roles' models are unregistered (core drops what
 * they own), grants to them are removed, and grants they made pass to the
 * registry owner (the grant stays: an administrator made it).
 */
static void
drop_owned(DropOwnedStmt *stmt)
{
	List	   *old = role_oids(stmt->roles);
	Oid			registry_owner = mms_registry_owner();
	bool		quotas = registry_has("role_quotas");
	bool		keys = registry_has("api_key_rows");
	MmsCatalogSession s;
	ListCell   *lc;

	mms_catalog_enter(&s);
	foreach(lc, old)
	{
		Oid			t[3] = {OIDOID, OIDOID, NAMEOID};
		Datum		v[3];
		uint64		n;
		SPITupleTable *models;

		v[0] = ObjectIdGetDatum(lfirst_oid(lc));
		n = mms_spi_exec("SELECT m.id, m.name, m.weights, m.version FROM mms.model_versions m"
						 " WHERE m.owner OPERATOR(pg_catalog.=) $1",
						 1, t, v, NULL, SPI_OK_SELECT);
		models = SPI_tuptable;
		for (uint64 i = 0; i < n; i++)
		{
			bool		isnull;
			int64		id = DatumGetInt64(SPI_getbinval(models->vals[i], models->tupdesc, 1, &isnull));
			char	   *name = SPI_getvalue(models->vals[i], models->tupdesc, 2);
			Oid			weights = DatumGetObjectId(SPI_getbinval(models->vals[i], models->tupdesc, 3, &isnull));
			MmsAuditField d[] = {
				{"version", INT4OID, SPI_getbinval(models->vals[i], models->tupdesc, 4, &isnull)},
				{"by", TEXTOID, CStringGetTextDatum("drop owned")},
			};

			if (mms_unregister_spi(id, name, weights))
				mms_audit(&s, "unregister", name, d, lengthof(d));
		}
		/* what goes with the role is logged as if revoked and dropped by the caller */
		n = mms_spi_exec("DELETE FROM mms.model_grants g WHERE g.grantee OPERATOR(pg_catalog.=) $1"
						 " RETURNING g.name",
						 1, t, v, NULL, SPI_OK_DELETE_RETURNING);
		audit_removed(&s, "revoke", "grantee", lfirst_oid(lc), n);
		if (quotas)
		{
			n = mms_spi_exec("DELETE FROM mms.role_quotas q WHERE q.role OPERATOR(pg_catalog.=) $1"
							 " RETURNING q.model",
							 1, t, v, NULL, SPI_OK_DELETE_RETURNING);
			audit_removed(&s, "drop_quota", "role", lfirst_oid(lc), n);
			if (n > 0)
				mms_quota_rows_changed();
		}
		if (keys)
		{
			/* a key that still worked is logged as revoked by the caller */
			n = mms_spi_exec("DELETE FROM mms.api_key_rows k WHERE k.role OPERATOR(pg_catalog.=) $1"
							 " RETURNING k.id, k.prefix, k.revoked IS NULL"
							 " AND (k.expires IS NULL OR k.expires OPERATOR(pg_catalog.>) pg_catalog.now())",
							 1, t, v, NULL, SPI_OK_DELETE_RETURNING);
			audit_removed_keys(&s, lfirst_oid(lc), n);
		}
		v[1] = ObjectIdGetDatum(registry_owner);
		v[2] = mms_role_name_datum(registry_owner);
		mms_spi_exec("UPDATE mms.model_grants g SET grantor = $2, grantor_name = $3"
					 " WHERE g.grantor OPERATOR(pg_catalog.=) $1",
					 3, t, v, NULL, SPI_OK_UPDATE);
	}
	mms_catalog_leave(&s);
	mms_registry_generation++;
}

/* After ALTER ROLE ... RENAME: the names a dump of this registry carries follow. */
static void
rename_role(RenameStmt *stmt)
{
	Oid			roleid = get_role_oid(stmt->newname, false);
	MmsCatalogSession s;
	Oid			t[2] = {OIDOID, NAMEOID};
	Datum		v[2];

	v[0] = ObjectIdGetDatum(roleid);
	v[1] = mms_role_name_datum(roleid);
	mms_catalog_enter(&s);
	mms_spi_exec("UPDATE mms.model_versions m SET owner_name = $2 WHERE m.owner OPERATOR(pg_catalog.=) $1",
				 2, t, v, NULL, SPI_OK_UPDATE);
	mms_spi_exec("UPDATE mms.model_grants g SET grantee_name = $2 WHERE g.grantee OPERATOR(pg_catalog.=) $1",
				 2, t, v, NULL, SPI_OK_UPDATE);
	mms_spi_exec("UPDATE mms.model_grants g SET grantor_name = $2 WHERE g.grantor OPERATOR(pg_catalog.=) $1",
				 2, t, v, NULL, SPI_OK_UPDATE);
	if (registry_has("role_quotas"))
		mms_spi_exec("UPDATE mms.role_quotas q SET role_name = $2 WHERE q.role OPERATOR(pg_catalog.=) $1",
					 2, t, v, NULL, SPI_OK_UPDATE);
	if (registry_has("api_key_rows"))
		mms_spi_exec("UPDATE mms.api_key_rows k SET role_name = $2 WHERE k.role OPERATOR(pg_catalog.=) $1",
					 2, t, v, NULL, SPI_OK_UPDATE);
	mms_catalog_leave(&s);
}

static bool
drops_mms_extension(DropStmt *stmt)
{
	ListCell   *lc;

	if (stmt->removeType != OBJECT_EXTENSION)
		return false;
	foreach(lc, stmt->objects)
		if (strcmp(strVal(lfirst(lc)), "mms") == 0)
			return true;
	return false;
}

/*
 * DROP EXTENSION mms: the registered weights are large objects, which no
 * extension owns; dropping the catalog would leave them orphaned. Like a
 * drop with dependent objects, it is refused unless CASCADE, which unlinks
 * them in the same transaction.
 */
static void
drop_extension(DropStmt *stmt)
{
	MmsCatalogSession s;
	uint64		n;

	mms_catalog_enter(&s);
	n = mms_spi_exec("SELECT m.weights FROM mms.model_versions m", 0, NULL, NULL, NULL, SPI_OK_SELECT);
	if (n > 0 && stmt->behavior != DROP_CASCADE)
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("cannot drop extension mms because models are registered"),
				 errdetail(UINT64_FORMAT " model versions are registered; their weights are large objects.", n),
				 errhint("Unregister them with mms_unregister(), or drop them with the extension: DROP EXTENSION mms CASCADE.")));
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;

		mms_lo_unlink(DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull)));
	}
	mms_catalog_leave(&s);
	if (n > 0)
		ereport(NOTICE,
				(errmsg("dropping the weights of " UINT64_FORMAT " registered model versions", n)));
	mms_forget_models_at_commit(MyDatabaseId, 0);
	mms_registry_generation++;
}

static void
mms_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					ProcessUtilityContext context, ParamListInfo params,
					QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;
	Oid			dropped_db = InvalidOid;
	List	   *dropped_roles = NIL;
	bool		here = false;

	/*
	 * Only the statements of interest look at the catalog: others include
	 * ROLLBACK in an aborted transaction, where no catalog can be read.
	 */
	if (IsA(stmt, DropRoleStmt) || IsA(stmt, DropStmt) || IsA(stmt, ReassignOwnedStmt) ||
		IsA(stmt, DropOwnedStmt) ||
		(IsA(stmt, RenameStmt) && ((RenameStmt *) stmt)->renameType == OBJECT_ROLE))
		here = registry_here();

	/* before: refusals, and what must happen while the objects still exist */
	if (IsA(stmt, DropdbStmt))
	{
		dropped_db = get_database_oid(((DropdbStmt *) stmt)->dbname, true);
		/* idle workers connected to it would make the drop fail */
		mms_release_database(dropped_db);
	}
	else if (here && IsA(stmt, DropRoleStmt))
		dropped_roles = check_drop_role((DropRoleStmt *) stmt);
	else if (here && IsA(stmt, DropStmt) && drops_mms_extension((DropStmt *) stmt))
		drop_extension((DropStmt *) stmt);

	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);

	/* after: core checked the statement and did its part (DROP OWNED may have dropped mms) */
	if (here && (IsA(stmt, ReassignOwnedStmt) || IsA(stmt, DropOwnedStmt)))
		here = registry_here();
	if (OidIsValid(dropped_db))
		mms_forget_models(dropped_db, 0);	/* workers it had under load, too */
	else if (here && IsA(stmt, ReassignOwnedStmt))
		reassign_owned((ReassignOwnedStmt *) stmt);
	else if (here && IsA(stmt, DropOwnedStmt))
		drop_owned((DropOwnedStmt *) stmt);
	else if (here && IsA(stmt, RenameStmt) && ((RenameStmt *) stmt)->renameType == OBJECT_ROLE)
		rename_role((RenameStmt *) stmt);
	else if (here && IsA(stmt, DropRoleStmt))
		drop_dead_keys(dropped_roles);
}

void
mms_utility_install_hook(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = mms_process_utility;
}
