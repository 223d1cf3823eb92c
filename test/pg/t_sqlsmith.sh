#!/bin/bash
# t_sqlsmith.sh — a short SQLsmith run in the cluster of test/pg/run.sh, in a
# database of its own (test/sqlsmith/setup.sql, dropped afterwards): an ordinary
# role granted the models fires random queries (mms_* and a few dozen built-ins:
# the "focus" of setup.sql) for SQLSMITH_SECONDS (default 60) or 20000 queries.
# Passes when nothing crashed and no connection was lost; else the whole
# analysis is printed and the pass's files are copied to build/sqlsmith/.
# The long campaign is `make fuzz-sql` (test/sqlsmith/run.sh).
set -u
root=${MMS_ROOT:-$(pwd)}
if ! command -v sqlsmith >/dev/null; then
	echo "ok: sqlsmith not installed, skipped"
	exit 0
fi
. "$root/test/sqlsmith/lib.sh"
smith_cluster=$TMPDIR_PG
smith_work=$TMPDIR_PG/sqlsmith
db=mms_sqlsmith_short

# the server (user postgres) reads the fixtures from MMS_TEST_DATA
if ! smith_setup $db "$MMS_TEST_DATA"; then
	echo "FAILED: sqlsmith setup of $db"
	smith_teardown $db
	exit 0
fi
out=$(smith_pass short $db "$smith_role" focus "${SQLSMITH_SECONDS:-60}" 20000 --exclude-catalog 2>&1)
if grep -q '^FAILED: ' <<<"$out"; then
	echo "$out"
	# the cluster's directory goes away with it: keep the evidence
	mkdir -p "$root/build/sqlsmith"
	cp "$smith_work"/short.* "$root/build/sqlsmith/" 2>/dev/null
else
	grep -E '^(ok|FAILED): |^  (queries|mms function calls executed)' <<<"$out"
fi
smith_teardown $db
