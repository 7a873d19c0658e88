/* The engine: dispatch, routing and error paths (with a mock provider),
 * argument checks, public-key import, the software provider end to end,
 * key files, and the host OAEP decoder.
 *
 * Nothing here needs a token.  The "mock" provider below is a test double
 * for the dispatcher only.
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "testutil.h"
#include "engine_int.h"

/* ==== the mock provider ===================================================
 *
 * A TEST DOUBLE FOR DISPATCH ONLY.  It claims references starting with
 * "mock:", counts every call in `mock` and returns what the test scripted
 * there.  It does no cryptography: its "decryption" returns a fixed string
 * and its "encryption" a fixed pattern, so a test can tell whether the
 * engine called it or the software provider.  Its keys carry a real
 * RSA-2048 key pair (generated once in software) so that the engine's key
 * code (SPKI, fingerprints, software encryption) has a key to work with.
 *
 * instance_id maps "mock:TOKEN/anything" to "mock:TOKEN", so references
 * with the same TOKEN share one provider instance.
 */

#define MOCK_CAPS                                                              \
    (VEIL_CAP_RSA_OAEP_SHA256 | VEIL_CAP_RSA_OAEP_SHA1 | VEIL_CAP_AES_GCM |    \
     VEIL_CAP_RANDOM | VEIL_CAP_ECDH)
#define MOCK_PLAINTEXT "mock plaintext"
#define MOCK_CT_BYTE 0xE5  /* what the mock's rsa_encrypt writes */
#define MOCK_GCM_BYTE 0xA5 /* what the mock's aes_gcm writes */
#define MOCK_TAG_BYTE 0x5A
#define MOCK_RAND_BYTE 0x42 /* what the mock's random writes */
#define MOCK_Z_BYTE 0x3C    /* what the mock's ecdh_derive writes */

static struct {
    /* calls */
    int instance_id, open, close, key_open, key_release, key_delete;
    int rsa_decrypt, rsa_encrypt, aes_gcm, random, ecdh;
    /* script */
    veil_rc open_rc, key_open_rc, decrypt_rc, encrypt_rc;
    unsigned caps; /* what open() puts in p->caps.mechs */
} mock;

static EVP_PKEY *mock_rsa; /* the key pair behind every mock key */
static EVP_PKEY *mock_ec;  /* ... whose reference ends in "/ec" */

static void mock_reset(void)
{
    memset(&mock, 0, sizeof mock);
    mock.caps = MOCK_CAPS;
}

static int mock_claims(const char *where)
{
    return strncmp(where, "mock:", 5) == 0;
}

static veil_rc mock_instance_id(const veil_engine *e, const char *where,
                                char *id, size_t id_size)
{
    size_t n = strcspn(where, "/");

    mock.instance_id++;
    snprintf(id, id_size, "%.*s", (int)n, where);
    return VEIL_OK;
}

static veil_rc mock_open(veil_provider *p, const char *where)
{
    mock.open++;
    if (mock.open_rc != VEIL_OK)
        return veil_err(mock.open_rc, "mock", "CKR_GENERAL_ERROR",
                        "scripted open failure for %s", where);
    p->caps.mechs = mock.caps;
    snprintf(p->caps.description, sizeof p->caps.description, "mock token");
    return VEIL_OK;
}

static void mock_close(veil_provider *p)
{
    mock.close++;
}

static veil_rc mock_key_open(veil_provider *p, const char *ref, veil_key *k)
{
    mock.key_open++;
    if (mock.key_open_rc != VEIL_OK)
        return veil_err(mock.key_open_rc, "mock", NULL,
                        "scripted key_open failure");
    size_t n = strlen(ref);
    int ec = n >= 3 && strcmp(ref + n - 3, "/ec") == 0;

    if (!EVP_PKEY_up_ref(ec ? mock_ec : mock_rsa))
        return veil_err(VEIL_E_CRYPTO, "mock", NULL, "up_ref");
    k->pub = ec ? mock_ec : mock_rsa;
    k->type = ec ? VEIL_KEY_EC_P256 : VEIL_KEY_RSA;
    k->bits = (unsigned)EVP_PKEY_get_bits(k->pub);
    k->has_private = 1;
    snprintf(k->label, sizeof k->label, "%s", ref);
    return VEIL_OK;
}

static void mock_key_release(veil_provider *p, veil_key *k)
{
    mock.key_release++;
}

static veil_rc mock_key_delete(veil_provider *p, veil_key *k)
{
    mock.key_delete++;
    return VEIL_OK;
}

static veil_rc mock_rsa_decrypt(veil_provider *p, const veil_key *k,
                                const veil_oaep *oaep, const uint8_t *in,
                                size_t in_len, veil_secbuf **out)
{
    veil_rc rc;

    mock.rsa_decrypt++;
    if (mock.decrypt_rc != VEIL_OK)
        return veil_err(mock.decrypt_rc, "mock", "CKR_DEVICE_ERROR",
                        "scripted decrypt failure");
    rc = veil_secbuf_new(sizeof MOCK_PLAINTEXT - 1, out);
    if (rc == VEIL_OK)
        memcpy(veil_secbuf_data(*out), MOCK_PLAINTEXT,
               sizeof MOCK_PLAINTEXT - 1);
    return rc;
}

static veil_rc mock_rsa_encrypt(veil_provider *p, const veil_key *pub,
                                const veil_oaep *oaep, const uint8_t *in,
                                size_t in_len, uint8_t *out, size_t *out_len)
{
    size_t n = (size_t)EVP_PKEY_get_size(pub->pub);

    mock.rsa_encrypt++;
    if (mock.encrypt_rc != VEIL_OK)
        return veil_err(mock.encrypt_rc, "mock", NULL,
                        "scripted encrypt refusal");
    if (*out_len < n)
        return veil_err(VEIL_E_BUFFER, "mock", NULL, "buffer");
    memset(out, MOCK_CT_BYTE, n);
    *out_len = n;
    return VEIL_OK;
}

static veil_rc mock_aes_gcm(veil_provider *p, int encrypt, const uint8_t *key,
                            size_t key_len, const uint8_t *iv, size_t iv_len,
                            const uint8_t *aad, size_t aad_len,
                            const uint8_t *in, size_t len, uint8_t *out,
                            uint8_t *tag)
{
    mock.aes_gcm++;
    if (len)
        memset(out, MOCK_GCM_BYTE, len);
    if (encrypt)
        memset(tag, MOCK_TAG_BYTE, VEIL_GCM_TAG_LEN);
    return VEIL_OK;
}

static veil_rc mock_random(veil_provider *p, uint8_t *buf, size_t len)
{
    mock.random++;
    memset(buf, MOCK_RAND_BYTE, len);
    return VEIL_OK;
}

static veil_rc mock_ecdh_derive(veil_provider *p, const veil_key *k,
                                const uint8_t *peer, size_t peer_len,
                                veil_secbuf **z)
{
    veil_rc rc;

    mock.ecdh++;
    rc = veil_secbuf_new(32, z);
    if (rc == VEIL_OK)
        memset(veil_secbuf_data(*z), MOCK_Z_BYTE, 32);
    return rc;
}

static const veil_provider_ops mock_ops = {
    .abi = VEIL_PROVIDER_ABI,
    .ops_size = sizeof(veil_provider_ops),
    .name = "mock",
    .static_caps = MOCK_CAPS,
    .state_size = 16,
    .key_state_size = sizeof(int),
    .claims = mock_claims,
    .instance_id = mock_instance_id,
    .open = mock_open,
    .close = mock_close,
    .key_open = mock_key_open,
    .key_delete = mock_key_delete,
    .key_release = mock_key_release,
    .rsa_decrypt = mock_rsa_decrypt,
    .rsa_encrypt = mock_rsa_encrypt,
    .aes_gcm = mock_aes_gcm,
    .random = mock_random,
    .ecdh_derive = mock_ecdh_derive,
};

/* ==== helpers ============================================================= */

/* Log capture: every line the engine logs, newline-separated. */
static struct {
    char buf[16384];
    size_t len;
} logcap;

static void log_clear(void)
{
    logcap.len = 0;
    logcap.buf[0] = '\0';
}

static void log_fn(void *ctx, veil_log_level level, const char *line)
{
    int n = snprintf(logcap.buf + logcap.len, sizeof logcap.buf - logcap.len,
                     "%d %s\n", (int)level, line);

    if (n > 0 && (size_t)n < sizeof logcap.buf - logcap.len)
        logcap.len += (size_t)n;
}

/* 1 when one logged debug line contains both a and b. */
static int log_has(const char *a, const char *b)
{
    const char *line = logcap.buf;

    while (*line) {
        const char *end = strchr(line, '\n');
        size_t n = end ? (size_t)(end - line) : strlen(line);
        char one[600];

        snprintf(one, sizeof one, "%.*s", (int)n, line);
        if (one[0] == '0' + VEIL_LOG_DEBUG && strstr(one, a) && strstr(one, b))
            return 1;
        line += n + (end ? 1 : 0);
    }
    return 0;
}

/* An engine with the mock provider plugged in. */
static veil_engine *mock_engine(unsigned flags, const char *default_token)
{
    veil_engine_config cfg = {0};
    veil_engine *e = NULL;

    cfg.flags = flags;
    cfg.default_token = default_token;
    cfg.log = log_fn;
    cfg.log_level = VEIL_LOG_DEBUG;
    if (veil_engine_new(&cfg, &e) != VEIL_OK)
        return NULL;
    veil_engine_test_set_extra_provider(e, &mock_ops);
    return e;
}

static int all_bytes(const uint8_t *p, size_t n, uint8_t v)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != v)
            return 0;
    return 1;
}

static int secbuf_is(veil_secbuf *b, const void *data, size_t len)
{
    return b && veil_secbuf_len(b) == len &&
           (len == 0 || memcmp(veil_secbuf_data(b), data, len) == 0);
}

static int message_is(const char *want)
{
    if (strcmp(veil_last_error()->message, want) == 0)
        return 1;
    fprintf(stderr, "\n  message \"%s\", expected \"%s\"\n",
            veil_last_error()->message, want);
    return 0;
}

/* A non-NULL pointer that is not a buffer: lets a test see that a failed
 * call reset its out-parameter. */
static char sentinel_byte;
#define SENTINEL ((veil_secbuf *)(void *)&sentinel_byte)

/* OAEP decryption straight with OpenSSL, to check what the engine made. */
static int ossl_oaep_decrypt(EVP_PKEY *pkey, const EVP_MD *md,
                             const uint8_t *label, size_t label_len,
                             const uint8_t *in, size_t in_len, uint8_t *out,
                             size_t *out_len)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    int ok = ctx && EVP_PKEY_decrypt_init(ctx) > 0 &&
             EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) > 0 &&
             EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) > 0 &&
             EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) > 0;

    if (ok && label_len) {
        uint8_t *l = OPENSSL_memdup(label, label_len);
        ok = l && EVP_PKEY_CTX_set0_rsa_oaep_label(ctx, l, (int)label_len) > 0;
        if (!ok)
            OPENSSL_free(l);
    }
    ok = ok && EVP_PKEY_decrypt(ctx, out, out_len, in, in_len) > 0;
    EVP_PKEY_CTX_free(ctx);
    ERR_clear_error();
    return ok;
}

/* Raw RSA (no padding) with OpenSSL: private (decrypt) or public. */
static int ossl_raw(EVP_PKEY *pkey, int private_op, const uint8_t *in,
                    size_t len, uint8_t *out)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    size_t n = len;
    int ok;

    if (private_op)
        ok = ctx && EVP_PKEY_decrypt_init(ctx) > 0 &&
             EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_NO_PADDING) > 0 &&
             EVP_PKEY_decrypt(ctx, out, &n, in, len) > 0;
    else
        ok = ctx && EVP_PKEY_encrypt_init(ctx) > 0 &&
             EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_NO_PADDING) > 0 &&
             EVP_PKEY_encrypt(ctx, out, &n, in, len) > 0;
    EVP_PKEY_CTX_free(ctx);
    ERR_clear_error();
    return ok && n == len;
}

static uint8_t *spki_der(EVP_PKEY *pkey, size_t *len)
{
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(pkey, &der);

    *len = 0;
    if (n <= 0)
        return NULL;
    *len = (size_t)n;
    return der; /* OPENSSL_free */
}

static char *spki_pem(EVP_PKEY *pkey, size_t *len)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *data, *pem = NULL;
    long n;

    if (bio && PEM_write_bio_PUBKEY(bio, pkey)) {
        n = BIO_get_mem_data(bio, &data);
        pem = malloc((size_t)n + 1);
        if (pem) {
            memcpy(pem, data, (size_t)n);
            pem[n] = '\0';
            *len = (size_t)n;
        }
    }
    BIO_free(bio);
    return pem; /* free */
}

/* Scratch directory for key files: under $VEIL_TEST_DIR when set (by
 * tests/env/with-tokens.sh), else under $TMPDIR or /tmp. */
static char scratch[512];

static int make_scratch(void)
{
    return tu_scratch_dir("engine", scratch, sizeof scratch);
}

static void remove_keydir(const char *dir)
{
    char path[700];

    snprintf(path, sizeof path, "%s/private_key.pem", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/public_key.pem", dir);
    unlink(path);
    rmdir(dir);
}

/* Whole file into a malloc'd NUL-terminated buffer, or NULL. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0, r;

    if (!f)
        return NULL;
    do {
        if (n + 4096 + 1 > cap) {
            char *nb = realloc(buf, cap = n + 8192);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        r = fread(buf + n, 1, 4096, f);
        n += r;
    } while (r > 0);
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* ==== fixtures (shared by the suites; made once in main) ================== */

static veil_engine *sw_e; /* plain engine, flags 0 */
static veil_key *sw_rsa;  /* RSA-2048 in software */
static veil_key *sw_ec;   /* P-256 in software */

static int fixtures_init(void)
{
    veil_keygen_params rsa = {
        .type = VEIL_KEY_RSA, .bits = 2048, .label = "rsa"};
    veil_keygen_params ec = {.type = VEIL_KEY_EC_P256, .label = "ec"};

    mock_rsa = EVP_RSA_gen(2048);
    mock_ec = EVP_EC_gen("P-256");
    if (!mock_rsa || !mock_ec) {
        fprintf(stderr, "cannot generate the mock provider's RSA key\n");
        return -1;
    }
    if (veil_engine_new(NULL, &sw_e) != VEIL_OK ||
        veil_key_generate(sw_e, "software", &rsa, &sw_rsa) != VEIL_OK ||
        veil_key_generate(sw_e, "software", &ec, &sw_ec) != VEIL_OK) {
        fprintf(stderr, "software keys: %s\n", veil_last_error()->message);
        return -1;
    }
    if (make_scratch() != 0) {
        fprintf(stderr, "cannot create a scratch directory: %s\n",
                strerror(errno));
        scratch[0] = '\0';
        return -1;
    }
    return 0;
}

static void fixtures_free(void)
{
    static const char *const dirs[] = {"plain", "enc", "del", NULL};
    char dir[600];

    if (scratch[0]) {
        for (size_t i = 0; dirs[i]; i++) {
            snprintf(dir, sizeof dir, "%s/%s", scratch, dirs[i]);
            remove_keydir(dir);
        }
        rmdir(scratch);
    }
    veil_key_free(sw_rsa);
    veil_key_free(sw_ec);
    veil_engine_free(sw_e);
    EVP_PKEY_free(mock_rsa);
    EVP_PKEY_free(mock_ec);
}

/* ==== suite: dispatch (mock provider) ===================================== */

static void check_rejected(const veil_provider_ops *bad, const char *what)
{
    veil_engine *e;
    veil_key *k = NULL;
    veil_caps caps;
    veil_rc rc;

    mock_reset();
    e = mock_engine(0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    veil_engine_test_set_extra_provider(e, bad);
    rc = veil_engine_caps(e, "mock:t", &caps);
    CU_ASSERT_EQUAL(rc, VEIL_E_PROVIDER);
    CU_ASSERT_EQUAL(veil_last_error()->code, VEIL_E_PROVIDER);
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, "mock"));
    if (rc != VEIL_E_PROVIDER)
        fprintf(stderr, "\n  table with %s accepted (%s)\n", what,
                veil_rc_name(rc));
    /* also through key generation with a where, never reaching open() */
    {
        veil_keygen_params kp = {
            .type = VEIL_KEY_RSA, .bits = 2048, .label = "x"};
        CU_ASSERT_EQUAL(veil_key_generate(e, "mock:t", &kp, &k),
                        VEIL_E_PROVIDER);
        CU_ASSERT_PTR_NULL(k);
    }
    CU_ASSERT_EQUAL(mock.open, 0);
    veil_engine_free(e);
    CU_ASSERT_EQUAL(mock.close, 0);
}

static void test_table_rejected(void)
{
    veil_provider_ops bad;

    bad = mock_ops;
    bad.abi = 99;
    check_rejected(&bad, "abi 99");

    bad = mock_ops;
    bad.ops_size = offsetof(veil_provider_ops, key_save);
    check_rejected(&bad, "a short ops_size");

    bad = mock_ops;
    bad.aes_gcm = NULL; /* VEIL_CAP_AES_GCM claimed, slot missing */
    check_rejected(&bad, "AES-GCM without aes_gcm");

    bad = mock_ops;
    bad.static_caps |= VEIL_CAP_ECDSA; /* no ecdsa_sign/verify */
    check_rejected(&bad, "ECDSA without ecdsa_sign");

    bad = mock_ops;
    bad.rsa_encrypt = NULL; /* OAEP claimed */
    check_rejected(&bad, "OAEP without rsa_encrypt");

    bad = mock_ops;
    bad.ecdh_derive = NULL; /* VEIL_CAP_ECDH claimed */
    check_rejected(&bad, "ECDH without ecdh_derive");

    bad = mock_ops;
    bad.ops_size = offsetof(veil_provider_ops, ecdh_derive);
    check_rejected(&bad, "a table from before ecdh_derive");

    bad = mock_ops;
    bad.open = NULL;
    check_rejected(&bad, "no open");
}

static void test_table_accepted_caps_narrowed(void)
{
    veil_engine *e;
    veil_caps caps;

    mock_reset();
    mock.caps = ~0u; /* open() tries to promise more than the table */
    e = mock_engine(0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_EQUAL(veil_engine_caps(e, "mock:t", &caps), VEIL_OK);
    CU_ASSERT_EQUAL(mock.open, 1);
    CU_ASSERT_EQUAL(caps.mechs, MOCK_CAPS);
    CU_ASSERT_STRING_EQUAL(caps.provider, "mock");
    CU_ASSERT_STRING_EQUAL(caps.description, "mock token");
    veil_engine_free(e);
    CU_ASSERT_EQUAL(mock.close, 1);
}

static void test_key_open_dispatch(void)
{
    veil_key_info info;
    veil_engine *e;
    veil_key *k = NULL;
    int opened;
    veil_rc rc;

    mock_reset();
    e = mock_engine(0, NULL); /* no default token: "mock:" is a where */
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    rc = veil_key_open(e, "mock:k1", &k);
    CU_ASSERT_EQUAL(rc, VEIL_OK);
    if (rc != VEIL_OK)
        fprintf(stderr, "\n  veil_key_open(mock:k1): %s\n",
                veil_last_error()->message);
    CU_ASSERT_EQUAL(mock.open, 1);
    CU_ASSERT_EQUAL(mock.key_open, 1);
    if (k) {
        CU_ASSERT_EQUAL(veil_key_get_info(k, &info), VEIL_OK);
        CU_ASSERT_STRING_EQUAL(info.provider, "mock");
        CU_ASSERT_EQUAL(info.type, VEIL_KEY_RSA);
        CU_ASSERT_EQUAL(info.bits, 2048);
        CU_ASSERT_EQUAL(info.has_private, 1);
        CU_ASSERT_STRING_EQUAL(info.label, "mock:k1");
    }
    opened = k != NULL;
    veil_key_free(k);
    CU_ASSERT_EQUAL(mock.key_release, opened);
    veil_engine_free(e);
}

/* Private-key operations run in the key's provider; its failure is the
 * answer, never a retry in software. */
static void test_private_op_no_fallback(void)
{
    static const uint8_t msg[] = "the real message";
    uint8_t ct[512];
    size_t ct_len = sizeof ct;
    veil_secbuf *out = NULL;
    veil_oaep bad_label = {VEIL_HASH_SHA256, NULL, 4};
    veil_engine *e;
    veil_key *k = NULL;

    mock_reset();
    e = mock_engine(0, "mock:default");
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_EQUAL_FATAL(veil_key_open(e, "mock:k1", &k), VEIL_OK);
    /* a genuine OAEP ciphertext for the key (flags 0: made in software) */
    CU_ASSERT_EQUAL_FATAL(
        veil_rsa_encrypt(e, k, NULL, msg, sizeof msg, ct, &ct_len), VEIL_OK);
    CU_ASSERT_EQUAL(mock.rsa_encrypt, 0);

    CU_ASSERT_EQUAL(veil_rsa_decrypt(e, k, NULL, ct, ct_len, &out), VEIL_OK);
    CU_ASSERT_EQUAL(mock.rsa_decrypt, 1);
    /* the mock's answer, not the software's */
    CU_ASSERT_TRUE(secbuf_is(out, MOCK_PLAINTEXT, sizeof MOCK_PLAINTEXT - 1));
    veil_secbuf_free(out);

    /* the token fails: the engine returns that, and software (which could
     * decrypt this ciphertext: the key pair is in k->pub) is not tried */
    mock.decrypt_rc = VEIL_E_TOKEN;
    out = SENTINEL;
    CU_ASSERT_EQUAL(veil_rsa_decrypt(e, k, NULL, ct, ct_len, &out),
                    VEIL_E_TOKEN);
    CU_ASSERT_PTR_NULL(out);
    CU_ASSERT_EQUAL(mock.rsa_decrypt, 2);
    CU_ASSERT_EQUAL(veil_last_error()->code, VEIL_E_TOKEN);
    CU_ASSERT_STRING_EQUAL(veil_last_error()->provider, "mock");
    CU_ASSERT_STRING_EQUAL(veil_last_error()->provider_code,
                           "CKR_DEVICE_ERROR");
    if (out != SENTINEL)
        veil_secbuf_free(out);

    /* a label length without a label is refused before the provider */
    out = SENTINEL;
    CU_ASSERT_EQUAL(veil_rsa_decrypt(e, k, &bad_label, ct, ct_len, &out),
                    VEIL_E_ARG);
    CU_ASSERT_PTR_NULL(out);
    CU_ASSERT_EQUAL(mock.rsa_decrypt, 2);

    veil_key_free(k);
    veil_engine_free(e);
}

/* The observer (veild's metrics) hears of every operation a provider ran,
 * with the provider's name, the operation and the provider's result; not
 * of one refused before any provider. */
typedef struct obs_rec {
    char seen[8][48];
    veil_rc rc[8];
    int n;
    int bad_time;
} obs_rec;

static void obs_fn(void *ctx, const char *provider, const char *operation,
                   double seconds, veil_rc rc)
{
    obs_rec *o = ctx;

    if (!(seconds >= 0 && seconds < 60))
        o->bad_time = 1;
    if (o->n < 8) {
        snprintf(o->seen[o->n], sizeof o->seen[0], "%s %s", provider,
                 operation);
        o->rc[o->n] = rc;
    }
    o->n++;
}

static void test_observer(void)
{
    static const uint8_t msg[] = "observed";
    uint8_t ct[512], buf[16];
    size_t ct_len = sizeof ct;
    veil_secbuf *out = NULL;
    veil_oaep bad_label = {VEIL_HASH_SHA256, NULL, 4};
    obs_rec o = {.n = 0};
    veil_engine *e;
    veil_key *k = NULL;

    mock_reset();
    e = mock_engine(0, "mock:default");
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_EQUAL_FATAL(veil_key_open(e, "mock:k1", &k), VEIL_OK);
    veil_engine_set_observer(e, obs_fn, &o);
    CU_ASSERT_EQUAL(veil_rsa_encrypt(e, k, NULL, msg, sizeof msg, ct, &ct_len),
                    VEIL_OK);
    CU_ASSERT_EQUAL(veil_rsa_decrypt(e, k, NULL, ct, ct_len, &out), VEIL_OK);
    veil_secbuf_free(out);
    mock.decrypt_rc = VEIL_E_TOKEN;
    CU_ASSERT_EQUAL(veil_rsa_decrypt(e, k, NULL, ct, ct_len, &out),
                    VEIL_E_TOKEN);
    /* refused before the provider: not an operation of the token */
    CU_ASSERT_EQUAL(veil_rsa_decrypt(e, k, &bad_label, ct, ct_len, &out),
                    VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_random(e, buf, sizeof buf), VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(o.n, 4);
    CU_ASSERT_STRING_EQUAL(o.seen[0], "software rsa_encrypt");
    CU_ASSERT_STRING_EQUAL(o.seen[1], "mock rsa_decrypt");
    CU_ASSERT_EQUAL(o.rc[1], VEIL_OK);
    CU_ASSERT_STRING_EQUAL(o.seen[2], "mock rsa_decrypt");
    CU_ASSERT_EQUAL(o.rc[2], VEIL_E_TOKEN);
    CU_ASSERT_STRING_EQUAL(o.seen[3], "software random");
    CU_ASSERT_FALSE(o.bad_time);
    /* removed: heard no more */
    veil_engine_set_observer(e, NULL, NULL);
    CU_ASSERT_EQUAL(veil_random(e, buf, sizeof buf), VEIL_OK);
    CU_ASSERT_EQUAL(o.n, 4);
    veil_key_free(k);
    veil_engine_free(e);
}

/* ECDH is a private-key operation: the holder only, never software, and
 * the peer's point is checked before the holder sees it. */
static void test_ecdh_dispatch(void)
{
    uint8_t peer[VEIL_ECDH_P256_POINT_LEN];
    size_t peer_len = 0;
    veil_secbuf *z = NULL;
    veil_engine *e;
    veil_key *k = NULL, *rsa = NULL;

    CU_ASSERT_EQUAL_FATAL(
        EVP_PKEY_get_octet_string_param(sw_ec->pub, "encoded-pub-key", peer,
                                        sizeof peer, &peer_len),
        1);
    mock_reset();
    e = mock_engine(0, "mock:default");
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_EQUAL_FATAL(veil_key_open(e, "mock:t/ec", &k), VEIL_OK);
    CU_ASSERT_EQUAL(veil_ecdh_derive(e, k, peer, peer_len, &z), VEIL_OK);
    CU_ASSERT_EQUAL(mock.ecdh, 1);
    CU_ASSERT_TRUE(z && veil_secbuf_len(z) == 32 &&
                   all_bytes(veil_secbuf_data(z), 32, MOCK_Z_BYTE));
    veil_secbuf_free(z);

    /* a point off the curve, a compressed one, a short one: refused on
     * the host, the holder never called */
    peer[64] ^= 1;
    z = SENTINEL;
    CU_ASSERT_EQUAL(veil_ecdh_derive(e, k, peer, peer_len, &z), VEIL_E_ARG);
    CU_ASSERT_PTR_NULL(z);
    peer[64] ^= 1;
    peer[0] = 0x02;
    CU_ASSERT_EQUAL(veil_ecdh_derive(e, k, peer, 33, &z), VEIL_E_ARG);
    peer[0] = 0x04;
    CU_ASSERT_EQUAL(veil_ecdh_derive(e, k, peer, peer_len - 1, &z), VEIL_E_ARG);
    CU_ASSERT_EQUAL(mock.ecdh, 1);

    /* an RSA key is the wrong kind */
    CU_ASSERT_EQUAL_FATAL(veil_key_open(e, "mock:t/rsa", &rsa), VEIL_OK);
    CU_ASSERT_EQUAL(veil_ecdh_derive(e, rsa, peer, peer_len, &z), VEIL_E_KEY);
    CU_ASSERT_EQUAL(mock.ecdh, 1);
    veil_key_free(rsa);
    veil_key_free(k);
    veil_engine_free(e);

    /* a holder without the capability: unsupported, and no fallback to
     * software (which holds this key pair in k->pub and could derive) */
    mock_reset();
    mock.caps = MOCK_CAPS & ~VEIL_CAP_ECDH;
    e = mock_engine(0, "mock:default");
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_EQUAL_FATAL(veil_key_open(e, "mock:u/ec", &k), VEIL_OK);
    z = SENTINEL;
    CU_ASSERT_EQUAL(veil_ecdh_derive(e, k, peer, peer_len, &z),
                    VEIL_E_UNSUPPORTED);
    CU_ASSERT_PTR_NULL(z);
    CU_ASSERT_EQUAL(mock.ecdh, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, "ECDH"));
    veil_key_free(k);
    veil_engine_free(e);
}

static void test_instance_reuse(void)
{
    veil_key *a = NULL, *b = NULL, *c = NULL;
    veil_engine *e;

    mock_reset();
    e = mock_engine(0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_EQUAL(veil_key_open(e, "mock:tokA/k1", &a), VEIL_OK);
    CU_ASSERT_EQUAL(veil_key_open(e, "mock:tokA/k2", &b), VEIL_OK);
    CU_ASSERT_EQUAL(mock.open, 1); /* same instance id: one open */
    CU_ASSERT_EQUAL(mock.key_open, 2);
    if (a && b)
        CU_ASSERT_PTR_EQUAL(a->prov, b->prov);

    CU_ASSERT_EQUAL(veil_key_open(e, "mock:tokB/k1", &c), VEIL_OK);
    CU_ASSERT_EQUAL(mock.open, 2); /* another id: another instance */
    CU_ASSERT_EQUAL(mock.key_open, 3);
    if (a && c)
        CU_ASSERT_PTR_NOT_EQUAL(a->prov, c->prov);

    veil_key_free(a);
    veil_key_free(b);
    veil_key_free(c);
    CU_ASSERT_EQUAL(mock.close, 0);
    veil_engine_free(e);
    CU_ASSERT_EQUAL(mock.close, 2); /* each opened instance closed once */
}

static void test_open_failure_and_retry(void)
{
    veil_engine *e;
    veil_key *k = NULL;

    mock_reset();
    e = mock_engine(0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);

    mock.open_rc = VEIL_E_MODULE;
    CU_ASSERT_EQUAL(veil_key_open(e, "mock:tokA/k1", &k), VEIL_E_MODULE);
    CU_ASSERT_PTR_NULL(k);
    CU_ASSERT_EQUAL(mock.open, 1);
    CU_ASSERT_EQUAL(mock.key_open, 0);
    CU_ASSERT_EQUAL(veil_last_error()->code, VEIL_E_MODULE);
    CU_ASSERT_STRING_EQUAL(veil_last_error()->provider, "mock");
    CU_ASSERT_STRING_EQUAL(veil_last_error()->provider_code,
                           "CKR_GENERAL_ERROR");
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message,
                                  "scripted open failure for mock:tokA/k1"));

    /* the failed instance was not kept: the next call opens again */
    mock.open_rc = VEIL_OK;
    CU_ASSERT_EQUAL(veil_key_open(e, "mock:tokA/k1", &k), VEIL_OK);
    CU_ASSERT_EQUAL(mock.open, 2);
    CU_ASSERT_EQUAL(mock.key_open, 1);
    CU_ASSERT_EQUAL(veil_last_error()->code, VEIL_OK);
    veil_key_free(k);
    k = NULL;

    /* a failing key_open: its code, no handle, nothing leaked */
    mock.key_open_rc = VEIL_E_NOT_FOUND;
    CU_ASSERT_EQUAL(veil_key_open(e, "mock:tokA/k9", &k), VEIL_E_NOT_FOUND);
    CU_ASSERT_PTR_NULL(k);
    CU_ASSERT_EQUAL(mock.open, 2);
    veil_engine_free(e);
    CU_ASSERT_EQUAL(mock.close, 1); /* the failed open is never closed */
}

static void test_key_delete_dispatch(void)
{
    veil_engine *e;
    veil_key *k = NULL;

    mock_reset();
    e = mock_engine(0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_EQUAL_FATAL(veil_key_open(e, "mock:k1", &k), VEIL_OK);
    CU_ASSERT_EQUAL(veil_key_delete(e, k), VEIL_OK); /* frees k */
    CU_ASSERT_EQUAL(mock.key_delete, 1);
    CU_ASSERT_EQUAL(mock.key_release, 1);
    veil_engine_free(e);
}

/* The ciphertext is a real OAEP-SHA256 encryption to mock_rsa. */
static int decrypts_to(const uint8_t *ct, size_t ct_len, const EVP_MD *md,
                       const uint8_t *msg, size_t len)
{
    uint8_t pt[512];
    size_t pt_len = sizeof pt;

    return ossl_oaep_decrypt(mock_rsa, md, NULL, 0, ct, ct_len, pt, &pt_len) &&
           pt_len == len && memcmp(pt, msg, len) == 0;
}

static void test_route_rsa_encrypt(void)
{
    static const uint8_t msg[] = "route me";
    veil_oaep sha1 = {VEIL_HASH_SHA1, NULL, 0};
    uint8_t ct[512];
    size_t ct_len;
    veil_engine *e;
    veil_key *k = NULL, *pub = NULL;
    uint8_t *der;
    size_t der_len = 0;

    /* flags 0: software, even for a key in the token */
    mock_reset();
    e = mock_engine(0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_EQUAL_FATAL(veil_key_open(e, "mock:k1", &k), VEIL_OK);
    ct_len = sizeof ct;
    CU_ASSERT_EQUAL(veil_rsa_encrypt(e, k, NULL, msg, sizeof msg, ct, &ct_len),
                    VEIL_OK);
    CU_ASSERT_EQUAL(mock.rsa_encrypt, 0);
    CU_ASSERT_EQUAL(ct_len, 256);
    CU_ASSERT_TRUE(decrypts_to(ct, ct_len, EVP_sha256(), msg, sizeof msg));
    veil_key_free(k);
    veil_engine_free(e);

    /* PUBLIC_IN_TOKEN and the token has OAEP-SHA256: the token */
    mock_reset();
    e = mock_engine(VEIL_ENGINE_PUBLIC_IN_TOKEN, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_EQUAL_FATAL(veil_key_open(e, "mock:k1", &k), VEIL_OK);
    ct_len = sizeof ct;
    CU_ASSERT_EQUAL(veil_rsa_encrypt(e, k, NULL, msg, sizeof msg, ct, &ct_len),
                    VEIL_OK);
    CU_ASSERT_EQUAL(mock.rsa_encrypt, 1);
    CU_ASSERT_EQUAL(ct_len, 256);
    CU_ASSERT_TRUE(all_bytes(ct, 256, MOCK_CT_BYTE));

    /* the token refuses the mechanism at run time (VEIL_E_UNSUPPORTED):
     * software, with a debug line */
    mock.encrypt_rc = VEIL_E_UNSUPPORTED;
    log_clear();
    ct_len = sizeof ct;
    CU_ASSERT_EQUAL(veil_rsa_encrypt(e, k, NULL, msg, sizeof msg, ct, &ct_len),
                    VEIL_OK);
    CU_ASSERT_EQUAL(mock.rsa_encrypt, 2);
    CU_ASSERT_TRUE(decrypts_to(ct, ct_len, EVP_sha256(), msg, sizeof msg));
    CU_ASSERT_TRUE(log_has("RSA-OAEP", "software"));

    /* any other token failure is returned as is */
    mock.encrypt_rc = VEIL_E_TOKEN;
    ct_len = sizeof ct;
    CU_ASSERT_EQUAL(veil_rsa_encrypt(e, k, NULL, msg, sizeof msg, ct, &ct_len),
                    VEIL_E_TOKEN);
    CU_ASSERT_EQUAL(mock.rsa_encrypt, 3);
    veil_key_free(k);
    veil_engine_free(e);

    /* PUBLIC_IN_TOKEN but open() narrowed the caps: software + debug line */
    mock_reset();
    mock.caps = MOCK_CAPS & ~VEIL_CAP_RSA_OAEP_SHA256;
    e = mock_engine(VEIL_ENGINE_PUBLIC_IN_TOKEN, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_EQUAL_FATAL(veil_key_open(e, "mock:k1", &k), VEIL_OK);
    log_clear();
    ct_len = sizeof ct;
    CU_ASSERT_EQUAL(veil_rsa_encrypt(e, k, NULL, msg, sizeof msg, ct, &ct_len),
                    VEIL_OK);
    CU_ASSERT_EQUAL(mock.rsa_encrypt, 0);
    CU_ASSERT_EQUAL(ct_len, 256);
    CU_ASSERT_TRUE(decrypts_to(ct, ct_len, EVP_sha256(), msg, sizeof msg));
    CU_ASSERT_TRUE(log_has("RSA-OAEP", "software"));
    if (!log_has("RSA-OAEP", "software"))
        fprintf(stderr, "\n  log was:\n%s", logcap.buf);
    /* ... while OAEP-SHA1, still offered, goes to the token */
    ct_len = sizeof ct;
    CU_ASSERT_EQUAL(veil_rsa_encrypt(e, k, &sha1, msg, sizeof msg, ct, &ct_len),
                    VEIL_OK);
    CU_ASSERT_EQUAL(mock.rsa_encrypt, 1);
    veil_key_free(k);
    veil_engine_free(e);

    /* a software public key with PUBLIC_IN_TOKEN goes to the default token;
     * without a default token it stays in software */
    der = spki_der(mock_rsa, &der_len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(der);
    mock_reset();
    e = mock_engine(VEIL_ENGINE_PUBLIC_IN_TOKEN, "mock:default");
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_EQUAL(veil_key_from_public(e, der, der_len, &pub), VEIL_OK);
    ct_len = sizeof ct;
    CU_ASSERT_EQUAL(
        veil_rsa_encrypt(e, pub, NULL, msg, sizeof msg, ct, &ct_len), VEIL_OK);
    CU_ASSERT_EQUAL(mock.rsa_encrypt, 1);
    veil_key_free(pub);
    pub = NULL;
    veil_engine_free(e);

    mock_reset();
    e = mock_engine(VEIL_ENGINE_PUBLIC_IN_TOKEN, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_EQUAL(veil_key_from_public(e, der, der_len, &pub), VEIL_OK);
    ct_len = sizeof ct;
    CU_ASSERT_EQUAL(
        veil_rsa_encrypt(e, pub, NULL, msg, sizeof msg, ct, &ct_len), VEIL_OK);
    CU_ASSERT_EQUAL(mock.rsa_encrypt, 0);
    CU_ASSERT_EQUAL(mock.open, 0);
    CU_ASSERT_TRUE(decrypts_to(ct, ct_len, EVP_sha256(), msg, sizeof msg));
    veil_key_free(pub);
    veil_engine_free(e);
    OPENSSL_free(der);
}

static const uint8_t gcm_key[32] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11,
                                    12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                                    23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
static const uint8_t gcm_iv[12] = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2};

static void test_route_aes_gcm(void)
{
    static const uint8_t pt[40] = "forty bytes of plaintext for AES-GCM...";
    static const uint8_t aad[] = "header";
    uint8_t ct[40], back[40], tag[VEIL_GCM_TAG_LEN], sw_ct[40],
        sw_tag[VEIL_GCM_TAG_LEN], rnd[16];
    veil_engine *e;

    /* reference: software */
    mock_reset();
    e = mock_engine(0, "mock:default");
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_EQUAL(veil_aes_gcm_seal(e, gcm_key, 32, gcm_iv, 12, aad,
                                      sizeof aad, pt, sizeof pt, sw_ct, sw_tag),
                    VEIL_OK);
    CU_ASSERT_EQUAL(mock.aes_gcm, 0);
    CU_ASSERT_EQUAL(mock.open, 0); /* flags 0: the token is not even opened */
    veil_engine_free(e);

    /* SYMMETRIC_IN_TOKEN, the default token has AES-GCM: the token */
    mock_reset();
    e = mock_engine(VEIL_ENGINE_SYMMETRIC_IN_TOKEN, "mock:default");
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_EQUAL(veil_aes_gcm_seal(e, gcm_key, 32, gcm_iv, 12, aad,
                                      sizeof aad, pt, sizeof pt, ct, tag),
                    VEIL_OK);
    CU_ASSERT_EQUAL(mock.aes_gcm, 1);
    CU_ASSERT_TRUE(all_bytes(ct, sizeof ct, MOCK_GCM_BYTE));
    CU_ASSERT_TRUE(all_bytes(tag, sizeof tag, MOCK_TAG_BYTE));
    CU_ASSERT_EQUAL(veil_aes_gcm_open(e, gcm_key, 32, gcm_iv, 12, aad,
                                      sizeof aad, ct, sizeof ct, tag, back),
                    VEIL_OK);
    CU_ASSERT_EQUAL(mock.aes_gcm, 2);
    /* random follows the same flag (VEIL_CAP_RANDOM) */
    CU_ASSERT_EQUAL(veil_random(e, rnd, sizeof rnd), VEIL_OK);
    CU_ASSERT_EQUAL(mock.random, 1);
    CU_ASSERT_TRUE(all_bytes(rnd, sizeof rnd, MOCK_RAND_BYTE));
    veil_engine_free(e);

    /* SYMMETRIC_IN_TOKEN, the token lacks AES-GCM: software + debug line */
    mock_reset();
    mock.caps = MOCK_CAPS & ~VEIL_CAP_AES_GCM;
    e = mock_engine(VEIL_ENGINE_SYMMETRIC_IN_TOKEN, "mock:default");
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    log_clear();
    CU_ASSERT_EQUAL(veil_aes_gcm_seal(e, gcm_key, 32, gcm_iv, 12, aad,
                                      sizeof aad, pt, sizeof pt, ct, tag),
                    VEIL_OK);
    CU_ASSERT_EQUAL(mock.open, 1);
    CU_ASSERT_EQUAL(mock.aes_gcm, 0);
    CU_ASSERT_EQUAL(memcmp(ct, sw_ct, sizeof ct), 0);
    CU_ASSERT_EQUAL(memcmp(tag, sw_tag, sizeof tag), 0);
    CU_ASSERT_TRUE(log_has("AES-GCM", "software"));
    CU_ASSERT_EQUAL(veil_aes_gcm_open(e, gcm_key, 32, gcm_iv, 12, aad,
                                      sizeof aad, ct, sizeof ct, tag, back),
                    VEIL_OK);
    CU_ASSERT_EQUAL(memcmp(back, pt, sizeof pt), 0);
    veil_engine_free(e);

    /* SYMMETRIC_IN_TOKEN and no default token: software, nothing opened */
    mock_reset();
    e = mock_engine(VEIL_ENGINE_SYMMETRIC_IN_TOKEN, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_EQUAL(veil_aes_gcm_seal(e, gcm_key, 32, gcm_iv, 12, aad,
                                      sizeof aad, pt, sizeof pt, ct, tag),
                    VEIL_OK);
    CU_ASSERT_EQUAL(mock.open, 0);
    CU_ASSERT_EQUAL(memcmp(ct, sw_ct, sizeof ct), 0);
    veil_engine_free(e);

    /* the default token cannot be opened: software, a debug line, and no
     * error left behind */
    mock_reset();
    mock.open_rc = VEIL_E_MODULE;
    e = mock_engine(VEIL_ENGINE_SYMMETRIC_IN_TOKEN, "mock:default");
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    log_clear();
    CU_ASSERT_EQUAL(veil_aes_gcm_seal(e, gcm_key, 32, gcm_iv, 12, aad,
                                      sizeof aad, pt, sizeof pt, ct, tag),
                    VEIL_OK);
    CU_ASSERT_EQUAL(mock.open, 1);
    CU_ASSERT_EQUAL(memcmp(ct, sw_ct, sizeof ct), 0);
    CU_ASSERT_TRUE(log_has("AES-GCM", "software"));
    CU_ASSERT_EQUAL(veil_last_error()->code, VEIL_OK);
    veil_engine_free(e);
}

/* ==== suite: arguments and public keys ==================================== */

static void test_argument_checks(void)
{
    static const uint8_t msg[] = "m";
    uint8_t buf[512] = {0}, tag[VEIL_GCM_TAG_LEN] = {0},
            sig[VEIL_ECDSA_SIG_MAX] = {0};
    size_t len = sizeof buf, sig_len = sizeof sig;
    veil_keygen_params kp = {.type = VEIL_KEY_RSA, .bits = 2048, .label = "x"};
    veil_secbuf *out = NULL;
    veil_engine *e = NULL;
    veil_key *rsa = NULL, *pub = NULL, *k = NULL;
    veil_caps caps;
    uint8_t *der;
    size_t der_len;

    CU_ASSERT_EQUAL(veil_engine_new(NULL, NULL), VEIL_E_ARG);
    CU_ASSERT_EQUAL_FATAL(veil_engine_new(NULL, &e), VEIL_OK);
    veil_engine_free(NULL);
    veil_key_free(NULL);

    /* NULL engine */
    CU_ASSERT_EQUAL(veil_key_open(NULL, "dir:/x", &k), VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_key_generate(NULL, "software", &kp, &k), VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_engine_caps(NULL, "software", &caps), VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_aes_gcm_seal(NULL, gcm_key, 32, gcm_iv, 12, NULL, 0,
                                      msg, 1, buf, tag),
                    VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_hkdf_sha256(NULL, NULL, 0, msg, 1, NULL, 0, buf, 32),
                    VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_random(NULL, buf, 8), VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_key_from_public(NULL, msg, 1, &k), VEIL_E_ARG);
    CU_ASSERT_PTR_NULL(k);

    /* keys used below */
    CU_ASSERT_EQUAL_FATAL(veil_key_generate(e, "software", &kp, &rsa), VEIL_OK);
    der = spki_der(rsa->pub, &der_len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(der);
    CU_ASSERT_EQUAL_FATAL(veil_key_from_public(e, der, der_len, &pub), VEIL_OK);
    OPENSSL_free(der);

    CU_ASSERT_EQUAL(veil_rsa_encrypt(NULL, rsa, NULL, msg, 1, buf, &len),
                    VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_rsa_decrypt(NULL, rsa, NULL, buf, 256, &out),
                    VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_ecdsa_sign(NULL, rsa, msg, 1, sig, &sig_len),
                    VEIL_E_ARG);

    /* NULL key */
    len = sizeof buf;
    CU_ASSERT_EQUAL(veil_rsa_encrypt(e, NULL, NULL, msg, 1, buf, &len),
                    VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_rsa_decrypt(e, NULL, NULL, buf, 256, &out),
                    VEIL_E_ARG);
    CU_ASSERT_PTR_NULL(out);
    CU_ASSERT_EQUAL(veil_ecdsa_sign(e, NULL, msg, 1, sig, &sig_len),
                    VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_ecdsa_verify(e, NULL, msg, 1, sig, 8), VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_key_get_info(NULL, NULL), VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_key_public_der(NULL, &der, &der_len), VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_key_fingerprint(NULL, buf), VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_key_save(e, NULL, "/nonexistent", NULL), VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_key_delete(e, NULL), VEIL_E_ARG);

    /* wrong kind of key */
    out = SENTINEL;
    CU_ASSERT_EQUAL(veil_rsa_decrypt(e, pub, NULL, buf, 256, &out), VEIL_E_KEY);
    CU_ASSERT_PTR_NULL(out);
    sig_len = sizeof sig;
    CU_ASSERT_EQUAL(veil_ecdsa_sign(e, rsa, msg, 1, sig, &sig_len), VEIL_E_KEY);
    CU_ASSERT_EQUAL(veil_ecdsa_verify(e, rsa, msg, 1, sig, 8), VEIL_E_KEY);
    CU_ASSERT_EQUAL(veil_key_save(e, pub, "/nonexistent", NULL),
                    VEIL_E_UNSUPPORTED);

    /* AES-GCM */
    CU_ASSERT_EQUAL(veil_aes_gcm_seal(e, gcm_key, 20, gcm_iv, 12, NULL, 0, msg,
                                      1, buf, tag),
                    VEIL_E_ARG);
    CU_ASSERT_EQUAL(
        veil_aes_gcm_seal(e, gcm_key, 32, gcm_iv, 0, NULL, 0, msg, 1, buf, tag),
        VEIL_E_ARG);
    CU_ASSERT_EQUAL(
        veil_aes_gcm_open(e, gcm_key, 32, NULL, 12, NULL, 0, msg, 1, tag, buf),
        VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_aes_gcm_seal(e, gcm_key, 32, gcm_iv, 12, NULL, 5, msg,
                                      1, buf, tag),
                    VEIL_E_ARG);

    /* HKDF */
    CU_ASSERT_EQUAL(veil_hkdf_sha256(e, NULL, 0, msg, 1, NULL, 0, buf, 0),
                    VEIL_E_ARG);
    {
        uint8_t *big = malloc(8161);
        CU_ASSERT_PTR_NOT_NULL_FATAL(big);
        CU_ASSERT_EQUAL(
            veil_hkdf_sha256(e, NULL, 0, msg, 1, NULL, 0, big, 8161),
            VEIL_E_ARG);
        CU_ASSERT_EQUAL(
            veil_hkdf_sha256(e, NULL, 0, msg, 1, NULL, 0, big, 8160), VEIL_OK);
        free(big);
    }

    /* key generation */
    kp.bits = 1024;
    CU_ASSERT_EQUAL(veil_key_generate(e, "software", &kp, &k), VEIL_E_ARG);
    kp.bits = 8192;
    CU_ASSERT_EQUAL(veil_key_generate(e, "software", &kp, &k), VEIL_E_ARG);
    kp.bits = 2048;
    kp.type = (veil_key_type)7;
    CU_ASSERT_EQUAL(veil_key_generate(e, "software", &kp, &k), VEIL_E_ARG);
    kp.type = VEIL_KEY_RSA;
    CU_ASSERT_PTR_NULL(k);

    /* places */
    CU_ASSERT_EQUAL(veil_key_generate(e, "nosuch:x", &kp, &k), VEIL_E_ARG);
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, "nosuch:x"));
    CU_ASSERT_EQUAL(veil_engine_caps(e, "nosuch:x", &caps), VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_key_open(e, "nosuch:x", &k), VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_key_open(e, "some-label", &k), VEIL_E_ARG);
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, "default token"));
    CU_ASSERT_EQUAL(veil_key_open(e, "", &k), VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_key_open(e, NULL, &k), VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_key_open(e, "dir:", &k), VEIL_E_ARG);
    CU_ASSERT_PTR_NULL(k);

    veil_key_free(rsa);
    veil_key_free(pub);
    veil_engine_free(e);
}

static void check_public_import(veil_engine *e, const uint8_t *data, size_t len,
                                veil_key_type type, unsigned bits,
                                const uint8_t fp[32])
{
    veil_key_info info;
    veil_key *k = NULL;
    uint8_t got[32];

    CU_ASSERT_EQUAL_FATAL(veil_key_from_public(e, data, len, &k), VEIL_OK);
    CU_ASSERT_EQUAL(veil_key_get_info(k, &info), VEIL_OK);
    CU_ASSERT_EQUAL(info.type, type);
    CU_ASSERT_EQUAL(info.bits, bits);
    CU_ASSERT_EQUAL(info.has_private, 0);
    CU_ASSERT_STRING_EQUAL(info.provider, "software");
    CU_ASSERT_EQUAL(veil_key_fingerprint(k, got), VEIL_OK);
    CU_ASSERT_EQUAL(memcmp(got, fp, 32), 0);
    veil_key_free(k);
}

static void test_key_from_public(void)
{
    EVP_PKEY *ec = EVP_EC_gen("P-256"), *ec384 = EVP_EC_gen("P-384");
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    static const uint8_t garbage[] = "\x30\x82\x01\x22 not a key at all";
    uint8_t *der, *der_ec, *der384, *der_ed, fp[32], fp_ec[32], *longer;
    size_t der_len = 0, ec_len = 0, len384 = 0, ed_len = 0, pem_len = 0,
           pem_ec_len = 0, pem384_len = 0;
    char *pem, *pem_ec, *pem384;
    veil_engine *e = NULL;
    veil_key *k = NULL;

    CU_ASSERT_PTR_NOT_NULL_FATAL(ec);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ec384);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ed);
    CU_ASSERT_EQUAL_FATAL(veil_engine_new(NULL, &e), VEIL_OK);
    der = spki_der(mock_rsa, &der_len);
    der_ec = spki_der(ec, &ec_len);
    der384 = spki_der(ec384, &len384);
    der_ed = spki_der(ed, &ed_len);
    pem = spki_pem(mock_rsa, &pem_len);
    pem_ec = spki_pem(ec, &pem_ec_len);
    pem384 = spki_pem(ec384, &pem384_len);
    CU_ASSERT_FATAL(der && der_ec && der384 && der_ed && pem && pem_ec &&
                    pem384);
    EVP_Digest(der, der_len, fp, NULL, EVP_sha256(), NULL);
    EVP_Digest(der_ec, ec_len, fp_ec, NULL, EVP_sha256(), NULL);

    check_public_import(e, der, der_len, VEIL_KEY_RSA, 2048, fp);
    check_public_import(e, (const uint8_t *)pem, pem_len, VEIL_KEY_RSA, 2048,
                        fp);
    check_public_import(e, der_ec, ec_len, VEIL_KEY_EC_P256, 256, fp_ec);
    check_public_import(e, (const uint8_t *)pem_ec, pem_ec_len,
                        VEIL_KEY_EC_P256, 256, fp_ec);

    /* DER with one trailing byte */
    longer = malloc(der_len + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(longer);
    memcpy(longer, der, der_len);
    longer[der_len] = 0;
    CU_ASSERT_EQUAL(veil_key_from_public(e, longer, der_len + 1, &k),
                    VEIL_E_KEY);
    CU_ASSERT_PTR_NULL(k);
    /* truncated DER */
    CU_ASSERT_EQUAL(veil_key_from_public(e, der, der_len - 1, &k), VEIL_E_KEY);
    free(longer);

    CU_ASSERT_EQUAL(veil_key_from_public(e, garbage, sizeof garbage, &k),
                    VEIL_E_KEY);
    CU_ASSERT_EQUAL(
        veil_key_from_public(e, (const uint8_t *)"-----BEGIN junk", 15, &k),
        VEIL_E_KEY);
    CU_ASSERT_EQUAL(veil_key_from_public(e, der384, len384, &k), VEIL_E_KEY);
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, "P-256"));
    CU_ASSERT_EQUAL(
        veil_key_from_public(e, (const uint8_t *)pem384, pem384_len, &k),
        VEIL_E_KEY);
    CU_ASSERT_EQUAL(veil_key_from_public(e, der_ed, ed_len, &k), VEIL_E_KEY);
    CU_ASSERT_EQUAL(veil_key_from_public(e, der, 0, &k), VEIL_E_ARG);
    CU_ASSERT_PTR_NULL(k);

    OPENSSL_free(der);
    OPENSSL_free(der_ec);
    OPENSSL_free(der384);
    OPENSSL_free(der_ed);
    free(pem);
    free(pem_ec);
    free(pem384);
    EVP_PKEY_free(ec);
    EVP_PKEY_free(ec384);
    EVP_PKEY_free(ed);
    veil_engine_free(e);
}

/* ==== suite: software provider ============================================ */

static void check_export(veil_key *k, veil_key_type type, unsigned bits)
{
    uint8_t *der = NULL, fp[32], want[32];
    char *pem = NULL, hex[65];
    veil_key_info info;
    veil_key *back = NULL;
    size_t len = 0;

    CU_ASSERT_EQUAL_FATAL(veil_key_public_der(k, &der, &len), VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(veil_key_public_pem(k, &pem), VEIL_OK);
    CU_ASSERT_EQUAL(strncmp(pem, "-----BEGIN PUBLIC KEY-----\n", 27), 0);
    CU_ASSERT_EQUAL(veil_key_fingerprint(k, fp), VEIL_OK);
    EVP_Digest(der, len, want, NULL, EVP_sha256(), NULL);
    CU_ASSERT_EQUAL(memcmp(fp, want, 32), 0);

    CU_ASSERT_EQUAL(veil_key_get_info(k, &info), VEIL_OK);
    CU_ASSERT_EQUAL(info.type, type);
    CU_ASSERT_EQUAL(info.bits, bits);
    CU_ASSERT_EQUAL(info.has_private, 1);
    CU_ASSERT_EQUAL(info.persistent, 0);
    CU_ASSERT_EQUAL(info.sensitive, -1);
    CU_ASSERT_EQUAL(info.extractable, -1);
    CU_ASSERT_STRING_EQUAL(info.provider, "software");
    CU_ASSERT_STRING_EQUAL(info.uri, "");
    veil_hex(want, 32, hex);
    CU_ASSERT_EQUAL(strlen(info.fingerprint), 7 + 64);
    CU_ASSERT_EQUAL(strncmp(info.fingerprint, "sha256:", 7), 0);
    CU_ASSERT_STRING_EQUAL(info.fingerprint + 7, hex);

    /* the PEM imports back to the same key */
    CU_ASSERT_EQUAL(
        veil_key_from_public(sw_e, (const uint8_t *)pem, strlen(pem), &back),
        VEIL_OK);
    if (back) {
        CU_ASSERT_EQUAL(veil_key_fingerprint(back, fp), VEIL_OK);
        CU_ASSERT_EQUAL(memcmp(fp, want, 32), 0);
    }
    veil_key_free(back);
    free(der);
    free(pem);
}

static void test_sw_export(void)
{
    check_export(sw_rsa, VEIL_KEY_RSA, 2048);
    check_export(sw_ec, VEIL_KEY_EC_P256, 256);
}

/* The raw-RSA output of a token that strips leading zeros: every length
 * from 0 to k lands right-aligned, zeros to its left, whatever followed it
 * in the buffer. */
static void test_ct_right_align(void)
{
    static const size_t sizes[] = {1, 2, 3, 7, 64, 255, 256, 257, 512, 1024};
    uint8_t d[1024], want[1024];

    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t k = sizes[si], bad = 0;

        for (size_t n = 0; n <= k; n++) {
            for (size_t i = 0; i < k; i++)
                d[i] = (uint8_t)(i < n ? 0x80 | (i * 7 + n) : 0x5a);
            memset(want, 0, k);
            for (size_t i = 0; i < n; i++)
                want[k - n + i] = (uint8_t)(0x80 | (i * 7 + n));
            veil_ct_right_align(d, n, k);
            bad += memcmp(d, want, k) != 0;
        }
        CU_ASSERT_EQUAL(bad, 0);
    }
}

static void test_sw_oaep(void)
{
    static const uint8_t msg[32] = "0123456789abcdef0123456789abcdef";
    static const uint8_t label[] = "a label";
    veil_oaep sha1l = {VEIL_HASH_SHA1, label, sizeof label};
    veil_oaep sha256 = {VEIL_HASH_SHA256, NULL, 0};
    veil_oaep wrong_label = {VEIL_HASH_SHA1, label, sizeof label - 1};
    uint8_t ct[512], big[200] = {0};
    size_t len = sizeof ct, n;
    veil_secbuf *out = NULL;

    /* NULL parameters = SHA-256, no label */
    CU_ASSERT_EQUAL(
        veil_rsa_encrypt(sw_e, sw_rsa, NULL, msg, sizeof msg, ct, &len),
        VEIL_OK);
    CU_ASSERT_EQUAL(len, 256);
    CU_ASSERT_EQUAL(veil_rsa_decrypt(sw_e, sw_rsa, NULL, ct, len, &out),
                    VEIL_OK);
    CU_ASSERT_TRUE(secbuf_is(out, msg, sizeof msg));
    veil_secbuf_free(out);
    out = NULL;
    CU_ASSERT_EQUAL(veil_rsa_decrypt(sw_e, sw_rsa, &sha256, ct, len, &out),
                    VEIL_OK);
    CU_ASSERT_TRUE(secbuf_is(out, msg, sizeof msg));
    veil_secbuf_free(out);
    out = NULL;

    /* flipped bit */
    ct[100] ^= 0x10;
    out = SENTINEL;
    CU_ASSERT_EQUAL(veil_rsa_decrypt(sw_e, sw_rsa, NULL, ct, len, &out),
                    VEIL_E_DECRYPT);
    CU_ASSERT_TRUE(message_is("software: decryption failed"));
    CU_ASSERT_PTR_NULL(out);
    ct[100] ^= 0x10;
    /* truncated */
    CU_ASSERT_EQUAL(veil_rsa_decrypt(sw_e, sw_rsa, NULL, ct, len - 1, &out),
                    VEIL_E_DECRYPT);
    CU_ASSERT_TRUE(message_is("software: decryption failed"));
    CU_ASSERT_PTR_NULL(out);
    /* the wrong hash */
    CU_ASSERT_EQUAL(veil_rsa_decrypt(sw_e, sw_rsa, &sha1l, ct, len, &out),
                    VEIL_E_DECRYPT);
    CU_ASSERT_TRUE(message_is("software: decryption failed"));

    /* SHA-1 with a label */
    len = sizeof ct;
    CU_ASSERT_EQUAL(
        veil_rsa_encrypt(sw_e, sw_rsa, &sha1l, msg, sizeof msg, ct, &len),
        VEIL_OK);
    CU_ASSERT_EQUAL(len, 256);
    CU_ASSERT_EQUAL(veil_rsa_decrypt(sw_e, sw_rsa, &sha1l, ct, len, &out),
                    VEIL_OK);
    CU_ASSERT_TRUE(secbuf_is(out, msg, sizeof msg));
    veil_secbuf_free(out);
    out = NULL;
    /* also what OpenSSL makes of it */
    {
        uint8_t pt[256];
        n = sizeof pt;
        CU_ASSERT_TRUE(ossl_oaep_decrypt(sw_rsa->pub, EVP_sha1(), label,
                                         sizeof label, ct, len, pt, &n));
        CU_ASSERT_EQUAL(n, sizeof msg);
    }
    CU_ASSERT_EQUAL(veil_rsa_decrypt(sw_e, sw_rsa, &wrong_label, ct, len, &out),
                    VEIL_E_DECRYPT);
    CU_ASSERT_TRUE(message_is("software: decryption failed"));
    CU_ASSERT_EQUAL(veil_rsa_decrypt(sw_e, sw_rsa, NULL, ct, len, &out),
                    VEIL_E_DECRYPT);
    CU_ASSERT_PTR_NULL(out);

    /* an empty message is fine */
    len = sizeof ct;
    CU_ASSERT_EQUAL(veil_rsa_encrypt(sw_e, sw_rsa, NULL, msg, 0, ct, &len),
                    VEIL_OK);
    CU_ASSERT_EQUAL(veil_rsa_decrypt(sw_e, sw_rsa, NULL, ct, len, &out),
                    VEIL_OK);
    CU_ASSERT_TRUE(secbuf_is(out, "", 0));
    veil_secbuf_free(out);
    out = NULL;

    /* output buffer too small; message too long (max 256 - 66 = 190) */
    len = 255;
    CU_ASSERT_EQUAL(
        veil_rsa_encrypt(sw_e, sw_rsa, NULL, msg, sizeof msg, ct, &len),
        VEIL_E_BUFFER);
    len = sizeof ct;
    CU_ASSERT_EQUAL(veil_rsa_encrypt(sw_e, sw_rsa, NULL, big, 190, ct, &len),
                    VEIL_OK);
    len = sizeof ct;
    CU_ASSERT_NOT_EQUAL(
        veil_rsa_encrypt(sw_e, sw_rsa, NULL, big, 191, ct, &len), VEIL_OK);
}

static void test_sw_ecdsa(void)
{
    static const uint8_t msg[] = "sign me";
    uint8_t sig[VEIL_ECDSA_SIG_MAX], flipped[sizeof msg];
    size_t sig_len = sizeof sig, small = VEIL_ECDSA_SIG_MAX - 1;
    veil_key *pub = NULL;
    uint8_t *der;
    size_t der_len;

    CU_ASSERT_EQUAL_FATAL(
        veil_ecdsa_sign(sw_e, sw_ec, msg, sizeof msg, sig, &sig_len), VEIL_OK);
    CU_ASSERT_TRUE(sig_len > 8 && sig_len <= VEIL_ECDSA_SIG_MAX);
    CU_ASSERT_EQUAL(sig[0], 0x30); /* DER SEQUENCE */
    CU_ASSERT_EQUAL(
        veil_ecdsa_verify(sw_e, sw_ec, msg, sizeof msg, sig, sig_len), VEIL_OK);

    memcpy(flipped, msg, sizeof msg);
    flipped[0] ^= 1;
    CU_ASSERT_EQUAL(
        veil_ecdsa_verify(sw_e, sw_ec, flipped, sizeof msg, sig, sig_len),
        VEIL_E_VERIFY);
    sig[sig_len - 1] ^= 1;
    CU_ASSERT_EQUAL(
        veil_ecdsa_verify(sw_e, sw_ec, msg, sizeof msg, sig, sig_len),
        VEIL_E_VERIFY);
    sig[sig_len - 1] ^= 1;
    CU_ASSERT_EQUAL(
        veil_ecdsa_verify(sw_e, sw_ec, msg, sizeof msg, sig, sig_len - 1),
        VEIL_E_VERIFY);

    /* with the public half only */
    CU_ASSERT_EQUAL_FATAL(veil_key_public_der(sw_ec, &der, &der_len), VEIL_OK);
    CU_ASSERT_EQUAL(veil_key_from_public(sw_e, der, der_len, &pub), VEIL_OK);
    free(der);
    CU_ASSERT_EQUAL(veil_ecdsa_verify(sw_e, pub, msg, sizeof msg, sig, sig_len),
                    VEIL_OK);
    sig_len = sizeof sig;
    CU_ASSERT_EQUAL(veil_ecdsa_sign(sw_e, pub, msg, sizeof msg, sig, &sig_len),
                    VEIL_E_KEY);
    veil_key_free(pub);

    /* the signature buffer must hold the largest signature */
    CU_ASSERT_EQUAL(veil_ecdsa_sign(sw_e, sw_ec, msg, sizeof msg, sig, &small),
                    VEIL_E_BUFFER);
    /* an empty message can be signed */
    sig_len = sizeof sig;
    CU_ASSERT_EQUAL(veil_ecdsa_sign(sw_e, sw_ec, NULL, 0, sig, &sig_len),
                    VEIL_OK);
    CU_ASSERT_EQUAL(veil_ecdsa_verify(sw_e, sw_ec, NULL, 0, sig, sig_len),
                    VEIL_OK);
}

static void test_sw_aes_gcm(void)
{
    static const uint8_t pt[33] = "thirty-three bytes of plaintext!";
    static const uint8_t aad[] = "associated";
    uint8_t ct[33], back[33], tag[VEIL_GCM_TAG_LEN], inplace[33];
    static const size_t key_lens[] = {16, 24, 32};

    for (size_t i = 0; i < 3; i++) {
        size_t kl = key_lens[i];

        CU_ASSERT_EQUAL(veil_aes_gcm_seal(sw_e, gcm_key, kl, gcm_iv, 12, aad,
                                          sizeof aad, pt, sizeof pt, ct, tag),
                        VEIL_OK);
        CU_ASSERT_NOT_EQUAL(memcmp(ct, pt, sizeof pt), 0);
        memset(back, 0, sizeof back);
        CU_ASSERT_EQUAL(veil_aes_gcm_open(sw_e, gcm_key, kl, gcm_iv, 12, aad,
                                          sizeof aad, ct, sizeof ct, tag, back),
                        VEIL_OK);
        CU_ASSERT_EQUAL(memcmp(back, pt, sizeof pt), 0);
    }

    /* flipped tag: refused, and no unauthenticated plaintext handed out */
    tag[3] ^= 0x80;
    memset(back, 0xFF, sizeof back);
    CU_ASSERT_EQUAL(veil_aes_gcm_open(sw_e, gcm_key, 32, gcm_iv, 12, aad,
                                      sizeof aad, ct, sizeof ct, tag, back),
                    VEIL_E_DECRYPT);
    CU_ASSERT_TRUE(message_is("software: decryption failed"));
    CU_ASSERT_TRUE(all_bytes(back, sizeof back, 0));
    tag[3] ^= 0x80;

    /* other AAD; other IV; flipped ciphertext */
    memset(back, 0xFF, sizeof back);
    CU_ASSERT_EQUAL(veil_aes_gcm_open(sw_e, gcm_key, 32, gcm_iv, 12, aad,
                                      sizeof aad - 1, ct, sizeof ct, tag, back),
                    VEIL_E_DECRYPT);
    CU_ASSERT_TRUE(all_bytes(back, sizeof back, 0));
    CU_ASSERT_EQUAL(veil_aes_gcm_open(sw_e, gcm_key, 32, gcm_iv, 11, aad,
                                      sizeof aad, ct, sizeof ct, tag, back),
                    VEIL_E_DECRYPT);
    ct[0] ^= 1;
    CU_ASSERT_EQUAL(veil_aes_gcm_open(sw_e, gcm_key, 32, gcm_iv, 12, aad,
                                      sizeof aad, ct, sizeof ct, tag, back),
                    VEIL_E_DECRYPT);
    ct[0] ^= 1;

    /* in place */
    memcpy(inplace, pt, sizeof pt);
    CU_ASSERT_EQUAL(veil_aes_gcm_seal(sw_e, gcm_key, 32, gcm_iv, 12, aad,
                                      sizeof aad, inplace, sizeof inplace,
                                      inplace, tag),
                    VEIL_OK);
    CU_ASSERT_EQUAL(memcmp(inplace, ct, sizeof ct), 0);
    CU_ASSERT_EQUAL(veil_aes_gcm_open(sw_e, gcm_key, 32, gcm_iv, 12, aad,
                                      sizeof aad, inplace, sizeof inplace, tag,
                                      inplace),
                    VEIL_OK);
    CU_ASSERT_EQUAL(memcmp(inplace, pt, sizeof pt), 0);

    /* AAD only */
    CU_ASSERT_EQUAL(veil_aes_gcm_seal(sw_e, gcm_key, 32, gcm_iv, 12, aad,
                                      sizeof aad, NULL, 0, NULL, tag),
                    VEIL_OK);
    CU_ASSERT_EQUAL(veil_aes_gcm_open(sw_e, gcm_key, 32, gcm_iv, 12, aad,
                                      sizeof aad, NULL, 0, tag, NULL),
                    VEIL_OK);
    tag[0] ^= 1;
    CU_ASSERT_EQUAL(veil_aes_gcm_open(sw_e, gcm_key, 32, gcm_iv, 12, aad,
                                      sizeof aad, NULL, 0, tag, NULL),
                    VEIL_E_DECRYPT);
}

static void test_sw_hkdf_random(void)
{
    /* RFC 5869, test case 1 */
    static const uint8_t ikm[22] = {
        0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b,
        0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b};
    static const uint8_t salt[13] = {0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
                                     0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c};
    static const uint8_t info[10] = {0xf0, 0xf1, 0xf2, 0xf3, 0xf4,
                                     0xf5, 0xf6, 0xf7, 0xf8, 0xf9};
    static const uint8_t okm[42] = {
        0x3c, 0xb2, 0x5f, 0x25, 0xfa, 0xac, 0xd5, 0x7a, 0x90, 0x43, 0x4f,
        0x64, 0xd0, 0x36, 0x2f, 0x2a, 0x2d, 0x2d, 0x0a, 0x90, 0xcf, 0x1a,
        0x5a, 0x4c, 0x5d, 0xb0, 0x2d, 0x56, 0xec, 0xc4, 0xc5, 0xbf, 0x34,
        0x00, 0x72, 0x08, 0xd5, 0xb8, 0x87, 0x18, 0x58, 0x65};
    uint8_t out[42], rnd[64], rnd2[64];

    CU_ASSERT_EQUAL(veil_hkdf_sha256(sw_e, salt, sizeof salt, ikm, sizeof ikm,
                                     info, sizeof info, out, sizeof out),
                    VEIL_OK);
    CU_ASSERT_EQUAL(memcmp(out, okm, sizeof okm), 0);

    /* the same case in two steps: Extract gives the RFC's PRK, Expand
     * the OKM */
    static const uint8_t prk_want[32] = {
        0x07, 0x77, 0x09, 0x36, 0x2c, 0x2e, 0x32, 0xdf, 0x0d, 0xdc, 0x3f,
        0x0d, 0xc4, 0x7b, 0xba, 0x63, 0x90, 0xb6, 0xc7, 0x3b, 0xb5, 0x0f,
        0x9c, 0x31, 0x22, 0xec, 0x84, 0x4a, 0xd7, 0xc2, 0xb3, 0xe5};
    uint8_t prk[VEIL_HKDF_PRK_LEN], big[VEIL_HKDF_INFO_MAX + 1] = {0};

    CU_ASSERT_EQUAL(
        veil_hkdf_sha256_extract(sw_e, salt, sizeof salt, ikm, sizeof ikm, prk),
        VEIL_OK);
    CU_ASSERT_EQUAL(memcmp(prk, prk_want, sizeof prk), 0);
    memset(out, 0, sizeof out);
    CU_ASSERT_EQUAL(veil_hkdf_sha256_expand(sw_e, prk, sizeof prk, info,
                                            sizeof info, out, sizeof out),
                    VEIL_OK);
    CU_ASSERT_EQUAL(memcmp(out, okm, sizeof okm), 0);
    /* limits: a short PRK, too much info, no output */
    CU_ASSERT_EQUAL(veil_hkdf_sha256_expand(sw_e, prk, 16, info, sizeof info,
                                            out, sizeof out),
                    VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_hkdf_sha256_expand(sw_e, prk, sizeof prk, big,
                                            sizeof big, out, sizeof out),
                    VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_hkdf_sha256_expand(sw_e, prk, sizeof prk, info,
                                            sizeof info, out, 0),
                    VEIL_E_ARG);

    memset(rnd, 0, sizeof rnd);
    memset(rnd2, 0, sizeof rnd2);
    CU_ASSERT_EQUAL(veil_random(sw_e, rnd, sizeof rnd), VEIL_OK);
    CU_ASSERT_EQUAL(veil_random(sw_e, rnd2, sizeof rnd2), VEIL_OK);
    CU_ASSERT_FALSE(all_bytes(rnd, sizeof rnd, 0));
    CU_ASSERT_NOT_EQUAL(memcmp(rnd, rnd2, sizeof rnd), 0);
    CU_ASSERT_EQUAL(veil_random(sw_e, NULL, 0), VEIL_OK);
}

/* ECDH in software: both sides get the same Z, and it is OpenSSL's. */
static void test_sw_ecdh(void)
{
    veil_keygen_params ec = {.type = VEIL_KEY_EC_P256, .label = "peer"};
    uint8_t pa[VEIL_ECDH_P256_POINT_LEN], pb[VEIL_ECDH_P256_POINT_LEN];
    size_t la = 0, lb = 0;
    veil_secbuf *za = NULL, *zb = NULL;
    veil_key *b = NULL, *pub = NULL;
    uint8_t *der = NULL;
    size_t der_len = 0;

    CU_ASSERT_EQUAL_FATAL(veil_key_generate(sw_e, "software", &ec, &b),
                          VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(EVP_PKEY_get_octet_string_param(sw_ec->pub,
                                                          "encoded-pub-key", pa,
                                                          sizeof pa, &la),
                          1);
    CU_ASSERT_EQUAL_FATAL(EVP_PKEY_get_octet_string_param(
                              b->pub, "encoded-pub-key", pb, sizeof pb, &lb),
                          1);
    CU_ASSERT_EQUAL(veil_ecdh_derive(sw_e, sw_ec, pb, lb, &za), VEIL_OK);
    CU_ASSERT_EQUAL(veil_ecdh_derive(sw_e, b, pa, la, &zb), VEIL_OK);
    CU_ASSERT_TRUE(za && zb && veil_secbuf_len(za) == 32 &&
                   veil_secbuf_len(zb) == 32 &&
                   memcmp(veil_secbuf_data(za), veil_secbuf_data(zb), 32) == 0);
    veil_secbuf_free(za);
    veil_secbuf_free(zb);

    /* a public key cannot derive */
    CU_ASSERT_EQUAL_FATAL(veil_key_public_der(b, &der, &der_len), VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(veil_key_from_public(sw_e, der, der_len, &pub),
                          VEIL_OK);
    CU_ASSERT_EQUAL(veil_ecdh_derive(sw_e, pub, pa, la, &za), VEIL_E_KEY);
    /* an RSA key is the wrong kind */
    CU_ASSERT_EQUAL(veil_ecdh_derive(sw_e, sw_rsa, pa, la, &za), VEIL_E_KEY);
    free(der);
    veil_key_free(pub);
    veil_key_free(b);
}

/* ==== suite: key files ==================================================== */

static int mode_is_0600(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 && (st.st_mode & 07777) == 0600;
}

static void test_key_save_plain(void)
{
    char dir[600], ref[640], priv[700], pub[700];
    char *priv_before, *pub_before, *priv_after, *pub_after;
    size_t a, b, c, d;
    uint8_t fp[32], fp2[32];
    veil_key_info info;
    veil_key *k = NULL;

    snprintf(dir, sizeof dir, "%s/plain", scratch);
    snprintf(ref, sizeof ref, "dir:%s", dir);
    snprintf(priv, sizeof priv, "%s/private_key.pem", dir);
    snprintf(pub, sizeof pub, "%s/public_key.pem", dir);

    CU_ASSERT_EQUAL_FATAL(veil_key_save(sw_e, sw_rsa, dir, NULL), VEIL_OK);
    CU_ASSERT_TRUE(mode_is_0600(priv));
    CU_ASSERT_TRUE(mode_is_0600(pub));
    priv_before = slurp(priv, &a);
    pub_before = slurp(pub, &b);
    CU_ASSERT_PTR_NOT_NULL_FATAL(priv_before);
    CU_ASSERT_PTR_NOT_NULL_FATAL(pub_before);
    CU_ASSERT_EQUAL(strncmp(priv_before, "-----BEGIN PRIVATE KEY-----", 27), 0);
    CU_ASSERT_EQUAL(strncmp(pub_before, "-----BEGIN PUBLIC KEY-----", 26), 0);

    /* open it back */
    CU_ASSERT_EQUAL(veil_key_open(sw_e, ref, &k), VEIL_OK);
    if (k) {
        CU_ASSERT_EQUAL(veil_key_fingerprint(sw_rsa, fp), VEIL_OK);
        CU_ASSERT_EQUAL(veil_key_fingerprint(k, fp2), VEIL_OK);
        CU_ASSERT_EQUAL(memcmp(fp, fp2, 32), 0);
        CU_ASSERT_EQUAL(veil_key_get_info(k, &info), VEIL_OK);
        CU_ASSERT_EQUAL(info.has_private, 1);
        CU_ASSERT_EQUAL(info.persistent, 1);
        CU_ASSERT_STRING_EQUAL(info.uri, ref);
    }
    veil_key_free(k);

    /* saving again refuses to overwrite, and changes nothing */
    CU_ASSERT_EQUAL(veil_key_save(sw_e, sw_rsa, dir, NULL), VEIL_E_EXISTS);
    CU_ASSERT_EQUAL(veil_key_save(sw_e, sw_ec, dir, NULL), VEIL_E_EXISTS);
    priv_after = slurp(priv, &c);
    pub_after = slurp(pub, &d);
    CU_ASSERT_PTR_NOT_NULL_FATAL(priv_after);
    CU_ASSERT_PTR_NOT_NULL_FATAL(pub_after);
    CU_ASSERT_TRUE(a == c && memcmp(priv_before, priv_after, a) == 0);
    CU_ASSERT_TRUE(b == d && memcmp(pub_before, pub_after, b) == 0);
    CU_ASSERT_TRUE(mode_is_0600(priv));
    free(priv_before);
    free(pub_before);
    free(priv_after);
    free(pub_after);

    /* missing directory */
    snprintf(ref, sizeof ref, "dir:%s/does-not-exist", scratch);
    CU_ASSERT_EQUAL(veil_key_open(sw_e, ref, &k), VEIL_E_NOT_FOUND);
    CU_ASSERT_PTR_NULL(k);
}

static void test_key_save_password(void)
{
    static const char var[] = "VEIL_TEST_ENGINE_KEY_PASSWORD";
    veil_engine_config cfg = {0};
    veil_engine *e = NULL, *nopin = NULL;
    char dir[600], ref[640], priv[700], *text;
    uint8_t fp[32], fp2[32];
    veil_key *k = NULL;
    size_t n;

    snprintf(dir, sizeof dir, "%s/enc", scratch);
    snprintf(ref, sizeof ref, "dir:%s", dir);
    snprintf(priv, sizeof priv, "%s/private_key.pem", dir);

    cfg.pin.kind = VEIL_PIN_ENV;
    cfg.pin.where = var;
    CU_ASSERT_EQUAL_FATAL(setenv(var, "correct horse battery", 1), 0);
    CU_ASSERT_EQUAL_FATAL(veil_engine_new(&cfg, &e), VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(veil_engine_new(NULL, &nopin), VEIL_OK);

    CU_ASSERT_EQUAL_FATAL(veil_key_save(e, sw_ec, dir, &cfg.pin), VEIL_OK);
    text = slurp(priv, &n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_EQUAL(strncmp(text, "-----BEGIN ENCRYPTED PRIVATE KEY-----", 37),
                    0);
    CU_ASSERT_PTR_NULL(strstr(text, "correct horse"));
    free(text);
    CU_ASSERT_TRUE(mode_is_0600(priv));

    /* right password */
    CU_ASSERT_EQUAL(veil_key_open(e, ref, &k), VEIL_OK);
    if (k) {
        CU_ASSERT_EQUAL(veil_key_fingerprint(sw_ec, fp), VEIL_OK);
        CU_ASSERT_EQUAL(veil_key_fingerprint(k, fp2), VEIL_OK);
        CU_ASSERT_EQUAL(memcmp(fp, fp2, 32), 0);
    }
    veil_key_free(k);
    k = NULL;

    /* wrong password */
    CU_ASSERT_EQUAL_FATAL(setenv(var, "wrong horse battery", 1), 0);
    CU_ASSERT_EQUAL(veil_key_open(e, ref, &k), VEIL_E_PIN);
    CU_ASSERT_PTR_NULL(k);

    /* no password source at all; a source whose variable is unset */
    CU_ASSERT_EQUAL(veil_key_open(nopin, ref, &k), VEIL_E_PIN_REQUIRED);
    CU_ASSERT_PTR_NULL(k);
    CU_ASSERT_EQUAL_FATAL(unsetenv(var), 0);
    CU_ASSERT_EQUAL(veil_key_open(e, ref, &k), VEIL_E_PIN_REQUIRED);
    CU_ASSERT_PTR_NULL(k);

    veil_engine_free(e);
    veil_engine_free(nopin);
}

static void test_key_delete_dir(void)
{
    char dir[600], ref[640], priv[700], pub[700];
    veil_key *k = NULL;

    snprintf(dir, sizeof dir, "%s/del", scratch);
    snprintf(ref, sizeof ref, "dir:%s", dir);
    snprintf(priv, sizeof priv, "%s/private_key.pem", dir);
    snprintf(pub, sizeof pub, "%s/public_key.pem", dir);

    CU_ASSERT_EQUAL_FATAL(veil_key_save(sw_e, sw_rsa, dir, NULL), VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(veil_key_open(sw_e, ref, &k), VEIL_OK);
    CU_ASSERT_EQUAL(veil_key_delete(sw_e, k), VEIL_OK);
    CU_ASSERT_TRUE(access(priv, F_OK) != 0 && errno == ENOENT);
    CU_ASSERT_TRUE(access(pub, F_OK) != 0 && errno == ENOENT);
    k = NULL;
    CU_ASSERT_EQUAL(veil_key_open(sw_e, ref, &k), VEIL_E_NOT_FOUND);
    CU_ASSERT_PTR_NULL(k);
}

/* ==== suite: host OAEP decoder ============================================ */

/* out ^= MGF1(seed, len) (RFC 8017 B.2.1), the test's own copy. */
static void t_mgf1_xor(const EVP_MD *md, const uint8_t *seed, size_t seed_len,
                       uint8_t *out, size_t len)
{
    uint8_t digest[EVP_MAX_MD_SIZE], c[4];
    unsigned hlen = (unsigned)EVP_MD_get_size(md);
    size_t done = 0;

    for (uint32_t counter = 0; done < len; counter++) {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        c[0] = (uint8_t)(counter >> 24);
        c[1] = (uint8_t)(counter >> 16);
        c[2] = (uint8_t)(counter >> 8);
        c[3] = (uint8_t)counter;
        EVP_DigestInit_ex(ctx, md, NULL);
        EVP_DigestUpdate(ctx, seed, seed_len);
        EVP_DigestUpdate(ctx, c, 4);
        EVP_DigestFinal_ex(ctx, digest, NULL);
        EVP_MD_CTX_free(ctx);
        for (unsigned i = 0; i < hlen && done < len; i++)
            out[done++] ^= digest[i];
    }
}

#define OAEP_K 256 /* RSA-2048 */

/* DB = lHash(label) || PS (zeros) || 0x01 || msg, for a k-byte EM. */
static void db_build(const EVP_MD *md, const char *label, const uint8_t *msg,
                     size_t mlen, uint8_t *db)
{
    size_t hlen = (size_t)EVP_MD_get_size(md), db_len = OAEP_K - hlen - 1;

    memset(db, 0, db_len);
    EVP_Digest(label ? label : "", label ? strlen(label) : 0, db, NULL, md,
               NULL);
    db[db_len - mlen - 1] = 0x01;
    if (mlen)
        memcpy(db + db_len - mlen, msg, mlen);
}

/* EM = 0x00 || maskedSeed || maskedDB (RFC 8017 7.1.1 step 2 i-l), from a
 * DB the test laid out, so wrong bytes can be put in exact places. */
static void em_build(const EVP_MD *md, const uint8_t *db, uint8_t *em)
{
    size_t hlen = (size_t)EVP_MD_get_size(md), db_len = OAEP_K - hlen - 1;
    uint8_t *seed = em + 1, *mdb = em + 1 + hlen;

    em[0] = 0;
    for (size_t i = 0; i < hlen; i++)
        seed[i] = (uint8_t)(0x3C + 7 * i);
    memcpy(mdb, db, db_len);
    t_mgf1_xor(md, seed, hlen, mdb, db_len); /* maskedDB */
    t_mgf1_xor(md, mdb, db_len, seed, hlen); /* maskedSeed */
}

/* The in-place decoder on a copy of em: its result, with *len the
 * buffer's length afterwards and *clean 1 when every byte of the k-byte
 * buffer past that length is zero (read before the buffer is freed). */
static veil_rc decode_inplace(const veil_oaep *o, const uint8_t *em,
                              uint8_t *msg_out, size_t *len, int *clean)
{
    veil_secbuf *buf = NULL;
    veil_rc rc;
    uint8_t *d;

    *len = 0;
    *clean = 0;
    if (veil_secbuf_new(OAEP_K, &buf) != VEIL_OK)
        return VEIL_E_NOMEM;
    d = veil_secbuf_data(buf);
    memcpy(d, em, OAEP_K);
    rc = veil_oaep_decode_inplace(o, buf);
    *len = veil_secbuf_len(buf);
    if (*len <= OAEP_K) {
        memcpy(msg_out, d, *len);
        *clean = rc == VEIL_OK ? all_bytes(d + *len, OAEP_K - *len, 0)
                               : all_bytes(d, OAEP_K, 0);
    }
    veil_secbuf_free(buf);
    return rc;
}

/* Decodes em (both decoders); 1 when the result is exactly msg[0..mlen). */
static int decodes_to(const veil_oaep *o, const uint8_t *em, const uint8_t *msg,
                      size_t mlen)
{
    veil_secbuf *out = NULL;
    veil_rc rc = veil_oaep_decode(o, em, OAEP_K, &out);
    int ok = rc == VEIL_OK && secbuf_is(out, msg, mlen), clean;
    uint8_t got[OAEP_K];
    size_t len;

    if (rc != VEIL_OK)
        fprintf(stderr, "\n  decode: %s\n", veil_last_error()->message);
    veil_secbuf_free(out);

    rc = decode_inplace(o, em, got, &len, &clean);
    if (rc != VEIL_OK || len != mlen || (mlen && memcmp(got, msg, mlen) != 0) ||
        !clean) {
        fprintf(stderr, "\n  in-place decode: %s, length %zu, tail %s\n",
                veil_rc_name(rc), len, clean ? "wiped" : "NOT wiped");
        ok = 0;
    }
    return ok;
}

/* 1 when decoding em fails the one way it must (both decoders; the
 * in-place one leaves its buffer wiped). */
static int decode_fails(const veil_oaep *o, const uint8_t *em)
{
    veil_secbuf *out = SENTINEL;
    veil_rc rc = veil_oaep_decode(o, em, OAEP_K, &out);
    uint8_t got[OAEP_K];
    size_t len;
    int clean;

    if (rc == VEIL_OK) {
        veil_secbuf_free(out);
        return 0;
    }
    if (rc != VEIL_E_DECRYPT || out != NULL ||
        veil_last_error()->code != VEIL_E_DECRYPT ||
        !message_is("engine: decryption failed"))
        return 0;

    rc = decode_inplace(o, em, got, &len, &clean);
    if (rc != VEIL_E_DECRYPT || !message_is("engine: decryption failed") ||
        !clean) {
        fprintf(stderr, "\n  in-place decode: %s, buffer %s\n",
                veil_rc_name(rc), clean ? "wiped" : "NOT wiped");
        return 0;
    }
    return 1;
}

static void test_oaep_decode_real(void)
{
    static const uint8_t msg[] = "decoded on the host";
    static const uint8_t label[] = "L";
    veil_oaep sha1l = {VEIL_HASH_SHA1, label, sizeof label};
    veil_oaep other = {VEIL_HASH_SHA1, (const uint8_t *)"M", 2};
    uint8_t ct[OAEP_K], em[OAEP_K];
    size_t len = sizeof ct;

    CU_ASSERT_EQUAL_FATAL(EVP_PKEY_get_size(sw_rsa->pub), OAEP_K);

    /* OAEP-SHA256 made by the engine; raw RSA by OpenSSL; decode here */
    CU_ASSERT_EQUAL_FATAL(
        veil_rsa_encrypt(sw_e, sw_rsa, NULL, msg, sizeof msg, ct, &len),
        VEIL_OK);
    CU_ASSERT_TRUE_FATAL(ossl_raw(sw_rsa->pub, 1, ct, OAEP_K, em));
    CU_ASSERT_EQUAL(em[0], 0);
    CU_ASSERT_TRUE(decodes_to(NULL, em, msg, sizeof msg));
    CU_ASSERT_TRUE(decode_fails(&sha1l, em)); /* wrong hash */
    em[OAEP_K - 1] ^= 1;                      /* damaged maskedDB */
    CU_ASSERT_TRUE(decode_fails(NULL, em));

    /* SHA-1 with a label */
    len = sizeof ct;
    CU_ASSERT_EQUAL_FATAL(
        veil_rsa_encrypt(sw_e, sw_rsa, &sha1l, msg, sizeof msg, ct, &len),
        VEIL_OK);
    CU_ASSERT_TRUE_FATAL(ossl_raw(sw_rsa->pub, 1, ct, OAEP_K, em));
    CU_ASSERT_TRUE(decodes_to(&sha1l, em, msg, sizeof msg));
    CU_ASSERT_TRUE(decode_fails(&other, em)); /* label mismatch */
    CU_ASSERT_TRUE(decode_fails(NULL, em));
}

static void test_oaep_decode_crafted(void)
{
    static const uint8_t msg[] = "crafted";
    static const uint8_t tricky[] = {0x00, 0x01, 0x00, 0x01, 0xFF};
    uint8_t db[OAEP_K], em[OAEP_K], ct[OAEP_K], max_msg[OAEP_K - 2 * 32 - 2];
    veil_oaep sha1 = {VEIL_HASH_SHA1, NULL, 0};
    veil_oaep lab = {VEIL_HASH_SHA256, (const uint8_t *)"lab", 3};
    const EVP_MD *md = EVP_sha256();
    const size_t hlen = 32, db_len = OAEP_K - hlen - 1;
    veil_secbuf *out = NULL;

    /* the test's encoder agrees with OpenSSL: raw-encrypt our EM with the
     * public key and let the software provider decrypt it */
    db_build(md, NULL, msg, sizeof msg, db);
    em_build(md, db, em);
    CU_ASSERT_TRUE_FATAL(ossl_raw(sw_rsa->pub, 0, em, OAEP_K, ct));
    CU_ASSERT_EQUAL(veil_rsa_decrypt(sw_e, sw_rsa, NULL, ct, OAEP_K, &out),
                    VEIL_OK);
    CU_ASSERT_TRUE(secbuf_is(out, msg, sizeof msg));
    veil_secbuf_free(out);

    /* valid */
    CU_ASSERT_TRUE(decodes_to(NULL, em, msg, sizeof msg));
    /* separator at the very end: an empty message, which is valid */
    db_build(md, NULL, NULL, 0, db);
    em_build(md, db, em);
    CU_ASSERT_TRUE(decodes_to(NULL, em, NULL, 0));
    /* longest message: no PS at all */
    for (size_t i = 0; i < sizeof max_msg; i++)
        max_msg[i] = (uint8_t)(i * 13 + 1);
    db_build(md, NULL, max_msg, sizeof max_msg, db);
    em_build(md, db, em);
    CU_ASSERT_TRUE(decodes_to(NULL, em, max_msg, sizeof max_msg));
    /* a message that itself starts with 0x00 0x01: only the first 0x01
     * after the padding separates */
    db_build(md, NULL, tricky, sizeof tricky, db);
    em_build(md, db, em);
    CU_ASSERT_TRUE(decodes_to(NULL, em, tricky, sizeof tricky));
    /* with a label */
    db_build(md, "lab", msg, sizeof msg, db);
    em_build(md, db, em);
    CU_ASSERT_TRUE(decodes_to(&lab, em, msg, sizeof msg));
    CU_ASSERT_TRUE(decode_fails(NULL, em)); /* label mismatch */
    /* SHA-1 */
    db_build(EVP_sha1(), NULL, msg, sizeof msg, db);
    em_build(EVP_sha1(), db, em);
    CU_ASSERT_TRUE(decodes_to(&sha1, em, msg, sizeof msg));
    CU_ASSERT_TRUE(decode_fails(NULL, em)); /* hash mismatch */

    /* first byte of EM not zero */
    db_build(md, NULL, msg, sizeof msg, db);
    em_build(md, db, em);
    em[0] = 0x01;
    CU_ASSERT_TRUE(decode_fails(NULL, em));
    em[0] = 0x80;
    CU_ASSERT_TRUE(decode_fails(NULL, em));

    /* a flipped lHash byte (first, middle, last) */
    for (size_t pos = 0; pos < hlen; pos += 15) {
        db_build(md, NULL, msg, sizeof msg, db);
        db[pos == 30 ? hlen - 1 : pos] ^= 0x04;
        em_build(md, db, em);
        CU_ASSERT_TRUE(decode_fails(NULL, em));
    }

    /* no 0x01 separator: all zeros after lHash; or the separator replaced
     * by another value */
    db_build(md, NULL, NULL, 0, db);
    db[db_len - 1] = 0x00;
    em_build(md, db, em);
    CU_ASSERT_TRUE(decode_fails(NULL, em));
    db_build(md, NULL, msg, sizeof msg, db);
    db[db_len - sizeof msg - 1] = 0x02;
    em_build(md, db, em);
    CU_ASSERT_TRUE(decode_fails(NULL, em));

    /* a non-zero byte in the padding (first PS byte; just before the
     * separator) */
    db_build(md, NULL, msg, sizeof msg, db);
    db[hlen] = 0x02;
    em_build(md, db, em);
    CU_ASSERT_TRUE(decode_fails(NULL, em));
    db_build(md, NULL, msg, sizeof msg, db);
    db[db_len - sizeof msg - 2] = 0xFF;
    em_build(md, db, em);
    CU_ASSERT_TRUE(decode_fails(NULL, em));

    /* a modulus too small for the hash is a key problem, not a padding
     * one */
    out = SENTINEL;
    CU_ASSERT_EQUAL(veil_oaep_decode(NULL, em, 2 * 32 + 1, &out), VEIL_E_KEY);
    CU_ASSERT_PTR_NULL(out);
}

/* ==== main ================================================================ */

int main(void)
{
    static const tu_test dispatch[] = {
        {"bad provider tables are rejected", test_table_rejected},
        {"open() can only narrow caps", test_table_accepted_caps_narrowed},
        {"key_open reaches the mock", test_key_open_dispatch},
        {"private op: key's provider, no fallback",
         test_private_op_no_fallback},
        {"ECDH: holder only, peer checked first", test_ecdh_dispatch},
        {"the observer hears each provider call", test_observer},
        {"one instance per instance id", test_instance_reuse},
        {"failed open propagates and is retried", test_open_failure_and_retry},
        {"key_delete dispatch", test_key_delete_dispatch},
        {"routing: RSA-OAEP encrypt", test_route_rsa_encrypt},
        {"routing: AES-GCM and random", test_route_aes_gcm},
    };
    static const tu_test args[] = {
        {"argument checks", test_argument_checks},
        {"veil_key_from_public", test_key_from_public},
    };
    static const tu_test software[] = {
        {"export, fingerprint, info", test_sw_export},
        {"RSA-OAEP", test_sw_oaep},
        {"ECDSA P-256", test_sw_ecdsa},
        {"AES-GCM", test_sw_aes_gcm},
        {"HKDF and random", test_sw_hkdf_random},
        {"ECDH P-256", test_sw_ecdh},
    };
    static const tu_test keyfiles[] = {
        {"save and open without password", test_key_save_plain},
        {"save and open with password", test_key_save_password},
        {"delete a directory key", test_key_delete_dir},
    };
    static const tu_test oaep[] = {
        {"right-align raw RSA output, every length", test_ct_right_align},
        {"decode real OAEP", test_oaep_decode_real},
        {"decode crafted encodings", test_oaep_decode_crafted},
    };
    int rc;

    if (fixtures_init() != 0) {
        fixtures_free();
        return 1;
    }
    TU_ADD_SUITE("dispatch (mock provider)", NULL, NULL, dispatch);
    TU_ADD_SUITE("arguments and public keys", NULL, NULL, args);
    TU_ADD_SUITE("software provider", NULL, NULL, software);
    TU_ADD_SUITE("key files", NULL, NULL, keyfiles);
    TU_ADD_SUITE("host OAEP decoder", NULL, NULL, oaep);
    rc = tu_run_tests();
    fixtures_free();
    return rc;
}
