"""Numeric comparison of kvreplay CSV rows with a reference, shared by the golden tests.

Tolerances are per quantity: exact counts to the 9 significant digits the CSV
prints, attention metrics 2e-6 absolute, KLs 1e-7 + 1e-4 relative, NLLs 2e-5 relative,
top-1 and ECE (step functions of near-tied logits) 0.03. The worst element of each column
is kept so a passing run still reports how close it came.
"""

EXACT = ("n_query", "kv_bytes", "full_bytes", "ratio", "budget")
ATTN = ("keep_frac", "attn_cos", "out_cos", "out_rel_err", "mass_recall")
KL = ("attn_kl", "logit_kl")
NLL = ("nll_full", "nll_comp", "ppl_full", "ppl_comp")
LOOSE = ("top1_agree", "ece_full", "ece_comp")

worst = {}
fails = []


def tol(col, ref):
    if col in EXACT:
        return 1e-8 * max(1.0, abs(ref))        # the CSV prints 9 significant digits
    if col in ATTN:
        return 2e-6
    if col in KL:
        return 1e-7 + 1e-4 * abs(ref)
    if col in NLL:
        return 2e-5 * (1 + abs(ref))
    if col in LOOSE:
        return 0.03
    return None


def compare(where, got, ref):
    for col, rv in ref.items():
        t = tol(col, rv)
        if t is None:
            continue
        if got.get(col, "") == "":
            fails.append(f"{where}: {col} empty, reference {rv}")
            continue
        d = abs(float(got[col]) - rv)
        w = worst.get(col, (0.0, ""))
        if d / t > w[0]:
            worst[col] = (d / t, f"{where}: got {got[col]} ref {rv:.9g} |d| {d:.3g} tol {t:.3g}")
        if not d <= t:
            fails.append(f"{where}: {col} got {got[col]} ref {rv:.9g} (|d| {d:.3g} > {t:.3g})")


def finish(pass_msg):
    """Print the worst element of every column, then exit 1 with the first mismatches, or
    print pass_msg."""
    import sys
    for col, (ratio, msg) in sorted(worst.items()):
        print(f"worst {col}: {ratio:.3f} of tolerance — {msg}")
    if fails:
        print(f"FAIL: {len(fails)} mismatches; first ones:")
        for m in fails[:15]:
            print("  " + m)
        sys.exit(1)
    print(pass_msg)
