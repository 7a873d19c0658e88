/* veild: the veil gateway.  Publishes the server's public key and its
 * protocol v2 key configurations, opens each NOMYO v1 request (or
 * Oblivious HTTP request) inside the token that holds the private key,
 * forwards the plaintext to an OpenAI-compatible inference server, and
 * seals the answer to the caller's key (or the request's HPKE context).
 * See docs/GATEWAY.md, docs/PROTOCOL-V2.md and veild(8). */
#include "config.h"

#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "backend.h"
#include "exitcode.h"
#include "toolenv.h"
#include "gateway.h"
#include "log.h"
#include "notify.h"
#include "package.h"
#include "run.h"

static const char usage[] =
    "usage: veild [--config FILE] [--SETTING VALUE]...\n"
    "\n"
    "The veil gateway: end-to-end encrypted chat completions (NOMYO v1\n"
    "protocol, and protocol v2: Oblivious HTTP) with the server's private\n"
    "key in a PKCS#11 token.\n"
    "\n"
    "  --config FILE   read settings from FILE (format: docs/GATEWAY.md);\n"
    "                  flags override it wherever they stand\n"
    "  --check-config  check the settings and every file they name (API\n"
    "                  keys, backend keys, TLS pair, PIN files), list every\n"
    "                  problem, exit 0 or 2; no token is opened\n"
    "  -h, --help      this help\n"
    "  --version       print the version\n"
    "\n"
    "Exit codes (as in veil and veil-keys): 0 stopped cleanly, 1 start-up\n"
    "failed (a restart may help), 2 usage or configuration,\n"
    "3 token or key not found, 4 PIN wrong, locked, missing or unreadable\n"
    "(a PIN the token rejected is remembered in state_dir and not tried\n"
    "again), 5 module or token failure. Under systemd:\n"
    "RestartPreventExitStatus=2 3 4.\n"
    "\n"
    "SIGHUP reloads the config file, flags, API keys, models and TLS\n"
    "certificate (settings that need a restart are logged and kept);\n"
    "SIGTERM and SIGINT stop gracefully.\n"
    "\n";

/* Where the lines go: standard error, at log_level, in log_format (a
 * reload may change both; service/log.h).  The parts of veild are given
 * VEIL_LOG_DEBUG and everything is filtered there. */
static svc_logsink sink;

/* veild's own lines */
static const veil_logger logger = {svc_logsink_line, &sink, VEIL_LOG_DEBUG,
                                   svc_logsink_fields};

/* Reads the config file named by --config first, then applies every flag
 * in order, then checks the whole.  0, or -1 with the problem in err (the
 * file and line, or the flag).  At start-up and at every reload. */
static int read_settings(int argc, char **argv, gw_config *cfg, char *err,
                         size_t err_size)
{
    for (int i = 1; i < argc; i++) {
        const char *file = NULL;
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc) {
                snprintf(err, err_size, "--config needs a file");
                return -1;
            }
            file = argv[i + 1];
        } else if (!strncmp(argv[i], "--config=", 9)) {
            file = argv[i] + 9;
        }
        if (file && gw_config_load(cfg, file, err, err_size) != GW_OK)
            return -1;
    }
    /* the environment of all three tools (engine/toolenv.h): over the
     * file, under the flags */
    static const struct {
        veil_env_id id;
        const char *setting;
    } from_env[] = {{VEIL_ENV_MODULE, "module"},
                    {VEIL_ENV_PIN_SOURCE, "pin_source"}};
    for (size_t i = 0; i < sizeof from_env / sizeof from_env[0]; i++) {
        const char *v = veil_env(from_env[i].id);
        char why[400];

        if (v &&
            gw_config_set(cfg, from_env[i].setting, v, why, sizeof why) != 0) {
            snprintf(err, err_size, "%s in the environment: %s",
                     veil_env_vars[from_env[i].id].name, why);
            return -1;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--config")) {
            i++;
            continue;
        }
        if (!strncmp(a, "--config=", 9))
            continue;
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            snprintf(err, err_size, "unexpected argument '%s' (see --help)", a);
            return -1;
        }
        char name[64];
        const char *value;
        const char *eq = strchr(a, '=');
        if (eq) {
            snprintf(name, sizeof name, "%.*s", (int)(eq - a - 2), a + 2);
            value = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", a + 2);
            if (i + 1 >= argc) {
                snprintf(err, err_size, "%s needs a value", a);
                return -1;
            }
            value = argv[++i];
        }
        if (gw_config_set(cfg, name, value, err, err_size) != 0)
            return -1;
    }
    return gw_config_check(cfg, err, err_size);
}

/* The settings at start-up: 0, or 2 (printed: a usage error). */
static int parse_args(int argc, char **argv, gw_config *cfg)
{
    char err[512];

    if (read_settings(argc, argv, cfg, err, sizeof err) != 0) {
        fprintf(stderr, "veild: %s\n", err);
        return 2;
    }
    return 0;
}

static int write_port_file(const char *path, unsigned port)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return -1;
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return -1;
    int ok = fprintf(f, "%u\n", port) > 0;
    ok &= fclose(f) == 0;
    return ok && rename(tmp, path) == 0 ? 0 : -1;
}

/* Opens the server key: an RSA private key of 2048 bits or more.  NULL
 * (logged) with *code the exit code (engine/exitcode.h). */
static veil_key *open_server_key(veil_engine *e, const gw_config *cfg,
                                 int *code)
{
    veil_key *k = NULL;
    veil_key_info info;
    if (veil_key_open(e, cfg->server_key, &k) != VEIL_OK) {
        veil_logf(&logger, VEIL_LOG_ERROR, "server key %s: %s", cfg->server_key,
                  veil_last_error()->message);
        *code = veil_exit_for(veil_last_error());
        return NULL;
    }
    *code = VEIL_EXIT_USAGE; /* the wrong kind of key: configuration */
    if (veil_key_get_info(k, &info) != VEIL_OK || info.type != VEIL_KEY_RSA ||
        info.bits < VEIL_PKG_MIN_RSA_BITS || !info.has_private) {
        veil_logf(
            &logger, VEIL_LOG_ERROR,
            "server key %s must be an RSA private key of at least %u bits",
            cfg->server_key, VEIL_PKG_MIN_RSA_BITS);
        veil_key_free(k);
        return NULL;
    }
    veil_logf(&logger, VEIL_LOG_INFO, "server key: %s RSA-%u %s%s%s",
              info.provider, info.bits, info.fingerprint,
              info.sensitive == 1 ? ", sensitive" : "",
              info.extractable == 0 ? ", not extractable" : "");
    return k;
}

/* Opens the answer-signing key: an ECDSA P-256 private key, on the same
 * engine (token, PIN) as the server key.  NULL (logged) with *code. */
static veil_key *open_signing_key(veil_engine *e, const gw_config *cfg,
                                  int *code)
{
    veil_key *k = NULL;
    veil_key_info info;

    if (veil_key_open(e, cfg->signing_key, &k) != VEIL_OK) {
        veil_logf(&logger, VEIL_LOG_ERROR, "signing key %s: %s",
                  cfg->signing_key, veil_last_error()->message);
        *code = veil_exit_for(veil_last_error());
        return NULL;
    }
    *code = VEIL_EXIT_USAGE; /* the wrong kind of key: configuration */
    if (veil_key_get_info(k, &info) != VEIL_OK ||
        info.type != VEIL_KEY_EC_P256 || !info.has_private) {
        veil_logf(&logger, VEIL_LOG_ERROR,
                  "signing key %s must be an EC P-256 private key",
                  cfg->signing_key);
        veil_key_free(k);
        return NULL;
    }
    veil_logf(&logger, VEIL_LOG_INFO, "signing key: %s EC-P256 %s%s%s",
              info.provider, info.fingerprint,
              info.sensitive == 1 ? ", sensitive" : "",
              info.extractable == 0 ? ", not extractable" : "");
    return k;
}

/* Opens the TPM for attestation; NULL (logged) when it cannot be used. */
static gw_tpm *open_tpm(const gw_config *cfg, veil_key *server_key)
{
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    char err[512];
    gw_tpm *t;

    if (veil_key_public_der(server_key, &spki, &spki_len) != VEIL_OK) {
        veil_logf(&logger, VEIL_LOG_ERROR, "server key: %s",
                  veil_last_error()->message);
        return NULL;
    }
    gw_tpm_options opt = {
        .tcti = cfg->tpm_tcti,
        .pcrs = cfg->tpm_pcrs,
        .ak_per_request = cfg->tpm_ak_per_request,
        .state_dir = cfg->state_dir,
        .ak_rotate = cfg->tpm_ak_rotate,
        .tss2_key = cfg->tpm_certify_key,
        .tss2_key_auth = cfg->tpm_certify_key_auth,
        .event_log = cfg->tpm_event_log,
        .encryption_spki = spki,
        .encryption_spki_len = spki_len,
        .test_delay_ms = cfg->tpm_test_delay,
        .log = svc_logsink_line,
        .log_ctx = &sink,
        .log_level = VEIL_LOG_DEBUG,
    };
    gw_rc rc = gw_tpm_open(&opt, &t, err, sizeof err);
    free(spki);
    if (rc != GW_OK) {
        veil_logf(&logger, VEIL_LOG_ERROR,
                  "tpm = on, but the TPM cannot be used: %s", err);
        return NULL;
    }
    veil_logf(&logger, VEIL_LOG_INFO,
              "TPM: %s; quotes of %s%s%s; %u TPM operation%s at once, "
              "%u more may wait (at most %u s each)",
              gw_tpm_describe(t), cfg->tpm_pcrs,
              cfg->tpm_ak_per_request ? ", a fresh AK per answer" : "",
              cfg->tpm_certify_key ? ", the server key certified" : "",
              cfg->tpm_workers, cfg->tpm_workers == 1 ? "" : "s",
              cfg->tpm_queue, cfg->tpm_queue_wait);
    if (cfg->tpm_test_delay)
        veil_logf(&logger, VEIL_LOG_WARN,
                  "tpm_test_delay = %u: every TPM operation takes %u ms "
                  "longer (a test stand-in for a slow TPM; never in "
                  "production)",
                  cfg->tpm_test_delay, cfg->tpm_test_delay);
    if (gw_tpm_is_software(t))
        veil_logf(
            &logger, VEIL_LOG_WARN,
            "the TPM is a software TPM (%s, which says so of itself): its "
            "attestation proves nothing about this machine; use it only "
            "for testing",
            gw_tpm_describe(t));
    return t;
}

static int any_model_on(const gw_config *cfg, unsigned tier)
{
    for (size_t i = 0; i < cfg->n_models; i++)
        if (cfg->models[i].tiers & tier)
            return 1;
    return 0;
}

static int loopback(const char *addr)
{
    return !strcmp(addr, "127.0.0.1") || !strcmp(addr, "::1") ||
           !strncmp(addr, "127.", 4);
}

/* 1 when the first certificate of the PEM file cert holds k's public
 * key. */
static int cert_holds_key(const char *cert, const veil_key *k)
{
    FILE *f = fopen(cert, "r");
    X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    unsigned char *der = NULL;
    uint8_t *kder = NULL;
    size_t klen = 0;
    int len = x ? i2d_PUBKEY(X509_get0_pubkey(x), &der) : -1;
    int same = len > 0 && veil_key_public_der(k, &kder, &klen) == VEIL_OK &&
               klen == (size_t)len && memcmp(der, kder, klen) == 0;

    if (f)
        fclose(f);
    X509_free(x);
    OPENSSL_free(der);
    free(kder);
    return same;
}

/* A TLS key in a token (tls_key = pkcs11:...) is opened once through the
 * engine before GnuTLS opens it for the handshakes: a wrong URI or PIN
 * stops the start with the engine's exit code (3, 4) and message naming
 * tls_key, and the engine's memory of rejected PINs keeps GnuTLS from
 * ever being handed one.  0, or the exit code (logged). */
static int open_tls_key(veil_engine *e, const gw_config *cfg)
{
    veil_key *k = NULL;
    veil_key_info info;

    if (!cfg->tls_key || strncmp(cfg->tls_key, "pkcs11:", 7) != 0)
        return 0;
    if (veil_key_open(e, cfg->tls_key, &k) != VEIL_OK) {
        veil_logf(&logger, VEIL_LOG_ERROR, "tls_key %s: %s", cfg->tls_key,
                  veil_last_error()->message);
        return veil_exit_for(veil_last_error());
    }
    int usable = veil_key_get_info(k, &info) == VEIL_OK && info.has_private;
    int matches = usable && cert_holds_key(cfg->tls_cert, k);
    veil_key_free(k);
    if (!usable) {
        veil_logf(&logger, VEIL_LOG_ERROR,
                  "tls_key %s: not a private key in the token", cfg->tls_key);
        return VEIL_EXIT_USAGE;
    }
    if (!matches) {
        veil_logf(&logger, VEIL_LOG_ERROR,
                  "tls_key %s is not the key of the certificate in tls_cert "
                  "%s (the first certificate of the file must be the "
                  "server's)",
                  cfg->tls_key, cfg->tls_cert);
        return VEIL_EXIT_USAGE;
    }
    veil_logf(&logger, VEIL_LOG_INFO, "TLS key: in the token, %s %s",
              info.type == VEIL_KEY_RSA ? "RSA" : "EC-P256", info.fingerprint);
    return 0;
}

/* Opens the engine and the keys (server key, signing key and its store,
 * the TPM) into d.  0, or the exit code (logged; engine/exitcode.h: a
 * wrong PIN is 4, a token or key not found 3).  A PIN a token rejected
 * is remembered in state_dir and never sent to that token again. */
static int open_keys(gw_deps *d, const gw_config *cfg)
{
    char err[512];
    int code = VEIL_EXIT_FAIL;
    veil_engine_config ec = {
        .pkcs11_module = cfg->pkcs11_module,
        .log = svc_logsink_line,
        .log_ctx = &sink,
        .log_level = VEIL_LOG_DEBUG,
        .pin_memory_dir = cfg->state_dir,
    };
    if (gw_state_dir(cfg->state_dir, err, sizeof err) != 0) {
        veil_logf(&logger, VEIL_LOG_ERROR, "%s", err);
        return VEIL_EXIT_FAIL;
    }
    if (cfg->pin_source &&
        veil_pin_source_parse(cfg->pin_source, &ec.pin) != VEIL_OK) {
        veil_logf(&logger, VEIL_LOG_ERROR, "pin_source: %s",
                  veil_last_error()->message);
        return VEIL_EXIT_USAGE;
    }
    if (veil_engine_new(&ec, &d->engine) != VEIL_OK) {
        veil_logf(&logger, VEIL_LOG_ERROR, "engine: %s",
                  veil_last_error()->message);
        return veil_exit_for(veil_last_error());
    }
    /* before any other thread: every key operation timed (GET /metrics) */
    if ((d->metrics = gw_metrics_new()) == NULL) {
        veil_logf(&logger, VEIL_LOG_ERROR, "out of memory");
        return VEIL_EXIT_FAIL;
    }
    veil_engine_set_observer(d->engine, gw_metrics_engine_op, d->metrics);
    if ((d->server_key = open_server_key(d->engine, cfg, &code)) == NULL)
        return code;
    if (cfg->signing_key &&
        (d->signing_key = open_signing_key(d->engine, cfg, &code)) == NULL)
        return code;
    if (cfg->server_key_next &&
        gw_next_key_open(d->engine, cfg->server_key_next, d->server_key,
                         &d->server_key_next, &code, err,
                         sizeof err) != GW_OK) {
        veil_logf(&logger, VEIL_LOG_ERROR, "%s", err);
        return code;
    }
    if (d->server_key_next)
        veil_logf(&logger, VEIL_LOG_INFO,
                  "next server key: %s (opens requests too; served at "
                  "/pki/next_public_key)",
                  d->server_key_next->pin);
    if (veil_key_fingerprint(d->server_key, d->encryption_key_sha256) !=
            VEIL_OK ||
        (d->signing_key &&
         veil_key_fingerprint(d->signing_key, d->signing_key_sha256) !=
             VEIL_OK)) {
        veil_logf(&logger, VEIL_LOG_ERROR, "key hash: %s",
                  veil_last_error()->message);
        return VEIL_EXIT_FAIL;
    }
    if (d->signing_key &&
        (d->signlog = gw_signlog_new(cfg->signature_retention,
                                     cfg->signature_capacity)) == NULL) {
        veil_logf(&logger, VEIL_LOG_ERROR, "out of memory");
        return VEIL_EXIT_FAIL;
    }
    if (cfg->tpm && (d->tpm = open_tpm(cfg, d->server_key)) == NULL)
        return VEIL_EXIT_FAIL;
    return open_tls_key(d->engine, cfg);
}

/* Opens the API keys, the replay register and the rate limits into d.
 * 0, or an exit code (logged): VEIL_EXIT_USAGE for what a restart would
 * not cure (an API keys file that cannot be used, operator_keys naming no
 * key of it, a replay register that conflicts with the settings). */
static int open_state(gw_deps *d, const gw_config *cfg)
{
    char err[512];
    int conflict = 0;

    if (cfg->api_keys &&
        (d->auth = gw_auth_load(cfg->api_keys, err, sizeof err)) == NULL) {
        veil_logf(&logger, VEIL_LOG_ERROR, "api_keys: %s", err);
        return VEIL_EXIT_USAGE;
    }
    if (cfg->audit_log && gw_audit_open(cfg->audit_log, cfg->audit_fsync,
                                        &d->audit, err, sizeof err) != GW_OK) {
        veil_logf(&logger, VEIL_LOG_ERROR, "%s", err);
        return VEIL_EXIT_USAGE;
    }
    if (cfg->operator_keys && gw_auth_set_operators(d->auth, cfg->operator_keys,
                                                    err, sizeof err) != 0) {
        veil_logf(&logger, VEIL_LOG_ERROR, "%s", err);
        return VEIL_EXIT_USAGE;
    }
    if (gw_state_dir(cfg->state_dir, err, sizeof err) != 0 ||
        (d->strikes = gw_strikes_open(cfg->state_dir, cfg->replay_window,
                                      cfg->replay_capacity, cfg->replay_sync,
                                      &conflict, err, sizeof err)) == NULL) {
        veil_logf(&logger, VEIL_LOG_ERROR, "replay register: %s", err);
        return conflict ? VEIL_EXIT_USAGE : -1;
    }
    if ((d->rate = gw_rate_new(cfg->rate, cfg->burst, 65536)) == NULL) {
        veil_logf(&logger, VEIL_LOG_ERROR, "out of memory");
        return -1;
    }
    if (cfg->v2 && cfg->kem_x25519 && strcmp(cfg->kem_keys, "auto") == 0 &&
        gw_kem_token_derives(d->engine, cfg->server_key)) {
        veil_logf(&logger, VEIL_LOG_ERROR,
                  "kem_x25519 = on needs the KEM keys in software, and with "
                  "kem_keys = auto they are made in the server key's token: "
                  "an X25519 key would be a software key beside them; set "
                  "kem_x25519 = off, or kem_keys = software");
        return VEIL_EXIT_USAGE;
    }
    if (cfg->v2 && strcmp(cfg->kem_keys, "tpm") == 0)
        gw_tpm_lend(d->tpm, d->engine); /* tpm = on (gw_config_check) */
    if (cfg->v2 &&
        (d->kem =
             strcmp(cfg->kem_keys, "tpm") == 0
                 ? gw_kem_open_tpm(d->engine, d->tpm, cfg->kem_rotate,
                                   cfg->kem_grace, &logger, err, sizeof err)
                 : gw_kem_open(d->engine,
                               strcmp(cfg->kem_keys, "software") == 0
                                   ? "software"
                                   : cfg->server_key,
                               cfg->kem_x25519, cfg->kem_rotate, cfg->kem_grace,
                               &logger, err, sizeof err)) == NULL) {
        veil_logf(&logger, VEIL_LOG_ERROR, "%s", err);
        return -1;
    }
    return 0;
}

static void close_deps(gw_deps *d)
{
    gw_upstream_cleanup();
    gw_kem_free(d->kem);
    gw_rate_free(d->rate);
    gw_strikes_free(d->strikes);
    gw_auth_free(d->auth);
    if (d->tpm) /* the KEM keys are gone: the TPM connection goes too */
        gw_tpm_lend(NULL, d->engine);
    gw_tpm_free(d->tpm);
    gw_signlog_free(d->signlog);
    veil_key_free(d->signing_key);
    gw_next_key_free(d->server_key_next);
    veil_key_free(d->server_key);
    veil_engine_free(d->engine);
    gw_audit_free(d->audit);
    gw_metrics_free(d->metrics); /* after the engine: its observer */
}

/* What maximum does with each model's backend (backend_stmt.c): a
 * model allowed on maximum whose backend is off this host is refused
 * there, or (tpm_remote_https) stated as remote.  One line per such model
 * to note(ctx, line). */
static void backend_notes(const gw_config *cfg,
                          void (*note)(void *ctx, const char *line), void *ctx)
{
    for (size_t i = 0; i < cfg->n_models; i++) {
        const gw_model *m = &cfg->models[i];
        char stmt[VEIL_BACKEND_STATEMENT_MAX], why[512], line[700];

        if (!(m->tiers & VEIL_TIER_MAXIMUM))
            continue;
        if (gw_backend_statement(cfg, m, stmt, sizeof stmt, why, sizeof why) !=
            GW_OK)
            snprintf(line, sizeof line, "%s: maximum requests answer 403", why);
        else if (!veil_backend_on_host(veil_backend_classify(m->upstream)))
            snprintf(line, sizeof line,
                     "model '%.200s' on maximum: its backend is on another "
                     "host (tpm_remote_https); its quotes say so",
                     m->id);
        else
            continue;
        note(ctx, line);
    }
}

static void log_note(void *ctx, const char *line)
{
    (void)ctx;
    veil_logf(&logger, VEIL_LOG_WARN, "%s", line);
}

/* What the gateway runs with, once it listens. */
static void log_started(const gw_deps *d, unsigned port)
{
    const gw_config *cfg = d->cfg;
    veil_memory_status mem;
    int v6 = strchr(cfg->listen_addr, ':') != NULL;

    veil_memory_status_get(&mem);
    veil_logf(&logger, VEIL_LOG_INFO,
              "listening on %s://%s%s%s:%u; %zu model(s); memory: locking %s, "
              "core dumps %s; replay register %zu KiB",
              cfg->tls_cert ? "https" : "http", v6 ? "[" : "", cfg->listen_addr,
              v6 ? "]" : "", port, cfg->n_models, mem.locking ? "on" : "OFF",
              mem.core_dumps_off ? "off" : "ON",
              gw_strikes_bytes(d->strikes) / 1024);
    if (!d->auth)
        veil_logf(&logger, VEIL_LOG_WARN,
                  "no api_keys file: authentication is off");
    else
        veil_logf(&logger, VEIL_LOG_INFO, "%zu API key(s) loaded",
                  gw_auth_count(d->auth));
    if (!d->signing_key)
        veil_logf(&logger, VEIL_LOG_INFO,
                  "no signing_key: answers are not signed");
    if (!d->tpm && any_model_on(cfg, VEIL_TIER_MAXIMUM))
        veil_logf(&logger, VEIL_LOG_INFO,
                  "tpm is off: maximum-tier requests answer 503");
    if (d->tpm)
        backend_notes(cfg, log_note, NULL);
    if (!cfg->tls_cert && !loopback(cfg->listen_addr))
        veil_logf(&logger, VEIL_LOG_WARN,
                  "plain http on %s: put TLS in front (tls_cert, "
                  "tls_key, or a reverse proxy)",
                  cfg->listen_addr);
}

/* A setting of the file that a reload cannot change. */
static void needs_restart(void *ctx, const char *name)
{
    (void)ctx;
    veil_logf(&logger, VEIL_LOG_WARN,
              "reload: %s changed, which needs a restart; the running value "
              "stays",
              name);
}

/* SIGHUP: the config file, the flags, the API keys and the TLS
 * certificate read again into a new live configuration, which new
 * requests get; requests in flight keep theirs.  Anything that does not
 * load leaves the running configuration as it is (logged).  Settings
 * that need a restart keep their running values (logged). */
static void reload(gw_server *server, const gw_deps *d, int argc, char **argv)
{
    const gw_config *running = d->cfg;
    int code;
    char err[512];
    gw_live *next = gw_live_new();

    veil_logf(&logger, VEIL_LOG_INFO, "SIGHUP: reloading the configuration");
    svc_notify_reloading();
    /* first, and whatever comes of the rest: a log rotation's SIGHUP must
     * not leave the audit log in the moved file because an edit of the
     * configuration does not load */
    gw_server_reopen_logs(server);
    if (next == NULL) {
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }
    if (read_settings(argc, argv, next->cfg, err, sizeof err) != 0)
        goto fail;
    /* compared with the settings veild runs on: those a reload never
     * changes are the ones it started with */
    if (gw_config_keep_fixed(running, next->cfg, needs_restart, NULL) < 0) {
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }
    if (next->cfg->api_keys) {
        char why[400];

        if ((next->auth = gw_auth_load(next->cfg->api_keys, why, sizeof why)) ==
            NULL) {
            snprintf(err, sizeof err, "api_keys: %s", why);
            goto fail;
        }
    }
    /* the next server key, opened again (on the token login veild has) */
    if (next->cfg->server_key_next &&
        gw_next_key_open(d->engine, next->cfg->server_key_next, d->server_key,
                         &next->next, &code, err, sizeof err) != GW_OK)
        goto fail;
    /* operator rights are named in the settings and given to the keys of
     * the file just read */
    if (next->cfg->operator_keys &&
        gw_auth_set_operators(next->auth, next->cfg->operator_keys, err,
                              sizeof err) != 0)
        goto fail;
    if (gw_server_reload(server, next, err, sizeof err) != 0)
        goto fail;
    svc_logsink_set(&sink, next->cfg->log_level, next->cfg->log_format);
    veil_logf(&logger, VEIL_LOG_INFO,
              "reloaded: %zu model(s), %s%s; requests in flight finish on "
              "the configuration they started with",
              next->cfg->n_models,
              next->auth ? "API keys on" : "no api_keys: authentication off",
              next->cfg->tls_cert ? ", TLS certificate read again" : "");
    if (next->auth)
        veil_logf(&logger, VEIL_LOG_INFO, "%zu API key(s) loaded",
                  gw_auth_count(next->auth));
    veil_logf(&logger, VEIL_LOG_INFO, "next server key: %s",
              next->next ? next->next->pin : "none");
    svc_notify_ready("serving; configuration reloaded");
    return;
fail:
    veil_logf(&logger, VEIL_LOG_ERROR,
              "reload failed: %s; the running configuration stays", err);
    svc_notify_ready("serving; the last reload failed (see the log), the "
                     "running configuration stays");
    gw_live_release(next);
}

/* Serves until a stop signal (a SIGHUP reloads), then stops gracefully.
 * 0, or 1 (logged). */
static int serve(gw_deps *d, svc_run *run, int argc, char **argv)
{
    const gw_config *cfg = d->cfg;
    char err[512];
    gw_server *server = gw_server_start(d, err, sizeof err);

    if (server == NULL) {
        veil_logf(&logger, VEIL_LOG_ERROR, "%s", err);
        return 1;
    }
    unsigned port = gw_server_port(server);
    log_started(d, port);
    if (cfg->port_file && write_port_file(cfg->port_file, port) != 0) {
        veil_logf(&logger, VEIL_LOG_ERROR, "cannot write %s: %s",
                  cfg->port_file, strerror(errno));
        gw_server_stop(server, 0);
        return 1;
    }
    char status[160];
    snprintf(status, sizeof status, "serving on %s port %u",
             cfg->tls_cert ? "https" : "http", port);
    svc_notify_ready(status);
    int sig;
    while ((sig = svc_run_wait(run)) == SIGHUP)
        reload(server, d, argc, argv);
    gw_live *live = gw_server_live(server);
    unsigned grace = live ? live->cfg->shutdown_grace : cfg->shutdown_grace;
    gw_live_release(live);
    veil_logf(&logger, VEIL_LOG_INFO,
              "%s: stopping (requests in flight get at most %u s)",
              svc_run_signal_name(sig), grace);
    svc_notify_stopping();
    unsigned cut = gw_server_stop(server, grace);
    if (cut)
        veil_logf(&logger, VEIL_LOG_WARN, "%u request(s) cut off at shutdown",
                  cut);
    veil_logf(&logger, VEIL_LOG_INFO, "stopped");
    return 0;
}

/* Prints one problem of --check-config (or of a start). */
static void print_problem(void *ctx, const char *problem)
{
    fprintf(stderr, "veild: %s%s\n", ctx ? (const char *)ctx : "", problem);
}

/* veild --check-config: the settings (every problem of a config file
 * at once), then every file they name (the PIN sources read too, no
 * token opened).  0 when all is well, else 2. */
static int check_config(int argc, char **argv, gw_config *cfg)
{
    char err[4096];
    unsigned n;

    if (read_settings(argc, argv, cfg, err, sizeof err) != 0) {
        char *save = NULL;
        for (char *line = strtok_r(err, "\n", &save); line;
             line = strtok_r(NULL, "\n", &save))
            print_problem("check: ", line);
        return VEIL_EXIT_USAGE;
    }
    n = gw_config_check_files(cfg, 1, print_problem, "check: ");
    if (n) {
        fprintf(stderr, "veild: check: %u problem(s)\n", n);
        return VEIL_EXIT_USAGE;
    }
    printf("veild: configuration OK: %zu model(s)%s%s (tokens were not "
           "opened)\n",
           cfg->n_models, cfg->api_keys ? ", API keys" : "",
           cfg->tls_cert ? ", TLS" : "");
    if (cfg->tpm)
        backend_notes(cfg, print_problem, "check: note: ");
    return 0;
}

/* -h/--help or --version anywhere: printed, and 1. */
static int help_or_version(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(usage, stdout);
            if (svc_notify_built())
                fputs("Under systemd (Type=notify) veild reports READY=1, "
                      "RELOADING=1 and STOPPING=1\n(sd_notify).\n\n",
                      stdout);
            gw_config_help(stdout);
            veil_env_help(stdout, VEIL_TOOL_VEILD);
            return 1;
        }
        if (!strcmp(argv[i], "--version")) {
            printf("veild %s\n", PACKAGE_VERSION);
            return 1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    /* Large buffers (request bodies, answers) straight from mmap and back
     * to the system when freed: otherwise glibc keeps them in one arena per
     * thread, and 64 concurrent 1 MiB requests held ~290 MiB (BENCHMARKS). */
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    svc_logsink_init(&sink, "veild", STDERR_FILENO);
    gw_config cfg;
    gw_config_init(&cfg);
    if (help_or_version(argc, argv)) {
        gw_config_free(&cfg);
        return 0;
    }
    /* --check-config anywhere: check and exit, nothing started */
    int check = 0, n = 0;
    for (int i = 0; i < argc; i++) {
        if (i > 0 && !strcmp(argv[i], "--check-config"))
            check = 1;
        else
            argv[n++] = argv[i];
    }
    argc = n;
    if (check) {
        int crc = check_config(argc, argv, &cfg);
        gw_config_free(&cfg);
        return crc;
    }
    int rc = parse_args(argc, argv, &cfg);
    if (rc == 0 && gw_config_check_files(&cfg, 0, print_problem, NULL) != 0)
        rc = VEIL_EXIT_USAGE;
    if (rc != 0) {
        gw_config_free(&cfg);
        return rc;
    }
    svc_logsink_set(&sink, cfg.log_level, cfg.log_format);

    /* before any thread: the stop signals go to svc_run_wait only */
    svc_run run;
    svc_run_init(&run);
    if (veil_disable_core_dumps() != VEIL_OK)
        veil_logf(&logger, VEIL_LOG_WARN,
                  "core dumps could not be turned off: %s",
                  veil_last_error()->message);

    gw_deps deps = {
        .cfg = &cfg,
        .log = svc_logsink_line,
        .log_ctx = &sink,
        .log_level = VEIL_LOG_DEBUG,
        .log_fields = svc_logsink_fields,
    };
    rc = open_keys(&deps, &cfg);
    if (rc == 0)
        rc = open_state(&deps, &cfg);
    if (rc == 0)
        rc = serve(&deps, &run, argc, argv);
    else if (rc < 0)
        rc = VEIL_EXIT_FAIL;
    close_deps(&deps);
    gw_config_free(&cfg);
    return rc;
}
