#!/usr/bin/env python3
"""t_tokenize_cli.py — mms_tokenize in SQL gives the same ids as the engine's
CLI (`build/mms-run --model F --tokenize TEXT`) for every fixture model, on
hand-written inputs and on the inputs of test/fixtures/tok_cases.txt (those a
PostgreSQL text value can hold: valid UTF-8 without NUL). Prints one
"ok: ..." or "FAILED: ..." line per model.

Run by test/pg/run.sh (PGHOST/PGPORT/PGUSER point at its cluster,
MMS_TEST_DATA holds the fixtures). Standard library only.
"""

import os
import subprocess
import sys

ROOT = os.environ.get("MMS_ROOT") or os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
DATA = os.environ["MMS_TEST_DATA"]
MODELS = ["t5_relu_tied", "flan_gated", "depth_3_1", "inner_48", "flan_gated_f16",
          "flan_gated_bf16", "flan_gated_q8_0", "flan_gated_q4_0"]
MAX_CASES = 1500      # of tok_cases.txt; keeps argv well under the kernel limit
DB = "mms_tokenize_cli"

HANDWRITTEN = [
    "Hello world, this is a test.", "", " ", "   leading", "trailing   ",
    "  many   spaces  inside  ", "tab\tand\nnewline", "ｆｕｌｌｗｉｄｔｈ", "① ② ③", "ﬁ ﬂ",
    "café cafe\u0301", "東京", "Привет мир", "😀😀", "SELECT<sep>x", "</s><unk><pad>",
    "$100.00 on 2024-06-01 at 12:30", "a" * 500,
]


def inputs():
    cases = list(HANDWRITTEN)
    with open(os.path.join(ROOT, "test", "fixtures", "tok_cases.txt"), "rb") as f:
        for line in f:
            word = line.split(None, 1)[0] if line.strip() else b""
            if not word.startswith(b"x"):
                continue
            raw = bytes.fromhex(word[1:].decode())
            if b"\0" in raw:
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if len(raw) > 300 or text in cases:
                continue
            cases.append(text)
            if len(cases) >= MAX_CASES + len(HANDWRITTEN):
                break
    return cases


def psql(sql, db=DB):
    r = subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", db],
                       input=sql.encode(), capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.decode(errors="replace"))
    return r.stdout.decode()


def main():
    cases = inputs()
    failed = 0
    subprocess.run(["dropdb", "--if-exists", DB], check=True, stderr=subprocess.DEVNULL)
    subprocess.run(["createdb", DB], check=True)
    try:
        psql("CREATE EXTENSION mms;")
        # inputs travel as hex so that no text is ever spliced into SQL
        values = ",\n".join("(%d, '%s')" % (i, s.encode().hex()) for i, s in enumerate(cases))
        psql("CREATE TABLE cases (i int, hex text);\nINSERT INTO cases VALUES\n%s;" % values)
        for m in MODELS:
            path = os.path.join(DATA, m + ".gguf")
            psql("SELECT mms_import('%s', '%s');" % (m, path))
            cli = subprocess.run([os.path.join(ROOT, "build", "mms-run"), "--model", path,
                                  "--tokenize", "--"] + [c.encode() for c in cases],
                                 capture_output=True)
            if cli.returncode != 0:
                print("FAILED: %s: mms-run: %s" % (m, cli.stderr.decode(errors="replace")))
                failed += 1
                continue
            want = cli.stdout.decode().splitlines()
            got = psql("SELECT array_to_string(mms_tokenize('%s', convert_from(decode(hex, 'hex'), "
                       "'UTF8')), ' ') FROM cases ORDER BY i;" % m).splitlines()
            bad = [i for i in range(len(cases)) if i >= len(got) or i >= len(want)
                   or got[i] != want[i]]
            if len(got) != len(cases) or len(want) != len(cases) or bad:
                failed += 1
                print("FAILED: %s: %d of %d inputs differ (sql %d lines, cli %d lines)"
                      % (m, len(bad), len(cases), len(got), len(want)))
                for i in bad[:5]:
                    print("   input %r: sql [%s] cli [%s]" % (
                        cases[i], got[i] if i < len(got) else "-", want[i] if i < len(want) else "-"))
            else:
                print("ok: %s: mms_tokenize = mms-run --tokenize on %d inputs" % (m, len(cases)))
    finally:
        subprocess.run(["dropdb", "--if-exists", DB])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
