#!/bin/bash
# make demo: a throwaway PostgreSQL cluster with mms preloaded; registers the
# demo model (models/datefix.gguf, trained by tools/train_demo_model.py) from
# psql, runs single calls, batch-cleans 10,000 messy dates with INSERT ...
# SELECT through the array API, runs concurrent sessions, and prints the
# views. Everything is removed at the end (KEEP=1 keeps the cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
if [ "$(id -u)" = 0 ]; then
	echo "== installing mms.so and mms_worker.so into $(pg_config --pkglibdir)," \
		"mms.control and its SQL script into $(pg_config --sharedir)/extension"
	make -s install >/dev/null
fi
. tools/pg-cluster.sh

model=models/datefix.gguf
if [ ! -f "$model" ]; then
	echo "models/datefix.gguf is missing: using a random-weight fixture (outputs are noise)"
	model=test/fixtures/flan_gated.gguf
fi
cp "$model" "$tmp/model.gguf"
chmod a+r "$tmp/model.gguf"

echo "== starting a throwaway cluster in $tmp"
cluster_start mms.threads_per_worker=2 || exit 1
q() { printf '\n\033[1m%s\033[0m\n' "$1"; shift; psql -X -q -v ON_ERROR_STOP=1 "$@"; }

q "-- install, and register the model from the client with \\lo_import" <<SQL
CREATE EXTENSION mms;
\\lo_import '$tmp/model.gguf'
\\set lo :LASTOID
SELECT mms_register('datefix', :lo, author => 'mms demo',
                    description => 'messy dates and numbers in words -> ISO 8601 / digits') AS version;
SELECT lo_unlink(:lo);   -- the registry keeps its own copy
\\x on
SELECT name, version, arch, n_params, tensor_types, config->>'d_model' AS d_model, config->>'n_enc_layers' AS n_enc_layers,
       config->>'n_dec_layers' AS n_dec_layers, config->>'vocab_size' AS vocab_size, size
FROM mms.models;
SQL

q "-- single calls" <<'SQL'
\x off
SELECT mms_generate('datefix', 'normalize date: March 3rd, 2021') AS greedy;
SELECT mms_generate('datefix', 'normalize date: le 14 juillet 1989', '{"num_beams": 4}') AS beam;
SELECT mms_generate('datefix', 'number to digits: two thousand and twenty-one') AS number;
SELECT mms_generate_batch('datefix', ARRAY['normalize date: 3/4/2021', NULL, 'normalize date: 2019.12.31']) AS batch;
SELECT round(mms_score('datefix', 'normalize date: March 3rd, 2021', '2021-03-03')::numeric, 4) AS logprob_right,
       round(mms_score('datefix', 'normalize date: March 3rd, 2021', '2021-04-03')::numeric, 4) AS logprob_wrong;
SELECT mms_tokenize('datefix', 'normalize date: 3/4/2021') AS ids;
SQL

q "-- 10,000 messy dates, cleaned with INSERT ... SELECT through the array API (64 rows per call)" <<'SQL'
CREATE TABLE raw_dates AS
SELECT i AS id, d AS truth,
       CASE i % 5 WHEN 0 THEN to_char(d, 'FMMonth FMDDth, YYYY')
                  WHEN 1 THEN to_char(d, 'FMMM/FMDD/YYYY')
                  WHEN 2 THEN to_char(d, 'FMDD FMMonth YYYY')
                  WHEN 3 THEN to_char(d, 'YYYY.MM.DD')
                  ELSE to_char(d, 'DD-MM-YYYY') END AS raw
FROM (SELECT i, date '1950-01-01' + (i * 7919 % 30000) AS d FROM generate_series(1, 10000) i) s;
SELECT * FROM raw_dates ORDER BY id LIMIT 5;
CREATE TABLE clean_dates (id int PRIMARY KEY, iso text);
\timing on
INSERT INTO clean_dates (id, iso)
SELECT b.ids[o.n], o.iso
FROM (SELECT chunk, array_agg(id ORDER BY id) AS ids,
             array_agg('normalize date: ' || raw ORDER BY id) AS inputs
      FROM (SELECT id, raw, (row_number() OVER (ORDER BY id) - 1) / 64 AS chunk FROM raw_dates) s
      GROUP BY chunk) b,
     unnest(mms_generate_batch('datefix', b.inputs, '{"max_new_tokens": 12}')) WITH ORDINALITY AS o(iso, n);
\timing off
SELECT count(*) AS rows,
       count(*) FILTER (WHERE c.iso = to_char(r.truth, 'YYYY-MM-DD')) AS exact,
       round(100.0 * count(*) FILTER (WHERE c.iso = to_char(r.truth, 'YYYY-MM-DD')) / count(*), 2) AS pct
FROM raw_dates r JOIN clean_dates c USING (id);
SELECT r.raw, c.iso FROM raw_dates r JOIN clean_dates c USING (id) ORDER BY id LIMIT 8;
SQL

q "-- 4 concurrent sessions, 50 scalar calls each: the workers batch them together" </dev/null
for s in 1 2 3 4; do
	psql -X -q -At -c "SELECT count(mms_generate('datefix', 'normalize date: ' || raw)) FROM raw_dates WHERE id % 4 = $((s - 1)) AND id <= 200" &
done
wait

q "-- the views" <<'SQL'
\x on
SELECT * FROM mms.stat_models;
SELECT * FROM mms.cache;
-- rows per decoder step: above 1 means the sessions' requests shared steps
SELECT *, round(decode_rows::numeric / nullif(decode_steps, 0), 2) AS mean_batch FROM mms.pools;
SELECT * FROM mms.workers;
SQL
echo
echo "== done; the cluster is removed now"
