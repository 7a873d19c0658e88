/* veild's HTTP side (libmicrohttpd): routes, early refusals, body limits,
 * and the NOMYO v1 exchange: open the request package with the server key
 * (inside the token), check replay, tier and model, ask the upstream, seal
 * the answer to the caller's key, sign it.  Also the attestation routes
 * and the signature store's route (docs/ATTESTATION.md).
 *
 * Threads: one thread per connection (a blocking upstream call stalls only
 * its own connection), and `workers` slots.  A request takes a slot only
 * once its body is in and leaves it as soon as its answer is queued, so
 * neither a slow uploader nor a slow reader holds one.  The bodies in
 * memory are bounded by body_memory instead, counted as their bytes come:
 * a body that would pass it waits (its bytes stay in the kernel).  An
 * answer queued and not yet sent counts there too, so slow readers cannot
 * pile up answers in memory either.  When only bodies still being read
 * hold that memory, the oldest of them goes on anyway, so that they cannot
 * all wait for each other (at most body_memory + body_limit).  Slots
 * go first come, first served: a plain semaphore lets a connection that
 * was just answered take the slot again and starves the others (a p99 36
 * times the p50).  A freed slot is handed to the first waiter alone (its
 * own condition variable): a broadcast woke every waiting thread for each
 * answer, about 60 context switches per request at 64 clients.
 *
 * Connections: a watchdog thread holds every connection to its deadlines
 * (header block, body rate and total, writing the answer) and closes it by
 * shutting its socket down; a request refused before its body (401, 429,
 * 413, 503) gets its answer, then the socket is kept open a while with its
 * input read and dropped (at most DISCARD_MAX bytes, under the body rules),
 * so that a client that sends its whole body before reading sees the
 * answer, not a reset. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "evidence.h"
#include "gateway.h"
#include "package.h"

#define ROUTE_COMPLETION "/v1/chat/secure_completion"
#define ROUTE_REPORT "/v1/attestation/report"
#define ROUTE_ACTIVATE "/v1/attestation/activate"
#define ROUTE_SIGNATURES "/v1/signatures/"
/* Largest body of the routes other than the completion (the activation's
 * JSON is a few hundred bytes). */
#define SMALL_BODY_MAX 4096
#define HEALTH_CACHE_S 5
/* Parsed client keys kept (a PEM parse and checks cost ~0.35 ms). */
#define KEY_CACHE 64
/* The largest client key taken: OpenSSL's public-key check costs about
 * 15 ms for 2048 bits and 170 ms for 4096 (a Miller-Rabin test of n), and
 * grows with the cube of the size. */
#define CLIENT_KEY_MAX_BITS 4096u
/* The longest payload ID taken. */
#define PID_MAX VEIL_PAYLOAD_ID_MAX
/* Body bytes past the limit read (and dropped) to deliver the 413; also
 * the most a refused connection's drain reads. */
#define DISCARD_MAX ((size_t)64 << 20)
/* A body's rate is judged after this many seconds. */
#define BODY_GRACE_S 2
/* How often the watchdog looks at the deadlines. */
#define WATCH_TICK_MS 200
/* Refused connections drained at once; more are closed at once. */
#define LINGER_MAX 256
/* Retry-After of a 503 at shutdown, seconds. */
#define STOP_RETRY_S 5

/* One connection (MHD's socket context), from accept to close: what the
 * watchdog holds to its deadlines.  Fields under gw_server.conn_lock. */
enum phase {
    P_HEAD, /* waiting for a complete header block */
    P_BODY, /* reading a body */
    P_WAIT, /* waiting for a worker slot, or for body_memory */
    P_WORK, /* being answered: no deadline here (upstream_timeout is) */
    P_SEND  /* answer queued, being written */
};

typedef struct conn {
    struct conn *prev, *next;
    int fd;
    enum phase phase;
    double since;    /* when the phase began (now_s) */
    size_t got;      /* body bytes read in P_BODY */
    int linger;      /* refused before its body: drain it after the close */
    const char *cut; /* why the gateway closed it, or NULL */
} conn;

/* A refused connection being drained (a dup of its socket). */
struct drain_fd {
    int fd;
    double since;
    size_t got;
};

enum route {
    R_NONE,
    R_KEY,
    R_MODELS,
    R_HEALTH,
    R_COMPLETION,
    R_REPORT,
    R_ACTIVATE,
    R_SIGNATURE
};

struct gw_server {
    gw_deps d;
    struct MHD_Daemon *mhd;
    unsigned port;
    char *pem;
    char *tls_cert, *tls_key;
    size_t tls_key_len;
    pthread_mutex_t slot_lock; /* the worker slots and their queue */
    unsigned slots_free;
    struct slot_waiter *wait_head, *wait_tail;
    pthread_mutex_t key_lock; /* the cache of parsed client keys */
    struct ckey {
        uint8_t hash[32]; /* SHA-256 of the X-Public-Key header */
        veil_key *key;
        unsigned refs;
        uint64_t used;
    } keys[KEY_CACHE];
    uint64_t key_clock;
    pthread_mutex_t lock; /* in_flight, body_mem */
    pthread_cond_t idle;
    unsigned in_flight;
    size_t body_mem, body_mem_cap; /* body bytes held; the cap */
    size_t partial_mem;            /* of body_mem: bodies still being read */
    pthread_cond_t body_room;      /* body_mem fell, or the oldest changed */
    struct req *body_head, *body_tail; /* reading a body, oldest first */
    atomic_int stopping;
    pthread_mutex_t conn_lock; /* conns, lingering, watch_stop */
    conn *conns;
    struct drain_fd lingering[LINGER_MAX];
    int n_linger;
    int watch_stop;
    int watching; /* the watchdog thread runs */
    pthread_t watchdog;
    MHD_socket listen_fd; /* after MHD_quiesce_daemon, ours to close */
    veil_memory_status mem;
    struct MHD_Response *undecryptable; /* one answer for every failure */
    pthread_mutex_t health_lock;        /* the health cache; held while probing,
                                           so never together with lock */
    time_t health_at;
    char *health;
    int health_ok;
    /* the two keys as the evidence formats name them */
    char enc_hex[65], sign_hex[65];     /* SHA-256 of the SPKI DER */
    char *enc_spki_b64, *sign_spki_b64; /* sign_spki_b64: NULL, no signer */
    char sign_key_header[72];           /* "sha256:<hex>" */
    uint8_t salt_secret[32];            /* cache_salt's key */
};

/* One request's state, from its first byte to its completion callback. */
typedef struct req {
    struct req *bprev, *bnext; /* the list of bodies being read */
    int reading;               /* in that list */
    enum route route;
    const char *method; /* for the log: "GET", "HEAD" or "POST" */
    int admitted;       /* went through admit(): counted in in_flight */
    size_t limit;       /* largest body accepted */
    size_t reserved;    /* of body_mem */
    size_t answer_len;  /* the sealed answer's size (the exchange sets it) */
    size_t answer_held; /* of body_mem, until the answer is sent */
    conn *conn;         /* its connection (NULL: untracked) */
    int has_slot;
    int answered;         /* a response is queued */
    int refused;          /* 413 or 503 decided while the body was arriving */
    size_t seen;          /* body bytes received, kept or not */
    const char *key_name; /* the API key's name from the key file, or NULL */
    int status;
    char *body;
    size_t len, cap;
    uint8_t id[32]; /* API key hash or client address hash */
    struct timespec t0;
    char payload_id[PID_MAX + 1]; /* the completion's, or the one in the
                                     path (once checked) */
} req;

/* ---- small helpers ----------------------------------------------------- */

static void slog(const gw_server *s, veil_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void slog(const gw_server *s, veil_log_level level, const char *fmt, ...)
{
    if (s->d.log == NULL || level > s->d.log_level)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    s->d.log(s->d.log_ctx, level, line);
}

static double ms_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) * 1e3 +
           (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static enum MHD_Result queue(struct MHD_Connection *c, req *r, int status,
                             struct MHD_Response *resp)
{
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    if (ok == MHD_YES) {
        r->answered = 1;
        r->status = status;
    }
    return ok;
}

static struct MHD_Response *text_response(const char *type, const char *body,
                                          size_t len)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (resp) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL,
                                "no-store");
    }
    return resp;
}

/* A {"detail": "..."} answer (NULL: no memory). */
static struct MHD_Response *detail_response(const char *detail)
{
    cJSON *j = cJSON_CreateObject();
    char *body = NULL;
    if (j && cJSON_AddStringToObject(j, "detail", detail))
        body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    struct MHD_Response *resp = text_response(
        "application/json", body ? body : "{}", body ? strlen(body) : 2);
    free(body);
    return resp;
}

/* Queues {"detail": "..."} with the status. */
static enum MHD_Result fail(struct MHD_Connection *c, req *r, int status,
                            const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static enum MHD_Result fail(struct MHD_Connection *c, req *r, int status,
                            const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    struct MHD_Response *resp = detail_response(detail);
    return resp ? queue(c, r, status, resp) : MHD_NO;
}

/* 429 with Retry-After. */
static enum MHD_Result too_many(struct MHD_Connection *c, req *r,
                                unsigned retry_s)
{
    char v[16], detail[64];
    snprintf(detail, sizeof detail, "rate limit exceeded; retry in %u s",
             retry_s);
    struct MHD_Response *resp = detail_response(detail);
    if (resp == NULL)
        return MHD_NO;
    snprintf(v, sizeof v, "%u", retry_s);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, v);
    return queue(c, r, 429, resp);
}

/* 503 with Retry-After. */
static enum MHD_Result unavailable(struct MHD_Connection *c, req *r,
                                   unsigned retry_s, const char *detail)
{
    char v[16];
    struct MHD_Response *resp = detail_response(detail);

    if (resp == NULL)
        return MHD_NO;
    snprintf(v, sizeof v, "%u", retry_s);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, v);
    return queue(c, r, 503, resp);
}

/* ---- connections, slots and body memory -------------------------------- */

static void set_phase(gw_server *s, conn *k, enum phase p)
{
    if (k == NULL)
        return;
    pthread_mutex_lock(&s->conn_lock);
    k->phase = p;
    k->since = now_s();
    k->got = 0;
    pthread_mutex_unlock(&s->conn_lock);
}

/* Why a body (or a drain) that began el seconds ago and has brought got
 * bytes must be cut, or NULL. */
static const char *body_late(const gw_config *cfg, double el, size_t got)
{
    if (el > cfg->body_timeout)
        return "body_timeout";
    if (el > BODY_GRACE_S &&
        (double)got < (double)cfg->body_min_rate * (el - BODY_GRACE_S))
        return "body below body_min_rate";
    return NULL;
}

/* A request waiting for a worker slot, on its own stack. */
struct slot_waiter {
    pthread_cond_t cv;
    struct slot_waiter *next;
    int granted;
};

/* Waits for a worker slot, first come, first served.  0 when the gateway
 * began to stop before this request's turn came. */
static int take_slot(gw_server *s, req *r)
{
    pthread_mutex_lock(&s->slot_lock);
    if (s->slots_free > 0 && s->wait_head == NULL) {
        s->slots_free--;
        r->has_slot = 1;
    } else {
        struct slot_waiter w = {.next = NULL, .granted = 0};

        pthread_cond_init(&w.cv, NULL);
        if (s->wait_tail)
            s->wait_tail->next = &w;
        else
            s->wait_head = &w;
        s->wait_tail = &w;
        while (!w.granted && !atomic_load(&s->stopping))
            pthread_cond_wait(&w.cv, &s->slot_lock);
        if (!w.granted) { /* stopping: leave the queue */
            struct slot_waiter **p = &s->wait_head, *prev = NULL;
            while (*p != &w) {
                prev = *p;
                p = &(*p)->next;
            }
            *p = w.next;
            if (s->wait_tail == &w)
                s->wait_tail = prev;
        }
        pthread_cond_destroy(&w.cv);
        r->has_slot = w.granted;
    }
    pthread_mutex_unlock(&s->slot_lock);
    return r->has_slot;
}

/* Hands the slot to the first waiter, or frees it. */
static void release_slot(gw_server *s, req *r)
{
    if (!r->has_slot)
        return;
    r->has_slot = 0;
    pthread_mutex_lock(&s->slot_lock);
    struct slot_waiter *w = s->wait_head;
    if (w) {
        s->wait_head = w->next;
        if (s->wait_head == NULL)
            s->wait_tail = NULL;
        w->granted = 1;
        pthread_cond_signal(&w->cv);
    } else {
        s->slots_free++;
    }
    pthread_mutex_unlock(&s->slot_lock);
}

/* Enters (on) or leaves the list of bodies being read (s->lock held). */
static void body_list(gw_server *s, req *r, int on)
{
    if (on && !r->reading) {
        r->bprev = s->body_tail;
        r->bnext = NULL;
        if (s->body_tail)
            s->body_tail->bnext = r;
        else
            s->body_head = r;
        s->body_tail = r;
        r->reading = 1;
    } else if (!on && r->reading) {
        s->partial_mem -= r->reserved;
        if (r->bprev)
            r->bprev->bnext = r->bnext;
        else
            s->body_head = r->bnext;
        if (r->bnext)
            r->bnext->bprev = r->bprev;
        else
            s->body_tail = r->bprev;
        r->reading = 0;
        pthread_cond_broadcast(&s->body_room);
    }
}

/* 1 when n more bytes of r's body must wait: they do not fit, and either
 * something else will free memory (a whole body at work or waiting for a
 * slot, an answer being sent) or r is not the oldest body being read.  When
 * only bodies still being read hold the memory, the oldest goes on, so the
 * bodies cannot all wait for each other: body_mem stays under body_memory
 * + body_limit. */
static int body_must_wait(const gw_server *s, const req *r, size_t n)
{
    if (s->body_mem + n <= s->body_mem_cap || atomic_load(&s->stopping))
        return 0;
    return s->body_head != r || s->body_mem > s->partial_mem;
}

/* Counts n more body bytes against body_memory, waiting while they must. */
static void charge_body(gw_server *s, req *r, size_t n)
{
    pthread_mutex_lock(&s->lock);
    body_list(s, r, 1);
    if (body_must_wait(s, r, n)) {
        set_phase(s, r->conn, P_WAIT);
        while (body_must_wait(s, r, n))
            pthread_cond_wait(&s->body_room, &s->lock);
        set_phase(s, r->conn, P_BODY);
    }
    s->body_mem += n;
    s->partial_mem += n;
    r->reserved += n;
    pthread_mutex_unlock(&s->lock);
}

/* Wipes and frees the body and gives its memory back (and, once it is
 * sent, the answer's). */
static void drop_body(gw_server *s, req *r)
{
    if (r->body) {
        explicit_bzero(r->body, r->len);
        free(r->body);
        r->body = NULL;
        r->len = r->cap = 0;
    }
    pthread_mutex_lock(&s->lock);
    body_list(s, r, 0);
    if (r->reserved) {
        s->body_mem -= r->reserved;
        r->reserved = 0;
        pthread_cond_broadcast(&s->body_room);
    }
    if (r->answer_held) {
        s->body_mem -= r->answer_held;
        r->answer_held = 0;
        pthread_cond_broadcast(&s->body_room);
    }
    pthread_mutex_unlock(&s->lock);
}

static const char *header(struct MHD_Connection *c, const char *name)
{
    return MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
}

/* Queues the JSON j (deleted here) with the status. */
static enum MHD_Result json_answer(struct MHD_Connection *c, req *r, int status,
                                   cJSON *j)
{
    char *body = j ? cJSON_PrintUnformatted(j) : NULL;

    cJSON_Delete(j);
    if (body == NULL)
        return fail(c, r, 500, "out of memory");
    struct MHD_Response *resp =
        text_response("application/json", body, strlen(body));
    free(body);
    return resp ? queue(c, r, status, resp) : MHD_NO;
}

/* A payload ID is 1 to PID_MAX printable ASCII characters without space:
 * the Python client sends a UUID, the JavaScript client's create() IDs like
 * "openai-compat-1733500000000-k2j4h5".  Its canonical form, the only one
 * the replay register and the signature store see, is the ID in ASCII
 * lower case (a UUID is the same whatever case it is written in).  1, with
 * the canonical form in out (may be NULL), when id is one. */
static int payload_id_canonical(const char *id, char out[PID_MAX + 1])
{
    size_t i;

    if (!veil_payload_id_valid(id))
        return 0;
    for (i = 0; out && id[i]; i++)
        out[i] =
            id[i] >= 'A' && id[i] <= 'Z' ? (char)(id[i] - 'A' + 'a') : id[i];
    if (out)
        out[i] = '\0';
    return 1;
}

/* ---- GET routes -------------------------------------------------------- */

static enum MHD_Result get_key(gw_server *s, struct MHD_Connection *c, req *r)
{
    struct MHD_Response *resp =
        text_response("text/plain; charset=utf-8", s->pem, strlen(s->pem));
    return resp ? queue(c, r, 200, resp) : MHD_NO;
}

static const char *tier_name(unsigned bit)
{
    return bit == GW_TIER_STANDARD ? "standard"
           : bit == GW_TIER_HIGH   ? "high"
                                   : "maximum";
}

static enum MHD_Result get_models(gw_server *s, struct MHD_Connection *c,
                                  req *r)
{
    cJSON *j = cJSON_CreateObject(), *data = NULL;
    if (j && cJSON_AddStringToObject(j, "object", "list"))
        data = cJSON_AddArrayToObject(j, "data");
    for (size_t i = 0; data && i < s->d.cfg->n_models; i++) {
        const gw_model *m = &s->d.cfg->models[i];
        cJSON *o = cJSON_CreateObject(), *tiers;
        if (!cJSON_AddItemToArray(data, o) ||
            !cJSON_AddStringToObject(o, "id", m->id) ||
            !cJSON_AddStringToObject(o, "object", "model") ||
            !cJSON_AddStringToObject(o, "owned_by", "veild") ||
            !(tiers = cJSON_AddArrayToObject(o, "tiers"))) {
            data = NULL;
            break;
        }
        for (unsigned b = GW_TIER_STANDARD; b <= GW_TIER_MAXIMUM; b <<= 1)
            if (m->tiers & b)
                cJSON_AddItemToArray(tiers, cJSON_CreateString(tier_name(b)));
    }
    if (data == NULL) { /* out of memory part-way: json_answer says 500 */
        cJSON_Delete(j);
        j = NULL;
    }
    return json_answer(c, r, 200, j);
}

/* The token answers when a fresh secret wrapped to the server key comes
 * back unwrapped inside it. */
static int token_alive(gw_server *s, char *why, size_t why_size)
{
    uint8_t secret[32], ct[1024];
    size_t ct_len = sizeof ct;
    veil_secbuf *back = NULL;
    veil_rc rc = veil_random(s->d.engine, secret, sizeof secret);
    if (rc == VEIL_OK)
        rc = veil_rsa_encrypt(s->d.engine, s->d.server_key, NULL, secret,
                              sizeof secret, ct, &ct_len);
    if (rc == VEIL_OK)
        rc = veil_rsa_decrypt(s->d.engine, s->d.server_key, NULL, ct, ct_len,
                              &back);
    int ok = rc == VEIL_OK && veil_secbuf_len(back) == sizeof secret &&
             memcmp(veil_secbuf_data(back), secret, sizeof secret) == 0;
    if (!ok)
        snprintf(why, why_size, "%s", veil_last_error()->message);
    veil_secbuf_free(back);
    explicit_bzero(secret, sizeof secret);
    return ok;
}

static enum MHD_Result get_health(gw_server *s, struct MHD_Connection *c,
                                  req *r)
{
    pthread_mutex_lock(&s->health_lock);
    time_t now = time(NULL);
    if (s->health == NULL || now - s->health_at >= HEALTH_CACHE_S) {
        char why[320] = "";
        cJSON *j = cJSON_CreateObject();
        cJSON *tok = cJSON_AddObjectToObject(j, "token");
        cJSON *ups = cJSON_AddObjectToObject(j, "upstreams");
        int ok = token_alive(s, why, sizeof why);
        if (!ok)
            slog(s, VEIL_LOG_ERROR, "token check failed: %s", why);
        cJSON_AddBoolToObject(tok, "ok", ok);
        if (!ok)
            cJSON_AddStringToObject(tok, "detail", why);
        for (size_t i = 0; i < s->d.cfg->n_models; i++) {
            const gw_model *m = &s->d.cfg->models[i];
            const veil_logger lg = {s->d.log, s->d.log_ctx, s->d.log_level};
            int up = gw_upstream_alive(s->d.cfg, m, &lg);
            cJSON_AddBoolToObject(ups, m->id, up);
            ok &= up;
        }
        cJSON_AddStringToObject(j, "status", ok ? "ok" : "degraded");
        free(s->health);
        s->health = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
        s->health_ok = ok;
        s->health_at = now;
    }
    struct MHD_Response *resp =
        s->health
            ? text_response("application/json", s->health, strlen(s->health))
            : NULL;
    int ok = s->health_ok;
    pthread_mutex_unlock(&s->health_lock);
    if (resp == NULL)
        return fail(c, r, 500, "out of memory");
    return queue(c, r, ok ? 200 : 503, resp);
}

/* ---- the exchange ------------------------------------------------------ */

static void address_id(const gw_server *s, struct MHD_Connection *c,
                       uint8_t id[32])
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);

    gw_rate_address_id(ci ? ci->client_addr : NULL, s->d.cfg->ipv6_prefix, id);
}

/* Early refusals, before any body is read: size, auth, rate, room for the
 * body.  r->limit is the largest body the route takes.  The worker slot
 * comes later, once the body is in. */
static enum MHD_Result admit(gw_server *s, struct MHD_Connection *c, req *r)
{
    if (atomic_load(&s->stopping))
        return unavailable(c, r, STOP_RETRY_S, "the gateway is shutting down");
    const char *cl = header(c, MHD_HTTP_HEADER_CONTENT_LENGTH);
    unsigned long long declared = 0;
    if (cl) {
        char *end;
        errno = 0;
        declared = strtoull(cl, &end, 10);
        if (errno || *end || end == cl)
            return fail(c, r, 400, "Content-Length is not a number");
        if (declared > r->limit)
            return fail(c, r, 413,
                        "request body of %llu bytes is over the limit of %zu",
                        declared, r->limit);
    }
    if (s->d.auth) {
        const char *a = header(c, MHD_HTTP_HEADER_AUTHORIZATION);
        if (a == NULL || strncasecmp(a, "Bearer ", 7) != 0)
            return fail(c, r, 401, "missing API key (Authorization: Bearer)");
        if (!gw_auth_check(s->d.auth, a + 7, r->id))
            return fail(c, r, 401, "invalid API key");
        r->key_name = gw_auth_name(s->d.auth, r->id);
    } else {
        address_id(s, c, r->id);
    }
    unsigned retry = 0;
    if (!gw_rate_take(s->d.rate, r->id, now_s(), &retry))
        return too_many(c, r, retry);
    if (declared > 0) {
        r->body = malloc(declared + 1);
        if (r->body == NULL)
            return fail(c, r, 503, "out of memory");
        r->cap = declared + 1;
    }
    return MHD_YES;
}

static int append(req *r, const char *data, size_t n)
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

static int tier_bit(const char *t)
{
    if (t == NULL || !strcmp(t, "standard"))
        return GW_TIER_STANDARD;
    if (!strcmp(t, "high"))
        return GW_TIER_HIGH;
    if (!strcmp(t, "maximum"))
        return GW_TIER_MAXIMUM;
    return 0;
}

/* A client key for one request: from the cache (entry set) or the
 * request's own (entry NULL). */
typedef struct ckey_ref {
    veil_key *key;
    struct ckey *entry;
} ckey_ref;

static void ckey_release(gw_server *s, ckey_ref *k)
{
    if (k->entry) {
        pthread_mutex_lock(&s->key_lock);
        k->entry->refs--;
        pthread_mutex_unlock(&s->key_lock);
    } else {
        veil_key_free(k->key);
    }
    k->key = NULL;
    k->entry = NULL;
}

static int ckey_lookup(gw_server *s, const uint8_t hash[32], ckey_ref *out)
{
    pthread_mutex_lock(&s->key_lock);
    for (int i = 0; i < KEY_CACHE; i++) {
        struct ckey *e = &s->keys[i];
        if (e->key && memcmp(e->hash, hash, 32) == 0) {
            e->refs++;
            e->used = ++s->key_clock;
            out->key = e->key;
            out->entry = e;
            break;
        }
    }
    pthread_mutex_unlock(&s->key_lock);
    return out->key != NULL;
}

/* Keeps a checked key in the least recently used free place; when every
 * place is in use the key stays the request's own. */
static void ckey_insert(gw_server *s, const uint8_t hash[32], ckey_ref *k)
{
    pthread_mutex_lock(&s->key_lock);
    struct ckey *victim = NULL;
    for (int i = 0; i < KEY_CACHE; i++) {
        struct ckey *e = &s->keys[i];
        if (e->refs == 0 && (victim == NULL || e->used < victim->used))
            victim = e;
    }
    if (victim) {
        veil_key_free(victim->key);
        memcpy(victim->hash, hash, 32);
        victim->key = k->key;
        victim->refs = 1;
        victim->used = ++s->key_clock;
        k->entry = victim;
    }
    pthread_mutex_unlock(&s->key_lock);
}

/* What is wrong with an RSA public key, or NULL: OpenSSL's public-key
 * check (n odd, of no small factor, e in range) and the rules of NIST SP
 * 800-56B on e (odd, 65537 <= e < 2^256, so below n), checked here too so
 * that they hold whatever the OpenSSL version. */
static const char *rsa_key_problem(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *k = b ? PEM_read_bio_PUBKEY(b, NULL, NULL, NULL) : NULL;
    EVP_PKEY_CTX *ctx = k ? EVP_PKEY_CTX_new_from_pkey(NULL, k, NULL) : NULL;
    BIGNUM *n = NULL, *e = NULL;
    const char *why = NULL;

    if (ctx == NULL || !EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_RSA_N, &n) ||
        !EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_RSA_E, &e))
        why = "its modulus and exponent cannot be read";
    else if (!BN_is_odd(n))
        why = "its modulus is even";
    else if (!BN_is_odd(e) || BN_num_bits(e) > 256 ||
             BN_cmp(e, BN_value_one()) <= 0 || BN_get_word(e) < 65537)
        why = "its public exponent must be odd, at least 65537 and below "
              "2^256";
    else if (BN_cmp(e, n) >= 0)
        why = "its public exponent is not below its modulus";
    else if (EVP_PKEY_public_check(ctx) != 1)
        why = "OpenSSL's public-key check fails";
    ERR_clear_error();
    BN_free(n);
    BN_free(e);
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(k);
    BIO_free(b);
    return why;
}

/* The caller's key from X-Public-Key: RSA, 2048 bits or more, and a valid
 * public key (rsa_key_problem), checked before anything runs for it.
 *
 * The cache of parsed keys is keyed by the header and the caller's API key
 * (or address, without API keys): whether a key is in it shows in the time
 * an answer takes, and this way nobody learns that way whether someone
 * else used a public key lately. */
static int client_key(gw_server *s, struct MHD_Connection *c, req *r,
                      ckey_ref *out)
{
    const char *h = header(c, "X-Public-Key");
    char *pem = NULL;
    const char *problem;
    veil_key_info info;
    uint8_t hash[32], both[64];
    out->key = NULL;
    out->entry = NULL;
    if (h == NULL || *h == '\0') {
        fail(c, r, 400, "X-Public-Key header is missing");
        return 0;
    }
    memcpy(both, r->id, 32);
    SHA256((const uint8_t *)h, strlen(h), both + 32);
    SHA256(both, sizeof both, hash);
    if (ckey_lookup(s, hash, out))
        return 1;
    if (veil_percent_decode(h, &pem) != VEIL_OK) {
        fail(c, r, 400, "X-Public-Key is not valid percent-encoding");
        return 0;
    }
    veil_rc rc = strstr(pem, "-----BEGIN PUBLIC KEY-----")
                     ? veil_key_from_public(s->d.engine, (const uint8_t *)pem,
                                            strlen(pem), &out->key)
                     : VEIL_E_KEY;
    if (rc != VEIL_OK) {
        free(pem);
        fail(c, r, 400, "X-Public-Key is not a PEM public key");
        return 0;
    }
    if (veil_key_get_info(out->key, &info) != VEIL_OK ||
        info.type != VEIL_KEY_RSA || info.bits < VEIL_PKG_MIN_RSA_BITS) {
        free(pem);
        ckey_release(s, out);
        fail(c, r, 400, "X-Public-Key must be an RSA key of at least %u bits",
             VEIL_PKG_MIN_RSA_BITS);
        return 0;
    }
    if (info.bits > CLIENT_KEY_MAX_BITS) {
        free(pem);
        ckey_release(s, out);
        fail(c, r, 400,
             "X-Public-Key must be an RSA key of at most %u bits (the NOMYO "
             "clients use 2048 or 4096)",
             CLIENT_KEY_MAX_BITS);
        return 0;
    }
    problem = rsa_key_problem(pem);
    free(pem);
    if (problem) {
        ckey_release(s, out);
        fail(c, r, 400, "X-Public-Key is not a valid RSA public key: %s",
             problem);
        return 0;
    }
    ckey_insert(s, hash, out);
    return 1;
}

/* The value of a model's cache_salt_field for this caller: hex of
 * HMAC-SHA256(gateway secret, the API key's hash, or the address's without
 * API keys).  Requests of one API key share the backend's prompt cache,
 * those of two keys never do; the salt tells nothing of the key. */
static void cache_salt(gw_server *s, const uint8_t id[32], char out[65])
{
    uint8_t mac[32];
    unsigned int len = sizeof mac;

    if (HMAC(EVP_sha256(), s->salt_secret, sizeof s->salt_secret, id, 32, mac,
             &len) == NULL)
        RAND_bytes(mac, sizeof mac); /* fail safe: a cache of its own */
    veil_hex(mac, sizeof mac, out);
    OPENSSL_cleanse(mac, sizeof mac);
}

/* The "_metadata" member veild adds to an answer, as text: ",\"_metadata\":
 * {...}" (the comma when the answer keeps other members).  *attestation
 * (the TPM's quote object, or NULL) goes in as tpm_attestation and is then
 * owned here (*attestation set to NULL).  malloc'd; NULL: no memory. */
static char *metadata_member(gw_server *s, const char *payload_id,
                             const char *tier, cJSON **attestation, int comma)
{
    cJSON *md = cJSON_CreateObject(), *mp = cJSON_CreateObject();
    char *text = NULL, *out = NULL;
    size_t size;

    if (md && mp && cJSON_AddStringToObject(mp, "platform", "linux") &&
        cJSON_AddBoolToObject(mp, "memory_locking", s->mem.locking) &&
        cJSON_AddBoolToObject(mp, "secure_zeroing", s->mem.zeroing) &&
        cJSON_AddBoolToObject(mp, "core_dump_prevention",
                              s->mem.core_dumps_off) &&
        cJSON_AddItemToObject(md, "memory_protection", mp)) {
        mp = NULL;
        if (cJSON_AddStringToObject(md, "payload_id", payload_id) &&
            cJSON_AddStringToObject(md, "security_tier", tier) &&
            cJSON_AddStringToObject(md, "response_status", "success") &&
            (*attestation == NULL ||
             cJSON_AddItemToObject(md, "tpm_attestation", *attestation))) {
            *attestation = NULL;
            text = cJSON_PrintUnformatted(md);
        }
    }
    cJSON_Delete(mp);
    cJSON_Delete(md);
    if (text == NULL)
        return NULL;
    size = strlen(text) + sizeof ",\"_metadata\":";
    if ((out = malloc(size)) != NULL)
        snprintf(out, size, "%s\"_metadata\":%s", comma ? "," : "", text);
    free(text);
    return out;
}

/* The answer to seal: the backend's text byte for byte, without its own
 * "_metadata" (whatever it holds: only veild's reaches the client), with
 * veild's spliced in before the closing brace.  A secret buffer, or NULL
 * (no memory). */
static veil_secbuf *answer_text(const gw_upstream_result *up,
                                const char *metadata)
{
    veil_json_edit edits[2];
    size_t n = 0, len;
    veil_secbuf *out = NULL;

    if (up->has_metadata)
        n = veil_json_remove_members(up->body, up->len, &up->metadata, 1,
                                     edits);
    edits[n++] = (veil_json_edit){up->close, 0, metadata, strlen(metadata)};
    len = veil_json_spliced_len(up->len, edits, n);
    if (len == (size_t)-1 || veil_secbuf_new(len, &out) != VEIL_OK)
        return NULL;
    veil_json_splice(up->body, up->len, edits, n,
                     (char *)veil_secbuf_data(out));
    return out;
}

/* The signature of one answer, as it goes out in the headers. */
typedef struct answer_sig {
    char *sig_b64; /* malloc'd */
    char signed_at[24];
} answer_sig;

/* Signs the statement of an answer (docs/ATTESTATION.md) and keeps the
 * signature for GET /v1/signatures/ID.  1, or 0 (logged) when it could not
 * be signed. */
static int sign_answer(gw_server *s, const char *pid, const char *tier,
                       const uint8_t request_sha256[32], const char *pkg,
                       answer_sig *out)
{
    uint8_t response_sha256[32], sig[VEIL_ECDSA_SIG_MAX];
    size_t sig_len = sizeof sig, st_len;
    char statement[VEIL_EV_STATEMENT_MAX], req_hex[65], resp_hex[65],
        key[PID_MAX + 1];
    long long signed_at = (long long)time(NULL);
    cJSON *j;
    char *body = NULL;

    SHA256((const uint8_t *)pkg, strlen(pkg), response_sha256);
    st_len = veil_ev_statement(pid, tier, request_sha256, response_sha256,
                               s->d.signing_key_sha256, signed_at, statement,
                               sizeof statement);
    if (st_len == 0) {
        slog(s, VEIL_LOG_ERROR, "signing the answer to %s: no statement", pid);
        return 0;
    }
    if (veil_ecdsa_sign(s->d.engine, s->d.signing_key,
                        (const uint8_t *)statement, st_len, sig,
                        &sig_len) != VEIL_OK) {
        slog(s, VEIL_LOG_ERROR, "signing the answer to %s failed: %s", pid,
             veil_last_error()->message);
        return 0;
    }
    if ((out->sig_b64 = veil_b64_encode(sig, sig_len)) == NULL) {
        slog(s, VEIL_LOG_ERROR, "signing the answer to %s: out of memory", pid);
        return 0;
    }
    snprintf(out->signed_at, sizeof out->signed_at, "%lld", signed_at);

    /* The stored copy: losing it costs only the later lookup, so a failure
     * here is logged and the answer still goes. */
    veil_hex(request_sha256, 32, req_hex);
    veil_hex(response_sha256, 32, resp_hex);
    j = cJSON_CreateObject();
    if (j && cJSON_AddStringToObject(j, "format", "veil-signature-v1") &&
        cJSON_AddStringToObject(j, "payload_id", pid) &&
        cJSON_AddStringToObject(j, "security_tier", tier) &&
        cJSON_AddStringToObject(j, "request_sha256", req_hex) &&
        cJSON_AddStringToObject(j, "response_sha256", resp_hex) &&
        cJSON_AddStringToObject(j, "signing_key_sha256", s->sign_hex) &&
        cJSON_AddNumberToObject(j, "signed_at", (double)signed_at) &&
        cJSON_AddStringToObject(j, "signature_b64", out->sig_b64) &&
        cJSON_AddStringToObject(j, "statement", statement))
        body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    payload_id_canonical(pid, key);
    if (body == NULL || gw_signlog_put(s->d.signlog, key, body, time(NULL)))
        slog(s, VEIL_LOG_WARN,
             "the signature of %s could not be kept for /v1/signatures", pid);
    free(body);
    return 1;
}

static enum MHD_Result exchange(gw_server *s, struct MHD_Connection *c, req *r)
{
    const char *pid = header(c, "X-Payload-ID");
    const char *tier = header(c, "X-Security-Tier");
    ckey_ref ck = {0};
    veil_secbuf *pt = NULL, *answer = NULL;
    cJSON *attestation = NULL;
    gw_upstream_result up = {0};
    gw_request *rq = NULL;
    char *pkg = NULL, *metadata = NULL, pid_key[PID_MAX + 1], why[320];
    char salt[65], *salt_p = NULL;
    veil_pkg_meta meta;
    answer_sig sig = {0};
    uint8_t request_sha256[32];
    enum MHD_Result ret;

    if (!payload_id_canonical(pid, pid_key))
        return fail(c, r, 400,
                    "X-Payload-ID must be 1 to %d printable ASCII characters "
                    "without spaces",
                    PID_MAX);
    snprintf(r->payload_id, sizeof r->payload_id, "%s", pid);
    unsigned tbit = (unsigned)tier_bit(tier);
    if (tbit == 0)
        return fail(c, r, 400,
                    "X-Security-Tier must be standard, high or maximum");
    if (r->len == 0)
        return fail(c, r, 400, "the request body is empty");
    if (!client_key(s, c, r, &ck))
        return MHD_YES;
    /* the exact bytes received: what the client hashes too */
    SHA256((const uint8_t *)r->body, r->len, request_sha256);

    veil_rc rc = veil_pkg_open(s->d.engine, s->d.server_key, r->body, r->len,
                               &pt, &meta);
    if (rc == VEIL_E_DECRYPT && meta.unwrap_rc != VEIL_OK &&
        meta.unwrap_rc != VEIL_E_DECRYPT) {
        /* The token failed, not the package: logged when it happens (not
         * only at the next /healthz), and no 400 that would send the
         * client to refetch a key that is fine. */
        slog(s, VEIL_LOG_ERROR,
             "the token failed to unwrap the key of request %s (%s)",
             r->payload_id, veil_rc_name(meta.unwrap_rc));
        ret =
            fail(c, r, 503, "the gateway's key store failed; try again later");
        goto out;
    }
    if (rc == VEIL_E_DECRYPT) {
        /* One answer, byte for byte, whatever failed inside. */
        r->answered = 1;
        r->status = 400;
        ret = MHD_queue_response(c, 400, s->undecryptable);
        goto out;
    }
    if (rc != VEIL_OK) {
        ret = fail(c, r, rc == VEIL_E_NOMEM ? 503 : 400, "%s",
                   veil_last_error()->message);
        goto out;
    }
    uint8_t pid_hash[32];
    SHA256((const uint8_t *)pid_key, strlen(pid_key), pid_hash);
    switch (gw_strikes_add(s->d.strikes, pid_hash, meta.wrapped_key_sha256,
                           time(NULL))) {
    case GW_STRIKE_SEEN:
        ret = fail(c, r, 409,
                   "this request package (payload ID or wrapped key) was "
                   "seen before; replays are refused");
        goto out;
    case GW_STRIKE_FULL:
        ret = fail(c, r, 503, "replay register full; try again later");
        goto out;
    case GW_STRIKE_NEW:
        break;
    }

    /* One scan of the request, no tree: what is checked is what goes. */
    if ((rq = malloc(sizeof *rq)) == NULL) {
        ret = fail(c, r, 503, "out of memory");
        goto out;
    }
    if (gw_request_scan(s->d.cfg, (const char *)veil_secbuf_data(pt),
                        veil_secbuf_len(pt), rq, why, sizeof why) != 0) {
        ret = fail(c, r, 400, "%s", why);
        goto out;
    }
    if (rq->model_len < 0) {
        ret = fail(c, r, 400, "the request has no \"model\"");
        goto out;
    }
    const gw_model *m = (size_t)rq->model_len == strlen(rq->model)
                            ? gw_config_model(s->d.cfg, rq->model)
                            : NULL;
    if (m == NULL) {
        ret = fail(c, r, 400,
                   "model '%.200s' is not served here (GET /v1/models lists "
                   "them)",
                   rq->model);
        goto out;
    }
    if (!(m->tiers & tbit)) {
        ret = fail(c, r, 403, "model '%.200s' is not allowed on the %s tier",
                   m->id, tier_name(tbit));
        goto out;
    }
    /* maximum is high plus the TPM (PROTOCOL-NOMYO.md, tiers). */
    if (tbit >= GW_TIER_HIGH && !(s->mem.locking && s->mem.core_dumps_off &&
                                  s->mem.dontdump && veil_secbuf_locked(pt))) {
        ret = fail(c, r, 503,
                   "the %s tier needs locked, unswappable, undumpable "
                   "memory, which is not in force on this gateway",
                   tier_name(tbit));
        goto out;
    }
    if (tbit == GW_TIER_MAXIMUM) {
        /* Quoted before the backend runs: a TPM that fails costs no
         * inference, and no answer ever leaves unattested. */
        uint8_t qualifying[32];

        if (s->d.tpm == NULL) {
            ret = fail(c, r, 503, "no TPM attestation available");
            goto out;
        }
        veil_ev_answer_qualifying(pid, request_sha256,
                                  s->d.encryption_key_sha256,
                                  s->d.signing_key_sha256, qualifying);
        attestation = gw_tpm_quote(s->d.tpm, qualifying, why, sizeof why);
        if (attestation == NULL) {
            slog(s, VEIL_LOG_ERROR, "quote for %s failed: %s", pid, why);
            ret =
                fail(c, r, 503, "no TPM attestation for this answer: %s", why);
            goto out;
        }
    }
    if (m->cache_salt_field) {
        cache_salt(s, r->id, salt);
        salt_p = salt;
    }

    const veil_logger lg = {s->d.log, s->d.log_ctx, s->d.log_level};
    char up_err[512];
    gw_rc urc = gw_upstream_call(
        s->d.cfg, m, (const char *)veil_secbuf_data(pt), veil_secbuf_len(pt),
        rq, salt_p, &lg, &up, up_err, sizeof up_err);
    if (urc != GW_OK) {
        ret = fail(c, r, gw_rc_status(urc), "%s", up_err);
        goto out;
    }
    metadata = metadata_member(s, pid, tier_name(tbit), &attestation,
                               up.members > (size_t)up.has_metadata);
    answer = metadata ? answer_text(&up, metadata) : NULL;
    if (answer == NULL) {
        ret = fail(c, r, 503, "out of memory");
        goto out;
    }
    rc = veil_pkg_seal(s->d.engine, ck.key, veil_secbuf_data(answer),
                       veil_secbuf_len(answer), meta.tag_mode,
                       floor((double)time(NULL)), &pkg);
    if (rc != VEIL_OK) {
        slog(s, VEIL_LOG_ERROR, "sealing the answer to %s failed: %s", pid,
             veil_last_error()->message);
        ret = fail(c, r, 500, "the answer could not be sealed");
        goto out;
    }
    /* A gateway with a signing key never sends an unsigned answer. */
    if (s->d.signing_key &&
        !sign_answer(s, pid, tier_name(tbit), request_sha256, pkg, &sig)) {
        ret = fail(c, r, 500, "the answer could not be signed");
        goto out;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        strlen(pkg), pkg, MHD_RESPMEM_MUST_FREE);
    if (resp == NULL) {
        ret = MHD_NO;
        goto out;
    }
    r->answer_len = strlen(pkg); /* held until sent: counted in body_mem */
    pkg = NULL;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            "application/json");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (sig.sig_b64 &&
        (MHD_add_response_header(resp, "X-Veil-Signature", sig.sig_b64) !=
             MHD_YES ||
         MHD_add_response_header(resp, "X-Veil-Signed-At", sig.signed_at) !=
             MHD_YES ||
         MHD_add_response_header(resp, "X-Veil-Signing-Key",
                                 s->sign_key_header) != MHD_YES)) {
        MHD_destroy_response(resp);
        ret = fail(c, r, 500, "the answer could not be signed");
        goto out;
    }
    ret = queue(c, r, 200, resp);
out:
    free(sig.sig_b64);
    cJSON_Delete(attestation);
    free(pkg);
    free(metadata);
    veil_secbuf_free(answer);
    free(rq);
    explicit_bzero(salt, sizeof salt);
    if (up.body) {
        explicit_bzero(up.body, up.len);
        free(up.body);
    }
    veil_secbuf_free(pt);
    ckey_release(s, &ck);
    return ret;
}

/* ---- attestation and signatures ---------------------------------------- */

/* GET /v1/attestation/report?nonce=HEX: a quote over the nonce and both
 * keys, with what a verifier needs to enrol this gateway. */
static enum MHD_Result get_report(gw_server *s, struct MHD_Connection *c,
                                  req *r)
{
    const char *hex =
        MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "nonce");
    size_t n = hex ? strlen(hex) : 0;
    uint8_t nonce[VEIL_EV_NONCE_MAX], qualifying[32];
    char why[320];
    cJSON *j;

    if (n % 2 || n < 2 * VEIL_EV_NONCE_MIN || n > 2 * VEIL_EV_NONCE_MAX ||
        !veil_hex_decode(hex, n / 2, nonce))
        return fail(c, r, 400,
                    "nonce must be %d to %d random bytes in hex (%d to %d "
                    "digits): ?nonce=HEX",
                    VEIL_EV_NONCE_MIN, VEIL_EV_NONCE_MAX, 2 * VEIL_EV_NONCE_MIN,
                    2 * VEIL_EV_NONCE_MAX);
    if (s->d.tpm == NULL)
        return fail(c, r, 503, "no TPM attestation available");
    veil_ev_report_qualifying(nonce, n / 2, s->d.encryption_key_sha256,
                              s->d.signing_key_sha256, qualifying);
    j = cJSON_CreateObject();
    if (!j ||
        !cJSON_AddStringToObject(j, "format", "veil-attestation-report-v1") ||
        !cJSON_AddStringToObject(j, "nonce", hex) ||
        !cJSON_AddStringToObject(j, "encryption_key_spki_b64",
                                 s->enc_spki_b64) ||
        !cJSON_AddStringToObject(j, "encryption_key_sha256", s->enc_hex) ||
        !(s->sign_spki_b64
              ? cJSON_AddStringToObject(j, "signing_key_spki_b64",
                                        s->sign_spki_b64)
              : cJSON_AddNullToObject(j, "signing_key_spki_b64")) ||
        !cJSON_AddStringToObject(j, "signing_key_sha256", s->sign_hex)) {
        cJSON_Delete(j);
        return fail(c, r, 500, "out of memory");
    }
    if (gw_tpm_report(s->d.tpm, qualifying, j, why, sizeof why) != 0) {
        cJSON_Delete(j);
        slog(s, VEIL_LOG_ERROR, "attestation report failed: %s", why);
        return fail(c, r, 503, "no attestation report: %s", why);
    }
    return json_answer(c, r, 200, j);
}

/* A member of o holding standard base64: decoded into *out (malloc'd,
 * at least one byte).  0 when absent, empty or not base64. */
static int b64_member(const cJSON *o, const char *name, uint8_t **out,
                      size_t *len)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);

    *out = NULL;
    if (!cJSON_IsString(v) || v->valuestring[0] == '\0')
        return 0;
    if (veil_b64_decode(v->valuestring, strlen(v->valuestring), out, len) !=
        VEIL_OK) {
        *out = NULL;
        return 0;
    }
    return *len > 0;
}

/* POST /v1/attestation/activate: TPM2_ActivateCredential of a credential
 * the verifier made for the long-term AK under the EK. */
static enum MHD_Result post_activate(gw_server *s, struct MHD_Connection *c,
                                     req *r)
{
    cJSON *in = r->len ? cJSON_ParseWithLength(r->body, r->len) : NULL, *j;
    uint8_t *blob = NULL, *enc = NULL, secret[64];
    size_t blob_len = 0, enc_len = 0, secret_len = 0;
    char why[320], *b64;
    enum MHD_Result ret;
    gw_rc rc;

    if (!cJSON_IsObject(in) ||
        !b64_member(in, "credential_blob_b64", &blob, &blob_len) ||
        !b64_member(in, "encrypted_secret_b64", &enc, &enc_len)) {
        ret = fail(c, r, 400,
                   "the body must be a JSON object with credential_blob_b64 "
                   "and encrypted_secret_b64 in standard base64");
        goto out;
    }
    if (s->d.tpm == NULL) {
        ret = fail(c, r, 503, "no TPM attestation available");
        goto out;
    }
    rc = gw_tpm_activate(s->d.tpm, blob, blob_len, enc, enc_len, secret,
                         &secret_len, why, sizeof why);
    if (rc == GW_REFUSED) {
        ret = fail(c, r, 400, "the TPM refused the credential");
        goto out;
    }
    if (rc != GW_OK) {
        slog(s, VEIL_LOG_ERROR, "credential activation failed: %s", why);
        ret = fail(c, r, 503, "the credential could not be activated: %s", why);
        goto out;
    }
    b64 = veil_b64_encode(secret, secret_len);
    j = cJSON_CreateObject();
    if (b64 == NULL || j == NULL ||
        !cJSON_AddStringToObject(j, "secret_b64", b64)) {
        cJSON_Delete(j);
        ret = fail(c, r, 500, "out of memory");
    } else {
        ret = json_answer(c, r, 200, j);
    }
    free(b64);
out:
    explicit_bzero(secret, sizeof secret);
    free(blob);
    free(enc);
    cJSON_Delete(in);
    return ret;
}

/* GET /v1/signatures/ID: the signature of an answer, while it is kept. */
static enum MHD_Result get_signature(gw_server *s, struct MHD_Connection *c,
                                     req *r)
{
    char key[PID_MAX + 1], *body;
    struct MHD_Response *resp;

    if (!payload_id_canonical(r->payload_id, key))
        return fail(c, r, 400,
                    "the path must end in a payload ID (1 to %d printable "
                    "ASCII characters, no space)",
                    PID_MAX);
    if (s->d.signlog == NULL)
        return fail(c, r, 404,
                    "this gateway does not sign answers (no signing_key)");
    body = gw_signlog_get(s->d.signlog, key, time(NULL));
    if (body == NULL)
        return fail(c, r, 404,
                    "no signature is kept for payload ID %s (unknown, or "
                    "older than signature_retention)",
                    r->payload_id);
    resp = text_response("application/json", body, strlen(body));
    free(body);
    return resp ? queue(c, r, 200, resp) : MHD_NO;
}

/* ---- MHD callbacks ----------------------------------------------------- */

static enum route route_of(const char *method, const char *url, int *bad_method)
{
    static const struct {
        const char *path, *method;
        enum route r;
    } routes[] = {
        {"/pki/public_key", "GET", R_KEY},
        {"/v1/models", "GET", R_MODELS},
        {"/healthz", "GET", R_HEALTH},
        {ROUTE_COMPLETION, "POST", R_COMPLETION},
        {ROUTE_REPORT, "GET", R_REPORT},
        {ROUTE_ACTIVATE, "POST", R_ACTIVATE},
        {ROUTE_SIGNATURES, "GET", R_SIGNATURE}, /* a prefix: .../ID */
    };
    *bad_method = 0;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (routes[i].r == R_SIGNATURE
                ? strncmp(url, routes[i].path, strlen(routes[i].path)) != 0
                : strcmp(url, routes[i].path) != 0)
            continue;
        /* HEAD for the cheap GETs only: a HEAD of the report would cost
         * a TPM quote that nobody reads. */
        if (strcmp(method, routes[i].method) == 0 ||
            (strcmp(method, "HEAD") == 0 &&
             strcmp(routes[i].method, "GET") == 0 && routes[i].r != R_REPORT))
            return routes[i].r;
        *bad_method = 1;
        return R_NONE;
    }
    return R_NONE;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c,
                                  const char *url, const char *method,
                                  const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    gw_server *s = cls;
    req *r = *con_cls;
    if (r == NULL) {
        if ((r = calloc(1, sizeof *r)) == NULL)
            return MHD_NO;
        *con_cls = r;
        clock_gettime(CLOCK_MONOTONIC, &r->t0);
        const union MHD_ConnectionInfo *sc =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        r->conn = sc ? sc->socket_context : NULL;
        set_phase(s, r->conn, P_WORK);
        int bad_method;
        r->route = route_of(method, url, &bad_method);
        r->method = !strcmp(method, "POST")   ? "POST"
                    : !strcmp(method, "HEAD") ? "HEAD"
                                              : "GET";
        r->limit =
            r->route == R_COMPLETION ? s->d.cfg->body_limit : SMALL_BODY_MAX;
        switch (r->route) {
        case R_KEY:
            return get_key(s, c, r);
        case R_MODELS:
            return get_models(s, c, r);
        case R_HEALTH:
            return get_health(s, c, r);
        case R_SIGNATURE: {
            /* the ID, kept only when it is one (it is logged) */
            const char *id = url + strlen(ROUTE_SIGNATURES);
            if (payload_id_canonical(id, NULL))
                snprintf(r->payload_id, sizeof r->payload_id, "%s", id);
        }
            /* fall through */
        case R_COMPLETION:
        case R_REPORT:
        case R_ACTIVATE:
            /* The same refusals as a completion; only the signature
             * lookup, which is cheap and holds no body, does without a
             * worker slot. */
            pthread_mutex_lock(&s->lock);
            s->in_flight++;
            pthread_mutex_unlock(&s->lock);
            r->admitted = 1;
            enum MHD_Result ret = admit(s, c, r);
            if (r->answered && r->conn) {
                /* refused before its body: drain that after the answer */
                pthread_mutex_lock(&s->conn_lock);
                r->conn->linger = 1;
                pthread_mutex_unlock(&s->conn_lock);
            }
            set_phase(s, r->conn, r->answered ? P_SEND : P_BODY);
            return ret;
        case R_NONE:
            return bad_method ? fail(c, r, 405, "method not allowed")
                              : fail(c, r, 404, "not found");
        }
    }
    if (*upload_size > 0) {
        /* libmicrohttpd answers only once the body is in: past the limit
         * the rest is counted and dropped, and the 413 goes at the end;
         * a body more than 64 MiB over the limit closes the connection. */
        if (r->refused == 0) {
            charge_body(s, r, *upload_size);
            int a = append(r, upload, *upload_size);
            if (a <= 0)
                r->refused = a == 0 ? 413 : 503;
        }
        r->seen += *upload_size;
        if (r->conn) {
            pthread_mutex_lock(&s->conn_lock);
            r->conn->got += *upload_size;
            pthread_mutex_unlock(&s->conn_lock);
        }
        *upload_size = 0;
        size_t limit = r->limit;
        return r->seen > limit && r->seen - limit > DISCARD_MAX ? MHD_NO
                                                                : MHD_YES;
    }
    if (r->answered)
        return MHD_YES;
    /* the body is in: the next body in line may go */
    pthread_mutex_lock(&s->lock);
    body_list(s, r, 0);
    pthread_mutex_unlock(&s->lock);
    enum MHD_Result ret;
    if (r->refused == 413) {
        ret = fail(c, r, 413, "request body is over the limit of %zu bytes",
                   r->limit);
    } else if (r->refused) {
        ret = fail(c, r, 503, "out of memory");
    } else {
        /* The body is in: now a worker slot (routes that do real work: the
         * exchange, the TPM; the signature lookup is cheap). */
        int slot = r->route != R_SIGNATURE;
        set_phase(s, r->conn, slot ? P_WAIT : P_WORK);
        if (slot && !take_slot(s, r)) {
            ret =
                unavailable(c, r, STOP_RETRY_S, "the gateway is shutting down");
        } else {
            set_phase(s, r->conn, P_WORK);
            switch (r->route) {
            case R_REPORT:
                ret = get_report(s, c, r);
                break;
            case R_ACTIVATE:
                ret = post_activate(s, c, r);
                break;
            case R_SIGNATURE:
                ret = get_signature(s, c, r);
                break;
            default:
                ret = exchange(s, c, r);
            }
        }
    }
    /* the answer is queued: a slow reader holds neither slot nor body,
     * only its answer's memory */
    release_slot(s, r);
    drop_body(s, r);
    if (r->answered && r->answer_len) {
        pthread_mutex_lock(&s->lock);
        s->body_mem += r->answer_len;
        r->answer_held = r->answer_len;
        pthread_mutex_unlock(&s->lock);
    }
    set_phase(s, r->conn, P_SEND);
    return ret;
}

/* What the client got, for the log: the status when the answer went out
 * whole; else "cut (why; ...)", never the status of an answer that was
 * not delivered. */
static void outcome(gw_server *s, const req *r,
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
    if (r->conn) {
        pthread_mutex_lock(&s->conn_lock);
        why = r->conn->cut;
        pthread_mutex_unlock(&s->conn_lock);
    }
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

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    gw_server *s = cls;
    req *r = *con_cls;
    (void)c;
    if (r == NULL)
        return;
    if (r->admitted) {
        char what[128];
        outcome(s, r, toe, what, sizeof what);
        /* payload_id is set only once checked, so the line carries no text
         * a client chose */
        static const char *const paths[] = {
            [R_COMPLETION] = ROUTE_COMPLETION,
            [R_REPORT] = ROUTE_REPORT,
            [R_ACTIVATE] = ROUTE_ACTIVATE,
            [R_SIGNATURE] = "/v1/signatures/ID",
        };
        int id_ok = (r->route == R_COMPLETION || r->route == R_SIGNATURE) &&
                    r->payload_id[0] != '\0';
        slog(s, VEIL_LOG_INFO, "%s %s %s%s%s%s%s %.1f ms", r->method,
             paths[r->route], what, id_ok ? " payload " : "",
             id_ok ? r->payload_id : "", r->key_name ? " key " : "",
             r->key_name ? r->key_name : "", ms_since(&r->t0));
        release_slot(s, r);
        pthread_mutex_lock(&s->lock);
        s->in_flight--;
        pthread_cond_broadcast(&s->idle);
        pthread_mutex_unlock(&s->lock);
    } else {
        slog(s, VEIL_LOG_DEBUG, "%s %d %.1f ms",
             r->route == R_NONE ? "request" : "GET", r->status,
             ms_since(&r->t0));
    }
    drop_body(s, r);
    /* the next request on this connection: its header deadline */
    set_phase(s, r->conn, P_HEAD);
    free(r);
    *con_cls = NULL;
}

/* MHD_OPTION_NOTIFY_CONNECTION: tracks each connection for the watchdog;
 * at the close, a connection refused before its body goes to the drain
 * (a dup of its socket, so MHD's close does not reset it). */
static void on_connection(void *cls, struct MHD_Connection *c,
                          void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    gw_server *s = cls;
    conn *k;

    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        *socket_context = NULL;
        if (ci == NULL || (k = calloc(1, sizeof *k)) == NULL) {
            slog(s, VEIL_LOG_ERROR, "a connection without deadlines (%s)",
                 ci ? "out of memory" : "no socket");
            return;
        }
        k->fd = ci->connect_fd;
        k->phase = P_HEAD;
        k->since = now_s();
        pthread_mutex_lock(&s->conn_lock);
        k->next = s->conns;
        if (s->conns)
            s->conns->prev = k;
        s->conns = k;
        pthread_mutex_unlock(&s->conn_lock);
        *socket_context = k;
        return;
    }
    if ((k = *socket_context) == NULL)
        return;
    pthread_mutex_lock(&s->conn_lock);
    if (k->prev)
        k->prev->next = k->next;
    else
        s->conns = k->next;
    if (k->next)
        k->next->prev = k->prev;
    if (k->linger && !k->cut && !s->watch_stop && s->n_linger < LINGER_MAX) {
        int fd = fcntl(k->fd, F_DUPFD_CLOEXEC, 0);
        if (fd >= 0) {
            shutdown(fd, SHUT_WR);
            s->lingering[s->n_linger++] = (struct drain_fd){fd, now_s(), 0};
        }
    }
    pthread_mutex_unlock(&s->conn_lock);
    free(k);
    *socket_context = NULL;
}

/* Reads and drops what a refused connection still sends.  1 when it is
 * done (end of input, error, too much, too slow). */
static int drain(const gw_config *cfg, struct drain_fd *l, double now)
{
    char buf[16384];
    ssize_t n;

    while ((n = recv(l->fd, buf, sizeof buf, MSG_DONTWAIT)) > 0) {
        l->got += (size_t)n;
        if (l->got > DISCARD_MAX)
            return 1;
    }
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
        return 1;
    return body_late(cfg, now - l->since, l->got) != NULL;
}

/* Cuts the connections past a deadline, every WATCH_TICK_MS, and drains
 * refused ones as their bytes come. */
static void *watchdog(void *arg)
{
    gw_server *s = arg;
    const gw_config *cfg = s->d.cfg;
    struct pollfd pf[LINGER_MAX];
    double last = 0;

    pthread_mutex_lock(&s->conn_lock);
    while (!s->watch_stop) {
        int n = s->n_linger;
        for (int i = 0; i < n; i++)
            pf[i] = (struct pollfd){s->lingering[i].fd, POLLIN, 0};
        pthread_mutex_unlock(&s->conn_lock);
        if (n > 0)
            poll(pf, (nfds_t)n, WATCH_TICK_MS);
        else
            poll(NULL, 0, WATCH_TICK_MS);
        pthread_mutex_lock(&s->conn_lock);
        double now = now_s();
        int keep = 0;
        /* entries past n came in during the poll: kept as they are */
        for (int i = 0; i < s->n_linger; i++) {
            struct drain_fd *l = &s->lingering[i];
            if (i < n && (pf[i].revents || now - last >= 0.2) &&
                drain(cfg, l, now)) {
                close(l->fd);
                continue;
            }
            s->lingering[keep++] = *l;
        }
        s->n_linger = keep;
        if (now - last < WATCH_TICK_MS / 1000.0)
            continue;
        last = now;
        for (conn *k = s->conns; k; k = k->next) {
            double el = now - k->since;
            const char *why = NULL;
            switch (k->phase) {
            case P_HEAD:
                if (el > cfg->header_timeout)
                    why = "header_timeout";
                break;
            case P_BODY:
                why = body_late(cfg, el, k->got);
                break;
            case P_SEND:
                if (el > cfg->answer_timeout)
                    why = "answer_timeout";
                break;
            case P_WAIT:
            case P_WORK:
                break;
            }
            if (why && !k->cut) {
                k->cut = why;
                shutdown(k->fd, SHUT_RDWR);
                slog(s, k->phase == P_HEAD ? VEIL_LOG_DEBUG : VEIL_LOG_INFO,
                     "connection closed: %s", why);
            }
        }
    }
    for (int i = 0; i < s->n_linger; i++)
        close(s->lingering[i].fd);
    s->n_linger = 0;
    pthread_mutex_unlock(&s->conn_lock);
    return NULL;
}

/* ---- start and stop ---------------------------------------------------- */

static char *read_pem(const char *path, size_t *len, char *err, size_t size)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0;
    if (f == NULL) {
        snprintf(err, size, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    buf = malloc(1 << 20);
    if (buf)
        n = fread(buf, 1, (1 << 20) - 1, f);
    fclose(f);
    if (buf == NULL || n == 0) {
        free(buf);
        snprintf(err, size, "%s is empty or unreadable", path);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* Base64 of a key's SPKI DER (malloc'd), or NULL. */
static char *spki_b64(const veil_key *k)
{
    uint8_t *der = NULL;
    size_t len = 0;
    char *out;

    if (veil_key_public_der(k, &der, &len) != VEIL_OK)
        return NULL;
    out = veil_b64_encode(der, len);
    free(der);
    return out;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    gw_server *s = cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    line[strcspn(line, "\n")] = '\0';
    slog(s, VEIL_LOG_WARN, "http: %s", line);
}

gw_server *gw_server_start(const gw_deps *deps, char *err, size_t err_size)
{
    gw_server *s = calloc(1, sizeof *s);
    if (s == NULL) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    s->d = *deps;
    const gw_config *cfg = deps->cfg;
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->health_lock, NULL);
    pthread_cond_init(&s->idle, NULL);
    pthread_mutex_init(&s->slot_lock, NULL);
    s->slots_free = cfg->workers;
    pthread_mutex_init(&s->key_lock, NULL);
    pthread_mutex_init(&s->conn_lock, NULL);
    pthread_cond_init(&s->body_room, NULL);
    s->listen_fd = MHD_INVALID_SOCKET;
    s->body_mem_cap = cfg->body_memory
                          ? cfg->body_memory
                          : (size_t)2 * cfg->workers * cfg->body_limit;
    veil_memory_status_get(&s->mem);
    if (veil_key_public_pem(deps->server_key, &s->pem) != VEIL_OK ||
        (s->enc_spki_b64 = spki_b64(deps->server_key)) == NULL) {
        snprintf(err, err_size, "server key: %s", veil_last_error()->message);
        goto fail;
    }
    if (deps->signing_key &&
        (deps->signlog == NULL ||
         (s->sign_spki_b64 = spki_b64(deps->signing_key)) == NULL)) {
        snprintf(err, err_size, "signing key: %s",
                 deps->signlog ? veil_last_error()->message
                               : "no signature store");
        goto fail;
    }
    veil_hex(deps->encryption_key_sha256, 32, s->enc_hex);
    veil_hex(deps->signing_key_sha256, 32, s->sign_hex);
    snprintf(s->sign_key_header, sizeof s->sign_key_header, "sha256:%s",
             s->sign_hex);
    static const char undecryptable[] =
        "{\"detail\":\"" VEIL_PKG_DECRYPT_DETAIL "\"}";
    s->undecryptable = text_response("application/json", undecryptable,
                                     sizeof undecryptable - 1);
    if (s->undecryptable == NULL) {
        snprintf(err, err_size, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < cfg->n_models; i++)
        if (cfg->models[i].cache_salt_field) {
            if (gw_state_secret(cfg->state_dir, "cache-salt.key",
                                s->salt_secret, err, err_size) != 0)
                goto fail;
            break;
        }

    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC |
                     MHD_USE_ERROR_LOG;
    if (inet_pton(AF_INET, cfg->listen_addr, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)cfg->port);
    } else if (inet_pton(AF_INET6, cfg->listen_addr, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)cfg->port);
        /* "::" takes IPv4 too; a specific IPv6 address only IPv6 */
        flags |= IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr) ? MHD_USE_DUAL_STACK
                                                          : MHD_USE_IPv6;
    } else {
        snprintf(err, err_size, "listen address '%s' is not an IP address",
                 cfg->listen_addr);
        goto fail;
    }
    struct MHD_OptionItem opts[16];
    int n = 0;
    /* the logger first, so that MHD reports everything through it */
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_EXTERNAL_LOGGER,
                                        (intptr_t)mhd_log, s};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_SOCK_ADDR, 0, &ss};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_COMPLETED,
                                        (intptr_t)on_completed, s};
    opts[n++] =
        (struct MHD_OptionItem){MHD_OPTION_CONNECTION_TIMEOUT,
                                (intptr_t)(cfg->upstream_timeout + 60), NULL};
    opts[n++] =
        (struct MHD_OptionItem){MHD_OPTION_CONNECTION_LIMIT, 1024, NULL};
    opts[n++] =
        (struct MHD_OptionItem){MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                                (intptr_t)cfg->connections_per_address, NULL};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_CONNECTION,
                                        (intptr_t)on_connection, s};
    if (cfg->tls_cert) {
        size_t clen;
        if ((s->tls_cert = read_pem(cfg->tls_cert, &clen, err, err_size)) ==
                NULL ||
            (s->tls_key = read_pem(cfg->tls_key, &s->tls_key_len, err,
                                   err_size)) == NULL)
            goto fail;
        flags |= MHD_USE_TLS;
        opts[n++] =
            (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, s->tls_cert};
        opts[n++] =
            (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, s->tls_key};
    }
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
    if (pthread_create(&s->watchdog, NULL, watchdog, s) != 0) {
        snprintf(err, err_size, "cannot start the connection watchdog");
        goto fail;
    }
    s->watching = 1;
    s->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s,
                              MHD_OPTION_ARRAY, opts, MHD_OPTION_END);
    if (s->mhd == NULL) {
        snprintf(err, err_size, "cannot listen on %s port %u: %s",
                 cfg->listen_addr, cfg->port, strerror(errno));
        goto fail;
    }
    const union MHD_DaemonInfo *di =
        MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : cfg->port;
    return s;
fail:
    gw_server_stop(s, 0);
    return NULL;
}

unsigned gw_server_port(const gw_server *s)
{
    return s->port;
}

unsigned gw_server_stop(gw_server *s, unsigned grace_s)
{
    if (s == NULL)
        return 0;
    unsigned cut = 0;
    if (s->mhd) {
        /* New requests on open connections get 503, waiting ones too */
        atomic_store(&s->stopping, 1);
        pthread_mutex_lock(&s->lock);
        pthread_cond_broadcast(&s->body_room);
        pthread_mutex_unlock(&s->lock);
        pthread_mutex_lock(&s->slot_lock);
        for (struct slot_waiter *w = s->wait_head; w; w = w->next)
            pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&s->slot_lock);
        /* and new connections are refused at once: a listening socket left
         * open would queue them unanswered.  shutdown() stops it listening;
         * the descriptor stays valid for MHD's thread until the close. */
        s->listen_fd = MHD_quiesce_daemon(s->mhd);
        if (s->listen_fd != MHD_INVALID_SOCKET)
            shutdown(s->listen_fd, SHUT_RDWR);
        slog(s, VEIL_LOG_INFO, "listener closed: new connections are refused");
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += grace_s;
        pthread_mutex_lock(&s->lock);
        while (s->in_flight > 0 &&
               pthread_cond_timedwait(&s->idle, &s->lock, &until) == 0)
            ;
        cut = s->in_flight;
        pthread_mutex_unlock(&s->lock);
        if (cut) {
            /* past the grace: cut, and logged as cut by on_completed */
            pthread_mutex_lock(&s->conn_lock);
            for (conn *k = s->conns; k; k = k->next)
                if (k->cut == NULL) {
                    k->cut = "shutdown";
                    shutdown(k->fd, SHUT_RDWR);
                }
            pthread_mutex_unlock(&s->conn_lock);
        }
        MHD_stop_daemon(s->mhd);
        if (s->listen_fd != MHD_INVALID_SOCKET)
            close(s->listen_fd);
    }
    if (s->watching) {
        pthread_mutex_lock(&s->conn_lock);
        s->watch_stop = 1;
        pthread_mutex_unlock(&s->conn_lock);
        pthread_join(s->watchdog, NULL);
    }
    if (s->undecryptable)
        MHD_destroy_response(s->undecryptable);
    if (s->tls_key) {
        explicit_bzero(s->tls_key, s->tls_key_len);
        free(s->tls_key);
    }
    free(s->tls_cert);
    free(s->pem);
    free(s->enc_spki_b64);
    free(s->sign_spki_b64);
    free(s->health);
    for (int i = 0; i < KEY_CACHE; i++)
        veil_key_free(s->keys[i].key);
    OPENSSL_cleanse(s->salt_secret, sizeof s->salt_secret);
    pthread_mutex_destroy(&s->key_lock);
    pthread_mutex_destroy(&s->conn_lock);
    pthread_cond_destroy(&s->body_room);
    pthread_mutex_destroy(&s->slot_lock);
    pthread_cond_destroy(&s->idle);
    pthread_mutex_destroy(&s->health_lock);
    pthread_mutex_destroy(&s->lock);
    free(s);
    return cut;
}
