#!/bin/sh
# fuzz/triage.sh HARNESS DIR [LIBFUZZER OPTIONS...] — replays every artifact make fuzz left in DIR (crash-*,
# timeout-*, oom-*, leak-*) once through HARNESS with FUZZ_CHILD=1 (the containment mode
# of fuzz/fuzz_trace.c: crashes and time-outs inside libhdf5 happen in a child, as in the
# tools, and do not count). Prints one line per finding and a summary; exits 1 when any
# artifact still fails (a finding: minimise it and add it to fuzz/regress/<name>/).
h=$1; d=$2; shift 2
n=0; bad=0
for f in "$d"/crash-* "$d"/timeout-* "$d"/oom-* "$d"/leak-*; do
    case "$f" in *.triage) continue ;; esac
    [ -f "$f" ] || continue
    n=$((n + 1))
    if ! FUZZ_CHILD=1 "$h" "$@" -timeout=120 "$f" > "$f.triage" 2>&1; then
        bad=$((bad + 1))
        echo "FINDING: $f (log: $f.triage)"
    fi
done
echo "triage: $n artifact(s) in $d, $((n - bad)) contained (inside libhdf5 or its limits), $bad finding(s)"
[ $bad -eq 0 ]
