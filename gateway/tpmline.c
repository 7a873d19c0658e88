/* gateway/tpmline.c: the TPM's own line (docs/GATEWAY.md, "TPM work").
 * TPM work (a maximum answer's quote, an attestation report, a credential
 * activation) is slow on a hardware TPM and done one at a time; it must
 * not hold the worker slots that `standard` requests need.  So it has a
 * limit and a line of its own, apart from the worker slots:
 *
 *  - a place: taken once the request's body is in and before any worker
 *    slot (gw_tpm_place*, the routes' before_slot hook).  At most
 *    tpm_workers + tpm_queue requests hold one; one more is answered 503
 *    with Retry-After at once, having cost nothing (no unwrap in the
 *    token, no slot).  Protocol v2 carries its tier inside the request:
 *    its place is taken once the request is open and its checks passed,
 *    before any backend work (gw_tpm_place_take), and a full line is an
 *    inner 503 with an inner retry-after.  Held until the request is
 *    complete;
 *  - a turn: taken by a holder of a place when it reaches its TPM work
 *    (gw_tpm_turn_take).  At most tpm_workers at once, first come, first
 *    served, each waiting at most tpm_queue_wait seconds (then 503 with
 *    Retry-After).  The request gives its worker slot back while it
 *    waits and while the TPM works, and takes one again afterwards
 *    (gw_tpm_turn_give), in the slots' own first-come order.
 *
 * Retry-After is what the line expects: the mean time of a turn (a moving
 * average) times the places taken, over tpm_workers; at least 1 s.  A
 * gateway without a TPM has no line: its routes answer the permanent 503
 * "no TPM attestation available", without Retry-After.  Nothing here
 * knows the TPM itself (tpm.c) or HTTP beyond the request's slot. */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "routes.h"

/* A first guess of a turn's time before one was measured, seconds. */
#define FIRST_GUESS_S 0.5
/* The weight of the newest turn in the moving average. */
#define AVG_NEW 0.25
#define RETRY_MAX_S 600u

/* A request waiting for its turn, on its own stack. */
struct turn_waiter {
    pthread_cond_t cv;
    struct turn_waiter *next;
    int granted;
};

struct gw_tpm_line {
    pthread_mutex_t lock;
    unsigned workers, queue, wait_s;
    unsigned places;  /* held */
    unsigned running; /* turns taken */
    struct turn_waiter *head, *tail;
    double avg_s; /* a turn's time, moving average */
};

gw_tpm_line *gw_tpm_line_new(unsigned workers, unsigned queue, unsigned wait_s)
{
    gw_tpm_line *l = calloc(1, sizeof *l);

    if (l == NULL)
        return NULL;
    pthread_mutex_init(&l->lock, NULL);
    l->workers = workers ? workers : 1;
    l->queue = queue;
    l->wait_s = wait_s ? wait_s : 1;
    l->avg_s = FIRST_GUESS_S;
    return l;
}

void gw_tpm_line_free(gw_tpm_line *l)
{
    if (l == NULL)
        return;
    pthread_mutex_destroy(&l->lock);
    free(l);
}

/* What the line expects a newcomer to wait, seconds (lock held). */
static unsigned retry_after(const gw_tpm_line *l)
{
    double s = ceil(l->avg_s * (double)(l->places + 1) / l->workers);

    return s < 1 ? 1 : s > RETRY_MAX_S ? RETRY_MAX_S : (unsigned)s;
}

/* ---- places -------------------------------------------------------------- */

static void leave(void *ref)
{
    gw_tpm_line *l = ref;

    pthread_mutex_lock(&l->lock);
    l->places--;
    pthread_mutex_unlock(&l->lock);
}

gw_rc gw_tpm_place_take(gw_server *s, svc_req *r, unsigned *retry_s, char *why,
                        size_t why_size)
{
    gw_tpm_line *l = s->tpm_line;
    unsigned held = 0;

    *retry_s = 0;
    if (l == NULL) /* no TPM: the turn answers, without Retry-After */
        return GW_OK;
    pthread_mutex_lock(&l->lock);
    if (l->places < l->workers + l->queue)
        l->places++;
    else {
        held = l->places;
        *retry_s = retry_after(l);
    }
    pthread_mutex_unlock(&l->lock);
    if (*retry_s) {
        snprintf(why, why_size,
                 "the TPM is busy (%u requests are at it or waiting for it); "
                 "retry in %u s",
                 held, *retry_s);
        return GW_BUSY;
    }
    if (!svc_set_app_hold(r, l, leave))
        leave(l); /* it holds one already */
    return GW_OK;
}

/* A place for r, held until it is complete, or the 503 with Retry-After. */
static void place(gw_server *s, svc_req *r)
{
    unsigned retry;
    char why[160];

    if (gw_tpm_place_take(s, r, &retry, why, sizeof why) != GW_OK)
        gw_respond_retry(s, r, GW_BUSY, retry, "%s", why);
}

void gw_tpm_place(void *app, svc_req *r)
{
    place(app, r);
}

void gw_tpm_place_maximum(void *app, svc_req *r)
{
    const char *tier = svc_header(r, "X-Security-Tier");

    if (tier && veil_tier_parse(tier) == VEIL_TIER_MAXIMUM)
        place(app, r);
}

/* ---- turns --------------------------------------------------------------- */

/* Takes w out of the line (lock held). */
static void unqueue(gw_tpm_line *l, struct turn_waiter *w)
{
    struct turn_waiter **p = &l->head, *prev = NULL;

    while (*p != w) {
        prev = *p;
        p = &(*p)->next;
    }
    *p = w->next;
    if (l->tail == w)
        l->tail = prev;
}

/* Waits for a turn, at most wait_s: 1 when it came, else 0 with *retry_s
 * (lock held). */
static int wait_turn(gw_tpm_line *l, const veil_logger *log, unsigned *retry_s)
{
    struct turn_waiter w = {.next = NULL, .granted = 0};
    pthread_condattr_t ca;
    struct timespec until;
    int rc = 0;

    if (l->running < l->workers && l->head == NULL) {
        l->running++;
        return 1;
    }
    veil_logf(log, VEIL_LOG_DEBUG,
              "a request waits for its turn at the TPM (%u TPM operation%s "
              "running, %u places taken)",
              l->running, l->running == 1 ? "" : "s", l->places);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w.cv, &ca);
    pthread_condattr_destroy(&ca);
    if (l->tail)
        l->tail->next = &w;
    else
        l->head = &w;
    l->tail = &w;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += l->wait_s;
    while (!w.granted && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&w.cv, &l->lock, &until);
    if (!w.granted) {
        unqueue(l, &w);
        *retry_s = retry_after(l);
    }
    pthread_cond_destroy(&w.cv);
    return w.granted;
}

gw_rc gw_tpm_turn_take(gw_server *s, svc_req *r, gw_tpm_turn *t,
                       unsigned *retry_s, char *why, size_t why_size)
{
    gw_tpm_line *l = s->tpm_line;
    struct timespec now;
    int got;

    *t = (gw_tpm_turn){0};
    *retry_s = 0;
    if (l == NULL || s->d.tpm == NULL) {
        snprintf(why, why_size, "no TPM attestation available");
        return GW_UNAVAILABLE;
    }
    /* the TPM's line is not the workers': nobody waits for this slot */
    t->had_slot = svc_slot_yield(r);
    pthread_mutex_lock(&l->lock);
    got = wait_turn(l, &s->log, retry_s);
    pthread_mutex_unlock(&l->lock);
    if (!got) {
        snprintf(why, why_size,
                 "the TPM is busy: no turn came in %u s; retry in %u s",
                 l->wait_s, *retry_s);
        return GW_BUSY;
    }
    clock_gettime(CLOCK_MONOTONIC, &now);
    t->t0 = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
    t->held = 1;
    return GW_OK;
}

gw_rc gw_tpm_turn_give(gw_server *s, svc_req *r, gw_tpm_turn *t, char *why,
                       size_t why_size)
{
    gw_tpm_line *l = s->tpm_line;
    struct timespec now;

    if (t->held) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        double took = (double)now.tv_sec + (double)now.tv_nsec / 1e9 - t->t0;
        pthread_mutex_lock(&l->lock);
        l->avg_s = (1 - AVG_NEW) * l->avg_s + AVG_NEW * took;
        struct turn_waiter *w = l->head;
        if (w) { /* the turn goes to the first in line */
            l->head = w->next;
            if (l->head == NULL)
                l->tail = NULL;
            w->granted = 1;
            pthread_cond_signal(&w->cv);
        } else {
            l->running--;
        }
        pthread_mutex_unlock(&l->lock);
        t->held = 0;
    }
    if (t->had_slot && !svc_slot_retake(r)) {
        snprintf(why, why_size, "the gateway is shutting down");
        return GW_UNAVAILABLE;
    }
    t->had_slot = 0;
    return GW_OK;
}
