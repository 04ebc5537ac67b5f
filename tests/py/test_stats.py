"""analysis/stats.c against scipy (independent reference), through `test_stats --cli`.

Checks: mean, sd, 95% t-interval (scipy.stats.t.interval), paired t-test
(scipy.stats.ttest_rel), Wilcoxon signed-rank exact and normal approximation with ties and
zeros (scipy.stats.wilcoxon, zero_method="wilcox", no continuity correction), Holm
adjustment (a direct Python transcription of Holm 1979) and the bootstrap interval
(re-drawn here with numpy's MT19937 seeded like gsl_rng_set, and GSL's uniform_int rule).
"""
import os
import subprocess
import sys
import warnings

try:
    import numpy as np
    import scipy
    from scipy import stats
except ImportError as e:  # pragma: no cover
    print("skip: numpy/scipy not available (%s)" % e)
    sys.exit(77)

BIN = os.environ.get("BIN", "bin")
PROG = os.path.join(BIN, "tests", "test_stats")
if not os.access(PROG, os.X_OK):
    print("FAIL: %s not built" % PROG)
    sys.exit(1)

worst = {}
fails = []


def close(what, got, want, rtol=1e-9, atol=1e-12):
    err = abs(got - want)
    lim = atol + rtol * abs(want)
    rel = err / lim if lim > 0 else (0 if err == 0 else float("inf"))
    if what not in worst or rel > worst[what][0]:
        worst[what] = (rel, got, want)
    if not err <= lim:
        fails.append("%s: got %.17g want %.17g" % (what, got, want))


def run(lines):
    out = subprocess.run([PROG, "--cli"], input="\n".join(lines) + "\n", capture_output=True,
                         text=True, check=True).stdout.strip().split("\n")
    assert len(out) == len(lines), (len(out), len(lines))
    return out


def fmt(v):
    return " ".join("%.17g" % x for x in v)


def wilcoxon(d, method):
    """scipy's wilcoxon; the keyword is `mode` before scipy 1.11 and `method` after."""
    kw = dict(zero_method="wilcox", correction=False, alternative="two-sided")
    try:
        return stats.wilcoxon(d, method=method, **kw)
    except TypeError:
        return stats.wilcoxon(d, mode=method, **kw)


warnings.simplefilter("ignore")  # scipy warns that n < 10 is small for the approximation
rng = np.random.default_rng(20240611)

# ---- descriptive statistics and t-intervals ------------------------------------------
samples = [rng.normal(0.9, 0.05, n) for n in (2, 3, 4, 7, 12, 30)]
samples.append(np.array([2.0, 4, 4, 4, 5, 5, 7, 9]))
samples.append(rng.exponential(1.0, 9) * 1e-4)
out = run(["describe " + fmt(s) for s in samples])
for s, line in zip(samples, out):
    f = [float(x) for x in line.split()]
    n = len(s)
    close("n", f[0], n, 0, 0)
    close("mean", f[1], float(np.mean(s)), 1e-13, 1e-300)
    close("sd", f[2], float(np.std(s, ddof=1)), 1e-12, 1e-300)
    close("min", f[3], float(np.min(s)), 0, 0)
    close("max", f[4], float(np.max(s)), 0, 0)
    lo, hi = stats.t.interval(0.95, n - 1, loc=np.mean(s), scale=stats.sem(s))
    # gsl_cdf_tdist_Pinv is accurate to about 1e-10 relative; scipy's to about 1e-15
    close("t_lo", f[5], lo, 1e-8, 1e-14 * abs(np.mean(s)))
    close("t_hi", f[6], hi, 1e-8, 1e-14 * abs(np.mean(s)))

# ---- paired t and Wilcoxon -------------------------------------------------------------
cases = []
# no ties, no zeros, n <= 25: exact
for n in (5, 6, 8, 10, 16, 25):
    y = rng.normal(1.0, 0.2, n)
    x = y + rng.normal(0.05, 0.1, n)
    cases.append((x, y, "exact"))
# n > 25: normal approximation
for n in (26, 40):
    y = rng.normal(1.0, 0.2, n)
    x = y + rng.normal(0.02, 0.1, n)
    cases.append((x, y, "approx"))
# ties and zeros (rounded data): normal approximation with the tie correction
for n in (8, 12, 30):
    y = np.round(rng.normal(3, 1, n))
    x = y + np.round(rng.normal(0.3, 1.2, n))
    cases.append((x, y, "approx"))
out = run(["paired %d %s %s" % (len(x), fmt(x), fmt(y)) for x, y, _ in cases])
for (x, y, method), line in zip(cases, out):
    f = line.split()
    mean_diff, t_def, t, p_t = float(f[0]), int(f[1]), float(f[2]), float(f[3])
    w_plus, w_minus, exact, z, p_w = float(f[4]), float(f[5]), int(f[6]), float(f[7]), float(f[8])
    dz_def, d_z, r_rb, n_nz = int(f[9]), float(f[10]), float(f[11]), int(f[12])
    d = x - y
    close("mean_diff", mean_diff, float(np.mean(d)), 1e-12, 1e-15)
    ref = stats.ttest_rel(x, y)
    assert t_def == 1
    close("paired t", t, float(ref.statistic), 1e-9)
    close("paired t p", p_t, float(ref.pvalue), 1e-8, 1e-15)
    nz = d[d != 0]
    has_ties = len(np.unique(np.abs(nz))) < len(nz)
    want_exact = len(nz) <= 25 and not has_ties
    if exact != int(want_exact) or (method == "exact") != want_exact:
        fails.append("wilcoxon method: exact=%d for n_nonzero=%d ties=%s (case %s)"
                     % (exact, len(nz), has_ties, method))
    ref_w = wilcoxon(d, method)
    ranks = stats.rankdata(np.abs(nz))
    close("W+", w_plus, float(ranks[nz > 0].sum()), 1e-14)
    close("W-", w_minus, float(ranks[nz < 0].sum()), 1e-14)
    close("W stat (min)", min(w_plus, w_minus), float(ref_w.statistic), 1e-14)
    close("wilcoxon p " + method, p_w, float(ref_w.pvalue), 1e-9, 1e-15)
    close("n_nonzero", n_nz, len(nz), 0, 0)
    close("d_z", d_z, float(np.mean(d) / np.std(d, ddof=1)), 1e-12)
    close("rank-biserial", r_rb, float((ranks[nz > 0].sum() - ranks[nz < 0].sum()) / ranks.sum()), 1e-13)

# ---- Holm ------------------------------------------------------------------------------


def holm_ref(p):
    m = len(p)
    order = sorted(range(m), key=lambda i: (p[i], i))
    adj = [0.0] * m
    run_max = 0.0
    for j, i in enumerate(order):
        run_max = max(run_max, min(1.0, (m - j) * p[i]))
        adj[i] = run_max
    return adj


holm_cases = [[0.01, 0.04, 0.03, 0.005], list(rng.uniform(0, 0.2, 13)), [0.2], [0.001, 0.001, 0.5]]
out = run(["holm " + fmt(p) for p in holm_cases])
for p, line in zip(holm_cases, out):
    for g, w in zip([float(v) for v in line.split()], holm_ref(p)):
        close("holm", g, w, 1e-14)

# ---- bootstrap: the same draws from an independent MT19937 ------------------------------


def gsl_uniform_int(bitgen, n):
    scale = 0xFFFFFFFF // n
    while True:
        k = int(bitgen.random_raw()) // scale
        if k < n:
            return k


def boot_ref(x, B, seed):
    bg = np.random.RandomState(seed)._bit_generator  # init_genrand(seed), as gsl_rng_set
    means = np.empty(B)
    for b in range(B):
        means[b] = sum(x[gsl_uniform_int(bg, len(x))] for _ in range(len(x))) / len(x)
    means.sort()
    return np.quantile(means, 0.025), np.quantile(means, 0.975)  # type 7, as GSL


bx = list(rng.normal(0.5, 0.1, 7))
out = run(["boot 12345 400 " + fmt(bx), "boot 99 250 " + fmt(bx[:4])])
for (seed, B, x), line in zip([(12345, 400, bx), (99, 250, bx[:4])], out):
    lo, hi = (float(v) for v in line.split())
    rlo, rhi = boot_ref(x, B, seed)
    close("bootstrap lo", lo, rlo, 1e-12)
    close("bootstrap hi", hi, rhi, 1e-12)

for k in sorted(worst):
    rel, g, w = worst[k]
    print("%-18s worst |err|/tol = %.3g (got %.17g want %.17g)" % (k, rel, g, w))
print("scipy %s" % scipy.__version__)
if fails:
    print("\n".join(fails))
    print("FAIL: %d mismatches" % len(fails))
    sys.exit(1)
print("all statistics match the references")
