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
-- (one row when the first look found the whole text)
SELECT count(*) BETWEEN 1 AND 2 AS limited
FROM (SELECT mms_generate_stream('st_flan', 'Hello', '{"max_new_tokens": 200, "min_new_tokens": 200}') LIMIT 2) s;
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


-- The pieces are the text, call after call: a request that ends in a step
-- publishes no token past those written (the slot may hold an earlier
-- request's tokens there), and a piece held back for a stop sequence ends on
-- a character boundary (the text has 3- and 4-byte characters: convert_to
-- checks that each piece is valid UTF-8).
CREATE TEMP TABLE st_runs (run int, idx int, piece text, k bigint);
DO $$
BEGIN
    FOR run IN 1..30 LOOP
        INSERT INTO st_runs
        SELECT run, (r->'choices'->0->>'index')::int, r->'choices'->0->>'text', k
        FROM mms.api_run('st_flan', ARRAY['Hello', 'world', 'Hello, world!'],
                         '{"max_new_tokens": 10, "min_new_tokens": 10}',
                         CASE WHEN run % 4 > 0 THEN ARRAY[repeat('q', run % 4 + 1)] END,
                         true, false, false) WITH ORDINALITY t(r, k);
    END LOOP;
END
$$;
SELECT count(*) FILTER (WHERE NOT same) AS runs_with_other_text, count(*) AS choices,
       bool_and(valid) AS pieces_valid_utf8
FROM (SELECT run, idx,
             string_agg(piece, '' ORDER BY k) = mms_generate('st_flan', (ARRAY['Hello', 'world', 'Hello, world!'])[idx + 1],
                                                            '{"max_new_tokens": 10, "min_new_tokens": 10}') AS same,
             bool_and(octet_length(convert_to(piece, 'UTF8')) >= 0) AS valid
      FROM st_runs GROUP BY run, idx) s;
SELECT mms_generate('st_flan', 'Hello', '{"max_new_tokens": 10}') ~ '[^\x01-\x7f]' AS has_multibyte;

-- A long stream holds only what it has not returned yet: each row, the text
-- decoded at each look and the JSON built for an event are freed once used
-- (they were kept until the end: gigabytes for a long stream of many inputs).
DO $$
DECLARE
    r jsonb;
    k int := 0;
    k1 int;
    m0 bigint;
    m1 bigint;
BEGIN
    FOR r IN SELECT mms.api_run('st_flan', array_fill('Hello'::text, ARRAY[50]),
                                '{"max_new_tokens": 200, "min_new_tokens": 200}', ARRAY['qq'], true, false, false) LOOP
        k := k + 1;
        IF k = 200 THEN
            SELECT sum(used_bytes) INTO m0 FROM pg_backend_memory_contexts;
        ELSIF k % 100 = 0 AND k > 200 THEN
            SELECT sum(used_bytes) INTO m1 FROM pg_backend_memory_contexts;
            k1 := k;
        END IF;
    END LOOP;
    RAISE NOTICE 'stream of % rows: % bytes per row', CASE WHEN k >= 1000 THEN 'many' ELSE 'few' END,
        CASE WHEN (m1 - m0) / (k1 - 200) < 400 THEN 'under 400' ELSE (m1 - m0) / (k1 - 200) || '' END;
END
$$;

-- A client that goes away while nothing is being sent (the text held back
-- for a stop sequence, as for a beam search or a response that comes whole):
-- its connection is looked at once a second, so its requests are cancelled
-- rather than generated to max_new_tokens for nobody. dblink plays the client.
CREATE EXTENSION dblink;
SELECT format('host=%s port=%s dbname=%s user=%s', split_part(current_setting('unix_socket_directories'), ',', 1),
              current_setting('port'), current_database(), current_user) AS st_conn \gset
SELECT coalesce(sum(cancels), 0) AS st_cancels, coalesce(sum(output_tokens), 0) AS st_tokens
FROM mms.stat_models WHERE model = 'st_flan:1' \gset
SELECT dblink_connect('st_client', :'st_conn');
SELECT dblink_send_query('st_client', $$SELECT mms.api_run('st_flan', array_fill('Hello'::text, ARRAY[20]),
    '{"max_new_tokens": 4096, "min_new_tokens": 4096}', ARRAY[repeat('q', 100000)], true, false, false)$$);
DO $$
BEGIN
    FOR i IN 1..1200 LOOP
        EXIT WHEN EXISTS (SELECT 1 FROM mms.progress WHERE pid <> pg_backend_pid() AND requests_running > 0);
        PERFORM pg_sleep(0.05);
        PERFORM pg_stat_clear_snapshot();
    END LOOP;
END
$$;
SELECT dblink_disconnect('st_client');
DO $$
BEGIN
    FOR i IN 1..1200 LOOP
        EXIT WHEN NOT EXISTS (SELECT 1 FROM mms.progress WHERE pid <> pg_backend_pid());
        PERFORM pg_sleep(0.05);
        PERFORM pg_stat_clear_snapshot();   -- mms.progress sees backends through it
    END LOOP;
END
$$;
SELECT sum(cancels) - :st_cancels AS cancelled_requests, sum(output_tokens) - :st_tokens AS tokens_for_nobody
FROM mms.stat_models WHERE model = 'st_flan:1';
SELECT count(*) AS in_flight FROM mms.progress;
DROP EXTENSION dblink;

SELECT mms_unregister('st_flan');
