/* Client internals shared by client.c, request.c and transport.c.  Not
 * installed; nothing here is exported from libveil.so. */
#ifndef VEIL_CLIENT_INTERNAL_H
#define VEIL_CLIENT_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>

#include "veil/client.h"

#pragma GCC visibility push(hidden)

/* Fills err (when not NULL) and returns its status.  The detail is one
 * line; control characters are replaced. */
veil_client_status veil_cl_fail(veil_client_error *err,
                                veil_client_status status, int http_status,
                                veil_rc rc, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* explicit_bzero, also for NULL. */
void veil_cl_wipe(void *p, size_t len);

/* ---- requests (request.c) --------------------------------------------- */

/* Checks the OpenAI request members the protocol names; on a problem
 * writes one line naming the member to why and returns 0. */
int veil_cl_request_check(const cJSON *request, char *why, size_t why_size);

/* The "detail" of an error body: its string, or compact JSON of another
 * value, or a printable prefix of a body that is not JSON. */
void veil_cl_error_detail(const char *body, size_t len, char *out,
                          size_t out_size);

/* ---- HTTP (transport.c) ----------------------------------------------- */

typedef struct veil_transport veil_transport;

typedef struct veil_http_response {
    long status; /* 0 when no answer arrived */
    char *body;  /* malloc'd, NUL-terminated (may be NULL) */
    size_t len;
    long retry_after_ms; /* -1 when the header was absent or unreadable */
} veil_http_response;

veil_transport *veil_transport_new(const char *ca_file, unsigned timeout_ms);
void veil_transport_free(veil_transport *t);

/* One exchange: GET when body is NULL, else POST.  headers: NULL-ended
 * "Name: value" lines.  Connections are reused across calls and threads.
 * Returns VEIL_CLIENT_OK when an answer (any status) arrived, else
 * VEIL_CLIENT_E_CONNECTION or VEIL_CLIENT_E_SECURITY (TLS verification)
 * with err filled.  Free resp->body. */
veil_client_status veil_transport_send(veil_transport *t, const char *url,
                                       const char *const *headers,
                                       const char *body, size_t len,
                                       veil_http_response *resp,
                                       veil_client_error *err);

/* Parses a Retry-After value (delta-seconds or an HTTP date) into ms;
 * -1 when unreadable. */
long veil_cl_retry_after_ms(const char *value);

#pragma GCC visibility pop

#endif /* VEIL_CLIENT_INTERNAL_H */
