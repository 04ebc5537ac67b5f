"""Synthetic training and probe documents that make retrieval and copying pay.

A byte-level model trained on prose alone has little reason to look far back: most bytes
are predictable from the last few. These documents are built so that the only way to
predict a large share of their bytes is to find an earlier occurrence and copy what
followed it -- the behaviour induction heads implement and that needle-in-a-haystack
benchmarks probe.

Kinds (all ASCII, byte-level; BOS is not included, the trainer prepends it):

  repeat  random spans (lowercase letters, or the 223 bytes '!'..255 with alphabet="wide";
          length span_min..span_max) drawn from a small pool and repeated
          at random later positions, separated by spaces; everything after the first
          occurrence of a span is copyable.
  facts   prose filler (from the caller's text) with planted facts " [KEYS:1234] " early and
          queries " [KEYS:" late; the four digits and "]" after a query are only predictable
          by retrieving the fact. Other planted facts are distractors.

Every document comes with its planted positions (byte offsets into the document), so the
probes and the needle traces know where each needle and its answer are.

Seeded: a document depends only on (seed, index, kind, length) through numpy's PCG64.
"""
import numpy as np

LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
UPPER = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)
DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)
# every byte from '!' to 255: 223 symbols, so that one matching token names one earlier
# position (with 26 letters a span's bytes recur and copying needs a longer match)
WIDE = np.arange(33, 256, dtype=np.uint8)
ALPHABETS = {"letters": LETTERS, "wide": WIDE}


def _rng(seed, index, salt):
    return np.random.default_rng([seed, index, salt])


def repeat_doc(seed, index, n, span_min=8, span_max=32, pool=6, alphabet="letters"):
    """n bytes of repeated random spans over `alphabet` (ALPHABETS). Returns (bytes [n] uint8,
    list of (first, later, length))."""
    r = _rng(seed, index, 1)
    alph = ALPHABETS[alphabet]
    spans = [alph[r.integers(0, len(alph), size=int(r.integers(span_min, span_max + 1)))]
             for _ in range(pool)]
    out, marks, first = [], [], {}
    pos = 0
    while pos < n:
        j = int(r.integers(0, pool))
        s = spans[j]
        if j in first:
            marks.append((first[j], pos, len(s)))
        else:
            first[j] = pos
        out.append(s)
        out.append(np.frombuffer(b" ", dtype=np.uint8))
        pos += len(s) + 1
    return np.concatenate(out)[:n], [m for m in marks if m[1] + m[2] <= n]


def fact_key(r):
    return bytes(UPPER[r.integers(0, 26, size=4)])


def fact_value(r):
    return bytes(DIGITS[r.integers(0, 10, size=4)])


def facts_doc(seed, index, n, filler, n_facts=4, n_queries=2, depths=None):
    """n bytes: prose with n_facts planted " [KEY:VVVV] " and n_queries queries of them.

    filler: uint8 array of prose to draw from. depths: optional list of byte offsets at
    which to plant the queried facts (else uniform in the first 60% of the document).
    Returns (bytes [n], list of dicts {key, value, fact_pos, value_pos, query_pos, answer_pos}),
    where *_pos are byte offsets: fact_pos of '[', value_pos of the first digit in the fact,
    query_pos of '[' in the query, answer_pos of the first digit the model must produce.
    """
    fact_len = len(b" [KEYS:1234] ")
    if depths is None:          # short documents: as many facts as can be placed (see below)
        while n_facts > 1:
            q = n - min(n_queries, n_facts) * (fact_len) - 1
            if int(0.6 * q) + (n_facts - 1) * fact_len - 1 <= q and int(0.6 * q) > fact_len:
                break
            n_facts -= 1
        n_queries = min(n_queries, n_facts)
    r = _rng(seed, index, 2)
    start = int(r.integers(0, len(filler) - n))
    doc = bytearray(filler[start:start + n].tobytes())
    keys, vals = [], []
    while len(keys) < n_facts:
        k = fact_key(r)
        if k not in keys:
            keys.append(k)
            vals.append(fact_value(r))
    fact_len = len(b" [KEYS:1234] ")
    query_len = len(b" [KEYS:1234]")
    # queries at the end, one after another; facts before them
    q_start = n - n_queries * (query_len + 1) - 1
    if depths is None:
        lim = max(1, int(0.6 * q_start) - fact_len)
        fpos = sorted(int(x) for x in r.choice(lim, size=n_facts, replace=False))
        # keep facts from overlapping
        for i in range(1, n_facts):
            fpos[i] = max(fpos[i], fpos[i - 1] + fact_len)
    else:
        fpos = [int(x) for x in depths]
        while len(fpos) < n_facts:     # distractors where they fit
            p = int(r.integers(0, max(1, q_start - fact_len)))
            if all(abs(p - f) >= fact_len for f in fpos):
                fpos.append(p)
    spans = sorted((p, p + fact_len) for p in fpos)
    for (a0, a1), (b0, _) in zip(spans, spans[1:]):
        if b0 < a1:
            raise ValueError(f"facts_doc: facts at {a0} and {b0} overlap")
    planted = []
    for i in range(n_facts):
        p = fpos[i]
        if p < 0 or p + fact_len > q_start:
            raise ValueError(f"facts_doc: fact at {p} outside [0, {q_start - fact_len}]")
        doc[p:p + fact_len] = b" [" + keys[i] + b":" + vals[i] + b"] "
    # the queried facts: the given depths first, else a random choice; asked in that order
    if depths is not None:
        asked = list(range(min(n_queries, len(depths))))
    else:
        asked = list(r.choice(n_facts, size=min(n_queries, n_facts), replace=False))
    qp = q_start
    for i in asked:
        i = int(i)
        q = b" [" + keys[i] + b":" + vals[i] + b"]"
        doc[qp:qp + len(q)] = q
        planted.append({"key": keys[i].decode(), "value": vals[i].decode(),
                        "fact_pos": fpos[i] + 1, "value_pos": fpos[i] + 7,
                        "query_pos": qp + 1, "answer_pos": qp + 7})
        qp += len(q)
        doc[qp:qp + 1] = b"\n"
        qp += 1
    return np.frombuffer(bytes(doc), dtype=np.uint8), planted


def mixed_batch(rng, text, B, T, synth_frac, seed, counter, repeat_share=0.5, repeat_kw=None,
                fact_queries=2):
    """B training windows of T-1 bytes: a share synth_frac synthetic (repeat_share of them
    repeat documents, the rest facts), the rest prose windows of `text`. Returns (windows
    [B, T-1] uint8, new counter). rng draws the prose windows and the kinds; synthetic content
    depends on (seed, counter). repeat_kw: keyword arguments of repeat_doc (span_min,
    span_max, pool); a small pool of long spans makes copying pay early (see train_ref.py).
    fact_queries: queries per facts document (capped at its 2-6 facts)."""
    rows = []
    for _ in range(B):
        u = rng.random()
        if u < synth_frac * repeat_share:
            d, _ = repeat_doc(seed, counter, T - 1, **(repeat_kw or {}))
            counter += 1
        elif u < synth_frac:
            d, _ = facts_doc(seed, counter, T - 1, text, n_facts=int(2 + counter % 5),
                             n_queries=fact_queries)
            counter += 1
        else:
            s = int(rng.integers(0, len(text) - T))
            d = text[s:s + T - 1]
        rows.append(d)
    return np.stack(rows), counter


def needle_record(seed, index, ctx_len, depth, filler, n_distractors=3):
    """One needle-in-a-haystack input for kvcapture --jsonl: a prose context of ctx_len bytes
    with a planted fact "[KEYS:1234]" whose '[' sits at byte int(depth * (ctx_len - 12)) and
    n_distractors other facts, then the question " [KEYS:" and the answer "1234]".

    Returns {"context", "question", "answer", "needles": [{start, end, value_start, value_end}]}
    with byte offsets into the context (end exclusive): what kvcapture turns into /needles."""
    n = ctx_len + len(b" [KEYS:1234]") + 2
    at = int(depth * (ctx_len - 12))
    doc, planted = facts_doc(seed, index, n, filler, n_facts=1 + n_distractors, n_queries=1,
                             depths=[max(0, at - 1)])
    p = planted[0]
    q0 = p["query_pos"] - 1                  # the space before the query's '['
    b = bytes(doc)
    rec = {"context": b[:q0].decode("ascii"), "question": b[q0:p["answer_pos"]].decode("ascii"),
           "answer": b[p["answer_pos"]:p["answer_pos"] + 5].decode("ascii"),
           "needles": [{"start": p["fact_pos"], "end": p["fact_pos"] + 11,
                        "value_start": p["value_pos"], "value_end": p["value_pos"] + 4}],
           "depth": depth, "key": p["key"], "value": p["value"]}
    return rec
