/* The client library over protocol v2 (veil/client.h, client/v2.c)
 * against veild for real, with the echo model: what a user of
 * veil_chat_create, veil_models_list and veil_embeddings_create sees,
 * and the veil CLI (`veil chat --protocol`, `veil models`) as a user runs
 * it.  Gateways: the server key and so the KEM keys in the SoftHSM2
 * token; the server key in a key directory (KEM keys in software); one
 * with v2 off; one with v2 on but no signing key.  Both v2 gateways sign
 * their key configurations with an EC key in the token.
 *
 * What a real veild never sends (an expired statement, a forged
 * signature, the uniform 400 on every request) comes from a stand-in
 * gateway made here (tests/stub_http.c), named as such: a mock where the
 * real part cannot misbehave on purpose.
 *
 * No timed assertions.  Needs VEIL_BUILDDIR and the SoftHSM2 token of
 * tests/env/with-tokens.sh. */
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <curl/curl.h>
#include <openssl/sha.h>

#include "gwtest.h"
#include "bhttp.h"
#include "evidence.h"
#include "bhttp.h"
#include "evidence.h"
#include "hpke.h"
#include "ohttp.h"
#include "openai.h"
#include "package.h"
#include "stub_http.h"
#include "testutil.h"
#include "util.h"
#include "veil/client.h"

#define PROMPT                                                                 \
    "Hello over v2 from the client, gr\xc3\xbc\xc3\x9f"                        \
    "e"
#define UNIFORM                                                                \
    "{\"type\":\"https://iana.org/assignments/http-problem-types#ohttp-key\"," \
    "\"title\":\"Oblivious HTTP key configuration not acceptable\"}"

static const char *module, *pin_file;
static char pin_spec[600], token_uri[256], server_ref[700], signer_ref[700];
static char sw_ref[600], signer_fp[72];
static veil_engine *sw_e, *tok_e;
static veil_key *srv_key, *sign_key;
static tu_proc gw_tok, gw_sw;
static char url_tok[64], url_sw[64];

/* ---- helpers --------------------------------------------------------------
 */

static void url_of(const tu_proc *p, char *out, size_t size)
{
    snprintf(out, size, "http://127.0.0.1:%u", p->port);
}

static atomic_int sig_verified; /* "answer signature verified" lines */

static void dbg_log(void *ctx, veil_log_level level, const char *line)
{
    (void)ctx;
    (void)level;
    if (strstr(line, "answer signature verified"))
        atomic_fetch_add(&sig_verified, 1);
    if (getenv("CV2_DEBUG"))
        fprintf(stderr, "log: %s\n", line);
}

/* A client of url over proto, quick retries (each one told to on_retry
 * with seen, when not NULL), its log at debug level. */
static veil_client *client_counting(const char *url, veil_client_protocol proto,
                                    veil_client_retry_fn on_retry, int *seen)
{
    veil_client_config cfg;
    tu_client_config(&cfg, url);
    cfg.protocol = proto;
    cfg.retry_base_ms = 20;
    cfg.log = dbg_log;
    cfg.log_level = VEIL_LOG_DEBUG;
    cfg.on_retry = on_retry;
    cfg.retry_ctx = seen;
    return tu_client_new(&cfg);
}

static veil_client *client_for(const char *url, veil_client_protocol proto)
{
    return client_counting(url, proto, NULL, NULL);
}

static cJSON *chat_request(void)
{
    cJSON *req = veil_chat_request_new("echo");
    veil_chat_request_add_message(req, "user", PROMPT);
    return req;
}

/* One chat; the status, and the answer's content compared. */
static veil_client_status chat(veil_client *c, veil_chat_stats *stats,
                               veil_client_error *err, int *content_ok)
{
    cJSON *req = chat_request(), *resp = NULL;
    veil_client_status st = veil_chat_create(c, req, NULL, &resp, stats, err);
    const char *content = veil_chat_content(resp);
    *content_ok = content && !strcmp(content, PROMPT);
    if (st != VEIL_CLIENT_OK)
        fprintf(stderr, "chat: %s: %s\n", veil_client_status_name(st),
                err->detail);
    veil_chat_response_free(resp);
    veil_chat_response_free(req);
    return st;
}

/* A chat over v2 to url: the answer, its _metadata and the stats. */
static void chat_v2_ok(const char *url, veil_client_protocol proto)
{
    veil_client *c = client_for(url, proto);
    cJSON *req = chat_request(), *resp = NULL;
    veil_chat_stats stats;
    veil_client_error err;
    veil_client_status st;
    atomic_store(&sig_verified, 0);
    for (int round = 0; round < 2; round++) { /* the second: cached keys */
        st = veil_chat_create(c, req, NULL, &resp, &stats, &err);
        if (st != VEIL_CLIENT_OK)
            fprintf(stderr, "chat: %s\n", err.detail);
        CU_ASSERT_EQUAL_FATAL(st, VEIL_CLIENT_OK);
        CU_ASSERT_STRING_EQUAL(veil_chat_content(resp), PROMPT);
        const cJSON *md = cJSON_GetObjectItem(resp, "_metadata");
        CU_ASSERT_STRING_EQUAL(tu_json_str(md, "protocol"), "v2");
        CU_ASSERT(cJSON_IsTrue(cJSON_GetObjectItem(md, "is_encrypted")));
        CU_ASSERT_STRING_EQUAL(tu_json_str(md, "request_id"), stats.request_id);
        CU_ASSERT_EQUAL(strlen(stats.request_id), 64);
        CU_ASSERT_EQUAL(stats.protocol, 2);
        CU_ASSERT_EQUAL(stats.attempts, 1);
        if (stats.attempts != 1)
            fprintf(stderr, "attempts %u\n", stats.attempts);
        CU_ASSERT_STRING_EQUAL(stats.payload_id, "");
        veil_chat_response_free(resp);
        resp = NULL;
    }
    CU_ASSERT_EQUAL(atomic_load(&sig_verified), 2); /* each answer's */
    veil_chat_response_free(req);
    veil_client_free(c);
}

/* Runs $VEIL_BUILDDIR/veil with args; stdout and stderr into files under
 * $VEIL_TEST_DIR; the exit status (or -1). */
static int run_veil(const char *const *args, char **out, char **errout)
{
    char exe[600], po[700], pe[700];
    const char *argv[32];
    size_t n = 0;
    int status = -1;
    snprintf(exe, sizeof exe, "%s/veil", tu_env("VEIL_BUILDDIR"));
    snprintf(po, sizeof po, "%s/client-v2-cli.out", tu_env("VEIL_TEST_DIR"));
    snprintf(pe, sizeof pe, "%s/client-v2-cli.err", tu_env("VEIL_TEST_DIR"));
    argv[n++] = exe;
    for (size_t i = 0; args[i] && n < 31; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        int fo = open(po, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int fe = open(pe, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int fi = open("/dev/null", O_RDONLY);
        if (fo < 0 || fe < 0 || fi < 0)
            _exit(127);
        dup2(fi, 0);
        dup2(fo, 1);
        dup2(fe, 2);
        unsetenv("VEIL_URL");
        unsetenv("VEIL_API_KEY");
        setenv("XDG_CONFIG_HOME", tu_env("VEIL_TEST_DIR"), 1);
        execv(exe, (char *const *)argv);
        _exit(127);
    }
    if (pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status))
        status = WEXITSTATUS(status);
    *out = tu_read_file(po, NULL);
    *errout = tu_read_file(pe, NULL);
    return status;
}

/* ---- over real gateways ----------------------------------------------------
 */

/* Chat over v2, the KEM key in SoftHSM2, then in software. */
static void test_chat_v2_token(void)
{
    chat_v2_ok(url_tok, VEIL_CLIENT_PROTOCOL_V2);
}

static void test_chat_v2_software(void)
{
    chat_v2_ok(url_sw, VEIL_CLIENT_PROTOCOL_V2);
}

#define WIPE_MARKER "wipe-marker-v2-51e0"

/* Over v2 the prompt and the answer (echoed) are wiped from cJSON's heap:
 * the request tree, the inner answer's tree, freed by the library and by
 * veil_chat_response_free. */
static void test_json_wiped_v2(void)
{
    veil_client *c = client_for(url_sw, VEIL_CLIENT_PROTOCOL_V2);
    cJSON *req = veil_chat_request_new("echo"), *resp = NULL;
    veil_client_error err;
    CU_ASSERT_FATAL(
        veil_chat_request_add_message(req, "user", "secret " WIPE_MARKER));
    int frees = 0;
    tu_wipe_scan_begin(WIPE_MARKER);
    CU_ASSERT_EQUAL(veil_chat_create(c, req, NULL, &resp, NULL, &err),
                    VEIL_CLIENT_OK);
    CU_ASSERT_STRING_EQUAL(veil_chat_content(resp), "secret " WIPE_MARKER);
    veil_chat_response_free(resp);
    veil_chat_response_free(req);
    CU_ASSERT_EQUAL(tu_wipe_scan_end(&frees), 0);
    CU_ASSERT_TRUE(frees > 0);
    veil_client_free(c);
}

/* auto picks v2 where the gateway signs a key configuration. */
static void test_auto_picks_v2(void)
{
    chat_v2_ok(url_tok, VEIL_CLIENT_PROTOCOL_AUTO);
}

typedef struct worker {
    veil_client *c;
    int ok; /* chats answered with the prompt over v2 */
} worker;

static void *work(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < 3; i++) {
        veil_chat_stats stats;
        veil_client_error err;
        int same = 0;
        if (chat(w->c, &stats, &err, &same) == VEIL_CLIENT_OK && same &&
            stats.protocol == 2)
            w->ok++;
    }
    return NULL;
}

/* One client, four threads at once from a cold start: the key
 * configuration and signing key are fetched and cached under the lock. */
static void test_threads(void)
{
    veil_client *c = client_for(url_sw, VEIL_CLIENT_PROTOCOL_AUTO);
    pthread_t t[4];
    worker w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (worker){c, 0};
        CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, work, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        CU_ASSERT_EQUAL(w[i].ok, 3);
    }
    veil_client_free(c);
}

/* v1 against the same gateway still works, and says so. */
static void test_v1_still(void)
{
    veil_client *c = client_for(url_tok, VEIL_CLIENT_PROTOCOL_V1);
    veil_chat_stats stats;
    veil_client_error err;
    int ok;
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_OK);
    CU_ASSERT(ok);
    CU_ASSERT_EQUAL(stats.protocol, 1);
    CU_ASSERT_EQUAL(strlen(stats.payload_id), 36);
    veil_client_free(c);
}

/* A gateway with v2 off: auto falls back to v1; v2 is a clear error. */
static void test_v2_off(void)
{
    char state_dir[700], url[64];
    const char *base[] = {"--state-dir", state_dir, "--rate", "1000",
                          "--burst",     "1000",    NULL};
    const char *extra[] = {"--server-key",
                           server_ref,
                           "--pkcs11-module",
                           module,
                           "--pin-source",
                           pin_spec,
                           "--signing-key",
                           signer_ref,
                           "--model",
                           "echo=echo",
                           "--v2",
                           "off",
                           NULL};
    veil_chat_stats stats;
    veil_client_error err;
    tu_proc g;
    int ok;

    snprintf(state_dir, sizeof state_dir, "%s/cv2-off.state",
             tu_env("VEIL_TEST_DIR"));
    CU_ASSERT_EQUAL_FATAL(gt_veild_start(&g, "cv2-off", base, extra, 0), 0);
    url_of(&g, url, sizeof url);
    veil_client *c = client_for(url, VEIL_CLIENT_PROTOCOL_AUTO);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_OK);
    CU_ASSERT(ok);
    CU_ASSERT_EQUAL(stats.protocol, 1);
    /* and again, from the client's memory of the gateway */
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_OK);
    CU_ASSERT_EQUAL(stats.protocol, 1);
    veil_client_free(c);

    c = client_for(url, VEIL_CLIENT_PROTOCOL_V2);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_E_API);
    CU_ASSERT_EQUAL(err.http_status, 404);
    CU_ASSERT(strstr(err.detail, "does not speak protocol v2") != NULL);
    veil_client_free(c);

    /* the CLI: auto falls back, v2 exits 14 with the reason */
    {
        const char *a1[] = {"chat", "--url", url, "--allow-http", "-m", "echo",
                            "-v",   PROMPT,  NULL};
        const char *a2[] = {"chat", "--url",      url,  "--allow-http", "-m",
                            "echo", "--protocol", "v2", PROMPT,         NULL};
        char *out = NULL, *e = NULL;
        CU_ASSERT_EQUAL(run_veil(a1, &out, &e), 0);
        CU_ASSERT(out && !strcmp(out, PROMPT "\n"));
        CU_ASSERT(e && strstr(e, "protocol v1, payload") != NULL);
        free(out);
        free(e);
        CU_ASSERT_EQUAL(run_veil(a2, &out, &e), 14);
        CU_ASSERT(e && strstr(e, "does not speak protocol v2") != NULL);
        free(out);
        free(e);
    }
    gt_stop_ok(&g);
}

/* v2 on but nothing signs its keys: auto takes v1, v2 refuses. */
static void test_unsigned_keys(void)
{
    char state_dir[700], url[64];
    const char *base[] = {"--state-dir", state_dir, "--rate", "1000",
                          "--burst",     "1000",    NULL};
    const char *extra[] = {"--server-key", sw_ref, "--model", "echo=echo",
                           NULL};
    veil_chat_stats stats;
    veil_client_error err;
    tu_proc g;
    int ok;

    snprintf(state_dir, sizeof state_dir, "%s/cv2-unsigned.state",
             tu_env("VEIL_TEST_DIR"));
    CU_ASSERT_EQUAL_FATAL(gt_veild_start(&g, "cv2-unsigned", base, extra, 0),
                          0);
    url_of(&g, url, sizeof url);
    veil_client *c = client_for(url, VEIL_CLIENT_PROTOCOL_AUTO);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_OK);
    CU_ASSERT_EQUAL(stats.protocol, 1);
    veil_client_free(c);
    c = client_for(url, VEIL_CLIENT_PROTOCOL_V2);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_E_SECURITY);
    CU_ASSERT(strstr(err.detail, "is not signed") != NULL);
    veil_client_free(c);
    gt_stop_ok(&g);
}

/* The models, over v2 (inner GET) and v1 (the public list). */
static void test_models(void)
{
    static const veil_client_protocol protos[] = {VEIL_CLIENT_PROTOCOL_V2,
                                                  VEIL_CLIENT_PROTOCOL_V1};
    for (size_t i = 0; i < 2; i++) {
        veil_client *c = client_for(url_tok, protos[i]);
        veil_client_error err;
        veil_chat_stats stats;
        cJSON *resp = NULL;
        CU_ASSERT_EQUAL_FATAL(veil_models_list(c, NULL, &resp, &stats, &err),
                              VEIL_CLIENT_OK);
        const cJSON *data = cJSON_GetObjectItem(resp, "data");
        CU_ASSERT_EQUAL(cJSON_GetArraySize(data), 1);
        CU_ASSERT_STRING_EQUAL(tu_json_str(cJSON_GetArrayItem(data, 0), "id"),
                               "echo");
        CU_ASSERT_STRING_EQUAL(
            tu_json_str(cJSON_GetObjectItem(resp, "_metadata"), "protocol"),
            i == 0 ? "v2" : "v1");
        CU_ASSERT_EQUAL(stats.protocol, i == 0 ? 2 : 1);
        veil_chat_response_free(resp);
        veil_client_free(c);
    }
    {
        const char *a[] = {"models", "--url", url_tok, "--allow-http", NULL};
        char *out = NULL, *e = NULL;
        CU_ASSERT_EQUAL(run_veil(a, &out, &e), 0);
        CU_ASSERT(out && !strcmp(out, "echo\n"));
        free(out);
        free(e);
    }
}

/* Embeddings need the gateway's inner /v1/embeddings. */
static void test_embed_needs_v2(void)
{
    veil_client *c = client_for(url_tok, VEIL_CLIENT_PROTOCOL_V1);
    veil_client_error err;
    cJSON *req = cJSON_CreateObject(), *resp = NULL;
    cJSON_AddStringToObject(req, "model", "echo");
    cJSON_AddStringToObject(req, "input", PROMPT);
    CU_ASSERT_EQUAL(veil_embeddings_create(c, req, NULL, &resp, NULL, &err),
                    VEIL_CLIENT_E_CONFIG);
    CU_ASSERT(strstr(err.detail, "needs protocol v2") != NULL);
    CU_ASSERT_PTR_NULL(resp);
    veil_client_free(c);
    cJSON_Delete(req);
}

/* An embedding over v2 (the echo model's deterministic vector), from the
 * library and from `veil embed`. */
static void test_embed(void)
{
    double want[VEIL_OPENAI_EMBED_DIM];
    veil_client *c = client_for(url_sw, VEIL_CLIENT_PROTOCOL_AUTO);
    veil_client_error err;
    veil_chat_stats stats;
    cJSON *req = cJSON_CreateObject(), *resp = NULL;
    cJSON_AddStringToObject(req, "model", "echo");
    cJSON_AddStringToObject(req, "input", PROMPT);
    veil_openai_embedding(PROMPT, want);
    atomic_store(&sig_verified, 0);
    CU_ASSERT_EQUAL_FATAL(
        veil_embeddings_create(c, req, NULL, &resp, &stats, &err),
        VEIL_CLIENT_OK);
    CU_ASSERT_EQUAL(atomic_load(&sig_verified), 1);
    CU_ASSERT_EQUAL(stats.protocol, 2);
    const cJSON *emb = cJSON_GetObjectItem(
        cJSON_GetArrayItem(cJSON_GetObjectItem(resp, "data"), 0), "embedding");
    CU_ASSERT_EQUAL_FATAL(cJSON_GetArraySize(emb), VEIL_OPENAI_EMBED_DIM);
    for (int i = 0; i < VEIL_OPENAI_EMBED_DIM; i++)
        CU_ASSERT_DOUBLE_EQUAL(cJSON_GetArrayItem(emb, i)->valuedouble, want[i],
                               1e-9);
    veil_chat_response_free(resp);
    /* completions: the same path, another route */
    {
        cJSON *creq = cJSON_CreateObject(), *cresp = NULL;
        cJSON_AddStringToObject(creq, "model", "echo");
        cJSON_AddStringToObject(creq, "prompt", PROMPT);
        CU_ASSERT_EQUAL(
            veil_completions_create(c, creq, NULL, &cresp, &stats, &err),
            VEIL_CLIENT_OK);
        CU_ASSERT_STRING_EQUAL(
            tu_json_str(
                cJSON_GetArrayItem(cJSON_GetObjectItem(cresp, "choices"), 0),
                "text"),
            PROMPT);
        CU_ASSERT_EQUAL(atomic_load(&sig_verified), 2);
        veil_chat_response_free(cresp);
        cJSON_Delete(creq);
    }
    /* a request without "input" is refused before anything is sent */
    cJSON_DeleteItemFromObject(req, "input");
    CU_ASSERT_EQUAL(veil_embeddings_create(c, req, NULL, &resp, &stats, &err),
                    VEIL_CLIENT_E_INVALID_REQUEST);
    CU_ASSERT_EQUAL(stats.attempts, 0);
    cJSON_Delete(req);
    veil_client_free(c);
    {
        const char *a[] = {"embed", "--url", url_sw, "--allow-http",
                           "-m",    "echo",  PROMPT, NULL};
        const char *aj[] = {"embed",        "--url", url_sw,
                            "--allow-http", "-m",    "echo",
                            "--json",       PROMPT,  NULL};
        char *out = NULL, *e = NULL;
        CU_ASSERT_EQUAL(run_veil(a, &out, &e), 0);
        cJSON *vec = out ? cJSON_Parse(out) : NULL;
        CU_ASSERT(out && strchr(out, '\n') == out + strlen(out) - 1);
        CU_ASSERT_EQUAL(cJSON_GetArraySize(vec), VEIL_OPENAI_EMBED_DIM);
        CU_ASSERT(vec && fabs(cJSON_GetArrayItem(vec, 3)->valuedouble -
                              want[3]) < 1e-9);
        cJSON_Delete(vec);
        free(out);
        free(e);
        CU_ASSERT_EQUAL(run_veil(aj, &out, &e), 0);
        vec = out ? cJSON_Parse(out) : NULL;
        CU_ASSERT_STRING_EQUAL(
            tu_json_str(cJSON_GetObjectItem(vec, "_metadata"), "protocol"),
            "v2");
        CU_ASSERT_STRING_EQUAL(tu_json_str(vec, "object"), "list");
        cJSON_Delete(vec);
        free(out);
        free(e);
    }
}

/* A pin of another signing key: refused before anything is sent. */
static void test_wrong_signing_pin(void)
{
    veil_client_config cfg;
    veil_client_error err;
    veil_chat_stats stats;
    int ok;
    tu_client_config(&cfg, url_tok);
    cfg.protocol = VEIL_CLIENT_PROTOCOL_V2;
    cfg.signing_key_pin = "sha256:"
                          "00112233445566778899aabbccddeeff"
                          "00112233445566778899aabbccddeeff";
    veil_client *c = tu_client_new(&cfg);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_E_SECURITY);
    CU_ASSERT(strstr(err.detail, "does not match the pinned") != NULL);
    CU_ASSERT(strstr(err.detail, signer_fp) != NULL);
    CU_ASSERT_EQUAL(stats.attempts, 0);
    veil_client_free(c);
    /* auto refuses too: a signed configuration that fails is no v1 */
    cfg.protocol = VEIL_CLIENT_PROTOCOL_AUTO;
    c = tu_client_new(&cfg);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_E_SECURITY);
    veil_client_free(c);
    /* the right pin */
    cfg.protocol = VEIL_CLIENT_PROTOCOL_V2;
    cfg.signing_key_pin = signer_fp;
    c = tu_client_new(&cfg);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_OK);
    CU_ASSERT(ok);
    veil_client_free(c);
    {
        const char *a[] = {"chat",
                           "--url",
                           url_tok,
                           "--allow-http",
                           "-m",
                           "echo",
                           "--signing-key-pin",
                           "sha256:"
                           "00112233445566778899aabbccddeeff"
                           "00112233445566778899aabbccddeeff",
                           PROMPT,
                           NULL};
        char *out = NULL, *e = NULL;
        CU_ASSERT_EQUAL(run_veil(a, &out, &e), 19);
        CU_ASSERT(e && strstr(e, "does not match the pinned") != NULL);
        CU_ASSERT(out && out[0] == '\0');
        free(out);
        free(e);
    }
}

/* A server-key pin (v1's RSA key) is never left unchecked by v2, which
 * does not use that key: auto takes v1, where a wrong pin is a
 * SecurityError; v2, and under auto the calls that need v2, are a
 * configuration error with nothing sent; with v2's signing key pinned too
 * (or a trust file) v2 goes ahead.  The same from `veil chat`. */
static void test_server_pin_not_skipped(void)
{
    veil_client_config cfg;
    veil_client_error err;
    veil_chat_stats stats;
    char fp[72], *pem = NULL;
    cJSON *req, *resp = NULL;
    int ok;
    veil_client *c = client_for(url_tok, VEIL_CLIENT_PROTOCOL_V1);

    CU_ASSERT_EQUAL_FATAL(veil_client_server_key(c, &pem, fp, &err),
                          VEIL_CLIENT_OK);
    free(pem);
    veil_client_free(c);

    tu_client_config(&cfg, url_tok);
    cfg.protocol = VEIL_CLIENT_PROTOCOL_AUTO;
    cfg.server_key_pin = fp;
    c = tu_client_new(&cfg);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_OK);
    CU_ASSERT(ok);
    CU_ASSERT_EQUAL(stats.protocol, 1); /* where the pin is checked */
    req = cJSON_CreateObject();
    cJSON_AddStringToObject(req, "model", "echo");
    cJSON_AddStringToObject(req, "input", PROMPT);
    CU_ASSERT_EQUAL(veil_embeddings_create(c, req, NULL, &resp, NULL, &err),
                    VEIL_CLIENT_E_CONFIG);
    CU_ASSERT(strstr(err.detail, "signing_key_pin") != NULL);
    CU_ASSERT_PTR_NULL(resp);
    veil_client_free(c);

    cfg.server_key_pin = "sha256:"
                         "00112233445566778899aabbccddeeff"
                         "00112233445566778899aabbccddeeff";
    c = tu_client_new(&cfg);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_E_SECURITY);
    CU_ASSERT_EQUAL(stats.attempts, 0);
    veil_client_free(c);

    cfg.protocol = VEIL_CLIENT_PROTOCOL_V2;
    cfg.server_key_pin = fp;
    c = tu_client_new(&cfg);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_E_CONFIG);
    CU_ASSERT(strstr(err.detail, "could not be checked") != NULL);
    CU_ASSERT_EQUAL(stats.attempts, 0);
    veil_client_free(c);

    cfg.signing_key_pin = signer_fp; /* v2 anchored: it goes */
    c = tu_client_new(&cfg);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_OK);
    CU_ASSERT(ok);
    CU_ASSERT_EQUAL(stats.protocol, 2);
    CU_ASSERT_EQUAL(veil_embeddings_create(c, req, NULL, &resp, NULL, &err),
                    VEIL_CLIENT_OK);
    veil_chat_response_free(resp);
    veil_client_free(c);
    cJSON_Delete(req);
    {
        const char *a[] = {"chat", "--url", url_tok, "--allow-http", "-m",
                           "echo", "--json", "--server-key-pin", fp, PROMPT,
                           NULL};
        const char *b[] = {"chat", "--url",  url_tok, "--allow-http",
                           "-m",   "echo",   "--protocol", "v2",
                           "--server-key-pin", fp,       PROMPT, NULL};
        char *out = NULL, *e = NULL;
        CU_ASSERT_EQUAL(run_veil(a, &out, &e), 0);
        /* a v1 answer: a payload ID, no v2 request identifier */
        CU_ASSERT(out && strstr(out, "\"payload_id\"") != NULL &&
                  strstr(out, "\"request_id\"") == NULL);
        free(out);
        free(e);
        out = e = NULL;
        /* a ConfigurationError: exit 21, as --help and veil.1 say */
        CU_ASSERT_EQUAL(run_veil(b, &out, &e), 21);
        CU_ASSERT(e && strstr(e, "could not be checked") != NULL);
        CU_ASSERT(out && out[0] == '\0');
        free(out);
        free(e);
    }
}

/* The gateway restarted (new KEM keys) while the client holds its key
 * configuration: the uniform 400, one refetch, one retry, success. */
static void test_refetch_after_restart(void)
{
    char state_dir[700], url[64], port[16];
    const char *base[] = {"--state-dir", state_dir, "--rate", "1000",
                          "--burst",     "1000",    NULL};
    const char *extra[] = {"--server-key",
                           server_ref,
                           "--pkcs11-module",
                           module,
                           "--pin-source",
                           pin_spec,
                           "--signing-key",
                           signer_ref,
                           "--model",
                           "echo=echo",
                           "--port",
                           port,
                           NULL};
    veil_chat_stats stats;
    veil_client_error err;
    tu_proc g;
    int ok;

    snprintf(state_dir, sizeof state_dir, "%s/cv2-restart.state",
             tu_env("VEIL_TEST_DIR"));
    snprintf(port, sizeof port, "0");
    CU_ASSERT_EQUAL_FATAL(gt_veild_start(&g, "cv2-restart", base, extra, 0), 0);
    snprintf(port, sizeof port, "%u", g.port);
    url_of(&g, url, sizeof url);
    veil_client *c = client_for(url, VEIL_CLIENT_PROTOCOL_V2);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_OK);
    CU_ASSERT_EQUAL(stats.attempts, 1);
    gt_stop_ok(&g);
    CU_ASSERT_EQUAL_FATAL(gt_veild_start(&g, "cv2-restart", base, extra, 0), 0);
    CU_ASSERT_EQUAL_FATAL(g.port, (unsigned)strtoul(port, NULL, 10));
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_OK);
    CU_ASSERT(ok);
    CU_ASSERT_EQUAL(stats.attempts, 2);
    CU_ASSERT_EQUAL(stats.protocol, 2);
    veil_client_free(c);
    gt_stop_ok(&g);
}

static void count_503(void *ctx, unsigned attempt, int http_status,
                      unsigned delay_ms)
{
    int *seen = ctx;
    (void)attempt;
    (void)delay_ms;
    if (http_status == 503)
        (*seen)++;
}

static void count_retry(void *ctx, unsigned attempt, int http_status,
                        unsigned delay_ms)
{
    int *seen = ctx;
    (void)attempt;
    (void)delay_ms;
    if (http_status == 429)
        (*seen)++;
}

/* The API key travels inside (authorization); the gateway's inner 401 and
 * 429 map to v1's classes, and an inner 429 is retried as v1 retries. */
static void test_api_key_inner(void)
{
    static const char key[] = "veil-client-v2-key-41c9";
    uint8_t h[32];
    char line[200], dir[512], path[600], state_dir[700], hex[65], url[64];
    const char *base[] = {"--state-dir", state_dir, NULL};
    const char *extra[] = {"--server-key",
                           sw_ref,
                           "--pkcs11-module",
                           module,
                           "--pin-source",
                           pin_spec,
                           "--signing-key",
                           signer_ref,
                           "--model",
                           "echo=echo",
                           "--api-keys",
                           path,
                           "--rate",
                           "0.001",
                           "--burst",
                           "2",
                           NULL};
    veil_client_config cfg;
    veil_chat_stats stats;
    veil_client_error err;
    int ok, seen = 0;
    FILE *f;
    tu_proc g;

    SHA256((const uint8_t *)key, strlen(key), h);
    veil_hex(h, 32, hex);
    snprintf(line, sizeof line, "sha256:%s tester\n", hex);
    CU_ASSERT_EQUAL_FATAL(tu_scratch_dir("cv2-auth", dir, sizeof dir), 0);
    snprintf(path, sizeof path, "%s/api-keys", dir);
    snprintf(state_dir, sizeof state_dir, "%s/cv2-auth.state",
             tu_env("VEIL_TEST_DIR"));
    f = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(line, f);
    fclose(f);
    CU_ASSERT_EQUAL_FATAL(gt_veild_start(&g, "cv2-auth", base, extra, 0), 0);
    url_of(&g, url, sizeof url);
    tu_client_config(&cfg, url);
    cfg.protocol = VEIL_CLIENT_PROTOCOL_V2;
    cfg.max_retries = 1;
    cfg.retry_max_ms = 20;
    cfg.on_retry = count_retry;
    cfg.retry_ctx = &seen;
    cfg.api_key = "not-the-key";
    veil_client *c = tu_client_new(&cfg);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_E_AUTHENTICATION);
    CU_ASSERT_EQUAL(err.http_status, 401);
    CU_ASSERT_STRING_EQUAL(err.detail, "invalid API key");
    CU_ASSERT_EQUAL(stats.attempts, 1);
    veil_client_free(c);
    cfg.api_key = key;
    c = tu_client_new(&cfg);
    for (int i = 0; i < 2; i++) { /* the burst */
        CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_OK);
        CU_ASSERT(ok);
    }
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_E_RATE_LIMIT);
    CU_ASSERT_EQUAL(err.http_status, 429);
    CU_ASSERT(strstr(err.detail, "rate limit") != NULL);
    CU_ASSERT_EQUAL(stats.attempts, 2);
    CU_ASSERT_EQUAL(seen, 1);
    veil_client_free(c);
    gt_stop_ok(&g);
}

/* ---- a stand-in gateway (mock: a real one never misbehaves so) ----------- */

typedef struct stand_in {
    stub_http http;
    veil_key *signer; /* software EC P-256 */
    char *signer_pem;
    uint8_t *keys;
    size_t keys_len;
    long long not_after;
    int bad_signature;
    veil_hpke_key *kem;
    veil_ohttp_keyconfig kc;
    /* what a POST gets: the uniform 400, or an inner 200 chat answer
     * unsigned, signed over another answer, or signed right */
    enum {
        POST_UNIFORM,
        POST_UNSIGNED,
        POST_MISSIGNED,
        POST_SIGNED,
        POST_OTHER_IMPL, /* signed right, written as RFC 9292 lets another
                            gateway write it: a 103 first, field names in
                            mixed case, zero padding */
        POST_NOT_RES,    /* a 200 of application/json */
        POST_SHORT,      /* a 200 message/ohttp-res shorter than its nonce */
        POST_REDIRECT,   /* a 307 to another gateway */
        POST_DROP        /* the connection closed, no answer */
    } post;
    atomic_int gets, posts;
    /* the outer POST's header fields other than Host, Content-Type and
     * Content-Length (RFC 9458 5: all a relay needs), comma-separated */
    char post_extra[256];
    atomic_int gets_503; /* this many GETs of the keys answer 503 first */
    char authority[128]; /* the last inner request's authority */
    char get_accept[128]; /* the last GET of the keys' Accept ("-": none) */
    atomic_int authorized; /* requests with Authorization in the outer
                              header section */
    const char *keys_moved; /* a GET of the keys at the root is answered
                               307 to this, or NULL */
    char post_url[128];     /* the last POST's path */
    const char *keys_cache; /* the keys' Cache-Control and Age, or NULL */
    const char *keys_cache2; /* a second Cache-Control line, or NULL */
    const char *keys_age;
    int rotate_keys; /* each GET answers a new key ID (a rotation) */
    int inner_status; /* POST_SIGNED: an inner answer of this status
                         (unsigned, a JSON detail) instead of the 200 */
} stand_in;

static stand_in si;

#define STAND_IN_ANSWER                                                        \
    "{\"object\":\"chat.completion\",\"choices\":[{\"index\":0,"               \
    "\"message\":{\"role\":\"assistant\",\"content\":\"stand-in\"}}]}"

/* An inner 200 for a POST, signed as si.post says. */
static enum MHD_Result si_answer(stand_in *s, struct MHD_Connection *conn,
                                 stub_body *body)
{
    veil_secbuf *req = NULL, *plain = NULL;
    veil_ohttp_ctx *ctx = NULL;
    veil_bhttp_msg *in = NULL;
    uint8_t h[32], req_sha[32], resp_sha[32], fp[32], sig[VEIL_ECDSA_SIG_MAX];
    uint8_t *out = NULL;
    size_t enc_len = 0, sig_len = sizeof sig, out_len = 0;
    char rid[65], st[VEIL_EV_STATEMENT_MAX], at[24], fp_text[80], *b64 = NULL;
    char tier[16] = "standard";
    static const char answer[] = STAND_IN_ANSWER;
    static const char other[] = "{\"other\":true}";
    long long now = (long long)time(NULL);
    enum MHD_Result ret = MHD_NO;

    if (veil_ohttp_decap_request(sw_e, &s->kc, s->kem,
                                 (const uint8_t *)body->data, body->len, &req,
                                 &ctx) != VEIL_OK ||
        veil_bhttp_decode(veil_secbuf_data(req), veil_secbuf_len(req),
                          VEIL_BHTTP_REQUEST, NULL, &in) != VEIL_OK)
        goto out;
    snprintf(s->authority, sizeof s->authority, "%.*s",
             (int)in->authority.len, (const char *)in->authority.p);
    const uint8_t *enc = veil_ohttp_ctx_enc(ctx, &enc_len);
    const veil_bhttp_field *tf =
        veil_bhttp_field_get(&in->headers, "x-security-tier");
    SHA256(enc, enc_len, h);
    veil_hex(h, 32, rid);
    if (tf && tf->value.len < sizeof tier) { /* signed for the tier asked */
        memcpy(tier, tf->value.p, tf->value.len);
        tier[tf->value.len] = '\0';
    }
    SHA256(in->content.p, in->content.len, req_sha);
    if (s->post == POST_MISSIGNED)
        SHA256((const uint8_t *)other, sizeof other - 1, resp_sha);
    else
        SHA256((const uint8_t *)answer, sizeof answer - 1, resp_sha);
    veil_key_fingerprint(s->signer, fp);
    memcpy(fp_text, "sha256:", 7);
    veil_hex(fp, 32, fp_text + 7);
    snprintf(at, sizeof at, "%lld", now);
    size_t n =
        veil_ev_statement(rid, tier, req_sha, resp_sha, fp, now, st, sizeof st);
    if (n == 0 ||
        veil_ecdsa_sign(sw_e, s->signer, (const uint8_t *)st, n, sig,
                        &sig_len) != VEIL_OK ||
        (b64 = veil_b64_encode(sig, sig_len)) == NULL)
        goto out;
    int other_impl = s->post == POST_OTHER_IMPL;
    veil_bhttp_field f[4] = {
        {VEIL_BSTR("content-type"), VEIL_BSTR("application/json")},
        {VEIL_BSTR("x-veil-signature"), {(const uint8_t *)b64, strlen(b64)}},
        {VEIL_BSTR("x-veil-signed-at"), {(const uint8_t *)at, strlen(at)}},
        {VEIL_BSTR("x-veil-signing-key"),
         {(const uint8_t *)fp_text, strlen(fp_text)}}};
    if (other_impl) {
        f[0].name = VEIL_BSTR("Content-Type");
        f[1].name = VEIL_BSTR("X-Veil-Signature");
        f[2].name = VEIL_BSTR("X-VEIL-SIGNED-AT");
        f[3].name = VEIL_BSTR("X-Veil-Signing-Key");
    }
    veil_bhttp_field link = {VEIL_BSTR("Link"),
                             VEIL_BSTR("</style.css>; rel=preload")};
    veil_bhttp_info early = {103, {&link, 1}};
    veil_bhttp_msg m = {.status = 200,
                        .info = other_impl ? &early : NULL,
                        .n_info = other_impl ? 1 : 0,
                        .headers = {f, s->post == POST_UNSIGNED ? 1 : 4},
                        .content = VEIL_BSTR(answer)};
    if (s->inner_status) {
        m.status = s->inner_status;
        m.headers.n = 1;
        m.content = VEIL_BSTR("{\"detail\":\"from the backend\"}");
    }
    uint8_t padded[4096] = {0}; /* the message, then zeros */
    size_t plain_len = 0;
    if (veil_bhttp_encode(&m, 0, &plain) != VEIL_OK ||
        (plain_len = veil_secbuf_len(plain)) + 32 > sizeof padded)
        goto out;
    memcpy(padded, veil_secbuf_data(plain), plain_len);
    if (veil_ohttp_encap_response(sw_e, ctx, padded,
                                  plain_len + (other_impl ? 32 : 0), NULL,
                                  &out, &out_len) != VEIL_OK)
        goto out;
    ret = stub_send(conn, 200, (const char *)out, out_len, VEIL_OHTTP_MEDIA_RES,
                    NULL);
out:
    free(out);
    free(b64);
    veil_secbuf_free(plain);
    veil_bhttp_msg_free(in);
    veil_secbuf_free(req);
    veil_ohttp_ctx_free(ctx);
    return ret;
}

static enum MHD_Result si_extra(void *cls, enum MHD_ValueKind kind,
                                const char *key, const char *value)
{
    char *out = cls;
    size_t n = strlen(out);
    (void)kind;
    (void)value;
    if (strcasecmp(key, "Host") && strcasecmp(key, "Content-Type") &&
        strcasecmp(key, "Content-Length") && n < 200)
        snprintf(out + n, 256 - n, "%s%s", n ? "," : "", key);
    return MHD_YES;
}

/* 1 when url is path, or path under a prefix (a base URL with a path) */
static int si_path(const char *url, const char *path)
{
    size_t n = strlen(url), m = strlen(path);
    return n >= m && !strcmp(url + n - m, path) &&
           (n == m || !strncmp(url, "/prefix/", 8));
}

static enum MHD_Result si_handle(void *ctx, struct MHD_Connection *conn,
                                 const char *url, const char *method,
                                 stub_body *body)
{
    stand_in *s = ctx;
    if (MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization"))
        atomic_fetch_add(&s->authorized, 1);
    if (si_path(url, "/pki/signing_key"))
        return stub_send(conn, 200, s->signer_pem, strlen(s->signer_pem),
                         "text/plain", NULL);
    if (!si_path(url, "/.well-known/ohttp-gateway"))
        return stub_send(conn, 404, "{\"detail\":\"no\"}", 15,
                         "application/json", NULL);
    if (!strcmp(method, "POST")) {
        atomic_fetch_add(&s->posts, 1);
        snprintf(s->post_url, sizeof s->post_url, "%s", url);
        s->post_extra[0] = '\0';
        MHD_get_connection_values(conn, MHD_HEADER_KIND, si_extra,
                                  s->post_extra);
        if (s->post == POST_NOT_RES)
            return stub_send(conn, 200, STAND_IN_ANSWER,
                             sizeof STAND_IN_ANSWER - 1, "application/json",
                             NULL);
        if (s->post == POST_SHORT)
            return stub_send(conn, 200, "0123456789abcdef", 16,
                             VEIL_OHTTP_MEDIA_RES, NULL);
        if (s->post == POST_DROP)
            return MHD_NO; /* libmicrohttpd closes the connection */
        if (s->post == POST_REDIRECT) {
            struct MHD_Response *to = MHD_create_response_from_buffer(
                0, (void *)"", MHD_RESPMEM_PERSISTENT);
            MHD_add_response_header(
                to, "Location",
                "http://127.0.0.1:9/.well-known/ohttp-gateway");
            enum MHD_Result ret = MHD_queue_response(conn, 307, to);
            MHD_destroy_response(to);
            return ret;
        }
        if (s->post != POST_UNIFORM)
            return si_answer(s, conn, body);
        return stub_send(conn, 400, UNIFORM, strlen(UNIFORM),
                         "application/problem+json", NULL);
    }
    atomic_fetch_add(&s->gets, 1);
    if (s->keys_moved && !strcmp(url, "/.well-known/ohttp-gateway")) {
        struct MHD_Response *to = MHD_create_response_from_buffer(
            0, (void *)"", MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(to, "Location", s->keys_moved);
        enum MHD_Result ret = MHD_queue_response(conn, 307, to);
        MHD_destroy_response(to);
        return ret;
    }
    const char *accept =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Accept");
    snprintf(s->get_accept, sizeof s->get_accept, "%s", accept ? accept : "-");
    if (atomic_load(&s->gets_503) > 0) {
        atomic_fetch_sub(&s->gets_503, 1);
        return stub_send(conn, 503, "{\"detail\":\"restarting\"}", 24,
                         "application/json", NULL);
    }
    uint8_t h[32], sig[VEIL_ECDSA_SIG_MAX];
    size_t sig_len = sizeof sig;
    char hex[65], st[256], *b64, fp[80];
    long long now = (long long)time(NULL);
    if (s->rotate_keys) {
        s->kc.key_id = (uint8_t)(7 + atomic_load(&s->gets));
        free(s->keys);
        s->keys = NULL;
        if (veil_ohttp_keys_encode(&s->kc, 1, &s->keys, &s->keys_len) !=
            VEIL_OK)
            return MHD_NO;
    }
    SHA256(s->keys, s->keys_len, h);
    veil_hex(h, 32, hex);
    int n = snprintf(st, sizeof st,
                     "veil-ohttp-keys-v1\nkeys_sha256=%s\nsigned_at=%lld\n"
                     "not_after=%lld\n",
                     hex, now - 10, s->not_after);
    veil_ecdsa_sign(sw_e, s->signer, (const uint8_t *)st, (size_t)n, sig,
                    &sig_len);
    if (s->bad_signature)
        sig[sig_len - 1] ^= 1;
    b64 = veil_b64_encode(sig, sig_len);
    struct MHD_Response *r = MHD_create_response_from_buffer(
        s->keys_len, s->keys, MHD_RESPMEM_MUST_COPY);
    uint8_t kfp[32];
    veil_key_fingerprint(s->signer, kfp);
    veil_hex(kfp, 32, hex);
    snprintf(fp, sizeof fp, "sha256:%s", hex);
    snprintf(st, sizeof st, "%lld", now - 10);
    MHD_add_response_header(r, "Content-Type", VEIL_OHTTP_MEDIA_KEYS);
    MHD_add_response_header(r, "X-Veil-Keys-Signature", b64);
    MHD_add_response_header(r, "X-Veil-Keys-Signed-At", st);
    snprintf(st, sizeof st, "%lld", s->not_after);
    MHD_add_response_header(r, "X-Veil-Keys-Expires", st);
    MHD_add_response_header(r, "X-Veil-Signing-Key", fp);
    if (s->keys_cache)
        MHD_add_response_header(r, "Cache-Control", s->keys_cache);
    if (s->keys_cache2)
        MHD_add_response_header(r, "Cache-Control", s->keys_cache2);
    if (s->keys_age)
        MHD_add_response_header(r, "Age", s->keys_age);
    enum MHD_Result ret = MHD_queue_response(conn, 200, r);
    MHD_destroy_response(r);
    free(b64);
    return ret;
}

static int stand_in_start(void)
{
    veil_keygen_params ep = {.type = VEIL_KEY_EC_P256};
    veil_ohttp_keyconfig *kc = &si.kc;
    stub_config cfg = {.handle = si_handle,
                       .ctx = &si,
                       .max_body = 1 << 20,
                       .who = "stand-in gateway"};
    if (veil_key_generate(sw_e, "software", &ep, &si.signer) != VEIL_OK ||
        veil_key_public_pem(si.signer, &si.signer_pem) != VEIL_OK ||
        veil_hpke_key_generate(VEIL_HPKE_KEM_P256, &si.kem) != VEIL_OK)
        return -1;
    kc->key_id = 7;
    kc->kem = VEIL_HPKE_KEM_P256;
    kc->pk_len = sizeof kc->pk;
    kc->algs[0] =
        (veil_ohttp_alg){VEIL_HPKE_KDF_SHA256, VEIL_HPKE_AEAD_AES256GCM};
    kc->n_algs = 1;
    if (veil_hpke_key_public(si.kem, kc->pk, &kc->pk_len) != VEIL_OK ||
        veil_ohttp_keys_encode(kc, 1, &si.keys, &si.keys_len) != VEIL_OK)
        return -1;
    return stub_start(&si.http, &cfg);
}

static void stand_in_url(char *out, size_t size)
{
    snprintf(out, size, "http://127.0.0.1:%u", si.http.port);
}

/* The stand-in as most cases want it: a statement valid for an hour,
 * signed right, `post` the POSTs' answer, nothing counted yet; its URL. */
static void si_ready(char *url, size_t size, int post)
{
    stand_in_url(url, size);
    si.not_after = (long long)time(NULL) + 3600;
    si.bad_signature = 0;
    si.post = post;
    atomic_store(&si.posts, 0);
    atomic_store(&si.gets, 0);
}

/* A statement whose not_after has passed: refused, nothing posted. */
static void test_expired_statement(void)
{
    char url[64];
    veil_chat_stats stats;
    veil_client_error err;
    int ok;
    stand_in_url(url, sizeof url);
    si.not_after = (long long)time(NULL) - 5;
    si.bad_signature = 0;
    atomic_store(&si.posts, 0);
    veil_client *c = client_for(url, VEIL_CLIENT_PROTOCOL_AUTO);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_E_SECURITY);
    CU_ASSERT(strstr(err.detail, "expired") != NULL);
    CU_ASSERT_EQUAL(atomic_load(&si.posts), 0);
    veil_client_free(c);
}

/* A signature that does not verify: refused, nothing posted. */
static void test_bad_signature(void)
{
    char url[64];
    veil_chat_stats stats;
    veil_client_error err;
    int ok;
    stand_in_url(url, sizeof url);
    si.not_after = (long long)time(NULL) + 3600;
    si.bad_signature = 1;
    atomic_store(&si.posts, 0);
    veil_client *c = client_for(url, VEIL_CLIENT_PROTOCOL_V2);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_E_SECURITY);
    CU_ASSERT(strstr(err.detail, "does not verify") != NULL);
    CU_ASSERT_EQUAL(atomic_load(&si.posts), 0);
    veil_client_free(c);
}

/* The uniform 400 twice: one refetch (a new key ID: the gateway rotated),
 * one retry, then a security error. */
static void test_uniform_twice(void)
{
    char url[64];
    veil_chat_stats stats;
    veil_client_error err;
    int ok;
    si_ready(url, sizeof url, POST_UNIFORM);
    si.rotate_keys = 1;
    veil_client *c = client_for(url, VEIL_CLIENT_PROTOCOL_V2);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_E_SECURITY);
    CU_ASSERT(strstr(err.detail, "could not open the request twice") != NULL);
    CU_ASSERT_EQUAL(err.http_status, 400);
    CU_ASSERT_EQUAL(atomic_load(&si.posts), 2);
    CU_ASSERT_EQUAL(atomic_load(&si.gets), 2);
    CU_ASSERT_EQUAL(stats.attempts, 2);
    veil_client_free(c);
    si.rotate_keys = 0;
    si.kc.key_id = 7;
    free(si.keys);
    si.keys = NULL;
    CU_ASSERT_EQUAL(veil_ohttp_keys_encode(&si.kc, 1, &si.keys, &si.keys_len),
                    VEIL_OK);
}

/* The uniform 400, and the refetched configuration is the one the request
 * was sealed to: the 400 was no stale key (a relay may have passed the
 * request on and answered 400 itself, or replayed it to get the gateway's
 * replay refusal), so nothing says the request was not processed.  RFC
 * 9458 6.5: not sent again; one POST, a security error saying why. */
static void test_uniform_same_key(void)
{
    char url[64];
    veil_chat_stats stats;
    veil_client_error err;
    int ok;
    si_ready(url, sizeof url, POST_UNIFORM);
    veil_client *c = client_for(url, VEIL_CLIENT_PROTOCOL_V2);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_E_SECURITY);
    CU_ASSERT(strstr(err.detail, "still publishes the key configuration") !=
              NULL);
    CU_ASSERT(strstr(err.detail, "not sent again") != NULL);
    CU_ASSERT_EQUAL(err.http_status, 400);
    CU_ASSERT_EQUAL(atomic_load(&si.posts), 1);
    CU_ASSERT_EQUAL(atomic_load(&si.gets), 2);
    veil_client_free(c);
}

/* One chat over v2 from a fresh client to the stand-in, which answers the
 * POST as `post`: the status, and the answer in *resp (NULL on error). */
static veil_client_status stand_in_chat(int post, cJSON **resp,
                                        veil_client_error *err)
{
    char url[64];
    stand_in_url(url, sizeof url);
    veil_client *c = client_for(url, VEIL_CLIENT_PROTOCOL_V2);
    cJSON *req = chat_request();
    si.post = post;
    veil_client_status st = veil_chat_create(c, req, NULL, resp, NULL, err);
    veil_chat_response_free(req);
    veil_client_free(c);
    return st;
}

/* The outer POST carries only what RFC 9458 5 says a relay needs.
 * Answers signed right, unsigned, and signed over another answer: only
 * the first is taken, also when a gateway of another implementation
 * writes it with a 103 before it, field names in mixed case (RFC 9292
 * 3.6, RFC 9110 5.1) and zero padding (RFC 9292 3.8). */
static void test_answer_signatures(void)
{
    static const struct {
        int post;
        veil_client_status st;
        const char *why;
    } cases[] = {
        {POST_SIGNED, VEIL_CLIENT_OK, NULL},
        {POST_OTHER_IMPL, VEIL_CLIENT_OK, NULL},
        {POST_UNSIGNED, VEIL_CLIENT_E_SECURITY, "carries no signature"},
        {POST_MISSIGNED, VEIL_CLIENT_E_SECURITY, "does not verify"},
    };
    si.not_after = (long long)time(NULL) + 3600;
    si.bad_signature = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cJSON *resp = NULL;
        veil_client_error err;
        CU_ASSERT_EQUAL(stand_in_chat(cases[i].post, &resp, &err),
                        cases[i].st);
        if (cases[i].why) {
            CU_ASSERT_PTR_NULL(resp);
            CU_ASSERT(strstr(err.detail, VEIL_CLIENT_SECURITY_MESSAGE) != NULL);
            CU_ASSERT(strstr(err.detail, cases[i].why) != NULL);
        } else {
            CU_ASSERT_STRING_EQUAL(veil_chat_content(resp), "stand-in");
        }
        /* what a relay sees: nothing but Host, Content-Type and
         * Content-Length (RFC 9458 5, 6.1: no User-Agent naming veil's
         * version, no Accept) */
        CU_ASSERT_STRING_EQUAL(si.post_extra, "");
        if (si.post_extra[0])
            fprintf(stderr, "outer POST also carries: %s\n", si.post_extra);
        veil_chat_response_free(resp);
    }
    si.post = POST_UNIFORM;
}

/* The GET of the key configurations asks for application/ohttp-keys in
 * its Accept, as RFC 9540 5 says a client does (curl alone would send
 * "Accept: * / *"). */
static void test_keys_get_accept(void)
{
    cJSON *resp = NULL;
    veil_client_error err;
    si.not_after = (long long)time(NULL) + 3600;
    si.bad_signature = 0;
    si.get_accept[0] = '\0';
    CU_ASSERT_EQUAL(stand_in_chat(POST_SIGNED, &resp, &err), VEIL_CLIENT_OK);
    CU_ASSERT_STRING_EQUAL(si.get_accept, VEIL_OHTTP_MEDIA_KEYS);
    if (strcmp(si.get_accept, VEIL_OHTTP_MEDIA_KEYS))
        fprintf(stderr, "GET of the keys: Accept \"%s\"\n", si.get_accept);
    veil_chat_response_free(resp);
    si.post = POST_UNIFORM;
}

/* The inner request's authority (RFC 9292 3.3, RFC 9113 8.3.1) is the
 * host and port of the base URL: not its path (a gateway under a path
 * prefix), and never its user information, which is a secret.  Nor does
 * the user information go on the outer requests (the GETs of the signing
 * key and of the key configurations, the POST) as HTTP Basic
 * credentials, which curl would send: RFC 9458 6.1, nothing identifying
 * on the request a relay forwards. */
static void test_inner_authority(void)
{
    char url[128], hostport[64];
    static const char *const forms[][2] = {{"http://", ""},
                                           {"http://", "/prefix"},
                                           {"http://user:s3cret@", ""},
                                           {"http://", "/prefix/"}};
    snprintf(hostport, sizeof hostport, "127.0.0.1:%u", si.http.port);
    si.not_after = (long long)time(NULL) + 3600;
    si.bad_signature = 0;
    si.post = POST_SIGNED;
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        cJSON *req = chat_request(), *resp = NULL;
        veil_client_error err;
        snprintf(url, sizeof url, "%s%s%s", forms[i][0], hostport,
                 forms[i][1]);
        si.authority[0] = '\0';
        atomic_store(&si.authorized, 0);
        atomic_store(&si.gets, 0);
        atomic_store(&si.posts, 0);
        veil_client *c = client_for(url, VEIL_CLIENT_PROTOCOL_V2);
        CU_ASSERT_EQUAL(veil_chat_create(c, req, NULL, &resp, NULL, &err),
                        VEIL_CLIENT_OK);
        CU_ASSERT_STRING_EQUAL(si.authority, hostport);
        CU_ASSERT(strstr(si.authority, "s3cret") == NULL &&
                  strstr(si.authority, "user") == NULL);
        if (strcmp(si.authority, hostport))
            fprintf(stderr, "%s: authority \"%s\"\n", url, si.authority);
        CU_ASSERT(atomic_load(&si.gets) >= 1 && atomic_load(&si.posts) >= 1);
        CU_ASSERT_EQUAL(atomic_load(&si.authorized), 0);
        if (atomic_load(&si.authorized))
            fprintf(stderr, "%s: %d outer requests with Authorization\n", url,
                    atomic_load(&si.authorized));
        veil_chat_response_free(resp);
        veil_chat_response_free(req);
        veil_client_free(c);
    }
    si.post = POST_UNIFORM;
}

/* A gateway (or a relay before it) that answers the POST with what is not
 * an Encapsulated Response: a 200 of another media type and one shorter
 * than the response nonce (RFC 9458 4.4: max(Nn, Nk) = 32 bytes here) are
 * the security error, with nothing taken; a redirect is not followed (the
 * request is not sent elsewhere) and is an error. */
static void test_not_encapsulated(void)
{
    static const struct {
        int post;
        veil_client_status st;
    } cases[] = {
        {POST_NOT_RES, VEIL_CLIENT_E_SECURITY},
        {POST_SHORT, VEIL_CLIENT_E_SECURITY},
        {POST_REDIRECT, -1 /* any error but OK */},
    };
    si.not_after = (long long)time(NULL) + 3600;
    si.bad_signature = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cJSON *resp = NULL;
        veil_client_error err;
        atomic_store(&si.posts, 0);
        veil_client_status st = stand_in_chat(cases[i].post, &resp, &err);
        if ((int)cases[i].st >= 0)
            CU_ASSERT_EQUAL(st, cases[i].st)
        else
            CU_ASSERT_NOT_EQUAL(st, VEIL_CLIENT_OK);
        CU_ASSERT_PTR_NULL(resp);
        if (cases[i].st == VEIL_CLIENT_E_SECURITY)
            CU_ASSERT(strstr(err.detail, VEIL_CLIENT_SECURITY_MESSAGE) != NULL);
        CU_ASSERT_EQUAL(atomic_load(&si.posts), 1);
        veil_chat_response_free(resp);
    }
    si.post = POST_UNIFORM;
}

/* A maximum answer, signed right, but without the TPM quote the tier asks
 * for (a v2 client that took it would be downgraded to high unnoticed):
 * refused, as v1 refuses it; the same answer on high is taken. */
static void test_maximum_without_quote(void)
{
    static const char *const tiers[] = {"maximum", "high"};
    char url[64];
    si_ready(url, sizeof url, POST_SIGNED);
    for (size_t i = 0; i < 2; i++) {
        veil_client *c = client_for(url, VEIL_CLIENT_PROTOCOL_V2);
        veil_request_opts opts = {.security_tier = tiers[i]};
        cJSON *req = chat_request(), *resp = NULL;
        veil_client_error err;
        veil_client_status st =
            veil_chat_create(c, req, &opts, &resp, NULL, &err);
        if (i == 0) {
            CU_ASSERT_EQUAL(st, VEIL_CLIENT_E_SECURITY);
            CU_ASSERT_PTR_NULL(resp);
            CU_ASSERT(strstr(err.detail, "carries no TPM attestation") != NULL);
        } else {
            CU_ASSERT_EQUAL(st, VEIL_CLIENT_OK);
            CU_ASSERT_STRING_EQUAL(veil_chat_content(resp), "stand-in");
        }
        veil_chat_response_free(resp);
        veil_chat_response_free(req);
        veil_client_free(c);
    }
    si.post = POST_UNIFORM;
}

/* A 503 to the key fetch is retried as a request is (explicit v2; under
 * auto it is not taken for "no v2" either). */
static void test_keys_503_retried(void)
{
    static const veil_client_protocol protos[] = {VEIL_CLIENT_PROTOCOL_V2,
                                                  VEIL_CLIENT_PROTOCOL_AUTO};
    char url[64];
    si_ready(url, sizeof url, POST_SIGNED);
    for (size_t i = 0; i < 2; i++) {
        veil_chat_stats stats;
        veil_client_error err;
        int ok, seen = 0;
        veil_client *c = client_counting(url, protos[i], count_503, &seen);
        atomic_store(&si.gets_503, 1);
        veil_client_status st = chat(c, &stats, &err, &ok);
        if (protos[i] == VEIL_CLIENT_PROTOCOL_V2) {
            CU_ASSERT_EQUAL(st, VEIL_CLIENT_OK);
            CU_ASSERT_EQUAL(seen, 1);
            CU_ASSERT_EQUAL(stats.protocol, 2);
        } else {
            /* auto: the 503 is not remembered as "no v2"; v1 is tried
             * (the stand-in has none: 404), and the next call finds v2 */
            CU_ASSERT_EQUAL(st, VEIL_CLIENT_E_API);
            CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_OK);
            CU_ASSERT_EQUAL(stats.protocol, 2);
        }
        veil_client_free(c);
    }
    si.post = POST_UNIFORM;
}

/* RFC 9540 4: a gateway may answer the GET of its key configurations
 * with a redirect.  The client follows it (a relative and an absolute
 * Location; at most 4 hops, never from https to http), still asking for
 * application/ohttp-keys and without the URL's user information, and
 * then posts to the well-known resource, never the redirected URI (which
 * the same section forbids telling the relay: it could single the client
 * out).  A redirect to a path that redirects again for ever is the error
 * of its status after the fifth GET, and nothing is posted. */
static void test_keys_redirect(void)
{
    char url[96], abs[128];
    const char *const moved[] = {"/prefix/.well-known/ohttp-gateway",
                                        abs};
    snprintf(abs, sizeof abs,
             "http://127.0.0.1:%u/prefix/.well-known/ohttp-gateway",
             si.http.port);
    snprintf(url, sizeof url, "http://user:s3cret@127.0.0.1:%u", si.http.port);
    si.not_after = (long long)time(NULL) + 3600;
    si.bad_signature = 0;
    for (size_t i = 0; i < 3; i++) {
        cJSON *req = chat_request(), *resp = NULL;
        veil_client_error err;
        si.post = POST_SIGNED;
        si.keys_moved = i < 2 ? moved[i] : "/.well-known/ohttp-gateway";
        si.post_url[0] = si.get_accept[0] = '\0';
        atomic_store(&si.gets, 0);
        atomic_store(&si.posts, 0);
        atomic_store(&si.authorized, 0);
        veil_client *c = client_for(url, VEIL_CLIENT_PROTOCOL_V2);
        veil_client_status st =
            veil_chat_create(c, req, NULL, &resp, NULL, &err);
        if (i < 2) {
            CU_ASSERT_EQUAL(st, VEIL_CLIENT_OK);
            CU_ASSERT_EQUAL(atomic_load(&si.gets), 2);
            CU_ASSERT_STRING_EQUAL(si.get_accept, VEIL_OHTTP_MEDIA_KEYS);
            CU_ASSERT_STRING_EQUAL(si.post_url, "/.well-known/ohttp-gateway");
            CU_ASSERT_EQUAL(atomic_load(&si.authorized), 0);
        } else {
            CU_ASSERT_NOT_EQUAL(st, VEIL_CLIENT_OK);
            CU_ASSERT_EQUAL(err.http_status, 307);
            CU_ASSERT_EQUAL(atomic_load(&si.gets), 5);
            CU_ASSERT_EQUAL(atomic_load(&si.posts), 0);
        }
        if (st != VEIL_CLIENT_OK && i < 2)
            fprintf(stderr, "redirect to %s: %s\n", si.keys_moved, err.detail);
        veil_chat_response_free(resp);
        veil_chat_response_free(req);
        veil_client_free(c);
    }
    si.keys_moved = NULL;
    si.post = POST_UNIFORM;
}

/* The key configurations are kept while they are fresh (RFC 9111 4.2):
 * for max-age less the Age a cache on the way says they have spent there
 * (4.2.3), and never past the signed not_after.  Two chats from one client
 * fetch them once when fresh for an hour, and twice when they come from a
 * cache with max-age=600 and Age: 600 (stale on arrival), or max-age=0.
 * Cache-Control is a list (RFC 9110 5.3): two lines of it, as a proxy that
 * adds its own gives, are one list, not a doubled signature header. */
static void test_keys_freshness(void)
{
    static const struct {
        const char *cache, *cache2, *age;
        int gets;
    } cases[] = {{"max-age=3600", NULL, NULL, 1},
                 {"max-age=600", NULL, "600", 2},
                 {"public, max-age=600", NULL, "900", 2},
                 {"max-age=600", NULL, "10", 1},
                 /* RFC 9111 5.1: an Age too large to represent is a very
                  * large one, not none */
                 {"max-age=600", NULL, "99999999999999999999", 2},
                 /* too long to keep (30 digits): the same */
                 {"max-age=600", NULL, "999999999999999999999999999999", 2},
                 {"max-age=0", NULL, NULL, 2},
                 {"max-age=3600", "no-transform", NULL, 1},
                 {"public", "max-age=0", NULL, 2}};
    char url[64];
    si_ready(url, sizeof url, POST_SIGNED);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        veil_chat_stats stats;
        veil_client_error err;
        int ok;
        si.keys_cache = cases[i].cache;
        si.keys_cache2 = cases[i].cache2;
        si.keys_age = cases[i].age;
        atomic_store(&si.gets, 0);
        veil_client *c = client_for(url, VEIL_CLIENT_PROTOCOL_V2);
        CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_OK);
        CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_OK);
        CU_ASSERT_EQUAL(atomic_load(&si.gets), cases[i].gets);
        if (atomic_load(&si.gets) != cases[i].gets)
            fprintf(stderr, "Cache-Control %s, Age %s: %d GETs\n",
                    cases[i].cache, cases[i].age ? cases[i].age : "-",
                    atomic_load(&si.gets));
        veil_client_free(c);
    }
    si.keys_cache = si.keys_cache2 = si.keys_age = NULL;
    si.post = POST_UNIFORM;
}

static void count_any_retry(void *ctx, unsigned attempt, int http_status,
                            unsigned delay_ms)
{
    (void)attempt;
    (void)http_status;
    (void)delay_ms;
    ++*(int *)ctx;
}

/* A gateway that cannot be reached (nothing listens on the port): the
 * GET that comes first is retried as a request is, for auto's choice of
 * protocol and for v1's server key alike (a GET carries no request),
 * before the ConnectionError. */
static void test_key_get_retried_refused(void)
{
    static const veil_client_protocol protos[] = {VEIL_CLIENT_PROTOCOL_AUTO,
                                                  VEIL_CLIENT_PROTOCOL_V1};
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    char url[64];
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CU_ASSERT_FATAL(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
                    getsockname(fd, (struct sockaddr *)&a, &alen) == 0);
    close(fd); /* the port is now closed: connections are refused */
    snprintf(url, sizeof url, "http://127.0.0.1:%u", ntohs(a.sin_port));
    for (size_t i = 0; i < 2; i++) {
        veil_chat_stats stats;
        veil_client_error err;
        int ok, seen = 0; /* the default max_retries: 2 */
        veil_client *c =
            client_counting(url, protos[i], count_any_retry, &seen);
        CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_E_CONNECTION);
        CU_ASSERT_EQUAL(seen, 2);
        if (seen != 2)
            fprintf(stderr, "protocol %d: %d retries\n", (int)protos[i], seen);
        veil_client_free(c);
    }
}

/* An inner 5xx over v2: the gateway opened the request and may have
 * passed it to the backend, so only the statuses that say it was not
 * processed are retried (RFC 9458 6.5): 429 and 503 are, 500, 502 and
 * 504 are not (one POST, the error of that status). */
static void test_inner_5xx_retries(void)
{
    static const struct {
        int status, posts;
    } cases[] = {{500, 1}, {502, 1}, {504, 1}, {503, 3}, {429, 3}};
    char url[64];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        veil_chat_stats stats;
        veil_client_error err;
        int ok;
        si_ready(url, sizeof url, POST_SIGNED);
        si.inner_status = cases[i].status;
        veil_client *c = client_for(url, VEIL_CLIENT_PROTOCOL_V2);
        CU_ASSERT_NOT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_OK);
        CU_ASSERT_EQUAL(err.http_status, cases[i].status);
        CU_ASSERT_EQUAL(atomic_load(&si.posts), cases[i].posts);
        if (atomic_load(&si.posts) != cases[i].posts)
            fprintf(stderr, "inner %d: %d POSTs\n", cases[i].status,
                    atomic_load(&si.posts));
        veil_client_free(c);
    }
    si.inner_status = 0;
    si.post = POST_UNIFORM;
}

/* A POST that reached the gateway and got no answer (the connection
 * closed) is not sent again, sealed afresh or not: RFC 9458 6.5, a client
 * MUST NOT retry a failed request without a positive signal that it was
 * not processed, and a connection failure is no such signal.  The user
 * gets the connection error at once; the key GET before it is still
 * retried (test_keys_503_retried). */
static void test_no_retry_after_drop(void)
{
    char url[64];
    veil_chat_stats stats;
    veil_client_error err;
    int ok;
    si_ready(url, sizeof url, POST_DROP);
    veil_client *c = client_for(url, VEIL_CLIENT_PROTOCOL_V2);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_E_CONNECTION);
    CU_ASSERT_EQUAL(atomic_load(&si.posts), 1);
    CU_ASSERT_EQUAL(stats.attempts, 1);
    veil_client_free(c);
    si.post = POST_UNIFORM;
}

/* ---- a relay that sends interim answers (mock) ---------------------------
 *
 * Between the client and a real veild: each request read whole, passed on
 * on a connection of its own (Connection: close) and veild's answer sent
 * back after two interim ones, an unsolicited 100 Continue and a 103 Early
 * Hints carrying fields the final answer must not be mixed with (RFC 9110
 * 15.2: a client must be able to parse and ignore them).  libmicrohttpd
 * sends no 1xx of its own choosing, hence this raw one. */

#define INTERIM                                                                \
    "HTTP/1.1 100 Continue\r\n\r\n"                                            \
    "HTTP/1.1 103 Early Hints\r\nLink: </hint>; rel=preload\r\n"              \
    "Content-Type: text/plain\r\nRetry-After: 3600\r\n"                       \
    "X-Veil-Keys-Expires: 1\r\n\r\n"

typedef struct interim_relay {
    int fd;
    unsigned short port, upstream;
    pthread_t th;
    atomic_int gets, posts; /* answered after the interim ones */
} interim_relay;

static int io_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* One request from c, its answer from upstream (malloc'd into *out). */
static int ir_pass(interim_relay *ir, int c, char **out, size_t *out_len,
                   int *is_post)
{
    static char req[1 << 20];
    size_t len = 0, want = 0;
    char *end = NULL;
    while (end == NULL || len < want) {
        ssize_t n = read(c, req + len, sizeof req - 1 - len);
        if (n <= 0)
            return -1;
        len += (size_t)n;
        req[len] = '\0';
        if (end == NULL && (end = strstr(req, "\r\n\r\n")) != NULL) {
            const char *cl = strcasestr(req, "\r\nContent-Length:");
            want = (size_t)(end + 4 - req);
            if (cl && cl < end)
                want += strtoul(cl + 17, NULL, 10);
        }
    }
    *is_post = strncmp(req, "POST ", 5) == 0;
    int u = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons(ir->upstream),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    const char *line_end = strstr(req, "\r\n") + 2;
    if (u < 0 || connect(u, (struct sockaddr *)&a, sizeof a) != 0 ||
        io_all(u, req, (size_t)(line_end - req)) != 0 ||
        io_all(u, "Connection: close\r\n", 19) != 0 ||
        io_all(u, line_end, len - (size_t)(line_end - req)) != 0) {
        if (u >= 0)
            close(u);
        return -1;
    }
    size_t cap = 1 << 16;
    *out = malloc(cap);
    *out_len = 0;
    for (ssize_t n; *out && (n = read(u, *out + *out_len, cap - *out_len)) > 0;)
        if ((*out_len += (size_t)n) == cap)
            *out = realloc(*out, cap *= 2);
    close(u);
    return *out && *out_len > 0 ? 0 : -1;
}

static void *ir_run(void *arg)
{
    interim_relay *ir = arg;
    for (int c; (c = accept(ir->fd, NULL, NULL)) >= 0; close(c)) {
        char *answer = NULL;
        size_t n = 0;
        int is_post = 0;
        if (ir_pass(ir, c, &answer, &n, &is_post) == 0 &&
            io_all(c, INTERIM, sizeof INTERIM - 1) == 0 &&
            io_all(c, answer, n) == 0)
            atomic_fetch_add(is_post ? &ir->posts : &ir->gets, 1);
        free(answer);
    }
    return NULL;
}

static int ir_start(interim_relay *ir, unsigned short upstream)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    ir->upstream = upstream;
    if ((ir->fd = socket(AF_INET, SOCK_STREAM, 0)) < 0 ||
        bind(ir->fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(ir->fd, 8) != 0 ||
        getsockname(ir->fd, (struct sockaddr *)&a, &al) != 0)
        return -1;
    ir->port = ntohs(a.sin_port);
    return pthread_create(&ir->th, NULL, ir_run, ir);
}

static void ir_stop(interim_relay *ir)
{
    shutdown(ir->fd, SHUT_RDWR); /* accept() returns */
    pthread_join(ir->th, NULL);
    close(ir->fd);
}

/* A 100 and a 103 before the final answer, on the GETs and on the outer
 * POST (RFC 9458 5.1 keeps 1xx out of the encapsulation, not off the
 * outer exchange; a relay or a gateway may send them): a chat over v2
 * through them to a real veild succeeds, and the 1xx's fields (a
 * Content-Type, a Retry-After, a signature header) are not read as the
 * final answer's. */
static void test_interim_answers(void)
{
    interim_relay ir = {.fd = -1};
    char url[64];
    veil_chat_stats stats;
    veil_client_error err;
    int ok = 0;
    CU_ASSERT_FATAL(ir_start(&ir, gw_sw.port) == 0);
    snprintf(url, sizeof url, "http://127.0.0.1:%u", ir.port);
    veil_client *c = client_for(url, VEIL_CLIENT_PROTOCOL_V2);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_OK);
    CU_ASSERT(ok);
    CU_ASSERT_EQUAL(stats.protocol, 2);
    CU_ASSERT_EQUAL(stats.attempts, 1);
    veil_client_free(c);
    ir_stop(&ir);
    CU_ASSERT(atomic_load(&ir.gets) >= 2); /* signing key, keys */
    CU_ASSERT_EQUAL(atomic_load(&ir.posts), 1);
}

/* ---- through an Oblivious HTTP relay ----------------------------------------
 *
 * A relay stand-in (RFC 9458 2: an Oblivious Relay Resource) on a port of
 * its own at an arbitrary path, /relay/gw1: each POST body passed to the
 * real veild's /.well-known/ohttp-gateway (libcurl), its answer returned
 * with the same status and Content-Type.  Anything else is a 404. */

typedef struct relay_in {
    stub_http http;
    unsigned short upstream;
    atomic_int posts, others, authorized;
    char extra[256]; /* the last POST's fields beyond Host, Content-* */
    char path[128];  /* the last POST's path */
} relay_in;

static relay_in rl;

typedef struct rl_buf {
    char *p;
    size_t len;
} rl_buf;

static size_t rl_write(char *p, size_t size, size_t n, void *ctx)
{
    rl_buf *b = ctx;
    char *q = realloc(b->p, b->len + size * n + 1);
    if (q == NULL)
        return 0;
    memcpy(q + b->len, p, size * n);
    b->p = q;
    b->len += size * n;
    return size * n;
}

static enum MHD_Result rl_handle(void *ctx, struct MHD_Connection *conn,
                                 const char *url, const char *method,
                                 stub_body *body)
{
    relay_in *r = ctx;
    char to[128];
    rl_buf got = {0};
    long status = 0;
    char *ct = NULL, ct_copy[128] = "";
    enum MHD_Result ret = MHD_NO;
    if (MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization"))
        atomic_fetch_add(&r->authorized, 1);
    if (strcmp(method, "POST") != 0 || strcmp(url, "/relay/gw1") != 0) {
        atomic_fetch_add(&r->others, 1);
        return stub_send(conn, 404, "{\"detail\":\"no\"}", 15,
                         "application/json", NULL);
    }
    atomic_fetch_add(&r->posts, 1);
    snprintf(r->path, sizeof r->path, "%s", url);
    r->extra[0] = '\0';
    MHD_get_connection_values(conn, MHD_HEADER_KIND, si_extra, r->extra);
    snprintf(to, sizeof to, "http://127.0.0.1:%u/.well-known/ohttp-gateway",
             r->upstream);
    CURL *h = curl_easy_init();
    struct curl_slist *lines =
        curl_slist_append(NULL, "Content-Type: " VEIL_OHTTP_MEDIA_REQ);
    if (h && lines) {
        curl_easy_setopt(h, CURLOPT_URL, to);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, lines);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body->data ? body->data : "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)body->len);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, rl_write);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &got);
        if (curl_easy_perform(h) == CURLE_OK &&
            curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status) ==
                CURLE_OK &&
            curl_easy_getinfo(h, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK) {
            snprintf(ct_copy, sizeof ct_copy, "%s", ct ? ct : "");
            ret = stub_send(conn, (unsigned)status, got.p ? got.p : "",
                            got.len, ct_copy[0] ? ct_copy : NULL, NULL);
        }
    }
    curl_slist_free_all(lines);
    curl_easy_cleanup(h);
    free(got.p);
    return ret;
}

/* The relay stand-in ready (counts cleared), in front of upstream; its
 * resource's URL (with user information, which must not reach it). */
static void rl_ready(unsigned short upstream, char *url, size_t size)
{
    rl.upstream = upstream;
    atomic_store(&rl.posts, 0);
    atomic_store(&rl.others, 0);
    atomic_store(&rl.authorized, 0);
    rl.path[0] = '\0';
    snprintf(url, size, "http://someone:secret@127.0.0.1:%u/relay/gw1",
             rl.http.port);
}

static veil_client *client_relay(const char *url, veil_client_protocol proto,
                                 const char *relay)
{
    veil_client_config cfg;
    tu_client_config(&cfg, url);
    cfg.protocol = proto;
    cfg.retry_base_ms = 20;
    cfg.log = dbg_log;
    cfg.log_level = VEIL_LOG_DEBUG;
    cfg.relay_url = relay;
    return tu_client_new(&cfg);
}

/* A chat over v2 (and under auto) through the relay: the key configuration
 * and the signing key from the gateway, the one POST of each chat to the
 * relay's resource as given, without the relay URL's user information
 * and with no field but Host, Content-Type and Content-Length. */
static void test_relay_chat(void)
{
    char relay[128];
    veil_chat_stats stats;
    veil_client_error err;
    static const veil_client_protocol protos[] = {VEIL_CLIENT_PROTOCOL_V2,
                                                  VEIL_CLIENT_PROTOCOL_AUTO};
    for (size_t i = 0; i < 2; i++) {
        int ok = 0;
        rl_ready(gw_sw.port, relay, sizeof relay);
        veil_client *c = client_relay(url_sw, protos[i], relay);
        CU_ASSERT_FATAL(c != NULL);
        CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_OK);
        CU_ASSERT(ok);
        CU_ASSERT_EQUAL(stats.protocol, 2);
        CU_ASSERT_EQUAL(stats.attempts, 1); /* the one POST ... */
        CU_ASSERT_EQUAL(atomic_load(&rl.posts), 1); /* ... went to the relay */
        CU_ASSERT_EQUAL(atomic_load(&rl.others), 0); /* no GET there */
        CU_ASSERT_STRING_EQUAL(rl.path, "/relay/gw1");
        CU_ASSERT_STRING_EQUAL(rl.extra, "");
        CU_ASSERT_EQUAL(atomic_load(&rl.authorized), 0);
        veil_client_free(c);
    }
}

/* A gateway that does not offer v2 (here the relay stand-in's own root,
 * which answers 404): under auto with a relay an error, never a v1
 * request to the gateway around the relay; nothing posted. */
static void test_relay_no_v2(void)
{
    char relay[128], base[64];
    veil_chat_stats stats;
    veil_client_error err;
    int ok;
    rl_ready(gw_sw.port, relay, sizeof relay);
    snprintf(base, sizeof base, "http://127.0.0.1:%u", rl.http.port);
    veil_client *c = client_relay(base, VEIL_CLIENT_PROTOCOL_AUTO, relay);
    CU_ASSERT_FATAL(c != NULL);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_E_API);
    CU_ASSERT_EQUAL(err.http_status, 404);
    CU_ASSERT(strstr(err.detail, "does not speak protocol v2") != NULL);
    CU_ASSERT_EQUAL(stats.protocol, 0);
    CU_ASSERT_EQUAL(atomic_load(&rl.posts), 0);
    CU_ASSERT_EQUAL(atomic_load(&rl.others), 1); /* the key GET, only */
    veil_client_free(c);
}

/* Settings refused before anything is sent: a relay with protocol v1, a
 * relay URL of another scheme, plain http without allow_http, and a
 * per-request base URL other than the client's. */
static void test_relay_refused(void)
{
    char relay[128];
    veil_client_config cfg;
    veil_client *c = NULL;
    veil_client_error err;
    veil_chat_stats stats;
    int ok;
    rl_ready(gw_sw.port, relay, sizeof relay);
    tu_client_config(&cfg, url_sw);
    cfg.relay_url = relay;
    cfg.protocol = VEIL_CLIENT_PROTOCOL_V1;
    CU_ASSERT_EQUAL(veil_client_new(&cfg, &c, &err), VEIL_CLIENT_E_CONFIG);
    CU_ASSERT(c == NULL);
    CU_ASSERT(strstr(err.detail, "protocol v2 only") != NULL);

    cfg.protocol = VEIL_CLIENT_PROTOCOL_V2;
    cfg.relay_url = "ftp://127.0.0.1/relay/gw1";
    CU_ASSERT_EQUAL(veil_client_new(&cfg, &c, &err), VEIL_CLIENT_E_CONFIG);
    CU_ASSERT(c == NULL);
    CU_ASSERT(strstr(err.detail, "relay URL must start with https://") !=
              NULL);

    cfg.base_url = "https://127.0.0.1:1";
    cfg.allow_http = 0;
    cfg.relay_url = relay; /* http */
    CU_ASSERT_EQUAL(veil_client_new(&cfg, &c, &err), VEIL_CLIENT_E_CONFIG);
    CU_ASSERT(c == NULL);
    CU_ASSERT(strstr(err.detail, "relay URL") != NULL);
    CU_ASSERT(strstr(err.detail, "secret") == NULL); /* redacted */

    c = client_relay(url_sw, VEIL_CLIENT_PROTOCOL_V2, relay);
    CU_ASSERT_FATAL(c != NULL);
    {
        veil_request_opts o = {.base_url = url_tok};
        cJSON *req = chat_request(), *resp = NULL;
        CU_ASSERT_EQUAL(veil_chat_create(c, req, &o, &resp, &stats, &err),
                        VEIL_CLIENT_E_CONFIG);
        CU_ASSERT(resp == NULL);
        veil_chat_response_free(req);
    }
    /* the client's own base URL goes through */
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_OK);
    veil_client_free(c);
    CU_ASSERT_EQUAL(atomic_load(&rl.posts), 1);
    CU_ASSERT_EQUAL(atomic_load(&rl.others), 0);
}

/* A relay or base URL too long for the client's URL buffer (2047 bytes
 * with the path): refused with nothing sent, never cut short and used (a
 * cut relay URL names another resource).  A base URL that long was
 * already refused before any request; it stays so. */
static void test_url_too_long(void)
{
    char relay[2300], base[2300];
    veil_client_error err;
    veil_chat_stats stats;
    int ok = 0, n;
    rl_ready(gw_sw.port, relay, sizeof relay);
    n = snprintf(relay, sizeof relay, "http://127.0.0.1:%u/relay/gw1?pad=",
                 rl.http.port);
    memset(relay + n, 'a', 2100);
    relay[n + 2100] = '\0';
    veil_client *c = client_relay(url_sw, VEIL_CLIENT_PROTOCOL_V2, relay);
    CU_ASSERT_FATAL(c != NULL);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_E_CONFIG);
    CU_ASSERT(strstr(err.detail, "too long") != NULL);
    CU_ASSERT_EQUAL(atomic_load(&rl.posts), 0);
    veil_client_free(c);

    n = snprintf(base, sizeof base, "http://127.0.0.1:%u/", rl.http.port);
    memset(base + n, 'b', 2100);
    base[n + 2100] = '\0';
    c = client_relay(base, VEIL_CLIENT_PROTOCOL_V2, NULL);
    CU_ASSERT_FATAL(c != NULL);
    CU_ASSERT_EQUAL(chat(c, &stats, &err, &ok), VEIL_CLIENT_E_CONFIG);
    CU_ASSERT(strstr(err.detail, "too long") != NULL);
    CU_ASSERT_EQUAL(atomic_load(&rl.others), 0); /* no GET of a cut URL */
    veil_client_free(c);
}

/* veil chat and veil models --relay, and $VEIL_RELAY; --protocol v1 with
 * a relay is exit 21 with nothing posted. */
static void test_relay_cli(void)
{
    char relay[128];
    char *out = NULL, *e = NULL;
    rl_ready(gw_sw.port, relay, sizeof relay);
    const char *a1[] = {"chat",    "--url", url_sw, "--allow-http", "--relay",
                        relay,     "-m",    "echo", PROMPT,         NULL};
    const char *a2[] = {"models", "--url", url_sw, "--allow-http",
                        "--relay", relay,  NULL};
    const char *a3[] = {"chat",    "--url", url_sw, "--allow-http",
                        "--relay", relay,   "--protocol", "v1",
                        "-m",      "echo",  PROMPT,  NULL};
    const char *a4[] = {"chat", "--url", url_sw, "--allow-http", "-m",
                        "echo", PROMPT,  NULL};
    CU_ASSERT_EQUAL(run_veil(a1, &out, &e), 0);
    CU_ASSERT(out && !strcmp(out, PROMPT "\n"));
    free(out);
    free(e);
    CU_ASSERT_EQUAL(atomic_load(&rl.posts), 1);
    CU_ASSERT_EQUAL(run_veil(a2, &out, &e), 0);
    CU_ASSERT(out && strstr(out, "echo") != NULL);
    free(out);
    free(e);
    CU_ASSERT_EQUAL(atomic_load(&rl.posts), 2);
    CU_ASSERT_EQUAL(run_veil(a3, &out, &e), 21);
    CU_ASSERT(e && strstr(e, "protocol v2 only") != NULL);
    free(out);
    free(e);
    CU_ASSERT_EQUAL(atomic_load(&rl.posts), 2);
    setenv("VEIL_RELAY", relay, 1);
    CU_ASSERT_EQUAL(run_veil(a4, &out, &e), 0);
    unsetenv("VEIL_RELAY");
    CU_ASSERT(out && !strcmp(out, PROMPT "\n"));
    free(out);
    free(e);
    CU_ASSERT_EQUAL(atomic_load(&rl.posts), 3);
    CU_ASSERT_EQUAL(atomic_load(&rl.others), 0);
    CU_ASSERT_EQUAL(atomic_load(&rl.authorized), 0);
}

/* ---- setup --------------------------------------------------------------- */

static int start_gateways(void)
{
    char state[2][700], dir[512];
    veil_keygen_params kp = {.type = VEIL_KEY_RSA, .bits = 2048};
    veil_key *k = NULL;
    const char *base0[] = {"--state-dir", state[0], "--rate", "1000",
                           "--burst",     "1000",   NULL};
    const char *base1[] = {"--state-dir", state[1], "--rate", "1000",
                           "--burst",     "1000",   NULL};
    const char *tok[] = {"--server-key",
                         server_ref,
                         "--pkcs11-module",
                         module,
                         "--pin-source",
                         pin_spec,
                         "--signing-key",
                         signer_ref,
                         "--model",
                         "echo=echo",
                         NULL};
    const char *sw[] = {"--server-key",
                        sw_ref,
                        "--pkcs11-module",
                        module,
                        "--pin-source",
                        pin_spec,
                        "--signing-key",
                        signer_ref,
                        "--model",
                        "echo=echo",
                        NULL};

    snprintf(state[0], sizeof state[0], "%s/cv2-tok.state",
             tu_env("VEIL_TEST_DIR"));
    snprintf(state[1], sizeof state[1], "%s/cv2-sw.state",
             tu_env("VEIL_TEST_DIR"));
    if (tu_scratch_dir("cv2-keydir", dir, sizeof dir) != 0 ||
        veil_key_generate(sw_e, "software", &kp, &k) != VEIL_OK ||
        veil_key_save(sw_e, k, dir, NULL) != VEIL_OK)
        return -1;
    veil_key_free(k);
    snprintf(sw_ref, sizeof sw_ref, "dir:%s", dir);
    if (gt_veild_start(&gw_tok, "cv2-tok", base0, tok, TU_LOG_FRESH) != 0 ||
        gt_veild_start(&gw_sw, "cv2-sw", base1, sw, TU_LOG_FRESH) != 0)
        return -1;
    url_of(&gw_tok, url_tok, sizeof url_tok);
    url_of(&gw_sw, url_sw, sizeof url_sw);
    stub_config rc = {.handle = rl_handle,
                      .ctx = &rl,
                      .max_body = 1 << 20,
                      .who = "relay stand-in"};
    if (stub_start(&rl.http, &rc) != 0)
        return -1;
    return stand_in_start();
}

static int setup(void)
{
    veil_keygen_params kp = {
        .type = VEIL_KEY_RSA, .bits = 2048, .label = "cv2-server"};
    veil_keygen_params ep = {.type = VEIL_KEY_EC_P256, .label = "cv2-signer"};
    veil_key_info info;

    module = tu_env("VEIL_TEST_SOFTHSM_MODULE");
    pin_file = tu_env("VEIL_TEST_PIN_FILE");
    snprintf(pin_spec, sizeof pin_spec, "file:%s", pin_file);
    if (tu_softhsm_uri(token_uri, sizeof token_uri) != 0)
        return -1;
    snprintf(server_ref, sizeof server_ref, "%s;object=cv2-server", token_uri);
    snprintf(signer_ref, sizeof signer_ref, "%s;object=cv2-signer", token_uri);
    if (veil_engine_new(NULL, &sw_e) != VEIL_OK)
        return -1;
    if (tu_softhsm_engine(&tok_e) != VEIL_OK ||
        veil_key_generate(tok_e, token_uri, &kp, &srv_key) != VEIL_OK ||
        veil_key_generate(tok_e, token_uri, &ep, &sign_key) != VEIL_OK ||
        veil_key_get_info(sign_key, &info) != VEIL_OK) {
        fprintf(stderr, "setup: %s\n", veil_last_error()->message);
        return -1;
    }
    snprintf(signer_fp, sizeof signer_fp, "%s", info.fingerprint);
    return start_gateways();
}

static void teardown(void)
{
    stub_stop(&si.http);
    stub_stop(&rl.http);
    veil_key_free(si.signer);
    veil_hpke_key_free(si.kem);
    free(si.signer_pem);
    free(si.keys);
    tu_proc_stop_all();
    if (sign_key)
        veil_key_delete(tok_e, sign_key);
    if (srv_key)
        veil_key_delete(tok_e, srv_key);
    veil_engine_free(tok_e);
    veil_engine_free(sw_e);
}

static void test_exit(void)
{
    gt_stop_ok(&gw_tok);
    gt_stop_ok(&gw_sw);
}

int main(void)
{
    static const tu_test cases[] = {
        {"chat over v2, KEM key in SoftHSM2", test_chat_v2_token},
        {"chat over v2, KEM key in software", test_chat_v2_software},
        {"auto picks v2", test_auto_picks_v2},
        {"one client, four threads", test_threads},
        {"v1 still works", test_v1_still},
        {"v2 off: auto falls back to v1", test_v2_off},
        {"unsigned keys: auto v1, v2 refused", test_unsigned_keys},
        {"models over v2 and v1", test_models},
        {"embeddings need v2", test_embed_needs_v2},
        {"embeddings and completions over v2", test_embed},
        {"API key, 401 and 429 inside", test_api_key_inner},
        {"a wrong signing key pin", test_wrong_signing_pin},
        {"a server key pin is never skipped by v2",
         test_server_pin_not_skipped},
        {"uniform 400 after a restart: refetch, retry",
         test_refetch_after_restart},
        {"stand-in: an expired statement", test_expired_statement},
        {"stand-in: a bad signature", test_bad_signature},
        {"stand-in: the uniform 400 twice", test_uniform_twice},
        {"stand-in: the uniform 400, the same key: not sent again",
         test_uniform_same_key},
        {"stand-in: inner 500/502/504 not retried, 429/503 retried",
         test_inner_5xx_retries},
        {"unreachable gateway: the first GET retried (auto, v1)",
         test_key_get_retried_refused},
        {"stand-in: answer signatures", test_answer_signatures},
        {"stand-in: answers that are not encapsulated", test_not_encapsulated},
        {"stand-in: the inner authority", test_inner_authority},
        {"stand-in: the key GET's Accept", test_keys_get_accept},
        {"stand-in: maximum without a quote", test_maximum_without_quote},
        {"prompt and answer wiped from cJSON's heap (v2)", test_json_wiped_v2},
        {"stand-in: a 503 to the key fetch", test_keys_503_retried},
        {"interim 1xx answers before the final one", test_interim_answers},
        {"stand-in: no retry of a POST that got no answer",
         test_no_retry_after_drop},
        {"stand-in: the key configurations' freshness", test_keys_freshness},
        {"stand-in: the key GET redirected", test_keys_redirect},
        {"through a relay: chat over v2 and auto", test_relay_chat},
        {"through a relay: a gateway without v2", test_relay_no_v2},
        {"through a relay: settings refused", test_relay_refused},
        {"through a relay: veil --relay and VEIL_RELAY", test_relay_cli},
        {"a relay or base URL too long: refused, not cut",
         test_url_too_long},
        {"gateways exit cleanly", test_exit},
    };
    int rc;

    signal(SIGPIPE, SIG_IGN);
    unsetenv("VEIL_RELAY"); /* test_relay_cli sets it where it means to */
    if (setup() != 0) {
        teardown();
        return 1;
    }
    TU_ADD_SUITE("client v2", NULL, NULL, cases);
    rc = tu_run_tests();
    teardown();
    return rc;
}
