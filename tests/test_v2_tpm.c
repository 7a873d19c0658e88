/* Protocol v2 with the KEM keys in the TPM (kem_keys = tpm; issue 14,
 * docs/PROTOCOL-V2.md 4.2 and 4.4), against veild for real: the gateway
 * started as a process with tpm = on over the test TPM (swtpm behind
 * tpm2-abrmd, tests/env/with-tokens.sh: "tpm" in the name), the server key
 * in a key directory, the echo model; spoken to over HTTP (libcurl) by a
 * client made here from protocol/ohttp.c, hpke.c and bhttp.c.
 *
 *   - a request opens (the KEM key's ECDH in the TPM) and its answer reads;
 *   - GET /v2/keys/certify?key_id=N: the TPM2_Certify of the current key by
 *     the long-term AK of /v1/attestation/report verifies
 *     (veil_tpm_check_certify), names a public area that is ECC P-256,
 *     decrypt, fixedTPM, fixedParent, not restricted, whose point is the
 *     key configuration's; an unknown ID is 404, a bad one 400; a gateway
 *     whose KEM keys are not TPM objects answers 404 saying so;
 *   - the client's own chain check (client/v2_cert.c) holds on it, and
 *     names the check that fails for another key ID or point;
 *   - rotation: the replaced key opens during its grace, then is flushed
 *     from the TPM (logged), its recording gets the uniform 400 byte for
 *     byte, and its certification is gone (404).
 *   - libveil on maximum, enrolled (veil_attest_enroll) with the KEM keys
 *     in the TPM: three requests fetch the key's certification once, and
 *     the key after a rotation is fetched once more.
 * No timed assertions: the rotation case waits for the gateway's clock. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <openssl/core_names.h>
#include <openssl/rand.h>

#include "bhttp.h"
#include "engine_int.h"
#include "evidence.h"
#include "gwtest.h"
#include "hpke.h"
#include "ohttp.h"
#include "package.h"
#include "testutil.h"
#include "v2_cert.h"
#include "veil/attest.h"
#include "veil/client.h"

#define WK "/.well-known/ohttp-gateway"
#define UNIFORM                                                                \
    "{\"type\":\"https://iana.org/assignments/http-problem-types#ohttp-key\"," \
    "\"title\":\"Oblivious HTTP key configuration not acceptable\"}"
#define CHAT_ECHO                                                              \
    "{\"model\":\"echo\",\"messages\":[{\"role\":\"user\",\"content\":"        \
    "\"a prompt to a key in the TPM\"}]}"

static veil_engine *sw_e;
static char keydir_ref[600];
static tu_proc gw, gw_sw;

/* ---- HTTP ---------------------------------------------------------------- */

typedef struct resp {
    long status;
    char *body;
    size_t len;
} resp;

typedef struct buf {
    char *p;
    size_t len;
} buf;

static size_t on_data(char *d, size_t size, size_t n, void *ctx)
{
    buf *b = ctx;
    char *p = realloc(b->p, b->len + size * n + 1);

    if (p == NULL)
        return 0;
    memcpy(p + b->len, d, size * n);
    b->len += size * n;
    p[b->len] = '\0';
    b->p = p;
    return size * n;
}

/* GET path (body NULL) or POST body as message/ohttp-req. */
static int http(const tu_proc *p, const char *path, const uint8_t *body,
                size_t len, resp *r)
{
    char url[256];
    buf b = {0};
    struct curl_slist *hdrs = NULL;
    CURL *c = curl_easy_init();
    CURLcode rc;

    memset(r, 0, sizeof *r);
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", p->port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    if (body) {
        hdrs = curl_slist_append(hdrs, "Content-Type: " VEIL_OHTTP_MEDIA_REQ);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
    }
    rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    r->body = b.p;
    r->len = b.len;
    if (rc != CURLE_OK)
        fprintf(stderr, "HTTP to %s: %s\n", url, curl_easy_strerror(rc));
    return rc == CURLE_OK ? 0 : -1;
}

static int fetch_config(const tu_proc *p, veil_ohttp_keyconfig *cfg)
{
    veil_ohttp_keyconfig *all = NULL;
    size_t n = 0;
    resp r;
    int ok;

    if (http(p, WK, NULL, 0, &r) != 0)
        return -1;
    ok = r.status == 200 &&
         veil_ohttp_keys_decode((const uint8_t *)r.body, r.len, &all, &n) ==
             VEIL_OK &&
         n >= 1;
    if (ok)
        *cfg = all[0];
    free(all);
    free(r.body);
    return ok ? 0 : -1;
}

static uint8_t *encap(const veil_ohttp_keyconfig *cfg, size_t *len,
                      veil_ohttp_ctx **ctx)
{
    veil_bhttp_field f = {VEIL_BSTR("content-type"),
                          VEIL_BSTR("application/json")};
    veil_bhttp_msg m = {.is_request = 1,
                        .method = VEIL_BSTR("POST"),
                        .scheme = VEIL_BSTR("https"),
                        .authority = VEIL_BSTR("gateway.test"),
                        .path = VEIL_BSTR("/v1/chat/completions"),
                        .headers = {&f, 1},
                        .content = VEIL_BSTR(CHAT_ECHO)};
    veil_ohttp_alg alg = {VEIL_HPKE_KDF_SHA256, VEIL_HPKE_AEAD_AES256GCM};
    veil_secbuf *plain = NULL;
    uint8_t *out = NULL;

    if (veil_bhttp_encode(&m, 0, &plain) != VEIL_OK ||
        veil_ohttp_encap_request(sw_e, cfg, alg, veil_secbuf_data(plain),
                                 veil_secbuf_len(plain), NULL, &out, len,
                                 ctx) != VEIL_OK) {
        fprintf(stderr, "encap: %s\n", veil_last_error()->message);
        out = NULL;
    }
    veil_secbuf_free(plain);
    return out;
}

/* The inner status of an answer, -1 when it does not open; the content
 * must hold the prompt. */
static int open_answer(veil_ohttp_ctx *ctx, const resp *r)
{
    veil_secbuf *plain = NULL;
    veil_bhttp_msg *m = NULL;
    int status = -1;

    if (r->status == 200 &&
        veil_ohttp_decap_response(sw_e, ctx, (const uint8_t *)r->body, r->len,
                                  &plain) == VEIL_OK &&
        veil_bhttp_decode(veil_secbuf_data(plain), veil_secbuf_len(plain),
                          VEIL_BHTTP_RESPONSE, NULL, &m) == VEIL_OK) {
        status = (int)m->status;
        CU_ASSERT(m->content.len > 0 &&
                  memmem(m->content.p, m->content.len, "in the TPM", 10));
    }
    veil_bhttp_msg_free(m);
    veil_secbuf_free(plain);
    return status;
}

static void expect_uniform(const resp *r)
{
    CU_ASSERT_EQUAL(r->status, 400);
    CU_ASSERT(r->body && r->len == sizeof UNIFORM - 1 &&
              memcmp(r->body, UNIFORM, sizeof UNIFORM - 1) == 0);
}

static int log_has(const tu_proc *p, const char *text)
{
    char *log = tu_read_file(p->log, NULL);
    int yes = log && strstr(log, text) != NULL;

    free(log);
    return yes;
}

/* A veild with tpm = on; kem_keys = tpm unless sw; answers signed with
 * the key at `signing` (a dir: reference) and every request logged,
 * unless signing is NULL. */
static int start_signed(tu_proc *g, const char *name, int sw,
                        const char *rotate, const char *grace,
                        const char *signing)
{
    char state[700];
    const char *base[] = {"--state-dir", state,    "--replay-capacity",
                          "65536",       "--rate", "1000",
                          "--burst",     "1000",   NULL};
    const char *extra[] = {"--server-key",
                           keydir_ref,
                           "--model",
                           "echo=echo",
                           "--tpm",
                           "on",
                           "--tpm-tcti",
                           tu_env("TPM2TOOLS_TCTI"),
                           "--kem-keys",
                           sw ? "software" : "tpm",
                           "--kem-rotate",
                           rotate,
                           "--kem-grace",
                           grace,
                           signing ? "--signing-key" : NULL,
                           signing,
                           /* with signing only: unadmitted GETs such as
                            * /v2/keys/certify are logged at debug */
                           "--log-level",
                           "debug",
                           NULL};

    snprintf(state, sizeof state, "%s/%s.state", tu_env("VEIL_TEST_DIR"), name);
    return gt_veild_start(g, name, base, extra, TU_LOG_FRESH);
}

static int start(tu_proc *g, const char *name, int sw, const char *rotate,
                 const char *grace)
{
    return start_signed(g, name, sw, rotate, grace, NULL);
}

/* ---- the certification --------------------------------------------------- */

static uint8_t *b64_of(const cJSON *j, const char *key, size_t *len)
{
    const char *s = tu_json_str(j, key);
    uint8_t *out = NULL;

    if (!s || veil_b64_decode(s, strlen(s), &out, len) != VEIL_OK)
        return NULL;
    return out;
}

static cJSON *get_json(const tu_proc *p, const char *path, long *status)
{
    resp r;
    cJSON *j = NULL;

    if (http(p, path, NULL, 0, &r) == 0) {
        *status = r.status;
        j = cJSON_Parse(r.body ? r.body : "");
    }
    free(r.body);
    return j;
}

/* The long-term AK, from a report. */
static int report_ak(const tu_proc *p, veil_tpm_pub *ak, char *name_hex)
{
    uint8_t nonce[16];
    char hex[33], path[96];
    long st = 0;
    size_t len = 0;
    uint8_t *pub;
    cJSON *rep;
    int rc = -1;

    RAND_bytes(nonce, sizeof nonce);
    veil_hex(nonce, sizeof nonce, hex);
    snprintf(path, sizeof path, "/v1/attestation/report?nonce=%s", hex);
    rep = get_json(p, path, &st);
    if (st == 200 && (pub = b64_of(rep, "aik_pubkey_b64", &len)) != NULL) {
        rc = veil_tpm_pub_parse(sw_e, pub, len, ak) == VEIL_OK ? 0 : -1;
        snprintf(name_hex, 80, "%s", tu_json_str(rep, "aik_name"));
        free(pub);
    }
    cJSON_Delete(rep);
    return rc;
}

/* Checks the certification of cfg's key: VEIL_OK or the check's code. */
static veil_rc check_cert(const cJSON *c, const veil_tpm_pub *ak,
                          const veil_ohttp_keyconfig *cfg)
{
    size_t alen = 0, slen = 0, plen = 0, n = 0;
    uint8_t *attest = b64_of(c, "certify_info_b64", &alen);
    uint8_t *sig = b64_of(c, "signature_b64", &slen);
    uint8_t *pub = b64_of(c, "public_b64", &plen);
    uint8_t q[32], point[65];
    veil_tpm_pub kem = {0};
    veil_rc rc = VEIL_E_ARG;

    veil_ev_kem_certify_qualifying(cfg->key_id, cfg->pk, cfg->pk_len, q);
    if (attest && sig && pub &&
        veil_tpm_pub_parse(sw_e, pub, plen, &kem) == VEIL_OK) {
        rc = veil_tpm_check_certify(sw_e, ak, attest, alen, sig, slen, q, &kem,
                                    VEIL_TPMA_DECRYPT | VEIL_TPMA_FIXEDTPM |
                                        VEIL_TPMA_FIXEDPARENT);
        CU_ASSERT_EQUAL(kem.type, 0x0023); /* ECC */
        CU_ASSERT_EQUAL(
            kem.attributes & (VEIL_TPMA_RESTRICTED | VEIL_TPMA_SIGN), 0);
        CU_ASSERT(EVP_PKEY_get_octet_string_param(
                      kem.key->pub, OSSL_PKEY_PARAM_PUB_KEY, point,
                      sizeof point, &n) == 1);
        if (rc == VEIL_OK && (n != cfg->pk_len || memcmp(point, cfg->pk, n)))
            rc = VEIL_E_VERIFY; /* another key than the configuration's */
    }
    veil_tpm_pub_clear(&kem);
    free(attest);
    free(sig);
    free(pub);
    return rc;
}

/* ---- the cases ----------------------------------------------------------- */

static void test_round_trip(void)
{
    veil_ohttp_keyconfig cfg;
    veil_ohttp_ctx *ctx = NULL;
    size_t len = 0;
    uint8_t *req;
    resp r;

    CU_ASSERT(log_has(&gw, "v2: KEM keys (P-256) are made in the TPM"));
    CU_ASSERT_EQUAL_FATAL(fetch_config(&gw, &cfg), 0);
    req = encap(&cfg, &len, &ctx);
    CU_ASSERT_FATAL(req != NULL);
    CU_ASSERT_EQUAL_FATAL(http(&gw, WK, req, len, &r), 0);
    CU_ASSERT_EQUAL(open_answer(ctx, &r), 200);
    free(r.body);
    free(req);
    veil_ohttp_ctx_free(ctx);
}

/* The gateway's key configuration, its AK (from the report) and the
 * certification of that configuration's key (GET /v2/keys/certify). */
static cJSON *config_and_cert(veil_ohttp_keyconfig *cfg, veil_tpm_pub *ak,
                              char ak_name[80], long *st)
{
    char path[64];

    CU_ASSERT_EQUAL_FATAL(fetch_config(&gw, cfg), 0);
    CU_ASSERT_EQUAL_FATAL(report_ak(&gw, ak, ak_name), 0);
    snprintf(path, sizeof path, "/v2/keys/certify?key_id=%u",
             (unsigned)cfg->key_id);
    return get_json(&gw, path, st);
}

static void test_certify(void)
{
    veil_ohttp_keyconfig cfg;
    veil_tpm_pub ak = {0};
    char path[64], ak_name[80] = "";
    long st = 0;
    cJSON *c;

    c = config_and_cert(&cfg, &ak, ak_name, &st);
    CU_ASSERT_EQUAL(st, 200);
    CU_ASSERT_FATAL(c != NULL);
    CU_ASSERT_EQUAL(cJSON_GetNumberValue(cJSON_GetObjectItem(c, "key_id")),
                    cfg.key_id);
    CU_ASSERT_STRING_EQUAL(tu_json_str(c, "ak_name_hex"), ak_name);
    CU_ASSERT_EQUAL(check_cert(c, &ak, &cfg), VEIL_OK);
    /* the same certification does not pass for another key ID (its
     * qualifying data) nor for another point */
    {
        veil_ohttp_keyconfig other = cfg;
        other.key_id = (uint8_t)(cfg.key_id + 1);
        CU_ASSERT_EQUAL(check_cert(c, &ak, &other), VEIL_E_VERIFY);
        other = cfg;
        other.pk[64] ^= 1;
        CU_ASSERT_NOT_EQUAL(check_cert(c, &ak, &other), VEIL_OK);
    }
    cJSON_Delete(c);
    /* an ID that names no key; a malformed one */
    snprintf(path, sizeof path, "/v2/keys/certify?key_id=%u",
             (unsigned)(uint8_t)(cfg.key_id + 100));
    cJSON_Delete(get_json(&gw, path, &st));
    CU_ASSERT_EQUAL(st, 404);
    const char *bad[] = {
        "/v2/keys/certify",
        "/v2/keys/certify?key_id=", "/v2/keys/certify?key_id=256",
        "/v2/keys/certify?key_id=-1", "/v2/keys/certify?key_id=1x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cJSON_Delete(get_json(&gw, bad[i], &st));
        CU_ASSERT_EQUAL(st, 400);
    }
    veil_tpm_pub_clear(&ak);
}

/* The client's chain check (client/v2_cert.c, as enrolment and the
 * maximum tier run it) on the same real certification: it holds for the
 * configuration, and names the check that fails for another key ID,
 * another point, or a configuration whose key is no 65-byte point (refused
 * before the point is read). */
static void test_certify_client(void)
{
    veil_ohttp_keyconfig cfg, other;
    veil_tpm_pub ak = {0};
    veil_cl_kem_why w;
    char ak_name[80] = "", *body;
    long st = 0;
    cJSON *c;

    c = config_and_cert(&cfg, &ak, ak_name, &st);
    CU_ASSERT_FATAL(st == 200 && c != NULL);
    body = cJSON_PrintUnformatted(c);
    cJSON_Delete(c);
    CU_ASSERT_FATAL(body != NULL);
    CU_ASSERT_EQUAL(veil_cl_kem_cert_check(sw_e, &ak, "the AK", body,
                                           strlen(body), &cfg, &w),
                    1);
    other = cfg;
    other.key_id = (uint8_t)(cfg.key_id + 1);
    CU_ASSERT_EQUAL(veil_cl_kem_cert_check(sw_e, &ak, "the AK", body,
                                           strlen(body), &other, &w),
                    0);
    CU_ASSERT_STRING_EQUAL(w.what, "certification");
    CU_ASSERT_STRING_EQUAL(w.why, "it is for another key ID");
    other = cfg;
    other.pk[64] ^= 1;
    CU_ASSERT_EQUAL(veil_cl_kem_cert_check(sw_e, &ak, "the AK", body,
                                           strlen(body), &other, &w),
                    0);
    CU_ASSERT_STRING_EQUAL(w.what, "the KEM key's public area");
    CU_ASSERT(strstr(w.why, "its point is not") != NULL);
    other = cfg;
    other.pk_len = 32;
    CU_ASSERT_EQUAL(veil_cl_kem_cert_check(sw_e, &ak, "the AK", body,
                                           strlen(body), &other, &w),
                    0);
    CU_ASSERT(strstr(w.why, "not a 65-byte P-256 point") != NULL);
    CU_ASSERT_EQUAL(
        veil_cl_kem_cert_check(sw_e, &ak, "the AK", "[]", 2, &cfg, &w), 0);
    CU_ASSERT_STRING_EQUAL(w.why, "the answer is not a JSON object");
    free(body);
    veil_tpm_pub_clear(&ak);
}

/* kem_keys = software on a gateway with a TPM: nothing to certify (the
 * permanent 404, saying why). */
static void test_not_tpm(void)
{
    veil_ohttp_keyconfig cfg;
    char path[64];
    resp r;

    CU_ASSERT_EQUAL_FATAL(start(&gw_sw, "v2tpm-sw", 1, "3600", "300"), 0);
    CU_ASSERT(log_has(&gw_sw, "v2: KEM keys (P-256) are made in software"));
    CU_ASSERT_EQUAL_FATAL(fetch_config(&gw_sw, &cfg), 0);
    snprintf(path, sizeof path, "/v2/keys/certify?key_id=%u",
             (unsigned)cfg.key_id);
    CU_ASSERT_EQUAL_FATAL(http(&gw_sw, path, NULL, 0, &r), 0);
    CU_ASSERT_EQUAL(r.status, 404);
    CU_ASSERT(r.body && strstr(r.body, "not TPM objects") != NULL);
    free(r.body);
    gt_stop_ok(&gw_sw);
}

/* Rotation, grace, then the key flushed from the TPM: the recording gets
 * the uniform 400, byte for byte, and the certification is gone. */
static void test_rotation(void)
{
    veil_ohttp_keyconfig a, b;
    veil_ohttp_ctx *c1 = NULL, *c2 = NULL;
    size_t l1 = 0, l2 = 0;
    uint8_t *r1, *r2;
    char path[64], line[80];
    resp r, junk;
    tu_proc g;
    int i;

    CU_ASSERT_EQUAL_FATAL(start(&g, "v2tpm-rot", 0, "6", "3"), 0);
    CU_ASSERT_EQUAL_FATAL(fetch_config(&g, &a), 0);
    r1 = encap(&a, &l1, &c1);
    r2 = encap(&a, &l2, &c2);
    CU_ASSERT_FATAL(r1 && r2);
    for (i = 0; i < 100; i++) { /* the next key, within 6 s */
        CU_ASSERT_EQUAL_FATAL(fetch_config(&g, &b), 0);
        if (b.key_id != a.key_id)
            break;
        usleep(100000);
    }
    CU_ASSERT_EQUAL_FATAL(b.key_id, (uint8_t)(a.key_id + 1));
    CU_ASSERT(memcmp(a.pk, b.pk, 65) != 0);
    /* in grace: it opens, and its certification is still there */
    CU_ASSERT_EQUAL_FATAL(http(&g, WK, r1, l1, &r), 0);
    CU_ASSERT_EQUAL(open_answer(c1, &r), 200);
    free(r.body);
    snprintf(path, sizeof path, "/v2/keys/certify?key_id=%u",
             (unsigned)a.key_id);
    CU_ASSERT_EQUAL_FATAL(http(&g, path, NULL, 0, &r), 0);
    CU_ASSERT_EQUAL(r.status, 200);
    free(r.body);
    snprintf(line, sizeof line,
             "v2: KEM key %u destroyed (flushed from the TPM)",
             (unsigned)a.key_id);
    for (i = 0; i < 100 && !log_has(&g, line); i++)
        usleep(100000); /* the grace ends within 3 s */
    CU_ASSERT(log_has(&g, line));
    /* the recording: the uniform 400, the same bytes as junk gets */
    CU_ASSERT_EQUAL_FATAL(http(&g, WK, r2, l2, &r), 0);
    expect_uniform(&r);
    CU_ASSERT_EQUAL_FATAL(http(&g, WK, (const uint8_t *)"junk", 4, &junk), 0);
    CU_ASSERT(junk.status == r.status && junk.len == r.len &&
              memcmp(junk.body, r.body, r.len) == 0);
    free(junk.body);
    free(r.body);
    CU_ASSERT_EQUAL_FATAL(http(&g, path, NULL, 0, &r), 0);
    CU_ASSERT_EQUAL(r.status, 404);
    free(r.body);
    gt_stop_ok(&g);
    free(r1);
    free(r2);
    veil_ohttp_ctx_free(c1);
    veil_ohttp_ctx_free(c2);
}

/* How many times p's log shows the line "GET /v2/keys/certify 200". */
static int certify_gets(const tu_proc *p)
{
    char *log = tu_read_file(p->log, NULL);
    int n = 0;

    for (const char *at = log; at && (at = strstr(at, "GET /v2/keys/certify 200"));
         at++)
        n++;
    free(log);
    return n;
}

static int chat_max(veil_client *c)
{
    cJSON *req = cJSON_Parse(CHAT_ECHO), *ans = NULL;
    veil_client_error err;
    veil_client_status st = veil_chat_create(c, req, NULL, &ans, NULL, &err);

    if (st != VEIL_CLIENT_OK)
        fprintf(stderr, "maximum over v2: %s\n", err.detail);
    cJSON_Delete(req);
    veil_chat_response_free(ans);
    return st == VEIL_CLIENT_OK ? 0 : -1;
}

/* libveil on maximum over v2, enrolled with the KEM keys in the TPM: the
 * certification of a KEM key is fetched and checked once per key, not
 * once per request; the key that replaces it after a rotation is checked
 * before its first request (docs/CLIENT.md, "One request over v2"). */
static void test_certify_once_per_key(void)
{
    char dir[512], sign_ref[600], url[64], trust[600], line[80];
    veil_keygen_params kp = {.type = VEIL_KEY_EC_P256};
    veil_enroll_options eo = {0};
    veil_client_config cfg;
    veil_client_error err;
    veil_ohttp_keyconfig a, b;
    veil_client *c;
    veil_key *k = NULL;
    tu_proc g;
    int at_enrol, i;

    CU_ASSERT_FATAL(tu_scratch_dir("v2tpm-signer", dir, sizeof dir) == 0 &&
                    veil_key_generate(sw_e, "software", &kp, &k) == VEIL_OK &&
                    veil_key_save(sw_e, k, dir, NULL) == VEIL_OK);
    veil_key_free(k);
    snprintf(sign_ref, sizeof sign_ref, "dir:%s", dir);
    CU_ASSERT_EQUAL_FATAL(
        start_signed(&g, "v2tpm-max", 0, "12", "2", sign_ref), 0);
    snprintf(url, sizeof url, "http://127.0.0.1:%u", g.port);
    snprintf(trust, sizeof trust, "%s/v2tpm-max.trust.json",
             tu_env("VEIL_TEST_DIR"));
    unlink(trust);
    eo.url = url;
    eo.ek_ca_file = tu_env("VEIL_TEST_EK_CA");
    eo.accept_current = 1;
    eo.trust_file = trust;
    eo.allow_http = 1;
    eo.engine = sw_e;
    if (veil_attest_enroll(&eo, &err) != VEIL_CLIENT_OK)
        fprintf(stderr, "enrolment: %s\n", err.detail);
    CU_ASSERT_EQUAL_FATAL(fetch_config(&g, &a), 0);
    at_enrol = certify_gets(&g); /* enrolment checks every listed key */
    CU_ASSERT(at_enrol >= 1);

    tu_client_config(&cfg, url);
    cfg.security_tier = "maximum";
    cfg.trust_file = trust;
    cfg.protocol = VEIL_CLIENT_PROTOCOL_V2;
    c = tu_client_new(&cfg);
    CU_ASSERT_EQUAL(chat_max(c), 0);
    CU_ASSERT_EQUAL(chat_max(c), 0);
    CU_ASSERT_EQUAL(chat_max(c), 0);
    CU_ASSERT_EQUAL(certify_gets(&g), at_enrol + 1);
    CU_ASSERT_EQUAL_FATAL(fetch_config(&g, &b), 0);
    CU_ASSERT_EQUAL_FATAL(b.key_id, a.key_id); /* no rotation in between */

    /* the first key retired and destroyed: the client's configuration
     * expired with it, and the next key is checked once */
    snprintf(line, sizeof line,
             "v2: KEM key %u destroyed (flushed from the TPM)",
             (unsigned)a.key_id);
    for (i = 0; i < 300 && !log_has(&g, line); i++)
        usleep(100000); /* rotation at 12 s, grace 2 s */
    CU_ASSERT_FATAL(log_has(&g, line));
    CU_ASSERT_EQUAL(chat_max(c), 0);
    CU_ASSERT_EQUAL(chat_max(c), 0);
    CU_ASSERT_EQUAL(certify_gets(&g), at_enrol + 2);
    veil_client_free(c);
    gt_stop_ok(&g);
}

static int setup(void)
{
    char dir[512];
    veil_keygen_params kp = {.type = VEIL_KEY_RSA, .bits = 2048};
    veil_key *k = NULL;

    if (veil_engine_new(NULL, &sw_e) != VEIL_OK ||
        tu_scratch_dir("v2tpm-keydir", dir, sizeof dir) != 0 ||
        veil_key_generate(sw_e, "software", &kp, &k) != VEIL_OK ||
        veil_key_save(sw_e, k, dir, NULL) != VEIL_OK)
        return -1;
    veil_key_free(k);
    snprintf(keydir_ref, sizeof keydir_ref, "dir:%s", dir);
    return start(&gw, "v2tpm", 0, "3600", "300");
}

static int teardown(void)
{
    tu_proc_stop_all();
    veil_engine_free(sw_e);
    return 0;
}

static void test_exit(void)
{
    gt_stop_ok(&gw); /* flushes its key and exits 0, sanitizers clean */
}

int main(void)
{
    static const tu_test cases[] = {
        {"a request opens with the KEM key in the TPM", test_round_trip},
        {"GET /v2/keys/certify: TPM2_Certify by the AK verifies", test_certify},
        {"the client's chain check on it", test_certify_client},
        {"KEM keys in software: certify is 404", test_not_tpm},
        {"rotation: grace, then flushed from the TPM", test_rotation},
        {"maximum client: one certification fetch per KEM key",
         test_certify_once_per_key},
        {"veild exits cleanly", test_exit},
    };

    curl_global_init(CURL_GLOBAL_DEFAULT);
    TU_ADD_SUITE("v2 with KEM keys in the TPM", setup, teardown, cases);
    int rc = tu_run_tests();
    curl_global_cleanup();
    return rc;
}
