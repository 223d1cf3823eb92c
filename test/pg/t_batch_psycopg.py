#!/usr/bin/env python3
"""t_batch_psycopg.py — a Python list passed by psycopg 3, with its default
settings, runs as one batch: mms_generate_batch and mms_score_batch return one
result per element, equal to a call per element, NULL (None) for None.

Why a test of a driver: psycopg 3 sends a list of str as a parameter of
unknown type, which PostgreSQL resolves against the function's candidates;
when the array form was an overload of mms_generate(text, text), the text form
won and the model generated from the literal '{a,b}'. The batch functions have
names of their own, so the list can only become text[].

Run by test/pg/run.sh (PGHOST/PGPORT/PGUSER point at its cluster, started
with shared_preload_libraries = 'mms'; MMS_TEST_DATA holds the fixtures).
Needs psycopg 3 (Debian's python3-psycopg).
"""

import os
import subprocess
import sys

try:
    import psycopg
except ImportError:
    # Debian's python3 has python3-psycopg; the python3 first in PATH may be another
    if sys.executable != "/usr/bin/python3" and os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    print("FAILED: no python3 with psycopg 3 (apt-get install python3-psycopg)")
    sys.exit(1)
from psycopg.types.json import Jsonb

DATA = os.environ["MMS_TEST_DATA"]
DB = "mms_batch_psycopg"
INPUTS = ["Hello, world!", "translate English to German: The house is wonderful.", None,
          "", "naïve café", "{a,b}", 'a "quoted", comma']
TARGETS = ["target text", "Das Haus ist wunderbar.", "x", None, "", "{}", "b"]
OPTIONS = {"max_new_tokens": 12}
# A batch scores the pairs together, one per row of the same matrix products;
# a row's sums may round differently from those of a call alone.
SCORE_TOLERANCE = 1e-4
# psycopg prepares a statement on the server once it has run it 5 times (its
# default prepare_threshold): the repeats cover both ways of sending it.
REPEATS = 6

failed = 0


def ok(msg):
    print("ok: " + msg)


def bad(msg):
    global failed
    failed += 1
    print("FAILED: " + msg)


def one(cur, sql, params):
    cur.execute(sql, params)
    return cur.fetchone()[0]


def main():
    subprocess.run(["dropdb", "--if-exists", DB], check=True, stderr=subprocess.DEVNULL)
    subprocess.run(["createdb", DB], check=True)
    try:
        with psycopg.connect(dbname=DB, autocommit=True) as conn:
            cur = conn.cursor()
            cur.execute("CREATE EXTENSION mms")
            cur.execute("SELECT mms_import('flan', %s)", [os.path.join(DATA, "flan_gated.gguf")])
            try:
                run(cur)
            except psycopg.Error as e:
                bad("%s: %s" % (type(e).__name__, str(e).splitlines()[0]))
    finally:
        subprocess.run(["dropdb", "--if-exists", DB], stderr=subprocess.DEVNULL)
    return 1 if failed else 0


def run(cur):
    # what each element gives alone
    want_gen = [None if t is None else
                one(cur, "SELECT mms_generate(%s, %s, %s)", ["flan", t, Jsonb(OPTIONS)])
                for t in INPUTS]
    want_gen_default = [None if t is None else one(cur, "SELECT mms_generate(%s, %s)", ["flan", t])
                        for t in INPUTS]
    want_score = [None if t is None or g is None else
                  one(cur, "SELECT mms_score(%s, %s, %s)", ["flan", t, g])
                  for t, g in zip(INPUTS, TARGETS)]

    # the list goes as psycopg sends it: no cast in the SQL
    got = [one(cur, "SELECT mms_generate_batch(%s, %s, %s)", ["flan", INPUTS, Jsonb(OPTIONS)])
           for _ in range(REPEATS)]
    if all(g == want_gen for g in got):
        ok("mms_generate_batch with a Python list of %d (one None) = mms_generate per element, "
           "%d times (the last one prepared)" % (len(INPUTS), REPEATS))
    else:
        bad("mms_generate_batch with a Python list: %r, per element: %r" % (got[-1], want_gen))
    got = one(cur, "SELECT mms_generate_batch(%s, %s)", ["flan", INPUTS])
    if got == want_gen_default:
        ok("mms_generate_batch with a Python list and default options = mms_generate per element")
    else:
        bad("mms_generate_batch, default options: %r, per element: %r" % (got, want_gen_default))

    got = [one(cur, "SELECT mms_score_batch(%s, %s, %s)", ["flan", INPUTS, TARGETS])
           for _ in range(REPEATS)]
    if all(close(g, want_score) for g in got):
        ok("mms_score_batch with two Python lists of %d (None in each) = mms_score per pair, "
           "%d times" % (len(INPUTS), REPEATS))
    else:
        bad("mms_score_batch with Python lists: %r, per pair: %r" % (got[-1], want_score))

    # an empty list is an empty batch, not an error
    got = (one(cur, "SELECT mms_generate_batch(%s, %s)", ["flan", []]),
           one(cur, "SELECT mms_score_batch(%s, %s, %s)", ["flan", [], []]))
    if got == ([], []):
        ok("empty Python lists give empty results")
    else:
        bad("empty lists: %r" % (got,))


def close(got, want):
    if not isinstance(got, list) or len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if (g is None) != (w is None):
            return False
        if g is not None and abs(g - w) > SCORE_TOLERANCE:
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())
