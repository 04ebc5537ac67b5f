#!/bin/sh
# A sweep is checked against every evaluated sequence before any work: on
# traces/sample_qa.h5 (prompts of 151, 182, 107, 174, 108, 159 tokens) SnapKV and PyramidKV
# with window=100 at keep=0.7 (budget 75 on the 107-token prompt) and h2o budget=150 cannot run
# on sequences 2 and 4: kvreplay run names all three configurations and both sequences, one
# line each plus a summary, exits 1 and writes nothing (before: it ran sequences 0 and 1 and
# stopped at sequence 2 naming one). A sweep line that expands past RP_MAX_CONFIGS is refused
# before expansion.
set -u
T="$KV_TMP"
TRACE="$KV_ROOT/traces/sample_qa.h5"
fails=0
[ -f "$TRACE" ] || { echo "traces/sample_qa.h5 not found"; exit 77; }
"$BIN/kvreplay" run "$TRACE" --strategy full --strategy 'snapkv keep=0.7 window=100' --strategy 'pyramidkv keep=0.7 window=100' \
    --strategy 'snapkv keep=0.7 window=8' --strategy 'h2o budget=150' --threads 1 -o "$T/r" > "$T/out" 2> "$T/err"; rc=$?
cat "$T/err"
[ $rc -eq 1 ] || { echo "FAIL: exit $rc, expected 1"; fails=$((fails + 1)); }
[ "$(wc -l < "$T/err")" -eq 4 ] || { echo "FAIL: $(wc -l < "$T/err") stderr lines, expected 3 configurations + a summary"; fails=$((fails + 1)); }
for pat in "config 'snapkv keep=0.7 preset=snapkv window=100 .*infeasible on 2 of 6 sequence(s): snapkv: window=100 is not smaller than the budget 75.*sequence(s) 2 (107 entries), 4 (108 entries)" \
           "config 'pyramidkv keep=0.7 .*window=100 .*infeasible on 2 of 6 sequence(s): pyramidkv: window=100" \
           "config 'h2o budget=150 .*infeasible on 2 of 6 sequence(s): budget=150 larger than the sequence (107 prompt entries)" \
           "3 of 5 configuration(s) cannot run on every evaluated sequence; nothing was run"; do
    grep -q "$pat" "$T/err" || { echo "FAIL: stderr lacks: $pat"; fails=$((fails + 1)); }
done
grep -q "window=8 " "$T/err" && { echo "FAIL: the feasible window=8 configuration is listed"; fails=$((fails + 1)); }
[ -e "$T/r" ] && { echo "FAIL: $T/r was created"; fails=$((fails + 1)); }

# grid expansion bounded before any work: 64 x 64 x 5 = 20480 configurations
v=$(seq -s, 1 64)
"$BIN/kvreplay" run "$TRACE" --strategy "snapkv budget=$v window=$v kernel=1,3,5,7,9" -o "$T/r2" 2> "$T/err"; rc=$?
if [ $rc -ne 0 ] && grep -q "expands to more than 16384 configurations; a sweep holds at most 16384" "$T/err"; then
    echo "ok   $(cat "$T/err")"
else echo "FAIL expansion cap: exit $rc"; cat "$T/err"; fails=$((fails + 1)); fi
[ $fails -eq 0 ] && echo "all passed"
[ $fails -eq 0 ]
