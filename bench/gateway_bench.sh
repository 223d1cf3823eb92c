#!/bin/bash
# bench/gateway_bench.sh — what the HTTP gateway costs next to SQL, in one
# throwaway cluster (bench/lib.sh, the demo model as 'm', its messy dates as
# inputs), interleaved over ROUNDS rounds (default 3), the order alternating:
#   gateway  wrk (bench/gateway_wrk.lua) POSTing /v1/completions to mms-gateway
#            ({"model": "m", "prompt": <date>, "max_tokens": 12}), with 1, 16
#            and 64 connections (CLIENTS; 1 shows the gateway's own latency best);
#   api      pgbench with as many clients calling the same SQL function the
#            gateway calls, mms_api_completions(<the same body>), as the same
#            role: the gateway's own cost is the difference;
#   direct   pgbench calling mms_generate(<date>, max_new_tokens 12): what the
#            JSON API layer (validation, response object) costs on top;
#   gateway1, api1: the first two with 1 client and "max_tokens": 1, where
#            inference is short and the gateway's own latency shows best.
# Each run: requests/s, p50 and p99 latency (wrk's; pgbench's from its
# per-transaction log). Then, idle, time to the first streamed chunk against
# the whole response (streaming and not) for a 64-token completion, and the
# gateway's RSS at start and its peak. Raw lines and the summary go to
# bench/out/gateway_bench.txt. MODEL (default models/datefix.gguf); THREADS
# (default nproc); SECS per run (default 15); POOL (gateway connections,
# default 64). Not a test: it asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
model=${MODEL:-models/datefix.gguf}
threads=${THREADS:-$(nproc)}
secs=${SECS:-15}
rounds=${ROUNDS:-3}
pool=${POOL:-64}
clients=${CLIENTS:-1 16 64}
rows=2000
command -v wrk >/dev/null || { echo "wrk is missing (Debian package wrk)" >&2; exit 1; }
. bench/lib.sh
gw_dir=$tmp
. test/gateway/lib.sh
trap 'gw_stop_all; cluster_cleanup' EXIT
mkdir -p bench/out
out=bench/out/gateway_bench.txt
: >"$out"
say() { echo "$*" | tee -a "$out"; }

# 64 clients of pgbench, or 64 of the gateway's pool, need more than the 64
# connections bench/lib.sh starts with: the server again, its own command line
# (postmaster.opts) plus a larger max_connections (the last -c wins).
eval "args=($(cat "$tmp/data/postmaster.opts"))"
as_server pg_ctl -D "$tmp/data" -m fast -w stop >/dev/null
as_server pg_ctl -D "$tmp/data" -l "$tmp/server.log" -w -o "$(printf "'%s' " "${args[@]:1}") -c max_connections=$((pool + 100))" start >/dev/null

bench_inputs "$rows" >/dev/null
sql >/dev/null <<SQL
CREATE ROLE bench_gw_login LOGIN NOINHERIT IN ROLE mms_gateway;
CREATE ROLE bench_user LOGIN;
GRANT bench_user TO mms_gateway;
SELECT mms_grant('m', 'bench_user');
CREATE TABLE bodies AS SELECT id, jsonb_build_object('model', 'm', 'prompt', raw, 'max_tokens', 12) AS body,
                              jsonb_build_object('model', 'm', 'prompt', raw, 'max_tokens', 1) AS body1 FROM raw;
GRANT SELECT ON bodies TO PUBLIC;
SELECT mms_load('m');
SQL
key=$(sql -c "SELECT mms_create_api_key('bench_user', 'bench')")
sql -c "COPY (SELECT body FROM bodies ORDER BY id) TO STDOUT" >"$tmp/gateway.jsonl"
sql -c "COPY (SELECT body1 FROM bodies ORDER BY id) TO STDOUT" >"$tmp/gateway1.jsonl"
for b in "" 1; do
	cat >"$tmp/api$b.sql" <<SQL
\set id random(1, $rows)
SELECT mms_api_completions(body$b) FROM bodies WHERE id = :id;
SQL
done
cat >"$tmp/direct.sql" <<SQL
\set id random(1, $rows)
SELECT mms_generate('m', raw, '{"max_new_tokens": 12}') FROM raw WHERE id = :id;
SQL

gw_start gw --db "host=$PGHOST port=$PGPORT dbname=postgres user=bench_gw_login" --pool "$pool" \
	--max-connections $((pool + 64)) || { echo "the gateway did not start: $(tail -5 "$tmp/gw.log")" >&2; exit 1; }
rss() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$gw_pid/status"; }
rss_start=$(rss VmRSS)
load0=$(cut -d' ' -f1-3 /proc/loadavg)

pct() { # pct P < values: the P-th percentile, nearest rank
	sort -n | awk -v p="$1" '{a[NR] = $1} END {i = int(NR * p / 100 + 0.999); if (i < 1) i = 1; print a[i]}'
}
# run KIND CLIENTS: prints "requests/s p50_ms p99_ms failures"
run() {
	local kind=$1 c=$2 t=2
	[ "$c" -lt 2 ] && t=1
	if [[ $kind == gateway* ]]; then
		MMS_KEY=$key MMS_BODIES=$tmp/$kind.jsonl wrk -t "$t" -c "$c" -d "${secs}s" --timeout 60s \
			-s bench/gateway_wrk.lua "$gw_url" >"$tmp/wrk.txt" 2>&1
		local rps
		rps=$(awk '/^Requests\/sec:/ {print $2}' "$tmp/wrk.txt")
		awk -v rps="$rps" '/^gateway-result/ {printf "%.1f %.2f %.2f %d\n", rps, $5 / 1000, $6 / 1000, $3 + $4}' "$tmp/wrk.txt"
	else
		rm -f "$tmp"/pgb.*
		(cd "$tmp" && pgbench -n -U bench_user -c "$c" -j "$t" -T "$secs" -f "$tmp/$kind.sql" -l --log-prefix=pgb postgres) >"$tmp/pgbench.txt" 2>&1
		local tps failed
		tps=$(grep -oE 'tps = [0-9.]+' "$tmp/pgbench.txt" | head -1 | awk '{print $3}')
		failed=$(grep -oE 'number of failed transactions: [0-9]+' "$tmp/pgbench.txt" | awk '{print $5}')
		cat "$tmp"/pgb.* | awk '{print $3 / 1000}' >"$tmp/lat.txt"
		printf '%.1f %.2f %.2f %d\n' "$tps" "$(pct 50 <"$tmp/lat.txt")" "$(pct 99 <"$tmp/lat.txt")" "${failed:-0}"
	fi
}

# warm-up: workers started, caches hot, the pool's connections open
run gateway 64 >/dev/null
run api 16 >/dev/null
runs() { # the kinds run with $1 clients, in round $2's order
	local k="gateway api direct"
	[ "$1" = 1 ] && k="gateway1 api1 $k"
	[ $(($2 % 2)) = 1 ] && echo "$k" || echo "$k" | tr ' ' '\n' | tac | xargs
}
for c in $clients; do for k in $(runs "$c" 1); do : >"$tmp/res.$k.$c"; done; done
for r in $(seq "$rounds"); do
	for c in $clients; do
		for k in $(runs "$c" "$r"); do
			res=$(run "$k" "$c")
			echo "$res" >>"$tmp/res.$k.$c"
			say "round $r, $c clients, $k: $res (requests/s p50_ms p99_ms failures)"
		done
	done
done
rss_peak=$(rss VmHWM)
rss_end=$(rss VmRSS)

# time to the first streamed chunk against the whole response, idle: 64 tokens
# forced (min_tokens), 20 of each, medians
"$(command -v python3)" - "$gw_url" "$key" >"$tmp/ttft.txt" <<'PY'
import http.client, json, statistics, sys, time, urllib.parse
url, key = sys.argv[1], sys.argv[2]
u = urllib.parse.urlsplit(url)
body = {"model": "m", "prompt": "normalize date: March 3rd, 2021", "max_tokens": 64, "min_tokens": 64}
def one(stream):
    """(seconds to the first chunk or None, seconds to the end, chunks, completion tokens)"""
    b = dict(body, stream=True, stream_options={"include_usage": True}) if stream else body
    c = http.client.HTTPConnection(u.hostname, u.port)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", json.dumps(b),
              {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    r = c.getresponse()
    first, chunks, usage = None, 0, None
    if stream:
        while True:
            line = r.readline()
            if not line or line.startswith(b"data: [DONE]"):
                break
            if line.startswith(b"data: "):
                chunk = json.loads(line[6:])
                if chunk["choices"]:
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - t0
                usage = chunk.get("usage") or usage
    else:
        usage = json.loads(r.read())["usage"]
    total = time.perf_counter() - t0
    assert r.status == 200, r.status
    c.close()
    return first, total, chunks, usage["completion_tokens"]
for _ in range(3):
    one(True)
s = [one(True) for _ in range(20)]
f = [one(False) for _ in range(20)]
med = statistics.median
print("%.2f %.2f %.2f %d %d %d" % (1000 * med(x[0] for x in s), 1000 * med(x[1] for x in s),
                                   1000 * med(x[1] for x in f), med(x[2] for x in s),
                                   med(x[3] for x in s), med(x[3] for x in f)))
PY
read -r ttft stream_total full chunks tok_s tok_f <"$tmp/ttft.txt"

med() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
col() { awk -v c="$1" '{print $c}' "$2" | med; }
say ""
say "median of $rounds rounds, $secs s each; model $(basename "$model"), $threads threads per worker, gateway pool $pool"
say ""
say "| clients | path | requests/s | p50 ms | p99 ms | failures |"
say "| ---: | --- | ---: | ---: | ---: | ---: |"
for c in $clients; do
	for k in $(runs "$c" 1); do
		f=$tmp/res.$k.$c
		say "| $c | $k | $(col 1 "$f") | $(col 2 "$f") | $(col 3 "$f") | $(awk '{s += $4} END {print s}' "$f") |"
	done
done
say ""
# ratios of the medians, and the median of the rounds' own ratios (runs of one
# round share the machine's state)
compare() { # compare GATEWAY_KIND API_KIND CLIENTS
	local g=$tmp/res.$1.$3 a=$tmp/res.$2.$3 paired
	paired=$(paste "$g" "$a" | awk '{print $1 / $5}' | med)
	awk -v what="$3 clients, $1 vs $2" -v g="$(col 1 "$g")" -v a="$(col 1 "$a")" -v gp="$(col 2 "$g")" -v ap="$(col 2 "$a")" -v p="$paired" \
		'BEGIN {printf "%s: throughput %.3f (median of the rounds'"'"' ratios %.3f); p50 added by the gateway %+.2f ms\n", what, g / a, p, gp - ap}' |
		tee -a "$out"
}
for c in $clients; do
	[ "$c" = 1 ] && compare gateway1 api1 1
	compare gateway api "$c"
done
say "streaming, idle (median of 20): $tok_s tokens in $chunks chunks, the first after $ttft ms, the last after $stream_total ms; the same completion ($tok_f tokens) not streamed: $full ms"
say "load average of the machine at the start and at the end: $load0 / $(cut -d' ' -f1-3 /proc/loadavg)"
say "gateway RSS: $((rss_start / 1024)) MB at start, $((rss_end / 1024)) MB at the end, peak $((rss_peak / 1024)) MB"
