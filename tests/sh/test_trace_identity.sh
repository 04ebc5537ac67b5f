#!/bin/sh
# kvreport --trace T checks T against the results' provenance: a trace whose
# SHA-256 is not trace_sha256 is refused in one line; --force-trace accepts it and report.md
# says so; the right trace is accepted silently.
set -u
T="$KV_TMP"
TRACE="$KV_ROOT/traces/sample.h5"
OTHER="$KV_ROOT/traces/sample_qa.h5"
fails=0
[ -f "$TRACE" ] && [ -f "$OTHER" ] || { echo "traces/sample.h5 or sample_qa.h5 not found"; exit 77; }
"$BIN/kvreplay" run "$TRACE" --strategy full --strategy 'streaming keep=0.25' --seqs 0,1 --decode 32 --threads 1 \
    -o "$T/res" 2> "$T/err" || { echo "FAIL: kvreplay run"; cat "$T/err"; exit 1; }

"$BIN/kvreport" "$T/res" -o "$T/ok" --trace "$TRACE" --no-figures 2> "$T/err" \
    && ! grep -q "force-trace" "$T/ok/report.md" && echo "ok   the results' own trace accepted" \
    || { echo "FAIL own trace"; cat "$T/err"; fails=$((fails + 1)); }

"$BIN/kvreport" "$T/res" -o "$T/bad" --trace "$OTHER" --no-figures 2> "$T/err"; rc=$?
if [ $rc -ne 0 ] && [ "$(wc -l < "$T/err")" -eq 1 ] && grep -q "is not the trace of .*--force-trace" "$T/err" && [ ! -e "$T/bad" ]; then
    echo "ok   another trace refused: $(cat "$T/err")"
else echo "FAIL another trace: exit $rc"; cat "$T/err"; fails=$((fails + 1)); fi

"$BIN/kvreport" "$T/res" -o "$T/forced" --trace "$OTHER" --force-trace --no-figures 2> "$T/err"; rc=$?
if [ $rc -eq 0 ] && grep -q "WARNING: --force-trace: the --trace file .*sample_qa.h5" "$T/forced/report.md"; then
    echo "ok   --force-trace accepted and stated in report.md"
else echo "FAIL --force-trace: exit $rc"; cat "$T/err"; fails=$((fails + 1)); fi
[ $fails -eq 0 ]
