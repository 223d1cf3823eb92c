-- Privacy of usage rows: each role reads its own rows of mms.usage and
-- mms.usage_summary, a member of mms_admin every row; nobody but the flush
-- writes them. Rows restored from another cluster are bound to roles by name.
-- The rows are inserted here by hand: metering itself (calls, tokens,
-- flushes, restarts) is test/pg/t_usage.sh's.
\set SHOW_CONTEXT never
SET TimeZone = 'UTC';
CREATE ROLE regress_usage_ann;
CREATE ROLE regress_usage_ben;
CREATE ROLE regress_usage_boss IN ROLE mms_admin;
INSERT INTO mms.usage (hour, role, role_name, database, model, version, calls, input_tokens,
                       output_tokens, compute_ms)
SELECT '2024-03-01 10:00+00'::timestamptz + h * interval '1 hour', r.oid, r.rolname,
       current_database(), 'regress_m', 1, 1 + h, 10, 5, 2.5
FROM pg_roles r, generate_series(0, 1) h
WHERE r.rolname IN ('regress_usage_ann', 'regress_usage_ben');

SET ROLE regress_usage_ann;
SELECT role_name, count(*) AS hours, sum(calls) AS calls FROM mms.usage
WHERE model = 'regress_m' GROUP BY role_name;
SELECT day, role, model, version, calls, input_tokens, output_tokens, compute_ms, rejections
FROM mms.usage_summary WHERE model = 'regress_m';
INSERT INTO mms.usage (hour, role, role_name, database, model, version)
VALUES (now(), 0, 'x', current_database(), 'regress_m', 1);
UPDATE mms.usage SET calls = 0 WHERE model = 'regress_m';
SELECT mms_usage_flush();
RESET ROLE;

SET ROLE regress_usage_boss;
SELECT day, role, calls, input_tokens FROM mms.usage_summary WHERE model = 'regress_m' ORDER BY role;
RESET ROLE;

-- a dump of another cluster: roles found by name; missing ones become role 0,
-- their rows of one hour merged
INSERT INTO mms.usage (hour, role, role_name, roles_cluster, database, model, version, calls)
VALUES ('2024-03-01 10:00+00', 1, 'regress_usage_ben', 0, current_database(), 'regress_m', 2, 7),
       ('2024-03-01 10:00+00', 2, 'regress_gone_1', 0, current_database(), 'regress_m', 2, 1),
       ('2024-03-01 10:00+00', 3, 'regress_gone_2', 0, current_database(), 'regress_m', 2, 2);
SELECT role = 'regress_usage_ben'::regrole AS ben, role = 0 AS nobody, role_name, calls,
       roles_cluster = mms.cluster_id() AS bound_here
FROM mms.usage WHERE model = 'regress_m' AND version = 2 ORDER BY role_name;
SET ROLE regress_usage_ben;
SELECT version, calls FROM mms.usage WHERE model = 'regress_m' ORDER BY version, hour;
RESET ROLE;

DELETE FROM mms.usage WHERE model = 'regress_m';
RESET TimeZone;
DROP ROLE regress_usage_ann, regress_usage_ben, regress_usage_boss;
