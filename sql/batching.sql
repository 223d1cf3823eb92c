-- Transparent batching: the planner puts an MmsBatch node over the plan node
-- whose target list calls mms_generate / mms_score per row with a model and
-- options that do not vary per row; it sends many rows' calls at once and
-- returns what one call per row returns, errors included. The model has
-- random weights: texts are noise, but deterministic.
\getenv data MMS_TEST_DATA
\set flan :data '/flan_gated.gguf'
\set SHOW_CONTEXT never
SELECT mms_import('bt_flan', :'flan');
CREATE TABLE bt_in (id int PRIMARY KEY, raw text, tgt text);
INSERT INTO bt_in
SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE 'input number ' || g END,
       CASE WHEN g % 11 = 0 THEN NULL ELSE 'target ' || (g % 5) END
FROM generate_series(1, 150) g;
CREATE TABLE bt_side (id int, note text);
INSERT INTO bt_side SELECT g, 'note ' || g FROM generate_series(1, 150, 2) g;
SET mms.batch_rows = 16;

-- ---- what is batched: each statement kind ----------------------------------
EXPLAIN (COSTS OFF) SELECT id, mms_generate('bt_flan', raw) FROM bt_in;
EXPLAIN (COSTS OFF, VERBOSE)
SELECT id, upper(mms_generate('bt_flan', 'fix: ' || raw, '{"max_new_tokens": 4}')) AS fixed,
       mms_score('bt_flan', raw, tgt) AS score
FROM bt_in;
CREATE TABLE bt_out (id int, out text);
EXPLAIN (COSTS OFF) INSERT INTO bt_out SELECT id, mms_generate('bt_flan', raw) FROM bt_in;
EXPLAIN (COSTS OFF) CREATE TABLE bt_ctas AS SELECT id, mms_generate('bt_flan', raw) FROM bt_in;
EXPLAIN (COSTS OFF) UPDATE bt_out SET out = mms_generate('bt_flan', out) WHERE id > 10;
-- joins and WHERE below the node
EXPLAIN (COSTS OFF)
SELECT i.id, mms_generate('bt_flan', i.raw || ' ' || s.note)
FROM bt_in i JOIN bt_side s USING (id) WHERE i.id % 3 = 0;
-- ORDER BY ... LIMIT: the calls are made after the sort, and the LIMIT bounds the reading
EXPLAIN (COSTS OFF) SELECT id, mms_generate('bt_flan', raw) FROM bt_in ORDER BY id DESC LIMIT 5;
-- a prepared statement's generic plan, model and options as parameters
PREPARE bt_p(text, jsonb) AS SELECT id, mms_generate($1, raw, $2) FROM bt_in WHERE id <= 20;
SET plan_cache_mode = force_generic_plan;
EXPLAIN (COSTS OFF) EXECUTE bt_p('bt_flan', '{"max_new_tokens": 3}');
RESET plan_cache_mode;
-- a VALUES list as the input
EXPLAIN (COSTS OFF) SELECT mms_generate('bt_flan', v) FROM (VALUES ('a'), ('b')) AS x(v);
-- the inner side of a lateral join: rescanned per outer row
EXPLAIN (COSTS OFF)
SELECT s.id, g FROM bt_side s, LATERAL (SELECT mms_generate('bt_flan', i.raw) g FROM bt_in i WHERE i.id = s.id) x;

-- ---- what is left alone ------------------------------------------------------
-- guarded by CASE / COALESCE / AND / OR: the call may not run for every row
EXPLAIN (COSTS OFF) SELECT id, CASE WHEN id > 5 THEN mms_generate('bt_flan', raw) END FROM bt_in;
EXPLAIN (COSTS OFF) SELECT id, coalesce(raw, mms_generate('bt_flan', 'x')) FROM bt_in;
EXPLAIN (COSTS OFF) SELECT id, id > 3 AND mms_score('bt_flan', raw, tgt) > -50 FROM bt_in;
-- in WHERE, in an aggregate, in RETURNING, in VALUES
EXPLAIN (COSTS OFF) SELECT id FROM bt_in WHERE mms_generate('bt_flan', raw) <> '';
EXPLAIN (COSTS OFF) SELECT count(mms_generate('bt_flan', raw)) FROM bt_in;
EXPLAIN (COSTS OFF) INSERT INTO bt_out VALUES (1, 'a') RETURNING mms_generate('bt_flan', out);
EXPLAIN (COSTS OFF) SELECT * FROM (VALUES (mms_generate('bt_flan', 'a')), (mms_generate('bt_flan', 'b'))) AS x(v);
-- a model or options that vary per row
EXPLAIN (COSTS OFF) SELECT mms_generate(CASE WHEN id > 1 THEN 'bt_flan' END, raw) FROM bt_in;
EXPLAIN (COSTS OFF) SELECT mms_generate('bt_flan', raw, jsonb_build_object('max_new_tokens', id % 3 + 1)) FROM bt_in;
-- under a subscript (not evaluated for a NULL array), in a nested assignment
-- (it reads the old value), and a C function on the same symbol declared
-- SECURITY DEFINER, with a SET clause or parallel safe: called as written
EXPLAIN (COSTS OFF) SELECT (NULL::text[])[length(mms_generate('bt_nope', raw))] FROM bt_in;
SELECT count(*) AS nulls FROM (SELECT (NULL::text[])[length(mms_generate('bt_nope', raw))] x FROM bt_in) s WHERE x IS NULL;
CREATE TYPE bt_pair AS (a text, b text);
CREATE TABLE bt_nest (id int, arr bt_pair[]);
INSERT INTO bt_nest SELECT g, ARRAY[ROW('x', 'y')::bt_pair] FROM generate_series(1, 3) g;
EXPLAIN (COSTS OFF) UPDATE bt_nest SET arr[1].a = mms_generate('bt_flan', 'hello', '{"max_new_tokens": 2}');
UPDATE bt_nest SET arr[1].a = mms_generate('bt_flan', 'hello', '{"max_new_tokens": 2}');
SELECT DISTINCT (arr[1]).b FROM bt_nest;
CREATE FUNCTION bt_gen_definer(text, text, jsonb) RETURNS text LANGUAGE c SECURITY DEFINER AS 'mms', 'mms_generate';
CREATE FUNCTION bt_gen_set(text, text, jsonb) RETURNS text LANGUAGE c SET mms.max_new_tokens = 1 AS 'mms', 'mms_generate';
CREATE FUNCTION bt_gen_safe(text, text, jsonb) RETURNS text LANGUAGE c PARALLEL SAFE AS 'mms', 'mms_generate';
CREATE FUNCTION bt_gen_plain(text, text, jsonb) RETURNS text LANGUAGE c AS 'mms', 'mms_generate';
EXPLAIN (COSTS OFF)
SELECT bt_gen_definer('bt_flan', raw, '{}'), bt_gen_set('bt_flan', raw, '{}'), bt_gen_safe('bt_flan', raw, '{}') FROM bt_in;
-- the same symbol under another name is batched
EXPLAIN (COSTS OFF) SELECT bt_gen_plain('bt_flan', raw, '{}') FROM bt_in;
DROP FUNCTION bt_gen_definer, bt_gen_set, bt_gen_safe, bt_gen_plain;
-- one row: no batch
EXPLAIN (COSTS OFF) SELECT mms_generate('bt_flan', 'x');
-- switched off: the plain plan
SET mms.transparent_batching = off;
EXPLAIN (COSTS OFF) SELECT id, mms_generate('bt_flan', raw) FROM bt_in;
RESET mms.transparent_batching;

-- ---- the same results as one call per row -----------------------------------
CREATE FUNCTION pg_temp.bt_run(sql text, batching boolean) RETURNS SETOF record LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('mms.transparent_batching', batching::text, true);
    RETURN QUERY EXECUTE sql;
END $$;
CREATE TEMP TABLE bt_sql (what text, sql text);
INSERT INTO bt_sql VALUES
  ('greedy', $q$SELECT id, mms_generate('bt_flan', raw, '{"max_new_tokens": 8}')::text FROM bt_in$q$),
  ('sampling with a seed', $q$SELECT id, mms_generate('bt_flan', raw, '{"max_new_tokens": 8, "do_sample": true, "temperature": 0.9, "seed": 11}')::text FROM bt_in$q$),
  ('beam search', $q$SELECT id, mms_generate('bt_flan', raw, '{"max_new_tokens": 6, "num_beams": 3}')::text FROM bt_in WHERE id <= 40$q$),
  ('two calls and a join', $q$SELECT i.id, mms_generate('bt_flan', i.raw, '{"max_new_tokens": 4}') || '|' || mms_generate('bt_flan', s.note, '{"max_new_tokens": 4}') FROM bt_in i JOIN bt_side s USING (id)$q$),
  ('nested calls', $q$SELECT id, mms_generate('bt_flan', mms_generate('bt_flan', raw, '{"max_new_tokens": 3}'), '{"max_new_tokens": 3}') FROM bt_in WHERE id <= 40$q$),
  ('LIMIT', $q$SELECT id, mms_generate('bt_flan', raw, '{"max_new_tokens": 5}') FROM bt_in ORDER BY id DESC LIMIT 7$q$);
SELECT b.what,
       (SELECT count(*) FROM pg_temp.bt_run(b.sql, true) AS r(id int, out text)) AS rows,
       (SELECT count(*) FROM pg_temp.bt_run(b.sql, true) AS r(id int, out text) WHERE out IS NULL) AS nulls,
       (SELECT array_agg(r ORDER BY id) FROM pg_temp.bt_run(b.sql, true) AS r(id int, out text))
     = (SELECT array_agg(r ORDER BY id) FROM pg_temp.bt_run(b.sql, false) AS r(id int, out text)) AS same
FROM bt_sql b;
-- scores: a row of a batch may round differently from a call alone (compared to 1e-4); NULL in, NULL out
SELECT count(*) AS rows, count(*) FILTER (WHERE a.s IS NULL) AS nulls,
       bool_and(a.s IS NULL AND b.s IS NULL OR abs(a.s - b.s) < 1e-4) AS same
FROM pg_temp.bt_run($q$SELECT id, mms_score('bt_flan', raw, tgt) FROM bt_in$q$, true) AS a(id int, s float8)
JOIN pg_temp.bt_run($q$SELECT id, mms_score('bt_flan', raw, tgt) FROM bt_in$q$, false) AS b(id int, s float8) USING (id);
-- a NULL model: mms_score (STRICT) gives NULL, mms_generate raises as it does alone
SELECT count(*) FILTER (WHERE s IS NULL) AS nulls FROM (SELECT mms_score(NULL, raw, tgt) s FROM bt_in) x;
SELECT mms_generate(NULL, raw) FROM bt_in;
-- no row, no call: an unknown model raises nothing
SELECT mms_generate('bt_nope', raw) FROM bt_in WHERE false;
SELECT mms_generate('bt_nope', raw) FROM bt_in;

-- every statement kind writes what one call per row writes
INSERT INTO bt_out SELECT id, mms_generate('bt_flan', raw, '{"max_new_tokens": 4}') FROM bt_in;
CREATE TABLE bt_ctas AS SELECT id, mms_generate('bt_flan', raw, '{"max_new_tokens": 4}') AS out FROM bt_in;
CREATE TABLE bt_upd AS SELECT id, raw, NULL::text AS out FROM bt_in;
UPDATE bt_upd SET out = mms_generate('bt_flan', raw, '{"max_new_tokens": 4}') WHERE id % 2 = 1;
EXECUTE bt_p('bt_flan', '{"max_new_tokens": 4}') \g /dev/null
SET mms.transparent_batching = off;
CREATE TABLE bt_ref AS SELECT id, mms_generate('bt_flan', raw, '{"max_new_tokens": 4}') AS out FROM bt_in;
RESET mms.transparent_batching;
SELECT (SELECT count(*) FROM bt_out JOIN bt_ref USING (id) WHERE bt_out.out IS NOT DISTINCT FROM bt_ref.out) AS insert_same,
       (SELECT count(*) FROM bt_ctas JOIN bt_ref USING (id) WHERE bt_ctas.out IS NOT DISTINCT FROM bt_ref.out) AS ctas_same,
       (SELECT count(*) FROM bt_upd JOIN bt_ref USING (id)
        WHERE bt_upd.out IS NOT DISTINCT FROM CASE WHEN id % 2 = 1 THEN bt_ref.out END) AS update_same;
COPY (SELECT id, mms_generate('bt_flan', raw, '{"max_new_tokens": 4}') FROM bt_in WHERE id IN (6, 7, 8) ORDER BY id) TO STDOUT;
SELECT id, out FROM bt_ref WHERE id IN (6, 7, 8) ORDER BY id;

-- ---- errors come with their row ----------------------------------------------
-- row 5's input is too long: rows 1..4 come out first, then its error, as one call per row does
CREATE TABLE bt_err AS SELECT g AS id, CASE WHEN g = 5 THEN repeat('x ', 100000) ELSE 'row ' || g END AS raw
FROM generate_series(1, 12) g;
BEGIN;
DECLARE bt_c CURSOR FOR SELECT id, mms_generate('bt_flan', raw, '{"max_new_tokens": 3}') IS NOT NULL AS ok FROM bt_err ORDER BY id;
FETCH 4 FROM bt_c;
FETCH 1 FROM bt_c;
ROLLBACK;
DO $$
DECLARE
    r record;
    n int := 0;
BEGIN
    FOR r IN SELECT id, mms_generate('bt_flan', raw, '{"max_new_tokens": 3}') FROM bt_err ORDER BY id LOOP
        n := n + 1;
    END LOOP;
EXCEPTION WHEN program_limit_exceeded THEN
    RAISE NOTICE 'failed after % rows: %', n, SQLERRM;
END $$;
-- mms_score resolves its model at the first row with no NULL argument: read
-- ahead, that row waits for its turn, so the NULL rows before it come out first
BEGIN;
DECLARE bt_sc CURSOR FOR SELECT id, mms_score('bt_nope', CASE WHEN id > 2 THEN raw END, 'x') FROM bt_err;
FETCH 2 FROM bt_sc;
FETCH 1 FROM bt_sc;
ROLLBACK;
-- an option error fails the statement at its first row, as alone
SELECT mms_generate('bt_flan', raw, '{"max_new_tokens": 0}') FROM bt_in;
SELECT mms_generate('bt_flan', raw, '{"bogus": 1}') FROM bt_in;

-- ---- LIMIT: no calls far beyond what is returned -----------------------------
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)
SELECT id, mms_generate('bt_flan', raw, '{"max_new_tokens": 3}') FROM bt_in WHERE raw IS NOT NULL LIMIT 3;
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)
SELECT id, mms_generate('bt_flan', raw, '{"max_new_tokens": 3}') FROM bt_in WHERE raw IS NOT NULL LIMIT 20 OFFSET 5;
-- a reader that stops early: batches start at one row and double (1, 2, 4 ...),
-- so EXISTS makes 3 calls per outer row, and a LIMIT above a filter a few more than it uses
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)
SELECT s.id FROM bt_side s
WHERE s.id <= 7 AND EXISTS (SELECT 1 FROM (SELECT mms_generate('bt_flan', raw, '{"max_new_tokens": 2}') g
                                           FROM bt_in i WHERE i.id > s.id) x WHERE g IS NOT NULL);
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)
SELECT * FROM (SELECT id, mms_generate('bt_flan', raw, '{"max_new_tokens": 2}') g FROM bt_in) s WHERE g <> '' LIMIT 5;
-- without a LIMIT, 150 rows in batches of 1, 2, 4, 8, then 16 (NULL inputs make no request)
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)
SELECT id, mms_generate('bt_flan', raw, '{"max_new_tokens": 3}') FROM bt_in;

-- ---- a scrollable cursor reads back what it returned ------------------------
BEGIN;
DECLARE bt_s SCROLL CURSOR FOR SELECT id, mms_generate('bt_flan', raw, '{"max_new_tokens": 3}') AS out FROM bt_in WHERE id <= 5;
FETCH 3 FROM bt_s;
FETCH BACKWARD 2 FROM bt_s;
FETCH ALL FROM bt_s;
ROLLBACK;

-- ---- a cancelled statement leaves nothing in flight --------------------------
SET statement_timeout = '300ms';
SELECT count(g) FROM (SELECT mms_generate('bt_flan', raw, '{"max_new_tokens": 4000, "min_new_tokens": 4000}') g FROM bt_in WHERE raw IS NOT NULL) s;
SELECT id, mms_generate('bt_flan', raw, '{"max_new_tokens": 4000, "min_new_tokens": 4000}') FROM bt_in WHERE raw IS NOT NULL;
RESET statement_timeout;
SELECT count(*) AS my_requests_in_flight FROM mms.progress WHERE pid = pg_backend_pid();
-- the workers drop what was abandoned: the queue empties
DO $$
BEGIN
    FOR i IN 1..200 LOOP
        EXIT WHEN NOT EXISTS (SELECT 1 FROM mms.pools WHERE queued + running > 0);
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT coalesce(sum(queued + running), 0) AS queued_or_running FROM mms.pools;
-- and the next statement runs
SELECT count(*) FROM (SELECT mms_generate('bt_flan', raw, '{"max_new_tokens": 2}') FROM bt_in) s;

-- ---- rights and quotas: as for one call per row -----------------------------
CREATE ROLE regress_mms_bt_user;
SELECT mms_grant('bt_flan', 'regress_mms_bt_user');
GRANT SELECT ON bt_in TO regress_mms_bt_user;
-- EXECUTE on the function is checked
REVOKE EXECUTE ON FUNCTION mms_generate(text, text, jsonb) FROM PUBLIC;
SET ROLE regress_mms_bt_user;
SELECT id, mms_generate('bt_flan', raw, '{"max_new_tokens": 2}') FROM bt_in WHERE id <= 3;
RESET ROLE;
GRANT EXECUTE ON FUNCTION mms_generate(text, text, jsonb) TO PUBLIC;
-- a rate-limited role: each row's call is admitted alone
SELECT requests_per_minute FROM mms_set_quota('regress_mms_bt_user', 'bt_flan', requests_per_minute => 4);
SET ROLE regress_mms_bt_user;
-- 4 rows fit (a batch of 16 would never fit a limit of 4 if admitted whole)
SELECT count(g) FROM (SELECT mms_generate('bt_flan', raw, '{"max_new_tokens": 2}') g FROM bt_in WHERE id IN (1, 2, 3, 4) ORDER BY id) s;
-- the fifth call of the minute is refused, naming the limit, at its row
\set VERBOSITY terse
SELECT count(g) FROM (SELECT mms_generate('bt_flan', raw, '{"max_new_tokens": 2}') g FROM bt_in WHERE id IN (5, 6)) s;
RESET ROLE;
CREATE ROLE regress_mms_bt_user2;
SELECT mms_grant('bt_flan', 'regress_mms_bt_user2');
GRANT SELECT ON bt_in TO regress_mms_bt_user2;
SELECT requests_per_minute FROM mms_set_quota('regress_mms_bt_user2', 'bt_flan', requests_per_minute => 5);
SET ROLE regress_mms_bt_user2;
-- rows read ahead and refused raise only when they are fetched: 5 rows come out, then the error
BEGIN;
DECLARE bt_q CURSOR FOR SELECT id, mms_generate('bt_flan', raw, '{"max_new_tokens": 2}') IS NOT NULL AS ok FROM bt_in WHERE raw IS NOT NULL ORDER BY id;
FETCH 3 FROM bt_q;
FETCH 1 FROM bt_q;
FETCH 2 FROM bt_q;
ROLLBACK;
\set VERBOSITY default
RESET ROLE;
SELECT mms_drop_quota('regress_mms_bt_user', 'bt_flan'), mms_drop_quota('regress_mms_bt_user2', 'bt_flan');
SELECT mms_revoke('bt_flan', 'regress_mms_bt_user'), mms_revoke('bt_flan', 'regress_mms_bt_user2');
REVOKE SELECT ON bt_in FROM regress_mms_bt_user, regress_mms_bt_user2;
DROP ROLE regress_mms_bt_user, regress_mms_bt_user2;

DROP TABLE bt_in, bt_side, bt_out, bt_ctas, bt_upd, bt_ref, bt_err, bt_nest;
DROP TYPE bt_pair;
SELECT mms_unregister('bt_flan');
