/* The building blocks of client-side attestation (docs/ATTESTATION.md)
 * that the trust file (trust.c), answer verification (verify.c) and
 * enrolment (enroll.c) share: reporting checks, reading JSON members, the
 * TPM objects of reports and answers, and the public key check every key
 * from a server gets (veil_cl_key_check, also used for the server's
 * encryption key).  Nothing here calls up into those files or client.c.
 *
 * Nothing here handles plaintext: packages are ciphertext, and the TPM
 * objects are metadata. */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "package.h"
#include "tpmobj.h"

#define CERTIFIED_KEY_ATTRS (VEIL_TPMA_FIXEDTPM | VEIL_TPMA_SENSITIVEDATAORIGIN)

/* ---- small helpers ----------------------------------------------------- */

void veil_cl_sha256(const void *p, size_t n, uint8_t out[32])
{
    unsigned len = 32;
    if (EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) != 1)
        memset(out, 0, 32); /* never matches a real hash in a compare */
}

int veil_cl_same(const uint8_t *a, const uint8_t *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

/* A copy of url without trailing slashes; NULL when out of memory. */
char *veil_cl_url_dup(const char *url)
{
    char *u = strdup(url);
    for (size_t n = u ? strlen(u) : 0; n > 0 && u[n - 1] == '/';)
        u[--n] = '\0';
    return u;
}

const char *veil_cl_json_str(const cJSON *o, const char *k)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(it) ? it->valuestring : NULL;
}

/* Absent or JSON null. */
int veil_cl_json_null(const cJSON *o, const char *k)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    return it == NULL || cJSON_IsNull(it);
}

/* A strict base64 string member, decoded (malloc'd). */
int veil_cl_json_b64(const cJSON *o, const char *k, uint8_t **out, size_t *len)
{
    const char *s = veil_cl_json_str(o, k);
    *out = NULL;
    *len = 0;
    if (s == NULL || s[0] == '\0')
        return 0;
    if (veil_b64_decode(s, strlen(s), out, len) != VEIL_OK) {
        *out = NULL;
        return 0;
    }
    return 1;
}

/* A member of exactly 2n hex digits, decoded. */
int veil_cl_json_hex(const cJSON *o, const char *k, uint8_t *out, size_t n)
{
    const char *s = veil_cl_json_str(o, k);
    return s != NULL && strlen(s) == 2 * n && veil_hex_decode(s, n, out);
}
/* ---- reporting checks -------------------------------------------------- */

int veil_cl_check(veil_cl_checker *ck, const char *name, int ok,
                  const char *fmt, ...)
{
    char detail[320];
    va_list ap;
    va_start(ap, fmt);
    veil_cl_vline(detail, sizeof detail, fmt, ap);
    va_end(ap);
    if (ck->fn)
        ck->fn(ck->ctx, name, ok, detail);
    if (!ok && ck->failed[0] == '\0')
        snprintf(ck->failed, sizeof ck->failed, "%s: %s", name, detail);
    return ok;
}

/* Why veil_cl_tpm_pub just refused a key that parsed ("" when it did not). */
static _Thread_local char key_refusal[200];

/* The reason a veil_* call (or veil_cl_tpm_pub) just gave. */
const char *veil_cl_why_last(void)
{
    return key_refusal[0] ? key_refusal : veil_last_error()->message;
}
/* ---- TPM objects --------------------------------------------------------- */

/* A PCR selection and its values, as "pcr_banks" and "pcr_values" carry
 * them: {"sha256": {"0": "<hex>", ...}}, exactly the selected PCRs. */
int veil_cl_pcrs_parse(const cJSON *o, veil_pcr_sel *sel,
                       uint8_t values[VEIL_EV_MAX_PCRS][32], char *why,
                       size_t why_size)
{
    const char *banks = veil_cl_json_str(o, "pcr_banks");
    if (banks == NULL) {
        snprintf(why, why_size, "\"pcr_banks\" is missing");
        return 0;
    }
    if (veil_pcr_sel_parse(banks, sel) != VEIL_OK) {
        snprintf(why, why_size, "\"pcr_banks\": %.200s", veil_cl_why_last());
        return 0;
    }
    const cJSON *bank = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(o, "pcr_values"), "sha256");
    if (!cJSON_IsObject(bank)) {
        snprintf(why, why_size, "\"pcr_values\" has no sha256 bank");
        return 0;
    }
    if (cJSON_GetArraySize(bank) != (int)sel->n) {
        snprintf(why, why_size,
                 "\"pcr_values\" holds %d sha256 PCRs, \"pcr_banks\" "
                 "selects %u",
                 cJSON_GetArraySize(bank), sel->n);
        return 0;
    }
    for (unsigned i = 0; i < sel->n; i++) {
        char k[8];
        snprintf(k, sizeof k, "%u", sel->index[i]);
        if (!veil_cl_json_hex(bank, k, values[i], 32)) {
            snprintf(why, why_size,
                     "\"pcr_values\": sha256 PCR %s is not 64 hex digits", k);
            return 0;
        }
    }
    return 1;
}

/* A TPM public area, its key checked as every server key is
 * (veil_cl_key_check); veil_cl_why_last() says why when it fails. */
int veil_cl_tpm_pub(veil_engine *e, const uint8_t *b, size_t n,
                    veil_tpm_pub *out)
{
    char why[160];
    memset(out, 0, sizeof *out);
    key_refusal[0] = '\0';
    if (veil_tpm_pub_parse(e, b, n, out) != VEIL_OK)
        return 0;
    if (!veil_cl_key_check(out->key, 0, why, sizeof why)) {
        snprintf(key_refusal, sizeof key_refusal, "the key is refused: %s",
                 why);
        veil_tpm_pub_clear(out);
        return 0;
    }
    return 1;
}

void veil_cl_quote_free(veil_cl_quote *q)
{
    free(q->ak);
    free(q->quote);
    free(q->sig);
    free(q->aikc_attest);
    free(q->aikc_sig);
    free(q->kc_attest);
    free(q->kc_sig);
    free(q->kc_pub);
    memset(q, 0, sizeof *q);
}

static int decode_certify(const cJSON *o, const char *name, int with_pub,
                          uint8_t **attest, size_t *attest_len, uint8_t **sig,
                          size_t *sig_len, uint8_t **pub, size_t *pub_len,
                          char *why, size_t why_size)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsObject(c) ||
        !veil_cl_json_b64(c, "attest_b64", attest, attest_len) ||
        !veil_cl_json_b64(c, "signature_b64", sig, sig_len) ||
        (with_pub && !veil_cl_json_b64(c, "pubkey_b64", pub, pub_len))) {
        snprintf(why, why_size,
                 "\"%s\" is not an object of base64 attest_b64, "
                 "signature_b64%s",
                 name, with_pub ? " and pubkey_b64" : "");
        return 0;
    }
    return 1;
}

int veil_cl_quote_decode(const cJSON *o, int answer, veil_cl_quote *q,
                         char *why, size_t why_size)
{
    memset(q, 0, sizeof *q);
    if (!veil_cl_pcrs_parse(o, &q->sel, q->values, why, why_size))
        return 0;
    if (!veil_cl_json_b64(o, "aik_pubkey_b64", &q->ak, &q->ak_len) ||
        !veil_cl_json_b64(o, "quote_b64", &q->quote, &q->quote_len) ||
        !veil_cl_json_b64(o, "signature_b64", &q->sig, &q->sig_len)) {
        snprintf(why, why_size,
                 "aik_pubkey_b64, quote_b64 and signature_b64 "
                 "must be base64");
        return 0;
    }
    if (!veil_cl_json_null(o, "aik_name")) {
        if (!veil_cl_json_hex(o, "aik_name", q->ak_name, VEIL_CL_NAME_LEN)) {
            snprintf(why, why_size, "\"aik_name\" is not %d hex digits",
                     2 * VEIL_CL_NAME_LEN);
            return 0;
        }
        q->has_name = 1;
    }
    if (answer && !veil_cl_json_null(o, "aik_certify")) {
        if (!decode_certify(o, "aik_certify", 0, &q->aikc_attest,
                            &q->aikc_attest_len, &q->aikc_sig, &q->aikc_sig_len,
                            NULL, NULL, why, why_size))
            return 0;
        q->has_aikc = 1;
    }
    if (!veil_cl_json_null(o, "key_certify")) {
        if (!decode_certify(o, "key_certify", 1, &q->kc_attest,
                            &q->kc_attest_len, &q->kc_sig, &q->kc_sig_len,
                            &q->kc_pub, &q->kc_pub_len, why, why_size))
            return 0;
        q->has_kc = 1;
    }
    return 1;
}

/* key_certify: the encryption key is a TPM object (fixedTPM,
 * sensitiveDataOrigin) whose SPKI hash is the one the quote binds, and the
 * quote's signer certified it with the same qualifying data. */
int veil_cl_key_certify_check(veil_engine *e, const veil_tpm_pub *signer,
                              const veil_cl_quote *q, const uint8_t enc_sha[32],
                              const uint8_t qualifying[32], veil_cl_checker *ck)
{
    veil_tpm_pub kp;
    const char *name = "key certification";
    if (!veil_cl_tpm_pub(e, q->kc_pub, q->kc_pub_len, &kp))
        return veil_cl_check(ck, name, 0,
                             "pubkey_b64 is not a TPM public area: %s",
                             veil_cl_why_last());
    int ok = 0;
    if (!veil_cl_same(kp.spki_sha256, enc_sha, 32))
        veil_cl_check(ck, name, 0,
                      "the certified key is not the gateway's encryption key");
    else if (veil_tpm_check_certify(e, signer, q->kc_attest, q->kc_attest_len,
                                    q->kc_sig, q->kc_sig_len, qualifying, &kp,
                                    CERTIFIED_KEY_ATTRS) != VEIL_OK)
        veil_cl_check(ck, name, 0, "%s", veil_cl_why_last());
    else
        ok = veil_cl_check(
            ck, name, 1,
            "the encryption key is a TPM object (fixedTPM, "
            "sensitiveDataOrigin) certified by the attestation key");
    veil_tpm_pub_clear(&kp);
    return ok;
}
/* ---- key checks ---------------------------------------------------------- */

int veil_cl_key_check(const veil_key *k, int allow_small_exponent, char *why,
                      size_t why_size)
{
    char *pem = NULL;
    EVP_PKEY *p = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    BIGNUM *e = NULL;
    int ok = 0;
    if (veil_key_public_pem(k, &pem) == VEIL_OK) {
        BIO *b = BIO_new_mem_buf(pem, -1);
        p = b ? PEM_read_bio_PUBKEY(b, NULL, NULL, NULL) : NULL;
        BIO_free(b);
    }
    free(pem);
    if (p != NULL)
        ctx = EVP_PKEY_CTX_new_from_pkey(NULL, p, NULL);
    if (ctx == NULL)
        snprintf(why, why_size, "OpenSSL cannot read it");
    else if (EVP_PKEY_public_check(ctx) != 1)
        snprintf(why, why_size,
                 "it fails OpenSSL's public key check (a degenerate "
                 "modulus or exponent)");
    else if (!EVP_PKEY_is_a(p, "RSA"))
        ok = 1;
    else if (!EVP_PKEY_get_bn_param(p, OSSL_PKEY_PARAM_RSA_E, &e))
        snprintf(why, why_size, "its RSA exponent cannot be read");
    else if (BN_num_bits(e) <= 17 && BN_get_word(e) < 65537 &&
             !(allow_small_exponent && BN_is_odd(e) && BN_get_word(e) >= 3))
        snprintf(why, why_size, "its RSA public exponent %lu is below 65537%s",
                 (unsigned long)BN_get_word(e),
                 BN_is_odd(e) && BN_get_word(e) >= 3
                     ? " (allow_small_exponent accepts it)"
                     : "");
    else
        ok = 1;
    BN_free(e);
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(p);
    ERR_clear_error();
    return ok;
}

int veil_cl_p256_ok(veil_engine *e, const uint8_t *spki, size_t len,
                    char *refused, size_t refused_size)
{
    veil_key *k = NULL;
    veil_key_info info;
    refused[0] = '\0';
    int ok = veil_key_from_public(e, spki, len, &k) == VEIL_OK &&
             veil_key_get_info(k, &info) == VEIL_OK &&
             info.type == VEIL_KEY_EC_P256 &&
             veil_cl_key_check(k, 0, refused, refused_size);
    veil_key_free(k);
    return ok;
}
