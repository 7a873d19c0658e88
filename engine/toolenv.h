/* The one vocabulary of veil, veil-keys and veild: the environment
 * variables they read (one table, printed by each --help and documented
 * once, in README.md and each man page's ENVIRONMENT) and the spelling of
 * their flags (dashes printed and documented; underscores accepted).
 * Precedence everywhere: a flag wins over the environment, the
 * environment over a config file.  Not installed. */
#ifndef VEIL_TOOLENV_H
#define VEIL_TOOLENV_H

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* which tools read a variable */
#define VEIL_TOOL_VEIL 1u
#define VEIL_TOOL_KEYS 2u
#define VEIL_TOOL_VEILD 4u
#define VEIL_TOOL_ALL 7u

typedef enum veil_env_id {
    VEIL_ENV_URL,
    VEIL_ENV_API_KEY,
    VEIL_ENV_MODULE,
    VEIL_ENV_PIN_SOURCE,
    VEIL_ENV_RELAY,
    VEIL_ENV_COUNT
} veil_env_id;

typedef struct veil_env_var {
    const char *name; /* "VEIL_PKCS11_MODULE" */
    const char *flag; /* the flag it stands for: "--module" */
    unsigned tools;   /* VEIL_TOOL_* */
    const char *help;
} veil_env_var;

/* clang-format off */
static const veil_env_var veil_env_vars[VEIL_ENV_COUNT] = {
    [VEIL_ENV_URL] = {"VEIL_URL", "--url", VEIL_TOOL_VEIL,
                      "the server's base URL"},
    [VEIL_ENV_API_KEY] = {"VEIL_API_KEY", "--api-key-file", VEIL_TOOL_VEIL,
                          "the API key itself (the flag names a file)"},
    [VEIL_ENV_MODULE] = {"VEIL_PKCS11_MODULE", "--module", VEIL_TOOL_ALL,
                         "PKCS#11 module: a .so path or a p11-kit module name"},
    [VEIL_ENV_PIN_SOURCE] = {"VEIL_PIN_SOURCE", "--pin-source", VEIL_TOOL_ALL,
                             "where the token PIN comes from: file:PATH, "
                             "credential:NAME, env:NAME, prompt"},
    [VEIL_ENV_RELAY] = {"VEIL_RELAY", "--relay", VEIL_TOOL_VEIL,
                        "an Oblivious HTTP relay for protocol v2"},
};
/* clang-format on */

/* The variable's value; NULL when unset or empty. */
static inline const char *veil_env(veil_env_id id)
{
    const char *v = getenv(veil_env_vars[id].name);
    return v && *v ? v : NULL;
}

/* The rows of `tool` for its --help, one line each. */
static inline void veil_env_help(FILE *out, unsigned tool)
{
    fputs("Environment (a flag wins over it; it wins over a config file):\n",
          out);
    for (int i = 0; i < VEIL_ENV_COUNT; i++)
        if (veil_env_vars[i].tools & tool)
            fprintf(out, "  %-19s %s (as %s)\n", veil_env_vars[i].name,
                    veil_env_vars[i].help, veil_env_vars[i].flag);
}

/* Flags are spelled with dashes; the same name with underscores is taken
 * too (--pin_source is --pin-source).  Copies the getopt_long table in
 * (ending with a zero row) to out, adding an underscore spelling of every
 * name with a dash; names holds the added names.  The rows in out (at
 * most cap, the zero row included), or -1 when out or names is too
 * small. */
static inline int veil_longopts_both(const struct option *in,
                                     struct option *out, size_t cap,
                                     char *names, size_t names_cap)
{
    size_t n = 0, used = 0;

    for (const struct option *o = in; o->name; o++) {
        if (n + 1 >= cap)
            return -1;
        out[n++] = *o;
        if (strchr(o->name, '-') == NULL)
            continue;
        size_t len = strlen(o->name) + 1;
        if (n + 1 >= cap || used + len > names_cap)
            return -1;
        char *copy = names + used;
        memcpy(copy, o->name, len);
        used += len;
        for (char *p = copy; *p; p++)
            if (*p == '-')
                *p = '_';
        out[n] = *o;
        out[n++].name = copy;
    }
    memset(&out[n], 0, sizeof out[n]);
    return (int)n + 1;
}

#endif /* VEIL_TOOLENV_H */
