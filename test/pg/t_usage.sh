#!/bin/bash
# t_usage.sh — usage metering, on a cluster of its own (it restarts it), with
# mms.usage_flush_interval at an hour so that only mms_usage_flush() and the
# launcher's round at start write mms.usage unless the test says otherwise:
#   - after a flush, mms.usage holds exactly what was called: calls, input
#     tokens (mms_tokenize lengths), output tokens (forced lengths, score
#     targets), and nothing stays in shared memory;
#   - each role reads its own rows of mms.usage and mms.usage_summary (also
#     the unflushed ones), a member of mms_admin all; only mms_admin flushes;
#   - mms.usage_summary sums per day, flushed and unflushed rows alike;
#   - pg_ctl restart -m fast loses nothing (rows carried in a file);
#   - -m immediate keeps what was flushed before and loses at most what was
#     counted since, never counting a row twice;
#   - with a short interval the launcher flushes by itself.
set -u
data=$MMS_TEST_DATA
work=$TMPDIR_PG/usage
mkdir -p "$work"
chmod 755 "$work"
ok() { echo "ok: $*"; }
bad() { echo "FAILED: $*"; }
if [ "$(id -u)" = 0 ]; then as_server() { runuser -u postgres -- "$@"; }; chown postgres "$work"; else as_server() { "$@"; }; fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
opts="-c port=$port -c listen_addresses='' -c unix_socket_directories=$work -c fsync=off"
opts+=" -c shared_preload_libraries=mms -c mms.threads_per_worker=2"
cleanup() { [ -f "$work/data/postmaster.pid" ] && as_server pg_ctl -D "$work/data" -m immediate -w stop >/dev/null 2>&1; }
trap cleanup EXIT
db=mms_usage
sql() { psql -X -q -At -v ON_ERROR_STOP=1 -h "$work" -p "$port" -U postgres -d $db "$@"; }
as() { local r=$1; shift; sql -c "SET ROLE $r" "$@"; }
start() { as_server pg_ctl -D "$work/data" -l "$work/server.log" -w -o "$opts" start >/dev/null; }
restart() { as_server pg_ctl -D "$work/data" -l "$work/server.log" -w -m "$1" -o "$opts" restart >/dev/null; }

as_server initdb -D "$work/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$work/initdb.log" 2>&1 ||
	{ bad "initdb: $(tail -3 "$work/initdb.log")"; exit 0; }
# in the file, not on the command line: ALTER SYSTEM shortens it at the end
echo "mms.usage_flush_interval = '1h'" >>"$work/data/postgresql.conf"
start || { bad "server did not start: $(tail -5 "$work/server.log")"; exit 0; }
psql -X -q -h "$work" -p "$port" -U postgres -d postgres -c "CREATE DATABASE $db" >/dev/null
sql >/dev/null <<SQL || { bad "setup"; exit 0; }
CREATE EXTENSION mms;
SELECT mms_import('flan', '$data/flan_gated.gguf');
SELECT mms_grant('flan', 'public');
CREATE ROLE regress_usage_a;
CREATE ROLE regress_usage_b;
CREATE ROLE regress_usage_admin IN ROLE mms_admin;
SQL

# calls of role a: 3 generations of exactly 5 tokens, 2 scores; role b: 1 generation
gen() { echo "SELECT mms_generate('flan', '$1', '{\"max_new_tokens\": 5, \"min_new_tokens\": 5}');"; }
calls_a() {
	sql >/dev/null <<SQL
SET ROLE regress_usage_a;
$(gen 'translate to German: the house')
$(gen 'a second input, somewhat longer than the first one')
$(gen 'three')
SELECT mms_score('flan', 'score me', 'a target');
SELECT mms_score('flan', 'and me too', 'another, longer target text');
SQL
}
calls_a || bad "calls of role a"
as regress_usage_b -c "$(gen 'from b')" >/dev/null || bad "call of role b"
tok() { sql -c "SELECT sum(array_length(mms_tokenize('flan', t), 1)) FROM unnest(ARRAY[$1]) t"; }
in_a=$(tok "'translate to German: the house', 'a second input, somewhat longer than the first one', 'three', 'score me', 'and me too'")
out_a=$((15 + $(tok "'a target', 'another, longer target text'")))
in_b=$(tok "'from b'")

pending=$(sql -c "SELECT count(*) FROM mms.usage_pending_rows()")
[ "$pending" = 2 ] && ok "before a flush, the calls are in shared memory (2 rows)" || bad "pending rows before a flush: $pending"
[ "$(sql -c "SELECT count(*) FROM mms.usage")" = 0 ] && ok "and not yet in mms.usage" || bad "mms.usage written before a flush"
[ "$(sql -c "SELECT mms_usage_flush()")" = t ] && ok "mms_usage_flush() returns once written" || bad "mms_usage_flush() timed out"
row() { sql -F' ' -c "SELECT calls, input_tokens, output_tokens, errors FROM mms.usage WHERE role_name = '$1'"; }
got=$(row regress_usage_a)
[ "$got" = "5 $in_a $out_a 0" ] && ok "role a's row: 5 calls, $in_a input and $out_a output tokens" ||
	bad "role a's row: '$got', want '5 $in_a $out_a 0'"
got=$(row regress_usage_b)
[ "$got" = "1 $in_b 5 0" ] && ok "role b's row: 1 call, $in_b input and 5 output tokens" || bad "role b's row: '$got'"
[ "$(sql -c "SELECT count(*) FROM mms.usage_pending_rows()")" = 0 ] && ok "nothing is left in shared memory after the flush" ||
	bad "rows left in shared memory after the flush"
got=$(sql -c "SELECT bool_and(compute_ms > 0 AND queue_ms >= 0 AND hour = date_trunc('hour', hour) AND database = current_database() AND model = 'flan' AND version = 1) FROM mms.usage")
[ "$got" = t ] && ok "rows carry the hour, database, model version and times" || bad "row columns: $got"

# privacy: own rows only, flushed or not; mms_admin all
as regress_usage_b -c "$(gen 'unflushed b')" >/dev/null
got=$(as regress_usage_a -c "SELECT string_agg(DISTINCT role_name, ',') FROM mms.usage")
[ "$got" = regress_usage_a ] && ok "role a reads only its rows of mms.usage" || bad "role a sees: $got"
got=$(as regress_usage_a -c "SELECT string_agg(DISTINCT role, ',') FROM mms.usage_summary")
[ "$got" = regress_usage_a ] && ok "role a reads only its rows of mms.usage_summary" || bad "role a's summary: $got"
got=$(as regress_usage_b -c "SELECT calls FROM mms.usage_summary")
[ "$got" = 2 ] && ok "role b's summary has its flushed and unflushed calls" || bad "role b's summary: $got"
got=$(as regress_usage_admin -c "SELECT string_agg(role || '=' || calls, ',' ORDER BY role) FROM mms.usage_summary")
[ "$got" = "regress_usage_a=5,regress_usage_b=2" ] && ok "a member of mms_admin reads every role's usage" || bad "admin's summary: $got"
out=$(as regress_usage_a -c "SELECT mms_usage_flush()" 2>&1)
grep -q "permission denied" <<<"$out" && ok "only mms_admin flushes usage" || bad "mms_usage_flush as role a: $out"
got=$(sql -c "SELECT day = current_date, calls, input_tokens FROM mms.usage_summary WHERE role = 'regress_usage_a'")
[ "$got" = "t|5|$in_a" ] && ok "mms.usage_summary sums per day" || bad "summary of a: $got"

# fast restart: counted but not flushed survives
total() { sql -c "SELECT coalesce(sum(calls), 0) FROM mms.usage"; }
calls_a
before=$(sql -c "SELECT sum(calls) FROM mms.usage_summary")
restart fast || { bad "fast restart: $(tail -5 "$work/server.log")"; exit 0; }
[ ! -e "$work/data/pg_stat/mms_usage.stat" ] && ok "the usage file is read and removed at start" || bad "usage file left behind"
sql -c "SELECT mms_usage_flush()" >/dev/null
[ "$(total)" = "$before" ] && [ "$(sql -c "SELECT count(*) FROM mms.usage_pending_rows()")" = 0 ] &&
	ok "after pg_ctl restart -m fast nothing is lost ($before calls in mms.usage)" || bad "after a fast restart: $(total) calls, want $before"
got=$(row regress_usage_a)
[ "$got" = "10 $((2 * in_a)) $((2 * out_a)) 0" ] && ok "token sums are exact across the restart" || bad "role a after restart: '$got'"

# immediate restart: what was flushed stays; what was not may be lost, never counted twice
flushed=$(total)
calls_a
restart immediate || { bad "immediate restart: $(tail -5 "$work/server.log")"; exit 0; }
sql -c "SELECT mms_usage_flush()" >/dev/null
after=$(total)
[ "$after" -ge "$flushed" ] && [ "$after" -le $((flushed + 5)) ] &&
	ok "after -m immediate the flushed calls are there, at most the last interval's lost ($flushed -> $after)" ||
	bad "after an immediate restart: $after calls, flushed before: $flushed"

# the launcher flushes by itself every mms.usage_flush_interval
sql -c "ALTER SYSTEM SET mms.usage_flush_interval = '200ms'" -c "SELECT pg_reload_conf()" >/dev/null
want=$(( $(total) + 1 ))
as regress_usage_b -c "$(gen 'periodic')" >/dev/null
for _ in $(seq 300); do [ "$(total)" = "$want" ] && break; sleep 0.1; done
[ "$(total)" = "$want" ] && ok "the launcher flushes every mms.usage_flush_interval" || bad "no periodic flush: $(total), want $want"

if grep -E "PANIC|TRAP:|terminated by signal" "$work/server.log"; then
	bad "the server log shows a crash"
else
	ok "no process was terminated by a signal"
fi
