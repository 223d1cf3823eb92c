#!/usr/bin/env python3
"""test/soak/soak.py — the soak test proper, run by test/soak/run.sh against
the throwaway cluster it starts (PGHOST / PGPORT / PGUSER set, a superuser).

1. Setup: database `soak`, roles `soak_user` (ordinary, granted the models)
   and `soak_admin` (member of mms_admin and pg_read_server_files), models
   datefix:1 (the demo model), datefix:2 (an imported copy, alias `live`), and
   the random fixtures flan and relu.
2. Serial run: in one session, one call at a time, the expected result of
   every deterministic call the load will make (greedy, seeded sampling and
   beam generation, scores, long generations), on datefix:1 and the fixtures.
3. Load, for --seconds: 16 sessions (6 as the superuser, 8 as soak_user, 2 as
   soak_admin) each loop over a random mix of scalar and array (1..50 inputs,
   some NULL) mms_generate, mms_score, seeded sampling, beam search, calls
   cancelled mid-flight (pg_cancel_backend from a second connection of the
   same role, or the protocol cancel of psycopg), calls under a short
   statement_timeout, calls on explicit versions that may just have been
   unregistered, and bursts on the fixture models (each idle 40 s of every
   60 s, so their workers stop on mms.worker_idle_timeout and start again).
   References used for the demo model: datefix:1, datefix@live, datefix.
   Meanwhile: a cycler (as soak_admin) imports a new copy of datefix every
   5-12 s, moves the alias `live` to it and unregisters the previous one; a
   chaos thread terminates a random inference worker every 3-9 s (preferring
   one with requests in flight) with pg_terminate_backend — never the worker
   of datefix:1, whose process is kept long-lived for the memory check; a
   monitor polls mms.workers every 0.25 s; a sampler records the memory of
   every session backend, every mms worker and the launcher every 10 s.
4. Checks, each printed as "ok: ..." or "FAILED: ...":
   - no cluster restart: postmaster pid and start time unchanged, server log
     without "terminated by signal", "was terminated", PANIC,
     "reinitializing", TRAP (and without leaked-resource warnings);
   - nothing left behind: 3 s after the load mms.pools shows nothing queued
     or running in any pool; every DSM segment beyond those present at start is a
     cached model (sizes matched against mms.cache); one array call can take
     all mms.max_requests request slots at once (no slot stuck anywhere);
     after mms_unload of every registered version only the segments present
     at start remain;
   - results: every successful greedy, seeded-sampling and beam generation is
     exactly the serial run's value, every score equal within 1e-4 (absolute, or
     relative when larger: its last float bits depend on the batch it shared); no error beyond the
     allowed ones (below); a serial run after the soak still gives the same
     results;
   - memory flat (rule below); at most mms.max_workers workers at once; the
     load did what it should (every kind of call verified at least once,
     cancels, timeouts, cycles and terminations happened);
   - the extension build did not change under the cluster (run.sh pins it).
   Then a summary: calls by kind, errors by SQLSTATE, cancels, terminations,
   worker processes and restarts, cycles, mms.stat_models. Files in --out:
   rss.csv (the memory curve), events.log (cycles, terminations),
   problems.txt (every mismatch and unexpected error).

Allowed errors (anything else is FAILED): 57014 "canceling statement due to
user request" on a call this harness cancelled, 57014 "statement timeout" on a
call this harness ran under a short statement_timeout, 57000 "the inference
worker exited while running this request" with the detail "The worker was
process N, terminated" where N is a worker this harness terminated, 42704 (model / large object does not exist) on a call
naming a version whose unregistration had begun before the call ended (for
datefix@live: an unregistration that began while the call ran).

Memory rule: the private anonymous memory (RssAnon: heap, malloc arenas,
stacks; not shared memory, which smaps' Private_* counts too when a single
process maps a segment) of a process alive from the first third of the load
to its end must not grow by more than 20% + 20 MB between the first sample
at or after T/3 and the last sample of the load: end <= 1.2 * start + 20 MB.
"""

import argparse
import collections
import csv
import datetime
import glob
import hashlib
import json
import os
import random
import re
import sys
import threading
import time
import traceback

import psycopg

DB = "soak"
SAFETY_TIMEOUT_MS = 120000      # every session: a hung call ends as a 57014 we flag
N_SESSIONS = 16
SAMPLE_EVERY = 10.0
PHASE_SECONDS = 20.0            # fixture bursts: flan, relu, neither, ...

GREEDY = {"max_new_tokens": 32}
BEAM = {"num_beams": 4, "max_new_tokens": 32}
LONG = {"max_new_tokens": 1024, "min_new_tokens": 1024}
LONG_BEAM = {"num_beams": 4, "max_new_tokens": 256, "min_new_tokens": 256}
FIX = {"max_new_tokens": 16}


def sample_opts(seed):
    return {"do_sample": True, "top_k": 20, "temperature": 0.9, "seed": seed, "max_new_tokens": 32}


Q_GEN = "SELECT mms_generate(%s::text, %s::text, %s::jsonb)"
Q_ARR = "SELECT mms_generate_batch(%s::text, %s::text[], %s::jsonb)"
Q_SCORE = "SELECT mms_score(%s::text, %s::text, %s::text)"
SCORE_TOLERANCE = 1e-4

n_failed = 0
print_lock = threading.Lock()


def say(s=""):
    with print_lock:
        print(s, flush=True)


def ok(s):
    say("ok: " + s)


def bad(s):
    global n_failed
    n_failed += 1
    say("FAILED: " + s)


def connect(user="postgres", app="soak", timeout_ms=SAFETY_TIMEOUT_MS, db=DB):
    return psycopg.connect(dbname=db, user=user, autocommit=True, application_name=app,
                           options="-c statement_timeout=%d" % timeout_ms)


def one(conn, sql, params=None):
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def jdump(o):
    return json.dumps(o, sort_keys=True)


# ---------------------------------------------------------------------------
# shared state of the run

class Run:
    def __init__(self, args):
        self.args = args
        self.stop = threading.Event()
        self.t_start = None
        self.lock = threading.Lock()
        self.calls = collections.Counter()        # kind -> calls
        self.succ = collections.Counter()         # kind -> successes
        self.verified = collections.Counter()     # kind -> successes compared equal
        self.unverified = collections.Counter()   # kind -> successes with no serial value
        self.err_cat = collections.Counter()      # (kind, category) -> n
        self.err_state = collections.Counter()    # (sqlstate, category) -> n
        self.latency = collections.defaultdict(list)
        self.mismatches = []
        self.unexpected = []
        self.harness_errors = []
        self.cancels_sent = collections.Counter()  # method -> n
        self.terminated = {}                        # pid -> (t, model, requests running in it)
        self.term_failed = 0
        self.versions_created = [2]
        self.unregister_begun = {}                  # version -> t (intent, before the call)
        self.unregister_done = {}
        self.cycles = 0
        self.live = 2
        self.workers_seen = {}                      # pid -> [model, first, last, states]
        self.max_running = 0
        self.max_running_at = None
        self.session_pids = {}                      # pid -> label
        self.session_progress = collections.Counter()
        self.rss_rows = []
        self.score_diffs = []                       # (abs, rel) of scores unequal to the serial run
        self.events = []                            # (wall time, text): cycles and terminations

    def event(self, text):
        with self.lock:
            self.events.append((time.time(), text))

    def now(self):
        return time.time() - self.t_start

    def record_error(self, kind, cat, sqlstate, allowed, detail):
        with self.lock:
            self.err_cat[(kind, cat)] += 1
            self.err_state[(sqlstate or "none", cat)] += 1
            if not allowed:
                self.unexpected.append(detail)


# ---------------------------------------------------------------------------
# DSM segments and process memory

def list_segments():
    segs = {}
    for p in glob.glob("/dev/shm/PostgreSQL.*"):
        try:
            segs[os.path.basename(p)] = os.stat(p).st_size
        except FileNotFoundError:
            pass
    return segs


def postmaster_pid(pgdata):
    with open(os.path.join(pgdata, "postmaster.pid")) as f:
        return int(f.readline().strip())


def children_of(ppid):
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
            # comm may hold spaces: the fields after the last ')'
            fields = st[st.rindex(")") + 2:].split()
            if int(fields[1]) != ppid:
                continue
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            out[int(d)] = cmd
        except (OSError, ValueError):
            pass
    return out


def read_mem(pid):
    """kB: VmRSS, RssAnon, RssShmem (status); Pss, Pss_Anon, Private (smaps_rollup)."""
    m = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssAnon", "RssShmem"):
                    m[k] = int(v.split()[0])
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Pss", "Pss_Anon", "Private_Clean", "Private_Dirty"):
                    m[k] = int(v.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if "VmRSS" not in m:
        return None
    return {"vmrss": m.get("VmRSS", 0), "anon": m.get("RssAnon", 0), "shmem": m.get("RssShmem", 0),
            "pss": m.get("Pss", 0), "pss_anon": m.get("Pss_Anon", 0),
            "private": m.get("Private_Clean", 0) + m.get("Private_Dirty", 0)}


def take_sample(run, pm, phase):
    t = run.now()
    kids = children_of(pm)
    rows = []
    for pid, cmd in kids.items():
        if pid in run.session_pids:
            label = run.session_pids[pid]
            kind = "session"
        elif "mms worker for" in cmd:
            label = "worker " + cmd.split("mms worker for", 1)[1].split()[0]
            kind = "worker"
        elif "mms launcher" in cmd:
            label, kind = "launcher", "launcher"
        else:
            continue
        m = read_mem(pid)
        if m is None:
            continue
        rows.append([round(t, 1), phase, pid, kind, label, m["vmrss"], m["anon"], m["shmem"], m["pss"],
                     m["pss_anon"], m["private"]])
    with run.lock:
        run.rss_rows.extend(rows)


RSS_HEADER = ["t_s", "phase", "pid", "kind", "label", "vmrss_kb", "rss_anon_kb", "rss_shmem_kb", "pss_kb",
              "pss_anon_kb", "private_kb"]


# ---------------------------------------------------------------------------
# setup and the serial run

def setup(args):
    files = args.files
    with connect(db="postgres") as c:
        c.execute("DROP DATABASE IF EXISTS soak")
        c.execute("CREATE DATABASE soak")
    with connect() as c:
        c.execute("CREATE EXTENSION mms")
        c.execute("CREATE ROLE soak_user LOGIN")
        c.execute("CREATE ROLE soak_admin LOGIN IN ROLE mms_admin, pg_read_server_files")
        for name, f in (("datefix", "datefix.gguf"), ("flan", "flan_gated.gguf"), ("relu", "t5_relu_tied.gguf")):
            c.execute("SELECT mms_import(%s, %s)", (name, os.path.join(files, f)))
            c.execute("SELECT mms_grant(%s, 'soak_user')", (name,))
    with connect("soak_admin") as c:
        v = one(c, "SELECT mms_import('datefix', %s)", (os.path.join(files, "datefix_copy.gguf"),))
        assert v == 2, v
        c.execute("SELECT mms_set_alias('datefix', 'live', 2)")


class Expected:
    pass


def serial_run(args, rng):
    """Expected values: one session, one call at a time (batch of one)."""
    tsv = []
    with open(os.path.join(args.files, "datefix_heldout.tsv")) as f:
        for line in f:
            a, _, b = line.rstrip("\n").partition("\t")
            if a:
                tsv.append((a, b))
    rng.shuffle(tsv)
    E = Expected()
    E.pool = [a for a, _ in tsv[:240]]
    E.score_pairs = [(a, b) for a, b in tsv[:200]]
    E.score_pairs += [(tsv[i][0], tsv[i + 1][1]) for i in range(40)]   # wrong targets too
    E.sample_keys = [(tsv[i][0], rng.randrange(1000)) for i in range(60)]
    E.beam_inputs = [a for a, _ in tsv[240:280]]
    E.long_inputs = [a for a, _ in tsv[280:284]]
    E.long_beam_inputs = [a for a, _ in tsv[284:286]]
    E.fix_inputs = ["soak input %d: %s" % (i, w) for i, w in
                    enumerate(["hello world", "the quick brown fox", "naïve café", "42", "",
                               "translate English to German: the house", "a b c d e f g", "x" * 40] * 4)]
    E.fix_pairs = [(E.fix_inputs[i], E.fix_inputs[(i * 7 + 3) % len(E.fix_inputs)]) for i in range(24)]
    E.gen, E.score, E.sample, E.beam, E.long, E.long_beam = {}, {}, {}, {}, {}, {}
    E.fix_gen = {"flan": {}, "relu": {}}
    E.fix_score = {"flan": {}, "relu": {}}
    t0 = time.time()
    n = 0
    with connect() as c:
        c.execute("SELECT mms_load('datefix:1')")
        for a in E.pool:
            E.gen[a] = one(c, Q_GEN, ("datefix:1", a, jdump(GREEDY))); n += 1
        for a, b in E.score_pairs:
            E.score[(a, b)] = one(c, Q_SCORE, ("datefix:1", a, b)); n += 1
        for a, s in E.sample_keys:
            E.sample[(a, s)] = one(c, Q_GEN, ("datefix:1", a, jdump(sample_opts(s)))); n += 1
        for a in E.beam_inputs:
            E.beam[a] = one(c, Q_GEN, ("datefix:1", a, jdump(BEAM))); n += 1
        for a in E.long_inputs:
            E.long[a] = one(c, Q_GEN, ("datefix:1", a, jdump(LONG))); n += 1
        for a in E.long_beam_inputs:
            E.long_beam[a] = one(c, Q_GEN, ("datefix:1", a, jdump(LONG_BEAM))); n += 1
        for m in ("flan", "relu"):
            for a in E.fix_inputs:
                E.fix_gen[m][a] = one(c, Q_GEN, (m, a, jdump(FIX))); n += 1
            for a, b in E.fix_pairs:
                E.fix_score[m][(a, b)] = one(c, Q_SCORE, (m, a, b)); n += 1
        c.execute("SELECT mms_stat_reset()")
    E.serial_calls = n
    E.serial_seconds = time.time() - t0
    return E


# ---------------------------------------------------------------------------
# the load

# the message says what happened; the detail names the worker's process
WORKER_EXIT_RE = re.compile(r"The worker was process (\d+)")


class Ctx:
    """One call as a session made it: what may legitimately go wrong."""

    def __init__(self, kind, ref):
        self.kind = kind
        self.ref = ref
        self.cancel_sent = False
        self.timeout_ms = None
        self.t0 = time.time()


def classify(run, ctx, e, t1):
    st = getattr(e, "sqlstate", None)
    diag = getattr(e, "diag", None)
    msg = (diag.message_primary if diag is not None else None) or str(e)
    if st is None:
        return "connection", False, st, msg
    if st == "57014":
        if "statement timeout" in msg:
            return ("timeout", True, st, msg) if ctx.timeout_ms is not None else ("hang-timeout", False, st, msg)
        if "user request" in msg:
            return "cancel", ctx.cancel_sent, st, msg
        return "57014-other", False, st, msg
    if st == "57000" and "exited while running this request" in msg:
        m = WORKER_EXIT_RE.search((diag.message_detail if diag is not None else None) or "")
        with run.lock:
            known = m is not None and int(m.group(1)) in run.terminated
        return "worker-exit", known, st, msg
    if st == "42704":
        allowed = False
        with run.lock:
            begun = dict(run.unregister_begun)
        mv = re.match(r"^datefix:(\d+)$", ctx.ref)
        if mv:
            v = int(mv.group(1))
            allowed = v in begun and begun[v] <= t1
        elif ctx.ref == "datefix@live":
            allowed = any(ctx.t0 - 0.5 <= t <= t1 for t in begun.values())
        return "model-gone", allowed, st, msg
    return "other", False, st, msg


class Session:
    def __init__(self, run, E, idx, role):
        self.run, self.E, self.idx, self.role = run, E, idx, role
        self.label = "session-%02d %s" % (idx, role)
        self.rng = random.Random(run.args.seed * 1000 + idx)
        self.conn = None
        self.side = None
        self.pid = None

    def open(self):
        self.conn = connect(self.role, "soak session %d" % self.idx)
        self.pid = self.conn.info.backend_pid
        with self.run.lock:
            self.run.session_pids[self.pid] = self.label

    # -- one call: run, time, check ------------------------------------------------
    def call(self, ctx, sql, params, check):
        run = self.run
        with run.lock:
            run.calls[ctx.kind] += 1
        try:
            val = one(self.conn, sql, params)
        except psycopg.Error as e:
            t1 = time.time()
            cat, allowed, st, msg = classify(run, ctx, e, t1)
            run.record_error(ctx.kind, cat, st, allowed,
                             "%s %s [%s] %s: %s (after %.2f s, t=%.1f)" %
                             (self.label, ctx.kind, ctx.ref, st, msg, t1 - ctx.t0, t1 - run.t_start))
            if self.conn.closed or self.conn.broken:
                self.reopen()
            return
        t1 = time.time()
        with run.lock:
            run.succ[ctx.kind] += 1
            run.latency[ctx.kind].append(t1 - ctx.t0)
            run.session_progress[self.idx] += 1
        res = check(val)
        with run.lock:
            if res is None:
                run.unverified[ctx.kind] += 1
            elif res is True:
                run.verified[ctx.kind] += 1
            else:
                run.mismatches.append("%s %s [%s]: %s" % (self.label, ctx.kind, ctx.ref, res))

    def reopen(self):
        try:
            self.conn.close()
        except Exception:
            pass
        with self.run.lock:
            self.run.session_pids.pop(self.pid, None)
        self.open()

    # -- what to call ----------------------------------------------------------------
    def datefix_ref(self):
        r = self.rng.random()
        if r < 0.4:
            return "datefix:1"
        if r < 0.8:
            return "datefix@live"
        return "datefix"

    def eq(self, want):
        run = self.run

        def check(got):
            if got == want:
                return True
            if isinstance(got, float) and isinstance(want, float):
                # A score's last float32 bits depend on what shares its batch (GEMM
                # blocking and summation order change with the batch): equal within
                # the engine's golden tolerance, 1e-4 (absolute, or relative when larger).
                with run.lock:
                    run.score_diffs.append((abs(got - want), abs(got - want) / max(abs(want), 1e-300)))
                if abs(got - want) <= SCORE_TOLERANCE * max(1.0, abs(want)):
                    return True
            return "got %r, want %r" % (got, want)
        return check

    def array_check(self, inputs, table):
        def check(got):
            want = [None if a is None else table[a] for a in inputs]
            if got == want:
                return True
            diffs = [(i, g, w) for i, (g, w) in enumerate(zip(got or [], want)) if g != w]
            return "array of %d: got %d elements, %d differ, first %r" % (
                len(inputs), len(got or []), len(diffs), diffs[:3])
        return check

    def random_array(self, lo, hi, pool):
        n = self.rng.randint(lo, hi)
        return [None if self.rng.random() < 0.05 else self.rng.choice(pool) for _ in range(n)]

    def long_target(self, ref):
        """A call that runs for a while: (kind suffix, sql, params, check)."""
        E, r = self.E, self.rng.random()
        if r < 0.45:
            a = self.rng.choice(E.long_inputs)
            return "long", Q_GEN, (ref, a, jdump(LONG)), self.eq(E.long[a])
        if r < 0.85:
            arr = self.random_array(20, 50, E.pool)
            return "array", Q_ARR, (ref, arr, jdump(GREEDY)), self.array_check(arr, E.gen)
        a = self.rng.choice(E.long_beam_inputs)
        return "longbeam", Q_GEN, (ref, a, jdump(LONG_BEAM)), self.eq(E.long_beam[a])

    def do_cancel(self):
        ref = self.datefix_ref()
        what, sql, params, check = self.long_target(ref)
        ctx = Ctx("cancel:" + what, ref)
        delay = self.rng.uniform(0.02, 2.0)
        method = self.rng.choice(["pg_cancel_backend", "protocol"])
        done = threading.Event()
        if method == "pg_cancel_backend" and self.side is None:
            self.side = connect(self.role, "soak canceller %d" % self.idx)
        pid, conn, side, run = self.pid, self.conn, self.side, self.run

        def canceller():
            if done.wait(delay):
                return
            ctx.cancel_sent = True
            try:
                if method == "protocol":
                    conn.cancel()
                else:
                    side.execute("SELECT pg_cancel_backend(%s)", (pid,))
                with run.lock:
                    run.cancels_sent[method] += 1
            except Exception as e:      # noqa: BLE001
                with run.lock:
                    run.harness_errors.append("cancel via %s: %r" % (method, e))

        th = threading.Thread(target=canceller, daemon=True)
        th.start()
        try:
            self.call(ctx, sql, params, check)
        finally:
            done.set()
            th.join()

    def do_timeout(self):
        ref = self.datefix_ref()
        what, sql, params, check = self.long_target(ref)
        ctx = Ctx("timeout:" + what, ref)
        ctx.timeout_ms = self.rng.randint(20, 3000)
        self.conn.execute("SET statement_timeout = %d" % ctx.timeout_ms)
        try:
            self.call(ctx, sql, params, check)
        finally:
            self.conn.execute("SET statement_timeout = %d" % SAFETY_TIMEOUT_MS)

    def do_fixture(self):
        phase = int(self.run.now() / PHASE_SECONDS) % 3
        if phase == 2:
            return self.do_gen()
        m = "flan" if phase == 0 else "relu"
        E, r = self.E, self.rng.random()
        if r < 0.5:
            a = self.rng.choice(E.fix_inputs)
            self.call(Ctx("fixture-gen", m), Q_GEN, (m, a, jdump(FIX)), self.eq(E.fix_gen[m][a]))
        elif r < 0.75:
            arr = self.random_array(1, 20, E.fix_inputs)
            self.call(Ctx("fixture-array", m), Q_ARR, (m, arr, jdump(FIX)), self.array_check(arr, E.fix_gen[m]))
        else:
            a, b = self.rng.choice(E.fix_pairs)
            self.call(Ctx("fixture-score", m), Q_SCORE, (m, a, b), self.eq(E.fix_score[m][(a, b)]))

    def do_gen(self):
        ref = self.datefix_ref()
        a = self.rng.choice(self.E.pool)
        self.call(Ctx("gen", ref), Q_GEN, (ref, a, jdump(GREEDY)), self.eq(self.E.gen[a]))

    def do_array(self):
        ref = self.datefix_ref()
        arr = self.random_array(1, 50, self.E.pool)
        self.call(Ctx("array", ref), Q_ARR, (ref, arr, jdump(GREEDY)), self.array_check(arr, self.E.gen))

    def do_score(self):
        ref = self.datefix_ref()
        a, b = self.rng.choice(self.E.score_pairs)
        self.call(Ctx("score", ref), Q_SCORE, (ref, a, b), self.eq(self.E.score[(a, b)]))

    def do_sample(self):
        ref = self.datefix_ref()
        a, s = self.rng.choice(self.E.sample_keys)
        self.call(Ctx("sample", ref), Q_GEN, (ref, a, jdump(sample_opts(s))), self.eq(self.E.sample[(a, s)]))

    def do_beam(self):
        ref = self.datefix_ref()
        a = self.rng.choice(self.E.beam_inputs)
        self.call(Ctx("beam", ref), Q_GEN, (ref, a, jdump(BEAM)), self.eq(self.E.beam[a]))

    def do_stale(self):
        """An explicit version, maybe one the cycler just unregistered."""
        with self.run.lock:
            recent = self.run.versions_created[-4:]
        v = self.rng.choice(recent)
        ref = "datefix:%d" % v
        if self.rng.random() < 0.5:
            a = self.rng.choice(self.E.pool)
            self.call(Ctx("stale-gen", ref), Q_GEN, (ref, a, jdump(GREEDY)), self.eq(self.E.gen[a]))
        else:
            a, b = self.rng.choice(self.E.score_pairs)
            self.call(Ctx("stale-score", ref), Q_SCORE, (ref, a, b), self.eq(self.E.score[(a, b)]))

    ACTIONS = [("do_gen", 22), ("do_array", 16), ("do_score", 14), ("do_sample", 5), ("do_beam", 4),
               ("do_cancel", 10), ("do_timeout", 10), ("do_stale", 6), ("do_fixture", 13)]

    def main(self):
        names = [a for a, _ in self.ACTIONS]
        weights = [w for _, w in self.ACTIONS]
        try:
            while not self.run.stop.is_set():
                getattr(self, self.rng.choices(names, weights)[0])()
        except Exception:       # noqa: BLE001
            with self.run.lock:
                self.run.harness_errors.append("%s crashed: %s" % (self.label, traceback.format_exc()))


def monitor_main(run):
    """mms.workers every 0.25 s: worker processes seen, running at once."""
    try:
        with connect(app="soak monitor") as c:
            while not run.stop.is_set():
                t = run.now()
                rows = c.execute("SELECT pid, model, state, running FROM mms.workers").fetchall()
                running = sum(1 for r in rows if r[2] in ("starting", "loading", "ready", "draining"))
                with run.lock:
                    if running > run.max_running:
                        run.max_running, run.max_running_at = running, (round(t, 1), rows)
                    for pid, model, state, _ in rows:
                        if pid is None:
                            continue
                        w = run.workers_seen.setdefault(pid, [model, t, t, set()])
                        w[2] = t
                        w[3].add(state)
                time.sleep(0.25)
    except Exception:           # noqa: BLE001
        with run.lock:
            run.harness_errors.append("monitor crashed: " + traceback.format_exc())


def chaos_main(run):
    """pg_terminate_backend of a random worker (never datefix:1's) every 3-9 s.

    Workers serve weights, not names: datefix:1's worker is the one of its
    sha256 (shared with every datefix copy the cycler imports)."""
    rng = random.Random(run.args.seed * 1000 + 99)
    try:
        with connect(app="soak chaos") as c:
            while not run.stop.wait(rng.uniform(3, 9)):
                rows = c.execute("SELECT pid, model, running FROM mms.workers WHERE pid IS NOT NULL"
                                 " AND sha256 IS DISTINCT FROM (SELECT sha256 FROM mms.models"
                                 " WHERE name = 'datefix' AND version = 1)"
                                 " AND state IN ('ready', 'loading', 'starting')").fetchall()
                if not rows:
                    continue
                busy = [r for r in rows if r[2] > 0]
                pid, model, running = rng.choice(busy if busy and rng.random() < 0.8 else rows)
                with run.lock:
                    run.terminated[pid] = (round(run.now(), 1), model, running)
                run.event("terminate worker %d of %s (running %d)" % (pid, model, running))
                if not one(c, "SELECT pg_terminate_backend(%s)", (pid,)):
                    with run.lock:
                        run.term_failed += 1
    except Exception:           # noqa: BLE001
        with run.lock:
            run.harness_errors.append("chaos crashed: " + traceback.format_exc())


def cycler_main(run):
    """As soak_admin: import a copy as a new version, move `live`, unregister the old one."""
    rng = random.Random(run.args.seed * 1000 + 98)
    path = os.path.join(run.args.files, "datefix_copy.gguf")
    try:
        with connect("soak_admin", "soak cycler") as c:
            while not run.stop.wait(rng.uniform(5, 12)):
                try:
                    v = one(c, "SELECT mms_import('datefix', %s)", (path,))
                    with run.lock:
                        run.versions_created.append(v)
                    run.event("imported datefix:%d" % v)
                    c.execute("SELECT mms_set_alias('datefix', 'live', %s)", (v,))
                    run.event("alias live -> datefix:%d" % v)
                    with run.lock:
                        old, run.live = run.live, v
                    if run.stop.wait(rng.uniform(0.3, 3.0)):
                        pass
                    with run.lock:
                        run.unregister_begun[old] = time.time()
                    run.event("unregister datefix:%d begins" % old)
                    c.execute("SELECT mms_unregister(%s)", ("datefix:%d" % old,))
                    with run.lock:
                        run.unregister_done[old] = time.time()
                        run.cycles += 1
                    run.event("unregister datefix:%d committed" % old)
                except psycopg.Error as e:
                    with run.lock:
                        run.unexpected.append("cycler: %s %s" % (e.sqlstate, e))
    except Exception:           # noqa: BLE001
        with run.lock:
            run.harness_errors.append("cycler crashed: " + traceback.format_exc())


def sampler_main(run, pm):
    try:
        while not run.stop.wait(SAMPLE_EVERY):
            take_sample(run, pm, "load")
    except Exception:           # noqa: BLE001
        with run.lock:
            run.harness_errors.append("sampler crashed: " + traceback.format_exc())


# ---------------------------------------------------------------------------
# checks after the load

POOLS_Q = "SELECT left(sha256, 12), model, workers, queued, running FROM mms.pools ORDER BY model"


def pools_idle(rows):
    """Rows of POOLS_Q: nothing queued or running in any pool."""
    return all(r[3] == 0 and r[4] == 0 for r in rows)


def wait_queued_zero(c, seconds):
    deadline = time.time() + seconds
    while True:
        rows = c.execute(POOLS_Q).fetchall()
        if pools_idle(rows) or time.time() > deadline:
            return rows
        time.sleep(0.2)


def match_segments(extra, cache_rows):
    """Pairs each cached model (bytes) with a segment of that size: (unmatched segments, unmatched rows)."""
    left = dict(extra)
    rows_left = []
    for r in cache_rows:
        name = next((n for n, s in sorted(left.items()) if s == r["bytes"]), None)
        if name is None:
            rows_left.append(r)
        else:
            del left[name]
    return left, rows_left


def cache_rows(c):
    return [dict(zip(("sha256", "models", "bytes", "state", "workers", "loaded_at"), r)) for r in
            c.execute("SELECT sha256, models, bytes, state, workers, loaded_at FROM mms.cache"
                      " ORDER BY sha256").fetchall()]


def mb(n):
    return "%.1f MB" % (n / 1048576.0)


def slot_probe(run, E):
    """Takes every request slot at once: none may be held by anything else."""
    with connect(app="soak probe-watch") as w:
        n = int(one(w, "SELECT current_setting('mms.max_requests')"))
        opts = {"max_new_tokens": 512, "min_new_tokens": 512}
        inputs = [E.pool[i % len(E.pool)] for i in range(n)]
        probe = connect(app="soak probe")
        result = {}

        def go():
            try:
                one(probe, Q_ARR, ("datefix:1", inputs, jdump(opts)))
                result["done"] = True
            except psycopg.Error as e:
                result["err"] = (e.sqlstate, str(e).strip())

        th = threading.Thread(target=go, daemon=True)
        th.start()
        seen = 0
        deadline = time.time() + 15
        while time.time() < deadline and "done" not in result and "err" not in result:
            q = one(w, "SELECT coalesce(sum(queued + running), 0) FROM mms.pools WHERE sha256 ="
                       " (SELECT sha256 FROM mms.models WHERE name = 'datefix' AND version = 1)")
            seen = max(seen, int(q))
            if seen >= n:
                break
            time.sleep(0.01)
        probe.cancel()
        th.join(30)
        probe.close()
        after = wait_queued_zero(w, 15)
    if seen == n:
        ok("all %d request slots (mms.max_requests) could be taken by one array call after the soak: no slot is stuck" % n)
    else:
        bad("an array call of mms.max_requests = %d inputs got only %d slots at once: %d slots stuck (probe: %s)" %
            (n, seen, n - seen, result))
    if not pools_idle(after):
        bad("after cancelling the slot probe, requests stay queued: %s" % after)
    elif result.get("err", ("",))[0] == "57014":
        ok("the slot probe was cancelled and its %d slots came back" % n)
    else:
        bad("slot probe: expected a cancel, got %s" % result)


def serial_recheck(E):
    """After the soak, a serial run of a subset must still give the same results."""
    bad_ = []
    n = 0
    with connect(app="soak recheck") as c:
        for a in E.pool[:60]:
            got = one(c, Q_GEN, ("datefix:1", a, jdump(GREEDY))); n += 1
            if got != E.gen[a]:
                bad_.append((a, got, E.gen[a]))
        for a, b in E.score_pairs[:60]:
            got = one(c, Q_SCORE, ("datefix@live", a, b)); n += 1
            if got != E.score[(a, b)]:
                bad_.append((a, b, got, E.score[(a, b)]))
        for a in E.long_inputs[:1]:
            got = one(c, Q_GEN, ("datefix:1", a, jdump(LONG))); n += 1
            if got != E.long[a]:
                bad_.append((a, "long"))
    if bad_:
        bad("serial run after the soak differs from the one before on %d of %d calls: %r" % (len(bad_), n, bad_[:3]))
    else:
        ok("a serial run after the soak still gives the same results (%d calls)" % n)


def unload_all():
    """mms_unload every registered version until nothing registered is cached (20 s)."""
    deadline = time.time() + 20
    with connect(app="soak unload") as c:
        c.execute("SET client_min_messages = warning")
        while True:
            for name, version in c.execute("SELECT name, version FROM mms.models").fetchall():
                c.execute("SELECT mms_unload(%s)", ("%s:%d" % (name, version),))
            reg = {r[0] for r in c.execute("SELECT sha256 FROM mms.models").fetchall()}
            rows = cache_rows(c)
            workers = c.execute("SELECT pid, model, state FROM mms.workers").fetchall()
            if (not any(r["sha256"] in reg for r in rows) and not workers) or time.time() > deadline:
                return rows, reg, workers
            time.sleep(0.5)


def log_problems(path):
    pat = re.compile(r"terminated by signal|was terminated|PANIC|reinitializing|TRAP:|"
                     r"all server processes terminated|server process .* exited with exit code")
    leak = re.compile(r"WARNING: .*(leak|not closed|still referenced)", re.I)
    crashes, leaks = [], []
    worker_exit1 = 0
    with open(path, errors="replace") as f:
        for line in f:
            if pat.search(line):
                crashes.append(line.rstrip())
            if leak.search(line):
                leaks.append(line.rstrip())
            if 'background worker "mms worker"' in line and "exited with exit code 1" in line:
                worker_exit1 += 1
    return crashes, leaks, worker_exit1


def memory_check(run, t_load):
    rows = run.rss_rows
    by_pid = collections.defaultdict(list)
    for r in rows:
        if r[1] == "load":
            by_pid[r[2]].append(r)
    if not rows:
        bad("no memory samples")
        return []
    t_third = t_load / 3.0
    t_last = max(r[0] for r in rows if r[1] == "load")
    table = []
    grew = []
    short_workers = []
    for pid, rs in sorted(by_pid.items(), key=lambda kv: (kv[1][0][3], kv[1][0][4])):
        rs.sort(key=lambda r: r[0])
        start = next((r for r in rs if r[0] >= t_third), None)
        end = rs[-1]
        long_lived = start is not None and start[0] <= t_third + SAMPLE_EVERY + 2 and end[0] >= t_last - 0.01
        if not long_lived:
            if rs[0][3] == "worker":
                short_workers.append(rs)
            continue
        limit = 1.2 * start[6] + 20 * 1024
        growth = end[6] - start[6]
        table.append((end[4], pid, len(rs), rs[0][6], start[6], end[6], growth, max(r[6] for r in rs),
                      end[8], end[10], end[5]))
        if end[6] > limit:
            grew.append("%s (pid %d): RssAnon %d kB at t=%.0f s -> %d kB at t=%.0f s (limit %d kB)" %
                        (end[4], pid, start[6], start[0], end[6], end[0], limit))
    say("")
    say("memory of long-lived processes (kB; anon = RssAnon, private heap; first third from t=%.0f s; curve: rss.csv)" % t_third)
    say("%-28s %7s %4s %9s %9s %9s %8s %9s %9s %9s %9s" %
        ("process", "pid", "n", "anon@0", "anon@T/3", "anon@end", "growth", "anon max", "pss@end", "priv@end", "rss@end"))
    for t in table:
        say("%-28s %7d %4d %9d %9d %9d %+8d %9d %9d %9d %9d" % t)
    if short_workers:
        mx = max(max(r[6] for r in rs) for rs in short_workers)
        mxp = max(max(r[8] for r in rs) for rs in short_workers)
        say("%d shorter-lived worker processes sampled: RssAnon at most %d kB, Pss at most %d kB" %
            (len(short_workers), mx, mxp))
    # the curve, coarsely: one line per ~1/10 of the load
    times = sorted({r[0] for r in rows if r[1] == "load"})
    step = max(1, len(times) // 10)
    picked = times[::step] + ([times[-1]] if (len(times) - 1) % step else [])
    say("")
    say("over time (MB): sessions' RssAnon sum / max, worker of datefix:1 RssAnon, all workers' RssAnon / Pss, workers")
    say("%8s %10s %8s %12s %12s %10s %8s" % ("t s", "sess sum", "max", "datefix:1", "workers anon", "pss", "workers"))
    for t in picked:
        at = [r for r in rows if r[0] == t and r[1] == "load"]
        sess = [r[6] for r in at if r[3] == "session"]
        wk = [r for r in at if r[3] == "worker"]
        w1 = [r[6] for r in wk if r[4] == "worker datefix:1"]
        say("%8.0f %10.1f %8.1f %12s %12.1f %10.1f %8d" %
            (t, sum(sess) / 1024.0, max(sess or [0]) / 1024.0, "%.1f" % (w1[0] / 1024.0) if w1 else "-",
             sum(r[6] for r in wk) / 1024.0, sum(r[8] for r in wk) / 1024.0, len(wk)))
    say("")
    n_sess = sum(1 for t in table if t[0].startswith("session"))
    n_work = sum(1 for t in table if t[0].startswith("worker"))
    if n_sess < N_SESSIONS:
        bad("only %d of %d session backends were sampled from the first third to the end" % (n_sess, N_SESSIONS))
    if n_work == 0:
        bad("no inference worker lived from the first third to the end (datefix:1's should)")
    if grew:
        for g in grew:
            bad("memory grew: " + g)
    else:
        ok("memory flat: %d long-lived processes (%d sessions, %d workers, launcher) within 1.2 x + 20 MB of "
           "their RssAnon at T/3" % (len(table), n_sess, n_work))
    return table


def percentile(v, p):
    if not v:
        return float("nan")
    v = sorted(v)
    return v[min(len(v) - 1, int(p / 100.0 * len(v)))]


def summary(run, E, t_load, stat_rows, worker_exit1):
    say("")
    say("== summary (seed %d, %.0f s of load)" % (run.args.seed, t_load))
    say("serial run before the load: %d calls in %.1f s" % (E.serial_calls, E.serial_seconds))
    kinds = sorted(run.calls)
    cats = sorted({c for (_, c) in run.err_cat})
    head = "%-20s %7s %7s %9s %9s" % ("kind", "calls", "ok", "verified", "mismatch")
    for c in cats:
        head += " %12s" % c
    head += " %8s %8s"
    say(head % ("p50 s", "max s"))
    mism = collections.Counter(m.split(" ")[2] for m in run.mismatches)
    for k in kinds:
        line = "%-20s %7d %7d %9d %9d" % (k, run.calls[k], run.succ[k], run.verified[k], mism[k])
        for c in cats:
            line += " %12d" % run.err_cat[(k, c)]
        lat = run.latency[k]
        line += " %8.3f %8.2f" % (percentile(lat, 50), max(lat) if lat else float("nan"))
        say(line)
    tot = sum(run.calls.values())
    say("%-20s %7d %7d %9d %9d" % ("total", tot, sum(run.succ.values()), sum(run.verified.values()),
                                   len(run.mismatches)))
    say("errors by SQLSTATE: " + (", ".join("%s %s: %d" % (s, c, n) for (s, c), n in sorted(run.err_state.items()))
                                  or "none"))
    say("cancels sent: %d (%s); calls ended by a cancel: %d; by a statement_timeout: %d" %
        (sum(run.cancels_sent.values()), ", ".join("%s %d" % kv for kv in sorted(run.cancels_sent.items())),
         sum(n for (k, c), n in run.err_cat.items() if c == "cancel"),
         sum(n for (k, c), n in run.err_cat.items() if c == "timeout")))
    mid = sum(1 for v in run.terminated.values() if v[2] > 0)
    by_model = collections.Counter(v[1].split(":")[0] for v in run.terminated.values())
    say("worker terminations: %d (%d with requests in flight; %s); calls failed by them: %d; "
        "server log 'exited with exit code 1' lines for mms workers: %d" %
        (len(run.terminated), mid, ", ".join("%s %d" % kv for kv in sorted(by_model.items())),
         sum(n for (k, c), n in run.err_cat.items() if c == "worker-exit"), worker_exit1))
    per_model = collections.Counter(w[0] for w in run.workers_seen.values())
    name_count = collections.Counter()
    for m, n in per_model.items():
        name_count[m.split(":")[0]] += n
    say("worker processes seen (mms.workers every 0.25 s): %d; by name: %s; at most %d running at once" %
        (len(run.workers_seen), ", ".join("%s %d" % kv for kv in sorted(name_count.items())), run.max_running))
    say("worker restarts (processes beyond the first per model version): %d" %
        sum(n - 1 for n in per_model.values()))
    say("re-registration cycles: %d (datefix versions up to %d, live = %d)" %
        (run.cycles, max(run.versions_created), run.live))
    say("mms.stat_models:")
    say("  %-14s %8s %8s %8s %8s %10s %8s %8s" % ("model", "calls", "errors", "cancels", "loads", "mean_batch",
                                                 "max_bat", "mean_ms"))
    for r in stat_rows:
        say("  %-14s %8d %8d %8d %8d %10s %8d %8s" % (r[0], r[1], r[2], r[3], r[4],
                                                       "%.2f" % r[5] if r[5] is not None else "-", r[6],
                                                       "%.1f" % r[7] if r[7] is not None else "-"))


# ---------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--out", required=True)
    ap.add_argument("--files", required=True)
    ap.add_argument("--pgdata", required=True)
    ap.add_argument("--server-log", required=True)
    ap.add_argument("--private-shm", type=int, default=0)
    ap.add_argument("--libs-sha", help="sha256sum output for the installed libraries at the start")
    ap.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", "0")) or random.randrange(1, 10 ** 6))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    pm = postmaster_pid(args.pgdata)
    with connect(db="postgres") as c:
        pm_start = one(c, "SELECT pg_postmaster_start_time()")
    baseline = list_segments()
    if not args.private_shm:
        say("note: /dev/shm is shared with the rest of the machine (not root, or no unshare): "
            "segments of other clusters started meanwhile would be counted")
    say("== setup (seed %d): postmaster %d, %d DSM segments at start (%s)" %
        (args.seed, pm, len(baseline), ", ".join(str(s) for s in sorted(baseline.values()))))
    setup(args)
    run = Run(args)
    rng = random.Random(args.seed)
    say("== serial run")
    E = serial_run(args, rng)
    say("%d expected values in %.1f s" % (E.serial_calls, E.serial_seconds))

    roles = ["postgres"] * 6 + ["soak_user"] * 8 + ["soak_admin"] * 2
    sessions = [Session(run, E, i, roles[i]) for i in range(N_SESSIONS)]
    for s in sessions:
        s.open()
    run.t_start = time.time()
    threads = [threading.Thread(target=s.main, daemon=True, name=s.label) for s in sessions]
    threads += [threading.Thread(target=f, args=a, daemon=True, name=f.__name__) for f, a in
                ((monitor_main, (run,)), (chaos_main, (run,)), (cycler_main, (run,)), (sampler_main, (run, pm)))]
    say("== load: %d sessions for %d s" % (N_SESSIONS, args.seconds))
    take_sample(run, pm, "load")
    for t in threads:
        t.start()
    next_report = 60
    while run.now() < args.seconds:
        time.sleep(min(1.0, max(0.05, args.seconds - run.now())))
        if run.now() >= next_report:
            with run.lock:
                say("   t=%4.0f s: %d calls, %d ok, %d mismatches, %d unexpected errors, %d terminations, %d cycles" %
                    (run.now(), sum(run.calls.values()), sum(run.succ.values()), len(run.mismatches),
                     len(run.unexpected), len(run.terminated), run.cycles))
            next_report += 60
    take_sample(run, pm, "load")
    t_load = run.now()
    run.stop.set()
    t_stop = time.time()
    stuck = []
    for t in threads:
        t.join(max(1.0, SAFETY_TIMEOUT_MS / 1000.0 + 30 - (time.time() - t_stop)))
        if t.is_alive():
            stuck.append(t.name)
    say("== load stopped after %.0f s (threads joined in %.1f s)" % (t_load, time.time() - t_stop))

    # --- checks ---------------------------------------------------------------------------
    if stuck:
        bad("threads still in a call %d s after the load stopped: %s" % (SAFETY_TIMEOUT_MS / 1000 + 30, stuck))
    for h in run.harness_errors:
        bad("harness: " + h)

    time.sleep(3)       # the settle
    with connect(app="soak check") as c:
        rows = c.execute(POOLS_Q).fetchall()
        if pools_idle(rows):
            ok("3 s after the load, mms.pools shows nothing queued or running (%d pools)" % len(rows))
        else:
            later = wait_queued_zero(c, 30)
            bad("3 s after the load, requests still queued: %s; 30 s later: %s" % (rows, later))
        segs = list_segments()
        extra = {n: s for n, s in segs.items() if n not in baseline}
        cached = cache_rows(c)
        left, rows_left = match_segments(extra, [r for r in cached if r["state"] == "ready"])
        if not left and not rows_left:
            ok("every DSM segment beyond the %d at start is a cached model: %d segments, %d mms.cache rows (%s)" %
               (len(baseline), len(extra), len(cached), mb(sum(extra.values()))))
        else:
            bad("DSM segments and mms.cache disagree: segments without a cached model %s, cached models without "
                "a segment %s" % (left, rows_left))
        gone = [n for n in baseline if n not in segs]
        if gone:
            say("note: %d segments present at start are gone: %s" % (len(gone), gone))
        # one row per (database, role, model): summed per model; loads and batching are the served model's
        stat_rows = c.execute("SELECT model, sum(calls)::bigint, sum(errors)::bigint, sum(cancels)::bigint,"
                              " max(cache_loads), max(mean_batch), max(max_batch),"
                              " sum(total_ms) / nullif(sum(calls), 0)"
                              " FROM mms.stat_models GROUP BY model ORDER BY model").fetchall()

    slot_probe(run, E)
    serial_recheck(E)

    rows, reg, workers = unload_all()
    segs = list_segments()
    extra = {n: s for n, s in segs.items() if n not in baseline}
    unreg_rows = [r for r in rows if r["sha256"] not in reg]
    reg_rows = [r for r in rows if r["sha256"] in reg]
    if workers:
        bad("after mms_unload of every model, workers still run: %s" % workers)
    if not extra and not rows:
        ok("after mms_unload of every registered model only the %d segments of the start remain" % len(baseline))
    else:
        left, rows_left = match_segments(extra, rows)
        detail = []
        if reg_rows:
            detail.append("%d registered weights still cached: %s" % (len(reg_rows), [r["models"] for r in reg_rows]))
        if unreg_rows:
            def story(r):
                fmt = lambda t: datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3] \
                    if t else "?"
                vs = [int(m.rsplit(":", 1)[1]) for m in (r["models"] or []) if m.split("/", 1)[-1].startswith("datefix:")]
                return "%s %s (loaded at %s%s)" % (
                    r["sha256"][:12], r["models"], r["loaded_at"].astimezone(datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
                    if r["loaded_at"] else "?",
                    "".join("; datefix:%d unregister began %s, committed %s" %
                            (v, fmt(run.unregister_begun.get(v)), fmt(run.unregister_done.get(v))) for v in vs))
            detail.append("%d weights no registered version uses are still cached (%s in /dev/shm) and no "
                          "mms_unload can name them: %s" % (len(unreg_rows), mb(sum(r["bytes"] or 0 for r in unreg_rows)),
                                                           ", ".join(story(r) for r in unreg_rows)))
        if left:
            detail.append("%d segments belong to no mms.cache row: %s" % (len(left), left))
        if rows_left:
            detail.append("%d mms.cache rows have no segment: %s" % (len(rows_left), rows_left))
        bad("after mms_unload of every registered model %d segments remain beyond the %d of the start: %s" %
            (len(extra), len(baseline), "; ".join(detail)))

    # restarts
    try:
        pm_now = postmaster_pid(args.pgdata)
        with connect(db="postgres") as c:
            start_now = one(c, "SELECT pg_postmaster_start_time()")
    except Exception as e:      # noqa: BLE001
        pm_now, start_now = None, repr(e)
    crashes, leaks, worker_exit1 = log_problems(args.server_log)
    if pm_now == pm and start_now == pm_start and os.path.exists("/proc/%d" % pm) and not crashes:
        ok("zero cluster restarts: postmaster %d up since %s, no crash in the server log" % (pm, pm_start))
    else:
        bad("cluster restart: postmaster %s -> %s, start %s -> %s; log: %s" %
            (pm, pm_now, pm_start, start_now, crashes[:10]))
    if leaks:
        bad("server log shows leaked resources: %s" % leaks[:10])
    else:
        ok("server log shows no leaked-resource warnings")

    if args.libs_sha:
        def changed(prefix):
            out = []
            with open(args.libs_sha) as f:
                for line in f:
                    want, path = line.split()
                    try:
                        with open(prefix + path, "rb") as g:
                            got = hashlib.sha256(g.read()).hexdigest()
                    except OSError:
                        got = None
                    if got != want:
                        out.append(path)
            return out
        seen = changed("")          # what this cluster's processes load
        if seen:
            bad("the installed extension changed during the run (%s): workers started after that loaded "
                "another build than the preloaded mms.so; the results of this run are not valid" % seen)
        else:
            ok("the mms.so and mms_worker.so this cluster loads did not change during the run")
        if args.private_shm and changed("/proc/1/root"):
            say("note: the extension was re-installed during the run; this run kept the build it started with "
                "(pinned in its mount namespace)")

    # results
    if run.mismatches:
        by_kind = collections.Counter(m.split(" ")[2] for m in run.mismatches)
        bad("%d successful calls differ from the serial run (%s)" %
            (len(run.mismatches), ", ".join("%s %d" % kv for kv in sorted(by_kind.items()))))
        if run.score_diffs:
            say("   scores not bit-identical to the serial run (within tolerance unless listed): %d, |difference| up to %.3g (relative %.3g), median %.3g "
                "(relative %.3g)" % (len(run.score_diffs), max(d[0] for d in run.score_diffs),
                                     max(d[1] for d in run.score_diffs), percentile([d[0] for d in run.score_diffs], 50),
                                     percentile([d[1] for d in run.score_diffs], 50)))
        shown = collections.Counter()
        for m in run.mismatches:
            k = m.split(" ")[2]
            shown[k] += 1
            if shown[k] <= 4:
                say("   " + m)
    else:
        ok("all %d successful deterministic calls equal the serial run (%d with no serial value)" %
           (sum(run.verified.values()), sum(run.unverified.values())))
    if run.unexpected:
        bad("%d errors outside the allowed ones (cancel, timeout, terminated worker, unregistered version)" %
            len(run.unexpected))
        shown = collections.Counter()
        for u in run.unexpected:
            key = re.sub(r"\d+", "N", u.split("]", 1)[-1])[:120]
            shown[key] += 1
            if shown[key] <= 3:
                say("   " + u)
    else:
        ok("no error outside the allowed ones")
    with open(os.path.join(args.out, "problems.txt"), "w") as f:
        for m in run.mismatches:
            f.write("mismatch: %s\n" % m)
        for u in run.unexpected:
            f.write("unexpected: %s\n" % u)

    # the load did what it should
    need = ["gen", "array", "score", "sample", "beam", "stale-gen", "fixture-gen", "fixture-array", "fixture-score"]
    missing = [k for k in need if run.verified[k] == 0]
    n_cancel = sum(n for (k, c), n in run.err_cat.items() if c == "cancel")
    n_timeout = sum(n for (k, c), n in run.err_cat.items() if c == "timeout")
    n_wexit = sum(n for (k, c), n in run.err_cat.items() if c == "worker-exit")
    if missing or n_cancel == 0 or n_timeout == 0 or run.cycles == 0 or not run.terminated:
        bad("the load missed something: no verified %s; cancels %d, timeouts %d, cycles %d, terminations %d" %
            (missing, n_cancel, n_timeout, run.cycles, len(run.terminated)))
    else:
        ok("every kind of call succeeded and was verified; %d cancels, %d timeouts, %d cycles, %d terminations "
           "(%d calls failed by them)" % (n_cancel, n_timeout, run.cycles, len(run.terminated), n_wexit))
    idle = [s.label for s in sessions if run.session_progress[s.idx] == 0]
    if idle:
        bad("sessions with no successful call: %s" % idle)
    if run.max_running > 4:
        bad("%d workers running at once, more than mms.max_workers = 4: %s" % (run.max_running, run.max_running_at))
    else:
        ok("at most %d workers ran at once (mms.max_workers = 4)" % run.max_running)
    if run.term_failed:
        say("note: %d pg_terminate_backend calls found the worker already gone" % run.term_failed)

    # memory
    table = memory_check(run, t_load)
    with open(os.path.join(args.out, "rss.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(RSS_HEADER)
        w.writerows(sorted(run.rss_rows, key=lambda r: (r[0], r[3], r[2])))

    with open(os.path.join(args.out, "events.log"), "w") as f:
        for t, text in sorted(run.events):
            f.write("%s %s\n" % (datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M:%S.%f")[:-3], text))
    summary(run, E, t_load, stat_rows, worker_exit1)
    say("")
    say("soak: %s (%d failed checks); output in %s" % ("PASSED" if n_failed == 0 else "FAILED", n_failed, args.out))
    sys.exit(1 if n_failed else 0)


if __name__ == "__main__":
    main()
