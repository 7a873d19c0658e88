/* service/log.c: a daemon's log lines on standard error (service/log.h). */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "json_scan.h"
#include "log.h"

static const char *const level_names[] = {"error", "warn", "info", "debug"};
/* syslog priorities (RFC 5424): err, warning, info, debug */
static const char priorities[] = {'3', '4', '6', '7'};

/* The longest line written; a longer one is cut (its JSON stays whole). */
#define LINE_MAX_BYTES 2048

/* 1 when fd is the stream $JOURNAL_STREAM names ("DEVICE:INODE",
 * decimal), as sd-daemon(3) says to check it. */
static int is_journal(int fd)
{
    const char *v = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    char tail;
    struct stat st;

    if (v == NULL || sscanf(v, "%llu:%llu%c", &dev, &ino, &tail) != 2 ||
        fstat(fd, &st) != 0)
        return 0;
    return (unsigned long long)st.st_dev == dev &&
           (unsigned long long)st.st_ino == ino;
}

void svc_logsink_init(svc_logsink *s, const char *program, int fd)
{
    s->program = program;
    s->fd = fd;
    s->journal = is_journal(fd);
    atomic_init(&s->level, VEIL_LOG_INFO);
    atomic_init(&s->format, SVC_LOG_TEXT);
}

int svc_log_level_parse(const char *name)
{
    for (int i = 0; name && i < 4; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

int svc_log_format_parse(const char *name)
{
    if (name && strcmp(name, "text") == 0)
        return SVC_LOG_TEXT;
    if (name && strcmp(name, "json") == 0)
        return SVC_LOG_JSON;
    return -1;
}

void svc_logsink_set(svc_logsink *s, const char *level, const char *format)
{
    int l = svc_log_level_parse(level), f = svc_log_format_parse(format);

    if (l >= 0)
        atomic_store(&s->level, l);
    if (f >= 0)
        atomic_store(&s->format, f);
}

veil_logger svc_logsink_logger(svc_logsink *s)
{
    return (veil_logger){svc_logsink_line, s, VEIL_LOG_DEBUG,
                         svc_logsink_fields};
}

/* ---- building one line ------------------------------------------------- */

typedef struct logline {
    char b[LINE_MAX_BYTES];
    size_t n;
    int full;
} logline;

static void put(logline *l, const char *s, size_t len)
{
    /* room for the closing "}\n" */
    if (l->full || l->n + len + 2 > sizeof l->b) {
        l->full = 1;
        return;
    }
    memcpy(l->b + l->n, s, len);
    l->n += len;
}

static void puts_(logline *l, const char *s)
{
    put(l, s, strlen(s));
}

/* Text: control characters as blanks. */
static void put_text(logline *l, const char *s)
{
    for (; *s; s++) {
        char c = (unsigned char)*s < 0x20 || *s == 0x7f ? ' ' : *s;
        put(l, &c, 1);
    }
}

/* A JSON string, quoted: '"', '\\' and control characters escaped, a byte
 * that is not UTF-8 written as U+FFFD. */
static void put_json(logline *l, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);

    put(l, "\"", 1);
    while (n > 0) {
        char esc[8];
        size_t k = 1;

        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            put(l, esc, 2);
        } else if (*p < 0x20 || *p == 0x7f) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            put(l, esc, 6);
        } else if (*p < 0x80) {
            put(l, (const char *)p, 1);
        } else if ((k = veil_utf8_seq(p, n)) > 0) {
            put(l, (const char *)p, k);
        } else {
            k = 1;
            puts_(l, "\\ufffd");
        }
        p += k;
        n -= k;
    }
    put(l, "\"", 1);
}

/* A field's number: digits, '.', '-' only (else written as a string). */
static int is_number(const char *v)
{
    return v[0] && strspn(v, "0123456789.-") == strlen(v);
}

static void put_time(logline *l)
{
    struct timespec ts;
    struct tm tm;
    char t[40];

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t k = strftime(t, sizeof t, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(t + k, sizeof t - k, ".%03ldZ", ts.tv_nsec / 1000000);
    puts_(l, t);
}

static void write_all(int fd, const char *b, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        b += w;
        n -= (size_t)w;
    }
}

void svc_logsink_fields(void *ctx, veil_log_level level, const char *msg,
                        const veil_log_field *fields, size_t n)
{
    svc_logsink *s = ctx;
    logline l = {.n = 0};

    if ((int)level > atomic_load(&s->level) || (unsigned)level > 3)
        return;
    if (s->journal) {
        char pri[4] = {'<', priorities[level], '>', 0};
        puts_(&l, pri);
    }
    if (atomic_load(&s->format) == SVC_LOG_JSON) {
        puts_(&l, "{\"time\":\"");
        put_time(&l);
        puts_(&l, "\",\"level\":\"");
        puts_(&l, level_names[level]);
        puts_(&l, "\",\"program\":");
        put_json(&l, s->program);
        puts_(&l, ",\"msg\":");
        put_json(&l, msg);
        for (size_t i = 0; i < n; i++) {
            if (fields[i].value == NULL)
                continue;
            puts_(&l, ",");
            put_json(&l, fields[i].name);
            puts_(&l, ":");
            if (fields[i].number && is_number(fields[i].value))
                puts_(&l, fields[i].value);
            else
                put_json(&l, fields[i].value);
        }
        if (l.full) { /* cut: a line that still parses */
            svc_logsink_fields(ctx, level, "(line too long)", NULL, 0);
            return;
        }
        memcpy(l.b + l.n, "}\n", 2);
        l.n += 2;
    } else {
        if (!s->journal) {
            put_time(&l);
            puts_(&l, " ");
        }
        puts_(&l, s->program);
        puts_(&l, ": ");
        puts_(&l, level_names[level]);
        puts_(&l, ": ");
        put_text(&l, msg);
        l.b[l.n++] = '\n'; /* put keeps room for it */
    }
    write_all(s->fd, l.b, l.n);
}

void svc_logsink_line(void *ctx, veil_log_level level, const char *line)
{
    svc_logsink_fields(ctx, level, line, NULL, 0);
}
