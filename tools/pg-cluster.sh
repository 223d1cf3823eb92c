# tools/pg-cluster.sh — sourced by test/pg/run.sh and tools/demo.sh: starts a
# throwaway PostgreSQL 15 cluster in a temporary directory on a free port
# (socket only, no TCP), with mms preloaded, and stops and removes it on exit.
# As root, the server runs as the unprivileged `postgres` user (initdb refuses
# root). Sets: tmp, port, as_server, PGHOST, PGPORT, PGUSER. KEEP=1 keeps it.
# Usage: cluster_start [extra postgres -c settings...]
#
# Scripts that run servers of their own (a primary and its streaming replica:
# test/pg/t_replica.sh, test/pg/t_gateway_nodes.sh) source it with
# MMS_CLUSTER_HELPERS_ONLY=1: they get as_server, free_port and the node_*
# functions below, and no throwaway cluster, directory or trap.

bindir=$(pg_config --bindir)
export PATH="$bindir:$PATH"
if [ "$(id -u)" = 0 ]; then
	server_user=postgres
	as_server() { runuser -u "$server_user" -- "$@"; }
else
	server_user=$(id -un)
	as_server() { "$@"; }
fi

# A loopback port nobody listens on.
free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- nodes: servers on 127.0.0.1 with mms preloaded, each in a directory of a
# work directory that also holds their sockets and logs (WORK/NAME.log). TCP is
# on, for pg_basebackup and for clients that connect by host and port.
# node_workdir WORK                      creates WORK, writable by the server user
# node_primary DIR PORT [settings...]    initdb DIR, then node_start
# node_replica PRIMARY_PORT DIR PORT [settings...]
#                                        pg_basebackup -R of the primary (a hot
#                                        standby streaming from it), then node_start
# node_start DIR PORT [settings...]      starts the server of DIR; settings are
#                                        postgres -c NAME=VALUE, the last one wins
#                                        (shared_preload_libraries='' starts it
#                                        without mms)
# node_stop DIR [MODE]                   pg_ctl stop -m MODE (default fast)
# node_stop_all DIR...                   immediate stop of those running (cleanup)
# node_start, node_primary and node_replica return non-zero, with the tail of
# their log on stderr, when they fail.
node_workdir() {
	mkdir -p "$1"
	chmod 755 "$1"
	[ "$(id -u)" = 0 ] && chown "$server_user" "$1"
	return 0
}

node_start() {
	local dir=$1 port=$2 o
	shift 2
	local opts="-c port=$port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$(dirname "$dir") -c fsync=off"
	opts+=" -c shared_preload_libraries=mms"
	for o in "$@"; do opts+=" -c $o"; done
	as_server pg_ctl -D "$dir" -l "$dir.log" -w -o "$opts" start >/dev/null ||
		{ tail -5 "$dir.log" >&2; return 1; }
}

node_primary() {
	local dir=$1
	as_server initdb -D "$dir" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$dir.initdb.log" 2>&1 ||
		{ tail -3 "$dir.initdb.log" >&2; return 1; }
	node_start "$@"
}

node_replica() {
	local primary_port=$1 dir=$2
	shift
	as_server pg_basebackup -h 127.0.0.1 -p "$primary_port" -U postgres -D "$dir" -R -X stream -c fast >"$dir.basebackup.log" 2>&1 ||
		{ tail -3 "$dir.basebackup.log" >&2; return 1; }
	node_start "$@"
}

node_stop() {
	as_server pg_ctl -D "$1" -m "${2:-fast}" -w stop >/dev/null
}

node_stop_all() {
	local d
	for d in "$@"; do
		[ -f "$d/postmaster.pid" ] && as_server pg_ctl -D "$d" -m immediate -w stop >/dev/null 2>&1
	done
	return 0
}

[ "${MMS_CLUSTER_HELPERS_ONLY:-0}" = 1 ] && return 0

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
port=$(free_port)

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
