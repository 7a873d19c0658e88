/* veil-bench gateway --protocol v2: protocol v2 (Oblivious HTTP,
 * docs/PROTOCOL-V2.md) under load, next to two baselines measured in the
 * same run:
 *
 *   the bare P-256 ECDH derive rate, one thread per core: v2's floor is one
 *   ECDH with the KEM key per request, as v1's is one private RSA op;
 *     software KEM key  EVP_PKEY_derive with a fresh EVP_PKEY_CTX per op,
 *                       each thread its own copy of a P-256 key
 *     token KEM key     C_DeriveKey(CKM_ECDH1_DERIVE, CKD_NULL) of a P-256
 *                       derive key made in the same token, then
 *                       C_GetAttributeValue(CKA_VALUE) and C_DestroyObject
 *                       of the secret, one session per thread: what the
 *                       PKCS#11 provider does for veild (PROTOCOL-V2.md 2)
 *   v1 on the same veild (RSA server key of --bits), at the same client
 *   count, just before: its line is the ordinary `veil-bench gateway` one.
 *
 * veild's KEM key lives where its server key does: the software target
 * (dir:PATH) makes it in software, the token target in the token
 * (SoftHSM2); the start-up log says which and this says it too.
 *
 * Load: N client threads, one libcurl handle each (keep-alive), a shared
 * counter over requests encapsulated before the phase (each a fresh
 * HPKE encapsulation of a Binary HTTP POST /v1/chat/completions to the
 * echo model); every SAMPLE_EVERY-th answer is opened and must be an inner
 * 200 that echoes its prompt.  Then, on the same veild, one client's added
 * latency over a plain HTTP call to tests/mock-upstream
 * (gateway_v2_latency.c).  No timed assertions.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "bench_gw.h"
#include "bhttp.h"
#include "ohttp.h"
#include "package.h"

/* ---- the bare ECDH ------------------------------------------------------ */

typedef struct ecdh_sw {
    EVP_PKEY *k, *peer;
    uint8_t out[32];
} ecdh_sw;

/* One derive with a fresh context, as veild makes one per request.  The
 * peer key was made once and is valid, so OpenSSL's check at set_peer (a
 * second scalar multiplication, n * Q) is left out: veild leaves it out too
 * (its engine checks the point on the curve, which suffices for P-256). */
static int op_ecdh_sw(void *arg)
{
    ecdh_sw *c = arg;
    EVP_PKEY_CTX *x = EVP_PKEY_CTX_new(c->k, NULL);
    size_t n = sizeof c->out;
    int ok = x && EVP_PKEY_derive_init(x) == 1 &&
             EVP_PKEY_derive_set_peer_ex(x, c->peer, 0) == 1 &&
             EVP_PKEY_derive(x, c->out, &n) == 1 && n == 32;

    EVP_PKEY_CTX_free(x);
    return ok ? 0 : ossl_fail("EVP_PKEY_derive (P-256)");
}

typedef struct ecdh_tok {
    p11_bare b; /* its own session */
    CK_OBJECT_HANDLE h;
    CK_ECDH1_DERIVE_PARAMS p;
    CK_MECHANISM m;
    uint8_t point[65]; /* the peer's uncompressed point */
    uint8_t out[32];
} ecdh_tok;

static int op_ecdh_tok(void *arg)
{
    ecdh_tok *c = arg;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_ULONG len = 32;
    CK_BBOOL f = CK_FALSE, t = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {
        /* the PKCS#11 provider's template */
        {CKA_CLASS, &cls, sizeof cls},    {CKA_KEY_TYPE, &kt, sizeof kt},
        {CKA_TOKEN, &f, sizeof f},        {CKA_PRIVATE, &t, sizeof t},
        {CKA_SENSITIVE, &f, sizeof f},    {CKA_EXTRACTABLE, &t, sizeof t},
        {CKA_VALUE_LEN, &len, sizeof len}};
    CK_ATTRIBUTE val = {CKA_VALUE, c->out, sizeof c->out};
    CK_OBJECT_HANDLE s = CK_INVALID_HANDLE;
    CK_RV rv = c->b.f->C_DeriveKey(c->b.s, &c->m, c->h, tmpl,
                                   sizeof tmpl / sizeof tmpl[0], &s);

    if (rv == CKR_OK)
        rv = c->b.f->C_GetAttributeValue(c->b.s, s, &val, 1);
    if (s != CK_INVALID_HANDLE)
        c->b.f->C_DestroyObject(c->b.s, s);
    return rv == CKR_OK ? 0 : ckr_fail("C_DeriveKey (ECDH1)", rv);
}

/* The baseline of one target: a "target" whose bare op is the ECDH. */
typedef struct ecdh_side {
    target lim;
    ecdh_sw sw[MAX_CORES];
    ecdh_tok tok[MAX_CORES];
    veil_key *tok_key; /* the token's P-256 derive key */
    unsigned nsess;
} ecdh_side;

/* A fresh P-256 key pair (OpenSSL). */
static EVP_PKEY *p256(void)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
}

static int ecdh_setup(const gw *g, ecdh_side *e, const tok_side *ts,
                      const char *uri)
{
    int token = ts != NULL;
    EVP_PKEY *k = token ? NULL : p256(), *peer = p256();
    veil_keygen_params kp = {
        .type = VEIL_KEY_EC_P256, .label = "veil-bench-kem", .derive = 1};
    CK_OBJECT_HANDLE h;
    uint8_t point[65];
    size_t plen = 0;
    int ret = -1;

    memset(e, 0, sizeof *e);
    e->lim.name = token ? "ecdh-p256 token" : "ecdh-p256 software";
    e->lim.nbare = g->ncpu;
    e->lim.bare_op = token ? op_ecdh_tok : op_ecdh_sw;
    if (!peer || (!token && !k)) {
        ossl_fail("P-256 key generation");
        goto out;
    }
    for (unsigned i = 0; !token && i < g->ncpu; i++) {
        e->sw[i].k = EVP_PKEY_dup(k);
        e->sw[i].peer = EVP_PKEY_dup(peer);
        if (!e->sw[i].k || !e->sw[i].peer || op_ecdh_sw(&e->sw[i]) != 0)
            goto out;
        e->lim.bare_ctx[i] = &e->sw[i];
    }
    if (!token) {
        ret = 0;
        goto out;
    }
    if (veil_key_generate(g->e, uri, &kp, &e->tok_key) != VEIL_OK) {
        veil_fail("veil_key_generate(P-256 derive key in the token)");
        goto out;
    }
    if (EVP_PKEY_get_octet_string_param(peer, "encoded-pub-key", point,
                                        sizeof point, &plen) != 1 ||
        plen != sizeof point) {
        ossl_fail("the peer point");
        goto out;
    }
    if (p11_find_private_key((p11_bare *)&ts->b, e->tok_key, &h) != 0)
        goto out;
    for (unsigned i = 0; i < g->ncpu; i++) {
        ecdh_tok *c = &e->tok[i];
        CK_RV rv;

        c->b = ts->b;
        c->b.we_initialized = 0;
        rv = c->b.f->C_OpenSession(c->b.slot, CKF_SERIAL_SESSION, NULL, NULL,
                                   &c->b.s);
        if (rv != CKR_OK) {
            ckr_fail("C_OpenSession", rv);
            goto out;
        }
        e->nsess++;
        c->h = h;
        memcpy(c->point, point, sizeof point);
        c->p = (CK_ECDH1_DERIVE_PARAMS){CKD_NULL, 0, NULL, sizeof c->point,
                                        c->point};
        c->m = (CK_MECHANISM){CKM_ECDH1_DERIVE, &c->p, sizeof c->p};
        if (op_ecdh_tok(c) != 0)
            goto out;
        e->lim.bare_ctx[i] = c;
    }
    ret = 0;
out:
    EVP_PKEY_free(k);
    EVP_PKEY_free(peer);
    return ret;
}

static void ecdh_cleanup(const gw *g, ecdh_side *e)
{
    for (unsigned i = 0; i < MAX_CORES; i++) {
        EVP_PKEY_free(e->sw[i].k);
        EVP_PKEY_free(e->sw[i].peer);
    }
    for (unsigned i = 0; i < e->nsess; i++)
        e->tok[i].b.f->C_CloseSession(e->tok[i].b.s);
    if (e->tok_key && veil_key_delete(g->e, e->tok_key) != VEIL_OK)
        veil_fail("veil_key_delete(P-256 derive key)");
    memset(e, 0, sizeof *e);
}

/* ---- requests ----------------------------------------------------------- */

void v2_items_clear(v2_item *it, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        free(it[i].req);
        veil_ohttp_ctx_free(it[i].ctx);
        memset(&it[i], 0, sizeof it[i]);
    }
}

/* The gateway's current key configuration. */
int v2_config(const target *t, veil_ohttp_keyconfig *cfg)
{
    char url[128];
    http c;
    veil_ohttp_keyconfig *all = NULL;
    size_t n = 0;
    int ret = -1;

    snprintf(url, sizeof url, "%s" V2_PATH, t->v.url);
    if (http_init(&c, url) != 0)
        return -1;
    if (http_get(&c, url) == 0 &&
        veil_ohttp_keys_decode((const uint8_t *)c.buf, c.len, &all, &n) ==
            VEIL_OK &&
        n >= 1) {
        *cfg = all[0];
        ret = 0;
    } else {
        fprintf(stderr, "veil-bench: no v2 key configuration from %s\n", url);
    }
    free(all);
    http_free(&c);
    return ret;
}

/* An encapsulated chat request for `model`, prompt `seq`'s. */
int v2_seal(const gw *g, const veil_ohttp_keyconfig *cfg, const char *model,
            v2_item *it)
{
    char prompt[SMALL_PROMPT + 1], body[SMALL_PROMPT + 128];
    veil_bhttp_field f = {VEIL_BSTR("content-type"),
                          VEIL_BSTR("application/json")};
    veil_bhttp_msg m = {.is_request = 1,
                        .method = VEIL_BSTR("POST"),
                        .scheme = VEIL_BSTR("https"),
                        .authority = VEIL_BSTR(""),
                        .path = VEIL_BSTR("/v1/chat/completions"),
                        .headers = {&f, 1}};
    veil_ohttp_alg alg = {VEIL_HPKE_KDF_SHA256, VEIL_HPKE_AEAD_AES256GCM};
    veil_secbuf *plain = NULL;
    int n;

    fill_prompt(prompt, SMALL_PROMPT, g->salt, it->seq);
    prompt[SMALL_PROMPT] = '\0';
    n = snprintf(body, sizeof body,
                 "{\"model\":\"%s\",\"messages\":[{\"role\":\"user\","
                 "\"content\":\"%s\"}]}",
                 model, prompt);
    m.content = (veil_bstr){(const uint8_t *)body, (size_t)n};
    if (veil_bhttp_encode(&m, 0, &plain) != VEIL_OK ||
        veil_ohttp_encap_request(g->e, cfg, alg, veil_secbuf_data(plain),
                                 veil_secbuf_len(plain), NULL, &it->req,
                                 &it->len, &it->ctx) != VEIL_OK) {
        veil_secbuf_free(plain);
        return veil_fail("v2 encapsulation");
    }
    veil_secbuf_free(plain);
    return 0;
}

/* The answer opens with the item's context: an inner 200 echoing its
 * prompt.  0, or -1 with why. */
int v2_check(const gw *g, const http *c, const v2_item *it, char *why,
             size_t size)
{
    veil_secbuf *plain = NULL;
    veil_bhttp_msg *m = NULL;
    char prompt[SMALL_PROMPT + 1];
    int ok;

    fill_prompt(prompt, SMALL_PROMPT, g->salt, it->seq);
    prompt[SMALL_PROMPT] = '\0';
    ok = veil_ohttp_decap_response(g->e, it->ctx, (const uint8_t *)c->buf,
                                   c->len, &plain) == VEIL_OK &&
         veil_bhttp_decode(veil_secbuf_data(plain), veil_secbuf_len(plain),
                           VEIL_BHTTP_RESPONSE, NULL, &m) == VEIL_OK &&
         m->status == 200 &&
         memmem(m->content.p, m->content.len, prompt, SMALL_PROMPT) != NULL;
    if (!ok)
        snprintf(why, size,
                 "request %u: the answer does not open to an "
                 "inner 200 echoing its prompt",
                 it->seq);
    veil_bhttp_msg_free(m);
    veil_secbuf_free(plain);
    return ok ? 0 : -1;
}

/* ---- load phases -------------------------------------------------------- */

typedef struct v2_load {
    const gw *g;
    v2_item *items;
    unsigned n;
    atomic_uint next;
    double *lat;
    http *clients;
    errs *er;
    pthread_barrier_t go;
} v2_load;

typedef struct v2_arg {
    v2_load *l;
    unsigned idx;
} v2_arg;

/* One POST; the latency.  Books the outcome in l->er. */
static double v2_post(v2_load *l, http *c, const v2_item *it, int check)
{
    struct curl_slist *h = NULL, *h2;
    long status = 0;
    char why[160];
    double t0;
    CURLcode cc;

    h = curl_slist_append(NULL, "Content-Type: " VEIL_OHTTP_MEDIA_REQ);
    h2 = h ? curl_slist_append(h, "Expect:") : NULL;
    if (!h2) {
        curl_slist_free_all(h);
        atomic_fetch_add(&l->er->transport, 1);
        return 0;
    }
    c->len = 0;
    c->err[0] = '\0';
    curl_easy_setopt(c->h, CURLOPT_HTTPHEADER, h2);
    curl_easy_setopt(c->h, CURLOPT_POSTFIELDS, it->req);
    curl_easy_setopt(c->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)it->len);
    t0 = now_s();
    cc = curl_easy_perform(c->h);
    t0 = now_s() - t0;
    if (cc == CURLE_OK)
        curl_easy_getinfo(c->h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_setopt(c->h, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(h2);
    if (cc != CURLE_OK) {
        atomic_fetch_add(&l->er->transport, 1);
        pthread_mutex_lock(&l->er->lock);
        if (!l->er->first[0])
            snprintf(l->er->first, sizeof l->er->first, "request %u: %s",
                     it->seq, curl_easy_strerror(cc));
        pthread_mutex_unlock(&l->er->lock);
    } else if (status != 200) {
        atomic_fetch_add(&l->er->http, 1);
        pthread_mutex_lock(&l->er->lock);
        if (!l->er->first[0])
            snprintf(l->er->first, sizeof l->er->first, "request %u: HTTP %ld",
                     it->seq, status);
        pthread_mutex_unlock(&l->er->lock);
    } else if (check && v2_check(l->g, c, it, why, sizeof why) != 0) {
        atomic_fetch_add(&l->er->bad, 1);
        pthread_mutex_lock(&l->er->lock);
        if (!l->er->first[0])
            snprintf(l->er->first, sizeof l->er->first, "%s", why);
        pthread_mutex_unlock(&l->er->lock);
    }
    return t0;
}

static void *v2_thread(void *arg)
{
    v2_arg *a = arg;
    v2_load *l = a->l;
    unsigned i;

    pthread_barrier_wait(&l->go);
    while ((i = atomic_fetch_add(&l->next, 1)) < l->n)
        l->lat[i] = v2_post(l, &l->clients[a->idx], &l->items[i],
                            i % SAMPLE_EVERY == 0);
    return NULL;
}

/* One phase: the n items through nc clients; *wall its wall time. */
static int v2_run(v2_load *l, unsigned nc, double *wall)
{
    v2_arg *args = xcalloc(nc, sizeof *args);
    pthread_t *th = xcalloc(nc, sizeof *th);
    unsigned t;
    double t0;

    atomic_store(&l->next, 0);
    if (pthread_barrier_init(&l->go, NULL, nc + 1) != 0)
        return -1;
    for (t = 0; t < nc; t++) {
        args[t] = (v2_arg){l, t};
        if (pthread_create(&th[t], NULL, v2_thread, &args[t]) != 0) {
            fprintf(stderr, "veil-bench: pthread_create failed\n");
            exit(EXIT_FAIL);
        }
    }
    t0 = now_s();
    pthread_barrier_wait(&l->go);
    for (t = 0; t < nc; t++)
        pthread_join(th[t], NULL);
    *wall = now_s() - t0;
    pthread_barrier_destroy(&l->go);
    free(args);
    free(th);
    return 0;
}

/* One level: rounds of (encapsulate n, load phase, ECDH baseline slice);
 * one line with the ratio to the ECDH limit and to v1's rate. */
static int v2_level(const gw *g, target *t, ecdh_side *e, unsigned nc,
                    double v1_rate, unsigned *seq)
{
    const bench_opts *o = g->o;
    unsigned n = o->requests;
    v2_item *items = xcalloc(n > nc ? n : nc, sizeof *items);
    double *all = xcalloc((size_t)n * o->rounds, sizeof *all);
    double rates[MAX_ROUNDS], limits[MAX_ROUNDS], cpu[MAX_ROUNDS], wall;
    double p50, p99, rate, limit;
    phase_cpu pc = {0};
    http *cl = xcalloc(nc, sizeof *cl);
    veil_ohttp_keyconfig cfg;
    char url[128], name[64], etext[16], v1text[32];
    errs er;
    v2_load l = {.g = g, .items = items, .clients = cl, .er = &er};
    int ret = -1;

    errs_init(&er);
    snprintf(url, sizeof url, "%s" V2_PATH, t->v.url);
    for (unsigned i = 0; i < nc; i++)
        if (http_init(&cl[i], url) != 0)
            goto out;
    for (unsigned r = 0; r < o->rounds + 1; r++) {
        /* round 0: one warm-up request per client (its connection) */
        unsigned k = r == 0 ? nc : n;

        if (v2_config(t, &cfg) != 0)
            goto out;
        for (unsigned i = 0; i < k; i++) {
            items[i].seq = (*seq)++;
            if (v2_seal(g, &cfg, MODEL, &items[i]) != 0)
                goto out;
        }
        l.n = k;
        l.lat = r == 0 ? xcalloc(k, sizeof *l.lat) : all + (size_t)(r - 1) * n;
        phase_cpu_start(&pc, t->v.p.pid);
        if (v2_run(&l, nc, &wall) != 0)
            goto out;
        if (r > 0) /* round 0 warms the connections up */
            phase_cpu_stop(&pc, t->v.p.pid, wall);
        if (r == 0)
            free(l.lat);
        v2_items_clear(items, k);
        if (r == 0)
            continue;
        rates[r - 1] = (double)n / wall;
        if (bare_rate(&e->lim, o->seconds, &limits[r - 1], &cpu[r - 1]) != 0)
            goto out;
    }
    rate = median(rates, o->rounds);
    limit = median(limits, o->rounds);
    p50_p99(all, (size_t)n * o->rounds, &p50, &p99);
    snprintf(name, sizeof name, "v2 %s %u client%s", t->name, nc,
             nc == 1 ? "" : "s");
    snprintf(etext, sizeof etext, "%u", errs_total(&er));
    if (v1_rate > 0)
        snprintf(v1text, sizeof v1text, "%8.1f %6.3f", v1_rate, rate / v1_rate);
    else
        snprintf(v1text, sizeof v1text, "%8s %6s", "-", "-");
    printf("%-32s %8.1f %8.1f %6.3f %s %8.2f %8.2f %6s\n", name, rate, limit,
           limit > 0 ? rate / limit : 0, v1text, p50, p99, etext);
    /* CPU per request, as the v1 line's: veild's, and this process's
     * during the load phases (encapsulation was before), against one bare
     * derive's.  "veild alone" is the bare derive's CPU over veild's: the
     * ratio veild would reach with the load generator on another machine. */
    {
        double total = (double)n * o->rounds;
        double vreq = pc.veild / total * 1e3, creq = pc.own / total * 1e3;
        double bop = median(cpu, o->rounds) * 1e3;

        printf("#   cpu/request: veild %.3f ms + clients %.3f ms; bare derive "
               "%.3f ms (cpu ratio %.3f; veild alone %.3f); cores busy "
               "%.0f%%\n",
               vreq, creq, bop, vreq + creq > 0 ? bop / (vreq + creq) : 0,
               vreq > 0 ? bop / vreq : 0, phase_cpu_busy(&pc, g->ncpu));
    }
    errs_report(&er);
    fflush(stdout);
    ret = 0;
out:
    v2_items_clear(items, n > nc ? n : nc);
    for (unsigned i = 0; i < nc; i++)
        http_free(&cl[i]);
    free(cl);
    free(items);
    free(all);
    return ret;
}

/* ---- the run ------------------------------------------------------------ */

/* Where veild says it makes its KEM keys (its start-up log). */
static const char *kem_where(const char *log_path)
{
    static const char *const says[][2] = {
        {"KEM keys (P-256) are made in the server key's token",
         "KEM key in the server key's token"},
        {"KEM keys (P-256) are made in software", "KEM key in software"},
    };
    char line[512];
    const char *where = "KEM key: see the veild log";
    FILE *f = fopen(log_path, "r");

    while (f && fgets(line, sizeof line, f))
        for (size_t i = 0; i < sizeof says / sizeof says[0]; i++)
            if (strstr(line, says[i][0]))
                where = says[i][1];
    if (f)
        fclose(f);
    return where;
}

/* v1's line, then v2's, at every level, on one veild. */
static int v2_target(const gw *g, target *t, ecdh_side *e, const char *vname,
                     unsigned mock_port, unsigned *seq)
{
    unsigned long long cap = 0;
    double one = 0;
    int ret = -1, started = 0;

    for (unsigned i = 0; i < g->o->n_clients; i++)
        cap += 4ull * (g->o->rounds + 1) * (g->o->requests + g->o->clients[i]);
    cap = cap < 65536 ? 65536 : cap > 16777216 ? 16777216 : cap;
    if (veild_start(g, &t->v, vname, t, (unsigned)cap, "16M") != 0)
        goto out;
    started = 1;
    printf("# %s: veild pid %ld, %s; v2: %s\n", t->name, (long)t->v.p.pid,
           t->v.url, kem_where(t->v.p.log));
    printf("# v1 lines: measurement, req/s, limit/s (bare RSA), ratio, p50 ms, "
           "p99 ms, p99/p50, errors, result\n"
           "# v2 lines: measurement, req/s, limit/s (bare ECDH), ratio, v1 "
           "req/s, v2/v1, p50 ms, p99 ms, errors\n");
    fflush(stdout);
    for (unsigned i = 0; i < g->o->n_clients; i++) {
        double v1 = 0;

        if ((!g->o->v2_only &&
             run_level(g, t, g->o->clients[i], seq, &v1) != 0) ||
            v2_level(g, t, e, g->o->clients[i], v1, seq) != 0)
            goto out;
    }
    if (g->o->v2_only) { /* no latency lines either */
        ret = 0;
        goto out;
    }
    printf("# v2 latency: one client, sequential, %u requests each way, "
           "interleaved: plain = POST /v1/chat/completions\n"
           "#   straight to tests/mock-upstream; v2 = encapsulate + POST to "
           "veild (model " V2_LAT_MODEL ", forwarded\n"
           "#   to the same mock-upstream) + decapsulate\n"
           "# latency lines: measurement, plain p50 ms, plain p99 ms, v2 p50 "
           "ms, v2 p99 ms, added p50 ms,\n"
           "#   v2/plain p50, errors, result (added p50 <= %.2f ms)\n",
           g->o->requests, TARGET_V2_ADDED_MS);
    if (run_v2_latency(g, t, mock_port, seq) != 0)
        goto out;
    /* the gateway path's floor: one ECDH with a key where veild keeps its
     * KEM key, one thread, right after */
    if (time_slice(e->lim.bare_op, e->lim.bare_ctx[0], g->o->seconds, &one) !=
        0)
        goto out;
    printf("#   of that, the bare P-256 ECDH (%s), one thread: %.3f ms\n",
           e->lim.name, one > 0 ? 1000.0 / one : 0);
    fflush(stdout);
    ret = 0;
out:
    if (started && veild_stop(&t->v) != 0)
        ret = -1;
    return ret;
}

int bench_gateway_v2_run(const bench_opts *o)
{
    char uri[512];
    sw_side sw;
    tok_side ts;
    target t_sw, t_tok;
    tu_proc mock;
    char mock_model[96];
    ecdh_side *e = xcalloc(1, sizeof *e);
    unsigned seq = 0;
    int failed = 1, have_sw = 0, have_tok = 0, st;
    gw g;

    memset(&sw, 0, sizeof sw);
    memset(&ts, 0, sizeof ts);
    memset(&t_sw, 0, sizeof t_sw);
    memset(&t_tok, 0, sizeof t_tok);
    if ((st = gw_open(&g, o, uri, sizeof uri,
                      "# protocol v2: ratio = v2 req/s / bare P-256 ECDH "
                      "derives/s (all cores); v2/v1 = v2 req/s / v1 req/s "
                      "on the same veild")) != 0) {
        gw_close(&g);
        free(e);
        return st;
    }
    printf("# %u round%s x %.2f s baseline slices; %u requests per load "
           "phase; %u-byte prompt;\n"
           "#   v1 lines: `veil-bench gateway`'s (limit: bare private RSA-%u "
           "ops/s); v2 lines: each request\n"
           "#   a fresh HPKE encapsulation (DHKEM P-256, AES-256-GCM) of a "
           "Binary HTTP chat request,\n"
           "#   made before its phase; every %uth answer opened and checked\n",
           o->rounds, o->rounds == 1 ? "" : "s", o->seconds, o->requests,
           SMALL_PROMPT, o->bits, SAMPLE_EVERY);
    fflush(stdout);

    memset(&mock, 0, sizeof mock);
    if (v2_mock_start(&g, &mock) != 0)
        goto out;
    snprintf(mock_model, sizeof mock_model,
             V2_LAT_MODEL "=http://127.0.0.1:%u/v1", mock.port);
    printf("# latency backend: tests/mock-upstream pid %ld, port %u\n",
           (long)mock.pid, mock.port);
    have_sw = 1;
    if (sw_setup(&g, &sw, &t_sw) != 0 || ecdh_setup(&g, e, NULL, NULL) != 0)
        goto out;
    t_sw.extra[t_sw.nextra++] = "--model";
    t_sw.extra[t_sw.nextra++] = mock_model;
    printf("# software: RSA-%u server key in a key directory; KEM limit = "
           "EVP_PKEY_derive P-256, one thread per core (%u)\n",
           o->bits, g.ncpu);
    if (v2_target(&g, &t_sw, e, "sw", mock.port, &seq) != 0)
        goto out;
    ecdh_cleanup(&g, e);

    if (o->skip_note) {
        printf("%s\n", o->skip_note);
    } else if (o->run_pkcs11) {
        have_tok = 1;
        if (tok_setup(&g, &ts, &t_tok, uri) != 0 ||
            ecdh_setup(&g, e, &ts, uri) != 0)
            goto out;
        t_tok.extra[t_tok.nextra++] = "--model";
        t_tok.extra[t_tok.nextra++] = mock_model;
        printf("# token \"%s\" (module %s): RSA-%u server key; KEM limit = "
               "C_DeriveKey CKM_ECDH1_DERIVE + C_GetAttributeValue +\n"
               "#   C_DestroyObject on a P-256 derive key in the same token, "
               "one session per thread (%u)\n",
               o->token, o->module, o->bits, g.ncpu);
        if (v2_target(&g, &t_tok, e, "token", mock.port, &seq) != 0)
            goto out;
    }
    failed = 0;
out:
    ecdh_cleanup(&g, e);
    free(e);
    if (have_tok && tok_cleanup(&g, &ts, &t_tok) != 0)
        failed = 1;
    if (have_sw)
        sw_cleanup(&sw, &t_sw);
    if (v2_mock_stop(&g, &mock) != 0)
        failed = 1;
    gw_close(&g);
    return failed ? EXIT_FAIL : 0;
}
