/* gateway/health.c: GET /healthz/live, /healthz/ready and /healthz (the
 * same as ready).
 *
 * live:  the process serves HTTP; nothing is probed: 200 always.
 * ready: whether this node can serve: the token answers (a fresh secret
 *        wrapped to the server key comes back unwrapped inside it).  200
 *        while it does, 503 only when it does not: a backend that is down
 *        is shown in the body ("status":"degraded", its model false under
 *        "upstreams") but does not take the node out of a load balancer,
 *        since its other models, and other nodes' same backend, still
 *        serve.  The probes run at most once every HEALTH_CACHE_S seconds
 *        (one at a time; the others wait for it and share its answer). */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "routes.h"

#define HEALTH_CACHE_S 5

/* The token answers when a fresh secret wrapped to the server key comes
 * back unwrapped inside it. */
static int token_alive(gw_server *s, char *why, size_t why_size)
{
    uint8_t secret[32], ct[1024];
    size_t ct_len = sizeof ct;
    veil_secbuf *back = NULL;
    veil_rc rc = veil_random(s->d.engine, secret, sizeof secret);
    if (rc == VEIL_OK)
        rc = veil_rsa_encrypt(s->d.engine, s->d.server_key, NULL, secret,
                              sizeof secret, ct, &ct_len);
    if (rc == VEIL_OK)
        rc = veil_rsa_decrypt(s->d.engine, s->d.server_key, NULL, ct, ct_len,
                              &back);
    int ok = rc == VEIL_OK && veil_secbuf_len(back) == sizeof secret &&
             memcmp(veil_secbuf_data(back), secret, sizeof secret) == 0;
    if (!ok)
        snprintf(why, why_size, "%s", veil_last_error()->message);
    veil_secbuf_free(back);
    veil_wipe(secret, sizeof secret);
    return ok;
}

/* Probes the token and every upstream into s->health (health_lock
 * held).  health_ok: the token answers. */
static void health_probe(gw_server *s, time_t now)
{
    char why[320] = "";
    cJSON *j = cJSON_CreateObject();
    cJSON *tok = cJSON_AddObjectToObject(j, "token");
    cJSON *ups = cJSON_AddObjectToObject(j, "upstreams");
    int token = token_alive(s, why, sizeof why), all = 1;
    if (!token)
        veil_logf(&s->log, VEIL_LOG_ERROR, "token check failed: %s", why);
    cJSON_AddBoolToObject(tok, "ok", token);
    if (!token)
        cJSON_AddStringToObject(tok, "detail", why);
    gw_live *live = gw_server_live(s);
    for (size_t i = 0; i < live->cfg->n_models; i++) {
        const gw_model *m = &live->cfg->models[i];
        int up = gw_upstream_alive(live->cfg, m, &s->log);
        cJSON_AddBoolToObject(ups, m->id, up);
        all &= up;
    }
    gw_live_release(live);
    cJSON_AddBoolToObject(j, "ready", token);
    cJSON_AddStringToObject(j, "status", !token ? "unavailable"
                                         : all  ? "ok"
                                                : "degraded");
    free(s->health);
    s->health = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    s->health_ok = token;
    s->health_at = now;
}

void gw_health_ready(void *app, svc_req *r)
{
    gw_server *s = app;
    pthread_mutex_lock(&s->health_lock);
    time_t now = time(NULL);
    if (s->health == NULL || now - s->health_at >= HEALTH_CACHE_S)
        health_probe(s, now);
    char *body = s->health ? strdup(s->health) : NULL;
    int ok = s->health_ok;
    pthread_mutex_unlock(&s->health_lock);
    if (body == NULL) {
        gw_respond(s, r, GW_INTERNAL, "out of memory");
        return;
    }
    svc_text(r, ok ? 200 : 503, "application/json", body, strlen(body));
    free(body);
}

void gw_health_live(void *app, svc_req *r)
{
    static const char body[] = "{\"status\":\"live\"}";

    (void)app;
    svc_text(r, 200, "application/json", body, sizeof body - 1);
}
