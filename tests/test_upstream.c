/* The gateway's inference backend (gateway/upstream.c) against the stand-in
 * inference server tests/mock-upstream (started here as a child process):
 * answers, the mapping of every failure to the client's status and detail
 * text, "stream": true turned off, the backend's API key, the echo model,
 * health probes, connection reuse and threads.
 *
 * Needs $VEIL_BUILDDIR (where tests/mock-upstream is).  No tight upper
 * bounds on time: the machines this runs on are shared and slow.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "gateway.h"
#include "harness.h"
#include "testutil.h"

#define API_KEY "sk-mock-0123456789abcdef"

/* a tests/mock-upstream process and its base URL */
typedef struct mock_proc {
    tu_proc p;
    char base[64]; /* http://127.0.0.1:PORT/v1 */
} mock_proc;

static char scratch[4096];
static mock_proc plain, keyed; /* without and with --api-key-file */
static char key_file[4200], wrong_key_file[4200], missing_key_file[4200];
static char dead_base[64]; /* a port nobody listens on */

/* ---- helpers ------------------------------------------------------------ */

static int write_text(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");

    if (fp == NULL)
        return -1;
    fputs(text, fp);
    return fclose(fp);
}

/* Starts mock-upstream (with an API key file when key is not NULL); its
 * log goes to the scratch directory. */
static int mock_start(mock_proc *m, const char *name, const char *key)
{
    char port_file[4200], exe[4096];
    const char *argv[] = {exe, "--port-file", port_file, "--api-key-file",
                          key, NULL};

    snprintf(exe, sizeof exe, "%s/tests/mock-upstream",
             tu_env("VEIL_BUILDDIR"));
    snprintf(port_file, sizeof port_file, "%s/%s.port", scratch, name);
    if (!key)
        argv[3] = NULL;
    if (tu_proc_start(&m->p, scratch, name, argv, port_file, TU_LOG_FRESH) != 0)
        return -1;
    snprintf(m->base, sizeof m->base, "http://127.0.0.1:%u/v1", m->p.port);
    return 0;
}

static size_t on_body(char *data, size_t size, size_t n, void *ctx)
{
    cJSON **out = ctx;
    char buf[512];
    size_t len = size * n;

    if (len < sizeof buf) {
        memcpy(buf, data, len);
        buf[len] = '\0';
        *out = cJSON_Parse(buf);
    }
    return len;
}

/* The mock's counters (GET /mock/stats, on a connection of its own). */
static int mock_stats(const mock_proc *m, unsigned long *requests,
                      unsigned long *connections)
{
    char url[128];
    cJSON *j = NULL;
    CURL *h = curl_easy_init();
    int rc = -1;

    snprintf(url, sizeof url, "http://127.0.0.1:%u/mock/stats", m->p.port);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &j);
    if (curl_easy_perform(h) == CURLE_OK && j != NULL) {
        *requests = (unsigned long)cJSON_GetNumberValue(
            cJSON_GetObjectItem(j, "requests"));
        *connections = (unsigned long)cJSON_GetNumberValue(
            cJSON_GetObjectItem(j, "connections"));
        rc = 0;
    }
    cJSON_Delete(j);
    curl_easy_cleanup(h);
    return rc;
}

static gw_config make_cfg(unsigned timeout)
{
    gw_config c;
    const char *v;

    memset(&c, 0, sizeof c);
    c.upstream_timeout = timeout;
    c.connect_timeout = 5;
    v = getenv("VEIL_TEST_VERBOSE");
    c.log_level = v && strcmp(v, "1") == 0 ? "debug" : "error";
    return c;
}

static gw_model make_model(const char *id, const char *upstream,
                           const char *key)
{
    gw_model m;

    memset(&m, 0, sizeof m);
    m.id = (char *)id;
    m.upstream = (char *)upstream;
    m.upstream_key_file = (char *)key;
    m.tiers = GW_TIER_ALL;
    return m;
}

/* {"model": model, "messages": [{"role": "user", "content": content}]}
 * plus extra members (a JSON text without braces, or NULL).  malloc'd. */
static char *chat_request(const char *model, const char *content,
                          const char *extra)
{
    cJSON *j = cJSON_CreateObject(), *msgs, *msg;
    char *text, *out;
    size_t size;

    cJSON_AddStringToObject(j, "model", model);
    msgs = cJSON_AddArrayToObject(j, "messages");
    msg = cJSON_CreateObject();
    cJSON_AddStringToObject(msg, "role", "user");
    cJSON_AddStringToObject(msg, "content", content);
    cJSON_AddItemToArray(msgs, msg);
    text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (extra == NULL)
        return text;
    size = strlen(text) + strlen(extra) + 2;
    out = malloc(size);
    /* text ends in '}': put the extra members before it */
    snprintf(out, size, "%.*s,%s}", (int)strlen(text) - 1, text, extra);
    free(text);
    return out;
}

/* What a client would see of one gw_upstream_call: the HTTP status of
 * its outcome (gw_rc_status), and the answer (200) or the detail text. */
typedef struct result {
    int status;
    char *body; /* up.body on 200, else detail */
    size_t len;
    gw_upstream_result up;
    char detail[512];
} result;

static void run(const gw_config *cfg, const gw_model *m, const char *req,
                size_t len, const gw_request *rq, result *r)
{
    gw_rc rc = gw_upstream_call(cfg, m, GW_INFER_CHAT, req, len, rq, NULL, NULL,
                                &r->up, r->detail, sizeof r->detail);

    r->status = gw_rc_status(rc);
    r->body = rc == GW_OK ? r->up.body : r->detail;
    r->len = rc == GW_OK ? r->up.len : strlen(r->detail);
}

/* gw_upstream_call with a request for model name `model` at upstream. */
static void call(const gw_config *cfg, const gw_model *m, const char *model,
                 const char *content, const char *extra, result *r)
{
    char *req = chat_request(model, content, extra), why[320];
    gw_request rq;

    CU_ASSERT_EQUAL_FATAL(
        gw_request_scan(cfg, req, strlen(req), &rq, why, sizeof why), 0);
    run(cfg, m, req, strlen(req), &rq, r);
    free(req);
}

static void result_free(result *r)
{
    if (r->up.body) {
        explicit_bzero(r->up.body, r->up.len);
        free(r->up.body);
    }
    memset(r, 0, sizeof *r);
}

/* choices[0].message.content of a chat.completion text (malloc'd). */
static char *answer_content(const char *text)
{
    cJSON *j = cJSON_Parse(text);
    const cJSON *c = cJSON_GetObjectItem(
        cJSON_GetObjectItem(
            cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0),
            "message"),
        "content");
    char *out = cJSON_IsString(c) ? strdup(c->valuestring) : NULL;

    cJSON_Delete(j);
    return out;
}

/* Checks status and exact detail text. */
static void expect(const result *r, int status, const char *detail)
{
    CU_ASSERT_EQUAL(r->status, status);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r->body);
    CU_ASSERT_EQUAL(r->len, strlen(r->body));
    if (detail && strcmp(r->body, detail) != 0) {
        fprintf(stderr, "\n  want %d \"%s\"\n  got  %d \"%s\"\n", status,
                detail, r->status, r->body);
        CU_FAIL("detail text");
    }
}

/* One mapping case: a request for `model` (content "x") to the model row
 * id at base (with key_file), and the status and exact detail text the
 * client gets (detail NULL: the status only). */
typedef struct up_case {
    const char *id, *base, *key_file, *model;
    int status;
    const char *detail;
} up_case;

static void run_cases(const up_case *c, size_t n)
{
    gw_config cfg = make_cfg(30);

    for (size_t i = 0; i < n; i++) {
        gw_model m = make_model(c[i].id, c[i].base, c[i].key_file);
        result r;

        call(&cfg, &m, c[i].model, "x", NULL, &r);
        if (c[i].detail)
            expect(&r, c[i].status, c[i].detail);
        else
            CU_ASSERT_EQUAL(r.status, c[i].status);
        result_free(&r);
    }
}

#define RUN_CASES(cases) run_cases(cases, sizeof cases / sizeof cases[0])

/* ---- answers and mapping ------------------------------------------------ */

static void test_ok(void)
{
    gw_config cfg = make_cfg(30);
    gw_model m = make_model("mock-ok", plain.base, NULL);
    char slash[80];
    result r;
    char *content;

    call(&cfg, &m, "mock-ok", "hello \"there\"\n", NULL, &r);
    CU_ASSERT_EQUAL_FATAL(r.status, 200);
    content = answer_content(r.body);
    CU_ASSERT_PTR_NOT_NULL(content);
    if (content)
        CU_ASSERT_STRING_EQUAL(content, "mock: hello \"there\"\n");
    free(content);
    result_free(&r);

    /* a base URL with a trailing '/' */
    snprintf(slash, sizeof slash, "%s/", plain.base);
    m.upstream = slash;
    call(&cfg, &m, "mock-ok", "again", NULL, &r);
    CU_ASSERT_EQUAL(r.status, 200);
    result_free(&r);
}

static void test_4xx(void)
{
    static const up_case cases[] = {
        {"mock-4xx", plain.base, NULL, "mock/status-404", 400,
         "mock upstream: status 404"},
        {"mock-4xx", plain.base, NULL, "mock/status-422", 400,
         "mock upstream: status 422"},
        /* {"detail": ...} */
        {"mock-4xx", plain.base, NULL, "mock/detail-403", 400,
         "mock upstream: detail 403"},
        /* busy: not the client's fault, and clients retry 503 */
        {"mock-4xx", plain.base, NULL, "mock/status-429", 503,
         "inference backend is busy (HTTP 429)"},
    };
    gw_config cfg = make_cfg(30);
    gw_model m = make_model("mock-4xx", plain.base, NULL);
    result r;

    RUN_CASES(cases);
    /* plain text: one line, no control characters, at most 300 bytes */
    call(&cfg, &m, "mock/text-400", "x", NULL, &r);
    CU_ASSERT_EQUAL(r.status, 400);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r.body);
    CU_ASSERT_EQUAL(r.len, 300);
    CU_ASSERT_EQUAL(strlen(r.body), 300);
    CU_ASSERT_EQUAL(strncmp(r.body, "mock upstream: plain text [31m yyy", 34),
                    0);
    CU_ASSERT_EQUAL(strspn(r.body + 31, "y"), 300 - 31);
    result_free(&r);
}

static void test_api_key(void)
{
    static const up_case cases[] = {
        /* no key: the backend's 401 becomes a 400 with its message */
        {"mock-keyed", keyed.base, NULL, "mock-keyed", 400,
         "mock upstream: invalid API key"},
        {"mock-keyed", keyed.base, wrong_key_file, "mock-keyed", 400,
         "mock upstream: invalid API key"},
        {"mock-keyed", keyed.base, key_file, "mock-keyed", 200, NULL},
        {"mock-keyed", keyed.base, missing_key_file, "mock-keyed", 500,
         "the gateway cannot read the inference backend's API key"},
    };

    RUN_CASES(cases);
}

static void test_5xx(void)
{
    static const up_case cases[] = {
        {"mock-5xx", plain.base, NULL, "mock/status-500", 502,
         "inference backend error (HTTP 500)"},
        {"mock-5xx", plain.base, NULL, "mock/status-503", 502,
         "inference backend error (HTTP 503)"},
        /* redirects are not followed */
        {"mock-5xx", plain.base, NULL, "mock/status-302", 502,
         "inference backend answered HTTP 302"},
    };

    RUN_CASES(cases);
}

static void test_timeout(void)
{
    gw_config cfg = make_cfg(1);
    gw_model m = make_model("mock-slow", plain.base, NULL);
    result r;
    double t0 = tu_now();

    call(&cfg, &m, "mock/slow-3000", "x", NULL, &r);
    expect(&r, 504, "inference backend timed out after 1 s");
    CU_ASSERT_TRUE(tu_now() - t0 >= 0.9);
    result_free(&r);

    /* within the timeout: fine */
    cfg = make_cfg(30);
    call(&cfg, &m, "mock/slow-200", "slowly", NULL, &r);
    CU_ASSERT_EQUAL(r.status, 200);
    result_free(&r);
}

static void test_unreachable(void)
{
    static const up_case cases[] = {
        {"mock-dead", dead_base, NULL, "mock-dead", 503,
         "inference backend unavailable: mock-dead"},
        {"mock-nxdomain", "http://no-such-host.invalid/v1", NULL,
         "mock-nxdomain", 503, "inference backend unavailable: mock-nxdomain"},
        /* only http and https */
        {"mock-ftp", "ftp://127.0.0.1/v1", NULL, "mock-ftp", 502, NULL},
    };

    RUN_CASES(cases);
}

static void test_not_json(void)
{
    static const up_case cases[] = {
        {"mock-html", plain.base, NULL, "mock/not-json", 502,
         "inference backend answered with something that is not JSON"},
    };

    RUN_CASES(cases);
}

static void test_big(void)
{
    gw_config cfg = make_cfg(120);
    gw_model m = make_model("mock-big", plain.base, NULL);
    result r;
    char *content;
    size_t n = 20u * 1024u * 1024u;

    call(&cfg, &m, "mock/big-20971520", "x", NULL, &r);
    CU_ASSERT_EQUAL_FATAL(r.status, 200);
    CU_ASSERT_TRUE(r.len > n);
    content = answer_content(r.body);
    CU_ASSERT_PTR_NOT_NULL_FATAL(content);
    CU_ASSERT_EQUAL(strlen(content), n);
    CU_ASSERT_EQUAL(strspn(content, "x"), n);
    free(content);
    result_free(&r);

    /* without Content-Length: the buffer grows as the answer comes */
    call(&cfg, &m, "mock/chunked-20971520", "x", NULL, &r);
    CU_ASSERT_EQUAL_FATAL(r.status, 200);
    content = answer_content(r.body);
    CU_ASSERT_PTR_NOT_NULL_FATAL(content);
    CU_ASSERT_EQUAL(strlen(content), n);
    free(content);
    result_free(&r);

    /* above 64 MiB, announced or not */
    call(&cfg, &m, "mock/big-70000000", "x", NULL, &r);
    expect(&r, 502, "upstream answer too large");
    result_free(&r);
    call(&cfg, &m, "mock/chunked-70000000", "x", NULL, &r);
    expect(&r, 502, "upstream answer too large");
    result_free(&r);
    /* just below 64 MiB with its wrapping (content 64 MiB - 1 KiB): fits */
    call(&cfg, &m, "mock/chunked-67107840", "x", NULL, &r);
    CU_ASSERT_EQUAL(r.status, 200);
    result_free(&r);
}

static void test_stream_off(void)
{
    gw_config cfg = make_cfg(30);
    gw_model m = make_model("mock-stream", plain.base, NULL);
    result r;
    char *content;

    /* the mock answers 400 to "stream": true */
    call(&cfg, &m, "mock-stream", "streamed?",
         "\"stream\":true,\"stream_options\":{\"include_usage\":true},"
         "\"temperature\":1e-1",
         &r);
    CU_ASSERT_EQUAL_FATAL(r.status, 200);
    content = answer_content(r.body);
    CU_ASSERT_PTR_NOT_NULL(content);
    if (content)
        CU_ASSERT_STRING_EQUAL(content, "mock: streamed?");
    free(content);
    result_free(&r);

    call(&cfg, &m, "mock-stream", "not streamed", "\"stream\":false", &r);
    CU_ASSERT_EQUAL(r.status, 200);
    result_free(&r);
}

/* The request scan (gw_request_scan) is the gate: what it refuses never
 * reaches gw_upstream_call, so never the backend. */
static void test_bad_request(void)
{
    static const struct {
        const char *text, *why;
    } bad[] = {
        {"{\"model\":", "not a JSON object: not valid JSON at byte 9"},
        {"[1,2]", "the decrypted request is not a JSON object"},
        {"{\"model\":\"a\",\"model\":\"b\"}", "has a key twice"},
        {"{\"model\":\"a\",\"mod\\u0065l\":\"b\"}", "has a key twice"},
        {"{\"model\":\"a\",\"MODEL\":\"b\"}",
         "has a key \"model\" in another case"},
        {"{\"Stream\":true,\"model\":\"a\"}",
         "has a key \"stream\" in another case"},
        {"{\"model\":\"a\"}\n{}", "not valid JSON at byte 14"},
        {"{\"model\":\"a\xc0\xaf\"}", "not valid UTF-8"},
    };
    gw_config cfg = make_cfg(30);
    gw_request rq;
    char why[320];

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CU_ASSERT_EQUAL(gw_request_scan(&cfg, bad[i].text, strlen(bad[i].text),
                                        &rq, why, sizeof why),
                        -1);
        if (strstr(why, bad[i].why) == NULL)
            fprintf(stderr, "case %zu: '%s' lacks '%s'\n", i, why, bad[i].why);
        CU_ASSERT_PTR_NOT_NULL(strstr(why, bad[i].why));
    }
    /* and what it takes */
    {
        static const char ok[] =
            "{\"messages\":[],\"model\":\"m\\u00e9\",\"stream\":true}";

        CU_ASSERT_EQUAL(
            gw_request_scan(&cfg, ok, strlen(ok), &rq, why, sizeof why), 0);
        CU_ASSERT_EQUAL(rq.model_len, 3);
        CU_ASSERT_STRING_EQUAL(rq.model, "m\xc3\xa9");
        CU_ASSERT_TRUE(rq.stream);
        CU_ASSERT_EQUAL(rq.members, 3);
    }
}

/* ---- echo --------------------------------------------------------------- */

static void test_echo(void)
{
    static const char req[] =
        "{\"model\":\"echo-model\",\"messages\":["
        "{\"role\":\"system\",\"content\":\"be brief\"},"
        "{\"role\":\"user\",\"content\":\"first question\"},"
        "{\"role\":\"assistant\",\"content\":\"an answer\"},"
        "{\"role\":\"user\",\"content\":\"second  question\\nhere\"}]}";
    char *a = gw_echo_answer(req, strlen(req));
    cJSON *j;
    const cJSON *usage, *choice;
    char *content;

    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    j = cJSON_Parse(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_STRING_EQUAL(tu_json_str(j, "object"), "chat.completion");
    CU_ASSERT_STRING_EQUAL(tu_json_str(j, "model"), "echo-model");
    CU_ASSERT_EQUAL(strncmp(tu_json_str(j, "id"), "chatcmpl-echo-", 14), 0);
    CU_ASSERT_TRUE(strlen(tu_json_str(j, "id")) > 14);
    CU_ASSERT_TRUE(cJSON_IsNumber(cJSON_GetObjectItem(j, "created")));
    CU_ASSERT_TRUE(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "created")) >
                   1.7e9);
    choice = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    CU_ASSERT_EQUAL(cJSON_GetNumberValue(cJSON_GetObjectItem(choice, "index")),
                    0);
    CU_ASSERT_STRING_EQUAL(tu_json_str(choice, "finish_reason"), "stop");
    CU_ASSERT_STRING_EQUAL(
        tu_json_str(cJSON_GetObjectItem(choice, "message"), "role"),
        "assistant");
    content = answer_content(a);
    CU_ASSERT_STRING_EQUAL(content, "second  question\nhere");
    free(content);
    usage = cJSON_GetObjectItem(j, "usage");
    /* 2 + 2 + 2 + 3 words asked, 3 answered */
    CU_ASSERT_EQUAL(
        cJSON_GetNumberValue(cJSON_GetObjectItem(usage, "prompt_tokens")), 9);
    CU_ASSERT_EQUAL(
        cJSON_GetNumberValue(cJSON_GetObjectItem(usage, "completion_tokens")),
        3);
    CU_ASSERT_EQUAL(
        cJSON_GetNumberValue(cJSON_GetObjectItem(usage, "total_tokens")), 12);
    cJSON_Delete(j);
    free(a);
}

static void test_echo_array_content(void)
{
    static const char req[] =
        "{\"model\":\"e\",\"messages\":[{\"role\":\"user\",\"content\":["
        "{\"type\":\"text\",\"text\":\"part one, \"},"
        "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:,\"}},"
        "{\"type\":\"text\",\"text\":\"part two\"}]}]}";
    char *a = gw_echo_answer(req, strlen(req));
    char *content;

    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    content = answer_content(a);
    CU_ASSERT_PTR_NOT_NULL(content);
    if (content)
        CU_ASSERT_STRING_EQUAL(content, "part one, part two");
    free(content);
    free(a);
}

static void test_echo_no_user(void)
{
    static const char req[] =
        "{\"model\":\"e\",\"messages\":[{\"role\":\"system\",\"content\":"
        "\"only a system prompt\"}]}";
    static const char empty[] = "{\"model\":\"e\",\"messages\":[]}";
    char *a = gw_echo_answer(req, strlen(req));
    char *content;

    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    content = answer_content(a);
    CU_ASSERT_PTR_NOT_NULL(content);
    if (content)
        CU_ASSERT_STRING_EQUAL(content, "");
    free(content);
    free(a);
    a = gw_echo_answer(empty, strlen(empty));
    CU_ASSERT_PTR_NOT_NULL(a);
    free(a);
}

static void test_echo_bad(void)
{
    static const char *const bad[] = {
        "",
        "not json",
        "[]",
        "{\"model\":\"e\"}",
        "{\"model\":\"e\",\"messages\":{}}",
    };
    static const char *const why[] = {
        "not JSON",
        "not JSON",
        "not a JSON object",
        "no \"messages\" array",
        "no \"messages\" array",
    };
    gw_config cfg = make_cfg(30);
    gw_model m = make_model("echo", "echo", NULL);
    result r;
    gw_request rq;
    char want[200], scan_why[320];

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *a = gw_echo_answer(bad[i], strlen(bad[i]));

        CU_ASSERT_PTR_NULL(a);
        free(a);
        if (i < 3) /* not objects: the request scan refuses them */
            continue;
        CU_ASSERT_EQUAL_FATAL(gw_request_scan(&cfg, bad[i], strlen(bad[i]), &rq,
                                              scan_why, sizeof scan_why),
                              0);
        run(&cfg, &m, bad[i], strlen(bad[i]), &rq, &r);
        snprintf(want, sizeof want,
                 "request is not a chat completion request: %s", why[i]);
        expect(&r, 400, want);
        result_free(&r);
    }
    /* not NUL-terminated: len is what counts */
    {
        static const char req[] = "{\"model\":\"e\",\"messages\":[]}GARBAGE";
        char *a = gw_echo_answer(req, strlen(req) - 7);

        CU_ASSERT_PTR_NOT_NULL(a);
        free(a);
    }
}

static void test_echo_call(void)
{
    gw_config cfg = make_cfg(30);
    gw_model m = make_model("echo", "echo", NULL);
    result r;
    char *content;

    call(&cfg, &m, "echo", "say it back", "\"stream\":true", &r);
    CU_ASSERT_EQUAL_FATAL(r.status, 200);
    CU_ASSERT_EQUAL(r.len, strlen(r.body));
    content = answer_content(r.body);
    CU_ASSERT_PTR_NOT_NULL(content);
    if (content)
        CU_ASSERT_STRING_EQUAL(content, "say it back");
    free(content);
    result_free(&r);
}

/* ---- health, reuse, threads --------------------------------------------- */

static void test_alive(void)
{
    gw_config cfg = make_cfg(30);
    gw_model echo = make_model("echo", "echo", NULL);
    gw_model live = make_model("mock", plain.base, NULL);
    gw_model keyed_m = make_model("mock-keyed", keyed.base, NULL);
    gw_model dead = make_model("dead", dead_base, NULL);

    CU_ASSERT_EQUAL(gw_upstream_alive(&cfg, &echo, NULL), 1);
    CU_ASSERT_EQUAL(gw_upstream_alive(&cfg, &live, NULL), 1);
    /* /v1/models answers 401 there without a key: still alive */
    CU_ASSERT_EQUAL(gw_upstream_alive(&cfg, &keyed_m, NULL), 1);
    CU_ASSERT_EQUAL(gw_upstream_alive(&cfg, &dead, NULL), 0);
    CU_ASSERT_EQUAL(gw_upstream_alive(&cfg, NULL, NULL), 0);
}

static void test_reuse(void)
{
    gw_config cfg = make_cfg(30);
    gw_model m = make_model("mock-reuse", plain.base, NULL);
    result r;
    unsigned long req0, conn0, req1, conn1;

    CU_ASSERT_EQUAL_FATAL(mock_stats(&plain, &req0, &conn0), 0);
    for (int i = 0; i < 20; i++) {
        call(&cfg, &m, "mock-reuse", "again", NULL, &r);
        CU_ASSERT_EQUAL(r.status, 200);
        result_free(&r);
    }
    CU_ASSERT_EQUAL_FATAL(mock_stats(&plain, &req1, &conn1), 0);
    CU_ASSERT_EQUAL(req1 - req0, 20);
    /* one stats connection, and at most one new one for the calls */
    CU_ASSERT_TRUE(conn1 - conn0 <= 2);

    /* cleanup, then calls work again */
    gw_upstream_cleanup();
    call(&cfg, &m, "mock-reuse", "after cleanup", NULL, &r);
    CU_ASSERT_EQUAL(r.status, 200);
    result_free(&r);
}

#define THREADS 8
#define PER_THREAD 25

typedef struct worker {
    int n;
    int ok, failed;
} worker;

static void *work(void *arg)
{
    worker *w = arg;
    gw_config cfg = make_cfg(60);
    gw_model m = make_model("mock-threads", plain.base, NULL);
    gw_model e = make_model("echo", "echo", NULL);

    for (int i = 0; i < PER_THREAD; i++) {
        char text[64], want[80], *content;
        result r;
        int kind = i % 5;

        snprintf(text, sizeof text, "thread %d call %d", w->n, i);
        if (kind == 3)
            call(&cfg, &m, "mock/status-400", text, NULL, &r);
        else if (kind == 4)
            call(&cfg, &e, "echo", text, NULL, &r);
        else
            call(&cfg, &m, "mock-threads", text, NULL, &r);
        if (kind == 3) {
            if (r.status == 400 && r.body &&
                strcmp(r.body, "mock upstream: status 400") == 0)
                w->ok++;
            else
                w->failed++;
            result_free(&r);
            continue;
        }
        snprintf(want, sizeof want, "%s%s", kind == 4 ? "" : "mock: ", text);
        content = r.status == 200 ? answer_content(r.body) : NULL;
        if (content && strcmp(content, want) == 0)
            w->ok++;
        else
            w->failed++;
        free(content);
        result_free(&r);
    }
    return NULL;
}

static void test_threads(void)
{
    pthread_t t[THREADS];
    worker w[THREADS];
    int ok = 0, failed = 0;
    unsigned long req0, conn0, req1, conn1;

    CU_ASSERT_EQUAL_FATAL(mock_stats(&plain, &req0, &conn0), 0);
    for (int i = 0; i < THREADS; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].n = i;
        CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, work, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        ok += w[i].ok;
        failed += w[i].failed;
    }
    CU_ASSERT_EQUAL(ok, THREADS * PER_THREAD);
    CU_ASSERT_EQUAL(failed, 0);
    CU_ASSERT_EQUAL_FATAL(mock_stats(&plain, &req1, &conn1), 0);
    /* 4 in 5 calls went to the mock (/mock/stats is not counted) */
    CU_ASSERT_EQUAL(req1 - req0, THREADS * PER_THREAD * 4 / 5);
    /* connections were reused: far fewer than calls */
    CU_ASSERT_TRUE(conn1 - conn0 <= THREADS * 2 + 1);
}

/* ---- main --------------------------------------------------------------- */

static int setup(void)
{
    unsigned port;

    if (tu_scratch_dir("test_upstream", scratch, sizeof scratch) != 0)
        return -1;
    snprintf(key_file, sizeof key_file, "%s/upstream.key", scratch);
    snprintf(wrong_key_file, sizeof wrong_key_file, "%s/wrong.key", scratch);
    snprintf(missing_key_file, sizeof missing_key_file, "%s/missing.key",
             scratch);
    if (write_text(key_file, "  " API_KEY "  \nsecond line\n") != 0 ||
        write_text(wrong_key_file, "sk-wrong\n") != 0)
        return -1;
    if ((port = tu_dead_port()) == 0)
        return -1;
    snprintf(dead_base, sizeof dead_base, "http://127.0.0.1:%u/v1", port);
    if (mock_start(&plain, "plain", NULL) != 0 ||
        mock_start(&keyed, "keyed", key_file) != 0)
        return -1;
    return 0;
}

/* Log lines go to the caller's logger (veild: gw_deps' callback, with
 * its level filter), never straight to stderr; they name the model and
 * the status, never the prompt or the backend's text. */
typedef struct log_capture {
    char text[4096];
    unsigned lines;
} log_capture;

static void capture(void *ctx, veil_log_level level, const char *line)
{
    log_capture *c = ctx;
    size_t n = strlen(c->text);

    (void)level;
    snprintf(c->text + n, sizeof c->text - n, "%s\n", line);
    c->lines++;
}

static void test_log(void)
{
    gw_config cfg = make_cfg(30);
    gw_model m = make_model("mock-log", plain.base, NULL);
    gw_model dead = make_model("mock-log-dead", dead_base, NULL);
    log_capture c = {"", 0};
    veil_logger warn = {.fn = capture, .ctx = &c, .level = VEIL_LOG_WARN};
    char *req = chat_request("mock/status-500", "secret prompt", NULL);
    char why[320], detail[512];
    gw_upstream_result up;
    gw_request rq;

    CU_ASSERT_EQUAL_FATAL(
        gw_request_scan(&cfg, req, strlen(req), &rq, why, sizeof why), 0);
    CU_ASSERT_EQUAL(gw_upstream_call(&cfg, &m, GW_INFER_CHAT, req, strlen(req),
                                     &rq, NULL, &warn, &up, detail,
                                     sizeof detail),
                    GW_UPSTREAM);
    /* one warning (the debug line of the exchange is filtered out) */
    CU_ASSERT_EQUAL(c.lines, 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(c.text, "upstream: mock-log: HTTP 500 ("));
    CU_ASSERT_PTR_NULL(strstr(c.text, "secret"));
    CU_ASSERT_PTR_NULL(strstr(c.text, "mock upstream"));
    /* the health probe logs at debug only */
    CU_ASSERT_EQUAL(gw_upstream_alive(&cfg, &dead, &warn), 0);
    CU_ASSERT_EQUAL(c.lines, 1);
    warn.level = VEIL_LOG_DEBUG;
    CU_ASSERT_EQUAL(gw_upstream_alive(&cfg, &dead, &warn), 0);
    CU_ASSERT_EQUAL(c.lines, 2);
    CU_ASSERT_PTR_NOT_NULL(
        strstr(c.text, "upstream: mock-log-dead: health probe failed: "));
    free(req);
}

int main(void)
{
    static const tu_test mapping[] = {
        {"200: the backend's answer", test_ok},
        {"4xx: 400 with the backend's message", test_4xx},
        {"API key: 401 -> 400, key file sent", test_api_key},
        {"5xx: 502", test_5xx},
        {"timeout: 504", test_timeout},
        {"unreachable: 503", test_unreachable},
        {"not JSON: 502", test_not_json},
        {"big answers, and too big: 502", test_big},
        {"stream: true turned off", test_stream_off},
        {"bad request: 400, nothing sent", test_bad_request},
        {"log lines through the caller's logger", test_log},
    };
    static const tu_test echo[] = {
        {"last user message", test_echo},
        {"array content", test_echo_array_content},
        {"no user message", test_echo_no_user},
        {"bad requests", test_echo_bad},
        {"through gw_upstream_call", test_echo_call},
    };
    static const tu_test lifecycle[] = {
        {"health probe", test_alive},
        {"connection reuse, cleanup", test_reuse},
        {"8 threads", test_threads},
    };
    int rc = 1, stopped;

    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (setup() != 0)
        goto out;
    TU_ADD_SUITE("answers and mapping", NULL, NULL, mapping);
    TU_ADD_SUITE("echo", NULL, NULL, echo);
    TU_ADD_SUITE("lifecycle", NULL, NULL, lifecycle);
    rc = tu_run_tests();
out:
    gw_upstream_cleanup();
    stopped = tu_proc_stop_ok(&plain.p);
    stopped &= tu_proc_stop_ok(&keyed.p);
    if (!stopped) {
        fprintf(stderr, "test_upstream: mock-upstream did not exit 0\n");
        rc = 1;
    }
    curl_global_cleanup();
    return rc;
}
