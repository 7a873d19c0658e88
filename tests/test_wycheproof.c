/* Wycheproof conformance: every test-vector file in tests/data/wycheproof
 * (AES-GCM, RSA-OAEP, HKDF-SHA256, ECDSA P-256) runs through the public veil
 * API on every provider its keys fit: the software provider, a SoftHSM2
 * token and tpm2-pkcs11 on swtpm (public-key and symmetric operations
 * routed into the token; ECDSA on the TPM also with them in software).
 * Valid cases must succeed, invalid ones must fail, and every case of a
 * file must run or be counted "not applicable" with the reason printed
 * (never as passed).  After every invalid RSA-OAEP vector a known-good
 * ciphertext must still decrypt on the same engine and key: one bad
 * ciphertext must never take a token out of service.  Needs the environment
 * set by tests/env/with-tokens.sh (which starts the TPM for this program). */
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "testutil.h"
#include "veil/engine.h"

/* ---- configuration ------------------------------------------------------ */

typedef enum prov_kind {
    PROV_SOFTWARE = 0,
    PROV_SOFTHSM = 1,
    PROV_TPM = 2,       /* tpm2-pkcs11, public/symmetric ops in the token */
    PROV_TPM_SWPUB = 3, /* tpm2-pkcs11, public/symmetric ops in software */
} prov_kind;

static const char *const prov_names[] = {"software", "softhsm2", "tpm2-pkcs11",
                                         "tpm2-pkcs11 (public ops in "
                                         "software)"};

#define IS_TOKEN(p) ((p) != PROV_SOFTWARE)
#define IS_TPM(p) ((p) == PROV_TPM || (p) == PROV_TPM_SWPUB)

typedef enum file_kind { K_AES, K_OAEP, K_HKDF, K_ECDSA } file_kind;

typedef struct file_spec {
    const char *name;
    file_kind kind;
    const char *tag;      /* short name for labels and directories */
    int hkdf_sw_log;      /* softhsm2: expect "HKDF in software" debug line */
    int raw_rsa_log;      /* softhsm2: expect "raw RSA" info line */
    int threads;          /* also run the 4-thread check on group 0's key */
    const char *tpm_na;   /* the TPM cannot run this file: why */
} file_spec;

#define TPM_NO_GCM "tpm2-pkcs11 has no CKM_AES_GCM"
#define TPM_NO_HKDF "tpm2-pkcs11 has no HKDF mechanism"

static const file_spec files[] = {
    {"aes_gcm_test.json", K_AES, "aes-gcm", 0, 0, 0, TPM_NO_GCM},
    {"rsa_oaep_2048_sha256_mgf1sha256_test.json", K_OAEP, "oaep-sha256-2048",
     0, 1, 1, NULL},
    {"rsa_oaep_3072_sha256_mgf1sha256_test.json", K_OAEP, "oaep-sha256-3072",
     0, 1, 0, NULL},
    {"rsa_oaep_4096_sha256_mgf1sha256_test.json", K_OAEP, "oaep-sha256-4096",
     0, 1, 0, NULL},
    {"rsa_oaep_2048_sha1_mgf1sha1_test.json", K_OAEP, "oaep-sha1-2048", 0, 0,
     0, NULL},
    {"rsa_oaep_misc_test.json", K_OAEP, "oaep-misc", 0, 0, 0, NULL},
    {"rsa_oaep_misc_sha1_mgf1sha256_test.json", K_OAEP, "oaep-mgf-mismatch",
     0, 0, 0, NULL},
    {"rsa_three_primes_oaep_2048_sha1_mgf1sha1_test.json", K_OAEP,
     "oaep3-sha1-2048", 0, 0, 0, NULL},
    {"rsa_three_primes_oaep_3072_sha224_mgf1sha224_test.json", K_OAEP,
     "oaep3-sha224-3072", 0, 0, 0, NULL},
    {"rsa_three_primes_oaep_4096_sha256_mgf1sha256_test.json", K_OAEP,
     "oaep3-sha256-4096", 0, 0, 0, NULL},
    {"hkdf_sha256_test.json", K_HKDF, "hkdf-sha256", 1, 0, 0, TPM_NO_HKDF},
    {"ecdsa_secp256r1_sha256_test.json", K_ECDSA, "ecdsa-p256", 0, 0, 0,
     NULL},
};

#define N_FILES (sizeof files / sizeof files[0])

/* From the test environment (tests/env/with-tokens.sh). */
static struct {
    const char *module;
    const char *token;
    const char *tpm_module;
    const char *tpm_token;
    const char *pin_file;
    const char *test_dir;
} env;

/* Printed notices per file beyond which only counts are kept. */
#define MAX_NOTICES 20

/* Room for "provider/code: message" of a veil_error. */
#define WHY_LEN 512

/* ---- assertions --------------------------------------------------------- */

static void check(int ok, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A non-fatal CUnit assertion whose failure text says what went wrong. */
static void check(int ok, unsigned line, const char *fmt, ...)
{
    char buf[512];
    va_list ap;

    if (ok) {
        CU_assertImplementation(CU_TRUE, line, "ok", __FILE__, "", CU_FALSE);
        return;
    }
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    CU_assertImplementation(CU_FALSE, line, buf, __FILE__, "", CU_FALSE);
}

#define CHECK(ok, ...) check((ok), __LINE__, __VA_ARGS__)

/* ---- log capture -------------------------------------------------------- */

typedef struct log_line {
    veil_log_level level;
    char *text;
} log_line;

static struct {
    log_line *v;
    size_t n, cap;
    int lost;
} logs;

/* The engine logs from every thread that calls it (the 4-thread test):
 * one lock around the record, or lines would be lost (and leak). */
static pthread_mutex_t logs_lock = PTHREAD_MUTEX_INITIALIZER;

static void log_record(veil_log_level level, const char *line)
{
    char *copy;

    if (logs.n == logs.cap) {
        size_t ncap = logs.cap ? logs.cap * 2 : 256;
        log_line *nv = realloc(logs.v, ncap * sizeof *nv);

        if (nv == NULL) {
            logs.lost = 1;
            return;
        }
        logs.v = nv;
        logs.cap = ncap;
    }
    copy = strdup(line != NULL ? line : "");
    if (copy == NULL) {
        logs.lost = 1;
        return;
    }
    logs.v[logs.n].level = level;
    logs.v[logs.n].text = copy;
    logs.n++;
}

static void log_cb(void *ctx, veil_log_level level, const char *line)
{
    (void)ctx;
    pthread_mutex_lock(&logs_lock);
    log_record(level, line);
    pthread_mutex_unlock(&logs_lock);
}

static void logs_clear(void)
{
    size_t i;

    for (i = 0; i < logs.n; i++)
        free(logs.v[i].text);
    logs.n = 0;
    logs.lost = 0;
}

static void logs_free(void)
{
    logs_clear();
    free(logs.v);
    logs.v = NULL;
    logs.cap = 0;
}

/* The first captured line at `level` containing a (and b when given),
 * case-insensitively; NULL when none. */
static const char *logs_find(veil_log_level level, const char *a,
                             const char *b)
{
    size_t i;

    for (i = 0; i < logs.n; i++) {
        const char *t = logs.v[i].text;

        if (logs.v[i].level != level)
            continue;
        if (strcasestr(t, a) != NULL && (b == NULL || strcasestr(t, b)))
            return t;
    }
    return NULL;
}

/* ---- one run: a file through one engine ---------------------------------- */

#define RC_SLOTS 32

typedef struct run {
    prov_kind prov;
    const file_spec *spec;
    veil_engine *e;
    unsigned valid, valid_ok;
    unsigned invalid, invalid_rej;
    unsigned acceptable;
    unsigned api_rej; /* cases the API refused (counted as rejected) */
    unsigned na;      /* not applicable here (never counted as passed) */
    unsigned recheck, recheck_ok; /* good decryptions after invalid cases */
    unsigned run;
    unsigned notices;
    unsigned codes[RC_SLOTS]; /* rejection codes seen */
} run;

static const char *tc_comment(const cJSON *tc)
{
    const char *c = tu_json_str(tc, "comment");

    return c != NULL ? c : "";
}

static int tc_id(const cJSON *tc)
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(tc, "tcId");

    return cJSON_IsNumber(id) ? id->valueint : -1;
}

static void notice(run *r, const cJSON *tc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* An informational line about a case (not a failure), capped per run. */
static void notice(run *r, const cJSON *tc, const char *fmt, ...)
{
    char buf[400];
    va_list ap;

    if (r->notices++ >= MAX_NOTICES)
        return;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    printf("  note %s via %s: tcId %d (%s): %s\n", r->spec->name,
           prov_names[r->prov], tc_id(tc), tc_comment(tc), buf);
}

/* A vector we could not parse: counted as run, and a failure. */
static void vector_error(run *r, const cJSON *tc, const char *what)
{
    r->run++;
    printf("  MISMATCH %s via %s: tcId %d (%s): malformed vector: %s\n",
           r->spec->name, prov_names[r->prov], tc_id(tc), tc_comment(tc),
           what);
    CHECK(0, "%s tcId %d: malformed vector: %s", r->spec->name, tc_id(tc),
          what);
}

/* Records one case.  accepted: the engine succeeded with the right
 * output; api_rej: the API refused the case's sizes/parameters; rc: the
 * code of the failing call (VEIL_OK when accepted); detail: what happened
 * when that is not plain success or failure. */
static void outcome(run *r, const cJSON *tc, int accepted, int api_rej,
                    veil_rc rc, const char *detail)
{
    const char *res = tu_json_str(tc, "result");
    const char *expect = NULL;
    int ok;

    r->run++;
    if (api_rej)
        r->api_rej++;
    if (!accepted && (unsigned)rc < RC_SLOTS)
        r->codes[rc]++;
    if (res != NULL && strcmp(res, "valid") == 0) {
        r->valid++;
        if (accepted)
            r->valid_ok++;
        else
            expect = "valid case accepted";
    } else if (res != NULL && strcmp(res, "invalid") == 0) {
        r->invalid++;
        if (!accepted)
            r->invalid_rej++;
        else
            expect = "invalid case rejected";
    } else if (res != NULL && strcmp(res, "acceptable") == 0) {
        r->acceptable++;
    } else {
        expect = "a known result (valid/invalid/acceptable)";
    }
    ok = expect == NULL;
    if (!ok) {
        printf("  MISMATCH %s via %s: tcId %d (%s): expected %s; got %s%s%s\n",
               r->spec->name, prov_names[r->prov], tc_id(tc), tc_comment(tc),
               expect, accepted ? "success" : veil_rc_name(rc),
               detail ? ": " : "", detail ? detail : "");
    }
    CHECK(ok, "%s via %s tcId %d: expected %s", r->spec->name,
          prov_names[r->prov], tc_id(tc), expect ? expect : "");
}

/* A case this provider cannot run: counted as run and as "not
 * applicable", never as passed; the reason is printed once per group. */
static void not_applicable(run *r, const cJSON *tests, const char *why)
{
    const cJSON *tc;
    unsigned n = 0;

    cJSON_ArrayForEach(tc, tests)
    {
        r->run++;
        r->na++;
        n++;
    }
    printf("  not applicable %s via %s: %u cases: %s\n", r->spec->name,
           prov_names[r->prov], n, why);
}

/* Right after a failing call: the thread's last error must describe it.
 * Copies "provider[/code]: message" into why for mismatch reports. */
static void check_last_error(run *r, const cJSON *tc, veil_rc rc, char *why,
                             size_t why_size)
{
    const veil_error *le = veil_last_error();
    int ok = le != NULL && le->code == rc && le->message[0] != '\0';

    if (le != NULL)
        snprintf(why, why_size, "%s%s%s: %s", le->provider,
                 le->provider_code[0] ? "/" : "", le->provider_code,
                 le->message);
    else
        snprintf(why, why_size, "no last error");

    if (!ok)
        printf("  MISMATCH %s via %s: tcId %d: veil_last_error() after %s: "
               "code %s, message \"%s\"\n",
               r->spec->name, prov_names[r->prov], tc_id(tc),
               veil_rc_name(rc), le ? veil_rc_name(le->code) : "(null)",
               le ? le->message : "");
    CHECK(ok, "%s tcId %d: veil_last_error() does not describe %s",
          r->spec->name, tc_id(tc), veil_rc_name(rc));
}

/* Hex field of a test or group; NULL when absent or malformed. */
static unsigned char *field_hex(const cJSON *o, const char *key, size_t *len)
{
    const char *s = tu_json_str(o, key);

    return s != NULL ? tu_hex(s, len) : NULL;
}

static const char *result_of(const cJSON *tc)
{
    const char *res = tu_json_str(tc, "result");

    return res != NULL ? res : "";
}

/* ---- AES-GCM ------------------------------------------------------------ */

static void aes_case(run *r, const cJSON *tc)
{
    size_t key_len, iv_len, aad_len, msg_len, ct_len, tag_len;
    unsigned char *key = field_hex(tc, "key", &key_len);
    unsigned char *iv = field_hex(tc, "iv", &iv_len);
    unsigned char *aad = field_hex(tc, "aad", &aad_len);
    unsigned char *msg = field_hex(tc, "msg", &msg_len);
    unsigned char *ct = field_hex(tc, "ct", &ct_len);
    unsigned char *tag = field_hex(tc, "tag", &tag_len);
    unsigned char *pt = NULL, *buf = NULL, *ct2 = NULL;
    uint8_t tag2[VEIL_GCM_TAG_LEN];
    int in_api, valid = strcmp(result_of(tc), "valid") == 0;
    char detail[WHY_LEN + 64] = "", why[WHY_LEN];
    veil_rc rc;

    if (!key || !iv || !aad || !msg || !ct || !tag) {
        vector_error(r, tc, "missing or bad hex field");
        goto out;
    }
    if (ct_len != msg_len) {
        vector_error(r, tc, "ct and msg lengths differ");
        goto out;
    }
    in_api = (key_len == 16 || key_len == 24 || key_len == 32) &&
             iv_len >= 1 && tag_len == VEIL_GCM_TAG_LEN;
    if (tag_len != VEIL_GCM_TAG_LEN) {
        /* The API only takes 16-byte tags: cannot even be expressed. */
        outcome(r, tc, 0, 1, VEIL_E_ARG, "tag length outside the API");
        goto out;
    }

    pt = malloc(ct_len ? ct_len : 1);
    if (pt == NULL) {
        vector_error(r, tc, "out of memory");
        goto out;
    }
    rc = veil_aes_gcm_open(r->e, key, key_len, iv, iv_len, aad, aad_len, ct,
                           ct_len, tag, pt);
    if (rc != VEIL_OK) {
        veil_rc want = in_api ? VEIL_E_DECRYPT : VEIL_E_ARG;

        check_last_error(r, tc, rc, why, sizeof why);
        outcome(r, tc, 0, rc == VEIL_E_ARG, rc, why);
        if (rc != want && !valid) {
            printf("  MISMATCH %s via %s: tcId %d (%s): open returned %s, "
                   "expected %s\n",
                   r->spec->name, prov_names[r->prov], tc_id(tc),
                   tc_comment(tc), veil_rc_name(rc), veil_rc_name(want));
            CHECK(0, "%s tcId %d: open returned %s, expected %s",
                  r->spec->name, tc_id(tc), veil_rc_name(rc),
                  veil_rc_name(want));
        }
        goto out;
    }
    if (!valid) {
        outcome(r, tc, 1, 0, VEIL_OK, "open accepted the ciphertext");
        goto out;
    }
    if (memcmp(pt, msg, msg_len) != 0) {
        outcome(r, tc, 0, 0, VEIL_E_CRYPTO, "open: wrong plaintext");
        goto out;
    }

    /* Valid: in-place open and seal must also agree with the vector. */
    buf = malloc(ct_len ? ct_len : 1);
    ct2 = malloc(ct_len ? ct_len : 1);
    if (buf == NULL || ct2 == NULL) {
        vector_error(r, tc, "out of memory");
        goto out;
    }
    memcpy(buf, ct, ct_len);
    rc = veil_aes_gcm_open(r->e, key, key_len, iv, iv_len, aad, aad_len, buf,
                           ct_len, tag, buf);
    if (rc != VEIL_OK || memcmp(buf, msg, msg_len) != 0) {
        snprintf(detail, sizeof detail, "in-place open: %s%s",
                 veil_rc_name(rc), rc == VEIL_OK ? " but wrong plaintext" : "");
        outcome(r, tc, 0, 0, rc != VEIL_OK ? rc : VEIL_E_CRYPTO, detail);
        goto out;
    }
    rc = veil_aes_gcm_seal(r->e, key, key_len, iv, iv_len, aad, aad_len, msg,
                           msg_len, ct2, tag2);
    if (rc != VEIL_OK) {
        check_last_error(r, tc, rc, why, sizeof why);
        snprintf(detail, sizeof detail, "seal failed: %s", why);
        outcome(r, tc, 0, rc == VEIL_E_ARG, rc, detail);
        goto out;
    }
    if (memcmp(ct2, ct, ct_len) != 0 ||
        memcmp(tag2, tag, VEIL_GCM_TAG_LEN) != 0) {
        outcome(r, tc, 0, 0, VEIL_E_CRYPTO,
                "seal: ciphertext or tag differs from the vector");
        goto out;
    }
    outcome(r, tc, 1, 0, VEIL_OK, NULL);

out:
    free(key);
    free(iv);
    free(aad);
    free(msg);
    free(ct);
    free(tag);
    free(pt);
    free(buf);
    free(ct2);
}

static void aes_group(run *r, const cJSON *g, size_t gi)
{
    const cJSON *tc;

    (void)gi;
    cJSON_ArrayForEach(tc, cJSON_GetObjectItemCaseSensitive(g, "tests"))
        aes_case(r, tc);
}

/* ---- RSA-OAEP ----------------------------------------------------------- */

static void oaep_label(const run *r, size_t gi, char *out, size_t size)
{
    snprintf(out, size, "wp-%s-g%zu-%ld", r->spec->tag, gi, (long)getpid());
}

static void oaep_id(const run *r, size_t gi, unsigned char id[8])
{
    unsigned long pid = (unsigned long)getpid();

    id[0] = 'w';
    id[1] = 'p';
    id[2] = (unsigned char)(pid >> 16);
    id[3] = (unsigned char)(pid >> 8);
    id[4] = (unsigned char)pid;
    id[5] = (unsigned char)(r->spec - files);
    id[6] = (unsigned char)(gi >> 8);
    id[7] = (unsigned char)gi;
}

/* Returns 0, or -1 when the path does not fit. */
static int oaep_dir(const run *r, size_t gi, char *out, size_t size)
{
    int n = snprintf(out, size, "%s/wp-%s-g%zu-%ld", env.test_dir,
                     r->spec->tag, gi, (long)getpid());

    return n < 0 || (size_t)n >= size ? -1 : 0;
}

static int write_key_dir(const char *dir, const char *pem);
static void remove_key_dir(const char *dir);

/* The group's private key as PKCS#8 PEM, made from privateKeyPkcs8 (the
 * one encoding every file states the same way; some files' privateKeyPem
 * holds PKCS#1 under a PKCS#8 header).  Freed with free(). */
static char *group_pem(const cJSON *g)
{
    size_t der_len;
    unsigned char *der = field_hex(g, "privateKeyPkcs8", &der_len);
    const unsigned char *p = der;
    EVP_PKEY *pkey = der ? d2i_AutoPrivateKey(NULL, &p, (long)der_len) : NULL;
    BIO *bio = BIO_new(BIO_s_secmem());
    char *pem = NULL, *data;
    long n;

    if (pkey && bio &&
        PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL) &&
        (n = BIO_get_mem_data(bio, &data)) > 0 && (pem = malloc((size_t)n + 1))) {
        memcpy(pem, data, (size_t)n);
        pem[n] = '\0';
    }
    BIO_free(bio);
    EVP_PKEY_free(pkey);
    if (der) {
        OPENSSL_cleanse(der, der_len);
        free(der);
    }
    return pem;
}

/* tpm2-pkcs11: imports the group's key with tpm2_ptool, as an operator
 * would (the token refuses C_CreateObject for private keys).  The
 * throwaway test PIN goes on tpm2_ptool's command line: it takes it no
 * other way. */
static int tpm_import(const run *r, const cJSON *g, size_t gi,
                      const char *label)
{
    char *pem = group_pem(g);
    char dir[PATH_MAX], cmd[3 * PATH_MAX + 512];
    int n, st;

    n = snprintf(dir, sizeof dir, "%s/tpm-%s-g%zu", env.test_dir,
                 r->spec->tag, gi);
    if (pem == NULL || n < 0 || (size_t)n >= sizeof dir ||
        write_key_dir(dir, pem) != 0) {
        free(pem);
        return -1;
    }
    free(pem);
    n = snprintf(cmd, sizeof cmd,
                 "tpm2_ptool import --label='%s' --key-label='%s' "
                 "--userpin=\"$(cat '%s')\" --privkey='%s/private_key.pem' "
                 "--algorithm=rsa >>'%s/tpm2-import.log' 2>&1",
                 env.tpm_token, label, env.pin_file, dir, env.test_dir);
    st = n > 0 && (size_t)n < sizeof cmd ? system(cmd) : -1;
    remove_key_dir(dir);
    if (st != 0)
        printf("  ERROR %s via %s: group %zu: tpm2_ptool import failed "
               "(status %d; see tpm2-import.log)\n",
               r->spec->name, prov_names[r->prov], gi, st);
    return st == 0 ? 0 : -1;
}

/* Whether a group's key can go into this provider; *why says why not. */
static int group_fits(const run *r, const cJSON *g, const char **why)
{
    const cJSON *ks = cJSON_GetObjectItemCaseSensitive(g, "keySize");
    const cJSON *pk = cJSON_GetObjectItemCaseSensitive(g, "privateKey");
    const char *sha = tu_json_str(g, "sha"), *mgf = tu_json_str(g, "mgf");
    const char *mgf_sha = tu_json_str(g, "mgfSha");

    /* veil_oaep carries one hash for OAEP and MGF1, SHA-256 or SHA-1. */
    if (sha == NULL || mgf == NULL || mgf_sha == NULL ||
        (strcmp(sha, "SHA-256") != 0 && strcmp(sha, "SHA-1") != 0) ||
        strcmp(mgf, "MGF1") != 0 || strcmp(mgf_sha, sha) != 0) {
        *why = "OAEP parameters outside veil's API (hash = MGF1 hash, "
               "SHA-256 or SHA-1)";
        return 0;
    }
    if (!IS_TOKEN(r->prov))
        return 1;
    if (cJSON_GetObjectItemCaseSensitive(pk, "otherPrimeInfos") != NULL ||
        strstr(r->spec->name, "three_primes") != NULL) {
        *why = "a three-prime RSA key: PKCS#11 has no attributes for more "
               "than two primes, so no token can hold it";
        return 0;
    }
    if (IS_TPM(r->prov) && (!cJSON_IsNumber(ks) ||
                            (ks->valueint != 1024 && ks->valueint != 2048))) {
        /* The vectors' keys must be imported, and tpm2_ptool import (over
         * tpm2-tools' tpm2_import) takes RSA keys of 1024 and 2048 bits
         * only ("RSA key-size 3072 is not supported"). */
        *why = "tpm2_ptool import takes RSA keys of 1024 and 2048 bits only";
        return 0;
    }
    return 1;
}

/* Tokens: imports every group's key that fits, before the engine is
 * created (so the two never hold the module at once): SoftHSM2 through
 * our own PKCS#11 session, tpm2-pkcs11 with tpm2_ptool import. */
static void oaep_import_all(run *r, const cJSON *groups)
{
    const cJSON *g;
    tu_p11 *t = NULL;
    size_t gi = 0;

    if (r->prov == PROV_SOFTHSM) {
        t = tu_p11_open(env.module, env.token, env.pin_file);
        CHECK(t != NULL, "cannot open token \"%s\" for key import", env.token);
        if (t == NULL)
            return;
    }
    cJSON_ArrayForEach(g, groups)
    {
        size_t der_len;
        unsigned char *der = NULL;
        const unsigned char *p;
        EVP_PKEY *pkey = NULL;
        unsigned char id[8];
        char label[128];
        const char *why;
        CK_OBJECT_HANDLE h;

        if (!group_fits(r, g, &why)) {
            gi++;
            continue;
        }
        oaep_label(r, gi, label, sizeof label);
        oaep_id(r, gi, id);
        if (r->prov == PROV_SOFTHSM) {
            der = field_hex(g, "privateKeyPkcs8", &der_len);
            p = der;
            if (der != NULL)
                pkey = d2i_AutoPrivateKey(NULL, &p, (long)der_len);
            CHECK(pkey != NULL, "%s group %zu: cannot parse privateKeyPkcs8",
                  r->spec->name, gi);
            if (pkey != NULL) {
                h = tu_p11_import_rsa_private(t, pkey, label, id, sizeof id);
                CHECK(h != CK_INVALID_HANDLE,
                      "%s group %zu: key import failed", r->spec->name, gi);
                EVP_PKEY_free(pkey);
            }
            if (der != NULL) {
                OPENSSL_cleanse(der, der_len);
                free(der);
            }
        } else {
            CHECK(tpm_import(r, g, gi, label) == 0,
                  "%s group %zu: tpm2_ptool import failed", r->spec->name,
                  gi);
        }
        gi++;
    }
    tu_p11_close(t);
}

/* SoftHSM2: removes the imported objects after the engine is gone (the
 * TPM's store lives in the test directory and goes with it). */
static void oaep_cleanup_all(run *r, size_t n_groups)
{
    tu_p11 *t;
    size_t gi;

    if (r->prov != PROV_SOFTHSM)
        return;
    t = tu_p11_open(env.module, env.token, env.pin_file);
    if (t == NULL)
        return;
    for (gi = 0; gi < n_groups; gi++) {
        char label[128];

        oaep_label(r, gi, label, sizeof label);
        tu_p11_destroy_label(t, label);
    }
    tu_p11_close(t);
}

/* Software: private_key.pem (0600) in a fresh directory. */
static int write_key_dir(const char *dir, const char *pem)
{
    char path[PATH_MAX];
    size_t len = strlen(pem), off = 0;
    int fd;

    if (mkdir(dir, 0700) != 0) {
        fprintf(stderr, "mkdir %s: %s\n", dir, strerror(errno));
        return -1;
    }
    if ((size_t)snprintf(path, sizeof path, "%s/private_key.pem", dir) >=
        sizeof path)
        return -1;
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "create %s: %s\n", path, strerror(errno));
        return -1;
    }
    while (off < len) {
        ssize_t w = write(fd, pem + off, len - off);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            fprintf(stderr, "write %s: %s\n", path, strerror(errno));
            close(fd);
            return -1;
        }
        off += (size_t)w;
    }
    if (close(fd) != 0)
        return -1;
    return 0;
}

static void remove_key_dir(const char *dir)
{
    char path[PATH_MAX];

    if ((size_t)snprintf(path, sizeof path, "%s/private_key.pem", dir) <
        sizeof path)
        unlink(path);
    rmdir(dir);
}

/* A fresh ciphertext of the key (empty label, the group's hash) must
 * decrypt: run after every invalid vector, on the same engine and key. */
static int good_decrypt(veil_engine *e, const veil_key *key, veil_hash hash)
{
    veil_oaep oaep = {hash, NULL, 0};
    uint8_t secret[32], ct[1024];
    size_t ct_len = sizeof ct;
    veil_secbuf *got = NULL;
    int ok;

    RAND_bytes(secret, sizeof secret);
    ok = veil_rsa_encrypt(e, key, &oaep, secret, sizeof secret, ct, &ct_len) ==
             VEIL_OK &&
         veil_rsa_decrypt(e, key, &oaep, ct, ct_len, &got) == VEIL_OK &&
         veil_secbuf_len(got) == sizeof secret &&
         memcmp(veil_secbuf_data(got), secret, sizeof secret) == 0;
    veil_secbuf_free(got);
    return ok;
}

static void recheck(run *r, const veil_key *key, veil_hash hash,
                    const cJSON *tc)
{
    r->recheck++;
    if (good_decrypt(r->e, key, hash)) {
        r->recheck_ok++;
        return;
    }
    printf("  MISMATCH %s via %s: after tcId %d a known-good ciphertext no "
           "longer decrypts: %s\n",
           r->spec->name, prov_names[r->prov], tc_id(tc),
           veil_last_error()->message);
    CHECK(0, "%s via %s: a good decryption failed after invalid tcId %d",
          r->spec->name, prov_names[r->prov], tc_id(tc));
}

static void oaep_case(run *r, const veil_key *key, const veil_oaep *base,
                      const cJSON *tc)
{
    size_t ct_len, label_len, msg_len;
    unsigned char *ct = field_hex(tc, "ct", &ct_len);
    unsigned char *label = field_hex(tc, "label", &label_len);
    unsigned char *msg = field_hex(tc, "msg", &msg_len);
    veil_oaep oaep = *base;
    veil_secbuf *sb = NULL;
    int valid = strcmp(result_of(tc), "valid") == 0;
    int invalid = strcmp(result_of(tc), "invalid") == 0;
    char why[WHY_LEN];
    veil_rc rc;

    if (!ct || !label || !msg) {
        vector_error(r, tc, "missing or bad hex field");
        goto out;
    }
    oaep.label = label;
    oaep.label_len = label_len;
    rc = veil_rsa_decrypt(r->e, key, &oaep, ct, ct_len, &sb);
    if (rc != VEIL_OK) {
        check_last_error(r, tc, rc, why, sizeof why);
        outcome(r, tc, 0, 0, rc, why);
        if (!valid && rc != VEIL_E_DECRYPT)
            notice(r, tc, "rejected with %s (expected VEIL_E_DECRYPT)",
                   veil_rc_name(rc));
        goto out;
    }
    if (!valid) {
        outcome(r, tc, 1, 0, VEIL_OK, "decrypt succeeded");
        goto out;
    }
    if (sb == NULL || veil_secbuf_len(sb) != msg_len ||
        (msg_len > 0 && memcmp(veil_secbuf_data(sb), msg, msg_len) != 0)) {
        outcome(r, tc, 0, 0, VEIL_E_CRYPTO, "decrypt: wrong message");
        goto out;
    }
    outcome(r, tc, 1, 0, VEIL_OK, NULL);

out:
    if (invalid && ct != NULL)
        recheck(r, key, base->hash, tc);
    veil_secbuf_free(sb);
    free(ct);
    free(label);
    if (msg != NULL) {
        OPENSSL_cleanse(msg, msg_len);
        free(msg);
    }
}

/* An OAEP hash outside the enum is refused with VEIL_E_ARG by every entry
 * point, before any provider sees it, and leaves the key usable. */
static void oaep_bad_hash(run *r, const veil_key *key, veil_hash hash)
{
    veil_oaep bad = {(veil_hash)7, NULL, 0};
    uint8_t secret[32] = {1}, ct[1024];
    size_t ct_len = sizeof ct;
    veil_secbuf *got = NULL;
    veil_rc enc, dec;

    enc = veil_rsa_encrypt(r->e, key, &bad, secret, sizeof secret, ct,
                           &ct_len);
    memset(ct, 0, sizeof ct);
    dec = veil_rsa_decrypt(r->e, key, &bad, ct, 256, &got);
    bad.hash = (veil_hash)-1;
    CHECK(enc == VEIL_E_ARG && dec == VEIL_E_ARG &&
              veil_rsa_decrypt(r->e, key, &bad, ct, 256, &got) == VEIL_E_ARG,
          "%s via %s: OAEP hash outside the enum: encrypt %s, decrypt %s "
          "(expected VEIL_E_ARG)",
          r->spec->name, prov_names[r->prov], veil_rc_name(enc),
          veil_rc_name(dec));
    CHECK(got == NULL, "decrypt with a bad hash returned output");
    veil_secbuf_free(got);
    CHECK(good_decrypt(r->e, key, hash),
          "%s via %s: key unusable after a refused OAEP hash",
          r->spec->name, prov_names[r->prov]);
}

/* 4 threads on one engine and key: three decrypt good ciphertexts, one
 * feeds the group's invalid vectors.  Every good decryption succeeds. */
struct thread_job {
    veil_engine *e;
    const veil_key *key;
    veil_hash hash;
    const cJSON *tests; /* NULL: good decryptions */
    unsigned done, ok;
};

static void *thread_main(void *arg)
{
    struct thread_job *j = arg;
    const cJSON *tc;

    if (j->tests == NULL) {
        for (int i = 0; i < 12; i++) {
            j->done++;
            j->ok += (unsigned)good_decrypt(j->e, j->key, j->hash);
        }
        return NULL;
    }
    cJSON_ArrayForEach(tc, j->tests)
    {
        size_t ct_len, label_len;
        unsigned char *ct, *label;
        veil_oaep oaep = {j->hash, NULL, 0};
        veil_secbuf *got = NULL;

        if (strcmp(result_of(tc), "invalid") != 0)
            continue;
        ct = field_hex(tc, "ct", &ct_len);
        label = field_hex(tc, "label", &label_len);
        oaep.label = label;
        oaep.label_len = label_len;
        j->done++;
        if (ct && label &&
            veil_rsa_decrypt(j->e, j->key, &oaep, ct, ct_len, &got) != VEIL_OK)
            j->ok++;
        veil_secbuf_free(got);
        free(ct);
        free(label);
    }
    return NULL;
}

static void oaep_threads(run *r, const veil_key *key, veil_hash hash,
                         const cJSON *tests)
{
    struct thread_job jobs[4];
    pthread_t th[4];
    unsigned good = 0, good_ok = 0;

    for (int i = 0; i < 4; i++) {
        jobs[i] = (struct thread_job){r->e, key, hash, i == 3 ? tests : NULL,
                                      0, 0};
        CHECK(pthread_create(&th[i], NULL, thread_main, &jobs[i]) == 0,
              "pthread_create");
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        if (i < 3) {
            good += jobs[i].done;
            good_ok += jobs[i].ok;
        }
    }
    printf("  threads %s via %s: %u/%u good decryptions while a fourth "
           "thread fed %u invalid ciphertexts (%u refused)\n",
           r->spec->name, prov_names[r->prov], good_ok, good, jobs[3].done,
           jobs[3].ok);
    CHECK(good_ok == good && good == 36,
          "%s via %s: %u of %u good decryptions failed beside invalid ones",
          r->spec->name, prov_names[r->prov], good - good_ok, good);
    CHECK(jobs[3].ok == jobs[3].done && jobs[3].done > 0,
          "%s via %s: an invalid ciphertext was accepted in the thread test",
          r->spec->name, prov_names[r->prov]);
}

static void oaep_group(run *r, const cJSON *g, size_t gi)
{
    const cJSON *tests = cJSON_GetObjectItemCaseSensitive(g, "tests");
    const cJSON *tc;
    const char *sha = tu_json_str(g, "sha");
    veil_oaep oaep = {VEIL_HASH_SHA256, NULL, 0};
    veil_key *key = NULL;
    char dir[PATH_MAX] = "", ref[PATH_MAX + 16] = "";
    const char *why = NULL;
    veil_rc rc = VEIL_E_ARG;

    if (!group_fits(r, g, &why)) {
        not_applicable(r, tests, why);
        return;
    }
    if (sha != NULL && strcmp(sha, "SHA-1") == 0)
        oaep.hash = VEIL_HASH_SHA1;

    if (r->prov == PROV_SOFTWARE) {
        char *pem = group_pem(g);

        if (oaep_dir(r, gi, dir, sizeof dir) != 0)
            dir[0] = '\0';
        if (pem == NULL || dir[0] == '\0' || write_key_dir(dir, pem) != 0) {
            free(pem);
            CHECK(0, "%s group %zu: cannot write %s/private_key.pem",
                  r->spec->name, gi, dir);
        } else {
            free(pem);
            snprintf(ref, sizeof ref, "dir:%s", dir);
            rc = veil_key_open(r->e, ref, &key);
        }
    } else {
        char label[128], esc_label[400], esc_token[400];

        oaep_label(r, gi, label, sizeof label);
        if (tu_uri_escape(label, esc_label, sizeof esc_label) == 0 &&
            tu_uri_escape(IS_TPM(r->prov) ? env.tpm_token : env.token,
                          esc_token, sizeof esc_token) == 0) {
            snprintf(ref, sizeof ref, "pkcs11:token=%s;object=%s;type=private",
                     esc_token, esc_label);
            rc = veil_key_open(r->e, ref, &key);
        }
    }
    if (key == NULL) {
        const veil_error *le = veil_last_error();
        char detail[400];

        printf("  ERROR %s via %s: group %zu: veil_key_open(\"%s\") failed: "
               "%s: %s\n",
               r->spec->name, prov_names[r->prov], gi, ref, veil_rc_name(rc),
               le->message);
        CHECK(0, "%s group %zu: veil_key_open failed: %s", r->spec->name, gi,
              veil_rc_name(rc));
        snprintf(detail, sizeof detail, "key could not be opened (%s)",
                 veil_rc_name(rc));
        cJSON_ArrayForEach(tc, tests)
            outcome(r, tc, 0, 0, rc, detail);
    } else {
        cJSON_ArrayForEach(tc, tests)
            oaep_case(r, key, &oaep, tc);
        if (gi == 0)
            oaep_bad_hash(r, key, oaep.hash);
        if (gi == 0 && r->spec->threads)
            oaep_threads(r, key, oaep.hash, tests);
    }
    veil_key_free(key);
    if (dir[0] != '\0')
        remove_key_dir(dir);
}

/* ---- HKDF --------------------------------------------------------------- */

static void hkdf_case(run *r, const cJSON *tc)
{
    size_t ikm_len, salt_len, info_len, okm_len, size;
    unsigned char *ikm = field_hex(tc, "ikm", &ikm_len);
    unsigned char *salt = field_hex(tc, "salt", &salt_len);
    unsigned char *info = field_hex(tc, "info", &info_len);
    unsigned char *okm = field_hex(tc, "okm", &okm_len);
    const cJSON *jsize = cJSON_GetObjectItemCaseSensitive(tc, "size");
    unsigned char *out = NULL;
    int valid = strcmp(result_of(tc), "valid") == 0;
    char why[WHY_LEN];
    veil_rc rc;

    if (!ikm || !salt || !info || !okm || !cJSON_IsNumber(jsize) ||
        jsize->valuedouble < 0 || jsize->valuedouble > 1e6) {
        vector_error(r, tc, "missing or bad field");
        goto out;
    }
    size = (size_t)jsize->valuedouble;
    out = malloc(size ? size : 1);
    if (out == NULL) {
        vector_error(r, tc, "out of memory");
        goto out;
    }
    rc = veil_hkdf_sha256(r->e, salt, salt_len, ikm, ikm_len, info, info_len,
                          out, size);
    if (rc != VEIL_OK) {
        check_last_error(r, tc, rc, why, sizeof why);
        outcome(r, tc, 0, rc == VEIL_E_ARG, rc, why);
        if (!valid && rc != VEIL_E_ARG)
            notice(r, tc, "rejected with %s (expected VEIL_E_ARG)",
                   veil_rc_name(rc));
        goto out;
    }
    if (!valid) {
        outcome(r, tc, 1, 0, VEIL_OK, "derivation succeeded");
        goto out;
    }
    if (okm_len != size || memcmp(out, okm, size) != 0) {
        outcome(r, tc, 0, 0, VEIL_E_CRYPTO, "wrong output keying material");
        goto out;
    }
    outcome(r, tc, 1, 0, VEIL_OK, NULL);

out:
    free(ikm);
    free(salt);
    free(info);
    free(okm);
    free(out);
}

static void hkdf_group(run *r, const cJSON *g, size_t gi)
{
    const cJSON *tc;

    (void)gi;
    cJSON_ArrayForEach(tc, cJSON_GetObjectItemCaseSensitive(g, "tests"))
        hkdf_case(r, tc);
}

/* ---- ECDSA -------------------------------------------------------------- */

static void ecdsa_case(run *r, const veil_key *key, const cJSON *tc)
{
    size_t msg_len, sig_len;
    unsigned char *msg = field_hex(tc, "msg", &msg_len);
    unsigned char *sig = field_hex(tc, "sig", &sig_len);
    int valid = strcmp(result_of(tc), "valid") == 0;
    char why[WHY_LEN];
    veil_rc rc;

    if (!msg || !sig) {
        vector_error(r, tc, "missing or bad hex field");
        goto out;
    }
    rc = veil_ecdsa_verify(r->e, key, msg, msg_len, sig, sig_len);
    if (rc != VEIL_OK) {
        check_last_error(r, tc, rc, why, sizeof why);
        outcome(r, tc, 0, 0, rc, why);
        if (!valid && rc != VEIL_E_VERIFY)
            notice(r, tc, "rejected with %s (expected VEIL_E_VERIFY)",
                   veil_rc_name(rc));
        goto out;
    }
    outcome(r, tc, 1, 0, VEIL_OK, valid ? NULL : "signature verified");

out:
    free(msg);
    free(sig);
}

static void ecdsa_group(run *r, const cJSON *g, size_t gi)
{
    const cJSON *tests = cJSON_GetObjectItemCaseSensitive(g, "tests");
    const cJSON *tc;
    size_t der_len;
    unsigned char *der = field_hex(g, "publicKeyDer", &der_len);
    const char *sha = tu_json_str(g, "sha");
    veil_key *key = NULL;
    veil_rc rc;

    if (der == NULL || sha == NULL || strcmp(sha, "SHA-256") != 0) {
        /* The API verifies over SHA-256 only. */
        cJSON_ArrayForEach(tc, tests)
            outcome(r, tc, 0, 1, VEIL_E_ARG,
                    der ? "hash outside the API" : "no publicKeyDer");
        free(der);
        return;
    }
    rc = veil_key_from_public(r->e, der, der_len, &key);
    if (rc != VEIL_OK) {
        char detail[400];

        snprintf(detail, sizeof detail, "public key refused (%s: %s)",
                 veil_rc_name(rc), veil_last_error()->message);
        if (rc != VEIL_E_KEY)
            printf("  note %s via %s: group %zu: veil_key_from_public "
                   "returned %s (expected VEIL_E_KEY)\n",
                   r->spec->name, prov_names[r->prov], gi, veil_rc_name(rc));
        cJSON_ArrayForEach(tc, tests)
            outcome(r, tc, 0, 1, rc, detail);
    } else {
        cJSON_ArrayForEach(tc, tests)
            ecdsa_case(r, key, tc);
    }
    veil_key_free(key);
    free(der);
}

/* ---- driver ------------------------------------------------------------- */

static veil_rc make_engine(prov_kind prov, veil_engine **e)
{
    veil_engine_config cfg;
    char token_uri[512], esc[400];

    memset(&cfg, 0, sizeof cfg);
    cfg.log = log_cb;
    cfg.log_level = VEIL_LOG_DEBUG;
    if (IS_TOKEN(prov)) {
        if (tu_uri_escape(IS_TPM(prov) ? env.tpm_token : env.token, esc,
                          sizeof esc) != 0)
            return VEIL_E_ARG;
        snprintf(token_uri, sizeof token_uri, "pkcs11:token=%s", esc);
        cfg.pkcs11_module = IS_TPM(prov) ? env.tpm_module : env.module;
        cfg.default_token = token_uri;
        cfg.pin.kind = VEIL_PIN_FILE;
        cfg.pin.where = env.pin_file;
        if (prov != PROV_TPM_SWPUB)
            cfg.flags = VEIL_ENGINE_PUBLIC_IN_TOKEN |
                        VEIL_ENGINE_SYMMETRIC_IN_TOKEN;
    }
    return veil_engine_new(&cfg, e);
}

/* Prints what the default token offers; asserts that what the file needs
 * really runs in the token (otherwise "via softhsm2" would be a lie). */
static void check_token_caps(run *r)
{
    veil_caps caps;
    veil_rc rc;
    unsigned need = 0;

    memset(&caps, 0, sizeof caps);
    rc = veil_engine_caps(r->e, NULL, &caps);
    CHECK(rc == VEIL_OK, "veil_engine_caps(default token): %s",
          veil_rc_name(rc));
    if (rc != VEIL_OK)
        return;
    if (r->spec->kind == K_AES)
        need = VEIL_CAP_AES_GCM;
    else if (r->spec->kind == K_ECDSA)
        need = VEIL_CAP_ECDSA;
    else if (r->spec->kind == K_OAEP)
        need = VEIL_CAP_RSA_RAW;
    if ((caps.mechs & need) != need)
        printf("  ERROR %s via %s: token \"%s\" (%s) lacks caps 0x%x "
               "(has 0x%x)\n",
               r->spec->name, prov_names[r->prov], env.token,
               caps.description, need, caps.mechs);
    CHECK((caps.mechs & need) == need,
          "%s: default token lacks capability 0x%x (has 0x%x)",
          r->spec->name, need, caps.mechs);
}

static void print_codes(const run *r)
{
    char line[512];
    size_t off = 0;
    unsigned i;

    for (i = 0; i < RC_SLOTS; i++) {
        int n;

        if (r->codes[i] == 0)
            continue;
        n = snprintf(line + off, sizeof line - off, "%s%s=%u",
                     off ? ", " : "", veil_rc_name((veil_rc)i), r->codes[i]);
        if (n < 0 || (size_t)n >= sizeof line - off)
            break;
        off += (size_t)n;
    }
    if (off > 0)
        printf("  %s via %s: rejection codes: %s\n", r->spec->name,
               prov_names[r->prov], line);
}

static void run_file(prov_kind prov, const file_spec *spec)
{
    char path[PATH_MAX];
    cJSON *json;
    const cJSON *groups, *g, *jn;
    run r;
    size_t gi = 0, n_groups;
    long expected;
    veil_rc rc;

    memset(&r, 0, sizeof r);
    r.prov = prov;
    r.spec = spec;
    logs_clear();
    printf("\n"); /* CUnit's "Test: ..." line has no newline */

    snprintf(path, sizeof path, "%s/%s", tu_vectors_dir(), spec->name);
    json = tu_json_file(path);
    CHECK(json != NULL, "cannot load %s", path);
    if (json == NULL)
        return;
    groups = cJSON_GetObjectItemCaseSensitive(json, "testGroups");
    jn = cJSON_GetObjectItemCaseSensitive(json, "numberOfTests");
    expected = cJSON_IsNumber(jn) ? (long)jn->valuedouble : -1;
    n_groups = (size_t)cJSON_GetArraySize(groups);
    CHECK(cJSON_IsArray(groups) && expected > 0,
          "%s: no testGroups or numberOfTests", spec->name);

    if (IS_TPM(prov) && spec->tpm_na != NULL) {
        cJSON_ArrayForEach(g, groups)
        {
            const cJSON *tc;

            cJSON_ArrayForEach(tc, cJSON_GetObjectItemCaseSensitive(g, "tests"))
            {
                r.run++;
                r.na++;
            }
        }
        printf("  not applicable %s via %s: all %u cases: %s\n", spec->name,
               prov_names[prov], r.na, spec->tpm_na);
        goto report;
    }
    if (spec->kind == K_OAEP && IS_TOKEN(prov))
        oaep_import_all(&r, groups);

    rc = make_engine(prov, &r.e);
    if (rc != VEIL_OK) {
        printf("  ERROR %s via %s: veil_engine_new: %s: %s\n", spec->name,
               prov_names[prov], veil_rc_name(rc),
               veil_last_error()->message);
        CHECK(0, "veil_engine_new (%s): %s", prov_names[prov],
              veil_rc_name(rc));
        r.e = NULL;
    } else {
        if (prov == PROV_SOFTHSM && spec->kind != K_HKDF)
            check_token_caps(&r);
        if (prov == PROV_TPM && spec->kind == K_OAEP)
            check_token_caps(&r);
        cJSON_ArrayForEach(g, groups)
        {
            switch (spec->kind) {
            case K_AES:
                aes_group(&r, g, gi);
                break;
            case K_OAEP:
                oaep_group(&r, g, gi);
                break;
            case K_HKDF:
                hkdf_group(&r, g, gi);
                break;
            case K_ECDSA:
                ecdsa_group(&r, g, gi);
                break;
            }
            gi++;
        }
    }
    veil_engine_free(r.e);

    if (spec->kind == K_OAEP && IS_TOKEN(prov))
        oaep_cleanup_all(&r, n_groups);

report:
    printf("wycheproof %s via %s: %u/%u valid accepted, %u/%u invalid "
           "rejected, %u acceptable, %u not applicable",
           spec->name, prov_names[prov], r.valid_ok, r.valid, r.invalid_rej,
           r.invalid, r.acceptable, r.na);
    if (r.api_rej)
        printf(" (%u rejected by API)", r.api_rej);
    if (r.recheck)
        printf("; %u/%u good decryptions after invalid vectors",
               r.recheck_ok, r.recheck);
    printf("\n");
    CHECK(r.recheck_ok == r.recheck,
          "%s via %s: %u good decryptions failed after invalid vectors",
          spec->name, prov_names[prov], r.recheck - r.recheck_ok);
    if (prov == PROV_TPM && spec->kind == K_ECDSA) {
        /* The TPM cannot hold an EC public key: software, said once. */
        unsigned said = 0;

        for (size_t i = 0; i < logs.n; i++)
            if (strstr(logs.v[i].text, "cannot hold an EC public key") &&
                logs.v[i].level == VEIL_LOG_INFO)
                said++;
        CHECK(said == 1,
              "%s via %s: the software fallback for EC public keys was "
              "logged %u times (expected once)",
              spec->name, prov_names[prov], said);
    }
    print_codes(&r);

    CHECK(r.valid_ok == r.valid, "%s via %s: %u of %u valid cases failed",
          spec->name, prov_names[prov], r.valid - r.valid_ok, r.valid);
    CHECK(r.invalid_rej == r.invalid,
          "%s via %s: %u of %u invalid cases accepted", spec->name,
          prov_names[prov], r.invalid - r.invalid_rej, r.invalid);
    if ((long)r.run != expected)
        printf("  ERROR %s via %s: ran %u cases, numberOfTests is %ld\n",
               spec->name, prov_names[prov], r.run, expected);
    CHECK((long)r.run == expected, "%s via %s: ran %u of %ld cases",
          spec->name, prov_names[prov], r.run, expected);
    CHECK(!logs.lost, "log capture lost lines (out of memory)");

    if (prov == PROV_SOFTHSM && r.e != NULL && spec->hkdf_sw_log) {
        const char *l = logs_find(VEIL_LOG_DEBUG, "hkdf", "software");

        if (l == NULL)
            printf("  ERROR %s via %s: no debug log line mentions HKDF "
                   "running in software\n",
                   spec->name, prov_names[prov]);
        CHECK(l != NULL, "%s: no debug line about HKDF in software",
              spec->name);
    }
    if (prov == PROV_SOFTHSM && r.e != NULL && spec->raw_rsa_log) {
        /* at info: auditors want to see the host-side OAEP decoding */
        const char *l = logs_find(VEIL_LOG_INFO, "RSA_X_509", NULL);

        if (l == NULL)
            l = logs_find(VEIL_LOG_INFO, "raw", NULL);
        if (l == NULL)
            printf("  ERROR %s via %s: no info log line mentions raw RSA "
                   "(CKM_RSA_X_509)\n",
                   spec->name, prov_names[prov]);
        CHECK(l != NULL, "%s: no info line about raw RSA in the token",
              spec->name);
    }
    cJSON_Delete(json);
    logs_clear();
}

/* One CUnit test per file and provider. */
#define WP_TESTS(prefix, prov)                                                \
    static void prefix##0(void) { run_file(prov, &files[0]); }              \
    static void prefix##1(void) { run_file(prov, &files[1]); }              \
    static void prefix##2(void) { run_file(prov, &files[2]); }              \
    static void prefix##3(void) { run_file(prov, &files[3]); }              \
    static void prefix##4(void) { run_file(prov, &files[4]); }              \
    static void prefix##5(void) { run_file(prov, &files[5]); }              \
    static void prefix##6(void) { run_file(prov, &files[6]); }              \
    static void prefix##7(void) { run_file(prov, &files[7]); }              \
    static void prefix##8(void) { run_file(prov, &files[8]); }              \
    static void prefix##9(void) { run_file(prov, &files[9]); }              \
    static void prefix##10(void) { run_file(prov, &files[10]); }            \
    static void prefix##11(void) { run_file(prov, &files[11]); }            \
    static const tu_test prefix##tests[] = {                                \
        {"aes_gcm", prefix##0},                                             \
        {"rsa_oaep_2048_sha256", prefix##1},                                \
        {"rsa_oaep_3072_sha256", prefix##2},                                \
        {"rsa_oaep_4096_sha256", prefix##3},                                \
        {"rsa_oaep_2048_sha1", prefix##4},                                  \
        {"rsa_oaep_misc", prefix##5},                                       \
        {"rsa_oaep_misc_sha1_mgf1sha256", prefix##6},                       \
        {"rsa_three_primes_oaep_2048_sha1", prefix##7},                     \
        {"rsa_three_primes_oaep_3072_sha224", prefix##8},                   \
        {"rsa_three_primes_oaep_4096_sha256", prefix##9},                   \
        {"hkdf_sha256", prefix##10},                                        \
        {"ecdsa_secp256r1_sha256", prefix##11},                             \
    };

_Static_assert(N_FILES == 12, "one WP_TESTS row per file");

WP_TESTS(sw_, PROV_SOFTWARE)
WP_TESTS(hsm_, PROV_SOFTHSM)
WP_TESTS(tpm_, PROV_TPM)

static void tpm_swpub_ecdsa(void)
{
    run_file(PROV_TPM_SWPUB, &files[11]);
}

static const tu_test tpm_swpub_tests[] = {
    {"ecdsa_secp256r1_sha256", tpm_swpub_ecdsa},
};

int main(void)
{
    int rc;

    /* A token suite that cannot start is a failure: tu_env exits 99. */
    (void)tu_env("SOFTHSM2_CONF");
    env.module = tu_env("VEIL_TEST_SOFTHSM_MODULE");
    env.token = tu_env("VEIL_TEST_SOFTHSM_TOKEN");
    env.pin_file = tu_env("VEIL_TEST_PIN_FILE");
    env.test_dir = tu_env("VEIL_TEST_DIR");
    env.tpm_module = tu_env("VEIL_TEST_TPM_MODULE");
    env.tpm_token = tu_env("VEIL_TEST_TPM_TOKEN");
    printf("wycheproof vectors: %s\n", tu_vectors_dir());

    TU_ADD_SUITE("wycheproof/software", NULL, NULL, sw_tests);
    TU_ADD_SUITE("wycheproof/softhsm2", NULL, NULL, hsm_tests);
    TU_ADD_SUITE("wycheproof/tpm2-pkcs11", NULL, NULL, tpm_tests);
    TU_ADD_SUITE("wycheproof/tpm2-pkcs11, public ops in software", NULL, NULL,
                 tpm_swpub_tests);
    rc = tu_run_tests();
    logs_free();
    return rc;
}
