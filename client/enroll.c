/* Enrolment (veil attest enroll, docs/ATTESTATION.md): a gateway's TPM
 * checked from its attestation report (EK, AK, credential activation,
 * quote over a fresh nonce and the gateway's keys) and written into a
 * trust file.
 *
 * Every check is reported through a veil_check_fn as it is made; the
 * first one that fails decides the error.  Uses transport.c, tpmobj.c
 * and client_int.h; never calls client.c. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include "ekcert.h"
#include "pcrpolicy.h"
#include "package.h"
#include "trust.h"
#include "v2_cert.h"

#define SECRET_LEN 32
/* What an endorsement key must be (TPM 2.0 Part 2, TPMA_OBJECT). */
#define EK_ATTRS                                                               \
    (VEIL_TPMA_FIXEDTPM | VEIL_TPMA_FIXEDPARENT |                              \
     VEIL_TPMA_SENSITIVEDATAORIGIN | VEIL_TPMA_RESTRICTED | VEIL_TPMA_DECRYPT)

typedef struct enroll {
    const veil_enroll_options *opt;
    veil_engine *e;
    veil_cl_transport *tx;
    char *url;
    veil_cl_checker ck;
    cJSON *report;
    uint8_t nonce[VEIL_CL_NONCE_LEN];
    veil_tpm_pub ek, ak;
    uint8_t enc_sha[32], sign_sha[32];
    uint8_t *sign_spki;
    size_t sign_spki_len;
    int ek_verified, has_cert;
    uint8_t cert_sha[32];
    veil_cl_ek_attrs ek_attrs; /* what the EK certificate says of the TPM */
    veil_cl_pcr_policy policy; /* the verifier's (pcrpolicy.c) */
    veil_pcr_sel sel;
    uint8_t values[VEIL_EV_MAX_PCRS][32];
} enroll;

/* One HTTP exchange with the gateway (report.c). */
static veil_client_status gw_http(enroll *en, const char *path,
                                  const char *body, veil_cl_http_response *r,
                                  veil_client_error *err)
{
    return veil_cl_gw_call(en->tx, en->url, en->opt->api_key, path, body, r,
                           err);
}

/* The key the gateway serves at /pki/public_key, as its SPKI hash. */
static veil_client_status fetch_encryption_key(enroll *en, uint8_t sha[32],
                                               veil_client_error *err)
{
    veil_cl_http_response r;
    veil_client_status st = gw_http(en, "/pki/public_key", NULL, &r, err);
    if (st != VEIL_CLIENT_OK) {
        veil_cl_check(&en->ck, "encryption key", 0, "GET /pki/public_key: %s",
                      err ? err->detail : "failed");
        return st;
    }
    veil_key *k = NULL;
    veil_key_info info;
    char why[160] = "";
    int ok = r.body != NULL && strstr(r.body, "-----BEGIN PUBLIC KEY-----") &&
             veil_key_from_public(en->e, (const uint8_t *)r.body, r.len, &k) ==
                 VEIL_OK &&
             veil_key_get_info(k, &info) == VEIL_OK &&
             info.type == VEIL_KEY_RSA && info.bits >= 2048 &&
             veil_key_fingerprint(k, sha) == VEIL_OK;
    if (ok && !veil_cl_key_check(k, 0, why, sizeof why)) {
        veil_key_free(k);
        free(r.body);
        veil_cl_check(&en->ck, "encryption key", 0,
                      "/pki/public_key is refused: %s", why);
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_KEY, "%s",
                            en->ck.failed);
    }
    veil_key_free(k);
    free(r.body);
    if (!ok) {
        veil_cl_check(
            &en->ck, "encryption key", 0,
            "/pki/public_key is not an RSA public key of 2048 bits or "
            "more");
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_KEY, "%s",
                            en->ck.failed);
    }
    return VEIL_CLIENT_OK;
}

/* 1 when the SHA-256 of n bytes at p is want. */
static int sha256_is(const uint8_t *p, size_t n, const uint8_t want[32])
{
    uint8_t h[32];
    veil_cl_sha256(p, n, h);
    return veil_cl_same(h, want, 32);
}

/* check_ek, step 1: ek_pubkey_b64 is an RSA endorsement key whose SPKI
 * is ek_spki_b64 (returned in *spki, malloc'd). */
static int ek_public(enroll *en, uint8_t **spki, size_t *spki_len)
{
    const cJSON *rep = en->report;
    const char *name = "EK public key";
    uint8_t *pub = NULL;
    size_t pub_len;
    int ok = 0;
    *spki = NULL;
    if (!veil_cl_json_b64(rep, "ek_pubkey_b64", &pub, &pub_len) ||
        !veil_cl_tpm_pub(en->e, pub, pub_len, &en->ek))
        veil_cl_check(&en->ck, name, 0,
                      "ek_pubkey_b64 is not a TPM public area%s%s",
                      pub ? ": " : "", pub ? veil_cl_why_last() : "");
    else if (en->ek.type != VEIL_CL_TPM_ALG_RSA ||
             (en->ek.attributes & EK_ATTRS) != EK_ATTRS)
        veil_cl_check(&en->ck, name, 0,
                      "not an RSA endorsement key (fixedTPM, fixedParent, "
                      "sensitiveDataOrigin, restricted, decrypt)");
    else if (!veil_cl_json_b64(rep, "ek_spki_b64", spki, spki_len))
        veil_cl_check(&en->ck, name, 0, "ek_spki_b64 is not base64");
    else if (!sha256_is(*spki, *spki_len, en->ek.spki_sha256))
        veil_cl_check(&en->ck, name, 0,
                      "ek_spki_b64 and ek_pubkey_b64 are different keys");
    else
        ok = veil_cl_check(&en->ck, name, 1,
                           "RSA endorsement key, %zu-byte area", pub_len);
    free(pub);
    return ok;
}

/* Step 2: the certificate, when the report has one (*x; en->cert_sha).
 * NV often holds it padded with zeros after the DER, which are allowed;
 * the hash is over the DER alone. */
static int ek_cert(enroll *en, X509 **x)
{
    uint8_t *cert = NULL;
    size_t cert_len = 0;
    const unsigned char *p;
    int ok = 0;
    *x = NULL;
    if (veil_cl_json_null(en->report, "ek_cert_b64"))
        return 1;
    if (!veil_cl_json_b64(en->report, "ek_cert_b64", &cert, &cert_len) ||
        (p = cert, *x = d2i_X509(NULL, &p, (long)cert_len)) == NULL) {
        veil_cl_check(&en->ck, "EK certificate", 0,
                      "ek_cert_b64 is not a DER certificate");
        goto out;
    }
    size_t der_len = (size_t)(p - cert);
    for (size_t i = der_len; i < cert_len; i++)
        if (cert[i] != 0) {
            veil_cl_check(&en->ck, "EK certificate", 0,
                          "bytes other than padding follow the certificate");
            goto out;
        }
    veil_cl_sha256(cert, der_len, en->cert_sha);
    en->has_cert = 1;
    ok = 1;
out:
    free(cert);
    return ok;
}

/* Step 3: the certificate chains to the EK CA given.  Without either,
 * enrolment goes on only when an unverified EK is allowed. */
static int ek_chain(enroll *en, X509 *x)
{
    const char *chain = "EK certificate chain";
    const char *ca = en->opt->ek_ca_file;
    if (!en->has_cert || ca == NULL) {
        int fine = en->opt->allow_unverified_ek;
        veil_cl_check(&en->ck, chain, 0, "%s%s",
                      !en->has_cert ? "the TPM has no EK certificate"
                                    : "not checked: no EK CA given",
                      fine ? "; the EK is recorded as unverified" : "");
        return fine;
    }
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    int vok = 0;
    const char *why = "out of memory";
    if (store && ctx) {
        /* The CA file is the trust anchor the user chose: a vendor's
         * intermediate alone is enough (PARTIAL_CHAIN).  Unknown critical
         * extensions are not ignored: OpenSSL knows the ones EK
         * certificates mark critical (subjectAltName with a directoryName
         * of TPM attributes, keyUsage, basic constraints); the TCG ones it
         * does not know are not critical.  No purpose is set: EK
         * certificates carry the TCG EK purpose (2.23.133.8.1), which
         * OpenSSL does not know. */
        X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN);
        if (X509_STORE_load_file(store, ca) != 1)
            why = "the EK CA file cannot be read as PEM certificates";
        else if (X509_STORE_CTX_init(ctx, store, x, NULL) != 1)
            why = "out of memory";
        else if (X509_verify_cert(ctx) == 1)
            vok = 1;
        else
            why = X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx));
    }
    if (vok) {
        char subj[160] = "", iss[160] = "";
        X509_NAME_oneline(X509_get_subject_name(x), subj, sizeof subj);
        X509_NAME_oneline(X509_get_issuer_name(x), iss, sizeof iss);
        veil_cl_check(&en->ck, chain, 1, "%s issued by %s, chains to %s", subj,
                      iss, ca);
        en->ek_verified = 1;
    } else {
        veil_cl_check(&en->ck, chain, 0, "%s (against %s)", why, ca);
    }
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    return vok;
}

/* Step 4: what the certificate says beyond its chain (ekcert.c): the EK
 * purpose and key usage, no CA powers, and the TPM it names, which must
 * be the manufacturer the gateway reports. */
static int ek_profile(enroll *en, X509 *x)
{
    const cJSON *tpm = cJSON_GetObjectItemCaseSensitive(en->report, "tpm");
    veil_cl_ek_attrs *a = &en->ek_attrs;
    char why[300];

    if (!veil_cl_ek_profile(x, veil_cl_json_str(tpm, "manufacturer"), a, why,
                            sizeof why))
        return veil_cl_check(&en->ck, "EK certificate profile", 0,
                             "refused: %s", why);
    return veil_cl_check(&en->ck, "EK certificate profile", 1,
                         "EK purpose and key usage; TPM manufacturer %s%s, "
                         "model %s, version %s",
                         a->manufacturer,
                         a->vendor_compared ? " (as reported)"
                                            : " (not a TCG vendor ID: not "
                                              "compared)",
                         a->model, a->version);
}

/* The EK: an RSA endorsement key whose SPKI is ek_spki_b64, whose
 * certificate (when the TPM has one) holds that key and chains to the CA
 * given.  Returns 0 on a failure that stops enrolment. */
static int check_ek(enroll *en)
{
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    X509 *x = NULL;
    int ok =
        ek_public(en, &spki, &spki_len) && ek_cert(en, &x) && ek_chain(en, x);
    if (ok && en->has_cert) {
        unsigned char *der = NULL;
        int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &der);
        int match =
            n > 0 && (size_t)n == spki_len && !memcmp(der, spki, spki_len);
        OPENSSL_free(der);
        ok = veil_cl_check(&en->ck, "EK certificate key", match, "%s",
                           match ? "the certificate holds the reported EK"
                                 : "the certificate is for another key than "
                                   "the reported EK");
    }
    if (ok && en->has_cert)
        ok = ek_profile(en, x);
    X509_free(x);
    free(spki);
    return ok;
}

static int check_ak(enroll *en)
{
    uint8_t *pub = NULL, name[VEIL_CL_NAME_LEN];
    size_t len;
    int ok = 0;
    const char *n = "attestation key";
    if (!veil_cl_json_b64(en->report, "aik_pubkey_b64", &pub, &len) ||
        !veil_cl_tpm_pub(en->e, pub, len, &en->ak))
        veil_cl_check(&en->ck, n, 0,
                      "aik_pubkey_b64 is not a TPM public area%s%s",
                      pub ? ": " : "", pub ? veil_cl_why_last() : "");
    else if ((en->ak.attributes & VEIL_CL_AK_ATTRS) != VEIL_CL_AK_ATTRS)
        veil_cl_check(&en->ck, n, 0,
                      "lacks fixedTPM, fixedParent, sensitiveDataOrigin, "
                      "restricted or sign");
    else if (!veil_cl_json_hex(en->report, "aik_name", name,
                               VEIL_CL_NAME_LEN) ||
             !veil_cl_same(name, en->ak.name, VEIL_CL_NAME_LEN))
        veil_cl_check(&en->ck, n, 0,
                      "aik_name is not the name of aik_pubkey_b64");
    else
        ok = veil_cl_check(&en->ck, n, 1,
                           "restricted signing key, fixedTPM, fixedParent, "
                           "sensitiveDataOrigin; name %s",
                           veil_cl_json_str(en->report, "aik_name"));
    free(pub);
    return ok;
}

/* check_keys, the encryption key: the report's hash is of the report's
 * SPKI, and of the key /pki/public_key serves (served). */
static int enc_key_check(enroll *en, const uint8_t served[32])
{
    const char *n = "encryption key";
    uint8_t *spki = NULL;
    size_t spki_len;
    char hx[65];
    int ok = 0;
    if (!veil_cl_json_hex(en->report, "encryption_key_sha256", en->enc_sha,
                          32) ||
        !veil_cl_json_b64(en->report, "encryption_key_spki_b64", &spki,
                          &spki_len))
        veil_cl_check(&en->ck, n, 0,
                      "encryption_key_sha256 or encryption_key_spki_b64 "
                      "malformed");
    else if (!sha256_is(spki, spki_len, en->enc_sha))
        veil_cl_check(&en->ck, n, 0,
                      "encryption_key_sha256 is not the hash of "
                      "encryption_key_spki_b64");
    else if (!veil_cl_same(served, en->enc_sha, 32))
        veil_cl_check(&en->ck, n, 0,
                      "the report names another key than /pki/public_key "
                      "serves");
    else {
        veil_hex(en->enc_sha, 32, hx);
        ok = veil_cl_check(&en->ck, n, 1,
                           "sha256:%s, as /pki/public_key serves it", hx);
    }
    free(spki);
    return ok;
}

/* The answer-signing key: a P-256 key whose hash the report gives. */
static int sign_key_check(enroll *en)
{
    const cJSON *rep = en->report;
    const char *n = "signing key";
    char refused[160], hx[65];
    if (veil_cl_json_null(rep, "signing_key_spki_b64"))
        return veil_cl_check(&en->ck, n, 0,
                             "the gateway has no answer-signing key "
                             "(signing_key in veild.conf): its answers could "
                             "not be verified");
    if (!veil_cl_json_hex(rep, "signing_key_sha256", en->sign_sha, 32) ||
        !veil_cl_json_b64(rep, "signing_key_spki_b64", &en->sign_spki,
                          &en->sign_spki_len))
        return veil_cl_check(&en->ck, n, 0,
                             "signing_key_sha256 or signing_key_spki_b64 "
                             "malformed");
    int kok = veil_cl_p256_ok(en->e, en->sign_spki, en->sign_spki_len, refused,
                              sizeof refused);
    if (refused[0])
        return veil_cl_check(&en->ck, n, 0,
                             "signing_key_spki_b64 is refused: %s", refused);
    if (!kok)
        return veil_cl_check(&en->ck, n, 0,
                             "signing_key_spki_b64 is not a P-256 key");
    if (!sha256_is(en->sign_spki, en->sign_spki_len, en->sign_sha))
        return veil_cl_check(&en->ck, n, 0,
                             "signing_key_sha256 is not the hash of "
                             "signing_key_spki_b64");
    veil_hex(en->sign_sha, 32, hx);
    return veil_cl_check(&en->ck, n, 1, "ECDSA P-256 sha256:%s", hx);
}

/* The keys the quote binds: the one /pki/public_key serves and the
 * answer-signing key, each as reported and as hashed here. */
static veil_client_status check_keys(enroll *en, veil_client_error *err)
{
    uint8_t served[32];
    veil_client_status st = fetch_encryption_key(en, served, err);
    if (st != VEIL_CLIENT_OK)
        return st;
    if (!enc_key_check(en, served) || !sign_key_check(en))
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_VERIFY,
                            "%s", en->ck.failed);
    return VEIL_CLIENT_OK;
}

/* Credential activation: a secret only the TPM holding the EK's private
 * key, with an object of the AK's name loaded, can recover. */
static veil_client_status activate(enroll *en, veil_client_error *err)
{
    const char *n = "credential activation";
    uint8_t secret[SECRET_LEN], blob[514], enc[514]; /* RSA-4096 EKs */
    size_t blob_len = sizeof blob, enc_len = sizeof enc;
    char *b1 = NULL, *b2 = NULL, *body = NULL;
    cJSON *req = NULL, *ans = NULL;
    uint8_t *got = NULL;
    size_t got_len = 0;
    veil_cl_http_response r = {0};
    veil_client_status st = VEIL_CLIENT_E_SECURITY;

    if (veil_random(en->e, secret, sizeof secret) != VEIL_OK ||
        veil_tpm_make_credential(en->e, &en->ek, en->ak.name, VEIL_CL_NAME_LEN,
                                 secret, sizeof secret, blob, &blob_len, enc,
                                 &enc_len) != VEIL_OK) {
        veil_cl_check(&en->ck, n, 0, "MakeCredential: %s", veil_cl_why_last());
        veil_cl_fail(err, st, 0, VEIL_E_CRYPTO, "%s", en->ck.failed);
        goto out;
    }
    if ((b1 = veil_b64_encode(blob, blob_len)) == NULL ||
        (b2 = veil_b64_encode(enc, enc_len)) == NULL ||
        (req = cJSON_CreateObject()) == NULL ||
        !cJSON_AddStringToObject(req, "credential_blob_b64", b1) ||
        !cJSON_AddStringToObject(req, "encrypted_secret_b64", b2) ||
        (body = cJSON_PrintUnformatted(req)) == NULL) {
        st = veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_NOMEM,
                          "out of memory");
        goto out;
    }
    st = gw_http(en, "/v1/attestation/activate", body, &r, err);
    if (st != VEIL_CLIENT_OK) {
        veil_cl_check(&en->ck, n, 0, "POST /v1/attestation/activate: %s",
                      err ? err->detail : "failed");
        /* The TPM refusing the credential means the AK and the EK are not
         * one TPM's, as far as this client can tell. */
        if (r.status == 400 || (err && err->http_status == 400))
            st = veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 400, VEIL_E_VERIFY,
                              "%s", en->ck.failed);
        goto out;
    }
    st = VEIL_CLIENT_E_SECURITY;
    ans = cJSON_ParseWithLength(r.body ? r.body : "", r.len);
    if (!veil_cl_json_b64(ans, "secret_b64", &got, &got_len)) {
        veil_cl_check(&en->ck, n, 0, "the answer has no base64 secret_b64");
    } else if (got_len != sizeof secret ||
               !veil_cl_same(got, secret, sizeof secret)) {
        veil_cl_check(&en->ck, n, 0,
                      "the secret recovered is not the one sent: the AK is not "
                      "in the TPM of this EK");
    } else {
        veil_cl_check(
            &en->ck, n, 1,
            "the TPM holding the EK recovered a secret bound to the AK's "
            "name");
        st = VEIL_CLIENT_OK;
    }
    if (st != VEIL_CLIENT_OK)
        veil_cl_fail(err, st, 200, VEIL_E_VERIFY, "%s", en->ck.failed);
out:
    veil_wipe(secret, sizeof secret);
    if (got)
        veil_wipe(got, got_len);
    free(got);
    free(b1);
    free(b2);
    free(body);
    free(r.body);
    cJSON_Delete(req);
    cJSON_Delete(ans);
    return st;
}

/* The quoted PCRs against the verifier's policy; with accept_current,
 * each value taken is reported. */
static int check_policy(enroll *en)
{
    char why[300], sel[96], hx[65];

    if (!veil_cl_pcr_policy_check(&en->policy, &en->sel,
                                  (const uint8_t(*)[32])en->values, why,
                                  sizeof why))
        return veil_cl_check(&en->ck, "PCR policy", 0, "%s", why);
    veil_pcr_sel_format(&en->sel, sel, sizeof sel);
    if (!en->policy.accept_current)
        return veil_cl_check(&en->ck, "PCR policy", 1,
                             "%u reference value(s) match; %s recorded",
                             en->policy.golden_sel.n, sel);
    for (unsigned i = 0; i < en->sel.n; i++) {
        veil_hex(en->values[i], 32, hx);
        veil_cl_check(&en->ck, "PCR accepted", 1,
                      "PCR %u = %s (trust on first use)", en->sel.index[i], hx);
    }
    return veil_cl_check(&en->ck, "PCR policy", 1,
                         "the values quoted now are accepted (%s); compare "
                         "them with a known-good image",
                         sel);
}

/* The report's TCG event log, when it has one: it replays to the quoted
 * PCRs, and its events match the golden file's reference events. */
static int check_event_log(enroll *en)
{
    uint8_t *log = NULL;
    size_t len = 0;
    char done[200], why[400];
    const char *n = "event log";

    if (!veil_cl_json_null(en->report, "event_log_b64") &&
        !veil_cl_json_b64(en->report, "event_log_b64", &log, &len))
        return veil_cl_check(&en->ck, n, 0, "event_log_b64 is not base64");
    int ok = veil_cl_event_log_check(&en->policy, log, len, &en->sel,
                                     (const uint8_t(*)[32])en->values, done,
                                     sizeof done, why, sizeof why);
    free(log);
    if (!ok)
        return veil_cl_check(&en->ck, n, 0, "%s", why);
    return veil_cl_check(&en->ck, n, 1, "%s",
                         done[0] ? done
                                 : "none in the report: PCRs are checked by "
                                   "value only");
}

static int check_report_quote(enroll *en)
{
    veil_cl_quote q;
    char why[256];
    uint8_t qual[32];
    int ok = 0;
    if (!veil_cl_quote_decode(en->report, 0, &q, why, sizeof why)) {
        veil_cl_check(&en->ck, "quote", 0, "%s", why);
        goto out;
    }
    veil_ev_report_qualifying(en->nonce, sizeof en->nonce, en->enc_sha,
                              en->sign_sha, qual);
    if (veil_tpm_check_quote(en->e, &en->ak, q.quote, q.quote_len, q.sig,
                             q.sig_len, qual, &q.sel,
                             (const uint8_t(*)[32])q.values) != VEIL_OK) {
        veil_cl_check(&en->ck, "quote", 0, "%s", veil_cl_why_last());
        goto out;
    }
    char sel[96];
    veil_pcr_sel_format(&q.sel, sel, sizeof sel);
    veil_cl_check(
        &en->ck, "quote", 1,
        "signed by the AK over this nonce and both keys; PCR digest of "
        "%s",
        sel);
    if (q.has_kc && !veil_cl_key_certify_check(en->e, &en->ak, &q, en->enc_sha,
                                               qual, &en->ck))
        goto out;
    en->sel = q.sel;
    memcpy(en->values, q.values, sizeof en->values);
    ok = check_policy(en) && check_event_log(en);
out:
    veil_cl_quote_free(&q);
    return ok;
}

static cJSON *pcrs_json(const veil_pcr_sel *sel,
                        const uint8_t values[VEIL_EV_MAX_PCRS][32])
{
    cJSON *o = cJSON_CreateObject();
    cJSON *bank = o ? cJSON_AddObjectToObject(o, "sha256") : NULL;
    for (unsigned i = 0; bank && i < sel->n; i++) {
        char k[8], h[65];
        snprintf(k, sizeof k, "%u", sel->index[i]);
        veil_hex(values[i], 32, h);
        if (!cJSON_AddStringToObject(bank, k, h))
            bank = NULL;
    }
    if (bank == NULL) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* j["pcr_policy"]: {"kind": "golden"|"accepted-current", "required":
 * "sha256:..." or null}.  1, or 0 (no memory). */
static int add_policy(cJSON *j, const veil_cl_pcr_policy *p)
{
    cJSON *o = cJSON_AddObjectToObject(j, "pcr_policy");
    char req[96];

    if (!o || !cJSON_AddStringToObject(o, "kind", veil_cl_pcr_policy_name(p)) ||
        !cJSON_AddNumberToObject(o, "reference_events", p->n_events))
        return 0;
    if (!p->has_required)
        return cJSON_AddNullToObject(o, "required") != NULL;
    veil_pcr_sel_format(&p->required, req, sizeof req);
    return cJSON_AddStringToObject(o, "required", req) != NULL;
}

/* The trust file's text (veil-trust-v1) of a checked enrolment; NULL when
 * out of memory. */
static char *trust_text(const enroll *en)
{
    const cJSON *rep = en->report;
    char hx[72], selt[96];
    cJSON *j = cJSON_CreateObject(), *pcrs = pcrs_json(&en->sel, en->values);
    char *text = NULL,
         *sign_b64 = veil_b64_encode(en->sign_spki, en->sign_spki_len);
    const cJSON *sw = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(rep, "tpm"), "software_tpm");
    int ok = j && pcrs && sign_b64 &&
             cJSON_AddStringToObject(j, "format", VEIL_CL_TRUST_FORMAT) &&
             cJSON_AddStringToObject(j, "url", en->url) &&
             cJSON_AddNumberToObject(j, "enrolled_at", (double)time(NULL)) &&
             cJSON_AddBoolToObject(j, "ek_verified", en->ek_verified);
    if (ok && en->has_cert) {
        cJSON *t = cJSON_AddObjectToObject(j, "ek_cert_tpm");
        veil_hex(en->cert_sha, 32, hx);
        ok = cJSON_AddStringToObject(j, "ek_cert_sha256", hx) && t &&
             cJSON_AddStringToObject(t, "manufacturer",
                                     en->ek_attrs.manufacturer) &&
             cJSON_AddStringToObject(t, "model", en->ek_attrs.model) &&
             cJSON_AddStringToObject(t, "version", en->ek_attrs.version);
    } else if (ok) {
        ok = cJSON_AddNullToObject(j, "ek_cert_sha256") != NULL;
    }
    ok = ok &&
         cJSON_AddStringToObject(j, "ek_pubkey_b64",
                                 veil_cl_json_str(rep, "ek_pubkey_b64")) &&
         cJSON_AddStringToObject(j, "aik_pubkey_b64",
                                 veil_cl_json_str(rep, "aik_pubkey_b64"));
    if (ok) {
        veil_hex(en->ak.name, VEIL_CL_NAME_LEN, hx);
        ok = cJSON_AddStringToObject(j, "aik_name", hx) != NULL;
    }
    if (ok) {
        veil_hex(en->enc_sha, 32, hx);
        ok = cJSON_AddStringToObject(j, "encryption_key_sha256", hx) &&
             cJSON_AddStringToObject(j, "signing_key_spki_b64", sign_b64);
    }
    if (ok) {
        veil_hex(en->sign_sha, 32, hx);
        veil_pcr_sel_format(&en->sel, selt, sizeof selt);
        ok = cJSON_AddStringToObject(j, "signing_key_sha256", hx) &&
             cJSON_AddStringToObject(j, "pcr_banks", selt) &&
             cJSON_AddItemToObject(j, "pcr_values", pcrs);
        if (ok)
            pcrs = NULL;
        const char *kem = veil_cl_json_str(rep, "kem_keys");
        ok = ok && add_policy(j, &en->policy) &&
             cJSON_AddBoolToObject(j, "software_tpm", cJSON_IsTrue(sw)) &&
             (kem ? cJSON_AddStringToObject(j, "kem_keys", kem)
                  : cJSON_AddNullToObject(j, "kem_keys"));
    }
    if (ok)
        ok = (text = cJSON_Print(j)) != NULL;
    free(sign_b64);
    cJSON_Delete(pcrs);
    cJSON_Delete(j);
    if (!ok) {
        free(text);
        return NULL;
    }
    return text;
}

/* 1 when the report says the v2 KEM keys are TPM objects. */
static int kem_in_tpm(const enroll *en)
{
    const char *kem = veil_cl_json_str(en->report, "kem_keys");
    return kem != NULL && strcmp(kem, "tpm") == 0;
}

static veil_client_status write_trust(enroll *en, veil_client_error *err)
{
    const char *path = en->opt->trust_file;
    const char *step;
    char *text = trust_text(en);
    if (text == NULL)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_NOMEM,
                            "out of memory");
    int saved = veil_cl_write_atomic(path, text, en->opt->overwrite, &step);
    int e = errno;
    free(text);
    if (!saved) {
        if (e == EEXIST)
            veil_cl_check(&en->ck, "trust file", 0, "%s already exists", path);
        else
            veil_cl_check(&en->ck, "trust file", 0, "%s: %s: %s", path, step,
                          strerror(e));
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_IO, "%s",
                            en->ck.failed);
    }
    veil_cl_check(&en->ck, "trust file", 1, "%s written", path);
    return VEIL_CLIENT_OK;
}

/* The report on a fresh nonce, its echo of that nonce (report.c), and the
 * TPM's description. */
static veil_client_status fetch_report(enroll *en, veil_client_error *err)
{
    veil_client_status st =
        veil_cl_report_fetch(en->e, en->tx, en->url, en->opt->api_key, &en->ck,
                             en->nonce, &en->report, err);
    if (st != VEIL_CLIENT_OK)
        return st;
    const cJSON *tpm = cJSON_GetObjectItemCaseSensitive(en->report, "tpm");
    const char *m = veil_cl_json_str(tpm, "manufacturer"),
               *v = veil_cl_json_str(tpm, "vendor"),
               *fw = veil_cl_json_str(tpm, "firmware");
    int sw =
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(tpm, "software_tpm"));
    veil_cl_check(&en->ck, "attestation report", 1, "TPM %s %s firmware %s%s",
                  m ? m : "?", v ? v : "?", fw ? fw : "?",
                  sw ? "; a SOFTWARE TPM: its evidence proves nothing about "
                       "the machine"
                     : "");
    return VEIL_CLIENT_OK;
}

veil_client_status veil_attest_enroll(const veil_enroll_options *opt,
                                      veil_client_error *err)
{
    enroll en = {.opt = opt};
    veil_client_status st = VEIL_CLIENT_E_CONFIG;
    struct stat sb;
    if (err)
        memset(err, 0, sizeof *err);
    if (opt == NULL || opt->url == NULL || opt->trust_file == NULL)
        return veil_cl_fail(err, st, 0, VEIL_E_ARG,
                            "enrolment needs a URL and a trust file");
    en.ck.fn = opt->on_check;
    en.ck.ctx = opt->check_ctx;
    char shown[512];
    veil_cl_redact_url(opt->url, shown, sizeof shown);
    if (!strncmp(opt->url, "http://", 7) && !opt->allow_http)
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 0, VEIL_E_ARG,
                            "plain http is refused (%s): use https, or allow "
                            "http for local development only",
                            shown);
    if (strncmp(opt->url, "https://", 8) && strncmp(opt->url, "http://", 7))
        return veil_cl_fail(err, st, 0, VEIL_E_ARG,
                            "the base URL must start with https:// (%s)",
                            shown);
    if (opt->api_key &&
        (opt->api_key[0] == '\0' || strpbrk(opt->api_key, "\r\n")))
        return veil_cl_fail(err, st, 0, VEIL_E_ARG,
                            "the API key is empty or contains a line break");
    char why[300];
    if (!veil_cl_pcr_policy_load(opt->required_pcrs, opt->golden_file,
                                 opt->accept_current, &en.policy, why,
                                 sizeof why))
        return veil_cl_fail(err, st, 0, VEIL_E_ARG, "%s", why);
    /* Refused before any traffic; write_trust still refuses atomically. */
    if (!opt->overwrite && lstat(opt->trust_file, &sb) == 0) {
        veil_cl_pcr_policy_free(&en.policy);
        return veil_cl_fail(err, st, 0, VEIL_E_EXISTS,
                            "the trust file %s already exists",
                            opt->trust_file);
    }
    if ((en.url = veil_cl_url_dup(opt->url)) == NULL) {
        veil_cl_pcr_policy_free(&en.policy);
        return veil_cl_fail(err, st, 0, VEIL_E_NOMEM, "out of memory");
    }
    en.e = opt->engine;
    if (en.e == NULL && veil_engine_new(NULL, &en.e) != VEIL_OK) {
        en.e = NULL;
        veil_cl_fail(err, st, 0, VEIL_E_NOMEM, "starting an engine: %s",
                     veil_cl_why_last());
        goto out;
    }
    if ((en.tx = veil_cl_transport_new(
             opt->ca_file, opt->timeout_ms ? opt->timeout_ms : 60000)) ==
        NULL) {
        veil_cl_fail(err, st, 0, VEIL_E_NOMEM, "could not start libcurl");
        goto out;
    }
    st = fetch_report(&en, err);
    if (st != VEIL_CLIENT_OK)
        goto out;
    st = VEIL_CLIENT_E_SECURITY;
    if (!check_ek(&en) || !check_ak(&en)) {
        veil_cl_fail(err, st, 200, VEIL_E_VERIFY, "%s", en.ck.failed);
        goto out;
    }
    if ((st = check_keys(&en, err)) != VEIL_CLIENT_OK ||
        (st = activate(&en, err)) != VEIL_CLIENT_OK)
        goto out;
    st = VEIL_CLIENT_E_SECURITY;
    if (!check_report_quote(&en)) {
        veil_cl_fail(err, st, 200, VEIL_E_VERIFY, "%s", en.ck.failed);
        goto out;
    }
    /* the v2 KEM keys in the TPM: each certified by this AK (v2_cert.c) */
    if (kem_in_tpm(&en) &&
        (st = veil_cl_kem_enrol_check(en.e, en.tx, en.url, &en.ak, en.sign_spki,
                                      en.sign_spki_len, en.sign_sha, &en.ck,
                                      err)) != VEIL_CLIENT_OK)
        goto out;
    st = write_trust(&en, err);
out:
    veil_cl_pcr_policy_free(&en.policy);
    veil_tpm_pub_clear(&en.ek);
    veil_tpm_pub_clear(&en.ak);
    free(en.sign_spki);
    cJSON_Delete(en.report);
    veil_cl_transport_free(en.tx);
    if (en.e != opt->engine)
        veil_engine_free(en.e);
    free(en.url);
    return st;
}
