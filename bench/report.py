#!/usr/bin/env python3
"""Turns the JSON lines of one `make bench` run (bench/out/results.jsonl) into
the report: throughput per engine, mms's ratio to each peer, and each mms
result as a fraction of the machine limit measured in the same run.

Usage: bench/report.py bench/out/results.jsonl
"""
import json
import sys

WORKLOADS = [
    ("decode_b1", "greedy decode, batch 1 (out tok/s)"),
    ("decode_b8", "greedy decode, batch 8 (out tok/s)"),
    ("decode_b32", "greedy decode, batch 32 (out tok/s)"),
    ("encode_b32", "encoder, 32 x 128 tokens (in tok/s)"),
    ("mixed_1000", "1,000 mixed inputs, 32 new tokens (inputs/s)"),
]
PEERS = ["transformers", "onnxruntime", "ctranslate2-f32", "ctranslate2-int8"]


def rate(r):
    if r["workload"] == "encode_b32":
        return r["in_tokens"] / r["seconds"]
    if r["workload"] == "mixed_1000":
        return r["inputs"] / r["seconds"]
    return r["out_tokens"] / r["seconds"]


def main(path):
    rows = [json.loads(l) for l in open(path) if l.strip().startswith("{")]
    limits = next((r for r in rows if r.get("workload") == "limits"), None)
    models = sorted({r["model"] for r in rows if "model" in r and r.get("workload") != "limits"},
                    key=lambda m: (m != "small", m))
    out = []
    if limits:
        bw = max(limits["stream_read_gbs"], limits["gemv_gbs"])
        out.append(f"machine ({limits['threads']} threads): streaming read {limits['stream_read_gbs']:.1f} GB/s, "
                   f"GEMV {limits['gemv_gbs']:.1f} GB/s, sgemm {limits['sgemm_gflops']:.1f} GFLOP/s")
    for m in models:
        info = next((r for r in rows if r.get("model") == m and r.get("workload") == "model"), None)
        res = {(r["engine"], r["workload"]): r for r in rows
               if r.get("model") == m and "seconds" in r}
        out.append("")
        out.append(f"== model: {m}" + (f" (file {info['file_bytes'] / 1e6:.1f} MB)" if info else ""))
        head = f"{'workload':46s} {'mms':>9s}" + "".join(f" {p:>16s}" for p in PEERS) + "  fraction of limit"
        out.append(head)
        for w, label in WORKLOADS:
            mine = res.get(("mms", w))
            if mine is None:
                continue
            r_m = rate(mine)
            line = f"{label:46s} {r_m:9.1f}"
            for p in PEERS:
                pr = res.get((p, w))
                line += f" {rate(pr):8.1f} ({r_m / rate(pr):4.2f}x)" if pr else f" {'-':>16s}"
            if limits and info:
                if w == "decode_b1":
                    frac = r_m * info["decoder_bytes_per_step"] / (bw * 1e9)
                    line += f"  {frac:5.1%} of bandwidth"
                elif w.startswith("decode_"):
                    frac = r_m * 2 * info["dec_linear_params"] / (limits["sgemm_gflops"] * 1e9)
                    line += f"  {frac:5.1%} of sgemm peak"
                elif w == "encode_b32":
                    frac = r_m * 2 * info["enc_linear_params"] / (limits["sgemm_gflops"] * 1e9)
                    line += f"  {frac:5.1%} of sgemm peak"
                elif w == "mixed_1000":
                    toks = mine["out_tokens"] / mine["seconds"]
                    line += f"  ({toks:.0f} out tok/s)"
            out.append(line)
        mixed = res.get(("mms", "mixed_1000"))
        if mixed and info:
            weights = info["file_bytes"] + info["owned_bytes"]
            budget = (weights + mixed.get("peak_cache_bytes", 0)) / 1e6
            out.append(f"peak RSS mms {mixed['peak_rss_mb']:.0f} MB vs weights + caches {budget:.0f} MB "
                       f"({mixed['peak_rss_mb'] / budget:.2f}x)"
                       + "".join(f"; {p} {res[(p, 'mixed_1000')]['peak_rss_mb']:.0f} MB"
                                 for p in PEERS if (p, "mixed_1000") in res))
        for p in PEERS:
            r = res.get((p, "decode_b1"))
            if r and "match" in r:
                out.append(f"{p}: decode_b1 ids equal transformers': {r['match']}")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/out/results.jsonl")
