/* The helpers every layer shares (engine/util.h). */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "util.h"

void veil_wipe(void *p, size_t len)
{
    if (p && len)
        OPENSSL_cleanse(p, len);
}

void veil_hex(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

int veil_hex_digit(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int veil_hex_decode(const char *s, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i++) {
        int hi = veil_hex_digit((unsigned char)s[2 * i]);
        int lo = hi < 0 ? -1 : veil_hex_digit((unsigned char)s[2 * i + 1]);
        if (lo < 0)
            return 0;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 1;
}

veil_rc veil_uuid4(veil_engine *e, char out[37])
{
    uint8_t b[16];
    veil_rc rc = veil_random(e, b, sizeof b);
    if (rc != VEIL_OK)
        return rc;
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    char hex[33];
    veil_hex(b, sizeof b, hex);
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12,
             hex + 16, hex + 20);
    return VEIL_OK;
}

/* Formats one line and hands it to the logger, with its fields when the
 * logger takes them (fields NULL: a plain line). */
static void vlog(const veil_logger *l, veil_log_level level,
                 const veil_log_field *fields, size_t n, const char *fmt,
                 va_list ap)
{
    char line[512];

    if (l == NULL || l->fn == NULL || level > l->level)
        return;
    vsnprintf(line, sizeof line, fmt, ap);
    if (fields && l->fields)
        l->fields(l->ctx, level, line, fields, n);
    else
        l->fn(l->ctx, level, line);
}

void veil_logf(const veil_logger *l, veil_log_level level, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(l, level, NULL, 0, fmt, ap);
    va_end(ap);
}

void veil_logf_fields(const veil_logger *l, veil_log_level level,
                      const veil_log_field *fields, size_t n, const char *fmt,
                      ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(l, level, fields, n, fmt, ap);
    va_end(ap);
}

int veil_secret_path(const char *spec, char *out, size_t out_size,
                     const char **why)
{
    const size_t plen = sizeof VEIL_CREDENTIAL_PREFIX - 1;
    const char *name, *dir;
    int n;

    if (strncmp(spec, VEIL_CREDENTIAL_PREFIX, plen) != 0) {
        n = snprintf(out, out_size, "%s", spec);
    } else {
        name = spec + plen;
        if (*name == '\0' || strchr(name, '/') || strcmp(name, ".") == 0 ||
            strcmp(name, "..") == 0) {
            *why = "a credential name is one file name (no '/')";
            return -1;
        }
        dir = getenv("CREDENTIALS_DIRECTORY");
        if (dir == NULL || *dir == '\0') {
            *why = "CREDENTIALS_DIRECTORY is not set (credential:NAME is "
                   "for a systemd service with LoadCredential=NAME:...)";
            return -1;
        }
        n = snprintf(out, out_size, "%s/%s", dir, name);
    }
    if (n < 0 || (size_t)n >= out_size) {
        *why = "the path is too long";
        return -1;
    }
    return 0;
}
