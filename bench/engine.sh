# Sourced by bench/run.sh: the parts that need `kvreplay run` (fused sweep, OpenMP scaling
# of the replay, peak RSS, PyTorch reference). Each prints "skipped: engine not available"
# when a tiny run of the engine on traces/sample.h5 fails.
#
# Uses from run.sh: BIN, PYTHON, OUT, THREADS, QUICK, HAVE_AVX512, gen_trace, section, die.

ENGINE_TMP=$(mktemp -d "${TMPDIR:-/tmp}/kvbench.XXXXXX")
ENGINE=0
if "$BIN/kvreplay" run traces/sample.h5 --mode prefill --decode 64 --strategy full \
        -o "$ENGINE_TMP/probe" > "$ENGINE_TMP/probe.log" 2>&1 \
        && [ -f "$ENGINE_TMP/probe/summary.csv" ]; then
    ENGINE=1
fi

# rss_run TAG CSV [--env K=V ...] -- CMD: wall time + peak RSS of one child
rss_run() {
    tag=$1 csvf=$2; shift 2
    "$PYTHON" bench/rusage.py --quiet --csv "$csvf" --tag "$tag" "$@" 2> "$ENGINE_TMP/last.err"
    rc=$?
    if [ $rc -ne 0 ]; then
        sed 's/^/    /' "$ENGINE_TMP/last.err" | tail -n 5
        die "run '$tag' failed (exit $rc)"
    fi
}
last_wall() { tail -n 1 "$1" | cut -d, -f2; }

if [ "$ENGINE" = 1 ]; then
    if [ "$QUICK" = 1 ]; then SW_T=256; SW_S=1; SW_DEC=64; else SW_T=1024; SW_S=2; SW_DEC=256; fi
    SW_CFG="n_layers=4,d_model=768,n_heads=12,n_kv_heads=12,head_dim=64,d_ff=3072,max_seq=8192"
    echo
    echo "engine traces (GPT-2-small heads, 4 of 12 layers to fit the time budget):"
    gen_trace sweep 21 "$SW_T" "$SW_S" "$SW_CFG"
    SWEEP_TRACE="$OUT/sweep.h5"
    RUN="$BIN/kvreplay run"

    # ---- fused sweep ----------------------------------------------------------------------
    section "fused sweep: 20 configs in one kvreplay run vs 20 runs vs one full pass"
    echo "trace sweep.h5 (L=4, H=12, D=64, T=$SW_T, S=$SW_S), --mode prefill --decode $SW_DEC, $THREADS threads"
    # the lines the engine accepts, in order, up to 20 configurations
    : > "$ENGINE_TMP/fused.sweep"
    total=0 skipped=""
    while IFS= read -r line; do
        case "$line" in ''|'#'*) continue;; esac
        [ "$total" -ge 20 ] && break
        rm -rf "$ENGINE_TMP/chk"
        if $RUN "$SWEEP_TRACE" --mode prefill --decode "$SW_DEC" --strategy "$line" --seqs 0 \
                --no-readout -o "$ENGINE_TMP/chk" > /dev/null 2>&1; then
            c=$(($(wc -l < "$ENGINE_TMP/chk/configs.csv") - 1))
            if [ $((total + c)) -le 20 ]; then
                echo "$line" >> "$ENGINE_TMP/fused.sweep"; total=$((total + c))
            fi
        else
            skipped="$skipped '${line%% *}'"
        fi
    done < bench/fused20.sweep
    rm -rf "$ENGINE_TMP/chk"
    [ -n "$skipped" ] && echo "not accepted by kvreplay run (left out):$(echo "$skipped" | tr ' ' '\n' | sort -u | tr '\n' ' ')"
    echo "sweep used ($total configurations):"; sed 's/^/    /' "$ENGINE_TMP/fused.sweep"
    echo "what,n_configs,wall_s,maxrss_mb" > "$OUT/sweep.csv"
    : > "$ENGINE_TMP/t.csv"
    rss_run full "$ENGINE_TMP/t.csv" --env OMP_NUM_THREADS="$THREADS" -- $RUN "$SWEEP_TRACE" \
        --mode prefill --decode "$SW_DEC" --strategy full -o "$ENGINE_TMP/full"
    t_full=$(last_wall "$ENGINE_TMP/t.csv")
    rss_run fused "$ENGINE_TMP/t.csv" --env OMP_NUM_THREADS="$THREADS" -- $RUN "$SWEEP_TRACE" \
        --mode prefill --decode "$SW_DEC" --sweep "$ENGINE_TMP/fused.sweep" -o "$ENGINE_TMP/fused"
    t_fused=$(last_wall "$ENGINE_TMP/t.csv")
    n_cfg=$(($(wc -l < "$ENGINE_TMP/fused/configs.csv") - 1))
    t_sep=0
    i=0
    while IFS= read -r cfg; do
        i=$((i + 1))
        rss_run "sep$i" "$ENGINE_TMP/t.csv" --env OMP_NUM_THREADS="$THREADS" -- $RUN "$SWEEP_TRACE" \
            --mode prefill --decode "$SW_DEC" --strategy "$cfg" -o "$ENGINE_TMP/sep$i"
        t_sep=$(awk -v a="$t_sep" -v b="$(last_wall "$ENGINE_TMP/t.csv")" 'BEGIN{printf "%.4f", a + b}')
    done <<EOF
$(tail -n +2 "$ENGINE_TMP/fused/configs.csv" | cut -d, -f2)
EOF
    # the other reading of "one full-attention pass": causal attention of every token over
    # every earlier one (what the model computes), i.e. the online protocol's full pass
    rss_run fullall "$ENGINE_TMP/t.csv" --env OMP_NUM_THREADS="$THREADS" -- $RUN "$SWEEP_TRACE" \
        --mode online --decode "$SW_DEC" --strategy full -o "$ENGINE_TMP/fullall"
    t_all=$(last_wall "$ENGINE_TMP/t.csv")
    echo "full_all_tokens,1,$t_all," >> "$OUT/sweep.csv"
    echo "full,1,$t_full," >> "$OUT/sweep.csv"
    echo "fused,$n_cfg,$t_fused," >> "$OUT/sweep.csv"
    echo "separate,$i,$t_sep," >> "$OUT/sweep.csv"
    awk -v f="$t_full" -v u="$t_fused" -v s="$t_sep" -v n="$n_cfg" -v m="$i" 'BEGIN{
        printf "  %-40s %9.2f s  %6.2fx full\n", "one full-attention pass (--strategy full)", f, 1;
        printf "  %-40s %9.2f s  %6.2fx full\n", n " configs fused in one run", u, u / f;
        printf "  %-40s %9.2f s  %6.2fx full  (%.2fx the fused run)\n", m " separate runs", s, s / f, s / u }'
    awk -v a="$t_all" -v u="$t_fused" 'BEGIN{
        printf "  %-40s %9.2f s  fused = %.2fx this pass\n", "full attention over every token (online)", a, u / a }'
    echo "  (prefill protocol: --strategy full computes only the $SW_DEC evaluated rows; each configuration"
    echo "   attends over its kept prompt entries + the decode entries, so 19 configurations of mean keep"
    echo "   ~0.25 do several times the attention work of that pass: see bench/README.md)"

    # ---- OpenMP scaling of the replay ----------------------------------------------------
    section "OpenMP scaling of kvreplay run (the fused sweep)"
    echo "tag,threads,seconds,speedup,efficiency" > "$OUT/omp_replay.csv"
    rss_run omp1 "$ENGINE_TMP/t.csv" --env OMP_NUM_THREADS=1 -- $RUN "$SWEEP_TRACE" \
        --mode prefill --decode "$SW_DEC" --sweep "$ENGINE_TMP/fused.sweep" -o "$ENGINE_TMP/omp1"
    t1=$(last_wall "$ENGINE_TMP/t.csv")
    printf "  %7s %10s %8s %10s\n" threads seconds speedup efficiency
    awk -v t="$t1" 'BEGIN{printf "  %7d %10.2f %8.2f %9.1f%%\n", 1, t, 1, 100}'
    echo "fused$n_cfg,1,$t1,1,1" >> "$OUT/omp_replay.csv"
    if [ "$THREADS" -gt 1 ]; then
        awk -v t="$t1" -v u="$t_fused" -v n="$THREADS" -v c="$n_cfg" 'BEGIN{
            printf "  %7d %10.2f %8.2f %9.1f%%\n", n, u, t / u, 100 * t / u / n }'
        awk -v t="$t1" -v u="$t_fused" -v n="$THREADS" -v c="$n_cfg" 'BEGIN{
            printf "fused%d,%d,%.4f,%.4f,%.4f\n", c, n, u, t / u, t / u / n }' >> "$OUT/omp_replay.csv"
        if cmp -s "$ENGINE_TMP/omp1/summary.csv" "$ENGINE_TMP/fused/summary.csv"; then
            echo "  summary.csv of 1 and $THREADS threads: byte-identical"
        else
            echo "  summary.csv of 1 and $THREADS threads: DIFFER"
        fi
    fi

    # ---- peak RSS --------------------------------------------------------------------------
    section "peak RSS of kvreplay run vs configuration count, sequence length and layers"
    # (layers:tokens) pairs: T grows at fixed L, and L grows at fixed T
    if [ "$QUICK" = 1 ]; then RSS_LT="2:128 2:256 4:256 8:256"; else RSS_LT="2:512 2:1024 2:2048 4:2048 8:2048"; fi
    echo "trace,L,T,n_configs,trace_mib,kv_working_set_mib,wall_s,maxrss_mb" > "$OUT/rss.csv"
    head -n 5 "$ENGINE_TMP/fused.sweep" > "$ENGINE_TMP/five.sweep"
    for lt in $RSS_LT; do
        L=${lt%:*} T=${lt#*:}
        gen_trace "rss_L${L}_T$T" 31 "$T" 1 \
            "n_layers=$L,d_model=768,n_heads=12,n_kv_heads=12,head_dim=64,d_ff=3072,max_seq=8192" > /dev/null
    done
    echo "(--mode prefill --decode T/4; '1 head MiB' = f32 q, k, v of one (sequence, layer, kv head); $THREADS threads)"
    printf "  %-14s %2s %5s %7s %10s %11s %8s %12s\n" trace L T configs "trace MiB" "1 head MiB" "wall s" "peak RSS"
    for lt in $RSS_LT; do
        L=${lt%:*} T=${lt#*:}
        tr="$OUT/rss_L${L}_T$T.h5"
        for sw in full five fused; do
            case $sw in full) arg="--strategy full";; five) arg="--sweep $ENGINE_TMP/five.sweep";;
                        fused) arg="--sweep $ENGINE_TMP/fused.sweep";; esac
            : > "$ENGINE_TMP/r.csv"
            rss_run "rss" "$ENGINE_TMP/r.csv" --env OMP_NUM_THREADS="$THREADS" -- $RUN "$tr" \
                --mode prefill --decode $((T / 4)) $arg -o "$ENGINE_TMP/rss_$sw"
            nc=$(($(wc -l < "$ENGINE_TMP/rss_$sw/configs.csv") - 1))
            rm -rf "$ENGINE_TMP/rss_$sw"
            line=$(tail -n 1 "$ENGINE_TMP/r.csv")
            w=$(echo "$line" | cut -d, -f2); m=$(echo "$line" | cut -d, -f3)
            mib=$(awk -v f="$(stat -c %s "$tr")" 'BEGIN{printf "%.1f", f / 1048576}')
            ws=$(awk -v t="$T" 'BEGIN{printf "%.2f", 3 * t * 64 * 4 / 1048576}')
            printf "  %-14s %2d %5d %7d %10s %11s %8.2f %8s MiB\n" "rss_L${L}_T$T" "$L" "$T" "$nc" "$mib" "$ws" "$w" "$m"
            echo "rss_L${L}_T$T,$L,$T,$nc,$mib,$ws,$w,$m" >> "$OUT/rss.csv"
        done
    done

    # ---- PyTorch reference -----------------------------------------------------------------
    section "PyTorch peer (prefill: bench/torch_rows.py, online: bench/torch_ref.py) vs kvreplay run, same trace, sweep and threads"
    TORCH_ENV=""
    if [ "$HAVE_AVX512" = 1 ]; then
        TORCH_ENV="--env OPENBLAS_CORETYPE=SkylakeX"
        echo "(the PyTorch process runs with OPENBLAS_CORETYPE=SkylakeX: the CPU has avx512f)"
    fi
    echo "what,wall_s,note" > "$OUT/torch_ref.csv"
    t_kv=0; t_pt=0
    for mode in prefill online; do
        if [ $mode = prefill ]; then
            set -- full "streaming sinks=4 keep=0.25" "snapkv keep=0.25 window=32 kernel=7 pool=max" \
                   "quant kbits=4 vbits=4 group=32 residual=128"
            margs="--mode prefill --decode $SW_DEC"; pargs="--mode prefill --decode 64"
        else
            set -- full "streaming sinks=4 keep=0.25" "h2o keep=0.25" \
                   "quant kbits=2 vbits=2 group=32 residual=128"
            margs="--mode online"; pargs="$margs"
        fi
        : > "$ENGINE_TMP/$mode.sweep"
        sargs=""
        for c in "$@"; do
            # keep only configurations the engine accepts
            if $RUN traces/sample.h5 $pargs --strategy "$c" --seqs 0 -o "$ENGINE_TMP/chk" > /dev/null 2>&1; then
                echo "$c" >> "$ENGINE_TMP/$mode.sweep"
            else
                echo "  ($mode: '$c' not accepted by kvreplay run; left out of both)"
            fi
            rm -rf "$ENGINE_TMP/chk"
        done
        : > "$ENGINE_TMP/t.csv"
        rss_run "kv_$mode" "$ENGINE_TMP/t.csv" --env OMP_NUM_THREADS="$THREADS" -- $RUN "$SWEEP_TRACE" \
            $margs --sweep "$ENGINE_TMP/$mode.sweep" -o "$ENGINE_TMP/kv_$mode"
        tk=$(last_wall "$ENGINE_TMP/t.csv")
        set --
        while IFS= read -r c; do set -- "$@" --strategy "$c"; done < "$ENGINE_TMP/$mode.sweep"
        # prefill: the peer that computes the evaluated rows only (torch_rows.py); online
        # evaluates every row, so the whole-matrix reference is the peer there
        peer=bench/torch_ref.py; [ $mode = prefill ] && peer=bench/torch_rows.py
        rss_run "pt_$mode" "$ENGINE_TMP/t.csv" $TORCH_ENV -- "$PYTHON" "$peer" "$SWEEP_TRACE" \
            $margs "$@" --threads "$THREADS" -o "$ENGINE_TMP/pt_$mode.csv"
        tp=$(last_wall "$ENGINE_TMP/t.csv")
        printf "  %-8s %2d configs: kvreplay %7.2f s, PyTorch %7.2f s, ratio %5.1fx\n" "$mode" \
            "$(wc -l < "$ENGINE_TMP/$mode.sweep")" "$tk" "$tp" "$(awk -v a="$tp" -v b="$tk" 'BEGIN{print a / b}')"
        t_kv=$(awk -v a="$t_kv" -v b="$tk" 'BEGIN{printf "%.4f", a + b}')
        t_pt=$(awk -v a="$t_pt" -v b="$tp" 'BEGIN{printf "%.4f", a + b}')
    done
    note=""; [ "$HAVE_AVX512" = 1 ] && note="PyTorch with OPENBLAS_CORETYPE=SkylakeX"
    echo "kvreplay,$t_kv," >> "$OUT/torch_ref.csv"
    echo "torch,$t_pt,$note" >> "$OUT/torch_ref.csv"
    "$PYTHON" bench/agree.py "$ENGINE_TMP/kv_prefill/summary.csv" "$ENGINE_TMP/pt_prefill.csv" prefill \
        "$ENGINE_TMP/kv_online/summary.csv" "$ENGINE_TMP/pt_online.csv" online > "$OUT/torch_agree.csv" \
        || die "agreement check failed"
    echo "  agreement (max |kvreplay - PyTorch| over configurations, per summary metric):"
    "$PYTHON" -c "
import csv, sys
for r in csv.DictReader(open(sys.argv[1])):
    print('    %-14s %-8s %12s   (worst: %s)' % (r['metric'], r['mode'], '%.3g' % float(r['max_abs_diff']), r['worst_config']))
" "$OUT/torch_agree.csv"
else
    for what in "fused sweep: 20 configs in one kvreplay run vs 20 runs vs one full pass" \
                "OpenMP scaling of kvreplay run" \
                "peak RSS of kvreplay run vs configuration count, sequence length and layers" \
                "PyTorch peer (prefill: bench/torch_rows.py, online: bench/torch_ref.py) vs kvreplay run"; do
        section "$what"
        echo "skipped: engine not available ($(tail -n 1 "$ENGINE_TMP/probe.log"))"
    done
fi
rm -rf "$ENGINE_TMP"
