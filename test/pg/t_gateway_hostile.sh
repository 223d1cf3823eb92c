#!/bin/bash
# t_gateway_hostile.sh — mms-gateway against hostile clients, in front of the
# cluster of test/pg/run.sh (its own database mms_gateway_hostile and roles
# regress_gwh_*). Regression tests of what such clients broke, and checks of
# what held:
#   - an encoded NUL (%00) in a path or a query argument is refused (400): it
#     used to cut {ref} or ?name= short, "flan%00.bak" naming "flan";
#   - malformed API keys are refused without asking the database (they each
#     used to cost a round trip, a pool connection and a key-cache slot), and a
#     flood of well-formed bad keys does not evict a working key from the cache;
#   - the access log stays valid UTF-8, one line per request, whatever bytes the
#     path carries; libmicrohttpd's own messages (one per refused connection)
#     are rate-limited;
#   - header injection, huge headers, pipelining, malformed chunked bodies,
#     Content-Length lies, unknown methods, Authorization variants, a
#     connection flood beyond --max-connections, a 5000-prompt body: 4xx not 5xx,
#     no crash, the pool back to idle, the gateway's memory bounded.
# Never asserts wall-clock time: waits are bounded polls.
set -u
ok() { echo "ok: $*"; }
bad() { echo "FAILED: $*"; }
root=${MMS_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
db=mms_gateway_hostile
w=$TMPDIR_PG/gateway_hostile
mkdir -p "$w"
chmod 755 "$w"
gw_dir=$w
. "$root/test/gateway/lib.sh"
trap gw_stop_all EXIT
trap 'exit 130' INT TERM
sql() { psql -X -q -At -v ON_ERROR_STOP=1 -d $db "$@"; }
# raw PORT: sends stdin's bytes (Python escapes) on one connection, prints the
# status line of each response and then "closed" or "open" (no answer in 10 s)
raw() { python3 "$w/raw.py" "$1"; }
cat >"$w/raw.py" <<'PY'
import socket, sys, re
data = sys.stdin.read().encode().decode("unicode_escape").encode("latin1")
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(10)
s.sendall(data)
out = b""
state = "closed"
try:
    while True:
        c = s.recv(65536)
        if not c:
            break
        out += c
except socket.timeout:
    state = "open"
except ConnectionResetError:
    pass
for m in re.finditer(rb"HTTP/1\.1 (\d{3})", out):
    print(m.group(1).decode())
print(state)
PY
# req METHOD PATH KEY [CURL ARGS...]: the HTTP status; body in $w/body
req() {
	local m=$1 p=$2 k=$3
	shift 3
	local a=(-s -o "$w/body" -w '%{http_code}' -X "$m" --max-time 60)
	[ -n "$k" ] && a+=(-H "Authorization: Bearer $k")
	curl "${a[@]}" "$@" "$url$p"
}
metric() { curl -s --max-time 10 "$url/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null; }

if [ ! -x "$gw_bin" ]; then
	bad "no mms-gateway binary at $gw_bin (make builds build/mms-gateway)"
	exit 0
fi

# --- setup --------------------------------------------------------------------------
dropdb --if-exists $db 2>/dev/null
roles="regress_gwh_login regress_gwh_alice regress_gwh_admin"
for r in $roles; do echo "DROP ROLE IF EXISTS $r;"; done | psql -X -q -d postgres 2>/dev/null
createdb $db || { bad "createdb $db"; exit 0; }
sql >/dev/null <<SQL || { bad "setup of database, roles, models"; exit 0; }
SET client_min_messages = warning;
CREATE EXTENSION mms;
CREATE ROLE regress_gwh_login LOGIN NOINHERIT IN ROLE mms_gateway;
CREATE ROLE regress_gwh_alice;
CREATE ROLE regress_gwh_admin IN ROLE mms_admin;
GRANT regress_gwh_alice, regress_gwh_admin TO mms_gateway;
GRANT pg_monitor TO mms_gateway;
SELECT mms_import('flan', '$MMS_TEST_DATA/flan_gated.gguf');
SELECT mms_grant('flan', 'regress_gwh_alice');
SQL
k_alice=$(sql -c "SELECT mms_create_api_key('regress_gwh_alice', 'alice')")
k_admin=$(sql -c "SELECT mms_create_api_key('regress_gwh_admin', 'admin')")
[[ $k_alice =~ ^mms-[0-9a-f]{64}$ && $k_admin =~ ^mms-[0-9a-f]{64}$ ]] || { bad "keys: '$k_alice' '$k_admin'"; exit 0; }

conn="host=$PGHOST port=$PGPORT dbname=$db user=regress_gwh_login"
# a gateway built with ASan (MMS_GATEWAY=...) keeps freed memory in quarantine,
# 256 MB by default: smaller, so that the RSS bound below holds for it too
export ASAN_OPTIONS=${ASAN_OPTIONS:-quarantine_size_mb=16}
if ! gw_start gw --db "$conn" --pool 4 --key-ttl 600 --max-body 1048576 --max-upload 1500000 \
	--client-timeout 3 --access-log "$w/access.log"; then
	bad "the gateway did not start: $(tail -5 "$w/gw.log")"
	exit 0
fi
url=$gw_url
port=$gw_port
rss0=$(rss_kb "$gw_pid")

lo0=$(sql -c "SELECT count(*) FROM pg_largeobject_metadata")

# --- %00 in the path and the query --------------------------------------------------
st=$(req GET /v1/models/flan "$k_alice")
[ "$st" = 200 ] && ok "GET /v1/models/flan: 200" || bad "GET /v1/models/flan: $st $(head -c 300 "$w/body")"
st=$(req GET /v1/models/flan%00zz "$k_alice")
[ "$st" = 400 ] && grep -q 'NUL' "$w/body" && ok "GET /v1/models/flan%00zz: 400, not the model flan" ||
	bad "GET /v1/models/flan%00zz: $st $(head -c 300 "$w/body")"
st=$(req DELETE /v1/models/flan%00.bak "$k_admin")
n=$(sql -c "SELECT count(*) FROM mms.models WHERE name = 'flan'")
[ "$st" = 400 ] && [ "$n" = 1 ] && ok "DELETE /v1/models/flan%00.bak: 400, flan still registered" ||
	bad "DELETE /v1/models/flan%00.bak: $st, flan rows $n: $(head -c 300 "$w/body")"
st=$(req POST '/v1/models?name=nulname%00evil' "$k_admin" --data-binary "@$MMS_TEST_DATA/depth_3_1.gguf")
n=$(sql -c "SELECT count(*) FROM mms.models WHERE name LIKE 'nulname%'")
[ "$st" = 400 ] && [ "$n" = 0 ] && ok "upload ?name=nulname%00evil: 400, nothing registered" ||
	bad "upload ?name=nulname%00evil: $st, $n rows: $(head -c 300 "$w/body")"
st=$(req GET /v1/models/fl%2500an "$k_alice")
[ "$st" = 404 ] && ok "a literal %2500 is a name like any other (404 from the database)" || bad "GET fl%2500an: $st $(head -c 200 "$w/body")"
long=$(head -c 10000 /dev/zero | tr '\0' a)
st=$(req POST "/v1/models?name=$long" "$k_admin" --data-binary "@$MMS_TEST_DATA/depth_3_1.gguf")
[ "$st" = 400 ] && grep -q 'too long' "$w/body" && ok "upload with a 10 kB ?name=: 400, the name is too long" ||
	bad "upload with a 10 kB name: $st $(head -c 300 "$w/body")"
lo=$(sql -c "SELECT count(*) FROM pg_largeobject_metadata")
[ "$lo" = "$lo0" ] && ok "refused uploads left no large object" || bad "large objects: $lo0 before the uploads, $lo after"

# --- API keys -----------------------------------------------------------------------
misses0=$(metric mms_gateway_key_cache_misses_total)
bad_status=""
for k in junk "mms-$(printf '%064d' 0 | tr 0 g)" "mms-$(printf '%063d' 0)" "mms-$(printf '%065d' 0)" \
	"MMS-$(printf '%064d' 0)" "mms-$(printf '%064d' 0 | tr 0 A)" "$(head -c 5000 /dev/zero | tr '\0' k)"; do
	st=$(req GET /v1/models "$k")
	[ "$st" = 401 ] || bad_status+=" $st"
done
for h in "Authorization: $k_alice" "Authorization: Basic $k_alice" "Authorization: Bearer" "Authorization: Bearer  "; do
	st=$(curl -s -o /dev/null -w '%{http_code}' -H "$h" "$url/v1/models")
	[ "$st" = 401 ] || bad_status+=" [$h]$st"
done
misses1=$(metric mms_gateway_key_cache_misses_total)
[ -z "$bad_status" ] && [ "$misses0" = "$misses1" ] &&
	ok "11 malformed keys and Authorization headers: 401, none asked to the database" ||
	bad "malformed keys: statuses '$bad_status', key cache misses $misses0 -> $misses1"
st=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: bearer $k_alice" "$url/v1/models")
[ "$st" = 200 ] && ok "the scheme is case-insensitive (bearer)" || bad "lowercase bearer: $st"

# a cached working key survives a flood of well-formed bad keys (each one a
# database lookup) larger than the cache
req GET /v1/models "$k_alice" >/dev/null
python3 - "$port" <<'PY' >"$w/flood.out" 2>&1
import http.client, os, sys, threading
port = int(sys.argv[1])
codes = {}
def run(n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(n):
        c.request("GET", "/v1/models", headers={"Authorization": "Bearer mms-" + os.urandom(32).hex()})
        r = c.getresponse(); r.read()
        codes[r.status] = codes.get(r.status, 0) + 1
ts = [threading.Thread(target=run, args=(5000,)) for _ in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
print(sorted(codes.items()))
PY
hits0=$(metric mms_gateway_key_cache_hits_total)
st=$(req GET /v1/models "$k_alice")
hits1=$(metric mms_gateway_key_cache_hits_total)
[ "$(cat "$w/flood.out")" = "[(401, 20000)]" ] && ok "20000 random well-formed keys: 401 each" || bad "key flood: $(head -c 300 "$w/flood.out")"
[ "$st" = 200 ] && [ "$((hits1 - hits0))" = 1 ] && ok "a working key stays cached through the flood" ||
	bad "after the key flood: $st, cache hits $hits0 -> $hits1"

# --- the access log -----------------------------------------------------------------
raw "$port" >/dev/null <<'EOF'
GET /v1/models/%ff%c3%0a%0dtime=forged%e2%80%ae HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer junk\r\nX-Request-Id: a\\r\\nb\r\nConnection: close\r\n\r\n
EOF
req GET /v1/models/%0aforged%20line "$k_alice" -H 'X-Request-Id: ok-id' >/dev/null
sleep 0.2
got=$(python3 - "$w/access.log" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
try:
    text = data.decode("utf-8")
except UnicodeDecodeError as e:
    print("not UTF-8:", e); sys.exit()
lines = text.splitlines()
badl = [l for l in lines if not l.startswith("time=")]
print("ok" if not badl and any("\\xff" in l for l in lines) and any("request_id=ok-id" in l and "\\x0aforged" in l for l in lines) else "bad: " + repr(badl[:3] or lines[-3:]))
PY
)
[ "$got" = ok ] && ok "the access log stays valid UTF-8, one line per request, bad bytes escaped" || bad "access log: $got"

# --- the HTTP layer -----------------------------------------------------------------
got=$(raw "$port" <<EOF | tr '\n' ' '
GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\nPOST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $k_alice\r\nContent-Length: 45\r\n\r\n{"model":"flan","prompt":"hi","max_tokens":2}GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n
EOF
)
[ "$got" = "200 200 200 200 closed " ] && ok "4 pipelined requests, a POST among them: 4 answers in order" || bad "pipelined: $got"
hdr_many=$(python3 -c 'print("".join("X-H%d: %s\\r\\n" % (i, "y" * 100) for i in range(3000)))')
got=$(echo "GET /healthz HTTP/1.1\r\nHost: x\r\n${hdr_many}Connection: close\r\n\r\n" | raw "$port" | tr '\n' ' ')
[ "$got" = "431 closed " ] && ok "3000 headers: 431" || bad "3000 headers: $got"
fails=""
while IFS='|' read -r want body; do
	# (libmicrohttpd 0.9.75 sends the status line of its own 400s twice: counted once)
	got=$(echo "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $k_alice\r\n${body}" | raw "$port" | awk '!seen[$0]++' | tr '\n' ' ')
	[ "$got" = "$want" ] || fails+=" [$body] -> $got;"
done <<'EOF'
400 closed |Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n
400 closed |Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n
400 closed |Transfer-Encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n
413 closed |Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n
400 closed |Content-Length: -5\r\n\r\n{}
400 closed |Content-Length: 0x10\r\n\r\n{}
413 closed |Content-Length: 99999999999999999999999\r\n\r\n{}
400 closed |Content-Length: 2\r\nConnection: close\r\n\r\n{"model":"flan","prompt":"x"}
closed |Content-Length: 100\r\n\r\n{}
EOF
[ -z "$fails" ] && ok "malformed chunked bodies and lying Content-Lengths: 4xx or closed at --client-timeout" || bad "bodies:$fails"
fails=""
for m in OPTIONS TRACE FOO PATCH; do
	got=$(echo "$m /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" | raw "$port" | sed -n 1p)
	[ "$got" = 405 ] || fails+=" $m:$got"
done
[ -z "$fails" ] && ok "OPTIONS, TRACE, FOO, PATCH /v1/models: 405" || bad "methods:$fails"
# HEAD is GET without a body: a load balancer's check of /healthz; /v1/models still wants a key
got=$(curl -s -I -o /dev/null -w '%{http_code} %{size_download}' "$url/healthz")
[ "$got" = "200 0" ] && ok "HEAD /healthz: 200 without a body" || bad "HEAD /healthz: $got"
got=$(curl -s -I -o /dev/null -w '%{http_code}' "$url/v1/models")
[ "$got" = 401 ] && ok "HEAD /v1/models without a key: 401" || bad "HEAD /v1/models: $got"
got=$(curl -s -D - -o /dev/null -H "X-Request-Id: $(head -c 300 /dev/zero | tr '\0' a)" "$url/healthz" | grep -i '^x-request-id' | tr -d '\r')
[[ $got =~ ^x-request-id:\ req-[0-9a-f]{16}$ ]] && ok "a 300-byte x-request-id is replaced by a fresh one" || bad "long x-request-id: $got"
got=$(curl -s -D - -o /dev/null -H $'X-Request-Id: \xc3\xa9t\xc3\xa9' "$url/healthz" | grep -i '^x-request-id' | tr -d '\r')
[[ $got =~ ^x-request-id:\ req-[0-9a-f]{16}$ ]] && ok "a non-ASCII x-request-id is replaced by a fresh one" || bad "non-ASCII x-request-id: $got"

# 5000 prompts in one body: answered (or refused) by the database, not a 5xx
python3 -c 'import json; print(json.dumps({"model": "flan", "prompt": ["a"] * 5000, "max_tokens": 1}))' >"$w/many.json"
st=$(req POST /v1/completions "$k_alice" -H 'Content-Type: application/json' --data-binary "@$w/many.json")
n=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["choices"]))' "$w/body" 2>/dev/null)
[ "$st" = 200 ] && [ "$n" = 5000 ] && ok "5000 prompts in one body: 200 with 5000 choices" ||
	{ [[ $st == 4* ]] && ok "5000 prompts in one body: $st"; } || bad "5000 prompts: $st $(head -c 300 "$w/body")"

# --- a connection flood beyond --max-connections -------------------------------------
if gw_start gwc --db "$conn" --pool 2 --max-connections 20 --client-timeout 2 --access-log ""; then
	got=$(python3 - "$gwc_port" <<'PY'
import socket, sys
socks = []
for i in range(300):
    try:
        socks.append(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5))
    except OSError:
        pass
print(len(socks))
PY
)
	for i in $(seq 100); do
		[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$gwc_url/healthz")" = 200 ] && break
		sleep 0.1
	done
	st=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$gwc_url/healthz")
	# the count of the suppressed comes with the next message let through
	for i in $(seq 50); do
		echo "GET /healthz HTTP/1.1\r\nContent-Length: x\r\n\r\n" | raw "$gwc_port" >/dev/null
		grep -q 'messages suppressed' "$gwc_log" && break
		sleep 0.2
	done
	n_limit=$(grep -c 'connection limit' "$gwc_log")
	n_supp=$(grep -c 'messages suppressed' "$gwc_log")
	[ "$st" = 200 ] && ok "300 connections against --max-connections 20: /healthz answers once they are gone" || bad "after the connection flood: $st"
	[ "$n_limit" -lt 280 ] && [ "$n_supp" -ge 1 ] && ok "refused connections are logged rate-limited ($n_limit lines, then a count)" ||
		bad "connection-limit messages: $n_limit lines, $n_supp suppression notes"
	gw_stop gwc
else
	bad "the second gateway did not start: $(tail -3 "$gwc_log")"
fi

# --- afterwards: still serving, nothing leaked -----------------------------------------
st=$(req POST /v1/completions "$k_alice" -H 'Content-Type: application/json' --data-binary '{"model": "flan", "prompt": "hello", "max_tokens": 4}')
[ "$st" = 200 ] && ok "a normal completion after all of it: 200" || bad "completion after the attacks: $st $(head -c 300 "$w/body")"
for i in $(seq 100); do
	[ "$(metric mms_gateway_requests_in_flight)" = 0 ] && [ "$(metric 'mms_gateway_pool_connections_in_use{node="0"}')" = 0 ] && break
	sleep 0.1
done
got="$(metric mms_gateway_requests_in_flight) $(metric 'mms_gateway_pool_connections_in_use{node="0"}') $(metric 'mms_gateway_node_outstanding_requests{node="0"}')"
[ "$got" = "0 0 0" ] && ok "in flight, pool connections in use, outstanding: back to 0" || bad "in flight / in use / outstanding: $got"
rss1=$(rss_kb "$gw_pid")
[ -n "$rss1" ] && [ "$rss1" -lt $((rss0 + 200 * 1024)) ] && ok "the gateway's RSS stayed bounded (${rss0} kB -> ${rss1} kB)" ||
	bad "the gateway's RSS: ${rss0} kB -> ${rss1:-gone} kB"
gw_stop gw
[ "$gw_status" = 0 ] && ok "the gateway stops on SIGTERM with status 0" || bad "the gateway's exit status: $gw_status"
grep -E 'AddressSanitizer|runtime error' "$w"/*.log && bad "sanitizer reports in the gateway logs"
exit 0
