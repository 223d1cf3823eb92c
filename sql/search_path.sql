-- A search_path hijack: mallory puts an operator, functions and a table that
-- shadow the built-ins in a schema, and an administrator (alice) and a
-- superuser call the mms functions with that schema first in search_path.
-- The registry runs its queries with search_path = pg_catalog, pg_temp and
-- schema-qualified names, so mallory's code never runs (least of all with the
-- registry owner's rights).
\getenv data MMS_TEST_DATA
\set flan :data '/flan_gated.gguf'
CREATE ROLE regress_mms_mallory;
CREATE ROLE regress_mms_alice;
GRANT mms_admin TO regress_mms_alice;
CREATE SCHEMA regress_evil AUTHORIZATION regress_mms_mallory;

SET ROLE regress_mms_mallory;
CREATE TABLE regress_evil.hijacks (by_role text, as_role text);
GRANT ALL ON regress_evil.hijacks TO PUBLIC;
CREATE FUNCTION regress_evil.trap() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO regress_evil.hijacks VALUES (session_user, current_user);
    RAISE NOTICE 'hijacked: running as %', current_user;
    BEGIN
        EXECUTE 'ALTER ROLE regress_mms_mallory SUPERUSER';
    EXCEPTION WHEN others THEN NULL;
    END;
    RETURN true;
END $$;
CREATE FUNCTION regress_evil.texteq(a text, b text) RETURNS boolean LANGUAGE sql AS
$$ SELECT regress_evil.trap() AND a OPERATOR(pg_catalog.=) b $$;
CREATE OPERATOR regress_evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_evil.texteq);
CREATE FUNCTION regress_evil.int4eq(a int, b int) RETURNS boolean LANGUAGE sql AS
$$ SELECT regress_evil.trap() AND a OPERATOR(pg_catalog.=) b $$;
CREATE OPERATOR regress_evil.= (LEFTARG = int, RIGHTARG = int, FUNCTION = regress_evil.int4eq);
CREATE FUNCTION regress_evil.int8eq(a bigint, b bigint) RETURNS boolean LANGUAGE sql AS
$$ SELECT regress_evil.trap() AND a OPERATOR(pg_catalog.=) b $$;
CREATE OPERATOR regress_evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = regress_evil.int8eq);
CREATE FUNCTION regress_evil.int4pl(a int, b int) RETURNS int LANGUAGE sql AS
$$ SELECT CASE WHEN regress_evil.trap() THEN a OPERATOR(pg_catalog.+) b END $$;
CREATE OPERATOR regress_evil.+ (LEFTARG = int, RIGHTARG = int, FUNCTION = regress_evil.int4pl);
CREATE FUNCTION regress_evil.now() RETURNS timestamptz LANGUAGE sql AS
$$ SELECT CASE WHEN regress_evil.trap() THEN pg_catalog.now() END $$;
CREATE FUNCTION regress_evil.lo_create(oid) RETURNS oid LANGUAGE sql AS
$$ SELECT CASE WHEN regress_evil.trap() THEN pg_catalog.lo_create($1) END $$;
CREATE FUNCTION regress_evil.lo_unlink(oid) RETURNS integer LANGUAGE sql AS
$$ SELECT CASE WHEN regress_evil.trap() THEN pg_catalog.lo_unlink($1) END $$;
-- a look-alike catalog table
CREATE TABLE regress_evil.model_versions (LIKE pg_catalog.pg_class);
GRANT USAGE ON SCHEMA regress_evil TO PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA regress_evil TO PUBLIC;
-- the trap is armed: an ordinary query with this search_path walks into it
SET search_path = regress_evil, pg_catalog, public;
SELECT 'a'::text = 'a'::text AS armed;
RESET search_path;
RESET ROLE;
DELETE FROM regress_evil.hijacks;

-- an administrator walks through the registry with the poisoned search_path
SET ROLE regress_mms_alice;
SET search_path = regress_evil, pg_catalog, public;
\lo_import :flan
SELECT mms_register('victim', :LASTOID, author => 'alice');
SELECT pg_catalog.lo_unlink(:LASTOID);
\lo_import :flan
SELECT mms_register('victim', :LASTOID);
SELECT pg_catalog.lo_unlink(:LASTOID);
SELECT mms_set_alias('victim', 'default', 1);
SELECT mms_set_alias('victim', 'default', 2);
SELECT mms_drop_alias('victim', 'default');
SELECT mms_grant('victim', 'regress_mms_mallory');
SELECT mms_revoke('victim', 'regress_mms_mallory');
SELECT mms_grant('victim', 'public');
SELECT mms.resolve('victim') OPERATOR(pg_catalog.>) 0 AS resolved;
SELECT mms.resolve('victim:1') OPERATOR(pg_catalog.>) 0 AS resolved;
SELECT mms.resolve('victim@nothing');
SELECT array_length(mms_tokenize('victim', 'hello world'), 1) AS n_ids;
SELECT mms_detokenize('victim', mms_tokenize('victim:1', 'hello world'));
SELECT mms_unregister('victim:1');
RESET search_path;
RESET ROLE;

-- a superuser, the same way (mms_import too)
SET search_path = regress_evil, pg_catalog, public;
SELECT mms_import('victim', :'flan');
SELECT mms_unregister('victim');
SELECT mms_unregister('victim');
RESET search_path;

-- and mallory herself, using a model granted to PUBLIC
SELECT mms_import('shared', :'flan');
SELECT mms_grant('shared', 'public');
SET ROLE regress_mms_mallory;
SET search_path = regress_evil, pg_catalog, public;
SELECT array_length(mms_tokenize('shared', 'hello'), 1) AS n_ids;
SELECT mms_set_alias('shared', 'default', 1);
RESET search_path;
RESET ROLE;
SELECT mms_unregister('shared');

-- the HTTP API's functions and API keys, the same way: the gateway runs each
-- request as the key's role with that role's search_path. mallory adds the
-- jsonb and text operators the API's functions use.
SET ROLE regress_mms_mallory;
CREATE FUNCTION regress_evil.jsonb_get(a jsonb, b text) RETURNS jsonb LANGUAGE sql AS
$$ SELECT CASE WHEN regress_evil.trap() THEN a OPERATOR(pg_catalog.->) b END $$;
CREATE OPERATOR regress_evil.-> (LEFTARG = jsonb, RIGHTARG = text, FUNCTION = regress_evil.jsonb_get);
CREATE FUNCTION regress_evil.jsonb_get_text(a jsonb, b text) RETURNS text LANGUAGE sql AS
$$ SELECT CASE WHEN regress_evil.trap() THEN a OPERATOR(pg_catalog.->>) b END $$;
CREATE OPERATOR regress_evil.->> (LEFTARG = jsonb, RIGHTARG = text, FUNCTION = regress_evil.jsonb_get_text);
CREATE FUNCTION regress_evil.textcat(a text, b text) RETURNS text LANGUAGE sql AS
$$ SELECT CASE WHEN regress_evil.trap() THEN a OPERATOR(pg_catalog.||) b END $$;
CREATE OPERATOR regress_evil.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_evil.textcat);
CREATE FUNCTION regress_evil.textne(a text, b text) RETURNS boolean LANGUAGE sql AS
$$ SELECT regress_evil.trap() AND a OPERATOR(pg_catalog.<>) b $$;
CREATE OPERATOR regress_evil.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_evil.textne);
CREATE FUNCTION regress_evil.jsonbeq(a jsonb, b jsonb) RETURNS boolean LANGUAGE sql AS
$$ SELECT regress_evil.trap() AND a OPERATOR(pg_catalog.=) b $$;
CREATE OPERATOR regress_evil.= (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = regress_evil.jsonbeq);
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA regress_evil TO PUBLIC;
SET search_path = regress_evil, pg_catalog, public;
SELECT '{"a": 1}'::jsonb -> 'a' AS armed;
RESET search_path;
RESET ROLE;
DELETE FROM regress_evil.hijacks;
SELECT mms_import('api_victim', :'flan');
SELECT mms_grant('api_victim', 'public');
GRANT regress_mms_mallory TO regress_mms_alice;

-- an administrator (a key's role) through every endpoint's function
SET ROLE regress_mms_alice;
SET search_path = regress_evil, pg_catalog, public;
SELECT mms_api_completions('{"model": "api_victim", "prompt": ["x", "y"], "max_tokens": 2,
                             "stop": ["q"], "temperature": 0.5, "seed": 1}') IS NOT NULL AS completion;
SELECT count(*) > 0 AS chat_stream
FROM mms_api_chat_completions('{"model": "api_victim", "max_tokens": 2, "stream": true,
    "stream_options": {"include_usage": true},
    "messages": [{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]}');
SELECT mms_api_models() IS NOT NULL AS models, mms_api_model('api_victim:1') IS NOT NULL AS model;
SELECT mms_api_generate('api_victim', '{"inputs": ["x"], "options": {"max_new_tokens": 2}}') IS NOT NULL AS generate,
       mms_api_score('api_victim', '{"input": "x", "target": "y"}') IS NOT NULL AS score,
       mms_api_tokenize('api_victim', '{"input": "x"}') IS NOT NULL AS tokenize;
SELECT mms_api_set_alias('api_victim', 'prod', '{"version": 1}') IS NOT NULL AS set_alias,
       mms_api_drop_alias('api_victim', 'prod') IS NOT NULL AS drop_alias;
\lo_import :flan
SELECT mms_api_register('api_victim', :LASTOID) IS NOT NULL AS registered;
SELECT mms_api_unregister('api_victim:2') IS NOT NULL AS unregistered;
SELECT mms_create_api_key('regress_mms_mallory', 'mallory') IS NOT NULL AS key;
SELECT count(*) AS keys FROM mms.api_keys;
RESET search_path;
RESET ROLE;
-- the gateway checking a key, and its health check
SELECT mms_create_api_key('regress_mms_mallory', 'checked') AS mallory_key \gset
SET ROLE mms_gateway;
SET search_path = regress_evil, pg_catalog, public;
SELECT role, is_admin FROM mms.api_authenticate(:'mallory_key');
SELECT count(*) AS no_key FROM mms.api_authenticate(pg_catalog.concat('mms-', repeat('0', 64)));
SELECT mms.api_node_status() IS NOT NULL AS node_status;
RESET search_path;
RESET ROLE;
-- and mallory herself, with the model granted to PUBLIC
SET ROLE regress_mms_mallory;
SET search_path = regress_evil, pg_catalog, public;
SELECT count(*) > 0 AS completion_stream
FROM mms_api_completions('{"model": "api_victim", "prompt": "x", "max_tokens": 2, "stream": true}');
SELECT mms_api_tokenize('api_victim', '{"input": "x"}') IS NOT NULL AS tokenize;
SELECT count(*) AS own_keys FROM mms.api_keys;
RESET search_path;
RESET ROLE;
SELECT mms_revoke_api_key(id) FROM mms.api_keys WHERE role OPERATOR(pg_catalog.=) 'regress_mms_mallory';
SELECT mms_unregister('api_victim');

-- nothing ran; mallory is no superuser
SELECT * FROM regress_evil.hijacks;
SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_mms_mallory';
SELECT count(*) AS models FROM mms.models;
DROP SCHEMA regress_evil CASCADE;
DROP ROLE regress_mms_mallory;
DROP ROLE regress_mms_alice;
