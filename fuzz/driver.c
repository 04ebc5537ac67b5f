/* Plain main() for the fuzz harnesses: calls LLVMFuzzerTestOneInput on each file given,
 * so that the crashing inputs libFuzzer found (fuzz/regress/<name>/) replay in the normal
 * gcc build and test suite (tests/sh/test_fuzz_regress.sh) without libFuzzer.
 * Exit 0 when every input ran to completion; a crash is the harness's own signal.
 * FUZZ_CHILD=1 is set for the harness (see fuzz/fuzz_trace.c). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv)
{
    /* harnesses that can contain crashes of uninstrumented libraries do it here */
    setenv("FUZZ_CHILD", "1", 0);
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) {
            perror(argv[i]);
            return 2;
        }
        size_t cap = 1 << 16, n = 0;
        uint8_t *buf = malloc(cap);
        for (;;) {
            if (!buf) {
                fprintf(stderr, "%s: out of memory\n", argv[i]);
                return 2;
            }
            n += fread(buf + n, 1, cap - n, f);
            if (n < cap)
                break;
            cap *= 2;
            uint8_t *nb = realloc(buf, cap);
            if (!nb)
                free(buf);
            buf = nb;
        }
        int bad = ferror(f);
        fclose(f);
        if (bad) {
            fprintf(stderr, "%s: read error\n", argv[i]);
            free(buf);
            return 2;
        }
        LLVMFuzzerTestOneInput(buf, n);
        free(buf);
    }
    return 0;
}
