/* Paged memory accounting: see paged.h. */
#include "paged.h"

void rp_paged_account(size_t m, double per_entry, double fixed, size_t page, rp_paged *out)
{
    out->used = (double)m * per_entry + fixed;
    if (page == 0 || m == 0) {
        out->pages = 0;
        out->allocated = out->used;
        out->fragmentation = 0.0;
        return;
    }
    out->pages = (m + page - 1) / page;
    double slots = (double)(out->pages * page);
    out->allocated = slots * per_entry + fixed;
    out->fragmentation = (slots - (double)m) * per_entry;
}
