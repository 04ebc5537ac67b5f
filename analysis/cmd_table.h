/* kvreport subcommands other than the report (analysis/cmd_*.c). */
#ifndef KV_CMD_TABLE_H
#define KV_CMD_TABLE_H

/* kvreport table ...: argv[0] is "table". Returns the exit status (0, 1 error, 2 usage). */
int kvr_table_main(int argc, char **argv);

#endif /* KV_CMD_TABLE_H */
