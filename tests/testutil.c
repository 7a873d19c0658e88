/* Shared helpers for the veil test programs (see testutil.h). */
#include "testutil.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/x509v3.h>
#include <p11-kit/p11-kit.h>

#include <CUnit/Basic.h>

/* automake: exit status 99 is a hard error (never a skip). */
#define TU_HARD_ERROR 99

/* ---- CUnit ------------------------------------------------------------- */

/* A tu_add_suite() failed since the last tu_run_tests(). */
static int tu_add_failed;

int tu_add_suite(const char *name, CU_InitializeFunc init, CU_CleanupFunc clean,
                 const tu_test *tests, size_t n)
{
    CU_pSuite s;

    if (tu_add_failed)
        return -1;
    if (!CU_registry_initialized() && CU_initialize_registry() != CUE_SUCCESS) {
        fprintf(stderr, "CUnit: cannot initialise the registry: %s\n",
                CU_get_error_msg());
        tu_add_failed = 1;
        return -1;
    }
    s = CU_add_suite(name, init, clean);
    if (!s) {
        fprintf(stderr, "CUnit: cannot add suite \"%s\": %s\n",
                name ? name : "(null)", CU_get_error_msg());
        tu_add_failed = 1;
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if (!CU_add_test(s, tests[i].name, tests[i].fn)) {
            fprintf(stderr, "CUnit: cannot add test \"%s\" to \"%s\": %s\n",
                    tests[i].name ? tests[i].name : "(null)", name,
                    CU_get_error_msg());
            tu_add_failed = 1;
            return -1;
        }
    return 0;
}

int tu_run_tests(void)
{
    unsigned failures;
    CU_ErrorCode err;

    if (tu_add_failed) {
        tu_add_failed = 0;
        CU_cleanup_registry();
        return 1;
    }
    if (!CU_registry_initialized()) {
        fprintf(stderr, "CUnit: no suites to run\n");
        return 1;
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    err = CU_basic_run_tests();
    failures = CU_get_number_of_failures() + CU_get_number_of_suites_failed();
    if (err == CUE_SUCCESS)
        err = CU_get_error();
    if (err != CUE_SUCCESS)
        fprintf(stderr, "CUnit error: %s\n", CU_get_error_msg());
    CU_cleanup_registry();
    return failures || err != CUE_SUCCESS ? 1 : 0;
}

/* ---- environment, data and files --------------------------------------- */

char *tu_env(const char *name)
{
    char *v = getenv(name);

    if (v == NULL || v[0] == '\0') {
        fprintf(stderr,
                "FATAL: environment variable %s is not set; run this test "
                "through tests/env/with-tokens.sh (make check does)\n",
                name);
        fflush(stderr);
        exit(TU_HARD_ERROR);
    }
    return v;
}

unsigned char *tu_hex(const char *hex, size_t *len)
{
    size_t n, i;
    unsigned char *out;

    if (hex == NULL || len == NULL)
        return NULL;
    n = strlen(hex);
    if (n % 2 != 0)
        return NULL;
    out = malloc(n / 2 > 0 ? n / 2 : 1);
    if (out == NULL)
        return NULL;
    out[0] = 0;
    for (i = 0; i < n / 2; i++) {
        int hi = veil_hex_digit((unsigned char)hex[2 * i]);
        int lo = veil_hex_digit((unsigned char)hex[2 * i + 1]);

        if (hi < 0 || lo < 0) {
            free(out);
            return NULL;
        }
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    *len = n / 2;
    return out;
}

char *tu_read_file(const char *path, size_t *len)
{
    FILE *fp;
    char *buf = NULL;
    size_t cap = 0, used = 0;

    fp = fopen(path, "rb");
    if (fp == NULL) {
        fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
        return NULL;
    }
    for (;;) {
        size_t got;

        if (cap - used < 4096) {
            size_t ncap = cap ? cap * 2 : 65536;
            char *nbuf = realloc(buf, ncap + 1);

            if (nbuf == NULL) {
                fprintf(stderr, "out of memory reading %s\n", path);
                free(buf);
                fclose(fp);
                return NULL;
            }
            buf = nbuf;
            cap = ncap;
        }
        got = fread(buf + used, 1, cap - used, fp);
        used += got;
        if (got == 0) {
            if (ferror(fp)) {
                fprintf(stderr, "cannot read %s: %s\n", path, strerror(errno));
                free(buf);
                fclose(fp);
                return NULL;
            }
            break;
        }
    }
    fclose(fp);
    buf[used] = '\0';
    if (len != NULL)
        *len = used;
    return buf;
}

cJSON *tu_json_file(const char *path)
{
    size_t len;
    char *text = tu_read_file(path, &len);
    cJSON *json;

    if (text == NULL)
        return NULL;
    json = cJSON_ParseWithLength(text, len);
    if (json == NULL) {
        const char *where = cJSON_GetErrorPtr();

        fprintf(stderr, "%s: JSON parse error near offset %ld\n", path,
                where != NULL && where >= text ? (long)(where - text) : -1L);
    }
    free(text);
    return json;
}

const char *tu_json_str(const cJSON *obj, const char *key)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);

    return cJSON_IsString(item) ? item->valuestring : NULL;
}

const char *tu_vectors_dir(void)
{
    static char dir[PATH_MAX];
    const char *srcdir = getenv("VEIL_SRCDIR");
    struct stat st;
    int n;

    if (dir[0] != '\0')
        return dir;
    n = snprintf(dir, sizeof dir, "%s/tests/data/wycheproof",
                 srcdir != NULL && srcdir[0] != '\0' ? srcdir : ".");
    if (n < 0 || (size_t)n >= sizeof dir) {
        fprintf(stderr, "FATAL: test vector path too long\n");
        exit(TU_HARD_ERROR);
    }
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr,
                "FATAL: Wycheproof vectors not found at %s (the tree's "
                "tests/data/wycheproof; is VEIL_SRCDIR the source tree?)\n",
                dir);
        fflush(stderr);
        exit(TU_HARD_ERROR);
    }
    return dir;
}

int tu_uri_escape(const char *in, char *out, size_t out_size)
{
    static const char hexd[] = "0123456789ABCDEF";
    size_t o = 0;

    for (; *in != '\0'; in++) {
        unsigned char c = (unsigned char)*in;
        int plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '-' || c == '.' ||
                    c == '_' || c == '~';

        if (plain) {
            if (o + 1 >= out_size)
                return -1;
            out[o++] = (char)c;
        } else {
            if (o + 3 >= out_size)
                return -1;
            out[o++] = '%';
            out[o++] = hexd[c >> 4];
            out[o++] = hexd[c & 15];
        }
    }
    if (o >= out_size)
        return -1;
    out[o] = '\0';
    return 0;
}

/* ---- PKCS#11 ------------------------------------------------------------ */

static void p11_report(const char *what, CK_RV rv)
{
    fprintf(stderr, "PKCS#11 %s failed: CKR 0x%lx (%s)\n", what,
            (unsigned long)rv, p11_kit_strerror(rv));
}

/* 1 when the space-padded 32-byte token label equals want. */
static int label_matches(const CK_UTF8CHAR field[32], const char *want)
{
    size_t n = strlen(want), i;

    if (n > 32 || memcmp(field, want, n) != 0)
        return 0;
    for (i = n; i < 32; i++)
        if (field[i] != ' ')
            return 0;
    return 1;
}

/* First line of the PIN file into pin (no newline); returns its length or
 * -1. */
static long read_pin(const char *pin_file, char *pin, size_t size)
{
    FILE *fp = fopen(pin_file, "r");
    size_t n;

    if (fp == NULL) {
        fprintf(stderr, "cannot open PIN file %s: %s\n", pin_file,
                strerror(errno));
        return -1;
    }
    if (fgets(pin, (int)size, fp) == NULL) {
        fprintf(stderr, "PIN file %s is empty\n", pin_file);
        fclose(fp);
        return -1;
    }
    fclose(fp);
    n = strcspn(pin, "\r\n");
    pin[n] = '\0';
    return (long)n;
}

tu_p11 *tu_p11_open(const char *module_path, const char *token_label,
                    const char *pin_file)
{
    tu_p11 *t;
    CK_C_INITIALIZE_ARGS args;
    CK_SLOT_ID *slots = NULL;
    CK_ULONG n_slots = 0, i;
    CK_RV rv;
    char pin[256];
    long pin_len;
    int found = 0;

    t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->session = CK_INVALID_HANDLE;
    t->f = p11_kit_module_load(module_path, P11_KIT_MODULE_UNMANAGED);
    if (t->f == NULL) {
        fprintf(stderr, "cannot load PKCS#11 module %s: %s\n", module_path,
                p11_kit_message() ? p11_kit_message() : "unknown error");
        free(t);
        return NULL;
    }

    memset(&args, 0, sizeof args);
    args.flags = CKF_OS_LOCKING_OK;
    rv = t->f->C_Initialize(&args);
    if (rv == CKR_OK) {
        t->initialized = 1;
    } else if (rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        p11_report("C_Initialize", rv);
        goto fail;
    }

    rv = t->f->C_GetSlotList(CK_TRUE, NULL, &n_slots);
    if (rv != CKR_OK) {
        p11_report("C_GetSlotList", rv);
        goto fail;
    }
    slots = calloc(n_slots ? n_slots : 1, sizeof *slots);
    if (slots == NULL)
        goto fail;
    rv = t->f->C_GetSlotList(CK_TRUE, slots, &n_slots);
    if (rv != CKR_OK) {
        p11_report("C_GetSlotList", rv);
        goto fail;
    }
    for (i = 0; i < n_slots && !found; i++) {
        CK_TOKEN_INFO ti;

        if (t->f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
            continue;
        if (label_matches(ti.label, token_label)) {
            t->slot = slots[i];
            found = 1;
        }
    }
    free(slots);
    slots = NULL;
    if (!found) {
        fprintf(stderr, "no token labelled \"%s\" in %s\n", token_label,
                module_path);
        goto fail;
    }

    rv = t->f->C_OpenSession(t->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL,
                             NULL, &t->session);
    if (rv != CKR_OK) {
        p11_report("C_OpenSession", rv);
        t->session = CK_INVALID_HANDLE;
        goto fail;
    }

    pin_len = read_pin(pin_file, pin, sizeof pin);
    if (pin_len < 0)
        goto fail;
    rv = t->f->C_Login(t->session, CKU_USER, (CK_UTF8CHAR_PTR)pin,
                       (CK_ULONG)pin_len);
    OPENSSL_cleanse(pin, sizeof pin);
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
        p11_report("C_Login", rv);
        goto fail;
    }
    return t;

fail:
    free(slots);
    tu_p11_close(t);
    return NULL;
}

void tu_p11_close(tu_p11 *t)
{
    if (t == NULL)
        return;
    if (t->f != NULL) {
        if (t->session != CK_INVALID_HANDLE)
            t->f->C_CloseSession(t->session);
        if (t->initialized)
            t->f->C_Finalize(NULL);
        p11_kit_module_release(t->f);
    }
    free(t);
}

/* One RSA component as big-endian bytes. */
typedef struct bn_bytes {
    unsigned char *p;
    size_t len;
} bn_bytes;

static int get_component(EVP_PKEY *pkey, const char *name, bn_bytes *out)
{
    BIGNUM *bn = NULL;
    int n;

    out->p = NULL;
    out->len = 0;
    if (EVP_PKEY_get_bn_param(pkey, name, &bn) != 1 || bn == NULL) {
        fprintf(stderr, "RSA key lacks component %s\n", name);
        return -1;
    }
    n = BN_num_bytes(bn);
    out->p = malloc(n > 0 ? (size_t)n : 1);
    if (out->p == NULL) {
        BN_clear_free(bn);
        return -1;
    }
    out->len = (size_t)BN_bn2bin(bn, out->p);
    BN_clear_free(bn);
    return 0;
}

static void wipe_component(bn_bytes *c)
{
    if (c->p != NULL) {
        OPENSSL_cleanse(c->p, c->len);
        free(c->p);
    }
    c->p = NULL;
    c->len = 0;
}

CK_OBJECT_HANDLE tu_p11_import_rsa_private(tu_p11 *t, EVP_PKEY *pkey,
                                           const char *label,
                                           const unsigned char *id,
                                           size_t id_len)
{
    enum { N, E, D, P, Q, DP, DQ, QINV, NCOMP };
    static const char *const names[NCOMP] = {
        OSSL_PKEY_PARAM_RSA_N,         OSSL_PKEY_PARAM_RSA_E,
        OSSL_PKEY_PARAM_RSA_D,         OSSL_PKEY_PARAM_RSA_FACTOR1,
        OSSL_PKEY_PARAM_RSA_FACTOR2,   OSSL_PKEY_PARAM_RSA_EXPONENT1,
        OSSL_PKEY_PARAM_RSA_EXPONENT2, OSSL_PKEY_PARAM_RSA_COEFFICIENT1,
    };
    bn_bytes c[NCOMP];
    CK_OBJECT_CLASS priv_class = CKO_PRIVATE_KEY, pub_class = CKO_PUBLIC_KEY;
    CK_KEY_TYPE key_type = CKK_RSA;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_OBJECT_HANDLE priv = CK_INVALID_HANDLE, pub = CK_INVALID_HANDLE;
    CK_RV rv;
    int i, ok = 1;

    memset(c, 0, sizeof c);
    if (t == NULL || pkey == NULL || label == NULL || id == NULL ||
        id_len == 0) {
        fprintf(stderr, "tu_p11_import_rsa_private: bad arguments\n");
        return CK_INVALID_HANDLE;
    }
    if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA) {
        fprintf(stderr, "tu_p11_import_rsa_private: not an RSA key\n");
        return CK_INVALID_HANDLE;
    }
    for (i = 0; i < NCOMP && ok; i++)
        if (get_component(pkey, names[i], &c[i]) != 0)
            ok = 0;

    if (ok) {
        CK_ATTRIBUTE tmpl[] = {
            {CKA_CLASS, &priv_class, sizeof priv_class},
            {CKA_KEY_TYPE, &key_type, sizeof key_type},
            {CKA_TOKEN, &yes, sizeof yes},
            {CKA_PRIVATE, &yes, sizeof yes},
            {CKA_SENSITIVE, &yes, sizeof yes},
            {CKA_EXTRACTABLE, &no, sizeof no},
            {CKA_DECRYPT, &yes, sizeof yes},
            {CKA_SIGN, &yes, sizeof yes},
            {CKA_LABEL, (void *)label, strlen(label)},
            {CKA_ID, (void *)id, id_len},
            {CKA_MODULUS, c[N].p, c[N].len},
            {CKA_PUBLIC_EXPONENT, c[E].p, c[E].len},
            {CKA_PRIVATE_EXPONENT, c[D].p, c[D].len},
            {CKA_PRIME_1, c[P].p, c[P].len},
            {CKA_PRIME_2, c[Q].p, c[Q].len},
            {CKA_EXPONENT_1, c[DP].p, c[DP].len},
            {CKA_EXPONENT_2, c[DQ].p, c[DQ].len},
            {CKA_COEFFICIENT, c[QINV].p, c[QINV].len},
        };

        rv = t->f->C_CreateObject(t->session, tmpl,
                                  sizeof tmpl / sizeof tmpl[0], &priv);
        if (rv != CKR_OK) {
            p11_report("C_CreateObject (RSA private key)", rv);
            priv = CK_INVALID_HANDLE;
            ok = 0;
        }
    }

    if (ok) {
        CK_ATTRIBUTE tmpl[] = {
            {CKA_CLASS, &pub_class, sizeof pub_class},
            {CKA_KEY_TYPE, &key_type, sizeof key_type},
            {CKA_TOKEN, &yes, sizeof yes},
            {CKA_PRIVATE, &no, sizeof no},
            {CKA_ENCRYPT, &yes, sizeof yes},
            {CKA_VERIFY, &yes, sizeof yes},
            {CKA_LABEL, (void *)label, strlen(label)},
            {CKA_ID, (void *)id, id_len},
            {CKA_MODULUS, c[N].p, c[N].len},
            {CKA_PUBLIC_EXPONENT, c[E].p, c[E].len},
        };

        rv = t->f->C_CreateObject(t->session, tmpl,
                                  sizeof tmpl / sizeof tmpl[0], &pub);
        if (rv != CKR_OK) {
            p11_report("C_CreateObject (RSA public key)", rv);
            t->f->C_DestroyObject(t->session, priv);
            priv = CK_INVALID_HANDLE;
            ok = 0;
        }
    }

    for (i = 0; i < NCOMP; i++)
        wipe_component(&c[i]);
    return ok ? priv : CK_INVALID_HANDLE;
}

int tu_p11_destroy_label(tu_p11 *t, const char *label)
{
    CK_ATTRIBUTE tmpl[] = {{CKA_LABEL, (void *)label, strlen(label)}};
    CK_OBJECT_HANDLE found[16];
    CK_ULONG n = 0;
    CK_RV rv;
    int destroyed = 0;

    /* Find first, destroy after: objects must not vanish mid-search. */
    for (;;) {
        CK_ULONG i;

        rv = t->f->C_FindObjectsInit(t->session, tmpl, 1);
        if (rv != CKR_OK) {
            p11_report("C_FindObjectsInit", rv);
            return -1;
        }
        rv = t->f->C_FindObjects(t->session, found,
                                 sizeof found / sizeof found[0], &n);
        t->f->C_FindObjectsFinal(t->session);
        if (rv != CKR_OK) {
            p11_report("C_FindObjects", rv);
            return -1;
        }
        if (n == 0)
            return destroyed;
        for (i = 0; i < n; i++) {
            rv = t->f->C_DestroyObject(t->session, found[i]);
            if (rv != CKR_OK) {
                p11_report("C_DestroyObject", rv);
                return -1;
            }
            destroyed++;
        }
    }
}

int tu_scratch_dir(const char *prefix, char *out, size_t size)
{
    const char *base = getenv("VEIL_TEST_DIR");

    if (!base || !*base)
        base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    if (snprintf(out, size, "%s/%s.XXXXXX", base, prefix) >= (int)size)
        return -1;
    return mkdtemp(out) ? 0 : -1;
}

/* ---- TLS test certificates --------------------------------------------- */

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ex;
    int ok;

    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    ex = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (ex == NULL)
        return 0;
    ok = X509_add_ext(cert, ex, -1);
    X509_EXTENSION_free(ex);
    return ok;
}

/* A certificate for key named cn, issued by issuer (NULL: itself), valid
 * for a day, with its subject key identifier; no other extension yet.
 * NULL on failure. */
static X509 *cert_new(EVP_PKEY *key, X509 *issuer, const char *cn, long serial)
{
    X509 *x = X509_new();
    X509_NAME *name;
    int ok;

    if (x == NULL)
        return NULL;
    name = X509_get_subject_name(x);
    ok = X509_set_version(x, 2) &&
         ASN1_INTEGER_set(X509_get_serialNumber(x), serial) &&
         X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
         X509_gmtime_adj(X509_getm_notAfter(x), 86400) &&
         X509_set_pubkey(x, key) &&
         X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                    (const unsigned char *)cn, -1, -1, 0) &&
         X509_set_issuer_name(x,
                              issuer ? X509_get_subject_name(issuer) : name) &&
         add_ext(x, issuer ? issuer : x, NID_subject_key_identifier, "hash");
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

X509 *tu_make_ek_cert(EVP_PKEY *key, EVP_PKEY *signer, X509 *issuer,
                      const char *manufacturer, long serial)
{
    static const char *const attrs[][2] = {
        {"2.23.133.2.1", NULL},            /* tpmManufacturer */
        {"2.23.133.2.2", "veil-test-tpm"}, /* tpmModel */
        {"2.23.133.2.3", "id:00010002"},   /* tpmVersion */
    };
    X509 *x = cert_new(key, issuer, "EK", serial);
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    GENERAL_NAME *g = GENERAL_NAME_new();
    X509_NAME *dn = X509_NAME_new();
    int ok = x && gens && g && dn;

    for (size_t i = 0; ok && i < sizeof attrs / sizeof attrs[0]; i++)
        ok = X509_NAME_add_entry_by_txt(
            dn, attrs[i][0], MBSTRING_UTF8,
            (const unsigned char *)(attrs[i][1] ? attrs[i][1] : manufacturer),
            -1, -1, 0);
    if (ok) {
        GENERAL_NAME_set0_value(g, GEN_DIRNAME, dn);
        dn = NULL;
        ok = sk_GENERAL_NAME_push(gens, g) > 0;
        if (ok)
            g = NULL;
    }
    ok = ok && add_ext(x, issuer, NID_basic_constraints, "critical,CA:FALSE") &&
         add_ext(x, issuer, NID_key_usage, "critical,keyEncipherment") &&
         add_ext(x, issuer, NID_ext_key_usage, "2.23.133.8.1") &&
         X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 1,
                           X509V3_ADD_DEFAULT) == 1 &&
         add_ext(x, issuer, NID_authority_key_identifier, "keyid:always") &&
         X509_sign(x, signer, EVP_sha256()) > 0;
    X509_NAME_free(dn);
    GENERAL_NAME_free(g);
    GENERAL_NAMES_free(gens);
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

X509 *tu_make_cert(EVP_PKEY *key, EVP_PKEY *signer, X509 *issuer,
                   const char *cn, long serial)
{
    X509 *x = cert_new(key, issuer, cn, serial);
    int ca = issuer == NULL, ok = x != NULL;

    if (x == NULL)
        return NULL;
    if (ca) {
        ok = ok && add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE") &&
             add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        ok = ok &&
             add_ext(x, issuer, NID_basic_constraints, "critical,CA:FALSE") &&
             add_ext(x, issuer, NID_key_usage, "critical,digitalSignature") &&
             add_ext(x, issuer, NID_ext_key_usage, "serverAuth") &&
             add_ext(x, issuer, NID_subject_alt_name, "IP:127.0.0.1") &&
             add_ext(x, issuer, NID_authority_key_identifier, "keyid:always");
    }
    ok = ok && X509_sign(x, signer, EVP_sha256()) > 0;
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

int tu_softhsm_uri(char *out, size_t out_size)
{
    const char *label = tu_env("VEIL_TEST_SOFTHSM_TOKEN");
    char esc[192];
    int n;

    if (strncmp(label, "pkcs11:", 7) == 0)
        n = snprintf(out, out_size, "%s", label);
    else if (tu_uri_escape(label, esc, sizeof esc) == 0)
        n = snprintf(out, out_size, "pkcs11:token=%s", esc);
    else
        return -1;
    return n < 0 || (size_t)n >= out_size ? -1 : 0;
}

veil_rc tu_softhsm_engine(veil_engine **out)
{
    veil_engine_config cfg = {0};

    cfg.pkcs11_module = tu_env("VEIL_TEST_SOFTHSM_MODULE");
    cfg.pin.kind = VEIL_PIN_FILE;
    cfg.pin.where = tu_env("VEIL_TEST_PIN_FILE");
    return veil_engine_new(&cfg, out);
}

/* ---- the client ------------------------------------------------------- */

void tu_client_config(veil_client_config *cfg, const char *url)
{
    veil_client_config_init(cfg);
    cfg->base_url = url;
    cfg->allow_http = 1;
    cfg->key_bits = 2048;
}

static pthread_t scan_thread;
static const char *scan_marker;
static atomic_int scan_found, scan_frees;

static void scanning_free(void *p)
{
    if (p != NULL && pthread_equal(pthread_self(), scan_thread)) {
        const char *b = p;
        size_t n = malloc_usable_size(p), m = strlen(scan_marker);
        atomic_fetch_add(&scan_frees, 1);
        for (size_t i = 0; i + m <= n; i++)
            if (memcmp(b + i, scan_marker, m) == 0) {
                atomic_fetch_add(&scan_found, 1);
                break;
            }
    }
    free(p);
}

void tu_wipe_scan_begin(const char *marker)
{
    cJSON_Hooks hooks = {malloc, scanning_free};
    scan_thread = pthread_self();
    scan_marker = marker;
    atomic_store(&scan_found, 0);
    atomic_store(&scan_frees, 0);
    cJSON_InitHooks(&hooks);
}

int tu_wipe_scan_end(int *frees)
{
    cJSON_InitHooks(NULL);
    if (frees)
        *frees = atomic_load(&scan_frees);
    return atomic_load(&scan_found);
}

veil_client *tu_client_new(const veil_client_config *cfg)
{
    veil_client *c = NULL;
    veil_client_error err;
    veil_client_status st = veil_client_new(cfg, &c, &err);

    if (st != VEIL_CLIENT_OK)
        fprintf(stderr, "veil_client_new: %s: %s\n",
                veil_client_status_name(st), err.detail);
    CU_ASSERT_EQUAL_FATAL(st, VEIL_CLIENT_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    return c;
}
