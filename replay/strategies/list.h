/* One line per strategy: RP_STRATEGY(name) for `const rp_strategy rp_strategy_<name>`
 * defined in replay/strategies/<name>.c. Keep alphabetical within each group. */
/* eviction */
RP_STRATEGY(entropy_merge)
RP_STRATEGY(full)
RP_STRATEGY(knorm)
RP_STRATEGY(random)
RP_STRATEGY(streaming)
/* encoding */
RP_STRATEGY(asymkv)
RP_STRATEGY(lowrank)
RP_STRATEGY(minicache)
RP_STRATEGY(quant)
