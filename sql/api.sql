-- The HTTP API's jsonb functions: mms.api_plan checks an OpenAI completions
-- or chat completions request and maps it to mms_generate's options (every
-- bad parameter is 22023 naming it); mms_api_completions and
-- mms_api_chat_completions answer in OpenAI's shapes; the REST functions
-- wrap the registry and inference functions; a model the caller may not use
-- does not exist (42704), whatever the function.
\getenv data MMS_TEST_DATA
-- (inner_48: a model other tests do not run, so that its cached weights
-- and workers change nothing they count)
\set inner :data '/inner_48.gguf'
\set flan :data '/flan_gated.gguf'
\set relu :data '/t5_relu_tied.gguf'
\set enc :data '/t5encoder.gguf'
\set SHOW_CONTEXT never
CREATE ROLE regress_mms_api_admin IN ROLE mms_admin;
CREATE ROLE regress_mms_api_user;
CREATE ROLE regress_mms_api_other;
SELECT mms_import('api_inner', :'inner');
SELECT mms_import('api_hidden', :'relu');
SELECT mms_grant('api_inner', 'regress_mms_api_user');

CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    h text;
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN others THEN
    GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT;
    RETURN SQLSTATE || ': ' || SQLERRM || coalesce(' [' || nullif(h, '') || ']', '');
END $$;
GRANT EXECUTE ON FUNCTION pg_temp.try(text) TO PUBLIC;

-- ==== the plan: OpenAI parameters -> mms ====================================
SELECT r, p.*
FROM (VALUES
    -- the least: greedy decoding with mms's default length
    ('{"model": "api_inner", "prompt": "hello"}'),
    -- temperature above 0 samples at it; stop: a string; stream with usage
    ('{"model": "api_inner", "prompt": ["a", "b"], "max_tokens": 8, "temperature": 0.5, "top_p": 0.9,
       "seed": 42, "stop": "\n", "stream": true, "stream_options": {"include_usage": true}}'),
    -- temperature 0 (or none) is greedy: top_p and top_k are passed on, unused
    ('{"model": "api_inner", "prompt": "x", "temperature": 0, "top_p": 0.5, "top_k": 3}'),
    -- mms's own: num_beams, top_k, repetition_penalty, min_tokens
    ('{"model": "api_inner", "prompt": "x", "max_tokens": 20, "min_tokens": 5, "num_beams": 4,
       "repetition_penalty": 1.2}'),
    -- OpenAI's defaults are accepted, null is absence; up to 4 stop sequences, empty ones dropped
    ('{"model": "api_inner", "prompt": "x", "n": 1, "user": "u1", "echo": false, "logprobs": null,
       "presence_penalty": 0, "frequency_penalty": 0.0, "best_of": 1, "suffix": null, "seed": null,
       "stream": false, "stop": ["a", "", "bc", "d"], "max_tokens": null, "stream_options": null}'),
    -- references name a version or an alias
    ('{"model": "api_inner:1", "prompt": ""}')
) t(r), mms.api_plan('completions', r::jsonb) p;

-- chat: a single user message is the input; any other conversation is one
-- "<role>: <content>" line per message, in order
SELECT r, p.*
FROM (VALUES
    ('{"model": "api_inner", "messages": [{"role": "user", "content": "translate: Haus"}]}'),
    ('{"model": "api_inner", "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Hi", "name": "ann"},
                                         {"role": "assistant", "content": "Hello."},
                                         {"role": "user", "content": "Bye"}],
       "max_completion_tokens": 3, "logprobs": false, "top_logprobs": null, "temperature": 1}'),
    ('{"model": "api_inner", "messages": [{"role": "system", "content": "Only a system message."}],
       "max_tokens": 2, "stream": true}')
) t(r), mms.api_plan('chat', r::jsonb) p;

-- ==== every bad request: 22023 naming the parameter =========================
SELECT k, r, pg_temp.try(format('SELECT mms.api_plan(%L, %L)', k, r))
FROM (VALUES
    ('embeddings', '{}'),
    ('completions', NULL),
    ('completions', '[]'),
    ('completions', '"text"'),
    ('completions', '{"model": "api_inner", "prompt": "x", "logit_bias": {}}'),
    ('completions', '{"model": "api_inner", "messages": []}'),
    ('completions', '{"prompt": "x"}'),
    ('completions', '{"model": null, "prompt": "x"}'),
    ('completions', '{"model": 7, "prompt": "x"}'),
    ('completions', '{"model": "api_nosuch", "prompt": "x"}'),
    ('completions', '{"model": "api_inner:", "prompt": "x"}'),
    ('completions', '{"model": "api_inner:9", "prompt": "x"}'),
    ('completions', '{"model": "api_inner@prod", "prompt": "x"}'),
    ('completions', '{"model": "api_inner"}'),
    ('completions', '{"model": "api_inner", "prompt": 5}'),
    ('completions', '{"model": "api_inner", "prompt": []}'),
    ('completions', '{"model": "api_inner", "prompt": [1, 2]}'),
    ('completions', '{"model": "api_inner", "prompt": ["a", null]}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "max_tokens": "5"}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "max_tokens": 1.5}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "max_tokens": 0}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "max_tokens": 5000}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "min_tokens": -1}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "min_tokens": 6, "max_tokens": 5}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "temperature": -0.1}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "temperature": "hot"}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "top_p": 0}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "top_p": 1.5}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "top_k": -1}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "num_beams": 0}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "num_beams": 65}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "num_beams": 2, "temperature": 0.5}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "seed": -1}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "seed": 1e30}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "repetition_penalty": 0}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "stop": 5}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "stop": [1]}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "stream": "yes"}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "stream_options": {"include_usage": true}}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "stream": true, "stream_options": []}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "stream": true, "stream_options": {"x": 1}}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "stream": true, "stream_options": {"include_usage": 1}}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "n": 2}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "best_of": 3}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "user": 5}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "presence_penalty": 0.5}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "frequency_penalty": "none"}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "echo": true}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "logprobs": 1}'),
    ('completions', '{"model": "api_inner", "prompt": "x", "suffix": "end"}'),
    ('chat', '{"model": "api_inner", "prompt": "x"}'),
    ('chat', '{"model": "api_inner", "messages": [], "echo": false}'),
    ('chat', '{"model": "api_inner"}'),
    ('chat', '{"model": "api_inner", "messages": {}}'),
    ('chat', '{"model": "api_inner", "messages": []}'),
    ('chat', '{"model": "api_inner", "messages": ["hi"]}'),
    ('chat', '{"model": "api_inner", "messages": [{"content": "hi"}]}'),
    ('chat', '{"model": "api_inner", "messages": [{"role": "tool", "content": "hi"}]}'),
    ('chat', '{"model": "api_inner", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": null}]}'),
    ('chat', '{"model": "api_inner", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}'),
    ('chat', '{"model": "api_inner", "messages": [{"role": "user", "content": "hi", "tool_calls": []}]}'),
    ('chat', '{"model": "api_inner", "messages": [{"role": "user", "content": "hi", "name": 1}]}'),
    ('chat', '{"model": "api_inner", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "max_completion_tokens": 2}'),
    ('chat', '{"model": "api_inner", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}'),
    ('chat', '{"model": "api_inner", "messages": [{"role": "user", "content": "hi"}], "logprobs": true}'),
    ('chat', '{"model": "api_inner", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}')
) t(k, r);

-- ==== completions ===========================================================
-- one response: OpenAI's text_completion, the texts mms_generate gives, and
-- the usage in tokens (prompts with their eos)
SELECT r->>'object' AS object, r->>'model' AS model, r->>'id' ~ '^cmpl-[0-9a-f]{24}$' AS id,
       abs((r->>'created')::bigint - extract(epoch FROM now())) < 600 AS created,
       jsonb_array_length(r->'choices') AS choices,
       (SELECT array_agg(c - 'text' - 'finish_reason' ORDER BY i)
        FROM jsonb_array_elements(r->'choices') WITH ORDINALITY e(c, i)) AS choice,
       r->'choices'->0->>'text' = mms_generate('api_inner', 'hello', '{"max_new_tokens": 4}')
       AND r->'choices'->1->>'text' = mms_generate('api_inner', 'world', '{"max_new_tokens": 4}') AS texts,
       (SELECT bool_and(c->>'finish_reason' IN ('stop', 'length'))
        FROM jsonb_array_elements(r->'choices') c) AS finish_reasons,
       (r->'usage'->>'prompt_tokens')::int = cardinality(mms_tokenize('api_inner', 'hello'))
                                             + cardinality(mms_tokenize('api_inner', 'world')) AS prompt_tokens,
       (r->'usage'->>'completion_tokens')::int BETWEEN 1 AND 8 AS completion_tokens,
       (r->'usage'->>'total_tokens')::int = (r->'usage'->>'prompt_tokens')::int
                                            + (r->'usage'->>'completion_tokens')::int AS total_tokens
FROM mms_api_completions('{"model": "api_inner", "prompt": ["hello", "world"], "max_tokens": 4}') r;
-- max_tokens reached: finish_reason length
SELECT r->'choices'->0->>'finish_reason' AS finish_reason, r->'usage'->'completion_tokens' AS completion_tokens
FROM mms_api_completions('{"model": "api_inner", "prompt": "hello", "max_tokens": 2, "min_tokens": 2}') r;
-- chat: one message from the assistant, for the mapped input
SELECT r->>'object' AS object, r->>'id' ~ '^chatcmpl-[0-9a-f]{24}$' AS id,
       r->'choices'->0->'message'->>'role' AS role,
       r->'choices'->0->'message'->>'content'
           = mms_generate('api_inner', E'system: Be brief.\nuser: Hi', '{"max_new_tokens": 4}') AS content
FROM mms_api_chat_completions('{"model": "api_inner", "max_tokens": 4, "messages": [
    {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}') r;
-- streaming: chunks, each with the same id, then the usage when asked for
SELECT count(DISTINCT r->>'id') AS ids, bool_and(r->>'object' = 'text_completion') AS objects,
       (array_agg(r ORDER BY n DESC))[1]->'choices' AS last_choices,
       (array_agg(r ORDER BY n DESC))[1]->'usage' ? 'total_tokens' AS last_has_usage
FROM mms_api_completions('{"model": "api_inner", "prompt": "hello", "max_tokens": 4, "stream": true,
                           "stream_options": {"include_usage": true}}') WITH ORDINALITY t(r, n);
-- errors of the plan reach the caller as they are
SELECT pg_temp.try($$SELECT mms_api_completions('{"model": "api_inner", "prompt": "x", "n": 3}')$$);
SELECT pg_temp.try($$SELECT mms_api_chat_completions('{"model": "api_nosuch", "messages": []}')$$);
-- an encoder-only model cannot complete, generate or score: a bad request
-- (22023, HTTP 400) rather than a feature the server lacks (0A000, a 500)
SELECT mms_import('api_enc', :'enc');
SELECT s, pg_temp.try(s) FROM (VALUES
    ($$SELECT mms_api_completions('{"model": "api_enc", "prompt": "x"}')$$),
    ($$SELECT mms_api_chat_completions('{"model": "api_enc", "messages": [{"role": "user", "content": "x"}]}')$$),
    ($$SELECT mms_api_generate('api_enc', '{"input": "x"}')$$),
    ($$SELECT mms_api_score('api_enc', '{"input": "x", "target": "y"}')$$)
) t(s);
SELECT mms_api_tokenize('api_enc', '{"input": "x"}')->'count' AS encoder_tokenizes;
SELECT mms_unregister('api_enc');
-- many messages are checked in one pass (growing arrays in a loop was
-- quadratic: minutes of CPU for a 10 MB body); the first bad one is named
SELECT cardinality(p.inputs) AS inputs, length(p.inputs[1]) AS chars,
       p.inputs[1] LIKE E'user: m1\nassistant: m2\n%\nuser: m4999' AS joined
FROM mms.api_plan('chat', jsonb_build_object('model', 'api_inner', 'messages',
    (SELECT jsonb_agg(jsonb_build_object('role', CASE WHEN i % 2 = 1 THEN 'user' ELSE 'assistant' END,
                                         'content', 'm' || i) ORDER BY i)
     FROM generate_series(1, 4999) i))) p;
SELECT pg_temp.try(format('SELECT mms.api_plan(%L, %L)', 'chat', jsonb_build_object('model', 'api_inner', 'messages',
    (SELECT jsonb_agg(CASE WHEN i = 3000 THEN jsonb_build_object('role', 'user', 'content', 1)
                           WHEN i = 4000 THEN '"x"'::jsonb
                           ELSE jsonb_build_object('role', 'user', 'content', 'm') END ORDER BY i)
     FROM generate_series(1, 5000) i))));

-- ==== models: only those the caller may use exist ============================
SELECT mms_set_alias('api_inner', 'prod', 1);
SELECT jsonb_path_query_array(mms_api_models(), '$.data[*].id') AS admin_sees;
SELECT mms_api_models()->>'object' AS object,
       jsonb_path_query_array(mms_api_models(), '$.data[0].keyvalue().key') AS model_keys,
       (mms_api_models()->'data'->0->>'owned_by') = current_user AS owned_by;
SELECT r - 'created' - 'owned_by' - 'sha256' AS model, r->>'sha256' = sha256 AS sha256
FROM mms_api_model('api_inner@prod') r, mms.models m WHERE m.name = 'api_inner';
SET ROLE regress_mms_api_user;
SELECT jsonb_path_query_array(mms_api_models(), '$.data[*].id') AS user_sees;
SELECT mms_api_model('api_inner:1')->>'id' AS id;
SELECT s, pg_temp.try(s) FROM (VALUES
    ($$SELECT mms_api_model('api_inner:2')$$),
    ($$SELECT mms_api_model('api_inner@beta')$$),
    ($$SELECT mms_api_model('api_hidden')$$),
    ($$SELECT mms_api_model('api_hidden:1')$$),
    ($$SELECT mms_api_model('api_nosuch')$$),
    ($$SELECT mms_api_model('a:b:c')$$),
    ($$SELECT mms_api_completions('{"model": "api_hidden", "prompt": "x"}')$$),
    ($$SELECT mms_api_generate('api_hidden', '{"input": "x"}')$$),
    ($$SELECT mms_api_score('api_hidden', '{"input": "x", "target": "y"}')$$),
    ($$SELECT mms_api_tokenize('api_hidden', '{"input": "x"}')$$),
    ($$SELECT mms_api_unregister('api_hidden')$$),
    -- a model it may use, but not manage
    ($$SELECT mms_api_unregister('api_inner')$$),
    ($$SELECT mms_api_set_alias('api_inner', 'beta', '{"version": 1}')$$),
    ($$SELECT mms_api_drop_alias('api_inner', 'prod')$$)
) t(s);
SET ROLE regress_mms_api_other;
SELECT mms_api_models();
SELECT pg_temp.try($$SELECT mms_api_model('api_inner')$$);
SELECT pg_temp.try($$SELECT mms_api_model('api_inner:7')$$);
SELECT pg_temp.try($$SELECT mms_api_chat_completions('{"model": "api_inner@prod", "messages": [{"role": "user", "content": "x"}]}')$$);
RESET ROLE;

-- ==== generate, score, tokenize =============================================
SET ROLE regress_mms_api_user;
SELECT mms_api_generate('api_inner', '{"inputs": ["one", "two"], "options": {"max_new_tokens": 3}}')
       = jsonb_build_object('model', 'api_inner', 'outputs',
                            to_jsonb(mms_generate_batch('api_inner', ARRAY['one', 'two'], '{"max_new_tokens": 3}'))) AS generate;
SELECT mms_api_generate('api_inner@prod', '{"input": "one", "options": {"max_new_tokens": 3}}')
       = jsonb_build_object('model', 'api_inner@prod', 'outputs',
                            jsonb_build_array(mms_generate('api_inner', 'one', '{"max_new_tokens": 3}'))) AS generate_one;
SELECT mms_api_generate('api_inner', '{"inputs": []}') AS nothing;
SELECT mms_api_score('api_inner', '{"inputs": ["q1", "q2"], "targets": ["a1", "a2"]}')
       = jsonb_build_object('model', 'api_inner', 'scores',
                            to_jsonb(mms_score_batch('api_inner', ARRAY['q1', 'q2'], ARRAY['a1', 'a2']))) AS score;
SELECT jsonb_array_length(mms_api_score('api_inner', '{"input": "q1", "target": "a1"}')->'scores') AS one_score;
SELECT mms_api_tokenize('api_inner', '{"input": "Hello world"}')
       = jsonb_build_object('model', 'api_inner', 'ids', to_jsonb(mms_tokenize('api_inner', 'Hello world')),
                            'count', cardinality(mms_tokenize('api_inner', 'Hello world'))) AS tokenize;
SELECT s, pg_temp.try(s) FROM (VALUES
    ($$SELECT mms_api_generate('api_inner', '[]')$$),
    ($$SELECT mms_api_generate('api_inner', '{}')$$),
    ($$SELECT mms_api_generate('api_inner', '{"prompt": "x"}')$$),
    ($$SELECT mms_api_generate('api_inner', '{"input": "x", "inputs": ["y"]}')$$),
    ($$SELECT mms_api_generate('api_inner', '{"inputs": "x"}')$$),
    ($$SELECT mms_api_generate('api_inner', '{"inputs": ["x", 2]}')$$),
    ($$SELECT mms_api_generate('api_inner', '{"input": 1}')$$),
    ($$SELECT mms_api_generate('api_inner', '{"input": "x", "options": [1]}')$$),
    ($$SELECT mms_api_generate('api_inner', '{"input": "x", "options": {"beams": 2}}')$$),
    ($$SELECT mms_api_generate('api_inner', '{"input": "x", "options": {"max_new_tokens": 0}}')$$),
    ($$SELECT mms_api_score('api_inner', '{"inputs": ["a", "b"], "targets": ["c"]}')$$),
    ($$SELECT mms_api_score('api_inner', '{"inputs": ["a"]}')$$),
    ($$SELECT mms_api_score('api_inner', '{"input": "a", "targets": ["c"]}')$$),
    ($$SELECT mms_api_score('api_inner', '{"input": "a", "target": 3}')$$),
    ($$SELECT mms_api_score('api_inner', '{"inputs": ["a"], "targets": ["c"], "x": 1}')$$),
    ($$SELECT mms_api_tokenize('api_inner', '{}')$$),
    ($$SELECT mms_api_tokenize('api_inner', '{"input": ["x"]}')$$),
    ($$SELECT mms_api_tokenize('api_inner', '{"text": "x"}')$$),
    ($$SELECT mms_api_tokenize('api_inner', '"x"')$$)
) t(s);
RESET ROLE;

-- ==== management: register an upload, aliases, unregister =================
SET ROLE regress_mms_api_admin;
\lo_import :flan
\set upload :LASTOID
SELECT r - 'created' - 'owned_by' - 'sha256' - 'config' AS registered, r->>'owned_by' AS owned_by
FROM mms_api_register('api_up', :upload, NULL, 'api test', 'uploaded') r;
SELECT count(*) AS upload_left FROM pg_largeobject_metadata WHERE oid = :upload;
SELECT r->>'id' AS id, r->>'version' AS version, r->'aliases' AS aliases
FROM mms_api_set_alias('api_up', 'prod', '{"version": 1}') r;
SELECT s, pg_temp.try(s) FROM (VALUES
    ($$SELECT mms_api_set_alias('api_up', 'prod', '{}')$$),
    ($$SELECT mms_api_set_alias('api_up', 'prod', '{"version": "1"}')$$),
    ($$SELECT mms_api_set_alias('api_up', 'prod', '{"version": 0}')$$),
    ($$SELECT mms_api_set_alias('api_up', 'prod', '{"version": 2}')$$),
    ($$SELECT mms_api_set_alias('api_up', 'prod', '{"version": 1, "force": true}')$$),
    ($$SELECT mms_api_set_alias('api_nosuch', 'prod', '{"version": 1}')$$),
    ($$SELECT mms_api_drop_alias('api_up', 'beta')$$),
    ($$SELECT mms_api_register('api_up', 0)$$),
    ($$SELECT mms_api_unregister('api_up:2')$$)
) t(s);
SELECT mms_api_drop_alias('api_up', 'prod');
SELECT mms_api_unregister('api_up');
SELECT pg_temp.try($$SELECT mms_api_unregister('api_up')$$);
RESET ROLE;
-- an upload by someone who may not register stays theirs: nothing happens
SET ROLE regress_mms_api_user;
\lo_import :flan
\set upload :LASTOID
SELECT pg_temp.try(format('SELECT mms_api_register(%L, %s)', 'api_up2', :upload));
SELECT lo_unlink(:upload);
RESET ROLE;
SELECT action, model, detail - 'sha256' - 'size_bytes' AS detail FROM mms.audit_log
WHERE model IN ('api_up', 'api_up2') ORDER BY id;

-- ==== node status: the gateway's only ==========================================
SELECT pg_temp.try($$SELECT mms.api_node_status()$$);
SET ROLE regress_mms_api_user;
SELECT pg_temp.try($$SELECT mms.api_node_status()$$);
SET ROLE mms_gateway;
SELECT s->'in_recovery' AS in_recovery, s->'mms' AS mms,
       jsonb_path_query_array(s, '$.keyvalue().key') AS keys,
       jsonb_path_query_array(s, '$.keyvalue().value.type()') AS types
FROM mms.api_node_status() s;
RESET ROLE;

SELECT mms_unregister('api_inner');
SELECT mms_unregister('api_hidden');
DROP ROLE regress_mms_api_admin, regress_mms_api_user, regress_mms_api_other;
