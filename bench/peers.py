#!/usr/bin/env python3
"""The peers' side of `make bench`: transformers' generate() on PyTorch, ONNX
Runtime (optimum's ORTModelForSeq2SeqLM, KV cache) and CTranslate2 (float32 and
int8) on the models and inputs bench/make_models.py wrote to bench/out/.

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
once, and each workload is timed with time.perf_counter: best of 3 (mixed: 1).

    .venv/bin/python bench/peers.py --model small --threads 2 [--quick]
        [--engines transformers,onnxruntime,ctranslate2-f32,ctranslate2-int8]

--quick: one repetition, mixed workload on 200 inputs. The transformers worker
writes its decode ids to bench/out/ref-<m>.json (the reference the others are
compared with, also usable to check the engine's own greedy output).
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
ENGINES = ["transformers", "onnxruntime", "ctranslate2-f32", "ctranslate2-int8"]

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
    def __init__(self, model, threads):
        import numpy as np  # noqa: F401
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForSeq2SeqLM
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.model = ORTModelForSeq2SeqLM.from_pretrained(
            str(OUT / f"{model}-onnx"), session_options=so, use_cache=True, use_merged=False,
            provider="CPUExecutionProvider")
        sess = self.model.encoder.session
        self.enc_session = sess
        self.enc_inputs = [i.name for i in sess.get_inputs()]
        log("onnxruntime", ort.__version__, "encoder inputs", self.enc_inputs)

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


def ref_path(model):
    return OUT / f"ref-{model}.json"


def worker(a):
    threads = a.threads
    name = a.engines
    if not name.startswith("ctranslate2"):  # CT2's RSS should not include torch's
        import torch
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
    inputs = read_inputs(a.model)
    t = time.perf_counter()
    eng = make_engine(name, a.model, threads)
    log(f"{name}: loaded in {time.perf_counter() - t:.1f}s")

    dec = inputs[:32]
    if a.ref_only:
        ref = {"decode_b1": eng.generate(dec[:1], DECODE_NEW)[0],
               "decode_b8": eng.generate(dec[:8], DECODE_NEW),
               "decode_b32": eng.generate(dec[:32], DECODE_NEW)}
        ref_path(a.model).write_text(json.dumps(ref) + "\n")
        return

    # Warm-up: one batch through each path.
    t = time.perf_counter()
    eng.generate(dec[:8], 8)
    eng.encode(inputs[ENC[0]:ENC[0] + 8])
    log(f"{name}: warm-up {time.perf_counter() - t:.1f}s")

    ref = None
    if name != "transformers" and ref_path(a.model).exists():
        ref = json.loads(ref_path(a.model).read_text())
    reps = 1 if a.quick else 3
    mixed = inputs[MIXED_START:MIXED_START + (200 if a.quick else 1000)]
    enc = inputs[ENC[0]:ENC[1]]
    assert all(len(x) == 128 for x in enc)
    workloads = [
        ("decode_b1", lambda: eng.generate(dec[:1], DECODE_NEW), dec[:1], DECODE_NEW, reps),
        ("decode_b8", lambda: eng.generate(dec[:8], DECODE_NEW), dec[:8], DECODE_NEW, reps),
        ("decode_b32", lambda: eng.generate(dec[:32], DECODE_NEW), dec[:32], DECODE_NEW, reps),
        ("encode_b32", lambda: eng.encode(enc), enc, 0, reps),
        ("mixed_1000", lambda: eng.mixed(mixed, MIXED_NEW), mixed, MIXED_NEW, 1),
    ]
    records, ids = [], {}
    for wname, fn, batch, n_new, nrep in workloads:
        best, out = None, None
        for _ in range(nrep):
            t = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t
            best = dt if best is None else min(best, dt)
        rec = {"engine": name, "model": a.model, "workload": wname, "seconds": round(best, 6),
               "in_tokens": sum(len(x) for x in batch), "out_tokens": n_new * len(batch),
               "inputs": len(batch), "threads": threads, "reps": nrep}
        if wname == "encode_b32":
            rec["note"] = eng.note_encode or "encoder only"
            if eng.note_encode:
                rec["out_tokens"] = len(batch)  # the one decoder step CT2 cannot skip
        if wname == "mixed_1000":
            rec["new_tokens_each"] = n_new
            if eng.note_mixed:
                rec["note"] = eng.note_mixed
        if wname.startswith("decode"):
            ids[wname] = out[0] if wname == "decode_b1" else out
            if name == "transformers":
                rec["match"] = True
            elif ref is not None:
                rec["match"] = ids[wname] == ref[wname]
                if wname != "decode_b1":
                    rec["match_seqs"] = sum(x == y for x, y in zip(out, ref[wname]))
                # tokens equal before the first difference, over all sequences
                want = [ref[wname]] if wname == "decode_b1" else ref[wname]
                rec["match_prefix_tokens"] = sum(prefix(x, y) for x, y in zip(out, want))
            else:
                rec["match"] = None
        records.append(rec)
        log(f"{name} {wname}: {best:.3f}s")
    if name == "transformers":
        ref_path(a.model).write_text(json.dumps(ids) + "\n")
    else:
        (OUT / f"ids-{a.model}-{name}.json").write_text(json.dumps(ids) + "\n")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    for r in records:
        r["peak_rss_mb"] = round(peak, 1)
        print(json.dumps(r), flush=True)


# ---------------------------------------------------------------------------
# Parent: one subprocess per engine
# ---------------------------------------------------------------------------

def run_worker(a, engine, ref_only=False):
    cmd = [sys.executable, __file__, "--worker", "--model", a.model, "--threads", str(a.threads),
           "--engines", engine] + (["--quick"] if a.quick else []) + (["--ref-only"] if ref_only else [])
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
    log(f"{engine}: {'reference ' if ref_only else ''}done in {time.time() - t:.0f}s, rc {p.returncode}")
    return p.returncode


def main():
    ap = argparse.ArgumentParser(description="peers' side of make bench")
    ap.add_argument("--model", default="small", choices=["small", "demo"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 repetition, 200 mixed inputs")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ref-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        # Before torch/onnxruntime/ctranslate2 start their thread pools.
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[k] = str(a.threads)
        return worker(a)

    engines = [e for e in a.engines.split(",") if e]
    for e in engines:
        if e not in ENGINES:
            sys.exit(f"peers: unknown engine {e} (known: {', '.join(ENGINES)})")
    for d in [f"inputs-{a.model}.txt", f"{a.model}-hf"]:
        if not (OUT / d).exists():
            sys.exit(f"peers: bench/out/{d} missing; run bench/make_models.py first")
    # The reference (transformers' ids) first; it must postdate the model.
    engines.sort(key=lambda e: e != "transformers")
    stamp = OUT / f"{a.model}-hf" / ".done"
    rp = ref_path(a.model)
    if "transformers" not in engines and (not rp.exists() or rp.stat().st_mtime < stamp.stat().st_mtime):
        run_worker(a, "transformers", ref_only=True)
    elif "transformers" in engines and rp.exists():
        rp.unlink()
    rc = 0
    for e in engines:
        rc |= run_worker(a, e)
    sys.exit(1 if rc else 0)


if __name__ == "__main__":
    main()
