/* The command table of a veil tool (cmdtable.h). */
#include "config.h"

#include <string.h>

#include "cmdtable.h"
#include "exitcode.h"

const veil_cmd *veil_cmdtable_find(const veil_cmdtable *t, int argc,
                                   char **argv, int *code)
{
    const char *word = argc < 2 ? NULL : argv[1];

    if (word == NULL || strcmp(word, "--help") == 0 ||
        strcmp(word, "-h") == 0 || strcmp(word, "help") == 0) {
        FILE *f = word ? stdout : stderr;
        fputs(t->usage, f);
        if (t->help_more)
            t->help_more(f, word != NULL);
        *code = word ? VEIL_EXIT_OK : VEIL_EXIT_USAGE;
        return NULL;
    }
    if (strcmp(word, "--version") == 0) {
        printf("%s %s\n", t->prog, PACKAGE_VERSION);
        *code = VEIL_EXIT_OK;
        return NULL;
    }
    for (size_t i = 0; i < t->n_cmds; i++)
        if (strcmp(word, t->cmds[i].name) == 0)
            return &t->cmds[i];
    if (!t->echo_words_only ||
        (strlen(word) <= 20 &&
         strspn(word, "abcdefghijklmnopqrstuvwxyz-") == strlen(word)))
        fprintf(stderr, "%s: unknown command '%s'\n\n%s", t->prog, word,
                t->usage);
    else
        fprintf(stderr, "%s: unknown command\n\n%s", t->prog, t->usage);
    *code = VEIL_EXIT_USAGE;
    return NULL;
}
