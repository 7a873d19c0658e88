/* veil-bench attest: what signing and TPM attestation add to the latency
 * of one answer (bench_attest_run).
 *
 * Four veild instances
 * with the same software server key differ only in that work:
 *
 *   A  standard tier, no signing key (the reference)
 *   B  standard tier, signing_key = an ECDSA P-256 key in the token
 *   C  maximum tier, as B plus tpm = on: a TPM quote per answer
 *   D  maximum tier, as C plus tpm_ak_per_request = on: a fresh AK,
 *      TPM2_Certify of it by the long-term AK, and the quote, per answer
 *
 * One client (one keep-alive connection per veild) sends one request at
 * a time; a round is --requests passes, each pass one request to every
 * veild in a shuffled order, so that the four share the machine's drift.
 * Latency is the POST wall time; veild's own time per request comes from
 * its log.  Every answer must be 200 with (B, C, D) or without (A) an
 * X-Veil-Signature header; sampled answers are opened with the client key
 * and must echo the prompt, name the tier, and carry (C, D) or not (A, B)
 * a _metadata.tpm_attestation with is_available true (and aik_certify
 * only for D).
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

/* ---- attest: signing and TPM attestation -------------------------------- */

#define AT_N 4           /* configurations A, B, C, D */
#define AT_WARM 2        /* warm-up requests per veild: checked, not timed */
#define AT_CHECK_EVERY 5 /* every 5th answer of a configuration is opened */

/* One configuration: its veild, its connection and its figures. */
typedef struct at_conf {
    const char *id;       /* "A" */
    const char *what;     /* "standard, no signing key", ... */
    const char *settings; /* veild's settings, for the header */
    const char *tier;
    unsigned want;
    target t;
    int started;
    http c;
    int have_http;
    char warm_pid[AT_WARM][37];
    double *lat; /* every timed request, seconds */
    unsigned n;
    double *round_lat; /* this round's, seconds */
    unsigned round_n;
    double round_med[MAX_ROUNDS]; /* ms */
    double *vms;                  /* veild's own time per request, ms */
    unsigned nv;
    errs er;
    unsigned opened; /* answers opened and checked */
} at_conf;

/* A comparison: conf x over conf ref. */
typedef struct at_cmp {
    unsigned x, ref;
    const char *what;
} at_cmp;

static const at_cmp AT_CMP[] = {
    {1, 0, "signing"},
    {2, 1, "TPM quote"},
    {3, 1, "AK + certify + quote"},
    {3, 2, "AK + certify"},
};

/* veild's own time of each timed request of c, from its log: the lines
 * "POST <route> 200 payload <id> <ms> ms" but the warm-up's. */
static int at_read_log(at_conf *c)
{
    static const char pre[] = "POST " ROUTE " 200 payload ";
    char line[512];
    FILE *f = fopen(c->t.v.p.log, "r");

    if (!f) {
        fprintf(stderr, "veil-bench: cannot open %s: %s\n", c->t.v.p.log,
                strerror(errno));
        return -1;
    }
    while (fgets(line, sizeof line, f) && c->nv < c->n) {
        const char *p = strstr(line, pre);
        double ms;
        int warm = 0;

        if (!p)
            continue;
        p += sizeof pre - 1;
        if (strlen(p) < 36 || sscanf(p + 36, " %lf ms", &ms) != 1)
            continue;
        for (unsigned w = 0; w < AT_WARM; w++)
            warm |= strncmp(p, c->warm_pid[w], 36) == 0;
        if (!warm)
            c->vms[c->nv++] = ms;
    }
    fclose(f);
    return 0;
}

/* The first line of a log holding `needle`, without "veild: info: " and
 * the newline; "" when none. */
static void log_find(const char *path, const char *needle, char *out, size_t n)
{
    char line[512];
    FILE *f = fopen(path, "r");

    out[0] = '\0';
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, needle);

        if (p) {
            const char *start = strstr(line, ": info: ");

            size_t len;

            start = start ? start + 8 : line;
            len = strcspn(start, "\n");
            len = len < n ? len : n - 1;
            memcpy(out, start, len);
            out[len] = '\0';
            break;
        }
    }
    fclose(f);
}

/* One request of c: sealed now, sent, its latency booked (not during the
 * warm-up).  The item is c's next one in sequence. */
static int at_request(const gw *g, at_conf *c, unsigned *seq, int check,
                      int warm, double *secs)
{
    item it = {.seq = (*seq)++,
               .kind = K_VALID,
               .prompt_len = SMALL_PROMPT,
               .tier = c->tier,
               .want = c->want};

    if (item_seal(g, c->t.pub, &it) != 0)
        return -1;
    *secs = run_item(g, &c->c, &it, check, &c->er);
    if (check)
        c->opened++;
    if (warm >= 0)
        snprintf(c->warm_pid[warm], sizeof c->warm_pid[warm], "%s", it.pid);
    item_clear(&it);
    return 0;
}

static void at_print_intro(const gw *g, const at_conf *conf,
                           const veil_key_info *sign, const char *key_ref)
{
    const bench_opts *o = g->o;

    printf("# signing and TPM attestation: the latency they add to one "
           "answer, all measured in the same run\n"
           "#   veild: %s, started here: %u instances, 127.0.0.1, plain "
           "HTTP, model \"%s\" = echo,\n"
           "#     rate/burst 1000000, workers %u%s; the same software server "
           "key for all: RSA-%u made by veil,\n"
           "#     saved to a key directory (%s)\n",
           o->veild, AT_N, MODEL,
           o->workers ? o->workers : VEILD_WORKERS_DEFAULT,
           o->workers ? "" : " (default)", o->bits, key_ref);
    printf("#   signing key: ECDSA P-256 in token \"%s\" (module %s), a token "
           "object made for this run,\n"
           "#     deleted at the end: %s\n"
           "#   TPM: tpm_tcti %s, tpm_pcrs sha256:0,7,10 (veild's default)\n",
           o->token, o->module, sign->fingerprint, o->tcti);
    for (unsigned i = 0; i < AT_N; i++)
        printf("#   %s %-31s X-Security-Tier %-8s  veild: %s\n", conf[i].id,
               conf[i].what, conf[i].tier, conf[i].settings);
    printf("#   one client, one keep-alive connection per veild, one request "
           "at a time; a round is %u passes,\n"
           "#     each pass one request to every veild in a shuffled order; "
           "%u warm-up requests per veild\n"
           "#     first (checked, not timed); every request a new package "
           "sealed just before it is sent;\n"
           "#     %u-byte prompt; client key RSA-%u\n"
           "#   POST ms: wall time of the POST in this process; veild ms: "
           "veild's own time per request\n"
           "#     (its log, 0.1 ms steps); ratio = median / A's median\n"
           "#   checks: every answer 200, with (B, C, D) or without (A) "
           "X-Veil-Signature; every %uth answer\n"
           "#     of each veild opened with the client key: echoes its "
           "prompt, names its tier, and has (C, D)\n"
           "#     or not (A, B) _metadata.tpm_attestation with is_available "
           "true (aik_certify only for D)\n",
           o->requests, AT_WARM, SMALL_PROMPT, CLIENT_BITS, AT_CHECK_EVERY);
    fflush(stdout);
}

static void at_print_results(const gw *g, at_conf *conf)
{
    const bench_opts *o = g->o;
    double med[AT_N], p90[AT_N], vmed[AT_N], vp90[AT_N];
    unsigned i, r;

    for (i = 0; i < AT_N; i++) {
        at_conf *c = &conf[i];

        sort_doubles(c->lat, c->n);
        med[i] = quantile(c->lat, c->n, 0.50) * 1e3;
        p90[i] = quantile(c->lat, c->n, 0.90) * 1e3;
        vmed[i] = vp90[i] = 0;
        if (c->nv) {
            sort_doubles(c->vms, c->nv);
            vmed[i] = quantile(c->vms, c->nv, 0.50);
            vp90[i] = quantile(c->vms, c->nv, 0.90);
        }
    }
    printf("%-38s %5s %9s %9s %9s %9s %7s\n", "configuration", "n", "POST ms",
           "POST p90", "veild ms", "veild p90", "ratio");
    for (i = 0; i < AT_N; i++) {
        char name[64], vm[16] = "-", vp[16] = "-";

        snprintf(name, sizeof name, "%s %s", conf[i].id, conf[i].what);
        if (conf[i].nv) {
            snprintf(vm, sizeof vm, "%.2f", vmed[i]);
            snprintf(vp, sizeof vp, "%.2f", vp90[i]);
        }
        printf("%-38.38s %5u %9.2f %9.2f %9s %9s %7.3f\n", name, conf[i].n,
               med[i], p90[i], vm, vp, med[0] > 0 ? med[i] / med[0] : 0);
    }
    printf(
        "# added ms: the median over the %u rounds of (round median - the "
        "reference's round median),\n"
        "#   with the lowest and highest round; \"of medians\" and \"veild\": "
        "the differences of the\n"
        "#   overall medians (POST, and veild's own); ratio = the "
        "configuration's median / A's\n",
        o->rounds);
    printf("%-38s %9s %15s %10s %9s %7s\n", "comparison", "added ms",
           "rounds lo..hi", "of medians", "veild", "ratio");
    for (size_t k = 0; k < sizeof AT_CMP / sizeof AT_CMP[0]; k++) {
        const at_cmp *m = &AT_CMP[k];
        double d[MAX_ROUNDS], lo, hi;
        char name[64], range[32], vd[16] = "-";

        for (r = 0; r < o->rounds; r++)
            d[r] = conf[m->x].round_med[r] - conf[m->ref].round_med[r];
        sort_doubles(d, o->rounds);
        lo = d[0];
        hi = d[o->rounds - 1];
        snprintf(name, sizeof name, "%s - %s  %s", conf[m->x].id,
                 conf[m->ref].id, m->what);
        snprintf(range, sizeof range, "%+.2f..%+.2f", lo, hi);
        if (conf[m->x].nv && conf[m->ref].nv)
            snprintf(vd, sizeof vd, "%+.2f", vmed[m->x] - vmed[m->ref]);
        printf("%-38s %+9.2f %15s %+10.2f %9s %7.3f\n", name,
               median(d, o->rounds), range, med[m->x] - med[m->ref], vd,
               med[0] > 0 ? med[m->x] / med[0] : 0);
    }
    for (i = 0; i < AT_N; i++) {
        char etext[96];

        errs_text(&conf[i].er, etext, sizeof etext);
        printf("#   %s: %u answers checked for the header, %u opened; "
               "errors: %s\n",
               conf[i].id, conf[i].n + AT_WARM, conf[i].opened, etext);
        errs_print_first(&conf[i].er);
        if (conf[i].nv != conf[i].n)
            printf("#   %s: veild logged %u of the %u timed requests\n",
                   conf[i].id, conf[i].nv, conf[i].n);
    }
    fflush(stdout);
}

/* Starts the four veilds; warm-up; rounds. */
static int at_measure(const gw *g, at_conf *conf, unsigned *seq)
{
    const bench_opts *o = g->o;
    unsigned cap, i, r, p, order[AT_N];
    char url[128], vname[32], line[256];
    uint32_t rs = 0;
    double secs;

    cap = 2 * (o->rounds * o->requests + AT_WARM) + 4096;
    for (i = 0; i < AT_N; i++) {
        at_conf *c = &conf[i];

        snprintf(vname, sizeof vname, "attest-%c", 'a' + (char)i);
        if (veild_start(g, &c->t.v, vname, &c->t, cap, "16M") != 0)
            return -1;
        c->started = 1;
        if (veild_check_key(&c->t) != 0)
            return -1;
        printf("# %s: veild pid %ld, %s\n", c->id, (long)c->t.v.p.pid,
               c->t.v.url);
        snprintf(url, sizeof url, "%s" ROUTE, c->t.v.url);
        if (http_init(&c->c, url) != 0)
            return -1;
        c->have_http = 1;
    }
    log_find(conf[2].t.v.p.log, "TPM: ", line, sizeof line);
    if (line[0])
        printf("#   C's veild: %s\n", line);
    fflush(stdout);

    for (unsigned w = 0; w < AT_WARM; w++)
        for (i = 0; i < AT_N; i++)
            if (at_request(g, &conf[i], seq, 1, (int)w, &secs) != 0)
                return -1;
    for (i = 0; i < AT_N; i++) {
        if (errs_total(&conf[i].er)) {
            fprintf(stderr, "veil-bench: %s %s: warm-up requests failed: %s\n",
                    conf[i].id, conf[i].what, conf[i].er.first);
            return -1;
        }
        conf[i].opened = 0;
    }

    if (RAND_bytes((unsigned char *)&rs, sizeof rs) != 1 || rs == 0)
        rs = 0x9e3779b9u;
    for (i = 0; i < AT_N; i++)
        order[i] = i;
    for (r = 0; r < o->rounds; r++) {
        for (i = 0; i < AT_N; i++)
            conf[i].round_n = 0;
        for (p = 0; p < o->requests; p++) {
            for (unsigned k = AT_N - 1; k > 0; k--) {
                unsigned j = xorshift(&rs) % (k + 1), tmp = order[k];
                order[k] = order[j];
                order[j] = tmp;
            }
            for (unsigned k = 0; k < AT_N; k++) {
                at_conf *c = &conf[order[k]];

                if (at_request(g, c, seq, c->n % AT_CHECK_EVERY == 0, -1,
                               &secs) != 0)
                    return -1;
                c->lat[c->n++] = secs;
                c->round_lat[c->round_n++] = secs;
            }
        }
        for (i = 0; i < AT_N; i++)
            conf[i].round_med[r] =
                median(conf[i].round_lat, conf[i].round_n) * 1e3;
    }
    return 0;
}

int bench_attest_run(const bench_opts *o)
{
    static const char *const ID[AT_N] = {"A", "B", "C", "D"};
    static const char *const WHAT[AT_N] = {
        "standard, no signing key",
        "standard, signing key",
        "maximum, TPM quote",
        "maximum, fresh AK per request",
    };
    static const char *const SETTINGS[AT_N] = {
        "no signing_key",
        "signing_key",
        "signing_key, tpm = on",
        "signing_key, tpm = on, tpm_ak_per_request = on",
    };
    static const char *const TIER[AT_N] = {"standard", "standard", "maximum",
                                           "maximum"};
    static const unsigned WANT[AT_N] = {0, W_SIG, W_SIG | W_TPM,
                                        W_SIG | W_TPM | W_AK_CERT};
    char uri[512], how[160];
    at_conf conf[AT_N];
    veil_keygen_params kp;
    veil_key_info sign_info;
    veil_key *sign = NULL;
    char label[64];
    sw_side sw;
    target t_sw;
    unsigned seq = 0, i;
    int failed = 1, have_sw = 0, st;
    gw g;

    memset(conf, 0, sizeof conf);
    memset(&sw, 0, sizeof sw);
    memset(&t_sw, 0, sizeof t_sw);
    snprintf(how, sizeof how,
             "# %u round%s x %u requests per configuration, one client, "
             "sequential, interleaved; times in ms",
             o->rounds, o->rounds == 1 ? "" : "s", o->requests);
    if ((st = gw_open(&g, o, uri, sizeof uri, how)) != 0) {
        gw_close(&g);
        return st;
    }
    for (i = 0; i < AT_N; i++) {
        errs_init(&conf[i].er);
        conf[i].lat = xcalloc((size_t)o->rounds * o->requests, sizeof(double));
        conf[i].vms = xcalloc((size_t)o->rounds * o->requests, sizeof(double));
        conf[i].round_lat = xcalloc(o->requests, sizeof(double));
        if (!conf[i].lat || !conf[i].vms || !conf[i].round_lat)
            goto out;
    }

    /* the server key, and the signing key in the token */
    have_sw = 1;
    if (sw_setup(&g, &sw, &t_sw) != 0)
        goto out;
    snprintf(label, sizeof label, "veil-bench-attest-%ld", (long)getpid());
    memset(&kp, 0, sizeof kp);
    kp.type = VEIL_KEY_EC_P256;
    kp.label = label;
    if (veil_key_generate(g.e, uri, &kp, &sign) != VEIL_OK) {
        veil_fail("veil_key_generate(EC P-256 signing key in the token)");
        goto out;
    }
    if (veil_key_get_info(sign, &sign_info) != VEIL_OK) {
        veil_fail("veil_key_get_info");
        goto out;
    }

    for (i = 0; i < AT_N; i++) {
        at_conf *c = &conf[i];
        target *t = &c->t;

        c->id = ID[i];
        c->what = WHAT[i];
        c->settings = SETTINGS[i];
        c->tier = TIER[i];
        c->want = WANT[i];
        *t = t_sw;
        memset(&t->v, 0, sizeof t->v);
        t->name = c->what;
        if (i == 0)
            continue;
        t->token = 1; /* the signing key: module and PIN */
        t->extra[t->nextra++] = "--signing-key";
        t->extra[t->nextra++] = sign_info.uri;
        if (i >= 2) {
            t->extra[t->nextra++] = "--tpm";
            t->extra[t->nextra++] = "on";
            t->extra[t->nextra++] = "--tpm-tcti";
            t->extra[t->nextra++] = o->tcti;
        }
        if (i == 3) {
            t->extra[t->nextra++] = "--tpm-ak-per-request";
            t->extra[t->nextra++] = "on";
        }
    }
    at_print_intro(&g, conf, &sign_info, sw.key_ref);
    if (at_measure(&g, conf, &seq) != 0)
        goto out;
    failed = 0;
out:
    for (i = 0; i < AT_N; i++) {
        if (conf[i].have_http)
            http_free(&conf[i].c);
        if (conf[i].started) {
            if (veild_stop(&conf[i].t.v) != 0)
                failed = 1;
            else if (!failed && at_read_log(&conf[i]) != 0)
                failed = 1;
        }
    }
    if (!failed)
        at_print_results(&g, conf);
    if (!failed && bench_attest_busy(&g, &t_sw, &seq) != 0)
        failed = 1;
    if (sign && veil_key_delete(g.e, sign) != VEIL_OK) {
        veil_fail("veil_key_delete(signing key)");
        failed = 1;
    }
    if (have_sw)
        sw_cleanup(&sw, &t_sw);
    for (i = 0; i < AT_N; i++) {
        free(conf[i].lat);
        free(conf[i].vms);
        free(conf[i].round_lat);
    }
    gw_close(&g);
    return failed ? EXIT_FAIL : 0;
}
