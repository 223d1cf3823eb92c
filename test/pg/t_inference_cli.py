#!/usr/bin/env python3
"""t_inference_cli.py — mms_generate and mms_score in SQL give what the
engine's CLI gives (`build/mms-run --model F [options] INPUT`, `--score
TARGET`) on the same inputs and options: greedy, beam search (length
penalty, early stopping), sampling with a seed (temperature, top-k, top-p),
min_new_tokens and repetition penalty, for a gated-GELU untied model and a
ReLU tied one; through the scalar function and through mms_generate_batch.
Prints one "ok: ..." or "FAILED: ..." line per model and mode.

Run by test/pg/run.sh (PGHOST/PGPORT/PGUSER point at its cluster, started
with shared_preload_libraries = 'mms'; MMS_TEST_DATA holds the fixtures).
Standard library only.
"""

import json
import os
import subprocess
import sys

ROOT = os.environ.get("MMS_ROOT") or os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
DATA = os.environ["MMS_TEST_DATA"]
MODELS = ["flan_gated", "t5_relu_tied", "flan_gated_q8_0"]
DB = "mms_inference_cli"
INPUTS = ["Hello, world!", "translate English to German: The house is wonderful.", "",
          "naïve café ﬁve", "東京 2024-06-01", "a " * 40]
TARGETS = ["target text", "Das Haus ist wunderbar.", ""]

# (mms-run flags, options jsonb): the same request both ways
CASES = [
    ([], {}),
    (["--max-new-tokens", "12"], {"max_new_tokens": 12}),
    (["--max-new-tokens", "10", "--num-beams", "4"], {"max_new_tokens": 10, "num_beams": 4}),
    (["--max-new-tokens", "10", "--num-beams", "3", "--length-penalty", "0.5",
      "--early-stopping", "never"],
     {"max_new_tokens": 10, "num_beams": 3, "length_penalty": 0.5, "early_stopping": "never"}),
    (["--max-new-tokens", "10", "--num-beams", "2", "--early-stopping", "true"],
     {"max_new_tokens": 10, "num_beams": 2, "early_stopping": True}),
    (["--max-new-tokens", "16", "--temperature", "0.8", "--top-p", "0.9", "--seed", "42"],
     {"max_new_tokens": 16, "temperature": 0.8, "top_p": 0.9, "seed": 42}),
    (["--max-new-tokens", "16", "--top-k", "5", "--seed", "7"],
     {"max_new_tokens": 16, "top_k": 5, "seed": 7}),
    (["--max-new-tokens", "16", "--sample", "--seed", "3"],
     {"max_new_tokens": 16, "do_sample": True, "seed": 3}),
    (["--max-new-tokens", "16", "--temperature", "0"], {"max_new_tokens": 16, "temperature": 0}),
    (["--max-new-tokens", "9", "--min-new-tokens", "9", "--repetition-penalty", "1.5"],
     {"max_new_tokens": 9, "min_new_tokens": 9, "repetition_penalty": 1.5}),
]


def psql(sql, db=DB):
    r = subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", db],
                       input=sql.encode(), capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.decode(errors="replace"))
    return r.stdout.decode()


def cli(path, flags, text):
    r = subprocess.run([os.path.join(ROOT, "build", "mms-run"), "--model", path] + flags +
                       ["--", text.encode()], capture_output=True)
    if r.returncode != 0:
        raise RuntimeError("mms-run: " + r.stderr.decode(errors="replace"))
    out = r.stdout
    assert out.endswith(b"\n")
    return out[:-1]


def lit(s):
    """A SQL literal that never splices text: convert_from(decode(hex))."""
    return "convert_from(decode('%s', 'hex'), 'UTF8')" % s.encode().hex()


def main():
    failed = 0
    subprocess.run(["dropdb", "--if-exists", DB], check=True, stderr=subprocess.DEVNULL)
    subprocess.run(["createdb", DB], check=True)
    try:
        psql("CREATE EXTENSION mms;")
        for m in MODELS:
            path = os.path.join(DATA, m + ".gguf")
            psql("SELECT mms_import('%s', '%s');" % (m, path))
            bad = []
            n = 0
            for flags, opts in CASES:
                oj = json.dumps(opts)
                want = [cli(path, flags, t) for t in INPUTS]
                # scalar calls
                q = ";\n".join("SELECT encode(convert_to(mms_generate('%s', %s, '%s'), 'UTF8'), 'hex')"
                               % (m, lit(t), oj) for t in INPUTS) + ";"
                got = [bytes.fromhex(h) for h in psql(q).splitlines()]
                # one batch call
                qa = ("SELECT encode(convert_to(r, 'UTF8'), 'hex') FROM unnest(mms_generate_batch('%s', ARRAY[%s], '%s'))"
                      " WITH ORDINALITY AS u(r, i) ORDER BY i;" % (m, ", ".join(lit(t) for t in INPUTS), oj))
                got_a = [bytes.fromhex(h) for h in psql(qa).splitlines()]
                for i, t in enumerate(INPUTS):
                    n += 1
                    if i >= len(got) or got[i] != want[i]:
                        bad.append("scalar %s %r: sql %r cli %r" % (oj, t, got[i] if i < len(got) else None, want[i]))
                    if i >= len(got_a) or got_a[i] != want[i]:
                        bad.append("batch %s %r: sql %r cli %r" % (oj, t, got_a[i] if i < len(got_a) else None, want[i]))
            if bad:
                failed += 1
                print("FAILED: %s: %d of %d generations differ from mms-run" % (m, len(bad), 2 * n))
                for b in bad[:5]:
                    print("   " + b)
            else:
                print("ok: %s: mms_generate and mms_generate_batch = mms-run on %d inputs x %d option sets"
                      % (m, len(INPUTS), len(CASES)))
            # scoring
            bad = []
            for t in INPUTS[:4]:
                for tg in TARGETS:
                    want = float(cli(path, ["--score", tg], t).decode())
                    got = float(psql("SELECT mms_score('%s', %s, %s);" % (m, lit(t), lit(tg))))
                    if abs(got - want) > 1e-6 * max(1.0, abs(want)):
                        bad.append("%r | %r: sql %.6f cli %.6f" % (t, tg, got, want))
            if bad:
                failed += 1
                print("FAILED: %s: mms_score differs from mms-run --score" % m)
                for b in bad[:5]:
                    print("   " + b)
            else:
                print("ok: %s: mms_score = mms-run --score on %d pairs" % (m, 4 * len(TARGETS)))
    finally:
        subprocess.run(["dropdb", "--if-exists", DB])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
