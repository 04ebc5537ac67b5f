"""Tiny helpers shared by the Python tests (redis testhelp.h in spirit): named checks that
print ok/FAIL and collect failures, and a subprocess runner that stops the test when a
command that must succeed fails, and 1-based average ranks (ties share the mean of their
positions), the reference for every rank and Spearman check. Each test ends with
`if failures: exit non-zero`.
"""
import subprocess

failures = []


def check(cond, msg):
    print(("ok    " if cond else "FAIL  ") + msg)
    if not cond:
        failures.append(msg)


def sh(args, ok=True):
    r = subprocess.run(args, capture_output=True, text=True)
    if ok and r.returncode != 0:
        print(r.stdout, r.stderr)
        raise SystemExit(f"command failed: {' '.join(args)}")
    return r


def avg_ranks(x):
    """1-based ascending ranks of x, tied values sharing the mean of their positions."""
    import numpy as np
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        r[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return r
