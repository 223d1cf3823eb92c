# test/sqlsmith/lib.sh — sourced by test/sqlsmith/run.sh (its own cluster) and
# test/pg/t_sqlsmith.sh (the cluster of test/pg/run.sh). Needs PGHOST, PGPORT,
# PGUSER (a superuser) and the cluster directory in smith_cluster (data/ and
# server.log inside, as tools/pg-cluster.sh lays them out).
#
#   smith_setup DB FILES      database DB with mms, models from FILES (a directory
#                             the server can read), the role $smith_role, tables
#   smith_pass LABEL DB USER FOCUS SECONDS MAXQ [sqlsmith args...]
#                             SQLsmith as USER for SECONDS (or MAXQ queries); with
#                             FOCUS=focus it sees only the functions of the view
#                             smith_focus.pg_proc (setup.sql); then
#                             analyze.py: prints the summary and one "ok: ..." or
#                             "FAILED: ..." line; returns non-zero on FAILED
#   smith_teardown DB         drops DB and the role
#
# smith_work (a directory) receives every pass's output: LABEL.N.out (SQLsmith
# process N's query dump interleaved with its progress characters), LABEL.log (the server
# log written during the pass), LABEL.report (the analysis, in full).

smith_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
smith_root=$(cd "$smith_dir/../.." && pwd)
smith_role=${SQLSMITH_ROLE:-mms_sqlsmith}

smith_psql() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }

smith_setup() {
	local db=$1 files=$2
	dropdb --if-exists "$db" 2>/dev/null
	createdb "$db" || return 1
	smith_psql -d "$db" -v files="$files" -v role="$smith_role" -f "$smith_dir/setup.sql" >/dev/null
}

smith_teardown() {
	local db=$1
	dropdb --if-exists "$db" 2>/dev/null
	smith_psql -d postgres -c "DROP ROLE IF EXISTS $smith_role" >/dev/null 2>&1
}

# calls of every mms function executed so far in DB (track_functions = all)
smith_fn_stats() {
	smith_psql -d "$1" -F '|' -c "
		SELECT p.oid::regprocedure, coalesce(pg_stat_get_function_calls(p.oid), 0)
		FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
		WHERE p.proname LIKE 'mms\_%' OR n.nspname = 'mms'
		ORDER BY 1::text" 2>/dev/null
}

smith_postmaster_pid() { head -1 "$smith_cluster/data/postmaster.pid" 2>/dev/null; }

smith_pass() {
	local label=$1 db=$2 user=$3 focus=$4 seconds=$5 maxq=$6
	shift 6
	local out=$smith_work/$label
	local seed=${SQLSMITH_SEED:-$((RANDOM * 32768 + RANDOM))}
	local conn="host=$PGHOST port=$PGPORT dbname=$db user=$user"
	local opts=""
	if [ "$user" != "$smith_role" ]; then
		# a superuser pass: the role's settings, given per connection instead
		opts+=" -c mms.max_new_tokens=8 -c track_functions=all -c log_error_verbosity=verbose"
		opts+=" -c temp_file_limit=64MB -c work_mem=4MB -c lock_timeout=1s"
	fi
	[ "$focus" = focus ] && opts+=" -c search_path=smith_focus,pg_catalog,public"
	[ -n "$opts" ] && conn+=" options='${opts# }'"
	mkdir -p "$smith_work"
	local offset pm_before pm_after rc
	offset=$(stat -c %s "$smith_cluster/server.log")
	pm_before=$(smith_postmaster_pid)
	smith_fn_stats "$db" >"$out.stats0"
	echo "== sqlsmith $label: user $user, ${SQLSMITH_JOBS:-1} process(es), ${seconds}s or $maxq queries," \
		"seed $seed${opts:+, options$opts}"
	# SIGINT: SQLsmith prints its error summary and exits; -k: if it does not.
	# SQLSMITH_JOBS processes at once (seeds seed, seed+1, ...) share the models.
	local i outs=() pids=() rcs=""
	for i in $(seq 0 $((${SQLSMITH_JOBS:-1} - 1))); do
		timeout -s INT -k 15 "$seconds" sqlsmith --target="$conn" --seed=$((seed + i)) --verbose \
			--dump-all-queries --max-queries="$maxq" "$@" >"$out.$i.out" 2>&1 &
		pids+=($!)
		outs+=(--out "$out.$i.out")
	done
	for i in "${pids[@]}"; do
		wait "$i"
		rcs+="${rcs:+,}$?"
	done
	rc=$rcs
	# the sessions flush their function statistics as they exit
	for _ in $(seq 100); do
		[ "$(smith_psql -d postgres -c "SELECT count(*) FROM pg_stat_activity
			WHERE datname = '$db' AND application_name LIKE 'sqlsmith%'" 2>/dev/null)" = 0 ] && break
		sleep 0.1
	done
	pm_after=$(smith_postmaster_pid)
	smith_fn_stats "$db" >"$out.stats1"
	tail -c +$((offset + 1)) "$smith_cluster/server.log" >"$out.log"
	python3 "$smith_dir/analyze.py" --label "$label" --seed "$seed" --sqlsmith-rc "$rc" \
		"${outs[@]}" --log "$out.log" --src "$smith_root/src" \
		--stats-before "$out.stats0" --stats-after "$out.stats1" \
		--postmaster-before "$pm_before" --postmaster-after "${pm_after:-gone}" \
		--report "$out.report"
}
