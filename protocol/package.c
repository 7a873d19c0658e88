/* The NOMYO v1 package: seal and open, and the protocol's encodings. */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "engine_int.h"
#include "package.h"

#define PKG "protocol"
/* Room for an RSA ciphertext: moduli up to 16384 bits. */
#define WRAPPED_MAX 2048

/* ---- JSON holding secrets --------------------------------------------- */

/* Bytes the strings of a tree take unescaped (a lower bound on the printed
 * size), and a count of the values. */
static void json_measure(const cJSON *it, size_t *text, size_t *values)
{
    for (; it != NULL; it = it->next) {
        (*values)++;
        if (it->string)
            *text += strlen(it->string) + 3; /* "key": */
        if (it->valuestring && (cJSON_IsString(it) || cJSON_IsRaw(it)))
            *text += strlen(it->valuestring) + 2;
        json_measure(it->child, text, values);
    }
}

veil_rc veil_json_print_secret(const cJSON *json, size_t max, veil_secbuf **out)
{
    /* cJSON may need a few bytes beyond the text (its own advice: 5). */
    const size_t slack = 8;
    size_t text = 0, values = 0;
    *out = NULL;
    json_measure(json, &text, &values);
    if (text > max)
        return VEIL_E_BUFFER;
    /* First try: the strings plus room for punctuation and numbers (one
     * print in practice).  Escapes can make text up to 6 times longer
     * (\uXXXX), so the second try is the worst case. */
    size_t tries[2] = {text + text / 16 + 32 * values + 64,
                       6 * text + 32 * values + 64};
    for (int i = 0; i < 2; i++) {
        size_t size = tries[i] < max + slack ? tries[i] : max + slack;
        veil_secbuf *b;
        veil_rc rc = veil_secbuf_new(size, &b);
        if (rc != VEIL_OK)
            return rc;
        char *p = (char *)veil_secbuf_data(b);
        if (cJSON_PrintPreallocated((cJSON *)json, p, (int)size, 0)) {
            size_t len = strlen(p);
            if (len > max) {
                veil_secbuf_free(b);
                return VEIL_E_BUFFER;
            }
            veil_secbuf_truncate(b, len + 1);
            *out = b;
            return VEIL_OK;
        }
        veil_secbuf_free(b);
        if (size >= max + slack)
            return VEIL_E_BUFFER;
    }
    return VEIL_E_BUFFER;
}

/* Wipes the strings a node owns (not borrowed references or constant
 * keys), then its children. */
static void wipe_node(cJSON *it)
{
    if (it->valuestring && !(it->type & cJSON_IsReference))
        veil_wipe(it->valuestring, strlen(it->valuestring));
    if (it->string && !(it->type & cJSON_StringIsConst))
        veil_wipe(it->string, strlen(it->string));
    if (!(it->type & cJSON_IsReference))
        for (cJSON *c = it->child; c != NULL; c = c->next)
            wipe_node(c);
}

void veil_json_wipe_free(cJSON *json)
{
    if (json == NULL)
        return;
    wipe_node(json);
    cJSON_Delete(json);
}

/* ---- base64 ----------------------------------------------------------- */

char *veil_b64_encode(const uint8_t *in, size_t len)
{
    if (len > (size_t)1 << 30)
        return NULL;
    size_t n = 4 * ((len + 2) / 3);
    char *out = malloc(n + 1);
    if (out == NULL)
        return NULL;
    if (EVP_EncodeBlock((unsigned char *)out, in, (int)len) != (int)n) {
        free(out);
        return NULL;
    }
    out[n] = '\0';
    return out;
}

/* 1 for the 64 characters of the standard alphabet. */
static const uint8_t b64_alphabet[256] = {
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1,
    ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1,
    ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,
    ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1,
    ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1,
    ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1,
    ['x'] = 1, ['y'] = 1, ['z'] = 1, ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1,
    ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1, ['+'] = 1,
    ['/'] = 1};

veil_rc veil_b64_decode(const char *in, size_t len, uint8_t **out,
                        size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (len % 4 != 0 || len > (size_t)1 << 30)
        return veil_err(VEIL_E_ARG, PKG, NULL,
                        "base64 length is not a multiple of 4");
    size_t pad = 0;
    if (len > 0 && in[len - 1] == '=')
        pad = (len > 1 && in[len - 2] == '=') ? 2 : 1;
    unsigned bad = 0;
    for (size_t i = 0; i < len - pad; i++)
        bad |= b64_alphabet[(unsigned char)in[i]] ^ 1u;
    if (bad)
        return veil_err(VEIL_E_ARG, PKG, NULL,
                        "base64 has a character outside the alphabet");
    uint8_t *buf = malloc(len / 4 * 3 + 1);
    if (buf == NULL)
        return veil_err(VEIL_E_NOMEM, PKG, NULL, "out of memory");
    if (len > 0 &&
        EVP_DecodeBlock(buf, (const unsigned char *)in, (int)len) < 0) {
        free(buf);
        return veil_err(VEIL_E_ARG, PKG, NULL, "base64 is malformed");
    }
    *out = buf;
    *out_len = len / 4 * 3 - pad;
    return VEIL_OK;
}

/* ---- percent-encoding -------------------------------------------------- */

static int unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
           c == '~';
}

char *veil_percent_encode(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    char *out = malloc(3 * n + 1), *o = out;
    if (out == NULL)
        return NULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (unreserved(*p)) {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        }
    }
    *o = '\0';
    return out;
}

veil_rc veil_percent_decode(const char *s, char **out)
{
    *out = NULL;
    char *buf = malloc(strlen(s) + 1), *o = buf;
    if (buf == NULL)
        return veil_err(VEIL_E_NOMEM, PKG, NULL, "out of memory");
    for (const char *p = s; *p; p++) {
        if (*p != '%') {
            *o++ = *p;
            continue;
        }
        int hi = veil_hex_digit((unsigned char)p[1]),
            lo = hi < 0 ? -1 : veil_hex_digit((unsigned char)p[2]);
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            free(buf);
            return veil_err(VEIL_E_ARG, PKG, NULL,
                            "bad percent-encoding at offset %zu",
                            (size_t)(p - s));
        }
        *o++ = (char)(hi << 4 | lo);
        p += 2;
    }
    *o = '\0';
    *out = buf;
    return VEIL_OK;
}

/* ---- payload IDs ------------------------------------------------------- */

int veil_uuid_valid(const char *s)
{
    if (s == NULL || strlen(s) != 36)
        return 0;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return 0;
        } else if (veil_hex_digit((unsigned char)s[i]) < 0) {
            return 0;
        }
    }
    return 1;
}

int veil_payload_id_valid(const char *s)
{
    size_t i;

    if (s == NULL)
        return 0;
    for (i = 0; s[i]; i++)
        if (i == VEIL_PAYLOAD_ID_MAX || s[i] <= ' ' || s[i] > '~')
            return 0;
    return i > 0;
}

/* ---- sealing ----------------------------------------------------------- */

veil_rc veil_pkg_seal(veil_engine *e, const veil_key *recipient,
                      const uint8_t *pt, size_t pt_len, veil_tag_mode mode,
                      double processed_at, char **json)
{
    *json = NULL;
    veil_rc rc;
    if (pt_len > (size_t)1 << 30)
        return veil_err(VEIL_E_ARG, PKG, NULL, "plaintext too large");

    veil_secbuf *aes = NULL;
    uint8_t nonce[VEIL_PKG_NONCE_LEN], tag[VEIL_GCM_TAG_LEN];
    uint8_t *ct = malloc(pt_len + VEIL_GCM_TAG_LEN);
    uint8_t *wrapped = malloc(WRAPPED_MAX);
    size_t wrapped_len = WRAPPED_MAX;
    char *b_ct = NULL, *b_nonce = NULL, *b_tag = NULL, *b_key = NULL;
    if (ct == NULL || wrapped == NULL) {
        rc = veil_err(VEIL_E_NOMEM, PKG, NULL, "out of memory");
        goto out;
    }
    if ((rc = veil_secbuf_new(VEIL_PKG_AES_KEY_LEN, &aes)) != VEIL_OK ||
        (rc = veil_random(e, veil_secbuf_data(aes), VEIL_PKG_AES_KEY_LEN)) !=
            VEIL_OK ||
        (rc = veil_random(e, nonce, sizeof nonce)) != VEIL_OK)
        goto out;
    rc = veil_aes_gcm_seal(e, veil_secbuf_data(aes), VEIL_PKG_AES_KEY_LEN,
                           nonce, sizeof nonce, NULL, 0, pt, pt_len, ct, tag);
    if (rc != VEIL_OK)
        goto out;
    rc = veil_rsa_encrypt(e, recipient, NULL, veil_secbuf_data(aes),
                          VEIL_PKG_AES_KEY_LEN, wrapped, &wrapped_len);
    if (rc != VEIL_OK)
        goto out;

    /* Base64 needs no JSON escaping: the package is printed directly. */
    size_t ct_len = pt_len;
    if (mode == VEIL_TAG_APPENDED) {
        memcpy(ct + pt_len, tag, VEIL_GCM_TAG_LEN);
        ct_len += VEIL_GCM_TAG_LEN;
    }
    rc = VEIL_E_NOMEM;
    b_ct = veil_b64_encode(ct, ct_len);
    b_nonce = veil_b64_encode(nonce, sizeof nonce);
    b_tag = veil_b64_encode(tag, sizeof tag);
    b_key = veil_b64_encode(wrapped, wrapped_len);
    if (!b_ct || !b_nonce || !b_tag || !b_key)
        goto out;
    char at[40] = "";
    if (processed_at >= 0)
        snprintf(at, sizeof at, ",\"processed_at\":%.3f", processed_at);
    size_t n = strlen(b_ct) + strlen(b_key) + 512;
    if ((*json = malloc(n)) == NULL)
        goto out;
    snprintf(*json, n,
             "{\"version\":\"" VEIL_PKG_VERSION "\","
             "\"algorithm\":\"" VEIL_PKG_ALGORITHM "\","
             "\"encrypted_payload\":{\"ciphertext\":\"%s\","
             "\"nonce\":\"%s\"%s%s%s},"
             "\"encrypted_aes_key\":\"%s\","
             "\"key_algorithm\":\"" VEIL_PKG_KEY_ALGORITHM "\","
             "\"payload_algorithm\":\"" VEIL_PKG_PAYLOAD_ALGORITHM "\"%s}",
             b_ct, b_nonce, mode == VEIL_TAG_SEPARATE ? ",\"tag\":\"" : "",
             mode == VEIL_TAG_SEPARATE ? b_tag : "",
             mode == VEIL_TAG_SEPARATE ? "\"" : "", b_key, at);
    rc = VEIL_OK;
out:
    if (rc == VEIL_E_NOMEM && *json == NULL)
        veil_err(rc, PKG, NULL, "out of memory");
    veil_secbuf_free(aes);
    veil_wipe(tag, sizeof tag);
    free(ct);
    free(wrapped);
    free(b_ct);
    free(b_nonce);
    free(b_tag);
    free(b_key);
    return *json ? VEIL_OK : rc;
}

/* ---- opening ----------------------------------------------------------- */

/* Decodes obj[name], a base64 string; VEIL_E_ARG naming the field when it
 * is missing, not a string or not base64. */
static veil_rc get_b64(const cJSON *obj, const char *name, uint8_t **out,
                       size_t *len)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);
    *out = NULL;
    if (!cJSON_IsString(it))
        return veil_err(VEIL_E_ARG, PKG, NULL,
                        "package field \"%s\" is missing or not a string",
                        name);
    if (veil_b64_decode(it->valuestring, strlen(it->valuestring), out, len) !=
        VEIL_OK)
        return veil_err(VEIL_E_ARG, PKG, NULL,
                        "package field \"%s\" is not valid base64", name);
    return VEIL_OK;
}

/* The decoded members of a v1 package (veil_pkg_open). */
typedef struct pkg_parts {
    uint8_t *ct, *nonce, *tag, *wrapped;
    size_t ct_len, nonce_len, tag_len, wrapped_len;
} pkg_parts;

static void parts_free(pkg_parts *p)
{
    free(p->ct);
    free(p->nonce);
    free(p->tag);
    free(p->wrapped);
}

/* The GCM tag: a separate "tag" member (the Python client), or the last 16
 * bytes of the ciphertext (the JavaScript client). */
static veil_rc pkg_tag(const cJSON *payload, pkg_parts *p, veil_pkg_meta *m)
{
    veil_rc rc;

    if (cJSON_GetObjectItemCaseSensitive(payload, "tag") != NULL) {
        m->tag_mode = VEIL_TAG_SEPARATE;
        if ((rc = get_b64(payload, "tag", &p->tag, &p->tag_len)) != VEIL_OK)
            return rc;
        if (p->tag_len != VEIL_GCM_TAG_LEN)
            return veil_err(VEIL_E_ARG, PKG, NULL,
                            "package tag is %zu bytes, not %d", p->tag_len,
                            VEIL_GCM_TAG_LEN);
        return VEIL_OK;
    }
    m->tag_mode = VEIL_TAG_APPENDED;
    if (p->ct_len < VEIL_GCM_TAG_LEN)
        return veil_err(VEIL_E_ARG, PKG, NULL,
                        "package ciphertext is shorter than its tag");
    p->ct_len -= VEIL_GCM_TAG_LEN;
    if ((p->tag = malloc(VEIL_GCM_TAG_LEN)) == NULL)
        return veil_err(VEIL_E_NOMEM, PKG, NULL, "out of memory");
    memcpy(p->tag, p->ct + p->ct_len, VEIL_GCM_TAG_LEN);
    p->tag_len = VEIL_GCM_TAG_LEN;
    return VEIL_OK;
}

/* The package's members, decoded, and what meta reports of them.  Every
 * failure here is about the form of the package (VEIL_E_ARG), found before
 * any key is used. */
static veil_rc pkg_parse(const cJSON *root, pkg_parts *p, veil_pkg_meta *m)
{
    veil_rc rc;
    const cJSON *payload =
        cJSON_GetObjectItemCaseSensitive(root, "encrypted_payload");

    if (!cJSON_IsObject(payload))
        return veil_err(VEIL_E_ARG, PKG, NULL,
                        "package field \"encrypted_payload\" is missing or "
                        "not an object");
    if ((rc = get_b64(payload, "ciphertext", &p->ct, &p->ct_len)) != VEIL_OK ||
        (rc = get_b64(payload, "nonce", &p->nonce, &p->nonce_len)) != VEIL_OK ||
        (rc = get_b64(root, "encrypted_aes_key", &p->wrapped,
                      &p->wrapped_len)) != VEIL_OK)
        return rc;
    if (p->nonce_len != VEIL_PKG_NONCE_LEN)
        return veil_err(VEIL_E_ARG, PKG, NULL,
                        "package nonce is %zu bytes, not %d", p->nonce_len,
                        VEIL_PKG_NONCE_LEN);
    if ((rc = pkg_tag(payload, p, m)) != VEIL_OK)
        return rc;
    const cJSON *alg = cJSON_GetObjectItemCaseSensitive(root, "algorithm");
    if (cJSON_IsString(alg))
        snprintf(m->algorithm, sizeof m->algorithm, "%s", alg->valuestring);
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(root, "processed_at");
    if (cJSON_IsNumber(at) && isfinite(at->valuedouble)) {
        m->has_processed_at = 1;
        m->processed_at = at->valuedouble;
    }
    SHA256(p->wrapped, p->wrapped_len, m->wrapped_key_sha256);
    return VEIL_OK;
}

/* The AES key unwrapped with priv, and the payload opened with it.  Every
 * failure is the same VEIL_E_DECRYPT, and the work done is the same: when
 * the unwrap fails (or gives a key of the wrong size) the GCM open still
 * runs, under a random key, so the time taken does not tell an OAEP
 * failure from a tag failure. */
static veil_rc pkg_decrypt(veil_engine *e, const veil_key *priv,
                           const pkg_parts *p, veil_pkg_meta *m,
                           veil_secbuf **pt)
{
    veil_secbuf *aes = NULL, *out = NULL;
    uint8_t dummy[VEIL_PKG_AES_KEY_LEN];
    veil_rc rc, unwrap;
    int key_ok;

    unwrap = veil_rsa_decrypt(e, priv, NULL, p->wrapped, p->wrapped_len, &aes);
    m->unwrap_rc = unwrap;
    if (unwrap == VEIL_E_NOMEM)
        return veil_err(unwrap, PKG, NULL, "out of memory");
    key_ok = unwrap == VEIL_OK && veil_secbuf_len(aes) == VEIL_PKG_AES_KEY_LEN;
    if (!key_ok)
        veil_random(e, dummy, sizeof dummy);
    rc = veil_secbuf_new(p->ct_len ? p->ct_len : 1, &out);
    if (rc != VEIL_OK) {
        veil_secbuf_free(aes);
        veil_wipe(dummy, sizeof dummy);
        return veil_err(rc, PKG, NULL, "out of memory");
    }
    veil_secbuf_truncate(out, p->ct_len);
    rc = veil_aes_gcm_open(e, key_ok ? veil_secbuf_data(aes) : dummy,
                           VEIL_PKG_AES_KEY_LEN, p->nonce, p->nonce_len, NULL,
                           0, p->ct, p->ct_len, p->tag, veil_secbuf_data(out));
    veil_wipe(dummy, sizeof dummy);
    veil_secbuf_free(aes);
    if (rc == VEIL_OK && !key_ok)
        rc = VEIL_E_DECRYPT; /* a random key cannot open it; be sure */
    if (rc != VEIL_OK) {
        veil_secbuf_free(out);
        return veil_err(VEIL_E_DECRYPT, PKG, NULL,
                        "package could not be decrypted");
    }
    *pt = out;
    return VEIL_OK;
}

veil_rc veil_pkg_open(veil_engine *e, const veil_key *priv, const char *json,
                      size_t json_len, veil_secbuf **pt, veil_pkg_meta *meta)
{
    veil_pkg_meta m;
    pkg_parts p;
    veil_rc rc;
    cJSON *root;

    memset(&m, 0, sizeof m);
    memset(&p, 0, sizeof p);
    *pt = NULL;
    root = cJSON_ParseWithLength(json, json_len);
    if (!cJSON_IsObject(root))
        rc = veil_err(VEIL_E_ARG, PKG, NULL, "package is not a JSON object");
    else if ((rc = pkg_parse(root, &p, &m)) == VEIL_OK)
        rc = pkg_decrypt(e, priv, &p, &m, pt);
    if (rc == VEIL_OK && meta)
        *meta = m;
    else if (meta)
        meta->unwrap_rc = m.unwrap_rc;
    cJSON_Delete(root);
    parts_free(&p);
    return rc;
}
