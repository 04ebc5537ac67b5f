"""Compare two kvtrace traces the way a re-capture on another machine must agree (issue 13 §1).

A capture runs the model's float32 forward through torch, whose matmuls are OpenBLAS kernels
chosen by CPU (and OPENBLAS_CORETYPE) with different summation orders; the same checkpoint
and tokens therefore give activations that agree to float32 rounding, not byte for byte.
What must be identical, and what may differ by how much:

  exact        every structural root attribute (model, shapes, scale, positional, ...), the
               set of objects, each dataset's dtype, shape and chunking, every integer dataset
               (tokens, seq_len, prefill_len), and tensors copied from the checkpoint without
               arithmetic (/readout/w_u, w_o/<l>, norm_weight, norm_bias, b_u);
  F16_TOL      f16 activations (q, k, v, attn_out, hidden): a float32 difference d, rounded to
               f16, shows as d plus at most one f16 step (2^-10 relative, at the larger of the
               two values): |a - b| <= 2^-10 max(|a|, |b|) + F32_REL max|b| over the tensor,
               F32_REL = 1e-4 covering the float32 difference itself through the layers
               (n u with n <= 4096-term sums, u = 2^-24, times O(10) gain over 4 layers);
  F32 read-out ref_lse, ref_top_logits: |a - b| <= F32_REL max(1, |b|);
  /rope        computed in float64 and rounded to float32 once: one float32 step, 2^-23 |b|;
  top-8 ids    equal, or two ids swapped whose logits are within the F32 tolerance (a near-tie
               ordered by rounding).
Provenance attributes of the run itself (created, command, source, device, torch and
transformers versions, capture_version, model_train_ctx, beyond_training) are not compared.
compute_dtype is compared as kvreplay reads it: the attribute, or for traces of kvcapture 1.0
(the committed samples) the "compute dtype X" that ends their source.
"""
import h5py
import numpy as np

PROVENANCE = {"created", "command", "source", "device", "torch_version", "transformers_version",
              "capture_version", "capture_tool", "model_train_ctx", "beyond_training", "compute_dtype"}
COPIED = ("readout/w_u", "readout/norm_weight", "readout/norm_bias", "readout/b_u")
F32_REL = 1e-4


def _compute_dtype(attrs):
    """The trace's compute dtype as kvreplay reads it (the attribute, else the end of source)."""
    if "compute_dtype" in attrs:
        return str(attrs["compute_dtype"])
    src = str(attrs.get("source", ""))
    return src.rsplit("compute dtype ", 1)[1].split()[0] if "compute dtype " in src else None


def _objects(f):
    names = {}
    f.visititems(lambda n, o: names.__setitem__(n, o))
    return names


def _attr_eq(x, y):
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return np.array_equal(np.asarray(x), np.asarray(y))
    return x == y


def compare(got_path, want_path):
    """-> (list of differences beyond tolerance, dict dataset -> worst |a-b| / tolerance)."""
    bad, worst = [], {}
    with h5py.File(got_path, "r") as g, h5py.File(want_path, "r") as w:
        if _compute_dtype(g.attrs) != _compute_dtype(w.attrs):
            bad.append(f"compute dtype {_compute_dtype(g.attrs)} vs {_compute_dtype(w.attrs)}")
        ga = {k: v for k, v in g.attrs.items() if k not in PROVENANCE}
        wa = {k: v for k, v in w.attrs.items() if k not in PROVENANCE}
        for k in sorted(set(ga) | set(wa)):
            if k not in ga or k not in wa or not _attr_eq(ga[k], wa[k]):
                bad.append(f"root attribute {k}: {ga.get(k)!r} vs {wa.get(k)!r}")
        go, wo = _objects(g), _objects(w)
        if set(go) != set(wo):
            bad.append(f"objects differ: only in {got_path}: {sorted(set(go) - set(wo))[:5]}, "
                       f"only in {want_path}: {sorted(set(wo) - set(go))[:5]}")
        for name in sorted(set(go) & set(wo)):
            a_o, b_o = go[name], wo[name]
            if dict(a_o.attrs) .keys() != dict(b_o.attrs).keys() or not all(
                    _attr_eq(a_o.attrs[k], b_o.attrs[k]) for k in a_o.attrs):
                bad.append(f"{name}: attributes differ")
            if not isinstance(a_o, h5py.Dataset):
                continue
            if (a_o.dtype, a_o.shape, a_o.chunks) != (b_o.dtype, b_o.shape, b_o.chunks):
                bad.append(f"{name}: dtype/shape/chunks {a_o.dtype} {a_o.shape} {a_o.chunks} vs "
                           f"{b_o.dtype} {b_o.shape} {b_o.chunks}")
                continue
            a, b = a_o[()], b_o[()]
            if name in COPIED or name.startswith("readout/w_o/") or a.dtype.kind in "iu":
                if name == "readout/ref_top_ids":
                    continue                                    # below, with the logits
                if not np.array_equal(a, b):
                    bad.append(f"{name}: {int((a != b).sum())} elements differ (must be identical)")
                continue
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            if name.startswith("rope/"):
                tol = 2.0 ** -23 * np.abs(b64)
            elif a.dtype == np.float16:
                tol = 2.0 ** -10 * np.maximum(np.abs(a64), np.abs(b64)) + F32_REL * float(np.abs(b64).max(initial=0))
            else:
                tol = F32_REL * np.maximum(1.0, np.abs(b64))
            d = np.abs(a64 - b64)
            over = d > tol
            r = float((d / np.maximum(tol, 1e-300)).max(initial=0))
            worst[name] = r
            if over.any():
                i = np.unravel_index(int(np.argmax(d - tol)), d.shape)
                bad.append(f"{name}: {int(over.sum())} elements beyond tolerance, worst at {tuple(int(x) for x in i)}: "
                           f"{a64[i]!r} vs {b64[i]!r}")
        if "readout/ref_top_ids" in go and "readout/ref_top_ids" in wo:
            ia, ib = g["readout/ref_top_ids"][()], w["readout/ref_top_ids"][()]
            la, lb = g["readout/ref_top_logits"][()].astype(np.float64), w["readout/ref_top_logits"][()].astype(np.float64)
            if ia.shape == ib.shape:
                diff = ia != ib
                # where ids differ, the slot's logits must be a near-tie: both traces' values
                # at that slot within the F32 tolerance of the neighbouring slot's
                tie = np.zeros_like(diff)
                tol = 2 * F32_REL * np.maximum(1.0, np.abs(lb))
                tie[..., 1:] |= np.abs(lb[..., 1:] - lb[..., :-1]) <= tol[..., 1:]
                tie[..., :-1] |= np.abs(lb[..., :-1] - lb[..., 1:]) <= tol[..., :-1]
                n_bad = int((diff & ~tie).sum())
                worst["readout/ref_top_ids"] = float(diff.sum())
                if n_bad:
                    bad.append(f"readout/ref_top_ids: {n_bad} ids differ without a near-tie")
                del la
    return bad, worst
