/* PLACEHOLDER owned by the replay-engine work: replaced by the real `run` and `merge`. */
#include <stdio.h>
#include "commands.h"

int kvcmd_run(int argc, char **argv)
{
    fprintf(stderr, "kvreplay run: not built yet\n");
    return KV_EXIT_FAIL;
}

int kvcmd_merge(int argc, char **argv)
{
    fprintf(stderr, "kvreplay merge: not built yet\n");
    return KV_EXIT_FAIL;
}
