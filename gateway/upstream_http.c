/* The real inference backend: an OpenAI-compatible server reached over
 * libcurl (POST <base>/chat/completions, /completions, /embeddings), over
 * TCP or, for an upstream unix:/PATH, over that Unix socket (base
 * http://localhost/v1: no TCP port at all), its
 * answers mapped to outcomes. The backend's answer is checked (one JSON object,
 * no key twice) and handed back as it came.
 *
 * Requests and answers are plaintext here: nothing of either is logged
 * (log lines name the model, statuses and sizes), every copy made here is
 * wiped before it is freed, and the answer is collected in memory grown by
 * malloc + copy + wipe (never realloc, which would leave copies behind).
 *
 * libcurl easy handles are kept in one pool shared by all worker threads,
 * so that connections to the backend are reused; gw_upstream_cleanup frees
 * them at shutdown. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "package.h"
#include "upstream_int.h"

/* Idle handles kept; more threads than this still work (handles beyond it
 * are made and freed per call). */
#define UP_POOL_MAX 32
/* Largest answer taken from the backend. */
#define UP_ANSWER_MAX ((size_t)64 * 1024 * 1024)
/* /healthz probe: GET <base>/models, whole exchange within this. */
#define UP_ALIVE_TIMEOUT_MS 2000L
/* Longest API key read from a key file. */
#define UP_KEY_MAX 4096

static void wipe_free(void *p, size_t len)
{
    if (p == NULL)
        return;
    veil_wipe(p, len);
    free(p);
}

/* The base URL of a Unix socket upstream: requests go to its /v1. */
#define UP_UNIX_BASE "http://localhost/v1"

/* The socket path of an upstream "unix:/PATH", or NULL for a URL. */
static const char *unix_path(const char *upstream)
{
    return strncmp(upstream, "unix:", 5) == 0 ? upstream + 5 : NULL;
}

/* base (".../v1", trailing '/' dropped; for unix:PATH, UP_UNIX_BASE) +
 * path, malloc'd. */
static char *make_url(const char *base, const char *path)
{
    size_t n, size;
    char *url;

    if (unix_path(base))
        base = UP_UNIX_BASE;
    n = strlen(base);

    while (n > 0 && base[n - 1] == '/')
        n--;
    size = n + strlen(path) + 1;
    if ((url = malloc(size)) == NULL)
        return NULL;
    snprintf(url, size, "%.*s%s", (int)n, base, path);
    return url;
}

/* ---- the handle pool ---------------------------------------------------- */

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static int curl_ready; /* curl_global_init done (and not cleaned up) */
static CURL *pool[UP_POOL_MAX];
static size_t pool_n;

static int up_init(void)
{
    int ok;

    pthread_mutex_lock(&pool_lock);
    if (!curl_ready)
        curl_ready = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
    ok = curl_ready;
    pthread_mutex_unlock(&pool_lock);
    return ok;
}

static CURL *take(void)
{
    CURL *h = NULL;

    pthread_mutex_lock(&pool_lock);
    if (pool_n > 0)
        h = pool[--pool_n];
    pthread_mutex_unlock(&pool_lock);
    return h ? h : curl_easy_init();
}

/* Forgets every option (pointers into the caller's stack among them) but
 * keeps the handle's live connections, then pools it. */
static void give_back(CURL *h)
{
    if (h == NULL)
        return;
    curl_easy_reset(h);
    pthread_mutex_lock(&pool_lock);
    if (curl_ready && pool_n < UP_POOL_MAX) {
        pool[pool_n++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&pool_lock);
    if (h != NULL)
        curl_easy_cleanup(h);
}

void gw_upstream_cleanup(void)
{
    CURL *idle[UP_POOL_MAX];
    size_t n;
    int was;

    pthread_mutex_lock(&pool_lock);
    n = pool_n;
    memcpy(idle, pool, n * sizeof idle[0]);
    pool_n = 0;
    was = curl_ready;
    curl_ready = 0;
    pthread_mutex_unlock(&pool_lock);
    for (size_t i = 0; i < n; i++)
        curl_easy_cleanup(idle[i]);
    if (was)
        curl_global_cleanup();
}

/* Options every upstream exchange shares; upstream: the model's, for its
 * Unix socket. */
static void common_options(CURL *h, const char *upstream, const char *url,
                           long timeout_ms, long connect_ms, char *errbuf)
{
    curl_easy_setopt(h, CURLOPT_URL, url);
    /* NULL for a URL upstream: a pooled handle forgets an earlier socket
     * (curl_easy_reset clears it too; said here so it never depends on
     * that) */
    curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, unix_path(upstream));
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    /* Straight to the backend: no proxy from the environment (http_proxy
     * and friends) sees the plaintext. */
    curl_easy_setopt(h, CURLOPT_PROXY, "");
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "veild/" PACKAGE_VERSION);
}

/* ---- where the answer goes ---------------------------------------------- */

/* The answer's body is handed to a sink as it arrives.  Today there is one
 * kind, up_buf, which collects the whole answer: NOMYO answers as a whole,
 * encrypted at once.
 *
 * Streaming would plug in here: a sink whose begin() looks at the status
 * (collect non-2xx answers whole, so they can still be mapped) and whose
 * write() turns each chunk of server-sent events into an encrypted frame
 * for the client as soon as it arrives; gw_upstream_call would then leave
 * "stream": true in the request instead of rewriting it. */
typedef struct up_sink up_sink;
struct up_sink {
    /* Once, before the first byte: the backend's HTTP status and its
     * Content-Length (-1: not given).  0: go on; -1: stop the transfer. */
    int (*begin)(up_sink *s, long status, long long length);
    /* A piece of the body.  0: go on; -1: stop the transfer. */
    int (*write)(up_sink *s, const char *data, size_t len);
};

/* Collects the body in memory (NUL-terminated), at most max bytes. */
typedef struct up_buf {
    up_sink sink;
    char *data;
    size_t len, cap, max;
    int too_big, no_mem;
} up_buf;

/* Makes room for need bytes (with the NUL): a new block, the old one wiped
 * and freed. */
static int buf_reserve(up_buf *b, size_t need)
{
    char *d;

    if (need <= b->cap)
        return 0;
    if ((d = malloc(need)) == NULL) {
        b->no_mem = 1;
        return -1;
    }
    if (b->len > 0)
        memcpy(d, b->data, b->len);
    d[b->len] = '\0';
    wipe_free(b->data, b->cap);
    b->data = d;
    b->cap = need;
    return 0;
}

static int buf_begin(up_sink *s, long status, long long length)
{
    up_buf *b = (up_buf *)s;

    if (length < 0)
        return 0;
    if ((unsigned long long)length > b->max) {
        b->too_big = 1;
        return -1;
    }
    /* The whole body at once when its size is announced. */
    return buf_reserve(b, (size_t)length + 1);
}

static int buf_write(up_sink *s, const char *data, size_t len)
{
    up_buf *b = (up_buf *)s;

    if (len > b->max - b->len) {
        b->too_big = 1;
        return -1;
    }
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap > 16384 ? b->cap : 16384;

        while (cap < b->len + len + 1)
            cap *= 2;
        if (cap > b->max + 1)
            cap = b->max + 1;
        if (buf_reserve(b, cap) != 0)
            return -1;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

static void buf_init(up_buf *b, size_t max)
{
    memset(b, 0, sizeof *b);
    b->sink.begin = buf_begin;
    b->sink.write = buf_write;
    b->max = max;
}

static void buf_free(up_buf *b)
{
    wipe_free(b->data, b->cap);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* What the curl write callback sees. */
typedef struct up_xfer {
    CURL *h;
    up_sink *sink;
    int begun;
} up_xfer;

static size_t on_data(char *data, size_t size, size_t n, void *ctx)
{
    up_xfer *x = ctx;
    size_t len = size * n;

    if (!x->begun) {
        long status = 0;
        curl_off_t length = -1;

        x->begun = 1;
        curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(x->h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length);
        if (x->sink->begin &&
            x->sink->begin(x->sink, status, (long long)length) != 0)
            return 0; /* anything but len stops the transfer */
    }
    if (len > 0 && x->sink->write(x->sink, data, len) != 0)
        return 0;
    return len;
}

static size_t on_discard(char *data, size_t size, size_t n, void *ctx)
{
    return size * n;
}

/* ---- the backend's API key ---------------------------------------------- */

/* The first line of path (surrounding blanks dropped) into out.  0, or -1
 * with errno-ish reason in *why.  The key never reaches a log. */
static int read_key(const char *path, char *out, size_t size, const char **why)
{
    char buf[UP_KEY_MAX + 2], resolved[4096];
    size_t len = 0, start, end;
    ssize_t r;
    int fd;

    if (veil_secret_path(path, resolved, sizeof resolved, why) != 0)
        return -1;
    fd = open(resolved, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        *why = strerror(errno);
        return -1;
    }
    while (len < sizeof buf - 1 &&
           (r = read(fd, buf + len, sizeof buf - 1 - len)) != 0) {
        if (r < 0) {
            if (errno == EINTR)
                continue;
            *why = strerror(errno);
            close(fd);
            veil_wipe(buf, sizeof buf);
            return -1;
        }
        len += (size_t)r;
    }
    close(fd);
    buf[len] = '\0';
    end = strcspn(buf, "\r\n");
    start = 0;
    while (start < end && (buf[start] == ' ' || buf[start] == '\t'))
        start++;
    while (end > start && (buf[end - 1] == ' ' || buf[end - 1] == '\t'))
        end--;
    if (end == start || end - start >= size) {
        *why = end == start ? "empty" : "key too long";
        veil_wipe(buf, sizeof buf);
        return -1;
    }
    memcpy(out, buf + start, end - start);
    out[end - start] = '\0';
    veil_wipe(buf, sizeof buf);
    return 0;
}

/* Header lines may hold the key: wiped before they are freed. */
static void headers_free(struct curl_slist *list)
{
    for (struct curl_slist *l = list; l; l = l->next)
        veil_wipe(l->data, strlen(l->data));
    curl_slist_free_all(list);
}

/* ---- mapping the backend's answers -------------------------------------- */

/* text as one line of at most UP_DETAIL_MAX bytes: line breaks and tabs
 * become spaces, runs of spaces one, other control characters and invalid
 * UTF-8 go.  malloc'd; NULL: no memory. */
static char *one_line(const char *text, size_t n)
{
    const unsigned char *s = (const unsigned char *)text;
    char *out = malloc(UP_DETAIL_MAX + 1);
    size_t o = 0, i = 0;

    if (out == NULL)
        return NULL;
    while (i < n) {
        unsigned c = s[i];
        size_t l;

        if (c == '\n' || c == '\r' || c == '\t' || c == ' ') {
            if (o > 0 && out[o - 1] != ' ' && o < UP_DETAIL_MAX)
                out[o++] = ' ';
            i++;
            continue;
        }
        if (c < 0x20 || c == 0x7f || (l = veil_utf8_seq(s + i, n - i)) == 0) {
            i++;
            continue;
        }
        if (o + l > UP_DETAIL_MAX)
            break;
        memcpy(out + o, s + i, l);
        o += l;
        i += l;
    }
    while (o > 0 && out[o - 1] == ' ')
        o--;
    out[o] = '\0';
    return out;
}

/* The message of a backend's error answer: {"error": {"message": M}},
 * {"error": M}, {"detail": M}, {"detail": [{"msg": M}]}, {"message": M},
 * or the start of a body that is not JSON.  malloc'd one line ("" when
 * there is none); NULL: no memory. */
static char *error_message(const char *body, size_t len)
{
    cJSON *j = len > 0 ? cJSON_ParseWithLength(body, len) : NULL;
    const char *msg = NULL;
    char *out;

    if (cJSON_IsObject(j)) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "detail");
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "message");
        const cJSON *em = cJSON_GetObjectItemCaseSensitive(e, "message");

        if (cJSON_IsString(em))
            msg = em->valuestring;
        else if (cJSON_IsString(e))
            msg = e->valuestring;
        else if (cJSON_IsString(d))
            msg = d->valuestring;
        else if (cJSON_IsArray(d)) {
            const cJSON *dm = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetArrayItem(d, 0), "msg");

            if (cJSON_IsString(dm))
                msg = dm->valuestring;
        } else if (cJSON_IsString(m))
            msg = m->valuestring;
        out = one_line(msg ? msg : "", msg ? strlen(msg) : 0);
    } else if (j == NULL) {
        out = one_line(body ? body : "", body ? len : 0);
    } else {
        out = one_line("", 0);
    }
    veil_json_wipe_free(j);
    return out;
}

/* A transfer that failed (cc not CURLE_OK), as an outcome. */
static gw_rc map_failure(const gw_config *cfg, const gw_model *m, CURL *h,
                         CURLcode cc, const char *errbuf, const up_buf *b,
                         const veil_logger *log, char *err, size_t err_size)
{
    const char *why = errbuf[0] ? errbuf : curl_easy_strerror(cc);
    long status = 0, request_size = 0;

    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(h, CURLINFO_REQUEST_SIZE, &request_size);
    if (b->too_big || cc == CURLE_FILESIZE_EXCEEDED) {
        veil_logf(log, VEIL_LOG_WARN,
                  "upstream: %s: answer larger than %zu MiB (HTTP %ld)", m->id,
                  UP_ANSWER_MAX >> 20, status);
        gw_put_err(err, err_size, "upstream answer too large");
        return GW_UPSTREAM;
    }
    if (b->no_mem) {
        veil_logf(log, VEIL_LOG_ERROR,
                  "upstream: %s: out of memory (answer %zu bytes)", m->id,
                  b->len);
        gw_put_err(err, err_size, "out of memory");
        return GW_NOMEM;
    }
    if (cc == CURLE_OPERATION_TIMEDOUT && request_size > 0) {
        veil_logf(log, VEIL_LOG_WARN, "upstream: %s: no answer within %u s",
                  m->id, cfg->upstream_timeout);
        gw_put_err(err, err_size, "inference backend timed out after %u s",
                   cfg->upstream_timeout);
        return GW_TIMEOUT;
    }
    if (cc == CURLE_OPERATION_TIMEDOUT || cc == CURLE_COULDNT_CONNECT ||
        cc == CURLE_COULDNT_RESOLVE_HOST || cc == CURLE_COULDNT_RESOLVE_PROXY) {
        /* A timeout before the request went out: never connected. */
        veil_logf(log, VEIL_LOG_WARN, "upstream: %s: unreachable: %s", m->id,
                  why);
        gw_put_err(err, err_size, "inference backend unavailable: %s", m->id);
        return GW_UNAVAILABLE;
    }
    veil_logf(log, VEIL_LOG_WARN, "upstream: %s: exchange failed: %s", m->id,
              why);
    gw_put_err(err, err_size, "inference backend error (%s)",
               curl_easy_strerror(cc));
    return GW_UPSTREAM;
}

/* A backend's answer other than 2xx, as an outcome. */
static gw_rc map_status(long status, const up_buf *b, char *err,
                        size_t err_size)
{
    char *msg;

    if (status == 429) {
        /* The backend is busy: not the client's fault (veil retries 503). */
        gw_put_err(err, err_size, "inference backend is busy (HTTP 429)");
        return GW_UNAVAILABLE;
    }
    if (status >= 500 && status < 600) {
        gw_put_err(err, err_size, "inference backend error (HTTP %ld)", status);
        return GW_UPSTREAM;
    }
    if (status < 400 || status >= 500) {
        gw_put_err(err, err_size, "inference backend answered HTTP %ld",
                   status);
        return GW_UPSTREAM;
    }
    if ((msg = error_message(b->data, b->len)) == NULL) {
        gw_put_err(err, err_size, "out of memory");
        return GW_NOMEM;
    }
    if (msg[0] == '\0')
        gw_put_err(err, err_size,
                   "inference backend refused the request (HTTP %ld)", status);
    else
        gw_put_err(err, err_size, "%s", msg);
    free(msg);
    return GW_REFUSED;
}

/* A finished exchange, as an outcome; on GW_OK the collected body moves
 * to out. */
static gw_rc map_answer(const gw_config *cfg, const gw_model *m, CURL *h,
                        CURLcode cc, const char *errbuf, up_buf *b,
                        const veil_logger *log, gw_upstream_result *out,
                        char *err, size_t err_size)
{
    long status = 0;
    veil_json_rc rc;

    if (cc != CURLE_OK)
        return map_failure(cfg, m, h, cc, errbuf, b, log, err, err_size);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (status < 200 || status >= 300) {
        veil_logf(log, VEIL_LOG_WARN, "upstream: %s: HTTP %ld (%zu bytes)",
                  m->id, status, b->len);
        return map_status(status, b, err, err_size);
    }
    rc = gw_answer_scan(b->data ? b->data : "", b->len, out);
    if (rc != VEIL_JSON_OK) {
        veil_logf(log, VEIL_LOG_WARN,
                  "upstream: %s: HTTP %ld with %zu bytes that are not a JSON "
                  "object with unique keys (%s)",
                  m->id, status, b->len, veil_json_rc_text(rc));
        gw_put_err(err, err_size, "%s",
                   rc == VEIL_JSON_DUPLICATE
                       ? "inference backend answered with a key twice"
                       : "inference backend answered with something that is "
                         "not JSON");
        return GW_UPSTREAM;
    }
    out->body = b->data;
    out->len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return GW_OK;
}

/* ---- the exchange ------------------------------------------------------- */

/* The request's headers: the fixed ones, and the backend's API key when
 * the model has a key file.  GW_OK with *out set (free with
 * headers_free). */
static gw_rc make_headers(const gw_model *m, const veil_logger *log,
                          struct curl_slist **out, char *err, size_t err_size)
{
    static const char *const fixed[] = {
        "Content-Type: application/json", "Accept: application/json",
        "Expect:", /* no 100-continue round trip for large requests */
    };
    char key[UP_KEY_MAX + 1], auth[UP_KEY_MAX + 32];
    struct curl_slist *headers = NULL, *l;
    const char *why;

    *out = NULL;
    if (m->upstream_key_file) {
        if (read_key(m->upstream_key_file, key, sizeof key, &why) != 0) {
            veil_logf(log, VEIL_LOG_ERROR,
                      "upstream: %s: cannot read the key file %s: %s", m->id,
                      m->upstream_key_file, why);
            gw_put_err(err, err_size,
                       "the gateway cannot read the inference backend's "
                       "API key");
            return GW_INTERNAL;
        }
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
        veil_wipe(key, sizeof key);
        headers = curl_slist_append(NULL, auth);
        veil_wipe(auth, sizeof auth);
        if (headers == NULL)
            goto no_memory;
    }
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        if ((l = curl_slist_append(headers, fixed[i])) == NULL)
            goto no_memory;
        headers = l;
    }
    *out = headers;
    return GW_OK;
no_memory:
    headers_free(headers);
    gw_put_err(err, err_size, "out of memory");
    return GW_NOMEM;
}

gw_rc gw_http_call(const gw_config *cfg, const gw_model *m, const char *path,
                   const char *request, size_t len, const veil_logger *log,
                   gw_upstream_result *out, char *err, size_t err_size)
{
    char *url = NULL, errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = NULL;
    up_buf b;
    up_xfer x;
    CURL *h = NULL;
    CURLcode cc;
    long status = 0;
    struct timespec t0, t1;
    gw_rc rc;

    buf_init(&b, UP_ANSWER_MAX);
    if (!up_init() || (url = make_url(m->upstream, path)) == NULL) {
        gw_put_err(err, err_size, "cannot start an HTTP exchange");
        return GW_INTERNAL;
    }
    if ((rc = make_headers(m, log, &headers, err, err_size)) != GW_OK)
        goto out;
    if ((h = take()) == NULL) {
        gw_put_err(err, err_size, "out of memory");
        rc = GW_NOMEM;
        goto out;
    }
    common_options(h, m->upstream, url, (long)cfg->upstream_timeout * 1000L,
                   (long)cfg->connect_timeout * 1000L, errbuf);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, request);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)UP_ANSWER_MAX);
    x.h = h;
    x.sink = &b.sink;
    x.begun = 0;
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &x);

    clock_gettime(CLOCK_MONOTONIC, &t0);
    cc = curl_easy_perform(h);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    veil_logf(log, VEIL_LOG_DEBUG,
              "upstream: %s: HTTP %ld, sent %zu bytes, got %zu bytes in %ld "
              "ms (curl %d)",
              m->id, status, len, b.len,
              (long)(t1.tv_sec - t0.tv_sec) * 1000L +
                  (t1.tv_nsec - t0.tv_nsec) / 1000000L,
              (int)cc);
    rc = map_answer(cfg, m, h, cc, errbuf, &b, log, out, err, err_size);
out:
    give_back(h);
    headers_free(headers);
    free(url);
    buf_free(&b);
    return rc;
}

int gw_upstream_alive(const gw_config *cfg, const gw_model *m,
                      const veil_logger *log)
{
    char *url, errbuf[CURL_ERROR_SIZE] = "";
    long status = 0, connect_ms;
    CURL *h;

    if (m == NULL || m->upstream == NULL)
        return 0;
    if (strcmp(m->upstream, "echo") == 0)
        return 1;
    if (!up_init() || (url = make_url(m->upstream, "/models")) == NULL)
        return 0;
    if ((h = take()) == NULL) {
        free(url);
        return 0;
    }
    connect_ms =
        cfg && cfg->connect_timeout > 0 &&
                (long)cfg->connect_timeout * 1000L < UP_ALIVE_TIMEOUT_MS
            ? (long)cfg->connect_timeout * 1000L
            : UP_ALIVE_TIMEOUT_MS;
    common_options(h, m->upstream, url, UP_ALIVE_TIMEOUT_MS, connect_ms,
                   errbuf);
    curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_discard);
    curl_easy_perform(h);
    /* Any status line counts, even when the body did not come in time. */
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (status == 0)
        veil_logf(log, VEIL_LOG_DEBUG, "upstream: %s: health probe failed: %s",
                  m->id, errbuf[0] ? errbuf : "no answer");
    give_back(h);
    free(url);
    return status > 0;
}
