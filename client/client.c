/* The veil client: its lifecycle (veil_client_new in named steps), and
 * one chat completion from request to decrypted, verified answer, with
 * retries.  It uses keys.c (own and server keys), verify.c (answer
 * verification), trust.c, request.c, transport.c and error.c; none of
 * them calls back into this file (docs/ARCHITECTURE.md). */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "keys.h"
#include "package.h"
#include "tier.h"
#include "verify.h"

#define DEFAULT_URL "https://api.nomyo.ai"
/* A package has about a dozen values (docs/CLIENT.md): anything with more,
 * or nested deeper, is refused before cJSON parses it. */
#define PACKAGE_MAX_VALUES 64
#define PACKAGE_MAX_DEPTH 4

/* ---- small helpers ----------------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int dup_str(const char *in, char **out)
{
    *out = NULL;
    return in == NULL || (*out = strdup(in)) != NULL;
}

static int parse_pin(const char *s, uint8_t out[32])
{
    if (strncmp(s, "sha256:", 7) == 0)
        s += 7;
    return strlen(s) == 64 && veil_hex_decode(s, 32, out);
}

/* ---- lifecycle --------------------------------------------------------- */

void veil_client_config_init(veil_client_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->base_url = DEFAULT_URL;
    cfg->timeout_ms = 60000;
    cfg->max_retries = 2;
    cfg->retry_base_ms = 1000;
    cfg->retry_max_ms = 60000;
    cfg->key_bits = 4096;
    cfg->log_level = VEIL_LOG_WARN;
}

static int url_ok(const char *url, int allow_http)
{
    return !strncmp(url, "https://", 8) ||
           (allow_http && !strncmp(url, "http://", 7));
}

/* Checks a base URL: https, or http when allowed. */
static veil_client_status check_url(const veil_client *c, const char *url,
                                    veil_client_error *err)
{
    char shown[512];
    veil_cl_redact_url(url, shown, sizeof shown);
    if (!strncmp(url, "http://", 7) && !c->cfg.allow_http)
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 0, VEIL_E_ARG,
                            "plain http is refused (%s): use https, or allow "
                            "http for local development only",
                            shown);
    if (!url_ok(url, c->cfg.allow_http))
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "the base URL must start with https:// (%s)",
                            shown);
    return VEIL_CLIENT_OK;
}

/* veil_client_new, step 1: the settings alone, before anything is
 * allocated. */
static veil_client_status cfg_check(const veil_client_config *cfg,
                                    veil_client_error *err)
{
    if (cfg->key_bits < 2048 || cfg->key_bits > 4096)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "key_bits must be 2048, 3072 or 4096");
    if (cfg->security_tier && !veil_tier_parse(cfg->security_tier))
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "security tier must be standard, high or "
                            "maximum");
    if (cfg->key_source != VEIL_CLIENT_KEY_EPHEMERAL &&
        (cfg->key_ref == NULL || cfg->key_ref[0] == '\0'))
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "this key source needs key_ref");
    if (cfg->rotate_seconds > 0 && cfg->key_source != VEIL_CLIENT_KEY_EPHEMERAL)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "rotation applies to ephemeral keys; rotate "
                            "token and directory keys with veil-keys");
    if (cfg->timeout_ms == 0)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "timeout_ms must be above 0");
    return VEIL_CLIENT_OK;
}

/* Step 2: c->cfg with copies of the strings it borrows (the base URL
 * without trailing slashes), then the base URL checked.  The secrets are
 * step 3's. */
static veil_client_status
cfg_copy(veil_client *c, const veil_client_config *cfg, veil_client_error *err)
{
    const char *url = cfg->base_url ? cfg->base_url : DEFAULT_URL;
    c->cfg = *cfg;
    if (!dup_str(url, &c->base_url) || !dup_str(cfg->ca_file, &c->ca_file) ||
        !dup_str(cfg->security_tier, &c->tier) ||
        !dup_str(cfg->key_ref, &c->key_ref) ||
        !dup_str(cfg->pkcs11_module, &c->module) ||
        !dup_str(cfg->pin.where, &c->pin_where) ||
        !dup_str(cfg->key_password.where, &c->pw_where))
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_NOMEM,
                            "out of memory");
    /* Strip trailing slashes: paths are appended. */
    for (size_t n = strlen(c->base_url); n > 0 && c->base_url[n - 1] == '/';)
        c->base_url[--n] = '\0';
    c->cfg.base_url = c->base_url;
    c->cfg.ca_file = c->ca_file;
    c->cfg.security_tier = c->tier;
    c->cfg.key_ref = c->key_ref;
    c->cfg.pkcs11_module = c->module;
    c->cfg.pin.where = c->pin_where;
    c->cfg.key_password.where = c->pw_where;
    c->cfg.api_key = NULL;
    c->cfg.server_key_pin = NULL;
    c->cfg.trust_file = NULL; /* open_trust loads it into c->trust */
    if (c->cfg.retry_max_ms == 0)
        c->cfg.retry_max_ms = 60000;
    c->log = (veil_logger){cfg->log, cfg->log_ctx, cfg->log_level};
    return check_url(c, c->base_url, err);
}

/* Step 3: the server key pin and the API key (into secret memory). */
static veil_client_status cfg_secrets(veil_client *c,
                                      const veil_client_config *cfg,
                                      veil_client_error *err)
{
    veil_client_status st = VEIL_CLIENT_E_CONFIG;
    if (cfg->server_key_pin) {
        const char *hex = cfg->server_key_pin +
                          (strncmp(cfg->server_key_pin, "sha256:", 7) ? 0 : 7);
        if (!parse_pin(cfg->server_key_pin, c->pin))
            return veil_cl_fail(err, st, 0, VEIL_E_ARG,
                                "server_key_pin must be sha256: and 64 hex "
                                "digits");
        c->has_pin = 1;
        snprintf(c->pin_text, sizeof c->pin_text, "sha256:%s", hex);
    }
    if (cfg->api_key && cfg->api_key[0]) {
        size_t n = strlen(cfg->api_key);
        if (strpbrk(cfg->api_key, "\r\n") != NULL)
            return veil_cl_fail(err, st, 0, VEIL_E_ARG,
                                "the API key contains a line break");
        if (veil_secbuf_new(n + 1, &c->api_key) != VEIL_OK)
            return veil_cl_fail(err, st, 0, VEIL_E_NOMEM, "out of memory");
        memcpy(veil_secbuf_data(c->api_key), cfg->api_key, n + 1);
    }
    return VEIL_CLIENT_OK;
}

/* Step 4: the trust file, which must be for the base URL: answers from
 * another gateway could not be checked against it. */
static veil_client_status open_trust(veil_client *c, const char *path,
                                     veil_client_error *err)
{
    veil_client_status st;
    if (path == NULL)
        return VEIL_CLIENT_OK;
    if ((st = veil_trust_load(path, &c->trust, err)) != VEIL_CLIENT_OK)
        return st;
    if (strcmp(veil_trust_url(c->trust), c->base_url) != 0) {
        char a[512], b[512];
        veil_cl_redact_url(veil_trust_url(c->trust), a, sizeof a);
        veil_cl_redact_url(c->base_url, b, sizeof b);
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "the trust file %s was enrolled for %s, not %s",
                            path, a, b);
    }
    return VEIL_CLIENT_OK;
}

/* Step 5: the engine (the caller's, or one of our own) and libcurl.  A
 * password-protected key directory needs an engine whose PIN source is
 * that password: the client's own. */
static veil_client_status open_engine(veil_client *c,
                                      const veil_client_config *cfg,
                                      veil_client_error *err)
{
    if (cfg->engine && !(cfg->key_source == VEIL_CLIENT_KEY_DIR &&
                         cfg->key_password.kind != VEIL_PIN_NONE)) {
        c->engine = cfg->engine;
    } else {
        veil_engine_config ec = {
            .pkcs11_module = c->module,
            .pin = cfg->key_source == VEIL_CLIENT_KEY_DIR ? c->cfg.key_password
                                                          : c->cfg.pin,
            .log = cfg->log,
            .log_ctx = cfg->log_ctx,
            .log_level = cfg->log_level,
        };
        veil_rc rc = veil_engine_new(&ec, &c->engine);
        if (rc != VEIL_OK)
            return veil_cl_engine_fail(err, VEIL_CLIENT_E_CONFIG, rc,
                                       "starting the engine");
        c->own_engine = 1;
    }
    if ((c->tx = veil_cl_transport_new(c->ca_file, c->cfg.timeout_ms)) == NULL)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_NOMEM,
                            "could not start libcurl");
    return VEIL_CLIENT_OK;
}

veil_client_status veil_client_new(const veil_client_config *cfg,
                                   veil_client **out, veil_client_error *err)
{
    veil_client_config def;
    veil_client_status st;
    if (err)
        memset(err, 0, sizeof *err);
    *out = NULL;
    if (cfg == NULL) {
        veil_client_config_init(&def);
        cfg = &def;
    }
    if ((st = cfg_check(cfg, err)) != VEIL_CLIENT_OK)
        return st;
    veil_client *c = calloc(1, sizeof *c);
    if (c == NULL)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_NOMEM,
                            "out of memory");
    pthread_mutex_init(&c->lock, NULL);
    if ((st = cfg_copy(c, cfg, err)) != VEIL_CLIENT_OK ||
        (st = cfg_secrets(c, cfg, err)) != VEIL_CLIENT_OK ||
        (st = open_trust(c, cfg->trust_file, err)) != VEIL_CLIENT_OK ||
        (st = open_engine(c, cfg, err)) != VEIL_CLIENT_OK ||
        (st = veil_cl_load_key(c, &c->own, err)) != VEIL_CLIENT_OK) {
        veil_client_free(c);
        return st;
    }
    if (!strncmp(c->base_url, "http://", 7)) {
        char shown[512];
        veil_cl_redact_url(c->base_url, shown, sizeof shown);
        veil_logf(&c->log, VEIL_LOG_WARN,
                  "plain http to %s: the API key and the request metadata "
                  "travel unprotected; use it for local development only",
                  shown);
    }
    *out = c;
    return VEIL_CLIENT_OK;
}

void veil_client_dispose(veil_client *c)
{
    if (c == NULL || atomic_exchange(&c->disposed, 1))
        return;
    pthread_mutex_lock(&c->lock);
    veil_cl_keyref_put(c->own);
    c->own = NULL;
    for (int i = 0; i < VEIL_CL_SERVER_CACHE; i++) {
        veil_cl_keyref_put(c->servers[i]);
        c->servers[i] = NULL;
    }
    pthread_mutex_unlock(&c->lock);
    veil_secbuf_free(c->api_key);
    c->api_key = NULL;
    veil_cl_transport_free(c->tx);
    c->tx = NULL;
    if (c->own_engine)
        veil_engine_free(c->engine);
    c->engine = NULL;
}

void veil_client_free(veil_client *c)
{
    if (c == NULL)
        return;
    veil_client_dispose(c);
    pthread_mutex_destroy(&c->lock);
    free(c->base_url);
    free(c->ca_file);
    free(c->tier);
    free(c->key_ref);
    free(c->module);
    free(c->pin_where);
    free(c->pw_where);
    veil_trust_free(c->trust);
    free(c);
}

static veil_client_status disposed(veil_client *c, veil_client_error *err)
{
    if (c != NULL && !atomic_load(&c->disposed))
        return VEIL_CLIENT_OK;
    return veil_cl_fail(err, VEIL_CLIENT_E_DISPOSED, 0, 0,
                        "the client was disposed");
}

static int retryable(long status)
{
    return status == 429 || status == 500 || status == 502 || status == 503 ||
           status == 504;
}

/* ---- the server key ----------------------------------------------------- */

/* Hands out a key's PEM and fingerprint, then drops the reference. */
static veil_client_status key_out(veil_cl_keyref *k, char **pem,
                                  char fingerprint[72], veil_client_error *err)
{
    veil_client_status st = VEIL_CLIENT_OK;
    if (fingerprint)
        memcpy(fingerprint, k->fp_text, 72);
    if (pem && (*pem = strdup(k->pem)) == NULL)
        st = veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_NOMEM,
                          "out of memory");
    veil_cl_keyref_put(k);
    return st;
}

veil_client_status veil_client_server_key(veil_client *c, char **pem,
                                          char fingerprint[72],
                                          veil_client_error *err)
{
    veil_client_status st = disposed(c, err);
    veil_cl_keyref *k;
    if (st == VEIL_CLIENT_OK &&
        (st = veil_cl_server_key(c, c->base_url, NULL, &k, err)) ==
            VEIL_CLIENT_OK)
        st = key_out(k, pem, fingerprint, err);
    return st;
}

veil_client_status veil_client_public_key(veil_client *c, char **pem,
                                          char fingerprint[72],
                                          veil_client_error *err)
{
    veil_client_status st = disposed(c, err);
    veil_cl_keyref *k;
    if (st == VEIL_CLIENT_OK &&
        (st = veil_cl_own_key(c, &k, err)) == VEIL_CLIENT_OK)
        st = key_out(k, pem, fingerprint, err);
    return st;
}

/* ---- one chat completion ------------------------------------------------ */

/* Everything one call needs, resolved once. */
typedef struct call {
    veil_client *c;
    const char *url;
    const char *tier;
    const char *api_key;
    veil_cl_keyref *own;
    veil_cl_keyref *server;
    veil_chat_stats *stats;
    char **evidence; /* opts->evidence */
} call;

/* Backoff before retry number `attempt` (1-based): Retry-After when the
 * server sent one, else base * 2^(attempt-1), with the upper half jittered;
 * both capped. */
static unsigned backoff_ms(veil_client *c, unsigned attempt,
                           long retry_after_ms)
{
    unsigned cap = c->cfg.retry_max_ms;
    if (retry_after_ms >= 0)
        return retry_after_ms > (long)cap ? cap : (unsigned)retry_after_ms;
    uint64_t d = (uint64_t)c->cfg.retry_base_ms
                 << (attempt > 20 ? 20 : attempt - 1);
    if (d > cap)
        d = cap;
    uint32_t r = 0;
    veil_random(c->engine, (uint8_t *)&r, sizeof r);
    return (unsigned)(d / 2 + (d / 2 + 1) * (uint64_t)r / UINT32_MAX);
}

/* Refuses an answer: the one security message, and what was wrong with it
 * in the log (debug) and after the message. */
static veil_client_status refuse(call *k, const char *payload_id, veil_rc rc,
                                 const char *why, veil_client_error *err)
{
    veil_logf(&k->c->log, VEIL_LOG_DEBUG, "answer to %s refused: %s",
              payload_id, why);
    return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, rc, "%s (%s)",
                        VEIL_CLIENT_SECURITY_MESSAGE, why);
}

/* Opens a 200 answer into the caller's tree and fills _metadata.  Any
 * failure is the one security error.  Before the package is opened
 * nothing in it is trusted: it is parsed only when it is package-sized in
 * values (its strings may be large), and nothing from outside the
 * encryption (the package's "algorithm" and "processed_at") reaches the
 * answer. */
static veil_client_status open_answer(call *k, const veil_cl_http_response *r,
                                      const char *payload_id, cJSON **out,
                                      veil_client_error *err)
{
    veil_secbuf *pt = NULL;
    cJSON *tree = NULL;
    veil_rc rc = VEIL_E_DECRYPT;
    char why[160];
    if (r->body == NULL ||
        !veil_cl_json_small(r->body, r->len, PACKAGE_MAX_VALUES,
                            PACKAGE_MAX_DEPTH)) {
        veil_logf(&k->c->log, VEIL_LOG_DEBUG,
                  "answer to %s refused: not a package (too many values or "
                  "too deep)",
                  payload_id);
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_ARG, "%s",
                            VEIL_CLIENT_SECURITY_MESSAGE);
    }
    rc = veil_pkg_open(k->c->engine, k->own->key, r->body, r->len, &pt, NULL);
    if (rc != VEIL_OK) {
        veil_logf(&k->c->log, VEIL_LOG_DEBUG, "answer to %s refused: %s",
                  payload_id, veil_last_error()->message);
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, rc, "%s",
                            VEIL_CLIENT_SECURITY_MESSAGE);
    }
    tree = cJSON_ParseWithLength((const char *)veil_secbuf_data(pt),
                                 veil_secbuf_len(pt));
    veil_secbuf_free(pt);
    cJSON *md = cJSON_GetObjectItemCaseSensitive(tree, "_metadata");
    if (!cJSON_IsObject(tree) || (md != NULL && !cJSON_IsObject(md))) {
        veil_logf(&k->c->log, VEIL_LOG_DEBUG,
                  "answer to %s refused: its plaintext is not a JSON object",
                  payload_id);
        veil_chat_response_free(tree);
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_DECRYPT,
                            "%s", VEIL_CLIENT_SECURITY_MESSAGE);
    }
    /* A reader of the tree gets the first of two members, a JSON parser
     * elsewhere the last: neither may be the server's choice. */
    const char *dup = veil_cl_json_dup_key(tree);
    const char *where = "";
    if (dup == NULL && (dup = veil_cl_json_dup_key(md)) != NULL)
        where = "_metadata.";
    if (dup == NULL &&
        (dup = veil_cl_json_dup_key(
             cJSON_GetObjectItemCaseSensitive(md, "tpm_attestation"))) != NULL)
        where = "_metadata.tpm_attestation.";
    if (dup != NULL) {
        snprintf(why, sizeof why, "the answer has the member \"%s%.40s\" twice",
                 where, dup);
        veil_chat_response_free(tree);
        return refuse(k, payload_id, VEIL_E_VERIFY, why, err);
    }
    /* The payload ID inside the encryption must be this request's: with a
     * long-lived client key an earlier answer still opens. */
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(md, "payload_id");
    if (id != NULL &&
        (!cJSON_IsString(id) || strcmp(id->valuestring, payload_id) != 0)) {
        veil_chat_response_free(tree);
        return refuse(k, payload_id, VEIL_E_VERIFY,
                      "the answer is for another payload ID than this "
                      "request's (a replayed answer?)",
                      err);
    }
    if (md == NULL)
        md = cJSON_AddObjectToObject(tree, "_metadata");
    cJSON_DeleteItemFromObjectCaseSensitive(md, "payload_id");
    cJSON_DeleteItemFromObjectCaseSensitive(md, "is_encrypted");
    cJSON_DeleteItemFromObjectCaseSensitive(md, "encryption_algorithm");
    if (md == NULL || !cJSON_AddStringToObject(md, "payload_id", payload_id) ||
        !cJSON_AddTrueToObject(md, "is_encrypted") ||
        !cJSON_AddStringToObject(md, "encryption_algorithm",
                                 VEIL_PKG_ALGORITHM)) {
        veil_chat_response_free(tree);
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_NOMEM,
                            "out of memory");
    }
    *out = tree;
    return VEIL_CLIENT_OK;
}

/* Seals pt to the server key and posts it once.  *sent receives the
 * request body (ciphertext) as sent, or NULL; the caller frees it. */
static veil_client_status post_once(call *k, veil_secbuf *pt,
                                    char payload_id[37], char **sent,
                                    veil_cl_http_response *r,
                                    veil_client_error *err)
{
    veil_client *c = k->c;
    char *pkg = NULL;
    *sent = NULL;
    uint64_t t0 = now_ns();
    veil_rc rc = veil_uuid4(c->engine, payload_id);
    if (rc == VEIL_OK)
        rc = veil_pkg_seal(c->engine, k->server->key, veil_secbuf_data(pt),
                           veil_secbuf_len(pt) - 1,
                           c->cfg.tag_mode == VEIL_CLIENT_TAG_APPENDED
                               ? VEIL_TAG_APPENDED
                               : VEIL_TAG_SEPARATE,
                           -1, &pkg);
    if (rc != VEIL_OK) {
        memset(r, 0, sizeof *r);
        return veil_cl_engine_fail(err, VEIL_CLIENT_E_SECURITY, rc,
                                   "sealing the request");
    }
    uint64_t t1 = now_ns();

    char url[2048], h_id[64], h_tier[64];
    size_t auth_len = k->api_key ? strlen(k->api_key) + 32 : 0;
    char *h_auth = auth_len ? malloc(auth_len) : NULL;
    size_t key_len = strlen(k->own->pem_header) + 16;
    char *h_key = malloc(key_len);
    const char *headers[8];
    int n = 0;
    veil_client_status st;
    if ((auth_len && h_auth == NULL) || h_key == NULL) {
        st = veil_cl_fail(err, VEIL_CLIENT_E_CONNECTION, 0, VEIL_E_NOMEM,
                          "out of memory");
        memset(r, 0, sizeof *r);
        goto out;
    }
    snprintf(url, sizeof url, "%s/v1/chat/secure_completion", k->url);
    snprintf(h_id, sizeof h_id, "X-Payload-ID: %s", payload_id);
    snprintf(h_key, key_len, "X-Public-Key: %s", k->own->pem_header);
    headers[n++] = "Content-Type: application/octet-stream";
    headers[n++] = "Accept: application/json";
    headers[n++] = "Expect:"; /* no 100-continue round trip */
    headers[n++] = h_id;
    headers[n++] = h_key;
    if (k->tier) {
        snprintf(h_tier, sizeof h_tier, "X-Security-Tier: %s", k->tier);
        headers[n++] = h_tier;
    }
    if (h_auth) {
        snprintf(h_auth, auth_len, "Authorization: Bearer %s", k->api_key);
        headers[n++] = h_auth;
    }
    headers[n] = NULL;
    char shown[2048];
    veil_cl_redact_url(url, shown, sizeof shown);
    veil_logf(&c->log, VEIL_LOG_DEBUG, "POST %s payload %s (%zu bytes)", shown,
              payload_id, strlen(pkg));
    st = veil_cl_transport_send(c->tx, url, headers, pkg, strlen(pkg), 0, r,
                                err);
out:
    if (k->stats) {
        k->stats->encrypt_ns += t1 - t0;
        k->stats->network_ns += now_ns() - t1;
        k->stats->attempts++;
    }
    if (h_auth)
        veil_wipe(h_auth, auth_len);
    free(h_auth);
    free(h_key);
    *sent = pkg;
    return st;
}

/* Logs each check made on an answer (debug). */
static void log_check(void *ctx, const char *check, int ok, const char *detail)
{
    const call *k = ctx;
    veil_logf(&k->c->log, VEIL_LOG_DEBUG, "answer check: %s %s: %s",
              ok ? "ok" : "FAIL", check, detail);
}

/* Verifies an opened answer (veil_cl_verify_answer) when there is
 * something to verify: a trust file, the maximum tier, or evidence to
 * record.  A failure wipes and drops the answer. */
static veil_client_status verify_answer(call *k, const veil_cl_http_response *r,
                                        const char *payload_id,
                                        const char *sent, cJSON **response,
                                        veil_client_error *err)
{
    veil_client *c = k->c;
    const char *tier = k->tier ? k->tier : "standard";
    int maximum = !strcmp(tier, "maximum");
    if (c->trust == NULL && !maximum && k->evidence == NULL)
        return VEIL_CLIENT_OK;
    const cJSON *md = cJSON_GetObjectItemCaseSensitive(*response, "_metadata");
    veil_cl_answer a = {
        .url = k->url,
        .payload_id = payload_id,
        .tier = tier,
        .request = sent,
        .request_len = strlen(sent),
        .response = r,
        .server_key_sha256 = k->server->fp,
        .tpm_attestation =
            cJSON_GetObjectItemCaseSensitive(md, "tpm_attestation"),
        .allow_foreign = c->cfg.allow_foreign_attestation,
    };
    veil_client_status st = veil_cl_verify_answer(
        c->engine, c->trust, &a, log_check, k, k->evidence, err);
    if (st != VEIL_CLIENT_OK) {
        veil_logf(&c->log, VEIL_LOG_DEBUG, "answer to %s refused: %s",
                  payload_id, err->detail);
        veil_chat_response_free(*response);
        *response = NULL;
        return st;
    }
    if (maximum && c->trust == NULL)
        veil_logf(&c->log, VEIL_LOG_WARN,
                  a.quote_checked
                      ? "answer %s: its TPM quote matches this request and "
                        "server key, but the attestation key is not enrolled, "
                        "so nothing shows it is a TPM's (set a trust file from "
                        "'veil attest enroll')"
                      : "answer %s: the maximum tier answer carries a TPM "
                        "attestation in another format than veil's; it was not "
                        "verified (accepted as foreign attestation is allowed)",
                  payload_id);
    return VEIL_CLIENT_OK;
}

static veil_client_status exchange(call *k, veil_secbuf *pt, cJSON **response,
                                   veil_client_error *err)
{
    veil_client *c = k->c;
    int refetched = 0;
    for (unsigned attempt = 0;;) {
        char payload_id[37];
        char *sent = NULL;
        veil_cl_http_response r;
        veil_client_status st = post_once(k, pt, payload_id, &sent, &r, err);
        long status = st == VEIL_CLIENT_OK ? r.status : 0;
        if (status == 200) {
            uint64_t t = now_ns();
            st = open_answer(k, &r, payload_id, response, err);
            if (st == VEIL_CLIENT_OK)
                st = verify_answer(k, &r, payload_id, sent, response, err);
            if (k->stats) {
                k->stats->decrypt_ns += now_ns() - t;
                if (st == VEIL_CLIENT_OK)
                    memcpy(k->stats->payload_id, payload_id, 37);
            }
            free(sent);
            free(r.body);
            return st;
        }
        free(sent);
        if (st == VEIL_CLIENT_OK)
            st = veil_cl_http_fail(&r, err);
        free(r.body);
        if (st == VEIL_CLIENT_E_SECURITY)
            return st; /* TLS verification: never retried */

        /* The server could not open the package: its key may have
         * rotated.  Refetch once; resend only when the key changed. */
        if (status == 400 && !refetched &&
            strcasestr(err->detail, "decrypt") != NULL) {
            refetched = 1;
            veil_client_error e2;
            veil_cl_keyref *fresh;
            uint64_t t = now_ns();
            veil_client_status got =
                veil_cl_server_key(c, k->url, k->server, &fresh, &e2);
            if (k->stats)
                k->stats->network_ns += now_ns() - t;
            if (got == VEIL_CLIENT_OK) {
                int changed = CRYPTO_memcmp(fresh->fp, k->server->fp, 32);
                veil_cl_keyref_put(k->server);
                k->server = fresh;
                if (changed) {
                    veil_logf(&c->log, VEIL_LOG_INFO,
                              "server key changed; resending with the new key");
                    continue;
                }
            } else if (got == VEIL_CLIENT_E_SECURITY) {
                /* the new key is refused (pin, trust file, check): that,
                 * not the 400, is what the caller must hear */
                *err = e2;
                return got;
            }
            return st;
        }
        if (attempt >= c->cfg.max_retries ||
            !(st == VEIL_CLIENT_E_CONNECTION || retryable(status)))
            return st;
        attempt++;
        unsigned ms = backoff_ms(c, attempt, status ? r.retry_after_ms : -1);
        veil_logf(&c->log, VEIL_LOG_INFO, "retry %u of %u in %u ms after %s",
                  attempt, c->cfg.max_retries, ms,
                  status ? "an HTTP error" : "a network error");
        if (c->cfg.on_retry)
            c->cfg.on_retry(c->cfg.retry_ctx, attempt, (int)status, ms);
        uint64_t t = now_ns();
        sleep_ms(ms);
        if (k->stats)
            k->stats->network_ns += now_ns() - t;
    }
}

veil_client_status veil_chat_create(veil_client *c, const cJSON *request,
                                    const veil_request_opts *opts,
                                    cJSON **response, veil_chat_stats *stats,
                                    veil_client_error *err)
{
    veil_request_opts none = {0};
    call k = {.c = c, .stats = stats};
    veil_secbuf *pt = NULL;
    char why[256];
    veil_client_error local; /* the retry logic reads the detail */
    if (err == NULL)
        err = &local;
    memset(err, 0, sizeof *err);
    if (stats)
        memset(stats, 0, sizeof *stats);
    if (response == NULL)
        return veil_cl_fail(err, VEIL_CLIENT_E_INVALID_REQUEST, 0, VEIL_E_ARG,
                            "response must not be NULL");
    *response = NULL;
    veil_client_status st = disposed(c, err);
    if (st != VEIL_CLIENT_OK)
        return st;
    if (opts == NULL)
        opts = &none;
    if (opts->evidence)
        *opts->evidence = NULL;
    k.evidence = opts->evidence;
    k.url = opts->base_url ? opts->base_url : c->base_url;
    k.tier = opts->security_tier ? opts->security_tier : c->tier;
    k.api_key = opts->api_key ? opts->api_key
                : c->api_key  ? (const char *)veil_secbuf_data(c->api_key)
                              : NULL;
    if (k.api_key && (k.api_key[0] == '\0' || strpbrk(k.api_key, "\r\n")))
        return veil_cl_fail(err, VEIL_CLIENT_E_INVALID_REQUEST, 0, VEIL_E_ARG,
                            "the API key is empty or contains a line break");
    if (k.tier && !veil_tier_parse(k.tier))
        return veil_cl_fail(err, VEIL_CLIENT_E_INVALID_REQUEST, 0, VEIL_E_ARG,
                            "security tier must be standard, high or "
                            "maximum, not \"%.32s\"",
                            k.tier);
    if ((st = check_url(c, k.url, err)) != VEIL_CLIENT_OK)
        return st;
    char url[2048];
    if (snprintf(url, sizeof url, "%s", k.url) >= (int)sizeof url - 64)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "the base URL is too long");
    for (size_t n = strlen(url); n > 0 && url[n - 1] == '/';)
        url[--n] = '\0';
    k.url = url;
    if (c->trust && strcmp(url, veil_trust_url(c->trust)) != 0) {
        char a[512], b[512];
        veil_cl_redact_url(veil_trust_url(c->trust), a, sizeof a);
        veil_cl_redact_url(url, b, sizeof b);
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "the trust file is for %s, not %s", a, b);
    }
    if (!veil_cl_request_check(request, why, sizeof why))
        return veil_cl_fail(err, VEIL_CLIENT_E_INVALID_REQUEST, 0, VEIL_E_ARG,
                            "%s", why);

    uint64_t t0 = now_ns();
    veil_rc rc = veil_json_print_secret(request, VEIL_PKG_MAX_PLAINTEXT, &pt);
    if (stats)
        stats->encrypt_ns += now_ns() - t0;
    if (rc == VEIL_E_BUFFER)
        return veil_cl_fail(err, VEIL_CLIENT_E_INVALID_REQUEST, 0, rc,
                            "the request is larger than %u MiB; nothing was "
                            "sent",
                            VEIL_PKG_MAX_PLAINTEXT >> 20);
    if (rc != VEIL_OK)
        return veil_cl_fail(err, VEIL_CLIENT_E_INVALID_REQUEST, 0, rc,
                            "the request could not be serialised");

    /* A rotation (key generation) counts as encrypting, a server key
     * fetch as network. */
    t0 = now_ns();
    st = veil_cl_own_key(c, &k.own, err);
    uint64_t t1 = now_ns();
    if (st == VEIL_CLIENT_OK)
        st = veil_cl_server_key(c, k.url, NULL, &k.server, err);
    if (stats) {
        stats->encrypt_ns += t1 - t0;
        stats->network_ns += now_ns() - t1;
    }
    if (st == VEIL_CLIENT_OK)
        st = exchange(&k, pt, response, err);
    veil_cl_keyref_put(k.own);
    veil_cl_keyref_put(k.server);
    veil_secbuf_free(pt);
    return st;
}
