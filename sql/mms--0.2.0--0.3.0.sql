-- mms--0.2.0--0.3.0.sql — ALTER EXTENSION mms UPDATE from 0.2.0: the result
-- is what mms--0.3.0.sql installs (test/pg/t_upgrade.sh compares the two).
-- Tenancy: quotas, usage metering and the audit log are new objects; nothing
-- that exists changes.

\echo Use "ALTER EXTENSION mms UPDATE TO '0.3.0'" to load this file. \quit

-- ==== tenancy: quotas (src/pg/quota*.c) ====================================
-- One row per (role, model) limit; role 0 (role_name NULL) is PUBLIC, the
-- default for everyone; model NULL covers every model. Roles are bound as in
-- model_grants (oid, name and cluster; mms.restore_quota_role on restore).
-- Only mms_set_quota and mms_drop_quota write it: they also tell every
-- backend to drop its cached limits (a relcache invalidation, replayed on
-- standbys too).
CREATE TABLE mms.role_quotas (
    role                oid NOT NULL,
    role_name           name,
    roles_cluster       bigint NOT NULL DEFAULT mms.cluster_id(),
    model               text,
    requests_per_minute integer CHECK (requests_per_minute > 0),
    tokens_per_minute   integer CHECK (tokens_per_minute > 0),
    tokens_per_day      bigint CHECK (tokens_per_day > 0),
    max_concurrent      integer CHECK (max_concurrent > 0),
    weight              integer CHECK (weight BETWEEN 1 AND 1000),
    set_at              timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE NULLS NOT DISTINCT (role, model)
);
SELECT pg_catalog.pg_extension_config_dump('mms.role_quotas', '');

CREATE FUNCTION mms.restore_quota_role() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r oid;
BEGIN
    IF NEW.role_name IS NULL THEN
        NEW.role := 0;
    ELSE
        r := mms.bind_role(NEW.role, NEW.role_name,
                           NEW.roles_cluster IS NOT DISTINCT FROM mms.cluster_id());
        IF r IS NULL THEN
            RAISE WARNING 'quota of role "%" not restored: the role does not exist', NEW.role_name;
            RETURN NULL;
        END IF;
        NEW.role := r;
        NEW.role_name := (SELECT a.rolname FROM pg_catalog.pg_roles a WHERE a.oid = r);
    END IF;
    NEW.roles_cluster := mms.cluster_id();
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION mms.restore_quota_role() FROM PUBLIC;
CREATE TRIGGER restore_roles BEFORE INSERT ON mms.role_quotas
    FOR EACH ROW EXECUTE FUNCTION mms.restore_quota_role();

CREATE VIEW mms.quotas AS
SELECT CASE WHEN q.role OPERATOR(pg_catalog.=) 0::oid THEN 'public'
            ELSE q.role::regrole::text END AS role,
       q.model,
       q.requests_per_minute,
       q.tokens_per_minute,
       q.tokens_per_day,
       q.max_concurrent,
       coalesce(q.weight, 1) AS weight,
       q.set_at
FROM mms.role_quotas q;
COMMENT ON VIEW mms.quotas IS
    'per-role limits on inference (mms_set_quota); the most specific row applies: role and model, role, public and model, public';

CREATE FUNCTION mms_set_quota(role text, model text DEFAULT NULL,
                              requests_per_minute integer DEFAULT NULL,
                              tokens_per_minute integer DEFAULT NULL,
                              tokens_per_day bigint DEFAULT NULL,
                              max_concurrent integer DEFAULT NULL,
                              weight integer DEFAULT NULL)
    RETURNS mms.quotas
    AS 'MODULE_PATHNAME', 'mms_set_quota'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mms_set_quota(text, text, integer, integer, bigint, integer, integer) IS
    'sets the limits of a role (or ''public'') on a model (NULL: every model); NULL is unlimited; returns the row';

CREATE FUNCTION mms_drop_quota(role text, model text DEFAULT NULL) RETURNS boolean
    AS 'MODULE_PATHNAME', 'mms_drop_quota'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mms_drop_quota(text, text) IS
    'removes a quota row; false if there was none';

CREATE FUNCTION mms_quota_status(model text DEFAULT NULL,
    OUT model text, OUT quota_role text, OUT quota_model text,
    OUT limit_name text, OUT "limit" bigint, OUT remaining bigint, OUT reset_seconds float8)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'mms_quota_status'
    LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION mms_quota_status(text) IS
    'for the calling role: each limit that applies to the model (NULL: every model it has a quota on), what remains now and in how many seconds it is whole again';

-- ==== tenancy: usage metering (src/pg/usage*.c) ============================
-- Counted in shared memory by the calling backends, written here by a flush
-- process the launcher starts every mms.usage_flush_interval (added to the
-- hour's row; mms_usage_flush() asks for one now). Each database's table
-- holds that database's usage. Roles are bound as in model_grants (oid, name
-- and cluster): a row restored into another cluster finds its role by name.
CREATE TABLE mms.usage (
    hour            timestamptz NOT NULL,
    role            oid NOT NULL,               -- 0: a restored row whose role does not exist here
    role_name       name NOT NULL,
    roles_cluster   bigint NOT NULL DEFAULT mms.cluster_id(),
    database        name NOT NULL,
    model           text NOT NULL,
    version         integer NOT NULL,
    calls           bigint NOT NULL DEFAULT 0,
    input_tokens    bigint NOT NULL DEFAULT 0,
    output_tokens   bigint NOT NULL DEFAULT 0,
    compute_ms      float8 NOT NULL DEFAULT 0,
    queue_ms        float8 NOT NULL DEFAULT 0,
    errors          bigint NOT NULL DEFAULT 0,
    cancels         bigint NOT NULL DEFAULT 0,
    rejections      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, role, database, model, version)
);
SELECT pg_catalog.pg_extension_config_dump('mms.usage', '');
COMMENT ON TABLE mms.usage IS
    'inference usage per hour, role and model version: calls, tokens, time, errors, cancels, quota rejections; each role reads its own rows, mms_admin all';

-- A role whose row comes from another cluster and does not exist here
-- becomes role 0 (seen by mms_admin only), such rows of one hour merged.
CREATE FUNCTION mms.restore_usage_role() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    NEW.role := coalesce(mms.bind_role(NEW.role, NEW.role_name, false), 0::oid);
    NEW.roles_cluster := mms.cluster_id();
    IF NEW.role = 0::oid THEN
        UPDATE mms.usage u
        SET calls = u.calls + NEW.calls, input_tokens = u.input_tokens + NEW.input_tokens,
            output_tokens = u.output_tokens + NEW.output_tokens,
            compute_ms = u.compute_ms + NEW.compute_ms, queue_ms = u.queue_ms + NEW.queue_ms,
            errors = u.errors + NEW.errors, cancels = u.cancels + NEW.cancels,
            rejections = u.rejections + NEW.rejections
        WHERE u.hour = NEW.hour AND u.role = 0::oid AND u.database = NEW.database
          AND u.model = NEW.model AND u.version = NEW.version;
        IF FOUND THEN
            RETURN NULL;
        END IF;
    END IF;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION mms.restore_usage_role() FROM PUBLIC;
CREATE TRIGGER restore_roles BEFORE INSERT ON mms.usage
    FOR EACH ROW WHEN (NEW.roles_cluster IS DISTINCT FROM mms.cluster_id())
    EXECUTE FUNCTION mms.restore_usage_role();

-- Who sees what: a role its own usage, superusers and mms_admin all of it.
CREATE FUNCTION mms.usage_visible(role oid) RETURNS boolean
    AS 'MODULE_PATHNAME', 'mms_usage_visible'
    LANGUAGE C STRICT STABLE PARALLEL SAFE;
ALTER TABLE mms.usage ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_usage ON mms.usage FOR SELECT USING (mms.usage_visible(role));

-- This database's usage still in shared memory (on a hot standby, all of it).
CREATE FUNCTION mms.usage_pending_rows(
    OUT hour timestamptz, OUT role oid, OUT role_name name, OUT database name,
    OUT model text, OUT version integer, OUT calls bigint, OUT input_tokens bigint,
    OUT output_tokens bigint, OUT compute_ms float8, OUT queue_ms float8,
    OUT errors bigint, OUT cancels bigint, OUT rejections bigint)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'mms_usage_pending_rows'
    LANGUAGE C VOLATILE PARALLEL RESTRICTED;

-- As the reader (security_invoker): the row policy of mms.usage applies.
CREATE VIEW mms.usage_summary WITH (security_invoker = true) AS
SELECT u.hour::pg_catalog.date AS day,
       coalesce((SELECT a.rolname FROM pg_catalog.pg_roles a WHERE a.oid OPERATOR(pg_catalog.=) u.role)::text,
                pg_catalog.max(u.role_name::text)) AS role,  -- its name now, else as last written
       u.database::text AS database,
       u.model,
       u.version,
       pg_catalog.sum(u.calls)::bigint AS calls,
       pg_catalog.sum(u.input_tokens)::bigint AS input_tokens,
       pg_catalog.sum(u.output_tokens)::bigint AS output_tokens,
       pg_catalog.sum(u.compute_ms) AS compute_ms,
       pg_catalog.sum(u.queue_ms) AS queue_ms,
       pg_catalog.sum(u.errors)::bigint AS errors,
       pg_catalog.sum(u.cancels)::bigint AS cancels,
       pg_catalog.sum(u.rejections)::bigint AS rejections
FROM (SELECT t.hour, t.role, t.role_name, t.database, t.model, t.version, t.calls,
             t.input_tokens, t.output_tokens, t.compute_ms, t.queue_ms, t.errors,
             t.cancels, t.rejections
      FROM mms.usage t
      UNION ALL
      SELECT p.hour, p.role, p.role_name, p.database, p.model, p.version, p.calls,
             p.input_tokens, p.output_tokens, p.compute_ms, p.queue_ms, p.errors,
             p.cancels, p.rejections
      FROM mms.usage_pending_rows() p) u
GROUP BY 1, u.role, u.database, u.model, u.version;
COMMENT ON VIEW mms.usage_summary IS
    'usage per day (in the session''s time zone), role and model version, including what is not yet flushed into mms.usage';

CREATE FUNCTION mms_usage_flush(timeout_ms integer DEFAULT 60000) RETURNS boolean
    AS 'MODULE_PATHNAME', 'mms_usage_flush'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mms_usage_flush(integer) IS
    'writes the usage this database counted so far into mms.usage now (mms_admin); false if that took longer than timeout_ms';

-- ==== tenancy: audit log (src/pg/audit.c) ==================================
-- Written by the registry functions in the same transaction as the change.
CREATE TABLE mms.audit_log (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT pg_catalog.now(),
    role            name NOT NULL,
    action          text NOT NULL,
    model           text,
    detail          jsonb NOT NULL DEFAULT '{}'
);
SELECT pg_catalog.pg_extension_config_dump('mms.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('mms.audit_log_id_seq', '');

REVOKE ALL ON mms.role_quotas, mms.usage, mms.audit_log FROM PUBLIC;
REVOKE ALL ON SEQUENCE mms.audit_log_id_seq FROM PUBLIC;
GRANT SELECT ON mms.quotas TO PUBLIC;
GRANT SELECT ON mms.audit_log TO mms_admin;
-- usage metering: everyone reads mms.usage, its row policy shows each role its own rows
GRANT SELECT ON mms.usage, mms.usage_summary TO PUBLIC;

-- ==== observability: progress ==============================================
-- One row per backend whose statement is making inference requests (src/pg/progress.c),
-- like pg_stat_progress_*; join to pg_stat_activity on pid. Each role sees the
-- rows of roles it has the privileges of; superusers, mms_admin and
-- pg_read_all_stats see all.
CREATE FUNCTION mms.progress_rows(OUT pid integer, OUT database text, OUT role text,
                                  OUT model text, OUT query_start timestamptz,
                                  OUT requests_submitted bigint, OUT requests_finished bigint,
                                  OUT requests_failed bigint, OUT requests_queued integer,
                                  OUT requests_running integer, OUT tokens_generated bigint,
                                  OUT elapsed interval, OUT remaining interval)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'mms_progress_rows'
    LANGUAGE C VOLATILE PARALLEL RESTRICTED;
CREATE VIEW mms.progress AS SELECT * FROM mms.progress_rows();
COMMENT ON VIEW mms.progress IS
    'inference requests of each running statement: submitted, finished, failed, queued, running, tokens generated, estimated time remaining';
GRANT SELECT ON mms.progress TO PUBLIC;

-- ==== observability: histograms and metrics ====
-- Latency and batch-size histograms (src/pg/histograms.c) and the Prometheus
-- exposition of the serving state (src/pg/metrics.c).
CREATE FUNCTION mms.stat_latency_rows(OUT database text, OUT model text, OUT metric text,
                                      OUT p50 float8, OUT p90 float8, OUT p99 float8,
                                      OUT count bigint, OUT sum float8)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'mms_stat_latency'
    LANGUAGE C VOLATILE PARALLEL RESTRICTED;
CREATE VIEW mms.stat_latency AS SELECT * FROM mms.stat_latency_rows();
COMMENT ON VIEW mms.stat_latency IS
    'per database, model version and metric (queue_wait, ttft, total, tpot in seconds; batch_size in rows): quantiles estimated from histogram buckets, count and sum since mms_stat_reset()';
GRANT SELECT ON mms.stat_latency TO PUBLIC;

-- The function checks the caller itself; the grants only keep it out of PUBLIC's list.
CREATE FUNCTION mms_metrics() RETURNS text
    AS 'MODULE_PATHNAME', 'mms_metrics'
    LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION mms_metrics() IS
    'the serving state in the Prometheus text exposition format (superusers, mms_admin and pg_monitor)';
REVOKE ALL ON FUNCTION mms_metrics() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mms_metrics() TO mms_admin, pg_monitor;

-- ==== observability: alerts ================================================
-- Rules of this database (src/pg/alerts.c), written only by mms_set_alert and
-- mms_drop_alert (mms_admin, audited). The per-database maintenance process
-- evaluates them every mms.alert_interval; their states live in shared memory
-- (mms.alerts); each transition is a WARNING in the server log and, on a
-- primary, a row of mms.alert_events and a NOTIFY on channel mms_alerts.
CREATE TABLE mms.alert_rules (
    name            text PRIMARY KEY,
    metric          text NOT NULL CHECK (metric IN ('p99_latency_ms', 'error_ratio',
                        'queue_wait_ms', 'requests_waiting',
                        'quota_rejections_per_minute', 'cache_used_fraction')),
    threshold       float8 NOT NULL,
    for_interval    interval NOT NULL DEFAULT '1 min' CHECK (for_interval >= '0'),
    model           text,
    set_at          timestamptz NOT NULL DEFAULT pg_catalog.now()
);
SELECT pg_catalog.pg_extension_config_dump('mms.alert_rules', '');

CREATE TABLE mms.alert_events (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL,
    rule            text NOT NULL,
    metric          text NOT NULL,
    model           text,
    state           text NOT NULL CHECK (state IN ('firing', 'resolved')),
    value           float8,
    threshold       float8 NOT NULL
);
SELECT pg_catalog.pg_extension_config_dump('mms.alert_events', '');
SELECT pg_catalog.pg_extension_config_dump('mms.alert_events_id_seq', '');
COMMENT ON TABLE mms.alert_events IS
    'alert transitions (firing, resolved) written by the evaluation on a primary';

CREATE FUNCTION mms.alert_states(OUT name text, OUT metric text, OUT state text,
                                 OUT since timestamptz, OUT value float8,
                                 OUT evaluated_at timestamptz)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'mms_alert_states'
    LANGUAGE C VOLATILE PARALLEL RESTRICTED;

-- A rule not evaluated yet (or redefined with another metric, or beyond the
-- states the server keeps) says so: it is not known to be ok.
CREATE VIEW mms.alerts AS
SELECT r.name, r.metric, r.model, r.threshold, r.for_interval,
       coalesce(s.state, 'not evaluated') AS state,
       s.since,
       s.value AS last_value,
       s.evaluated_at AS last_evaluated
FROM mms.alert_rules r
     LEFT JOIN mms.alert_states() s
            ON s.name OPERATOR(pg_catalog.=) r.name AND s.metric OPERATOR(pg_catalog.=) r.metric;
COMMENT ON VIEW mms.alerts IS
    'alert rules of this database (mms_set_alert) and their state: ok, pending or firing, since when, the last value';

CREATE FUNCTION mms_set_alert(name text, metric text, threshold float8,
                              for_interval interval DEFAULT '1 min', model text DEFAULT NULL)
    RETURNS mms.alert_rules
    AS 'MODULE_PATHNAME', 'mms_set_alert'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mms_set_alert(text, text, float8, interval, text) IS
    'creates or replaces an alert rule: fires when metric (of model, NULL: every model) stays above threshold for for_interval; returns the rule';

CREATE FUNCTION mms_drop_alert(name text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'mms_drop_alert'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mms_drop_alert(text) IS
    'removes an alert rule; false if there was none';

REVOKE ALL ON mms.alert_rules, mms.alert_events FROM PUBLIC;
REVOKE ALL ON SEQUENCE mms.alert_events_id_seq FROM PUBLIC;
GRANT SELECT ON mms.alerts TO PUBLIC;
GRANT SELECT ON mms.alert_events TO mms_admin, pg_read_all_stats;
