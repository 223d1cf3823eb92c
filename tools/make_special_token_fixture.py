#!/usr/bin/env python3
"""Special-token and byte-fallback tokenizer fixtures, made by llama.cpp's own converter,
with goldens from transformers' T5Tokenizer (checked by test/test_tokenizer.c):

  tok_t5_added.gguf  T5 checkpoint with added_tokens.json: the converter writes the
                     <extra_id_N> sentinels as user-defined pieces (type 4, score -1000)
  tok_t5_pad.gguf    the same checkpoint without added_tokens.json: [PADn] unused pieces
                     (type 5) where the sentinels are
  tok_t5_bytes.gguf  a SentencePiece model trained with byte_fallback=True (<0x00>..<0xFF>
                     pieces of type 6), no added_tokens.json
  tok_t5_*.txt       the goldens of each (format below)

Each checkpoint is what a user converts: a tiny random T5ForConditionalGeneration
(vocab 1128 = 1000 SentencePiece pieces + 100 sentinels + 28 padding, as t5 has
32000 + 100 + 28) saved with save_pretrained, its tokenizer saved next to it
(tokenizer.json, tokenizer_config.json), spiece.model copied in (transformers 5.x writes
none) and, for "added", added_tokens.json as older transformers wrote it. It is converted
with `convert_hf_to_gguf.py DIR --outtype f32`, and the fixture keeps the tokenizer.* keys
of the converted file only (the tokenizer is all that is tested; it keeps files small).
The SentencePiece models are trained here on the corpus of make_tokenizer_fixture.py, with
a small custom normalization rule set instead of nmt_nfkc (whose charsmap is 240 kB): the
whitespace characters Unicode knows and the full-width ASCII forms map to ASCII, which is
what matters around special tokens.

Goldens come from T5Tokenizer.from_pretrained(checkpoint folder), transformers 5.24.0
(T5TokenizerFast is the same class there):
  e x<hex of UTF-8 text> N id...          tokenizer(text).input_ids (eos included)
  d N id... x<hex of UTF-8 text>          decode(ids, skip_special_tokens=True)
  D N id... x<hex of UTF-8 text>          decode(ids, skip_special_tokens=False)
Every encode golden is also checked against sentencepiece itself run on the text between
the special tokens (transformers splits those out first, see make_tokenizer_fixture.py's
split_added), so the goldens are the same by either oracle, but for one kind of text:
where normalization makes a special token's spelling (full-width <, >), transformers'
Unigram model matches it as a piece, which sentencepiece has not (the script lists them).
And "<0x41>" typed in the text is a byte piece to transformers' Unigram model but never
to sentencepiece: that golden is sentencepiece's.

Byte fallback: transformers' T5Tokenizer builds its Unigram model with byte_fallback=False
whatever the SentencePiece model says, and decodes byte pieces as their "<0xNN>" text;
sentencepiece is the oracle there. For tok_t5_bytes the "e" goldens come from
T5Tokenizer with its Unigram model rebuilt with byte_fallback=True (equal to the
sentencepiece composition, checked), and the "d"/"D" goldens from transformers' decode
with each run of byte pieces replaced by sentencepiece's decoding of that run. The
script prints where the unpatched T5Tokenizer differs.

Rerun from the repository root (under a minute; deterministic, a rerun gives
byte-identical files):
    tools/venv.sh && .venv/bin/python tools/make_special_token_fixture.py
The converter is looked for in $MMS_LLAMACPP (a llama.cpp tree holding
convert_hf_to_gguf.py and gguf-py/), then in build/llamacpp/ (where
tools/make_converter_fixtures.py unpacks it from the llama-cpp-python sdist).
"""

import collections
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import warnings
import zlib

import sentencepiece as spm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_tokenizer_fixture as mtf  # noqa: E402  (corpus, added-token split)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "test", "fixtures")
CACHE = os.path.join(ROOT, "build", "llamacpp")
LLAMACPP_PY_VERSION = "0.3.36"

N_SP = 1000          # SentencePiece pieces
N_EXTRA = 100        # transformers' default extra_ids
N_VOCAB = 1128       # model vocabulary (padded as t5's 32128)

# ---------------------------------------------------------------------------
# SentencePiece models
# ---------------------------------------------------------------------------

# Unicode White_Space (what transformers' WhitespaceSplit splits on) and the zero-width
# space map to a space; full-width ASCII to ASCII; a ligature and an ideographic stop.
WHITESPACE_CPS = [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x85, 0xA0, 0x1680] + list(range(0x2000, 0x200C)) + \
    [0x2028, 0x2029, 0x202F, 0x205F, 0x3000]


def rules_tsv():
    lines = [f"{cp:04X}\t20" for cp in WHITESPACE_CPS]
    lines += [f"{cp:04X}\t{cp - 0xFF01 + 0x21:02X}" for cp in range(0xFF01, 0xFF5F)]
    lines += ["FB01\t66 69", "FB02\t66 6C", "3002\t2E"]
    return "\n".join(lines) + "\n"


def train(byte_fallback):
    with tempfile.TemporaryDirectory() as td:
        tsv = os.path.join(td, "rules.tsv")
        with open(tsv, "w") as f:
            f.write(rules_tsv())
        out = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(mtf.make_corpus()),
            model_writer=out,
            model_type="unigram",
            vocab_size=N_SP,
            normalization_rule_tsv=tsv,
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
            character_coverage=0.995 if byte_fallback else 0.9995,
            byte_fallback=byte_fallback,
            add_dummy_prefix=True,
            remove_extra_whitespaces=True,
            num_threads=1,
            seed_sentencepiece_size=200000,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            minloglevel=2,
        )
    blob = out.getvalue()
    # the rule file's path is kept in normalizer_spec.normalization_rule_tsv: drop it, so
    # that the bytes do not depend on where the script ran
    from sentencepiece import sentencepiece_model_pb2 as pb
    m = pb.ModelProto()
    m.ParseFromString(blob)
    m.normalizer_spec.normalization_rule_tsv = ""
    return m.SerializeToString()


# ---------------------------------------------------------------------------
# Checkpoints and the converter
# ---------------------------------------------------------------------------

def find_converter():
    """A llama.cpp tree with convert_hf_to_gguf.py and gguf-py/ ($MMS_LLAMACPP or
    build/llamacpp/, as tools/make_converter_fixtures.py fills it)."""
    candidates = [os.environ.get("MMS_LLAMACPP", ""),
                  os.path.join(CACHE, f"llama_cpp_python-{LLAMACPP_PY_VERSION}", "vendor", "llama.cpp")]
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "convert_hf_to_gguf.py")) and \
                os.path.isdir(os.path.join(c, "gguf-py")):
            return c
    sys.exit("llama.cpp's converter not found: set MMS_LLAMACPP to a llama.cpp tree, or run "
             "tools/make_converter_fixtures.py once (it unpacks one into build/llamacpp/)")


def make_checkpoint(d, spiece, with_added):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=N_VOCAB, d_model=8, d_ff=16, num_layers=1, num_decoder_layers=1,
                   num_heads=2, d_kv=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(cfg).save_pretrained(d)
    with open(os.path.join(d, "spiece.model"), "wb") as f:
        f.write(spiece)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        T5Tokenizer.from_pretrained(d).save_pretrained(d)
    if with_added:
        with open(os.path.join(d, "added_tokens.json"), "w") as f:
            json.dump({f"<extra_id_{i}>": N_SP + N_EXTRA - 1 - i for i in range(N_EXTRA)}, f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return T5Tokenizer.from_pretrained(d)


def convert(llamacpp, d, outfile):
    env = dict(os.environ, PYTHONPATH=os.path.join(llamacpp, "gguf-py"))
    r = subprocess.run([sys.executable, os.path.join(llamacpp, "convert_hf_to_gguf.py"), d,
                        "--outtype", "f32", "--outfile", outfile], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"converter failed on {d}:\n{r.stdout}{r.stderr}")


def copy_tokenizer_keys(src, dst):
    """A GGUF holding the tokenizer.* keys of src, in src's order and types."""
    import gguf
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, "t5")
    for key, f in r.fields.items():
        if not key.startswith("tokenizer."):
            continue
        t = f.types[0]
        if t == gguf.GGUFValueType.ARRAY:
            sub = f.types[1]
            if sub == gguf.GGUFValueType.STRING:
                vals = [bytes(f.parts[i]) for i in f.data]
            else:
                vals = [f.parts[i][0].item() for i in f.data]
            w.add_key_value(key, vals, t, sub_type=sub)
        elif t == gguf.GGUFValueType.STRING:
            w.add_key_value(key, bytes(f.parts[f.data[0]]).decode("utf-8"), t)
        else:
            w.add_key_value(key, f.parts[f.data[0]][0].item(), t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return r


# ---------------------------------------------------------------------------
# Test inputs
# ---------------------------------------------------------------------------

FIXED = [
    "", " ", "   ", "\t\n", "Hello world", "The quick brown fox", "  many   spaces  inside  ",
    # sentinels: alone, spaced, glued, in a row, at the start and the end
    "<extra_id_0>", " <extra_id_1> ", "a<extra_id_2>b", "<extra_id_0><extra_id_1>",
    "<extra_id_0> <extra_id_1>", "<extra_id_0>  <extra_id_1>   <extra_id_2>",
    "The <extra_id_0> walks in <extra_id_1> park", "The<extra_id_0>walks", "<extra_id_99>",
    "<extra_id_5>end", "start<extra_id_7>", "<extra_id_12><extra_id_12><extra_id_12>",
    "a <extra_id_15>b", "a<extra_id_16> b", "  <extra_id_13>  <extra_id_14>  ",
    # near misses: not sentinels
    "<extra_id_100>", "<extra_id_00>", "<extra_id_-1>", "<EXTRA_ID_0>", "<extra_id_0", "extra_id_0>",
    "<extra_id_ 0>", "<<extra_id_3>>", "<extra<extra_id_4>", "[PAD1100]", "[PAD1050]", "[PAD1127]x",
    # normalization around special tokens
    "\u3000<extra_id_8>\u3000x", "\t<extra_id_9>\n", "<extra_id_10>\u00a0x", "x\u200b<extra_id_11>",
    "\uff1cextra_id_4\uff1e", "x\uff1c/s\uff1e", "\uff1cpad\uff1e", "\u2003</s>\u2003",
    # </s>, <pad>, <unk> typed in the text
    "</s>", "<pad>", "<unk>", "x </s> y", "<pad>x<unk>", "</s></s>", "<pad><extra_id_0></s>",
    "</s>x", "text</s>", "< /s>", "</S>", "<s>", "<unk><unk>", "Ж<unk>Ж", "</s> <pad> <unk>",
    # characters outside the vocabulary (byte fallback or <unk>), emoji, CJK
    "Ж", "ЖЖЖ", "Ж Ж", "a\u05d0b", "αβγδ", "\U0001d400\U0001d401", "\U0001F9EC", "龘", "a龘b",
    "<extra_id_0>龘", "龘<extra_id_1>", "😀<extra_id_0>東京", "東京 </s> 大阪", "👨‍👩‍👧 <extra_id_1>",
    "café naïve", "\U0001F600\U0001F600", "ｔｅｓｔ ＡＢＣ", "ﬁnd ﬂow", "日本語。", "<0x41>", "<0xE2>x",
    "a\u2581b",
]


def random_inputs(rng, n):
    words = mtf.ENGLISH + mtf.CJK[:6] + mtf.ACCENTED[:8] + ["Ж", "龘", "😀", "αβ", "\u05d0"]
    specials = ["<extra_id_0>", "<extra_id_1>", "<extra_id_42>", "<extra_id_99>", "</s>", "<pad>", "<unk>"]
    seps = ["", " ", "  ", "\t", "\u3000", "\n "]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 8)):
            parts.append(rng.choice(specials) if rng.random() < 0.35 else rng.choice(words))
            parts.append(rng.choice(seps))
        out.append("".join(parts))
    return out


# ---------------------------------------------------------------------------
# Goldens
# ---------------------------------------------------------------------------

def hexs(s):
    return "x" + s.encode("utf-8").hex()


def sp_composition(sp, text, added):
    """sentencepiece on each stretch of text between the special tokens, as transformers
    splits them out (make_tokenizer_fixture.split_added)."""
    ids = []
    for seg, tid in mtf.split_added(text, added):
        ids += [tid] if tid is not None else sp.encode(seg)
    return ids + [1]


def byte_runs_decoded(tok, sp, ids, skip):
    """transformers' decode, each run of byte pieces replaced by sentencepiece's decoding
    of the run (T5Tokenizer prints byte pieces as their "<0xNN>" text). A U+2581 made of
    bytes stays U+2581, as in sentencepiece: it is not a piece's space."""
    from tokenizers import decoders
    special = {i for i, t in tok._tokenizer.get_added_tokens_decoder().items() if t.special}
    hold = "\uE000"  # stands for U+2581 from bytes while transformers' decoder runs
    toks = []
    run = []
    for i in ids + [None]:
        if i is not None and i < N_SP and sp.is_byte(i):
            run.append(i)
            continue
        if run:
            toks.append(sp.decode(run).replace("\u2581", hold))
            run = []
        if i is None:
            break
        if i >= len(tok) or (skip and i in special):
            continue
        toks.append(tok.convert_ids_to_tokens(i))
    text = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True).decode(toks)
    return text.replace(hold, "\u2581")


def decode_cases(rng, tok, sp, enc_ids, byte_fallback):
    cases = [ids for ids in enc_ids]
    sentinel = N_SP + N_EXTRA - 1
    sp_ids = [i for i in range(3, N_SP) if not sp.is_byte(i)]
    space = sp.piece_to_id("\u2581")
    cases += [[], [0], [1], [2], [sentinel], [sentinel, space, 10], [space, space, 10], [space, 10, space],
              [0, 0, space, 10, 1, 1], [2, 2, 2], [sentinel - 5, sentinel - 6], [N_SP + N_EXTRA],
              [10, N_SP + N_EXTRA + 3, 11], [N_VOCAB - 1], [space], [space, sentinel, space]]
    if byte_fallback:
        b = lambda v: sp.piece_to_id(f"<0x{v:02X}>")  # noqa: E731
        runs = [[0xE2, 0x82, 0xAC], [0xF0, 0x9F, 0x98, 0x80], [0x41], [0xE2, 0x82], [0x80], [0xFF, 0x41],
                [0xC3], [0xC3, 0xA9, 0xC3], [0xED, 0xA0, 0x80], [0xF0, 0x9F, 0x98], [0xE2, 0x96, 0x81]]
        for r in runs:
            cases.append([b(v) for v in r])
            cases.append([space, 10] + [b(v) for v in r] + [11])
            cases.append([sentinel] + [b(v) for v in r] + [2, b(0x41)])
    for _ in range(60):
        k = rng.randint(1, 10)
        cases.append([rng.choice([0, 1, 2, sentinel, sentinel - 7, space]) if rng.random() < 0.35
                      else rng.choice(sp_ids) for _ in range(k)])
    lines = []
    for ids in cases:
        for skip, tag in ((True, "d"), (False, "D")):
            if byte_fallback:
                text = byte_runs_decoded(tok, sp, ids, skip)
            else:
                text = tok.decode(ids, skip_special_tokens=skip)
            lines.append(f"{tag} {len(ids)} {' '.join(map(str, ids))} {hexs(text)}".replace("  ", " "))
    return lines


def unigram_with_byte_fallback(tok):
    """T5Tokenizer with its Unigram model rebuilt with byte_fallback=True."""
    from tokenizers.models import Unigram
    import copy
    t = copy.deepcopy(tok)
    vocab = json.loads(t._tokenizer.to_str())["model"]["vocab"]
    t._tokenizer.model = Unigram([tuple(v) for v in vocab], unk_id=2, byte_fallback=True)
    return t


def write_goldens(name, tok, sp, byte_fallback):
    rng = random.Random(zlib.crc32(name.encode()))
    texts = FIXED + random_inputs(rng, 40)
    added = mtf.added_tokens_of(tok)
    ref = unigram_with_byte_fallback(tok) if byte_fallback else tok
    lines = [f"# {name}: goldens from transformers {__import__('transformers').__version__} T5Tokenizer "
             f"for {name}.gguf; made by tools/make_special_token_fixture.py"]
    enc = []
    differ = []
    for text in texts:
        ids = ref(text).input_ids
        comp = sp_composition(sp, text, added)
        if ids != comp:
            # one known difference: text that normalizes to a special token's spelling
            # (full-width brackets) gives its id, as the token is a piece of transformers'
            # Unigram model too; sentencepiece knows no such piece
            extra = set(collections.Counter(ids) - collections.Counter(comp))
            if byte_fallback and extra and all(i < N_SP and sp.is_byte(i) for i in extra):
                # the other: "<0x41>" typed in the text is the byte piece's spelling, a
                # piece to transformers' Unigram model; sentencepiece never matches byte
                # pieces against text, and is the oracle for byte pieces
                print(f"  {text!r}: transformers matches byte pieces' spelling: {ids}; "
                      f"golden from sentencepiece: {comp}")
                ids = comp
            elif extra and extra <= set(added.values()):
                print(f"  {text!r}: transformers matches a special token after normalization: {ids}")
            else:
                sys.exit(f"{name}: transformers and sentencepiece disagree on {text!r}:\n  {ids}\n  {comp}")
        if byte_fallback and tok(text).input_ids != ids:
            differ.append(text)
        enc.append(ids)
        lines.append(f"e {hexs(text)} {len(ids)} {' '.join(map(str, ids))}")
    lines += decode_cases(rng, tok, sp, enc, byte_fallback)
    with open(os.path.join(FIX, name + ".txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{name}: {len(texts)} encode and {len(lines) - 1 - len(texts)} decode goldens")
    if differ:
        print(f"  T5Tokenizer as shipped (byte_fallback=False) differs on {len(differ)} of them, e.g. "
              f"{differ[0]!r}: {tok(differ[0]).input_ids} vs {ref(differ[0]).input_ids}")


def check_gguf(name, reader, with_added, byte_fallback):
    """What the converter wrote is what the engine relies on."""
    f = reader.fields
    tokens = [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode() for i in f["tokenizer.ggml.tokens"].data]
    types = [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data]
    scores = [float(f["tokenizer.ggml.scores"].parts[i][0]) for i in f["tokenizer.ggml.scores"].data]
    assert len(tokens) == N_VOCAB, len(tokens)
    for i in range(N_EXTRA):
        j = N_SP + N_EXTRA - 1 - i
        if with_added:
            assert (tokens[j], types[j], scores[j]) == (f"<extra_id_{i}>", 4, -1000.0), (j, tokens[j])
        else:
            assert (tokens[j], types[j]) == (f"[PAD{j}]", 5), (j, tokens[j])
    assert all(tokens[j] == f"[PAD{j}]" and types[j] == 5 for j in range(N_SP + N_EXTRA, N_VOCAB))
    assert (types.count(6) == 256) == byte_fallback
    print(f"{name}: {len(tokens)} pieces, types {sorted(set(types))}, "
          f"sentinels {'<extra_id_N> (4)' if with_added else '[PADn] (5)'}")


def main():
    from gguf import GGUFReader  # noqa: F401  (fail early if missing)

    llamacpp = find_converter()
    plain = train(False)
    bytes_model = train(True)
    work = os.path.join(CACHE, "special_tokens")
    os.makedirs(work, exist_ok=True)
    for name, blob, with_added, byte_fallback in (("tok_t5_added", plain, True, False),
                                                  ("tok_t5_pad", plain, False, False),
                                                  ("tok_t5_bytes", bytes_model, False, True)):
        d = os.path.join(work, name)
        tok = make_checkpoint(d, blob, with_added)
        full = os.path.join(work, name + ".full.gguf")
        convert(llamacpp, d, full)
        reader = copy_tokenizer_keys(full, os.path.join(FIX, name + ".gguf"))
        check_gguf(name, reader, with_added, byte_fallback)
        sp = spm.SentencePieceProcessor(model_proto=blob)
        assert sp.get_piece_size() == N_SP
        write_goldens(name, tok, sp, byte_fallback)


if __name__ == "__main__":
    main()
