/* veil-bench gateway: veild's memory.
 *
 * Memory: a fresh veild, VmRSS when idle, then waves of 64 concurrent
 * 1 MiB requests while VmRSS is sampled; VmHWM at the end.  Then the same
 * with many small values: a short prompt beside 1 MiB of [0,0,...].
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

/* ---- memory ------------------------------------------------------------- */

typedef struct sampler {
    pid_t pid;
    atomic_int stop;
    unsigned long peak_rss; /* KiB */
    unsigned samples;
} sampler;

static void *sampler_thread(void *arg)
{
    sampler *s = arg;
    unsigned long rss, hwm;

    while (!atomic_load(&s->stop)) {
        if (proc_mem(s->pid, &rss, &hwm) == 0) {
            if (rss > s->peak_rss)
                s->peak_rss = rss;
            s->samples++;
        }
        sleep_s(0.002);
    }
    return NULL;
}

static double mib(unsigned long kib)
{
    return (double)kib / 1024.0;
}

/* A fresh veild; VmRSS after one small request; then waves of MEM_CLIENTS
 * concurrent 1 MiB requests (one new connection each): a 1 MiB prompt, or
 * with small_values a short prompt beside 1 MiB of [0,0,...] (the body
 * that made one cJSON tree per request cost ~85 times its size). */
int run_memory(const gw *g, target *t, unsigned *seq, int small_values)
{
    unsigned w, i, nw = g->o->mem_waves;
    unsigned long idle_rss, hwm, after_rss = 0;
    http *clients = xcalloc(MEM_CLIENTS, sizeof *clients);
    item *items = xcalloc(MEM_CLIENTS, sizeof *items);
    double *lat = xcalloc(MEM_CLIENTS, sizeof *lat), wall, above;
    char url[128], etext[96];
    int ret = -1, started = 0;
    pthread_t th;
    sampler s;
    load l;
    errs er;

    errs_init(&er);
    if (!clients || !items || !lat)
        goto out;
    if (veild_start(g, &t->v, small_values ? "memory-small" : "memory", t,
                    1u << 18, MEM_BODY_LIMIT) != 0)
        goto out;
    started = 1;
    if (small_values)
        printf("# memory, many small values: as below, but each request is a "
               "short prompt\n"
               "#   beside \"x\": [0,0,...] of 1 MiB (half a million "
               "values); target: peak above idle\n"
               "#   <= 4 x body_limit x workers\n");
    printf("# memory: a fresh veild (%s key, body_limit %s, workers %u%s, "
           "replay_capacity 262144),\n"
           "#   VmRSS and VmHWM from /proc/%ld/status; idle = VmRSS after one "
           "small request; then %u wave%s\n"
           "#   of %u clients sending one 1MiB prompt each at once (new "
           "connections; answers ~1 MiB,\n"
           "#   all opened and checked); VmRSS sampled every 2 ms; above idle "
           "= VmHWM - idle\n",
           t->name, MEM_BODY_LIMIT,
           g->o->workers ? g->o->workers : VEILD_WORKERS_DEFAULT,
           g->o->workers ? "" : " (default)", (long)t->v.p.pid, nw,
           nw == 1 ? "" : "s", MEM_CLIENTS);
    fflush(stdout);
    snprintf(url, sizeof url, "%s" ROUTE, t->v.url);

    /* warm-up: one small request */
    if (http_init(&clients[0], url) != 0)
        goto out;
    items[0] =
        (item){.seq = (*seq)++, .kind = K_VALID, .prompt_len = SMALL_PROMPT};
    if (item_seal(g, t->pub, &items[0]) != 0)
        goto out;
    run_item(g, &clients[0], &items[0], 1, &er);
    item_clear(&items[0]);
    http_free(&clients[0]);
    if (errs_total(&er)) {
        fprintf(stderr, "veil-bench: memory: warm-up request failed: %s\n",
                er.first);
        goto out;
    }
    sleep_s(0.2);
    if (proc_mem(t->v.p.pid, &idle_rss, &hwm) != 0) {
        fprintf(stderr, "veil-bench: cannot read /proc/%ld/status\n",
                (long)t->v.p.pid);
        goto out;
    }
    printf("%-36s %9.1f MiB (VmHWM %.1f)\n", "memory idle VmRSS", mib(idle_rss),
           mib(hwm));
    fflush(stdout);

    for (w = 0; w < nw; w++) {
        for (i = 0; i < MEM_CLIENTS; i++)
            items[i] =
                (item){.seq = (*seq)++,
                       .kind = K_VALID,
                       .prompt_len = small_values ? SMALL_PROMPT : MEM_PROMPT,
                       .small_values = small_values ? MEM_PROMPT : 0};
        if (seal_all(g, t->pub, items, MEM_CLIENTS) != 0)
            goto out;
        for (i = 0; i < MEM_CLIENTS; i++)
            if (http_init(&clients[i], url) != 0)
                goto out;
        memset(&s, 0, sizeof s);
        s.pid = t->v.p.pid;
        atomic_init(&s.stop, 0);
        if (pthread_create(&th, NULL, sampler_thread, &s) != 0) {
            fprintf(stderr, "veil-bench: pthread_create failed\n");
            goto out;
        }
        l = (load){.g = g,
                   .items = items,
                   .n = MEM_CLIENTS,
                   .lat = lat,
                   .clients = clients,
                   .nclients = MEM_CLIENTS,
                   .one_each = 1,
                   .check_all = 1,
                   .er = &er};
        if (run_load(&l, &wall) != 0) {
            atomic_store(&s.stop, 1);
            pthread_join(th, NULL);
            goto out;
        }
        for (i = 0; i < MEM_CLIENTS; i++) {
            http_free(&clients[i]);
            item_clear(&items[i]);
        }
        sleep_s(0.2);
        atomic_store(&s.stop, 1);
        pthread_join(th, NULL);
        if (proc_mem(t->v.p.pid, &after_rss, &hwm) != 0)
            goto out;
        sort_doubles(lat, MEM_CLIENTS);
        printf("memory wave %-2u peak VmRSS %7.1f  VmHWM %7.1f  after %7.1f "
               "MiB; %.2f s, p50 %.0f ms\n",
               w + 1, mib(s.peak_rss), mib(hwm), mib(after_rss), wall,
               quantile(lat, MEM_CLIENTS, 0.5) * 1e3);
        fflush(stdout);
    }
    above = mib(hwm) - mib(idle_rss);
    errs_text(&er, etext, sizeof etext);
    if (small_values) {
        unsigned workers =
            g->o->workers ? g->o->workers : VEILD_WORKERS_DEFAULT;
        double goal = 4.0 * MEM_BODY_LIMIT_MIB * workers;

        printf("%-36s %9.1f MiB  target <= %.0f (4 x %g MiB x %u)  %s\n",
               "memory peak above idle, small values", above, goal,
               MEM_BODY_LIMIT_MIB, workers,
               above <= goal ? (errs_total(&er) ? "ok, but ERRORS" : "ok")
                             : "BELOW");
    } else {
        printf("%-36s %9.1f MiB  target < %.0f  %s\n", "memory peak above idle",
               above, TARGET_MEM_MIB,
               above < TARGET_MEM_MIB
                   ? (errs_total(&er) ? "ok, but ERRORS" : "ok")
                   : "BELOW");
    }
    printf("#   after the last wave: %.1f MiB above idle; errors: %s\n",
           mib(after_rss) - mib(idle_rss), etext);
    errs_print_first(&er);
    fflush(stdout);
    ret = 0;
out:
    for (i = 0; clients && i < MEM_CLIENTS; i++)
        http_free(&clients[i]);
    for (i = 0; items && i < MEM_CLIENTS; i++)
        item_clear(&items[i]);
    if (started && veild_stop(&t->v) != 0)
        ret = -1;
    free(clients);
    free(items);
    free(lat);
    return ret;
}
