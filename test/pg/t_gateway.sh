#!/bin/bash
# t_gateway.sh — mms-gateway on loopback in front of the cluster of
# test/pg/run.sh (database mms_gateway, a login role NOINHERIT IN ROLE
# mms_gateway, API keys of seven roles), driven by curl, the official openai
# client (test/gateway/openai_client.py) and schemathesis:
#   - /healthz, /readyz, /openapi.json (validates), /metrics (promtool);
#   - /v1/completions with a string and an array prompt: the texts and token
#     counts of mms_generate / mms_tokenize, run as the key's role (usage rows);
#   - stream=true: OpenAI's SSE framing, include_usage, [DONE]; the first chunk
#     arrives while the database is still generating;
#   - /v1/models lists what the key's role may use; /v1/models/{ref},
#     generate, score, tokenize, chat completions;
#   - errors: 401 (none, bad, revoked, expired), 403, 404, 400, 413, 429 with
#     Retry-After and x-ratelimit-*, 503 beyond the concurrency bound;
#   - upload a GGUF over HTTP, use it, delete it; a bad upload leaves no row and
#     no large object; aliases PUT / DELETE;
#   - a client that goes away mid-generation (streaming or not) cancels its
#     request in the database;
#   - TLS with a self-signed certificate; access log lines with request ids;
#   - schemathesis (a bounded run over /openapi.json) finds no 5xx;
#   - the gateway survives all of it and stops on SIGTERM with status 0.
# Never asserts wall-clock time: waits are bounded polls on database state.
set -u
ok() { echo "ok: $*"; }
bad() { echo "FAILED: $*"; }
root=${MMS_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
db=mms_gateway
w=$TMPDIR_PG/gateway
mkdir -p "$w"
chmod 755 "$w"
gw_dir=$w
. "$root/test/gateway/lib.sh"
trap gw_stop_all EXIT
trap 'exit 130' INT TERM
sql() { psql -X -q -At -v ON_ERROR_STOP=1 -d $db "$@"; }
jx() { python3 "$root/test/gateway/jx.py" "$w/body" "$@"; }
sse_check() { python3 "$root/test/gateway/sse.py" check; }
probe() { python3 "$root/test/gateway/sse.py" probe "$@"; }
# req METHOD PATH KEY [JSON]: prints the HTTP status; body in $w/body, headers in $w/hdr
req() {
	local m=$1 p=$2 k=$3
	shift 3
	local a=(-s -o "$w/body" -D "$w/hdr" -w '%{http_code}' -X "$m" --max-time 120)
	[ -n "$k" ] && a+=(-H "Authorization: Bearer $k")
	[ $# -gt 0 ] && a+=(-H 'Content-Type: application/json' --data-binary "$1")
	curl "${a[@]}" "$url$p"
}
hdr() { grep -i "^$1:" "$w/hdr" | head -1 | cut -d: -f2- | tr -d ' \r'; }
errtype() { jx 'd["error"]["type"] + " " + str(d["error"]["sqlstate"])' 2>/dev/null || head -c 300 "$w/body"; }
# gateway backends running a completion now (idle pooled connections and the
# health checks excluded)
active_sql="SELECT count(*) FROM pg_stat_activity WHERE usename = 'regress_gw_login' AND state = 'active' AND query LIKE '%mms_api_completions%'"
active() { sql -c "$active_sql"; }
# wait_active N: bounded poll until N gateway backends are active
wait_active() {
	local i
	for i in $(seq 300); do
		[ "$(active)" = "$1" ] && return 0
		sleep 0.1
	done
	return 1
}

if [ ! -x "$gw_bin" ]; then
	bad "no mms-gateway binary at $gw_bin (make builds build/mms-gateway)"
	exit 0
fi

# --- setup: database, roles, models, keys ---------------------------------------------
dropdb --if-exists $db 2>/dev/null
roles="regress_gw_login regress_gw_alice regress_gw_bob regress_gw_admin regress_gw_quota regress_gw_carol regress_gw_nogw regress_gw_fuzz"
for r in $roles; do echo "DROP ROLE IF EXISTS $r;"; done | psql -X -q -d postgres 2>/dev/null
createdb $db || { bad "createdb $db"; exit 0; }
cp "$root/models/datefix.gguf" "$w/long.gguf"
chmod a+r "$w/long.gguf"
sql >/dev/null <<SQL || { bad "setup of database, roles, models"; exit 0; }
SET client_min_messages = warning;
CREATE EXTENSION mms;
CREATE ROLE regress_gw_login LOGIN NOINHERIT IN ROLE mms_gateway;
CREATE ROLE regress_gw_alice;
CREATE ROLE regress_gw_bob;
CREATE ROLE regress_gw_admin IN ROLE mms_admin;
CREATE ROLE regress_gw_quota;
CREATE ROLE regress_gw_carol;
CREATE ROLE regress_gw_nogw;
-- schemathesis's role: an admin (uploads, aliases are fuzzed too), its tokens bounded
CREATE ROLE regress_gw_fuzz IN ROLE mms_admin;
GRANT regress_gw_alice, regress_gw_bob, regress_gw_admin, regress_gw_quota, regress_gw_carol, regress_gw_fuzz TO mms_gateway;
GRANT pg_monitor TO mms_gateway;
SELECT mms_import('flan', '$MMS_TEST_DATA/flan_gated.gguf');
SELECT mms_import('short', '$MMS_TEST_DATA/depth_3_1.gguf');
SELECT mms_import('hidden', '$MMS_TEST_DATA/t5_relu_tied.gguf');
-- the demo model: slow enough per token that a long generation outlasts any probe
SELECT mms_import('long', '$w/long.gguf');
SELECT mms_grant('flan', r) FROM unnest(ARRAY['regress_gw_alice', 'regress_gw_quota', 'regress_gw_carol', 'regress_gw_nogw', 'regress_gw_fuzz']) r;
SELECT mms_grant('short', 'regress_gw_alice');
SELECT mms_grant('long', 'regress_gw_alice');
SELECT mms_grant('long', 'regress_gw_carol');
SELECT mms_set_quota('regress_gw_quota', 'flan', requests_per_minute => 2);
-- fuzzed max_tokens and prompt arrays: beyond a few seconds of generation a minute, 429
SELECT mms_set_quota('regress_gw_fuzz', tokens_per_minute => 20000, max_concurrent => 2);
SQL
key() { sql -c "SELECT mms_create_api_key('$1', '$2'${3:+, $3})" 2>/dev/null; }
k_alice=$(key regress_gw_alice alice)
k_bob=$(key regress_gw_bob bob)
k_admin=$(key regress_gw_admin admin)
k_quota=$(key regress_gw_quota quota)
k_carol=$(key regress_gw_carol carol)
k_rev=$(key regress_gw_alice to-revoke)
k_nogw=$(key regress_gw_nogw not-granted-to-gateway)
k_fuzz=$(key regress_gw_fuzz schemathesis)
for k in "$k_alice" "$k_bob" "$k_admin" "$k_quota" "$k_carol" "$k_rev" "$k_nogw" "$k_fuzz"; do
	[[ $k =~ ^mms-[0-9a-f]{64}$ ]] || { bad "mms_create_api_key returned '$k'"; exit 0; }
done
ok "8 API keys created (mms- and 64 hex digits)"
# mms.api_keys: a prefix, never the secret
got=$(sql -c "SELECT count(*) FILTER (WHERE prefix = left('$k_alice', 12)) || ' ' || count(*) FILTER (WHERE prefix = '$k_alice') FROM mms.api_keys")
[ "$got" = "1 0" ] && ok "mms.api_keys shows the key's prefix, not the key" || bad "mms.api_keys prefix: '$got'"

conn="host=$PGHOST port=$PGPORT dbname=$db user=regress_gw_login"
if ! gw_start gw --db "$conn" --pool 4 --key-ttl 1 --max-body 1048576 --max-upload 1500000 --request-timeout 60; then
	bad "the gateway did not start: $(tail -5 "$w/gw.log")"
	exit 0
fi
url=$gw_url
ok "the gateway answers /healthz on 127.0.0.1:$gw_port"

# --- operations ---------------------------------------------------------------------
st=$(req GET /readyz "")
[ "$st" = 200 ] && ok "/readyz: 200 with the database reachable" || bad "/readyz: $st $(head -c 200 "$w/body")"
st=$(req GET /openapi.json "")
v=$(jx 'd["openapi"]')
paths=$(jx 'sorted(d["paths"])')
want_paths='["/healthz", "/metrics", "/openapi.json", "/readyz", "/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{name}/aliases/{alias}", "/v1/models/{ref}", "/v1/models/{ref}/generate", "/v1/models/{ref}/score", "/v1/models/{ref}/tokenize", "/v1/nodes"]'
[ "$st" = 200 ] && [[ $v == 3.1* ]] && ok "/openapi.json: OpenAPI $v" || bad "/openapi.json: $st, openapi '$v'"
[ "$paths" = "$want_paths" ] && ok "/openapi.json describes every endpoint" || bad "/openapi.json paths: $paths"
cp "$w/body" "$w/openapi.json"

# --- completions --------------------------------------------------------------------
fox='The quick brown fox'
want=$(sql -c "SELECT to_jsonb(mms_generate('flan', '$fox', '{\"max_new_tokens\": 8, \"min_new_tokens\": 8}'))")
n_in=$(sql -c "SELECT cardinality(mms_tokenize('flan', '$fox'))")
body='{"model": "flan", "prompt": "'$fox'", "max_tokens": 8, "min_tokens": 8, "temperature": 0}'
st=$(req POST /v1/completions "$k_alice" "$body")
usage='{"prompt_tokens": '$n_in', "completion_tokens": 8, "total_tokens": '$((n_in + 8))'}'
got=$(jx '[d["object"], d["model"], d["id"][:5], len(d["choices"]), d["choices"][0]["text"] == W, d["choices"][0]["index"], d["choices"][0]["finish_reason"], d["usage"] == U]' W="$want" U="$usage")
[ "$st" = 200 ] && [ "$got" = '["text_completion", "flan", "cmpl-", 1, true, 0, "length", true]' ] &&
	ok "/v1/completions: mms_generate's text, finish_reason length, usage $n_in + 8 tokens" ||
	bad "/v1/completions: $st $got $(head -c 300 "$w/body")"
[[ $(hdr content-type) == application/json* ]] && ok "completions answer application/json" || bad "content-type '$(hdr content-type)'"
rid=$(hdr x-request-id)
[ -n "$rid" ] && ok "a request without x-request-id gets one ($rid)" || bad "no x-request-id in the response"

want2=$(sql -c "SELECT to_jsonb(mms_generate_batch('flan', ARRAY['one', 'two words'], '{\"max_new_tokens\": 5}'))")
st=$(req POST /v1/completions "$k_alice" '{"model": "flan", "prompt": ["one", "two words"], "max_tokens": 5, "temperature": 0}')
got=$(jx '[[c["index"], c["text"]] for c in d["choices"]] == [[0, W[0]], [1, W[1]]] and d["usage"]["total_tokens"] == d["usage"]["prompt_tokens"] + d["usage"]["completion_tokens"] and d["usage"]["completion_tokens"] <= 10' W="$want2")
[ "$st" = 200 ] && [ "$got" = true ] && ok "/v1/completions with an array prompt: one choice per input, in order, mms_generate_batch's texts" ||
	bad "array prompt: $st $got $(head -c 300 "$w/body")"

# usage rows go to the key's role: exactly three calls of carol
for i in 1 2 3; do req POST /v1/completions "$k_carol" '{"model": "flan", "prompt": "carol '$i'", "max_tokens": 2}' >/dev/null; done
got=$(sql -c "SELECT mms_usage_flush()" -c "SELECT sum(calls) FROM mms.usage WHERE role_name = 'regress_gw_carol'")
[ "$got" = $'t\n3' ] && ok "mms.usage charges the key's role: 3 calls of regress_gw_carol" || bad "usage of carol: '$got'"
got=$(sql -c "SELECT last_used IS NOT NULL FROM mms.api_keys WHERE label = 'carol'")
[ "$got" = t ] && ok "mms.api_keys.last_used is set by a request" || bad "last_used: '$got'"

# --- streaming ----------------------------------------------------------------------
sbody='{"model": "flan", "prompt": "'$fox'", "max_tokens": 8, "min_tokens": 8, "temperature": 0, "stream": true'
st=$(curl -s -N -o "$w/sse" -D "$w/hdr" -w '%{http_code}' -H "Authorization: Bearer $k_alice" -H 'Content-Type: application/json' \
	--data-binary "$sbody, \"stream_options\": {\"include_usage\": true}}" "$url/v1/completions")
sse_check <"$w/sse" >"$w/body"
got=$(jx '[d["objects"], len(d["ids"]), d["text"] == [W], d["finish"], d["usage"] == U, d["usage_last"], d["chunks"] >= 3]' W="$want" U="$usage")
[ "$st" = 200 ] && [ "$got" = '[["text_completion"], 1, true, ["length"], true, true, true]' ] &&
	ok "stream: data: chunks of one id, the same text, finish_reason length, a last chunk with choices [] and usage, data: [DONE]" ||
	bad "stream with include_usage: $st $got $(head -c 300 "$w/body")"
[[ $(hdr content-type) == text/event-stream* ]] && ok "stream answers text/event-stream" || bad "stream content-type '$(hdr content-type)'"
curl -s -N -o "$w/sse" -H "Authorization: Bearer $k_alice" -H 'Content-Type: application/json' --data-binary "$sbody}" "$url/v1/completions"
sse_check <"$w/sse" >"$w/body"
got=$(jx '[d["text"] == [W], d["usage"]]' W="$want")
[ "$got" = '[true, null]' ] && ok "stream without include_usage: the same text, no usage chunk" || bad "stream without usage: $got $(head -c 300 "$w/body")"
curl -s -N -o "$w/sse" -H "Authorization: Bearer $k_alice" -H 'Content-Type: application/json' \
	--data-binary '{"model": "flan", "prompt": ["one", "two words"], "max_tokens": 5, "temperature": 0, "stream": true}' "$url/v1/completions"
sse_check <"$w/sse" >"$w/body"
got=$(jx 'd["text"] == W' W="$want2")
[ "$got" = true ] && ok "stream of an array prompt: each choice index gets its input's text" || bad "array stream: $got $(head -c 300 "$w/body")"

# the first chunk arrives while the database still generates: the probe runs
# the query on pg_stat_activity after reading the first event, then reads on
long='"model": "long", "prompt": "normalize date: March 3rd, 2021", "temperature": 0'
out=$(probe "$url/v1/completions" "$k_alice" "{$long, \"max_tokens\": 1000, \"min_tokens\": 1000, \"stream\": true}" --check "psql -X -At -d $db -c \"$active_sql\"")
echo "$out" >"$w/body"
got=$(jx '[d["status"], d["check"], d["done"], d["events"] > d["events_before_check"]]')
[ "$got" = '[200, "1", true, true]' ] &&
	ok "stream: the first chunk arrived while the gateway's statement was still running, $(jx 'd["events"]') chunks in all" ||
	bad "stream before the end: $out"

# --- models and the native API ------------------------------------------------------
st=$(req GET /v1/models "$k_alice")
got=$(jx 'd["object"] + " " + " ".join(sorted(m["id"] for m in d["data"])) + " " + str({m["object"] for m in d["data"]})')
[ "$st $got" = "200 list flan long short {'model'}" ] && ok "/v1/models lists the 3 models alice may use, not 'hidden'" || bad "/v1/models (alice): $st $got"
st=$(req GET /v1/models "$k_bob")
got=$(jx '" ".join(m["id"] for m in d["data"])')
[ "$st" = 200 ] && [ -z "$got" ] && ok "/v1/models lists nothing for a role without grants" || bad "/v1/models (bob): $st '$got'"
st=$(req GET /v1/models/flan "$k_alice")
got=$(jx 'd["id"]' 2>/dev/null || jx 'd["name"]')
[ "$st $got" = "200 flan" ] && ok "/v1/models/flan: its metadata" || bad "/v1/models/flan: $st $(head -c 200 "$w/body")"
st=$(req GET /v1/models/hidden "$k_alice")
[ "$st" = 404 ] && ok "/v1/models/hidden for a role without the grant: 404" || bad "/v1/models/hidden: $st"

want=$(sql -c "SELECT to_jsonb(mms_generate_batch('flan', ARRAY['abc', 'de f'], '{\"max_new_tokens\": 6, \"num_beams\": 2}'))")
st=$(req POST /v1/models/flan/generate "$k_alice" '{"inputs": ["abc", "de f"], "options": {"max_new_tokens": 6, "num_beams": 2}}')
got=$(jx 'd["outputs"] == W' W="$want")
[ "$st $got" = "200 true" ] && ok "generate: mms_generate_batch's outputs (beam search)" || bad "generate: $st $got $(head -c 200 "$w/body")"
want=$(sql -c "SELECT to_jsonb(ARRAY[mms_score('flan', 'abc', 'xyz'), mms_score('flan', 'de f', 'g')])")
st=$(req POST /v1/models/flan/score "$k_alice" '{"inputs": ["abc", "de f"], "targets": ["xyz", "g"]}')
got=$(jx 'all(abs(a - b) < 1e-4 for a, b in zip(d["scores"], W)) and len(d["scores"]) == 2' W="$want")
[ "$st $got" = "200 true" ] && ok "score: mms_score's log-probabilities" || bad "score: $st $got $(head -c 200 "$w/body")"
want=$(sql -c "SELECT to_jsonb(mms_tokenize('flan', '$fox'))")
st=$(req POST /v1/models/flan/tokenize "$k_alice" '{"input": "'"$fox"'"}')
got=$(jx 'd["ids"] == W and d["count"] == len(W)' W="$want")
[ "$st $got" = "200 true" ] && ok "tokenize: mms_tokenize's ids and their count" || bad "tokenize: $st $got $(head -c 200 "$w/body")"
st=$(req POST /v1/chat/completions "$k_alice" '{"model": "flan", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}')
got=$(jx '[d["object"], d["choices"][0]["message"]["role"], type(d["choices"][0]["message"]["content"]).__name__, d["usage"]["completion_tokens"] <= 4]')
[ "$st $got" = '200 ["chat.completion", "assistant", "str", true]' ] && ok "chat completions: an assistant message" || bad "chat: $st $got $(head -c 300 "$w/body")"
curl -s -N -o "$w/sse" -H "Authorization: Bearer $k_alice" -H 'Content-Type: application/json' \
	--data-binary '{"model": "flan", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "stream": true}' "$url/v1/chat/completions"
sse_check <"$w/sse" >"$w/body"
got=$(jx 'd["objects"]')
[ "$got" = '["chat.completion.chunk"]' ] && ok "chat stream: chat.completion.chunk events and [DONE]" || bad "chat stream: $got $(head -c 300 "$w/body")"

# --- errors -------------------------------------------------------------------------
# expect STATUS TYPE DESCRIPTION -- METHOD PATH KEY [JSON]
expect() {
	local want_st=$1 want_type=$2 what=$3
	shift 4
	local st
	st=$(req "$@")
	local t
	t=$(jx 'd["error"]["type"]')
	local msg
	msg=$(jx 'd["error"]["message"]')
	if [ "$st" = "$want_st" ] && { [ -z "$want_type" ] || [ "$t" = "$want_type" ]; } && [ -n "$msg" ]; then
		ok "$what: $st $t ($msg)"
	else
		bad "$what: $st, want $want_st $want_type: $(head -c 300 "$w/body")"
	fi
}
c='{"model": "flan", "prompt": "x", "max_tokens": 2'
expect 401 "" "no Authorization header" -- POST /v1/completions "" "$c}"
expect 401 "" "an unknown key" -- POST /v1/completions "mms-$(printf '0%.0s' $(seq 64))" "$c}"
expect 401 "" "a key that is not of the mms- form" -- GET /v1/models "not-a-key"
st=$(curl -s -o "$w/body" -w '%{http_code}' -H "Authorization: Basic $(echo -n a:b | base64)" "$url/v1/models")
[ "$st" = 401 ] && ok "Basic authorization: 401" || bad "Basic authorization: $st"
# a model the role may not use is, for it, a model that does not exist (as OpenAI answers)
expect 404 not_found_error "a model the role has no grant on" -- POST /v1/completions "$k_bob" "$c}"
expect 403 permission_error "a key of a role not granted to mms_gateway" -- POST /v1/completions "$k_nogw" "$c}"
expect 404 not_found_error "a model that exists but is granted to others" -- POST /v1/completions "$k_alice" '{"model": "hidden", "prompt": "x"}'
expect 404 not_found_error "an unknown model" -- POST /v1/completions "$k_alice" '{"model": "nosuch", "prompt": "x"}'
expect 404 not_found_error "GET /v1/models/nosuch" -- GET /v1/models/nosuch "$k_alice"
expect 404 not_found_error "an unknown alias" -- POST /v1/completions "$k_alice" '{"model": "flan@nosuch", "prompt": "x"}'
st=$(req GET /v1/nosuch "$k_alice")
[ "$st" = 404 ] && ok "an unknown path: 404" || bad "unknown path: $st"
st=$(req GET /v1/completions "$k_alice")
[ "$st" = 405 ] || [ "$st" = 404 ] && ok "GET /v1/completions: $st" || bad "GET /v1/completions: $st"
expect 400 invalid_request_error "a body that is not JSON" -- POST /v1/completions "$k_alice" '{"model": "flan", "prompt": '
expect 400 invalid_request_error "a JSON array as the body" -- POST /v1/completions "$k_alice" '[1, 2]'
expect 400 invalid_request_error "an unknown parameter" -- POST /v1/completions "$k_alice" "$c, \"bogus\": 1}"
expect 400 invalid_request_error "max_tokens of the wrong type" -- POST /v1/completions "$k_alice" '{"model": "flan", "prompt": "x", "max_tokens": "ten"}'
expect 400 invalid_request_error "no prompt" -- POST /v1/completions "$k_alice" '{"model": "flan"}'
expect 400 invalid_request_error "no model" -- POST /v1/completions "$k_alice" '{"prompt": "x"}'
expect 400 invalid_request_error "a negative temperature" -- POST /v1/completions "$k_alice" "$c, \"temperature\": -1}"
expect 400 invalid_request_error "max_tokens beyond mms.max_new_tokens" -- POST /v1/completions "$k_alice" '{"model": "flan", "prompt": "x", "max_tokens": 100000}'
expect 400 invalid_request_error "chat without messages" -- POST /v1/chat/completions "$k_alice" '{"model": "flan"}'
expect 400 invalid_request_error "generate with inputs not an array of strings" -- POST /v1/models/flan/generate "$k_alice" '{"inputs": [1, 2]}'
# 413: a body beyond --max-body (1 MB), announced or chunked; a prompt the model refuses
python3 -c 'import json; print(json.dumps({"model": "flan", "prompt": "word " * 300000}))' >"$w/big.json"
st=$(curl -s -o "$w/body" -w '%{http_code}' -H "Authorization: Bearer $k_alice" -H 'Content-Type: application/json' --data-binary @"$w/big.json" "$url/v1/completions")
t=$(jx 'd["error"]["type"]')
[ "$st" = 413 ] && ok "a body of $(stat -c %s "$w/big.json") bytes beyond --max-body: 413 $t" || bad "body beyond --max-body: $st $(head -c 200 "$w/body")"
: >"$w/body"
st=$(curl -s -o "$w/body" -w '%{http_code}' -H "Authorization: Bearer $k_alice" -H 'Content-Type: application/json' -H 'Transfer-Encoding: chunked' --data-binary @"$w/big.json" "$url/v1/completions")
[ "$st" = 413 ] && ok "a chunked body beyond --max-body: 413" || bad "a chunked body beyond --max-body: status '$st' (100/000: no final response, the connection was closed) $(head -c 200 "$w/body")"
python3 -c 'import json; print(json.dumps({"model": "flan", "prompt": "word " * 20000, "max_tokens": 2}))' >"$w/long.json"
st=$(curl -s -o "$w/body" -w '%{http_code}' -H "Authorization: Bearer $k_alice" -H 'Content-Type: application/json' --data-binary @"$w/long.json" "$url/v1/completions")
got=$(errtype)
[ "$st $got" = "413 request_too_large 54000" ] && ok "a prompt beyond mms.max_input_tokens: 413 ($got)" || bad "prompt too long: $st $got"
# 429: requests_per_minute 2
r=""
for i in 1 2 3; do r+="$(req POST /v1/completions "$k_quota" "$c}") "; done
got=$(errtype)
ra=$(hdr retry-after)
lim=$(hdr x-ratelimit-limit-requests)
rem=$(hdr x-ratelimit-remaining-requests)
[ "$r" = "200 200 429 " ] && [ "$got" = "rate_limit_error 53400" ] && [[ $ra =~ ^[1-9][0-9]*$ ]] && [ "$lim $rem" = "2 0" ] &&
	ok "requests_per_minute 2: 200 200 429 rate_limit_error, Retry-After $ra, x-ratelimit-limit-requests 2, remaining 0" ||
	bad "quota: '$r' $got retry-after '$ra' limit '$lim' remaining '$rem'; headers: $(grep -i '^x-ratelimit' "$w/hdr" | tr -d '\r' | tr '\n' ' ')"

# revoked and expired keys stop working within --key-ttl (1 s): bounded polls
st=$(req GET /v1/models "$k_rev")
sql -c "SELECT mms_revoke_api_key(id) FROM mms.api_keys WHERE label = 'to-revoke'" >/dev/null
for i in $(seq 100); do
	[ "$(req GET /v1/models "$k_rev")" = 401 ] && break
	sleep 0.1
done
st2=$(req GET /v1/models "$k_rev")
[ "$st $st2" = "200 401" ] && ok "a revoked key: 200 before, 401 after (key cache of 1 s)" || bad "revoked key: $st then $st2"
k_exp=$(key regress_gw_alice expiring "now() + interval '2 seconds'")
st=$(req GET /v1/models "$k_exp")
for i in $(seq 150); do
	[ "$(req GET /v1/models "$k_exp")" = 401 ] && break
	sleep 0.1
done
st2=$(req GET /v1/models "$k_exp")
past=$(sql -c "SELECT expires < now() FROM mms.api_keys WHERE label = 'expiring'")
[ "$st $st2 $past" = "200 401 t" ] && ok "a key that expires: 200 before, 401 after its expiry" || bad "expiring key: $st then $st2 (expired: $past)"

# --- management: upload, use, delete; aliases ---------------------------------------
los() { sql -c "SELECT count(*) FROM pg_largeobject_metadata"; }
upload() { # upload KEY FILE QUERY
	curl -s -o "$w/body" -w '%{http_code}' -X POST -H "Authorization: Bearer $1" -H 'Content-Type: application/octet-stream' \
		--data-binary @"$2" "$url/v1/models?$3"
}
lo0=$(los)
f=$MMS_TEST_DATA/flan_gated_q8_0.gguf
st=$(upload "$k_admin" "$f" "name=uploaded&author=gw%20test&description=over%20HTTP")
got=$(sql -c "SELECT author || '|' || description || '|' || sha256 FROM mms.models WHERE name = 'uploaded'")
lo1=$(los)
[ "$st" = 201 ] && [ "$got" = "gw test|over HTTP|$(sha256sum "$f" | cut -c1-64)" ] && [ "$lo1" = $((lo0 + 1)) ] &&
	ok "upload (admin key): 201, registered with author, description and the file's sha256, one large object more" ||
	bad "upload: $st '$got' large objects $lo0 -> $lo1: $(head -c 300 "$w/body")"
sql -c "SELECT mms_grant('uploaded', 'regress_gw_alice')" >/dev/null
want=$(sql -c "SELECT to_jsonb(mms_generate('uploaded', 'hello', '{\"max_new_tokens\": 4}'))")
st=$(req POST /v1/completions "$k_alice" '{"model": "uploaded", "prompt": "hello", "max_tokens": 4, "temperature": 0}')
got=$(jx 'd["choices"][0]["text"] == W' W="$want")
[ "$st $got" = "200 true" ] && ok "the uploaded model serves completions" || bad "completions of the upload: $st $got"
st=$(upload "$k_alice" "$f" "name=byalice")
n=$(sql -c "SELECT count(*) FROM mms.models WHERE name = 'byalice'")
[ "$st $n $(los)" = "403 0 $lo1" ] && ok "upload with a key that is not admin: 403, no row, no large object" || bad "upload by alice: $st, $n rows, $(los) large objects"
for b in truncated not_gguf empty; do
	st=$(upload "$k_admin" "$MMS_TEST_DATA/bad/$b.gguf" "name=bad_$b")
	n=$(sql -c "SELECT count(*) FROM mms.models WHERE name = 'bad_$b'")
	[ "$st $n $(los)" = "400 0 $lo1" ] && ok "upload of a bad file ($b): 400 $(jx 'd["error"]["sqlstate"]'), no row, no large object" ||
		bad "bad upload $b: $st, $n rows, $(los) large objects (want $lo1): $(head -c 200 "$w/body")"
done
head -c 2000000 /dev/urandom >"$w/huge.bin"
st=$(upload "$k_admin" "$w/huge.bin" "name=huge")
[ "$st $(los)" = "413 $lo1" ] && ok "an upload beyond --max-upload: 413, no large object" || bad "huge upload: $st, $(los) large objects"
st=$(upload "$k_admin" "$f" "author=noname")
[ "$st $(los)" = "400 $lo1" ] && ok "an upload without ?name=: 400" || bad "upload without name: $st, $(los) large objects"

st=$(req PUT /v1/models/flan/aliases/prod "$k_admin" '{"version": 1}')
got=$(sql -c "SELECT aliases FROM mms.models WHERE name = 'flan'")
st2=$(req POST /v1/completions "$k_alice" '{"model": "flan@prod", "prompt": "x", "max_tokens": 2}')
[ "$st $got $st2" = "200 {prod} 200" ] && ok "PUT an alias (admin): flan@prod serves" || bad "PUT alias: $st '$got' then $st2"
st=$(req PUT /v1/models/flan/aliases/dev "$k_alice" '{"version": 1}')
[ "$st" = 403 ] && ok "PUT an alias with a key that is not admin: 403" || bad "PUT alias by alice: $st"
expect 404 not_found_error "PUT an alias to a version that does not exist" -- PUT /v1/models/flan/aliases/x "$k_admin" '{"version": 99}'
st=$(req DELETE /v1/models/flan/aliases/prod "$k_admin")
st2=$(req POST /v1/completions "$k_alice" '{"model": "flan@prod", "prompt": "x", "max_tokens": 2}')
[ "$st $(sql -c "SELECT aliases FROM mms.models WHERE name = 'flan'") $st2" = "200 {} 404" ] && ok "DELETE the alias: flan@prod is gone (404)" || bad "DELETE alias: $st then $st2"

expect 403 permission_error "DELETE a model with a key that is not admin" -- DELETE /v1/models/uploaded "$k_alice"
st=$(req DELETE /v1/models/uploaded "$k_admin")
n=$(sql -c "SELECT count(*) FROM mms.models WHERE name = 'uploaded'")
st2=$(req GET /v1/models/uploaded "$k_alice")
[ "$st $n $(los) $st2" = "200 0 $lo0 404" ] && ok "DELETE the uploaded model (admin): no row, its large object gone, GET 404" ||
	bad "DELETE model: $st, $n rows, $(los) large objects (want $lo0), GET $st2"
st=$(req GET /v1/nodes "$k_alice")
[ "$st" = 403 ] && ok "/v1/nodes with a key that is not admin: 403" || bad "/v1/nodes by alice: $st"
st=$(req GET /v1/nodes "$k_admin")
got=$(jx 'len(d["data"] if isinstance(d, dict) else d)')
[ "$st $got" = "200 1" ] && ok "/v1/nodes (admin): one node" || bad "/v1/nodes: $st $(head -c 300 "$w/body")"

# --- a client that goes away cancels its request ------------------------------------
cancels() { sql -c "SELECT coalesce(sum(cancels), 0) FROM mms.stat_models WHERE role = 'regress_gw_carol' AND model LIKE 'long:%'"; }
c0=$(cancels)
out=$(probe "$url/v1/completions" "$k_carol" "{$long, \"max_tokens\": 4000, \"min_tokens\": 4000, \"stream\": true}" --check "psql -X -At -d $db -c \"$active_sql\"" --close)
echo "$out" >"$w/body"
wait_active 0
a=$(active)
c1=$(cancels)
[ "$(jx '[d["status"], d["check"], d["closed_early"]]')" = '[200, "1", true]' ] && [ "$a" = 0 ] && [ "$c1" -gt "$c0" ] &&
	ok "a streaming client that closes after the first chunk: its statement ends and the request is counted as cancelled" ||
	bad "stream disconnect: $out, $a statements active, cancels $c0 -> $c1"
curl -s -o /dev/null -H "Authorization: Bearer $k_carol" -H 'Content-Type: application/json' \
	--data-binary "{$long, \"max_tokens\": 4000, \"min_tokens\": 4000}" "$url/v1/completions" &
cpid=$!
wait_active 1 && was=1 || was=0
kill $cpid 2>/dev/null
wait $cpid 2>/dev/null
wait_active 0
a=$(active)
c2=$(cancels)
[ "$was $a" = "1 0" ] && [ "$c2" -gt "$c1" ] &&
	ok "a client that goes away during a non-streaming completion: its statement ends and the request is counted as cancelled" ||
	bad "non-streaming disconnect: active before $was after $a, cancels $c1 -> $c2"
got=$(sql -c "SELECT coalesce(sum(queued + running), 0) FROM mms.pools WHERE model LIKE 'long%'")
[ "$got" = 0 ] && ok "nothing of the cancelled requests is left in the queue" || bad "long's pool still has $got requests"

# --- bounded concurrency: 503 beyond --max-inflight ------------------------------
if gw_start lim --db "$conn" --pool 2 --max-inflight 1 --key-ttl 1; then
	curl -s -N -o /dev/null -H "Authorization: Bearer $k_carol" -H 'Content-Type: application/json' \
		--data-binary "{$long, \"max_tokens\": 4000, \"min_tokens\": 4000, \"stream\": true}" "$lim_url/v1/completions" &
	cpid=$!
	wait_active 1 && was=1 || was=0
	st=$(curl -s -o "$w/body" -D "$w/hdr" -w '%{http_code}' -H "Authorization: Bearer $k_alice" "$lim_url/v1/models")
	ra=$(hdr retry-after)
	kill $cpid 2>/dev/null
	wait $cpid 2>/dev/null
	wait_active 0
	st2=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $k_alice" "$lim_url/v1/models")
	[ "$was $st $st2" = "1 503 200" ] && [[ $ra =~ ^[0-9]+$ ]] &&
		ok "--max-inflight 1: a second request while one streams gets 503 with Retry-After $ra; after it, 200" ||
		bad "--max-inflight 1: active $was, second request $st (Retry-After '$ra') $(head -c 200 "$w/body"), later $st2"
	gw_stop lim
else
	bad "a gateway with --max-inflight 1 did not start: $(tail -3 "$w/lim.log")"
fi

# --- no database: alive, not ready, 503 --------------------------------------------
if gw_start down --db "host=$w/nowhere port=1 dbname=x user=y connect_timeout=1"; then
	r=$(curl -s -o /dev/null -w '%{http_code}' "$down_url/readyz")
	st=$(curl -s -o "$w/body" -w '%{http_code}' -H "Authorization: Bearer $k_alice" -H 'Content-Type: application/json' --data-binary "$c}" "$down_url/v1/completions")
	[ "$r $st" = "503 503" ] && ! grep -q nowhere "$w/body" &&
		ok "with no database reachable: /healthz 200, /readyz 503, a completion 503 $(jx 'd["error"]["type"]') that does not name the server's socket" ||
		bad "no database: /readyz $r, completion $st $(head -c 200 "$w/body")"
	gw_stop down
else
	bad "a gateway whose database is down did not answer /healthz: $(tail -3 "$w/down.log")"
fi

# --- TLS ----------------------------------------------------------------------------
if openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
	-keyout "$w/tls.key" -out "$w/tls.crt" >/dev/null 2>&1 && gw_start tls --tls --db "$conn" --tls-cert "$w/tls.crt" --tls-key "$w/tls.key"; then
	st=$(curl -s -o "$w/body" -w '%{http_code}' --cacert "$w/tls.crt" -H "Authorization: Bearer $k_alice" -H 'Content-Type: application/json' \
		--data-binary "$c}" "$tls_url/v1/completions")
	plain=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$tls_port/healthz")
	[ "$st" = 200 ] && [ "$plain" != 200 ] && ok "TLS with a self-signed certificate: a completion over https, plain http refused ($plain)" ||
		bad "TLS: https $st $(head -c 200 "$w/body"), plain http $plain"
	gw_stop tls
else
	bad "a gateway with --tls-cert did not start: $(tail -3 "$w/tls.log" 2>/dev/null)"
fi

# --- metrics and the access log -----------------------------------------------------
st=$(curl -s -o "$w/metrics" -w '%{http_code}' "$url/metrics")
if command -v promtool >/dev/null; then
	out=$(promtool check metrics <"$w/metrics" 2>&1) && [ -z "$out" ] && pt=ok || pt="$out"
else
	pt="promtool is not installed (Debian package prometheus)"
fi
[ "$st $pt" = "200 ok" ] && ok "/metrics passes promtool check metrics" || bad "/metrics: $st, promtool: $pt"
n_gw=$(grep -c '^mms_gateway_' "$w/metrics")
n_mms=$(grep -c '^mms_requests_total' "$w/metrics")
[ "$n_gw" -gt 0 ] && [ "$n_mms" -gt 0 ] && ok "/metrics has the gateway's own series ($n_gw) and mms_metrics() ($n_mms mms_requests_total)" ||
	bad "/metrics: $n_gw mms_gateway_ series, $n_mms mms_requests_total"
curl -s -o /dev/null -H "x-request-id: regress-gw-req-42" -H "Authorization: Bearer $k_alice" -H 'Content-Type: application/json' \
	--data-binary "$c}" -D "$w/hdr" "$url/v1/completions"
echoed=$(hdr x-request-id)
line=$(grep 'regress-gw-req-42' "$w/gw.log" | head -1)
[ "$echoed" = regress-gw-req-42 ] && grep -q regress_gw_alice <<<"$line" && grep -q flan <<<"$line" && grep -qw 200 <<<"$line" &&
	ok "x-request-id echoed; access log line with id, role, model, status: $line" || bad "access log: echoed '$echoed', line '$line'"

# --- the official openai client -----------------------------------------------------
vpy=$("$root/tools/venv.sh" gateway 2>"$w/venv.log") || { bad "tools/venv.sh gateway: $(tail -3 "$w/venv.log")"; vpy=""; }
if [ -n "$vpy" ]; then
	GW_URL=$url GW_DB=$db K_ALICE=$k_alice K_BOB=$k_bob K_QUOTA=$k_quota "$vpy" "$root/test/gateway/openai_client.py" 2>&1 ||
		bad "openai_client.py exited with an error"
	# the OpenAPI document
	out=$("$vpy" -c 'import json, sys; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1])))' "$w/openapi.json" 2>&1) &&
		ok "openapi-spec-validator accepts /openapi.json" || bad "openapi-spec-validator: $(tail -5 <<<"$out")"
	# schemathesis: a bounded run (examples, coverage, fuzzing; 50 cases an
	# operation at most) with an admin key, half of its cases naming a real
	# model (test/gateway/schemathesis_hooks.py); no 5xx, and the gateway lives
	n0=$(wc -l <"$w/gw.log")
	st=$(cd "$w" && SCHEMATHESIS_HOOKS="$root/test/gateway/schemathesis_hooks.py" timeout 900 \
		"$(dirname "$vpy")/schemathesis" run "$url/openapi.json" -H "Authorization: Bearer $k_fuzz" \
		--checks not_a_server_error --max-examples 50 --seed 13 --phases examples,coverage,fuzzing \
		--request-timeout 60 --no-color >"$w/schemathesis.log" 2>&1; echo $?)
	summary=$(grep -E '[0-9]+ generated' "$w/schemathesis.log" | tail -1 | xargs)
	[ "$st" = 0 ] && ok "schemathesis: no 5xx in a bounded run ($summary)" ||
		bad "schemathesis exited $st ($summary): $(grep -B2 -A12 -E 'Server error|^_+ ' "$w/schemathesis.log" | head -40)"
	n_flan=$(tail -n +$((n0 + 1)) "$w/gw.log" | grep -c 'model=flan .*status=200')
	[ "$n_flan" -gt 50 ] && ok "$n_flan of the fuzzed requests were answered by the model (status 200)" ||
		bad "only $n_flan fuzzed requests were answered by the model"
fi
kill -0 "$gw_pid" 2>/dev/null && [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/healthz")" = 200 ] &&
	ok "the gateway is alive after all of it" || bad "the gateway died: $(tail -5 "$w/gw.log")"
gw_stop gw
[ "$gw_status" = 0 ] && ok "SIGTERM stops the gateway with status 0" || bad "after SIGTERM the gateway's status is $gw_status"
if grep -qiE 'AddressSanitizer|runtime error|segmentation|core dumped' "$w"/*.log; then
	bad "a gateway log shows a crash: $(grep -hiE 'AddressSanitizer|runtime error|segmentation' "$w"/*.log | head -3)"
fi
