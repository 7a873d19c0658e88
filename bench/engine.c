/* veil-bench software, pkcs11 and all: operations per second through each
 * veil provider next to the same operation done directly in the same
 * process, and the ratio veil / baseline.
 *
 *   software  RSA-OAEP-SHA256 decrypt vs bare OpenSSL EVP_PKEY_decrypt,
 *             AES-256-GCM seal vs bare OpenSSL EVP
 *   pkcs11    RSA-OAEP-SHA256 decrypt vs a bare C_Decrypt loop on the same
 *             token key (SoftHSM2), and AES-256-GCM seal in the token vs
 *             a bare C_Encrypt loop
 *
 * Also the bare PKCS#11 side that the gateway benchmark shares (bench.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>

#include "bench.h"
#include "gateway.h"

#define TARGET 0.90 /* veil should reach 90% of the bare rate */

/* ---- measuring ---------------------------------------------------------- */

static void print_table_header(void)
{
    printf("%-36s %12s %12s %-4s %7s %6s  %s\n", "measurement", "veil",
           "baseline", "unit", "ratio", "target", "result");
}

/* Interleaved rounds of veil_op and base_op; prints one table line.
 * `scale` turns operations per second into `unit`. */
static int measure(const bench_opts *o, const char *name, const char *unit,
                   double scale, bench_op veil_op, void *veil_ctx,
                   bench_op base_op, void *base_ctx, double *ratio_out)
{
    double vr[MAX_ROUNDS], br[MAX_ROUNDS];
    double v, b, ratio;
    unsigned r;

    for (r = 0; r < o->rounds; r++) {
        if (time_slice(veil_op, veil_ctx, o->seconds, &vr[r]) != 0 ||
            time_slice(base_op, base_ctx, o->seconds, &br[r]) != 0)
            return -1;
    }
    v = median(vr, o->rounds) * scale;
    b = median(br, o->rounds) * scale;
    ratio = b > 0 ? v / b : 0;
    printf("%-36s %12.1f %12.1f %-4s %7.3f %6.2f  %s\n", name, v, b, unit,
           ratio, TARGET, ratio >= TARGET ? "ok" : "BELOW");
    fflush(stdout);
    if (ratio_out)
        *ratio_out = ratio;
    return 0;
}

/* ---- software RSA ------------------------------------------------------- */

typedef struct rsa_sw_ctx {
    veil_engine *e;
    veil_key *key;  /* veil's copy of the key (software provider) */
    EVP_PKEY *pkey; /* the same key, for bare OpenSSL */
    uint8_t ct[512];
    size_t ct_len;
    uint8_t out[512];
    size_t out_len;
} rsa_sw_ctx;

static int op_veil_rsa_decrypt(void *arg)
{
    rsa_sw_ctx *c = arg;
    veil_secbuf *pt = NULL;

    if (veil_rsa_decrypt(c->e, c->key, NULL, c->ct, c->ct_len, &pt) != VEIL_OK)
        return veil_fail("veil_rsa_decrypt");
    veil_secbuf_free(pt);
    return 0;
}

/* The baseline makes a fresh EVP_PKEY_CTX per operation: that is what a
 * straightforward caller of EVP_PKEY_decrypt does, and a fair match for an
 * engine call that carries no per-key context between calls. */
static int op_ossl_rsa_decrypt(void *arg)
{
    rsa_sw_ctx *c = arg;
    size_t outlen = sizeof c->out;

    if (ossl_oaep_decrypt(c->pkey, c->ct, c->ct_len, c->out, &outlen) != 0)
        return ossl_fail("EVP_PKEY_decrypt");
    c->out_len = outlen;
    return 0;
}

static int write_pem_file(const char *path, EVP_PKEY *pkey, int priv)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    FILE *fp;
    int ok;

    if (fd < 0) {
        fprintf(stderr, "veil-bench: cannot create %s: %s\n", path,
                strerror(errno));
        return -1;
    }
    fp = fdopen(fd, "w");
    if (!fp) {
        fprintf(stderr, "veil-bench: fdopen %s: %s\n", path, strerror(errno));
        close(fd);
        return -1;
    }
    ok = priv ? PEM_write_PrivateKey(fp, pkey, NULL, NULL, 0, NULL, NULL)
              : PEM_write_PUBKEY(fp, pkey);
    if (fclose(fp) != 0)
        ok = 0;
    if (ok != 1) {
        ERR_clear_error();
        fprintf(stderr, "veil-bench: cannot write %s\n", path);
        return -1;
    }
    return 0;
}

/* 1 when veil's key and pkey have the same public key. */
static int same_public_key(const veil_key *k, EVP_PKEY *pkey)
{
    uint8_t *vder = NULL, *oder = NULL;
    size_t vlen = 0;
    int olen, same;

    if (veil_key_public_der(k, &vder, &vlen) != VEIL_OK)
        return veil_fail("veil_key_public_der");
    olen = i2d_PUBKEY(pkey, &oder);
    if (olen <= 0) {
        free(vder);
        return ossl_fail("i2d_PUBKEY");
    }
    same = (size_t)olen == vlen && memcmp(vder, oder, vlen) == 0;
    free(vder);
    OPENSSL_free(oder);
    return same;
}

/* Generates an RSA key with OpenSSL and loads the very same key into veil
 * through a temporary key directory (the public API exports no private
 * keys, so this is how both sides get one key).  The files are removed as
 * soon as veil has read them. */
static int make_shared_rsa_key(veil_engine *e, unsigned bits,
                               EVP_PKEY **pkey_out, veil_key **key_out)
{
    const char *tmp = env_nonempty("TMPDIR");
    char dir[PATH_MAX], priv[PATH_MAX + 32], pub[PATH_MAX + 32];
    char ref[PATH_MAX + 8];
    EVP_PKEY *pkey;
    veil_key *key = NULL;
    veil_rc rc;
    int n, ret = -1, have_priv = 0, have_pub = 0;

    *pkey_out = NULL;
    *key_out = NULL;
    pkey = EVP_RSA_gen(bits);
    if (!pkey)
        return ossl_fail("EVP_RSA_gen");

    n = snprintf(dir, sizeof dir, "%s/veil-bench.XXXXXX", tmp ? tmp : "/tmp");
    if (n < 0 || (size_t)n >= sizeof dir) {
        fprintf(stderr, "veil-bench: TMPDIR is too long\n");
        EVP_PKEY_free(pkey);
        return -1;
    }
    if (!mkdtemp(dir)) {
        fprintf(stderr, "veil-bench: mkdtemp %s: %s\n", dir, strerror(errno));
        EVP_PKEY_free(pkey);
        return -1;
    }
    snprintf(priv, sizeof priv, "%s/private_key.pem", dir);
    snprintf(pub, sizeof pub, "%s/public_key.pem", dir);
    snprintf(ref, sizeof ref, "dir:%s", dir);

    have_priv = write_pem_file(priv, pkey, 1) == 0;
    have_pub = have_priv && write_pem_file(pub, pkey, 0) == 0;
    if (have_pub) {
        rc = veil_key_open(e, ref, &key);
        if (rc != VEIL_OK)
            veil_fail("veil_key_open(dir:...)");
    }
    if (have_pub && unlink(pub) != 0)
        fprintf(stderr, "veil-bench: unlink %s: %s\n", pub, strerror(errno));
    if (have_priv && unlink(priv) != 0)
        fprintf(stderr, "veil-bench: unlink %s: %s\n", priv, strerror(errno));
    if (rmdir(dir) != 0)
        fprintf(stderr, "veil-bench: rmdir %s: %s\n", dir, strerror(errno));

    if (key) {
        int same = same_public_key(key, pkey);
        if (same == 1) {
            ret = 0;
        } else if (same == 0) {
            fprintf(stderr,
                    "veil-bench: the key veil loaded from %s is not "
                    "the key that was written there\n",
                    ref);
        }
    }
    if (ret != 0) {
        veil_key_free(key);
        EVP_PKEY_free(pkey);
        return -1;
    }
    *pkey_out = pkey;
    *key_out = key;
    return 0;
}

static int check_plaintext(const char *who, const uint8_t *got, size_t len,
                           const uint8_t *want, size_t want_len)
{
    if (len != want_len || memcmp(got, want, len) != 0) {
        fprintf(stderr, "veil-bench: %s returned the wrong plaintext\n", who);
        return -1;
    }
    return 0;
}

static int bench_rsa_software(const bench_opts *o, veil_engine *e,
                              unsigned bits)
{
    rsa_sw_ctx c;
    uint8_t msg[RSA_MSG_LEN];
    veil_secbuf *pt = NULL;
    char name[64];
    int ret = -1;

    memset(&c, 0, sizeof c);
    c.e = e;
    if (make_shared_rsa_key(e, bits, &c.pkey, &c.key) != 0)
        return -1;
    if (veil_random(e, msg, sizeof msg) != VEIL_OK) {
        veil_fail("veil_random");
        goto out;
    }
    c.ct_len = sizeof c.ct;
    if (veil_rsa_encrypt(e, c.key, NULL, msg, sizeof msg, c.ct, &c.ct_len) !=
        VEIL_OK) {
        veil_fail("veil_rsa_encrypt");
        goto out;
    }
    /* Both sides must recover the message before anything is timed. */
    if (veil_rsa_decrypt(e, c.key, NULL, c.ct, c.ct_len, &pt) != VEIL_OK) {
        veil_fail("veil_rsa_decrypt");
        goto out;
    }
    if (check_plaintext("veil_rsa_decrypt", veil_secbuf_data(pt),
                        veil_secbuf_len(pt), msg, sizeof msg) != 0 ||
        op_ossl_rsa_decrypt(&c) != 0 ||
        check_plaintext("EVP_PKEY_decrypt", c.out, c.out_len, msg,
                        sizeof msg) != 0)
        goto out;

    snprintf(name, sizeof name, "software rsa%u oaep-decrypt", bits);
    ret = measure(o, name, "op/s", 1.0, op_veil_rsa_decrypt, &c,
                  op_ossl_rsa_decrypt, &c, NULL);
out:
    veil_secbuf_free(pt);
    OPENSSL_cleanse(c.out, sizeof c.out);
    OPENSSL_cleanse(msg, sizeof msg);
    veil_key_free(c.key);
    EVP_PKEY_free(c.pkey);
    return ret;
}

/* ---- software AES-GCM --------------------------------------------------- */

typedef struct aes_ctx {
    veil_engine *e;
    uint8_t key[32];
    uint8_t iv[GCM_IV_LEN]; /* reused on purpose: nothing here is secret */
    const uint8_t *pt;
    size_t len;
    uint8_t *ct_veil;
    uint8_t tag_veil[VEIL_GCM_TAG_LEN];
    uint8_t *ct_base; /* baseline output; for PKCS#11 len + tag bytes */
    uint8_t tag_base[VEIL_GCM_TAG_LEN];
} aes_ctx;

static int op_veil_gcm_seal(void *arg)
{
    aes_ctx *c = arg;

    if (veil_aes_gcm_seal(c->e, c->key, sizeof c->key, c->iv, sizeof c->iv,
                          NULL, 0, c->pt, c->len, c->ct_veil,
                          c->tag_veil) != VEIL_OK)
        return veil_fail("veil_aes_gcm_seal");
    return 0;
}

/* Bare EVP, a fresh EVP_CIPHER_CTX per operation. */
static int op_ossl_gcm_seal(void *arg)
{
    aes_ctx *c = arg;

    if (ossl_gcm_seal(c->key, sizeof c->key, c->iv, sizeof c->iv, c->pt, c->len,
                      c->ct_base, c->tag_base) != 0)
        return ossl_fail("EVP AES-256-GCM seal");
    return 0;
}

/* Allocates the buffers for one message size; fills key, iv and pt. */
static int aes_ctx_init(aes_ctx *c, veil_engine *e, size_t len,
                        size_t base_extra)
{
    uint8_t *pt;
    size_t i;

    memset(c, 0, sizeof *c);
    c->e = e;
    c->len = len;
    pt = malloc(len);
    c->ct_veil = malloc(len);
    c->ct_base = malloc(len + base_extra);
    if (!pt || !c->ct_veil || !c->ct_base) {
        free(pt);
        fprintf(stderr, "veil-bench: out of memory\n");
        return -1;
    }
    for (i = 0; i < len; i++)
        pt[i] = (uint8_t)(i * 131u + 7u);
    c->pt = pt;
    if (veil_random(e, c->key, sizeof c->key) != VEIL_OK ||
        veil_random(e, c->iv, sizeof c->iv) != VEIL_OK)
        return veil_fail("veil_random");
    return 0;
}

static void aes_ctx_free(aes_ctx *c)
{
    free((void *)c->pt);
    free(c->ct_veil);
    free(c->ct_base);
    memset(c, 0, sizeof *c);
}

static int bench_aes_software(const bench_opts *o, veil_engine *e, size_t len)
{
    aes_ctx c;
    char name[96], sz[32];
    int ret = -1;

    if (len > INT_MAX)
        return -1;
    if (aes_ctx_init(&c, e, len, 0) != 0)
        goto out;
    /* One call each, compared, before anything is timed (also warms up). */
    if (op_veil_gcm_seal(&c) != 0 || op_ossl_gcm_seal(&c) != 0)
        goto out;
    if (memcmp(c.ct_veil, c.ct_base, len) != 0 ||
        memcmp(c.tag_veil, c.tag_base, sizeof c.tag_veil) != 0) {
        fprintf(stderr,
                "veil-bench: veil_aes_gcm_seal and OpenSSL disagree "
                "(%zu bytes)\n",
                len);
        goto out;
    }
    size_name(len, sz, sizeof sz);
    snprintf(name, sizeof name, "software aes256-gcm seal %s", sz);
    ret = measure(o, name, "MB/s", (double)len / 1e6, op_veil_gcm_seal, &c,
                  op_ossl_gcm_seal, &c, NULL);
out:
    aes_ctx_free(&c);
    return ret;
}

/* ---- veild's metrics observer ------------------------------------------- */

/* The same engine call with and without veild's observer
 * (gw_metrics_engine_op: two clock reads and a histogram update under its
 * family's mutex), on the cheapest operation, where the observer's share
 * is largest: what GET /metrics costs a key operation. */
typedef struct obs_ctx {
    aes_ctx a;
    gw_metrics *m;
} obs_ctx;

static int op_gcm_observed(void *arg)
{
    obs_ctx *c = arg;

    veil_engine_set_observer(c->a.e, gw_metrics_engine_op, c->m);
    return op_veil_gcm_seal(&c->a);
}

static int op_gcm_unobserved(void *arg)
{
    obs_ctx *c = arg;

    veil_engine_set_observer(c->a.e, NULL, NULL);
    return op_veil_gcm_seal(&c->a);
}

static int bench_observer(const bench_opts *o, veil_engine *e)
{
    obs_ctx c = {.m = NULL};
    int ret = -1;

    if (aes_ctx_init(&c.a, e, 1024, 0) != 0)
        goto out;
    if ((c.m = gw_metrics_new()) == NULL) {
        fprintf(stderr, "veil-bench: out of memory\n");
        goto out;
    }
    printf("# veild's metrics observer: the veil call with it / without it\n");
    ret = measure(o, "observed aes256-gcm seal 1 KiB", "MB/s", 1024 / 1e6,
                  op_gcm_observed, &c, op_gcm_unobserved, &c, NULL);
out:
    veil_engine_set_observer(e, NULL, NULL);
    gw_metrics_free(c.m);
    aes_ctx_free(&c.a);
    return ret;
}

/* ---- PKCS#11 RSA -------------------------------------------------------- */

/* The bare loop: C_DecryptInit + C_Decrypt into a k-byte buffer. */
static int op_p11_decrypt(void *arg)
{
    p11_rsa_ctx *c = arg;
    CK_RV rv = p11_decrypt_once(c);

    if (rv != CKR_OK)
        return ckr_fail("C_DecryptInit/C_Decrypt", rv);
    return 0;
}

static int op_veil_p11_decrypt(void *arg)
{
    p11_rsa_ctx *c = arg;
    veil_secbuf *pt = NULL;

    if (veil_rsa_decrypt(c->e, c->key, NULL, c->ct, c->ct_len, &pt) != VEIL_OK)
        return veil_fail("veil_rsa_decrypt (pkcs11)");
    veil_secbuf_free(pt);
    return 0;
}

static int bench_rsa_pkcs11(const bench_opts *o, veil_engine *e,
                            const char *token_uri, p11_bare *b, unsigned bits)
{
    p11_rsa_ctx c;
    uint8_t msg[RSA_MSG_LEN];
    char label[32], name[64];
    const char *mech_name = "?";
    veil_keygen_params kp;
    veil_secbuf *pt = NULL;
    int ret = -1;

    memset(&c, 0, sizeof c);
    c.e = e;
    c.b = b;
    c.k = bits / 8;
    snprintf(label, sizeof label, "bench-%u", bits);
    memset(&kp, 0, sizeof kp);
    kp.type = VEIL_KEY_RSA;
    kp.bits = bits;
    kp.label = label;
    kp.session_only = 1;
    if (veil_key_generate(e, token_uri, &kp, &c.key) != VEIL_OK)
        return veil_fail("veil_key_generate(pkcs11)");

    if (veil_random(e, msg, sizeof msg) != VEIL_OK) {
        veil_fail("veil_random");
        goto out;
    }
    c.ct_len = sizeof c.ct;
    if (veil_rsa_encrypt(e, c.key, NULL, msg, sizeof msg, c.ct, &c.ct_len) !=
        VEIL_OK) {
        veil_fail("veil_rsa_encrypt");
        goto out;
    }
    if (c.ct_len != c.k) {
        fprintf(stderr,
                "veil-bench: veil_rsa_encrypt gave %zu bytes for a "
                "%u-bit key\n",
                c.ct_len, bits);
        goto out;
    }
    if (veil_rsa_decrypt(e, c.key, NULL, c.ct, c.ct_len, &pt) != VEIL_OK) {
        veil_fail("veil_rsa_decrypt (pkcs11)");
        goto out;
    }
    if (check_plaintext("veil_rsa_decrypt (pkcs11)", veil_secbuf_data(pt),
                        veil_secbuf_len(pt), msg, sizeof msg) != 0)
        goto out;
    /* The engine has surely initialised the module and logged in by now:
     * only then do we load it ourselves (see p11_bare_open). */
    if (!b->f && p11_bare_open(b, o->module, o->token) != 0)
        goto out;
    if (p11_find_private_key(b, c.key, &c.h) != 0 ||
        p11_pick_mechanism(&c, msg, sizeof msg, &mech_name) != 0)
        goto out;

    snprintf(name, sizeof name, "pkcs11 rsa%u oaep-decrypt [%s]", bits,
             mech_name);
    ret = measure(o, name, "op/s", 1.0, op_veil_p11_decrypt, &c, op_p11_decrypt,
                  &c, NULL);
out:
    veil_secbuf_free(pt);
    OPENSSL_cleanse(c.out, sizeof c.out);
    OPENSSL_cleanse(msg, sizeof msg);
    if (c.key && veil_key_delete(e, c.key) != VEIL_OK) {
        veil_fail("veil_key_delete(pkcs11)");
        ret = -1;
    }
    return ret;
}

/* ---- PKCS#11 AES-GCM ---------------------------------------------------- */

/* What a bare PKCS#11 caller with a raw AES key does per message: import
 * the key as a session object, C_EncryptInit(CKM_AES_GCM) + C_Encrypt
 * (ciphertext || tag), destroy the object. */
typedef struct p11_aes_ctx {
    aes_ctx a;
    p11_bare *b;
} p11_aes_ctx;

static int op_p11_gcm_seal(void *arg)
{
    p11_aes_ctx *c = arg;
    CK_FUNCTION_LIST *f = c->b->f;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof cls},
        {CKA_KEY_TYPE, &kt, sizeof kt},
        {CKA_TOKEN, &no, sizeof no},
        {CKA_ENCRYPT, &yes, sizeof yes},
        {CKA_VALUE, c->a.key, sizeof c->a.key},
    };
    CK_GCM_PARAMS gp;
    CK_MECHANISM m;
    CK_OBJECT_HANDLE h;
    CK_ULONG out_len = (CK_ULONG)(c->a.len + VEIL_GCM_TAG_LEN);
    CK_RV rv;

    memset(&gp, 0, sizeof gp);
    gp.pIv = c->a.iv;
    gp.ulIvLen = sizeof c->a.iv;
    gp.ulIvBits = sizeof c->a.iv * 8;
    gp.pAAD = NULL;
    gp.ulAADLen = 0;
    gp.ulTagBits = VEIL_GCM_TAG_LEN * 8;
    m.mechanism = CKM_AES_GCM;
    m.pParameter = &gp;
    m.ulParameterLen = sizeof gp;

    rv = f->C_CreateObject(c->b->s, tmpl, sizeof tmpl / sizeof tmpl[0], &h);
    if (rv != CKR_OK)
        return ckr_fail("C_CreateObject(AES key)", rv);
    rv = f->C_EncryptInit(c->b->s, &m, h);
    if (rv == CKR_OK)
        rv = f->C_Encrypt(c->b->s, (CK_BYTE_PTR)c->a.pt, (CK_ULONG)c->a.len,
                          c->a.ct_base, &out_len);
    f->C_DestroyObject(c->b->s, h);
    if (rv != CKR_OK)
        return ckr_fail("C_EncryptInit/C_Encrypt(CKM_AES_GCM)", rv);
    if (out_len != c->a.len + VEIL_GCM_TAG_LEN) {
        fprintf(stderr,
                "veil-bench: C_Encrypt(CKM_AES_GCM) returned %lu "
                "bytes for %zu\n",
                (unsigned long)out_len, c->a.len);
        return -1;
    }
    return 0;
}

static int bench_aes_pkcs11(const bench_opts *o, veil_engine *e, p11_bare *b,
                            size_t len)
{
    p11_aes_ctx c;
    char name[96], sz[32];
    double ratio = 0;
    int ret = -1;

    c.b = b;
    if (aes_ctx_init(&c.a, e, len, VEIL_GCM_TAG_LEN) != 0)
        goto out;
    if (op_veil_gcm_seal(&c.a) != 0 || op_p11_gcm_seal(&c) != 0)
        goto out;
    if (memcmp(c.a.ct_veil, c.a.ct_base, len) != 0 ||
        memcmp(c.a.tag_veil, c.a.ct_base + len, VEIL_GCM_TAG_LEN) != 0) {
        fprintf(stderr,
                "veil-bench: veil_aes_gcm_seal (token) and "
                "C_Encrypt disagree (%zu bytes)\n",
                len);
        goto out;
    }
    size_name(len, sz, sizeof sz);
    snprintf(name, sizeof name, "pkcs11 aes256-gcm seal %s", sz);
    ret = measure(o, name, "MB/s", (double)len / 1e6, op_veil_gcm_seal, &c.a,
                  op_p11_gcm_seal, &c, &ratio);
    /* Much faster than the token itself: the seal cannot have run there. */
    if (ret == 0 && ratio > 3.0)
        printf("#   note: veil is %.0fx faster than the token's own "
               "C_Encrypt: the seal probably ran in software, not in the "
               "token\n",
               ratio);
out:
    aes_ctx_free(&c.a);
    return ret;
}

/* ---- the runs ----------------------------------------------------------- */

static const unsigned RSA_BITS[] = {2048, 3072, 4096};
static const size_t AES_SIZES[] = {1024, 64 * 1024, 10 * 1024 * 1024};

static size_t n_rsa(const bench_opts *o)
{
    return o->quick ? 1 : sizeof RSA_BITS / sizeof RSA_BITS[0];
}

static size_t n_aes(const bench_opts *o)
{
    return o->quick ? 2 : sizeof AES_SIZES / sizeof AES_SIZES[0];
}

static int run_software(const bench_opts *o, veil_engine *e)
{
    size_t i;

    printf("# software provider vs bare OpenSSL in this process\n"
           "#   rsa: EVP_PKEY_decrypt OAEP/SHA-256/MGF1-SHA-256, fresh "
           "EVP_PKEY_CTX per op, same key\n"
           "#   aes: EVP aes-256-gcm, 12-byte IV, fresh EVP_CIPHER_CTX per "
           "op (MB = 10^6 bytes)\n");
    fflush(stdout);
    for (i = 0; i < n_rsa(o); i++)
        if (bench_rsa_software(o, e, RSA_BITS[i]) != 0)
            return -1;
    for (i = 0; i < n_aes(o); i++)
        if (bench_aes_software(o, e, AES_SIZES[i]) != 0)
            return -1;
    return bench_observer(o, e);
}

static void print_caps(const char *what, const veil_caps *caps)
{
    printf("#   %s: %s (%s)%s%s%s%s\n", what, caps->description, caps->provider,
           caps->mechs & VEIL_CAP_RSA_OAEP_SHA256 ? " oaep-sha256" : "",
           caps->mechs & VEIL_CAP_RSA_RAW ? " rsa-raw" : "",
           caps->mechs & VEIL_CAP_AES_GCM ? " aes-gcm" : "",
           caps->mechs & VEIL_CAP_RANDOM ? " random" : "");
}

static int run_pkcs11(const bench_opts *o, veil_engine *e,
                      const veil_engine_config *base_cfg, const char *uri)
{
    p11_bare b;
    veil_caps caps;
    veil_engine *e2 = NULL;
    veil_engine_config cfg2;
    size_t i;
    int ret = -1;

    memset(&b, 0, sizeof b);
    if (veil_engine_caps(e, uri, &caps) != VEIL_OK)
        return veil_fail("veil_engine_caps(pkcs11)");
    printf("# pkcs11 provider vs bare PKCS#11 calls on the same token key in "
           "this process\n"
           "#   module %s, %s\n",
           o->module, uri);
    print_caps("token", &caps);
    printf("#   rsa: bare loop = C_DecryptInit + C_Decrypt per op; [X_509] "
           "means the token has no\n"
           "#        OAEP-SHA256, so veil decodes OAEP on the host and the "
           "bare loop does not\n");
    fflush(stdout);

    for (i = 0; i < n_rsa(o); i++)
        if (bench_rsa_pkcs11(o, e, uri, &b, RSA_BITS[i]) != 0)
            goto out;

    /* AES-GCM in the token: a second engine asking for symmetric
     * operations in the token. */
    cfg2 = *base_cfg;
    cfg2.flags |= VEIL_ENGINE_SYMMETRIC_IN_TOKEN;
    if (veil_engine_new(&cfg2, &e2) != VEIL_OK) {
        veil_fail("veil_engine_new(SYMMETRIC_IN_TOKEN)");
        goto out;
    }
    if (veil_engine_caps(e2, NULL, &caps) != VEIL_OK) {
        veil_fail("veil_engine_caps(default token)");
        goto out;
    }
    if (!(caps.mechs & VEIL_CAP_AES_GCM)) {
        printf("#   aes: skipped: the token has no AES-GCM per veil's caps\n");
        ret = 0;
        goto out;
    }
    printf("#   aes: engine with VEIL_ENGINE_SYMMETRIC_IN_TOKEN; bare loop = "
           "C_CreateObject(key) +\n"
           "#        C_EncryptInit(CKM_AES_GCM) + C_Encrypt + "
           "C_DestroyObject per op\n");
    fflush(stdout);
    for (i = 0; i < n_aes(o); i++)
        if (bench_aes_pkcs11(o, e2, &b, AES_SIZES[i]) != 0)
            goto out;
    ret = 0;
out:
    /* Our session and module reference go first; the engines own the
     * module's initialisation. */
    p11_bare_close(&b);
    veil_engine_free(e2);
    return ret;
}

/* `veil-bench all`, `software` and `pkcs11`. */
int bench_engine_run(const bench_opts *o)
{
    veil_engine_config cfg;
    veil_engine *e = NULL;
    char uri[512];
    int failed = 0;

    memset(&cfg, 0, sizeof cfg);
    cfg.log = log_to_stderr;
    cfg.log_level = VEIL_LOG_WARN;
    if (o->run_pkcs11) {
        if (token_uri(o->token, uri, sizeof uri) != 0)
            return bench_usage_error("token label too long: ", o->token);
        cfg.pkcs11_module = o->module;
        cfg.default_token = uri;
        if (o->pin_spec &&
            veil_pin_source_parse(o->pin_spec, &cfg.pin) != VEIL_OK)
            return bench_usage_error("--pin-source: ",
                                     veil_last_error()->message);
    }

    print_machine(o, "rates are medians; ratio = veil / baseline");
    if (veil_engine_new(&cfg, &e) != VEIL_OK) {
        veil_fail("veil_engine_new");
        return EXIT_FAIL;
    }
    print_table_header();
    if (o->skip_note)
        printf("%s\n", o->skip_note);
    if (o->run_software && run_software(o, e) != 0)
        failed = 1;
    if (!failed && o->run_pkcs11 && run_pkcs11(o, e, &cfg, uri) != 0)
        failed = 1;
    veil_engine_free(e);
    return failed ? EXIT_FAIL : 0;
}
