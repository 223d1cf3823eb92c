#!/bin/bash
# bench/batching_bench.sh — transparent batching (the MmsBatch plan node) against
# one call per row and against the array idiom, side by side in one run. For
# each model, in a throwaway cluster of its own (bench/lib.sh), ROWS rows of
# the demo's messy dates (default 10000) through CREATE TABLE ... AS:
#   off    SELECT id, mms_generate('m', raw, opts) FROM raw
#          with mms.transparent_batching = off (one request per row);
#   on     the same statement with mms.transparent_batching = on and
#          mms.batch_rows = BATCH_ROWS (default 64);
#   array  the array idiom of bench/pg_bench.sh (section 2), what one wrote by
#          hand before transparent batching: array_agg of 64 rows,
#          mms_generate_batch, unnest WITH ORDINALITY;
# interleaved over ROUNDS rounds (default 3; the order rotates each round, so a
# drift of the shared machine hits all three alike). Prints each run's rows/s
# and mean decoder batch (decode_rows / decode_steps of mms.pools, as a delta
# over the run), per variant the median and min..max, the ratios on/array
# (goal >= 0.90) and on/off (goal >= 4) of the medians and the median of the
# rounds' ratios, and, each round, how many of on's and array's rows equal
# off's (joined on id). SWEEP=1 adds `on` runs with mms.batch_rows in
# SWEEP_ROWS (default "16 64 256"), interleaved over the same number of rounds.
# MODELS (default "demo small"): demo = models/datefix.gguf; small = the
# random-weight flan-t5-small shape, bench/out/small.gguf, built by
# bench/make_models.py (as `make bench` does) when missing; MODEL=path.gguf
# runs that one model only. SMALL_ROWS (default ROWS) for the small shape: its
# `off` run alone takes about 18 minutes a round at 10,000 rows (9 rows/s, 2 cores).
# THREADS (default nproc) per worker and WORKERS (default 1) in the model's
# pool (min_workers = max_workers, so that the pool does not change during a
# run): 1 worker of 2 threads and 2 workers of 1 thread are the two ways to
# use 2 cores. opts are '{"max_new_tokens": 12}' for both models.
# Not a test: it prints numbers, asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- each model in a cluster of its own: this script again, with MODEL set ------
if [ -z "${MODEL:-}" ]; then
	for m in ${MODELS:-demo small}; do
		case $m in
		demo)	gguf=models/datefix.gguf; n=${ROWS:-10000} ;;
		small)	gguf=bench/out/small.gguf; n=${SMALL_ROWS:-${ROWS:-10000}}
			[ -f "$gguf" ] || "$(tools/venv.sh bench)" bench/make_models.py --models small >&2 ;;
		*)	echo "unknown model $m (demo, small)" >&2; exit 2 ;;
		esac
		echo "== $m ($gguf)"
		MODEL=$gguf ROWS=$n bench/batching_bench.sh
	done
	exit 0
fi

model=$MODEL
threads=${THREADS:-$(nproc)}
rows=${ROWS:-10000}
rounds=${ROUNDS:-3}
batch_rows=${BATCH_ROWS:-64}
. bench/lib.sh
bench_inputs "$rows" >/dev/null
opts='{"max_new_tokens": 12}'
workers=${WORKERS:-1}
sql -c "SELECT mms_configure('m', min_workers => $workers, max_workers => $workers)" \
	-c "SELECT mms_load('m')" -c "SELECT mms_generate('m', 'normalize date: March 3rd, 2021', '$opts')" >/dev/null

# The statement of each variant, after the settings it runs with; the table is o_<variant>.
plain() { echo "CREATE TABLE o_$1 AS SELECT id, mms_generate('m', raw, '$opts') AS out FROM raw"; }
stmt() {
	case $1 in
	off)	echo "SET mms.transparent_batching = off;"
		plain off ;;
	on)	echo "SET mms.transparent_batching = on; SET mms.batch_rows = $batch_rows;"
		plain on ;;
	on_*)	echo "SET mms.transparent_batching = on; SET mms.batch_rows = ${1#on_};"
		plain "$1" ;;
	array)	cat <<SQL
CREATE TABLE o_array AS
SELECT b.ids[o.n] AS id, o.out
FROM (SELECT chunk, array_agg(id ORDER BY id) AS ids, array_agg(raw ORDER BY id) AS raws
      FROM (SELECT id, raw, (row_number() OVER (ORDER BY id) - 1) / 64 AS chunk FROM raw) s
      GROUP BY chunk) b,
     unnest(mms_generate_batch('m', b.raws, '$opts')) WITH ORDINALITY AS o(out, n)
SQL
		;;
	esac
}
decode() { sql -F ' ' -c "SELECT coalesce(sum(decode_rows), 0), coalesce(sum(decode_steps), 0) FROM mms.pools"; }

# run VARIANT: appends "rows/s mean-decode-batch" to $tmp/VARIANT.txt, timed by
# psql (the statement alone, not the settings nor the connection).
run() {
	local v=$1 out ms d0 d1
	sql -c "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS o_$v"
	d0=$(decode)
	out=$(stmt "$v" | sql -c '\timing on' -f -)
	ms=$(sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' <<< "$out" | tail -1)
	d1=$(decode)
	awk -v n="$rows" -v ms="$ms" -v d0="$d0" -v d1="$d1" 'BEGIN {
		split(d0, a, " "); split(d1, b, " "); r = b[1] - a[1]; s = b[2] - a[2];
		printf "%.1f %.1f\n", n / (ms / 1000), (s > 0 ? r / s : 0) }' > "$tmp/$v.txt.last"
	cat "$tmp/$v.txt.last" >> "$tmp/$v.txt"
}
equal() { sql -c "SELECT count(*) FROM o_off JOIN o_$1 USING (id) WHERE o_off.out IS NOT DISTINCT FROM o_$1.out"; }
# rotate R WORDS...: the words turned left by R - 1
rotate() { local r=$1; shift; local a=("$@"); local n=${#a[@]} i; for ((i = 0; i < n; i++)); do printf '%s ' "${a[(i + r - 1) % n]}"; done; }
# summary VARIANT: "median min..max" of its rows/s
summary() { awk '{print $1}' "$tmp/$1.txt" | sort -n | awk '{a[NR] = $1} END {printf "%.1f rows/s (%.1f..%.1f)", a[int((NR + 1) / 2)], a[1], a[NR]}'; }
col_med() { awk -v c="$2" '{print $c}' "$tmp/$1.txt" | med; }

# Whether the planner put the batching node in: without it, `on` is `off` again.
plan=$(stmt on | sed '$s/^/EXPLAIN (COSTS OFF) /' | sql -f -)
grep -q 'MmsBatch' <<< "$plan" && plan="MmsBatch node" || plan="no MmsBatch node"
echo "plan of on ($rows rows, mms.batch_rows = $batch_rows, $workers worker(s) of $threads thread(s)): $plan"

for r in $(seq "$rounds"); do
	line="round $r:"
	for v in $(rotate "$r" off on array); do
		run "$v"
		read -r rps mb < "$tmp/$v.txt.last"
		line+=" $v $rps rows/s (decode batch $mb);"
	done
	e_on=$(equal on)
	e_arr=$(equal array)
	echo "$line equal to off: on $e_on/$rows, array $e_arr/$rows"
done
on=$(col_med on 1)
off=$(col_med off 1)
arr=$(col_med array 1)
p_arr=$(paste "$tmp/on.txt" "$tmp/array.txt" | awk '{print $1 / $3}' | med)
p_off=$(paste "$tmp/on.txt" "$tmp/off.txt" | awk '{print $1 / $3}' | med)
echo "median of $rounds: off $(summary off), on $(summary on), array $(summary array);" \
	"decode batch off $(col_med off 2), on $(col_med on 2), array $(col_med array 2)"
awk -v on="$on" -v off="$off" -v arr="$arr" -v pa="$p_arr" -v po="$p_off" 'BEGIN {
	printf "on/array %.2f (goal >= 0.90; median of the rounds'"'"' %.2f), on/off %.2f (goal >= 4; median of the rounds'"'"' %.2f)\n",
		on / arr, pa, on / off, po }'

# --- SWEEP=1: mms.batch_rows ------------------------------------------------------
if [ "${SWEEP:-0}" = 1 ]; then
	sizes=(${SWEEP_ROWS:-16 64 256})
	for r in $(seq "$rounds"); do
		line="sweep round $r:"
		for b in $(rotate "$r" "${sizes[@]}"); do
			run "on_$b"
			read -r rps mb < "$tmp/on_$b.txt.last"
			e=$(equal "on_$b")
			line+=" batch_rows $b $rps rows/s (decode batch $mb, equal to off $e/$rows);"
		done
		echo "$line"
	done
	line="sweep, median of $rounds:"
	for b in "${sizes[@]}"; do
		line+=" batch_rows $b $(summary "on_$b"), decode batch $(col_med "on_$b" 2);"
	done
	echo "$line"
fi
