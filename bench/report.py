#!/usr/bin/env python3
"""Turns the JSON lines of one `make bench` run (bench/out/results.jsonl) into
the report: per model, each engine's throughput on each workload as the median
over rounds with the spread (min-max); mms against the fastest peer of its
precision class; the targets; fractions of the machine limits measured in the
same run; and memory and throughput against model size.

Usage: bench/report.py bench/out/results.jsonl

Engines, by precision class (an old run's "mms" counts as mms-f32):
  f32:  mms-f32, transformers, onnxruntime, ctranslate2-f32
  int8: mms-q8_0, onnxruntime-int8, ctranslate2-int8
Rates: decode_*: generated tokens/s; encode_b32: input tokens/s; mixed_1000:
inputs/s. Ratios are of medians; "rounds a-b" is the range of the ratio taken
round by round (each round runs every engine once, in a rotated order).
"""
import json
import statistics
import sys

WORKLOADS = [
    ("decode_b1", "decode b1", "greedy decode, batch 1, 64 new tokens (out tok/s)"),
    ("decode_b8", "decode b8", "greedy decode, batch 8 (out tok/s)"),
    ("decode_b32", "decode b32", "greedy decode, batch 32 (out tok/s)"),
    ("encode_b32", "encode b32", "encoder, 32 x 128 tokens (in tok/s)"),
    ("mixed_1000", "mixed", "mixed inputs, 8..64 tokens, 32 new tokens each (inputs/s)"),
]
WNAMES = [w for w, _, _ in WORKLOADS]
F32 = ["mms-f32", "transformers", "onnxruntime", "ctranslate2-f32"]
INT8 = ["mms-q8_0", "onnxruntime-int8", "ctranslate2-int8"]
ENGINES = ["mms-f32", "mms-q8_0", "transformers", "onnxruntime", "onnxruntime-int8",
           "ctranslate2-f32", "ctranslate2-int8"]
PEERS_F32 = F32[1:]
PEERS_INT8 = INT8[1:]
MODEL_ORDER = ["small", "base", "large", "demo"]

TARGET_PEER = 1.0       # mms / fastest peer of its class
TARGET_Q8_B1 = 3.0      # mms-q8_0 decode_b1 / mms-f32 decode_b1
TARGET_SGEMM = {"decode_b32": 0.50, "encode_b32": 0.75}  # mms-f32, of the sgemm rate
TARGET_MIXED = 3.0      # mixed_1000 mms / transformers


def rate(r):
    if r["workload"] == "encode_b32":
        return r["in_tokens"] / r["seconds"]
    if r["workload"] == "mixed_1000":
        return r["inputs"] / r["seconds"]
    return r["out_tokens"] / r["seconds"]


def med(xs):
    return statistics.median(xs) if xs else None


def verdict(x, target):
    return "met" if x >= target else "missed"


def fmt_rate(x):
    if x is None:
        return "-"
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def fmt_spread(xs):
    m = med(xs)
    if m is None:
        return "-"
    if len(xs) == 1:
        return fmt_rate(m)
    return f"{fmt_rate(m)} [{fmt_rate(min(xs))}-{fmt_rate(max(xs))}]"


def mb(b):
    return f"{b / 1e6:.0f}" if b is not None else "-"


class Model:
    """The records of one model."""

    def __init__(self, name, rows):
        self.name = name
        self.rows = [r for r in rows if r.get("model") == name]
        self.files = next((r for r in self.rows if r.get("workload") == "files"), None)
        self.info = {}  # engine -> its "model" line (mms-bench)
        for r in self.rows:
            if r.get("workload") == "model":
                self.info.setdefault(r["engine"], r)
        # perf[engine][workload] = [record per round]
        self.perf = {}
        self.ids = {}   # (engine, workload) -> [id check per round]
        self.wall = {}  # engine -> [seconds per run]
        self.errors = [r for r in self.rows if r.get("workload") == "error"]
        for r in self.rows:
            w = r.get("workload")
            if w == "wall":
                self.wall.setdefault(r["engine"], []).append(r["seconds"])
            elif w in WNAMES and "seconds" in r:
                self.perf.setdefault(r["engine"], {}).setdefault(w, []).append(r)
                if "match" in r:
                    self.ids.setdefault((r["engine"], w, "f32"), []).append(r)
            elif w in WNAMES and r.get("check") == "ids":
                self.ids.setdefault((r["engine"], w, r.get("against", "f32")), []).append(r)
        self.rounds = sorted({r.get("round", 1) for e in self.perf.values() for rs in e.values()
                              for r in rs})

    def rates(self, engine, w):
        return [rate(r) for r in self.perf.get(engine, {}).get(w, [])]

    def rate_by_round(self, engine, w):
        return {r.get("round", 1): rate(r) for r in self.perf.get(engine, {}).get(w, [])}

    def median(self, engine, w):
        return med(self.rates(engine, w))

    def limited(self, engine, w):
        return next((r for r in self.perf.get(engine, {}).get(w, []) if "limited_from" in r), None)

    def best_peer(self, peers, w):
        cands = [(self.median(p, w), p) for p in peers if self.median(p, w) is not None]
        return max(cands) if cands else (None, None)

    def ratio_rounds(self, engine, peers, w):
        """The ratio engine / fastest peer, round by round."""
        mine = self.rate_by_round(engine, w)
        out = []
        for rd, x in mine.items():
            ps = [self.rate_by_round(p, w).get(rd) for p in peers]
            ps = [p for p in ps if p is not None]
            if ps:
                out.append(x / max(ps))
        return out


def flops_per_token(info, w, rec):
    """FLOPs per token of mms-f32's workload w, from the model's shape: 2 per
    multiply-add. Decoder step: 2 x the weights a step touches (self-attention
    q,k,v,o, cross-attention q,o, FFN, lm_head: dec_linear_params) + attention
    over the step's context (self: the tokens so far, mean (1+64)/2; cross: the
    input). Encoder: 2 x its linear weights + attention over the input."""
    inner = info["inner"]
    L = rec["in_tokens"] / rec["inputs"]
    if w == "encode_b32":
        return 2 * info["enc_linear_params"] + info["n_enc_layer"] * 4 * inner * L
    ctx = (1 + 64) / 2
    return 2 * info["dec_linear_params"] + info["n_dec_layer"] * 4 * inner * (ctx + L)


def report_model(m, limits, out):
    f = m.files
    head = f"== model: {m.name}"
    if f:
        head += f" ({f['params'] / 1e6:.1f}M params"
        sh = f.get("shape") or {}
        if sh.get("d_model"):
            head += (f"; d_model {sh['d_model']}, d_ff {sh['d_ff']}, {sh['num_heads']} heads, "
                     f"{sh['num_layers']}+{sh['num_decoder_layers']} layers, vocab {sh['vocab_size']}")
        head += ")"
    head += f", {len(m.rounds)} round(s)"
    out.append("")
    out.append(head)
    if f:
        fb = f["file_bytes"]
        out.append("files (MB): " + ", ".join(f"{e} {mb(fb[e])}" for e in ENGINES if e in fb))
    engines = [e for e in ENGINES if e in m.perf] + sorted(e for e in m.perf if e not in ENGINES)
    ws = [w for w in WNAMES if any(w in m.perf[e] for e in engines)]
    if not ws:
        out.append("no results")
        return
    # throughput table: engines x workloads, median [min-max] over rounds
    out.append("throughput, median [min-max] over rounds: decode out tok/s, encode in tok/s, "
               "mixed inputs/s")
    colw = 22
    out.append(f"{'engine':18s}" + "".join(f"{dict((a, b) for a, b, _ in WORKLOADS)[w]:>{colw}s}"
                                           for w in ws) + "  peak RSS MB")
    notes = []
    for e in engines:
        line = f"{e:18s}"
        for w in ws:
            cell = fmt_spread(m.rates(e, w))
            lim = m.limited(e, w)
            if lim:
                cell += "*"
                n = f"{e} {w}: {lim['inputs']} of {lim['limited_from']} inputs ({lim.get('note', '')})"
                if n not in notes:
                    notes.append(n)
            line += f"{cell:>{colw}s}"
        rss = [r["peak_rss_mb"] for rs in m.perf[e].values() for r in rs if "peak_rss_mb" in r]
        line += f"  {max(rss):.0f}" if rss else "  -"
        out.append(line)
    mixed_n = {r["inputs"] for e in engines for r in m.perf[e].get("mixed_1000", [])
               if "limited_from" not in r}
    if mixed_n:
        out.append(f"mixed: {'/'.join(str(n) for n in sorted(mixed_n))} of the 1000 inputs of mixed_1000"
                   " (run.sh: MIXED_<model>; 32 new tokens each)")
    for n in notes:
        out.append("* " + n)

    # mms against the fastest peer of its class
    out.append("")
    out.append(f"mms / fastest peer of its class (ratio of medians; target >= {TARGET_PEER:.1f}):")
    for mine, peers in (("mms-f32", PEERS_F32), ("mms-q8_0", PEERS_INT8)):
        if mine not in m.perf:
            continue
        for w in ws:
            x = m.median(mine, w)
            best, who = m.best_peer(peers, w)
            if x is None or best is None:
                continue
            rr = m.ratio_rounds(mine, peers, w)
            spread = f", rounds {min(rr):.2f}-{max(rr):.2f}" if len(rr) > 1 else ""
            out.append(f"  {mine:9s} {w:11s} {x / best:5.2f}x vs {who} "
                       f"({fmt_rate(x)} vs {fmt_rate(best)}{spread}): {verdict(x / best, TARGET_PEER)}")

    # the other targets
    out.append("targets:")
    b1f, b1q = m.median("mms-f32", "decode_b1"), m.median("mms-q8_0", "decode_b1")
    if b1f and b1q:
        out.append(f"  mms-q8_0 / mms-f32, decode_b1: {b1q / b1f:.2f}x (target >= {TARGET_Q8_B1:.0f}): "
                   f"{verdict(b1q / b1f, TARGET_Q8_B1)}")
    info = m.info.get("mms-f32") or m.info.get("mms")
    sgemm = med([l["sgemm_gflops"] for l in limits])
    for w, target in TARGET_SGEMM.items():
        x = m.median("mms-f32", w)
        if x is None or info is None or not sgemm or "n_enc_layer" not in info:
            continue
        rec = m.perf["mms-f32"][w][0]
        fpt = flops_per_token(info, w, rec)
        gf = x * fpt / 1e9
        out.append(f"  mms-f32 {w}: {gf:.1f} GFLOP/s ({fpt / 1e6:.1f} MFLOP/token) = "
                   f"{gf / sgemm:.1%} of sgemm {sgemm:.1f} (target {target:.0%}): "
                   f"{verdict(gf / sgemm, target)}")
    tr = m.median("transformers", "mixed_1000")
    for mine in ("mms-f32", "mms-q8_0"):
        x = m.median(mine, "mixed_1000")
        if x and tr:
            out.append(f"  {mine} / transformers, mixed: {x / tr:.2f}x (target >= {TARGET_MIXED:.0f}): "
                       f"{verdict(x / tr, TARGET_MIXED)}")
    bw = med([max(l["stream_read_gbs"], l["gemv_gbs"]) for l in limits])
    for mine in ("mms-f32", "mms-q8_0"):
        x, inf = m.median(mine, "decode_b1"), m.info.get(mine)
        if x and inf and bw:
            out.append(f"  {mine} decode_b1: {x * inf['decoder_bytes_per_step'] / 1e9:.1f} GB/s of weights read"
                       f" = {x * inf['decoder_bytes_per_step'] / (bw * 1e9):.1%} of bandwidth {bw:.1f} GB/s"
                       f" ({inf['decoder_bytes_per_step'] / 1e6:.0f} MB a step, as the engine counts)")

    # agreement of the decode ids with transformers'
    agree = []
    checked = [e for e in engines + ["transformers-q8_0"] if e != "transformers"]
    against_label = {"f32": "", "q8_0": " vs transformers on the Q8_0 weights"}
    for e in checked:
        for kind in ("f32", "q8_0"):
            parts = []
            for w in ws:
                recs = m.ids.get((e, w, kind))
                if not recs:
                    continue
                r = recs[-1]
                if r.get("match") is None:
                    parts.append(f"{w} no reference")
                    continue
                varies = len({json.dumps([x.get("match"), x.get("match_prefix_tokens")])
                              for x in recs}) > 1
                if w == "decode_b1":
                    s = f"{w} {'equal' if r['match'] else 'differs'}"
                else:
                    n = r.get("inputs") or int(w[len("decode_b"):])
                    s = f"{w} {r.get('match_seqs', '?')}/{n} seqs equal"
                if "match_prefix_tokens" in r and not r["match"]:
                    s += f" ({r['match_prefix_tokens']}/{r['tokens']} tokens before the first difference)" \
                        if "tokens" in r else f" ({r['match_prefix_tokens']} tokens before the first difference)"
                if varies:
                    s += " [differs between rounds]"
                parts.append(s)
            if parts:
                agree.append(f"  {e}{against_label[kind]}: " + "; ".join(parts))
    if agree:
        out.append("greedy ids against transformers' (f32), 64 tokens a sequence; transformers-q8_0 is"
                   " transformers on the weights of the Q8_0 file (dequantized):")
        out += agree
    builds = {}
    for r in m.rows:
        if r.get("workload") == "wall" and r.get("build"):
            builds.setdefault(r["engine"], []).append(r["build"])
    for e, bs in builds.items():
        if len(set(bs)) > 1:
            out.append(f"WARNING: build/mms-bench changed during the run ({e}, rounds in order: "
                       f"{', '.join(bs)}): its rounds are not of one build")
    if m.wall:
        tot = sum(sum(v) for v in m.wall.values())
        out.append(f"time: {tot / 60:.1f} min for {len(m.rounds)} round(s) ("
                   + ", ".join(f"{e} {sum(m.wall[e]):.0f}s" for e in engines if e in m.wall) + ")")
    for r in m.errors:
        out.append(f"ERROR: {r['engine']} round {r.get('round')}: exit {r.get('rc')} {r.get('msg', '')}")


def size_table(models, out):
    """Memory and throughput against model size (mms, per precision)."""
    rows = [m for m in models if m.files or m.info]
    if not rows:
        return
    out.append("")
    out.append("== mms: memory and throughput against model size (f32 / q8_0)")
    hdr = (f"{'model':7s} {'params':>8s} {'file MB':>13s} {'peak RSS MB':>13s} {'owned MB':>11s} "
           f"{'cache MB':>9s} {'decode_b1 tok/s':>17s} {'encode_b32 tok/s':>19s}  {'peers file MB (f32 / int8)'}")
    out.append(hdr)
    for m in rows:
        def pair(fn, fmt="{:.0f}"):
            vals = [fn(e) for e in ("mms-f32", "mms-q8_0")]
            return " / ".join("-" if v is None else fmt.format(v) for v in vals)

        def rss(e):
            runs = {}
            for rs in m.perf.get(e, {}).values():
                for r in rs:
                    runs[r.get("round", 1)] = max(runs.get(r.get("round", 1), 0), r["peak_rss_mb"])
            return med(list(runs.values()))

        def owned(e):
            i = m.info.get(e)
            return i["owned_bytes"] / 1e6 if i else None

        def cache(e):
            rs = m.perf.get(e, {}).get("mixed_1000", [])
            return max(r.get("peak_cache_bytes", 0) for r in rs) / 1e6 if rs else None

        params = m.files["params"] if m.files else (m.info.get("mms-f32") or {}).get("params")
        fb = m.files["file_bytes"] if m.files else {e: i["file_bytes"] for e, i in m.info.items()}
        filemb = " / ".join(mb(fb.get(e)) for e in ("mms-f32", "mms-q8_0"))
        peers = " ".join(f"{p.replace('ctranslate2', 'ct2').replace('onnxruntime', 'ort')} {mb(fb.get(p))}"
                         for p in ENGINES[2:] if fb.get(p))
        out.append(f"{m.name:7s} {params / 1e6 if params else 0:7.1f}M {filemb:>13s} {pair(rss):>13s} "
                   f"{pair(owned):>11s} {pair(cache):>9s} "
                   f"{pair(lambda e: m.median(e, 'decode_b1'), '{:.1f}'):>17s} "
                   f"{pair(lambda e: m.median(e, 'encode_b32')):>19s}  {peers}")
    out.append("peak RSS: mms-bench's own (median over rounds of each run's peak); owned: weights the"
               " engine holds besides the mapped file; cache: peak KV/cross caches in the mixed workload")


def main(path):
    rows = [json.loads(l) for l in open(path) if l.strip().startswith("{")]
    for r in rows:
        if r.get("engine") == "mms":
            r["engine"] = "mms-f32"
    limits = [r for r in rows if r.get("workload") == "limits"]
    names = sorted({r["model"] for r in rows if "model" in r and r.get("workload") != "limits"},
                   key=lambda m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else 99, m))
    models = [Model(n, rows) for n in names]
    out = []
    if limits:
        thr = sorted({l["threads"] for l in limits})
        out.append(f"machine ({'/'.join(map(str, thr))} threads, median [min-max] of {len(limits)} "
                   f"measurements in this run): streaming read "
                   f"{fmt_spread([l['stream_read_gbs'] for l in limits])} GB/s, GEMV "
                   f"{fmt_spread([l['gemv_gbs'] for l in limits])} GB/s, sgemm "
                   f"{fmt_spread([l['sgemm_gflops'] for l in limits])} GFLOP/s")
    threads = sorted({r["threads"] for r in rows if "threads" in r and r.get("workload") in WNAMES})
    if len(threads) > 1:
        out.append(f"WARNING: engines ran with different thread counts: {threads}")
    for m in models:
        report_model(m, limits, out)
    size_table(models, out)
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/out/results.jsonl")
