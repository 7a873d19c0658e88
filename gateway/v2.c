/* gateway/v2.c: protocol v2 (docs/PROTOCOL-V2.md), Oblivious HTTP
 * (RFC 9458) with binary HTTP (RFC 9292) inside, at RFC 9540's
 * /.well-known/ohttp-gateway.  GET answers the key configurations, signed
 * by the answer-signing key when there is one.  POST opens the request
 * with the KEM key (kemkeys.c) in its provider; every failure before that
 * succeeds, and a replay, gets one prebuilt answer (GW_OHTTP_KEY).  After
 * that, every answer, errors included, is a binary HTTP response inside
 * the encapsulated response.  The inner routes (v2_routes): POST
 * /v1/chat/completions, /v1/completions and /v1/embeddings (the checks of
 * v1: API key, rate, model, tier, request scan, then gw_upstream_call at
 * the same path) and GET /v1/models.  On the maximum tier, as v1
 * (maximum.c): a place in the TPM's line once the request is open, the
 * quote before the backend runs, bound to the request identifier, the
 * inner content, the KEM key and the backend statement, and veild's
 * "_metadata" with the quote spliced into the answer. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/sha.h>

#include "backend.h"
#include "bhttp.h"
#include "ohttp.h"
#include "routes.h"

#define KEYS_STATEMENT_MAX 256
#define AUTH_MAX 512

/* One exchange: the request opened, then the inner answer. */
typedef struct v2_x {
    svc_req *r;
    const gw_live *live; /* the request's configuration (gw_req_live) */
    const char *body;
    size_t len;
    veil_secbuf *req; /* the binary HTTP request (secret) */
    veil_ohttp_ctx *ctx;
    veil_bhttp_msg *in;
    uint8_t id[32]; /* whom the request counts for */
    unsigned tier;
    const char *tier_name;
    gw_request *rq;
    const gw_model *m;
    gw_infer infer;                           /* the inference route */
    char backend[VEIL_BACKEND_STATEMENT_MAX]; /* maximum: the statement */
    cJSON *attestation;                       /* maximum: the quote */
    char *metadata; /* maximum: veild's "_metadata" member */
    char salt[65];
    gw_upstream_result up;
    /* the inner answer */
    int status;
    const char *type;
    char *content; /* malloc'd; wiped (it may hold the model's answer) */
    size_t content_len;
    char retry[16]; /* retry-after, or "" */
    const char *allow; /* a 405's allow (the route's method), or NULL */
    char rid[65];   /* the request identifier: hex SHA-256 of enc */
    gw_answer_sig sig;
    int full;        /* the replay register had no room */
    int keyed;       /* the API key was taken (or none is needed) */
    int inference;   /* an inference route (v2_infer) */
    const char *key; /* its name (held by live->auth), or NULL */
    char why[512];
} v2_x;

/* ---- GET: the key configurations ----------------------------------------- */

/* The statement of PROTOCOL-V2.md 4.3, signed into the server's cache
 * (keys_lock held); signed again only when the body changes (a new key),
 * so that fetching the keys, which anyone may, cannot keep the token
 * busy. */
static gw_rc keys_sign(gw_server *s, const uint8_t *body, size_t len,
                       time_t not_after)
{
    uint8_t h[32], sig[VEIL_ECDSA_SIG_MAX];
    size_t sig_len = sizeof sig;
    char hex[65], st[KEYS_STATEMENT_MAX];
    long long now = (long long)time(NULL);

    SHA256(body, len, h);
    if (s->keys_sig_b64 && memcmp(h, s->keys_sha256, sizeof h) == 0)
        return GW_OK;
    veil_hex(h, sizeof h, hex);
    int n = snprintf(st, sizeof st,
                     "veil-ohttp-keys-v1\nkeys_sha256=%s\nsigned_at=%lld\n"
                     "not_after=%lld\n",
                     hex, now, (long long)not_after);
    if (veil_ecdsa_sign(s->d.engine, s->d.signing_key, (const uint8_t *)st,
                        (size_t)n, sig, &sig_len) != VEIL_OK) {
        veil_logf(&s->log, VEIL_LOG_ERROR, "v2: signing the keys failed: %s",
                  veil_last_error()->message);
        return GW_INTERNAL;
    }
    free(s->keys_sig_b64);
    if ((s->keys_sig_b64 = veil_b64_encode(sig, sig_len)) == NULL)
        return GW_NOMEM;
    memcpy(s->keys_sha256, h, sizeof h);
    snprintf(s->keys_at, sizeof s->keys_at, "%lld", now);
    snprintf(s->keys_until, sizeof s->keys_until, "%lld", (long long)not_after);
    return GW_OK;
}

void gw_v2_keys(void *app, svc_req *r)
{
    gw_server *s = app;
    uint8_t *body = NULL;
    size_t len = 0;
    time_t rotate_at, not_after;
    char *sig = NULL, at[24] = "", until[24] = "";
    gw_rc rc = GW_NOT_FOUND;

    if (s->d.kem &&
        (rc = gw_kem_keys(s->d.kem, &body, &len, &rotate_at, &not_after)) ==
            GW_OK &&
        s->d.signing_key) {
        pthread_mutex_lock(&s->keys_lock);
        if ((rc = keys_sign(s, body, len, not_after)) == GW_OK &&
            (sig = strdup(s->keys_sig_b64)) == NULL)
            rc = GW_NOMEM;
        snprintf(at, sizeof at, "%s", s->keys_at);
        snprintf(until, sizeof until, "%s", s->keys_until);
        pthread_mutex_unlock(&s->keys_lock);
    }
    if (rc != GW_OK) {
        free(body);
        gw_respond(s, r, rc, "%s", s->d.kem ? "" : "protocol v2 is off");
        return;
    }
    /* fresh until the next rotation, when a new key is listed (RFC 9111
     * 5.2.2.1): a client, or a shared proxy that gives every client the
     * same keys (RFC 9540 7.1), keeps them that long */
    char cache[32];
    time_t now = time(NULL);
    snprintf(cache, sizeof cache, "max-age=%lld",
             rotate_at > now ? (long long)(rotate_at - now) : 0LL);
    const char *headers[] = {"Cache-Control",
                             cache,
                             "X-Veil-Keys-Signature",
                             sig,
                             "X-Veil-Keys-Signed-At",
                             at,
                             "X-Veil-Keys-Expires",
                             until,
                             "X-Veil-Signing-Key",
                             s->sign_key_header,
                             NULL};
    if (sig == NULL) /* no signing key: Cache-Control alone */
        headers[2] = NULL;
    if (svc_send(r, 200, VEIL_OHTTP_MEDIA_KEYS, (char *)body, len, headers) ==
        -2)
        gw_respond(s, r, GW_INTERNAL, "the keys could not be signed");
    free(sig);
}

/* ---- POST: before decapsulation ------------------------------------------ */

/* The replay register: SHA-256("veil-v2-enc" || key_id || enc), and the
 * whole body's hash as the second mark. */
static gw_strike v2_replay(gw_server *s, const v2_x *x)
{
    static const char label[] = "veil-v2-enc";
    size_t enc_len = 0;
    const uint8_t *enc = veil_ohttp_ctx_enc(x->ctx, &enc_len);
    uint8_t a[32], b[32], m[sizeof label + VEIL_HPKE_ENC_MAX];

    if (enc_len > VEIL_HPKE_ENC_MAX)
        return GW_STRIKE_FULL;
    memcpy(m, label, sizeof label - 1);
    m[sizeof label - 1] = (uint8_t)x->body[0]; /* the key ID */
    memcpy(m + sizeof label, enc, enc_len);
    SHA256(m, sizeof label + enc_len, a);
    SHA256((const uint8_t *)x->body, x->len, b);
    return gw_strikes_add(s->d.strikes, a, b, time(NULL));
}

/* Content-Type, then the request opened and new.  GW_OK, or the outer
 * answer's outcome. */
static gw_rc v2_open(gw_server *s, svc_req *r, v2_x *x)
{
    const char *ct = svc_header(r, "Content-Type");

    if (s->d.kem == NULL) {
        snprintf(x->why, sizeof x->why, "protocol v2 is off");
        return GW_NOT_FOUND;
    }
    if (!veil_ohttp_media_is(ct, VEIL_OHTTP_MEDIA_REQ)) {
        snprintf(x->why, sizeof x->why,
                 "the body must be " VEIL_OHTTP_MEDIA_REQ);
        return GW_MEDIA_TYPE;
    }
    x->body = svc_body(r, &x->len);
    gw_rc rc = gw_kem_open_request(s->d.kem, (const uint8_t *)x->body, x->len,
                                   &x->req, &x->ctx, x->why, sizeof x->why);
    if (rc == GW_UNDECRYPTABLE)
        return GW_OHTTP_KEY;
    if (rc == GW_UNAVAILABLE)
        veil_logf(&s->log, VEIL_LOG_ERROR, "v2: %s", x->why);
    if (rc != GW_OK)
        return rc;
    size_t enc_len = 0;
    const uint8_t *enc = veil_ohttp_ctx_enc(x->ctx, &enc_len);
    uint8_t h[32];

    SHA256(enc, enc_len, h); /* the request identifier (PROTOCOL-V2.md 8) */
    veil_hex(h, sizeof h, x->rid);
    switch (v2_replay(s, x)) {
    case GW_STRIKE_SEEN:
        return GW_OHTTP_KEY; /* no oracle: the same bytes as a bad key */
    case GW_STRIKE_FULL:     /* opened: the answer goes inside */
        x->full = 1;
        break;
    case GW_STRIKE_NEW:
        break;
    }
    return GW_OK;
}

/* ---- inside: the inner request --------------------------------------------
 */

/* The first field named so, as a NUL-terminated copy in out (0), or -1
 * (absent or too long). */
static int field_text(const veil_bhttp_msg *m, const char *name, char *out,
                      size_t size)
{
    const veil_bhttp_field *f = veil_bhttp_field_get(&m->headers, name);

    if (f == NULL || f->value.len >= size)
        return -1;
    memcpy(out, f->value.p, f->value.len);
    out[f->value.len] = '\0';
    return 0;
}

static int bstr_is(veil_bstr b, const char *s)
{
    return b.len == strlen(s) && memcmp(b.p, s, b.len) == 0;
}

/* RFC 9113 8.1.1, whose rules RFC 9292 messages are built by: a request
 * is malformed when a content-length field does not equal the length of
 * its content (and RFC 9110 8.6: a value that is not one decimal number
 * is invalid).  veild forwards only the content, with its own framing, but
 * a gateway must not act on a malformed request.  1 when one disagrees. */
static int length_disagrees(const veil_bhttp_msg *m)
{
    /* one at most: singleton_twice refused a second */
    const veil_bhttp_field *f =
        veil_bhttp_field_get(&m->headers, "content-length");
    unsigned long long v = 0;
    size_t k;

    if (f == NULL)
        return 0;
    for (k = 0; k < f->value.len && k < 19; k++) {
        if (f->value.p[k] < '0' || f->value.p[k] > '9')
            return 1;
        v = v * 10 + (unsigned)(f->value.p[k] - '0');
    }
    return k == 0 || k != f->value.len || v != m->content.len;
}

/* The first of the fields veild acts on that appears more than once in
 * the header section (any case), or NULL.  Each is a singleton (RFC 9110
 * 5.3: a sender must not repeat it); taking the first of two would be a
 * guess at what a hostile or confused client meant. */
static const char *singleton_twice(const veil_bhttp_msg *m)
{
    static const char *const single[] = {"authorization", "x-security-tier",
                                         "content-type", "content-length"};

    for (size_t k = 0; k < sizeof single / sizeof single[0]; k++)
        if (veil_bhttp_field_count(&m->headers, single[k]) > 1)
            return single[k];
    return NULL;
}

/* The binary HTTP request, its API key and rate, and its tier. */
static gw_rc v2_inner(gw_server *s, svc_req *r, v2_x *x)
{
    veil_bhttp_limits lim = {.max_fields = VEIL_BHTTP_DEFAULT_MAX_FIELDS,
                             .max_section_bytes =
                                 VEIL_BHTTP_DEFAULT_MAX_SECTION,
                             .max_content = s->d.cfg->body_limit,
                             .max_info = 0,
                             .max_chunks = VEIL_BHTTP_DEFAULT_MAX_CHUNKS};
    char auth[AUTH_MAX], tier[16];
    unsigned retry = 0;

    if (veil_bhttp_decode(veil_secbuf_data(x->req), veil_secbuf_len(x->req),
                          VEIL_BHTTP_REQUEST, &lim, &x->in) != VEIL_OK) {
        snprintf(x->why, sizeof x->why, "the inner request: %s",
                 veil_last_error()->message);
        return GW_REFUSED;
    }
    if (veil_bhttp_field_get(&x->in->headers, "expect")) {
        snprintf(x->why, sizeof x->why, "expect is not taken (RFC 9458 5.1)");
        return GW_REFUSED;
    }
    const char *twice = singleton_twice(x->in);
    if (twice) {
        snprintf(x->why, sizeof x->why,
                 "the inner request has %s more than once (RFC 9110 5.3)",
                 twice);
        return GW_REFUSED;
    }
    if (length_disagrees(x->in)) {
        snprintf(x->why, sizeof x->why,
                 "the inner content-length is not the length of the content "
                 "(RFC 9113 8.1.1)");
        return GW_REFUSED;
    }
    memcpy(x->id, svc_client_id(r), sizeof x->id); /* the address's */
    if (x->live->auth) {
        int has = field_text(x->in, "authorization", auth, sizeof auth) == 0 &&
                  strncasecmp(auth, "Bearer ", 7) == 0;
        gw_rc rc = has ? gw_auth_check(x->live->auth, auth + 7, x->id)
                       : GW_UNAUTHORIZED;
        veil_wipe(auth, sizeof auth);
        if (rc != GW_OK) {
            snprintf(x->why, sizeof x->why, "%s",
                     has ? "invalid API key"
                         : "missing API key (authorization: Bearer)");
            return rc;
        }
        x->key = gw_auth_name(x->live->auth, x->id);
        x->keyed = 1;
        if (gw_rate_take(s->d.rate, x->id, svc_now(), &retry) != GW_OK) {
            snprintf(x->retry, sizeof x->retry, "%u", retry);
            snprintf(x->why, sizeof x->why,
                     "rate limit exceeded; retry in %u s", retry);
            return GW_RATE_LIMITED;
        }
    }
    x->keyed = 1;
    x->tier = field_text(x->in, "x-security-tier", tier, sizeof tier) == 0
                  ? veil_tier_parse(tier)
                  : VEIL_TIER_STANDARD;
    if (x->tier == 0) {
        snprintf(x->why, sizeof x->why,
                 "x-security-tier must be standard, high or maximum");
        return GW_REFUSED;
    }
    x->tier_name = veil_tier_name(x->tier);
    return GW_OK;
}

/* The model named in the request, served here on this tier (on maximum,
 * with its backend statement). */
static gw_rc v2_model(gw_server *s, v2_x *x)
{
    const veil_bstr *c = &x->in->content;

    if ((x->rq = malloc(sizeof *x->rq)) == NULL)
        return GW_NOMEM;
    if (gw_request_scan(x->live->cfg, (const char *)c->p, c->len, x->rq, x->why,
                        sizeof x->why) != 0)
        return GW_REFUSED;
    x->m = x->rq->model_len >= 0 &&
                   (size_t)x->rq->model_len == strlen(x->rq->model)
               ? gw_config_model(x->live->cfg, x->rq->model)
               : NULL;
    if (x->m == NULL) {
        snprintf(x->why, sizeof x->why,
                 "model '%.200s' is not served here (GET /v1/models lists "
                 "them)",
                 x->rq->model_len >= 0 ? x->rq->model : "");
        return GW_REFUSED;
    }
    if (!(x->m->tiers & x->tier)) {
        gw_model_tier_refusal(x->m, x->tier_name, x->why, sizeof x->why);
        return GW_FORBIDDEN;
    }
    gw_rc rc = gw_tier_memory(s, x->tier, x->req, x->why, sizeof x->why);
    if (rc != GW_OK)
        return rc;
    if (x->tier == VEIL_TIER_MAXIMUM)
        return gw_backend_statement(x->live->cfg, x->m, x->backend,
                                    sizeof x->backend, x->why, sizeof x->why);
    return GW_OK;
}

/* maximum (as v1_attest): a place in the TPM's line, now that the tier is
 * known, then the quote, before the backend runs.  Its qualifying data
 * (docs/ATTESTATION.md) binds the request identifier, the inner content,
 * the KEM public key the request was encapsulated to and the backend
 * statement; the server key's certification is v1's (its requests go to
 * that key), not sent here.  A full line or a late turn: an inner 503
 * with an inner retry-after. */
static gw_rc v2_attest(gw_server *s, v2_x *x)
{
    uint8_t req_sha256[32], key_sha256[32];
    size_t pk_len = 0;
    const uint8_t *pk = veil_ohttp_ctx_pk(x->ctx, &pk_len);
    gw_max_binding b = {.id = x->rid,
                        .request_sha256 = req_sha256,
                        .key_sha256 = key_sha256,
                        .backend = x->backend,
                        .certify_key = 0};
    unsigned retry = 0;
    gw_rc rc;

    if (x->tier != VEIL_TIER_MAXIMUM)
        return GW_OK;
    rc = gw_tpm_place_take(s, x->r, &retry, x->why, sizeof x->why);
    if (rc == GW_OK) {
        SHA256(x->in->content.p, x->in->content.len, req_sha256);
        SHA256(pk, pk_len, key_sha256);
        rc = gw_max_quote(s, x->r, &b, &x->attestation, &retry, x->why,
                          sizeof x->why);
    }
    if (rc == GW_BUSY)
        snprintf(x->retry, sizeof x->retry, "%u", retry);
    return rc;
}

/* The answer's signature (PROTOCOL-V2.md 8): the statement of v1 with the
 * request identifier (hex SHA-256 of enc) as its payload ID, and the
 * hashes of the inner request's and the inner answer's content; kept for
 * the inner GET /v1/signatures/<id>, for the API key that asked. */
static gw_rc v2_sign(gw_server *s, v2_x *x)
{
    uint8_t req_sha256[32], resp_sha256[32];

    SHA256(x->in->content.p, x->in->content.len, req_sha256);
    SHA256((const uint8_t *)x->content, x->content_len, resp_sha256);
    if (gw_answer_sign(s, x->rid, x->rid, x->tier_name, req_sha256, resp_sha256,
                       x->live->auth ? x->id : NULL, &x->sig) != GW_OK) {
        snprintf(x->why, sizeof x->why, "the answer could not be signed");
        return GW_INTERNAL;
    }
    return GW_OK;
}

/* POST /v1/chat/completions, /v1/completions, /v1/embeddings: the
 * backend's answer at the same path, without its own "_metadata" (on
 * maximum with veild's, the quote inside), as the inner content. */
static gw_rc v2_infer(gw_server *s, v2_x *x)
{
    const char *salt = NULL;
    veil_json_edit edits[2];
    gw_rc rc;

    x->inference = 1;
    if ((rc = v2_model(s, x)) != GW_OK || (rc = v2_attest(s, x)) != GW_OK)
        return rc;
    if (x->m->cache_salt_field) {
        gw_cache_salt(s, x->id, x->salt);
        salt = x->salt;
    }
    rc = gw_upstream_timed(s, x->live->cfg, x->m, x->infer,
                           (const char *)x->in->content.p, x->in->content.len,
                           x->rq, salt, &x->up, x->why, sizeof x->why);
    if (rc != GW_OK)
        return rc;
    if (x->tier == VEIL_TIER_MAXIMUM &&
        (x->metadata = gw_metadata_member(
             s, x->rid, x->tier_name, &x->attestation,
             x->up.members > (size_t)x->up.has_metadata)) == NULL)
        return GW_NOMEM;
    size_t n = gw_answer_edits(&x->up, x->metadata, edits);
    size_t len = veil_json_spliced_len(x->up.len, edits, n);
    if (len == (size_t)-1 || (x->content = malloc(len + 1)) == NULL)
        return GW_NOMEM;
    veil_json_splice(x->up.body, x->up.len, edits, n, x->content);
    x->content_len = len;
    x->status = 200;
    x->type = "application/json";
    return v2_sign(s, x);
}

/* GET /v1/models: the models this tier may use. */
static gw_rc v2_models(gw_server *s, v2_x *x)
{
    cJSON *j = cJSON_CreateObject(), *data = NULL;

    if (j && cJSON_AddStringToObject(j, "object", "list"))
        data = cJSON_AddArrayToObject(j, "data");
    for (size_t i = 0; data && i < x->live->cfg->n_models; i++) {
        const gw_model *m = &x->live->cfg->models[i];
        cJSON *o = NULL;
        if ((gw_model_tiers(x->live->cfg, m) & x->tier) &&
            (!(o = cJSON_CreateObject()) || !cJSON_AddItemToArray(data, o) ||
             !cJSON_AddStringToObject(o, "id", m->id) ||
             !cJSON_AddStringToObject(o, "object", "model") ||
             !cJSON_AddStringToObject(o, "owned_by", "veild")))
            data = NULL;
    }
    x->content = data ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (x->content == NULL)
        return GW_NOMEM;
    x->content_len = strlen(x->content);
    x->status = 200;
    x->type = "application/json";
    return GW_OK;
}

#define SIGNATURES "/v1/signatures/"

/* GET /v1/signatures/<id>: a kept signature, for the API key that made
 * the request or an operator key (gw_signature_find). */
static gw_rc v2_signature(gw_server *s, v2_x *x)
{
    const veil_bstr *p = &x->in->path;
    size_t n = p->len - (sizeof SIGNATURES - 1);
    char id[PID_MAX + 2];

    if (n > PID_MAX || memchr(p->p, '\0', p->len)) {
        snprintf(x->why, sizeof x->why,
                 "the path must end in a payload ID (1 to %d printable "
                 "ASCII characters, no space)",
                 PID_MAX);
        return GW_REFUSED;
    }
    memcpy(id, p->p + sizeof SIGNATURES - 1, n);
    id[n] = '\0';
    gw_rc rc = gw_signature_find(s, x->live->auth, id, x->id, &x->content,
                                 x->why, sizeof x->why);
    if (rc != GW_OK)
        return rc;
    x->content_len = strlen(x->content);
    x->status = 200;
    x->type = "application/json";
    return GW_OK;
}

/* The inner routes (PROTOCOL-V2.md 5.3). */
static const struct v2_route {
    const char *method, *path;
    int prefix; /* path is a prefix (an ID follows) */
    gw_rc (*handle)(gw_server *s, v2_x *x);
    gw_infer infer; /* the backend's route, for v2_infer */
} v2_routes[] = {
    {"POST", "/v1/chat/completions", 0, v2_infer, GW_INFER_CHAT},
    {"POST", "/v1/completions", 0, v2_infer, GW_INFER_COMPLETIONS},
    {"POST", "/v1/embeddings", 0, v2_infer, GW_INFER_EMBEDDINGS},
    {"GET", "/v1/models", 0, v2_models, GW_INFER_CHAT},
    {"GET", SIGNATURES, 1, v2_signature, GW_INFER_CHAT},
};

/* The inner route. */
static gw_rc v2_route(gw_server *s, v2_x *x)
{
    const veil_bhttp_msg *m = x->in;

    for (size_t i = 0; i < sizeof v2_routes / sizeof v2_routes[0]; i++) {
        const struct v2_route *r = &v2_routes[i];
        size_t n = strlen(r->path);
        int path = r->prefix
                       ? m->path.len > n && memcmp(m->path.p, r->path, n) == 0
                       : bstr_is(m->path, r->path);

        if (path && bstr_is(m->method, r->method)) {
            x->infer = r->infer;
            return r->handle(s, x);
        }
        if (path) /* each path has one method */
            x->allow = r->method;
    }
    if (x->allow) { /* RFC 9110 15.5.6: a 405 names what the route takes */
        snprintf(x->why, sizeof x->why, "this route takes %s", x->allow);
        return GW_METHOD;
    }
    snprintf(x->why, sizeof x->why, "no such route in protocol v2");
    return GW_NOT_FOUND;
}

/* ---- inside: the answer ---------------------------------------------------
 */

/* An inner error: the status of rc and v1's {"detail": ...}. */
static void v2_error(v2_x *x, gw_rc rc)
{
    cJSON *j = cJSON_CreateObject();

    if (rc == GW_OK || rc == GW_OHTTP_KEY || rc == GW_UNDECRYPTABLE)
        rc = GW_INTERNAL;
    if (x->why[0] == '\0')
        snprintf(x->why, sizeof x->why, "%s", gw_rc_detail(rc));
    if (x->content) {
        veil_wipe(x->content, x->content_len);
        free(x->content);
    }
    x->content = j && cJSON_AddStringToObject(j, "detail", x->why)
                     ? cJSON_PrintUnformatted(j)
                     : NULL;
    cJSON_Delete(j);
    x->content_len = x->content ? strlen(x->content) : 0;
    x->status = gw_rc_status(rc);
    x->type = "application/json";
    if (rc != GW_RATE_LIMITED && rc != GW_BUSY)
        x->retry[0] = '\0';
    if (rc != GW_METHOD)
        x->allow = NULL;
}

/* The inner answer as binary HTTP, encapsulated to the request's context
 * (RFC 9458 4.4), sent with 200 whatever the inner status. */
static gw_rc v2_send(gw_server *s, svc_req *r, v2_x *x)
{
    veil_bhttp_field f[6] = {{VEIL_BSTR("content-type"),
                              {(const uint8_t *)x->type, strlen(x->type)}}};
    size_t n = 1;
    veil_bhttp_msg m = {
        .status = (unsigned)x->status,
        .content = {(const uint8_t *)x->content, x->content_len}};
    veil_secbuf *plain = NULL;
    uint8_t *out = NULL;
    size_t out_len = 0;

    if (x->retry[0])
        f[n++] =
            (veil_bhttp_field){VEIL_BSTR("retry-after"),
                               {(const uint8_t *)x->retry, strlen(x->retry)}};
    if (x->allow)
        f[n++] = (veil_bhttp_field){VEIL_BSTR("allow"),
                                    {(const uint8_t *)x->allow,
                                     strlen(x->allow)}};
    if (x->sig.sig_b64 && x->status == 200) {
        f[n++] = (veil_bhttp_field){
            VEIL_BSTR("x-veil-signature"),
            {(const uint8_t *)x->sig.sig_b64, strlen(x->sig.sig_b64)}};
        f[n++] = (veil_bhttp_field){
            VEIL_BSTR("x-veil-signed-at"),
            {(const uint8_t *)x->sig.signed_at, strlen(x->sig.signed_at)}};
        f[n++] = (veil_bhttp_field){
            VEIL_BSTR("x-veil-signing-key"),
            {(const uint8_t *)s->sign_key_header, strlen(s->sign_key_header)}};
    }
    m.headers = (veil_bhttp_section){f, n};
    if (veil_bhttp_encode(&m, 0, &plain) != VEIL_OK ||
        veil_ohttp_encap_response(s->d.engine, x->ctx, veil_secbuf_data(plain),
                                  veil_secbuf_len(plain), NULL, &out,
                                  &out_len) != VEIL_OK) {
        veil_secbuf_free(plain);
        veil_logf(&s->log, VEIL_LOG_ERROR, "v2: the answer not sealed: %s",
                  veil_last_error()->message);
        snprintf(x->why, sizeof x->why, "the answer could not be sealed");
        return GW_INTERNAL;
    }
    veil_secbuf_free(plain);
    svc_send(r, 200, VEIL_OHTTP_MEDIA_RES, (char *)out, out_len, NULL);
    return GW_OK;
}

static void v2_free(v2_x *x)
{
    free(x->sig.sig_b64);
    cJSON_Delete(x->attestation);
    free(x->metadata);
    if (x->content) {
        veil_wipe(x->content, x->content_len);
        free(x->content);
    }
    if (x->up.body) {
        veil_wipe(x->up.body, x->up.len);
        free(x->up.body);
    }
    veil_wipe(x->salt, sizeof x->salt);
    free(x->rq);
    veil_bhttp_msg_free(x->in);
    veil_secbuf_free(x->req);
    veil_ohttp_ctx_free(x->ctx);
}

void gw_v2_request(void *app, svc_req *r)
{
    gw_server *s = app;
    v2_x x = {.r = r, .live = gw_req_live(s, r)};
    gw_rc rc = v2_open(s, r, &x);

    if (rc != GW_OK) { /* in clear: the uniform 400, or 404, 415, 503 */
        gw_respond(s, r, rc, "%s", x.why);
        v2_free(&x);
        return;
    }
    if (x.full)
        snprintf(x.why, sizeof x.why, "replay register full; try again later");
    if ((rc = x.full ? GW_UNAVAILABLE : v2_inner(s, r, &x)) == GW_OK)
        rc = v2_route(s, &x);
    if (rc != GW_OK)
        v2_error(&x, rc);
    /* for the metrics and the audit log: never the content */
    if (x.keyed && x.inference) {
        gw_note_request(r, "v2", x.key, x.tier_name, x.rid[0] ? x.rid : NULL);
        gw_note_model(r, x.m);
        gw_note_usage(r, &x.up);
    }
    gw_note_status(r, x.status);
    if (x.content == NULL)
        gw_respond(s, r, GW_NOMEM, "out of memory");
    else if (v2_send(s, r, &x) != GW_OK)
        gw_respond(s, r, GW_INTERNAL, "%s", x.why);
    v2_free(&x);
}
