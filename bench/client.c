/* veil-bench client: what the veil client costs per request and at cold
 * start, against a NOMYO v1 protocol server (tests/veil-fixture, started
 * by scripts/bench.sh client).
 *
 * Per request, veil_chat_stats splits one call into encrypt, network and
 * decrypt time.  The baseline is a bare client in this process that does
 * the least the protocol needs, with OpenSSL and libcurl directly, and
 * times the same three parts of the same exchange:
 *
 *   encrypt  a fresh 32-byte key and 12-byte nonce (RAND_bytes), EVP
 *            AES-256-GCM of the same request text, RSA-OAEP-SHA256 of the
 *            key to the same server key, base64, the package text
 *   network  a libcurl POST on one reused handle with the headers veil
 *            sends; the server does the same work as for veil (it opens
 *            the package and seals a same-size answer to an RSA key of the
 *            client key's size)
 *   decrypt  finding the fields, base64, RSA-OAEP-SHA256 unwrap with a
 *            software key, GCM open of that answer
 *
 * A token client's decrypt is also set against a bare C_Decrypt on the same
 * token key (plus base64 and GCM open) of a package of the same size.
 *
 * Cold start is veil_client_new (key generation, or module load, login and
 * key lookup) plus the first request (server key fetch, TLS handshake),
 * next to warm requests on the same client.
 *
 * Rounds are interleaved (veil, then the baselines) and medians compared.
 * No timed assertions: the exit status only says whether everything ran.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "bench.h"
#include "client_bare.h"
#include "veil/client.h"

#define MODEL "veil-bench/echo" /* the fixture echoes the last message */
#define CLIENT_BITS 4096 /* the client default, and the token key's size */

static const size_t PROMPTS[] = {100, 1024 * 1024};

/* ---- small helpers ------------------------------------------------------ */

static int client_fail(const char *what, veil_client_status st,
                       const veil_client_error *err)
{
    fprintf(stderr, "veil-bench: %s failed: %s: %s", what,
            veil_client_status_name(st), err->detail);
    if (err->http_status)
        fprintf(stderr, " (HTTP %d)", err->http_status);
    fputc('\n', stderr);
    return -1;
}

static EVP_PKEY *pkey_from_pem(const char *pem)
{
    BIO *bio = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *k = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;

    BIO_free(bio);
    if (!k)
        ossl_fail("PEM_read_bio_PUBKEY");
    return k;
}

/* A printable prompt of len bytes that JSON carries unescaped. */
static char *make_prompt(size_t len)
{
    static const char words[] = "the quick brown fox jumps over the lazy "
                                "dog while veil seals every request ";
    char *p = malloc(len + 1);
    size_t i;

    if (!p)
        return NULL;
    for (i = 0; i < len; i++)
        p[i] = words[i % (sizeof words - 1)];
    p[len] = '\0';
    return p;
}

static void print_header(void)
{
    printf("%-36s %12s %12s %-4s %7s\n", "measurement", "veil", "baseline",
           "unit", "ratio");
}

/* One table line; times in seconds, printed in ms. */
static void print_line(const char *name, double veil_s, double base_s)
{
    printf("%-36s %12.3f %12.3f %-4s %7.3f\n", name, veil_s * 1e3, base_s * 1e3,
           "ms", base_s > 0 ? veil_s / base_s : 0.0);
    fflush(stdout);
}

/* ---- requests, veil and bare -------------------------------------------- */

enum { T_ENC, T_NET, T_DEC, T_WALL, T_N };

/* One request; fills the seconds of each part and of the whole. */
typedef int (*request_fn)(void *ctx, double t[T_N]);

/* Requests back to back for `seconds` (at least one): the mean seconds per
 * request of each part. */
static int parts_slice(request_fn fn, void *ctx, double seconds,
                       double out[T_N])
{
    double t0 = now_s(), sum[T_N] = {0}, t[T_N];
    unsigned long n = 0;
    int i;

    do {
        if (fn(ctx, t) != 0)
            return -1;
        for (i = 0; i < T_N; i++)
            sum[i] += t[i];
        n++;
    } while (now_s() - t0 < seconds);
    for (i = 0; i < T_N; i++)
        out[i] = sum[i] / (double)n;
    return 0;
}

typedef struct prompt {
    size_t len;
    char *text;
    cJSON *req;
    char *req_text; /* the request JSON as veil serialises it */
    size_t req_len;
} prompt;

static void prompt_free(prompt *p)
{
    free(p->text);
    free(p->req_text);
    cJSON_Delete(p->req);
    memset(p, 0, sizeof *p);
}

static int prompt_init(prompt *p, size_t len)
{
    memset(p, 0, sizeof *p);
    p->len = len;
    if (!(p->text = make_prompt(len)) ||
        !(p->req = veil_chat_request_new(MODEL)) ||
        !veil_chat_request_add_message(p->req, "user", p->text) ||
        !(p->req_text = cJSON_PrintUnformatted(p->req))) {
        prompt_free(p);
        return oom_fail();
    }
    p->req_len = strlen(p->req_text);
    return 0;
}

/* One veil request; checks the echo and that it took one attempt.
 * *answer_len (optional): the size of the answer as JSON text. */
static int veil_request(veil_client *c, const prompt *p, veil_chat_stats *st,
                        double *wall, size_t *answer_len)
{
    veil_client_error err;
    cJSON *resp = NULL;
    const char *got;
    double t0 = now_s();
    veil_client_status s = veil_chat_create(c, p->req, NULL, &resp, st, &err);
    int ret = -1;

    *wall = now_s() - t0;
    if (s != VEIL_CLIENT_OK)
        return client_fail("veil_chat_create", s, &err);
    got = veil_chat_content(resp);
    if (st->attempts != 1) {
        fprintf(stderr, "veil-bench: veil_chat_create took %u attempts\n",
                st->attempts);
    } else if (!got || strlen(got) != p->len ||
               memcmp(got, p->text, p->len) != 0) {
        fprintf(stderr, "veil-bench: the answer does not echo the prompt\n");
    } else if (answer_len) {
        char *text = cJSON_PrintUnformatted(resp);
        if (text) {
            *answer_len = strlen(text);
            free(text);
            ret = 0;
        } else {
            oom_fail();
        }
    } else {
        ret = 0;
    }
    veil_chat_response_free(resp);
    return ret;
}

typedef struct veil_ctx {
    veil_client *c;
    const prompt *p;
} veil_ctx;

static int veil_parts(void *arg, double t[T_N])
{
    veil_ctx *v = arg;
    veil_chat_stats st;

    if (veil_request(v->c, v->p, &st, &t[T_WALL], NULL) != 0)
        return -1;
    t[T_ENC] = (double)st.encrypt_ns / 1e9;
    t[T_NET] = (double)st.network_ns / 1e9;
    t[T_DEC] = (double)st.decrypt_ns / 1e9;
    return 0;
}

/* The least a client does per request: seal, POST, open the answer. */
typedef struct bare_client {
    bare_seal seal; /* the request, to the server key */
    char *pkg;
    size_t pkg_cap;
    bare_post post;
    bare_open open; /* the answer, with a software key */
} bare_client;

static int bare_parts(void *arg, double t[T_N])
{
    bare_client *c = arg;
    double t0 = now_s(), t1, t2, t3;

    if (op_bare_seal(&c->seal) != 0 ||
        pkg_assemble(&c->seal, c->pkg, c->pkg_cap) != 0)
        return -1;
    t1 = now_s();
    if (post_send(&c->post, c->pkg, strlen(c->pkg)) != 0)
        return -1;
    t2 = now_s();
    if (open_from_text(&c->open, c->post.resp) != 0 ||
        op_bare_open(&c->open) != 0)
        return -1;
    t3 = now_s();
    t[T_ENC] = t1 - t0;
    t[T_NET] = t2 - t1;
    t[T_DEC] = t3 - t2;
    t[T_WALL] = t3 - t0;
    return 0;
}

static void bare_client_free(bare_client *c)
{
    bare_seal_free(&c->seal);
    free(c->pkg);
    bare_post_free(&c->post);
    bare_open_free(&c->open);
}

/* The PEM of a key's public half (malloc'd). */
static char *public_pem(EVP_PKEY *k)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *data = NULL, *pem = NULL;
    long n;

    if (bio && PEM_write_bio_PUBKEY(bio, k) == 1 &&
        (n = BIO_get_mem_data(bio, &data)) > 0 &&
        (pem = malloc((size_t)n + 1)) != NULL) {
        memcpy(pem, data, (size_t)n);
        pem[n] = '\0';
    }
    BIO_free(bio);
    if (!pem)
        ossl_fail("PEM_write_bio_PUBKEY");
    return pem;
}

/* A bare client with key `own`, checked with one request. */
static int bare_client_init(bare_client *c, const bench_opts *o,
                            EVP_PKEY *server, EVP_PKEY *own, const prompt *p)
{
    char *pem;
    double t[T_N];
    int ret;

    memset(c, 0, sizeof *c);
    if (bare_seal_init(&c->seal, server, (const uint8_t *)p->req_text,
                       p->req_len) != 0)
        return -1;
    c->pkg_cap = strlen(c->seal.ct_b64) + PKG_SLACK + sizeof c->seal.wk_b64;
    if (!(c->pkg = malloc(c->pkg_cap)))
        return oom_fail();
    if (!(pem = public_pem(own)))
        return -1;
    ret = bare_post_init(&c->post, o, pem);
    free(pem);
    if (ret != 0)
        return -1;
    c->open.priv = own;
    if (bare_parts(c, t) != 0)
        return -1;
    if (!memmem(c->open.pt, c->open.pt_len, p->text, p->len)) {
        fprintf(stderr, "veil-bench: the bare answer does not echo the "
                        "prompt\n");
        return -1;
    }
    return 0;
}

/* ---- per request -------------------------------------------------------- */

/* A veil client and what its baselines need. */
typedef struct client_case {
    const char *name; /* "sw-rsa4096" */
    veil_client *c;
    EVP_PKEY *sw_key;  /* software RSA key of the client key's size */
    p11_rsa_ctx *p11;  /* token clients: the bare side, or NULL */
    const char *mech;  /* token: "OAEP" or "X_509" */
    EVP_PKEY *own_pub; /* the client's public key */
} client_case;

/* Token clients: a package of the answer's size sealed to the token key,
 * opened with a bare C_Decrypt. */
typedef struct tok_open {
    uint8_t *pt;
    bare_seal seal;
    bare_open open;
} tok_open;

static void tok_open_free(tok_open *t)
{
    bare_open_free(&t->open);
    bare_seal_free(&t->seal);
    free(t->pt);
}

static int tok_open_init(tok_open *t, client_case *cc, const prompt *p,
                         size_t len)
{
    size_t i;

    memset(t, 0, sizeof *t);
    if (!(t->pt = malloc(len ? len : 1)))
        return oom_fail();
    for (i = 0; i < len; i++)
        t->pt[i] = (uint8_t)p->req_text[i % p->req_len];
    if (bare_seal_init(&t->seal, cc->own_pub, t->pt, len) != 0)
        return -1;
    /* The bare loop picks its mechanism with this wrapped key. */
    memcpy(cc->p11->ct, t->seal.wk, t->seal.wk_len);
    cc->p11->ct_len = t->seal.wk_len;
    if (!cc->mech &&
        p11_pick_mechanism(cc->p11, t->seal.key, AES_KEY_LEN, &cc->mech) != 0)
        return -1;
    open_from_seal(&t->open, &t->seal);
    t->open.p11 = cc->p11;
    if (op_bare_open(&t->open) != 0)
        return -1;
    if (t->open.pt_len != len || memcmp(t->open.pt, t->pt, len) != 0) {
        fprintf(stderr, "veil-bench: bare token open returned the wrong "
                        "plaintext\n");
        return -1;
    }
    return 0;
}

/* Interleaved rounds of veil requests and bare requests (and bare token
 * opens) for one prompt size; prints the lines. */
static int bench_requests(const bench_opts *o, client_case *cc,
                          EVP_PKEY *server, size_t prompt_len)
{
    static double v[T_N][MAX_ROUNDS], b[T_N][MAX_ROUNDS], tk[MAX_ROUNDS];
    static const char *const part[T_N] = {"encrypt", "network", "decrypt",
                                          "total"};
    double vm[T_N], bm[T_N], t[T_N], rate, wall;
    veil_chat_stats st;
    bare_client bc;
    tok_open to;
    veil_ctx vc = {cc->c, NULL};
    prompt p;
    size_t answer_len = 0;
    char sz[32], name[96];
    unsigned i, k;
    int ret = -1;

    memset(&bc, 0, sizeof bc);
    memset(&to, 0, sizeof to);
    if (prompt_init(&p, prompt_len) != 0)
        return -1;
    vc.p = &p;
    /* One request each first: checks the echo, measures the answer, and
     * warms up the connections. */
    if (veil_request(cc->c, &p, &st, &wall, &answer_len) != 0 ||
        bare_client_init(&bc, o, server, cc->sw_key, &p) != 0 ||
        (cc->p11 && tok_open_init(&to, cc, &p, bc.open.pt_len) != 0))
        goto out;

    size_name(prompt_len, sz, sizeof sz);
    printf("#   %s, prompt %s: request %zu B, answer %zu B (veil, as JSON) "
           "or %zu B (bare);\n"
           "#     packages %zu B out, %zu B back\n",
           cc->name, sz, p.req_len, answer_len, bc.open.pt_len, strlen(bc.pkg),
           bc.post.resp_len);
    fflush(stdout);
    for (i = 0; i < o->rounds; i++) {
        if (parts_slice(veil_parts, &vc, o->seconds, t) != 0)
            goto out;
        for (k = 0; k < T_N; k++)
            v[k][i] = t[k];
        if (parts_slice(bare_parts, &bc, o->seconds, t) != 0)
            goto out;
        for (k = 0; k < T_N; k++)
            b[k][i] = t[k];
        if (cc->p11) {
            if (time_slice(op_bare_open, &to.open, o->seconds, &rate) != 0)
                goto out;
            tk[i] = 1.0 / rate;
        }
    }
    for (k = 0; k < T_N; k++) {
        vm[k] = median(v[k], o->rounds);
        bm[k] = median(b[k], o->rounds);
    }
    for (k = 0; k < T_N; k++) {
        if (k == T_DEC && cc->p11) {
            snprintf(name, sizeof name, "%s %s decrypt [%s]", cc->name, sz,
                     cc->mech);
            print_line(name, vm[k], median(tk, o->rounds));
        }
        snprintf(name, sizeof name, "%s %s %s%s", cc->name, sz, part[k],
                 cc->p11 && (k == T_DEC || k == T_WALL) ? " vs sw" : "");
        print_line(name, vm[k], bm[k]);
    }
    ret = 0;
out:
    tok_open_free(&to);
    bare_client_free(&bc);
    prompt_free(&p);
    return ret;
}

static void case_free(client_case *cc)
{
    veil_client_free(cc->c);
    EVP_PKEY_free(cc->own_pub);
    memset(cc, 0, sizeof *cc);
}

static int run_case(const bench_opts *o, client_case *cc, EVP_PKEY *server)
{
    veil_client_error err;
    veil_client_status s;
    char *pem = NULL, fp[72];
    size_t i;
    int ret = 0;

    s = veil_client_public_key(cc->c, &pem, fp, &err);
    if (s != VEIL_CLIENT_OK)
        return client_fail("veil_client_public_key", s, &err);
    cc->own_pub = pkey_from_pem(pem);
    free(pem);
    if (!cc->own_pub)
        return -1;
    for (i = 0; i < sizeof PROMPTS / sizeof PROMPTS[0] && ret == 0; i++)
        ret = bench_requests(o, cc, server, PROMPTS[i]);
    return ret;
}

/* ---- cold start --------------------------------------------------------- */

typedef struct cold_kind {
    const char *name;
    veil_client_key_source source;
    unsigned bits;
    const char *key_ref;
    double t_new[MAX_ROUNDS], t_first[MAX_ROUNDS], t_warm[MAX_ROUNDS];
    double unaccounted; /* first request: wall minus the stats, max */
} cold_kind;

static void client_config(const bench_opts *o, veil_client_config *cfg)
{
    veil_client_config_init(cfg);
    cfg->base_url = o->url;
    cfg->ca_file = o->ca_file;
    cfg->max_retries = 0; /* a failure shows; never a hidden backoff */
    cfg->log = log_to_stderr;
    cfg->log_level = VEIL_LOG_WARN;
}

/* client_new + first request, then warm requests on the same client. */
static int cold_sample(const bench_opts *o, const veil_pin_source *pin,
                       cold_kind *k, const prompt *p, unsigned round)
{
    veil_client_config cfg;
    veil_client_error err;
    veil_client_status s;
    veil_client *c = NULL;
    veil_chat_stats st;
    veil_ctx vc;
    double t0, t1, wall, t[T_N], acc;
    int ret = -1;

    client_config(o, &cfg);
    cfg.key_source = k->source;
    cfg.key_bits = k->bits;
    cfg.key_ref = k->key_ref;
    if (k->source == VEIL_CLIENT_KEY_TOKEN) {
        cfg.pkcs11_module = o->module;
        cfg.pin = *pin;
    }
    t0 = now_s();
    s = veil_client_new(&cfg, &c, &err);
    t1 = now_s();
    if (s != VEIL_CLIENT_OK)
        return client_fail("veil_client_new", s, &err);
    if (veil_request(c, p, &st, &wall, NULL) != 0)
        goto out;
    k->t_new[round] = t1 - t0;
    k->t_first[round] = wall;
    acc = (double)(st.encrypt_ns + st.network_ns + st.decrypt_ns) / 1e9;
    if (wall - acc > k->unaccounted)
        k->unaccounted = wall - acc;
    vc.c = c;
    vc.p = p;
    if (parts_slice(veil_parts, &vc, o->seconds, t) != 0)
        goto out;
    k->t_warm[round] = t[T_WALL];
    ret = 0;
out:
    veil_client_free(c);
    return ret;
}

static int run_cold(const bench_opts *o, const veil_pin_source *pin,
                    const char *token_key_uri)
{
    static cold_kind kinds[3];
    prompt p;
    char name[96];
    size_t n = 0, i;
    unsigned r;
    int ret = -1;

    memset(kinds, 0, sizeof kinds);
    kinds[n].name = "sw-rsa4096";
    kinds[n].source = VEIL_CLIENT_KEY_EPHEMERAL;
    kinds[n++].bits = 4096;
    kinds[n].name = "sw-rsa2048";
    kinds[n].source = VEIL_CLIENT_KEY_EPHEMERAL;
    kinds[n++].bits = 2048;
    if (token_key_uri) {
        kinds[n].name = "token-rsa4096";
        kinds[n].source = VEIL_CLIENT_KEY_TOKEN;
        kinds[n].bits = 4096;
        kinds[n++].key_ref = token_key_uri;
    }
    if (prompt_init(&p, PROMPTS[0]) != 0)
        return -1;
    printf("# cold start: veil_client_new (own engine; key generation, or "
           "module load + login +\n"
           "#   key lookup for the token key) + the first request (server "
           "key fetch, TLS\n"
           "#   handshake, POST), 100B prompt; baseline: a warm request on "
           "the same client\n");
    fflush(stdout);
    for (r = 0; r < o->rounds; r++)
        for (i = 0; i < n; i++)
            if (cold_sample(o, pin, &kinds[i], &p, r) != 0)
                goto out;
    for (i = 0; i < n; i++) {
        cold_kind *k = &kinds[i];
        double tot[MAX_ROUNDS], warm;

        for (r = 0; r < o->rounds; r++)
            tot[r] = k->t_new[r] + k->t_first[r];
        warm = median(k->t_warm, o->rounds);
        snprintf(name, sizeof name, "cold %s new+1st request", k->name);
        print_line(name, median(tot, o->rounds), warm);
        snprintf(name, sizeof name, "cold %s   client_new", k->name);
        print_line(name, median(k->t_new, o->rounds), warm);
        snprintf(name, sizeof name, "cold %s   1st request", k->name);
        print_line(name, median(k->t_first, o->rounds), warm);
        printf("#   %s: up to %.3f ms of a first request is in none of "
               "encrypt/network/decrypt\n",
               k->name, k->unaccounted * 1e3);
    }
    fflush(stdout);
    ret = 0;
out:
    prompt_free(&p);
    return ret;
}

/* ---- the token key ------------------------------------------------------ */

typedef struct token_side {
    veil_engine *e;
    veil_key *key;
    char uri[512];
    char key_uri[sizeof((veil_key_info *)0)->uri];
    p11_bare b;
    p11_rsa_ctx rsa;
} token_side;

static int token_open(const bench_opts *o, const veil_pin_source *pin,
                      token_side *t)
{
    veil_engine_config cfg;
    veil_keygen_params kp;
    veil_key_info info;
    char label[64];

    memset(t, 0, sizeof *t);
    if (token_uri(o->token, t->uri, sizeof t->uri) != 0) {
        fprintf(stderr, "veil-bench: token label too long: %s\n", o->token);
        return -1;
    }
    memset(&cfg, 0, sizeof cfg);
    cfg.pkcs11_module = o->module;
    cfg.default_token = t->uri;
    cfg.pin = *pin;
    cfg.log = log_to_stderr;
    cfg.log_level = VEIL_LOG_WARN;
    if (veil_engine_new(&cfg, &t->e) != VEIL_OK)
        return veil_fail("veil_engine_new(pkcs11)");
    /* A token object, as a user's key would be; deleted at the end. */
    snprintf(label, sizeof label, "veil-bench-client-%ld", (long)getpid());
    memset(&kp, 0, sizeof kp);
    kp.type = VEIL_KEY_RSA;
    kp.bits = CLIENT_BITS;
    kp.label = label;
    if (veil_key_generate(t->e, t->uri, &kp, &t->key) != VEIL_OK)
        return veil_fail("veil_key_generate(token)");
    if (veil_key_get_info(t->key, &info) != VEIL_OK)
        return veil_fail("veil_key_get_info");
    snprintf(t->key_uri, sizeof t->key_uri, "%s", info.uri);
    return 0;
}

/* The bare C_Decrypt side on the token key (after the engine logged in). */
static int token_bare(const bench_opts *o, token_side *t)
{
    t->rsa.e = t->e;
    t->rsa.key = t->key;
    t->rsa.b = &t->b;
    t->rsa.k = CLIENT_BITS / 8;
    if (p11_bare_open(&t->b, o->module, o->token) != 0)
        return -1;
    return p11_find_private_key(&t->b, t->key, &t->rsa.h);
}

/* Drops our session, handle and engine, so that nothing keeps the module
 * initialised while cold starts are measured. */
static void token_release(token_side *t)
{
    p11_bare_close(&t->b);
    veil_key_free(t->key);
    t->key = NULL;
    veil_engine_free(t->e);
    t->e = NULL;
}

/* Deletes the token key through a new engine. */
static int token_delete(const bench_opts *o, const veil_pin_source *pin,
                        token_side *t)
{
    veil_engine_config cfg;
    veil_engine *e = NULL;
    veil_key *k = NULL;
    int ret = -1;

    if (!t->key_uri[0])
        return 0;
    memset(&cfg, 0, sizeof cfg);
    cfg.pkcs11_module = o->module;
    cfg.default_token = t->uri;
    cfg.pin = *pin;
    if (veil_engine_new(&cfg, &e) != VEIL_OK)
        return veil_fail("veil_engine_new(pkcs11)");
    if (veil_key_open(e, t->key_uri, &k) != VEIL_OK)
        veil_fail("veil_key_open(token key)");
    else if (veil_key_delete(e, k) != VEIL_OK)
        veil_fail("veil_key_delete(token key)");
    else
        ret = 0;
    veil_engine_free(e);
    t->key_uri[0] = '\0';
    return ret;
}

/* ---- the run ------------------------------------------------------------ */

static void print_intro(const bench_opts *o, EVP_PKEY *server)
{
    printf("# veil client vs a bare client in this process: the least the "
           "protocol needs, with\n"
           "#   OpenSSL and libcurl directly; server %s (RSA-%d key)\n",
           o->url, server ? EVP_PKEY_get_bits(server) : 0);
    printf(
        "#   veil: veil_chat_create; encrypt/network/decrypt from "
        "veil_chat_stats, total = wall time\n"
        "#   bare, per request, same prompt, each part timed:\n"
        "#     encrypt: RAND key+nonce, EVP aes-256-gcm, RSA-OAEP-SHA256 to "
        "the server key, base64,\n"
        "#              package text by snprintf (veil: also serialises "
        "the request JSON)\n"
        "#     network: libcurl POST on one reused handle, the headers veil "
        "sends; the server does\n"
        "#              the same work (opens it, seals a same-size answer to "
        "an RSA-%d key)\n"
        "#     decrypt: find the fields, base64, EVP RSA-OAEP-SHA256 decrypt "
        "(software RSA-%d),\n"
        "#              GCM open (veil: also parses the package and the "
        "answer JSON)\n"
        "#   token key: \"decrypt [X_509]\" is against a bare C_Decrypt on "
        "the same token key + GCM\n"
        "#     open of a same-size package ([X_509]: the token has no "
        "OAEP-SHA256; the bare side\n"
        "#     skips the OAEP decoding); \"vs sw\": against the bare "
        "client's software key\n",
        CLIENT_BITS, CLIENT_BITS);
    fflush(stdout);
}

/* The server key as the software client sees it. */
static EVP_PKEY *server_pkey(veil_client *c)
{
    veil_client_error err;
    veil_client_status s;
    EVP_PKEY *k;
    char *pem = NULL, fp[72];

    s = veil_client_server_key(c, &pem, fp, &err);
    if (s != VEIL_CLIENT_OK) {
        client_fail("veil_client_server_key", s, &err);
        return NULL;
    }
    k = pkey_from_pem(pem);
    free(pem);
    return k;
}

int bench_client_run(const bench_opts *o)
{
    veil_client_config cfg;
    veil_client_error err;
    veil_client_status s;
    veil_pin_source pin;
    client_case sw, tok;
    token_side t;
    EVP_PKEY *sw_key = NULL, *server = NULL;
    int failed = 1, have_token = 0;

    memset(&pin, 0, sizeof pin);
    memset(&sw, 0, sizeof sw);
    memset(&tok, 0, sizeof tok);
    memset(&t, 0, sizeof t);
    if (o->run_pkcs11 && o->pin_spec &&
        veil_pin_source_parse(o->pin_spec, &pin) != VEIL_OK) {
        fprintf(stderr, "veil-bench: --pin-source: %s\n",
                veil_last_error()->message);
        return EXIT_USAGE;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "veil-bench: curl_global_init failed\n");
        return EXIT_FAIL;
    }
    print_machine(o, "times are medians; ratio = veil time / baseline time "
                     "(above 1: veil slower)");

    /* The software client: the default, an ephemeral RSA-4096 key. */
    client_config(o, &cfg);
    s = veil_client_new(&cfg, &sw.c, &err);
    if (s != VEIL_CLIENT_OK) {
        client_fail("veil_client_new", s, &err);
        goto out;
    }
    if (!(server = server_pkey(sw.c)))
        goto out;
    print_intro(o, server);
    if (!(sw_key = EVP_RSA_gen(CLIENT_BITS))) {
        ossl_fail("EVP_RSA_gen");
        goto out;
    }
    print_header();
    sw.name = "sw-rsa4096";
    sw.sw_key = sw_key;
    printf("# software key: ephemeral RSA-%d (the default)\n", CLIENT_BITS);
    fflush(stdout);
    if (run_case(o, &sw, server) != 0)
        goto out;
    case_free(&sw);

    if (o->skip_note) {
        printf("%s\n", o->skip_note);
    } else if (o->run_pkcs11) {
        printf("# token key: RSA-%d in %s, key_source TOKEN, module %s\n",
               CLIENT_BITS, o->token, o->module);
        fflush(stdout);
        if (token_open(o, &pin, &t) != 0)
            goto out;
        have_token = 1;
        client_config(o, &cfg);
        cfg.key_source = VEIL_CLIENT_KEY_TOKEN;
        cfg.key_ref = t.key_uri;
        cfg.engine = t.e;
        s = veil_client_new(&cfg, &tok.c, &err);
        if (s != VEIL_CLIENT_OK) {
            client_fail("veil_client_new(token)", s, &err);
            goto out;
        }
        if (token_bare(o, &t) != 0)
            goto out;
        tok.name = "token-rsa4096";
        tok.sw_key = sw_key;
        tok.p11 = &t.rsa;
        if (run_case(o, &tok, server) != 0)
            goto out;
        case_free(&tok);
        token_release(&t);
    }
    if (run_cold(o, &pin, have_token ? t.key_uri : NULL) != 0)
        goto out;
    failed = 0;
out:
    case_free(&sw);
    case_free(&tok);
    token_release(&t);
    if (have_token && token_delete(o, &pin, &t) != 0)
        failed = 1;
    EVP_PKEY_free(sw_key);
    EVP_PKEY_free(server);
    curl_global_cleanup();
    return failed ? EXIT_FAIL : 0;
}
