-- Pool settings: mms_configure writes them (mms_admin only), mms.model_config
-- shows them for every registered model (the defaults when never set), and
-- they go with the last version of a model.
\getenv data MMS_TEST_DATA
\set flan :data '/flan_gated.gguf'
\set relu :data '/t5_relu_tied.gguf'
\set SHOW_CONTEXT never
CREATE ROLE regress_mms_cfg_admin IN ROLE mms_admin;
CREATE ROLE regress_mms_cfg_user;
SELECT mms_import('cfg_flan', :'flan');
SELECT mms_import('cfg_relu', :'relu');

-- errors as SQLSTATE and message
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN others THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

-- every model, with the defaults until configured
SELECT * FROM mms.model_config ORDER BY model;
-- no setting given: the current ones, unchanged
SELECT * FROM mms_configure('cfg_flan');

-- partial updates: NULL (or an omitted argument) leaves a setting as it is
SELECT * FROM mms_configure('cfg_flan', max_workers => 4);
SELECT * FROM mms_configure('cfg_flan', min_workers => 2);
SELECT * FROM mms_configure('cfg_flan', pinned => true, priority => 100);
SELECT * FROM mms_configure('cfg_flan', NULL, NULL, NULL, -7);
SELECT * FROM mms_configure('cfg_flan', min_workers => 0, pinned => false);
SELECT * FROM mms_configure('cfg_relu', 1, 1, true, 1000);
SELECT * FROM mms.model_config ORDER BY model;
-- every version shares its model's settings
SELECT mms_import('cfg_relu', :'flan');
SELECT * FROM mms.model_config ORDER BY model;

-- validation: ranges, min <= max (against the settings already there), names
SELECT s, pg_temp.try(s) FROM (VALUES
    ($$SELECT mms_configure('cfg_flan', min_workers => -1)$$),
    ($$SELECT mms_configure('cfg_flan', min_workers => 65)$$),
    ($$SELECT mms_configure('cfg_flan', max_workers => 0)$$),
    ($$SELECT mms_configure('cfg_flan', max_workers => 65)$$),
    ($$SELECT mms_configure('cfg_flan', priority => 1001)$$),
    ($$SELECT mms_configure('cfg_flan', priority => -1001)$$),
    ($$SELECT mms_configure('cfg_flan', min_workers => 5)$$),
    ($$SELECT mms_configure('cfg_flan', min_workers => 4, max_workers => 3)$$),
    ($$SELECT mms_configure('cfg_relu', max_workers => 0)$$),
    ($$SELECT mms_configure('cfg_flan:1', pinned => true)$$),
    ($$SELECT mms_configure('cfg_flan@default', pinned => true)$$),
    ($$SELECT mms_configure('nope', pinned => true)$$),
    ($$SELECT mms_configure(NULL, pinned => true)$$)) t(s);
SELECT mms_configure('cfg_flan', min_workers => 5);
SELECT mms_configure('cfg_flan', min_workers => 65);
-- a refused call changed nothing
SELECT * FROM mms.model_config ORDER BY model;
-- min_workers up to max_workers in one call
SELECT * FROM mms_configure('cfg_flan', min_workers => 64, max_workers => 64);
SELECT * FROM mms_configure('cfg_flan', 0, 1, false, 0);

-- mms_admin members configure; other roles read the view only
SET ROLE regress_mms_cfg_admin;
SELECT * FROM mms_configure('cfg_flan', priority => 3);
SET ROLE regress_mms_cfg_user;
SELECT mms_configure('cfg_flan', priority => 4);
SELECT * FROM mms.model_config ORDER BY model;
SELECT pg_temp.try('SELECT * FROM mms.model_pool_settings');
SELECT pg_temp.try($$UPDATE mms.model_pool_settings SET pinned = true$$);
RESET ROLE;

-- the table refuses what mms_configure refuses, for writers that bypass it
SELECT pg_temp.try($$INSERT INTO mms.model_pool_settings (name, min_workers) VALUES ('x', 2)$$);
SELECT pg_temp.try($$INSERT INTO mms.model_pool_settings (name, priority) VALUES ('x', 5000)$$);

-- settings stay while a version is left, and go with the last one
SELECT mms_unregister('cfg_relu:1');
SELECT * FROM mms.model_config ORDER BY model;
SELECT mms_unregister('cfg_relu');
SELECT * FROM mms.model_config ORDER BY model;
SELECT name FROM mms.model_pool_settings ORDER BY name;
-- a new registration of the name starts from the defaults
SELECT mms_import('cfg_relu', :'relu');
SELECT * FROM mms.model_config WHERE model = 'cfg_relu';
-- in a transaction that rolls back, the settings of an unregistered model come back
BEGIN;
SELECT mms_configure('cfg_relu', pinned => true);
SAVEPOINT s;
SELECT mms_unregister('cfg_relu');
SELECT count(*) AS settings FROM mms.model_pool_settings WHERE name = 'cfg_relu';
ROLLBACK TO s;
SELECT * FROM mms.model_config WHERE model = 'cfg_relu';
COMMIT;

-- DROP OWNED unregisters a role's models: their settings go too
\lo_import :flan
\set lo :LASTOID
ALTER LARGE OBJECT :lo OWNER TO regress_mms_cfg_admin;
SET ROLE regress_mms_cfg_admin;
SELECT mms_register('cfg_owned', :lo);
SELECT lo_unlink(:lo);
SELECT mms_configure('cfg_owned', pinned => true) IS NOT NULL AS configured;
RESET ROLE;
SELECT name FROM mms.model_pool_settings ORDER BY name;
DROP OWNED BY regress_mms_cfg_admin;
SELECT name FROM mms.model_pool_settings ORDER BY name;

-- labels
SELECT p.oid::regprocedure, p.prorettype::regtype, p.provolatile, p.proparallel, p.proisstrict
FROM pg_proc p WHERE p.proname = 'mms_configure';

-- clean up
SELECT mms_unregister(name) FROM mms.models WHERE name LIKE 'cfg%' ORDER BY name;
SELECT count(*) AS settings_left FROM mms.model_pool_settings;
DROP ROLE regress_mms_cfg_admin;
DROP ROLE regress_mms_cfg_user;
