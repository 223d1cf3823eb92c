#!/usr/bin/env python3
"""The peers' side of `make bench`: transformers' generate() on PyTorch, ONNX
Runtime (optimum's ORTModelForSeq2SeqLM, KV cache; fp32 and dynamically
quantized to int8) and CTranslate2 (float32 and int8) on the models and inputs
bench/make_models.py wrote to bench/out/.

Prints one JSON object per line on stdout (logs go to stderr):
  {"engine", "model", "workload", "seconds", "in_tokens", "out_tokens", "inputs",
   "threads", "peak_rss_mb", "reps", ...}
plus "match" on the decode workloads (greedy ids equal transformers'), and
"note" where an engine cannot do exactly the workload.

Workloads (all greedy, lengths FORCED: min = max new tokens, so eos never ends
a sequence early and every engine does the same work; lines of
bench/out/inputs-<m>.txt are token ids ending with eos):
  decode_b1   line 0, 64 new tokens
  decode_b8   lines 0..7 as one batch, 64 new tokens each
  decode_b32  lines 0..31 as one batch, 64 new tokens each
  encode_b32  lines 32..63 (128 tokens each) through the encoder only
  mixed_1000  lines 64.. (1,000 inputs, 8..64 tokens), 32 new tokens each; HF and
              ORT: padded batches of 32 in input order; CT2: one translate_batch
              with max_batch_size=32 (which sorts by length to cut padding)
Each engine runs in its own subprocess (so peak RSS is its own), is warmed up
once, and each workload is timed with time.perf_counter: best of --reps
(default 3; mixed: 1).

    .venv-bench/bin/python bench/peers.py --model small --threads 2 [--quick]
        [--engines transformers,onnxruntime,onnxruntime-int8,ctranslate2-f32,ctranslate2-int8]
        [--workloads decode_b1,decode_b32,...] [--reps N] [--mixed N]
        [--limit ENGINE:WORKLOAD=N,...]
    .venv-bench/bin/python bench/peers.py --model small --make-ref [--workloads ...]
    .venv-bench/bin/python bench/peers.py --model small --check-ids FILE --engines mms-f32

--quick: one repetition, mixed workload on 200 inputs; --mixed N: the first N
mixed inputs. --limit: fewer inputs for one engine's workload (e.g.
transformers:decode_b32=8 on a model where it is too slow); such records say so
in "note" and "limited_from". The decode ids of transformers are the reference,
bench/out/ref-<m>.json: written by --make-ref (or by the transformers worker
when there is none for the current model), and each engine's decode ids are
compared with it ("match", "match_seqs", "match_prefix_tokens").
--check-ids compares another engine's ids (mms-bench --ids) the same way and
prints one record per decode workload ("check": "ids").
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
ENGINES = ["transformers", "onnxruntime", "onnxruntime-int8", "ctranslate2-f32", "ctranslate2-int8"]
WORKLOADS = ["decode_b1", "decode_b8", "decode_b32", "encode_b32", "mixed_1000"]
MODELS = ["small", "base", "large", "demo"]

DECODE_NEW, MIXED_NEW = 64, 32
ENC = (32, 64)      # encoder workload lines
MIXED_START = 64    # mixed workload lines start here
BATCH = 32          # mixed workload batch size


def log(*a):
    print("[peers]", *a, file=sys.stderr, flush=True)


def read_inputs(model):
    path = OUT / f"inputs-{model}.txt"
    lines = [[int(t) for t in l.split()] for l in path.read_text().splitlines() if l.strip()]
    assert len(lines) >= MIXED_START + 1, f"{path}: too few lines"
    assert all(l[-1] == 1 for l in lines), f"{path}: every input must end with eos (1)"
    return lines


# ---------------------------------------------------------------------------
# Engines: generate(list of id lists, n_new) -> list of n_new-id lists, and
# encode(list of id lists) -> None. Mixed: mixed(list, n_new) -> list.
# ---------------------------------------------------------------------------

def _pad(batch):
    import torch
    n = max(len(x) for x in batch)
    ids = torch.zeros((len(batch), n), dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
    return ids, mask


class TorchGenerate:
    """Shared by transformers and ORT: both are driven by transformers' generate()."""
    note_encode = None
    note_mixed = None

    def generate(self, batch, n_new):
        import torch
        ids, mask = _pad(batch)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask,
                                      min_new_tokens=n_new, max_new_tokens=n_new,
                                      num_beams=1, do_sample=False, use_cache=True)
        assert out.shape[1] == n_new + 1, f"generated {out.shape[1] - 1} tokens, not {n_new}"
        return out[:, 1:].tolist()

    def mixed(self, inputs, n_new):
        res = []
        for i in range(0, len(inputs), BATCH):
            res += self.generate(inputs[i:i + BATCH], n_new)
        return res


class Transformers(TorchGenerate):
    def __init__(self, model, threads):
        import torch
        from transformers import T5ForConditionalGeneration
        from safetensors.torch import load_file
        d = OUT / f"{model}-hf"
        self.model = T5ForConditionalGeneration.from_pretrained(str(d), dtype=torch.float32).eval()
        if not self.model.config.tie_word_embeddings:
            # transformers 5.x ties lm_head whatever the config says: make sure
            # the untied head the file holds is the one used.
            sd = load_file(str(d / "model.safetensors"))
            if not torch.equal(self.model.lm_head.weight, sd["lm_head.weight"]):
                log("transformers tied lm_head on load; restoring the saved one")
                self.model.lm_head.weight = torch.nn.Parameter(sd["lm_head.weight"])
            del sd

    def encode(self, batch):
        import torch
        ids, mask = _pad(batch)
        with torch.inference_mode():
            self.model.encoder(input_ids=ids, attention_mask=mask)


class OnnxRuntime(TorchGenerate):
    def __init__(self, model, threads, sub="onnx"):
        import numpy as np  # noqa: F401
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForSeq2SeqLM
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.model = ORTModelForSeq2SeqLM.from_pretrained(
            str(OUT / f"{model}-{sub}"), session_options=so, use_cache=True, use_merged=False,
            provider="CPUExecutionProvider")
        sess = self.model.encoder.session
        self.enc_session = sess
        self.enc_inputs = [i.name for i in sess.get_inputs()]
        log("onnxruntime", ort.__version__, sub, "encoder inputs", self.enc_inputs)

    def encode(self, batch):
        ids, mask = _pad(batch)
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        self.enc_session.run(None, {k: feed[k] for k in self.enc_inputs})


class CTranslate2:
    note_encode = ("ctranslate2.Translator has no encoder-only call: timed as "
                   "generation with max_decoding_length=1 (encoder + 1 decoder step)")
    note_mixed = ("translate_batch(all, max_batch_size=32, batch_type='examples'): "
                  "CT2 sorts the inputs by length into batches")

    def __init__(self, model, threads, quant):
        import ctranslate2
        d = OUT / f"{model}-ct2-{quant}"
        self.tr = ctranslate2.Translator(str(d), device="cpu",
                                         compute_type="float32" if quant == "f32" else "int8",
                                         intra_threads=threads, inter_threads=1)
        j = d / "shared_vocabulary.json"
        if j.exists():
            vocab = json.loads(j.read_text())
        else:
            vocab = (d / "shared_vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]
        assert len(set(vocab)) == len(vocab), "CT2 vocabulary has duplicates"
        self.vocab = vocab
        self.index = {t: i for i, t in enumerate(vocab)}
        log("ctranslate2", ctranslate2.__version__, quant, "vocab", len(vocab))

    def toks(self, batch):
        return [[self.vocab[i] for i in x] for x in batch]

    def _run(self, batch, n_new, max_batch_size=0):
        res = self.tr.translate_batch(self.toks(batch), beam_size=1,
                                      min_decoding_length=n_new, max_decoding_length=n_new,
                                      max_batch_size=max_batch_size, batch_type="examples",
                                      return_scores=False)
        out = [[self.index[t] for t in r.hypotheses[0]] for r in res]
        bad = [len(o) for o in out if len(o) != n_new]
        assert not bad, f"CT2 produced lengths {bad[:5]}, not {n_new}"
        return out

    def generate(self, batch, n_new):
        return self._run(batch, n_new)

    def encode(self, batch):
        self._run(batch, 1)

    def mixed(self, inputs, n_new):
        return self._run(inputs, n_new, max_batch_size=BATCH)


def make_engine(name, model, threads):
    if name == "transformers":
        return Transformers(model, threads)
    if name == "onnxruntime":
        return OnnxRuntime(model, threads)
    if name == "onnxruntime-int8":
        return OnnxRuntime(model, threads, "onnx-int8")
    if name == "ctranslate2-f32":
        return CTranslate2(model, threads, "f32")
    if name == "ctranslate2-int8":
        return CTranslate2(model, threads, "int8")
    raise SystemExit(f"peers: unknown engine {name}")


# ---------------------------------------------------------------------------
# Worker: one engine, all workloads
# ---------------------------------------------------------------------------

def prefix(x, y):
    n = 0
    while n < min(len(x), len(y)) and x[n] == y[n]:
        n += 1
    return n


def ref_path(model, kind="f32"):
    """kind "f32": transformers' ids, the reference; "q8_0": transformers' ids
    with the weights the engine's Q8_0 file holds (quantized and dequantized as
    tools/gguf_writer.py does), the reference an exact Q8_0 engine would meet."""
    return OUT / (f"ref-{model}.json" if kind == "f32" else f"ref-{model}-{kind}.json")


def fake_q8_0(model):
    """Every weight the Q8_0 GGUF stores as Q8_0 (2-D, rows a multiple of 32, not
    the relative bias: gguf_writer.tensor_type_for) replaced by its Q8_0 value."""
    import torch
    sys.path.insert(0, str(ROOT / "tools"))
    import gguf_writer as gw
    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and not name.endswith("relative_attention_bias.weight") \
                    and p.shape[-1] % gw.QK == 0:
                x = p.detach().numpy()
                p.copy_(torch.from_numpy(gw.decode(gw.encode(x, gw.Q8_0), gw.Q8_0, x.shape)))
                n += p.numel()
    log(f"weights quantized to Q8_0 and back: {n / 1e6:.1f}M")


def load_ref(model, need=(), kind="f32"):
    """The reference ids if they postdate the model and hold every workload in
    `need`, else None."""
    rp = ref_path(model, kind)
    stamp = OUT / f"{model}-hf" / ".done"
    if not rp.exists() or (stamp.exists() and rp.stat().st_mtime < stamp.stat().st_mtime):
        return None
    ref = json.loads(rp.read_text())
    return ref if all(w in ref for w in need) else None


def compare(out, want, wname):
    """match / match_seqs / match_prefix_tokens of ids `out` against `want`."""
    rec = {"match": out == want}
    if wname != "decode_b1":
        rec["match_seqs"] = sum(x == y for x, y in zip(out, want))
        seqs, wants = out, want
    else:
        seqs, wants = [out], [want]
    # tokens equal before the first difference, over all sequences
    rec["match_prefix_tokens"] = sum(prefix(x, y) for x, y in zip(seqs, wants))
    rec["tokens"] = sum(len(y) for y in wants)
    return rec


def parse_limits(spec):
    """"engine:workload=N,..." -> {(engine, workload): N}"""
    lim = {}
    for item in filter(None, (spec or "").split(",")):
        key, n = item.split("=")
        e, w = key.split(":")
        assert w in WORKLOADS and w != "encode_b32", f"--limit: cannot limit {w}"
        lim[(e, w)] = int(n)
    return lim


def worker(a):
    threads = a.threads
    name = a.engines
    if not name.startswith("ctranslate2"):  # CT2's RSS should not include torch's
        import torch
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
    inputs = read_inputs(a.model)
    wanted = [w for w in a.workloads.split(",") if w]
    t = time.perf_counter()
    eng = make_engine(name, a.model, threads)
    log(f"{name}: loaded in {time.perf_counter() - t:.1f}s")

    dec = inputs[:32]
    sizes = {"decode_b1": 1, "decode_b8": 8, "decode_b32": 32}
    if a.ref_only:
        kind = "q8_0" if a.fake_q8 else "f32"
        if a.fake_q8:
            fake_q8_0(eng.model)
        ref = {w: eng.generate(dec[:n], DECODE_NEW) for w, n in sizes.items() if w in wanted}
        if "decode_b1" in ref:
            ref["decode_b1"] = ref["decode_b1"][0]
        old = load_ref(a.model, kind=kind) or {}
        old.update(ref)
        ref_path(a.model, kind).write_text(json.dumps(old) + "\n")
        return

    # Warm-up: one batch through each path.
    t = time.perf_counter()
    eng.generate(dec[:8], 8)
    eng.encode(inputs[ENC[0]:ENC[0] + 8])
    log(f"{name}: warm-up {time.perf_counter() - t:.1f}s")

    ref = load_ref(a.model)
    reps = 1 if a.quick else a.reps
    n_mixed = a.mixed or (200 if a.quick else 1000)
    mixed = inputs[MIXED_START:MIXED_START + n_mixed]
    enc = inputs[ENC[0]:ENC[1]]
    assert all(len(x) == 128 for x in enc)
    limits = parse_limits(a.limit)
    workloads = []
    for wname in wanted:
        if wname in sizes:
            n = sizes[wname]
            n_lim = min(n, limits.get((name, wname), n))
            batch = dec[:n_lim]
            workloads.append((wname, (lambda b: lambda: eng.generate(b, DECODE_NEW))(batch),
                              batch, DECODE_NEW, reps, n))
        elif wname == "encode_b32":
            workloads.append((wname, lambda: eng.encode(enc), enc, 0, reps, len(enc)))
        elif wname == "mixed_1000":
            n_lim = min(len(mixed), limits.get((name, wname), len(mixed)))
            batch = mixed[:n_lim]
            workloads.append((wname, (lambda b: lambda: eng.mixed(b, MIXED_NEW))(batch),
                              batch, MIXED_NEW, 1, len(mixed)))
    records, ids = [], {}
    for wname, fn, batch, n_new, nrep, n_full in workloads:
        best, out = None, None
        for _ in range(nrep):
            t = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t
            best = dt if best is None else min(best, dt)
        rec = {"engine": name, "model": a.model, "workload": wname, "seconds": round(best, 6),
               "in_tokens": sum(len(x) for x in batch), "out_tokens": n_new * len(batch),
               "inputs": len(batch), "threads": threads, "reps": nrep}
        notes = []
        if len(batch) < n_full:
            rec["limited_from"] = n_full
            notes.append(f"{len(batch)} of the workload's {n_full} inputs (--limit: too slow)")
        if wname == "encode_b32" and eng.note_encode:
            notes.append(eng.note_encode)
            rec["out_tokens"] = len(batch)  # the one decoder step CT2 cannot skip
        elif wname == "encode_b32":
            notes.append("encoder only")
        if wname == "mixed_1000":
            rec["new_tokens_each"] = n_new
            if eng.note_mixed:
                notes.append(eng.note_mixed)
        if notes:
            rec["note"] = "; ".join(notes)
        if wname in sizes:
            got = out[0] if wname == "decode_b1" else out
            ids[wname] = got
            if ref is not None and wname in ref:
                want = ref[wname] if wname == "decode_b1" else ref[wname][:len(out)]
                rec.update(compare(got, want, wname))
            elif name == "transformers":
                rec["match"] = True  # it is the reference
            else:
                rec["match"] = None
        records.append(rec)
        log(f"{name} {wname}: {best:.3f}s")
    if name == "transformers" and ref is None:
        full = {w: v for w, v in ids.items()
                if not any(r["workload"] == w and "limited_from" in r for r in records)}
        if full:
            ref_path(a.model).write_text(json.dumps(full) + "\n")
    (OUT / f"ids-{a.model}-{name}.json").write_text(json.dumps(ids) + "\n")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    for r in records:
        r["peak_rss_mb"] = round(peak, 1)
        print(json.dumps(r), flush=True)


def check_ids(a, ids=None, kinds=("f32",)):
    """Prints, for each decode workload in the ids file of another engine (e.g.
    mms-bench --ids), how its ids compare with the reference(s): one record per
    workload and reference, "against": "f32" (transformers) or "q8_0"
    (transformers on the Q8_0 weights; for Q8_0 engines)."""
    if ids is None:
        ids = json.loads(Path(a.check_ids).read_text())
    for kind in kinds:
        ref = load_ref(a.model, kind=kind)
        for w in WORKLOADS:
            if w not in ids:
                continue
            rec = {"engine": a.engines, "model": a.model, "workload": w, "check": "ids",
                   "against": kind}
            if ref is None or w not in ref:
                rec["match"] = None
            else:
                rec.update(compare(ids[w], ref[w], w))
            print(json.dumps(rec), flush=True)


# ---------------------------------------------------------------------------
# Parent: one subprocess per engine
# ---------------------------------------------------------------------------

def run_worker(a, engine, ref_only=False, fake_q8=False):
    cmd = [sys.executable, __file__, "--worker", "--model", a.model, "--threads", str(a.threads),
           "--engines", engine, "--workloads", a.workloads, "--reps", str(a.reps),
           "--mixed", str(a.mixed), "--limit", a.limit or ""] + \
        (["--quick"] if a.quick else []) + (["--ref-only"] if ref_only else []) + \
        (["--fake-q8"] if fake_q8 else [])
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(a.threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    t = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, env=env, text=True)
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            print(line, flush=True)
        elif line.strip():
            log(f"{engine} stdout: {line}")
    what = ("Q8_0 reference " if fake_q8 else "reference ") if ref_only else ""
    log(f"{engine}: {what}done in {time.time() - t:.0f}s, rc {p.returncode}")
    return p.returncode


def main():
    ap = argparse.ArgumentParser(description="peers' side of make bench")
    ap.add_argument("--model", default="small", choices=MODELS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 repetition, 200 mixed inputs")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list of " + ",".join(WORKLOADS))
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per workload, best kept")
    ap.add_argument("--mixed", type=int, default=0, help="mixed inputs (default 1000, --quick 200)")
    ap.add_argument("--limit", default="", help="ENGINE:WORKLOAD=N,...: fewer inputs there")
    ap.add_argument("--make-ref", action="store_true",
                    help="only make bench/out/ref-<m>.json (transformers' ids) and ref-<m>-q8_0.json "
                    "(the same on the Q8_0 weights) if missing or stale, and print how the two agree")
    ap.add_argument("--check-ids", metavar="FILE", help="compare FILE's decode ids with the reference")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ref-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--fake-q8", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    for w in a.workloads.split(","):
        if w and w not in WORKLOADS:
            sys.exit(f"peers: unknown workload {w} (known: {', '.join(WORKLOADS)})")
    if a.worker:
        # Before torch/onnxruntime/ctranslate2 start their thread pools.
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[k] = str(a.threads)
        return worker(a)
    if a.check_ids:
        kinds = ("f32", "q8_0") if "q8_0" in a.engines else ("f32",)
        return check_ids(a, kinds=kinds)

    for d in [f"inputs-{a.model}.txt", f"{a.model}-hf"]:
        if not (OUT / d).exists():
            sys.exit(f"peers: bench/out/{d} missing; run bench/make_models.py first")
    need = [w for w in a.workloads.split(",") if w.startswith("decode_")]
    if a.make_ref:
        rc = 0
        if need and load_ref(a.model, need) is None:
            rc |= run_worker(a, "transformers", ref_only=True)
        if need and load_ref(a.model, need, kind="q8_0") is None:
            rc |= run_worker(a, "transformers", ref_only=True, fake_q8=True)
        q8 = load_ref(a.model, kind="q8_0")
        if q8 is not None:  # how far Q8_0 weights alone move transformers' ids
            a.engines = "transformers-q8_0"
            check_ids(a, ids=q8)
        sys.exit(1 if rc else 0)
    engines = [e for e in a.engines.split(",") if e]
    for e in engines:
        if e not in ENGINES:
            sys.exit(f"peers: unknown engine {e} (known: {', '.join(ENGINES)})")
    # The reference (transformers' ids) first; it must postdate the model.
    engines.sort(key=lambda e: e != "transformers")
    if "transformers" not in engines and need and load_ref(a.model, need) is None:
        run_worker(a, "transformers", ref_only=True)
    rc = 0
    for e in engines:
        rc |= run_worker(a, e)
    sys.exit(1 if rc else 0)


if __name__ == "__main__":
    main()
