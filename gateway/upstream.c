/* gw_upstream_call: the request's edits (its own bytes, edited in place
 * only to turn "stream" off and to set a cache salt), handed to the
 * model's backend: upstream_http.c (an OpenAI-compatible server over
 * libcurl) or echo.c (the echo model).  The scans of a request and of an
 * answer are in scan.c, below all three.  See upstream_int.h.
 *
 * Requests and answers are plaintext here: nothing of either is logged,
 * and every copy made here is wiped before it is freed. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "upstream_int.h"

/* ---- the edits ---------------------------------------------------------- */

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

/* The backend's path of each route, under the model's base URL. */
static const char *const infer_path[] = {
    [GW_INFER_CHAT] = "/chat/completions",
    [GW_INFER_COMPLETIONS] = "/completions",
    [GW_INFER_EMBEDDINGS] = "/embeddings",
};

gw_rc gw_upstream_call(const gw_config *cfg, const gw_model *m, gw_infer route,
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
    if ((size_t)route >= sizeof infer_path / sizeof infer_path[0]) {
        gw_put_err(err, err_size, "no such inference route");
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
        rc = gw_echo_call(m, route, request, len, rq, log, out, err, err_size);
    else if (copy != NULL)
        rc = gw_http_call(cfg, m, infer_path[route], copy, copy_len, log, out,
                          err, err_size);
    else
        rc = gw_http_call(cfg, m, infer_path[route], request, len, log, out,
                          err, err_size);
    if (copy != NULL) {
        veil_wipe(copy, copy_len);
        free(copy);
    }
    return rc;
}
