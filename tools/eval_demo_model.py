#!/usr/bin/env python3
"""Exact-match accuracy of the demo model "datefix" on its held-out set, three ways:

  (a) transformers' generate(), greedy, with the weights of models/datefix.gguf
      (the HF checkpoint in /tmp/mms_datefix/hf if present, checked tensor by tensor
      against the GGUF; otherwise rebuilt from the GGUF file alone with the `gguf`
      package, so this works from the committed files);
  (b) build/mms-run on models/datefix.gguf (F32);
  (c) build/mms-run on models/datefix-q8_0.gguf (Q8_0);

and checks that (b) gives exactly the ids (and text) of (a) on every held-out example
(and that mms-run tokenizes every input as sentencepiece does). Exits 1 on any
(a)/(b) mismatch.

Run from the repository root:

    make build/mms-run
    tools/venv.sh && .venv/bin/python tools/eval_demo_model.py

Options: --hf-source gguf (ignore /tmp), --limit N (first N examples), --threads N.
"""

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import train_demo_model as tdm  # noqa: E402  (data rules, build_model, greedy)
import gguf_writer as gw  # noqa: E402

PAD, EOS = tdm.PAD, tdm.EOS


def rel(path):
    r = os.path.relpath(path, ROOT)
    return path if r.startswith("..") else r


def kv(reader, key):
    f = reader.fields[key]
    v = f.contents()
    return v


def hf_from_gguf(path):
    """An HF T5ForConditionalGeneration holding exactly the tensors of an F32 GGUF."""
    import gguf
    import numpy as np
    import torch
    r = gguf.GGUFReader(path)
    tensors = {t.name: t for t in r.tensors}
    for t in r.tensors:
        assert int(t.tensor_type) == gw.F32, f"{t.name}: not F32; use the F32 file"
    cfg = dict(tdm.MODEL_CONFIG)
    cfg.update(d_model=kv(r, "t5.embedding_length"), d_ff=kv(r, "t5.feed_forward_length"),
               num_layers=kv(r, "t5.block_count"),
               num_decoder_layers=kv(r, "t5.decoder_block_count"),
               num_heads=kv(r, "t5.attention.head_count"), d_kv=kv(r, "t5.attention.key_length"),
               relative_attention_num_buckets=kv(r, "t5.attention.relative_buckets_count"),
               layer_norm_epsilon=float(np.float32(kv(r, "t5.attention.layer_norm_rms_epsilon"))),
               feed_forward_proj="gated-gelu" if "enc.blk.0.ffn_gate.weight" in tensors else "relu")
    assert "output.weight" in tensors, "expects an untied LM head, as flan-t5"
    vocab = len(kv(r, "tokenizer.ggml.tokens"))
    model = tdm.build_model(vocab, config=cfg)
    params = dict(model.named_parameters())
    names = gw.t5_tensors(model)
    assert len(names) == len(tensors), (len(names), len(tensors))
    with torch.no_grad():
        for gname, hname, x in names:
            data = np.asarray(tensors[gname].data, dtype=np.float32).reshape(x.shape)
            params[hname].copy_(torch.from_numpy(data.copy()))
    model.eval()
    return model


def check_same_weights(model, path):
    import gguf
    import numpy as np
    r = gguf.GGUFReader(path)
    tensors = {t.name: t for t in r.tensors}
    for gname, hname, x in gw.t5_tensors(model):
        data = np.asarray(tensors[gname].data, dtype=np.float32).reshape(x.shape)
        assert np.array_equal(data, x), f"{hname} differs from {gname} in {path}"


def run_mms(mms_run, model, inputs, args, extra=()):
    """One output line per input; inputs go in chunks, each chunk one batch."""
    out = []
    for s in range(0, len(inputs), args.chunk):
        chunk = inputs[s:s + args.chunk]
        cmd = [mms_run, "--model", model, "--max-new-tokens", str(args.max_new_tokens),
               "--threads", str(args.threads), *extra, "--", *chunk]
        p = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8")
        if p.returncode != 0:
            sys.exit(f"{' '.join(cmd[:8])} ...: exit {p.returncode}: {p.stderr.strip()}")
        lines = p.stdout.split("\n")
        assert lines[-1] == "" and len(lines) == len(chunk) + 1, (len(lines), len(chunk))
        out += lines[:-1]
    return out


def ids_of(line):
    return [int(t) for t in line.split()]


def strip_eos(ids):
    return ids[:-1] if ids and ids[-1] == EOS else ids


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--heldout", default=os.path.join(ROOT, "models", "datefix_heldout.tsv"))
    ap.add_argument("--f32", default=os.path.join(ROOT, "models", "datefix.gguf"))
    ap.add_argument("--q8", default=os.path.join(ROOT, "models", "datefix-q8_0.gguf"))
    ap.add_argument("--spm", default=os.path.join(ROOT, "models", "datefix.spm.model"))
    ap.add_argument("--mms-run", default=os.path.join(ROOT, "build", "mms-run"))
    ap.add_argument("--hf-source", choices=["auto", "gguf", "dir"], default="auto")
    ap.add_argument("--hf-dir", default=os.path.join(tdm.WORK, "hf"))
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--chunk", type=int, default=200, help="inputs per mms-run call")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--show", type=int, default=8, help="example outputs to print")
    args = ap.parse_args()

    import sentencepiece as spm
    import torch
    torch.set_num_threads(args.threads)
    if not os.access(args.mms_run, os.X_OK):
        sys.exit(f"{args.mms_run} missing: run `make build/mms-run` first")
    rows = tdm.read_tsv(args.heldout)
    if args.limit:
        rows = rows[:args.limit]
    inputs = [a for a, _ in rows]
    want = [b for _, b in rows]
    is_date = [a.startswith(tdm.PREFIX_DATE) for a in inputs]
    sp = spm.SentencePieceProcessor(model_file=args.spm)

    # (a) transformers
    t = time.time()
    use_dir = args.hf_source == "dir" or (
        args.hf_source == "auto" and os.path.exists(os.path.join(args.hf_dir, "model.pt")))
    if use_dir:
        model = tdm.load_hf_dir(args.hf_dir)
        check_same_weights(model, args.f32)
        src = f"{args.hf_dir} (weights checked equal to {rel(args.f32)})"
    else:
        model = hf_from_gguf(args.f32)
        src = f"rebuilt from {rel(args.f32)}"
    hf_text, hf_ids = tdm.greedy(model, sp, inputs, max_new_tokens=args.max_new_tokens)
    t_hf = time.time() - t
    print(f"transformers model: {src}; generate() greedy, {t_hf:.1f} s")

    # tokenizer agreement (localizes a disagreement below, if any)
    mms_tok = run_mms(args.mms_run, args.f32, inputs, args, ["--tokenize"])
    sp_tok = [x + [EOS] for x in sp.encode(inputs)]
    tok_bad = [i for i in range(len(inputs)) if ids_of(mms_tok[i]) != sp_tok[i]]
    for i in tok_bad[:10]:
        print(f"TOKENIZER MISMATCH {inputs[i]!r}\n  sentencepiece {sp_tok[i]}\n  mms-run       "
              f"{ids_of(mms_tok[i])}")

    # (b), (c) mms-run
    res = {}
    for label, path in (("F32", args.f32), ("Q8_0", args.q8)):
        t = time.time()
        text = run_mms(args.mms_run, path, inputs, args)
        ids = [ids_of(x) for x in run_mms(args.mms_run, path, inputs, args, ["--ids"])]
        res[label] = (text, ids, time.time() - t)

    mm_text, mm_ids, _ = res["F32"]
    bad = [i for i in range(len(inputs))
           if strip_eos(mm_ids[i]) != strip_eos(hf_ids[i]) or mm_text[i] != hf_text[i]]
    for i in bad[:20]:
        print(f"MISMATCH {inputs[i]!r} (expected {want[i]})\n"
              f"  transformers {hf_text[i]!r} {hf_ids[i]}\n  mms-run F32  {mm_text[i]!r} {mm_ids[i]}")
    q_text, q_ids, _ = res["Q8_0"]
    q_same = sum(q_text[i] == mm_text[i] for i in range(len(inputs)))

    def acc(texts, sel=None):
        idx = [i for i in range(len(inputs)) if sel is None or is_date[i] == sel]
        return sum(texts[i] == want[i] for i in idx) / len(idx), len(idx)

    n, nd = len(inputs), sum(is_date)
    print(f"\nheld-out: {rel(args.heldout)}: {n} examples "
          f"({nd} dates, {n - nd} numbers); greedy, max {args.max_new_tokens} new tokens, "
          f"exact match")
    print(f"{'':26} {'all':>8} {'dates':>8} {'numbers':>8} {'time s':>8}")
    for label, texts, secs in (("transformers generate()", hf_text, t_hf),
                               ("mms-run datefix.gguf F32", mm_text, res["F32"][2]),
                               ("mms-run Q8_0", q_text, res["Q8_0"][2])):
        a, ad, an = acc(texts)[0], acc(texts, True)[0], acc(texts, False)[0]
        print(f"{label:26} {100 * a:7.2f}% {100 * ad:7.2f}% {100 * an:7.2f}% {secs:8.1f}")
    print(f"\nmms-run tokenization == sentencepiece: {n - len(tok_bad)}/{n}")
    print(f"mms-run F32 == transformers (ids and text): {n - len(bad)}/{n}"
          + ("  OK" if not bad else "  MISMATCH"))
    print(f"mms-run Q8_0 text == F32 text: {q_same}/{n}")
    wrong = [i for i in range(n) if mm_text[i] != want[i]]
    if args.show:
        print("\nexamples (input -> mms-run F32 output):")
        half = (args.show + 1) // 2
        dates = [i for i in range(n) if is_date[i]]
        nums = [i for i in range(n) if not is_date[i]]
        for sel in (dates, nums):
            for i in sel[::max(1, len(sel) // half)][:half]:
                print(f"  {inputs[i]!r} -> {mm_text[i]}")
        if wrong:
            print(f"errors ({len(wrong)}; expected / got):")
            for i in wrong[:args.show]:
                print(f"  {inputs[i]!r}: {want[i]} / {mm_text[i]}")
    sys.exit(1 if bad or tok_bad else 0)


if __name__ == "__main__":
    main()
