#!/usr/bin/env python3
"""Writes the broken model files the registry tests feed to mms_register, one per
kind of defect, derived from a good fixture at test time (so they follow the
fixtures when tools/make_fixtures.py regenerates them). Standard library only:
the tests must not need the .venv.

    python3 test/pg/make_bad_gguf.py test/fixtures/flan_gated.gguf OUTDIR [TIED.gguf]

With TIED.gguf (test/fixtures/t5_relu_tied.gguf), also tied_stored_head.gguf:
the same model with output.weight a copy of token_embd.weight, and
tied_q8_head.gguf, that copy quantized to Q8_0. Also writes nan_weights.gguf (valid, but NaN in the final decoder norm) and
two valid variants: OUTDIR/other_tokenizer.gguf, the same model
with a tokenizer that splits text differently (proves the tokenizer cache is
dropped when a model is replaced), and OUTDIR/extra_metadata.gguf, with extra
keys of every value type (short and long arrays, a string that is not UTF-8,
NaN) for the catalog's metadata column.
"""

import os
import struct
import sys

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
          BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}


class Reader:
    def __init__(self, buf):
        self.buf = buf
        self.pos = 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return v

    def string(self):
        n = self.take("<Q")
        s = self.buf[self.pos:self.pos + n]
        self.pos += n
        return s

    def value(self, t):
        if t == STR:
            return self.string()
        if t == ARR:
            et = self.take("<I")
            n = self.take("<Q")
            return (et, [self.value(et) for _ in range(n)])
        return self.take(SCALAR[t])


def parse(buf):
    r = Reader(buf)
    assert r.take("<I") == 0x46554747, "not a GGUF file"
    version = r.take("<I")
    n_tensors = r.take("<Q")
    n_kv = r.take("<Q")
    kvs = []
    for _ in range(n_kv):
        key = r.string()
        t = r.take("<I")
        kvs.append([key, t, r.value(t)])
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        nd = r.take("<I")
        ne = [r.take("<Q") for _ in range(nd)]
        ty = r.take("<I")
        off = r.take("<Q")
        tensors.append([name, ne, ty, off])
    align = 32
    for key, t, v in kvs:
        if key == b"general.alignment":
            align = v
    data_start = (r.pos + align - 1) // align * align
    data = buf[data_start:]
    return dict(version=version, kvs=kvs, tensors=tensors, align=align, data=data)


def put_string(out, s):
    out += struct.pack("<Q", len(s)) + s


def put_value(out, t, v):
    if t == STR:
        put_string(out, v)
    elif t == ARR:
        et, items = v
        out += struct.pack("<IQ", et, len(items))
        for item in items:
            put_value(out, et, item)
    else:
        out += struct.pack(SCALAR[t], v)


def write(g):
    out = bytearray()
    out += struct.pack("<IIQQ", 0x46554747, g["version"], len(g["tensors"]), len(g["kvs"]))
    for key, t, v in g["kvs"]:
        put_string(out, key)
        out += struct.pack("<I", t)
        put_value(out, t, v)
    for name, ne, ty, off in g["tensors"]:
        put_string(out, name)
        out += struct.pack("<I", len(ne))
        for d in ne:
            out += struct.pack("<Q", d)
        out += struct.pack("<IQ", ty, off)
    pad = (-len(out)) % g["align"]
    out += b"\0" * pad
    out += g["data"]
    return bytes(out)


def copy(g):
    return dict(g, kvs=[list(kv) for kv in g["kvs"]],
                tensors=[[n, list(ne), ty, off] for n, ne, ty, off in g["tensors"]])


def set_kv(g, key, value):
    for kv in g["kvs"]:
        if kv[0] == key:
            kv[2] = value
            return
    raise KeyError(key)


def main():
    src, outdir = sys.argv[1], sys.argv[2]
    os.makedirs(outdir, exist_ok=True)
    good = open(src, "rb").read()
    g = parse(good)
    files = {}

    files["empty"] = b""
    files["truncated"] = good[:len(good) // 2]
    files["not_gguf"] = b"GGUX" + good[4:]

    v = copy(g)
    v["version"] = 1
    files["wrong_version"] = write(v)

    v = copy(g)
    for kv in v["kvs"]:
        if kv[0] == b"general.architecture":
            kv[2] = b"llama"
        elif kv[0].startswith(b"t5."):
            kv[0] = b"llama." + kv[0][3:]
    files["bad_arch"] = write(v)

    # Dropping a tensor's header entry keeps the data section valid.
    v = copy(g)
    v["tensors"] = [t for t in v["tensors"] if t[0] != b"dec.blk.1.ffn_up.weight"]
    files["missing_tensor"] = write(v)

    # Transposed [d_model, d_ff] -> [d_ff, d_model]: same bytes, wrong shape.
    v = copy(g)
    for t in v["tensors"]:
        if t[0] == b"enc.blk.0.ffn_up.weight":
            t[1] = [t[1][1], t[1][0]]
    files["wrong_shape"] = write(v)

    # Q4_1 (type 3): a real ggml type we do not serve.
    v = copy(g)
    for t in v["tensors"]:
        if t[0] == b"enc.blk.0.attn_norm.weight":
            t[2] = 3
    files["bad_type"] = write(v)

    v = copy(g)
    v["kvs"] = [kv for kv in v["kvs"] if not kv[0].startswith(b"tokenizer.")]
    files["no_tokenizer"] = write(v)

    # Same pieces without the dummy space prefix: the first word tokenizes differently.
    v = copy(g)
    set_kv(v, b"tokenizer.ggml.add_space_prefix", False)
    files["other_tokenizer"] = write(v)

    v = copy(g)
    v["kvs"] += [
        [b"test.i8", I8, -5],
        [b"test.u64", U64, 2**64 - 1],
        [b"test.f64", F64, 0.1],
        [b"test.f32_nan", F32, float("nan")],
        [b"test.flag", BOOL, False],
        [b"test.not_utf8", STR, b"ab\xffcd"],
        [b"test.short_ints", ARR, (I32, [1, -2, 3])],
        [b"test.short_floats", ARR, (F32, [0.5, -1.25])],
        [b"test.names", ARR, (STR, [b"alpha", b"beta"])],
        [b"test.empty", ARR, (U8, [])],
        [b"test.long", ARR, (U16, list(range(65)))],
    ]
    files["extra_metadata"] = write(v)

    # A well-formed file whose weights are not numbers: NaN in the decoder's
    # last feed-forward (F32), so every request fails at its first step.
    v = copy(g)
    data = bytearray(v["data"])
    for name, ne, ty, off in v["tensors"]:
        if name == b"dec.output_norm.weight" and ty == 0:
            for i in range(ne[0]):
                struct.pack_into("<f", data, off + 4 * i, float("nan"))
    v["data"] = bytes(data)
    files["nan_weights"] = write(v)

    # A tied model (ReLU, like t5 v1.0) whose file also stores the LM head as
    # an exact copy of the embeddings, as llama.cpp's converter writes
    # checkpoints that carry lm_head.weight: must behave as the tied original.
    if len(sys.argv) > 3:
        t = parse(open(sys.argv[3], "rb").read())
        emb = next(x for x in t["tensors"] if x[0] == b"token_embd.weight")
        size = 4 if emb[2] == 0 else 2
        n_bytes = size * emb[1][0] * emb[1][1]
        data = bytearray(t["data"])
        data += b"\0" * ((-len(data)) % t["align"])
        off = len(data)
        data += t["data"][emb[3]:emb[3] + n_bytes]
        t["tensors"].append([b"output.weight", list(emb[1]), emb[2], off])
        t["data"] = bytes(data)
        files["tied_stored_head"] = write(t)

        # The same copy stored as Q8_0, as llama-quantize leaves a head whose
        # type differs from the embedding's: tied up to quantization error.
        t = parse(open(sys.argv[3], "rb").read())
        emb = next(x for x in t["tensors"] if x[0] == b"token_embd.weight")
        assert emb[2] == 0, "the tied fixture's embedding must be F32"
        vals = struct.unpack_from("<%df" % (emb[1][0] * emb[1][1]), t["data"], emb[3])
        q = bytearray()
        for b in range(0, len(vals), 32):
            block = vals[b:b + 32]
            d = max(abs(v) for v in block) / 127.0
            q += struct.pack("<e", d)
            q += struct.pack("<32b", *[int(round(v / d)) if d else 0 for v in block])
        data = bytearray(t["data"])
        data += b"\0" * ((-len(data)) % t["align"])
        off = len(data)
        data += q
        t["tensors"].append([b"output.weight", list(emb[1]), 8, off])
        t["data"] = bytes(data)
        files["tied_q8_head"] = write(t)

    for name, data in files.items():
        with open(os.path.join(outdir, name + ".gguf"), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
