/* veil-bench client: the bare client (client_bare.h): seal, open and POST
 * a package with OpenSSL and libcurl directly.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "bench.h"
#include "client_bare.h"
#include "veil/client.h"

static char *b64_new(size_t len)
{
    return malloc(4 * ((len + 2) / 3) + 1);
}

/* A payload ID (veil_uuid4, from a software engine of its own: the bare
 * side has none). */
static int new_payload_id(char id[37])
{
    veil_engine_config cfg;
    veil_engine *e = NULL;
    int ret = -1;

    memset(&cfg, 0, sizeof cfg);
    if (veil_engine_new(&cfg, &e) != VEIL_OK)
        veil_fail("veil_engine_new");
    else if (veil_uuid4(e, id) != VEIL_OK)
        veil_fail("veil_uuid4");
    else
        ret = 0;
    veil_engine_free(e);
    return ret;
}

/* ---- bare seal ---------------------------------------------------------- */

int op_bare_seal(void *arg)
{
    bare_seal *b = arg;
    size_t wk_len = sizeof b->wk;
    int ok;

    ok = RAND_bytes(b->key, sizeof b->key) == 1 &&
         RAND_bytes(b->nonce, sizeof b->nonce) == 1 &&
         ossl_gcm_seal(b->key, sizeof b->key, b->nonce, sizeof b->nonce, b->pt,
                       b->len, b->ct, b->tag) == 0 &&
         ossl_oaep_encrypt(b->to, b->key, sizeof b->key, b->wk, &wk_len) == 0;
    if (!ok)
        return ossl_fail("bare seal (EVP AES-256-GCM + RSA-OAEP)");
    b->wk_len = wk_len;
    EVP_EncodeBlock((unsigned char *)b->ct_b64, b->ct, (int)b->len);
    EVP_EncodeBlock((unsigned char *)b->nonce_b64, b->nonce, sizeof b->nonce);
    EVP_EncodeBlock((unsigned char *)b->tag_b64, b->tag, sizeof b->tag);
    EVP_EncodeBlock((unsigned char *)b->wk_b64, b->wk, (int)b->wk_len);
    return 0;
}

void bare_seal_free(bare_seal *b)
{
    free(b->ct);
    free(b->ct_b64);
    memset(b, 0, sizeof *b);
}

/* Sets up and runs one seal of pt to `to`. */
int bare_seal_init(bare_seal *b, EVP_PKEY *to, const uint8_t *pt, size_t len)
{
    memset(b, 0, sizeof *b);
    if (len > INT_MAX / 2)
        return -1;
    b->to = to;
    b->pt = pt;
    b->len = len;
    b->ct = malloc(len ? len : 1);
    b->ct_b64 = b64_new(len);
    if (!b->ct || !b->ct_b64)
        return oom_fail();
    return op_bare_seal(b);
}

/* The package text of a bare seal, written into out (tag in its own field,
 * as veil sends it). */
int pkg_assemble(const bare_seal *b, char *out, size_t cap)
{
    int n = bench_pkg_text(out, cap, b->ct_b64, b->nonce_b64, b->tag_b64,
                           b->wk_b64);

    if (n < 0) {
        fprintf(stderr, "veil-bench: bare package does not fit\n");
        return -1;
    }
    return 0;
}

/* ---- bare open ---------------------------------------------------------- */

static const char *const FIELDS[F_N] = {"ciphertext", "nonce", "tag",
                                        "encrypted_aes_key"};

/* Strict standard base64 of n bytes into out (cap bytes). */
static int b64_decode(const char *in, size_t n, uint8_t *out, size_t cap,
                      size_t *len)
{
    size_t pad = 0;
    int r;

    if (n % 4 || n / 4 * 3 > cap || n > INT_MAX)
        return -1;
    if (n && in[n - 1] == '=')
        pad = n > 1 && in[n - 2] == '=' ? 2 : 1;
    r = EVP_DecodeBlock(out, (const unsigned char *)in, (int)n);
    if (r < 0 || (size_t)r < pad)
        return -1;
    *len = (size_t)r - pad;
    return 0;
}

/* The fields of a package we sealed ourselves. */
void open_from_seal(bare_open *o, const bare_seal *s)
{
    o->f[F_CT] = s->ct_b64;
    o->f[F_NONCE] = s->nonce_b64;
    o->f[F_TAG] = s->tag_b64;
    o->f[F_WK] = s->wk_b64;
    for (int i = 0; i < F_N; i++)
        o->n[i] = strlen(o->f[i]);
    o->known_key = s->key;
}

/* Finds the four fields in a package text: one pass over its "name":"value"
 * pairs (the values are base64 and short names: no escapes). */
int open_from_text(bare_open *o, const char *text)
{
    const char *p = text, *k, *ke, *v, *ve;
    unsigned found = 0;

    while ((k = strchr(p, '"')) != NULL && (ke = strchr(k + 1, '"'))) {
        p = ke + 1;
        if (ke[1] != ':' || ke[2] != '"')
            continue;
        v = ke + 3;
        if (!(ve = strchr(v, '"')))
            break;
        for (int i = 0; i < F_N; i++)
            if ((size_t)(ke - k - 1) == strlen(FIELDS[i]) &&
                memcmp(k + 1, FIELDS[i], (size_t)(ke - k - 1)) == 0) {
                o->f[i] = v;
                o->n[i] = (size_t)(ve - v);
                found |= 1u << i;
            }
        p = ve + 1;
    }
    if (found != (1u << F_N) - 1) {
        fprintf(stderr,
                "veil-bench: the answer lacks a package field: "
                "%.200s\n",
                text);
        return -1;
    }
    return 0;
}

static int unwrap_key(bare_open *o, size_t wk_len, const uint8_t **key)
{
    p11_rsa_ctx *c = o->p11;
    CK_RV rv;

    if (o->priv) {
        size_t klen = sizeof o->key;

        if (ossl_oaep_decrypt(o->priv, o->wk, wk_len, o->key, &klen) != 0)
            return ossl_fail("bare EVP_PKEY_decrypt");
        if (klen != AES_KEY_LEN) {
            fprintf(stderr, "veil-bench: bare unwrap gave %zu bytes\n", klen);
            return -1;
        }
        *key = o->key;
        return 0;
    }
    memcpy(c->ct, o->wk, wk_len);
    c->ct_len = wk_len;
    rv = p11_decrypt_once(c);
    if (rv != CKR_OK)
        return ckr_fail("bare C_DecryptInit/C_Decrypt", rv);
    if (c->mech.mechanism == CKM_RSA_PKCS_OAEP && c->out_len == AES_KEY_LEN) {
        *key = c->out;
        return 0;
    }
    if (c->mech.mechanism == CKM_RSA_X_509 && c->out_len == c->k &&
        c->out[0] == 0 && o->known_key) {
        *key = o->known_key;
        return 0;
    }
    fprintf(stderr,
            "veil-bench: bare C_Decrypt gave %lu bytes that it "
            "cannot use\n",
            (unsigned long)c->out_len);
    return -1;
}

int op_bare_open(void *arg)
{
    bare_open *o = arg;
    size_t ct_len, nonce_len, tag_len, wk_len, need = o->n[F_CT] / 4 * 3;
    const uint8_t *key = NULL;
    EVP_CIPHER_CTX *cc = NULL;
    int n1 = 0, n2 = 0, ok;

    if (need > o->cap) { /* the first time only */
        free(o->ct);
        free(o->pt);
        o->ct = malloc(need);
        o->pt = malloc(need);
        if (!o->ct || !o->pt)
            return oom_fail();
        o->cap = need;
    }
    if (b64_decode(o->f[F_CT], o->n[F_CT], o->ct, o->cap, &ct_len) != 0 ||
        b64_decode(o->f[F_NONCE], o->n[F_NONCE], o->nonce, sizeof o->nonce,
                   &nonce_len) != 0 ||
        b64_decode(o->f[F_TAG], o->n[F_TAG], o->tag, sizeof o->tag, &tag_len) !=
            0 ||
        b64_decode(o->f[F_WK], o->n[F_WK], o->wk, sizeof o->wk, &wk_len) != 0 ||
        nonce_len != GCM_IV_LEN || tag_len != TAG_LEN || ct_len > INT_MAX) {
        fprintf(stderr, "veil-bench: bare open: bad base64 or sizes\n");
        return -1;
    }
    if (unwrap_key(o, wk_len, &key) != 0)
        return -1;
    ok = (cc = EVP_CIPHER_CTX_new()) != NULL &&
         EVP_DecryptInit_ex(cc, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
         EVP_CIPHER_CTX_ctrl(cc, EVP_CTRL_GCM_SET_IVLEN, (int)nonce_len,
                             NULL) == 1 &&
         EVP_DecryptInit_ex(cc, NULL, NULL, key, o->nonce) == 1 &&
         EVP_DecryptUpdate(cc, o->pt, &n1, o->ct, (int)ct_len) == 1 &&
         EVP_CIPHER_CTX_ctrl(cc, EVP_CTRL_GCM_SET_TAG, TAG_LEN, o->tag) == 1 &&
         EVP_DecryptFinal_ex(cc, o->pt + n1, &n2) == 1;
    EVP_CIPHER_CTX_free(cc);
    if (!ok)
        return ossl_fail("bare AES-256-GCM open");
    o->pt_len = (size_t)n1 + (size_t)n2;
    return 0;
}

void bare_open_free(bare_open *o)
{
    free(o->ct);
    free(o->pt);
    memset(o, 0, sizeof *o);
}

/* ---- bare POST ---------------------------------------------------------- */

/* Makes room for `need` bytes (twice that, to grow rarely). */
static int reserve(char **buf, size_t *cap, size_t need)
{
    char *b;

    if (need <= *cap)
        return 0;
    if (!(b = realloc(*buf, 2 * need)))
        return -1;
    *buf = b;
    *cap = 2 * need;
    return 0;
}

static size_t post_sink(char *data, size_t size, size_t n, void *ctx)
{
    bare_post *p = ctx;
    size_t len = size * n;

    if (reserve(&p->resp, &p->resp_cap, p->resp_len + len + 1) != 0)
        return 0;
    memcpy(p->resp + p->resp_len, data, len);
    p->resp_len += len;
    p->resp[p->resp_len] = '\0';
    return len;
}

/* POSTs body; a 200 answer lands in p->resp. */
int post_send(bare_post *p, const char *body, size_t len)
{
    long status = 0;
    CURLcode cc;

    p->resp_len = 0;
    curl_easy_setopt(p->h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(p->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    cc = curl_easy_perform(p->h);
    if (cc != CURLE_OK) {
        fprintf(stderr, "veil-bench: bare POST failed: %s\n",
                curl_easy_strerror(cc));
        return -1;
    }
    curl_easy_getinfo(p->h, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200 || !p->resp) {
        fprintf(stderr, "veil-bench: bare POST: HTTP %ld: %.200s\n", status,
                p->resp ? p->resp : "");
        return -1;
    }
    return 0;
}

void bare_post_free(bare_post *p)
{
    if (p->h)
        curl_easy_cleanup(p->h);
    curl_slist_free_all(p->hdrs);
    free(p->resp);
    memset(p, 0, sizeof *p);
}

static int add_header(bare_post *p, const char *line)
{
    struct curl_slist *l = curl_slist_append(p->hdrs, line);

    if (!l)
        return oom_fail();
    p->hdrs = l;
    return 0;
}

/* One handle for every bare POST, with the headers veil sends; answers
 * are sealed to client_pem. */
int bare_post_init(bare_post *p, const bench_opts *o, const char *client_pem)
{
    char url[2048], id[37], id_h[64];
    size_t kn = strlen(client_pem) * 3 + 32;
    char *key_h = malloc(kn);
    int ret = -1;

    memset(p, 0, sizeof *p);
    if (!key_h)
        return oom_fail();
    if (snprintf(url, sizeof url, "%s/v1/chat/secure_completion", o->url) >=
        (int)sizeof url) {
        fprintf(stderr, "veil-bench: --url is too long\n");
        goto out;
    }
    snprintf(key_h, kn, "X-Public-Key: ");
    if (pct_append(key_h, kn, strlen(key_h), client_pem) == 0 ||
        new_payload_id(id) != 0)
        goto out;
    snprintf(id_h, sizeof id_h, "X-Payload-ID: %s", id);
    if (add_header(p, "Content-Type: application/octet-stream") != 0 ||
        add_header(p, "Accept: application/json") != 0 ||
        add_header(p, "Expect:") != 0 || add_header(p, id_h) != 0 ||
        add_header(p, key_h) != 0)
        goto out;
    if (!(p->h = curl_easy_init())) {
        fprintf(stderr, "veil-bench: curl_easy_init failed\n");
        goto out;
    }
    curl_easy_setopt(p->h, CURLOPT_URL, url);
    curl_easy_setopt(p->h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(p->h, CURLOPT_HTTPHEADER, p->hdrs);
    curl_easy_setopt(p->h, CURLOPT_POST, 1L);
    curl_easy_setopt(p->h, CURLOPT_WRITEFUNCTION, post_sink);
    curl_easy_setopt(p->h, CURLOPT_WRITEDATA, p);
    if (o->ca_file)
        curl_easy_setopt(p->h, CURLOPT_CAINFO, o->ca_file);
    ret = 0;
out:
    free(key_h);
    return ret;
}
