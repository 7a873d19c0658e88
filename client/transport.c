/* HTTP for the client: libcurl easy handles kept in a small pool, so that
 * connections (and TLS sessions) are reused across requests and threads. */
#include "config.h"

#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "client_int.h"

#define POOL_MAX 8
/* Largest answer read: a 10 MiB plaintext in base64 plus the wrapping. */
#define MAX_RESPONSE (20u * 1024u * 1024u)
/* Largest header and trailer fields of one exchange, interim responses
 * included.  libcurl refuses a header section above 300 KiB, but keeps
 * every line of a chunked answer's trailer section, however many. */
#define MAX_FIELDS (512u * 1024u)

struct veil_cl_transport {
    char *ca_file;
    unsigned timeout_ms;
    pthread_mutex_t lock;
    CURL *idle[POOL_MAX];
    size_t n_idle;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static int curl_ok;

static void curl_init_once(void)
{
    curl_ok = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
}

veil_cl_transport *veil_cl_transport_new(const char *ca_file,
                                         unsigned timeout_ms)
{
    pthread_once(&curl_once, curl_init_once);
    if (!curl_ok)
        return NULL;
    veil_cl_transport *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    if (ca_file && (t->ca_file = strdup(ca_file)) == NULL) {
        free(t);
        return NULL;
    }
    t->timeout_ms = timeout_ms;
    pthread_mutex_init(&t->lock, NULL);
    return t;
}

void veil_cl_transport_free(veil_cl_transport *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->n_idle; i++)
        curl_easy_cleanup(t->idle[i]);
    pthread_mutex_destroy(&t->lock);
    free(t->ca_file);
    free(t);
}

static CURL *take(veil_cl_transport *t)
{
    CURL *h = NULL;
    pthread_mutex_lock(&t->lock);
    if (t->n_idle > 0)
        h = t->idle[--t->n_idle];
    pthread_mutex_unlock(&t->lock);
    if (h != NULL) {
        curl_easy_reset(h); /* keeps its live connections */
        return h;
    }
    return curl_easy_init();
}

static void give_back(veil_cl_transport *t, CURL *h)
{
    pthread_mutex_lock(&t->lock);
    if (t->n_idle < POOL_MAX) {
        t->idle[t->n_idle++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&t->lock);
    if (h != NULL)
        curl_easy_cleanup(h);
}

typedef struct sink {
    veil_cl_http_response *resp;
    CURL *h;
    size_t cap;
    size_t max;  /* the largest 200 body */
    size_t seen; /* body bytes received, kept or not */
    int too_big;
    size_t fields_seen; /* header and trailer bytes received */
    int fields_too_big;
} sink;

static size_t on_body(char *data, size_t size, size_t n, void *ctx)
{
    sink *s = ctx;
    size_t len = size * n, keep = len;
    veil_cl_http_response *r = s->resp;
    long status = 0;
    curl_easy_getinfo(s->h, CURLINFO_RESPONSE_CODE, &status);
    s->seen += len;
    if (s->seen > (status == 200 ? s->max : MAX_RESPONSE)) {
        s->too_big = 1;
        return 0; /* aborts the transfer */
    }
    /* An error answer is read for its detail only: its head is kept, the
     * rest dropped, so that it never costs more memory than that. */
    if (status != 200)
        keep = r->len >= VEIL_CL_MAX_ERROR_BODY ? 0
               : len < VEIL_CL_MAX_ERROR_BODY - r->len
                   ? len
                   : VEIL_CL_MAX_ERROR_BODY - r->len;
    if (keep == 0)
        return len;
    if (r->len + keep + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < r->len + keep + 1)
            cap *= 2;
        char *b = realloc(r->body, cap);
        if (b == NULL)
            return 0;
        r->body = b;
        s->cap = cap;
    }
    memcpy(r->body + r->len, data, keep);
    r->len += keep;
    r->body[r->len] = '\0';
    return len;
}

/* How on_header keeps a field's value. */
enum keep {
    KEEP_SIGNED, /* a second copy or an overlong value marks the answer's
                  * headers bad: a verifier must not pick one of two
                  * signatures */
    KEEP_LIST,   /* lines joined with ", " (RFC 9110 5.3); too long: dropped */
    KEEP_ONE,    /* a second copy or an overlong value: dropped */
};

/* Copies a header's value (trimmed) into out, as the field's kind says;
 * *bad is the flag KEEP_SIGNED sets, *dropped this field's bit. */
static void keep_value(enum keep kind, int *bad, unsigned *dropped,
                       unsigned bit, const char *v, size_t len, char *out,
                       size_t size)
{
    size_t have = strlen(out);

    while (len > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        len--;
    }
    while (len > 0 && (v[len - 1] == '\r' || v[len - 1] == '\n' ||
                       v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
    if (*dropped & bit)
        return;
    if (kind == KEEP_LIST && have > 0 && len > 0) {
        if (have + 2 + len < size) {
            memcpy(out + have, ", ", 2);
            memcpy(out + have + 2, v, len);
            out[have + 2 + len] = '\0';
            return;
        }
    } else if (have == 0 && len < size) {
        memcpy(out, v, len);
        out[len] = '\0';
        return;
    } else if (kind == KEEP_LIST && len == 0) {
        return; /* an empty line adds nothing to a list */
    }
    if (kind == KEEP_SIGNED) {
        *bad = 1;
        return;
    }
    *dropped |= bit;
    out[0] = '\0';
}

static size_t on_header(char *data, size_t size, size_t n, void *ctx)
{
    sink *s = ctx;
    size_t len = size * n;
    veil_cl_http_response *r = s->resp;
    static const char name[] = "retry-after:";
    static const struct {
        const char *name;
        size_t off, size;
        int keys; /* its doubles mark keys_headers_bad */
        enum keep kind;
    } veil[] = {
        {"x-veil-signature:", offsetof(veil_cl_http_response, veil_signature),
         sizeof r->veil_signature, 0, KEEP_SIGNED},
        {"x-veil-signed-at:", offsetof(veil_cl_http_response, veil_signed_at),
         sizeof r->veil_signed_at, 0, KEEP_SIGNED},
        {"x-veil-signing-key:",
         offsetof(veil_cl_http_response, veil_signing_key),
         sizeof r->veil_signing_key, 0, KEEP_SIGNED},
        {"x-veil-keys-signature:",
         offsetof(veil_cl_http_response, keys_signature),
         sizeof r->keys_signature, 1, KEEP_SIGNED},
        {"x-veil-keys-signed-at:",
         offsetof(veil_cl_http_response, keys_signed_at),
         sizeof r->keys_signed_at, 1, KEEP_SIGNED},
        {"x-veil-keys-expires:", offsetof(veil_cl_http_response, keys_expires),
         sizeof r->keys_expires, 1, KEEP_SIGNED},
        {"cache-control:", offsetof(veil_cl_http_response, cache_control),
         sizeof r->cache_control, 1, KEEP_LIST},
        {"age:", offsetof(veil_cl_http_response, age), sizeof r->age, 1,
         KEEP_ONE},
        {"location:", offsetof(veil_cl_http_response, location),
         sizeof r->location, 1, KEEP_ONE},
        {"content-type:", offsetof(veil_cl_http_response, content_type),
         sizeof r->content_type, 1, KEEP_ONE},
    };
    if ((s->fields_seen += len) > MAX_FIELDS) {
        s->fields_too_big = 1;
        return 0; /* aborts the transfer */
    }
    /* A status line starts a new response (an interim 1xx one, say): only
     * the final response's headers count. */
    if (len > 5 && strncmp(data, "HTTP/", 5) == 0) {
        r->veil_signature[0] = r->veil_signed_at[0] = '\0';
        r->veil_signing_key[0] = '\0';
        r->veil_headers_bad = 0;
        r->keys_signature[0] = r->keys_signed_at[0] = '\0';
        r->keys_expires[0] = r->cache_control[0] = r->content_type[0] = '\0';
        r->age[0] = r->location[0] = '\0';
        r->keys_headers_bad = 0;
        r->fields_dropped = 0;
        r->age_dropped = 0;
        r->retry_after_ms = -1;
        return len;
    }
    if (len > sizeof name - 1 && len < 200 &&
        strncasecmp(data, name, sizeof name - 1) == 0) {
        char v[200];
        size_t vlen = len - (sizeof name - 1);
        memcpy(v, data + sizeof name - 1, vlen);
        v[vlen] = '\0';
        r->retry_after_ms = veil_cl_retry_after_ms(v);
    }
    for (size_t i = 0; i < sizeof veil / sizeof veil[0]; i++) {
        size_t nl = strlen(veil[i].name);
        if (len >= nl && strncasecmp(data, veil[i].name, nl) == 0)
            keep_value(veil[i].kind,
                       veil[i].keys ? &r->keys_headers_bad
                                    : &r->veil_headers_bad,
                       &r->fields_dropped, 1u << i, data + nl, len - nl,
                       (char *)r + veil[i].off, veil[i].size);
        if (veil[i].off == offsetof(veil_cl_http_response, age) &&
            (r->fields_dropped & (1u << i)))
            r->age_dropped = 1;
    }
    return len;
}

long veil_cl_retry_after_ms(const char *value)
{
    while (isspace((unsigned char)*value))
        value++;
    char v[128];
    size_t n = strcspn(value, "\r\n");
    if (n == 0 || n >= sizeof v)
        return -1;
    memcpy(v, value, n);
    while (n > 0 && isspace((unsigned char)v[n - 1]))
        n--;
    v[n] = '\0';
    if (isdigit((unsigned char)v[0])) {
        char *end;
        unsigned long s = strtoul(v, &end, 10);
        if (*end != '\0' || s > 86400)
            return -1;
        return (long)s * 1000;
    }
    time_t when = curl_getdate(v, NULL);
    if (when < 0)
        return -1;
    time_t now = time(NULL);
    return when <= now ? 0
                       : (long)(when - now > 86400 ? 86400 : when - now) * 1000;
}

/* A POST body, handed to libcurl by a read callback so that it cannot be
 * sent twice: libcurl resends a request by itself when a reused
 * connection turns out dead, and for that it must rewind the body, which
 * on_seek refuses once any of it was read.  The caller's own retry seals
 * a fresh package instead (a server refuses a payload ID it has seen). */
typedef struct upload {
    const char *data;
    size_t len, off;
} upload;

static size_t on_read(char *buf, size_t size, size_t n, void *ctx)
{
    upload *u = ctx;
    size_t room = size * n, left = u->len - u->off;
    if (room > left)
        room = left;
    memcpy(buf, u->data + u->off, room);
    u->off += room;
    return room;
}

static int on_seek(void *ctx, curl_off_t offset, int origin)
{
    upload *u = ctx;
    if (origin == SEEK_SET && offset == 0 && u->off == 0)
        return CURL_SEEKFUNC_OK;
    return CURL_SEEKFUNC_CANTSEEK;
}

/* Header lines may hold the API key: wiped before they are freed. */
static void wipe_free(struct curl_slist *list)
{
    for (struct curl_slist *l = list; l; l = l->next)
        veil_wipe(l->data, strlen(l->data));
    curl_slist_free_all(list);
}

/* The header lines as a curl list (NULL with *ok 0 when out of
 * memory). */
static struct curl_slist *header_list(const char *const *headers, int *ok)
{
    struct curl_slist *list = NULL;
    *ok = 1;
    for (const char *const *p = headers; p && *p; p++) {
        struct curl_slist *l = curl_slist_append(list, *p);
        if (l == NULL) {
            wipe_free(list);
            *ok = 0;
            return NULL;
        }
        list = l;
    }
    return list;
}

/* Sets up one exchange on h: TLS verified, no redirects, the answer into
 * s, a body (when not NULL) from up. */
static void set_options(const veil_cl_transport *t, CURL *h, const char *url,
                        struct curl_slist *list, sink *s, upload *up,
                        char *errbuf)
{
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)t->timeout_ms);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    if (t->ca_file)
        curl_easy_setopt(h, CURLOPT_CAINFO, t->ca_file);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, s);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "veil/" PACKAGE_VERSION);
    if (up->data != NULL) {
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(h, CURLOPT_READDATA, up);
        curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, on_seek);
        curl_easy_setopt(h, CURLOPT_SEEKDATA, up);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)up->len);
    }
}

/* The client error of a failed transfer. */
static veil_client_status transfer_fail(const veil_cl_transport *t, CURLcode cc,
                                        const char *errbuf, const sink *s,
                                        veil_client_error *err)
{
    const char *why = errbuf[0] ? errbuf : curl_easy_strerror(cc);
    if (s->fields_too_big)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONNECTION, 0, VEIL_E_IO,
                            "the answer's header and trailer fields are "
                            "larger than %u KiB",
                            MAX_FIELDS >> 10);
    if (s->too_big && s->max < MAX_RESPONSE)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONNECTION, 0, VEIL_E_IO,
                            "the answer is larger than %zu KiB", s->max >> 10);
    if (s->too_big)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONNECTION, 0, VEIL_E_IO,
                            "the answer is larger than %u MiB",
                            MAX_RESPONSE >> 20);
    if (cc == CURLE_SEND_FAIL_REWIND)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONNECTION, 0, VEIL_E_IO,
                            "the connection was lost before an answer "
                            "came; the package was not sent again");
    if (cc == CURLE_OPERATION_TIMEDOUT)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONNECTION, 0, VEIL_E_IO,
                            "no answer within %u ms (%s)", t->timeout_ms, why);
    if (cc == CURLE_PEER_FAILED_VERIFICATION ||
        cc == CURLE_SSL_CACERT_BADFILE || cc == CURLE_SSL_ISSUER_ERROR)
        return veil_cl_fail(
            err, VEIL_CLIENT_E_SECURITY, 0, VEIL_E_VERIFY,
            "the server's TLS certificate could not be verified: %s (%s)", why,
            t->ca_file ? "checked against the CA certificates of --ca-file"
                       : "checked against the system's CAs; a gateway with a "
                         "private or self-signed CA needs that CA's "
                         "certificate in --ca-file FILE (ca_file)");
    return veil_cl_fail(err, VEIL_CLIENT_E_CONNECTION, 0, VEIL_E_IO, "%s", why);
}

veil_client_status veil_cl_transport_send(veil_cl_transport *t, const char *url,
                                          const char *const *headers,
                                          const char *body, size_t len,
                                          size_t max_body,
                                          veil_cl_http_response *resp,
                                          veil_client_error *err)
{
    int ok;
    memset(resp, 0, sizeof *resp);
    resp->retry_after_ms = -1;
    CURL *h = take(t);
    if (h == NULL)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONNECTION, 0, VEIL_E_NOMEM,
                            "could not make an HTTP handle");
    struct curl_slist *list = header_list(headers, &ok);
    if (!ok) {
        give_back(t, h);
        return veil_cl_fail(err, VEIL_CLIENT_E_CONNECTION, 0, VEIL_E_NOMEM,
                            "out of memory");
    }
    sink s = {.resp = resp, .h = h, .max = max_body ? max_body : MAX_RESPONSE};
    upload up = {.data = body, .len = len};
    char errbuf[CURL_ERROR_SIZE] = "";
    set_options(t, h, url, list, &s, &up, errbuf);
    CURLcode cc = curl_easy_perform(h);
    veil_client_status st = VEIL_CLIENT_OK;
    if (cc == CURLE_OK) {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp->status);
    } else {
        long sent = 0;
        curl_easy_getinfo(h, CURLINFO_REQUEST_SIZE, &sent);
        free(resp->body);
        memset(resp, 0, sizeof *resp);
        resp->retry_after_ms = -1;
        resp->unsent = sent == 0;
        st = transfer_fail(t, cc, errbuf, &s, err);
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(h, CURLOPT_READDATA, NULL);
    curl_easy_setopt(h, CURLOPT_SEEKDATA, NULL);
    wipe_free(list);
    give_back(t, h);
    return st;
}
