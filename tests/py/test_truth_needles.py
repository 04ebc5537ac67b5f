"""True needle answer accuracy (kvcapture validate on a needle trace; truth.h5 /needles) against
an independent float64 numpy forward of the shipped reference model, and kvreport --truth's
needle table against needles.csv and truth.h5.

The trace: capture/make_needles.py contexts (100 and 160 bytes, depths 0.1, 0.5, 0.9) whose
answer is replaced by the model's own greedy 5-byte continuation, computed here in float64 (the
small model does not retrieve; with its own continuation as answer the full cache scores 1, so
a compressed state has something to lose). Cache states, all eviction (masks only): full;
StreamingLLM with 4 sinks and a 12-entry window, whose kept prompt positions are built here by
hand ([0, 4) and [P - 12, P): it evicts every needle not at the end of the context) and must
equal the export's; knorm and snapkv as exported. Reference: numpy float64 forward from the
checkpoint's weights and the trace's own RoPE tables; decode rows t >= P see the kept prompt
positions and [P, t], earlier rows are causal. Answer accuracy = share of the answer tokens
whose top-1 is the true token at t = answer_start - 1 .. answer_end - 2.
Under the online protocol (streaming with a 40-entry budget, every row under the eviction masks
evict_at of the export) the same comparison, the reference applying j <= t < evict_at[j].
Tolerance: validate runs the model in float32 (logits within ~1e-5 of float64 here); a top-1
may differ only where the reference's top-2 logits lie within 1e-3, counted as either.
"""
import csv
import json
import os
import re
import subprocess
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture_ref import PY, ROOT, run_capture, tmpdir  # noqa: E402
from testhelp import check, failures, sh  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "capture"))
import refmodel  # noqa: E402

BIN = os.environ.get("BIN", os.path.join(ROOT, "bin"))
KVREPLAY, KVREPORT = os.path.join(BIN, "kvreplay"), os.path.join(BIN, "kvreport")
if not os.access(KVREPLAY, os.X_OK):
    print(f"skip: {KVREPLAY} not built")
    sys.exit(77)
TMP = tmpdir()
CK = os.path.join(ROOT, "capture", "ref_model.pt")
model = refmodel.load_model(CK)
W = {k: v.double().numpy() for k, v in model.state_dict().items()}
cfg = model.cfg
L, H, HKV, D, EPS = cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.norm_eps
G = H // HKV
BOS = refmodel.BOS_ID
COS = SIN = None        # the trace's RoPE tables, once captured


def rms(x, w):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * w


def rope(x, n, cos, sin):
    half = D // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos[:n] + rot * sin[:n]


def forward(ids, P=None, kept=None, cos=None, sin=None, evict_at=None):
    """float64 logits [n, V]; kept[l][g]: prompt positions rows t >= P see (with [P, t]);
    evict_at[l][g][j] (online protocol): every row t sees key j iff j <= t < evict_at[l][g][j]."""
    n = len(ids)
    if cos is None:     # before capture: the model's own tables (greedy answers only)
        c, s_ = refmodel.rope_tables(n, D, cfg.rope_theta)
        cos, sin = c.double().numpy(), s_.double().numpy()
    x = W["embed.weight"][np.asarray(ids)]
    causal = np.tril(np.ones((n, n), dtype=bool))
    for l in range(L):
        p = f"blocks.{l}."
        h = rms(x, W[p + "attn_norm.weight"])
        q = rope((h @ W[p + "attn.q_proj.weight"].T).reshape(n, H, D).transpose(1, 0, 2), n, cos, sin)
        k = rope((h @ W[p + "attn.k_proj.weight"].T).reshape(n, HKV, D).transpose(1, 0, 2), n, cos, sin)
        v = (h @ W[p + "attn.v_proj.weight"].T).reshape(n, HKV, D).transpose(1, 0, 2)
        o = np.zeros((n, H, D))
        for hh in range(H):
            g = hh // G
            vis = causal.copy()
            if kept is not None:
                vis[P:, :P] = False
                vis[P:, kept[l][g]] = True
            if evict_at is not None:
                vis &= np.arange(n)[:, None] < np.asarray(evict_at[l][g])[None, :]
            sc = np.where(vis, q[hh] @ k[g].T / np.sqrt(D), -np.inf)
            pr = np.exp(sc - sc.max(1, keepdims=True))
            o[:, hh] = (pr / pr.sum(1, keepdims=True)) @ v[g]
        x = x + o.reshape(n, H * D) @ W[p + "attn.o_proj.weight"].T
        hm = rms(x, W[p + "mlp_norm.weight"])
        gate = hm @ W[p + "mlp.gate.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (hm @ W[p + "mlp.up.weight"].T)) @ W[p + "mlp.down.weight"].T
    return rms(x, W["norm.weight"]) @ W["lm_head.weight"].T


# ---- the trace: make_needles records, answers = the model's greedy continuation -----------------
TEXT = os.path.join(TMP, "filler.txt")
with open(TEXT, "w") as f:
    f.write("and it came to pass in those days that the people went up to the city. " * 60)
JL0, JL = os.path.join(TMP, "n0.jsonl"), os.path.join(TMP, "n.jsonl")
subprocess.run([PY, os.path.join(ROOT, "capture", "make_needles.py"), "--lengths", "100,160", "--depths", "0.1,0.5,0.9",
                "--text", TEXT, "-o", JL0], check=True, capture_output=True)
recs = [json.loads(x) for x in open(JL0)]
for r in recs:
    ids = [BOS] + list((r["context"] + r["question"]).encode())
    for _ in range(5):
        ids.append(int(forward(ids)[-1].argmax()))
    ans = bytes(ids[-5:])
    check(max(ans) < 128, f"greedy answer {ans!r} is ASCII (a JSON string of those bytes)")
    r["answer"] = ans.decode("ascii")
with open(JL, "w") as f:
    for r in recs:
        f.write(json.dumps(r) + "\n")
TR = os.path.join(TMP, "needles.h5")
run_capture(["--model", "ref:" + CK, "--jsonl", JL, "--tokens", "173", "--sequences", str(len(recs)), "-o", TR])

CONFIGS = ["full", "streaming budget=16 sinks=4", "knorm keep=0.5", "snapkv keep=0.25 window=8"]
RES, EXP, TRUTH = os.path.join(TMP, "res"), os.path.join(TMP, "exp.h5"), os.path.join(TMP, "truth.h5")
args = [KVREPLAY, "run", TR, "-o", RES, "--export", EXP, "--threads", "1", "--quiet"]
for c in CONFIGS:
    args += ["--strategy", c]
sh(args)
sh([PY, os.path.join(ROOT, "capture", "kvcapture.py"), "validate", "--model", "ref:" + CK, "--trace", TR, "--export",
    EXP, "-o", TRUTH])

with h5py.File(TR, "r") as f:
    tokens, seq_len, pre = f["tokens"][()], f["seq_len"][()], f["prefill_len"][()]
    nd = {k: f["needles"][k][()] for k in f["needles"]}
    COS, SIN = f["rope/cos"][()].astype(np.float64), f["rope/sin"][()].astype(np.float64)
with h5py.File(TRUTH, "r") as f:
    g = f["needles"]
    got = {(int(g["config_id"][i]), int(g["needle"][i])): {k: g[k][i] for k in g if k != "config"}
           for i in range(len(g["needle"]))}
    got_cfg = {int(g["config_id"][i]): g["config"][i].decode() for i in range(len(g["needle"]))}
with open(os.path.join(RES, "needles.csv")) as f:
    proxy = {(int(r["config_id"]), int(r["needle"])): r for r in csv.DictReader(f)}
ef = h5py.File(EXP, "r")
check(len(got) == len(CONFIGS) * len(recs), f"truth /needles: one row per (configuration, needle): {len(got)}")


def kept_of(c, s):
    grp = ef[f"configs/{c}/{s}"]
    eoff, pos, P = grp["entry_off"][()], grp["pos"][()], int(grp.attrs["split"])
    return [[pos[eoff[l * HKV + kh]:eoff[l * HKV + kh + 1]] for kh in range(HKV)] for l in range(L)], P


def top1(lg, s, a0, a1):
    """(sure, ambiguous) counts over the answer tokens."""
    sure = amb = 0
    for t in range(a0 - 1, a1 - 1):
        row, y = lg[t], int(tokens[s, t + 1])
        o = np.sort(row)[::-1]
        if o[0] - o[1] < 1e-3 and row[y] >= o[1]:
            amb += 1
        elif int(row.argmax()) == y:
            sure += 1
    return sure, amb


bad, hand_bad, full_rows, changed = [], 0, [], 0
full_logits = {}
for c, spec in enumerate(CONFIGS):
    for i in range(len(nd["seq"])):
        s = int(nd["seq"][i])
        n, P = int(seq_len[s]), int(pre[s])
        a0, a1 = int(nd["answer_start"][i]), int(nd["answer_end"][i])
        kept, Pe = kept_of(c, s)
        if spec.startswith("streaming"):     # the hand-built state: 4 sinks and the last 12 prompt positions
            hand = np.r_[np.arange(4), np.arange(P - 12, P)]
            hand_bad += sum(not np.array_equal(kept[l][g][kept[l][g] < P], hand) for l in range(L) for g in range(HKV))
            kept = [[hand for _ in range(HKV)] for _ in range(L)]
        else:
            kept = [[k[k < P] for k in row] for row in kept]
        if s not in full_logits:
            full_logits[s] = forward(tokens[s, :n], cos=COS, sin=SIN)
        lc = full_logits[s] if spec == "full" else forward(tokens[s, :n], P, kept, COS, SIN)
        r, na = got[(c, i)], a1 - a0
        for key, lg in (("answer_top1_full", full_logits[s]), ("answer_top1_comp", lc)):
            sure, amb = top1(lg, s, a0, a1)
            x = float(r[key])
            if not (sure / na - 1e-12 <= x <= (sure + amb) / na + 1e-12):
                bad.append((spec, i, key, x, sure, amb))
        pr = proxy[(c, i)]
        if int(r["ctx_len"]) != int(pr["ctx_len"]) or abs(float(r["depth"]) - float(pr["depth"])) > 1e-8 or \
                Pe != P or got_cfg[c] != pr["config"]:
            bad.append((spec, i, "ctx_len/depth/config vs needles.csv"))
        if spec == "full":
            full_rows.append(r)
        changed += float(r["answer_top1_comp"]) != float(r["answer_top1_full"])
check(hand_bad == 0, "streaming's exported prompt positions = the hand-built [0, 4) + [P - 12, P)")
check(not bad, f"true answer accuracy (full and under each state) = independent float64 forward {bad[:3]}")
check(all(float(r["answer_top1_comp"]) == float(r["answer_top1_full"]) for r in full_rows) and
      min(float(r["answer_top1_full"]) for r in full_rows) >= 0.8,
      f"full: compressed = full accuracy, and the model's own answers score >= 0.8 "
      f"{[float(r['answer_top1_full']) for r in full_rows]}")
check(changed > 0, f"{changed} (configuration, needle) rows where the state changes the true accuracy")

# ---- kvreport --truth: the needle table beside the proxy -------------------------------------
REP = os.path.join(TMP, "rep")
sh([KVREPORT, RES, "-o", REP, "--truth", TRUTH, "--no-figures", "--bootstrap", "50"])
with open(os.path.join(REP, "tables", "truth_needles.csv")) as f:
    rows = list(csv.DictReader(f))
worst, cells = 0.0, 0
for row in rows:
    members = [(c, i) for (c, i), p in proxy.items() if p["config"] == row["config"] and p["ctx_len"] == row["ctx_len"]
               and f"{np.floor(float(p['depth']) * 10 + 0.5) / 10:.1f}" == row["depth"]]
    cells += len(members)
    want = dict(proxy_top1_full=np.mean([float(proxy[m]["answer_top1_full"]) for m in members]),
                proxy_top1_comp=np.mean([float(proxy[m]["answer_top1_comp"]) for m in members]),
                true_top1_full=np.mean([float(got[m]["answer_top1_full"]) for m in members]),
                true_top1_comp=np.mean([float(got[m]["answer_top1_comp"]) for m in members]))
    worst = max([worst, abs(int(row["n_needles"]) - len(members))] + [abs(float(row[k]) - v) for k, v in want.items()])
check(cells == len(got) and worst <= 1e-8,
      f"tables/truth_needles.csv: per (config, context, depth) means of needles.csv and truth.h5 (worst {worst:.1e})")
md = open(os.path.join(REP, "report.md")).read()
check("### Needle answers: proxy vs in-model truth" in md and "| streaming budget=16 sinks=4" in md,
      "report.md: the needle answers section, one row per configuration")

# with figures: the heat map of the true accuracy, one cell per table row at its grid place
REPF = os.path.join(TMP, "repf")
sh([KVREPORT, RES, "-o", REPF, "--truth", TRUTH, "--bootstrap", "20"])
hd = open(os.path.join(REPF, "figures", "needle_heatmap_truth.dat")).read().split("\n")
mg = re.match(r"# grid (\d+) columns (\d+) rows (\d+) contexts (\d+) depths", hd[0])
check(mg is not None, f"needle_heatmap_truth.dat names its grid: {hd[0][:60]!r}")
if mg:
    cols, nrow, nctx, ndep = map(int, mg.groups())
    order = list(dict.fromkeys(r["config"] for r in rows))
    ctx_v = sorted({int(r["ctx_len"]) for r in rows})
    dep_v = sorted({r["depth"] for r in rows}, key=float)
    cellv = {(int(a), int(b)): float(v) for a, b, v in (ln.split() for ln in hd[1:] if ln.strip())}
    bad = 0
    for r in rows:
        p = order.index(r["config"])
        key = ((p % cols) * (nctx + 1) + ctx_v.index(int(r["ctx_len"])),
               (nrow - 1 - p // cols) * (ndep + 2) + dep_v.index(r["depth"]))
        bad += key not in cellv or abs(cellv[key] - float(r["true_top1_comp"])) > 1e-6
    check(bad == 0 and len(cellv) == len(rows), f"the true heat map holds true_top1_comp of every cell ({bad} differ)")
check("figures/needle_heatmap_truth.png" in open(os.path.join(REPF, "report.md")).read(),
      "report.md shows the true heat map in the needle answers section")

# ---- online protocol: every row under the eviction masks (evict_at) --------------------------
ON = ["full", "streaming budget=40 sinks=4"]
RES_ON, EXP_ON, TRUTH_ON = os.path.join(TMP, "res_on"), os.path.join(TMP, "exp_on.h5"), os.path.join(TMP, "truth_on.h5")
args = [KVREPLAY, "run", TR, "--mode", "online", "-o", RES_ON, "--export", EXP_ON, "--threads", "1", "--quiet"]
for c in ON:
    args += ["--strategy", c]
sh(args)
sh([PY, os.path.join(ROOT, "capture", "kvcapture.py"), "validate", "--model", "ref:" + CK, "--trace", TR, "--export",
    EXP_ON, "-o", TRUTH_ON])
with h5py.File(TRUTH_ON, "r") as f, h5py.File(EXP_ON, "r") as ex:
    g = f["needles"]
    bad, n_rows = [], len(g["needle"])
    for k in range(n_rows):
        c, i = int(g["config_id"][k]), int(g["needle"][k])
        s = int(nd["seq"][i])
        n = int(seq_len[s])
        ev = ex[f"configs/{c}/{s}/evict_at"][()].reshape(L, HKV, n)
        lc = forward(tokens[s, :n], cos=COS, sin=SIN, evict_at=ev)
        a0, a1 = int(nd["answer_start"][i]), int(nd["answer_end"][i])
        for key, lg in (("answer_top1_full", full_logits[s]), ("answer_top1_comp", lc)):
            sure, amb = top1(lg, s, a0, a1)
            x = float(g[key][k])
            if not (sure / (a1 - a0) - 1e-12 <= x <= (sure + amb) / (a1 - a0) + 1e-12):
                bad.append((ON[c], i, key, x, sure, amb))
    ch = sum(float(g["answer_top1_comp"][k]) != float(g["answer_top1_full"][k]) for k in range(n_rows))
check(ch > 0, f"online: streaming changes the true accuracy of {ch} needle(s)")
check(n_rows == len(ON) * len(recs) and not bad,
      f"online: true answer accuracy under the evict_at masks = independent float64 forward ({n_rows} rows) {bad[:3]}")

if failures:
    sys.exit(f"{len(failures)} checks failed")
print("true needle answer accuracy = independent float64 forward")
