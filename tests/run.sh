#!/bin/sh
# kvtrace test runner (tiny on purpose). Runs, in order:
#   bin/tests/test_*        C unit tests (built from tests/unit/test_*.c)
#   tests/sh/test_*.sh      shell tests (end to end through the CLIs)
#   tests/py/test_*.py      Python tests (capture, independent numpy references)
# A test passes with exit 0, is skipped with exit 77 (it must print why), fails otherwise.
# Environment seen by every test: BIN (programs), PYTHON, KV_ROOT (repo root), KV_TMP (a
# fresh scratch directory per test, removed after a pass), SAN and KV_OMP (the build mode,
# from make: sanitizers, OpenMP 1/0).
# Prints one line per test and ends with "N passed, N failed, N skipped".
BIN=${BIN:-bin}
PYTHON=${PYTHON:-/usr/bin/python3}
KV_ROOT=$(pwd)
case "$BIN" in /*) ;; *) BIN="$KV_ROOT/$BIN" ;; esac
export BIN PYTHON KV_ROOT
pass=0; fail=0; skip=0; failed=""
scratch=$(mktemp -d "${TMPDIR:-/tmp}/kvtest.XXXXXX")
# kvreplay caches trace digests in $XDG_CACHE_HOME/kvtrace: keep the tests' out of $HOME
XDG_CACHE_HOME="$scratch/xdg-cache"; export XDG_CACHE_HOME
run_one() {
    name=$1; shift
    KV_TMP="$scratch/$(echo "$name" | tr '/' '_')"
    mkdir -p "$KV_TMP"; export KV_TMP
    start=$(date +%s)
    "$@" > "$KV_TMP/.log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    if [ $rc -eq 0 ]; then
        pass=$((pass + 1)); echo "PASS  $name (${secs}s)"; rm -rf "$KV_TMP"
    elif [ $rc -eq 77 ]; then
        skip=$((skip + 1)); echo "SKIP  $name: $(tail -n 1 "$KV_TMP/.log")"
    else
        fail=$((fail + 1)); failed="$failed $name"
        echo "FAIL  $name (exit $rc, ${secs}s); last lines:"; tail -n 25 "$KV_TMP/.log" | sed 's/^/      /'
    fi
}
for t in "$BIN"/tests/test_*; do
    [ -x "$t" ] || continue
    run_one "unit/$(basename "$t")" "$t"
done
for t in tests/sh/test_*.sh; do
    [ -f "$t" ] || continue
    run_one "sh/$(basename "$t")" sh "$t"
done
for t in tests/py/test_*.py; do
    [ -f "$t" ] || continue
    run_one "py/$(basename "$t")" "$PYTHON" "$t"
done
[ $fail -eq 0 ] && rmdir "$scratch" 2>/dev/null
[ -n "$failed" ] && echo "failed:$failed (logs under $scratch)"
echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ] && [ $pass -gt 0 ]
