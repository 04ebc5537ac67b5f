"""agree: max |kvreplay - PyTorch reference| per summary metric.

    python3 bench/agree.py KV_SUMMARY.csv TORCH.csv MODE [KV2 TORCH2 MODE2 ...] > agree.csv

Rows are matched by config_id (both runs use the same configuration list in the same
order). A metric empty on both sides (not applicable) is skipped; empty on one side only
is reported as a mismatch (max_abs_diff = inf). Output: metric,mode,max_abs_diff,worst_config.
"""
import csv
import math
import sys

METRICS = ["keep_frac", "kv_mse_k", "kv_mse_v", "kv_rel_mse_k", "kv_rel_mse_v", "attn_cos",
           "out_cos", "out_rel_err", "attn_kl", "mass_recall", "logit_kl", "nll_full",
           "nll_comp", "top1_agree", "ece_full", "ece_comp"]


def main(args):
    if len(args) % 3 or not args:
        sys.exit("usage: agree.py KV.csv TORCH.csv MODE [...]")
    w = csv.writer(sys.stdout)
    w.writerow(["metric", "mode", "max_abs_diff", "worst_config"])
    for i in range(0, len(args), 3):
        kv = {r["config_id"]: r for r in csv.DictReader(open(args[i]))}
        pt = {r["config_id"]: r for r in csv.DictReader(open(args[i + 1]))}
        if set(kv) != set(pt):
            sys.exit(f"agree: {args[i]} and {args[i + 1]} list different configurations")
        for m in METRICS:
            worst, where, seen = 0.0, "", False
            for cid in sorted(kv, key=int):
                a, b = kv[cid].get(m, ""), pt[cid].get(m, "")
                if a == "" and b == "":
                    continue
                seen = True
                d = math.inf if (a == "" or b == "") else abs(float(a) - float(b))
                if d > worst or where == "":
                    worst, where = d, pt[cid]["config"]
            if seen:
                w.writerow([m, args[i + 2], f"{worst:.6g}", where])


if __name__ == "__main__":
    main(sys.argv[1:])
