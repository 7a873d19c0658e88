/* engine/ecdh.c: the engine calls protocol v2 needs (docs/PROTOCOL-V2.md):
 * ECDH derive with a private key held by any provider, and HKDF-SHA256's
 * Extract and Expand as separate steps (HPKE, RFC 9180, and Oblivious
 * HTTP, RFC 9458, use them apart; veil_hkdf_sha256 in engine.c does both).
 *
 * ECDH is a private-key operation: like veil_rsa_decrypt it runs in the
 * provider holding the key and never falls back.  The peer's point comes
 * from the network (an HPKE `enc`), so it is checked here, from public
 * facts, before any token sees it.  The HKDF halves are host computations
 * with OpenSSL's HKDF (OpenSSL 3.0 has no OSSL_HPKE).
 */
#include "config.h"

#include <pthread.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/obj_mac.h>

#include "engine_int.h"

/* OpenSSL 3 looks an algorithm up by name on every fetch (a lock, a hash
 * table, string compares), and a new EC_GROUP costs about 9 us: together a
 * fifth of a v2 request's crypto when done per call (docs/BENCHMARKS.md).
 * The HKDF and the P-256 group are made once per process; both are only
 * read afterwards, which OpenSSL allows from any thread. */
static pthread_once_t fetched_once = PTHREAD_ONCE_INIT;
static EVP_KDF *fetched_hkdf;
static EC_GROUP *fetched_p256;

static void fetch_once(void)
{
    fetched_hkdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    fetched_p256 = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
    ERR_clear_error();
}

/* OpenSSL 3.0's HKDF cannot duplicate a context, so the digest is set on
 * each new one. */
EVP_KDF_CTX *veil_hkdf_sha256_ctx(void)
{
    OSSL_PARAM p[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_end()};
    EVP_KDF_CTX *ctx;

    pthread_once(&fetched_once, fetch_once);
    ctx = fetched_hkdf ? EVP_KDF_CTX_new(fetched_hkdf) : NULL;
    if (ctx && EVP_KDF_CTX_set_params(ctx, p) != 1) {
        EVP_KDF_CTX_free(ctx);
        ctx = NULL;
    }
    return ctx;
}

/* 1 when peer is an uncompressed P-256 point on the curve (the encoding
 * cannot name infinity, which is the single byte 0x00; checked anyway).
 * OpenSSL's decoding also refuses coordinates not below p.  P-256 has
 * cofactor 1, so a point on the curve other than infinity has the group's
 * prime order: this is the full public-key validation of SP 800-56A rev. 3
 * 5.6.2.3.3, and providers need not repeat it (n * Q = O). */
static int p256_point_ok(const uint8_t *peer, size_t peer_len)
{
    const EC_GROUP *g;
    EC_POINT *pt = NULL;
    int ok;

    if (peer_len != VEIL_ECDH_P256_POINT_LEN || peer[0] != 0x04)
        return 0;
    pthread_once(&fetched_once, fetch_once);
    g = fetched_p256;
    if (g)
        pt = EC_POINT_new(g);
    ok = pt && EC_POINT_oct2point(g, pt, peer, peer_len, NULL) == 1 &&
         !EC_POINT_is_at_infinity(g, pt) &&
         EC_POINT_is_on_curve(g, pt, NULL) == 1;
    EC_POINT_free(pt);
    ERR_clear_error();
    return ok;
}

veil_rc veil_ecdh_derive(veil_engine *e, const veil_key *priv,
                         const uint8_t *peer, size_t peer_len, veil_secbuf **z)
{
    const char *who;
    unsigned caps;
    veil_rc rc;

    veil_err_clear();
    if (!e || !priv || !peer || !z)
        return veil_err(VEIL_E_ARG, "engine", NULL, "ECDH: missing argument");
    *z = NULL;
    who = priv->prov->ops->name;
    if (priv->type != VEIL_KEY_EC_P256)
        return veil_err(VEIL_E_KEY, who, NULL, "ECDH needs an EC P-256 key");
    if (!priv->has_private)
        return veil_err(VEIL_E_KEY, who, NULL,
                        "ECDH needs a private key; this is a public key");
    if (!p256_point_ok(peer, peer_len))
        return veil_err(VEIL_E_ARG, "engine", NULL,
                        "ECDH: the peer's key is not a P-256 point (65-byte "
                        "uncompressed, on the curve)");
    /* The holder only.  caps narrows static_caps, and check_ops tied the
     * static bit to the slot, so a set bit means the slot is there. */
    caps = __atomic_load_n(&priv->prov->caps.mechs, __ATOMIC_RELAXED);
    if (!(caps & VEIL_CAP_ECDH))
        return veil_err(VEIL_E_UNSUPPORTED, who, NULL,
                        "%s cannot derive ECDH with this key (no "
                        "CKM_ECDH1_DERIVE); use a key in a provider that can",
                        priv->prov->caps.description[0]
                            ? priv->prov->caps.description
                            : who);
    double t0 = veil_op_start(e);
    rc = priv->prov->ops->ecdh_derive(priv->prov, priv, peer, peer_len, z);
    veil_op_done(e, priv->prov, "ecdh_derive", t0, rc);
    if (rc == VEIL_OK && veil_secbuf_len(*z) != VEIL_ECDH_P256_Z_LEN) {
        veil_secbuf_free(*z);
        *z = NULL;
        return veil_err(VEIL_E_TOKEN, who, NULL,
                        "ECDH gave a secret of the wrong length");
    }
    return rc;
}

/* HKDF-SHA256 in one of OpenSSL's modes (EVP_KDF_HKDF_MODE_*). */
static veil_rc hkdf_mode(int mode, const uint8_t *salt, size_t salt_len,
                         const uint8_t *key, size_t key_len,
                         const uint8_t *info, size_t info_len, uint8_t *out,
                         size_t out_len)
{
    EVP_KDF_CTX *ctx = veil_hkdf_sha256_ctx();
    OSSL_PARAM params[5], *q = params;
    static const uint8_t empty[1];
    int ok;

    *q++ = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode);
    *q++ = OSSL_PARAM_construct_octet_string(
        OSSL_KDF_PARAM_KEY, (void *)(key_len ? key : empty), key_len);
    if (salt_len)
        *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT,
                                                 (void *)salt, salt_len);
    if (info_len)
        *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO,
                                                 (void *)info, info_len);
    *q = OSSL_PARAM_construct_end();
    ok = ctx && EVP_KDF_derive(ctx, out, out_len, params) > 0;
    EVP_KDF_CTX_free(ctx);
    if (!ok)
        return veil_err_ossl(VEIL_E_CRYPTO, "engine", "HKDF-SHA256 failed");
    return VEIL_OK;
}

veil_rc veil_hkdf_sha256_extract(veil_engine *e, const uint8_t *salt,
                                 size_t salt_len, const uint8_t *ikm,
                                 size_t ikm_len, uint8_t prk[VEIL_HKDF_PRK_LEN])
{
    veil_err_clear();
    if (!e || (salt_len && !salt) || (ikm_len && !ikm) || !prk)
        return veil_err(VEIL_E_ARG, "engine", NULL,
                        "HKDF-Extract: missing argument");
    return hkdf_mode(EVP_KDF_HKDF_MODE_EXTRACT_ONLY, salt, salt_len, ikm,
                     ikm_len, NULL, 0, prk, VEIL_HKDF_PRK_LEN);
}

veil_rc veil_hkdf_sha256_expand(veil_engine *e, const uint8_t *prk,
                                size_t prk_len, const uint8_t *info,
                                size_t info_len, uint8_t *out, size_t out_len)
{
    veil_err_clear();
    if (!e || !prk || (info_len && !info) || !out)
        return veil_err(VEIL_E_ARG, "engine", NULL,
                        "HKDF-Expand: missing argument");
    if (prk_len < VEIL_HKDF_PRK_LEN)
        return veil_err(VEIL_E_ARG, "engine", NULL,
                        "HKDF-Expand: the PRK must be at least 32 bytes "
                        "(got %zu)",
                        prk_len);
    if (info_len > VEIL_HKDF_INFO_MAX)
        return veil_err(VEIL_E_ARG, "engine", NULL,
                        "HKDF-Expand: info is %zu bytes; at most %d", info_len,
                        VEIL_HKDF_INFO_MAX);
    if (out_len == 0 || out_len > 255 * 32)
        return veil_err(VEIL_E_ARG, "engine", NULL,
                        "HKDF-Expand output must be 1..8160 bytes (got %zu)",
                        out_len);
    return hkdf_mode(EVP_KDF_HKDF_MODE_EXPAND_ONLY, NULL, 0, prk, prk_len, info,
                     info_len, out, out_len);
}
