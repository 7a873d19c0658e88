/* HPKE (protocol/hpke.c) against the RFC 9180 test vectors in
 * tests/data/hpke (see SOURCES.md there), and ECDH in SoftHSM2.
 *
 * Every base-mode entry runs: the sender from ikmE (enc, every ciphertext,
 * every export), and the recipient, whose key is
 *   - "derived": DeriveKeyPair(ikmR) in software (also checks skRm, pkRm);
 *   - "software": (P-256) the same scalar as an engine key of the software
 *     provider (a key directory), its DH through veil_ecdh_derive;
 *   - "softhsm2": (P-256) the same scalar imported into SoftHSM2 (started
 *     by tests/env/with-tokens.sh), its DH through CKM_ECDH1_DERIVE.
 * The counts per recipient are printed and checked: a suite that silently
 * ran nothing would fail.  Hostile input: tampered enc and ciphertexts,
 * wrong sizes, a low-order X25519 point.
 *
 * Published ECDH vectors beside them: NIST CAVS's KAS ECC validity test
 * (P-256, Z only; tests/data/nist) through veil_ecdh_derive in software
 * and in SoftHSM2, and Wycheproof's X25519 vectors through HPKE's
 * recipient set-up (a zero DH output refused, RFC 9180 7.1.4). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/stat.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/obj_mac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>

#include "engine_int.h"
#include "hpke.h"
#include "testutil.h"

/* Key numbers (scratch k<N>, token "hpke-<N>") of the CAVS vectors. */
#define CAVS_KEY0 100
#define KEY_MAX (CAVS_KEY0 + 40)

static veil_engine *sw_e, *tok_e;
static cJSON *vectors;
static char scratch[512], token_uri[300];
static tu_p11 *p11;

/* Entries verified, per recipient. */
static struct {
    int derived, software, softhsm2, x25519, p256_total, x25519_total;
} ran;

/* ---- helpers ------------------------------------------------------------ */

static uint8_t *hex_field(const cJSON *o, const char *key, size_t *len)
{
    const char *h = tu_json_str(o, key);
    uint8_t *b = h ? tu_hex(h, len) : NULL;

    if (!b)
        fprintf(stderr, "vector field %s missing or not hex\n", key);
    return b;
}

static int field_int(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valueint : -1;
}

/* A P-256 EVP_PKEY from a 32-byte scalar, for the key directory. */
static EVP_PKEY *p256_pkey(veil_hpke_key *k)
{
    uint8_t sk[32];
    size_t n = sizeof sk;
    EVP_PKEY *pkey = NULL;

    if (veil_hpke_key_private(k, sk, &n) != VEIL_OK)
        return NULL;
    {
        BIGNUM *d = BN_bin2bn(sk, 32, NULL);
        EC_GROUP *g = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
        EC_POINT *pt = EC_POINT_new(g);
        uint8_t pub[65];
        OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
        OSSL_PARAM *params = NULL;
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);

        if (d && g && pt && b && ctx &&
            EC_POINT_mul(g, pt, d, NULL, NULL, NULL) &&
            EC_POINT_point2oct(g, pt, POINT_CONVERSION_UNCOMPRESSED, pub, 65,
                               NULL) == 65 &&
            OSSL_PARAM_BLD_push_utf8_string(b, "group", "prime256v1", 0) &&
            OSSL_PARAM_BLD_push_octet_string(b, "pub", pub, 65) &&
            OSSL_PARAM_BLD_push_BN(b, "priv", d) &&
            (params = OSSL_PARAM_BLD_to_param(b)) &&
            EVP_PKEY_fromdata_init(ctx) > 0)
            EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_KEYPAIR, params);
        OSSL_PARAM_free(params);
        OSSL_PARAM_BLD_free(b);
        EVP_PKEY_CTX_free(ctx);
        EC_POINT_free(pt);
        EC_GROUP_free(g);
        BN_clear_free(d);
    }
    OPENSSL_cleanse(sk, sizeof sk);
    return pkey;
}

/* The software provider's key directory layout: private_key.pem. */
static veil_key *software_key(veil_hpke_key *k, int n)
{
    char dir[700], path[800];
    EVP_PKEY *pkey = p256_pkey(k);
    veil_key *out = NULL;
    FILE *f;

    snprintf(dir, sizeof dir, "%s/k%d", scratch, n);
    if (!pkey || mkdir(dir, 0700) != 0) {
        EVP_PKEY_free(pkey);
        return NULL;
    }
    snprintf(path, sizeof path, "%s/private_key.pem", dir);
    f = fopen(path, "w");
    if (f) {
        PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL);
        fclose(f);
    }
    snprintf(path, sizeof path, "%s/public_key.pem", dir);
    f = fopen(path, "w");
    if (f) {
        PEM_write_PUBKEY(f, pkey);
        fclose(f);
    }
    EVP_PKEY_free(pkey);
    snprintf(path, sizeof path, "dir:%s", dir);
    if (veil_key_open(sw_e, path, &out) != VEIL_OK)
        fprintf(stderr, "software key: %s\n", veil_last_error()->message);
    return out;
}

/* Imports the scalar into SoftHSM2 as a token key pair that may derive
 * (CKA_DERIVE), label "hpke-N", id {0x48, N}; opens it through veil. */
static veil_key *token_key(veil_hpke_key *k, const uint8_t *pk, int n)
{
    static const uint8_t p256_oid[] = {0x06, 0x08, 0x2a, 0x86, 0x48,
                                       0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_OBJECT_CLASS priv_cls = CKO_PRIVATE_KEY, pub_cls = CKO_PUBLIC_KEY;
    CK_KEY_TYPE kt = CKK_EC;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_OBJECT_HANDLE h;
    uint8_t sk[32], point[67], id[2] = {0x48, (uint8_t)n};
    size_t sk_len = sizeof sk;
    char label[32], uri[400];
    veil_key *out = NULL;
    CK_RV rv;

    if (veil_hpke_key_private(k, sk, &sk_len) != VEIL_OK)
        return NULL;
    point[0] = 0x04; /* DER OCTET STRING around the SEC1 point */
    point[1] = 65;
    memcpy(point + 2, pk, 65);
    snprintf(label, sizeof label, "hpke-%d", n);
    CK_ATTRIBUTE priv[] = {
        {CKA_CLASS, &priv_cls, sizeof priv_cls},
        {CKA_KEY_TYPE, &kt, sizeof kt},
        {CKA_TOKEN, &yes, sizeof yes},
        {CKA_PRIVATE, &yes, sizeof yes},
        {CKA_SENSITIVE, &yes, sizeof yes},
        {CKA_EXTRACTABLE, &no, sizeof no},
        {CKA_DERIVE, &yes, sizeof yes},
        {CKA_LABEL, label, strlen(label)},
        {CKA_ID, id, sizeof id},
        {CKA_EC_PARAMS, (void *)p256_oid, sizeof p256_oid},
        {CKA_VALUE, sk, sizeof sk},
    };
    CK_ATTRIBUTE pub[] = {
        {CKA_CLASS, &pub_cls, sizeof pub_cls},
        {CKA_KEY_TYPE, &kt, sizeof kt},
        {CKA_TOKEN, &yes, sizeof yes},
        {CKA_LABEL, label, strlen(label)},
        {CKA_ID, id, sizeof id},
        {CKA_EC_PARAMS, (void *)p256_oid, sizeof p256_oid},
        {CKA_EC_POINT, point, sizeof point},
    };
    rv = p11->f->C_CreateObject(p11->session, priv, sizeof priv / sizeof *priv,
                                &h);
    OPENSSL_cleanse(sk, sizeof sk);
    if (rv == CKR_OK)
        rv = p11->f->C_CreateObject(p11->session, pub, sizeof pub / sizeof *pub,
                                    &h);
    if (rv != CKR_OK) {
        fprintf(stderr, "C_CreateObject (EC key): 0x%lx\n", (unsigned long)rv);
        return NULL;
    }
    snprintf(uri, sizeof uri, "%s;object=%s", token_uri, label);
    if (veil_key_open(tok_e, uri, &out) != VEIL_OK)
        fprintf(stderr, "token key: %s\n", veil_last_error()->message);
    return out;
}

/* Opens every ciphertext of the entry in order and checks every export;
 * 1 when all match. */
static int recipient_checks(veil_engine *e, const veil_hpke_suite *s,
                            const veil_hpke_key *skR, const cJSON *v,
                            const uint8_t *enc, size_t enc_len,
                            const uint8_t *info, size_t info_len)
{
    veil_hpke_ctx *c = NULL;
    const cJSON *it;
    int ok = 1;

    if (veil_hpke_setup_base_r(e, s, skR, enc, enc_len, info, info_len, &c) !=
        VEIL_OK) {
        fprintf(stderr, "SetupBaseR: %s\n", veil_last_error()->message);
        return 0;
    }
    if (s->aead != VEIL_HPKE_AEAD_EXPORT_ONLY)
        cJSON_ArrayForEach(it, cJSON_GetObjectItem(v, "encryptions"))
        {
            size_t al, pl, cl;
            uint8_t *aad = hex_field(it, "aad", &al),
                    *pt = hex_field(it, "plaintext", &pl),
                    *ct = hex_field(it, "ciphertext", &cl), *got = malloc(cl);

            ok = ok && aad && pt && ct && got && cl == pl + 16 &&
                 veil_hpke_open(e, c, aad, al, ct, cl, got) == VEIL_OK &&
                 memcmp(got, pt, pl) == 0;
            free(aad);
            free(pt);
            free(ct);
            free(got);
        }
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(v, "exports"))
    {
        size_t xl, wl;
        uint8_t *x = hex_field(it, "exporter_context", &xl),
                *want = hex_field(it, "exported_value", &wl),
                *got = malloc(wl ? wl : 1);

        ok = ok && x && want && got && (size_t)field_int(it, "L") == wl &&
             veil_hpke_export(e, c, x, xl, got, wl) == VEIL_OK &&
             memcmp(got, want, wl) == 0;
        free(x);
        free(want);
        free(got);
    }
    veil_hpke_ctx_free(c);
    return ok;
}

/* The sender side: SetupBaseS with the entry's ephemeral key gives its
 * enc, its ciphertexts (in sequence) and its exports. */
static int sender_checks(const veil_hpke_suite *s, const cJSON *v,
                         const uint8_t *pkR, size_t pkR_len,
                         const uint8_t *info, size_t info_len)
{
    size_t ikm_len, enc_want_len, enc_len = VEIL_HPKE_ENC_MAX;
    uint8_t *ikmE = hex_field(v, "ikmE", &ikm_len),
            *enc_want = hex_field(v, "enc", &enc_want_len),
            enc[VEIL_HPKE_ENC_MAX];
    veil_hpke_key *skE = NULL;
    veil_hpke_ctx *c = NULL;
    const cJSON *it;
    int ok;

    ok = ikmE && enc_want &&
         veil_hpke_key_derive(sw_e, s->kem, ikmE, ikm_len, &skE) == VEIL_OK &&
         veil_hpke_setup_base_s(sw_e, s, pkR, pkR_len, info, info_len, skE, enc,
                                &enc_len, &c) == VEIL_OK &&
         enc_len == enc_want_len && memcmp(enc, enc_want, enc_len) == 0;
    if (ok && s->aead != VEIL_HPKE_AEAD_EXPORT_ONLY)
        cJSON_ArrayForEach(it, cJSON_GetObjectItem(v, "encryptions"))
        {
            size_t al, pl, cl;
            uint8_t *aad = hex_field(it, "aad", &al),
                    *pt = hex_field(it, "plaintext", &pl),
                    *ct = hex_field(it, "ciphertext", &cl), *got = malloc(cl);

            ok = ok && aad && pt && ct && got && cl == pl + 16 &&
                 veil_hpke_seal(sw_e, c, aad, al, pt, pl, got) == VEIL_OK &&
                 memcmp(got, ct, cl) == 0;
            free(aad);
            free(pt);
            free(ct);
            free(got);
        }
    if (ok && s->aead == VEIL_HPKE_AEAD_EXPORT_ONLY) {
        uint8_t ct[32];
        ok = veil_hpke_seal(sw_e, c, NULL, 0, (const uint8_t *)"x", 1, ct) ==
             VEIL_E_UNSUPPORTED;
    }
    veil_hpke_ctx_free(c);
    veil_hpke_key_free(skE);
    free(ikmE);
    free(enc_want);
    return ok;
}

/* ---- the vectors -------------------------------------------------------- */

static void test_vectors_base_mode(void)
{
    const cJSON *v;
    int n = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(vectors);
    cJSON_ArrayForEach(v, vectors)
    {
        veil_hpke_suite s = {(uint16_t)field_int(v, "kem_id"),
                             (uint16_t)field_int(v, "kdf_id"),
                             (uint16_t)field_int(v, "aead_id")};
        size_t info_len, ikm_len, skw_len, pkw_len, enc_len;
        uint8_t *info, *ikmR, *skR_want, *pkR_want, *enc;
        uint8_t sk[32], pk[VEIL_HPKE_ENC_MAX];
        size_t sk_len = sizeof sk, pk_len = sizeof pk;
        veil_hpke_key *skR = NULL, *held = NULL;
        veil_key *k;
        char what[64];

        if (field_int(v, "mode") != 0)
            continue; /* psk, auth, auth_psk: not implemented */
        n++;
        snprintf(what, sizeof what, "kem 0x%04x aead 0x%04x", s.kem, s.aead);
        info = hex_field(v, "info", &info_len);
        ikmR = hex_field(v, "ikmR", &ikm_len);
        skR_want = hex_field(v, "skRm", &skw_len);
        pkR_want = hex_field(v, "pkRm", &pkw_len);
        enc = hex_field(v, "enc", &enc_len);
        CU_ASSERT_FATAL(info && ikmR && skR_want && pkR_want && enc);
        if (s.kem == VEIL_HPKE_KEM_P256)
            ran.p256_total++;
        else
            ran.x25519_total++;

        /* DeriveKeyPair gives the entry's key pair */
        CU_ASSERT_EQUAL_FATAL(
            veil_hpke_key_derive(sw_e, s.kem, ikmR, ikm_len, &skR), VEIL_OK);
        CU_ASSERT_EQUAL(veil_hpke_key_private(skR, sk, &sk_len), VEIL_OK);
        CU_ASSERT_EQUAL(veil_hpke_key_public(skR, pk, &pk_len), VEIL_OK);
        CU_ASSERT(sk_len == skw_len && memcmp(sk, skR_want, sk_len) == 0);
        CU_ASSERT(pk_len == pkw_len && memcmp(pk, pkR_want, pk_len) == 0);

        if (!sender_checks(&s, v, pkR_want, pkw_len, info, info_len))
            CU_FAIL_FATAL(what);
        if (recipient_checks(sw_e, &s, skR, v, enc, enc_len, info, info_len))
            ran.derived++;
        else
            CU_FAIL(what);

        if (s.kem == VEIL_HPKE_KEM_X25519) {
            ran.x25519++;
        } else {
            /* software provider */
            k = software_key(skR, n);
            CU_ASSERT_PTR_NOT_NULL(k);
            if (k && veil_hpke_key_from_engine(k, &held) == VEIL_OK &&
                recipient_checks(sw_e, &s, held, v, enc, enc_len, info,
                                 info_len))
                ran.software++;
            else
                CU_FAIL(what);
            veil_hpke_key_free(held);
            held = NULL;
            veil_key_free(k);
            /* SoftHSM2 */
            k = token_key(skR, pkR_want, n);
            CU_ASSERT_PTR_NOT_NULL(k);
            if (k && veil_hpke_key_from_engine(k, &held) == VEIL_OK &&
                recipient_checks(tok_e, &s, held, v, enc, enc_len, info,
                                 info_len))
                ran.softhsm2++;
            else
                CU_FAIL(what);
            veil_hpke_key_free(held);
            if (k)
                CU_ASSERT_EQUAL(veil_key_delete(tok_e, k), VEIL_OK);
        }
        veil_hpke_key_free(skR);
        free(info);
        free(ikmR);
        free(skR_want);
        free(pkR_want);
        free(enc);
    }
    printf("\n  HPKE base mode: %d entries; P-256 %d: derived %d, software "
           "provider %d, softhsm2 %d; X25519 %d: software %d\n",
           n, ran.p256_total, ran.derived - ran.x25519, ran.software,
           ran.softhsm2, ran.x25519_total, ran.x25519);
    /* the file has 3 P-256 and 3 X25519 base-mode entries */
    CU_ASSERT_EQUAL(ran.p256_total, 3);
    CU_ASSERT_EQUAL(ran.x25519_total, 3);
    CU_ASSERT_EQUAL(ran.derived, 6);
    CU_ASSERT_EQUAL(ran.software, 3);
    CU_ASSERT_EQUAL(ran.softhsm2, 3);
}

/* ---- hostile input ------------------------------------------------------ */

/* A round trip with fresh keys, then every kind of damage: a tampered
 * enc or ciphertext is refused (never a crash, never plaintext). */
static void test_tampering(void)
{
    static const veil_hpke_suite kems[] = {
        {VEIL_HPKE_KEM_P256, VEIL_HPKE_KDF_SHA256, VEIL_HPKE_AEAD_AES256GCM},
        {VEIL_HPKE_KEM_X25519, VEIL_HPKE_KDF_SHA256, VEIL_HPKE_AEAD_AES128GCM},
    };
    static const uint8_t msg[] = "the prompt";

    for (size_t i = 0; i < sizeof kems / sizeof *kems; i++) {
        const veil_hpke_suite *s = &kems[i];
        veil_hpke_key *skR = NULL;
        veil_hpke_ctx *cs = NULL, *cr = NULL;
        uint8_t pk[VEIL_HPKE_ENC_MAX], enc[VEIL_HPKE_ENC_MAX];
        uint8_t ct[sizeof msg + 16], pt[sizeof msg];
        size_t pk_len = sizeof pk, enc_len = sizeof enc;

        CU_ASSERT_EQUAL_FATAL(veil_hpke_key_generate(s->kem, &skR), VEIL_OK);
        CU_ASSERT_EQUAL_FATAL(veil_hpke_key_public(skR, pk, &pk_len), VEIL_OK);
        CU_ASSERT_EQUAL_FATAL(veil_hpke_setup_base_s(sw_e, s, pk, pk_len, NULL,
                                                     0, NULL, enc, &enc_len,
                                                     &cs),
                              VEIL_OK);
        CU_ASSERT_EQUAL(veil_hpke_seal(sw_e, cs, NULL, 0, msg, sizeof msg, ct),
                        VEIL_OK);
        /* every byte of enc flipped: setup refuses the point, or opening
         * fails; a P-256 point with a byte flipped is off the curve (or
         * not uncompressed), and must be refused at setup */
        for (size_t j = 0; j < enc_len; j++) {
            veil_rc rc;
            enc[j] ^= 0x01;
            rc = veil_hpke_setup_base_r(sw_e, s, skR, enc, enc_len, NULL, 0,
                                        &cr);
            if (s->kem == VEIL_HPKE_KEM_P256)
                CU_ASSERT_EQUAL(rc, VEIL_E_ARG);
            if (rc == VEIL_OK) {
                CU_ASSERT_EQUAL(
                    veil_hpke_open(sw_e, cr, NULL, 0, ct, sizeof ct, pt),
                    VEIL_E_DECRYPT);
            } else {
                CU_ASSERT_EQUAL(rc, VEIL_E_ARG);
            }
            veil_hpke_ctx_free(cr);
            cr = NULL;
            enc[j] ^= 0x01;
        }
        /* wrong enc sizes */
        CU_ASSERT_EQUAL(veil_hpke_setup_base_r(sw_e, s, skR, enc, enc_len - 1,
                                               NULL, 0, &cr),
                        VEIL_E_ARG);
        CU_ASSERT_EQUAL_FATAL(
            veil_hpke_setup_base_r(sw_e, s, skR, enc, enc_len, NULL, 0, &cr),
            VEIL_OK);
        /* every byte of the ciphertext flipped; every truncation */
        for (size_t j = 0; j < sizeof ct; j++) {
            ct[j] ^= 0x80;
            CU_ASSERT_EQUAL(
                veil_hpke_open(sw_e, cr, NULL, 0, ct, sizeof ct, pt),
                VEIL_E_DECRYPT);
            ct[j] ^= 0x80;
        }
        for (size_t j = 0; j < sizeof ct; j++)
            CU_ASSERT_EQUAL(veil_hpke_open(sw_e, cr, NULL, 0, ct, j, pt),
                            VEIL_E_DECRYPT);
        /* a wrong aad; then the real one still opens (failures did not
         * advance the sequence) */
        CU_ASSERT_EQUAL(veil_hpke_open(sw_e, cr, msg, 1, ct, sizeof ct, pt),
                        VEIL_E_DECRYPT);
        CU_ASSERT_EQUAL(veil_hpke_open(sw_e, cr, NULL, 0, ct, sizeof ct, pt),
                        VEIL_OK);
        CU_ASSERT_EQUAL(memcmp(pt, msg, sizeof msg), 0);
        /* a replay of the same ciphertext under the next sequence number */
        CU_ASSERT_EQUAL(veil_hpke_open(sw_e, cr, NULL, 0, ct, sizeof ct, pt),
                        VEIL_E_DECRYPT);
        veil_hpke_ctx_free(cr);
        veil_hpke_ctx_free(cs);
        veil_hpke_key_free(skR);
    }
}

/* X25519 points of small order give an all-zero DH: refused (RFC 9180
 * 7.1.4).  A KEM key of the other KEM is refused. */
static void test_bad_keys(void)
{
    veil_hpke_suite s = {VEIL_HPKE_KEM_X25519, VEIL_HPKE_KDF_SHA256,
                         VEIL_HPKE_AEAD_AES128GCM},
                    bad = {0x0012, 1, 1};
    uint8_t zero[32] = {0}, enc[65];
    size_t enc_len = sizeof enc;
    veil_hpke_key *x = NULL, *p = NULL;
    veil_hpke_ctx *c = NULL;

    CU_ASSERT_EQUAL_FATAL(veil_hpke_key_generate(VEIL_HPKE_KEM_X25519, &x),
                          VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(veil_hpke_key_generate(VEIL_HPKE_KEM_P256, &p),
                          VEIL_OK);
    CU_ASSERT_NOT_EQUAL(
        veil_hpke_setup_base_r(sw_e, &s, x, zero, sizeof zero, NULL, 0, &c),
        VEIL_OK);
    CU_ASSERT_PTR_NULL(c);
    CU_ASSERT_NOT_EQUAL(veil_hpke_setup_base_s(sw_e, &s, zero, sizeof zero,
                                               NULL, 0, NULL, enc, &enc_len,
                                               &c),
                        VEIL_OK);
    CU_ASSERT_EQUAL(
        veil_hpke_setup_base_r(sw_e, &s, p, zero, sizeof zero, NULL, 0, &c),
        VEIL_E_KEY);
    CU_ASSERT_EQUAL(
        veil_hpke_setup_base_r(sw_e, &bad, p, zero, sizeof zero, NULL, 0, &c),
        VEIL_E_UNSUPPORTED);
    CU_ASSERT_EQUAL(
        veil_hpke_key_from_private(VEIL_HPKE_KEM_P256, zero, 32, &p),
        VEIL_E_KEY); /* p is kept: the call failed */
    veil_hpke_key_free(x);
    veil_hpke_key_free(p);
}

/* A key veil generates in SoftHSM2 is a signing key (no CKA_DERIVE): ECDH
 * with it is refused with the token's reason, not a crash or a fallback. */
static void test_token_signing_key_cannot_derive(void)
{
    veil_keygen_params kp = {
        .type = VEIL_KEY_EC_P256, .label = "hpke-sign-only", .session_only = 1};
    uint8_t peer[65];
    size_t peer_len = 0;
    veil_secbuf *z = NULL;
    veil_key *k = NULL;
    veil_caps caps;

    CU_ASSERT_EQUAL(veil_engine_caps(tok_e, NULL, &caps), VEIL_OK);
    CU_ASSERT_TRUE(caps.mechs & VEIL_CAP_ECDH); /* SoftHSM2 lists it */
    CU_ASSERT_EQUAL_FATAL(veil_key_generate(tok_e, NULL, &kp, &k), VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(EVP_PKEY_get_octet_string_param(
                              k->pub, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, peer,
                              sizeof peer, &peer_len),
                          1);
    CU_ASSERT_NOT_EQUAL(veil_ecdh_derive(tok_e, k, peer, peer_len, &z),
                        VEIL_OK);
    CU_ASSERT_PTR_NULL(z);
    CU_ASSERT_STRING_EQUAL(veil_last_error()->provider_code,
                           "CKR_KEY_FUNCTION_NOT_PERMITTED");
    veil_key_delete(tok_e, k);
}

/* ---- ECDH against published vectors -------------------------------------- */

/* One vector of NIST CAVS's KAS ECC validity test (ECC static unified, Z
 * only, responder), P-256 section: tests/data/nist (SOURCES.md there). */
typedef struct cavs_vec {
    int count, code; /* the Result's code: 0 and 13 pass, others fail */
    uint8_t d[32], peer[65], z[32];
} cavs_vec;

static int hex_into(const char *h, uint8_t *out, size_t len)
{
    size_t n = 0;
    uint8_t *b = tu_hex(h, &n);
    int ok = b && n == len;

    if (ok)
        memcpy(out, b, len);
    free(b);
    return ok;
}

/* The vectors of the file, in order; *n their number. */
static cavs_vec *cavs_read(const char *path, int *n)
{
    char *text = tu_read_file(path, NULL), *save = NULL, *line;
    cavs_vec *v = NULL, cur = {0};
    int have = 0, ok = 1;

    *n = 0;
    for (line = text ? strtok_r(text, "\n", &save) : NULL; line && ok;
         line = strtok_r(NULL, "\n", &save)) {
        char *eq = strstr(line, " = ");
        if (eq == NULL)
            continue;
        *eq = '\0';
        const char *val = eq + 3;
        if (strcmp(line, "COUNT") == 0) {
            memset(&cur, 0, sizeof cur);
            cur.count = (int)strtol(val, NULL, 10);
            cur.peer[0] = 0x04;
        } else if (strcmp(line, "dsIUT") == 0) {
            ok = hex_into(val, cur.d, 32);
        } else if (strcmp(line, "QsCAVSx") == 0) {
            ok = hex_into(val, cur.peer + 1, 32);
        } else if (strcmp(line, "QsCAVSy") == 0) {
            ok = hex_into(val, cur.peer + 33, 32);
        } else if (strcmp(line, "Z") == 0) {
            ok = hex_into(val, cur.z, 32);
        } else if (strcmp(line, "Result") == 0) {
            const char *paren = strchr(val, '(');
            cavs_vec *grown = realloc(v, (size_t)(have + 1) * sizeof *v);
            ok = paren != NULL && grown != NULL;
            if (ok) {
                v = grown;
                cur.code = (int)strtol(paren + 1, NULL, 10);
                v[have++] = cur;
            }
        }
    }
    free(text);
    if (!ok) {
        free(v);
        return NULL;
    }
    *n = have;
    return v;
}

/* One vector through veil_ecdh_derive with dsIUT held by e (software key
 * directory or SoftHSM2): 1 when the outcome is the vector's. */
static int cavs_check(veil_engine *e, const veil_key *k, const cavs_vec *v,
                      int *counted)
{
    veil_secbuf *z = NULL;
    veil_rc rc = veil_ecdh_derive(e, k, v->peer, sizeof v->peer, &z);
    int ok;

    switch (v->code) {
    case 0:  /* correct */
    case 13: /* correct, Z with a leading zero nibble: still 32 bytes */
        ok = rc == VEIL_OK && veil_secbuf_len(z) == 32 &&
             memcmp(veil_secbuf_data(z), v->z, 32) == 0;
        break;
    case 1: /* the peer's X changed: off the curve, refused */
    case 2: /* the peer's Y changed */
        ok = rc == VEIL_E_ARG;
        break;
    case 8: /* Z changed: ours is the right one, so it differs */
        ok = rc == VEIL_OK && memcmp(veil_secbuf_data(z), v->z, 32) != 0;
        break;
    default: /* 5, 6, 7: the IUT's own key pair was damaged; veil's key is
              * made from dsIUT alone, so there is nothing to check */
        veil_secbuf_free(z);
        return 1;
    }
    (*counted)++;
    if (!ok)
        fprintf(stderr, "CAVS COUNT %d (code %d): %s\n", v->count, v->code,
                rc == VEIL_OK ? "wrong Z" : veil_last_error()->message);
    veil_secbuf_free(z);
    return ok;
}

/* NIST CAVS KAS ECC (P-256, Z only): every vector's dsIUT as the private
 * key, in the software provider and in SoftHSM2, QsCAVS as the peer; the
 * correct ones give Z byte for byte (two with a leading zero nibble),
 * the four whose peer point is off the curve are refused, and a changed
 * Z is not reproduced. */
static void test_nist_cavs_ecdh(void)
{
    char path[1024];
    const char *src = getenv("VEIL_SRCDIR");
    int n = 0, sw_n = 0, tok_n = 0, sw_ok = 0, tok_ok = 0;
    cavs_vec *v;

    snprintf(path, sizeof path,
             "%s/tests/data/nist/"
             "KASValidityTest_ECCStaticUnified_NOKC_ZZOnly_resp_P256.fax",
             src && *src ? src : ".");
    v = cavs_read(path, &n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(v);
    CU_ASSERT_EQUAL(n, 30);
    for (int i = 0; i < n; i++) {
        veil_hpke_key *hk = NULL;
        uint8_t pk[65];
        size_t pk_len = sizeof pk;
        veil_key *k;

        CU_ASSERT_EQUAL_FATAL(veil_hpke_key_from_private(VEIL_HPKE_KEM_P256,
                                                         v[i].d, 32, &hk),
                              VEIL_OK);
        CU_ASSERT_EQUAL(veil_hpke_key_public(hk, pk, &pk_len), VEIL_OK);
        k = software_key(hk, CAVS_KEY0 + i);
        CU_ASSERT_PTR_NOT_NULL(k);
        if (k)
            sw_ok += cavs_check(sw_e, k, &v[i], &sw_n);
        veil_key_free(k);
        k = token_key(hk, pk, CAVS_KEY0 + i);
        CU_ASSERT_PTR_NOT_NULL(k);
        if (k) {
            tok_ok += cavs_check(tok_e, k, &v[i], &tok_n);
            CU_ASSERT_EQUAL(veil_key_delete(tok_e, k), VEIL_OK);
        }
        veil_hpke_key_free(hk);
    }
    OPENSSL_cleanse(v, (size_t)n * sizeof *v);
    free(v);
    printf("\n  NIST CAVS KAS ECC P-256: %d vectors; checked %d in software "
           "(%d as expected), %d in SoftHSM2 (%d)\n",
           n, sw_n, sw_ok - (n - sw_n), tok_n, tok_ok - (n - tok_n));
    /* 16 + 2 correct, 4 off the curve, 2 with Z changed */
    CU_ASSERT_EQUAL(sw_n, 24);
    CU_ASSERT_EQUAL(tok_n, 24);
    CU_ASSERT_EQUAL(sw_ok, n);
    CU_ASSERT_EQUAL(tok_ok, n);
}

/* Wycheproof's X25519 vectors (as Cloudflare CIRCL ships them,
 * tests/data/wycheproof/SOURCES.md) through HPKE's recipient set-up with
 * the vector's private key and its public key as enc: RFC 9180 7.1.4
 * makes a zero DH output an error (28 of them, low-order points), and
 * every other one opens a context (twist points and non-canonical u
 * included: RFC 7748 takes any 32 bytes). */
static void test_wycheproof_x25519(void)
{
    static const veil_hpke_suite s = {VEIL_HPKE_KEM_X25519,
                                      VEIL_HPKE_KDF_SHA256,
                                      VEIL_HPKE_AEAD_AES128GCM};
    char path[1024];
    cJSON *all, *tc;
    int zero = 0, opened = 0, wrong = 0;

    snprintf(path, sizeof path, "%s/x25519_circl_kat.json", tu_vectors_dir());
    all = tu_json_file(path);
    CU_ASSERT_PTR_NOT_NULL_FATAL(all);
    cJSON_ArrayForEach(tc, all)
    {
        size_t sk_len = 0, pk_len = 0, z_len = 0, acc = 0;
        uint8_t *sk = hex_field(tc, "private", &sk_len);
        uint8_t *pk = hex_field(tc, "public", &pk_len);
        uint8_t *z = hex_field(tc, "shared", &z_len);
        veil_hpke_key *hk = NULL;
        veil_hpke_ctx *ctx = NULL;
        veil_rc rc;

        CU_ASSERT_FATAL(sk && pk && z && sk_len == 32 && pk_len == 32);
        for (size_t i = 0; i < z_len; i++)
            acc |= z[i];
        CU_ASSERT_EQUAL_FATAL(
            veil_hpke_key_from_private(VEIL_HPKE_KEM_X25519, sk, 32, &hk),
            VEIL_OK);
        rc = veil_hpke_setup_base_r(sw_e, &s, hk, pk, 32, NULL, 0, &ctx);
        if (acc == 0 ? rc == VEIL_OK : rc != VEIL_OK) {
            wrong++;
            fprintf(stderr, "Wycheproof X25519 tcId %d: %s\n",
                    field_int(tc, "tcId"),
                    rc == VEIL_OK ? "a zero DH output was accepted"
                                  : veil_last_error()->message);
        }
        zero += acc == 0 && rc != VEIL_OK;
        opened += acc != 0 && rc == VEIL_OK;
        veil_hpke_ctx_free(ctx);
        veil_hpke_key_free(hk);
        OPENSSL_cleanse(sk, sk_len);
        free(sk);
        free(pk);
        free(z);
    }
    cJSON_Delete(all);
    printf("\n  Wycheproof X25519: %d zero outputs refused, %d opened\n", zero,
           opened);
    CU_ASSERT_EQUAL(wrong, 0);
    CU_ASSERT_EQUAL(zero, 28);
    CU_ASSERT_EQUAL(opened, 59);
}

/* Wycheproof ecdh_secp256r1_ecpoint_test tcId 3 ("shared secret has
 * x-coordinate that satisfies x**2 = 0", result valid): a point on the
 * curve whose shared secret with the key is all zeros.  RFC 9180 7.1.4
 * refuses a zero DH output for X25519 only; for P-256 it is a valid Z
 * (SP 800-56A refuses only the point at infinity), in HPKE's software DH,
 * the software provider and SoftHSM2 alike. */
static void test_p256_zero_x(void)
{
    static const char *sk_hex =
        "0a0d622a47e48f6bc1038ace438c6f528aa00ad2bd1da5f13ee46bf5f633d71a";
    static const char *pk_hex =
        "0458fd4168a87795603e2b04390285bdca6e57de6027fe211dd9d25e2212d29e"
        "62080d36bd224d7405509295eed02a17150e03b314f96da37445b0d1d29377d12c";
    static const veil_hpke_suite s = {VEIL_HPKE_KEM_P256, VEIL_HPKE_KDF_SHA256,
                                      VEIL_HPKE_AEAD_AES256GCM};
    static const uint8_t zero[32] = {0};
    size_t sk_len = 0, peer_len = 0, pk_len = 65;
    uint8_t *sk = tu_hex(sk_hex, &sk_len), *peer = tu_hex(pk_hex, &peer_len);
    uint8_t pk[65];
    veil_hpke_key *hk = NULL;
    veil_hpke_ctx *ctx = NULL;
    veil_secbuf *z = NULL;
    veil_key *k;

    CU_ASSERT_FATAL(sk && peer && sk_len == 32 && peer_len == 65);
    CU_ASSERT_EQUAL_FATAL(
        veil_hpke_key_from_private(VEIL_HPKE_KEM_P256, sk, 32, &hk), VEIL_OK);
    CU_ASSERT_EQUAL(veil_hpke_key_public(hk, pk, &pk_len), VEIL_OK);
    /* HPKE's own (software) DH */
    CU_ASSERT_EQUAL(veil_hpke_setup_base_r(sw_e, &s, hk, peer, 65, NULL, 0,
                                           &ctx),
                    VEIL_OK);
    veil_hpke_ctx_free(ctx);
    /* the engine, software provider and SoftHSM2 */
    k = software_key(hk, CAVS_KEY0 + 35);
    CU_ASSERT_PTR_NOT_NULL(k);
    if (k) {
        CU_ASSERT_EQUAL(veil_ecdh_derive(sw_e, k, peer, 65, &z), VEIL_OK);
        CU_ASSERT(z && memcmp(veil_secbuf_data(z), zero, 32) == 0);
        veil_secbuf_free(z);
        z = NULL;
    }
    veil_key_free(k);
    k = token_key(hk, pk, CAVS_KEY0 + 35);
    CU_ASSERT_PTR_NOT_NULL(k);
    if (k) {
        CU_ASSERT_EQUAL(veil_ecdh_derive(tok_e, k, peer, 65, &z), VEIL_OK);
        CU_ASSERT(z && memcmp(veil_secbuf_data(z), zero, 32) == 0);
        veil_secbuf_free(z);
        CU_ASSERT_EQUAL(veil_key_delete(tok_e, k), VEIL_OK);
    }
    veil_hpke_key_free(hk);
    OPENSSL_cleanse(sk, sk_len);
    free(sk);
    free(peer);
}

/* ---- set-up ------------------------------------------------------------- */

static int suite_init(void)
{
    veil_engine_config cfg = {0};
    const char *src = getenv("VEIL_SRCDIR");
    char path[1024];

    snprintf(path, sizeof path,
             "%s/tests/data/hpke/rfc9180_p256_x25519_sha256.json",
             src && *src ? src : ".");
    vectors = tu_json_file(path);
    if (!vectors || tu_scratch_dir("hpke", scratch, sizeof scratch) != 0)
        return -1;
    if (veil_engine_new(NULL, &sw_e) != VEIL_OK)
        return -1;
    snprintf(token_uri, sizeof token_uri, "pkcs11:token=%s",
             tu_env("VEIL_TEST_SOFTHSM_TOKEN"));
    cfg.pkcs11_module = tu_env("VEIL_TEST_SOFTHSM_MODULE");
    cfg.default_token = token_uri;
    cfg.pin.kind = VEIL_PIN_FILE;
    cfg.pin.where = tu_env("VEIL_TEST_PIN_FILE");
    if (veil_engine_new(&cfg, &tok_e) != VEIL_OK) {
        fprintf(stderr, "token engine: %s\n", veil_last_error()->message);
        return -1;
    }
    p11 = tu_p11_open(cfg.pkcs11_module, tu_env("VEIL_TEST_SOFTHSM_TOKEN"),
                      cfg.pin.where);
    return p11 ? 0 : -1;
}

static int suite_clean(void)
{
    static const char *const files[] = {"private_key.pem", "public_key.pem"};
    char path[800];

    tu_p11_close(p11);
    veil_engine_free(tok_e);
    veil_engine_free(sw_e);
    cJSON_Delete(vectors);
    for (int n = 1; scratch[0] && n <= KEY_MAX; n++) {
        for (size_t i = 0; i < 2; i++) {
            snprintf(path, sizeof path, "%s/k%d/%s", scratch, n, files[i]);
            unlink(path);
        }
        snprintf(path, sizeof path, "%s/k%d", scratch, n);
        rmdir(path);
    }
    if (scratch[0])
        rmdir(scratch);
    return 0;
}

int main(void)
{
    static const tu_test tests[] = {
        {"RFC 9180 vectors, base mode, every recipient",
         test_vectors_base_mode},
        {"tampered enc and ciphertext", test_tampering},
        {"bad keys and suites", test_bad_keys},
        {"a token signing key cannot derive",
         test_token_signing_key_cannot_derive},
        {"NIST CAVS KAS ECC P-256: software and SoftHSM2",
         test_nist_cavs_ecdh},
        {"Wycheproof X25519: zero outputs refused", test_wycheproof_x25519},
        {"P-256: a zero x-coordinate is a valid Z", test_p256_zero_x},
    };

    TU_ADD_SUITE("hpke", suite_init, suite_clean, tests);
    return tu_run_tests();
}
