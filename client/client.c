/* The veil client's lifecycle: the config checked and copied, the trust
 * file, the engine and the keys opened (veil_client_new in named steps),
 * dispose and free, the two keys handed out, and the retry waits.  One
 * chat completion is chat.c's (v2.c's over protocol v2).  Uses keys.c,
 * trust.c and the bottom layer (client_int.h); only chat.c and v2.c call
 * into it (docs/ARCHITECTURE.md). */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keys.h"
#include "tier.h"

/* ---- small helpers ----------------------------------------------------- */

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
veil_client_status veil_cl_check_url(const veil_client *c, const char *url,
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
    if (cfg->protocol != VEIL_CLIENT_PROTOCOL_V1 &&
        cfg->protocol != VEIL_CLIENT_PROTOCOL_V2 &&
        cfg->protocol != VEIL_CLIENT_PROTOCOL_AUTO)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "unknown protocol %d (v1, v2 or auto)",
                            (int)cfg->protocol);
    if (cfg->relay_url && cfg->protocol == VEIL_CLIENT_PROTOCOL_V1)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "a relay carries protocol v2 only: with a relay "
                            "URL (veil: --relay) use protocol v2 or auto, "
                            "not v1; nothing was sent");
    /* No default server: a prompt goes only where the caller says. */
    if (cfg->base_url == NULL || cfg->base_url[0] == '\0')
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "no server URL: set base_url (veil: --url or "
                            "VEIL_URL); there is no default");
    return VEIL_CLIENT_OK;
}

/* Step 2: c->cfg with copies of the strings it borrows (the base URL
 * without trailing slashes), then the base URL checked.  The secrets are
 * step 3's. */
static veil_client_status
cfg_copy(veil_client *c, const veil_client_config *cfg, veil_client_error *err)
{
    const char *url = cfg->base_url;
    c->cfg = *cfg;
    if (!dup_str(url, &c->base_url) || !dup_str(cfg->ca_file, &c->ca_file) ||
        !dup_str(cfg->security_tier, &c->tier) ||
        !dup_str(cfg->key_ref, &c->key_ref) ||
        !dup_str(cfg->pkcs11_module, &c->module) ||
        !dup_str(cfg->pin.where, &c->pin_where) ||
        !dup_str(cfg->key_password.where, &c->pw_where) ||
        !dup_str(cfg->relay_url, &c->relay_url))
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
    c->cfg.relay_url = c->relay_url;
    /* a relay makes v2 necessary: auto never takes v1 around it */
    if (c->relay_url && c->cfg.protocol == VEIL_CLIENT_PROTOCOL_AUTO)
        c->cfg.protocol = VEIL_CLIENT_PROTOCOL_V2;
    c->cfg.api_key = NULL;
    c->cfg.server_key_pin = NULL;
    c->cfg.signing_key_pin = NULL;
    c->cfg.trust_file = NULL; /* open_trust loads it into c->trust */
    if (c->cfg.retry_max_ms == 0)
        c->cfg.retry_max_ms = 60000;
    c->log = (veil_logger){
        .fn = cfg->log, .ctx = cfg->log_ctx, .level = cfg->log_level};
    veil_client_status st = veil_cl_check_url(c, c->base_url, err);
    if (st != VEIL_CLIENT_OK || c->relay_url == NULL)
        return st;
    /* the relay: https, or http under the base URL's rule */
    char shown[512];
    veil_cl_redact_url(c->relay_url, shown, sizeof shown);
    if (!url_ok(c->relay_url, c->cfg.allow_http))
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "the relay URL must start with https://%s (%s); "
                            "nothing was sent",
                            strncmp(c->relay_url, "http://", 7)
                                ? ""
                                : " (http only where plain http is allowed, "
                                  "for local development)",
                            shown);
    return VEIL_CLIENT_OK;
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
    if (cfg->signing_key_pin) {
        const char *hex = cfg->signing_key_pin +
                          (strncmp(cfg->signing_key_pin, "sha256:", 7) ? 0 : 7);
        if (!parse_pin(cfg->signing_key_pin, c->sign_pin))
            return veil_cl_fail(err, st, 0, VEIL_E_ARG,
                                "signing_key_pin must be sha256: and 64 hex "
                                "digits");
        c->has_sign_pin = 1;
        snprintf(c->sign_pin_text, sizeof c->sign_pin_text, "sha256:%s", hex);
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

/* Whether veil_client_new opens the client key: always for v1, and under
 * auto a key in a token or a directory (so that a wrong PIN or path is
 * said at once); an ephemeral key under auto, and any key under v2, is
 * made or opened at its first use over v1 (veil_cl_own_key). */
static int key_now(const veil_client_config *cfg)
{
    return cfg->protocol == VEIL_CLIENT_PROTOCOL_V1 ||
           (cfg->protocol == VEIL_CLIENT_PROTOCOL_AUTO &&
            cfg->key_source != VEIL_CLIENT_KEY_EPHEMERAL);
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
        (key_now(&c->cfg) &&
         (st = veil_cl_load_key(c, &c->own, err)) != VEIL_CLIENT_OK)) {
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
    if (c->relay_url) {
        char shown[512];
        int http = !strncmp(c->relay_url, "http://", 7);
        veil_cl_redact_url(c->relay_url, shown, sizeof shown);
        veil_logf(&c->log, http ? VEIL_LOG_WARN : VEIL_LOG_INFO,
                  "protocol v2 through the relay %s%s", shown,
                  http ? " over plain http: local development only" : "");
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
        free(c->v2[i].url);
        memset(&c->v2[i], 0, sizeof c->v2[i]);
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
    free(c->relay_url);
    veil_trust_free(c->trust);
    free(c);
}

veil_client_status veil_cl_disposed(const veil_client *c,
                                    veil_client_error *err)
{
    if (c != NULL && !atomic_load(&c->disposed))
        return VEIL_CLIENT_OK;
    return veil_cl_fail(err, VEIL_CLIENT_E_DISPOSED, 0, 0,
                        "the client was disposed");
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
    veil_client_status st = veil_cl_disposed(c, err);
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
    veil_client_status st = veil_cl_disposed(c, err);
    veil_cl_keyref *k;
    if (st == VEIL_CLIENT_OK &&
        (st = veil_cl_own_key(c, &k, err)) == VEIL_CLIENT_OK)
        st = key_out(k, pem, fingerprint, err);
    return st;
}
