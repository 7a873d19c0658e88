/* Oblivious HTTP (RFC 9458): key configurations (3), request
 * encapsulation (4.3) and response encapsulation (4.4).
 *
 * The labels are the RFC's: HPKE info "message/bhttp request" || 0x00 ||
 * hdr; the response secret is Export("message/bhttp response",
 * max(Nn, Nk)); its salt is enc || response_nonce; the key and nonce come
 * from HKDF-Extract/Expand with "key" and "nonce". */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine_int.h"
#include "ohttp.h"

#define OH "ohttp"
#define MAX_CONFIGS 64

static const char req_label[] = "message/bhttp request";
static const char res_label[] = "message/bhttp response";

struct veil_ohttp_ctx {
    veil_hpke_ctx *hpke;
    veil_hpke_suite suite;
    uint8_t enc[VEIL_HPKE_ENC_MAX];
    size_t enc_len;
    uint8_t pk[VEIL_HPKE_ENC_MAX]; /* the recipient's public key (pkR) */
    size_t pk_len;
};

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static uint8_t *put16(uint8_t *q, uint16_t v)
{
    q[0] = (uint8_t)(v >> 8);
    q[1] = (uint8_t)v;
    return q + 2;
}

/* ---- media types --------------------------------------------------------- */

int veil_ohttp_media_is(const char *ct, const char *type)
{
    size_t n = type ? strlen(type) : 0;

    if (ct == NULL || n == 0)
        return 0;
    while (*ct == ' ' || *ct == '\t') /* a field value's leading OWS */
        ct++;
    if (strncasecmp(ct, type, n) != 0)
        return 0;
    ct += n;
    while (*ct == ' ' || *ct == '\t') /* OWS before ';' (parameters) */
        ct++;
    return *ct == '\0' || *ct == ';';
}

/* ---- key configurations ----------------------------------------------- */

static size_t config_size(const veil_ohttp_keyconfig *c)
{
    return 1 + 2 + c->pk_len + 2 + 4 * c->n_algs;
}

static veil_rc config_check(const veil_ohttp_keyconfig *c)
{
    if (!veil_hpke_nenc(c->kem))
        return veil_err(VEIL_E_UNSUPPORTED, OH, NULL,
                        "key configuration: KEM 0x%04x is not supported",
                        c->kem);
    if (c->pk_len != veil_hpke_nenc(c->kem) ||
        (c->kem == VEIL_HPKE_KEM_P256 && c->pk[0] != 0x04))
        return veil_err(VEIL_E_ARG, OH, NULL,
                        "key configuration: public key of the wrong form");
    if (c->n_algs == 0 || c->n_algs > VEIL_OHTTP_MAX_ALGS)
        return veil_err(VEIL_E_ARG, OH, NULL,
                        "key configuration: 1..%d symmetric suites",
                        VEIL_OHTTP_MAX_ALGS);
    return VEIL_OK;
}

veil_rc veil_ohttp_keyconfig_encode(const veil_ohttp_keyconfig *c, uint8_t *out,
                                    size_t *len)
{
    uint8_t *q = out;
    veil_rc rc;

    veil_err_clear();
    if (!c || !out || !len)
        return veil_err(VEIL_E_ARG, OH, NULL, "key configuration: argument");
    rc = config_check(c);
    if (rc != VEIL_OK)
        return rc;
    if (*len < config_size(c))
        return veil_err(VEIL_E_BUFFER, OH, NULL,
                        "key configuration needs %zu bytes", config_size(c));
    *q++ = c->key_id;
    q = put16(q, c->kem);
    memcpy(q, c->pk, c->pk_len);
    q += c->pk_len;
    q = put16(q, (uint16_t)(4 * c->n_algs));
    for (size_t i = 0; i < c->n_algs; i++) {
        q = put16(q, c->algs[i].kdf);
        q = put16(q, c->algs[i].aead);
    }
    *len = (size_t)(q - out);
    return VEIL_OK;
}

veil_rc veil_ohttp_keyconfig_decode(const uint8_t *in, size_t len,
                                    veil_ohttp_keyconfig *c)
{
    size_t npk, algs_len;
    const uint8_t *p = in;

    veil_err_clear();
    if (!in || !c)
        return veil_err(VEIL_E_ARG, OH, NULL, "key configuration: argument");
    memset(c, 0, sizeof *c);
    if (len < 3)
        return veil_err(VEIL_E_ARG, OH, NULL, "key configuration truncated");
    c->key_id = p[0];
    c->kem = get16(p + 1);
    npk = veil_hpke_nenc(c->kem);
    if (!npk)
        return veil_err(VEIL_E_UNSUPPORTED, OH, NULL,
                        "key configuration: KEM 0x%04x is not supported",
                        c->kem);
    if (len < 3 + npk + 2)
        return veil_err(VEIL_E_ARG, OH, NULL, "key configuration truncated");
    memcpy(c->pk, p + 3, npk);
    c->pk_len = npk;
    algs_len = get16(p + 3 + npk);
    if (algs_len < 4 || algs_len % 4 || len != 3 + npk + 2 + algs_len)
        return veil_err(VEIL_E_ARG, OH, NULL,
                        "key configuration: symmetric suites of %zu bytes in "
                        "a configuration of %zu",
                        algs_len, len);
    p += 3 + npk + 2;
    for (size_t i = 0; i < algs_len / 4; i++) {
        veil_ohttp_alg a = {get16(p + 4 * i), get16(p + 4 * i + 2)};
        veil_hpke_suite s = {c->kem, a.kdf, a.aead};

        /* keep what HPKE here can use, for OHTTP (not export-only) */
        if (veil_hpke_suite_check(&s) != VEIL_OK ||
            a.aead == VEIL_HPKE_AEAD_EXPORT_ONLY ||
            c->n_algs == VEIL_OHTTP_MAX_ALGS)
            continue;
        c->algs[c->n_algs++] = a;
    }
    veil_err_clear();
    if (c->n_algs == 0)
        return veil_err(VEIL_E_UNSUPPORTED, OH, NULL,
                        "key configuration %u lists no symmetric suite veil "
                        "supports",
                        c->key_id);
    return config_check(c);
}

veil_rc veil_ohttp_keys_encode(const veil_ohttp_keyconfig *c, size_t n,
                               uint8_t **out, size_t *len)
{
    size_t total = 0, room;
    uint8_t *buf, *q;
    veil_rc rc;

    veil_err_clear();
    if (!c || !n || n > MAX_CONFIGS || !out || !len)
        return veil_err(VEIL_E_ARG, OH, NULL, "key list: 1..%d configurations",
                        MAX_CONFIGS);
    for (size_t i = 0; i < n; i++) {
        rc = config_check(&c[i]);
        if (rc != VEIL_OK)
            return rc;
        total += 2 + config_size(&c[i]);
    }
    buf = malloc(total);
    if (!buf)
        return veil_err(VEIL_E_NOMEM, OH, NULL, "out of memory");
    q = buf;
    for (size_t i = 0; i < n; i++) {
        room = total - (size_t)(q - buf) - 2;
        q = put16(q, (uint16_t)config_size(&c[i]));
        rc = veil_ohttp_keyconfig_encode(&c[i], q, &room);
        if (rc != VEIL_OK) {
            free(buf);
            return rc;
        }
        q += room;
    }
    *out = buf;
    *len = total;
    return VEIL_OK;
}

veil_rc veil_ohttp_keys_decode(const uint8_t *in, size_t len,
                               veil_ohttp_keyconfig **out, size_t *n)
{
    veil_ohttp_keyconfig *v;
    size_t pos = 0, count = 0;
    veil_rc rc = VEIL_OK;

    veil_err_clear();
    if ((len && !in) || !out || !n)
        return veil_err(VEIL_E_ARG, OH, NULL, "key list: argument");
    *out = NULL;
    *n = 0;
    v = calloc(MAX_CONFIGS, sizeof *v);
    if (!v)
        return veil_err(VEIL_E_NOMEM, OH, NULL, "out of memory");
    while (rc == VEIL_OK && pos < len) {
        size_t cl;

        if (len - pos < 2 || (cl = get16(in + pos)) > len - pos - 2) {
            rc = veil_err(VEIL_E_ARG, OH, NULL,
                          "key list: a configuration length runs past the "
                          "end (byte %zu)",
                          pos);
            break;
        }
        if (count == MAX_CONFIGS) {
            rc = veil_err(VEIL_E_ARG, OH, NULL,
                          "key list: more than %d configurations", MAX_CONFIGS);
            break;
        }
        rc = veil_ohttp_keyconfig_decode(in + pos + 2, cl, &v[count]);
        if (rc == VEIL_OK)
            count++;
        else if (rc == VEIL_E_UNSUPPORTED) /* another KEM or suites */
            rc = VEIL_OK;
        pos += 2 + cl;
    }
    if (rc == VEIL_OK && count == 0)
        rc = veil_err(VEIL_E_UNSUPPORTED, OH, NULL,
                      "key list: no configuration veil can use");
    if (rc != VEIL_OK) {
        free(v);
        return rc;
    }
    veil_err_clear();
    *out = v;
    *n = count;
    return VEIL_OK;
}

/* ---- requests ----------------------------------------------------------- */

static void header_put(uint8_t hdr[VEIL_OHTTP_HDR_LEN], uint8_t key_id,
                       const veil_hpke_suite *s)
{
    hdr[0] = key_id;
    put16(hdr + 1, s->kem);
    put16(hdr + 3, s->kdf);
    put16(hdr + 5, s->aead);
}

/* info = "message/bhttp request" || 0x00 || hdr */
static size_t info_of(const uint8_t hdr[VEIL_OHTTP_HDR_LEN],
                      uint8_t info[sizeof req_label + VEIL_OHTTP_HDR_LEN])
{
    memcpy(info, req_label, sizeof req_label); /* with its NUL: the 0x00 */
    memcpy(info + sizeof req_label, hdr, VEIL_OHTTP_HDR_LEN);
    return sizeof req_label + VEIL_OHTTP_HDR_LEN;
}

veil_rc veil_ohttp_parse_header(const uint8_t *in, size_t len,
                                veil_ohttp_header *h)
{
    veil_err_clear();
    if (!in || !h)
        return veil_err(VEIL_E_ARG, OH, NULL, "request: argument");
    if (len < VEIL_OHTTP_HDR_LEN)
        return veil_err(VEIL_E_ARG, OH, NULL,
                        "encapsulated request shorter than its header");
    h->key_id = in[0];
    h->suite.kem = get16(in + 1);
    h->suite.kdf = get16(in + 3);
    h->suite.aead = get16(in + 5);
    if (len <
        VEIL_OHTTP_HDR_LEN + veil_hpke_nenc(h->suite.kem) + VEIL_HPKE_TAG_LEN)
        return veil_err(VEIL_E_ARG, OH, NULL,
                        "encapsulated request too short for its KEM");
    return VEIL_OK;
}

static int config_lists(const veil_ohttp_keyconfig *c, veil_ohttp_alg a)
{
    for (size_t i = 0; i < c->n_algs; i++)
        if (c->algs[i].kdf == a.kdf && c->algs[i].aead == a.aead)
            return a.aead != VEIL_HPKE_AEAD_EXPORT_ONLY;
    return 0;
}

veil_rc veil_ohttp_encap_request(veil_engine *e, const veil_ohttp_keyconfig *c,
                                 veil_ohttp_alg alg, const uint8_t *req,
                                 size_t req_len, const veil_hpke_key *eph,
                                 uint8_t **out, size_t *out_len,
                                 veil_ohttp_ctx **ctx)
{
    veil_hpke_suite s;
    uint8_t hdr[VEIL_OHTTP_HDR_LEN],
        info[sizeof req_label + VEIL_OHTTP_HDR_LEN];
    size_t info_len, n;
    veil_ohttp_ctx *x;
    uint8_t *buf;
    veil_rc rc;

    veil_err_clear();
    if (!e || !c || (req_len && !req) || !out || !out_len || !ctx)
        return veil_err(VEIL_E_ARG, OH, NULL, "encapsulate: missing argument");
    *out = NULL;
    *ctx = NULL;
    if (!config_lists(c, alg))
        return veil_err(VEIL_E_UNSUPPORTED, OH, NULL,
                        "key configuration %u does not offer KDF 0x%04x with "
                        "AEAD 0x%04x",
                        c->key_id, alg.kdf, alg.aead);
    s = (veil_hpke_suite){c->kem, alg.kdf, alg.aead};
    header_put(hdr, c->key_id, &s);
    info_len = info_of(hdr, info);
    n = VEIL_OHTTP_HDR_LEN + veil_hpke_nenc(c->kem) + req_len +
        VEIL_HPKE_TAG_LEN;
    x = calloc(1, sizeof *x);
    buf = malloc(n);
    if (!x || !buf) {
        free(x);
        free(buf);
        return veil_err(VEIL_E_NOMEM, OH, NULL, "out of memory");
    }
    x->suite = s;
    memcpy(x->pk, c->pk, c->pk_len);
    x->pk_len = c->pk_len;
    x->enc_len = sizeof x->enc;
    rc = veil_hpke_setup_base_s(e, &s, c->pk, c->pk_len, info, info_len, eph,
                                x->enc, &x->enc_len, &x->hpke);
    if (rc == VEIL_OK) {
        memcpy(buf, hdr, VEIL_OHTTP_HDR_LEN);
        memcpy(buf + VEIL_OHTTP_HDR_LEN, x->enc, x->enc_len);
        rc = veil_hpke_seal(e, x->hpke, NULL, 0, req, req_len,
                            buf + VEIL_OHTTP_HDR_LEN + x->enc_len);
    }
    if (rc != VEIL_OK) {
        free(buf);
        veil_ohttp_ctx_free(x);
        return rc;
    }
    *out = buf;
    *out_len = n;
    *ctx = x;
    return VEIL_OK;
}

veil_rc veil_ohttp_decap_request(veil_engine *e, const veil_ohttp_keyconfig *c,
                                 const veil_hpke_key *skR, const uint8_t *in,
                                 size_t len, veil_secbuf **req,
                                 veil_ohttp_ctx **ctx)
{
    uint8_t info[sizeof req_label + VEIL_OHTTP_HDR_LEN];
    veil_ohttp_header h;
    veil_ohttp_ctx *x;
    veil_secbuf *pt = NULL;
    size_t nenc, ct_len;
    veil_rc rc;

    veil_err_clear();
    if (!e || !c || !skR || !req || !ctx)
        return veil_err(VEIL_E_ARG, OH, NULL, "decapsulate: missing argument");
    *req = NULL;
    *ctx = NULL;
    rc = veil_ohttp_parse_header(in, len, &h);
    if (rc != VEIL_OK)
        return rc;
    if (h.key_id != c->key_id)
        return veil_err(VEIL_E_NOT_FOUND, OH, NULL,
                        "no key configuration with key ID %u", h.key_id);
    if (h.suite.kem != c->kem || veil_hpke_key_kem(skR) != c->kem ||
        !config_lists(c, (veil_ohttp_alg){h.suite.kdf, h.suite.aead}))
        return veil_err(VEIL_E_UNSUPPORTED, OH, NULL,
                        "key configuration %u does not offer the request's "
                        "suite",
                        c->key_id);
    nenc = veil_hpke_nenc(c->kem);
    ct_len = len - VEIL_OHTTP_HDR_LEN - nenc;
    x = calloc(1, sizeof *x);
    if (!x)
        return veil_err(VEIL_E_NOMEM, OH, NULL, "out of memory");
    x->suite = h.suite;
    memcpy(x->pk, c->pk, c->pk_len);
    x->pk_len = c->pk_len;
    x->enc_len = nenc;
    memcpy(x->enc, in + VEIL_OHTTP_HDR_LEN, nenc);
    rc = veil_hpke_setup_base_r(e, &h.suite, skR, x->enc, nenc, info,
                                info_of(in, info), &x->hpke);
    if (rc == VEIL_OK)
        rc = veil_secbuf_new(
            ct_len - VEIL_HPKE_TAG_LEN ? ct_len - VEIL_HPKE_TAG_LEN : 1, &pt);
    if (rc == VEIL_OK)
        rc = veil_hpke_open(e, x->hpke, NULL, 0, in + VEIL_OHTTP_HDR_LEN + nenc,
                            ct_len, veil_secbuf_data(pt));
    if (rc != VEIL_OK) {
        /* a bad enc (not a point) and a bad tag are the same failure */
        veil_secbuf_free(pt);
        veil_ohttp_ctx_free(x);
        return rc == VEIL_E_NOMEM ? rc
                                  : veil_err(VEIL_E_DECRYPT, OH, NULL,
                                             "the request could not be "
                                             "decapsulated");
    }
    veil_secbuf_truncate(pt, ct_len - VEIL_HPKE_TAG_LEN);
    *req = pt;
    *ctx = x;
    return VEIL_OK;
}

/* ---- responses ---------------------------------------------------------- */

/* The response AEAD key and nonce (RFC 9458 4.4 steps 1, 3-5). */
static veil_rc response_keys(veil_engine *e, const veil_ohttp_ctx *x,
                             const uint8_t *nonce, uint8_t *key,
                             uint8_t iv[VEIL_HPKE_NONCE_LEN])
{
    size_t nk = veil_hpke_nk(x->suite.aead), nn = veil_hpke_nn(x->suite.aead),
           nmax = nk > nn ? nk : nn;
    uint8_t secret[VEIL_HPKE_KEY_MAX], prk[VEIL_HKDF_PRK_LEN];
    uint8_t salt[VEIL_HPKE_ENC_MAX + VEIL_HPKE_KEY_MAX];
    veil_rc rc;

    rc = veil_hpke_export(e, x->hpke, (const uint8_t *)res_label,
                          sizeof res_label - 1, secret, nmax);
    memcpy(salt, x->enc, x->enc_len);
    memcpy(salt + x->enc_len, nonce, nmax);
    if (rc == VEIL_OK)
        rc = veil_hkdf_sha256_extract(e, salt, x->enc_len + nmax, secret, nmax,
                                      prk);
    if (rc == VEIL_OK)
        rc = veil_hkdf_sha256_expand(e, prk, sizeof prk, (const uint8_t *)"key",
                                     3, key, nk);
    if (rc == VEIL_OK)
        rc = veil_hkdf_sha256_expand(e, prk, sizeof prk,
                                     (const uint8_t *)"nonce", 5, iv, nn);
    veil_wipe(secret, sizeof secret);
    veil_wipe(prk, sizeof prk);
    return rc;
}

static size_t nonce_len(const veil_ohttp_ctx *x)
{
    size_t nk = veil_hpke_nk(x->suite.aead), nn = veil_hpke_nn(x->suite.aead);
    return nk > nn ? nk : nn;
}

veil_rc veil_ohttp_encap_response(veil_engine *e, const veil_ohttp_ctx *ctx,
                                  const uint8_t *res, size_t res_len,
                                  const uint8_t *nonce, uint8_t **out,
                                  size_t *out_len)
{
    uint8_t key[VEIL_HPKE_KEY_MAX], iv[VEIL_HPKE_NONCE_LEN];
    size_t nl, n;
    uint8_t *buf;
    veil_rc rc;

    veil_err_clear();
    if (!e || !ctx || (res_len && !res) || !out || !out_len)
        return veil_err(VEIL_E_ARG, OH, NULL,
                        "encapsulate response: missing argument");
    *out = NULL;
    nl = nonce_len(ctx);
    n = nl + res_len + VEIL_HPKE_TAG_LEN;
    buf = malloc(n);
    if (!buf)
        return veil_err(VEIL_E_NOMEM, OH, NULL, "out of memory");
    if (nonce)
        memcpy(buf, nonce, nl);
    rc = nonce ? VEIL_OK : veil_random(e, buf, nl);
    if (rc == VEIL_OK)
        rc = response_keys(e, ctx, buf, key, iv);
    if (rc == VEIL_OK)
        rc = veil_aes_gcm_seal(e, key, veil_hpke_nk(ctx->suite.aead), iv,
                               sizeof iv, NULL, 0, res, res_len, buf + nl,
                               buf + nl + res_len);
    veil_wipe(key, sizeof key);
    if (rc != VEIL_OK) {
        free(buf);
        return rc;
    }
    *out = buf;
    *out_len = n;
    return VEIL_OK;
}

veil_rc veil_ohttp_decap_response(veil_engine *e, veil_ohttp_ctx *ctx,
                                  const uint8_t *in, size_t len,
                                  veil_secbuf **res)
{
    uint8_t key[VEIL_HPKE_KEY_MAX], iv[VEIL_HPKE_NONCE_LEN];
    veil_secbuf *pt = NULL;
    size_t nl, pl;
    veil_rc rc;

    veil_err_clear();
    if (!e || !ctx || !in || !res)
        return veil_err(VEIL_E_ARG, OH, NULL,
                        "decapsulate response: missing argument");
    *res = NULL;
    nl = nonce_len(ctx);
    if (len < nl + VEIL_HPKE_TAG_LEN)
        return veil_err(VEIL_E_DECRYPT, OH, NULL,
                        "the response could not be decapsulated");
    pl = len - nl - VEIL_HPKE_TAG_LEN;
    rc = response_keys(e, ctx, in, key, iv);
    if (rc == VEIL_OK)
        rc = veil_secbuf_new(pl ? pl : 1, &pt);
    if (rc == VEIL_OK &&
        veil_aes_gcm_open(e, key, veil_hpke_nk(ctx->suite.aead), iv, sizeof iv,
                          NULL, 0, in + nl, pl, in + nl + pl,
                          veil_secbuf_data(pt)) != VEIL_OK)
        rc = veil_err(VEIL_E_DECRYPT, OH, NULL,
                      "the response could not be decapsulated");
    veil_wipe(key, sizeof key);
    if (rc != VEIL_OK) {
        veil_secbuf_free(pt);
        return rc;
    }
    veil_secbuf_truncate(pt, pl);
    *res = pt;
    return VEIL_OK;
}

const uint8_t *veil_ohttp_ctx_enc(const veil_ohttp_ctx *ctx, size_t *len)
{
    if (!ctx) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = ctx->enc_len;
    return ctx->enc;
}

const uint8_t *veil_ohttp_ctx_pk(const veil_ohttp_ctx *ctx, size_t *len)
{
    if (len)
        *len = ctx ? ctx->pk_len : 0;
    return ctx ? ctx->pk : NULL;
}

void veil_ohttp_ctx_free(veil_ohttp_ctx *ctx)
{
    if (!ctx)
        return;
    veil_hpke_ctx_free(ctx->hpke);
    veil_wipe(ctx, sizeof *ctx);
    free(ctx);
}
