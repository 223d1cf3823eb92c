-- Alerts: mms_set_alert / mms_drop_alert (mms_admin only, audited) write the
-- rules of mms.alert_rules; mms.alerts shows each rule with its state. The
-- evaluation itself (states, notifications, events) runs in the maintenance
-- process: test/pg/t_alerts.sh.
\getenv data MMS_TEST_DATA
\set flan :data '/flan_gated.gguf'
\set SHOW_CONTEXT never
CREATE ROLE regress_mms_al_admin IN ROLE mms_admin;
CREATE ROLE regress_mms_al_user;
SELECT mms_import('al_flan', :'flan');

CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN others THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
GRANT EXECUTE ON FUNCTION pg_temp.try(text) TO PUBLIC;

-- the view's columns
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
WHERE attrelid = 'mms.alerts'::regclass AND attnum > 0 ORDER BY attnum;
SELECT * FROM mms.alerts;

-- rules: every model or one model; the defaults (1 min, every model)
SELECT name, metric, threshold, for_interval, model
FROM mms_set_alert('slow', 'p99_latency_ms', 2000);
SELECT name, metric, threshold, for_interval, model
FROM mms_set_alert('errors', 'error_ratio', 0.05, '30 s', 'al_flan');
SELECT name, metric, threshold, for_interval, model
FROM mms_set_alert('backlog', 'requests_waiting', 10, '0');
SELECT name, metric, threshold, for_interval, model
FROM mms_set_alert('waits', 'queue_wait_ms', 500, '10 s');
SELECT name, metric, threshold, for_interval, model
FROM mms_set_alert('refused', 'quota_rejections_per_minute', 1, model => 'al_flan');
SELECT name, metric, threshold, for_interval, model
FROM mms_set_alert('full', 'cache_used_fraction', 0.9);
-- setting again replaces the whole rule
SELECT name, metric, threshold, for_interval, model
FROM mms_set_alert('errors', 'error_ratio', 0.1, '1 min');
-- a rule not evaluated yet is ok, with no value
SELECT name, metric, model, threshold, for_interval, state, last_value FROM mms.alerts ORDER BY name;

-- validation
SELECT pg_temp.try($$SELECT mms_set_alert('x', 'latency', 1)$$);
SELECT pg_temp.try($$SELECT mms_set_alert(NULL, 'error_ratio', 1)$$);
SELECT pg_temp.try($$SELECT mms_set_alert('', 'error_ratio', 1)$$);
SELECT pg_temp.try($$SELECT mms_set_alert('a b', 'error_ratio', 1)$$);
SELECT pg_temp.try($$SELECT mms_set_alert(repeat('n', 64), 'error_ratio', 1)$$);
SELECT pg_temp.try($$SELECT mms_set_alert('x', NULL, 1)$$);
SELECT pg_temp.try($$SELECT mms_set_alert('x', 'error_ratio', NULL)$$);
SELECT pg_temp.try($$SELECT mms_set_alert('x', 'error_ratio', 'NaN')$$);
SELECT pg_temp.try($$SELECT mms_set_alert('x', 'error_ratio', 'Infinity')$$);
SELECT pg_temp.try($$SELECT mms_set_alert('x', 'error_ratio', 1, '-1 s')$$);
SELECT pg_temp.try($$SELECT mms_set_alert('x', 'error_ratio', 1, NULL)$$);
SELECT pg_temp.try($$SELECT mms_set_alert('x', 'error_ratio', 1, '1 min', 'nosuch')$$);
SELECT pg_temp.try($$SELECT mms_set_alert('x', 'error_ratio', 1, '1 min', 'al_flan:1')$$);
SELECT pg_temp.try($$SELECT mms_drop_alert(NULL)$$);
SELECT count(*) AS rules FROM mms.alert_rules;

-- privileges: mms_admin manages rules, everyone reads mms.alerts, the tables are closed
SET ROLE regress_mms_al_user;
SELECT pg_temp.try($$SELECT mms_set_alert('x', 'error_ratio', 1)$$);
SELECT pg_temp.try($$SELECT mms_drop_alert('slow')$$);
SELECT pg_temp.try($$SELECT count(*) FROM mms.alert_rules$$);
SELECT pg_temp.try($$SELECT count(*) FROM mms.alert_events$$);
SELECT pg_temp.try($$INSERT INTO mms.alert_rules (name, metric, threshold) VALUES ('x', 'error_ratio', 1)$$);
SELECT count(*) AS visible FROM mms.alerts;
RESET ROLE;
SET ROLE regress_mms_al_admin;
SELECT name, threshold FROM mms_set_alert('by_admin', 'requests_waiting', 100);
SELECT mms_drop_alert('by_admin');
SELECT count(*) AS events FROM mms.alert_events;
RESET ROLE;

-- dropping: true when a rule went
SELECT mms_drop_alert('slow'), mms_drop_alert('slow');
SELECT mms_drop_alert(name) FROM mms.alert_rules ORDER BY name;
SELECT count(*) FROM mms.alerts;

-- every change is in the audit log
SELECT role, action, model, detail FROM mms.audit_log
WHERE action IN ('set_alert', 'drop_alert') ORDER BY id;

-- the tables are dumped with the database
SELECT c.relname FROM pg_extension e, unnest(e.extconfig) r JOIN pg_class c ON c.oid = r
WHERE e.extname = 'mms' AND c.relname LIKE 'alert%' ORDER BY 1;

DROP ROLE regress_mms_al_user;
DROP OWNED BY regress_mms_al_admin;
DROP ROLE regress_mms_al_admin;
SELECT mms_unregister('al_flan');
