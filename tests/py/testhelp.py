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


def run_units(args, threads, force_layers=False):
    """Run a kvreplay command that must succeed on `threads` threads with KVTRACE_DEBUG=units
    (and layer-items when force_layers); return the work items it reports, e.g.
    ["(sequence, layer, kv head)"] (one line per process)."""
    import os
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), KVTRACE_DEBUG="units,layer-items" if force_layers else "units")
    r = subprocess.run(args, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        print(r.stderr)
        raise SystemExit(f"command failed: {' '.join(args)}")
    return [x[len("kvtrace: work items: "):] for x in r.stderr.splitlines() if x.startswith("kvtrace: work items: ")]


def run_debug(args, word, prefix, xdg, timeout=None):
    """Run a command (any exit status) with KVTRACE_DEBUG=word, XDG_CACHE_HOME=xdg and the
    digest cache on (KVTRACE_HASH_CACHE unset). Returns (returncode, the non-empty stderr lines
    starting with prefix, the other non-empty stderr lines)."""
    import os
    env = dict(os.environ, KVTRACE_DEBUG=word, XDG_CACHE_HOME=xdg)
    env.pop("KVTRACE_HASH_CACHE", None)
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    lines = [x for x in r.stderr.splitlines() if x]
    return r.returncode, [x for x in lines if x.startswith(prefix)], [x for x in lines if not x.startswith(prefix)]


def csv_bytes(out):
    """{name: bytes} of the CSV files in directory out."""
    import os
    return {n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out)) if n.endswith(".csv")}


def write_ids(path, n_seq, T, seed):
    """A token-id file for capture/kvcapture.py --ids: n_seq lines of T ids, each 256 (the
    reference models' BOS) then T - 1 bytes drawn by numpy's default_rng(seed)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n_seq):
            f.write(" ".join(["256"] + [str(int(x)) for x in rng.integers(0, 256, T - 1)]) + "\n")
    return path


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
