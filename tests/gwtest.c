/* See gwtest.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <cjson/cJSON.h>

#include "gwtest.h"
#include "testutil.h"

#define MAX_ARGS 64

void gt_stop_ok(tu_proc *p)
{
    CU_ASSERT_TRUE(tu_proc_stop_ok(p));
}

int gt_mock_start(tu_proc *p, const char *name)
{
    char exe[600], port_file[700];
    const char *argv[4];

    snprintf(exe, sizeof exe, "%s/tests/mock-upstream",
             tu_env("VEIL_BUILDDIR"));
    snprintf(port_file, sizeof port_file, "%s/%s.port", tu_env("VEIL_TEST_DIR"),
             name);
    argv[0] = exe;
    argv[1] = "--port-file";
    argv[2] = port_file;
    argv[3] = NULL;
    return tu_proc_start(p, NULL, name, argv, port_file, TU_LOG_FRESH);
}

int gt_veild_start(tu_proc *p, const char *name, const char *const *base,
                   const char *const *extra, unsigned flags)
{
    char exe[600], port_file[700], state_dir[700];
    const char *argv[MAX_ARGS];
    size_t n = 0;

    snprintf(exe, sizeof exe, "%s/veild", tu_env("VEIL_BUILDDIR"));
    snprintf(port_file, sizeof port_file, "%s/%s.port", tu_env("VEIL_TEST_DIR"),
             name);
    /* a state directory of its own: the default (/var/lib/veild) is the
     * host's, and one veild at a time may use it; a small replay register
     * in it (the default is 83 MB) */
    snprintf(state_dir, sizeof state_dir, "%s/%s.state",
             tu_env("VEIL_TEST_DIR"), name);
    argv[n++] = exe;
    argv[n++] = "--port";
    argv[n++] = "0";
    argv[n++] = "--port-file";
    argv[n++] = port_file;
    argv[n++] = "--state-dir";
    argv[n++] = state_dir;
    argv[n++] = "--replay-capacity";
    argv[n++] = "65536";
    for (size_t i = 0; base && base[i] && n < MAX_ARGS - 1; i++)
        argv[n++] = base[i];
    for (size_t i = 0; extra && extra[i] && n < MAX_ARGS - 1; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    return tu_proc_start(p, NULL, name, argv, port_file, flags);
}

void gt_answer_free(gt_answer *a)
{
    free(a->body);
    memset(a, 0, sizeof *a);
}

void gt_read_answer(int fd, gt_answer *a)
{
    size_t cap = 65536, got = 0, want = 0, head_len = 0;
    char *buf = malloc(cap + 1);

    memset(a, 0, sizeof *a);
    if (buf == NULL)
        return;
    for (;;) {
        ssize_t n;

        if (got == cap) {
            char *b = realloc(buf, 2 * cap + 1);

            if (b == NULL)
                break;
            buf = b;
            cap *= 2;
        }
        n = recv(fd, buf + got, cap - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
        buf[got] = '\0';
        if (head_len == 0) {
            char *end = strstr(buf, "\r\n\r\n");
            const char *cl;

            if (end == NULL)
                continue;
            head_len = (size_t)(end + 4 - buf);
            snprintf(a->head, sizeof a->head, "%.*s", (int)head_len, buf);
            cl = strcasestr(a->head, "\r\nContent-Length:");
            want = cl ? strtoul(cl + 17, NULL, 10) : 0;
        }
        if (got - head_len >= want)
            break;
    }
    buf[got] = '\0';
    if (head_len && strncmp(buf, "HTTP/1.", 7) == 0) {
        a->status = (int)strtol(buf + 9, NULL, 10);
        a->len = got - head_len;
        a->whole = a->len >= want;
        a->body = malloc(a->len + 1);
        if (a->body) {
            memcpy(a->body, buf + head_len, a->len);
            a->body[a->len] = '\0';
        }
    }
    free(buf);
}

const char *gt_head_value(const gt_answer *a, const char *name, char *out,
                          size_t size)
{
    char pat[64];
    const char *h, *e;

    snprintf(pat, sizeof pat, "\r\n%s:", name);
    out[0] = '\0';
    if ((h = strcasestr(a->head, pat)) == NULL)
        return out;
    h += strlen(pat);
    while (*h == ' ')
        h++;
    e = strstr(h, "\r\n");
    snprintf(out, size, "%.*s", e ? (int)(e - h) : 0, h);
    return out;
}

double gt_mock_requests(const tu_proc *mock)
{
    static const char req[] =
        "GET /mock/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    int fd = tu_tcp_connect(NULL, mock->port, 0, 60);
    double n = -1;
    gt_answer a;

    if (fd < 0)
        return -1;
    if (tu_send_all(fd, req, sizeof req - 1) == 0) {
        gt_read_answer(fd, &a);
        if (a.status == 200) {
            cJSON *j = cJSON_Parse(a.body);
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "requests");

            if (cJSON_IsNumber(v))
                n = v->valuedouble;
            cJSON_Delete(j);
        }
        gt_answer_free(&a);
    }
    close(fd);
    return n;
}
