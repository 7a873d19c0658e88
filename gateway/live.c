/* gateway/live.c: the live configuration (gateway.h, gw_live): what a
 * reload swaps and a request holds from its start to its completion, so
 * that a reload never changes it under a request in flight.  The server
 * keeps the current one (gw_server.live, under live_lock); the route
 * modules take theirs with gw_req_live. */
#include "config.h"

#include <stdatomic.h>
#include <stdlib.h>

#include "routes.h"

gw_live *gw_live_new(void)
{
    gw_live *l = calloc(1, sizeof *l);

    if (l == NULL || (l->cfg = malloc(sizeof *l->cfg)) == NULL) {
        free(l);
        return NULL;
    }
    atomic_init(&l->refs, 1);
    gw_config_init(l->cfg);
    return l;
}

gw_live *gw_live_borrow(const gw_config *cfg, gw_auth *auth)
{
    gw_live *l = calloc(1, sizeof *l);

    if (l == NULL)
        return NULL;
    atomic_init(&l->refs, 1);
    l->cfg = (gw_config *)cfg; /* never changed, never freed */
    l->auth = auth;
    l->borrowed = 1;
    return l;
}

gw_live *gw_live_ref(gw_live *l)
{
    if (l)
        atomic_fetch_add(&l->refs, 1);
    return l;
}

void gw_live_release(gw_live *l)
{
    if (l == NULL || atomic_fetch_sub(&l->refs, 1) != 1)
        return;
    if (!l->borrowed) {
        gw_next_key_free(l->next);
        gw_auth_free(l->auth);
        gw_config_free(l->cfg);
        free(l->cfg);
    }
    free(l);
}

/* ---- the server's current one, and a request's ------------------------ */

static void live_release(void *l)
{
    gw_live_release(l);
}

gw_live *gw_server_live(gw_server *s)
{
    pthread_mutex_lock(&s->live_lock);
    gw_live *l = gw_live_ref(s->live);
    pthread_mutex_unlock(&s->live_lock);
    return l;
}

gw_live *gw_req_live(gw_server *s, svc_req *r)
{
    gw_live *l = svc_app_ref(r);

    if (l == NULL) {
        l = gw_server_live(s);
        svc_set_app_ref(r, l, live_release);
    }
    return l;
}
