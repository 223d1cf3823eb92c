-- The audit log: every change to the registry leaves one row in
-- mms.audit_log, written in the changing transaction (so a rollback leaves
-- none), naming the role that made it; only mms_admin and superusers read it.
\getenv data MMS_TEST_DATA
\set flan :data '/flan_gated.gguf'
\set relu :data '/t5_relu_tied.gguf'
\set SHOW_CONTEXT never
CREATE ROLE regress_mms_audit_admin IN ROLE mms_admin, pg_read_server_files;
CREATE ROLE regress_mms_audit_user;
CREATE ROLE regress_mms_audit_grantee;

-- the rows this test writes, in order; the digest and the fixture directory masked
SELECT coalesce(max(id), 0) AS audit_start FROM mms.audit_log \gset
CREATE TEMP VIEW new_audit AS
SELECT row_number() OVER (ORDER BY a.id) AS n, a.role, a.action, a.model,
       a.detail
       || CASE WHEN a.detail->>'sha256' ~ '^[0-9a-f]{64}$'
               THEN '{"sha256": "(64 hex digits)"}' ELSE '{}' END::jsonb
       || CASE WHEN a.detail ? 'path'
               THEN jsonb_build_object('path', replace(a.detail->>'path', :'data', '$MMS_TEST_DATA'))
               ELSE '{}' END AS detail
FROM mms.audit_log a WHERE a.id > :audit_start;

-- errors as SQLSTATE and message
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN others THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

-- every kind of change, made by an administrator that is not a superuser
SET ROLE regress_mms_audit_admin;
SELECT mms_import('audit_m', :'flan');
\lo_import :relu
SELECT mms_register('audit_m', :LASTOID, description => 'from a large object');
SELECT lo_unlink(:LASTOID);
SELECT mms_set_alias('audit_m', 'prod', 1);
SELECT mms_set_alias('audit_m', 'prod', 2);
SELECT mms_drop_alias('audit_m', 'prod');
SELECT mms_grant('audit_m', 'regress_mms_audit_grantee');
SELECT mms_grant('audit_m', 'public');
SELECT mms_revoke('audit_m', 'public');
SELECT model, max_workers, priority FROM mms_configure('audit_m', max_workers => 2, priority => 5);
SELECT mms_unregister('audit_m:1');
-- what changes nothing leaves nothing: a second grant, revoking what was never
-- granted, a configuration that sets nothing, and errors
SELECT mms_grant('audit_m', 'regress_mms_audit_grantee');
SELECT mms_revoke('audit_m', 'regress_mms_audit_user');
SELECT model FROM mms_configure('audit_m');
SELECT pg_temp.try($$SELECT mms_set_alias('audit_m', 'prod', 9)$$);
SELECT pg_temp.try($$SELECT mms_drop_alias('audit_m', 'nope')$$);
SELECT pg_temp.try($$SELECT mms_configure('audit_m', min_workers => 5)$$);
RESET ROLE;
SELECT n, role, action, model, detail FROM new_audit ORDER BY n;

-- the digest and size are those of the stored weights
SELECT a.detail->>'sha256' = m.sha256 AS sha_ok, (a.detail->>'size_bytes')::bigint = m.size_bytes AS size_ok
FROM mms.audit_log a JOIN mms.models m ON m.name = a.model AND m.version = (a.detail->>'version')::int
WHERE a.id > :audit_start AND a.action = 'register';

-- written in the changing transaction: there it is visible, and a rollback
-- (of the transaction or of a savepoint) takes it away with the change
BEGIN;
SET LOCAL ROLE regress_mms_audit_admin;
SELECT mms_import('audit_rolled_back', :'flan');
SELECT action, model, at = now() AS this_transaction FROM mms.audit_log
WHERE model = 'audit_rolled_back';
ROLLBACK;
BEGIN;
SET LOCAL ROLE regress_mms_audit_admin;
SAVEPOINT s;
SELECT mms_set_alias('audit_m', 'canary', 2);
ROLLBACK TO SAVEPOINT s;
SELECT mms_set_alias('audit_m', 'stable', 2);
COMMIT;
SELECT count(*) AS rolled_back_rows FROM mms.audit_log
WHERE model = 'audit_rolled_back' OR detail->>'alias' = 'canary';
SELECT n, role, action, model, detail FROM new_audit WHERE n > 10 ORDER BY n;

-- who may read it: mms_admin members and superusers; nobody may write it
SET ROLE regress_mms_audit_user;
SELECT count(*) FROM mms.audit_log;
RESET ROLE;
SET ROLE regress_mms_audit_grantee;
SELECT count(*) FROM mms.audit_log;
RESET ROLE;
SET ROLE regress_mms_audit_admin;
SELECT count(*) AS rows_seen FROM mms.audit_log WHERE id > :audit_start;
SELECT pg_temp.try($$DELETE FROM mms.audit_log$$);
SELECT pg_temp.try($$UPDATE mms.audit_log SET role = 'nobody'$$);
SELECT pg_temp.try($$INSERT INTO mms.audit_log (role, action) VALUES ('nobody', 'register')$$);
RESET ROLE;

-- a role dropped later keeps its name in the log
SET ROLE regress_mms_audit_admin;
SELECT mms_unregister('audit_m');
RESET ROLE;
DROP ROLE regress_mms_audit_admin, regress_mms_audit_user, regress_mms_audit_grantee;
SELECT n, role, action, model, detail FROM new_audit WHERE n > 11 ORDER BY n;
SELECT role, count(*) AS n_rows, role IN (SELECT rolname FROM pg_roles) AS role_exists
FROM new_audit GROUP BY role;
SELECT count(*) AS models_left FROM mms.models WHERE name LIKE 'audit%';
