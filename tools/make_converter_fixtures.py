#!/usr/bin/env python3
"""Interop fixtures made by llama.cpp's own converter (convert_hf_to_gguf.py), and
their goldens from transformers: test/fixtures/converter/<name>.gguf + .golden,
checked by test/test_converter.c.

Each model is a tiny seeded random-weight checkpoint built with transformers and saved
the way a user would (save_pretrained, spiece.model copied in since transformers 5.x
writes none, added_tokens.json where the model has sentinels), then converted with
    python convert_hf_to_gguf.py DIR --outtype TYPE --outfile NAME.gguf
The goldens come from the checkpoint as transformers reloads it (from_pretrained);
for F16/BF16/Q8_0 files, from the values the file holds (dequantized with `gguf`).
The golden format is tools/make_fixtures.py's (inputs are token ids, so the goldens do
not depend on the tokenizer). An encoder-only golden has `enc` records only.

Besides the fixtures, the script checks what the converter writes (every F32 tensor
bit-identical to its checkpoint parameter, the expected tensor set, the types of a
quantized file), tries the variants it cannot convert (ByT5, LongT5), and prints the
size / accuracy trade-off of the output types on the flan fixture (docs/conversion.md).

The converter is llama.cpp's, vendored in the llama-cpp-python sdist from PyPI. It is
looked for in $MMS_LLAMACPP (a llama.cpp source tree), then in build/llamacpp/; if
missing, the sdist is downloaded there with pip and the converter unpacked from it.
Checkpoint folders are kept in build/llamacpp/checkpoints/ for inspection. With
MMS_LLAMA_QUANTIZE=path/to/llama-quantize, the trade-off table also has Q4_0.

Rerun from the repository root (a minute or two; deterministic, a rerun gives
byte-identical files; needs test/fixtures/tok_nfkc.model):
    tools/venv.sh && .venv/bin/python tools/make_converter_fixtures.py
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import warnings

import numpy as np
import torch
import transformers
from gguf import GGUFReader, GGMLQuantizationType, MODEL_ARCH, get_tensor_name_map
from gguf.quants import dequantize
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from transformers import (GenerationConfig, LongT5Config, LongT5ForConditionalGeneration,
                          MT5Config, MT5ForConditionalGeneration, T5Config, T5EncoderModel,
                          T5ForConditionalGeneration, UMT5Config, UMT5ForConditionalGeneration)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (golden records, case picking, weight-shaping specs)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "test", "fixtures", "converter")
CACHE = os.path.join(ROOT, "build", "llamacpp")
CKPT = os.path.join(CACHE, "checkpoints")
SP_MODEL = os.path.join(ROOT, "test", "fixtures", "tok_nfkc.model")
LLAMACPP_PY_VERSION = "0.3.36"  # llama-cpp-python sdist the converter comes from

# The converter's arguments, as documented in docs/conversion.md.
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
# A fixture whose goldens must equal its twin's (same weights): no golden file of its
# own; test/test_converter.c checks it against the twin's.
TWINS = {"cvt_t5_head": "cvt_t5"}

BASE = dict(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=8,
            n_positions=512, relative_attention_num_buckets=32, relative_attention_max_distance=128,
            layer_norm_epsilon=1e-6, dropout_rate=0.0, decoder_start_token_id=mf.DEC_START,
            pad_token_id=mf.PAD, eos_token_id=mf.EOS)

# name: (seed, model class, config class, config overrides, shaping spec (make_fixtures'),
#        how the checkpoint is saved, spiece variant, sentinels in added_tokens.json, out types)
#  save "hf":      save_pretrained (safetensors; a tied head is not stored)
#  save "bin_head": an old-style pytorch_model.bin whose state dict holds lm_head.weight
#                   (and both embed_tokens) next to shared.weight, as t5 v1.0 checkpoints do
#  spiece "nfkc": test/fixtures/tok_nfkc.model as is (its nmt_nfkc charsmap is ~240 kB);
#         "plain": the same pieces without the charsmap (identity normalizer), to keep files small
FIXTURES = {
    # (a) original T5 (v1.0): ReLU, tied head, scaled by d_model^-0.5 in HF
    "cvt_t5": (101, T5ForConditionalGeneration, T5Config, dict(feed_forward_proj="relu"),
               mf.TIED, "hf", "nfkc", 0, ("f32",)),
    # (b) the same weights, saved as older .bin checkpoints are: lm_head.weight stored
    "cvt_t5_head": (101, T5ForConditionalGeneration, T5Config, dict(feed_forward_proj="relu"),
                    mf.TIED, "bin_head", "plain", 0, ("f32",)),
    # (c) flan-t5 / t5 v1.1: gated-GELU, untied, sentinels past the SentencePiece vocab
    "cvt_flan": (202, T5ForConditionalGeneration, T5Config, dict(feed_forward_proj="gated-gelu"),
                 mf.FLAN, "hf", "plain", 8, OUTTYPES),
    # (d) mT5: n_head * d_kv = 48 != d_model, 3 encoder / 2 decoder blocks, [PADn] pieces
    "cvt_mt5": (303, MT5ForConditionalGeneration, MT5Config,
                dict(feed_forward_proj="gated-gelu", num_heads=6, d_kv=8, num_layers=3),
                dict(mf.FLAN, pad=4), "hf", "plain", 0, ("f32",)),
    # (e) UMT5: a relative attention bias in every block
    "cvt_umt5": (404, UMT5ForConditionalGeneration, UMT5Config, dict(feed_forward_proj="gated-gelu"),
                 dict(mf.FLAN, pad=0), "hf", "plain", 0, ("f32",)),
    # (f) encoder-only (T5EncoderModel -> arch t5encoder)
    "cvt_t5encoder": (505, T5EncoderModel, T5Config, dict(feed_forward_proj="gated-gelu"),
                      dict(mf.FLAN, pad=0), "hf", "plain", 0, ("f32",)),
}


# ---------------------------------------------------------------------------
# The converter
# ---------------------------------------------------------------------------

def find_converter():
    """Path of a llama.cpp tree holding convert_hf_to_gguf.py and gguf-py; downloads and
    unpacks the llama-cpp-python sdist into build/llamacpp/ if there is none."""
    candidates = []
    if os.environ.get("MMS_LLAMACPP"):
        candidates.append(os.environ["MMS_LLAMACPP"])
    candidates.append(os.path.join(CACHE, f"llama_cpp_python-{LLAMACPP_PY_VERSION}", "vendor", "llama.cpp"))
    for c in candidates:
        if os.path.isfile(os.path.join(c, "convert_hf_to_gguf.py")) and os.path.isdir(os.path.join(c, "gguf-py")):
            print(f"converter: {c}")
            return c
    os.makedirs(CACHE, exist_ok=True)
    sdist = os.path.join(CACHE, f"llama_cpp_python-{LLAMACPP_PY_VERSION}.tar.gz")
    if not os.path.isfile(sdist):
        print(f"converter: not found; downloading llama-cpp-python=={LLAMACPP_PY_VERSION} (sdist) "
              f"from PyPI into {CACHE}")
        # pip prepares the sdist's metadata, for which it fetches the build backend
        # (scikit-build-core) into a temporary environment; nothing is compiled.
        subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={LLAMACPP_PY_VERSION}",
                        "--no-deps", "--no-binary", ":all:", "-d", CACHE], check=True)
    print(f"converter: unpacking convert_hf_to_gguf.py, conversion/ and gguf-py/ from {sdist}")
    prefix = f"llama_cpp_python-{LLAMACPP_PY_VERSION}/vendor/llama.cpp/"
    wanted = (prefix + "convert_hf_to_gguf.py", prefix + "conversion/", prefix + "gguf-py/")
    with tarfile.open(sdist) as tf:
        members = [m for m in tf.getmembers() if m.name.startswith(wanted)]
        tf.extractall(CACHE, members=members, filter="data")
    return candidates[-1]


def convert(llamacpp, ckpt_dir, outtype, outfile):
    """Runs the converter as a user would; returns (ok, its log)."""
    env = dict(os.environ, PYTHONPATH=os.path.join(llamacpp, "gguf-py"))
    r = subprocess.run([sys.executable, os.path.join(llamacpp, "convert_hf_to_gguf.py"), ckpt_dir,
                        "--outtype", outtype, "--outfile", outfile],
                       env=env, capture_output=True, text=True)
    return r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------

def sp_vocab_size():
    m = sp_pb2.ModelProto()
    m.ParseFromString(open(SP_MODEL, "rb").read())
    return len(m.pieces)


def write_spiece(path, variant):
    if variant == "nfkc":
        shutil.copyfile(SP_MODEL, path)
        return
    m = sp_pb2.ModelProto()
    m.ParseFromString(open(SP_MODEL, "rb").read())
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.precompiled_charsmap = b""
    with open(path, "wb") as f:
        f.write(m.SerializeToString())


def build_model(seed, cls, cfg_cls, overrides, spec, n_sp):
    """A seeded random model shaped like make_fixtures.build_model's (norm weights not
    all ones, buckets that matter, a useful logit spread, some eos endings)."""
    tied = spec["tied"]
    args = dict(BASE, **overrides)
    if cls is T5EncoderModel:
        args.pop("num_decoder_layers")
    cfg = cfg_cls(vocab_size=n_sp + spec["pad"], tie_word_embeddings=tied, **args)
    torch.manual_seed(seed)
    model = cls(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    has_head = hasattr(model, "lm_head")
    with torch.no_grad():
        if has_head and not tied:
            # transformers 5.x ties lm_head to shared whatever the config says; an untied
            # model (flan-t5, mT5, UMT5) needs its own Parameter.
            model.lm_head.weight = torch.nn.Parameter(torch.randn(cfg.vocab_size, cfg.d_model, generator=g))
        if has_head:
            assert (model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()) == tied
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith("relative_attention_bias.weight"):
                p.mul_(5.0)
            elif name.startswith("decoder.") and name.endswith("SelfAttention.o.weight"):
                p.mul_(spec.get("self_o", 1.0))
        emb = spec.get("emb", 1.0)
        model.shared.weight.mul_(emb)
        if has_head:
            model.decoder.final_layer_norm.weight.mul_(spec["sharp"] / (emb if tied else 1.0))
            model.lm_head.weight[mf.EOS].mul_(spec["eos"])
    model.eval()
    return model


def save_checkpoint(model, save, ckpt_dir, spiece, n_sentinels, n_sp):
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    if save == "hf":
        model.save_pretrained(ckpt_dir)
    else:
        # What torch.save(model.state_dict()) of a tied model gives, as in t5-small's
        # pytorch_model.bin: every alias of the embedding, lm_head.weight included.
        os.makedirs(ckpt_dir)
        model.config.architectures = ["T5WithLMHeadModel"]  # the class name of that era
        model.config.save_pretrained(ckpt_dir)
        model.generation_config.save_pretrained(ckpt_dir)
        sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        assert "lm_head.weight" in sd and torch.equal(sd["lm_head.weight"], sd["shared.weight"])
        torch.save(sd, os.path.join(ckpt_dir, "pytorch_model.bin"))
    write_spiece(os.path.join(ckpt_dir, "spiece.model"), spiece)
    if n_sentinels:
        # T5's layout: <extra_id_0> is the highest id.
        added = {f"<extra_id_{i}>": n_sp + n_sentinels - 1 - i for i in range(n_sentinels)}
        with open(os.path.join(ckpt_dir, "added_tokens.json"), "w") as f:
            json.dump(added, f, indent=2)


def reload(cls, ckpt_dir, original):
    """The checkpoint as transformers loads it; must equal the model that was saved."""
    model = cls.from_pretrained(ckpt_dir)
    model.eval()
    a = dict(original.named_parameters(remove_duplicate=False))
    b = dict(model.named_parameters(remove_duplicate=False))
    assert a.keys() == b.keys(), (a.keys() ^ b.keys())
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if hasattr(model, "lm_head"):
        model.generation_config = GenerationConfig(decoder_start_token_id=mf.DEC_START, pad_token_id=mf.PAD,
                                                   eos_token_id=mf.EOS)
    return model


# ---------------------------------------------------------------------------
# What the converter wrote
# ---------------------------------------------------------------------------

def hf_to_gguf_names(model, arch):
    """HF parameter name (every alias) -> GGUF tensor name, by gguf's own name table."""
    n_blocks = max(model.config.num_layers, getattr(model.config, "num_decoder_layers", 0) or 0)
    tmap = get_tensor_name_map(arch, n_blocks)
    out = {}
    for name, _ in model.named_parameters(remove_duplicate=False):
        if name in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            out[name] = "token_embd.weight"
        else:
            g = tmap.get_name(name, try_suffixes=(".weight",))
            assert g is not None, name
            out[name] = g
    return out


def read_values(path):
    """{tensor name: (type, float32 values in HF's [out, in] order)} of a GGUF file."""
    r = GGUFReader(path)
    vals = {}
    for t in r.tensors:
        shape = [int(d) for d in reversed(t.shape)]
        if t.tensor_type == GGMLQuantizationType.F32:
            v = np.array(t.data, dtype=np.float32)
        else:
            v = dequantize(t.data, t.tensor_type).astype(np.float32)
        vals[t.name] = (t.tensor_type, v.reshape(shape))
    return r, vals


def check_file(path, model, arch, outtype, stored_head):
    """Checks the tensor set and, for F32, bit-identity with the checkpoint; returns the
    tensor values, the architecture written and a one-line summary of the types."""
    r, vals = read_values(path)
    names = hf_to_gguf_names(model, arch)
    params = dict(model.named_parameters(remove_duplicate=False))
    want = set(names.values())
    untied = hasattr(model, "lm_head") and model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    if not (stored_head or untied):
        want.discard("output.weight")  # a tied head not in the checkpoint: the file has none
    got = set(vals)
    assert got == want, f"{path}: tensors {sorted(got ^ want)}"
    for hname, gname in names.items():
        if gname == "output.weight" and gname not in vals:
            continue
        typ, v = vals[gname]
        if outtype == "f32":
            assert typ == GGMLQuantizationType.F32, (gname, typ)
            assert np.array_equal(v, params[hname].detach().numpy()), f"{path}: {gname} differs from {hname}"
    kinds = {}
    for gname, (typ, _) in vals.items():
        kinds.setdefault(typ.name, []).append(gname)
    arch_key = str(r.fields["general.architecture"].contents())
    summary = ", ".join(f"{k} {len(v)}" for k, v in sorted(kinds.items()))
    return vals, arch_key, summary


def load_file_values(model, vals, arch):
    """Puts the values a (quantized) file holds into the HF model."""
    names = hf_to_gguf_names(model, arch)
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for hname, gname in names.items():
            if gname == "output.weight" and gname not in vals:
                gname = "token_embd.weight"
            params[hname].copy_(torch.from_numpy(vals[gname][1]).reshape(params[hname].shape))


# ---------------------------------------------------------------------------
# Goldens
# ---------------------------------------------------------------------------

def encoder_cases(model, seed, n_sp):
    lines = []
    for k, n in enumerate(mf.CASE_LENGTHS):
        rng = np.random.default_rng([seed, k])
        ids = [int(t) for t in rng.integers(3, n_sp, size=n)] + [mf.EOS]
        with torch.no_grad():
            enc = model(input_ids=torch.tensor([ids])).last_hidden_state[0].float().numpy()
        lines.append(f"case {k} {len(ids)} {' '.join(map(str, ids))}")
        lines.append(f"enc {enc.shape[0]} {enc.shape[1]} {mf.fmts(enc)}")
    return lines


def write_golden(name, model, seed, n_sp, arch, outtype, cmdline):
    cfg = model.config
    is_enc = not hasattr(model, "lm_head")
    tied = 0 if is_enc else int(cfg.scale_decoder_outputs) if hasattr(cfg, "scale_decoder_outputs") else 0
    lines = [
        f"# {name}: goldens from transformers for {name}.gguf (values as stored in the file)",
        f"# {type(model).__name__} saved by transformers, converted by llama.cpp's {cmdline}",
        "# generated by tools/make_converter_fixtures.py; rerun: tools/venv.sh && "
        ".venv/bin/python tools/make_converter_fixtures.py",
        f"model {name} arch={arch} d_model={cfg.d_model} d_ff={cfg.d_ff} n_enc={cfg.num_layers} "
        f"n_dec={0 if is_enc else cfg.num_decoder_layers} n_head={cfg.num_heads} d_kv={cfg.d_kv} "
        f"vocab={cfg.vocab_size} gated={int(cfg.is_gated_act)} tied={tied} type={outtype}",
    ]
    if is_enc:
        lines += encoder_cases(model, seed, n_sp)
        note = "encoder states only"
    else:
        case_lines, ends, worst = mf.pick_cases(name, model, seed, n_sp)
        lines += case_lines
        n_g, n_b = len(mf.CASE_LENGTHS) * len(mf.GREEDY), len(mf.CASE_LENGTHS) * len(mf.BEAMS)
        note = (f"eos-ended: greedy {ends['greedy']}/{n_g}  beam {ends['beam']}/{n_b}  "
                f"min decision margin {worst:.2g}")
    if name in TWINS:
        with open(os.path.join(OUT, TWINS[name] + ".golden")) as f:
            twin = [ln for ln in f.read().splitlines() if not ln.startswith(("#", "model "))]
        mine = [ln for ln in lines if not ln.startswith(("#", "model "))]
        assert mine == twin, f"{name}: transformers' results differ from {TWINS[name]}'s"
        return 0, f"goldens equal {TWINS[name]}.golden's"
    path = os.path.join(OUT, name + ".golden")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return os.path.getsize(path), note


# ---------------------------------------------------------------------------
# Trade-off of the output types (docs/conversion.md) and what cannot be converted
# ---------------------------------------------------------------------------

def greedy_ids(model, ids, max_new=16):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), do_sample=False, num_beams=1, max_new_tokens=max_new)
    return out[0].tolist()


def tradeoff(base, models, sizes, n_sp, n_inputs=200):
    """Max |logit - f32 logit| over the first 8 teacher-forced steps of n_inputs random
    inputs, and how many greedy outputs (16 new tokens) equal f32's."""
    rng = np.random.default_rng(7)
    inputs = [[int(t) for t in rng.integers(3, n_sp, size=int(rng.integers(3, 40)))] + [mf.EOS]
              for _ in range(n_inputs)]
    ref = models["f32"]
    print(f"\ntrade-off on {base} ({n_inputs} random inputs; logits of 8 teacher-forced steps):")
    print(f"  {'type':6s} {'bytes':>8s} {'ratio':>6s} {'max |dlogit|':>13s} {'greedy = f32':>13s}")
    for t, m in models.items():
        dmax, same = 0.0, 0
        for ids in inputs:
            dec = torch.tensor([[mf.DEC_START] + greedy_ids(ref, ids, 7)[1:8]])
            with torch.no_grad():
                a = ref(input_ids=torch.tensor([ids]), decoder_input_ids=dec).logits
                b = m(input_ids=torch.tensor([ids]), decoder_input_ids=dec).logits
            dmax = max(dmax, float((a - b).abs().max()))
            same += greedy_ids(ref, ids) == greedy_ids(m, ids)
        print(f"  {t:6s} {sizes[t]:8d} {sizes[t] / sizes['f32']:6.3f} {dmax:13.2e} {same:>9d}/{n_inputs}")


def add_q4_0(quantize, name, cls, ckpt, model, arch, per_type, sizes):
    """Q4_0 is not among the converter's types: llama.cpp's llama-quantize (built from the
    same sdist, see docs/conversion.md) makes it from the F32 file. --pure keeps every
    matrix Q4_0 (by default the head becomes Q6_K, which the engine does not read).
    For the trade-off table only; not a committed fixture."""
    path = os.path.join(CACHE, f"{name}_q4_0.gguf")
    subprocess.run([quantize, "--pure", os.path.join(OUT, name + ".gguf"), path, "Q4_0"],
                   check=True, capture_output=True)
    _, vals = read_values(path)
    m = reload(cls, ckpt, model)
    load_file_values(m, vals, arch)
    per_type["q4_0"], sizes["q4_0"] = m, os.path.getsize(path)


def check_limits(llamacpp, n_sp):
    """Variants the converter cannot make: prints what it says."""
    print("\nvariants the converter cannot convert:")
    # ByT5: a T5 v1.1 model whose tokenizer is the UTF-8 bytes; its checkpoints have no
    # SentencePiece model, and the converter's T5 vocabulary needs one.
    d = os.path.join(CKPT, "byt5")
    torch.manual_seed(1)
    m = T5ForConditionalGeneration(T5Config(vocab_size=384, feed_forward_proj="gated-gelu",
                                            tie_word_embeddings=False, **BASE))
    shutil.rmtree(d, ignore_errors=True)
    m.save_pretrained(d)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "ByT5Tokenizer", "extra_ids": 0, "eos_token": "</s>",
                   "pad_token": "<pad>", "unk_token": "<unk>"}, f)
    ok, log = convert(llamacpp, d, "f32", os.path.join(CKPT, "byt5.gguf"))
    assert not ok, "the converter now converts ByT5: update docs/conversion.md"
    print("  ByT5:   " + [ln for ln in log.splitlines() if "Error" in ln][-1].strip())
    # LongT5: local / transient-global attention; not a registered architecture.
    d = os.path.join(CKPT, "longt5")
    cfg = dict(BASE)
    cfg.pop("n_positions")
    m = LongT5ForConditionalGeneration(LongT5Config(vocab_size=n_sp, feed_forward_proj="gated-gelu",
                                                    encoder_attention_type="transient-global", **cfg))
    shutil.rmtree(d, ignore_errors=True)
    m.save_pretrained(d)
    write_spiece(os.path.join(d, "spiece.model"), "plain")
    ok, log = convert(llamacpp, d, "f32", os.path.join(CKPT, "longt5.gguf"))
    assert not ok, "the converter now converts LongT5: update docs/conversion.md"
    print("  LongT5: " + [ln for ln in log.splitlines() if "not supported" in ln or "Error" in ln][-1].strip())


# ---------------------------------------------------------------------------

def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    warnings.filterwarnings("ignore", category=FutureWarning)
    # "both present in the checkpoints with different values": expected for untied models
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if not os.path.exists(SP_MODEL):
        raise SystemExit(f"missing {SP_MODEL}: run tools/make_tokenizer_fixture.py first")
    llamacpp = find_converter()
    n_sp = sp_vocab_size()
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(CKPT, exist_ok=True)
    only = set(sys.argv[1:])
    total = 0
    for name, (seed, cls, cfg_cls, overrides, spec, save, spiece, n_sent, outtypes) in FIXTURES.items():
        if only and name not in only:
            continue
        model = build_model(seed, cls, cfg_cls, overrides, spec, n_sp)
        ckpt = os.path.join(CKPT, name)
        save_checkpoint(model, save, ckpt, spiece, n_sent, n_sp)
        hf = reload(cls, ckpt, model)
        arch = MODEL_ARCH.T5ENCODER if cls is T5EncoderModel else MODEL_ARCH.T5
        per_type, sizes = {}, {}
        for t in outtypes:
            fname = name if t == "f32" else f"{name}_{t}"
            path = os.path.join(OUT, fname + ".gguf")
            ok, log = convert(llamacpp, ckpt, t, path)
            if not ok:
                raise SystemExit(f"{name}: the converter failed for --outtype {t}:\n{log[-3000:]}")
            vals, arch_key, summary = check_file(path, hf, arch, t, save == "bin_head")
            m = hf
            if t != "f32":
                m = reload(cls, ckpt, model)
                load_file_values(m, vals, arch)
            cmd = f"convert_hf_to_gguf.py {name} --outtype {t} --outfile {fname}.gguf"
            gsize, note = write_golden(fname, m, seed, n_sp, arch_key, t, cmd)
            sizes[t] = os.path.getsize(path)
            per_type[t] = m
            total += sizes[t] + gsize
            print(f"{fname:18s} {arch_key:9s} gguf {sizes[t]:7d} B  golden {gsize:6d} B  [{summary}]  {note}")
        if len(outtypes) > 1:
            if os.environ.get("MMS_LLAMA_QUANTIZE"):
                add_q4_0(os.environ["MMS_LLAMA_QUANTIZE"], name, cls, ckpt, model, arch, per_type, sizes)
            tradeoff(name, per_type, sizes, n_sp)
    print(f"\ntotal written: {total} bytes")
    if not only:
        check_limits(llamacpp, n_sp)


if __name__ == "__main__":
    main()
