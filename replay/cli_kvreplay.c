/* kvreplay — describe, validate and replay kvtrace traces. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "suggest.h"
#include "kvtrace.h"

static const char usage[] =
    "usage: kvreplay <command> [options]\n"
    "\n"
    "commands:\n"
    "  info  TRACE                 model, dimensions, storage and attention structure\n"
    "  check TRACE                 full validation, value scan, attention and read-out checks\n"
    "  run   TRACE --sweep FILE -o DIR | --strategy 'SPEC' -o DIR\n"
    "                              replay compression configurations and write metrics\n"
    "  merge -o DIR SHARD_DIR...   combine shard outputs into one results directory\n"
    "\n"
    "'kvreplay <command> --help' describes each command. Trace format: traces/SCHEMA.md.\n";

int main(int argc, char **argv)
{
    signal(SIGXFSZ, SIG_IGN);      /* a file-size limit (ulimit -f) becomes a write error (EFBIG) with a message */
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? KV_EXIT_USAGE : KV_EXIT_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("kvreplay %s (trace schema %d)\n", KV_VERSION_STRING, KV_SCHEMA_VERSION);
        return KV_EXIT_OK;
    }
    if (!strcmp(argv[1], "info"))  return kvcmd_info(argc - 1, argv + 1);
    if (!strcmp(argv[1], "check")) return kvcmd_check(argc - 1, argv + 1);
    if (!strcmp(argv[1], "run"))   return kvcmd_run(argc - 1, argv + 1);
    if (!strcmp(argv[1], "merge")) return kvcmd_merge(argc - 1, argv + 1);
    static const char *const cmds[] = { "info", "check", "run", "merge" };
    char hint[128];
    fprintf(stderr, "kvreplay: unknown command '%s'%s (try kvreplay --help)\n", argv[1],
            kv_suggest_hint(argv[1], cmds, 4, hint, sizeof hint));
    return KV_EXIT_USAGE;
}
