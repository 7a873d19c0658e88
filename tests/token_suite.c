/* The token conformance suite: what a user of any PKCS#11 token sees.
 * Real tokens only (SoftHSM2, tpm2-pkcs11 on swtpm); no mocks here. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "testutil.h"
#include "token_suite.h"
#include "veil/engine.h"

static const ts_token *T;
static char token_uri[256];

/* ---- helpers ---------------------------------------------------------- */

/* Debug log lines captured for assertions (no secret ever appears). */
static char logbuf[16384];
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static void capture(void *ctx, veil_log_level level, const char *line)
{
    pthread_mutex_lock(&log_lock);
    size_t n = strlen(logbuf);
    snprintf(logbuf + n, sizeof logbuf - n, "%s\n", line);
    pthread_mutex_unlock(&log_lock);
}

static veil_engine *engine_with(const char *pin_file, unsigned flags)
{
    veil_engine_config cfg = {0};
    veil_engine *e = NULL;

    cfg.pkcs11_module = T->module;
    cfg.default_token = token_uri;
    cfg.pin.kind = pin_file ? VEIL_PIN_FILE : VEIL_PIN_NONE;
    cfg.pin.where = pin_file;
    cfg.flags = flags;
    cfg.log = capture;
    cfg.log_level = VEIL_LOG_DEBUG;
    CU_ASSERT_EQUAL_FATAL(veil_engine_new(&cfg, &e), VEIL_OK);
    return e;
}

static veil_engine *token_engine(void)
{
    return engine_with(T->pin_file, 0);
}

static veil_key *gen(veil_engine *e, const char *label, unsigned bits,
                     int session)
{
    veil_keygen_params kp = {.type = VEIL_KEY_RSA, .bits = bits,
                             .label = label,
                             .session_only = session && T->session_keys};
    veil_key *k = NULL;
    veil_rc rc = veil_key_generate(e, token_uri, &kp, &k);

    if (rc != VEIL_OK)
        fprintf(stderr, "generate %s RSA-%u: %s\n", T->name, bits,
                veil_last_error()->message);
    CU_ASSERT_EQUAL(rc, VEIL_OK);
    return k;
}

/* Wraps a fresh secret in software to the token key's public half (as a
 * client would, from the exported SPKI), unwraps it in the token. */
static void wrap_unwrap(veil_engine *e, veil_key *k)
{
    veil_engine *sw = NULL;
    veil_key *pub = NULL;
    uint8_t *der = NULL, secret[32], ct[512];
    size_t der_len = 0, ct_len = sizeof ct;
    veil_secbuf *got = NULL;

    CU_ASSERT_EQUAL_FATAL(veil_engine_new(NULL, &sw), VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(veil_key_public_der(k, &der, &der_len), VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(veil_key_from_public(sw, der, der_len, &pub), VEIL_OK);
    CU_ASSERT_EQUAL(veil_random(sw, secret, sizeof secret), VEIL_OK);
    CU_ASSERT_EQUAL(veil_rsa_encrypt(sw, pub, NULL, secret, sizeof secret, ct,
                                     &ct_len), VEIL_OK);
    {
        veil_key_info info;
        CU_ASSERT_EQUAL(veil_key_get_info(k, &info), VEIL_OK);
        CU_ASSERT_EQUAL(ct_len * 8, info.bits);
    }
    CU_ASSERT_EQUAL(veil_rsa_decrypt(e, k, NULL, ct, ct_len, &got), VEIL_OK);
    CU_ASSERT_EQUAL(veil_secbuf_len(got), sizeof secret);
    if (got)
        CU_ASSERT_EQUAL(memcmp(veil_secbuf_data(got), secret, sizeof secret), 0);
    veil_secbuf_free(got);
    veil_key_free(pub);
    veil_engine_free(sw);
    free(der);
}

/* ---- cases ------------------------------------------------------------ */

static void test_generate_and_unwrap(void)
{
    static const unsigned sizes[] = {2048, 3072, 4096};
    veil_engine *e = token_engine();

    for (size_t i = 0; i < 3; i++) {
        char label[32];
        veil_key *k;
        if (sizes[i] > T->max_bits)
            continue;
        snprintf(label, sizeof label, "gen-%u", sizes[i]);
        k = gen(e, label, sizes[i], sizes[i] != 2048);
        if (!k)
            continue;
        wrap_unwrap(e, k);
        CU_ASSERT_EQUAL(veil_key_delete(e, k), VEIL_OK);
    }
    veil_engine_free(e);
}

/* What the token says about the private key: sensitive, not extractable,
 * and asking for the private exponent is refused by the token itself. */
static void test_private_key_stays_in_token(void)
{
    veil_engine *e = token_engine();
    veil_key *k = gen(e, "custody", 2048, 0);
    veil_key_info info;
    tu_p11 *t;

    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    CU_ASSERT_EQUAL(veil_key_get_info(k, &info), VEIL_OK);
    CU_ASSERT_EQUAL(info.sensitive, 1);
    CU_ASSERT_EQUAL(info.extractable, 0);
    CU_ASSERT_EQUAL(info.persistent, 1);
    CU_ASSERT_STRING_EQUAL(info.provider, "pkcs11");
    CU_ASSERT_PTR_NOT_NULL(strstr(info.uri, "object=custody"));
    CU_ASSERT_PTR_NOT_NULL(strstr(info.uri, "type=private"));

    t = tu_p11_open(T->module, T->label, T->pin_file);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    {
        CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
        CK_ATTRIBUTE q[] = {{CKA_CLASS, &cls, sizeof cls},
                            {CKA_LABEL, (void *)"custody", 7}};
        CK_OBJECT_HANDLE h = 0;
        CK_ULONG n = 0;
        CK_BBOOL sens = 0, extr = 1, never = 0;
        CK_ATTRIBUTE flags[] = {{CKA_SENSITIVE, &sens, sizeof sens},
                                {CKA_EXTRACTABLE, &extr, sizeof extr},
                                {CKA_NEVER_EXTRACTABLE, &never, sizeof never}};
        uint8_t d[1024];
        CK_ATTRIBUTE priv = {CKA_PRIVATE_EXPONENT, d, sizeof d};

        CU_ASSERT_EQUAL(t->f->C_FindObjectsInit(t->session, q, 2), CKR_OK);
        CU_ASSERT_EQUAL(t->f->C_FindObjects(t->session, &h, 1, &n), CKR_OK);
        t->f->C_FindObjectsFinal(t->session);
        CU_ASSERT_EQUAL_FATAL(n, 1);
        CU_ASSERT_EQUAL(t->f->C_GetAttributeValue(t->session, h, flags, 3),
                        CKR_OK);
        CU_ASSERT_EQUAL(sens, CK_TRUE);
        CU_ASSERT_EQUAL(extr, CK_FALSE);
        CU_ASSERT_EQUAL(never, CK_TRUE);
        /* Refused as sensitive, or not held outside the TPM at all. */
        CK_RV rv = t->f->C_GetAttributeValue(t->session, h, &priv, 1);
        CU_ASSERT(rv == CKR_ATTRIBUTE_SENSITIVE ||
                  rv == CKR_ATTRIBUTE_TYPE_INVALID);
    }
    tu_p11_close(t);
    CU_ASSERT_EQUAL(veil_key_delete(e, k), VEIL_OK);
    veil_engine_free(e);
}

/* A persistent key outlives the engine and is found again by URI and by
 * bare label; deleting it makes it gone. */
static void test_persistent_reopen_delete(void)
{
    veil_engine *e = token_engine();
    veil_key *k = gen(e, "persist", 2048, 0), *again = NULL;
    uint8_t fp1[32], fp2[32];
    char uri[300];

    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    CU_ASSERT_EQUAL(veil_key_fingerprint(k, fp1), VEIL_OK);
    veil_key_free(k);
    veil_engine_free(e);

    e = token_engine();
    snprintf(uri, sizeof uri, "%s;object=persist;type=private", token_uri);
    CU_ASSERT_EQUAL_FATAL(veil_key_open(e, uri, &again), VEIL_OK);
    CU_ASSERT_EQUAL(veil_key_fingerprint(again, fp2), VEIL_OK);
    CU_ASSERT_EQUAL(memcmp(fp1, fp2, 32), 0);
    wrap_unwrap(e, again);
    veil_key_free(again);
    again = NULL;
    CU_ASSERT_EQUAL_FATAL(veil_key_open(e, "persist", &again), VEIL_OK);
    CU_ASSERT_EQUAL(veil_key_delete(e, again), VEIL_OK);
    again = NULL;
    CU_ASSERT_EQUAL(veil_key_open(e, uri, &again), VEIL_E_NOT_FOUND);
    CU_ASSERT_PTR_NULL(again);
    veil_engine_free(e);
}

static void test_duplicate_label_refused(void)
{
    veil_engine *e = token_engine();
    veil_key *k = gen(e, "dup", 2048, 1), *k2 = NULL;
    veil_keygen_params kp = {.type = VEIL_KEY_RSA, .bits = 2048,
                             .label = "dup", .session_only = T->session_keys};

    CU_ASSERT_EQUAL(veil_key_generate(e, token_uri, &kp, &k2), VEIL_E_EXISTS);
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, "dup"));
    CU_ASSERT_PTR_NULL(k2);
    veil_key_delete(e, k);
    veil_engine_free(e);
}

static void test_session_keys(void)
{
    veil_engine *e = token_engine();
    veil_keygen_params kp = {.type = VEIL_KEY_RSA, .bits = 2048,
                             .label = "temp", .session_only = 1};
    veil_key *k = NULL, *again = NULL;
    char uri[300];

    snprintf(uri, sizeof uri, "%s;object=temp", token_uri);
    if (!T->session_keys) {
        CU_ASSERT_EQUAL(veil_key_generate(e, token_uri, &kp, &k),
                        VEIL_E_UNSUPPORTED);
        CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, "session"));
        veil_engine_free(e);
        return;
    }
    CU_ASSERT_EQUAL_FATAL(veil_key_generate(e, token_uri, &kp, &k), VEIL_OK);
    veil_key_free(k);
    veil_engine_free(e);
    /* Gone with the engine that made it. */
    e = token_engine();
    CU_ASSERT_EQUAL(veil_key_open(e, uri, &again), VEIL_E_NOT_FOUND);
    veil_engine_free(e);
}

static void test_too_large_key(void)
{
    veil_engine *e = token_engine();
    veil_keygen_params kp = {.type = VEIL_KEY_RSA, .bits = 4096,
                             .label = "big", .session_only = 1};
    veil_key *k = NULL;

    if (T->max_bits >= 4096) {
        veil_engine_free(e);
        return;
    }
    CU_ASSERT_EQUAL(veil_key_generate(e, token_uri, &kp, &k), VEIL_E_UNSUPPORTED);
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, "4096"));
    CU_ASSERT_PTR_NULL(k);
    veil_engine_free(e);
}

/* Which OAEP path the engine took is said in the debug log. */
static void test_oaep_path_logged(void)
{
    veil_engine *e;
    veil_key *k;

    logbuf[0] = '\0';
    e = token_engine();
    k = gen(e, "path", 2048, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    wrap_unwrap(e, k);
    if (T->native_oaep_sha256) {
        CU_ASSERT_PTR_NOT_NULL(strstr(logbuf, "RSA-OAEP-SHA256 runs natively"));
    } else {
        CU_ASSERT_PTR_NOT_NULL(strstr(logbuf, "CKM_RSA_X_509"));
    }
    veil_key_delete(e, k);
    veil_engine_free(e);
}

static void test_bad_ciphertexts(void)
{
    veil_engine *e = token_engine();
    veil_key *k = gen(e, "bad-ct", 2048, 1);
    uint8_t secret[32] = {1, 2, 3}, ct[256];
    size_t ct_len = sizeof ct;
    veil_secbuf *got = NULL;

    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    CU_ASSERT_EQUAL(veil_rsa_encrypt(e, k, NULL, secret, sizeof secret, ct,
                                     &ct_len), VEIL_OK);
    ct[100] ^= 1;
    CU_ASSERT_EQUAL(veil_rsa_decrypt(e, k, NULL, ct, ct_len, &got),
                    VEIL_E_DECRYPT);
    CU_ASSERT_PTR_NULL(got);
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message,
                                  "decryption failed"));
    ct[100] ^= 1;
    CU_ASSERT_EQUAL(veil_rsa_decrypt(e, k, NULL, ct, ct_len - 1, &got),
                    VEIL_E_DECRYPT);
    CU_ASSERT_EQUAL(veil_rsa_decrypt(e, k, NULL, ct, 1, &got), VEIL_E_DECRYPT);
    memset(ct, 0xff, ct_len); /* larger than the modulus */
    CU_ASSERT_EQUAL(veil_rsa_decrypt(e, k, NULL, ct, ct_len, &got),
                    VEIL_E_DECRYPT);
    CU_ASSERT_PTR_NULL(got);
    veil_key_delete(e, k);
    veil_engine_free(e);
}

static void test_ecdsa(void)
{
    veil_engine *e = token_engine(), *sw = NULL;
    veil_keygen_params kp = {.type = VEIL_KEY_EC_P256, .label = "ec",
                             .session_only = T->session_keys};
    static const uint8_t msg[] = "a response to sign";
    uint8_t sig[VEIL_ECDSA_SIG_MAX], *der = NULL;
    size_t sig_len = sizeof sig, der_len = 0;
    veil_key *k = NULL, *pub = NULL;

    CU_ASSERT_EQUAL_FATAL(veil_key_generate(e, token_uri, &kp, &k), VEIL_OK);
    CU_ASSERT_EQUAL(veil_ecdsa_sign(e, k, msg, sizeof msg, sig, &sig_len),
                    VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(veil_engine_new(NULL, &sw), VEIL_OK);
    CU_ASSERT_EQUAL(veil_key_public_der(k, &der, &der_len), VEIL_OK);
    CU_ASSERT_EQUAL(veil_key_from_public(sw, der, der_len, &pub), VEIL_OK);
    CU_ASSERT_EQUAL(veil_ecdsa_verify(sw, pub, msg, sizeof msg, sig, sig_len),
                    VEIL_OK);
    CU_ASSERT_EQUAL(veil_ecdsa_verify(sw, pub, msg, sizeof msg - 1, sig,
                                      sig_len), VEIL_E_VERIFY);
    free(der);
    veil_key_free(pub);
    veil_engine_free(sw);
    veil_key_delete(e, k);
    veil_engine_free(e);
}

/* The uncompressed point of an EC key, from its SPKI. */
static int point_of(const veil_key *k, uint8_t pt[65], size_t *len)
{
    uint8_t *der = NULL;
    const unsigned char *q;
    size_t der_len = 0;
    EVP_PKEY *pk;
    int ok;

    if (veil_key_public_der(k, &der, &der_len) != VEIL_OK)
        return 0;
    q = der;
    pk = d2i_PUBKEY(NULL, &q, (long)der_len);
    ok = pk && EVP_PKEY_get_octet_string_param(pk, "encoded-pub-key", pt, 65,
                                               len) == 1;
    EVP_PKEY_free(pk);
    free(der);
    return ok;
}

/* ECDH with a key-agreement key made in the token: the token's Z for a
 * software peer equals the software's Z the other way round.  A token
 * without CKM_ECDH1_DERIVE must not claim it, and refuses cleanly. */
static void test_ecdh(void)
{
    veil_engine *e = token_engine(), *sw = NULL;
    veil_keygen_params kp = {.type = VEIL_KEY_EC_P256,
                             .label = "kem",
                             .session_only = T->session_keys,
                             .derive = 1},
                       skp = {.type = VEIL_KEY_EC_P256, .label = "peer"};
    uint8_t tok_pt[65], sw_pt[65];
    size_t tok_len = 0, sw_len = 0;
    veil_secbuf *z1 = NULL, *z2 = NULL;
    veil_key *k = NULL, *peer = NULL;
    veil_caps caps;

    CU_ASSERT_EQUAL_FATAL(veil_engine_caps(e, token_uri, &caps), VEIL_OK);
    CU_ASSERT_EQUAL(!!(caps.mechs & VEIL_CAP_ECDH), T->has_ecdh);
    CU_ASSERT_EQUAL_FATAL(veil_engine_new(NULL, &sw), VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(veil_key_generate(sw, "software", &skp, &peer),
                          VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(veil_key_generate(e, token_uri, &kp, &k), VEIL_OK);
    CU_ASSERT_FATAL(point_of(k, tok_pt, &tok_len));
    CU_ASSERT_FATAL(point_of(peer, sw_pt, &sw_len));
    if (T->has_ecdh) {
        CU_ASSERT_EQUAL(veil_ecdh_derive(e, k, sw_pt, sw_len, &z1), VEIL_OK);
        CU_ASSERT_EQUAL(veil_ecdh_derive(sw, peer, tok_pt, tok_len, &z2),
                        VEIL_OK);
        CU_ASSERT(z1 && z2 && veil_secbuf_len(z1) == 32 &&
                  memcmp(veil_secbuf_data(z1), veil_secbuf_data(z2), 32) == 0);
        /* a point off the curve never reaches the token */
        veil_secbuf_free(z1);
        z1 = NULL;
        sw_pt[64] ^= 1;
        CU_ASSERT_EQUAL(veil_ecdh_derive(e, k, sw_pt, sw_len, &z1),
                        VEIL_E_ARG);
        CU_ASSERT_PTR_NULL(z1);
    } else {
        CU_ASSERT_EQUAL(veil_ecdh_derive(e, k, sw_pt, sw_len, &z1),
                        VEIL_E_UNSUPPORTED);
        CU_ASSERT_PTR_NULL(z1);
    }
    /* the software provider leaves the point's check to the engine (it
     * no longer asks OpenSSL for a second one): a point off the curve,
     * (0, 0), and coordinates not below p are refused all the same */
    for (int i = 0; i < 3; i++) {
        uint8_t bad[65];
        veil_secbuf *z = NULL;

        memcpy(bad, tok_pt, sizeof bad);
        if (i == 0)
            bad[64] ^= 1;
        else
            memset(bad + 1, i == 1 ? 0x00 : 0xff, 64);
        CU_ASSERT_EQUAL(veil_ecdh_derive(sw, peer, bad, sizeof bad, &z),
                        VEIL_E_ARG);
        CU_ASSERT_PTR_NULL(z);
    }
    veil_secbuf_free(z1);
    veil_secbuf_free(z2);
    veil_key_free(peer);
    veil_engine_free(sw);
    veil_key_delete(e, k);
    veil_engine_free(e);
}

/* AES-GCM asked to run in the token: in it when it has the mechanism, in
 * software with a log line saying so when not; same answer either way. */
static void test_symmetric_routing(void)
{
    veil_engine *e, *sw = NULL;
    uint8_t key[32], iv[12], pt[100], ct[100], ct2[100], tag[16], tag2[16];

    logbuf[0] = '\0';
    e = engine_with(T->pin_file, VEIL_ENGINE_SYMMETRIC_IN_TOKEN);
    CU_ASSERT_EQUAL_FATAL(veil_engine_new(NULL, &sw), VEIL_OK);
    RAND_bytes(key, sizeof key);
    RAND_bytes(iv, sizeof iv);
    RAND_bytes(pt, sizeof pt);
    CU_ASSERT_EQUAL(veil_aes_gcm_seal(e, key, 32, iv, 12, NULL, 0, pt,
                                      sizeof pt, ct, tag), VEIL_OK);
    CU_ASSERT_EQUAL(veil_aes_gcm_seal(sw, key, 32, iv, 12, NULL, 0, pt,
                                      sizeof pt, ct2, tag2), VEIL_OK);
    CU_ASSERT_EQUAL(memcmp(ct, ct2, sizeof ct), 0);
    CU_ASSERT_EQUAL(memcmp(tag, tag2, sizeof tag), 0);
    tag[0] ^= 1;
    CU_ASSERT_EQUAL(veil_aes_gcm_open(e, key, 32, iv, 12, NULL, 0, ct,
                                      sizeof ct, tag, ct2), VEIL_E_DECRYPT);
    if (T->has_gcm) {
        CU_ASSERT_PTR_NULL(strstr(logbuf, "AES-GCM: "));
    } else {
        CU_ASSERT_PTR_NOT_NULL(strstr(logbuf, "AES-GCM: "));
    }
    veil_engine_free(sw);
    veil_engine_free(e);
}

/* Many threads, one key: each borrows its own session. */
struct job {
    veil_engine *e;
    veil_key *k;
    const uint8_t *ct;
    size_t ct_len;
    int ok;
};

static void *worker(void *arg)
{
    struct job *j = arg;

    for (int i = 0; i < 10; i++) {
        veil_secbuf *got = NULL;
        veil_rc rc = veil_rsa_decrypt(j->e, j->k, NULL, j->ct, j->ct_len, &got);
        if (rc == VEIL_OK && veil_secbuf_len(got) == 32)
            j->ok++;
        else
            fprintf(stderr, "thread decrypt %d: %s\n", i,
                    veil_last_error()->message);
        veil_secbuf_free(got);
    }
    return NULL;
}

static void test_threads(void)
{
    veil_engine *e = token_engine();
    veil_key *k = gen(e, "threads", 2048, 1);
    uint8_t secret[32] = {9}, ct[256];
    size_t ct_len = sizeof ct;
    pthread_t th[4];
    struct job jobs[4];

    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    CU_ASSERT_EQUAL(veil_rsa_encrypt(e, k, NULL, secret, 32, ct, &ct_len),
                    VEIL_OK);
    for (int i = 0; i < 4; i++) {
        jobs[i] = (struct job){e, k, ct, ct_len, 0};
        pthread_create(&th[i], NULL, worker, &jobs[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CU_ASSERT_EQUAL(jobs[i].ok, 10);
    }
    veil_key_delete(e, k);
    veil_engine_free(e);
}

/* ---- bad input: each a clear error ------------------------------------ */

static veil_rc open_with(const char *module, const char *pin_file,
                         const char *ref, veil_key **k)
{
    veil_engine_config cfg = {0};
    veil_engine *e = NULL;
    veil_rc rc;

    cfg.pkcs11_module = module;
    cfg.pin.kind = pin_file ? VEIL_PIN_FILE : VEIL_PIN_NONE;
    cfg.pin.where = pin_file;
    CU_ASSERT_EQUAL_FATAL(veil_engine_new(&cfg, &e), VEIL_OK);
    rc = veil_key_open(e, ref, k);
    veil_key_free(*k);
    *k = NULL;
    veil_engine_free(e);
    return rc;
}

static void test_wrong_pin(void)
{
    veil_key *k = NULL;
    char uri[300];

    if (!T->wrong_pin_file)
        return;
    snprintf(uri, sizeof uri, "%s;object=x", token_uri);
    CU_ASSERT_EQUAL(open_with(T->module, T->wrong_pin_file, uri, &k), VEIL_E_PIN);
    CU_ASSERT_STRING_EQUAL(veil_last_error()->provider_code, "CKR_PIN_INCORRECT");
    /* The same wrong PIN is not sent to the token a second time. */
    CU_ASSERT_EQUAL(open_with(T->module, T->wrong_pin_file, uri, &k), VEIL_E_PIN);
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, "already rejected"));
    /* No PIN at all. */
    CU_ASSERT_EQUAL(open_with(T->module, NULL, uri, &k), VEIL_E_PIN_REQUIRED);
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, "needs a PIN"));
}

static void test_missing_module_token_key(void)
{
    veil_key *k = NULL;
    char uri[300];

    CU_ASSERT_EQUAL(open_with("/nonexistent/libnothing.so", T->pin_file,
                              "pkcs11:token=x;object=y", &k), VEIL_E_MODULE);
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, "libnothing"));
    CU_ASSERT_EQUAL(open_with("no-such-p11-module", T->pin_file,
                              "pkcs11:token=x;object=y", &k), VEIL_E_MODULE);
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, "p11-kit"));
    /* no module anywhere: p11-kit's registered modules are asked (veild(8),
     * veil-keys(1)); none has token "x" */
    CU_ASSERT_EQUAL(open_with(NULL, T->pin_file, "pkcs11:token=x;object=y", &k),
                    VEIL_E_NOT_FOUND);
    CU_ASSERT_PTR_NOT_NULL(
        strstr(veil_last_error()->message, "p11-kit's registered modules"));
    /* RFC 7512: module-name is a query attribute, never dropped from the
     * path in silence */
    CU_ASSERT_EQUAL(open_with(NULL, T->pin_file,
                              "pkcs11:token=x;object=y;module-name=softhsm2",
                              &k),
                    VEIL_E_ARG);
    CU_ASSERT_PTR_NOT_NULL(
        strstr(veil_last_error()->message, "module-name is a query attribute"));
    CU_ASSERT_EQUAL(open_with(T->module, T->pin_file,
                              "pkcs11:token=no-such-token;object=y", &k),
                    VEIL_E_NOT_FOUND);
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, T->label));
    snprintf(uri, sizeof uri, "%s;object=no-such-key", token_uri);
    CU_ASSERT_EQUAL(open_with(T->module, T->pin_file, uri, &k), VEIL_E_NOT_FOUND);
    CU_ASSERT_EQUAL(open_with(T->module, T->pin_file, "pkcs11:token=%zz", &k),
                    VEIL_E_ARG);
    snprintf(uri, sizeof uri, "%s;object=y?pin-value=1234", token_uri);
    CU_ASSERT_EQUAL(open_with(T->module, T->pin_file, uri, &k), VEIL_E_ARG);
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, "pin-source"));
    snprintf(uri, sizeof uri, "%s", token_uri);
    CU_ASSERT_EQUAL(open_with(T->module, T->pin_file, uri, &k), VEIL_E_ARG);
}

/* A key in the other token is not found through this one. */
static void test_other_token(void)
{
    veil_engine *e;
    veil_key *k, *found = NULL;
    char other[256], uri[300];

    if (!T->other_label)
        return;
    e = token_engine();
    snprintf(other, sizeof other, "pkcs11:token=%s", T->other_label);
    k = NULL;
    {
        veil_keygen_params kp = {.type = VEIL_KEY_RSA, .bits = 2048,
                                 .label = "elsewhere", .session_only = 1};
        CU_ASSERT_EQUAL_FATAL(veil_key_generate(e, other, &kp, &k), VEIL_OK);
    }
    snprintf(uri, sizeof uri, "%s;object=elsewhere", token_uri);
    CU_ASSERT_EQUAL(veil_key_open(e, uri, &found), VEIL_E_NOT_FOUND);
    snprintf(uri, sizeof uri, "%s;object=elsewhere", other);
    CU_ASSERT_EQUAL(veil_key_open(e, uri, &found), VEIL_OK);
    veil_key_free(found);
    veil_key_delete(e, k);
    veil_engine_free(e);
}

/* A key made outside veil (C_CreateObject, as pkcs11-tool and p11tool do
 * on import) is found and used by veil. */
static void test_key_made_elsewhere(void)
{
    veil_engine *e;
    veil_key *k = NULL;
    EVP_PKEY *pkey = EVP_RSA_gen(2048);
    static const unsigned char id[] = {0xca, 0xfe};
    char uri[300];
    tu_p11 *t;

    if (!T->has_gcm) { /* tpm2-pkcs11 import is done by tpm2_ptool instead */
        EVP_PKEY_free(pkey);
        return;
    }
    t = tu_p11_open(T->module, T->label, T->pin_file);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_NOT_EQUAL(tu_p11_import_rsa_private(t, pkey, "external", id, 2), 0);
    tu_p11_close(t);
    EVP_PKEY_free(pkey);
    e = token_engine();
    snprintf(uri, sizeof uri, "%s;id=%%ca%%fe", token_uri);
    CU_ASSERT_EQUAL_FATAL(veil_key_open(e, uri, &k), VEIL_OK);
    wrap_unwrap(e, k);
    CU_ASSERT_EQUAL(veil_key_delete(e, k), VEIL_OK);
    veil_engine_free(e);
}

int ts_run(const ts_token *t)
{
    static const tu_test cases[] = {
        {"generate 2048/3072/4096 and unwrap", test_generate_and_unwrap},
        {"private key sensitive, not extractable",
         test_private_key_stays_in_token},
        {"persistent key reopened and deleted", test_persistent_reopen_delete},
        {"duplicate label refused", test_duplicate_label_refused},
        {"session keys vanish (or are refused)", test_session_keys},
        {"key too large for the token", test_too_large_key},
        {"OAEP path said in the debug log", test_oaep_path_logged},
        {"bad ciphertexts", test_bad_ciphertexts},
        {"ECDSA P-256 in the token", test_ecdsa},
        {"ECDH P-256 in the token (or refused)", test_ecdh},
        {"AES-GCM routed to the token or software", test_symmetric_routing},
        {"4 threads share one key", test_threads},
        {"wrong and missing PIN", test_wrong_pin},
        {"missing module, token, key; bad URI", test_missing_module_token_key},
        {"second token kept apart", test_other_token},
        {"key made outside veil", test_key_made_elsewhere},
    };

    T = t;
    snprintf(token_uri, sizeof token_uri, "pkcs11:token=%s", t->label);
    /* Keep the module mapped after veil releases it, so LeakSanitizer can
     * name leaks inside it (tests/lsan.supp) instead of "<unknown module>". */
    if (!dlopen(t->module, RTLD_NOW | RTLD_NODELETE))
        fprintf(stderr, "note: %s\n", dlerror());
    TU_ADD_SUITE(t->name, NULL, NULL, cases);
    return tu_run_tests();
}
