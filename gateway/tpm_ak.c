/* The gateway's TPM, its identity keys (tpm_int.h): the EK (TCG default
 * template, kept as a saved context) and the EK certificate in NV, the
 * attestation keys, and credential activation (TPM2_ActivateCredential
 * under the EK's policy A) by which a verifier enrols the long-term AK. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>

#include "package.h"
#include "tpm_int.h"

#define EK_CERT_NV_RSA 0x01c00002u
#define EK_CERT_MAX 4096u /* DER certificates in NV are ~1 KiB */

/* TCG EK Credential Profile, policy A: PolicySecret(TPM_RH_ENDORSEMENT). */
static const uint8_t ek_policy_a[32] = {
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc,
    0x8d, 0x46, 0xa5, 0xd7, 0x24, 0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52,
    0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa};

/* ---- EK ------------------------------------------------------------------ */

int tpm_ek_make(gw_tpm *t, char *err, size_t err_size)
{
    TPM2B_PUBLIC tmpl = {
        .publicArea = {
            .type = TPM2_ALG_RSA,
            .nameAlg = TPM2_ALG_SHA256,
            .objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                TPMA_OBJECT_SENSITIVEDATAORIGIN |
                                TPMA_OBJECT_ADMINWITHPOLICY |
                                TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT,
            .authPolicy = {.size = sizeof ek_policy_a},
            .parameters.rsaDetail =
                {
                    .symmetric = {.algorithm = TPM2_ALG_AES,
                                  .keyBits.aes = 128,
                                  .mode.aes = TPM2_ALG_CFB},
                    .scheme = {.scheme = TPM2_ALG_NULL},
                    .keyBits = 2048,
                    .exponent = 0,
                },
            /* 256 zero bytes, as the profile says */
            .unique.rsa = {.size = 256},
        }};
    TPM2B_SENSITIVE_CREATE sens = {0};
    TPM2B_DATA outside = {0};
    TPML_PCR_SELECTION no_pcrs = {0};
    TPM2B_PUBLIC *pub = NULL;
    ESYS_TR ek = ESYS_TR_NONE;
    EVP_PKEY *pkey = NULL;
    unsigned char *spki = NULL;
    int spki_len, ret = -1;
    double t0 = tpm_now_ms();
    TSS2_RC rc;

    memcpy(tmpl.publicArea.authPolicy.buffer, ek_policy_a, sizeof ek_policy_a);
    rc = Esys_CreatePrimary(t->ctx, ESYS_TR_RH_ENDORSEMENT, ESYS_TR_PASSWORD,
                            ESYS_TR_NONE, ESYS_TR_NONE, &sens, &tmpl, &outside,
                            &no_pcrs, &ek, &pub, NULL, NULL, NULL);
    if (rc != TSS2_RC_SUCCESS) {
        tpm_put_rc(err, err_size, "creating the EK", rc);
        return -1;
    }
    veil_logf(&t->log, VEIL_LOG_DEBUG, "TPM: EK created in %.0f ms",
              tpm_now_ms() - t0);
    /* the key asked for: RSA 2048 (tpm_pkey_from_public checks the
     * modulus and the exponent); its salts protect the sessions */
    if (pub->publicArea.type != TPM2_ALG_RSA ||
        pub->publicArea.parameters.rsaDetail.keyBits != 2048 ||
        !(pkey = tpm_pkey_from_public(&pub->publicArea))) {
        gw_put_err(err, err_size,
                   "TPM: the EK's public area is not the RSA 2048 key of "
                   "the default template");
        goto out;
    }
    if ((spki_len = i2d_PUBKEY(pkey, &spki)) <= 0 ||
        !(t->ek_pub_b64 = tpm_b64_public(pub)) ||
        !(t->ek_spki_b64 = veil_b64_encode(spki, (size_t)spki_len))) {
        gw_put_err(err, err_size, "TPM: EK public key: encoding failed");
        goto out;
    }
    /* Kept as a saved context, loaded again for each activation. */
    rc = Esys_ContextSave(t->ctx, ek, &t->ek_saved);
    if (rc != TSS2_RC_SUCCESS) {
        tpm_put_rc(err, err_size, "saving the EK context", rc);
        goto out;
    }
    ret = 0;
out:
    Esys_FlushContext(t->ctx, ek);
    Esys_Free(pub);
    EVP_PKEY_free(pkey);
    OPENSSL_free(spki);
    return ret;
}

/* 1 when the TPM has an NV index `index`, 0 when not, -1 on failure.
 * Asked first because ESYS logs an error for every absent handle it is
 * given. */
static int nv_exists(gw_tpm *t, TPM2_HANDLE index, char *err, size_t err_size)
{
    TPMS_CAPABILITY_DATA *cap;
    int found;

    if (tpm_capability(t, TPM2_CAP_HANDLES, index, "listing NV indices", &cap,
                       err, err_size) != 0)
        return -1;
    found = cap->data.handles.count > 0 && cap->data.handles.handle[0] == index;
    Esys_Free(cap);
    return found;
}

/* Reads the RSA EK certificate from NV, in chunks of at most
 * TPM2_PT_NV_BUFFER_MAX; absent is not an error. */
int tpm_ek_cert_read(gw_tpm *t, char *err, size_t err_size)
{
    ESYS_TR nv = ESYS_TR_NONE;
    TPM2B_NV_PUBLIC *nv_pub = NULL;
    uint8_t *der = NULL;
    uint16_t size, done = 0, chunk;
    ESYS_TR auth;
    TPMA_NV attrs;
    TSS2_RC rc;
    int ret = -1, exists;

    exists = nv_exists(t, EK_CERT_NV_RSA, err, err_size);
    if (exists <= 0)
        return exists;
    rc = Esys_TR_FromTPMPublic(t->ctx, EK_CERT_NV_RSA, ESYS_TR_NONE,
                               ESYS_TR_NONE, ESYS_TR_NONE, &nv);
    if (rc == TSS2_RC_SUCCESS)
        rc = Esys_NV_ReadPublic(t->ctx, nv, ESYS_TR_NONE, ESYS_TR_NONE,
                                ESYS_TR_NONE, &nv_pub, NULL);
    if (rc != TSS2_RC_SUCCESS) {
        tpm_put_rc(err, err_size, "EK certificate index", rc);
        goto out;
    }
    size = nv_pub->nvPublic.dataSize;
    attrs = nv_pub->nvPublic.attributes;
    if (size == 0 || size > EK_CERT_MAX) {
        gw_put_err(err, err_size, "TPM: EK certificate index: %u bytes",
                   (unsigned)size);
        goto out;
    }
    if (attrs & TPMA_NV_AUTHREAD)
        auth = nv;
    else if (attrs & TPMA_NV_OWNERREAD)
        auth = ESYS_TR_RH_OWNER;
    else {
        veil_logf(&t->log, VEIL_LOG_WARN,
                  "TPM: the EK certificate in NV is not readable");
        ret = 0;
        goto out;
    }
    /* TPM2_PT_NV_BUFFER_MAX, within what a TPM2B_MAX_NV_BUFFER holds */
    chunk = t->nv_buffer_max > 0 && t->nv_buffer_max < TPM2_MAX_NV_BUFFER_SIZE
                ? (uint16_t)t->nv_buffer_max
                : TPM2_MAX_NV_BUFFER_SIZE;
    if (!(der = malloc(size)))
        goto out;
    while (done < size) {
        TPM2B_MAX_NV_BUFFER *part = NULL;
        uint16_t want =
            (uint16_t)(size - done) < chunk ? (uint16_t)(size - done) : chunk;

        rc = Esys_NV_Read(t->ctx, auth, nv, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                          ESYS_TR_NONE, want, done, &part);
        if (rc != TSS2_RC_SUCCESS || part->size != want) {
            if (rc == TSS2_RC_SUCCESS)
                gw_put_err(err, err_size, "TPM: EK certificate: short read");
            else
                tpm_put_rc(err, err_size, "reading the EK certificate", rc);
            Esys_Free(part);
            goto out;
        }
        memcpy(der + done, part->buffer, want);
        done = (uint16_t)(done + want);
        Esys_Free(part);
    }
    /* NV indices are often larger than the certificate: keep exactly the
     * DER object. */
    {
        const unsigned char *p = der;
        X509 *cert = d2i_X509(NULL, &p, size);

        if (!cert) {
            veil_logf(&t->log, VEIL_LOG_WARN,
                      "TPM: the EK certificate in NV is not DER X.509");
            ret = 0;
            goto out;
        }
        X509_free(cert);
        t->ek_cert_b64 = veil_b64_encode(der, (size_t)(p - der));
    }
    ret = t->ek_cert_b64 ? 0 : -1;
    if (ret != 0)
        gw_put_err(err, err_size, "TPM: out of memory");
out:
    if (nv != ESYS_TR_NONE)
        Esys_TR_Close(t->ctx, &nv);
    Esys_Free(nv_pub);
    free(der);
    return ret;
}

/* Warns when the certificate in NV is not for the EK we made (a TPM whose
 * EK is not the default template, or a certificate written for another
 * key): verifiers will refuse it, and the operator should know why. */
void tpm_ek_cert_check(gw_tpm *t)
{
    uint8_t *der = NULL, *spki = NULL;
    size_t der_len = 0, spki_len = 0;
    const unsigned char *p;
    X509 *cert = NULL;
    EVP_PKEY *ek = NULL;

    if (!t->ek_cert_b64 ||
        veil_b64_decode(t->ek_cert_b64, strlen(t->ek_cert_b64), &der,
                        &der_len) != VEIL_OK ||
        veil_b64_decode(t->ek_spki_b64, strlen(t->ek_spki_b64), &spki,
                        &spki_len) != VEIL_OK)
        goto out;
    p = der;
    cert = d2i_X509(NULL, &p, (long)der_len);
    p = spki;
    ek = d2i_PUBKEY(NULL, &p, (long)spki_len);
    if (cert && ek && EVP_PKEY_eq(X509_get0_pubkey(cert), ek) != 1)
        veil_logf(
            &t->log, VEIL_LOG_WARN,
            "TPM: the EK certificate in NV is not for the EK of the default "
            "template: verifiers will refuse it");
out:
    X509_free(cert);
    EVP_PKEY_free(ek);
    free(der);
    free(spki);
}

/* ---- AK ------------------------------------------------------------------ */

/* A restricted ECDSA P-256/SHA-256 signing primary in the endorsement
 * hierarchy; a random `unique` makes it a new key each time, a kept one
 * the same key again (tpm_akstore.c).  Its auth value is no part of the
 * key's derivation or name: the same unique with another auth value is
 * the same key (what lets an AK file of an older veild, without an auth
 * value, keep its AK). */
int tpm_ak_make(gw_tpm *t, const uint8_t *unique, const uint8_t *auth,
                ESYS_TR *ak, TPM2B_PUBLIC **pub, char *err, size_t err_size)
{
    TPM2B_PUBLIC tmpl = {
        .publicArea = {
            .type = TPM2_ALG_ECC,
            .nameAlg = TPM2_ALG_SHA256,
            .objectAttributes =
                TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT,
            .parameters.eccDetail =
                {
                    .symmetric = {.algorithm = TPM2_ALG_NULL},
                    .scheme = {.scheme = TPM2_ALG_ECDSA,
                               .details.ecdsa.hashAlg = TPM2_ALG_SHA256},
                    .curveID = TPM2_ECC_NIST_P256,
                    .kdf = {.scheme = TPM2_ALG_NULL},
                },
            .unique.ecc = {.x = {.size = 32}, .y = {.size = 32}},
        }};
    TPM2B_SENSITIVE_CREATE sens = {
        .sensitive.userAuth = {.size = TPM_AK_AUTH_LEN}};
    TPM2B_DATA outside = {0};
    TPML_PCR_SELECTION no_pcrs = {0};
    EVP_PKEY *check = NULL;
    TSS2_RC rc;
    int ret = -1;

    *ak = ESYS_TR_NONE;
    if (auth)
        memcpy(sens.sensitive.userAuth.buffer, auth, TPM_AK_AUTH_LEN);
    else if (RAND_bytes(sens.sensitive.userAuth.buffer, TPM_AK_AUTH_LEN) != 1) {
        gw_put_err(err, err_size, "TPM: no random bytes for the AK");
        return -1;
    }
    if (unique) {
        memcpy(tmpl.publicArea.unique.ecc.x.buffer, unique, 32);
        memcpy(tmpl.publicArea.unique.ecc.y.buffer, unique + 32, 32);
    } else if (RAND_bytes(tmpl.publicArea.unique.ecc.x.buffer, 32) != 1 ||
               RAND_bytes(tmpl.publicArea.unique.ecc.y.buffer, 32) != 1) {
        gw_put_err(err, err_size, "TPM: no random bytes for the AK");
        goto out;
    }
    /* the auth value goes in inSensitive, encrypted by the session */
    if (tpm_sessions(t, err, err_size) != 0)
        goto out;
    rc = Esys_CreatePrimary(t->ctx, ESYS_TR_RH_ENDORSEMENT, t->sess[0],
                            ESYS_TR_NONE, ESYS_TR_NONE, &sens, &tmpl, &outside,
                            &no_pcrs, ak, pub, NULL, NULL, NULL);
    if (rc != TSS2_RC_SUCCESS) {
        *ak = ESYS_TR_NONE;
        tpm_sessions_drop(t);
        tpm_put_rc(err, err_size, "creating an attestation key", rc);
        goto out;
    }
    /* the key asked for: ECC P-256 with a point on the curve, the type
     * read before the union (tpm_pkey_from_public) */
    if ((*pub)->publicArea.type == TPM2_ALG_ECC &&
        (check = tpm_pkey_from_public(&(*pub)->publicArea)) != NULL)
        ret = 0;
    EVP_PKEY_free(check);
    if (ret != 0)
        gw_put_err(err, err_size,
                   "TPM: the attestation key's public area is not an ECC "
                   "P-256 key");
    else if ((rc = Esys_TR_SetAuth(t->ctx, *ak, &sens.sensitive.userAuth)) !=
             TSS2_RC_SUCCESS) {
        tpm_put_rc(err, err_size, "the attestation key's auth", rc);
        ret = -1;
    }
    if (ret != 0) {
        Esys_FlushContext(t->ctx, *ak);
        *ak = ESYS_TR_NONE;
        Esys_Free(*pub);
        *pub = NULL;
    }
out:
    veil_wipe(&sens, sizeof sens);
    return ret;
}

/* The name (nameAlg || H(TPMT_PUBLIC)) of a loaded object. */
int tpm_object_name(gw_tpm *t, ESYS_TR obj, TPM2B_NAME **name, char *err,
                    size_t err_size)
{
    TSS2_RC rc = Esys_TR_GetName(t->ctx, obj, name);

    if (rc != TSS2_RC_SUCCESS) {
        tpm_put_rc(err, err_size, "object name", rc);
        return -1;
    }
    return 0;
}

/* ---- credential activation ---------------------------------------------- */

/* 1 when rc from TPM2_ActivateCredential is the TPM refusing the
 * credential rather than failing: an error on its first two parameters
 * (the credential blob or the encrypted secret: wrong name, wrong EK,
 * tampered or malformed; TPM_RC_INTEGRITY, _VALUE, _SIZE, ...).
 *
 * libtpms before 0.10 answers TPM_RC_FAILURE when the secret does not
 * decrypt under the EK (stefanberger/libtpms#445 made it TPM_RC_VALUE), so
 * anyone could make a swtpm-backed gateway report a TPM failure.  The TPM
 * is not in failure mode then: the commands just before succeeded, and a
 * TPM that really failed refuses the next command, where it shows. */
static int refused_credential(TSS2_RC rc)
{
    unsigned n;

    if ((rc & TSS2_RC_LAYER_MASK) != TSS2_TPM_RC_LAYER)
        return 0;
    if (rc == TPM2_RC_FAILURE)
        return 1;
    if (!(rc & TPM2_RC_FMT1) || !(rc & TPM2_RC_P))
        return 0;
    n = (rc & TPM2_RC_N_MASK) >> 8;
    return n == 1 || n == 2;
}

static gw_rc activate_locked(gw_tpm *t, const TPM2B_ID_OBJECT *blob,
                             const TPM2B_ENCRYPTED_SECRET *secret,
                             uint8_t out[64], size_t *out_len, char *err,
                             size_t err_size)
{
    TPMT_SYM_DEF no_sym = {.algorithm = TPM2_ALG_NULL};
    ESYS_TR ek = ESYS_TR_NONE, session = ESYS_TR_NONE;
    TPM2B_DIGEST *cert_info = NULL;
    TSS2_RC rc;
    gw_rc ret = GW_UNAVAILABLE;

    /* started before the EK is loaded: a TPM without a resource manager
     * holds three transient objects (AK, certified key, EK) */
    if (tpm_sessions(t, err, err_size) != 0)
        return GW_UNAVAILABLE;
    rc = Esys_ContextLoad(t->ctx, t->ek_saved, &ek);
    if (rc != TSS2_RC_SUCCESS) {
        ek = ESYS_TR_NONE;
        tpm_put_rc(err, err_size, "loading the EK", rc);
        goto out;
    }
    /* The EK's policy A: PolicySecret(TPM_RH_ENDORSEMENT). */
    rc = Esys_StartAuthSession(t->ctx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                               ESYS_TR_NONE, ESYS_TR_NONE, NULL, TPM2_SE_POLICY,
                               &no_sym, TPM2_ALG_SHA256, &session);
    if (rc != TSS2_RC_SUCCESS) {
        session = ESYS_TR_NONE;
        tpm_put_rc(err, err_size, "policy session", rc);
        goto out;
    }
    rc = Esys_PolicySecret(t->ctx, ESYS_TR_RH_ENDORSEMENT, session,
                           ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, NULL,
                           NULL, NULL, 0, NULL, NULL);
    if (rc != TSS2_RC_SUCCESS) {
        tpm_put_rc(err, err_size, "PolicySecret", rc);
        goto out;
    }
    /* the AK in the salted session: the recovered secret comes back
     * encrypted (TPMA_SESSION_ENCRYPT), the AK's auth never in the clear */
    rc = Esys_ActivateCredential(t->ctx, t->ak, ek, t->sess[0], session,
                                 ESYS_TR_NONE, blob, secret, &cert_info);
    if (rc != TSS2_RC_SUCCESS) {
        tpm_sessions_drop(t);
        if (refused_credential(rc)) {
            gw_put_err(err, err_size, "TPM: credential refused: %s",
                       Tss2_RC_Decode(rc));
            ret = GW_REFUSED;
        } else {
            tpm_put_rc(err, err_size, "ActivateCredential", rc);
        }
        goto out;
    }
    if (cert_info->size > 64) {
        gw_put_err(err, err_size, "TPM: the secret is over 64 bytes");
        goto out;
    }
    memcpy(out, cert_info->buffer, cert_info->size);
    *out_len = cert_info->size;
    ret = GW_OK;
out:
    if (cert_info) {
        veil_wipe(cert_info, sizeof *cert_info);
        Esys_Free(cert_info);
    }
    if (session != ESYS_TR_NONE)
        Esys_FlushContext(t->ctx, session);
    if (ek != ESYS_TR_NONE)
        Esys_FlushContext(t->ctx, ek);
    return ret;
}

gw_rc gw_tpm_activate(gw_tpm *t, const uint8_t *blob, size_t blob_len,
                      const uint8_t *enc_secret, size_t enc_len,
                      uint8_t out[64], size_t *out_len, char *err,
                      size_t err_size)
{
    TPM2B_ID_OBJECT id = {0};
    TPM2B_ENCRYPTED_SECRET secret = {0};
    size_t off = 0;
    gw_rc ret;

    if (!t || !out || !out_len) {
        gw_put_err(err, err_size, "TPM: no TPM");
        return GW_UNAVAILABLE;
    }
    *out_len = 0;
    /* Malformed input is the client's credential being wrong, like a
     * credential the TPM refuses. */
    if (!blob ||
        Tss2_MU_TPM2B_ID_OBJECT_Unmarshal(blob, blob_len, &off, &id) !=
            TSS2_RC_SUCCESS ||
        off != blob_len) {
        gw_put_err(err, err_size,
                   "TPM: credential blob: not a TPM2B_ID_OBJECT");
        return GW_REFUSED;
    }
    off = 0;
    if (!enc_secret ||
        Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal(enc_secret, enc_len, &off,
                                                 &secret) != TSS2_RC_SUCCESS ||
        off != enc_len) {
        gw_put_err(err, err_size,
                   "TPM: encrypted secret: not a TPM2B_ENCRYPTED_SECRET");
        return GW_REFUSED;
    }
    pthread_mutex_lock(&t->lock);
    tpm_test_delay(t);
    ret = activate_locked(t, &id, &secret, out, out_len, err, err_size);
    pthread_mutex_unlock(&t->lock);
    return ret;
}
