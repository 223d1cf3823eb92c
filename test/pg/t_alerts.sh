#!/bin/bash
# t_alerts.sh — alerts inside the database, in the cluster of test/pg/run.sh,
# with mms.alert_interval at 1 s (ALTER SYSTEM, reset on exit):
#   (a) a flood of long generations (mms.max_batch 2, so that most wait)
#       fires a requests_waiting rule and a queue_wait_ms rule: a LISTEN
#       session receives NOTIFY mms_alerts with the JSON payload, mms.alerts
#       shows them firing; once the flood is cancelled, both resolve;
#       A p99_latency_ms rule above 0 fires with finished calls and
#       resolves when no call finishes in a window; a cache_used_fraction
#       rule fires once flan's weights are loaded, its value a fraction;
#   (b) calls on a model whose weights hold NaN (they fail in the worker)
#       fire an error_ratio rule on that model, which resolves once the
#       failing calls stop (a window without calls has no ratio); calls of
#       a role over its requests_per_minute quota fire a
#       quota_rejections_per_minute rule;
#   (c) mms.alert_events holds one firing and one resolved row per rule, in
#       that order, and the server log the WARNING lines;
#   (d) a streaming replica of a primary of its own (made by pg_basebackup
#       over loopback) evaluates the rules it received: mms.alerts shows its
#       own states and its log the WARNING, and it writes no event (its
#       mms.alert_events is the primary's).
# Notifications are awaited with generous bounds (60 s); nothing asserts how
# long anything took.
set -u
export PGOPTIONS="${PGOPTIONS:-} -c statement_timeout=300s"
data=$MMS_TEST_DATA
work=$TMPDIR_PG/alerts
mkdir -p "$work"
ok() { echo "ok: $*"; }
bad() { echo "FAILED: $*"; }
db=mms_alerts
sql() { psql -X -q -At -v ON_ERROR_STOP=1 -d $db "$@"; }
admin() { psql -X -q -At -v ON_ERROR_STOP=1 -d postgres "$@"; }
# wait_notify PATTERN: polls the listener's output for a notification line (60 s)
wait_notify() {
	for _ in $(seq 600); do
		grep -q "$1" "$work/listen.out" 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	admin -c "ALTER SYSTEM RESET mms.alert_interval" -c "ALTER SYSTEM RESET mms.max_batch" \
		-c "SELECT pg_reload_conf()" >/dev/null
}
trap cleanup EXIT

dropdb --if-exists $db 2>/dev/null
createdb $db || { bad "createdb"; exit 0; }
sql -c "CREATE EXTENSION mms" -c "SELECT mms_import('flan', '$data/flan_gated.gguf')" \
	-c "SELECT mms_import('nan', '$data/bad/nan_weights.gguf')" >/dev/null || { bad "setup"; exit 0; }
admin -c "ALTER SYSTEM SET mms.alert_interval = '1s'" -c "ALTER SYSTEM SET mms.max_batch = 2" \
	-c "SELECT pg_reload_conf()" >/dev/null
sql -c "SELECT mms_set_alert('backlog', 'requests_waiting', 4, '0')" \
	-c "SELECT mms_set_alert('waiting', 'queue_wait_ms', 200, '1 s', 'flan')" \
	-c "SELECT mms_set_alert('failing', 'error_ratio', 0.5, '0', 'nan')" \
	-c "SELECT mms_set_alert('latency', 'p99_latency_ms', 0, '0', 'flan')" \
	-c "SELECT mms_set_alert('cache', 'cache_used_fraction', 0, '0', 'flan')" \
	-c "SELECT mms_set_alert('refused', 'quota_rejections_per_minute', 0, '0')" >/dev/null ||
	{ bad "mms_set_alert"; exit 0; }

# the listener: one session, a query now and then so that psql prints what arrived
{
	echo "LISTEN mms_alerts;"
	for _ in $(seq 1200); do echo "SELECT pg_sleep(0.25);"; done
} | psql -X -q -At -d $db >"$work/listen.out" 2>&1 &
pids+=($!)

# rules are evaluated while nothing happens: ok, with values
for _ in $(seq 100); do
	[ "$(sql -c "SELECT count(*) FROM mms.alerts WHERE last_evaluated IS NOT NULL")" = 6 ] && break
	sleep 0.1
done
st=$(sql -c "SELECT string_agg(name || '=' || state || ':' || coalesce(last_value::text, 'null'), ' ' ORDER BY name) FROM mms.alerts")
[ "$st" = "backlog=ok:0 cache=ok:0 failing=ok:null latency=ok:null refused=ok:null waiting=ok:0" ] ||
	[ "$st" = "backlog=ok:0 cache=ok:0 failing=ok:null latency=ok:null refused=ok:0 waiting=ok:0" ] && ok "idle rules are evaluated and ok ($st)" ||
	bad "idle rules: $st"

# (a) the flood: 6 sessions, each an array of 4 long generations, 2 rows
# decoded at a time; it runs until the rules have fired, then is cancelled
# (however fast the machine, it cannot drain before they are evaluated)
LONG='{"max_new_tokens": 4000, "min_new_tokens": 4000}'
flood=()
for i in $(seq 6); do
	PGAPPNAME=mms_alert_flood sql -c "SELECT count(*) FROM unnest(mms_generate_batch('flan', array_fill('flood $i'::text, ARRAY[4]), '$LONG'))" \
		>"$work/flood$i.out" 2>&1 &
	flood+=($!)
done
pids+=("${flood[@]}")
wait_notify '"rule": "backlog".*"state": "firing"' && ok "requests_waiting fires: NOTIFY received" ||
	bad "no firing notification for backlog: $(cat "$work/listen.out")"
wait_notify '"rule": "waiting".*"state": "firing"' && ok "queue_wait_ms fires after its for_interval: NOTIFY received" ||
	bad "no firing notification for waiting: $(cat "$work/listen.out")"
st=$(sql -c "SELECT string_agg(name || '=' || state, ' ' ORDER BY name) FROM mms.alerts WHERE name IN ('backlog', 'waiting')")
payload=$(grep -m1 '"rule": "backlog".*"state": "firing"' "$work/listen.out")
echo "$payload" | grep -q '"metric": "requests_waiting", "model": null, "state": "firing", "value": [0-9.e+]*, "threshold": 4, "at": "' &&
	ok "the payload names rule, metric, model, state, value, threshold and time" || bad "payload: $payload"
[ "$st" = "backlog=firing waiting=firing" ] && ok "mms.alerts shows both rules firing during the flood" ||
	bad "mms.alerts during the flood: $st"
admin -c "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE application_name = 'mms_alert_flood'" >/dev/null
for p in "${flood[@]}"; do wait "$p"; done
bad_flood=$(grep -L -e '^4$' -e 'canceling statement due to user request' "$work"/flood*.out | wc -l)
[ "$bad_flood" = 0 ] && ok "every flood call ended, done or cancelled" || bad "flood calls: $(cat "$work"/flood*.out)"
for i in 1 2 3; do sql -c "SELECT mms_generate('flan', 'short $i', '{\"max_new_tokens\": 2}')" >/dev/null; done
wait_notify '"rule": "latency".*"state": "firing"' && ok "p99_latency_ms fires with finished calls" ||
	bad "no firing notification for latency: $(cat "$work/listen.out")"
wait_notify '"rule": "cache".*"state": "firing"' && ok "cache_used_fraction fires once the weights are loaded" ||
	bad "no firing notification for cache"
v=$(sql -c "SELECT state, last_value > 0 AND last_value <= 1 FROM mms.alerts WHERE name = 'cache'")
[ "$v" = "firing|t" ] && ok "cache_used_fraction is a fraction" || bad "cache: $v"
wait_notify '"rule": "backlog".*"state": "resolved"' && ok "requests_waiting resolves after the flood" ||
	bad "no resolved notification for backlog: $(cat "$work/listen.out")"
wait_notify '"rule": "waiting".*"state": "resolved"' && ok "queue_wait_ms resolves after the flood" ||
	bad "no resolved notification for waiting"

# (b) failing calls: the worker refuses NaN weights
for _ in $(seq 60); do
	sql -c "SELECT mms_generate('nan', 'hello')" >/dev/null 2>&1
	grep -q '"rule": "failing".*"state": "firing"' "$work/listen.out" && break
	sleep 0.2
done
wait_notify '"rule": "failing".*"state": "firing"' && ok "error_ratio of a model fires on failing calls" ||
	bad "no firing notification for failing: $(cat "$work/listen.out")"
wait_notify '"rule": "failing".*"state": "resolved"' && ok "error_ratio resolves once the failures stop" ||
	bad "no resolved notification for failing"
wait_notify '"rule": "latency".*"state": "resolved"' && ok "p99_latency_ms resolves when no call finishes" ||
	bad "no resolved notification for latency"
admin -c "SET client_min_messages = warning" -c "DROP ROLE IF EXISTS regress_alert_user" \
	-c "CREATE ROLE regress_alert_user LOGIN" >/dev/null
sql -c "SELECT mms_grant('flan', 'regress_alert_user')" \
	-c "SELECT mms_set_quota('regress_alert_user', 'flan', requests_per_minute => 1)" >/dev/null
for _ in $(seq 30); do
	sql -U regress_alert_user -c "SELECT mms_generate('flan', 'hi', '{\"max_new_tokens\": 2}')" >/dev/null 2>&1
	grep -q '"rule": "refused".*"state": "firing"' "$work/listen.out" && break
	sleep 0.2
done
wait_notify '"rule": "refused".*"state": "firing"' && ok "quota rejections fire quota_rejections_per_minute" ||
	bad "no firing notification for refused: $(cat "$work/listen.out")"
wait_notify '"rule": "refused".*"state": "resolved"' && ok "quota_rejections_per_minute resolves once the calls stop" ||
	bad "no resolved notification for refused"

# (c) events and log
ev=$(sql -c "SELECT string_agg(rule || ':' || state, ' ' ORDER BY id) FROM mms.alert_events")
for r in backlog waiting failing latency refused; do
	seq_r=$(sql -c "SELECT string_agg(state, ',' ORDER BY id) FROM mms.alert_events WHERE rule = '$r'")
	case "$seq_r" in
	firing,resolved | firing,resolved,*) ok "mms.alert_events: $r fired, then resolved" ;;
	*) bad "mms.alert_events of $r: $seq_r (all: $ev)" ;;
	esac
done
st=$(sql -c "SELECT string_agg(name || '=' || state, ' ' ORDER BY name) FROM mms.alerts")
[ "$st" = "backlog=ok cache=firing failing=ok latency=ok refused=ok waiting=ok" ] && ok "every rule is ok again" || bad "states at the end: $st"
grep -q 'WARNING:  mms alert "backlog" is firing' "$TMPDIR_PG/server.log" &&
	grep -q 'WARNING:  mms alert "failing" resolved' "$TMPDIR_PG/server.log" &&
	ok "transitions are WARNING lines in the server log" || bad "no WARNING lines in the server log"

# a dropped rule leaves mms.alerts; the database is visited no more once it has none
sql -c "SELECT mms_drop_alert(name) FROM mms.alert_rules" >/dev/null
[ "$(sql -c "SELECT count(*) FROM mms.alerts")" = 0 ] && ok "dropped rules leave mms.alerts" || bad "mms.alerts after drop"
sql -c "DROP OWNED BY regress_alert_user" >/dev/null
admin -c "DROP ROLE regress_alert_user" >/dev/null

# (d) a hot standby: clusters of its own
rep=$work/replica-set
mkdir -p "$rep"
chmod 755 "$rep"
if [ "$(id -u)" = 0 ]; then as_server() { runuser -u postgres -- "$@"; }; chown postgres "$rep"; else as_server() { "$@"; }; fi
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
p1=$(free_port)
p2=$(free_port)
opts="-c listen_addresses=127.0.0.1 -c unix_socket_directories=$rep -c fsync=off -c shared_preload_libraries=mms -c mms.alert_interval=1s"
stop_set() {
	for d in primary replica; do
		[ -f "$rep/$d/postmaster.pid" ] && as_server pg_ctl -D "$rep/$d" -m immediate -w stop >/dev/null 2>&1
	done
}
trap 'stop_set; cleanup' EXIT
q() { local port=$1; shift; psql -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"; }
as_server initdb -D "$rep/primary" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$rep/initdb.log" 2>&1 ||
	{ bad "initdb: $(tail -3 "$rep/initdb.log")"; exit 0; }
as_server pg_ctl -D "$rep/primary" -l "$rep/primary.log" -w -o "-c port=$p1 $opts" start >/dev/null ||
	{ bad "primary did not start"; exit 0; }
# always above its threshold: fires at the first evaluation, on both servers
q $p1 -c "CREATE EXTENSION mms" -c "SELECT mms_set_alert('always', 'requests_waiting', -1, '0')" >/dev/null ||
	{ bad "setup on the primary"; exit 0; }
as_server pg_basebackup -h 127.0.0.1 -p $p1 -U postgres -D "$rep/replica" -R -X stream -c fast >"$rep/basebackup.log" 2>&1 ||
	{ bad "pg_basebackup: $(tail -3 "$rep/basebackup.log")"; exit 0; }
as_server pg_ctl -D "$rep/replica" -l "$rep/replica.log" -w -o "-c port=$p2 $opts" start >/dev/null ||
	{ bad "replica did not start"; exit 0; }
for _ in $(seq 600); do
	[ "$(q $p2 -c "SELECT state FROM mms.alerts" 2>/dev/null)" = firing ] &&
		grep -q 'mms alert "always" is firing' "$rep/replica.log" && break
	sleep 0.1
done
[ "$(q $p2 -c "SELECT pg_is_in_recovery()")" = t ] && ok "the replica is a hot standby" || bad "the replica is not in recovery"
st=$(q $p2 -c "SELECT state, last_value FROM mms.alerts")
[ "$st" = "firing|0" ] && grep -q 'WARNING:  mms alert "always" is firing' "$rep/replica.log" &&
	ok "the standby evaluates the rule: mms.alerts shows its state, its log the WARNING" ||
	bad "standby: mms.alerts '$st'; log: $(grep -i alert "$rep/replica.log" | tail -3)"
# the primary's row arrives by streaming; the standby adds none of its own
for _ in $(seq 100); do
	[ "$(q $p2 -c "SELECT count(*) FROM mms.alert_events")" = 1 ] && break
	sleep 0.1
done
n1=$(q $p1 -c "SELECT count(*) FROM mms.alert_events")
n2=$(q $p2 -c "SELECT count(*) FROM mms.alert_events")
[ "$n1" = 1 ] && [ "$n2" = 1 ] && ! grep -E 'ERROR|terminated by signal' "$rep/replica.log" | grep -qv 'canceling' &&
	ok "the standby writes no event and fails nothing (events: primary $n1, standby $n2)" ||
	bad "events: primary $n1, standby $n2; $(grep -E 'ERROR|terminated' "$rep/replica.log" | tail -3)"
