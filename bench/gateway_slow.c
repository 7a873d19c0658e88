/* veil-bench gateway: slow clients.
 *
 * Slow clients (software key): SLOW_CLIENTS legitimate clients, in rounds
 * alternating a phase with 16 slow uploaders and 16 slow readers connected
 * and a phase without them; ratio = req/s with / req/s without.  A slow
 * uploader declares 4 MiB and sends 20 KiB/s (above veild's default
 * body_min_rate: it is not cut for its rate); a slow reader sends a whole
 * request with a 4 MiB prompt and then reads 1 KiB of the answer a second
 * through a 4 KiB window.  Either reconnects when veild closes it.
 *
 * No timed assertions: BELOW never changes the exit status.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "bench_gw.h"
#include "package.h"

/* ---- slow clients ---------------------------------------------------------
 */

typedef struct slow_conn {
    int fd; /* -1: (re)connect at the next tick */
    int reader;
    size_t sent;    /* uploader: body bytes sent */
    char *req;      /* reader: the whole request */
    size_t req_len; /* and how much of it went */
    size_t req_off;
    size_t got; /* reader: answer bytes read */
    double next_read;
} slow_conn;

typedef struct slow_attack {
    const gw *g;
    target *t;
    unsigned port;
    slow_conn c[SLOW_UPLOADERS + SLOW_READERS];
    atomic_int stop;
    atomic_uint seq;
    unsigned reconnects[2]; /* after veild closed one: uploaders, readers */
    int ready;              /* all connected, every reader's answer begun */
    pthread_mutex_t lock;
    pthread_t th;
} slow_attack;

/* The head of a completion request with body_len bytes to come. */
static int slow_head(const slow_attack *a, char *head, size_t size,
                     const char *pid, size_t body_len)
{
    int hl = snprintf(head, size,
                      "POST " ROUTE " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      "Content-Type: application/octet-stream\r\n"
                      "X-Payload-ID: %s\r\n%s\r\n"
                      "X-Security-Tier: standard\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      pid, a->g->pubkey_hdr, body_len);

    return hl > 0 && (size_t)hl < size ? hl : -1;
}

static int slow_connect(slow_attack *a, slow_conn *c)
{
    struct sockaddr_in sa;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), rcv = 4096;
    char head[8192];

    if (fd < 0)
        return -1;
    if (c->reader)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)a->port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    free(c->req);
    c->req = NULL;
    c->sent = c->got = c->req_off = 0;
    if (c->reader) {
        item it = {.seq = atomic_fetch_add(&a->seq, 1),
                   .kind = K_VALID,
                   .prompt_len = SLOW_PROMPT};
        int hl;

        if (item_seal(a->g, a->t->pub, &it) != 0) {
            close(fd);
            return -1;
        }
        hl = slow_head(a, head, sizeof head, it.pid, it.len);
        c->req = hl > 0 ? malloc((size_t)hl + it.len) : NULL;
        if (c->req == NULL) {
            item_clear(&it);
            close(fd);
            return -1;
        }
        memcpy(c->req, head, (size_t)hl);
        memcpy(c->req + hl, it.pkg, it.len);
        c->req_len = (size_t)hl + it.len;
        item_clear(&it);
    } else {
        char pid[37];
        int hl;

        if (veil_uuid4(a->g->e, pid) != VEIL_OK) {
            veil_fail("veil_uuid4");
            close(fd);
            return -1;
        }
        hl = slow_head(a, head, sizeof head, pid, SLOW_DECLARED);
        if (hl < 0 || send(fd, head, (size_t)hl, MSG_NOSIGNAL) != hl) {
            close(fd);
            return -1;
        }
    }
    c->fd = fd;
    c->next_read = now_s() + 1;
    return 0;
}

static void slow_close(slow_attack *a, slow_conn *c)
{
    close(c->fd);
    c->fd = -1;
    a->reconnects[c->reader]++;
}

/* The attackers, all in one thread: a tick every SLOW_TICK_MS. */
static void *slow_thread(void *arg)
{
    slow_attack *a = arg;
    enum { N = SLOW_UPLOADERS + SLOW_READERS };
    static const char zeros[SLOW_UPLOAD_RATE / (1000 / SLOW_TICK_MS)];
    double next_tick = now_s();

    while (!atomic_load(&a->stop)) {
        struct pollfd p[N];
        double now = now_s();
        int ready = 1;

        for (int i = 0; i < N; i++) {
            slow_conn *c = &a->c[i];

            if (c->fd < 0 && slow_connect(a, c) != 0)
                c->fd = -1;
            p[i] = (struct pollfd){c->fd, 0, 0};
            if (c->fd < 0) {
                ready = 0;
                continue;
            }
            if (!c->reader || now >= c->next_read)
                p[i].events |= POLLIN;
            if (c->reader && c->req_off < c->req_len)
                p[i].events |= POLLOUT;
            if (c->reader && c->got == 0)
                ready = 0;
        }
        pthread_mutex_lock(&a->lock);
        a->ready = ready;
        pthread_mutex_unlock(&a->lock);
        poll(p, N, SLOW_TICK_MS);
        now = now_s();
        for (int i = 0; i < N; i++) {
            slow_conn *c = &a->c[i];
            char buf[1024];
            ssize_t n;

            if (c->fd < 0)
                continue;
            if (p[i].revents & POLLOUT) {
                n = send(c->fd, c->req + c->req_off, c->req_len - c->req_off,
                         MSG_NOSIGNAL);
                if (n > 0)
                    c->req_off += (size_t)n;
                else if (n < 0 && errno != EAGAIN) {
                    slow_close(a, c);
                    continue;
                }
            }
            if (p[i].revents & (POLLIN | POLLHUP | POLLERR)) {
                n = recv(c->fd, buf, sizeof buf, 0);
                if (n > 0 && c->reader) {
                    c->got += (size_t)n;
                    c->next_read = now + 1;
                } else if (n == 0 || (n < 0 && errno != EAGAIN) || !c->reader) {
                    /* closed by veild (or an uploader answered) */
                    slow_close(a, c);
                    continue;
                }
            }
            if (!c->reader && now >= next_tick &&
                c->sent + sizeof zeros < SLOW_DECLARED) {
                n = send(c->fd, zeros, sizeof zeros, MSG_NOSIGNAL);
                if (n > 0)
                    c->sent += (size_t)n;
                else if (n < 0 && errno != EAGAIN)
                    slow_close(a, c);
            }
        }
        if (now >= next_tick)
            next_tick += SLOW_TICK_MS / 1000.0;
    }
    return NULL;
}

static int slow_start(slow_attack *a, const gw *g, target *t, unsigned seq0)
{
    const char *colon = strrchr(t->v.url, ':');
    double until;

    memset(a, 0, sizeof *a);
    a->g = g;
    a->t = t;
    a->port = colon ? (unsigned)strtoul(colon + 1, NULL, 10) : 0;
    atomic_init(&a->stop, 0);
    atomic_init(&a->seq, seq0);
    pthread_mutex_init(&a->lock, NULL);
    for (int i = 0; i < SLOW_UPLOADERS + SLOW_READERS; i++) {
        a->c[i].fd = -1;
        /* readers first: sealing their 4 MiB requests takes a while, and
         * an uploader connected before that would fall behind its rate */
        a->c[i].reader = i < SLOW_READERS;
    }
    if (pthread_create(&a->th, NULL, slow_thread, a) != 0) {
        fprintf(stderr, "veil-bench: pthread_create failed\n");
        return -1;
    }
    /* every one connected and every reader's answer on its way */
    until = now_s() + START_WAIT_S;
    for (;;) {
        int ready;

        pthread_mutex_lock(&a->lock);
        ready = a->ready;
        pthread_mutex_unlock(&a->lock);
        if (ready)
            return 0;
        if (now_s() > until) {
            fprintf(stderr,
                    "veil-bench: the slow clients did not get going "
                    "within %.0f s\n",
                    START_WAIT_S);
            return -1;
        }
        sleep_s(0.05);
    }
}

/* Stops the attack; the connections it held at the end: *held (all of
 * them, unless veild had just closed some). */
static void slow_stop(slow_attack *a, unsigned *held)
{
    atomic_store(&a->stop, 1);
    pthread_join(a->th, NULL);
    *held = 0;
    for (int i = 0; i < SLOW_UPLOADERS + SLOW_READERS; i++) {
        if (a->c[i].fd >= 0) {
            close(a->c[i].fd);
            ++*held;
        }
        free(a->c[i].req);
    }
    pthread_mutex_destroy(&a->lock);
}

/* One line: SLOW_CLIENTS clients' req/s with the slow ones connected,
 * against the same without them, rounds alternating. */
int run_slow(const gw *g, target *t, unsigned *seq)
{
    const bench_opts *o = g->o;
    unsigned n = o->requests, r, nc = SLOW_CLIENTS, held;
    unsigned held_min = SLOW_UPLOADERS + SLOW_READERS, reconnects[2] = {0, 0};
    double *all = xcalloc((size_t)n * o->rounds, sizeof *all);
    double with[MAX_ROUNDS], without[MAX_ROUNDS], wall, rw, rwo, ratio;
    double p50, p99;
    char name[64], etext[96];
    slow_attack *a = xcalloc(1, sizeof *a);
    int ret = -1;
    client_set cs;
    errs er;

    errs_init(&er);
    if (clients_open(g, t, &cs, nc, n, seq) != 0 || !all || !a)
        goto out;
    for (r = 0; r < o->rounds; r++) {
        for (int phase = 0; phase < 2; phase++) {
            if (clients_seal(g, t, &cs, n, seq) != 0)
                goto out;
            if (phase == 0 && slow_start(a, g, t, 1u << 30 | r << 20) != 0)
                goto out;
            if (clients_run(g, &cs, n, NULL, &er, &wall) != 0)
                goto out;
            if (phase == 0) {
                slow_stop(a, &held);
                held_min = held < held_min ? held : held_min;
                reconnects[0] += a->reconnects[0];
                reconnects[1] += a->reconnects[1];
                memcpy(all + (size_t)r * n, cs.lat, n * sizeof *cs.lat);
                with[r] = (double)n / wall;
            } else {
                without[r] = (double)n / wall;
            }
            clients_clear(&cs, n);
        }
    }
    rw = median(with, o->rounds);
    rwo = median(without, o->rounds);
    ratio = rwo > 0 ? rw / rwo : 0;
    p50_p99(all, (size_t)n * o->rounds, &p50, &p99);
    snprintf(name, sizeof name, "%s %u cl. +%u/%u slow", t->name, nc,
             SLOW_UPLOADERS, SLOW_READERS);
    snprintf(etext, sizeof etext, "%u", errs_total(&er));
    printf("%-32s %8.1f %8.1f %6.3f %8.2f %8.2f %7.2f %6s  %s%s\n", name, rw,
           rwo, ratio, p50, p99, p50 > 0 ? p99 / p50 : 0, etext,
           ratio < TARGET_SLOW_RATIO ? "BELOW ratio" : "ok",
           errs_total(&er) ? " ERRORS" : "");
    printf("#   limit/s here: the same %u clients without the slow ones "
           "(alternating phases); slow\n"
           "#   connections held at the end of a phase: at least %u of %u; "
           "reconnects after veild\n"
           "#   closed one: %u uploaders, %u readers over %u phases\n",
           nc, held_min, SLOW_UPLOADERS + SLOW_READERS, reconnects[0],
           reconnects[1], o->rounds);
    errs_report(&er);
    fflush(stdout);
    ret = 0;
out:
    clients_close(&cs);
    free(all);
    free(a);
    return ret;
}
