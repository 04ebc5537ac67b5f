/* Tiny shared helpers for the trace-reading unit tests (test_trace_changed.c,
 * test_trace_roundtrip.c, test_validate_record.c): named checks that print the failing line
 * and count, and a byte-for-byte file copy. */
#ifndef KV_TRACE_TESTHELP_H
#define KV_TRACE_TESTHELP_H

#include <stdio.h>

static int fails = 0, checks = 0;

#define CHECK(cond, ...) do { checks++; if (!(cond)) { fails++; printf("FAIL %s:%d: ", __FILE__, __LINE__); \
                              printf(__VA_ARGS__); printf("\n"); } } while (0)

/* Copies the file from to to; 0 ok, -1 on any open, read or write failure. */
static inline int copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    int ok = a && b;
    char buf[1 << 16];
    size_t n;
    while (ok && (n = fread(buf, 1, sizeof buf, a)) > 0)
        ok = fwrite(buf, 1, n, b) == n;
    if (a) fclose(a);
    if (b && fclose(b) != 0) ok = 0;
    return ok ? 0 : -1;
}

#endif
