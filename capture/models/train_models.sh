#!/bin/sh
# Train kvtrace's reference models with one recipe (4 and 8 layers, context 1024), resumable:
#
#   sh capture/models/train_models.sh [LAYERS ...]        (default: 4 8; make models)
#
# Work files (checkpoint, log, progress) go to $MODELS_WORK/l<L>/ (default models-work/,
# ignored by git); an interrupted run continues from its last checkpoint (every 250 steps)
# when started again. A finished model is installed as capture/models/ref<L>.pt with its
# training log (ref<L>.log) and its structure report (ref<L>.structure.txt,
# capture/structure.py on the wide and the letters alphabet). On a CPU with AVX-512, torch's
# OpenBLAS is told to use its SkylakeX kernels (Debian's OpenBLAS 0.3.21 takes such CPUs for
# Prescott: about 4x slower sgemm); set OPENBLAS_CORETYPE yourself to override. Runs at
# nice 19 with $MODELS_THREADS torch threads (default 2).
#
# The recipe (capture/models/probes/README.md says how it was found): 64-token windows of
# synthetic documents only (repeated random spans over 223 byte values, pools of 3 spans of
# 6-16 symbols; and planted facts) until step 2500, where an induction head forms; then
# 256-token windows, half synthetic, to step 3750 (retrieval of planted facts); then the full
# 1024-token context with 35% synthetic to step 4750; then half synthetic with facts documents
# weighted up (60% of the synthetic share, every fact queried) to step 6000: with 10% of the
# windows holding two queries each, the 1024-token phase had lost retrieval (0.81 -> 0 at
# distance 256 by step 4500; see probes/README.md). 4096 tokens per step, lr 1e-3, cosine
# over 6000 steps, stopped at step 5500 (the rate is then 1.16e-4 against the 1e-4 floor; the
# last 500 steps took 45 minutes on this machine's 2 shared cores). The 8-layer model: the same
# recipe with its last phase from step 4500 and stopped at step 5000 (rate 1.62e-4): its
# 1024-token phase ran at 5-9 s/step on the shared cores and the session had to end
# (probes/README.md). MODELS_SWITCH and MODELS_STOP override both for every model.
set -eu
cd "$(dirname "$0")/../.."
PY=${PYTHON:-/usr/bin/python3}
WORK=${MODELS_WORK:-models-work}
THREADS=${MODELS_THREADS:-2}
[ $# -gt 0 ] || set -- 4 8
if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
    OPENBLAS_CORETYPE=SkylakeX; export OPENBLAS_CORETYPE
fi
for L in "$@"; do
    case $L in *[!0-9]*|'') echo "train_models: '$L' is not a layer count" >&2; exit 2;; esac
    d=$WORK/l$L
    mkdir -p "$d"
    resume=
    [ -f "$d/ckpt" ] && resume=--resume
    case $L in 8) sw=4500 stop=5000;; *) sw=4750 stop=5500;; esac
    sw=${MODELS_SWITCH:-$sw} stop=${MODELS_STOP:-$stop}
    echo "train_models: $L layers -> $d (${resume:-new run}; last phase from step $sw, stop at $stop; progress in $d/train.out)"
    nice -n 19 "$PY" capture/train_ref.py --threads "$THREADS" --layers "$L" \
        --synth-schedule 1.0:2500,0.5:3750,0.35:$sw,0.5 --repeat-share 0.7:$sw,0.4 \
        --fact-queries 2:$sw,6 --repeat-alphabet wide \
        --repeat-span 6:16 --repeat-pool 3 --seq-schedule 64:2500,256:3750,1024 \
        --batch-tokens 4096 --lr 1e-3 --steps 6000 --stop-at "$stop" --eval-every 250 --probe-every 250 \
        --ckpt "$d/ckpt" $resume -o "$d/model.pt" --log "$d/train.log" >> "$d/train.out"
    for a in wide letters; do
        "$PY" capture/structure.py --model "$d/model.pt" --alphabet $a
    done > "$d/structure.tmp"
    mv "$d/structure.tmp" "$d/structure.txt"
    cp "$d/model.pt" capture/models/ref$L.pt.tmp && mv capture/models/ref$L.pt.tmp capture/models/ref$L.pt
    cp "$d/train.log" capture/models/ref$L.log
    cp "$d/structure.txt" capture/models/ref$L.structure.txt
    echo "train_models: installed capture/models/ref$L.pt (.log, .structure.txt)"
done
