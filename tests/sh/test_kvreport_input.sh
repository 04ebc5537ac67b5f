#!/bin/sh
# kvreport on bad and merged input: empty results directory, wrong results_version, mixed
# traces without --allow-mixed, a baseline not in the results, gnuplot missing (clear
# message, tables still written, exit 0), a non-empty non-report output refused, a previous
# report replaced, shards merging to the single-directory statistics, the same config twice
# with different values refused.
set -u
K="$BIN/kvreport"
FIX="$KV_ROOT/tests/fixtures/results_small"
T="$KV_TMP"
PLOTS="--plots $KV_ROOT/plots"
fails=0
[ -x "$K" ] || { echo "FAIL: $K not built"; exit 1; }

# expect_fail NAME PATTERN CMD...: non-zero exit, one stderr line matching PATTERN, no report
expect_fail() {
    name=$1; pat=$2; shift 2
    "$@" > "$T/out" 2> "$T/err"; rc=$?
    if [ $rc -eq 0 ]; then echo "FAIL $name: exit 0"; fails=$((fails + 1)); return; fi
    if ! grep -q "$pat" "$T/err"; then
        echo "FAIL $name: stderr lacks '$pat':"; cat "$T/err"; fails=$((fails + 1)); return
    fi
    echo "ok   $name: exit $rc: $(head -n 1 "$T/err")"
}

mkdir -p "$T/empty"
expect_fail "empty results dir" "not a kvtrace results directory" "$K" "$T/empty" -o "$T/r0"
[ -e "$T/r0" ] && { echo "FAIL empty: report written"; fails=$((fails + 1)); }

cp -r "$FIX" "$T/v2"
sed -i 's/"results_version": 1/"results_version": 2/' "$T/v2/provenance.json"
expect_fail "results_version 2" "results_version 2 is not supported" "$K" "$T/v2" -o "$T/r1"

cp -r "$FIX" "$T/other"
sed -i 's/"trace_sha256": "3f3f/"trace_sha256": "aaaa/' "$T/other/provenance.json"
expect_fail "mixed traces" "allow-mixed" "$K" "$FIX" "$T/other" -o "$T/r2"
"$K" "$FIX" "$T/other" -o "$T/r2" --allow-mixed --no-figures 2> "$T/err" \
    && grep -q "Mixed traces" "$T/r2/report.md" && echo "ok   --allow-mixed accepted and reported" \
    || { echo "FAIL --allow-mixed"; cat "$T/err"; fails=$((fails + 1)); }

expect_fail "baseline absent" "is not a configuration in the results" "$K" "$FIX" -o "$T/r3" --baseline "h2o keep=0.1"
expect_fail "unknown metric" "unknown metric" "$K" "$FIX" -o "$T/r3" --metric bogus

cp -r "$FIX" "$T/nan"
sed -i '3s/,0,1,0,2.05,/,nan,1,0,2.05,/' "$T/nan/per_seq.csv"
expect_fail "NaN in per_seq" "not a finite number" "$K" "$T/nan" -o "$T/r3"

# gnuplot missing: one clear warning, tables written, exit 0, a note in report.md
PATH=/nonexistent "$K" "$FIX" -o "$T/r4" $PLOTS > "$T/out" 2> "$T/err"; rc=$?
if [ $rc -ne 0 ] || [ "$(grep -c 'gnuplot not found' "$T/err")" -ne 1 ] || [ ! -s "$T/r4/tables/summary.md" ] \
   || ! grep -q "gnuplot was not found" "$T/r4/report.md" || [ ! -s "$T/r4/figures/ranked.gp" ]; then
    echo "FAIL gnuplot missing (exit $rc)"; cat "$T/err"; fails=$((fails + 1))
else echo "ok   gnuplot missing: $(grep 'gnuplot not found' "$T/err")"; fi

# output directory: non-empty and not a report -> refused; a previous report -> replaced
mkdir -p "$T/keep" && echo precious > "$T/keep/file"
expect_fail "non-empty output" "refusing to replace" "$K" "$FIX" -o "$T/keep" --no-figures
[ "$(cat "$T/keep/file")" = precious ] || { echo "FAIL: existing file touched"; fails=$((fails + 1)); }
echo stale > "$T/r4/stale"
if "$K" "$FIX" -o "$T/r4" --no-figures 2> "$T/err" && [ ! -e "$T/r4/stale" ] && [ -s "$T/r4/report.md" ] \
   && [ -z "$(ls -a "$T" | grep '\.tmp\.')" ]; then echo "ok   previous report replaced, no temporary left"
else echo "FAIL replacing a previous report"; ls -a "$T" "$T/r4"; fails=$((fails + 1)); fi

# shards: split per_seq by sequence into two directories -> the same tables
for s in a b; do mkdir -p "$T/shard_$s"; cp "$FIX"/provenance.json "$FIX"/configs.csv "$FIX"/summary.csv "$FIX"/per_head.csv "$FIX"/calib.csv "$T/shard_$s/"; done
head -n 1 "$FIX/per_seq.csv" > "$T/shard_a/per_seq.csv"; cp "$T/shard_a/per_seq.csv" "$T/shard_b/per_seq.csv"
awk -F, 'NR > 1 && $4 < 2' "$FIX/per_seq.csv" >> "$T/shard_a/per_seq.csv"
awk -F, 'NR > 1 && $4 >= 2' "$FIX/per_seq.csv" >> "$T/shard_b/per_seq.csv"
"$K" "$FIX" -o "$T/one" --no-figures 2> /dev/null
if "$K" "$T/shard_a" "$T/shard_b" -o "$T/two" --no-figures 2> "$T/err" \
   && cmp -s "$T/one/tables/summary.csv" "$T/two/tables/summary.csv" \
   && cmp -s "$T/one/tables/stats.csv" "$T/two/tables/stats.csv" \
   && cmp -s "$T/one/tables/comparisons.csv" "$T/two/tables/comparisons.csv"; then echo "ok   two shards give the single directory's tables"
else echo "FAIL shard merge"; cat "$T/err"; diff "$T/one/tables/stats.csv" "$T/two/tables/stats.csv" | head; fails=$((fails + 1)); fi

# the same results twice: identical -> accepted; a differing value -> refused
cp -r "$FIX" "$T/copy"
"$K" "$FIX" "$T/copy" -o "$T/r5" --no-figures 2> "$T/err" && cmp -s "$T/one/tables/stats.csv" "$T/r5/tables/stats.csv" \
    && echo "ok   identical duplicate accepted" || { echo "FAIL identical duplicate"; cat "$T/err"; fails=$((fails + 1)); }
sed -i '3s/,2.05,2.05,/,2.05,2.06,/' "$T/copy/per_seq.csv"
expect_fail "same config twice, different" "differs from the row an earlier directory gave" "$K" "$FIX" "$T/copy" -o "$T/r6"

[ $fails -eq 0 ] || { echo "FAIL: $fails cases"; exit 1; }
echo "all input cases behave"
