#!/bin/sh
# make bench: benchmarks of kvtrace on this machine (never part of make test).
#
# Prints one table per measurement and a summary of the target ratios, all measured in
# this one run; writes bench/out/*.csv. Benchmark traces are generated on demand into
# bench/out/ by the capture tool's randomly initialised reference model (random weights
# are fine for speed) and reused by later runs when their spec is unchanged.
#
# Environment: BIN (built programs; bench programs in $BIN/bench), PYTHON (Debian's
# python3 with torch and h5py), BENCH_QUICK=1 (smaller sizes, for a smoke run; traces and
# CSV under bench/out/quick/), BENCH_LONG=0 (skip the long-context section, bench/long.sh)
# or BENCH_LONG=only (the machine lines, the long-context section and the summary only).
set -u
BIN=${BIN:?BIN must name the bin/ folder}
PYTHON=${PYTHON:-/usr/bin/python3}
case "$BIN" in /*) ;; *) BIN="$(pwd)/$BIN" ;; esac
QUICK=${BENCH_QUICK:-0}
LONG=${BENCH_LONG:-1}
case "$LONG" in 0|1|only) ;; *) echo "bench: BENCH_LONG must be 0, 1 or only (got '$LONG')" >&2; exit 1;; esac
OUT=bench/out
[ "$QUICK" = 1 ] && OUT=bench/out/quick      # keeps the full-size traces for the next run
mkdir -p "$OUT"
rm -f "$OUT"/*.csv
THREADS=$(nproc)
T0=$(date +%s)
export OMP_PROC_BIND=false

section() { printf '\n== %s ==\n' "$1"; }
elapsed() { echo $(( $(date +%s) - T0 )); }
die() { echo "bench: $*" >&2; exit 1; }

if grep -qw avx512f /proc/cpuinfo; then HAVE_AVX512=1; else HAVE_AVX512=0; fi

section "machine"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $THREADS logical cores"
echo "isa: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|f16c|avx512f)$' | tr '\n' ' ')"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (other jobs share this machine: timings are best-of-N)"

# ---- benchmark traces ------------------------------------------------------------------
# gen_trace NAME SEED T S CONFIG [CAPTURE_OPTS]: bench/out/NAME.h5 from ref-random:SEED:CONFIG
# with S sequences of T random byte tokens (BOS first), kvcapture given CAPTURE_OPTS too
# (e.g. --prompt-scores); reused when NAME.spec is unchanged.
gen_trace() {
    name=$1 seed=$2 T=$3 S=$4 cfg=$5 copts=${6:-}
    spec="ref-random:$seed:$cfg tokens=$T sequences=$S${copts:+ $copts}"
    h5="$OUT/$name.h5"
    if [ -f "$h5" ] && [ -f "$OUT/$name.spec" ] && [ "$(cat "$OUT/$name.spec")" = "$spec" ]; then
        echo "  $name: reusing $h5 ($spec)"
        return 0
    fi
    rm -f "$h5" "$OUT/$name.spec"
    "$PYTHON" -c "
import random, sys
r = random.Random($seed)
for s in range($S):
    print(' '.join(['256'] + [str(r.randrange(256)) for _ in range($T - 1)]))
" > "$OUT/$name.ids" || die "cannot write $OUT/$name.ids"
    t0=$(date +%s)
    "$PYTHON" capture/kvcapture.py --model "ref-random:$seed:$cfg" --ids "$OUT/$name.ids" \
        --tokens "$T" --sequences "$S" --batch 1 $copts -o "$h5" > "$OUT/$name.log" 2>&1 \
        || { cat "$OUT/$name.log"; die "capture of $name failed"; }
    secs=$(( $(date +%s) - t0 ))
    echo "$spec" > "$OUT/$name.spec"
    echo "  $name: captured in ${secs}s ($spec)"
    echo "$name,$secs,$T,$S,\"$cfg\"" >> "$OUT/captures.csv"
}

echo "name,capture_s,T,S,config" > "$OUT/captures.csv"
if [ "$LONG" != only ]; then
GPT2_CFG="n_layers=12,d_model=768,n_heads=12,n_kv_heads=12,head_dim=64,d_ff=3072,max_seq=8192"
# Llama-7B heads (32 q-heads x 128, 8 kv-heads); d_model/d_ff scaled down and 2 layers
# only, to keep the capture inside the time budget (the head shapes are what the replay sees).
LLAMA_CFG="n_layers=2,d_model=1024,n_heads=32,n_kv_heads=8,head_dim=128,d_ff=2816,max_seq=8192"
if [ "$QUICK" = 1 ]; then
    G_T=512; L_T=1024; KT_64="256,512,1024"; KT_128="256,512,1024"
else
    G_T=2048; L_T=4096; KT_64="1024,2048,4096,8192"; KT_128="1024,2048,4096,8192"
fi

section "benchmark traces (capture tool, reference model with random weights, on demand)"
gen_trace gpt2 11 "$G_T" 1 "$GPT2_CFG"
gen_trace llama 12 "$L_T" 1 "$LLAMA_CFG"
if [ ! -f "$OUT/gpt2_deflate.h5" ] || [ "$OUT/gpt2_deflate.h5" -ot "$OUT/gpt2.h5" ]; then
    h5repack -f SHUF -f GZIP=4 "$OUT/gpt2.h5" "$OUT/gpt2_deflate.h5" || die "h5repack failed"
    echo "  gpt2_deflate: h5repack -f SHUF -f GZIP=4 of gpt2.h5"
fi
ls -l "$OUT"/*.h5 | awk '{printf "  %-34s %8.1f MiB\n", $NF, $5/1048576}'

# ---- peak ------------------------------------------------------------------------------
section "fp32 peak (FMA micro-benchmark, bench/fma_peak.c)"
"$BIN/bench/fma_peak" --threads "$THREADS" --csv "$OUT/fma_peak.csv" || die "fma_peak failed"
PEAK1=$(awk -F, '$1=="peak" && $2==1 {print $3}' "$OUT/fma_peak.csv")

# ---- kernel vs peak vs sgemm -----------------------------------------------------------
section "attention kernel vs peak (roofline fraction)"
"$BIN/bench/bench_attn" kernel --trace "$OUT/gpt2.h5" --T "$KT_64" --peak "$PEAK1" \
    --tag gpt2 --csv "$OUT/kernel.csv" || die "bench_attn kernel failed"
"$BIN/bench/bench_attn" kernel --trace "$OUT/llama.h5" --T "$KT_128" --peak "$PEAK1" \
    --tag llama --csv "$OUT/kernel.csv" || die "bench_attn kernel failed"

section "BLAS sgemm of the same shapes"
"$BIN/bench/bench_attn" sgemm --D 64 --T "$KT_64" --tag default --csv "$OUT/sgemm.csv" || die "sgemm failed"
"$BIN/bench/bench_attn" sgemm --D 128 --T "$KT_128" --tag default --csv "$OUT/sgemm.csv" || die "sgemm failed"
if [ "$HAVE_AVX512" = 1 ]; then
    echo "(the same with OPENBLAS_CORETYPE=SkylakeX, this process only: the CPU has avx512f)"
    OPENBLAS_CORETYPE=SkylakeX "$BIN/bench/bench_attn" sgemm --D 128 --T "$KT_128" --tag SkylakeX \
        --csv "$OUT/sgemm.csv" || die "sgemm failed"
fi

# ---- OpenMP scaling --------------------------------------------------------------------
section "OpenMP scaling"
"$BIN/bench/bench_attn" omp --trace "$OUT/gpt2.h5" --threads "$THREADS" --tag gpt2 \
    --csv "$OUT/omp.csv" || die "bench_attn omp failed"

# ---- I/O -------------------------------------------------------------------------------
section "trace read throughput (libkvtrace, q/k/v of every head, warm page cache)"
"$BIN/bench/bench_io" read --trace "$OUT/gpt2.h5" --tag gpt2 --csv "$OUT/io_read.csv" || die "bench_io failed"
"$BIN/bench/bench_io" read --trace "$OUT/gpt2_deflate.h5" --tag gpt2 --csv "$OUT/io_read.csv" || die "bench_io failed"
section "f16 -> f32 conversion (lib/fp16.c)"
"$BIN/bench/bench_io" f16 --csv "$OUT/f16.csv" || die "bench_io f16 failed"

# ---- engine-dependent parts ------------------------------------------------------------
. bench/engine.sh
fi

# ---- long context (needs the engine too) -----------------------------------------------
if [ "$LONG" != 0 ]; then
    PROBE=$(mktemp -d "${TMPDIR:-/tmp}/kvprobe.XXXXXX")
    if "$BIN/kvreplay" run traces/sample.h5 --mode prefill --decode 64 --strategy full \
            -o "$PROBE/out" > "$PROBE/log" 2>&1; then
        . bench/long.sh
    else
        section "long context"
        echo "skipped: engine not available ($(tail -n 1 "$PROBE/log"))"
    fi
    rm -rf "$PROBE"
fi

section "summary (targets are reported, not asserted)"
"$PYTHON" bench/summary.py "$OUT" "$THREADS"
echo "total bench time: $(elapsed)s (including trace generation when it ran); CSV in $OUT/"
