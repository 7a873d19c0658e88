/* The gateway's TPM module (gateway/tpm.c) against the test TPM: swtpm,
 * manufactured by swtpm_setup with an EK certificate from a local CA,
 * behind tpm2-abrmd (tests/env/with-tokens.sh starts all of it because the
 * name has "tpm").
 *
 * The evidence is checked with tools that share no code with veil:
 * tpm2_checkquote for quotes, tpm2_makecredential for credentials, and
 * OpenSSL (here) for certifications and the EK certificate chain.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include <CUnit/CUnit.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <tss2/tss2_mu.h>

#include "evidence.h"
#include "gateway.h"
#include "package.h"
#include "testutil.h"
#include "tpm_int.h"

/* Under ASan: full unwinding through libraries built without frame
 * pointers, so leak reports point at the right library. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "fast_unwind_on_malloc=0";
}

#define PCRS "sha256:0,7,10"
#define ALL_PCRS                                                               \
    "sha256:0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23"
#define REQUIRED_AK_ATTRS                                                      \
    (TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |                          \
     TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_RESTRICTED |                \
     TPMA_OBJECT_SIGN_ENCRYPT)

static const char *tcti;
static char dir[4096];
static gw_tpm *tpm; /* the long-term AK only, PCRS */

/* ---- helpers ------------------------------------------------------------- */

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* The module's log lines, on stdout (they end up in the test log). */
static void log_line(void *ctx, veil_log_level level, const char *line)
{
    (void)ctx;
    printf("  [log %d] %s\n", (int)level, line);
}


/* gw_tpm_open as the tests use it: the TPM, or NULL with err. */
static gw_tpm *tpm_open(const gw_tpm_options *opt, char *err, size_t err_size)
{
    gw_tpm *t = NULL;

    return gw_tpm_open(opt, &t, err, err_size) == GW_OK ? t : NULL;
}

static gw_tpm *open_tpm(const char *pcrs, int per_request, char *err,
                        size_t err_size)
{
    gw_tpm_options opt = {
        .tcti = tcti,
        .pcrs = pcrs,
        .ak_per_request = per_request,
        .log = log_line,
        .log_level = VEIL_LOG_DEBUG,
    };
    return tpm_open(&opt, err, err_size);
}

static char *path_of(const char *name)
{
    static char buf[8][4200];
    static unsigned next;
    char *p = buf[next++ % 8];

    snprintf(p, sizeof buf[0], "%s/%s", dir, name);
    return p;
}

static int write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    int ok;

    if (!f)
        return -1;
    ok = fwrite(data, 1, len, f) == len;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* Runs a shell command (output to dir/cmd.log); its exit status. */
static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int run(const char *fmt, ...)
{
    char cmd[8192];
    char line[8192 + sizeof dir + 64];
    va_list ap;
    int st;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    snprintf(line, sizeof line, "(%s) >>%s/cmd.log 2>&1", cmd, dir);
    st = system(line);
    if (st == -1 || !WIFEXITED(st))
        return -1;
    if (WEXITSTATUS(st) != 0)
        printf("  command failed (%d): %s\n", WEXITSTATUS(st), cmd);
    return WEXITSTATUS(st);
}

static uint8_t *b64(const cJSON *obj, const char *key, size_t *len)
{
    const char *s = tu_json_str(obj, key);
    uint8_t *out = NULL;

    if (!s || veil_b64_decode(s, strlen(s), &out, len) != VEIL_OK)
        return NULL;
    return out;
}

static int b64_to_file(const cJSON *obj, const char *key, const char *path)
{
    size_t len;
    uint8_t *data = b64(obj, key, &len);
    int rc = data ? write_file(path, data, len) : -1;

    free(data);
    return rc;
}

static int is_hex(const char *s, size_t len)
{
    if (!s || strlen(s) != len)
        return 0;
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
            return 0;
    return 1;
}

static int parse_public(const uint8_t *data, size_t len, TPM2B_PUBLIC *pub)
{
    size_t off = 0;

    memset(pub, 0, sizeof *pub); /* tss2-mu wants an empty TPM2B */
    return Tss2_MU_TPM2B_PUBLIC_Unmarshal(data, len, &off, pub) == 0 &&
                   off == len
               ? 0
               : -1;
}

static int public_of(const cJSON *obj, const char *key, TPM2B_PUBLIC *pub)
{
    size_t len;
    uint8_t *data = b64(obj, key, &len);
    int rc = data ? parse_public(data, len, pub) : -1;

    free(data);
    return rc;
}

/* nameAlg || SHA-256(TPMT_PUBLIC), the way a verifier computes it. */
static int name_of(const TPM2B_PUBLIC *pub, uint8_t name[34])
{
    uint8_t buf[sizeof(TPMT_PUBLIC)];
    size_t off = 0;
    unsigned dlen;

    if (Tss2_MU_TPMT_PUBLIC_Marshal(&pub->publicArea, buf, sizeof buf, &off))
        return -1;
    name[0] = 0x00;
    name[1] = 0x0b;
    return EVP_Digest(buf, off, name + 2, &dlen, EVP_sha256(), NULL) == 1 ? 0
                                                                          : -1;
}

/* An OpenSSL key for an ECC P-256 or RSA TPM public area. */
static EVP_PKEY *pkey_of(const TPM2B_PUBLIC *pub)
{
    const TPMT_PUBLIC *p = &pub->publicArea;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *key = NULL;
    BIGNUM *n = NULL, *e = NULL;
    uint8_t point[65];
    int ok;

    if (p->type == TPM2_ALG_ECC) {
        point[0] = 4;
        memcpy(point + 1, p->unique.ecc.x.buffer, 32);
        memcpy(point + 33, p->unique.ecc.y.buffer, 32);
        ok = p->unique.ecc.x.size == 32 && p->unique.ecc.y.size == 32 &&
             OSSL_PARAM_BLD_push_utf8_string(bld, "group", "P-256", 0) &&
             OSSL_PARAM_BLD_push_octet_string(bld, "pub", point, 65) &&
             (ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL));
    } else {
        n = BN_bin2bn(p->unique.rsa.buffer, p->unique.rsa.size, NULL);
        e = BN_new();
        ok = n && e && BN_set_word(e, 65537) &&
             OSSL_PARAM_BLD_push_BN(bld, "n", n) &&
             OSSL_PARAM_BLD_push_BN(bld, "e", e) &&
             (ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL));
    }
    if (ok && (params = OSSL_PARAM_BLD_to_param(bld)) &&
        EVP_PKEY_fromdata_init(ctx) == 1 &&
        EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) != 1)
        key = NULL;
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    EVP_PKEY_CTX_free(ctx);
    BN_free(n);
    BN_free(e);
    return key;
}

/* Verifies an ECDSA-SHA256 TPMT_SIGNATURE over data with signer. */
static int verify_sig(const TPM2B_PUBLIC *signer, const uint8_t *data,
                      size_t len, const uint8_t *sig_bytes, size_t sig_len)
{
    TPMT_SIGNATURE sig;
    size_t off = 0;
    EVP_PKEY *key = pkey_of(signer);
    ECDSA_SIG *es = ECDSA_SIG_new();
    unsigned char *der = NULL;
    int der_len, ok = 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();

    if (key && es && md &&
        Tss2_MU_TPMT_SIGNATURE_Unmarshal(sig_bytes, sig_len, &off, &sig) == 0 &&
        off == sig_len && sig.sigAlg == TPM2_ALG_ECDSA &&
        sig.signature.ecdsa.hash == TPM2_ALG_SHA256) {
        BIGNUM *r = BN_bin2bn(sig.signature.ecdsa.signatureR.buffer,
                              sig.signature.ecdsa.signatureR.size, NULL);
        BIGNUM *s = BN_bin2bn(sig.signature.ecdsa.signatureS.buffer,
                              sig.signature.ecdsa.signatureS.size, NULL);
        if (r && s && ECDSA_SIG_set0(es, r, s) == 1) {
            der_len = i2d_ECDSA_SIG(es, &der);
            ok = der_len > 0 &&
                 EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
                 EVP_DigestVerify(md, der, (size_t)der_len, data, len) == 1;
        } else {
            BN_free(r);
            BN_free(s);
        }
    }
    OPENSSL_free(der);
    ECDSA_SIG_free(es);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(key);
    return ok;
}

/* Checks a {"attest_b64", "signature_b64"} certification: signed by
 * signer, TPM-made, of type CERTIFY, over `qualifying`, naming
 * `certified`.  1 when all of that holds. */
static int certify_ok(const cJSON *c, const TPM2B_PUBLIC *signer,
                      const uint8_t qualifying[32],
                      const TPM2B_PUBLIC *certified)
{
    size_t alen = 0, slen = 0, off = 0;
    uint8_t *attest = b64(c, "attest_b64", &alen);
    uint8_t *sig = b64(c, "signature_b64", &slen);
    uint8_t name[34];
    TPMS_ATTEST info;
    int ok = 0;

    if (attest && sig &&
        Tss2_MU_TPMS_ATTEST_Unmarshal(attest, alen, &off, &info) == 0 &&
        off == alen && name_of(certified, name) == 0) {
        ok = info.magic == TPM2_GENERATED_VALUE &&
             info.type == TPM2_ST_ATTEST_CERTIFY && info.extraData.size == 32 &&
             memcmp(info.extraData.buffer, qualifying, 32) == 0 &&
             info.attested.certify.name.size == 34 &&
             memcmp(info.attested.certify.name.name, name, 34) == 0 &&
             verify_sig(signer, attest, alen, sig, slen);
    }
    free(attest);
    free(sig);
    return ok;
}

/* Checks a quote object in C: what tpm2_checkquote does, for selections
 * it cannot take (tpm2-tools 5.4 fails on 8 PCRs or more given as raw
 * values: tpm2-software/tpm2-tools#3542).  1 when it holds. */
static int quote_ok(const cJSON *q, const uint8_t qualifying[32])
{
    const cJSON *bank =
        cJSON_GetObjectItem(cJSON_GetObjectItem(q, "pcr_values"), "sha256");
    size_t alen = 0, slen = 0, off = 0;
    uint8_t *attest = b64(q, "quote_b64", &alen);
    uint8_t *sig = b64(q, "signature_b64", &slen);
    uint8_t digest[32], want_sel[3] = {0};
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    TPM2B_PUBLIC ak;
    TPMS_ATTEST info;
    veil_pcr_sel sel;
    unsigned dlen;
    int ok = 0;

    if (!attest || !sig || !md || !bank ||
        veil_pcr_sel_parse(tu_json_str(q, "pcr_banks"), &sel) != VEIL_OK ||
        public_of(q, "aik_pubkey_b64", &ak) != 0 ||
        Tss2_MU_TPMS_ATTEST_Unmarshal(attest, alen, &off, &info) != 0 ||
        off != alen || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
        goto out;
    for (unsigned i = 0; i < sel.n; i++) {
        char idx[4];
        size_t len;
        uint8_t *v;

        snprintf(idx, sizeof idx, "%u", sel.index[i]);
        v = tu_hex(tu_json_str(bank, idx), &len);
        if (!v || len != 32 || EVP_DigestUpdate(md, v, 32) != 1) {
            free(v);
            goto out;
        }
        free(v);
        want_sel[sel.index[i] / 8] |= (uint8_t)(1u << (sel.index[i] % 8));
    }
    if (EVP_DigestFinal_ex(md, digest, &dlen) != 1)
        goto out;
    ok = info.magic == TPM2_GENERATED_VALUE &&
         info.type == TPM2_ST_ATTEST_QUOTE && info.extraData.size == 32 &&
         memcmp(info.extraData.buffer, qualifying, 32) == 0 &&
         info.attested.quote.pcrSelect.count == 1 &&
         info.attested.quote.pcrSelect.pcrSelections[0].hash ==
             TPM2_ALG_SHA256 &&
         info.attested.quote.pcrSelect.pcrSelections[0].sizeofSelect == 3 &&
         memcmp(info.attested.quote.pcrSelect.pcrSelections[0].pcrSelect,
                want_sel, 3) == 0 &&
         info.attested.quote.pcrDigest.size == 32 &&
         memcmp(info.attested.quote.pcrDigest.buffer, digest, 32) == 0 &&
         verify_sig(&ak, attest, alen, sig, slen);
out:
    EVP_MD_CTX_free(md);
    free(attest);
    free(sig);
    return ok;
}

/* tpm2_checkquote over a quote object's fields (aik_pubkey_b64,
 * quote_b64, signature_b64, pcr_banks, pcr_values); its exit status. */
static int checkquote(const cJSON *q, const char *aik_key,
                      const uint8_t qualifying[32])
{
    const cJSON *bank =
        cJSON_GetObjectItem(cJSON_GetObjectItem(q, "pcr_values"), "sha256");
    const char *banks = tu_json_str(q, "pcr_banks");
    char qhex[65], idx[4];
    FILE *f;
    veil_pcr_sel sel;

    if (!bank || !banks || veil_pcr_sel_parse(banks, &sel) != VEIL_OK)
        return -1;
    /* The PCR file: the values concatenated, in the order of the
     * selection (what tpm2_pcrread -o writes). */
    if (!(f = fopen(path_of("quote.pcrs"), "wb")))
        return -1;
    for (unsigned i = 0; i < sel.n; i++) {
        size_t len;
        uint8_t *v;

        snprintf(idx, sizeof idx, "%u", sel.index[i]);
        v = tu_hex(tu_json_str(bank, idx), &len);
        if (!v || len != 32 || fwrite(v, 1, 32, f) != 32) {
            free(v);
            fclose(f);
            return -1;
        }
        free(v);
    }
    fclose(f);
    for (int i = 0; i < 32; i++)
        snprintf(qhex + 2 * i, 3, "%02x", qualifying[i]);
    if (b64_to_file(q, aik_key, path_of("ak.pub")) != 0 ||
        b64_to_file(q, "quote_b64", path_of("quote.msg")) != 0 ||
        b64_to_file(q, "signature_b64", path_of("quote.sig")) != 0)
        return -1;
    return run("tpm2_checkquote -u %s -m %s -s %s -f %s -l %s -g sha256 "
               "-q %s",
               path_of("ak.pub"), path_of("quote.msg"), path_of("quote.sig"),
               path_of("quote.pcrs"), banks, qhex);
}

static void random_qualifying(uint8_t q[32])
{
    CU_ASSERT_FATAL(RAND_bytes(q, 32) == 1);
}

/* X509_verify_cert of the EK certificate against a CA bundle. */
static int verify_ek_cert(const uint8_t *der, size_t len, const char *ca,
                          unsigned long flags)
{
    const unsigned char *p = der;
    X509 *cert = d2i_X509(NULL, &p, (long)len);
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    int ok = 0;

    if (cert && store && ctx && X509_STORE_load_file(store, ca) == 1 &&
        X509_STORE_CTX_init(ctx, store, cert, NULL) == 1) {
        if (flags)
            X509_STORE_CTX_set_flags(ctx, flags);
        ok = X509_verify_cert(ctx) == 1;
        if (!ok)
            printf(
                "  EK certificate vs %s: %s\n", ca,
                X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
    }
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    X509_free(cert);
    return ok;
}

/* ---- suite set-up -------------------------------------------------------- */

static int suite_init(void)
{
    char err[512];
    double t0;

    tcti = tu_env("TPM2TOOLS_TCTI");
    tu_env("DBUS_SESSION_BUS_ADDRESS");
    if (tu_scratch_dir("gw-tpm", dir, sizeof dir) != 0)
        return -1;
    /* A PCR that is not all zeros, so the digest check means something. */
    if (run("tpm2_pcrextend 10:sha256=%s",
            "7d865e959b2466918c9863afca942d0fb89"
            "d7c9ac0c99bafc3749504ded97730") != 0)
        return -1;
    t0 = now_ms();
    tpm = open_tpm(PCRS, 0, err, sizeof err);
    if (!tpm) {
        fprintf(stderr, "gw_tpm_open: %s\n", err);
        return -1;
    }
    printf("\n  gw_tpm_open (EK + AK + EK certificate): %.0f ms; %s\n",
           now_ms() - t0, gw_tpm_describe(tpm));
    return 0;
}

static int suite_cleanup(void)
{
    gw_tpm_free(tpm);
    tpm = NULL;
    return 0;
}

/* ---- tests --------------------------------------------------------------- */

static void test_open_errors(void)
{
    char err[512] = "";
    gw_tpm_options bad_tcti = {.tcti = "no-such-tcti", .pcrs = PCRS};
    gw_tpm_options bad_pcrs = {.tcti = tcti, .pcrs = "sha1:0"};

    CU_ASSERT_PTR_NULL(tpm_open(&bad_tcti, err, sizeof err));
    CU_ASSERT_EQUAL(strncmp(err, "TPM: ", 5), 0);
    err[0] = '\0';
    CU_ASSERT_PTR_NULL(tpm_open(&bad_pcrs, err, sizeof err));
    CU_ASSERT_NOT_EQUAL(strstr(err, "tpm_pcrs"), NULL);
    CU_ASSERT_PTR_NULL(tpm_open(NULL, err, sizeof err));
}

static void test_identity(void)
{
    CU_ASSERT_EQUAL(gw_tpm_is_software(tpm), 1);
    CU_ASSERT_NOT_EQUAL(strstr(gw_tpm_describe(tpm), "IBM SW TPM firmware "),
                        NULL);
    CU_ASSERT_EQUAL(gw_tpm_is_software(NULL), 0);
}

static void test_report(void)
{
    uint8_t q[32];
    char err[512] = "", qhex[65];
    cJSON *r = cJSON_CreateObject(), *info;
    const cJSON *vals;
    TPM2B_PUBLIC ek, ak;
    uint8_t *spki = NULL, *cert = NULL, name[34];
    size_t spki_len = 0, cert_len = 0, n;
    const unsigned char *p;
    EVP_PKEY *ek_key = NULL;
    X509 *x = NULL;
    double t0;

    random_qualifying(q);
    t0 = now_ms();
    CU_ASSERT_EQUAL_FATAL(gw_tpm_report(tpm, q, r, err, sizeof err), 0);
    printf("\n  report (quote by the long-term AK): %.0f ms\n", now_ms() - t0);

    info = cJSON_GetObjectItem(r, "tpm");
    CU_ASSERT_STRING_EQUAL(tu_json_str(info, "manufacturer"), "IBM");
    CU_ASSERT_STRING_EQUAL(tu_json_str(info, "vendor"), "SW   TPM");
    CU_ASSERT_PTR_NOT_NULL(tu_json_str(info, "firmware"));
    CU_ASSERT_TRUE(cJSON_IsTrue(cJSON_GetObjectItem(info, "software_tpm")));
    CU_ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItem(r, "key_certify")));
    /* swtpm is not the platform's TPM: no firmware event log for it */
    CU_ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItem(r, "event_log_b64")));
    CU_ASSERT_STRING_EQUAL(tu_json_str(r, "pcr_banks"), PCRS);
    vals = cJSON_GetObjectItem(cJSON_GetObjectItem(r, "pcr_values"), "sha256");
    CU_ASSERT_EQUAL(cJSON_GetArraySize(vals), 3);
    CU_ASSERT_TRUE(is_hex(tu_json_str(vals, "0"), 64));
    CU_ASSERT_TRUE(is_hex(tu_json_str(vals, "7"), 64));
    CU_ASSERT_TRUE(is_hex(tu_json_str(vals, "10"), 64));
    CU_ASSERT_STRING_NOT_EQUAL(tu_json_str(vals, "10"),
                               "0000000000000000000000000000000000000000000000"
                               "000000000000000000");
    for (int i = 0; i < 32; i++)
        snprintf(qhex + 2 * i, 3, "%02x", q[i]);
    CU_ASSERT_STRING_EQUAL(tu_json_str(r, "qualifying_data"), qhex);

    /* The AK: its name is the name of its public area; the quote checks. */
    CU_ASSERT_FATAL(public_of(r, "aik_pubkey_b64", &ak) == 0);
    CU_ASSERT_EQUAL(ak.publicArea.objectAttributes & REQUIRED_AK_ATTRS,
                    REQUIRED_AK_ATTRS);
    CU_ASSERT_EQUAL(ak.publicArea.type, TPM2_ALG_ECC);
    CU_ASSERT_FATAL(name_of(&ak, name) == 0);
    {
        size_t len;
        uint8_t *got = tu_hex(tu_json_str(r, "aik_name"), &len);
        CU_ASSERT_TRUE(got && len == 34 && memcmp(got, name, 34) == 0);
        free(got);
    }
    CU_ASSERT_EQUAL(checkquote(r, "aik_pubkey_b64", q), 0);
    q[0] ^= 1; /* and tpm2_checkquote does look at the qualifying data */
    CU_ASSERT_NOT_EQUAL(checkquote(r, "aik_pubkey_b64", q), 0);

    /* The EK: the TCG default template, the same key swtpm_setup made
     * (persistent at 0x81010001) and certified. */
    CU_ASSERT_FATAL(public_of(r, "ek_pubkey_b64", &ek) == 0);
    CU_ASSERT_EQUAL(ek.publicArea.type, TPM2_ALG_RSA);
    CU_ASSERT_EQUAL(ek.publicArea.objectAttributes, 0x000300b2);
    CU_ASSERT_EQUAL(b64_to_file(r, "ek_pubkey_b64", path_of("ek.pub")), 0);
    CU_ASSERT_EQUAL(
        run("tpm2_readpublic -c 0x81010001 -o %s", path_of("ek-swtpm.pub")), 0);
    CU_ASSERT_EQUAL(
        run("cmp %s %s", path_of("ek.pub"), path_of("ek-swtpm.pub")), 0);
    spki = b64(r, "ek_spki_b64", &spki_len);
    cert = b64(r, "ek_cert_b64", &cert_len);
    CU_ASSERT_FATAL(spki && cert);
    p = spki;
    ek_key = d2i_PUBKEY(NULL, &p, (long)spki_len);
    p = cert;
    x = d2i_X509(NULL, &p, (long)cert_len);
    CU_ASSERT_FATAL(ek_key && x);
    CU_ASSERT_EQUAL(p, cert + cert_len); /* exactly the DER, no NV padding */
    CU_ASSERT_EQUAL(EVP_PKEY_eq(X509_get0_pubkey(x), ek_key), 1);
    {
        /* the modulus in the certificate is the one in the TPM2B_PUBLIC */
        BIGNUM *mod = NULL;
        uint8_t m[256];
        CU_ASSERT_FATAL(EVP_PKEY_get_bn_param(X509_get0_pubkey(x),
                                              OSSL_PKEY_PARAM_RSA_N,
                                              &mod) == 1);
        n = (size_t)BN_bn2binpad(mod, m, sizeof m);
        CU_ASSERT_EQUAL(n, ek.publicArea.unique.rsa.size);
        CU_ASSERT_EQUAL(memcmp(m, ek.publicArea.unique.rsa.buffer, 256), 0);
        BN_free(mod);
    }
    /* The chain: root and intermediate from swtpm_localca; no special
     * verification flags are needed, and strict X.509 checking passes. */
    CU_ASSERT_TRUE(
        verify_ek_cert(cert, cert_len, tu_env("VEIL_TEST_EK_CA"), 0));
    CU_ASSERT_TRUE(verify_ek_cert(cert, cert_len, tu_env("VEIL_TEST_EK_CA"),
                                  X509_V_FLAG_X509_STRICT));
    CU_ASSERT_FALSE(
        verify_ek_cert(cert, cert_len, tu_env("VEIL_TEST_OTHER_EK_CA"), 0));

    X509_free(x);
    EVP_PKEY_free(ek_key);
    free(spki);
    free(cert);
    cJSON_Delete(r);
}

static void test_quote(void)
{
    uint8_t q[32];
    char err[512] = "";
    cJSON *obj, *r = cJSON_CreateObject();
    double t0;

    random_qualifying(q);
    t0 = now_ms();
    obj = gw_tpm_quote(tpm, q, 1, err, sizeof err);
    printf("\n  quote: %.0f ms\n", now_ms() - t0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(obj);
    CU_ASSERT_TRUE(cJSON_IsTrue(cJSON_GetObjectItem(obj, "is_available")));
    CU_ASSERT_STRING_EQUAL(tu_json_str(obj, "format"), "veil-tpm2-quote-v1");
    CU_ASSERT_STRING_EQUAL(tu_json_str(obj, "pcr_banks"), PCRS);
    CU_ASSERT_TRUE(cJSON_IsTrue(cJSON_GetObjectItem(obj, "software_tpm")));
    CU_ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItem(obj, "aik_certify")));
    CU_ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItem(obj, "key_certify")));
    CU_ASSERT_TRUE(is_hex(tu_json_str(obj, "aik_name"), 68));
    CU_ASSERT_TRUE(is_hex(tu_json_str(obj, "qualifying_data"), 64));
    CU_ASSERT_EQUAL(cJSON_GetArraySize(obj), 12);
    CU_ASSERT_EQUAL(checkquote(obj, "aik_pubkey_b64", q), 0);
    CU_ASSERT_TRUE(quote_ok(obj, q)); /* the C check agrees */
    /* the long-term AK signs: the one in the report */
    CU_ASSERT_EQUAL_FATAL(gw_tpm_report(tpm, q, r, err, sizeof err), 0);
    CU_ASSERT_STRING_EQUAL(tu_json_str(obj, "aik_pubkey_b64"),
                           tu_json_str(r, "aik_pubkey_b64"));
    CU_ASSERT_STRING_EQUAL(tu_json_str(obj, "aik_name"),
                           tu_json_str(r, "aik_name"));
    cJSON_Delete(r);
    cJSON_Delete(obj);
}

typedef struct quoter {
    pthread_t th;
    int ok;
} quoter;

static void *quote_loop(void *arg)
{
    quoter *qt = arg;
    uint8_t q[32] = {0};
    char err[512];

    for (int i = 0; i < 4; i++) {
        cJSON *obj;
        q[0] = (uint8_t)i;
        obj = gw_tpm_quote(tpm, q, 1, err, sizeof err);
        if (obj)
            qt->ok++;
        cJSON_Delete(obj);
    }
    return NULL;
}

static void test_threads(void)
{
    quoter qs[4] = {{0}};

    for (int i = 0; i < 4; i++)
        CU_ASSERT_FATAL(pthread_create(&qs[i].th, NULL, quote_loop, &qs[i]) ==
                        0);
    for (int i = 0; i < 4; i++) {
        pthread_join(qs[i].th, NULL);
        CU_ASSERT_EQUAL(qs[i].ok, 4);
    }
}

static void test_per_request_ak(void)
{
    char err[512] = "";
    uint8_t q[32];
    cJSON *r = cJSON_CreateObject(), *a = NULL, *b = NULL;
    TPM2B_PUBLIC long_ak, fresh;
    double t0;
    gw_tpm *t2;

    /* all 24 PCRs: more than one TPM2_PCR_Read answer holds */
    t0 = now_ms();
    t2 = open_tpm(ALL_PCRS, 1, err, sizeof err);
    printf("\n  gw_tpm_open: %.0f ms\n", now_ms() - t0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t2);
    random_qualifying(q);
    CU_ASSERT_EQUAL_FATAL(gw_tpm_report(t2, q, r, err, sizeof err), 0);
    CU_ASSERT_FATAL(public_of(r, "aik_pubkey_b64", &long_ak) == 0);
    CU_ASSERT_TRUE(quote_ok(r, q));

    t0 = now_ms();
    a = gw_tpm_quote(t2, q, 1, err, sizeof err);
    printf("  quote with a fresh AK, certified: %.0f ms\n", now_ms() - t0);
    b = gw_tpm_quote(t2, q, 1, err, sizeof err);
    CU_ASSERT_FATAL(a && b);
    CU_ASSERT_STRING_EQUAL(tu_json_str(a, "pcr_banks"), ALL_PCRS);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(cJSON_GetObjectItem(
                        cJSON_GetObjectItem(a, "pcr_values"), "sha256")),
                    24);
    /* a new AK each time, not the long-term one */
    CU_ASSERT_STRING_NOT_EQUAL(tu_json_str(a, "aik_pubkey_b64"),
                               tu_json_str(r, "aik_pubkey_b64"));
    CU_ASSERT_STRING_NOT_EQUAL(tu_json_str(a, "aik_pubkey_b64"),
                               tu_json_str(b, "aik_pubkey_b64"));
    CU_ASSERT_FATAL(public_of(a, "aik_pubkey_b64", &fresh) == 0);
    CU_ASSERT_EQUAL(fresh.publicArea.objectAttributes & REQUIRED_AK_ATTRS,
                    REQUIRED_AK_ATTRS);
    /* certified by the long-term AK, same qualifying data */
    CU_ASSERT_TRUE(
        certify_ok(cJSON_GetObjectItem(a, "aik_certify"), &long_ak, q, &fresh));
    CU_ASSERT_FALSE(certify_ok(cJSON_GetObjectItem(a, "aik_certify"), &fresh, q,
                               &fresh)); /* not self-signed */
    CU_ASSERT_TRUE(quote_ok(a, q));
    CU_ASSERT_TRUE(quote_ok(b, q));
    q[31] ^= 1;
    CU_ASSERT_FALSE(quote_ok(a, q));

    cJSON_Delete(a);
    cJSON_Delete(b);
    cJSON_Delete(r);
    gw_tpm_free(t2);
}

/* tpm2_makecredential's file: magic 0xBADCC0DE, version 1, then the
 * TPM2B_ID_OBJECT and the TPM2B_ENCRYPTED_SECRET. */
static int make_credential(const char *name_hex, uint8_t *blob,
                           size_t *blob_len, uint8_t *enc, size_t *enc_len)
{
    size_t len, n1, n2;
    char *file;
    uint8_t *p;

    if (run("rm -f %s && tpm2_makecredential --tcti none -u %s -s %s -n %s "
            "-o %s",
            path_of("cred"), path_of("ek.pub"), path_of("secret"), name_hex,
            path_of("cred")) != 0 ||
        !(file = tu_read_file(path_of("cred"), &len)))
        return -1;
    p = (uint8_t *)file;
    if (len < 12 || memcmp(p, "\xba\xdc\xc0\xde\x00\x00\x00\x01", 8) != 0)
        goto bad;
    n1 = 2u + (size_t)(p[8] << 8 | p[9]);
    if (8 + n1 + 2 > len)
        goto bad;
    n2 = 2u + (size_t)(p[8 + n1] << 8 | p[8 + n1 + 1]);
    if (8 + n1 + n2 != len || n1 > *blob_len || n2 > *enc_len)
        goto bad;
    memcpy(blob, p + 8, n1);
    memcpy(enc, p + 8 + n1, n2);
    *blob_len = n1;
    *enc_len = n2;
    free(file);
    return 0;
bad:
    free(file);
    return -1;
}

static void test_activate(void)
{
    char err[512] = "";
    uint8_t q[32] = {0}, secret[32], out[64], blob[512], enc[512];
    size_t blob_len = sizeof blob, enc_len = sizeof enc, out_len = 0;
    cJSON *r = cJSON_CreateObject();
    char other_name[69];
    double t0;

    CU_ASSERT_EQUAL_FATAL(gw_tpm_report(tpm, q, r, err, sizeof err), 0);
    CU_ASSERT_EQUAL_FATAL(b64_to_file(r, "ek_pubkey_b64", path_of("ek.pub")),
                          0);
    random_qualifying(secret);
    CU_ASSERT_EQUAL_FATAL(write_file(path_of("secret"), secret, 32), 0);

    CU_ASSERT_EQUAL_FATAL(make_credential(tu_json_str(r, "aik_name"), blob,
                                          &blob_len, enc, &enc_len),
                          0);
    t0 = now_ms();
    CU_ASSERT_EQUAL(gw_tpm_activate(tpm, blob, blob_len, enc, enc_len, out,
                                    &out_len, err, sizeof err),
                    GW_OK);
    printf("\n  activate: %.0f ms\n", now_ms() - t0);
    CU_ASSERT_EQUAL(out_len, 32);
    CU_ASSERT_EQUAL(memcmp(out, secret, 32), 0);
    /* again: the EK is loaded per activation */
    CU_ASSERT_EQUAL(gw_tpm_activate(tpm, blob, blob_len, enc, enc_len, out,
                                    &out_len, err, sizeof err),
                    GW_OK);

    /* tampered: the TPM's integrity check refuses it */
    blob[blob_len - 1] ^= 0x40;
    CU_ASSERT_EQUAL(gw_tpm_activate(tpm, blob, blob_len, enc, enc_len, out,
                                    &out_len, err, sizeof err),
                    GW_REFUSED);
    printf("  tampered: %s\n", err);
    /* not a TPM2B_ID_OBJECT at all */
    CU_ASSERT_EQUAL(gw_tpm_activate(tpm, blob, blob_len - 1, enc, enc_len, out,
                                    &out_len, err, sizeof err),
                    GW_REFUSED);
    CU_ASSERT_EQUAL(gw_tpm_activate(tpm, blob, blob_len, enc, 3, out, &out_len,
                                    err, sizeof err),
                    GW_REFUSED);

    /* made for another name: refused */
    snprintf(other_name, sizeof other_name, "000b");
    for (int i = 0; i < 32; i++)
        snprintf(other_name + 4 + 2 * i, 3, "%02x", secret[31 - i]);
    blob_len = sizeof blob;
    enc_len = sizeof enc;
    CU_ASSERT_EQUAL_FATAL(
        make_credential(other_name, blob, &blob_len, enc, &enc_len), 0);
    CU_ASSERT_EQUAL(gw_tpm_activate(tpm, blob, blob_len, enc, enc_len, out,
                                    &out_len, err, sizeof err),
                    GW_REFUSED);
    printf("  other name: %s\n", err);
    /* and a secret for another EK (garbage under ours): refused too */
    for (size_t i = 2; i < enc_len; i++)
        enc[i] = (uint8_t)(i * 7);
    CU_ASSERT_EQUAL(gw_tpm_activate(tpm, blob, blob_len, enc, enc_len, out,
                                    &out_len, err, sizeof err),
                    GW_REFUSED);
    printf("  garbage secret: %s\n", err);
    cJSON_Delete(r);
}

/* ---- the encryption key as a TPM object ------------------------------- */

/* Makes an RSA key in the tpm2-pkcs11 token, exports it as a TSS2 PRIVATE
 * KEY plus its auth value (tpm2_ptool export), and gets its SPKI through
 * PKCS#11 the way veild does. */
static int make_token_key(const char *label, uint8_t **spki, size_t *spki_len)
{
    const char *token = tu_env("VEIL_TEST_TPM_TOKEN");
    const char *store = tu_env("TPM2_PKCS11_STORE");
    const char *pin_file = tu_env("VEIL_TEST_PIN_FILE");
    char uri[256], pin_src[4200], *yaml, *auth, *end;
    veil_engine_config cfg = {0};
    veil_engine *e = NULL;
    veil_key *k = NULL;
    int rc = -1;

    /* throwaway test PIN on the command line, as the wrapper does */
    if (run("tpm2_ptool addkey --algorithm=rsa2048 --label=%s "
            "--key-label=%s --userpin=\"$(cat %s)\" --path %s",
            token, label, pin_file, store) != 0 ||
        run("tpm2_ptool export --format=pem --label=%s --key-label=%s "
            "--userpin=\"$(cat %s)\" --path %s --output-prefix %s/%s >%s",
            token, label, pin_file, store, dir, label,
            path_of("export.yaml")) != 0)
        return -1;
    /* "object-auth: <value>" to a PIN file, as an operator would */
    if (!(yaml = tu_read_file(path_of("export.yaml"), NULL)))
        return -1;
    auth = strstr(yaml, "object-auth: ");
    if (auth) {
        auth += strlen("object-auth: ");
        end = strchr(auth, '\n');
        if (end)
            *end = '\0';
        {
            FILE *f;
            umask(077);
            f = fopen(path_of("key.auth"), "w");
            if (f) {
                fprintf(f, "%s\n", auth);
                rc = fclose(f) == 0 ? 0 : -1;
            }
        }
    }
    OPENSSL_cleanse(yaml, strlen(yaml));
    free(yaml);
    if (rc != 0)
        return -1;

    rc = -1;
    cfg.pkcs11_module = tu_env("VEIL_TEST_TPM_MODULE");
    snprintf(pin_src, sizeof pin_src, "file:%s", pin_file);
    if (veil_pin_source_parse(pin_src, &cfg.pin) != VEIL_OK)
        return -1;
    snprintf(uri, sizeof uri, "pkcs11:token=%s;object=%s", token, label);
    if (veil_engine_new(&cfg, &e) == VEIL_OK &&
        veil_key_open(e, uri, &k) == VEIL_OK &&
        veil_key_public_der(k, spki, spki_len) == VEIL_OK)
        rc = 0;
    else
        printf("  %s: %s\n", uri, veil_last_error()->message);
    veil_key_free(k);
    veil_engine_free(e);
    return rc;
}

static void test_key_certify(void)
{
    char err[512] = "", key_path[4200], auth_src[4300];
    uint8_t q[32], *spki = NULL;
    size_t spki_len = 0;
    cJSON *obj = NULL, *r = cJSON_CreateObject();
    TPM2B_PUBLIC ak, key;
    EVP_PKEY *from_tpm = NULL, *from_p11 = NULL;
    const unsigned char *p;
    gw_tpm *t3;
    double t0;

    CU_ASSERT_EQUAL_FATAL(make_token_key("gw-key", &spki, &spki_len), 0);
    snprintf(key_path, sizeof key_path, "%s/gw-key.pem", dir);
    snprintf(auth_src, sizeof auth_src, "file:%s", path_of("key.auth"));
    {
        gw_tpm_options opt = {
            .tcti = tcti,
            .pcrs = PCRS,
            .ak_per_request = 1,
            .tss2_key = key_path,
            .tss2_key_auth = auth_src,
            .encryption_spki = spki,
            .encryption_spki_len = spki_len,
            .log = log_line,
            .log_level = VEIL_LOG_DEBUG,
        };
        t3 = tpm_open(&opt, err, sizeof err);
    }
    if (!t3)
        printf("  gw_tpm_open with tss2_key: %s\n", err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t3);

    random_qualifying(q);
    t0 = now_ms();
    obj = gw_tpm_quote(t3, q, 1, err, sizeof err);
    printf("\n  quote with a fresh AK and the key certified: %.0f ms\n",
           now_ms() - t0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(obj);
    CU_ASSERT_FATAL(public_of(obj, "aik_pubkey_b64", &ak) == 0);
    CU_ASSERT_FATAL(public_of(cJSON_GetObjectItem(obj, "key_certify"),
                              "pubkey_b64", &key) == 0);
    /* certified by the AK that signed the quote (the per-request one) */
    CU_ASSERT_TRUE(
        certify_ok(cJSON_GetObjectItem(obj, "key_certify"), &ak, q, &key));
    CU_ASSERT_EQUAL(checkquote(obj, "aik_pubkey_b64", q), 0);
    CU_ASSERT_EQUAL(
        key.publicArea.objectAttributes &
            (TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_SENSITIVEDATAORIGIN),
        TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_SENSITIVEDATAORIGIN);
    /* and the certified key is the one PKCS#11 gives the gateway */
    from_tpm = pkey_of(&key);
    p = spki;
    from_p11 = d2i_PUBKEY(NULL, &p, (long)spki_len);
    CU_ASSERT_TRUE(from_tpm && from_p11 &&
                   EVP_PKEY_eq(from_tpm, from_p11) == 1);

    /* the report: certified by the long-term AK */
    CU_ASSERT_EQUAL_FATAL(gw_tpm_report(t3, q, r, err, sizeof err), 0);
    CU_ASSERT_FATAL(public_of(r, "aik_pubkey_b64", &ak) == 0);
    CU_ASSERT_TRUE(
        certify_ok(cJSON_GetObjectItem(r, "key_certify"), &ak, q, &key));
    /* a quote for protocol v2 (certify_key 0): the request did not go to
     * that key, so no certification of it */
    cJSON_Delete(obj);
    obj = gw_tpm_quote(t3, q, 0, err, sizeof err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(obj);
    CU_ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItem(obj, "key_certify")));
    CU_ASSERT_EQUAL(checkquote(obj, "aik_pubkey_b64", q), 0);
    gw_tpm_free(t3);

    /* another key's SPKI: refused at open */
    {
        uint8_t *ek_spki;
        size_t ek_len;
        ek_spki = b64(r, "ek_spki_b64", &ek_len);
        gw_tpm_options opt = {.tcti = tcti,
                              .pcrs = PCRS,
                              .tss2_key = key_path,
                              .tss2_key_auth = auth_src,
                              .encryption_spki = ek_spki,
                              .encryption_spki_len = ek_len};
        err[0] = '\0';
        CU_ASSERT_PTR_NULL(tpm_open(&opt, err, sizeof err));
        CU_ASSERT_NOT_EQUAL(strstr(err, "not the gateway's encryption key"),
                            NULL);
        free(ek_spki);
    }
    /* a wrong auth value: refused at open (one failure, far from the
     * TPM's dictionary-attack lockout) */
    {
        gw_tpm_options opt = {.tcti = tcti,
                              .pcrs = PCRS,
                              .tss2_key = key_path,
                              .tss2_key_auth = "env:VEIL_TEST_WRONG_KEY_AUTH",
                              .encryption_spki = spki,
                              .encryption_spki_len = spki_len};
        setenv("VEIL_TEST_WRONG_KEY_AUTH", "0123456789abcdef0123456789abcdef",
               1);
        err[0] = '\0';
        CU_ASSERT_PTR_NULL(tpm_open(&opt, err, sizeof err));
        printf("  wrong auth: %s\n", err);
        CU_ASSERT_NOT_EQUAL(strstr(err, "auth"), NULL);
        unsetenv("VEIL_TEST_WRONG_KEY_AUTH");
    }
    /* not a TSS2 key file */
    {
        gw_tpm_options opt = {.tcti = tcti,
                              .pcrs = PCRS,
                              .tss2_key = tu_env("VEIL_TEST_EK_CA"),
                              .tss2_key_auth = auth_src,
                              .encryption_spki = spki,
                              .encryption_spki_len = spki_len};
        err[0] = '\0';
        CU_ASSERT_PTR_NULL(tpm_open(&opt, err, sizeof err));
        CU_ASSERT_NOT_EQUAL(strstr(err, "TSS2 PRIVATE KEY"), NULL);
    }
    EVP_PKEY_free(from_tpm);
    EVP_PKEY_free(from_p11);
    free(spki);
    cJSON_Delete(obj);
    cJSON_Delete(r);
}

/* ---- a lying TPM: the checks of its answers, with hand-made ESAPI
 * structs (a real swtpm gives none of these) ---------------------------- */

static EVP_PKEY *p256_key(TPMS_ECC_POINT *q)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    uint8_t pt[65];
    size_t n = 0;

    CU_ASSERT_FATAL(k != NULL);
    CU_ASSERT_FATAL(EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_PUB_KEY,
                                                    pt, sizeof pt, &n) == 1 &&
                    n == 65);
    if (q) {
        q->x.size = q->y.size = 32;
        memcpy(q->x.buffer, pt + 1, 32);
        memcpy(q->y.buffer, pt + 33, 32);
    }
    return k;
}

/* tpm_pkey_from_public refuses what no TPM makes. */
static void test_lying_public(void)
{
    TPMT_PUBLIC rsa = {.type = TPM2_ALG_RSA}, ecc = {.type = TPM2_ALG_ECC}, b;
    EVP_PKEY *k, *sw;

    rsa.parameters.rsaDetail.keyBits = 2048;
    rsa.unique.rsa.size = 256;
    CU_ASSERT_FATAL(RAND_bytes(rsa.unique.rsa.buffer, 256) == 1);
    rsa.unique.rsa.buffer[0] |= 0x80;
    rsa.unique.rsa.buffer[255] |= 1;
    CU_ASSERT((k = tpm_pkey_from_public(&rsa)) != NULL);
    EVP_PKEY_free(k);
    b = rsa; /* a tiny modulus, as the TPM says */
    b.parameters.rsaDetail.keyBits = 512;
    b.unique.rsa.size = 64;
    CU_ASSERT(tpm_pkey_from_public(&b) == NULL);
    b = rsa; /* shorter than keyBits */
    b.unique.rsa.size = 128;
    CU_ASSERT(tpm_pkey_from_public(&b) == NULL);
    b = rsa; /* even */
    b.unique.rsa.buffer[255] &= 0xfe;
    CU_ASSERT(tpm_pkey_from_public(&b) == NULL);
    b = rsa; /* leading zero bits */
    b.unique.rsa.buffer[0] = 0x01;
    CU_ASSERT(tpm_pkey_from_public(&b) == NULL);
    b = rsa;
    b.parameters.rsaDetail.exponent = 1;
    CU_ASSERT(tpm_pkey_from_public(&b) == NULL);
    b.parameters.rsaDetail.exponent = 65536;
    CU_ASSERT(tpm_pkey_from_public(&b) == NULL);
    b.parameters.rsaDetail.exponent = 3;
    CU_ASSERT((k = tpm_pkey_from_public(&b)) != NULL);
    EVP_PKEY_free(k);

    ecc.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
    sw = p256_key(&ecc.unique.ecc);
    CU_ASSERT((k = tpm_pkey_from_public(&ecc)) != NULL);
    CU_ASSERT(k && EVP_PKEY_eq(k, sw) == 1);
    EVP_PKEY_free(k);
    b = ecc;
    b.parameters.eccDetail.curveID = TPM2_ECC_NIST_P384;
    CU_ASSERT(tpm_pkey_from_public(&b) == NULL);
    b = ecc;
    b.unique.ecc.x.size = 31;
    CU_ASSERT(tpm_pkey_from_public(&b) == NULL);
    b = ecc; /* off the curve */
    b.unique.ecc.y.buffer[31] ^= 1;
    CU_ASSERT(tpm_pkey_from_public(&b) == NULL);
    b = ecc; /* an ECC point read as an RSA modulus: the type decides */
    b.type = TPM2_ALG_KEYEDHASH;
    CU_ASSERT(tpm_pkey_from_public(&b) == NULL);
    EVP_PKEY_free(sw);
}

/* An ECDSA-SHA256 TPMT_SIGNATURE by key over msg. */
static void sign_bytes(EVP_PKEY *key, const uint8_t *msg, size_t len,
                       TPMT_SIGNATURE *sig)
{
    uint8_t der[80];
    const unsigned char *p = der;
    size_t der_len = sizeof der;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    ECDSA_SIG *es;
    const BIGNUM *r, *s;

    CU_ASSERT_FATAL(
        md &&
        EVP_DigestSignInit_ex(md, NULL, "SHA256", NULL, NULL, key, NULL) == 1 &&
        EVP_DigestSign(md, der, &der_len, msg, len) == 1);
    EVP_MD_CTX_free(md);
    CU_ASSERT_FATAL((es = d2i_ECDSA_SIG(NULL, &p, (long)der_len)) != NULL);
    ECDSA_SIG_get0(es, &r, &s);
    memset(sig, 0, sizeof *sig);
    sig->sigAlg = TPM2_ALG_ECDSA;
    sig->signature.ecdsa.hash = TPM2_ALG_SHA256;
    sig->signature.ecdsa.signatureR.size = 32;
    sig->signature.ecdsa.signatureS.size = 32;
    BN_bn2binpad(r, sig->signature.ecdsa.signatureR.buffer, 32);
    BN_bn2binpad(s, sig->signature.ecdsa.signatureS.buffer, 32);
    ECDSA_SIG_free(es);
}

/* A TPMS_ATTEST marshaled into *info and signed by key into *sig. */
static void make_attest(EVP_PKEY *key, const TPMS_ATTEST *a, TPM2B_ATTEST *info,
                        TPMT_SIGNATURE *sig)
{
    size_t off = 0;

    CU_ASSERT_FATAL(Tss2_MU_TPMS_ATTEST_Marshal(a, info->attestationData,
                                                sizeof info->attestationData,
                                                &off) == TSS2_RC_SUCCESS);
    info->size = (uint16_t)off;
    sign_bytes(key, info->attestationData, off, sig);
}

/* tpm_attest_check: a certification or quote goes out only when the
 * attestation key signed it and it says what was asked. */
static void test_lying_attest(void)
{
    EVP_PKEY *ak = p256_key(NULL), *other = p256_key(NULL);
    uint8_t qual[32];
    TPMS_ATTEST a = {0}, got, b;
    TPM2B_ATTEST info, bad_info;
    TPMT_SIGNATURE sig, bad_sig;
    TPM2B_NAME name = {.size = 34}, other_name;
    char err[256];

    CU_ASSERT_FATAL(RAND_bytes(qual, 32) == 1 &&
                    RAND_bytes(name.name, 34) == 1);
    a.magic = TPM2_GENERATED_VALUE;
    a.type = TPM2_ST_ATTEST_CERTIFY;
    a.extraData.size = 32;
    memcpy(a.extraData.buffer, qual, 32);
    a.attested.certify.name = name;
    make_attest(ak, &a, &info, &sig);
    CU_ASSERT(tpm_attest_check(ak, &info, &sig, TPM2_ST_ATTEST_CERTIFY, qual,
                               &name, &got, err, sizeof err) == 0);

    /* the signature */
    CU_ASSERT(tpm_attest_check(other, &info, &sig, TPM2_ST_ATTEST_CERTIFY, qual,
                               &name, &got, err, sizeof err) == -1);
    CU_ASSERT(strstr(err, "does not verify") != NULL);
    bad_info = info;
    bad_info.attestationData[bad_info.size - 1] ^= 1;
    CU_ASSERT(tpm_attest_check(ak, &bad_info, &sig, TPM2_ST_ATTEST_CERTIFY,
                               qual, &name, &got, err, sizeof err) == -1);
    bad_sig = sig; /* another algorithm: the union holds no ECDSA r, s */
    bad_sig.sigAlg = TPM2_ALG_RSASSA;
    CU_ASSERT(tpm_attest_check(ak, &info, &bad_sig, TPM2_ST_ATTEST_CERTIFY,
                               qual, &name, &got, err, sizeof err) == -1);
    bad_sig = sig;
    bad_sig.signature.ecdsa.signatureR.size = 0;
    CU_ASSERT(tpm_attest_check(ak, &info, &bad_sig, TPM2_ST_ATTEST_CERTIFY,
                               qual, &name, &got, err, sizeof err) == -1);
    bad_sig = sig;
    bad_sig.signature.ecdsa.hash = TPM2_ALG_SHA1;
    CU_ASSERT(tpm_attest_check(ak, &info, &bad_sig, TPM2_ST_ATTEST_CERTIFY,
                               qual, &name, &got, err, sizeof err) == -1);

    /* signed, but not what was asked */
    CU_ASSERT(tpm_attest_check(ak, &info, &sig, TPM2_ST_ATTEST_QUOTE, qual,
                               NULL, &got, err, sizeof err) == -1);
    CU_ASSERT(strstr(err, "another statement") != NULL);
    other_name = name;
    other_name.name[33] ^= 1;
    CU_ASSERT(tpm_attest_check(ak, &info, &sig, TPM2_ST_ATTEST_CERTIFY, qual,
                               &other_name, &got, err, sizeof err) == -1);
    qual[0] ^= 1;
    CU_ASSERT(tpm_attest_check(ak, &info, &sig, TPM2_ST_ATTEST_CERTIFY, qual,
                               &name, &got, err, sizeof err) == -1);
    qual[0] ^= 1;
    b = a; /* not made by a TPM */
    b.magic = 0;
    make_attest(ak, &b, &bad_info, &bad_sig);
    CU_ASSERT(tpm_attest_check(ak, &bad_info, &bad_sig, TPM2_ST_ATTEST_CERTIFY,
                               qual, &name, &got, err, sizeof err) == -1);
    /* signed, with bytes after the structure */
    bad_info = info;
    bad_info.attestationData[bad_info.size++] = 0;
    sign_bytes(ak, bad_info.attestationData, bad_info.size, &bad_sig);
    CU_ASSERT(tpm_attest_check(ak, &bad_info, &bad_sig, TPM2_ST_ATTEST_CERTIFY,
                               qual, &name, &got, err, sizeof err) == -1);
    CU_ASSERT(strstr(err, "another statement") != NULL);
    EVP_PKEY_free(ak);
    EVP_PKEY_free(other);
}

/* tpm_pcr_selection_same: a quote goes out only over the PCRs asked for
 * (sha256:0,7,10 here); another bank, other bits, another size or a
 * second bank is refused. */
static void test_lying_selection(void)
{
    TPML_PCR_SELECTION asked = {
        .count = 1,
        .pcrSelections = {{.hash = TPM2_ALG_SHA256,
                           .sizeofSelect = 3,
                           .pcrSelect = {0x81, 0x04, 0x00}}}};
    TPML_PCR_SELECTION got = asked;

    CU_ASSERT(tpm_pcr_selection_same(&got, &asked));
    got.pcrSelections[0].hash = TPM2_ALG_SHA1;
    CU_ASSERT(!tpm_pcr_selection_same(&got, &asked));
    got = asked;
    got.pcrSelections[0].pcrSelect[2] = 0x01; /* PCR 16 too */
    CU_ASSERT(!tpm_pcr_selection_same(&got, &asked));
    got = asked;
    got.pcrSelections[0].sizeofSelect = 4;
    CU_ASSERT(!tpm_pcr_selection_same(&got, &asked));
    got = asked;
    got.count = 2;
    got.pcrSelections[1] = asked.pcrSelections[0];
    CU_ASSERT(!tpm_pcr_selection_same(&got, &asked));
    got.count = TPM2_NUM_PCR_BANKS + 1; /* a count past the array */
    CU_ASSERT(!tpm_pcr_selection_same(&got, &asked));
}

/* ---- main ---------------------------------------------------------------- */

int main(void)
{
    static const tu_test tests[] = {
        {"open: errors", test_open_errors},
        {"software TPM, description", test_identity},
        {"report: fields, EK, EK certificate, quote", test_report},
        {"quote: fields, tpm2_checkquote", test_quote},
        {"quotes from several threads", test_threads},
        {"a fresh AK per request, certified", test_per_request_ak},
        {"credential activation", test_activate},
        {"the encryption key certified (tss2_key)", test_key_certify},
        {"lying TPM (hand-made structs): public areas", test_lying_public},
        {"lying TPM (hand-made structs): attestations", test_lying_attest},
        {"lying TPM (hand-made structs): quoted PCR selection",
         test_lying_selection},
    };

    TU_ADD_SUITE("gateway TPM (swtpm)", suite_init, suite_cleanup, tests);
    return tu_run_tests();
}
