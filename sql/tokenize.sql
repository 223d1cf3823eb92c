-- mms_tokenize / mms_detokenize: ids as transformers' T5Tokenizer gives them (the final
-- eos included), the way back to text, errors, and the per-session tokenizer
-- cache, which must follow a model that is replaced.
\getenv data MMS_TEST_DATA
\set flan :data '/flan_gated.gguf'
\set relu :data '/t5_relu_tied.gguf'
\set other :data '/bad/other_tokenizer.gguf'
SELECT mms_import('tok', :'flan');

SELECT mms_tokenize('tok', 'Hello world, this is a test.');
SELECT mms_tokenize('tok', '');
SELECT mms_tokenize('tok', '   ');
SELECT mms_tokenize('tok', '  many   spaces  inside ');
SELECT mms_tokenize('tok', 'ｆｕｌｌｗｉｄｔｈ ① ﬁ café');
SELECT mms_tokenize('tok', E'tab\tand\nnewline');
SELECT mms_tokenize('tok', 'SELECT<sep>x');
SELECT mms_tokenize('tok', NULL) IS NULL AS null_input;
SELECT mms_tokenize(NULL, 'x') IS NULL AS null_model;

-- every reference form
SELECT mms_tokenize('tok:1', 'abc') = mms_tokenize('tok', 'abc') AS by_version;
SELECT mms_set_alias('tok', 'prod', 1);
SELECT mms_tokenize('tok@prod', 'abc') = mms_tokenize('tok', 'abc') AS by_alias;
SELECT mms_tokenize('tok:2', 'abc');
SELECT mms_tokenize('tok@staging', 'abc');
SELECT mms_tokenize('nope', 'abc');

-- back to text: normalized (NFKC, collapsed spaces), control pieces dropped
SELECT s, mms_detokenize('tok', mms_tokenize('tok', s)) AS round_trip
FROM (VALUES ('Hello world, this is a test.'), ('  many   spaces  inside '),
             ('ｆｕｌｌｗｉｄｔｈ ① ﬁ café'), ('$100.00 on 2024-06-01'), ('')) t(s);
SELECT mms_detokenize('tok', '{}');
SELECT mms_detokenize('tok', '{0,5,808,999,1}');
SELECT mms_detokenize('tok', '{5,1008}');
SELECT mms_detokenize('tok', '{5,-1}');
SELECT mms_detokenize('tok', '{5,NULL}');
SELECT mms_detokenize('tok', '{{5,6},{7,8}}');

-- many rows in one query
SELECT i, array_length(mms_tokenize('tok', repeat('ab ', i)), 1) AS n_ids
FROM generate_series(0, 4) i;
SELECT count(*) AS rows, sum(array_length(mms_tokenize('tok', 'word ' || i), 1)) AS ids
FROM generate_series(1, 1000) i;

-- under a parallel plan the calls run in the leader (PARALLEL RESTRICTED)
CREATE TABLE tok_inputs AS SELECT 'word ' || i AS s FROM generate_series(1, 5000) i;
ANALYZE tok_inputs;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
EXPLAIN (COSTS OFF) SELECT sum(array_length(mms_tokenize('tok', s), 1)) FROM tok_inputs WHERE s <> '';
SELECT count(*) AS rows, sum(array_length(mms_tokenize('tok', s), 1)) AS ids
FROM tok_inputs WHERE s <> '';
RESET parallel_setup_cost;
RESET parallel_tuple_cost;
RESET min_parallel_table_scan_size;
RESET max_parallel_workers_per_gather;
DROP TABLE tok_inputs;

-- the cache follows the model: replace tok:1 by a file whose tokenizer has no
-- space prefix, in the same session, and the ids change
SELECT mms_tokenize('tok', 'Hello world');
SELECT mms_unregister('tok');
SELECT mms_import('tok', :'other', '1');
SELECT mms_tokenize('tok', 'Hello world');
SELECT mms_unregister('tok');
SELECT mms_tokenize('tok', 'Hello world');
-- within one statement too
SELECT mms_import('tok', :'flan', '1');
SELECT mms_tokenize('tok', 'Hello world') AS before,
       mms_unregister('tok') AS unregistered,
       mms_import('tok', :'other', '1') AS reimported;
SELECT mms_tokenize('tok', 'Hello world') AS after;

-- a cache of one tokenizer, two models taking turns
SELECT mms_import('relu', :'relu');
SET mms.tokenizer_cache_size = 1;
SELECT m, mms_tokenize(m, 'Hello world')
FROM (VALUES ('tok'), ('relu'), ('tok'), ('relu')) t(m);
RESET mms.tokenizer_cache_size;

-- weights changed behind the registry's back (only a superuser can) are
-- noticed by the worker that would serve them, and not used (the tokenizer
-- reads only the file's header)
SELECT lo_put(weights, (size_bytes - 8)::int, '\x5a5a5a5a') FROM mms.models WHERE name = 'relu';
SET mms.tokenizer_cache_size = 1;
SELECT mms_tokenize('tok', 'x');
\set VERBOSITY terse
SELECT mms_generate('relu', 'Hello world');
\set VERBOSITY default
RESET mms.tokenizer_cache_size;
SELECT mms_import('relu', :'relu');
SELECT mms_tokenize('relu', 'Hello world');
SELECT mms_unregister('relu:1'), mms_unregister('relu:2'), mms_unregister('tok');
SELECT count(*) AS models FROM mms.models;
