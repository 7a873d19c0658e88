/* service/http_reply.c: the answers of the HTTP layer (service/http.h):
 * svc_fail and friends, JSON and text bodies, prebuilt responses, queued
 * to the request's connection or, for an injected request, captured. */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_int.h"

struct svc_response {
    struct MHD_Response *resp;
    char *type, *body; /* what an injected request's capture takes */
    size_t len;
};

/* A header an answer may carry: a name without blanks or line breaks, a
 * value without line breaks (the same on both paths). */
static int header_ok(const char *name, const char *value)
{
    return name && value && name[0] && !strpbrk(name, " \t\r\n:") &&
           !strpbrk(value, "\r\n");
}

const char *svc_reply_cache(const struct svc_reply *a)
{
    for (size_t i = 0; a->headers && a->headers[i]; i += 2)
        if (strcasecmp(a->headers[i], MHD_HTTP_HEADER_CACHE_CONTROL) == 0)
            return a->headers[i + 1];
    return "no-store";
}

/* The answer a as a libmicrohttpd response (a->owned given over): 0,
 * -1 when it could not be made, -2 when MHD refused a header. */
static int mhd_response(const struct svc_reply *a, struct MHD_Response **out)
{
    struct MHD_Response *resp =
        a->owned ? MHD_create_response_from_buffer(a->len, a->owned,
                                                   MHD_RESPMEM_MUST_FREE)
                 : MHD_create_response_from_buffer(a->len, (void *)a->body,
                                                   MHD_RESPMEM_MUST_COPY);
    *out = NULL;
    if (resp == NULL) {
        free(a->owned);
        return -1;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, a->type);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL,
                            svc_reply_cache(a));
    for (size_t i = 0; a->headers && a->headers[i]; i += 2)
        if (strcasecmp(a->headers[i], MHD_HTTP_HEADER_CACHE_CONTROL) != 0 &&
            MHD_add_response_header(resp, a->headers[i], a->headers[i + 1]) !=
                MHD_YES) {
            MHD_destroy_response(resp);
            return -2;
        }
    *out = resp;
    return 0;
}

/* Queues the answer with the status, or captures it (r->out); at most one
 * answer a request.  0; -1 when it could not be made (nothing queued: the
 * connection closes); -2 when a header was refused (nothing queued). */
static int queue(svc_req *r, int status, const struct svc_reply *a)
{
    struct MHD_Response *resp = a->pre ? a->pre->resp : NULL;
    int rc = 0;

    for (size_t i = 0; a->headers && a->headers[i]; i += 2)
        if (!header_ok(a->headers[i], a->headers[i + 1]))
            rc = -2;
    if (r->answered || rc) {
        free(a->owned);
        return rc;
    }
    if (r->out)
        rc = svc_capture(r, status, a);
    else if (resp == NULL)
        rc = mhd_response(a, &resp);
    if (rc == 0 && r->out == NULL) {
        enum MHD_Result ok = MHD_queue_response(r->c, (unsigned)status, resp);
        if (a->pre == NULL)
            MHD_destroy_response(resp);
        rc = ok == MHD_YES ? 0 : -1;
    }
    if (rc == 0) {
        r->answered = 1;
        r->status = status;
    } else if (rc == -1) {
        r->queue_failed = 1;
    }
    return rc;
}

/* A {"detail": "..."} answer with Retry-After (retry_s not 0), or with
 * the one header `extra` (a name, value pair) when it is not NULL. */
static void detail_with(svc_req *r, int status, unsigned retry_s,
                        const char *const *extra, const char *text)
{
    cJSON *j = cJSON_CreateObject();
    char *body = NULL, v[16];
    const char *retry[] = {MHD_HTTP_HEADER_RETRY_AFTER, v, NULL};
    const char *const *headers = retry_s ? retry : extra;

    if (j && cJSON_AddStringToObject(j, "detail", text))
        body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    snprintf(v, sizeof v, "%u", retry_s);
    queue(r, status,
          &(struct svc_reply){.type = "application/json",
                              .body = body ? body : "{}",
                              .len = body ? strlen(body) : 2,
                              .headers = headers});
    free(body);
}

static void detail(svc_req *r, int status, unsigned retry_s, const char *text)
{
    detail_with(r, status, retry_s, NULL, text);
}

void svc_fail_allow(svc_req *r, const char *allow)
{
    const char *const h[] = {MHD_HTTP_HEADER_ALLOW, allow, NULL};
    detail_with(r, 405, 0, h, "method not allowed");
}

static void fail_v(svc_req *r, int status, unsigned retry_s, const char *fmt,
                   va_list ap) __attribute__((format(printf, 4, 0)));

static void fail_v(svc_req *r, int status, unsigned retry_s, const char *fmt,
                   va_list ap)
{
    char text[512];

    vsnprintf(text, sizeof text, fmt, ap);
    detail(r, status, retry_s, text);
}

void svc_fail(svc_req *r, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fail_v(r, status, 0, fmt, ap);
    va_end(ap);
}

void svc_fail_retry(svc_req *r, int status, unsigned retry_s, const char *fmt,
                    ...)
{
    va_list ap;
    va_start(ap, fmt);
    fail_v(r, status, retry_s, fmt, ap);
    va_end(ap);
}

void svc_json(svc_req *r, int status, cJSON *j)
{
    char *body = j ? cJSON_PrintUnformatted(j) : NULL;

    cJSON_Delete(j);
    if (body == NULL) {
        svc_fail(r, 500, "out of memory");
        return;
    }
    queue(r, status,
          &(struct svc_reply){.type = "application/json",
                              .body = body,
                              .len = strlen(body),
                              .owned = body});
}

void svc_text(svc_req *r, int status, const char *type, const char *body,
              size_t len)
{
    queue(r, status,
          &(struct svc_reply){.type = type, .body = body, .len = len});
}

int svc_send(svc_req *r, int status, const char *type, char *body, size_t len,
             const char *const *headers)
{
    r->answer_len = len; /* held until sent: counted in body_mem */
    return queue(r, status,
                 &(struct svc_reply){.type = type,
                                     .body = body,
                                     .len = len,
                                     .owned = body,
                                     .headers = headers});
}

svc_response *svc_response_new(const char *type, const char *body, size_t len)
{
    svc_response *p = calloc(1, sizeof *p);
    struct svc_reply a = {.type = type, .body = body, .len = len};

    if (p && ((p->type = strdup(type)) == NULL ||
              (p->body = malloc(len + 1)) == NULL ||
              mhd_response(&a, &p->resp) != 0)) {
        svc_response_free(p);
        return NULL;
    }
    if (p) {
        if (len)
            memcpy(p->body, body, len);
        p->body[len] = '\0';
        p->len = len;
    }
    return p;
}

void svc_response_free(svc_response *p)
{
    if (p) {
        if (p->resp)
            MHD_destroy_response(p->resp);
        free(p->type);
        free(p->body);
        free(p);
    }
}

void svc_send_prebuilt(svc_req *r, int status, svc_response *p)
{
    if (p == NULL) { /* no memory for it at start */
        if (!r->answered)
            r->queue_failed = 1;
        return;
    }
    queue(r, status,
          &(struct svc_reply){
              .type = p->type, .body = p->body, .len = p->len, .pre = p});
}
