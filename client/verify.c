/* Verifying answers (docs/ATTESTATION.md): one answer as the client
 * receives it (veil_cl_verify_answer, for client.c), and saved evidence
 * offline (veil_verify_evidence).
 *
 * Every check is reported through a veil_check_fn as it is made; the
 * first one that fails decides the error.  Uses trust.c, tpmobj.c and
 * client_int.h; never calls client.c. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "package.h"
#include "tier.h"
#include "verify.h"

#define EVIDENCE_FORMAT "veil-evidence-v1"
/* What to do when the gateway's AK is not the enrolled one. */
#define AK_ROTATED                                                             \
    "if its operator rotated the AK, 'veil attest update --trust FILE' "       \
    "follows the certified hand-over, else re-enrol"
#define QUOTE_FORMAT "veil-tpm2-quote-v1"
/* An evidence file holds two packages of up to a 10 MiB plaintext each,
 * in base64. */
#define MAX_EVIDENCE (64u << 20)

/* ---- verifying one answer ------------------------------------------------ */

/* One answer as a verifier knows it, from the client or from evidence. */
typedef struct answer_in {
    const char *payload_id;
    const char *tier;
    uint8_t req_sha[32], resp_sha[32];
    const char *sig_b64; /* NULL: none */
    int has_signed_at;
    long long signed_at;
    int has_signing_key;
    uint8_t signing_key[32];   /* what the answer says signed it */
    const cJSON *tpm;          /* tpm_attestation, or NULL */
    const char *model;         /* the model asked for, or NULL (evidence) */
    const uint8_t *server_sha; /* without a trust file: the key used */
    int kem_key;               /* v2: server_sha is the KEM key, always */
    int allow_foreign;         /* without a trust file: see veil_cl_answer */
    int signature_checked;     /* verified before the answer was opened */
} answer_in;

static int check_signature(veil_engine *e, const veil_trust *t,
                           const answer_in *a, veil_cl_checker *ck)
{
    char hx[65];
    veil_hex(t->sign_sha, 32, hx);
    if (!a->has_signing_key)
        return veil_cl_check(
            ck, "signing key", 0,
            "the answer names no signing key (X-Veil-Signing-Key); "
            "the enrolled one is sha256:%s",
            hx);
    if (!veil_cl_same(a->signing_key, t->sign_sha, 32)) {
        char got[65];
        veil_hex(a->signing_key, 32, got);
        return veil_cl_check(
            ck, "signing key", 0,
            "signed by sha256:%s, not by the enrolled sha256:%s", got, hx);
    }
    veil_cl_check(ck, "signing key", 1, "the enrolled key sha256:%s", hx);

    const char *name = "answer signature";
    if (a->sig_b64 == NULL || !a->has_signed_at)
        return veil_cl_check(
            ck, name, 0,
            "the answer carries no signature (X-Veil-Signature, "
            "X-Veil-Signed-At)");
    char stmt[VEIL_EV_STATEMENT_MAX];
    size_t n =
        veil_ev_statement(a->payload_id, a->tier, a->req_sha, a->resp_sha,
                          t->sign_sha, a->signed_at, stmt, sizeof stmt);
    if (n == 0)
        return veil_cl_check(ck, name, 0, "the statement cannot be built: %s",
                             veil_cl_why_last());
    uint8_t *sig = NULL;
    size_t sig_len = 0;
    veil_key *k = NULL;
    int ok = 0;
    if (veil_b64_decode(a->sig_b64, strlen(a->sig_b64), &sig, &sig_len) !=
        VEIL_OK)
        veil_cl_check(ck, name, 0, "the signature is not base64");
    else if (veil_key_from_public(e, t->sign_spki, t->sign_spki_len, &k) !=
             VEIL_OK)
        veil_cl_check(ck, name, 0, "the enrolled signing key: %s",
                      veil_cl_why_last());
    else if (veil_ecdsa_verify(e, k, (const uint8_t *)stmt, n, sig, sig_len) !=
             VEIL_OK)
        veil_cl_check(ck, name, 0,
                      "ECDSA P-256 does not verify over this payload ID, tier, "
                      "request and response under the enrolled key");
    else
        ok = veil_cl_check(ck, name, 1,
                           "ECDSA P-256 over payload %s, tier %s, request and "
                           "response hashes, signed at %lld",
                           a->payload_id, a->tier, a->signed_at);
    veil_key_free(k);
    free(sig);
    return ok;
}

/* check_quote, step 1: the key that signed the quote.  Without a trust
 * file, the AK the answer names; with one, the enrolled AK or a
 * per-request AK it certified for this request.  NULL (the check
 * reported) when there is none to trust.  enrolled and reported are the
 * caller's to clear. */
static const veil_tpm_pub *
quote_signer(veil_engine *e, const veil_trust *t, const veil_cl_quote *q,
             const uint8_t qual[32], veil_tpm_pub *enrolled,
             veil_tpm_pub *reported, veil_cl_checker *ck)
{
    const char *name = "attestation key";
    if (!veil_cl_tpm_pub(e, q->ak, q->ak_len, reported)) {
        veil_cl_check(ck, name, 0, "aik_pubkey_b64: %s", veil_cl_why_last());
        return NULL;
    }
    if (q->has_name &&
        !veil_cl_same(q->ak_name, reported->name, VEIL_CL_NAME_LEN)) {
        veil_cl_check(ck, name, 0,
                      "\"aik_name\" is not the name of aik_pubkey_b64");
        return NULL;
    }
    if (t == NULL) {
        veil_cl_check(ck, name, 1,
                      "the key the answer names; not enrolled, so not known "
                      "to be a TPM's");
        return reported;
    }
    if (!veil_cl_tpm_pub(e, t->ak_pub, t->ak_pub_len, enrolled)) {
        veil_cl_check(ck, name, 0, "the enrolled AK: %s", veil_cl_why_last());
        return NULL;
    }
    if (q->has_aikc) {
        if (veil_tpm_check_certify(
                e, enrolled, q->aikc_attest, q->aikc_attest_len, q->aikc_sig,
                q->aikc_sig_len, qual, reported, VEIL_CL_AK_ATTRS) != VEIL_OK) {
            veil_cl_check(ck, "attestation key certification", 0,
                          "%s; " AK_ROTATED, veil_cl_why_last());
            return NULL;
        }
        veil_cl_check(ck, "attestation key certification", 1,
                      "the per-request AK (fixedTPM, fixedParent, "
                      "sensitiveDataOrigin, restricted, sign) certified by "
                      "the enrolled AK for this request");
        return reported;
    }
    if (!veil_cl_same(reported->name, t->ak_name, VEIL_CL_NAME_LEN)) {
        veil_cl_check(
            ck, name, 0,
            "the quote's AK is not the enrolled one, and no "
            "certification by it (aik_certify) came with it; " AK_ROTATED);
        return NULL;
    }
    veil_cl_check(ck, name, 1, "the enrolled AK");
    return enrolled;
}

/* The PCR selection of a quote, as enrolled. */
static int pcr_selection_check(const veil_trust *t, const veil_cl_quote *q,
                               veil_cl_checker *ck)
{
    char want[96], got[96];
    veil_pcr_sel_format(&t->sel, want, sizeof want);
    veil_pcr_sel_format(&q->sel, got, sizeof got);
    if (q->sel.n != t->sel.n ||
        memcmp(q->sel.index, t->sel.index, q->sel.n * sizeof q->sel.index[0]))
        return veil_cl_check(ck, "PCR selection", 0, "%s, not the enrolled %s",
                             got, want);
    return 1;
}

/* The PCR values of a verified quote, as enrolled. */
static int pcr_values_check(const veil_trust *t, const veil_cl_quote *q,
                            veil_cl_checker *ck)
{
    char bad[128] = "";
    size_t n = 0;
    for (unsigned i = 0; i < q->sel.n; i++)
        if (!veil_cl_same(q->values[i], t->golden[i], 32) && n < sizeof bad - 8)
            n += (size_t)snprintf(bad + n, sizeof bad - n, "%s%u",
                                  n ? ", " : "", q->sel.index[i]);
    if (n)
        return veil_cl_check(ck, "PCR values", 0,
                             "PCR %s %s from the enrolled values", bad,
                             strchr(bad, ',') ? "differ" : "differs");
    return veil_cl_check(ck, "PCR values", 1, "as enrolled");
}

/* The backend statement of a quote (docs/ATTESTATION.md): present, in
 * canonical form, its transport and location as its upstream says, and
 * for the model the request named.  Its hash goes into *sha for the
 * qualifying data; *b is what the "backend" check shows once the quote
 * verified. */
static int backend_statement(const cJSON *o, const answer_in *a,
                             veil_backend_info *b, uint8_t sha[32],
                             veil_cl_checker *ck)
{
    const char *name = "backend statement";
    const char *text = veil_cl_json_str(o, "backend_statement");
    if (text == NULL)
        return veil_cl_check(ck, name, 0,
                             "the quote does not state where the plaintext "
                             "goes (no backend_statement): a gateway before "
                             "the backend binding, or one that hides it");
    if (veil_backend_parse(text, strlen(text), b) != VEIL_OK)
        return veil_cl_check(ck, name, 0, "%s", veil_cl_why_last());
    if (a->model != NULL && strcmp(a->model, b->model) != 0)
        return veil_cl_check(ck, name, 0,
                             "the statement is for model '%.200s', the "
                             "request named '%.200s'",
                             b->model, a->model);
    veil_cl_sha256(text, strlen(text), sha);
    return 1;
}

/* The quote of a maximum answer.  With a trust file: signed by the
 * enrolled AK (or a per-request AK it certified), qualifying data over
 * this request and the enrolled keys, PCRs as enrolled.  Without one:
 * signed by the AK the answer names, over this request and the key it
 * was sealed to; whether that AK is a TPM's is not known.  Over protocol
 * v2 the encryption key is the KEM key the request went to, with or
 * without a trust file (PROTOCOL-V2.md 8). */
static int check_quote(veil_engine *e, const veil_trust *t, const answer_in *a,
                       veil_cl_checker *ck)
{
    const cJSON *o = a->tpm;
    const char *name = "TPM attestation";
    if (!cJSON_IsObject(o) ||
        !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "is_available")))
        return veil_cl_check(ck, name, 0,
                             "the maximum answer carries no TPM quote");
    const char *format = veil_cl_json_str(o, "format");
    if (format == NULL || strcmp(format, QUOTE_FORMAT) != 0)
        return veil_cl_check(ck, name, 0, "format is not \"" QUOTE_FORMAT "\"");
    veil_cl_quote q;
    char why[256];
    if (!veil_cl_quote_decode(o, 1, &q, why, sizeof why)) {
        veil_cl_quote_free(&q);
        return veil_cl_check(ck, name, 0, "%s", why);
    }
    veil_cl_check(
        ck, name, 1, "%s, %s",
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "software_tpm"))
            ? "from a software TPM"
            : "from a TPM",
        q.has_aikc ? "per-request attestation key" : "long-term key");

    uint8_t zero[32] = {0}, qual[32], backend_sha[32];
    const uint8_t *enc = t && !a->kem_key ? t->enc_sha : a->server_sha;
    const uint8_t *sign = t                    ? t->sign_sha
                          : a->has_signing_key ? a->signing_key
                                               : zero;
    veil_backend_info backend;
    if (!backend_statement(o, a, &backend, backend_sha, ck)) {
        veil_cl_quote_free(&q);
        return 0;
    }
    veil_ev_answer_qualifying(a->payload_id, a->req_sha, enc, sign, backend_sha,
                              qual);

    veil_tpm_pub enrolled = {0}, reported = {0};
    const veil_tpm_pub *signer =
        quote_signer(e, t, &q, qual, &enrolled, &reported, ck);
    int ok = 0;
    if (signer == NULL || (t != NULL && !pcr_selection_check(t, &q, ck)))
        goto out;
    if (veil_tpm_check_quote(e, signer, q.quote, q.quote_len, q.sig, q.sig_len,
                             qual, &q.sel,
                             (const uint8_t(*)[32])q.values) != VEIL_OK) {
        const char *failed = veil_cl_why_last();
        veil_cl_check(ck, "quote", 0, "%s%s", failed,
                      strstr(failed, "qualifying data")
                          ? " (it covers the payload ID, this request, the "
                            "keys and the backend statement: one of them is "
                            "not what the TPM quoted)"
                          : "");
        goto out;
    }
    veil_cl_check(ck, "quote", 1,
                  "signature, qualifying data (payload %s, this request, %s, "
                  "backend statement) and PCR digest",
                  a->payload_id,
                  a->kem_key ? (t ? "the KEM key and the enrolled signing key"
                                  : "the KEM key and the signing key")
                  : t        ? "the enrolled keys"
                             : "the server's keys");
    if ((t != NULL && !pcr_values_check(t, &q, ck)) ||
        (q.has_kc && !veil_cl_key_certify_check(e, signer, &q, enc, qual, ck)))
        goto out;
    /* where the plaintext went, once everything it rests on held */
    char where[VEIL_BACKEND_STATEMENT_MAX + 256];
    veil_backend_describe(&backend, where, sizeof where);
    ok = veil_cl_check(ck, "backend", 1, "%s", where);
out:
    veil_tpm_pub_clear(&enrolled);
    veil_tpm_pub_clear(&reported);
    veil_cl_quote_free(&q);
    return ok;
}

/* The checks an answer gets; 1 when they all passed.  *quote_checked is
 * set when a quote was verified. */
static int verify_core(veil_engine *e, const veil_trust *t, const answer_in *a,
                       veil_cl_checker *ck, int *quote_checked)
{
    int maximum = veil_tier_parse(a->tier) == VEIL_TIER_MAXIMUM;
    *quote_checked = 0;
    if (t != NULL && !a->signature_checked && !check_signature(e, t, a, ck))
        return 0;
    if (!maximum)
        return 1;
    if (t == NULL) {
        /* Without enrolment, only a veil quote can be checked at all: a
         * maximum answer with no attestation is refused (the tier asked
         * for one), and so is one in another shape ({"is_available":
         * true} alone would do) unless the caller allows foreign
         * attestations (and warns). */
        const char *format = veil_cl_json_str(a->tpm, "format");
        if (!cJSON_IsTrue(
                cJSON_GetObjectItemCaseSensitive(a->tpm, "is_available")))
            return veil_cl_check(
                ck, "quote", 0,
                "the maximum answer carries no TPM attestation");
        if (format == NULL || strcmp(format, QUOTE_FORMAT) != 0) {
            if (a->allow_foreign)
                return veil_cl_check(
                    ck, "TPM attestation", 1,
                    "in another format than veil's, not checked "
                    "(foreign attestations are allowed)");
            return veil_cl_check(ck, "TPM attestation", 0,
                                 "not a veil TPM quote (format \"" QUOTE_FORMAT
                                 "\"); another format cannot be checked and is "
                                 "accepted only when foreign attestations are "
                                 "allowed");
        }
    }
    if (!check_quote(e, t, a, ck))
        return 0;
    *quote_checked = 1;
    return 1;
}

/* The evidence of an answer (veil-evidence-v1, docs/ATTESTATION.md). */
static char *evidence_json(const char *url, const answer_in *a, const char *req,
                           size_t req_len, const char *resp, size_t resp_len)
{
    char rq[65], rs[65], sk[65];
    cJSON *j = cJSON_CreateObject();
    char *text = NULL;
    /* The packages travel as JSON strings: a NUL could not. */
    if (j == NULL || memchr(req, 0, req_len) || memchr(resp, 0, resp_len))
        goto out;
    veil_hex(a->req_sha, 32, rq);
    veil_hex(a->resp_sha, 32, rs);
    veil_hex(a->signing_key, 32, sk);
    cJSON *tpm = cJSON_IsObject(a->tpm) ? cJSON_Duplicate(a->tpm, 1)
                                        : cJSON_CreateNull();
    if (tpm == NULL || !cJSON_AddItemToObject(j, "tpm_attestation", tpm)) {
        cJSON_Delete(tpm);
        goto out;
    }
    if (!cJSON_AddStringToObject(j, "format", EVIDENCE_FORMAT) ||
        !cJSON_AddStringToObject(j, "url", url) ||
        !cJSON_AddStringToObject(j, "payload_id", a->payload_id) ||
        !cJSON_AddStringToObject(j, "security_tier", a->tier) ||
        !cJSON_AddStringToObject(j, "request_package", req) ||
        !cJSON_AddStringToObject(j, "response_package", resp) ||
        !cJSON_AddStringToObject(j, "request_sha256", rq) ||
        !cJSON_AddStringToObject(j, "response_sha256", rs) ||
        !(a->sig_b64 ? cJSON_AddStringToObject(j, "signature_b64", a->sig_b64)
                     : cJSON_AddNullToObject(j, "signature_b64")) ||
        !(a->has_signed_at
              ? cJSON_AddNumberToObject(j, "signed_at", (double)a->signed_at)
              : cJSON_AddNullToObject(j, "signed_at")) ||
        !(a->has_signing_key
              ? cJSON_AddStringToObject(j, "signing_key_sha256", sk)
              : cJSON_AddNullToObject(j, "signing_key_sha256")))
        goto out;
    /* The documented order puts tpm_attestation last. */
    cJSON_DetachItemViaPointer(j, tpm);
    cJSON_AddItemToObject(j, "tpm_attestation", tpm);
    text = cJSON_Print(j);
out:
    cJSON_Delete(j);
    return text;
}

/* Reads the three signature headers into a. */
static int answer_headers(const veil_cl_http_response *r, answer_in *a,
                          veil_cl_checker *ck)
{
    if (r->veil_headers_bad)
        return veil_cl_check(ck, "signature headers", 0,
                             "an X-Veil-* header came twice or is too long");
    if (r->veil_signature[0])
        a->sig_b64 = r->veil_signature;
    if (r->veil_signed_at[0]) {
        char *end;
        errno = 0;
        long long v = strtoll(r->veil_signed_at, &end, 10);
        if (*end || errno || v < 0 || r->veil_signed_at[0] == '-')
            return veil_cl_check(ck, "signature headers", 0,
                                 "X-Veil-Signed-At is not Unix seconds");
        a->signed_at = v;
        a->has_signed_at = 1;
    }
    if (r->veil_signing_key[0]) {
        const char *s = r->veil_signing_key;
        if (strncmp(s, "sha256:", 7) != 0 || strlen(s + 7) != 64 ||
            !veil_hex_decode(s + 7, 32, a->signing_key))
            return veil_cl_check(ck, "signature headers", 0,
                                 "X-Veil-Signing-Key is not sha256:<64 hex>");
        a->has_signing_key = 1;
    }
    return 1;
}

/* What the client saw of an answer, as a verifier takes it. */
static answer_in answer_of(const veil_cl_answer *in)
{
    const veil_cl_http_response *r = in->response;
    answer_in a = {
        .payload_id = in->payload_id,
        .tier = in->tier,
        .tpm = in->tpm_attestation,
        .model = in->model,
        .server_sha = in->server_key_sha256,
        .kem_key = in->kem_key,
        .allow_foreign = in->allow_foreign,
        .signature_checked = in->signature_checked,
    };
    veil_cl_sha256(in->request, in->request_len, a.req_sha);
    veil_cl_sha256(r->body ? r->body : "", r->body ? r->len : 0, a.resp_sha);
    return a;
}

veil_client_status veil_cl_verify_signature(veil_engine *e, const veil_trust *t,
                                            veil_cl_answer *in,
                                            veil_check_fn on_check, void *ctx,
                                            veil_client_error *err)
{
    veil_cl_checker ck = {.fn = on_check, .ctx = ctx};
    answer_in a;

    if (t == NULL)
        return VEIL_CLIENT_OK;
    a = answer_of(in);
    if (!answer_headers(in->response, &a, &ck) ||
        !check_signature(e, t, &a, &ck))
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_VERIFY,
                            "%s (%s)", VEIL_CLIENT_SECURITY_MESSAGE, ck.failed);
    in->signature_checked = 1;
    return VEIL_CLIENT_OK;
}

veil_client_status veil_cl_verify_answer(veil_engine *e, const veil_trust *t,
                                         veil_cl_answer *in,
                                         veil_check_fn on_check, void *ctx,
                                         char **evidence,
                                         veil_client_error *err)
{
    veil_cl_checker ck = {.fn = on_check, .ctx = ctx};
    const veil_cl_http_response *r = in->response;
    answer_in a = answer_of(in);
    int ok = 1;
    in->quote_checked = 0;
    if (t != NULL || evidence != NULL ||
        veil_tier_parse(in->tier) == VEIL_TIER_MAXIMUM)
        ok = answer_headers(r, &a, &ck);
    if (ok)
        ok = verify_core(e, t, &a, &ck, &in->quote_checked);
    if (!ok)
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_VERIFY,
                            "%s (%s)", VEIL_CLIENT_SECURITY_MESSAGE, ck.failed);
    if (evidence != NULL &&
        (*evidence = evidence_json(in->url, &a, in->request, in->request_len,
                                   r->body ? r->body : "",
                                   r->body ? r->len : 0)) == NULL)
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_NOMEM,
                            "the evidence of the answer could not be "
                            "recorded");
    return VEIL_CLIENT_OK;
}

/* ---- offline verification ------------------------------------------------ */

static int evidence_parse(const cJSON *j, answer_in *a, const char **url,
                          const char **req, const char **resp,
                          uint8_t rec_req[32], uint8_t rec_resp[32], char *why,
                          size_t why_size)
{
    if (!cJSON_IsObject(j))
        VEIL_CL_REFUSE("not a JSON object");
    const char *format = veil_cl_json_str(j, "format");
    if (format == NULL || strcmp(format, EVIDENCE_FORMAT) != 0)
        VEIL_CL_REFUSE("\"format\" is not \"" EVIDENCE_FORMAT "\"");
    if ((*url = veil_cl_json_str(j, "url")) == NULL)
        VEIL_CL_REFUSE("\"url\" is missing");
    a->payload_id = veil_cl_json_str(j, "payload_id");
    if (a->payload_id == NULL || !veil_payload_id_valid(a->payload_id))
        VEIL_CL_REFUSE(
            "\"payload_id\" is not a payload ID (1 to 128 printable ASCII "
            "characters, no spaces)");
    a->tier = veil_cl_json_str(j, "security_tier");
    if (veil_tier_parse(a->tier) == 0)
        VEIL_CL_REFUSE("\"security_tier\" is not standard, high or maximum");
    if ((*req = veil_cl_json_str(j, "request_package")) == NULL ||
        (*resp = veil_cl_json_str(j, "response_package")) == NULL)
        VEIL_CL_REFUSE(
            "\"request_package\" and \"response_package\" must be strings");
    if (!veil_cl_json_hex(j, "request_sha256", rec_req, 32) ||
        !veil_cl_json_hex(j, "response_sha256", rec_resp, 32))
        VEIL_CL_REFUSE(
            "\"request_sha256\" and \"response_sha256\" must be 64 hex "
            "digits");
    if (!veil_cl_json_null(j, "signature_b64") &&
        (a->sig_b64 = veil_cl_json_str(j, "signature_b64")) == NULL)
        VEIL_CL_REFUSE("\"signature_b64\" is not a string");
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(j, "signed_at");
    if (cJSON_IsNumber(at) && at->valuedouble >= 0 &&
        at->valuedouble < 9.2e18 &&
        at->valuedouble == (double)(long long)at->valuedouble) {
        a->signed_at = (long long)at->valuedouble;
        a->has_signed_at = 1;
    } else if (!veil_cl_json_null(j, "signed_at")) {
        VEIL_CL_REFUSE("\"signed_at\" is not Unix seconds");
    }
    if (!veil_cl_json_null(j, "signing_key_sha256")) {
        if (!veil_cl_json_hex(j, "signing_key_sha256", a->signing_key, 32))
            VEIL_CL_REFUSE("\"signing_key_sha256\" is not 64 hex digits");
        a->has_signing_key = 1;
    }
    const cJSON *tpm = cJSON_GetObjectItemCaseSensitive(j, "tpm_attestation");
    if (tpm != NULL && !cJSON_IsNull(tpm) && !cJSON_IsObject(tpm))
        VEIL_CL_REFUSE("\"tpm_attestation\" is neither an object nor null");
    a->tpm = cJSON_IsObject(tpm) ? tpm : NULL;
    return 1;
}

/* The hash of a package as recorded in the evidence ("request hash",
 * "response hash"). */
static int hash_check(veil_cl_checker *ck, const char *which,
                      const uint8_t got[32], const uint8_t recorded[32])
{
    char name[32], hx[65];
    int same = veil_cl_same(got, recorded, 32);
    snprintf(name, sizeof name, "%s hash", which);
    veil_hex(got, 32, hx);
    return veil_cl_check(ck, name, same, "SHA-256 of the %s package: %s%s",
                         which, hx, same ? "" : ", not as recorded");
}

veil_client_status veil_verify_evidence(veil_engine *engine,
                                        const veil_trust *trust,
                                        const char *evidence_json_text,
                                        size_t len, veil_check_fn on_check,
                                        void *ctx, veil_client_error *err)
{
    veil_cl_checker ck = {.fn = on_check, .ctx = ctx};
    answer_in a = {0};
    const char *url = NULL, *req = NULL, *resp = NULL;
    uint8_t rec_req[32], rec_resp[32];
    char why[320];
    veil_engine *own = NULL;
    if (err)
        memset(err, 0, sizeof *err);
    if (trust == NULL || evidence_json_text == NULL)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "veil_verify_evidence needs a trust file and "
                            "evidence");
    if (len > MAX_EVIDENCE)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "evidence: larger than %u MiB", MAX_EVIDENCE >> 20);
    cJSON *j = cJSON_ParseWithLength(evidence_json_text, len);
    if (j == NULL) {
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "evidence: not JSON");
    }
    if (!evidence_parse(j, &a, &url, &req, &resp, rec_req, rec_resp, why,
                        sizeof why)) {
        cJSON_Delete(j);
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "evidence: %s", why);
    }
    if (engine == NULL) {
        if (veil_engine_new(NULL, &own) != VEIL_OK) {
            cJSON_Delete(j);
            return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_NOMEM,
                                "starting an engine: %.200s",
                                veil_cl_why_last());
        }
        engine = own;
    }

    int ok = 0, quote_checked;
    char *u = veil_cl_url_dup(url);
    char shown[512], shown_trust[512];
    veil_cl_redact_url(url, shown, sizeof shown);
    veil_cl_redact_url(trust->url, shown_trust, sizeof shown_trust);
    if (u == NULL || strcmp(u, trust->url) != 0) {
        veil_cl_check(&ck, "gateway", 0,
                      "the evidence is from %s, the trust file "
                      "for %s",
                      shown, shown_trust);
        goto out;
    }
    veil_cl_check(&ck, "gateway", 1, "%s, as enrolled", shown_trust);
    veil_cl_sha256(req, strlen(req), a.req_sha);
    veil_cl_sha256(resp, strlen(resp), a.resp_sha);
    if (!hash_check(&ck, "request", a.req_sha, rec_req) ||
        !hash_check(&ck, "response", a.resp_sha, rec_resp))
        goto out;
    ok = verify_core(engine, trust, &a, &ck, &quote_checked);
out:
    free(u);
    cJSON_Delete(j);
    veil_engine_free(own);
    if (!ok)
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 0, VEIL_E_VERIFY, "%s",
                            ck.failed);
    return VEIL_CLIENT_OK;
}
