/* mock-upstream: a stand-in inference server for the gateway's tests.  No
 * real model can run in CI here; this answers like an OpenAI-compatible
 * server, or fails on purpose.
 *
 *   mock-upstream --port-file FILE [--api-key-file FILE] [--unix PATH]
 *
 * Listens on 127.0.0.1 on an ephemeral port and writes the port number and
 * a newline to FILE (atomically: FILE.tmp, then rename) once listening.
 * With --unix PATH it listens on a Unix socket made at PATH instead (no
 * TCP port; removed at the end) and writes 0 to FILE once listening.
 * Runs until SIGTERM or SIGINT, then exits 0.  Exit status 1: could not
 * start; 2: usage.
 *
 *   POST /v1/chat/completions   by the request's model name:
 *     mock/status-NNN   HTTP NNN, {"error": {"message": "mock upstream:
 *                       status NNN", "type": "invalid_request_error"}}
 *     mock/slow-MS      waits MS milliseconds, then answers normally
 *     mock/hold         writes "mock-upstream: holding #N" on stderr, then
 *                       waits for SIGUSR1 (or the end), then answers
 *                       normally: a request held in flight, as long as
 *                       the test wants (tests/test_reload.sh)
 *     mock/detail-NNN   HTTP NNN, {"detail": "mock upstream: detail NNN"}
 *     mock/text-NNN     HTTP NNN, plain text: several lines, control
 *                       characters, invalid UTF-8, over 400 bytes
 *     mock/not-json     200 with "<html>oops</html>"
 *     mock/big-N        a normal answer whose content is N bytes of 'x'
 *     mock/chunked-N    the same, sent chunked (no Content-Length)
 *     mock/mirror       200 with MOCK_MIRROR_HEAD, the request's body byte
 *                       for byte, and "}": what reached the backend (any
 *                       request holding the string "mock/mirror", quoted,
 *                       unparsed: cJSON refuses some of what it mirrors)
 *     mock/hostile-metadata  a chat.completion with a "_metadata" of its
 *                       own: a forged payload ID, is_encrypted false, two
 *                       tpm_attestation members (a hostile backend)
 *     mock/dup-metadata the same with "_metadata" twice at the top level
 *     anything else     a chat.completion whose content is "mock: " and
 *                       the last user message
 *     "stream": true is refused with 400 (the gateway must turn it off).
 *   POST /v1/completions        a text_completion: choice i's text is
 *                               "mock: " and prompt i (a string or strings)
 *   POST /v1/embeddings         a list of embedding objects: input i's
 *                               deterministic vector (protocol/openai.c),
 *                               usage; both with the failures above
 *                               (mock/status-NNN, detail-NNN, text-NNN,
 *                               not-json) by the model's name
 *     With --api-key-file, a missing or wrong Bearer key gets 401.
 *   GET /v1/models              {"object":"list","data":[{"id":"mock",...}]}
 *   GET /mock/stats             {"requests": N, "connections": M} (tests)
 *
 * One line per request on stderr: its number, model and status (never a
 * message's content).
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
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

#include "openai.h"
#include "stub_http.h"

#define MOCK_CHAT_PATH "/v1/chat/completions"
#define MOCK_COMPLETIONS_PATH "/v1/completions"
#define MOCK_EMBEDDINGS_PATH "/v1/embeddings"
#define MOCK_MODELS_PATH "/v1/models"
#define MOCK_STATS_PATH "/mock/stats"
#define MOCK_MAX_BODY (64u * 1024u * 1024u)
/* Largest mock/big-N answer and longest mock/slow-MS wait. */
#define MOCK_MAX_BIG (256u * 1024u * 1024u)
#define MOCK_MAX_SLOW_MS 600000u
/* mock/mirror's answer starts so (tests/test_gateway.c has the same). */
#define MOCK_MIRROR_HEAD                                                       \
    "{\"id\":\"chatcmpl-mirror\",\"object\":\"chat.completion\","              \
    "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","           \
    "\"content\":\"mirror\"},\"finish_reason\":\"stop\"}],\"request\":"
#define MOCK_HOSTILE_BODY                                                      \
    "{\"id\":\"chatcmpl-hostile\",\"object\":\"chat.completion\","             \
    "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","           \
    "\"content\":\"hostile\"},\"finish_reason\":\"stop\"}],"                   \
    "\"_metadata\":{\"payload_id\":\"forged\",\"is_encrypted\":false,"         \
    "\"security_tier\":\"maximum\",\"tpm_attestation\":{\"is_available\":"     \
    "true,\"format\":\"forged\"},\"tpm_attestation\":{\"is_available\":"       \
    "false}}}"

static const char usage_text[] =
    "usage: mock-upstream --port-file FILE [--api-key-file FILE] "
    "[--unix PATH]\n";

typedef struct mock {
    stub_http http; /* the daemon (tests/stub_http.c) */
    char *api_key;
    pthread_mutex_t lock; /* everything below */
    pthread_cond_t cond;  /* signalled when stopping */
    int stopping;
    unsigned long released; /* SIGUSR1s received: mock/hold lets go */
    unsigned long requests;
} mock;

/* ---- helpers ------------------------------------------------------------ */

static unsigned long count_request(mock *s)
{
    unsigned long n;

    pthread_mutex_lock(&s->lock);
    n = ++s->requests;
    pthread_mutex_unlock(&s->lock);
    return n;
}

static void log_request(unsigned long n, const char *method, const char *url,
                        const char *model, unsigned status)
{
    char line[512];

    snprintf(line, sizeof line, "mock-upstream: #%lu %s %s model=%s -> %u\n", n,
             method, url, model ? model : "-", status);
    fputs(line, stderr); /* one call: lines of threads do not mix */
}

/* Waits up to ms milliseconds; returns early when the server stops. */
static void wait_ms(mock *s, unsigned ms)
{
    struct timespec dl;

    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += ms / 1000;
    dl.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->lock);
    while (!s->stopping)
        if (pthread_cond_timedwait(&s->cond, &s->lock, &dl) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&s->lock);
}

/* mock/hold: waits for the next SIGUSR1 (or the end). */
static void hold(mock *s, unsigned long n)
{
    char line[96];

    pthread_mutex_lock(&s->lock);
    unsigned long seen = s->released;
    snprintf(line, sizeof line, "mock-upstream: holding #%lu\n", n);
    fputs(line, stderr);
    while (!s->stopping && s->released == seen)
        pthread_cond_wait(&s->cond, &s->lock);
    pthread_mutex_unlock(&s->lock);
}

/* A body sent without Content-Length (chunked), from the callback below. */
typedef struct mock_stream {
    char *text;
    size_t len;
} mock_stream;

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    mock_stream *st = cls;
    size_t n;

    if (pos >= st->len)
        return MHD_CONTENT_READER_END_OF_STREAM;
    n = st->len - (size_t)pos;
    if (n > max)
        n = max;
    memcpy(buf, st->text + pos, n);
    return (ssize_t)n;
}

static void stream_free(void *cls)
{
    mock_stream *st = cls;

    free(st->text);
    free(st);
}

static enum MHD_Result send_chunked(struct MHD_Connection *conn,
                                    unsigned status, char *text)
{
    mock_stream *st = text ? malloc(sizeof *st) : NULL;
    struct MHD_Response *resp;
    enum MHD_Result ret;

    if (st == NULL) {
        free(text);
        return MHD_NO;
    }
    st->text = text;
    st->len = strlen(text);
    resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 65536,
                                             stream_read, st, stream_free);
    if (resp == NULL) {
        stream_free(st);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            "application/json");
    ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *conn, unsigned status,
                                 cJSON *j)
{
    char *text = j ? cJSON_PrintUnformatted(j) : NULL;

    cJSON_Delete(j);
    return stub_send_owned(conn, status, text, "application/json");
}

/* {"error": {"message": message, "type": type[, "code": code]}} */
static enum MHD_Result send_error(struct MHD_Connection *conn, unsigned status,
                                  const char *message, const char *type,
                                  const char *code)
{
    cJSON *j = cJSON_CreateObject(), *e = NULL;
    int ok = j != NULL;

    ok = ok && (e = cJSON_AddObjectToObject(j, "error")) != NULL;
    ok = ok && cJSON_AddStringToObject(e, "message", message);
    ok = ok && cJSON_AddStringToObject(e, "type", type);
    ok = ok && (code ? cJSON_AddStringToObject(e, "code", code) != NULL
                     : cJSON_AddNullToObject(e, "code") != NULL);
    if (!ok) {
        cJSON_Delete(j);
        return MHD_NO;
    }
    return send_json(conn, status, j);
}

/* The content of the last user message ("" when there is none; a list of
 * parts joined from its text parts): protocol/openai.c, as the gateway's
 * echo model reads it.  malloc'd; NULL: no memory. */
static char *last_user_content(const cJSON *messages)
{
    return veil_openai_content_text(veil_openai_last_user(messages));
}

/* A chat.completion with content (taken): protocol/openai.c's, as the
 * gateway's echo model makes it. */
static cJSON *make_answer(unsigned long n, const char *model, char *content)
{
    char id[64];
    cJSON *a = NULL;

    snprintf(id, sizeof id, "chatcmpl-mock-%lu", n);
    if (content != NULL)
        a = veil_openai_completion(id, model, content, 1,
                                   (double)(strlen(content) / 4 + 1));
    free(content);
    return a;
}

/* The number after prefix in s, within [lo, hi]; -1 when s is not that. */
static long suffix_number(const char *s, const char *prefix, long lo, long hi)
{
    size_t n = strlen(prefix);
    char *end;
    long v;

    if (strncmp(s, prefix, n) != 0 || s[n] < '0' || s[n] > '9')
        return -1;
    errno = 0;
    v = strtol(s + n, &end, 10);
    if (errno != 0 || *end != '\0' || v < lo || v > hi)
        return -1;
    return v;
}

/* ---- routes ------------------------------------------------------------- */

/* The failures chosen by the model's name (mock/status-NNN,
 * mock/detail-NNN, mock/text-NNN, mock/not-json), on every POST route:
 * 1 when model names one (answered: *status, *ret), else 0. */
static int fail_on_purpose(struct MHD_Connection *conn, const char *model,
                           unsigned *status, enum MHD_Result *ret)
{
    char message[128];
    long v;

    if ((v = suffix_number(model, "mock/status-", 100, 599)) >= 0) {
        *status = (unsigned)v;
        snprintf(message, sizeof message, "mock upstream: status %ld", v);
        *ret = send_error(
            conn, *status, message,
            *status >= 500 ? "server_error" : "invalid_request_error", NULL);
        return 1;
    }
    if ((v = suffix_number(model, "mock/detail-", 100, 599)) >= 0) {
        cJSON *d = cJSON_CreateObject();

        *status = (unsigned)v;
        snprintf(message, sizeof message, "mock upstream: detail %ld", v);
        if (d && !cJSON_AddStringToObject(d, "detail", message)) {
            cJSON_Delete(d);
            d = NULL;
        }
        *ret = send_json(conn, *status, d);
        return 1;
    }
    if ((v = suffix_number(model, "mock/text-", 100, 599)) >= 0) {
        static const char head[] =
            "mock upstream:\tplain\r\ntext \x01\x1b[31m\xff ";
        char *text = malloc(sizeof head + 401);

        *status = (unsigned)v;
        if (text) {
            memcpy(text, head, sizeof head - 1);
            memset(text + sizeof head - 1, 'y', 400);
            text[sizeof head - 1 + 400] = '\n';
            text[sizeof head + 400] = '\0';
        }
        *ret = stub_send_owned(conn, *status, text, "text/plain");
        return 1;
    }
    if (strcmp(model, "mock/not-json") == 0) {
        *ret = stub_send_owned(conn, *status, strdup("<html>oops</html>"),
                               "text/html");
        return 1;
    }
    return 0;
}

static int authorized(mock *s, struct MHD_Connection *conn)
{
    const char *auth;

    if (s->api_key == NULL)
        return 1;
    auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                       MHD_HTTP_HEADER_AUTHORIZATION);
    return auth != NULL && strncmp(auth, "Bearer ", 7) == 0 &&
           strcmp(auth + 7, s->api_key) == 0;
}

/* With --api-key-file, a request without that key: 401 (1), else 0. */
static int refuse_unauthorized(mock *s, struct MHD_Connection *conn,
                               unsigned *status, enum MHD_Result *ret)
{
    if (authorized(s, conn))
        return 0;
    *status = 401;
    *ret = send_error(conn, *status, "mock upstream: invalid API key",
                      "invalid_request_error", "invalid_api_key");
    return 1;
}

static enum MHD_Result handle_chat(mock *s, struct MHD_Connection *conn,
                                   const stub_body *body)
{
    unsigned long n = count_request(s);
    cJSON *req = NULL, *answer;
    const cJSON *model_j, *messages, *stream;
    const char *model = NULL;
    char *content;
    unsigned status = 200;
    long v;
    enum MHD_Result ret;

    if (refuse_unauthorized(s, conn, &status, &ret))
        goto out;
    if (body->too_large) {
        status = 413;
        ret = send_error(conn, status, "mock upstream: request too large",
                         "invalid_request_error", NULL);
        goto out;
    }
    /* before any parsing: the mirror takes what cJSON cannot (escaped lone
     * surrogates, U+0000) */
    if (body->data && memmem(body->data, body->len, "\"mock/mirror\"", 13)) {
        model = "mock/mirror";
        size_t size = sizeof MOCK_MIRROR_HEAD + body->len + 1;
        char *text = malloc(size);

        if (text) {
            memcpy(text, MOCK_MIRROR_HEAD, sizeof MOCK_MIRROR_HEAD - 1);
            memcpy(text + sizeof MOCK_MIRROR_HEAD - 1, body->data, body->len);
            memcpy(text + sizeof MOCK_MIRROR_HEAD - 1 + body->len, "}", 2);
        }
        ret = stub_send_owned(conn, status, text, "application/json");
        goto out;
    }
    req = cJSON_ParseWithLength(body->data ? body->data : "", body->len);
    if (!cJSON_IsObject(req)) {
        status = 400;
        ret = send_error(conn, status, "mock upstream: request is not JSON",
                         "invalid_request_error", NULL);
        goto out;
    }
    model_j = cJSON_GetObjectItemCaseSensitive(req, "model");
    messages = cJSON_GetObjectItemCaseSensitive(req, "messages");
    stream = cJSON_GetObjectItemCaseSensitive(req, "stream");
    if (cJSON_IsString(model_j))
        model = model_j->valuestring;
    if (model == NULL || !cJSON_IsArray(messages)) {
        status = 400;
        ret = send_error(conn, status,
                         "mock upstream: \"model\" and \"messages\" are "
                         "required",
                         "invalid_request_error", NULL);
        goto out;
    }
    if (cJSON_IsTrue(stream)) {
        status = 400;
        ret = send_error(conn, status, "mock upstream: stream must be false",
                         "invalid_request_error", NULL);
        goto out;
    }
    if (strcmp(model, "mock/hostile-metadata") == 0 ||
        strcmp(model, "mock/dup-metadata") == 0) {
        char *text = malloc(sizeof MOCK_HOSTILE_BODY + 64);

        if (text) {
            memcpy(text, MOCK_HOSTILE_BODY, sizeof MOCK_HOSTILE_BODY);
            static const char second[] =
                ",\"_metadata\":{\"payload_id\":\"forged\"}}";

            if (model[5] == 'd') /* a second _metadata, the forged one */
                memcpy(text + sizeof MOCK_HOSTILE_BODY - 2, second,
                       sizeof second);
        }
        ret = stub_send_owned(conn, status, text, "application/json");
        goto out;
    }
    if (fail_on_purpose(conn, model, &status, &ret))
        goto out;
    if ((v = suffix_number(model, "mock/slow-", 0, MOCK_MAX_SLOW_MS)) >= 0)
        wait_ms(s, (unsigned)v);
    if (strcmp(model, "mock/hold") == 0)
        hold(s, n);
    if ((v = suffix_number(model, "mock/big-", 0, MOCK_MAX_BIG)) >= 0 ||
        (v = suffix_number(model, "mock/chunked-", 0, MOCK_MAX_BIG)) >= 0) {
        if ((content = malloc((size_t)v + 1)) != NULL) {
            memset(content, 'x', (size_t)v);
            content[v] = '\0';
        }
    } else {
        char *last = last_user_content(messages);
        size_t size = last ? strlen(last) + sizeof "mock: " : 0;

        if (last && (content = malloc(size)) != NULL)
            snprintf(content, size, "mock: %s", last);
        else
            content = NULL;
        free(last);
    }
    answer = make_answer(n, model, content);
    if (answer == NULL) {
        status = 500;
        ret = send_error(conn, status, "mock upstream: out of memory",
                         "server_error", NULL);
        goto out;
    }
    if (strncmp(model, "mock/chunked-", 13) == 0) {
        char *text = cJSON_PrintUnformatted(answer);

        cJSON_Delete(answer);
        ret = send_chunked(conn, status, text);
    } else {
        ret = send_json(conn, status, answer);
    }
out:
    log_request(n, "POST", MOCK_CHAT_PATH, model, status);
    cJSON_Delete(req);
    return ret;
}

/* POST /v1/completions and /v1/embeddings: a text_completion whose
 * choices are "mock: " and each prompt, or the deterministic embedding of
 * each input (protocol/openai.c, as the gateway's echo model makes them);
 * the failures of fail_on_purpose. */
static enum MHD_Result handle_texts(mock *s, struct MHD_Connection *conn,
                                    const char *path, const stub_body *body)
{
    int embed = strcmp(path, MOCK_EMBEDDINGS_PATH) == 0;
    unsigned long n = count_request(s);
    cJSON *req = NULL, *answer = NULL;
    const cJSON *model_j;
    const char *model = NULL, **texts = NULL;
    char **echoed = NULL, id[64];
    size_t k = 0, words = 0;
    unsigned status = 200;
    enum MHD_Result ret;

    if (refuse_unauthorized(s, conn, &status, &ret))
        goto out;
    req = cJSON_ParseWithLength(body->data ? body->data : "", body->len);
    model_j = cJSON_GetObjectItemCaseSensitive(req, "model");
    if (cJSON_IsString(model_j))
        model = model_j->valuestring;
    if (model == NULL || veil_openai_texts(cJSON_GetObjectItemCaseSensitive(
                                               req, embed ? "input" : "prompt"),
                                           &texts, &k) != VEIL_OK) {
        status = 400;
        ret = send_error(conn, status,
                         embed ? "mock upstream: \"model\" and \"input\" are "
                                 "required"
                               : "mock upstream: \"model\" and \"prompt\" "
                                 "are required",
                         "invalid_request_error", NULL);
        goto out;
    }
    if (fail_on_purpose(conn, model, &status, &ret))
        goto out;
    for (size_t i = 0; i < k; i++)
        words += strlen(texts[i]) / 4 + 1;
    if (embed) {
        answer = veil_openai_embeddings(model, texts, k, (double)words);
    } else if ((echoed = calloc(k, sizeof *echoed)) != NULL) {
        size_t i;

        for (i = 0; i < k; i++) {
            size_t size = strlen(texts[i]) + sizeof "mock: ";

            if ((echoed[i] = malloc(size)) == NULL)
                break;
            snprintf(echoed[i], size, "mock: %s", texts[i]);
        }
        snprintf(id, sizeof id, "cmpl-mock-%lu", n);
        if (i == k)
            answer = veil_openai_text_completion(id, model,
                                                 (const char *const *)echoed, k,
                                                 (double)words, (double)words);
        for (i = 0; i < k; i++)
            free(echoed[i]);
    }
    if (answer == NULL) {
        status = 500;
        ret = send_error(conn, status, "mock upstream: out of memory",
                         "server_error", NULL);
        goto out;
    }
    ret = send_json(conn, status, answer);
out:
    log_request(n, "POST", path, model, status);
    free(echoed);
    free(texts);
    cJSON_Delete(req);
    return ret;
}

static enum MHD_Result handle_models(mock *s, struct MHD_Connection *conn)
{
    unsigned long n = count_request(s);
    cJSON *j = cJSON_Parse("{\"object\":\"list\",\"data\":[{\"id\":\"mock\","
                           "\"object\":\"model\",\"owned_by\":\"mock\"}]}");

    log_request(n, "GET", MOCK_MODELS_PATH, NULL, 200);
    return send_json(conn, 200, j);
}

static enum MHD_Result handle_stats(mock *s, struct MHD_Connection *conn)
{
    cJSON *j = cJSON_CreateObject();
    unsigned long requests, connections;

    pthread_mutex_lock(&s->lock);
    requests = s->requests;
    pthread_mutex_unlock(&s->lock);
    connections = atomic_load(&s->http.connections);
    if (j == NULL ||
        !cJSON_AddNumberToObject(j, "requests", (double)requests) ||
        !cJSON_AddNumberToObject(j, "connections", (double)connections)) {
        cJSON_Delete(j);
        return MHD_NO;
    }
    return send_json(conn, 200, j);
}

/* ---- the daemon --------------------------------------------------------- */

/* The routes, once a request's body is in (tests/stub_http.c). */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  stub_body *b)
{
    mock *s = cls;
    int get = strcmp(method, MHD_HTTP_METHOD_GET) == 0;
    int post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;

    if (strcmp(url, MOCK_CHAT_PATH) == 0 && post)
        return handle_chat(s, conn, b);
    if ((strcmp(url, MOCK_COMPLETIONS_PATH) == 0 ||
         strcmp(url, MOCK_EMBEDDINGS_PATH) == 0) &&
        post)
        return handle_texts(s, conn, url, b);
    if (strcmp(url, MOCK_MODELS_PATH) == 0 && get)
        return handle_models(s, conn);
    if (strcmp(url, MOCK_STATS_PATH) == 0 && get)
        return handle_stats(s, conn);
    log_request(count_request(s), method, url, NULL, 404);
    return send_error(conn, 404, "mock upstream: no such route",
                      "invalid_request_error", "not_found");
}

/* The whole file, NUL-terminated (malloc'd), or NULL with a message. */
static char *slurp(const char *path)
{
    FILE *fp = fopen(path, "rb");
    char *buf;
    size_t len;

    if (fp == NULL || (buf = malloc(65536)) == NULL) {
        fprintf(stderr, "mock-upstream: cannot read %s\n", path);
        if (fp)
            fclose(fp);
        return NULL;
    }
    len = fread(buf, 1, 65535, fp);
    buf[len] = '\0';
    fclose(fp);
    return buf;
}

/* Writes "PORT\n" to path.tmp and renames it to path. */
static int write_port_file(const char *path, unsigned port)
{
    char tmp[4096];
    FILE *fp;

    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return -1;
    if ((fp = fopen(tmp, "w")) == NULL)
        return -1;
    if (fprintf(fp, "%u\n", port) < 0 || fflush(fp) != 0 ||
        fsync(fileno(fp)) != 0) {
        fclose(fp);
        unlink(tmp);
        return -1;
    }
    if (fclose(fp) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *port_file = NULL, *key_file = NULL, *unix_path = NULL;
    stub_config sc;
    pthread_condattr_t ca;
    sigset_t set;
    int sig = 0, status = 1;
    mock s;

    for (int i = 1; i < argc; i++) {
        const char **slot = NULL;

        if (strcmp(argv[i], "--port-file") == 0)
            slot = &port_file;
        else if (strcmp(argv[i], "--api-key-file") == 0)
            slot = &key_file;
        else if (strcmp(argv[i], "--unix") == 0)
            slot = &unix_path;
        else if (strcmp(argv[i], "--help") == 0) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (slot == NULL || i + 1 >= argc) {
            fprintf(stderr, "mock-upstream: bad argument %s\n%s", argv[i],
                    usage_text);
            return 2;
        }
        *slot = argv[++i];
    }
    if (port_file == NULL) {
        fputs(usage_text, stderr);
        return 2;
    }

    memset(&s, 0, sizeof s);
    pthread_mutex_init(&s.lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s.cond, &ca);
    pthread_condattr_destroy(&ca);
    if (key_file) {
        char *k;
        size_t n;

        if ((s.api_key = slurp(key_file)) == NULL)
            goto out;
        /* the first line, without surrounding blanks */
        k = s.api_key + strspn(s.api_key, " \t");
        n = strcspn(k, "\r\n");
        while (n > 0 && (k[n - 1] == ' ' || k[n - 1] == '\t'))
            n--;
        memmove(s.api_key, k, n);
        s.api_key[n] = '\0';
    }

    /* Signals are taken with sigwait: block them before any thread starts,
     * so that the daemon's threads inherit the mask. */
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    memset(&sc, 0, sizeof sc);
    sc.handle = on_request;
    sc.ctx = &s;
    sc.max_body = MOCK_MAX_BODY;
    sc.connection_timeout = 120;
    sc.who = "mock-upstream";
    sc.unix_path = unix_path;
    if (stub_start(&s.http, &sc) != 0)
        goto out;
    if (write_port_file(port_file, s.http.port) != 0) {
        fprintf(stderr, "mock-upstream: cannot write %s\n", port_file);
        goto out;
    }
    while (sig != SIGTERM && sig != SIGINT) {
        if (sigwait(&set, &sig) != 0)
            break;
        if (sig == SIGUSR1) { /* mock/hold: let the held requests go */
            pthread_mutex_lock(&s.lock);
            s.released++;
            pthread_cond_broadcast(&s.cond);
            pthread_mutex_unlock(&s.lock);
        }
    }
    status = 0;
out:
    pthread_mutex_lock(&s.lock);
    s.stopping = 1;
    pthread_cond_broadcast(&s.cond);
    pthread_mutex_unlock(&s.lock);
    stub_stop(&s.http);
    fprintf(stderr, "mock-upstream: %lu requests, %lu connections\n",
            s.requests, (unsigned long)atomic_load(&s.http.connections));
    pthread_cond_destroy(&s.cond);
    pthread_mutex_destroy(&s.lock);
    free(s.api_key);
    return status;
}
