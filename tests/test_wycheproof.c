/* Wycheproof conformance: every shared test-vector file (AES-GCM, RSA-OAEP,
 * HKDF-SHA256, ECDSA P-256) runs through the public veil API twice, once
 * with the software provider and once with an engine bound to a SoftHSM2
 * token (public-key and symmetric operations routed into the token).
 * Valid cases must succeed, invalid ones must fail, and every case of a
 * file must run.  Needs the environment set by tests/env/with-tokens.sh. */
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
#include <openssl/x509.h>

#include "testutil.h"
#include "veil/engine.h"

/* ---- configuration ------------------------------------------------------ */

typedef enum prov_kind { PROV_SOFTWARE = 0, PROV_SOFTHSM = 1 } prov_kind;

static const char *const prov_names[] = {"software", "softhsm2"};

typedef enum file_kind { K_AES, K_OAEP, K_HKDF, K_ECDSA } file_kind;

typedef struct file_spec {
    const char *name;
    file_kind kind;
    const char *tag;      /* short name for labels and directories */
    int hkdf_sw_log;      /* softhsm2: expect "HKDF in software" debug line */
    int raw_rsa_log;      /* softhsm2: expect "raw RSA" debug line */
} file_spec;

static const file_spec files[] = {
    {"aes_gcm_test.json", K_AES, "aes-gcm", 0, 0},
    {"rsa_oaep_2048_sha256_mgf1sha256_test.json", K_OAEP, "oaep-sha256-2048",
     0, 1},
    {"rsa_oaep_4096_sha256_mgf1sha256_test.json", K_OAEP, "oaep-sha256-4096",
     0, 1},
    {"rsa_oaep_2048_sha1_mgf1sha1_test.json", K_OAEP, "oaep-sha1-2048", 0, 0},
    {"hkdf_sha256_test.json", K_HKDF, "hkdf-sha256", 1, 0},
    {"ecdsa_secp256r1_sha256_test.json", K_ECDSA, "ecdsa-p256", 0, 0},
};

#define N_FILES (sizeof files / sizeof files[0])

/* From the test environment (tests/env/with-tokens.sh). */
static struct {
    const char *module;
    const char *token;
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

static void log_cb(void *ctx, veil_log_level level, const char *line)
{
    char *copy;

    (void)ctx;
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

/* SoftHSM2: imports every group's key into the token with our own
 * PKCS#11 session, before the engine is created (so the two never hold
 * the module at once). */
static void oaep_import_all(run *r, const cJSON *groups)
{
    const cJSON *g;
    tu_p11 *t;
    size_t gi = 0;

    t = tu_p11_open(env.module, env.token, env.pin_file);
    CHECK(t != NULL, "cannot open token \"%s\" for key import", env.token);
    if (t == NULL)
        return;
    cJSON_ArrayForEach(g, groups)
    {
        size_t der_len;
        unsigned char *der = field_hex(g, "privateKeyPkcs8", &der_len);
        const unsigned char *p = der;
        EVP_PKEY *pkey = NULL;
        unsigned char id[8];
        char label[128];
        CK_OBJECT_HANDLE h;

        oaep_label(r, gi, label, sizeof label);
        oaep_id(r, gi, id);
        if (der != NULL)
            pkey = d2i_AutoPrivateKey(NULL, &p, (long)der_len);
        CHECK(pkey != NULL, "%s group %zu: cannot parse privateKeyPkcs8",
              r->spec->name, gi);
        if (pkey != NULL) {
            h = tu_p11_import_rsa_private(t, pkey, label, id, sizeof id);
            CHECK(h != CK_INVALID_HANDLE, "%s group %zu: key import failed",
                  r->spec->name, gi);
            EVP_PKEY_free(pkey);
        }
        if (der != NULL) {
            OPENSSL_cleanse(der, der_len);
            free(der);
        }
        gi++;
    }
    tu_p11_close(t);
}

/* SoftHSM2: removes the imported objects after the engine is gone. */
static void oaep_cleanup_all(run *r, size_t n_groups)
{
    tu_p11 *t = tu_p11_open(env.module, env.token, env.pin_file);
    size_t gi;

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

static int hash_of(const char *name, veil_hash *h)
{
    if (name != NULL && strcmp(name, "SHA-256") == 0) {
        *h = VEIL_HASH_SHA256;
        return 0;
    }
    if (name != NULL && strcmp(name, "SHA-1") == 0) {
        *h = VEIL_HASH_SHA1;
        return 0;
    }
    return -1;
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
    veil_secbuf_free(sb);
    free(ct);
    free(label);
    if (msg != NULL) {
        OPENSSL_cleanse(msg, msg_len);
        free(msg);
    }
}

static void oaep_group(run *r, const cJSON *g, size_t gi)
{
    const cJSON *tests = cJSON_GetObjectItemCaseSensitive(g, "tests");
    const cJSON *tc;
    const char *sha = tu_json_str(g, "sha");
    const char *mgf_sha = tu_json_str(g, "mgfSha");
    const char *mgf = tu_json_str(g, "mgf");
    veil_oaep oaep = {VEIL_HASH_SHA256, NULL, 0};
    veil_key *key = NULL;
    char dir[PATH_MAX] = "", ref[PATH_MAX + 16] = "";
    veil_rc rc = VEIL_E_ARG;
    int api_ok;

    api_ok = hash_of(sha, &oaep.hash) == 0 && mgf != NULL &&
             strcmp(mgf, "MGF1") == 0 && mgf_sha != NULL && sha != NULL &&
             strcmp(mgf_sha, sha) == 0;
    if (!api_ok) {
        /* OAEP with a hash (or MGF hash) the API cannot express. */
        cJSON_ArrayForEach(tc, tests)
            outcome(r, tc, 0, 1, VEIL_E_ARG, "OAEP parameters outside the API");
        return;
    }

    if (r->prov == PROV_SOFTWARE) {
        const char *pem = tu_json_str(g, "privateKeyPem");

        if (oaep_dir(r, gi, dir, sizeof dir) != 0)
            dir[0] = '\0';
        if (pem == NULL || dir[0] == '\0' || write_key_dir(dir, pem) != 0) {
            CHECK(0, "%s group %zu: cannot write %s/private_key.pem",
                  r->spec->name, gi, dir);
        } else {
            snprintf(ref, sizeof ref, "dir:%s", dir);
            rc = veil_key_open(r->e, ref, &key);
        }
    } else {
        char label[128], esc_label[400], esc_token[400];

        oaep_label(r, gi, label, sizeof label);
        if (tu_uri_escape(label, esc_label, sizeof esc_label) == 0 &&
            tu_uri_escape(env.token, esc_token, sizeof esc_token) == 0) {
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
    if (prov == PROV_SOFTHSM) {
        if (tu_uri_escape(env.token, esc, sizeof esc) != 0)
            return VEIL_E_ARG;
        snprintf(token_uri, sizeof token_uri, "pkcs11:token=%s", esc);
        cfg.pkcs11_module = env.module;
        cfg.default_token = token_uri;
        cfg.pin.kind = VEIL_PIN_FILE;
        cfg.pin.where = env.pin_file;
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

    if (spec->kind == K_OAEP && prov == PROV_SOFTHSM)
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

    if (spec->kind == K_OAEP && prov == PROV_SOFTHSM)
        oaep_cleanup_all(&r, n_groups);

    printf("wycheproof %s via %s: %u/%u valid accepted, %u/%u invalid "
           "rejected, %u acceptable",
           spec->name, prov_names[prov], r.valid_ok, r.valid, r.invalid_rej,
           r.invalid, r.acceptable);
    if (r.api_rej)
        printf(" (%u rejected by API)", r.api_rej);
    printf("\n");
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
        const char *l = logs_find(VEIL_LOG_DEBUG, "RSA_X_509", NULL);

        if (l == NULL)
            l = logs_find(VEIL_LOG_DEBUG, "raw", NULL);
        if (l == NULL)
            printf("  ERROR %s via %s: no debug log line mentions raw RSA "
                   "(CKM_RSA_X_509)\n",
                   spec->name, prov_names[prov]);
        CHECK(l != NULL, "%s: no debug line about raw RSA in the token",
              spec->name);
    }
    cJSON_Delete(json);
    logs_clear();
}

#define WP_TEST(fn, prov, idx)                                              \
    static void fn(void)                                                    \
    {                                                                       \
        run_file(prov, &files[idx]);                                        \
    }

WP_TEST(test_sw_aes_gcm, PROV_SOFTWARE, 0)
WP_TEST(test_sw_oaep_sha256_2048, PROV_SOFTWARE, 1)
WP_TEST(test_sw_oaep_sha256_4096, PROV_SOFTWARE, 2)
WP_TEST(test_sw_oaep_sha1_2048, PROV_SOFTWARE, 3)
WP_TEST(test_sw_hkdf_sha256, PROV_SOFTWARE, 4)
WP_TEST(test_sw_ecdsa_p256, PROV_SOFTWARE, 5)
WP_TEST(test_hsm_aes_gcm, PROV_SOFTHSM, 0)
WP_TEST(test_hsm_oaep_sha256_2048, PROV_SOFTHSM, 1)
WP_TEST(test_hsm_oaep_sha256_4096, PROV_SOFTHSM, 2)
WP_TEST(test_hsm_oaep_sha1_2048, PROV_SOFTHSM, 3)
WP_TEST(test_hsm_hkdf_sha256, PROV_SOFTHSM, 4)
WP_TEST(test_hsm_ecdsa_p256, PROV_SOFTHSM, 5)

static const tu_test sw_tests[N_FILES] = {
    {"aes_gcm_test.json", test_sw_aes_gcm},
    {"rsa_oaep_2048_sha256_mgf1sha256_test.json", test_sw_oaep_sha256_2048},
    {"rsa_oaep_4096_sha256_mgf1sha256_test.json", test_sw_oaep_sha256_4096},
    {"rsa_oaep_2048_sha1_mgf1sha1_test.json", test_sw_oaep_sha1_2048},
    {"hkdf_sha256_test.json", test_sw_hkdf_sha256},
    {"ecdsa_secp256r1_sha256_test.json", test_sw_ecdsa_p256},
};

static const tu_test hsm_tests[N_FILES] = {
    {"aes_gcm_test.json", test_hsm_aes_gcm},
    {"rsa_oaep_2048_sha256_mgf1sha256_test.json", test_hsm_oaep_sha256_2048},
    {"rsa_oaep_4096_sha256_mgf1sha256_test.json", test_hsm_oaep_sha256_4096},
    {"rsa_oaep_2048_sha1_mgf1sha1_test.json", test_hsm_oaep_sha1_2048},
    {"hkdf_sha256_test.json", test_hsm_hkdf_sha256},
    {"ecdsa_secp256r1_sha256_test.json", test_hsm_ecdsa_p256},
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
    printf("wycheproof vectors: %s\n", tu_vectors_dir());

    TU_ADD_SUITE("wycheproof/software", NULL, NULL, sw_tests);
    TU_ADD_SUITE("wycheproof/softhsm2", NULL, NULL, hsm_tests);
    rc = tu_run_tests();
    logs_free();
    return rc;
}
