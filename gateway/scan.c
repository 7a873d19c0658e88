/* What the gateway forwards and what it takes back: the one scan of a
 * decrypted request (gw_request_scan, protocol/json_scan.h) that decides
 * what is forwarded, and the check of an answer (one JSON object, no key
 * twice, the place of its "_metadata") and the token counts of its
 * "usage" (for the metrics and the audit log).  Used by upstream.c, echo.c and
 * upstream_http.c; it calls none of them.
 *
 * Requests and answers are plaintext here: nothing of either is logged. */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "upstream_int.h"

/* ---- the answer --------------------------------------------------------- */

/* The longest number taken from "usage". */
#define USAGE_NUMBER_MAX 32

typedef struct usage_scan {
    const char *key;
    veil_json_member m;
    int found;
} usage_scan;

static int find_member(void *ctx, const char *text, const veil_json_member *m)
{
    usage_scan *u = ctx;

    if (!u->found && veil_json_key_is(text, m, u->key)) {
        u->m = *m;
        u->found = 1;
    }
    return 0;
}

/* The whole number in text[m->value, m->value_end), or -1. */
static long long whole_number(const char *text, const veil_json_member *m)
{
    char num[USAGE_NUMBER_MAX + 1], *end;
    size_t n = m->value_end - m->value;

    if (n == 0 || n > USAGE_NUMBER_MAX ||
        !(text[m->value] >= '0' && text[m->value] <= '9'))
        return -1;
    memcpy(num, text + m->value, n);
    num[n] = '\0';
    double v = strtod(num, &end);
    if (*end != '\0' || !(v >= 0) || v >= 9007199254740992.0 || v != floor(v))
        return -1;
    return (long long)v;
}

/* The member named key of the object text[0, len), or found 0. */
static usage_scan member_of(const char *text, size_t len, const char *key)
{
    usage_scan u = {.key = key};

    if (veil_json_scan_object(text, len, find_member, &u, NULL, NULL, NULL) !=
        VEIL_JSON_OK)
        u.found = 0;
    return u;
}

int gw_usage_read(const char *body, size_t len, long long *prompt,
                  long long *completion)
{
    *prompt = *completion = -1;
    if (body == NULL)
        return -1;
    usage_scan u = member_of(body, len, "usage");
    if (!u.found || body[u.m.value] != '{')
        return -1;
    /* the usage object alone: counts, never content */
    const char *o = body + u.m.value;
    size_t olen = u.m.value_end - u.m.value;
    usage_scan p = member_of(o, olen, "prompt_tokens");
    usage_scan c = member_of(o, olen, "completion_tokens");
    if (p.found)
        *prompt = whole_number(o, &p.m);
    if (c.found)
        *completion = whole_number(o, &c.m);
    return 0;
}

static int on_answer_member(void *ctx, const char *text,
                            const veil_json_member *m)
{
    gw_upstream_result *out = ctx;

    out->members++;
    if (veil_json_key_is(text, m, "_metadata")) {
        out->metadata = *m;
        out->has_metadata = 1;
    }
    return 0;
}

veil_json_rc gw_answer_scan(const char *text, size_t len,
                            gw_upstream_result *out)
{
    out->members = 0;
    out->has_metadata = 0;
    return veil_json_scan_object(text, len, on_answer_member, out, NULL,
                                 &out->close, NULL);
}

/* ---- the request: one scan ---------------------------------------------- */

typedef struct scan_ctx {
    const gw_config *cfg;
    gw_request *rq;
    const char *variant; /* a case variant of this name was seen */
} scan_ctx;

static int on_member(void *ctx, const char *text, const veil_json_member *m)
{
    static const char *const watched[] = {"model", "stream"};
    scan_ctx *c = ctx;
    gw_request *rq = c->rq;

    rq->members++;
    for (size_t i = 0; i < sizeof watched / sizeof watched[0]; i++) {
        if (veil_json_key_is(text, m, watched[i])) {
            if (i == 0) {
                rq->model_len = veil_json_string_value(text, m, rq->model,
                                                       sizeof rq->model);
            } else {
                rq->m_stream = *m;
                rq->stream = m->value_end - m->value == 4 &&
                             memcmp(text + m->value, "true", 4) == 0;
            }
            return 0;
        }
        if (veil_json_key_is_nocase(text, m, watched[i])) {
            c->variant = watched[i];
            return 1;
        }
    }
    if (veil_json_key_is(text, m, "stream_options")) {
        rq->m_stream_options = *m;
        rq->has_stream_options = 1;
    }
    if (veil_json_key_is(text, m, "messages")) {
        rq->m_messages = *m;
        rq->has_messages = 1;
    }
    for (size_t i = 0; c->cfg && i < c->cfg->n_models; i++) {
        const char *f = c->cfg->models[i].cache_salt_field;

        if (f && veil_json_key_is(text, m, f)) {
            rq->m_salt[i] = *m;
            rq->has_salt[i] = 1;
        }
    }
    return 0;
}

int gw_request_scan(const gw_config *cfg, const char *text, size_t len,
                    gw_request *out, char *why, size_t why_size)
{
    scan_ctx c = {cfg, out, NULL};
    size_t where = 0;
    veil_json_rc rc;

    memset(out, 0, sizeof *out);
    out->model_len = -1;
    rc = veil_json_scan_object(text, len, on_member, &c, NULL, &out->close,
                               &where);
    switch (rc) {
    case VEIL_JSON_OK:
        return 0;
    case VEIL_JSON_STOPPED:
        snprintf(why, why_size,
                 "the request has a key \"%s\" in another case; only "
                 "\"%s\" is taken",
                 c.variant, c.variant);
        break;
    case VEIL_JSON_DUPLICATE:
        snprintf(why, why_size,
                 "the request has a key twice (at byte %zu); every key "
                 "must be unique",
                 where);
        break;
    case VEIL_JSON_NOT_OBJECT:
        snprintf(why, why_size, "the decrypted request is not a JSON object");
        break;
    case VEIL_JSON_NOMEM:
        snprintf(why, why_size, "out of memory");
        break;
    default:
        snprintf(why, why_size,
                 "the decrypted request is not a JSON object: %s at byte "
                 "%zu",
                 veil_json_rc_text(rc), where);
        break;
    }
    memset(out, 0, sizeof *out);
    out->model_len = -1;
    return -1;
}
