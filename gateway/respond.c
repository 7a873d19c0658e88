/* gateway/respond.c: the one place a gw_rc becomes an HTTP status and
 * message (gw_respond), and the canonical payload ID.  Used by server.c
 * and every route module; it calls none of them. */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routes.h"

/* ---- outcomes ------------------------------------------------------------ */

/* The one map of gw_rc to HTTP. */
static const struct {
    int status;
    const char *detail; /* when the caller gives none */
} answers[] = {
    [GW_OK] = {200, "ok"},
    [GW_REFUSED] = {400, "bad request"},
    [GW_UNAUTHORIZED] = {401, "invalid API key"},
    [GW_FORBIDDEN] = {403, "forbidden"},
    [GW_NOT_FOUND] = {404, "not found"},
    [GW_REPLAY] = {409, "replays are refused"},
    [GW_RATE_LIMITED] = {429, "rate limit exceeded"},
    [GW_INTERNAL] = {500, "internal error"},
    [GW_UPSTREAM] = {502, "upstream error"},
    [GW_UNAVAILABLE] = {503, "try again later"},
    [GW_NOMEM] = {503, "out of memory"},
    [GW_TIMEOUT] = {504, "inference backend timed out"},
    [GW_UNDECRYPTABLE] = {400, VEIL_PKG_DECRYPT_DETAIL},
};

gw_rc gw_rc_of_status(int status)
{
    for (size_t i = 1; i < sizeof answers / sizeof answers[0]; i++)
        if (answers[i].status == status)
            return (gw_rc)i;
    return GW_UPSTREAM;
}

static void respond_v(gw_server *s, svc_req *r, gw_rc rc, unsigned retry_s,
                      const char *fmt, va_list ap)
    __attribute__((format(printf, 5, 0)));

static void respond_v(gw_server *s, svc_req *r, gw_rc rc, unsigned retry_s,
                      const char *fmt, va_list ap)
{
    char detail[512];

    if ((unsigned)rc >= sizeof answers / sizeof answers[0] || rc == GW_OK)
        rc = GW_INTERNAL;
    if (rc == GW_UNDECRYPTABLE) { /* one answer, byte for byte */
        svc_send_prebuilt(r, answers[rc].status, s->undecryptable);
        return;
    }
    vsnprintf(detail, sizeof detail, fmt, ap);
    if (detail[0] == '\0')
        snprintf(detail, sizeof detail, "%s", answers[rc].detail);
    if (retry_s)
        svc_fail_retry(r, answers[rc].status, retry_s, "%s", detail);
    else
        svc_fail(r, answers[rc].status, "%s", detail);
}

void gw_respond(gw_server *s, svc_req *r, gw_rc rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    respond_v(s, r, rc, 0, fmt, ap);
    va_end(ap);
}

void gw_respond_retry(gw_server *s, svc_req *r, gw_rc rc, unsigned retry_s,
                      const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    respond_v(s, r, rc, retry_s, fmt, ap);
    va_end(ap);
}

/* A payload ID is 1 to PID_MAX printable ASCII characters without space:
 * the Python client sends a UUID, the JavaScript client's create() IDs like
 * "openai-compat-1733500000000-k2j4h5".  Its canonical form, the only one
 * the replay register and the signature store see, is the ID in ASCII
 * lower case (a UUID is the same whatever case it is written in).  1, with
 * the canonical form in out (may be NULL), when id is one. */
int gw_payload_id_canonical(const char *id, char out[PID_MAX + 1])
{
    size_t i;

    if (!veil_payload_id_valid(id))
        return 0;
    for (i = 0; out && id[i]; i++)
        out[i] =
            id[i] >= 'A' && id[i] <= 'Z' ? (char)(id[i] - 'A' + 'a') : id[i];
    if (out)
        out[i] = '\0';
    return 1;
}

int gw_payload_id_ok(const char *id)
{
    return gw_payload_id_canonical(id, NULL);
}
