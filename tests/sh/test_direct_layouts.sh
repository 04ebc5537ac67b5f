#!/bin/sh
# The replay reads tensor rows by the direct chunk path (lib/trace_read.c: pread + zlib,
# outside the kvtrace_io lock) where the layout allows, else through H5Dread under the lock
# (replay/engine.c read_rows_f16). Both must give the same results: traces/sample.h5
# (shuffle + deflate: direct) repacked with no filter (direct, in-place reads), fletcher32
# and contiguous tensors (both H5Dread), each replayed at 1 and 2 threads (two strategies:
# one reading the last query rows, one every row; the first run of each file also runs the
# value scan); every summary.csv and per_head.csv must be byte-identical to sample.h5's
# 1-thread run.
set -u
T="$KV_TMP"
TRACE="$KV_ROOT/traces/sample.h5"
[ -f "$TRACE" ] || { echo "traces/sample.h5 not found"; exit 77; }
command -v h5repack > /dev/null || { echo "skipped: h5repack not installed (apt-get install hdf5-tools)"; exit 77; }
fails=0
TN=$(h5ls -r "$TRACE" | awk '$1 ~ /^\/layers\/[0-9]+\/(q|k|v|attn_out)$/ {print $1}' | paste -sd, -)
[ -n "$TN" ] || { echo "FAIL: no tensors listed in $TRACE"; exit 1; }
h5repack -f "$TN:NONE" "$TRACE" "$T/none.h5" && h5repack -f "$TN:FLET" "$TRACE" "$T/flet.h5" &&
    h5repack -l "$TN:CONTI" "$TRACE" "$T/conti.h5" || { echo "FAIL: h5repack"; exit 1; }
run() {  # run NAME FILE THREADS
    "$BIN/kvreplay" run "$2" --strategy 'snapkv keep=0.25 window=16' --strategy 'h2o keep=0.25' --seqs 0,1,2 \
        --decode 32 --threads "$3" -o "$T/$1" 2> "$T/err" || { echo "FAIL: kvreplay run $2 --threads $3"; cat "$T/err"; fails=$((fails + 1)); }
}
run ref "$TRACE" 1
for f in sample none flet conti; do
    file="$T/$f.h5"; [ $f = sample ] && file="$TRACE"
    for th in 1 2; do
        [ $f = sample ] && [ $th = 1 ] && continue
        run "$f$th" "$file" $th
        if cmp -s "$T/ref/summary.csv" "$T/$f$th/summary.csv" && cmp -s "$T/ref/per_head.csv" "$T/$f$th/per_head.csv"; then
            echo "ok   $f, $th thread(s): CSVs identical to sample.h5's"
        else
            echo "FAIL $f, $th thread(s): CSVs differ from sample.h5's"; fails=$((fails + 1))
        fi
    done
done
[ $fails -eq 0 ]
