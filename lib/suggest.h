/* Near-match suggestions for names given on the command line or in a sweep ("did you mean
 * 'snapkv'?"): the candidate nearest in edit distance, when near enough to be a typo. */
#ifndef KV_SUGGEST_H
#define KV_SUGGEST_H

#include <stddef.h>

/* Levenshtein distance (insertions, deletions, substitutions; bytes), capped: any distance
 * above cap is returned as cap + 1 (cheaper on long strings). */
size_t kv_edit_distance(const char *a, const char *b, size_t cap);
/* The candidate nearest `word` within max(2, strlen(word) / 3) edits, or one that `word`
 * is a prefix of when no candidate is that near (first wins on ties); NULL when none.
 * cands[i] may be NULL (skipped). */
const char *kv_suggest(const char *word, const char *const *cands, size_t n);
/* ", did you mean 'X'?" into buf when a suggestion exists, else "" (for messages). */
const char *kv_suggest_hint(const char *word, const char *const *cands, size_t n, char *buf, size_t cap);

#endif /* KV_SUGGEST_H */
