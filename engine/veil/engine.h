/* veil engine: every key operation through one interface.
 *
 * An application links libveil and includes only this header.  Keys are
 * opaque handles that name the provider holding them ("software" or
 * "pkcs11"); private-key operations always run in that provider, so a key
 * in a PKCS#11 token never leaves it.
 *
 * Conventions:
 *  - every function returns veil_rc (VEIL_OK == 0); results come back
 *    through out-parameters;
 *  - on failure, veil_last_error() describes it (per thread);
 *  - every *_new / *_open has a *_free that accepts NULL;
 *  - strings and buffers returned through out-parameters are owned by the
 *    caller and freed with free() unless said otherwise.
 *
 * Thread safety: one veil_engine and the veil_key handles it made may be
 * used from many threads at once, except that a key must not be freed or
 * deleted while another thread uses it, and veil_engine_free must run
 * alone.  See docs/ARCHITECTURE.md.
 */
#ifndef VEIL_ENGINE_H
#define VEIL_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ----------------------------------------------------------- */

/* Stable codes: the numbers never change meaning; new ones are appended. */
typedef enum veil_rc {
    VEIL_OK = 0,
    VEIL_E_ARG = 1,          /* invalid argument (NULL, bad size, bad syntax) */
    VEIL_E_NOMEM = 2,        /* out of memory */
    VEIL_E_UNSUPPORTED = 3,  /* mechanism, key type or size not available */
    VEIL_E_NOT_FOUND = 4,    /* no such key, token or module */
    VEIL_E_AMBIGUOUS = 5,    /* the reference matches more than one key */
    VEIL_E_MODULE = 6,       /* PKCS#11 module failed to load or initialise */
    VEIL_E_PIN = 7,          /* PIN or password incorrect */
    VEIL_E_PIN_LOCKED = 8,   /* token refuses the PIN: locked */
    VEIL_E_PIN_REQUIRED = 9, /* the token needs a PIN and none was given */
    VEIL_E_DECRYPT = 10,     /* ciphertext or tag rejected */
    VEIL_E_VERIFY = 11,      /* signature does not verify */
    VEIL_E_TOKEN = 12,       /* any other token failure (see provider_code) */
    VEIL_E_CRYPTO = 13,      /* any other crypto library failure */
    VEIL_E_IO = 14,          /* file could not be read or written */
    VEIL_E_EXISTS = 15,      /* a key with that label/id or file exists */
    VEIL_E_KEY = 16,         /* key malformed or wrong kind for the operation */
    VEIL_E_BUFFER = 17,      /* output buffer too small */
    VEIL_E_PROVIDER = 18     /* provider table rejected (ABI, missing slot) */
} veil_rc;

/* "VEIL_E_PIN" etc.; never NULL. */
const char *veil_rc_name(veil_rc rc);

typedef struct veil_error {
    veil_rc code;
    char provider[48];      /* "software", "pkcs11 (token)", "engine" */
    char provider_code[48]; /* e.g. "CKR_PIN_INCORRECT"; "" when none */
    char message[320];      /* one line, names the provider; never a secret */
} veil_error;

/* The last failure on the calling thread.  Never NULL; code is VEIL_OK
 * when nothing failed yet.  Valid until the thread's next veil call. */
const veil_error *veil_last_error(void);

/* ---- logging ---------------------------------------------------------- */

typedef enum veil_log_level {
    VEIL_LOG_ERROR = 0,
    VEIL_LOG_WARN = 1,
    VEIL_LOG_INFO = 2,
    VEIL_LOG_DEBUG = 3
} veil_log_level;

/* Log lines never contain keys, PINs or plaintext. */
typedef void (*veil_log_fn)(void *ctx, veil_log_level level, const char *line);

/* ---- secret memory ---------------------------------------------------- */

/* A buffer for keys, PINs, unwrapped secrets and plaintext: page-aligned,
 * locked in RAM (mlock) where the system allows, excluded from core dumps
 * (MADV_DONTDUMP) and zeroed on free. */
typedef struct veil_secbuf veil_secbuf;

veil_rc veil_secbuf_new(size_t len, veil_secbuf **out);
uint8_t *veil_secbuf_data(veil_secbuf *b);
size_t veil_secbuf_len(const veil_secbuf *b);
/* Shrinks the visible length (the tail is zeroed); never grows. */
void veil_secbuf_truncate(veil_secbuf *b, size_t len);
/* 1 when this buffer is locked in RAM. */
int veil_secbuf_locked(const veil_secbuf *b);
void veil_secbuf_free(veil_secbuf *b);

typedef struct veil_memory_status {
    int locking;        /* secret buffers are mlock()ed (probed) */
    int dontdump;       /* secret buffers are MADV_DONTDUMP */
    int zeroing;        /* always 1: buffers are wiped on free */
    int core_dumps_off; /* RLIMIT_CORE is 0 and the process is not dumpable */
    int secure_heap;    /* OpenSSL secure heap holds software private keys */
    unsigned long lock_failures; /* buffers that could not be locked so far */
} veil_memory_status;

void veil_memory_status_get(veil_memory_status *st);

/* Sets RLIMIT_CORE to 0 and PR_SET_DUMPABLE to 0.  For daemons. */
veil_rc veil_disable_core_dumps(void);

/* ---- PIN sources ------------------------------------------------------ */

/* A PIN never comes from argv.  Accepted specs:
 *   "file:/path"  first line of a file (must not be world-readable)
 *   "env:NAME"    an environment variable
 *   "prompt"      read from the terminal with echo off
 *   "credential:NAME"  first line of $CREDENTIALS_DIRECTORY/NAME (systemd
 *                 LoadCredential= / LoadCredentialEncrypted=)
 * (A PKCS#11 URI may carry pin-source=file:... ; pin-value is refused.) */
typedef enum veil_pin_kind {
    VEIL_PIN_NONE = 0,
    VEIL_PIN_FILE = 1,
    VEIL_PIN_ENV = 2,
    VEIL_PIN_PROMPT = 3,
    VEIL_PIN_CREDENTIAL = 4
} veil_pin_kind;

typedef struct veil_pin_source {
    veil_pin_kind kind;
    const char *where; /* path for FILE, variable name for ENV, the
                          credential's name for CREDENTIAL; borrowed */
} veil_pin_source;

/* Parses a spec; out->where points into spec. */
veil_rc veil_pin_source_parse(const char *spec, veil_pin_source *out);
/* Reads the PIN into a secret buffer (no trailing newline). */
veil_rc veil_pin_read(const veil_pin_source *src, const char *prompt,
                      veil_secbuf **pin);

/* ---- engine ----------------------------------------------------------- */

typedef struct veil_engine veil_engine;
typedef struct veil_key veil_key;

/* Routing: public-key and symmetric operations run in software unless one
 * of these asks for the token; a token that lacks the mechanism is skipped
 * with a debug log line saying so. */
#define VEIL_ENGINE_PUBLIC_IN_TOKEN (1u << 0)
#define VEIL_ENGINE_SYMMETRIC_IN_TOKEN (1u << 1)

typedef struct veil_engine_config {
    unsigned flags;
    /* PKCS#11 module used when a URI names none: a path to a .so or a
     * p11-kit module name ("softhsm2", "tpm2_pkcs11").  NULL: the module is
     * searched among p11-kit's registered modules by the URI's token. */
    const char *pkcs11_module;
    /* Token used for bare labels and for "pkcs11" with no attributes. */
    const char *default_token; /* e.g. "pkcs11:token=veil"; may be NULL */
    veil_pin_source pin;       /* PIN for tokens (and key-file password) */
    veil_log_fn log;           /* NULL: no log */
    void *log_ctx;
    veil_log_level log_level;
    /* OpenSSL secure heap for software private keys, bytes (power of two);
     * 0 means 1 MiB.  Process-wide; the first engine sets it. */
    size_t secure_heap;
    /* A directory (0700, the caller's) where a token's rejection of a PIN
     * is remembered across runs, so that PIN is never sent to that token
     * again: pin-rejected-SERIAL holds an HMAC-SHA256 of the PIN under a
     * random key kept in pin-memory.key (never the PIN); both 0600.  A
     * successful login removes the token's file.  NULL: remembered only
     * in memory, for the process (veild passes its state directory). */
    const char *pin_memory_dir;
} veil_engine_config;

veil_rc veil_engine_new(const veil_engine_config *cfg, veil_engine **out);
void veil_engine_free(veil_engine *e);

/* Called after each key operation the engine hands to a provider, with
 * the provider's table name ("software", "pkcs11"), the operation
 * ("rsa_decrypt", "rsa_encrypt", "ecdsa_sign", "ecdsa_verify",
 * "aes_gcm_seal", "aes_gcm_open", "hkdf_sha256", "random",
 * "ecdh_derive"), how long the provider took (seconds, monotonic clock)
 * and its result.  It runs in the thread of the operation: it must be
 * quick and thread-safe, and must not call the engine.  Refusals decided
 * before a provider is called (bad arguments) are not reported. */
typedef void (*veil_op_observer_fn)(void *ctx, const char *provider,
                                    const char *operation, double seconds,
                                    veil_rc rc);
/* Sets the observer (fn NULL: none).  Set it before the engine is shared
 * between threads; ctx must outlive the engine's use. */
void veil_engine_set_observer(veil_engine *e, veil_op_observer_fn fn,
                              void *ctx);

/* ---- capabilities ----------------------------------------------------- */

#define VEIL_CAP_RSA_GEN (1u << 0)
#define VEIL_CAP_RSA_OAEP_SHA256 (1u << 1) /* OAEP, MGF1: SHA-256 */
#define VEIL_CAP_RSA_OAEP_SHA1 (1u << 2)
#define VEIL_CAP_RSA_RAW (1u << 3) /* CKM_RSA_X_509 */
#define VEIL_CAP_EC_GEN (1u << 4)
#define VEIL_CAP_ECDSA (1u << 5)
#define VEIL_CAP_AES_GCM (1u << 6)
#define VEIL_CAP_HKDF (1u << 7)
#define VEIL_CAP_RANDOM (1u << 8)
#define VEIL_CAP_PERSIST (1u << 9) /* keys can outlive the process */
#define VEIL_CAP_ECDH (1u << 10)   /* ECDH P-256 derive (CKM_ECDH1_DERIVE) */

typedef struct veil_caps {
    unsigned mechs;        /* VEIL_CAP_* */
    unsigned rsa_min_bits; /* 0 when no RSA */
    unsigned rsa_max_bits;
    char provider[32];
    char description[128]; /* e.g. "SoftHSM 2.6 (SoftHSM project)" */
} veil_caps;

/* What the provider behind `where` does natively ("software", a PKCS#11
 * URI naming a token, or NULL for the default token). */
veil_rc veil_engine_caps(veil_engine *e, const char *where, veil_caps *caps);

/* ---- keys ------------------------------------------------------------- */

typedef enum veil_key_type {
    VEIL_KEY_RSA = 1,
    VEIL_KEY_EC_P256 = 2
} veil_key_type;

typedef void (*veil_progress_fn)(void *ctx);

typedef struct veil_keygen_params {
    veil_key_type type;
    unsigned bits;     /* RSA: 2048, 3072 or 4096 */
    const char *label; /* required in a token */
    const uint8_t *id; /* CKA_ID; NULL: 16 random bytes */
    size_t id_len;
    int session_only;          /* token: session object, gone at close */
    veil_progress_fn progress; /* called while a long generation runs */
    void *progress_ctx;
    /* EC: a key-agreement (KEM) key for ECDH, not a signing key: in a
     * token CKA_DERIVE true and CKA_SIGN false (one key, one purpose). */
    int derive;
} veil_keygen_params;

/* `where`: "software" (in memory) or a PKCS#11 URI naming the token
 * (NULL: the default token).  Token keys are private, sensitive and not
 * extractable. */
veil_rc veil_key_generate(veil_engine *e, const char *where,
                          const veil_keygen_params *p, veil_key **out);

/* Finds a key with a private half.  `ref`: a PKCS#11 URI (RFC 7512), a
 * key directory "dir:PATH" (NOMYO layout: private_key.pem), or a bare
 * label looked up in the default token. */
veil_rc veil_key_open(veil_engine *e, const char *ref, veil_key **out);

/* A public key for encrypting to and verifying with (software).  Accepts
 * SPKI DER or PEM. */
veil_rc veil_key_from_public(veil_engine *e, const uint8_t *data, size_t len,
                             veil_key **out);

void veil_key_free(veil_key *k);

typedef struct veil_key_info {
    veil_key_type type;
    unsigned bits;
    char provider[32];
    char label[128];
    char id_hex[129];
    char uri[512]; /* PKCS#11 URI of the private key, or "" */
    int has_private;
    int sensitive;        /* token: CKA_SENSITIVE; software: -1 */
    int extractable;      /* token: CKA_EXTRACTABLE; software: -1 */
    int persistent;       /* token object or saved file */
    char fingerprint[72]; /* "sha256:<64 hex>" of the SPKI DER */
} veil_key_info;

veil_rc veil_key_get_info(const veil_key *k, veil_key_info *info);

/* SPKI as DER (malloc'd) or PEM text (malloc'd, NUL-terminated). */
veil_rc veil_key_public_der(const veil_key *k, uint8_t **der, size_t *len);
veil_rc veil_key_public_pem(const veil_key *k, char **pem);
/* SHA-256 of the SPKI DER. */
veil_rc veil_key_fingerprint(const veil_key *k, uint8_t out[32]);

/* Calls cb for each key in `where` (a token URI, NULL for the default
 * token, or "dir:PATH").  cb returns non-zero to stop. */
typedef int (*veil_key_list_fn)(void *ctx, const veil_key_info *info);
veil_rc veil_key_list(veil_engine *e, const char *where, veil_key_list_fn cb,
                      void *ctx);

/* Destroys the key in its provider (token objects, or nothing for an
 * in-memory key) and frees the handle, also on failure. */
veil_rc veil_key_delete(veil_engine *e, veil_key *k);

/* Software keys only: writes DIR/private_key.pem (PKCS#8, encrypted with
 * AES-256-CBC/PBKDF2 when `password` is given) and DIR/public_key.pem,
 * both created 0600; refuses to overwrite. */
veil_rc veil_key_save(veil_engine *e, const veil_key *k, const char *dir,
                      const veil_pin_source *password);

/* ---- operations ------------------------------------------------------- */

typedef enum veil_hash {
    VEIL_HASH_SHA256 = 0,
    VEIL_HASH_SHA1 = 1 /* conformance and legacy tokens only */
} veil_hash;

/* OAEP parameters: hash and MGF1 hash are the same. NULL = SHA-256, empty
 * label, which is what the NOMYO protocol uses. */
typedef struct veil_oaep {
    veil_hash hash;
    const uint8_t *label;
    size_t label_len;
} veil_oaep;

/* *out_len: in, the size of out (at least the modulus size in bytes);
 * out, the ciphertext length. */
veil_rc veil_rsa_encrypt(veil_engine *e, const veil_key *pub,
                         const veil_oaep *oaep, const uint8_t *in,
                         size_t in_len, uint8_t *out, size_t *out_len);

/* The recovered message lands in a new secret buffer. */
veil_rc veil_rsa_decrypt(veil_engine *e, const veil_key *priv,
                         const veil_oaep *oaep, const uint8_t *in,
                         size_t in_len, veil_secbuf **out);

/* AES-GCM: key 32 bytes (16 and 24 accepted), any IV length >= 1 (the
 * protocol uses 12), 16-byte tag.  ct/pt are len bytes, caller-owned, and
 * may be the same buffer. */
#define VEIL_GCM_TAG_LEN 16
veil_rc veil_aes_gcm_seal(veil_engine *e, const uint8_t *key, size_t key_len,
                          const uint8_t *iv, size_t iv_len, const uint8_t *aad,
                          size_t aad_len, const uint8_t *pt, size_t len,
                          uint8_t *ct, uint8_t tag[VEIL_GCM_TAG_LEN]);
veil_rc veil_aes_gcm_open(veil_engine *e, const uint8_t *key, size_t key_len,
                          const uint8_t *iv, size_t iv_len, const uint8_t *aad,
                          size_t aad_len, const uint8_t *ct, size_t len,
                          const uint8_t tag[VEIL_GCM_TAG_LEN], uint8_t *pt);

/* ECDSA P-256 over SHA-256(msg); signatures are DER (at most 72 bytes). */
#define VEIL_ECDSA_SIG_MAX 72
veil_rc veil_ecdsa_sign(veil_engine *e, const veil_key *priv,
                        const uint8_t *msg, size_t len, uint8_t *sig,
                        size_t *sig_len);
veil_rc veil_ecdsa_verify(veil_engine *e, const veil_key *pub,
                          const uint8_t *msg, size_t len, const uint8_t *sig,
                          size_t sig_len);

/* HKDF-SHA256 (RFC 5869); out_len at most 255*32. */
veil_rc veil_hkdf_sha256(veil_engine *e, const uint8_t *salt, size_t salt_len,
                         const uint8_t *ikm, size_t ikm_len,
                         const uint8_t *info, size_t info_len, uint8_t *out,
                         size_t out_len);

/* HKDF-SHA256's two halves (RFC 5869 2.2 and 2.3), for protocols that
 * use them apart (HPKE, RFC 9180; Oblivious HTTP, RFC 9458).  Computed on
 * the host (OpenSSL's HKDF in EXTRACT_ONLY / EXPAND_ONLY mode).  Extract
 * writes the 32-byte PRK; an empty salt means 32 zero bytes.  Expand takes
 * a PRK of at least 32 bytes, info of at most 1024 bytes and writes
 * 1..8160 bytes. */
#define VEIL_HKDF_PRK_LEN 32
#define VEIL_HKDF_INFO_MAX 1024
veil_rc veil_hkdf_sha256_extract(veil_engine *e, const uint8_t *salt,
                                 size_t salt_len, const uint8_t *ikm,
                                 size_t ikm_len,
                                 uint8_t prk[VEIL_HKDF_PRK_LEN]);
veil_rc veil_hkdf_sha256_expand(veil_engine *e, const uint8_t *prk,
                                size_t prk_len, const uint8_t *info,
                                size_t info_len, uint8_t *out, size_t out_len);

/* ECDH (P-256) with a private key: the shared secret Z (the x-coordinate,
 * 32 bytes) of priv and the peer's public point, into a new secret buffer.
 * `peer` is the uncompressed SEC1 encoding (0x04 || X || Y, 65 bytes); it
 * is checked on the host before any token sees it (length, form, on the
 * curve, not infinity): a bad point is VEIL_E_ARG.  A private-key
 * operation: it runs where priv is held and nowhere else; a holder without
 * VEIL_CAP_ECDH gives VEIL_E_UNSUPPORTED. */
#define VEIL_ECDH_P256_POINT_LEN 65
#define VEIL_ECDH_P256_Z_LEN 32
veil_rc veil_ecdh_derive(veil_engine *e, const veil_key *priv,
                         const uint8_t *peer, size_t peer_len, veil_secbuf **z);

veil_rc veil_random(veil_engine *e, uint8_t *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* VEIL_ENGINE_H */
