/* One line per strategy: RP_STRATEGY(name) for `const rp_strategy rp_strategy_<name>`
 * defined in replay/strategies/<name>.c. Keep alphabetical within each group. */
/* eviction */
RP_STRATEGY(adakv)
RP_STRATEGY(cab)
RP_STRATEGY(entropy_merge)
RP_STRATEGY(full)
RP_STRATEGY(h2o)
RP_STRATEGY(knorm)
RP_STRATEGY(pyramidkv)
RP_STRATEGY(quest)
RP_STRATEGY(random)
RP_STRATEGY(snapkv)
RP_STRATEGY(streaming)
RP_STRATEGY(tova)
/* kvpress presses replayed from traces (keydiff, cur, lagkv, expected_attention, observed_attention) */
RP_STRATEGY(cur)
RP_STRATEGY(expected_attention)
RP_STRATEGY(keydiff)
RP_STRATEGY(lagkv)
RP_STRATEGY(observed_attention)
/* encoding */
RP_STRATEGY(asymkv)
RP_STRATEGY(lowrank)
RP_STRATEGY(minicache)
RP_STRATEGY(quant)
/* structural and two-stage (kvpress catalogue) */
RP_STRATEGY(simlayerkv)
RP_STRATEGY(chunkkv)
RP_STRATEGY(criticalkv)
RP_STRATEGY(merging)
RP_STRATEGY(think)
RP_STRATEGY(criticaladakv)
RP_STRATEGY(chunk)
/* more kvpress presses: the Compactor family (compactor.h: noncausal_attn, leverage, compactor), cap, qfilter */
RP_STRATEGY(noncausal_attn)
RP_STRATEGY(leverage)
RP_STRATEGY(compactor)
RP_STRATEGY(cap)
RP_STRATEGY(qfilter)
/* kvpress presses with new parameter kinds or a question window: duo (calibrated head split),
 * finch (the question as SnapKV's window, keys re-rotated), per_layer (per-layer ratios) */
RP_STRATEGY(duo)
RP_STRATEGY(finch)
RP_STRATEGY(per_layer)
/* decode-time presses (decoding.h: kvpress DecodingPress, DMSPress, CAMPress), and evict_span,
 * a diagnostic that evicts the needles of traces with /needles */
RP_STRATEGY(cam)
RP_STRATEGY(decoding)
RP_STRATEGY(dms)
RP_STRATEGY(evict_span)
