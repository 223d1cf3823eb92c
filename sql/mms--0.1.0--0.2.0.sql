-- mms--0.1.0--0.2.0.sql — ALTER EXTENSION mms UPDATE from 0.1.0: the result
-- is what mms--0.2.0.sql installs (test/pg/t_upgrade.sh compares the two).
-- Rows, ids, large objects, aliases, grants, triggers and the pg_dump
-- registrations of the existing tables stay as they are.

\echo Use "ALTER EXTENSION mms UPDATE TO '0.2.0'" to load this file. \quit

-- ---- model_versions: T5 hyperparameters move into config ----------------------
-- The next architectures are not T5: their hyperparameters go into the same
-- jsonb under their own keys. The keys for t5 are the old column names, with
-- the same values that registration writes (src/pg/register.c).

-- the view reads the columns that go; it is created again below
DROP VIEW mms.models;

ALTER TABLE mms.model_versions
    ADD COLUMN config jsonb CHECK (pg_catalog.jsonb_typeof(config) OPERATOR(pg_catalog.=) 'object');
UPDATE mms.model_versions SET config = pg_catalog.jsonb_build_object(
    'd_model', d_model,
    'd_ff', d_ff,
    'n_enc_layers', n_enc_layers,
    'n_dec_layers', n_dec_layers,
    'n_heads', n_heads,
    'd_kv', d_kv,
    'vocab_size', vocab_size,
    'context_length', context_length,
    'ffn_kind', ffn_kind,
    'tied_embeddings', tied_embeddings);
ALTER TABLE mms.model_versions
    ALTER COLUMN config SET NOT NULL,
    DROP COLUMN d_model,
    DROP COLUMN d_ff,
    DROP COLUMN n_enc_layers,
    DROP COLUMN n_dec_layers,
    DROP COLUMN n_heads,
    DROP COLUMN d_kv,
    DROP COLUMN vocab_size,
    DROP COLUMN context_length,
    DROP COLUMN ffn_kind,
    DROP COLUMN tied_embeddings;

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
GRANT SELECT ON mms.models TO PUBLIC;

-- ---- pool settings -------------------------------------------------------------

CREATE TABLE mms.model_pool_settings (
    name            text PRIMARY KEY,
    min_workers     integer NOT NULL DEFAULT 0 CHECK (min_workers BETWEEN 0 AND 64),
    max_workers     integer NOT NULL DEFAULT 1 CHECK (max_workers BETWEEN 1 AND 64),
    pinned          boolean NOT NULL DEFAULT false,
    priority        integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000),
    CHECK (min_workers OPERATOR(pg_catalog.<=) max_workers)
);
REVOKE ALL ON mms.model_pool_settings FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('mms.model_pool_settings', '');

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
GRANT SELECT ON mms.model_config TO PUBLIC;

CREATE FUNCTION mms_configure(model text, min_workers integer DEFAULT NULL,
                              max_workers integer DEFAULT NULL, pinned boolean DEFAULT NULL,
                              priority integer DEFAULT NULL)
    RETURNS mms.model_config
    AS 'MODULE_PATHNAME', 'mms_configure'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mms_configure(text, integer, integer, boolean, integer) IS
    'sets a model''s worker pool and cache settings (NULL leaves one unchanged); returns them';

-- ---- batch functions -------------------------------------------------------------
-- The array form of mms_generate gets a name of its own: psycopg 3 sends a
-- Python list as an untyped literal, which resolved to the text form and
-- generated from the literal '{a,b}'.

DROP FUNCTION mms_generate(text, text[], jsonb);

CREATE FUNCTION mms_generate_batch(model text, inputs text[], options jsonb DEFAULT '{}')
    RETURNS text[]
    AS 'MODULE_PATHNAME', 'mms_generate_array'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mms_generate_batch(text, text[], jsonb) IS
    'generates for every input as one batch; results in input order, NULL for NULL';

CREATE FUNCTION mms_score_batch(model text, inputs text[], targets text[]) RETURNS float8[]
    AS 'MODULE_PATHNAME', 'mms_score_array'
    LANGUAGE C STRICT STABLE PARALLEL UNSAFE;
COMMENT ON FUNCTION mms_score_batch(text, text[], text[]) IS
    'scores every (input, target) pair as one batch; results in input order, NULL for NULL';

-- ---- serving state: served models keyed by content, pools, events ----------
DROP VIEW mms.cache, mms.workers, mms.stat_models;
DROP FUNCTION mms.cache_rows(), mms.worker_rows(), mms.stat_model_rows();
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
