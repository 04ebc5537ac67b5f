#!/bin/sh
# kvreport reads results as untrusted input: only regular files, with a size
# cap (a symlink to /dev/zero or /dev/urandom, a FIFO, a 2 GiB sparse file are refused at
# once), every column in its documented domain (replay/RESULTS.md "Value domains"), refused
# with file:line and the column; duplicate rows refused; a missing per_head.csv handled (the
# report is written without per-head tables; under SAN no UBSan report).
set -u
K="$BIN/kvreport"
FIX="$KV_ROOT/tests/fixtures/results_small"
T="$KV_TMP"
fails=0
[ -x "$K" ] || { echo "FAIL: $K not built"; exit 1; }

# expect_fail NAME PATTERN CMD...: exits non-zero within 60 s (timeout only guards a hang),
# one stderr line matching PATTERN, no report directory
expect_fail() {
    name=$1; pat=$2; shift 2
    rm -rf "$T/rep"
    timeout 60 "$@" -o "$T/rep" --no-figures > "$T/out" 2> "$T/err"; rc=$?
    if [ $rc -eq 0 ]; then echo "FAIL $name: exit 0"; fails=$((fails + 1)); return; fi
    if [ $rc -eq 124 ]; then echo "FAIL $name: still running after 60 s"; fails=$((fails + 1)); return; fi
    if ! grep -q -- "$pat" "$T/err" || [ "$(wc -l < "$T/err")" -ne 1 ]; then
        echo "FAIL $name: stderr is not one line matching '$pat':"; cat "$T/err"; fails=$((fails + 1)); return
    fi
    [ -e "$T/rep" ] && { echo "FAIL $name: report written"; fails=$((fails + 1)); return; }
    echo "ok   $name: exit $rc: $(cat "$T/err")"
}
fresh() { rm -rf "$T/r"; cp -r "$FIX" "$T/r"; }
# setf FILE LINE COL VALUE: field COL (1-based) of line LINE of $T/r/FILE
setf() { awk -F, -v OFS=, -v l="$2" -v c="$3" -v v="$4" 'NR == l { $c = v } { print }' "$T/r/$1" > "$T/x" && mv "$T/x" "$T/r/$1"; }

# ---- not regular files, too large ----
fresh; rm "$T/r/per_seq.csv"; ln -s /dev/zero "$T/r/per_seq.csv"
expect_fail "per_seq.csv -> /dev/zero" "per_seq.csv: not a regular file" "$K" "$T/r"
fresh; rm "$T/r/per_seq.csv"; ln -s /dev/urandom "$T/r/per_seq.csv"
expect_fail "per_seq.csv -> /dev/urandom" "per_seq.csv: not a regular file" "$K" "$T/r"
fresh; rm "$T/r/per_seq.csv"; mkfifo "$T/r/per_seq.csv"
expect_fail "per_seq.csv a FIFO" "per_seq.csv: not a regular file" "$K" "$T/r"
fresh; rm "$T/r/provenance.json"; mkfifo "$T/r/provenance.json"
expect_fail "provenance.json a FIFO" "provenance.json: not a regular file" "$K" "$T/r"
fresh; truncate -s 2G "$T/r/per_head.csv"
expect_fail "per_head.csv 2 GiB" "per_head.csv: 2147483648 bytes, larger than the 1073741824-byte limit" "$K" "$T/r"
mkfifo "$T/gains.fifo"
expect_fail "--gains FIFO" "gains.fifo: not a regular file" "$K" "$FIX" --gains "$T/gains.fifo"
printf 'calibration,metric,gain_0,gain_1,trace_model,trace_sha256,mode\nkl_nnls,logit_kl,1,2,fixture-2L,%s,prefill\n' \
    "$(sed -n 's/.*"trace_sha256": "\([0-9a-f]*\)".*/\1/p' "$FIX/provenance.json")" > "$T/gains.csv"
fresh; mkfifo "$T/r/per_layer.csv"
expect_fail "per_layer.csv FIFO (--gains)" "per_layer.csv: not a regular file" "$K" "$T/r" --gains "$T/gains.csv"
fresh; rm "$T/r/per_seq.csv"; ln -s "$FIX/per_seq.csv" "$T/r/per_seq.csv"
if "$K" "$T/r" -o "$T/ok1" --no-figures 2> "$T/err"; then echo "ok   a symlink to a regular file is read"
else echo "FAIL symlink to a regular file refused:"; cat "$T/err"; fails=$((fails + 1)); fi

# ---- value domains (per_seq line 3 = config 0, sequence 1) ----
fresh; setf per_seq.csv 3 5 -1;    expect_fail "n_query -1"     "per_seq.csv:3: column n_query = -1 out of range \[0, 2147483647\]" "$K" "$T/r"
fresh; setf per_seq.csv 3 5 1e30;  expect_fail "n_query 1e30"   "per_seq.csv:3: column n_query = 1e30 out of range" "$K" "$T/r"
fresh; setf per_seq.csv 3 5 31.5;  expect_fail "n_query 31.5"   "per_seq.csv:3: column n_query = 31.5 is not a whole number" "$K" "$T/r"
fresh; setf per_seq.csv 3 4 -1;    expect_fail "seq -1"         "per_seq.csv:3: column seq = -1 out of range \[0, 2147483647\]" "$K" "$T/r"
fresh; setf per_seq.csv 3 19 -1;   expect_fail "logit_kl -1"    "per_seq.csv:3: column logit_kl = -1 out of range \[0, inf\]" "$K" "$T/r"
fresh; setf per_seq.csv 3 14 7;    expect_fail "attn_cos 7"     "per_seq.csv:3: column attn_cos = 7 out of range \[-1, 1\]" "$K" "$T/r"
fresh; setf per_seq.csv 3 6 1.5;   expect_fail "keep_frac 1.5"  "per_seq.csv:3: column keep_frac = 1.5 out of range \[0, 1\]" "$K" "$T/r"
fresh; setf per_seq.csv 3 7 -16;   expect_fail "kv_bytes -16"   "per_seq.csv:3: column kv_bytes = -16 out of range" "$K" "$T/r"
fresh; setf per_head.csv 2 3 100000; expect_fail "layer 100000" "per_head.csv:2: column layer = 100000 out of range \[0, 65535\]" "$K" "$T/r"
fresh; setf per_head.csv 2 3 7;    expect_fail "layer 7 of 2"   "per_head.csv: config 'full' has 8 (layer, head) rows, not the 8 x 4 of a full grid" "$K" "$T/r"
fresh; sed -i 's/"n_seq": 4,/"n_seq": 4, "n_layers": 2, "n_heads": 4,/' "$T/r/provenance.json"; setf per_head.csv 2 3 2
expect_fail "layer 2 with n_layers 2" "per_head.csv:2: column layer = 2 out of range \[0, 1\]" "$K" "$T/r"
fresh; setf per_head.csv 2 8 -1.5; expect_fail "per_head attn_cos" "per_head.csv:2: column attn_cos = -1.5 out of range \[-1, 1\]" "$K" "$T/r"
fresh; setf configs.csv 3 4 bogus; expect_fail "budget_kind"    "configs.csv:3: column budget_kind = 'bogus' is not keep, budget or none" "$K" "$T/r"
fresh; setf configs.csv 3 5 1.5;   expect_fail "keep 1.5"       "configs.csv:3: column budget_value = 1.5 out of range \[0, 1\]" "$K" "$T/r"
fresh; setf calib.csv 2 5 -3;      expect_fail "calib count"    "calib.csv:2: column count = -3 out of range" "$K" "$T/r"

# ---- duplicate rows ----
fresh; sed -n 3p "$T/r/per_seq.csv" >> "$T/r/per_seq.csv"
expect_fail "per_seq duplicate" "per_seq.csv:30: config 'full' sequence 1 appears twice" "$K" "$T/r"
fresh; sed -n 2p "$T/r/summary.csv" >> "$T/r/summary.csv"
expect_fail "summary duplicate" "summary.csv:9: config 'full' has a second row" "$K" "$T/r"
fresh; sed -n 2p "$T/r/calib.csv" >> "$T/r/calib.csv"
expect_fail "calib duplicate" "calib.csv:212: config 'full' full bin 0 has a second row" "$K" "$T/r"
fresh; sed -n 2p "$T/r/per_head.csv" >> "$T/r/per_head.csv"
expect_fail "per_head duplicate" "per_head.csv:58: (layer 0, head 0) repeated" "$K" "$T/r"
fresh; sed -n 2p "$T/r/configs.csv" >> "$T/r/configs.csv"
expect_fail "configs duplicate" "configs.csv:9: config_id 0 repeated" "$K" "$T/r"

# ---- missing per_head.csv: handled (no per-head tables), exit 0 ----
fresh; rm "$T/r/per_head.csv"
if "$K" "$T/r" -o "$T/nohead" --no-figures 2> "$T/err" && [ -s "$T/nohead/report.md" ] && ! grep -q "runtime error" "$T/err"; then
    echo "ok   missing per_head.csv: report written"
else echo "FAIL missing per_head.csv"; cat "$T/err"; fails=$((fails + 1)); fi

# the unmodified fixture still reads
"$K" "$FIX" -o "$T/base" --no-figures 2> "$T/err" && echo "ok   fixture accepted" || { echo "FAIL fixture refused"; cat "$T/err"; fails=$((fails + 1)); }

[ $fails -eq 0 ] && echo "all passed" || echo "$fails failed"
[ $fails -eq 0 ]
