#!/bin/bash
# Runs every unit-test binary in BUILD/test from the repository root.
# VALGRIND=1 runs each under valgrind (errors fail the run).
set -u
build=${1:-build}
cd "$(dirname "$0")/.."
fail=0; passed=0
for t in "$build"/test/test_*; do
	[ -x "$t" ] || continue
	if [ "${VALGRIND:-0}" = 1 ]; then
		cmd=(valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite "$t")
	else
		cmd=("$t")
	fi
	echo "== $t"
	if "${cmd[@]}"; then passed=$((passed+1)); else fail=$((fail+1)); echo "FAILED: $t"; fi
done
echo "$passed passed, $fail failed"
[ "$fail" = 0 ]
