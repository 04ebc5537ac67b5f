/* Proxy vs in-model truth (docs/METHODS.md §12): `kvreport ... --truth truth.h5`.
 *
 * truth.h5 comes from `kvcapture.py validate` (traces/EXPORT.md): per (configuration,
 * sequence) the metrics of an in-model re-run with the exported cache state. Paired with the
 * results' direct-path proxies per configuration (means over the sequences both have; the
 * `full` family left out), for logit_kl and nll_delta (nll_comp - nll_full):
 *   Spearman (gsl_stats_spearman) and Kendall tau-b (O(n^2), here) with percentile bootstrap
 *   95% intervals over configurations (rp_ctx.n_boot resamples, rp_ctx.seed);
 *   calibration slope: ordinary least squares of truth on proxy; median truth / proxy;
 *   and, without any fit, the proxy logit_kl as a ranking of the true nll_delta (row
 *   nll_delta_by_proxy_kl).
 * Calibrated proxy (calib.h), when the results have per_layer.csv (--per-layer-readout):
 *   kl_nnls      true logit_kl ~ sum_l g_l logit_kl_layer_l, g >= 0 (Lawson-Hanson NNLS)
 *   nll_ols      true nll_delta ~ sum_l g_l nll_delta_layer_l, free sign (OLS, no intercept)
 *   nll_from_kl  true nll_delta ~ sum_l g_l logit_kl_layer_l, g >= 0
 *   features: per configuration, means over the paired sequences; scored by leave-one-
 *   strategy-out cross-validation (cal_loso_predict: each family predicted by a fit on the
 *   other families only), with the same bootstrap; gains also fitted on all configurations.
 * Writes tables/truth.csv (raw and primary calibrated statistics side by side),
 * tables/truth_calib.csv (every calibration, with gains per layer), tables/truth_pairs.csv,
 * figures/truth_<metric>.{dat,gp} (+ .png when gnuplot runs) and appends a section to
 * report.md, with a WARNING line when a raw Spearman is below 0.9.
 */
#ifndef KV_TRUTH_H
#define KV_TRUTH_H

#include <stddef.h>
#include <stdint.h>

#include "report.h"

#define TR_WARN_RHO 0.9

/* Kendall tau-b of x, y [n] (ties handled; NaN when a variable is constant or n < 2). */
double tr_kendall(const double *x, const double *y, size_t n);
/* Spearman rank correlation (average ranks for ties); NaN when n < 2 or constant. */
double tr_spearman(const double *x, const double *y, size_t n);

/* Reads the truth file, pairs it with c->rs and writes the outputs (c->dir must hold
 * report.md already). *n_warn = number of metrics whose Spearman is below TR_WARN_RHO. */
kv_status tr_write(rp_ctx *c, const char *truth_path, size_t *n_warn, kv_error *err);

/* --gains FILE: per-layer gains fitted by an earlier --truth run (its tables/truth_calib.csv,
 * row "kl_nnls"; "nll_from_kl" too when present) applied to these results, which need
 * per_layer.csv (kvreplay run --per-layer-readout) with as many layers as there are gains:
 *   logit_kl_cal = sum_l g_l * mean over the configuration's sequences of logit_kl_layer_l.
 * Writes tables/calibrated.csv (every configuration: raw and calibrated values and ranks)
 * and appends a section to report.md (c->dir must hold it already). This is how a small
 * truth set calibrates thousands of offline configurations. */
kv_status tr_apply_gains(rp_ctx *c, const char *gains_path, kv_error *err);

#endif /* KV_TRUTH_H */
