/* HPKE (RFC 9180), base mode, for protocol v2 (docs/PROTOCOL-V2.md).
 *
 * Suites: KEM DHKEM(P-256, HKDF-SHA256) (0x0010), the mandatory one, and
 * DHKEM(X25519, HKDF-SHA256) (0x0020) for software keys; KDF HKDF-SHA256
 * (0x0001); AEAD AES-128-GCM (0x0001), AES-256-GCM (0x0002) and
 * export-only (0xFFFF).
 *
 * A recipient's P-256 private key may be any engine key (a token key
 * included): its Diffie-Hellman runs through veil_ecdh_derive in the
 * provider holding it.  Everything else (the key schedule, the AEAD, the
 * sender's ephemeral key, X25519) runs on the host through the engine.
 * No HTTP here: Oblivious HTTP framing is in ohttp.h.  Internal to
 * libveil; not installed.
 *
 * Errors: veil_rc and veil_last_error(), as the engine.  Opening fails
 * with VEIL_E_DECRYPT and one message whatever the cause. */
#ifndef VEIL_HPKE_H
#define VEIL_HPKE_H

#include <stddef.h>
#include <stdint.h>

#include "veil/engine.h"

#pragma GCC visibility push(hidden)

#define VEIL_HPKE_KEM_P256 0x0010
#define VEIL_HPKE_KEM_X25519 0x0020
#define VEIL_HPKE_KDF_SHA256 0x0001
#define VEIL_HPKE_AEAD_AES128GCM 0x0001
#define VEIL_HPKE_AEAD_AES256GCM 0x0002
#define VEIL_HPKE_AEAD_EXPORT_ONLY 0xFFFF

#define VEIL_HPKE_ENC_MAX 65 /* Nenc of P-256; X25519's is 32 */
#define VEIL_HPKE_TAG_LEN 16 /* Nt of both AES-GCM suites */
#define VEIL_HPKE_KEY_MAX 32 /* largest Nk */
#define VEIL_HPKE_NONCE_LEN 12

typedef struct veil_hpke_suite {
    uint16_t kem, kdf, aead;
} veil_hpke_suite;

/* VEIL_OK when veil implements the suite; VEIL_E_UNSUPPORTED naming the
 * identifier otherwise. */
veil_rc veil_hpke_suite_check(const veil_hpke_suite *s);

/* Sizes from RFC 9180 section 7; 0 for an identifier veil does not know.
 * Npk == Nenc for both KEMs. */
size_t veil_hpke_nenc(uint16_t kem);
size_t veil_hpke_nsk(uint16_t kem);
size_t veil_hpke_nk(uint16_t aead);
size_t veil_hpke_nn(uint16_t aead);

/* ---- recipient keys --------------------------------------------------- */

typedef struct veil_hpke_key veil_hpke_key;

/* A P-256 private key of the engine (software, token): DHKEM(P-256).  k
 * is borrowed and must outlive the result. */
veil_rc veil_hpke_key_from_engine(const veil_key *k, veil_hpke_key **out);
/* DeriveKeyPair(ikm) (RFC 9180 7.1.3), in software. */
veil_rc veil_hpke_key_derive(veil_engine *e, uint16_t kem, const uint8_t *ikm,
                             size_t ikm_len, veil_hpke_key **out);
/* DeserializePrivateKey (7.1.2), in software: a 32-byte scalar. */
veil_rc veil_hpke_key_from_private(uint16_t kem, const uint8_t *sk,
                                   size_t sk_len, veil_hpke_key **out);
/* A new random key pair in software (GenerateKeyPair). */
veil_rc veil_hpke_key_generate(uint16_t kem, veil_hpke_key **out);
uint16_t veil_hpke_key_kem(const veil_hpke_key *k);
/* SerializePublicKey: *len in, the room (at least Npk); out, Npk. */
veil_rc veil_hpke_key_public(const veil_hpke_key *k, uint8_t *pk, size_t *len);
/* SerializePrivateKey, software keys only (a token key never leaves). */
veil_rc veil_hpke_key_private(const veil_hpke_key *k, uint8_t *sk, size_t *len);
void veil_hpke_key_free(veil_hpke_key *k);

/* ---- contexts --------------------------------------------------------- */

typedef struct veil_hpke_ctx veil_hpke_ctx;

/* SetupBaseS(pkR, info): enc goes to enc (room *enc_len >= Nenc; out,
 * Nenc).  eph: the ephemeral key pair to use (test vectors); NULL makes a
 * fresh one, as every real use must. */
veil_rc veil_hpke_setup_base_s(veil_engine *e, const veil_hpke_suite *s,
                               const uint8_t *pkR, size_t pkR_len,
                               const uint8_t *info, size_t info_len,
                               const veil_hpke_key *eph, uint8_t *enc,
                               size_t *enc_len, veil_hpke_ctx **out);
/* SetupBaseR(enc, skR, info). */
veil_rc veil_hpke_setup_base_r(veil_engine *e, const veil_hpke_suite *s,
                               const veil_hpke_key *skR, const uint8_t *enc,
                               size_t enc_len, const uint8_t *info,
                               size_t info_len, veil_hpke_ctx **out);

/* Seal: ct gets pt_len + 16 bytes (ciphertext || tag).  Open: pt gets
 * ct_len - 16 bytes.  Each success advances the sequence number; a failed
 * Open does not. */
veil_rc veil_hpke_seal(veil_engine *e, veil_hpke_ctx *c, const uint8_t *aad,
                       size_t aad_len, const uint8_t *pt, size_t pt_len,
                       uint8_t *ct);
veil_rc veil_hpke_open(veil_engine *e, veil_hpke_ctx *c, const uint8_t *aad,
                       size_t aad_len, const uint8_t *ct, size_t ct_len,
                       uint8_t *pt);
/* Export(exporter_context, L): L in 1..8160, context at most 512 bytes. */
veil_rc veil_hpke_export(veil_engine *e, const veil_hpke_ctx *c,
                         const uint8_t *exp_ctx, size_t exp_ctx_len,
                         uint8_t *out, size_t len);
const veil_hpke_suite *veil_hpke_ctx_suite(const veil_hpke_ctx *c);
/* Wipes and frees; accepts NULL. */
void veil_hpke_ctx_free(veil_hpke_ctx *c);

#pragma GCC visibility pop

#endif /* VEIL_HPKE_H */
