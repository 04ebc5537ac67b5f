# Sourced by bench/run.sh: the long-context section of make bench. Traces of growing
# length T (one sequence, Llama-like heads: 4 layers, 8 q-heads / 2 kv-heads, head_dim 128),
# replayed under the prefill protocol with a fixed number of evaluated rows (--decode), so
# that every cost that grows faster than T shows up in the growth exponent.
#
# The traces are captured with --prompt-scores (/prompt_scores): `h2o keep=0.25` alone and the
# fused sweep run once more with --prompt-scores trace (the whole prompt's attention scores
# from the capture, less the evaluated rows: linear in T) beside --prompt-scores recompute (a
# P^2/2 pass, given explicitly: kvreplay's default would take the trace's), and the two
# fused runs' CSVs must be identical (long_ps_identical.csv).
#
# Per T: `--strategy full`, the fused 20-configuration sweep, kvreplay vs the PyTorch peer
# (bench/torch_rows.py: evaluated rows only, blocked) on the same four configurations with
# their agreement, and 1 vs N threads on one configuration; at one T, each strategy family
# of sweeps/default.sweep alone. CPU and wall time and peak RSS of every run (bench/rusage.py).
# Tables and the target summary: bench/long_report.py; CSV: $OUT/long_*.csv.
#
# Uses from run.sh: BIN, PYTHON, OUT, THREADS, QUICK, HAVE_AVX512, gen_trace, section, die.
# Environment: BENCH_LONG_T (the T list), BENCH_LONG_DECODE, BENCH_LONG_STRAT_T (the T of the
# per-strategy runs; 0 skips them), BENCH_LONG_REPS (best-of-N of the runs that repeat: every
# run a ratio is taken of, so both sides are best-of-N, but the fused sweep recomputing prompt
# scores runs once above 4096 tokens), BENCH_LONG_OMP_REPS (the 1 vs N
# threads pair, best of 3),
# BENCH_LONG_FAMILIES (the families of the per-strategy runs, space separated; all when
# empty), BENCH_LONG_MARGINAL (1: each family's marginal cost beside the shared prompt pass,
# below; 0 skips it).
#
# Marginal cost of a family: wall of (full + SHARED_CFG + the family's configuration) minus
# wall of (full + SHARED_CFG), over the full pass's wall. The shared prompt scores
# (replay/shared.c) are computed once per (sequence, layer) whatever the number of
# configurations, so in a sweep a scorer that reads them pays only this difference; its
# standalone ratio charges the whole prompt pass to it.

LONG_CFG="n_layers=4,d_model=1024,n_heads=8,n_kv_heads=2,head_dim=128,d_ff=2048,max_seq=16384"
if [ "$QUICK" = 1 ]; then
    LT_DEF="512 1024"; LDEC_DEF=128; LSTRAT_DEF=1024
else
    LT_DEF="1024 2048 4096 8192 16384"; LDEC_DEF=256; LSTRAT_DEF=8192
fi
LONG_T=${BENCH_LONG_T:-$LT_DEF}
LONG_DEC=${BENCH_LONG_DECODE:-$LDEC_DEF}
LONG_STRAT_T=${BENCH_LONG_STRAT_T:-$LSTRAT_DEF}
LONG_REPS=${BENCH_LONG_REPS:-2}
# the 1 vs N threads runs: best of 3 (a 16k run is ~1 s on 1 thread, so one noisy run of the
# pair moves the efficiency by 10 points)
OMP_REPS=${BENCH_LONG_OMP_REPS:-3}
LONG_FAMILIES=${BENCH_LONG_FAMILIES:-}
LONG_MARGINAL=${BENCH_LONG_MARGINAL:-1}
# the configuration that computes the whole-prompt shared pass (column sums over every
# prompt row, like H2O): the base of the marginal costs
SHARED_CFG="h2o keep=0.25"
LONG_TMP=$(mktemp -d "${TMPDIR:-/tmp}/kvlong.XXXXXX")
# every run recomputes the prompt scores (the traces have /prompt_scores, which kvreplay's
# default, --prompt-scores auto, would serve) unless it says --prompt-scores trace later on
# its line (the last one given counts): h2o and fused measure the P^2/2 pass beside
# h2o_pstrace and fused_pstrace, and the per-strategy ratios stay those of the full cost
KV="$BIN/kvreplay run --prompt-scores recompute"
# the per-strategy runs (standalone and marginal) take the prompt scores as a user's run would:
# kvreplay's default (auto: the trace's /prompt_scores, which these traces have); set
# BENCH_LONG_STRAT_PS=recompute to charge each prompt-score family its P^2/2 pass instead
STRAT_PS="--prompt-scores ${BENCH_LONG_STRAT_PS:-auto}"
LENV=""        # extra rusage.py --env arguments for the next lrun only
# the peer's configurations (what bench/torch_rows.py implements), and the configuration
# of the 1 vs N threads measurement
PEER1="full"
PEER2="streaming sinks=4 keep=0.25"
PEER3="snapkv keep=0.25 window=32 kernel=7 pool=max"
PEER4="quant kbits=4 vbits=4 group=32 residual=128"
OMP_CFG="$PEER3"
TORCH_ENV=""
[ "$HAVE_AVX512" = 1 ] && TORCH_ENV="--env OPENBLAS_CORETYPE=SkylakeX"

# lrun TAG T THREADS REPS OUTDIR -- CMD...: best (lowest wall) of REPS runs of CMD, each
# with a fresh OUTDIR (removed before every run; CMD writes there); appends
# T,tag,threads,wall_s,cpu_s,maxrss_mb,reps to $OUT/long_runs.csv (maxrss: the largest of
# the runs) and leaves the last run's OUTDIR in place.
lrun() {
    tag=$1 T=$2 thr=$3 reps=$4 dir=$5; shift 6
    : > "$LONG_TMP/r.csv"
    i=0
    while [ "$i" -lt "$reps" ]; do
        rm -rf "$dir"
        "$PYTHON" bench/rusage.py --quiet --csv "$LONG_TMP/r.csv" --tag "$tag" \
            --env OMP_NUM_THREADS="$thr" $LENV -- "$@" 2> "$LONG_TMP/err"
        rc=$?
        if [ $rc -ne 0 ]; then
            sed 's/^/    /' "$LONG_TMP/err" | tail -n 5
            die "long-context run '$tag' at T=$T failed (exit $rc)"
        fi
        i=$((i + 1))
    done
    awk -F, -v T="$T" -v thr="$thr" -v reps="$reps" 'NR > 1 {
            if (best == "" || $2 < best) { best = $2; cpu = $5 }
            if ($3 > rss) rss = $3 }
        END { printf "%s,%s,%s,%s,%s,%s,%s\n", T, $1, thr, best, cpu, rss, reps }' \
        "$LONG_TMP/r.csv" >> "$OUT/long_runs.csv"
    LENV=""
}

section "long context: traces (4 layers, 8 q-heads / 2 kv-heads x 128, 1 sequence)"
for T in $LONG_T; do
    gen_trace "long_T$T" 7 "$T" 1 "$LONG_CFG" --prompt-scores
done
first_T=${LONG_T%% *}
last_T=${LONG_T##* }
echo "T list: $LONG_T; --mode prefill --decode $LONG_DEC; $THREADS threads unless stated"

# the fused sweep: bench/fused20.sweep's lines in order, as engine.sh takes them (up to 20
# configurations, lines kvreplay does not accept left out), chosen once on the smallest trace
: > "$LONG_TMP/fused.sweep"
total=0
while IFS= read -r line; do
    case "$line" in ''|'#'*) continue;; esac
    [ "$total" -ge 20 ] && break
    rm -rf "$LONG_TMP/chk"
    if $KV "$OUT/long_T$first_T.h5" --decode "$LONG_DEC" --strategy "$line" --no-readout \
            -o "$LONG_TMP/chk" > /dev/null 2>&1; then
        c=$(($(wc -l < "$LONG_TMP/chk/configs.csv") - 1))
        if [ $((total + c)) -le 20 ]; then echo "$line" >> "$LONG_TMP/fused.sweep"; total=$((total + c)); fi
    fi
done < bench/fused20.sweep
echo "fused sweep ($total configurations): $(tr '\n' ';' < "$LONG_TMP/fused.sweep" | sed 's/;$//; s/;/; /g')"

echo "T,tag,threads,wall_s,cpu_s,maxrss_mb,reps" > "$OUT/long_runs.csv"
echo "metric,T,max_abs_diff,worst_config" > "$OUT/long_agree.csv"
echo "T,threads,identical" > "$OUT/long_omp_identical.csv"
echo "T,identical" > "$OUT/long_ps_identical.csv"
echo "T,loadavg_1min" > "$OUT/long_load.csv"
# the machine's own ceiling for the 1 vs N threads efficiency: how much of one thread's read
# bandwidth each of N threads keeps when they read at once (bench/mem_scale.c)
"$BIN/bench/mem_scale" --threads "$THREADS" --csv "$OUT/long_memscale.csv" > "$LONG_TMP/memscale.txt" \
    || die "mem_scale failed"
for T in $LONG_T; do
    tr="$OUT/long_T$T.h5"
    echo "$T,$(cut -d' ' -f1 /proc/loadavg)" >> "$OUT/long_load.csv"
    printf '  T=%-6s' "$T"
    # reps: best-of-N, but the fused sweep recomputing prompt scores (P^2/2) once above 4096
    if [ "$T" -le 4096 ]; then big=$LONG_REPS; else big=1; fi

    lrun full "$T" "$THREADS" "$LONG_REPS" "$LONG_TMP/full" -- $KV "$tr" --decode "$LONG_DEC" \
        --strategy full --threads "$THREADS" -o "$LONG_TMP/full"
    printf ' full'
    lrun fused "$T" "$THREADS" "$big" "$LONG_TMP/fused" -- $KV "$tr" --decode "$LONG_DEC" \
        --sweep "$LONG_TMP/fused.sweep" --threads "$THREADS" -o "$LONG_TMP/fused"
    printf ' fused'
    # the prompt-score strategies with the scores recorded at capture, beside recomputed ones
    lrun h2o "$T" "$THREADS" "$LONG_REPS" "$LONG_TMP/h2o" -- $KV "$tr" --decode "$LONG_DEC" \
        --strategy "$SHARED_CFG" --threads "$THREADS" -o "$LONG_TMP/h2o"
    lrun h2o_pstrace "$T" "$THREADS" "$LONG_REPS" "$LONG_TMP/h2o" -- $KV "$tr" --decode "$LONG_DEC" \
        --strategy "$SHARED_CFG" --prompt-scores trace --threads "$THREADS" -o "$LONG_TMP/h2o"
    lrun fused_pstrace "$T" "$THREADS" "$LONG_REPS" "$LONG_TMP/fusedps" -- $KV "$tr" --decode "$LONG_DEC" \
        --sweep "$LONG_TMP/fused.sweep" --prompt-scores trace --threads "$THREADS" -o "$LONG_TMP/fusedps"
    # the same without the shared evaluation of eviction configurations (its A/B pair)
    lrun fused_pstrace_noshare "$T" "$THREADS" "$LONG_REPS" "$LONG_TMP/fusedns" -- $KV "$tr" --decode "$LONG_DEC" \
        --sweep "$LONG_TMP/fused.sweep" --prompt-scores trace --no-share --threads "$THREADS" -o "$LONG_TMP/fusedns"
    same=yes
    for f in summary.csv per_head.csv configs.csv; do
        cmp -s "$LONG_TMP/fused/$f" "$LONG_TMP/fusedps/$f" || same=no
    done
    echo "$T,$same" >> "$OUT/long_ps_identical.csv"
    printf ' prompt-scores'

    # kvreplay and the PyTorch peer on the same four configurations and threads
    lrun kv_peer "$T" "$THREADS" "$LONG_REPS" "$LONG_TMP/kvp" -- $KV "$tr" --decode "$LONG_DEC" \
        --strategy "$PEER1" --strategy "$PEER2" --strategy "$PEER3" --strategy "$PEER4" \
        --threads "$THREADS" -o "$LONG_TMP/kvp"
    LENV=$TORCH_ENV
    lrun torch_peer "$T" "$THREADS" 1 "$LONG_TMP/ptp" -- "$PYTHON" bench/torch_rows.py "$tr" \
        --decode "$LONG_DEC" --strategy "$PEER1" --strategy "$PEER2" --strategy "$PEER3" \
        --strategy "$PEER4" --threads "$THREADS" -o "$LONG_TMP/ptp.csv"
    # the peer's own time without the interpreter start and `import torch` (its last line)
    c=$(sed -n 's/^torch_rows: .* \([0-9.]*\)s$/\1/p' "$LONG_TMP/err" | tail -n 1)
    echo "$T,torch_peer_compute,$THREADS,$c,,,1" >> "$OUT/long_runs.csv"
    "$PYTHON" bench/agree.py "$LONG_TMP/kvp/summary.csv" "$LONG_TMP/ptp.csv" "$T" > "$LONG_TMP/agree.csv" \
        || die "agreement check at T=$T failed"
    tail -n +2 "$LONG_TMP/agree.csv" >> "$OUT/long_agree.csv"
    if [ "$T" = "$last_T" ] && [ "$THREADS" -gt 1 ]; then
        # the peer on one thread too: fine-grained OpenMP regions of PyTorch suffer most from
        # other jobs on a shared machine; the report shows both
        LENV=$TORCH_ENV
        lrun torch_peer1 "$T" 1 1 "$LONG_TMP/ptp1" -- "$PYTHON" bench/torch_rows.py "$tr" \
            --decode "$LONG_DEC" --strategy "$PEER1" --strategy "$PEER2" --strategy "$PEER3" \
            --strategy "$PEER4" --threads 1 -o "$LONG_TMP/ptp1.csv"
    fi
    printf ' peer'

    # 1 vs N threads on one configuration (results must be byte-identical)
    lrun omp1 "$T" 1 "$OMP_REPS" "$LONG_TMP/omp1" -- $KV "$tr" --decode "$LONG_DEC" \
        --strategy "$OMP_CFG" --threads 1 -o "$LONG_TMP/omp1"
    if [ "$THREADS" -gt 1 ]; then
        lrun ompN "$T" "$THREADS" "$OMP_REPS" "$LONG_TMP/ompN" -- $KV "$tr" --decode "$LONG_DEC" \
            --strategy "$OMP_CFG" --threads "$THREADS" -o "$LONG_TMP/ompN"
        same=no
        cmp -s "$LONG_TMP/omp1/summary.csv" "$LONG_TMP/ompN/summary.csv" \
            && cmp -s "$LONG_TMP/omp1/per_head.csv" "$LONG_TMP/ompN/per_head.csv" && same=yes
        echo "$T,$THREADS,$same" >> "$OUT/long_omp_identical.csv"
    fi
    printf ' threads'

    # every strategy family of the default sweep alone, at one T, relative to the full pass
    # on the same trace, and its marginal cost beside the shared pass (long_strategies.csv:
    # T,family,config,wall_s,cpu_s,maxrss_mb,full_wall_s,full_cpu_s,note,shared_wall_s,
    # shared_cpu_s,with_wall_s,with_cpu_s: shared = full + SHARED_CFG, with = full +
    # SHARED_CFG + the family, both on the family's trace; empty when BENCH_LONG_MARGINAL=0)
    if [ "$T" = "$LONG_STRAT_T" ]; then
        "$PYTHON" bench/families.py sweeps/default.sweep 0.25 > "$LONG_TMP/families.txt"
        base1=$(awk -F, -v T="$T" '$1 == T && $2 == "full" { print $4 "," $5 }' "$OUT/long_runs.csv")
        base2="" sbase1="" sbase2=""
        while IFS='	' read -r fam fcfg; do
            [ "$fam" = full ] && continue
            if [ -n "$LONG_FAMILIES" ]; then
                case " $LONG_FAMILIES " in *" $fam "*) ;; *) continue;; esac
            fi
            str=$tr sel="" base=$base1 note=""
            rm -rf "$LONG_TMP/chk"
            if ! $KV "$OUT/long_T$first_T.h5" --decode "$LONG_DEC" --strategy "$fcfg" --no-readout \
                    -o "$LONG_TMP/chk" < /dev/null > /dev/null 2> "$LONG_TMP/chk.err"; then
                if ! grep -q calibration "$LONG_TMP/chk.err"; then
                    echo "$T,$fam,$fcfg,,,,,,not accepted: $(tail -n 1 "$LONG_TMP/chk.err" | tr ',' ';'),,,," \
                        >> "$OUT/long_strategies.csv.part"
                    continue
                fi
                # a calibrating strategy needs a sequence it does not evaluate: a two-sequence
                # trace whose first sequence is long_T$T's, evaluated alone (--seqs 0)
                if [ -z "$base2" ]; then
                    gen_trace "long_T${T}_S2" 7 "$T" 2 "$LONG_CFG" > "$LONG_TMP/gen.log"
                    lrun full_s2 "$T" "$THREADS" "$LONG_REPS" "$LONG_TMP/st" -- $KV "$OUT/long_T${T}_S2.h5" \
                        --decode "$LONG_DEC" $STRAT_PS --seqs 0 --strategy full --threads "$THREADS" \
                        -o "$LONG_TMP/st" < /dev/null
                    base2=$(tail -n 1 "$OUT/long_runs.csv" | cut -d, -f4,5)
                fi
                str="$OUT/long_T${T}_S2.h5" sel="--seqs 0" base=$base2
                note="two-sequence trace: calibrates on the second; relative to full on that trace"
            fi
            lrun strategy "$T" "$THREADS" "$LONG_REPS" "$LONG_TMP/st" -- $KV "$str" --decode "$LONG_DEC" $STRAT_PS $sel \
                --strategy "$fcfg" --threads "$THREADS" -o "$LONG_TMP/st" < /dev/null
            one=$(tail -n 1 "$OUT/long_runs.csv" | cut -d, -f1,4-6)
            sed -i '$ d' "$OUT/long_runs.csv"
            marg=",,,"
            if [ "$LONG_MARGINAL" = 1 ]; then
                # the base (full + the shared pass) once per trace, best-of-N like the full pass
                if [ "$str" = "$tr" ] && [ -z "$sbase1" ]; then
                    lrun shared "$T" "$THREADS" "$LONG_REPS" "$LONG_TMP/sb" -- $KV "$str" --decode "$LONG_DEC" $STRAT_PS \
                        --strategy full --strategy "$SHARED_CFG" --threads "$THREADS" -o "$LONG_TMP/sb" < /dev/null
                    sbase1=$(tail -n 1 "$OUT/long_runs.csv" | cut -d, -f4,5)
                elif [ "$str" != "$tr" ] && [ -z "$sbase2" ]; then
                    lrun shared_s2 "$T" "$THREADS" "$LONG_REPS" "$LONG_TMP/sb" -- $KV "$str" --decode "$LONG_DEC" $STRAT_PS \
                        $sel --strategy full --strategy "$SHARED_CFG" --threads "$THREADS" -o "$LONG_TMP/sb" < /dev/null
                    sbase2=$(tail -n 1 "$OUT/long_runs.csv" | cut -d, -f4,5)
                fi
                if [ "$str" = "$tr" ]; then sb=$sbase1; else sb=$sbase2; fi
                # the family before SHARED_CFG: a family that also wants the row entropies
                # (entropy_merge) then computes the whole-prompt pass once with them, which
                # SHARED_CFG reuses; after h2o's pass without entropies it would redo it
                lrun with_shared "$T" "$THREADS" "$LONG_REPS" "$LONG_TMP/st" -- $KV "$str" --decode "$LONG_DEC" $STRAT_PS $sel \
                    --strategy full --strategy "$fcfg" --strategy "$SHARED_CFG" --threads "$THREADS" \
                    -o "$LONG_TMP/st" < /dev/null
                marg="$sb,$(tail -n 1 "$OUT/long_runs.csv" | cut -d, -f4,5)"
                sed -i '$ d' "$OUT/long_runs.csv"
            fi
            echo "$one" | awk -F, -v f="$fam" -v c="$fcfg" -v b="$base" -v nt="$note" -v m="$marg" \
                '{ printf "%s,%s,%s,%s,%s,%s,%s,%s,%s\n", $1, f, c, $2, $3, $4, b, nt, m }' \
                >> "$OUT/long_strategies.csv.part"
        done < "$LONG_TMP/families.txt"
        printf ' strategies'
    fi
    echo
done
{ echo "T,family,config,wall_s,cpu_s,maxrss_mb,full_wall_s,full_cpu_s,note,shared_wall_s,shared_cpu_s,with_wall_s,with_cpu_s"; cat "$OUT/long_strategies.csv.part" 2>/dev/null; } \
    > "$OUT/long_strategies.csv"
rm -f "$OUT/long_strategies.csv.part"
cp "$LONG_TMP/fused.sweep" "$OUT/long_fused.sweep"

"$PYTHON" bench/long_report.py "$OUT" "$THREADS" "$LONG_DEC" || die "long_report failed"
rm -rf "$LONG_TMP"
