/* lib/suggest.c: edit distances against hand-computed values, the cap, and which candidate
 * is suggested (nearest within max(2, len/3) edits, else one the word abbreviates, else none). */
#include <stdio.h>
#include <string.h>

#include "suggest.h"

static int fails = 0, checks = 0;

static void check(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}

int main(void)
{
    /* kitten -> sitting: k->s, e->i, +g */
    check("kitten/sitting = 3", kv_edit_distance("kitten", "sitting", 10) == 3);
    check("flaw/lawn = 2", kv_edit_distance("flaw", "lawn", 10) == 2);
    check("empty/abc = 3", kv_edit_distance("", "abc", 10) == 3);
    check("equal = 0", kv_edit_distance("snapkv", "snapkv", 10) == 0);
    check("transposition = 2", kv_edit_distance("snapvk", "snapkv", 10) == 2);
    check("capped: kitten/sitting with cap 2 -> 3", kv_edit_distance("kitten", "sitting", 2) == 3);
    check("capped by length difference", kv_edit_distance("a", "abcdefgh", 3) == 4);

    const char *opts[] = { "--baseline", "--bootstrap", "--metric", "--trace", "--truth" };
    const char *s = kv_suggest("--basline", opts, 5);
    check("--basline -> --baseline", s && !strcmp(s, "--baseline"));
    s = kv_suggest("--boot", opts, 5);
    check("--boot abbreviates --bootstrap", s && !strcmp(s, "--bootstrap"));
    s = kv_suggest("--trase", opts, 5);
    check("--trase -> --trace (first of two at distance 1)", s && !strcmp(s, "--trace"));
    check("nothing near", kv_suggest("--zzzzzzzz", opts, 5) == NULL);
    const char *metrics[] = { "logit_kl", "attn_kl", "out_cos", NULL };
    s = kv_suggest("logit_k", metrics, 4);
    check("logit_k -> logit_kl (NULL candidates skipped)", s && !strcmp(s, "logit_kl"));
    char buf[64];
    check("hint text", !strcmp(kv_suggest_hint("out_coss", metrics, 4, buf, sizeof buf), ", did you mean 'out_cos'?"));
    check("empty hint", !strcmp(kv_suggest_hint("qqqqqqqqqq", metrics, 4, buf, sizeof buf), ""));
    printf("%d checks, %d failures\n", checks, fails);
    return fails ? 1 : 0;
}
