#!/bin/sh
# Build of the libFuzzer harnesses that need replay/ code (sweep parser, results and parts
# readers):  fuzz/build.sh [OUTDIR]  -> OUTDIR/fuzz_sweep, OUTDIR/fuzz_results (default build-fuzz/)
# clang-14 -fsanitize=fuzzer,address,undefined over the sources each harness needs (replay/attn.c
# uses GCC-only vector builtins; lib/fp16.c's __builtin_cpu_supports("f16c") is refused by
# clang-14, so the scalar fp16 path is fuzzed). Called by `make fuzz`.
set -eu
cd "$(dirname "$0")/.."
OUT=${1:-build-fuzz}
mkdir -p "$OUT"
CC=${FUZZ_CC:-clang-14}
HDF5_CFLAGS=$(pkg-config --cflags hdf5 2>/dev/null || echo -I/usr/include/hdf5/serial)
HDF5_LIBS=$(pkg-config --libs hdf5 2>/dev/null || echo "-L/usr/lib/x86_64-linux-gnu/hdf5/serial -lhdf5")
FLAGS="-std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Ilib -Ireplay -Ianalysis $HDF5_CFLAGS"
LIBS="$HDF5_LIBS -lz -lgsl -lopenblas -lm"
LIBKV="$(ls lib/*.c | grep -v fp16) $OUT/fp16.o"
$CC $FLAGS -D'__builtin_cpu_supports(x)=0' -c -o "$OUT/fp16.o" lib/fp16.c
$CC $FLAGS -o "$OUT/fuzz_sweep" fuzz/fuzz_sweep.c replay/sweep.c replay/strategy.c replay/strategies/*.c $LIBKV $LIBS
if [ -f fuzz/fuzz_results.c ]; then
    $CC $FLAGS -o "$OUT/fuzz_results" fuzz/fuzz_results.c analysis/results.c analysis/labels.c replay/output.c replay/needle.c replay/readout.c \
        replay/sweep.c replay/strategy.c replay/strategies/*.c $LIBKV $LIBS
fi
