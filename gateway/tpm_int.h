/* The gateway's TPM: what its three files share (not for the rest of the
 * gateway, which sees gateway.h only).
 *
 *   tpm.c        the device and the session: open (TCTI, ESYS), what the
 *                TPM says of itself, the encryption key as a TPM object
 *                (tss2_key), the event log, and the helpers below
 *   tpm_ak.c     the identity keys: the EK and its certificate, attestation
 *                keys, credential activation
 *   tpm_quote.c  PCRs, quotes and certifications, and the quote and report
 *                objects
 *   tpm_akstore.c the long-term AK across restarts (state_dir/tpm-ak) and
 *                its rotation with a certified hand-over
 *
 * Every function here expects t->lock held once gw_tpm_open returned. */
#ifndef VEIL_TPM_INT_H
#define VEIL_TPM_INT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <tss2/tss2_esys.h>

#include "evidence.h"
#include "gateway.h"

/* The template `unique` of the long-term AK (two 32-byte P-256
 * coordinates), and the hand-over from the previous AK (tpm_akstore.c). */
#define TPM_AK_UNIQUE_LEN 64
/* The AK's auth value: as long as its nameAlg's digest (SHA-256). */
#define TPM_AK_AUTH_LEN 32
typedef struct tpm_akstate {
    uint8_t unique[TPM_AK_UNIQUE_LEN];
    int has_auth; /* 0: a file of an older veild, without auth= */
    uint8_t auth[TPM_AK_AUTH_LEN];
    int has_previous;
    uint8_t previous_unique[TPM_AK_UNIQUE_LEN];
    char *previous_pub_b64, *previous_name_hex;
    char *handover_attest_b64, *handover_sig_b64;
} tpm_akstate;

struct gw_tpm {
    pthread_mutex_t lock;
    TSS2_TCTI_CONTEXT *tcti;
    ESYS_CONTEXT *ctx;

    veil_logger log;

    int ak_per_request;
    unsigned test_delay_ms; /* gw_tpm_options.test_delay_ms */
    veil_pcr_sel sel;
    char pcr_banks[96];

    /* what the TPM says of itself */
    int software;
    char manufacturer[8];
    char vendor[20];
    char firmware[48];
    char describe[128];
    uint32_t nv_buffer_max;

    /* the EK: public parts, and a saved context to load for activation */
    TPMS_CONTEXT *ek_saved;
    char *ek_pub_b64;
    char *ek_spki_b64;
    char *ek_cert_b64; /* NULL: no certificate in NV */

    /* the long-term AK, kept across restarts in state_dir (NULL: a new
     * one at every start) */
    const char *state_dir;
    tpm_akstate akstate;
    ESYS_TR ak;
    EVP_PKEY *ak_key; /* its public key, to check what it signs */
    char *ak_pub_b64;
    char *ak_name_hex;

    /* the encryption key as a TPM object (ESYS_TR_NONE: none) */
    ESYS_TR key;
    char *key_pub_b64;

    char *event_log_b64; /* NULL: none readable */

    /* Two salted HMAC sessions (tpmKey: the EK), kept across commands:
     * [0] with parameter encryption both ways, for the handle whose auth
     * or parameters are secret; [1] for a command's second handle.
     * ESYS_TR_NONE: started at the next use (tpm_sessions). */
    ESYS_TR sess[2];
};

/* ---- tpm.c -------------------------------------------------------------- */

/* "TPM: <what>: <tss2 decoding of rc>" into err. */
void tpm_put_rc(char *err, size_t err_size, const char *what, TSS2_RC rc);
/* A monotonic clock in milliseconds (for the debug log). */
double tpm_now_ms(void);
/* The test stand-in for a slow TPM: sleeps test_delay_ms (lock held). */
void tpm_test_delay(const gw_tpm *t);
/* Lower-case hex of in, malloc'd; NULL: no memory. */
char *tpm_hex(const uint8_t *in, size_t len);
/* One TPM2_GetCapability of one item into *data (Esys_Free it).  0, or
 * -1 with "TPM: what: ..." in err. */
int tpm_capability(gw_tpm *t, TPM2_CAP cap, UINT32 property, const char *what,
                   TPMS_CAPABILITY_DATA **data, char *err, size_t err_size);
/* Starts t->sess[0] and [1] where they are not running: salted HMAC
 * sessions (AES-128-CFB, SHA-256) whose salt is encrypted to the EK (its
 * saved context loaded for that and flushed again), [0] with
 * TPMA_SESSION_DECRYPT | ENCRYPT.  0, or -1 with err. */
int tpm_sessions(gw_tpm *t, char *err, size_t err_size);
/* Flushes the sessions (after a failed command: the next use starts new
 * ones). */
void tpm_sessions_drop(gw_tpm *t);
/* Base64 of a marshaled TPM2B_PUBLIC, malloc'd; NULL on failure. */
char *tpm_b64_public(const TPM2B_PUBLIC *pub);
/* Base64 of a marshaled TPMT_SIGNATURE, malloc'd; NULL on failure. */
char *tpm_b64_signature(const TPMT_SIGNATURE *sig);
/* The public key of an RSA or ECC P-256 TPM object; NULL on failure and
 * for what a TPM does not make: an RSA modulus not of keyBits (2048 or
 * more) bits or even, an exponent even or 1, ECC coordinates not of 32
 * bytes or a point off the curve. */
EVP_PKEY *tpm_pkey_from_public(const TPMT_PUBLIC *p);
/* 1 when a quote's PCR selection a is the one asked for, b: the same
 * banks, sizes and bits (a lying TPM could quote others). */
int tpm_pcr_selection_same(const TPML_PCR_SELECTION *a,
                           const TPML_PCR_SELECTION *b);
/* Checks what the TPM signed before it goes out as veil's evidence: sig
 * is ECDSA-SHA256 by `signer` over info, which is a TPMS_ATTEST the TPM
 * made (magic) of `type`, with extraData `qualifying`, and for a
 * certification (name not NULL) of the object of that name.  *out: info
 * unmarshaled.  0, or -1 with err. */
int tpm_attest_check(EVP_PKEY *signer, const TPM2B_ATTEST *info,
                     const TPMT_SIGNATURE *sig, TPM2_ST type,
                     const uint8_t qualifying[32], const TPM2B_NAME *name,
                     TPMS_ATTEST *out, char *err, size_t err_size);

/* ---- tpm_ak.c ----------------------------------------------------------- */

/* Makes the EK (default template L-1) and keeps its public parts and a
 * saved context in t.  0, or -1 with err. */
int tpm_ek_make(gw_tpm *t, char *err, size_t err_size);
/* Reads the RSA EK certificate from NV into t (absent is not an error).
 * 0, or -1 with err. */
int tpm_ek_cert_read(gw_tpm *t, char *err, size_t err_size);
/* Warns when the certificate in NV is not for the EK we made. */
void tpm_ek_cert_check(gw_tpm *t);
/* An attestation key (restricted ECDSA P-256 signing primary in the
 * endorsement hierarchy) from the template's unique (the same unique, the
 * same key; NULL: random, a new key) with the auth value auth
 * (TPM_AK_AUTH_LEN bytes; NULL: random, known only to the loaded object),
 * made in the salted session t->sess[0] so that the auth value crosses to
 * the TPM encrypted.  0, or -1 with err. */
int tpm_ak_make(gw_tpm *t, const uint8_t *unique, const uint8_t *auth,
                ESYS_TR *ak, TPM2B_PUBLIC **pub, char *err, size_t err_size);
/* The name (nameAlg || H(TPMT_PUBLIC)) of a loaded object. */
int tpm_object_name(gw_tpm *t, ESYS_TR obj, TPM2B_NAME **name, char *err,
                    size_t err_size);

/* ---- tpm_quote.c -------------------------------------------------------- */

/* Reads the selected PCRs into values (selection order).  0, or -1. */
int tpm_pcr_read(gw_tpm *t, uint8_t (*values)[32], char *err, size_t err_size);
/* TPM2_Certify of obj by signer, in the salted HMAC sessions (obj's in
 * [0]: its auth value never crosses to the TPM, the qualifying data and
 * the answer encrypted), checked with tpm_attest_check (signer_key: the
 * signer's public key).  0, or -1 with err. */
int tpm_certify(gw_tpm *t, ESYS_TR obj, ESYS_TR signer, EVP_PKEY *signer_key,
                const uint8_t qualifying[32], TPM2B_ATTEST **info,
                TPMT_SIGNATURE **sig, char *err, size_t err_size);

/* ---- tpm_akstore.c ------------------------------------------------------ */

/* Reads state_dir/tpm-ak into *s: 0, 1 when there is none, -1 with err. */
int tpm_akstate_load(const char *dir, tpm_akstate *s, char *err,
                     size_t err_size);
/* Writes *s to state_dir/tpm-ak (atomically, 0600).  0, or -1 with err. */
int tpm_akstate_save(const char *dir, const tpm_akstate *s, char *err,
                     size_t err_size);
void tpm_akstate_free(tpm_akstate *s);
/* A new long-term AK certified by the one of *s, written to t->state_dir;
 * *s becomes the new state.  0, or -1 with err (*s unchanged). */
int tpm_ak_rotate(gw_tpm *t, tpm_akstate *s, char *err, size_t err_size);

#endif /* VEIL_TPM_INT_H */
