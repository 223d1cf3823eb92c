#!/bin/bash
# bench/size_bench.sh — models of growing size (the flan-t5-small, -base and
# -large shapes bench/make_models.py writes, random weights) in F32 and Q8_0,
# served through SQL and run by mms-run: what each costs in file, shared
# cache, worker memory and load time, and what it does per second.
# MODELS="small base large" ROWS=32 (inputs per SQL run) TOKENS=16 THREADS=2.
# Prints a Markdown table; needs the files (bench/make_models.py --models ...).
# The worker's RSS counts the cache pages it touched; "own heap" is its
# anonymous memory (scratch, caches of keys and values).
set -euo pipefail
cd "$(dirname "$0")/.."
models=${MODELS:-"small base large"}
rows=${ROWS:-32}
tokens=${TOKENS:-16}
threads=${THREADS:-$(nproc)}
[ "$(id -u)" = 0 ] && make -s install >/dev/null
make -s build/mms-run
. tools/pg-cluster.sh
cluster_start "mms.threads_per_worker=$threads" mms.cache_size=6GB mms.max_model_size=8GB || exit 1
sql() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
now() { date +%s.%N; }
sql -c "CREATE EXTENSION mms" >/dev/null
# the same inputs for every model: a few words each, tokenized by each model's own vocabulary
sql -c "CREATE TABLE inp AS SELECT i, 'translate English to German: the report for row ' || i || ' is ready' AS t FROM generate_series(1, $rows) i" >/dev/null
opts="{\"max_new_tokens\": $tokens, \"min_new_tokens\": $tokens}"

echo "| model | weights | file MB | cache MB | cache / file | load s | worker RSS MB (own heap) | SQL rows/s ($rows rows x $tokens tokens) | mms-run peak RSS MB | mms-run s (1 input) |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for m in $models; do
	for p in f32 q8_0; do
		f=bench/out/$m.gguf
		[ $p = q8_0 ] && f=bench/out/$m-q8_0.gguf
		[ -f "$f" ] || { echo "| $m | $p | missing $f | | | | | | | |"; continue; }
		cp "$f" "$tmp/model.gguf"
		chmod a+r "$tmp/model.gguf"
		sql -c "SELECT mms_import('m', '$tmp/model.gguf')" >/dev/null
		rm -f "$tmp/model.gguf"
		sql -c "SELECT mms_load('m')" >/dev/null
		t0=$(now)
		sql -c "SELECT count(g) FROM (SELECT mms_generate('m', t, '$opts') g FROM inp) s" >/dev/null
		t1=$(now)
		read -r cache load_ms < <(sql -F' ' -c "SELECT bytes, round(load_ms) FROM mms.cache WHERE current_database() || '/m:1' = ANY(models)")
		pid=$(sql -c "SELECT pid FROM mms.workers WHERE model = 'm:1' LIMIT 1")
		rss=$(awk '/^Rss:/ {r = $2} /^Anonymous:/ {p = $2} END {printf "%.0f (%.0f)", r / 1024, p / 1024}' /proc/"$pid"/smaps_rollup)
		/usr/bin/time -f "%M %e" -o "$tmp/time.txt" build/mms-run --model "$f" --threads "$threads" \
			--max-new-tokens "$tokens" "translate English to German: the report is ready" >/dev/null
		read -r run_kb run_s < "$tmp/time.txt"
		fmb=$(stat -c %s "$f")
		awk -v m="$m" -v p="$p" -v f="$fmb" -v c="$cache" -v l="$load_ms" -v r="$rss" -v n="$rows" \
			-v s="$(echo "$t1 - $t0" | bc)" -v rk="$run_kb" -v rs="$run_s" 'BEGIN {
			printf "| %s | %s | %.0f | %.0f | %.2f | %.1f | %s | %.2f | %.0f | %.2f |\n",
				m, p, f / 1e6, c / 1e6, c / f, l / 1000, r, n / s, rk / 1024, rs }'
		sql -c "SELECT mms_unregister('m')" >/dev/null
	done
done
