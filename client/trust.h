/* client/trust.h: the trust file (trust.c), as answer verification
 * (verify.c) reads it.  Not installed; the public part is veil/attest.h
 * (veil_trust_load, veil_trust_free, veil_trust_url).
 *
 * Layering (docs/ARCHITECTURE.md): trust.c uses tpmobj.c and
 * client_int.h; it never calls verify.c, enroll.c, keys.c or client.c. */
#ifndef VEIL_CLIENT_TRUST_H
#define VEIL_CLIENT_TRUST_H

#include "tpmobj.h"

#pragma GCC visibility push(hidden)

#define VEIL_CL_TRUST_FORMAT "veil-trust-v1"

/* A loaded trust file; every key in it was checked when it was loaded. */
struct veil_trust {
    char *url; /* no trailing slash */
    long long enrolled_at;
    int ek_verified, software_tpm, has_ek_cert;
    int kem_tpm; /* enrolled with v2 KEM keys in the TPM ("kem_keys") */
    uint8_t ek_cert_sha256[32];
    uint8_t *ek_pub, *ak_pub, *sign_spki; /* as in the file, checked */
    size_t ek_pub_len, ak_pub_len, sign_spki_len;
    uint8_t ak_name[VEIL_CL_NAME_LEN];
    uint8_t enc_sha[32];
    uint8_t sign_sha[32];
    veil_pcr_sel sel;
    uint8_t golden[VEIL_EV_MAX_PCRS][32];
};

/* The enrolled encryption key's SPKI SHA-256: the client refuses to seal
 * to any other key of the enrolled gateway. */
const uint8_t *veil_cl_trust_encryption_key(const veil_trust *t);

/* Writes text and a newline to path (mode 0644): a temporary file next
 * to it, then renamed over it (or, without overwrite, linked, which fails
 * when the target appeared meanwhile), so a reader never sees half a
 * file.  0 on failure, with the step that failed and errno. */
int veil_cl_write_atomic(const char *path, const char *text, int overwrite,
                         const char **step);

/* Rewrites the trust file at path for a followed AK hand-over: its
 * aik_pubkey_b64 and aik_name become the new AK's, and
 * "ak_handover_followed" records the previous name and the time (now);
 * every other member, the PCR policy included, is kept as it is.  Only
 * when the file still names `previous`.  Atomic (veil_cl_write_atomic).
 * 1, or 0 with why. */
int veil_cl_trust_set_ak(const char *path, const char *ak_pub_b64,
                         const uint8_t name[VEIL_CL_NAME_LEN],
                         const uint8_t previous[VEIL_CL_NAME_LEN],
                         long long now, char *why, size_t why_size);

#pragma GCC visibility pop

#endif /* VEIL_CLIENT_TRUST_H */
