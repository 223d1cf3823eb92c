-- Streaming: mms_generate_stream returns the output in pieces, which put
-- together are what mms_generate returns (greedy, sampling with a seed, beam
-- search, which comes in one piece); mms.api_run, behind the HTTP gateway's
-- completions, returns one response or, streaming, one event per piece, the
-- end of each choice and the usage; stop sequences end a choice there. The
-- models have random weights: texts are noise, but deterministic.
\getenv data MMS_TEST_DATA
\set flan :data '/flan_gated.gguf'
\set SHOW_CONTEXT never
SELECT mms_import('st_flan', :'flan');

-- the pieces are the text, whatever the options
CREATE TEMP TABLE st_opts (o jsonb);
INSERT INTO st_opts VALUES
    ('{"max_new_tokens": 24}'),
    ('{"max_new_tokens": 24, "min_new_tokens": 24}'),
    ('{"max_new_tokens": 16, "temperature": 0.9, "top_p": 0.9, "seed": 7}'),
    ('{"max_new_tokens": 12, "num_beams": 3}'),
    ('{"max_new_tokens": 20, "repetition_penalty": 1.3}');
SELECT o,
       (SELECT string_agg(p, '') FROM mms_generate_stream('st_flan', 'Hello, world!', o) p)
           = mms_generate('st_flan', 'Hello, world!', o) AS pieces_make_the_text,
       (SELECT count(*) FROM mms_generate_stream('st_flan', 'Hello, world!', o)) >= 1 AS pieces
FROM st_opts;
-- (how many pieces depends on how many tokens each wake-up finds, and a small
-- model may finish before the first; a beam search comes in one, its best
-- beam known at the end)
SELECT count(*) FROM mms_generate_stream('st_flan', 'Hello, world!', '{"max_new_tokens": 12, "num_beams": 3}');
-- NULL input: no rows (STRICT); errors as mms_generate raises them
SELECT count(*) FROM mms_generate_stream('st_flan', NULL);
SELECT * FROM mms_generate_stream('st_nope', 'x');
SELECT * FROM mms_generate_stream('st_flan', 'x', '{"max_new_tokens": 0}');
SELECT * FROM mms_generate_stream('st_flan', 'x', '{"bogus": 1}');
-- LIMIT stops reading: the rest of the request is dropped, nothing stays queued
SELECT count(*) FROM (SELECT mms_generate_stream('st_flan', 'Hello', '{"max_new_tokens": 200, "min_new_tokens": 200}') LIMIT 2) s;
SELECT count(*) AS my_requests_in_flight FROM mms.progress WHERE pid = pg_backend_pid();

-- mms.api_run: one response with every choice; id and created vary
CREATE FUNCTION st_mask(j jsonb) RETURNS jsonb LANGUAGE sql AS
    $$ SELECT j - 'id' - 'created' || jsonb_build_object('id_prefix', split_part(j->>'id', '-', 1)) $$;
SELECT st_mask(r) FROM mms.api_run('st_flan', ARRAY['Hello', 'world'], '{"max_new_tokens": 6}',
                                   NULL, false, false, false) r;
SELECT (r->'choices'->0->>'text') = mms_generate('st_flan', 'Hello', '{"max_new_tokens": 6}') AS same_as_generate,
       (r->'usage'->>'prompt_tokens')::int = cardinality(mms_tokenize('st_flan', 'Hello')) AS prompt_tokens
FROM mms.api_run('st_flan', ARRAY['Hello'], '{"max_new_tokens": 6}', NULL, false, false, false) r;
SELECT st_mask(r) FROM mms.api_run('st_flan', ARRAY['Hello'], '{"max_new_tokens": 3}', NULL, false, false, true) r;
-- streaming: the events of each choice put together are its text; each choice
-- ends once, with its reason; the usage comes last
WITH ev AS (
    SELECT row_number() OVER () AS k, r FROM mms.api_run('st_flan', ARRAY['Hello', 'world'],
        '{"max_new_tokens": 10, "min_new_tokens": 10}', NULL, true, true, false) r)
SELECT (SELECT count(DISTINCT r->>'id') FROM ev) AS ids,
       (SELECT string_agg(r->'choices'->0->>'text', '' ORDER BY k) FROM ev WHERE r->'choices'->0->>'index' = '0')
           = mms_generate('st_flan', 'Hello', '{"max_new_tokens": 10, "min_new_tokens": 10}') AS choice_0_text,
       (SELECT string_agg(r->'choices'->0->>'text', '' ORDER BY k) FROM ev WHERE r->'choices'->0->>'index' = '1')
           = mms_generate('st_flan', 'world', '{"max_new_tokens": 10, "min_new_tokens": 10}') AS choice_1_text,
       (SELECT array_agg(r->'choices'->0->>'finish_reason' ORDER BY r->'choices'->0->>'index')
          FROM ev WHERE r->'choices'->0->>'finish_reason' IS NOT NULL) AS finish_reasons,
       (SELECT st_mask(r) FROM ev ORDER BY k DESC LIMIT 1) AS last_event;
-- chat chunks: the first delta carries the role, the last the reason alone
WITH ev AS (
    SELECT row_number() OVER () AS k, r->'choices'->0 AS c FROM mms.api_run('st_flan', ARRAY['Hello'],
        '{"max_new_tokens": 4, "min_new_tokens": 4}', NULL, true, false, true) r)
SELECT (SELECT c->'delta'->>'role' FROM ev WHERE k = 1) AS first_role,
       (SELECT count(*) FROM ev WHERE c->'delta' ? 'role') AS roles,
       (SELECT string_agg(c->'delta'->>'content', '' ORDER BY k) FROM ev)
           = mms_generate('st_flan', 'Hello', '{"max_new_tokens": 4, "min_new_tokens": 4}') AS content,
       (SELECT c FROM ev ORDER BY k DESC LIMIT 1) AS last;
-- a stop sequence ends the choice before it, with reason stop, streaming or not
SELECT mms_generate('st_flan', 'Hello', '{"max_new_tokens": 24, "min_new_tokens": 24}') AS full_text \gset
SELECT substr(:'full_text', 6, 2) AS stop \gset
SELECT (r->'choices'->0->>'text') = left(:'full_text', strpos(:'full_text', :'stop') - 1) AS cut_before_stop,
       r->'choices'->0->>'finish_reason' AS reason
FROM mms.api_run('st_flan', ARRAY['Hello'], '{"max_new_tokens": 24, "min_new_tokens": 24}',
                 ARRAY[:'stop'], false, false, false) r;
SELECT string_agg(r->'choices'->0->>'text', '') = left(:'full_text', strpos(:'full_text', :'stop') - 1) AS streamed_cut,
       max(r->'choices'->0->>'finish_reason') AS reason
FROM mms.api_run('st_flan', ARRAY['Hello'], '{"max_new_tokens": 24, "min_new_tokens": 24}',
                 ARRAY[:'stop'], true, false, false) r;
SELECT * FROM mms.api_run('st_flan', ARRAY['Hello'], '{}', ARRAY['a','b','c','d','e'], false, false, false);
SELECT * FROM mms.api_run('st_flan', ARRAY['Hello'], '{}', NULL, NULL, false, false);

SELECT mms_unregister('st_flan');
