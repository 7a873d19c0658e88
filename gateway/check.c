/* gateway/check.c: every file a configuration names, checked at once
 * (gateway.h, gw_config_check_files): what `veild --check-config` lists,
 * and what a start refuses before it opens anything, so that a missing
 * backend key file is found at start and not at the first request.
 * Tokens are never opened here (no PIN is tried). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gateway.h"
#include "http.h"

typedef struct checker {
    void (*report)(void *ctx, const char *problem);
    void *ctx;
    unsigned n;
} checker;

static void bad(checker *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void bad(checker *c, const char *fmt, ...)
{
    char msg[600];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    c->n++;
    if (c->report)
        c->report(c->ctx, msg);
}

/* A regular file that can be opened for reading (a systemd credential
 * too). */
static void readable(checker *c, const char *setting, const char *spec)
{
    char path[4096];
    const char *why = NULL;
    struct stat st;
    int fd;

    if (veil_secret_path(spec, path, sizeof path, &why) != 0) {
        bad(c, "%s %s: %s", setting, spec, why);
        return;
    }
    if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)) < 0) {
        bad(c, "%s %s: %s", setting, path, strerror(errno));
        return;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        bad(c, "%s %s: not a regular file", setting, path);
    close(fd);
}

/* A PIN source that names a file or a variable: there and usable (the PIN
 * is read into a secret buffer and dropped at once). */
static void pin_source(checker *c, const char *setting, const char *spec)
{
    veil_pin_source ps;
    veil_secbuf *pin = NULL;

    if (spec == NULL || veil_pin_source_parse(spec, &ps) != VEIL_OK ||
        ps.kind == VEIL_PIN_PROMPT || ps.kind == VEIL_PIN_NONE)
        return; /* the syntax was checked with the settings */
    if (veil_pin_read(&ps, NULL, &pin) != VEIL_OK)
        bad(c, "%s: %s", setting, veil_last_error()->message);
    veil_secbuf_free(pin);
}

unsigned gw_config_check_files(const gw_config *cfg, int with_secrets,
                               void (*report)(void *ctx, const char *problem),
                               void *ctx)
{
    checker c = {report, ctx, 0};
    char err[512];

    if (cfg->api_keys) {
        gw_auth *a = gw_auth_load(cfg->api_keys, err, sizeof err);
        if (a == NULL)
            bad(&c, "api_keys: %s", err);
        else if (cfg->operator_keys &&
                 gw_auth_set_operators(a, cfg->operator_keys, err,
                                       sizeof err) != 0)
            bad(&c, "%s", err); /* it names operator_keys */
        gw_auth_free(a);
    }
    for (size_t i = 0; i < cfg->n_models; i++)
        if (cfg->models[i].upstream_key_file) {
            char what[300];
            snprintf(what, sizeof what, "model %s: upstream_key_file",
                     cfg->models[i].id);
            readable(&c, what, cfg->models[i].upstream_key_file);
        }
    if (cfg->tls_cert && cfg->tls_key &&
        svc_http_check_tls(cfg->tls_cert, cfg->tls_key, err, sizeof err) != 0)
        bad(&c, "%s", err);
    if (cfg->tpm_certify_key)
        readable(&c, "tpm_certify_key", cfg->tpm_certify_key);
    if (cfg->tpm_event_log)
        readable(&c, "tpm_event_log", cfg->tpm_event_log);
    if (with_secrets) {
        pin_source(&c, "pin_source", cfg->pin_source);
        pin_source(&c, "tpm_certify_key_auth", cfg->tpm_certify_key_auth);
    }
    return c.n;
}
