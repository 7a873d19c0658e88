/* The small helpers of the gateway's TPM module (tpm_int.h): TSS2 error
 * text, a clock, hex and base64 of public areas, an EVP_PKEY of a TPM
 * public area, one capability read.  Used by tpm.c, tpm_ak.c and
 * tpm_quote.c; it calls none of them. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>

#include "package.h"
#include "tpm_int.h"

/* ---- small helpers ------------------------------------------------------ */

/* "TPM: <what>: <tss2 decoding of rc>" into err. */
void tpm_put_rc(char *err, size_t err_size, const char *what, TSS2_RC rc)
{
    gw_put_err(err, err_size, "TPM: %s: %s", what, Tss2_RC_Decode(rc));
}

double tpm_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void tpm_test_delay(const gw_tpm *t)
{
    struct timespec ts = {.tv_sec = t->test_delay_ms / 1000,
                          .tv_nsec =
                              (long)(t->test_delay_ms % 1000) * 1000000L};

    while (t->test_delay_ms && nanosleep(&ts, &ts) != 0)
        ;
}

char *tpm_hex(const uint8_t *in, size_t len)
{
    char *out = malloc(2 * len + 1);

    if (out)
        veil_hex(in, len, out);
    return out;
}

char *tpm_b64_public(const TPM2B_PUBLIC *pub)
{
    uint8_t buf[sizeof(TPM2B_PUBLIC)];
    size_t off = 0;

    if (Tss2_MU_TPM2B_PUBLIC_Marshal(pub, buf, sizeof buf, &off) !=
        TSS2_RC_SUCCESS)
        return NULL;
    return veil_b64_encode(buf, off);
}

char *tpm_b64_signature(const TPMT_SIGNATURE *sig)
{
    uint8_t buf[sizeof(TPMT_SIGNATURE)];
    size_t off = 0;

    if (Tss2_MU_TPMT_SIGNATURE_Marshal(sig, buf, sizeof buf, &off) !=
        TSS2_RC_SUCCESS)
        return NULL;
    return veil_b64_encode(buf, off);
}

/* The public key of an RSA or ECC P-256 TPM object as an EVP_PKEY. */
EVP_PKEY *tpm_pkey_from_public(const TPMT_PUBLIC *p)
{
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *pctx = NULL;
    EVP_PKEY *pkey = NULL;
    BIGNUM *n = NULL, *e = NULL;
    uint8_t point[1 + 2 * 32];
    int ok = 0;

    if (!bld)
        return NULL;
    if (p->type == TPM2_ALG_RSA) {
        const TPM2B_PUBLIC_KEY_RSA *m = &p->unique.rsa;
        uint32_t exp = p->parameters.rsaDetail.exponent;

        /* as a TPM makes it: keyBits (2048 or more) long, odd; the
         * exponent 0 (65537) or odd and above 1 */
        if (p->parameters.rsaDetail.keyBits < 2048 ||
            m->size * 8u != p->parameters.rsaDetail.keyBits ||
            !(m->buffer[0] & 0x80) || !(m->buffer[m->size - 1] & 1) ||
            (exp != 0 && (exp < 3 || !(exp & 1))))
            goto done;
        n = BN_bin2bn(p->unique.rsa.buffer, p->unique.rsa.size, NULL);
        e = BN_new();
        ok = n && e && BN_set_word(e, exp ? exp : 65537) &&
             OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) &&
             OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) &&
             (pctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL));
    } else if (p->type == TPM2_ALG_ECC &&
               p->parameters.eccDetail.curveID == TPM2_ECC_NIST_P256 &&
               p->unique.ecc.x.size == 32 && p->unique.ecc.y.size == 32) {
        point[0] = 0x04; /* uncompressed */
        memcpy(point + 1, p->unique.ecc.x.buffer, 32);
        memcpy(point + 33, p->unique.ecc.y.buffer, 32);
        ok = OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME,
                                             "prime256v1", 0) &&
             OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY,
                                              point, sizeof point) &&
             (pctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL));
    }
    if (ok && (params = OSSL_PARAM_BLD_to_param(bld)) != NULL &&
        EVP_PKEY_fromdata_init(pctx) == 1 &&
        EVP_PKEY_fromdata(pctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pkey = NULL;
    if (pkey && p->type == TPM2_ALG_ECC) {
        /* import may or may not test the point: test it */
        EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);

        if (!c || EVP_PKEY_public_check_quick(c) != 1) {
            EVP_PKEY_free(pkey);
            pkey = NULL;
        }
        EVP_PKEY_CTX_free(c);
    }
done:
    ERR_clear_error();
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    EVP_PKEY_CTX_free(pctx);
    BN_free(n);
    BN_free(e);
    return pkey;
}

/* ---- what the TPM signed ------------------------------------------------- */

/* 1 when sig is an ECDSA-SHA256 signature by key over SHA-256(msg). */
static int ecdsa_ok(EVP_PKEY *key, const TPMT_SIGNATURE *sig,
                    const uint8_t *msg, size_t len)
{
    const TPMS_SIGNATURE_ECC *e = &sig->signature.ecdsa;
    ECDSA_SIG *es = NULL;
    BIGNUM *r = NULL, *s = NULL;
    unsigned char *der = NULL;
    EVP_MD_CTX *md = NULL;
    int der_len, ok = 0;

    /* the algorithm first: it says which member of the union is there */
    if (sig->sigAlg != TPM2_ALG_ECDSA || e->hash != TPM2_ALG_SHA256 ||
        e->signatureR.size == 0 || e->signatureR.size > 32 ||
        e->signatureS.size == 0 || e->signatureS.size > 32)
        return 0;
    if (!(es = ECDSA_SIG_new()) ||
        !(r = BN_bin2bn(e->signatureR.buffer, e->signatureR.size, NULL)) ||
        !(s = BN_bin2bn(e->signatureS.buffer, e->signatureS.size, NULL)) ||
        !ECDSA_SIG_set0(es, r, s)) {
        BN_free(r);
        BN_free(s);
        goto out;
    }
    if ((der_len = i2d_ECDSA_SIG(es, &der)) > 0 && (md = EVP_MD_CTX_new()) &&
        EVP_DigestVerifyInit_ex(md, NULL, "SHA256", NULL, NULL, key, NULL) == 1)
        ok = EVP_DigestVerify(md, der, (size_t)der_len, msg, len) == 1;
out:
    ECDSA_SIG_free(es);
    OPENSSL_free(der);
    EVP_MD_CTX_free(md);
    ERR_clear_error();
    return ok;
}

int tpm_attest_check(EVP_PKEY *signer, const TPM2B_ATTEST *info,
                     const TPMT_SIGNATURE *sig, TPM2_ST type,
                     const uint8_t qualifying[32], const TPM2B_NAME *name,
                     TPMS_ATTEST *out, char *err, size_t err_size)
{
    const char *what = type == TPM2_ST_ATTEST_QUOTE ? "quote" : "certify";
    size_t off = 0;

    memset(out, 0, sizeof *out);
    if (!signer || !ecdsa_ok(signer, sig, info->attestationData, info->size)) {
        gw_put_err(err, err_size,
                   "TPM: %s: the TPM's signature does not verify with the "
                   "attestation key",
                   what);
        return -1;
    }
    if (Tss2_MU_TPMS_ATTEST_Unmarshal(info->attestationData, info->size, &off,
                                      out) != TSS2_RC_SUCCESS ||
        off != info->size || out->magic != TPM2_GENERATED_VALUE ||
        out->type != type || out->extraData.size != 32 ||
        memcmp(out->extraData.buffer, qualifying, 32) != 0 ||
        (name && (out->attested.certify.name.size != name->size ||
                  memcmp(out->attested.certify.name.name, name->name,
                         name->size) != 0))) {
        gw_put_err(err, err_size,
                   "TPM: %s: the TPM signed another statement than asked "
                   "for (type, qualifying data or name)",
                   what);
        return -1;
    }
    return 0;
}

/* The quote's PCR selection is the one asked for (bank, size, bits). */
int tpm_pcr_selection_same(const TPML_PCR_SELECTION *a,
                           const TPML_PCR_SELECTION *b)
{
    if (a->count != b->count || a->count > TPM2_NUM_PCR_BANKS)
        return 0;
    for (UINT32 i = 0; i < a->count; i++) {
        const TPMS_PCR_SELECTION *x = &a->pcrSelections[i],
                                 *y = &b->pcrSelections[i];
        if (x->hash != y->hash || x->sizeofSelect != y->sizeofSelect ||
            x->sizeofSelect > sizeof x->pcrSelect ||
            memcmp(x->pcrSelect, y->pcrSelect, x->sizeofSelect) != 0)
            return 0;
    }
    return 1;
}

/* ---- salted HMAC sessions ----------------------------------------------- */

int tpm_sessions(gw_tpm *t, char *err, size_t err_size)
{
    static const TPMT_SYM_DEF aes = {.algorithm = TPM2_ALG_AES,
                                     .keyBits.aes = 128,
                                     .mode.aes = TPM2_ALG_CFB};
    ESYS_TR ek = ESYS_TR_NONE;
    TSS2_RC rc = TSS2_RC_SUCCESS;

    if (t->sess[0] != ESYS_TR_NONE && t->sess[1] != ESYS_TR_NONE)
        return 0;
    rc = Esys_ContextLoad(t->ctx, t->ek_saved, &ek);
    if (rc != TSS2_RC_SUCCESS) {
        tpm_put_rc(err, err_size, "loading the EK (session salt)", rc);
        return -1;
    }
    for (int i = 0; i < 2 && rc == TSS2_RC_SUCCESS; i++) {
        TPMA_SESSION attrs = TPMA_SESSION_CONTINUESESSION;

        if (t->sess[i] != ESYS_TR_NONE)
            continue;
        if (i == 0)
            attrs |= TPMA_SESSION_DECRYPT | TPMA_SESSION_ENCRYPT;
        rc = Esys_StartAuthSession(
            t->ctx, ek, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
            NULL, TPM2_SE_HMAC, &aes, TPM2_ALG_SHA256, &t->sess[i]);
        if (rc != TSS2_RC_SUCCESS) {
            t->sess[i] = ESYS_TR_NONE;
            tpm_put_rc(err, err_size, "starting a salted session", rc);
        } else if ((rc = Esys_TRSess_SetAttributes(t->ctx, t->sess[i], attrs,
                                                   0xff)) != TSS2_RC_SUCCESS) {
            tpm_put_rc(err, err_size, "session attributes", rc);
        }
    }
    Esys_FlushContext(t->ctx, ek);
    if (rc != TSS2_RC_SUCCESS) {
        tpm_sessions_drop(t);
        return -1;
    }
    return 0;
}

void tpm_sessions_drop(gw_tpm *t)
{
    for (int i = 0; i < 2; i++)
        if (t->sess[i] != ESYS_TR_NONE) {
            Esys_FlushContext(t->ctx, t->sess[i]);
            t->sess[i] = ESYS_TR_NONE;
        }
}

/* One fixed property; 0 when the TPM does not report it. */
int tpm_capability(gw_tpm *t, TPM2_CAP cap, UINT32 property, const char *what,
                   TPMS_CAPABILITY_DATA **data, char *err, size_t err_size)
{
    TPMI_YES_NO more;
    TSS2_RC rc;

    *data = NULL;
    rc = Esys_GetCapability(t->ctx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                            cap, property, 1, &more, data);
    if (rc != TSS2_RC_SUCCESS) {
        *data = NULL;
        tpm_put_rc(err, err_size, what, rc);
        return -1;
    }
    return 0;
}
