-- mms.progress: its columns, who may read it, and the row of a statement
-- read from inside that statement (a DO block: one top-level statement).
\getenv data MMS_TEST_DATA
\set flan :data '/flan_gated.gguf'
SELECT mms_import('progress_flan', :'flan') > 0 AS imported;

SELECT attname, format_type(atttypid, atttypmod)
FROM pg_attribute WHERE attrelid = 'mms.progress'::regclass AND attnum > 0 ORDER BY attnum;
CREATE ROLE regress_progress_reader;
SELECT has_table_privilege('regress_progress_reader', 'mms.progress', 'SELECT') AS readable;

-- three requests of one statement, counted as one; nothing in flight at the end
DO $$
DECLARE
    p record;
BEGIN
    PERFORM mms_generate('progress_flan', 'one', '{"max_new_tokens": 4, "min_new_tokens": 4}');
    PERFORM mms_generate_batch('progress_flan', ARRAY['two', 'three'], '{"max_new_tokens": 4, "min_new_tokens": 4}');
    SELECT * INTO p FROM mms.progress WHERE pid = pg_backend_pid();
    RAISE NOTICE 'database %, role %, model %, started with the statement %',
        p.database = current_database(), p.role = current_user, p.model,
        p.query_start = statement_timestamp();
    RAISE NOTICE 'submitted %, finished %, failed %, queued %, running %, tokens %, remaining %, elapsed %',
        p.requests_submitted, p.requests_finished, p.requests_failed, p.requests_queued,
        p.requests_running, p.tokens_generated, p.remaining, p.elapsed >= '0'::interval;
END
$$;
-- the next statement: that row is gone
SELECT count(*) FROM mms.progress WHERE pid = pg_backend_pid();

-- a role sees the rows of roles it has the privileges of: its own
SET ROLE regress_progress_reader;
SELECT count(*) FROM mms.progress;
RESET ROLE;

DROP ROLE regress_progress_reader;
SELECT mms_unregister('progress_flan');
