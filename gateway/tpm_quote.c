/* The gateway's TPM, its evidence (tpm_int.h): PCR reads, quotes (read
 * again when a PCR changed between the read and the quote), certifications,
 * and the objects gw_tpm_quote and gw_tpm_report make of them. */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>

#include "package.h"
#include "tpm_int.h"

/* ---- JSON fields --------------------------------------------------------- */

/* obj[key] = string made by enc(in, len); 0, or -1 on no memory. */
static int add_encoded(cJSON *obj, const char *key, const uint8_t *in,
                       size_t len, char *(*enc)(const uint8_t *, size_t))
{
    char *s = enc(in, len);
    int rc = -1;

    if (s && cJSON_AddStringToObject(obj, key, s))
        rc = 0;
    free(s);
    return rc;
}

static int add_b64(cJSON *obj, const char *key, const uint8_t *in, size_t len)
{
    return add_encoded(obj, key, in, len, veil_b64_encode);
}

static int add_hex(cJSON *obj, const char *key, const uint8_t *in, size_t len)
{
    return add_encoded(obj, key, in, len, tpm_hex);
}

/* obj[key] = base64 of the marshaled signature; 0, or -1. */
static int add_signature(cJSON *obj, const char *key, const TPMT_SIGNATURE *sig)
{
    char *s = tpm_b64_signature(sig);
    int rc = s && cJSON_AddStringToObject(obj, key, s) ? 0 : -1;

    free(s);
    return rc;
}

/* obj[key] = s, or null when s is NULL. */
static int add_str_or_null(cJSON *obj, const char *key, const char *s)
{
    if (s)
        return cJSON_AddStringToObject(obj, key, s) ? 0 : -1;
    return cJSON_AddNullToObject(obj, key) ? 0 : -1;
}

/* The signing scheme of every quote and certification. */
static const TPMT_SIG_SCHEME ecdsa_sha256 = {
    .scheme = TPM2_ALG_ECDSA, .details.ecdsa.hashAlg = TPM2_ALG_SHA256};

/* The 32 bytes a quote or certification signs along (extraData). */
static TPM2B_DATA qualifying_data(const uint8_t qualifying[32])
{
    TPM2B_DATA qd = {.size = 32};

    memcpy(qd.buffer, qualifying, 32);
    return qd;
}

/* ---- PCRs and quotes ----------------------------------------------------- */

static void selection_of(const veil_pcr_sel *sel, TPML_PCR_SELECTION *out)
{
    memset(out, 0, sizeof *out);
    out->count = 1;
    out->pcrSelections[0].hash = TPM2_ALG_SHA256;
    out->pcrSelections[0].sizeofSelect = 3;
    for (unsigned i = 0; i < sel->n; i++)
        out->pcrSelections[0].pcrSelect[sel->index[i] / 8] |=
            (uint8_t)(1u << (sel->index[i] % 8));
}

/* Reads the selected PCRs into values (sel order, ascending).  A TPM
 * answers at most 8 digests a call, so this asks for the rest until every
 * PCR has come back. */
int tpm_pcr_read(gw_tpm *t, uint8_t (*values)[32], char *err, size_t err_size)
{
    TPML_PCR_SELECTION want;
    int got[VEIL_EV_MAX_PCRS] = {0};
    unsigned left = t->sel.n;

    selection_of(&t->sel, &want);
    while (left > 0) {
        TPML_PCR_SELECTION *out_sel = NULL;
        TPML_DIGEST *digests = NULL;
        UINT32 counter;
        unsigned k = 0, before = left;
        TSS2_RC rc;

        rc = Esys_PCR_Read(t->ctx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                           &want, &counter, &out_sel, &digests);
        if (rc != TSS2_RC_SUCCESS) {
            tpm_put_rc(err, err_size, "reading PCRs", rc);
            return -1;
        }
        /* Digests come in the order of the returned selection: banks in
         * order, PCRs ascending within a bank. */
        for (UINT32 b = 0; b < out_sel->count; b++) {
            const TPMS_PCR_SELECTION *s = &out_sel->pcrSelections[b];
            for (unsigned idx = 0; idx < 8u * s->sizeofSelect; idx++) {
                if (!(s->pcrSelect[idx / 8] & (1u << (idx % 8))))
                    continue;
                if (k >= digests->count)
                    break;
                if (s->hash == TPM2_ALG_SHA256 && idx < 24 &&
                    digests->digests[k].size == 32) {
                    for (unsigned i = 0; i < t->sel.n; i++) {
                        if (t->sel.index[i] != idx || got[i])
                            continue;
                        memcpy(values[i], digests->digests[k].buffer, 32);
                        got[i] = 1;
                        left--;
                        want.pcrSelections[0].pcrSelect[idx / 8] &=
                            (uint8_t) ~(1u << (idx % 8));
                    }
                }
                k++;
            }
        }
        Esys_Free(out_sel);
        Esys_Free(digests);
        if (left == before) {
            gw_put_err(err, err_size,
                       "TPM: PCRs %s: the TPM returns no value for some "
                       "(is the sha256 bank active?)",
                       t->pcr_banks);
            return -1;
        }
    }
    return 0;
}

/* A TPM2_Quote of the selection by `ak` and the PCR values it covers.  A
 * PCR can be extended between the read and the quote; the values are then
 * read and quoted once more, and a second mismatch is an error (a verifier
 * would refuse the evidence). */
static int quote_pcrs(gw_tpm *t, ESYS_TR ak, EVP_PKEY *ak_key,
                      const uint8_t qualifying[32], uint8_t (*values)[32],
                      TPM2B_ATTEST **quoted, TPMT_SIGNATURE **sig, char *err,
                      size_t err_size)
{
    TPM2B_DATA qd = qualifying_data(qualifying);
    TPML_PCR_SELECTION sel;

    selection_of(&t->sel, &sel);
    for (int attempt = 0; attempt < 2; attempt++) {
        TPMS_ATTEST info;
        uint8_t digest[32];
        unsigned dlen = 0;
        EVP_MD_CTX *md;
        TSS2_RC rc;
        int same;

        memset(&info, 0, sizeof info);
        if (tpm_pcr_read(t, values, err, err_size) != 0)
            return -1;
        if (tpm_sessions(t, err, err_size) != 0)
            return -1;
        rc = Esys_Quote(t->ctx, ak, t->sess[0], ESYS_TR_NONE, ESYS_TR_NONE, &qd,
                        &ecdsa_sha256, &sel, quoted, sig);
        if (rc != TSS2_RC_SUCCESS) {
            tpm_sessions_drop(t);
            tpm_put_rc(err, err_size, "quote", rc);
            return -1;
        }
        /* the signature, the statement and the qualifying data first */
        if (tpm_attest_check(ak_key, *quoted, *sig, TPM2_ST_ATTEST_QUOTE,
                             qualifying, NULL, &info, err, err_size) != 0)
            goto fail;
        md = EVP_MD_CTX_new();
        if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
            EVP_DigestUpdate(md, values, 32u * t->sel.n) != 1 ||
            EVP_DigestFinal_ex(md, digest, &dlen) != 1) {
            EVP_MD_CTX_free(md);
            gw_put_err(err, err_size, "TPM: cannot check the quote");
            goto fail;
        }
        EVP_MD_CTX_free(md);
        if (!tpm_pcr_selection_same(&info.attested.quote.pcrSelect, &sel)) {
            gw_put_err(err, err_size,
                       "TPM: the quote covers other PCRs than asked for");
            goto fail;
        }
        same = info.attested.quote.pcrDigest.size == 32 &&
               memcmp(info.attested.quote.pcrDigest.buffer, digest, 32) == 0;
        if (same)
            return 0;
        veil_logf(&t->log, VEIL_LOG_DEBUG,
                  "TPM: PCRs changed during the quote%s",
                  attempt == 0 ? "; once more" : "");
        if (attempt == 1)
            break;
        Esys_Free(*quoted);
        Esys_Free(*sig);
        *quoted = NULL;
        *sig = NULL;
    }
    gw_put_err(err, err_size, "TPM: the PCRs keep changing during quotes");
fail:
    Esys_Free(*quoted);
    Esys_Free(*sig);
    *quoted = NULL;
    *sig = NULL;
    return -1;
}

/* TPM2_Certify of `obj` by `signer`, each in a salted HMAC session. */
int tpm_certify(gw_tpm *t, ESYS_TR obj, ESYS_TR signer, EVP_PKEY *signer_key,
                const uint8_t qualifying[32], TPM2B_ATTEST **info,
                TPMT_SIGNATURE **sig, char *err, size_t err_size)
{
    TPM2B_DATA qd = qualifying_data(qualifying);
    TPM2B_NAME *name = NULL;
    TPMS_ATTEST a;
    TSS2_RC rc;
    int ret;

    *info = NULL;
    *sig = NULL;
    if (tpm_sessions(t, err, err_size) != 0)
        return -1;
    rc = Esys_Certify(t->ctx, obj, signer, t->sess[0], t->sess[1], ESYS_TR_NONE,
                      &qd, &ecdsa_sha256, info, sig);
    if (rc != TSS2_RC_SUCCESS) {
        *info = NULL;
        *sig = NULL;
        tpm_sessions_drop(t);
        tpm_put_rc(err, err_size, "certify", rc);
        return -1;
    }
    /* the object's name as ESYS knows it (no TPM command) */
    ret = tpm_object_name(t, obj, &name, err, err_size);
    if (ret == 0)
        ret = tpm_attest_check(signer_key, *info, *sig, TPM2_ST_ATTEST_CERTIFY,
                               qualifying, name, &a, err, err_size);
    Esys_Free(name);
    if (ret != 0) {
        Esys_Free(*info);
        Esys_Free(*sig);
        *info = NULL;
        *sig = NULL;
    }
    return ret;
}

/* obj[key] = {"attest_b64", "signature_b64"} (+ "pubkey_b64" when given). */
static int add_attestation(cJSON *obj, const char *key,
                           const TPM2B_ATTEST *info, const TPMT_SIGNATURE *sig,
                           const char *pub_b64)
{
    cJSON *a = cJSON_CreateObject();

    if (!a || !cJSON_AddItemToObject(obj, key, a))
        return cJSON_Delete(a), -1;
    if (add_b64(a, "attest_b64", info->attestationData, info->size) != 0 ||
        add_signature(a, "signature_b64", sig) != 0 ||
        (pub_b64 && !cJSON_AddStringToObject(a, "pubkey_b64", pub_b64)))
        return -1;
    return 0;
}

/* The fields a quote and a report share: pcr_banks, pcr_values, quote_b64,
 * signature_b64, qualifying_data. */
static int add_quote_fields(gw_tpm *t, cJSON *obj, const uint8_t (*values)[32],
                            const TPM2B_ATTEST *quoted,
                            const TPMT_SIGNATURE *sig,
                            const uint8_t qualifying[32])
{
    cJSON *banks, *bank;
    char idx[4];

    if (!cJSON_AddStringToObject(obj, "pcr_banks", t->pcr_banks) ||
        !(banks = cJSON_AddObjectToObject(obj, "pcr_values")) ||
        !(bank = cJSON_AddObjectToObject(banks, "sha256")))
        return -1;
    for (unsigned i = 0; i < t->sel.n; i++) {
        snprintf(idx, sizeof idx, "%u", t->sel.index[i]);
        if (add_hex(bank, idx, values[i], 32) != 0)
            return -1;
    }
    if (add_b64(obj, "quote_b64", quoted->attestationData, quoted->size) ||
        add_signature(obj, "signature_b64", sig) ||
        add_hex(obj, "qualifying_data", qualifying, 32))
        return -1;
    return 0;
}

/* ---- the API ------------------------------------------------------------- */

/* The quote object; called with the lock held. */
static cJSON *quote_locked(gw_tpm *t, const uint8_t qualifying[32],
                           int certify_key, char *err, size_t err_size)
{
    ESYS_TR signer = t->ak, fresh = ESYS_TR_NONE;
    EVP_PKEY *signer_key = t->ak_key, *fresh_key = NULL;
    TPM2B_PUBLIC *fresh_pub = NULL;
    TPM2B_NAME *fresh_name = NULL;
    TPM2B_ATTEST *quoted = NULL, *ak_cert = NULL, *key_cert = NULL;
    TPMT_SIGNATURE *sig = NULL, *ak_sig = NULL, *key_sig = NULL;
    uint8_t values[VEIL_EV_MAX_PCRS][32];
    char *fresh_pub_b64 = NULL, *fresh_name_hex = NULL;
    cJSON *q = NULL;
    int ok = 0;

    if (t->ak_per_request) {
        if (tpm_ak_make(t, NULL, NULL, &fresh, &fresh_pub, err, err_size) !=
                0 ||
            tpm_object_name(t, fresh, &fresh_name, err, err_size) != 0 ||
            tpm_certify(t, fresh, t->ak, t->ak_key, qualifying, &ak_cert,
                        &ak_sig, err, err_size) != 0)
            goto out;
        /* tpm_ak_make checked the public area: NULL is no memory */
        if (!(fresh_key = tpm_pkey_from_public(&fresh_pub->publicArea)))
            goto nomem;
        signer = fresh;
        signer_key = fresh_key;
        fresh_pub_b64 = tpm_b64_public(fresh_pub);
        fresh_name_hex = tpm_hex(fresh_name->name, fresh_name->size);
        if (!fresh_pub_b64 || !fresh_name_hex)
            goto nomem;
    }
    if (quote_pcrs(t, signer, signer_key, qualifying, values, &quoted, &sig,
                   err, err_size) != 0)
        goto out;
    if (certify_key && t->key != ESYS_TR_NONE &&
        tpm_certify(t, t->key, signer, signer_key, qualifying, &key_cert,
                    &key_sig, err, err_size) != 0)
        goto out;

    if (!(q = cJSON_CreateObject()) ||
        !cJSON_AddBoolToObject(q, "is_available", 1) ||
        !cJSON_AddStringToObject(q, "format", "veil-tpm2-quote-v1") ||
        add_quote_fields(t, q, (const uint8_t(*)[32])values, quoted, sig,
                         qualifying) != 0 ||
        !cJSON_AddStringToObject(q, "aik_pubkey_b64",
                                 fresh_pub_b64 ? fresh_pub_b64
                                               : t->ak_pub_b64) ||
        !cJSON_AddStringToObject(
            q, "aik_name", fresh_name_hex ? fresh_name_hex : t->ak_name_hex) ||
        !cJSON_AddBoolToObject(q, "software_tpm", t->software))
        goto nomem;
    if (ak_cert ? add_attestation(q, "aik_certify", ak_cert, ak_sig, NULL)
                : !cJSON_AddNullToObject(q, "aik_certify"))
        goto nomem;
    if (key_cert ? add_attestation(q, "key_certify", key_cert, key_sig,
                                   t->key_pub_b64)
                 : !cJSON_AddNullToObject(q, "key_certify"))
        goto nomem;
    ok = 1;
    goto out;
nomem:
    gw_put_err(err, err_size, "TPM: out of memory");
out:
    if (fresh != ESYS_TR_NONE)
        Esys_FlushContext(t->ctx, fresh);
    EVP_PKEY_free(fresh_key);
    Esys_Free(fresh_pub);
    Esys_Free(fresh_name);
    Esys_Free(quoted);
    Esys_Free(sig);
    Esys_Free(ak_cert);
    Esys_Free(ak_sig);
    Esys_Free(key_cert);
    Esys_Free(key_sig);
    free(fresh_pub_b64);
    free(fresh_name_hex);
    if (!ok) {
        cJSON_Delete(q);
        return NULL;
    }
    return q;
}

cJSON *gw_tpm_quote(gw_tpm *t, const uint8_t qualifying[32], int certify_key,
                    char *err, size_t err_size)
{
    cJSON *q;

    if (!t || !qualifying) {
        gw_put_err(err, err_size, "TPM: no TPM");
        return NULL;
    }
    pthread_mutex_lock(&t->lock);
    tpm_test_delay(t);
    q = quote_locked(t, qualifying, certify_key, err, err_size);
    pthread_mutex_unlock(&t->lock);
    return q;
}

/* report["ak_handover"]: null, or the previous long-term AK's
 * certification of the current one (tpm_akstore.c).  0, or -1. */
static int add_handover(const gw_tpm *t, cJSON *report)
{
    const tpm_akstate *s = &t->akstate;
    cJSON *h;

    if (!s->has_previous)
        return cJSON_AddNullToObject(report, "ak_handover") ? 0 : -1;
    return (h = cJSON_AddObjectToObject(report, "ak_handover")) &&
                   cJSON_AddStringToObject(h, "previous_aik_pubkey_b64",
                                           s->previous_pub_b64) &&
                   cJSON_AddStringToObject(h, "previous_aik_name",
                                           s->previous_name_hex) &&
                   cJSON_AddStringToObject(h, "attest_b64",
                                           s->handover_attest_b64) &&
                   cJSON_AddStringToObject(h, "signature_b64",
                                           s->handover_sig_b64)
               ? 0
               : -1;
}

int gw_tpm_report(gw_tpm *t, const uint8_t qualifying[32], cJSON *report,
                  char *err, size_t err_size)
{
    TPM2B_ATTEST *quoted = NULL, *key_cert = NULL;
    TPMT_SIGNATURE *sig = NULL, *key_sig = NULL;
    uint8_t values[VEIL_EV_MAX_PCRS][32];
    cJSON *info;
    int rc = -1;

    if (!t || !qualifying || !report) {
        gw_put_err(err, err_size, "TPM: no TPM");
        return -1;
    }
    pthread_mutex_lock(&t->lock);
    tpm_test_delay(t);
    if (quote_pcrs(t, t->ak, t->ak_key, qualifying, values, &quoted, &sig, err,
                   err_size) != 0 ||
        (t->key != ESYS_TR_NONE &&
         tpm_certify(t, t->key, t->ak, t->ak_key, qualifying, &key_cert,
                     &key_sig, err, err_size) != 0)) {
        pthread_mutex_unlock(&t->lock);
        goto out;
    }
    pthread_mutex_unlock(&t->lock);

    if (!(info = cJSON_AddObjectToObject(report, "tpm")) ||
        !cJSON_AddStringToObject(info, "manufacturer", t->manufacturer) ||
        !cJSON_AddStringToObject(info, "vendor", t->vendor) ||
        !cJSON_AddStringToObject(info, "firmware", t->firmware) ||
        !cJSON_AddBoolToObject(info, "software_tpm", t->software) ||
        !cJSON_AddStringToObject(report, "ek_pubkey_b64", t->ek_pub_b64) ||
        !cJSON_AddStringToObject(report, "ek_spki_b64", t->ek_spki_b64) ||
        add_str_or_null(report, "ek_cert_b64", t->ek_cert_b64) ||
        !cJSON_AddStringToObject(report, "aik_pubkey_b64", t->ak_pub_b64) ||
        !cJSON_AddStringToObject(report, "aik_name", t->ak_name_hex) ||
        add_quote_fields(t, report, (const uint8_t(*)[32])values, quoted, sig,
                         qualifying) != 0 ||
        (key_cert ? add_attestation(report, "key_certify", key_cert, key_sig,
                                    t->key_pub_b64)
                  : !cJSON_AddNullToObject(report, "key_certify")) ||
        add_str_or_null(report, "event_log_b64", t->event_log_b64) ||
        add_handover(t, report)) {
        gw_put_err(err, err_size, "TPM: out of memory");
        goto out;
    }
    rc = 0;
out:
    Esys_Free(quoted);
    Esys_Free(sig);
    Esys_Free(key_cert);
    Esys_Free(key_sig);
    return rc;
}
