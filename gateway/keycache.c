/* gateway/keycache.c: the caller's public key from X-Public-Key, checked
 * once (an RSA key of 2048 to 4096 bits that passes the public-key
 * checks) and kept in a small cache of parsed keys, least recently used
 * out first. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "routes.h"

/* Parsed client keys kept (a PEM parse and checks cost ~0.35 ms). */
#define KEY_CACHE 64
/* The largest client key taken: OpenSSL's public-key check costs about
 * 15 ms for 2048 bits and 170 ms for 4096 (a Miller-Rabin test of n), and
 * grows with the cube of the size. */
#define CLIENT_KEY_MAX_BITS 4096u

struct gw_ckey_entry {
    uint8_t hash[32]; /* SHA-256 of the caller's id and the header */
    veil_key *key;
    unsigned refs;
    uint64_t used;
};

struct gw_keycache {
    pthread_mutex_t lock;
    struct gw_ckey_entry keys[KEY_CACHE];
    uint64_t clock;
};

gw_keycache *gw_keycache_new(void)
{
    gw_keycache *kc = calloc(1, sizeof *kc);

    if (kc)
        pthread_mutex_init(&kc->lock, NULL);
    return kc;
}

void gw_keycache_free(gw_keycache *kc)
{
    if (kc == NULL)
        return;
    for (int i = 0; i < KEY_CACHE; i++)
        veil_key_free(kc->keys[i].key);
    pthread_mutex_destroy(&kc->lock);
    free(kc);
}

void gw_ckey_release(gw_keycache *kc, gw_ckey *k)
{
    if (k->entry) {
        pthread_mutex_lock(&kc->lock);
        k->entry->refs--;
        pthread_mutex_unlock(&kc->lock);
    } else {
        veil_key_free(k->key);
    }
    k->key = NULL;
    k->entry = NULL;
}

static int ckey_lookup(gw_keycache *kc, const uint8_t hash[32], gw_ckey *out)
{
    pthread_mutex_lock(&kc->lock);
    for (int i = 0; i < KEY_CACHE; i++) {
        struct gw_ckey_entry *e = &kc->keys[i];
        if (e->key && memcmp(e->hash, hash, 32) == 0) {
            e->refs++;
            e->used = ++kc->clock;
            out->key = e->key;
            out->entry = e;
            break;
        }
    }
    pthread_mutex_unlock(&kc->lock);
    return out->key != NULL;
}

/* Keeps a checked key in the least recently used free place; when every
 * place is in use the key stays the request's own. */
static void ckey_insert(gw_keycache *kc, const uint8_t hash[32], gw_ckey *k)
{
    pthread_mutex_lock(&kc->lock);
    struct gw_ckey_entry *victim = NULL;
    for (int i = 0; i < KEY_CACHE; i++) {
        struct gw_ckey_entry *e = &kc->keys[i];
        if (e->refs == 0 && (victim == NULL || e->used < victim->used))
            victim = e;
    }
    if (victim) {
        veil_key_free(victim->key);
        memcpy(victim->hash, hash, 32);
        victim->key = k->key;
        victim->refs = 1;
        victim->used = ++kc->clock;
        k->entry = victim;
    }
    pthread_mutex_unlock(&kc->lock);
}

/* What is wrong with an RSA public key, or NULL: OpenSSL's public-key
 * check (n odd, of no small factor, e in range) and the rules of NIST SP
 * 800-56B on e (odd, 65537 <= e < 2^256, so below n), checked here too so
 * that they hold whatever the OpenSSL version. */
static const char *rsa_key_problem(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *k = b ? PEM_read_bio_PUBKEY(b, NULL, NULL, NULL) : NULL;
    EVP_PKEY_CTX *ctx = k ? EVP_PKEY_CTX_new_from_pkey(NULL, k, NULL) : NULL;
    BIGNUM *n = NULL, *e = NULL;
    const char *why = NULL;

    if (ctx == NULL || !EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_RSA_N, &n) ||
        !EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_RSA_E, &e))
        why = "its modulus and exponent cannot be read";
    else if (!BN_is_odd(n))
        why = "its modulus is even";
    else if (!BN_is_odd(e) || BN_num_bits(e) > 256 ||
             BN_cmp(e, BN_value_one()) <= 0 || BN_get_word(e) < 65537)
        why = "its public exponent must be odd, at least 65537 and below "
              "2^256";
    else if (BN_cmp(e, n) >= 0)
        why = "its public exponent is not below its modulus";
    else if (EVP_PKEY_public_check(ctx) != 1)
        why = "OpenSSL's public-key check fails";
    ERR_clear_error();
    BN_free(n);
    BN_free(e);
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(k);
    BIO_free(b);
    return why;
}

/* Checks a parsed key (pem: its text): GW_OK, or GW_REFUSED with why. */
static gw_rc key_check(const veil_key *k, const char *pem, char *why,
                       size_t why_size)
{
    veil_key_info info;
    const char *problem;

    if (veil_key_get_info(k, &info) != VEIL_OK || info.type != VEIL_KEY_RSA ||
        info.bits < VEIL_PKG_MIN_RSA_BITS) {
        snprintf(why, why_size,
                 "X-Public-Key must be an RSA key of at least %u bits",
                 VEIL_PKG_MIN_RSA_BITS);
        return GW_REFUSED;
    }
    if (info.bits > CLIENT_KEY_MAX_BITS) {
        snprintf(why, why_size,
                 "X-Public-Key must be an RSA key of at most %u bits (the "
                 "NOMYO clients use 2048 or 4096)",
                 CLIENT_KEY_MAX_BITS);
        return GW_REFUSED;
    }
    if ((problem = rsa_key_problem(pem)) != NULL) {
        snprintf(why, why_size,
                 "X-Public-Key is not a valid RSA public key: %s", problem);
        return GW_REFUSED;
    }
    return GW_OK;
}

/* The caller's key from X-Public-Key: RSA, 2048 bits or more, and a valid
 * public key (rsa_key_problem), checked before anything runs for it.
 *
 * The cache of parsed keys is keyed by the header and the caller's API key
 * (or address, without API keys): whether a key is in it shows in the time
 * an answer takes, and this way nobody learns that way whether someone
 * else used a public key lately. */
gw_rc gw_client_key(gw_keycache *kc, veil_engine *e, const char *h,
                    const uint8_t id[32], gw_ckey *out, char *why,
                    size_t why_size)
{
    char *pem = NULL;
    uint8_t hash[32], both[64];
    gw_rc rc;

    out->key = NULL;
    out->entry = NULL;
    if (h == NULL || *h == '\0') {
        snprintf(why, why_size, "X-Public-Key header is missing");
        return GW_REFUSED;
    }
    memcpy(both, id, 32);
    SHA256((const uint8_t *)h, strlen(h), both + 32);
    SHA256(both, sizeof both, hash);
    if (ckey_lookup(kc, hash, out))
        return GW_OK;
    if (veil_percent_decode(h, &pem) != VEIL_OK) {
        snprintf(why, why_size, "X-Public-Key is not valid percent-encoding");
        return GW_REFUSED;
    }
    if (!strstr(pem, "-----BEGIN PUBLIC KEY-----") ||
        veil_key_from_public(e, (const uint8_t *)pem, strlen(pem), &out->key) !=
            VEIL_OK) {
        free(pem);
        snprintf(why, why_size, "X-Public-Key is not a PEM public key");
        return GW_REFUSED;
    }
    rc = key_check(out->key, pem, why, why_size);
    free(pem);
    if (rc != GW_OK) {
        gw_ckey_release(kc, out);
        return rc;
    }
    ckey_insert(kc, hash, out);
    return GW_OK;
}
