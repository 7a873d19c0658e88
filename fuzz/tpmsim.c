/* TPM 2.0 structures made in software (fuzz/tpmsim.h): a stand-in for a
 * TPM, for the fuzzing harnesses and the seed generator only. */
#include "config.h"

#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <tss2/tss2_mu.h>

#include "tpmsim.h"

void fsim_qualifying(uint8_t out[32])
{
    EVP_Digest(FSIM_QUALIFYING_TEXT, strlen(FSIM_QUALIFYING_TEXT), out, NULL,
               EVP_sha256(), NULL);
}

void fsim_pcr_values(const veil_pcr_sel *sel, uint8_t (*values)[32])
{
    for (unsigned i = 0; i < sel->n; i++)
        memset(values[i], (int)sel->index[i], 32);
}

/* The key's public half as an OpenSSL key. */
static EVP_PKEY *pkey_of(const veil_key *k)
{
    uint8_t *der = NULL;
    size_t len = 0;
    if (veil_key_public_der(k, &der, &len) != VEIL_OK)
        return NULL;
    const unsigned char *p = der;
    EVP_PKEY *pk = d2i_PUBKEY(NULL, &p, (long)len);
    free(der);
    return pk;
}

int fsim_public(const veil_key *k, uint32_t attrs, uint8_t *out, size_t cap,
                size_t *len)
{
    TPM2B_PUBLIC pub;
    EVP_PKEY *pk = pkey_of(k);
    TPMT_PUBLIC *pa = &pub.publicArea;
    int ok = 0;

    memset(&pub, 0, sizeof pub);
    if (pk == NULL)
        return 0;
    pa->nameAlg = TPM2_ALG_SHA256;
    pa->objectAttributes = attrs;
    if (EVP_PKEY_is_a(pk, "RSA")) {
        BIGNUM *n = NULL;
        TPMS_RSA_PARMS *rp = &pa->parameters.rsaDetail;
        pa->type = TPM2_ALG_RSA;
        if (attrs & VEIL_TPMA_DECRYPT) {
            rp->symmetric.algorithm = TPM2_ALG_AES;
            rp->symmetric.keyBits.aes = 128;
            rp->symmetric.mode.aes = TPM2_ALG_CFB;
            rp->scheme.scheme = TPM2_ALG_NULL;
        } else {
            rp->symmetric.algorithm = TPM2_ALG_NULL;
            rp->scheme.scheme = TPM2_ALG_RSASSA;
            rp->scheme.details.rsassa.hashAlg = TPM2_ALG_SHA256;
        }
        rp->keyBits = (TPMI_RSA_KEY_BITS)EVP_PKEY_get_bits(pk);
        rp->exponent = 0;
        if (EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_N, &n) &&
            BN_num_bytes(n) <= (int)sizeof pa->unique.rsa.buffer) {
            pa->unique.rsa.size = (UINT16)BN_bn2bin(n, pa->unique.rsa.buffer);
            ok = 1;
        }
        BN_free(n);
    } else {
        uint8_t point[65];
        size_t plen = 0;
        TPMS_ECC_PARMS *ep = &pa->parameters.eccDetail;
        pa->type = TPM2_ALG_ECC;
        ep->symmetric.algorithm = TPM2_ALG_NULL;
        ep->scheme.scheme = TPM2_ALG_ECDSA;
        ep->scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
        ep->curveID = TPM2_ECC_NIST_P256;
        ep->kdf.scheme = TPM2_ALG_NULL;
        if (EVP_PKEY_get_octet_string_param(pk, OSSL_PKEY_PARAM_PUB_KEY, point,
                                            sizeof point, &plen) &&
            plen == 65 && point[0] == 0x04) {
            pa->unique.ecc.x.size = 32;
            memcpy(pa->unique.ecc.x.buffer, point + 1, 32);
            pa->unique.ecc.y.size = 32;
            memcpy(pa->unique.ecc.y.buffer, point + 33, 32);
            ok = 1;
        }
    }
    EVP_PKEY_free(pk);
    *len = 0;
    return ok &&
           Tss2_MU_TPM2B_PUBLIC_Marshal(&pub, out, cap, len) == TSS2_RC_SUCCESS;
}

int fsim_sign(veil_engine *e, const veil_key *ak, const uint8_t *msg,
              size_t len, uint8_t *out, size_t cap, size_t *out_len)
{
    uint8_t der[VEIL_ECDSA_SIG_MAX];
    size_t der_len = sizeof der;
    TPMT_SIGNATURE s;
    const BIGNUM *r, *sv;
    ECDSA_SIG *sig;
    int ok;

    if (veil_ecdsa_sign(e, ak, msg, len, der, &der_len) != VEIL_OK)
        return 0;
    const unsigned char *p = der;
    if ((sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len)) == NULL)
        return 0;
    ECDSA_SIG_get0(sig, &r, &sv);
    memset(&s, 0, sizeof s);
    s.sigAlg = TPM2_ALG_ECDSA;
    s.signature.ecdsa.hash = TPM2_ALG_SHA256;
    s.signature.ecdsa.signatureR.size =
        (UINT16)BN_bn2bin(r, s.signature.ecdsa.signatureR.buffer);
    s.signature.ecdsa.signatureS.size =
        (UINT16)BN_bn2bin(sv, s.signature.ecdsa.signatureS.buffer);
    ECDSA_SIG_free(sig);
    *out_len = 0;
    ok = Tss2_MU_TPMT_SIGNATURE_Marshal(&s, out, cap, out_len) ==
         TSS2_RC_SUCCESS;
    return ok;
}

int fsim_attest(const uint8_t qualifying[32], const veil_pcr_sel *sel,
                const uint8_t (*values)[32], const uint8_t *name, uint8_t *out,
                size_t cap, size_t *len)
{
    TPMS_ATTEST a;

    memset(&a, 0, sizeof a);
    a.magic = TPM2_GENERATED_VALUE;
    a.qualifiedSigner.size = 34;
    a.qualifiedSigner.name[1] = 0x0b;
    a.extraData.size = 32;
    memcpy(a.extraData.buffer, qualifying, 32);
    a.clockInfo.clock = 1000;
    a.clockInfo.safe = 1;
    a.firmwareVersion = 0x2019;
    if (name != NULL) {
        a.type = TPM2_ST_ATTEST_CERTIFY;
        a.attested.certify.name.size = 34;
        memcpy(a.attested.certify.name.name, name, 34);
        a.attested.certify.qualifiedName.size = 34;
        memcpy(a.attested.certify.qualifiedName.name, name, 34);
    } else {
        TPML_PCR_SELECTION *ps = &a.attested.quote.pcrSelect;
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        unsigned dlen = 0;
        a.type = TPM2_ST_ATTEST_QUOTE;
        ps->count = 1;
        ps->pcrSelections[0].hash = TPM2_ALG_SHA256;
        ps->pcrSelections[0].sizeofSelect = 3;
        for (unsigned i = 0; i < sel->n; i++)
            ps->pcrSelections[0].pcrSelect[sel->index[i] / 8] |=
                (uint8_t)(1u << (sel->index[i] % 8));
        int ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL);
        for (unsigned i = 0; ok && i < sel->n; i++)
            ok = EVP_DigestUpdate(md, values[i], 32);
        ok = ok &&
             EVP_DigestFinal_ex(md, a.attested.quote.pcrDigest.buffer, &dlen);
        EVP_MD_CTX_free(md);
        if (!ok)
            return 0;
        a.attested.quote.pcrDigest.size = (UINT16)dlen;
    }
    *len = 0;
    return Tss2_MU_TPMS_ATTEST_Marshal(&a, out, cap, len) == TSS2_RC_SUCCESS;
}
