/* veil-bench client: the bare client, the baseline of bench/client.c
 * (bench/client_bare.c): the least the protocol needs, done with OpenSSL
 * and libcurl directly. */
#ifndef VEIL_BENCH_CLIENT_BARE_H
#define VEIL_BENCH_CLIENT_BARE_H

#include <curl/curl.h>
#include <openssl/evp.h>

#include "bench.h"

#define AES_KEY_LEN 32
#define TAG_LEN 16
/* Room for the package text around the base64 fields. */
#define PKG_SLACK 512

/* the package fields a bare open finds */
enum { F_CT, F_NONCE, F_TAG, F_WK, F_N };

/* What the protocol needs per package, done directly with OpenSSL. */
typedef struct bare_seal {
    EVP_PKEY *to; /* the recipient (borrowed) */
    const uint8_t *pt;
    size_t len;
    uint8_t key[AES_KEY_LEN];
    uint8_t nonce[GCM_IV_LEN];
    uint8_t tag[TAG_LEN];
    uint8_t *ct;
    uint8_t wk[512];
    size_t wk_len;
    char *ct_b64;
    char nonce_b64[4 * ((GCM_IV_LEN + 2) / 3) + 1];
    char tag_b64[4 * ((TAG_LEN + 2) / 3) + 1];
    char wk_b64[4 * ((512 + 2) / 3) + 1];
} bare_seal;

/* Opens a package: base64, the key unwrap (OpenSSL, or C_Decrypt in a
 * token), AES-256-GCM with the tag check. */
typedef struct bare_open {
    const char *f[F_N]; /* the base64 fields (not NUL-terminated) */
    size_t n[F_N];
    EVP_PKEY *priv;   /* software unwrap, or NULL */
    p11_rsa_ctx *p11; /* token unwrap, or NULL */
    /* CKM_RSA_X_509 gives the OAEP encoding, which the bare side does not
     * decode: it uses the key it sealed (a package it made itself). */
    const uint8_t *known_key;
    uint8_t *ct, *pt;
    size_t cap; /* of ct and pt */
    size_t pt_len;
    uint8_t nonce[GCM_IV_LEN + 3], tag[TAG_LEN + 3], wk[512 + 3];
    uint8_t key[512];
} bare_open;

typedef struct bare_post {
    CURL *h;
    struct curl_slist *hdrs;
    char *resp;
    size_t resp_len, resp_cap;
} bare_post;

int op_bare_seal(void *arg);
void bare_seal_free(bare_seal *b);
int bare_seal_init(bare_seal *b, EVP_PKEY *to, const uint8_t *pt, size_t len);
int pkg_assemble(const bare_seal *b, char *out, size_t cap);
void open_from_seal(bare_open *o, const bare_seal *s);
int open_from_text(bare_open *o, const char *text);
int op_bare_open(void *arg);
void bare_open_free(bare_open *o);
int post_send(bare_post *p, const char *body, size_t len);
void bare_post_free(bare_post *p);
int bare_post_init(bare_post *p, const bench_opts *o, const char *client_pem);

#endif /* VEIL_BENCH_CLIENT_BARE_H */
