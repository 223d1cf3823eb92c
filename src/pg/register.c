/*
 * register.c — mms_register (from a large object) and mms_import (from a server
 * file): check the caller's rights, read and validate the file with the engine,
 * store a copy owned by the registry and insert the catalog row, all in the
 * caller's transaction so that an ERROR leaves neither row nor large object.
 */
#include "postgres.h"

#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"

#include "mms.h"
#include "t5_meta.h"

/* Optional arguments shared by both entry points (positions 2..4). */
typedef struct RegisterArgs
{
	char	   *name;
	int32		version;		/* 0 = next free */
	char	   *author;
	char	   *description;
	char	   *path;			/* mms_import's server file; NULL for mms_register */
} RegisterArgs;

static char *
opt_text(FunctionCallInfo fcinfo, int argno)
{
	return PG_ARGISNULL(argno) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(argno));
}

static void
read_args(FunctionCallInfo fcinfo, RegisterArgs *a, const char *source_what)
{
	char	   *version;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("model name must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", source_what)));
	a->name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	mms_check_name(a->name, "model name");
	version = opt_text(fcinfo, 2);
	a->version = version ? mms_parse_version(version) : 0;
	a->author = opt_text(fcinfo, 3);
	a->description = opt_text(fcinfo, 4);
	a->path = NULL;
}

/*
 * The hyperparameters for the config column. The keys are those of the
 * columns they replaced in 0.1.0 (the upgrade script builds the same object
 * from them), so upgraded and new rows read alike.
 */
static Datum
t5_config_jsonb(const MmsT5Config *c)
{
	StringInfoData json;

	initStringInfo(&json);
	appendStringInfo(&json,
					 "{\"d_model\": " INT64_FORMAT ", \"d_ff\": " INT64_FORMAT
					 ", \"n_enc_layers\": " INT64_FORMAT ", \"n_dec_layers\": " INT64_FORMAT
					 ", \"n_heads\": " INT64_FORMAT ", \"d_kv\": " INT64_FORMAT
					 ", \"vocab_size\": " INT64_FORMAT ", \"context_length\": " INT64_FORMAT
					 ", \"ffn_kind\": \"%s\", \"tied_embeddings\": %s}",
					 (int64) c->d_model, (int64) c->d_ff, (int64) c->n_enc_layer,
					 (int64) c->n_dec_layer, (int64) c->n_head, (int64) c->d_kv,
					 (int64) c->vocab, (int64) c->context_length,
					 c->gated ? "gated-gelu" : "relu", c->tied ? "true" : "false");
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(json.data));
}

/* The audit row of a registration: action import when it came from a server file. */
static void
audit_registration(const MmsCatalogSession *s, const RegisterArgs *a, int32 version,
				   Size size, const char *sha)
{
	MmsAuditField d[] = {
		{"version", INT4OID, Int32GetDatum(version)},
		{"sha256", TEXTOID, CStringGetTextDatum(sha)},
		{"size_bytes", INT8OID, Int64GetDatum((int64) size)},
		{"path", TEXTOID, a->path ? CStringGetTextDatum(a->path) : (Datum) 0},
	};

	/* path comes last, so that mms_register's rows simply leave it out */
	mms_audit(s, a->path ? "import" : "register", a->name, d, a->path ? 4 : 3);
}

/* Validates the file, stores the copy and inserts the row; returns the version. */
static int32
register_buffer(const RegisterArgs *a, const char *buf, Size size, const char *sha)
{
	MmsError	err;
	MmsGguf    *g;
	MmsT5Info	info;
	MmsStatus	st;
	char		types[64];
	Datum		metadata;
	Datum		config;
	MmsCatalogSession s;
	Oid			owner = GetUserId();
	int32		version = a->version;
	Oid			loid;

	mms_require_current_catalog();
	if (size == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("could not register model \"%s\": file is empty", a->name)));
	g = mms_gguf_parse_pg(buf, size, &err);
	st = g ? mms_t5_validate(g, &info, &err) : err.code;
	if (st != MMS_OK)
		ereport(ERROR,
				(errcode(mms_engine_sqlstate(st)),
				 errmsg("could not register model \"%s\": %s", a->name, err.msg)));
	mms_t5_type_list(info.type_mask, types, sizeof(types));
	metadata = mms_gguf_metadata_jsonb(g);
	config = t5_config_jsonb(&info.cfg);

	mms_catalog_enter(&s);

	/*
	 * Registrations are rare and slow; serializing them makes "next version"
	 * race-free and turns a duplicate into the clear error below instead of a
	 * unique-index violation. Readers are not blocked.
	 */
	mms_spi_exec("LOCK TABLE mms.model_versions IN SHARE ROW EXCLUSIVE MODE",
				 0, NULL, NULL, NULL, SPI_OK_UTILITY);
	{
		Oid			t[2] = {TEXTOID, INT4OID};
		Datum		v[2] = {CStringGetTextDatum(a->name), Int32GetDatum(version)};

		if (version == 0)
		{
			bool		isnull;

			mms_spi_exec("SELECT COALESCE(pg_catalog.max(m.version), 0)"
						 " OPERATOR(pg_catalog.+) 1 FROM mms.model_versions m"
						 " WHERE m.name OPERATOR(pg_catalog.=) $1",
						 1, t, v, NULL, SPI_OK_SELECT);
			version = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
												  SPI_tuptable->tupdesc, 1, &isnull));
		}
		else if (mms_spi_exec("SELECT 1 FROM mms.model_versions m"
							  " WHERE m.name OPERATOR(pg_catalog.=) $1"
							  " AND m.version OPERATOR(pg_catalog.=) $2",
							  2, t, v, NULL, SPI_OK_SELECT) > 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNIQUE_VIOLATION),
					 errmsg("model \"%s\" already has version %d", a->name, version),
					 errhint("Omit the version to register the next one, or unregister \"%s:%d\" first.",
							 a->name, version)));
	}

	/* created as the registry owner, so only it (and superusers) can read it */
	loid = mms_lo_create_from(buf, size);

	{
		Oid			t[15] = {TEXTOID, INT4OID, TEXTOID, TEXTOID, OIDOID, OIDOID, INT8OID,
		TEXTOID, TEXTOID, INT8OID, TEXTOID, TEXTOID, JSONBOID, JSONBOID, NAMEOID};
		Datum		v[15];
		char		n[15];

		memset(n, ' ', sizeof(n));
		v[0] = CStringGetTextDatum(a->name);
		v[1] = Int32GetDatum(version);
		v[2] = a->author ? CStringGetTextDatum(a->author) : (Datum) 0;
		n[2] = a->author ? ' ' : 'n';
		v[3] = a->description ? CStringGetTextDatum(a->description) : (Datum) 0;
		n[3] = a->description ? ' ' : 'n';
		v[4] = ObjectIdGetDatum(owner);
		v[5] = ObjectIdGetDatum(loid);
		v[6] = Int64GetDatum((int64) size);
		v[7] = CStringGetTextDatum(sha);
		v[8] = CStringGetTextDatum(info.arch);
		v[9] = Int64GetDatum((int64) info.n_params);
		v[10] = CStringGetTextDatum(types);
		v[11] = CStringGetTextDatum(info.tokenizer);
		v[12] = metadata;
		v[13] = config;
		v[14] = mms_role_name_datum(owner);
		mms_spi_exec("INSERT INTO mms.model_versions (name, version, author, description, owner,"
					 " weights, size_bytes, sha256, arch, n_params, tensor_types, tokenizer,"
					 " metadata, config, owner_name)"
					 " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
					 15, t, v, n, SPI_OK_INSERT);
	}
	audit_registration(&s, a, version, size, sha);
	mms_catalog_leave(&s);
	mms_registry_generation++;
	return version;
}

PG_FUNCTION_INFO_V1(mms_register);

/*
 * mms_register(name, weights oid, version, author, description) RETURNS int:
 * the caller's large object, read with the caller's rights.
 */
Datum
mms_register(PG_FUNCTION_ARGS)
{
	RegisterArgs a;
	char		sha[65];
	Size		size;
	char	   *buf;
	int32		version;

	read_args(fcinfo, &a, "large object");
	mms_require_admin("register models");
	buf = mms_lo_read_all(PG_GETARG_OID(1), &size, sha);
	version = register_buffer(&a, buf, size, sha);
	pfree(buf);
	PG_RETURN_INT32(version);
}

PG_FUNCTION_INFO_V1(mms_import);

/* mms_import(name, path, version, author, description) RETURNS int: a server file. */
Datum
mms_import(PG_FUNCTION_ARGS)
{
	RegisterArgs a;
	char		sha[65];
	Size		size;
	char	   *path;
	char	   *buf;
	int32		version;

	read_args(fcinfo, &a, "file path");
	mms_require_admin("register models");
	/* the same rule as pg_read_binary_file(), checked before the file is opened */
	if (!has_privs_of_role(GetUserId(), ROLE_PG_READ_SERVER_FILES))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to import a model from a server file"),
				 errhint("Only superusers and roles with privileges of \"pg_read_server_files\" may import server files; others can use \\lo_import and mms_register().")));
	path = text_to_cstring(PG_GETARG_TEXT_PP(1));
	canonicalize_path(path);
	a.path = path;
	buf = mms_file_read_all(path, &size, sha);
	version = register_buffer(&a, buf, size, sha);
	pfree(buf);
	PG_RETURN_INT32(version);
}
