/* engine/engine_int.h: engine internals shared by the engine, the
 * providers and protocol/.  Not installed.  The helpers every layer shares
 * (wipe, hex, UUID, logger) are in util.h, which this header includes. */
#ifndef VEIL_ENGINE_INT_H
#define VEIL_ENGINE_INT_H

#include <pthread.h>
#include <openssl/evp.h>

#include "provider.h"
#include "util.h"

/* Nothing declared here is exported from libveil.so. */
#pragma GCC visibility push(hidden)

#define VEIL_MAX_PROVIDERS 16

/* A provider instance: one table, bound to one place (the software
 * provider, or one token of one PKCS#11 module). */
struct veil_provider {
    const veil_provider_ops *ops;
    veil_engine *engine;
    void *state;    /* ops->state_size bytes, zeroed, owned by the engine */
    veil_caps caps; /* static caps narrowed by open() */
    char id[256];   /* identity used to reuse instances */
};

struct veil_engine {
    veil_engine_config cfg;
    char *pkcs11_module; /* owned copies of cfg strings */
    char *default_token;
    char *pin_where;
    char *pin_memory_dir;
    pthread_mutex_t lock; /* guards providers[] */
    veil_provider *providers[VEIL_MAX_PROVIDERS];
    size_t n_providers;
    veil_provider *software;             /* always present */
    veil_provider *_Atomic default_prov; /* default token, once opened */
    const veil_provider_ops *extra_ops;  /* test hook: see engine_test_hooks */
    veil_op_observer_fn observe;         /* veil_engine_set_observer */
    void *observe_ctx;
    void *tpm2_esys;            /* lent ESYS context (tpm2_hook.h) or NULL */
    pthread_mutex_t *tpm2_lock; /* the lock that guards it */
};

struct veil_key {
    veil_provider *prov; /* provider holding the key; software for public */
    EVP_PKEY *pub;       /* public half, always present */
    veil_key_type type;
    unsigned bits;
    int has_private;
    int persistent;
    char label[128];
    uint8_t id[64];
    size_t id_len;
    void *state; /* prov->ops->key_state_size bytes */
};

/* ---- errors (error.c) ------------------------------------------------- */

/* Records the thread's last error and returns rc.  `provider` names the
 * layer ("engine", "software", "pkcs11"), `pcode` the provider's own code
 * (a CKR_ name, an OpenSSL reason) or NULL.  Also logs it at debug level
 * through the engine when e is given. */
veil_rc veil_err(veil_rc rc, const char *provider, const char *pcode,
                 const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Same, with the OpenSSL error queue's first reason as pcode (and the
 * queue cleared). */
veil_rc veil_err_ossl(veil_rc rc, const char *provider, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void veil_err_clear(void);

/* ---- logging (error.c) ------------------------------------------------ */

void veil_log(const veil_engine *e, veil_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- secret memory (secmem.c) ----------------------------------------- */

/* Initialises the OpenSSL secure heap once (process-wide). */
void veil_secmem_init(size_t secure_heap);

/* ---- OAEP (oaep.c) ---------------------------------------------------- */

/* Constant-time EME-OAEP decoding (RFC 8017 7.1.2 steps 3-4) of the k-byte
 * encoded message em (the raw RSA output).  On success writes the message
 * to a new secret buffer.  Failure is VEIL_E_DECRYPT with one fixed
 * message, whatever the reason. */
veil_rc veil_oaep_decode(const veil_oaep *oaep, const uint8_t *em, size_t k,
                         veil_secbuf **out);
/* The same, in place: buf holds the k-byte EM and, on success, the message
 * (truncated to its length); on failure it is wiped. */
veil_rc veil_oaep_decode_inplace(const veil_oaep *oaep, veil_secbuf *buf);
const EVP_MD *veil_oaep_md(const veil_oaep *oaep);
/* The capability bit for native OAEP with this hash (NULL: SHA-256). */
/* Right-aligns the n bytes at d[0..n) in d[0..k), zero-filling the left
 * (n <= k).  Constant time in n: a token's raw RSA output may have lost its
 * leading zero bytes, and how many tells whether the OAEP encoding's first
 * byte was zero, the bit Manger's attack needs. */
void veil_ct_right_align(uint8_t *d, size_t n, size_t k);
unsigned veil_oaep_cap(const veil_oaep *oaep);

/* ---- helpers (engine.c) ----------------------------------------------- */

/* The observer's clock around a provider call: start gives the time (0
 * without an observer, and no clock is read), done reports the operation
 * and returns rc. */
double veil_op_start(const veil_engine *e);
veil_rc veil_op_done(const veil_engine *e, const veil_provider *p,
                     const char *operation, double t0, veil_rc rc);

/* A new HKDF context with SHA-256 set, from one fetched once per process
 * (ecdh.c); NULL when OpenSSL has no HKDF.  EVP_KDF_CTX_free it. */
EVP_KDF_CTX *veil_hkdf_sha256_ctx(void);

/* SPKI DER of an EVP_PKEY (malloc'd). */
veil_rc veil_spki_der(EVP_PKEY *pkey, uint8_t **der, size_t *len);
/* Common key_info fields from the key itself. */
void veil_key_info_base(const veil_key *k, veil_key_info *info);

/* Test hook: an extra provider table tried before the registry.  Lets the
 * tests plug a mock provider in to exercise dispatch and error paths. */
void veil_engine_test_set_extra_provider(veil_engine *e,
                                         const veil_provider_ops *ops);

#pragma GCC visibility pop

#endif /* VEIL_ENGINE_INT_H */
