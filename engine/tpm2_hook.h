/* engine/tpm2_hook.h: how the owner of a TPM connection shares it with the
 * tpm2 provider (providers/tpm2.c).  Internal to veil (not exported from
 * libveil.so); veild's TPM module is the one user.
 *
 * A TPM2_Certify by veild's attestation key can only name an object loaded
 * in the same ESYS context, and an ESYS context is not thread-safe: so the
 * module lends its context and the lock that guards it, and the provider's
 * `tpm2:` reference then makes its keys there, taking that lock around
 * every command.  Lend before the first use of `tpm2:` and withdraw (NULL,
 * NULL) before the context is finalized, with no tpm2 key left; both while
 * no other thread uses the engine. */
#ifndef VEIL_TPM2_HOOK_H
#define VEIL_TPM2_HOOK_H

#include <pthread.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "veil/engine.h"

#pragma GCC visibility push(hidden)

/* esys: an ESYS_CONTEXT * (void here: the engine does not see tpm2-tss). */
void veil_engine_tpm2_lend(veil_engine *e, void *esys, pthread_mutex_t *lock);

/* The ESYS_TR of k when k is a tpm2 key made in the lent context esys:
 * VEIL_OK, or VEIL_E_ARG (another provider, another context, or a key
 * already destroyed).  The caller holds the lock to use it. */
veil_rc veil_tpm2_key_object(const veil_key *k, const void *esys,
                             uint32_t *esys_tr);

/* The checks of the TPM's answers in providers/tpm2.c, apart for the
 * unit tests (tests/test_tpm2_provider.c).  The public area of a key the
 * TPM made: an ECC P-256 key with the attributes asked for and a point on
 * the curve (32-byte coordinates), its public key in *pkey; else
 * VEIL_E_PROVIDER. */
struct TPM2B_PUBLIC;
veil_rc veil_tpm2_check_public(const struct TPM2B_PUBLIC *pub, EVP_PKEY **pkey);
/* Z from TPM2_ECDH_ZGen's answer: its x-coordinate, when the answer is a
 * P-256 point with 32-byte coordinates; else VEIL_E_PROVIDER. */
struct TPM2B_ECC_POINT;
veil_rc veil_tpm2_z(const struct TPM2B_ECC_POINT *out, veil_secbuf **z);

#pragma GCC visibility pop

#endif /* VEIL_TPM2_HOOK_H */
