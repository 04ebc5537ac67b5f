#!/bin/sh
# Write errors are reported, not fatal signals: under `ulimit -f` (SIGXFSZ on a
# write past the limit) kvreplay run, kvreplay merge and kvreport print one line naming the file
# and errno's text ("File too large") and exit 1, instead of dying of SIGXFSZ with no message.
# Report directories get the mode of a new directory (0777 & ~umask), not mkdtemp's 0700.
set -u
T="$KV_TMP"
TRACE="$KV_ROOT/traces/sample.h5"
FIX="$KV_ROOT/tests/fixtures/results_small"
fails=0
[ -f "$TRACE" ] || { echo "traces/sample.h5 not found"; exit 77; }

# limited NAME BLOCKS CMD...: run CMD under ulimit -f BLOCKS (512-byte blocks in sh)
limited() {
    name=$1; blocks=$2; shift 2
    ( ulimit -f "$blocks" && exec "$@" ) > "$T/out" 2> "$T/err"; rc=$?
    if [ $rc -eq 1 ] && grep -q "File too large" "$T/err" && [ "$(wc -l < "$T/err")" -eq 1 ]; then
        echo "ok   $name: exit 1: $(cat "$T/err")"
    else
        echo "FAIL $name: exit $rc (128+25 = killed by SIGXFSZ), stderr:"; cat "$T/err"; fails=$((fails + 1))
    fi
}
limited "kvreplay run" 1 "$BIN/kvreplay" run "$TRACE" --strategy full --decode 32 --threads 1 -o "$T/r1"
for i in 0 1; do
    "$BIN/kvreplay" run "$TRACE" --strategy full --decode 32 --threads 1 --shard $i/2 -o "$T/sh$i" 2> /dev/null \
        || { echo "FAIL: shard run $i/2"; fails=$((fails + 1)); }
done
limited "kvreplay merge" 1 "$BIN/kvreplay" merge -o "$T/m" "$T/sh0" "$T/sh1"
limited "kvreport" 8 "$BIN/kvreport" "$FIX" -o "$T/rep" --no-figures
[ -e "$T/rep" ] && { echo "FAIL kvreport: a report was left after the write error"; fails=$((fails + 1)); }

# report directory mode
for um in 022 027; do
    rm -rf "$T/rep_$um"
    ( umask $um && exec "$BIN/kvreport" "$FIX" -o "$T/rep_$um" --no-figures ) 2> "$T/err"
    want=$(printf '%o' $((0777 & ~0$um)))
    got=$(stat -c %a "$T/rep_$um" 2> /dev/null)
    [ "$got" = "$want" ] && echo "ok   umask $um: report directory mode $got" \
        || { echo "FAIL umask $um: report directory mode '$got', expected $want"; cat "$T/err"; fails=$((fails + 1)); }
done
[ $fails -eq 0 ] && echo "all passed" || echo "$fails failed"
[ $fails -eq 0 ]
