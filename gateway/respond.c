/* gateway/respond.c: a gw_rc answered over HTTP (gw_respond; the status
 * and default detail come from rc.c's one table), and the canonical
 * payload ID.  Used by server.c
 * and every route module; it calls none of them. */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "routes.h"

/* ---- outcomes ------------------------------------------------------------ */

static void respond_v(gw_server *s, svc_req *r, gw_rc rc, unsigned retry_s,
                      const char *fmt, va_list ap)
    __attribute__((format(printf, 5, 0)));

static void respond_v(gw_server *s, svc_req *r, gw_rc rc, unsigned retry_s,
                      const char *fmt, va_list ap)
{
    char detail[512];

    if (rc == GW_OK || gw_rc_status(rc) == 500)
        rc = GW_INTERNAL;
    if (rc == GW_UNDECRYPTABLE) { /* one answer, byte for byte */
        svc_send_prebuilt(r, gw_rc_status(rc), s->undecryptable);
        return;
    }
    if (rc == GW_OHTTP_KEY) { /* v2's, likewise (PROTOCOL-V2.md 7) */
        svc_send_prebuilt(r, gw_rc_status(rc), s->ohttp_key);
        return;
    }
    vsnprintf(detail, sizeof detail, fmt, ap);
    if (detail[0] == '\0')
        snprintf(detail, sizeof detail, "%s", gw_rc_detail(rc));
    if (retry_s)
        svc_fail_retry(r, gw_rc_status(rc), retry_s, "%s", detail);
    else
        svc_fail(r, gw_rc_status(rc), "%s", detail);
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

/* The value of a model's cache_salt_field for this caller: hex of
 * HMAC-SHA256(gateway secret, the API key's hash, or the address's without
 * API keys).  Requests of one API key share the backend's prompt cache,
 * those of two keys never do; the salt tells nothing of the key. */
void gw_cache_salt(gw_server *s, const uint8_t id[32], char out[65])
{
    uint8_t mac[32];
    unsigned int len = sizeof mac;

    if (HMAC(EVP_sha256(), s->salt_secret, sizeof s->salt_secret, id, 32, mac,
             &len) == NULL)
        RAND_bytes(mac, sizeof mac); /* fail safe: a cache of its own */
    veil_hex(mac, sizeof mac, out);
    veil_wipe(mac, sizeof mac);
}
