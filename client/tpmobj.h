/* client/tpmobj.h: the attestation building blocks (tpmobj.c) shared by
 * the trust file (trust.c), answer verification (verify.c) and enrolment
 * (enroll.c), and the key check every server key gets.  Not installed.
 *
 * Layering (docs/ARCHITECTURE.md): tpmobj.c uses only client_int.h and
 * protocol/; it never calls trust.c, verify.c, enroll.c, keys.c or
 * client.c. */
#ifndef VEIL_CLIENT_TPMOBJ_H
#define VEIL_CLIENT_TPMOBJ_H

#include "client_int.h"
#include "evidence.h"

#pragma GCC visibility push(hidden)

#define VEIL_CL_NAME_LEN 34 /* a TPM name: nameAlg (2) || SHA-256 */
#define VEIL_CL_TPM_ALG_RSA 0x0001
/* What a verifier needs of an attestation key (TPM 2.0 Part 2,
 * TPMA_OBJECT). */
#define VEIL_CL_AK_ATTRS                                                       \
    (VEIL_TPMA_FIXEDTPM | VEIL_TPMA_FIXEDPARENT |                              \
     VEIL_TPMA_SENSITIVEDATAORIGIN | VEIL_TPMA_RESTRICTED | VEIL_TPMA_SIGN)

/* ---- small helpers ----------------------------------------------------- */

/* SHA-256 of n bytes (all zero, which no compare matches, on failure). */
void veil_cl_sha256(const void *p, size_t n, uint8_t out[32]);
/* Constant-time equality of n bytes: 1 when equal. */
int veil_cl_same(const uint8_t *a, const uint8_t *b, size_t n);
/* A copy of url without trailing slashes; NULL when out of memory. */
char *veil_cl_url_dup(const char *url);

/* Members of a JSON object: a string (or NULL); absent or null (1); a
 * strict base64 string, decoded (malloc'd; 1 on success); exactly 2n hex
 * digits, decoded (1 on success). */
const char *veil_cl_json_str(const cJSON *o, const char *k);
int veil_cl_json_null(const cJSON *o, const char *k);
int veil_cl_json_b64(const cJSON *o, const char *k, uint8_t **out, size_t *len);
int veil_cl_json_hex(const cJSON *o, const char *k, uint8_t *out, size_t n);

/* ---- reporting checks -------------------------------------------------- */

typedef struct veil_cl_checker {
    veil_check_fn fn;
    void *ctx;
    char failed[400]; /* "check: detail" of the first failure */
} veil_cl_checker;

/* Reports one check to ck->fn; returns ok.  The detail is one line; the
 * first failure is kept in ck->failed. */
int veil_cl_check(veil_cl_checker *ck, const char *name, int ok,
                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* The reason a veil_* call (or veil_cl_tpm_pub) just gave. */
const char *veil_cl_why_last(void);

/* ---- the gateway's report (report.c) ------------------------------------ */

#define VEIL_CL_NONCE_LEN 32

/* One exchange with the gateway at base: GET path when body is NULL, else
 * POST of the JSON body; api_key (or NULL) as a Bearer Authorization line,
 * wiped afterwards.  A non-200 answer is an error of its class; a 200
 * whose body has more than 4096 JSON values (or nests deeper than 16) is
 * refused unparsed (VEIL_CLIENT_E_SECURITY). */
veil_client_status veil_cl_gw_call(veil_cl_transport *tx, const char *base,
                                   const char *api_key, const char *path,
                                   const char *body, veil_cl_http_response *r,
                                   veil_client_error *err);

/* GET /v1/attestation/report on a fresh random nonce (written to nonce),
 * which the report must echo, in the format veil-attestation-report-v1.
 * A failure is reported to ck as "attestation report"; on success nothing
 * is reported (the caller says what it found).  *report: the parsed
 * answer, also on a failed check (free it with cJSON_Delete). */
veil_client_status veil_cl_report_fetch(veil_engine *e, veil_cl_transport *tx,
                                        const char *base, const char *api_key,
                                        veil_cl_checker *ck,
                                        uint8_t nonce[VEIL_CL_NONCE_LEN],
                                        cJSON **report, veil_client_error *err);

/* ---- TPM objects ------------------------------------------------------- */

/* A PCR selection and its values, as "pcr_banks" and "pcr_values" carry
 * them: {"sha256": {"0": "<hex>", ...}}, exactly the selected PCRs. */
int veil_cl_pcrs_parse(const cJSON *o, veil_pcr_sel *sel,
                       uint8_t values[VEIL_EV_MAX_PCRS][32], char *why,
                       size_t why_size);

/* A TPM public area, its key checked as every server key is
 * (veil_cl_key_check); veil_cl_why_last() says why when it fails. */
int veil_cl_tpm_pub(veil_engine *e, const uint8_t *b, size_t n,
                    veil_tpm_pub *out);

/* The TPM objects of a quote, decoded from a report or a
 * tpm_attestation object. */
typedef struct veil_cl_quote {
    veil_pcr_sel sel;
    uint8_t values[VEIL_EV_MAX_PCRS][32];
    uint8_t *ak, *quote, *sig;
    size_t ak_len, quote_len, sig_len;
    int has_name;
    uint8_t ak_name[VEIL_CL_NAME_LEN];
    /* aik_certify (answers only) and key_certify: present when set */
    int has_aikc, has_kc;
    uint8_t *aikc_attest, *aikc_sig, *kc_attest, *kc_sig, *kc_pub;
    size_t aikc_attest_len, aikc_sig_len, kc_attest_len, kc_sig_len, kc_pub_len;
} veil_cl_quote;

/* Decodes a quote (answer: also aik_certify); 0 with why on failure.
 * Free q with veil_cl_quote_free either way. */
int veil_cl_quote_decode(const cJSON *o, int answer, veil_cl_quote *q,
                         char *why, size_t why_size);
void veil_cl_quote_free(veil_cl_quote *q);

/* key_certify: the encryption key is a TPM object (fixedTPM,
 * sensitiveDataOrigin) whose SPKI hash is enc_sha, and the quote's
 * signer certified it with the same qualifying data. */
int veil_cl_key_certify_check(veil_engine *e, const veil_tpm_pub *signer,
                              const veil_cl_quote *q, const uint8_t enc_sha[32],
                              const uint8_t qualifying[32],
                              veil_cl_checker *ck);

/* ---- key checks -------------------------------------------------------- */

/* Checks a server's public key beyond type and size: OpenSSL's public
 * key check (EVP_PKEY_public_check), and for RSA an exponent of at least
 * 65537 (an odd one from 3 up with allow_small_exponent).  1 when it
 * passes; else 0 with the reason in why. */
int veil_cl_key_check(const veil_key *k, int allow_small_exponent, char *why,
                      size_t why_size);

/* 1 when spki (DER) is a P-256 public key that passes veil_cl_key_check
 * (an answer-signing key); else 0, with the key check's reason in refused
 * ("" when it is not a P-256 key at all). */
int veil_cl_p256_ok(veil_engine *e, const uint8_t *spki, size_t len,
                    char *refused, size_t refused_size);

#pragma GCC visibility pop

#endif /* VEIL_CLIENT_TPMOBJ_H */
