/* replay/paged.c: hand-computed paged allocations. */
#include "enc_testhelp.h"
#include "paged.h"

int main(void)
{
    rp_paged p;
    /* 100 fp16 entries of D=32 (K+V: 128 B) in pages of 16: 7 pages, 112 slots */
    rp_paged_account(100, 128, 0, 16, &p);
    check_close("pages", (double)p.pages, 7, 0);
    check_close("used", p.used, 12800, 0);
    check_close("allocated", p.allocated, 14336, 0);
    check_close("fragmentation", p.fragmentation, 1536, 0);
    /* exact multiple: no fragmentation */
    rp_paged_account(64, 128, 0, 16, &p);
    check_close("full pages: fragmentation 0", p.fragmentation, 0, 0);
    check_close("full pages: allocated = used", p.allocated, p.used, 0);
    /* bases are not paged */
    rp_paged_account(10, 40, 1000, 8, &p);
    check_close("with bases: used", p.used, 1400, 0);
    check_close("with bases: allocated", p.allocated, 16 * 40 + 1000, 0);
    check_close("with bases: fragmentation", p.fragmentation, 6 * 40, 0);
    /* page 0 = unpaged; m = 0 */
    rp_paged_account(10, 40, 0, 0, &p);
    check_close("unpaged", p.allocated, 400, 0);
    rp_paged_account(0, 40, 0, 16, &p);
    check_close("empty cache", p.allocated, 0, 0);
    /* page 1: allocated = used */
    rp_paged_account(37, 12.5, 0, 1, &p);
    check_close("page 1", p.allocated, p.used, 0);
    return report("test_paged");
}
