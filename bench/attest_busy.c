/* veil-bench attest, its last row: `standard` throughput while `maximum`
 * traffic saturates the TPM (bench_attest_busy; issue 16 item 4).
 *
 * veild E: the same software server key as A, tpm = on, and the test
 * stand-in tpm_test_delay = BUSY_TPM_MS, so that each TPM operation takes
 * as long as a quote on a slow hardware TPM (swtpm alone answers in about
 * 1.5 ms and could not be saturated without the clients eating the CPU).
 * The TPM's line is veild's default: 1 operation at once, 8 waiting.
 *
 * BUSY_STD standard clients send the same number of requests in rounds
 * that alternate two phases: with BUSY_MAX maximum clients sending all the
 * while (each at once again after an answer, 1 s after a 503: the least
 * Retry-After veild sends), and
 * without them.  ratio = standard req/s with / without (target >= 0.9).
 * The maximum clients' 200s and 503s are counted: 200s at about the TPM's
 * rate (1000 / BUSY_TPM_MS a second) and many 503s show it saturated.
 *
 * No timed assertions: BELOW never changes the exit status.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_gw.h"

#define BUSY_TPM_MS 100 /* tpm_test_delay of veild E */
#define STR_(x) #x
#define STR(x) STR_(x)
#define BUSY_STD 4     /* standard clients */
#define BUSY_MAX 12    /* maximum clients: more than the line holds (9) */
#define BUSY_REQ_PER 4 /* standard requests per phase: 4 x --requests */
#define BUSY_ROUNDS_MAX 5
#define BUSY_PAUSE_S 1.0 /* after a 503: the least Retry-After veild sends */
#define TARGET_BUSY_RATIO 0.90

/* The maximum clients. */
typedef struct busy_max {
    const gw *g;
    target *t;
    atomic_int stop;
    atomic_uint seq;
    atomic_uint ok, busy, other;
    pthread_t th[BUSY_MAX];
    unsigned started;
    char url[128];
} busy_max;

static void *max_thread(void *arg)
{
    busy_max *m = arg;
    http c;

    if (http_init(&c, m->url) != 0) {
        atomic_fetch_add(&m->other, 1);
        return NULL;
    }
    while (!atomic_load(&m->stop)) {
        item it = {.seq = atomic_fetch_add(&m->seq, 1),
                   .kind = K_VALID,
                   .prompt_len = SMALL_PROMPT,
                   .tier = "maximum",
                   .want = W_TPM};
        long status = 0;
        double secs;

        if (item_seal(m->g, m->t->pub, &it) != 0 ||
            http_post(m->g, &c, &it, &status, &secs) != 0) {
            item_clear(&it);
            atomic_fetch_add(&m->other, 1);
            break;
        }
        item_clear(&it);
        if (status == 200) {
            atomic_fetch_add(&m->ok, 1);
        } else if (status == 503) {
            atomic_fetch_add(&m->busy, 1);
            sleep_s(BUSY_PAUSE_S);
        } else {
            atomic_fetch_add(&m->other, 1);
            sleep_s(BUSY_PAUSE_S);
        }
    }
    http_free(&c);
    return NULL;
}

static int max_start(busy_max *m)
{
    atomic_store(&m->stop, 0);
    for (m->started = 0; m->started < BUSY_MAX; m->started++)
        if (pthread_create(&m->th[m->started], NULL, max_thread, m) != 0) {
            fprintf(stderr, "veil-bench: cannot start a maximum client\n");
            return -1;
        }
    return 0;
}

static void max_stop(busy_max *m)
{
    atomic_store(&m->stop, 1);
    for (unsigned i = 0; i < m->started; i++)
        pthread_join(m->th[i], NULL);
    m->started = 0;
}

int bench_attest_busy(const gw *g, const target *tmpl, unsigned *seq)
{
    const bench_opts *o = g->o;
    unsigned rounds = o->rounds < BUSY_ROUNDS_MAX ? o->rounds : BUSY_ROUNDS_MAX;
    unsigned n = BUSY_REQ_PER * o->requests, r;
    double with[MAX_ROUNDS], without[MAX_ROUNDS], wall, rw, rwo, ratio;
    double max_s = 0, t0;
    busy_max *m = xcalloc(1, sizeof *m);
    target t = *tmpl;
    client_set cs;
    char etext[96];
    errs er;
    int ret = -1, started = 0;

    memset(&cs, 0, sizeof cs);
    memset(&t.v, 0, sizeof t.v);
    errs_init(&er);
    if (m == NULL)
        goto out;
    t.name = "E standard + saturated TPM";
    t.token = 0;
    t.nextra = 0;
    t.extra[t.nextra++] = "--tpm";
    t.extra[t.nextra++] = "on";
    t.extra[t.nextra++] = "--tpm-tcti";
    t.extra[t.nextra++] = o->tcti;
    t.extra[t.nextra++] = "--tpm-test-delay";
    t.extra[t.nextra++] = STR(BUSY_TPM_MS);
    if (veild_start(g, &t.v, "attest-e", &t,
                    2 * rounds * (n + 64 * BUSY_MAX) + 4096, "16M") != 0)
        goto out;
    started = 1;
    if (veild_check_key(&t) != 0)
        goto out;
    m->g = g;
    m->t = &t;
    atomic_init(&m->seq, 1u << 30);
    snprintf(m->url, sizeof m->url, "%s" ROUTE, t.v.url);
    printf("# E: veild pid %ld, %s: the software key, tpm = on, "
           "tpm_test_delay = %d ms (a test stand-in\n"
           "#   for a slow hardware TPM), tpm_workers 1, tpm_queue 8 "
           "(the defaults); %u standard clients,\n"
           "#   %u requests a phase, %u rounds alternating a phase with %u "
           "maximum clients sending all\n"
           "#   the while (1 s pause after a 503) and one without; "
           "ratio = standard req/s with / without\n",
           (long)t.v.p.pid, t.v.url, BUSY_TPM_MS, BUSY_STD, n, rounds,
           BUSY_MAX);
    fflush(stdout);
    if (clients_open(g, &t, &cs, BUSY_STD, n, seq) != 0)
        goto out;
    for (r = 0; r < rounds; r++) {
        for (int phase = 0; phase < 2; phase++) {
            if (clients_seal(g, &t, &cs, n, seq) != 0)
                goto out;
            t0 = now_s();
            if (phase == 0 && max_start(m) != 0)
                goto out;
            if (phase == 0)
                sleep_s(1.0); /* the TPM's line fills */
            if (clients_run(g, &cs, n, NULL, &er, &wall) != 0)
                goto out;
            if (phase == 0) {
                max_stop(m);
                max_s += now_s() - t0;
                with[r] = (double)n / wall;
            } else {
                without[r] = (double)n / wall;
            }
            clients_clear(&cs, n);
        }
    }
    rw = median(with, rounds);
    rwo = median(without, rounds);
    ratio = rwo > 0 ? rw / rwo : 0;
    snprintf(etext, sizeof etext, "%u", errs_total(&er));
    printf("%-38s %9s %9s %7s %6s\n", "standard while maximum saturates TPM",
           "req/s", "alone", "ratio", "errors");
    printf("%-38s %9.1f %9.1f %7.3f %6s  %s%s\n", "E standard, 4 clients", rw,
           rwo, ratio, etext,
           ratio < TARGET_BUSY_RATIO ? "BELOW ratio 0.9" : "ok (>= 0.9)",
           errs_total(&er) ? " ERRORS" : "");
    printf(
        "#   maximum clients during the phases with them (%.1f s): %u "
        "answered 200 (%.1f/s; the TPM's\n"
        "#   rate is below %.1f/s), %u answered 503 + Retry-After (TPM busy), "
        "%u other\n",
        max_s, atomic_load(&m->ok), max_s > 0 ? atomic_load(&m->ok) / max_s : 0,
        1000.0 / BUSY_TPM_MS, atomic_load(&m->busy), atomic_load(&m->other));
    errs_report(&er);
    fflush(stdout);
    ret = atomic_load(&m->other) ? -1 : 0;
    if (ret)
        fprintf(stderr,
                "veil-bench: E: %u maximum requests answered "
                "neither 200 nor 503\n",
                atomic_load(&m->other));
out:
    if (m && m->started)
        max_stop(m);
    clients_close(&cs);
    if (started && veild_stop(&t.v) != 0)
        ret = -1;
    free(m);
    return ret;
}
