/*
 * api_keys.c — the writers of mms.api_key_rows, the HTTP gateway's API keys:
 * mms_create_api_key and mms_revoke_api_key. Checking a key
 * (mms.api_authenticate), what DROP ROLE and friends do to keys (utility.c)
 * and the gateway's use of them are elsewhere.
 *
 * A key is 'mms-' and 64 hex digits (256 random bits); only its sha256 is
 * stored, with its first 12 characters as a prefix that names it in views and
 * logs. A key acts as one role: the gateway runs each request under SET LOCAL
 * ROLE of the key's role. So who may create one is who may become that role
 * (an administrator that is a member of it), and some roles never get one:
 * superusers (the gateway must not become one), PUBLIC (not a role), and
 * mms_gateway and its members (they can become every role that has keys).
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "mms.h"

#define KEY_RANDOM_BYTES 32
#define KEY_TAG "mms-"
#define KEY_PREFIX_LEN 12		/* "mms-" and 8 hex digits */
#define GATEWAY_ROLE "mms_gateway"

/* The role a key is for: an existing role that is not PUBLIC, a superuser or a gateway. */
static Oid
key_role_arg(FunctionCallInfo fcinfo, Oid caller)
{
	char	   *name;
	Oid			roleid;
	Oid			gateway = get_role_oid(GATEWAY_ROLE, true);

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("role must not be null")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	roleid = mms_role_or_public(name);
	if (!OidIsValid(roleid))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot create an API key for public"),
				 errdetail("An API key acts as one role.")));
	if (superuser_arg(roleid))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("cannot create an API key for superuser \"%s\"", name),
				 errdetail("Requests made with an API key run as its role; the gateway must never run as a superuser.")));
	if (OidIsValid(gateway) && is_member_of_role(roleid, gateway))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("cannot create an API key for role \"%s\"", name),
				 roleid == gateway ?
				 errdetail("The gateway's role becomes the roles of API keys; it has none of its own.") :
				 errdetail("Role \"%s\" is a member of \"%s\", which becomes the roles of API keys.",
						   name, GATEWAY_ROLE)));
	/* the key lets its holder act as the role: only for whoever may do so already */
	if (!superuser_arg(caller) && !is_member_of_role(caller, roleid))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to create an API key for role \"%s\"", name),
				 errdetail("Only roles that can SET ROLE to \"%s\" may create keys that act as it.", name)));
	if (OidIsValid(gateway) && !is_member_of_role(gateway, roleid))
		ereport(NOTICE,
				(errmsg("the gateway cannot use this key yet: role \"%s\" is not granted to \"%s\"",
						name, GATEWAY_ROLE),
				 errhint("GRANT %s TO %s;", quote_identifier(name), GATEWAY_ROLE)));
	return roleid;
}

PG_FUNCTION_INFO_V1(mms_create_api_key);

/*
 * mms_create_api_key(role text, label text, expires timestamptz) RETURNS text:
 * a new key for role, returned once (only its hash is kept).
 */
Datum
mms_create_api_key(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	Oid			roleid;
	uint8		random[KEY_RANDOM_BYTES];
	char		key[sizeof(KEY_TAG) + 2 * KEY_RANDOM_BYTES];
	bytea	   *key_bytes;
	MmsCatalogSession s;
	Oid			t[6] = {TEXTOID, BYTEAOID, OIDOID, NAMEOID, TEXTOID, TIMESTAMPTZOID};
	Datum		v[6];
	char		nulls[6] = "      ";
	bool		isnull;
	int64		id;

	mms_require_admin("create API keys");
	roleid = key_role_arg(fcinfo, caller);
	if (!PG_ARGISNULL(2) &&
		PG_GETARG_TIMESTAMPTZ(2) <= GetCurrentTransactionStartTimestamp())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("expires must be in the future"),
				 errhint("Pass NULL for a key that does not expire.")));
	mms_require_current_catalog();

	if (!pg_strong_random(random, sizeof(random)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random API key")));
	strcpy(key, KEY_TAG);
	hex_encode((const char *) random, sizeof(random), key + strlen(KEY_TAG));
	key[sizeof(key) - 1] = '\0';
	key_bytes = (bytea *) palloc(VARHDRSZ + strlen(key));
	SET_VARSIZE(key_bytes, VARHDRSZ + strlen(key));
	memcpy(VARDATA(key_bytes), key, strlen(key));

	v[0] = PointerGetDatum(cstring_to_text_with_len(key, KEY_PREFIX_LEN));
	v[1] = PointerGetDatum(key_bytes);
	v[2] = ObjectIdGetDatum(roleid);
	v[3] = mms_role_name_datum(roleid);
	v[4] = PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1);
	nulls[4] = PG_ARGISNULL(1) ? 'n' : ' ';
	v[5] = PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2);
	nulls[5] = PG_ARGISNULL(2) ? 'n' : ' ';

	mms_catalog_enter(&s);
	mms_spi_exec("INSERT INTO mms.api_key_rows (prefix, secret_sha256, role, role_name, label, expires)"
				 " VALUES ($1, pg_catalog.sha256($2), $3, $4, $5, $6) RETURNING id",
				 6, t, v, nulls, SPI_OK_INSERT_RETURNING);
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	{
		MmsAuditField d[] = {
			{"id", INT8OID, Int64GetDatum(id)},
			{"prefix", TEXTOID, v[0]},
			{"role", NAMEOID, v[3]},
			{"label", TEXTOID, v[4], nulls[4] == 'n'},
			{"expires", TIMESTAMPTZOID, v[5], nulls[5] == 'n'},
		};

		mms_audit(&s, "create_api_key", NULL, d, lengthof(d));
	}
	mms_catalog_leave(&s);
	PG_RETURN_TEXT_P(cstring_to_text(key));
}

PG_FUNCTION_INFO_V1(mms_revoke_api_key);

/*
 * mms_revoke_api_key(id bigint) RETURNS boolean: the key stops working (within
 * the gateway's key cache time); false if it was revoked already.
 */
Datum
mms_revoke_api_key(PG_FUNCTION_ARGS)
{
	MmsCatalogSession s;
	Oid			t[1] = {INT8OID};
	Datum		v[1];
	uint64		n;
	bool		exists = true;

	mms_require_admin("revoke API keys");
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("id must not be null")));
	mms_require_current_catalog();
	v[0] = PG_GETARG_DATUM(0);
	mms_catalog_enter(&s);
	n = mms_spi_exec("UPDATE mms.api_key_rows k SET revoked = pg_catalog.now()"
					 " WHERE k.id OPERATOR(pg_catalog.=) $1 AND k.revoked IS NULL"
					 " RETURNING k.prefix, k.role_name",
					 1, t, v, NULL, SPI_OK_UPDATE_RETURNING);
	if (n > 0)
	{
		bool		isnull;
		MmsAuditField d[] = {
			{"id", INT8OID, v[0]},
			{"prefix", TEXTOID, SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)},
			{"role", NAMEOID, SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)},
		};

		mms_audit(&s, "revoke_api_key", NULL, d, lengthof(d));
	}
	else
		exists = mms_spi_exec("SELECT 1 FROM mms.api_key_rows k WHERE k.id OPERATOR(pg_catalog.=) $1",
							  1, t, v, NULL, SPI_OK_SELECT) > 0;
	mms_catalog_leave(&s);
	if (!exists)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("API key " INT64_FORMAT " does not exist", PG_GETARG_INT64(0))));
	PG_RETURN_BOOL(n > 0);
}
