-- Inference in SQL: mms_generate, mms_generate_batch, mms_score, option
-- validation, input limits, grants, mms_load / mms_unload and the views.
-- The fixture models have random weights: the text is noise but deterministic
-- (t_inference_cli.py checks the same results against build/mms-run).
\getenv data MMS_TEST_DATA
\set flan :data '/flan_gated.gguf'
\set relu :data '/t5_relu_tied.gguf'
\set SHOW_CONTEXT never
SELECT mms_import('gen_flan', :'flan');
SELECT mms_import('gen_relu', :'relu');

-- one input; defaults; options
SELECT mms_generate('gen_flan', 'Hello, world!', '{"max_new_tokens": 8}');
SELECT mms_generate('gen_relu', 'Hello, world!', '{"max_new_tokens": 8}');
SELECT mms_generate('gen_flan', 'Hello, world!', '{"max_new_tokens": 8, "num_beams": 4}');
SELECT mms_generate('gen_flan', 'Hello, world!', '{"max_new_tokens": 8, "num_beams": 3, "length_penalty": 0.5, "early_stopping": "never"}');
SELECT mms_generate('gen_flan', 'Hello, world!', '{"max_new_tokens": 6, "min_new_tokens": 6, "repetition_penalty": 1.3}');
SELECT length(mms_generate('gen_flan', 'Hello, world!')) > 0 AS default_options;
SELECT mms_generate('gen_flan', 'Hello, world!', NULL) = mms_generate('gen_flan', 'Hello, world!') AS null_options_are_defaults;
-- sampling: the same seed gives the same text; temperature 0 is greedy
SELECT mms_generate('gen_flan', 'Hello', '{"max_new_tokens": 8, "temperature": 0.8, "top_p": 0.9, "seed": 42}')
     = mms_generate('gen_flan', 'Hello', '{"max_new_tokens": 8, "temperature": 0.8, "top_p": 0.9, "seed": 42}') AS same_seed_same_text;
SELECT mms_generate('gen_flan', 'Hello', '{"max_new_tokens": 8, "temperature": 0}')
     = mms_generate('gen_flan', 'Hello', '{"max_new_tokens": 8}') AS temperature_0_is_greedy;
SELECT mms_generate('gen_flan', 'Hello', '{"max_new_tokens": 8, "do_sample": false, "top_k": 5}')
     = mms_generate('gen_flan', 'Hello', '{"max_new_tokens": 8}') AS do_sample_false_is_greedy;
SELECT mms_generate('gen_flan', NULL::text) IS NULL AS null_in_null_out;
SELECT mms_generate('gen_flan', '', '{"max_new_tokens": 4}');

-- mms_generate_batch: one batch, input order, NULL in -> NULL out, shape kept
SELECT mms_generate_batch('gen_flan', ARRAY['Hello, world!', NULL, 'another input', ''], '{"max_new_tokens": 6}');
SELECT mms_generate_batch('gen_flan', ARRAY['b', 'a', 'c'], '{"max_new_tokens": 6}')
     = ARRAY[mms_generate('gen_flan', 'b', '{"max_new_tokens": 6}'),
             mms_generate('gen_flan', 'a', '{"max_new_tokens": 6}'),
             mms_generate('gen_flan', 'c', '{"max_new_tokens": 6}')] AS array_equals_scalar_calls;
SELECT mms_generate_batch('gen_flan', ARRAY[]::text[]);
SELECT mms_generate_batch('gen_flan', ARRAY[NULL, NULL]::text[]);
SELECT mms_generate_batch('gen_flan', NULL::text[]) IS NULL AS null_array;
-- an untyped literal (what psycopg sends for a Python list) is an array here
SELECT mms_generate_batch('gen_flan', '{b,a}', '{"max_new_tokens": 6}')
     = ARRAY[mms_generate('gen_flan', 'b', '{"max_new_tokens": 6}'),
             mms_generate('gen_flan', 'a', '{"max_new_tokens": 6}')] AS literal_is_a_batch;
SELECT array_dims(mms_generate_batch('gen_flan', '[3:4]={x,y}'::text[], '{"max_new_tokens": 2}'));
SELECT array_length(mms_generate_batch('gen_flan', array_agg('row ' || i), '{"max_new_tokens": 4}'), 1)
FROM generate_series(1, 100) i;
-- the pattern of the README: rows batched through the array API, back in order
CREATE TABLE gen_in AS SELECT i AS id, 'input ' || i AS raw FROM generate_series(1, 20) i;
CREATE TABLE gen_out (id int, result text);
INSERT INTO gen_out (id, result)
SELECT b.ids[o.n], o.result
FROM (SELECT (id - 1) / 8 AS chunk, array_agg(id ORDER BY id) AS ids, array_agg(raw ORDER BY id) AS raws
      FROM gen_in GROUP BY 1) b,
     unnest(mms_generate_batch('gen_flan', b.raws, '{"max_new_tokens": 4}')) WITH ORDINALITY AS o(result, n);
SELECT count(*) AS rows, count(DISTINCT id) AS ids FROM gen_out;
SELECT bool_and(o.result = mms_generate('gen_flan', i.raw, '{"max_new_tokens": 4}')) AS batched_equals_per_row
FROM gen_out o JOIN gen_in i USING (id);

-- scoring: log P(target | input), over target's tokens and eos
-- 2 decimals: kernels differ in the last float bits across CPUs; the exact
-- comparison with mms-run is in test/pg/t_inference_cli.py
SELECT round(mms_score('gen_flan', 'Hello, world!', 'target text')::numeric, 2);
SELECT round(mms_score('gen_relu', 'Hello, world!', 'target text')::numeric, 2);
SELECT mms_score('gen_flan', 'Hello', 'a') > mms_score('gen_flan', 'Hello', 'a b c d e f g') AS longer_is_less_likely;
SELECT mms_score('gen_flan', NULL, 'x') IS NULL AS strict;
-- mms_score_batch: one batch of pairs, in order and shape, NULL where either is NULL
-- (a row of a batch may round differently from a call alone: compared to 1e-4)
SELECT array_length(r, 1) AS n, r[3] IS NULL AS null_input, r[4] IS NULL AS null_target,
       abs(r[1] - mms_score('gen_flan', 'Hello, world!', 'target text')) < 1e-4
       AND abs(r[2] - mms_score('gen_flan', 'Hello', 'a b c')) < 1e-4
       AND abs(r[5] - mms_score('gen_flan', '', '')) < 1e-4 AS equals_per_pair
FROM mms_score_batch('gen_flan', ARRAY['Hello, world!', 'Hello', NULL, 'x', ''],
                     ARRAY['target text', 'a b c', 'y', NULL, '']) r;
SELECT mms_score_batch('gen_flan', ARRAY[]::text[], ARRAY[]::text[]);
SELECT array_dims(mms_score_batch('gen_flan', '[2:3]={a,b}', '[5:6]={c,d}'));
SELECT mms_score_batch('gen_flan', NULL, ARRAY['x']) IS NULL AS strict;
SELECT mms_score_batch('gen_flan', ARRAY['a', 'b', 'c'], ARRAY['x', 'y']);

-- every option error names the option
SELECT mms_generate('gen_flan', 'x', '{"max_tokens": 5}');
SELECT mms_generate('gen_flan', 'x', '[1, 2]');
SELECT mms_generate('gen_flan', 'x', '5');
SELECT mms_generate('gen_flan', 'x', '{"max_new_tokens": "5"}');
SELECT mms_generate('gen_flan', 'x', '{"max_new_tokens": 2.5}');
SELECT mms_generate('gen_flan', 'x', '{"max_new_tokens": 0}');
SELECT mms_generate('gen_flan', 'x', '{"max_new_tokens": 5000}');
SELECT mms_generate('gen_flan', 'x', '{"max_new_tokens": null}');
SELECT mms_generate('gen_flan', 'x', '{"min_new_tokens": -1}');
SELECT mms_generate('gen_flan', 'x', '{"min_new_tokens": 9, "max_new_tokens": 8}');
SELECT mms_generate('gen_flan', 'x', '{"num_beams": 0}');
SELECT mms_generate('gen_flan', 'x', '{"num_beams": 65}');
SELECT mms_generate('gen_flan', 'x', '{"num_beams": true}');
SELECT mms_generate('gen_flan', 'x', '{"length_penalty": "high"}');
SELECT mms_generate('gen_flan', 'x', '{"early_stopping": "sometimes"}');
SELECT mms_generate('gen_flan', 'x', '{"early_stopping": 1}');
SELECT mms_generate('gen_flan', 'x', '{"do_sample": "yes"}');
SELECT mms_generate('gen_flan', 'x', '{"temperature": -1}');
SELECT mms_generate('gen_flan', 'x', '{"temperature": "hot"}');
SELECT mms_generate('gen_flan', 'x', '{"top_k": -1}');
SELECT mms_generate('gen_flan', 'x', '{"top_k": 1.5}');
SELECT mms_generate('gen_flan', 'x', '{"top_p": 0}');
SELECT mms_generate('gen_flan', 'x', '{"top_p": 1.5}');
SELECT mms_generate('gen_flan', 'x', '{"seed": -1}');
SELECT mms_generate('gen_flan', 'x', '{"seed": 1e30}');
SELECT mms_generate('gen_flan', 'x', '{"repetition_penalty": 0}');
SELECT mms_generate('gen_flan', 'x', '{"do_sample": true, "num_beams": 2}');
SELECT mms_generate('gen_flan', 'x', '{"top_k": 10, "num_beams": 2}');
SELECT mms_generate_batch('gen_flan', ARRAY['x'], '{"bogus": 1}');

-- input limits (mms.max_input_tokens = 1024 here; mms.max_new_tokens = 4096)
SELECT mms_generate('gen_flan', repeat('a ', 2000));
SELECT mms_score('gen_flan', 'x', repeat('a ', 5000));
SELECT mms_generate('gen_flan', repeat('a ', 300), '{"max_new_tokens": 2}') IS NOT NULL AS long_input_within_limit;

-- references and errors
SELECT mms_generate('gen_flan:1', 'Hello', '{"max_new_tokens": 3}') = mms_generate('gen_flan', 'Hello', '{"max_new_tokens": 3}') AS by_version;
SELECT mms_generate('nope', 'x');
SELECT mms_generate(NULL, 'x');
SELECT mms_score('nope', 'x', 'y');

-- grants: no grant, no inference (checked as the caller)
CREATE ROLE regress_mms_carol;
SET ROLE regress_mms_carol;
SELECT mms_generate('gen_flan', 'x', '{"max_new_tokens": 2}');
SELECT mms_generate_batch('gen_flan', ARRAY['x'], '{"max_new_tokens": 2}');
SELECT mms_score('gen_flan', 'x', 'y');
SELECT mms_load('gen_flan');
SELECT mms_unload('gen_flan');
SELECT mms_stat_reset();
RESET ROLE;
SELECT mms_grant('gen_flan', 'regress_mms_carol');
SET ROLE regress_mms_carol;
SELECT mms_generate('gen_flan', 'Hello, world!', '{"max_new_tokens": 8}');
SELECT mms_generate('gen_relu', 'x', '{"max_new_tokens": 2}');
RESET ROLE;
SELECT mms_revoke('gen_flan', 'regress_mms_carol');
SET ROLE regress_mms_carol;
SELECT mms_generate('gen_flan', 'x', '{"max_new_tokens": 2}');
RESET ROLE;
DROP ROLE regress_mms_carol;

-- load, unload, views
SELECT mms_load('gen_relu');
-- a cached file lists every registration of its bytes as 'database/name:version'
SELECT split_part(m, '/', 2) AS model, c.state, c.workers >= 1 AS attached, c.bytes > 0 AS has_bytes
FROM mms.cache c, unnest(c.models) m
WHERE m LIKE current_database() || '/gen_%' ORDER BY 1;
SELECT model, state, requests_served > 0 AS served FROM mms.workers
WHERE model LIKE 'gen_%' ORDER BY model;
SELECT model, max_workers, queued, running FROM mms.pools WHERE model LIKE 'gen_%' ORDER BY model;
-- per role; a dropped role's row stays, with role NULL
SELECT model, role, calls > 0 AS called, errors = 0 AS no_errors, cache_loads, decode_steps > 0 AS decoded
FROM mms.stat_models WHERE database = current_database() AND model LIKE 'gen_%' ORDER BY model, role;
SELECT count(*) > 0 AS load_event FROM mms.events WHERE model = 'gen_flan:1' AND kind = 'load';
SELECT mms_unload('gen_relu');
SELECT count(*) AS relu_cached FROM mms.cache WHERE current_database() || '/gen_relu:1' = ANY(models);
SELECT mms_generate('gen_relu', 'Hello, world!', '{"max_new_tokens": 8}');
SELECT DISTINCT cache_loads FROM mms.stat_models WHERE database = current_database() AND model = 'gen_relu:1';
SELECT mms_stat_reset();
SELECT count(*) AS stats_after_reset FROM mms.stat_models WHERE database = current_database();
SELECT mms_unload('nope');

-- honest labels
SELECT p.oid::regprocedure, p.provolatile, p.proparallel, p.proisstrict FROM pg_proc p
WHERE p.proname IN ('mms_generate', 'mms_generate_batch', 'mms_score', 'mms_score_batch', 'mms_load', 'mms_unload')
ORDER BY p.oid::regprocedure::text;

-- a tied model whose file also stores the LM head as a copy of the embeddings
-- (llama.cpp's converter on checkpoints with lm_head.weight) is still tied
SELECT mms_import('gen_tied_copy', :'data' || '/bad/tied_stored_head.gguf');
SELECT config->'tied_embeddings' AS tied_embeddings FROM mms.models WHERE name = 'gen_tied_copy';
SELECT mms_score('gen_tied_copy', 'hello there', 'Hello, world!')
     = mms_score('gen_relu', 'hello there', 'Hello, world!') AS same_scores_as_tied,
       mms_generate('gen_tied_copy', 'Hello, world!', '{"num_beams": 3, "max_new_tokens": 8}')
     = mms_generate('gen_relu', 'Hello, world!', '{"num_beams": 3, "max_new_tokens": 8}') AS same_beams;
SELECT mms_unregister('gen_tied_copy');
-- the copy quantized to another type (llama-quantize without --pure): tied too
SELECT mms_import('gen_tied_q8', :'data' || '/bad/tied_q8_head.gguf');
SELECT config->'tied_embeddings' AS tied_embeddings FROM mms.models WHERE name = 'gen_tied_q8';
SELECT abs(mms_score('gen_tied_q8', 'hello there', 'Hello, world!')
           - mms_score('gen_relu', 'hello there', 'Hello, world!')) < 0.5 AS scores_as_tied;
SELECT mms_unregister('gen_tied_q8');

DROP TABLE gen_in, gen_out;
SELECT mms_unregister('gen_flan');
SELECT mms_unregister('gen_relu');
