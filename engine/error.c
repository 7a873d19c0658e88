/* Errors (one thread-local record) and logging. */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

#include "engine_int.h"

static _Thread_local veil_error last_error;

static const char *const rc_names[] = {
    [VEIL_OK] = "VEIL_OK",
    [VEIL_E_ARG] = "VEIL_E_ARG",
    [VEIL_E_NOMEM] = "VEIL_E_NOMEM",
    [VEIL_E_UNSUPPORTED] = "VEIL_E_UNSUPPORTED",
    [VEIL_E_NOT_FOUND] = "VEIL_E_NOT_FOUND",
    [VEIL_E_AMBIGUOUS] = "VEIL_E_AMBIGUOUS",
    [VEIL_E_MODULE] = "VEIL_E_MODULE",
    [VEIL_E_PIN] = "VEIL_E_PIN",
    [VEIL_E_PIN_LOCKED] = "VEIL_E_PIN_LOCKED",
    [VEIL_E_PIN_REQUIRED] = "VEIL_E_PIN_REQUIRED",
    [VEIL_E_DECRYPT] = "VEIL_E_DECRYPT",
    [VEIL_E_VERIFY] = "VEIL_E_VERIFY",
    [VEIL_E_TOKEN] = "VEIL_E_TOKEN",
    [VEIL_E_CRYPTO] = "VEIL_E_CRYPTO",
    [VEIL_E_IO] = "VEIL_E_IO",
    [VEIL_E_EXISTS] = "VEIL_E_EXISTS",
    [VEIL_E_KEY] = "VEIL_E_KEY",
    [VEIL_E_BUFFER] = "VEIL_E_BUFFER",
    [VEIL_E_PROVIDER] = "VEIL_E_PROVIDER",
};

const char *veil_rc_name(veil_rc rc)
{
    if ((unsigned)rc < sizeof rc_names / sizeof rc_names[0] && rc_names[rc])
        return rc_names[rc];
    return "VEIL_E_UNKNOWN";
}

const veil_error *veil_last_error(void)
{
    return &last_error;
}

void veil_err_clear(void)
{
    memset(&last_error, 0, sizeof last_error);
}

static veil_rc err_set(veil_rc rc, const char *provider, const char *pcode,
                       const char *fmt, va_list ap)
{
    char what[256];

    vsnprintf(what, sizeof what, fmt, ap);
    last_error.code = rc;
    snprintf(last_error.provider, sizeof last_error.provider, "%s",
             provider ? provider : "engine");
    snprintf(last_error.provider_code, sizeof last_error.provider_code, "%s",
             pcode ? pcode : "");
    if (pcode && *pcode)
        snprintf(last_error.message, sizeof last_error.message, "%s: %s (%s)",
                 last_error.provider, what, pcode);
    else
        snprintf(last_error.message, sizeof last_error.message, "%s: %s",
                 last_error.provider, what);
    return rc;
}

veil_rc veil_err(veil_rc rc, const char *provider, const char *pcode,
                 const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    err_set(rc, provider, pcode, fmt, ap);
    va_end(ap);
    return rc;
}

veil_rc veil_err_ossl(veil_rc rc, const char *provider, const char *fmt, ...)
{
    char reason[48] = "";
    unsigned long code = ERR_peek_last_error();
    const char *r = code ? ERR_reason_error_string(code) : NULL;
    va_list ap;

    if (r)
        snprintf(reason, sizeof reason, "%s", r);
    ERR_clear_error();
    va_start(ap, fmt);
    err_set(rc, provider, reason[0] ? reason : NULL, fmt, ap);
    va_end(ap);
    return rc;
}

void veil_log(const veil_engine *e, veil_log_level level, const char *fmt, ...)
{
    char line[512];
    va_list ap;

    if (!e)
        return;
    veil_logger l = {
        .fn = e->cfg.log, .ctx = e->cfg.log_ctx, .level = e->cfg.log_level};
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    veil_logf(&l, level, "%s", line);
}
