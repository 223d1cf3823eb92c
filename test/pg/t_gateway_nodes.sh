#!/bin/bash
# t_gateway_nodes.sh — mms-gateway in front of two servers of its own, beside
# the cluster of test/pg/run.sh: a primary and a streaming replica of it (made
# by the node_* helpers of tools/pg-cluster.sh), the gateway given both with
# two --db:
#   - GET /v1/nodes (admin) shows the primary and the standby, both healthy;
#   - under load (4 clients in a loop of completions), both nodes serve;
#   - the replica stopped (fast, then immediate) and started again while the
#     load runs: every request succeeds, the gateway marks the replica down and
#     then up, and the replica serves again;
#   - writes (upload, alias, delete) succeed and reach the primary; the
#     replica never sees a write (no read-only-transaction error in its log).
# Waits are bounded polls on state; no wall-clock assertion.
set -u
ok() { echo "ok: $*"; }
bad() { echo "FAILED: $*"; }
root=${MMS_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
data=$MMS_TEST_DATA
work=$TMPDIR_PG/gwnodes
MMS_CLUSTER_HELPERS_ONLY=1 . "$root/tools/pg-cluster.sh"
node_workdir "$work"
gw_dir=$work
. "$root/test/gateway/lib.sh"
trap 'touch "$work/stop"; gw_stop_all; node_stop_all "$work/primary" "$work/replica"' EXIT
trap 'exit 130' INT TERM
p1=$(free_port)
p2=$(free_port)
db=mms_nodes
q() { local port=$1; shift; psql -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d $db "$@"; }
jx() { python3 "$root/test/gateway/jx.py" "$work/body" "$@"; }

if [ ! -x "$gw_bin" ]; then
	bad "no mms-gateway binary at $gw_bin (make builds build/mms-gateway)"
	exit 0
fi

# --- a primary and its replica ------------------------------------------------------
node_primary "$work/primary" $p1 mms.threads_per_worker=1 2>"$work/err" || { bad "primary did not start: $(cat "$work/err")"; exit 0; }
psql -X -q -h 127.0.0.1 -p $p1 -U postgres -d postgres -c "CREATE DATABASE $db" || { bad "createdb"; exit 0; }
q $p1 >/dev/null <<SQL || { bad "setup on the primary"; exit 0; }
CREATE EXTENSION mms;
CREATE ROLE regress_gwn_login LOGIN NOINHERIT IN ROLE mms_gateway;
CREATE ROLE regress_gwn_user;
CREATE ROLE regress_gwn_admin IN ROLE mms_admin;
GRANT regress_gwn_user, regress_gwn_admin TO mms_gateway;
SELECT mms_import('flan', '$data/flan_gated.gguf');
SELECT mms_grant('flan', 'regress_gwn_user');
SQL
k_user=$(q $p1 -c "SELECT mms_create_api_key('regress_gwn_user', 'load')" 2>/dev/null)
k_admin=$(q $p1 -c "SELECT mms_create_api_key('regress_gwn_admin', 'admin')" 2>/dev/null)
[[ $k_user =~ ^mms- ]] && [[ $k_admin =~ ^mms- ]] || { bad "keys: '$k_user' '$k_admin'"; exit 0; }
node_replica $p1 "$work/replica" $p2 mms.threads_per_worker=1 2>"$work/err" || { bad "replica did not start: $(cat "$work/err")"; exit 0; }
for _ in $(seq 100); do
	[ "$(q $p2 -c "SELECT count(*) FROM mms.api_keys" 2>/dev/null)" = 2 ] && break
	sleep 0.1
done
[ "$(q $p2 -c "SELECT pg_is_in_recovery()")" = t ] && ok "a primary and its hot standby, the keys replicated" || bad "the replica is not in recovery"

conn() { echo "host=127.0.0.1 port=$1 dbname=$db user=regress_gwn_login connect_timeout=2"; }
if ! gw_start gw --db "$(conn $p1)" --db "$(conn $p2)" --pool 4 --key-ttl 5; then
	bad "the gateway did not start: $(tail -5 "$work/gw.log")"
	exit 0
fi
url=$gw_url

# nodes_state: one word per node in --db order, "primary"/"standby" + ":up"/":down"
nodes_state() {
	curl -s -o "$work/body" -H "Authorization: Bearer $k_admin" "$url/v1/nodes"
	jx '" ".join(n["role"] + (":up" if n["healthy"] else ":down") for n in d["data"])'
}
# wait_nodes WANT: bounded poll until /v1/nodes says WANT (the standby's role
# stays "standby" once known, even while it is down)
wait_nodes() {
	local i
	for i in $(seq 300); do
		[ "$(nodes_state)" = "$1" ] && return 0
		sleep 0.1
	done
	return 1
}
wait_nodes "primary:up standby:up"
got=$(nodes_state)
[ "$got" = "primary:up standby:up" ] && ok "/v1/nodes: the primary and the standby, both healthy" || bad "/v1/nodes: '$got' $(head -c 400 "$work/body")"

# --- inference under load while the replica goes away and comes back ----------------
# replica_calls: completions the replica answered since it started (its shared memory)
replica_calls() { q $p2 -c "SELECT coalesce(sum(calls), 0) FROM mms.stat_models WHERE role = 'regress_gwn_user'" 2>/dev/null || echo down; }
primary_calls() { q $p1 -c "SELECT coalesce(sum(calls), 0) FROM mms.stat_models WHERE role = 'regress_gwn_user'"; }
# load N: client N's loop, until $work/stop exists (bounded: 100,000 requests, 10 min)
load() {
	local i end=$((SECONDS + 600))
	for i in $(seq 100000); do
		[ -e "$work/stop" ] || [ $SECONDS -ge $end ] && break
		st=$(curl -s -o "$work/load.$1.body" -w '%{http_code}' --max-time 60 -H "Authorization: Bearer $k_user" \
			-H 'Content-Type: application/json' --data-binary "{\"model\": \"flan\", \"prompt\": \"load $1 $i\", \"max_tokens\": 4}" "$url/v1/completions")
		echo "$st" >>"$work/load.$1"
		[ "$st" = 200 ] || { echo "$st $(head -c 300 "$work/load.$1.body")" >>"$work/load.failures"; }
	done
}
done_requests() { cat "$work"/load.[0-9] 2>/dev/null | wc -l; }
# wait_more N: bounded poll until N more requests were answered
wait_more() {
	local start i
	start=$(done_requests)
	for i in $(seq 600); do
		[ "$(done_requests)" -ge $((start + $1)) ] && return 0
		sleep 0.05
	done
	return 1
}
rm -f "$work/stop" "$work"/load.*
load_pids=""
for c in 1 2 3 4; do
	load $c &
	load_pids+=" $!"
done
# both nodes serve
for _ in $(seq 300); do
	[ "$(replica_calls)" -gt 0 ] && [ "$(primary_calls)" -gt 0 ] && break
	sleep 0.1
done
r=$(replica_calls)
p=$(primary_calls)
[ "$r" -gt 0 ] && [ "$p" -gt 0 ] && ok "under load both nodes serve: $p calls on the primary, $r on the replica" || bad "load spread: primary $p, replica $r calls"

for mode in fast immediate; do
	wait_more 20
	node_stop "$work/replica" $mode
	wait_nodes "primary:up standby:down" && down=1 || down=0
	during=$(done_requests)
	wait_more 40
	during=$(($(done_requests) - during))
	node_start "$work/replica" $p2 mms.threads_per_worker=1 2>"$work/err" || bad "the replica did not restart: $(cat "$work/err")"
	wait_nodes "primary:up standby:up" && up=1 || up=0
	for _ in $(seq 300); do
		[ "$(replica_calls)" -gt 0 ] && break
		sleep 0.1
	done
	r=$(replica_calls)
	[ "$down $up" = "1 1" ] && [ "$r" -gt 0 ] && [ "$during" -ge 40 ] &&
		ok "replica stopped ($mode) under load: marked down, $during requests answered meanwhile; restarted: marked up, serving again ($r calls)" ||
		bad "replica stopped ($mode): marked down $down, $during requests meanwhile, marked up $up, replica calls $r"
done
touch "$work/stop"
wait $load_pids
n=$(done_requests)
n_ok=$(cat "$work"/load.[0-9] | grep -c '^200$')
[ "$n" -gt 0 ] && [ "$n_ok" = "$n" ] && ok "every one of $n requests under load succeeded, through two stops of the replica" ||
	bad "$((n - n_ok)) of $n requests under load failed: $(sort "$work/load.failures" 2>/dev/null | uniq -c | head -5)"

# --- writes go to the primary ------------------------------------------------------
w_ok=""
for i in 1 2 3; do
	st=$(curl -s -o "$work/body" -w '%{http_code}' -X POST -H "Authorization: Bearer $k_admin" -H 'Content-Type: application/octet-stream' \
		--data-binary @"$data/flan_gated_q8_0.gguf" "$url/v1/models?name=up$i")
	st2=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H "Authorization: Bearer $k_admin" -H 'Content-Type: application/json' \
		--data-binary '{"version": 1}' "$url/v1/models/up$i/aliases/prod")
	w_ok+="$st $st2 "
done
got=$(q $p1 -c "SELECT string_agg(name || '@' || array_to_string(aliases, ','), ' ' ORDER BY name) FROM mms.models WHERE name LIKE 'up_'")
[ "$w_ok" = "201 200 201 200 201 200 " ] && [ "$got" = "up1@prod up2@prod up3@prod" ] &&
	ok "3 uploads and 3 aliases through the gateway: on the primary" || bad "writes: '$w_ok', on the primary '$got'"
d_ok=""
for i in 1 2 3; do
	d_ok+="$(curl -s -o /dev/null -w '%{http_code}' -X DELETE -H "Authorization: Bearer $k_admin" "$url/v1/models/up$i/aliases/prod") "
	d_ok+="$(curl -s -o /dev/null -w '%{http_code}' -X DELETE -H "Authorization: Bearer $k_admin" "$url/v1/models/up$i") "
done
got=$(q $p1 -c "SELECT count(*) FROM mms.models WHERE name LIKE 'up_'")
[ "$d_ok" = "200 200 200 200 200 200 " ] && [ "$got" = 0 ] && ok "3 alias drops and 3 deletes through the gateway: done on the primary" || bad "deletes: '$d_ok', $got left"
if grep -q "read-only transaction" "$work/replica.log"; then
	bad "a write reached the replica: $(grep -m1 'read-only transaction' "$work/replica.log")"
else
	ok "no write reached the replica"
fi
for _ in $(seq 100); do
	[ "$(q $p2 -c "SELECT count(*) FROM mms.models WHERE name LIKE 'up_'")" = 0 ] && break
	sleep 0.1
done
[ "$(q $p2 -c "SELECT count(*) FROM mms.models")" = 1 ] && ok "the replica has the primary's registry by replication" || bad "replica registry"

kill -0 "$gw_pid" 2>/dev/null && ok "the gateway is alive" || bad "the gateway died: $(tail -5 "$work/gw.log")"
if grep -hE "terminated by signal|PANIC|TRAP:" "$work/primary.log" "$work/replica.log"; then
	bad "a process of the primary or the replica was terminated by a signal"
fi
