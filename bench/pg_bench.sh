#!/bin/bash
# bench/pg_bench.sh — mms inside PostgreSQL, measured side by side with the
# engine alone. In one throwaway cluster:
#   0. cold load: LOADS times (default 3), mms_unload then mms_load timed by
#      psql, with the loader's own time, MB/s of file and peak private memory
#      from its 'load' event in mms.events, and the DSM segment's size
#      (mms.cache.bytes);
#   1. single-call latency p50/p99 (pgbench, 1 client) vs the engine's own
#      latency for the same request (build/mms-run --latency);
#   2. 10,000 rows through INSERT ... SELECT: one call per row vs the array
#      API (64 rows a call), rows/s, vs the engine's batched throughput on the
#      same inputs;
#   3. 16 concurrent pgbench clients: throughput against the engine's batched
#      throughput of 2., p50/p99, and the proportional memory (PSS) of all
#      PostgreSQL processes vs the model size.
# MODEL=path.gguf (default models/datefix.gguf); THREADS (default nproc);
# ROWS (default 10000); CALLS (latency, default 200); SECONDS16 (default 20);
# LOADS (default 3).
# Not a test: it prints numbers, asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
model=${MODEL:-models/datefix.gguf}
threads=${THREADS:-$(nproc)}
rows=${ROWS:-10000}
calls=${CALLS:-200}
pss_total() {
	local sum=0 k
	for pid in $(pgrep -u "$server_user" postgres); do
		k=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || true)
		sum=$((sum + ${k:-0}))
	done
	echo $((sum / 1024))
}
. bench/lib.sh
pss_base=$(pss_total)
msize=$(stat -L -c %s "$model")

# --- 0. cold load -----------------------------------------------------------------
# mms_load returns once the loader has published the weights; the loader writes its
# 'load' event just after, so wait for it. MB = 2^20 bytes, as in the event.
last_load() { sql -c "SELECT coalesce(max(at)::text, 'none') FROM mms.events WHERE kind = 'load'"; }
for _ in $(seq "${LOADS:-3}"); do
	sql -c "SELECT mms_unload('m')" >/dev/null
	before=$(last_load)
	wall=$(sql -c '\timing on' -c "SELECT mms_load('m')" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')
	for try in $(seq 50); do [ "$(last_load)" != "$before" ] && break; sleep 0.1; done
	echo "$wall $(sql -F ' ' <<'SQL'
SELECT e.m[1], e.m[2], e.m[3], c.bytes
FROM (SELECT sha256, regexp_match(detail, 'in ([0-9.]+) ms \(([0-9.]+) MB/s of file\), loader peak private memory ([0-9]+) kB') AS m
      FROM mms.events WHERE kind = 'load' ORDER BY at DESC LIMIT 1) e
JOIN mms.cache c USING (sha256);
SQL
)"
done > "$tmp/loads.txt"
read -r lw ll lr lp lseg < <(for c in 1 2 3 4 5; do awk -v c=$c '{print $c}' "$tmp/loads.txt" | med; done | xargs)
awk -v n="$(wc -l < "$tmp/loads.txt")" -v f="$msize" -v w="$lw" -v l="$ll" -v r="$lr" -v p="$lp" -v seg="$lseg" \
	-v runs="$(awk '{printf "%s%s", (NR > 1 ? "/" : ""), $1}' "$tmp/loads.txt")" 'BEGIN {
	printf "cold load, median of %d (file %.1f MB, segment %.1f MB): mms_load %.1f ms wall (%.0f MB/s of file; runs %s ms), loader %.1f ms (%.0f MB/s of file, its event); loader peak private memory %.1f MB: segment + it = %.2fx the segment\n",
		n, f / 1048576, seg / 1048576, w, f / 1048576 / (w / 1000), runs, l, r, p / 1024, (seg + p * 1024) / seg }'

# The inputs: messy dates (the demo model's task; noise for other models, same work).
bench_inputs "$rows"
sql -c "COPY (SELECT raw FROM raw ORDER BY id) TO STDOUT" > "$tmp/inputs.txt"
opts='{"max_new_tokens": 12}'

pct() { sort -n | awk '{a[NR]=$1} END {i50=int(NR*0.5); i99=int(NR*0.99); if (i50<1) i50=1; if (i99<1) i99=1; printf "%.2f %.2f\n", a[i50], a[i99]}'; }

# --- 1. latency -------------------------------------------------------------------
echo "SELECT mms_generate('m', 'normalize date: March 3rd, 2021', '$opts');" > "$tmp/one.sql"
pgbench -n -c 1 -t "$calls" -f "$tmp/one.sql" -l --log-prefix="$tmp/lat" postgres >/dev/null 2>&1
read -r p50 p99 < <(cat "$tmp"/lat.* | awk '{print $3 / 1000.0}' | pct)
read -r e50 e99 < <("$root/build/mms-run" --model "$model" --threads "$threads" --latency "$calls" \
	--max-new-tokens 12 "normalize date: March 3rd, 2021" | pct)
echo "latency, one short call (ms): SQL p50 $p50 p99 $p99; engine alone p50 $e50 p99 $e99;" \
	"overhead p50 $(awk -v a="$p50" -v b="$e50" 'BEGIN {printf "%.1f%%", (a / b - 1) * 100}')"

# --- 2. batch scoring -------------------------------------------------------------
t0=$(date +%s.%N)
sql -c "CREATE TABLE out1 AS SELECT id, mms_generate('m', raw, '$opts') AS iso FROM raw"
t1=$(date +%s.%N)
sql <<SQL
CREATE TABLE out2 AS
SELECT b.ids[o.n] AS id, o.iso
FROM (SELECT chunk, array_agg(id ORDER BY id) AS ids, array_agg(raw ORDER BY id) AS raws
      FROM (SELECT id, raw, (row_number() OVER (ORDER BY id) - 1) / 64 AS chunk FROM raw) s
      GROUP BY chunk) b,
     unnest(mms_generate_batch('m', b.raws, '$opts')) WITH ORDINALITY AS o(iso, n);
SQL
t2=$(date +%s.%N)
same=$(sql -c "SELECT count(*) FROM out1 JOIN out2 USING (id) WHERE out1.iso = out2.iso")
mapfile -t lines < "$tmp/inputs.txt"
t3=$(date +%s.%N)
"$root/build/mms-run" --model "$model" --threads "$threads" --max-new-tokens 12 "${lines[@]}" > "$tmp/engine.out"
t4=$(date +%s.%N)
# the engine's start-up (mmap, tokenizer) and one call, to show what its time includes
"$root/build/mms-run" --model "$model" --threads "$threads" --max-new-tokens 12 "${lines[0]}" > /dev/null
t5=$(date +%s.%N)
engine_rps=$(awk -v n="$rows" -v d="$t3" -v e="$t4" 'BEGIN {printf "%.1f", n / (e - d)}')
awk -v n="$rows" -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v e="$t4" -v f="$t5" -v g="$engine_rps" -v same="$same" 'BEGIN {
	s = n / (b - a); r = n / (c - b);
	printf "batch %d rows: scalar %.1f rows/s, array API %.1f rows/s (%.1fx scalar), engine alone %.1f rows/s (array = %.0f%% of it; its %.1f s include start-up and load, %.2f s with one input); results equal: %d/%d\n", n, s, r, r / s, g, 100 * r / g, e - d, f - e, same, n }'

# --- 3. 16 concurrent clients ------------------------------------------------------
cat > "$tmp/mix.sql" <<SQL
\set id random(1, $rows)
SELECT mms_generate('m', raw, '$opts') FROM raw WHERE id = :id;
SQL
rm -f "$tmp"/lat.*
pgbench -n -c 16 -j 4 -T "${SECONDS16:-20}" -f "$tmp/mix.sql" -l --log-prefix="$tmp/c16" postgres > "$tmp/c16.txt" 2>&1
tps=$(grep -oE 'tps = [0-9.]+' "$tmp/c16.txt" | head -1 | awk '{printf "%.1f", $3}')
read -r c50 c99 < <(cat "$tmp"/c16.* | awk '{print $3 / 1000.0}' | pct)
pss=$(pss_total)
batch=$(sql -c "SELECT round(decode_rows::numeric / nullif(decode_steps, 0), 1) || ' mean / ' || max_batch || ' max, ' || workers || ' worker(s)' FROM mms.pools")
echo "16 clients: $tps calls/s = $(awk -v t="$tps" -v g="$engine_rps" 'BEGIN {printf "%.0f%%", 100 * t / g}') of the engine's batched $engine_rps rows/s;" \
	"p50 $c50 ms, p99 $c99 ms; decode batch $batch;" \
	"PSS of all PostgreSQL processes $pss MB, $((pss - pss_base)) MB more than before loading, for a $((msize / 1048576)) MB model"
