/* veild's HTTP side (libmicrohttpd): routes, early refusals, body limits,
 * and the NOMYO v1 exchange: open the request package with the server key
 * (inside the token), check replay, tier and model, ask the upstream, seal
 * the answer to the caller's key, sign it.  Also the attestation routes
 * and the signature store's route (docs/ATTESTATION.md).
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
/* Body bytes past the limit read (and dropped) to deliver the 413. */
#define DISCARD_MAX ((size_t)64 << 20)

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
    /* the two keys as the evidence formats name them */
    char enc_hex[65], sign_hex[65];     /* SHA-256 of the SPKI DER */
    char *enc_spki_b64, *sign_spki_b64; /* sign_spki_b64: NULL, no signer */
    char sign_key_header[72];           /* "sha256:<hex>" */
    uint8_t salt_secret[32];            /* cache_salt's key */
};

/* One request's state, from its first byte to its completion callback. */
typedef struct req {
    enum route route;
    const char *method; /* for the log: "GET", "HEAD" or "POST" */
    int admitted;       /* went through admit(): counted in in_flight */
    size_t limit;       /* largest body accepted */
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

/* Early refusals, before any body is read: size, auth, rate; then, when
 * take_slot, a worker slot (routes that do real work: the exchange, the
 * TPM).  r->limit is the largest body the route takes. */
static enum MHD_Result admit(gw_server *s, struct MHD_Connection *c, req *r,
                             int take_slot)
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
    if (take_slot) {
        pthread_mutex_lock(&s->slot_lock);
        uint64_t ticket = s->ticket_next++;
        while (ticket >= s->ticket_admit)
            pthread_cond_wait(&s->slot_free, &s->slot_lock);
        pthread_mutex_unlock(&s->slot_lock);
        r->has_slot = 1;
    }
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

    gw_upstream_call(s->d.cfg, m, (const char *)veil_secbuf_data(pt),
                     veil_secbuf_len(pt), rq, salt_p, &up);
    if (up.status != 200) {
        ret = fail(c, r, up.status, "%s", up.body ? up.body : "upstream error");
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
    int rc;

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
    if (rc == 1) {
        ret = fail(c, r, 400, "the TPM refused the credential");
        goto out;
    }
    if (rc != 0) {
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
            return admit(s, c, r, r->route != R_SIGNATURE);
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
            int a = append(r, upload, *upload_size);
            if (a <= 0)
                r->refused = a == 0 ? 413 : 503;
        }
        r->seen += *upload_size;
        *upload_size = 0;
        size_t limit = r->limit;
        return r->seen > limit && r->seen - limit > DISCARD_MAX ? MHD_NO
                                                                : MHD_YES;
    }
    if (r->answered)
        return MHD_YES;
    if (r->refused == 413)
        return fail(c, r, 413, "request body is over the limit of %zu bytes",
                    r->limit);
    if (r->refused)
        return fail(c, r, 503, "out of memory");
    switch (r->route) {
    case R_REPORT:
        return get_report(s, c, r);
    case R_ACTIVATE:
        return post_activate(s, c, r);
    case R_SIGNATURE:
        return get_signature(s, c, r);
    default:
        return exchange(s, c, r);
    }
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    gw_server *s = cls;
    req *r = *con_cls;
    if (r == NULL)
        return;
    if (r->admitted) {
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
        slog(s, VEIL_LOG_INFO, "%s %s %d%s%s%s%s %.1f ms", r->method,
             paths[r->route], r->status, id_ok ? " payload " : "",
             id_ok ? r->payload_id : "", r->key_name ? " key " : "",
             r->key_name ? r->key_name : "", ms_since(&r->t0));
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
    pthread_cond_init(&s->slot_free, NULL);
    s->ticket_admit = cfg->workers;
    pthread_mutex_init(&s->key_lock, NULL);
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
    free(s->enc_spki_b64);
    free(s->sign_spki_b64);
    free(s->health);
    for (int i = 0; i < KEY_CACHE; i++)
        veil_key_free(s->keys[i].key);
    OPENSSL_cleanse(s->salt_secret, sizeof s->salt_secret);
    pthread_mutex_destroy(&s->key_lock);
    pthread_cond_destroy(&s->slot_free);
    pthread_mutex_destroy(&s->slot_lock);
    pthread_cond_destroy(&s->idle);
    pthread_mutex_destroy(&s->health_lock);
    pthread_mutex_destroy(&s->lock);
    free(s);
    return cut;
}
