/* veild's HTTP side (libmicrohttpd): routes, early refusals, body limits,
 * and the NOMYO v1 exchange: open the request package with the server key
 * (inside the token), check replay, tier and model, ask the upstream, seal
 * the answer to the caller's key.
 *
 * Threads: one thread per connection (a blocking upstream call stalls only
 * its own connection), and `workers` slots taken before a request body is
 * read, so at most `workers` bodies are in memory at once; the others wait
 * in the kernel's socket buffers.  Slots go first come, first served (a
 * ticket queue): a plain semaphore lets a connection that was just answered
 * take the slot again and starves the others (a p99 36 times the p50). */
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
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>
#include <openssl/sha.h>

#include "gateway.h"
#include "package.h"

#define ROUTE_COMPLETION "/v1/chat/secure_completion"
#define HEALTH_CACHE_S 5
/* Parsed client keys kept (a PEM parse and checks cost ~0.35 ms). */
#define KEY_CACHE 64
/* Body bytes past the limit read (and dropped) to deliver the 413. */
#define DISCARD_MAX ((size_t)64 << 20)

enum route { R_NONE, R_KEY, R_MODELS, R_HEALTH, R_COMPLETION };

struct gw_server {
    gw_deps d;
    struct MHD_Daemon *mhd;
    unsigned port;
    char *pem;
    char *tls_cert, *tls_key;
    size_t tls_key_len;
    pthread_mutex_t slot_lock; /* the ticket queue of worker slots */
    pthread_cond_t slot_free;
    uint64_t ticket_next;     /* tickets handed out */
    uint64_t ticket_admit;    /* tickets below this may run */
    pthread_mutex_t key_lock; /* the cache of parsed client keys */
    struct ckey {
        uint8_t hash[32]; /* SHA-256 of the X-Public-Key header */
        veil_key *key;
        unsigned refs;
        uint64_t used;
    } keys[KEY_CACHE];
    uint64_t key_clock;
    pthread_mutex_t lock; /* in_flight */
    pthread_cond_t idle;
    unsigned in_flight;
    atomic_int stopping;
    veil_memory_status mem;
    struct MHD_Response *undecryptable; /* one answer for every failure */
    pthread_mutex_t health_lock;        /* the health cache; held while probing,
                                           so never together with lock */
    time_t health_at;
    char *health;
    int health_ok;
};

/* One request's state, from its first byte to its completion callback. */
typedef struct req {
    enum route route;
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
    char payload_id[37];
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

static const char *header(struct MHD_Connection *c, const char *name)
{
    return MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
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
    char *body = data ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (body == NULL)
        return fail(c, r, 500, "out of memory");
    struct MHD_Response *resp =
        text_response("application/json", body, strlen(body));
    free(body);
    return resp ? queue(c, r, 200, resp) : MHD_NO;
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
        cJSON_AddBoolToObject(tok, "ok", ok);
        if (!ok)
            cJSON_AddStringToObject(tok, "detail", why);
        for (size_t i = 0; i < s->d.cfg->n_models; i++) {
            const gw_model *m = &s->d.cfg->models[i];
            int up = gw_upstream_alive(s->d.cfg, m);
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

/* Early refusals, before any body is read: size, auth, rate. */
static enum MHD_Result admit(gw_server *s, struct MHD_Connection *c, req *r)
{
    if (atomic_load(&s->stopping))
        return fail(c, r, 503, "the gateway is shutting down");
    const char *cl = header(c, MHD_HTTP_HEADER_CONTENT_LENGTH);
    unsigned long long declared = 0;
    if (cl) {
        char *end;
        errno = 0;
        declared = strtoull(cl, &end, 10);
        if (errno || *end || end == cl)
            return fail(c, r, 400, "Content-Length is not a number");
        if (declared > s->d.cfg->body_limit)
            return fail(c, r, 413,
                        "request body of %llu bytes is over the limit of %zu",
                        declared, s->d.cfg->body_limit);
    }
    if (s->d.auth) {
        const char *a = header(c, MHD_HTTP_HEADER_AUTHORIZATION);
        if (a == NULL || strncasecmp(a, "Bearer ", 7) != 0)
            return fail(c, r, 401, "missing API key (Authorization: Bearer)");
        if (!gw_auth_check(s->d.auth, a + 7, r->id))
            return fail(c, r, 401, "invalid API key");
        r->key_name = gw_auth_name(s->d.auth, r->id);
    } else {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        const struct sockaddr *sa = ci ? ci->client_addr : NULL;
        if (sa && sa->sa_family == AF_INET6)
            SHA256(
                (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr,
                16, r->id);
        else if (sa)
            SHA256((const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr,
                   4, r->id);
    }
    unsigned retry = 0;
    if (!gw_rate_take(s->d.rate, r->id, now_s(), &retry))
        return too_many(c, r, retry);
    pthread_mutex_lock(&s->slot_lock);
    uint64_t ticket = s->ticket_next++;
    while (ticket >= s->ticket_admit)
        pthread_cond_wait(&s->slot_free, &s->slot_lock);
    pthread_mutex_unlock(&s->slot_lock);
    r->has_slot = 1;
    if (declared > 0) {
        r->body = malloc(declared + 1);
        if (r->body == NULL)
            return fail(c, r, 503, "out of memory");
        r->cap = declared + 1;
    }
    return MHD_YES;
}

static int append(gw_server *s, req *r, const char *data, size_t n)
{
    if (r->len + n > s->d.cfg->body_limit)
        return 0;
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 65536;
        while (cap < r->len + n + 1)
            cap *= 2;
        if (cap > s->d.cfg->body_limit + 1)
            cap = s->d.cfg->body_limit + 1;
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

/* The caller's key from X-Public-Key: RSA, 2048 bits or more. */
static int client_key(gw_server *s, struct MHD_Connection *c, req *r,
                      ckey_ref *out)
{
    const char *h = header(c, "X-Public-Key");
    char *pem = NULL;
    veil_key_info info;
    uint8_t hash[32];
    out->key = NULL;
    out->entry = NULL;
    if (h == NULL || *h == '\0') {
        fail(c, r, 400, "X-Public-Key header is missing");
        return 0;
    }
    SHA256((const uint8_t *)h, strlen(h), hash);
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
    free(pem);
    if (rc != VEIL_OK) {
        fail(c, r, 400, "X-Public-Key is not a PEM public key");
        return 0;
    }
    if (veil_key_get_info(out->key, &info) != VEIL_OK ||
        info.type != VEIL_KEY_RSA || info.bits < VEIL_PKG_MIN_RSA_BITS) {
        ckey_release(s, out);
        fail(c, r, 400, "X-Public-Key must be an RSA key of at least %u bits",
             VEIL_PKG_MIN_RSA_BITS);
        return 0;
    }
    ckey_insert(s, hash, out);
    return 1;
}

/* Adds _metadata to the upstream's answer. */
static int add_metadata(gw_server *s, cJSON *answer, const char *payload_id,
                        const char *tier)
{
    cJSON *md = cJSON_GetObjectItemCaseSensitive(answer, "_metadata");
    if (md == NULL)
        md = cJSON_AddObjectToObject(answer, "_metadata");
    if (!cJSON_IsObject(md))
        return 0;
    cJSON *mp = cJSON_CreateObject();
    if (mp == NULL || !cJSON_AddStringToObject(mp, "platform", "linux") ||
        !cJSON_AddBoolToObject(mp, "memory_locking", s->mem.locking) ||
        !cJSON_AddBoolToObject(mp, "secure_zeroing", s->mem.zeroing) ||
        !cJSON_AddBoolToObject(mp, "core_dump_prevention",
                               s->mem.core_dumps_off)) {
        cJSON_Delete(mp);
        return 0;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(md, "memory_protection");
    cJSON_DeleteItemFromObjectCaseSensitive(md, "payload_id");
    cJSON_DeleteItemFromObjectCaseSensitive(md, "security_tier");
    cJSON_DeleteItemFromObjectCaseSensitive(md, "response_status");
    return cJSON_AddItemToObject(md, "memory_protection", mp) &&
           cJSON_AddStringToObject(md, "payload_id", payload_id) &&
           cJSON_AddStringToObject(md, "security_tier", tier) &&
           cJSON_AddStringToObject(md, "response_status", "success");
}

static enum MHD_Result exchange(gw_server *s, struct MHD_Connection *c, req *r)
{
    const char *pid = header(c, "X-Payload-ID");
    const char *tier = header(c, "X-Security-Tier");
    ckey_ref ck = {0};
    veil_secbuf *pt = NULL, *answer_text = NULL;
    cJSON *request = NULL, *answer = NULL;
    gw_upstream_result up = {0};
    char *pkg = NULL;
    veil_pkg_meta meta;
    enum MHD_Result ret;

    if (!veil_uuid_valid(pid))
        return fail(c, r, 400, "X-Payload-ID must be a UUID");
    snprintf(r->payload_id, sizeof r->payload_id, "%s", pid);
    unsigned tbit = (unsigned)tier_bit(tier);
    if (tbit == 0)
        return fail(c, r, 400,
                    "X-Security-Tier must be standard, high or maximum");
    if (r->len == 0)
        return fail(c, r, 400, "the request body is empty");
    if (!client_key(s, c, r, &ck))
        return MHD_YES;

    veil_rc rc = veil_pkg_open(s->d.engine, s->d.server_key, r->body, r->len,
                               &pt, &meta);
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
    SHA256((const uint8_t *)pid, strlen(pid), pid_hash);
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

    request = cJSON_ParseWithLength((const char *)veil_secbuf_data(pt),
                                    veil_secbuf_len(pt));
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(request, "model");
    if (!cJSON_IsObject(request)) {
        ret = fail(c, r, 400, "the decrypted request is not a JSON object");
        goto out;
    }
    if (!cJSON_IsString(model)) {
        ret = fail(c, r, 400, "the request has no \"model\"");
        goto out;
    }
    const gw_model *m = gw_config_model(s->d.cfg, model->valuestring);
    if (m == NULL) {
        ret = fail(c, r, 400,
                   "model '%.200s' is not served here (GET /v1/models lists "
                   "them)",
                   model->valuestring);
        goto out;
    }
    if (!(m->tiers & tbit)) {
        ret = fail(c, r, 403, "model '%.200s' is not allowed on the %s tier",
                   m->id, tier_name(tbit));
        goto out;
    }
    if (tbit == GW_TIER_HIGH && !(s->mem.locking && s->mem.core_dumps_off &&
                                  s->mem.dontdump && veil_secbuf_locked(pt))) {
        ret = fail(c, r, 503,
                   "the high tier needs locked, unswappable, undumpable "
                   "memory, which is not in force on this gateway");
        goto out;
    }
    if (tbit == GW_TIER_MAXIMUM) {
        ret = fail(c, r, 503, "no TPM attestation available");
        goto out;
    }

    gw_upstream_call(s->d.cfg, m, (const char *)veil_secbuf_data(pt),
                     veil_secbuf_len(pt), &up);
    if (up.status != 200) {
        ret = fail(c, r, up.status, "%s", up.body ? up.body : "upstream error");
        goto out;
    }
    answer = cJSON_ParseWithLength(up.body, up.len);
    if (!cJSON_IsObject(answer) ||
        !add_metadata(s, answer, pid, tier_name(tbit))) {
        ret = fail(c, r, 502, "inference backend answer could not be used");
        goto out;
    }
    rc = veil_json_print_secret(answer, (size_t)1 << 30, &answer_text);
    if (rc == VEIL_OK)
        rc = veil_pkg_seal(s->d.engine, ck.key, veil_secbuf_data(answer_text),
                           veil_secbuf_len(answer_text) - 1, meta.tag_mode,
                           floor((double)time(NULL)), &pkg);
    if (rc != VEIL_OK) {
        slog(s, VEIL_LOG_ERROR, "sealing the answer to %s failed: %s", pid,
             veil_last_error()->message);
        ret = fail(c, r, 500, "the answer could not be sealed");
        goto out;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        strlen(pkg), pkg, MHD_RESPMEM_MUST_FREE);
    if (resp == NULL) {
        ret = MHD_NO;
        goto out;
    }
    pkg = NULL;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            "application/json");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    ret = queue(c, r, 200, resp);
out:
    free(pkg);
    veil_secbuf_free(answer_text);
    veil_json_wipe_free(answer);
    veil_json_wipe_free(request);
    if (up.body) {
        explicit_bzero(up.body, up.len);
        free(up.body);
    }
    veil_secbuf_free(pt);
    ckey_release(s, &ck);
    return ret;
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
    };
    *bad_method = 0;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (strcmp(url, routes[i].path) != 0)
            continue;
        if (strcmp(method, routes[i].method) == 0 ||
            (strcmp(method, "HEAD") == 0 && routes[i].r != R_COMPLETION))
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
        int bad_method;
        r->route = route_of(method, url, &bad_method);
        switch (r->route) {
        case R_KEY:
            return get_key(s, c, r);
        case R_MODELS:
            return get_models(s, c, r);
        case R_HEALTH:
            return get_health(s, c, r);
        case R_COMPLETION:
            pthread_mutex_lock(&s->lock);
            s->in_flight++;
            pthread_mutex_unlock(&s->lock);
            return admit(s, c, r);
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
            int a = append(s, r, upload, *upload_size);
            if (a <= 0)
                r->refused = a == 0 ? 413 : 503;
        }
        r->seen += *upload_size;
        *upload_size = 0;
        size_t limit = s->d.cfg->body_limit;
        return r->seen > limit && r->seen - limit > DISCARD_MAX ? MHD_NO
                                                                : MHD_YES;
    }
    if (r->answered)
        return MHD_YES;
    if (r->refused == 413)
        return fail(c, r, 413, "request body is over the limit of %zu bytes",
                    s->d.cfg->body_limit);
    if (r->refused)
        return fail(c, r, 503, "out of memory");
    return exchange(s, c, r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    gw_server *s = cls;
    req *r = *con_cls;
    if (r == NULL)
        return;
    if (r->route == R_COMPLETION) {
        slog(s, VEIL_LOG_INFO, "POST %s %d%s%s%s%s %.1f ms", ROUTE_COMPLETION,
             r->status, r->payload_id[0] ? " payload " : "", r->payload_id,
             r->key_name ? " key " : "", r->key_name ? r->key_name : "",
             ms_since(&r->t0));
        if (r->has_slot) {
            pthread_mutex_lock(&s->slot_lock);
            s->ticket_admit++;
            pthread_cond_broadcast(&s->slot_free);
            pthread_mutex_unlock(&s->slot_lock);
        }
        pthread_mutex_lock(&s->lock);
        s->in_flight--;
        pthread_cond_broadcast(&s->idle);
        pthread_mutex_unlock(&s->lock);
    } else {
        slog(s, VEIL_LOG_DEBUG, "%s %d %.1f ms",
             r->route == R_NONE ? "request" : "GET", r->status,
             ms_since(&r->t0));
    }
    if (r->body) {
        explicit_bzero(r->body, r->len);
        free(r->body);
    }
    free(r);
    *con_cls = NULL;
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
    pthread_cond_init(&s->slot_free, NULL);
    s->ticket_admit = cfg->workers;
    pthread_mutex_init(&s->key_lock, NULL);
    veil_memory_status_get(&s->mem);
    if (veil_key_public_pem(deps->server_key, &s->pem) != VEIL_OK) {
        snprintf(err, err_size, "server key: %s", veil_last_error()->message);
        goto fail;
    }
    static const char undecryptable[] =
        "{\"detail\":\"" VEIL_PKG_DECRYPT_DETAIL "\"}";
    s->undecryptable = text_response("application/json", undecryptable,
                                     sizeof undecryptable - 1);
    if (s->undecryptable == NULL) {
        snprintf(err, err_size, "out of memory");
        goto fail;
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
    struct MHD_OptionItem opts[12];
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
        atomic_store(&s->stopping, 1);
        MHD_socket sock = MHD_quiesce_daemon(s->mhd);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += grace_s;
        pthread_mutex_lock(&s->lock);
        while (s->in_flight > 0 &&
               pthread_cond_timedwait(&s->idle, &s->lock, &until) == 0)
            ;
        cut = s->in_flight;
        pthread_mutex_unlock(&s->lock);
        MHD_stop_daemon(s->mhd);
        if (sock != MHD_INVALID_SOCKET)
            close(sock);
    }
    if (s->undecryptable)
        MHD_destroy_response(s->undecryptable);
    if (s->tls_key) {
        explicit_bzero(s->tls_key, s->tls_key_len);
        free(s->tls_key);
    }
    free(s->tls_cert);
    free(s->pem);
    free(s->health);
    for (int i = 0; i < KEY_CACHE; i++)
        veil_key_free(s->keys[i].key);
    pthread_mutex_destroy(&s->key_lock);
    pthread_cond_destroy(&s->slot_free);
    pthread_mutex_destroy(&s->slot_lock);
    pthread_cond_destroy(&s->idle);
    pthread_mutex_destroy(&s->health_lock);
    pthread_mutex_destroy(&s->lock);
    free(s);
    return cut;
}
