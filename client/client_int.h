/* client/client_int.h: the lowest layer of client/, used by every other
 * file in it: errors (error.c), JSON checks (request.c) and HTTP
 * (transport.c).  Not installed; nothing here is exported from
 * libveil.so.  These three files call nothing above them (tpmobj.c,
 * trust.c, verify.c, enroll.c, keys.c, client.c): see the layering in
 * docs/ARCHITECTURE.md. */
#ifndef VEIL_CLIENT_INT_H
#define VEIL_CLIENT_INT_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>

#include "veil/attest.h"
#include "util.h"
#include "veil/client.h"

#pragma GCC visibility push(hidden)

/* ---- errors (error.c) ------------------------------------------------- */

/* Fills err (when not NULL) and returns its status.  The detail is one
 * line; control characters are replaced (veil_cl_vline). */
veil_client_status veil_cl_fail(veil_client_error *err,
                                veil_client_status status, int http_status,
                                veil_rc rc, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* fmt formatted into out as one line: control characters (C0, DEL and
 * C1) become spaces, bytes that are not UTF-8 '?' (for error details and
 * check reports). */
void veil_cl_vline(char *out, size_t size, const char *fmt, va_list ap);

/* The engine's last error as a client failure: "what: <message>". */
veil_client_status veil_cl_engine_fail(veil_client_error *err,
                                       veil_client_status st, veil_rc rc,
                                       const char *what);

/* The "detail" of an error body: its string, or compact JSON of another
 * value, or a printable prefix of a body that is not JSON (or too big to
 * be worth parsing: see veil_cl_json_small). */
void veil_cl_error_detail(const char *body, size_t len, char *out,
                          size_t out_size);

/* ---- requests (request.c) --------------------------------------------- */

/* In a checker or parser that reports through (why, why_size): writes
 * the reason and returns 0. */
#define VEIL_CL_REFUSE(...)                                                    \
    do {                                                                       \
        snprintf(why, why_size, __VA_ARGS__);                                  \
        return 0;                                                              \
    } while (0)

/* Checks the OpenAI request members the protocol names; on a problem
 * writes one line naming the member to why and returns 0. */
int veil_cl_request_check(const cJSON *request, char *why, size_t why_size);

/* A cheap scan of JSON text before cJSON sees it: 1 when it has at most
 * max_values values (strings, numbers, literals, arrays, objects) and
 * nests at most max_depth deep.  It does not check the syntax (cJSON
 * does that next); it bounds what parsing can cost.  Used on everything
 * a server sends before it is authenticated. */
int veil_cl_json_small(const char *text, size_t len, unsigned max_values,
                       unsigned max_depth);

/* The name of the first member that occurs twice in obj, or NULL. */
const char *veil_cl_json_dup_key(const cJSON *obj);

/* url with the password of its user part, if any, replaced by "***"
 * (for log lines and error details). */
void veil_cl_redact_url(const char *url, char *out, size_t out_size);

/* ---- HTTP (transport.c) ----------------------------------------------- */

typedef struct veil_cl_transport veil_cl_transport;

typedef struct veil_cl_http_response {
    long status; /* 0 when no answer arrived */
    char *body;  /* malloc'd, NUL-terminated (may be NULL) */
    size_t len;
    long retry_after_ms; /* -1 when the header was absent or unreadable */
    /* The answer-signature headers (docs/ATTESTATION.md), trimmed; ""
     * when absent.  veil_headers_bad: one of them came twice or was too
     * long to be genuine, so the answer cannot be verified. */
    char veil_signature[128];  /* X-Veil-Signature: b64 of <= 72 bytes */
    char veil_signed_at[24];   /* X-Veil-Signed-At */
    char veil_signing_key[80]; /* X-Veil-Signing-Key: sha256:<hex> */
    int veil_headers_bad;
    /* The key-configuration headers of protocol v2 (PROTOCOL-V2.md 4.3)
     * and the media type, trimmed; "" when absent.  keys_headers_bad: one
     * of the three X-Veil-Keys-* came twice or was too long.  The other
     * fields are not signed: Cache-Control lines (a list, RFC 9110 5.3)
     * are joined with ", ", and a list too long for the buffer is dropped
     * whole (no max-age then); Age, Location or Content-Type twice, or too
     * long, is "" (fields_dropped marks it, so a third copy is not taken
     * either). */
    char keys_signature[128]; /* X-Veil-Keys-Signature */
    char keys_signed_at[24];  /* X-Veil-Keys-Signed-At */
    char keys_expires[24];    /* X-Veil-Keys-Expires */
    char cache_control[128];  /* Cache-Control */
    char age[24];             /* Age (RFC 9111 5.1) */
    char location[512];       /* Location (a redirect's) */
    char content_type[96];    /* Content-Type */
    int keys_headers_bad;
    unsigned fields_dropped; /* bit i: on_header's field i was dropped */
    int age_dropped;         /* an Age twice or too long: read as all spent */
    /* A transfer that failed without sending a byte of the request (no
     * connection made, say): 1, a sign the server cannot have acted on
     * it (RFC 9458 6.5); else 0. */
    int unsent;
} veil_cl_http_response;

/* Bodies of answers other than 200 are kept up to this size (the rest is
 * read and dropped): only a detail is taken from them. */
#define VEIL_CL_MAX_ERROR_BODY (64u * 1024u)

veil_cl_transport *veil_cl_transport_new(const char *ca_file,
                                         unsigned timeout_ms);
void veil_cl_transport_free(veil_cl_transport *t);

/* One exchange: GET when body is NULL, else POST.  headers: NULL-ended
 * "Name: value" lines.  Connections are reused across calls and threads.
 * max_body: the largest 200 body accepted (0: 20 MiB); other statuses
 * keep VEIL_CL_MAX_ERROR_BODY bytes.  A POST body is sent at most once:
 * when a reused connection dies, libcurl's own resend is refused and the
 * call fails as a network error (the caller seals a fresh package).
 * Returns VEIL_CLIENT_OK when an answer (any status) arrived, else
 * VEIL_CLIENT_E_CONNECTION or VEIL_CLIENT_E_SECURITY (TLS verification)
 * with err filled.  Free resp->body. */
veil_client_status veil_cl_transport_send(veil_cl_transport *t, const char *url,
                                          const char *const *headers,
                                          const char *body, size_t len,
                                          size_t max_body,
                                          veil_cl_http_response *resp,
                                          veil_client_error *err);

/* The error class and detail of a non-200 answer (the server's "detail",
 * or a default); error.c. */
veil_client_status veil_cl_http_fail(const veil_cl_http_response *r,
                                     veil_client_error *err);

/* Parses a Retry-After value (delta-seconds or an HTTP date) into ms;
 * -1 when unreadable. */
long veil_cl_retry_after_ms(const char *value);

#pragma GCC visibility pop

#endif /* VEIL_CLIENT_INT_H */
