/* service/http_conn.c: connections, their deadlines, the worker slots and
 * the body memory of the HTTP layer (service/http.h).
 *
 * Threads: one thread per connection (a blocking handler stalls only its
 * own connection), and `workers` slots.  A request takes a slot only once
 * its body is in and leaves it as soon as its answer is queued, so neither
 * a slow uploader nor a slow reader holds one.  The bodies in memory are
 * bounded by body_memory instead, counted as their bytes come: a body that
 * would pass it waits (its bytes stay in the kernel).  An answer queued and
 * not yet sent counts there too, so slow readers cannot pile up answers in
 * memory either.  When only bodies still being read hold that memory, the
 * oldest of them goes on anyway, so that they cannot all wait for each
 * other (at most body_memory + body_limit).  Slots go first come, first
 * served: a plain semaphore lets a connection that was just answered take
 * the slot again and starves the others (a p99 36 times the p50).  A freed
 * slot is handed to the first waiter alone (its own condition variable): a
 * broadcast woke every waiting thread for each answer, about 60 context
 * switches per request at 64 clients.
 *
 * Connections: a watchdog thread holds every connection to its deadlines
 * (header block, body rate and total, writing the answer) and closes it by
 * shutting its socket down; a request refused before its body (401, 429,
 * 413, 503) gets its answer, then the socket is kept open a while with its
 * input read and dropped (at most DISCARD_MAX bytes, under the body rules),
 * so that a client that sends its whole body before reading sees the
 * answer, not a reset. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http_int.h"

void svc_set_phase(svc_http *h, conn *k, enum phase p)
{
    if (k == NULL)
        return;
    pthread_mutex_lock(&h->conn_lock);
    k->phase = p;
    k->since = svc_now();
    k->got = 0;
    pthread_mutex_unlock(&h->conn_lock);
}

/* Why a body (or a drain) that began el seconds ago and has brought got
 * bytes must be cut, or NULL. */
static const char *body_late(const svc_http_config *cfg, double el, size_t got)
{
    if (el > cfg->body_timeout)
        return "body_timeout";
    if (el > BODY_GRACE_S &&
        (double)got < (double)cfg->body_min_rate * (el - BODY_GRACE_S))
        return "body below body_min_rate";
    return NULL;
}

/* A request waiting for a worker slot, on its own stack. */
struct slot_waiter {
    pthread_cond_t cv;
    struct slot_waiter *next;
    int granted;
};

/* Takes w out of the queue (slot_lock held). */
static void slot_unqueue(svc_http *h, struct slot_waiter *w)
{
    struct slot_waiter **p = &h->wait_head, *prev = NULL;

    while (*p != w) {
        prev = *p;
        p = &(*p)->next;
    }
    *p = w->next;
    if (h->wait_tail == w)
        h->wait_tail = prev;
}

/* Waits for a worker slot, first come, first served.  0 when the server
 * began to stop before this request's turn came. */
int svc_take_slot(svc_http *h, svc_req *r)
{
    pthread_mutex_lock(&h->slot_lock);
    if (h->slots_free > 0 && h->wait_head == NULL) {
        h->slots_free--;
        r->has_slot = 1;
    } else {
        struct slot_waiter w = {.next = NULL, .granted = 0};

        pthread_cond_init(&w.cv, NULL);
        if (h->wait_tail)
            h->wait_tail->next = &w;
        else
            h->wait_head = &w;
        h->wait_tail = &w;
        while (!w.granted && !atomic_load(&h->stopping))
            pthread_cond_wait(&w.cv, &h->slot_lock);
        if (!w.granted) /* stopping: leave the queue */
            slot_unqueue(h, &w);
        pthread_cond_destroy(&w.cv);
        r->has_slot = w.granted;
    }
    pthread_mutex_unlock(&h->slot_lock);
    return r->has_slot;
}

void svc_http_slots(svc_http *h, unsigned *busy, unsigned *total,
                    unsigned *waiting)
{
    unsigned n = 0;

    pthread_mutex_lock(&h->slot_lock);
    for (struct slot_waiter *w = h->wait_head; w; w = w->next)
        n++;
    *total = h->cfg.workers;
    *busy = h->cfg.workers - h->slots_free;
    *waiting = n;
    pthread_mutex_unlock(&h->slot_lock);
}

/* Hands the slot to the first waiter, or frees it. */
void svc_release_slot(svc_http *h, svc_req *r)
{
    if (!r->has_slot)
        return;
    r->has_slot = 0;
    pthread_mutex_lock(&h->slot_lock);
    struct slot_waiter *w = h->wait_head;
    if (w) {
        h->wait_head = w->next;
        if (h->wait_head == NULL)
            h->wait_tail = NULL;
        w->granted = 1;
        pthread_cond_signal(&w->cv);
    } else {
        h->slots_free++;
    }
    pthread_mutex_unlock(&h->slot_lock);
}

/* Enters (on) or leaves the list of bodies being read (h->lock held). */
static void body_list(svc_http *h, svc_req *r, int on)
{
    if (on && !r->reading) {
        r->bprev = h->body_tail;
        r->bnext = NULL;
        if (h->body_tail)
            h->body_tail->bnext = r;
        else
            h->body_head = r;
        h->body_tail = r;
        r->reading = 1;
    } else if (!on && r->reading) {
        h->partial_mem -= r->reserved;
        if (r->bprev)
            r->bprev->bnext = r->bnext;
        else
            h->body_head = r->bnext;
        if (r->bnext)
            r->bnext->bprev = r->bprev;
        else
            h->body_tail = r->bprev;
        r->reading = 0;
        pthread_cond_broadcast(&h->body_room);
    }
}

/* The body is in: the next body in line may go. */
void svc_body_done(svc_http *h, svc_req *r)
{
    pthread_mutex_lock(&h->lock);
    body_list(h, r, 0);
    pthread_mutex_unlock(&h->lock);
}

/* 1 when n more bytes of r's body must wait: they do not fit, and either
 * something else will free memory (a whole body at work or waiting for a
 * slot, an answer being sent) or r is not the oldest body being read.  When
 * only bodies still being read hold the memory, the oldest goes on, so the
 * bodies cannot all wait for each other: body_mem stays under body_memory
 * + body_limit. */
static int body_must_wait(const svc_http *h, const svc_req *r, size_t n)
{
    if (h->body_mem + n <= h->body_mem_cap || atomic_load(&h->stopping))
        return 0;
    return h->body_head != r || h->body_mem > h->partial_mem;
}

/* Counts n more body bytes against body_memory, waiting while they must. */
void svc_charge_body(svc_http *h, svc_req *r, size_t n)
{
    pthread_mutex_lock(&h->lock);
    body_list(h, r, 1);
    if (body_must_wait(h, r, n)) {
        svc_set_phase(h, r->conn, P_WAIT);
        while (body_must_wait(h, r, n))
            pthread_cond_wait(&h->body_room, &h->lock);
        svc_set_phase(h, r->conn, P_BODY);
    }
    h->body_mem += n;
    h->partial_mem += n;
    r->reserved += n;
    pthread_mutex_unlock(&h->lock);
}

/* Wipes and frees the body and gives its memory back (and, once it is
 * sent, the answer's). */
void svc_drop_body(svc_http *h, svc_req *r)
{
    if (r->body) {
        veil_wipe(r->body, r->len);
        free(r->body);
        r->body = NULL;
        r->len = r->cap = 0;
    }
    pthread_mutex_lock(&h->lock);
    body_list(h, r, 0);
    if (r->reserved) {
        h->body_mem -= r->reserved;
        r->reserved = 0;
        pthread_cond_broadcast(&h->body_room);
    }
    if (r->answer_held) {
        h->body_mem -= r->answer_held;
        r->answer_held = 0;
        pthread_cond_broadcast(&h->body_room);
    }
    pthread_mutex_unlock(&h->lock);
}

/* An answer queued and not yet sent counts in body_memory. */
void svc_hold_answer(svc_http *h, svc_req *r)
{
    if (!r->answered || r->answer_len == 0)
        return;
    pthread_mutex_lock(&h->lock);
    h->body_mem += r->answer_len;
    r->answer_held = r->answer_len;
    pthread_mutex_unlock(&h->lock);
}

/* Refused before its body: drain that after the answer. */
void svc_linger(svc_http *h, conn *k)
{
    if (k == NULL)
        return;
    pthread_mutex_lock(&h->conn_lock);
    k->linger = 1;
    pthread_mutex_unlock(&h->conn_lock);
}

void svc_count_body(svc_http *h, conn *k, size_t n)
{
    if (k == NULL)
        return;
    pthread_mutex_lock(&h->conn_lock);
    k->got += n;
    pthread_mutex_unlock(&h->conn_lock);
}

/* Why the server cut k, or NULL. */
const char *svc_conn_cut(svc_http *h, conn *k)
{
    const char *why = NULL;

    if (k == NULL)
        return NULL;
    pthread_mutex_lock(&h->conn_lock);
    why = k->cut;
    pthread_mutex_unlock(&h->conn_lock);
    return why;
}

/* Stopping: requests waiting for body memory or a slot go on (and get
 * 503). */
void svc_wake_all(svc_http *h)
{
    pthread_mutex_lock(&h->lock);
    pthread_cond_broadcast(&h->body_room);
    pthread_mutex_unlock(&h->lock);
    pthread_mutex_lock(&h->slot_lock);
    for (struct slot_waiter *w = h->wait_head; w; w = w->next)
        pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&h->slot_lock);
}

/* Past the grace: every connection is cut (and logged as cut). */
void svc_cut_all(svc_http *h)
{
    pthread_mutex_lock(&h->conn_lock);
    for (conn *k = h->conns; k; k = k->next)
        if (k->cut == NULL) {
            k->cut = "shutdown";
            shutdown(k->fd, SHUT_RDWR);
        }
    pthread_mutex_unlock(&h->conn_lock);
}

static void conn_started(svc_http *h, struct MHD_Connection *c,
                         void **socket_context)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    conn *k;

    *socket_context = NULL;
    if (ci == NULL || (k = calloc(1, sizeof *k)) == NULL) {
        svc_log(h, VEIL_LOG_ERROR, "a connection without deadlines (%s)",
                ci ? "out of memory" : "no socket");
        return;
    }
    k->fd = ci->connect_fd;
    k->h = h;
    const union MHD_ConnectionInfo *ai =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    svc_addr_text(ai ? ai->client_addr : NULL, k->addr, sizeof k->addr);
    k->phase = P_HEAD;
    k->since = svc_now();
    pthread_mutex_lock(&h->conn_lock);
    k->next = h->conns;
    if (h->conns)
        h->conns->prev = k;
    h->conns = k;
    pthread_mutex_unlock(&h->conn_lock);
    *socket_context = k;
}

/* MHD_OPTION_NOTIFY_CONNECTION: tracks each connection for the watchdog;
 * at the close, a connection refused before its body goes to the drain
 * (a dup of its socket, so MHD's close does not reset it). */
void svc_on_connection(void *cls, struct MHD_Connection *c,
                       void **socket_context,
                       enum MHD_ConnectionNotificationCode code)
{
    svc_http *h = cls;
    conn *k;

    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        conn_started(h, c, socket_context);
        return;
    }
    if ((k = *socket_context) == NULL)
        return;
    pthread_mutex_lock(&h->conn_lock);
    if (k->prev)
        k->prev->next = k->next;
    else
        h->conns = k->next;
    if (k->next)
        k->next->prev = k->prev;
    if (k->linger && !k->cut && !h->watch_stop && h->n_linger < LINGER_MAX) {
        int fd = fcntl(k->fd, F_DUPFD_CLOEXEC, 0);
        if (fd >= 0) {
            shutdown(fd, SHUT_WR);
            h->lingering[h->n_linger++] = (struct drain_fd){fd, svc_now(), 0};
        }
    }
    pthread_mutex_unlock(&h->conn_lock);
    free(k);
    *socket_context = NULL;
}

/* Reads and drops what a refused connection still sends.  1 when it is
 * done (end of input, error, too much, too slow). */
static int drain(const svc_http_config *cfg, struct drain_fd *l, double now)
{
    char buf[16384];
    ssize_t n;

    while ((n = recv(l->fd, buf, sizeof buf, MSG_DONTWAIT)) > 0) {
        l->got += (size_t)n;
        if (l->got > DISCARD_MAX)
            return 1;
    }
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
        return 1;
    return body_late(cfg, now - l->since, l->got) != NULL;
}

/* Why a connection in its phase for el seconds must be cut, or NULL. */
static const char *conn_late(const svc_http_config *cfg, const conn *k,
                             double el)
{
    switch (k->phase) {
    case P_HEAD:
        return el > cfg->header_timeout ? "header_timeout" : NULL;
    case P_BODY:
        return body_late(cfg, el, k->got);
    case P_SEND:
        return el > cfg->answer_timeout ? "answer_timeout" : NULL;
    case P_WAIT:
    case P_WORK:
        break;
    }
    return NULL;
}

/* Drains the refused connections whose bytes came (or all, every 0.2 s);
 * the first n have their poll results in pf (conn_lock held). */
static void drain_all(svc_http *h, const struct pollfd *pf, int n, double now,
                      double last)
{
    int keep = 0;

    /* entries past n came in during the poll: kept as they are */
    for (int i = 0; i < h->n_linger; i++) {
        struct drain_fd *l = &h->lingering[i];
        if (i < n && (pf[i].revents || now - last >= 0.2) &&
            drain(&h->cfg, l, now)) {
            close(l->fd);
            continue;
        }
        h->lingering[keep++] = *l;
    }
    h->n_linger = keep;
}

/* Cuts the connections past a deadline (conn_lock held). */
static void cut_late(svc_http *h, double now)
{
    for (conn *k = h->conns; k; k = k->next) {
        const char *why = conn_late(&h->cfg, k, now - k->since);
        if (why && !k->cut) {
            k->cut = why;
            shutdown(k->fd, SHUT_RDWR);
            svc_log(h, k->phase == P_HEAD ? VEIL_LOG_DEBUG : VEIL_LOG_INFO,
                    "connection closed: %s (client %s)", why, k->addr);
        }
    }
}

/* Cuts the connections past a deadline, every WATCH_TICK_MS, and drains
 * refused ones as their bytes come. */
void *svc_watchdog(void *arg)
{
    svc_http *h = arg;
    struct pollfd pf[LINGER_MAX];
    double last = 0;

    pthread_mutex_lock(&h->conn_lock);
    while (!h->watch_stop) {
        int n = h->n_linger;
        for (int i = 0; i < n; i++)
            pf[i] = (struct pollfd){h->lingering[i].fd, POLLIN, 0};
        pthread_mutex_unlock(&h->conn_lock);
        if (n > 0)
            poll(pf, (nfds_t)n, WATCH_TICK_MS);
        else
            poll(NULL, 0, WATCH_TICK_MS);
        pthread_mutex_lock(&h->conn_lock);
        double now = svc_now();
        drain_all(h, pf, n, now, last);
        if (now - last < WATCH_TICK_MS / 1000.0)
            continue;
        last = now;
        cut_late(h, now);
    }
    for (int i = 0; i < h->n_linger; i++)
        close(h->lingering[i].fd);
    h->n_linger = 0;
    pthread_mutex_unlock(&h->conn_lock);
    return NULL;
}
