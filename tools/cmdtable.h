/* The command table of a veil tool (veil, veil-keys): the first argument
 * names a command.  No command, help, --version and an unknown command are
 * answered here, the same way in every tool; the tool runs the command
 * found. */
#ifndef VEIL_TOOLS_CMDTABLE_H
#define VEIL_TOOLS_CMDTABLE_H

#include <stddef.h>
#include <stdio.h>

typedef struct {
    const char *name;  /* the command word */
    int id;            /* the tool's own number for it */
    const char *usage; /* its usage: --help, and after a misuse */
} veil_cmd;

typedef struct {
    const char *prog;  /* "veil": --version and the unknown command */
    const char *usage; /* the tool's usage, for help and no command */
    const veil_cmd *cmds;
    size_t n_cmds;
    /* What help adds after the usage, to f: stdout when help was asked
     * for (asked 1), stderr when no command was given (asked 0). */
    void (*help_more)(FILE *f, int asked);
    /* An unknown command is echoed only when it looks like a command word
     * (up to 20 of a-z and '-'), not like a prompt. */
    int echo_words_only;
} veil_cmdtable;

/* The command argv[1] names; or NULL, with *code the exit code, when it
 * was answered here: no command (usage on stderr, 2), help (-h, --help,
 * help: usage on stdout, 0), --version (0) or an unknown command (2). */
const veil_cmd *veil_cmdtable_find(const veil_cmdtable *t, int argc,
                                   char **argv, int *code);

#endif
