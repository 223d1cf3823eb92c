#!/bin/bash
# test/soak/run.sh [SECONDS] — the soak test (`make soak`, SOAK_SECONDS default
# 600): a throwaway cluster (tools/pg-cluster.sh) with mms.max_workers = 4,
# one thread per worker and a 5 s worker idle timeout; 16 sessions in three
# roles mix every kind of call for SECONDS while other threads cancel calls,
# run statement_timeout-limited calls, re-register a second version of the
# model (import a copy, move the alias, unregister the old one) and terminate
# inference workers. Then test/soak/soak.py checks: no cluster restart, no
# request slot or shared-memory segment left behind, every successful
# deterministic call equal to a serial run of the same input, flat memory.
# Prints "ok: ..." / "FAILED: ..." lines and a summary; exits 1 on a failure.
# Output (RSS curve, summary, server log): test/soak/out/ (not committed).
#
# Uses the installed extension (`make soak` runs `make install` first).
# As root the whole run happens in a private mount namespace with its own
# /dev/shm, so that the DSM segments counted are this cluster's alone (other
# clusters on the machine have theirs in the real /dev/shm), and with the
# installed extension pinned (bind-mounted copies), so that a `make install`
# during the run cannot mix two builds in this cluster.
# SOAK_SEED=N repeats a run's random choices (the seed is printed; timing
# still differs). KEEP=1 keeps the cluster (see tools/pg-cluster.sh); its socket is reachable
# from outside, its DSM segments live in the namespace's /dev/shm.
set -u
secs=${1:-600}
case $secs in '' | *[!0-9]*) echo "usage: $0 [SECONDS]"; exit 2 ;; esac
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

if [ "$(id -u)" = 0 ] && [ "${MMS_SOAK_NS:-0}" != 1 ] &&
	command -v unshare >/dev/null && unshare -m --propagation private true 2>/dev/null; then
	exec env MMS_SOAK_NS=1 unshare -m --propagation private "$0" "$@"
fi
private_shm=0
if [ "${MMS_SOAK_NS:-0}" = 1 ]; then
	mount -t tmpfs -o size=8g,mode=1777 soak-shm /dev/shm || { echo "could not mount a private /dev/shm"; exit 1; }
	private_shm=1
fi

# psycopg 3 from Debian (python3-psycopg): Debian's python3 may not be first in PATH
py=
for p in /usr/bin/python3 python3; do
	if "$p" -c 'import psycopg' 2>/dev/null; then py=$p; break; fi
done
if [ -z "$py" ] && [ "$(id -u)" = 0 ]; then
	apt-get install -y -q python3-psycopg >/dev/null 2>&1
	/usr/bin/python3 -c 'import psycopg' 2>/dev/null && py=/usr/bin/python3
fi
[ -n "$py" ] || { echo "FAILED: no python3 with psycopg 3 (apt-get install python3-psycopg)"; exit 1; }

out=$root/test/soak/out
mkdir -p "$out"

. tools/pg-cluster.sh

# model files the server reads (mms_import)
files="$tmp/files"
mkdir -p "$files"
cp models/datefix.gguf models/datefix_heldout.tsv test/fixtures/flan_gated.gguf test/fixtures/t5_relu_tied.gguf "$files/"
# The "second version" the cycles import: the same model with one more metadata
# key, so that its bytes (hence its served entry) are its own: served models
# are keyed by sha256, and a byte copy would share datefix:1's.
python3 - test/pg "$root/models/datefix.gguf" "$files/datefix_copy.gguf" <<'PY' || exit 1
import sys
sys.path.insert(0, sys.argv[1])
import make_bad_gguf as gguf
m = gguf.parse(open(sys.argv[2], "rb").read())
m["kvs"].append([b"test.copy_of", gguf.STR, b"datefix"])
open(sys.argv[3], "wb").write(gguf.write(m))
PY
chmod -R a+rX "$files"

# the installed libraries this cluster runs: checked again at the end (a
# `make install` during the run would mix two builds: workers load
# mms_worker.so afresh each time they start)
libdir=$(pg_config --pkglibdir)
extdir=$(pg_config --sharedir)/extension
if [ $private_shm = 1 ]; then
	# In the private namespace, pin that build: bind-mount copies of the
	# library and extension directories over them, so that a `make install` by
	# someone else meanwhile does not reach this cluster. (Not the files one by
	# one: install unlinks the old file, which detaches a mount on it.)
	mkdir -p "$tmp/pinned"
	for d in "$libdir" "$extdir"; do
		c="$tmp/pinned/$(basename "$d")"
		cp -a "$d" "$c" && mount --bind "$c" "$d" || { echo "could not pin $d"; exit 1; }
	done
fi
sha256sum "$libdir/mms.so" "$libdir/mms_worker.so" >"$tmp/libs.sha256"

echo "== soak: cluster in $tmp (port $port), $secs s of load, private /dev/shm: $private_shm"
cluster_start mms.max_workers=4 mms.threads_per_worker=1 mms.worker_idle_timeout=5s \
	mms.max_new_tokens=2048 max_worker_processes=16 max_connections=100 \
	max_parallel_workers_per_gather=0 log_min_error_statement=panic || exit 1
[ -d "$tmp/pinned" ] && chown -R root "$tmp/pinned"   # cluster_start gave $tmp to the server user

set -o pipefail
rc=0
"$py" -u test/soak/soak.py --seconds "$secs" --out "$out" --files "$files" \
	--pgdata "$tmp/data" --server-log "$tmp/server.log" --private-shm "$private_shm" --libs-sha "$tmp/libs.sha256" 2>&1 | tee "$out/soak.log" || rc=$?
cp "$tmp/server.log" "$out/server.log" 2>/dev/null
exit $rc
