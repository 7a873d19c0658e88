/* The NOMYO v1 wire package (docs/PROTOCOL-NOMYO.md), shared by the
 * client and the gateway: sealing and opening a package, and the encodings
 * the protocol uses around it (standard base64, percent-encoded PEM in a
 * header, UUID v4 payload IDs).  Internal to libveil; not installed. */
#ifndef VEIL_PACKAGE_H
#define VEIL_PACKAGE_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "veil/engine.h"

#pragma GCC visibility push(hidden)

#define VEIL_PKG_VERSION "1.0"
#define VEIL_PKG_ALGORITHM "hybrid-aes256-rsa4096"
#define VEIL_PKG_KEY_ALGORITHM "RSA-OAEP-SHA256"
#define VEIL_PKG_PAYLOAD_ALGORITHM "AES-256-GCM"
#define VEIL_PKG_NONCE_LEN 12
#define VEIL_PKG_AES_KEY_LEN 32
/* Clients refuse plaintext JSON larger than this before encrypting. */
#define VEIL_PKG_MAX_PLAINTEXT (10u * 1024u * 1024u)
/* The smallest RSA key either side accepts. */
#define VEIL_PKG_MIN_RSA_BITS 2048

/* The detail a server gives for a request package it could not open
 * (whatever failed: unwrap, tag, sizes).  A client that sees it refetches
 * the server key once: the key may have rotated. */
#define VEIL_PKG_DECRYPT_DETAIL "the request could not be decrypted"

/* Where the GCM tag travels. */
typedef enum veil_tag_mode {
    VEIL_TAG_SEPARATE = 0, /* Python client: "tag" field */
    VEIL_TAG_APPENDED = 1  /* JavaScript client: tag after the ciphertext */
} veil_tag_mode;

/* What opening a package learnt besides the plaintext. */
typedef struct veil_pkg_meta {
    veil_tag_mode tag_mode;         /* the convention the package used */
    char algorithm[64];             /* its "algorithm" field ("" when absent) */
    int has_processed_at;           /* "processed_at" was a number */
    double processed_at;            /* Unix seconds */
    uint8_t wrapped_key_sha256[32]; /* SHA-256 of the RSA ciphertext */
    /* How the key unwrap went, set on failure too: VEIL_OK, VEIL_E_DECRYPT
     * (not for this key), or the token's own failure (VEIL_E_TOKEN, ...).
     * For the server's log only: the answer must not depend on it. */
    veil_rc unwrap_rc;
} veil_pkg_meta;

/* Seals pt to the recipient's RSA public key (the caller has checked it is
 * RSA of VEIL_PKG_MIN_RSA_BITS or more): a fresh AES-256 key and
 * 12-byte nonce, AES-256-GCM with no associated data, the key wrapped with
 * RSA-OAEP-SHA256.  Writes the package JSON text (malloc'd, NUL-terminated;
 * it holds no secret) to *json.  processed_at < 0 leaves that field out.
 * The AES key lives in a secret buffer and is wiped before returning. */
veil_rc veil_pkg_seal(veil_engine *e, const veil_key *recipient,
                      const uint8_t *pt, size_t pt_len, veil_tag_mode mode,
                      double processed_at, char **json);

/* Opens a package with the private key priv.  Failures:
 *   VEIL_E_ARG      not the package format (not JSON, a field missing or
 *                   of the wrong type, bad base64, wrong nonce or tag size);
 *                   veil_last_error() says which field;
 *   VEIL_E_DECRYPT  the key unwrap or the GCM tag failed (one fixed
 *                   message, whichever it was).
 * The plaintext lands in a new secret buffer.  meta may be NULL; on a
 * failure only its unwrap_rc is set. */
veil_rc veil_pkg_open(veil_engine *e, const veil_key *priv, const char *json,
                      size_t json_len, veil_secbuf **pt, veil_pkg_meta *meta);

/* ---- JSON holding secrets --------------------------------------------- */

/* Serialises a JSON tree (unformatted) straight into a new secret buffer,
 * NUL-terminated, its length not counting the NUL: no unwiped copy is left
 * in freed memory.  VEIL_E_BUFFER when the text is longer than max. */
veil_rc veil_json_print_secret(const cJSON *json, size_t max,
                               veil_secbuf **out);

/* Wipes every string the tree owns, then deletes it.  Accepts NULL. */
void veil_json_wipe_free(cJSON *json);

/* ---- encodings -------------------------------------------------------- */

/* Standard base64 with padding (malloc'd, NUL-terminated); NULL: no memory. */
char *veil_b64_encode(const uint8_t *in, size_t len);
/* Strict standard base64: length a multiple of 4, padding only at the end,
 * no whitespace.  *out is malloc'd (at least one byte).  VEIL_E_ARG on bad
 * input. */
veil_rc veil_b64_decode(const char *in, size_t len, uint8_t **out,
                        size_t *out_len);

/* Percent-encodes every byte but A-Z a-z 0-9 - . _ ~ (what the NOMYO
 * clients do to the PEM in X-Public-Key).  malloc'd; NULL: no memory. */
char *veil_percent_encode(const char *s);
/* Decodes %XX escapes (a '%' not followed by two hex digits is VEIL_E_ARG;
 * so is an escaped NUL).  '+' is left as it is.  *out is malloc'd. */
veil_rc veil_percent_decode(const char *s, char **out);

/* Hex, UUID v4, wipe and logging: engine/util.h. */

/* 1 when s is a UUID in text form (any version, either case). */
int veil_uuid_valid(const char *s);

/* The longest payload ID (X-Payload-ID) either side takes. */
#define VEIL_PAYLOAD_ID_MAX 128
/* 1 when s can be a payload ID: 1 to VEIL_PAYLOAD_ID_MAX printable ASCII
 * characters (0x21 to 0x7e), no space.  The NOMYO Python client sends a
 * UUID, the JavaScript client's create() "openai-compat-<ms>-<random>". */
int veil_payload_id_valid(const char *s);

#pragma GCC visibility pop

#endif /* VEIL_PACKAGE_H */
