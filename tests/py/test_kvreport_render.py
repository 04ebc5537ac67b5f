"""kvreport with gnuplot: every generated script renders; PNGs are non-empty, of the size the
style sets (1200 x 800, read from the PNG IHDR chunk), and a PDF is written beside each.
Skips (77) when gnuplot is not installed."""
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

out = os.path.join(TMP, "report")
r = subprocess.run([PROG, os.path.join(ROOT, "tests", "fixtures", "results_small"), "-o", out,
                    "--plots", os.path.join(ROOT, "plots"), "--bootstrap", "200"],
                   capture_output=True, text=True)
print(r.stderr.strip())
if r.returncode != 0:
    print("FAIL: kvreport exited %d" % r.returncode)
    sys.exit(1)
fig = os.path.join(out, "figures")
scripts = sorted(f[:-3] for f in os.listdir(fig) if f.endswith(".gp"))
fails = []
if len(scripts) < 8:
    fails.append("only %d scripts: %s" % (len(scripts), scripts))
for stem in scripts:
    png, pdf = os.path.join(fig, stem + ".png"), os.path.join(fig, stem + ".pdf")
    if not os.path.exists(png) or os.path.getsize(png) < 2000:
        fails.append("%s.png missing or nearly empty" % stem)
        continue
    head = open(png, "rb").read(32)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        fails.append("%s.png is not a PNG" % stem)
        continue
    w, h = struct.unpack(">II", head[16:24])
    if (w, h) != (1200, 800):
        fails.append("%s.png is %dx%d, want 1200x800" % (stem, w, h))
    if not os.path.exists(pdf) or open(pdf, "rb").read(5) != b"%PDF-":
        fails.append("%s.pdf missing or not a PDF" % stem)
    if os.path.exists(os.path.join(fig, stem + ".log")):
        fails.append("%s: gnuplot left a log: %s" % (stem, open(os.path.join(fig, stem + ".log")).read()[:300]))
rep = open(os.path.join(out, "report.md")).read()
for stem in scripts:
    if "![%s](figures/%s.png)" % (stem, stem) not in rep:
        fails.append("report.md does not show %s.png" % stem)
if fails:
    print("\n".join(fails))
    sys.exit(1)
print("%d figures rendered as 1200x800 PNG + PDF" % len(scripts))
