/* The backend statement (backend.h, docs/ATTESTATION.md): an upstream
 * classified from its text alone, the statement made of it, and parsed
 * back by a verifier. */
#include "config.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "backend.h"
#include "engine_int.h"

#define BK "backend"

/* 1 when s[0..len) is printable ASCII without spaces (0x21..0x7e). */
static int visible(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return 0;
    return len > 0;
}

/* The host of an authority (no userinfo) is a loopback one: an IPv4
 * literal in 127.0.0.0/8, [::1], or "localhost" (libcurl resolves that
 * name to the loopback itself, without the resolver). */
static int loopback_host(const char *host, size_t len)
{
    char h[64];
    unsigned char a[16];

    if (len == 0 || len >= sizeof h)
        return 0;
    if (host[0] == '[') {
        if (len < 3 || host[len - 1] != ']')
            return 0;
        memcpy(h, host + 1, len - 2);
        h[len - 2] = '\0';
        return inet_pton(AF_INET6, h, a) == 1 &&
               memcmp(a, &in6addr_loopback, 16) == 0;
    }
    memcpy(h, host, len);
    h[len] = '\0';
    if (strcasecmp(h, "localhost") == 0)
        return 1;
    return inet_pton(AF_INET, h, a) == 1 && a[0] == 127;
}

veil_backend_kind veil_backend_classify(const char *upstream)
{
    size_t skip, len, auth, host_len;
    int https;

    if (upstream == NULL || !visible(upstream, len = strlen(upstream)))
        return VEIL_BACKEND_BAD;
    if (strcmp(upstream, "echo") == 0)
        return VEIL_BACKEND_ECHO;
    if (strncmp(upstream, "unix:/", 6) == 0)
        return len - 5 <= VEIL_BACKEND_UNIX_PATH_MAX ? VEIL_BACKEND_UNIX
                                                     : VEIL_BACKEND_BAD;
    if (strncmp(upstream, "http://", 7) == 0)
        skip = 7, https = 0;
    else if (strncmp(upstream, "https://", 8) == 0)
        skip = 8, https = 1;
    else
        return VEIL_BACKEND_BAD;
    auth = strcspn(upstream + skip, "/?#");
    if (auth == 0 || memchr(upstream + skip, '@', auth))
        return VEIL_BACKEND_BAD; /* no host, or credentials in the URL */
    host_len = auth;
    if (upstream[skip] == '[') {
        const char *close = memchr(upstream + skip, ']', auth);
        if (close == NULL)
            return VEIL_BACKEND_BAD;
        host_len = (size_t)(close - (upstream + skip)) + 1;
    } else {
        const char *colon = memchr(upstream + skip, ':', auth);
        if (colon)
            host_len = (size_t)(colon - (upstream + skip));
    }
    if (loopback_host(upstream + skip, host_len))
        return VEIL_BACKEND_LOOPBACK;
    return https ? VEIL_BACKEND_HTTPS_REMOTE : VEIL_BACKEND_HTTP_REMOTE;
}

int veil_backend_on_host(veil_backend_kind k)
{
    return k == VEIL_BACKEND_ECHO || k == VEIL_BACKEND_UNIX ||
           k == VEIL_BACKEND_LOOPBACK;
}

const char *veil_backend_transport(veil_backend_kind k)
{
    switch (k) {
    case VEIL_BACKEND_ECHO:
        return "echo";
    case VEIL_BACKEND_UNIX:
        return "unix";
    case VEIL_BACKEND_LOOPBACK:
        return "loopback";
    case VEIL_BACKEND_HTTPS_REMOTE:
        return "https";
    case VEIL_BACKEND_HTTP_REMOTE:
        return "http";
    case VEIL_BACKEND_BAD:
        break;
    }
    return "bad";
}

const char *veil_backend_location(veil_backend_kind k)
{
    return veil_backend_on_host(k) ? "this-host" : "remote";
}

size_t veil_backend_statement(const char *model, const char *upstream,
                              char *out, size_t size)
{
    veil_backend_kind k = veil_backend_classify(upstream);
    int n;

    if (out == NULL || size == 0)
        return 0;
    out[0] = '\0';
    if (model == NULL || !visible(model, strlen(model)) ||
        strlen(model) >= sizeof((veil_backend_info *)0)->model ||
        k == VEIL_BACKEND_BAD || k == VEIL_BACKEND_HTTP_REMOTE)
        return 0;
    n = snprintf(out, size,
                 VEIL_BACKEND_HEAD "\nmodel=%s\nupstream=%s\ntransport=%s\n"
                                   "location=%s\n",
                 model, upstream, veil_backend_transport(k),
                 veil_backend_location(k));
    if (n < 0 || (size_t)n >= size) {
        out[0] = '\0';
        return 0;
    }
    return (size_t)n;
}

/* Line `key=VALUE\n` at *p: VALUE into out (NUL-terminated); *p past the
 * line.  0 when the line is not there or too long. */
static int take_line(const char **p, const char *end, const char *key,
                     char *out, size_t size)
{
    size_t klen = strlen(key), n;
    const char *nl;

    if ((size_t)(end - *p) <= klen || memcmp(*p, key, klen) != 0 ||
        (*p)[klen] != '=')
        return 0;
    *p += klen + 1;
    if ((nl = memchr(*p, '\n', (size_t)(end - *p))) == NULL)
        return 0;
    n = (size_t)(nl - *p);
    if (n >= size)
        return 0;
    memcpy(out, *p, n);
    out[n] = '\0';
    *p = nl + 1;
    return 1;
}

veil_rc veil_backend_parse(const char *text, size_t len, veil_backend_info *out)
{
    static const char head[] = VEIL_BACKEND_HEAD "\n";
    const char *p = text, *end = text + len;
    char transport[16], location[16], canon[VEIL_BACKEND_STATEMENT_MAX];
    size_t n;

    memset(out, 0, sizeof *out);
    if (text == NULL || len < sizeof head - 1 ||
        memcmp(text, head, sizeof head - 1) != 0)
        return veil_err(VEIL_E_VERIFY, BK, NULL,
                        "the backend statement does not start with "
                        "\"" VEIL_BACKEND_HEAD "\"");
    p += sizeof head - 1;
    if (!take_line(&p, end, "model", out->model, sizeof out->model) ||
        !take_line(&p, end, "upstream", out->upstream, sizeof out->upstream) ||
        !take_line(&p, end, "transport", transport, sizeof transport) ||
        !take_line(&p, end, "location", location, sizeof location) || p != end)
        return veil_err(VEIL_E_VERIFY, BK, NULL,
                        "the backend statement is not the lines model=, "
                        "upstream=, transport=, location= in that order, "
                        "each once");
    out->kind = veil_backend_classify(out->upstream);
    if (out->kind == VEIL_BACKEND_BAD || out->kind == VEIL_BACKEND_HTTP_REMOTE)
        return veil_err(VEIL_E_VERIFY, BK, NULL,
                        "the backend statement names upstream '%.200s', "
                        "which %s",
                        out->upstream,
                        out->kind == VEIL_BACKEND_BAD
                            ? "is not an upstream that can be stated"
                            : "is plain http to another host: the plaintext "
                              "would cross the network unencrypted");
    if (strcmp(transport, veil_backend_transport(out->kind)) != 0 ||
        strcmp(location, veil_backend_location(out->kind)) != 0)
        return veil_err(VEIL_E_VERIFY, BK, NULL,
                        "the backend statement claims transport=%s, "
                        "location=%s for upstream '%.200s', which is "
                        "transport=%s, location=%s%s",
                        transport, location, out->upstream,
                        veil_backend_transport(out->kind),
                        veil_backend_location(out->kind),
                        veil_backend_on_host(out->kind)
                            ? ""
                            : " (a remote backend claimed to be local)");
    n = veil_backend_statement(out->model, out->upstream, canon, sizeof canon);
    if (n != len || memcmp(canon, text, len) != 0)
        return veil_err(VEIL_E_VERIFY, BK, NULL,
                        "the backend statement is not in canonical form "
                        "(a model ID or upstream with spaces or control "
                        "characters)");
    return VEIL_OK;
}

void veil_backend_describe(const veil_backend_info *b, char *out, size_t size)
{
    const char *where = "";

    switch (b->kind) {
    case VEIL_BACKEND_ECHO:
        where = "inside veild, on the attested host";
        break;
    case VEIL_BACKEND_UNIX:
        where = "a Unix socket on the attested host";
        break;
    case VEIL_BACKEND_LOOPBACK:
        where = "loopback TCP on the attested host";
        break;
    case VEIL_BACKEND_HTTPS_REMOTE:
        where = "https to ANOTHER host: the plaintext leaves the attested "
                "machine, encrypted only by TLS";
        break;
    default:
        where = "not stated";
        break;
    }
    snprintf(out, size, "model %s: %s, %s", b->model, b->upstream, where);
}
