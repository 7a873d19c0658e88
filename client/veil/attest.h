/* veil/attest.h: enrolling a gateway's TPM and verifying its answers.
 *
 * The chain of trust and every byte format are in docs/ATTESTATION.md:
 * EK certificate (TPM vendor CA) -> attestation key (credential
 * activation) -> quote over PCRs -> the gateway's encryption and signing
 * keys -> one answer.  Enrolment writes a trust file; answers are then
 * checked against it (veil_client_config.trust_file) and saved evidence
 * can be checked offline (veil_verify_evidence). */
#ifndef VEIL_ATTEST_H
#define VEIL_ATTEST_H

#include <stddef.h>

#include "veil/client.h"
#include "veil/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Called once per check made, in order: `check` names it ("EK
 * certificate chain", "quote signature", ...), ok is 1 or 0, `detail`
 * says what was compared or why it failed (never a secret).  May be
 * NULL. */
typedef void (*veil_check_fn)(void *ctx, const char *check, int ok,
                              const char *detail);

/* ---- enrolment -------------------------------------------------------- */

typedef struct veil_enroll_options {
    const char *url;        /* the gateway's base URL */
    const char *ek_ca_file; /* PEM: the CA(s) that must have issued the
                               EK certificate.  NULL: the EK certificate
                               is not checked (recorded as such, and
                               reported as a failed check that does not
                               stop enrolment only when allow_unverified_ek
                               is set; otherwise enrolment fails) */
    int allow_unverified_ek;
    /* The verifier's PCR policy (one of golden_file and accept_current):
     *   required_pcrs: "sha256:0,7": the gateway's quote must cover these
     *     (NULL: none beyond the golden file's);
     *   golden_file: reference values, JSON {"sha256": {"0": "<64 hex>",
     *     ...}} (the trust file's pcr_values shape): each must be quoted
     *     and equal;
     *   accept_current: trust on first use, chosen explicitly: the values
     *     quoted now are recorded (each reported as a check).
     * Neither: VEIL_CLIENT_E_CONFIG before any traffic. */
    const char *required_pcrs;
    const char *golden_file;
    int accept_current;
    const char *trust_file; /* written here (0644; refuses to overwrite
                               unless overwrite is set) */
    int overwrite;
    /* HTTP, as in veil_client_config */
    const char *api_key;
    const char *ca_file;
    int allow_http;
    unsigned timeout_ms;    /* default 60000 */
    veil_engine *engine;    /* software operations; NULL: own engine */
    veil_check_fn on_check; /* each check as it is made */
    void *check_ctx;
} veil_enroll_options;

/* Fetches GET /v1/attestation/report on a random nonce, verifies the EK
 * certificate against ek_ca_file and that it holds the reported EK,
 * runs credential activation (a secret made with MakeCredential for the
 * AK's name under the EK, which only that TPM can recover), verifies the
 * quote (signature under the AK, qualifying data over the nonce and the
 * reported keys, PCR digest over the reported values), checks the key
 * certification when present, and writes the trust file: AK, EK
 * certificate hash, encryption and signing keys, PCR selection and
 * golden values.  Any failed check: VEIL_CLIENT_E_SECURITY and no file. */
veil_client_status veil_attest_enroll(const veil_enroll_options *opt,
                                      veil_client_error *err);

/* ---- following an AK rotation ----------------------------------------- */

typedef struct veil_update_options {
    const char *trust_file; /* read; rewritten when the AK was handed over */
    /* HTTP, as in veil_client_config (the URL is the trust file's) */
    const char *api_key;
    const char *ca_file;
    int allow_http;
    unsigned timeout_ms;    /* default 60000 */
    veil_engine *engine;    /* software operations; NULL: own engine */
    veil_check_fn on_check; /* each check as it is made */
    void *check_ctx;
} veil_update_options;

/* Fetches the enrolled gateway's report on a random nonce and checks that
 * it is the enrolled TPM (EK) with the enrolled keys.  When its
 * attestation key is the enrolled one, checks the quote and leaves the
 * file as it is.  When it is another AK, accepts it only through the
 * report's certified hand-over (ak_handover: a TPM2_Certify of the new AK,
 * with the attributes of an AK, by the enrolled AK, qualifying data over
 * the new AK's name) and a quote by the new AK over the nonce with the
 * enrolled PCR values; then rewrites the trust file atomically with the
 * new AK, every other member (the PCR policy included) kept, and sets
 * *updated (may be NULL).  Any failed check: VEIL_CLIENT_E_SECURITY, the
 * file unchanged, and err->detail says to re-enrol. */
veil_client_status veil_attest_update(const veil_update_options *opt,
                                      int *updated, veil_client_error *err);

/* ---- trust files ------------------------------------------------------ */

typedef struct veil_trust veil_trust;
/* Reads a trust file (format veil-trust-v1).  VEIL_CLIENT_E_CONFIG with
 * the reason when it cannot be read or is malformed. */
veil_client_status veil_trust_load(const char *path, veil_trust **out,
                                   veil_client_error *err);
void veil_trust_free(veil_trust *t);
/* The base URL the trust file was enrolled from. */
const char *veil_trust_url(const veil_trust *t);

/* ---- offline verification --------------------------------------------- */

/* Checks saved evidence (format veil-evidence-v1, as `veil chat
 * --evidence FILE` writes it) against a trust file: the packages' hashes,
 * the answer signature under the enrolled signing key, and on `maximum`
 * the quote under the enrolled AK (or a per-request AK certified by it),
 * its qualifying data against this request and the enrolled keys, the
 * PCR digest against the reported values and those against the golden
 * values.  VEIL_CLIENT_OK when every check passed; VEIL_CLIENT_E_SECURITY
 * when one failed (err->detail names the first); VEIL_CLIENT_E_CONFIG when
 * the evidence cannot be read.  engine NULL: an own software engine. */
veil_client_status veil_verify_evidence(veil_engine *engine,
                                        const veil_trust *trust,
                                        const char *evidence_json, size_t len,
                                        veil_check_fn on_check, void *ctx,
                                        veil_client_error *err);

#ifdef __cplusplus
}
#endif

#endif /* VEIL_ATTEST_H */
