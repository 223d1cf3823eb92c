#!/bin/bash
# Installs the Debian packages mms needs to build and test, if any is missing.
# Runs apt-get as root (or through sudo). Safe to run repeatedly.
set -eu
pkgs=(build-essential libopenblas-dev libcmocka-dev clang libclang-rt-14-dev valgrind
      postgresql-15 postgresql-server-dev-15 pkg-config
      sqlsmith python3-psycopg debhelper postgresql-server-dev-all
      prometheus   # promtool: checks mms_metrics() output and contrib/prometheus rules
      libmicrohttpd-dev libpq-dev  # mms-gateway
      libkrb5-dev  # gssapi.h, which libpq/libpq.h includes (src/pg/stream.c flushes rows)
      wrk openssl curl python3-venv)  # the gateway: benchmark, TLS certificates, HTTP tests, the openai client's venv
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} = 0 ] && exit 0
echo "installing: ${missing[*]}"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
