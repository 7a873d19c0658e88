/* The software provider: OpenSSL 3 EVP.
 *
 * Private keys live in EVP_PKEYs whose private BIGNUMs OpenSSL places in
 * its secure heap (locked, not dumped, wiped; see engine/secmem.c).  Keys
 * persist, when asked, in the NOMYO key-directory layout: DIR/private_key.pem
 * (PKCS#8, encrypted when a password is given) and DIR/public_key.pem, both
 * created 0600.  For software keys k->pub holds the whole key pair.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/modes.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include "engine_int.h"

#define SW "software"

typedef struct sw_key {
    char dir[PATH_MAX]; /* key directory it came from, or "" */
} sw_key;

static int sw_claims(const char *where)
{
    return strcmp(where, SW) == 0 || strncmp(where, "dir:", 4) == 0;
}

static veil_rc sw_open(veil_provider *p, const char *where)
{
    p->caps.rsa_min_bits = 2048;
    p->caps.rsa_max_bits = 4096;
    snprintf(p->caps.description, sizeof p->caps.description, "%s",
             OpenSSL_version(OPENSSL_VERSION));
    return VEIL_OK;
}

static void sw_close(veil_provider *p)
{
}

static void sw_fill(veil_key *k, EVP_PKEY *pkey, int has_private)
{
    k->pub = pkey;
    k->bits = (unsigned)EVP_PKEY_get_bits(pkey);
    k->type = EVP_PKEY_is_a(pkey, "RSA") ? VEIL_KEY_RSA : VEIL_KEY_EC_P256;
    k->has_private = has_private;
}

static veil_rc sw_generate(veil_provider *p, const veil_keygen_params *kp,
                           veil_key *k)
{
    EVP_PKEY *pkey = NULL;

    if (kp->type == VEIL_KEY_RSA) {
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
        if (!ctx || EVP_PKEY_keygen_init(ctx) <= 0 ||
            EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, (int)kp->bits) <= 0 ||
            EVP_PKEY_generate(ctx, &pkey) <= 0) {
            EVP_PKEY_CTX_free(ctx);
            return veil_err_ossl(VEIL_E_CRYPTO, SW,
                                 "RSA key generation failed");
        }
        EVP_PKEY_CTX_free(ctx);
    } else {
        pkey = EVP_EC_gen("P-256");
        if (!pkey)
            return veil_err_ossl(VEIL_E_CRYPTO, SW, "EC key generation failed");
    }
    sw_fill(k, pkey, 1);
    snprintf(k->label, sizeof k->label, "%s", kp->label ? kp->label : "");
    if (kp->id && kp->id_len) {
        k->id_len = kp->id_len < sizeof k->id ? kp->id_len : sizeof k->id;
        memcpy(k->id, kp->id, k->id_len);
    }
    return VEIL_OK;
}

/* ---- key files -------------------------------------------------------- */

struct pw_ctx {
    const veil_engine *e;
    int asked;
    veil_rc rc;
};

/* OpenSSL password callback: the password comes from the engine's PIN
 * source, straight from a secret buffer into OpenSSL's buffer. */
static int sw_password_cb(char *buf, int size, int rwflag, void *u)
{
    struct pw_ctx *c = u;
    veil_secbuf *pw = NULL;
    size_t n;

    c->asked = 1;
    c->rc = veil_pin_read(&c->e->cfg.pin, "Key file password: ", &pw);
    if (c->rc != VEIL_OK)
        return -1;
    n = veil_secbuf_len(pw);
    if (n > (size_t)size)
        n = (size_t)size;
    memcpy(buf, veil_secbuf_data(pw), n);
    veil_secbuf_free(pw);
    return (int)n;
}

static veil_rc sw_load_dir(veil_provider *p, const char *dir, veil_key *k)
{
    char path[PATH_MAX];
    struct pw_ctx pw = {p->engine, 0, VEIL_OK};
    EVP_PKEY *pkey;
    struct stat st;
    FILE *f;

    if (snprintf(path, sizeof path, "%s/private_key.pem", dir) >=
        (int)sizeof path)
        return veil_err(VEIL_E_ARG, SW, NULL, "key directory path too long");
    f = fopen(path, "re");
    if (!f)
        return veil_err(errno == ENOENT ? VEIL_E_NOT_FOUND : VEIL_E_IO, SW,
                        NULL, "%s: %s", path, strerror(errno));
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO)))
        veil_log(p->engine, VEIL_LOG_WARN,
                 "software: %s is accessible to group or others; chmod 600 it",
                 path);
    pkey = PEM_read_PrivateKey(f, NULL, sw_password_cb, &pw);
    fclose(f);
    if (!pkey) {
        if (pw.asked && pw.rc != VEIL_OK) {
            ERR_clear_error();
            return veil_err(pw.rc, SW, NULL,
                            "%s is encrypted and no password could be read: %s",
                            path, veil_last_error()->message);
        }
        if (pw.asked)
            return veil_err_ossl(VEIL_E_PIN, SW,
                                 "%s: wrong password or damaged file", path);
        return veil_err_ossl(VEIL_E_KEY, SW, "%s: not a private key", path);
    }
    if (!EVP_PKEY_is_a(pkey, "RSA") && !EVP_PKEY_is_a(pkey, "EC")) {
        EVP_PKEY_free(pkey);
        return veil_err(VEIL_E_KEY, SW, NULL, "%s: neither RSA nor EC", path);
    }
    sw_fill(k, pkey, 1);
    k->persistent = 1;
    snprintf(((sw_key *)k->state)->dir, PATH_MAX, "%s", dir);
    snprintf(k->label, sizeof k->label, "%s", dir);
    return VEIL_OK;
}

static veil_rc sw_key_open(veil_provider *p, const char *ref, veil_key *k)
{
    if (strncmp(ref, "dir:", 4) != 0 || !ref[4])
        return veil_err(VEIL_E_ARG, SW, NULL,
                        "software keys are opened as dir:PATH");
    return sw_load_dir(p, ref + 4, k);
}

static veil_rc sw_key_list(veil_provider *p, const char *where,
                           veil_key_list_fn cb, void *ctx)
{
    veil_key_info info;
    veil_key *k = NULL;
    veil_rc rc;

    if (!where || strncmp(where, "dir:", 4) != 0)
        return VEIL_OK; /* in-memory keys are not enumerable */
    rc = veil_key_open(p->engine, where, &k);
    if (rc == VEIL_E_NOT_FOUND)
        return VEIL_OK;
    if (rc != VEIL_OK)
        return rc;
    rc = veil_key_get_info(k, &info);
    if (rc == VEIL_OK)
        cb(ctx, &info);
    veil_key_free(k);
    return rc;
}

static veil_rc sw_key_delete(veil_provider *p, veil_key *k)
{
    const sw_key *s = k->state;
    char path[PATH_MAX + 32];

    if (!s->dir[0])
        return VEIL_OK; /* in memory: freeing it is deleting it */
    snprintf(path, sizeof path, "%s/private_key.pem", s->dir);
    if (unlink(path) != 0)
        return veil_err(VEIL_E_IO, SW, NULL, "%s: %s", path, strerror(errno));
    snprintf(path, sizeof path, "%s/public_key.pem", s->dir);
    if (unlink(path) != 0 && errno != ENOENT)
        return veil_err(VEIL_E_IO, SW, NULL, "%s: %s", path, strerror(errno));
    return VEIL_OK;
}

/* Writes a BIO's bytes to a new 0600 file; refuses to overwrite. */
static veil_rc write_new_file(const char *path, BIO *bio)
{
    char *data;
    long n = BIO_get_mem_data(bio, &data);
    ssize_t w = 0;
    int fd;

    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return veil_err(errno == EEXIST ? VEIL_E_EXISTS : VEIL_E_IO, SW, NULL,
                        "%s: %s", path, strerror(errno));
    for (long off = 0; off < n && w >= 0; off += w)
        w = write(fd, data + off, (size_t)(n - off));
    if (w < 0 || fsync(fd) != 0) {
        int err = errno;
        close(fd);
        unlink(path);
        return veil_err(VEIL_E_IO, SW, NULL, "%s: %s", path, strerror(err));
    }
    close(fd);
    return VEIL_OK;
}

static veil_rc sw_key_save(veil_provider *p, const veil_key *k, const char *dir,
                           const veil_pin_source *password)
{
    char priv[PATH_MAX], pub[PATH_MAX];
    veil_secbuf *pw = NULL;
    BIO *bio = NULL;
    int ok;
    veil_rc rc;

    if (snprintf(priv, sizeof priv, "%s/private_key.pem", dir) >=
            (int)sizeof priv ||
        snprintf(pub, sizeof pub, "%s/public_key.pem", dir) >= (int)sizeof pub)
        return veil_err(VEIL_E_ARG, SW, NULL, "key directory path too long");
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return veil_err(VEIL_E_IO, SW, NULL, "%s: %s", dir, strerror(errno));
    if (password && password->kind != VEIL_PIN_NONE) {
        rc = veil_pin_read(password, "New key file password: ", &pw);
        if (rc != VEIL_OK)
            return rc;
    }
    /* The PEM text of a private key is a secret: secure-heap BIO. */
    bio = BIO_new(BIO_s_secmem());
    ok = bio != NULL;
    if (ok && pw)
        ok = PEM_write_bio_PKCS8PrivateKey(
            bio, k->pub, EVP_aes_256_cbc(), (const char *)veil_secbuf_data(pw),
            (int)veil_secbuf_len(pw), NULL, NULL);
    else if (ok)
        ok = PEM_write_bio_PKCS8PrivateKey(bio, k->pub, NULL, NULL, 0, NULL,
                                           NULL);
    veil_secbuf_free(pw);
    if (!ok) {
        BIO_free(bio);
        return veil_err_ossl(VEIL_E_CRYPTO, SW,
                             "cannot encode the private key");
    }
    rc = write_new_file(priv, bio);
    BIO_free(bio);
    if (rc != VEIL_OK)
        return rc;
    bio = BIO_new(BIO_s_mem());
    if (!bio || !PEM_write_bio_PUBKEY(bio, k->pub)) {
        BIO_free(bio);
        unlink(priv);
        return veil_err_ossl(VEIL_E_CRYPTO, SW, "cannot encode the public key");
    }
    rc = write_new_file(pub, bio);
    BIO_free(bio);
    if (rc != VEIL_OK)
        unlink(priv);
    return rc;
}

static veil_rc sw_key_info(veil_provider *p, const veil_key *k,
                           veil_key_info *info)
{
    const sw_key *s = k->state;

    if (s && s->dir[0])
        snprintf(info->uri, sizeof info->uri, "dir:%.500s", s->dir);
    return VEIL_OK;
}

/* ---- operations ------------------------------------------------------- */

static int set_oaep(EVP_PKEY_CTX *ctx, const veil_oaep *oaep)
{
    const EVP_MD *md = veil_oaep_md(oaep);
    unsigned char *label;

    if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) <= 0 ||
        EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) <= 0)
        return 0;
    if (!oaep || !oaep->label_len)
        return 1;
    label = OPENSSL_memdup(oaep->label, oaep->label_len);
    if (!label)
        return 0;
    if (EVP_PKEY_CTX_set0_rsa_oaep_label(ctx, label, (int)oaep->label_len) <=
        0) {
        OPENSSL_free(label);
        return 0;
    }
    return 1;
}

static veil_rc sw_rsa_decrypt(veil_provider *p, const veil_key *k,
                              const veil_oaep *oaep, const uint8_t *in,
                              size_t in_len, veil_secbuf **out)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, k->pub, NULL);
    size_t n = (size_t)EVP_PKEY_get_size(k->pub);
    veil_secbuf *buf = NULL;
    veil_rc rc;

    if (!ctx || EVP_PKEY_decrypt_init(ctx) <= 0 || !set_oaep(ctx, oaep)) {
        EVP_PKEY_CTX_free(ctx);
        return veil_err_ossl(VEIL_E_CRYPTO, SW, "RSA-OAEP set-up failed");
    }
    rc = veil_secbuf_new(n, &buf);
    if (rc == VEIL_OK &&
        EVP_PKEY_decrypt(ctx, veil_secbuf_data(buf), &n, in, in_len) <= 0) {
        /* One fixed message whatever went wrong: no padding oracle. */
        ERR_clear_error();
        rc = veil_err(VEIL_E_DECRYPT, SW, NULL, "decryption failed");
    }
    EVP_PKEY_CTX_free(ctx);
    if (rc != VEIL_OK) {
        veil_secbuf_free(buf);
        return rc;
    }
    veil_secbuf_truncate(buf, n);
    *out = buf;
    return VEIL_OK;
}

static veil_rc sw_rsa_encrypt(veil_provider *p, const veil_key *k,
                              const veil_oaep *oaep, const uint8_t *in,
                              size_t in_len, uint8_t *out, size_t *out_len)
{
    EVP_PKEY_CTX *ctx;
    size_t need = (size_t)EVP_PKEY_get_size(k->pub);

    if (*out_len < need)
        return veil_err(VEIL_E_BUFFER, SW, NULL,
                        "RSA output buffer needs %zu bytes", need);
    ctx = EVP_PKEY_CTX_new_from_pkey(NULL, k->pub, NULL);
    if (!ctx || EVP_PKEY_encrypt_init(ctx) <= 0 || !set_oaep(ctx, oaep) ||
        EVP_PKEY_encrypt(ctx, out, out_len, in, in_len) <= 0) {
        EVP_PKEY_CTX_free(ctx);
        return veil_err_ossl(VEIL_E_ARG, SW,
                             "RSA-OAEP encrypt failed (message too long?)");
    }
    EVP_PKEY_CTX_free(ctx);
    return VEIL_OK;
}

static veil_rc sw_ecdsa_sign(veil_provider *p, const veil_key *k,
                             const uint8_t *msg, size_t len, uint8_t *sig,
                             size_t *sig_len)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();

    if (!ctx ||
        EVP_DigestSignInit_ex(ctx, NULL, "SHA256", NULL, NULL, k->pub, NULL) <=
            0 ||
        EVP_DigestSign(ctx, sig, sig_len, msg, len) <= 0) {
        EVP_MD_CTX_free(ctx);
        return veil_err_ossl(VEIL_E_CRYPTO, SW, "ECDSA sign failed");
    }
    EVP_MD_CTX_free(ctx);
    return VEIL_OK;
}

static veil_rc sw_ecdsa_verify(veil_provider *p, const veil_key *k,
                               const uint8_t *msg, size_t len,
                               const uint8_t *sig, size_t sig_len)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int r;

    if (!ctx || EVP_DigestVerifyInit_ex(ctx, NULL, "SHA256", NULL, NULL, k->pub,
                                        NULL) <= 0) {
        EVP_MD_CTX_free(ctx);
        return veil_err_ossl(VEIL_E_CRYPTO, SW, "ECDSA verify set-up failed");
    }
    /* OpenSSL insists on strict DER (re-encodes and compares). */
    r = EVP_DigestVerify(ctx, sig, sig_len, msg, len);
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    if (r != 1)
        return veil_err(VEIL_E_VERIFY, SW, NULL, "signature does not verify");
    return VEIL_OK;
}

static const EVP_CIPHER *gcm_cipher(size_t key_len)
{
    return key_len == 16   ? EVP_aes_128_gcm()
           : key_len == 24 ? EVP_aes_192_gcm()
                           : EVP_aes_256_gcm();
}

/* OpenSSL 3.0's GCM takes IVs of at most 128 bytes; longer ones (allowed by
 * the GCM spec, used by no protocol of ours) go through CRYPTO_gcm128 with
 * AES-ECB as the block function. */
#define GCM_EVP_MAX_IV 128

static void gcm_block(const unsigned char in[16], unsigned char out[16],
                      const void *ecb)
{
    int n;

    EVP_EncryptUpdate((EVP_CIPHER_CTX *)ecb, out, &n, in, 16);
}

static veil_rc sw_aes_gcm_long_iv(int enc, const uint8_t *key, size_t key_len,
                                  const uint8_t *iv, size_t iv_len,
                                  const uint8_t *aad, size_t aad_len,
                                  const uint8_t *in, size_t len, uint8_t *out,
                                  uint8_t *tag)
{
    EVP_CIPHER_CTX *ecb = EVP_CIPHER_CTX_new();
    GCM128_CONTEXT *g = NULL;
    int ok, auth = 1;

    ok = ecb &&
         EVP_EncryptInit_ex(ecb,
                            key_len == 16   ? EVP_aes_128_ecb()
                            : key_len == 24 ? EVP_aes_192_ecb()
                                            : EVP_aes_256_ecb(),
                            NULL, key, NULL) &&
         EVP_CIPHER_CTX_set_padding(ecb, 0) &&
         (g = CRYPTO_gcm128_new(ecb, gcm_block)) != NULL;
    if (ok) {
        CRYPTO_gcm128_setiv(g, iv, iv_len);
        ok = !aad_len || CRYPTO_gcm128_aad(g, aad, aad_len) == 0;
    }
    if (ok && len)
        ok = (enc ? CRYPTO_gcm128_encrypt(g, in, out, len)
                  : CRYPTO_gcm128_decrypt(g, in, out, len)) == 0;
    if (ok && enc)
        CRYPTO_gcm128_tag(g, tag, VEIL_GCM_TAG_LEN);
    else if (ok)
        auth = CRYPTO_gcm128_finish(g, tag, VEIL_GCM_TAG_LEN) == 0;
    CRYPTO_gcm128_release(g);
    EVP_CIPHER_CTX_free(ecb);
    if (!ok)
        return veil_err_ossl(VEIL_E_CRYPTO, SW, "AES-GCM failed");
    if (!auth) {
        veil_wipe(out, len); /* never hand out unauthenticated plaintext */
        return veil_err(VEIL_E_DECRYPT, SW, NULL, "decryption failed");
    }
    return VEIL_OK;
}

static veil_rc sw_aes_gcm(veil_provider *p, int enc, const uint8_t *key,
                          size_t key_len, const uint8_t *iv, size_t iv_len,
                          const uint8_t *aad, size_t aad_len, const uint8_t *in,
                          size_t len, uint8_t *out, uint8_t *tag)
{
    EVP_CIPHER_CTX *ctx;
    int n = 0, ok;

    if (iv_len > GCM_EVP_MAX_IV)
        return sw_aes_gcm_long_iv(enc, key, key_len, iv, iv_len, aad, aad_len,
                                  in, len, out, tag);
    ctx = EVP_CIPHER_CTX_new();
    ok = ctx &&
         EVP_CipherInit_ex(ctx, gcm_cipher(key_len), NULL, NULL, NULL, enc) &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, (int)iv_len, NULL) &&
         EVP_CipherInit_ex(ctx, NULL, NULL, key, iv, enc);
    if (ok && !enc)
        ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, VEIL_GCM_TAG_LEN,
                                 tag);
    if (ok && aad_len)
        ok = EVP_CipherUpdate(ctx, NULL, &n, aad, (int)aad_len);
    if (ok && len)
        ok = EVP_CipherUpdate(ctx, out, &n, in, (int)len);
    if (!ok) {
        EVP_CIPHER_CTX_free(ctx);
        return veil_err_ossl(VEIL_E_CRYPTO, SW, "AES-GCM failed");
    }
    if (EVP_CipherFinal_ex(ctx, out + n, &n) <= 0) {
        EVP_CIPHER_CTX_free(ctx);
        ERR_clear_error();
        if (enc)
            return veil_err(VEIL_E_CRYPTO, SW, NULL, "AES-GCM seal failed");
        /* Never hand out unauthenticated plaintext. */
        veil_wipe(out, len);
        return veil_err(VEIL_E_DECRYPT, SW, NULL, "decryption failed");
    }
    if (enc && !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, VEIL_GCM_TAG_LEN,
                                    tag)) {
        EVP_CIPHER_CTX_free(ctx);
        return veil_err_ossl(VEIL_E_CRYPTO, SW, "AES-GCM tag");
    }
    EVP_CIPHER_CTX_free(ctx);
    return VEIL_OK;
}

static veil_rc sw_hkdf(veil_provider *p, const uint8_t *salt, size_t salt_len,
                       const uint8_t *ikm, size_t ikm_len, const uint8_t *info,
                       size_t info_len, uint8_t *out, size_t out_len)
{
    EVP_KDF_CTX *ctx = veil_hkdf_sha256_ctx();
    OSSL_PARAM params[4], *q = params;
    static const uint8_t empty[1];
    int ok;

    *q++ = OSSL_PARAM_construct_octet_string(
        OSSL_KDF_PARAM_KEY, (void *)(ikm_len ? ikm : empty), ikm_len);
    *q++ = OSSL_PARAM_construct_octet_string(
        OSSL_KDF_PARAM_SALT, (void *)(salt_len ? salt : empty), salt_len);
    *q++ = OSSL_PARAM_construct_octet_string(
        OSSL_KDF_PARAM_INFO, (void *)(info_len ? info : empty), info_len);
    *q = OSSL_PARAM_construct_end();
    ok = ctx && EVP_KDF_derive(ctx, out, out_len, params) > 0;
    EVP_KDF_CTX_free(ctx);
    if (!ok)
        return veil_err_ossl(VEIL_E_CRYPTO, SW, "HKDF failed");
    return VEIL_OK;
}

/* ECDH: OpenSSL's EVP_PKEY_derive with the key pair and the peer's point.
 * The engine has validated the point in full (on the curve, which for
 * P-256's cofactor 1 is all of SP 800-56A's check), so OpenSSL's own check
 * at set_peer, which adds a second scalar multiplication (n * Q) and
 * doubles the cost, is not asked for.  Decoding the point below still
 * refuses one off the curve. */
static veil_rc sw_ecdh_derive(veil_provider *p, const veil_key *k,
                              const uint8_t *peer, size_t peer_len,
                              veil_secbuf **z)
{
    EVP_PKEY *pk = EVP_PKEY_new();
    EVP_PKEY_CTX *ctx = NULL;
    veil_secbuf *out = NULL;
    size_t len = VEIL_ECDH_P256_Z_LEN;
    veil_rc rc;

    (void)p;
    if (!pk || !EVP_PKEY_copy_parameters(pk, k->pub) ||
        !EVP_PKEY_set1_encoded_public_key(pk, peer, peer_len)) {
        EVP_PKEY_free(pk);
        return veil_err_ossl(VEIL_E_ARG, SW, "ECDH: bad peer point");
    }
    rc = veil_secbuf_new(len, &out);
    if (rc == VEIL_OK) {
        ctx = EVP_PKEY_CTX_new_from_pkey(NULL, k->pub, NULL);
        if (!ctx || EVP_PKEY_derive_init(ctx) <= 0 ||
            EVP_PKEY_derive_set_peer_ex(ctx, pk, 0) <= 0 ||
            EVP_PKEY_derive(ctx, veil_secbuf_data(out), &len) <= 0 ||
            len != VEIL_ECDH_P256_Z_LEN)
            rc = veil_err_ossl(VEIL_E_CRYPTO, SW, "ECDH derive failed");
    }
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(pk);
    if (rc != VEIL_OK) {
        veil_secbuf_free(out);
        return rc;
    }
    *z = out;
    return VEIL_OK;
}

static veil_rc sw_random(veil_provider *p, uint8_t *buf, size_t len)
{
    if (len > INT_MAX || RAND_bytes(buf, (int)len) != 1)
        return veil_err_ossl(VEIL_E_CRYPTO, SW, "random generator failed");
    return VEIL_OK;
}

const veil_provider_ops veil_provider_software = {
    .abi = VEIL_PROVIDER_ABI,
    .ops_size = sizeof(veil_provider_ops),
    .name = SW,
    .static_caps = VEIL_CAP_RSA_GEN | VEIL_CAP_RSA_OAEP_SHA256 |
                   VEIL_CAP_RSA_OAEP_SHA1 | VEIL_CAP_EC_GEN | VEIL_CAP_ECDSA |
                   VEIL_CAP_AES_GCM | VEIL_CAP_HKDF | VEIL_CAP_RANDOM |
                   VEIL_CAP_PERSIST | VEIL_CAP_ECDH,
    .state_size = 0,
    .key_state_size = sizeof(sw_key),
    .claims = sw_claims,
    .open = sw_open,
    .close = sw_close,
    .key_generate = sw_generate,
    .key_open = sw_key_open,
    .key_list = sw_key_list,
    .key_delete = sw_key_delete,
    .key_info = sw_key_info,
    .rsa_decrypt = sw_rsa_decrypt,
    .ecdsa_sign = sw_ecdsa_sign,
    .rsa_encrypt = sw_rsa_encrypt,
    .ecdsa_verify = sw_ecdsa_verify,
    .aes_gcm = sw_aes_gcm,
    .hkdf_sha256 = sw_hkdf,
    .random = sw_random,
    .key_save = sw_key_save,
    .ecdh_derive = sw_ecdh_derive,
};
