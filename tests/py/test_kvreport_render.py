"""kvreport with gnuplot: every generated script renders; PNGs are non-empty, of the size the
script sets (read from the PNG IHDR chunk): 660 pixels wide (3.3 in at 200 dpi, one column)
by default and 1380 (6.9 in) with --figure-width two, the height the script's H_IN at 200 dpi;
a PDF is written beside each, of the same size in inches (its MediaBox). Skips (77) when
gnuplot is not installed."""
import re
import os
import shutil
import struct
import subprocess
import sys

BIN = os.environ.get("BIN", "bin")
ROOT = os.environ.get("KV_ROOT", os.getcwd())
TMP = os.environ.get("KV_TMP") or "/tmp/kvreport_render"
os.makedirs(TMP, exist_ok=True)
PROG = os.path.join(BIN, "kvreport")
if not os.access(PROG, os.X_OK):
    print("FAIL: %s not built" % PROG)
    sys.exit(1)
if not shutil.which("gnuplot"):
    print("skip: gnuplot not installed (Debian: gnuplot-nox)")
    sys.exit(77)

fails = []


def check(tag, extra, want_w):
    out = os.path.join(TMP, "report_" + tag)
    r = subprocess.run([PROG, os.path.join(ROOT, "tests", "fixtures", "results_small"), "-o", out,
                        "--plots", os.path.join(ROOT, "plots"), "--bootstrap", "200"] + extra,
                       capture_output=True, text=True)
    print(r.stderr.strip())
    if r.returncode != 0:
        fails.append("%s: kvreport exited %d" % (tag, r.returncode))
        return []
    fig = os.path.join(out, "figures")
    scripts = sorted(f[:-3] for f in os.listdir(fig) if f.endswith(".gp"))
    if len(scripts) < 9:
        fails.append("%s: only %d scripts: %s" % (tag, len(scripts), scripts))
    for stem in scripts:
        png, pdf = os.path.join(fig, stem + ".png"), os.path.join(fig, stem + ".pdf")
        gp = open(os.path.join(fig, stem + ".gp")).read()
        h_in = float(re.search(r"^KV_H = ([0-9.]+)$", gp, re.M).group(1))
        w_in = float(re.search(r"^KV_W = ([0-9.]+)$", gp, re.M).group(1))
        if not os.path.exists(png) or os.path.getsize(png) < 2000:
            fails.append("%s: %s.png missing or nearly empty" % (tag, stem))
            continue
        head = open(png, "rb").read(32)
        if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
            fails.append("%s: %s.png is not a PNG" % (tag, stem))
            continue
        w, h = struct.unpack(">II", head[16:24])
        if w != want_w or abs(w_in * 200 - w) > 0.5 or abs(h_in * 200 - h) > 0.5:
            fails.append("%s: %s.png is %dx%d, want %d x %.0f (%.4g x %.4g in at 200 dpi)"
                         % (tag, stem, w, h, want_w, h_in * 200, w_in, h_in))
        if not os.path.exists(pdf) or open(pdf, "rb").read(5) != b"%PDF-":
            fails.append("%s: %s.pdf missing or not a PDF" % (tag, stem))
        else:
            m = re.search(rb"/MediaBox \[ *0 +0 +([0-9.]+) +([0-9.]+) *\]", open(pdf, "rb").read())
            if not m or abs(float(m.group(1)) - w_in * 72) > 1 or abs(float(m.group(2)) - h_in * 72) > 1:
                fails.append("%s: %s.pdf MediaBox %s, want %.4g x %.4g in" % (tag, stem, m and m.groups(), w_in, h_in))
        if os.path.exists(os.path.join(fig, stem + ".log")):
            fails.append("%s: %s: gnuplot left a log: %s" % (tag, stem, open(os.path.join(fig, stem + ".log")).read()[:300]))
    rep = open(os.path.join(out, "report.md")).read()
    for stem in scripts:
        if "![%s](figures/%s.png)" % (stem, stem) not in rep:
            fails.append("%s: report.md does not show %s.png" % (tag, stem))
    return scripts


one = check("one", [], 660)
two = check("two", ["--figure-width", "two"], 1380)
if fails:
    print("\n".join(fails))
    sys.exit(1)
print("%d figures rendered as PNG (660 px = 3.3 in, 1380 px = 6.9 in wide) + PDF of the same size" % len(one))
