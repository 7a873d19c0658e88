/* veil-bench gateway: veild under load, next to the machine's own limit
 * measured in the same run.
 *
 * One private RSA operation per request (the unwrap of the request key) is
 * the floor of veild's work, so the limit is the bare private-RSA rate of
 * the machine with every core busy:
 *
 *   software key  EVP_PKEY_decrypt RSA-OAEP-SHA256 of the same key, one
 *                 thread per core, each with its own copy of the key
 *   token key     C_DecryptInit + C_Decrypt on the same token key, one
 *                 thread (and session) per core; CKM_RSA_X_509 when the
 *                 token has no OAEP-SHA256 (SoftHSM2), as in `pkcs11`
 *
 * veil-bench starts veild itself (--veild PATH), one instance per server
 * key, on 127.0.0.1 over plain HTTP, with the echo model and the rate
 * limits out of the way; it makes the keys (a software key saved to a
 * temporary key directory, dir:PATH; a token object deleted at the end).
 *
 * Load: N client threads, each with its own libcurl handle (one keep-alive
 * connection), send a fixed count of requests taken from a shared counter.
 * Every request is a new package (payload ID, AES key, nonce, wrapped key),
 * sealed before the load phase starts, so that the load generator, which
 * shares the cores with veild, costs little more than its POSTs.  The
 * answers are sealed to the client's key; opening each would cost a
 * private RSA operation per request here, so the client key is RSA-2048
 * and only every SAMPLE_EVERY-th answer is opened and checked to echo its
 * prompt.  Load phases and baseline slices alternate in rounds; medians.
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

/* ---- bare limits -------------------------------------------------------- */

typedef struct bare_arg {
    bench_op op;
    void *ctx;
    double seconds, rate;
    int failed;
    pthread_barrier_t *go;
} bare_arg;

static void *bare_thread(void *arg)
{
    bare_arg *a = arg;

    pthread_barrier_wait(a->go);
    a->failed = time_slice(a->op, a->ctx, a->seconds, &a->rate) != 0;
    return NULL;
}

/* The target's bare op on every core at once for `seconds`: ops/s, all
 * threads together. */
int bare_rate(const target *t, double seconds, double *rate, double *cpu_per_op)
{
    bare_arg a[MAX_CORES];
    pthread_t th[MAX_CORES];
    pthread_barrier_t go;
    unsigned i;
    int failed = 0;
    double c0 = self_cpu(), ops = 0;

    if (pthread_barrier_init(&go, NULL, t->nbare) != 0)
        return -1;
    for (i = 0; i < t->nbare; i++) {
        a[i] = (bare_arg){t->bare_op, t->bare_ctx[i], seconds, 0, 0, &go};
        if (pthread_create(&th[i], NULL, bare_thread, &a[i]) != 0) {
            fprintf(stderr, "veil-bench: pthread_create failed\n");
            exit(EXIT_FAIL);
        }
    }
    *rate = 0;
    for (i = 0; i < t->nbare; i++) {
        pthread_join(th[i], NULL);
        failed |= a[i].failed;
        *rate += a[i].rate;
        ops += a[i].rate * seconds;
    }
    *cpu_per_op = ops > 0 ? (self_cpu() - c0) / ops : 0;
    pthread_barrier_destroy(&go);
    return failed ? -1 : 0;
}

int op_sw_bare(void *arg)
{
    sw_bare *c = arg;
    size_t n = sizeof c->out;

    if (ossl_oaep_decrypt(c->k, c->ct, c->ct_len, c->out, &n) != 0)
        return ossl_fail("EVP_PKEY_decrypt");
    if (n != RSA_MSG_LEN) {
        fprintf(stderr, "veil-bench: bare decrypt gave %zu bytes\n", n);
        return -1;
    }
    return 0;
}

int op_tok_bare(void *arg)
{
    tok_bare *t = arg;
    CK_RV rv = p11_decrypt_once(&t->c);

    if (rv != CKR_OK)
        return ckr_fail("C_DecryptInit/C_Decrypt", rv);
    return 0;
}

/* ---- levels ------------------------------------------------------------- */

static void print_header(void)
{
    printf("%-32s %8s %8s %6s %8s %8s %7s %6s  %s\n", "measurement", "req/s",
           "limit/s", "ratio", "p50 ms", "p99 ms", "p99/p50", "errors",
           "result");
}

/* One concurrency level: warm-up, then rounds of (load phase, baseline
 * slice); prints one line.  *rate_out (may be NULL): the median req/s. */
int run_level(const gw *g, target *t, unsigned nclients, unsigned *seq,
              double *rate_out)
{
    const bench_opts *o = g->o;
    unsigned n = o->requests, r, i;
    double *all = xcalloc((size_t)n * o->rounds, sizeof *all);
    unsigned *done = xcalloc(nclients, sizeof *done), dmin, dmax;
    double rates[MAX_ROUNDS], limits[MAX_ROUNDS], wall, rate, limit, ratio;
    double p50, p99, tail, mean, bare_cpu[MAX_ROUNDS];
    phase_cpu pc = {0};
    char name[64], etext[96], result[64];
    int target_level = nclients >= TARGET_CLIENTS, ret = -1;
    client_set cs;
    errs er;

    errs_init(&er);
    if (clients_open(g, t, &cs, nclients, n, seq) != 0 || !all || !done)
        goto out;

    for (r = 0; r < o->rounds; r++) {
        if (clients_seal(g, t, &cs, n, seq) != 0)
            goto out;
        phase_cpu_start(&pc, t->v.p.pid);
        if (clients_run(g, &cs, n, done, &er, &wall) != 0)
            goto out;
        phase_cpu_stop(&pc, t->v.p.pid, wall);
        clients_clear(&cs, n);
        rates[r] = (double)n / wall;
        memcpy(all + (size_t)r * n, cs.lat, n * sizeof *cs.lat);
        if (bare_rate(t, o->seconds, &limits[r], &bare_cpu[r]) != 0)
            goto out;
    }
    rate = median(rates, o->rounds);
    limit = median(limits, o->rounds);
    ratio = limit > 0 ? rate / limit : 0;
    mean = 0;
    for (i = 0; i < n * o->rounds; i++)
        mean += all[i];
    mean = mean / (double)(n * o->rounds) * 1e3;
    p50_p99(all, (size_t)n * o->rounds, &p50, &p99);
    tail = p50 > 0 ? p99 / p50 : 0;

    snprintf(name, sizeof name, "%s %u client%s", t->name, nclients,
             nclients == 1 ? "" : "s");
    snprintf(etext, sizeof etext, "%u", errs_total(&er));
    if (target_level) {
        double want = t->token ? TARGET_RATIO : TARGET_SW_RATIO;
        int below_r = ratio<want, below_t = tail> TARGET_TAIL;
        int bad = errs_total(&er) != 0;
        snprintf(result, sizeof result, "%s%s%s%s",
                 below_r || below_t ? "BELOW"
                 : bad              ? ""
                                    : "ok",
                 below_r ? " ratio" : "", below_t ? " p99" : "",
                 bad ? " ERRORS" : "");
    } else {
        snprintf(result, sizeof result, "%s", errs_total(&er) ? "ERRORS" : "-");
    }
    printf("%-32s %8.1f %8.1f %6.3f %8.2f %8.2f %7.2f %6s  %s\n", name, rate,
           limit, ratio, p50, p99, tail, etext, result);
    if (rate_out)
        *rate_out = rate;
    /* CPU per request: veild's, and this process's during the load phases
     * (the client threads; packages were sealed before), against the CPU
     * of one bare op; "cores busy" below 100% under a full load means
     * someone else had the CPU (or veild waited). */
    dmin = dmax = done[0];
    for (i = 1; i < nclients; i++) {
        dmin = done[i] < dmin ? done[i] : dmin;
        dmax = done[i] > dmax ? done[i] : dmax;
    }
    {
        double total = (double)n * o->rounds;
        double vreq = pc.veild / total * 1e3, creq = pc.own / total * 1e3;
        double bop = median(bare_cpu, o->rounds) * 1e3;

        printf("#   cpu/request: veild %.2f ms + clients %.2f ms; bare op "
               "%.2f ms (cpu ratio %.3f); cores busy %.0f%%; mean %.2f ms",
               vreq, creq, bop, vreq + creq > 0 ? bop / (vreq + creq) : 0,
               phase_cpu_busy(&pc, g->ncpu), mean);
        if (nclients > 1)
            printf("; requests per client %u..%u", dmin, dmax);
        printf("\n");
    }
    errs_report(&er);
    fflush(stdout);
    ret = 0;
out:
    clients_close(&cs);
    free(done);
    free(all);
    return ret;
}

/* ---- the run ------------------------------------------------------------ */

/* Replay register entries veild needs for a target's requests (two marks
 * per package), with room to spare. */
static unsigned replay_capacity(const bench_opts *o)
{
    unsigned long long n = 0;

    for (unsigned i = 0; i < o->n_clients; i++)
        n += (unsigned long long)o->rounds * o->requests + o->clients[i];
    n += (unsigned long long)(o->timing_n + 1) * K_N;
    /* the slow-clients row: both phases, and the slow readers' requests */
    n += 2ull * o->rounds * o->requests + SLOW_CLIENTS +
         4ull * o->rounds * SLOW_READERS;
    n = 2 * n + 4096;
    return n > 16777216ull ? 16777216u : (unsigned)n;
}

static int run_target(const gw *g, target *t, const char *vname, int timing,
                      unsigned *seq)
{
    int ret = -1, started = 0;

    if (veild_start(g, &t->v, vname, t, replay_capacity(g->o), "16M") != 0)
        goto out;
    started = 1;
    if (veild_check_key(t) != 0)
        goto out;
    printf("# %s: veild pid %ld, %s, %s\n", t->name, (long)t->v.p.pid, t->v.url,
           t->key_ref);
    fflush(stdout);
    for (unsigned i = 0; i < g->o->n_clients; i++)
        if (run_level(g, t, g->o->clients[i], seq, NULL) != 0)
            goto out;
    if (!t->token && run_slow(g, t, seq) != 0)
        goto out;
    if (timing && g->o->timing_n && run_timing(g, t, seq) != 0)
        goto out;
    ret = 0;
out:
    if (started && veild_stop(&t->v) != 0)
        ret = -1;
    return ret;
}

static void print_intro(const gw *g)
{
    const bench_opts *o = g->o;
    char levels[96] = "";
    size_t used = 0;

    for (unsigned i = 0; i < o->n_clients && used < sizeof levels; i++) {
        int n = snprintf(levels + used, sizeof levels - used, "%s%u",
                         i ? ", " : "", o->clients[i]);
        if (n > 0)
            used += (size_t)n;
    }
    printf("# veild under load next to the machine's bare RSA limit, "
           "measured in the same run\n"
           "#   veild: %s, started here: 127.0.0.1, plain HTTP, model "
           "\"%s\" = echo,\n"
           "#     rate/burst 1000000 (limits out of the way), workers %u%s; "
           "one instance per server key\n",
           o->veild, MODEL, o->workers ? o->workers : VEILD_WORKERS_DEFAULT,
           o->workers ? "" : " (default)");
    printf("#   load: %s client threads in this process, one libcurl handle "
           "(keep-alive connection)\n"
           "#     each; %u requests per load phase (%u rounds per level, "
           "after one warm-up request per\n"
           "#     client); every request a new package (payload ID, AES key, "
           "nonce, wrapped key)\n"
           "#     sealed before its phase starts; %u-byte prompt; client key "
           "RSA-%u; every %uth answer\n"
           "#     is opened and must echo its prompt (the others: HTTP 200 "
           "only)\n",
           levels, o->requests, o->rounds, SMALL_PROMPT, CLIENT_BITS,
           SAMPLE_EVERY);
    printf("#   req/s: requests / wall time of a load phase, median of the "
           "rounds; p50/p99: POST wall\n"
           "#     time over all rounds; limit/s: bare private RSA ops/s of the "
           "server key, one thread per\n"
           "#     core (%u), %.2f s slices after each load phase, median; "
           "ratio = req/s / limit (one\n"
           "#     private RSA op per request is the floor of the work)\n"
           "#   targets (at %u clients): ratio >= %.2f, p99/p50 <= %.0f, no "
           "errors; BELOW does not\n"
           "#     change the exit status\n",
           g->ncpu, o->seconds, TARGET_CLIENTS, TARGET_RATIO, TARGET_TAIL);
    fflush(stdout);
}

static int make_client_key(gw *g)
{
    veil_keygen_params kp;
    char *pem = NULL, *enc;
    size_t n;

    memset(&kp, 0, sizeof kp);
    kp.type = VEIL_KEY_RSA;
    kp.bits = CLIENT_BITS;
    if (veil_key_generate(g->e, "software", &kp, &g->client_key) != VEIL_OK)
        return veil_fail("veil_key_generate(client key)");
    if (veil_key_public_pem(g->client_key, &pem) != VEIL_OK)
        return veil_fail("veil_key_public_pem");
    enc = veil_percent_encode(pem);
    free(pem);
    if (!enc)
        return oom_fail();
    n = strlen(enc) + 32;
    if ((g->pubkey_hdr = malloc(n)) != NULL)
        snprintf(g->pubkey_hdr, n, "X-Public-Key: %s", enc);
    free(enc);
    return g->pubkey_hdr ? 0 : oom_fail();
}

static int make_dir(gw *g)
{
    const char *tmp = env_nonempty("TMPDIR");
    int n = snprintf(g->dir, sizeof g->dir, "%s/veil-bench-gw.XXXXXX",
                     tmp ? tmp : "/tmp");

    if (n < 0 || (size_t)n >= sizeof g->dir) {
        fprintf(stderr, "veil-bench: TMPDIR is too long\n");
        return -1;
    }
    if (!mkdtemp(g->dir)) {
        fprintf(stderr, "veil-bench: mkdtemp %s: %s\n", g->dir,
                strerror(errno));
        return -1;
    }
    g->have_dir = 1;
    return 0;
}

/* Removes the logs and port files we made, then the directory. */
static void remove_dir(gw *g)
{
    static const char *const names[] = {"sw",           "token",    "memory",
                                        "memory-small", "attest-a", "attest-b",
                                        "attest-c",     "attest-d", "attest-e"};
    char path[PATH_MAX + 96];

    if (!g->have_dir)
        return;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        for (int pf = 0; pf < 2; pf++) {
            snprintf(path, sizeof path, "%s/veild-%s.%s", g->dir, names[i],
                     pf ? "port" : "log");
            unlink(path);
        }
        /* the state directory: its replay register, the TPM's AK */
        snprintf(path, sizeof path, "%s/veild-%s.state/replay.db", g->dir,
                 names[i]);
        unlink(path);
        snprintf(path, sizeof path, "%s/veild-%s.state/tpm-ak", g->dir,
                 names[i]);
        unlink(path);
        snprintf(path, sizeof path, "%s/veild-%s.state", g->dir, names[i]);
        rmdir(path);
    }
    if (rmdir(g->dir) != 0)
        fprintf(stderr, "veil-bench: rmdir %s: %s\n", g->dir, strerror(errno));
    g->have_dir = 0;
}

/* What both runs set up: the engine (with the token of --module/--token
 * when o->run_pkcs11), libcurl, the salt, the temporary directory and the
 * client key.  `how`: the second header line, or NULL for the gateway's.
 * 0, or an exit status; gw_close undoes it either way. */
int gw_open(gw *g, const bench_opts *o, char *uri, size_t uri_size,
            const char *how)
{
    veil_engine_config cfg;

    memset(g, 0, sizeof *g);
    g->o = o;
    g->ncpu = cpu_count();
    if (access(o->veild, X_OK) != 0) {
        fprintf(stderr,
                "veil-bench: %s: cannot run %s (%s); give the veild "
                "program with --veild\n",
                o->run_attest ? "attest" : "gateway", o->veild,
                strerror(errno));
        return EXIT_USAGE;
    }
    memset(&cfg, 0, sizeof cfg);
    cfg.log = log_to_stderr;
    cfg.log_level = VEIL_LOG_WARN;
    if (o->run_pkcs11) {
        if (token_uri(o->token, uri, uri_size) != 0) {
            fprintf(stderr, "veil-bench: token label too long: %s\n", o->token);
            return EXIT_USAGE;
        }
        cfg.pkcs11_module = o->module;
        cfg.default_token = uri;
        if (o->pin_spec &&
            veil_pin_source_parse(o->pin_spec, &cfg.pin) != VEIL_OK) {
            fprintf(stderr, "veil-bench: --pin-source: %s\n",
                    veil_last_error()->message);
            return EXIT_USAGE;
        }
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "veil-bench: curl_global_init failed\n");
        return EXIT_FAIL;
    }
    g->have_curl = 1;
    if (how) {
        print_machine_id();
        printf("%s\n", how);
        fflush(stdout);
    } else {
        print_machine(o, "req/s and limits are medians; ratio = veild req/s / "
                         "bare RSA ops/s");
    }
    if (RAND_bytes((unsigned char *)&g->salt, sizeof g->salt) != 1) {
        ossl_fail("RAND_bytes");
        return EXIT_FAIL;
    }
    if (veil_engine_new(&cfg, &g->e) != VEIL_OK) {
        veil_fail("veil_engine_new");
        return EXIT_FAIL;
    }
    if (make_dir(g) != 0 || make_client_key(g) != 0)
        return EXIT_FAIL;
    return 0;
}

void gw_close(gw *g)
{
    remove_dir(g);
    veil_key_free(g->client_key);
    g->client_key = NULL;
    free(g->pubkey_hdr);
    g->pubkey_hdr = NULL;
    veil_engine_free(g->e);
    g->e = NULL;
    if (g->have_curl)
        curl_global_cleanup();
    g->have_curl = 0;
}

int bench_gateway_run(const bench_opts *o)
{
    char uri[512];
    sw_side sw;
    tok_side ts;
    target t_sw, t_tok, t_mem;
    unsigned seq = 0;
    int failed = 1, have_sw = 0, have_tok = 0, st;
    gw g;

    if (o->protocol_v2)
        return bench_gateway_v2_run(o);
    memset(&sw, 0, sizeof sw);
    memset(&ts, 0, sizeof ts);
    memset(&t_sw, 0, sizeof t_sw);
    memset(&t_tok, 0, sizeof t_tok);
    if ((st = gw_open(&g, o, uri, sizeof uri, NULL)) != 0) {
        gw_close(&g);
        return st;
    }
    print_intro(&g);

    /* software key */
    have_sw = 1;
    if (sw_setup(&g, &sw, &t_sw) != 0)
        goto out;
    printf("# software key: RSA-%u made by veil, saved to a key directory "
           "(--server-key dir:...);\n"
           "#   limit = bare EVP_PKEY_decrypt RSA-OAEP-SHA256 of the same "
           "key, fresh EVP_PKEY_CTX per op\n",
           o->bits);
    print_header();
    fflush(stdout);
    if (run_target(&g, &t_sw, "sw", 1, &seq) != 0)
        goto out;

    /* token key */
    if (o->skip_note) {
        printf("%s\n", o->skip_note);
    } else if (o->run_pkcs11) {
        printf("# token key: RSA-%u in token \"%s\" (module %s), a token "
               "object made for this run;\n"
               "#   limit = bare C_DecryptInit + C_Decrypt on the same key, "
               "one session per thread\n",
               o->bits, o->token, o->module);
        fflush(stdout);
        have_tok = 1;
        if (tok_setup(&g, &ts, &t_tok, uri) != 0)
            goto out;
        snprintf(ts.name, sizeof ts.name, "token-rsa%u [%s]", o->bits, ts.mech);
        printf("#   [%s]: the mechanism of the bare loop (veild decodes OAEP "
               "on the host when the token\n"
               "#   has no OAEP-SHA256; the bare loop does not)\n",
               ts.mech);
        print_header();
        fflush(stdout);
        if (run_target(&g, &t_tok, "token", 1, &seq) != 0)
            goto out;
    }

    /* memory, with the software key */
    if (o->mem_waves) {
        t_mem = t_sw;
        memset(&t_mem.v, 0, sizeof t_mem.v);
        if (run_memory(&g, &t_mem, &seq, 0) != 0)
            goto out;
        memset(&t_mem.v, 0, sizeof t_mem.v);
        if (run_memory(&g, &t_mem, &seq, 1) != 0)
            goto out;
    }
    failed = 0;
out:
    if (have_tok && tok_cleanup(&g, &ts, &t_tok) != 0)
        failed = 1;
    if (have_sw)
        sw_cleanup(&sw, &t_sw);
    gw_close(&g);
    return failed ? EXIT_FAIL : 0;
}
