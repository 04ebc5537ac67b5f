#!/bin/sh
# make install into a temporary PREFIX, then the README's cluster example from there, in a
# directory outside the repository: kvreplay run --sweep sweeps/default.sweep (the installed
# sweeps) on two shards, kvreplay merge, kvreport with the installed gnuplot templates; the
# installed kvcapture wrapper runs the installed Python modules; the docs are installed.
# Installs the programs of this build (BIN, BUILD, SAN, OMP as make test passes them): make
# finds them up to date and only copies.
set -u
T="$KV_TMP"
P="$T/prefix"
fails=0
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
command -v make > /dev/null 2>&1 || { echo "skipped: make not installed"; exit 77; }

set -- install PREFIX="$P" BIN="$BIN" OMP="${KV_OMP:-1}" SAN="${SAN:-}" PYTHON="${PYTHON:-/usr/bin/python3}"
[ -n "${BUILD:-}" ] && set -- "$@" BUILD="$BUILD"
(cd "$KV_ROOT" && make -s --no-print-directory "$@") > "$T/install.out" 2>&1 || { cat "$T/install.out"; echo "FAIL: make install"; exit 1; }

for f in bin/kvreplay bin/kvreport bin/kvcapture lib/libkvtrace.a include/kvtrace.h share/kvtrace/plots/style.gp \
         share/kvtrace/sweeps/default.sweep share/kvtrace/sweeps/README.md share/kvtrace/capture/kvcapture.py \
         share/kvtrace/capture/refmodel.py share/kvtrace/capture/ref_model.pt share/doc/kvtrace/README.md \
         share/doc/kvtrace/docs/METHODS.md share/doc/kvtrace/replay/RESULTS.md share/doc/kvtrace/traces/SCHEMA.md; do
    [ -f "$P/$f" ] || fail "not installed: $f"
done
[ -x "$P/bin/kvcapture" ] || fail "kvcapture is not executable"

# the README's cluster example, from the installed prefix, in a directory without sweeps/ or plots/
W="$T/work"
mkdir -p "$W/traces" && cp "$KV_ROOT/traces/sample.h5" "$W/traces/x.h5"
cd "$W" || exit 1
PATH="$P/bin:$PATH"; export PATH
for i in 0 1; do
    kvreplay run traces/x.h5 --sweep sweeps/default.sweep --threads 1 --seqs 0,1,2,3 --shard "$i/2" \
        -o "out/shard_$i" 2> "$T/run$i.err" || { cat "$T/run$i.err"; fail "kvreplay run shard $i"; }
done
grep -q "the installed $P/bin/../share/kvtrace/sweeps/default.sweep" "$T/run0.err" || fail "the installed sweep was not named: $(cat "$T/run0.err")"
kvreplay merge -o out/results out/shard_* 2> "$T/merge.err" || { cat "$T/merge.err"; fail "kvreplay merge"; }
n=$(($(wc -l < out/results/configs.csv) - 1))
kvreport out/results -o out/report --trace traces/x.h5 2> "$T/report.err" || { cat "$T/report.err"; fail "kvreport"; }
grep -q "templates (plots/) not found" "$T/report.err" && fail "kvreport did not find the installed plots/"
[ -f out/report/report.md ] && [ -f out/report/tables/pivot.tex ] || fail "report or pivot table missing"
ls out/report/figures/*.gp > /dev/null 2>&1 || fail "no figure scripts (plots/ templates not used)"
[ "$n" -ge 80 ] || fail "merged configs.csv has $n configurations, the default sweep has more than 80"
kvreport table out/results --pivot --format csv > /dev/null 2> "$T/table.err" || { cat "$T/table.err"; fail "kvreport table"; }

# kvcapture: the wrapper runs the installed kvcapture.py (its --help needs torch, h5py, numpy)
out=$(kvcapture --help 2>&1); rc=$?
if [ $rc -eq 0 ]; then
    echo "$out" | grep -q "usage" || fail "kvcapture --help printed no usage"
elif echo "$out" | grep -q "python3-"; then
    echo "note: kvcapture needs Python modules this interpreter lacks: $out"
else
    fail "kvcapture --help exited $rc: $out"
fi
KVTRACE_PYTHON=/nonexistent/python kvcapture --help > /dev/null 2>&1 && fail "KVTRACE_PYTHON is not used"

[ $fails -eq 0 ] || { echo "$fails failure(s)"; exit 1; }
echo "install: $n configurations replayed on 2 shards, merged and reported from $P"
