#!/bin/bash
# make bench: the engine in F32 and Q8_0 (build/mms-bench, as "mms-f32" and
# "mms-q8_0") and its peers (transformers on PyTorch, ONNX Runtime fp32 and
# dynamically quantized int8, CTranslate2 f32/int8) on the same models, inputs
# and thread count, in one run, then a report of ratios and fractions of the
# machine's limits (bench/report.py). Needs PyPI for the peers' virtual
# environment (tools/venv.sh bench).
#
# For each model, for round r in 1..ROUNDS, every engine runs once (its own
# process: load, warm-up, the workloads), in the engines' order rotated by r-1,
# so that background load does not favour whoever runs first; every JSON line
# gets "round". The machine's limits (streaming read, GEMV, sgemm) are measured
# by each round's mms-f32 run, after its workloads.
#
# Knobs (environment):
#   THREADS=N          threads for every engine (default: all cores)
#   MODELS="..."       of small base large demo (default "small base large")
#   ROUNDS=N           rounds (default 3; QUICK: 1)
#   QUICK=1            smoke run: 1 repetition, 50 mixed inputs unless MIXED_* say otherwise
#   ENGINES="..."      a subset of: mms-f32 mms-q8_0 transformers onnxruntime
#                      onnxruntime-int8 ctranslate2-f32 ctranslate2-int8
#   REPS=N             timed repetitions of a workload within a round, best kept
#                      (default 1: the rounds are the repetitions)
#   WORKLOADS="..."    default: decode_b1 decode_b8 decode_b32 encode_b32 mixed_1000
#   LARGE_WORKLOADS="..."  for large (default: decode_b1 decode_b32 encode_b32)
#   MIXED_<model>=N    mixed inputs for that model (defaults: small 200, base 64,
#                      large 32 (if LARGE_WORKLOADS has mixed_1000), demo 1000; the
#                      inputs file has 1000): what keeps MODELS="small base" ROUNDS=3
#                      within about 25 minutes on 2 cores
#   LIMIT_<model>="engine:workload=N,..."  fewer inputs for a peer's decode or mixed
#                      workload (none by default), e.g. LIMIT_large=transformers:decode_b32=8;
#                      such records carry "limited_from" and a "note", marked in the report
#   OUT=path           results file (default bench/out/results.jsonl, report in
#                      bench/out/report.txt; else the report is OUT less .jsonl + .report.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-$(nproc)}
models=${MODELS:-"small base large"}
quick=${QUICK:+--quick}
rounds=${ROUNDS:-$([ -n "$quick" ] && echo 1 || echo 3)}
reps=${REPS:-1}
all_engines="mms-f32 mms-q8_0 transformers onnxruntime onnxruntime-int8 ctranslate2-f32 ctranslate2-int8"
engines=$(echo "${ENGINES:-$all_engines}" | tr ',' ' ')
for e in $engines; do
	case " $all_engines " in *" $e "*) ;; *) echo "run.sh: unknown engine $e (known: $all_engines)" >&2; exit 2 ;; esac
done
workloads=$(echo "${WORKLOADS:-decode_b1 decode_b8 decode_b32 encode_b32 mixed_1000}" | tr ' ' ',')
large_workloads=$(echo "${LARGE_WORKLOADS:-decode_b1 decode_b32 encode_b32}" | tr ' ' ',')
if [ -n "$quick" ]; then q=50; else q=""; fi
MIXED_small=${MIXED_small:-${q:-200}}
MIXED_base=${MIXED_base:-${q:-64}}
MIXED_large=${MIXED_large:-${q:-32}}
MIXED_demo=${MIXED_demo:-${q:-1000}}
py=$(tools/venv.sh bench)
mkdir -p bench/out
out=${OUT:-bench/out/results.jsonl}
: > "$out"
[ -x build/mms-bench ] || { echo "run.sh: build/mms-bench missing (make build/mms-bench)" >&2; exit 1; }

# JSON lines on stdin -> $out, each with "round": $1 first
tag() { sed -u "s/^{/{\"round\": $1, /" | grep '^{' >> "$out" || true; }
now() { date +%s.%N; }
since() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.1f", a - b }'; }
# a record of how long one engine's run took (load and warm-up included; for
# mms, which build of mms-bench ran: the tree may be rebuilt during a run), or of its failure
wall() { printf '{"round": %s, "engine": "%s", "model": "%s", "workload": "wall", "seconds": %s%s}\n' \
	"$1" "$2" "$3" "$(since "$4")" "${5:+, \"build\": \"$5\"}" >> "$out"; }
error() { printf '{"round": %s, "engine": "%s", "model": "%s", "workload": "error", "rc": %s}\n' \
	"$1" "$2" "$3" "$4" >> "$out"; echo "run.sh: $2 on $3 (round $1) failed: exit $4" >&2; }

t_start=$(now)
for m in $models; do
	t_model=$(now)
	if [ "$m" = demo ]; then
		[ -f models/datefix.gguf ] || { echo "skipping demo: models/datefix.gguf missing" >&2; continue; }
	fi
	$py bench/make_models.py --models "$m" >&2
	$py bench/make_models.py --describe "$m" | tag 0
	f32=bench/out/$m.gguf
	[ "$m" = demo ] && f32=models/datefix.gguf
	q8=bench/out/$m-q8_0.gguf
	wl=$workloads
	[ "$m" = large ] && wl=$large_workloads
	mv=MIXED_$m
	mixed=${!mv:-1000}
	lv=LIMIT_$m
	limit=${!lv:-}
	common=(--model "$m" --threads "$threads" --workloads "$wl" --reps "$reps" --mixed "$mixed")
	# transformers' greedy ids, the reference every engine's are compared with
	# (and the same on the Q8_0 weights, for mms-q8_0)
	$py bench/peers.py "${common[@]}" $quick --make-ref | tag 0 ||
		echo "run.sh: no reference ids for $m (peers.py --make-ref failed)" >&2
	read -r -a order <<< "$engines"
	n=${#order[@]}
	for r in $(seq 1 "$rounds"); do
		for i in $(seq 0 $((n - 1))); do
			e=${order[$(( (i + r - 1) % n ))]}
			echo "== $m round $r: $e" >&2
			t0=$(now)
			rc=0
			build=""
			case $e in
			mms-f32 | mms-q8_0)
				# the F32 run measures the machine's limits too, after its workloads
				if [ $e = mms-f32 ]; then file=$f32 lim=""; else file=$q8 lim=--no-limits; fi
				ids=bench/out/ids-$m-$e.json
				rm -f "$ids"
				build=$(sha256sum build/mms-bench | cut -c1-12)
				build/mms-bench --model "$file" --name "$m" --engine "$e" --inputs "bench/out/inputs-$m.txt" \
					--threads "$threads" --workloads "$wl" --reps "$reps" --mixed "$mixed" --ids "$ids" \
					$quick $lim > "$out.part" || rc=$?
				tag "$r" < "$out.part"
				if [ $rc = 0 ] && [ -s "$ids" ]; then
					$py bench/peers.py --model "$m" --check-ids "$ids" --engines "$e" | tag "$r" || true
				fi
				;;
			*)
				$py bench/peers.py "${common[@]}" $quick --engines "$e" --limit "$limit" > "$out.part" || rc=$?
				tag "$r" < "$out.part"
				;;
			esac
			wall "$r" "$e" "$m" "$t0" "$build"
			[ $rc = 0 ] || error "$r" "$e" "$m" "$rc"
		done
	done
	echo "== $m: $(since "$t_model") s" >&2
done
rm -f "$out.part"
echo "== all: $(since "$t_start") s" >&2
report=bench/out/report.txt
[ -n "${OUT:-}" ] && report=${out%.jsonl}.report.txt
$py bench/report.py "$out" | tee "$report"
