#!/usr/bin/env python3
"""The project's own minimal GGUF v3 writer, and the HF T5 -> GGUF mapping that
llama.cpp's convert_hf_to_gguf.py uses for arch "t5".

Owns: the byte layout (header, KVs, tensor infos, alignment), the F32/F16/BF16/
Q8_0/Q4_0 encoders (bit-exact with ggml's reference quantizers) and decoders, and
write_t5_gguf(). Does not own: goldens (tools/make_fixtures.py) or tokenizer cases.
Every file written is read back with llama.cpp's own `gguf` package and checked.

Used by tools/make_fixtures.py; rerun the fixtures with
    tools/venv.sh && .venv/bin/python tools/make_fixtures.py
"""

import os
import struct

import numpy as np

# GGUF metadata value types
GGUF_U8, GGUF_I8, GGUF_U16, GGUF_I16, GGUF_U32, GGUF_I32, GGUF_F32, GGUF_BOOL, \
    GGUF_STR, GGUF_ARR, GGUF_U64, GGUF_I64, GGUF_F64 = range(13)

_SCALAR_FMT = {GGUF_U8: "<B", GGUF_I8: "<b", GGUF_U16: "<H", GGUF_I16: "<h",
               GGUF_U32: "<I", GGUF_I32: "<i", GGUF_F32: "<f", GGUF_BOOL: "<?",
               GGUF_U64: "<Q", GGUF_I64: "<q", GGUF_F64: "<d"}

# ggml tensor types
F32, F16, Q4_0, Q8_0, BF16 = 0, 1, 2, 8, 30
TYPE_NAMES = {F32: "f32", F16: "f16", BF16: "bf16", Q8_0: "q8_0", Q4_0: "q4_0"}
TYPE_BY_NAME = {v: k for k, v in TYPE_NAMES.items()}
QK = 32  # block size of Q8_0 and Q4_0

# general.file_type (llama.cpp's LlamaFileType) for a file whose weights are of one type
FILE_TYPE = {F32: 0, F16: 1, Q4_0: 2, Q8_0: 7, BF16: 32}

ALIGNMENT = 32


# ---------------------------------------------------------------------------
# Tensor encoders / decoders (numpy; float32 in, float32 out)
# ---------------------------------------------------------------------------

def _f32(x):
    return np.ascontiguousarray(x, dtype=np.float32)


def fp32_to_bf16_bits(x):
    """Round to nearest even, as ggml_compute_fp32_to_bf16 (NaN kept quiet)."""
    u = _f32(x).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(_f32(x))
    r[nan] = ((u[nan] >> 16) | 64).astype(np.uint16)
    return r


def bf16_bits_to_fp32(b):
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _roundf(x):
    """C roundf (half away from zero) on float32, without the x+0.5 rounding trap."""
    t = np.trunc(x)
    frac = np.abs(x - t)  # exact in float32
    return t + np.sign(x) * (frac >= np.float32(0.5))


def quantize_q8_0(x):
    """quantize_row_q8_0_ref: d = absmax/127, q = roundf(x/d) (computed as x*(1/d))."""
    x = _f32(x).reshape(-1, QK)
    amax = np.abs(x).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = _roundf((x * inv[:, None]).astype(np.float32)).astype(np.int8)
    out = np.empty(x.shape[0], dtype=[("d", "<f2"), ("qs", "i1", (QK,))])
    out["d"] = d.astype(np.float16)
    out["qs"] = q
    return out.tobytes()


def dequantize_q8_0(raw, n):
    blk = np.frombuffer(raw, dtype=[("d", "<f2"), ("qs", "i1", (QK,))], count=n // QK)
    d = blk["d"].astype(np.float32)
    return (blk["qs"].astype(np.float32) * d[:, None]).astype(np.float32).reshape(-1)


def quantize_q4_0(x):
    """quantize_row_q4_0_ref: max = the first value of largest |x| (sign kept),
    d = max/-8, id = 1/d, q = min(15, (int8)(x*id + 8.5)); low nibble = element j,
    high nibble = element j+16."""
    x = _f32(x).reshape(-1, QK)
    idx = np.abs(x).argmax(axis=1)  # first occurrence, as the C loop's strict '<'
    mx = x[np.arange(x.shape[0]), idx]
    d = (mx / np.float32(-8)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = ((x * inv[:, None]).astype(np.float32) + np.float32(8.5)).astype(np.float32)
    q = np.minimum(15, np.trunc(v).astype(np.int32))  # (int8_t) truncates; v >= 0.5 here
    qs = (q[:, :QK // 2] | (q[:, QK // 2:] << 4)).astype(np.uint8)
    out = np.empty(x.shape[0], dtype=[("d", "<f2"), ("qs", "u1", (QK // 2,))])
    out["d"] = d.astype(np.float16)
    out["qs"] = qs
    return out.tobytes()


def dequantize_q4_0(raw, n):
    blk = np.frombuffer(raw, dtype=[("d", "<f2"), ("qs", "u1", (QK // 2,))], count=n // QK)
    d = blk["d"].astype(np.float32)
    lo = (blk["qs"] & 0x0F).astype(np.int32) - 8
    hi = (blk["qs"] >> 4).astype(np.int32) - 8
    q = np.concatenate([lo, hi], axis=1).astype(np.float32)
    return (q * d[:, None]).astype(np.float32).reshape(-1)


def encode(x, ggml_type):
    """Encodes a float array (numpy order, last axis contiguous) as ggml_type bytes."""
    x = _f32(x)
    if ggml_type == F32:
        return x.astype("<f4").tobytes()
    if ggml_type == F16:
        return x.astype("<f2").tobytes()
    if ggml_type == BF16:
        return fp32_to_bf16_bits(x).astype("<u2").tobytes()
    if x.shape[-1] % QK:
        raise ValueError(f"row length {x.shape[-1]} is not a multiple of {QK}")
    if ggml_type == Q8_0:
        return quantize_q8_0(x)
    if ggml_type == Q4_0:
        return quantize_q4_0(x)
    raise ValueError(f"unsupported ggml type {ggml_type}")


def decode(raw, ggml_type, shape):
    """Inverse of encode(): float32 array of `shape` (numpy order)."""
    n = int(np.prod(shape))
    if ggml_type == F32:
        v = np.frombuffer(raw, dtype="<f4", count=n)
    elif ggml_type == F16:
        v = np.frombuffer(raw, dtype="<f2", count=n).astype(np.float32)
    elif ggml_type == BF16:
        v = bf16_bits_to_fp32(np.frombuffer(raw, dtype="<u2", count=n))
    elif ggml_type == Q8_0:
        v = dequantize_q8_0(raw, n)
    elif ggml_type == Q4_0:
        v = dequantize_q4_0(raw, n)
    else:
        raise ValueError(f"unsupported ggml type {ggml_type}")
    return np.array(v, dtype=np.float32).reshape(shape)


def nbytes(ggml_type, n):
    return {F32: 4 * n, F16: 2 * n, BF16: 2 * n,
            Q8_0: n // QK * 34, Q4_0: n // QK * 18}[ggml_type]


# ---------------------------------------------------------------------------
# The file
# ---------------------------------------------------------------------------

def _str(s):
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _val(vtype, v):
    if vtype == GGUF_STR:
        return _str(v)
    return struct.pack(_SCALAR_FMT[vtype], v)


class GGUFFile:
    """Collects KVs and tensors in insertion order, then writes them as GGUF v3."""

    def __init__(self, alignment=ALIGNMENT, write_alignment_key=True):
        self.alignment = alignment
        self.kv = []        # (key, vtype, value, elem_type or None)
        self.tensors = []   # (name, ne list, ggml_type, bytes, dequantized float32 array)
        self.originals = {}  # name -> float32 input of encoded tensors, for verify()
        if write_alignment_key:
            self.add("general.alignment", GGUF_U32, alignment)

    def add(self, key, vtype, value):
        assert all(k != key for k, *_ in self.kv), key
        self.kv.append((key, vtype, value, None))

    def add_array(self, key, elem_type, values):
        assert all(k != key for k, *_ in self.kv), key
        if not isinstance(values, (bytes, bytearray)):
            values = list(values)
        self.kv.append((key, GGUF_ARR, values, elem_type))

    def add_tensor(self, name, x, ggml_type):
        """x in numpy order ([out, in] for a Linear): ne is the reversed shape."""
        x = _f32(x)
        raw = encode(x, ggml_type)
        if ggml_type != F32:
            self.originals[name] = x
        assert len(raw) == nbytes(ggml_type, x.size)
        self.tensors.append((name, list(reversed(x.shape)), ggml_type, raw,
                             decode(raw, ggml_type, x.shape)))
        return self.tensors[-1][4]

    def _pad(self, n):
        return (-n) % self.alignment

    def to_bytes(self):
        out = bytearray()
        out += b"GGUF" + struct.pack("<IQQ", 3, len(self.tensors), len(self.kv))
        for key, vtype, value, etype in self.kv:
            out += _str(key) + struct.pack("<I", vtype)
            if vtype == GGUF_ARR:
                out += struct.pack("<IQ", etype, len(value))
                if etype == GGUF_U8 and isinstance(value, (bytes, bytearray)):
                    out += value
                else:
                    for v in value:
                        out += _val(etype, v)
            else:
                out += _val(vtype, value)
        offset = 0
        for name, ne, ggml_type, raw, _ in self.tensors:
            out += _str(name) + struct.pack("<I", len(ne))
            out += b"".join(struct.pack("<Q", d) for d in ne)
            out += struct.pack("<IQ", ggml_type, offset)
            offset += len(raw) + self._pad(len(raw))
        out += b"\0" * self._pad(len(out))
        for _, _, _, raw, _ in self.tensors:
            out += raw + b"\0" * self._pad(len(raw))
        return bytes(out)

    def write(self, path):
        data = self.to_bytes()
        with open(path, "wb") as f:
            f.write(data)
        verify(path, self)
        return len(data)


def verify(path, expect):
    """Reads `path` back with llama.cpp's gguf package; asserts every KV, tensor
    name, shape, type and byte matches what `expect` (a GGUFFile) holds."""
    import gguf
    r = gguf.GGUFReader(path)
    assert r.alignment == expect.alignment, (r.alignment, expect.alignment)
    keys = [k for k in r.fields if not k.startswith("GGUF.")]
    assert keys == [k for k, *_ in expect.kv], (keys, [k for k, *_ in expect.kv])
    for key, vtype, value, etype in expect.kv:
        f = r.fields[key]
        assert int(f.types[0]) == vtype, (key, f.types)
        got = f.contents()
        if vtype == GGUF_ARR:
            assert int(f.types[1]) == etype, (key, f.types)
            if etype == GGUF_STR:
                want = [v if isinstance(v, str) else v.decode("utf-8") for v in value]
            elif etype == GGUF_F32:
                want = [float(np.float32(v)) for v in value]
            elif etype == GGUF_U8:
                want = list(bytes(value)) if isinstance(value, (bytes, bytearray)) else value
            else:
                want = list(value)
            assert list(got) == want, key
        elif vtype == GGUF_F32:
            assert got == float(np.float32(value)), (key, got, value)
        else:
            assert got == value, (key, got, value)
    assert len(r.tensors) == len(expect.tensors)
    for t, (name, ne, ggml_type, raw, deq) in zip(r.tensors, expect.tensors):
        assert t.name == name, (t.name, name)
        assert [int(d) for d in t.shape] == ne, (name, t.shape, ne)
        assert int(t.tensor_type) == ggml_type, (name, t.tensor_type)
        assert t.data_offset % expect.alignment == 0
        assert bytes(np.asarray(t.data).tobytes()) == raw, name
        # Cross-check our codecs with gguf-py's (a port of ggml's reference code).
        if ggml_type in (Q8_0, Q4_0, BF16, F16):
            ref = gguf.quants.dequantize(np.asarray(t.data), gguf.GGMLQuantizationType(ggml_type))
            assert np.array_equal(ref.reshape(deq.shape), deq), name
        if ggml_type in (Q8_0, Q4_0, BF16) and name in expect.originals:
            refq = gguf.quants.quantize(expect.originals[name], gguf.GGMLQuantizationType(ggml_type))
            assert refq.tobytes() == raw, f"{name}: our quantizer differs from gguf-py's"
    return r


# ---------------------------------------------------------------------------
# HF T5ForConditionalGeneration -> GGUF, as convert_hf_to_gguf.py writes arch "t5"
# ---------------------------------------------------------------------------

# SentencePiece piece types -> llama.cpp token types
TOK_NORMAL, TOK_UNKNOWN, TOK_CONTROL, TOK_USER_DEFINED, TOK_UNUSED, TOK_BYTE = 1, 2, 3, 4, 5, 6


def _sp_vocab(sp_model_path, vocab_size):
    """tokens/scores/types as llama.cpp's T5Model.set_vocab builds them, except that
    SentencePiece user-defined pieces get type 4 (llama.cpp writes 1 for them; an
    exact SentencePiece tokenizer has to match them as whole pieces)."""
    os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    with open(sp_model_path, "rb") as f:
        proto.ParseFromString(f.read())
    assert proto.trainer_spec.model_type == 1, "only unigram SentencePiece models"
    sp = spm.SentencePieceProcessor(model_file=sp_model_path)
    n_sp = sp.vocab_size()
    assert vocab_size >= n_sp, (vocab_size, n_sp)

    # Ids past the SentencePiece vocab: "[PAD<id>]", score -10000, unused (llama.cpp).
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [TOK_UNUSED] * vocab_size
    for i in range(n_sp):
        t = TOK_NORMAL
        if sp.IsUnknown(i):
            t = TOK_UNKNOWN
        elif sp.IsControl(i):
            t = TOK_CONTROL
        elif sp.IsUnused(i):
            t = TOK_UNUSED
        elif sp.IsByte(i):
            t = TOK_BYTE
        elif proto.pieces[i].type == pb.ModelProto.SentencePiece.USER_DEFINED:
            t = TOK_USER_DEFINED
        tokens[i] = sp.IdToPiece(i)
        scores[i] = sp.GetScore(i)
        types[i] = t
    ns = proto.normalizer_spec
    return dict(tokens=tokens, scores=scores, types=types, n_sp=n_sp,
                add_space_prefix=bool(ns.add_dummy_prefix),
                remove_extra_whitespaces=bool(ns.remove_extra_whitespaces),
                charsmap=bytes(ns.precompiled_charsmap),
                eos=sp.eos_id(), unk=sp.unk_id(), pad=sp.pad_id())


def _np(t):
    return t.detach().to("cpu").float().numpy()


def t5_tensors(hf_model, rel_bias_every_layer=False):
    """[(gguf name, HF state_dict name, numpy array)] in the order written; HF arrays
    are taken as-is (a Linear [out, in] becomes ne=[in, out]; the relative bias
    [n_buckets, n_head] becomes ne=[n_head, n_buckets])."""
    cfg = hf_model.config
    sd = {k: _np(v) for k, v in hf_model.state_dict().items()}
    out = []

    def put(gname, hname):
        out.append((gname, hname, sd[hname]))

    put("token_embd.weight", "shared.weight")
    for stack, n_layer in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
        p = "enc" if stack == "encoder" else "dec"
        rel_b = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        for i in range(n_layer):
            hf = f"{stack}.block.{i}."
            pre = f"{p}.blk.{i}."
            put(pre + "attn_norm.weight", hf + "layer.0.layer_norm.weight")
            for x in "qkvo":
                put(pre + f"attn_{x}.weight", hf + f"layer.0.SelfAttention.{x}.weight")
            # HF keeps the bias in layer 0 only and shares it; copies stay identical.
            if i == 0 or rel_bias_every_layer:
                put(pre + "attn_rel_b.weight", rel_b)
            ff = hf + "layer.1."
            if stack == "decoder":
                put(pre + "cross_attn_norm.weight", hf + "layer.1.layer_norm.weight")
                for x in "qkvo":
                    put(pre + f"cross_attn_{x}.weight", hf + f"layer.1.EncDecAttention.{x}.weight")
                ff = hf + "layer.2."
            put(pre + "ffn_norm.weight", ff + "layer_norm.weight")
            if cfg.is_gated_act:
                put(pre + "ffn_gate.weight", ff + "DenseReluDense.wi_0.weight")
                put(pre + "ffn_up.weight", ff + "DenseReluDense.wi_1.weight")
            else:
                put(pre + "ffn_up.weight", ff + "DenseReluDense.wi.weight")
            put(pre + "ffn_down.weight", ff + "DenseReluDense.wo.weight")
        put(f"{p}.output_norm.weight", f"{stack}.final_layer_norm.weight")
    if not t5_is_tied(hf_model):
        put("output.weight", "lm_head.weight")
    return out


def t5_is_tied(hf_model):
    """transformers 5.x always ties lm_head in T5ForConditionalGeneration built from
    a config; an untied model is one whose lm_head was given its own Parameter."""
    return hf_model.lm_head.weight.data_ptr() == hf_model.shared.weight.data_ptr()


def tensor_type_for(name, x, tensor_type):
    """Norms (1-D) and attn_rel_b stay F32; block types need ne[0] % 32 == 0."""
    if x.ndim != 2 or name.endswith("attn_rel_b.weight"):
        return F32
    if tensor_type in (Q8_0, Q4_0) and x.shape[-1] % QK:
        return F32
    return tensor_type


def write_t5_gguf(path, hf_model, sp_model_path, tensor_type, extra_pad_tokens=0,
                  rel_bias_every_layer=False, name=None, charsmap=True):
    """Writes hf_model (T5ForConditionalGeneration) with the tokenizer of
    sp_model_path as llama.cpp's converter lays out arch "t5". tensor_type: one of
    F32/F16/BF16/Q8_0/Q4_0 (or its name). Returns (file size, {gguf tensor name:
    (HF state_dict name, float32 array as stored, i.e. dequantized)}).
    extra_pad_tokens: how many ids the model has past the SentencePiece vocab.
    rel_bias_every_layer: write attn_rel_b into every layer, not only layer 0.
    charsmap=False leaves out the precompiled charsmap (240 KB for nmt_nfkc), as
    llama.cpp does for a model whose normalizer has none (identity normalization)."""
    if isinstance(tensor_type, str):
        tensor_type = TYPE_BY_NAME[tensor_type]
    cfg = hf_model.config
    voc = _sp_vocab(sp_model_path, cfg.vocab_size)
    assert cfg.vocab_size == voc["n_sp"] + extra_pad_tokens, \
        (cfg.vocab_size, voc["n_sp"], extra_pad_tokens)

    g = GGUFFile()
    g.add("general.architecture", GGUF_STR, "t5")
    g.add("general.type", GGUF_STR, "model")
    if name:
        g.add("general.name", GGUF_STR, name)
    g.add("t5.context_length", GGUF_U32, int(getattr(cfg, "n_positions", 512) or 512))
    g.add("t5.embedding_length", GGUF_U32, cfg.d_model)
    g.add("t5.feed_forward_length", GGUF_U32, cfg.d_ff)
    g.add("t5.block_count", GGUF_U32, cfg.num_layers)
    # The converter writes it whenever config.json has num_decoder_layers, which
    # every T5Config saves (it defaults to num_layers).
    g.add("t5.decoder_block_count", GGUF_U32, cfg.num_decoder_layers)
    g.add("t5.attention.head_count", GGUF_U32, cfg.num_heads)
    g.add("t5.attention.key_length", GGUF_U32, cfg.d_kv)
    g.add("t5.attention.value_length", GGUF_U32, cfg.d_kv)
    g.add("t5.attention.layer_norm_epsilon", GGUF_F32, cfg.layer_norm_epsilon)
    g.add("t5.attention.relative_buckets_count", GGUF_U32, cfg.relative_attention_num_buckets)
    g.add("t5.attention.layer_norm_rms_epsilon", GGUF_F32, cfg.layer_norm_epsilon)
    g.add("t5.decoder_start_token_id", GGUF_U32, cfg.decoder_start_token_id)
    g.add("general.file_type", GGUF_U32, FILE_TYPE[tensor_type])

    g.add("tokenizer.ggml.model", GGUF_STR, "t5")
    g.add("tokenizer.ggml.pre", GGUF_STR, "default")
    g.add_array("tokenizer.ggml.tokens", GGUF_STR, voc["tokens"])
    g.add_array("tokenizer.ggml.scores", GGUF_F32, voc["scores"])
    g.add_array("tokenizer.ggml.token_type", GGUF_I32, voc["types"])
    g.add("tokenizer.ggml.add_space_prefix", GGUF_BOOL, voc["add_space_prefix"])
    g.add("tokenizer.ggml.remove_extra_whitespaces", GGUF_BOOL, voc["remove_extra_whitespaces"])
    if charsmap and voc["charsmap"]:
        g.add_array("tokenizer.ggml.precompiled_charsmap", GGUF_U8, voc["charsmap"])
    g.add("tokenizer.ggml.eos_token_id", GGUF_U32, voc["eos"])
    g.add("tokenizer.ggml.unknown_token_id", GGUF_U32, voc["unk"])
    g.add("tokenizer.ggml.padding_token_id", GGUF_U32, voc["pad"])
    # gguf.SpecialVocab derives this from flan-t5's tokenizer.json ("$A </s>").
    g.add("tokenizer.ggml.add_eos_token", GGUF_BOOL, True)

    stored = {}
    for tname, hname, x in t5_tensors(hf_model, rel_bias_every_layer):
        stored[tname] = (hname, g.add_tensor(tname, x, tensor_type_for(tname, x, tensor_type)))
    return g.write(path), stored
