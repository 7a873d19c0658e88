/* The HTTP layer's socket-free entry point (svc_http_inject,
 * service/http.h), which the fuzzing harness fuzz/fuzz_http.c drives: a
 * request injected into veild's server (gateway/server.c, in this process,
 * listening on 127.0.0.1) gets the answer the same request gets over a
 * real socket from the same server: status, Content-Type and body, for
 * each kind of answer (svc_text, svc_json, svc_fail, svc_fail_retry's
 * refusals, svc_send and svc_send_prebuilt through protocol v2's key list
 * and its key-configuration problem). */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "gateway.h"
#include "gwtest.h"
#include "http.h"
#include "testutil.h"
#include "util.h"

#define API_KEY "veil-inject-api-key"

static struct {
    gw_config cfg;
    gw_deps d;
    gw_server *server;
    char dir[512], keys[600];
} T;

static int setup(void)
{
    char err[512], ref[4200], hex[65];
    uint8_t hash[32];
    FILE *f;

    /* the fuzzing-only server key of fuzz/data (RSA-2048) */
    snprintf(ref, sizeof ref, "dir:%s/fuzz/data/server-key",
             tu_env("VEIL_SRCDIR"));
    if (tu_scratch_dir("inject", T.dir, sizeof T.dir) != 0)
        return -1;
    snprintf(T.keys, sizeof T.keys, "%s/api-keys", T.dir);
    SHA256((const uint8_t *)API_KEY, strlen(API_KEY), hash);
    veil_hex(hash, 32, hex);
    if ((f = fopen(T.keys, "w")) == NULL)
        return -1;
    fprintf(f, "sha256:%s inject\n", hex);
    fclose(f);
    /* clang-format off */
    static const char *const settings[][2] = {
        {"listen", "127.0.0.1"},
        {"port", "0"},
        {"model", "echo=echo"},
        {"body_limit", "1K"},
        {"log_level", "error"},
    };
    /* clang-format on */
    gw_config_init(&T.cfg);
    for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++)
        if (gw_config_set(&T.cfg, settings[i][0], settings[i][1], err,
                          sizeof err) != 0)
            goto fail;
    if (gw_config_set(&T.cfg, "server_key", ref, err, sizeof err) != 0 ||
        gw_config_set(&T.cfg, "api_keys", T.keys, err, sizeof err) != 0 ||
        gw_config_check(&T.cfg, err, sizeof err) != 0)
        goto fail;
    T.d = (gw_deps){
        .cfg = &T.cfg,
        .auth = gw_auth_load(T.keys, err, sizeof err),
        .strikes = gw_strikes_new(60, 1024),
        .rate = gw_rate_new(1000, 1000, 64),
        .log_level = VEIL_LOG_ERROR,
    };
    veil_logger quiet = {.level = VEIL_LOG_ERROR};
    if (veil_engine_new(NULL, &T.d.engine) != VEIL_OK ||
        veil_key_open(T.d.engine, ref, &T.d.server_key) != VEIL_OK ||
        (T.d.kem = gw_kem_open(T.d.engine, ref, 0, 3600, 600, &quiet, err,
                               sizeof err)) == NULL ||
        veil_key_fingerprint(T.d.server_key, T.d.encryption_key_sha256) !=
            VEIL_OK ||
        T.d.auth == NULL || T.d.strikes == NULL || T.d.rate == NULL) {
        snprintf(err, sizeof err, "gateway parts: %s",
                 veil_last_error()->message);
        goto fail;
    }
    if ((T.server = gw_server_start(&T.d, err, sizeof err)) != NULL)
        return 0;
fail:
    fprintf(stderr, "setup: %s\n", err);
    return -1;
}

static int teardown(void)
{
    gw_server_stop(T.server, 0);
    gw_kem_free(T.d.kem);
    gw_auth_free(T.d.auth);
    gw_strikes_free(T.d.strikes);
    gw_rate_free(T.d.rate);
    veil_key_free(T.d.server_key);
    veil_engine_free(T.d.engine);
    gw_config_free(&T.cfg);
    unlink(T.keys);
    rmdir(T.dir);
    return 0;
}

/* One request, as both paths take it. */
typedef struct request {
    const char *method, *url;
    const char *headers[5]; /* name, value pairs, NULL-terminated */
    size_t body_len;        /* a body of this many 'x' */
    int status;             /* what it must get */
    const char *body_has;   /* in the answer's body */
} request;

/* Over a socket: the request line, the headers, Content-Length when there
 * is a body, Connection: close. */
static void over_socket(const request *q, const char *body, gt_answer *a)
{
    char head[1024];
    int n = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                     q->method, q->url);
    for (size_t i = 0; q->headers[i]; i += 2)
        n += snprintf(head + n, sizeof head - (size_t)n, "%s: %s\r\n",
                      q->headers[i], q->headers[i + 1]);
    if (q->body_len)
        n += snprintf(head + n, sizeof head - (size_t)n,
                      "Content-Length: %zu\r\n", q->body_len);
    n += snprintf(head + n, sizeof head - (size_t)n,
                  "Connection: close\r\n\r\n");
    int fd = tu_tcp_connect(NULL, gw_server_port(T.server), 0, 10);
    memset(a, 0, sizeof *a);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT(tu_send_all(fd, head, (size_t)n) == 0);
    /* a refusal may come before the body is sent: the server drains it */
    tu_send_all(fd, body, q->body_len);
    gt_read_answer(fd, a);
    close(fd);
}

static void test_same_answers(void)
{
    static const request reqs[] = {
        {"GET", "/pki/public_key", {NULL}, 0, 200, "BEGIN PUBLIC KEY"},
        {"GET", "/v1/models", {NULL}, 0, 200, "\"echo\""},
        {"GET", "/nowhere", {NULL}, 0, 404, "not found"},
        {"GET", "/.well-known/ohttp-gateway", {NULL}, 0, 200, ""},
        {"POST",
         "/.well-known/ohttp-gateway",
         {"Content-Type", "message/ohttp-req", NULL},
         40,
         400,
         "Oblivious HTTP key configuration not acceptable"},
        {"DELETE", "/v1/models", {NULL}, 0, 405, "method not allowed"},
        {"POST",
         "/v1/chat/secure_completion",
         {"Authorization", "Bearer " API_KEY, NULL},
         2000,
         413,
         "over the limit of 1024"},
        {"POST",
         "/v1/chat/secure_completion",
         {"Authorization", "Bearer wrong", NULL},
         10,
         401,
         "invalid API key"},
        {"POST",
         "/v1/chat/secure_completion",
         {NULL},
         10,
         401,
         "missing API key"},
        /* the query, percent-decoded on both paths (a good nonce, then
         * no TPM here), and a short one */
        {"GET",
         "/v1/attestation/report?nonce=%30%30112233445566778899aabbccddeeff",
         {"Authorization", "Bearer " API_KEY, NULL},
         0,
         503,
         "no TPM attestation available"},
        {"GET",
         "/v1/attestation/report?nonce=00",
         {"Authorization", "Bearer " API_KEY, NULL},
         0,
         400,
         "nonce must be"},
    };
    char body[4096];
    struct sockaddr_in client = {.sin_family = AF_INET};

    memset(body, 'x', sizeof body);
    client.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
        const request *q = &reqs[i];
        gt_answer a;
        svc_answer b;
        char type[256];
        svc_inject in = {.method = q->method,
                         .url = q->url,
                         .headers = q->headers,
                         .body = body,
                         .len = q->body_len,
                         .client = (const struct sockaddr *)&client};

        over_socket(q, body, &a);
        CU_ASSERT_FATAL(svc_http_inject(gw_server_http(T.server), &in, &b) ==
                        0);
        if (a.status != q->status || b.status != q->status || a.len != b.len ||
            memcmp(a.body, b.body, a.len) != 0)
            fprintf(stderr, "%s %s: socket %d %s, injected %d %s\n", q->method,
                    q->url, a.status, a.body ? a.body : "", b.status,
                    b.body ? b.body : "");
        CU_ASSERT(a.status == q->status);
        CU_ASSERT(b.status == q->status);
        CU_ASSERT_FATAL(a.body != NULL && b.body != NULL);
        CU_ASSERT(a.len == b.len && memcmp(a.body, b.body, a.len) == 0);
        CU_ASSERT(strstr(b.body, q->body_has) != NULL);
        gt_head_value(&a, "Content-Type", type, sizeof type);
        CU_ASSERT(type[0] != '\0');
        CU_ASSERT(strncmp(b.headers, "Content-Type: ", 14) == 0 &&
                  strncmp(b.headers + 14, type, strlen(type)) == 0);
        gt_answer_free(&a);
        svc_answer_free(&b);
    }
}

int main(void)
{
    static const tu_test tests[] = {
        {"injected requests get the socket's answers", test_same_answers},
    };

    signal(SIGPIPE, SIG_IGN);
    TU_ADD_SUITE("svc_http_inject", setup, teardown, tests);
    return tu_run_tests();
}
