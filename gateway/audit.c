/* gateway/audit.c: the audit log (gateway.h, "the audit log";
 * docs/GATEWAY.md has the format).  One JSON object per line, written
 * with one write(2) to a file opened O_APPEND, so lines of requests that
 * end together never mix.  Durability: with audit_fsync each line is
 * followed by fdatasync (a line returned is on disk); without it the
 * kernel writes it back in its own time (a crash of veild loses nothing,
 * a crash of the machine may lose the last seconds).  A reopen (SIGHUP)
 * swaps the descriptor under the lock. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "gateway.h"

struct gw_audit {
    pthread_mutex_t lock; /* fd */
    int fd;
    int fsync_each;
    char *path;
};

/* path opened for appending (made 0600), or -1 with err. */
static int open_log(const char *path, char *err, size_t err_size)
{
    int fd =
        open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600);
    struct stat st;

    if (fd < 0) {
        gw_put_err(err, err_size, "audit_log: cannot open %s: %s", path,
                   strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        gw_put_err(err, err_size, "audit_log: %s is not a regular file", path);
        close(fd);
        return -1;
    }
    return fd;
}

gw_rc gw_audit_open(const char *path, int fsync_each, gw_audit **out, char *err,
                    size_t err_size)
{
    gw_audit *a = calloc(1, sizeof *a);

    *out = NULL;
    if (a == NULL || (a->path = strdup(path)) == NULL) {
        free(a);
        gw_put_err(err, err_size, "out of memory");
        return GW_NOMEM;
    }
    if ((a->fd = open_log(path, err, err_size)) < 0) {
        free(a->path);
        free(a);
        return GW_REFUSED;
    }
    a->fsync_each = fsync_each;
    pthread_mutex_init(&a->lock, NULL);
    *out = a;
    return GW_OK;
}

void gw_audit_free(gw_audit *a)
{
    if (a == NULL)
        return;
    if (a->fsync_each)
        fdatasync(a->fd);
    close(a->fd);
    pthread_mutex_destroy(&a->lock);
    free(a->path);
    free(a);
}

int gw_audit_reopen(gw_audit *a, char *err, size_t err_size)
{
    int fd = open_log(a->path, err, err_size), old;

    if (fd < 0)
        return -1;
    pthread_mutex_lock(&a->lock);
    old = a->fd;
    a->fd = fd;
    pthread_mutex_unlock(&a->lock);
    fdatasync(old);
    close(old);
    return 0;
}

/* RFC 3339 UTC with milliseconds: "2026-12-07T11:20:17.123Z". */
static void now_rfc3339(char *out, size_t size)
{
    struct timespec ts;
    struct tm tm;
    char day[32];

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, size, "%s.%03ldZ", day, ts.tv_nsec / 1000000L);
}

/* The line (malloc'd, with its '\n'), or NULL: no memory. */
static char *line_of(const gw_audit_line *l)
{
    cJSON *j = cJSON_CreateObject();
    char when[48], *text = NULL, *line = NULL;
    int ok;

    now_rfc3339(when, sizeof when);
#define STR_OR_NULL(k, v)                                                      \
    ((v) ? cJSON_AddStringToObject(j, k, v) != NULL                            \
         : cJSON_AddNullToObject(j, k) != NULL)
#define TOKENS(k, v)                                                           \
    ((v) >= 0 ? cJSON_AddNumberToObject(j, k, (double)(v)) != NULL             \
              : cJSON_AddNullToObject(j, k) != NULL)
    ok = j && cJSON_AddStringToObject(j, "time", when) &&
         STR_OR_NULL("key", l->key) && STR_OR_NULL("model", l->model) &&
         STR_OR_NULL("tier", l->tier) && STR_OR_NULL("route", l->route) &&
         STR_OR_NULL("protocol", l->protocol) &&
         cJSON_AddNumberToObject(j, "status", l->status) &&
         TOKENS("prompt_tokens", l->prompt_tokens) &&
         TOKENS("completion_tokens", l->completion_tokens) &&
         STR_OR_NULL("payload_id_sha256", l->payload_sha256) &&
         cJSON_AddNumberToObject(j, "duration_ms",
                                 (double)(long long)(l->seconds * 1e3));
#undef STR_OR_NULL
#undef TOKENS
    if (ok)
        text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (text) {
        size_t n = strlen(text);
        if ((line = malloc(n + 2)) != NULL) {
            memcpy(line, text, n);
            line[n] = '\n';
            line[n + 1] = '\0';
        }
        free(text);
    }
    return line;
}

int gw_audit_write(gw_audit *a, const gw_audit_line *l)
{
    char *line = line_of(l);
    int rc = 0;

    if (line == NULL) {
        errno = ENOMEM;
        return -1;
    }
    size_t n = strlen(line);
    pthread_mutex_lock(&a->lock);
    ssize_t w = write(a->fd, line, n);
    if (w != (ssize_t)n || (a->fsync_each && fdatasync(a->fd) != 0)) {
        if (w >= 0 && w != (ssize_t)n)
            errno = EIO; /* a short write: the disk is full */
        rc = -1;
    }
    pthread_mutex_unlock(&a->lock);
    free(line);
    return rc;
}
