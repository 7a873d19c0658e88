/* veil-bench gateway: refusal timing.  Packages of three failing kinds
 * and a valid one, one client, in shuffled order: latency medians and
 * ratios.
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

/* ---- refusal timing ----------------------------------------------------- */

uint32_t xorshift(uint32_t *s)
{
    uint32_t x = *s;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

int run_timing(const gw *g, target *t, unsigned *seq)
{
    unsigned n = g->o->timing_n, i, k;
    double *lat[K_N] = {NULL}, q[K_N][3];
    item it[K_N];
    int order[K_N], ret = -1;
    char url[128], sz[32], etext[96];
    uint32_t rs = 0;
    http c;
    errs er;

    errs_init(&er);
    memset(it, 0, sizeof it);
    memset(&c, 0, sizeof c);
    for (k = 0; k < K_N; k++)
        if (!(lat[k] = xcalloc(n, sizeof *lat[k])))
            goto out;
    if (RAND_bytes((unsigned char *)&rs, sizeof rs) != 1 || rs == 0)
        rs = 0x9e3779b9u;
    snprintf(url, sizeof url, "%s" ROUTE, t->v.url);
    if (http_init(&c, url) != 0)
        goto out;
    size_name(TIMING_PROMPT, sz, sizeof sz);
    printf("# refusal timing: %s veild, 1 client, %s prompt, %u packages of "
           "each kind in shuffled\n"
           "#   order, sealed just before sending; latency = POST wall time; "
           "failing kinds must all get\n"
           "#   the one fixed 400 answer (%s)\n",
           t->name, sz, n, UNDECRYPTABLE);
    printf("%-36s %9s %9s %9s %9s %9s\n", "measurement", "p25 ms", "median ms",
           "p75 ms", "vs oaep", "diff us");
    fflush(stdout);
    for (k = 0; k < K_N; k++) {
        order[k] = (int)k;
        it[k].kind = (pkg_kind)k;
        it[k].prompt_len = TIMING_PROMPT;
    }
    /* one of each first, not counted: warms the connection and veild */
    for (i = 0; i <= n; i++) {
        for (k = K_N - 1; k > 0; k--) {
            unsigned j = xorshift(&rs) % (k + 1);
            int tmp = order[k];
            order[k] = order[j];
            order[j] = tmp;
        }
        for (k = 0; k < K_N; k++) {
            item *p = &it[order[k]];
            double s;

            p->seq = (*seq)++;
            if (item_seal(g, t->pub, p) != 0)
                goto out;
            s = run_item(g, &c, p, 1, &er);
            if (i > 0)
                lat[order[k]][i - 1] = s;
        }
    }
    for (k = 0; k < K_N; k++) {
        sort_doubles(lat[k], n);
        q[k][0] = quantile(lat[k], n, 0.25) * 1e3;
        q[k][1] = quantile(lat[k], n, 0.50) * 1e3;
        q[k][2] = quantile(lat[k], n, 0.75) * 1e3;
    }
    for (k = 0; k < K_N; k++) {
        char name[64], vs[16] = "-", diff[16] = "-";

        snprintf(name, sizeof name, "timing %s", KIND_NAME[k]);
        if (k > K_BAD_OAEP) {
            snprintf(vs, sizeof vs, "%.3f", q[k][1] / q[K_BAD_OAEP][1]);
            snprintf(diff, sizeof diff, "%+.0f",
                     (q[k][1] - q[K_BAD_OAEP][1]) * 1e3);
        }
        printf("%-36s %9.3f %9.3f %9.3f %9s %9s\n", name, q[k][0], q[k][1],
               q[k][2], vs, diff);
    }
    errs_text(&er, etext, sizeof etext);
    printf("#   errors: %s\n", etext);
    errs_print_first(&er);
    fflush(stdout);
    ret = 0;
out:
    for (k = 0; k < K_N; k++) {
        item_clear(&it[k]);
        free(lat[k]);
    }
    http_free(&c);
    return ret;
}
