#!/bin/bash
# Creates a Python virtual environment for the tools, if it is missing or
# incomplete, and prints its python path. Safe to run repeatedly. Never needed
# at run time; `make test` needs only the gateway's (it installs from PyPI).
#   tools/venv.sh        -> .venv: the reference (fixtures, goldens, training),
#                           transformers pinned to the version the goldens came from
#   tools/venv.sh bench  -> .venv-bench: the benchmark peers. optimum's ONNX export
#                           needs an older transformers, so it lives apart.
#   tools/venv.sh gateway -> .venv-gateway: clients of the HTTP gateway's tests
#                           (test/pg/t_gateway.sh): the official openai client,
#                           schemathesis (fuzzes /openapi.json) and
#                           openapi-spec-validator; no torch.
# torch is pinned to 2.13.0: that is the CPU build available locally; plain `torch`
# (or a newer one) would download a CUDA build of several GB.
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ "${1:-}" = gateway ]; then
	venv="$root/.venv-gateway"
	check='import openai, schemathesis, openapi_spec_validator; assert openai.__version__ == "3.57.0"'
	pkgs=(openai==3.57.0 schemathesis==4.32.5 openapi-spec-validator==0.9.0)
elif [ "${1:-}" = bench ]; then
	venv="$root/.venv-bench"
	check='import torch, transformers, sentencepiece, gguf, numpy, google.protobuf, onnxruntime, optimum, ctranslate2'
	pkgs=(torch==2.13.0 "transformers<4.58" sentencepiece gguf numpy protobuf onnx onnxruntime "optimum[onnxruntime]" ctranslate2)
else
	venv="$root/.venv"
	check='import torch, transformers, sentencepiece, gguf, numpy, google.protobuf; assert transformers.__version__ == "5.24.0"'
	pkgs=(torch==2.13.0 transformers==5.24.0 sentencepiece gguf numpy protobuf)
fi
py="$venv/bin/python"

if [ ! -x "$py" ]; then
	python3 -m venv "$venv" >&2
fi
if ! "$py" -c "$check" 2>/dev/null; then
	"$venv/bin/pip" install -q "${pkgs[@]}" >&2
fi
echo "$py"
