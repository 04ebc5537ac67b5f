/* Subcommands of bin/kvreplay; each parses its own arguments (argv[0] is the subcommand
 * name) and returns the process exit status. Only these functions print. */
#ifndef KV_COMMANDS_H
#define KV_COMMANDS_H

/* Exit statuses shared by every subcommand. */
enum {
    KV_EXIT_OK = 0,
    KV_EXIT_FAIL = 1,        /* bad input, invalid trace, failed check */
    KV_EXIT_USAGE = 2,       /* bad command line */
    KV_EXIT_INTERRUPTED = 3, /* SIGINT/SIGTERM: finished the current unit, resumable */
};

int kvcmd_info(int argc, char **argv);
int kvcmd_check(int argc, char **argv);
int kvcmd_run(int argc, char **argv);
int kvcmd_merge(int argc, char **argv);

#endif
