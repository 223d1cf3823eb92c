#!/bin/bash
# t_replica.sh — clusters of its own, beside the one of test/pg/run.sh:
#   - a primary on 127.0.0.1 and a streaming replica made by pg_basebackup -R
#     over loopback, both with shared_preload_libraries = 'mms': the replica
#     (hot standby, read-only) answers mms_generate for a model registered on
#     the primary, with the primary's result;
#   - the same primary restarted without the preload: inference functions fail
#     with an ERROR whose hint says to add mms to shared_preload_libraries.
# Neither log may show a process terminated by a signal.
set -u
data=$MMS_TEST_DATA
work=$TMPDIR_PG/replica
ok() { echo "ok: $*"; }
bad() { echo "FAILED: $*"; }
MMS_CLUSTER_HELPERS_ONLY=1 . "${MMS_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}/tools/pg-cluster.sh"
node_workdir "$work"
p1=$(free_port)
p2=$(free_port)
trap 'node_stop_all "$work/primary" "$work/replica"' EXIT
q() { local port=$1; shift; psql -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"; }

node_primary "$work/primary" $p1 2>"$work/err" || { bad "primary did not start: $(cat "$work/err")"; exit 0; }
q $p1 -c "CREATE EXTENSION mms" -c "SELECT mms_import('rep', '$data/flan_gated.gguf')" >/dev/null ||
	{ bad "setup on the primary"; exit 0; }
want=$(q $p1 -c "SELECT mms_generate('rep', 'from the replica', '{\"max_new_tokens\": 12, \"num_beams\": 2}')")
[ -n "$want" ] && ok "the primary generates" || bad "the primary does not generate"

node_replica $p1 "$work/replica" $p2 2>"$work/err" || { bad "replica did not start: $(cat "$work/err")"; exit 0; }
# a second model, registered after the base backup, arrives by streaming
q $p1 -c "SELECT mms_import('rep2', '$data/t5_relu_tied.gguf')" >/dev/null
want2=$(q $p1 -c "SELECT mms_generate('rep2', 'streamed', '{\"max_new_tokens\": 8}')")
for _ in $(seq 100); do
	[ "$(q $p2 -c "SELECT count(*) FROM mms.models" 2>/dev/null)" = 2 ] && break
	sleep 0.1
done
[ "$(q $p2 -c "SELECT pg_is_in_recovery()")" = t ] && ok "the replica is a hot standby" || bad "the replica is not in recovery"
got=$(q $p2 -c "SELECT mms_generate('rep', 'from the replica', '{\"max_new_tokens\": 12, \"num_beams\": 2}')" 2>&1)
[ "$got" = "$want" ] && ok "the replica answers mms_generate with the primary's result" || bad "replica: '$got', primary: '$want'"
got=$(q $p2 -c "SELECT mms_generate('rep2', 'streamed', '{\"max_new_tokens\": 8}')" 2>&1)
[ "$got" = "$want2" ] && ok "a model registered after the base backup serves on the replica" || bad "replica rep2: '$got', primary: '$want2'"
got=$(q $p2 -c "SELECT model, state FROM mms.workers ORDER BY model" 2>&1 | tr '\n' ' ')
[ "$got" = "rep2:1|ready rep:1|ready " ] && ok "the replica runs its own workers ($got)" || bad "replica workers: $got"
# usage of the replica's calls stays in its shared memory, shown by its summary, never written
got=$(q $p2 -c "SELECT (SELECT sum(calls) FROM mms.usage_summary) - (SELECT coalesce(sum(calls), 0) FROM mms.usage)")
[ "$got" = 2 ] && ok "the replica's 2 calls show in mms.usage_summary on the replica" || bad "replica summary beyond mms.usage: '$got'"
got=$(q $p2 -c "SELECT sum(calls) FROM mms.usage_pending_rows()")
[ "$got" = 2 ] && ok "the replica keeps its usage in shared memory" || bad "replica pending usage: '$got'"
out=$(q $p2 -c "SELECT mms_usage_flush()" 2>&1)
grep -q "cannot flush usage during recovery" <<<"$out" && ok "the replica refuses to flush usage" || bad "mms_usage_flush on the replica: $out"
got=$(q $p1 -c "SELECT mms_usage_flush()" -c "SELECT sum(calls) FROM mms.usage")
[ "$got" = $'t\n2' ] && ok "the primary's mms.usage has its own 2 calls, none of the replica's" || bad "primary usage: '$got'"
# quotas hold on the replica too, and a change made on the primary reaches
# the replica's sessions (their cached limits are invalidated by the replay)
q $p1 -c "CREATE ROLE regress_rep_q LOGIN" -c "SELECT mms_grant('rep', 'public')" \
	-c "SELECT mms_set_quota('regress_rep_q', 'rep', requests_per_minute => 2)" >/dev/null
for _ in $(seq 100); do
	[ "$(q $p2 -c "SELECT count(*) FROM mms.quotas WHERE role = 'regress_rep_q'" 2>/dev/null)" = 1 ] && break
	sleep 0.1
done
call="SELECT mms_generate('rep', 'quota', '{\"max_new_tokens\": 2}') IS NOT NULL;"
got=$(psql -X -q -At -h 127.0.0.1 -p $p2 -U regress_rep_q -d postgres -v VERBOSITY=verbose 2>&1 <<SQL | sed -n 's/^\(t\)$/\1/p; s/^ERROR:  \([0-9A-Z]*\):.*/\1/p' | tr '\n' ' '
$call
$call
$call
\\! psql -X -q -h 127.0.0.1 -p $p1 -U postgres -d postgres -c "SELECT mms_set_quota('regress_rep_q', 'rep', requests_per_minute => 5)" >/dev/null
DO \$\$ BEGIN
	FOR i IN 1..100 LOOP
		EXIT WHEN (SELECT requests_per_minute FROM mms.quotas WHERE role = 'regress_rep_q') = 5;
		PERFORM pg_sleep(0.1);
	END LOOP;
END \$\$;
$call
SQL
)
[ "$got" = "t t 53400 t " ] &&
	ok "on the replica, requests_per_minute 2 answers 2 calls and refuses the third (53400); raised to 5 on the primary, the same session's next call runs" ||
	bad "quota on the replica: '$got'"
node_stop "$work/replica"

# the primary again, without the preload
node_stop "$work/primary"
node_start "$work/primary" $p1 "shared_preload_libraries=''" 2>"$work/err" || { bad "primary did not restart: $(cat "$work/err")"; exit 0; }
for f in "mms_generate('rep', 'x')" "mms_generate_batch('rep', ARRAY['x'])" "mms_score('rep', 'x', 'y')" "mms_load('rep')"; do
	out=$(q $p1 -c "SELECT $f" 2>&1)
	if grep -q "not preloaded" <<<"$out" && grep -q "HINT:  Add mms to shared_preload_libraries" <<<"$out"; then
		ok "without the preload, $f fails with a hint"
	else
		bad "without the preload, $f: $out"
	fi
done
q $p1 -c "CREATE DATABASE mms_nopreload" >/dev/null
out=$(psql -X -q -h 127.0.0.1 -p $p1 -U postgres -d mms_nopreload -c "CREATE EXTENSION mms" 2>&1)
grep -q "WARNING:  mms is not in shared_preload_libraries" <<<"$out" && grep -q "HINT:  Add mms to shared_preload_libraries" <<<"$out" &&
	ok "CREATE EXTENSION without the preload warns, with the hint" || bad "CREATE EXTENSION without preload: $out"
tok=$(q $p1 -c "SELECT array_length(mms_tokenize('rep', 'still works'), 1) > 0")
[ "$tok" = t ] && ok "without the preload, the registry and tokenizer still work" || bad "tokenize without preload: $tok"

if grep -hE "terminated by signal|PANIC|TRAP:" "$work/primary.log" "$work/replica.log"; then
	bad "a process of the primary or the replica was terminated by a signal"
else
	ok "no process of the primary or the replica was terminated by a signal"
fi
