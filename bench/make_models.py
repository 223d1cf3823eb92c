#!/usr/bin/env python3
"""Builds the models and inputs the benchmark (make bench) compares engines on.
Everything goes to bench/out/ (gitignored, never committed).

  small  random-weight models shaped like flan-t5-small / -base / -large (SHAPES:
  base   gated-GELU, d_kv 64, vocab 32128, untied; 77M / 248M / 783M parameters),
  large  seeded, drawn as build_random() says:
           bench/out/<m>-hf/         transformers directory (+ T5Tokenizer)
           bench/out/<m>.gguf        the engine's file, F32 (tools/gguf_writer.py)
           bench/out/<m>-q8_0.gguf   the same weights as Q8_0 (norms, rel. bias F32)
  demo   models/datefix.gguf (the project's trained model), rebuilt as an HF model
         from the GGUF tensors, with models/datefix.spm.model as tokenizer:
           bench/out/demo-hf/
           bench/out/demo-q8_0.gguf  those weights as Q8_0 (the F32 file is
                                     models/datefix.gguf itself)
and, for each model <m>, the peers' exports:
           bench/out/<m>-onnx/       optimum ONNX export, fp32, with KV cache
           bench/out/<m>-onnx-int8/  the same quantized by ONNX Runtime's dynamic
                                     quantization (quantize_dynamic, QInt8 weights)
           bench/out/<m>-ct2-f32/    CTranslate2, float32
           bench/out/<m>-ct2-int8/   CTranslate2, int8
           bench/out/inputs-<m>.txt  benchmark inputs (see write_inputs)
large needs about 20 GB of disk and 8 GB of memory while it is built.

Steps whose outputs exist are skipped (a .done stamp per directory) unless
--force; the demo ones are redone when models/datefix.gguf is newer.

    .venv-bench/bin/python bench/make_models.py            # small only
    .venv-bench/bin/python bench/make_models.py --demo     # small and demo
    .venv-bench/bin/python bench/make_models.py --models small,base,large,demo
    .venv-bench/bin/python bench/make_models.py --describe base   # JSON line: sizes

Needs torch, transformers, sentencepiece, gguf, optimum[onnxruntime] (optimum-onnx)
and ctranslate2 in the venv.
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT / "tools"))
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

SMALL_SP = ROOT / "test" / "fixtures" / "tok_nfkc.model"
DEMO_GGUF = ROOT / "models" / "datefix.gguf"
DEMO_SP = ROOT / "models" / "datefix.spm.model"

_FLAN = dict(feed_forward_proj="gated-gelu", d_kv=64, vocab_size=32128,
             tie_word_embeddings=False, dropout_rate=0.0)
SHAPES = {  # flan-t5-small / -base / -large (their config.json)
    "small": dict(d_model=512, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6, **_FLAN),
    "base": dict(d_model=768, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12, **_FLAN),
    "large": dict(d_model=1024, d_ff=2816, num_layers=24, num_decoder_layers=24, num_heads=16, **_FLAN),
}
SMALL_SHAPE = SHAPES["small"]
RANDOM = list(SHAPES)
MODELS = RANDOM + ["demo"]
SEED = 0

# Inputs: ids drawn from [3, min(vocab, 1000)), each line ends with eos (1); the
# lengths below count the eos.
N_DECODE, LEN_DECODE = 32, 16
N_ENCODE, LEN_ENCODE = 32, 128
N_MIXED, MIXED_MIN, MIXED_MAX = 1000, 8, 64
EOS = 1


def log(*a):
    print("[make_models]", *a, file=sys.stderr, flush=True)


def stamp_ok(d, source=None):
    """d/.done exists and is newer than `source` (if given)."""
    s = Path(d) / ".done"
    if not s.exists():
        return False
    return source is None or s.stat().st_mtime >= Path(source).stat().st_mtime


def stamp(d, info=None):
    (Path(d) / ".done").write_text(json.dumps(info or {}, indent=1) + "\n")


def fresh_dir(d):
    d = Path(d)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


# ---------------------------------------------------------------------------
# HF models
# ---------------------------------------------------------------------------

def sp_size(sp_path):
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=str(sp_path)).vocab_size()


def untie(model):
    """transformers 5.x ties lm_head to shared whatever the config says (see
    tools/gguf_writer.py t5_is_tied); give an untied model its own Parameter."""
    import gguf_writer as gw
    import torch
    if not model.config.tie_word_embeddings and gw.t5_is_tied(model):
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    assert gw.t5_is_tied(model) == bool(model.config.tie_word_embeddings)


def build_random(name):
    """The shape SHAPES[name], every weight drawn from one seeded generator in
    named_parameters() order (independent of transformers' own init): Linear
    [out, in] ~ N(0, 1/in), embeddings and lm_head ~ N(0, 1), the relative bias
    ~ N(0, 1), norms ~ U(0.5, 1.5). The logits then spread widely (std ~20), so
    a greedy path has few near-ties and engines that agree to fp32 rounding
    agree on the ids."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration
    shape = SHAPES[name]
    cfg = T5Config(decoder_start_token_id=0, pad_token_id=0, eos_token_id=EOS, **shape)
    torch.manual_seed(SEED)
    model = T5ForConditionalGeneration(cfg)
    # transformers 5.x's T5Config sets tie_word_embeddings back to True whatever
    # it is given (and keeps "untied" as scale_decoder_outputs = False)
    model.config.tie_word_embeddings = shape["tie_word_embeddings"]
    untie(model)
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("layer_norm.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif pname in ("shared.weight", "lm_head.weight") or \
                    pname.endswith("relative_attention_bias.weight"):
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                assert p.ndim == 2, pname
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5)
    return model.eval()


def build_small():
    """flan-t5-small's shape (build_random("small"))."""
    return build_random("small")


def gguf_kv(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v


def build_from_gguf(gguf_path):
    """Inverse of tools/gguf_writer.py write_t5_gguf: a T5ForConditionalGeneration
    holding exactly the GGUF's weights (F32 as stored; F16/BF16/Q8_0/Q4_0
    dequantized), and the GGUF vocabulary. Returns (model, tokens)."""
    import gguf
    import torch
    import gguf_writer as gw
    from transformers import T5Config, T5ForConditionalGeneration

    r = gguf.GGUFReader(str(gguf_path))
    arch = gguf_kv(r, "general.architecture")
    assert arch == "t5", arch
    tensors = {t.name: t for t in r.tensors}
    n_vocab = len(r.fields["tokenizer.ggml.tokens"].data)
    gated = "enc.blk.0.ffn_gate.weight" in tensors
    tied = "output.weight" not in tensors
    eps = gguf_kv(r, "t5.attention.layer_norm_rms_epsilon",
                  gguf_kv(r, "t5.attention.layer_norm_epsilon", 1e-6))
    n_layer = int(gguf_kv(r, "t5.block_count"))
    cfg = T5Config(
        vocab_size=n_vocab,
        d_model=int(gguf_kv(r, "t5.embedding_length")),
        d_ff=int(gguf_kv(r, "t5.feed_forward_length")),
        num_layers=n_layer,
        num_decoder_layers=int(gguf_kv(r, "t5.decoder_block_count", n_layer)),
        num_heads=int(gguf_kv(r, "t5.attention.head_count")),
        d_kv=int(gguf_kv(r, "t5.attention.key_length")),
        relative_attention_num_buckets=int(gguf_kv(r, "t5.attention.relative_buckets_count", 32)),
        layer_norm_epsilon=float(eps),
        feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings=tied,
        dropout_rate=0.0,
        n_positions=int(gguf_kv(r, "t5.context_length", 512)),
        decoder_start_token_id=int(gguf_kv(r, "t5.decoder_start_token_id", 0)),
        eos_token_id=int(gguf_kv(r, "tokenizer.ggml.eos_token_id", 1)),
        pad_token_id=int(gguf_kv(r, "tokenizer.ggml.padding_token_id", 0)),
    )
    model = T5ForConditionalGeneration(cfg)
    untie(model)
    params = dict(model.named_parameters(remove_duplicate=False))
    seen = set()
    with torch.no_grad():
        for gname, hname, x in gw.t5_tensors(model):
            t = tensors[gname]
            ttype = int(t.tensor_type)
            shape = tuple(reversed([int(d) for d in t.shape]))
            if ttype == gw.F32:
                arr = np.asarray(t.data, dtype=np.float32).reshape(shape)
            else:
                arr = gw.decode(np.asarray(t.data).tobytes(), ttype, shape)
            assert arr.shape == tuple(x.shape), (gname, arr.shape, x.shape)
            params[hname].copy_(torch.from_numpy(np.array(arr)))
            seen.add(gname)
    # Layers past 0 may carry their own copy of the relative bias; HF shares
    # layer 0's, so they must be equal.
    for name, t in tensors.items():
        if name not in seen:
            assert name.endswith("attn_rel_b.weight"), f"unmapped GGUF tensor {name}"
            stack = "encoder" if name.startswith("enc.") else "decoder"
            ref = params[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
            arr = np.asarray(t.data, dtype=np.float32).reshape(tuple(ref.shape))
            assert np.array_equal(arr, ref.numpy()), f"{name} differs from layer 0's"
    # The tokenizer must be the one the GGUF was written with.
    tokens = [bytes(r.fields["tokenizer.ggml.tokens"].parts[i]).decode("utf-8")
              for i in r.fields["tokenizer.ggml.tokens"].data]
    return model.eval(), tokens


def check_tokens(gguf_tokens, sp_path):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    n = sp.vocab_size()
    bad = [i for i in range(n) if sp.IdToPiece(i) != gguf_tokens[i]]
    assert not bad, f"{sp_path} does not match the GGUF vocabulary (ids {bad[:5]}...)"


def save_hf(model, sp_path, out_dir):
    """save_pretrained + a T5Tokenizer whose vocabulary has exactly vocab_size
    distinct strings (the SentencePiece pieces, then <extra_id_k> for the rest),
    so CTranslate2's vocabulary maps ids <-> strings one to one."""
    import torch
    from transformers import GenerationConfig, T5Tokenizer
    from safetensors.torch import load_file
    out_dir = fresh_dir(out_dir)
    cfg = model.config
    model.save_pretrained(out_dir)
    GenerationConfig(decoder_start_token_id=cfg.decoder_start_token_id,
                     eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
                     ).save_pretrained(out_dir)
    n_sp = sp_size(sp_path)
    extra = cfg.vocab_size - n_sp
    assert extra >= 0, (cfg.vocab_size, n_sp)
    tok = T5Tokenizer(vocab_file=str(sp_path), extra_ids=extra, legacy=True)
    assert len(tok) == cfg.vocab_size, (len(tok), cfg.vocab_size)
    vocab = tok.get_vocab()
    assert len(vocab) == cfg.vocab_size and sorted(vocab.values()) == list(range(cfg.vocab_size))
    tok.save_pretrained(out_dir)
    # Check what was written: the lm_head must be there when untied.
    sd = load_file(str(out_dir / "model.safetensors"))
    if not cfg.tie_word_embeddings:
        assert "lm_head.weight" in sd, "untied lm_head not saved"
        assert torch.equal(sd["lm_head.weight"], model.lm_head.weight.detach())
    return out_dir


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def load_hf(hf_dir):
    """The model save_hf wrote, with its own (untied) lm_head."""
    import torch
    from transformers import T5ForConditionalGeneration
    from safetensors.torch import load_file
    model = T5ForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    if not model.config.tie_word_embeddings:
        untie(model)
        sd = load_file(str(Path(hf_dir) / "model.safetensors"))
        with torch.no_grad():
            model.lm_head.weight.copy_(sd["lm_head.weight"])
        del sd
    return model


# ---------------------------------------------------------------------------
# GGUF files: tools/gguf_writer.py's write_t5_gguf, with a writer that streams
# the tensors to the file instead of building it as one bytes object, and
# keeps no second copy of F32 tensors (large: ~9 GB less memory). The layout
# is GGUFFile.to_bytes()'s, and the file is checked by gw.verify() all the same.
# ---------------------------------------------------------------------------

import gguf_writer as gw  # noqa: E402  (numpy only; tools/ is on sys.path above)


class LeanGGUF(gw.GGUFFile):
    def add_tensor(self, name, x, ggml_type):
        x = gw._f32(x)
        raw = gw.encode(x, ggml_type)
        assert len(raw) == gw.nbytes(ggml_type, x.size)
        if ggml_type == gw.F32:
            deq = x  # verify() checks F32 tensors by their bytes
        else:
            self.originals[name] = x
            deq = gw.decode(raw, ggml_type, x.shape)
        self.tensors.append((name, list(reversed(x.shape)), ggml_type, raw, deq))
        return deq

    def write(self, path):
        import struct
        out = bytearray()
        out += b"GGUF" + struct.pack("<IQQ", 3, len(self.tensors), len(self.kv))
        for key, vtype, value, etype in self.kv:
            out += gw._str(key) + struct.pack("<I", vtype)
            if vtype == gw.GGUF_ARR:
                out += struct.pack("<IQ", etype, len(value))
                if etype == gw.GGUF_U8 and isinstance(value, (bytes, bytearray)):
                    out += value
                else:
                    for v in value:
                        out += gw._val(etype, v)
            else:
                out += gw._val(vtype, value)
        offset = 0
        for name, ne, ggml_type, raw, _ in self.tensors:
            out += gw._str(name) + struct.pack("<I", len(ne))
            out += b"".join(struct.pack("<Q", d) for d in ne)
            out += struct.pack("<IQ", ggml_type, offset)
            offset += len(raw) + self._pad(len(raw))
        out += b"\0" * self._pad(len(out))
        with open(path, "wb") as f:
            f.write(out)
            for _, _, _, raw, _ in self.tensors:
                f.write(raw)
                f.write(b"\0" * self._pad(len(raw)))
        gw.verify(path, self)
        return os.path.getsize(path)


def write_gguf(path, model, sp_path, ttype, name):
    """write_t5_gguf(model, ttype in "f32"/"q8_0") to path (via path.tmp)."""
    extra = model.config.vocab_size - sp_size(sp_path)
    tmp = Path(str(path) + ".tmp")
    t = time.time()
    orig, gw.GGUFFile = gw.GGUFFile, LeanGGUF
    try:
        size, _ = gw.write_t5_gguf(str(tmp), model, str(sp_path), ttype,
                                   extra_pad_tokens=extra, name=name)
    finally:
        gw.GGUFFile = orig
    os.replace(tmp, path)
    log(f"{Path(path).name}: {size / 1e6:.1f} MB ({ttype}) in {time.time() - t:.0f}s")
    return size


# ---------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------

def export_onnx(hf_dir, out_dir):
    from optimum.exporters.onnx import main_export
    out_dir = fresh_dir(out_dir)
    t = time.time()
    # no_post_process: no decoder_model_merged.onnx. optimum-onnx 0.1.0's merged
    # decoder fails at the second step of generate() (ORT: "invalid dimensions
    # for input past_key_values.6.encoder.value"); decoder_model.onnx +
    # decoder_with_past_model.onnx work, and are what the peers load.
    main_export(str(hf_dir), str(out_dir), task="text2text-generation-with-past",
                dtype="fp32", device="cpu", do_validation=True, local_files_only=True,
                library_name="transformers", no_post_process=True)
    log(f"onnx export {out_dir.name}: {time.time() - t:.0f}s,",
        sorted(p.name for p in out_dir.glob("*.onnx")))
    return out_dir


def quantize_onnx(onnx_dir, out_dir):
    """ONNX Runtime's dynamic quantization of the optimum export, as its docs
    give it for transformer models on CPU: quantize_dynamic(weight_type=QInt8),
    defaults otherwise (per-tensor weight scales; MatMul with constant weights
    and Gather (the embeddings) quantized, activations quantized to uint8 at run
    time). The other files of the directory (config, tokenizer) are copied."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    onnx_dir = Path(onnx_dir)
    out_dir = fresh_dir(out_dir)
    t = time.time()
    for f in sorted(onnx_dir.iterdir()):
        if f.suffix == ".onnx":
            t1 = time.time()
            quantize_dynamic(str(f), str(out_dir / f.name), weight_type=QuantType.QInt8)
            log(f"onnx int8 {out_dir.name}/{f.name}: {(out_dir / f.name).stat().st_size / 1e6:.0f} MB"
                f" in {time.time() - t1:.0f}s")
        elif f.is_file() and f.suffix in (".json", ".model", ".txt"):
            shutil.copy2(f, out_dir / f.name)
    log(f"onnx int8 {out_dir.name}: {time.time() - t:.0f}s")
    return out_dir


def export_ct2(hf_dir, out_dir, quantization):
    import ctranslate2
    out_dir = fresh_dir(out_dir)
    t = time.time()
    ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(
        str(out_dir), quantization=quantization, force=True)
    log(f"ct2 {quantization} {out_dir.name}: {time.time() - t:.0f}s")
    return out_dir


def ct2_vocab(ct2_dir):
    d = Path(ct2_dir)
    j = d / "shared_vocabulary.json"
    if j.exists():
        return json.loads(j.read_text())
    return (d / "shared_vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]


def check_ct2_vocab(ct2_dir, hf_dir, vocab_size):
    from transformers import AutoTokenizer
    v = ct2_vocab(ct2_dir)
    assert len(v) == vocab_size, (len(v), vocab_size)
    assert len(set(v)) == vocab_size, "CTranslate2 vocabulary has duplicate strings"
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    assert tok.convert_ids_to_tokens(list(range(vocab_size))) == v, "vocab order differs"


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------

def write_inputs(path, vocab_size):
    """One input per line: space-separated ids, the last one eos (1). Ids from
    [3, min(vocab, 1000)), numpy default_rng(0). Lines 0..31: length 16 (decode
    workloads); 32..63: length 128 (encoder workload); 64..1063: lengths uniform
    in [8, 64] (mixed workload). Lengths count the eos."""
    rng = np.random.default_rng(0)
    hi = min(vocab_size, 1000)
    lengths = [LEN_DECODE] * N_DECODE + [LEN_ENCODE] * N_ENCODE + \
        list(rng.integers(MIXED_MIN, MIXED_MAX + 1, size=N_MIXED))
    lines = []
    for n in lengths:
        ids = list(rng.integers(3, hi, size=int(n) - 1)) + [EOS]
        lines.append(" ".join(str(int(i)) for i in ids))
    Path(path).write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------

def gguf_paths(name):
    """(F32 file, Q8_0 file) the engine runs for model `name`."""
    f32 = DEMO_GGUF if name == "demo" else OUT / f"{name}.gguf"
    return f32, OUT / f"{name}-q8_0.gguf"


def build(name, force):
    hf_dir = OUT / f"{name}-hf"
    t0 = time.time()
    if name in SHAPES:
        sp_path, source = SMALL_SP, None
    else:
        if not DEMO_GGUF.exists() or not DEMO_SP.exists():
            sys.exit(f"make_models: {DEMO_GGUF} / {DEMO_SP} missing (train it first)")
        sp_path, source = DEMO_SP, DEMO_GGUF
    redo = force or not stamp_ok(hf_dir, source)
    if not redo and name in SHAPES:
        redo = json.loads((hf_dir / ".done").read_text()).get("shape") != SHAPES[name]
    if not redo and source is not None:
        redo = json.loads((hf_dir / ".done").read_text()).get("gguf") != str(source)
    import torch
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model = None
    if redo:
        if name in SHAPES:
            log(f"building {name} (random flan-t5-{name} shape)")
            model = build_random(name)
        else:
            log(f"rebuilding demo from {DEMO_GGUF}")
            model, tokens = build_from_gguf(DEMO_GGUF)
            check_tokens(tokens, sp_path)
        save_hf(model, sp_path, hf_dir)
        info = {"params": n_params(model), "vocab_size": model.config.vocab_size,
                "sp_model": str(sp_path), "gguf": str(gguf_paths(name)[0])}
        if name in SHAPES:
            info["shape"] = SHAPES[name]
        stamp(hf_dir, info)
        log(f"{name}-hf: {info['params'] / 1e6:.1f}M params, {time.time() - t0:.0f}s")
    info = json.loads((hf_dir / ".done").read_text())
    vocab_size = info["vocab_size"]

    # The engine's files, both from the one model: F32 (the demo's is
    # models/datefix.gguf itself) and Q8_0.
    f32, q8 = gguf_paths(name)
    todo = [(q8, "q8_0")] + ([(f32, "f32")] if name in SHAPES else [])
    done_t = (hf_dir / ".done").stat().st_mtime
    todo = [(p, t) for p, t in todo if redo or not p.exists() or p.stat().st_mtime < done_t]
    if todo:
        if model is None:
            model = load_hf(hf_dir) if name in SHAPES else build_from_gguf(DEMO_GGUF)[0]
        for p, t in sorted(todo, key=lambda x: x[1]):
            write_gguf(p, model, sp_path, t, "datefix" if name == "demo" else f"bench-{name}-random")
        if name == "demo" and (DEMO_GGUF.parent / "datefix-q8_0.gguf").exists():
            same = (DEMO_GGUF.parent / "datefix-q8_0.gguf").read_bytes() == q8.read_bytes()
            log(f"{q8.name} {'is byte-identical to' if same else 'differs from'} models/datefix-q8_0.gguf")
    del model
    import gc
    gc.collect()

    onnx_dir = OUT / f"{name}-onnx"
    if redo or not stamp_ok(onnx_dir, hf_dir / ".done"):
        export_onnx(hf_dir, onnx_dir)
        stamp(onnx_dir)
    onnx8_dir = OUT / f"{name}-onnx-int8"
    if redo or not stamp_ok(onnx8_dir, onnx_dir / ".done"):
        quantize_onnx(onnx_dir, onnx8_dir)
        stamp(onnx8_dir, {"quantize_dynamic": {"weight_type": "QInt8", "per_channel": False}})
    for q, sub in (("float32", "ct2-f32"), ("int8", "ct2-int8")):
        d = OUT / f"{name}-{sub}"
        if redo or not stamp_ok(d, hf_dir / ".done"):
            export_ct2(hf_dir, d, q)
            check_ct2_vocab(d, hf_dir, vocab_size)
            stamp(d)
    inp = OUT / f"inputs-{name}.txt"
    write_inputs(inp, vocab_size)  # cheap and deterministic: always rewritten
    log(f"{name}: done in {time.time() - t0:.0f}s ({info['params'] / 1e6:.1f}M params,"
        f" vocab {vocab_size})")


def dir_bytes(d):
    return sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file() and f.name != ".done")


def describe(name):
    """One JSON line for the report: parameters, shape and the bytes on disk of
    each engine's files (what each loads)."""
    hf_dir = OUT / f"{name}-hf"
    info = json.loads((hf_dir / ".done").read_text())
    cfg = json.loads((hf_dir / "config.json").read_text())
    f32, q8 = gguf_paths(name)
    files = {"mms-f32": f32, "mms-q8_0": q8, "transformers": hf_dir / "model.safetensors",
             "onnxruntime": OUT / f"{name}-onnx", "onnxruntime-int8": OUT / f"{name}-onnx-int8",
             "ctranslate2-f32": OUT / f"{name}-ct2-f32", "ctranslate2-int8": OUT / f"{name}-ct2-int8"}
    sizes = {k: (dir_bytes(p) if p.is_dir() else p.stat().st_size) for k, p in files.items()
             if p.exists()}
    keys = ["d_model", "d_ff", "d_kv", "num_heads", "num_layers", "num_decoder_layers",
            "vocab_size", "feed_forward_proj", "tie_word_embeddings"]
    print(json.dumps({"engine": "files", "model": name, "workload": "files",
                      "params": info["params"], "shape": {k: cfg.get(k) for k in keys},
                      "file_bytes": sizes}), flush=True)


def main():
    global DEMO_GGUF, DEMO_SP
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", action="store_true", help="also build the demo model")
    ap.add_argument("--models", help="comma list of " + ",".join(MODELS) + " (overrides --demo)")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("--describe", metavar="MODEL",
                    help="print a JSON line of its sizes (built already) and exit")
    ap.add_argument("--demo-gguf", help=f"demo source (default {DEMO_GGUF.relative_to(ROOT)})")
    ap.add_argument("--demo-spm", help=f"demo tokenizer (default {DEMO_SP.relative_to(ROOT)})")
    a = ap.parse_args()
    if a.demo_gguf:
        DEMO_GGUF = Path(a.demo_gguf).resolve()
    if a.demo_spm:
        DEMO_SP = Path(a.demo_spm).resolve()
    if a.describe:
        return describe(a.describe)
    models = a.models.split(",") if a.models else (["small", "demo"] if a.demo else ["small"])
    for m in models:
        if m not in MODELS:
            sys.exit(f"make_models: unknown model {m} (known: {', '.join(MODELS)})")
    OUT.mkdir(parents=True, exist_ok=True)
    for m in models:
        build(m, a.force)


if __name__ == "__main__":
    main()
