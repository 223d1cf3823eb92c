#!/usr/bin/env python3
"""test/sqlsmith/analyze.py — judges one SQLsmith pass (called by lib.sh).

Inputs:
  --out      SQLsmith's stdout and stderr together: with --dump-all-queries and
             --verbose, every query (ending ";\\n", printed before it runs) followed
             by one progress character: . ok, e error, S syntax error, C connection
             lost; now and then a report block.
  --log      the server log written during the pass (default log_line_prefix
             '%m [%p] '; the role's log_error_verbosity = verbose puts the
             SQLSTATE in front of each message and a LOCATION: line after it).
  --src      the extension's sources: a LOCATION in one of their functions marks
             an error raised by mms itself.
  --stats-before/--stats-after  calls of each mms function (pg_stat_user_functions).
  --postmaster-before/--postmaster-after  the postmaster's pid.

Prints a summary and one line "ok: sqlsmith N queries, M calling mms, 0 crashes"
or "FAILED: ..." (with the offending queries); writes everything to --report.
Exit status 1 on FAILED.
"""
import argparse
import collections
import os
import re
import sys

# SQLsmith 1.4 prints "C" for a lost connection (older versions "c"), "e" for
# any other error (statement timeouts included), "S"/"s" for a syntax error
STATUS = {".": "ok", "e": "error", "t": "timeout", "s": "syntax", "S": "syntax", "c": "broken", "C": "broken"}
QUERY_START = re.compile(r"^([.etscSC]*)\s*(select|insert|update|delete|merge|with|values|table)\b", re.I)
MMS_CALL = re.compile(r"\b(mms_[a-z_]+|mms\.(?:resolve|cache_rows|worker_rows|stat_model_rows))\s*\(", re.I)
# setup.sql's views that call mms_* on each of their rows
MMS_VIEW = re.compile(r"\bpublic\.(generations|probes)\b", re.I)
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[(\d+)\] ([A-Z]+):  (.*)$")
CRASH = re.compile(r"terminated by signal|was terminated by exception|exited with exit code (?![01]\b)\d+"
                   r"|all server processes terminated|terminating any other active server processes"
                   r"|server process .* was terminated")
CRASH_ROOT = re.compile(r"terminated by signal|was terminated by exception|exited with exit code (?![01]\b)\d+")
ELOG_LIKE = re.compile(r"cache lookup failed|unexpected|unrecognized|invalid memory alloc|should not|"
                       r"could not find|corrupt|null pointer|assert|internal|bogus|mismatch|unknown|"
                       r"wrong|impossible|not initialized|already|leak", re.I)


def parse_sqlsmith(path):
    """[(query, status)] in order; status None when the pass ended while it ran."""
    text = open(path, encoding="utf-8", errors="replace").read()
    chunks = text.split(";\n")
    queries = []
    for i, chunk in enumerate(chunks):
        if i > 0:
            # the previous query's progress character, unless the chunk starts
            # right with the next query (the pass ended while it ran)
            s = chunk.lstrip("\n")
            m = QUERY_START.match(s)
            if queries and s[:1] in STATUS and not (m and m.group(1) == ""):
                queries[-1][1] = STATUS[s[0]]
        if i == len(chunks) - 1:
            break  # what follows the last ";\n" is no query
        lines = chunk.split("\n")
        for j, line in enumerate(lines):
            m = QUERY_START.match(line)
            if m:
                q = "\n".join([line[len(m.group(1)):].lstrip()] + lines[j + 1:])
                queries.append([q, None])
                break
    return queries


class Event:
    def __init__(self, pid, level, msg):
        self.pid, self.level, self.msg = pid, level, msg
        self.extra = {}  # DETAIL, HINT, CONTEXT, LOCATION, STATEMENT

    @property
    def sqlstate(self):
        m = re.match(r"([0-9A-Z]{5}): ", self.msg)
        return m.group(1) if m else None

    @property
    def text(self):
        return re.sub(r"^[0-9A-Z]{5}: ", "", self.msg)


def parse_log(path):
    events, raw = [], []
    last_by_pid = {}
    cur = None
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if line.startswith("\t") and cur is not None:
            key = cur[1]
            if key is None:
                cur[0].msg += "\n" + line[1:]
            else:
                cur[0].extra[key] += "\n" + line[1:]
            continue
        m = LOG_LINE.match(line)
        if not m:
            if line.strip():
                raw.append(line)
            cur = None
            continue
        pid, level, msg = int(m.group(1)), m.group(2), m.group(3)
        if level in ("DETAIL", "HINT", "CONTEXT", "LOCATION", "STATEMENT", "QUERY") and pid in last_by_pid:
            ev = last_by_pid[pid]
            ev.extra[level] = msg
            cur = (ev, level)
            continue
        ev = Event(pid, level, msg)
        events.append(ev)
        last_by_pid[pid] = ev
        cur = (ev, None)
    return events, raw


def mms_functions(src):
    """names of the C functions in the extension's sources"""
    names = set()
    files = set()
    for sub in ("pg", "engine"):
        d = os.path.join(src, sub)
        if not os.path.isdir(d):
            continue
        for f in os.listdir(d):
            if f.endswith(".c"):
                files.add(f)
                body = open(os.path.join(d, f), encoding="utf-8", errors="replace").read()
                # definitions: "name(" at the start of a line (the return type on
                # the line before) or after a type on the same line
                names.update(re.findall(r"^(\w+)\(", body, re.M))
                names.update(re.findall(r"^\w[\w ]*[ \*](\w+)\(", body, re.M))
    return names, files


def from_mms(ev, names, files):
    loc = ev.extra.get("LOCATION", "")
    m = re.match(r"(\w+), (\S+):\d+", loc)
    return bool(m) and m.group(2) in files and m.group(1) in names


def read_stats(path):
    stats = {}
    try:
        for line in open(path):
            if "|" in line:
                name, calls = line.rstrip("\n").rsplit("|", 1)
                stats[name] = int(calls or 0)
    except OSError:
        pass
    return stats


def short(msg, n=160):
    return msg if len(msg) <= n else msg[:n] + f"... ({len(msg)} characters)"


def one_line(q, n=300):
    q = " ".join(q.split())
    return q if len(q) <= n else q[:n] + " ..."


def main():
    ap = argparse.ArgumentParser()
    for a in ("label", "seed", "sqlsmith-rc", "log", "src", "stats-before", "stats-after",
              "postmaster-before", "postmaster-after", "report"):
        ap.add_argument("--" + a, required=True)
    ap.add_argument("--out", action="append", required=True, help="one per SQLsmith process")
    args = ap.parse_args()

    lines = []

    def say(s=""):
        lines.append(s)

    queries = [q for out in args.out for q in parse_sqlsmith(out)]
    n = len(queries)
    by_status = collections.Counter(st or "unfinished" for _, st in queries)
    direct = sum(1 for q, _ in queries if MMS_CALL.search(q))
    via_views = sum(1 for q, _ in queries if MMS_VIEW.search(q) and not MMS_CALL.search(q))
    mms_queries = [(q, st) for q, st in queries if MMS_CALL.search(q) or MMS_VIEW.search(q)]
    fn_in_queries = collections.Counter()
    for q, _ in mms_queries:
        for f in set(x.lower() for x in MMS_CALL.findall(q)) | set("view " + x.lower() for x in MMS_VIEW.findall(q)):
            fn_in_queries[f] += 1
    mms_status = collections.Counter(st or "unfinished" for _, st in mms_queries)

    before, after = read_stats(args.stats_before), read_stats(args.stats_after)
    executed = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    executed = {k: v for k, v in executed.items() if v}

    events, raw = parse_log(args.log)
    names, files = mms_functions(args.src)

    # --- crashes -------------------------------------------------------------------
    crash_events = [e for e in events if e.level == "PANIC" or (e.level == "LOG" and CRASH.search(e.msg))]
    # the processes that died (not what the postmaster did about it)
    n_crashed = sum(1 for e in crash_events if e.level == "PANIC" or CRASH_ROOT.search(e.msg))
    traps = [r for r in raw if "TRAP:" in r or "Segmentation" in r or "AddressSanitizer" in r]
    pm_changed = args.postmaster_before != args.postmaster_after
    crashed_queries = []
    for e in crash_events:
        d = e.extra.get("DETAIL", "")
        if d.startswith("Failed process was running: "):
            crashed_queries.append(d[len("Failed process was running: "):])
    broken = [q for q, st in queries if st == "broken"]
    fatals = [e for e in events if e.level == "FATAL"]
    admin_terminated = [e for e in fatals if "terminating connection due to administrator command" in e.msg]
    # expected: a parallel worker stopped with its leader's query (statement
    # timeout), a client gone, the sessions a crash takes down (counted there)
    other_fatals = [e for e in fatals if e not in admin_terminated
                    and not re.search(r'terminating background worker "parallel worker" due to administrator command'
                                      r'|connection to client lost|terminating connection because of crash', e.msg)]
    worker_exits = [e for e in events if e.level == "LOG" and "background worker" in e.msg and "exited" in e.msg]

    # --- errors --------------------------------------------------------------------
    errors = [e for e in events if e.level == "ERROR"]
    mms_errors = collections.Counter()
    mms_error_example = {}
    for e in errors:
        if from_mms(e, names, files):
            key = (e.sqlstate or "?????", short(e.text.split("\n")[0]), e.extra.get("LOCATION", ""))
            mms_errors[key] += 1
            mms_error_example.setdefault(key, e.extra.get("STATEMENT", "(no statement: not a query's error)"))
    internal = collections.Counter()
    internal_example = {}
    for e in errors:
        if (e.sqlstate or "").startswith("XX"):
            key = (e.sqlstate, short(e.text.split("\n")[0]), e.extra.get("LOCATION", ""))
            internal[key] += 1
            internal_example.setdefault(key, e.extra.get("STATEMENT", ""))
    mms_stmt_errors = collections.Counter()
    for e in errors:
        st = e.extra.get("STATEMENT", "")
        if MMS_CALL.search(st) and not from_mms(e, names, files):
            mms_stmt_errors[(e.sqlstate or "?????", short(e.text.split("\n")[0], 120))] += 1
    # SQLsmith sends ROLLBACK before each BEGIN: "there is no transaction in progress"
    warnings = collections.Counter(
        (short(e.text.split("\n")[0]), e.extra.get("LOCATION", "")) for e in events
        if e.level == "WARNING" and e.sqlstate != "25P01")
    worker_side = [e for e in errors if "STATEMENT" not in e.extra]

    # --- report --------------------------------------------------------------------
    say(f"sqlsmith pass {args.label}: {len(args.out)} process(es), seed {args.seed}, "
        f"sqlsmith exit status {args.sqlsmith_rc}")
    say(f"  queries: {n} ({', '.join(f'{k} {v}' for k, v in by_status.most_common())})")
    say(f"  queries calling mms: {len(mms_queries)} ({direct} directly, {via_views} only through the views"
        f" generations/probes; {', '.join(f'{k} {v}' for k, v in mms_status.most_common())})")
    say("  mms functions (and views) named in queries: " + ", ".join(f"{k} {v}" for k, v in fn_in_queries.most_common()))
    say(f"  mms function calls executed (pg_stat_user_functions): {sum(executed.values())}")
    for k, v in sorted(executed.items(), key=lambda kv: -kv[1]):
        say(f"    {v:8d}  {k}")
    say(f"  server log: {len(errors)} errors, {len(events)} messages;"
        f" {len(fatals)} FATAL ({len(admin_terminated)} pg_terminate_backend);"
        f" {len(worker_exits)} background worker exits")
    say(f"  distinct errors raised by mms code: {len(mms_errors)} ({sum(mms_errors.values())} in all)")
    for (state, msg, loc), c in mms_errors.most_common():
        say(f"    {c:6d}  {state}  {msg}    [{loc}]")
    # errors of mms worth a look: internal SQLSTATEs, elog()-style wording
    # (judged on the message without its quoted parts, which hold user data)
    suspicious = [(k, c) for k, c in mms_errors.items()
                  if k[0].startswith("XX") or ELOG_LIKE.search(re.sub(r'"[^"]*"', '""', k[1]))]
    if suspicious:
        say("  mms errors that look like bugs (internal SQLSTATE or elog-style message):")
        for (state, msg, loc), c in suspicious:
            say(f"    {c:6d}  {state}  {msg}    [{loc}]")
            say(f"            query: {one_line(mms_error_example[(state, msg, loc)], 600)}")
    if mms_stmt_errors:
        say("  errors in queries calling mms, raised elsewhere (top 15):")
        for (state, msg), c in mms_stmt_errors.most_common(15):
            say(f"    {c:6d}  {state}  {msg}")
    if internal:
        say("  internal errors (SQLSTATE XX...):")
        for key, c in internal.most_common():
            say(f"    {c:6d}  {key[0]}  {key[1]}    [{key[2]}]")
            say(f"            query: {one_line(internal_example[key], 600)}")
    if warnings:
        say("  warnings:")
        for (msg, loc), c in warnings.most_common(20):
            say(f"    {c:6d}  {msg}    [{loc}]")
    if worker_side:
        say("  errors logged without a statement (workers, launcher, timeouts between statements):")
        for ev, c in collections.Counter(f"{e.sqlstate} {e.text.splitlines()[0]} [{e.extra.get('LOCATION', '')}]"
                                         for e in worker_side).most_common(20):
            say(f"    {c:6d}  {ev}")
    if worker_exits:
        say("  background worker exits:")
        for ev, c in collections.Counter(re.sub(r"PID \d+", "PID n", e.msg) for e in worker_exits).most_common(10):
            say(f"    {c:6d}  {ev}")

    problems = []
    if n == 0:
        problems.append("sqlsmith ran no query")
        for out in args.out:
            tail = open(out, encoding="utf-8", errors="replace").read()[-2000:]
            say(f"  {out} ends:\n" + tail)
    if crash_events or traps or pm_changed:
        problems.append(f"{n_crashed} crashes ({len(crash_events)} crash messages in the server log"
                        + (", postmaster pid changed" if pm_changed else "") + ")")
        say("  CRASH messages:")
        for e in crash_events:
            say(f"    {e.level}: {e.msg}")
            for k, v in e.extra.items():
                say(f"      {k}: {v}")
        for r in traps:
            say(f"    {r}")
    unexplained_broken = len(broken) - len(admin_terminated) if not crash_events else 0
    if other_fatals:
        problems.append(f"{len(other_fatals)} FATAL errors")
        say("  FATAL:")
        for e in other_fatals:
            say(f"    {short(e.msg, 400)}  [{e.extra.get('LOCATION', '')}]")
            if "STATEMENT" in e.extra:
                say(f"      query: {one_line(e.extra['STATEMENT'], 2000)}")
    if unexplained_broken > 0:
        problems.append(f"sqlsmith lost its connection {len(broken)} times"
                        f" ({len(admin_terminated)} explained by pg_terminate_backend)")
    if broken:
        say("  queries that lost the connection (last 5):")
        for q in broken[-5:]:
            say(f"    {one_line(q, 4000)}")
    for q in crashed_queries:
        say(f"  query running in the crashed process: {one_line(q, 4000)}")
    if not (crash_events or traps or pm_changed) and len(admin_terminated) >= len(broken) and broken:
        say(f"  ({len(broken)} lost connections, each explained by a pg_terminate_backend of a sqlsmith session)")

    report = "\n".join(lines)
    with open(args.report, "w") as f:
        f.write(report + "\n")
        if crashed_queries or broken:
            f.write("\n-- full offending queries\n")
            for q in crashed_queries + broken:
                f.write(q + ";\n\n")
    print(report)
    if problems:
        culprit = crashed_queries[:1] or broken[:1]
        print(f"FAILED: sqlsmith {args.label}: " + "; ".join(problems)
              + (f"; query: {one_line(culprit[0], 1000)}" if culprit else "")
              + f" (see {args.report})")
        return 1
    print(f"ok: sqlsmith {args.label}: {n} queries, {len(mms_queries)} calling mms "
          f"({sum(executed.values())} mms calls executed), 0 crashes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
