-- API keys of the HTTP gateway: mms_create_api_key (mms_admin, for roles it
-- can become, never a superuser, PUBLIC or a gateway role) returns the key
-- once; mms.api_authenticate (mms_gateway only) maps a working key to its
-- role; revoked and expired keys stop working; each role sees its own keys in
-- mms.api_keys; keys bind roles as quotas do; every change is audited.
\set SHOW_CONTEXT never
CREATE ROLE regress_mms_k_admin IN ROLE mms_admin;
CREATE ROLE regress_mms_k_alice;
CREATE ROLE regress_mms_k_bob;
CREATE ROLE regress_mms_k_carol;
CREATE ROLE regress_mms_k_super SUPERUSER;
-- a gateway login: NOINHERIT, a member of mms_gateway
CREATE ROLE regress_mms_k_gw NOINHERIT IN ROLE mms_gateway;
GRANT regress_mms_k_alice, regress_mms_k_carol TO regress_mms_k_admin;

-- errors as SQLSTATE and message ([detail] {hint}), random key prefixes masked
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    d text;
    h text;
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN others THEN
    GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
    RETURN regexp_replace(SQLSTATE || ': ' || SQLERRM || coalesce(' [' || nullif(d, '') || ']', '')
                          || coalesce(' {' || nullif(h, '') || '}', ''),
                          'API key [0-9]+ \(mms-[0-9a-f]{8}', 'API key N (mms-XXXXXXXX', 'g');
END $$;
GRANT EXECUTE ON FUNCTION pg_temp.try(text) TO PUBLIC;

-- a key: 'mms-' and 64 hex digits, shown once; the NOTICE says what the
-- gateway still needs
SELECT mms_create_api_key('regress_mms_k_alice', 'first') AS alice_key \gset
SELECT :'alice_key' ~ '^mms-[0-9a-f]{64}$' AS well_formed;
GRANT regress_mms_k_alice, regress_mms_k_carol TO mms_gateway;
SET ROLE regress_mms_k_admin;
SELECT mms_create_api_key('regress_mms_k_alice', 'second', now() + interval '1 day') AS alice_key2 \gset
SELECT mms_create_api_key('regress_mms_k_carol') AS carol_key \gset
RESET ROLE;
GRANT mms_admin TO regress_mms_k_carol;
SELECT mms_create_api_key('regress_mms_k_carol', 'admin key') AS admin_key \gset
-- only the hash is stored, and the first 12 characters
SELECT count(*) AS keys,
       bool_and(secret_sha256 = sha256(convert_to(k, 'UTF8')) AND prefix = left(k, 12)) AS hashed
FROM mms.api_key_rows r
JOIN unnest(ARRAY[:'alice_key', :'alice_key2', :'carol_key', :'admin_key']) k
  ON r.prefix = left(k, 12);
SELECT count(DISTINCT k) FROM unnest(ARRAY[:'alice_key', :'alice_key2', :'carol_key', :'admin_key']) k;

-- who may create keys, and for whom
SELECT s, pg_temp.try(s) FROM (VALUES
    ($$SELECT mms_create_api_key(NULL)$$),
    ($$SELECT mms_create_api_key('public')$$),
    ($$SELECT mms_create_api_key('regress_mms_k_nobody')$$),
    ($$SELECT mms_create_api_key('regress_mms_k_super')$$),
    ($$SELECT mms_create_api_key('mms_gateway')$$),
    ($$SELECT mms_create_api_key('regress_mms_k_gw')$$),
    ($$SELECT mms_create_api_key('regress_mms_k_alice', 'old', now() - interval '1 s')$$),
    ($$SELECT mms_revoke_api_key(NULL)$$),
    ($$SELECT mms_revoke_api_key(-1)$$)
) t(s);
SET ROLE regress_mms_k_admin;     -- an administrator, but not a member of bob
SELECT pg_temp.try($$SELECT mms_create_api_key('regress_mms_k_bob')$$);
SELECT pg_temp.try($$SELECT mms_create_api_key('regress_mms_k_super')$$);
SET ROLE regress_mms_k_bob;       -- no administrator
SELECT pg_temp.try($$SELECT mms_create_api_key('regress_mms_k_bob')$$);
SELECT pg_temp.try($$SELECT mms_revoke_api_key(1)$$);
RESET ROLE;

-- the gateway's check: only mms_gateway may call it, as the gateway does
-- (SET ROLE mms_gateway on connecting)
SET ROLE regress_mms_k_bob;
SELECT pg_temp.try(format('SELECT mms.api_authenticate(%L)', :'alice_key'));
SET ROLE regress_mms_k_gw;
SELECT pg_temp.try(format('SELECT mms.api_authenticate(%L)', :'alice_key'));
SET ROLE mms_gateway;
SELECT role, is_admin FROM mms.api_authenticate(:'alice_key');
SELECT role, is_admin FROM mms.api_authenticate(:'alice_key2');
SELECT role, is_admin FROM mms.api_authenticate(:'admin_key');
-- a wrong key, a malformed one, NULL: no row
SELECT count(*) FROM mms.api_authenticate(left(:'alice_key', 67) || 'x');
SELECT count(*) FROM mms.api_authenticate(overlay(:'alice_key' placing '0000' from 20));
SELECT count(*) FROM mms.api_authenticate(upper(:'alice_key'));
SELECT count(*) FROM mms.api_authenticate(NULL);
-- the gateway then runs the request as the key's role
BEGIN;
SET LOCAL ROLE regress_mms_k_alice;
SELECT current_user;
COMMIT;
RESET ROLE;
-- the key ids the gateway gets are the view's
SELECT a.key_id = k.id AS same_id, k.label
FROM mms.api_authenticate(:'alice_key') a JOIN mms.api_keys k ON k.id = a.key_id;

-- last_used: written by a check, then at most once a minute
SELECT last_used AS alice_used FROM mms.api_keys WHERE label = 'first' \gset
SELECT :'alice_used' <> '' AS used, count(*) FROM mms.api_authenticate(:'alice_key');
SELECT last_used = :'alice_used' AS unchanged FROM mms.api_keys WHERE label = 'first';
SELECT label, last_used IS NOT NULL AS used FROM mms.api_keys ORDER BY id;

-- each role sees its own keys, administrators all; nobody reads the hashes
SET ROLE regress_mms_k_alice;
SELECT role, label, expires IS NOT NULL AS expires FROM mms.api_keys ORDER BY id;
SELECT pg_temp.try($$SELECT * FROM mms.api_key_rows$$);
SET ROLE regress_mms_k_bob;
SELECT count(*) FROM mms.api_keys;
SET ROLE regress_mms_k_admin;
SELECT role, label FROM mms.api_keys ORDER BY id;
RESET ROLE;

-- revoked: no longer accepted; revoking twice is false
SELECT id AS key2_id FROM mms.api_keys WHERE label = 'second' \gset
SET ROLE regress_mms_k_admin;
SELECT mms_revoke_api_key(:key2_id), mms_revoke_api_key(:key2_id);
RESET ROLE;
SELECT count(*) FROM mms.api_authenticate(:'alice_key2');
SELECT label, revoked IS NOT NULL AS revoked FROM mms.api_keys ORDER BY id;
-- a rolled-back revoke or creation changes nothing
BEGIN;
SELECT mms_revoke_api_key(id) FROM mms.api_keys WHERE label = 'first';
SELECT mms_create_api_key('regress_mms_k_alice', 'rolled back') IS NOT NULL;
ROLLBACK;
SELECT count(*) FROM mms.api_authenticate(:'alice_key');
SELECT count(*) FROM mms.api_keys WHERE label = 'rolled back';

-- expired: no longer accepted (the clock is moved by rewriting the row)
UPDATE mms.api_key_rows SET expires = now() - interval '1 s' WHERE prefix = left(:'alice_key', 12);
SELECT count(*) FROM mms.api_authenticate(:'alice_key');
UPDATE mms.api_key_rows SET expires = NULL WHERE prefix = left(:'alice_key', 12);
SELECT count(*) FROM mms.api_authenticate(:'alice_key');
-- a role that became a superuser, or can become the gateway, is refused too
ALTER ROLE regress_mms_k_alice SUPERUSER;
SELECT count(*) FROM mms.api_authenticate(:'alice_key');
ALTER ROLE regress_mms_k_alice NOSUPERUSER;
SELECT count(*) FROM mms.api_authenticate(:'alice_key');
SELECT mms_create_api_key('regress_mms_k_bob', 'bob') AS bob_key \gset
SELECT count(*) FROM mms.api_authenticate(:'bob_key');
GRANT mms_gateway TO regress_mms_k_bob;
SELECT count(*) FROM mms.api_authenticate(:'bob_key');
REVOKE mms_gateway FROM regress_mms_k_bob;
SELECT mms_revoke_api_key(id) FROM mms.api_keys WHERE label = 'bob';

-- roles: a rename is followed; DROP ROLE waits for live keys only, and the
-- role's dead keys go with it; DROP OWNED BY removes the role's keys
ALTER ROLE regress_mms_k_alice RENAME TO regress_mms_k_alice2;
SELECT role, label FROM mms.api_keys WHERE label IN ('first', 'second') ORDER BY id;
SELECT DISTINCT role_name FROM mms.api_key_rows WHERE role = 'regress_mms_k_alice2'::regrole;
SELECT role, is_admin FROM mms.api_authenticate(:'alice_key');
SELECT pg_temp.try($$DROP ROLE regress_mms_k_alice2$$);
DROP OWNED BY regress_mms_k_alice2;
SELECT count(*) FROM mms.api_key_rows WHERE role_name = 'regress_mms_k_alice2';
DROP ROLE regress_mms_k_alice2;
SELECT pg_temp.try($$DROP ROLE regress_mms_k_carol$$);
SELECT mms_revoke_api_key(id) FROM mms.api_keys WHERE role = 'regress_mms_k_carol' AND label IS NULL;
UPDATE mms.api_key_rows SET expires = now() - interval '1 s' WHERE prefix = left(:'admin_key', 12);
SELECT count(*) FROM mms.api_key_rows WHERE role_name = 'regress_mms_k_carol';
DROP OWNED BY regress_mms_k_carol;     -- (both keys were dead: no audit row)
SELECT count(*) FROM mms.api_key_rows WHERE role_name = 'regress_mms_k_carol';
SELECT mms_create_api_key('regress_mms_k_carol', 'to be revoked') IS NOT NULL;
SELECT mms_revoke_api_key(id) FROM mms.api_keys WHERE label = 'to be revoked';
SELECT count(*) FROM mms.api_key_rows WHERE role_name = 'regress_mms_k_carol';
DROP ROLE regress_mms_k_carol;
SELECT count(*) FROM mms.api_key_rows WHERE role_name = 'regress_mms_k_carol';

-- a restored row binds its role by name when it comes from another cluster;
-- a key of a role missing here is skipped with a WARNING
INSERT INTO mms.api_key_rows (prefix, secret_sha256, role, role_name, roles_cluster, label)
VALUES ('mms-00000000', sha256('a'), 1, 'regress_mms_k_bob', 0, 'restored'),
       ('mms-11111111', sha256('b'), 1, 'regress_mms_k_gone', 0, 'lost');
SELECT role, label FROM mms.api_keys WHERE label IN ('restored', 'lost');
SELECT role = 'regress_mms_k_bob'::regrole AS bound, roles_cluster = mms.cluster_id() AS here
FROM mms.api_key_rows WHERE label = 'restored';
DELETE FROM mms.api_key_rows;

-- every change is in the audit log (DROP OWNED's of live keys too)
SELECT role, action, model, detail - 'id' - 'prefix' - 'expires' AS detail,
       detail ? 'id' AND detail->>'prefix' ~ '^mms-[0-9a-f]{8}$' AS names_key,
       detail->>'expires' IS NOT NULL AS expires
FROM mms.audit_log WHERE action IN ('create_api_key', 'revoke_api_key') ORDER BY id;

DROP ROLE regress_mms_k_admin, regress_mms_k_bob, regress_mms_k_super, regress_mms_k_gw;
