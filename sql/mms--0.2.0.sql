-- mms--0.2.0.sql — installs the model registry: catalog tables and views in
-- schema mms, the role mms_admin, and the mms_* functions in the extension's
-- schema. The C side lives in src/pg (see README.md and docs/engine.md).
-- mms--0.1.0--0.2.0.sql brings a 0.1.0 registry to the same state. CREATE
-- EXTENSION mms runs this script and then the updates to the current version
-- (mms--0.2.0--0.3.0.sql ...).

\echo Use "CREATE EXTENSION mms" to load this file. \quit

-- Cluster-wide, so it outlives DROP EXTENSION and may already exist (another
-- database, or a restore): members register, import, alias, grant and unregister.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'mms_admin') THEN
        CREATE ROLE mms_admin NOLOGIN;
    END IF;
END
$$;
COMMENT ON ROLE mms_admin IS 'may register, import, alias, grant and unregister mms models';

-- Inference needs the library preloaded; the registry works without it.
DO $$
BEGIN
    IF NOT pg_catalog.string_to_array(pg_catalog.replace(
               pg_catalog.current_setting('shared_preload_libraries'), ' ', ''), ',')
           OPERATOR(pg_catalog.@>) ARRAY['mms'] THEN
        RAISE WARNING 'mms is not in shared_preload_libraries: models can be registered, but inference will fail'
            USING HINT = 'Add mms to shared_preload_libraries in postgresql.conf and restart the server.';
    END IF;
END
$$;

CREATE SCHEMA mms;
COMMENT ON SCHEMA mms IS 'mms model registry: catalog tables (owner only) and views (everyone)';

-- The system identifier of this cluster: role oids are only meaningful in the
-- cluster that recorded them (see restore_roles below).
CREATE FUNCTION mms.cluster_id() RETURNS bigint
    AS 'MODULE_PATHNAME', 'mms_cluster_id'
    LANGUAGE C STRICT STABLE PARALLEL SAFE;

CREATE SEQUENCE mms.model_id_seq;

-- One row per registered model version. The registry owns the large object
-- in `weights`: a copy of the file made at registration.
CREATE TABLE mms.model_versions (
    id              bigint PRIMARY KEY DEFAULT pg_catalog.nextval('mms.model_id_seq'),
    name            text NOT NULL,
    version         integer NOT NULL CHECK (version > 0),
    author          text,
    description     text,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    owner           oid NOT NULL,               -- the role that registered it (pg_authid.oid)
    owner_name      name NOT NULL,              -- its name, what a dump carries (see restore_roles)
    roles_cluster   bigint NOT NULL DEFAULT mms.cluster_id(),  -- the cluster whose role oids these are
    weights         oid NOT NULL UNIQUE,        -- large object with the GGUF file
    size_bytes      bigint NOT NULL,
    sha256          text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    arch            text NOT NULL,              -- general.architecture: t5 or t5encoder
    n_params        bigint NOT NULL,
    tensor_types    text NOT NULL,              -- e.g. 'f32,q8_0'
    tokenizer       text NOT NULL,              -- tokenizer.ggml.model
    metadata        jsonb NOT NULL,             -- GGUF key/values, vocabulary arrays summarized
    -- The architecture's hyperparameters, keys per arch (t5: d_model, d_ff,
    -- n_enc_layers, ...; see README.md). Last, where the upgrade from 0.1.0
    -- adds it, so that both kinds of install have the same columns.
    config          jsonb NOT NULL CHECK (pg_catalog.jsonb_typeof(config) OPERATOR(pg_catalog.=) 'object'),
    UNIQUE (name, version)
);
ALTER SEQUENCE mms.model_id_seq OWNED BY mms.model_versions.id;

CREATE TABLE mms.model_aliases (
    name            text NOT NULL,
    alias           text NOT NULL,
    version         integer NOT NULL,
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, version) REFERENCES mms.model_versions (name, version) ON DELETE CASCADE
);

-- Who may use a model: grants name a model (all its versions). grantee 0
-- (grantee_name NULL) stands for PUBLIC.
CREATE TABLE mms.model_grants (
    name            text NOT NULL,
    grantee         oid NOT NULL,
    grantee_name    name,
    grantor         oid NOT NULL,
    grantor_name    name NOT NULL,
    roles_cluster   bigint NOT NULL DEFAULT mms.cluster_id(),
    granted_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (name, grantee)
);

-- Roles are bound by oid, as PostgreSQL binds them: a rename keeps the
-- binding, DROP ROLE is refused while a model or grant names the role (the
-- extension's utility hook, src/pg/utility.c). A dump carries the oid, the
-- name and the cluster the oid belongs to, and every inserted row is bound
-- again here: in the same cluster by oid (a role dropped since, even if a new
-- one took its name, binds nobody), in another cluster by name (oids mean
-- nothing there). A role missing here does not fail the restore: a model is
-- restored owned by the registry owner, a grant to the missing role is
-- skipped, and a WARNING says which.
CREATE FUNCTION mms.bind_role(role oid, role_name name, same_cluster boolean) RETURNS oid
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT a.oid FROM pg_catalog.pg_roles a
    WHERE CASE WHEN same_cluster THEN a.oid OPERATOR(pg_catalog.=) role
               ELSE a.rolname OPERATOR(pg_catalog.=) role_name END
$$;
REVOKE ALL ON FUNCTION mms.bind_role(oid, name, boolean) FROM PUBLIC;

CREATE FUNCTION mms.restore_roles() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    registry_owner oid := (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = TG_RELID);
    here bigint := mms.cluster_id();
    same boolean := NEW.roles_cluster IS NOT DISTINCT FROM here;
    r oid;
BEGIN
    NEW.roles_cluster := here;
    -- (an incomplete row is left for the NOT NULL constraints to refuse)
    IF TG_TABLE_NAME = 'model_versions' THEN
        IF NEW.owner_name IS NULL THEN
            RETURN NEW;
        END IF;
        r := mms.bind_role(NEW.owner, NEW.owner_name, same);
        IF r IS NULL THEN
            RAISE WARNING 'owner "%" of model "%:%" does not exist; model restored owned by "%"',
                NEW.owner_name, NEW.name, NEW.version, registry_owner::regrole;
            r := registry_owner;
        END IF;
        NEW.owner := r;
        NEW.owner_name := (SELECT a.rolname FROM pg_catalog.pg_roles a WHERE a.oid = r);
        RETURN NEW;
    END IF;
    IF NEW.grantor_name IS NULL THEN
        RETURN NEW;
    END IF;
    IF NEW.grantee_name IS NULL THEN
        NEW.grantee := 0;
    ELSE
        r := mms.bind_role(NEW.grantee, NEW.grantee_name, same);
        IF r IS NULL THEN
            RAISE WARNING 'grant of model "%" to role "%" not restored: the role does not exist',
                NEW.name, NEW.grantee_name;
            RETURN NULL;
        END IF;
        NEW.grantee := r;
        NEW.grantee_name := (SELECT a.rolname FROM pg_catalog.pg_roles a WHERE a.oid = r);
    END IF;
    r := coalesce(mms.bind_role(NEW.grantor, NEW.grantor_name, same), registry_owner);
    NEW.grantor := r;
    NEW.grantor_name := (SELECT a.rolname FROM pg_catalog.pg_roles a WHERE a.oid = r);
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION mms.restore_roles() FROM PUBLIC;
CREATE TRIGGER restore_roles BEFORE INSERT ON mms.model_versions
    FOR EACH ROW EXECUTE FUNCTION mms.restore_roles();
CREATE TRIGGER restore_roles BEFORE INSERT ON mms.model_grants
    FOR EACH ROW EXECUTE FUNCTION mms.restore_roles();

-- A model's worker pool and cache settings, shared by all its versions
-- (mms_configure). No row means the defaults; the row goes when the last
-- version of the name is unregistered. The limits match src/pg/configure.c,
-- which checks them first to give a clearer error.
CREATE TABLE mms.model_pool_settings (
    name            text PRIMARY KEY,
    min_workers     integer NOT NULL DEFAULT 0 CHECK (min_workers BETWEEN 0 AND 64),
    max_workers     integer NOT NULL DEFAULT 1 CHECK (max_workers BETWEEN 1 AND 64),
    pinned          boolean NOT NULL DEFAULT false,
    priority        integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000),
    CHECK (min_workers OPERATOR(pg_catalog.<=) max_workers)
);

-- pg_dump carries the rows (the large objects travel as blobs, same oids).
SELECT pg_catalog.pg_extension_config_dump('mms.model_versions', '');
SELECT pg_catalog.pg_extension_config_dump('mms.model_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('mms.model_aliases', '');
SELECT pg_catalog.pg_extension_config_dump('mms.model_grants', '');
SELECT pg_catalog.pg_extension_config_dump('mms.model_pool_settings', '');

CREATE VIEW mms.models AS
SELECT m.id,
       m.name,
       m.version,
       ARRAY(SELECT a.alias FROM mms.model_aliases a
             WHERE a.name = m.name AND a.version = m.version
             ORDER BY a.alias) AS aliases,
       m.author,
       m.description,
       m.created_at,
       m.owner::regrole AS owner,
       m.arch,
       m.n_params,
       m.tensor_types,
       m.config,
       m.tokenizer,
       pg_catalog.pg_size_pretty(m.size_bytes) AS size,
       m.size_bytes,
       m.sha256,
       m.weights,
       m.metadata
FROM mms.model_versions m;
COMMENT ON VIEW mms.models IS 'registered models, one row per version';

CREATE VIEW mms.grants AS
SELECT g.name AS model,
       CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0::oid THEN 'public'
            ELSE g.grantee::regrole::text END AS grantee,
       g.grantor::regrole AS grantor,
       g.granted_at
FROM mms.model_grants g;
COMMENT ON VIEW mms.grants IS 'who may use which model (besides owners and mms_admin)';

-- Every registered model with the settings in force: its row, else the defaults.
CREATE VIEW mms.model_config AS
SELECT n.name AS model,
       coalesce(s.min_workers, 0) AS min_workers,
       coalesce(s.max_workers, 1) AS max_workers,
       coalesce(s.pinned, false) AS pinned,
       coalesce(s.priority, 0) AS priority
FROM (SELECT DISTINCT m.name FROM mms.model_versions m) n
LEFT JOIN mms.model_pool_settings s ON s.name OPERATOR(pg_catalog.=) n.name;
COMMENT ON VIEW mms.model_config IS
    'worker pool and cache settings of every registered model (mms_configure)';

-- Ordinary roles read the views; only the registry owner writes the tables,
-- through the functions below, which check the caller's rights first.
REVOKE ALL ON ALL TABLES IN SCHEMA mms FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA mms FROM PUBLIC;
GRANT USAGE ON SCHEMA mms TO PUBLIC;
GRANT SELECT ON mms.models, mms.grants, mms.model_config TO PUBLIC;

-- ---- functions ------------------------------------------------------------
-- Written in C: each checks the caller (superuser or mms_admin for writes,
-- use rights for tokenization) and then touches the catalog as the registry
-- owner with a pinned search_path (src/pg/catalog.c).

CREATE FUNCTION mms.resolve(ref text) RETURNS bigint
    AS 'MODULE_PATHNAME', 'mms_resolve'
    LANGUAGE C STRICT STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION mms.resolve(text) IS
    'id (mms.models.id) of the version a reference names: name, name:version or name@alias';

CREATE FUNCTION mms_register(name text, weights oid, version text DEFAULT NULL,
                             author text DEFAULT NULL, description text DEFAULT NULL)
    RETURNS integer
    AS 'MODULE_PATHNAME', 'mms_register'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mms_register(text, oid, text, text, text) IS
    'registers a copy of the GGUF file in a large object as a new model version; returns the version';

CREATE FUNCTION mms_import(name text, path text, version text DEFAULT NULL,
                           author text DEFAULT NULL, description text DEFAULT NULL)
    RETURNS integer
    AS 'MODULE_PATHNAME', 'mms_import'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mms_import(text, text, text, text, text) IS
    'registers a GGUF file read from the server''s file system; returns the version';

CREATE FUNCTION mms_unregister(model text) RETURNS integer
    AS 'MODULE_PATHNAME', 'mms_unregister'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mms_unregister(text) IS
    'removes the version a reference names, its aliases and its stored weights; returns the version';

CREATE FUNCTION mms_set_alias(name text, alias text, version integer) RETURNS void
    AS 'MODULE_PATHNAME', 'mms_set_alias'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION mms_drop_alias(name text, alias text) RETURNS void
    AS 'MODULE_PATHNAME', 'mms_drop_alias'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION mms_grant(model text, role text) RETURNS void
    AS 'MODULE_PATHNAME', 'mms_grant'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mms_grant(text, text) IS
    'lets a role (or ''public'') use every version of a model';

CREATE FUNCTION mms_revoke(model text, role text) RETURNS void
    AS 'MODULE_PATHNAME', 'mms_revoke'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION mms_configure(model text, min_workers integer DEFAULT NULL,
                              max_workers integer DEFAULT NULL, pinned boolean DEFAULT NULL,
                              priority integer DEFAULT NULL)
    RETURNS mms.model_config
    AS 'MODULE_PATHNAME', 'mms_configure'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mms_configure(text, integer, integer, boolean, integer) IS
    'sets a model''s worker pool and cache settings (NULL leaves one unchanged); returns them';

CREATE FUNCTION mms_tokenize(model text, input text) RETURNS integer[]
    AS 'MODULE_PATHNAME', 'mms_tokenize'
    LANGUAGE C STRICT STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION mms_tokenize(text, text) IS
    'token ids of input under the model''s tokenizer, ending with eos';

CREATE FUNCTION mms_detokenize(model text, ids integer[]) RETURNS text
    AS 'MODULE_PATHNAME', 'mms_detokenize'
    LANGUAGE C STRICT STABLE PARALLEL RESTRICTED;

-- ---- inference -------------------------------------------------------------
-- Needs shared_preload_libraries = 'mms' (else an ERROR says so). The calling
-- backend resolves the model and checks the grant as the caller, then an
-- inference worker (mms_worker.so) runs it; see src/pg/dispatch.c.
-- VOLATILE: sampling draws; PARALLEL UNSAFE: requests go through this
-- backend's shared-memory slots and latch.

CREATE FUNCTION mms_generate(model text, input text, options jsonb DEFAULT '{}')
    RETURNS text
    AS 'MODULE_PATHNAME', 'mms_generate'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mms_generate(text, text, jsonb) IS
    'text the model generates for input (HF generate() options in jsonb)';

-- A name of its own, not an overload of mms_generate: drivers that send a
-- list as an untyped literal (psycopg 3) would have it resolve to the text
-- form and generate from the literal '{a,b}'.
CREATE FUNCTION mms_generate_batch(model text, inputs text[], options jsonb DEFAULT '{}')
    RETURNS text[]
    AS 'MODULE_PATHNAME', 'mms_generate_array'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mms_generate_batch(text, text[], jsonb) IS
    'generates for every input as one batch; results in input order, NULL for NULL';

-- Deterministic for a given model version: STABLE.
CREATE FUNCTION mms_score(model text, input text, target text) RETURNS float8
    AS 'MODULE_PATHNAME', 'mms_score'
    LANGUAGE C STRICT STABLE PARALLEL UNSAFE;
COMMENT ON FUNCTION mms_score(text, text, text) IS
    'log-probability of target (and its eos) given input, by teacher forcing';

CREATE FUNCTION mms_score_batch(model text, inputs text[], targets text[]) RETURNS float8[]
    AS 'MODULE_PATHNAME', 'mms_score_array'
    LANGUAGE C STRICT STABLE PARALLEL UNSAFE;
COMMENT ON FUNCTION mms_score_batch(text, text[], text[]) IS
    'scores every (input, target) pair as one batch; results in input order, NULL for NULL';

CREATE FUNCTION mms_load(model text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'mms_load'
    LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mms_load(text) IS
    'starts the model''s inference worker and loads its weights into the shared cache';

CREATE FUNCTION mms_unload(model text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'mms_unload'
    LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mms_unload(text) IS
    'stops the model''s idle workers and drops its cached weights; false if busy or not cached';

CREATE FUNCTION mms_stat_reset() RETURNS void
    AS 'MODULE_PATHNAME', 'mms_stat_reset'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mms_stat_reset() IS 'zeroes mms.stat_models (superusers and mms_admin)';

-- Serving state: served models are keyed by the sha256 of their weights and
-- shared by every database and name that registered the same bytes.
CREATE FUNCTION mms.cache_rows(OUT sha256 text, OUT models text[], OUT bytes bigint,
                               OUT state text, OUT workers integer, OUT pinned boolean,
                               OUT priority integer, OUT last_used timestamptz,
                               OUT loaded_at timestamptz, OUT load_ms float8)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'mms_cache'
    LANGUAGE C VOLATILE PARALLEL RESTRICTED;

CREATE FUNCTION mms.pool_rows(OUT sha256 text, OUT model text, OUT min_workers integer,
                              OUT max_workers integer, OUT pinned boolean, OUT priority integer,
                              OUT workers integer, OUT queued integer, OUT running integer,
                              OUT oldest_wait_ms float8, OUT decode_steps bigint,
                              OUT decode_rows bigint, OUT max_batch integer, OUT loads bigint)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'mms_pools'
    LANGUAGE C VOLATILE PARALLEL RESTRICTED;

CREATE FUNCTION mms.worker_rows(OUT pid integer, OUT sha256 text, OUT model text,
                                OUT state text, OUT batch_size integer, OUT running integer,
                                OUT requests_served bigint, OUT started_at timestamptz,
                                OUT last_active timestamptz)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'mms_workers'
    LANGUAGE C VOLATILE PARALLEL RESTRICTED;

CREATE FUNCTION mms.event_rows(OUT at timestamptz, OUT kind text, OUT model text,
                               OUT sha256 text, OUT detail text)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'mms_events'
    LANGUAGE C VOLATILE PARALLEL RESTRICTED;

CREATE FUNCTION mms.stat_model_rows(OUT database text, OUT role text, OUT model text,
                                    OUT calls bigint, OUT input_tokens bigint,
                                    OUT output_tokens bigint, OUT total_ms float8,
                                    OUT mean_ms float8, OUT queue_ms float8, OUT errors bigint,
                                    OUT cancels bigint, OUT cache_loads bigint,
                                    OUT decode_steps bigint, OUT decode_rows bigint,
                                    OUT mean_batch float8, OUT max_batch integer,
                                    OUT stats_reset timestamptz)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'mms_stat_models'
    LANGUAGE C VOLATILE PARALLEL RESTRICTED;

CREATE FUNCTION mms.stat_info_row(OUT entries integer, OUT dealloc bigint,
                                  OUT stats_reset timestamptz)
    RETURNS record
    AS 'MODULE_PATHNAME', 'mms_stat_info'
    LANGUAGE C VOLATILE PARALLEL RESTRICTED;

CREATE VIEW mms.cache AS SELECT * FROM mms.cache_rows();
COMMENT ON VIEW mms.cache IS 'model weights in the shared cache, one row per distinct file';
CREATE VIEW mms.pools AS SELECT * FROM mms.pool_rows();
COMMENT ON VIEW mms.pools IS 'worker pool of each served model: settings, workers, queue, decoder batching';
CREATE VIEW mms.workers AS SELECT * FROM mms.worker_rows();
COMMENT ON VIEW mms.workers IS 'inference workers';
CREATE VIEW mms.events AS SELECT * FROM mms.event_rows();
COMMENT ON VIEW mms.events IS 'recent serving decisions: loads, evictions, scaling, worker exits';
CREATE VIEW mms.stat_models AS SELECT * FROM mms.stat_model_rows();
COMMENT ON VIEW mms.stat_models IS
    'calls, tokens, time, errors and cancels per database, role and model version since mms_stat_reset(), with the model''s decoder batching';
CREATE VIEW mms.stat_info AS SELECT * FROM mms.stat_info_row();
COMMENT ON VIEW mms.stat_info IS
    'entries of mms.stat_models, how many were evicted to make room (mms.max_stats), last reset';
GRANT SELECT ON mms.cache, mms.pools, mms.workers, mms.events, mms.stat_models, mms.stat_info TO PUBLIC;
