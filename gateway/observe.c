/* gateway/observe.c: what veild observes of its requests, for operators
 * who bill and audit without seeing prompts (docs/GATEWAY.md, "Metrics
 * and the audit log").
 *
 *  - The route modules note an inference request in its record (the HTTP
 *    layer's per-request state, gw_req_rec): protocol, the API key's
 *    name, tier, model, a hash of its payload ID, and the token counts of
 *    the backend's "usage" (read with the JSON scanner: no tree, nothing
 *    of the content copied).
 *  - The completion hook counts every request in the metrics, and each
 *    noted one in the usage counters and the audit log.
 *  - GET /metrics: on the main port for operator API keys, and alone on
 *    its own listener (metrics_listen) for a scraper that holds no key.
 *
 * The backend is asked without streaming (upstream.c turns "stream"
 * off), so the usage is always that of the final JSON answer. */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "routes.h"

static gw_req_rec *rec_of(svc_req *r)
{
    return svc_req_data(r);
}

void gw_note_request(svc_req *r, const char *protocol, const char *key,
                     const char *tier, const char *pid)
{
    gw_req_rec *x = rec_of(r);
    uint8_t h[32];

    if (x == NULL)
        return;
    x->noted = 1;
    x->protocol = protocol;
    x->key = key;
    if (tier)
        x->tier = tier;
    if (pid) {
        SHA256((const uint8_t *)pid, strlen(pid), h);
        veil_hex(h, sizeof h, x->pid_sha256);
    }
}

void gw_note_model(svc_req *r, const gw_model *m)
{
    gw_req_rec *x = rec_of(r);

    if (x && m)
        x->model = m->id;
}

void gw_note_status(svc_req *r, int status)
{
    gw_req_rec *x = rec_of(r);

    if (x)
        x->inner_status = status;
}

void gw_note_usage(svc_req *r, const gw_upstream_result *up)
{
    gw_req_rec *x = rec_of(r);

    if (x && up->body &&
        gw_usage_read(up->body, up->len, &x->prompt_tokens,
                      &x->completion_tokens) == 0)
        x->has_usage = 1;
}

gw_rc gw_upstream_timed(gw_server *s, const gw_config *cfg, const gw_model *m,
                        gw_infer route, const char *request, size_t len,
                        const gw_request *rq, const char *salt,
                        gw_upstream_result *out, char *err, size_t err_size)
{
    double t0 = svc_now();
    gw_rc rc = gw_upstream_call(cfg, m, route, request, len, rq, salt, &s->log,
                                out, err, err_size);

    gw_metrics_upstream(s->d.metrics, m ? m->id : "", rc, svc_now() - t0);
    return rc;
}

/* ---- the completion hook ------------------------------------------------- */

void gw_observe_done(void *app, svc_req *r, const svc_done *d)
{
    gw_server *s = app;
    const gw_req_rec *x = rec_of(r);
    /* what the client got: the inner answer's status in v2 (its outer
     * answer is 200 whatever happened inside) */
    int status = d->delivered ? d->status : 0;

    if (x && x->inner_status && status == 200)
        status = x->inner_status;
    gw_metrics_request(s->d.metrics, d->route, d->method, status,
                       x ? x->tier : NULL, x ? x->model : NULL, d->seconds);
    if (x == NULL || !x->noted)
        return;
    long long pt = x->has_usage ? x->prompt_tokens : -1;
    long long ct = x->has_usage ? x->completion_tokens : -1;
    gw_metrics_usage(s->d.metrics, x->key, x->model, pt, ct);
    if (s->d.audit == NULL)
        return;
    gw_audit_line l = {
        .key = x->key,
        .model = x->model,
        .tier = x->tier,
        .route = d->route,
        .protocol = x->protocol,
        .status = status,
        .prompt_tokens = pt,
        .completion_tokens = ct,
        .payload_sha256 = x->pid_sha256[0] ? x->pid_sha256 : NULL,
        .seconds = d->seconds,
    };
    if (gw_audit_write(s->d.audit, &l) != 0)
        veil_logf(&s->log, VEIL_LOG_ERROR, "audit_log: a line was lost: %s",
                  strerror(errno));
}

/* ---- GET /metrics -------------------------------------------------------- */

static void metrics_answer(gw_server *s, svc_req *r)
{
    gw_metrics_now now = {0};
    size_t len = 0;

    if (s->http)
        svc_http_slots(s->http, &now.slots_busy, &now.slots_total,
                       &now.slots_waiting);
    gw_strikes_usage(s->d.strikes, &now.replay_held, &now.replay_capacity);
    char *text = gw_metrics_render(s->d.metrics, &now, &len);
    if (text == NULL) {
        gw_respond(s, r, GW_NOMEM, "out of memory");
        return;
    }
    svc_send(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len,
             NULL);
}

void gw_metrics_get(void *app, svc_req *r)
{
    gw_server *s = app;
    const gw_live *live = gw_req_live(s, r);

    if (s->d.metrics == NULL) {
        gw_respond(s, r, GW_NOT_FOUND, "this gateway keeps no metrics");
        return;
    }
    if (live->auth == NULL ||
        !gw_auth_is_operator(live->auth, svc_client_id(r))) {
        gw_respond(s, r, GW_FORBIDDEN,
                   "GET /metrics is for operator API keys (operator_keys); "
                   "a scraper without a key uses metrics_listen");
        return;
    }
    metrics_answer(s, r);
}

/* The metrics listener's one route: no API key (keep it on a private
 * address). */
static void metrics_public(void *app, svc_req *r)
{
    gw_server *s = app;

    if (s->d.metrics == NULL) {
        gw_respond(s, r, GW_NOT_FOUND, "this gateway keeps no metrics");
        return;
    }
    metrics_answer(s, r);
}

static const svc_route metrics_routes[] = {
    {.path = "/metrics",
     .method = "GET",
     .body_max = 4096,
     .handle = metrics_public},
};

int gw_observe_start(gw_server *s, char *err, size_t err_size)
{
    const gw_config *cfg = s->d.cfg;

    if (cfg->metrics_listen == NULL || s->d.no_listen)
        return 0;
    svc_http_config h = {
        .listen_addr = cfg->metrics_listen,
        .port = cfg->metrics_port,
        .body_limit = 4096,
        .workers = 1,
        .header_timeout = cfg->header_timeout,
        .body_min_rate = cfg->body_min_rate,
        .body_timeout = cfg->body_timeout,
        .answer_timeout = cfg->answer_timeout,
        .connection_timeout = 60,
        .connections_per_address = cfg->connections_per_address,
        .routes = metrics_routes,
        .n_routes = sizeof metrics_routes / sizeof metrics_routes[0],
        .app = s,
        .log = s->log,
    };
    char why[400];
    if ((s->metrics_http = svc_http_start(&h, why, sizeof why)) == NULL) {
        gw_put_err(err, err_size, "metrics_listen: %s", why);
        return -1;
    }
    int v6 = strchr(cfg->metrics_listen, ':') != NULL;
    veil_logf(&s->log, VEIL_LOG_INFO,
              "metrics on http://%s%s%s:%u/metrics (no API key: keep this "
              "address private)",
              v6 ? "[" : "", cfg->metrics_listen, v6 ? "]" : "",
              svc_http_port(s->metrics_http));
    return 0;
}

void gw_observe_stop(gw_server *s)
{
    svc_http_stop(s->metrics_http, 0);
    s->metrics_http = NULL;
}

void gw_observe_reload(gw_server *s)
{
    char err[400];

    if (s->d.audit && gw_audit_reopen(s->d.audit, err, sizeof err) != 0)
        veil_logf(&s->log, VEIL_LOG_ERROR,
                  "reload: %s; lines still go to the file open before", err);
}
