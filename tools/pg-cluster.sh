# tools/pg-cluster.sh — sourced by test/pg/run.sh and tools/demo.sh: starts a
# throwaway PostgreSQL 15 cluster in a temporary directory on a free port
# (socket only, no TCP), with mms preloaded, and stops and removes it on exit.
# As root, the server runs as the unprivileged `postgres` user (initdb refuses
# root). Sets: tmp, port, as_server, PGHOST, PGPORT, PGUSER. KEEP=1 keeps it.
# Usage: cluster_start [extra postgres -c settings...]

bindir=$(pg_config --bindir)
export PATH="$bindir:$PATH"
if [ "$(id -u)" = 0 ]; then
	server_user=postgres
	as_server() { runuser -u "$server_user" -- "$@"; }
else
	server_user=$(id -un)
	as_server() { "$@"; }
fi

tmp=$(mktemp -d /tmp/mms-pg.XXXXXX)
chmod 755 "$tmp"

cluster_cleanup() {
	if [ "${KEEP:-0}" = 1 ]; then
		echo "kept $tmp (server still running: pg_ctl -D $tmp/data stop)"
		return
	fi
	if [ -f "$tmp/data/postmaster.pid" ]; then
		as_server pg_ctl -D "$tmp/data" -m immediate -w stop >/dev/null 2>&1
	fi
	rm -rf "$tmp"
}
trap cluster_cleanup EXIT
trap 'exit 130' INT TERM

# A port nobody listens on; the socket lives in $tmp and TCP stays off, so
# clusters of concurrent runs cannot collide.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

cluster_start() {
	local opts="-c port=$port -c listen_addresses='' -c unix_socket_directories=$tmp -c fsync=off"
	opts+=" -c shared_preload_libraries=mms"
	for o in "$@"; do opts+=" -c $o"; done
	chown -R "$server_user" "$tmp" 2>/dev/null || true
	as_server initdb -D "$tmp/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$tmp/initdb.log" 2>&1 ||
		{ cat "$tmp/initdb.log"; echo "initdb failed"; return 1; }
	as_server pg_ctl -D "$tmp/data" -l "$tmp/server.log" -w -o "$opts" start >/dev/null ||
		{ cat "$tmp/server.log"; echo "server did not start"; return 1; }
	export PGHOST="$tmp" PGPORT="$port" PGUSER=postgres
}
