/* The client library (veil/client.h) against the protocol test server
 * (tests/fixture.h): what a user of veil_chat_create sees, class, HTTP
 * status and detail text, for answers, server errors, retries, timeouts,
 * tampered answers, pinning, request checks, keys in a token, in a
 * directory and rotated, TLS, connection reuse and threads.
 *
 * No upper bounds on time anywhere: the machines this runs on are shared
 * and slow.  Run it through tests/env/with-tokens.sh (make check does).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <stdatomic.h>

#include <CUnit/CUnit.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "fixture.h"
#include "harness.h"
#include "package.h"
#include "testutil.h"
#include "veil/attest.h"
#include "veil/client.h"

#define PROMPT                                                                 \
    "Hello, fixture: \"quoted\", gr\xc3\xbc\xc3\x9f"                           \
    "e, \xf0\x9f\x99\x82\n"
#define MODEL "test/model"

static veil_engine *sw_e;     /* software engine of the fixture's keys */
static veil_key *server_key;  /* what the fixture serves at first */
static veil_key *server_key2; /* what it rotates to */
static fx_server *fx;         /* plain http, shared by most tests */

/* ---- helpers ------------------------------------------------------------- */

/* Back to a fresh fixture: nothing scripted, counters zero, first key. */
static void reset(void)
{
    fx_clear_script(fx);
    fx_reset_counters(fx);
    fx_set_server_key(fx, server_key);
    fx_serve_pem(fx, NULL);
    fx_set_api_key(fx, NULL);
}

/* A config for the shared fixture: http allowed, quick keys and retries. */
static void cfg_for(veil_client_config *cfg, const fx_server *s)
{
    tu_client_config(cfg, fx_url(s));
    cfg->retry_base_ms = 20;
}

/* A fresh fixture and a client of it that does not retry. */
static veil_client *client_once(void)
{
    veil_client_config cfg;

    reset();
    cfg_for(&cfg, fx);
    cfg.max_retries = 0;
    return tu_client_new(&cfg);
}

/* A request with a system and a user message (NULL when out of memory;
 * no CUnit here: threads use it). */
static cJSON *make_request(const char *model, const char *prompt)
{
    cJSON *req = veil_chat_request_new(model);

    if (req == NULL ||
        !veil_chat_request_add_message(req, "system", "Answer briefly.") ||
        !veil_chat_request_add_message(req, "user", prompt)) {
        veil_chat_response_free(req);
        return NULL;
    }
    return req;
}

static veil_client_status chat(veil_client *c, const char *model,
                               const char *prompt,
                               const veil_request_opts *opts, cJSON **resp,
                               veil_chat_stats *stats, veil_client_error *err)
{
    cJSON *req = make_request(model, prompt);
    veil_client_status st;

    CU_ASSERT_PTR_NOT_NULL_FATAL(req);
    st = veil_chat_create(c, req, opts, resp, stats, err);
    veil_chat_response_free(req);
    return st;
}

/* Asks prompt and checks that the answer echoes it; returns the answer. */
static cJSON *ask_ok(veil_client *c, const char *prompt,
                     const veil_request_opts *opts)
{
    cJSON *resp = NULL;
    veil_client_error err;
    veil_client_status st = chat(c, MODEL, prompt, opts, &resp, NULL, &err);

    if (st != VEIL_CLIENT_OK)
        fprintf(stderr, "chat: %s (HTTP %d): %s\n", veil_client_status_name(st),
                err.http_status, err.detail);
    CU_ASSERT_EQUAL(st, VEIL_CLIENT_OK);
    if (st != VEIL_CLIENT_OK)
        return NULL;
    CU_ASSERT_PTR_NOT_NULL(resp);
    CU_ASSERT_PTR_NOT_NULL(veil_chat_content(resp));
    if (veil_chat_content(resp))
        CU_ASSERT_STRING_EQUAL(veil_chat_content(resp), prompt);
    return resp;
}

/* One request that must succeed; the answer is dropped. */
static void ask(veil_client *c, const char *prompt)
{
    veil_chat_response_free(ask_ok(c, prompt, NULL));
}

/* One request that must fail with want; checks that no answer came. */
static veil_client_status ask_fail(veil_client *c, const char *model,
                                   const veil_request_opts *opts,
                                   veil_client_status want,
                                   veil_client_error *err)
{
    cJSON *resp = (cJSON *)&resp; /* must be set to NULL */
    veil_client_status st = chat(c, model, PROMPT, opts, &resp, NULL, err);

    if (st != want)
        fprintf(stderr, "expected %s, got %s (HTTP %d): %s\n",
                veil_client_status_name(want), veil_client_status_name(st),
                err->http_status, err->detail);
    CU_ASSERT_EQUAL(st, want);
    CU_ASSERT_EQUAL(err->status, st);
    CU_ASSERT_PTR_NULL(resp);
    if (st == VEIL_CLIENT_OK)
        veil_chat_response_free(resp);
    return st;
}

/* The key's "sha256:<hex>" (the engine's; test_tools.sh checks it is the
 * SHA-256 of the SPKI DER). */
static void key_fp(const veil_key *k, char out[72])
{
    veil_key_info info;

    CU_ASSERT_EQUAL_FATAL(veil_key_get_info(k, &info), VEIL_OK);
    memcpy(out, info.fingerprint, 72);
}

static void own_fp(veil_client *c, char out[72])
{
    veil_client_error err;
    char *pem = NULL;

    CU_ASSERT_EQUAL_FATAL(veil_client_public_key(c, &pem, out, &err),
                          VEIL_CLIENT_OK);
    CU_ASSERT_PTR_NOT_NULL(pem);
    if (pem)
        CU_ASSERT_PTR_NOT_NULL(strstr(pem, "-----BEGIN PUBLIC KEY-----"));
    free(pem);
}

/* What on_retry reported. */
typedef struct retry_log {
    unsigned n;
    unsigned attempt[8];
    int status[8];
    unsigned delay_ms[8];
} retry_log;

static void on_retry(void *ctx, unsigned attempt, int http_status,
                     unsigned delay_ms)
{
    retry_log *l = ctx;

    if (l->n < 8) {
        l->attempt[l->n] = attempt;
        l->status[l->n] = http_status;
        l->delay_ms[l->n] = delay_ms;
    }
    l->n++;
}

static const char *str_at(const cJSON *obj, const char *key)
{
    return tu_json_str(obj, key);
}

/* A public key PEM made with OpenSSL directly (e.g. too small). */
static char *rsa_public_pem(unsigned bits)
{
    EVP_PKEY *k = EVP_RSA_gen(bits);
    BIO *b = BIO_new(BIO_s_mem());
    char *data = NULL, *out = NULL;
    long n;

    if (k && b && PEM_write_bio_PUBKEY(b, k) == 1 &&
        (n = BIO_get_mem_data(b, &data)) > 0 &&
        (out = malloc((size_t)n + 1)) != NULL) {
        memcpy(out, data, (size_t)n);
        out[n] = '\0';
    }
    BIO_free(b);
    EVP_PKEY_free(k);
    return out;
}

/* ---- 1. round trips ------------------------------------------------------ */

static void test_round_trip(void)
{
    veil_client_config cfg;
    veil_client *c;
    cJSON *resp = NULL, *md, *mp;
    veil_client_error err;
    veil_chat_stats stats;
    veil_chat_usage usage;
    fx_request rec;

    reset();
    cfg_for(&cfg, fx);
    c = tu_client_new(&cfg);
    CU_ASSERT_EQUAL_FATAL(chat(c, MODEL, PROMPT, NULL, &resp, &stats, &err),
                          VEIL_CLIENT_OK);
    CU_ASSERT_STRING_EQUAL(veil_chat_content(resp), PROMPT);
    CU_ASSERT_PTR_NULL(veil_chat_reasoning(resp));
    CU_ASSERT_PTR_NULL(veil_chat_tool_calls(resp));
    CU_ASSERT_STRING_EQUAL(str_at(resp, "object"), "chat.completion");
    CU_ASSERT_STRING_EQUAL(str_at(resp, "model"), MODEL);
    CU_ASSERT_PTR_NOT_NULL(strstr(str_at(resp, "id"), "chatcmpl-fixture-"));
    CU_ASSERT_EQUAL(veil_chat_get_usage(resp, &usage), 1);
    CU_ASSERT_TRUE(usage.prompt_tokens > 0);
    CU_ASSERT_TRUE(usage.completion_tokens > 0);
    CU_ASSERT_EQUAL(usage.total_tokens,
                    usage.prompt_tokens + usage.completion_tokens);

    /* what the fixture saw */
    CU_ASSERT_EQUAL(fx_posts(fx), 1);
    CU_ASSERT_EQUAL(fx_key_fetches(fx), 1);
    CU_ASSERT_EQUAL_FATAL(fx_request_get(fx, 0, &rec), 0);
    CU_ASSERT_TRUE(rec.opened);
    CU_ASSERT_EQUAL(rec.tag_mode, VEIL_TAG_SEPARATE); /* the default */
    CU_ASSERT_STRING_EQUAL(rec.content_type, "application/octet-stream");
    CU_ASSERT_STRING_EQUAL(rec.model, MODEL);
    CU_ASSERT_STRING_EQUAL(rec.security_tier, "");
    CU_ASSERT_STRING_EQUAL(rec.authorization, "");
    CU_ASSERT_EQUAL(rec.status, 200);
    CU_ASSERT_TRUE(veil_uuid_valid(rec.payload_id));

    /* _metadata */
    md = cJSON_GetObjectItemCaseSensitive(resp, "_metadata");
    CU_ASSERT_FATAL(cJSON_IsObject(md));
    CU_ASSERT_STRING_EQUAL(str_at(md, "payload_id"), rec.payload_id);
    CU_ASSERT_STRING_EQUAL(stats.payload_id, rec.payload_id);
    CU_ASSERT_TRUE(
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(md, "is_encrypted")));
    CU_ASSERT_STRING_EQUAL(str_at(md, "encryption_algorithm"),
                           VEIL_PKG_ALGORITHM);
    /* the package's processed_at is outside the encryption: not taken */
    CU_ASSERT_PTR_NULL(cJSON_GetObjectItemCaseSensitive(md, "processed_at"));
    CU_ASSERT_STRING_EQUAL(str_at(md, "security_tier"), "standard");
    CU_ASSERT_STRING_EQUAL(str_at(md, "response_status"), "success");
    mp = cJSON_GetObjectItemCaseSensitive(md, "memory_protection");
    CU_ASSERT_STRING_EQUAL(str_at(mp, "platform"), "linux");
    CU_ASSERT_TRUE(
        cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(mp, "secure_zeroing")));
    CU_ASSERT_EQUAL(stats.attempts, 1);
    CU_ASSERT_TRUE(stats.encrypt_ns > 0);
    CU_ASSERT_TRUE(stats.network_ns > 0);
    CU_ASSERT_TRUE(stats.decrypt_ns > 0);
    veil_chat_response_free(resp);
    veil_client_free(c);
}

static void test_reasoning_and_tools(void)
{
    veil_client_config cfg;
    veil_client *c;
    cJSON *resp = NULL, *req, *tools, *tool, *fn;
    const cJSON *calls, *call;
    veil_client_error err;

    reset();
    cfg_for(&cfg, fx);
    c = tu_client_new(&cfg);
    CU_ASSERT_EQUAL_FATAL(
        chat(c, "fixture-reasoner", PROMPT, NULL, &resp, NULL, &err),
        VEIL_CLIENT_OK);
    CU_ASSERT_STRING_EQUAL(veil_chat_content(resp), PROMPT);
    CU_ASSERT_STRING_EQUAL(veil_chat_reasoning(resp), "fixture reasoning");
    veil_chat_response_free(resp);
    resp = NULL;

    req = make_request(MODEL, "what is the weather?");
    CU_ASSERT_PTR_NOT_NULL_FATAL(req);
    tools = cJSON_AddArrayToObject(req, "tools");
    tool = cJSON_CreateObject();
    cJSON_AddItemToArray(tools, tool);
    cJSON_AddStringToObject(tool, "type", "function");
    fn = cJSON_AddObjectToObject(tool, "function");
    cJSON_AddStringToObject(fn, "name", "get_weather");
    cJSON_AddObjectToObject(fn, "parameters");
    CU_ASSERT_EQUAL_FATAL(veil_chat_create(c, req, NULL, &resp, NULL, &err),
                          VEIL_CLIENT_OK);
    CU_ASSERT_PTR_NULL(veil_chat_content(resp));
    calls = veil_chat_tool_calls(resp);
    CU_ASSERT_FATAL(cJSON_GetArraySize(calls) == 1);
    call = cJSON_GetArrayItem(calls, 0);
    CU_ASSERT_STRING_EQUAL(str_at(call, "id"), "call_fixture_1");
    CU_ASSERT_STRING_EQUAL(str_at(call, "type"), "function");
    CU_ASSERT_STRING_EQUAL(
        str_at(cJSON_GetObjectItemCaseSensitive(call, "function"), "name"),
        "get_weather");
    CU_ASSERT_STRING_EQUAL(
        str_at(cJSON_GetArrayItem(
                   cJSON_GetObjectItemCaseSensitive(resp, "choices"), 0),
               "finish_reason"),
        "tool_calls");
    veil_chat_response_free(resp);
    veil_chat_response_free(req);
    veil_client_free(c);
}

/* The defaults: a 4096-bit ephemeral key. */
static void test_round_trip_4096(void)
{
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;
    char *pem = NULL, fp[72];
    veil_key *k = NULL;
    veil_key_info info;

    reset();
    veil_client_config_init(&cfg);
    CU_ASSERT_EQUAL(cfg.key_bits, 4096);
    CU_ASSERT_EQUAL(cfg.max_retries, 2);
    CU_ASSERT_EQUAL(cfg.timeout_ms, 60000);
    CU_ASSERT_EQUAL(cfg.allow_http, 0);
    CU_ASSERT_PTR_NULL(cfg.base_url); /* no default server */
    CU_ASSERT_EQUAL(veil_client_new(&cfg, &c, &err), VEIL_CLIENT_E_CONFIG);
    CU_ASSERT_PTR_NULL(c);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "no server URL"));
    cfg.base_url = fx_url(fx);
    cfg.allow_http = 1;
    c = tu_client_new(&cfg);
    CU_ASSERT_EQUAL_FATAL(veil_client_public_key(c, &pem, fp, &err),
                          VEIL_CLIENT_OK);
    CU_ASSERT_EQUAL_FATAL(
        veil_key_from_public(sw_e, (const uint8_t *)pem, strlen(pem), &k),
        VEIL_OK);
    CU_ASSERT_EQUAL(veil_key_get_info(k, &info), VEIL_OK);
    CU_ASSERT_EQUAL(info.bits, 4096);
    CU_ASSERT_STRING_EQUAL(info.fingerprint, fp);
    ask(c, PROMPT);
    veil_key_free(k);
    free(pem);
    veil_client_free(c);
}

/* ---- 2. a client key in the SoftHSM2 token ------------------------------- */

static void softhsm_token_uri(char *out, size_t size)
{
    const char *t = tu_env("VEIL_TEST_SOFTHSM_TOKEN");
    char esc[192];

    /* with-tokens.sh exports the token label; accept a URI as well */
    if (strncmp(t, "pkcs11:", 7) == 0) {
        snprintf(out, size, "%s", t);
        return;
    }
    CU_ASSERT_EQUAL_FATAL(tu_uri_escape(t, esc, sizeof esc), 0);
    snprintf(out, size, "pkcs11:token=%s", esc);
}

static void test_token_key(void)
{
    const char *module = tu_env("VEIL_TEST_SOFTHSM_MODULE");
    const char *pin_file = tu_env("VEIL_TEST_PIN_FILE");
    veil_engine_config ecfg;
    veil_engine *te = NULL;
    veil_keygen_params kp = {
        .type = VEIL_KEY_RSA, .bits = 2048, .label = "client-key"};
    veil_key *k = NULL;
    veil_client_config cfg;
    veil_client *c;
    char token[256], ref[600], want[72], got[72];
    fx_request rec;

    reset();
    softhsm_token_uri(token, sizeof token);
    memset(&ecfg, 0, sizeof ecfg);
    ecfg.pkcs11_module = module;
    ecfg.pin.kind = VEIL_PIN_FILE;
    ecfg.pin.where = pin_file;
    CU_ASSERT_EQUAL_FATAL(veil_engine_new(&ecfg, &te), VEIL_OK);
    if (veil_key_generate(te, token, &kp, &k) != VEIL_OK)
        fprintf(stderr, "token keygen: %s\n", veil_last_error()->message);
    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    key_fp(k, want);
    snprintf(ref, sizeof ref, "%s;object=client-key", token);

    /* the client makes its own engine from module and PIN source */
    cfg_for(&cfg, fx);
    cfg.key_source = VEIL_CLIENT_KEY_TOKEN;
    cfg.key_ref = ref;
    cfg.pkcs11_module = module;
    cfg.pin.kind = VEIL_PIN_FILE;
    cfg.pin.where = pin_file;
    c = tu_client_new(&cfg);
    own_fp(c, got);
    CU_ASSERT_STRING_EQUAL(got, want);
    ask(c, PROMPT);
    ask(c, "a second question");
    veil_client_free(c);

    /* the caller's engine */
    cfg_for(&cfg, fx);
    cfg.key_source = VEIL_CLIENT_KEY_TOKEN;
    cfg.key_ref = ref;
    cfg.engine = te;
    cfg.tag_mode = VEIL_CLIENT_TAG_APPENDED;
    c = tu_client_new(&cfg);
    own_fp(c, got);
    CU_ASSERT_STRING_EQUAL(got, want);
    ask(c, PROMPT);
    veil_client_free(c);
    CU_ASSERT_EQUAL(fx_posts(fx), 3);
    for (unsigned i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(fx_request_get(fx, i, &rec), 0);
        CU_ASSERT_EQUAL(rec.status, 200);
    }

    /* a missing token key is a configuration error */
    cfg_for(&cfg, fx);
    cfg.key_source = VEIL_CLIENT_KEY_TOKEN;
    snprintf(ref, sizeof ref, "%s;object=no-such-key", token);
    cfg.key_ref = ref;
    cfg.engine = te;
    {
        veil_client *none = NULL;
        veil_client_error err;

        CU_ASSERT_EQUAL(veil_client_new(&cfg, &none, &err),
                        VEIL_CLIENT_E_CONFIG);
        CU_ASSERT_EQUAL(err.rc, VEIL_E_NOT_FOUND);
        CU_ASSERT_PTR_NULL(none);
    }
    CU_ASSERT_EQUAL(veil_key_delete(te, k), VEIL_OK);
    veil_engine_free(te);
}

/* ---- 3. tag placement ---------------------------------------------------- */

static void tag_case(veil_client_tag_mode mode)
{
    veil_client_config cfg;
    veil_client *c;
    fx_reply r;
    fx_request rec;
    int want = mode == VEIL_CLIENT_TAG_APPENDED ? VEIL_TAG_APPENDED
                                                : VEIL_TAG_SEPARATE;

    reset();
    cfg_for(&cfg, fx);
    cfg.tag_mode = mode;
    c = tu_client_new(&cfg);
    ask(c, PROMPT); /* answered in the request's convention */
    fx_reply_init(&r);
    r.tag_mode =
        want == VEIL_TAG_APPENDED ? VEIL_TAG_SEPARATE : VEIL_TAG_APPENDED;
    CU_ASSERT_EQUAL(fx_push(fx, &r), 0);
    ask(c, PROMPT); /* answered the other way: still accepted */
    for (unsigned i = 0; i < 2; i++) {
        CU_ASSERT_EQUAL_FATAL(fx_request_get(fx, i, &rec), 0);
        CU_ASSERT_TRUE(rec.opened);
        CU_ASSERT_EQUAL(rec.tag_mode, want);
    }
    veil_client_free(c);
}

static void test_tag_separate(void)
{
    tag_case(VEIL_CLIENT_TAG_SEPARATE);
}

static void test_tag_appended(void)
{
    tag_case(VEIL_CLIENT_TAG_APPENDED);
}

/* ---- 4. error statuses --------------------------------------------------- */

static void test_error_statuses(void)
{
    static const struct {
        int status;
        veil_client_status cls;
    } cases[] = {
        {400, VEIL_CLIENT_E_INVALID_REQUEST},
        {401, VEIL_CLIENT_E_AUTHENTICATION},
        {403, VEIL_CLIENT_E_FORBIDDEN},
        {404, VEIL_CLIENT_E_API},
        {429, VEIL_CLIENT_E_RATE_LIMIT},
        {500, VEIL_CLIENT_E_SERVER},
        {503, VEIL_CLIENT_E_SERVICE_UNAVAILABLE},
        {418, VEIL_CLIENT_E_API},
        {502, VEIL_CLIENT_E_API},
    };
    veil_client *c;
    veil_client_error err;
    char detail[64];

    c = client_once();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(detail, sizeof detail, "scripted failure %d", cases[i].status);
        CU_ASSERT_EQUAL(fx_push_status(fx, cases[i].status, detail), 0);
        ask_fail(c, MODEL, NULL, cases[i].cls, &err);
        CU_ASSERT_EQUAL(err.http_status, cases[i].status);
        CU_ASSERT_STRING_EQUAL(err.detail, detail);
        CU_ASSERT_EQUAL(fx_posts(fx), i + 1);
    }

    /* the same faults by model name (what the veil-fixture program does) */
    fx_reset_counters(fx);
    ask_fail(c, "fixture/status-403", NULL, VEIL_CLIENT_E_FORBIDDEN, &err);
    CU_ASSERT_EQUAL(err.http_status, 403);
    CU_ASSERT_STRING_EQUAL(err.detail, "fixture: status 403");
    ask_fail(c, "fixture/retry-after-0", NULL, VEIL_CLIENT_E_RATE_LIMIT, &err);
    CU_ASSERT_STRING_EQUAL(err.detail, "fixture: slow down");

    /* a 404 without a detail: NOMYO's text */
    {
        fx_reply r;

        fx_reply_init(&r);
        r.status = 404;
        r.raw_body = "";
        CU_ASSERT_EQUAL(fx_push(fx, &r), 0);
        ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_API, &err);
        CU_ASSERT_EQUAL(err.http_status, 404);
        CU_ASSERT_STRING_EQUAL(err.detail, "secure inference not enabled");
    }
    veil_client_free(c);
}

static void test_connection_refused(void)
{
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;
    char url[64];
    unsigned short port = tu_dead_port();

    CU_ASSERT_FATAL(port != 0);
    snprintf(url, sizeof url, "http://127.0.0.1:%u", (unsigned)port);
    veil_client_config_init(&cfg);
    cfg.base_url = url;
    cfg.allow_http = 1;
    cfg.key_bits = 2048;
    cfg.max_retries = 0;
    c = tu_client_new(&cfg);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_CONNECTION, &err);
    CU_ASSERT_EQUAL(err.http_status, 0);
    CU_ASSERT_TRUE(err.detail[0] != '\0');
    veil_client_free(c);
}

/* ---- 5. retries ---------------------------------------------------------- */

static void test_retry_then_success(void)
{
    veil_client_config cfg;
    veil_client *c;
    cJSON *resp = NULL;
    veil_client_error err;
    veil_chat_stats stats;
    retry_log log = {0};
    fx_request rec[3];

    reset();
    cfg_for(&cfg, fx);
    cfg.on_retry = on_retry;
    cfg.retry_ctx = &log;
    c = tu_client_new(&cfg);
    CU_ASSERT_EQUAL(fx_push_status(fx, 503, NULL), 0);
    CU_ASSERT_EQUAL(fx_push_status(fx, 503, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(chat(c, MODEL, PROMPT, NULL, &resp, &stats, &err),
                          VEIL_CLIENT_OK);
    CU_ASSERT_STRING_EQUAL(veil_chat_content(resp), PROMPT);
    CU_ASSERT_EQUAL(fx_posts(fx), 3);
    CU_ASSERT_EQUAL(stats.attempts, 3);
    for (unsigned i = 0; i < 3; i++)
        CU_ASSERT_EQUAL_FATAL(fx_request_get(fx, i, &rec[i]), 0);
    CU_ASSERT_EQUAL(rec[0].status, 503);
    CU_ASSERT_EQUAL(rec[1].status, 503);
    CU_ASSERT_EQUAL(rec[2].status, 200);
    CU_ASSERT_STRING_NOT_EQUAL(rec[0].payload_id, rec[1].payload_id);
    CU_ASSERT_STRING_NOT_EQUAL(rec[1].payload_id, rec[2].payload_id);
    CU_ASSERT_STRING_NOT_EQUAL(rec[0].payload_id, rec[2].payload_id);
    /* the answer names the payload that was answered */
    CU_ASSERT_STRING_EQUAL(
        str_at(cJSON_GetObjectItemCaseSensitive(resp, "_metadata"),
               "payload_id"),
        rec[2].payload_id);
    CU_ASSERT_STRING_EQUAL(stats.payload_id, rec[2].payload_id);
    CU_ASSERT_EQUAL(log.n, 2);
    CU_ASSERT_EQUAL(log.attempt[0], 1);
    CU_ASSERT_EQUAL(log.attempt[1], 2);
    CU_ASSERT_EQUAL(log.status[0], 503);
    CU_ASSERT_EQUAL(log.status[1], 503);
    veil_chat_response_free(resp);

    /* retries exhausted: the last error, after 1 + max_retries POSTs */
    fx_reset_counters(fx);
    log.n = 0;
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(fx_push_status(fx, 500, "still broken"), 0);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SERVER, &err);
    CU_ASSERT_EQUAL(err.http_status, 500);
    CU_ASSERT_STRING_EQUAL(err.detail, "still broken");
    CU_ASSERT_EQUAL(fx_posts(fx), 3);
    CU_ASSERT_EQUAL(log.n, 2);
    veil_client_free(c);
}

static void test_no_retry(void)
{
    static const struct {
        int status;
        veil_client_status cls;
    } cases[] = {
        {400, VEIL_CLIENT_E_INVALID_REQUEST},
        {401, VEIL_CLIENT_E_AUTHENTICATION},
        {403, VEIL_CLIENT_E_FORBIDDEN},
        {404, VEIL_CLIENT_E_API},
    };
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;
    retry_log log = {0};

    reset();
    cfg_for(&cfg, fx);
    cfg.max_retries = 3;
    cfg.on_retry = on_retry;
    cfg.retry_ctx = &log;
    c = tu_client_new(&cfg);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fx_reset_counters(fx);
        CU_ASSERT_EQUAL(fx_push_status(fx, cases[i].status, "no"), 0);
        ask_fail(c, MODEL, NULL, cases[i].cls, &err);
        CU_ASSERT_EQUAL(err.http_status, cases[i].status);
        CU_ASSERT_EQUAL(fx_posts(fx), 1);
    }
    CU_ASSERT_EQUAL(log.n, 0);
    CU_ASSERT_EQUAL(fx_script_left(fx), 0);

    /* a rejected API key, from the server's own check: not retried */
    fx_reset_counters(fx);
    CU_ASSERT_EQUAL(fx_set_api_key(fx, "the-right-key"), 0);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_AUTHENTICATION, &err);
    CU_ASSERT_EQUAL(err.http_status, 401);
    CU_ASSERT_STRING_EQUAL(err.detail, "fixture: invalid or missing API key");
    CU_ASSERT_EQUAL(fx_posts(fx), 1);
    CU_ASSERT_EQUAL(log.n, 0);
    veil_client_free(c);
}

static void test_retry_after(void)
{
    veil_client_config cfg;
    veil_client *c;
    retry_log log = {0};
    fx_reply r;
    fx_request a, b;

    reset();
    cfg_for(&cfg, fx);
    cfg.on_retry = on_retry;
    cfg.retry_ctx = &log;
    c = tu_client_new(&cfg);
    fx_reply_init(&r);
    r.status = 429;
    r.detail = "slow down";
    r.retry_after = "1";
    CU_ASSERT_EQUAL(fx_push(fx, &r), 0);
    ask(c, PROMPT);
    CU_ASSERT_EQUAL(log.n, 1);
    CU_ASSERT_EQUAL(log.status[0], 429);
    CU_ASSERT_EQUAL(log.delay_ms[0], 1000);
    CU_ASSERT_EQUAL_FATAL(fx_request_get(fx, 0, &a), 0);
    CU_ASSERT_EQUAL_FATAL(fx_request_get(fx, 1, &b), 0);
    CU_ASSERT_TRUE(b.arrival_ns >= a.arrival_ns + 900000000u);
    veil_client_free(c);

    /* Retry-After above retry_max_ms is capped */
    reset();
    log.n = 0;
    cfg.retry_max_ms = 50;
    c = tu_client_new(&cfg);
    r.retry_after = "30";
    CU_ASSERT_EQUAL(fx_push(fx, &r), 0);
    ask(c, PROMPT);
    CU_ASSERT_EQUAL(log.n, 1);
    CU_ASSERT_EQUAL(log.delay_ms[0], 50);
    veil_client_free(c);
}

/* ---- 6. timeouts --------------------------------------------------------- */

static void test_timeout(void)
{
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;
    fx_reply r;
    retry_log log = {0};

    reset();
    cfg_for(&cfg, fx);
    cfg.timeout_ms = 300;
    cfg.max_retries = 0;
    c = tu_client_new(&cfg);
    fx_reply_init(&r);
    r.delay_ms = 3000;
    CU_ASSERT_EQUAL(fx_push(fx, &r), 0);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_CONNECTION, &err);
    CU_ASSERT_EQUAL(err.http_status, 0);
    CU_ASSERT_EQUAL(fx_posts(fx), 1);
    veil_client_free(c);

    /* a network failure is retried (a generous limit here: the attempt
     * that succeeds must fit in it, also on a slow machine) */
    reset();
    cfg.timeout_ms = 1500;
    cfg.max_retries = 1;
    cfg.on_retry = on_retry;
    cfg.retry_ctx = &log;
    c = tu_client_new(&cfg);
    r.delay_ms = 8000; /* cut short when the fixture stops */
    CU_ASSERT_EQUAL(fx_push(fx, &r), 0);
    ask(c, PROMPT);
    CU_ASSERT_EQUAL(log.n, 1);
    CU_ASSERT_EQUAL(log.status[0], 0);
    CU_ASSERT_EQUAL(fx_posts(fx), 2);
    veil_client_free(c);
}

/* ---- 7. tampered answers ------------------------------------------------- */

static void tamper_cases(veil_client_tag_mode mode)
{
    static const fx_tamper modes[] = {
        FX_TAMPER_CIPHERTEXT,    FX_TAMPER_TAG,           FX_TAMPER_WRAPPED_KEY,
        FX_TAMPER_MISSING_FIELD, FX_TAMPER_MISSING_NONCE, FX_TAMPER_BAD_BASE64,
        FX_TAMPER_NOT_JSON,      FX_TAMPER_NONCE_SIZE,
    };
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;
    char model[64];
    fx_reply r;

    reset();
    cfg_for(&cfg, fx);
    cfg.tag_mode = mode;
    c = tu_client_new(&cfg);
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        fx_reset_counters(fx);
        CU_ASSERT_EQUAL(fx_push_tamper(fx, modes[i]), 0);
        ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SECURITY, &err);
        CU_ASSERT_STRING_EQUAL(err.detail, VEIL_CLIENT_SECURITY_MESSAGE);
        CU_ASSERT_EQUAL(fx_posts(fx), 1); /* never retried */

        /* the same by model name */
        snprintf(model, sizeof model, "fixture/tamper-%s",
                 fx_tamper_name(modes[i]));
        ask_fail(c, model, NULL, VEIL_CLIENT_E_SECURITY, &err);
        CU_ASSERT_STRING_EQUAL(err.detail, VEIL_CLIENT_SECURITY_MESSAGE);
    }
    /* a tag flipped in the other convention than the request's */
    fx_reply_init(&r);
    r.tamper = FX_TAMPER_TAG;
    r.tag_mode = mode == VEIL_CLIENT_TAG_APPENDED ? VEIL_TAG_SEPARATE
                                                  : VEIL_TAG_APPENDED;
    CU_ASSERT_EQUAL(fx_push(fx, &r), 0);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SECURITY, &err);
    CU_ASSERT_STRING_EQUAL(err.detail, VEIL_CLIENT_SECURITY_MESSAGE);
    /* raw bodies: an empty 200, JSON that is no package */
    fx_reply_init(&r);
    r.raw_body = "";
    CU_ASSERT_EQUAL(fx_push(fx, &r), 0);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SECURITY, &err);
    CU_ASSERT_STRING_EQUAL(err.detail, VEIL_CLIENT_SECURITY_MESSAGE);
    r.raw_body = "{\"choices\": [{\"message\": {\"content\": \"plain\"}}]}";
    CU_ASSERT_EQUAL(fx_push(fx, &r), 0);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SECURITY, &err);
    CU_ASSERT_STRING_EQUAL(err.detail, VEIL_CLIENT_SECURITY_MESSAGE);
    /* and the client still works afterwards */
    ask(c, PROMPT);
    veil_client_free(c);
}

static void test_tampered_separate(void)
{
    tamper_cases(VEIL_CLIENT_TAG_SEPARATE);
}

static void test_tampered_appended(void)
{
    tamper_cases(VEIL_CLIENT_TAG_APPENDED);
}

/* ---- 8. the server key: pin and size ------------------------------------- */

static void test_pin(void)
{
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;
    char pin[72], got[72], *pem = NULL;

    reset();
    cfg_for(&cfg, fx);
    cfg.server_key_pin = "sha256:"
                         "0000000000000000000000000000000000000000000000000000"
                         "000000000000";
    c = tu_client_new(&cfg);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SECURITY, &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "pinned"));
    CU_ASSERT_EQUAL(fx_posts(fx), 0);
    CU_ASSERT_EQUAL(fx_key_fetches(fx), 1);
    CU_ASSERT_EQUAL(veil_client_server_key(c, &pem, got, &err),
                    VEIL_CLIENT_E_SECURITY);
    CU_ASSERT_PTR_NULL(pem);
    veil_client_free(c);

    /* the right pin, with and without "sha256:" */
    key_fp(server_key, pin);
    cfg.server_key_pin = pin;
    c = tu_client_new(&cfg);
    ask(c, PROMPT);
    CU_ASSERT_EQUAL(veil_client_server_key(c, &pem, got, &err), VEIL_CLIENT_OK);
    CU_ASSERT_STRING_EQUAL(got, pin);
    CU_ASSERT_PTR_NOT_NULL(pem);
    free(pem);
    veil_client_free(c);
    cfg.server_key_pin = pin + 7;
    c = tu_client_new(&cfg);
    ask(c, PROMPT);
    veil_client_free(c);

    /* a pin that is not one is a configuration error */
    cfg.server_key_pin = "sha256:1234";
    c = (veil_client *)&c;
    CU_ASSERT_EQUAL(veil_client_new(&cfg, &c, &err), VEIL_CLIENT_E_CONFIG);
    CU_ASSERT_PTR_NULL(c);
}

static void test_small_server_key(void)
{
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;
    char *pem = rsa_public_pem(1024);

    CU_ASSERT_PTR_NOT_NULL_FATAL(pem);
    reset();
    CU_ASSERT_EQUAL(fx_serve_pem(fx, pem), 0);
    cfg_for(&cfg, fx);
    c = tu_client_new(&cfg);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SECURITY, &err);
    CU_ASSERT_EQUAL(fx_posts(fx), 0);
    CU_ASSERT_EQUAL(fx_key_fetches(fx), 1);

    /* not a key at all */
    fx_reset_counters(fx);
    CU_ASSERT_EQUAL(fx_serve_pem(fx, "hello, I am not a key\n"), 0);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SECURITY, &err);
    CU_ASSERT_EQUAL(fx_posts(fx), 0);
    veil_client_free(c);
    free(pem);
}

/* ---- 9. plain http ------------------------------------------------------- */

static void test_http_refused(void)
{
    veil_client_config cfg;
    veil_client *c = NULL;
    veil_client_error err;
    veil_request_opts opts = {0};

    reset();
    cfg_for(&cfg, fx);
    cfg.allow_http = 0;
    CU_ASSERT_EQUAL(veil_client_new(&cfg, &c, &err), VEIL_CLIENT_E_SECURITY);
    CU_ASSERT_EQUAL(err.status, VEIL_CLIENT_E_SECURITY);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "http"));
    CU_ASSERT_PTR_NULL(c);

    /* an https client asked to use http for one request */
    cfg.base_url = "https://127.0.0.1:1";
    c = tu_client_new(&cfg);
    opts.base_url = fx_url(fx);
    ask_fail(c, MODEL, &opts, VEIL_CLIENT_E_SECURITY, &err);
    veil_client_free(c);
    CU_ASSERT_EQUAL(fx_key_fetches(fx), 0);
    CU_ASSERT_EQUAL(fx_posts(fx), 0);
    CU_ASSERT_EQUAL(fx_connections(fx), 0);
}

/* ---- 10. requests refused before sending --------------------------------- */

static void expect_invalid(veil_client *c, cJSON *req, const char *field)
{
    veil_client_error err;
    cJSON *resp = (cJSON *)&resp;
    veil_client_status st = veil_chat_create(c, req, NULL, &resp, NULL, &err);

    CU_ASSERT_EQUAL(st, VEIL_CLIENT_E_INVALID_REQUEST);
    CU_ASSERT_EQUAL(err.http_status, 0);
    CU_ASSERT_PTR_NULL(resp);
    if (field && !strstr(err.detail, field)) {
        fprintf(stderr, "detail \"%s\" does not name %s\n", err.detail, field);
        CU_FAIL("the detail does not name the field");
    }
    veil_chat_response_free(req);
}

static void test_invalid_requests(void)
{
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;
    cJSON *req, *msg;
    char *big;
    size_t big_len = 11u * 1024u * 1024u;
    veil_request_opts opts = {0};

    reset();
    cfg_for(&cfg, fx);
    c = tu_client_new(&cfg);

    big = malloc(big_len + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(big, 'a', big_len);
    big[big_len] = '\0';
    req = make_request(MODEL, big);
    free(big);
    CU_ASSERT_PTR_NOT_NULL_FATAL(req);
    expect_invalid(c, req, "MiB");

    req = make_request(MODEL, PROMPT);
    cJSON_AddStringToObject(req, "temperature", "hot");
    expect_invalid(c, req, "temperature");

    req = make_request(MODEL, PROMPT);
    cJSON_DeleteItemFromObjectCaseSensitive(req, "messages");
    expect_invalid(c, req, "messages");

    req = make_request(MODEL, PROMPT);
    cJSON_DeleteItemFromObjectCaseSensitive(req, "model");
    expect_invalid(c, req, "model");

    req = make_request(MODEL, PROMPT);
    cJSON_AddNumberToObject(req, "max_tokens", -3);
    expect_invalid(c, req, "max_tokens");

    req = make_request(MODEL, PROMPT);
    cJSON_AddStringToObject(req, "stream", "yes");
    expect_invalid(c, req, "stream");

    req = make_request(MODEL, PROMPT);
    msg = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(req, "messages"),
                             1);
    cJSON_ReplaceItemInObjectCaseSensitive(msg, "content",
                                           cJSON_CreateNumber(42));
    expect_invalid(c, req, "messages[1]");

    req = cJSON_CreateArray();
    expect_invalid(c, req, NULL);

    /* a tier that does not exist, per request: InvalidRequestError */
    opts.security_tier = "ultra";
    ask_fail(c, MODEL, &opts, VEIL_CLIENT_E_INVALID_REQUEST, &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "tier"));
    /* an API key with a line break (header injection) */
    opts.security_tier = NULL;
    opts.api_key = "key\r\nX-Evil: 1";
    ask_fail(c, MODEL, &opts, VEIL_CLIENT_E_INVALID_REQUEST, &err);
    CU_ASSERT_EQUAL(fx_posts(fx), 0);
    CU_ASSERT_EQUAL(fx_key_fetches(fx), 0);
    veil_client_free(c);

    /* ... and in the config: a configuration error */
    cfg.security_tier = "ultra";
    c = (veil_client *)&c;
    CU_ASSERT_EQUAL(veil_client_new(&cfg, &c, &err), VEIL_CLIENT_E_CONFIG);
    CU_ASSERT_PTR_NULL(c);
    CU_ASSERT_EQUAL(fx_connections(fx), 0);
}

/* ---- 11. dispose --------------------------------------------------------- */

static void test_dispose(void)
{
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;
    char *pem = NULL, fp[72];
    unsigned posts;

    reset();
    cfg_for(&cfg, fx);
    c = tu_client_new(&cfg);
    ask(c, PROMPT);
    posts = fx_posts(fx);
    veil_client_dispose(c);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_DISPOSED, &err);
    CU_ASSERT_EQUAL(veil_client_server_key(c, &pem, fp, &err),
                    VEIL_CLIENT_E_DISPOSED);
    CU_ASSERT_EQUAL(err.status, VEIL_CLIENT_E_DISPOSED);
    CU_ASSERT_EQUAL(veil_client_public_key(c, &pem, fp, &err),
                    VEIL_CLIENT_E_DISPOSED);
    CU_ASSERT_PTR_NULL(pem);
    CU_ASSERT_STRING_EQUAL(veil_client_status_name(VEIL_CLIENT_E_DISPOSED),
                           "DisposedError");
    veil_client_dispose(c); /* twice is fine */
    CU_ASSERT_EQUAL(fx_posts(fx), posts);
    veil_client_free(c);
    veil_client_free(NULL);
}

/* ---- 12. the server key cache and rotation ------------------------------- */

static void test_key_cache(void)
{
    veil_client_config cfg;
    veil_client *c;

    reset();
    cfg_for(&cfg, fx);
    c = tu_client_new(&cfg);
    ask(c, PROMPT);
    ask(c, "a second question");
    CU_ASSERT_EQUAL(fx_key_fetches(fx), 1);
    CU_ASSERT_EQUAL(fx_posts(fx), 2);
    veil_client_free(c);
}

static void test_server_key_rotation(void)
{
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;
    fx_request rec;
    char fp[72], want[72];

    reset();
    cfg_for(&cfg, fx);
    c = tu_client_new(&cfg);
    ask(c, PROMPT);
    fx_set_server_key(fx, server_key2);
    ask(c, "after the rotation");
    CU_ASSERT_EQUAL(fx_key_fetches(fx), 2);
    CU_ASSERT_EQUAL(fx_posts(fx), 3);
    CU_ASSERT_EQUAL_FATAL(fx_request_get(fx, 1, &rec), 0);
    CU_ASSERT_FALSE(rec.opened); /* sealed to the old key */
    CU_ASSERT_EQUAL(rec.status, 400);
    CU_ASSERT_EQUAL_FATAL(fx_request_get(fx, 2, &rec), 0);
    CU_ASSERT_TRUE(rec.opened);
    CU_ASSERT_EQUAL(rec.status, 200);
    CU_ASSERT_EQUAL(veil_client_server_key(c, NULL, fp, &err), VEIL_CLIENT_OK);
    key_fp(server_key2, want);
    CU_ASSERT_STRING_EQUAL(fp, want);
    CU_ASSERT_EQUAL(fx_key_fetches(fx), 2);

    /* a 400 "could not be decrypted" with an unchanged key: one refetch,
     * no resend, the server's error */
    fx_reset_counters(fx);
    CU_ASSERT_EQUAL(fx_push_status(fx, 400, VEIL_PKG_DECRYPT_DETAIL), 0);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_INVALID_REQUEST, &err);
    CU_ASSERT_EQUAL(err.http_status, 400);
    CU_ASSERT_STRING_EQUAL(err.detail, VEIL_PKG_DECRYPT_DETAIL);
    CU_ASSERT_EQUAL(fx_key_fetches(fx), 1);
    CU_ASSERT_EQUAL(fx_posts(fx), 1);
    veil_client_free(c);
}

/* ---- 13. per-request overrides ------------------------------------------- */

static void test_overrides(void)
{
    veil_client_config cfg;
    veil_client *c;
    veil_request_opts opts = {0};
    fx_request rec;
    cJSON *resp;
    char url[80];

    reset();
    cfg_for(&cfg, fx);
    cfg.api_key = "config-key";
    cfg.security_tier = "high";
    cfg.allow_foreign_attestation = 1; /* the fixture's is NOMYO's shape */
    c = tu_client_new(&cfg);
    resp = ask_ok(c, PROMPT, NULL);
    CU_ASSERT_STRING_EQUAL(
        str_at(cJSON_GetObjectItemCaseSensitive(resp, "_metadata"),
               "security_tier"),
        "high");
    veil_chat_response_free(resp);
    opts.security_tier = "maximum";
    opts.api_key = "request-key";
    ask(c, PROMPT); /* no opts */
    veil_chat_response_free(ask_ok(c, PROMPT, &opts));
    opts.api_key = NULL;
    opts.security_tier = "standard";
    snprintf(url, sizeof url, "%s/", fx_url(fx));
    opts.base_url = url; /* a trailing slash is fine */
    veil_chat_response_free(ask_ok(c, PROMPT, &opts));
    CU_ASSERT_EQUAL_FATAL(fx_request_get(fx, 0, &rec), 0);
    CU_ASSERT_STRING_EQUAL(rec.authorization, "Bearer config-key");
    CU_ASSERT_STRING_EQUAL(rec.security_tier, "high");
    CU_ASSERT_EQUAL_FATAL(fx_request_get(fx, 1, &rec), 0);
    CU_ASSERT_STRING_EQUAL(rec.authorization, "Bearer config-key");
    CU_ASSERT_EQUAL_FATAL(fx_request_get(fx, 2, &rec), 0);
    CU_ASSERT_STRING_EQUAL(rec.authorization, "Bearer request-key");
    CU_ASSERT_STRING_EQUAL(rec.security_tier, "maximum");
    CU_ASSERT_EQUAL_FATAL(fx_request_get(fx, 3, &rec), 0);
    CU_ASSERT_STRING_EQUAL(rec.authorization, "Bearer config-key");
    CU_ASSERT_STRING_EQUAL(rec.security_tier, "standard");

    /* another server for one request: its own key, fetched once */
    {
        fx_config fcfg;
        fx_server *other = NULL;

        memset(&fcfg, 0, sizeof fcfg);
        fcfg.engine = sw_e;
        fcfg.server_key = server_key2;
        CU_ASSERT_EQUAL_FATAL(fx_start(&fcfg, &other), 0);
        fx_reset_counters(fx);
        memset(&opts, 0, sizeof opts);
        opts.base_url = fx_url(other);
        ask(c, PROMPT);
        veil_chat_response_free(ask_ok(c, PROMPT, &opts));
        veil_chat_response_free(ask_ok(c, PROMPT, &opts));
        ask(c, PROMPT);
        CU_ASSERT_EQUAL(fx_posts(other), 2);
        CU_ASSERT_EQUAL(fx_key_fetches(other), 1);
        CU_ASSERT_EQUAL(fx_posts(fx), 2);
        CU_ASSERT_EQUAL(fx_key_fetches(fx), 0); /* still cached */
        fx_stop(other);
    }
    veil_client_free(c);

    /* no key, no tier: neither header */
    fx_reset_counters(fx);
    cfg_for(&cfg, fx);
    c = tu_client_new(&cfg);
    ask(c, PROMPT);
    CU_ASSERT_EQUAL_FATAL(fx_request_get(fx, 0, &rec), 0);
    CU_ASSERT_STRING_EQUAL(rec.authorization, "");
    CU_ASSERT_STRING_EQUAL(rec.security_tier, "");

    /* the server checks the key: the override is what it sees */
    CU_ASSERT_EQUAL(fx_set_api_key(fx, "sesame"), 0);
    memset(&opts, 0, sizeof opts);
    opts.api_key = "sesame";
    veil_chat_response_free(ask_ok(c, PROMPT, &opts));
    veil_client_free(c);
}

/* ---- 14. connection reuse ------------------------------------------------ */

static void test_connection_reuse(void)
{
    veil_client_config cfg;
    veil_client *c;

    reset();
    cfg_for(&cfg, fx);
    c = tu_client_new(&cfg);
    for (int i = 0; i < 5; i++)
        ask(c, PROMPT);
    CU_ASSERT_EQUAL(fx_posts(fx), 5);
    CU_ASSERT_EQUAL(fx_key_fetches(fx), 1);
    /* one thread, requests one after the other: the key fetch and every
     * POST go over one kept-alive connection */
    CU_ASSERT_EQUAL(fx_connections(fx), 1);
    veil_client_free(c);
}

/* ---- 15. threads --------------------------------------------------------- */

#define THREADS 4
#define PER_THREAD 5

typedef struct worker {
    veil_client *c;
    int id;
    int ok;     /* answers with the right content */
    int failed; /* calls that did not succeed */
    char last_error[600];
} worker;

static void *work(void *arg)
{
    worker *w = arg;

    for (int i = 0; i < PER_THREAD; i++) {
        char prompt[64];
        cJSON *req, *resp = NULL;
        veil_client_error err;
        veil_client_status st;

        snprintf(prompt, sizeof prompt, "thread %d, question %d", w->id, i);
        req = make_request(MODEL, prompt);
        if (req == NULL) {
            w->failed++;
            continue;
        }
        st = veil_chat_create(w->c, req, NULL, &resp, NULL, &err);
        if (st == VEIL_CLIENT_OK && veil_chat_content(resp) &&
            strcmp(veil_chat_content(resp), prompt) == 0) {
            w->ok++;
        } else {
            w->failed++;
            snprintf(w->last_error, sizeof w->last_error, "%s: %s",
                     veil_client_status_name(st), err.detail);
        }
        veil_chat_response_free(resp);
        veil_chat_response_free(req);
    }
    return NULL;
}

static void test_threads(void)
{
    veil_client_config cfg;
    veil_client *c;
    pthread_t th[THREADS];
    worker w[THREADS];

    reset();
    cfg_for(&cfg, fx);
    c = tu_client_new(&cfg);
    for (int i = 0; i < THREADS; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].c = c;
        w[i].id = i;
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, work, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        if (w[i].failed)
            fprintf(stderr, "thread %d: %d failed, last: %s\n", i, w[i].failed,
                    w[i].last_error);
        CU_ASSERT_EQUAL(w[i].ok, PER_THREAD);
    }
    CU_ASSERT_EQUAL(fx_posts(fx), THREADS * PER_THREAD);
    CU_ASSERT_TRUE(fx_key_fetches(fx) >= 1);
    veil_client_free(c);
}

/* ---- 16. a key directory ------------------------------------------------- */

static int starts_with_file(const char *path, const char *prefix)
{
    char *text = tu_read_file(path, NULL);
    int r = text && strncmp(text, prefix, strlen(prefix)) == 0;

    free(text);
    return r;
}

static void test_key_dir(void)
{
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;
    char dir[512], pw_dir[512], path[600], pw_file[600];
    char fp1[72], fp2[72];
    struct stat st;
    FILE *fp;

    reset();
    CU_ASSERT_EQUAL_FATAL(tu_scratch_dir("client-keys", dir, sizeof dir), 0);
    cfg_for(&cfg, fx);
    cfg.key_source = VEIL_CLIENT_KEY_DIR;
    cfg.key_ref = dir;
    c = tu_client_new(&cfg);
    own_fp(c, fp1);
    ask(c, PROMPT);
    veil_client_free(c);
    snprintf(path, sizeof path, "%s/private_key.pem", dir);
    CU_ASSERT_EQUAL_FATAL(stat(path, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    CU_ASSERT_TRUE(starts_with_file(path, "-----BEGIN PRIVATE KEY-----"));
    snprintf(path, sizeof path, "%s/public_key.pem", dir);
    CU_ASSERT_EQUAL(stat(path, &st), 0);
    CU_ASSERT_TRUE(starts_with_file(path, "-----BEGIN PUBLIC KEY-----"));

    c = tu_client_new(&cfg); /* loads what the first one saved */
    own_fp(c, fp2);
    CU_ASSERT_STRING_EQUAL(fp1, fp2);
    ask(c, PROMPT);
    veil_client_free(c);

    /* with a password */
    CU_ASSERT_EQUAL_FATAL(
        tu_scratch_dir("client-keys-pw", pw_dir, sizeof pw_dir), 0);
    snprintf(pw_file, sizeof pw_file, "%s.pass", pw_dir);
    fp = fopen(pw_file, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
    fputs("correct horse battery staple\n", fp);
    fclose(fp);
    CU_ASSERT_EQUAL_FATAL(chmod(pw_file, 0600), 0);
    cfg.key_ref = pw_dir;
    cfg.key_password.kind = VEIL_PIN_FILE;
    cfg.key_password.where = pw_file;
    c = tu_client_new(&cfg);
    own_fp(c, fp1);
    ask(c, PROMPT);
    veil_client_free(c);
    snprintf(path, sizeof path, "%s/private_key.pem", pw_dir);
    CU_ASSERT_TRUE(
        starts_with_file(path, "-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    CU_ASSERT_EQUAL(stat(path, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    c = tu_client_new(&cfg);
    own_fp(c, fp2);
    CU_ASSERT_STRING_EQUAL(fp1, fp2);
    veil_client_free(c);
    /* a borrowed engine knows no password: the client opens the directory
     * with its own engine, whose PIN source is key_password */
    cfg.engine = sw_e;
    c = tu_client_new(&cfg);
    own_fp(c, fp2);
    CU_ASSERT_STRING_EQUAL(fp1, fp2);
    ask(c, PROMPT);
    veil_client_free(c);
    cfg.engine = NULL;

    /* the wrong password: a configuration error naming the PIN */
    fp = fopen(pw_file, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
    fputs("wrong password\n", fp);
    fclose(fp);
    c = (veil_client *)&c;
    CU_ASSERT_EQUAL(veil_client_new(&cfg, &c, &err), VEIL_CLIENT_E_CONFIG);
    CU_ASSERT_EQUAL(err.rc, VEIL_E_PIN);
    CU_ASSERT_PTR_NULL(c);
}

/* ---- 17. rotation of an ephemeral key ------------------------------------ */

static void test_key_rotation(void)
{
    veil_client_config cfg;
    veil_client *c;
    char fp1[72], fp2[72];

    reset();
    cfg_for(&cfg, fx);
    cfg.rotate_seconds = 1;
    c = tu_client_new(&cfg);
    own_fp(c, fp1);
    ask(c, PROMPT);
    tu_sleep_ms(1200);
    ask(c, "after the rotation");
    own_fp(c, fp2);
    CU_ASSERT_STRING_NOT_EQUAL(fp1, fp2);
    veil_client_free(c);

    /* rotation is for ephemeral keys only */
    cfg.key_source = VEIL_CLIENT_KEY_DIR;
    cfg.key_ref = "/nonexistent";
    {
        veil_client_error err;
        veil_client *none = NULL;

        CU_ASSERT_EQUAL(veil_client_new(&cfg, &none, &err),
                        VEIL_CLIENT_E_CONFIG);
        CU_ASSERT_PTR_NULL(none);
    }
}

/* ---- TLS ----------------------------------------------------------------- */

/* What a BIO holds as a NUL-terminated string (malloc'd). */
static char *bio_text(BIO *b)
{
    char *data = NULL, *out;
    long n = BIO_get_mem_data(b, &data);

    if (n <= 0 || (out = malloc((size_t)n + 1)) == NULL)
        return NULL;
    memcpy(out, data, (size_t)n);
    out[n] = '\0';
    return out;
}

static void test_tls(void)
{
    EVP_PKEY *ca_key = EVP_EC_gen("P-256"), *srv_key = EVP_EC_gen("P-256");
    X509 *ca = NULL, *crt = NULL;
    BIO *b_ca = BIO_new(BIO_s_mem()), *b_crt = BIO_new(BIO_s_mem());
    BIO *b_key = BIO_new(BIO_s_mem());
    char *ca_pem = NULL, *crt_pem = NULL, *key_pem = NULL;
    char dir[512], ca_file[600];
    fx_config fcfg;
    fx_server *tls = NULL;
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;
    FILE *fp;

    CU_ASSERT_PTR_NOT_NULL_FATAL(ca_key);
    CU_ASSERT_PTR_NOT_NULL_FATAL(srv_key);
    ca = tu_make_cert(ca_key, ca_key, NULL, "veil test CA", 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ca);
    crt = tu_make_cert(srv_key, ca_key, ca, "127.0.0.1", 2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(crt);
    CU_ASSERT_FATAL(PEM_write_bio_X509(b_ca, ca) == 1 &&
                    PEM_write_bio_X509(b_crt, crt) == 1 &&
                    PEM_write_bio_PrivateKey(b_key, srv_key, NULL, NULL, 0,
                                             NULL, NULL) == 1);
    ca_pem = bio_text(b_ca);
    crt_pem = bio_text(b_crt);
    key_pem = bio_text(b_key);
    CU_ASSERT_FATAL(ca_pem && crt_pem && key_pem);
    CU_ASSERT_EQUAL_FATAL(tu_scratch_dir("client-tls", dir, sizeof dir), 0);
    snprintf(ca_file, sizeof ca_file, "%s/ca.pem", dir);
    fp = fopen(ca_file, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
    fputs(ca_pem, fp);
    fclose(fp);

    memset(&fcfg, 0, sizeof fcfg);
    fcfg.engine = sw_e;
    fcfg.server_key = server_key;
    fcfg.tls_cert_pem = crt_pem;
    fcfg.tls_key_pem = key_pem;
    CU_ASSERT_EQUAL_FATAL(fx_start(&fcfg, &tls), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(fx_url(tls), "https://127.0.0.1:"));

    /* with the CA: works, http not needed */
    cfg_for(&cfg, tls);
    cfg.allow_http = 0;
    cfg.ca_file = ca_file;
    c = tu_client_new(&cfg);
    ask(c, PROMPT);
    ask(c, PROMPT);
    veil_client_free(c);
    CU_ASSERT_EQUAL(fx_posts(tls), 2);
    CU_ASSERT_EQUAL(fx_key_fetches(tls), 1);

    /* without it (system CAs): the certificate cannot be verified.  The
     * library reports that as VEIL_CLIENT_E_SECURITY (not CONNECTION), and
     * never retries it; nothing reaches the HTTP layer. */
    fx_reset_counters(tls);
    cfg.ca_file = NULL;
    c = tu_client_new(&cfg);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SECURITY, &err);
    CU_ASSERT_EQUAL(err.http_status, 0);
    CU_ASSERT_EQUAL(fx_key_fetches(tls), 0);
    CU_ASSERT_EQUAL(fx_posts(tls), 0);
    veil_client_free(c);

    fx_stop(tls);
    free(ca_pem);
    free(crt_pem);
    free(key_pem);
    BIO_free(b_ca);
    BIO_free(b_crt);
    BIO_free(b_key);
    X509_free(ca);
    X509_free(crt);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(srv_key);
}

/* ---- main ---------------------------------------------------------------- */

/* ---- 18. a hostile server (docs/CLIENT.md, "Against a hostile server") -- */

/* An answer's plaintext before its _metadata (the fixture fills in
 * "$PAYLOAD_ID" with the request's ID). */
#define HOSTILE_HEAD                                                           \
    "{\"id\":\"chatcmpl-hostile\",\"object\":\"chat.completion\","             \
    "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","           \
    "\"content\":\"hostile\"},\"finish_reason\":\"stop\"}]"
#define OTHER_ID "00000000-0000-4000-8000-000000000000"

/* How many members of obj are called name. */
static int members(const cJSON *obj, const char *name)
{
    const cJSON *it;
    int n = 0;

    cJSON_ArrayForEach(it, obj) if (it->string && !strcmp(it->string, name))
        n++;
    return n;
}

/* One scripted plaintext answer. */
static void push_plaintext(const char *text)
{
    fx_reply r;

    fx_reply_init(&r);
    r.plaintext = text;
    CU_ASSERT_EQUAL(fx_push(fx, &r), 0);
}

/* Answers whose members come twice, at the top or in _metadata: whichever
 * copy a reader takes, the server chose it.  All are refused. */
static void test_duplicate_members(void)
{
    static const char *const answers[] = {
        /* a forged "is_encrypted" behind the server's own */
        HOSTILE_HEAD ",\"_metadata\":{\"is_encrypted\":false,"
                     "\"is_encrypted\":false}}",
        /* an attacker's payload ID after the genuine one */
        HOSTILE_HEAD ",\"_metadata\":{\"payload_id\":\"$PAYLOAD_ID\","
                     "\"payload_id\":\"" OTHER_ID "\"}}",
        HOSTILE_HEAD ",\"_metadata\":{\"encryption_algorithm\":\"none\","
                     "\"encryption_algorithm\":\"none\"}}",
        /* a second _metadata, a second tpm_attestation, a second choices */
        HOSTILE_HEAD ",\"_metadata\":{},\"_metadata\":{\"is_encrypted\":"
                     "false}}",
        HOSTILE_HEAD ",\"_metadata\":{\"tpm_attestation\":{\"is_available\":"
                     "false},\"tpm_attestation\":{\"is_available\":true}}}",
        HOSTILE_HEAD ",\"choices\":[]}",
        /* the quote's own members: the one checked, the one shown */
        HOSTILE_HEAD ",\"_metadata\":{\"tpm_attestation\":{\"is_available\":"
                     "true,\"format\":\"a\",\"format\":\"b\"}}}",
    };
    veil_client *c;
    veil_client_error err;
    cJSON *resp = NULL;

    c = client_once();
    for (size_t i = 0; i < sizeof answers / sizeof answers[0]; i++) {
        push_plaintext(answers[i]);
        ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SECURITY, &err);
        CU_ASSERT_PTR_NOT_NULL(
            strstr(err.detail, VEIL_CLIENT_SECURITY_MESSAGE));
        CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "twice"));
    }
    /* each member once: accepted, and the client's own values replace the
     * server's */
    push_plaintext(HOSTILE_HEAD ",\"_metadata\":{\"payload_id\":"
                                "\"$PAYLOAD_ID\",\"is_encrypted\":false,"
                                "\"security_tier\":\"high\"}}");
    CU_ASSERT_EQUAL(chat(c, MODEL, PROMPT, NULL, &resp, NULL, &err),
                    VEIL_CLIENT_OK);
    if (resp) {
        cJSON *md = cJSON_GetObjectItemCaseSensitive(resp, "_metadata");

        CU_ASSERT_TRUE(
            cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(md, "is_encrypted")));
        CU_ASSERT_EQUAL(members(md, "is_encrypted"), 1);
        CU_ASSERT_EQUAL(members(md, "payload_id"), 1);
        CU_ASSERT_STRING_EQUAL(str_at(md, "security_tier"), "high");
    }
    veil_chat_response_free(resp);
    veil_client_free(c);
}

/* A server that sends an earlier answer again: with a client key that
 * lives on, it still opens, but it is for another payload ID. */
static void test_replayed_answer(void)
{
    veil_client *c;
    veil_client_error err;
    fx_reply r;

    c = client_once();
    ask(c, PROMPT);
    fx_reply_init(&r);
    r.replay = 1;
    CU_ASSERT_EQUAL(fx_push(fx, &r), 0);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SECURITY, &err);
    CU_ASSERT_EQUAL(err.http_status, 200);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, VEIL_CLIENT_SECURITY_MESSAGE));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "payload ID"));
    /* a fresh answer naming another payload ID, or a non-string one */
    push_plaintext(HOSTILE_HEAD ",\"_metadata\":{\"payload_id\":\"" OTHER_ID
                                "\"}}");
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SECURITY, &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "payload ID"));
    push_plaintext(HOSTILE_HEAD ",\"_metadata\":{\"payload_id\":7}}");
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SECURITY, &err);
    /* an answer without one gets the request's */
    push_plaintext(HOSTILE_HEAD "}");
    {
        cJSON *resp = NULL;
        veil_chat_stats stats;

        CU_ASSERT_EQUAL(chat(c, MODEL, PROMPT, NULL, &resp, &stats, &err),
                        VEIL_CLIENT_OK);
        CU_ASSERT_STRING_EQUAL(
            str_at(cJSON_GetObjectItemCaseSensitive(resp, "_metadata"),
                   "payload_id"),
            stats.payload_id);
        veil_chat_response_free(resp);
    }
    veil_client_free(c);
}

/* The package's unencrypted "algorithm" and "processed_at" never reach
 * the answer. */
static void test_outer_fields(void)
{
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;
    cJSON *resp = NULL, *md;

    reset();
    cfg_for(&cfg, fx);
    c = tu_client_new(&cfg);
    CU_ASSERT_EQUAL(fx_push_tamper(fx, FX_TAMPER_OUTER_FIELDS), 0);
    CU_ASSERT_EQUAL_FATAL(chat(c, MODEL, PROMPT, NULL, &resp, NULL, &err),
                          VEIL_CLIENT_OK);
    md = cJSON_GetObjectItemCaseSensitive(resp, "_metadata");
    CU_ASSERT_STRING_EQUAL(str_at(md, "encryption_algorithm"),
                           VEIL_PKG_ALGORITHM);
    CU_ASSERT_PTR_NULL(cJSON_GetObjectItemCaseSensitive(md, "processed_at"));
    veil_chat_response_free(resp);
    /* a processed_at inside the encryption is the server's to give */
    push_plaintext(HOSTILE_HEAD ",\"_metadata\":{\"processed_at\":42}}");
    CU_ASSERT_EQUAL_FATAL(chat(c, MODEL, PROMPT, NULL, &resp, NULL, &err),
                          VEIL_CLIENT_OK);
    md = cJSON_GetObjectItemCaseSensitive(resp, "_metadata");
    CU_ASSERT_EQUAL(cJSON_GetNumberValue(
                        cJSON_GetObjectItemCaseSensitive(md, "processed_at")),
                    42);
    veil_chat_response_free(resp);
    veil_client_free(c);
}

/* An RSA public key PEM with modulus n of key and exponent e. */
static char *pem_with_exponent(EVP_PKEY *key, unsigned long e)
{
    BIGNUM *n = NULL, *be = BN_new();
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    EVP_PKEY *out = NULL;
    BIO *b = BIO_new(BIO_s_mem());
    char *data = NULL, *text = NULL;
    long len;

    if (EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_N, &n) && be &&
        BN_set_word(be, e) && bld &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) &&
        (params = OSSL_PARAM_BLD_to_param(bld)) != NULL && ctx &&
        EVP_PKEY_fromdata_init(ctx) > 0 &&
        EVP_PKEY_fromdata(ctx, &out, EVP_PKEY_PUBLIC_KEY, params) > 0 && b &&
        PEM_write_bio_PUBKEY(b, out) == 1 &&
        (len = BIO_get_mem_data(b, &data)) > 0 &&
        (text = malloc((size_t)len + 1)) != NULL) {
        memcpy(text, data, (size_t)len);
        text[len] = '\0';
    }
    BIO_free(b);
    EVP_PKEY_free(out);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(be);
    return text;
}

/* A software key of the fixture with public exponent 3 (made with
 * OpenSSL, loaded as a key directory). */
static veil_key *key_with_e3(void)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    EVP_PKEY *k = NULL;
    BIGNUM *e = BN_new();
    veil_key *out = NULL;
    char dir[4200], path[4300];
    FILE *f;

    snprintf(dir, sizeof dir, "%s/e3key", getenv("VEIL_TEST_DIR"));
    snprintf(path, sizeof path, "%s/private_key.pem", dir);
    mkdir(dir, 0700);
    if (ctx && e && BN_set_word(e, 3) && EVP_PKEY_keygen_init(ctx) > 0 &&
        EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, 2048) > 0 &&
        EVP_PKEY_CTX_set1_rsa_keygen_pubexp(ctx, e) > 0 &&
        EVP_PKEY_keygen(ctx, &k) > 0 && (f = fopen(path, "w")) != NULL) {
        int ok = PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) == 1;

        if (fclose(f) == 0 && ok) {
            snprintf(path, sizeof path, "dir:%s", dir);
            if (veil_key_open(sw_e, path, &out) != VEIL_OK)
                fprintf(stderr, "e3 key: %s\n", veil_last_error()->message);
        }
    }
    EVP_PKEY_free(k);
    EVP_PKEY_CTX_free(ctx);
    BN_free(e);
    return out;
}

/* Degenerate server keys are refused before anything is sealed to them:
 * e = 1 (the wrapped AES key is its own OAEP encoding), an even e, and a
 * small e unless allowed. */
static void test_server_key_checks(void)
{
    EVP_PKEY *real = EVP_RSA_gen(2048);
    static const unsigned long bad[] = {1, 2, 65536, 3, 17};
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;
    veil_key *k3;
    char *pem;

    CU_ASSERT_PTR_NOT_NULL_FATAL(real);
    reset();
    cfg_for(&cfg, fx);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pem = pem_with_exponent(real, bad[i]);
        CU_ASSERT_PTR_NOT_NULL_FATAL(pem);
        CU_ASSERT_EQUAL(fx_serve_pem(fx, pem), 0);
        fx_reset_counters(fx);
        c = tu_client_new(&cfg);
        ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SECURITY, &err);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "refused"));
        CU_ASSERT_EQUAL(fx_posts(fx), 0);
        CU_ASSERT_EQUAL(fx_key_fetches(fx), 1);
        veil_client_free(c);
        free(pem);
    }
    EVP_PKEY_free(real);

    /* e = 3 for real: refused by default, served and used when allowed */
    k3 = key_with_e3();
    CU_ASSERT_PTR_NOT_NULL_FATAL(k3);
    reset();
    fx_set_server_key(fx, k3);
    c = tu_client_new(&cfg);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SECURITY, &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "exponent 3"));
    CU_ASSERT_EQUAL(fx_posts(fx), 0);
    veil_client_free(c);
    cfg.allow_small_exponent = 1;
    c = tu_client_new(&cfg);
    ask(c, PROMPT);
    veil_client_free(c);
    reset();
    veil_key_free(k3);

    /* a PEM with white space around it is the same key */
    CU_ASSERT_EQUAL_FATAL(veil_key_public_pem(server_key, &pem), VEIL_OK);
    {
        size_t n = strlen(pem) + 8;
        char *padded = malloc(n);

        CU_ASSERT_PTR_NOT_NULL_FATAL(padded);
        snprintf(padded, n, "\n\r\n%s \n\n", pem);
        CU_ASSERT_EQUAL(fx_serve_pem(fx, padded), 0);
        free(padded);
    }
    free(pem);
    cfg.allow_small_exponent = 0;
    c = tu_client_new(&cfg);
    ask(c, PROMPT);
    veil_client_free(c);
    reset();
}

/* cJSON allocations, counted (the library shares cJSON's hooks). */
static atomic_size_t cjson_bytes;

static void *counting_malloc(size_t n)
{
    atomic_fetch_add(&cjson_bytes, n);
    return malloc(n);
}

/* n bytes of "[0,0,...,0]" (n odd, at least 3). */
static char *zeros_array(size_t n, const char *before, const char *after)
{
    size_t bl = strlen(before), al = strlen(after);
    char *s = malloc(bl + n + al + 1), *p;

    if (s == NULL)
        return NULL;
    memcpy(s, before, bl);
    p = s + bl;
    p[0] = '[';
    for (size_t i = 1; i + 1 < n; i++)
        p[i] = (i % 2) ? '0' : ',';
    p[n - 1] = ']';
    memcpy(p + n, after, al + 1);
    return s;
}

#define WIPE_MARKER "wipe-marker-7f3c9a"

/* The prompt and the answer (the fixture echoes the prompt) in cJSON's
 * heap blocks, the request tree, the opened answer and the tree parsed
 * from it, are wiped before they are freed: veil_chat_response_free on
 * the request and the answer, and what the library frees inside. */
static void test_json_wiped(void)
{
    const char *prompt = "a secret prompt " WIPE_MARKER;
    int frees = 0, found;
    veil_client_config cfg;
    veil_client *c;

    reset();
    cfg_for(&cfg, fx);
    c = tu_client_new(&cfg);
    tu_wipe_scan_begin(WIPE_MARKER);
    ask(c, prompt); /* request built, sealed, answered, opened, freed */
    found = tu_wipe_scan_end(&frees);
    CU_ASSERT_TRUE(frees > 0); /* the hook ran */
    CU_ASSERT_EQUAL(found, 0);
    if (found != 0)
        fprintf(stderr, "  %d freed cJSON block(s) held the prompt or answer\n",
                found);

    /* an answer refused after it opened: its tree is wiped too */
    tu_wipe_scan_begin(WIPE_MARKER);
    {
        cJSON *resp = NULL;
        veil_client_error err;
        veil_request_opts o = {.security_tier = "maximum"};
        /* the fixture's answer carries no veil quote: refused once open */
        veil_client_status st = chat(c, MODEL, prompt, &o, &resp, NULL, &err);
        CU_ASSERT_EQUAL(st, VEIL_CLIENT_E_SECURITY);
        CU_ASSERT_PTR_NULL(resp);
        veil_chat_response_free(resp);
    }
    CU_ASSERT_EQUAL(tu_wipe_scan_end(NULL), 0);
    veil_client_free(c);
}

/* Nothing a server sends before its answer is authenticated may cost
 * much more memory than its size: a 2 MiB array of a million values (a
 * cJSON node each, 64 MiB) as an answer and as an error detail. */
static void test_parse_bounds(void)
{
    cJSON_Hooks hooks = {counting_malloc, free};
    const size_t size = 2u * 1024 * 1024 + 1;
    char *answer = zeros_array(size, "", "");
    char *detail = zeros_array(size, "{\"detail\":", "}");
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;
    fx_reply r;

    CU_ASSERT_PTR_NOT_NULL_FATAL(answer);
    CU_ASSERT_PTR_NOT_NULL_FATAL(detail);
    reset();
    cfg_for(&cfg, fx);
    cfg.max_retries = 0;
    c = tu_client_new(&cfg);
    ask(c, PROMPT); /* the server key is fetched */

    cJSON_InitHooks(&hooks);
    atomic_store(&cjson_bytes, 0);
    fx_reply_init(&r);
    r.raw_body = answer;
    CU_ASSERT_EQUAL(fx_push(fx, &r), 0);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SECURITY, &err);
    CU_ASSERT_STRING_EQUAL(err.detail, VEIL_CLIENT_SECURITY_MESSAGE);
    fprintf(stderr, "  cJSON bytes for a 2 MiB array answer: %zu\n",
            atomic_load(&cjson_bytes));
    CU_ASSERT_TRUE(atomic_load(&cjson_bytes) < size / 2);

    atomic_store(&cjson_bytes, 0);
    fx_reply_init(&r);
    r.status = 500;
    r.raw_body = detail;
    CU_ASSERT_EQUAL(fx_push(fx, &r), 0);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SERVER, &err);
    CU_ASSERT_EQUAL(strncmp(err.detail, "{\"detail\":[0,0,0,", 17), 0);
    fprintf(stderr, "  cJSON bytes for a 2 MiB array detail: %zu\n",
            atomic_load(&cjson_bytes));
    CU_ASSERT_TRUE(atomic_load(&cjson_bytes) < size / 2);
    cJSON_InitHooks(NULL);

    /* an honest error detail is still read */
    CU_ASSERT_EQUAL(fx_push_status(fx, 500, "an honest detail"), 0);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SERVER, &err);
    CU_ASSERT_STRING_EQUAL(err.detail, "an honest detail");
    veil_client_free(c);

    /* a /pki/public_key body far larger than any key */
    reset();
    CU_ASSERT_EQUAL(fx_serve_pem(fx, answer), 0);
    c = tu_client_new(&cfg);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_CONNECTION, &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "larger than 64 KiB"));
    CU_ASSERT_EQUAL(fx_posts(fx), 0);
    veil_client_free(c);
    reset();
    free(answer);
    free(detail);
}

/* A kept-alive connection that dies under a POST: libcurl would send the
 * same package again by itself; the client instead fails that attempt
 * and, when it may retry, seals a fresh package. */
static void test_no_resend(void)
{
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;
    fx_request a, b;
    fx_reply r;

    reset();
    cfg_for(&cfg, fx);
    cfg.max_retries = 0;
    c = tu_client_new(&cfg);
    ask(c, PROMPT); /* the connection is now kept alive */
    fx_reply_init(&r);
    r.drop = 1;
    CU_ASSERT_EQUAL(fx_push(fx, &r), 0);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_CONNECTION, &err);
    CU_ASSERT_EQUAL(fx_posts(fx), 2); /* not sent a third time */
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "not sent again"));
    veil_client_free(c);

    /* with a retry: a second package, with its own payload ID */
    reset();
    cfg.max_retries = 1;
    c = tu_client_new(&cfg);
    ask(c, PROMPT);
    CU_ASSERT_EQUAL(fx_push(fx, &r), 0);
    ask(c, PROMPT);
    CU_ASSERT_EQUAL(fx_posts(fx), 3);
    CU_ASSERT_EQUAL_FATAL(fx_request_get(fx, 1, &a), 0);
    CU_ASSERT_EQUAL_FATAL(fx_request_get(fx, 2, &b), 0);
    CU_ASSERT_STRING_NOT_EQUAL(a.payload_id, b.payload_id);
    CU_ASSERT_EQUAL(b.status, 200);
    veil_client_free(c);
}

/* maximum without a trust file: an attestation that is not a veil quote
 * ({"is_available": true} alone, or NOMYO's shape, which the fixture
 * sends) is refused unless foreign attestations are allowed. */
static void test_maximum_foreign(void)
{
    veil_request_opts opts = {.security_tier = "maximum"};
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;

    reset();
    cfg_for(&cfg, fx);
    cfg.max_retries = 0;
    c = tu_client_new(&cfg);
    ask_fail(c, MODEL, &opts, VEIL_CLIENT_E_SECURITY, &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "not a veil TPM quote"));
    push_plaintext(HOSTILE_HEAD ",\"_metadata\":{\"tpm_attestation\":"
                                "{\"is_available\":true}}}");
    ask_fail(c, MODEL, &opts, VEIL_CLIENT_E_SECURITY, &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "not a veil TPM quote"));
    /* veil's format named, but not a quote of its shape */
    push_plaintext(HOSTILE_HEAD ",\"_metadata\":{\"tpm_attestation\":"
                                "{\"is_available\":true,\"format\":"
                                "\"veil-tpm2-quote-v1\"}}}");
    ask_fail(c, MODEL, &opts, VEIL_CLIENT_E_SECURITY, &err);
    veil_client_free(c);

    cfg.allow_foreign_attestation = 1;
    c = tu_client_new(&cfg);
    veil_chat_response_free(ask_ok(c, PROMPT, &opts));
    /* no attestation at all: still refused */
    push_plaintext(HOSTILE_HEAD "}");
    ask_fail(c, MODEL, &opts, VEIL_CLIENT_E_SECURITY, &err);
    veil_client_free(c);
}

/* Retry-After on an interim 1xx response is not the final answer's. */
static void test_interim_retry_after(void)
{
    static const char reply[] =
        "HTTP/1.1 102 Processing\r\nRetry-After: 3600\r\n\r\n"
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\nContent-Length: 27\r\n"
        "Connection: close\r\n\r\n{\"detail\":\"fixture: busy.\"}";
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;
    retry_log log = {0};
    fx_raw *raw = NULL;
    char *pem = NULL;

    CU_ASSERT_EQUAL_FATAL(veil_key_public_pem(server_key, &pem), VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(fx_raw_start(pem, reply, &raw), 0);
    free(pem);
    veil_client_config_init(&cfg);
    cfg.base_url = fx_raw_url(raw);
    cfg.allow_http = 1;
    cfg.key_bits = 2048;
    cfg.retry_base_ms = 20;
    cfg.retry_max_ms = 5000;
    cfg.max_retries = 1;
    cfg.on_retry = on_retry;
    cfg.retry_ctx = &log;
    c = tu_client_new(&cfg);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SERVICE_UNAVAILABLE, &err);
    CU_ASSERT_STRING_EQUAL(err.detail, "fixture: busy.");
    CU_ASSERT_EQUAL(log.n, 1);
    CU_ASSERT_EQUAL(log.status[0], 503);
    /* the backoff of a first retry (base 20 ms), not the 102's hour */
    CU_ASSERT_TRUE(log.delay_ms[0] <= 20);
    veil_client_free(c);
    fx_raw_stop(raw);
}

/* A hostile server's endless trailer section (chunked, after the body):
 * libcurl keeps every trailer line it is given, without the bound it
 * puts on a header section, so the client stops reading after 512 KiB of
 * header and trailer fields (1.2 GB in 10 s before). */
static void test_endless_trailers(void)
{
    static const char reply[] =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        "2\r\n{}\r\n0\r\n";
    char line[1024];
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;
    fx_raw *raw = NULL;
    char *pem = NULL;

    memset(line, 'a', sizeof line);
    memcpy(line, "X-Trailer: ", 11);
    memcpy(line + sizeof line - 3, "\r\n", 3); /* with its NUL */
    CU_ASSERT_EQUAL_FATAL(veil_key_public_pem(server_key, &pem), VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(
        fx_raw_start_endless(pem, reply, line, 16u << 20, &raw), 0);
    free(pem);
    veil_client_config_init(&cfg);
    cfg.base_url = fx_raw_url(raw);
    cfg.allow_http = 1;
    cfg.key_bits = 2048;
    cfg.max_retries = 0;
    c = tu_client_new(&cfg);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_CONNECTION, &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "header and trailer fields"));
    veil_client_free(c);
    fx_raw_stop(raw);
}

/* Enrolment against a hostile gateway: an attestation report (unchecked
 * until its quote verifies) of 9 Mi JSON values cost the client about
 * 1.5 GB of cJSON nodes; a report has about 40, and the client refuses
 * one of more than 4096 before it parses it. */
static void test_report_bounded(void)
{
    static const char head[] = "HTTP/1.1 200 OK\r\n"
                               "Content-Type: application/json\r\n"
                               "Content-Length: %zu\r\n"
                               "Connection: close\r\n\r\n";
    const size_t values = 100000;
    size_t body_len = sizeof "{\"format\":[0]}" - 1 + 2 * (values - 1);
    size_t size = sizeof head + 32 + body_len;
    char *reply = malloc(size), *p;
    veil_enroll_options o = {0};
    veil_client_error err;
    fx_raw *raw = NULL;
    char *pem = NULL, dir[4096], out[4200];

    CU_ASSERT_PTR_NOT_NULL_FATAL(reply);
    CU_ASSERT_EQUAL_FATAL(tu_scratch_dir("report", dir, sizeof dir), 0);
    p = reply + snprintf(reply, size, head, body_len);
    p += snprintf(p, size - (size_t)(p - reply), "{\"format\":[");
    for (size_t i = 1; i < values; i++, p += 2)
        memcpy(p, "0,", 2);
    memcpy(p, "0]}", 4); /* with its NUL */
    CU_ASSERT_EQUAL_FATAL(veil_key_public_pem(server_key, &pem), VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(fx_raw_start(pem, reply, &raw), 0);
    free(pem);
    free(reply);
    snprintf(out, sizeof out, "%s/trust.json", dir);
    o.url = fx_raw_url(raw);
    o.allow_unverified_ek = 1;
    o.accept_current = 1;
    o.trust_file = out;
    o.allow_http = 1;
    CU_ASSERT_EQUAL(veil_attest_enroll(&o, &err), VEIL_CLIENT_E_SECURITY);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "more than 4096 JSON values"));
    CU_ASSERT_EQUAL(access(out, F_OK), -1); /* no trust file written */
    fx_raw_stop(raw);
}

/* Each log line the client writes, checked for control characters. */
static void control_free_log(void *ctx, veil_log_level level,
                             const char *line)
{
    int *controls = ctx;

    (void)level;
    for (const char *p = line; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            (*controls)++;
}

/* A hostile server's member name, twice (the answer is refused), with a
 * line break and an escape sequence in it: the debug log line that says
 * why holds neither (it forged a second log line before). */
static void test_refusal_log_clean(void)
{
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;
    int controls = 0;

    reset();
    cfg_for(&cfg, fx);
    cfg.max_retries = 0;
    cfg.log = control_free_log;
    cfg.log_ctx = &controls;
    cfg.log_level = VEIL_LOG_DEBUG;
    c = tu_client_new(&cfg);
    push_plaintext(HOSTILE_HEAD ",\"x\\ninfo: forged\\u001b[2J\":1,"
                                "\"x\\ninfo: forged\\u001b[2J\":2}");
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SECURITY, &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "twice"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "forged"));
    CU_ASSERT_EQUAL(controls, 0);
    veil_client_free(c);
}

/* An error detail quoting the server holds no C1 control (U+0080 to
 * U+009F: CSI is U+009B, which terminals act on as ESC [), neither
 * UTF-8-encoded nor as a raw byte: the library's error details are for
 * callers that print them as they are. */
static void test_detail_c1_controls(void)
{
    veil_client *c;
    veil_client_error err;

    c = client_once();
    CU_ASSERT_EQUAL(fx_push_status(fx, 403,
                                   "a\xc2\x9b"
                                   "2Jb\x9b"
                                   "2Jc \xc3\xa9t\xc3\xa9"),
                    0);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_FORBIDDEN, &err);
    CU_ASSERT_PTR_NULL(strchr(err.detail, '\x9b'));
    CU_ASSERT_PTR_NULL(strchr(err.detail, '\xc2'));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "2Jb"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "2Jc \xc3\xa9t\xc3\xa9"));
    veil_client_free(c);
}

/* The key changes under a pin: the refetch after the server's "could not
 * be decrypted" finds a key the pin refuses, and says so. */
static void test_pin_on_refetch(void)
{
    veil_client_config cfg;
    veil_client *c;
    veil_client_error err;
    char pin[72];

    reset();
    key_fp(server_key, pin);
    cfg_for(&cfg, fx);
    cfg.server_key_pin = pin;
    c = tu_client_new(&cfg);
    ask(c, PROMPT);
    fx_set_server_key(fx, server_key2);
    ask_fail(c, MODEL, NULL, VEIL_CLIENT_E_SECURITY, &err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "pinned"));
    CU_ASSERT_EQUAL(fx_posts(fx), 2);
    veil_client_free(c);
    reset();
}

/* Log lines the client wrote. */
typedef struct log_lines {
    char text[4096];
    size_t len;
} log_lines;

static void collect_log(void *ctx, veil_log_level level, const char *line)
{
    log_lines *l = ctx;

    (void)level;
    l->len += (size_t)snprintf(l->text + l->len, sizeof l->text - l->len,
                               "%s\n", line);
    if (l->len >= sizeof l->text)
        l->len = sizeof l->text - 1;
}

/* A password in the URL's user part shows in no log line or error. */
static void test_url_password_redacted(void)
{
    veil_client_config cfg;
    veil_client *c = NULL;
    veil_client_error err;
    log_lines log = {.len = 0};
    char url[128];

    reset();
    snprintf(url, sizeof url, "http://alice:s3cr3t-pw@127.0.0.1:%u",
             (unsigned)fx_port(fx));
    cfg_for(&cfg, fx);
    cfg.base_url = url;
    cfg.log = collect_log;
    cfg.log_ctx = &log;
    cfg.log_level = VEIL_LOG_DEBUG;
    c = tu_client_new(&cfg);
    ask(c, PROMPT);
    veil_client_free(c);
    CU_ASSERT_PTR_NULL(strstr(log.text, "s3cr3t"));
    CU_ASSERT_PTR_NOT_NULL(strstr(log.text, "http://alice:***@127.0.0.1"));
    cfg.allow_http = 0;
    CU_ASSERT_EQUAL(veil_client_new(&cfg, &c, &err), VEIL_CLIENT_E_SECURITY);
    CU_ASSERT_PTR_NULL(strstr(err.detail, "s3cr3t"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "alice:***@"));
    /* enrolment too */
    {
        veil_enroll_options eo = {.url = url,
                                  .trust_file = "/nonexistent/trust.json",
                                  .allow_unverified_ek = 1};

        CU_ASSERT_EQUAL(veil_attest_enroll(&eo, &err), VEIL_CLIENT_E_SECURITY);
        CU_ASSERT_PTR_NULL(strstr(err.detail, "s3cr3t"));
        CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "alice:***@"));
    }
}

static int fixtures_init(void)
{
    veil_engine_config ecfg;
    veil_keygen_params kp = {.type = VEIL_KEY_RSA, .bits = 2048};
    fx_config fcfg;

    memset(&ecfg, 0, sizeof ecfg);
    if (veil_engine_new(&ecfg, &sw_e) != VEIL_OK ||
        veil_key_generate(sw_e, "software", &kp, &server_key) != VEIL_OK ||
        veil_key_generate(sw_e, "software", &kp, &server_key2) != VEIL_OK) {
        fprintf(stderr, "fixture keys: %s\n", veil_last_error()->message);
        return -1;
    }
    memset(&fcfg, 0, sizeof fcfg);
    fcfg.engine = sw_e;
    fcfg.server_key = server_key;
    fcfg.verbose = getenv("VEIL_FIXTURE_VERBOSE") != NULL;
    return fx_start(&fcfg, &fx);
}

static void fixtures_free(void)
{
    fx_stop(fx);
    veil_key_free(server_key);
    veil_key_free(server_key2);
    veil_engine_free(sw_e);
}

int main(void)
{
    static const tu_test round_trips[] = {
        {"round trip, ephemeral key", test_round_trip},
        {"reasoning and tool calls", test_reasoning_and_tools},
        {"round trip, defaults (RSA-4096)", test_round_trip_4096},
        {"client key in SoftHSM2", test_token_key},
        {"tag separate, answers either way", test_tag_separate},
        {"tag appended, answers either way", test_tag_appended},
        {"https with a CA file", test_tls},
    };
    static const tu_test errors[] = {
        {"status to class, with detail", test_error_statuses},
        {"connection refused", test_connection_refused},
        {"503, 503, 200: retried", test_retry_then_success},
        {"400/401/403/404: not retried", test_no_retry},
        {"Retry-After honoured", test_retry_after},
        {"timeout", test_timeout},
    };
    static const tu_test security[] = {
        {"tampered answers (tag separate)", test_tampered_separate},
        {"tampered answers (tag appended)", test_tampered_appended},
        {"server key pin", test_pin},
        {"server key too small", test_small_server_key},
        {"plain http refused", test_http_refused},
    };
    static const tu_test requests[] = {
        {"refused before sending", test_invalid_requests},
        {"per-request overrides", test_overrides},
    };
    static const tu_test lifecycle[] = {
        {"dispose", test_dispose},
        {"server key cached", test_key_cache},
        {"server key rotation", test_server_key_rotation},
        {"connection reuse", test_connection_reuse},
        {"threads", test_threads},
        {"key directory", test_key_dir},
        {"ephemeral key rotation", test_key_rotation},
    };
    static const tu_test hostile[] = {
        {"members twice", test_duplicate_members},
        {"a replayed answer", test_replayed_answer},
        {"unencrypted package fields", test_outer_fields},
        {"degenerate server keys", test_server_key_checks},
        {"bounded parsing before authentication", test_parse_bounds},
        {"prompt and answer wiped from cJSON's heap", test_json_wiped},
        {"a dead connection: no resend", test_no_resend},
        {"maximum: foreign attestation", test_maximum_foreign},
        {"Retry-After of a 1xx", test_interim_retry_after},
        {"endless trailers", test_endless_trailers},
        {"attestation report bounded", test_report_bounded},
        {"refusal log lines clean", test_refusal_log_clean},
        {"C1 controls in an error detail", test_detail_c1_controls},
        {"pin checked on refetch", test_pin_on_refetch},
        {"URL password redacted", test_url_password_redacted},
    };
    /* VEIL_TEST_SUITE=NAME runs that suite alone (while working on it) */
    const char *only = getenv("VEIL_TEST_SUITE");
    int rc;

    if (fixtures_init() != 0) {
        fixtures_free();
        return 1;
    }
#define SUITE(name, tests)                                                     \
    if (only == NULL || strcmp(only, name) == 0)                               \
    TU_ADD_SUITE(name, NULL, NULL, tests)
    SUITE("round trips", round_trips);
    SUITE("errors and retries", errors);
    SUITE("security", security);
    SUITE("requests", requests);
    SUITE("lifecycle and keys", lifecycle);
    SUITE("hostile server", hostile);
#undef SUITE
    rc = tu_run_tests();
    fixtures_free();
    return rc;
}
