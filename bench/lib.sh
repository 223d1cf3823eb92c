# bench/lib.sh — sourced by the benchmarks that run inside PostgreSQL
# (pg_bench.sh, fairness.sh, metrics_bench.sh): a throwaway cluster of
# tools/pg-cluster.sh with model $model registered as 'm', and the demo's
# messy dates as inputs. Expects $model and $threads; defines sql, med and
# the variable tmp (the cluster's directory, removed on exit).

[ -f "$model" ] || { echo "no model $model" >&2; exit 1; }
[ "$(id -u)" = 0 ] && make -s install >/dev/null
. tools/pg-cluster.sh
cp "$model" "$tmp/model.gguf"
chmod a+r "$tmp/model.gguf"
cluster_start "mms.threads_per_worker=$threads" max_connections=64 || exit 1
sql() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
med() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
sql -c "CREATE EXTENSION mms" -c "SELECT mms_import('m', '$tmp/model.gguf')" >/dev/null

# bench_inputs N: table raw (id, raw) of N messy dates, readable by everyone
# (the demo model's task; noise for other models, the same work)
bench_inputs() {
	sql <<SQL
CREATE TABLE raw AS
SELECT i AS id, 'normalize date: ' || CASE i % 4 WHEN 0 THEN to_char(d, 'FMMonth FMDDth, YYYY')
       WHEN 1 THEN to_char(d, 'FMMM/FMDD/YYYY') WHEN 2 THEN to_char(d, 'FMDD FMMonth YYYY')
       ELSE to_char(d, 'YYYY.MM.DD') END AS raw
FROM (SELECT i, date '1950-01-01' + (i * 7919 % 30000) AS d FROM generate_series(1, $1) i) s;
GRANT SELECT ON raw TO PUBLIC;
SQL
}
