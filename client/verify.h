/* client/verify.h: verifying one answer as the client receives it
 * (verify.c).  Not installed; offline verification is public
 * (veil_verify_evidence in veil/attest.h).
 *
 * Layering (docs/ARCHITECTURE.md): verify.c uses trust.c, tpmobj.c and
 * client_int.h; only client.c calls it. */
#ifndef VEIL_CLIENT_VERIFY_H
#define VEIL_CLIENT_VERIFY_H

#include "trust.h"

#pragma GCC visibility push(hidden)

/* One answer as the client saw it, for veil_cl_verify_answer. */
typedef struct veil_cl_answer {
    const char *url;        /* the base URL, no trailing slash */
    const char *payload_id; /* the X-Payload-ID sent */
    const char *tier;       /* the tier sent ("standard" when none) */
    const char *request;    /* the request body exactly as sent */
    size_t request_len;
    const veil_cl_http_response *response; /* body and signature headers */
    const uint8_t *server_key_sha256;      /* the key the request went to */
    int kem_key; /* protocol v2: server_key_sha256 is the SHA-256 of the KEM
                    public key, which the quote binds with a trust file too
                    (in place of the enrolled encryption key) */
    const cJSON *tpm_attestation; /* _metadata.tpm_attestation */
    const char *model;     /* the model the request named (NULL: not known); a
                              maximum answer's backend statement must name it */
    int allow_foreign;     /* maximum, no trust file: accept an attestation in
                              another format than veil's (unchecked) */
    int quote_checked;     /* out: a TPM quote was verified */
    int signature_checked; /* in/out: the signature was verified already
                              (veil_cl_verify_signature) */
} veil_cl_answer;

/* With a trust file, verifies the answer's signature alone, under the
 * enrolled signing key, before anything is decrypted: its statement
 * covers the request and the response as sent, so a forged answer is
 * refused before the client's key (in its token) is used on it.  Sets
 * a->signature_checked; without a trust file does nothing.  Errors as
 * veil_cl_verify_answer. */
veil_client_status veil_cl_verify_signature(veil_engine *e, const veil_trust *t,
                                            veil_cl_answer *a,
                                            veil_check_fn on_check, void *ctx,
                                            veil_client_error *err);

/* Verifies one opened answer: with a trust file, its signature under the
 * enrolled signing key and, on maximum, its quote against the enrolled
 * AK and golden PCR values; without one, on maximum, a veil quote in the
 * answer against this request and server key only.  Each check goes to
 * on_check.  A failure is VEIL_CLIENT_E_SECURITY with
 * VEIL_CLIENT_SECURITY_MESSAGE and the failed check in err->detail.
 * evidence (may be NULL) receives the veil-evidence-v1 text. */
veil_client_status veil_cl_verify_answer(veil_engine *e, const veil_trust *t,
                                         veil_cl_answer *a,
                                         veil_check_fn on_check, void *ctx,
                                         char **evidence,
                                         veil_client_error *err);

#pragma GCC visibility pop

#endif /* VEIL_CLIENT_VERIFY_H */
