#!/bin/bash
# t_robustness.sh — what a hostile user or a careless DBA must not break, in the
# cluster of test/pg/run.sh, across databases and processes:
#   - the views hide other databases' rows and worker pids from ordinary roles;
#   - cached weights go as soon as their model is unregistered, and when their
#     database is dropped WITH (FORCE) while a worker serves it;
#   - DROP EXTENSION refuses while models are registered; CASCADE leaves no
#     large object behind;
#   - mms.worker_memory: a request that can never fit fails naming its options,
#     requests that fit one at a time all succeed, one at a time;
#   - a text of more than 1 GB is refused, not built (it used to crash the backend).
set -u
data=$MMS_TEST_DATA
work=$TMPDIR_PG/robustness
mkdir -p "$work"
ok() { echo "ok: $*"; }
bad() { echo "FAILED: $*"; }
sql() { local d=$1; shift; psql -X -q -At -v ON_ERROR_STOP=1 -d "$d" "$@"; }
# polls a query until it prints the wanted value (10 s)
wait_for() {
	local d=$1 q=$2 want=$3
	for _ in $(seq 100); do
		[ "$(sql "$d" -c "$q" 2>/dev/null)" = "$want" ] && return 0
		sleep 0.1
	done
	return 1
}

for d in mms_rob1 mms_rob2 mms_rob3; do
	dropdb --if-exists "$d" 2>/dev/null
	createdb "$d" || { bad "createdb $d"; exit 0; }
	sql "$d" -c "CREATE EXTENSION mms" -c "SELECT mms_import('flan', '$data/flan_gated.gguf')" \
		-c "SELECT mms_grant('flan', 'public')" >/dev/null || { bad "setup $d"; exit 0; }
done
psql -X -q -c "DROP ROLE IF EXISTS regress_rob_user" -c "DROP ROLE IF EXISTS regress_rob_stats" \
	-c "CREATE ROLE regress_rob_user LOGIN" -c "CREATE ROLE regress_rob_stats LOGIN" \
	-c "GRANT pg_read_all_stats TO regress_rob_stats" -d postgres >/dev/null

# --- views: other databases hidden --------------------------------------------------
# flan's bytes are the same in every database: one served model (one mms.cache
# row) for all; own:1, other bytes imported in mms_rob1 alone, is none of
# mms_rob2's business
sql mms_rob1 -c "SELECT mms_import('own', '$data/flan_gated_q8_0.gguf')" >/dev/null || bad "import own in mms_rob1"
own_sha=$(sql mms_rob1 -c "SELECT sha256 FROM mms.models WHERE name = 'own'")
for d in mms_rob1 mms_rob2; do
	sql "$d" -c "SELECT mms_generate('flan', 'warm $d', '{\"max_new_tokens\": 4}')" >/dev/null
done
sql mms_rob1 -c "SELECT mms_generate('own', 'warm', '{\"max_new_tokens\": 4}')" >/dev/null
# no row mentions another database: not its statistics, not its registrations
# in the models of shared weights, nothing of the weights it alone uses
other=$(sql mms_rob2 -U regress_rob_user -c "SELECT (SELECT count(*) FROM mms.stat_models WHERE database <> current_database())
	+ (SELECT count(*) FROM mms.cache, unnest(models) m WHERE split_part(m, '/', 1) <> current_database())
	+ (SELECT count(*) FROM mms.cache WHERE sha256 = '$own_sha')
	+ (SELECT count(*) FROM mms.pools WHERE sha256 = '$own_sha' OR model IS NULL)
	+ (SELECT count(*) FROM mms.workers WHERE sha256 = '$own_sha' OR model IS NULL)
	+ (SELECT count(*) FROM mms.events WHERE sha256 = '$own_sha')")
mine=$(sql mms_rob2 -U regress_rob_user -c "SELECT count(*) FROM mms.stat_models")
mine_cache=$(sql mms_rob2 -U regress_rob_user -c "SELECT count(*) FROM mms.cache WHERE current_database() || '/flan:1' = ANY(models)")
pids=$(sql mms_rob2 -U regress_rob_user -c "SELECT count(*) FROM mms.workers WHERE pid IS NOT NULL")
[ -n "$own_sha" ] && [ "$other" = 0 ] && [ "$mine" -ge 1 ] && [ "$mine_cache" = 1 ] && [ "$pids" = 0 ] &&
	ok "an ordinary role sees only its database's rows, without worker pids" ||
	bad "ordinary role: $other rows of other databases, $mine stat_models and $mine_cache cache rows of its own, $pids pids (own:1 sha256 '$own_sha')"
seen=$(sql mms_rob2 -U regress_rob_stats -c "SELECT count(DISTINCT database) FROM mms.stat_models WHERE database IN ('mms_rob1', 'mms_rob2')")
seen_cache=$(sql mms_rob2 -U regress_rob_stats -c "SELECT (SELECT count(*) FROM mms.cache WHERE sha256 = '$own_sha')
	+ (SELECT count(*) FROM mms.cache WHERE 'mms_rob1/flan:1' = ANY(models) AND 'mms_rob2/flan:1' = ANY(models))")
pids=$(sql mms_rob2 -U regress_rob_stats -c "SELECT count(*) FROM mms.workers WHERE pid IS NOT NULL")
[ "$seen" = 2 ] && [ "$seen_cache" = 2 ] && [ "$pids" -ge 1 ] && ok "pg_read_all_stats sees every database and the pids" ||
	bad "pg_read_all_stats sees $seen databases in mms.stat_models, $seen_cache of 2 mms.cache rows (own:1, flan of both), $pids pids"

# --- cached weights freed promptly ----------------------------------------------------
# own:1's weights are mms_rob1's alone: they go; flan's stay for mms_rob2,
# without mms_rob1's registration in their models
cached="SELECT count(*) FROM mms.cache WHERE current_database() || '/flan:1' = ANY(models)"
own_cached="SELECT count(*) FROM mms.cache WHERE sha256 = '$own_sha'"
[ "$(sql mms_rob1 -c "$cached")" = 1 ] || bad "flan:1 is not cached in mms_rob1"
[ "$(sql mms_rob1 -c "$own_cached")" = 1 ] || bad "own:1 is not cached in mms_rob1"
sql mms_rob1 -c "SELECT mms_unregister('flan')" -c "SELECT mms_unregister('own')" >/dev/null
wait_for mms_rob1 "$own_cached" 0 && ok "unregister frees the cached weights at once" ||
	bad "unregistered model still cached: $(sql mms_rob1 -c "SELECT * FROM mms.cache")"
wait_for mms_rob1 "$cached" 0 &&
	[ "$(sql mms_rob2 -c "SELECT count(*) FROM mms.cache WHERE current_database() || '/flan:1' = ANY(models)")" = 1 ] &&
	ok "weights another database still uses stay, without the unregistered name" ||
	bad "after unregistering flan in mms_rob1 (mms_rob2 keeps it): $(sql mms_rob1 -c "SELECT sha256, models, state FROM mms.cache")"
[ "$(sql mms_rob1 -c "SELECT count(*) FROM mms.stat_models WHERE database = current_database() AND model = 'flan:1'")" = 0 ] &&
	ok "and its statistics" || bad "an unregistered model keeps its statistics"

# an unregister rolled back to a savepoint leaves the cache alone
loaded="SELECT loaded_at FROM mms.cache WHERE current_database() || '/flan:1' = ANY(models)"
sql mms_rob2 -c "SELECT mms_generate('flan', 'warm', '{\"max_new_tokens\": 2}')" >/dev/null
t0=$(sql mms_rob2 -c "$loaded")
sql mms_rob2 -c "BEGIN" -c "SAVEPOINT s" -c "SELECT mms_unregister('flan')" -c "ROLLBACK TO s" -c "COMMIT" >/dev/null
sleep 0.5
[ -n "$t0" ] && [ "$(sql mms_rob2 -c "$loaded")" = "$t0" ] && ok "an unregister rolled back to a savepoint keeps the cached weights" ||
	bad "savepoint rollback: cache row '$(sql mms_rob2 -c "$loaded")', was '$t0'"

# a prepared transaction would commit in another process, where nothing frees the cache
err=$(sql mms_rob2 -c "BEGIN" -c "SELECT mms_unregister('flan')" -c "PREPARE TRANSACTION 'mms_rob'" 2>&1)
grep -q "cannot PREPARE a transaction that unregistered mms models" <<<"$err" &&
	[ "$(sql mms_rob2 -c "SELECT count(*) FROM mms.models WHERE name = 'flan'")" = 1 ] &&
	ok "PREPARE after an unregister is refused, and the model stays" || bad "PREPARE after unregister: $err"

# a call that arrives while an unregister is not yet committed loads the
# weights again; the commit must free that copy too (bytes no other model has)
sql mms_rob1 -c "SELECT mms_import('race', '$data/flan_gated_q4_0.gguf')" >/dev/null
race_sha=$(sql mms_rob1 -c "SELECT sha256 FROM mms.models WHERE name = 'race'")
sql mms_rob1 -c "BEGIN" -c "SELECT mms_unregister('race:1')" -c "SELECT pg_sleep(2)" -c "COMMIT" >/dev/null &
unreg=$!
sleep 0.5
sql mms_rob1 -c "SELECT mms_generate('race:1', 'in the window', '{\"max_new_tokens\": 4}') IS NOT NULL" >/dev/null ||
	bad "call during the unregister window"
wait "$unreg"
[ -n "$race_sha" ] && wait_for mms_rob1 "SELECT count(*) FROM mms.cache WHERE sha256 = '$race_sha'" 0 &&
	ok "a copy loaded while an unregister was in flight is freed at its commit" ||
	bad "race:1 still cached: $(sql mms_rob1 -c "SELECT * FROM mms.cache")"

# weights only mms_rob3 uses (flan's are shared with mms_rob2)
sql mms_rob3 -c "SELECT mms_import('solo', '$data/flan_gated_bf16.gguf')" >/dev/null
solo_sha=$(sql mms_rob3 -c "SELECT sha256 FROM mms.models WHERE name = 'solo'")
sql mms_rob3 -c "SELECT mms_generate('solo', 'busy', '{\"max_new_tokens\": 4096, \"min_new_tokens\": 4096, \"num_beams\": 4}')" \
	>/dev/null 2>&1 &
busy=$!
wait_for mms_rob2 "SELECT count(*) FROM mms.workers WHERE sha256 = '$solo_sha' AND batch_size > 0" 1 ||
	bad "no worker busy in mms_rob3: $(sql mms_rob2 -c "SELECT * FROM mms.workers")"
sql postgres -c "DROP DATABASE mms_rob3 WITH (FORCE)" || bad "DROP DATABASE WITH (FORCE)"
wait "$busy" 2>/dev/null
[ -n "$solo_sha" ] && wait_for mms_rob2 "SELECT count(*) FROM mms.cache WHERE sha256 = '$solo_sha'" 0 &&
	ok "DROP DATABASE WITH (FORCE) under load frees its cached weights" ||
	bad "a dropped database's weights stay cached: $(sql mms_rob2 -c "SELECT * FROM mms.cache")"

# --- DROP EXTENSION ---------------------------------------------------------------------
err=$(sql mms_rob2 -c "DROP EXTENSION mms" 2>&1)
grep -q "cannot drop extension mms because models are registered" <<<"$err" &&
	ok "DROP EXTENSION refuses while models are registered" || bad "DROP EXTENSION: $err"
sql mms_rob2 -c "DROP EXTENSION mms CASCADE" >/dev/null 2>&1 || bad "DROP EXTENSION CASCADE failed"
[ "$(sql mms_rob2 -c "SELECT count(*) FROM pg_largeobject_metadata")" = 0 ] &&
	ok "DROP EXTENSION CASCADE leaves no large object" ||
	bad "large objects left: $(sql mms_rob2 -c "SELECT count(*) FROM pg_largeobject_metadata")"

# --- mms.worker_memory ----------------------------------------------------------------
# R needs several MB (8 beams of 2048 tokens); the error under a 1 MB budget says how many.
R='{"num_beams": 8, "max_new_tokens": 2048, "min_new_tokens": 2048}'
set_budget() {
	psql -X -q -d postgres -c "ALTER SYSTEM SET mms.worker_memory = '$1'" -c "SELECT pg_reload_conf()" >/dev/null
	sleep 0.5
	# workers read it at their next loop; a fresh worker surely has it
	sql mms_rob1 -c "SELECT mms_unload('flan2')" >/dev/null 2>&1
}
sql mms_rob1 -c "SELECT mms_import('flan2', '$data/flan_gated.gguf')" >/dev/null
set_budget 1MB
err=$(sql mms_rob1 -c "SELECT mms_generate('flan2', 'big', '$R')" 2>&1)
if grep -q "more than mms.worker_memory" <<<"$err" && grep -q "num_beams 8, max_new_tokens 2048" <<<"$err"; then
	ok "a request that can never fit fails, naming its options"
else
	bad "oversized request: $err"
fi
need_kb=$(sed -n 's/.*needs \([0-9]*\) kB.*/\1/p' <<<"$err")
if [ -n "$need_kb" ] && [ "$need_kb" -gt 1024 ]; then
	# room for one R at a time, not two
	set_budget "$(( (need_kb * 3 / 2 + 1023) / 1024 ))MB"
	sql mms_rob1 -c "SELECT mms_stat_reset()" >/dev/null
	for i in 1 2 3 4; do
		sql mms_rob1 -c "SELECT length(mms_generate('flan2', 'waits $i', '$R')) > 0" >"$work/mem$i.out" 2>&1 &
	done
	wait
	n_ok=$(cat "$work"/mem?.out | grep -c '^t$')
	maxb=$(sql mms_rob1 -c "SELECT max(max_batch) FROM mms.stat_models WHERE database = current_database() AND model = 'flan2:1'")
	[ "$n_ok" = 4 ] && [ "${maxb:-99}" -le 8 ] &&
		ok "requests that fit one at a time wait for each other (4 of 4 served, at most $maxb rows a step)" ||
		bad "under the budget: $n_ok of 4 served, batches up to $maxb rows: $(cat "$work"/mem?.out)"
else
	bad "could not read the request's size from: $err"
fi
# raised by a reload: a running worker serves what now fits
psql -X -q -d postgres -c "ALTER SYSTEM SET mms.worker_memory = '512MB'" -c "SELECT pg_reload_conf()" >/dev/null
sleep 0.5
out=$(sql mms_rob1 -c "SELECT length(mms_generate('flan2', 'raised', '{\"num_beams\": 16, \"max_new_tokens\": 2048, \"min_new_tokens\": 2048}')) > 0" 2>&1)
[ "$out" = t ] && ok "a budget raised by reload applies to running workers" || bad "after raising mms.worker_memory: $out"
psql -X -q -d postgres -c "ALTER SYSTEM RESET mms.worker_memory" -c "SELECT pg_reload_conf()" >/dev/null
err=$(psql -X -q -d postgres -c "ALTER SYSTEM SET mms.worker_memory = '512kB'" 2>&1)
grep -q "at least 1MB" <<<"$err" && ok "mms.worker_memory below 1MB is refused, not read as automatic" || bad "512kB: $err"

# --- a text over 1 GB is refused -----------------------------------------------------------
# The longest piece of the vocabulary, repeated past 1 GB of text.
read -r id len <<<"$(sql mms_rob1 -F' ' -c "SELECT i, octet_length(mms_detokenize('flan2', ARRAY[i]))
	FROM generate_series(3, (SELECT (config->>'vocab_size')::int - 1 FROM mms.models WHERE name = 'flan2')) i ORDER BY 2 DESC, 1 LIMIT 1")"
n=$(( (1 << 30) / len + 2 ))
err=$(sql mms_rob1 -c "SELECT octet_length(mms_detokenize('flan2', array_fill($id, ARRAY[$n])))" 2>&1)
grep -q "would exceed the maximum text size of 1 GB" <<<"$err" &&
	ok "a detokenized text over 1 GB is refused ($n ids of $len bytes)" || bad "1 GB text: $err"
[ "$(sql mms_rob1 -c "SELECT mms_detokenize('flan2', ARRAY[$id, 1]) IS NOT NULL")" = t ] &&
	ok "the backend is still there" || bad "backend after the 1 GB text"

# --- a role dropped from another database ----------------------------------------------
# DROP ROLE in mms_rob2 cannot see mms_rob1's grant: it binds nobody afterwards
# (not even a new role of the same name) and mms_revoke removes it by the old name.
psql -X -q -d postgres -c "CREATE ROLE regress_rob_gone" >/dev/null
sql mms_rob1 -c "SELECT mms_grant('flan2', 'regress_rob_gone')" >/dev/null
sql mms_rob2 -c "DROP ROLE regress_rob_gone" || bad "DROP ROLE from another database"
psql -X -q -d postgres -c "CREATE ROLE regress_rob_gone" >/dev/null
err=$(sql mms_rob1 -c "SET ROLE regress_rob_gone" -c "SELECT mms_tokenize('flan2', 'x')" 2>&1)
grep -q "permission denied for model" <<<"$err" && ok "a new role with a dropped role's name does not inherit its grant" ||
	bad "new role of the same name: $err"
# nor after a dump and restore in this cluster, where oids still mean these roles
pg_dump -Fc -f "$work/rob1.dump" mms_rob1 && createdb mms_rob_r && pg_restore -d mms_rob_r "$work/rob1.dump" 2>/dev/null
err=$(sql mms_rob_r -c "SET ROLE regress_rob_gone" -c "SELECT mms_tokenize('flan2', 'x')" 2>&1)
grep -q "permission denied for model" <<<"$err" && ok "nor after pg_dump and pg_restore in the same cluster" ||
	bad "restored grant of a dropped role: $err"
dropdb mms_rob_r
psql -X -q -d postgres -c "DROP ROLE regress_rob_gone" >/dev/null
sql mms_rob1 -c "SELECT mms_revoke('flan2', 'regress_rob_gone')" >/dev/null
n=$(sql mms_rob1 -c "SELECT count(*) FROM mms.model_grants WHERE name = 'flan2' AND grantee_name = 'regress_rob_gone'")
[ "$n" = 0 ] && ok "mms_revoke removes a dropped role's grant by its old name" || bad "$n dangling grants left"

for d in mms_rob1 mms_rob2; do dropdb --if-exists "$d"; done
psql -X -q -d postgres -c "DROP ROLE regress_rob_user" -c "DROP ROLE regress_rob_stats" >/dev/null
