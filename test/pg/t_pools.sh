#!/bin/bash
# t_pools.sh — per-model worker pools, in the cluster of test/pg/run.sh:
#   (a) step load: a pool with min_workers 1, max_workers 3 grows to 3 (never
#       beyond) under 16 sessions, every answer equals mms-run's, then shrinks
#       back to 1 (never 0); mms.events records scale_up and scale_down;
#   (b) pinned: under a cache budget that holds one of two models, a pinned
#       model is never evicted for the other, and after a server restart it
#       is loaded again without any inference call;
#   (c) unregister in use: the request in flight completes, then the workers
#       exit and the cached weights go (an 'evict' event), unless another
#       registration still uses the same bytes;
#   (d) fairness: with mms.max_workers = 2 held by model A's pool (a long
#       generation on each worker), a call on model B completes while both of
#       A's generations still run (one of A's workers is preempted: its
#       request goes back to A's queue), and A's generations complete.
# Settings go through ALTER SYSTEM (reset on exit); a setting only read at
# server start restarts the server with the options it was started with
# (pg_ctl restart reuses postmaster.opts). Every part serves copies of the
# fixtures made here (own_copy), so that its cache rows, pools and events
# belong to it alone.
# Waits are polls with generous bounds; the assertions are about states and
# orderings, never about how long something took.
set -u
# A safety net, far above anything here: a statement that hangs (DDL waiting
# on a process that never answers, a request nobody serves) ends as a FAILED
# line instead of a stuck run.
export PGOPTIONS="${PGOPTIONS:-} -c statement_timeout=180s"
data=$MMS_TEST_DATA
root=${MMS_ROOT:-$(pwd)}
work=$TMPDIR_PG/pools
mkdir -p "$work"
ok() { echo "ok: $*"; }
bad() { echo "FAILED: $*"; }

db=mms_pools
sql() { psql -X -q -At -v ON_ERROR_STOP=1 -d $db "$@"; }
admin() { psql -X -q -At -v ON_ERROR_STOP=1 -d postgres "$@"; }
sha_of() { sha256sum "$1" | cut -c1-64; }
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
cli() { local f=$1; shift; "$root/build/mms-run" --model "$f" "$@"; }
# seconds of work for the server: 4096 tokens, 8 beams
LONG='{"max_new_tokens": 4096, "min_new_tokens": 4096, "num_beams": 8}'
LONG_CLI="--max-new-tokens 4096 --min-new-tokens 4096 --num-beams 8"

# wait_until BOUND_S QUERY: polls QUERY (answering t or f) in $db until it
# says t. Returns 0 then, 1 after BOUND_S seconds, 2 at once if the query
# fails (a missing view, say: no point in waiting); $poll_err tells.
wait_until() {
	local deadline=$((SECONDS + $1)) q=$2 out
	while :; do
		out=$(sql -c "$q" 2>&1) || { poll_err=$out; return 2; }
		[ "$out" = t ] && return 0
		[ $SECONDS -ge $deadline ] && { poll_err="after $1 s the answer is still '$out'"; return 1; }
		sleep 0.2
	done
}
# number of clients whose running query matches PATTERN
n_in_flight() {
	admin -c "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'
		AND query LIKE '%$1%' AND pid <> pg_backend_pid()"
}
# inference worker processes of this cluster, in any state: children of its
# postmaster titled "mms worker ..." (what mms.max_workers caps; counted from
# the process table so that it holds whatever the views say)
n_mms_workers() { pgrep -c -P "$(head -1 "$TMPDIR_PG/data/postmaster.pid")" -f '^postgres: mms worker'; }

# --- the server and its settings ---------------------------------------------------
if [ "$(id -u)" = 0 ]; then as_server() { runuser -u postgres -- "$@"; }; else as_server() { "$@"; }; fi
restart_server() {
	as_server pg_ctl -D "$TMPDIR_PG/data" -l "$TMPDIR_PG/server.log" -m fast -w restart >"$work/restart.log" 2>&1
}
changed=""		# settings this script changed, reset on exit
# set_gucs NAME=VALUE...: ALTER SYSTEM SET each, then reload, or restart when
# one of them is read only at server start (pg_settings.context 'postmaster').
set_gucs() {
	local kv name value out restart=0
	for kv in "$@"; do
		name=${kv%%=*}
		value=${kv#*=}
		out=$(admin -c "ALTER SYSTEM SET $name = '$value'" 2>&1) ||
			{ bad "ALTER SYSTEM SET $name = '$value': $out"; continue; }
		changed+=" $name"
		[ "$(admin -c "SELECT context FROM pg_settings WHERE name = '$name'")" = postmaster ] && restart=1
	done
	apply_gucs $restart "$@"
}
# apply_gucs RESTART [NAME=VALUE...]: makes the settings current; with values,
# waits until new sessions see them, then gives the launcher (which handles
# SIGHUP in its loop) a moment: a settle time, not an assertion.
apply_gucs() {
	local kv restart=$1
	shift
	if [ "$restart" = 1 ]; then
		restart_server || bad "server restart: $(tail -3 "$work/restart.log")"
		return
	fi
	admin -c "SELECT pg_reload_conf()" >/dev/null
	for kv in "$@"; do
		for _ in $(seq 50); do
			[ "$(admin -c "SHOW ${kv%%=*}" 2>/dev/null)" = "${kv#*=}" ] && break
			sleep 0.2
		done
	done
	sleep 1
}
reset_gucs() {
	local name restart=0
	for name in "$@"; do
		admin -c "ALTER SYSTEM RESET $name" >/dev/null
		[ "$(admin -c "SELECT context FROM pg_settings WHERE name = '$name'")" = postmaster ] && restart=1
	done
	apply_gucs $restart
}

bg_pids=""
cleanup() {
	for p in $bg_pids; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	# the server may be down if a restart failed: restart starts it anyway
	as_server pg_ctl -D "$TMPDIR_PG/data" status >/dev/null 2>&1 || restart_server
	PGOPTIONS="$PGOPTIONS -c statement_timeout=30s" admin -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
	# let this script's workers go before the next script runs
	set_gucs mms.worker_idle_timeout=100ms >/dev/null
	for _ in $(seq 300); do [ "$(n_mms_workers)" = 0 ] && break; sleep 0.2; done
	[ -n "$changed" ] && reset_gucs $changed
}
trap cleanup EXIT

PGOPTIONS="$PGOPTIONS -c statement_timeout=30s" admin -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
admin -c "CREATE DATABASE $db" >/dev/null && sql -c "CREATE EXTENSION mms" >/dev/null ||
	{ bad "setup of database $db"; exit 0; }

# The view's key column is called model in the install script and name in the
# design notes: accept either.
config_of() {
	sql -c "SELECT min_workers || '|' || max_workers || '|' || pinned || '|' || priority
		FROM mms.model_config c WHERE coalesce(to_jsonb(c) ->> 'model', to_jsonb(c) ->> 'name') = '$1'" 2>&1
}

# =====================================================================================
# (a) step load
# =====================================================================================
part_a() {
	step_file=$(own_copy flan_gated_f16 pools_step)
	step_sha=$(sha_of "$step_file")
	# Greedy: its answers do not depend on which requests share a decoder step
	# (beam search over hundreds of steps can: float sums in another order
	# can reorder near-equal beams).
	LOAD='{"max_new_tokens": 512, "min_new_tokens": 512}'
	sessions=$(seq 16)
	n_calls=40
	calls=$(seq $n_calls)
	# 640 references take a while: compute them while the server works
	for i in $sessions; do for j in $calls; do echo "step s$i c$j"; done; done >"$work/step.inputs"
	mapfile -t step_inputs <"$work/step.inputs"
	cli "$step_file" --max-new-tokens 512 --min-new-tokens 512 "${step_inputs[@]}" >"$work/step.want" 2>&1 &
	step_want_pid=$!
	bg_pids+=" $step_want_pid"

	# target 1 request per worker: 16 sessions ask for far more than 3 workers;
	# mms.max_workers above 3 so that the pool's own max is what stops it
	set_gucs mms.pool_target_requests=1 mms.worker_idle_timeout=2s mms.max_workers=5
	# Workers left by earlier scripts would take places under mms.max_workers.
	for _ in $(seq 300); do [ "$(n_mms_workers)" = 0 ] && break; sleep 0.2; done
	[ "$(n_mms_workers)" = 0 ] || echo "   note: $(n_mms_workers) workers of earlier scripts still run"

	sql -c "SELECT mms_import('step', '$step_file')" >/dev/null || { bad "import of step"; return; }
	got=$(config_of step)
	[ "$got" = "0|1|false|0" ] && ok "a new model has the default pool settings (min 0, max 1, not pinned, priority 0)" ||
		bad "mms.model_config of a new model: want 0|1|false|0 (min|max|pinned|priority), got '$got'"
	sql -c "SELECT mms_configure('step', min_workers => 1, max_workers => 3)" >/dev/null 2>"$work/err" ||
		bad "mms_configure('step', min_workers => 1, max_workers => 3): $(cat "$work/err")"
	got=$(config_of step)
	[ "$got" = "1|3|false|0" ] && ok "mms_configure sets min and max and leaves the NULL settings alone" ||
		bad "mms.model_config after mms_configure(min 1, max 3): want 1|3|false|0, got '$got'"

	# Sample the pool's size all along: pool rows and worker processes.
	rm -f "$work/step.stop"
	while [ ! -e "$work/step.stop" ]; do
		sql -c "SELECT coalesce((SELECT workers FROM mms.pools WHERE sha256 = '$step_sha'), 0)
			|| ' ' || (SELECT count(*) FROM mms.workers WHERE sha256 = '$step_sha')" 2>&1 | tr '\n' ' '
		echo
		sleep 0.1
	done >"$work/step.samples" &
	sampler=$!
	bg_pids+=" $sampler"

	# Ramp from 1 to 16 concurrent sessions, each running its calls in a row
	# (one request per row), so that every session keeps one request outstanding.
	session_pids=""
	load_start=$SECONDS
	for i in $sessions; do
		sql -c "SELECT mms_generate('step', 'step s$i c' || j, '$LOAD') FROM generate_series(1, $n_calls) j" \
			>"$work/step.$i.out" 2>&1 &
		session_pids+=" $!"
		sleep 0.25
	done
	wait $session_pids
	touch "$work/step.stop"
	wait $sampler
	load_s=$((SECONDS - load_start))

	errs=$(grep -m1 -E 'ERROR|FATAL' "$work/step.samples")
	read max_pool max_procs <<<"$(awk 'NF == 2 && $1 ~ /^[0-9]+$/ {
		if ($1 > p) p = $1; if ($2 > w) w = $2 } END { print p + 0, w + 0 }' "$work/step.samples")"
	if [ -n "$errs" ]; then
		bad "sampling mms.pools / mms.workers during the load: $errs"
	else
		[ "$max_pool" = 3 ] && ok "under load the pool grew to its max_workers (3)" ||
			bad "most workers mms.pools showed under load: want 3, got $max_pool (load of $load_s s; events: $(sql -c "SELECT string_agg(kind || ' ' || detail, '; ' ORDER BY at) FROM mms.events WHERE sha256 = '$step_sha'" 2>&1))"
		[ "$max_procs" -le 3 ] && ok "the pool never had more than 3 workers (most seen: $max_procs)" ||
			bad "mms.workers showed $max_procs workers for a pool with max_workers 3"
		echo "   pool sizes seen during the $load_s s load: $(awk 'NF == 2 {print $1}' "$work/step.samples" | uniq | tr '\n' ' ')"
	fi
	wait $step_want_pid
	# A request answered with another's tokens differs from the start. Over 512
	# greedy steps of this random-weight model, a near-tie can also flip late
	# when the request shares decoder steps with others (float sums in another
	# order); such late divergences are counted and allowed up to 1%.
	n_right=0
	n_late=0
	first_wrong=""
	for i in $sessions; do
		for j in $calls; do
			want=$(sed -n "$(( (i - 1) * n_calls + j ))p" "$work/step.want")
			got=$(sed -n "${j}p" "$work/step.$i.out")
			if [ -n "$want" ] && [ "$got" = "$want" ]; then
				n_right=$((n_right + 1))
			elif [ -n "$want" ] && [ ${#want} -gt 200 ] && [ "${got:0:200}" = "${want:0:200}" ]; then
				n_late=$((n_late + 1))
			elif [ -z "$first_wrong" ]; then
				first_wrong="'step s$i c$j': got '${got:0:120}...', want '${want:0:120}...'"
			fi
		done
	done
	n_all=$((16 * n_calls))
	[ $((n_right + n_late)) = $n_all ] && [ $((n_late * 100)) -le $n_all ] &&
		ok "all $n_all answers under the step load are their own request's: $n_right equal mms-run's, $n_late diverge only after their first 200 characters" ||
		bad "$n_right of $n_all answers under the step load equal mms-run's, $n_late diverge late; first wrong: $first_wrong"

	# After the load, idle workers above min_workers stop: back to 1, never 0.
	if wait_until 60 "SELECT workers = 1 FROM mms.pools WHERE sha256 = '$step_sha'"; then
		ok "after the load the pool shrinks back to min_workers (1)"
		low=1
		for _ in $(seq 30); do	# 6 s: three times mms.worker_idle_timeout
			n=$(sql -c "SELECT coalesce((SELECT workers FROM mms.pools WHERE sha256 = '$step_sha'), 0)")
			[ "$n" -lt "$low" ] 2>/dev/null && low=$n
			sleep 0.2
		done
		[ "$low" = 1 ] && ok "the pool stays at min_workers when idle (never 0)" ||
			bad "an idle pool with min_workers 1 went down to $low workers"
	else
		bad "the pool did not shrink back to 1 worker: $poll_err"
	fi
	got=$(sql -c "SELECT count(*) FILTER (WHERE kind = 'scale_up') || ' ' || count(*) FILTER (WHERE kind = 'scale_down')
		FROM mms.events WHERE sha256 = '$step_sha'" 2>&1)
	read n_up n_down <<<"$got"
	[ "${n_up:-0}" -ge 1 ] 2>/dev/null && [ "${n_down:-0}" -ge 1 ] 2>/dev/null &&
		ok "mms.events records the pool's changes ($n_up scale_up, $n_down scale_down)" ||
		bad "mms.events for the step pool: want scale_up and scale_down rows, got (up down) '$got'; its events: $(sql -c "SELECT string_agg(kind || ' (' || detail || ')', '; ' ORDER BY at) FROM mms.events WHERE sha256 = '$step_sha'" 2>&1)"

	# Release the pool for the parts below: its worker must not hold cache room.
	sql -c "SELECT mms_configure('step', min_workers => 0)" >/dev/null 2>&1
	wait_until 60 "SELECT count(*) = 0 FROM mms.workers WHERE sha256 = '$step_sha'" ||
		bad "with min_workers 0 the step pool's last worker did not stop: $poll_err"
	sql -c "SELECT mms_unload('step')" >/dev/null 2>&1
}

# =====================================================================================
# (b) pinned models
# =====================================================================================
part_b() {
	pin_file=$(own_copy depth_3_1 pools_pin)
	big_file=$(own_copy inner_48 pools_big)
	pin_sha=$(sha_of "$pin_file")
	big_sha=$(sha_of "$big_file")
	sql -c "SELECT mms_import('pin', '$pin_file')" -c "SELECT mms_import('big', '$big_file')" >/dev/null ||
		{ bad "import of pin and big"; return; }
	want_pin=$(cli "$pin_file" --max-new-tokens 8 "pinned")
	want_big=$(cli "$big_file" --max-new-tokens 8 "needs room")

	# What each takes in the cache, loaded once under the default budget.
	for m in pin big; do sql -c "SELECT mms_generate('$m', 'measure', '{\"max_new_tokens\": 2}')" >/dev/null 2>&1; done
	read b_pin b_big <<<"$(sql -c "SELECT (SELECT bytes FROM mms.cache WHERE sha256 = '$pin_sha') || ' ' ||
		(SELECT bytes FROM mms.cache WHERE sha256 = '$big_sha')" 2>&1 | tr '\n' ' ')"
	mb=1048576
	budget_mb=0
	if [ "${b_pin:-0}" -gt 0 ] 2>/dev/null && [ "${b_big:-0}" -gt 0 ] 2>/dev/null; then
		larger=$((b_pin > b_big ? b_pin : b_big))
		budget_mb=$(( (larger + mb - 1) / mb ))
		[ $((b_pin + b_big)) -gt $((budget_mb * mb)) ] || budget_mb=0
	fi
	if [ $budget_mb = 0 ]; then
		bad "no mms.cache_size holds one of pin and big but not both (cache bytes: pin '$b_pin', big '$b_big'); pinned part skipped"
	else
		# Both unused and out of the cache, then the small budget and the pin.
		wait_until 60 "SELECT count(*) = 0 FROM mms.workers WHERE sha256 IN ('$pin_sha', '$big_sha')" ||
			bad "the workers of pin and big did not stop when idle: $poll_err"
		sql -c "SELECT mms_unload('pin')" -c "SELECT mms_unload('big')" >/dev/null 2>&1
		set_gucs mms.cache_size=${budget_mb}MB
		pinned_at=$(sql -c "SELECT clock_timestamp()")
		sql -c "SELECT mms_configure('pin', pinned => true)" >/dev/null 2>"$work/err" ||
			bad "mms_configure('pin', pinned => true): $(cat "$work/err")"
		got=$(config_of pin)
		[ "$got" = "0|1|true|0" ] && ok "mms_configure pins a model" || bad "mms.model_config of pin: want 0|1|true|0, got '$got'"
		got=$(sql -c "SELECT mms_generate('pin', 'pinned', '{\"max_new_tokens\": 8}')" 2>&1)
		[ "$got" = "$want_pin" ] || bad "pin: got '$got', want '$want_pin'"
		loaded_at=$(sql -c "SELECT loaded_at FROM mms.cache WHERE sha256 = '$pin_sha'" 2>&1)
		# Only the pin may protect it: wait until no worker holds it.
		wait_until 60 "SELECT workers = 0 FROM mms.cache WHERE sha256 = '$pin_sha'" ||
			bad "pin's worker did not stop when idle (mms.cache.workers): $poll_err"
		got=$(sql -c "SELECT mms_generate('big', 'needs room', '{\"max_new_tokens\": 8}')" 2>&1)
		if [ "$got" = "$want_big" ]; then
			ok "the unpinned model is served in the room left"
		elif grep -qi cache <<<"$got"; then
			ok "the unpinned model that does not fit beside the pinned one gets an error about the cache"
		else
			bad "big under a ${budget_mb} MB budget with pin pinned: want mms-run's result or an error about the cache, got '$got'"
		fi
		got=$(sql -c "SELECT state || '|' || pinned || '|' || (loaded_at = '$loaded_at')
			FROM mms.cache WHERE sha256 = '$pin_sha'" 2>&1)
		[ "$got" = "ready|true|true" ] && ok "the pinned model stayed in the cache, never reloaded" ||
			bad "pin's mms.cache row after big asked for room: want ready|true|true (state|pinned|same loaded_at), got '$got'"
		got=$(sql -c "SELECT count(*) FROM mms.events WHERE sha256 = '$pin_sha' AND kind = 'evict' AND at > '$pinned_at'" 2>&1)
		[ "$got" = 0 ] && ok "no evict event for the pinned model" || bad "evict events for the pinned model since it was pinned: $got"

		# A restart: the pin alone brings the model back, no call needed.
		restart_server || bad "server restart: $(tail -3 "$work/restart.log")"
		if wait_until 60 "SELECT state = 'ready' FROM mms.cache WHERE sha256 = '$pin_sha'"; then
			ok "after a restart the pinned model is loaded without any call"
		else
			bad "after a restart, pin is not 'ready' in mms.cache: $poll_err"
		fi
		got=$(sql -c "SELECT count(*) FROM mms.cache WHERE sha256 = '$big_sha'" 2>&1)
		[ "$got" = 0 ] && ok "an unpinned model is not loaded at start" || bad "big in mms.cache after a restart with no call: '$got' rows"
		got=$(sql -c "SELECT mms_generate('pin', 'pinned', '{\"max_new_tokens\": 8}')" 2>&1)
		[ "$got" = "$want_pin" ] && ok "the model loaded at start serves" || bad "pin after restart: got '$got', want '$want_pin'"

		sql -c "SELECT mms_configure('pin', pinned => false)" >/dev/null 2>&1
		reset_gucs mms.cache_size
	fi
}

# =====================================================================================
# (c) unregister a version in use
# =====================================================================================
part_c() {
	solo_file=$(own_copy flan_gated_q4_0 pools_solo)
	twin_file=$(own_copy flan_gated_q8_0 pools_twin)
	solo_sha=$(sha_of "$solo_file")
	twin_sha=$(sha_of "$twin_file")
	sql -c "SELECT mms_import('solo', '$solo_file')" -c "SELECT mms_import('twin', '$twin_file')" \
		-c "SELECT mms_import('twin', '$twin_file')" >/dev/null || { bad "import of solo and twin"; return; }
	cli "$solo_file" $LONG_CLI "unregister me" >"$work/solo.want" 2>&1 &
	bg_pids+=" $!"
	solo_want_pid=$!
	cli "$twin_file" $LONG_CLI "twin in use" >"$work/twin.want" 2>&1 &
	bg_pids+=" $!"
	twin_want_pid=$!

	# solo: the only registration of its bytes
	sql -c "SELECT mms_generate('solo', 'unregister me', '$LONG')" >"$work/solo.out" 2>&1 &
	solo=$!
	bg_pids+=" $solo"
	wait_until 60 "SELECT coalesce(sum(running), 0) >= 1 FROM mms.pools WHERE sha256 = '$solo_sha'" ||
		{ bad "the generation on solo never showed as running in mms.pools: $poll_err"; sleep 1; }
	solo_pids=$(sql -c "SELECT string_agg(pid::text, ',') FROM mms.workers WHERE sha256 = '$solo_sha'" 2>/dev/null)
	out=$(sql -c "SELECT mms_unregister('solo:1')" 2>&1) && ok "unregister of a version in use" ||
		bad "mms_unregister('solo:1') while in use: $out"
	[ "$(n_in_flight 'unregister me')" = 1 ] && ok "the unregister returned while the generation still ran" ||
		bad "the generation on solo had ended before the unregister did: the unregister was not tested in use"
	wait $solo
	wait $solo_want_pid
	[ -s "$work/solo.want" ] && [ "$(cat "$work/solo.out")" = "$(cat "$work/solo.want")" ] &&
		ok "the request in flight completes after the unregister" ||
		bad "in flight during unregister: got '$(head -c 200 "$work/solo.out")', want '$(head -c 200 "$work/solo.want")'"
	if wait_until 60 "SELECT NOT EXISTS (SELECT 1 FROM mms.cache WHERE sha256 = '$solo_sha')
			AND NOT EXISTS (SELECT 1 FROM mms.workers WHERE sha256 = '$solo_sha')"; then
		ok "then its workers leave mms.workers and its weights leave mms.cache"
	else
		bad "after unregister of solo: want no mms.cache and no mms.workers row for its sha256: $poll_err"
	fi
	if [ -n "$solo_pids" ]; then
		for _ in $(seq 300); do
			left=""
			for pid in ${solo_pids//,/ }; do
				grep -q 'mms worker' "/proc/$pid/cmdline" 2>/dev/null && left+=" $pid"
			done
			[ -z "$left" ] && break
			sleep 0.2
		done
		[ -z "$left" ] && ok "its worker processes ($solo_pids) exited" || bad "solo's worker processes$left still run after 60 s"
	else
		bad "no worker of solo seen in mms.workers during its generation"
	fi
	got=$(sql -c "SELECT count(*) FROM mms.events WHERE sha256 = '$solo_sha' AND kind = 'evict'" 2>&1)
	[ "$got" -ge 1 ] 2>/dev/null && ok "mms.events records the eviction" || bad "evict events for solo's sha256: '$got'"

	# twin:1 and twin:2 share their bytes: unregistering one keeps the weights for the other.
	want2=$(cli "$twin_file" --max-new-tokens 8 "the other twin")
	got=$(sql -c "SELECT mms_generate('twin:2', 'the other twin', '{\"max_new_tokens\": 8}')" 2>&1)
	[ "$got" = "$want2" ] || bad "twin:2: got '$got', want '$want2'"
	sql -c "SELECT mms_generate('twin:1', 'twin in use', '$LONG')" >"$work/twin.out" 2>&1 &
	twin=$!
	bg_pids+=" $twin"
	wait_until 60 "SELECT coalesce(sum(running), 0) >= 1 FROM mms.pools WHERE sha256 = '$twin_sha'" ||
		{ bad "the generation on twin:1 never showed as running in mms.pools: $poll_err"; sleep 1; }
	twin_loaded=$(sql -c "SELECT loaded_at FROM mms.cache WHERE sha256 = '$twin_sha'" 2>&1)
	out=$(sql -c "SELECT mms_unregister('twin:1')" 2>&1) || bad "mms_unregister('twin:1') while in use: $out"
	wait $twin
	wait $twin_want_pid
	[ -s "$work/twin.want" ] && [ "$(cat "$work/twin.out")" = "$(cat "$work/twin.want")" ] &&
		ok "a request in flight on twin:1 completes after its unregister" ||
		bad "twin:1 in flight: got '$(head -c 200 "$work/twin.out")', want '$(head -c 200 "$work/twin.want")'"
	got=$(sql -c "SELECT mms_generate('twin:2', 'the other twin', '{\"max_new_tokens\": 8}')" 2>&1)
	[ "$got" = "$want2" ] && ok "twin:2 still serves after twin:1 is unregistered" || bad "twin:2 after twin:1 went: got '$got', want '$want2'"
	got=$(sql -c "SELECT count(*) || '|' || bool_and(loaded_at = '$twin_loaded') || '|' ||
		bool_and('$db/twin:2' = ANY (models) AND NOT '$db/twin:1' = ANY (models))
		FROM mms.cache WHERE sha256 = '$twin_sha'" 2>&1)
	[ "$got" = "1|true|true" ] && ok "the shared bytes stay cached, not reloaded, listed for twin:2 only" ||
		bad "twin's mms.cache row: want 1|true|true (rows|same loaded_at|models has $db/twin:2 and not $db/twin:1), got '$got'"
	sql -c "SELECT mms_unregister('twin:2')" >/dev/null 2>&1
	wait_until 60 "SELECT NOT EXISTS (SELECT 1 FROM mms.cache WHERE sha256 = '$twin_sha')" &&
		ok "unregistering the last user frees the shared bytes" || bad "twin's bytes still cached after both versions went: $poll_err"
}

# =====================================================================================
# (d) fairness under mms.max_workers
# =====================================================================================
part_d() {
	fa_file=$(own_copy flan_gated pools_fa)
	fb_file=$(own_copy t5_relu_tied pools_fb)
	fa_sha=$(sha_of "$fa_file")
	want_b=$(cli "$fb_file" --max-new-tokens 8 "fair B")
	sql -c "SELECT mms_import('fa', '$fa_file')" -c "SELECT mms_import('fb', '$fb_file')" \
		-c "SELECT mms_configure('fa', max_workers => 2)" >/dev/null || { bad "setup of fa and fb"; return; }
	# No worker of the parts above may hold one of the two places.
	for _ in $(seq 300); do [ "$(n_mms_workers)" = 0 ] && break; sleep 0.2; done
	# Idle workers must not leave by themselves here (that would make room for B
	# without any fairness), and 2 requests on one worker exceed the target of 1.
	set_gucs mms.max_workers=2 mms.pool_target_requests=1 mms.worker_idle_timeout=10min

	# A1 first; A2 once A1 runs: while the pool may grow, a worker holds at
	# most the target (1), so A2 waits in the queue and the pool grows to a
	# second worker, which takes it. Both places are A's then, each running a
	# long generation: B gets a place by preemption (one of A's workers gives
	# its request back to A's queue, where A's other worker takes it), not by
	# waiting for A's requests to end.
	sql -c "SELECT mms_generate('fa', 'fair A1', '$LONG')" >"$work/a1.out" 2>&1 &
	a1=$!
	bg_pids+=" $a1"
	wait_until 60 "SELECT coalesce(sum(running), 0) >= 1 FROM mms.pools WHERE sha256 = '$fa_sha'" ||
		{ bad "A1 never showed as running in mms.pools: $poll_err"; sleep 1; }
	sql -c "SELECT mms_generate('fa', 'fair A2', '$LONG')" >"$work/a2.out" 2>&1 &
	a2=$!
	bg_pids+=" $a2"
	# The scene, waited for only while A's generations last (once both are
	# running: A2's session may not have sent its query yet).
	scene_ok=0
	a_running="(SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%fair A%' AND pid <> pg_backend_pid())"
	wait_until 30 "SELECT $a_running = 2"
	[ $? = 2 ] && bad "the wait for A2 failed: $poll_err"
	wait_until 60 "SELECT (SELECT running = 2 AND workers = 2 FROM mms.pools WHERE sha256 = '$fa_sha') IS TRUE OR $a_running < 2"
	[ $? = 2 ] && bad "the wait for A's scene failed: $poll_err"
	got=$(sql -c "SELECT running || '|' || workers || '|' || $a_running FROM mms.pools WHERE sha256 = '$fa_sha'" 2>&1)
	placement=$(sql -c "SELECT string_agg(running::text, ',' ORDER BY running DESC) FROM mms.workers WHERE sha256 = '$fa_sha'" 2>&1)
	n_procs=$(n_mms_workers)
	if [ "$got" != "2|2|2" ]; then
		bad "fairness not tested: A's pool never ran both requests with 2 workers while they lasted (2 outstanding, target 1 per worker, max_workers 2); mms.pools running|workers|A calls active: '$got'"
	elif [ "$placement" != "1,1" ]; then
		bad "fairness not tested: want A's two requests on two workers (running per worker 1,1), got '$placement'"
	elif [ "$n_procs" != 2 ]; then
		bad "fairness not tested: want both places of mms.max_workers = 2 taken by A, got $n_procs worker processes"
	else
		scene_ok=1
	fi

	rm -f "$work/fair.stop"
	while [ ! -e "$work/fair.stop" ]; do n_mms_workers; sleep 0.1; done >"$work/fair.samples" 2>&1 &
	sampler=$!
	bg_pids+=" $sampler"
	got=$(sql -c "SELECT mms_generate('fb', 'fair B', '{\"max_new_tokens\": 8}')" 2>&1)
	n_a=$(n_in_flight 'fair A')
	touch "$work/fair.stop"
	wait $sampler
	[ "$got" = "$want_b" ] && ok "B gets mms-run's result while A's pool is busy" || bad "fb: got '$got', want '$want_b'"
	if [ $scene_ok = 1 ]; then
		[ "$n_a" = 2 ] && ok "B completed while both of A's long generations were still running" ||
			bad "B completed when $n_a of A's 2 long generations still ran: want 2 (B must not wait for A's requests)"
		got=$(sql -c "SELECT count(*) FROM mms.events WHERE sha256 = '$fa_sha' AND kind = 'scale_down'" 2>&1)
		[ "$got" -ge 1 ] 2>/dev/null && ok "mms.events records the preemption of one of A's workers (scale_down)" ||
			bad "scale_down events for A: want >= 1, got '$got'"
	fi
	most=$(sort -n "$work/fair.samples" | tail -1)
	[ "${most:-9}" -le 2 ] 2>/dev/null && ok "never more than mms.max_workers = 2 worker processes (most seen: $most)" ||
		bad "worker processes seen while B was served: most '$most', mms.max_workers is 2"
	wait $a1 $a2
	# A1 and A2 shared their decoder steps: over 4096 steps beam search may
	# then keep another of two near-equal beams than mms-run alone would, so
	# here "complete" means an answer and no error, not mms-run's answer.
	for f in a1 a2; do
		if [ "$(wc -l <"$work/$f.out")" = 1 ] && ! grep -qE 'ERROR|FATAL|server closed' "$work/$f.out"; then
			ok "A's generation ${f^} completes"
		else
			bad "A's generation ${f^}: want one answer, got '$(head -c 300 "$work/$f.out")'"
		fi
	done
}

# MMS_POOLS_PARTS=ac runs only (a) and (c), for debugging
for part in a b c d; do
	case ${MMS_POOLS_PARTS:-abcd} in *$part*) part_$part ;; esac
done
