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
 * Refusal timing: packages of three failing kinds and a valid one, one
 * client, in shuffled order: latency medians and ratios.
 *
 * Slow clients (software key): SLOW_CLIENTS legitimate clients, in rounds
 * alternating a phase with 16 slow uploaders and 16 slow readers connected
 * and a phase without them; ratio = req/s with / req/s without.  A slow
 * uploader declares 4 MiB and sends 20 KiB/s (above veild's default
 * body_min_rate: it is not cut for its rate); a slow reader sends a whole
 * request with a 4 MiB prompt and then reads 1 KiB of the answer a second
 * through a 4 KiB window.  Either reconnects when veild closes it.
 *
 * Memory: a fresh veild, VmRSS when idle, then waves of 64 concurrent
 * 1 MiB requests while VmRSS is sampled; VmHWM at the end.  Then the same
 * with many small values: a short prompt beside 1 MiB of [0,0,...].
 *
 * veil-bench attest (bench_attest_run, at the end): what signing and TPM
 * attestation add to the latency of one answer.  Four veild instances
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

#include "bench.h"
#include "package.h"

#define MODEL "bench-echo"
#define ROUTE "/v1/chat/secure_completion"
#define CLIENT_BITS 2048
#define SAMPLE_EVERY 50
#define SMALL_PROMPT 48
#define TIMING_PROMPT (256u * 1024u)
#define MEM_PROMPT (1024u * 1024u)
#define MEM_CLIENTS 64
#define MEM_BODY_LIMIT "2M"
#define MEM_BODY_LIMIT_MIB 2.0
#define MAX_CORES 64
#define TARGET_CLIENTS 64
#define TARGET_RATIO 0.80
#define TARGET_SW_RATIO 0.85 /* the software key (issue 11) */
#define SLOW_UPLOADERS 16
#define SLOW_READERS 16
#define SLOW_CLIENTS 8
#define SLOW_DECLARED (4u << 20)
#define SLOW_UPLOAD_RATE 20480 /* bytes/s per uploader */
#define SLOW_PROMPT (4u << 20)
#define SLOW_TICK_MS 100
#define TARGET_SLOW_RATIO 0.80
#define TARGET_TAIL 4.0
#define TARGET_MEM_MIB 64.0
#define VEILD_WORKERS_DEFAULT 4 /* gateway/config.c */
#define START_WAIT_S 30.0
#define STOP_WAIT_S 40.0
#define MAX_EXTRA_ARGS 12 /* veild arguments a target adds */

/* What veild answers for every package it cannot open. */
static const char UNDECRYPTABLE[] =
    "{\"detail\":\"" VEIL_PKG_DECRYPT_DETAIL "\"}";

/* ---- the run ------------------------------------------------------------ */

typedef struct gw {
    const bench_opts *o;
    veil_engine *e;
    veil_key *client_key; /* RSA-2048, software: answers are sealed to it */
    char *pubkey_hdr;     /* "X-Public-Key: <percent-encoded PEM>" */
    uint32_t salt;        /* makes this run's prompts unique */
    unsigned ncpu;
    char dir[PATH_MAX]; /* temporary: key directory, port files, logs */
    int have_dir;
    int have_curl; /* curl_global_init done */
} gw;

/* One veild started by us. */
typedef struct veild_proc {
    pid_t pid;
    char name[32];
    char url[64];
    char log[PATH_MAX + 64];
    char port_file[PATH_MAX + 64];
    char state_dir[PATH_MAX + 64]; /* its replay register */
} veild_proc;

/* A server key and the veild serving it. */
typedef struct target {
    const char *name; /* "sw-rsa4096", "token-rsa4096" */
    const char *key_ref;
    int token; /* veild opens a token key (server or signing key): it gets
                  --pkcs11-module and --pin-source */
    const char *extra[MAX_EXTRA_ARGS]; /* more veild arguments */
    unsigned nextra;
    EVP_PKEY *pub; /* the public half: requests are sealed to it */
    veild_proc v;
    /* the bare limit: one op per thread context, one thread per core */
    bench_op bare_op;
    void *bare_ctx[MAX_CORES];
    unsigned nbare;
} target;

/* ---- errors, counted across client threads ------------------------------ */

typedef struct errs {
    atomic_uint http;      /* an unexpected HTTP status */
    atomic_uint transport; /* no HTTP answer at all */
    atomic_uint bad;       /* an answer that does not open or echo */
    pthread_mutex_t lock;
    char first[320];
} errs;

static void errs_init(errs *er)
{
    atomic_init(&er->http, 0);
    atomic_init(&er->transport, 0);
    atomic_init(&er->bad, 0);
    pthread_mutex_init(&er->lock, NULL);
    er->first[0] = '\0';
}

static unsigned errs_total(errs *er)
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
static void errs_text(errs *er, char *buf, size_t n)
{
    unsigned t = errs_total(er);

    if (t == 0)
        snprintf(buf, n, "0");
    else
        snprintf(buf, n, "%u (http %u, transport %u, bad answer %u)", t,
                 atomic_load(&er->http), atomic_load(&er->transport),
                 atomic_load(&er->bad));
}

static void errs_print_first(errs *er)
{
    if (er->first[0])
        printf("#   first error: %s\n", er->first);
}

/* ---- small helpers ------------------------------------------------------ */

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);

    if (!p)
        oom_fail();
    return p;
}

/* Nearest-rank quantile of sorted values. */
static double quantile(const double *sorted, size_t n, double q)
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

static void sort_doubles(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_double);
}

static void sleep_s(double s)
{
    struct timespec ts;

    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static unsigned cpu_count(void)
{
    cpu_set_t set;
    long n = -1;

    if (sched_getaffinity(0, sizeof set, &set) == 0)
        n = CPU_COUNT(&set);
    if (n <= 0)
        n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n <= 0)
        n = 1;
    return n > MAX_CORES ? MAX_CORES : (unsigned)n;
}

static int make_uuid(char out[37])
{
    uint8_t b[16];

    if (RAND_bytes(b, sizeof b) != 1)
        return ossl_fail("RAND_bytes");
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10],
             b[11], b[12], b[13], b[14], b[15]);
    return 0;
}

/* The prompt of request `seq`: "r<salt>.<seq> " and words, len bytes. */
static void fill_prompt(char *p, size_t len, uint32_t salt, uint32_t seq)
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

typedef enum pkg_kind {
    K_VALID = 0,
    K_BAD_OAEP,  /* wrapped key: random bytes below the modulus */
    K_BAD_TAG,   /* a valid wrapped key; one GCM tag byte flipped */
    K_SHORT_KEY, /* OAEP-valid wrapping of a 16-byte key */
    K_N
} pkg_kind;

static const char *const KIND_NAME[K_N] = {
    "valid package (200)",
    "bad-oaep: random wrapped key",
    "bad-tag: flipped GCM tag byte",
    "short-key: OAEP-valid 16-byte key",
};

static int gcm_seal(const uint8_t *key, size_t key_len, const uint8_t *iv,
                    const uint8_t *pt, size_t len, uint8_t *ct, uint8_t tag[16])
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    const EVP_CIPHER *c = key_len == 16 ? EVP_aes_128_gcm() : EVP_aes_256_gcm();
    int n1 = 0, n2 = 0, ok;

    ok = ctx && len <= INT_MAX &&
         EVP_EncryptInit_ex(ctx, c, NULL, NULL, NULL) == 1 &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, GCM_IV_LEN, NULL) ==
             1 &&
         EVP_EncryptInit_ex(ctx, NULL, NULL, key, iv) == 1 &&
         EVP_EncryptUpdate(ctx, ct, &n1, pt, (int)len) == 1 &&
         EVP_EncryptFinal_ex(ctx, ct + n1, &n2) == 1 &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
    EVP_CIPHER_CTX_free(ctx);
    return ok ? 0 : -1;
}

static int oaep_wrap(EVP_PKEY *to, const uint8_t *key, size_t key_len,
                     uint8_t *out, size_t *out_len)
{
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new(to, NULL);
    int ok = pc && EVP_PKEY_encrypt_init(pc) == 1 && ossl_set_oaep(pc) &&
             EVP_PKEY_encrypt(pc, out, out_len, key, key_len) == 1;

    EVP_PKEY_CTX_free(pc);
    return ok ? 0 : -1;
}

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
    if (gcm_seal(key, key_len, nonce, pt, len, ct, tag) != 0) {
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
    } else if (oaep_wrap(to, key, key_len, wk, &wk_len) != 0) {
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
    n = snprintf(out, cap,
                 "{\"version\":\"1.0\",\"algorithm\":"
                 "\"hybrid-aes256-rsa4096\",\"encrypted_payload\":{"
                 "\"ciphertext\":\"%s\",\"nonce\":\"%s\",\"tag\":\"%s\"},"
                 "\"encrypted_aes_key\":\"%s\",\"key_algorithm\":"
                 "\"RSA-OAEP-SHA256\",\"payload_algorithm\":"
                 "\"AES-256-GCM\"}",
                 ct_b64, nonce_b64, tag_b64, wk_b64);
    if (n < 0 || (size_t)n >= cap) {
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

/* What an attest answer must carry (item.want). */
#define W_SIG 1u     /* an X-Veil-Signature header (else none) */
#define W_TPM 2u     /* _metadata.tpm_attestation, is_available true */
#define W_AK_CERT 4u /* ... with an aik_certify object (else null) */

/* One request: its package and, after it ran, its outcome. */
typedef struct item {
    char *pkg;
    size_t len;
    char pid[37];
    uint32_t seq;
    pkg_kind kind;
    size_t prompt_len;
    const char *tier;    /* X-Security-Tier; NULL: "standard", and the W_
                            checks are skipped (gateway) */
    unsigned want;       /* W_ flags, when tier is set */
    size_t small_values; /* > 0: bytes of a top-level "x": [0,0,...] */
} item;

static void item_clear(item *it)
{
    free(it->pkg);
    it->pkg = NULL;
    it->len = 0;
}

/* Makes the request text for it->seq and seals it to `to`. */
static int item_seal(const gw *g, EVP_PKEY *to, item *it)
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
    return make_uuid(it->pid);
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
static int seal_all(const gw *g, EVP_PKEY *to, item *items, unsigned n)
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

typedef struct http {
    CURL *h;
    char *buf; /* the last answer, NUL-terminated */
    size_t len, cap;
    int signed_answer; /* the last answer had an X-Veil-Signature header */
    char err[CURL_ERROR_SIZE];
} http;

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

static int http_init(http *c, const char *url)
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

static void http_free(http *c)
{
    if (c->h)
        curl_easy_cleanup(c->h);
    free(c->buf);
    memset(c, 0, sizeof *c);
}

/* POSTs one package with the headers a NOMYO client sends.  *status: the
 * HTTP status, or 0 when no answer came (c->err says why); *secs: the wall
 * time of the exchange. */
static int http_post(const gw *g, http *c, const item *it, long *status,
                     double *secs)
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
static int http_get(http *c, const char *url)
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
static double run_item(const gw *g, http *c, const item *it, int check,
                       errs *er)
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

/* ---- veild -------------------------------------------------------------- */

static void print_log_tail(const char *path)
{
    char line[512];
    long pos;
    FILE *f = fopen(path, "r");

    if (!f)
        return;
    if (fseek(f, 0, SEEK_END) == 0 && (pos = ftell(f)) > 4096)
        fseek(f, pos - 4096, SEEK_SET);
    else
        fseek(f, 0, SEEK_SET);
    fprintf(stderr, "veil-bench: --- end of %s ---\n", path);
    while (fgets(line, sizeof line, f))
        fputs(line, stderr);
    fprintf(stderr, "veil-bench: ---\n");
    fclose(f);
}

static int read_port(const char *path, unsigned *port)
{
    char buf[32];
    char *end;
    unsigned long v;
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return -1;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    errno = 0;
    v = strtoul(buf, &end, 10);
    if (errno || end == buf || (*end && *end != '\n') || v == 0 || v > 65535)
        return -1;
    *port = (unsigned)v;
    return 0;
}

/* Starts veild on a free port with the echo model and the rate limits out
 * of the way; waits for its port file.  It gets SIGTERM should we die. */
static int veild_start(const gw *g, veild_proc *v, const char *name,
                       const target *t, unsigned replay_cap,
                       const char *body_limit)
{
    const bench_opts *o = g->o;
    const char *argv[40 + MAX_EXTRA_ARGS];
    char cap[16], workers[16];
    pid_t parent = getpid();
    unsigned port = 0;
    double t0;
    int n = 0, fd, st;

    memset(v, 0, sizeof *v);
    snprintf(v->name, sizeof v->name, "%s", name);
    snprintf(v->log, sizeof v->log, "%s/veild-%s.log", g->dir, name);
    snprintf(v->port_file, sizeof v->port_file, "%s/veild-%s.port", g->dir,
             name);
    snprintf(v->state_dir, sizeof v->state_dir, "%s/veild-%s.state", g->dir,
             name);
    snprintf(cap, sizeof cap, "%u", replay_cap);
    snprintf(workers, sizeof workers, "%u", o->workers);
    argv[n++] = o->veild;
    argv[n++] = "--port";
    argv[n++] = "0";
    argv[n++] = "--port-file";
    argv[n++] = v->port_file;
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

    fd = open(v->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "veil-bench: cannot create %s: %s\n", v->log,
                strerror(errno));
        return -1;
    }
    fflush(NULL);
    v->pid = fork();
    if (v->pid < 0) {
        fprintf(stderr, "veil-bench: fork: %s\n", strerror(errno));
        close(fd);
        return -1;
    }
    if (v->pid == 0) {
        int null = open("/dev/null", O_RDONLY);

        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(127);
        if (null < 0 || dup2(null, 0) < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
            _exit(127);
        execv(o->veild, (char *const *)argv);
        _exit(127);
    }
    close(fd);
    t0 = now_s();
    while (read_port(v->port_file, &port) != 0) {
        if (waitpid(v->pid, &st, WNOHANG) == v->pid) {
            fprintf(stderr, "veil-bench: veild (%s) exited at start%s\n",
                    o->veild,
                    WIFEXITED(st) && WEXITSTATUS(st) == 127
                        ? " (could not run it? see --veild)"
                        : "");
            print_log_tail(v->log);
            v->pid = 0;
            return -1;
        }
        if (now_s() - t0 > START_WAIT_S) {
            fprintf(stderr, "veil-bench: veild wrote no port file in %.0f s\n",
                    START_WAIT_S);
            print_log_tail(v->log);
            return -1;
        }
        sleep_s(0.02);
    }
    snprintf(v->url, sizeof v->url, "http://127.0.0.1:%u", port);
    return 0;
}

/* Counts the warnings and errors in veild's log (but the expected one
 * about authentication being off) and prints the count and the first. */
static void veild_log_summary(const veild_proc *v)
{
    char line[512], first[512] = "";
    unsigned n = 0;
    FILE *f = fopen(v->log, "r");

    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        if ((!strncmp(line, "veild: warn:", 12) ||
             !strncmp(line, "veild: error:", 13)) &&
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

/* SIGTERM, then waits (veild finishes requests in flight, at most 30 s).
 * 0 when it exited 0. */
static int veild_stop(veild_proc *v)
{
    double t0 = now_s();
    int st = 0;
    pid_t r;

    if (v->pid <= 0)
        return 0;
    kill(v->pid, SIGTERM);
    while ((r = waitpid(v->pid, &st, WNOHANG)) == 0 &&
           now_s() - t0 < STOP_WAIT_S)
        sleep_s(0.02);
    if (r == 0) {
        fprintf(stderr, "veil-bench: veild (%s) did not stop in %.0f s\n",
                v->name, STOP_WAIT_S);
        kill(v->pid, SIGKILL);
        waitpid(v->pid, &st, 0);
        v->pid = 0;
        return -1;
    }
    v->pid = 0;
    veild_log_summary(v);
    if (r < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        if (WIFSIGNALED(st))
            fprintf(stderr, "veil-bench: veild (%s) died of signal %d\n",
                    v->name, WTERMSIG(st));
        else
            fprintf(stderr, "veil-bench: veild (%s) exited with status %d\n",
                    v->name, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        print_log_tail(v->log);
        return -1;
    }
    return 0;
}

/* The key veild publishes must be the one we sealed to. */
static int veild_check_key(const target *t)
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
static int proc_mem(pid_t pid, unsigned long *rss, unsigned long *hwm)
{
    char path[64], buf[4096];
    const char *p;
    ssize_t n;
    int fd;

    snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return -1;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    if (!(p = strstr(buf, "VmRSS:")))
        return -1;
    *rss = strtoul(p + 6, NULL, 10);
    if (!(p = strstr(buf, "VmHWM:")))
        return -1;
    *hwm = strtoul(p + 6, NULL, 10);
    return 0;
}

/* CPU time (user + system) of pid, seconds (clock-tick resolution). */
static int proc_cpu(pid_t pid, double *secs)
{
    char path[64], buf[1024], *p;
    unsigned long long ut = 0, st = 0;
    long tick = sysconf(_SC_CLK_TCK);
    ssize_t n;
    int fd;

    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return -1;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0 || tick <= 0)
        return -1;
    buf[n] = '\0';
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
static double self_cpu(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* ---- load phases -------------------------------------------------------- */

typedef struct load {
    const gw *g;
    item *items;
    unsigned n;
    atomic_uint next;
    double *lat; /* per item, seconds */
    http *clients;
    unsigned nclients;
    unsigned *done; /* per client: requests sent, or NULL */
    int one_each;   /* client i sends item i (warm-up, memory) */
    int check_all;
    errs *er;
    pthread_barrier_t go;
} load;

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
static int run_load(load *l, double *wall)
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
static int bare_rate(const target *t, double seconds, double *rate,
                     double *cpu_per_op)
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

/* Software: EVP_PKEY_decrypt with this thread's copy of the key. */
typedef struct sw_bare {
    EVP_PKEY *k;
    uint8_t ct[512];
    size_t ct_len;
    uint8_t out[512];
} sw_bare;

static int op_sw_bare(void *arg)
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

/* Token: C_DecryptInit + C_Decrypt in this thread's own session. */
typedef struct tok_bare {
    p11_bare b; /* a copy of the shared one, with its own session */
    p11_rsa_ctx c;
} tok_bare;

static int op_tok_bare(void *arg)
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
 * slice); prints one line. */
static int run_level(const gw *g, target *t, unsigned nclients, unsigned *seq)
{
    const bench_opts *o = g->o;
    unsigned n = o->requests, r, i;
    http *clients = xcalloc(nclients, sizeof *clients);
    item *items = xcalloc(n > nclients ? n : nclients, sizeof *items);
    double *lat = xcalloc(n > nclients ? n : nclients, sizeof *lat);
    double *all = xcalloc((size_t)n * o->rounds, sizeof *all);
    unsigned *done = xcalloc(nclients, sizeof *done), dmin, dmax;
    double rates[MAX_ROUNDS], limits[MAX_ROUNDS], wall, rate, limit, ratio;
    double p50, p99, tail, mean, bare_cpu[MAX_ROUNDS], v0, v1, c0;
    double veild_cpu = 0, own_cpu = 0, walls = 0;
    char url[128], name[64], etext[96], result[64];
    int target_level = nclients >= TARGET_CLIENTS, ret = -1;
    unsigned inited = 0;
    load l;
    errs er, warm;

    errs_init(&er);
    errs_init(&warm);
    if (!clients || !items || !lat || !all || !done)
        goto out;
    snprintf(url, sizeof url, "%s" ROUTE, t->v.url);
    for (i = 0; i < nclients; i++, inited++)
        if (http_init(&clients[i], url) != 0)
            goto out;

    /* Warm-up: every client opens its connection with one request. */
    for (i = 0; i < nclients; i++)
        items[i] = (item){
            .seq = (*seq)++, .kind = K_VALID, .prompt_len = SMALL_PROMPT};
    if (seal_all(g, t->pub, items, nclients) != 0)
        goto out;
    l = (load){.g = g,
               .items = items,
               .n = nclients,
               .lat = lat,
               .clients = clients,
               .nclients = nclients,
               .one_each = 1,
               .check_all = 1,
               .er = &warm};
    if (run_load(&l, &wall) != 0)
        goto out;
    for (i = 0; i < nclients; i++)
        item_clear(&items[i]);
    if (errs_total(&warm)) {
        fprintf(stderr, "veil-bench: %s: warm-up requests failed: %s\n",
                t->name, warm.first);
        goto out;
    }

    for (r = 0; r < o->rounds; r++) {
        for (i = 0; i < n; i++)
            items[i] = (item){
                .seq = (*seq)++, .kind = K_VALID, .prompt_len = SMALL_PROMPT};
        if (seal_all(g, t->pub, items, n) != 0)
            goto out;
        l = (load){.g = g,
                   .items = items,
                   .n = n,
                   .lat = lat,
                   .clients = clients,
                   .nclients = nclients,
                   .done = done,
                   .er = &er};
        if (proc_cpu(t->v.pid, &v0) != 0)
            v0 = -1;
        c0 = self_cpu();
        if (run_load(&l, &wall) != 0)
            goto out;
        own_cpu += self_cpu() - c0;
        if (v0 >= 0 && proc_cpu(t->v.pid, &v1) == 0)
            veild_cpu += v1 - v0;
        walls += wall;
        for (i = 0; i < n; i++)
            item_clear(&items[i]);
        rates[r] = (double)n / wall;
        memcpy(all + (size_t)r * n, lat, n * sizeof *lat);
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
    sort_doubles(all, (size_t)n * o->rounds);
    p50 = quantile(all, (size_t)n * o->rounds, 0.50) * 1e3;
    p99 = quantile(all, (size_t)n * o->rounds, 0.99) * 1e3;
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
        double vreq = veild_cpu / total * 1e3, creq = own_cpu / total * 1e3;
        double bop = median(bare_cpu, o->rounds) * 1e3;

        printf("#   cpu/request: veild %.2f ms + clients %.2f ms; bare op "
               "%.2f ms (cpu ratio %.3f); cores busy %.0f%%; mean %.2f ms",
               vreq, creq, bop, vreq + creq > 0 ? bop / (vreq + creq) : 0,
               walls > 0 ? (veild_cpu + own_cpu) / (walls * g->ncpu) * 100 : 0,
               mean);
        if (nclients > 1)
            printf("; requests per client %u..%u", dmin, dmax);
        printf("\n");
    }
    if (errs_total(&er)) {
        errs_text(&er, etext, sizeof etext);
        printf("#   errors: %s\n", etext);
        errs_print_first(&er);
    }
    fflush(stdout);
    ret = 0;
out:
    for (i = 0; i < inited; i++)
        http_free(&clients[i]);
    free(done);
    if (items)
        for (i = 0; i < (n > nclients ? n : nclients); i++)
            item_clear(&items[i]);
    free(clients);
    free(items);
    free(lat);
    free(all);
    return ret;
}

/* ---- refusal timing ----------------------------------------------------- */

static uint32_t xorshift(uint32_t *s)
{
    uint32_t x = *s;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

static int run_timing(const gw *g, target *t, unsigned *seq)
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
static int run_memory(const gw *g, target *t, unsigned *seq, int small_values)
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
           g->o->workers ? "" : " (default)", (long)t->v.pid, nw,
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
    if (proc_mem(t->v.pid, &idle_rss, &hwm) != 0) {
        fprintf(stderr, "veil-bench: cannot read /proc/%ld/status\n",
                (long)t->v.pid);
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
        s.pid = t->v.pid;
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
        if (proc_mem(t->v.pid, &after_rss, &hwm) != 0)
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

/* The software target: a key made by veil, saved to a key directory for
 * veild (dir:PATH) and read back by OpenSSL for the baseline, one copy
 * per thread. */
typedef struct sw_side {
    char key_dir[PATH_MAX + 16];
    char key_ref[PATH_MAX + 24];
    char name[32];
    sw_bare bare[MAX_CORES];
    int saved;
} sw_side;

static int sw_setup(const gw *g, sw_side *sw, target *t)
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
        if (oaep_wrap(t->pub, msg, sizeof msg, b->ct, &ct_len) != 0)
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

static void sw_cleanup(sw_side *sw, target *t)
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

/* The token target: a token object made through the engine (veild is
 * another process: a session object would be invisible to it), deleted
 * at the end; the baseline opens a session per thread. */
typedef struct tok_side {
    veil_key *key;
    char key_uri[sizeof((veil_key_info *)0)->uri];
    char name[48];
    const char *mech;
    p11_bare b;
    tok_bare bare[MAX_CORES];
    unsigned nsess;
} tok_side;

static int tok_setup(const gw *g, tok_side *ts, target *t, const char *uri)
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
    if (oaep_wrap(t->pub, msg, sizeof msg, c.ct, &c.ct_len) != 0)
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

static int tok_cleanup(const gw *g, tok_side *ts, target *t)
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
        hl = snprintf(head, sizeof head,
                      "POST " ROUTE " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      "Content-Type: application/octet-stream\r\n"
                      "X-Payload-ID: %s\r\n%s\r\n"
                      "X-Security-Tier: standard\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      it.pid, a->g->pubkey_hdr, it.len);
        c->req = malloc((size_t)hl + it.len);
        if (hl <= 0 || (size_t)hl >= sizeof head || c->req == NULL) {
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

        if (make_uuid(pid) != 0) {
            close(fd);
            return -1;
        }
        hl = snprintf(head, sizeof head,
                      "POST " ROUTE " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      "Content-Type: application/octet-stream\r\n"
                      "X-Payload-ID: %s\r\n%s\r\n"
                      "X-Security-Tier: standard\r\n"
                      "Content-Length: %u\r\n\r\n",
                      pid, a->g->pubkey_hdr, SLOW_DECLARED);
        if (send(fd, head, (size_t)hl, MSG_NOSIGNAL) != hl) {
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
static int run_slow(const gw *g, target *t, unsigned *seq)
{
    const bench_opts *o = g->o;
    unsigned n = o->requests, r, i, nc = SLOW_CLIENTS, inited = 0, held;
    unsigned held_min = SLOW_UPLOADERS + SLOW_READERS, reconnects[2] = {0, 0};
    http *clients = xcalloc(nc, sizeof *clients);
    item *items = xcalloc(n > nc ? n : nc, sizeof *items);
    double *lat = xcalloc(n > nc ? n : nc, sizeof *lat);
    double *all = xcalloc((size_t)n * o->rounds, sizeof *all);
    double with[MAX_ROUNDS], without[MAX_ROUNDS], wall, rw, rwo, ratio;
    double p50, p99;
    char url[128], name[64], etext[96];
    slow_attack *a = xcalloc(1, sizeof *a);
    int ret = -1;
    load l;
    errs er, warm;

    errs_init(&er);
    errs_init(&warm);
    if (!clients || !items || !lat || !all || !a)
        goto out;
    snprintf(url, sizeof url, "%s" ROUTE, t->v.url);
    for (i = 0; i < nc; i++, inited++)
        if (http_init(&clients[i], url) != 0)
            goto out;
    for (i = 0; i < nc; i++)
        items[i] = (item){
            .seq = (*seq)++, .kind = K_VALID, .prompt_len = SMALL_PROMPT};
    if (seal_all(g, t->pub, items, nc) != 0)
        goto out;
    l = (load){.g = g,
               .items = items,
               .n = nc,
               .lat = lat,
               .clients = clients,
               .nclients = nc,
               .one_each = 1,
               .check_all = 1,
               .er = &warm};
    if (run_load(&l, &wall) != 0)
        goto out;
    for (i = 0; i < nc; i++)
        item_clear(&items[i]);
    if (errs_total(&warm)) {
        fprintf(stderr, "veil-bench: %s: warm-up requests failed: %s\n",
                t->name, warm.first);
        goto out;
    }
    for (r = 0; r < o->rounds; r++) {
        for (int phase = 0; phase < 2; phase++) {
            for (i = 0; i < n; i++)
                items[i] = (item){.seq = (*seq)++,
                                  .kind = K_VALID,
                                  .prompt_len = SMALL_PROMPT};
            if (seal_all(g, t->pub, items, n) != 0)
                goto out;
            if (phase == 0 && slow_start(a, g, t, 1u << 30 | r << 20) != 0)
                goto out;
            l = (load){.g = g,
                       .items = items,
                       .n = n,
                       .lat = lat,
                       .clients = clients,
                       .nclients = nc,
                       .er = &er};
            if (run_load(&l, &wall) != 0)
                goto out;
            if (phase == 0) {
                slow_stop(a, &held);
                held_min = held < held_min ? held : held_min;
                reconnects[0] += a->reconnects[0];
                reconnects[1] += a->reconnects[1];
                memcpy(all + (size_t)r * n, lat, n * sizeof *lat);
                with[r] = (double)n / wall;
            } else {
                without[r] = (double)n / wall;
            }
            for (i = 0; i < n; i++)
                item_clear(&items[i]);
        }
    }
    rw = median(with, o->rounds);
    rwo = median(without, o->rounds);
    ratio = rwo > 0 ? rw / rwo : 0;
    sort_doubles(all, (size_t)n * o->rounds);
    p50 = quantile(all, (size_t)n * o->rounds, 0.50) * 1e3;
    p99 = quantile(all, (size_t)n * o->rounds, 0.99) * 1e3;
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
    if (errs_total(&er)) {
        errs_text(&er, etext, sizeof etext);
        printf("#   errors: %s\n", etext);
        errs_print_first(&er);
    }
    fflush(stdout);
    ret = 0;
out:
    for (i = 0; i < inited; i++)
        http_free(&clients[i]);
    if (items)
        for (i = 0; i < (n > nc ? n : nc); i++)
            item_clear(&items[i]);
    free(clients);
    free(items);
    free(lat);
    free(all);
    free(a);
    return ret;
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
    printf("# %s: veild pid %ld, %s, %s\n", t->name, (long)t->v.pid, t->v.url,
           t->key_ref);
    fflush(stdout);
    for (unsigned i = 0; i < g->o->n_clients; i++)
        if (run_level(g, t, g->o->clients[i], seq) != 0)
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
    static const char *const names[] = {
        "sw",       "token",    "memory",   "memory-small",
        "attest-a", "attest-b", "attest-c", "attest-d"};
    char path[PATH_MAX + 96];

    if (!g->have_dir)
        return;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        for (int pf = 0; pf < 2; pf++) {
            snprintf(path, sizeof path, "%s/veild-%s.%s", g->dir, names[i],
                     pf ? "port" : "log");
            unlink(path);
        }
        /* the state directory: its replay register */
        snprintf(path, sizeof path, "%s/veild-%s.state/replay.db", g->dir,
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
static int gw_open(gw *g, const bench_opts *o, char *uri, size_t uri_size,
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

static void gw_close(gw *g)
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
    FILE *f = fopen(c->t.v.log, "r");

    if (!f) {
        fprintf(stderr, "veil-bench: cannot open %s: %s\n", c->t.v.log,
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
        printf("# %s: veild pid %ld, %s\n", c->id, (long)c->t.v.pid,
               c->t.v.url);
        snprintf(url, sizeof url, "%s" ROUTE, c->t.v.url);
        if (http_init(&c->c, url) != 0)
            return -1;
        c->have_http = 1;
    }
    log_find(conf[2].t.v.log, "TPM: ", line, sizeof line);
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
