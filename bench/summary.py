"""summary: the target ratios from one `make bench` run's CSVs, against the targets.

    python3 bench/summary.py OUTDIR THREADS

Targets are reported, never asserted. Writes OUTDIR/summary.csv (metric,value,target,met).
"""
import csv
import os
import sys


def rows(out, name):
    p = os.path.join(out, name)
    if not os.path.exists(p):
        return []
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def main(out, threads):
    res = []   # (metric, value text, target text, met: True/False/None, note)

    peak = {r["threads"]: float(r["gflops"]) for r in rows(out, "fma_peak.csv") if r["isa"] == "peak"}
    nofma = {r["threads"]: float(r["gflops"]) for r in rows(out, "fma_peak.csv") if r["isa"] == "avx2mul"}
    kern = rows(out, "kernel.csv")
    gemm = [r for r in rows(out, "sgemm.csv") if r["tag"] == "default"]
    for tag in sorted({r["tag"] for r in kern}):
        kr = [r for r in kern if r["tag"] == tag]
        last = max(kr, key=lambda r: int(r["T"]))
        frac = float(last["roofline_frac"])
        res.append((f"kernel {tag} D={last['D']} T={last['T']}: fraction of fp32 peak",
                    f"{100 * frac:.1f}% ({float(last['gflops']):.1f} of {float(last['peak_gflops']):.1f} GFLOP/s)",
                    ">= 50%", frac >= 0.5, ""))
        if "1" in nofma:
            res.append((f"kernel {tag}: fraction of the AVX2 mul+add (no FMA) ceiling",
                        f"{100 * float(last['gflops']) / nofma['1']:.1f}% of {nofma['1']:.1f} GFLOP/s", "", None, ""))
        g = [r for r in gemm if r["T"] == last["T"] and r["D"] == last["D"]]
        if g:
            res.append((f"kernel {tag} D={last['D']} T={last['T']}: rate vs OpenBLAS sgemm",
                        f"{float(last['gflops']) / float(g[0]['gflops']):.2f}x ({float(g[0]['gflops']):.1f} GFLOP/s sgemm, {g[0]['blas']})",
                        "", None, ""))

    for r in rows(out, "omp.csv"):
        if r["threads"] != "1":
            eff = float(r["efficiency"])
            res.append((f"OpenMP efficiency, kernel over {r['H']} heads ({r['tag']}), {r['threads']} threads",
                        f"{100 * eff:.1f}% (speedup {float(r['speedup']):.2f})", ">= 90%", eff >= 0.9, ""))
    for r in rows(out, "omp_replay.csv"):
        if r["threads"] != "1":
            eff = float(r["efficiency"])
            res.append((f"OpenMP efficiency, kvreplay run ({r['tag']}), {r['threads']} threads",
                        f"{100 * eff:.1f}% (speedup {float(r['speedup']):.2f})", ">= 90%", eff >= 0.9, ""))

    for r in rows(out, "io_read.csv"):
        if r["mode"] == "f16_to_f32":
            res.append((f"trace read ({r['tag']}, filters {r['filters']}), f16 read + converted",
                        f"{float(r['mb_per_s']):.0f} MB/s", "", None, ""))
    f16 = {r["path"]: float(r["mb_per_s"]) for r in rows(out, "f16.csv")}
    if "f16c" in f16 and "scalar" in f16:
        res.append(("f16 -> f32: F16C vs scalar", f"{f16['f16c']:.0f} vs {f16['scalar']:.0f} MB/s "
                    f"({f16['f16c'] / f16['scalar']:.1f}x)", "", None, ""))

    sw = {r["what"]: r for r in rows(out, "sweep.csv")}
    if "fused" in sw and "full" in sw:
        n = sw["fused"]["n_configs"]
        ratio = float(sw["fused"]["wall_s"]) / float(sw["full"]["wall_s"])
        res.append((f"fused sweep of {n} configs / one full-attention pass", f"{ratio:.2f}x",
                    "<= 3x", ratio <= 3.0, ""))
        if "separate" in sw:
            res.append((f"{n} separate runs / fused sweep",
                        f"{float(sw['separate']['wall_s']) / float(sw['fused']['wall_s']):.2f}x", "", None, ""))
    tr = {r["what"]: r for r in rows(out, "torch_ref.csv")}
    if "torch" in tr and "kvreplay" in tr:
        sp = float(tr["torch"]["wall_s"]) / float(tr["kvreplay"]["wall_s"])
        res.append(("kvreplay run vs PyTorch reference (same trace, sweep, threads)", f"{sp:.1f}x faster",
                    ">= 5x", sp >= 5.0, tr["torch"].get("note", "")))
    agree = rows(out, "torch_agree.csv")
    if agree:
        worst = max(agree, key=lambda r: float(r["max_abs_diff"]))
        res.append(("PyTorch vs kvreplay: worst max |diff| over metrics",
                    f"{float(worst['max_abs_diff']):.3g} ({worst['metric']})", "", None, ""))
    rss = rows(out, "rss.csv")
    if rss:
        by = {(int(r["L"]), int(r["T"]), int(r["n_configs"])): r for r in rss}
        Ls = sorted({k[0] for k in by})
        Ts = sorted({k[1] for k in by})
        Ns = sorted({k[2] for k in by})
        for T in Ts:      # more layers at the same T: trace grows L-fold, RSS should not
            ll = [L for L in Ls if (L, T, Ns[-1]) in by]
            if len(ll) > 1:   # L <= threads runs every layer at once: the plateau starts above it
                rs = [by[(L, T, Ns[-1])] for L in ll]
                res.append((f"peak RSS, {Ns[-1]} configs, T={T}: L=" + "/".join(str(L) for L in ll),
                            "/".join(f"{float(r['maxrss_mb']):.0f}" for r in rs) + " MiB (trace " +
                            "/".join(f"{float(r['trace_mib']):.0f}" for r in rs) + " MiB)",
                            "flat", None, ""))
        L0 = Ls[0]
        tl = [T for T in Ts if (L0, T, Ns[-1]) in by]
        if len(tl) > 1:
            a, b = by[(L0, tl[0], Ns[-1])], by[(L0, tl[-1], Ns[-1])]
            res.append((f"peak RSS, {Ns[-1]} configs, L={L0}: T={tl[-1]} vs T={tl[0]}",
                        f"{float(b['maxrss_mb']):.0f} vs {float(a['maxrss_mb']):.0f} MiB", "", None, ""))
        T0 = Ts[-1]
        nl = [N for N in Ns if (L0, T0, N) in by]
        if len(nl) > 1:
            a, b = by[(L0, T0, nl[0])], by[(L0, T0, nl[-1])]
            res.append((f"peak RSS, L={L0}, T={T0}: {nl[-1]} configs vs {nl[0]}",
                        f"{float(b['maxrss_mb']):.0f} vs {float(a['maxrss_mb']):.0f} MiB", "", None, ""))

    # the long-context section's targets (bench/long_report.py)
    for r in rows(out, "long_targets.csv"):
        met = {"yes": True, "NO": False}.get(r["met"])
        res.append((r["metric"], r["value"], r["target"], met, ""))

    w = max([len(r[0]) for r in res] + [10])
    print(f"{'metric':<{w}}  {'measured':<66} {'target':<8} met")
    with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
        cw = csv.writer(f)
        cw.writerow(["metric", "value", "target", "met"])
        for m, v, t, ok, note in res:
            mark = "" if ok is None else ("yes" if ok else "NO")
            print(f"{m:<{w}}  {v:<66} {t:<8} {mark}{('  ' + note) if note else ''}")
            cw.writerow([m, v, t, mark])
    print(f"(threads: {threads}; each ratio measured in this run)")
    nt = str(threads)
    if nt != "1" and "1" in peak and nt in peak and peak[nt] < 0.85 * int(nt) * peak["1"]:
        print(f"WARNING: the FMA peak on {nt} threads was only {peak[nt] / peak['1']:.2f}x the 1-thread "
              f"peak: other jobs held cores during this run, so {nt}-thread numbers (OpenMP "
              f"efficiency, fused/torch timings) understate this machine; re-run when it is idle")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: summary.py OUTDIR THREADS")
    main(sys.argv[1], sys.argv[2])
