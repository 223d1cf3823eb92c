#!/usr/bin/env python3
"""Builds the tokenizer fixtures: a small SentencePiece unigram model with a real
nmt_nfkc charsmap (test/fixtures/tok_nfkc.model), the same vocab as a
tokenizer-only GGUF laid out as llama.cpp writes T5 (test/fixtures/tok_nfkc.gguf),
and encode/decode expectations (test/fixtures/tok_cases.txt); also the seeds of
test/fuzz/fuzz_tokenizer.c (test/fuzz/corpus_tokenizer/).

Encode expectations are sentencepiece's own ids, except that the special and added
tokens (control, unknown and user-defined pieces: <pad>, </s>, <unk>, <sep>, SELECT)
typed in the text are split out first, as transformers' T5Tokenizer does: each stretch
of text between them is encoded by sentencepiece on its own (split_added). Decode
expectations are transformers' decode(ids, skip_special_tokens=True) ("d" lines) and
=False ("D" lines). The script prints how many encode cases transformers itself agrees
with, and on what kinds of text it does not (see docs: plain-text differences between
transformers 5.24's T5Tokenizer and sentencepiece).

Rerun from the repository root:   .venv/bin/python tools/make_tokenizer_fixture.py
Everything is deterministic (seeded corpus, single-threaded training), so a rerun
gives byte-identical files.
"""

import io
import os
import random
import sys

import numpy as np
import sentencepiece as spm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "test", "fixtures")
SEEDS = os.path.join(ROOT, "test", "fuzz", "corpus_tokenizer")
MODEL = os.path.join(FIX, "tok_nfkc.model")
GGUF = os.path.join(FIX, "tok_nfkc.gguf")
CASES = os.path.join(FIX, "tok_cases.txt")

USER_SYMBOLS = ["<sep>", "SELECT"]

# ---------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------

SYLLABLES = ["ka", "to", "ri", "men", "sa", "lo", "tra", "in", "ex", "pre", "con",
             "ing", "tion", "er", "ed", "ly", "the", "and", "st", "ch", "qu", "ou",
             "ar", "el", "om", "un", "dis", "ph", "th", "wh", "sh", "ab", "ic", "al"]
ENGLISH = ("the quick brown fox jumps over the lazy dog while database tables store rows "
           "of text and numbers select insert update delete from where group order by "
           "model inference engine token vocabulary sentence piece unigram language "
           "postgres extension shared memory worker batch decode encode summary "
           "translate question answer weather today tomorrow yesterday city river "
           "mountain people children house water coffee music film book library").split()
ACCENTED = ("café naïve résumé façade über Müller Straße größer años niño señor "
            "corazón canción São João ação coração crème brûlée déjà vu Zürich "
            "Kraków Łódź żółć čeština Dvořák smørrebrød Ærø Ångström fjörður "
            "ça être élève où à garçon mañana pingüino").split()
CJK = ("東京 大阪 日本語 中文 汉字 漢字 学生 先生 天気 今日 明日 電車 会社 "
       "北京 上海 你好 世界 谢谢 한국어 서울 안녕하세요 ひらがな カタカナ "
       "こんにちは ありがとう データベース 検索 東京都 新宿").split()
FULLWIDTH = ["ＡＢＣ", "ｔｅｓｔ", "１２３", "（注）", "！？", "ｶﾀｶﾅ", "ＳＱＬ", "％", "＃１"]
LIGATURES = ["ﬁnd", "ﬂow", "oﬃce", "ﬀ", "baﬄe", "ﬁle", "ﬂag", "Ⅻ", "½", "²", "™", "㎞", "①"]
EMOJI = ["😀", "👍", "🎉", "❤️", "🚀", "🙂", "🇫🇷", "👨‍👩‍👧", "☕", "✓"]
PUNCT = list(".,;:!?'\"()-[]{}/&@#%*+=<>|~^$") + ["...", "--", "—", "–", "«", "»", "“", "”", "‘", "’"]


def rand_word(rng):
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))


def rand_date(rng):
    y, m, d = rng.randint(1900, 2099), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice([f"{y}-{m:02d}-{d:02d}", f"{d}/{m}/{y}", f"{y}年{m}月{d}日",
                       f"{d}.{m}.{y}", f"{m:02d}:{d:02d}"])


def corpus_line(rng):
    parts = []
    for _ in range(rng.randint(3, 18)):
        r = rng.random()
        if r < 0.40:
            w = rng.choice(ENGLISH)
            parts.append(w.capitalize() if rng.random() < 0.15 else w)
        elif r < 0.55:
            parts.append(rand_word(rng))
        elif r < 0.65:
            parts.append(rng.choice(ACCENTED))
        elif r < 0.73:
            parts.append(rng.choice(CJK))
        elif r < 0.76:
            parts.append(rng.choice(FULLWIDTH))
        elif r < 0.79:
            parts.append(rng.choice(LIGATURES))
        elif r < 0.81:
            parts.append(rng.choice(EMOJI))
        elif r < 0.87:
            parts.append(str(rng.randint(0, 100000)))
        elif r < 0.90:
            parts.append(rand_date(rng))
        else:
            parts.append(rng.choice(PUNCT))
    return " ".join(parts)


def make_corpus():
    rng = random.Random(20240601)
    lines = [corpus_line(rng) for _ in range(30000)]
    # A sprinkling of rare characters, so that character_coverage drops
    # them to <unk> instead of every one earning a piece.
    rare = [chr(c) for c in range(0x0400, 0x0430)] + [chr(c) for c in range(0x05D0, 0x05EB)]
    lines += [f"rare {ch} glyph {i}" for i, ch in enumerate(rare)]
    return lines


def train(lines):
    # Iterator in, bytes out: no file names end up in the trainer_spec, so the
    # model bytes do not depend on where the script ran.
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        model_type="unigram",
        vocab_size=1000,
        normalization_rule_name="nmt_nfkc",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        user_defined_symbols=USER_SYMBOLS,
        character_coverage=0.9995,
        byte_fallback=False,
        add_dummy_prefix=True,
        remove_extra_whitespaces=True,
        num_threads=1,
        seed_sentencepiece_size=200000,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return out.getvalue()


def build_model():
    os.makedirs(FIX, exist_ok=True)
    blob = train(make_corpus())
    with open(MODEL, "wb") as f:
        f.write(blob)
    return blob


# ---------------------------------------------------------------------------
# The model proto, read by hand: the converter reads it with protobuf, which
# this venv does not carry, and we need only a few fields.
#   ModelProto: 1 pieces (repeated), 3 normalizer_spec
#   SentencePiece: 1 piece, 2 score (float), 3 type (default NORMAL = 1)
#   NormalizerSpec: 2 precompiled_charsmap, 3 add_dummy_prefix,
#                   4 remove_extra_whitespaces (both default true)
# ---------------------------------------------------------------------------

def _varint(buf, pos):
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf):
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
        yield num, wire, val


def read_model_proto(blob):
    pieces = []
    norm = {"charsmap": b"", "add_dummy_prefix": True, "remove_extra_whitespaces": True}
    for num, _, val in _fields(blob):
        if num == 1:
            piece, score, typ = b"", 0.0, 1
            for n2, _, v2 in _fields(val):
                if n2 == 1:
                    piece = bytes(v2)
                elif n2 == 2:
                    score = float(np.frombuffer(v2, dtype="<f4")[0])
                elif n2 == 3:
                    typ = v2
            pieces.append((piece, score, typ))
        elif num == 3:
            for n2, _, v2 in _fields(val):
                if n2 == 2:
                    norm["charsmap"] = bytes(v2)
                elif n2 == 3:
                    norm["add_dummy_prefix"] = bool(v2)
                elif n2 == 4:
                    norm["remove_extra_whitespaces"] = bool(v2)
    return pieces, norm


# ---------------------------------------------------------------------------
# GGUF: the keys llama.cpp's convert_hf_to_gguf.py (T5Model.set_vocab) writes.
# One deliberate difference: the converter asks sentencepiece only for
# unknown/control/unused/byte, so user-defined pieces land as NORMAL (1); we
# write the proto's own type (4) so the fixture exercises that path, which
# llama.cpp's reader handles and GGUFs built from added_tokens.json contain.
# ---------------------------------------------------------------------------

def write_gguf(sp):
    import gguf

    with open(MODEL, "rb") as f:
        pieces, norm = read_model_proto(f.read())
    assert len(pieces) == sp.get_piece_size()
    for i, (piece, score, typ) in enumerate(pieces):
        assert piece.decode("utf-8") == sp.id_to_piece(i)
        assert np.float32(score) == np.float32(sp.get_score(i))
        assert (typ == 2) == sp.is_unknown(i) and (typ == 3) == sp.is_control(i)
    assert norm["charsmap"], "nmt_nfkc must give a precompiled charsmap"

    w = gguf.GGUFWriter(GGUF, "t5")
    w.add_tokenizer_model("t5")
    w.add_tokenizer_pre("default")
    w.add_token_list([p for p, _, _ in pieces])
    w.add_token_scores([float(np.float32(s)) for _, s, _ in pieces])
    w.add_token_types([int(t) for _, _, t in pieces])
    w.add_add_space_prefix(norm["add_dummy_prefix"])
    w.add_remove_extra_whitespaces(norm["remove_extra_whitespaces"])
    w.add_precompiled_charsmap(norm["charsmap"])
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_pad_token_id(sp.pad_id())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---------------------------------------------------------------------------
# Test strings
# ---------------------------------------------------------------------------

UNSEEN = ("αβγδ Ελληνικά ñ Привет мир שלום עולם مرحبا नमस्ते สวัสดี 龘 齉 ⻆ "
          "\U0001F9EC \U0001F9A9 \uE000\uE001 \U00010348 ⨀ ⌬ ☃ ♞ ᚠᚢᚦ ꙮ").split()
WHITESPACE = [" ", "  ", "   ", "\t", "\n", "\r\n", "\u3000", "\u00a0", "\u2002", "\u2009",
              "\u200b", "\u200c", "\u200d", "\ufeff", "\u2028", "\u0085", "\x0b", "\x0c", " \t "]
CONTROL = [chr(c) for c in list(range(0, 32)) + [0x7f] + list(range(0x80, 0xa0))]
COMBINING = ["e\u0301", "a\u0308", "o\u0302\u0323", "n\u0303", "\u0301", "c\u0327",
             "A\u030a", "i\u0307\u0308", "\u0308\u0308\u0308"]
ODD = ["ＳＥＬＥＣＴ", "sel<sep>ect", "SELECTION", "xSELECTx", "<sep><sep>", "<se p>", "<SEP>",
       "Ⅻ", "㍻", "㌔", "ﾊﾟ", "ｶﾞ", "ℌ", "𝐀𝐁𝐂", "①②③", "¼", "™", "…", "‥", "ﬃ", "ﬆ", "Å", "K", "Ω",
       "\u2581", "\u2581\u2581", "a\u2581b", "\ufffd", "\U0001F600\u200d\U0001F4BB"]


def _pick(rng, seq):
    return seq[rng.randrange(len(seq))]


def random_text(rng):
    pools = [
        lambda: _pick(rng, ENGLISH),
        lambda: rand_word(rng),
        lambda: _pick(rng, ACCENTED),
        lambda: _pick(rng, CJK),
        lambda: _pick(rng, FULLWIDTH),
        lambda: _pick(rng, LIGATURES),
        lambda: _pick(rng, EMOJI),
        lambda: str(rng.randint(0, 10 ** rng.randint(1, 9))),
        lambda: rand_date(rng),
        lambda: _pick(rng, PUNCT),
        lambda: _pick(rng, UNSEEN),
        lambda: _pick(rng, COMBINING),
        lambda: _pick(rng, ODD),
        lambda: _pick(rng, USER_SYMBOLS),
        lambda: _pick(rng, CONTROL),
        lambda: "".join(chr(rng.randint(0x20, 0x2FFFF)) for _ in range(rng.randint(1, 4))),
    ]
    weights = [20, 10, 6, 6, 3, 3, 3, 4, 2, 5, 4, 2, 3, 2, 1, 2]
    out = []
    for _ in range(rng.randint(1, 14)):
        tok = rng.choices(pools, weights)[0]()
        if tok and 0xD800 <= ord(tok[0]) <= 0xDFFF:  # not encodable; skip
            continue
        out.append(tok)
        out.append(_pick(rng, WHITESPACE) if rng.random() < 0.25 else " " if rng.random() < 0.8 else "")
    s = "".join(out)
    if rng.random() < 0.2:
        s = _pick(rng, WHITESPACE) * rng.randint(1, 3) + s
    if rng.random() < 0.2:
        s = s + _pick(rng, WHITESPACE) * rng.randint(1, 3)
    return s


def no_surrogates(s):
    return "".join(c for c in s if not 0xD800 <= ord(c) <= 0xDFFF)


def make_cases():
    rng = random.Random(7)
    cases = [b""]
    fixed = ["a", " ", "  ", "\t", "\n", " \t\n ", "\u3000", "\u3000a\u3000", " leading", "trailing ",
             "  both  ", "many     spaces   inside", "tab\tsep", "line\nbreak", "SELECT", "SELECTED",
             "<sep>", "a<sep>b", "xSELECTy<sep>z", "ＳＥＬＥＣＴ", "ﬁﬂ", "😀", "😀😀😀", "Ж", "ЖЖЖ",
             "Ж Ж", "ЖaЖ", "\u200b", "\u200bx", "x\u200b", "\x00", "a\x00b", "\x7f", "\u0085",
             "\u00a8", "\u00a8abc", " \u00a8", "\u2581", "\u2581\u2581", "\u2581 a", "abc\u2581",
             "café", "cafe\u0301", "東京", "ｶﾀｶﾅ", "Ⅻ", "½", "㎞", "2024-06-01", "12:30", "$100.00"]
    cases += [s.encode("utf-8") for s in fixed]
    for ch in CONTROL + WHITESPACE + COMBINING + ODD + UNSEEN:
        cases.append(ch.encode("utf-8"))
        cases.append(("a" + ch + "b").encode("utf-8"))
    # invalid UTF-8: sentencepiece maps each bad byte to U+FFFD
    bad = [b"\xff", b"\xfe\xff", b"\x80", b"\xbf", b"a\x80b", b"\xc3", b"a\xc3", b"\xc3(",
           b"\xe2\x82", b"\xe2\x82x", b"\xf0\x9f\x98", b"\xf0\x9f\x98 ok", b"\xc0\xaf",
           b"\xc1\xbf", b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf",
           b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80",
           b" \xff ", b"\xff\xff\xff", b"SELECT\xff<sep>", b"\xef\xbf\xbd", b"\xef\xbf\xbe"]
    cases += bad
    for _ in range(300):
        n = rng.randint(1, 12)
        cases.append(bytes(rng.randint(0, 255) for _ in range(n)))
    # long words and long inputs
    for _ in range(60):
        w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(200, 600)))
        cases.append(w.encode())
    for _ in range(30):
        w = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(80, 200)))
        cases.append(w.encode())
    for _ in range(20):
        w = "".join(rng.choice(CJK) for _ in range(rng.randint(70, 150)))
        cases.append(w.encode())
    for _ in range(20):
        cases.append(("Ж" * rng.randint(1, 300)).encode())
        cases.append(("SELECT" * rng.randint(1, 60)).encode())
    for _ in range(20):
        cases.append(" ".join(corpus_line(rng) for _ in range(rng.randint(5, 30))).encode())
    # only whitespace
    for _ in range(100):
        cases.append("".join(_pick(rng, WHITESPACE) for _ in range(rng.randint(1, 8))).encode())
    while len(cases) < 11000:
        cases.append(no_surrogates(random_text(rng)).encode("utf-8"))
    return cases


def added_tokens_of_sp(model_blob):
    """The pieces split out of the text before SentencePiece runs: control (3), unknown
    (2) and user-defined (4) pieces, as the engine reads them from the GGUF token types."""
    pieces, _ = read_model_proto(model_blob)
    return {p.decode("utf-8"): i for i, (p, _, t) in enumerate(pieces) if t in (2, 3, 4)}


def added_tokens_of(tok):
    """transformers' added tokens (special or not), content -> id."""
    return {t.content: i for i, t in tok._tokenizer.get_added_tokens_decoder().items()}


def split_added(text, added):
    """transformers' split of text (str or bytes) on its added tokens: leftmost match,
    longest at that position; yields (stretch, None) and (token, id). None of T5's
    added tokens strips the whitespace next to it (lstrip/rstrip false), and all are
    matched on the raw text (normalized false)."""
    enc = isinstance(text, bytes)
    keys = {(k.encode("utf-8") if enc else k): v for k, v in added.items()}
    lens = sorted({len(k) for k in keys}, reverse=True)
    start = i = 0
    while i < len(text):
        hit = next((n for n in lens if text[i:i + n] in keys), 0)
        if hit:
            if i > start:
                yield text[start:i], None
            yield text[i:i + hit], keys[text[i:i + hit]]
            i += hit
            start = i
        else:
            i += 1
    if start < len(text):
        yield text[start:], None


def encode_split(sp, text, added):
    ids = []
    for seg, tid in split_added(text, added):
        ids += [tid] if tid is not None else sp.encode(seg, out_type=int)
    return ids


def hf_tokenizer(model_path):
    """transformers' T5Tokenizer for a SentencePiece model, loaded as from a checkpoint."""
    import shutil
    import tempfile
    import warnings
    from transformers import T5Tokenizer

    with tempfile.TemporaryDirectory() as td:
        shutil.copyfile(model_path, os.path.join(td, "spiece.model"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return T5Tokenizer.from_pretrained(td)


def write_cases(sp):
    rng = random.Random(11)
    cases = make_cases()
    with open(MODEL, "rb") as f:
        added = added_tokens_of_sp(f.read())
    hf = hf_tokenizer(MODEL)
    assert {k: v for k, v in added_tokens_of(hf).items() if v < sp.get_piece_size()} == added
    lines = []
    enc = []
    n_valid = n_agree = 0
    disagree = []
    for b in cases:
        ids = encode_split(sp, b, added)
        enc.append(ids)
        full = ids + [sp.eos_id()]
        lines.append("x" + b.hex() + " " + " ".join(str(i) for i in [len(full)] + full))
        try:
            text = b.decode("utf-8")
        except UnicodeDecodeError:
            continue
        n_valid += 1
        if hf(text).input_ids == full:
            n_agree += 1
        else:
            disagree.append(text)
    # decode expectations: encodings of test strings, and random id runs that
    # mix control, unknown, user-defined and "▁"-led pieces
    dec = [ids for ids in enc[:: max(1, len(enc) // 700)]]
    n = sp.get_piece_size()
    for _ in range(400):
        k = rng.randint(0, 12)
        dec.append([rng.choice([0, 1, 2, 3, 4, 5]) if rng.random() < 0.3 else rng.randrange(n) for _ in range(k)])
    for ids in dec:
        for tag, skip in (("d", True), ("D", False)):
            text = hf.decode(ids, skip_special_tokens=skip)
            lines.append(tag + " " + " ".join(str(i) for i in [len(ids)] + ids) + " x" + text.encode("utf-8").hex())
    with open(CASES, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{len(cases)} encode cases, {len(dec)} x 2 decode cases")
    print(f"transformers' T5Tokenizer agrees on {n_agree} of the {n_valid} valid UTF-8 encode cases; "
          f"the others hold {sum(chr(0x85) in t for t in disagree)} with U+0085 (whitespace to "
          f"transformers only), e.g. {disagree[:3]!r}")


# ---------------------------------------------------------------------------
# Fuzz seeds (test/fuzz/fuzz_tokenizer.c): first byte picks the mode (mod 4),
# 0 = encode text, 1 = the rest is a precompiled_charsmap, 2 = decode ids,
# 3 = encode text with test/fixtures/tok_t5_bytes.gguf (byte fallback, sentinels).
# ---------------------------------------------------------------------------

def tiny_charsmap():
    """A real, small charsmap: sentencepiece compiles a few custom rules."""
    import tempfile
    rules = "41\t61\n42\t62\n66 69\t46 49\n3000\t20\n200B\t\nFF21\t41\n2581\t20 20\n"
    with tempfile.TemporaryDirectory() as td:
        tsv = os.path.join(td, "rules.tsv")
        with open(tsv, "w") as f:
            f.write(rules)
        out = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(["hello world abc", "AB fi"] * 50), model_writer=out,
            model_type="char", vocab_size=20, normalization_rule_tsv=tsv,
            hard_vocab_limit=False, num_threads=1, minloglevel=2)
    return read_model_proto(out.getvalue())[1]["charsmap"]


def write_fuzz_seeds():
    os.makedirs(SEEDS, exist_ok=True)
    ids = [5, 15, 16, 2, 2, 0, 1, 3, 4, 999, 7]
    seeds = {
        "enc_ascii": b"\x00" + b"Hello world, SELECT<sep> 2024-06-01  ",
        "enc_unicode": b"\x04" + "ＡＢＣ ﬁﬂ 東京 😀 café\u3000x\u200b Ж".encode(),
        "enc_invalid": b"\x00" + b"\xff\xc3(\xe2\x82 \xf0\x9f \xed\xa0\x80",
        "cmap_tiny": b"\x01" + tiny_charsmap(),
        "dec_ids": b"\x02" + b"".join(i.to_bytes(2, "little") for i in ids),
        "enc_special": b"\x00" + "a <pad>x</s> <unk><sep>SELECTION ＜/s＞ <se".encode(),
        "bytes_special": b"\x07" + "The <extra_id_0> Ж龘 <extra_id_99></s>😀 <0x41> ＜extra_id_1＞".encode(),
        "dec_sentinels": b"\x02" + b"".join(i.to_bytes(2, "little") for i in
                                             [1099, 5, 3 + 0xE2, 3 + 0x82, 3 + 0xAC, 0, 1050, 1127, 2, 300]),
    }
    for name, data in seeds.items():
        with open(os.path.join(SEEDS, name), "wb") as f:
            f.write(data)


def main():
    build_model()
    sp = spm.SentencePieceProcessor(model_file=MODEL)
    assert sp.get_piece_size() == 1000, sp.get_piece_size()
    if "--model-only" in sys.argv:
        return
    write_gguf(sp)
    write_cases(sp)
    write_fuzz_seeds()


if __name__ == "__main__":
    main()
