/*
 * mms.h — declarations shared by the extension's files (src/pg): GUCs, the
 * registry's C API (reference resolution, privilege checks, catalog access as
 * the registry owner), large-object and file I/O, and engine-error mapping.
 * The engine (src/engine) never sees this header.
 */
#ifndef MMS_PG_H
#define MMS_PG_H

#include "postgres.h"

#include "fmgr.h"

#include "gguf.h"
#include "mms_error.h"

/* ---- mms.c: GUCs ---- */

extern int	mms_max_model_size_kb;	/* mms.max_model_size */
extern int	mms_tokenizer_cache_size;	/* mms.tokenizer_cache_size */

/* ---- errors.c: engine status -> SQLSTATE ---- */

extern int	mms_engine_sqlstate(MmsStatus st);

/*
 * Parses buf[0..size) with the engine; the MmsGguf is freed when the current
 * memory context is reset or deleted (so an ERROR cannot leak it). Returns
 * NULL and fills *err on a parse error.
 */
extern MmsGguf *mms_gguf_parse_pg(const char *buf, Size size, MmsError *err);
/* The same over the first avail bytes of a file_size-byte file (err->code MMS_ERR_LIMIT: read more). */
extern MmsGguf *mms_gguf_parse_prefix_pg(const char *buf, Size avail, uint64 file_size, MmsError *err);

/* ---- catalog.c: the registry owner, catalog sessions, names ---- */

/* Entered catalog session: SPI connected, running as the registry owner. */
typedef struct MmsCatalogSession
{
	Oid			caller;			/* GetUserId() on entry: whose rights to check */
	Oid			save_userid;
	int			save_sec_context;
	int			guc_nest_level;
	MemoryContext caller_cxt;	/* where results must be copied to */
} MmsCatalogSession;

extern Oid	mms_registry_owner(void);
/* Does this database's registry have the catalog this library version uses? */
extern bool mms_catalog_is_current(void);
/* ERROR (with a hint to ALTER EXTENSION mms UPDATE) when it does not. */
extern void mms_require_current_catalog(void);
extern void mms_catalog_enter(MmsCatalogSession *s);
extern void mms_catalog_leave(MmsCatalogSession *s);

/* Runs a parameterized statement (SPI must be connected); returns SPI_processed. */
extern uint64 mms_spi_exec(const char *sql, int nargs, Oid *argtypes, Datum *values,
						   const char *nulls, int expect);

/* A role's current name as a name Datum (palloc'd); ERROR if it does not exist. */
extern Datum mms_role_name_datum(Oid roleid);

/* A role argument: 'public' is InvalidOid, else an existing role (ERROR if none). */
extern Oid	mms_role_or_public(const char *role);
extern bool mms_is_admin(Oid roleid);
extern void mms_require_admin(const char *action);
extern void mms_check_name(const char *name, const char *what);
extern int32 mms_parse_version(const char *text);

/*
 * Registry generation of this backend: bumped by every registry write made
 * here, so per-query caches notice changes made earlier in the same statement.
 */
extern uint64 mms_registry_generation;

/* ---- audit.c: mms.audit_log ---- */

/* One key of an audit row's detail object: a value of SQL type type, or JSON null. */
typedef struct MmsAuditField
{
	const char *key;
	Oid			type;			/* INT4OID, INT8OID, TEXTOID, BOOLOID, ... */
	Datum		value;
	bool		isnull;
} MmsAuditField;

/*
 * In an entered catalog session: logs that s->caller did action (a lowercase
 * verb) to model (NULL: none), detail = {key: value, ...} of fields[0..n).
 */
extern void mms_audit(const MmsCatalogSession *s, const char *action, const char *model,
					  const MmsAuditField *fields, int n_fields);

/* ---- manage.c ---- */

/* Catalog session entered: unregisters version id (false if already gone). */
extern bool mms_unregister_spi(int64 id, const char *name, Oid weights);

/* ---- utility.c: DDL that concerns the registry ---- */
extern void mms_utility_install_hook(void);

/* ---- resolve.c: model references and use rights ---- */

/*
 * A model's worker pool and cache settings (mms_configure, mms.model_config),
 * shared by all its versions. Defaults when no row exists: min 0, max 1,
 * not pinned, priority 0.
 */
typedef struct MmsPoolConfig
{
	int32		min_workers;	/* 0 = scale to zero */
	int32		max_workers;
	bool		pinned;			/* loaded at start, never evicted */
	int32		priority;		/* higher keeps the cache under pressure */
} MmsPoolConfig;

/* New settings of model name (this database) reach its served models at commit (at_commit.c). */
extern void mms_pool_config_at_commit(const char *name, const MmsPoolConfig *pool);

/* One registered model version, as the inference layer needs it. */
typedef struct MmsModel
{
	int64		id;				/* mms.model_versions.id, never reused */
	char		name[NAMEDATALEN];
	int32		version;
	Oid			owner;
	Oid			weights;		/* large object holding the GGUF file */
	int64		size_bytes;
	char		sha256[65];		/* hex */
	char		arch[16];		/* general.architecture: t5 or t5encoder */
	MmsPoolConfig pool;			/* from mms.model_config, or the defaults */
} MmsModel;

/*
 * Resolves 'name', 'name:version' or 'name@alias' (ERROR if nothing matches).
 * With for_use, also checks that the calling role may use the model.
 */
extern void mms_resolve_model(const char *ref, bool for_use, MmsModel *out);
/*
 * Every pinned model of the current database, the version its plain name
 * resolves to, pool filled; palloc'd array in *out (NULL when none). Needs a
 * transaction; returns 0 where the registry is missing or predates pinning.
 */
extern int	mms_pinned_models(MmsModel **out);
extern bool mms_model_exists(const char *name);
extern bool mms_role_may_use(Oid roleid, const MmsModel *m);

/* ---- lo_io.c: reading and writing model bytes ---- */

extern void mms_check_model_size(int64 size_bytes);
/* Reads a large object with the current user's rights; sha256 hex into sha_out. */
extern char *mms_lo_read_all(Oid loid, Size *size, char *sha_out);
/* Reads a server file (caller checked the privileges); sha256 hex into sha_out. */
extern char *mms_file_read_all(const char *path, Size *size, char *sha_out);
/* Creates a large object owned by the current user holding buf; returns its oid. */
extern Oid	mms_lo_create_from(const char *buf, Size size);
extern void mms_lo_unlink(Oid loid);
/* The stored weights of a model, read as the registry owner straight into dst
 * (m->size_bytes bytes), sha256-checked. */
extern void mms_read_weights_into(const MmsModel *m, char *dst);
/* The first want bytes (fewer if the file is shorter) of a model's weights, unchecked. */
extern char *mms_read_weights_prefix(const MmsModel *m, Size want, Size *got);

/* ---- metadata.c ---- */

/* GGUF key/values as jsonb, with the large tokenizer arrays summarized. */
extern Datum mms_gguf_metadata_jsonb(const MmsGguf *g);

#endif
