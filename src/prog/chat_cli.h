/* parley chat: the messaging client on the command line (chat_cli.c). */
#ifndef PARLEY_PROG_CHAT_CLI_H
#define PARLEY_PROG_CHAT_CLI_H

/* argv[0] is "chat"; returns the process exit code. */
int chat_main(int argc, char **argv);

#endif
