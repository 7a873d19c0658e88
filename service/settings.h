/* service/settings.h: one table of settings drives a program's config
 * file, its command-line flags and its --help (veild today, `veil proxy`
 * next).  Generic over a base struct: a row names its field by offset, and
 * its kind parses a value into it, checks its range and frees it.  A new
 * setting is one row; a program-specific kind is one svc_kind.
 *
 * File format:
 *
 *   # a comment (whole lines only)
 *   NAME = VALUE          a setting of the table
 *   [SECTION ID]          a section (when the table has one): its lines,
 *   KEY = VALUE           until the next section, go to the section's
 *                         callbacks; global settings come before the first
 *
 * Names are the flag names without "--"; '-' and '_' are the same (--help
 * prints flags with '-', the file's names are written with '_').  The
 * value is the rest of the line, trimmed (no quoting).  A later line, and
 * then a flag, overrides an earlier setting.
 *
 * Messages are one line.  A kind's message may name the value (cut to 48
 * characters by svc_shown), except where the value may hold a secret: a
 * kind for key references or PIN sources never repeats its value.
 *
 * Not installed; no gateway header is included here (service/ never sees
 * gateway.h). */
#ifndef VEIL_SETTINGS_H
#define VEIL_SETTINGS_H

#include <stddef.h>
#include <stdio.h>

#pragma GCC visibility push(hidden)

typedef struct svc_setting svc_setting;

/* How a row's value is parsed, stored and freed. */
typedef struct svc_kind {
    /* Parses v (non-empty) into base; the row says where (s->off) and the
     * range (s->min, s->max).  0, or -1 with the problem in msg (without
     * the setting's name: the caller adds it). */
    int (*apply)(void *base, const svc_setting *s, const char *v, char *msg,
                 size_t msize);
    /* Frees what apply stored (NULL: nothing to free).  A kind whose
     * release is svc_release_str stores a char *. */
    void (*release)(void *base, const svc_setting *s);
    /* The size of the field (a char *, or a plain value compared and
     * copied byte for byte); 0: not a field of its own (a kind that adds
     * to a list, such as veild's models), never kept by svc_settings_keep */
    size_t size;
} svc_kind;

struct svc_setting {
    const char *name; /* file name; flag is "--" + name */
    const char *metavar;
    const svc_kind *kind;
    size_t off; /* offset of the field in the base struct */
    unsigned long min, max;
    const char *def; /* default, parsed like a value; NULL: unset */
    const char *help;
};

/* A former name of a row, still accepted (never printed). */
typedef struct svc_alias {
    const char *old_name, *name;
} svc_alias;

/* The kinds every program has (the field's type after the colon): */
extern const svc_kind svc_str;   /* char *: any non-empty text */
extern const svc_kind svc_addr;  /* char *: a numeric IPv4 or IPv6 address */
extern const svc_kind svc_level; /* char *: error, warn, info or debug */
extern const svc_kind svc_port;  /* unsigned: 0..65535 */
extern const svc_kind svc_uint;  /* unsigned: min..max */
extern const svc_kind svc_rate;  /* double: > 0, at most 1e6 */
extern const svc_kind svc_size;  /* size_t: bytes, min..max, K M G */
extern const svc_kind svc_bool;  /* int: on/off, true/false, yes/no, 1/0 */
/* char *: a log format, text or json (service/log.h) */
extern const svc_kind svc_format;

#define SVC_KIB 1024ul
#define SVC_MIB (1024ul * 1024ul)
#define SVC_GIB (1024ul * 1024ul * 1024ul)

/* A line of a section, for --help and for messages. */
typedef struct svc_key {
    const char *name, *metavar, *help;
} svc_key;

/* A kind of config-file section, "[NAME ID]" (one per table).  The
 * callbacks keep the section being read in base; each returns 0, or -1
 * with the problem in msg. */
typedef struct svc_section {
    const char *name; /* "model" */
    const char *hint; /* when a key is used outside: "or use model = ..." */
    const svc_key *keys;
    size_t n_keys;
    /* A section begins (id: trimmed, non-empty). */
    int (*open)(void *base, const char *id, char *msg, size_t msize);
    /* One of its keys (key: the keys[] name; value non-empty). */
    int (*set)(void *base, const char *key, const char *value, char *msg,
               size_t msize);
    /* It ends: complete, it joins base; else msg says what it lacks. */
    int (*close)(void *base, char *msg, size_t msize);
    /* It is dropped after an error (also when open or close failed). */
    void (*discard)(void *base);
} svc_section;

typedef struct svc_table {
    const char *program; /* "veild", as in "veild --help lists them" */
    const svc_setting *rows;
    size_t n_rows;
    const svc_section *section; /* NULL: no sections */
    const svc_alias *aliases;   /* former names; may be NULL */
    size_t n_aliases;
} svc_table;

/* Writes one formatted line to err (ignored when err is NULL or err_size
 * 0): how the settings and their users report problems. */
void svc_put_err(char *err, size_t err_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Sets every row with a default (after zeroing nothing: base is the
 * caller's).  A default that fails (no memory) leaves its field unset. */
void svc_settings_defaults(const svc_table *t, void *base);
/* Frees what the rows' kinds stored in base. */
void svc_settings_free(const svc_table *t, void *base);
/* Sets one setting by name, as a flag --NAME VALUE does; '-' and '_' are
 * the same and a leading "--" is allowed.  0, or -1 with "--NAME:
 * problem" (or "unknown option '--NAME' (PROGRAM --help lists them)") in
 * err; err may be NULL. */
int svc_settings_set(const svc_table *t, void *base, const char *name,
                     const char *value, char *err, size_t err_size);
/* Reads a config file: 0, or -1 with "FILE:LINE: problem" in err.  Refuses
 * a file that is not regular or that others may write. */
int svc_settings_load(const svc_table *t, void *base, const char *path,
                      char *err, size_t err_size);
/* For a reload: every row that is not named in live[] (and is a field of
 * its own) and whose value differs between the running settings `now` and
 * the ones just read, `next`, gets now's value back in next (a string
 * copied), and report(ctx, name) is called for it: such a setting needs a
 * restart.  The number kept, or (size_t)-1 when out of memory. */
size_t svc_settings_keep(const svc_table *t, const void *now, void *next,
                         const char *const *live, size_t n_live,
                         void (*report)(void *ctx, const char *name),
                         void *ctx);
/* Prints the table (and the section's keys) for --help. */
void svc_settings_help(const svc_table *t, FILE *out);

/* ---- for a program's own kinds ------------------------------------------ */

/* A value as it may appear in a message: at most 48 characters, anything
 * unprintable shown as '?'; returns buf. */
const char *svc_shown(const char *v, size_t len, char *buf, size_t size);
/* *slot = a copy of v[0..len) (the old value freed).  0, or -1 with "out
 * of memory" in msg. */
int svc_set_str(char **slot, const char *v, size_t len, char *msg,
                size_t msize);
/* Frees the char * field of a row (a release for string kinds). */
void svc_release_str(void *base, const svc_setting *s);
/* 1 for the blanks a value is trimmed of. */
int svc_is_space(char c);

#pragma GCC visibility pop

#endif /* VEIL_SETTINGS_H */
