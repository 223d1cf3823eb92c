#!/bin/bash
# t_progress.sh — mms.progress while statements run, on the cluster of
# test/pg/run.sh:
#   - one mms_generate_batch of 5,000 elements: another session sees its row
#     (joined to pg_stat_activity by pid) with 5000 submitted, finished and
#     tokens growing, a remaining estimate once some finished;
#   - INSERT ... SELECT mms_generate(...) over 2,000 rows, batched
#     transparently: finished grows, more than one call in flight at a time
#     and never more than two batches (2 x mms.batch_rows);
#   - a role does not see another role's row, the owner's role does;
#   - a finished statement's row is gone.
# Samples are compared with each other, never with the clock.
set -u
ok() { echo "ok: $*"; }
bad() { echo "FAILED: $*"; }
db=mms_progress
sql() { psql -X -q -At -v ON_ERROR_STOP=1 -d $db "$@"; }
work=$(mktemp -d "${TMPDIR_PG:-/tmp}/progress.XXXXXX")

dropdb --if-exists $db 2>/dev/null
createdb $db || { bad "createdb $db"; exit 0; }
roles="regress_progress_a regress_progress_b"
{ echo "SET client_min_messages = warning;"; for r in $roles; do echo "DROP ROLE IF EXISTS $r; CREATE ROLE $r LOGIN;"; done; } |
	psql -X -q -d postgres
sql >/dev/null <<SQL || { bad "setup"; exit 0; }
CREATE EXTENSION mms;
SELECT mms_import('flan', '$MMS_TEST_DATA/flan_gated.gguf');
SELECT mms_grant('flan', 'public');
CREATE TABLE progress_out (t text);
GRANT ALL ON progress_out TO PUBLIC;
SQL
# enough output per request that each statement runs a few seconds
opts='{"max_new_tokens": 64, "min_new_tokens": 64}'
row_opts='{"max_new_tokens": 160, "min_new_tokens": 160}'
# warm up: the model loaded, a worker running
sql -c "SELECT mms_generate('flan', 'warm up', '$opts')" >/dev/null

# Runs statement $2 as role regress_progress_a (application_name $1) in the
# background and samples its mms.progress row until the statement ends:
# one line per sample, "submitted finished failed tokens remaining_set pid
# elapsed_s remaining_s".
run_and_sample() {
	local app=$1 stmt=$2 out=$3
	PGAPPNAME=$app psql -X -q -At -d $db -U regress_progress_a -c "$stmt" >"$out.result" 2>&1 &
	local bg=$!
	: >"$out"
	while kill -0 $bg 2>/dev/null; do
		sql -F' ' -c "SELECT p.requests_submitted, p.requests_finished, p.requests_failed,
		                     p.tokens_generated, p.remaining IS NOT NULL, p.pid,
		                     round(extract(epoch FROM p.elapsed), 1), round(extract(epoch FROM p.remaining), 1)
		              FROM mms.progress p JOIN pg_stat_activity a USING (pid)
		              WHERE a.application_name = '$app'" >>"$out"
		# the other role sees no row of it; the owner's role, in another session, does
		psql -X -q -At -d $db -U regress_progress_b -c "SELECT 'b ' || count(*) FROM mms.progress" >>"$out.vis"
		psql -X -q -At -d $db -U regress_progress_a -c "SELECT 'a ' || count(*) FROM mms.progress WHERE pid <> pg_backend_pid()" >>"$out.vis"
		sleep 0.1
	done
	wait $bg
}

# non-decreasing column $2 in file $1, and its first and last values differ
grows() { awk -v c="$2" 'NR > 1 && $c < prev { bad = 1 } { if (NR == 1) first = $c; prev = $c }
	END { exit !(NR > 1 && !bad && prev > first) }' "$1"; }

# --- one batch of 5,000 ---------------------------------------------------------
run_and_sample progress_batch \
	"SELECT count(*) FROM unnest(mms_generate_batch('flan', array(SELECT 'input ' || i FROM generate_series(1, 5000) i), '$opts'))" \
	"$work/batch"
[ "$(cat "$work/batch.result")" = 5000 ] || bad "the batch: $(head -3 "$work/batch.result")"
n=$(wc -l <"$work/batch")
mid=$(awk '$1 == 5000 && $2 > 0 && $2 < 5000' "$work/batch" | wc -l)
[ "$n" -ge 3 ] && [ "$mid" -ge 2 ] &&
	ok "the batch's row seen in $n samples, $mid of them with 5000 submitted and some finished (mid-way: $(sed -n "$((n / 2))p" "$work/batch" | awk '{ print $2 " finished, " $4 " tokens, " $7 " s elapsed, " $8 " s remaining" }'))" ||
	bad "batch samples: $n, mid-way: $mid: $(head -3 "$work/batch" | tr '\n' '|')"
grows "$work/batch" 2 && ok "requests_finished grows" || bad "finished: $(cut -d' ' -f2 "$work/batch" | tr '\n' ' ')"
grows "$work/batch" 4 && ok "tokens_generated grows" || bad "tokens: $(cut -d' ' -f4 "$work/batch" | tr '\n' ' ')"
awk '$2 > 0 && $5 != "t" { e = 1 } $2 == 0 && $3 == 0 && $5 != "f" { e = 1 } END { exit e }' "$work/batch" &&
	[ "$(awk '$5 == "t"' "$work/batch" | wc -l)" -ge 1 ] &&
	ok "remaining is estimated once a request finished, NULL before" ||
	bad "remaining: $(cut -d' ' -f2,5 "$work/batch" | tr '\n' '|')"
awk '$3 != 0 { e = 1 } END { exit e }' "$work/batch" && ok "no request failed" || bad "failed requests"
grep -q '^b [1-9]' "$work/batch.vis" && bad "regress_progress_b saw a row of regress_progress_a" ||
	ok "another role sees no row of it"
grep -q '^a [1-9]' "$work/batch.vis" && ok "the owner's role sees it from another session" ||
	bad "regress_progress_a never saw its own row"
pid=$(tail -1 "$work/batch" | cut -d' ' -f6)
[ -n "$pid" ] && [ "$(sql -c "SELECT count(*) FROM mms.progress WHERE pid = $pid")" = 0 ] &&
	ok "the row is gone once the statement ended" || bad "a row left after the end (pid '$pid')"

# --- INSERT ... SELECT mms_generate over 2,000 rows, batched ----------------------
run_and_sample progress_insert \
	"INSERT INTO progress_out SELECT mms_generate('flan', 'row ' || i, '$row_opts') FROM generate_series(1, 2000) i" \
	"$work/insert"
[ "$(sql -c "SELECT count(*) FROM progress_out")" = 2000 ] || bad "insert: $(head -3 "$work/insert.result")"
n=$(wc -l <"$work/insert")
[ "$n" -ge 3 ] && grows "$work/insert" 2 &&
	awk '{ f = $1 - $2 - $3 } f < 0 || f > 128 { e = 1 } f > 1 { many = 1 } END { exit e || !many }' "$work/insert" &&
	ok "INSERT ... SELECT mms_generate: $n samples, finished grows, batched (more than one call in flight, at most two batches of 64)" ||
	bad "insert samples: $(tr '\n' '|' <"$work/insert")"

# --- what the view is -----------------------------------------------------------
got=$(sql -c "SELECT count(*) FROM mms.progress WHERE database = '$db'")
[ "$got" = 0 ] && ok "no row of this database once its statements ended" || bad "rows while idle: $got"

dropdb $db
for r in $roles; do echo "DROP ROLE $r;"; done | psql -X -q -d postgres
rm -rf "$work"
