-- Observability surface: mms.stat_latency (histogram quantiles per model and
-- metric) and mms_metrics() (Prometheus text format), who may read them, and
-- mms_stat_reset() emptying both. Timings are never compared, only counted.
\getenv data MMS_TEST_DATA
\set flan :data '/flan_gated.gguf'
\set SHOW_CONTEXT never
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN others THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

-- the view's columns
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
WHERE attrelid = 'mms.stat_latency'::regclass AND attnum > 0 ORDER BY attnum;
SHOW mms.track_latency;

SELECT mms_import('met_flan', :'flan');
SELECT mms_stat_reset();
SELECT length(mms_generate('met_flan', 'Hello', '{"max_new_tokens": 3, "min_new_tokens": 3}')) > 0 AS generated;
SELECT mms_score('met_flan', 'Hello', 'world') < 0 AS scored;
-- every metric of the model; queue wait, ttft, total and tpot per request, batch sizes per step
SELECT metric, count >= 2 AS counted, p50 <= p90 AND p90 <= p99 AS ordered, sum >= 0 AS summed
FROM mms.stat_latency WHERE database = current_database() AND model = 'met_flan:1' ORDER BY metric;

-- the exposition: families with HELP and TYPE, the model's counters
SELECT count(*) FILTER (WHERE l LIKE '# HELP %') = count(*) FILTER (WHERE l LIKE '# TYPE %') AS help_per_type,
       count(*) FILTER (WHERE l LIKE '# TYPE % histogram') AS histograms
FROM regexp_split_to_table(mms_metrics(), E'\n') l;
SELECT l FROM regexp_split_to_table(mms_metrics(), E'\n') l
WHERE l LIKE 'mms_requests_total{database="' || current_database() || '",model="met_flan:1",%'
   OR l LIKE 'mms_e2e_request_latency_seconds_count{database="' || current_database() || '",model="met_flan:1"}%'
   OR l LIKE 'mms_e2e_request_latency_seconds_bucket{database="' || current_database() || '",model="met_flan:1",le="+Inf"}%'
ORDER BY l;
SELECT l FROM regexp_split_to_table(mms_metrics(), E'\n') l
WHERE l LIKE '# TYPE mms_%' ORDER BY l;

-- who may read the metrics: checked in C as the caller, whatever the grants say
CREATE ROLE regress_mms_met_plain;
CREATE ROLE regress_mms_met_monitor IN ROLE pg_monitor;
CREATE ROLE regress_mms_met_admin IN ROLE mms_admin;
SELECT has_function_privilege('public', 'mms_metrics()', 'EXECUTE') AS public_may_execute;
GRANT EXECUTE ON FUNCTION mms_metrics() TO regress_mms_met_plain;
SET ROLE regress_mms_met_plain;
SELECT pg_temp.try('SELECT mms_metrics()');
-- the view is everyone's, each sees their own database's rows
SELECT count(*) > 0 AS sees_own FROM mms.stat_latency WHERE database = current_database();
SELECT pg_temp.try('SELECT mms_stat_reset()');
RESET ROLE;
SET ROLE regress_mms_met_monitor;
SELECT mms_metrics() LIKE '# HELP mms_%' AS monitor_reads;
RESET ROLE;
SET ROLE regress_mms_met_admin;
SELECT mms_metrics() LIKE '# HELP mms_%' AS admin_reads;
RESET ROLE;

-- the reset empties the histograms
SELECT mms_stat_reset();
SELECT count(*) AS latency_rows_after_reset FROM mms.stat_latency WHERE database = current_database();

REVOKE EXECUTE ON FUNCTION mms_metrics() FROM regress_mms_met_plain;
DROP ROLE regress_mms_met_plain, regress_mms_met_monitor, regress_mms_met_admin;
SELECT mms_unregister('met_flan');
