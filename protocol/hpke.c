/* HPKE (RFC 9180) base mode: DHKEM(P-256 | X25519, HKDF-SHA256),
 * HKDF-SHA256, AES-128-GCM | AES-256-GCM | export-only.
 *
 * Layout: 1. suites and sizes; 2. labeled HKDF (4 and 4.1); 3. keys (7.1:
 * serialise, DeriveKeyPair) and DH; 4. the KEM (4.1 Encap/Decap) and the
 * key schedule (5.1); 5. Seal, Open, Export (5.2, 5.3).
 *
 * The recipient's DH with an engine key is veil_ecdh_derive, so a P-256
 * KEM key may live in a token; every other step runs on the host.  Secrets
 * (DH outputs, shared secrets, keys, nonces) live in veil_secbufs or on the
 * stack and are wiped; a context lives in one veil_secbuf. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/param_build.h>

#include "engine_int.h"
#include "hpke.h"

#define HP "hpke"
#define NH 32 /* HKDF-SHA256 */
#define LABEL_MAX 32
#define EXP_CTX_MAX 512
#define MODE_BASE 0x00

/* ---- 1. suites and sizes ---------------------------------------------- */

size_t veil_hpke_nenc(uint16_t kem)
{
    return kem == VEIL_HPKE_KEM_P256     ? 65
           : kem == VEIL_HPKE_KEM_X25519 ? 32
                                         : 0;
}

size_t veil_hpke_nsk(uint16_t kem)
{
    return kem == VEIL_HPKE_KEM_P256 || kem == VEIL_HPKE_KEM_X25519 ? 32 : 0;
}

size_t veil_hpke_nk(uint16_t aead)
{
    return aead == VEIL_HPKE_AEAD_AES128GCM   ? 16
           : aead == VEIL_HPKE_AEAD_AES256GCM ? 32
                                              : 0;
}

size_t veil_hpke_nn(uint16_t aead)
{
    return aead == VEIL_HPKE_AEAD_AES128GCM || aead == VEIL_HPKE_AEAD_AES256GCM
               ? VEIL_HPKE_NONCE_LEN
               : 0;
}

veil_rc veil_hpke_suite_check(const veil_hpke_suite *s)
{
    if (!s)
        return veil_err(VEIL_E_ARG, HP, NULL, "no HPKE suite");
    if (!veil_hpke_nenc(s->kem))
        return veil_err(VEIL_E_UNSUPPORTED, HP, NULL,
                        "HPKE KEM 0x%04x is not supported (0x0010 P-256, "
                        "0x0020 X25519)",
                        s->kem);
    if (s->kdf != VEIL_HPKE_KDF_SHA256)
        return veil_err(VEIL_E_UNSUPPORTED, HP, NULL,
                        "HPKE KDF 0x%04x is not supported (0x0001 "
                        "HKDF-SHA256)",
                        s->kdf);
    if (!veil_hpke_nk(s->aead) && s->aead != VEIL_HPKE_AEAD_EXPORT_ONLY)
        return veil_err(VEIL_E_UNSUPPORTED, HP, NULL,
                        "HPKE AEAD 0x%04x is not supported (0x0001, 0x0002, "
                        "0xffff)",
                        s->aead);
    return VEIL_OK;
}

/* ---- 2. labeled HKDF -------------------------------------------------- */

/* suite_id: "KEM" || I2OSP(kem_id, 2), or "HPKE" || kem || kdf || aead. */
typedef struct suite_id {
    uint8_t b[10];
    size_t n;
} suite_id;

static suite_id kem_suite(uint16_t kem)
{
    suite_id s = {{'K', 'E', 'M', (uint8_t)(kem >> 8), (uint8_t)kem}, 5};
    return s;
}

static suite_id hpke_suite(const veil_hpke_suite *h)
{
    suite_id s = {{'H', 'P', 'K', 'E', (uint8_t)(h->kem >> 8), (uint8_t)h->kem,
                   (uint8_t)(h->kdf >> 8), (uint8_t)h->kdf,
                   (uint8_t)(h->aead >> 8), (uint8_t)h->aead},
                  10};
    return s;
}

static const uint8_t version_label[7] = {'H', 'P', 'K', 'E', '-', 'v', '1'};

/* Writes "HPKE-v1" || suite_id || label || data at q; returns the end. */
static uint8_t *put_labeled(uint8_t *q, const suite_id *sid, const char *label,
                            size_t ll, const uint8_t *data, size_t data_len)
{
    memcpy(q, version_label, sizeof version_label);
    q += sizeof version_label;
    memcpy(q, sid->b, sid->n);
    q += sid->n;
    memcpy(q, label, ll);
    q += ll;
    if (data_len)
        memcpy(q, data, data_len);
    return q + data_len;
}

/* LabeledExtract(salt, label, ikm) = Extract(salt, "HPKE-v1" || suite_id
 * || label || ikm).  ikm may be a secret: the joined copy is wiped. */
static veil_rc labeled_extract(veil_engine *e, const suite_id *sid,
                               const uint8_t *salt, size_t salt_len,
                               const char *label, const uint8_t *ikm,
                               size_t ikm_len, uint8_t prk[NH])
{
    size_t ll = strlen(label), n = sizeof version_label + sid->n + ll + ikm_len;
    uint8_t *buf = malloc(n);
    veil_rc rc;

    if (!buf)
        return veil_err(VEIL_E_NOMEM, HP, NULL, "out of memory");
    put_labeled(buf, sid, label, ll, ikm, ikm_len);
    rc = veil_hkdf_sha256_extract(e, salt, salt_len, buf, n, prk);
    veil_wipe(buf, n);
    free(buf);
    return rc;
}

/* LabeledExpand(prk, label, info, L) = Expand(prk, I2OSP(L, 2) ||
 * "HPKE-v1" || suite_id || label || info, L). */
static veil_rc labeled_expand(veil_engine *e, const suite_id *sid,
                              const uint8_t *prk, const char *label,
                              const uint8_t *info, size_t info_len,
                              uint8_t *out, size_t len)
{
    uint8_t
        buf[2 + sizeof version_label + 10 + LABEL_MAX + EXP_CTX_MAX + 2 * 65],
        *q = buf;
    size_t ll = strlen(label);

    if (len > 0xffff || ll > LABEL_MAX ||
        info_len > sizeof buf - (2 + sizeof version_label + 10 + LABEL_MAX))
        return veil_err(VEIL_E_ARG, HP, NULL, "HPKE: expand input too long");
    *q++ = (uint8_t)(len >> 8);
    *q++ = (uint8_t)len;
    q = put_labeled(q, sid, label, ll, info, info_len);
    return veil_hkdf_sha256_expand(e, prk, NH, buf, (size_t)(q - buf), out,
                                   len);
}

/* ---- 3. keys and DH --------------------------------------------------- */

struct veil_hpke_key {
    uint16_t kem;
    const veil_key *engine_key;     /* P-256 held by a provider; borrowed */
    EVP_PKEY *pkey;                 /* software key pair */
    uint8_t pub[VEIL_HPKE_ENC_MAX]; /* SerializePublicKey, made once */
    size_t pub_len;
};

static veil_rc key_new(uint16_t kem, veil_hpke_key **out)
{
    if (!veil_hpke_nenc(kem))
        return veil_err(VEIL_E_UNSUPPORTED, HP, NULL,
                        "HPKE KEM 0x%04x is not supported", kem);
    *out = calloc(1, sizeof **out);
    if (!*out)
        return veil_err(VEIL_E_NOMEM, HP, NULL, "out of memory");
    (*out)->kem = kem;
    return VEIL_OK;
}

static EVP_PKEY *pub_of(const veil_hpke_key *k)
{
    return k->engine_key ? k->engine_key->pub : k->pkey;
}

/* SerializePublicKey into k->pub, once, when the key is made: the
 * gateway's recipient key is asked for it on every request. */
static veil_rc key_ready(veil_hpke_key *k)
{
    size_t n = veil_hpke_nenc(k->kem), got = n;
    int ok;

    if (k->kem == VEIL_HPKE_KEM_X25519)
        ok = EVP_PKEY_get_raw_public_key(pub_of(k), k->pub, &got) && got == n;
    else
        ok = EVP_PKEY_get_octet_string_param(pub_of(k),
                                             OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY,
                                             k->pub, sizeof k->pub, &got) &&
             got == n && k->pub[0] == 0x04;
    if (!ok)
        return veil_err_ossl(VEIL_E_CRYPTO, HP, "SerializePublicKey");
    k->pub_len = n;
    return VEIL_OK;
}

veil_rc veil_hpke_key_from_engine(const veil_key *k, veil_hpke_key **out)
{
    veil_rc rc;

    veil_err_clear();
    if (!k || !out)
        return veil_err(VEIL_E_ARG, HP, NULL, "no key");
    if (k->type != VEIL_KEY_EC_P256 || !k->has_private)
        return veil_err(VEIL_E_KEY, HP, NULL,
                        "an HPKE P-256 key must be a private EC P-256 key");
    rc = key_new(VEIL_HPKE_KEM_P256, out);
    if (rc == VEIL_OK) {
        (*out)->engine_key = k;
        if ((rc = key_ready(*out)) != VEIL_OK) {
            veil_hpke_key_free(*out);
            *out = NULL;
        }
    }
    return rc;
}

/* A P-256 key pair from a 32-byte scalar already known to be in range. */
static veil_rc p256_from_scalar(const uint8_t sk[32], EVP_PKEY **out)
{
    EC_GROUP *g = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
    BIGNUM *d = BN_secure_new();
    EC_POINT *pt = g ? EC_POINT_new(g) : NULL;
    OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    uint8_t pub[65];
    int ok;

    *out = NULL;
    ok = g && d && pt && b && BN_bin2bn(sk, 32, d) &&
         EC_POINT_mul(g, pt, d, NULL, NULL, NULL) &&
         EC_POINT_point2oct(g, pt, POINT_CONVERSION_UNCOMPRESSED, pub,
                            sizeof pub, NULL) == sizeof pub &&
         OSSL_PARAM_BLD_push_utf8_string(b, OSSL_PKEY_PARAM_GROUP_NAME,
                                         "prime256v1", 0) &&
         OSSL_PARAM_BLD_push_octet_string(b, OSSL_PKEY_PARAM_PUB_KEY, pub,
                                          sizeof pub) &&
         OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_PRIV_KEY, d) &&
         (params = OSSL_PARAM_BLD_to_param(b)) != NULL &&
         (ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL)) != NULL &&
         EVP_PKEY_fromdata_init(ctx) > 0 &&
         EVP_PKEY_fromdata(ctx, out, EVP_PKEY_KEYPAIR, params) > 0;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params); /* d's copy sits in the secure heap */
    OSSL_PARAM_BLD_free(b);
    EC_POINT_free(pt);
    BN_clear_free(d);
    EC_GROUP_free(g);
    if (!ok) {
        EVP_PKEY_free(*out);
        *out = NULL;
        return veil_err_ossl(VEIL_E_CRYPTO, HP, "P-256 key from scalar");
    }
    return VEIL_OK;
}

/* 1 when 0 < sk < n (the P-256 group order). */
static int p256_scalar_ok(const uint8_t sk[32])
{
    static const uint8_t order[32] = {
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17,
        0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51};
    int nonzero = 0, cmp = 0;

    for (size_t i = 0; i < 32; i++) {
        nonzero |= sk[i];
        if (!cmp)
            cmp = (sk[i] > order[i]) - (sk[i] < order[i]);
    }
    return nonzero && cmp < 0;
}

veil_rc veil_hpke_key_from_private(uint16_t kem, const uint8_t *sk,
                                   size_t sk_len, veil_hpke_key **out)
{
    veil_hpke_key *k;
    veil_rc rc;

    veil_err_clear();
    if (!sk || !out)
        return veil_err(VEIL_E_ARG, HP, NULL, "no private key");
    rc = key_new(kem, &k);
    if (rc != VEIL_OK)
        return rc;
    if (sk_len != 32 || (kem == VEIL_HPKE_KEM_P256 && !p256_scalar_ok(sk)))
        rc = veil_err(VEIL_E_KEY, HP, NULL,
                      "not a private key for HPKE KEM 0x%04x", kem);
    else if (kem == VEIL_HPKE_KEM_P256)
        rc = p256_from_scalar(sk, &k->pkey);
    else if (!(k->pkey =
                   EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, sk, 32)))
        rc = veil_err_ossl(VEIL_E_CRYPTO, HP, "X25519 private key");
    if (rc == VEIL_OK)
        rc = key_ready(k);
    if (rc != VEIL_OK) {
        veil_hpke_key_free(k);
        return rc;
    }
    *out = k;
    return VEIL_OK;
}

veil_rc veil_hpke_key_derive(veil_engine *e, uint16_t kem, const uint8_t *ikm,
                             size_t ikm_len, veil_hpke_key **out)
{
    suite_id sid = kem_suite(kem);
    uint8_t prk[NH], sk[32];
    veil_rc rc;

    veil_err_clear();
    if (!e || (ikm_len && !ikm) || !out)
        return veil_err(VEIL_E_ARG, HP, NULL, "DeriveKeyPair: no ikm");
    if (!veil_hpke_nenc(kem))
        return veil_err(VEIL_E_UNSUPPORTED, HP, NULL,
                        "HPKE KEM 0x%04x is not supported", kem);
    if (ikm_len < veil_hpke_nsk(kem))
        return veil_err(VEIL_E_ARG, HP, NULL,
                        "DeriveKeyPair: ikm must be at least %zu bytes",
                        veil_hpke_nsk(kem));
    rc = labeled_extract(e, &sid, NULL, 0, "dkp_prk", ikm, ikm_len, prk);
    if (rc == VEIL_OK && kem == VEIL_HPKE_KEM_X25519) {
        rc = labeled_expand(e, &sid, prk, "sk", NULL, 0, sk, 32);
    } else if (rc == VEIL_OK) {
        int found = 0;

        for (unsigned counter = 0; rc == VEIL_OK && counter < 256 && !found;
             counter++) {
            uint8_t c = (uint8_t)counter;

            rc = labeled_expand(e, &sid, prk, "candidate", &c, 1, sk, 32);
            /* bitmask 0xff for P-256: nothing to clear */
            found = rc == VEIL_OK && p256_scalar_ok(sk);
        }
        if (rc == VEIL_OK && !found)
            rc = veil_err(VEIL_E_CRYPTO, HP, NULL, "DeriveKeyPairError");
    }
    if (rc == VEIL_OK)
        rc = veil_hpke_key_from_private(kem, sk, 32, out);
    veil_wipe(prk, sizeof prk);
    veil_wipe(sk, sizeof sk);
    return rc;
}

veil_rc veil_hpke_key_generate(uint16_t kem, veil_hpke_key **out)
{
    veil_hpke_key *k;
    veil_rc rc;

    veil_err_clear();
    if (!out)
        return veil_err(VEIL_E_ARG, HP, NULL, "no output");
    rc = key_new(kem, &k);
    if (rc != VEIL_OK)
        return rc;
    k->pkey = kem == VEIL_HPKE_KEM_P256
                  ? EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256")
                  : EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
    if (!k->pkey) {
        veil_hpke_key_free(k);
        return veil_err_ossl(VEIL_E_CRYPTO, HP, "HPKE key generation");
    }
    if ((rc = key_ready(k)) != VEIL_OK) {
        veil_hpke_key_free(k);
        return rc;
    }
    *out = k;
    return VEIL_OK;
}

uint16_t veil_hpke_key_kem(const veil_hpke_key *k)
{
    return k ? k->kem : 0;
}

veil_rc veil_hpke_key_public(const veil_hpke_key *k, uint8_t *pk, size_t *len)
{
    if (!k || !pk || !len)
        return veil_err(VEIL_E_ARG, HP, NULL, "SerializePublicKey: argument");
    if (*len < k->pub_len)
        return veil_err(VEIL_E_BUFFER, HP, NULL, "public key needs %zu bytes",
                        k->pub_len);
    memcpy(pk, k->pub, k->pub_len);
    *len = k->pub_len;
    return VEIL_OK;
}

veil_rc veil_hpke_key_private(const veil_hpke_key *k, uint8_t *sk, size_t *len)
{
    BIGNUM *d = NULL;
    int ok;

    if (!k || !sk || !len || *len < 32)
        return veil_err(VEIL_E_ARG, HP, NULL, "SerializePrivateKey: argument");
    if (!k->pkey)
        return veil_err(VEIL_E_KEY, HP, NULL,
                        "the private key is held by a provider and never "
                        "leaves it");
    if (k->kem == VEIL_HPKE_KEM_X25519) {
        size_t got = 32;
        ok = EVP_PKEY_get_raw_private_key(k->pkey, sk, &got) && got == 32;
    } else {
        ok = EVP_PKEY_get_bn_param(k->pkey, OSSL_PKEY_PARAM_PRIV_KEY, &d) &&
             BN_bn2binpad(d, sk, 32) == 32;
        BN_clear_free(d);
    }
    if (!ok)
        return veil_err_ossl(VEIL_E_CRYPTO, HP, "SerializePrivateKey");
    *len = 32;
    return VEIL_OK;
}

void veil_hpke_key_free(veil_hpke_key *k)
{
    if (!k)
        return;
    EVP_PKEY_free(k->pkey);
    free(k);
}

/* DH(sk, pk) in software: the X25519 output or the P-256 x-coordinate,
 * 32 bytes; a peer key that is not a valid point, or an all-zero X25519
 * output (RFC 9180 7.1.4), is an error. */
static veil_rc dh_soft(uint16_t kem, EVP_PKEY *sk, const uint8_t *peer,
                       size_t peer_len, veil_secbuf **z)
{
    EVP_PKEY *pk = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    veil_secbuf *out = NULL;
    size_t len = 32;
    uint8_t acc = 0;
    veil_rc rc;

    if (peer_len != veil_hpke_nenc(kem))
        return veil_err(VEIL_E_ARG, HP, NULL, "HPKE: bad public key length");
    if (kem == VEIL_HPKE_KEM_X25519)
        pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, peer, 32);
    else if ((pk = EVP_PKEY_new()) != NULL &&
             (!EVP_PKEY_copy_parameters(pk, sk) ||
              !EVP_PKEY_set1_encoded_public_key(pk, peer, peer_len))) {
        EVP_PKEY_free(pk);
        pk = NULL;
    }
    if (!pk || (kem == VEIL_HPKE_KEM_P256 && peer[0] != 0x04))
        rc = veil_err(VEIL_E_ARG, HP, NULL, "HPKE: not a valid public key");
    else
        rc = veil_secbuf_new(32, &out);
    if (rc == VEIL_OK) {
        /* A P-256 point was checked on the curve as it was decoded above
         * (OpenSSL refuses one that is not), which for cofactor 1 is the
         * full validation; OpenSSL's check at set_peer would add a second
         * scalar multiplication (n * Q), so it is asked for X25519 only. */
        ctx = EVP_PKEY_CTX_new_from_pkey(NULL, sk, NULL);
        if (!ctx || EVP_PKEY_derive_init(ctx) <= 0 ||
            EVP_PKEY_derive_set_peer_ex(ctx, pk, kem == VEIL_HPKE_KEM_X25519) <=
                0 ||
            EVP_PKEY_derive(ctx, veil_secbuf_data(out), &len) <= 0 || len != 32)
            rc = veil_err(VEIL_E_ARG, HP, NULL, "HPKE: DH failed");
    }
    /* RFC 9180 7.1.4: an all-zero DH output is an error for X25519 (a
     * low-order point).  A P-256 Z is the x-coordinate of a point the
     * curve check above accepted, and x = 0 is such a point's (SP 800-56A
     * 5.7.1.2 refuses only the point at infinity). */
    for (size_t i = 0; rc == VEIL_OK && kem == VEIL_HPKE_KEM_X25519 && i < 32;
         i++)
        acc |= veil_secbuf_data(out)[i];
    if (rc == VEIL_OK && kem == VEIL_HPKE_KEM_X25519 && !acc)
        rc = veil_err(VEIL_E_ARG, HP, NULL, "HPKE: DH output is zero");
    ERR_clear_error();
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(pk);
    if (rc != VEIL_OK) {
        veil_secbuf_free(out);
        return rc;
    }
    *z = out;
    return VEIL_OK;
}

static veil_rc dh(veil_engine *e, const veil_hpke_key *sk, const uint8_t *peer,
                  size_t peer_len, veil_secbuf **z)
{
    if (sk->engine_key)
        return veil_ecdh_derive(e, sk->engine_key, peer, peer_len, z);
    return dh_soft(sk->kem, sk->pkey, peer, peer_len, z);
}

/* ---- 4. KEM and key schedule ------------------------------------------ */

/* ExtractAndExpand(dh, kem_context) -> shared_secret (Nsecret = 32). */
static veil_rc extract_and_expand(veil_engine *e, uint16_t kem,
                                  const veil_secbuf *z, const uint8_t *enc,
                                  const uint8_t *pkR, uint8_t ss[NH])
{
    suite_id sid = kem_suite(kem);
    size_t n = veil_hpke_nenc(kem);
    uint8_t eae_prk[NH], kem_context[2 * 65];
    veil_rc rc;

    memcpy(kem_context, enc, n);
    memcpy(kem_context + n, pkR, n);
    rc = labeled_extract(e, &sid, NULL, 0, "eae_prk",
                         veil_secbuf_data((veil_secbuf *)z), veil_secbuf_len(z),
                         eae_prk);
    if (rc == VEIL_OK)
        rc = labeled_expand(e, &sid, eae_prk, "shared_secret", kem_context,
                            2 * n, ss, NH);
    veil_wipe(eae_prk, sizeof eae_prk);
    return rc;
}

struct veil_hpke_ctx {
    veil_secbuf *mem; /* the buffer this context lives in */
    veil_hpke_suite suite;
    uint8_t key[VEIL_HPKE_KEY_MAX];
    uint8_t base_nonce[VEIL_HPKE_NONCE_LEN];
    uint8_t exporter_secret[NH];
    uint64_t seq;
};

/* KeyScheduleS/R for mode_base (psk and psk_id empty). */
static veil_rc key_schedule(veil_engine *e, const veil_hpke_suite *s,
                            const uint8_t ss[NH], const uint8_t *info,
                            size_t info_len, veil_hpke_ctx **out)
{
    suite_id sid = hpke_suite(s);
    uint8_t ksc[1 + 2 * NH], secret[NH];
    veil_secbuf *mem;
    veil_hpke_ctx *c;
    veil_rc rc;

    rc = veil_secbuf_new(sizeof *c, &mem);
    if (rc != VEIL_OK)
        return rc;
    c = (veil_hpke_ctx *)veil_secbuf_data(mem);
    memset(c, 0, sizeof *c);
    c->mem = mem;
    c->suite = *s;
    ksc[0] = MODE_BASE;
    rc = labeled_extract(e, &sid, NULL, 0, "psk_id_hash", NULL, 0, ksc + 1);
    if (rc == VEIL_OK)
        rc = labeled_extract(e, &sid, NULL, 0, "info_hash", info, info_len,
                             ksc + 1 + NH);
    if (rc == VEIL_OK)
        rc = labeled_extract(e, &sid, ss, NH, "secret", NULL, 0, secret);
    if (rc == VEIL_OK && veil_hpke_nk(s->aead))
        rc = labeled_expand(e, &sid, secret, "key", ksc, sizeof ksc, c->key,
                            veil_hpke_nk(s->aead));
    if (rc == VEIL_OK && veil_hpke_nn(s->aead))
        rc = labeled_expand(e, &sid, secret, "base_nonce", ksc, sizeof ksc,
                            c->base_nonce, veil_hpke_nn(s->aead));
    if (rc == VEIL_OK)
        rc = labeled_expand(e, &sid, secret, "exp", ksc, sizeof ksc,
                            c->exporter_secret, NH);
    veil_wipe(secret, sizeof secret);
    if (rc != VEIL_OK) {
        veil_secbuf_free(mem);
        return rc;
    }
    *out = c;
    return VEIL_OK;
}

static veil_rc setup_args(const veil_hpke_suite *s, const uint8_t *info,
                          size_t info_len, veil_hpke_ctx **out)
{
    if (!out || (info_len && !info))
        return veil_err(VEIL_E_ARG, HP, NULL, "HPKE setup: missing argument");
    *out = NULL;
    return veil_hpke_suite_check(s);
}

veil_rc veil_hpke_setup_base_s(veil_engine *e, const veil_hpke_suite *s,
                               const uint8_t *pkR, size_t pkR_len,
                               const uint8_t *info, size_t info_len,
                               const veil_hpke_key *eph, uint8_t *enc,
                               size_t *enc_len, veil_hpke_ctx **out)
{
    veil_hpke_key *fresh = NULL;
    veil_secbuf *z = NULL;
    uint8_t ss[NH];
    size_t n;
    veil_rc rc;

    veil_err_clear();
    rc = setup_args(s, info, info_len, out);
    if (rc != VEIL_OK)
        return rc;
    if (!e || !pkR || !enc || !enc_len)
        return veil_err(VEIL_E_ARG, HP, NULL, "SetupBaseS: missing argument");
    n = veil_hpke_nenc(s->kem);
    if (pkR_len != n || *enc_len < n)
        return veil_err(VEIL_E_ARG, HP, NULL,
                        "SetupBaseS: public key or enc buffer of the wrong "
                        "size");
    if (eph && (eph->kem != s->kem || !eph->pkey))
        return veil_err(VEIL_E_KEY, HP, NULL,
                        "SetupBaseS: the ephemeral key must be a software "
                        "key of the suite's KEM");
    if (!eph) {
        rc = veil_hpke_key_generate(s->kem, &fresh);
        eph = fresh;
    }
    if (rc == VEIL_OK)
        rc = dh_soft(s->kem, eph->pkey, pkR, pkR_len, &z);
    if (rc == VEIL_OK)
        rc = veil_hpke_key_public(eph, enc, enc_len);
    if (rc == VEIL_OK)
        rc = extract_and_expand(e, s->kem, z, enc, pkR, ss);
    if (rc == VEIL_OK)
        rc = key_schedule(e, s, ss, info, info_len, out);
    veil_wipe(ss, sizeof ss);
    veil_secbuf_free(z);
    veil_hpke_key_free(fresh);
    return rc;
}

veil_rc veil_hpke_setup_base_r(veil_engine *e, const veil_hpke_suite *s,
                               const veil_hpke_key *skR, const uint8_t *enc,
                               size_t enc_len, const uint8_t *info,
                               size_t info_len, veil_hpke_ctx **out)
{
    uint8_t pkR[VEIL_HPKE_ENC_MAX], ss[NH];
    size_t pkR_len = sizeof pkR;
    veil_secbuf *z = NULL;
    veil_rc rc;

    veil_err_clear();
    rc = setup_args(s, info, info_len, out);
    if (rc != VEIL_OK)
        return rc;
    if (!e || !skR || !enc)
        return veil_err(VEIL_E_ARG, HP, NULL, "SetupBaseR: missing argument");
    if (skR->kem != s->kem)
        return veil_err(VEIL_E_KEY, HP, NULL,
                        "SetupBaseR: the key is for KEM 0x%04x, the suite "
                        "names 0x%04x",
                        skR->kem, s->kem);
    if (enc_len != veil_hpke_nenc(s->kem))
        return veil_err(VEIL_E_ARG, HP, NULL, "SetupBaseR: enc is %zu bytes",
                        enc_len);
    rc = dh(e, skR, enc, enc_len, &z);
    if (rc == VEIL_OK)
        rc = veil_hpke_key_public(skR, pkR, &pkR_len);
    if (rc == VEIL_OK)
        rc = extract_and_expand(e, s->kem, z, enc, pkR, ss);
    if (rc == VEIL_OK)
        rc = key_schedule(e, s, ss, info, info_len, out);
    veil_wipe(ss, sizeof ss);
    veil_secbuf_free(z);
    return rc;
}

/* ---- 5. Seal, Open, Export -------------------------------------------- */

/* base_nonce XOR I2OSP(seq, Nn). */
static void nonce_for(const veil_hpke_ctx *c, uint8_t n[VEIL_HPKE_NONCE_LEN])
{
    memcpy(n, c->base_nonce, VEIL_HPKE_NONCE_LEN);
    for (size_t i = 0; i < 8; i++)
        n[VEIL_HPKE_NONCE_LEN - 1 - i] ^= (uint8_t)(c->seq >> (8 * i));
}

static veil_rc aead_args(const veil_hpke_ctx *c, const uint8_t *aad,
                         size_t aad_len, const char *what)
{
    if (!c || (aad_len && !aad))
        return veil_err(VEIL_E_ARG, HP, NULL, "%s: missing argument", what);
    if (!veil_hpke_nk(c->suite.aead))
        return veil_err(VEIL_E_UNSUPPORTED, HP, NULL,
                        "%s: this context is export-only", what);
    /* Nn = 12 bytes of sequence number: 64 bits run out first. */
    if (c->seq == UINT64_MAX)
        return veil_err(VEIL_E_ARG, HP, NULL, "%s: MessageLimitReachedError",
                        what);
    return VEIL_OK;
}

veil_rc veil_hpke_seal(veil_engine *e, veil_hpke_ctx *c, const uint8_t *aad,
                       size_t aad_len, const uint8_t *pt, size_t pt_len,
                       uint8_t *ct)
{
    uint8_t nonce[VEIL_HPKE_NONCE_LEN];
    veil_rc rc;

    veil_err_clear();
    rc = aead_args(c, aad, aad_len, "HPKE Seal");
    if (rc == VEIL_OK && (!e || (pt_len && !pt) || !ct))
        rc = veil_err(VEIL_E_ARG, HP, NULL, "HPKE Seal: missing argument");
    if (rc != VEIL_OK)
        return rc;
    nonce_for(c, nonce);
    rc = veil_aes_gcm_seal(e, c->key, veil_hpke_nk(c->suite.aead), nonce,
                           sizeof nonce, aad, aad_len, pt, pt_len, ct,
                           ct + pt_len);
    if (rc == VEIL_OK)
        c->seq++;
    return rc;
}

veil_rc veil_hpke_open(veil_engine *e, veil_hpke_ctx *c, const uint8_t *aad,
                       size_t aad_len, const uint8_t *ct, size_t ct_len,
                       uint8_t *pt)
{
    uint8_t nonce[VEIL_HPKE_NONCE_LEN];
    size_t len;
    veil_rc rc;

    veil_err_clear();
    rc = aead_args(c, aad, aad_len, "HPKE Open");
    if (rc == VEIL_OK && (!e || !ct || (ct_len > VEIL_HPKE_TAG_LEN && !pt)))
        rc = veil_err(VEIL_E_ARG, HP, NULL, "HPKE Open: missing argument");
    if (rc != VEIL_OK)
        return rc;
    if (ct_len < VEIL_HPKE_TAG_LEN)
        return veil_err(VEIL_E_DECRYPT, HP, NULL, "HPKE: OpenError");
    len = ct_len - VEIL_HPKE_TAG_LEN;
    nonce_for(c, nonce);
    rc = veil_aes_gcm_open(e, c->key, veil_hpke_nk(c->suite.aead), nonce,
                           sizeof nonce, aad, aad_len, ct, len, ct + len, pt);
    if (rc != VEIL_OK) {
        if (len)
            veil_wipe(pt, len);
        return veil_err(VEIL_E_DECRYPT, HP, NULL, "HPKE: OpenError");
    }
    c->seq++;
    return VEIL_OK;
}

veil_rc veil_hpke_export(veil_engine *e, const veil_hpke_ctx *c,
                         const uint8_t *exp_ctx, size_t exp_ctx_len,
                         uint8_t *out, size_t len)
{
    suite_id sid;

    veil_err_clear();
    if (!e || !c || (exp_ctx_len && !exp_ctx) || !out)
        return veil_err(VEIL_E_ARG, HP, NULL, "HPKE Export: missing argument");
    if (exp_ctx_len > EXP_CTX_MAX)
        return veil_err(VEIL_E_ARG, HP, NULL,
                        "HPKE Export: context of %zu bytes; at most %d",
                        exp_ctx_len, EXP_CTX_MAX);
    if (len == 0 || len > 255 * NH)
        return veil_err(VEIL_E_ARG, HP, NULL,
                        "HPKE Export: length must be 1..8160 (got %zu)", len);
    sid = hpke_suite(&c->suite);
    return labeled_expand(e, &sid, c->exporter_secret, "sec", exp_ctx,
                          exp_ctx_len, out, len);
}

const veil_hpke_suite *veil_hpke_ctx_suite(const veil_hpke_ctx *c)
{
    return c ? &c->suite : NULL;
}

void veil_hpke_ctx_free(veil_hpke_ctx *c)
{
    if (c)
        veil_secbuf_free(c->mem); /* zeroed on free */
}
