#!/bin/bash
# t_metrics.sh — mms_metrics() and mms.stat_latency after real traffic:
#   - generate, batch, score calls, a request that fails in its worker, a
#     cancelled one (statement_timeout) and one refused by a quota;
#   - promtool check metrics passes on the exposition, with no lint warnings;
#   - mms_requests_total by outcome, mms_prompt_tokens_total and the
#     histograms' counts equal what was called;
#   - mms.stat_latency has every metric, p50 <= p90 <= p99;
#   - mms.track_latency = off stops recording;
#   - the shipped alert rules pass promtool check rules and their unit tests.
set -u
ok() { echo "ok: $*"; }
bad() { echo "FAILED: $*"; }
db=mms_metrics
root=${MMS_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
work=${TMPDIR_PG:-/tmp}/metrics
mkdir -p "$work"
sql() { psql -X -q -At -v ON_ERROR_STOP=1 -d $db "$@"; }
metric() { awk -v k="$1" 'index($0, k " ") == 1 { print $NF }' "$work/metrics.txt"; }
reload() { psql -X -q -d postgres -c "ALTER SYSTEM $1" -c "SELECT pg_reload_conf()" >/dev/null; sleep 0.5; }

if ! command -v promtool >/dev/null; then
	bad "promtool is not installed (Debian package prometheus; make deps)"
	exit 0
fi

# --- the shipped rules -------------------------------------------------------------
rules="$root/contrib/prometheus/alerts.yml"
out=$(promtool check rules "$rules" 2>&1) && ok "promtool check rules: alerts.yml" || bad "check rules: $out"
out=$(cd "$root/contrib/prometheus" && promtool test rules alerts_test.yml 2>&1) &&
	ok "promtool test rules: alerts_test.yml" || bad "test rules: $out"

# --- traffic ---------------------------------------------------------------------
dropdb --if-exists $db 2>/dev/null
createdb $db || { bad "createdb $db"; exit 0; }
# flan_c: the same file under another name (one pool), for the cancelled batch, whose
# requests may or may not finish before the timeout: its counts stay apart
sql -c "CREATE EXTENSION mms" -c "SELECT mms_import('flan', '$MMS_TEST_DATA/flan_gated.gguf')" \
	-c "SELECT mms_import('flan_c', '$MMS_TEST_DATA/flan_gated.gguf')" \
	-c "SELECT mms_grant('flan', 'public')" -c "SELECT mms_stat_reset()" >/dev/null || { bad "setup"; exit 0; }
psql -X -q -d postgres -c "SET client_min_messages = warning" -c "DROP ROLE IF EXISTS regress_metrics_q" -c "CREATE ROLE regress_metrics_q" >/dev/null

G='{"max_new_tokens": 4, "min_new_tokens": 4}'
sql -c "SELECT mms_generate('flan', 'one', '$G')" -c "SELECT mms_generate('flan', 'two', '$G')" \
	-c "SELECT mms_generate_batch('flan', ARRAY['three', 'four', 'five'], '$G')" \
	-c "SELECT mms_score('flan', 'six', 'seven')" \
	-c "SELECT mms_score_batch('flan', ARRAY['eight', 'nine'], ARRAY['ten', 'eleven'])" >/dev/null ||
	bad "calls"
ok_calls=8
# tokens of every input called, as the model's tokenizer counts them
prompt=$(sql -c "SELECT sum(cardinality(mms_tokenize('flan', t)))
                FROM unnest(ARRAY['one', 'two', 'three', 'four', 'five', 'six', 'eight', 'nine']) t")

# cancelled: 64 generations of 4096 tokens each (seconds of decoding) stopped
# by statement_timeout; those in flight then count as cancelled, the rest never ran
L='{"max_new_tokens": 4096, "min_new_tokens": 4096}'
out=$(sql -c "SET statement_timeout = '1s'" \
	-c "SELECT mms_generate_batch('flan_c', array_fill('long'::text, ARRAY[64]), '$L')" 2>&1 | head -c 300)
grep -q "statement timeout" <<<"$out" && ok "a long batch is cancelled by statement_timeout" || bad "timeout: $out"

# error: a request that can never fit mms.worker_memory fails in its worker
reload "SET mms.worker_memory = '1MB'"
sql -c "SELECT mms_unload('flan')" >/dev/null 2>&1	# a fresh worker surely has the budget
out=$(sql -c "SELECT mms_generate('flan', 'big', '{\"num_beams\": 8, \"max_new_tokens\": 2048}')" 2>&1)
reload "RESET mms.worker_memory"
grep -q "more than mms.worker_memory" <<<"$out" && ok "an oversized request fails in its worker" || bad "error: $out"

# rejected: a role over its quota
sql -c "SELECT mms_set_quota('regress_metrics_q', 'flan', requests_per_minute => 1)" >/dev/null
sql -c "SET ROLE regress_metrics_q" -c "SELECT mms_generate('flan', 'q1', '$G')" >/dev/null || bad "quota call 1"
out=$(sql -c "SET ROLE regress_metrics_q" -c "SELECT mms_generate('flan', 'q2', '$G')" 2>&1)
grep -q "over its quota" <<<"$out" && ok "a call over the quota is refused" || bad "quota: $out"

# --- the exposition ----------------------------------------------------------------
sql -c "SELECT mms_metrics()" >"$work/metrics.txt" || bad "mms_metrics()"
lint=$(promtool check metrics <"$work/metrics.txt" 2>&1)
[ $? = 0 ] && [ -z "$lint" ] && ok "promtool check metrics: no problem, no lint warning" ||
	bad "promtool check metrics: $lint"

L_P='database="mms_metrics",model="flan:1",role="postgres"'
L_Q='database="mms_metrics",model="flan:1",role="regress_metrics_q"'
L_M='database="mms_metrics",model="flan:1"'
got="$(metric "mms_requests_total{$L_P,outcome=\"ok\"}") $(metric "mms_requests_total{$L_P,outcome=\"error\"}")"
[ "$got" = "$ok_calls 1" ] && ok "requests by outcome: ok $ok_calls, error 1" ||
	bad "requests ok/error: $got, want $ok_calls 1"
got=$(metric "mms_requests_total{database=\"mms_metrics\",model=\"flan_c:1\",role=\"postgres\",outcome=\"cancelled\"}")
[ "${got:-0}" -ge 1 ] && ok "requests cancelled: $got" || bad "cancelled: '$got'"
got="$(metric "mms_requests_total{$L_Q,outcome=\"ok\"}") $(metric "mms_requests_total{$L_Q,outcome=\"rejected\"}") $(metric "mms_quota_rejections_total{$L_Q}")"
[ "$got" = "1 1 1" ] && ok "a quota rejection is counted for its role" || bad "role over quota ok/rejected/rejections: $got"
# the failed request counts its input too (a cancelled one is not read back)
want_prompt=$((prompt + $(sql -c "SELECT cardinality(mms_tokenize('flan', 'big'))")))
got=$(metric "mms_prompt_tokens_total{$L_P}")
[ "$got" = "$want_prompt" ] && ok "prompt tokens: $got" || bad "prompt tokens $got, want $want_prompt"
got=$(metric "mms_generation_tokens_total{$L_P}")
# 5 generations of 4 tokens, score targets' tokens
want_gen=$((20 + $(sql -c "SELECT sum(cardinality(mms_tokenize('flan', t))) FROM unnest(ARRAY['seven', 'ten', 'eleven']) t")))
[ "$got" = "$want_gen" ] && ok "generation tokens: $got" || bad "generation tokens $got, want $want_gen"
# every collected request of both roles is in the end-to-end histogram (the cancel was never collected)
got=$(metric "mms_e2e_request_latency_seconds_count{$L_M}")
[ "$got" = $((ok_calls + 1 + 1)) ] && ok "e2e histogram counts $got requests" || bad "e2e count $got, want $((ok_calls + 2))"
got=$(metric "mms_e2e_request_latency_seconds_bucket{$L_M,le=\"+Inf\"}")
[ "$got" = $((ok_calls + 2)) ] && ok "its +Inf bucket equals its count" || bad "+Inf bucket $got"
# time per output token: the 6 generations of 4 tokens (scores have targets of one or more ids)
got=$(metric "mms_time_per_output_token_seconds_count{$L_M}")
[ "${got:-0}" -ge 6 ] && ok "per-token histogram counts $got requests" || bad "tpot count $got"
got=$(metric "mms_decoder_batch_size_count{$L_M}")
[ "${got:-0}" -gt 0 ] && ok "decoder batch sizes recorded ($got steps)" || bad "batch count '$got'"
grep -q '^mms_workers{.*state="ready"}' "$work/metrics.txt" && grep -q '^mms_cache_budget_bytes ' "$work/metrics.txt" &&
	ok "workers and cache gauges are there" || bad "workers or cache gauges missing"

# --- mms.stat_latency --------------------------------------------------------------
got=$(sql -c "SELECT string_agg(metric, ',' ORDER BY metric) FROM mms.stat_latency WHERE database = '$db' AND model = 'flan:1'")
[ "$got" = "batch_size,queue_wait,total,tpot,ttft" ] && ok "mms.stat_latency has every metric" || bad "metrics: $got"
got=$(sql -c "SELECT count(*) FROM mms.stat_latency WHERE database = '$db' AND NOT (p50 <= p90 AND p90 <= p99)")
[ "$got" = 0 ] && ok "p50 <= p90 <= p99" || bad "$got rows with quantiles out of order"

# --- mms.track_latency -------------------------------------------------------------
before=$(sql -c "SELECT count FROM mms.stat_latency WHERE database = '$db' AND model = 'flan:1' AND metric = 'total'")
reload "SET mms.track_latency = off"
sql -c "SELECT mms_generate('flan', 'untracked', '$G')" >/dev/null
after=$(sql -c "SELECT count FROM mms.stat_latency WHERE database = '$db' AND model = 'flan:1' AND metric = 'total'")
reload "RESET mms.track_latency"
sql -c "SELECT mms_generate('flan', 'tracked', '$G')" >/dev/null
again=$(sql -c "SELECT count FROM mms.stat_latency WHERE database = '$db' AND model = 'flan:1' AND metric = 'total'")
[ "$before" = "$after" ] && [ "$again" = $((after + 1)) ] && ok "mms.track_latency = off records nothing" ||
	bad "track_latency: $before -> $after (off) -> $again (on)"

sql -c "SELECT mms_stat_reset()" >/dev/null
got=$(sql -c "SELECT count(*) FROM mms.stat_latency WHERE database = '$db' AND model = 'flan:1'")
[ "$got" = 0 ] && ok "mms_stat_reset() empties mms.stat_latency" || bad "after reset: $got rows"

dropdb $db
psql -X -q -d postgres -c "DROP ROLE regress_metrics_q" >/dev/null
