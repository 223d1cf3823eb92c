#!/bin/bash
# make demo: a throwaway PostgreSQL cluster with mms preloaded; registers the
# demo model (models/datefix.gguf, trained by tools/train_demo_model.py) from
# psql, runs single calls, cleans 10,000 messy dates with a plain INSERT ...
# SELECT (batched transparently), runs concurrent sessions, and prints the
# views; then starts the HTTP gateway (build/mms-gateway) on a loopback port
# and shows curl calls: the models list, a completion, a streamed one and an
# error. Everything is removed at the end (KEEP=1 keeps the cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
if [ "$(id -u)" = 0 ]; then
	echo "== installing mms.so and mms_worker.so into $(pg_config --pkglibdir)," \
		"mms.control and its SQL script into $(pg_config --sharedir)/extension"
	make -s install >/dev/null
fi
. tools/pg-cluster.sh
gw_dir=$tmp
. test/gateway/lib.sh
trap 'gw_stop_all; cluster_cleanup' EXIT

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

q "-- 10,000 messy dates, cleaned with a plain INSERT ... SELECT (transparent batching sends 64 rows' calls at once)" <<'SQL'
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
EXPLAIN (COSTS OFF)
INSERT INTO clean_dates (id, iso)
SELECT id, mms_generate('datefix', 'normalize date: ' || raw, '{"max_new_tokens": 12}') FROM raw_dates;
\timing on
INSERT INTO clean_dates (id, iso)
SELECT id, mms_generate('datefix', 'normalize date: ' || raw, '{"max_new_tokens": 12}') FROM raw_dates;
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

q "-- the HTTP gateway: a login role for it, a role for the application, an API key" <<'SQL'
\x off
CREATE ROLE demo_gateway LOGIN NOINHERIT IN ROLE mms_gateway;  -- the gateway logs in as this
CREATE ROLE analyst;                                           -- API keys act as this role
GRANT analyst TO mms_gateway;
SELECT mms_grant('datefix', 'analyst');
SQL
key=$(psql -X -q -At -c "SELECT mms_create_api_key('analyst', 'demo')")
echo "mms_create_api_key('analyst', 'demo') returned the key, once: ${key:0:12}..."
psql -X -q -c "SELECT id, prefix, role, label, created FROM mms.api_keys"
if [ ! -x "$gw_bin" ]; then
	echo "no gateway binary at $gw_bin: skipping the HTTP part"
elif ! gw_start gw --db "host=$PGHOST port=$PGPORT dbname=postgres user=demo_gateway"; then
	echo "the gateway did not start:"
	cat "$gw_log"
else
	run() { printf '\n\033[1m$ %s\033[0m\n' "$1"; eval "$1"; echo; }
	pretty() { python3 -m json.tool; }
	printf '\n\033[1m-- mms-gateway --listen 127.0.0.1:%s --db "... user=demo_gateway" (OpenAI-compatible)\033[0m\n' "$gw_port"
	export KEY=$key URL=$gw_url
	run 'curl -s $URL/v1/models -H "Authorization: Bearer $KEY" | pretty'
	run "curl -s \$URL/v1/completions -H \"Authorization: Bearer \$KEY\" -H 'Content-Type: application/json' \\
     -d '{\"model\": \"datefix\", \"prompt\": [\"normalize date: March 3rd, 2021\", \"number to digits: two thousand and twenty-one\"]}' | pretty"
	run "curl -sN \$URL/v1/completions -H \"Authorization: Bearer \$KEY\" -H 'Content-Type: application/json' \\
     -d '{\"model\": \"datefix\", \"prompt\": \"normalize date: le 14 juillet 1989\", \"stream\": true, \"stream_options\": {\"include_usage\": true}}'"
	run "curl -s \$URL/v1/completions -H 'Authorization: Bearer mms-wrong' -H 'Content-Type: application/json' -d '{}' | pretty"
	gw_stop gw
	printf '\033[1m-- its access log\033[0m\n'
	cat "$gw_log"
fi
echo
echo "== done; the gateway is stopped and the cluster removed now"
