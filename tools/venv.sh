#!/bin/bash
# Creates the Python virtual environment the tools use (fixtures, goldens, benchmarks)
# at <repo>/.venv, if it is missing or incomplete, and prints its python path.
# Safe to run repeatedly. Never needed at run time or by `make test`.
#
# torch is pinned to 2.13.0: that is the CPU build available locally; plain `torch`
# (or a newer one) would download a CUDA build of several GB.
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
py="$venv/bin/python"

if [ ! -x "$py" ]; then
	python3 -m venv "$venv" >&2
fi
if ! "$py" -c 'import torch, transformers, sentencepiece, gguf, numpy, google.protobuf' 2>/dev/null; then
	"$venv/bin/pip" install -q torch==2.13.0 transformers sentencepiece gguf numpy protobuf >&2
fi
echo "$py"
