#!/bin/bash
# The checks that need a GPU machine (CUDA, PyTorch, transformers; no network), in one run:
#   bash tests/gpu/run.sh OUTDIR
# 1. tests/py/test_capture_hf.py on the CPU (skipped on machines without transformers),
#    beside 2. and 3. (it uses CPU cores, they the GPU);
# 2. tests/gpu/hf_cuda.py: the Hugging Face capture/check/export/validate matrix on cuda, and the
#    tiny fixture traces (OUTDIR/fixtures);
# 3. a raw write-throughput probe (dd) and bench/gpu_capture.py: capture cost against the plain
#    forward at 1k-32k tokens (COST_TOKENS; COST_PROFILE=1 profiles the first capture).
# kvreplay: $BIN/kvreplay (default bin/; on a machine without HDF5/GSL/OpenBLAS, a pack made
# by tests/gpu/pack_kvreplay.sh). Logs and JSON lines in OUTDIR.
set -u
out=${1:?usage: tests/gpu/run.sh OUTDIR}
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
export PYTHON=${PYTHON:-$(command -v python3)} PYTHONUNBUFFERED=1 BIN=${BIN:-$root/bin}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PYTHON" -c 'import torch, transformers, h5py, numpy; print("torch", torch.__version__, "transformers", transformers.__version__, "h5py", h5py.__version__, "numpy", numpy.__version__)'
  "$BIN/kvreplay" --version; nproc; df -h /tmp | tail -1; } > "$out/env.txt" 2>&1
( cd "$root" && KV_ROOT=$root KV_TMP=$(mktemp -d) PYTHONPATH=tests/py OMP_NUM_THREADS=4 \
    timeout 400 "$PYTHON" tests/py/test_capture_hf.py > "$out/hf_cpu.log" 2>&1; echo "rc $?" >> "$out/hf_cpu.log" ) &
cpu=$!
w=$(mktemp -d)
timeout 220 "$PYTHON" "$root/tests/gpu/hf_cuda.py" "$w" --fixtures "$w/fixtures" > "$out/matrix.log" 2>&1
echo "rc $?" >> "$out/matrix.log"
cp "$w/matrix.jsonl" "$out/" 2>/dev/null
tar -C "$w" -czf "$out/fixtures.tgz" fixtures 2>/dev/null
dd if=/dev/zero of="$w/dd" bs=16M count=128 conv=fdatasync 2>&1 | tail -1 > "$out/cost.log"; rm -f "$w/dd"
timeout 150 "$PYTHON" "$root/bench/gpu_capture.py" "$w/cost" --deadline 80 --tokens "${COST_TOKENS:-1024,4096,16384,32768}" \
    ${COST_PROFILE:+--profile} >> "$out/cost.log" 2>&1
echo "rc $?" >> "$out/cost.log"
wait $cpu
