/* Protocol v2 for the client (docs/PROTOCOL-V2.md): the gateway's key
 * configurations fetched (GET /.well-known/ohttp-gateway), their signed
 * statement verified under the pinned signing key (section 4.3) and
 * cached until not_after or max-age; then each inner request encoded as
 * known-length binary HTTP, encapsulated afresh (RFC 9458), posted, and
 * its answer opened, with v1's error classes and retries, and one refetch
 * and retry after the uniform 400 (section 7).  Every buffer that held a
 * request or an answer is wiped.  Uses keys.h (the client object),
 * trust.c and client_int.h; chat.c calls it (docs/ARCHITECTURE.md). */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "bhttp.h"
#include "evidence.h"
#include "package.h"
#include "v2.h"
#include "v2_cert.h"

/* The key configurations and a signing key are small. */
#define KEYS_MAX_BODY (64u * 1024u)
#define SIGNER_MAX_BODY (16u * 1024u)
/* auto: a gateway that answered no signed configuration is asked again
 * after this long. */
#define NO_V2_RECHECK_S 300
#define V2_ALGORITHM "OHTTP DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-256-GCM"

/* ---- the signing key -------------------------------------------------------
 */

/* The signing key that must have signed url's key configurations: the
 * trust file's for its gateway, else the one kept from first contact,
 * else fetched now (GET /pki/signing_key), an EC P-256 key held against
 * signing_key_pin.  Its SPKI DER into spki (VEIL_CL_SPKI_MAX), its
 * SHA-256 into fp. */
typedef struct signer {
    uint8_t spki[VEIL_CL_SPKI_MAX];
    size_t len;
    uint8_t fp[32];
    char fp_text[72];
} signer;

static void signer_name(signer *s)
{
    char hex[65];
    veil_hex(s->fp, 32, hex);
    snprintf(s->fp_text, sizeof s->fp_text, "sha256:%s", hex);
}

/* signer_get, step 1: the PEM of a 200 GET /pki/signing_key into s. */
static veil_client_status signer_from_body(veil_client *c,
                                           const veil_cl_http_response *r,
                                           signer *s, veil_client_error *err)
{
    veil_key *key = NULL;
    veil_key_info info;
    uint8_t *der = NULL;
    size_t len = 0;
    veil_client_status st = VEIL_CLIENT_OK;
    if (r->body == NULL || memchr(r->body, 0, r->len) != NULL ||
        veil_key_from_public(c->engine, (const uint8_t *)r->body, r->len,
                             &key) != VEIL_OK)
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_KEY,
                            "the gateway's /pki/signing_key is not a PEM "
                            "public key");
    if (veil_key_get_info(key, &info) != VEIL_OK ||
        info.type != VEIL_KEY_EC_P256 ||
        veil_key_public_der(key, &der, &len) != VEIL_OK || len > sizeof s->spki)
        st = veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_KEY,
                          "the gateway's signing key is not an EC P-256 "
                          "key; refused");
    if (st == VEIL_CLIENT_OK) {
        memcpy(s->spki, der, len);
        s->len = len;
        SHA256(der, len, s->fp);
        signer_name(s);
    }
    free(der);
    veil_key_free(key);
    return st;
}

/* Step 2: GET url/pki/signing_key, checked against the pin. */
static veil_client_status signer_fetch(veil_client *c, const char *url,
                                       signer *s, veil_client_error *err)
{
    char full[2048], shown[512];
    veil_cl_http_response r;
    veil_client_status st =
        veil_cl_v2_outer_url(url, "/pki/signing_key", full, sizeof full, err);
    if (st != VEIL_CLIENT_OK ||
        (st = veil_cl_transport_send(c->tx, full, NULL, NULL, 0,
                                     SIGNER_MAX_BODY, &r, err)) !=
            VEIL_CLIENT_OK)
        return st;
    if (r.status == 200)
        st = signer_from_body(c, &r, s, err);
    else
        st = veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, (int)r.status,
                          VEIL_E_VERIFY,
                          "the gateway signs its key configurations but "
                          "GET /pki/signing_key answered %ld: the signing "
                          "key is unknown, so nothing is sent",
                          r.status);
    free(r.body);
    if (st != VEIL_CLIENT_OK)
        return st;
    if (c->has_sign_pin && CRYPTO_memcmp(s->fp, c->sign_pin, 32) != 0)
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 0, VEIL_E_VERIFY,
                            "the gateway's signing key %s does not match the "
                            "pinned %s; nothing was sent",
                            s->fp_text, c->sign_pin_text);
    veil_cl_redact_url(url, shown, sizeof shown);
    veil_logf(&c->log, VEIL_LOG_INFO, "signing key of %s: EC P-256 %s%s", shown,
              s->fp_text, c->has_sign_pin ? " (pinned)" : " (first contact)");
    return VEIL_CLIENT_OK;
}

static veil_client_status signer_get(veil_client *c, const char *url, signer *s,
                                     veil_client_error *err)
{
    const veil_trust *t = c->trust;
    memset(s, 0, sizeof *s);
    if (t && !strcmp(url, veil_trust_url(t))) {
        if (t->sign_spki == NULL || t->sign_spki_len > sizeof s->spki)
            return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 0, VEIL_E_VERIFY,
                                "the trust file records no signing key: the "
                                "gateway's key configurations cannot be "
                                "checked (protocol v1 works without one)");
        memcpy(s->spki, t->sign_spki, t->sign_spki_len);
        s->len = t->sign_spki_len;
        memcpy(s->fp, t->sign_sha, 32);
        signer_name(s);
        if (c->has_sign_pin && CRYPTO_memcmp(s->fp, c->sign_pin, 32) != 0)
            return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                                "the signing key pin %s is not the trust "
                                "file's signing key %s",
                                c->sign_pin_text, s->fp_text);
        return VEIL_CLIENT_OK;
    }
    pthread_mutex_lock(&c->lock);
    veil_cl_v2_slot *sl = veil_cl_v2_slot_find(c, url, 0);
    if (sl && sl->sign_spki_len) {
        memcpy(s->spki, sl->sign_spki, sl->sign_spki_len);
        s->len = sl->sign_spki_len;
        memcpy(s->fp, sl->sign_fp, 32);
    }
    pthread_mutex_unlock(&c->lock);
    if (s->len) {
        signer_name(s);
        return VEIL_CLIENT_OK;
    }
    veil_client_status st = signer_fetch(c, url, s, err);
    if (st != VEIL_CLIENT_OK)
        return st;
    /* first contact: the first key seen is kept (another thread's, if it
     * was quicker) */
    pthread_mutex_lock(&c->lock);
    sl = veil_cl_v2_slot_find(c, url, 1);
    if (sl && sl->sign_spki_len == 0) {
        memcpy(sl->sign_spki, s->spki, s->len);
        sl->sign_spki_len = s->len;
        memcpy(sl->sign_fp, s->fp, 32);
    } else if (sl) {
        memcpy(s->spki, sl->sign_spki, sl->sign_spki_len);
        s->len = sl->sign_spki_len;
        memcpy(s->fp, sl->sign_fp, 32);
    }
    pthread_mutex_unlock(&c->lock);
    signer_name(s);
    return VEIL_CLIENT_OK;
}

/* ---- the key configurations ------------------------------------------------
 */

/* The answer to a GET as a v2 gateway's: 1 when it is one (a 200 of
 * application/ohttp-keys with at least one signature header), else 0. */
static int looks_v2(const veil_cl_http_response *r)
{
    return r->status == 200 &&
           veil_ohttp_media_is(r->content_type, VEIL_OHTTP_MEDIA_KEYS) &&
           (r->keys_signature[0] || r->keys_expires[0] ||
            r->keys_signed_at[0] || r->veil_signing_key[0]);
}

/* keys_check, step 1: the statement of section 4.3 verified under the
 * signing key (v2_cert.c); *not_after receives its not_after. */
static veil_client_status statement_check(veil_client *c, const char *url,
                                          const veil_cl_http_response *r,
                                          long long *not_after,
                                          veil_client_error *err)
{
    uint8_t named[32];
    signer s;
    veil_client_status rc;

    if (veil_cl_keys_headers(r, not_after, named) != VEIL_CL_KEYS_OK)
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_VERIFY,
                            "the key configuration's signature headers "
                            "(X-Veil-Keys-Signature, -Signed-At, -Expires, "
                            "X-Veil-Signing-Key) are missing, doubled or "
                            "malformed; nothing was sent");
    if ((rc = signer_get(c, url, &s, err)) != VEIL_CLIENT_OK)
        return rc;
    switch (veil_cl_keys_signed(c->engine, r, s.spki, s.len, s.fp, named,
                                *not_after)) {
    case VEIL_CL_KEYS_OK:
        return VEIL_CLIENT_OK;
    case VEIL_CL_KEYS_SIGNER:
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_VERIFY,
                            "the key configuration is signed by %.71s, not by "
                            "the gateway's signing key %s; nothing was sent",
                            r->veil_signing_key, s.fp_text);
    case VEIL_CL_KEYS_EXPIRED: {
        long long now = (long long)time(NULL);
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_VERIFY,
                            "the key configuration expired (its signed "
                            "not_after %lld is %lld s ago); nothing was sent",
                            *not_after, now - *not_after);
    }
    default:
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_VERIFY,
                            "the key configuration's signature does not "
                            "verify under the signing key %s; nothing was "
                            "sent",
                            s.fp_text);
    }
}

/* Step 2: the first configuration of DHKEM(P-256), HKDF-SHA256 and
 * AES-256-GCM in the (verified) body. */
static veil_client_status keys_choose(const veil_cl_http_response *r,
                                      veil_ohttp_keyconfig *kc,
                                      veil_ohttp_alg *alg,
                                      veil_client_error *err)
{
    veil_ohttp_keyconfig *list = NULL;
    size_t n = 0;
    int found = 0;
    if (veil_ohttp_keys_decode((const uint8_t *)r->body, r->len, &list, &n) ==
        VEIL_OK)
        for (size_t i = 0; i < n && !found; i++)
            for (size_t j = 0; j < list[i].n_algs && !found; j++)
                if (list[i].kem == VEIL_HPKE_KEM_P256 &&
                    list[i].algs[j].kdf == VEIL_HPKE_KDF_SHA256 &&
                    list[i].algs[j].aead == VEIL_HPKE_AEAD_AES256GCM) {
                    *kc = list[i];
                    *alg = list[i].algs[j];
                    found = 1;
                }
    free(list);
    if (!found)
        return veil_cl_fail(err, VEIL_CLIENT_E_API, 200, VEIL_E_UNSUPPORTED,
                            "the gateway offers no key configuration of "
                            "DHKEM(P-256), HKDF-SHA256 and AES-256-GCM");
    return VEIL_CLIENT_OK;
}

/* GETs url's key configurations into sl (a copy, not the cache): state 1
 * and the configuration, or, when the answer is not a v2 gateway's and
 * `probing` (auto), state 2. */
static veil_client_status keys_fetch(veil_client *c, const char *url,
                                     int probing, veil_cl_v2_slot *sl,
                                     veil_client_error *err)
{
    char shown[512];
    veil_cl_http_response r;
    long long not_after = 0, age;
    veil_client_status st;

    veil_cl_redact_url(url, shown, sizeof shown);
    if ((st = veil_cl_v2_keys_get(c->tx, url, KEYS_MAX_BODY, &r, err)) !=
        VEIL_CLIENT_OK)
        return st;
    if (!looks_v2(&r)) {
        char detail[512];
        veil_cl_error_detail(r.body, r.len, detail, sizeof detail);
        if (probing)
            veil_logf(&c->log, VEIL_LOG_INFO,
                      "%s has no signed protocol v2 key configuration "
                      "(HTTP %ld); using v1",
                      shown, r.status);
        st = probing ? VEIL_CLIENT_OK
             : r.status == 200
                 ? veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_VERIFY,
                                "the gateway's key configuration is not "
                                "signed (or not application/ohttp-keys): "
                                "protocol v2 refuses it; nothing was sent")
             : r.status == 404
                 ? veil_cl_fail(err, VEIL_CLIENT_E_API, 404, 0,
                                "the gateway does not speak protocol v2 "
                                "(GET " VEIL_OHTTP_WELL_KNOWN ": HTTP 404%s%s)",
                                detail[0] ? ", " : "", detail)
                 : veil_cl_http_fail(&r, err);
        /* a 404 or a 200 that is not v2 is the gateway's answer; another
         * status (a 503 while it restarts, say) is not remembered */
        sl->state = 2;
        sl->until = time(NULL) +
                    (r.status == 404 || r.status == 200 ? NO_V2_RECHECK_S : 0);
        free(r.body);
        return st;
    }
    st = statement_check(c, url, &r, &not_after, err);
    if (st == VEIL_CLIENT_OK)
        st = keys_choose(&r, &sl->kc, &sl->alg, err);
    if (st == VEIL_CLIENT_OK) {
        time_t now = time(NULL);
        sl->state = 1;
        sl->until = (time_t)not_after;
        if ((age = veil_cl_keys_fresh_for(&r)) >= 0 && now + age < sl->until)
            sl->until = now + (time_t)age;
        veil_logf(&c->log, VEIL_LOG_DEBUG,
                  "v2 key configuration of %s: key ID %u, valid for %lld s",
                  shown, (unsigned)sl->kc.key_id, (long long)(sl->until - now));
    }
    free(r.body);
    return st;
}

/* url's key configuration (a copy into out): the cached one, else (or
 * when `stale` is the cached one's generation) fetched.  probing: auto,
 * where out->state 2 says "use v1". */
static veil_client_status keys_get(veil_client *c, const char *url, int probing,
                                   unsigned long stale, veil_cl_v2_slot *out,
                                   veil_client_error *err)
{
    time_t now = time(NULL);
    pthread_mutex_lock(&c->lock);
    veil_cl_v2_slot *sl = veil_cl_v2_slot_find(c, url, 0);
    int cached =
        sl && now < sl->until &&
        ((sl->state == 1 && sl->gen != stale) || (sl->state == 2 && probing));
    if (cached)
        *out = *sl;
    pthread_mutex_unlock(&c->lock);
    out->url = NULL; /* the copy never owns it */
    if (cached)
        return VEIL_CLIENT_OK;

    veil_cl_v2_slot got = {0};
    veil_client_status st = keys_fetch(c, url, probing, &got, err);
    if (st != VEIL_CLIENT_OK && got.state != 2)
        return st;
    pthread_mutex_lock(&c->lock);
    if ((sl = veil_cl_v2_slot_find(c, url, 1)) != NULL) {
        sl->state = got.state;
        sl->kc = got.kc;
        sl->alg = got.alg;
        sl->until = got.until;
        got.gen = ++sl->gen;
    }
    pthread_mutex_unlock(&c->lock);
    *out = got;
    return st;
}

/* v1's server-key pin names the gateway the user trusts; v2 does not use
 * that key, so over v2 the pin would go unchecked unless v2 has an anchor
 * of its own: a signing-key pin, or a trust file enrolled for url. */
static int pin_gap(const veil_client *c, const char *url)
{
    return c->has_pin && !c->has_sign_pin &&
           !(c->trust && strcmp(url, veil_trust_url(c->trust)) == 0);
}

veil_client_status veil_cl_v2_pin_gap(veil_client *c, const char *url,
                                      veil_client_error *err)
{
    if (!pin_gap(c, url))
        return VEIL_CLIENT_OK;
    return veil_cl_fail(
        err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
        "the server key pin is protocol v1's (the gateway's RSA key), which "
        "protocol v2 does not use, so over v2 it could not be checked: also "
        "pin v2's signing key (signing_key_pin; veil: --signing-key-pin, "
        "the SHA-256 of the key at GET /pki/signing_key), give a trust file "
        "from 'veil attest enroll', or use protocol v1; nothing was sent");
}

veil_client_status veil_cl_v2_pick(veil_client *c, const char *url, int *v2,
                                   veil_client_error *err)
{
    veil_cl_v2_slot sl;
    veil_client_status st;
    *v2 = c->cfg.protocol == VEIL_CLIENT_PROTOCOL_V2;
    if (c->cfg.protocol == VEIL_CLIENT_PROTOCOL_V2)
        return veil_cl_v2_pin_gap(c, url, err);
    if (c->cfg.protocol != VEIL_CLIENT_PROTOCOL_AUTO)
        return VEIL_CLIENT_OK;
    if (pin_gap(c, url)) { /* auto: v1, where the pin is checked */
        veil_logf(&c->log, VEIL_LOG_INFO,
                  "the server key is pinned and v2's signing key is not: "
                  "using protocol v1, where the pin is checked");
        return VEIL_CLIENT_OK;
    }
    /* a network failure of this GET is retried as a request is */
    for (unsigned n = 0;
         (st = keys_get(c, url, 1, 0, &sl, err)) == VEIL_CLIENT_E_CONNECTION &&
         n < c->cfg.max_retries;)
        veil_cl_wait_retry(c, ++n, 0, -1, NULL);
    if (st != VEIL_CLIENT_OK)
        return st;
    *v2 = sl.state == 1;
    return VEIL_CLIENT_OK;
}

/* ---- one exchange ----------------------------------------------------------
 */

/* The host and port of the base URL: the inner request's authority.  RFC
 * 9292 3.3 applies HTTP/2's rules (RFC 9113 8.3.1): an https request with
 * neither an authority nor a host field is malformed. */
static veil_bstr url_authority(const char *url)
{
    const char *p = strstr(url, "://"), *at;
    p = p ? p + 3 : url;
    size_t n = strcspn(p, "/?#");
    while ((at = memchr(p, '@', n)) != NULL) { /* no user information */
        n -= (size_t)(at + 1 - p);
        p = at + 1;
    }
    return (veil_bstr){(const uint8_t *)p, n};
}

/* The inner request as known-length binary HTTP (secret). */
static veil_client_status inner_encode(const veil_cl_v2_call *k,
                                       veil_secbuf **out,
                                       veil_client_error *err)
{
    veil_bhttp_field f[3];
    size_t n = 0, auth_len = 0;
    char *auth = NULL;
    if (k->api_key) {
        auth_len = strlen(k->api_key) + 8;
        if ((auth = malloc(auth_len)) == NULL)
            return veil_cl_fail(err, VEIL_CLIENT_E_CONNECTION, 0, VEIL_E_NOMEM,
                                "out of memory");
        snprintf(auth, auth_len, "Bearer %s", k->api_key);
        f[n++] = (veil_bhttp_field){VEIL_BSTR("authorization"),
                                    {(const uint8_t *)auth, auth_len - 1}};
    }
    if (k->tier)
        f[n++] =
            (veil_bhttp_field){VEIL_BSTR("x-security-tier"),
                               {(const uint8_t *)k->tier, strlen(k->tier)}};
    if (k->body)
        f[n++] = (veil_bhttp_field){VEIL_BSTR("content-type"),
                                    VEIL_BSTR("application/json")};
    veil_bhttp_msg m = {
        .is_request = 1,
        .method = {(const uint8_t *)k->method, strlen(k->method)},
        .scheme = VEIL_BSTR("https"),
        .authority = url_authority(k->url),
        .path = {(const uint8_t *)k->path, strlen(k->path)},
        .headers = {f, n},
        .content = {k->body, k->body ? k->body_len : 0},
    };
    veil_rc rc = veil_bhttp_encode(&m, 0, out);
    if (auth) {
        veil_wipe(auth, auth_len);
        free(auth);
    }
    if (rc != VEIL_OK)
        return veil_cl_engine_fail(err, VEIL_CLIENT_E_INVALID_REQUEST, rc,
                                   "encoding the request");
    return VEIL_CLIENT_OK;
}

/* An opened inner answer. */
typedef struct inner {
    long status;
    char *body; /* malloc'd, NUL-terminated, wiped when freed */
    size_t len;
    long retry_after_ms;
    char request_id[65];
    /* x-veil-signature, x-veil-signed-at, x-veil-signing-key ("" when
     * absent); sig_bad: one came twice or too long */
    char sig[128], signed_at[24], signing_key[80];
    int sig_bad;
} inner;

/* The first field named so (in any case) into out; a second one, or one
 * too long, sets *bad. */
static void field_copy(const veil_bhttp_msg *m, const char *name, char *out,
                       size_t size, int *bad)
{
    const veil_bhttp_field *f = veil_bhttp_field_get(&m->headers, name);
    if (f == NULL)
        return;
    if (veil_bhttp_field_count(&m->headers, name) > 1 || f->value.len >= size) {
        *bad = 1;
        return;
    }
    memcpy(out, f->value.p, f->value.len);
    out[f->value.len] = '\0';
}

static void inner_free(inner *in)
{
    if (in->body) {
        veil_wipe(in->body, in->len);
        free(in->body);
    }
    memset(in, 0, sizeof *in);
}

/* Opens a 200 message/ohttp-res into in; a failure is the one security
 * error. */
static veil_client_status inner_open(veil_client *c, veil_ohttp_ctx *ctx,
                                     const veil_cl_http_response *r, inner *in,
                                     veil_client_error *err)
{
    veil_secbuf *plain = NULL;
    veil_bhttp_msg *m = NULL;
    const char *why = NULL;
    veil_rc rc = VEIL_E_DECRYPT;
    if (!veil_ohttp_media_is(r->content_type, VEIL_OHTTP_MEDIA_RES))
        why = "the answer is not " VEIL_OHTTP_MEDIA_RES;
    else if ((rc = veil_ohttp_decap_response(c->engine, ctx,
                                             (const uint8_t *)r->body, r->len,
                                             &plain)) != VEIL_OK ||
             (rc = veil_bhttp_decode(veil_secbuf_data(plain),
                                     veil_secbuf_len(plain),
                                     VEIL_BHTTP_RESPONSE, NULL, &m)) != VEIL_OK)
        why = veil_last_error()->message;
    else if ((in->body = malloc(m->content.len + 1)) == NULL)
        why = "out of memory";
    if (why == NULL) {
        const veil_bhttp_field *ra =
            veil_bhttp_field_get(&m->headers, "retry-after");
        char v[64];
        memcpy(in->body, m->content.p, m->content.len);
        in->body[m->content.len] = '\0';
        in->len = m->content.len;
        in->status = (long)m->status;
        in->retry_after_ms = -1;
        if (ra && ra->value.len < sizeof v) {
            memcpy(v, ra->value.p, ra->value.len);
            v[ra->value.len] = '\0';
            in->retry_after_ms = veil_cl_retry_after_ms(v);
        }
        field_copy(m, "x-veil-signature", in->sig, sizeof in->sig,
                   &in->sig_bad);
        field_copy(m, "x-veil-signed-at", in->signed_at, sizeof in->signed_at,
                   &in->sig_bad);
        field_copy(m, "x-veil-signing-key", in->signing_key,
                   sizeof in->signing_key, &in->sig_bad);
    }
    veil_bhttp_msg_free(m);
    veil_secbuf_free(plain);
    if (why == NULL)
        return VEIL_CLIENT_OK;
    veil_logf(&c->log, VEIL_LOG_DEBUG, "v2 answer refused: %s", why);
    return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, rc, "%s",
                        VEIL_CLIENT_SECURITY_MESSAGE);
}

/* The uniform 400 of section 7 (RFC 9458 5.3's problem type). */
static int uniform_400(const veil_cl_http_response *r)
{
    if (r->status != 400 || r->body == NULL ||
        !veil_cl_json_small(r->body, r->len, 16, 4))
        return 0;
    cJSON *j = cJSON_ParseWithLength(r->body, r->len);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "type");
    int is =
        cJSON_IsString(t) && !strcmp(t->valuestring, VEIL_OHTTP_PROBLEM_KEY);
    cJSON_Delete(j);
    return is;
}

/* Encapsulates req to kc and posts it once: the outer answer into r, the
 * context into *ctx (when sealed), the request ID into in. */
static veil_client_status post_once(veil_client *c, const veil_cl_v2_call *k,
                                    const veil_cl_v2_slot *kc, veil_secbuf *req,
                                    veil_ohttp_ctx **ctx,
                                    veil_cl_http_response *r, inner *in,
                                    veil_client_error *err)
{
    /* RFC 9458 5: the POST needs only its content type; any other field
     * must be one the relay removes, and 6.1: nothing identifying.  So no
     * User-Agent (it names veil's version, a partition of the clients a
     * relay forwards to the gateway) and no Accept, both of which curl
     * would send; "Name:" removes a field curl adds. */
    static const char *const lines[] = {
        "Content-Type: " VEIL_OHTTP_MEDIA_REQ,
        "Accept:", "User-Agent:", "Expect:", NULL};
    uint8_t *body = NULL, h[32];
    size_t len = 0, enc_len = 0;
    char full[2048];
    memset(r, 0, sizeof *r);
    veil_client_status st = veil_cl_v2_post_url(c, k->url, full, sizeof full,
                                                err); /* before sealing */
    if (st != VEIL_CLIENT_OK)
        return st;
    uint64_t t0 = veil_cl_now_ns();
    veil_rc rc = veil_ohttp_encap_request(
        c->engine, &kc->kc, kc->alg, veil_secbuf_data(req),
        veil_secbuf_len(req), NULL, &body, &len, ctx);
    if (rc != VEIL_OK)
        return veil_cl_engine_fail(err, VEIL_CLIENT_E_SECURITY, rc,
                                   "encapsulating the request");
    const uint8_t *enc = veil_ohttp_ctx_enc(*ctx, &enc_len);
    SHA256(enc, enc_len, h);
    veil_hex(h, 32, in->request_id);
    uint64_t t1 = veil_cl_now_ns();
    veil_logf(&c->log, VEIL_LOG_DEBUG,
              "v2 %s %s: request %.16s... to key ID %u (%zu bytes)", k->method,
              k->path, in->request_id, (unsigned)kc->kc.key_id, len);
    st = veil_cl_transport_send(c->tx, full, lines, (const char *)body, len, 0,
                                r, err);
    free(body);
    if (k->stats) {
        k->stats->encrypt_ns += t1 - t0;
        k->stats->network_ns += veil_cl_now_ns() - t1;
        k->stats->attempts++;
    }
    return st;
}

/* An inner 200 as the caller's tree: a JSON object, no member twice at
 * its top level, in _metadata or in _metadata.tpm_attestation, a
 * payload ID there (maximum) this request's, with _metadata as the client
 * knows it (attested_backend only once the caller verified a quote). */
static veil_client_status answer_tree(veil_client *c, const inner *in,
                                      cJSON **out, veil_client_error *err)
{
    cJSON *j = cJSON_ParseWithLength(in->body, in->len), *md;
    const cJSON *id;
    const char *why = NULL;
    *out = NULL;
    md = cJSON_GetObjectItemCaseSensitive(j, "_metadata");
    if (!cJSON_IsObject(j) || (md != NULL && !cJSON_IsObject(md)))
        why = "its content is not a JSON object";
    else if (veil_cl_json_dup_key(j) || veil_cl_json_dup_key(md) ||
             veil_cl_json_dup_key(
                 cJSON_GetObjectItemCaseSensitive(md, "tpm_attestation")))
        why = "the answer has a member twice";
    else if ((id = cJSON_GetObjectItemCaseSensitive(md, "payload_id")) &&
             (!cJSON_IsString(id) ||
              strcmp(id->valuestring, in->request_id) != 0))
        why = "the answer is for another request than this one (a replayed "
              "answer?)";
    if (why == NULL && md == NULL &&
        (md = cJSON_AddObjectToObject(j, "_metadata")) == NULL)
        why = "out of memory";
    if (why == NULL) {
        static const char *const mine[] = {
            "protocol", "request_id", "is_encrypted", "encryption_algorithm",
            "attested_backend"};
        for (size_t i = 0; i < sizeof mine / sizeof mine[0]; i++)
            cJSON_DeleteItemFromObjectCaseSensitive(md, mine[i]);
        if (!cJSON_AddStringToObject(md, "protocol", "v2") ||
            !cJSON_AddStringToObject(md, "request_id", in->request_id) ||
            !cJSON_AddTrueToObject(md, "is_encrypted") ||
            !cJSON_AddStringToObject(md, "encryption_algorithm", V2_ALGORITHM))
            why = "out of memory";
    }
    if (why) {
        veil_json_wipe_free(j);
        veil_logf(&c->log, VEIL_LOG_DEBUG, "v2 answer %.16s... refused: %s",
                  in->request_id, why);
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_VERIFY,
                            "%s (%s)", VEIL_CLIENT_SECURITY_MESSAGE, why);
    }
    *out = j;
    return VEIL_CLIENT_OK;
}

/* The answer signature of an inner 200 of an inference route (section
 * 8): v1's statement with the request ID as payload ID and the hashes of
 * the inner request's and answer's content, under the gateway's signing
 * key (the one its key configurations are checked under).  A v2 gateway
 * always has that key and signs every such answer: an unsigned one is
 * refused. */
static veil_client_status answer_signature(veil_client *c,
                                           const veil_cl_v2_call *k,
                                           const inner *in,
                                           veil_client_error *err)
{
    uint8_t req_sha[32], resp_sha[32], *sig = NULL;
    size_t sig_len = 0, n = 0;
    long long at = 0;
    char st[VEIL_EV_STATEMENT_MAX];
    const char *why = NULL;
    veil_key *key = NULL;
    signer s;
    veil_client_status rc = signer_get(c, k->url, &s, err);
    if (rc != VEIL_CLIENT_OK)
        return rc;
    SHA256(k->body, k->body_len, req_sha);
    SHA256((const uint8_t *)in->body, in->len, resp_sha);
    if (in->sig_bad)
        why = "a signature header came twice or is too long";
    else if (in->sig[0] == '\0')
        why = "the answer carries no signature (x-veil-signature)";
    else if (strcmp(in->signing_key, s.fp_text) != 0)
        why = "the answer is signed by another key than the gateway's "
              "signing key";
    else if (!veil_cl_unix_time(in->signed_at, &at) ||
             (n = veil_ev_statement(in->request_id,
                                    k->tier ? k->tier : "standard", req_sha,
                                    resp_sha, s.fp, at, st, sizeof st)) == 0)
        why = "the signature's signed-at or statement is malformed";
    else if (veil_b64_decode(in->sig, strlen(in->sig), &sig, &sig_len) !=
                 VEIL_OK ||
             veil_key_from_public(c->engine, s.spki, s.len, &key) != VEIL_OK ||
             veil_ecdsa_verify(c->engine, key, (const uint8_t *)st, n, sig,
                               sig_len) != VEIL_OK)
        why = "the answer signature does not verify over this request and "
              "answer";
    veil_key_free(key);
    free(sig);
    if (why == NULL) {
        veil_logf(&c->log, VEIL_LOG_DEBUG,
                  "v2 answer %.16s...: answer signature verified (%s, signed "
                  "at %lld)",
                  in->request_id, s.fp_text, at);
        return VEIL_CLIENT_OK;
    }
    veil_logf(&c->log, VEIL_LOG_DEBUG, "v2 answer %.16s... refused: %s",
              in->request_id, why);
    return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_VERIFY,
                        "%s (%s)", VEIL_CLIENT_SECURITY_MESSAGE, why);
}

/* What the caller's verifier needs of an answer taken (veil_cl_v2_seen). */
static void seen_fill(veil_cl_v2_seen *s, const veil_ohttp_ctx *ctx,
                      const inner *in)
{
    size_t pk_len = 0;
    const uint8_t *pk = veil_ohttp_ctx_pk(ctx, &pk_len);
    memset(s, 0, sizeof *s);
    memcpy(s->request_id, in->request_id, sizeof s->request_id);
    SHA256(pk, pk_len, s->key_sha256);
    s->headers.status = in->status;
    s->headers.retry_after_ms = -1;
    snprintf(s->headers.veil_signature, sizeof s->headers.veil_signature, "%s",
             in->sig);
    snprintf(s->headers.veil_signed_at, sizeof s->headers.veil_signed_at, "%s",
             in->signed_at);
    snprintf(s->headers.veil_signing_key, sizeof s->headers.veil_signing_key,
             "%s", in->signing_key);
    s->headers.veil_headers_bad = in->sig_bad;
}

/* One attempt's outcome: *status the status that decides a retry (the
 * inner one once the answer opened; 0 a network failure before a byte of
 * the POST was sent, -1 one after: RFC 9458 6.5, no retry without a sign
 * the request was not processed, and a lost connection is none), *uniform
 * the uniform 400, *retry_after_ms what the server asked. */
static veil_client_status attempt(veil_client *c, const veil_cl_v2_call *k,
                                  const veil_cl_v2_slot *kc, veil_secbuf *req,
                                  cJSON **response, long *status, int *uniform,
                                  long *retry_after_ms, veil_client_error *err)
{
    veil_ohttp_ctx *ctx = NULL;
    veil_cl_http_response r;
    inner in = {0};
    veil_client_status st = post_once(c, k, kc, req, &ctx, &r, &in, err);
    *status = st == VEIL_CLIENT_OK ? r.status : r.unsent ? 0 : -1;
    *uniform = 0;
    *retry_after_ms = r.retry_after_ms;
    if (st == VEIL_CLIENT_OK && r.status != 200) {
        *uniform = uniform_400(&r);
        st = *uniform ? veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 400,
                                     VEIL_E_DECRYPT,
                                     "the gateway could not open the request "
                                     "(the uniform 400 of a stale key, a "
                                     "tampered byte or a replay)")
                      : veil_cl_http_fail(&r, err);
    } else if (st == VEIL_CLIENT_OK) {
        uint64_t t = veil_cl_now_ns();
        st = inner_open(c, ctx, &r, &in, err);
        if (st == VEIL_CLIENT_OK) {
            veil_cl_http_response ir = {.status = in.status,
                                        .body = in.body,
                                        .len = in.len,
                                        .retry_after_ms = in.retry_after_ms};
            *status = in.status;
            *retry_after_ms = in.retry_after_ms;
            if (in.status != 200)
                st = veil_cl_http_fail(&ir, err);
            else if (k->body == NULL ||
                     (st = answer_signature(c, k, &in, err)) == VEIL_CLIENT_OK)
                st = answer_tree(c, &in, response, err);
            if (st == VEIL_CLIENT_OK && k->seen)
                seen_fill(k->seen, ctx, &in);
        }
        if (k->stats) {
            k->stats->decrypt_ns += veil_cl_now_ns() - t;
            if (st == VEIL_CLIENT_OK) {
                k->stats->protocol = 2;
                memcpy(k->stats->request_id, in.request_id, 65);
            }
        }
    }
    inner_free(&in);
    free(r.body);
    veil_ohttp_ctx_free(ctx);
    return st;
}

/* The same key: ID, KEM and public key. */
static int same_config(const veil_ohttp_keyconfig *a,
                       const veil_ohttp_keyconfig *b)
{
    return a->key_id == b->key_id && a->kem == b->kem &&
           a->pk_len == b->pk_len && memcmp(a->pk, b->pk, a->pk_len) == 0;
}

veil_client_status veil_cl_v2_send(veil_client *c, const veil_cl_v2_call *k,
                                   cJSON **response, veil_client_error *err)
{
    veil_secbuf *req = NULL;
    unsigned long stale = 0;
    int refetched = 0;
    veil_ohttp_keyconfig refused = {0}; /* what the uniform 400 answered */
    veil_client_status st = inner_encode(k, &req, err);
    *response = NULL;
    for (unsigned n = 0; st == VEIL_CLIENT_OK;) {
        veil_cl_v2_slot kc;
        long status, retry_after_ms;
        int uniform;
        uint64_t t = veil_cl_now_ns();
        st = keys_get(c, k->url, 0, stale, &kc, err);
        if (k->stats)
            k->stats->network_ns += veil_cl_now_ns() - t;
        if (st != VEIL_CLIENT_OK) {
            /* a fetch that failed on the way (network, 429, 5xx) is
             * retried as a request is */
            long fs = st == VEIL_CLIENT_E_CONNECTION ? 0 : err->http_status;
            if (n >= c->cfg.max_retries ||
                !(st == VEIL_CLIENT_E_CONNECTION || veil_cl_retryable(fs)))
                break;
            veil_cl_wait_retry(c, ++n, fs, -1, k->stats);
            st = VEIL_CLIENT_OK;
            continue;
        }
        /* The gateway still publishes the configuration it could not
         * open a request for: the 400 was no stale key, so nothing says
         * the request was not processed (a relay may have passed it on
         * and answered 400 itself); RFC 9458 6.5: not sent again. */
        if (refetched && same_config(&refused, &kc.kc)) {
            st = veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 400, VEIL_E_DECRYPT,
                              "the gateway could not open the request, yet "
                              "still publishes the key configuration it was "
                              "sealed to; not sent again, as it may have "
                              "been processed (uniform 400 from a tampering "
                              "or replaying relay, or a gateway that cannot "
                              "open what it publishes)");
            break;
        }
        /* maximum: the KEM key must be certified by the enrolled AK */
        if (k->tier && strcmp(k->tier, "maximum") == 0 &&
            (st = veil_cl_v2_kem_check(c, k->url, &kc.kc, err)) !=
                VEIL_CLIENT_OK)
            break;
        st = attempt(c, k, &kc, req, response, &status, &uniform,
                     &retry_after_ms, err);
        if (uniform && refetched) {
            st = veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 400, VEIL_E_DECRYPT,
                              "the gateway could not open the request twice, "
                              "the second time sealed afresh to a key "
                              "configuration fetched again (uniform 400: a "
                              "tampering relay, or a gateway that cannot "
                              "open what it publishes)");
            break;
        }
        if (uniform) {
            /* section 7: refetch the configurations once, retry once */
            veil_logf(&c->log, VEIL_LOG_INFO,
                      "the gateway could not open the request; refetching "
                      "its key configuration and sending once more");
            refetched = 1;
            refused = kc.kc;
            stale = kc.gen;
            st = VEIL_CLIENT_OK;
            continue;
        }
        if (st == VEIL_CLIENT_OK || st == VEIL_CLIENT_E_SECURITY ||
            n >= c->cfg.max_retries ||
            !((st == VEIL_CLIENT_E_CONNECTION && status == 0) ||
              veil_cl_v2_retry_worth(status, err)))
            break;
        veil_cl_wait_retry(c, ++n, status, retry_after_ms, k->stats);
        st = VEIL_CLIENT_OK;
    }
    veil_secbuf_free(req);
    return st;
}
