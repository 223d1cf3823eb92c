#!/bin/bash
# bench/fairness.sh — one role floods a model, another sends single short
# calls: the short calls' latency and the total throughput, with fair
# queueing against first come, first served; and the cost of admission
# control on a single call. In one throwaway cluster, scenarios interleaved
# over ROUNDS rounds (default 3; medians reported):
#   alone   role b's single calls, nothing else running;
#   fifo    b under role a's flood (FLOOD sessions, default 8, each sending
#           64-element arrays back to back) with mms.fair_queueing = off and
#           mms.backend_request_share = 1 (the queue as it was before both);
#   fair    the same flood with the defaults (fair queueing, equal weights);
#   weight4 the same with b's weight 4 (mms_set_quota);
#   quota   b alone with quota rows that apply to it (admission charged and
#           refunded on every call) — against alone: the admission overhead.
# MODEL (default models/datefix.gguf); THREADS (default nproc); SECS per
# scenario (default 15). Not a test: it prints numbers, asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${MODEL:-models/datefix.gguf}
threads=${THREADS:-$(nproc)}
secs=${SECS:-15}
rounds=${ROUNDS:-3}
flood=${FLOOD:-8}
. bench/lib.sh
bench_inputs 6400 >/dev/null
sql <<SQL >/dev/null
SELECT mms_grant('m', 'public');
CREATE ROLE bench_a LOGIN;
CREATE ROLE bench_b LOGIN;
SELECT mms_load('m');
SQL
opts='{"max_new_tokens": 12}'
cat > "$tmp/b.sql" <<SQL
SELECT mms_generate('m', 'normalize date: March 3rd, 2021', '$opts');
SQL
cat > "$tmp/a.sql" <<SQL
\set chunk random(0, 99)
SELECT cardinality(mms_generate_batch('m', (SELECT array_agg(raw) FROM raw WHERE id > :chunk * 64 AND id <= :chunk * 64 + 64), '$opts'));
SQL
setting() { sql -c "ALTER SYSTEM SET $1 = '$2'" -c "SELECT pg_reload_conf()" >/dev/null; }
pct() { sort -n | awk '{a[NR]=$1} END {i50=int(NR*0.5); i99=int(NR*0.99); if (i50<1) i50=1; if (i99<1) i99=1; printf "%.2f %.2f %d\n", a[i50], a[i99], NR}'; }

# runs b (1 session) for secs, with a's flood if $2 = flood; prints "p50 p99 calls a_rows_per_s b_calls_per_s"
run() {
	local name=$1 with=$2 apid=""
	rm -f "$tmp"/lat_b.* "$tmp/a.txt"
	if [ "$with" = flood ]; then
		pgbench -n -U bench_a -c "$flood" -j "$flood" -T $((secs + 2)) -f "$tmp/a.sql" postgres > "$tmp/a.txt" 2>&1 &
		apid=$!
		sleep 2			# the flood is under way
	fi
	pgbench -n -U bench_b -c 1 -T "$secs" -f "$tmp/b.sql" -l --log-prefix="$tmp/lat_b" postgres > "$tmp/b.txt" 2>&1
	[ -n "$apid" ] && wait "$apid"
	read -r p50 p99 n < <(cat "$tmp"/lat_b.* | awk '{print $3 / 1000.0}' | pct)
	local arows=0
	[ -n "$apid" ] && arows=$(grep -oE 'tps = [0-9.]+' "$tmp/a.txt" | head -1 | awk '{printf "%.1f", $3 * 64}')
	echo "$name $p50 $p99 $n $arows $(awk -v n="$n" -v s="$secs" 'BEGIN {printf "%.1f", n / s}')"
}

for r in $(seq "$rounds"); do
	run alone none
	setting mms.fair_queueing off; setting mms.backend_request_share 1
	run fifo flood
	sql -c "ALTER SYSTEM RESET mms.fair_queueing" -c "ALTER SYSTEM RESET mms.backend_request_share" -c "SELECT pg_reload_conf()" >/dev/null
	run fair flood
	sql -c "SELECT mms_set_quota('bench_b', weight => 4)" >/dev/null
	run weight4 flood
	sql -c "SELECT mms_drop_quota('bench_b')" >/dev/null
	# quotas that apply and never refuse: every call is charged and refunded
	sql -c "SELECT mms_set_quota('bench_b', 'm', requests_per_minute => 1000000, tokens_per_minute => 1000000000, tokens_per_day => 1000000000, max_concurrent => 100)" >/dev/null
	run quota none
	sql -c "SELECT mms_drop_quota('bench_b', 'm')" >/dev/null
done > "$tmp/results.txt"
cat "$tmp/results.txt" >&2

col() { awk -v s="$1" -v c="$2" '$1 == s {print $c}' "$tmp/results.txt" | med; }
echo "model $(basename "$model"), $threads threads, $flood flooding sessions of 64-element arrays, $secs s per scenario, median of $rounds rounds"
printf "%-8s %10s %10s %12s %14s\n" scenario "b p50 ms" "b p99 ms" "b calls/s" "a rows/s"
for s in alone fifo fair weight4 quota; do
	printf "%-8s %10s %10s %12s %14s\n" "$s" "$(col $s 2)" "$(col $s 3)" "$(col $s 6)" "$(col $s 5)"
done
awk -v a99="$(col alone 3)" -v f99="$(col fair 3)" -v w99="$(col weight4 3)" -v fi99="$(col fifo 3)" \
	-v ft="$(col fair 5)" -v fb="$(col fair 6)" -v wt="$(col weight4 5)" -v wb="$(col weight4 6)" -v fit="$(col fifo 5)" -v fib="$(col fifo 6)" \
	-v a50="$(col alone 2)" -v q50="$(col quota 2)" 'BEGIN {
	printf "b p99 under the flood / alone: fifo %.1fx, fair %.1fx, weight 4 %.1fx\n", fi99 / a99, f99 / a99, w99 / a99;
	printf "total rows/s under the flood vs fifo: fair %.1f%%, weight 4 %.1f%%\n", 100 * (ft + fb) / (fit + fib), 100 * (wt + wb) / (fit + fib);
	printf "admission control on a single call: p50 %.2f ms with quotas vs %.2f ms without (%+.1f%%)\n", q50, a50, 100 * (q50 / a50 - 1) }'
