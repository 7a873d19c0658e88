/* veild's server: the route table over the HTTP layer (service/http.c),
 * admission (API key, rate limit), the small routes (models), start and
 * stop.  The routes that do the work are modules of their own: v1.c (the
 * exchange), v2.c (Oblivious HTTP), attest_routes.c (attestation,
 * signatures), rotation.c (the server keys), health.c (the health routes),
 * with keycache.c for the callers' keys; respond.c is the one place a gw_rc
 * becomes an HTTP status.  server.c points at the route modules and they
 * never call back into it (tests/check_includes.py). */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "ohttp.h"
#include "routes.h"

/* Largest body of the routes other than the completion (the activation's
 * JSON is a few hundred bytes). */
#define SMALL_BODY_MAX 4096

/* ---- admission ------------------------------------------------------------
 */

/* The API key (or, without API keys, the address) and its rate limit:
 * the early refusals of the HTTP layer's admission that are veild's. */
static void admit(void *app, svc_req *r)
{
    gw_server *s = app;
    uint8_t *id = svc_client_id(r);
    unsigned retry = 0;
    const gw_live *live = gw_req_live(s, r);

    if (live->auth && svc_route_tag(r) == GW_TAG_INNER_KEY)
        return; /* v2: the key is inside, checked once opened (v2.c) */
    if (live->auth) {
        const char *a = svc_header(r, "Authorization");
        if (a == NULL || strncasecmp(a, "Bearer ", 7) != 0) {
            gw_respond(s, r, GW_UNAUTHORIZED,
                       "missing API key (Authorization: Bearer)");
            return;
        }
        if (gw_auth_check(live->auth, a + 7, id) != GW_OK) {
            gw_respond(s, r, GW_UNAUTHORIZED, "invalid API key");
            return;
        }
        /* the name lives as long as the request's live configuration */
        svc_set_key_name(r, gw_auth_name(live->auth, id));
    } else {
        gw_rate_address_id(svc_client_addr(r), live->cfg->ipv6_prefix, id);
    }
    if (gw_rate_take(s->d.rate, id, svc_now(), &retry) != GW_OK)
        gw_respond_retry(s, r, GW_RATE_LIMITED, retry,
                         "rate limit exceeded; retry in %u s", retry);
}

/* ---- the small routes ---------------------------------------------------- */

/* GET /pki/signing_key: the answer-signing key (SPKI PEM), which signs
 * the v2 key configurations (docs/PROTOCOL-V2.md 4.3): what a client pins
 * at first contact.  404 when the gateway signs nothing. */
static void get_signing_key(void *app, svc_req *r)
{
    gw_server *s = app;
    if (s->sign_pem == NULL) {
        gw_respond(s, r, GW_NOT_FOUND,
                   "this gateway does not sign (no signing_key)");
        return;
    }
    svc_text(r, 200, "text/plain; charset=utf-8", s->sign_pem,
             strlen(s->sign_pem));
}

static void get_models(void *app, svc_req *r)
{
    gw_server *s = app;
    const gw_config *cfg = gw_req_live(s, r)->cfg;
    cJSON *j = cJSON_CreateObject(), *data = NULL;
    if (j && cJSON_AddStringToObject(j, "object", "list"))
        data = cJSON_AddArrayToObject(j, "data");
    for (size_t i = 0; data && i < cfg->n_models; i++) {
        const gw_model *m = &cfg->models[i];
        cJSON *o = cJSON_CreateObject(), *tiers;
        if (!cJSON_AddItemToArray(data, o) ||
            !cJSON_AddStringToObject(o, "id", m->id) ||
            !cJSON_AddStringToObject(o, "object", "model") ||
            !cJSON_AddStringToObject(o, "owned_by", "veild") ||
            !(tiers = cJSON_AddArrayToObject(o, "tiers"))) {
            data = NULL;
            break;
        }
        for (unsigned b = VEIL_TIER_STANDARD; b <= VEIL_TIER_MAXIMUM; b <<= 1)
            if (gw_model_tiers(cfg, m) & b)
                cJSON_AddItemToArray(tiers,
                                     cJSON_CreateString(veil_tier_name(b)));
    }
    if (data == NULL) { /* out of memory part-way: svc_json says 500 */
        cJSON_Delete(j);
        j = NULL;
    }
    svc_json(r, 200, j);
}

/* ---- the route table ------------------------------------------------------
 */

/* Each row carries its policy.  The public key, the models and the health
 * answer at once (no admission); everything else goes through the same
 * refusals as a completion, and takes a worker slot once its body is in,
 * but for the signature lookup, which is cheap and holds no body, and the
 * attestation routes, whose work is the TPM's: they take a place in the
 * TPM's own line instead (tpmline.c), as a maximum completion does before
 * its slot.  No HEAD of the report: it would cost a TPM quote that nobody
 * reads. */
static const svc_route routes[] = {
    {.path = "/pki/public_key",
     .method = "GET",
     .body_max = SMALL_BODY_MAX,
     .handle = gw_pki_key},
    {.path = "/pki/next_public_key",
     .method = "GET",
     .body_max = SMALL_BODY_MAX,
     .handle = gw_pki_next_key},
    {.path = "/pki/signing_key",
     .method = "GET",
     .body_max = SMALL_BODY_MAX,
     .handle = get_signing_key},
    {.path = "/v1/models",
     .method = "GET",
     .body_max = SMALL_BODY_MAX,
     .handle = get_models},
    {.path = "/healthz",
     .method = "GET",
     .body_max = SMALL_BODY_MAX,
     .handle = gw_health_ready},
    {.path = "/healthz/ready",
     .method = "GET",
     .body_max = SMALL_BODY_MAX,
     .handle = gw_health_ready},
    {.path = "/healthz/live",
     .method = "GET",
     .body_max = SMALL_BODY_MAX,
     .handle = gw_health_live},
    {.path = "/v1/chat/secure_completion",
     .method = "POST",
     .admit = 1,
     .needs_slot = 1,
     .body_max = 0,
     .before_slot = gw_tpm_place_maximum,
     .handle = gw_v1_completion},
    {.path = "/v1/attestation/report",
     .method = "GET",
     .admit = 1,
     .no_head = 1,
     .body_max = SMALL_BODY_MAX,
     .before_slot = gw_tpm_place,
     .handle = gw_attest_report},
    {.path = "/v1/attestation/activate",
     .method = "POST",
     .admit = 1,
     .body_max = SMALL_BODY_MAX,
     .before_slot = gw_tpm_place,
     .handle = gw_attest_activate},
    {.path = "/.well-known/ohttp-gateway",
     .method = "GET",
     .body_max = SMALL_BODY_MAX,
     .handle = gw_v2_keys},
    {.path = "/.well-known/ohttp-gateway",
     .method = "POST",
     .admit = 1,
     .needs_slot = 1,
     .body_max = 0,
     .handle = gw_v2_request,
     .tag = GW_TAG_INNER_KEY},
    {.path = "/v2/keys/certify",
     .method = "GET",
     .body_max = SMALL_BODY_MAX,
     .handle = gw_v2_certify},
    {.path = "/v1/signatures/",
     .method = "GET",
     .prefix = 1,
     .admit = 1,
     .body_max = SMALL_BODY_MAX,
     .tail_ok = gw_payload_id_ok,
     .handle = gw_signature_get,
     .log_path = "/v1/signatures/ID"},
    /* operator API keys only; metrics_listen serves it without (observe.c) */
    {.path = "/metrics",
     .method = "GET",
     .admit = 1,
     .body_max = SMALL_BODY_MAX,
     .handle = gw_metrics_get},
};

/* ---- start and stop ---------------------------------------------------- */

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

/* The keys as they are published and named in evidence. */
static int server_keys(gw_server *s, char *err, size_t err_size)
{
    const gw_deps *deps = &s->d;

    if (veil_key_public_pem(deps->server_key, &s->pem) != VEIL_OK ||
        (s->enc_spki_b64 = spki_b64(deps->server_key)) == NULL) {
        snprintf(err, err_size, "server key: %s", veil_last_error()->message);
        return -1;
    }
    if (deps->signing_key &&
        (deps->signlog == NULL ||
         (s->sign_spki_b64 = spki_b64(deps->signing_key)) == NULL ||
         veil_key_public_pem(deps->signing_key, &s->sign_pem) != VEIL_OK)) {
        snprintf(err, err_size, "signing key: %s",
                 deps->signlog ? veil_last_error()->message
                               : "no signature store");
        return -1;
    }
    veil_hex(deps->encryption_key_sha256, 32, s->enc_hex);
    veil_hex(deps->signing_key_sha256, 32, s->sign_hex);
    snprintf(s->sign_key_header, sizeof s->sign_key_header, "sha256:%s",
             s->sign_hex);
    return 0;
}

/* The HTTP layer's settings, from veild's. */
static void http_config(gw_server *s, svc_http_config *h)
{
    const gw_config *cfg = s->d.cfg;

    *h = (svc_http_config){
        .listen_addr = s->d.no_listen ? NULL : cfg->listen_addr,
        .port = cfg->port,
        .tls_cert = cfg->tls_cert,
        .tls_key = cfg->tls_key,
        .tls_module = cfg->pkcs11_module,
        .tls_pin_source = cfg->pin_source,
        .body_limit = cfg->body_limit,
        .workers = cfg->workers,
        .header_timeout = cfg->header_timeout,
        .body_min_rate = cfg->body_min_rate,
        .body_timeout = cfg->body_timeout,
        .answer_timeout = cfg->answer_timeout,
        .connection_timeout = cfg->upstream_timeout + 60,
        .connections_per_address = cfg->connections_per_address,
        .body_memory = cfg->body_memory,
        .routes = routes,
        .n_routes = sizeof routes / sizeof routes[0],
        .admit = admit,
        .app = s,
        .log = s->log,
        .done = gw_observe_done,
        .req_data_size = sizeof(gw_req_rec),
    };
}

/* The cache salt's secret, read (or made) once a model has a
 * cache_salt_field.  0, or -1 with err. */
static int salt_secret(gw_server *s, const gw_config *cfg, char *err,
                       size_t err_size)
{
    if (s->has_salt_secret)
        return 0;
    for (size_t i = 0; i < cfg->n_models; i++)
        if (cfg->models[i].cache_salt_field) {
            if (gw_state_secret(s->d.cfg->state_dir, "cache-salt.key",
                                s->salt_secret, err, err_size) != 0)
                return -1;
            s->has_salt_secret = 1;
            break;
        }
    return 0;
}

void gw_server_reopen_logs(gw_server *s)
{
    gw_observe_reload(s);
}

int gw_server_reload(gw_server *s, gw_live *next, char *err, size_t err_size)
{
    const gw_config *cfg = next->cfg;

    /* before the swap: only requests of next read the secret */
    if (salt_secret(s, cfg, err, err_size) != 0)
        return -1;
    if (cfg->tls_cert && svc_http_reload_tls(s->http, cfg->tls_cert,
                                             cfg->tls_key, err, err_size) != 0)
        return -1;
    gw_rate_set(s->d.rate, cfg->rate, cfg->burst);
    pthread_mutex_lock(&s->live_lock);
    gw_live *old = s->live;
    s->live = next;
    pthread_mutex_unlock(&s->live_lock);
    gw_live_release(old);
    return 0;
}

gw_server *gw_server_start(const gw_deps *deps, char *err, size_t err_size)
{
    static const char undecryptable[] =
        "{\"detail\":\"" VEIL_PKG_DECRYPT_DETAIL "\"}";
    /* PROTOCOL-V2.md 7: RFC 9458 5.3's problem for every request that does
     * not open, with the title its type is registered under (RFC 9458 9.5;
     * RFC 9457 3.1.3: the same title for every occurrence) */
    static const char ohttp_key[] =
        "{\"type\":\"" VEIL_OHTTP_PROBLEM_KEY
        "\",\"title\":\"" VEIL_OHTTP_PROBLEM_KEY_TITLE "\"}";
    gw_server *s = calloc(1, sizeof *s);
    svc_http_config hc;

    if (s == NULL) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    s->d = *deps;
    s->live = gw_live_borrow(deps->cfg, deps->auth);
    if (s->live)
        s->live->next = deps->server_key_next;
    s->log = (veil_logger){deps->log, deps->log_ctx, deps->log_level,
                           deps->log_fields};
    pthread_mutex_init(&s->live_lock, NULL);
    pthread_mutex_init(&s->health_lock, NULL);
    pthread_mutex_init(&s->keys_lock, NULL);
    veil_memory_status_get(&s->mem);
    if (server_keys(s, err, err_size) != 0)
        goto fail;
    s->undecryptable = svc_response_new("application/json", undecryptable,
                                        sizeof undecryptable - 1);
    s->ohttp_key = svc_response_new("application/problem+json", ohttp_key,
                                    sizeof ohttp_key - 1);
    if (s->undecryptable == NULL || s->ohttp_key == NULL ||
        (s->keys = gw_keycache_new()) == NULL) {
        snprintf(err, err_size, "out of memory");
        goto fail;
    }
    if (s->live == NULL) {
        snprintf(err, err_size, "out of memory");
        goto fail;
    }
    if (salt_secret(s, deps->cfg, err, err_size) != 0)
        goto fail;
    if (deps->tpm && (s->tpm_line = gw_tpm_line_new(
                          deps->cfg->tpm_workers, deps->cfg->tpm_queue,
                          deps->cfg->tpm_queue_wait)) == NULL) {
        snprintf(err, err_size, "out of memory");
        goto fail;
    }
    http_config(s, &hc);
    if ((s->http = svc_http_start(&hc, err, err_size)) == NULL ||
        gw_observe_start(s, err, err_size) != 0)
        goto fail;
    return s;
fail:
    gw_server_stop(s, 0);
    return NULL;
}

unsigned gw_server_port(const gw_server *s)
{
    return svc_http_port(s->http);
}

svc_http *gw_server_http(gw_server *s)
{
    return s->http;
}

unsigned gw_server_stop(gw_server *s, unsigned grace_s)
{
    if (s == NULL)
        return 0;
    gw_observe_stop(s);
    unsigned cut = svc_http_stop(s->http, grace_s);
    gw_tpm_line_free(s->tpm_line);
    svc_response_free(s->undecryptable);
    svc_response_free(s->ohttp_key);
    free(s->pem);
    free(s->enc_spki_b64);
    free(s->sign_spki_b64);
    free(s->sign_pem);
    free(s->health);
    gw_keycache_free(s->keys);
    veil_wipe(s->salt_secret, sizeof s->salt_secret);
    pthread_mutex_destroy(&s->health_lock);
    pthread_mutex_destroy(&s->keys_lock);
    gw_live_release(s->live);
    pthread_mutex_destroy(&s->live_lock);
    free(s->keys_sig_b64);
    free(s);
    return cut;
}
