/* Attestation on the client side (docs/ATTESTATION.md): enrolling a
 * gateway's TPM into a trust file, and verifying answers and saved
 * evidence against that file.
 *
 * Every check is reported through a veil_check_fn as it is made; the
 * first one that fails decides the error.  Nothing here handles
 * plaintext: packages are ciphertext, and the TPM objects are metadata. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include "evidence.h"
#include "client_int.h"
#include "package.h"

#define TRUST_FORMAT "veil-trust-v1"
#define EVIDENCE_FORMAT "veil-evidence-v1"
#define REPORT_FORMAT "veil-attestation-report-v1"
#define QUOTE_FORMAT "veil-tpm2-quote-v1"
#define NONCE_LEN 32
#define SECRET_LEN 32
#define NAME_LEN 34 /* nameAlg (2) || SHA-256 */
/* A trust file is a few KiB; an evidence file holds two packages of up
 * to a 10 MiB plaintext each, in base64. */
#define MAX_TRUST_FILE (1u << 20)
#define MAX_EVIDENCE (64u << 20)

/* What a verifier needs from a quote or a certification: signer, object
 * and selection attributes (TPM 2.0 Part 2, TPMA_OBJECT). */
#define AK_ATTRS                                                               \
    (VEIL_TPMA_FIXEDTPM | VEIL_TPMA_FIXEDPARENT |                              \
     VEIL_TPMA_SENSITIVEDATAORIGIN | VEIL_TPMA_RESTRICTED | VEIL_TPMA_SIGN)
#define EK_ATTRS                                                               \
    (VEIL_TPMA_FIXEDTPM | VEIL_TPMA_FIXEDPARENT |                              \
     VEIL_TPMA_SENSITIVEDATAORIGIN | VEIL_TPMA_RESTRICTED | VEIL_TPMA_DECRYPT)
#define CERTIFIED_KEY_ATTRS (VEIL_TPMA_FIXEDTPM | VEIL_TPMA_SENSITIVEDATAORIGIN)
#define TPM_ALG_RSA 0x0001

struct veil_trust {
    char *url; /* no trailing slash */
    long long enrolled_at;
    int ek_verified, software_tpm, has_ek_cert;
    uint8_t ek_cert_sha256[32];
    uint8_t *ek_pub, *ak_pub, *sign_spki; /* as in the file, checked */
    size_t ek_pub_len, ak_pub_len, sign_spki_len;
    uint8_t ak_name[NAME_LEN];
    uint8_t enc_sha[32];
    uint8_t sign_sha[32];
    veil_pcr_sel sel;
    uint8_t golden[VEIL_EV_MAX_PCRS][32];
};

/* ---- small helpers ----------------------------------------------------- */

static void sha256(const void *p, size_t n, uint8_t out[32])
{
    unsigned len = 32;
    if (EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) != 1)
        memset(out, 0, 32); /* never matches a real hash in a compare */
}

static int same(const uint8_t *a, const uint8_t *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

/* A copy of url without trailing slashes; NULL when out of memory. */
static char *url_dup(const char *url)
{
    char *u = strdup(url);
    for (size_t n = u ? strlen(u) : 0; n > 0 && u[n - 1] == '/';)
        u[--n] = '\0';
    return u;
}

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(it) ? it->valuestring : NULL;
}

/* Absent or JSON null. */
static int jnull(const cJSON *o, const char *k)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    return it == NULL || cJSON_IsNull(it);
}

/* A strict base64 string member, decoded (malloc'd). */
static int jb64(const cJSON *o, const char *k, uint8_t **out, size_t *len)
{
    const char *s = jstr(o, k);
    *out = NULL;
    *len = 0;
    if (s == NULL || s[0] == '\0')
        return 0;
    if (veil_b64_decode(s, strlen(s), out, len) != VEIL_OK) {
        *out = NULL;
        return 0;
    }
    return 1;
}

/* A member of exactly 2n hex digits, decoded. */
static int jhex(const cJSON *o, const char *k, uint8_t *out, size_t n)
{
    const char *s = jstr(o, k);
    return s != NULL && strlen(s) == 2 * n && veil_hex_decode(s, n, out);
}

/* ---- reporting checks -------------------------------------------------- */

typedef struct checker {
    veil_check_fn fn;
    void *ctx;
    char failed[400]; /* "check: detail" of the first failure */
} checker;

/* Reports one check; returns ok.  The detail is one line. */
static int check(checker *ck, const char *name, int ok, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int check(checker *ck, const char *name, int ok, const char *fmt, ...)
{
    char detail[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    for (char *p = detail; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
    if (ck->fn)
        ck->fn(ck->ctx, name, ok, detail);
    if (!ok && ck->failed[0] == '\0')
        snprintf(ck->failed, sizeof ck->failed, "%s: %s", name, detail);
    return ok;
}

/* Why tpm_pub just refused a key that parsed ("" when it did not). */
static _Thread_local char key_refusal[200];

/* The reason a veil_* call (or tpm_pub) just gave. */
static const char *why_last(void)
{
    return key_refusal[0] ? key_refusal : veil_last_error()->message;
}

/* ---- TPM objects --------------------------------------------------------- */

/* A PCR selection and its values, as "pcr_banks" and "pcr_values" carry
 * them: {"sha256": {"0": "<hex>", ...}}, exactly the selected PCRs. */
static int parse_pcrs(const cJSON *o, veil_pcr_sel *sel,
                      uint8_t values[VEIL_EV_MAX_PCRS][32], char *why,
                      size_t why_size)
{
    const char *banks = jstr(o, "pcr_banks");
    if (banks == NULL) {
        snprintf(why, why_size, "\"pcr_banks\" is missing");
        return 0;
    }
    if (veil_pcr_sel_parse(banks, sel) != VEIL_OK) {
        snprintf(why, why_size, "\"pcr_banks\": %.200s", why_last());
        return 0;
    }
    const cJSON *bank = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(o, "pcr_values"), "sha256");
    if (!cJSON_IsObject(bank)) {
        snprintf(why, why_size, "\"pcr_values\" has no sha256 bank");
        return 0;
    }
    if (cJSON_GetArraySize(bank) != (int)sel->n) {
        snprintf(why, why_size,
                 "\"pcr_values\" holds %d sha256 PCRs, \"pcr_banks\" "
                 "selects %u",
                 cJSON_GetArraySize(bank), sel->n);
        return 0;
    }
    for (unsigned i = 0; i < sel->n; i++) {
        char k[8];
        snprintf(k, sizeof k, "%u", sel->index[i]);
        if (!jhex(bank, k, values[i], 32)) {
            snprintf(why, why_size,
                     "\"pcr_values\": sha256 PCR %s is not 64 hex digits", k);
            return 0;
        }
    }
    return 1;
}

static cJSON *pcrs_json(const veil_pcr_sel *sel,
                        const uint8_t values[VEIL_EV_MAX_PCRS][32])
{
    cJSON *o = cJSON_CreateObject();
    cJSON *bank = o ? cJSON_AddObjectToObject(o, "sha256") : NULL;
    for (unsigned i = 0; bank && i < sel->n; i++) {
        char k[8], h[65];
        snprintf(k, sizeof k, "%u", sel->index[i]);
        veil_hex(values[i], 32, h);
        if (!cJSON_AddStringToObject(bank, k, h))
            bank = NULL;
    }
    if (bank == NULL) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* A TPM public area, its key checked as every server key is
 * (veil_cl_key_check); why_last() says why when it fails. */
static int tpm_pub(veil_engine *e, const uint8_t *b, size_t n,
                   veil_tpm_pub *out)
{
    char why[160];
    memset(out, 0, sizeof *out);
    key_refusal[0] = '\0';
    if (veil_tpm_pub_parse(e, b, n, out) != VEIL_OK)
        return 0;
    if (!veil_cl_key_check(out->key, 0, why, sizeof why)) {
        snprintf(key_refusal, sizeof key_refusal, "the key is refused: %s",
                 why);
        veil_tpm_pub_clear(out);
        return 0;
    }
    return 1;
}

/* The TPM objects of a quote, decoded from a report or a
 * tpm_attestation object. */
typedef struct quote_in {
    veil_pcr_sel sel;
    uint8_t values[VEIL_EV_MAX_PCRS][32];
    uint8_t *ak, *quote, *sig;
    size_t ak_len, quote_len, sig_len;
    int has_name;
    uint8_t ak_name[NAME_LEN];
    /* aik_certify (answers only) and key_certify: present when set */
    int has_aikc, has_kc;
    uint8_t *aikc_attest, *aikc_sig, *kc_attest, *kc_sig, *kc_pub;
    size_t aikc_attest_len, aikc_sig_len, kc_attest_len, kc_sig_len, kc_pub_len;
} quote_in;

static void quote_in_free(quote_in *q)
{
    free(q->ak);
    free(q->quote);
    free(q->sig);
    free(q->aikc_attest);
    free(q->aikc_sig);
    free(q->kc_attest);
    free(q->kc_sig);
    free(q->kc_pub);
    memset(q, 0, sizeof *q);
}

static int decode_certify(const cJSON *o, const char *name, int with_pub,
                          uint8_t **attest, size_t *attest_len, uint8_t **sig,
                          size_t *sig_len, uint8_t **pub, size_t *pub_len,
                          char *why, size_t why_size)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsObject(c) || !jb64(c, "attest_b64", attest, attest_len) ||
        !jb64(c, "signature_b64", sig, sig_len) ||
        (with_pub && !jb64(c, "pubkey_b64", pub, pub_len))) {
        snprintf(why, why_size,
                 "\"%s\" is not an object of base64 attest_b64, "
                 "signature_b64%s",
                 name, with_pub ? " and pubkey_b64" : "");
        return 0;
    }
    return 1;
}

static int decode_quote(const cJSON *o, int answer, quote_in *q, char *why,
                        size_t why_size)
{
    memset(q, 0, sizeof *q);
    if (!parse_pcrs(o, &q->sel, q->values, why, why_size))
        return 0;
    if (!jb64(o, "aik_pubkey_b64", &q->ak, &q->ak_len) ||
        !jb64(o, "quote_b64", &q->quote, &q->quote_len) ||
        !jb64(o, "signature_b64", &q->sig, &q->sig_len)) {
        snprintf(why, why_size,
                 "aik_pubkey_b64, quote_b64 and signature_b64 "
                 "must be base64");
        return 0;
    }
    if (!jnull(o, "aik_name")) {
        if (!jhex(o, "aik_name", q->ak_name, NAME_LEN)) {
            snprintf(why, why_size, "\"aik_name\" is not %d hex digits",
                     2 * NAME_LEN);
            return 0;
        }
        q->has_name = 1;
    }
    if (answer && !jnull(o, "aik_certify")) {
        if (!decode_certify(o, "aik_certify", 0, &q->aikc_attest,
                            &q->aikc_attest_len, &q->aikc_sig, &q->aikc_sig_len,
                            NULL, NULL, why, why_size))
            return 0;
        q->has_aikc = 1;
    }
    if (!jnull(o, "key_certify")) {
        if (!decode_certify(o, "key_certify", 1, &q->kc_attest,
                            &q->kc_attest_len, &q->kc_sig, &q->kc_sig_len,
                            &q->kc_pub, &q->kc_pub_len, why, why_size))
            return 0;
        q->has_kc = 1;
    }
    return 1;
}

/* "0, 7, 10" of a selection, for details. */
static void sel_text(const veil_pcr_sel *sel, char *out, size_t size)
{
    veil_pcr_sel_format(sel, out, size);
}

/* key_certify: the encryption key is a TPM object (fixedTPM,
 * sensitiveDataOrigin) whose SPKI hash is the one the quote binds, and the
 * quote's signer certified it with the same qualifying data. */
static int check_key_certify(veil_engine *e, const veil_tpm_pub *signer,
                             const quote_in *q, const uint8_t enc_sha[32],
                             const uint8_t qualifying[32], checker *ck)
{
    veil_tpm_pub kp;
    const char *name = "key certification";
    if (!tpm_pub(e, q->kc_pub, q->kc_pub_len, &kp))
        return check(ck, name, 0, "pubkey_b64 is not a TPM public area: %s",
                     why_last());
    int ok = 0;
    if (!same(kp.spki_sha256, enc_sha, 32))
        check(ck, name, 0,
              "the certified key is not the gateway's encryption key");
    else if (veil_tpm_check_certify(e, signer, q->kc_attest, q->kc_attest_len,
                                    q->kc_sig, q->kc_sig_len, qualifying, &kp,
                                    CERTIFIED_KEY_ATTRS) != VEIL_OK)
        check(ck, name, 0, "%s", why_last());
    else
        ok = check(ck, name, 1,
                   "the encryption key is a TPM object (fixedTPM, "
                   "sensitiveDataOrigin) certified by the attestation key");
    veil_tpm_pub_clear(&kp);
    return ok;
}

/* ---- trust files ------------------------------------------------------- */

/* Reads a whole file of at most max bytes (NUL-terminated). */
static char *read_file(const char *path, size_t max, size_t *len, char *why,
                       size_t why_size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    char *buf = NULL;
    size_t n = 0;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(why, why_size, "cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode) || (size_t)st.st_size > max) {
        snprintf(why, why_size, "%s is not a regular file of at most %zu KiB",
                 path, max >> 10);
        goto out;
    }
    if ((buf = malloc((size_t)st.st_size + 1)) == NULL) {
        snprintf(why, why_size, "out of memory");
        goto out;
    }
    while (n < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + n, (size_t)st.st_size - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            snprintf(why, why_size, "cannot read %s: %s", path,
                     r < 0 ? strerror(errno) : "it shrank");
            free(buf);
            buf = NULL;
            goto out;
        }
        n += (size_t)r;
    }
    buf[n] = '\0';
    *len = n;
out:
    if (fd >= 0)
        close(fd);
    return buf;
}

void veil_trust_free(veil_trust *t)
{
    if (t == NULL)
        return;
    free(t->url);
    free(t->ek_pub);
    free(t->ak_pub);
    free(t->sign_spki);
    free(t);
}

const char *veil_trust_url(const veil_trust *t)
{
    return t ? t->url : NULL;
}

const uint8_t *veil_cl_trust_encryption_key(const veil_trust *t)
{
    return t->enc_sha;
}

/* The keys of a trust file are checked with the engine they are made in:
 * the AK as an attestation key whose name is aik_name, the EK as an RSA
 * endorsement key, the signing key as P-256 with the recorded hash. */
static int trust_keys_ok(veil_engine *e, const veil_trust *t, char *why,
                         size_t why_size)
{
    veil_tpm_pub p;
    if (!tpm_pub(e, t->ak_pub, t->ak_pub_len, &p)) {
        snprintf(why, why_size, "\"aik_pubkey_b64\": %.200s", why_last());
        return 0;
    }
    int ok = (p.attributes & AK_ATTRS) == AK_ATTRS &&
             same(p.name, t->ak_name, NAME_LEN);
    veil_tpm_pub_clear(&p);
    if (!ok) {
        snprintf(why, why_size,
                 "\"aik_pubkey_b64\" is not an attestation key named "
                 "\"aik_name\"");
        return 0;
    }
    if (!tpm_pub(e, t->ek_pub, t->ek_pub_len, &p)) {
        snprintf(why, why_size, "\"ek_pubkey_b64\": %.200s", why_last());
        return 0;
    }
    ok = p.type == TPM_ALG_RSA;
    veil_tpm_pub_clear(&p);
    if (!ok) {
        snprintf(why, why_size, "\"ek_pubkey_b64\" is not an RSA key");
        return 0;
    }
    veil_key *k = NULL;
    veil_key_info info;
    uint8_t h[32];
    sha256(t->sign_spki, t->sign_spki_len, h);
    char refused[160] = "";
    ok = veil_key_from_public(e, t->sign_spki, t->sign_spki_len, &k) ==
             VEIL_OK &&
         veil_key_get_info(k, &info) == VEIL_OK &&
         info.type == VEIL_KEY_EC_P256 &&
         veil_cl_key_check(k, 0, refused, sizeof refused);
    veil_key_free(k);
    if (refused[0]) {
        snprintf(why, why_size, "\"signing_key_spki_b64\" is refused: %s",
                 refused);
        return 0;
    }
    if (!ok) {
        snprintf(why, why_size,
                 "\"signing_key_spki_b64\" is not a P-256 public key");
        return 0;
    }
    if (!same(h, t->sign_sha, 32)) {
        snprintf(why, why_size,
                 "\"signing_key_sha256\" is not the hash of "
                 "\"signing_key_spki_b64\"");
        return 0;
    }
    return 1;
}

/* The parsers below fill `why` and fail with BAD("..."). */
#define BAD(...)                                                               \
    do {                                                                       \
        snprintf(why, why_size, __VA_ARGS__);                                  \
        return 0;                                                              \
    } while (0)

static int trust_parse(const cJSON *j, veil_trust *t, char *why,
                       size_t why_size)
{
    if (!cJSON_IsObject(j))
        BAD("not a JSON object");
    const char *format = jstr(j, "format");
    if (format == NULL || strcmp(format, TRUST_FORMAT) != 0)
        BAD("\"format\" is not \"" TRUST_FORMAT "\"");
    const char *url = jstr(j, "url");
    if (url == NULL ||
        (strncmp(url, "https://", 8) != 0 && strncmp(url, "http://", 7) != 0))
        BAD("\"url\" is not an http(s) URL");
    if ((t->url = url_dup(url)) == NULL)
        BAD("out of memory");
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(j, "enrolled_at");
    /* in range before the conversion (found by fuzz/fuzz_attest) */
    if (!cJSON_IsNumber(at) ||
        !(at->valuedouble >= 0 && at->valuedouble < 9.2e18))
        BAD("\"enrolled_at\" is not a time");
    t->enrolled_at = (long long)at->valuedouble;
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "ek_verified");
    if (!cJSON_IsBool(b))
        BAD("\"ek_verified\" is not true or false");
    t->ek_verified = cJSON_IsTrue(b);
    b = cJSON_GetObjectItemCaseSensitive(j, "software_tpm");
    if (!cJSON_IsBool(b))
        BAD("\"software_tpm\" is not true or false");
    t->software_tpm = cJSON_IsTrue(b);
    if (!jnull(j, "ek_cert_sha256")) {
        if (!jhex(j, "ek_cert_sha256", t->ek_cert_sha256, 32))
            BAD("\"ek_cert_sha256\" is not 64 hex digits");
        t->has_ek_cert = 1;
    }
    if (!jb64(j, "ek_pubkey_b64", &t->ek_pub, &t->ek_pub_len))
        BAD("\"ek_pubkey_b64\" is not base64");
    if (!jb64(j, "aik_pubkey_b64", &t->ak_pub, &t->ak_pub_len))
        BAD("\"aik_pubkey_b64\" is not base64");
    if (!jhex(j, "aik_name", t->ak_name, NAME_LEN))
        BAD("\"aik_name\" is not %d hex digits", 2 * NAME_LEN);
    if (!jhex(j, "encryption_key_sha256", t->enc_sha, 32))
        BAD("\"encryption_key_sha256\" is not 64 hex digits");
    if (!jb64(j, "signing_key_spki_b64", &t->sign_spki, &t->sign_spki_len))
        BAD("\"signing_key_spki_b64\" is not base64");
    if (!jhex(j, "signing_key_sha256", t->sign_sha, 32))
        BAD("\"signing_key_sha256\" is not 64 hex digits");
    if (!parse_pcrs(j, &t->sel, t->golden, why, why_size))
        return 0;
    return 1;
}

veil_client_status veil_trust_load(const char *path, veil_trust **out,
                                   veil_client_error *err)
{
    char why[320] = "";
    size_t len = 0;
    veil_engine *e = NULL;
    if (err)
        memset(err, 0, sizeof *err);
    if (out == NULL)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "veil_trust_load: no output");
    *out = NULL;
    if (path == NULL)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "no trust file given");
    char *text = read_file(path, MAX_TRUST_FILE, &len, why, sizeof why);
    if (text == NULL)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_IO,
                            "trust file: %s", why);
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    veil_trust *t = calloc(1, sizeof *t);
    int ok = 0;
    if (j == NULL)
        snprintf(why, sizeof why, "not JSON");
    else if (t == NULL)
        snprintf(why, sizeof why, "out of memory");
    else if (trust_parse(j, t, why, sizeof why)) {
        /* The keys are parsed once here so that a damaged file is a
         * configuration error now, not a security error per answer. */
        if (veil_engine_new(NULL, &e) != VEIL_OK)
            snprintf(why, sizeof why, "starting an engine: %.200s", why_last());
        else
            ok = trust_keys_ok(e, t, why, sizeof why);
    }
    veil_engine_free(e);
    cJSON_Delete(j);
    if (!ok) {
        veil_trust_free(t);
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "trust file %s: %s", path, why);
    }
    *out = t;
    return VEIL_CLIENT_OK;
}

/* ---- verifying one answer ------------------------------------------------ */

/* One answer as a verifier knows it, from the client or from evidence. */
typedef struct answer_in {
    const char *payload_id;
    const char *tier;
    uint8_t req_sha[32], resp_sha[32];
    const char *sig_b64; /* NULL: none */
    int has_signed_at;
    long long signed_at;
    int has_signing_key;
    uint8_t signing_key[32];   /* what the answer says signed it */
    const cJSON *tpm;          /* tpm_attestation, or NULL */
    const uint8_t *server_sha; /* without a trust file: the key used */
    int allow_foreign;         /* without a trust file: see veil_cl_answer */
} answer_in;

static int check_signature(veil_engine *e, const veil_trust *t,
                           const answer_in *a, checker *ck)
{
    char hx[65];
    veil_hex(t->sign_sha, 32, hx);
    if (!a->has_signing_key)
        return check(ck, "signing key", 0,
                     "the answer names no signing key (X-Veil-Signing-Key); "
                     "the enrolled one is sha256:%s",
                     hx);
    if (!same(a->signing_key, t->sign_sha, 32)) {
        char got[65];
        veil_hex(a->signing_key, 32, got);
        return check(ck, "signing key", 0,
                     "signed by sha256:%s, not by the enrolled sha256:%s", got,
                     hx);
    }
    check(ck, "signing key", 1, "the enrolled key sha256:%s", hx);

    const char *name = "answer signature";
    if (a->sig_b64 == NULL || !a->has_signed_at)
        return check(ck, name, 0,
                     "the answer carries no signature (X-Veil-Signature, "
                     "X-Veil-Signed-At)");
    char stmt[VEIL_EV_STATEMENT_MAX];
    size_t n =
        veil_ev_statement(a->payload_id, a->tier, a->req_sha, a->resp_sha,
                          t->sign_sha, a->signed_at, stmt, sizeof stmt);
    if (n == 0)
        return check(ck, name, 0, "the statement cannot be built: %s",
                     why_last());
    uint8_t *sig = NULL;
    size_t sig_len = 0;
    veil_key *k = NULL;
    int ok = 0;
    if (veil_b64_decode(a->sig_b64, strlen(a->sig_b64), &sig, &sig_len) !=
        VEIL_OK)
        check(ck, name, 0, "the signature is not base64");
    else if (veil_key_from_public(e, t->sign_spki, t->sign_spki_len, &k) !=
             VEIL_OK)
        check(ck, name, 0, "the enrolled signing key: %s", why_last());
    else if (veil_ecdsa_verify(e, k, (const uint8_t *)stmt, n, sig, sig_len) !=
             VEIL_OK)
        check(ck, name, 0,
              "ECDSA P-256 does not verify over this payload ID, tier, "
              "request and response under the enrolled key");
    else
        ok = check(ck, name, 1,
                   "ECDSA P-256 over payload %s, tier %s, request and "
                   "response hashes, signed at %lld",
                   a->payload_id, a->tier, a->signed_at);
    veil_key_free(k);
    free(sig);
    return ok;
}

/* The quote of a maximum answer.  With a trust file: signed by the
 * enrolled AK (or a per-request AK it certified), qualifying data over
 * this request and the enrolled keys, PCRs as enrolled.  Without one:
 * signed by the AK the answer names, over this request and the key it
 * was sealed to; whether that AK is a TPM's is not known. */
static int check_quote(veil_engine *e, const veil_trust *t, const answer_in *a,
                       checker *ck)
{
    const cJSON *o = a->tpm;
    const char *name = "TPM attestation";
    if (!cJSON_IsObject(o) ||
        !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "is_available")))
        return check(ck, name, 0, "the maximum answer carries no TPM quote");
    const char *format = jstr(o, "format");
    if (format == NULL || strcmp(format, QUOTE_FORMAT) != 0)
        return check(ck, name, 0, "format is not \"" QUOTE_FORMAT "\"");
    quote_in q;
    char why[256];
    if (!decode_quote(o, 1, &q, why, sizeof why)) {
        quote_in_free(&q);
        return check(ck, name, 0, "%s", why);
    }
    check(ck, name, 1, "%s, %s",
          cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "software_tpm"))
              ? "from a software TPM"
              : "from a TPM",
          q.has_aikc ? "per-request attestation key" : "long-term key");

    uint8_t zero[32] = {0}, qual[32];
    const uint8_t *enc = t ? t->enc_sha : a->server_sha;
    const uint8_t *sign = t                    ? t->sign_sha
                          : a->has_signing_key ? a->signing_key
                                               : zero;
    veil_ev_answer_qualifying(a->payload_id, a->req_sha, enc, sign, qual);

    veil_tpm_pub enrolled = {0}, reported = {0};
    const veil_tpm_pub *signer = NULL;
    int ok = 0;
    if (!tpm_pub(e, q.ak, q.ak_len, &reported)) {
        check(ck, "attestation key", 0, "aik_pubkey_b64: %s", why_last());
        goto out;
    }
    if (q.has_name && !same(q.ak_name, reported.name, NAME_LEN)) {
        check(ck, "attestation key", 0,
              "\"aik_name\" is not the name of aik_pubkey_b64");
        goto out;
    }
    if (t == NULL) {
        signer = &reported;
        check(ck, "attestation key", 1,
              "the key the answer names; not enrolled, so not known to be "
              "a TPM's");
    } else if (!tpm_pub(e, t->ak_pub, t->ak_pub_len, &enrolled)) {
        check(ck, "attestation key", 0, "the enrolled AK: %s", why_last());
        goto out;
    } else if (q.has_aikc) {
        if (veil_tpm_check_certify(
                e, &enrolled, q.aikc_attest, q.aikc_attest_len, q.aikc_sig,
                q.aikc_sig_len, qual, &reported, AK_ATTRS) != VEIL_OK) {
            check(ck, "attestation key certification", 0, "%s", why_last());
            goto out;
        }
        check(ck, "attestation key certification", 1,
              "the per-request AK (fixedTPM, fixedParent, "
              "sensitiveDataOrigin, restricted, sign) certified by the "
              "enrolled AK for this request");
        signer = &reported;
    } else if (!same(reported.name, t->ak_name, NAME_LEN)) {
        check(ck, "attestation key", 0,
              "the quote's AK is not the enrolled one, and no "
              "certification by it (aik_certify) came with it");
        goto out;
    } else {
        check(ck, "attestation key", 1, "the enrolled AK");
        signer = &enrolled;
    }

    if (t != NULL) {
        char want[96], got[96];
        sel_text(&t->sel, want, sizeof want);
        sel_text(&q.sel, got, sizeof got);
        if (q.sel.n != t->sel.n || memcmp(q.sel.index, t->sel.index,
                                          q.sel.n * sizeof q.sel.index[0])) {
            check(ck, "PCR selection", 0, "%s, not the enrolled %s", got, want);
            goto out;
        }
    }
    if (veil_tpm_check_quote(e, signer, q.quote, q.quote_len, q.sig, q.sig_len,
                             qual, &q.sel,
                             (const uint8_t(*)[32])q.values) != VEIL_OK) {
        check(ck, "quote", 0, "%s", why_last());
        goto out;
    }
    check(ck, "quote", 1,
          "signature, qualifying data (payload %s, this request, %s keys) "
          "and PCR digest",
          a->payload_id, t ? "the enrolled" : "the server's");
    if (t != NULL) {
        char bad[128] = "";
        size_t n = 0;
        for (unsigned i = 0; i < q.sel.n; i++)
            if (!same(q.values[i], t->golden[i], 32) && n < sizeof bad - 8)
                n += (size_t)snprintf(bad + n, sizeof bad - n, "%s%u",
                                      n ? ", " : "", q.sel.index[i]);
        if (n) {
            check(ck, "PCR values", 0, "PCR %s %s from the enrolled values",
                  bad, strchr(bad, ',') ? "differ" : "differs");
            goto out;
        }
        check(ck, "PCR values", 1, "as enrolled");
    }
    if (q.has_kc && !check_key_certify(e, signer, &q, enc, qual, ck))
        goto out;
    ok = 1;
out:
    veil_tpm_pub_clear(&enrolled);
    veil_tpm_pub_clear(&reported);
    quote_in_free(&q);
    return ok;
}

/* The checks an answer gets; 1 when they all passed.  *quote_checked is
 * set when a quote was verified. */
static int verify_core(veil_engine *e, const veil_trust *t, const answer_in *a,
                       checker *ck, int *quote_checked)
{
    int maximum = strcmp(a->tier, "maximum") == 0;
    *quote_checked = 0;
    if (t != NULL && !check_signature(e, t, a, ck))
        return 0;
    if (!maximum)
        return 1;
    if (t == NULL) {
        /* Without enrolment, only a veil quote can be checked at all: a
         * maximum answer with no attestation is refused (the tier asked
         * for one), and so is one in another shape ({"is_available":
         * true} alone would do) unless the caller allows foreign
         * attestations (and warns). */
        const char *format = jstr(a->tpm, "format");
        if (!cJSON_IsTrue(
                cJSON_GetObjectItemCaseSensitive(a->tpm, "is_available")))
            return check(ck, "quote", 0,
                         "the maximum answer carries no TPM attestation");
        if (format == NULL || strcmp(format, QUOTE_FORMAT) != 0) {
            if (a->allow_foreign)
                return check(ck, "TPM attestation", 1,
                             "in another format than veil's, not checked "
                             "(foreign attestations are allowed)");
            return check(ck, "TPM attestation", 0,
                         "not a veil TPM quote (format \"" QUOTE_FORMAT
                         "\"); another format cannot be checked and is "
                         "accepted only when foreign attestations are "
                         "allowed");
        }
    }
    if (!check_quote(e, t, a, ck))
        return 0;
    *quote_checked = 1;
    return 1;
}

/* The evidence of an answer (veil-evidence-v1, docs/ATTESTATION.md). */
static char *evidence_json(const char *url, const answer_in *a, const char *req,
                           size_t req_len, const char *resp, size_t resp_len)
{
    char rq[65], rs[65], sk[65];
    cJSON *j = cJSON_CreateObject();
    char *text = NULL;
    /* The packages travel as JSON strings: a NUL could not. */
    if (j == NULL || memchr(req, 0, req_len) || memchr(resp, 0, resp_len))
        goto out;
    veil_hex(a->req_sha, 32, rq);
    veil_hex(a->resp_sha, 32, rs);
    veil_hex(a->signing_key, 32, sk);
    cJSON *tpm = cJSON_IsObject(a->tpm) ? cJSON_Duplicate(a->tpm, 1)
                                        : cJSON_CreateNull();
    if (tpm == NULL || !cJSON_AddItemToObject(j, "tpm_attestation", tpm)) {
        cJSON_Delete(tpm);
        goto out;
    }
    if (!cJSON_AddStringToObject(j, "format", EVIDENCE_FORMAT) ||
        !cJSON_AddStringToObject(j, "url", url) ||
        !cJSON_AddStringToObject(j, "payload_id", a->payload_id) ||
        !cJSON_AddStringToObject(j, "security_tier", a->tier) ||
        !cJSON_AddStringToObject(j, "request_package", req) ||
        !cJSON_AddStringToObject(j, "response_package", resp) ||
        !cJSON_AddStringToObject(j, "request_sha256", rq) ||
        !cJSON_AddStringToObject(j, "response_sha256", rs) ||
        !(a->sig_b64 ? cJSON_AddStringToObject(j, "signature_b64", a->sig_b64)
                     : cJSON_AddNullToObject(j, "signature_b64")) ||
        !(a->has_signed_at
              ? cJSON_AddNumberToObject(j, "signed_at", (double)a->signed_at)
              : cJSON_AddNullToObject(j, "signed_at")) ||
        !(a->has_signing_key
              ? cJSON_AddStringToObject(j, "signing_key_sha256", sk)
              : cJSON_AddNullToObject(j, "signing_key_sha256")))
        goto out;
    /* The documented order puts tpm_attestation last. */
    cJSON_DetachItemViaPointer(j, tpm);
    cJSON_AddItemToObject(j, "tpm_attestation", tpm);
    text = cJSON_Print(j);
out:
    cJSON_Delete(j);
    return text;
}

/* Reads the three signature headers into a. */
static int answer_headers(const veil_http_response *r, answer_in *a,
                          checker *ck)
{
    if (r->veil_headers_bad)
        return check(ck, "signature headers", 0,
                     "an X-Veil-* header came twice or is too long");
    if (r->veil_signature[0])
        a->sig_b64 = r->veil_signature;
    if (r->veil_signed_at[0]) {
        char *end;
        errno = 0;
        long long v = strtoll(r->veil_signed_at, &end, 10);
        if (*end || errno || v < 0 || r->veil_signed_at[0] == '-')
            return check(ck, "signature headers", 0,
                         "X-Veil-Signed-At is not Unix seconds");
        a->signed_at = v;
        a->has_signed_at = 1;
    }
    if (r->veil_signing_key[0]) {
        const char *s = r->veil_signing_key;
        if (strncmp(s, "sha256:", 7) != 0 || strlen(s + 7) != 64 ||
            !veil_hex_decode(s + 7, 32, a->signing_key))
            return check(ck, "signature headers", 0,
                         "X-Veil-Signing-Key is not sha256:<64 hex>");
        a->has_signing_key = 1;
    }
    return 1;
}

veil_client_status veil_cl_verify_answer(veil_engine *e, const veil_trust *t,
                                         veil_cl_answer *in,
                                         veil_check_fn on_check, void *ctx,
                                         char **evidence,
                                         veil_client_error *err)
{
    checker ck = {.fn = on_check, .ctx = ctx};
    const veil_http_response *r = in->response;
    answer_in a = {
        .payload_id = in->payload_id,
        .tier = in->tier,
        .tpm = in->tpm_attestation,
        .server_sha = in->server_key_sha256,
        .allow_foreign = in->allow_foreign,
    };
    int ok = 1;
    in->quote_checked = 0;
    sha256(in->request, in->request_len, a.req_sha);
    sha256(r->body ? r->body : "", r->body ? r->len : 0, a.resp_sha);
    if (t != NULL || evidence != NULL || strcmp(in->tier, "maximum") == 0)
        ok = answer_headers(r, &a, &ck);
    if (ok)
        ok = verify_core(e, t, &a, &ck, &in->quote_checked);
    if (!ok)
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_VERIFY,
                            "%s (%s)", VEIL_CLIENT_SECURITY_MESSAGE, ck.failed);
    if (evidence != NULL &&
        (*evidence = evidence_json(in->url, &a, in->request, in->request_len,
                                   r->body ? r->body : "",
                                   r->body ? r->len : 0)) == NULL)
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_NOMEM,
                            "the evidence of the answer could not be "
                            "recorded");
    return VEIL_CLIENT_OK;
}

/* ---- offline verification ------------------------------------------------ */

static int evidence_parse(const cJSON *j, answer_in *a, const char **url,
                          const char **req, const char **resp,
                          uint8_t rec_req[32], uint8_t rec_resp[32], char *why,
                          size_t why_size)
{
    if (!cJSON_IsObject(j))
        BAD("not a JSON object");
    const char *format = jstr(j, "format");
    if (format == NULL || strcmp(format, EVIDENCE_FORMAT) != 0)
        BAD("\"format\" is not \"" EVIDENCE_FORMAT "\"");
    if ((*url = jstr(j, "url")) == NULL)
        BAD("\"url\" is missing");
    a->payload_id = jstr(j, "payload_id");
    if (a->payload_id == NULL || !veil_payload_id_valid(a->payload_id))
        BAD("\"payload_id\" is not a payload ID (1 to 128 printable ASCII "
            "characters, no spaces)");
    a->tier = jstr(j, "security_tier");
    if (a->tier == NULL ||
        (strcmp(a->tier, "standard") && strcmp(a->tier, "high") &&
         strcmp(a->tier, "maximum")))
        BAD("\"security_tier\" is not standard, high or maximum");
    if ((*req = jstr(j, "request_package")) == NULL ||
        (*resp = jstr(j, "response_package")) == NULL)
        BAD("\"request_package\" and \"response_package\" must be strings");
    if (!jhex(j, "request_sha256", rec_req, 32) ||
        !jhex(j, "response_sha256", rec_resp, 32))
        BAD("\"request_sha256\" and \"response_sha256\" must be 64 hex "
            "digits");
    if (!jnull(j, "signature_b64") &&
        (a->sig_b64 = jstr(j, "signature_b64")) == NULL)
        BAD("\"signature_b64\" is not a string");
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(j, "signed_at");
    if (cJSON_IsNumber(at) && at->valuedouble >= 0 &&
        at->valuedouble < 9.2e18 &&
        at->valuedouble == (double)(long long)at->valuedouble) {
        a->signed_at = (long long)at->valuedouble;
        a->has_signed_at = 1;
    } else if (!jnull(j, "signed_at")) {
        BAD("\"signed_at\" is not Unix seconds");
    }
    if (!jnull(j, "signing_key_sha256")) {
        if (!jhex(j, "signing_key_sha256", a->signing_key, 32))
            BAD("\"signing_key_sha256\" is not 64 hex digits");
        a->has_signing_key = 1;
    }
    const cJSON *tpm = cJSON_GetObjectItemCaseSensitive(j, "tpm_attestation");
    if (tpm != NULL && !cJSON_IsNull(tpm) && !cJSON_IsObject(tpm))
        BAD("\"tpm_attestation\" is neither an object nor null");
    a->tpm = cJSON_IsObject(tpm) ? tpm : NULL;
    return 1;
#undef BAD
}

veil_client_status veil_verify_evidence(veil_engine *engine,
                                        const veil_trust *trust,
                                        const char *evidence_json_text,
                                        size_t len, veil_check_fn on_check,
                                        void *ctx, veil_client_error *err)
{
    checker ck = {.fn = on_check, .ctx = ctx};
    answer_in a = {0};
    const char *url = NULL, *req = NULL, *resp = NULL;
    uint8_t rec_req[32], rec_resp[32];
    char why[320];
    veil_engine *own = NULL;
    if (err)
        memset(err, 0, sizeof *err);
    if (trust == NULL || evidence_json_text == NULL)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "veil_verify_evidence needs a trust file and "
                            "evidence");
    if (len > MAX_EVIDENCE)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "evidence: larger than %u MiB", MAX_EVIDENCE >> 20);
    cJSON *j = cJSON_ParseWithLength(evidence_json_text, len);
    if (j == NULL) {
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "evidence: not JSON");
    }
    if (!evidence_parse(j, &a, &url, &req, &resp, rec_req, rec_resp, why,
                        sizeof why)) {
        cJSON_Delete(j);
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "evidence: %s", why);
    }
    if (engine == NULL) {
        if (veil_engine_new(NULL, &own) != VEIL_OK) {
            cJSON_Delete(j);
            return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_NOMEM,
                                "starting an engine: %.200s", why_last());
        }
        engine = own;
    }

    int ok = 0, quote_checked;
    char *u = url_dup(url);
    char hx[65], shown[512], shown_trust[512];
    veil_cl_redact_url(url, shown, sizeof shown);
    veil_cl_redact_url(trust->url, shown_trust, sizeof shown_trust);
    if (u == NULL || strcmp(u, trust->url) != 0) {
        check(&ck, "gateway", 0,
              "the evidence is from %s, the trust file "
              "for %s",
              shown, shown_trust);
        goto out;
    }
    check(&ck, "gateway", 1, "%s, as enrolled", shown_trust);
    sha256(req, strlen(req), a.req_sha);
    sha256(resp, strlen(resp), a.resp_sha);
    veil_hex(a.req_sha, 32, hx);
    if (!check(&ck, "request hash", same(a.req_sha, rec_req, 32),
               "SHA-256 of the request package: %s%s", hx,
               same(a.req_sha, rec_req, 32) ? "" : ", not as recorded"))
        goto out;
    veil_hex(a.resp_sha, 32, hx);
    if (!check(&ck, "response hash", same(a.resp_sha, rec_resp, 32),
               "SHA-256 of the response package: %s%s", hx,
               same(a.resp_sha, rec_resp, 32) ? "" : ", not as recorded"))
        goto out;
    ok = verify_core(engine, trust, &a, &ck, &quote_checked);
out:
    free(u);
    cJSON_Delete(j);
    veil_engine_free(own);
    if (!ok)
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 0, VEIL_E_VERIFY, "%s",
                            ck.failed);
    return VEIL_CLIENT_OK;
}

/* ---- enrolment ------------------------------------------------------------
 */

typedef struct enroll {
    const veil_enroll_options *opt;
    veil_engine *e;
    veil_transport *tx;
    char *url;
    checker ck;
    cJSON *report;
    uint8_t nonce[NONCE_LEN];
    veil_tpm_pub ek, ak;
    uint8_t enc_sha[32], sign_sha[32];
    uint8_t *sign_spki;
    size_t sign_spki_len;
    int ek_verified, has_cert;
    uint8_t cert_sha[32];
    veil_pcr_sel sel;
    uint8_t values[VEIL_EV_MAX_PCRS][32];
} enroll;

/* One HTTP exchange with the gateway; a non-200 answer is an error of its
 * class.  The Authorization line is wiped. */
static veil_client_status gw_http(enroll *en, const char *path,
                                  const char *body, veil_http_response *r,
                                  veil_client_error *err)
{
    char url[2048];
    const char *h[6];
    int n = 0;
    char *auth = NULL;
    size_t auth_len = 0;
    if (snprintf(url, sizeof url, "%s%s", en->url, path) >= (int)sizeof url)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "the URL is too long");
    h[n++] = "Accept: application/json";
    if (body) {
        h[n++] = "Content-Type: application/json";
        h[n++] = "Expect:";
    }
    if (en->opt->api_key) {
        auth_len = strlen(en->opt->api_key) + 32;
        if ((auth = malloc(auth_len)) == NULL)
            return veil_cl_fail(err, VEIL_CLIENT_E_CONNECTION, 0, VEIL_E_NOMEM,
                                "out of memory");
        snprintf(auth, auth_len, "Authorization: Bearer %s", en->opt->api_key);
        h[n++] = auth;
    }
    h[n] = NULL;
    veil_client_status st = veil_transport_send(
        en->tx, url, h, body, body ? strlen(body) : 0, 0, r, err);
    if (auth)
        veil_cl_wipe(auth, auth_len);
    free(auth);
    if (st == VEIL_CLIENT_OK && r->status != 200) {
        st = veil_cl_http_fail(r, err);
        free(r->body);
        r->body = NULL;
    }
    return st;
}

/* The key the gateway serves at /pki/public_key, as its SPKI hash. */
static veil_client_status fetch_encryption_key(enroll *en, uint8_t sha[32],
                                               veil_client_error *err)
{
    veil_http_response r;
    veil_client_status st = gw_http(en, "/pki/public_key", NULL, &r, err);
    if (st != VEIL_CLIENT_OK) {
        check(&en->ck, "encryption key", 0, "GET /pki/public_key: %s",
              err ? err->detail : "failed");
        return st;
    }
    veil_key *k = NULL;
    veil_key_info info;
    char why[160] = "";
    int ok = r.body != NULL && strstr(r.body, "-----BEGIN PUBLIC KEY-----") &&
             veil_key_from_public(en->e, (const uint8_t *)r.body, r.len, &k) ==
                 VEIL_OK &&
             veil_key_get_info(k, &info) == VEIL_OK &&
             info.type == VEIL_KEY_RSA && info.bits >= 2048 &&
             veil_key_fingerprint(k, sha) == VEIL_OK;
    if (ok && !veil_cl_key_check(k, 0, why, sizeof why)) {
        veil_key_free(k);
        free(r.body);
        check(&en->ck, "encryption key", 0, "/pki/public_key is refused: %s",
              why);
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_KEY, "%s",
                            en->ck.failed);
    }
    veil_key_free(k);
    free(r.body);
    if (!ok) {
        check(&en->ck, "encryption key", 0,
              "/pki/public_key is not an RSA public key of 2048 bits or "
              "more");
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_KEY, "%s",
                            en->ck.failed);
    }
    return VEIL_CLIENT_OK;
}

/* The EK: an RSA endorsement key whose SPKI is ek_spki_b64, whose
 * certificate (when the TPM has one) holds that key and chains to the CA
 * given.  Returns 0 on a failure that stops enrolment. */
static int check_ek(enroll *en)
{
    const cJSON *rep = en->report;
    uint8_t *pub = NULL, *spki = NULL, *cert = NULL;
    size_t pub_len, spki_len, cert_len = 0;
    uint8_t spki_sha[32];
    X509 *x = NULL;
    int ok = 0;

    if (!jb64(rep, "ek_pubkey_b64", &pub, &pub_len) ||
        !tpm_pub(en->e, pub, pub_len, &en->ek)) {
        check(&en->ck, "EK public key", 0,
              "ek_pubkey_b64 is not a TPM public area%s%s", pub ? ": " : "",
              pub ? why_last() : "");
        goto out;
    }
    if (en->ek.type != TPM_ALG_RSA ||
        (en->ek.attributes & EK_ATTRS) != EK_ATTRS) {
        check(&en->ck, "EK public key", 0,
              "not an RSA endorsement key (fixedTPM, fixedParent, "
              "sensitiveDataOrigin, restricted, decrypt)");
        goto out;
    }
    if (!jb64(rep, "ek_spki_b64", &spki, &spki_len)) {
        check(&en->ck, "EK public key", 0, "ek_spki_b64 is not base64");
        goto out;
    }
    sha256(spki, spki_len, spki_sha);
    if (!same(spki_sha, en->ek.spki_sha256, 32)) {
        check(&en->ck, "EK public key", 0,
              "ek_spki_b64 and ek_pubkey_b64 are different keys");
        goto out;
    }
    check(&en->ck, "EK public key", 1, "RSA endorsement key, %zu-byte area",
          pub_len);

    /* The certificate: NV often holds it padded with zeros after the
     * DER, which are allowed; the hash is over the DER alone. */
    if (!jnull(rep, "ek_cert_b64")) {
        const unsigned char *p;
        if (!jb64(rep, "ek_cert_b64", &cert, &cert_len) ||
            (p = cert, x = d2i_X509(NULL, &p, (long)cert_len)) == NULL) {
            check(&en->ck, "EK certificate", 0,
                  "ek_cert_b64 is not a DER "
                  "certificate");
            goto out;
        }
        size_t der_len = (size_t)(p - cert);
        for (size_t i = der_len; i < cert_len; i++)
            if (cert[i] != 0) {
                check(&en->ck, "EK certificate", 0,
                      "bytes other than padding follow the certificate");
                goto out;
            }
        sha256(cert, der_len, en->cert_sha);
        en->has_cert = 1;
    }

    const char *chain = "EK certificate chain";
    const char *ca = en->opt->ek_ca_file;
    if (!en->has_cert || ca == NULL) {
        int fine = en->opt->allow_unverified_ek;
        check(&en->ck, chain, 0, "%s%s",
              !en->has_cert ? "the TPM has no EK certificate"
                            : "not checked: no EK CA given",
              fine ? "; the EK is recorded as unverified" : "");
        if (!fine)
            goto out;
    } else {
        X509_STORE *store = X509_STORE_new();
        X509_STORE_CTX *ctx = X509_STORE_CTX_new();
        int vok = 0;
        const char *why = "out of memory";
        if (store && ctx) {
            /* The CA file is the trust anchor the user chose: a vendor's
             * intermediate alone is enough (PARTIAL_CHAIN).  Unknown
             * critical extensions are not ignored: OpenSSL knows the ones
             * EK certificates mark critical (subjectAltName with a
             * directoryName of TPM attributes, keyUsage, basic
             * constraints); the TCG ones it does not know are not
             * critical.  No purpose is set: EK certificates carry the
             * TCG EK purpose (2.23.133.8.1), which OpenSSL does not
             * know. */
            X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN);
            if (X509_STORE_load_file(store, ca) != 1)
                why = "the EK CA file cannot be read as PEM certificates";
            else if (X509_STORE_CTX_init(ctx, store, x, NULL) != 1)
                why = "out of memory";
            else if (X509_verify_cert(ctx) == 1)
                vok = 1;
            else
                why = X509_verify_cert_error_string(
                    X509_STORE_CTX_get_error(ctx));
        }
        if (vok) {
            char subj[160] = "", iss[160] = "";
            X509_NAME_oneline(X509_get_subject_name(x), subj, sizeof subj);
            X509_NAME_oneline(X509_get_issuer_name(x), iss, sizeof iss);
            check(&en->ck, chain, 1, "%s issued by %s, chains to %s", subj, iss,
                  ca);
            en->ek_verified = 1;
        } else {
            check(&en->ck, chain, 0, "%s (against %s)", why, ca);
        }
        X509_STORE_CTX_free(ctx);
        X509_STORE_free(store);
        if (!vok)
            goto out;
    }
    if (en->has_cert) {
        unsigned char *der = NULL;
        int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &der);
        int match =
            n > 0 && (size_t)n == spki_len && !memcmp(der, spki, spki_len);
        OPENSSL_free(der);
        if (!check(&en->ck, "EK certificate key", match, "%s",
                   match ? "the certificate holds the reported EK"
                         : "the certificate is for another key than the "
                           "reported EK"))
            goto out;
    }
    ok = 1;
out:
    X509_free(x);
    free(pub);
    free(spki);
    free(cert);
    return ok;
}

static int check_ak(enroll *en)
{
    uint8_t *pub = NULL, name[NAME_LEN];
    size_t len;
    int ok = 0;
    const char *n = "attestation key";
    if (!jb64(en->report, "aik_pubkey_b64", &pub, &len) ||
        !tpm_pub(en->e, pub, len, &en->ak))
        check(&en->ck, n, 0, "aik_pubkey_b64 is not a TPM public area%s%s",
              pub ? ": " : "", pub ? why_last() : "");
    else if ((en->ak.attributes & AK_ATTRS) != AK_ATTRS)
        check(&en->ck, n, 0,
              "lacks fixedTPM, fixedParent, sensitiveDataOrigin, "
              "restricted or sign");
    else if (!jhex(en->report, "aik_name", name, NAME_LEN) ||
             !same(name, en->ak.name, NAME_LEN))
        check(&en->ck, n, 0, "aik_name is not the name of aik_pubkey_b64");
    else
        ok = check(&en->ck, n, 1,
                   "restricted signing key, fixedTPM, fixedParent, "
                   "sensitiveDataOrigin; name %s",
                   jstr(en->report, "aik_name"));
    free(pub);
    return ok;
}

/* The keys the quote binds: the one /pki/public_key serves and the
 * answer-signing key, each as reported and as hashed here. */
static veil_client_status check_keys(enroll *en, veil_client_error *err)
{
    const cJSON *rep = en->report;
    uint8_t served[32], h[32], *spki = NULL;
    size_t spki_len;
    veil_client_status st = fetch_encryption_key(en, served, err);
    if (st != VEIL_CLIENT_OK)
        return st;
    const char *n = "encryption key";
    if (!jhex(rep, "encryption_key_sha256", en->enc_sha, 32) ||
        !jb64(rep, "encryption_key_spki_b64", &spki, &spki_len)) {
        check(&en->ck, n, 0,
              "encryption_key_sha256 or "
              "encryption_key_spki_b64 malformed");
        goto fail;
    }
    sha256(spki, spki_len, h);
    free(spki);
    spki = NULL;
    if (!same(h, en->enc_sha, 32)) {
        check(&en->ck, n, 0,
              "encryption_key_sha256 is not the hash of "
              "encryption_key_spki_b64");
        goto fail;
    }
    if (!same(served, en->enc_sha, 32)) {
        check(&en->ck, n, 0,
              "the report names another key than "
              "/pki/public_key serves");
        goto fail;
    }
    char hx[65];
    veil_hex(en->enc_sha, 32, hx);
    check(&en->ck, n, 1, "sha256:%s, as /pki/public_key serves it", hx);

    n = "signing key";
    veil_key *k = NULL;
    veil_key_info info;
    if (jnull(rep, "signing_key_spki_b64")) {
        check(&en->ck, n, 0,
              "the gateway has no answer-signing key (signing_key in "
              "veild.conf): its answers could not be verified");
        goto fail;
    }
    if (!jhex(rep, "signing_key_sha256", en->sign_sha, 32) ||
        !jb64(rep, "signing_key_spki_b64", &en->sign_spki,
              &en->sign_spki_len)) {
        check(&en->ck, n, 0,
              "signing_key_sha256 or signing_key_spki_b64 malformed");
        goto fail;
    }
    sha256(en->sign_spki, en->sign_spki_len, h);
    char refused[160] = "";
    int kok = veil_key_from_public(en->e, en->sign_spki, en->sign_spki_len,
                                   &k) == VEIL_OK &&
              veil_key_get_info(k, &info) == VEIL_OK &&
              info.type == VEIL_KEY_EC_P256 &&
              veil_cl_key_check(k, 0, refused, sizeof refused);
    veil_key_free(k);
    if (refused[0]) {
        check(&en->ck, n, 0, "signing_key_spki_b64 is refused: %s", refused);
        goto fail;
    }
    if (!kok) {
        check(&en->ck, n, 0, "signing_key_spki_b64 is not a P-256 key");
        goto fail;
    }
    if (!same(h, en->sign_sha, 32)) {
        check(&en->ck, n, 0,
              "signing_key_sha256 is not the hash of "
              "signing_key_spki_b64");
        goto fail;
    }
    veil_hex(en->sign_sha, 32, hx);
    check(&en->ck, n, 1, "ECDSA P-256 sha256:%s", hx);
    return VEIL_CLIENT_OK;
fail:
    free(spki);
    return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_VERIFY, "%s",
                        en->ck.failed);
}

/* Credential activation: a secret only the TPM holding the EK's private
 * key, with an object of the AK's name loaded, can recover. */
static veil_client_status activate(enroll *en, veil_client_error *err)
{
    const char *n = "credential activation";
    uint8_t secret[SECRET_LEN], blob[514], enc[514]; /* RSA-4096 EKs */
    size_t blob_len = sizeof blob, enc_len = sizeof enc;
    char *b1 = NULL, *b2 = NULL, *body = NULL;
    cJSON *req = NULL, *ans = NULL;
    uint8_t *got = NULL;
    size_t got_len = 0;
    veil_http_response r = {0};
    veil_client_status st = VEIL_CLIENT_E_SECURITY;

    if (veil_random(en->e, secret, sizeof secret) != VEIL_OK ||
        veil_tpm_make_credential(en->e, &en->ek, en->ak.name, NAME_LEN, secret,
                                 sizeof secret, blob, &blob_len, enc,
                                 &enc_len) != VEIL_OK) {
        check(&en->ck, n, 0, "MakeCredential: %s", why_last());
        veil_cl_fail(err, st, 0, VEIL_E_CRYPTO, "%s", en->ck.failed);
        goto out;
    }
    if ((b1 = veil_b64_encode(blob, blob_len)) == NULL ||
        (b2 = veil_b64_encode(enc, enc_len)) == NULL ||
        (req = cJSON_CreateObject()) == NULL ||
        !cJSON_AddStringToObject(req, "credential_blob_b64", b1) ||
        !cJSON_AddStringToObject(req, "encrypted_secret_b64", b2) ||
        (body = cJSON_PrintUnformatted(req)) == NULL) {
        st = veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_NOMEM,
                          "out of memory");
        goto out;
    }
    st = gw_http(en, "/v1/attestation/activate", body, &r, err);
    if (st != VEIL_CLIENT_OK) {
        check(&en->ck, n, 0, "POST /v1/attestation/activate: %s",
              err ? err->detail : "failed");
        /* The TPM refusing the credential means the AK and the EK are not
         * one TPM's, as far as this client can tell. */
        if (r.status == 400 || (err && err->http_status == 400))
            st = veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 400, VEIL_E_VERIFY,
                              "%s", en->ck.failed);
        goto out;
    }
    st = VEIL_CLIENT_E_SECURITY;
    ans = cJSON_ParseWithLength(r.body ? r.body : "", r.len);
    if (!jb64(ans, "secret_b64", &got, &got_len)) {
        check(&en->ck, n, 0, "the answer has no base64 secret_b64");
    } else if (got_len != sizeof secret || !same(got, secret, sizeof secret)) {
        check(&en->ck, n, 0,
              "the secret recovered is not the one sent: the AK is not "
              "in the TPM of this EK");
    } else {
        check(&en->ck, n, 1,
              "the TPM holding the EK recovered a secret bound to the AK's "
              "name");
        st = VEIL_CLIENT_OK;
    }
    if (st != VEIL_CLIENT_OK)
        veil_cl_fail(err, st, 200, VEIL_E_VERIFY, "%s", en->ck.failed);
out:
    veil_cl_wipe(secret, sizeof secret);
    if (got)
        veil_cl_wipe(got, got_len);
    free(got);
    free(b1);
    free(b2);
    free(body);
    free(r.body);
    cJSON_Delete(req);
    cJSON_Delete(ans);
    return st;
}

static int check_report_quote(enroll *en)
{
    quote_in q;
    char why[256];
    uint8_t qual[32];
    int ok = 0;
    if (!decode_quote(en->report, 0, &q, why, sizeof why)) {
        check(&en->ck, "quote", 0, "%s", why);
        goto out;
    }
    veil_ev_report_qualifying(en->nonce, sizeof en->nonce, en->enc_sha,
                              en->sign_sha, qual);
    if (veil_tpm_check_quote(en->e, &en->ak, q.quote, q.quote_len, q.sig,
                             q.sig_len, qual, &q.sel,
                             (const uint8_t(*)[32])q.values) != VEIL_OK) {
        check(&en->ck, "quote", 0, "%s", why_last());
        goto out;
    }
    char sel[96];
    sel_text(&q.sel, sel, sizeof sel);
    check(&en->ck, "quote", 1,
          "signed by the AK over this nonce and both keys; PCR digest of "
          "%s",
          sel);
    if (q.has_kc &&
        !check_key_certify(en->e, &en->ak, &q, en->enc_sha, qual, &en->ck))
        goto out;
    en->sel = q.sel;
    memcpy(en->values, q.values, sizeof en->values);
    ok = 1;
out:
    quote_in_free(&q);
    return ok;
}

static veil_client_status write_trust(enroll *en, veil_client_error *err)
{
    const cJSON *rep = en->report;
    const char *path = en->opt->trust_file;
    char hx[72], selt[96];
    cJSON *j = cJSON_CreateObject(), *pcrs = pcrs_json(&en->sel, en->values);
    char *text = NULL,
         *sign_b64 = veil_b64_encode(en->sign_spki, en->sign_spki_len);
    const cJSON *sw = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(rep, "tpm"), "software_tpm");
    int ok = j && pcrs && sign_b64 &&
             cJSON_AddStringToObject(j, "format", TRUST_FORMAT) &&
             cJSON_AddStringToObject(j, "url", en->url) &&
             cJSON_AddNumberToObject(j, "enrolled_at", (double)time(NULL)) &&
             cJSON_AddBoolToObject(j, "ek_verified", en->ek_verified);
    if (ok && en->has_cert) {
        veil_hex(en->cert_sha, 32, hx);
        ok = cJSON_AddStringToObject(j, "ek_cert_sha256", hx) != NULL;
    } else if (ok) {
        ok = cJSON_AddNullToObject(j, "ek_cert_sha256") != NULL;
    }
    ok = ok &&
         cJSON_AddStringToObject(j, "ek_pubkey_b64",
                                 jstr(rep, "ek_pubkey_b64")) &&
         cJSON_AddStringToObject(j, "aik_pubkey_b64",
                                 jstr(rep, "aik_pubkey_b64"));
    if (ok) {
        veil_hex(en->ak.name, NAME_LEN, hx);
        ok = cJSON_AddStringToObject(j, "aik_name", hx) != NULL;
    }
    if (ok) {
        veil_hex(en->enc_sha, 32, hx);
        ok = cJSON_AddStringToObject(j, "encryption_key_sha256", hx) &&
             cJSON_AddStringToObject(j, "signing_key_spki_b64", sign_b64);
    }
    if (ok) {
        veil_hex(en->sign_sha, 32, hx);
        sel_text(&en->sel, selt, sizeof selt);
        ok = cJSON_AddStringToObject(j, "signing_key_sha256", hx) &&
             cJSON_AddStringToObject(j, "pcr_banks", selt) &&
             cJSON_AddItemToObject(j, "pcr_values", pcrs);
        if (ok)
            pcrs = NULL;
        ok = ok && cJSON_AddBoolToObject(j, "software_tpm", cJSON_IsTrue(sw));
    }
    if (ok)
        ok = (text = cJSON_Print(j)) != NULL;
    free(sign_b64);
    cJSON_Delete(pcrs);
    cJSON_Delete(j);
    if (!ok) {
        free(text);
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_NOMEM,
                            "out of memory");
    }

    /* A temporary file next to the target, then renamed over it (or, when
     * overwriting is not allowed, linked: that fails if the target
     * appeared meanwhile), so a reader never sees half a file. */
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    int fd = -1, saved = 0;
    const char *step = "out of memory";
    if (tmp != NULL) {
        snprintf(tmp, plen + 16, "%s.tmp.XXXXXX", path);
        step = "creating a temporary file";
        fd = mkstemp(tmp);
    }
    if (fd >= 0) {
        size_t len = strlen(text), off = 0;
        step = "writing";
        while (off < len) {
            ssize_t w = write(fd, text + off, len - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                break;
            off += (size_t)w;
        }
        if (off == len && write(fd, "\n", 1) == 1 && fchmod(fd, 0644) == 0 &&
            fsync(fd) == 0) {
            step = en->opt->overwrite ? "renaming" : "linking";
            if (en->opt->overwrite ? rename(tmp, path) == 0
                                   : link(tmp, path) == 0) {
                saved = 1;
                if (!en->opt->overwrite)
                    unlink(tmp);
            }
        }
    }
    int e = errno;
    if (fd >= 0) {
        close(fd);
        if (!saved)
            unlink(tmp);
    }
    free(tmp);
    free(text);
    if (!saved) {
        if (e == EEXIST)
            check(&en->ck, "trust file", 0, "%s already exists", path);
        else
            check(&en->ck, "trust file", 0, "%s: %s: %s", path, step,
                  strerror(e));
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_IO, "%s",
                            en->ck.failed);
    }
    check(&en->ck, "trust file", 1, "%s written", path);
    return VEIL_CLIENT_OK;
}

/* The report on a fresh nonce, its echo of that nonce, and the TPM's
 * description. */
static veil_client_status fetch_report(enroll *en, veil_client_error *err)
{
    char nonce_hex[2 * NONCE_LEN + 1], path[160];
    veil_http_response r;
    const char *n = "attestation report";
    if (veil_random(en->e, en->nonce, sizeof en->nonce) != VEIL_OK)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_CRYPTO,
                            "no random nonce: %s", why_last());
    veil_hex(en->nonce, sizeof en->nonce, nonce_hex);
    snprintf(path, sizeof path, "/v1/attestation/report?nonce=%s", nonce_hex);
    veil_client_status st = gw_http(en, path, NULL, &r, err);
    if (st != VEIL_CLIENT_OK) {
        check(&en->ck, n, 0, "GET /v1/attestation/report: %s",
              err ? err->detail : "failed");
        return st;
    }
    en->report = cJSON_ParseWithLength(r.body ? r.body : "", r.len);
    free(r.body);
    const char *format = jstr(en->report, "format");
    const char *echo = jstr(en->report, "nonce");
    if (format == NULL || strcmp(format, REPORT_FORMAT) != 0)
        check(&en->ck, n, 0, "not a " REPORT_FORMAT " object");
    else if (echo == NULL || strcasecmp(echo, nonce_hex) != 0)
        check(&en->ck, n, 0, "it answers another nonce");
    else {
        const cJSON *tpm = cJSON_GetObjectItemCaseSensitive(en->report, "tpm");
        const char *m = jstr(tpm, "manufacturer"), *v = jstr(tpm, "vendor"),
                   *fw = jstr(tpm, "firmware");
        int sw =
            cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(tpm, "software_tpm"));
        check(&en->ck, n, 1, "TPM %s %s firmware %s%s", m ? m : "?",
              v ? v : "?", fw ? fw : "?",
              sw ? "; a SOFTWARE TPM: its evidence proves nothing about "
                   "the machine"
                 : "");
        return VEIL_CLIENT_OK;
    }
    return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_VERIFY, "%s",
                        en->ck.failed);
}

veil_client_status veil_attest_enroll(const veil_enroll_options *opt,
                                      veil_client_error *err)
{
    enroll en = {.opt = opt};
    veil_client_status st = VEIL_CLIENT_E_CONFIG;
    struct stat sb;
    if (err)
        memset(err, 0, sizeof *err);
    if (opt == NULL || opt->url == NULL || opt->trust_file == NULL)
        return veil_cl_fail(err, st, 0, VEIL_E_ARG,
                            "enrolment needs a URL and a trust file");
    en.ck.fn = opt->on_check;
    en.ck.ctx = opt->check_ctx;
    char shown[512];
    veil_cl_redact_url(opt->url, shown, sizeof shown);
    if (!strncmp(opt->url, "http://", 7) && !opt->allow_http)
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 0, VEIL_E_ARG,
                            "plain http is refused (%s): use https, or allow "
                            "http for local development only",
                            shown);
    if (strncmp(opt->url, "https://", 8) && strncmp(opt->url, "http://", 7))
        return veil_cl_fail(err, st, 0, VEIL_E_ARG,
                            "the base URL must start with https:// (%s)",
                            shown);
    if (opt->api_key &&
        (opt->api_key[0] == '\0' || strpbrk(opt->api_key, "\r\n")))
        return veil_cl_fail(err, st, 0, VEIL_E_ARG,
                            "the API key is empty or contains a line break");
    /* Refused before any traffic; write_trust still refuses atomically. */
    if (!opt->overwrite && lstat(opt->trust_file, &sb) == 0)
        return veil_cl_fail(err, st, 0, VEIL_E_EXISTS,
                            "the trust file %s already exists",
                            opt->trust_file);
    if ((en.url = url_dup(opt->url)) == NULL)
        return veil_cl_fail(err, st, 0, VEIL_E_NOMEM, "out of memory");
    en.e = opt->engine;
    if (en.e == NULL && veil_engine_new(NULL, &en.e) != VEIL_OK) {
        en.e = NULL;
        veil_cl_fail(err, st, 0, VEIL_E_NOMEM, "starting an engine: %s",
                     why_last());
        goto out;
    }
    if ((en.tx = veil_transport_new(
             opt->ca_file, opt->timeout_ms ? opt->timeout_ms : 60000)) ==
        NULL) {
        veil_cl_fail(err, st, 0, VEIL_E_NOMEM, "could not start libcurl");
        goto out;
    }
    st = fetch_report(&en, err);
    if (st != VEIL_CLIENT_OK)
        goto out;
    st = VEIL_CLIENT_E_SECURITY;
    if (!check_ek(&en) || !check_ak(&en)) {
        veil_cl_fail(err, st, 200, VEIL_E_VERIFY, "%s", en.ck.failed);
        goto out;
    }
    if ((st = check_keys(&en, err)) != VEIL_CLIENT_OK ||
        (st = activate(&en, err)) != VEIL_CLIENT_OK)
        goto out;
    st = VEIL_CLIENT_E_SECURITY;
    if (!check_report_quote(&en)) {
        veil_cl_fail(err, st, 200, VEIL_E_VERIFY, "%s", en.ck.failed);
        goto out;
    }
    st = write_trust(&en, err);
out:
    veil_tpm_pub_clear(&en.ek);
    veil_tpm_pub_clear(&en.ak);
    free(en.sign_spki);
    cJSON_Delete(en.report);
    veil_transport_free(en.tx);
    if (en.e != opt->engine)
        veil_engine_free(en.e);
    free(en.url);
    return st;
}
