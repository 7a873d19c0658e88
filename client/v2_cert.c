/* client/v2_cert.c: the KEM key's TPM certification, checked on the
 * maximum tier before the client encapsulates to it (v2_cert.h,
 * docs/PROTOCOL-V2.md 4.4): the key the client encrypts to must be an
 * object of the TPM whose attestation key it enrolled.  The parsers and
 * verifiers are protocol/evidence.c's (veil_tpm_pub_parse,
 * veil_tpm_check_certify), as for every other certification. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "evidence.h"
#include "trust.h"
#include "v2_cert.h"

#define CERT_MAX_BODY (16u * 1024)
#define TPM_ALG_ECC 0x0023
#define KEM_ATTRS                                                              \
    (VEIL_TPMA_DECRYPT | VEIL_TPMA_FIXEDTPM | VEIL_TPMA_FIXEDPARENT)

/* The SubjectPublicKeyInfo DER of a P-256 point is this prefix and the
 * 65-byte point (RFC 5480). */
static const uint8_t p256_spki_prefix[26] = {
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00};

static veil_client_status refuse_status(veil_client_error *err, int status,
                                        unsigned key_id, const char *what,
                                        const char *why)
{
    return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, status, VEIL_E_VERIFY,
                        "maximum over protocol v2: KEM key %u: %s: %s; "
                        "nothing was sent",
                        key_id, what, why);
}

static veil_client_status refuse(veil_client_error *err, unsigned key_id,
                                 const char *what, const char *why)
{
    return refuse_status(err, 200, key_id, what, why);
}

/* Checks the parsed answer o against kc under the enrolled AK. */
static veil_client_status check_answer(veil_client *c, const cJSON *o,
                                       const veil_ohttp_keyconfig *kc,
                                       veil_client_error *err)
{
    const veil_trust *t = c->trust;
    uint8_t *attest = NULL, *sig = NULL, *pub = NULL, spki[91], sha[32], q[32];
    size_t attest_len = 0, sig_len = 0, pub_len = 0;
    veil_tpm_pub ak = {0}, kem = {0};
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "key_id");
    unsigned n = kc->key_id;
    veil_client_status st = VEIL_CLIENT_OK;

    if (!cJSON_IsNumber(id) || id->valuedouble != (double)kc->key_id)
        return refuse(err, n, "certification", "it is for another key ID");
    if (!veil_cl_json_b64(o, "certify_info_b64", &attest, &attest_len) ||
        !veil_cl_json_b64(o, "signature_b64", &sig, &sig_len) ||
        !veil_cl_json_b64(o, "public_b64", &pub, &pub_len)) {
        st = refuse(err, n, "certification",
                    "certify_info_b64, signature_b64 or public_b64 is "
                    "missing or not base64");
        goto out;
    }
    if (!veil_cl_tpm_pub(c->engine, t->ak_pub, t->ak_pub_len, &ak)) {
        st = refuse(err, n, "the enrolled AK", veil_cl_why_last());
        goto out;
    }
    if (veil_tpm_pub_parse(c->engine, pub, pub_len, &kem) != VEIL_OK) {
        st = refuse(err, n, "the KEM key's public area", veil_cl_why_last());
        goto out;
    }
    if (kem.type != TPM_ALG_ECC || (kem.attributes & KEM_ATTRS) != KEM_ATTRS ||
        (kem.attributes & (VEIL_TPMA_RESTRICTED | VEIL_TPMA_SIGN))) {
        st = refuse(err, n, "the KEM key's public area",
                    "not an ECC P-256 key with decrypt, fixedTPM and "
                    "fixedParent, neither restricted nor sign");
        goto out;
    }
    memcpy(spki, p256_spki_prefix, sizeof p256_spki_prefix);
    memcpy(spki + sizeof p256_spki_prefix, kc->pk, 65);
    veil_cl_sha256(spki, sizeof spki, sha);
    if (kc->pk_len != 65 || !veil_cl_same(sha, kem.spki_sha256, 32)) {
        st = refuse(err, n, "the KEM key's public area",
                    "its point is not the key configuration's public key");
        goto out;
    }
    veil_ev_kem_certify_qualifying(kc->key_id, kc->pk, kc->pk_len, q);
    if (veil_tpm_check_certify(c->engine, &ak, attest, attest_len, sig, sig_len,
                               q, &kem, KEM_ATTRS) != VEIL_OK) {
        st = refuse(err, n, "TPM2_Certify by the enrolled AK",
                    veil_cl_why_last());
        goto out;
    }
    veil_logf(&c->log, VEIL_LOG_INFO,
              "v2: KEM key %u is a TPM object certified by the enrolled AK "
              "(ECC P-256, decrypt, fixedTPM, fixedParent, not restricted)",
              n);
out:
    veil_tpm_pub_clear(&ak);
    veil_tpm_pub_clear(&kem);
    free(attest);
    free(sig);
    free(pub);
    return st;
}

veil_client_status veil_cl_v2_kem_check(veil_client *c, const char *url,
                                        const veil_ohttp_keyconfig *kc,
                                        veil_client_error *err)
{
    char full[2048], detail[256];
    veil_cl_http_response r;
    veil_client_status st;
    cJSON *o;

    /* required where enrolment found the KEM keys in the TPM; elsewhere
     * the key rests on the configuration's signature and the quote's
     * binding (docs/PROTOCOL-V2.md 4.4) */
    if (c->trust == NULL || strcmp(url, veil_trust_url(c->trust)) != 0 ||
        !c->trust->kem_tpm)
        return VEIL_CLIENT_OK;
    snprintf(full, sizeof full, "%s/v2/keys/certify?key_id=%u", url,
             (unsigned)kc->key_id);
    st = veil_cl_transport_send(c->tx, full, NULL, NULL, 0, CERT_MAX_BODY, &r,
                                err);
    if (st != VEIL_CLIENT_OK)
        return st;
    if (r.status != 200) {
        veil_cl_error_detail(r.body, r.len, detail, sizeof detail);
        free(r.body);
        snprintf(
            full, sizeof full,
            "the gateway offers no TPM certification of it (HTTP %ld%s%s), "
            "though it was enrolled with its KEM keys in the TPM "
            "(re-enrol with 'veil attest enroll' if that changed)",
            r.status, detail[0] ? ": " : "", detail);
        return refuse_status(err, (int)r.status, kc->key_id, "certification",
                             full);
    }
    o = cJSON_ParseWithLength(r.body ? r.body : "", r.len);
    free(r.body);
    st = cJSON_IsObject(o) ? check_answer(c, o, kc, err)
                           : refuse(err, kc->key_id, "certification",
                                    "the answer is not a JSON object");
    cJSON_Delete(o);
    return st;
}
