/* One line per strategy: RP_STRATEGY(name) for `const rp_strategy rp_strategy_<name>`
 * defined in replay/strategies/<name>.c. Keep alphabetical within each group. */
/* eviction */
RP_STRATEGY(full)
/* encoding */
