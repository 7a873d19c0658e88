/* A hostile token: veil's PKCS#11 provider through tests/lying_p11.c, a
 * TEST-ONLY MOCK module that forwards every call to the real SoftHSM2 (a
 * fresh token from tests/env/with-tokens.sh) but lies in one way at a time
 * ($VEIL_LIE, $VEIL_LIE_ATTR).  For every lie: a clear error code and
 * message (veil_last_error), no crash, ASan/UBSan clean, no wrong result
 * accepted; and with the lie switched off the same key works again. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>

#include "testutil.h"
#include "veil/engine.h"

static char shim[1024];
static char token_uri[256];
static const char *pin_file;

/* ---- helpers ---------------------------------------------------------- */

static void lie(const char *name, const char *attr)
{
    setenv("VEIL_LIE", name, 1);
    if (attr)
        setenv("VEIL_LIE_ATTR", attr, 1);
    else
        unsetenv("VEIL_LIE_ATTR");
}

static void truth(void)
{
    unsetenv("VEIL_LIE");
    unsetenv("VEIL_LIE_ATTR");
}

static veil_engine *engine_flags(unsigned flags)
{
    veil_engine_config cfg = {0};
    veil_engine *e = NULL;
    veil_rc rc;

    cfg.pkcs11_module = shim;
    cfg.default_token = token_uri;
    cfg.pin.kind = VEIL_PIN_FILE;
    cfg.pin.where = pin_file;
    cfg.flags = flags;
    rc = veil_engine_new(&cfg, &e);
    if (rc != VEIL_OK)
        fprintf(stderr, "engine: %s\n", veil_last_error()->message);
    CU_ASSERT_EQUAL_FATAL(rc, VEIL_OK);
    return e;
}

static veil_engine *engine(void)
{
    return engine_flags(0);
}

/* The last error is `code` and its message holds `text` (and never a
 * control character: a token's bytes are not printed raw). */
static void said(veil_rc rc, veil_rc code, const char *text)
{
    const veil_error *err = veil_last_error();

    fprintf(stderr, "  [%s] %s: %s (%s)\n", getenv("VEIL_LIE"),
            veil_rc_name(rc), err->message, err->provider_code);
    CU_ASSERT_EQUAL(rc, code);
    CU_ASSERT_EQUAL(err->code, code);
    if (text)
        CU_ASSERT_PTR_NOT_NULL(strstr(err->message, text));
    for (const char *c = err->message; *c; c++)
        CU_ASSERT(*c >= 0x20 && *c != 0x7f);
}

static veil_key *open_key(veil_engine *e, const char *label)
{
    veil_key *k = NULL;
    veil_rc rc = veil_key_open(e, label, &k);

    if (rc != VEIL_OK)
        fprintf(stderr, "open %s: %s\n", label, veil_last_error()->message);
    CU_ASSERT_EQUAL(rc, VEIL_OK);
    return k;
}

/* A 32-byte secret wrapped in software to k's public half. */
static void wrap(veil_key *k, const veil_oaep *o, uint8_t secret[32],
                 uint8_t *ct, size_t *ct_len)
{
    veil_engine *sw = NULL;
    veil_key *pub = NULL;
    uint8_t *der = NULL;
    size_t der_len = 0;

    CU_ASSERT_EQUAL_FATAL(veil_engine_new(NULL, &sw), VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(veil_key_public_der(k, &der, &der_len), VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(veil_key_from_public(sw, der, der_len, &pub),
                          VEIL_OK);
    CU_ASSERT_EQUAL(veil_random(sw, secret, 32), VEIL_OK);
    CU_ASSERT_EQUAL(veil_rsa_encrypt(sw, pub, o, secret, 32, ct, ct_len),
                    VEIL_OK);
    veil_key_free(pub);
    veil_engine_free(sw);
    free(der);
}

/* Decrypts and checks the result is the secret. */
static void unwrap_ok(veil_engine *e, veil_key *k, const veil_oaep *o)
{
    uint8_t secret[32], ct[512];
    size_t ct_len = sizeof ct;
    veil_secbuf *got = NULL;

    wrap(k, o, secret, ct, &ct_len);
    CU_ASSERT_EQUAL(veil_rsa_decrypt(e, k, o, ct, ct_len, &got), VEIL_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(got);
    CU_ASSERT_EQUAL(veil_secbuf_len(got), 32);
    CU_ASSERT_EQUAL(memcmp(veil_secbuf_data(got), secret, 32), 0);
    veil_secbuf_free(got);
}

static void sign_ok(veil_engine *e, veil_key *k)
{
    static const uint8_t msg[] = "hello";
    uint8_t sig[VEIL_ECDSA_SIG_MAX];
    size_t sig_len = sizeof sig;

    CU_ASSERT_EQUAL(veil_ecdsa_sign(e, k, msg, sizeof msg, sig, &sig_len),
                    VEIL_OK);
    CU_ASSERT_EQUAL(veil_ecdsa_verify(e, k, msg, sizeof msg, sig, sig_len),
                    VEIL_OK);
}

/* A fresh peer point (software key), uncompressed. */
static void peer_point(uint8_t pt[65])
{
    veil_engine *sw = NULL;
    veil_key *k = NULL;
    veil_keygen_params kp = {.type = VEIL_KEY_EC_P256, .derive = 1};
    uint8_t *der = NULL;
    size_t len = 0;

    CU_ASSERT_EQUAL_FATAL(veil_engine_new(NULL, &sw), VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(veil_key_generate(sw, "software", &kp, &k), VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(veil_key_public_der(k, &der, &len), VEIL_OK);
    CU_ASSERT_FATAL(len >= 65);
    memcpy(pt, der + len - 65, 65); /* SPKI ends with the point */
    free(der);
    veil_key_free(k);
    veil_engine_free(sw);
}

/* ---- setup ------------------------------------------------------------ */

static int setup(void)
{
    const char *b = getenv("VEIL_BUILDDIR");
    veil_keygen_params rsa = {
        .type = VEIL_KEY_RSA, .bits = 2048, .label = "lie-rsa"};
    veil_keygen_params ec = {.type = VEIL_KEY_EC_P256, .label = "lie-ec"};
    veil_keygen_params kem = {
        .type = VEIL_KEY_EC_P256, .label = "lie-kem", .derive = 1};
    veil_engine *e;
    veil_key *k = NULL;

    snprintf(shim, sizeof shim, "%s/tests/.libs/lying_p11.so", b ? b : ".");
    snprintf(token_uri, sizeof token_uri, "pkcs11:token=%s",
             tu_env("VEIL_TEST_SOFTHSM_TOKEN"));
    pin_file = tu_env("VEIL_TEST_PIN_FILE");
    truth();
    {
        veil_engine_config cfg = {0};
        cfg.pkcs11_module = shim;
        cfg.default_token = token_uri;
        cfg.pin.kind = VEIL_PIN_FILE;
        cfg.pin.where = pin_file;
        if (veil_engine_new(&cfg, &e) != VEIL_OK) {
            fprintf(stderr, "setup: %s\n", veil_last_error()->message);
            return -1;
        }
    }
    if (veil_key_generate(e, NULL, &rsa, &k) != VEIL_OK) {
        fprintf(stderr, "setup: %s\n", veil_last_error()->message);
        return -1;
    }
    veil_key_free(k);
    if (veil_key_generate(e, NULL, &ec, &k) != VEIL_OK)
        return -1;
    veil_key_free(k);
    if (veil_key_generate(e, NULL, &kem, &k) != VEIL_OK)
        return -1;
    veil_key_free(k);
    veil_engine_free(e);
    return 0;
}

/* ---- RSA decryption ----------------------------------------------------- */

static void decrypt_lies(const veil_oaep *o)
{
    static const char *const lies[] = {"decrypt_len_big",
                                       "decrypt_len_unavail"};
    veil_engine *e = engine();
    veil_key *k = open_key(e, "lie-rsa");

    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    unwrap_ok(e, k, o); /* the path (native or raw) is now known */
    for (size_t i = 0; i < sizeof lies / sizeof lies[0]; i++) {
        uint8_t secret[32], ct[512];
        size_t ct_len = sizeof ct;
        veil_secbuf *got = NULL;
        veil_rc rc;

        wrap(k, o, secret, ct, &ct_len);
        lie(lies[i], NULL);
        rc = veil_rsa_decrypt(e, k, o, ct, ct_len, &got);
        said(rc, VEIL_E_TOKEN, "token returned");
        CU_ASSERT_PTR_NULL(got);
        veil_secbuf_free(got);
        truth();
        unwrap_ok(e, k, o);
    }
    veil_key_free(k);
    veil_engine_free(e);
}

/* SoftHSM2 does OAEP with SHA-1 itself (the native path) ... */
static void test_decrypt_native(void)
{
    veil_oaep sha1 = {VEIL_HASH_SHA1, NULL, 0};

    decrypt_lies(&sha1);
}

/* ... and OAEP-SHA256 through raw RSA in the token (the raw path). */
static void test_decrypt_raw(void)
{
    decrypt_lies(NULL);
}

/* A token that lists CKM_RSA_PKCS_OAEP but refuses it: veil decrypts
 * through raw RSA instead, and gets the right answer. */
static void test_refuse_oaep(void)
{
    veil_oaep sha1 = {VEIL_HASH_SHA1, NULL, 0};
    veil_engine *e = engine();
    veil_key *k = open_key(e, "lie-rsa");

    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    lie("refuse_oaep", NULL);
    unwrap_ok(e, k, &sha1);
    truth();
    veil_key_free(k);
    veil_engine_free(e);
}

/* ---- ECDSA --------------------------------------------------------------- */

static void test_sign(void)
{
    static const struct {
        const char *lie;
        veil_rc code;
        const char *text;
    } cases[] = {
        {"sign_len_big", VEIL_E_TOKEN, "200-byte ECDSA signature"},
        {"sign_zero", VEIL_E_TOKEN, "does not verify"},
        {"sign_flip", VEIL_E_TOKEN, "does not verify"},
        {"refuse_ecdsa", VEIL_E_UNSUPPORTED, "ECDSA signing"},
    };
    static const uint8_t msg[] = "hello";
    veil_engine *e = engine();
    veil_key *k = open_key(e, "lie-ec");

    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    sign_ok(e, k);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t sig[VEIL_ECDSA_SIG_MAX];
        size_t sig_len = sizeof sig;

        lie(cases[i].lie, NULL);
        said(veil_ecdsa_sign(e, k, msg, sizeof msg, sig, &sig_len),
             cases[i].code, cases[i].text);
        truth();
        sign_ok(e, k);
    }
    veil_key_free(k);
    veil_engine_free(e);
}

/* ---- public keys read from the token --------------------------------------
 */

static void open_refused(const char *label, const char *l, const char *attr,
                         veil_rc code, const char *text)
{
    veil_engine *e = engine();
    veil_key *k = NULL;

    lie(l, attr);
    said(veil_key_open(e, label, &k), code, text);
    CU_ASSERT_PTR_NULL(k);
    veil_key_free(k);
    truth();
    k = open_key(e, label);
    veil_key_free(k);
    veil_engine_free(e);
}

/* A length no value can have is the token's fault (VEIL_E_TOKEN); a value
 * that is no usable key is the key's (VEIL_E_KEY). */
typedef struct attr_case {
    const char *lie, *attr;
    veil_rc code;
    const char *text;
} attr_case;

static void test_rsa_public(void)
{
    static const attr_case cases[] = {
        {"attr_huge", "modulus", VEIL_E_TOKEN,
         "CKA_MODULUS is 4398046511104 bytes long"},
        {"attr_unavail", "modulus", VEIL_E_TOKEN, "cannot read CKA_MODULUS"},
        {"attr_zero", "modulus", VEIL_E_KEY, "0-bit modulus"},
        {"attr_grow", "modulus", VEIL_E_TOKEN,
         "320 bytes of CKA_MODULUS into a 256-byte buffer"},
        {"attr_huge", "public_exponent", VEIL_E_TOKEN,
         "CKA_PUBLIC_EXPONENT is"},
        {"attr_zero", "public_exponent", VEIL_E_KEY, "public exponent"},
        {"attr_grow", "public_exponent", VEIL_E_TOKEN,
         "of CKA_PUBLIC_EXPONENT into"},
        {"modulus_512", "modulus", VEIL_E_KEY, "512-bit modulus"},
        {"exponent_1", "public_exponent", VEIL_E_KEY, "public exponent"},
        {"exponent_even", "public_exponent", VEIL_E_KEY, "public exponent"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        open_refused("lie-rsa", cases[i].lie, cases[i].attr, cases[i].code,
                     cases[i].text);
}

static void test_ec_public(void)
{
    static const attr_case cases[] = {
        {"attr_huge", "ec_point", VEIL_E_TOKEN, "CKA_EC_POINT is"},
        {"attr_zero", "ec_point", VEIL_E_KEY, "EC point"},
        {"attr_grow", "ec_point", VEIL_E_TOKEN, "of CKA_EC_POINT into"},
        {"ec_point_bitstring", "ec_point", VEIL_E_KEY, "EC point"},
        {"ec_point_off_curve", "ec_point", VEIL_E_KEY, "EC public key"},
        {"attr_huge", "ec_params", VEIL_E_TOKEN, "CKA_EC_PARAMS is"},
        {"attr_zero", "ec_params", VEIL_E_KEY, "P-256"},
        {"attr_grow", "ec_params", VEIL_E_TOKEN, "of CKA_EC_PARAMS into"},
        {"ec_params_p384", "ec_params", VEIL_E_KEY, "P-256"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        open_refused("lie-ec", cases[i].lie, cases[i].attr, cases[i].code,
                     cases[i].text);
}

/* ---- ECDH ------------------------------------------------------------------
 */

static void derive_ok(veil_engine *e, veil_key *k, const uint8_t pt[65])
{
    veil_secbuf *z = NULL;

    CU_ASSERT_EQUAL(veil_ecdh_derive(e, k, pt, 65, &z), VEIL_OK);
    CU_ASSERT_EQUAL(veil_secbuf_len(z), 32);
    veil_secbuf_free(z);
}

static void test_ecdh(void)
{
    static const struct {
        const char *lie, *attr;
        veil_rc code;
        const char *text;
    } cases[] = {
        {"value_short", "value", VEIL_E_TOKEN, "31-byte ECDH secret"},
        {"value_long", "value", VEIL_E_TOKEN, "48-byte ECDH secret"},
        {"attr_grow", "value", VEIL_E_TOKEN, "96-byte ECDH secret"},
        {"attr_zero", "value", VEIL_E_TOKEN, "0-byte ECDH secret"},
        {"refuse_ecdh", NULL, VEIL_E_UNSUPPORTED, "ECDH"},
    };
    uint8_t pt[65];

    peer_point(pt);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        /* a fresh engine each time: refuse_ecdh rightly drops ECDH from
         * the engine that saw the refusal */
        veil_engine *e = engine();
        veil_key *k = open_key(e, "lie-kem");
        veil_secbuf *z = NULL;

        CU_ASSERT_PTR_NOT_NULL_FATAL(k);
        derive_ok(e, k, pt);
        lie(cases[i].lie, cases[i].attr);
        said(veil_ecdh_derive(e, k, pt, 65, &z), cases[i].code, cases[i].text);
        CU_ASSERT_PTR_NULL(z);
        veil_secbuf_free(z);
        truth();
        if (strcmp(cases[i].lie, "refuse_ecdh") != 0)
            derive_ok(e, k, pt);
        veil_key_free(k);
        veil_engine_free(e);
    }
}

/* ---- object search ------------------------------------------------------- */

static void test_find(void)
{
    veil_engine *e = engine();
    veil_key *k = NULL;

    /* more handles than asked for: not a list to read past its end */
    lie("find_overcount", NULL);
    said(veil_key_open(e, "lie-rsa", &k), VEIL_E_TOKEN, "objects");
    CU_ASSERT_PTR_NULL(k);
    /* the list of the token's keys in the message is left out */
    said(veil_key_open(e, "no-such-key", &k), VEIL_E_NOT_FOUND,
         "its private keys: none");
    CU_ASSERT_PTR_NULL(k);
    /* the same key twice: ambiguous, refused */
    lie("find_dup", NULL);
    said(veil_key_open(e, "lie-rsa", &k), VEIL_E_AMBIGUOUS,
         "more than one private key");
    CU_ASSERT_PTR_NULL(k);
    /* two public halves for one EC key: refused, not one picked */
    lie("find_dup_public", NULL);
    said(veil_key_open(e, "lie-ec", &k), VEIL_E_AMBIGUOUS,
         "more than one public-key object");
    CU_ASSERT_PTR_NULL(k);
    truth();
    k = open_key(e, "lie-rsa");
    veil_key_free(k);
    k = open_key(e, "lie-ec");
    veil_key_free(k);
    veil_engine_free(e);
}

/* ---- module, slot and token information ---------------------------------- */

static void test_lists(void)
{
    veil_engine *e;
    veil_key *k = NULL;
    veil_caps caps;

    /* a mechanism list longer in the second call than the first: the
     * list is not read past what was allocated */
    lie("mechlist_grow", NULL);
    e = engine();
    CU_ASSERT_EQUAL(veil_engine_caps(e, NULL, &caps), VEIL_OK);
    CU_ASSERT_EQUAL(caps.mechs & (VEIL_CAP_ECDSA | VEIL_CAP_RSA_RAW), 0);
    veil_engine_free(e);

    lie("slotlist_grow", NULL);
    e = engine();
    said(veil_key_open(e, "lie-rsa", &k), VEIL_E_TOKEN, "slots");
    CU_ASSERT_PTR_NULL(k);
    veil_engine_free(e);
    truth();

    e = engine();
    CU_ASSERT_EQUAL(veil_engine_caps(e, NULL, &caps), VEIL_OK);
    CU_ASSERT(caps.mechs & VEIL_CAP_ECDSA);
    k = open_key(e, "lie-rsa");
    veil_key_free(k);
    veil_engine_free(e);
}

static void test_token_info(void)
{
    veil_engine *e;
    veil_key *k = NULL;

    lie("tokeninfo_nul", NULL);
    e = engine();
    said(veil_key_open(e, "lie-rsa", &k), VEIL_E_NOT_FOUND,
         "no token matching");
    veil_engine_free(e);

    /* control bytes in a label are not printed (said() checks) */
    lie("tokeninfo_ctrl", NULL);
    e = engine();
    said(veil_key_open(e, "lie-rsa", &k), VEIL_E_NOT_FOUND,
         "no token matching");
    veil_engine_free(e);
    truth();
}

static void test_random(void)
{
    veil_engine *e = engine_flags(VEIL_ENGINE_SYMMETRIC_IN_TOKEN);
    uint8_t buf[32];

    CU_ASSERT_EQUAL(veil_random(e, buf, sizeof buf), VEIL_OK);
    lie("random_fail", NULL);
    said(veil_random(e, buf, sizeof buf), VEIL_E_TOKEN, "random");
    truth();
    CU_ASSERT_EQUAL(veil_random(e, buf, sizeof buf), VEIL_OK);
    veil_engine_free(e);
}

int main(void)
{
    static const tu_test tests[] = {
        {"RSA decrypt, native OAEP: lying output length", test_decrypt_native},
        {"RSA decrypt, raw RSA: lying output length", test_decrypt_raw},
        {"OAEP listed but refused: raw RSA instead", test_refuse_oaep},
        {"ECDSA: long, zero, wrong signatures; refusal", test_sign},
        {"RSA public key: lying attributes", test_rsa_public},
        {"EC public key: lying attributes", test_ec_public},
        {"ECDH: secret of the wrong length; refusal", test_ecdh},
        {"object search: too many handles, duplicates", test_find},
        {"mechanism and slot lists that grow", test_lists},
        {"token info: NUL and control bytes in the label", test_token_info},
        {"random generation failing", test_random},
    };

    TU_ADD_SUITE("token lies (lying_p11 mock over SoftHSM2)", setup, NULL,
                 tests);
    return tu_run_tests();
}
