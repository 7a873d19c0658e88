/* Binary HTTP (RFC 9292): known-length encoding; known- and
 * indeterminate-length decoding.  Layout: 1. variable-length integers
 * (RFC 9000 16) and the character rules; 2. the decoder; 3. the encoder.
 *
 * The decoder never reads past the input, never trusts a length before
 * checking it against what is left and against the limits, and allocates
 * only bounded arrays (fields per section and informational responses are
 * capped by the limits). */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bhttp.h"
#include "engine_int.h"

#define BH "bhttp"
#define VARINT_MAX ((UINT64_C(1) << 62) - 1)

/* ---- 1. varints and characters ---------------------------------------- */

static size_t varint_size(uint64_t v)
{
    return v < 64 ? 1 : v < 16384 ? 2 : v < (UINT64_C(1) << 30) ? 4 : 8;
}

static uint8_t *varint_put(uint8_t *q, uint64_t v)
{
    size_t n = varint_size(v);
    uint8_t prefix = n == 1 ? 0x00 : n == 2 ? 0x40 : n == 4 ? 0x80 : 0xc0;

    for (size_t i = 0; i < n; i++)
        q[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
    q[0] |= prefix;
    return q + n;
}

/* RFC 9110 5.6.2 tchar. */
static int is_tchar(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
           (c >= 'A' && c <= 'Z') || (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* A token (RFC 9110 5.6.2): a method (9.1), or a field name: RFC 9292
 * 3.6 holds names to RFC 9110 5.1, and only values to HTTP/2's 8.2.1, so
 * upper case is valid; names compare case-insensitively
 * (veil_bhttp_field_get).  Pseudo-fields (':') are not tchars and are
 * refused: veil defines none beyond the control data. */
static int token_ok(veil_bstr s)
{
    if (s.len == 0)
        return 0;
    for (size_t i = 0; i < s.len; i++)
        if (!is_tchar(s.p[i]))
            return 0;
    return 1;
}

/* No NUL, CR or LF; no leading or trailing space or tab (8.2.1). */
static int value_ok(veil_bstr s)
{
    for (size_t i = 0; i < s.len; i++)
        if (s.p[i] == 0 || s.p[i] == '\r' || s.p[i] == '\n')
            return 0;
    return s.len == 0 || (s.p[0] != ' ' && s.p[0] != '\t' &&
                          s.p[s.len - 1] != ' ' && s.p[s.len - 1] != '\t');
}

/* RFC 3986 scheme: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ). */
static int scheme_ok(veil_bstr s)
{
    if (s.len == 0 || !((s.p[0] | 0x20) >= 'a' && (s.p[0] | 0x20) <= 'z'))
        return 0;
    for (size_t i = 1; i < s.len; i++) {
        uint8_t c = s.p[i];
        if (!((c | 0x20) >= 'a' && (c | 0x20) <= 'z') &&
            !(c >= '0' && c <= '9') && c != '+' && c != '-' && c != '.')
            return 0;
    }
    return 1;
}

/* Visible ASCII only (authority may be empty, a path may not). */
static int visible_ok(veil_bstr s, int may_be_empty)
{
    if (s.len == 0)
        return may_be_empty;
    for (size_t i = 0; i < s.len; i++)
        if (s.p[i] <= 0x20 || s.p[i] >= 0x7f)
            return 0;
    return 1;
}

static int bstr_eq_nocase(veil_bstr s, const char *t)
{
    size_t n = strlen(t);
    return s.len == n && strncasecmp((const char *)s.p, t, n) == 0;
}

/* RFC 9292 3.3 holds the control data to RFC 9113 8.3.1: for an "http" or
 * "https" target, an authority without the deprecated userinfo ("@") and
 * a path that is an absolute path ("/...") or, for OPTIONS only, "*".
 * Other schemes: what visible_ok checks. */
static int target_ok(veil_bstr method, veil_bstr scheme, veil_bstr authority,
                     veil_bstr path)
{
    if (!bstr_eq_nocase(scheme, "https") && !bstr_eq_nocase(scheme, "http"))
        return 1;
    if (authority.len && memchr(authority.p, '@', authority.len))
        return 0;
    if (path.len == 1 && path.p[0] == '*')
        return method.len == 7 && memcmp(method.p, "OPTIONS", 7) == 0;
    return path.len && path.p[0] == '/';
}

/* ---- 2. decoder ------------------------------------------------------- */

typedef struct msg_box {
    veil_bhttp_msg m;               /* first: the caller's pointer */
    veil_bhttp_field *sections[2];  /* headers, trailers */
    veil_bhttp_field **info_fields; /* one array per informational */
    veil_bhttp_info *info;
    veil_secbuf *content; /* joined chunks */
} msg_box;

typedef struct dec {
    const uint8_t *p;
    size_t len, pos;
    veil_bhttp_limits lim;
    int known; /* known-length framing */
} dec;

static veil_rc bad(const dec *d, const char *what)
{
    return veil_err(VEIL_E_ARG, BH, NULL,
                    "binary HTTP message invalid: %s (at byte %zu of %zu)",
                    what, d->pos, d->len);
}

static int at_end(const dec *d)
{
    return d->pos >= d->len;
}

static veil_rc varint(dec *d, uint64_t *v, const char *what)
{
    size_t n;

    if (at_end(d))
        return bad(d, what);
    n = (size_t)1 << (d->p[d->pos] >> 6);
    if (n > d->len - d->pos)
        return bad(d, what);
    *v = d->p[d->pos] & 0x3f;
    for (size_t i = 1; i < n; i++)
        *v = (*v << 8) | d->p[d->pos + i];
    d->pos += n;
    return VEIL_OK;
}

/* A length-prefixed string of at most max bytes. */
static veil_rc lstring(dec *d, size_t max, veil_bstr *s, const char *what)
{
    uint64_t n;
    veil_rc rc = varint(d, &n, what);

    if (rc != VEIL_OK)
        return rc;
    if (n > max || n > d->len - d->pos)
        return bad(d, what);
    s->p = d->p + d->pos;
    s->len = (size_t)n;
    d->pos += (size_t)n;
    return VEIL_OK;
}

/* One field section, known-length (a length prefix) or indeterminate (a
 * zero terminator).  *fields is malloc'd (NULL when empty). */
static veil_rc section(dec *d, veil_bhttp_field **fields, veil_bhttp_section *s,
                       const char *what)
{
    size_t end = d->len, cap = 0, bytes = 0;
    veil_bhttp_field *v = NULL;
    veil_rc rc = VEIL_OK;
    uint64_t len;

    s->fields = NULL;
    s->n = 0;
    if (d->known) {
        rc = varint(d, &len, what);
        if (rc != VEIL_OK)
            return rc;
        if (len > d->len - d->pos ||
            len > d->lim.max_section_bytes + 16 * (uint64_t)d->lim.max_fields)
            return bad(d, "field section length");
        end = d->pos + (size_t)len;
    }
    for (;;) {
        veil_bhttp_field f;
        uint64_t peek;
        size_t at = d->pos;

        if (d->known && d->pos == end)
            break;
        if (!d->known) {
            rc = varint(d, &peek, "field section not terminated");
            if (rc != VEIL_OK)
                break;
            if (peek == 0)
                break;
            d->pos = at; /* the name length, read again below */
        }
        if (s->n == d->lim.max_fields) {
            rc = bad(d, "too many fields in a section");
            break;
        }
        {
            dec sub = *d;
            sub.len = end; /* a field may not cross its section */
            rc =
                lstring(&sub, sub.lim.max_section_bytes, &f.name, "field name");
            if (rc == VEIL_OK)
                rc = lstring(&sub, sub.lim.max_section_bytes, &f.value,
                             "field value");
            d->pos = sub.pos;
        }
        if (rc != VEIL_OK)
            break;
        if (!token_ok(f.name)) {
            d->pos = at;
            rc = bad(d, "field name (empty, pseudo-field or a character "
                        "HTTP does not allow)");
            break;
        }
        if (!value_ok(f.value)) {
            d->pos = at;
            rc = bad(d, "field value (NUL, CR, LF or outer white space)");
            break;
        }
        bytes += f.name.len + f.value.len;
        if (bytes > d->lim.max_section_bytes) {
            rc = bad(d, "field section too large");
            break;
        }
        if (s->n == cap) {
            size_t ncap = cap ? 2 * cap : 8;
            veil_bhttp_field *nv;
            if (ncap > d->lim.max_fields)
                ncap = d->lim.max_fields;
            nv = realloc(v, ncap * sizeof *v);
            if (!nv) {
                rc = veil_err(VEIL_E_NOMEM, BH, NULL, "out of memory");
                break;
            }
            v = nv;
            cap = ncap;
        }
        v[s->n++] = f;
    }
    if (rc != VEIL_OK) {
        free(v);
        s->n = 0;
        return rc;
    }
    *fields = v;
    s->fields = v;
    return VEIL_OK;
}

/* Content: one length-prefixed block, or non-empty chunks up to a zero. */
static veil_rc content(dec *d, msg_box *b)
{
    uint64_t n;
    size_t start, total = 0, chunks = 0;
    veil_rc rc;

    if (d->known) {
        rc = lstring(d, d->lim.max_content, &b->m.content, "content length");
        return rc;
    }
    start = d->pos;
    for (;;) { /* pass 1: measure */
        rc = varint(d, &n, "content not terminated");
        if (rc != VEIL_OK)
            return rc;
        if (n == 0)
            break;
        if (++chunks > d->lim.max_chunks)
            return bad(d, "too many content chunks");
        if (n > d->len - d->pos || n > d->lim.max_content - total)
            return bad(d, "content chunk length");
        total += (size_t)n;
        d->pos += (size_t)n;
    }
    if (total == 0)
        return VEIL_OK;
    rc = veil_secbuf_new(total, &b->content);
    if (rc != VEIL_OK)
        return rc;
    d->pos = start;
    total = 0;
    for (;;) { /* pass 2: join (already checked) */
        varint(d, &n, "content");
        if (n == 0)
            break;
        memcpy(veil_secbuf_data(b->content) + total, d->p + d->pos, (size_t)n);
        total += (size_t)n;
        d->pos += (size_t)n;
    }
    b->m.content.p = veil_secbuf_data(b->content);
    b->m.content.len = total;
    return VEIL_OK;
}

static veil_rc request_control(dec *d, veil_bhttp_msg *m)
{
    veil_rc rc = lstring(d, 64, &m->method, "method");

    if (rc == VEIL_OK && !token_ok(m->method))
        rc = bad(d, "method");
    if (rc == VEIL_OK)
        rc = lstring(d, 64, &m->scheme, "scheme");
    if (rc == VEIL_OK && !scheme_ok(m->scheme))
        rc = bad(d, "scheme");
    if (rc == VEIL_OK)
        rc = lstring(d, 1024, &m->authority, "authority");
    if (rc == VEIL_OK && !visible_ok(m->authority, 1))
        rc = bad(d, "authority");
    if (rc == VEIL_OK)
        rc = lstring(d, 8192, &m->path, "path");
    if (rc == VEIL_OK && !visible_ok(m->path, 0))
        rc = bad(d, "path");
    if (rc == VEIL_OK &&
        !target_ok(m->method, m->scheme, m->authority, m->path))
        rc = bad(d, "request target (an http(s) authority with userinfo, or "
                    "a path that is not /... or OPTIONS *)");
    return rc;
}

static veil_rc response_control(dec *d, msg_box *b)
{
    uint64_t status;
    veil_rc rc;

    for (;;) {
        rc = varint(d, &status, "status code");
        if (rc != VEIL_OK)
            return rc;
        if (status >= 200 && status <= 599)
            break;
        if (status < 100 || status > 599)
            return bad(d, "status code out of range");
        if (b->m.n_info == d->lim.max_info)
            return bad(d, "too many informational responses");
        if (!b->info) {
            b->info = calloc(d->lim.max_info, sizeof *b->info);
            b->info_fields = calloc(d->lim.max_info, sizeof *b->info_fields);
            if (!b->info || !b->info_fields)
                return veil_err(VEIL_E_NOMEM, BH, NULL, "out of memory");
            b->m.info = b->info;
        }
        b->info[b->m.n_info].status = (unsigned)status;
        rc = section(d, &b->info_fields[b->m.n_info],
                     &b->info[b->m.n_info].headers,
                     "informational header section");
        b->m.n_info++;
        if (rc != VEIL_OK)
            return rc;
    }
    b->m.status = (unsigned)status;
    return VEIL_OK;
}

void veil_bhttp_msg_free(veil_bhttp_msg *m)
{
    msg_box *b = (msg_box *)m;

    if (!b)
        return;
    free(b->sections[0]);
    free(b->sections[1]);
    for (size_t i = 0; b->info_fields && i < b->m.n_info; i++)
        free(b->info_fields[i]);
    free(b->info_fields);
    free(b->info);
    veil_secbuf_free(b->content);
    free(b);
}

veil_rc veil_bhttp_decode(const uint8_t *in, size_t len, veil_bhttp_kind kind,
                          const veil_bhttp_limits *lim, veil_bhttp_msg **out)
{
    static const veil_bhttp_limits defaults = {
        VEIL_BHTTP_DEFAULT_MAX_FIELDS, VEIL_BHTTP_DEFAULT_MAX_SECTION,
        VEIL_BHTTP_DEFAULT_MAX_CONTENT, VEIL_BHTTP_DEFAULT_MAX_INFO,
        VEIL_BHTTP_DEFAULT_MAX_CHUNKS};
    dec d = {in, len, 0, lim ? *lim : defaults, 0};
    uint64_t framing;
    msg_box *b;
    veil_rc rc;

    veil_err_clear();
    if ((len && !in) || !out)
        return veil_err(VEIL_E_ARG, BH, NULL, "decode: missing argument");
    *out = NULL;
    if (d.lim.max_fields == 0 || d.lim.max_fields > 65536 ||
        d.lim.max_info > 64)
        return veil_err(VEIL_E_ARG, BH, NULL, "decode: limits out of range");
    rc = varint(&d, &framing, "framing indicator");
    if (rc != VEIL_OK)
        return rc;
    if (framing > 3 || (framing & 1) != (uint64_t)kind)
        return bad(&d, kind == VEIL_BHTTP_REQUEST
                           ? "framing indicator (want 0 or 2: a request)"
                           : "framing indicator (want 1 or 3: a response)");
    b = calloc(1, sizeof *b);
    if (!b)
        return veil_err(VEIL_E_NOMEM, BH, NULL, "out of memory");
    d.known = framing < 2;
    b->m.known_length = d.known;
    b->m.is_request = kind == VEIL_BHTTP_REQUEST;
    rc = b->m.is_request ? request_control(&d, &b->m) : response_control(&d, b);
    /* Truncation (3.8): the message may end before any later part. */
    if (rc == VEIL_OK && !at_end(&d))
        rc = section(&d, &b->sections[0], &b->m.headers, "header section");
    if (rc == VEIL_OK && !at_end(&d))
        rc = content(&d, b);
    if (rc == VEIL_OK && !at_end(&d))
        rc = section(&d, &b->sections[1], &b->m.trailers, "trailer section");
    for (; rc == VEIL_OK && !at_end(&d); d.pos++)
        if (d.p[d.pos] != 0)
            rc = bad(&d, "non-zero padding");
    if (rc != VEIL_OK) {
        veil_bhttp_msg_free(&b->m);
        return rc;
    }
    *out = &b->m;
    return VEIL_OK;
}

size_t veil_bhttp_field_count(const veil_bhttp_section *s, const char *name)
{
    size_t n = name ? strlen(name) : 0, seen = 0;

    for (size_t i = 0; s && i < s->n; i++)
        seen += s->fields[i].name.len == n &&
                strncasecmp((const char *)s->fields[i].name.p, name, n) == 0;
    return seen;
}

const veil_bhttp_field *veil_bhttp_field_get(const veil_bhttp_section *s,
                                             const char *name)
{
    size_t n = name ? strlen(name) : 0;

    for (size_t i = 0; s && i < s->n; i++)
        if (s->fields[i].name.len == n &&
            strncasecmp((const char *)s->fields[i].name.p, name, n) == 0)
            return &s->fields[i];
    return NULL;
}

/* ---- 3. encoder ------------------------------------------------------- */

static size_t section_body(const veil_bhttp_section *s)
{
    size_t n = 0;

    for (size_t i = 0; i < s->n; i++)
        n += varint_size(s->fields[i].name.len) + s->fields[i].name.len +
             varint_size(s->fields[i].value.len) + s->fields[i].value.len;
    return n;
}

static veil_rc section_check(const veil_bhttp_section *s, const char *what)
{
    if (s->n && !s->fields)
        return veil_err(VEIL_E_ARG, BH, NULL, "%s: no fields", what);
    for (size_t i = 0; i < s->n; i++)
        if (!token_ok(s->fields[i].name) || !value_ok(s->fields[i].value) ||
            (s->fields[i].value.len && !s->fields[i].value.p))
            return veil_err(VEIL_E_ARG, BH, NULL,
                            "%s: field %zu is not a valid HTTP field (names "
                            "are tokens; values have no NUL, CR, LF or outer "
                            "white space)",
                            what, i);
    return VEIL_OK;
}

static uint8_t *section_put(uint8_t *q, const veil_bhttp_section *s)
{
    q = varint_put(q, section_body(s));
    for (size_t i = 0; i < s->n; i++) {
        q = varint_put(q, s->fields[i].name.len);
        memcpy(q, s->fields[i].name.p, s->fields[i].name.len);
        q += s->fields[i].name.len;
        q = varint_put(q, s->fields[i].value.len);
        if (s->fields[i].value.len)
            memcpy(q, s->fields[i].value.p, s->fields[i].value.len);
        q += s->fields[i].value.len;
    }
    return q;
}

static veil_rc encode_check(const veil_bhttp_msg *m)
{
    veil_rc rc = VEIL_OK;

    if (m->is_request) {
        if (!m->method.p || !token_ok(m->method) || !m->scheme.p ||
            !scheme_ok(m->scheme) || (m->authority.len && !m->authority.p) ||
            !visible_ok(m->authority, 1) || !m->path.p ||
            !visible_ok(m->path, 0) ||
            !target_ok(m->method, m->scheme, m->authority, m->path))
            return veil_err(VEIL_E_ARG, BH, NULL,
                            "request control data invalid (method, scheme, "
                            "authority or path)");
    } else {
        if (m->status < 200 || m->status > 599 || (m->n_info && !m->info))
            return veil_err(VEIL_E_ARG, BH, NULL,
                            "final status must be 200..599 (got %u)",
                            m->status);
        for (size_t i = 0; rc == VEIL_OK && i < m->n_info; i++) {
            if (m->info[i].status < 100 || m->info[i].status > 199)
                return veil_err(VEIL_E_ARG, BH, NULL,
                                "informational status must be 100..199");
            rc = section_check(&m->info[i].headers, "informational headers");
        }
    }
    if (rc == VEIL_OK)
        rc = section_check(&m->headers, "headers");
    if (rc == VEIL_OK)
        rc = section_check(&m->trailers, "trailers");
    if (rc == VEIL_OK && m->content.len && !m->content.p)
        rc = veil_err(VEIL_E_ARG, BH, NULL, "content missing");
    return rc;
}

veil_rc veil_bhttp_encode(const veil_bhttp_msg *m, unsigned flags,
                          veil_secbuf **out)
{
    size_t n = 1, parts = 3, hb, tb;
    uint8_t *q;
    veil_rc rc;

    veil_err_clear();
    if (!m || !out)
        return veil_err(VEIL_E_ARG, BH, NULL, "encode: missing argument");
    *out = NULL;
    rc = encode_check(m);
    if (rc != VEIL_OK)
        return rc;
    hb = section_body(&m->headers);
    tb = section_body(&m->trailers);
    if (flags & VEIL_BHTTP_TRUNCATE)
        parts = m->trailers.n ? 3 : m->content.len ? 2 : m->headers.n ? 1 : 0;
    if (m->is_request) {
        n += varint_size(m->method.len) + m->method.len +
             varint_size(m->scheme.len) + m->scheme.len +
             varint_size(m->authority.len) + m->authority.len +
             varint_size(m->path.len) + m->path.len;
    } else {
        for (size_t i = 0; i < m->n_info; i++) {
            size_t ib = section_body(&m->info[i].headers);
            n += varint_size(m->info[i].status) + varint_size(ib) + ib;
        }
        n += varint_size(m->status);
    }
    if (parts >= 1)
        n += varint_size(hb) + hb;
    if (parts >= 2)
        n += varint_size(m->content.len) + m->content.len;
    if (parts >= 3)
        n += varint_size(tb) + tb;
    if (m->content.len > VARINT_MAX)
        return veil_err(VEIL_E_ARG, BH, NULL, "content too long");
    rc = veil_secbuf_new(n, out);
    if (rc != VEIL_OK)
        return rc;
    q = veil_secbuf_data(*out);
    *q++ = m->is_request ? 0 : 1;
    if (m->is_request) {
        const veil_bstr *cd[4] = {&m->method, &m->scheme, &m->authority,
                                  &m->path};
        for (size_t i = 0; i < 4; i++) {
            q = varint_put(q, cd[i]->len);
            if (cd[i]->len)
                memcpy(q, cd[i]->p, cd[i]->len);
            q += cd[i]->len;
        }
    } else {
        for (size_t i = 0; i < m->n_info; i++) {
            q = varint_put(q, m->info[i].status);
            q = section_put(q, &m->info[i].headers);
        }
        q = varint_put(q, m->status);
    }
    if (parts >= 1)
        q = section_put(q, &m->headers);
    if (parts >= 2) {
        q = varint_put(q, m->content.len);
        if (m->content.len)
            memcpy(q, m->content.p, m->content.len);
        q += m->content.len;
    }
    if (parts >= 3)
        q = section_put(q, &m->trailers);
    return VEIL_OK;
}
