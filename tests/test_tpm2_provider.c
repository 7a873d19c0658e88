/* The tpm2 provider (providers/tpm2.c) on the test TPM: swtpm behind
 * tpm2-abrmd, started by tests/env/with-tokens.sh ("tpm" in the name).
 *
 * Z from the TPM equals software ECDH with the key's public half; a
 * deleted (or released) key is gone from the TPM; the references, key
 * kinds and operations it does not offer are refused by name; a lent ESYS
 * context (veild's TPM module's hook, engine/tpm2_hook.h) is used, and
 * after it is withdrawn the provider says so.  The checks of the TPM's
 * answers refuse what a lying TPM could say (hand-made ESAPI structs). */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include <CUnit/CUnit.h>
#include <openssl/core_names.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>

#include "engine_int.h"
#include "testutil.h"
#include "tpm2_hook.h"

static veil_engine *eng;

static int suite_init(void)
{
    veil_engine_config cfg = {0};

    return veil_engine_new(&cfg, &eng) == VEIL_OK ? 0 : -1;
}

static int suite_clean(void)
{
    veil_engine_free(eng);
    return 0;
}

static veil_key *make_key(veil_engine *e, const char *where, veil_rc *rc)
{
    veil_keygen_params kp = {
        .type = VEIL_KEY_EC_P256, .label = "veil-kem-test", .derive = 1};
    veil_key *k = NULL;

    *rc = veil_key_generate(e, where, &kp, &k);
    return k;
}

static void point_of(const veil_key *k, uint8_t pt[65])
{
    size_t n = 0;

    CU_ASSERT_FATAL(EVP_PKEY_get_octet_string_param(
                        k->pub, OSSL_PKEY_PARAM_PUB_KEY, pt, 65, &n) == 1);
    CU_ASSERT_FATAL(n == 65);
}

/* Z from the TPM key with a software peer equals the software ECDH of the
 * peer's private key with the TPM key's public half. */
static void check_z(veil_engine *e, const veil_key *tk)
{
    veil_keygen_params kp = {.type = VEIL_KEY_EC_P256, .derive = 1};
    veil_key *sw = NULL;
    veil_secbuf *z1 = NULL, *z2 = NULL;
    uint8_t tpt[65], spt[65];

    CU_ASSERT_FATAL(veil_key_generate(e, "software", &kp, &sw) == VEIL_OK);
    point_of(tk, tpt);
    point_of(sw, spt);
    CU_ASSERT_FATAL(veil_ecdh_derive(e, tk, spt, 65, &z1) == VEIL_OK);
    CU_ASSERT_FATAL(veil_ecdh_derive(e, sw, tpt, 65, &z2) == VEIL_OK);
    CU_ASSERT_EQUAL(veil_secbuf_len(z1), 32);
    CU_ASSERT(memcmp(veil_secbuf_data(z1), veil_secbuf_data(z2), 32) == 0);
    veil_secbuf_free(z1);
    veil_secbuf_free(z2);
    veil_key_free(sw);
}

static void test_own_connection(void)
{
    veil_caps caps;
    veil_key_info info;
    veil_rc rc;
    veil_key *k = make_key(eng, "tpm2:", &rc);

    CU_ASSERT_FATAL(rc == VEIL_OK && k != NULL);
    CU_ASSERT(veil_engine_caps(eng, "tpm2:", &caps) == VEIL_OK);
    CU_ASSERT_EQUAL(caps.mechs, VEIL_CAP_EC_GEN | VEIL_CAP_ECDH);
    CU_ASSERT(strstr(caps.description, "TCTI tabrmd") != NULL);
    CU_ASSERT(veil_key_get_info(k, &info) == VEIL_OK);
    CU_ASSERT_STRING_EQUAL(info.provider, "tpm2");
    CU_ASSERT(info.has_private == 1 && info.persistent == 0);
    CU_ASSERT(info.sensitive == 1 && info.extractable == 0);
    check_z(eng, k);
    /* two keys are two keys */
    {
        veil_key *k2 = make_key(eng, "tpm2:", &rc);
        uint8_t a[65], b[65];

        CU_ASSERT_FATAL(rc == VEIL_OK);
        point_of(k, a);
        point_of(k2, b);
        CU_ASSERT(memcmp(a, b, 65) != 0);
        check_z(eng, k2);
        CU_ASSERT(veil_key_delete(eng, k2) == VEIL_OK);
    }
    CU_ASSERT(veil_key_delete(eng, k) == VEIL_OK);
}

static void test_refusals(void)
{
    veil_keygen_params sign = {.type = VEIL_KEY_EC_P256, .label = "x"};
    veil_keygen_params rsa = {.type = VEIL_KEY_RSA, .bits = 2048};
    veil_key *k = NULL;

    CU_ASSERT_EQUAL(veil_key_generate(eng, "tpm2:", &sign, &k),
                    VEIL_E_UNSUPPORTED);
    CU_ASSERT(strstr(veil_last_error()->message, "key-agreement") != NULL);
    CU_ASSERT_EQUAL(veil_key_generate(eng, "tpm2:", &rsa, &k),
                    VEIL_E_UNSUPPORTED);
    CU_ASSERT_EQUAL(veil_key_open(eng, "tpm2:", &k), VEIL_E_UNSUPPORTED);
    CU_ASSERT(strstr(veil_last_error()->message, "transient") != NULL);
    CU_ASSERT_EQUAL(veil_key_generate(eng, "tpm2:nonsense", &sign, &k),
                    VEIL_E_ARG);
    CU_ASSERT(strstr(veil_last_error()->message, "tpm2:tcti=CONF") != NULL);
    CU_ASSERT_EQUAL(veil_key_generate(eng, "tpm2:tcti=no-such-tcti", &sign, &k),
                    VEIL_E_PROVIDER);
    CU_ASSERT(strstr(veil_last_error()->message, "no-such-tcti") != NULL);
    CU_ASSERT(k == NULL);
}

/* The TPM has no object at this handle: it is not among the connection's
 * transient handles (TPM2_GetCapability). */
static int gone(ESYS_CONTEXT *ctx, TPM2_HANDLE h)
{
    TPMS_CAPABILITY_DATA *cap = NULL;
    TPMI_YES_NO more;
    int found = 0;

    CU_ASSERT_FATAL(Esys_GetCapability(ctx, ESYS_TR_NONE, ESYS_TR_NONE,
                                       ESYS_TR_NONE, TPM2_CAP_HANDLES,
                                       0x80000000u /* TPM2_TRANSIENT_FIRST */,
                                       TPM2_MAX_CAP_HANDLES, &more,
                                       &cap) == TSS2_RC_SUCCESS);
    for (UINT32 i = 0; i < cap->data.handles.count; i++)
        found |= cap->data.handles.handle[i] == h;
    Esys_Free(cap);
    return !found;
}

static void test_lent_context(void)
{
    TSS2_TCTI_CONTEXT *tcti = NULL;
    ESYS_CONTEXT *ctx = NULL;
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    veil_engine_config cfg = {0};
    veil_engine *e = NULL;
    veil_key *k, *k2, *sw = NULL;
    veil_keygen_params swp = {.type = VEIL_KEY_EC_P256, .derive = 1};
    veil_caps caps;
    uint32_t tr = 0;
    TPM2_HANDLE h = 0, h2 = 0;
    veil_rc rc;

    CU_ASSERT_FATAL(Tss2_TctiLdr_Initialize(tu_env("TPM2TOOLS_TCTI"), &tcti) ==
                    TSS2_RC_SUCCESS);
    CU_ASSERT_FATAL(Esys_Initialize(&ctx, tcti, NULL) == TSS2_RC_SUCCESS);
    CU_ASSERT_FATAL(veil_engine_new(&cfg, &e) == VEIL_OK);
    veil_engine_tpm2_lend(e, ctx, &lock);

    k = make_key(e, "tpm2:", &rc);
    CU_ASSERT_FATAL(rc == VEIL_OK);
    CU_ASSERT(veil_engine_caps(e, "tpm2:", &caps) == VEIL_OK);
    CU_ASSERT(strstr(caps.description, "lent") != NULL);
    /* the owner sees the key in its own context */
    CU_ASSERT_FATAL(veil_tpm2_key_object(k, ctx, &tr) == VEIL_OK);
    CU_ASSERT_FATAL(Esys_TR_GetTpmHandle(ctx, tr, &h) == TSS2_RC_SUCCESS);
    CU_ASSERT(h >> 24 == TPM2_HT_TRANSIENT);
    CU_ASSERT(!gone(ctx, h));
    check_z(e, k);
    CU_ASSERT(veil_key_generate(e, "software", &swp, &sw) == VEIL_OK);
    CU_ASSERT(veil_tpm2_key_object(sw, ctx, &tr) == VEIL_E_ARG);
    CU_ASSERT(veil_tpm2_key_object(k, e, &tr) == VEIL_E_ARG);

    /* deleted: gone from the TPM (the forward secrecy of a KEM key) */
    CU_ASSERT(veil_key_delete(e, k) == VEIL_OK);
    CU_ASSERT(gone(ctx, h));
    /* freed without delete: flushed all the same */
    k2 = make_key(e, "tpm2:", &rc);
    CU_ASSERT_FATAL(rc == VEIL_OK);
    CU_ASSERT_FATAL(veil_tpm2_key_object(k2, ctx, &tr) == VEIL_OK);
    CU_ASSERT_FATAL(Esys_TR_GetTpmHandle(ctx, tr, &h2) == TSS2_RC_SUCCESS);
    veil_key_free(k2);
    CU_ASSERT(gone(ctx, h2));

    /* withdrawn: a clear error, no use of the old context */
    veil_engine_tpm2_lend(e, NULL, NULL);
    k = make_key(e, "tpm2:", &rc);
    CU_ASSERT(rc == VEIL_E_PROVIDER && k == NULL);
    CU_ASSERT(strstr(veil_last_error()->message, "withdrawn") != NULL);

    veil_key_free(sw);
    veil_engine_free(e);
    Esys_Finalize(&ctx);
    Tss2_TctiLdr_Finalize(&tcti);
}

/* The peer point is checked before the TPM sees it. */
static void test_bad_peer(void)
{
    uint8_t bad[65] = {0x04};
    veil_secbuf *z = NULL;
    veil_rc rc;
    veil_key *k = make_key(eng, "tpm2:", &rc);

    CU_ASSERT_FATAL(rc == VEIL_OK);
    memset(bad + 1, 0x11, 64);
    CU_ASSERT_EQUAL(veil_ecdh_derive(eng, k, bad, 65, &z), VEIL_E_ARG);
    CU_ASSERT(z == NULL);
    CU_ASSERT(veil_key_delete(eng, k) == VEIL_OK);
}

/* ---- a lying TPM: the checks of its answers, with hand-made ESAPI
 * structs (a real swtpm gives none of these) ---------------------------- */

/* A valid P-256 point (a software key's) into q. */
static void good_point(TPMS_ECC_POINT *q, veil_key **sw)
{
    veil_keygen_params kp = {.type = VEIL_KEY_EC_P256, .derive = 1};
    uint8_t pt[65];

    CU_ASSERT_FATAL(veil_key_generate(eng, "software", &kp, sw) == VEIL_OK);
    point_of(*sw, pt);
    q->x.size = q->y.size = 32;
    memcpy(q->x.buffer, pt + 1, 32);
    memcpy(q->y.buffer, pt + 33, 32);
}

static void test_lying_public_area(void)
{
    TPM2B_PUBLIC pub = {0}, bad;
    EVP_PKEY *pk = NULL;
    veil_key *sw = NULL;

    pub.publicArea.type = TPM2_ALG_ECC;
    pub.publicArea.nameAlg = TPM2_ALG_SHA256;
    pub.publicArea.objectAttributes =
        TPMA_OBJECT_DECRYPT | TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
        TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH;
    pub.publicArea.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
    good_point(&pub.publicArea.unique.ecc, &sw);
    CU_ASSERT(veil_tpm2_check_public(&pub, &pk) == VEIL_OK && pk != NULL);
    CU_ASSERT(EVP_PKEY_eq(pk, sw->pub) == 1);
    EVP_PKEY_free(pk);

    bad = pub; /* an RSA key: the union holds no ECC point */
    bad.publicArea.type = TPM2_ALG_RSA;
    CU_ASSERT(veil_tpm2_check_public(&bad, &pk) == VEIL_E_PROVIDER);
    CU_ASSERT(pk == NULL);
    CU_ASSERT(strstr(veil_last_error()->message, "another key") != NULL);
    bad = pub; /* another curve */
    bad.publicArea.parameters.eccDetail.curveID = TPM2_ECC_BN_P256;
    CU_ASSERT(veil_tpm2_check_public(&bad, &pk) == VEIL_E_PROVIDER);
    bad = pub; /* a key that may leave the TPM */
    bad.publicArea.objectAttributes &= ~TPMA_OBJECT_FIXEDTPM;
    CU_ASSERT(veil_tpm2_check_public(&bad, &pk) == VEIL_E_PROVIDER);
    bad = pub; /* a short coordinate */
    bad.publicArea.unique.ecc.x.size = 31;
    CU_ASSERT(veil_tpm2_check_public(&bad, &pk) == VEIL_E_PROVIDER);
    CU_ASSERT(strstr(veil_last_error()->message, "not a P-256 point") != NULL);
    bad = pub; /* off the curve */
    bad.publicArea.unique.ecc.y.buffer[31] ^= 1;
    CU_ASSERT(veil_tpm2_check_public(&bad, &pk) == VEIL_E_PROVIDER);
    CU_ASSERT(pk == NULL);
    veil_key_free(sw);
}

static void test_lying_zgen(void)
{
    TPM2B_ECC_POINT out = {0}, bad;
    veil_secbuf *z = NULL;
    veil_key *sw = NULL;

    good_point(&out.point, &sw);
    CU_ASSERT_FATAL(veil_tpm2_z(&out, &z) == VEIL_OK);
    CU_ASSERT(veil_secbuf_len(z) == 32 &&
              memcmp(veil_secbuf_data(z), out.point.x.buffer, 32) == 0);
    veil_secbuf_free(z);

    bad = out; /* empty x: Z would be 32 zero bytes */
    bad.point.x.size = 0;
    CU_ASSERT(veil_tpm2_z(&bad, &z) == VEIL_E_PROVIDER && z == NULL);
    CU_ASSERT(strstr(veil_last_error()->message, "not a P-256 point") != NULL);
    bad = out; /* x of 31 bytes */
    bad.point.x.size = 31;
    CU_ASSERT(veil_tpm2_z(&bad, &z) == VEIL_E_PROVIDER && z == NULL);
    bad = out; /* no y */
    bad.point.y.size = 0;
    CU_ASSERT(veil_tpm2_z(&bad, &z) == VEIL_E_PROVIDER && z == NULL);
    bad = out; /* off the curve */
    bad.point.x.buffer[0] ^= 0x80;
    CU_ASSERT(veil_tpm2_z(&bad, &z) == VEIL_E_PROVIDER && z == NULL);
    veil_key_free(sw);
}

int main(void)
{
    static const tu_test tests[] = {
        {"own connection: Z equals software ECDH", test_own_connection},
        {"refusals named", test_refusals},
        {"lent context; deleted key gone from the TPM", test_lent_context},
        {"bad peer point refused on the host", test_bad_peer},
        {"lying TPM (hand-made structs): public area", test_lying_public_area},
        {"lying TPM (hand-made structs): ZGen answer", test_lying_zgen},
    };

    TU_ADD_SUITE("tpm2 provider", suite_init, suite_clean, tests);
    return tu_run_tests();
}
