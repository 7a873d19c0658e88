/* service/http_inject.c: a request without a socket (svc_http_inject,
 * service/http.h).  The request goes through http.c's steps as
 * libmicrohttpd's callbacks would take it; what is done here is only what
 * libmicrohttpd does on the other path: the URL split into path and
 * query and percent-decoded, the headers looked up, Content-Length made
 * from the body, and the answer captured instead of sent. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_int.h"

/* The value of the first of n pairs named name, case ignored (as
 * libmicrohttpd looks them up). */
static const char *pair_value(const char *const *pairs, size_t n,
                              const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcasecmp(pairs[2 * i], name) == 0)
            return pairs[2 * i + 1];
    return NULL;
}

const char *svc_inject_header(svc_req *r, const char *name)
{
    if (strcasecmp(name, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0)
        return r->clen;
    return pair_value(r->inj->headers, r->n_headers, name);
}

const char *svc_inject_query(svc_req *r, const char *name)
{
    return pair_value((const char *const *)r->args, r->n_args, name);
}

int svc_capture(svc_req *r, int status, const struct svc_reply *a)
{
    svc_answer *o = r->out;
    size_t n = 0, at = 0;

    /* Content-Type, Cache-Control, then the handler's (but a
     * Cache-Control, which took the place of no-store) */
    const char *fixed[] = {"Content-Type", a->type, "Cache-Control",
                           svc_reply_cache(a), NULL};
    const char *const *lists[] = {fixed, a->headers};
    for (size_t l = 0; l < 2; l++)
        for (size_t i = 0; lists[l] && lists[l][i]; i += 2)
            n += strlen(lists[l][i]) + strlen(lists[l][i + 1]) + 4;
    if ((o->headers = malloc(n + 1)) != NULL &&
        (o->body = malloc(a->len + 1)) != NULL) {
        for (size_t l = 0; l < 2; l++)
            for (size_t i = 0; lists[l] && lists[l][i]; i += 2)
                if (l == 0 || strcasecmp(lists[l][i], "Cache-Control") != 0)
                    at += (size_t)snprintf(o->headers + at, n + 1 - at,
                                           "%s: %s\r\n", lists[l][i],
                                           lists[l][i + 1]);
        if (a->len)
            memcpy(o->body, a->body, a->len);
        o->body[a->len] = '\0';
        o->len = a->len;
        o->status = status;
    }
    free(a->owned);
    return o->body ? 0 : -1;
}

/* '+' as a space, then %XX: libmicrohttpd's decoding of a query. */
static void unescape_arg(char *s)
{
    for (char *p = s; *p; p++)
        if (*p == '+')
            *p = ' ';
    MHD_http_unescape(s);
}

/* The pairs of a query (name, value; value NULL without '='), decoded in
 * place in q, into *args (malloc'd).  -1: no memory. */
static int query_args(char *q, char ***args, size_t *n)
{
    size_t max = 1;
    for (const char *p = q; *p; p++)
        max += *p == '&';
    char **a = malloc(2 * max * sizeof *a);
    if (a == NULL)
        return -1;
    *n = 0;
    for (char *p = q, *next; p; p = next) {
        if ((next = strchr(p, '&')) != NULL)
            *next++ = '\0';
        if (*p == '\0')
            continue;
        char *value = strchr(p, '=');
        if (value) {
            *value++ = '\0';
            unescape_arg(value);
        }
        unescape_arg(p);
        a[2 * *n] = p;
        a[2 * *n + 1] = value;
        (*n)++;
    }
    *args = a;
    return 0;
}

int svc_http_inject(svc_http *h, const svc_inject *in, svc_answer *out)
{
    svc_req *r = svc_req_alloc(h);
    char *url = strdup(in->url), *q;

    memset(out, 0, sizeof *out);
    if (r && url && (q = strchr(url, '?')) != NULL) {
        *q++ = '\0';
        if (query_args(q, &r->args, &r->n_args) != 0) {
            free(url);
            url = NULL;
        }
    }
    if (r == NULL || url == NULL) {
        free(r);
        free(url);
        return -1;
    }
    MHD_http_unescape(url); /* the path, as libmicrohttpd hands it over */
    r->inj = in;
    r->out = out;
    while (in->headers && in->headers[2 * r->n_headers])
        r->n_headers++;
    snprintf(r->clen, sizeof r->clen, "%zu", in->len);
    /* on_request's calls: the head, the body (in one piece), its end */
    char **args = r->args;
    int go = svc_request_head(h, r, url, in->method);
    if (go && !r->answered && in->len > 0)
        go = svc_request_data(h, r, in->body, in->len);
    if (go && !r->answered)
        svc_request_end(h, r);
    svc_request_done(h, r,
                     out->status ? MHD_REQUEST_TERMINATED_COMPLETED_OK
                                 : MHD_REQUEST_TERMINATED_WITH_ERROR);
    free(args);
    free(url);
    return 0;
}

void svc_answer_free(svc_answer *a)
{
    free(a->headers);
    free(a->body);
    memset(a, 0, sizeof *a);
}
