-- Who may do what: two ordinary roles, alice (a member of mms_admin) and bob
-- (no rights). Managing needs mms_admin; using a model needs ownership or a
-- grant; nobody but the registry reads the stored weights or writes the catalog.
\getenv data MMS_TEST_DATA
\set flan :data '/flan_gated.gguf'
\set SHOW_CONTEXT never
SELECT count(*) AS los_before FROM pg_largeobject_metadata \gset
CREATE ROLE regress_mms_alice;
CREATE ROLE regress_mms_bob;
GRANT mms_admin TO regress_mms_alice;

-- errors that name a large object's oid, with the oid masked
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN others THEN
    RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, '[0-9]{4,}', 'N', 'g');
END $$;

-- a model registered by the superuser
SELECT mms_import('sup', :'flan');
\lo_import :flan
\set sup_lo :LASTOID
SELECT weights AS sup_weights FROM mms.models WHERE name = 'sup' \gset

-- bob can manage nothing
SET ROLE regress_mms_bob;
\lo_import :flan
\set bob_lo :LASTOID
SELECT mms_register('bobs', :bob_lo);
SELECT mms_import('bobs', :'flan');
SELECT mms_unregister('sup');
SELECT mms_set_alias('sup', 'prod', 1);
SELECT mms_drop_alias('sup', 'prod');
SELECT mms_grant('sup', 'regress_mms_bob');
SELECT mms_revoke('sup', 'regress_mms_bob');
SELECT lo_unlink(:bob_lo);
RESET ROLE;

-- alice registers from her own large object
SET ROLE regress_mms_alice;
\lo_import :flan
\set alice_lo :LASTOID
SELECT mms_register('alices', :alice_lo, description => 'registered by alice');
SELECT lo_unlink(:alice_lo);
SELECT name, owner FROM mms.models ORDER BY name;
-- she cannot register a large object she may not read, nor a server file
SELECT pg_temp.try(format('SELECT mms_register(%L, %s)', 'stolen', :sup_lo));
SELECT mms_import('alices', :'flan');
-- a failure inside the registry's own work leaves her role and transaction intact
BEGIN;
SAVEPOINT s;
\lo_import :flan
SELECT mms_register('alices', :LASTOID, '1');
ROLLBACK TO SAVEPOINT s;
SELECT current_user;
SELECT mms_set_alias('alices', 'prod', 1);
COMMIT;
-- the weights she registered belong to the registry, not to her
SELECT lomowner::regrole FROM pg_largeobject_metadata
WHERE oid = (SELECT weights FROM mms.models WHERE name = 'alices');
SELECT pg_temp.try(format('SELECT lo_get(%s)', weights)) FROM mms.models WHERE name = 'alices';
-- as the owner (and an admin) she may use her model
SELECT mms_tokenize('alices', 'hello');
RESET ROLE;

-- bob may not use a model before a grant, may after, and may not after a revoke
SET ROLE regress_mms_bob;
SELECT mms_tokenize('alices', 'hello');
SELECT mms_tokenize('alices@prod', 'hello');
SELECT mms_detokenize('alices', '{5,1}');
RESET ROLE;
SET ROLE regress_mms_alice;
SELECT mms_grant('alices', 'regress_mms_bob');
SELECT model, grantee, grantor FROM mms.grants ORDER BY model, grantee;
RESET ROLE;
SET ROLE regress_mms_bob;
SELECT mms_tokenize('alices', 'hello');
SELECT mms_tokenize('alices:1', 'hello');
SELECT mms_detokenize('alices@prod', '{5,1}');
-- a grant names the model, not another model
SELECT mms_tokenize('sup', 'hello');
RESET ROLE;
SELECT mms_revoke('alices', 'regress_mms_bob');
SET ROLE regress_mms_bob;
SELECT mms_tokenize('alices', 'hello');
RESET ROLE;
-- PUBLIC
SELECT mms_grant('alices', 'PUBLIC');
SELECT mms_grant('alices', 'public');
SET ROLE regress_mms_bob;
SELECT mms_tokenize('alices', 'hello');
RESET ROLE;
SELECT mms_revoke('alices', 'public');
SET ROLE regress_mms_bob;
SELECT mms_tokenize('alices', 'hello');
RESET ROLE;
-- membership counts: a role granted to bob carries its grants
CREATE ROLE regress_mms_readers;
GRANT regress_mms_readers TO regress_mms_bob;
SELECT mms_grant('alices', 'regress_mms_readers');
SET ROLE regress_mms_bob;
SELECT mms_tokenize('alices', 'hello');
RESET ROLE;
SELECT mms_revoke('alices', 'regress_mms_readers');
-- grant errors
SELECT mms_grant('alices', 'regress_mms_nobody');
SELECT mms_grant('nope', 'regress_mms_bob');
SELECT mms_grant('alices:1', 'regress_mms_bob');
SELECT mms_grant('alices', NULL);
-- granting twice is harmless, revoking what was never granted too
SELECT mms_grant('alices', 'regress_mms_bob'), mms_grant('alices', 'regress_mms_bob');
SELECT mms_revoke('alices', 'regress_mms_bob'), mms_revoke('alices', 'regress_mms_bob');
SELECT count(*) FROM mms.grants;

-- bob cannot read the stored weights through the large-object functions
SET ROLE regress_mms_bob;
SELECT pg_temp.try(format('SELECT lo_get(%s)', :sup_weights));
SELECT pg_temp.try(format('SELECT lo_open(%s, 262144)', :sup_weights));
SELECT pg_temp.try(format('SELECT lo_export(%s, %L)', :sup_weights, '/tmp/stolen.gguf'));
SELECT pg_temp.try(format('SELECT lo_unlink(%s)', :sup_weights));
SELECT pg_temp.try(format('SELECT lo_put(%s, 0, %L)', :sup_weights, 'x'));
-- nor write (or read) the catalog tables; the views are for reading
INSERT INTO mms.model_versions (name, version) VALUES ('x', 1);
UPDATE mms.model_versions SET author = 'bob';
DELETE FROM mms.model_versions;
SELECT count(*) FROM mms.model_versions;
INSERT INTO mms.model_aliases VALUES ('sup', 'prod', 1);
INSERT INTO mms.model_grants (name, grantee, grantor, grantor_name) VALUES ('sup', 0, 0, 'regress_mms_bob');
UPDATE mms.models SET author = 'bob';
DELETE FROM mms.grants;
SELECT setval('mms.model_id_seq', 1);
SELECT name, version, owner FROM mms.models ORDER BY name;
SELECT count(*) FROM mms.grants;
RESET ROLE;

-- alice manages models she did not register; unregistering needs no use rights
SET ROLE regress_mms_alice;
SELECT mms_set_alias('sup', 'prod', 1);
SELECT mms_grant('sup', 'regress_mms_bob');
SELECT mms_unregister('sup');
SELECT mms_unregister('alices');
RESET ROLE;

SELECT count(*) AS models FROM mms.models;
SELECT count(*) AS grants FROM mms.grants;
SELECT lo_unlink(:sup_lo);
SELECT count(*) - :los_before AS new_los FROM pg_largeobject_metadata;
DROP ROLE regress_mms_alice;
DROP ROLE regress_mms_bob;
DROP ROLE regress_mms_readers;
