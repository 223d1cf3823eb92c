#!/usr/bin/env python3
"""Builds the tiny T5 model fixtures and their goldens: random-weight (seeded)
T5ForConditionalGeneration models written as GGUF by tools/gguf_writer.py
(test/fixtures/<name>.gguf), and what HF transformers computes for them
(test/fixtures/<name>.golden): encoder states, first-step logits, greedy and beam
generate() results, teacher-forced scores. Quantized fixtures load the values the
file holds (dequantized) back into the HF model before computing goldens.

Rerun from the repository root:
    tools/venv.sh && .venv/bin/python tools/make_fixtures.py
Needs test/fixtures/tok_nfkc.model (tools/make_tokenizer_fixture.py --model-only).
Deterministic: a rerun reproduces byte-identical files.

Golden format (one record per line, whitespace separated, '#' starts a comment):
  model <name> d_model=.. d_ff=.. n_enc=.. n_dec=.. n_head=.. d_kv=.. vocab=.. gated=0|1 tied=0|1 type=..
  then per case:
  case <k> <n> <ids..>                       encoder input ids (n counts the final eos)
  enc <n_rows> <d_model> <floats..>          encoder last_hidden_state, row-major
  logits <vocab> <floats..>                  logits of decoder step 1 (decoder input [0])
  greedy <max_new> <min_new> <rep_penalty> <n> <ids..>
  beam <num_beams> <length_penalty> <early_stopping> <max_new> <min_new> <n> <ids..> <sequence_score>
  score <n> <target ids..> <logprob>         sum of log_softmax(logits)[target], teacher forced
  Generated ids exclude the decoder start token and include eos when generated.
"""

import os
import sys
import warnings

import numpy as np
import torch
from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration
from transformers.generation.utils import GenerationMixin

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_writer as gw  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "test", "fixtures")
SP_MODEL = os.path.join(FIX, "tok_nfkc.model")

PAD, EOS, UNK, DEC_START = 0, 1, 2, 0
CASE_LENGTHS = (1, 5, 13, 40)  # random ids per input, then eos: 41 tokens reach the log buckets
GREEDY = ((16, 0, 1.0), (16, 5, 1.0), (16, 0, 1.3))
BEAMS = ((4, 1.0, False, 12, 0), (4, 0.5, True, 12, 0), (3, 2.0, False, 12, 2), (2, 1.0, False, 20, 0))
MIN_GAP = 1e-3       # smallest allowed margin of any greedy/beam decision
MAX_ATTEMPTS = 60    # inputs tried per case

BASE = dict(d_model=32, n_positions=512, relative_attention_num_buckets=32,
            relative_attention_max_distance=128, layer_norm_epsilon=1e-6, dropout_rate=0.0,
            num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=8, d_ff=64)
# Besides T5Config fields, a spec holds: tied, pad (ids past the SentencePiece vocab),
# and weight shaping, all applied after HF's seeded init: eos (eos row of the head
# scaled, so generations sometimes stop), sharp (decoder final norm scaled: logit
# spread), emb (embedding scaled), self_o (decoder self-attention output scaled).
SHAPE_KEYS = ("tied", "pad", "eos", "sharp", "emb", "self_o")
FLAN = dict(feed_forward_proj="gated-gelu", tied=False, pad=8, eos=2.0, sharp=0.4)
# A random tied model mostly repeats its input token: the residual stream is the
# token's own N(0, 1) embedding and the head is that same embedding matrix.
TIED = dict(feed_forward_proj="relu", tied=True, pad=0, eos=4.0, sharp=2.0, emb=0.25, self_o=1.5)

# (name, seed, spec, gguf type, rel_bias_every_layer)
FIXTURES = [
    ("t5_relu_tied", 101, TIED, "f32", False),
    ("flan_gated", 202, FLAN, "f32", False),
    ("depth_3_1", 303, dict(FLAN, pad=0, eos=1.5, num_layers=3, num_decoder_layers=1), "f32", True),
    ("inner_48", 404, dict(FLAN, feed_forward_proj="relu", pad=0, num_heads=3, d_kv=16), "f32", False),
    ("flan_gated_f16", 202, FLAN, "f16", False),
    ("flan_gated_bf16", 202, FLAN, "bf16", False),
    ("flan_gated_q8_0", 202, FLAN, "q8_0", False),
    ("flan_gated_q4_0", 202, FLAN, "q4_0", False),
]
# Whether plain greedy (16, 0, 1.0) should end with eos, per case; preferred, not required.
WANT_EOS = (False, True, False, True)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------

def sp_vocab_size():
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=SP_MODEL).vocab_size()


def build_model(seed, spec, n_sp):
    cfg_args = dict(BASE, **{k: v for k, v in spec.items() if k not in SHAPE_KEYS})
    tied = spec["tied"]
    cfg = T5Config(vocab_size=n_sp + spec["pad"], tie_word_embeddings=tied,
                   decoder_start_token_id=DEC_START, pad_token_id=PAD, eos_token_id=EOS, **cfg_args)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(cfg)  # HF's own init (factor 1.0), seeded
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        if not tied:
            # transformers 5.x ties lm_head to shared whatever the config says; an
            # untied model (flan-t5) needs its own Parameter. scale_decoder_outputs is
            # already False for tie_word_embeddings=False.
            model.lm_head.weight = torch.nn.Parameter(
                torch.randn(cfg.vocab_size, cfg.d_model, generator=g))
            assert not gw.t5_is_tied(model) and not cfg.scale_decoder_outputs
        else:
            assert gw.t5_is_tied(model) and cfg.scale_decoder_outputs
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                # Not all ones, so a kernel that ignores the norm weight fails.
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith("relative_attention_bias.weight"):
                # HF's std d_model^-0.5 is small next to the scores; make buckets matter.
                p.mul_(5.0)
            elif name.startswith("decoder.") and name.endswith("SelfAttention.o.weight"):
                p.mul_(spec.get("self_o", 1.0))
        emb = spec.get("emb", 1.0)
        model.shared.weight.mul_(emb)
        # Logits of a useful spread (std ~2.5: neither one-hot nor uniform).
        sharp = spec["sharp"] / (emb if tied else 1.0)
        model.decoder.final_layer_norm.weight.mul_(sharp)
        model.lm_head.weight[EOS].mul_(spec["eos"])
    model.eval()
    return model


def load_stored(model, stored):
    """Puts the values the GGUF holds (dequantized) into the HF model."""
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for gname, (hname, arr) in stored.items():
            params[hname].copy_(torch.from_numpy(np.array(arr)).reshape(params[hname].shape))


# ---------------------------------------------------------------------------
# Decision margins (near-ties make goldens fragile for a C reimplementation)
# ---------------------------------------------------------------------------

class Margins:
    """Watches every torch.topk of beam search and its early-stop test, and keeps
    the smallest gap between candidates whose order decides the outcome."""

    def __init__(self, num_beams):
        self.num_beams = num_beams
        self.min_gap = float("inf")

    def note(self, gap):
        self.min_gap = min(self.min_gap, float(gap))

    def __enter__(self):
        self._topk = torch.topk
        self._esh = GenerationMixin._check_early_stop_heuristic
        margins, real_topk, real_esh = self, torch.topk, GenerationMixin._check_early_stop_heuristic

        def topk(input, k, *a, **kw):
            # Only the cut matters: which candidates are in the top k. The first
            # top-k of a step (k = 2 * num_beams) also splits at num_beams: only
            # those may be finalized.
            cuts = (margins.num_beams, k) if k == 2 * margins.num_beams else (k,)
            v = input.detach().double()
            for row in v.reshape(-1, v.shape[-1]):
                s = torch.sort(row, descending=True).values[:k + 1]
                s = s[s > -1e8]  # -1e9 marks masked candidates
                for c in cuts:
                    if c < len(s):
                        margins.note(s[c - 1] - s[c])
            return real_topk(input, k, *a, **kw)

        def esh(is_early_stop_heuristic_unsatisfied, running_beam_scores, beam_scores, is_sent_finished,
                cur_len, max_length, decoder_prompt_len, early_stopping, length_penalty):
            is_unsat = is_early_stop_heuristic_unsatisfied
            if bool(is_sent_finished.all()) and bool(is_unsat.all()):
                if early_stopping == "never" and length_penalty > 0.0:
                    n = max_length - decoder_prompt_len
                else:
                    n = cur_len - decoder_prompt_len
                best = running_beam_scores[:, :1].double() / (n ** length_penalty)
                worst = beam_scores.double().min()
                if best.item() > -1e8:
                    margins.note(abs(best.item() - worst.item()))
            return real_esh(is_unsat, running_beam_scores, beam_scores, is_sent_finished, cur_len,
                            max_length, decoder_prompt_len, early_stopping, length_penalty)

        torch.topk = topk
        GenerationMixin._check_early_stop_heuristic = staticmethod(esh)
        return self

    def __exit__(self, *exc):
        torch.topk = self._topk
        GenerationMixin._check_early_stop_heuristic = staticmethod(self._esh)
        return False


# ---------------------------------------------------------------------------
# Goldens
# ---------------------------------------------------------------------------

def fmt(x):
    return "%.9g" % float(x)


def fmts(a):
    return " ".join(fmt(v) for v in np.asarray(a, dtype=np.float64).reshape(-1))


def strip_start(seq):
    seq = [int(t) for t in seq]
    assert seq[0] == DEC_START, seq
    return seq[1:]


def run_case(model, ids, target):
    """All records of one case, and the smallest decision margin met on the way."""
    inp = torch.tensor([ids], dtype=torch.long)
    out, margin = [], float("inf")
    with torch.no_grad():
        enc = model.encoder(input_ids=inp).last_hidden_state[0].float().numpy()
        out.append(f"enc {enc.shape[0]} {enc.shape[1]} {fmts(enc)}")
        logits = model(input_ids=inp, decoder_input_ids=torch.tensor([[DEC_START]])).logits[0, 0]
        out.append(f"logits {logits.shape[0]} {fmts(logits.float().numpy())}")
        ends = {"greedy": 0, "beam": 0, "plain": None}

        for max_new, min_new, rep in GREEDY:
            r = model.generate(inp, do_sample=False, num_beams=1, max_new_tokens=max_new,
                               min_new_tokens=min_new, repetition_penalty=rep,
                               output_scores=True, return_dict_in_generate=True)
            seq = strip_start(r.sequences[0])
            for s in r.scores:  # processed scores: what argmax saw
                top2 = torch.topk(s[0].double(), 2).values
                margin = min(margin, float(top2[0] - top2[1]))
            assert len(seq) == len(r.scores)
            assert EOS not in seq[:-1] and (seq[-1] == EOS or len(seq) == max_new)
            assert EOS not in seq[:min_new]
            ends["greedy"] += seq[-1] == EOS
            if ends["plain"] is None:
                ends["plain"] = seq[-1] == EOS
            out.append(f"greedy {max_new} {min_new} {fmt(rep)} {len(seq)} {' '.join(map(str, seq))}")

        for nb, lp, es, max_new, min_new in BEAMS:
            with Margins(nb) as m:
                r = model.generate(inp, do_sample=False, num_beams=nb, length_penalty=lp,
                                   early_stopping=es, max_new_tokens=max_new, min_new_tokens=min_new,
                                   output_scores=True, return_dict_in_generate=True)
            margin = min(margin, m.min_gap)
            seq = strip_start(r.sequences[0])
            assert EOS not in seq[:-1] and len(seq) <= max_new
            ends["beam"] += seq[-1] == EOS
            out.append(f"beam {nb} {fmt(lp)} {int(es)} {max_new} {min_new} {len(seq)} "
                       f"{' '.join(map(str, seq))} {fmt(r.sequences_scores[0])}")

        lab = torch.tensor([target], dtype=torch.long)
        lg = model(input_ids=inp, labels=lab).logits[0].double()  # float32 logits, summed in float64
        lp_sum = torch.log_softmax(lg, dim=-1)[torch.arange(len(target)), lab[0]].sum()
        out.append(f"score {len(target)} {' '.join(map(str, target))} {fmt(lp_sum)}")
    return out, margin, ends


def pick_cases(name, model, seed, n_sp):
    """For each of CASE_LENGTHS, random input ids in [3, n_sp) plus eos (seeded by seed,
    case and attempt) whose records have no decision within MIN_GAP of a tie, preferring
    WANT_EOS. Returns the golden lines, eos-ended counts and the smallest margin met."""
    lines, ends, worst = [], {"greedy": 0, "beam": 0}, float("inf")
    for k, n in enumerate(CASE_LENGTHS):
        chosen = None
        for attempt in range(MAX_ATTEMPTS):
            rng = np.random.default_rng([seed, k, attempt])
            ids = [int(t) for t in rng.integers(3, n_sp, size=n)] + [EOS]
            target = [int(t) for t in rng.integers(3, n_sp, size=5)] + [EOS]
            recs, margin, e = run_case(model, ids, target)
            if margin < MIN_GAP:
                continue
            if chosen is None:
                chosen = (ids, recs, margin, e)
            if e["plain"] == WANT_EOS[k]:
                chosen = (ids, recs, margin, e)
                break
        if chosen is None:
            raise SystemExit(f"{name} case {k}: no input without near-ties in {MAX_ATTEMPTS} tries")
        ids, recs, margin, e = chosen
        worst = min(worst, margin)
        lines.append(f"case {k} {len(ids)} {' '.join(map(str, ids))}")
        lines += recs
        ends = {x: ends[x] + e[x] for x in ("greedy", "beam")}
    return lines, ends, worst


def make_fixture(name, seed, spec, type_name, rel_every, n_sp):
    model = build_model(seed, spec, n_sp)
    cfg = model.config
    path = os.path.join(FIX, name + ".gguf")
    size, stored = gw.write_t5_gguf(path, model, SP_MODEL, type_name, extra_pad_tokens=spec["pad"],
                                    rel_bias_every_layer=rel_every, name=name)
    load_stored(model, stored)
    # generate()'s base config: the special ids and nothing else.
    model.generation_config = GenerationConfig(decoder_start_token_id=DEC_START, pad_token_id=PAD,
                                               eos_token_id=EOS)

    lines = [
        f"# {name}: goldens from transformers for {name}.gguf (values as stored in the file)",
        "# generated by tools/make_fixtures.py; rerun: tools/venv.sh && .venv/bin/python tools/make_fixtures.py",
        f"model {name} d_model={cfg.d_model} d_ff={cfg.d_ff} n_enc={cfg.num_layers} "
        f"n_dec={cfg.num_decoder_layers} n_head={cfg.num_heads} d_kv={cfg.d_kv} vocab={cfg.vocab_size} "
        f"gated={int(cfg.is_gated_act)} tied={int(gw.t5_is_tied(model))} type={type_name}",
    ]
    case_lines, ends, worst = pick_cases(name, model, seed, n_sp)
    lines += case_lines
    with open(os.path.join(FIX, name + ".golden"), "w") as f:
        f.write("\n".join(lines) + "\n")
    gsize = os.path.getsize(os.path.join(FIX, name + ".golden"))
    n_g, n_b = len(CASE_LENGTHS) * len(GREEDY), len(CASE_LENGTHS) * len(BEAMS)
    print(f"{name:18s} gguf {size:7d} B  golden {gsize:6d} B  eos-ended: greedy {ends['greedy']}/{n_g}"
          f"  beam {ends['beam']}/{n_b}  min decision margin {worst:.2g}")


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    warnings.filterwarnings("error", category=UserWarning, module="transformers")
    if not os.path.exists(SP_MODEL):
        raise SystemExit(f"missing {SP_MODEL}: run tools/make_tokenizer_fixture.py first")
    n_sp = sp_vocab_size()
    only = set(sys.argv[1:])
    for name, seed, spec, type_name, rel_every in FIXTURES:
        if not only or name in only:
            make_fixture(name, seed, spec, type_name, rel_every, n_sp)


if __name__ == "__main__":
    main()
