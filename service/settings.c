/* The settings table engine (service/settings.h): values, flags, the
 * config file and --help, for any base struct. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"
#include "settings.h"

#define LINE_MAX_LEN 4096
#define MSG_SIZE 256

#define FIELD(base, s) ((void *)((char *)(base) + (s)->off))

static const char *const levels[] = {"error", "warn", "info", "debug"};

static const struct {
    const char *name;
    int value;
} bools[] = {
    {"on", 1},  {"off", 0}, {"true", 1}, {"false", 0},
    {"yes", 1}, {"no", 0},  {"1", 1},    {"0", 0},
};

/* ---- small helpers ------------------------------------------------------ */

void svc_put_err(char *err, size_t err_size, const char *fmt, ...)
{
    va_list ap;

    if (!err || err_size == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, err_size, fmt, ap);
    va_end(ap);
}

/* Names compare equal when they differ only in '-' versus '_'. */
static int name_eq(const char *a, const char *b)
{
    for (;; a++, b++) {
        char x = *a == '-' ? '_' : *a;
        char y = *b == '-' ? '_' : *b;

        if (x != y)
            return 0;
        if (!x)
            return 1;
    }
}

static const svc_setting *find_setting(const svc_table *t, const char *name)
{
    for (size_t i = 0; i < t->n_aliases; i++)
        if (name_eq(t->aliases[i].old_name, name)) {
            name = t->aliases[i].name;
            break;
        }
    for (size_t i = 0; i < t->n_rows; i++)
        if (name_eq(t->rows[i].name, name))
            return &t->rows[i];
    return NULL;
}

/* "--" and the name with dashes, then " METAVAR": a flag as printed. */
static void flag_text(const svc_setting *s, char *out, size_t size)
{
    size_t n = (size_t)snprintf(out, size, "--%s %s", s->name, s->metavar);

    for (size_t i = 2; i < n && i < size && out[i] != ' '; i++)
        if (out[i] == '_')
            out[i] = '-';
}

static const svc_key *find_key(const svc_table *t, const char *name)
{
    for (size_t i = 0; t->section && i < t->section->n_keys; i++)
        if (name_eq(t->section->keys[i].name, name))
            return &t->section->keys[i];
    return NULL;
}

const char *svc_shown(const char *v, size_t len, char *buf, size_t size)
{
    size_t n = 0, i;

    for (i = 0; i < len && n + 4 < size && i < 48; i++) {
        unsigned char c = (unsigned char)v[i];

        buf[n++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    if (i < len && n + 4 < size) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
    return buf;
}

static const char *shown_str(const char *v, char *buf, size_t size)
{
    return svc_shown(v, strlen(v), buf, size);
}

int svc_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' ||
           c == '\f';
}

/* Trims s in place; returns the first non-space character. */
static char *trim(char *s)
{
    size_t n;

    while (svc_is_space(*s))
        s++;
    n = strlen(s);
    while (n > 0 && svc_is_space(s[n - 1]))
        s[--n] = '\0';
    return s;
}

int svc_set_str(char **slot, const char *v, size_t len, char *msg, size_t msize)
{
    char *copy = strndup(v, len);

    if (!copy) {
        svc_put_err(msg, msize, "out of memory");
        return -1;
    }
    free(*slot);
    *slot = copy;
    return 0;
}

void svc_release_str(void *base, const svc_setting *s)
{
    char **slot = FIELD(base, s);

    free(*slot);
    *slot = NULL;
}

/* A size as a value would give it: "1K", "64G", "0". */
static const char *size_text(unsigned long n, char out[24])
{
    static const struct {
        unsigned long mult;
        const char *suffix;
    } units[] = {{SVC_GIB, "G"}, {SVC_MIB, "M"}, {SVC_KIB, "K"}};

    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (n >= units[i].mult && n % units[i].mult == 0) {
            snprintf(out, 24, "%lu%s", n / units[i].mult, units[i].suffix);
            return out;
        }
    snprintf(out, 24, "%lu", n);
    return out;
}

/* Decimal digits only (no sign, no space, no 0x), no overflow. */
static int parse_ulong(const char *v, size_t len, unsigned long *out,
                       size_t *used)
{
    unsigned long n = 0;
    size_t i;

    for (i = 0; i < len && v[i] >= '0' && v[i] <= '9'; i++) {
        unsigned d = (unsigned)(v[i] - '0');

        if (n > (~0ul - d) / 10)
            return -1;
        n = n * 10 + d;
    }
    if (i == 0)
        return -1;
    *out = n;
    *used = i;
    return 0;
}

/* ---- the kinds ---------------------------------------------------------- */

static int apply_str(void *base, const svc_setting *s, const char *v, char *msg,
                     size_t msize)
{
    return svc_set_str(FIELD(base, s), v, strlen(v), msg, msize);
}

static int apply_addr(void *base, const svc_setting *s, const char *v,
                      char *msg, size_t msize)
{
    unsigned char addr[16];
    char b[64];

    if (inet_pton(AF_INET, v, addr) != 1 && inet_pton(AF_INET6, v, addr) != 1) {
        svc_put_err(msg, msize,
                    "'%s' is not an IP address (such as 127.0.0.1, ::1, "
                    "0.0.0.0)",
                    shown_str(v, b, sizeof b));
        return -1;
    }
    return apply_str(base, s, v, msg, msize);
}

static int apply_level(void *base, const svc_setting *s, const char *v,
                       char *msg, size_t msize)
{
    char b[64];

    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++)
        if (strcmp(v, levels[i]) == 0)
            return apply_str(base, s, v, msg, msize);
    svc_put_err(msg, msize,
                "'%s' is not a log level (error, warn, info, debug)",
                shown_str(v, b, sizeof b));
    return -1;
}

static int apply_log_format(void *base, const svc_setting *s, const char *v,
                            char *msg, size_t msize)
{
    char b[64];

    if (svc_log_format_parse(v) >= 0)
        return apply_str(base, s, v, msg, msize);
    svc_put_err(msg, msize, "'%s' is not a log format (text, json)",
                shown_str(v, b, sizeof b));
    return -1;
}

static int apply_port(void *base, const svc_setting *s, const char *v,
                      char *msg, size_t msize)
{
    size_t len = strlen(v), used;
    unsigned long n;
    char b[64];

    if (parse_ulong(v, len, &n, &used) != 0 || used != len || n > 65535) {
        svc_put_err(msg, msize, "'%s' is not a port (1-65535, or 0)",
                    shown_str(v, b, sizeof b));
        return -1;
    }
    *(unsigned *)FIELD(base, s) = (unsigned)n;
    return 0;
}

static int apply_uint(void *base, const svc_setting *s, const char *v,
                      char *msg, size_t msize)
{
    size_t len = strlen(v), used;
    unsigned long n;
    char b[64];

    if (parse_ulong(v, len, &n, &used) != 0 || used != len || n < s->min ||
        n > s->max) {
        svc_put_err(msg, msize, "'%s' is not a whole number from %lu to %lu",
                    shown_str(v, b, sizeof b), s->min, s->max);
        return -1;
    }
    *(unsigned *)FIELD(base, s) = (unsigned)n;
    return 0;
}

static int apply_rate(void *base, const svc_setting *s, const char *v,
                      char *msg, size_t msize)
{
    char *end = NULL, b[64];
    double d;

    /* plain decimal only: no sign, no hex, no inf or nan */
    errno = 0;
    d = ((v[0] >= '0' && v[0] <= '9') || v[0] == '.') &&
                v[strspn(v, "0123456789.eE+-")] == '\0'
            ? strtod(v, &end)
            : -1;
    if (!end || *end || errno || !(d > 0 && d <= 1e6)) {
        svc_put_err(msg, msize,
                    "'%s' is not a rate (requests per second: a number "
                    "above 0, at most 1000000)",
                    shown_str(v, b, sizeof b));
        return -1;
    }
    *(double *)FIELD(base, s) = d;
    return 0;
}

static int apply_size(void *base, const svc_setting *s, const char *v,
                      char *msg, size_t msize)
{
    static const struct {
        char c;
        unsigned long mult;
    } suffixes[] = {{'k', SVC_KIB}, {'K', SVC_KIB}, {'m', SVC_MIB},
                    {'M', SVC_MIB}, {'g', SVC_GIB}, {'G', SVC_GIB}};
    size_t len = strlen(v), used = 0;
    unsigned long n = 0, mult = 1;
    int ok = parse_ulong(v, len, &n, &used) == 0;
    char b[64], lo[24], hi[24];

    if (ok && used + 1 == len) {
        ok = 0;
        for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++)
            if (v[used] == suffixes[i].c) {
                mult = suffixes[i].mult;
                ok = 1;
            }
    } else if (used != len) {
        ok = 0;
    }
    if (!ok || n > s->max / mult || n * mult < s->min) {
        svc_put_err(msg, msize,
                    "'%s' is not a size from %s to %s (bytes, or with a "
                    "suffix K, M or G)",
                    shown_str(v, b, sizeof b), size_text(s->min, lo),
                    size_text(s->max, hi));
        return -1;
    }
    *(size_t *)FIELD(base, s) = (size_t)(n * mult);
    return 0;
}

static int apply_bool(void *base, const svc_setting *s, const char *v,
                      char *msg, size_t msize)
{
    char b[64];

    for (size_t i = 0; i < sizeof bools / sizeof bools[0]; i++)
        if (strcmp(v, bools[i].name) == 0) {
            *(int *)FIELD(base, s) = bools[i].value;
            return 0;
        }
    svc_put_err(msg, msize, "'%s' is not on or off", shown_str(v, b, sizeof b));
    return -1;
}

const svc_kind svc_str = {apply_str, svc_release_str, sizeof(char *)};
const svc_kind svc_addr = {apply_addr, svc_release_str, sizeof(char *)};
const svc_kind svc_level = {apply_level, svc_release_str, sizeof(char *)};
const svc_kind svc_format = {apply_log_format, svc_release_str, sizeof(char *)};
const svc_kind svc_port = {apply_port, NULL, sizeof(unsigned)};
const svc_kind svc_uint = {apply_uint, NULL, sizeof(unsigned)};
const svc_kind svc_rate = {apply_rate, NULL, sizeof(double)};
const svc_kind svc_size = {apply_size, NULL, sizeof(size_t)};
const svc_kind svc_bool = {apply_bool, NULL, sizeof(int)};

/* Applies value to row s; 0, or -1 with the problem in msg. */
static int apply(void *base, const svc_setting *s, const char *v, char *msg,
                 size_t msize)
{
    if (!*v) {
        svc_put_err(msg, msize, "needs a value");
        return -1;
    }
    return s->kind->apply(base, s, v, msg, msize);
}

/* ---- the table ---------------------------------------------------------- */

void svc_settings_defaults(const svc_table *t, void *base)
{
    char msg[MSG_SIZE];

    /* Defaults are parsed like any value; they are known to be valid, so
     * the only possible failure is out of memory, which leaves a string
     * NULL (the program's check then fails). */
    for (size_t i = 0; i < t->n_rows; i++)
        if (t->rows[i].def)
            (void)apply(base, &t->rows[i], t->rows[i].def, msg, sizeof msg);
}

/* 1 when row s holds the same value in a and b. */
static int same_value(const svc_setting *s, const void *a, const void *b)
{
    const char *pa = (const char *)a + s->off, *pb = (const char *)b + s->off;

    if (s->kind->release == svc_release_str) {
        const char *x = *(char *const *)(const void *)pa;
        const char *y = *(char *const *)(const void *)pb;
        return x == y || (x && y && strcmp(x, y) == 0);
    }
    return memcmp(pa, pb, s->kind->size) == 0;
}

size_t svc_settings_keep(const svc_table *t, const void *now, void *next,
                         const char *const *live, size_t n_live,
                         void (*report)(void *ctx, const char *name), void *ctx)
{
    size_t kept = 0;

    for (size_t i = 0; i < t->n_rows; i++) {
        const svc_setting *s = &t->rows[i];
        char *slot = (char *)next + s->off;
        int is_live = s->kind->size == 0;

        for (size_t j = 0; !is_live && j < n_live; j++)
            is_live = name_eq(s->name, live[j]);
        if (is_live || same_value(s, now, next))
            continue;
        if (report)
            report(ctx, s->name);
        kept++;
        if (s->kind->release == svc_release_str) {
            const char *v =
                *(char *const *)(const void *)((const char *)now + s->off);
            char *copy = v ? strdup(v) : NULL;

            if (v && copy == NULL)
                return (size_t)-1;
            free(*(char **)(void *)slot);
            *(char **)(void *)slot = copy;
        } else {
            memcpy(slot, (const char *)now + s->off, s->kind->size);
        }
    }
    return kept;
}

void svc_settings_free(const svc_table *t, void *base)
{
    for (size_t i = 0; i < t->n_rows; i++)
        if (t->rows[i].kind->release)
            t->rows[i].kind->release(base, &t->rows[i]);
}

int svc_settings_set(const svc_table *t, void *base, const char *name,
                     const char *value, char *err, size_t err_size)
{
    const svc_setting *s;
    char msg[MSG_SIZE], b[64];

    if (!base || !name) {
        svc_put_err(err, err_size, "no setting named");
        return -1;
    }
    if (strncmp(name, "--", 2) == 0)
        name += 2;
    s = find_setting(t, name);
    if (!s) {
        svc_put_err(err, err_size,
                    "unknown option '--%s' (%s --help lists them)",
                    shown_str(name, b, sizeof b), t->program);
        return -1;
    }
    char flag[128];

    flag_text(s, flag, sizeof flag);
    flag[strcspn(flag, " ")] = '\0'; /* the flag as --help prints it */
    if (!value) {
        svc_put_err(err, err_size, "%s: needs a value", flag);
        return -1;
    }
    if (apply(base, s, value, msg, sizeof msg) != 0) {
        svc_put_err(err, err_size, "%s: %s", flag, msg);
        return -1;
    }
    return 0;
}

/* ---- the file ----------------------------------------------------------- */

/* Loader state: the section being read. */
typedef struct section {
    int open;
    unsigned line; /* of its header */
    char id[LINE_MAX_LEN + 1];
} section;

/* Ends the open section ("FILE:LINE: problem" with the header's line). */
static int section_close(const svc_table *t, void *base, section *sec,
                         const char *path, char *err, size_t err_size)
{
    char msg[MSG_SIZE];

    if (!sec->open)
        return 0;
    sec->open = 0;
    if (t->section->close(base, msg, sizeof msg) != 0) {
        svc_put_err(err, err_size, "%s:%u: %s", path, sec->line, msg);
        t->section->discard(base);
        return -1;
    }
    return 0;
}

static int section_open(const svc_table *t, void *base, section *sec,
                        char *inner, unsigned line, char *msg, size_t msize)
{
    const svc_section *k = t->section;
    size_t n = k ? strlen(k->name) : 0;
    char *id;
    char b[64];

    if (!k || strncmp(inner, k->name, n) != 0 ||
        (inner[n] && !svc_is_space(inner[n]))) {
        if (k)
            svc_put_err(msg, msize, "unknown section '[%s]' (expected [%s ID])",
                        shown_str(inner, b, sizeof b), k->name);
        else
            svc_put_err(msg, msize, "unknown section '[%s]'",
                        shown_str(inner, b, sizeof b));
        return -1;
    }
    id = trim(inner + n);
    if (!*id) {
        svc_put_err(msg, msize, "[%s] needs a %s ID: [%s ID]", k->name, k->name,
                    k->name);
        return -1;
    }
    if (k->open(base, id, msg, msize) != 0)
        return -1;
    snprintf(sec->id, sizeof sec->id, "%s", id);
    sec->open = 1;
    sec->line = line;
    return 0;
}

/* A NAME = VALUE line inside a section. */
static int section_line(const svc_table *t, void *base, const section *sec,
                        const char *name, const char *value, char *msg,
                        size_t msize)
{
    const svc_section *k = t->section;
    const svc_key *key = find_key(t, name);
    char b[64], list[MSG_SIZE] = "";

    if (key) {
        if (!*value) {
            svc_put_err(msg, msize, "%s: needs a value", name);
            return -1;
        }
        return k->set(base, key->name, value, msg, msize);
    }
    if (find_setting(t, name)) {
        svc_put_err(msg, msize,
                    "'%s' is a global setting: put it before the first [%s] "
                    "section",
                    shown_str(name, b, sizeof b), k->name);
        return -1;
    }
    for (size_t i = 0; i < k->n_keys; i++) {
        size_t n = strlen(list);

        snprintf(list + n, sizeof list - n, "%s%s", i ? ", " : "",
                 k->keys[i].name);
    }
    svc_put_err(msg, msize, "unknown setting '%s' in [%s %s] (%s)",
                shown_str(name, b, sizeof b), k->name, sec->id, list);
    return -1;
}

/* One line (trimmed, not a comment); 0 or -1 with the problem in msg. */
static int load_line(const svc_table *t, void *base, section *sec, char *s,
                     unsigned line, char *msg, size_t msize)
{
    const svc_setting *st;
    char *eq, *name, *value;
    char b[64];
    size_t n = strlen(s);

    if (s[0] == '[') {
        if (s[n - 1] != ']') {
            svc_put_err(msg, msize, "a section header ends with ']'");
            return -1;
        }
        s[n - 1] = '\0';
        return section_open(t, base, sec, trim(s + 1), line, msg, msize);
    }
    eq = strchr(s, '=');
    if (!eq) {
        svc_put_err(msg, msize, "expected NAME = VALUE");
        return -1;
    }
    *eq = '\0';
    name = trim(s);
    /* a '#' after a blank starts a comment, on a value's line too */
    for (char *c = eq + 1; *c; c++)
        if (*c == '#' && c > eq + 1 && (c[-1] == ' ' || c[-1] == '\t')) {
            *c = '\0';
            break;
        }
    value = trim(eq + 1);
    if (!*name) {
        svc_put_err(msg, msize, "expected NAME = VALUE");
        return -1;
    }
    if (sec->open)
        return section_line(t, base, sec, name, value, msg, msize);
    st = find_setting(t, name);
    if (!st) {
        if (find_key(t, name))
            svc_put_err(msg, msize, "'%s' belongs in a [%s ID] section (%s)",
                        shown_str(name, b, sizeof b), t->section->name,
                        t->section->hint);
        else
            svc_put_err(msg, msize, "unknown setting '%s'",
                        shown_str(name, b, sizeof b));
        return -1;
    }
    if (apply(base, st, value, msg, msize) != 0) {
        char tmp[MSG_SIZE];

        snprintf(tmp, sizeof tmp, "%s", msg);
        svc_put_err(msg, msize, "%s: %s", st->name, tmp);
        return -1;
    }
    return 0;
}

/* Opens path for reading: a regular file that others may not write. */
static FILE *open_file(const char *path, char *err, size_t err_size)
{
    FILE *f = fopen(path, "re");
    struct stat st;

    if (!f) {
        svc_put_err(err, err_size, "%s: %s", path, strerror(errno));
        return NULL;
    }
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        svc_put_err(err, err_size, "%s: not a regular file", path);
        fclose(f);
        return NULL;
    }
    /* It says which keys and which peers to trust. */
    if (st.st_mode & S_IWOTH) {
        svc_put_err(err, err_size, "%s: writable by others (chmod o-w)", path);
        fclose(f);
        return NULL;
    }
    return f;
}

/* One more problem into err: the first as it is, each later one on a
 * line of its own (as long as err has room); *rc becomes -1. */
static void problem(char *err, size_t err_size, int *rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void problem(char *err, size_t err_size, int *rc, const char *fmt, ...)
{
    size_t used = *rc == 0 || err == NULL ? 0 : strlen(err);
    va_list ap;

    if (err != NULL && err_size > used + 1) {
        if (used)
            err[used++] = '\n';
        va_start(ap, fmt);
        vsnprintf(err + used, err_size - used, fmt, ap);
        va_end(ap);
    }
    *rc = -1;
}

/* Ends the open section: checked (a problem into err), or, when one of
 * its lines was already refused (bad), dropped without more words. */
static void section_end(const svc_table *t, void *base, section *sec, int bad,
                        const char *path, char *err, size_t err_size, int *rc)
{
    char sub[MSG_SIZE];

    if (sec->open && bad) {
        sec->open = 0;
        t->section->discard(base);
    } else if (section_close(t, base, sec, path, sub, sizeof sub) != 0) {
        problem(err, err_size, rc, "%s", sub);
    }
}

/* The lines of f, every one of them: 0, or -1 with each problem as
 * "FILE:LINE: problem" on a line of err.  A problem does not cascade: the
 * lines of a section whose header was refused are skipped, and a section
 * with a refused line is not checked again as a whole. */
static int load_lines(const svc_table *t, void *base, FILE *f, section *sec,
                      const char *path, char *err, size_t err_size)
{
    char *buf = NULL, msg[MSG_SIZE];
    size_t cap = 0;
    ssize_t got;
    unsigned line = 0;
    int rc = 0, skip = 0, bad = 0;

    while ((got = getline(&buf, &cap, f)) >= 0) {
        char *s;

        line++;
        if ((size_t)got > LINE_MAX_LEN) {
            problem(err, err_size, &rc,
                    "%s:%u: line too long (at most %d bytes)", path, line,
                    LINE_MAX_LEN);
            bad = 1;
        } else if (strlen(buf) != (size_t)got) {
            problem(err, err_size, &rc, "%s:%u: contains a NUL byte", path,
                    line);
            bad = 1;
        } else if (!*(s = trim(buf)) || *s == '#') {
            continue;
        } else if (*s == '[') {
            section_end(t, base, sec, bad, path, err, err_size, &rc);
            bad = skip = 0;
            if (load_line(t, base, sec, s, line, msg, sizeof msg) != 0) {
                problem(err, err_size, &rc, "%s:%u: %s", path, line, msg);
                skip = 1;
            }
        } else if (!skip &&
                   load_line(t, base, sec, s, line, msg, sizeof msg) != 0) {
            problem(err, err_size, &rc, "%s:%u: %s", path, line, msg);
            bad = 1;
        }
    }
    section_end(t, base, sec, bad, path, err, err_size, &rc);
    if (rc == 0 && ferror(f)) {
        svc_put_err(err, err_size, "%s: %s", path, strerror(errno));
        rc = -1;
    }
    free(buf);
    return rc;
}

int svc_settings_load(const svc_table *t, void *base, const char *path,
                      char *err, size_t err_size)
{
    FILE *f;
    section *sec;
    int rc;

    if (!base || !path) {
        svc_put_err(err, err_size, "no config file named");
        return -1;
    }
    if (!(f = open_file(path, err, err_size)))
        return -1;
    if (!(sec = calloc(1, sizeof *sec))) {
        svc_put_err(err, err_size, "out of memory");
        fclose(f);
        return -1;
    }
    rc = load_lines(t, base, f, sec, path, err, err_size);
    if (sec->open)
        t->section->discard(base);
    free(sec);
    fclose(f);
    return rc;
}

/* ---- --help ------------------------------------------------------------- */

#define HELP_COL 30
#define HELP_WIDTH 79

/* Prints "  left", then text wrapped into the column from HELP_COL. */
static void help_row(FILE *out, const char *left, const char *text,
                     const char *def)
{
    int col = fprintf(out, "  %s", left);
    char buf[512];
    const char *p = buf;

    if (col < 0)
        return;
    if (def)
        snprintf(buf, sizeof buf, "%s (default:\x1f%s)", text, def);
    else
        snprintf(buf, sizeof buf, "%s", text);
    if (col >= HELP_COL) {
        fputc('\n', out);
        col = 0;
    }
    while (*p) {
        size_t w = strcspn(p, " ");

        if (col > HELP_COL && col + 1 + (int)w > HELP_WIDTH) {
            fputc('\n', out);
            col = 0;
        }
        if (col < HELP_COL) {
            fprintf(out, "%*s", HELP_COL - col, "");
            col = HELP_COL;
        } else {
            fputc(' ', out);
            col++;
        }
        for (size_t i = 0; i < w; i++) /* \x1f: a space not to break at */
            fputc(p[i] == '\x1f' ? ' ' : p[i], out);
        col += (int)w;
        p += w;
        while (*p == ' ')
            p++;
    }
    fputc('\n', out);
}

void svc_settings_help(const svc_table *t, FILE *out)
{
    const svc_section *k = t->section;
    char left[128];

    fprintf(out, "Settings: flags --NAME VALUE, or \"NAME = VALUE\" lines in "
                 "the config file\n"
                 "with '_' for '-' (--tls-cert is tls_cert; either spelling "
                 "works in both);\nflags override the file:\n");
    for (size_t i = 0; i < t->n_rows; i++) {
        flag_text(&t->rows[i], left, sizeof left);
        help_row(out, left, t->rows[i].help, t->rows[i].def);
    }
    if (!k)
        return;
    fprintf(out,
            "A %s may also be a section of the config file:\n"
            "  [%s ID]\n",
            k->name, k->name);
    for (size_t i = 0; i < k->n_keys; i++) {
        snprintf(left, sizeof left, "%s = %s", k->keys[i].name,
                 k->keys[i].metavar);
        help_row(out, left, k->keys[i].help, NULL);
    }
}
