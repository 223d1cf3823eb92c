#!/bin/bash
# test/sqlsmith/run.sh [SECONDS] — a SQLsmith campaign against mms (`make fuzz-sql`).
#
# Starts a throwaway cluster (tools/pg-cluster.sh) with mms preloaded, creates a
# database with models registered from the test fixtures, granted to PUBLIC and
# to an ordinary role, and tables of model references, inputs, options, token
# ids (test/sqlsmith/setup.sql); then runs SQLsmith (Debian package sqlsmith):
#   1. as that ordinary role (the hostile user), "focus": only the non-catalog
#      tables (--exclude-catalog) and the functions of smith_focus.pg_proc (mms_*
#      and a few dozen built-ins; see setup.sql), so that a good part of the
#      calls are mms calls; two SQLsmith processes at once (SQLSMITH_JOBS), so
#      that requests meet in the workers; 55% of SECONDS (default 600);
#   2. as that role again with every table and function it can see; 25%;
#   3. as a superuser, "focus" (reaches the management functions); 20%
#      (SQLSMITH_SU_SECONDS).
# Each pass prints what it ran (queries, how many name an mms function, calls
# executed), the distinct errors mms raised, and "ok: ..." or "FAILED: ..." with
# the offending query: a crash is a PANIC, a process terminated by a signal, a
# restart of all server processes, a changed postmaster pid, or SQLsmith losing
# its connection without pg_terminate_backend explaining it.
# Reports (and the offending queries in full) are copied to build/sqlsmith/.
# The installed extension is used as is (`make fuzz-sql` installs first).
# Environment: SQLSMITH_SEED (default random), SQLSMITH_SU_SECONDS, SQLSMITH_JOBS, KEEP=1.
set -u
seconds=${1:-600}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

if ! command -v sqlsmith >/dev/null; then
	echo "sqlsmith is not installed (apt-get install sqlsmith, or tools/install-deps.sh)"
	exit 1
fi
if [ ! -f "$(pg_config --sharedir)/extension/mms.control" ]; then
	echo "mms is not installed (make install)"
	exit 1
fi

. tools/pg-cluster.sh
. test/sqlsmith/lib.sh

files="$tmp/files"
mkdir -p "$files"
cp test/fixtures/*.gguf "$files/"
chmod -R a+rX "$files"

echo "== cluster in $tmp (port $port)"
# room for mms's workers beside parallel query; workers stay up between queries
cluster_start mms.threads_per_worker=1 max_worker_processes=16 mms.max_workers=6 || exit 1
smith_cluster=$tmp
smith_work=$tmp/sqlsmith
db=mms_sqlsmith
smith_setup $db "$files" || { echo "FAILED: setup of $db"; exit 1; }

su_seconds=${SQLSMITH_SU_SECONDS:-$((seconds / 5))}
full_seconds=$((seconds / 4))
focus_seconds=$((seconds - su_seconds - full_seconds))
failed=0
passes=3
SQLSMITH_JOBS=${SQLSMITH_JOBS:-2} smith_pass user-focus $db "$smith_role" focus $focus_seconds 100000000 \
	--exclude-catalog || failed=$((failed + 1))
smith_pass user-full $db "$smith_role" full $full_seconds 100000000 || failed=$((failed + 1))
if [ "$su_seconds" -gt 0 ]; then
	smith_pass superuser-focus $db postgres focus "$su_seconds" 100000000 --exclude-catalog || failed=$((failed + 1))
else
	passes=2
fi

mkdir -p "$root/build/sqlsmith"
cp "$smith_work"/*.report "$root/build/sqlsmith/" 2>/dev/null
echo "== reports in build/sqlsmith/"
echo "sqlsmith campaign: $passes passes, $failed failed"
[ "$failed" = 0 ]
