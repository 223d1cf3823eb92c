#!/bin/bash
# t_stats.sh — mms.stat_models never silently stops counting: the cluster of
# test/pg/run.sh holds at most mms.max_stats = 100 (database, role, model)
# entries; calls from 120 roles evict the least used entries, the evictions
# are counted in mms.stat_info.dealloc, and the newest role's calls are there.
set -u
ok() { echo "ok: $*"; }
bad() { echo "FAILED: $*"; }
db=mms_stats
sql() { psql -X -q -At -v ON_ERROR_STOP=1 -d $db "$@"; }

dropdb --if-exists $db 2>/dev/null
createdb $db || { bad "createdb $db"; exit 0; }
max=$(sql -c "SHOW mms.max_stats")
sql -c "CREATE EXTENSION mms" -c "SELECT mms_import('flan', '$MMS_TEST_DATA/flan_gated.gguf')" \
	-c "SELECT mms_grant('flan', 'public')" >/dev/null || { bad "setup"; exit 0; }
before=$(sql -c "SELECT dealloc FROM mms.stat_info")
n=$((max + 20))
# one call per role, each its own (database, role, model) entry
sql >/dev/null <<SQL || bad "calls from $n roles"
DO \$\$
BEGIN
	FOR i IN 1..$n LOOP
		EXECUTE format('CREATE ROLE regress_stats_%s', i);
		EXECUTE format('SET ROLE regress_stats_%s', i);
		PERFORM mms_generate('flan', 'stats ' || i, '{"max_new_tokens": 1}');
		RESET ROLE;
	END LOOP;
END
\$\$;
SQL
read entries dealloc <<<"$(sql -F' ' -c "SELECT entries, dealloc FROM mms.stat_info")"
[ "${entries:-0}" -le "$max" ] && [ "$((dealloc - before))" -gt 0 ] &&
	ok "$n roles' calls with mms.max_stats = $max: $entries entries, $((dealloc - before)) evicted and counted" ||
	bad "entries $entries, dealloc $before -> $dealloc with mms.max_stats = $max"
last=$(sql -c "SELECT calls FROM mms.stat_models WHERE role = 'regress_stats_$n'")
[ "$last" = 1 ] && ok "the newest role's call is counted" || bad "regress_stats_$n: '$last'"
dropdb $db
for i in $(seq $n); do echo "DROP ROLE regress_stats_$i;"; done | psql -X -q -d postgres >/dev/null
