/* The inference backend: an OpenAI-compatible server reached over libcurl
 * (POST <base>/chat/completions), or the built-in echo model; and the one
 * scan of a decrypted request (gw_request_scan, protocol/json_scan.h) that
 * decides what is forwarded: the request's own bytes, edited in place only
 * to turn "stream" off and to set a cache salt.  The backend's answer is
 * checked the same way (one JSON object, no key twice) and handed back as
 * it came, with the place of its "_metadata".
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
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "gateway.h"

/* Idle handles kept; more threads than this still work (handles beyond it
 * are made and freed per call). */
#define UP_POOL_MAX 32
/* Largest answer taken from the backend. */
#define UP_ANSWER_MAX ((size_t)64 * 1024 * 1024)
/* Longest detail text passed on from a backend's 4xx answer (bytes). */
#define UP_DETAIL_MAX 300
/* /healthz probe: GET <base>/models, whole exchange within this. */
#define UP_ALIVE_TIMEOUT_MS 2000L
/* Longest API key read from a key file. */
#define UP_KEY_MAX 4096
/* A JSON text printed by cJSON never needs more than this. */
#define UP_PRINT_MAX ((size_t)1 << 30)

/* ---- small helpers ------------------------------------------------------ */

static void wipe(void *p, size_t len)
{
    if (p != NULL && len > 0)
        explicit_bzero(p, len);
}

static void wipe_free(void *p, size_t len)
{
    if (p == NULL)
        return;
    wipe(p, len);
    free(p);
}

static void wipe_free_str(char *s)
{
    if (s != NULL)
        wipe_free(s, strlen(s));
}

/* Wipes every string in a tree (it may hold a prompt or an answer). */
static void json_wipe(cJSON *j)
{
    for (cJSON *c = j; c; c = c->next) {
        if (c->valuestring)
            wipe(c->valuestring, strlen(c->valuestring));
        if (c->string)
            wipe(c->string, strlen(c->string));
        if (c->child)
            json_wipe(c->child);
    }
}

static void json_wipe_delete(cJSON *j)
{
    if (j == NULL)
        return;
    json_wipe(j);
    cJSON_Delete(j);
}

/* Prints j into a buffer of our own (cJSON_Print grows its buffer with
 * realloc, leaving unwiped copies): calloc'd, so the tail past the text is
 * zero.  NULL: no memory (or absurd size). */
static char *print_secret(cJSON *j, size_t hint, size_t *len)
{
    size_t size = hint < 256 ? 256 : hint;

    while (size <= UP_PRINT_MAX) {
        char *buf = calloc(1, size);

        if (buf == NULL)
            return NULL;
        if (cJSON_PrintPreallocated(j, buf, (int)size, 0)) {
            *len = strlen(buf);
            return buf;
        }
        wipe_free(buf, size);
        size *= 2;
    }
    return NULL;
}

static const char *const level_names[] = {"error", "warn", "info", "debug"};

static void up_log(const gw_config *cfg, veil_log_level level, const char *fmt,
                   ...) __attribute__((format(printf, 3, 4)));

/* One line on stderr, when cfg->log_level lets it through.  Never give it
 * a request, an answer, a detail text from the backend or a key. */
static void up_log(const gw_config *cfg, veil_log_level level, const char *fmt,
                   ...)
{
    const char *want = cfg && cfg->log_level ? cfg->log_level : "info";
    unsigned max = VEIL_LOG_INFO;
    char line[512];
    va_list ap;
    int n;

    for (unsigned i = 0; i < sizeof level_names / sizeof level_names[0]; i++)
        if (strcmp(want, level_names[i]) == 0)
            max = i;
    if ((unsigned)level > max)
        return;
    n = snprintf(line, sizeof line,
                 "veild: %s: upstream: ", level_names[level]);
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    n = (int)strlen(line);
    line[n] = '\n';
    line[n + 1] = '\0';
    fputs(line, stderr); /* one call: lines of threads do not mix */
}

/* out = status with a copy of the detail text (printf style). */
static void set_result(gw_upstream_result *out, int status, const char *fmt,
                       ...) __attribute__((format(printf, 3, 4)));

static void set_result(gw_upstream_result *out, int status, const char *fmt,
                       ...)
{
    char text[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    out->status = status;
    out->body = strdup(text);
    out->len = out->body ? strlen(out->body) : 0;
}

/* base (".../v1", trailing '/' dropped) + path, malloc'd. */
static char *make_url(const char *base, const char *path)
{
    size_t n = strlen(base), size;
    char *url;

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

/* Options every upstream exchange shares. */
static void common_options(CURL *h, const char *url, long timeout_ms,
                           long connect_ms, char *errbuf)
{
    curl_easy_setopt(h, CURLOPT_URL, url);
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
    char buf[UP_KEY_MAX + 2];
    size_t len = 0, start, end;
    ssize_t r;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

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
            wipe(buf, sizeof buf);
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
        wipe(buf, sizeof buf);
        return -1;
    }
    memcpy(out, buf + start, end - start);
    out[end - start] = '\0';
    wipe(buf, sizeof buf);
    return 0;
}

/* Header lines may hold the key: wiped before they are freed. */
static void headers_free(struct curl_slist *list)
{
    for (struct curl_slist *l = list; l; l = l->next)
        wipe(l->data, strlen(l->data));
    curl_slist_free_all(list);
}

/* ---- mapping the backend's answers -------------------------------------- */

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if none. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t want;
    unsigned c = s[0];

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        want = 2;
    else if (c >= 0xe0 && c <= 0xef)
        want = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        want = 4;
    else
        return 0;
    if (want > n)
        return 0;
    for (size_t i = 1; i < want; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    if (want == 3 && ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] > 0x9f)))
        return 0; /* overlong, surrogate */
    if (want == 4 && ((c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] > 0x8f)))
        return 0; /* overlong, beyond U+10FFFF */
    return want;
}

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
        if (c < 0x20 || c == 0x7f || (l = utf8_len(s + i, n - i)) == 0) {
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

static int on_answer_member(void *ctx, const char *text,
                            const veil_json_member *m)
{
    gw_upstream_result *out = ctx;

    out->members++;
    if (veil_json_key_is(text, m, "_metadata")) {
        out->metadata = *m;
        out->has_metadata = 1;
    }
    return 0;
}

/* Checks an answer (one JSON object, no key twice) and notes in out where
 * its "_metadata" and its '}' are. */
static veil_json_rc scan_answer(const char *text, size_t len,
                                gw_upstream_result *out)
{
    out->members = 0;
    out->has_metadata = 0;
    return veil_json_scan_object(text, len, on_answer_member, out, NULL,
                                 &out->close, NULL);
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
    json_wipe_delete(j);
    return out;
}

/* A finished exchange, mapped to the client's status into out.  On 200
 * the collected body moves to out. */
static void map_answer(const gw_config *cfg, const gw_model *m, CURL *h,
                       CURLcode cc, const char *errbuf, up_buf *b,
                       gw_upstream_result *out)
{
    long status = 0;
    long request_size = 0;

    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(h, CURLINFO_REQUEST_SIZE, &request_size);
    if (cc != CURLE_OK) {
        const char *why = errbuf[0] ? errbuf : curl_easy_strerror(cc);

        if (b->too_big || cc == CURLE_FILESIZE_EXCEEDED) {
            up_log(cfg, VEIL_LOG_WARN,
                   "%s: answer larger than %zu MiB (HTTP %ld)", m->id,
                   UP_ANSWER_MAX >> 20, status);
            set_result(out, 502, "upstream answer too large");
        } else if (b->no_mem) {
            up_log(cfg, VEIL_LOG_ERROR, "%s: out of memory (answer %zu bytes)",
                   m->id, b->len);
            set_result(out, 500, "out of memory");
        } else if (cc == CURLE_OPERATION_TIMEDOUT && request_size > 0) {
            up_log(cfg, VEIL_LOG_WARN, "%s: no answer within %u s", m->id,
                   cfg->upstream_timeout);
            set_result(out, 504, "inference backend timed out after %u s",
                       cfg->upstream_timeout);
        } else if (cc == CURLE_OPERATION_TIMEDOUT ||
                   cc == CURLE_COULDNT_CONNECT ||
                   cc == CURLE_COULDNT_RESOLVE_HOST ||
                   cc == CURLE_COULDNT_RESOLVE_PROXY) {
            /* A timeout before the request went out: never connected. */
            up_log(cfg, VEIL_LOG_WARN, "%s: unreachable: %s", m->id, why);
            set_result(out, 503, "inference backend unavailable: %s", m->id);
        } else {
            up_log(cfg, VEIL_LOG_WARN, "%s: exchange failed: %s", m->id, why);
            set_result(out, 502, "inference backend error (%s)",
                       curl_easy_strerror(cc));
        }
        return;
    }
    if (status >= 200 && status < 300) {
        veil_json_rc rc = scan_answer(b->data ? b->data : "", b->len, out);

        if (rc != VEIL_JSON_OK) {
            up_log(cfg, VEIL_LOG_WARN,
                   "%s: HTTP %ld with %zu bytes that are not a JSON object "
                   "with unique keys (%s)",
                   m->id, status, b->len, veil_json_rc_text(rc));
            set_result(out, 502,
                       rc == VEIL_JSON_DUPLICATE
                           ? "inference backend answered with a key twice"
                           : "inference backend answered with something that "
                             "is not JSON");
            return;
        }
        out->status = 200;
        out->body = b->data;
        out->len = b->len;
        b->data = NULL;
        b->len = b->cap = 0;
        return;
    }
    up_log(cfg, VEIL_LOG_WARN, "%s: HTTP %ld (%zu bytes)", m->id, status,
           b->len);
    if (status == 429) {
        /* The backend is busy: not the client's fault (veil retries 503). */
        set_result(out, 503, "inference backend is busy (HTTP 429)");
    } else if (status >= 400 && status < 500) {
        char *msg = error_message(b->data, b->len);

        if (msg == NULL) {
            set_result(out, 500, "out of memory");
        } else if (msg[0] == '\0') {
            set_result(out, 400,
                       "inference backend refused the request "
                       "(HTTP %ld)",
                       status);
            free(msg);
        } else {
            out->status = 400;
            out->body = msg;
            out->len = strlen(msg);
        }
    } else if (status >= 500 && status < 600) {
        set_result(out, 502, "inference backend error (HTTP %ld)", status);
    } else {
        set_result(out, 502, "inference backend answered HTTP %ld", status);
    }
}

/* ---- echo --------------------------------------------------------------- */

static size_t count_words(const char *s)
{
    size_t n = 0;
    int in = 0;

    for (; *s; s++) {
        int space = *s == ' ' || *s == '\t' || *s == '\n' || *s == '\r' ||
                    *s == '\f' || *s == '\v';

        if (!space && !in)
            n++;
        in = !space;
    }
    return n;
}

/* A message's content as text: a string, or the "text" parts of a list
 * joined.  malloc'd ("" when there is none); NULL: no memory. */
static char *content_text(const cJSON *msg)
{
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(msg, "content");
    const cJSON *part;
    size_t n = 0;
    char *out;

    if (cJSON_IsString(content))
        return strdup(content->valuestring);
    if (!cJSON_IsArray(content))
        return strdup("");
    cJSON_ArrayForEach(part, content)
    {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");

        if (cJSON_IsString(t))
            n += strlen(t->valuestring);
    }
    if ((out = malloc(n + 1)) == NULL)
        return NULL;
    n = 0;
    cJSON_ArrayForEach(part, content)
    {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");

        if (cJSON_IsString(t)) {
            size_t l = strlen(t->valuestring);

            memcpy(out + n, t->valuestring, l);
            n += l;
        }
    }
    out[n] = '\0';
    return out;
}

/* The echo answer, or NULL with *why saying what is wrong with the request
 * (*why NULL: no memory). */
/* The echo answer to a request scanned into rq: only its "messages" is
 * parsed (into a tree: the echo is for trying out, not for load). */
static char *echo_answer(const char *request, size_t len, const gw_request *rq,
                         const char **why)
{
    cJSON *messages = NULL, *a = NULL, *choices = NULL, *choice = NULL;
    cJSON *msg = NULL, *usage = NULL;
    const cJSON *mm;
    const char *model = rq->model_len >= 0 ? rq->model : "";
    char *content = NULL, *text = NULL, id[64];
    uint8_t rnd[12];
    size_t prompt_words = 0, completion_words, text_len, hint;
    static unsigned long counter;
    int ok = 1;

    *why = NULL;
    if (rq->has_messages && rq->m_messages.value_end <= len)
        messages = cJSON_ParseWithLength(request + rq->m_messages.value,
                                         rq->m_messages.value_end -
                                             rq->m_messages.value);
    if (!cJSON_IsArray(messages)) {
        *why = "no \"messages\" array";
        goto out;
    }
    cJSON_ArrayForEach(mm, messages)
    {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(mm, "role");
        char *t = content_text(mm);

        if (t == NULL)
            goto out;
        prompt_words += count_words(t);
        if (cJSON_IsString(role) && strcmp(role->valuestring, "user") == 0) {
            wipe_free_str(content);
            content = t;
        } else {
            wipe_free_str(t);
        }
    }
    if (content == NULL && (content = strdup("")) == NULL)
        goto out;
    completion_words = count_words(content);

    if (getrandom(rnd, sizeof rnd, 0) == (ssize_t)sizeof rnd) {
        char *p = id + snprintf(id, sizeof id, "chatcmpl-echo-");

        for (size_t i = 0; i < sizeof rnd; i++)
            p += snprintf(p, 3, "%02x", rnd[i]);
    } else {
        snprintf(id, sizeof id, "chatcmpl-echo-%lx%lx", (unsigned long)time(0),
                 __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED));
    }
    a = cJSON_CreateObject();
    ok = a != NULL;
    ok = ok && cJSON_AddStringToObject(a, "id", id);
    ok = ok && cJSON_AddStringToObject(a, "object", "chat.completion");
    ok = ok && cJSON_AddNumberToObject(a, "created", (double)time(NULL));
    ok = ok && cJSON_AddStringToObject(a, "model", model);
    ok = ok && (choices = cJSON_AddArrayToObject(a, "choices")) != NULL;
    ok = ok && (choice = cJSON_CreateObject()) != NULL;
    ok = ok && cJSON_AddItemToArray(choices, choice);
    ok = ok && cJSON_AddNumberToObject(choice, "index", 0);
    ok = ok && (msg = cJSON_AddObjectToObject(choice, "message")) != NULL;
    ok = ok && cJSON_AddStringToObject(msg, "role", "assistant");
    ok = ok && cJSON_AddStringToObject(msg, "content", content);
    ok = ok && cJSON_AddStringToObject(choice, "finish_reason", "stop");
    ok = ok && (usage = cJSON_AddObjectToObject(a, "usage")) != NULL;
    ok = ok &&
         cJSON_AddNumberToObject(usage, "prompt_tokens", (double)prompt_words);
    ok = ok && cJSON_AddNumberToObject(usage, "completion_tokens",
                                       (double)completion_words);
    ok = ok &&
         cJSON_AddNumberToObject(usage, "total_tokens",
                                 (double)(prompt_words + completion_words));
    if (!ok)
        goto out;
    /* Escaping makes a character at most six. */
    hint = 6 * strlen(content) + 512;
    hint += 6 * strlen(model);
    text = print_secret(a, hint, &text_len);
out:
    wipe_free_str(content);
    json_wipe_delete(a);
    json_wipe_delete(messages);
    return text;
}

char *gw_echo_answer(const char *request, size_t len)
{
    const char *why;
    gw_request rq;
    char err[320];

    if (request == NULL ||
        gw_request_scan(NULL, request, len, &rq, err, sizeof err) != 0)
        return NULL;
    return echo_answer(request, len, &rq, &why);
}

/* ---- the exchange ------------------------------------------------------- */

/* ---- the request: one scan, and the edits -------------------------------- */

typedef struct scan_ctx {
    const gw_config *cfg;
    gw_request *rq;
    const char *variant; /* a case variant of this name was seen */
} scan_ctx;

static int on_member(void *ctx, const char *text, const veil_json_member *m)
{
    static const char *const watched[] = {"model", "stream"};
    scan_ctx *c = ctx;
    gw_request *rq = c->rq;

    rq->members++;
    for (size_t i = 0; i < sizeof watched / sizeof watched[0]; i++) {
        if (veil_json_key_is(text, m, watched[i])) {
            if (i == 0) {
                rq->model_len = veil_json_string_value(text, m, rq->model,
                                                       sizeof rq->model);
            } else {
                rq->m_stream = *m;
                rq->stream = m->value_end - m->value == 4 &&
                             memcmp(text + m->value, "true", 4) == 0;
            }
            return 0;
        }
        if (veil_json_key_is_nocase(text, m, watched[i])) {
            c->variant = watched[i];
            return 1;
        }
    }
    if (veil_json_key_is(text, m, "stream_options")) {
        rq->m_stream_options = *m;
        rq->has_stream_options = 1;
    }
    if (veil_json_key_is(text, m, "messages")) {
        rq->m_messages = *m;
        rq->has_messages = 1;
    }
    for (size_t i = 0; c->cfg && i < c->cfg->n_models; i++) {
        const char *f = c->cfg->models[i].cache_salt_field;

        if (f && veil_json_key_is(text, m, f)) {
            rq->m_salt[i] = *m;
            rq->has_salt[i] = 1;
        }
    }
    return 0;
}

int gw_request_scan(const gw_config *cfg, const char *text, size_t len,
                    gw_request *out, char *why, size_t why_size)
{
    scan_ctx c = {cfg, out, NULL};
    size_t where = 0;
    veil_json_rc rc;

    memset(out, 0, sizeof *out);
    out->model_len = -1;
    rc = veil_json_scan_object(text, len, on_member, &c, NULL, &out->close,
                               &where);
    switch (rc) {
    case VEIL_JSON_OK:
        return 0;
    case VEIL_JSON_STOPPED:
        snprintf(why, why_size,
                 "the request has a key \"%s\" in another case; only "
                 "\"%s\" is taken",
                 c.variant, c.variant);
        break;
    case VEIL_JSON_DUPLICATE:
        snprintf(why, why_size,
                 "the request has a key twice (at byte %zu); every key "
                 "must be unique",
                 where);
        break;
    case VEIL_JSON_NOT_OBJECT:
        snprintf(why, why_size, "the decrypted request is not a JSON object");
        break;
    case VEIL_JSON_NOMEM:
        snprintf(why, why_size, "out of memory");
        break;
    default:
        snprintf(why, why_size,
                 "the decrypted request is not a JSON object: %s at byte "
                 "%zu",
                 veil_json_rc_text(rc), where);
        break;
    }
    memset(out, 0, sizeof *out);
    out->model_len = -1;
    return -1;
}

static int edit_order(const void *a, const void *b)
{
    const veil_json_edit *x = a, *y = b;

    return x->at < y->at ? -1 : x->at > y->at;
}

static int member_order(const void *a, const void *b)
{
    const veil_json_member *x = a, *y = b;

    return x->key < y->key ? -1 : x->key > y->key;
}

/* The request to send: the client's text as it is, or a copy with the
 * edits: "stream": true sent as false and "stream_options" dropped
 * (backends refuse it without streaming); the model's salt field set.
 * *copy is set when a copy was made (the caller wipes and frees it).
 * 0, or -1: no memory. */
static int prepare_request(const gw_config *cfg, const gw_model *m,
                           const char *request, size_t len,
                           const gw_request *rq, const char *salt, char **copy,
                           size_t *copy_len)
{
    veil_json_member rm[2];
    veil_json_edit edits[4];
    size_t n_rm = 0, n = 0, mi = (size_t)(m - cfg->models), size;
    char *salt_member = NULL;
    int with_salt = salt && m->cache_salt_field && mi < cfg->n_models;

    *copy = NULL;
    *copy_len = 0;
    if (rq->stream && rq->has_stream_options)
        rm[n_rm++] = rq->m_stream_options;
    if (with_salt && rq->has_salt[mi])
        rm[n_rm++] = rq->m_salt[mi];
    if (n_rm == 2)
        qsort(rm, n_rm, sizeof rm[0], member_order);
    n = veil_json_remove_members(request, len, rm, n_rm, edits);
    if (rq->stream)
        edits[n++] = (veil_json_edit){rq->m_stream.value, 4, "false", 5};
    if (with_salt) {
        /* the field and the salt are plain ASCII: no escaping needed */
        size = strlen(m->cache_salt_field) + strlen(salt) + 8;
        if ((salt_member = malloc(size)) == NULL)
            return -1;
        snprintf(salt_member, size, "%s\"%s\":\"%s\"",
                 rq->members > n_rm ? "," : "", m->cache_salt_field, salt);
        edits[n++] =
            (veil_json_edit){rq->close, 0, salt_member, strlen(salt_member)};
    }
    if (n == 0)
        return 0;
    qsort(edits, n, sizeof edits[0], edit_order);
    size = veil_json_spliced_len(len, edits, n);
    if (size == (size_t)-1 || (*copy = malloc(size + 1)) == NULL) {
        free(salt_member);
        return -1;
    }
    veil_json_splice(request, len, edits, n, *copy);
    (*copy)[size] = '\0';
    *copy_len = size;
    free(salt_member);
    return 0;
}

void gw_upstream_call(const gw_config *cfg, const gw_model *m,
                      const char *request, size_t len, const gw_request *rq,
                      const char *salt, gw_upstream_result *out)
{
    char *copy = NULL, *url = NULL, errbuf[CURL_ERROR_SIZE] = "";
    char key[UP_KEY_MAX + 1], auth[UP_KEY_MAX + 32];
    const char *body = request, *why;
    size_t body_len = len, copy_len = 0;
    struct curl_slist *headers = NULL, *l;
    up_buf b;
    up_xfer x;
    CURL *h = NULL;
    CURLcode cc;
    long status = 0;
    struct timespec t0, t1;
    static const char *const fixed[] = {
        "Content-Type: application/json", "Accept: application/json",
        "Expect:", /* no 100-continue round trip for large requests */
    };

    memset(out, 0, sizeof *out);
    buf_init(&b, UP_ANSWER_MAX);
    if (cfg == NULL || m == NULL || m->id == NULL || m->upstream == NULL) {
        set_result(out, 500, "no inference backend configured");
        return;
    }
    if (rq == NULL || prepare_request(cfg, m, request, len, rq, salt, &copy,
                                      &copy_len) != 0) {
        set_result(out, 500, rq ? "out of memory" : "no request");
        return;
    }
    if (copy != NULL) {
        body = copy;
        body_len = copy_len;
    }
    if (strcmp(m->upstream, "echo") == 0) {
        /* the request as it came: the edits do not concern the echo */
        char *a = echo_answer(request, len, rq, &why);

        if (a == NULL && why != NULL) {
            up_log(cfg, VEIL_LOG_INFO,
                   "%s: bad request for the echo model (%s)", m->id, why);
            set_result(out, 400, "request is not a chat completion request: %s",
                       why);
        } else if (a == NULL) {
            set_result(out, 500, "out of memory");
        } else if (scan_answer(a, strlen(a), out) != VEIL_JSON_OK) {
            wipe_free_str(a); /* cannot be: echo_answer prints JSON */
            set_result(out, 500, "the echo answer is not JSON");
        } else {
            out->status = 200;
            out->body = a;
            out->len = strlen(a);
        }
        goto out;
    }
    if (!up_init() ||
        (url = make_url(m->upstream, "/chat/completions")) == NULL) {
        set_result(out, 500, "cannot start an HTTP exchange");
        goto out;
    }
    if (m->upstream_key_file) {
        if (read_key(m->upstream_key_file, key, sizeof key, &why) != 0) {
            up_log(cfg, VEIL_LOG_ERROR, "%s: cannot read the key file %s: %s",
                   m->id, m->upstream_key_file, why);
            set_result(out, 500,
                       "the gateway cannot read the inference backend's "
                       "API key");
            goto out;
        }
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
        wipe(key, sizeof key);
        l = curl_slist_append(headers, auth);
        wipe(auth, sizeof auth);
        if (l == NULL)
            goto no_memory;
        headers = l;
    }
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        if ((l = curl_slist_append(headers, fixed[i])) == NULL)
            goto no_memory;
        headers = l;
    }
    if ((h = take()) == NULL)
        goto no_memory;

    common_options(h, url, (long)cfg->upstream_timeout * 1000L,
                   (long)cfg->connect_timeout * 1000L, errbuf);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
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
    up_log(cfg, VEIL_LOG_DEBUG,
           "%s: HTTP %ld, sent %zu bytes, got %zu bytes in %ld ms (curl %d)",
           m->id, status, body_len, b.len,
           (long)(t1.tv_sec - t0.tv_sec) * 1000L +
               (t1.tv_nsec - t0.tv_nsec) / 1000000L,
           (int)cc);
    map_answer(cfg, m, h, cc, errbuf, &b, out);
    goto out;

no_memory:
    set_result(out, 500, "out of memory");
out:
    give_back(h);
    headers_free(headers);
    free(url);
    wipe_free(copy, copy_len);
    buf_free(&b);
}

int gw_upstream_alive(const gw_config *cfg, const gw_model *m)
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
    common_options(h, url, UP_ALIVE_TIMEOUT_MS, connect_ms, errbuf);
    curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_discard);
    curl_easy_perform(h);
    /* Any status line counts, even when the body did not come in time. */
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (status == 0)
        up_log(cfg, VEIL_LOG_DEBUG, "%s: health probe failed: %s", m->id,
               errbuf[0] ? errbuf : "no answer");
    give_back(h);
    free(url);
    return status > 0;
}
