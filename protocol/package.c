/* The NOMYO v1 package: seal and open, and the protocol's encodings. */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "internal.h"
#include "package.h"

#define PKG "protocol"

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

static int b64_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '+' || c == '/';
}

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
    for (size_t i = 0; i < len - pad; i++)
        if (!b64_char(in[i]))
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

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
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
        int hi = hexval(p[1]), lo = hi < 0 ? -1 : hexval(p[2]);
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

veil_rc veil_uuid4(veil_engine *e, char out[37])
{
    uint8_t b[16];
    veil_rc rc = veil_random(e, b, sizeof b);
    if (rc != VEIL_OK)
        return rc;
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    char hex[33];
    veil_hex(b, sizeof b, hex);
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12,
             hex + 16, hex + 20);
    return VEIL_OK;
}

int veil_uuid_valid(const char *s)
{
    if (s == NULL || strlen(s) != 36)
        return 0;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return 0;
        } else if (hexval(s[i]) < 0) {
            return 0;
        }
    }
    return 1;
}

/* ---- sealing ----------------------------------------------------------- */

/* Adds "name": base64(data) to obj; 0 on failure. */
static int add_b64(cJSON *obj, const char *name, const uint8_t *data,
                   size_t len)
{
    char *b = veil_b64_encode(data, len);
    if (b == NULL)
        return 0;
    cJSON *s = cJSON_AddStringToObject(obj, name, b);
    free(b);
    return s != NULL;
}

veil_rc veil_pkg_seal(veil_engine *e, const veil_key *recipient,
                      const uint8_t *pt, size_t pt_len, veil_tag_mode mode,
                      double processed_at, char **json)
{
    *json = NULL;
    veil_key_info info;
    veil_rc rc = veil_key_get_info(recipient, &info);
    if (rc != VEIL_OK)
        return rc;
    if (info.type != VEIL_KEY_RSA || info.bits < VEIL_PKG_MIN_RSA_BITS)
        return veil_err(VEIL_E_KEY, PKG, NULL,
                        "recipient key is not RSA of at least %u bits",
                        VEIL_PKG_MIN_RSA_BITS);
    if (pt_len > (size_t)1 << 30)
        return veil_err(VEIL_E_ARG, PKG, NULL, "plaintext too large");

    veil_secbuf *aes = NULL;
    uint8_t nonce[VEIL_PKG_NONCE_LEN], tag[VEIL_GCM_TAG_LEN];
    uint8_t *ct = malloc(pt_len + VEIL_GCM_TAG_LEN);
    uint8_t *wrapped = malloc(info.bits / 8 + 1);
    size_t wrapped_len = info.bits / 8 + 1;
    cJSON *root = NULL;
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

    rc = VEIL_E_NOMEM;
    root = cJSON_CreateObject();
    cJSON *payload = cJSON_CreateObject();
    size_t ct_len = pt_len;
    if (mode == VEIL_TAG_APPENDED) {
        memcpy(ct + pt_len, tag, VEIL_GCM_TAG_LEN);
        ct_len += VEIL_GCM_TAG_LEN;
    }
    if (root == NULL || payload == NULL ||
        !add_b64(payload, "ciphertext", ct, ct_len) ||
        !add_b64(payload, "nonce", nonce, sizeof nonce) ||
        (mode == VEIL_TAG_SEPARATE &&
         !add_b64(payload, "tag", tag, sizeof tag)) ||
        !cJSON_AddStringToObject(root, "version", VEIL_PKG_VERSION) ||
        !cJSON_AddStringToObject(root, "algorithm", VEIL_PKG_ALGORITHM) ||
        !cJSON_AddItemToObject(root, "encrypted_payload", payload)) {
        cJSON_Delete(payload);
        goto out;
    }
    if (!add_b64(root, "encrypted_aes_key", wrapped, wrapped_len) ||
        !cJSON_AddStringToObject(root, "key_algorithm",
                                 VEIL_PKG_KEY_ALGORITHM) ||
        !cJSON_AddStringToObject(root, "payload_algorithm",
                                 VEIL_PKG_PAYLOAD_ALGORITHM) ||
        (processed_at >= 0 &&
         !cJSON_AddNumberToObject(root, "processed_at", processed_at)))
        goto out;
    *json = cJSON_PrintUnformatted(root);
out:
    if (rc == VEIL_E_NOMEM && *json == NULL)
        veil_err(rc, PKG, NULL, "out of memory");
    veil_secbuf_free(aes);
    veil_wipe(tag, sizeof tag);
    free(ct);
    free(wrapped);
    cJSON_Delete(root);
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

veil_rc veil_pkg_open(veil_engine *e, const veil_key *priv, const char *json,
                      size_t json_len, veil_secbuf **pt, veil_pkg_meta *meta)
{
    veil_pkg_meta m;
    memset(&m, 0, sizeof m);
    *pt = NULL;
    uint8_t *ct = NULL, *nonce = NULL, *tag = NULL, *wrapped = NULL;
    size_t ct_len = 0, nonce_len = 0, tag_len = 0, wrapped_len = 0;
    veil_secbuf *aes = NULL, *out = NULL;
    veil_rc rc;

    cJSON *root = cJSON_ParseWithLength(json, json_len);
    if (!cJSON_IsObject(root)) {
        rc = veil_err(VEIL_E_ARG, PKG, NULL, "package is not a JSON object");
        goto done;
    }
    const cJSON *payload =
        cJSON_GetObjectItemCaseSensitive(root, "encrypted_payload");
    if (!cJSON_IsObject(payload)) {
        rc = veil_err(VEIL_E_ARG, PKG, NULL,
                      "package field \"encrypted_payload\" is missing or "
                      "not an object");
        goto done;
    }
    if ((rc = get_b64(payload, "ciphertext", &ct, &ct_len)) != VEIL_OK ||
        (rc = get_b64(payload, "nonce", &nonce, &nonce_len)) != VEIL_OK ||
        (rc = get_b64(root, "encrypted_aes_key", &wrapped, &wrapped_len)) !=
            VEIL_OK)
        goto done;
    if (nonce_len != VEIL_PKG_NONCE_LEN) {
        rc = veil_err(VEIL_E_ARG, PKG, NULL,
                      "package nonce is %zu bytes, not %d", nonce_len,
                      VEIL_PKG_NONCE_LEN);
        goto done;
    }
    if (cJSON_GetObjectItemCaseSensitive(payload, "tag") != NULL) {
        m.tag_mode = VEIL_TAG_SEPARATE;
        if ((rc = get_b64(payload, "tag", &tag, &tag_len)) != VEIL_OK)
            goto done;
        if (tag_len != VEIL_GCM_TAG_LEN) {
            rc = veil_err(VEIL_E_ARG, PKG, NULL,
                          "package tag is %zu bytes, not %d", tag_len,
                          VEIL_GCM_TAG_LEN);
            goto done;
        }
    } else {
        m.tag_mode = VEIL_TAG_APPENDED;
        if (ct_len < VEIL_GCM_TAG_LEN) {
            rc = veil_err(VEIL_E_ARG, PKG, NULL,
                          "package ciphertext is shorter than its tag");
            goto done;
        }
        ct_len -= VEIL_GCM_TAG_LEN;
        tag = malloc(VEIL_GCM_TAG_LEN);
        if (tag == NULL) {
            rc = veil_err(VEIL_E_NOMEM, PKG, NULL, "out of memory");
            goto done;
        }
        memcpy(tag, ct + ct_len, VEIL_GCM_TAG_LEN);
    }
    const cJSON *alg = cJSON_GetObjectItemCaseSensitive(root, "algorithm");
    if (cJSON_IsString(alg))
        snprintf(m.algorithm, sizeof m.algorithm, "%s", alg->valuestring);
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(root, "processed_at");
    if (cJSON_IsNumber(at) && isfinite(at->valuedouble)) {
        m.has_processed_at = 1;
        m.processed_at = at->valuedouble;
    }
    SHA256(wrapped, wrapped_len, m.wrapped_key_sha256);

    /* From here on every failure is the same VEIL_E_DECRYPT: the unwrap
     * and the tag check are not told apart. */
    rc = veil_rsa_decrypt(e, priv, NULL, wrapped, wrapped_len, &aes);
    if (rc == VEIL_OK && veil_secbuf_len(aes) != VEIL_PKG_AES_KEY_LEN)
        rc = VEIL_E_DECRYPT;
    if (rc == VEIL_OK)
        rc = veil_secbuf_new(ct_len ? ct_len : 1, &out);
    if (rc == VEIL_OK) {
        veil_secbuf_truncate(out, ct_len);
        rc = veil_aes_gcm_open(e, veil_secbuf_data(aes), VEIL_PKG_AES_KEY_LEN,
                               nonce, nonce_len, NULL, 0, ct, ct_len, tag,
                               veil_secbuf_data(out));
    }
    if (rc == VEIL_E_NOMEM) {
        veil_err(rc, PKG, NULL, "out of memory");
    } else if (rc != VEIL_OK) {
        rc = veil_err(VEIL_E_DECRYPT, PKG, NULL,
                      "package could not be decrypted");
    }
done:
    if (rc == VEIL_OK) {
        *pt = out;
        out = NULL;
        if (meta)
            *meta = m;
    }
    veil_secbuf_free(out);
    veil_secbuf_free(aes);
    cJSON_Delete(root);
    free(ct);
    free(nonce);
    free(tag);
    free(wrapped);
    return rc;
}
