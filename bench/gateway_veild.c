/* veil-bench gateway and attest: the veild processes (started and
 * stopped through tests/harness.c), what /proc says of them, and the
 * server keys they serve (a software key in a key directory, a token key).
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

/* ---- veild -------------------------------------------------------------- */

/* Starts veild on a free port with the echo model and the rate limits out
 * of the way (tests/harness.c: it gets SIGTERM should we die); waits for
 * its port file. */
int veild_start(const gw *g, veild_proc *v, const char *name, const target *t,
                unsigned replay_cap, const char *body_limit)
{
    const bench_opts *o = g->o;
    const char *argv[40 + MAX_EXTRA_ARGS];
    char cap[16], workers[16], pname[48], port_file[PATH_MAX + 64];
    int n = 0;

    memset(v, 0, sizeof *v);
    snprintf(v->name, sizeof v->name, "%s", name);
    snprintf(pname, sizeof pname, "veild-%s", name);
    snprintf(port_file, sizeof port_file, "%s/veild-%s.port", g->dir, name);
    snprintf(v->state_dir, sizeof v->state_dir, "%s/veild-%s.state", g->dir,
             name);
    snprintf(cap, sizeof cap, "%u", replay_cap);
    snprintf(workers, sizeof workers, "%u", o->workers);
    argv[n++] = o->veild;
    argv[n++] = "--port";
    argv[n++] = "0";
    argv[n++] = "--port-file";
    argv[n++] = port_file;
    argv[n++] = "--server-key";
    argv[n++] = t->key_ref;
    argv[n++] = "--model";
    argv[n++] = MODEL "=echo";
    argv[n++] = "--rate";
    argv[n++] = "1000000";
    argv[n++] = "--burst";
    argv[n++] = "1000000";
    argv[n++] = "--replay-capacity";
    argv[n++] = cap;
    argv[n++] = "--state-dir";
    argv[n++] = v->state_dir;
    argv[n++] = "--body-limit";
    argv[n++] = body_limit;
    argv[n++] = "--log-level";
    argv[n++] = "info";
    /* every client here comes from 127.0.0.1 */
    argv[n++] = "--connections-per-address";
    argv[n++] = "1024";
    if (o->workers) {
        argv[n++] = "--workers";
        argv[n++] = workers;
    }
    if (t->token) {
        argv[n++] = "--pkcs11-module";
        argv[n++] = o->module;
        if (o->pin_spec) {
            argv[n++] = "--pin-source";
            argv[n++] = o->pin_spec;
        }
    }
    for (unsigned i = 0; i < t->nextra && i < MAX_EXTRA_ARGS; i++)
        argv[n++] = t->extra[i];
    argv[n] = NULL;

    if (tu_proc_start(&v->p, g->dir, pname, argv, port_file, TU_LOG_FRESH) !=
        0) {
        fprintf(stderr, "veil-bench: veild (%s) did not start%s\n", o->veild,
                access(o->veild, X_OK) != 0 ? " (cannot run it: see --veild)"
                                            : "");
        return -1;
    }
    snprintf(v->url, sizeof v->url, "http://127.0.0.1:%u", v->p.port);
    return 0;
}

/* Counts the warnings and errors in veild's log (but the expected one
 * about authentication being off) and prints the count and the first. */
static void veild_log_summary(const veild_proc *v)
{
    char line[512], first[512] = "";
    unsigned n = 0;
    FILE *f = fopen(v->p.log, "r");

    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        /* "TIME veild: LEVEL: ..." (docs/GATEWAY.md, Logging) */
        const char *lv = strstr(line, "veild: ");
        if (lv &&
            (!strncmp(lv, "veild: warn:", 12) ||
             !strncmp(lv, "veild: error:", 13)) &&
            !strstr(line, "authentication is off")) {
            if (!n++)
                snprintf(first, sizeof first, "%s", line);
        }
    }
    fclose(f);
    first[strcspn(first, "\n")] = '\0';
    if (n)
        printf("#   veild (%s) logged %u warning/error line%s; first: %s\n",
               v->name, n, n == 1 ? "" : "s", first);
    else
        printf("#   veild (%s) logged no warning or error\n", v->name);
}

/* SIGTERM, then waits (veild finishes requests in flight, at most 30 s;
 * tests/harness.h has the deadline).  0 when it exited 0. */
int veild_stop(veild_proc *v)
{
    if (v->p.pid <= 0)
        return 0;
    if (!tu_proc_stop_ok(&v->p))
        return -1;
    veild_log_summary(v);
    return 0;
}

/* The key veild publishes must be the one we sealed to. */
int veild_check_key(const target *t)
{
    char url[128];
    http c;
    EVP_PKEY *k = NULL;
    BIO *bio;
    int ret = -1;

    snprintf(url, sizeof url, "%s/pki/public_key", t->v.url);
    if (http_init(&c, url) != 0)
        return -1;
    if (http_get(&c, url) != 0)
        goto out;
    if ((bio = BIO_new_mem_buf(c.buf, (int)c.len)) != NULL) {
        k = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
        BIO_free(bio);
    }
    if (!k) {
        ossl_fail("PEM_read_bio_PUBKEY (veild's key)");
        goto out;
    }
    if (EVP_PKEY_eq(k, t->pub) != 1) {
        fprintf(stderr,
                "veil-bench: veild (%s) publishes a key that is not "
                "the one it was given\n",
                t->v.name);
        goto out;
    }
    ret = 0;
out:
    EVP_PKEY_free(k);
    http_free(&c);
    return ret;
}

/* ---- /proc -------------------------------------------------------------- */

/* VmRSS and VmHWM of pid, in KiB. */
int proc_mem(pid_t pid, unsigned long *rss, unsigned long *hwm)
{
    char path[64], buf[4096];
    const char *p;

    snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
    if (tu_read_text(path, buf, sizeof buf) < 0)
        return -1;
    if (!(p = strstr(buf, "VmRSS:")))
        return -1;
    *rss = strtoul(p + 6, NULL, 10);
    if (!(p = strstr(buf, "VmHWM:")))
        return -1;
    *hwm = strtoul(p + 6, NULL, 10);
    return 0;
}

/* CPU time (user + system) of pid, seconds (clock-tick resolution). */
int proc_cpu(pid_t pid, double *secs)
{
    char path[64], buf[1024], *p;
    unsigned long long ut = 0, st = 0;
    long tick = sysconf(_SC_CLK_TCK);

    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    if (tick <= 0 || tu_read_text(path, buf, sizeof buf) < 0)
        return -1;
    /* after "pid (comm) ": state is field 3, utime 14, stime 15 */
    if (!(p = strrchr(buf, ')')))
        return -1;
    p++;
    for (int field = 2; field < 13 && p; field++)
        p = strchr(p + 1, ' ');
    if (!p || sscanf(p, " %llu %llu", &ut, &st) != 2)
        return -1;
    *secs = (double)(ut + st) / (double)tick;
    return 0;
}

/* CPU time of this process (all threads), seconds. */
double self_cpu(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

void phase_cpu_start(phase_cpu *m, pid_t veild)
{
    if (proc_cpu(veild, &m->v0) != 0)
        m->v0 = -1;
    m->c0 = self_cpu();
}

void phase_cpu_stop(phase_cpu *m, pid_t veild, double wall)
{
    double v1;

    m->own += self_cpu() - m->c0;
    if (m->v0 >= 0 && proc_cpu(veild, &v1) == 0)
        m->veild += v1 - m->v0;
    m->wall += wall;
}

double phase_cpu_busy(const phase_cpu *m, unsigned ncpu)
{
    return m->wall > 0 ? (m->veild + m->own) / (m->wall * ncpu) * 100 : 0;
}

/* ---- keys --------------------------------------------------------------- */

static EVP_PKEY *read_pem_key(const char *path, int priv)
{
    FILE *f = fopen(path, "r");
    EVP_PKEY *k;

    if (!f) {
        fprintf(stderr, "veil-bench: cannot open %s: %s\n", path,
                strerror(errno));
        return NULL;
    }
    k = priv ? PEM_read_PrivateKey(f, NULL, NULL, NULL)
             : PEM_read_PUBKEY(f, NULL, NULL, NULL);
    fclose(f);
    if (!k)
        ossl_fail(priv ? "PEM_read_PrivateKey" : "PEM_read_PUBKEY");
    return k;
}

int sw_setup(const gw *g, sw_side *sw, target *t)
{
    const bench_opts *o = g->o;
    veil_keygen_params kp;
    veil_key *k = NULL;
    char path[PATH_MAX + 64];
    uint8_t msg[RSA_MSG_LEN];
    size_t ct_len;
    unsigned i;

    memset(t, 0, sizeof *t);
    snprintf(sw->name, sizeof sw->name, "sw-rsa%u", o->bits);
    snprintf(sw->key_dir, sizeof sw->key_dir, "%s/server-key", g->dir);
    snprintf(sw->key_ref, sizeof sw->key_ref, "dir:%s", sw->key_dir);
    memset(&kp, 0, sizeof kp);
    kp.type = VEIL_KEY_RSA;
    kp.bits = o->bits;
    if (veil_key_generate(g->e, "software", &kp, &k) != VEIL_OK)
        return veil_fail("veil_key_generate(software)");
    if (veil_key_save(g->e, k, sw->key_dir, NULL) != VEIL_OK) {
        veil_key_free(k);
        return veil_fail("veil_key_save");
    }
    veil_key_free(k);
    sw->saved = 1;
    snprintf(path, sizeof path, "%s/public_key.pem", sw->key_dir);
    if (!(t->pub = read_pem_key(path, 0)))
        return -1;
    if (RAND_bytes(msg, sizeof msg) != 1)
        return ossl_fail("RAND_bytes");
    snprintf(path, sizeof path, "%s/private_key.pem", sw->key_dir);
    for (i = 0; i < g->ncpu; i++) {
        sw_bare *b = &sw->bare[i];

        if (!(b->k = read_pem_key(path, 1)))
            return -1;
        ct_len = sizeof b->ct;
        if (ossl_oaep_encrypt(t->pub, msg, sizeof msg, b->ct, &ct_len) != 0)
            return ossl_fail("RSA-OAEP-SHA256 encrypt");
        b->ct_len = ct_len;
        if (op_sw_bare(b) != 0)
            return -1;
        if (memcmp(b->out, msg, sizeof msg) != 0) {
            fprintf(stderr, "veil-bench: bare decrypt: wrong plaintext\n");
            return -1;
        }
        t->bare_ctx[i] = b;
    }
    t->name = sw->name;
    t->key_ref = sw->key_ref;
    t->bare_op = op_sw_bare;
    t->nbare = g->ncpu;
    return 0;
}

void sw_cleanup(sw_side *sw, target *t)
{
    char path[PATH_MAX + 64];

    for (unsigned i = 0; i < MAX_CORES; i++)
        EVP_PKEY_free(sw->bare[i].k);
    memset(sw->bare, 0, sizeof sw->bare);
    EVP_PKEY_free(t->pub);
    t->pub = NULL;
    if (sw->saved) {
        snprintf(path, sizeof path, "%s/private_key.pem", sw->key_dir);
        unlink(path);
        snprintf(path, sizeof path, "%s/public_key.pem", sw->key_dir);
        unlink(path);
        rmdir(sw->key_dir);
        sw->saved = 0;
    }
}

int tok_setup(const gw *g, tok_side *ts, target *t, const char *uri)
{
    const bench_opts *o = g->o;
    veil_keygen_params kp;
    veil_key_info info;
    p11_rsa_ctx c;
    uint8_t msg[RSA_MSG_LEN];
    char label[64];
    uint8_t *der = NULL;
    size_t der_len = 0;
    const uint8_t *p;
    unsigned i;
    CK_RV rv;

    memset(t, 0, sizeof *t);
    memset(&c, 0, sizeof c);
    snprintf(label, sizeof label, "veil-bench-gateway-%ld", (long)getpid());
    memset(&kp, 0, sizeof kp);
    kp.type = VEIL_KEY_RSA;
    kp.bits = o->bits;
    kp.label = label;
    if (veil_key_generate(g->e, uri, &kp, &ts->key) != VEIL_OK)
        return veil_fail("veil_key_generate(token)");
    if (veil_key_get_info(ts->key, &info) != VEIL_OK)
        return veil_fail("veil_key_get_info");
    snprintf(ts->key_uri, sizeof ts->key_uri, "%s", info.uri);
    snprintf(ts->name, sizeof ts->name, "token-rsa%u", o->bits);
    if (veil_key_public_der(ts->key, &der, &der_len) != VEIL_OK)
        return veil_fail("veil_key_public_der");
    p = der;
    t->pub = d2i_PUBKEY(NULL, &p, (long)der_len);
    free(der);
    if (!t->pub)
        return ossl_fail("d2i_PUBKEY");

    /* the bare side, after the engine logged in */
    c.e = g->e;
    c.key = ts->key;
    c.b = &ts->b;
    c.k = o->bits / 8;
    if (RAND_bytes(msg, sizeof msg) != 1)
        return ossl_fail("RAND_bytes");
    c.ct_len = sizeof c.ct;
    if (ossl_oaep_encrypt(t->pub, msg, sizeof msg, c.ct, &c.ct_len) != 0)
        return ossl_fail("RSA-OAEP-SHA256 encrypt");
    if (p11_bare_open(&ts->b, o->module, o->token) != 0 ||
        p11_find_private_key(&ts->b, ts->key, &c.h) != 0 ||
        p11_pick_mechanism(&c, msg, sizeof msg, &ts->mech) != 0)
        return -1;
    for (i = 0; i < g->ncpu; i++) {
        tok_bare *tb = &ts->bare[i];

        tb->b = ts->b;
        tb->b.we_initialized = 0;
        rv = tb->b.f->C_OpenSession(tb->b.slot, CKF_SERIAL_SESSION, NULL, NULL,
                                    &tb->b.s);
        if (rv != CKR_OK)
            return ckr_fail("C_OpenSession", rv);
        ts->nsess++;
        tb->c = c;
        tb->c.b = &tb->b;
        if (op_tok_bare(tb) != 0)
            return -1;
        t->bare_ctx[i] = tb;
    }
    t->name = ts->name;
    t->key_ref = ts->key_uri;
    t->token = 1;
    t->bare_op = op_tok_bare;
    t->nbare = g->ncpu;
    return 0;
}

int tok_cleanup(const gw *g, tok_side *ts, target *t)
{
    int ret = 0;

    for (unsigned i = 0; i < ts->nsess; i++)
        ts->bare[i].b.f->C_CloseSession(ts->bare[i].b.s);
    ts->nsess = 0;
    p11_bare_close(&ts->b);
    EVP_PKEY_free(t->pub);
    t->pub = NULL;
    if (ts->key && veil_key_delete(g->e, ts->key) != VEIL_OK) {
        veil_fail("veil_key_delete(token)");
        ret = -1;
    }
    ts->key = NULL;
    return ret;
}
