#!/bin/bash
# t_quotas.sh — quotas and fairness with concurrent sessions, on the cluster
# of test/pg/run.sh:
#   - requests_per_minute 5 across 4 concurrent sessions: exactly 5 answers,
#     every other call 53400;
#   - tokens_per_minute with array calls, admitted whole or refused whole;
#   - refunds: what a request did not generate goes back to the bucket;
#   - max_concurrent 1 with 3 sessions, and an array call within it;
#   - superusers are exempt;
#   - one backend holds at most mms.backend_request_share of the slots;
#   - fair queueing: another role's call is served while a flood is queued.
set -u
ok() { echo "ok: $*"; }
bad() { echo "FAILED: $*"; }
db=mms_quotas
sql() { psql -X -q -At -v ON_ERROR_STOP=1 -d $db "$@"; }
# one call as role $1; prints "ok" or the SQLSTATE of its error
call_as() {
	local role=$1
	shift
	psql -X -q -At -d $db -U "$role" -v VERBOSITY=verbose -c "$1" 2>&1 >/dev/null |
		sed -n 's/^ERROR:  \([0-9A-Z]\{5\}\):.*/\1/p' | head -1 | grep . || echo ok
}

dropdb --if-exists $db 2>/dev/null
createdb $db || { bad "createdb $db"; exit 0; }
roles="regress_q_rpm regress_q_tok regress_q_ref regress_q_conc regress_q_su regress_q_share regress_q_a regress_q_b regress_q_big regress_q_cancel regress_q_def"
for r in $roles; do echo "DROP ROLE IF EXISTS $r; CREATE ROLE $r LOGIN;"; done | psql -X -q -d postgres
sql >/dev/null <<SQL || { bad "setup"; exit 0; }
CREATE EXTENSION mms;
SELECT mms_import('flan', '$MMS_TEST_DATA/flan_gated.gguf');
SELECT mms_import('short', '$MMS_TEST_DATA/depth_3_1.gguf');
SELECT mms_grant('flan', 'public');
SELECT mms_grant('short', 'public');
SELECT mms_set_quota('regress_q_rpm', 'flan', requests_per_minute => 5);
SQL
fox='The quick brown fox'
# mms.pools by the weights' hash: the same file may be served under another database's name
flan_sha=$(sql -c "SELECT sha256 FROM mms.models WHERE name = 'flan'")

# --- requests_per_minute across concurrent sessions ----------------------------------
out=$(for s in 1 2 3 4; do
	(for i in 1 2 3 4; do call_as regress_q_rpm "SELECT mms_generate('flan', 'call $s $i', '{\"max_new_tokens\": 2}')"; done) &
done; wait)
n_ok=$(grep -c '^ok$' <<<"$out")
n_rej=$(grep -c '^53400$' <<<"$out")
[ "$n_ok" = 5 ] && [ "$n_rej" = 11 ] &&
	ok "requests_per_minute 5, 16 calls from 4 concurrent sessions: exactly 5 answered, 11 refused with 53400" ||
	bad "requests_per_minute 5: $n_ok answered, $n_rej refused: $(sort <<<"$out" | uniq -c | tr '\n' ' ')"
# usage meters both: the answered calls and the refused ones
got=$(sql -c "SELECT mms_usage_flush()" -c "SELECT sum(calls) || ' ' || sum(rejections) FROM mms.usage u WHERE u.role_name = 'regress_q_rpm'")
[ "$got" = $'t\n5 11' ] && ok "mms.usage counts the role's 5 calls and 11 rejections" || bad "usage of the refused role: '$got'"

# --- tokens_per_minute and array calls -------------------------------------------------
n_in=$(sql -c "SELECT cardinality(mms_tokenize('flan', '$fox'))")
each=$((n_in + 10))
sql -c "SELECT mms_set_quota('regress_q_tok', 'flan', tokens_per_minute => $((5 * each)))" >/dev/null
arr() { echo "SELECT mms_generate_batch('flan', array_fill('$fox'::text, ARRAY[$1]), '{\"max_new_tokens\": 10}')"; }
r1=$(call_as regress_q_tok "$(arr 3)")
r2=$(call_as regress_q_tok "$(arr 3)")
r3=$(call_as regress_q_tok "$(arr 2)")
r4=$(call_as regress_q_tok "$(arr 1)")
[ "$r1 $r2 $r3 $r4" = "ok 53400 ok 53400" ] &&
	ok "tokens_per_minute 5 requests' worth: arrays of 3, 3, 2, 1 -> admitted, refused whole, admitted, refused" ||
	bad "tokens_per_minute with arrays: $r1 $r2 $r3 $r4 (each request $each tokens)"
remaining=$(psql -X -q -At -d $db -U regress_q_tok -c "SELECT remaining FROM mms_quota_status('flan') WHERE limit_name = 'tokens_per_minute'")
[ "${remaining:-99}" -lt "$each" ] && ok "mms_quota_status: $remaining tokens left, less than a request" ||
	bad "mms_quota_status after the arrays: '$remaining'"

# an array larger than the API's submission chunks is still admitted whole
sql -c "SELECT mms_set_quota('regress_q_big', 'flan', requests_per_minute => 80)" >/dev/null
big=$(psql -X -q -At -d $db -U regress_q_big -c "SELECT mms_generate_batch('flan', array_fill('x'::text, ARRAY[100]), '{\"max_new_tokens\": 2}')" 2>&1 | grep -o 'can never fit')
left1=$(psql -X -q -At -d $db -U regress_q_big -c "SELECT remaining FROM mms_quota_status('flan')")
r70=$(call_as regress_q_big "SELECT mms_generate_batch('flan', array_fill('x'::text, ARRAY[70]), '{\"max_new_tokens\": 2}')")
left2=$(psql -X -q -At -d $db -U regress_q_big -c "SELECT remaining FROM mms_quota_status('flan')")
[ "$big" = "can never fit" ] && [ "$left1" = 80 ] && [ "$r70" = ok ] && [ "$left2" = 10 ] &&
	ok "requests_per_minute 80: an array of 100 is refused whole as never fitting (80 left), one of 70 runs (10 left)" ||
	bad "arrays beyond 64 elements: '$big', left $left1, array of 70 '$r70', left $left2"

# --- refunds ---------------------------------------------------------------------------
# 'short' stops at once on this input: what it was charged for 100 new tokens comes back
n_in=$(sql -c "SELECT cardinality(mms_tokenize('short', '$fox'))")
out_len=$(sql -c "SELECT cardinality(mms_tokenize('short', mms_generate('short', '$fox', '{\"max_new_tokens\": 100}')))")
# room for one call's charge plus what five calls use: without refunds, one call only
sql -c "SELECT mms_set_quota('regress_q_ref', tokens_per_minute => $((n_in + 100 + 5 * (n_in + out_len) + 10)))" >/dev/null
res=""
for i in 1 2 3 4 5; do res+="$(call_as regress_q_ref "SELECT mms_generate('short', '$fox', '{\"max_new_tokens\": 100}')") "; done
fl=$(call_as regress_q_ref "SELECT mms_generate('flan', '$fox', '{\"max_new_tokens\": 100}')")
fl2=$(call_as regress_q_ref "SELECT mms_generate('flan', '$fox', '{\"max_new_tokens\": 100}')")
[ "$res" = "ok ok ok ok ok " ] && [ "$fl $fl2" = "ok 53400" ] &&
	ok "refunds: 5 calls in a row fit a bucket of less than two calls' charge when each generates $out_len tokens of 100; a call that uses its 100 leaves no room for another" ||
	bad "refunds: short model '$res', long model '$fl $fl2'"

# a request cancelled while it runs keeps its charge: only one that never ran is given back
n_in=$(sql -c "SELECT cardinality(mms_tokenize('flan', 'cancelled'))")
sql -c "SELECT mms_set_quota('regress_q_cancel', 'flan', tokens_per_minute => $((3 * (n_in + 4000))))" >/dev/null
rc=$(call_as regress_q_cancel "SET statement_timeout = '300ms'; SELECT mms_generate('flan', 'cancelled', '{\"max_new_tokens\": 4000, \"min_new_tokens\": 4000}')")
left=$(psql -X -q -At -d $db -U regress_q_cancel -c "SELECT remaining FROM mms_quota_status('flan')")
# refilled meanwhile at 3 * (n_in + 4000) / 60 tokens a second
[ "$rc" = 57014 ] && [ "$left" -lt $((2 * (n_in + 4000) + 1000)) ] &&
	ok "a generation cancelled by statement_timeout while it ran keeps its charge ($left of $((3 * (n_in + 4000))) left)" ||
	bad "cancelled while running: '$rc', $left left of $((3 * (n_in + 4000)))"

# --- max_concurrent --------------------------------------------------------------------
sql -c "SELECT mms_set_quota('regress_q_conc', 'flan', max_concurrent => 1, requests_per_minute => 10)" >/dev/null
call_as regress_q_conc "SELECT mms_generate('flan', 'long', '{\"max_new_tokens\": 4000, \"min_new_tokens\": 4000}')" >"$TMPDIR_PG/conc1" &
p1=$!
for i in $(seq 300); do
	running=$(sql -c "SELECT running FROM mms.pools WHERE sha256 = '$flan_sha'")
	[ "${running:-0}" -ge 1 ] && break
	sleep 0.1
done
call_as regress_q_conc "SELECT mms_generate('flan', 'x', '{\"max_new_tokens\": 2}')" >"$TMPDIR_PG/conc2" &
p2=$!
call_as regress_q_conc "SELECT mms_generate('flan', 'y', '{\"max_new_tokens\": 2}')" >"$TMPDIR_PG/conc3" &
p3=$!
wait $p2 $p3
b2="$(cat "$TMPDIR_PG/conc2") $(cat "$TMPDIR_PG/conc3")"
status=$(psql -X -q -At -d $db -U regress_q_conc -c "SELECT string_agg(remaining::text, ' ' ORDER BY limit_name) FROM mms_quota_status('flan')")
running_now=$(sql -c "SELECT count(*) FROM pg_stat_activity WHERE usename = 'regress_q_conc' AND state = 'active'")
wait $p1
r1=$(cat "$TMPDIR_PG/conc1")
r3=$(call_as regress_q_conc "SELECT mms_generate('flan', 'z', '{\"max_new_tokens\": 2}')")
r4=$(call_as regress_q_conc "SELECT mms_generate_batch('flan', ARRAY['a', 'b', 'c'], '{\"max_new_tokens\": 2}')")
[ "$b2" = "53400 53400" ] && [ "$status" = "0 9" ] && [ "$running_now" = 1 ] && [ "$r1" = ok ] && [ "$r3" = ok ] && [ "$r4" = ok ] &&
	ok "max_concurrent 1: while one session's call runs, the others get 53400 (remaining 0, and their requests are not charged: 9 of 10 a minute left); after it, a call and an array of 3 (one at a time) run" ||
	bad "max_concurrent 1: during '$b2' remaining '$status' active '$running_now'; first '$r1', after '$r3', array '$r4'"

# --- superusers are exempt -------------------------------------------------------------
sql -c "SELECT mms_set_quota('public', 'short', requests_per_minute => 1)" >/dev/null
su=""
for i in 1 2 3; do su+="$(call_as postgres "SELECT mms_generate('short', 'su $i', '{\"max_new_tokens\": 2}')") "; done
ord=""
for i in 1 2; do ord+="$(call_as regress_q_su "SELECT mms_generate('short', 'su $i', '{\"max_new_tokens\": 2}')") "; done
[ "$su" = "ok ok ok " ] && [ "$ord" = "ok 53400 " ] &&
	ok "public requests_per_minute 1: a superuser makes 3 calls, an ordinary role 1 and then 53400" ||
	bad "superuser exemption: superuser '$su', ordinary role '$ord'"
sql -c "SELECT mms_drop_quota('public', 'short')" >/dev/null

# --- SECURITY DEFINER: the definer is charged and metered ------------------------------
sql >/dev/null <<SQL
SELECT mms_set_quota('regress_q_def', 'short', requests_per_minute => 1);
CREATE FUNCTION def_gen(t text) RETURNS text LANGUAGE sql SECURITY DEFINER SET search_path = public
    AS \$\$ SELECT mms_generate('short', t, '{"max_new_tokens": 2}') \$\$;
ALTER FUNCTION def_gen(text) OWNER TO regress_q_def;
SQL
d=""
for i in 1 2 3; do d+="$(call_as regress_q_b "SELECT def_gen('via definer $i')") "; done
got=$(sql -c "SELECT mms_usage_flush()" -c "SELECT string_agg(role_name || ':' || calls || '/' || rejections, ' ' ORDER BY role_name) FROM mms.usage WHERE model = 'short' AND role_name IN ('regress_q_def', 'regress_q_b')")
[ "$d" = "ok 53400 53400 " ] && [ "$got" = $'t\nregress_q_def:1/2' ] &&
	ok "a SECURITY DEFINER function is charged to its owner's quota and metered to it, rejections included" ||
	bad "SECURITY DEFINER: calls '$d', usage '$got'"
sql -c "DROP FUNCTION def_gen(text)" >/dev/null

# --- one backend's share of the slots --------------------------------------------------
slots=$(sql -c "SHOW mms.max_requests")
share=$(sql -c "SHOW mms.backend_request_share")
cap=$(awk -v n="$slots" -v s="$share" 'BEGIN { c = int(n * s); print (c < 1 ? 1 : c) }')
elems=$((cap * 3))
psql -X -q -At -d $db -U regress_q_share -c "SELECT cardinality(mms_generate_batch('flan', array_fill('share'::text, ARRAY[$elems]), '{\"max_new_tokens\": 1000, \"min_new_tokens\": 1000}'))" >"$TMPDIR_PG/share" 2>&1 &
ps=$!
peak=0
other=""
while kill -0 $ps 2>/dev/null; do
	n=$(sql -c "SELECT coalesce(sum(queued + running), 0) FROM mms.pools WHERE sha256 = '$flan_sha'")
	[ "${n:-0}" -gt "$peak" ] && peak=$n
	if [ -z "$other" ] && [ "$peak" -gt 0 ]; then
		other=$(call_as regress_q_b "SELECT mms_generate('flan', 'meanwhile', '{\"max_new_tokens\": 2}')")
		still=$(kill -0 $ps 2>/dev/null && echo running || echo done)
	fi
	sleep 0.05
done
wait $ps
[ "$(cat "$TMPDIR_PG/share")" = "$elems" ] && [ "$peak" -le "$cap" ] && [ "$peak" -gt 0 ] && [ "$other" = ok ] &&
	ok "an array of $elems holds at most $cap of $slots slots (peak seen $peak); another session's call ran meanwhile ($still)" ||
	bad "backend share: result '$(cat "$TMPDIR_PG/share")', peak $peak of cap $cap, other call '$other'"

# --- fair queueing ---------------------------------------------------------------------
# one request per step at a time: the flood of role a is queued, role b's
# call goes ahead of a's queued requests instead of after all of them
sql -c "ALTER SYSTEM SET mms.max_batch = 2" -c "SELECT pg_reload_conf()" >/dev/null
sleep 0.5
psql -X -q -At -d $db -U regress_q_a -c "SELECT cardinality(mms_generate_batch('flan', array_fill('flood'::text, ARRAY[40]), '{\"max_new_tokens\": 4000, \"min_new_tokens\": 4000}'))" >"$TMPDIR_PG/flood" 2>&1 &
pa=$!
for i in $(seq 300); do
	q=$(sql -c "SELECT coalesce(sum(queued), 0) FROM mms.pools WHERE sha256 = '$flan_sha'")
	[ "${q:-0}" -ge 30 ] && break
	sleep 0.1
done
rb=$(call_as regress_q_b "SELECT mms_generate('flan', 'fair', '{\"max_new_tokens\": 5}')")
left=$(sql -c "SELECT coalesce(sum(queued), 0) FROM mms.pools WHERE sha256 = '$flan_sha'")
wait $pa
sql -c "ALTER SYSTEM RESET mms.max_batch" -c "SELECT pg_reload_conf()" >/dev/null
[ "$rb" = ok ] && [ "${left:-0}" -ge 20 ] && [ "$(cat "$TMPDIR_PG/flood")" = 40 ] &&
	ok "fair queueing: role b's call was served while $left of role a's 40 requests were still queued" ||
	bad "fair queueing: b '$rb' with $left of a's requests queued after it (queued before: $q); flood '$(cat "$TMPDIR_PG/flood")'"

dropdb $db
for r in $roles; do echo "DROP ROLE $r;"; done | psql -X -q -d postgres >/dev/null
