/* veil-bench internals shared by the command line (bench/main.c), the
 * engine benchmark (engine.c), the client benchmark (client.c) and the
 * gateway and attest benchmarks (gateway*.c, attest.c): options, errors,
 * timing, medians, and the bare PKCS#11 side.
 *
 * The small helpers are static inline here; the PKCS#11 helpers live in
 * p11.c and are declared here.
 */
#ifndef VEIL_BENCH_H
#define VEIL_BENCH_H

#include <limits.h>
#include <stddef.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include <p11-kit/pkcs11.h>

#include "util.h"
#include "veil/engine.h"

#define EXIT_FAIL 1  /* a veil call (or a baseline / setup step) failed */
#define EXIT_USAGE 2 /* bad command line */

#define MAX_ROUNDS 1000
#define GW_MAX_LEVELS 8    /* gateway: concurrency levels in one run */
#define GW_MAX_CLIENTS 512 /* gateway: client threads at one level */
#define GW_MAX_REQUESTS 1000000
#define MAX_SECONDS 60.0
#define RSA_MSG_LEN 32 /* the protocol wraps a 32-byte AES key */
#define GCM_IV_LEN 12

/* ---- options ------------------------------------------------------------ */

typedef struct bench_opts {
    double seconds;  /* one timed slice */
    unsigned rounds; /* slices per side */
    int quick;
    int run_software;
    int run_pkcs11;
    int run_client;      /* ENGINE was "client" */
    int pkcs11_required; /* ENGINE was "pkcs11": missing settings are errors */
    const char *module;
    const char *token;
    const char *pin_spec;
    const char *skip_note; /* why the pkcs11 part does not run, or NULL */
    const char *url;       /* client: the protocol server's base URL */
    const char *ca_file;   /* client: PEM CA bundle for https, or NULL */
    char pin_spec_buf[PATH_MAX + 8];
    char skip_buf[160];
    /* gateway (gateway.c) */
    int run_gateway;                 /* ENGINE was "gateway" */
    const char *veild;               /* the veild program to start */
    unsigned requests;               /* requests per load phase */
    unsigned clients[GW_MAX_LEVELS]; /* concurrency levels */
    unsigned n_clients;
    unsigned workers;   /* veild --workers; 0: veild's default */
    unsigned bits;      /* server key size */
    unsigned timing_n;  /* refusal timing: packages of each kind; 0: skip */
    unsigned mem_waves; /* memory: waves of concurrent 1 MiB requests */
    char veild_buf[PATH_MAX];
    /* attest (attest.c): the gateway fields above apply too */
    int run_attest;   /* ENGINE was "attest" */
    int protocol_v2;  /* gateway --protocol v2 or v2-only */
    int v2_only;      /* gateway --protocol v2-only: no v1 phase */
    const char *tcti; /* veild --tpm-tcti: --tcti, else $TPM2TOOLS_TCTI */
} bench_opts;

static inline const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* ---- errors ------------------------------------------------------------- */

static inline int veil_fail(const char *what)
{
    const veil_error *err = veil_last_error();

    fprintf(stderr, "veil-bench: %s failed: %s (%s%s%s)\n", what, err->message,
            veil_rc_name(err->code), err->provider_code[0] ? ", " : "",
            err->provider_code);
    return -1;
}

static inline int ossl_fail(const char *what)
{
    char buf[256] = "no OpenSSL error queued";
    unsigned long e = ERR_get_error();

    if (e)
        ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    fprintf(stderr, "veil-bench: %s failed: %s\n", what, buf);
    return -1;
}

static inline int oom_fail(void)
{
    fprintf(stderr, "veil-bench: out of memory\n");
    return -1;
}

/* Engine log lines (warnings and errors only) go to stderr. */
static inline void log_to_stderr(void *ctx, veil_log_level level,
                                 const char *line)
{
    fprintf(stderr, "veil-bench: veil %s: %s\n",
            level == VEIL_LOG_ERROR ? "error" : "warning", line);
}

/* ---- bare OpenSSL ------------------------------------------------------- */

/* OAEP with SHA-256 and MGF1-SHA-256, empty label (the protocol's). */
static inline int ossl_set_oaep(EVP_PKEY_CTX *ctx)
{
    return EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) == 1 &&
           EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha256()) == 1 &&
           EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha256()) == 1;
}

/* RSA-OAEP-SHA256 decrypt with a fresh EVP_PKEY_CTX, as a straightforward
 * caller does.  *out_len: in, the room in out.  0, or -1 (nothing
 * printed; the OpenSSL error is queued). */
static inline int ossl_oaep_decrypt(EVP_PKEY *k, const uint8_t *in,
                                    size_t in_len, uint8_t *out,
                                    size_t *out_len)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(k, NULL);
    int ok = ctx && EVP_PKEY_decrypt_init(ctx) == 1 && ossl_set_oaep(ctx) &&
             EVP_PKEY_decrypt(ctx, out, out_len, in, in_len) == 1;

    EVP_PKEY_CTX_free(ctx);
    return ok ? 0 : -1;
}

/* RSA-OAEP-SHA256 encrypt to `to` with a fresh EVP_PKEY_CTX.  *out_len:
 * in, the room in out.  0, or -1 (nothing printed). */
static inline int ossl_oaep_encrypt(EVP_PKEY *to, const uint8_t *in,
                                    size_t in_len, uint8_t *out,
                                    size_t *out_len)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(to, NULL);
    int ok = ctx && EVP_PKEY_encrypt_init(ctx) == 1 && ossl_set_oaep(ctx) &&
             EVP_PKEY_encrypt(ctx, out, out_len, in, in_len) == 1;

    EVP_PKEY_CTX_free(ctx);
    return ok ? 0 : -1;
}

/* AES-GCM seal (AES-128 for a 16-byte key, else AES-256) with a fresh
 * EVP_CIPHER_CTX, no associated data. */
static inline int ossl_gcm_seal(const uint8_t *key, size_t key_len,
                                const uint8_t *iv, size_t iv_len,
                                const uint8_t *pt, size_t len, uint8_t *ct,
                                uint8_t tag[16])
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    const EVP_CIPHER *c = key_len == 16 ? EVP_aes_128_gcm() : EVP_aes_256_gcm();
    int n1 = 0, n2 = 0, ok;

    ok = ctx && len <= INT_MAX &&
         EVP_EncryptInit_ex(ctx, c, NULL, NULL, NULL) == 1 &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, (int)iv_len, NULL) ==
             1 &&
         EVP_EncryptInit_ex(ctx, NULL, NULL, key, iv) == 1 &&
         EVP_EncryptUpdate(ctx, ct, &n1, pt, (int)len) == 1 &&
         EVP_EncryptFinal_ex(ctx, ct + n1, &n2) == 1 &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
    EVP_CIPHER_CTX_free(ctx);
    return ok ? 0 : -1;
}

/* ---- timing ------------------------------------------------------------- */

/* One operation; returns 0, or -1 after printing why it failed. */
typedef int (*bench_op)(void *ctx);

static inline double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Runs op back to back for `seconds` of wall-clock time (at least once)
 * and returns operations per second. */
static inline int time_slice(bench_op op, void *ctx, double seconds,
                             double *rate)
{
    double t0 = now_s(), t;
    unsigned long n = 0;

    do {
        if (op(ctx) != 0)
            return -1;
        n++;
        t = now_s();
    } while (t - t0 < seconds);
    *rate = (double)n / (t - t0);
    return 0;
}

static inline int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts v in place. */
static inline double median(double *v, unsigned n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

/* ---- text --------------------------------------------------------------- */

static inline void size_name(size_t len, char *buf, size_t n)
{
    if (len >= 1024 * 1024 && len % (1024 * 1024) == 0)
        snprintf(buf, n, "%zuMiB", len / (1024 * 1024));
    else if (len >= 1024 && len % 1024 == 0)
        snprintf(buf, n, "%zuKiB", len / 1024);
    else
        snprintf(buf, n, "%zuB", len);
}

/* Appends s to out (which holds `used` bytes), percent-encoding every byte
 * but A-Z a-z 0-9 - . _ ~ (RFC 3986 unreserved: what RFC 7512 URIs and the
 * NOMYO X-Public-Key header use).  Returns the new length, or 0 when out
 * (n bytes) is too small. */
static inline size_t pct_append(char *out, size_t n, size_t used, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";

    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        int plain = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                    (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' ||
                    ch == '_' || ch == '~';
        if (used + (plain ? 1 : 3) >= n)
            return 0;
        if (plain) {
            out[used++] = (char)ch;
        } else {
            out[used++] = '%';
            out[used++] = hex[ch >> 4];
            out[used++] = hex[ch & 15];
        }
    }
    out[used] = '\0';
    return used;
}

/* "pkcs11:token=<label>", the label percent-encoded (RFC 7512). */
static inline int token_uri(const char *label, char *out, size_t n)
{
    int w = snprintf(out, n, "pkcs11:token=");

    if (w < 0 || (size_t)w >= n)
        return -1;
    if (*label && pct_append(out, n, (size_t)w, label) == 0)
        return -1;
    return 0;
}

/* The cores this process may run on (else those online; -1: unknown). */
static inline long bench_ncpu(void)
{
    cpu_set_t set;
    long ncpu = -1;

    if (sched_getaffinity(0, sizeof set, &set) == 0)
        ncpu = CPU_COUNT(&set);
    if (ncpu <= 0)
        ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    return ncpu;
}

/* A NOMYO v1 package's text from its base64 parts (the tag in its own
 * field, as veil sends it) into out: its length, or -1 when cap is too
 * small. */
static inline int bench_pkg_text(char *out, size_t cap, const char *ct_b64,
                                 const char *nonce_b64, const char *tag_b64,
                                 const char *wk_b64)
{
    int n = snprintf(out, cap,
                     "{\"version\":\"1.0\",\"algorithm\":"
                     "\"hybrid-aes256-rsa4096\",\"encrypted_payload\":{"
                     "\"ciphertext\":\"%s\",\"nonce\":\"%s\",\"tag\":\"%s\"},"
                     "\"encrypted_aes_key\":\"%s\",\"key_algorithm\":"
                     "\"RSA-OAEP-SHA256\",\"payload_algorithm\":"
                     "\"AES-256-GCM\"}",
                     ct_b64, nonce_b64, tag_b64, wk_b64);

    return n < 0 || (size_t)n >= cap ? -1 : n;
}

/* The first header line of every run: the machine. */
static inline void print_machine_id(void)
{
    struct utsname u;
    long ncpu = bench_ncpu();

    if (uname(&u) != 0)
        snprintf(u.machine, sizeof u.machine, "unknown");
    printf("# veil-bench: machine %s, nproc %ld; %s\n", u.machine, ncpu,
           OpenSSL_version(OPENSSL_VERSION));
}

/* The two header lines of every run: the machine, and how figures are
 * made (`how`: what the figures and the ratio column are). */
static inline void print_machine(const bench_opts *o, const char *how)
{
    print_machine_id();
    printf("# %u round%s x %.2f s per side, interleaved; %s\n", o->rounds,
           o->rounds == 1 ? "" : "s", o->seconds, how);
    fflush(stdout);
}

/* ---- the command line (main.c) ------------------------------------------ */

/* Prints a usage error (fmt, then arg when not NULL); returns EXIT_USAGE. */
int bench_usage_error(const char *fmt, const char *arg);

/* ---- PKCS#11: the bare side (p11.c) ------------------------------------- */

typedef struct p11_bare {
    CK_FUNCTION_LIST *f;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE s;
    int have_session;
    int we_initialized; /* C_Initialize returned CKR_OK: we finalize */
} p11_bare;

/* One token RSA key and a ciphertext for it, for bare C_Decrypt loops. */
typedef struct p11_rsa_ctx {
    veil_engine *e;
    veil_key *key;
    p11_bare *b;
    CK_OBJECT_HANDLE h;
    CK_RSA_PKCS_OAEP_PARAMS oaep;
    CK_MECHANISM mech;
    uint8_t ct[512];
    size_t ct_len;
    uint8_t out[512];
    CK_ULONG out_len;
    size_t k; /* modulus bytes */
} p11_rsa_ctx;

const char *ckr_name(CK_RV rv);
int ckr_fail(const char *what, CK_RV rv);

/* Loads the module the engine already uses (the engine must have logged in
 * first), finds the token by label and opens a session. */
int p11_bare_open(p11_bare *b, const char *module, const char *token);
void p11_bare_close(p11_bare *b);
/* The private key object behind a veil token key. */
int p11_find_private_key(p11_bare *b, const veil_key *k, CK_OBJECT_HANDLE *out);
/* C_DecryptInit + C_Decrypt of c->ct into c->out. */
CK_RV p11_decrypt_once(p11_rsa_ctx *c);
/* Native OAEP-SHA256 when the token takes it ("OAEP"), else CKM_RSA_X_509
 * ("X_509"); c->ct must hold msg encrypted to c's key. */
int p11_pick_mechanism(p11_rsa_ctx *c, const uint8_t *msg, size_t msg_len,
                       const char **mech_name);

/* ---- the subcommands: each returns the exit status ---------------------- */

/* `veil-bench all`, `software` and `pkcs11` (engine.c). */
int bench_engine_run(const bench_opts *o);

/* ---- the client benchmark (client.c) ------------------------------------ */

/* Runs `veil-bench client`; returns the exit status. */
int bench_client_run(const bench_opts *o);

/* ---- the gateway benchmark (gateway.c, attest.c) ------------------------ */

/* Runs `veil-bench gateway`; returns the exit status. */
int bench_gateway_run(const bench_opts *o);
/* `veil-bench gateway --protocol v2` (gateway_v2.c). */
int bench_gateway_v2_run(const bench_opts *o);

/* Runs `veil-bench attest`; returns the exit status. */
int bench_attest_run(const bench_opts *o);

#endif /* VEIL_BENCH_H */
