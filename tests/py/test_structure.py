"""Issue 16: the synthetic generator puts what it says where it says, and the structure
scores (capture/structure.py) equal hand-computed values on hand-made attention patterns.

- synth.facts_doc: every planted fact's bytes sit at fact_pos/value_pos, every query at
  query_pos/answer_pos, distractors never overlap; the same (seed, index) gives the same bytes.
- synth.repeat_doc: every marked repeat is a byte-identical copy of its first occurrence.
- induction_score on (a) a perfect induction pattern = 1, (b) causal uniform attention =
  the hand formula mean(1/(q+1)), (c) a previous-token pattern = 0.
- bos_prev_mass on a sink head, a previous-token head and uniform attention (hand formulas).
"""
import os
import sys

import numpy as np

ROOT = os.environ.get("KV_ROOT", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "capture"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import structure  # noqa: E402
import synth  # noqa: E402
from testhelp import check, failures  # noqa: E402

filler = np.frombuffer(b"and the lord spake unto moses, saying, speak unto the children. " * 80,
                       dtype=np.uint8)

# ---- facts ------------------------------------------------------------------------------
bad = []
for i in range(200):
    n = 300 + 7 * i
    doc, planted = synth.facts_doc(11, i, n, filler, n_facts=2 + i % 5, n_queries=2)
    if len(doc) != n:
        bad.append((i, "length"))
    for p in planted:
        k, v = p["key"].encode(), p["value"].encode()
        if bytes(doc[p["fact_pos"]:p["fact_pos"] + 11]) != b"[" + k + b":" + v + b"]":
            bad.append((i, "fact"))
        if bytes(doc[p["value_pos"]:p["value_pos"] + 4]) != v:
            bad.append((i, "value_pos"))
        if bytes(doc[p["query_pos"]:p["query_pos"] + 6]) != b"[" + k + b":":
            bad.append((i, "query"))
        if bytes(doc[p["answer_pos"]:p["answer_pos"] + 5]) != v + b"]":
            bad.append((i, "answer"))
        if not p["fact_pos"] < p["query_pos"]:
            bad.append((i, "order"))
        # the key appears exactly twice (fact and query): no other copy to retrieve from
        if bytes(doc).count(b"[" + k + b":") != 2:
            bad.append((i, "key count"))
check(not bad, f"facts_doc: 200 documents, planted positions match the metadata {bad[:3]}")

d1, p1 = synth.facts_doc(5, 3, 500, filler, depths=[8])
d2, p2 = synth.facts_doc(5, 3, 500, filler, depths=[8])
d3, _ = synth.facts_doc(5, 4, 500, filler, depths=[8])
check(np.array_equal(d1, d2) and p1 == p2 and not np.array_equal(d1, d3),
      "facts_doc: seeded (same index same bytes, next index different)")
check(p1[0]["fact_pos"] == 9, f"facts_doc depths=[8]: the fact's '[' at byte 9 ({p1[0]['fact_pos']})")
try:
    synth.facts_doc(5, 3, 100, filler, depths=[95])
    check(False, "facts_doc: a depth inside the queries is refused")
except ValueError:
    check(True, "facts_doc: a depth inside the queries is refused")

# ---- repeats ----------------------------------------------------------------------------
bad = 0
marks_total = 0
for i in range(100):
    doc, marks = synth.repeat_doc(3, i, 1000)
    marks_total += len(marks)
    for first, later, length in marks:
        if first >= later or not np.array_equal(doc[first:first + length], doc[later:later + length]):
            bad += 1
    if len(doc) != 1000 or not set(bytes(doc)) <= set(b"abcdefghijklmnopqrstuvwxyz "):
        bad += 1
check(bad == 0 and marks_total > 1000, f"repeat_doc: {marks_total} marked repeats are copies ({bad} bad)")

# the wide alphabet: the same structure over bytes '!'..255, spans only from it, and the
# letters form unchanged (the default draws the same random numbers as before the option)
bad, marks_total, seen = 0, 0, set()
for i in range(100):
    doc, marks = synth.repeat_doc(3, i, 1000, 6, 16, 3, alphabet="wide")
    marks_total += len(marks)
    seen |= set(bytes(doc))
    for first, later, length in marks:
        if first >= later or not np.array_equal(doc[first:first + length], doc[later:later + length]):
            bad += 1
    if len(doc) != 1000 or any(b != 32 and b < 33 for b in bytes(doc)):
        bad += 1
check(bad == 0 and marks_total > 1000 and len(seen) > 200,
      f"repeat_doc wide: {marks_total} marked repeats are copies, {len(seen)} byte values ({bad} bad)")
a, _ = synth.repeat_doc(3, 5, 500)
b, _ = synth.repeat_doc(3, 5, 500, alphabet="letters")
check(np.array_equal(a, b), "repeat_doc: alphabet='letters' is the default")

# ---- induction score ---------------------------------------------------------------------
span = 16
T = 2 * span + 1
q_rows, targets = structure.induction_targets(span)
perfect = np.zeros((1, T, T))
perfect[0, np.arange(T), 0] = 1.0
perfect[0, q_rows, 0] = 0.0
perfect[0, q_rows, targets] = 1.0
uniform = np.tril(np.ones((T, T)))
uniform = (uniform / uniform.sum(-1, keepdims=True))[None]
prevtok = np.zeros((1, T, T))
prevtok[0, 0, 0] = 1.0
prevtok[0, np.arange(1, T), np.arange(T - 1)] = 1.0
sc = structure.induction_score([perfect, uniform, prevtok], span)
hand_uniform = np.mean([1.0 / (span + 1 + j + 1) for j in range(span - 1)])
check(sc.shape == (3, 1), "induction_score: [L, H]")
check(abs(sc[0, 0] - 1.0) < 1e-12, f"induction_score: perfect pattern = 1 ({sc[0, 0]})")
check(abs(sc[1, 0] - hand_uniform) < 1e-12, f"induction_score: uniform = {hand_uniform:.6f} ({sc[1, 0]:.6f})")
check(abs(sc[2, 0]) < 1e-12, f"induction_score: previous-token head = 0 ({sc[2, 0]})")
# the targets themselves, by hand for span 16: query 18 (second copy's 2nd token, = S[1])
# ... query 17 is S[0] in the second copy, whose first occurrence is at 1; target 2
check(q_rows[0] == 17 and targets[0] == 2 and q_rows[-1] == 31 and targets[-1] == 16,
      f"induction targets by hand (17->2 ... 31->16): {q_rows[0]}->{targets[0]} ... {q_rows[-1]}->{targets[-1]}")

# ---- BOS and previous-token mass ---------------------------------------------------------
T = 40
sink = np.zeros((1, T, T))
sink[0, :, 0] = 0.6
for t in range(T):
    if t == 0:
        sink[0, 0, 0] = 1.0
    else:
        sink[0, t, 1:t + 1] = 0.4 / t
uniform = np.tril(np.ones((T, T)))
uniform = (uniform / uniform.sum(-1, keepdims=True))[None]
two = np.concatenate([sink, uniform], axis=0)          # one layer, two heads
prevhead = np.eye(T, k=-1)
prevhead[0, 0] = 1.0
bos, prev = structure.bos_prev_mass([two, np.concatenate([prevhead[None], uniform])])
hand_u = np.mean([1.0 / (t + 1) for t in range(8, T)])
hand_sink_prev = np.mean([0.4 / t for t in range(8, T)])
check(abs(bos[0, 0] - 0.6) < 1e-12 and abs(prev[0, 0] - hand_sink_prev) < 1e-12,
      f"sink head: bos 0.6 ({bos[0, 0]:.6f}), prev {hand_sink_prev:.6f} ({prev[0, 0]:.6f})")
check(abs(bos[0, 1] - hand_u) < 1e-12 and abs(prev[0, 1] - hand_u) < 1e-12,
      f"uniform head: bos = prev = {hand_u:.6f} ({bos[0, 1]:.6f}, {prev[0, 1]:.6f})")
check(abs(prev[1, 0] - 1.0) < 1e-12 and abs(bos[1, 0]) < 1e-12,
      f"previous-token head: prev 1, bos 0 ({prev[1, 0]}, {bos[1, 0]})")

sys.exit(1 if failures else 0)
