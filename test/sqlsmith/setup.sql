-- test/sqlsmith/setup.sql — the database SQLsmith fuzzes (run by lib.sh as a
-- superuser, with psql variables files (a directory of GGUF fixtures the
-- server can read) and role (the ordinary role SQLsmith connects as)).
--
-- SQLsmith writes no string literals (text arguments are NULL casts, columns or
-- other functions' results), so the tables below hold the values worth passing
-- to mms_*: model references good and bad, inputs, options, token ids, arrays.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;

CREATE EXTENSION mms;

-- The hostile user: may log in and use the models granted to it, nothing more.
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', :'role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
-- Bounded resources: every statement ends within 2 s (SQLsmith sets 1 s itself),
-- generations stay short (mms.max_new_tokens is superuser-only, hence set here),
-- temporary files stay small. track_functions counts the mms_* calls that ran;
-- verbose errors carry the SQLSTATE and the C source location (LOCATION:).
SELECT format('ALTER ROLE %I SET %s', :'role', s)
FROM unnest(ARRAY['statement_timeout = ''2s''',
                  'lock_timeout = ''1s''',
                  'idle_in_transaction_session_timeout = ''10s''',
                  'mms.max_new_tokens = 8',
                  'temp_file_limit = ''64MB''',
                  'work_mem = ''4MB''',
                  'track_functions = ''all''',
                  'log_error_verbosity = ''verbose''',
                  'log_min_error_statement = ''error''']) s \gexec

-- ---- models ------------------------------------------------------------------
-- flan: two versions (f32 and q8_0) and aliases; relu: ReLU FFN, tied
-- embeddings; enc: an encoder-only model (generation must refuse it);
-- secret: granted to nobody (every use must be refused to the role).
SELECT mms_import('flan', :'files' || '/flan_gated.gguf', NULL, 'sqlsmith', 'flan f32');
SELECT mms_import('flan', :'files' || '/flan_gated_q8_0.gguf', NULL, 'sqlsmith', 'flan q8_0');
SELECT mms_import('relu', :'files' || '/t5_relu_tied.gguf');
SELECT mms_import('enc', :'files' || '/t5encoder.gguf');
SELECT mms_import('secret', :'files' || '/flan_gated_q4_0.gguf');
SELECT mms_set_alias('flan', 'prod', 1);
SELECT mms_set_alias('flan', 'default', 2);
SELECT mms_grant('flan', 'public');
SELECT mms_grant('relu', :'role');
SELECT mms_grant('enc', 'public');
SELECT mms_grant('enc', :'role');

-- ---- material ------------------------------------------------------------------
CREATE TABLE refs (ref text, note text);
INSERT INTO refs VALUES
    ('flan', 'name'), ('flan:1', 'version'), ('flan:2', 'version'), ('flan@prod', 'alias'),
    ('flan@default', 'alias'), ('relu', 'name'), ('enc', 'encoder-only'), ('secret', 'not granted'),
    ('secret:1', 'not granted'), ('nosuch', 'unknown'), ('', 'empty'), ('flan:0', 'bad version'),
    ('flan:3', 'no such version'), ('flan:99999999999999999999', 'overflow'), ('flan:-1', 'negative'),
    ('flan:1:1', 'two colons'), ('flan@', 'empty alias'), ('@prod', 'empty name'), ('flan@nosuch', 'no alias'),
    (':', 'colon'), ('FLAN', 'case'), (' flan', 'space'), ('flan ', 'space'), ('public', 'role name'),
    (:'role', 'role name'), (repeat('x', 300), 'long'), (NULL, 'null');

CREATE TABLE texts (input text, target text);
INSERT INTO texts VALUES
    ('translate English to German: The house is wonderful.', 'Das Haus ist wunderbar.'),
    ('hello world', 'hello'), ('', ''), (' ', ' '), ('a', 'a'),
    ('Ünïcödé façade — naïve café', 'café'), ('日本語のテキスト', 'テキスト'),
    ('emoji 😀🎉 and ﬁ ligature ①', '😀'), (E'tab\there\nnewline\r\n', E'\n'),
    (E'zero\u200Bwidth \u0301combining', 'x'), ('<pad></s><unk>', '</s>'),
    ('▁▁▁ sentencepiece ▁ marks', '▁'), (repeat('long input ', 200), repeat('y', 20)),
    (repeat('z', 5000), repeat('out ', 100)), (NULL, 'target'), ('input', NULL);

CREATE TABLE opts (options jsonb, note text);
INSERT INTO opts VALUES
    ('{}', 'defaults'), ('{"max_new_tokens": 4}', NULL), ('{"max_new_tokens": 8, "min_new_tokens": 8}', NULL),
    ('{"num_beams": 4, "max_new_tokens": 4}', NULL), ('{"num_beams": 64, "max_new_tokens": 8}', NULL),
    ('{"do_sample": true, "seed": 7, "max_new_tokens": 4}', NULL),
    ('{"temperature": 0.7, "top_k": 5, "top_p": 0.9, "seed": 1}', NULL),
    ('{"temperature": 0}', NULL), ('{"repetition_penalty": 1.3, "max_new_tokens": 6}', NULL),
    ('{"length_penalty": -2, "num_beams": 3, "early_stopping": "never"}', NULL),
    ('{"early_stopping": true, "num_beams": 2}', NULL),
    ('{"max_new_tokens": 0}', 'bad'), ('{"max_new_tokens": 100000}', 'bad'), ('{"max_new_tokens": -1}', 'bad'),
    ('{"max_new_tokens": 1e300}', 'bad'), ('{"max_new_tokens": 4.5}', 'bad'), ('{"max_new_tokens": "4"}', 'bad'),
    ('{"min_new_tokens": 9, "max_new_tokens": 8}', 'bad'), ('{"num_beams": 65}', 'bad'), ('{"num_beams": 0}', 'bad'),
    ('{"top_p": 0}', 'bad'), ('{"top_k": -1}', 'bad'), ('{"temperature": -1}', 'bad'), ('{"temperature": 1e308}', NULL),
    ('{"seed": -1}', 'bad'), ('{"seed": 18446744073709551616}', 'bad'), ('{"do_sample": true, "num_beams": 2}', 'bad'),
    ('{"do_sample": "yes"}', 'bad'), ('{"unknown": 1}', 'bad'), ('{"max_new_tokens": null}', 'bad'),
    ('{"max_new_tokens": [4]}', 'bad'), ('{"max_new_tokens": {"a": 1}}', 'bad'),
    ('{"max_new_tokens": 4, "max_new_tokens": 5}', 'duplicate key'), ('[]', 'array'), ('"text"', 'scalar'),
    ('null', 'json null'), ('42', 'number'), (NULL, 'sql null');

CREATE TABLE ids (ids integer[], note text);
INSERT INTO ids VALUES
    ('{0}', NULL), ('{1}', 'eos'), ('{2}', 'unk'), ('{100,200,300,1}', NULL), ('{}', 'empty'),
    ('{-1}', 'negative'), ('{2147483647}', 'huge'), ('{-2147483648}', 'min'), ('{31999,32000,32099,32100}', 'vocab edge'),
    ('{NULL}', 'null element'), ('{5,NULL,6}', 'null element'), ('{{1,2},{3,4}}', 'two dimensions'),
    ('[5:7]={10,11,12}', 'lower bound 5'), (array_fill(7, ARRAY[3000]), 'long'), (NULL, 'sql null');

CREATE TABLE batches (inputs text[], note text);
INSERT INTO batches VALUES
    ('{"hello","world"}', NULL), ('{}', 'empty'), ('{NULL}', 'null element'), ('{"a",NULL,"b"}', 'null element'),
    ('{{"a","b"},{"c","d"}}', 'two dimensions'), ('[3:4]={"x","y"}', 'lower bound 3'),
    (array_fill('word'::text, ARRAY[300]), 'many'), (ARRAY[repeat('z', 5000)], 'too long'), (NULL, 'sql null');

CREATE TABLE blobs (lo oid, note text);
INSERT INTO blobs SELECT weights, 'model weights ' || name || ':' || version FROM mms.model_versions;
INSERT INTO blobs VALUES (0, 'invalid'), (1, 'no such object'), (4294967295, 'max');

-- Random queries rarely call a function on a row (most of their WHERE clauses
-- compare NULLs), so these views call mms_* on every row they yield: on
-- well-formed calls (generations) and on a mix of good and bad ones (probes).
CREATE TABLE cases (ref text, input text, target text, options jsonb, good boolean);
INSERT INTO cases
SELECT r, i, t, o, r IN ('flan', 'flan:1', 'flan@prod', 'relu') AND o IS NOT NULL AND NOT o ? 'num_beams'
FROM unnest(ARRAY['flan', 'flan:1', 'flan@prod', 'relu', 'enc', 'secret', 'nosuch']) r,
     unnest(ARRAY['translate English to German: hello', '', 'Ünïcödé 😀', repeat('long input ', 200)]) i,
     unnest(ARRAY['hallo', '']) t,
     unnest(ARRAY['{}', '{"max_new_tokens": 4}', '{"num_beams": 3, "max_new_tokens": 4}',
                  '{"do_sample": true, "seed": 3, "max_new_tokens": 4}', '{"max_new_tokens": 100}', NULL]::jsonb[]) o
ORDER BY md5(r || i || t || coalesce(o::text, ''));
UPDATE cases SET good = false WHERE options @> '{"max_new_tokens": 100}';
CREATE VIEW generations AS
SELECT ref, input, target, options, mms_generate(ref, input, options) AS output,
       mms_score(ref, input, target) AS score, mms_tokenize(ref, input) AS ids
FROM cases WHERE good;
CREATE VIEW probes AS
SELECT ref, input, target, options, mms_generate(ref, input, options) AS output,
       mms_generate_batch(ref, ARRAY[input, target], options) AS outputs,
       mms_score(ref, input, target) AS score, mms_detokenize(ref, mms_tokenize(ref, input)) AS roundtrip
FROM cases;

-- SQLsmith samples its tables (TABLESAMPLE SYSTEM picks whole pages): tables of
-- one page would give no row most of the time, so every row appears many times.
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['refs', 'texts', 'opts', 'ids', 'batches', 'blobs'] LOOP
        EXECUTE format('INSERT INTO %I SELECT t.* FROM %I t, generate_series(1, 40)', t, t);
    END LOOP;
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON refs, texts, opts, ids, batches, blobs, cases TO PUBLIC;
GRANT SELECT ON generations, probes TO PUBLIC;
VACUUM ANALYZE refs, texts, opts, ids, batches, blobs;

-- ---- focus -------------------------------------------------------------------
-- SQLsmith picks each function call among all of pg_proc (3000 functions), so
-- mms_* would be about one call in two hundred. It reads pg_proc and pg_type
-- unqualified: with search_path = smith_focus, pg_catalog, public (lib.sh,
-- "focus" passes) it reads these instead. Materialized views, which
-- information_schema.tables (SQLsmith's list of tables) leaves out.
CREATE SCHEMA smith_focus;
-- the extension's functions and a few dozen built-ins that make or take text,
-- jsonb, arrays, large objects, files and signals
CREATE MATERIALIZED VIEW smith_focus.pg_proc AS
SELECT p.* FROM pg_catalog.pg_proc p
WHERE p.pronamespace <> 'pg_catalog'::regnamespace
   OR p.proname IN (
        'concat', 'concat_ws', 'repeat', 'lower', 'upper', 'substr', 'left', 'right', 'replace',
        'md5', 'btrim', 'lpad', 'rpad', 'chr', 'translate', 'quote_ident', 'quote_literal', 'length',
        'octet_length', 'strpos', 'normalize', 'convert_from', 'convert_to', 'encode', 'decode',
        'string_to_array', 'array_to_string', 'array_append', 'array_prepend', 'array_cat', 'array_fill',
        'array_remove', 'array_replace', 'array_length', 'cardinality', 'array_lower', 'trim_array',
        'jsonb_build_object', 'jsonb_set', 'jsonb_insert', 'jsonb_strip_nulls', 'to_jsonb', 'jsonb_typeof',
        'jsonb_object_field', 'jsonb_array_element', 'jsonb_pretty', 'text', 'int4', 'float8',
        'random', 'abs', 'pg_backend_pid', 'pg_cancel_backend', 'pg_terminate_backend', 'pg_sleep',
        'current_setting', 'set_config', 'txid_current', 'pg_advisory_xact_lock', 'pg_notify',
        'lo_get', 'lo_put', 'lo_create', 'lo_from_bytea', 'lo_unlink', 'lo_import', 'lo_export',
        'pg_read_file', 'pg_read_binary_file', 'pg_stat_file',
        'array_agg', 'string_agg', 'jsonb_agg', 'jsonb_object_agg', 'count', 'max', 'min', 'sum', 'avg');
-- SQLsmith 1.4 predates multiranges: for operands of the pseudo-types
-- any(compatible)(multi)range it writes cast(null as anymultirange), which
-- fails half of its queries; named as a concrete type it writes that instead.
CREATE MATERIALIZED VIEW smith_focus.pg_type AS
SELECT t.oid,
       CASE t.typname WHEN 'anymultirange' THEN 'int4multirange' WHEN 'anycompatiblemultirange' THEN 'int4multirange'
                      WHEN 'anyrange' THEN 'int4range' WHEN 'anycompatiblerange' THEN 'int4range'
                      ELSE t.typname END::name AS typname,
       t.typnamespace, t.typdelim, t.typrelid, t.typelem, t.typarray,
       CASE WHEN t.typname IN ('anymultirange', 'anycompatiblemultirange', 'anyrange', 'anycompatiblerange')
            THEN 'b' ELSE t.typtype END::"char" AS typtype
FROM pg_catalog.pg_type t;
GRANT USAGE ON SCHEMA smith_focus TO PUBLIC;
GRANT SELECT ON smith_focus.pg_proc, smith_focus.pg_type TO PUBLIC;
