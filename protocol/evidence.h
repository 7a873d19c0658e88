/* Evidence formats of veil's attestation extension (docs/ATTESTATION.md):
 * the bytes a TPM quote's qualifying data and an answer signature cover,
 * and the software side of TPM 2.0 structures a verifier needs (public
 * areas, names, quotes, certifications, MakeCredential).  Used by the
 * gateway (to make evidence) and the client (to check it); no TPM is
 * needed for anything here.  Internal to libveil; not installed.
 *
 * TPM structures travel marshaled exactly as the TPM produced them
 * (TPM 2.0 Part 2 canonical big-endian form): a public area as TPM2B_PUBLIC,
 * a quote or certification as the TPMS_ATTEST bytes (the contents of
 * TPM2B_ATTEST, without its size), a signature as TPMT_SIGNATURE. */
#ifndef VEIL_EVIDENCE_H
#define VEIL_EVIDENCE_H

#include <stddef.h>
#include <stdint.h>

#include "veil/engine.h"

#pragma GCC visibility push(hidden)

/* ---- what is signed and quoted ---------------------------------------- */

/* Domain labels: each is hashed with a trailing NUL byte. */
#define VEIL_EV_ANSWER_QUOTE_LABEL "veil-answer-quote-v2"
#define VEIL_EV_REPORT_QUOTE_LABEL "veil-report-quote-v1"
#define VEIL_EV_STATEMENT_HEAD "veil-response-signature-v1"
#define VEIL_EV_AK_HANDOVER_LABEL "veil-ak-handover-v1"
#define VEIL_EV_KEM_CERTIFY_LABEL "veil-kem-certify-v1"

/* Report nonces: 16 to 64 bytes (32 to 128 hex digits). */
#define VEIL_EV_NONCE_MIN 16
#define VEIL_EV_NONCE_MAX 64

/* Qualifying data (TPM2_Quote extraData) of the quote in an answer:
 *   SHA-256( "veil-answer-quote-v2" 0x00 || payload_id (1 to 128 ASCII bytes)
 *            || request_sha256 || encryption_key_sha256
 *            || signing_key_sha256 || backend_sha256 )
 * where request_sha256 is SHA-256 of the request body as sent, the key
 * hashes are SHA-256 of each key's SubjectPublicKeyInfo DER, and
 * backend_sha256 is SHA-256 of the backend statement (backend.h), each as
 * its raw 32 bytes (never hex).  A gateway without a signing key uses 32
 * zero bytes for its hash. */
void veil_ev_answer_qualifying(const char *payload_id,
                               const uint8_t request_sha256[32],
                               const uint8_t encryption_key_sha256[32],
                               const uint8_t signing_key_sha256[32],
                               const uint8_t backend_sha256[32],
                               uint8_t out[32]);

/* Qualifying data of the quote in GET /v1/attestation/report:
 *   SHA-256( "veil-report-quote-v1" 0x00 || nonce || encryption_key_sha256
 *            || signing_key_sha256 ) */
void veil_ev_report_qualifying(const uint8_t *nonce, size_t nonce_len,
                               const uint8_t encryption_key_sha256[32],
                               const uint8_t signing_key_sha256[32],
                               uint8_t out[32]);

/* Qualifying data of the TPM2_Certify by which a previous long-term AK
 * hands over to a new one (ak_handover in a report):
 *   SHA-256( "veil-ak-handover-v1" 0x00 || name of the new AK )
 * the name as its raw bytes (nameAlg || digest). */
void veil_ev_handover_qualifying(const uint8_t *new_name, size_t len,
                                 uint8_t out[32]);

/* Qualifying data of the TPM2_Certify of a protocol v2 KEM key by the
 * long-term AK (GET /v2/keys/certify, docs/PROTOCOL-V2.md 4.4):
 *   SHA-256( "veil-kem-certify-v1" 0x00 || key_id (1 byte) || pk )
 * pk the key configuration's public key (65 bytes, uncompressed P-256). */
void veil_ev_kem_certify_qualifying(uint8_t key_id, const uint8_t *pk,
                                    size_t pk_len, uint8_t out[32]);

/* The statement an answer signature covers (ECDSA P-256, SHA-256, DER),
 * as text, each line ended by "\n":
 *   veil-response-signature-v1
 *   payload_id=<uuid>
 *   security_tier=<standard|high|maximum>
 *   request_sha256=<64 lowercase hex>
 *   response_sha256=<64 lowercase hex>
 *   signing_key_sha256=<64 lowercase hex>
 *   signed_at=<decimal Unix seconds>
 * Written into out (NUL-terminated); returns its length, or 0 when out is
 * too small (VEIL_EV_STATEMENT_MAX always suffices) or an argument is bad
 * (payload_id not one by veil_payload_id_valid, tier with a character outside
 * [a-z]). */
#define VEIL_EV_STATEMENT_MAX 512
size_t veil_ev_statement(const char *payload_id, const char *tier,
                         const uint8_t request_sha256[32],
                         const uint8_t response_sha256[32],
                         const uint8_t signing_key_sha256[32],
                         long long signed_at, char *out, size_t out_size);

/* ---- PCR selections ---------------------------------------------------- */

#define VEIL_EV_MAX_PCRS 24

/* One SHA-256 bank and its PCR indices, ascending, no repeats. */
typedef struct veil_pcr_sel {
    unsigned n;
    unsigned index[VEIL_EV_MAX_PCRS];
} veil_pcr_sel;

/* Parses "sha256:0,7,10" (only the sha256 bank is supported; indices
 * 0..23, any order, no repeats; stored ascending).  Prints it back in
 * canonical form with veil_pcr_sel_format (out at least 96 bytes).
 * VEIL_E_ARG with veil_last_error() saying what is wrong. */
veil_rc veil_pcr_sel_parse(const char *text, veil_pcr_sel *out);
void veil_pcr_sel_format(const veil_pcr_sel *sel, char *out, size_t size);

/* ---- TPM 2.0 structures, checked in software -------------------------- */

/* TPMA_OBJECT bits a verifier asks for. */
#define VEIL_TPMA_FIXEDTPM 0x00000002u
#define VEIL_TPMA_FIXEDPARENT 0x00000010u
#define VEIL_TPMA_SENSITIVEDATAORIGIN 0x00000020u
#define VEIL_TPMA_RESTRICTED 0x00010000u
#define VEIL_TPMA_DECRYPT 0x00020000u
#define VEIL_TPMA_SIGN 0x00040000u

/* A TPM object's public area, parsed. */
typedef struct veil_tpm_pub {
    uint16_t type;           /* TPM2_ALG_RSA 0x0001 or TPM2_ALG_ECC 0x0023 */
    uint16_t name_alg;       /* must be TPM2_ALG_SHA256 0x000B */
    uint32_t attributes;     /* TPMA_OBJECT */
    uint8_t name[34];        /* nameAlg (2 bytes, big-endian) || SHA-256 */
    uint8_t spki_sha256[32]; /* SHA-256 of the SPKI DER of the same key */
    veil_key *key;           /* the public key, for veil_* operations */
} veil_tpm_pub;

/* Parses a marshaled TPM2B_PUBLIC (RSA 2048..4096 with exponent 65537, or
 * ECC NIST P-256; nameAlg SHA-256) and computes its name.  The key is made
 * with veil_key_from_public in engine e.  VEIL_E_ARG on anything else. */
veil_rc veil_tpm_pub_parse(veil_engine *e, const uint8_t *tpm2b_public,
                           size_t len, veil_tpm_pub *out);
void veil_tpm_pub_clear(veil_tpm_pub *p);

/* Checks a TPM2_Quote made by the attestation key ak:
 *   - ak has attributes restricted|sign|fixedTPM|fixedParent|
 *     sensitiveDataOrigin and is ECC P-256 or RSA;
 *   - sig (TPMT_SIGNATURE, ECDSA-SHA256 or RSASSA-SHA256) verifies over
 *     SHA-256(attest) under ak;
 *   - attest has magic TPM_GENERATED_VALUE and type TPM_ST_ATTEST_QUOTE;
 *   - its extraData is exactly `qualifying` (32 bytes);
 *   - its PCR selection is exactly sel in the sha256 bank;
 *   - its pcrDigest is SHA-256 of the concatenated `pcr_values`
 *     (sel->n values of 32 bytes, in sel's ascending order).
 * VEIL_OK, VEIL_E_VERIFY (signature, qualifying data or PCR digest wrong)
 * or VEIL_E_ARG (not parseable, wrong attributes or selection), with
 * veil_last_error() naming the check that failed. */
veil_rc veil_tpm_check_quote(veil_engine *e, const veil_tpm_pub *ak,
                             const uint8_t *attest, size_t attest_len,
                             const uint8_t *sig, size_t sig_len,
                             const uint8_t qualifying[32],
                             const veil_pcr_sel *sel,
                             const uint8_t (*pcr_values)[32]);

/* Checks a TPM2_Certify by signer of the object whose public area is
 * `certified`: signer's attributes as for a quote, the signature, magic,
 * type TPM_ST_ATTEST_CERTIFY, extraData == qualifying, the certified name
 * == certified->name, and certified->attributes contain `required`
 * (e.g. VEIL_TPMA_FIXEDTPM | VEIL_TPMA_SENSITIVEDATAORIGIN).  Same return
 * values as veil_tpm_check_quote. */
veil_rc veil_tpm_check_certify(veil_engine *e, const veil_tpm_pub *signer,
                               const uint8_t *attest, size_t attest_len,
                               const uint8_t *sig, size_t sig_len,
                               const uint8_t qualifying[32],
                               const veil_tpm_pub *certified,
                               uint32_t required);

/* TPM2_MakeCredential in software (TPM 2.0 Part 1, 24.4; Part 3, 12.6):
 * protects `secret` (1..32 bytes) for the object named `name` under the
 * RSA endorsement key ek (seed 32 random bytes wrapped with RSA-OAEP
 * SHA-256, label "IDENTITY\0"; KDFa SHA-256; AES-128-CFB; HMAC-SHA256).
 * Writes the marshaled TPM2B_ID_OBJECT to blob and TPM2B_ENCRYPTED_SECRET
 * to enc_secret; *blob_len and *enc_len are in: capacity, out: length
 * (514 bytes each suffice for EKs up to RSA-4096). */
veil_rc veil_tpm_make_credential(veil_engine *e, const veil_tpm_pub *ek,
                                 const uint8_t *name, size_t name_len,
                                 const uint8_t *secret, size_t secret_len,
                                 uint8_t *blob, size_t *blob_len,
                                 uint8_t *enc_secret, size_t *enc_len);

#pragma GCC visibility pop

#endif /* VEIL_EVIDENCE_H */
