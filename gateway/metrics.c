/* gateway/metrics.c: the metric families of veild (gateway.h, "metrics"),
 * over the registry of service/metrics.c.  Names follow Prometheus'
 * conventions: a veild_ prefix, _total for counters, _seconds for
 * durations in seconds.  The list, with labels, is in docs/GATEWAY.md. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>

#include "gateway.h"
#include "metrics.h"

struct gw_metrics {
    svc_metrics *reg;
    svc_family *requests, *request_seconds;
    svc_family *token_op_seconds, *token_op_errors;
    svc_family *upstream_seconds, *quote_seconds;
    svc_family *usage_requests, *usage_prompt, *usage_completion;
    svc_family *slots, *slots_busy, *slots_waiting;
    svc_family *replay_held, *replay_capacity, *dropped;
};

/* A token operation takes from microseconds (software) to seconds (a TPM,
 * a network HSM). */
static const double op_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                    0.005,  0.01,    0.025,  0.05,  0.1,
                                    0.25,   0.5,     1,      2.5,   5};
/* Requests and backends: milliseconds to minutes. */
static const double long_buckets[] = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};

#define N(a) (sizeof(a) / sizeof((a)[0]))
#define LABELS(...) ((const char *const[]){__VA_ARGS__, NULL})

gw_metrics *gw_metrics_new(void)
{
    gw_metrics *m = calloc(1, sizeof *m);
    svc_metrics *r;

    if (m == NULL || (r = m->reg = svc_metrics_new()) == NULL) {
        free(m);
        return NULL;
    }
    m->requests = svc_metrics_family(
        r, SVC_COUNTER, "veild_requests_total",
        "Requests answered, by route, method, status (0: none), tier and "
        "model (empty: not known)",
        LABELS("route", "method", "status", "tier", "model"), NULL, 0);
    m->request_seconds = svc_metrics_family(
        r, SVC_HISTOGRAM, "veild_request_duration_seconds",
        "Time from a request line to the end of its answer, by route",
        LABELS("route"), long_buckets, N(long_buckets));
    m->token_op_seconds = svc_metrics_family(
        r, SVC_HISTOGRAM, "veild_token_operation_duration_seconds",
        "Key operations, by provider and operation",
        LABELS("provider", "operation"), op_buckets, N(op_buckets));
    m->token_op_errors = svc_metrics_family(
        r, SVC_COUNTER, "veild_token_operation_errors_total",
        "Key operations that failed, by provider and operation",
        LABELS("provider", "operation"), NULL, 0);
    m->upstream_seconds = svc_metrics_family(
        r, SVC_HISTOGRAM, "veild_upstream_duration_seconds",
        "Exchanges with the inference backend, by model and outcome",
        LABELS("model", "outcome"), long_buckets, N(long_buckets));
    m->quote_seconds = svc_metrics_family(
        r, SVC_HISTOGRAM, "veild_tpm_quote_duration_seconds",
        "TPM quotes, by purpose (answer, report) and outcome",
        LABELS("purpose", "outcome"), op_buckets, N(op_buckets));
    m->usage_requests = svc_metrics_family(
        r, SVC_COUNTER, "veild_usage_requests_total",
        "Inference requests with an accepted API key, by the key's name "
        "and model",
        LABELS("key", "model"), NULL, 0);
    m->usage_prompt = svc_metrics_family(
        r, SVC_COUNTER, "veild_usage_prompt_tokens_total",
        "Prompt tokens the backend reported, by API key name and model",
        LABELS("key", "model"), NULL, 0);
    m->usage_completion = svc_metrics_family(
        r, SVC_COUNTER, "veild_usage_completion_tokens_total",
        "Completion tokens the backend reported, by API key name and model",
        LABELS("key", "model"), NULL, 0);
    m->slots =
        svc_metrics_family(r, SVC_GAUGE, "veild_worker_slots",
                           "Worker slots (the workers setting)", NULL, NULL, 0);
    m->slots_busy = svc_metrics_family(r, SVC_GAUGE, "veild_worker_slots_busy",
                                       "Worker slots in use", NULL, NULL, 0);
    m->slots_waiting =
        svc_metrics_family(r, SVC_GAUGE, "veild_worker_slot_waiters",
                           "Requests waiting for a worker slot", NULL, NULL, 0);
    m->replay_held = svc_metrics_family(
        r, SVC_GAUGE, "veild_replay_register_marks",
        "Marks held in the replay register (two per request; expired ones "
        "go at the next request)",
        NULL, NULL, 0);
    m->replay_capacity = svc_metrics_family(
        r, SVC_GAUGE, "veild_replay_register_capacity",
        "Marks the replay register holds at most (replay_capacity)", NULL, NULL,
        0);
    m->dropped = svc_metrics_family(
        r, SVC_GAUGE, "veild_metrics_updates_dropped",
        "Metric updates dropped (no memory, or a family at its series cap)",
        NULL, NULL, 0);
    if (!m->requests || !m->request_seconds || !m->token_op_seconds ||
        !m->token_op_errors || !m->upstream_seconds || !m->quote_seconds ||
        !m->usage_requests || !m->usage_prompt || !m->usage_completion ||
        !m->slots || !m->slots_busy || !m->slots_waiting || !m->replay_held ||
        !m->replay_capacity || !m->dropped) {
        gw_metrics_free(m);
        return NULL;
    }
    return m;
}

void gw_metrics_free(gw_metrics *m)
{
    if (m) {
        svc_metrics_free(m->reg);
        free(m);
    }
}

void gw_metrics_engine_op(void *ctx, const char *provider,
                          const char *operation, double seconds, veil_rc rc)
{
    gw_metrics *m = ctx;
    const char *const v[] = {provider, operation};

    if (m == NULL)
        return;
    svc_metric_observe(m->token_op_seconds, v, seconds);
    if (rc != VEIL_OK)
        svc_metric_add(m->token_op_errors, v, 1);
}

void gw_metrics_request(gw_metrics *m, const char *route, const char *method,
                        int status, const char *tier, const char *model,
                        double seconds)
{
    char st[16];

    if (m == NULL)
        return;
    snprintf(st, sizeof st, "%d", status);
    route = route ? route : "unmatched";
    const char *const v[] = {route, method, st, tier, model};
    const char *const r[] = {route};
    svc_metric_add(m->requests, v, 1);
    svc_metric_observe(m->request_seconds, r, seconds);
}

void gw_metrics_usage(gw_metrics *m, const char *key, const char *model,
                      long long prompt_tokens, long long completion_tokens)
{
    const char *const v[] = {key, model};

    if (m == NULL)
        return;
    svc_metric_add(m->usage_requests, v, 1);
    /* a series appears with its first request, at 0 when none reported */
    svc_metric_add(m->usage_prompt, v,
                   prompt_tokens > 0 ? (double)prompt_tokens : 0);
    svc_metric_add(m->usage_completion, v,
                   completion_tokens > 0 ? (double)completion_tokens : 0);
}

void gw_metrics_upstream(gw_metrics *m, const char *model, gw_rc rc,
                         double seconds)
{
    static const char *const outcome[] = {
        [GW_OK] = "ok",
        [GW_REFUSED] = "refused",
        [GW_UNAVAILABLE] = "unavailable",
        [GW_TIMEOUT] = "timeout",
        [GW_UPSTREAM] = "error",
    };
    const char *o =
        (unsigned)rc < N(outcome) && outcome[rc] ? outcome[rc] : "internal";
    const char *const v[] = {model, o};

    if (m)
        svc_metric_observe(m->upstream_seconds, v, seconds);
}

void gw_metrics_quote(gw_metrics *m, const char *what, int ok, double seconds)
{
    const char *const v[] = {what, ok ? "ok" : "failed"};

    if (m)
        svc_metric_observe(m->quote_seconds, v, seconds);
}

char *gw_metrics_render(gw_metrics *m, const gw_metrics_now *now, size_t *len)
{
    if (m == NULL)
        return NULL;
    svc_metric_set(m->slots, NULL, now->slots_total);
    svc_metric_set(m->slots_busy, NULL, now->slots_busy);
    svc_metric_set(m->slots_waiting, NULL, now->slots_waiting);
    svc_metric_set(m->replay_held, NULL, now->replay_held);
    svc_metric_set(m->replay_capacity, NULL, now->replay_capacity);
    svc_metric_set(m->dropped, NULL, (double)svc_metrics_dropped(m->reg));
    return svc_metrics_render(m->reg, len);
}
