/* client/v2_cert.h: the gateway's protocol v2 key configurations as
 * signed by its long-term signing key (PROTOCOL-V2.md 4.3), and the TPM's
 * certification of each KEM key by the attestation key (4.4), checked by
 * the client before it encapsulates on maximum and by enrolment before it
 * writes a trust file (v2_cert.c).  Not installed.
 *
 * Layering (docs/ARCHITECTURE.md): v2_cert.c uses keys.h (the client
 * object), trust.c, tpmobj.c and client_int.h; v2.c and enroll.c call
 * it. */
#ifndef VEIL_CLIENT_V2_CERT_H
#define VEIL_CLIENT_V2_CERT_H

#include "ohttp.h"
#include "tpmobj.h"

#pragma GCC visibility push(hidden)

/* ---- the outer requests --------------------------------------------------
 */

/* The header lines of a GET of the key configurations: RFC 9540 5's
 * Accept of application/ohttp-keys (NULL-terminated). */
extern const char *const veil_cl_v2_keys_lines[];

/* The URL of an outer request of protocol v2 into out: the base URL
 * without its user information (user:password@, which curl would send as
 * HTTP Basic credentials: RFC 9458 6.1 allows nothing identifying on what
 * a relay forwards), then path.  A URL that does not fit in out is
 * VEIL_CLIENT_E_CONFIG (err may be NULL), never one cut short. */
veil_client_status veil_cl_v2_outer_url(const char *base, const char *path,
                                        char *out, size_t size,
                                        veil_client_error *err);

/* Where the encapsulated requests for the gateway at base are posted,
 * into out: the relay as configured (cfg.relay_url, nothing appended),
 * else base's /.well-known/ohttp-gateway; user information dropped and
 * length checked as above. */
veil_client_status veil_cl_v2_post_url(const veil_client *c, const char *base,
                                       char *out, size_t size,
                                       veil_client_error *err);

/* GET base's key configurations (at most max_body) into r: to
 * /.well-known/ohttp-gateway with veil_cl_v2_keys_lines, following up to
 * 4 redirects (301, 302, 303, 307, 308), as RFC 9540 4 lets a gateway
 * send; never from https to http, and each URL without user
 * information.  r is the final answer: a redirect that cannot be followed
 * (no usable Location, another scheme, a fifth) is left in r, as its
 * status, for the caller to refuse as it refuses any other. */
veil_client_status veil_cl_v2_keys_get(veil_cl_transport *tx, const char *base,
                                       size_t max_body,
                                       veil_cl_http_response *r,
                                       veil_client_error *err);

/* How long the answer r (a GET of the key configurations) stays fresh
 * from now (RFC 9111 4.2): its Cache-Control max-age less the Age a cache
 * on the way gave it (4.2.3; an Age that is not a number counts as 0, one
 * of more digits than fit as all of max-age, 5.1), at least 0; -1 without
 * max-age. */
long long veil_cl_keys_fresh_for(const veil_cl_http_response *r);

/* ---- the signed statement (section 4.3) ---------------------------------
 */

/* A Unix time in decimal (1 to 18 digits, nothing else): 1, else 0. */
int veil_cl_unix_time(const char *s, long long *out);

/* What the statement of a GET /.well-known/ohttp-gateway answer came to. */
typedef enum veil_cl_keys_rc {
    VEIL_CL_KEYS_OK = 0,
    VEIL_CL_KEYS_HEADERS,   /* X-Veil-Keys-Signature, -Signed-At, -Expires or
                               X-Veil-Signing-Key missing, doubled or bad */
    VEIL_CL_KEYS_SIGNER,    /* X-Veil-Signing-Key names another key */
    VEIL_CL_KEYS_SIGNATURE, /* the signature does not verify */
    VEIL_CL_KEYS_EXPIRED,   /* the signed not_after has passed */
} veil_cl_keys_rc;

/* Step 1, before the signing key is known: r's signature headers read;
 * *not_after the signed not_after, named the key X-Veil-Signing-Key names.
 * VEIL_CL_KEYS_OK or VEIL_CL_KEYS_HEADERS. */
veil_cl_keys_rc veil_cl_keys_headers(const veil_cl_http_response *r,
                                     long long *not_after, uint8_t named[32]);

/* Step 2: the statement over r's body verified under the signing key spki
 * (SPKI DER, SHA-256 fp), which must be the one named; then not_after
 * against the clock. */
veil_cl_keys_rc
veil_cl_keys_signed(veil_engine *e, const veil_cl_http_response *r,
                    const uint8_t *spki, size_t spki_len, const uint8_t fp[32],
                    const uint8_t named[32], long long not_after);

/* ---- a KEM key's certification (section 4.4) ----------------------------
 */

/* Why a certification failed: the check ("" when none failed) and the
 * reason. */
typedef struct veil_cl_kem_why {
    char what[64];
    char why[320];
} veil_cl_kem_why;

/* The chain of one certification: body, a GET /v2/keys/certify answer
 * (200) for the key configuration kc, is a JSON object for kc's key ID
 * whose TPMS_ATTEST (magic, type ATTEST_CERTIFY, qualifying data
 * veil_ev_kem_certify_qualifying of kc) the AK ak signed, certifying the
 * name nameAlg || SHA-256 of the public area given, that public area ECC
 * P-256 with decrypt, fixedTPM and fixedParent, neither restricted nor
 * sign, and its point kc's 65-byte public key.  1; else 0 with the failed
 * check in w (ak_label names the AK in it, e.g. "the enrolled AK"). */
int veil_cl_kem_cert_check(veil_engine *e, const veil_tpm_pub *ak,
                           const char *ak_label, const char *body, size_t len,
                           const veil_ohttp_keyconfig *kc, veil_cl_kem_why *w);

/* On maximum over v2, with a trust file enrolled for url whose KEM keys
 * are TPM objects ("kem_keys": "tpm"): GET url/v2/keys/certify?key_id=N
 * for kc, checked (veil_cl_kem_cert_check) under the trust file's AK.
 * VEIL_CLIENT_OK (also without such a trust file for url: nothing
 * enrolled to check against); any failure a VEIL_CLIENT_E_SECURITY
 * naming the key ID and the check, nothing sent. */
veil_client_status veil_cl_v2_kem_check(veil_client *c, const char *url,
                                        const veil_ohttp_keyconfig *kc,
                                        veil_client_error *err);

/* Enrolment of a gateway whose report says its KEM keys are TPM objects:
 * GET url/.well-known/ohttp-gateway, its statement verified under the
 * signing key sign_spki (SHA-256 sign_sha) the report gave, then for
 * every key configuration in it GET url/v2/keys/certify?key_id=N,
 * checked under ak, the AK being enrolled.  Each key is reported to ck as
 * "KEM key N", then "KEM keys" with the count.  VEIL_CLIENT_OK; the first
 * failure an error (VEIL_CLIENT_E_SECURITY for a failed check) whose
 * detail names the key ID and the reason. */
veil_client_status
veil_cl_kem_enrol_check(veil_engine *e, veil_cl_transport *tx, const char *url,
                        const veil_tpm_pub *ak, const uint8_t *sign_spki,
                        size_t sign_spki_len, const uint8_t sign_sha[32],
                        veil_cl_checker *ck, veil_client_error *err);

#pragma GCC visibility pop

#endif /* VEIL_CLIENT_V2_CERT_H */
