#!/usr/bin/env python3
"""Derives test/fixtures/t5encoder.gguf (arch "t5encoder", as llama.cpp writes
encoder-only T5 files) from test/fixtures/flan_gated.gguf: the t5.* keys
renamed t5encoder.*, decoder tensors dropped, everything else byte-identical.
Its encoder output must therefore equal flan_gated.golden's `enc` records.

Rerun: tools/venv.sh && .venv/bin/python tools/make_encoder_fixture.py
"""
import os
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType

sys.path.insert(0, os.path.dirname(__file__))
import gguf_writer as gw  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")
SRC = os.path.join(ROOT, "test", "fixtures", "flan_gated.gguf")
DST = os.path.join(ROOT, "test", "fixtures", "t5encoder.gguf")


def main():
    r = GGUFReader(SRC)
    out = gw.GGUFFile(write_alignment_key=False)
    for f in r.fields.values():
        key = f.name
        if key.startswith("GGUF."):
            continue
        if key == "general.architecture":
            out.add(key, gw.GGUF_STR, "t5encoder")
            continue
        if key.startswith("t5.") and "decoder" not in key:
            key = "t5encoder." + key[3:]
        elif key.startswith("t5."):
            continue
        vtype = f.types[0]
        if vtype == GGUFValueType.ARRAY:
            etype = f.types[1]
            if etype == GGUFValueType.STRING:
                vals = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
            else:
                vals = [f.parts[i][0].item() for i in f.data]
                if etype == GGUFValueType.UINT8:
                    vals = bytes(vals)
            out.add_array(key, int(etype), vals)
        elif vtype == GGUFValueType.STRING:
            out.add(key, int(vtype), bytes(f.parts[f.data[0]]).decode("utf-8"))
        else:
            out.add(key, int(vtype), f.parts[f.data[0]][0].item())
    for t in r.tensors:
        if t.name.startswith("dec.") or t.name == "output.weight":
            continue
        assert t.tensor_type == 0, "expects an F32 source"
        shape = list(reversed([int(d) for d in t.shape]))
        out.add_tensor(t.name, np.asarray(t.data, dtype=np.float32).reshape(shape), gw.F32)
    n = out.write(DST)
    print(f"wrote {DST}: {n} bytes")


if __name__ == "__main__":
    main()
