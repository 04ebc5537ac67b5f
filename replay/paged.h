/* Paged memory accounting (vAttention / PagedAttention style): the bytes a cache occupies
 * when its entries live in fixed-size pages, and the internal fragmentation of the last,
 * partly filled page. Pure functions, no engine dependency.
 *
 * m entries of one (sequence, layer, kv head) cache, page = entries per page (the page
 * size in tokens, vLLM's block_size; vAttention's physical pages hold a whole number of
 * tokens too). Per-entry bytes (payload + scales + indices) are paged; bases are not (they
 * live with the model weights), so they pass through unchanged.
 *
 *   pages         = ceil(m / page)
 *   allocated     = pages * page * per_entry + fixed
 *   fragmentation = (pages * page - m) * per_entry   (internal: the unused slots)
 * page = 0 means unpaged (allocated = used, fragmentation 0).
 */
#ifndef KV_PAGED_H
#define KV_PAGED_H

#include <stddef.h>

typedef struct rp_paged {
    size_t pages;
    double used, allocated, fragmentation;
} rp_paged;

/* per_entry = (payload + scales + indices) / m of the cache, fixed = bases. */
void rp_paged_account(size_t m, double per_entry, double fixed, size_t page, rp_paged *out);

#endif /* KV_PAGED_H */
