/* The provider interface: one const table per provider.
 *
 * Adding a provider = one file defining a `const veil_provider_ops` and one
 * line in providers/registry.c.  Rules (checked in engine.c, the only file
 * that looks at optional slots):
 *  - abi must equal VEIL_PROVIDER_ABI and ops_size must cover every slot
 *    the engine reads; new slots are only ever appended;
 *  - designated initialisers only; optional slots may be NULL;
 *  - every method takes the provider instance first; the engine allocates
 *    `state_size` bytes of private state (p->state) and `key_state_size`
 *    bytes per key (k->state) and frees them.
 */
#ifndef VEIL_PROVIDER_H
#define VEIL_PROVIDER_H

#include "veil/engine.h"

#define VEIL_PROVIDER_ABI 1

typedef struct veil_provider veil_provider;
typedef struct veil_provider_ops veil_provider_ops;

struct veil_provider_ops {
    uint32_t abi;
    size_t ops_size;
    const char *name;     /* "software", "pkcs11" */
    unsigned static_caps; /* VEIL_CAP_* before narrowing */
    size_t state_size;
    size_t key_state_size;

    /* 1 when `where` is addressed to this provider ("software", "dir:",
     * "pkcs11:" ...). Required. */
    int (*claims)(const char *where);
    /* Identity of the instance that serves `where` (e.g. module + token
     * for PKCS#11), so one instance serves every URI on the same token.
     * Optional: NULL means one instance per provider. */
    veil_rc (*instance_id)(const veil_engine *e, const char *where, char *id,
                           size_t id_size);
    /* Bind an instance to `where`; fill p->caps (narrowed to what is really
     * there) and p->id (a stable identity for instance reuse).  Required. */
    veil_rc (*open)(veil_provider *p, const char *where);
    void (*close)(veil_provider *p); /* required */

    /* Keys.  A provider fills k->pub (EVP_PKEY with the public half),
     * k->type, k->bits, label/id and k->state.  */
    veil_rc (*key_generate)(veil_provider *p, const veil_keygen_params *kp,
                            veil_key *k);
    veil_rc (*key_open)(veil_provider *p, const char *ref, veil_key *k);
    veil_rc (*key_list)(veil_provider *p, const char *where,
                        veil_key_list_fn cb, void *ctx);
    veil_rc (*key_delete)(veil_provider *p, veil_key *k);
    void (*key_release)(veil_provider *p, veil_key *k); /* optional */
    veil_rc (*key_info)(veil_provider *p, const veil_key *k,
                        veil_key_info *info); /* optional extras */

    /* Private-key operations (required when the provider holds keys). */
    veil_rc (*rsa_decrypt)(veil_provider *p, const veil_key *k,
                           const veil_oaep *oaep, const uint8_t *in,
                           size_t in_len, veil_secbuf **out);
    veil_rc (*ecdsa_sign)(veil_provider *p, const veil_key *k,
                          const uint8_t *msg, size_t len, uint8_t *sig,
                          size_t *sig_len);

    /* Public and symmetric operations (optional; routed here only when the
     * engine is configured to use the token and caps say so). */
    veil_rc (*rsa_encrypt)(veil_provider *p, const veil_key *pub,
                           const veil_oaep *oaep, const uint8_t *in,
                           size_t in_len, uint8_t *out, size_t *out_len);
    veil_rc (*ecdsa_verify)(veil_provider *p, const veil_key *pub,
                            const uint8_t *msg, size_t len, const uint8_t *sig,
                            size_t sig_len);
    veil_rc (*aes_gcm)(veil_provider *p, int encrypt, const uint8_t *key,
                       size_t key_len, const uint8_t *iv, size_t iv_len,
                       const uint8_t *aad, size_t aad_len, const uint8_t *in,
                       size_t len, uint8_t *out, uint8_t *tag);
    veil_rc (*hkdf_sha256)(veil_provider *p, const uint8_t *salt,
                           size_t salt_len, const uint8_t *ikm, size_t ikm_len,
                           const uint8_t *info, size_t info_len, uint8_t *out,
                           size_t out_len);
    veil_rc (*random)(veil_provider *p, uint8_t *buf, size_t len);

    /* Software only: persist a key (optional). */
    veil_rc (*key_save)(veil_provider *p, const veil_key *k, const char *dir,
                        const veil_pin_source *password);

    /* ECDH with the private EC P-256 key k (VEIL_CAP_ECDH): the shared
     * secret Z, the x-coordinate of k * peer, 32 bytes, into a new secret
     * buffer.  `peer` is an uncompressed point (65 bytes) that the engine
     * has already checked (on the curve, not infinity). */
    veil_rc (*ecdh_derive)(veil_provider *p, const veil_key *k,
                           const uint8_t *peer, size_t peer_len,
                           veil_secbuf **z);
};

/* Not exported from libveil.so. */
#pragma GCC visibility push(hidden)

/* The registry (providers/registry.c): NULL-terminated. */
extern const veil_provider_ops *const veil_provider_registry[];

/* Built-in providers. */
extern const veil_provider_ops veil_provider_software;
extern const veil_provider_ops veil_provider_pkcs11;
extern const veil_provider_ops veil_provider_tpm2;

#pragma GCC visibility pop

#endif /* VEIL_PROVIDER_H */
