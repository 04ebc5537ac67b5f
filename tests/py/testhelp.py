"""Tiny helpers shared by the Python tests (redis testhelp.h in spirit): named checks that
print ok/FAIL and collect failures, and a subprocess runner that stops the test when a
command that must succeed fails. Each test ends with `if failures: exit non-zero`.
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
