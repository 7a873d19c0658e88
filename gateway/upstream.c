/* What the gateway forwards and what it takes back: the one scan of a
 * decrypted request (gw_request_scan, protocol/json_scan.h) that decides
 * what is forwarded (the request's own bytes, edited in place only to turn
 * "stream" off and to set a cache salt), the check of an answer (one JSON
 * object, no key twice, the place of its "_metadata"), and
 * gw_upstream_call, which hands the request to the model's backend:
 * upstream_http.c (an OpenAI-compatible server over libcurl) or echo.c
 * (the echo model).  See upstream_int.h.
 *
 * Requests and answers are plaintext here: nothing of either is logged,
 * and every copy made here is wiped before it is freed. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "upstream_int.h"

/* ---- the answer --------------------------------------------------------- */

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

/* ---- the request: one scan, and the edits -------------------------------- */

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

static int edit_order(const void *a, const void *b)
{
    const veil_json_edit *x = a, *y = b;

    return x->at < y->at ? -1 : x->at > y->at;
}

static int member_order(const void *a, const void *b)
{
    const veil_json_member *x = a, *y = b;

    return x->key < y->key ? -1 : x->key > y->key;
}

/* The request to send: the client's text as it is, or a copy with the
 * edits: "stream": true sent as false and "stream_options" dropped
 * (backends refuse it without streaming); the model's salt field set.
 * *copy is set when a copy was made (the caller wipes and frees it).
 * 0, or -1: no memory. */
static int prepare_request(const gw_config *cfg, const gw_model *m,
                           const char *request, size_t len,
                           const gw_request *rq, const char *salt, char **copy,
                           size_t *copy_len)
{
    veil_json_member rm[2];
    veil_json_edit edits[4];
    size_t n_rm = 0, n = 0, mi = (size_t)(m - cfg->models), size;
    char *salt_member = NULL;
    int with_salt = salt && m->cache_salt_field && mi < cfg->n_models;

    *copy = NULL;
    *copy_len = 0;
    if (rq->stream && rq->has_stream_options)
        rm[n_rm++] = rq->m_stream_options;
    if (with_salt && rq->has_salt[mi])
        rm[n_rm++] = rq->m_salt[mi];
    if (n_rm == 2)
        qsort(rm, n_rm, sizeof rm[0], member_order);
    n = veil_json_remove_members(request, len, rm, n_rm, edits);
    if (rq->stream)
        edits[n++] = (veil_json_edit){rq->m_stream.value, 4, "false", 5};
    if (with_salt) {
        /* the field and the salt are plain ASCII: no escaping needed */
        size = strlen(m->cache_salt_field) + strlen(salt) + 8;
        if ((salt_member = malloc(size)) == NULL)
            return -1;
        snprintf(salt_member, size, "%s\"%s\":\"%s\"",
                 rq->members > n_rm ? "," : "", m->cache_salt_field, salt);
        edits[n++] =
            (veil_json_edit){rq->close, 0, salt_member, strlen(salt_member)};
    }
    if (n == 0)
        return 0;
    qsort(edits, n, sizeof edits[0], edit_order);
    size = veil_json_spliced_len(len, edits, n);
    if (size == (size_t)-1 || (*copy = malloc(size + 1)) == NULL) {
        free(salt_member);
        return -1;
    }
    veil_json_splice(request, len, edits, n, *copy);
    (*copy)[size] = '\0';
    *copy_len = size;
    free(salt_member);
    return 0;
}

/* ---- the call ----------------------------------------------------------- */

gw_rc gw_upstream_call(const gw_config *cfg, const gw_model *m,
                       const char *request, size_t len, const gw_request *rq,
                       const char *salt, const veil_logger *log,
                       gw_upstream_result *out, char *err, size_t err_size)
{
    char *copy = NULL;
    size_t copy_len = 0;
    gw_rc rc;

    memset(out, 0, sizeof *out);
    if (cfg == NULL || m == NULL || m->id == NULL || m->upstream == NULL) {
        gw_put_err(err, err_size, "no inference backend configured");
        return GW_INTERNAL;
    }
    if (rq == NULL) {
        gw_put_err(err, err_size, "no request");
        return GW_INTERNAL;
    }
    if (prepare_request(cfg, m, request, len, rq, salt, &copy, &copy_len) !=
        0) {
        gw_put_err(err, err_size, "out of memory");
        return GW_NOMEM;
    }
    if (strcmp(m->upstream, "echo") == 0)
        /* the request as it came: the edits do not concern the echo */
        rc = gw_echo_call(m, request, len, rq, log, out, err, err_size);
    else if (copy != NULL)
        rc = gw_http_call(cfg, m, copy, copy_len, log, out, err, err_size);
    else
        rc = gw_http_call(cfg, m, request, len, log, out, err, err_size);
    if (copy != NULL) {
        veil_wipe(copy, copy_len);
        free(copy);
    }
    return rc;
}
