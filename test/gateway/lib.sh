# test/gateway/lib.sh — sourced by the gateway's tests (test/pg/t_gateway*.sh),
# its benchmark (bench/gateway_bench.sh) and the demo (tools/demo.sh): finds the
# mms-gateway binary, starts instances of it on free loopback ports and stops
# every instance it started when the calling script exits. Owns no cluster.
#
#   gw_start NAME [--tls] ARGS...  starts `mms-gateway --listen 127.0.0.1:PORT ARGS`,
#       waits (bounded) for GET /healthz, sets NAME_pid, NAME_port, NAME_url,
#       NAME_log; returns 1 if it did not come up (its log says why)
#   gw_stop NAME                   stops that instance (SIGTERM, then SIGKILL after
#       5 s); gw_status is then its exit status (143/137 when it died of the signal)
#   gw_stop_all                    stops all; the caller puts it in its EXIT trap
#   gw_free_port                   a loopback port nobody listens on
# Expects gw_dir (a directory for the logs). MMS_GATEWAY overrides the binary.

gw_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ -n "${MMS_GATEWAY:-}" ]; then
	gw_bin=$MMS_GATEWAY
elif [ -x "$gw_root/build/mms-gateway" ]; then
	gw_bin=$gw_root/build/mms-gateway
else
	gw_bin=$(pg_config --bindir)/mms-gateway
fi
gw_pids=""

gw_free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

gw_start() {
	local name=$1 scheme=http curl_tls=()
	shift
	if [ "${1:-}" = --tls ]; then
		scheme=https
		curl_tls=(-k)
		shift
	fi
	local port pid i
	port=$(gw_free_port)
	"$gw_bin" --listen "127.0.0.1:$port" "$@" >"$gw_dir/$name.log" 2>&1 &
	pid=$!
	gw_pids+=" $pid"
	printf -v "${name}_pid" %s "$pid"
	printf -v "${name}_port" %s "$port"
	printf -v "${name}_url" %s "$scheme://127.0.0.1:$port"
	printf -v "${name}_log" %s "$gw_dir/$name.log"
	for i in $(seq 200); do
		kill -0 "$pid" 2>/dev/null || return 1
		[ "$(curl -s "${curl_tls[@]}" -o /dev/null -w '%{http_code}' --max-time 2 "$scheme://127.0.0.1:$port/healthz")" = 200 ] && return 0
		sleep 0.05
	done
	return 1
}

gw_stop_pid() {
	local pid=$1 i
	gw_status=""
	kill "$pid" 2>/dev/null || return 0
	for i in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	kill -9 "$pid" 2>/dev/null || true
	# a caller under set -e must not stop here: the status is only recorded
	wait "$pid" 2>/dev/null && gw_status=0 || gw_status=$?
	return 0
}

gw_stop() {
	local pidvar="${1}_pid"
	gw_stop_pid "${!pidvar}"
}

gw_stop_all() {
	local p
	for p in $gw_pids; do gw_stop_pid "$p"; done
	gw_pids=""
}
