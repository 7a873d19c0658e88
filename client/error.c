/* Client errors: the NOMYO error classes (veil_client_status), filling a
 * veil_client_error, and the class and detail of an HTTP answer that is
 * not 200.  The lowest layer of client/: it calls nothing else in it but
 * the JSON size check of request.c. */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
#include "json_scan.h"

const char *veil_client_status_name(veil_client_status s)
{
    switch (s) {
    case VEIL_CLIENT_OK:
        return "OK";
    case VEIL_CLIENT_E_INVALID_REQUEST:
        return "InvalidRequestError";
    case VEIL_CLIENT_E_AUTHENTICATION:
        return "AuthenticationError";
    case VEIL_CLIENT_E_FORBIDDEN:
        return "ForbiddenError";
    case VEIL_CLIENT_E_API:
        return "APIError";
    case VEIL_CLIENT_E_RATE_LIMIT:
        return "RateLimitError";
    case VEIL_CLIENT_E_SERVER:
        return "ServerError";
    case VEIL_CLIENT_E_SERVICE_UNAVAILABLE:
        return "ServiceUnavailableError";
    case VEIL_CLIENT_E_CONNECTION:
        return "APIConnectionError";
    case VEIL_CLIENT_E_SECURITY:
        return "SecurityError";
    case VEIL_CLIENT_E_DISPOSED:
        return "DisposedError";
    case VEIL_CLIENT_E_CONFIG:
        return "ConfigurationError";
    }
    return "UnknownError";
}

void veil_cl_vline(char *out, size_t size, const char *fmt, va_list ap)
{
    vsnprintf(out, size, fmt, ap);
    /* C0 controls and DEL become spaces; so do C1 controls (U+0080 to
     * U+009F, UTF-8 C2 80 to C2 9F: U+009B is CSI), and a byte that is
     * not UTF-8 becomes '?' (a raw 0x9B is CSI to an 8-bit terminal). */
    size_t n = strlen(out);
    for (size_t i = 0; i < n;) {
        unsigned char *p = (unsigned char *)out + i;
        size_t len = p[0] < 0x80 ? 1 : veil_utf8_seq(p, n - i);
        if (len == 0) {
            p[0] = '?';
            len = 1;
        } else if (p[0] < 0x20 || p[0] == 0x7f) {
            p[0] = ' ';
        } else if (len == 2 && p[0] == 0xc2 && p[1] <= 0x9f) {
            p[0] = p[1] = ' ';
        }
        i += len;
    }
}

veil_client_status veil_cl_fail(veil_client_error *err,
                                veil_client_status status, int http_status,
                                veil_rc rc, const char *fmt, ...)
{
    if (err == NULL)
        return status;
    err->status = status;
    err->http_status = http_status;
    err->rc = rc;
    va_list ap;
    va_start(ap, fmt);
    veil_cl_vline(err->detail, sizeof err->detail, fmt, ap);
    va_end(ap);
    return status;
}

/* The engine's last error as a client failure. */
veil_client_status veil_cl_engine_fail(veil_client_error *err,
                                       veil_client_status st, veil_rc rc,
                                       const char *what)
{
    return veil_cl_fail(err, st, 0, rc, "%s: %s", what,
                        veil_last_error()->message);
}

/* ---- HTTP answers ------------------------------------------------------ */

/* The NOMYO error class of an HTTP status. */
static veil_client_status status_class(long status)
{
    switch (status) {
    case 400:
        return VEIL_CLIENT_E_INVALID_REQUEST;
    case 401:
        return VEIL_CLIENT_E_AUTHENTICATION;
    case 403:
        return VEIL_CLIENT_E_FORBIDDEN;
    case 429:
        return VEIL_CLIENT_E_RATE_LIMIT;
    case 500:
        return VEIL_CLIENT_E_SERVER;
    case 503:
        return VEIL_CLIENT_E_SERVICE_UNAVAILABLE;
    default:
        return VEIL_CLIENT_E_API;
    }
}

veil_client_status veil_cl_http_fail(const veil_cl_http_response *r,
                                     veil_client_error *err)
{
    char detail[512];
    veil_cl_error_detail(r->body, r->len, detail, sizeof detail);
    if (r->status == 404 && detail[0] == '\0')
        snprintf(detail, sizeof detail, "secure inference not enabled");
    if (detail[0] == '\0')
        snprintf(detail, sizeof detail, "HTTP %ld", r->status);
    return veil_cl_fail(err, status_class(r->status), (int)r->status, 0, "%s",
                        detail);
}

/* An error body is parsed only when it is this small in values. */
#define ERROR_MAX_VALUES 256
#define ERROR_MAX_DEPTH 16

void veil_cl_error_detail(const char *body, size_t len, char *out,
                          size_t out_size)
{
    out[0] = '\0';
    cJSON *j =
        body && veil_cl_json_small(body, len, ERROR_MAX_VALUES, ERROR_MAX_DEPTH)
            ? cJSON_ParseWithLength(body, len)
            : NULL;
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "detail");
    if (cJSON_IsString(d)) {
        snprintf(out, out_size, "%s", d->valuestring);
    } else if (d != NULL) {
        char *s = cJSON_PrintUnformatted(d);
        if (s)
            snprintf(out, out_size, "%s", s);
        free(s);
    } else if (body != NULL && len > 0) {
        size_t n = 0;
        for (size_t i = 0; i < len && i < 200 && n + 1 < out_size; i++) {
            unsigned char c = (unsigned char)body[i];
            out[n++] = (c >= 0x20 && c < 0x7f) ? (char)c : ' ';
        }
        out[n] = '\0';
    }
    cJSON_Delete(j);
}
