#!/bin/bash
# t_shared_models.sh — weights exist once per cluster, and inference workers
# hold no database connection; in the cluster of test/pg/run.sh:
#   - two databases import the same file under different names: after one call
#     from each, one mms.cache row (keyed by the file's sha256) lists both
#     registrations, one mms.pools row and one worker serve both, and the
#     answers equal mms-run's;
#   - inference workers show backend_type 'mms worker' and datname NULL in
#     pg_stat_activity, and no background process stays connected to a
#     database once its model is loaded;
#   - CREATE DATABASE ... TEMPLATE a database whose model is served succeeds
#     with its workers up, and again while a long generation from the other
#     database is in flight; so do ALTER DATABASE ... RENAME and DROP DATABASE,
#     and the other database (and the copy) go on serving the same bytes.
# The file is a copy of flan_gated_bf16.gguf with one more metadata key (a sha256
# of its own), so that no cache entry left by another script can blur the counts.
# Waits are polls with a generous bound; nothing here asserts speed.
set -u
# A safety net, far above anything here: a statement that hangs (DDL waiting
# on a process that never answers, a request nobody serves) ends as a FAILED
# line instead of a stuck run.
export PGOPTIONS="${PGOPTIONS:-} -c statement_timeout=180s"
data=$MMS_TEST_DATA
root=${MMS_ROOT:-$(pwd)}
work=$TMPDIR_PG/shared_models
mkdir -p "$work"
ok() { echo "ok: $*"; }
bad() { echo "FAILED: $*"; }

a=mms_shared_a
a2=mms_shared_a2
b=mms_shared_b
c=mms_shared_c
c2=mms_shared_c2
sql_on() { local db=$1; shift; psql -X -q -At -v ON_ERROR_STOP=1 -d "$db" "$@"; }
admin() { sql_on postgres "$@"; }
# Database DDL waits for other processes: a tighter bound than the net above.
# When it fails, the server log may say which process it waited for.
ddl() {
	local pid log=$TMPDIR_PG/server.log n0
	n0=$(wc -l <"$log" 2>/dev/null || echo 0)
	PGOPTIONS="$PGOPTIONS -c statement_timeout=${DDL_TIMEOUT:-60s}" sql_on postgres -c "$1" 2>&1 && return
	for pid in $(tail -n +$((n0 + 1)) "$log" 2>/dev/null | grep -oE 'waiting for backend with PID [0-9]+' | awk '{print $NF}' | sort -u); do
		echo "(the server log says it waited for PID $pid: $(ps -o args= -p "$pid" 2>/dev/null || echo gone))"
	done
	return 1
}
run_cli() { "$root/build/mms-run" --model "$file" "$@"; }
# own_copy FIXTURE NAME: prints the path of $work/NAME.gguf, FIXTURE with one
# more metadata key: the same model under a sha256 of this script's own. The
# cache and its events are cluster-wide, and other scripts register, serve and
# pin the fixtures themselves.
own_copy() {
	python3 - "$root/test/pg" "$data/$1.gguf" "$work/$2.gguf" "$2" <<'PY' || return 1
import sys
sys.path.insert(0, sys.argv[1])
import make_bad_gguf as gguf
m = gguf.parse(open(sys.argv[2], "rb").read())
m["kvs"].append([b"test.copy_of", gguf.STR, sys.argv[4].encode()])
open(sys.argv[3], "wb").write(gguf.write(m))
PY
	chmod a+r "$work/$2.gguf"
	echo "$work/$2.gguf"
}
# seconds of work for the server: 4096 tokens, 16 beams
LONG='{"max_new_tokens": 4096, "min_new_tokens": 4096, "num_beams": 16}'
SHORT='{"max_new_tokens": 16}'

# wait_until BOUND_S DB QUERY: polls QUERY (answering t or f) until it says t.
# Returns 0 then, 1 after BOUND_S seconds, 2 at once if the query fails (a
# missing view, say: no point in waiting); $poll_err says what was last seen.
wait_until() {
	local deadline=$((SECONDS + $1)) db=$2 q=$3 out
	while :; do
		out=$(sql_on "$db" -c "$q" 2>&1) || { poll_err=$out; return 2; }
		[ "$out" = t ] && return 0
		[ $SECONDS -ge $deadline ] && { poll_err="after $1 s the answer is still '$out'"; return 1; }
		sleep 0.2
	done
}
# true while a client's query matching PATTERN is running
in_flight() {
	[ "$(admin -c "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'
		AND query LIKE '%$1%' AND pid <> pg_backend_pid()")" -ge 1 ]
}

file=$(own_copy flan_gated_bf16 shared_models) || { bad "could not copy flan_gated_bf16.gguf"; exit 0; }
sha=$(sha256sum "$file" | cut -c1-64)

bg_pids=""
cleanup() {
	for p in $bg_pids; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	for d in $a $a2 $b $c $c2; do
		DDL_TIMEOUT=30s ddl "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1
	done
}
trap cleanup EXIT
cleanup

for d in $a $b; do
	ddl "CREATE DATABASE $d" >/dev/null && sql_on $d -c "CREATE EXTENSION mms" >/dev/null ||
		{ bad "setup of database $d"; exit 0; }
done
sql_on $a -c "SELECT mms_import('alpha', '$file')" >/dev/null &&
	sql_on $b -c "SELECT mms_import('beta', '$file')" >/dev/null || { bad "mms_import of $file"; exit 0; }
got=$(sql_on $a -c "SELECT sha256 FROM mms.models WHERE name = 'alpha'")$(sql_on $b -c "SELECT sha256 FROM mms.models WHERE name = 'beta'")
[ "$got" = "$sha$sha" ] && ok "both registrations record the file's sha256" ||
	bad "mms.models.sha256 of alpha and beta: '$got', want the file's sha256sum $sha twice"

# --- one copy of the bytes, one pool -------------------------------------------------------
want=$(run_cli --max-new-tokens 16 "shared from a")
got=$(sql_on $a -c "SELECT mms_generate('alpha', 'shared from a', '$SHORT')" 2>&1)
[ "$got" = "$want" ] && ok "database $a gets mms-run's result" || bad "alpha in $a: got '$got', want '$want'"
want=$(run_cli --max-new-tokens 16 "shared from b")
got=$(sql_on $b -c "SELECT mms_generate('beta', 'shared from b', '$SHORT')" 2>&1)
[ "$got" = "$want" ] && ok "database $b gets mms-run's result" || bad "beta in $b: got '$got', want '$want'"

got=$(sql_on $a -c "SELECT count(*), bool_and('$a/alpha:1' = ANY (models) AND '$b/beta:1' = ANY (models)),
	string_agg(array_to_string(models, ','), ' ; '), string_agg(state, ',')
	FROM mms.cache WHERE sha256 = '$sha'" 2>&1)
[ "$got" = "1|t|$(cut -d'|' -f3 <<<"$got")|ready" ] &&
	ok "one mms.cache row for the bytes, listing both registrations ($(cut -d'|' -f3 <<<"$got"))" ||
	bad "mms.cache for sha256 $sha: want 1 ready row whose models has $a/alpha:1 and $b/beta:1; got (count|both listed|models|state) '$got'"
got=$(sql_on $b -c "SELECT count(*) FROM mms.pools WHERE sha256 = '$sha'" 2>&1)
[ "$got" = 1 ] && ok "one mms.pools row for the bytes" || bad "mms.pools rows for sha256 $sha: want 1, got '$got'"
# the pool's default max_workers is 1: the same worker answered both databases
got=$(sql_on $b -c "SELECT count(*), coalesce(sum(requests_served), 0) FROM mms.workers WHERE sha256 = '$sha'" 2>&1)
[ "$got" = "1|2" ] && ok "one worker served the calls of both databases" ||
	bad "mms.workers for the bytes: want 1 worker having served 2 requests, got (workers|served) '$got'"

# --- workers without a database ---------------------------------------------------------------
got=$(admin -c "SELECT count(*), count(*) FILTER (WHERE datname IS NOT NULL)
	FROM pg_stat_activity WHERE backend_type = 'mms worker'" 2>&1)
if [ "${got%%|*}" -ge 1 ] 2>/dev/null && [ "${got#*|}" = 0 ]; then
	ok "inference workers have no database (${got%%|*} 'mms worker' rows, datname NULL)"
else
	bad "pg_stat_activity 'mms worker' rows (all|with a datname): want >= 1|0, got '$got'"
fi
got=$(sql_on $a -c "SELECT count(*) FILTER (WHERE s.backend_type = 'mms worker' AND s.datname IS NULL) || '/' || count(*)
	FROM mms.workers w LEFT JOIN pg_stat_activity s USING (pid) WHERE w.sha256 = '$sha'" 2>&1)
[ "$got" = 1/1 ] && ok "the pids of mms.workers are 'mms worker' processes without a database" ||
	bad "mms.workers pids that are 'mms worker' rows with datname NULL: $got"
# the loader that streamed the large object must be gone (else CREATE DATABASE
# ... TEMPLATE fails after its 5 s wait)
q="SELECT count(*) = 0 FROM pg_stat_activity WHERE datname IN ('$a', '$b') AND backend_type <> 'client backend'"
if wait_until 60 postgres "$q"; then
	ok "no background process stays connected to $a or $b"
else
	bad "background processes still connected: $poll_err: $(admin -c "SELECT string_agg(backend_type || ' on ' || datname, ', ')
		FROM pg_stat_activity WHERE datname IN ('$a', '$b') AND backend_type <> 'client backend'")"
fi

# --- database DDL while the bytes are served ------------------------------------------------
out=$(ddl "CREATE DATABASE $c TEMPLATE $a" 2>&1)
if [ -z "$out" ]; then
	ok "CREATE DATABASE ... TEMPLATE $a while its model is served (workers up)"
	out=$(ddl "DROP DATABASE $c" 2>&1)
	[ -z "$out" ] || bad "DROP DATABASE $c (an unused copy): $out"
else
	bad "CREATE DATABASE $c TEMPLATE $a with workers up: $out"
fi

sql_on $b -c "SELECT mms_generate('beta', 'shared long', '$LONG')" >"$work/long.out" 2>&1 &
long=$!
bg_pids+=" $long"
wait_until 60 $b "SELECT coalesce(sum(running), 0) >= 1 FROM mms.pools WHERE sha256 = '$sha'" ||
	{ bad "the long generation from $b never showed as running in mms.pools: $poll_err"; sleep 1; }

have_c2=0
out=$(ddl "CREATE DATABASE $c2 TEMPLATE $a" 2>&1)
if [ -z "$out" ]; then
	have_c2=1
	ok "CREATE DATABASE ... TEMPLATE $a while a generation on the same bytes runs"
else
	bad "CREATE DATABASE $c2 TEMPLATE $a during a generation from $b: $out"
fi
# where a's model lives from here on (if the rename fails, the rest goes on with $a)
cur_a=$a
out=$(ddl "ALTER DATABASE $a RENAME TO $a2" 2>&1)
if [ -z "$out" ]; then
	cur_a=$a2
	ok "ALTER DATABASE $a RENAME TO $a2 while its model is served"
else
	bad "ALTER DATABASE $a RENAME TO $a2 while served: $out"
fi
want=$(run_cli --max-new-tokens 16 "renamed")
got=$(sql_on $cur_a -c "SELECT mms_generate('alpha', 'renamed', '$SHORT')" 2>&1)
[ "$got" = "$want" ] && ok "the renamed database still serves its model" || bad "alpha in $cur_a: got '$got', want '$want'"
out=$(ddl "DROP DATABASE $cur_a" 2>&1)
[ -z "$out" ] && ok "DROP DATABASE $cur_a while $b serves the same bytes" || bad "DROP DATABASE $cur_a while $b is served: $out"
# The DDL above proves something only if the generation was still running
# when it ended: an ordering, not a duration.
in_flight 'shared long' && ok "the DDL ended while the long generation from $b was still running" ||
	bad "the long generation from $b had ended before the DDL did: the DDL was not tested during a generation"

wait $long
# The short call from the renamed database shared some of its decoder steps:
# over 4096 steps beam search may then keep another of two near-equal beams
# than mms-run alone would, so "completes" means an answer and no error.
if [ "$(wc -l <"$work/long.out")" = 1 ] && ! grep -qE 'ERROR|FATAL|server closed' "$work/long.out"; then
	ok "the generation in flight from $b completes"
else
	bad "the long generation from $b: want one answer, got '$(head -c 300 "$work/long.out")'"
fi
want=$(run_cli --max-new-tokens 16 "after the drop")
got=$(sql_on $b -c "SELECT mms_generate('beta', 'after the drop', '$SHORT')" 2>&1)
[ "$got" = "$want" ] && ok "$b still serves after $a2 is dropped" || bad "beta in $b after the drop: got '$got', want '$want'"

# The copy made from the template has the registration (same bytes): it shares the entry.
[ $have_c2 = 1 ] || { bad "no copy $c2 to test (CREATE DATABASE ... TEMPLATE failed above)"; exit 0; }
want=$(run_cli --max-new-tokens 16 "from the copy")
got=$(sql_on $c2 -c "SELECT mms_generate('alpha', 'from the copy', '$SHORT')" 2>&1)
[ "$got" = "$want" ] && ok "the copy $c2 serves the model it inherited" || bad "alpha in $c2: got '$got', want '$want'"
got=$(sql_on $b -c "SELECT count(*), bool_and('$c2/alpha:1' = ANY (models) AND '$b/beta:1' = ANY (models)),
	(SELECT count(*) FROM mms.pools WHERE sha256 = '$sha')
	FROM mms.cache WHERE sha256 = '$sha'" 2>&1)
[ "$got" = "1|t|1" ] && ok "the copy shares the one cache row and pool of the bytes" ||
	bad "after the copy served: want one mms.cache row listing $c2/alpha:1 and $b/beta:1 and one pool, got (rows|both listed|pools) '$got'"

# Databases whose models are served (workers up) drop like any other.
for d in $b $c2; do
	out=$(ddl "DROP DATABASE $d" 2>&1)
	[ -z "$out" ] && ok "DROP DATABASE $d while its model is served" || bad "DROP DATABASE $d: $out"
done
