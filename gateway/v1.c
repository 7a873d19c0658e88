/* gateway/v1.c: the NOMYO v1 exchange (POST /v1/chat/secure_completion),
 * as named steps that each return a gw_rc: read the headers, take the
 * caller's key, open the request package with the server key (inside the
 * token), check replay, model and tier, quote with the TPM (maximum), ask
 * the upstream, seal the answer to the caller's key, sign it.  On maximum
 * the quote also covers the backend statement (where the plaintext goes:
 * backend_stmt.c), and a model whose backend is not on this host is
 * refused unless tpm_remote_https allows it.  Only the
 * route handler at the end answers (gw_respond, or the sealed answer). */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/sha.h>

#include "backend.h"
#include "routes.h"

/* One exchange, from the headers to the sealed answer. */
typedef struct v1_x {
    const gw_config *cfg;      /* the request's (gw_req_live) */
    const gw_next_key *next;   /* and its next server key, or NULL */
    const uint8_t *enc_sha256; /* the server key that opened it (SPKI) */
    const char *pid;           /* X-Payload-ID as sent (checked) */
    char pid_key[PID_MAX + 1]; /* its canonical form */
    unsigned tier;             /* VEIL_TIER_* */
    const char *tier_name;
    const char *body;
    size_t len;
    uint8_t request_sha256[32];
    gw_ckey ck;
    veil_secbuf *pt; /* the request in plaintext */
    veil_pkg_meta meta;
    gw_request *rq;
    const gw_model *m;
    cJSON *attestation;
    char backend[VEIL_BACKEND_STATEMENT_MAX]; /* maximum: the statement */
    char salt[65];
    gw_upstream_result up;
    char *metadata, *pkg;
    veil_secbuf *answer;
    gw_answer_sig sig;
    char why[512];    /* the detail of a failure */
    unsigned retry_s; /* its Retry-After (GW_BUSY) */
} v1_x;

/* X-Payload-ID, X-Security-Tier and a body. */
static gw_rc v1_headers(svc_req *r, v1_x *x)
{
    x->pid = svc_header(r, "X-Payload-ID");
    if (!gw_payload_id_canonical(x->pid, x->pid_key)) {
        snprintf(x->why, sizeof x->why,
                 "X-Payload-ID must be 1 to %d printable ASCII characters "
                 "without spaces",
                 PID_MAX);
        return GW_REFUSED;
    }
    svc_set_log_id(r, x->pid);
    const char *tier = svc_header(r, "X-Security-Tier");
    x->tier = tier ? veil_tier_parse(tier) : VEIL_TIER_STANDARD;
    if (x->tier == 0) {
        snprintf(x->why, sizeof x->why,
                 "X-Security-Tier must be standard, high or maximum");
        return GW_REFUSED;
    }
    x->tier_name = veil_tier_name(x->tier);
    x->body = svc_body(r, &x->len);
    if (x->len == 0) {
        snprintf(x->why, sizeof x->why, "the request body is empty");
        return GW_REFUSED;
    }
    return GW_OK;
}

/* 1 when the token failed (not the package) in the last open. */
static int token_failed(veil_rc vr, const veil_pkg_meta *meta)
{
    return vr == VEIL_E_DECRYPT && meta->unwrap_rc != VEIL_OK &&
           meta->unwrap_rc != VEIL_E_DECRYPT;
}

/* The caller's key, then the package opened inside the token: with the
 * current server key, and during a rotation (server_key_next) with the
 * next key when the current one does not open it.  A v1 package names no
 * key, so a package sealed to neither costs two unwraps; whichever key
 * fails and however, the next step runs the same way and the answer is
 * the one prebuilt 400 (protocol/package.c: a failure tells nothing). */
static gw_rc v1_open(gw_server *s, svc_req *r, v1_x *x)
{
    gw_rc rc =
        gw_client_key(s->keys, s->d.engine, svc_header(r, "X-Public-Key"),
                      svc_client_id(r), &x->ck, x->why, sizeof x->why);
    if (rc != GW_OK)
        return rc;
    /* the exact bytes received: what the client hashes too */
    SHA256((const uint8_t *)x->body, x->len, x->request_sha256);
    x->enc_sha256 = s->d.encryption_key_sha256;
    veil_rc vr = veil_pkg_open(s->d.engine, s->d.server_key, x->body, x->len,
                               &x->pt, &x->meta);
    if (vr == VEIL_E_DECRYPT && x->next && !token_failed(vr, &x->meta)) {
        vr = veil_pkg_open(s->d.engine, x->next->key, x->body, x->len, &x->pt,
                           &x->meta);
        x->enc_sha256 = x->next->sha256;
    }
    if (token_failed(vr, &x->meta)) {
        /* The token failed, not the package: logged when it happens (not
         * only at the next /healthz), and no 400 that would send the
         * client to refetch a key that is fine. */
        veil_logf(&s->log, VEIL_LOG_ERROR,
                  "the token failed to unwrap the key of request %s (%s)",
                  x->pid, veil_rc_name(x->meta.unwrap_rc));
        snprintf(x->why, sizeof x->why,
                 "the gateway's key store failed; try again later");
        return GW_UNAVAILABLE;
    }
    if (vr == VEIL_E_DECRYPT) /* one answer, whatever failed inside */
        return GW_UNDECRYPTABLE;
    if (vr != VEIL_OK) {
        snprintf(x->why, sizeof x->why, "%s", veil_last_error()->message);
        return vr == VEIL_E_NOMEM ? GW_NOMEM : GW_REFUSED;
    }
    return GW_OK;
}

/* The replay register: both marks of the package (payload ID, wrapped
 * key). */
static gw_rc v1_replay(gw_server *s, v1_x *x)
{
    uint8_t pid_hash[32];

    SHA256((const uint8_t *)x->pid_key, strlen(x->pid_key), pid_hash);
    switch (gw_strikes_add(s->d.strikes, pid_hash, x->meta.wrapped_key_sha256,
                           time(NULL))) {
    case GW_STRIKE_SEEN:
        snprintf(x->why, sizeof x->why,
                 "this request package (payload ID or wrapped key) was "
                 "seen before; replays are refused");
        return GW_REPLAY;
    case GW_STRIKE_FULL:
        snprintf(x->why, sizeof x->why,
                 "replay register full; try again later");
        return GW_UNAVAILABLE;
    case GW_STRIKE_NEW:
        break;
    }
    return GW_OK;
}

/* One scan of the request, no tree (what is checked is what goes); the
 * model, and whether it runs on this tier here. */
static gw_rc v1_model(gw_server *s, v1_x *x)
{
    if ((x->rq = malloc(sizeof *x->rq)) == NULL) {
        snprintf(x->why, sizeof x->why, "out of memory");
        return GW_NOMEM;
    }
    if (gw_request_scan(x->cfg, (const char *)veil_secbuf_data(x->pt),
                        veil_secbuf_len(x->pt), x->rq, x->why,
                        sizeof x->why) != 0)
        return GW_REFUSED;
    if (x->rq->model_len < 0) {
        snprintf(x->why, sizeof x->why, "the request has no \"model\"");
        return GW_REFUSED;
    }
    x->m = (size_t)x->rq->model_len == strlen(x->rq->model)
               ? gw_config_model(x->cfg, x->rq->model)
               : NULL;
    if (x->m == NULL) {
        snprintf(x->why, sizeof x->why,
                 "model '%.200s' is not served here (GET /v1/models lists "
                 "them)",
                 x->rq->model);
        return GW_REFUSED;
    }
    if (!(x->m->tiers & x->tier)) {
        gw_model_tier_refusal(x->m, x->tier_name, x->why, sizeof x->why);
        return GW_FORBIDDEN;
    }
    gw_rc rc = gw_tier_memory(s, x->tier, x->pt, x->why, sizeof x->why);
    if (rc != GW_OK)
        return rc;
    if (x->tier == VEIL_TIER_MAXIMUM)
        return gw_backend_statement(x->cfg, x->m, x->backend, sizeof x->backend,
                                    x->why, sizeof x->why);
    return GW_OK;
}

/* maximum: quoted before the backend runs, so a TPM that fails costs no
 * inference, and no answer ever leaves unattested.  The quote waits for
 * its turn in the TPM's own line, without a worker slot (maximum.c). */
static gw_rc v1_attest(gw_server *s, svc_req *r, v1_x *x)
{
    gw_max_binding b = {.id = x->pid,
                        .request_sha256 = x->request_sha256,
                        .key_sha256 = x->enc_sha256,
                        .backend = x->backend,
                        .certify_key = 1};

    if (x->tier != VEIL_TIER_MAXIMUM)
        return GW_OK;
    return gw_max_quote(s, r, &b, &x->attestation, &x->retry_s, x->why,
                        sizeof x->why);
}

/* The inference: the plaintext to the model's upstream (or echo). */
static gw_rc v1_infer(gw_server *s, svc_req *r, v1_x *x)
{
    const char *salt = NULL;

    if (x->m->cache_salt_field) {
        gw_cache_salt(s, svc_client_id(r), x->salt);
        salt = x->salt;
    }
    return gw_upstream_timed(
        s, x->cfg, x->m, GW_INFER_CHAT, (const char *)veil_secbuf_data(x->pt),
        veil_secbuf_len(x->pt), x->rq, salt, &x->up, x->why, sizeof x->why);
}

/* The answer to seal: the backend's text byte for byte, without its own
 * "_metadata", with veild's spliced in before the closing brace
 * (gw_answer_edits).  A secret buffer, or NULL (no memory). */
static veil_secbuf *answer_text(const gw_upstream_result *up,
                                const char *metadata)
{
    veil_json_edit edits[2];
    size_t n = gw_answer_edits(up, metadata, edits), len;
    veil_secbuf *out = NULL;

    len = veil_json_spliced_len(up->len, edits, n);
    if (len == (size_t)-1 || veil_secbuf_new(len, &out) != VEIL_OK)
        return NULL;
    veil_json_splice(up->body, up->len, edits, n,
                     (char *)veil_secbuf_data(out));
    return out;
}

/* The answer with veild's _metadata, sealed to the caller's key. */
static gw_rc v1_seal(gw_server *s, v1_x *x)
{
    x->metadata =
        gw_metadata_member(s, x->pid, x->tier_name, &x->attestation,
                           x->up.members > (size_t)x->up.has_metadata);
    x->answer = x->metadata ? answer_text(&x->up, x->metadata) : NULL;
    if (x->answer == NULL) {
        snprintf(x->why, sizeof x->why, "out of memory");
        return GW_NOMEM;
    }
    if (veil_pkg_seal(s->d.engine, x->ck.key, veil_secbuf_data(x->answer),
                      veil_secbuf_len(x->answer), x->meta.tag_mode,
                      floor((double)time(NULL)), &x->pkg) != VEIL_OK) {
        veil_logf(&s->log, VEIL_LOG_ERROR,
                  "sealing the answer to %s failed: %s", x->pid,
                  veil_last_error()->message);
        snprintf(x->why, sizeof x->why, "the answer could not be sealed");
        return GW_INTERNAL;
    }
    return GW_OK;
}

/* Signs the answer (the sealed package as sent) and keeps the signature
 * (gw_answer_sign). */
static gw_rc v1_sign(gw_server *s, svc_req *r, v1_x *x)
{
    uint8_t response_sha256[32];
    gw_rc rc;

    SHA256((const uint8_t *)x->pkg, strlen(x->pkg), response_sha256);
    rc = gw_answer_sign(
        s, x->pid, x->pid_key, x->tier_name, x->request_sha256, response_sha256,
        gw_req_live(s, r)->auth ? svc_client_id(r) : NULL, &x->sig);
    if (rc != GW_OK)
        snprintf(x->why, sizeof x->why, "the answer could not be signed");
    return rc;
}

/* Sends the sealed answer (and its signature headers). */
static gw_rc v1_send(gw_server *s, svc_req *r, v1_x *x)
{
    const char *headers[] = {"X-Veil-Signature",
                             x->sig.sig_b64,
                             "X-Veil-Signed-At",
                             x->sig.signed_at,
                             "X-Veil-Signing-Key",
                             s->sign_key_header,
                             NULL};
    char *pkg = x->pkg;

    x->pkg = NULL; /* svc_send owns it now */
    int sent = svc_send(r, 200, "application/json", pkg, strlen(pkg),
                        x->sig.sig_b64 ? headers : NULL);
    if (sent == -2) {
        snprintf(x->why, sizeof x->why, "the answer could not be signed");
        return GW_INTERNAL;
    }
    return GW_OK; /* -1: no memory for a response; the connection closes */
}

static void v1_free(gw_server *s, v1_x *x)
{
    free(x->sig.sig_b64);
    cJSON_Delete(x->attestation);
    free(x->pkg);
    free(x->metadata);
    veil_secbuf_free(x->answer);
    free(x->rq);
    veil_wipe(x->salt, sizeof x->salt);
    if (x->up.body) {
        veil_wipe(x->up.body, x->up.len);
        free(x->up.body);
    }
    veil_secbuf_free(x->pt);
    gw_ckey_release(s->keys, &x->ck);
}

void gw_v1_completion(void *app, svc_req *r)
{
    gw_server *s = app;
    v1_x x = {.cfg = gw_req_live(s, r)->cfg, .next = gw_req_live(s, r)->next};
    gw_rc rc;

    if ((rc = v1_headers(r, &x)) == GW_OK &&
        (rc = v1_open(s, r, &x)) == GW_OK && (rc = v1_replay(s, &x)) == GW_OK &&
        (rc = v1_model(s, &x)) == GW_OK &&
        (rc = v1_attest(s, r, &x)) == GW_OK &&
        (rc = v1_infer(s, r, &x)) == GW_OK && (rc = v1_seal(s, &x)) == GW_OK &&
        (rc = v1_sign(s, r, &x)) == GW_OK)
        rc = v1_send(s, r, &x);
    /* for the metrics and the audit log: never the content */
    const gw_live *live = gw_req_live(s, r);
    gw_note_request(
        r, "v1", live->auth ? gw_auth_name(live->auth, svc_client_id(r)) : NULL,
        x.tier_name, x.pid_key[0] ? x.pid_key : NULL);
    gw_note_model(r, x.m);
    gw_note_usage(r, &x.up);
    if (rc != GW_OK)
        gw_respond_retry(s, r, rc, x.retry_s, "%s", x.why);
    v1_free(s, &x);
}
