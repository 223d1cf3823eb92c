#!/bin/bash
# make demo: runs the engine CLI on a bundled model. Grows into the full
# PostgreSQL demo as the extension lands (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
model=test/fixtures/flan_gated.gguf
run() { printf "$"; printf " %q" "$@"; printf "\n"; "$@"; echo; }
echo "== mms-run on $model (a tiny random-weight flan-t5-shaped fixture: the text is noise, the mechanics are real)"
run build/mms-run --model "$model" --tokenize "Hello, world!" "naïve café ﬁve"
run build/mms-run --model "$model" --ids --max-new-tokens 8 "Hello, world!"
run build/mms-run --model "$model" --max-new-tokens 8 --num-beams 4 "Hello, world!" "another input"
run build/mms-run --model "$model" --max-new-tokens 8 --temperature 0.8 --top-p 0.9 --seed 42 "Hello, world!"
run build/mms-run --model "$model" --score "target text" "Hello, world!"
