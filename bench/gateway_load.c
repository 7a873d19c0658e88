/* veil-bench gateway and attest: the requests.  Packages sealed with
 * OpenSSL directly (each kind costs the same to make), one libcurl handle
 * per client, answers checked, errors counted across client threads, and
 * load phases: N client threads sending a fixed count of items.
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

/* What veild answers for every package it cannot open. */
const char UNDECRYPTABLE[] = "{\"detail\":\"" VEIL_PKG_DECRYPT_DETAIL "\"}";

/* ---- errors, counted across client threads ------------------------------ */

void errs_init(errs *er)
{
    atomic_init(&er->http, 0);
    atomic_init(&er->transport, 0);
    atomic_init(&er->bad, 0);
    pthread_mutex_init(&er->lock, NULL);
    er->first[0] = '\0';
}

unsigned errs_total(errs *er)
{
    return atomic_load(&er->http) + atomic_load(&er->transport) +
           atomic_load(&er->bad);
}

static void errs_note(errs *er, atomic_uint *which, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void errs_note(errs *er, atomic_uint *which, const char *fmt, ...)
{
    va_list ap;

    atomic_fetch_add(which, 1);
    pthread_mutex_lock(&er->lock);
    if (!er->first[0]) {
        va_start(ap, fmt);
        vsnprintf(er->first, sizeof er->first, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&er->lock);
}

/* "0", or "3 (http 1, transport 0, bad answer 2)". */
void errs_text(errs *er, char *buf, size_t n)
{
    unsigned t = errs_total(er);

    if (t == 0)
        snprintf(buf, n, "0");
    else
        snprintf(buf, n, "%u (http %u, transport %u, bad answer %u)", t,
                 atomic_load(&er->http), atomic_load(&er->transport),
                 atomic_load(&er->bad));
}

void errs_print_first(errs *er)
{
    if (er->first[0])
        printf("#   first error: %s\n", er->first);
}

/* ---- small helpers ------------------------------------------------------ */

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);

    if (!p)
        oom_fail();
    return p;
}

/* Nearest-rank quantile of sorted values. */
double quantile(const double *sorted, size_t n, double q)
{
    double r = q * (double)n;
    size_t k = (size_t)r;

    if ((double)k < r)
        k++;
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return sorted[k - 1];
}

void sort_doubles(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_double);
}

void sleep_s(double s)
{
    struct timespec ts;

    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

unsigned cpu_count(void)
{
    long n = bench_ncpu();

    if (n <= 0)
        n = 1;
    return n > MAX_CORES ? MAX_CORES : (unsigned)n;
}

/* The prompt of request `seq`: "r<salt>.<seq> " and words, len bytes. */
void fill_prompt(char *p, size_t len, uint32_t salt, uint32_t seq)
{
    static const char words[] = "the quick brown fox jumps over the lazy "
                                "dog while veil seals every request ";
    int n = snprintf(p, len + 1, "r%08x.%u ", (unsigned)salt, (unsigned)seq);
    size_t i = n < 0 ? 0 : (size_t)n < len ? (size_t)n : len;

    for (; i < len; i++)
        p[i] = words[i % (sizeof words - 1)];
    p[len] = '\0';
}

/* ---- packages ----------------------------------------------------------- */

const char *const KIND_NAME[K_N] = {
    "valid package (200)",
    "bad-oaep: random wrapped key",
    "bad-tag: flipped GCM tag byte",
    "short-key: OAEP-valid 16-byte key",
};

/* Seals pt to `to` as a NOMYO v1 package (tag in its own field), spoilt as
 * `kind` says; done with OpenSSL directly so that each kind of package
 * costs the same to make.  The text is malloc'd. */
static char *seal_pkg(EVP_PKEY *to, pkg_kind kind, const uint8_t *pt,
                      size_t len, size_t *out_len)
{
    uint8_t key[32], nonce[GCM_IV_LEN], tag[16], wk[512], *ct = NULL;
    size_t key_len = kind == K_SHORT_KEY ? 16 : 32, wk_len = sizeof wk;
    char nonce_b64[24], tag_b64[32], wk_b64[700], *ct_b64 = NULL, *out = NULL;
    size_t cap;
    int n;

    if (len > INT_MAX / 2)
        return NULL;
    ct = malloc(len ? len : 1);
    ct_b64 = malloc(4 * ((len + 2) / 3) + 1);
    if (!ct || !ct_b64) {
        oom_fail();
        goto out;
    }
    if (RAND_bytes(key, (int)key_len) != 1 ||
        RAND_bytes(nonce, sizeof nonce) != 1) {
        ossl_fail("RAND_bytes");
        goto out;
    }
    if (ossl_gcm_seal(key, key_len, nonce, sizeof nonce, pt, len, ct, tag) !=
        0) {
        ossl_fail("AES-GCM seal");
        goto out;
    }
    if (kind == K_BAD_OAEP) {
        wk_len = (size_t)EVP_PKEY_get_size(to);
        if (wk_len > sizeof wk || RAND_bytes(wk, (int)wk_len) != 1) {
            ossl_fail("RAND_bytes");
            goto out;
        }
        wk[0] &= 0x7f; /* below the modulus, whose top bit is set */
    } else if (ossl_oaep_encrypt(to, key, key_len, wk, &wk_len) != 0) {
        ossl_fail("RSA-OAEP-SHA256 encrypt");
        goto out;
    }
    if (kind == K_BAD_TAG)
        tag[0] ^= 0x01;
    EVP_EncodeBlock((unsigned char *)ct_b64, ct, (int)len);
    EVP_EncodeBlock((unsigned char *)nonce_b64, nonce, sizeof nonce);
    EVP_EncodeBlock((unsigned char *)tag_b64, tag, sizeof tag);
    EVP_EncodeBlock((unsigned char *)wk_b64, wk, (int)wk_len);
    cap = strlen(ct_b64) + 1024;
    if (!(out = malloc(cap))) {
        oom_fail();
        goto out;
    }
    n = bench_pkg_text(out, cap, ct_b64, nonce_b64, tag_b64, wk_b64);
    if (n < 0) {
        free(out);
        out = NULL;
        fprintf(stderr, "veil-bench: package does not fit\n");
        goto out;
    }
    *out_len = (size_t)n;
out:
    OPENSSL_cleanse(key, sizeof key);
    free(ct);
    free(ct_b64);
    return out;
}

void item_clear(item *it)
{
    free(it->pkg);
    it->pkg = NULL;
    it->len = 0;
}

/* Makes the request text for it->seq and seals it to `to`. */
int item_seal(const gw *g, EVP_PKEY *to, item *it)
{
    static const char pre[] =
        "{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"user\","
        "\"content\":\"";
    static const char post[] = "\"}]}";
    static const char x[] = "\"}],\"x\":[";
    size_t k = it->small_values / 2; /* "0," each */
    size_t n = sizeof pre - 1 + it->prompt_len +
               (k ? sizeof x - 1 + 2 * k + 1 : sizeof post - 1);
    char *req = malloc(n + 1), *p;

    if (!req)
        return oom_fail();
    memcpy(req, pre, sizeof pre - 1);
    fill_prompt(req + sizeof pre - 1, it->prompt_len, g->salt, it->seq);
    p = req + sizeof pre - 1 + it->prompt_len;
    if (k) {
        /* many small values next to the messages: "x":[0,0,...,0] */
        memcpy(p, x, sizeof x - 1);
        p += sizeof x - 1;
        for (size_t i = 0; i < k; i++, p += 2)
            memcpy(p, i + 1 < k ? "0," : "0]", 2);
        memcpy(p, "}", 2);
    } else {
        memcpy(p, post, sizeof post);
    }
    item_clear(it);
    it->pkg = seal_pkg(to, it->kind, (const uint8_t *)req, n, &it->len);
    free(req);
    if (!it->pkg)
        return -1;
    if (veil_uuid4(g->e, it->pid) != VEIL_OK)
        return veil_fail("veil_uuid4");
    return 0;
}

typedef struct seal_job {
    const gw *g;
    EVP_PKEY *to;
    item *items;
    unsigned n, first, stride;
    int failed;
} seal_job;

static void *seal_thread(void *arg)
{
    seal_job *j = arg;

    for (unsigned i = j->first; i < j->n && !j->failed; i += j->stride)
        if (item_seal(j->g, j->to, &j->items[i]) != 0)
            j->failed = 1;
    return NULL;
}

/* Seals every item, on all cores (before a load phase: not timed). */
int seal_all(const gw *g, EVP_PKEY *to, item *items, unsigned n)
{
    seal_job jobs[MAX_CORES];
    pthread_t th[MAX_CORES];
    unsigned t, nt = g->ncpu < n ? g->ncpu : (n ? n : 1);
    int failed = 0;

    for (t = 0; t < nt; t++) {
        jobs[t] = (seal_job){g, to, items, n, t, nt, 0};
        if (pthread_create(&th[t], NULL, seal_thread, &jobs[t]) != 0) {
            fprintf(stderr, "veil-bench: pthread_create failed\n");
            nt = t;
            failed = 1;
            break;
        }
    }
    for (t = 0; t < nt; t++) {
        pthread_join(th[t], NULL);
        failed |= jobs[t].failed;
    }
    return failed ? -1 : 0;
}

/* ---- HTTP --------------------------------------------------------------- */

static size_t http_sink(char *data, size_t size, size_t n, void *ctx)
{
    http *c = ctx;
    size_t len = size * n;

    if (c->len + len + 1 > c->cap) {
        size_t cap = 2 * (c->len + len + 1);
        char *b = realloc(c->buf, cap);

        if (!b)
            return 0;
        c->buf = b;
        c->cap = cap;
    }
    memcpy(c->buf + c->len, data, len);
    c->len += len;
    c->buf[c->len] = '\0';
    return len;
}

static size_t http_header(char *data, size_t size, size_t n, void *ctx)
{
    static const char sig[] = "X-Veil-Signature:";
    http *c = ctx;
    size_t len = size * n;

    if (len >= sizeof sig - 1 && strncasecmp(data, sig, sizeof sig - 1) == 0)
        c->signed_answer = 1;
    return len;
}

int http_init(http *c, const char *url)
{
    memset(c, 0, sizeof *c);
    if (!(c->h = curl_easy_init())) {
        fprintf(stderr, "veil-bench: curl_easy_init failed\n");
        return -1;
    }
    curl_easy_setopt(c->h, CURLOPT_URL, url);
    curl_easy_setopt(c->h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->h, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c->h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(c->h, CURLOPT_TIMEOUT, 600L);
    curl_easy_setopt(c->h, CURLOPT_ERRORBUFFER, c->err);
    curl_easy_setopt(c->h, CURLOPT_WRITEFUNCTION, http_sink);
    curl_easy_setopt(c->h, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(c->h, CURLOPT_HEADERFUNCTION, http_header);
    curl_easy_setopt(c->h, CURLOPT_HEADERDATA, c);
    return 0;
}

void http_free(http *c)
{
    if (c->h)
        curl_easy_cleanup(c->h);
    free(c->buf);
    memset(c, 0, sizeof *c);
}

/* POSTs one package with the headers a NOMYO client sends.  *status: the
 * HTTP status, or 0 when no answer came (c->err says why); *secs: the wall
 * time of the exchange. */
int http_post(const gw *g, http *c, const item *it, long *status, double *secs)
{
    struct curl_slist *h = NULL, *l;
    char pid_hdr[64], tier_hdr[64];
    const char *lines[5];
    CURLcode cc;
    double t0;

    snprintf(pid_hdr, sizeof pid_hdr, "X-Payload-ID: %s", it->pid);
    snprintf(tier_hdr, sizeof tier_hdr, "X-Security-Tier: %s",
             it->tier ? it->tier : "standard");
    lines[0] = "Content-Type: application/octet-stream";
    lines[1] = pid_hdr;
    lines[2] = g->pubkey_hdr;
    lines[3] = tier_hdr;
    lines[4] = "Expect:"; /* no 100-continue round trip for large bodies */
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        if (!(l = curl_slist_append(h, lines[i]))) {
            curl_slist_free_all(h);
            return oom_fail();
        }
        h = l;
    }
    c->len = 0;
    c->signed_answer = 0;
    c->err[0] = '\0';
    curl_easy_setopt(c->h, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c->h, CURLOPT_POSTFIELDS, it->pkg);
    curl_easy_setopt(c->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)it->len);
    t0 = now_s();
    cc = curl_easy_perform(c->h);
    *secs = now_s() - t0;
    *status = 0;
    if (cc == CURLE_OK)
        curl_easy_getinfo(c->h, CURLINFO_RESPONSE_CODE, status);
    else if (!c->err[0])
        snprintf(c->err, sizeof c->err, "%s", curl_easy_strerror(cc));
    curl_easy_setopt(c->h, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(h);
    return 0;
}

/* GET url into c->buf; 0 on HTTP 200. */
int http_get(http *c, const char *url)
{
    long status = 0;
    CURLcode cc;

    c->len = 0;
    curl_easy_setopt(c->h, CURLOPT_URL, url);
    curl_easy_setopt(c->h, CURLOPT_HTTPGET, 1L);
    cc = curl_easy_perform(c->h);
    if (cc != CURLE_OK) {
        fprintf(stderr, "veil-bench: GET %s: %s\n", url,
                c->err[0] ? c->err : curl_easy_strerror(cc));
        return -1;
    }
    curl_easy_getinfo(c->h, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200 || !c->buf) {
        fprintf(stderr, "veil-bench: GET %s: HTTP %ld\n", url, status);
        return -1;
    }
    return 0;
}

/* The _metadata of an opened attest answer against it->tier and
 * it->want; NULL when it is right, else what is wrong. */
static const char *check_metadata(const cJSON *j, const item *it)
{
    const cJSON *md = cJSON_GetObjectItemCaseSensitive(j, "_metadata");
    const cJSON *tier = cJSON_GetObjectItemCaseSensitive(md, "security_tier");
    const cJSON *ta = cJSON_GetObjectItemCaseSensitive(md, "tpm_attestation");
    const cJSON *cert = cJSON_GetObjectItemCaseSensitive(ta, "aik_certify");

    if (!cJSON_IsString(tier) || strcmp(tier->valuestring, it->tier) != 0)
        return "_metadata.security_tier is not the tier asked for";
    if (!(it->want & W_TPM))
        return ta ? "an unexpected _metadata.tpm_attestation" : NULL;
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ta, "is_available")))
        return "no _metadata.tpm_attestation with is_available true";
    if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(ta, "quote_b64")))
        return "_metadata.tpm_attestation has no quote_b64";
    if (it->want & W_AK_CERT)
        return cJSON_IsObject(cert) ? NULL
                                    : "tpm_attestation.aik_certify is not an "
                                      "object (tpm_ak_per_request)";
    return cJSON_IsNull(cert) ? NULL
                              : "tpm_attestation.aik_certify is not null";
}

/* Opens an answer with the client key: it must echo the item's prompt
 * (and, with it->tier, pass check_metadata).  0, or -1 with why filled. */
static int check_answer(const gw *g, const char *body, size_t len,
                        const item *it, char *why, size_t why_size)
{
    veil_secbuf *pt = NULL;
    cJSON *j = NULL;
    const cJSON *content;
    const char *bad_md = NULL;
    char *want = NULL;
    int ok = 0;

    if (veil_pkg_open(g->e, g->client_key, body, len, &pt, NULL) != VEIL_OK) {
        snprintf(why, why_size, "payload %s: the answer does not open: %.200s",
                 it->pid, veil_last_error()->message);
        return -1;
    }
    j = cJSON_ParseWithLength((const char *)veil_secbuf_data(pt),
                              veil_secbuf_len(pt));
    content = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(
            cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"),
                               0),
            "message"),
        "content");
    if ((want = malloc(it->prompt_len + 1)) != NULL) {
        fill_prompt(want, it->prompt_len, g->salt, it->seq);
        ok = cJSON_IsString(content) && !strcmp(content->valuestring, want);
    }
    if (!ok)
        snprintf(why, why_size,
                 "payload %s: the answer does not echo the prompt: %.120s",
                 it->pid, (const char *)veil_secbuf_data(pt));
    else if (it->tier && (bad_md = check_metadata(j, it)) != NULL) {
        snprintf(why, why_size, "payload %s (%s tier): %s", it->pid, it->tier,
                 bad_md);
        ok = 0;
    }
    free(want);
    cJSON_Delete(j);
    veil_secbuf_free(pt);
    return ok ? 0 : -1;
}

/* Sends one item and books the outcome; returns its latency (seconds). */
double run_item(const gw *g, http *c, const item *it, int check, errs *er)
{
    char why[320];
    long status;
    double secs = 0;

    if (http_post(g, c, it, &status, &secs) != 0) {
        errs_note(er, &er->transport, "out of memory");
        return secs;
    }
    if (status == 0) {
        errs_note(er, &er->transport, "payload %s: %s", it->pid, c->err);
    } else if (status != (it->kind == K_VALID ? 200 : 400)) {
        errs_note(er, &er->http, "payload %s (%s): HTTP %ld: %.160s", it->pid,
                  KIND_NAME[it->kind], status, c->buf ? c->buf : "");
    } else if (it->kind != K_VALID) {
        /* One answer, byte for byte, whatever failed. */
        if (c->len != sizeof UNDECRYPTABLE - 1 ||
            memcmp(c->buf, UNDECRYPTABLE, c->len) != 0)
            errs_note(er, &er->bad, "payload %s (%s): answer %.160s", it->pid,
                      KIND_NAME[it->kind], c->buf ? c->buf : "");
    } else if (it->tier && !(it->want & W_SIG) != !c->signed_answer) {
        errs_note(er, &er->bad, "payload %s (%s tier): %s", it->pid, it->tier,
                  c->signed_answer ? "an unexpected X-Veil-Signature header"
                                   : "no X-Veil-Signature header");
    } else if (check &&
               check_answer(g, c->buf, c->len, it, why, sizeof why) != 0) {
        errs_note(er, &er->bad, "%s", why);
    }
    return secs;
}

/* ---- load phases -------------------------------------------------------- */

typedef struct load_arg {
    load *l;
    unsigned idx;
} load_arg;

static void *load_thread(void *arg)
{
    load_arg *a = arg;
    load *l = a->l;
    http *c = &l->clients[a->idx];
    unsigned i;

    pthread_barrier_wait(&l->go);
    if (l->one_each) {
        if (a->idx < l->n)
            l->lat[a->idx] = run_item(l->g, c, &l->items[a->idx], 1, l->er);
        return NULL;
    }
    while ((i = atomic_fetch_add(&l->next, 1)) < l->n) {
        const item *it = &l->items[i];
        l->lat[i] = run_item(
            l->g, c, it, l->check_all || it->seq % SAMPLE_EVERY == 0, l->er);
        if (l->done)
            l->done[a->idx]++;
    }
    return NULL;
}

/* Runs the items through the clients, one thread per client; *wall: from
 * the start signal to the last answer. */
int run_load(load *l, double *wall)
{
    load_arg *args = xcalloc(l->nclients, sizeof *args);
    pthread_t *th = xcalloc(l->nclients, sizeof *th);
    unsigned t, started = 0;
    double t0;
    int ret = -1;

    if (!args || !th)
        goto out;
    atomic_init(&l->next, 0);
    if (pthread_barrier_init(&l->go, NULL, l->nclients + 1) != 0) {
        fprintf(stderr, "veil-bench: pthread_barrier_init failed\n");
        goto out;
    }
    for (t = 0; t < l->nclients; t++) {
        args[t] = (load_arg){l, t};
        if (pthread_create(&th[t], NULL, load_thread, &args[t]) != 0) {
            /* the barrier would never open: give up at once */
            fprintf(stderr, "veil-bench: pthread_create failed\n");
            exit(EXIT_FAIL);
        }
        started++;
    }
    pthread_barrier_wait(&l->go);
    t0 = now_s();
    for (t = 0; t < started; t++)
        pthread_join(th[t], NULL);
    *wall = now_s() - t0;
    pthread_barrier_destroy(&l->go);
    ret = 0;
out:
    free(args);
    free(th);
    return ret;
}

/* ---- client sets ----------------------------------------------------------
 */

int clients_open(const gw *g, target *t, client_set *cs, unsigned nc,
                 unsigned n, unsigned *seq)
{
    unsigned room = n > nc ? n : nc, i;
    char url[128];
    double wall;
    errs warm;
    load l;

    memset(cs, 0, sizeof *cs);
    cs->nc = nc;
    cs->room = room;
    cs->clients = xcalloc(nc, sizeof *cs->clients);
    cs->items = xcalloc(room, sizeof *cs->items);
    cs->lat = xcalloc(room, sizeof *cs->lat);
    if (!cs->clients || !cs->items || !cs->lat)
        return -1;
    snprintf(url, sizeof url, "%s" ROUTE, t->v.url);
    for (i = 0; i < nc; i++, cs->inited++)
        if (http_init(&cs->clients[i], url) != 0)
            return -1;

    /* Warm-up: every client opens its connection with one request. */
    errs_init(&warm);
    if (clients_seal(g, t, cs, nc, seq) != 0)
        return -1;
    l = (load){.g = g,
               .items = cs->items,
               .n = nc,
               .lat = cs->lat,
               .clients = cs->clients,
               .nclients = nc,
               .one_each = 1,
               .check_all = 1,
               .er = &warm};
    if (run_load(&l, &wall) != 0)
        return -1;
    clients_clear(cs, nc);
    if (errs_total(&warm)) {
        fprintf(stderr, "veil-bench: %s: warm-up requests failed: %s\n",
                t->name, warm.first);
        return -1;
    }
    return 0;
}

int clients_seal(const gw *g, target *t, client_set *cs, unsigned n,
                 unsigned *seq)
{
    for (unsigned i = 0; i < n; i++)
        cs->items[i] = (item){
            .seq = (*seq)++, .kind = K_VALID, .prompt_len = SMALL_PROMPT};
    return seal_all(g, t->pub, cs->items, n);
}

int clients_run(const gw *g, client_set *cs, unsigned n, unsigned *done,
                errs *er, double *wall)
{
    load l = {.g = g,
              .items = cs->items,
              .n = n,
              .lat = cs->lat,
              .clients = cs->clients,
              .nclients = cs->nc,
              .done = done,
              .er = er};

    return run_load(&l, wall);
}

void clients_clear(client_set *cs, unsigned n)
{
    for (unsigned i = 0; cs->items && i < n; i++)
        item_clear(&cs->items[i]);
}

void clients_close(client_set *cs)
{
    for (unsigned i = 0; i < cs->inited; i++)
        http_free(&cs->clients[i]);
    clients_clear(cs, cs->room);
    free(cs->clients);
    free(cs->items);
    free(cs->lat);
    memset(cs, 0, sizeof *cs);
}

void p50_p99(double *v, size_t n, double *p50, double *p99)
{
    sort_doubles(v, n);
    *p50 = quantile(v, n, 0.50) * 1e3;
    *p99 = quantile(v, n, 0.99) * 1e3;
}

void errs_report(errs *er)
{
    char text[96];

    if (!errs_total(er))
        return;
    errs_text(er, text, sizeof text);
    printf("#   errors: %s\n", text);
    errs_print_first(er);
}
