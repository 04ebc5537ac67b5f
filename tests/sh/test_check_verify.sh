#!/bin/sh
# `kvreplay check` runs the attention and read-out verifications (replay/verify.c):
# a faithful trace passes (exit 0, both verifications reported ok); a trace with one
# attn_out element and one ref_lse moved by 0.05 fails (exit 1) and names both locations.
# The traces come from bin/tests/test_verify --write (fake model in double, stored in f16).
set -u
fail() { echo "FAIL: $*"; exit 1; }
[ -x "$BIN/tests/test_verify" ] || { echo "skip: $BIN/tests/test_verify not built"; exit 77; }
"$BIN/tests/test_verify" --write "$KV_TMP" || fail "test_verify --write"

"$BIN/kvreplay" check "$KV_TMP/verify_good.h5" > "$KV_TMP/good.out" 2> "$KV_TMP/good.err"
rc=$?
cat "$KV_TMP/good.out" "$KV_TMP/good.err"
[ $rc -eq 0 ] || fail "faithful trace: exit $rc, want 0"
grep -q "attn_out vs recomputed attention: .*: ok" "$KV_TMP/good.out" || fail "no attention verification line"
grep -q "read-out vs /readout/ref_\*: .*: ok" "$KV_TMP/good.out" || fail "no read-out verification line"

"$BIN/kvreplay" check --quiet "$KV_TMP/verify_bad.h5" > "$KV_TMP/bad.out" 2> "$KV_TMP/bad.err"
rc=$?
cat "$KV_TMP/bad.out" "$KV_TMP/bad.err"
[ $rc -eq 1 ] || fail "perturbed trace: exit $rc, want 1"
grep -q "attention check FAILED: 1 of .* at s=1 l=1 h=3 t=5 d=2" "$KV_TMP/bad.err" || fail "attention failure not located"
grep -q "read-out check FAILED: lse outside tolerance at 1 .* at s=0 t=11 " "$KV_TMP/bad.err" || fail "read-out failure not located"
echo "ok"
