/* service/http.c: the HTTP layer (service/http.h) over libmicrohttpd:
 * requests, the route table, admission, body reading, start and stop.
 * Answers are in http_reply.c; connections, deadlines, worker slots and
 * body memory in http_conn.c; a request without a socket (the same steps,
 * its answer captured) in http_inject.c. */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http_int.h"

/* The body an unknown path may bring (read and dropped). */
#define UNROUTED_BODY_MAX 4096

double svc_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double ms_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) * 1e3 +
           (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

void svc_log(const svc_http *h, veil_log_level level, const char *fmt, ...)
{
    const veil_logger *l = &h->cfg.log;
    char line[512];
    va_list ap;

    if (l->fn == NULL || level > l->level)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    l->fn(l->ctx, level, line);
}

/* ---- a request --------------------------------------------------------- */

const char *svc_header(svc_req *r, const char *name)
{
    if (r->inj == NULL)
        return MHD_lookup_connection_value(r->c, MHD_HEADER_KIND, name);
    return svc_inject_header(r, name);
}

const char *svc_query(svc_req *r, const char *name)
{
    if (r->inj == NULL)
        return MHD_lookup_connection_value(r->c, MHD_GET_ARGUMENT_KIND, name);
    return svc_inject_query(r, name);
}

const char *svc_body(const svc_req *r, size_t *len)
{
    *len = r->len;
    return r->len ? r->body : NULL;
}

unsigned svc_route_tag(const svc_req *r)
{
    return r->route ? r->route->tag : 0;
}

const char *svc_tail(const svc_req *r)
{
    return r->tail;
}

const struct sockaddr *svc_client_addr(svc_req *r)
{
    if (r->inj)
        return r->inj->client;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    return ci ? ci->client_addr : NULL;
}

uint8_t *svc_client_id(svc_req *r)
{
    return r->id;
}

void svc_set_key_name(svc_req *r, const char *name)
{
    r->key_name = name;
}

void svc_set_log_id(svc_req *r, const char *id)
{
    snprintf(r->log_id, sizeof r->log_id, "%s", id ? id : "");
}

int svc_set_app_ref(svc_req *r, void *ref, void (*release)(void *ref))
{
    if (r->app_ref)
        return 0;
    r->app_ref = ref;
    r->app_release = release;
    return 1;
}

void *svc_app_ref(const svc_req *r)
{
    return r->app_ref;
}

void *svc_req_data(svc_req *r)
{
    return r->h && r->h->cfg.req_data_size ? r->data : NULL;
}

svc_req *svc_req_alloc(const svc_http *h)
{
    return calloc(1, sizeof(svc_req) + h->cfg.req_data_size);
}

int svc_set_app_hold(svc_req *r, void *ref, void (*release)(void *ref))
{
    if (r->app_hold)
        return 0;
    r->app_hold = ref;
    r->hold_release = release;
    return 1;
}

int svc_slot_yield(svc_req *r)
{
    int had = r->has_slot;

    svc_release_slot(r->h, r);
    return had;
}

int svc_slot_retake(svc_req *r)
{
    return r->has_slot || svc_take_slot(r->h, r);
}

/* ---- the route table --------------------------------------------------- */

static int path_is(const svc_route *rt, const char *url)
{
    return rt->prefix ? strncmp(url, rt->path, strlen(rt->path)) == 0
                      : strcmp(url, rt->path) == 0;
}

/* The methods url is served with, for a 405's Allow (RFC 9110 10.2.1):
 * each route's, and HEAD beside a GET that takes it; "" when none. */
static void allow_of(const svc_http *h, const char *url, char *out, size_t size)
{
    static const char *const order[] = {"GET", "HEAD", "POST"};
    size_t n = 0;

    out[0] = '\0';
    for (size_t m = 0; m < sizeof order / sizeof order[0]; m++) {
        int has = 0;
        for (size_t i = 0; i < h->cfg.n_routes && !has; i++) {
            const svc_route *rt = &h->cfg.routes[i];
            has = path_is(rt, url) &&
                  (strcmp(rt->method, order[m]) == 0 ||
                   (m == 1 && strcmp(rt->method, "GET") == 0 && !rt->no_head));
        }
        if (has)
            n += (size_t)snprintf(out + n, n < size ? size - n : 0, "%s%s",
                                  n ? ", " : "", order[m]);
    }
}

static const svc_route *route_of(const svc_http *h, const char *method,
                                 const char *url, int *bad_method)
{
    *bad_method = 0;
    for (size_t i = 0; i < h->cfg.n_routes; i++) {
        const svc_route *rt = &h->cfg.routes[i];
        if (!path_is(rt, url))
            continue;
        /* HEAD for the cheap GETs only: a HEAD of a costly one (a TPM
         * quote) would cost what nobody reads. */
        if (strcmp(method, rt->method) == 0 ||
            (strcmp(method, "HEAD") == 0 && strcmp(rt->method, "GET") == 0 &&
             !rt->no_head))
            return rt;
        *bad_method = 1; /* unless a later row has the path and method */
    }
    return NULL;
}

/* Early refusals, before any body is read: shutdown, size, then the
 * application's (auth, rate), then room for the body.  r->limit is the
 * largest body the route takes.  The worker slot comes later, once the
 * body is in. */
static void admit(svc_http *h, svc_req *r)
{
    if (atomic_load(&h->stopping)) {
        svc_fail_retry(r, 503, STOP_RETRY_S, "the gateway is shutting down");
        return;
    }
    const char *cl = svc_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
    unsigned long long declared = 0;
    if (cl) {
        char *end;
        errno = 0;
        declared = strtoull(cl, &end, 10);
        if (errno || *end || end == cl) {
            svc_fail(r, 400, "Content-Length is not a number");
            return;
        }
        if (declared > r->limit) {
            svc_fail(r, 413,
                     "request body of %llu bytes is over the limit of %zu",
                     declared, r->limit);
            return;
        }
    }
    if (h->cfg.admit)
        h->cfg.admit(h->cfg.app, r);
    if (r->answered || declared == 0)
        return;
    if ((r->body = malloc(declared + 1)) == NULL) {
        svc_fail(r, 503, "out of memory");
        return;
    }
    r->cap = declared + 1;
}

static int append(svc_req *r, const char *data, size_t n)
{
    if (r->len + n > r->limit)
        return 0;
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 65536;
        while (cap < r->len + n + 1)
            cap *= 2;
        if (cap > r->limit + 1)
            cap = r->limit + 1;
        char *b = realloc(r->body, cap);
        if (b == NULL)
            return -1;
        r->body = b;
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
    r->body[r->len] = '\0';
    return 1;
}

/* ---- one request, read from a connection or injected ------------------- */

/* A path a client chose, for the log: printable ASCII kept, anything
 * else (a blank, a control character, a byte past ASCII) and '%' as %XX,
 * cut at SVC_ID_MAX characters ("..." then). */
static void log_url(char *out, size_t size, const char *url)
{
    size_t n = 0;

    for (; *url && n + 4 < size; url++) {
        unsigned char c = (unsigned char)*url;
        if (c > 0x20 && c < 0x7f && c != '%')
            out[n++] = (char)c;
        else
            n += (size_t)snprintf(out + n, size - n, "%%%02X", c);
    }
    if (*url && size >= 4)
        memcpy(out + (n < size - 4 ? n : size - 4), "...", 4);
    else
        out[n] = '\0';
}

/* The first step of a request: its route, and either its answer (routes
 * not admitted, unknown paths) or its admission.  1 when the request goes
 * on (its body, then request_end, unless it is answered), 0 when its
 * connection is to be closed. */
int svc_request_head(svc_http *h, svc_req *r, const char *url,
                     const char *method)
{
    r->h = h;
    clock_gettime(CLOCK_MONOTONIC, &r->t0);
    svc_set_phase(h, r->conn, P_WORK);
    int bad_method;
    r->route = route_of(h, method, url, &bad_method);
    r->method = !strcmp(method, "POST")   ? "POST"
                : !strcmp(method, "HEAD") ? "HEAD"
                : !strcmp(method, "GET")  ? "GET"
                                          : "OTHER";
    log_url(r->log_method, sizeof r->log_method, method);
    if (r->route == NULL) {
        log_url(r->log_url, sizeof r->log_url, url);
        r->limit = UNROUTED_BODY_MAX;
        if (bad_method) {
            char allow[32];
            allow_of(h, url, allow, sizeof allow);
            svc_fail_allow(r, allow);
        } else
            svc_fail(r, 404, "not found");
        return r->answered;
    }
    r->limit = r->route->body_max ? r->route->body_max : h->cfg.body_limit;
    if (!r->route->admit) {
        r->route->handle(h->cfg.app, r);
        return r->answered;
    }
    /* the tail, kept only when it is what the route takes (it is logged) */
    const char *tail = url + strlen(r->route->path);
    if (r->route->prefix && r->route->tail_ok && r->route->tail_ok(tail)) {
        snprintf(r->tail, sizeof r->tail, "%s", tail);
        svc_set_log_id(r, tail);
    }
    pthread_mutex_lock(&h->lock);
    h->in_flight++;
    pthread_mutex_unlock(&h->lock);
    r->admitted = 1;
    admit(h, r);
    if (r->answered)
        svc_linger(h, r->conn);
    svc_set_phase(h, r->conn, r->answered ? P_SEND : P_BODY);
    return !r->queue_failed;
}

/* A piece of the body.  libmicrohttpd answers only once the body is in:
 * past the limit the rest is counted and dropped, and the 413 goes at the
 * end; a body more than 64 MiB over the limit closes the connection (0). */
int svc_request_data(svc_http *h, svc_req *r, const char *upload, size_t n)
{
    if (r->refused == 0) {
        svc_charge_body(h, r, n);
        int a = append(r, upload, n);
        if (a <= 0)
            r->refused = a == 0 ? 413 : 503;
    }
    r->seen += n;
    svc_count_body(h, r->conn, n);
    return !(r->seen > r->limit && r->seen - r->limit > DISCARD_MAX);
}

/* The route's hook before the slot: 1 when it refused (answered). */
static int before_slot(svc_http *h, svc_req *r)
{
    if (r->route->before_slot)
        r->route->before_slot(h->cfg.app, r);
    return r->answered;
}

/* The body is in: the refusals decided while it came, else a worker slot
 * (for the routes that need one) and the handler.  1 when answered. */
int svc_request_end(svc_http *h, svc_req *r)
{
    svc_body_done(h, r);
    if (r->refused == 413) {
        svc_fail(r, 413, "request body is over the limit of %zu bytes",
                 r->limit);
    } else if (r->refused) {
        svc_fail(r, 503, "out of memory");
    } else if (!before_slot(h, r)) {
        int slot = r->route->needs_slot;
        svc_set_phase(h, r->conn, slot ? P_WAIT : P_WORK);
        if (slot && !svc_take_slot(h, r)) {
            svc_fail_retry(r, 503, STOP_RETRY_S,
                           "the gateway is shutting down");
        } else {
            svc_set_phase(h, r->conn, P_WORK);
            r->route->handle(h->cfg.app, r);
        }
    }
    /* the answer is queued: a slow reader holds neither slot nor body,
     * only its answer's memory */
    svc_release_slot(h, r);
    svc_drop_body(h, r);
    svc_hold_answer(h, r);
    svc_set_phase(h, r->conn, P_SEND);
    return r->answered;
}

/* What the client got, for the log: the status when the answer went out
 * whole; else "cut (why; ...)", never the status of an answer that was
 * not delivered. */
static void outcome(svc_http *h, const svc_req *r,
                    enum MHD_RequestTerminationCode toe, char *out, size_t size)
{
    static const char *const toes[] = {
        [MHD_REQUEST_TERMINATED_COMPLETED_OK] = "completed",
        [MHD_REQUEST_TERMINATED_WITH_ERROR] = "connection error",
        [MHD_REQUEST_TERMINATED_TIMEOUT_REACHED] = "connection timeout",
        [MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN] = "shutdown",
        [MHD_REQUEST_TERMINATED_READ_ERROR] = "read error",
        [MHD_REQUEST_TERMINATED_CLIENT_ABORT] = "client closed",
    };
    const char *why = NULL;

    if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK && r->answered) {
        snprintf(out, size, "%d", r->status);
        return;
    }
    why = svc_conn_cut(h, r->conn);
    if (why == NULL)
        why = (unsigned)toe < sizeof toes / sizeof toes[0] && toes[toe]
                  ? toes[toe]
                  : "closed";
    if (r->answered)
        snprintf(out, size, "cut (%s; its %d answer was not delivered)", why,
                 r->status);
    else
        snprintf(out, size, "cut (%s; no answer)", why);
}

/* The client's address as text ("?" when unknown). */
void svc_addr_text(const struct sockaddr *sa, char *out, size_t size)
{
    const void *a = NULL;

    if (sa && sa->sa_family == AF_INET)
        a = &((const struct sockaddr_in *)(const void *)sa)->sin_addr;
    else if (sa && sa->sa_family == AF_INET6)
        a = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
    if (a == NULL || inet_ntop(sa->sa_family, a, out, (socklen_t)size) == NULL)
        snprintf(out, size, "?");
}

static void client_text(svc_req *r, char *out, size_t size)
{
    svc_addr_text(svc_client_addr(r), out, size);
}

/* The request's log line, with its fields: method, path, status (or how
 * it was cut), the payload ID and the API key's name when known, the
 * client's address on the refusals that are about the client (401, 413,
 * 429), the time.  Admitted routes at info, the others at debug. */
static void log_request(svc_http *h, svc_req *r,
                        enum MHD_RequestTerminationCode toe)
{
    const veil_logger *l = &h->cfg.log;
    veil_log_level level = r->admitted ? VEIL_LOG_INFO : VEIL_LOG_DEBUG;
    char what[128], ms[32], status[8], client[INET6_ADDRSTRLEN] = "";
    const char *path = r->route == NULL     ? r->log_url
                       : r->route->log_path ? r->route->log_path
                                            : r->route->path;
    const char *id = r->log_id[0] ? r->log_id : NULL;

    if (l->fn == NULL || level > l->level)
        return;
    outcome(h, r, toe, what, sizeof what);
    int whole = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK && r->answered;
    snprintf(status, sizeof status, "%d", r->status);
    snprintf(ms, sizeof ms, "%.1f", ms_since(&r->t0));
    if (whole && (r->status == 401 || r->status == 413 || r->status == 429))
        client_text(r, client, sizeof client);
    const veil_log_field f[] = {
        {"method", r->log_method[0] ? r->log_method : r->method, 0},
        {"path", path, 0},
        {"status", whole ? status : NULL, 1},
        {"outcome", whole ? NULL : what, 0},
        {"payload", id, 0},
        {"key", r->key_name, 0},
        {"client", client[0] ? client : NULL, 0},
        {"ms", ms, 1},
    };
    veil_logf_fields(l, level, f, sizeof f / sizeof f[0],
                     "%s %s %s%s%s%s%s%s%s %s ms",
                     r->log_method[0] ? r->log_method : r->method, path, what,
                     id ? " payload " : "", id ? id : "",
                     r->key_name ? " key " : "", r->key_name ? r->key_name : "",
                     client[0] ? " client " : "", client, ms);
}

/* The request is over (toe: how it ended): its log line, and its state
 * freed. */
void svc_request_done(svc_http *h, svc_req *r,
                      enum MHD_RequestTerminationCode toe)
{
    svc_done d = {
        .route = r->route == NULL     ? NULL
                 : r->route->log_path ? r->route->log_path
                                      : r->route->path,
        .method = r->method ? r->method : "GET",
        .status = r->answered ? r->status : 0,
        .delivered = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK && r->answered,
        .admitted = r->admitted,
        .seconds = ms_since(&r->t0) / 1e3,
    };

    log_request(h, r, toe);
    if (r->admitted) {
        svc_release_slot(h, r);
        pthread_mutex_lock(&h->lock);
        h->in_flight--;
        pthread_cond_broadcast(&h->idle);
        pthread_mutex_unlock(&h->lock);
    }
    svc_drop_body(h, r);
    /* the next request on this connection: its header deadline */
    svc_set_phase(h, r->conn, P_HEAD);
    if (h->cfg.done)
        h->cfg.done(h->cfg.app, r, &d);
    if (r->app_hold && r->hold_release)
        r->hold_release(r->app_hold);
    if (r->app_ref && r->app_release)
        r->app_release(r->app_ref);
    free(r);
}

/* ---- MHD callbacks ----------------------------------------------------- */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c,
                                  const char *url, const char *method,
                                  const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    svc_http *h = cls;
    svc_req *r = *con_cls;
    int go;

    (void)version;
    if (r == NULL) {
        if ((r = svc_req_alloc(h)) == NULL)
            return MHD_NO;
        *con_cls = r;
        r->c = c;
        const union MHD_ConnectionInfo *sc =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        r->conn = sc ? sc->socket_context : NULL;
        go = svc_request_head(h, r, url, method);
    } else if (*upload_size > 0) {
        go = svc_request_data(h, r, upload, *upload_size);
        *upload_size = 0;
    } else {
        go = r->answered || svc_request_end(h, r);
    }
    return go ? MHD_YES : MHD_NO;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)c;
    if (*con_cls == NULL)
        return;
    svc_request_done(cls, *con_cls, toe);
    *con_cls = NULL;
}

/* ---- start and stop ---------------------------------------------------- */

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    svc_http *h = cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    line[strcspn(line, "\n")] = '\0';
    svc_log(h, VEIL_LOG_WARN, "http: %s", line);
}

/* The listening address into ss, and the flags it needs; -1 when it is
 * not an IP address. */
static int listen_addr(const svc_http_config *cfg, struct sockaddr_storage *ss,
                       unsigned *flags)
{
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

    memset(ss, 0, sizeof *ss);
    if (inet_pton(AF_INET, cfg->listen_addr, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)cfg->port);
        return 0;
    }
    if (inet_pton(AF_INET6, cfg->listen_addr, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)cfg->port);
        /* "::" takes IPv4 too; a specific IPv6 address only IPv6 */
        *flags |= IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr) ? MHD_USE_DUAL_STACK
                                                           : MHD_USE_IPv6;
        return 0;
    }
    return -1;
}

/* MHD's options into opts (at least 16), with TLS when configured. */
static int mhd_options(svc_http *h, struct sockaddr_storage *ss,
                       unsigned *flags, struct MHD_OptionItem *opts, char *err,
                       size_t err_size)
{
    const svc_http_config *cfg = &h->cfg;
    int n = 0;

    /* the logger first, so that MHD reports everything through it */
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_EXTERNAL_LOGGER,
                                        (intptr_t)mhd_log, h};
    /* our socket (http_listen.c), so that a failure names the port */
    if ((h->bound_fd = svc_listen_socket(cfg, ss, err, err_size)) < 0)
        return -1;
    opts[n++] =
        (struct MHD_OptionItem){MHD_OPTION_LISTEN_SOCKET, h->bound_fd, NULL};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_COMPLETED,
                                        (intptr_t)on_completed, h};
    opts[n++] = (struct MHD_OptionItem){
        MHD_OPTION_CONNECTION_TIMEOUT, (intptr_t)cfg->connection_timeout, NULL};
    opts[n++] =
        (struct MHD_OptionItem){MHD_OPTION_CONNECTION_LIMIT, 1024, NULL};
    opts[n++] =
        (struct MHD_OptionItem){MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                                (intptr_t)cfg->connections_per_address, NULL};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_CONNECTION,
                                        (intptr_t)svc_on_connection, h};
    if (cfg->tls_cert) {
        /* checked here, so that a wrong file is named before listening;
         * each handshake takes the current pair (svc_http_reload_tls) */
        if ((h->tls = svc_tls_load(cfg->tls_cert, cfg->tls_key, cfg, err,
                                   err_size)) == NULL)
            return -1;
        *flags |= MHD_USE_TLS;
    }
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
    return 0;
}

static svc_http *http_new(const svc_http_config *cfg)
{
    svc_http *h = calloc(1, sizeof *h);

    if (h == NULL)
        return NULL;
    h->cfg = *cfg;
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->idle, NULL);
    pthread_mutex_init(&h->slot_lock, NULL);
    h->slots_free = cfg->workers;
    pthread_mutex_init(&h->conn_lock, NULL);
    pthread_mutex_init(&h->tls_lock, NULL);
    pthread_cond_init(&h->body_room, NULL);
    h->listen_fd = MHD_INVALID_SOCKET;
    h->bound_fd = -1;
    h->body_mem_cap = cfg->body_memory
                          ? cfg->body_memory
                          : (size_t)2 * cfg->workers * cfg->body_limit;
    return h;
}

svc_http *svc_http_start(const svc_http_config *cfg, char *err, size_t err_size)
{
    svc_http *h = http_new(cfg);
    struct sockaddr_storage ss;
    struct MHD_OptionItem opts[16];
    /* poll(), not select(): select() cannot watch a descriptor numbered
     * FD_SETSIZE (1024) or above, and veild's are once it has many
     * connections or files open (with select, MHD then refuses to start
     * or drops the connection) */
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
                     MHD_USE_ITC | MHD_USE_ERROR_LOG;

    if (h == NULL) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    if (cfg->listen_addr == NULL) /* requests only by svc_http_inject */
        return h;
    if (listen_addr(cfg, &ss, &flags) != 0) {
        snprintf(err, err_size, "listen address '%s' is not an IP address",
                 cfg->listen_addr);
        goto fail;
    }
    if (mhd_options(h, &ss, &flags, opts, err, err_size) != 0)
        goto fail;
    if (pthread_create(&h->watchdog, NULL, svc_watchdog, h) != 0) {
        snprintf(err, err_size, "cannot start the connection watchdog");
        goto fail;
    }
    h->watching = 1;
    if (h->tls)
        h->mhd = MHD_start_daemon(
            flags, 0, NULL, NULL, on_request, h, MHD_OPTION_ARRAY, opts,
            MHD_OPTION_HTTPS_CERT_CALLBACK, svc_tls_callback(), MHD_OPTION_END);
    else
        h->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h,
                                  MHD_OPTION_ARRAY, opts, MHD_OPTION_END);
    /* MHD's from here, whether it started or not (it may have closed it) */
    int fd = h->bound_fd;
    h->bound_fd = -1;
    if (h->mhd == NULL) {
        snprintf(err, err_size, "cannot serve on %s port %u: %s",
                 cfg->listen_addr, cfg->port, strerror(errno));
        goto fail;
    }
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    h->port = cfg->port;
    if (getsockname(fd, (struct sockaddr *)&bound, &blen) == 0)
        h->port = ntohs(bound.ss_family == AF_INET6
                            ? ((struct sockaddr_in6 *)&bound)->sin6_port
                            : ((struct sockaddr_in *)&bound)->sin_port);
    return h;
fail:
    svc_http_stop(h, 0);
    return NULL;
}

unsigned svc_http_port(const svc_http *h)
{
    return h->port;
}

/* Refuses what comes, waits for what is in flight (at most grace_s), cuts
 * the rest and stops MHD.  The number cut. */
static unsigned stop_daemon(svc_http *h, unsigned grace_s)
{
    unsigned cut;

    /* New requests on open connections get 503, waiting ones too */
    atomic_store(&h->stopping, 1);
    svc_wake_all(h);
    /* and new connections are refused at once: a listening socket left
     * open would queue them unanswered.  shutdown() stops it listening;
     * the descriptor stays valid for MHD's thread until the close. */
    h->listen_fd = MHD_quiesce_daemon(h->mhd);
    if (h->listen_fd != MHD_INVALID_SOCKET)
        shutdown(h->listen_fd, SHUT_RDWR);
    svc_log(h, VEIL_LOG_INFO, "listener closed: new connections are refused");
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += grace_s;
    pthread_mutex_lock(&h->lock);
    while (h->in_flight > 0 &&
           pthread_cond_timedwait(&h->idle, &h->lock, &until) == 0)
        ;
    cut = h->in_flight;
    pthread_mutex_unlock(&h->lock);
    if (cut) /* past the grace: cut, and logged as cut by on_completed */
        svc_cut_all(h);
    MHD_stop_daemon(h->mhd);
    if (h->listen_fd != MHD_INVALID_SOCKET)
        close(h->listen_fd);
    return cut;
}

unsigned svc_http_stop(svc_http *h, unsigned grace_s)
{
    unsigned cut = 0;

    if (h == NULL)
        return 0;
    if (h->mhd)
        cut = stop_daemon(h, grace_s);
    if (h->watching) {
        pthread_mutex_lock(&h->conn_lock);
        h->watch_stop = 1;
        pthread_mutex_unlock(&h->conn_lock);
        pthread_join(h->watchdog, NULL);
    }
    if (h->bound_fd >= 0) /* made, but MHD never took it */
        close(h->bound_fd);
    svc_tls_free(h->tls);
    pthread_mutex_destroy(&h->tls_lock);
    pthread_mutex_destroy(&h->conn_lock);
    pthread_cond_destroy(&h->body_room);
    pthread_mutex_destroy(&h->slot_lock);
    pthread_cond_destroy(&h->idle);
    pthread_mutex_destroy(&h->lock);
    free(h);
    return cut;
}
