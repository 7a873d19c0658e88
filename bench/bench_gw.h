/* veil-bench gateway and attest internals (bench/gateway*.c, attest.c):
 * the run, the veild processes and targets, the requests and their load
 * phases.  Not a header of the library.
 */
#ifndef VEIL_BENCH_GW_H
#define VEIL_BENCH_GW_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "bench.h"
#include "harness.h"
#include "ohttp.h"

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
    tu_proc p;     /* pid, port, log (DIR/veild-NAME.log) */
    char name[32]; /* "sw", "token", "memory", "attest-a", ... */
    char url[64];
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

/* ---- targets: their bare ops (gateway.c) and keys (gateway_veild.c) --- */

/* Software: EVP_PKEY_decrypt with this thread's copy of the key. */
typedef struct sw_bare {
    EVP_PKEY *k;
    uint8_t ct[512];
    size_t ct_len;
    uint8_t out[512];
} sw_bare;

/* Token: C_DecryptInit + C_Decrypt in this thread's own session. */
typedef struct tok_bare {
    p11_bare b; /* a copy of the shared one, with its own session */
    p11_rsa_ctx c;
} tok_bare;

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

/* ---- requests (gateway_load.c) ---------------------------------------- */

typedef struct errs {
    atomic_uint http;      /* an unexpected HTTP status */
    atomic_uint transport; /* no HTTP answer at all */
    atomic_uint bad;       /* an answer that does not open or echo */
    pthread_mutex_t lock;
    char first[320];
} errs;

/* What an attest answer must carry (item.want). */
#define W_SIG 1u     /* an X-Veil-Signature header (else none) */
#define W_TPM 2u     /* _metadata.tpm_attestation, is_available true */
#define W_AK_CERT 4u /* ... with an aik_certify object (else null) */

typedef enum pkg_kind {
    K_VALID = 0,
    K_BAD_OAEP,  /* wrapped key: random bytes below the modulus */
    K_BAD_TAG,   /* a valid wrapped key; one GCM tag byte flipped */
    K_SHORT_KEY, /* OAEP-valid wrapping of a 16-byte key */
    K_N
} pkg_kind;

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

typedef struct http {
    CURL *h;
    char *buf; /* the last answer, NUL-terminated */
    size_t len, cap;
    int signed_answer; /* the last answer had an X-Veil-Signature header */
    char err[CURL_ERROR_SIZE];
} http;

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

/* nc clients, each with its libcurl handle's connection to the target
 * opened by one checked warm-up request, and room for max(n, nc) items
 * and their latencies (clients_open, gateway_load.c). */
typedef struct client_set {
    http *clients;
    item *items;
    double *lat; /* per item, seconds */
    unsigned nc, room, inited;
} client_set;

extern const char *const KIND_NAME[K_N];
/* What veild answers for every package it cannot open. */
extern const char UNDECRYPTABLE[];

/* gateway_load.c */
void errs_init(errs *er);
unsigned errs_total(errs *er);
void errs_text(errs *er, char *buf, size_t n);
void errs_print_first(errs *er);
void *xcalloc(size_t n, size_t size);
double quantile(const double *sorted, size_t n, double q);
void sort_doubles(double *v, size_t n);
void sleep_s(double s);
unsigned cpu_count(void);
void fill_prompt(char *p, size_t len, uint32_t salt, uint32_t seq);
void item_clear(item *it);
int item_seal(const gw *g, EVP_PKEY *to, item *it);
int seal_all(const gw *g, EVP_PKEY *to, item *items, unsigned n);
int http_init(http *c, const char *url);
void http_free(http *c);
int http_get(http *c, const char *url);
/* POSTs it (the headers of a NOMYO client); *status 0: no answer. */
int http_post(const gw *g, http *c, const item *it, long *status, double *secs);
double run_item(const gw *g, http *c, const item *it, int check, errs *er);
int run_load(load *l, double *wall);

/* gateway_veild.c */
int veild_start(const gw *g, veild_proc *v, const char *name, const target *t,
                unsigned replay_cap, const char *body_limit);
int veild_stop(veild_proc *v);
int veild_check_key(const target *t);
int proc_mem(pid_t pid, unsigned long *rss, unsigned long *hwm);
int proc_cpu(pid_t pid, double *secs);
double self_cpu(void);
/* CPU over load phases: veild's (from /proc) and this process's (the
 * load generator's threads), summed with the phases' wall time. */
typedef struct phase_cpu {
    double veild, own, wall; /* the sums */
    double v0, c0;           /* at the current phase's start (v0 < 0: none) */
} phase_cpu;
void phase_cpu_start(phase_cpu *m, pid_t veild);
void phase_cpu_stop(phase_cpu *m, pid_t veild, double wall);
/* How busy the cores were over the phases, percent of ncpu. */
double phase_cpu_busy(const phase_cpu *m, unsigned ncpu);
int sw_setup(const gw *g, sw_side *sw, target *t);
void sw_cleanup(sw_side *sw, target *t);
int tok_setup(const gw *g, tok_side *ts, target *t, const char *uri);
int tok_cleanup(const gw *g, tok_side *ts, target *t);

/* gateway.c */
int bare_rate(const target *t, double seconds, double *rate,
              double *cpu_per_op);
int run_level(const gw *g, target *t, unsigned nclients, unsigned *seq,
              double *rate_out);
int op_sw_bare(void *arg);
int op_tok_bare(void *arg);
int gw_open(gw *g, const bench_opts *o, char *uri, size_t uri_size,
            const char *how);
void gw_close(gw *g);

/* attest_busy.c: standard req/s while maximum traffic saturates the TPM,
 * against standard alone (a veild of its own, from tmpl's key). */
int bench_attest_busy(const gw *g, const target *tmpl, unsigned *seq);

/* gateway_timing.c */
uint32_t xorshift(uint32_t *s);
int run_timing(const gw *g, target *t, unsigned *seq);

/* gateway_v2.c: protocol v2 requests (the key configuration at
 * V2_PATH, one encapsulated chat request, its answer opened and checked to
 * be an inner 200 holding its prompt). */
#define V2_PATH "/.well-known/ohttp-gateway"
typedef struct v2_item {
    uint8_t *req;
    size_t len;
    veil_ohttp_ctx *ctx;
    uint32_t seq;
} v2_item;
void v2_items_clear(v2_item *it, unsigned n);
int v2_config(const target *t, veil_ohttp_keyconfig *cfg);
int v2_seal(const gw *g, const veil_ohttp_keyconfig *cfg, const char *model,
            v2_item *it);
int v2_check(const gw *g, const http *c, const v2_item *it, char *why,
             size_t size);

/* gateway_v2_latency.c: one client, sequential: v2 through veild to
 * tests/mock-upstream (model V2_LAT_MODEL) against a plain HTTP POST of
 * the same chat straight to it. */
#define V2_LAT_MODEL "bench-upstream"
#define TARGET_V2_ADDED_MS 1.0
int v2_mock_start(const gw *g, tu_proc *mock);
int v2_mock_stop(const gw *g, tu_proc *mock);
int run_v2_latency(const gw *g, target *t, unsigned mock_port, unsigned *seq);

/* gateway_memory.c */
int run_memory(const gw *g, target *t, unsigned *seq, int small_values);

/* gateway_slow.c */
int run_slow(const gw *g, target *t, unsigned *seq);

/* gateway_load.c: client sets.  clients_open: 0, or -1 (printed; close
 * it all the same).  clients_seal: n fresh valid items, sealed on all
 * cores.  clients_clear: frees the first n items' packages. */
int clients_open(const gw *g, target *t, client_set *cs, unsigned nc,
                 unsigned n, unsigned *seq);
int clients_seal(const gw *g, target *t, client_set *cs, unsigned n,
                 unsigned *seq);
/* One load phase: the first n items through the clients (done: per
 * client, requests sent, or NULL); *wall its wall time. */
int clients_run(const gw *g, client_set *cs, unsigned n, unsigned *done,
                errs *er, double *wall);
void clients_clear(client_set *cs, unsigned n);
void clients_close(client_set *cs);
/* Sorts v; its p50 and p99 in ms. */
void p50_p99(double *v, size_t n, double *p50, double *p99);
/* "#   errors: ..." and the first error, when there were any. */
void errs_report(errs *er);

#endif /* VEIL_BENCH_GW_H */
