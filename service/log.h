/* service/log.h: where a veil daemon's log lines go (veild; the coming
 * `veil proxy`).  Not installed; knows nothing of the gateway.
 *
 * One line per event on a file descriptor (standard error), written with
 * one write(2), in the form the operator chose:
 *
 *   text   2026-12-07T11:20:18.123Z veild: info: MESSAGE
 *          (an RFC 3339 time in UTC, with milliseconds)
 *   json   {"time":"2026-12-07T11:20:18.123Z","level":"info",
 *           "program":"veild","msg":"MESSAGE", FIELDS...}
 *          (the fields of veil_logf_fields: method, path, status...)
 *
 * When the descriptor is the journal's stream (systemd sets
 * $JOURNAL_STREAM to its "DEVICE:INODE", sd-daemon(3)), every line starts
 * with its syslog priority, "<3>" for error, "<4>" warn, "<6>" info, "<7>"
 * debug, which journald takes off and keeps as the line's priority
 * (journalctl -p err); a text line then has no time of its own, the
 * journal stamps it.
 *
 * Control characters of a message never reach the log as such: a text
 * line shows them as blanks, JSON escapes them (and bytes that are not
 * UTF-8 become U+FFFD).  The level and the form may change while lines
 * are written (a reload): both are atomic. */
#ifndef VEIL_SVC_LOG_H
#define VEIL_SVC_LOG_H

#include <stdatomic.h>

#include "util.h"

#pragma GCC visibility push(hidden)

typedef enum svc_log_format {
    SVC_LOG_TEXT = 0,
    SVC_LOG_JSON = 1
} svc_log_format;

typedef struct svc_logsink {
    const char *program; /* "veild" */
    int fd;
    int journal;       /* fd is the journal's stream: <N> prefixes */
    atomic_int level;  /* the most verbose level written */
    atomic_int format; /* svc_log_format */
} svc_logsink;

/* A sink on fd (text, info), which looks at $JOURNAL_STREAM once. */
void svc_logsink_init(svc_logsink *s, const char *program, int fd);
/* "error".."debug": the level, or -1. */
int svc_log_level_parse(const char *name);
/* "text" or "json": the form, or -1. */
int svc_log_format_parse(const char *name);
/* Sets the level and the form by name (NULL or an unknown name: kept). */
void svc_logsink_set(svc_logsink *s, const char *level, const char *format);
/* A logger that writes to s: every level goes to it, s filters. */
veil_logger svc_logsink_logger(svc_logsink *s);
/* The callbacks of that logger (ctx: the sink). */
void svc_logsink_line(void *ctx, veil_log_level level, const char *line);
void svc_logsink_fields(void *ctx, veil_log_level level, const char *line,
                        const veil_log_field *fields, size_t n);

#pragma GCC visibility pop

#endif /* VEIL_SVC_LOG_H */
