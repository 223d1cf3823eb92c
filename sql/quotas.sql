-- Quotas: mms_set_quota / mms_drop_quota (mms_admin only) write the rows of
-- mms.quotas; the most specific row applies whole; calls over it fail with
-- 53400 naming the role, the model and the limit; mms_quota_status shows
-- the calling role's limits; roles are bound as PostgreSQL binds them.
\getenv data MMS_TEST_DATA
\set flan :data '/flan_gated.gguf'
\set short :data '/depth_3_1.gguf'
\set SHOW_CONTEXT never
SELECT coalesce(max(id), 0) AS audit_start FROM mms.audit_log \gset
CREATE ROLE regress_mms_q_admin IN ROLE mms_admin;
CREATE ROLE regress_mms_q_a;
CREATE ROLE regress_mms_q_b;
SELECT mms_import('q_flan', :'flan');
SELECT mms_import('q_short', :'short');
SELECT mms_grant('q_flan', 'public');
SELECT mms_grant('q_short', 'public');

-- errors as SQLSTATE and message (and detail, where it says when to retry)
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    d text;
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN others THEN
    GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
    RETURN SQLSTATE || ': ' || SQLERRM || coalesce(' [' || nullif(regexp_replace(d, '[0-9]+ s', 'N s'), '') || ']', '');
END $$;
GRANT EXECUTE ON FUNCTION pg_temp.try(text) TO PUBLIC;

-- no rows: no limits
SELECT * FROM mms.quotas;

-- rows: role or public, a model or every model; NULL limits are unlimited
SELECT role, model, requests_per_minute, tokens_per_minute, tokens_per_day, max_concurrent, weight
FROM mms_set_quota('regress_mms_q_a', 'q_flan', requests_per_minute => 2);
SELECT role, model, requests_per_minute, tokens_per_minute, tokens_per_day, max_concurrent, weight
FROM mms_set_quota('regress_mms_q_a', tokens_per_minute => 100000, weight => 3);
SELECT role, model, requests_per_minute, tokens_per_minute, tokens_per_day, max_concurrent, weight
FROM mms_set_quota('public', 'q_flan', tokens_per_day => 1000000);
SELECT role, model, requests_per_minute, tokens_per_minute, tokens_per_day, max_concurrent, weight
FROM mms_set_quota('public', requests_per_minute => 1000, max_concurrent => 8);
-- setting a row again replaces it whole
SELECT role, model, requests_per_minute, tokens_per_minute, tokens_per_day, max_concurrent, weight
FROM mms_set_quota('public', requests_per_minute => 500);
SELECT role, model, requests_per_minute, tokens_per_minute, tokens_per_day, max_concurrent, weight
FROM mms.quotas ORDER BY role, model NULLS LAST;

-- validation
SELECT s, pg_temp.try(s) FROM (VALUES
    ($$SELECT mms_set_quota(NULL)$$),
    ($$SELECT mms_set_quota('regress_mms_nobody')$$),
    ($$SELECT mms_set_quota('PUBLIC')$$),
    ($$SELECT mms_set_quota('public', 'q_nosuch')$$),
    ($$SELECT mms_set_quota('public', 'q_flan:1')$$),
    ($$SELECT mms_set_quota('public', 'q_flan@prod')$$),
    ($$SELECT mms_set_quota('public', requests_per_minute => 0)$$),
    ($$SELECT mms_set_quota('public', tokens_per_day => -5)$$),
    ($$SELECT mms_set_quota('public', weight => 1001)$$),
    ($$SELECT mms_drop_quota(NULL)$$)
) t(s);

-- mms_admin members manage quotas, others may not; everyone reads mms.quotas
SET ROLE regress_mms_q_admin;
SELECT role, model, max_concurrent FROM mms_set_quota('regress_mms_q_b', 'q_short', max_concurrent => 4);
SET ROLE regress_mms_q_b;
SELECT pg_temp.try($$SELECT mms_set_quota('regress_mms_q_b', requests_per_minute => 100000)$$);
SELECT pg_temp.try($$SELECT mms_drop_quota('regress_mms_q_b', 'q_short')$$);
SELECT count(*) FROM mms.quotas;
RESET ROLE;

-- the most specific row applies, whole: mms_quota_status shows which
SET ROLE regress_mms_q_a;
SELECT model, quota_role, quota_model, limit_name, "limit", remaining
FROM mms_quota_status('q_flan');       -- (role, model)
SELECT model, quota_role, quota_model, limit_name, "limit", remaining
FROM mms_quota_status('q_short');      -- (role, every model)
SELECT model, quota_role, quota_model, limit_name, "limit", remaining
FROM mms_quota_status();
SET ROLE regress_mms_q_b;
SELECT model, quota_role, quota_model, limit_name, "limit", remaining
FROM mms_quota_status('q_flan');       -- (public, model)
SELECT model, quota_role, quota_model, limit_name, "limit", remaining
FROM mms_quota_status('q_short');      -- (role, model)
RESET ROLE;
-- superusers are exempt: nothing applies
SELECT count(*) FROM mms_quota_status('q_flan');

-- calls are charged: two requests a minute, then 53400 with when to retry
SET ROLE regress_mms_q_a;
SELECT length(mms_generate('q_flan', 'one', '{"max_new_tokens": 2}')) > 0;
SELECT pg_temp.try($$SELECT mms_generate_batch('q_flan', ARRAY['two', 'three'], '{"max_new_tokens": 2}')$$);
SELECT length(mms_generate('q_flan', 'two', '{"max_new_tokens": 2}')) > 0;
SELECT pg_temp.try($$SELECT mms_generate('q_flan', 'three', '{"max_new_tokens": 2}')$$);
SELECT pg_temp.try($$SELECT mms_score('q_flan', 'three', 'x')$$);
SELECT limit_name, "limit", remaining, reset_seconds > 0 AS resets FROM mms_quota_status('q_flan');
-- a call no quota state could admit says so
SELECT pg_temp.try($$SELECT mms_generate_batch('q_flan', ARRAY['a', 'b', 'c'])$$);
RESET ROLE;
-- the superuser is not limited by them
SELECT length(mms_generate('q_flan', 'four', '{"max_new_tokens": 2}')) > 0;
-- a new limit applies at once (the backends' cached rows go at commit)
SELECT requests_per_minute FROM mms_set_quota('regress_mms_q_a', 'q_flan', requests_per_minute => 5);
SET ROLE regress_mms_q_a;
SELECT length(mms_generate('q_flan', 'five', '{"max_new_tokens": 2}')) > 0;
RESET ROLE;
-- in a transaction that rolls back, nothing changes
BEGIN;
SELECT mms_drop_quota('regress_mms_q_a', 'q_flan');
ROLLBACK;
SELECT count(*) FROM mms.quotas WHERE role = 'regress_mms_q_a';

-- tokens: input plus max_new_tokens, charged up front
SELECT tokens_per_minute FROM mms_set_quota('regress_mms_q_b', 'q_flan', tokens_per_minute => 50);
SET ROLE regress_mms_q_b;
SELECT cardinality(mms_tokenize('q_flan', 'hello world')) AS input_tokens;
SELECT pg_temp.try($$SELECT mms_generate('q_flan', 'hello world', '{"max_new_tokens": 60}')$$);
SELECT length(mms_generate('q_flan', 'hello world', '{"max_new_tokens": 20}')) > 0;
SELECT pg_temp.try($$SELECT mms_generate_batch('q_flan', ARRAY['hello world', 'hello world'], '{"max_new_tokens": 20}')$$);
SELECT limit_name, "limit", remaining FROM mms_quota_status('q_flan');
RESET ROLE;

-- roles: DROP ROLE is refused while a quota names the role; a rename is
-- followed; DROP OWNED removes the role's quotas
SELECT pg_temp.try($$DROP ROLE regress_mms_q_b$$);
ALTER ROLE regress_mms_q_b RENAME TO regress_mms_q_b2;
SELECT role, model FROM mms.quotas WHERE role LIKE 'regress_mms_q_b%' ORDER BY model;
DROP OWNED BY regress_mms_q_b2;
SELECT count(*) FROM mms.quotas WHERE role LIKE 'regress_mms_q_b%';
DROP ROLE regress_mms_q_b2;

-- dropping: true when a row went
SELECT mms_drop_quota('regress_mms_q_a', 'q_flan'), mms_drop_quota('regress_mms_q_a', 'q_flan');
SELECT mms_drop_quota('regress_mms_q_a');
SELECT mms_drop_quota('public', 'q_flan'), mms_drop_quota('public');
SELECT count(*) FROM mms.quotas;

-- every change is in the audit log, with the limits set (DROP OWNED's too)
SELECT role, action, model, detail FROM mms.audit_log
WHERE action IN ('set_quota', 'drop_quota') AND id > :audit_start ORDER BY id;

DROP OWNED BY regress_mms_q_a;
DROP ROLE regress_mms_q_a;
DROP ROLE regress_mms_q_admin;
SELECT mms_unregister('q_flan');
SELECT mms_unregister('q_short');
