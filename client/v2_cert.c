/* client/v2_cert.c: the chain that makes a v2 KEM key the gateway's
 * (v2_cert.h, docs/PROTOCOL-V2.md 4.3 and 4.4): its key configurations
 * signed by the gateway's long-term signing key, and, where the KEM keys
 * are TPM objects, each certified by the TPM whose attestation key was
 * enrolled.  The client checks the certification before it encapsulates
 * on maximum (veil_cl_v2_kem_check, from v2.c); enrolment checks the whole
 * chain before it writes a trust file (veil_cl_kem_enrol_check, from
 * enroll.c).  The parsers and verifiers are protocol/evidence.c's
 * (veil_tpm_pub_parse, veil_tpm_check_certify), as for every other
 * certification. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "evidence.h"
#include "keys.h"
#include "package.h"
#include "v2_cert.h"

#define CERT_MAX_BODY (16u * 1024)
#define KEYS_MAX_BODY (64u * 1024u)
#define STATEMENT_MAX 256
#define TPM_ALG_ECC 0x0023
#define KEM_ATTRS                                                              \
    (VEIL_TPMA_DECRYPT | VEIL_TPMA_FIXEDTPM | VEIL_TPMA_FIXEDPARENT)
#define P256_POINT_LEN 65

/* The SubjectPublicKeyInfo DER of a P-256 point is this prefix and the
 * 65-byte point (RFC 5480). */
static const uint8_t p256_spki_prefix[26] = {
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00};

const char *const veil_cl_v2_keys_lines[] = {"Accept: " VEIL_OHTTP_MEDIA_KEYS,
                                             NULL};

veil_client_status veil_cl_v2_outer_url(const char *base, const char *path,
                                        char *out, size_t size,
                                        veil_client_error *err)
{
    const char *p = strstr(base, "://"), *at;
    size_t head = p ? (size_t)(p + 3 - base) : 0;
    size_t n = strcspn(base + head, "/?#"), skip = 0;
    while ((at = memchr(base + head + skip, '@', n - skip)) != NULL)
        skip = (size_t)(at + 1 - (base + head));
    int len = snprintf(out, size, "%.*s%s%s", (int)head, base,
                       base + head + skip, path);
    if (len < 0 || (size_t)len >= size)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "the URL is too long: a base or relay URL with "
                            "its path must fit in %zu bytes; nothing was sent",
                            size - 1);
    return VEIL_CLIENT_OK;
}

veil_client_status veil_cl_v2_post_url(const veil_client *c, const char *base,
                                       char *out, size_t size,
                                       veil_client_error *err)
{
    if (c->relay_url)
        return veil_cl_v2_outer_url(c->relay_url, "", out, size, err);
    return veil_cl_v2_outer_url(base, VEIL_OHTTP_WELL_KNOWN, out, size, err);
}

#define KEYS_REDIRECTS_MAX 4

/* The next URL of the redirect r answered to `from` into out (user
 * information dropped): 1, or 0 when it cannot be followed. */
static int redirect_next(const char *from, const veil_cl_http_response *r,
                         char *out, size_t size)
{
    CURLU *u = curl_url();
    char *next = NULL, *scheme = NULL;
    int ok = u && r->location[0] && !r->keys_headers_bad &&
             curl_url_set(u, CURLUPART_URL, from, 0) == CURLUE_OK &&
             curl_url_set(u, CURLUPART_URL, r->location, 0) == CURLUE_OK &&
             curl_url_get(u, CURLUPART_URL, &next, 0) == CURLUE_OK &&
             curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
             (!strcmp(scheme, "https") ||
              (!strcmp(scheme, "http") && !strncmp(from, "http://", 7)));
    ok =
        ok && veil_cl_v2_outer_url(next, "", out, size, NULL) == VEIL_CLIENT_OK;
    curl_free(next);
    curl_free(scheme);
    curl_url_cleanup(u);
    return ok;
}

veil_client_status veil_cl_v2_keys_get(veil_cl_transport *tx, const char *base,
                                       size_t max_body,
                                       veil_cl_http_response *r,
                                       veil_client_error *err)
{
    char url[2048], next[2048];
    veil_client_status st =
        veil_cl_v2_outer_url(base, VEIL_OHTTP_WELL_KNOWN, url, sizeof url, err);
    if (st != VEIL_CLIENT_OK)
        return st;
    for (unsigned hop = 0;; hop++) {
        st = veil_cl_transport_send(tx, url, veil_cl_v2_keys_lines, NULL, 0,
                                    max_body, r, err);
        long s = r->status;
        if (st != VEIL_CLIENT_OK ||
            !(s == 301 || s == 302 || s == 303 || s == 307 || s == 308) ||
            hop == KEYS_REDIRECTS_MAX ||
            !redirect_next(url, r, next, sizeof next))
            return st;
        free(r->body);
        memcpy(url, next, sizeof url);
    }
}

/* Cache-Control's max-age in seconds, or -1. */
static long long max_age(const char *cc)
{
    for (const char *p = cc; (p = strcasestr(p, "max-age=")) != NULL; p++) {
        if (p != cc && p[-1] != ' ' && p[-1] != ',')
            continue;
        long long v;
        char d[20];
        size_t n = strspn(p + 8, "0123456789");
        if (n == 0 || n >= sizeof d)
            return -1;
        memcpy(d, p + 8, n);
        d[n] = '\0';
        return veil_cl_unix_time(d, &v) ? v : -1;
    }
    return -1;
}

long long veil_cl_keys_fresh_for(const veil_cl_http_response *r)
{
    long long life = max_age(r->cache_control), spent = 0;
    if (life < 0)
        return -1;
    /* RFC 9111 5.1: an Age too large to represent counts as a very large
     * one (all of max-age spent); one that is not a number as none */
    if (r->age_dropped) /* twice, or too long to keep: read as very large */
        spent = life;
    else if (!veil_cl_unix_time(r->age, &spent))
        spent = r->age[0] && strspn(r->age, "0123456789") == strlen(r->age)
                    ? life
                    : 0;
    return life > spent ? life - spent : 0;
}

/* ---- the signed statement (section 4.3) ---------------------------------
 */

int veil_cl_unix_time(const char *s, long long *out)
{
    size_t n = strlen(s);
    if (n == 0 || n > 18 || strspn(s, "0123456789") != n)
        return 0;
    *out = strtoll(s, NULL, 10);
    return 1;
}

veil_cl_keys_rc veil_cl_keys_headers(const veil_cl_http_response *r,
                                     long long *not_after, uint8_t named[32])
{
    long long at;
    const char *sk = r->veil_signing_key;
    if (r->keys_headers_bad || r->keys_signature[0] == '\0' ||
        !veil_cl_unix_time(r->keys_signed_at, &at) ||
        !veil_cl_unix_time(r->keys_expires, not_after) || strlen(sk) != 71 ||
        strncmp(sk, "sha256:", 7) != 0 || !veil_hex_decode(sk + 7, 32, named))
        return VEIL_CL_KEYS_HEADERS;
    return VEIL_CL_KEYS_OK;
}

veil_cl_keys_rc
veil_cl_keys_signed(veil_engine *e, const veil_cl_http_response *r,
                    const uint8_t *spki, size_t spki_len, const uint8_t fp[32],
                    const uint8_t named[32], long long not_after)
{
    uint8_t h[32], *sig = NULL;
    size_t sig_len = 0;
    char hex[65], st[STATEMENT_MAX];
    veil_key *key = NULL;

    if (!veil_cl_same(named, fp, 32))
        return VEIL_CL_KEYS_SIGNER;
    veil_cl_sha256(r->body ? r->body : "", r->len, h);
    veil_hex(h, 32, hex);
    int n = snprintf(st, sizeof st,
                     "veil-ohttp-keys-v1\nkeys_sha256=%s\nsigned_at=%s\n"
                     "not_after=%s\n",
                     hex, r->keys_signed_at, r->keys_expires);
    int ok = n > 0 && (size_t)n < sizeof st &&
             veil_b64_decode(r->keys_signature, strlen(r->keys_signature), &sig,
                             &sig_len) == VEIL_OK &&
             veil_key_from_public(e, spki, spki_len, &key) == VEIL_OK &&
             veil_ecdsa_verify(e, key, (const uint8_t *)st, (size_t)n, sig,
                               sig_len) == VEIL_OK;
    veil_key_free(key);
    free(sig);
    if (!ok)
        return VEIL_CL_KEYS_SIGNATURE;
    if ((long long)time(NULL) >= not_after)
        return VEIL_CL_KEYS_EXPIRED;
    return VEIL_CL_KEYS_OK;
}

/* ---- a KEM key's certification (section 4.4) ----------------------------
 */

/* Sets the failed check and its reason; 0 (the check's outcome). */
static int why_set(veil_cl_kem_why *w, const char *what, const char *why)
{
    snprintf(w->what, sizeof w->what, "%s", what);
    snprintf(w->why, sizeof w->why, "%s", why);
    return 0;
}

/* veil_cl_kem_cert_check on the parsed answer o; the failed check in w. */
static int cert_answer(veil_engine *e, const veil_tpm_pub *ak,
                       const char *ak_label, const cJSON *o,
                       const veil_ohttp_keyconfig *kc, veil_cl_kem_why *w)
{
    uint8_t *attest = NULL, *sig = NULL, *pub = NULL, spki[91], sha[32], q[32];
    size_t attest_len = 0, sig_len = 0, pub_len = 0;
    veil_tpm_pub kem = {0};
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "key_id");
    const char *area = "the KEM key's public area";
    int ok = 0;

    if (!cJSON_IsNumber(id) || id->valuedouble != (double)kc->key_id)
        why_set(w, "certification", "it is for another key ID");
    else if (!veil_cl_json_b64(o, "certify_info_b64", &attest, &attest_len) ||
             !veil_cl_json_b64(o, "signature_b64", &sig, &sig_len) ||
             !veil_cl_json_b64(o, "public_b64", &pub, &pub_len))
        why_set(w, "certification",
                "certify_info_b64, signature_b64 or public_b64 is missing or "
                "not base64");
    else if (veil_tpm_pub_parse(e, pub, pub_len, &kem) != VEIL_OK)
        why_set(w, area, veil_cl_why_last());
    else if (kem.type != TPM_ALG_ECC ||
             (kem.attributes & KEM_ATTRS) != KEM_ATTRS ||
             (kem.attributes & (VEIL_TPMA_RESTRICTED | VEIL_TPMA_SIGN)))
        why_set(w, area,
                "not an ECC P-256 key with decrypt, fixedTPM and "
                "fixedParent, neither restricted nor sign");
    else if (kc->pk_len != P256_POINT_LEN) /* before kc->pk is read */
        why_set(w, area,
                "the key configuration's public key is not a 65-byte P-256 "
                "point");
    else {
        memcpy(spki, p256_spki_prefix, sizeof p256_spki_prefix);
        memcpy(spki + sizeof p256_spki_prefix, kc->pk, P256_POINT_LEN);
        veil_cl_sha256(spki, sizeof spki, sha);
        veil_ev_kem_certify_qualifying(kc->key_id, kc->pk, kc->pk_len, q);
        if (!veil_cl_same(sha, kem.spki_sha256, 32))
            why_set(w, area,
                    "its point is not the key configuration's public key");
        else if (veil_tpm_check_certify(e, ak, attest, attest_len, sig, sig_len,
                                        q, &kem, KEM_ATTRS) != VEIL_OK) {
            snprintf(w->what, sizeof w->what, "TPM2_Certify by %s", ak_label);
            snprintf(w->why, sizeof w->why, "%s", veil_cl_why_last());
        } else
            ok = 1;
    }
    veil_tpm_pub_clear(&kem);
    free(attest);
    free(sig);
    free(pub);
    return ok;
}

int veil_cl_kem_cert_check(veil_engine *e, const veil_tpm_pub *ak,
                           const char *ak_label, const char *body, size_t len,
                           const veil_ohttp_keyconfig *kc, veil_cl_kem_why *w)
{
    cJSON *o = cJSON_ParseWithLength(body ? body : "", len);
    int ok = cJSON_IsObject(o) ? cert_answer(e, ak, ak_label, o, kc, w)
                               : why_set(w, "certification",
                                         "the answer is not a JSON object");
    cJSON_Delete(o);
    return ok;
}

/* One certification fetched and checked.  VEIL_CLIENT_OK when an answer
 * arrived: *status its HTTP status, and w->what "" when the chain holds,
 * else the failed check.  Else the transport's error. */
static veil_client_status cert_fetch(veil_engine *e, veil_cl_transport *tx,
                                     const char *url, const veil_tpm_pub *ak,
                                     const char *ak_label,
                                     const veil_ohttp_keyconfig *kc,
                                     long *status, veil_cl_kem_why *w,
                                     veil_client_error *err)
{
    char full[2048], detail[256];
    veil_cl_http_response r;
    char path[40];
    snprintf(path, sizeof path, "/v2/keys/certify?key_id=%u",
             (unsigned)kc->key_id);
    veil_client_status st =
        veil_cl_v2_outer_url(url, path, full, sizeof full, err);
    if (st == VEIL_CLIENT_OK)
        st = veil_cl_transport_send(tx, full, NULL, NULL, 0, CERT_MAX_BODY, &r,
                                    err);
    if (st != VEIL_CLIENT_OK)
        return st;
    *status = r.status;
    why_set(w, "", "");
    if (r.status != 200) {
        veil_cl_error_detail(r.body, r.len, detail, sizeof detail);
        snprintf(w->what, sizeof w->what, "certification");
        snprintf(w->why, sizeof w->why,
                 "the gateway offers no TPM certification of it (HTTP "
                 "%ld%s%s)",
                 r.status, detail[0] ? ": " : "", detail);
    } else {
        veil_cl_kem_cert_check(e, ak, ak_label, r.body, r.len, kc, w);
    }
    free(r.body);
    return VEIL_CLIENT_OK;
}

/* ---- the certification, remembered ---------------------------------------
 * A KEM key found certified by the enrolled AK stays certified while its
 * key configuration holds (the slot's `until` when it was checked): one
 * GET /v2/keys/certify per key configuration, not one per request.  The
 * key ID and the point must both be the checked ones. */

static int cert_same(const veil_cl_v2_slot *sl, const veil_ohttp_keyconfig *kc)
{
    return sl->cert_pk_len != 0 && sl->cert_pk_len == kc->pk_len &&
           sl->cert_key_id == kc->key_id &&
           memcmp(sl->cert_pk, kc->pk, kc->pk_len) == 0;
}

static int cert_known(veil_client *c, const char *url,
                      const veil_ohttp_keyconfig *kc)
{
    pthread_mutex_lock(&c->lock);
    veil_cl_v2_slot *sl = veil_cl_v2_slot_find(c, url, 0);
    int known = sl && cert_same(sl, kc) && time(NULL) < sl->cert_until;
    pthread_mutex_unlock(&c->lock);
    return known;
}

static void cert_remember(veil_client *c, const char *url,
                          const veil_ohttp_keyconfig *kc)
{
    pthread_mutex_lock(&c->lock);
    veil_cl_v2_slot *sl = veil_cl_v2_slot_find(c, url, 0);
    /* only while the slot still holds this configuration */
    if (sl && sl->state == 1 && sl->kc.key_id == kc->key_id &&
        sl->kc.pk_len == kc->pk_len && kc->pk_len <= sizeof sl->cert_pk &&
        memcmp(sl->kc.pk, kc->pk, kc->pk_len) == 0) {
        memcpy(sl->cert_pk, kc->pk, kc->pk_len);
        sl->cert_pk_len = kc->pk_len;
        sl->cert_key_id = kc->key_id;
        sl->cert_until = sl->until;
    }
    pthread_mutex_unlock(&c->lock);
}

veil_client_status veil_cl_v2_kem_check(veil_client *c, const char *url,
                                        const veil_ohttp_keyconfig *kc,
                                        veil_client_error *err)
{
    const veil_trust *t = c->trust;
    veil_cl_kem_why w;
    long status = 200;
    veil_tpm_pub ak = {0};
    unsigned n = kc->key_id;
    veil_client_status st = VEIL_CLIENT_OK;

    /* required where enrolment found the KEM keys in the TPM; elsewhere
     * the key rests on the configuration's signature and the quote's
     * binding (docs/PROTOCOL-V2.md 4.4) */
    if (t == NULL || strcmp(url, veil_trust_url(t)) != 0 || !t->kem_tpm)
        return VEIL_CLIENT_OK;
    if (cert_known(c, url, kc))
        return VEIL_CLIENT_OK;
    if (!veil_cl_tpm_pub(c->engine, t->ak_pub, t->ak_pub_len, &ak))
        why_set(&w, "the enrolled AK", veil_cl_why_last());
    else
        st = cert_fetch(c->engine, c->tx, url, &ak, "the enrolled AK", kc,
                        &status, &w, err);
    veil_tpm_pub_clear(&ak);
    if (st != VEIL_CLIENT_OK)
        return st;
    if (w.what[0] == '\0') {
        cert_remember(c, url, kc);
        veil_logf(&c->log, VEIL_LOG_INFO,
                  "v2: KEM key %u is a TPM object certified by the enrolled "
                  "AK (ECC P-256, decrypt, fixedTPM, fixedParent, not "
                  "restricted)",
                  n);
        return VEIL_CLIENT_OK;
    }
    return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, (int)status, VEIL_E_VERIFY,
                        "maximum over protocol v2: KEM key %u: %s: %s%s; "
                        "nothing was sent",
                        n, w.what, w.why,
                        status != 200
                            ? ", though it was enrolled with its KEM keys in "
                              "the TPM (re-enrol with 'veil attest enroll' if "
                              "that changed)"
                            : "");
}

/* ---- enrolment ------------------------------------------------------------
 */

/* veil_cl_kem_enrol_check, step 1: the key configurations, their
 * statement verified under the signing key; *list and *n decoded.  A
 * failed check is reported to ck as "KEM keys". */
static veil_client_status enrol_keys(veil_engine *e, veil_cl_transport *tx,
                                     const char *url, const uint8_t *spki,
                                     size_t spki_len, const uint8_t fp[32],
                                     veil_cl_checker *ck,
                                     veil_ohttp_keyconfig **list, size_t *n,
                                     veil_client_error *err)
{
    const char *name = "KEM keys";
    char hx[65];
    veil_cl_http_response r;
    uint8_t named[32];
    long long not_after = 0;
    veil_cl_keys_rc rc = VEIL_CL_KEYS_OK;
    int ok = 0;
    veil_client_status st =
        veil_cl_v2_keys_get(tx, url, KEYS_MAX_BODY, &r, err);
    if (st != VEIL_CLIENT_OK) {
        veil_cl_check(ck, name, 0, "GET " VEIL_OHTTP_WELL_KNOWN ": %s",
                      err ? err->detail : "failed");
        return st;
    }
    veil_hex(fp, 32, hx);
    if (r.status != 200)
        veil_cl_check(ck, name, 0,
                      "the report says the KEM keys are TPM objects, but "
                      "GET " VEIL_OHTTP_WELL_KNOWN " answered %ld",
                      r.status);
    else if (veil_cl_keys_headers(&r, &not_after, named) != VEIL_CL_KEYS_OK)
        veil_cl_check(ck, name, 0,
                      "the key configurations' signature headers "
                      "(X-Veil-Keys-Signature, -Signed-At, -Expires, "
                      "X-Veil-Signing-Key) are missing, doubled or "
                      "malformed");
    else if ((rc = veil_cl_keys_signed(e, &r, spki, spki_len, fp, named,
                                       not_after)) == VEIL_CL_KEYS_SIGNER)
        veil_cl_check(ck, name, 0,
                      "the key configurations are signed by %.71s, not by "
                      "the reported signing key sha256:%s",
                      r.veil_signing_key, hx);
    else if (rc == VEIL_CL_KEYS_SIGNATURE)
        veil_cl_check(ck, name, 0,
                      "the key configurations' signature does not verify "
                      "under the reported signing key sha256:%s",
                      hx);
    else if (rc == VEIL_CL_KEYS_EXPIRED)
        veil_cl_check(ck, name, 0,
                      "the key configurations expired (signed not_after "
                      "%lld)",
                      not_after);
    else if (veil_ohttp_keys_decode((const uint8_t *)r.body, r.len, list, n) !=
             VEIL_OK)
        veil_cl_check(ck, name, 0,
                      "the signed body is no list of key configurations "
                      "veil can use");
    else
        ok = 1;
    free(r.body);
    if (!ok)
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, (int)r.status,
                            VEIL_E_VERIFY, "%s", ck->failed);
    return VEIL_CLIENT_OK;
}

veil_client_status
veil_cl_kem_enrol_check(veil_engine *e, veil_cl_transport *tx, const char *url,
                        const veil_tpm_pub *ak, const uint8_t *sign_spki,
                        size_t sign_spki_len, const uint8_t sign_sha[32],
                        veil_cl_checker *ck, veil_client_error *err)
{
    veil_ohttp_keyconfig *list = NULL;
    size_t n = 0;
    char name[32];
    veil_cl_kem_why w;
    long status = 0;
    veil_client_status st = enrol_keys(e, tx, url, sign_spki, sign_spki_len,
                                       sign_sha, ck, &list, &n, err);
    for (size_t i = 0; st == VEIL_CLIENT_OK && i < n; i++) {
        snprintf(name, sizeof name, "KEM key %u", (unsigned)list[i].key_id);
        st = cert_fetch(e, tx, url, ak, "the AK being enrolled", &list[i],
                        &status, &w, err);
        if (st != VEIL_CLIENT_OK) {
            veil_cl_check(ck, name, 0, "GET /v2/keys/certify: %s",
                          err ? err->detail : "failed");
        } else if (w.what[0] != '\0') {
            veil_cl_check(ck, name, 0, "%s: %s%s", w.what, w.why,
                          status != 200 ? ", though the report says the KEM "
                                          "keys are TPM objects"
                                        : "");
            st = veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, (int)status,
                              VEIL_E_VERIFY, "%s", ck->failed);
        } else {
            veil_cl_check(ck, name, 1,
                          "a TPM object certified by the AK being enrolled "
                          "(ECC P-256, decrypt, fixedTPM, fixedParent, not "
                          "restricted), its point the key configuration's");
        }
    }
    free(list);
    if (st == VEIL_CLIENT_OK)
        veil_cl_check(ck, "KEM keys", 1,
                      "checked %zu KEM key certification(s); the key "
                      "configurations signed by the reported signing key",
                      n);
    return st;
}
