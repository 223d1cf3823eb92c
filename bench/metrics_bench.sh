#!/bin/bash
# bench/metrics_bench.sh — what recording latency histograms costs: the
# 16-client pgbench of pg_bench.sh (section 3: one mms_generate per call) with
# mms.track_latency on and off, interleaved over ROUNDS rounds (default 3) in
# one throwaway cluster; prints each round, the median calls/s of each
# setting and their difference. MODEL (default models/datefix.gguf); THREADS
# (default nproc); SECS per run (default 15). Not a test: it asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${MODEL:-models/datefix.gguf}
threads=${THREADS:-$(nproc)}
secs=${SECS:-15}
rounds=${ROUNDS:-3}
rows=10000
. bench/lib.sh
bench_inputs "$rows" >/dev/null
sql -c "SELECT mms_load('m')" >/dev/null
cat > "$tmp/mix.sql" <<SQL
\set id random(1, $rows)
SELECT mms_generate('m', raw, '{"max_new_tokens": 12}') FROM raw WHERE id = :id;
SQL
run() {
	sql -c "ALTER SYSTEM SET mms.track_latency = $1" -c "SELECT pg_reload_conf()" >/dev/null
	sleep 1	# workers read the setting at their next loop
	pgbench -n -c 16 -j 4 -T "$secs" -f "$tmp/mix.sql" postgres 2>&1 |
		grep -oE 'tps = [0-9.]+' | head -1 | awk '{print $3}'
}
: > "$tmp/on.txt"
: > "$tmp/off.txt"
run on >/dev/null	# warm-up: workers started, caches hot
for r in $(seq "$rounds"); do
	# alternate which goes first, so that a drift of the machine hits both alike
	if [ $((r % 2)) = 1 ]; then order="on off"; else order="off on"; fi
	for s in $order; do
		t=$(run "$s")
		echo "$t" >> "$tmp/$s.txt"
		echo "round $r: track_latency $s: $t calls/s"
	done
done
on=$(med < "$tmp/on.txt")
off=$(med < "$tmp/off.txt")
# the ratio within each round too: runs of one round share the machine's state
paired=$(paste "$tmp/on.txt" "$tmp/off.txt" | awk '{print $1 / $2}' | med)
steps=$(sql -c "SELECT count FROM mms.stat_latency WHERE metric = 'batch_size'")
awk -v on="$on" -v off="$off" -v p="$paired" -v n="$rounds" -v s="$steps" 'BEGIN {
	printf "16 clients, median of %d runs: track_latency on %.1f calls/s, off %.1f calls/s: on/off %.3f (%+.1f%%); median of the rounds'"'"' on/off %.3f; %s decoder steps recorded\n",
		n, on, off, on / off, 100 * (on - off) / off, p, s }'
