#!/bin/bash
# test/pkg/t_deb.sh — the Debian package end to end: builds the .deb (debian/)
# from a snapshot of the working tree in a temporary directory, checks its
# contents, installs it with dpkg -i, and smoke-tests the INSTALLED extension
# in a throwaway cluster (tools/pg-cluster.sh, mms preloaded): CREATE
# EXTENSION, mms_import, mms_generate, mms_tokenize. Prints "ok: ..." /
# "FAILED: ..." lines and exits non-zero on a failure.
#
# Needs root (dpkg -i); as another user it prints "skipped: not root". The
# snapshot is what git would commit: tracked and untracked files, without what
# .gitignore ignores (build/, *.so, ...), so no build output leaks in. The
# package stays installed afterwards (its files are the paths `make install`
# writes; `make pg-test` installs the tree's build again). KEEP=1 keeps the
# temporary directories.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }
bad() { failed=$((failed + 1)); echo "FAILED: $*"; }
finish() { echo "$passed passed, $failed failed"; [ "$failed" = 0 ]; exit $?; }

if [ "$(id -u)" != 0 ]; then
	echo "skipped: not root"
	exit 0
fi

pkg=postgresql-15-mms
work=$(mktemp -d /tmp/mms-deb.XXXXXX)
work_cleanup() { [ "${KEEP:-0}" = 1 ] && echo "kept $work" || rm -rf "$work"; }
trap work_cleanup EXIT
trap 'exit 130' INT TERM

# --- build -----------------------------------------------------------------------
src="$work/mms"
mkdir -p "$src"
if ! git -C "$root" ls-files -z -co --exclude-standard |
	while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
	tar --null -T - -cf - | tar -xf - -C "$src"; then
	bad "could not snapshot the tree (needs a git checkout)"
	finish
fi

up_version=$(cd "$src" && dpkg-parsechangelog -S Version | sed 's/-[^-]*$//')
meta_version=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' "$src/META.json")
ctl_version=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" "$src/mms.control")
if [ "$up_version" = "$ctl_version" ] && [ "$meta_version" = "$ctl_version" ]; then
	ok "versions agree: mms.control, META.json, debian/changelog ($ctl_version)"
else
	bad "versions differ: mms.control $ctl_version, META.json $meta_version, debian/changelog $up_version"
fi

if ! (cd "$src" && dpkg-checkbuilddeps) >"$work/deps.log" 2>&1; then
	cat "$work/deps.log"
	bad "build dependencies missing (make deps installs them)"
	finish
fi

start=$(date +%s)
if (cd "$src" && dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1; then
	ok ".deb built in $(($(date +%s) - start)) s"
else
	tail -n 80 "$work/build.log"
	mkdir -p "$root/build" && cp "$work/build.log" "$root/build/deb-build.log"
	bad "dpkg-buildpackage failed (last lines above; whole log in build/deb-build.log)"
	finish
fi
deb=$(ls "$work"/${pkg}_*.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || { bad "no ${pkg}_*.deb produced"; finish; }

# --- contents --------------------------------------------------------------------
files=$(dpkg-deb -c "$deb" | awk '{print $NF}' | sed 's,^\./,/,')
missing=""
# every install and upgrade script of sql/, and one that reaches the default
# version (its install script, or an update to it from an older one)
scripts=$(cd "$src/sql" && ls mms--*.sql | sed 's,^,/usr/share/postgresql/15/extension/,')
for f in /usr/lib/postgresql/15/lib/mms.so /usr/lib/postgresql/15/lib/mms_worker.so \
	/usr/lib/postgresql/15/bin/mms-gateway \
	/usr/share/postgresql/15/extension/mms.control $scripts \
	/usr/share/doc/$pkg/copyright /usr/share/doc/$pkg/README.md.gz; do
	grep -qxF "$f" <<<"$files" || missing+=" $f"
done
grep -qE "^/usr/share/postgresql/15/extension/mms--([0-9.]+--)?${ctl_version//./\\.}\.sql$" <<<"$files" ||
	missing+=" (a script reaching version $ctl_version)"
[ -z "$missing" ] && ok "package holds the libraries, control file, install and upgrade scripts, README and copyright" ||
	bad "package lacks:$missing"
extra=$(grep -E '/(build|test)/|mms-run|mms-bench|test_[a-z]+$|\.(a|o|bc)$' <<<"$files")
[ -z "$extra" ] && ok "package holds no build outputs or test binaries" || bad "package holds: $extra"
depends=$(dpkg-deb -f "$deb" Depends)
if grep -q 'postgresql-15' <<<"$depends" && grep -q 'libopenblas0' <<<"$depends" &&
	grep -q 'libmicrohttpd12' <<<"$depends" && grep -q 'libpq5' <<<"$depends"; then
	ok "Depends: $depends"
else
	bad "Depends lacks postgresql-15, libopenblas0, libmicrohttpd12 or libpq5: $depends"
fi

# --- install ---------------------------------------------------------------------
if dpkg -i "$deb" >"$work/dpkg.log" 2>&1; then
	ok "dpkg -i $(basename "$deb")"
else
	cat "$work/dpkg.log"
	bad "dpkg -i failed"
	finish
fi
# The files on disk are the package's (md5sums), so the cluster below runs them.
verify=$(dpkg --verify "$pkg" 2>&1)
[ -z "$verify" ] && ok "installed files match the package" || bad "dpkg --verify $pkg: $verify"
if ldd /usr/lib/postgresql/15/lib/mms_worker.so | grep -q 'libopenblas.so.0 => /'; then
	ok "mms_worker.so finds libopenblas.so.0"
else
	bad "mms_worker.so does not resolve libopenblas.so.0"
fi
if v=$(/usr/lib/postgresql/15/bin/mms-gateway --version 2>&1); then
	ok "the installed mms-gateway runs: $v"
else
	bad "the installed mms-gateway does not run: $v"
fi

# --- smoke test against a throwaway cluster -------------------------------------
. tools/pg-cluster.sh
trap 'cluster_cleanup; work_cleanup' EXIT
mkdir -p "$tmp/files"
cp test/fixtures/flan_gated.gguf "$tmp/files/"
chmod -R a+rX "$tmp/files"
if ! cluster_start; then
	bad "cluster did not start with the installed mms preloaded"
	finish
fi
pid=$(head -n 1 "$tmp/data/postmaster.pid")
if grep -q ' /usr/lib/postgresql/15/lib/mms\.so$' "/proc/$pid/maps"; then
	ok "postmaster preloaded /usr/lib/postgresql/15/lib/mms.so"
else
	bad "postmaster has not loaded /usr/lib/postgresql/15/lib/mms.so"
fi

q() { psql -X -q -t -A -v ON_ERROR_STOP=1 -d postgres -c "$1" 2>&1; }
out=$(q "CREATE EXTENSION mms; SELECT extversion FROM pg_extension WHERE extname = 'mms'")
[ "$out" = "$ctl_version" ] && ok "CREATE EXTENSION mms (version $out)" || bad "CREATE EXTENSION mms: $out"
out=$(q "SELECT mms_import('flan_gated', '$tmp/files/flan_gated.gguf')")
[ "$out" = 1 ] && ok "mms_import registered flan_gated version 1" || bad "mms_import: $out"
out=$(q "SELECT mms_generate('flan_gated', 'Hello, world!')")
if [ $? = 0 ] && [ -n "$out" ]; then
	ok "mms_generate returned ${#out} characters"
else
	bad "mms_generate: ${out:-empty result}"
fi
out=$(q "SELECT mms_tokenize('flan_gated', 'Hello, world!')")
if [ $? = 0 ] && [[ $out =~ ^\{[0-9]+(,[0-9]+)*\}$ ]]; then
	ok "mms_tokenize returned $out"
else
	bad "mms_tokenize: ${out:-empty result}"
fi

if as_server pg_ctl -D "$tmp/data" -m fast -w stop >/dev/null 2>&1; then
	ok "cluster stopped"
else
	bad "cluster did not stop"
fi
if grep -qE 'PANIC|server process .* was terminated|terminated by signal|TRAP:' "$tmp/server.log"; then
	grep -E 'PANIC|terminated|TRAP:' "$tmp/server.log"
	bad "server log shows a crash"
fi
finish
