/* TPM 2.0 structures checked in software (protocol/evidence.h): public
 * areas and their names, quotes and certifications, and TPM2_MakeCredential.
 * This is the verifier's side; no TPM is involved.  References are to the
 * TPM 2.0 Library specification (Part 1: Architecture, Part 2: Structures,
 * Part 3: Commands). */
#include "config.h"

#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <tss2/tss2_mu.h>

#include "evidence.h"
#include "engine_int.h"

#define TPM "protocol"

#define SHA256_LEN 32
#define NAME_LEN (2 + SHA256_LEN)
#define P256_COORD 32

/* What an attestation key must be: a key that lives and was made in one
 * TPM (so its signatures speak for that TPM) and that signs only structures
 * the TPM made itself (restricted), so a quote cannot be forged by asking
 * the TPM to sign arbitrary bytes. */
#define AK_ATTRS                                                               \
    (VEIL_TPMA_FIXEDTPM | VEIL_TPMA_FIXEDPARENT |                              \
     VEIL_TPMA_SENSITIVEDATAORIGIN | VEIL_TPMA_RESTRICTED | VEIL_TPMA_SIGN)

/* MakeCredential's protector: a storage-type key, the role an EK has.  A
 * TPM refuses ActivateCredential with anything else. */
#define EK_ATTRS (VEIL_TPMA_RESTRICTED | VEIL_TPMA_DECRYPT)

static uint16_t get_be16(const uint8_t *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static void put_be16(uint8_t *p, size_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* ---- attributes -------------------------------------------------------- */

static const struct {
    uint32_t bit;
    const char *name;
} attr_names[] = {
    {VEIL_TPMA_FIXEDTPM, "fixedTPM"},
    {VEIL_TPMA_FIXEDPARENT, "fixedParent"},
    {VEIL_TPMA_SENSITIVEDATAORIGIN, "sensitiveDataOrigin"},
    {VEIL_TPMA_RESTRICTED, "restricted"},
    {VEIL_TPMA_DECRYPT, "decrypt"},
    {VEIL_TPMA_SIGN, "sign"},
};

/* VEIL_E_ARG naming the first attribute in `want` that `have` lacks. */
static veil_rc need_attrs(uint32_t have, uint32_t want, const char *whose)
{
    uint32_t missing = want & ~have;

    if (!missing)
        return VEIL_OK;
    for (size_t i = 0; i < sizeof attr_names / sizeof attr_names[0]; i++)
        if (missing & attr_names[i].bit)
            return veil_err(VEIL_E_ARG, TPM, NULL, "%s attributes: not %s",
                            whose, attr_names[i].name);
    return veil_err(VEIL_E_ARG, TPM, NULL,
                    "%s attributes: missing 0x%08x (TPMA_OBJECT)", whose,
                    (unsigned)missing);
}

/* ---- public areas ------------------------------------------------------ */

/* `refusal` says what OpenSSL refusing the parameters means. */
static veil_rc pkey_from_params(const char *type, OSSL_PARAM_BLD *bld,
                                EVP_PKEY **out, const char *refusal)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    int ok = params && ctx && EVP_PKEY_fromdata_init(ctx) > 0 &&
             EVP_PKEY_fromdata(ctx, out, EVP_PKEY_PUBLIC_KEY, params) > 0;

    OSSL_PARAM_free(params);
    EVP_PKEY_CTX_free(ctx);
    if (!ok)
        return veil_err_ossl(VEIL_E_ARG, TPM, "public area: %s", refusal);
    return VEIL_OK;
}

static veil_rc rsa_pkey(const TPMT_PUBLIC *pa, EVP_PKEY **out)
{
    const TPMS_RSA_PARMS *rp = &pa->parameters.rsaDetail;
    const TPM2B_PUBLIC_KEY_RSA *n = &pa->unique.rsa;
    /* The TPM writes 0 for the default exponent 65537. */
    uint32_t exp = rp->exponent ? rp->exponent : 65537;
    OSSL_PARAM_BLD *bld;
    BIGNUM *bn_n = NULL, *bn_e = NULL;
    veil_rc rc;

    if (rp->keyBits < 2048 || rp->keyBits > 4096 || rp->keyBits % 8)
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "public area: RSA key size %u is not 2048..4096",
                        (unsigned)rp->keyBits);
    if (exp != 65537)
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "public area: RSA exponent %lu is not 65537",
                        (unsigned long)exp);
    /* The modulus must have exactly keyBits bits, as a TPM makes it. */
    if (n->size != rp->keyBits / 8 || !(n->buffer[0] & 0x80))
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "public area: RSA modulus is not %u bits",
                        (unsigned)rp->keyBits);
    bld = OSSL_PARAM_BLD_new();
    bn_n = BN_bin2bn(n->buffer, n->size, NULL);
    bn_e = BN_new();
    if (!bld || !bn_n || !bn_e || !BN_set_word(bn_e, exp) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e))
        rc = veil_err_ossl(VEIL_E_NOMEM, TPM, "public area: out of memory");
    else
        rc = pkey_from_params("RSA", bld, out, "RSA key refused");
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn_n);
    BN_free(bn_e);
    return rc;
}

static veil_rc ecc_pkey(const TPMT_PUBLIC *pa, EVP_PKEY **out)
{
    const TPMS_ECC_POINT *pt = &pa->unique.ecc;
    uint8_t point[1 + 2 * P256_COORD] = {0x04}; /* X9.62 uncompressed */
    OSSL_PARAM_BLD *bld;
    EVP_PKEY_CTX *ctx;
    veil_rc rc;
    int ok;

    if (pa->parameters.eccDetail.curveID != TPM2_ECC_NIST_P256)
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "public area: ECC curve 0x%04x is not NIST P-256",
                        (unsigned)pa->parameters.eccDetail.curveID);
    if (pt->x.size == 0 || pt->x.size > P256_COORD || pt->y.size == 0 ||
        pt->y.size > P256_COORD)
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "public area: ECC point coordinates are not 1..32 "
                        "bytes");
    /* TPM2B_ECC_PARAMETER is a big-endian integer: pad on the left. */
    memcpy(point + 1 + P256_COORD - pt->x.size, pt->x.buffer, pt->x.size);
    memcpy(point + 1 + 2 * P256_COORD - pt->y.size, pt->y.buffer, pt->y.size);
    bld = OSSL_PARAM_BLD_new();
    if (!bld ||
        !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME,
                                         "prime256v1", 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point,
                                          sizeof point))
        rc = veil_err_ossl(VEIL_E_NOMEM, TPM, "public area: out of memory");
    else
        rc = pkey_from_params("EC", bld, out, "ECC point is not on P-256");
    OSSL_PARAM_BLD_free(bld);
    if (rc != VEIL_OK)
        return rc;
    /* Import may or may not test the point; an off-curve point must never
     * become a verification key. */
    ctx = EVP_PKEY_CTX_new_from_pkey(NULL, *out, NULL);
    ok = ctx && EVP_PKEY_public_check(ctx) == 1;
    EVP_PKEY_CTX_free(ctx);
    if (!ok) {
        EVP_PKEY_free(*out);
        *out = NULL;
        return veil_err_ossl(VEIL_E_ARG, TPM,
                             "public area: ECC point is not on P-256");
    }
    return VEIL_OK;
}

veil_rc veil_tpm_pub_parse(veil_engine *e, const uint8_t *tpm2b_public,
                           size_t len, veil_tpm_pub *out)
{
    TPM2B_PUBLIC pub;
    uint8_t canon[sizeof(TPMT_PUBLIC)];
    size_t off = 0, canon_len = 0;
    EVP_PKEY *pkey = NULL;
    unsigned char *der = NULL;
    int der_len;
    veil_rc rc;

    veil_err_clear();
    if (!out)
        return veil_err(VEIL_E_ARG, TPM, NULL, "public area: missing argument");
    memset(out, 0, sizeof *out);
    if (!e || !tpm2b_public)
        return veil_err(VEIL_E_ARG, TPM, NULL, "public area: missing argument");
    if (len < 2 || get_be16(tpm2b_public) != len - 2)
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "public area: TPM2B_PUBLIC size does not match its "
                        "length (%zu bytes)",
                        len);
    memset(&pub, 0, sizeof pub);
    if (Tss2_MU_TPM2B_PUBLIC_Unmarshal(tpm2b_public, len, &off, &pub) !=
            TSS2_RC_SUCCESS ||
        off != len)
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "public area: not a marshaled TPM2B_PUBLIC");
    /* The name is over the marshaled TPMT_PUBLIC.  Marshaling again and
     * insisting on the same bytes means the name we compute is the one the
     * TPM computed, whatever the unmarshaler tolerated. */
    if (Tss2_MU_TPMT_PUBLIC_Marshal(&pub.publicArea, canon, sizeof canon,
                                    &canon_len) != TSS2_RC_SUCCESS ||
        canon_len != len - 2 || memcmp(canon, tpm2b_public + 2, canon_len))
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "public area: TPM2B_PUBLIC is not in canonical form");
    if (pub.publicArea.nameAlg != TPM2_ALG_SHA256)
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "public area: nameAlg 0x%04x is not SHA-256",
                        (unsigned)pub.publicArea.nameAlg);
    switch (pub.publicArea.type) {
    case TPM2_ALG_RSA:
        rc = rsa_pkey(&pub.publicArea, &pkey);
        break;
    case TPM2_ALG_ECC:
        rc = ecc_pkey(&pub.publicArea, &pkey);
        break;
    default:
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "public area: type 0x%04x is neither RSA nor ECC",
                        (unsigned)pub.publicArea.type);
    }
    if (rc != VEIL_OK)
        return rc;
    der_len = i2d_PUBKEY(pkey, &der);
    EVP_PKEY_free(pkey);
    if (der_len <= 0)
        return veil_err_ossl(VEIL_E_CRYPTO, TPM,
                             "public area: cannot encode the SPKI");
    rc = veil_key_from_public(e, der, (size_t)der_len, &out->key);
    if (rc == VEIL_OK && !EVP_Digest(der, (size_t)der_len, out->spki_sha256,
                                     NULL, EVP_sha256(), NULL))
        rc = veil_err_ossl(VEIL_E_CRYPTO, TPM, "SHA-256 failed");
    if (rc == VEIL_OK &&
        !EVP_Digest(canon, canon_len, out->name + 2, NULL, EVP_sha256(), NULL))
        rc = veil_err_ossl(VEIL_E_CRYPTO, TPM, "SHA-256 failed");
    OPENSSL_free(der);
    if (rc != VEIL_OK) {
        veil_tpm_pub_clear(out);
        return rc;
    }
    put_be16(out->name, TPM2_ALG_SHA256);
    out->type = pub.publicArea.type;
    out->name_alg = pub.publicArea.nameAlg;
    out->attributes = pub.publicArea.objectAttributes;
    return VEIL_OK;
}

void veil_tpm_pub_clear(veil_tpm_pub *p)
{
    if (!p)
        return;
    veil_key_free(p->key);
    memset(p, 0, sizeof *p);
}

/* ---- signatures and attestation structures ----------------------------- */

/* TPMS_SIGNATURE_ECC carries r and s as integers; veil_ecdsa_verify wants
 * the X9.62 DER form. */
static veil_rc ecdsa_der(const TPMS_SIGNATURE_ECC *s, uint8_t *der,
                         size_t *der_len, const char *what)
{
    ECDSA_SIG *sig;
    BIGNUM *r, *sv;
    unsigned char *p = der;
    int n;

    if (s->signatureR.size == 0 || s->signatureR.size > P256_COORD ||
        s->signatureS.size == 0 || s->signatureS.size > P256_COORD)
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "%s signature: ECDSA r or s is not 1..32 bytes", what);
    sig = ECDSA_SIG_new();
    r = BN_bin2bn(s->signatureR.buffer, s->signatureR.size, NULL);
    sv = BN_bin2bn(s->signatureS.buffer, s->signatureS.size, NULL);
    if (!sig || !r || !sv || !ECDSA_SIG_set0(sig, r, sv)) {
        ECDSA_SIG_free(sig);
        BN_free(r);
        BN_free(sv);
        return veil_err_ossl(VEIL_E_NOMEM, TPM, "out of memory");
    }
    n = i2d_ECDSA_SIG(sig, NULL);
    if (n <= 0 || (size_t)n > *der_len) {
        ECDSA_SIG_free(sig);
        return veil_err_ossl(VEIL_E_CRYPTO, TPM,
                             "%s signature: cannot encode ECDSA r, s", what);
    }
    n = i2d_ECDSA_SIG(sig, &p);
    ECDSA_SIG_free(sig);
    *der_len = (size_t)n;
    return VEIL_OK;
}

static veil_rc rsassa_verify(const veil_key *k, const uint8_t *msg, size_t len,
                             const TPM2B_PUBLIC_KEY_RSA *s)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int r;

    if (!ctx ||
        EVP_DigestVerifyInit_ex(ctx, &pctx, "SHA256", NULL, NULL, k->pub,
                                NULL) <= 0 ||
        EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0) {
        EVP_MD_CTX_free(ctx);
        return veil_err_ossl(VEIL_E_CRYPTO, TPM, "RSA verify set-up failed");
    }
    r = EVP_DigestVerify(ctx, s->buffer, s->size, msg, len);
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    return r == 1 ? VEIL_OK : VEIL_E_VERIFY;
}

/* Verifies sig (TPMT_SIGNATURE) over msg under key; `what` names the
 * structure in messages ("quote", "certification"). */
static veil_rc check_signature(veil_engine *e, const veil_tpm_pub *key,
                               const uint8_t *msg, size_t len,
                               const uint8_t *sig, size_t sig_len,
                               const char *what)
{
    TPMT_SIGNATURE s;
    size_t off = 0;
    veil_rc rc;

    memset(&s, 0, sizeof s);
    if (Tss2_MU_TPMT_SIGNATURE_Unmarshal(sig, sig_len, &off, &s) !=
            TSS2_RC_SUCCESS ||
        off != sig_len)
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "%s signature: not a marshaled TPMT_SIGNATURE", what);
    if (key->type == TPM2_ALG_ECC) {
        uint8_t der[VEIL_ECDSA_SIG_MAX];
        size_t der_len = sizeof der;

        if (s.sigAlg != TPM2_ALG_ECDSA ||
            s.signature.ecdsa.hash != TPM2_ALG_SHA256)
            return veil_err(VEIL_E_ARG, TPM, NULL,
                            "%s signature: scheme 0x%04x is not ECDSA with "
                            "SHA-256",
                            what, (unsigned)s.sigAlg);
        rc = ecdsa_der(&s.signature.ecdsa, der, &der_len, what);
        if (rc != VEIL_OK)
            return rc;
        /* veil_ecdsa_verify hashes msg with SHA-256 itself, which is the
         * digest the TPM signed. */
        rc = veil_ecdsa_verify(e, key->key, msg, len, der, der_len);
    } else {
        if (s.sigAlg != TPM2_ALG_RSASSA ||
            s.signature.rsassa.hash != TPM2_ALG_SHA256)
            return veil_err(VEIL_E_ARG, TPM, NULL,
                            "%s signature: scheme 0x%04x is not RSASSA with "
                            "SHA-256",
                            what, (unsigned)s.sigAlg);
        rc = rsassa_verify(key->key, msg, len, &s.signature.rsassa.sig);
    }
    if (rc == VEIL_E_VERIFY)
        return veil_err(VEIL_E_VERIFY, TPM, NULL,
                        "%s signature does not verify", what);
    return rc;
}

/* Unmarshals attest (already known to be signed by the attestation key)
 * and checks the fields every attestation shares. */
static veil_rc parse_attest(const uint8_t *attest, size_t len, uint16_t type,
                            const uint8_t qualifying[32], TPMS_ATTEST *a,
                            const char *what)
{
    size_t off = 0;

    memset(a, 0, sizeof *a);
    if (Tss2_MU_TPMS_ATTEST_Unmarshal(attest, len, &off, a) !=
            TSS2_RC_SUCCESS ||
        off != len)
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "%s: not a marshaled TPMS_ATTEST", what);
    /* A restricted key signs nothing that starts with this value unless
     * the TPM made it. */
    if (a->magic != TPM2_GENERATED_VALUE)
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "%s: magic is not TPM_GENERATED_VALUE", what);
    if (a->type != type)
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "%s: attestation type 0x%04x, expected 0x%04x", what,
                        (unsigned)a->type, (unsigned)type);
    if (a->extraData.size != 32 ||
        memcmp(a->extraData.buffer, qualifying, 32) != 0)
        return veil_err(VEIL_E_VERIFY, TPM, NULL,
                        "%s qualifying data does not match", what);
    return VEIL_OK;
}

static veil_rc check_signer(const veil_tpm_pub *k)
{
    if (!k->key || (k->type != TPM2_ALG_RSA && k->type != TPM2_ALG_ECC))
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "attestation key: not a parsed public area");
    return need_attrs(k->attributes, AK_ATTRS, "attestation key");
}

/* ---- quotes ------------------------------------------------------------ */

static veil_rc check_sel(const veil_pcr_sel *sel)
{
    if (sel->n == 0 || sel->n > VEIL_EV_MAX_PCRS)
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "PCR selection: %u PCRs (1..%d allowed)", sel->n,
                        VEIL_EV_MAX_PCRS);
    for (unsigned i = 0; i < sel->n; i++)
        if (sel->index[i] >= VEIL_EV_MAX_PCRS ||
            (i > 0 && sel->index[i] <= sel->index[i - 1]))
            return veil_err(VEIL_E_ARG, TPM, NULL,
                            "PCR selection: indices must be ascending, "
                            "unique and below %d",
                            VEIL_EV_MAX_PCRS);
    return VEIL_OK;
}

static veil_rc check_quote_pcrs(const TPMS_QUOTE_INFO *q,
                                const veil_pcr_sel *sel,
                                const uint8_t (*pcr_values)[32])
{
    const TPMS_PCR_SELECTION *ps = &q->pcrSelect.pcrSelections[0];
    uint8_t want[TPM2_PCR_SELECT_MAX] = {0};
    uint8_t digest[SHA256_LEN];
    EVP_MD_CTX *md;
    int ok;

    /* Exactly one bank, sha256: a quote over more banks would commit to
     * values the verifier never compares. */
    if (q->pcrSelect.count != 1)
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "quote PCR selection has %u banks, expected 1",
                        (unsigned)q->pcrSelect.count);
    if (ps->hash != TPM2_ALG_SHA256)
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "quote PCR bank 0x%04x is not sha256",
                        (unsigned)ps->hash);
    if (ps->sizeofSelect > TPM2_PCR_SELECT_MAX)
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "quote PCR selection bitmap is too long");
    for (unsigned i = 0; i < sel->n; i++)
        want[sel->index[i] / 8] |= (uint8_t)(1u << (sel->index[i] % 8));
    for (size_t i = 0; i < TPM2_PCR_SELECT_MAX; i++) {
        uint8_t got = i < ps->sizeofSelect ? ps->pcrSelect[i] : 0;
        if (got != want[i])
            return veil_err(VEIL_E_ARG, TPM, NULL,
                            "quote PCR selection is not the expected one");
    }
    /* pcrDigest: the hash (the AK's nameAlg, SHA-256) of the selected PCR
     * values concatenated in ascending index order (Part 3, 18.4). */
    md = EVP_MD_CTX_new();
    ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    for (unsigned i = 0; ok && i < sel->n; i++)
        ok = EVP_DigestUpdate(md, pcr_values[i], 32);
    ok = ok && EVP_DigestFinal_ex(md, digest, NULL);
    EVP_MD_CTX_free(md);
    if (!ok)
        return veil_err_ossl(VEIL_E_CRYPTO, TPM, "SHA-256 failed");
    if (q->pcrDigest.size != SHA256_LEN ||
        memcmp(q->pcrDigest.buffer, digest, SHA256_LEN) != 0)
        return veil_err(VEIL_E_VERIFY, TPM, NULL,
                        "PCR digest does not match the reported values");
    return VEIL_OK;
}

veil_rc veil_tpm_check_quote(veil_engine *e, const veil_tpm_pub *ak,
                             const uint8_t *attest, size_t attest_len,
                             const uint8_t *sig, size_t sig_len,
                             const uint8_t qualifying[32],
                             const veil_pcr_sel *sel,
                             const uint8_t (*pcr_values)[32])
{
    TPMS_ATTEST a;
    veil_rc rc;

    veil_err_clear();
    if (!e || !ak || !attest || !sig || !qualifying || !sel || !pcr_values)
        return veil_err(VEIL_E_ARG, TPM, NULL, "quote: missing argument");
    rc = check_sel(sel);
    if (rc == VEIL_OK)
        rc = check_signer(ak);
    /* The signature first: nothing in attest is believed before it. */
    if (rc == VEIL_OK)
        rc = check_signature(e, ak, attest, attest_len, sig, sig_len, "quote");
    if (rc == VEIL_OK)
        rc = parse_attest(attest, attest_len, TPM2_ST_ATTEST_QUOTE, qualifying,
                          &a, "quote");
    if (rc == VEIL_OK)
        rc = check_quote_pcrs(&a.attested.quote, sel, pcr_values);
    return rc;
}

/* ---- certifications ---------------------------------------------------- */

veil_rc veil_tpm_check_certify(veil_engine *e, const veil_tpm_pub *signer,
                               const uint8_t *attest, size_t attest_len,
                               const uint8_t *sig, size_t sig_len,
                               const uint8_t qualifying[32],
                               const veil_tpm_pub *certified, uint32_t required)
{
    TPMS_ATTEST a;
    const TPM2B_NAME *name;
    veil_rc rc;

    veil_err_clear();
    if (!e || !signer || !attest || !sig || !qualifying || !certified)
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "certification: missing argument");
    rc = check_signer(signer);
    if (rc == VEIL_OK)
        rc = check_signature(e, signer, attest, attest_len, sig, sig_len,
                             "certification");
    if (rc == VEIL_OK)
        rc = parse_attest(attest, attest_len, TPM2_ST_ATTEST_CERTIFY,
                          qualifying, &a, "certification");
    if (rc != VEIL_OK)
        return rc;
    name = &a.attested.certify.name;
    if (name->size != NAME_LEN ||
        memcmp(name->name, certified->name, NAME_LEN) != 0)
        return veil_err(VEIL_E_VERIFY, TPM, NULL,
                        "certified name does not match the public area");
    return need_attrs(certified->attributes, required, "certified key");
}

/* ---- MakeCredential ---------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    size_t n;
} chunk;

static int hmac_sha256(const uint8_t *key, size_t key_len, const chunk *in,
                       size_t n_in, uint8_t out[SHA256_LEN])
{
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    size_t len = 0;
    int ok = ctx && EVP_MAC_init(ctx, key, key_len, params);

    for (size_t i = 0; ok && i < n_in; i++)
        ok = in[i].n == 0 || EVP_MAC_update(ctx, in[i].p, in[i].n);
    ok = ok && EVP_MAC_final(ctx, out, &len, SHA256_LEN) && len == SHA256_LEN;
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
    return ok;
}

/* KDFa with SHA-256 (Part 1, 11.4.10.2): SP 800-108 counter mode,
 *   K(i) = HMAC(key, [i]32 || label || 0x00 || contextU || contextV
 *                    || [bits]32)
 * concatenated and cut to `bits` (a multiple of 8 here).  The label's
 * terminating NUL is part of the input. */
static int kdfa_sha256(const uint8_t *key, size_t key_len, const char *label,
                       const uint8_t *u, size_t u_len, size_t bits,
                       uint8_t *out)
{
    uint8_t counter[4], bits_be[4], block[SHA256_LEN];
    size_t done = 0, want = bits / 8;
    int ok = 1;

    put_be32(bits_be, (uint32_t)bits);
    for (uint32_t i = 1; ok && done < want; i++) {
        chunk in[] = {
            {counter, sizeof counter},
            {(const uint8_t *)label, strlen(label) + 1},
            {u, u_len},
            {bits_be, sizeof bits_be},
        };
        size_t n = want - done < SHA256_LEN ? want - done : SHA256_LEN;

        put_be32(counter, i);
        ok = hmac_sha256(key, key_len, in, sizeof in / sizeof in[0], block);
        if (ok)
            memcpy(out + done, block, n);
        done += n;
    }
    veil_wipe(block, sizeof block);
    return ok;
}

static int aes128_cfb_encrypt(const uint8_t key[16], const uint8_t *in,
                              size_t len, uint8_t *out)
{
    static const uint8_t zero_iv[16];
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0, fin = 0;
    int ok =
        ctx &&
        EVP_EncryptInit_ex(ctx, EVP_aes_128_cfb128(), NULL, key, zero_iv) &&
        EVP_EncryptUpdate(ctx, out, &n, in, (int)len) &&
        EVP_EncryptFinal_ex(ctx, out + n, &fin) && (size_t)(n + fin) == len;

    EVP_CIPHER_CTX_free(ctx);
    return ok;
}

veil_rc veil_tpm_make_credential(veil_engine *e, const veil_tpm_pub *ek,
                                 const uint8_t *name, size_t name_len,
                                 const uint8_t *secret, size_t secret_len,
                                 uint8_t *blob, size_t *blob_len,
                                 uint8_t *enc_secret, size_t *enc_len)
{
    /* The label is "IDENTITY" with its NUL (Part 1, 24.4). */
    static const uint8_t identity[] = "IDENTITY";
    const veil_oaep oaep = {VEIL_HASH_SHA256, identity, sizeof identity};
    uint8_t seed[SHA256_LEN], sym_key[16], hmac_key[SHA256_LEN];
    uint8_t plain[2 + SHA256_LEN], enc_identity[2 + SHA256_LEN];
    uint8_t outer[SHA256_LEN];
    size_t id_len, ct_need, ct_len, enc_id_len = 2 + secret_len;
    veil_rc rc = VEIL_OK;

    veil_err_clear();
    if (!e || !ek || !ek->key || !name || !secret || !blob || !blob_len ||
        !enc_secret || !enc_len)
        return veil_err(VEIL_E_ARG, TPM, NULL, "credential: missing argument");
    /* An ECC EK would need the ECDH form of the seed; not supported. */
    if (ek->type != TPM2_ALG_RSA)
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "credential: the endorsement key is not RSA");
    rc = need_attrs(ek->attributes, EK_ATTRS, "endorsement key");
    if (rc != VEIL_OK)
        return rc;
    if (name_len < 2 || name_len > sizeof(TPMU_NAME))
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "credential: a name is 2..%zu bytes, not %zu",
                        sizeof(TPMU_NAME), name_len);
    /* The credential is a TPM2B_DIGEST of the EK's nameAlg (SHA-256). */
    if (secret_len < 1 || secret_len > SHA256_LEN)
        return veil_err(VEIL_E_ARG, TPM, NULL,
                        "credential: the secret is 1..32 bytes, not %zu",
                        secret_len);
    /* TPM2B_ID_OBJECT: size || TPM2B_DIGEST(outer HMAC) || encIdentity */
    id_len = 2 + (2 + SHA256_LEN) + enc_id_len;
    ct_need = (size_t)EVP_PKEY_get_size(ek->key->pub);
    if (*blob_len < id_len || *enc_len < 2 + ct_need)
        return veil_err(VEIL_E_BUFFER, TPM, NULL,
                        "credential: buffers need %zu and %zu bytes", id_len,
                        2 + ct_need);

    /* The seed is as long as the EK's nameAlg digest (Part 1, 24.4). */
    rc = veil_random(e, seed, sizeof seed);
    if (rc != VEIL_OK)
        goto out;
    ct_len = *enc_len - 2;
    rc = veil_rsa_encrypt(e, ek->key, &oaep, seed, sizeof seed, enc_secret + 2,
                          &ct_len);
    if (rc != VEIL_OK)
        goto out;
    put_be16(enc_secret, ct_len);

    /* encIdentity: the marshaled TPM2B_DIGEST of the secret, encrypted
     * under KDFa(seed, "STORAGE", name) with a zero IV, since a fresh seed
     * makes a fresh key every time. */
    put_be16(plain, secret_len);
    memcpy(plain + 2, secret, secret_len);
    if (!kdfa_sha256(seed, sizeof seed, "STORAGE", name, name_len,
                     8 * sizeof sym_key, sym_key) ||
        !aes128_cfb_encrypt(sym_key, plain, enc_id_len, enc_identity)) {
        rc = veil_err_ossl(VEIL_E_CRYPTO, TPM, "credential: AES-CFB failed");
        goto out;
    }
    /* The outer HMAC binds encIdentity to the name, so the TPM refuses the
     * credential for any other object. */
    {
        chunk in[] = {{enc_identity, enc_id_len}, {name, name_len}};

        if (!kdfa_sha256(seed, sizeof seed, "INTEGRITY", NULL, 0,
                         8 * sizeof hmac_key, hmac_key) ||
            !hmac_sha256(hmac_key, sizeof hmac_key, in, 2, outer)) {
            rc = veil_err_ossl(VEIL_E_CRYPTO, TPM, "credential: HMAC failed");
            goto out;
        }
    }
    put_be16(blob, id_len - 2);
    put_be16(blob + 2, SHA256_LEN);
    memcpy(blob + 4, outer, SHA256_LEN);
    memcpy(blob + 4 + SHA256_LEN, enc_identity, enc_id_len);
    *blob_len = id_len;
    *enc_len = 2 + ct_len;

out:
    veil_wipe(seed, sizeof seed);
    veil_wipe(sym_key, sizeof sym_key);
    veil_wipe(hmac_key, sizeof hmac_key);
    veil_wipe(plain, sizeof plain);
    return rc;
}
