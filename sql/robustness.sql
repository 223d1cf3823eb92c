-- What a hostile user or a careless DBA must not break: numbers that are not
-- finite, role names that look like PUBLIC, roles dropped, renamed or
-- reassigned while models and grants name them, texts too long to tokenize.
-- (Multi-process cases — worker memory, cache freed, views of other databases,
-- DROP EXTENSION, 1 GB texts — are in test/pg/t_robustness.sh.)
\getenv data MMS_TEST_DATA
\set flan :data '/flan_gated.gguf'
\set SHOW_CONTEXT never
SELECT mms_import('rob', :'flan');
CREATE FUNCTION pg_temp.sqlstate_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN others THEN
    RETURN SQLSTATE;
END $$;

-- ---- options: every float finite and representable, the option named ----
SELECT mms_generate('rob', 'x', '{"length_penalty": 1e309}');
SELECT mms_generate('rob', 'x', '{"length_penalty": 1e300, "num_beams": 2}');
SELECT mms_generate('rob', 'x', '{"temperature": 1e-40}');
SELECT mms_generate('rob', 'x', '{"top_p": 1e-50}');
SELECT mms_generate('rob', 'x', '{"repetition_penalty": -1e400}');
-- tiny but representable: sampling stays finite (as greedy: one token dominates)
SELECT mms_generate('rob', 'hello', '{"temperature": 1e-30, "max_new_tokens": 8, "seed": 1}')
     = mms_generate('rob', 'hello', '{"max_new_tokens": 8}') AS tiny_temperature_is_greedy;
SELECT length(mms_generate('rob', 'hello', '{"repetition_penalty": 3e38, "max_new_tokens": 8}')) >= 0
    AS huge_penalty_ok;

-- a model whose weights hold NaN: a clear error naming it, for every kind of call
SELECT mms_import('nan', :'data' || '/bad/nan_weights.gguf');
SELECT mms_generate('nan', 'hello');
SELECT mms_generate_batch('nan', ARRAY['hello', 'world'], '{"num_beams": 2}');
SELECT mms_generate('nan', 'hello', '{"do_sample": true, "seed": 3}');
SELECT mms_score('nan', 'hello', 'world');
SELECT pg_temp.sqlstate_of($$SELECT mms_generate('nan', 'hello')$$) AS floating_point_exception;
SELECT mms_unregister('nan');

-- an encoder-only model is refused in the calling backend, before any worker loads it
SELECT mms_import('enc_only', :'data' || '/t5encoder.gguf');
SELECT mms_generate('enc_only', 'hello');
SELECT mms_score('enc_only', 'hello', 'world');
SELECT count(*) AS enc_only_workers FROM mms.workers WHERE model = 'enc_only:1';
SELECT mms_unregister('enc_only');

-- ---- PUBLIC is 'public' exactly; a role named "Public" is that role ----
CREATE ROLE "Public";
CREATE ROLE regress_mms_carol;
CREATE ROLE regress_mms_dave;
SELECT mms_grant('rob', 'Public');
SELECT model, grantee FROM mms.grants WHERE model = 'rob';
SET ROLE regress_mms_carol;
SELECT mms_tokenize('rob', 'hello');          -- carol is not "Public"
RESET ROLE;
SET ROLE "Public";
SELECT mms_tokenize('rob', 'hello');
RESET ROLE;
SELECT mms_revoke('rob', 'PUBLIC');           -- no such role; the hint says how
SELECT mms_revoke('rob', 'Public');
SELECT count(*) AS grants_left FROM mms.grants WHERE model = 'rob';
DROP ROLE "Public";

-- ---- roles stay bound to the right people ----
SELECT mms_grant('rob', 'regress_mms_carol');
-- refused as core refuses to drop a role that objects depend on
DROP ROLE regress_mms_carol;
-- a rename keeps the grant (bound by oid) and the name a dump carries follows
ALTER ROLE regress_mms_carol RENAME TO regress_mms_carol2;
SELECT model, grantee FROM mms.grants WHERE model = 'rob';
SELECT grantee_name FROM mms.model_grants WHERE name = 'rob';
SET ROLE regress_mms_carol2;
SELECT mms_tokenize('rob', 'hello');
RESET ROLE;
-- a role that registered a model: refused, then REASSIGN OWNED moves it
GRANT mms_admin TO regress_mms_dave;
\lo_import :flan
\set dave_lo :LASTOID
ALTER LARGE OBJECT :dave_lo OWNER TO regress_mms_dave;
SET ROLE regress_mms_dave;
SELECT mms_register('daves', :dave_lo);
SELECT mms_grant('daves', 'regress_mms_carol2');
SELECT lo_unlink(:dave_lo);
RESET ROLE;
DROP ROLE regress_mms_dave;
REASSIGN OWNED BY regress_mms_dave TO CURRENT_USER;
SELECT name, version, owner = current_user::regrole AS owned_by_me FROM mms.models WHERE name = 'daves';
SELECT model, grantee, grantor = current_user::regrole AS granted_by_me FROM mms.grants WHERE model = 'daves';
DROP ROLE regress_mms_dave;
-- DROP OWNED BY removes the grants to a role (and unregisters its models)
DROP OWNED BY regress_mms_carol2;
SELECT count(*) AS carols_grants FROM mms.grants WHERE grantee = 'regress_mms_carol2';
DROP ROLE regress_mms_carol2;
CREATE ROLE regress_mms_erin;
GRANT mms_admin TO regress_mms_erin;
\lo_import :flan
\set erin_lo :LASTOID
ALTER LARGE OBJECT :erin_lo OWNER TO regress_mms_erin;
SET ROLE regress_mms_erin;
SELECT mms_register('erins', :erin_lo);
SELECT lo_unlink(:erin_lo);
RESET ROLE;
SELECT count(*) AS los_before FROM pg_largeobject_metadata \gset
DROP OWNED BY regress_mms_erin;
SELECT count(*) AS erins_models FROM mms.models WHERE name = 'erins';
SELECT :los_before - count(*) AS los_removed FROM pg_largeobject_metadata;
DROP ROLE regress_mms_erin;

-- ---- inputs are bounded before they are tokenized ----
SELECT mms_generate('rob', repeat('a', 70000));
SELECT mms_score('rob', 'x', repeat('a', 40000));
SELECT mms_tokenize('rob', repeat('a', 64 * 1024 * 1024 + 1));
-- within the byte bound but over the token bound: the limit is named
SELECT mms_generate('rob', repeat('a b ', 1000));
-- an interrupt stops a long tokenization (here statement_timeout)
SET statement_timeout = '100ms';
SELECT mms_tokenize('rob', repeat('abc def ', 8000000)) IS NOT NULL;
RESET statement_timeout;
SELECT array_length(mms_tokenize('rob', 'still works'), 1) > 0 AS tokenizer_ok;

-- ---- mms_load is an operator's call ----
CREATE ROLE regress_mms_frank;
SELECT mms_grant('rob', 'regress_mms_frank');
SET ROLE regress_mms_frank;
SELECT mms_load('rob');
RESET ROLE;
SELECT mms_revoke('rob', 'regress_mms_frank');
DROP ROLE regress_mms_frank;

SELECT mms_unregister('daves');
SELECT mms_unregister('rob');
