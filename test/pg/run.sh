#!/bin/bash
# test/pg/run.sh — the extension's test harness: installs mms, starts a
# throwaway PostgreSQL 15 cluster in a temporary directory, runs pg_regress
# (sql/, expected/) and the scripted tests (pg_dump/pg_restore round trip,
# mms_tokenize against build/mms-run), prints "N passed, N failed", and stops
# the cluster and removes the directory whatever happens.
#
# Run from anywhere as root (CI does; `make test` and `make pg-test` call it):
# initdb refuses root, so the server runs as the unprivileged `postgres` user.
# As a non-root user the server runs as that user, and `make install` must
# already have been done by someone allowed to.
# KEEP=1 keeps the directory (and stops nothing) for debugging; MMS_NO_INSTALL=1
# skips the `make install` (when the installed extension is already current).
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }
bad() { failed=$((failed + 1)); echo "FAILED: $*"; }

if [ "$(id -u)" = 0 ] && [ "${MMS_NO_INSTALL:-0}" != 1 ]; then
	make -s install >/dev/null || { echo "make install failed"; exit 1; }
fi
. tools/pg-cluster.sh

# Model files the server may read (mms_import) and the client may \lo_import.
files="$tmp/files"
mkdir -p "$files/bad"
cp test/fixtures/*.gguf "$files/"
python3 test/pg/make_bad_gguf.py test/fixtures/flan_gated.gguf "$files/bad" test/fixtures/t5_relu_tied.gguf || { echo "could not build bad files"; exit 1; }
chmod -R a+rX "$files"

echo "== cluster in $tmp (port $port)"
cluster_start mms.max_new_tokens=4096 mms.threads_per_worker=2 max_prepared_transactions=4 mms.max_stats=100 || exit 1
export MMS_TEST_DATA="$files" MMS_ROOT="$root"
mkdir -p "$tmp/regress"

# --- pg_regress -----------------------------------------------------------------
echo "== pg_regress"
make -s installcheck REGRESS_OUT="$tmp/regress" >"$tmp/regress.log" 2>&1
cat "$tmp/regress.log"
n_ok=$(grep -cE '^(test| ) +[a-z_0-9]+ +\.\.\. ok' "$tmp/regress.log")
n_bad=$(grep -cE '\.\.\. FAILED' "$tmp/regress.log")
passed=$((passed + n_ok))
failed=$((failed + n_bad))
if [ "$n_ok" = 0 ] && [ "$n_bad" = 0 ]; then
	bad "pg_regress did not run"
fi
if [ -s "$tmp/regress/regression.diffs" ]; then
	cat "$tmp/regress/regression.diffs"
	cp "$tmp/regress/regression.diffs" "$root/build/regression.diffs" 2>/dev/null
fi

# --- scripted tests --------------------------------------------------------------
for t in test/pg/t_*.sh test/pg/t_*.py; do
	echo "== $t"
	# each script prints "ok: ..." / "FAILED: ..." lines
	case $t in
		*.py) out=$(TMPDIR_PG="$tmp" python3 "$t" 2>&1) || out+=$'\nFAILED: '"$t exited with an error" ;;
		*) out=$(TMPDIR_PG="$tmp" bash "$t" 2>&1) ;;
	esac
	echo "$out"
	passed=$((passed + $(grep -c '^ok: ' <<<"$out")))
	failed=$((failed + $(grep -c '^FAILED: ' <<<"$out")))
done

if grep -qE 'PANIC|server process .* was terminated|terminated by signal|TRAP:' "$tmp/server.log"; then
	bad "server log shows a crash"
	grep -E 'PANIC|terminated|TRAP:' "$tmp/server.log"
elif grep -qiE 'WARNING: .*(leak|not closed|still referenced)' "$tmp/server.log"; then
	bad "server log shows leaked resources"
	grep -iE 'WARNING: .*(leak|not closed|still referenced)' "$tmp/server.log"
else
	ok "server log shows no crash and no leaked resources"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
