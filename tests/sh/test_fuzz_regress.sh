#!/bin/sh
# Replays every input the fuzzers found so far (fuzz/regress/<name>/*) through the plain
# driver build of each harness (bin/fuzz/regress_<name>: fuzz/fuzz_<name>.c + fuzz/driver.c,
# built by make): each must run to completion (exit 0: rejected or read cleanly, crashes of
# libhdf5 itself contained in a child as in the tools) — never a crash, a sanitizer report
# (SAN builds) or a hang. Trace inputs also go through `kvreplay info` and `check`: exit 0
# or 1 with one line.
BIN=${BIN:-bin}
n=0; bad=0
for h in "$BIN"/fuzz/regress_*; do
    [ -x "$h" ] || continue
    name=${h##*/regress_}
    for f in fuzz/regress/"$name"/*; do
        [ -f "$f" ] || continue
        n=$((n + 1))
        if timeout 120 "$h" "$f" > "$KV_TMP/out" 2>&1; then
            echo "ok    $name $f"
        else
            rc=$?
            bad=$((bad + 1))
            echo "FAIL  $name $f (exit $rc)"; tail -n 20 "$KV_TMP/out"
        fi
        # traces: the tools themselves, through their validating child: 0 or 1, one line
        if [ "$name" = trace ]; then
            for cmd in info check; do
                timeout 120 "$BIN/kvreplay" $cmd "$f" > /dev/null 2> "$KV_TMP/err"
                rc=$?
                if [ $rc -gt 1 ] || [ $rc -eq 1 -a "$(wc -l < "$KV_TMP/err")" -ne 1 ]; then
                    bad=$((bad + 1))
                    echo "FAIL  kvreplay $cmd $f: exit $rc"; cat "$KV_TMP/err"
                fi
            done
        fi
    done
done
if [ $n -eq 0 ]; then echo "skip: no regression inputs or no bin/fuzz/regress_* programs"; exit 77; fi
echo "$n inputs, $bad failures"
[ $bad -eq 0 ]
