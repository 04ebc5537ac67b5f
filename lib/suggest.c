/* Near-match suggestions (suggest.h). */
#include "suggest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t kv_edit_distance(const char *a, const char *b, size_t cap)
{
    size_t na = strlen(a), nb = strlen(b);
    if ((na > nb ? na - nb : nb - na) > cap) return cap + 1;
    size_t *row = malloc((nb + 1) * sizeof *row);
    if (!row) return cap + 1;
    for (size_t j = 0; j <= nb; j++) row[j] = j;
    for (size_t i = 1; i <= na; i++) {
        size_t diag = row[0], best = row[0] = i;
        for (size_t j = 1; j <= nb; j++) {
            size_t up = row[j];
            size_t v = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < v) v = up + 1;
            if (row[j - 1] + 1 < v) v = row[j - 1] + 1;
            row[j] = v;
            diag = up;
            if (v < best) best = v;
        }
        if (best > cap) { free(row); return cap + 1; }   /* every path already costs more */
    }
    size_t d = row[nb];
    free(row);
    return d > cap ? cap + 1 : d;
}

const char *kv_suggest(const char *word, const char *const *cands, size_t n)
{
    size_t len = strlen(word), cap = len / 3 > 2 ? len / 3 : 2;
    const char *best = NULL;
    size_t bd = cap + 1;
    for (size_t i = 0; i < n; i++) {
        if (!cands[i] || !strcmp(cands[i], word)) continue;
        size_t d = kv_edit_distance(word, cands[i], bd - 1 < cap ? bd - 1 : cap);
        if (d < bd) { bd = d; best = cands[i]; }
    }
    if (best || !len) return best;
    for (size_t i = 0; i < n; i++)    /* an abbreviation: --boot for --bootstrap */
        if (cands[i] && !strncmp(cands[i], word, len)) return cands[i];
    return NULL;
}

const char *kv_suggest_hint(const char *word, const char *const *cands, size_t n, char *buf, size_t cap)
{
    const char *s = kv_suggest(word, cands, n);
    if (s) snprintf(buf, cap, ", did you mean '%s'?", s);
    else if (cap) buf[0] = 0;
    return buf;
}
