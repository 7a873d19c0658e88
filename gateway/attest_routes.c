/* gateway/attest_routes.c: the attestation routes (docs/ATTESTATION.md),
 * answer signatures (made for v1.c and v2.c, kept in the signature store)
 * and the signature store's route:
 *   GET  /v1/attestation/report?nonce=HEX
 *   POST /v1/attestation/activate
 *   GET  /v1/signatures/ID */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "evidence.h"
#include "routes.h"

/* The report's fixed members: the nonce and both keys.  NULL: no
 * memory. */
static cJSON *report_head(gw_server *s, const char *hex)
{
    cJSON *j = cJSON_CreateObject();

    if (!j ||
        !cJSON_AddStringToObject(j, "format", "veil-attestation-report-v1") ||
        !cJSON_AddStringToObject(j, "nonce", hex) ||
        !cJSON_AddStringToObject(j, "encryption_key_spki_b64",
                                 s->enc_spki_b64) ||
        !cJSON_AddStringToObject(j, "encryption_key_sha256", s->enc_hex) ||
        !(s->sign_spki_b64
              ? cJSON_AddStringToObject(j, "signing_key_spki_b64",
                                        s->sign_spki_b64)
              : cJSON_AddNullToObject(j, "signing_key_spki_b64")) ||
        !cJSON_AddStringToObject(j, "signing_key_sha256", s->sign_hex) ||
        /* where protocol v2's KEM keys are made ("tpm": certified by the
         * AK, GET /v2/keys/certify); null: v2 is off.  A verifier records
         * it at enrolment (docs/ATTESTATION.md). */
        !(s->d.kem ? cJSON_AddStringToObject(j, "kem_keys",
                                             gw_kem_where(s->d.kem))
                   : cJSON_AddNullToObject(j, "kem_keys"))) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

/* GET /v1/attestation/report?nonce=HEX: a quote over the nonce and both
 * keys, with what a verifier needs to enrol this gateway. */
void gw_attest_report(void *app, svc_req *r)
{
    gw_server *s = app;
    const char *hex = svc_query(r, "nonce");
    size_t n = hex ? strlen(hex) : 0;
    uint8_t nonce[VEIL_EV_NONCE_MAX], qualifying[32];
    char why[320];
    unsigned retry = 0;
    gw_tpm_turn turn;
    gw_rc rc;
    cJSON *j;

    if (n % 2 || n < 2 * VEIL_EV_NONCE_MIN || n > 2 * VEIL_EV_NONCE_MAX ||
        !veil_hex_decode(hex, n / 2, nonce)) {
        gw_respond(s, r, GW_REFUSED,
                   "nonce must be %d to %d random bytes in hex (%d to %d "
                   "digits): ?nonce=HEX",
                   VEIL_EV_NONCE_MIN, VEIL_EV_NONCE_MAX, 2 * VEIL_EV_NONCE_MIN,
                   2 * VEIL_EV_NONCE_MAX);
        return;
    }
    veil_ev_report_qualifying(nonce, n / 2, s->d.encryption_key_sha256,
                              s->d.signing_key_sha256, qualifying);
    if ((j = report_head(s, hex)) == NULL) {
        gw_respond(s, r, GW_INTERNAL, "out of memory");
        return;
    }
    /* without a TPM: the permanent 503, no Retry-After */
    if ((rc = gw_tpm_turn_take(s, r, &turn, &retry, why, sizeof why)) !=
        GW_OK) {
        cJSON_Delete(j);
        gw_respond_retry(s, r, rc, retry, "%s", why);
        return;
    }
    double t0 = svc_now();
    int failed = gw_tpm_report(s->d.tpm, qualifying, j, why, sizeof why);
    gw_metrics_quote(s->d.metrics, "report", failed == 0, svc_now() - t0);
    gw_tpm_turn_give(s, r, &turn, why, sizeof why); /* it held no slot */
    if (failed) {
        cJSON_Delete(j);
        veil_logf(&s->log, VEIL_LOG_ERROR, "attestation report failed: %s",
                  why);
        gw_respond(s, r, GW_UNAVAILABLE, "no attestation report: %s", why);
        return;
    }
    svc_json(r, 200, j);
}

/* A member of o holding standard base64: decoded into *out (malloc'd,
 * at least one byte).  0 when absent, empty or not base64. */
static int b64_member(const cJSON *o, const char *name, uint8_t **out,
                      size_t *len)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);

    *out = NULL;
    if (!cJSON_IsString(v) || v->valuestring[0] == '\0')
        return 0;
    if (veil_b64_decode(v->valuestring, strlen(v->valuestring), out, len) !=
        VEIL_OK) {
        *out = NULL;
        return 0;
    }
    return *len > 0;
}

/* TPM2_ActivateCredential of the credential in the body: the recovered
 * secret to *secret_len bytes of secret, or the reason in why. */
static gw_rc activate(gw_server *s, svc_req *r, uint8_t secret[64],
                      size_t *secret_len, unsigned *retry_s, char *why,
                      size_t why_size)
{
    size_t len;
    const char *body = svc_body(r, &len);
    cJSON *in = len ? cJSON_ParseWithLength(body, len) : NULL;
    uint8_t *blob = NULL, *enc = NULL;
    size_t blob_len = 0, enc_len = 0;
    char err[320];
    gw_rc rc = GW_OK;
    gw_rc t = GW_OK;
    gw_tpm_turn turn = {0};

    if (!cJSON_IsObject(in) ||
        !b64_member(in, "credential_blob_b64", &blob, &blob_len) ||
        !b64_member(in, "encrypted_secret_b64", &enc, &enc_len)) {
        snprintf(why, why_size,
                 "the body must be a JSON object with credential_blob_b64 "
                 "and encrypted_secret_b64 in standard base64");
        rc = GW_REFUSED;
    } else if ((rc = gw_tpm_turn_take(s, r, &turn, retry_s, why, why_size)) !=
               GW_OK) {
        /* busy (Retry-After), or no TPM (the permanent 503) */
    } else if ((t = gw_tpm_activate(s->d.tpm, blob, blob_len, enc, enc_len,
                                    secret, secret_len, err, sizeof err)) ==
               GW_REFUSED) {
        snprintf(why, why_size, "the TPM refused the credential");
        rc = GW_REFUSED;
    } else if (t != GW_OK) {
        veil_logf(&s->log, VEIL_LOG_ERROR, "credential activation failed: %s",
                  err);
        snprintf(why, why_size, "the credential could not be activated: %s",
                 err);
        rc = GW_UNAVAILABLE;
    }
    gw_tpm_turn_give(s, r, &turn, err, sizeof err); /* it held no slot */
    free(blob);
    free(enc);
    cJSON_Delete(in);
    return rc;
}

/* POST /v1/attestation/activate: TPM2_ActivateCredential of a credential
 * the verifier made for the long-term AK under the EK. */
void gw_attest_activate(void *app, svc_req *r)
{
    gw_server *s = app;
    uint8_t secret[64];
    size_t secret_len = 0;
    char why[512], *b64 = NULL;
    unsigned retry = 0;
    cJSON *j = NULL;
    gw_rc rc = activate(s, r, secret, &secret_len, &retry, why, sizeof why);

    if (rc != GW_OK) {
        gw_respond_retry(s, r, rc, retry, "%s", why);
    } else if ((b64 = veil_b64_encode(secret, secret_len)) == NULL ||
               (j = cJSON_CreateObject()) == NULL ||
               !cJSON_AddStringToObject(j, "secret_b64", b64)) {
        cJSON_Delete(j);
        gw_respond(s, r, GW_INTERNAL, "out of memory");
    } else {
        svc_json(r, 200, j);
    }
    free(b64);
    veil_wipe(secret, sizeof secret);
}

/* Keeps the signature for GET /v1/signatures/ID: losing it costs only the
 * later lookup, so a failure here is logged and the answer still goes. */
static void keep_signature(gw_server *s, const char *id, const char *key,
                           const char *tier, const uint8_t request_sha256[32],
                           const uint8_t response_sha256[32],
                           const uint8_t *owner, long long signed_at,
                           const char *sig_b64, const char *statement)
{
    char req_hex[65], resp_hex[65];
    char *body = NULL;
    cJSON *j = cJSON_CreateObject();

    veil_hex(request_sha256, 32, req_hex);
    veil_hex(response_sha256, 32, resp_hex);
    if (j && cJSON_AddStringToObject(j, "format", "veil-signature-v1") &&
        cJSON_AddStringToObject(j, "payload_id", id) &&
        cJSON_AddStringToObject(j, "security_tier", tier) &&
        cJSON_AddStringToObject(j, "request_sha256", req_hex) &&
        cJSON_AddStringToObject(j, "response_sha256", resp_hex) &&
        cJSON_AddStringToObject(j, "signing_key_sha256", s->sign_hex) &&
        cJSON_AddNumberToObject(j, "signed_at", (double)signed_at) &&
        cJSON_AddStringToObject(j, "signature_b64", sig_b64) &&
        cJSON_AddStringToObject(j, "statement", statement))
        body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (body == NULL ||
        gw_signlog_put(s->d.signlog, key, body, owner, time(NULL)))
        veil_logf(&s->log, VEIL_LOG_WARN,
                  "the signature of %s could not be kept for /v1/signatures",
                  id);
    free(body);
}

gw_rc gw_answer_sign(gw_server *s, const char *id, const char *key,
                     const char *tier, const uint8_t request_sha256[32],
                     const uint8_t response_sha256[32], const uint8_t *owner,
                     gw_answer_sig *sig)
{
    uint8_t der[VEIL_ECDSA_SIG_MAX];
    size_t der_len = sizeof der, st_len;
    char statement[VEIL_EV_STATEMENT_MAX];
    long long signed_at = (long long)time(NULL);

    sig->sig_b64 = NULL;
    if (s->d.signing_key == NULL)
        return GW_OK;
    st_len = veil_ev_statement(id, tier, request_sha256, response_sha256,
                               s->d.signing_key_sha256, signed_at, statement,
                               sizeof statement);
    if (st_len == 0) {
        veil_logf(&s->log, VEIL_LOG_ERROR,
                  "signing the answer to %s: no statement", id);
        return GW_INTERNAL;
    }
    if (veil_ecdsa_sign(s->d.engine, s->d.signing_key,
                        (const uint8_t *)statement, st_len, der,
                        &der_len) != VEIL_OK) {
        veil_logf(&s->log, VEIL_LOG_ERROR,
                  "signing the answer to %s failed: %s", id,
                  veil_last_error()->message);
        return GW_INTERNAL;
    }
    if ((sig->sig_b64 = veil_b64_encode(der, der_len)) == NULL) {
        veil_logf(&s->log, VEIL_LOG_ERROR,
                  "signing the answer to %s: out of memory", id);
        return GW_INTERNAL;
    }
    snprintf(sig->signed_at, sizeof sig->signed_at, "%lld", signed_at);
    keep_signature(s, id, key, tier, request_sha256, response_sha256, owner,
                   signed_at, sig->sig_b64, statement);
    return GW_OK;
}

gw_rc gw_signature_find(gw_server *s, const gw_auth *auth, const char *id,
                        const uint8_t caller[32], char **body, char *why,
                        size_t why_size)
{
    char key[PID_MAX + 1];
    /* with API keys, an entry is its requester's (or an operator's) */
    const uint8_t *who =
        auth && !gw_auth_is_operator(auth, caller) ? caller : NULL;

    *body = NULL;
    if (!gw_payload_id_canonical(id, key)) {
        snprintf(why, why_size,
                 "the path must end in a payload ID (1 to %d printable "
                 "ASCII characters, no space)",
                 PID_MAX);
        return GW_REFUSED;
    }
    if (s->d.signlog == NULL) {
        snprintf(why, why_size,
                 "this gateway does not sign answers (no signing_key)");
        return GW_NOT_FOUND;
    }
    if ((*body = gw_signlog_get(s->d.signlog, key, who, time(NULL))) == NULL) {
        snprintf(why, why_size,
                 "no signature is kept for payload ID %s (unknown, or "
                 "older than signature_retention)",
                 id);
        return GW_NOT_FOUND;
    }
    return GW_OK;
}

/* GET /v1/signatures/ID: the signature of an answer, while it is kept,
 * for the API key that made the request or an operator key. */
void gw_signature_get(void *app, svc_req *r)
{
    gw_server *s = app;
    char why[512], *body = NULL;
    gw_rc rc = gw_signature_find(s, gw_req_live(s, r)->auth, svc_tail(r),
                                 svc_client_id(r), &body, why, sizeof why);

    if (rc != GW_OK) {
        gw_respond(s, r, rc, "%s", why);
        return;
    }
    svc_text(r, 200, "application/json", body, strlen(body));
    free(body);
}
