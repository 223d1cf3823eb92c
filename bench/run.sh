#!/bin/bash
# make bench: the engine and its peers (transformers on PyTorch, ONNX Runtime,
# CTranslate2 f32/int8) on the same models, inputs and thread count, in one
# run, then a report of ratios and fractions of the machine's limits.
# Needs PyPI for the peers' virtual environment (tools/venv.sh).
# THREADS=N (default: all cores); QUICK=1 for a smoke run; MODELS="small demo".
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-$(nproc)}
models=${MODELS:-"small demo"}
quick=${QUICK:+--quick}
py=$(tools/venv.sh bench)
mkdir -p bench/out
out=bench/out/results.jsonl
: > "$out"
limits=""
for m in $models; do
	if [ "$m" = demo ]; then
		[ -f models/datefix.gguf ] || { echo "skipping demo: models/datefix.gguf missing" >&2; continue; }
		$py bench/make_models.py --demo >&2
		gguf=models/datefix.gguf
	else
		$py bench/make_models.py >&2
		gguf=bench/out/$m.gguf
	fi
	echo "== $m: mms" >&2
	build/mms-bench --model "$gguf" --name "$m" --inputs "bench/out/inputs-$m.txt" \
		--threads "$threads" $quick $limits >> "$out"
	limits=--no-limits
	echo "== $m: peers" >&2
	$py bench/peers.py --model "$m" --threads "$threads" $quick >> "$out"
done
$py bench/report.py "$out" | tee bench/out/report.txt
