/* Oblivious HTTP (RFC 9458) message formats for protocol v2
 * (docs/PROTOCOL-V2.md): key configurations and their list
 * (application/ohttp-keys), request encapsulation (message/ohttp-req) and
 * response encapsulation (message/ohttp-res, RFC 9458 4.4), over HPKE
 * (hpke.h).  The inner messages are binary HTTP (bhttp.h).  No HTTP
 * transport here.  Internal to libveil; not installed.
 *
 * Failures a gateway sees before decapsulation succeeds (a malformed
 * header, a suite it does not offer, an unknown key ID, a bad enc or
 * ciphertext) come back as different veil_rc codes so that a caller can
 * log them; a gateway answers every one of them with the same response
 * (docs/PROTOCOL-V2.md, "Errors"). */
#ifndef VEIL_OHTTP_H
#define VEIL_OHTTP_H

#include <stddef.h>
#include <stdint.h>

#include "hpke.h"
#include "veil/engine.h"

#pragma GCC visibility push(hidden)

#define VEIL_OHTTP_MEDIA_REQ "message/ohttp-req"
#define VEIL_OHTTP_MEDIA_RES "message/ohttp-res"
#define VEIL_OHTTP_MEDIA_KEYS "application/ohttp-keys"
#define VEIL_OHTTP_WELL_KNOWN "/.well-known/ohttp-gateway" /* RFC 9540 */
/* 1 when a Content-Type field value names the media type `type` (RFC
 * 9110 8.3.1: type and subtype compared without regard to case, then
 * nothing, or optional white space and ';' parameters, which are not
 * looked at); 0 otherwise, NULL included. */
int veil_ohttp_media_is(const char *content_type, const char *type);

/* RFC 9458 5.3: the problem type for key-configuration problems. */
#define VEIL_OHTTP_PROBLEM_KEY                                                 \
    "https://iana.org/assignments/http-problem-types#ohttp-key"
/* Its title in the HTTP Problem Types registry (RFC 9458 9.5). */
#define VEIL_OHTTP_PROBLEM_KEY_TITLE                                           \
    "Oblivious HTTP key configuration not acceptable"

#define VEIL_OHTTP_HDR_LEN 7  /* key_id(1) kem(2) kdf(2) aead(2) */
#define VEIL_OHTTP_MAX_ALGS 8 /* symmetric suites per key configuration */

typedef struct veil_ohttp_alg {
    uint16_t kdf, aead;
} veil_ohttp_alg;

/* One key configuration (RFC 9458 3.1). */
typedef struct veil_ohttp_keyconfig {
    uint8_t key_id;
    uint16_t kem;
    uint8_t pk[VEIL_HPKE_ENC_MAX];
    size_t pk_len; /* Npk of the KEM */
    veil_ohttp_alg algs[VEIL_OHTTP_MAX_ALGS];
    size_t n_algs; /* 1..VEIL_OHTTP_MAX_ALGS */
} veil_ohttp_keyconfig;

/* One key configuration, without the list's length prefix.  *len: in,
 * the room; out, the bytes written. */
veil_rc veil_ohttp_keyconfig_encode(const veil_ohttp_keyconfig *c, uint8_t *out,
                                    size_t *len);
/* Exactly one configuration of a KEM veil knows: anything else is
 * VEIL_E_ARG (malformed) or VEIL_E_UNSUPPORTED (another KEM). */
veil_rc veil_ohttp_keyconfig_decode(const uint8_t *in, size_t len,
                                    veil_ohttp_keyconfig *c);

/* application/ohttp-keys: each configuration with a 2-byte length
 * (RFC 9458 3.2).  Encode: a malloc'd body.  Decode: a malloc'd array of
 * the configurations veil can use; one of an unknown KEM is skipped (its
 * length says where the next begins); a malformed list, or more than 64
 * configurations, is VEIL_E_ARG; a list with none usable is
 * VEIL_E_UNSUPPORTED. */
veil_rc veil_ohttp_keys_encode(const veil_ohttp_keyconfig *c, size_t n,
                               uint8_t **out, size_t *len);
veil_rc veil_ohttp_keys_decode(const uint8_t *in, size_t len,
                               veil_ohttp_keyconfig **out, size_t *n);

/* The header of an encapsulated request: which key and suite it names. */
typedef struct veil_ohttp_header {
    uint8_t key_id;
    veil_hpke_suite suite;
} veil_ohttp_header;

/* The 7-byte header; VEIL_E_ARG when the request is shorter than a
 * header, an enc and a tag. */
veil_rc veil_ohttp_parse_header(const uint8_t *in, size_t len,
                                veil_ohttp_header *h);

/* The state between a request and its response, on either side: the HPKE
 * context and the request's enc. */
typedef struct veil_ohttp_ctx veil_ohttp_ctx;

/* Client: encapsulates a binary HTTP request for configuration c with the
 * symmetric suite (kdf, aead), which c must list.  *out (malloc'd) is the
 * message/ohttp-req body.  eph: NULL (a fresh ephemeral key, always in
 * real use) or a fixed one for test vectors. */
veil_rc veil_ohttp_encap_request(veil_engine *e, const veil_ohttp_keyconfig *c,
                                 veil_ohttp_alg alg, const uint8_t *req,
                                 size_t req_len, const veil_hpke_key *eph,
                                 uint8_t **out, size_t *out_len,
                                 veil_ohttp_ctx **ctx);
/* Client: opens the message/ohttp-res body into a new secret buffer. */
veil_rc veil_ohttp_decap_response(veil_engine *e, veil_ohttp_ctx *ctx,
                                  const uint8_t *in, size_t len,
                                  veil_secbuf **res);

/* Gateway: opens a message/ohttp-req body with the private key of
 * configuration c (skR's KEM must be c's).  Errors: VEIL_E_ARG
 * (malformed), VEIL_E_UNSUPPORTED (a suite c does not list),
 * VEIL_E_NOT_FOUND (another key ID), VEIL_E_DECRYPT (enc or ciphertext). */
veil_rc veil_ohttp_decap_request(veil_engine *e, const veil_ohttp_keyconfig *c,
                                 const veil_hpke_key *skR, const uint8_t *in,
                                 size_t len, veil_secbuf **req,
                                 veil_ohttp_ctx **ctx);
/* Gateway: encapsulates a binary HTTP response (RFC 9458 4.4).  nonce:
 * NULL (random, always in real use) or max(Nn, Nk) bytes for vectors. */
veil_rc veil_ohttp_encap_response(veil_engine *e, const veil_ohttp_ctx *ctx,
                                  const uint8_t *res, size_t res_len,
                                  const uint8_t *nonce, uint8_t **out,
                                  size_t *out_len);

/* The request's enc (for the replay register), Nenc bytes. */
const uint8_t *veil_ohttp_ctx_enc(const veil_ohttp_ctx *ctx, size_t *len);
/* The public key the request was encapsulated to (pkR, as its key
 * configuration carries it: Npk bytes), which a maximum answer's quote
 * binds (docs/ATTESTATION.md). */
const uint8_t *veil_ohttp_ctx_pk(const veil_ohttp_ctx *ctx, size_t *len);
void veil_ohttp_ctx_free(veil_ohttp_ctx *ctx);

#pragma GCC visibility pop

#endif /* VEIL_OHTTP_H */
