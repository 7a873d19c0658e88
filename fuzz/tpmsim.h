/* TPM 2.0 structures made in software for the fuzzing harnesses and the
 * seed generator: a stand-in for a TPM (no TPM is involved, nothing here
 * proves anything), so that a harness can sign the TPMS_ATTEST bytes the
 * fuzzer gives it and reach the checks behind the signature in
 * protocol/tpm.c.  All outputs are marshaled (TPM 2.0 Part 2 canonical
 * form); each function returns 1 on success, 0 on failure. */
#ifndef VEIL_FUZZ_TPMSIM_H
#define VEIL_FUZZ_TPMSIM_H

#include <stddef.h>
#include <stdint.h>

#include "evidence.h"
#include "veil/engine.h"

/* What the seeds and the harness agree on. */
#define FSIM_QUALIFYING_TEXT "veil-fuzz-qualifying"
#define FSIM_PCRS "sha256:0,7,10"
/* attributes of an attestation key and of an endorsement key */
#define FSIM_AK_ATTRS                                                          \
    (VEIL_TPMA_FIXEDTPM | VEIL_TPMA_FIXEDPARENT |                              \
     VEIL_TPMA_SENSITIVEDATAORIGIN | VEIL_TPMA_RESTRICTED | VEIL_TPMA_SIGN)
#define FSIM_EK_ATTRS                                                          \
    (VEIL_TPMA_FIXEDTPM | VEIL_TPMA_FIXEDPARENT |                              \
     VEIL_TPMA_SENSITIVEDATAORIGIN | VEIL_TPMA_RESTRICTED | VEIL_TPMA_DECRYPT)

/* SHA-256 of FSIM_QUALIFYING_TEXT: the qualifying data of every seed. */
void fsim_qualifying(uint8_t out[32]);
/* The PCR values the seeds' quotes cover: PCR i holds 32 bytes of i. */
void fsim_pcr_values(const veil_pcr_sel *sel, uint8_t (*values)[32]);

/* TPM2B_PUBLIC of key k (RSA 2048..4096 or ECC P-256) with the given
 * TPMA_OBJECT attributes, nameAlg SHA-256; restricted decryption keys get
 * AES-128-CFB as their symmetric algorithm, signing keys ECDSA/RSASSA
 * with SHA-256. */
int fsim_public(const veil_key *k, uint32_t attrs, uint8_t *out, size_t cap,
                size_t *len);
/* TPMT_SIGNATURE (ECDSA, SHA-256) over msg by the P-256 key ak. */
int fsim_sign(veil_engine *e, const veil_key *ak, const uint8_t *msg,
              size_t len, uint8_t *out, size_t cap, size_t *out_len);
/* TPMS_ATTEST of a quote (type TPM_ST_ATTEST_QUOTE) over sel with
 * pcrDigest SHA-256 of the values; or of a certification (name != NULL:
 * TPM_ST_ATTEST_CERTIFY of the object with that 34-byte name). */
int fsim_attest(const uint8_t qualifying[32], const veil_pcr_sel *sel,
                const uint8_t (*values)[32], const uint8_t *name, uint8_t *out,
                size_t cap, size_t *len);

#endif /* VEIL_FUZZ_TPMSIM_H */
