/*
 * catalog.c — access to the registry's tables in schema mms: who the registry
 * owner is, catalog sessions that run SPI as that owner with a pinned
 * search_path, who counts as an administrator, and the rules for names and
 * versions. What the rows mean is up to register.c, manage.c and resolve.c.
 *
 * Why a session switches user: ordinary roles have no rights on the tables
 * (they read the views), and the stored weights are large objects owned by the
 * registry owner. Every function checks the caller's rights first, as the
 * caller (GetUserId()), and only then enters a session. Inside it the
 * search_path is "pg_catalog, pg_temp" and every query schema-qualifies its
 * tables and operators, so objects in the caller's schemas are never called
 * with the owner's rights. ERROR needs no cleanup here: transaction and
 * subtransaction abort restore the user id, the GUC nest level and SPI.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "mms.h"

uint64		mms_registry_generation = 0;

/*
 * The registry owner is the owner of the catalog table: the role that ran
 * CREATE EXTENSION (normally a superuser). Looked up every time, because
 * REASSIGN OWNED can change it.
 */
Oid
mms_registry_owner(void)
{
	Oid			nsp = get_namespace_oid("mms", true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid("model_versions", nsp) : InvalidOid;
	HeapTuple	tp;
	Oid			owner;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the mms model registry is missing in this database"),
				 errhint("Run CREATE EXTENSION mms in this database.")));
	tp = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tp))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tp))->relowner;
	ReleaseSysCache(tp);
	return owner;
}

/*
 * The library writes and reads the catalog of the newest extension version
 * only. After a package upgrade, until ALTER EXTENSION mms UPDATE runs in a
 * database, its registry lacks what the library's queries name; this says so
 * instead of failing a query. The marker is a relation the newest version
 * added (0.4.0: the API keys): a syscache lookup, no catalog scan.
 */
bool
mms_catalog_is_current(void)
{
	Oid			nsp = get_namespace_oid("mms", true);

	return OidIsValid(nsp) && OidIsValid(get_relname_relid("api_key_rows", nsp));
}

void
mms_require_current_catalog(void)
{
	if (mms_catalog_is_current())
		return;
	(void) mms_registry_owner();	/* no registry at all: its own error */
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("the mms model registry in this database is older than the installed mms library"),
			 errhint("Run ALTER EXTENSION mms UPDATE in this database.")));
}

void
mms_catalog_enter(MmsCatalogSession *s)
{
	Oid			owner = mms_registry_owner();

	s->caller = GetUserId();
	s->caller_cxt = CurrentMemoryContext;
	GetUserIdAndSecContext(&s->save_userid, &s->save_sec_context);
	SetUserIdAndSecContext(owner, s->save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	s->guc_nest_level = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

void
mms_catalog_leave(MmsCatalogSession *s)
{
	SPI_finish();
	AtEOXact_GUC(true, s->guc_nest_level);
	SetUserIdAndSecContext(s->save_userid, s->save_sec_context);
}

uint64
mms_spi_exec(const char *sql, int nargs, Oid *argtypes, Datum *values,
			 const char *nulls, int expect)
{
	int			rc = SPI_execute_with_args(sql, nargs, argtypes, values, nulls, false, 0);

	if (rc != expect)
		elog(ERROR, "mms catalog query failed: %s: %s", SPI_result_code_string(rc), sql);
	return SPI_processed;
}

PG_FUNCTION_INFO_V1(mms_cluster_id);

/* mms.cluster_id() RETURNS bigint: this cluster's system identifier, as pg_control_system() shows it. */
Datum
mms_cluster_id(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64((int64) GetSystemIdentifier());
}

Datum
mms_role_name_datum(Oid roleid)
{
	return DirectFunctionCall1(namein, CStringGetDatum(GetUserNameFromId(roleid, false)));
}

/*
 * 'public' is PUBLIC (InvalidOid); anything else a role name, matched
 * exactly. As in has_table_privilege(): a role named "Public" is that role,
 * not everyone (no role can be named "public").
 */
Oid
mms_role_or_public(const char *role)
{
	Oid			roleid;

	if (strcmp(role, "public") == 0)
		return InvalidOid;
	roleid = get_role_oid(role, true);
	if (!OidIsValid(roleid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role \"%s\" does not exist", role),
				 pg_strcasecmp(role, "public") == 0 ?
				 errhint("Write 'public', in lower case, for every role.") : 0));
	return roleid;
}

bool
mms_is_admin(Oid roleid)
{
	Oid			admin;

	if (superuser_arg(roleid))
		return true;
	admin = get_role_oid("mms_admin", true);
	return OidIsValid(admin) && has_privs_of_role(roleid, admin);
}

void
mms_require_admin(const char *action)
{
	if (!mms_is_admin(GetUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to %s", action),
				 errhint("Only superusers and members of role \"mms_admin\" may manage models.")));
}

/*
 * Names (models and aliases) end up inside references such as 'name:3' and
 * 'name@prod', in psql output and in log lines: keep them to one printable
 * token that fits in a NAMEDATALEN buffer.
 */
void
mms_check_name(const char *name, const char *what)
{
	size_t		len = strlen(name);
	const unsigned char *p;

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("%s must not be empty", what)));
	if (len >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("%s \"%s\" is too long", what, name),
				 errdetail("Names are limited to %d bytes.", NAMEDATALEN - 1)));
	for (p = (const unsigned char *) name; *p; p++)
	{
		if (*p == ':' || *p == '@' || *p == ' ' || (*p >= '\t' && *p <= '\r') ||
			*p < 0x20 || *p == 0x7f)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_NAME),
					 errmsg("invalid %s \"%s\"", what, name),
					 errdetail("Names may not contain ':', '@', white space or control characters.")));
	}
}

int32
mms_parse_version(const char *text)
{
	const char *p = text;
	int64		v = 0;

	if (*p == '\0')
		goto bad;
	for (; *p; p++)
	{
		if (*p < '0' || *p > '9')
			goto bad;
		v = v * 10 + (*p - '0');
		if (v > PG_INT32_MAX)
			goto bad;
	}
	if (v <= 0)
		goto bad;
	return (int32) v;

bad:
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid version \"%s\"", text),
			 errdetail("A version is a positive integer such as 1 or 12.")));
	return 0;					/* keep compiler quiet */
}
