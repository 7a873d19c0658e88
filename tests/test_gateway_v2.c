/* Protocol v2 (docs/PROTOCOL-V2.md) against veild for real: the gateway
 * started as a process with the echo model, spoken to over HTTP (libcurl)
 * by a client made here from protocol/ohttp.c, hpke.c and bhttp.c.  Two
 * gateways: the server key (and so the KEM keys) in the SoftHSM2 token,
 * with an answer-signing key; and the server key in a key directory (KEM
 * keys in software).  A third rotates its KEM key every few seconds.
 *
 * Each case checks what a client sees: the outer status and bytes, and
 * the inner status and content once the answer is opened.  No timed
 * assertions; the rotation case waits a few seconds for the gateway's
 * clock, never asserts how long anything took.
 *
 * The token gateway also serves models of tests/mock-upstream (a stand-in
 * for an inference server, which cannot run here), for the backend's
 * answers and errors at /v1/completions and /v1/embeddings.
 *
 * Needs VEIL_BUILDDIR and the SoftHSM2 token of tests/env/with-tokens.sh. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "bhttp.h"
#include "gwtest.h"
#include "hpke.h"
#include "ohttp.h"
#include "package.h"
#include "testutil.h"
#include "util.h"

#define WK "/.well-known/ohttp-gateway"
#define PROMPT                                                                 \
    "Hello over Oblivious HTTP, gr\xc3\xbc\xc3\x9f"                            \
    "e"
#define UNIFORM                                                                \
    "{\"type\":\"https://iana.org/assignments/http-problem-types#ohttp-key\"," \
    "\"title\":\"Oblivious HTTP key configuration not acceptable\"}"

static const char *module, *pin_file;
static char pin_spec[600], token_uri[256], server_ref[700], signer_ref[700];
static veil_engine *sw_e, *tok_e;
static veil_key *srv_key, *sign_key, *sign_pub;
static char *sign_pem; /* the signing key's public PEM */
static tu_proc gw_tok, gw_sw, upstream;
static char m_hello[96], m_500[96], m_404[96];

/* ---- HTTP ---------------------------------------------------------------- */

typedef struct resp {
    long status;
    char *body, *head;
    size_t len, head_len;
} resp;

static size_t on_data(char *d, size_t size, size_t n, void *ctx)
{
    char **buf = ctx;
    size_t *len = (size_t *)(buf + 1);
    char *p = realloc(*buf, *len + size * n + 1);

    if (p == NULL)
        return 0;
    memcpy(p + *len, d, size * n);
    *len += size * n;
    p[*len] = '\0';
    *buf = p;
    return size * n;
}

/* body NULL: GET, or `outer_method` (HEAD without a body) when it is set. */
static const char *outer_method;
static const char *url_tail = ""; /* after the well-known path */

static int http(const tu_proc *p, const uint8_t *body, size_t len,
                const char *type, resp *r)
{
    char url[128], ct[128];
    struct {
        char *buf;
        size_t len;
    } b = {0}, h = {0};
    struct curl_slist *hdrs = NULL;
    CURL *c = curl_easy_init();
    CURLcode rc;

    memset(r, 0, sizeof *r);
    snprintf(url, sizeof url, "http://127.0.0.1:%u" WK "%s", p->port,
             url_tail);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &h);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    if (outer_method && strcmp(outer_method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    else if (outer_method)
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, outer_method);
    if (body) {
        snprintf(ct, sizeof ct, "Content-Type: %s", type);
        hdrs = curl_slist_append(hdrs, ct);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
    }
    rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    r->body = b.buf;
    r->len = b.len;
    r->head = h.buf;
    r->head_len = h.len;
    if (rc != CURLE_OK)
        fprintf(stderr, "HTTP to %s: %s\n", url, curl_easy_strerror(rc));
    return rc == CURLE_OK ? 0 : -1;
}

static void resp_free(resp *r)
{
    free(r->body);
    free(r->head);
    memset(r, 0, sizeof *r);
}

/* A header's value (case-insensitive name) into out, or "". */
static const char *head_value(const resp *r, const char *name, char *out,
                              size_t size)
{
    size_t n = strlen(name);

    out[0] = '\0';
    for (const char *l = r->head; l && *l;
         l = strchr(l, '\n') ? strchr(l, '\n') + 1 : "") {
        if (strncasecmp(l, name, n) == 0 && l[n] == ':') {
            const char *v = l + n + 1;
            size_t k;
            while (*v == ' ')
                v++;
            for (k = 0; v[k] && v[k] != '\r' && v[k] != '\n' && k + 1 < size;
                 k++)
                out[k] = v[k];
            out[k] = '\0';
        }
    }
    return out;
}

/* ---- the client ---------------------------------------------------------- */

/* The first key configuration the gateway lists. */
static int fetch_config(const tu_proc *p, veil_ohttp_keyconfig *cfg)
{
    resp r;
    veil_ohttp_keyconfig *all = NULL;
    size_t n = 0;
    char ct[128];
    int ok;

    if (http(p, NULL, 0, NULL, &r) != 0)
        return -1;
    ok = r.status == 200 &&
         strcmp(head_value(&r, "Content-Type", ct, sizeof ct),
                VEIL_OHTTP_MEDIA_KEYS) == 0 &&
         veil_ohttp_keys_decode((const uint8_t *)r.body, r.len, &all, &n) ==
             VEIL_OK &&
         n >= 1;
    if (ok)
        *cfg = all[0];
    free(all);
    resp_free(&r);
    return ok ? 0 : -1;
}

/* An inner request, encapsulated to cfg with AES-256-GCM. */
static const char *bearer; /* the inner authorization, or NULL */

static uint8_t *encap(const veil_ohttp_keyconfig *cfg, const char *method,
                      const char *path, const char *content, size_t *len,
                      veil_ohttp_ctx **ctx)
{
    veil_bhttp_field f[] = {
        {VEIL_BSTR("authorization"),
         {(const uint8_t *)bearer, bearer ? strlen(bearer) : 0}},
        {VEIL_BSTR("content-type"), VEIL_BSTR("application/json")}};
    veil_bhttp_msg m = {
        .is_request = 1,
        .method = {(const uint8_t *)method, strlen(method)},
        .scheme = VEIL_BSTR("https"),
        .authority = VEIL_BSTR("gateway.test"),
        .path = {(const uint8_t *)path, strlen(path)},
        .headers = {bearer ? f : f + 1,
                    (bearer ? 1u : 0u) + (content ? 1u : 0u)},
        .content = {(const uint8_t *)content, content ? strlen(content) : 0}};
    veil_secbuf *plain = NULL;
    uint8_t *out = NULL;
    veil_ohttp_alg alg = {VEIL_HPKE_KDF_SHA256, VEIL_HPKE_AEAD_AES256GCM};

    if (veil_bhttp_encode(&m, 0, &plain) != VEIL_OK ||
        veil_ohttp_encap_request(sw_e, cfg, alg, veil_secbuf_data(plain),
                                 veil_secbuf_len(plain), NULL, &out, len,
                                 ctx) != VEIL_OK) {
        fprintf(stderr, "encap: %s\n", veil_last_error()->message);
        out = NULL;
    }
    veil_secbuf_free(plain);
    return out;
}

#define CHAT_ECHO                                                              \
    "{\"model\":\"echo\",\"messages\":[{\"role\":\"user\",\"content\":"        \
    "\"" PROMPT "\"}]}"

static int retry_after; /* of the last answer opened: its length, or -1 */
/* of the last answer opened: its signature headers ("" when absent) */
static char sig_b64[200], sig_at[32], sig_key[100];
/* of the last answer opened: its allow field ("" when absent) */
static char last_allow[32];
/* of the last exchange: its request identifier, hex SHA-256 of enc */
static char last_rid[65];

/* A field's value into out ("" when absent or too long). */
static void field_copy(const veil_bhttp_msg *m, const char *name, char *out,
                       size_t size)
{
    const veil_bhttp_field *f = veil_bhttp_field_get(&m->headers, name);

    out[0] = '\0';
    if (f && f->value.len < size) {
        memcpy(out, f->value.p, f->value.len);
        out[f->value.len] = '\0';
    }
}

/* Opens an encapsulated answer: the inner status and a copy of its
 * content (malloc'd, NUL-terminated); -1 when it does not open. */
static int open_answer(veil_ohttp_ctx *ctx, const resp *r, char **content)
{
    veil_secbuf *plain = NULL;
    veil_bhttp_msg *m = NULL;
    int status = -1;

    *content = NULL;
    if (veil_ohttp_decap_response(sw_e, ctx, (const uint8_t *)r->body, r->len,
                                  &plain) == VEIL_OK &&
        veil_bhttp_decode(veil_secbuf_data(plain), veil_secbuf_len(plain),
                          VEIL_BHTTP_RESPONSE, NULL, &m) == VEIL_OK &&
        (*content = malloc(m->content.len + 1)) != NULL) {
        const veil_bhttp_field *ra =
            veil_bhttp_field_get(&m->headers, "retry-after");
        memcpy(*content, m->content.p, m->content.len);
        (*content)[m->content.len] = '\0';
        status = (int)m->status;
        retry_after = ra ? (int)ra->value.len : -1;
        field_copy(m, "x-veil-signature", sig_b64, sizeof sig_b64);
        field_copy(m, "x-veil-signed-at", sig_at, sizeof sig_at);
        field_copy(m, "x-veil-signing-key", sig_key, sizeof sig_key);
        field_copy(m, "allow", last_allow, sizeof last_allow);
    }
    veil_bhttp_msg_free(m);
    veil_secbuf_free(plain);
    return status;
}

/* One whole exchange: the inner status, the content in *content. */
static int exchange(const tu_proc *p, const char *method, const char *path,
                    const char *content, char **out)
{
    veil_ohttp_keyconfig cfg;
    veil_ohttp_ctx *ctx = NULL;
    size_t len = 0;
    uint8_t *req = NULL;
    resp r = {0};
    char ct[128];
    int status = -1;

    *out = NULL;
    if (fetch_config(p, &cfg) == 0 &&
        (req = encap(&cfg, method, path, content, &len, &ctx)) != NULL &&
        http(p, req, len, VEIL_OHTTP_MEDIA_REQ, &r) == 0) {
        size_t enc_len = 0;
        const uint8_t *enc = veil_ohttp_ctx_enc(ctx, &enc_len);
        uint8_t h[32];
        SHA256(enc, enc_len, h);
        veil_hex(h, 32, last_rid);
        CU_ASSERT_EQUAL(r.status, 200);
        CU_ASSERT_STRING_EQUAL(head_value(&r, "Content-Type", ct, sizeof ct),
                               VEIL_OHTTP_MEDIA_RES);
        status = open_answer(ctx, &r, out);
    }
    resp_free(&r);
    free(req);
    veil_ohttp_ctx_free(ctx);
    return status;
}

/* The outer answer is the uniform 400, byte for byte. */
static void expect_uniform(const resp *r)
{
    char ct[128];

    CU_ASSERT_EQUAL(r->status, 400);
    CU_ASSERT_STRING_EQUAL(head_value(r, "Content-Type", ct, sizeof ct),
                           "application/problem+json");
    CU_ASSERT_EQUAL(r->len, sizeof UNIFORM - 1);
    CU_ASSERT(r->body && r->len == sizeof UNIFORM - 1 &&
              memcmp(r->body, UNIFORM, sizeof UNIFORM - 1) == 0);
    if (r->status != 400 || r->len != sizeof UNIFORM - 1)
        fprintf(stderr, "not the uniform answer: %ld %.*s\n", r->status,
                (int)r->len, r->body ? r->body : "");
}

/* A gateway of its own with the server key in the token: its state in
 * $VEIL_TEST_DIR/NAME.state, the echo model, generous rates, and the
 * flags of more (NULL-terminated). */
static int start_token_gateway(tu_proc *g, const char *name,
                               const char *const *more)
{
    char state_dir[700];
    const char *base[] = {"--state-dir", state_dir, "--replay-capacity",
                          "65536",       "--rate",  "1000",
                          "--burst",     "1000",    NULL};
    const char *extra[32] = {"--server-key", server_ref,     "--pkcs11-module",
                             module,         "--pin-source", pin_spec,
                             "--model",      "echo=echo"};
    size_t n = 8;

    for (; *more && n + 1 < sizeof extra / sizeof extra[0]; more++)
        extra[n++] = *more;
    extra[n] = NULL;
    snprintf(state_dir, sizeof state_dir, "%s/%s.state",
             tu_env("VEIL_TEST_DIR"), name);
    return gt_veild_start(g, name, base, extra, 0);
}

/* ---- the cases ----------------------------------------------------------- */

static void test_key_config(void)
{
    veil_ohttp_keyconfig cfg;
    resp r;
    char sig[200], at[32], until[32], key[100], st[400], hex[65];
    uint8_t h[32], *der = NULL;
    size_t der_len = 0;

    CU_ASSERT_EQUAL_FATAL(fetch_config(&gw_tok, &cfg), 0);
    CU_ASSERT_EQUAL(cfg.kem, VEIL_HPKE_KEM_P256);
    CU_ASSERT_EQUAL(cfg.pk_len, 65);
    CU_ASSERT(cfg.n_algs >= 1);
    CU_ASSERT_EQUAL(cfg.algs[0].aead, VEIL_HPKE_AEAD_AES256GCM);
    /* the signature (PROTOCOL-V2.md 4.3) under the signing key */
    CU_ASSERT_EQUAL_FATAL(http(&gw_tok, NULL, 0, NULL, &r), 0);
    head_value(&r, "X-Veil-Keys-Signature", sig, sizeof sig);
    head_value(&r, "X-Veil-Keys-Signed-At", at, sizeof at);
    head_value(&r, "X-Veil-Keys-Expires", until, sizeof until);
    head_value(&r, "X-Veil-Signing-Key", key, sizeof key);
    CU_ASSERT(strtoll(until, NULL, 10) > strtoll(at, NULL, 10));
    CU_ASSERT(strtoll(at, NULL, 10) > 0);
    /* fresh until the next rotation (default 3600 s), so that a client or
     * a shared proxy keeps it that long (RFC 9111 5.2.2.1); not no-store,
     * which would have every RFC 9111 client fetch it before each request */
    {
        char cc[64], *end = NULL;
        long long age = -1;
        head_value(&r, "Cache-Control", cc, sizeof cc);
        if (!strncmp(cc, "max-age=", 8))
            age = strtoll(cc + 8, &end, 10);
        CU_ASSERT(end != NULL && *end == '\0' && end != cc + 8);
        CU_ASSERT(age >= 0 && age <= 3600);
        CU_ASSERT(age <= strtoll(until, NULL, 10) - strtoll(at, NULL, 10));
        CU_ASSERT(strcasestr(r.head, "no-store") == NULL);
        if (end == NULL || *end)
            fprintf(stderr, "keys: Cache-Control \"%s\"\n", cc);
    }
    SHA256((const uint8_t *)r.body, r.len, h);
    veil_hex(h, 32, hex);
    snprintf(st, sizeof st,
             "veil-ohttp-keys-v1\nkeys_sha256=%s\nsigned_at=%s\nnot_after=%s\n",
             hex, at, until);
    CU_ASSERT_EQUAL_FATAL(veil_b64_decode(sig, strlen(sig), &der, &der_len),
                          VEIL_OK);
    CU_ASSERT_EQUAL(veil_ecdsa_verify(sw_e, sign_pub, (const uint8_t *)st,
                                      strlen(st), der, der_len),
                    VEIL_OK);
    {
        uint8_t fp[32];
        char want[80];
        veil_key_fingerprint(sign_pub, fp);
        veil_hex(fp, 32, hex);
        snprintf(want, sizeof want, "sha256:%s", hex);
        CU_ASSERT_STRING_EQUAL(key, want);
    }
    free(der);
    resp_free(&r);
    /* signed once per key: a second fetch carries the same signature
     * (ECDSA signatures differ each time they are made) */
    {
        char sig2[200];
        CU_ASSERT_EQUAL_FATAL(http(&gw_tok, NULL, 0, NULL, &r), 0);
        CU_ASSERT_STRING_EQUAL(
            head_value(&r, "X-Veil-Keys-Signature", sig2, sizeof sig2), sig);
        resp_free(&r);
    }
    /* the software gateway has no signing key: no signature */
    CU_ASSERT_EQUAL_FATAL(http(&gw_sw, NULL, 0, NULL, &r), 0);
    CU_ASSERT_EQUAL(r.status, 200);
    CU_ASSERT_STRING_EQUAL(
        head_value(&r, "X-Veil-Keys-Signature", sig, sizeof sig), "");
    resp_free(&r);
}

/* v2 = off: both routes answer 404, and v1 goes on. */
static void test_v2_off(void)
{
    char state_dir[700];
    const char *base[] = {"--state-dir", state_dir, NULL};
    const char *extra[] = {"--server-key",
                           server_ref,
                           "--pkcs11-module",
                           module,
                           "--pin-source",
                           pin_spec,
                           "--model",
                           "echo=echo",
                           "--v2",
                           "off",
                           NULL};
    uint8_t body[80] = {0};
    tu_proc g;
    resp r;

    snprintf(state_dir, sizeof state_dir, "%s/gw-v2-off.state",
             tu_env("VEIL_TEST_DIR"));
    CU_ASSERT_EQUAL_FATAL(gt_veild_start(&g, "gw-v2-off", base, extra, 0), 0);
    CU_ASSERT_EQUAL_FATAL(http(&g, NULL, 0, NULL, &r), 0);
    CU_ASSERT_EQUAL(r.status, 404);
    resp_free(&r);
    CU_ASSERT_EQUAL_FATAL(http(&g, body, sizeof body, VEIL_OHTTP_MEDIA_REQ, &r),
                          0);
    CU_ASSERT_EQUAL(r.status, 404);
    resp_free(&r);
    gt_stop_ok(&g);
}

/* The start-up log says where the KEM keys are made. */
static void expect_log(const tu_proc *p, const char *text)
{
    char *log = tu_read_file(p->log, NULL);

    CU_ASSERT(log && strstr(log, text) != NULL);
    free(log);
}

static void round_trip(const tu_proc *p)
{
    char *content = NULL;
    int status =
        exchange(p, "POST", "/v1/chat/completions", CHAT_ECHO, &content);

    CU_ASSERT_EQUAL(status, 200);
    if (status != 200)
        fprintf(stderr, "chat: %d %s\n", status, content ? content : "");
    CU_ASSERT(content && strstr(content, "chat.completion") != NULL);
    CU_ASSERT(content && strstr(content, "Hello over Oblivious HTTP") != NULL);
    free(content);
    status = exchange(p, "GET", "/v1/models", NULL, &content);
    CU_ASSERT_EQUAL(status, 200);
    CU_ASSERT(content && strstr(content, "\"echo\"") != NULL);
    free(content);
}

static void test_round_trip_token(void)
{
    round_trip(&gw_tok);
    expect_log(&gw_tok, "v2: KEM keys (P-256) are made in the server key's "
                        "token");
}

static void test_round_trip_software(void)
{
    round_trip(&gw_sw);
    expect_log(&gw_sw, "v2: KEM keys (P-256) are made in software");
}

/* The member at path (names and array indices, "" ends) of j. */
static const cJSON *at(const cJSON *j, const char *const *path)
{
    for (; j && **path; path++)
        j = (**path >= '0' && **path <= '9')
                ? cJSON_GetArrayItem(j, (int)strtol(*path, NULL, 10))
                : cJSON_GetObjectItemCaseSensitive(j, *path);
    return j;
}

#define AT(j, ...) at((j), (const char *const[]){__VA_ARGS__, ""})

/* A string member's value, or "(none)". */
static const char *sv(const cJSON *v)
{
    const char *s = cJSON_GetStringValue(v);

    return s ? s : "(none)";
}

/* The embedding a user of the echo model (and of mock-upstream) gets for
 * text, computed here from its definition (PROTOCOL-V2.md, GATEWAY.md):
 * component i is (big-endian 16 bits i of SHA-256(text) - 32768) / 32768. */
static int embedding_is(const cJSON *vec, const char *text)
{
    uint8_t h[32];
    int ok = cJSON_GetArraySize(vec) == 16;

    SHA256((const uint8_t *)text, strlen(text), h);
    for (int i = 0; ok && i < 16; i++) {
        const cJSON *v = cJSON_GetArrayItem(vec, i);
        ok = cJSON_IsNumber(v) &&
             v->valuedouble ==
                 ((double)(h[2 * i] << 8 | h[2 * i + 1]) - 32768.0) / 32768.0;
    }
    return ok;
}

/* POST /v1/completions and /v1/embeddings with model: what the user sees
 * in the answer (prefix: what the backend puts before each prompt). */
static void texts_round_trip(const tu_proc *p, const char *model,
                             const char *prefix)
{
    char req[400], want[200], *content = NULL;
    cJSON *j;

    snprintf(req, sizeof req,
             "{\"model\":\"%s\",\"prompt\":\"" PROMPT "\",\"max_tokens\":8}",
             model);
    CU_ASSERT_EQUAL(exchange(p, "POST", "/v1/completions", req, &content), 200);
    j = content ? cJSON_Parse(content) : NULL;
    snprintf(want, sizeof want, "%s" PROMPT, prefix);
    CU_ASSERT_STRING_EQUAL(sv(AT(j, "object")), "text_completion");
    CU_ASSERT_STRING_EQUAL(sv(AT(j, "model")), model);
    CU_ASSERT_STRING_EQUAL(sv(AT(j, "choices", "0", "text")), want);
    CU_ASSERT_STRING_EQUAL(sv(AT(j, "choices", "0", "finish_reason")), "stop");
    CU_ASSERT(cJSON_IsNumber(AT(j, "usage", "total_tokens")));
    CU_ASSERT_PTR_NULL(AT(j, "_metadata"));
    cJSON_Delete(j);
    free(content);

    snprintf(req, sizeof req,
             "{\"model\":\"%s\",\"input\":[\"" PROMPT "\",\"second\"]}", model);
    CU_ASSERT_EQUAL(exchange(p, "POST", "/v1/embeddings", req, &content), 200);
    if (content == NULL)
        return;
    j = content ? cJSON_Parse(content) : NULL;
    CU_ASSERT_STRING_EQUAL(sv(AT(j, "object")), "list");
    CU_ASSERT_EQUAL(cJSON_GetArraySize(AT(j, "data")), 2);
    CU_ASSERT_STRING_EQUAL(sv(AT(j, "data", "1", "object")), "embedding");
    CU_ASSERT_EQUAL(cJSON_GetNumberValue(AT(j, "data", "1", "index")), 1);
    CU_ASSERT(embedding_is(AT(j, "data", "0", "embedding"), PROMPT));
    CU_ASSERT(embedding_is(AT(j, "data", "1", "embedding"), "second"));
    CU_ASSERT(cJSON_IsNumber(AT(j, "usage", "prompt_tokens")));
    cJSON_Delete(j);
    free(content);
}

static void test_texts_token(void)
{
    texts_round_trip(&gw_tok, "echo", "");
    texts_round_trip(&gw_tok, "mock/hello", "mock: ");
}

static void test_texts_software(void)
{
    texts_round_trip(&gw_sw, "echo", "");
}

/* Every inference route: the model allow-list and tier (an inner 403),
 * and the backend's errors, all inside the encrypted answer. */
static void test_route_refusals(void)
{
    static const char *const paths[] = {"/v1/chat/completions",
                                        "/v1/completions", "/v1/embeddings"};
    const struct {
        const char *model;
        int status;
        const char *detail;
    } cases[] = {
        {"high-only", 403, "not allowed on the standard tier"},
        {m_500, 502, "inference backend error (HTTP 500)"},
        {m_404, 400, "mock upstream: status 404"},
    };

    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
            char req[300], *content = NULL;
            int status;

            snprintf(req, sizeof req,
                     "{\"model\":\"%.*s\",\"messages\":[{\"role\":\"user\","
                     "\"content\":\"hi\"}],\"prompt\":\"hi\",\"input\":\"hi\"}",
                     (int)strcspn(cases[k].model, "="), cases[k].model);
            status = exchange(&gw_tok, "POST", paths[i], req, &content);
            CU_ASSERT_EQUAL(status, cases[k].status);
            CU_ASSERT(content && strstr(content, "\"detail\"") &&
                      strstr(content, cases[k].detail));
            if (status != cases[k].status)
                fprintf(stderr, "%s %s: %d %s\n", paths[i], cases[k].model,
                        status, content ? content : "(none)");
            free(content);
        }
}

/* OpenSSL alone, as a verifier without veil would: 1 when sig (base64 of
 * DER) is the signing key's ECDSA P-256 SHA-256 signature of text. */
static int openssl_verifies(const char *b64, const char *text)
{
    BIO *bio = BIO_new_mem_buf(sign_pem, -1);
    EVP_PKEY *pk = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    size_t n = strlen(b64), pad = 0;
    unsigned char der[256];
    int len = n < 4 * 64
                  ? EVP_DecodeBlock(der, (const unsigned char *)b64, (int)n)
                  : -1;
    int ok = 0;

    while (pad < n && pad < 2 && b64[n - 1 - pad] == '=')
        pad++;
    if (pk && md && len > (int)pad &&
        EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pk) == 1)
        ok = EVP_DigestVerify(md, der, (size_t)len - pad,
                              (const unsigned char *)text, strlen(text)) == 1;
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pk);
    BIO_free(bio);
    return ok;
}

/* hex of SHA-256 of len bytes (the test's own, for statements) */
static void sha256_hex(const void *p, size_t len, char hex[65])
{
    uint8_t h[32];

    SHA256(p, len, h);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", h[i]);
}

/* The statement a verifier rebuilds for the last exchange
 * (PROTOCOL-V2.md 8, docs/ATTESTATION.md): ID = hex SHA-256 of enc,
 * hashes of the inner request's and answer's content. */
static void statement_of(const char *request, const char *answer, char *out,
                         size_t size)
{
    char req[65], res[65], key[65];
    BIO *bio = BIO_new_mem_buf(sign_pem, -1);
    EVP_PKEY *pk = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    unsigned char *der = NULL;
    int der_len = pk ? i2d_PUBKEY(pk, &der) : -1;

    sha256_hex(request, strlen(request), req);
    sha256_hex(answer, strlen(answer), res);
    sha256_hex(der, der_len > 0 ? (size_t)der_len : 0, key);
    snprintf(out, size,
             "veil-response-signature-v1\npayload_id=%s\nsecurity_tier="
             "standard\nrequest_sha256=%s\nresponse_sha256=%s\n"
             "signing_key_sha256=%s\nsigned_at=%s\n",
             last_rid, req, res, key, sig_at);
    OPENSSL_free(der);
    EVP_PKEY_free(pk);
    BIO_free(bio);
}

/* A v2 answer's signature, inside the encrypted answer, verified with
 * OpenSSL from what the client holds; then fetched by its ID (inner GET
 * /v1/signatures/<id>).  A gateway without a signing key sends none. */
static void test_answer_signature(void)
{
    char *content = NULL, *kept = NULL, st[700], path[100], want_key[80];
    char rid[65], sig[200], res[65], key[65];
    cJSON *j;

    CU_ASSERT_EQUAL_FATAL(
        exchange(&gw_tok, "POST", "/v1/embeddings",
                 "{\"model\":\"echo\",\"input\":\"" PROMPT "\"}", &content),
        200);
    CU_ASSERT_FATAL(content != NULL && sig_b64[0] != '\0');
    statement_of("{\"model\":\"echo\",\"input\":\"" PROMPT "\"}", content, st,
                 sizeof st);
    CU_ASSERT(openssl_verifies(sig_b64, st));
    sscanf(st,
           "%*[^\n]\n%*[^\n]\n%*[^\n]\n%*[^\n]\n"
           "response_sha256=%64[0-9a-f]\nsigning_key_sha256=%64[0-9a-f]",
           res, key);
    snprintf(want_key, sizeof want_key, "sha256:%s", key);
    CU_ASSERT_STRING_EQUAL(sig_key, want_key);
    /* the same signature does not cover another answer */
    content[strlen(content) - 2] ^= 1;
    {
        char other[700];
        statement_of("{\"model\":\"echo\",\"input\":\"" PROMPT "\"}", content,
                     other, sizeof other);
        CU_ASSERT(!openssl_verifies(sig_b64, other));
    }
    free(content);
    snprintf(rid, sizeof rid, "%s", last_rid);
    snprintf(sig, sizeof sig, "%s", sig_b64);

    /* kept under its ID */
    snprintf(path, sizeof path, "/v1/signatures/%s", rid);
    CU_ASSERT_EQUAL(exchange(&gw_tok, "GET", path, NULL, &kept), 200);
    j = kept ? cJSON_Parse(kept) : NULL;
    CU_ASSERT_STRING_EQUAL(sv(AT(j, "payload_id")), rid);
    CU_ASSERT_STRING_EQUAL(sv(AT(j, "signature_b64")), sig);
    CU_ASSERT_STRING_EQUAL(sv(AT(j, "statement")), st);
    CU_ASSERT_STRING_EQUAL(sv(AT(j, "response_sha256")), res);
    cJSON_Delete(j);
    free(kept);
    /* an ID never signed: 404 inside */
    rid[0] = rid[0] == '0' ? '1' : '0';
    snprintf(path, sizeof path, "/v1/signatures/%s", rid);
    CU_ASSERT_EQUAL(exchange(&gw_tok, "GET", path, NULL, &kept), 404);
    free(kept);

    /* no signing key: no signature */
    CU_ASSERT_EQUAL(
        exchange(&gw_sw, "POST", "/v1/chat/completions", CHAT_ECHO, &content),
        200);
    CU_ASSERT_STRING_EQUAL(sig_b64, "");
    free(content);
}

/* A signature is its requester's: another tenant's API key gets, inside,
 * the 404 of an ID never seen; an operator key (operator_keys) gets it. */
static void test_signature_owner(void)
{
    static const char *const keys[] = {"veil-v2-tenant-a-1f0e",
                                       "veil-v2-tenant-b-9c3d",
                                       "veil-v2-operator-4b7a"};
    static const char *const names[] = {"tenant-a", "tenant-b", "ops"};
    char lines[600] = "", dir[512], path[600], hex[65];
    char bearers[3][80], sig_path[100], want[300], *content = NULL;
    const char *more[] = {"--signing-key",   signer_ref, "--api-keys", path,
                          "--operator-keys", "ops",      NULL};
    FILE *f;
    tu_proc g;

    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(lines);
        sha256_hex(keys[i], strlen(keys[i]), hex);
        snprintf(lines + n, sizeof lines - n, "sha256:%s %s\n", hex, names[i]);
        snprintf(bearers[i], sizeof bearers[i], "Bearer %s", keys[i]);
    }
    CU_ASSERT_EQUAL_FATAL(tu_scratch_dir("gw-v2-owner", dir, sizeof dir), 0);
    snprintf(path, sizeof path, "%s/api-keys", dir);
    f = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(lines, f);
    fclose(f);
    CU_ASSERT_EQUAL_FATAL(start_token_gateway(&g, "gw-v2-owner", more), 0);

    bearer = bearers[0];
    CU_ASSERT_EQUAL(
        exchange(&g, "POST", "/v1/chat/completions", CHAT_ECHO, &content), 200);
    CU_ASSERT(sig_b64[0] != '\0');
    free(content);
    snprintf(sig_path, sizeof sig_path, "/v1/signatures/%s", last_rid);
    snprintf(want, sizeof want,
             "{\"detail\":\"no signature is kept for payload ID %s (unknown, "
             "or older than signature_retention)\"}",
             sig_path + strlen("/v1/signatures/"));
    /* its requester */
    CU_ASSERT_EQUAL(exchange(&g, "GET", sig_path, NULL, &content), 200);
    CU_ASSERT(content && strstr(content, sig_path + 15) != NULL);
    free(content);
    /* another tenant: the answer to an ID never seen, byte for byte */
    bearer = bearers[1];
    CU_ASSERT_EQUAL(exchange(&g, "GET", sig_path, NULL, &content), 404);
    CU_ASSERT(content && strcmp(content, want) == 0);
    if (content && strcmp(content, want) != 0)
        fprintf(stderr, "tenant b got %s\n", content);
    free(content);
    /* an operator */
    bearer = bearers[2];
    CU_ASSERT_EQUAL(exchange(&g, "GET", sig_path, NULL, &content), 200);
    CU_ASSERT(content && strstr(content, sig_path + 15) != NULL);
    free(content);
    bearer = NULL;
    gt_stop_ok(&g);
}

/* Errors after decapsulation travel encrypted, with their status; a known
 * path with another method is a 405 whose allow field names the method. */
static void test_errors_encrypted(void)
{
    static const struct {
        const char *method, *path, *content;
        int status;
        const char *detail;
    } cases[] = {
        {"POST", "/v1/chat/completions", "{\"model\":\"nope\",\"messages\":[]}",
         400, "is not served here"},
        {"POST", "/v1/chat/completions", "{\"model\":", 400, ""},
        {"GET", "/v1/nothing", NULL, 404, "no such route"},
        {"DELETE", "/v1/nowhere", NULL, 404, "no such route"},
        /* a route with another method: 405 naming it (RFC 9110 15.5.6) */
        {"DELETE", "/v1/models", NULL, 405, "this route takes GET"},
        {"GET", "/v1/chat/completions", NULL, 405, "this route takes POST"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *content = NULL;
        int status = exchange(&gw_tok, cases[i].method, cases[i].path,
                              cases[i].content, &content);
        CU_ASSERT_EQUAL(status, cases[i].status);
        CU_ASSERT(content && strstr(content, "\"detail\"") &&
                  strstr(content, cases[i].detail));
        if (status != cases[i].status)
            fprintf(stderr, "case %zu: %d %s\n", i, status,
                    content ? content : "(none)");
        /* its allow field: the route's method, on a 405 only */
        CU_ASSERT_STRING_EQUAL(last_allow, status == 405
                                               ? (cases[i].method[0] == 'D'
                                                      ? "GET"
                                                      : "POST")
                                               : "");
        free(content);
    }
}

/* ---- inner requests as other implementations write them ----------------- */

/* A binary HTTP message put together byte by byte (no veil encoder), so
 * that a case can use what RFC 9292 allows a sender to vary: framing,
 * upper-case names, chunks, padding. */
typedef struct raw {
    uint8_t b[4096];
    size_t n;
} raw;

static void raw_int(raw *r, uint64_t v)
{
    if (v < 64) {
        r->b[r->n++] = (uint8_t)v;
    } else {
        r->b[r->n++] = (uint8_t)(0x40 | v >> 8);
        r->b[r->n++] = (uint8_t)v;
    }
}

static void raw_str(raw *r, const char *s)
{
    raw_int(r, strlen(s));
    memcpy(r->b + r->n, s, strlen(s));
    r->n += strlen(s);
}

/* Framing, then method, scheme, authority and path. */
static void raw_request(raw *r, unsigned framing, const char *method,
                        const char *authority, const char *path)
{
    r->n = 0;
    raw_int(r, framing);
    raw_str(r, method);
    raw_str(r, "https");
    raw_str(r, authority);
    raw_str(r, path);
}

/* A known-length field section of NULL-terminated name, value pairs. */
static void raw_section(raw *r, const char *const *nv)
{
    size_t len = 0;

    for (size_t i = 0; nv[i]; i += 2)
        len += 2 + strlen(nv[i]) + strlen(nv[i + 1]);
    raw_int(r, len);
    for (size_t i = 0; nv[i]; i += 2) {
        raw_str(r, nv[i]);
        raw_str(r, nv[i + 1]);
    }
}

/* One exchange of plaintext bytes as they are: the inner status and the
 * content in *out; -1 when the outer answer is not an opened 200. */
static int exchange_raw(const tu_proc *p, const raw *plain, char **out)
{
    veil_ohttp_keyconfig cfg;
    veil_ohttp_ctx *ctx = NULL;
    veil_ohttp_alg alg = {VEIL_HPKE_KDF_SHA256, VEIL_HPKE_AEAD_AES256GCM};
    uint8_t *req = NULL;
    size_t len = 0;
    resp r = {0};
    int status = -1;

    *out = NULL;
    if (fetch_config(p, &cfg) == 0 &&
        veil_ohttp_encap_request(sw_e, &cfg, alg, plain->b, plain->n, NULL,
                                 &req, &len, &ctx) == VEIL_OK &&
        http(p, req, len, VEIL_OHTTP_MEDIA_REQ, &r) == 0 && r.status == 200)
        status = open_answer(ctx, &r, out);
    resp_free(&r);
    free(req);
    veil_ohttp_ctx_free(ctx);
    return status;
}

/* RFC 9292 3.6 (field names are tokens, RFC 9110 5.1, in any case): a
 * client that writes "Content-Type" and "X-Security-Tier" is served as
 * one that writes them in lower case, and an "Expect: 100-continue" in
 * upper case is still refused as RFC 9458 5.1 requires. */
static void test_inner_field_case(void)
{
    static const char *const hdr[] = {"Content-Type", "application/json",
                                      "X-Security-Tier", "standard", NULL};
    static const char *const bad_tier[] = {"X-Security-Tier", "golden", NULL};
    static const char *const expect[] = {"Expect", "100-continue", NULL};
    raw q;
    char *content = NULL;

    raw_request(&q, 0, "POST", "", "/v1/chat/completions");
    raw_section(&q, hdr);
    raw_str(&q, CHAT_ECHO);
    CU_ASSERT_EQUAL(exchange_raw(&gw_sw, &q, &content), 200);
    CU_ASSERT(content && strstr(content, PROMPT));
    if (!content || !strstr(content, PROMPT))
        fprintf(stderr, "upper-case names: %s\n", content ? content : "-");
    free(content);
    raw_request(&q, 0, "GET", "", "/v1/models");
    raw_section(&q, bad_tier);
    CU_ASSERT_EQUAL(exchange_raw(&gw_sw, &q, &content), 400);
    CU_ASSERT(content && strstr(content, "x-security-tier must be"));
    free(content);
    raw_request(&q, 0, "GET", "", "/v1/models");
    raw_section(&q, expect);
    CU_ASSERT_EQUAL(exchange_raw(&gw_sw, &q, &content), 400);
    CU_ASSERT(content && strstr(content, "expect is not taken"));
    free(content);
}

/* RFC 9292 3.2 and 3.8 as veild takes them: an indeterminate-length
 * request (framing 2) in chunks with zero padding, a known-length one
 * truncated after its header section and padded, an empty authority, all
 * served; a content-length that disagrees with the content is a
 * malformed request (RFC 9113 8.1.1, RFC 9110 8.6): an inner 400, and
 * one that agrees is served; a singleton field veild acts on
 * (authorization, x-security-tier, content-type) given twice is an inner
 * 400 too, never a guess at which one was meant. */
static void test_inner_framings(void)
{
    static const char *const ct[] = {"content-type", "application/json",
                                     NULL};
    static const char *const cl_bad[] = {"content-type", "application/json",
                                         "Content-Length", "5", NULL};
    static const char *const cl_two[] = {"content-length", "7",
                                         "content-length", "9", NULL};
    static const char *const none[] = {NULL};
    static const char *const twice[][7] = {
        {"x-security-tier", "standard", "X-Security-Tier", "maximum", NULL},
        {"authorization", "Bearer a", "authorization", "Bearer b", NULL},
        {"content-type", "application/json", "Content-Type", "text/plain",
         NULL},
        {NULL}};
    static const size_t cuts[] = {10, 25, sizeof CHAT_ECHO - 1};
    char cl_ok_len[16];
    const char *cl_ok[] = {"content-length", cl_ok_len, NULL};
    raw q;
    char *content = NULL;

    /* indeterminate length: headers up to a zero, chunks, a zero, empty
     * trailers, then padding */
    raw_request(&q, 2, "POST", "", "/v1/chat/completions");
    raw_str(&q, "content-type");
    raw_str(&q, "application/json");
    raw_int(&q, 0);
    for (size_t i = 0, at = 0; i < 3; at = cuts[i++]) {
        raw_int(&q, cuts[i] - at);
        memcpy(q.b + q.n, CHAT_ECHO + at, cuts[i] - at);
        q.n += cuts[i] - at;
    }
    raw_int(&q, 0);
    raw_int(&q, 0);
    memset(q.b + q.n, 0, 7);
    q.n += 7;
    CU_ASSERT_EQUAL(exchange_raw(&gw_sw, &q, &content), 200);
    CU_ASSERT(content && strstr(content, PROMPT));
    free(content);
    /* indeterminate length truncated after its header section, padded */
    raw_request(&q, 2, "GET", "gateway.test", "/v1/models");
    raw_int(&q, 0);
    memset(q.b + q.n, 0, 3);
    q.n += 3;
    CU_ASSERT_EQUAL(exchange_raw(&gw_sw, &q, &content), 200);
    CU_ASSERT(content && strstr(content, "\"echo\""));
    free(content);
    /* known length truncated after the control data, then padded */
    raw_request(&q, 0, "GET", "", "/v1/models");
    memset(q.b + q.n, 0, 16);
    q.n += 16;
    CU_ASSERT_EQUAL(exchange_raw(&gw_sw, &q, &content), 200);
    free(content);
    raw_request(&q, 0, "GET", "", "/v1/models");
    raw_section(&q, none);
    CU_ASSERT_EQUAL(exchange_raw(&gw_sw, &q, &content), 200);
    free(content);
    /* content-length against the content */
    raw_request(&q, 0, "POST", "", "/v1/chat/completions");
    raw_section(&q, cl_bad);
    raw_str(&q, CHAT_ECHO);
    CU_ASSERT_EQUAL(exchange_raw(&gw_sw, &q, &content), 400);
    CU_ASSERT(content && strstr(content, "content-length"));
    free(content);
    raw_request(&q, 0, "GET", "", "/v1/models");
    raw_section(&q, cl_two);
    CU_ASSERT_EQUAL(exchange_raw(&gw_sw, &q, &content), 400);
    free(content);
    /* a field veild acts on, twice (in any case): refused, not guessed */
    for (size_t i = 0; twice[i][0]; i++) {
        raw_request(&q, 0, "POST", "", "/v1/chat/completions");
        raw_section(&q, twice[i]);
        raw_str(&q, CHAT_ECHO);
        CU_ASSERT_EQUAL(exchange_raw(&gw_sw, &q, &content), 400);
        CU_ASSERT(content && strstr(content, "more than once"));
        free(content);
    }
    snprintf(cl_ok_len, sizeof cl_ok_len, "%zu", sizeof CHAT_ECHO - 1);
    raw_request(&q, 0, "POST", "", "/v1/chat/completions");
    raw_section(&q, ct);
    raw_str(&q, CHAT_ECHO);
    CU_ASSERT_EQUAL(exchange_raw(&gw_sw, &q, &content), 200);
    free(content);
    raw_request(&q, 0, "POST", "", "/v1/chat/completions");
    raw_section(&q, cl_ok);
    raw_str(&q, CHAT_ECHO);
    CU_ASSERT_EQUAL(exchange_raw(&gw_sw, &q, &content), 200);
    free(content);
}

/* RFC 9540's resource as HTTP serves it: HEAD is the GET's head
 * (application/ohttp-keys, no body), a query string changes nothing, a
 * trailing slash is another path, and another method is a 405 that
 * names the methods the resource has (RFC 9110 15.5.6: "The origin server
 * MUST generate an Allow header field in a 405 response"). */
static void test_well_known_methods(void)
{
    char v[256];
    resp r;

    outer_method = "HEAD";
    CU_ASSERT_EQUAL_FATAL(http(&gw_sw, NULL, 0, NULL, &r), 0);
    CU_ASSERT_EQUAL(r.status, 200);
    CU_ASSERT_STRING_EQUAL(head_value(&r, "Content-Type", v, sizeof v),
                           VEIL_OHTTP_MEDIA_KEYS);
    CU_ASSERT_EQUAL(r.len, 0);
    resp_free(&r);
    for (int i = 0; i < 2; i++) {
        outer_method = i ? "DELETE" : "PUT";
        CU_ASSERT_EQUAL_FATAL(http(&gw_sw, NULL, 0, NULL, &r), 0);
        CU_ASSERT_EQUAL(r.status, 405);
        CU_ASSERT_STRING_EQUAL(head_value(&r, "Allow", v, sizeof v),
                               "GET, HEAD, POST");
        resp_free(&r);
    }
    outer_method = NULL;
    /* a query string is the same resource (the keys); a trailing slash
     * is another one (404) */
    url_tail = "?v=1";
    CU_ASSERT_EQUAL_FATAL(http(&gw_sw, NULL, 0, NULL, &r), 0);
    CU_ASSERT_EQUAL(r.status, 200);
    CU_ASSERT_STRING_EQUAL(head_value(&r, "Content-Type", v, sizeof v),
                           VEIL_OHTTP_MEDIA_KEYS);
    resp_free(&r);
    url_tail = "/";
    CU_ASSERT_EQUAL_FATAL(http(&gw_sw, NULL, 0, NULL, &r), 0);
    CU_ASSERT_EQUAL(r.status, 404);
    resp_free(&r);
    url_tail = "";
}

/* A replay, and any byte of the key ID, enc or ciphertext changed: the
 * same 400, byte for byte; an answer opens only with its own context. */
static void test_uniform_and_replay(void)
{
    veil_ohttp_keyconfig cfg;
    veil_ohttp_ctx *ctx = NULL, *other = NULL;
    size_t len = 0, len2 = 0;
    uint8_t *req, *req2;
    resp r;
    char *content = NULL;
    const size_t at[] = {0, 2, 6, 7, 8 + 32, 71, 0 /* last */};

    CU_ASSERT_EQUAL_FATAL(fetch_config(&gw_tok, &cfg), 0);
    req = encap(&cfg, "POST", "/v1/chat/completions", CHAT_ECHO, &len, &ctx);
    req2 = encap(&cfg, "GET", "/v1/models", NULL, &len2, &other);
    CU_ASSERT_FATAL(req != NULL && req2 != NULL);
    /* tampered copies first (they must not burn the original) */
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
        size_t k = i == 6 ? len - 1 : at[i];
        req[k] ^= 0x01;
        CU_ASSERT_EQUAL_FATAL(http(&gw_tok, req, len, VEIL_OHTTP_MEDIA_REQ, &r),
                              0);
        expect_uniform(&r);
        resp_free(&r);
        req[k] ^= 0x01;
    }
    CU_ASSERT_EQUAL_FATAL(http(&gw_tok, req, 3, VEIL_OHTTP_MEDIA_REQ, &r), 0);
    expect_uniform(&r); /* too short */
    resp_free(&r);
    /* the original opens, only with its own context */
    CU_ASSERT_EQUAL_FATAL(http(&gw_tok, req, len, VEIL_OHTTP_MEDIA_REQ, &r), 0);
    CU_ASSERT_EQUAL(r.status, 200);
    CU_ASSERT_EQUAL(open_answer(other, &r, &content), -1);
    free(content);
    CU_ASSERT_EQUAL(open_answer(ctx, &r, &content), 200);
    free(content);
    resp_free(&r);
    /* the replay: the uniform answer */
    CU_ASSERT_EQUAL_FATAL(http(&gw_tok, req, len, VEIL_OHTTP_MEDIA_REQ, &r), 0);
    expect_uniform(&r);
    resp_free(&r);
    /* another media type: 415 in clear; so is a longer subtype */
    CU_ASSERT_EQUAL_FATAL(http(&gw_tok, req2, len2, "application/json", &r), 0);
    CU_ASSERT_EQUAL(r.status, 415);
    resp_free(&r);
    CU_ASSERT_EQUAL_FATAL(
        http(&gw_tok, req2, len2, "message/ohttp-requests", &r), 0);
    CU_ASSERT_EQUAL(r.status, 415);
    resp_free(&r);
    /* the type in another case, parameters after white space (RFC 9110
     * 8.3.1): taken */
    CU_ASSERT_EQUAL_FATAL(
        http(&gw_tok, req2, len2, "Message/OHTTP-Req\t; q=1", &r), 0);
    CU_ASSERT_EQUAL(r.status, 200);
    resp_free(&r);
    free(req);
    free(req2);
    veil_ohttp_ctx_free(ctx);
    veil_ohttp_ctx_free(other);
}

/* The API key travels inside (the outer request has none), and so do the
 * refusals: 401 without it or with a wrong one, 429 with retry-after. */
static void test_api_key_inside(void)
{
    static const char key[] = "veil-v2-api-key-7d2e";
    uint8_t h[32];
    char line[200], dir[512], path[600], state_dir[700], hex[65];
    char *content = NULL;
    const char *base[] = {"--state-dir", state_dir, "--replay-capacity",
                          "65536", NULL};
    const char *extra[] = {"--server-key",
                           server_ref,
                           "--pkcs11-module",
                           module,
                           "--pin-source",
                           pin_spec,
                           "--model",
                           "echo=echo",
                           "--api-keys",
                           path,
                           "--rate",
                           "0.001",
                           "--burst",
                           "2",
                           NULL};
    FILE *f;
    tu_proc g;

    SHA256((const uint8_t *)key, strlen(key), h);
    veil_hex(h, 32, hex);
    snprintf(line, sizeof line, "sha256:%s tester\n", hex);
    CU_ASSERT_EQUAL_FATAL(tu_scratch_dir("gw-v2-auth", dir, sizeof dir), 0);
    snprintf(path, sizeof path, "%s/api-keys", dir);
    snprintf(state_dir, sizeof state_dir, "%s/gw-v2-auth.state",
             tu_env("VEIL_TEST_DIR"));
    f = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(line, f);
    fclose(f);
    CU_ASSERT_EQUAL_FATAL(gt_veild_start(&g, "gw-v2-auth", base, extra, 0), 0);
    bearer = NULL;
    CU_ASSERT_EQUAL(exchange(&g, "GET", "/v1/models", NULL, &content), 401);
    CU_ASSERT(content && strstr(content, "missing API key"));
    free(content);
    bearer = "Bearer not-the-key";
    CU_ASSERT_EQUAL(exchange(&g, "GET", "/v1/models", NULL, &content), 401);
    CU_ASSERT(content && strstr(content, "invalid API key"));
    free(content);
    bearer = "Bearer veil-v2-api-key-7d2e";
    for (int i = 0; i < 2; i++) { /* the burst */
        CU_ASSERT_EQUAL(
            exchange(&g, "POST", "/v1/chat/completions", CHAT_ECHO, &content),
            200);
        free(content);
    }
    CU_ASSERT_EQUAL(exchange(&g, "GET", "/v1/models", NULL, &content), 429);
    CU_ASSERT(retry_after > 0);
    CU_ASSERT(content && strstr(content, "rate limit"));
    free(content);
    bearer = NULL;
    gt_stop_ok(&g);
}

/* What the token holds, seen from outside veild (issue 14): every key
 * listed, the recording tried with each private key that HPKE can use. */
typedef struct token_scan {
    const veil_ohttp_keyconfig *cfg; /* the recording's key configuration */
    const uint8_t *rec;
    size_t len;
    const char *label; /* the KEM key's */
    int with_label, private_keys, opened;
} token_scan;

static int scan_key(void *ctx, const veil_key_info *info)
{
    token_scan *t = ctx;
    veil_key *k = NULL;
    veil_hpke_key *hk = NULL;
    veil_secbuf *req = NULL;
    veil_ohttp_ctx *c = NULL;

    t->with_label += strcmp(info->label, t->label) == 0;
    if (!info->has_private)
        return 0;
    t->private_keys++;
    /* an RSA key is no HPKE key; an EC key without CKA_DERIVE cannot
     * derive; any other P-256 key derives a secret that does not open */
    if (veil_key_open(tok_e, info->uri, &k) == VEIL_OK &&
        veil_hpke_key_from_engine(k, &hk) == VEIL_OK &&
        veil_ohttp_decap_request(tok_e, t->cfg, hk, t->rec, t->len, &req, &c) ==
            VEIL_OK)
        t->opened++;
    veil_ohttp_ctx_free(c);
    veil_secbuf_free(req);
    veil_hpke_key_free(hk);
    veil_key_free(k);
    return 0;
}

static void scan_token(token_scan *t)
{
    CU_ASSERT_EQUAL(veil_key_list(tok_e, token_uri, scan_key, t), VEIL_OK);
}

/* The scan can open a request when the token does hold its key: a P-256
 * derive key made here in the token, a request encapsulated to it. */
static void scan_control(void)
{
    veil_keygen_params kp = {
        .type = VEIL_KEY_EC_P256, .label = "v2-fs-control", .derive = 1};
    veil_ohttp_keyconfig cfg = {.key_id = 7, .kem = VEIL_HPKE_KEM_P256};
    veil_ohttp_ctx *ctx = NULL;
    veil_hpke_key *hk = NULL;
    veil_key *k = NULL;
    uint8_t *req = NULL;
    size_t len = 0;
    token_scan t = {.cfg = &cfg, .label = "v2-fs-control"};

    cfg.pk_len = sizeof cfg.pk;
    cfg.algs[0] =
        (veil_ohttp_alg){VEIL_HPKE_KDF_SHA256, VEIL_HPKE_AEAD_AES256GCM};
    cfg.n_algs = 1;
    CU_ASSERT_EQUAL_FATAL(veil_key_generate(tok_e, token_uri, &kp, &k),
                          VEIL_OK);
    CU_ASSERT_EQUAL(veil_hpke_key_from_engine(k, &hk), VEIL_OK);
    CU_ASSERT_EQUAL(veil_hpke_key_public(hk, cfg.pk, &cfg.pk_len), VEIL_OK);
    req = encap(&cfg, "GET", "/v1/models", NULL, &len, &ctx);
    t.rec = req;
    t.len = len;
    scan_token(&t);
    CU_ASSERT(t.with_label >= 1); /* listed under its label */
    CU_ASSERT_EQUAL(t.opened, 1);
    veil_hpke_key_free(hk);
    veil_key_delete(tok_e, k);
    veil_ohttp_ctx_free(ctx);
    free(req);
}

/* A key replaced still opens for its grace period, then is destroyed
 * (forward secrecy, PROTOCOL-V2.md 4.2; issue 14).  A request recorded
 * under it then gets the uniform 400, byte for byte what a body that is
 * no request at all gets; and the token no longer holds its private key:
 * no object with its label, and none of the private keys left there (the
 * long-term RSA and ECDSA keys) opens the recording.  SoftHSM2 takes
 * veild's KEM keys as session objects, which no other application sees
 * even while they live: there the label check only shows that no token
 * object was left behind, and the decapsulation with every private key
 * left (which scan_control shows can open a request) is what shows the
 * key gone. */
static void test_rotation(void)
{
    veil_ohttp_keyconfig a, b;
    veil_ohttp_ctx *c1 = NULL, *c2 = NULL;
    size_t l1 = 0, l2 = 0;
    uint8_t *r1, *r2;
    char *content = NULL, label[32];
    resp r, junk;
    tu_proc g;
    const char *more[] = {"--signing-key",
                          signer_ref,
                          "--kem-rotate",
                          "6",
                          "--kem-grace",
                          "3",
                          NULL};
    int i;

    CU_ASSERT_EQUAL_FATAL(start_token_gateway(&g, "gw-v2-rot", more), 0);
    CU_ASSERT_EQUAL_FATAL(fetch_config(&g, &a), 0);
    r1 = encap(&a, "POST", "/v1/chat/completions", CHAT_ECHO, &l1, &c1);
    r2 = encap(&a, "POST", "/v1/chat/completions", CHAT_ECHO, &l2, &c2);
    CU_ASSERT_FATAL(r1 && r2);
    for (i = 0; i < 100; i++) { /* the next key, within 6 s */
        CU_ASSERT_EQUAL_FATAL(fetch_config(&g, &b), 0);
        if (b.key_id != a.key_id)
            break;
        usleep(100000);
    }
    CU_ASSERT_EQUAL_FATAL(b.key_id, (uint8_t)(a.key_id + 1));
    CU_ASSERT(memcmp(a.pk, b.pk, 65) != 0);
    /* in grace: it opens */
    CU_ASSERT_EQUAL_FATAL(http(&g, r1, l1, VEIL_OHTTP_MEDIA_REQ, &r), 0);
    CU_ASSERT_EQUAL(r.status, 200);
    CU_ASSERT_EQUAL(open_answer(c1, &r, &content), 200);
    free(content);
    resp_free(&r);
    sleep(4); /* past the grace: destroyed */
    /* (a) the recording: the uniform 400, the same bytes as junk gets */
    CU_ASSERT_EQUAL_FATAL(http(&g, r2, l2, VEIL_OHTTP_MEDIA_REQ, &r), 0);
    expect_uniform(&r);
    CU_ASSERT_EQUAL_FATAL(
        http(&g, (const uint8_t *)"junk", 4, VEIL_OHTTP_MEDIA_REQ, &junk), 0);
    CU_ASSERT_EQUAL(junk.status, r.status);
    CU_ASSERT(junk.len == r.len && memcmp(junk.body, r.body, r.len) == 0);
    {
        char t1[128], t2[128];
        CU_ASSERT_STRING_EQUAL(
            head_value(&r, "Content-Type", t1, sizeof t1),
            head_value(&junk, "Content-Type", t2, sizeof t2));
    }
    resp_free(&junk);
    resp_free(&r);
    {
        char *log = tu_read_file(g.log, NULL), line[64];
        snprintf(line, sizeof line, "v2: KEM key %u destroyed",
                 (unsigned)a.key_id);
        CU_ASSERT(log && strstr(log, line) != NULL);
        free(log);
    }
    /* (b) the token, opened here through the engine (PKCS#11), while the
     * gateway still runs, and again once it has stopped */
    snprintf(label, sizeof label, "veil-kem-%u", (unsigned)a.key_id);
    for (int pass = 0; pass < 2; pass++) {
        token_scan t = {.cfg = &a, .rec = r2, .len = l2, .label = label};

        if (pass == 1)
            gt_stop_ok(&g);
        scan_token(&t);
        CU_ASSERT_EQUAL(t.with_label, 0);
        CU_ASSERT(t.private_keys >= 2); /* v2-server (RSA), v2-signer */
        CU_ASSERT_EQUAL(t.opened, 0);
    }
    scan_control();
    free(r1);
    free(r2);
    veil_ohttp_ctx_free(c1);
    veil_ohttp_ctx_free(c2);
}

/* ---- setup --------------------------------------------------------------- */

static int start_gateways(void)
{
    char state[2][700], dir[512], ref[600];
    veil_keygen_params kp = {.type = VEIL_KEY_RSA, .bits = 2048};
    veil_key *k = NULL;
    const char *base0[] = {"--state-dir", state[0], "--replay-capacity",
                           "65536",       "--rate", "1000",
                           "--burst",     "1000",   NULL};
    const char *base1[] = {"--state-dir", state[1], "--replay-capacity",
                           "65536",       "--rate", "1000",
                           "--burst",     "1000",   NULL};
    const char *tok[] = {"--server-key",
                         server_ref,
                         "--pkcs11-module",
                         module,
                         "--pin-source",
                         pin_spec,
                         "--signing-key",
                         signer_ref,
                         "--model",
                         "echo=echo",
                         "--model",
                         "high-only=echo,tiers=high",
                         "--model",
                         m_hello,
                         "--model",
                         m_500,
                         "--model",
                         m_404,
                         NULL};
    const char *sw[] = {"--server-key", ref, "--model", "echo=echo", NULL};

    snprintf(state[0], sizeof state[0], "%s/gw-v2-tok.state",
             tu_env("VEIL_TEST_DIR"));
    snprintf(state[1], sizeof state[1], "%s/gw-v2-sw.state",
             tu_env("VEIL_TEST_DIR"));
    if (tu_scratch_dir("gw-v2-keydir", dir, sizeof dir) != 0 ||
        veil_key_generate(sw_e, "software", &kp, &k) != VEIL_OK ||
        veil_key_save(sw_e, k, dir, NULL) != VEIL_OK)
        return -1;
    veil_key_free(k);
    snprintf(ref, sizeof ref, "dir:%s", dir);
    if (gt_mock_start(&upstream, "gw-v2-mock") != 0)
        return -1;
    snprintf(m_hello, sizeof m_hello, "mock/hello=http://127.0.0.1:%u/v1",
             upstream.port);
    snprintf(m_500, sizeof m_500, "mock/status-500=http://127.0.0.1:%u/v1",
             upstream.port);
    snprintf(m_404, sizeof m_404, "mock/status-404=http://127.0.0.1:%u/v1",
             upstream.port);
    if (gt_veild_start(&gw_tok, "gw-v2-tok", base0, tok, TU_LOG_FRESH) != 0 ||
        gt_veild_start(&gw_sw, "gw-v2-sw", base1, sw, TU_LOG_FRESH) != 0)
        return -1;
    return 0;
}

static int setup(void)
{
    veil_keygen_params kp = {
        .type = VEIL_KEY_RSA, .bits = 2048, .label = "v2-server"};
    veil_keygen_params ep = {.type = VEIL_KEY_EC_P256, .label = "v2-signer"};
    char *pem = NULL;

    module = tu_env("VEIL_TEST_SOFTHSM_MODULE");
    pin_file = tu_env("VEIL_TEST_PIN_FILE");
    snprintf(pin_spec, sizeof pin_spec, "file:%s", pin_file);
    if (tu_softhsm_uri(token_uri, sizeof token_uri) != 0)
        return -1;
    snprintf(server_ref, sizeof server_ref, "%s;object=v2-server", token_uri);
    snprintf(signer_ref, sizeof signer_ref, "%s;object=v2-signer", token_uri);
    if (veil_engine_new(NULL, &sw_e) != VEIL_OK)
        return -1;
    if (tu_softhsm_engine(&tok_e) != VEIL_OK ||
        veil_key_generate(tok_e, token_uri, &kp, &srv_key) != VEIL_OK ||
        veil_key_generate(tok_e, token_uri, &ep, &sign_key) != VEIL_OK ||
        veil_key_public_pem(sign_key, &pem) != VEIL_OK ||
        veil_key_from_public(sw_e, (const uint8_t *)pem, strlen(pem),
                             &sign_pub) != VEIL_OK) {
        fprintf(stderr, "setup: %s\n", veil_last_error()->message);
        free(pem);
        return -1;
    }
    sign_pem = pem;
    return start_gateways();
}

static void teardown(void)
{
    tu_proc_stop_all();
    veil_key_free(sign_pub);
    free(sign_pem);
    if (sign_key)
        veil_key_delete(tok_e, sign_key);
    if (srv_key)
        veil_key_delete(tok_e, srv_key);
    veil_engine_free(tok_e);
    veil_engine_free(sw_e);
}

static void test_exit(void)
{
    gt_stop_ok(&gw_tok);
    gt_stop_ok(&gw_sw);
}

int main(void)
{
    static const tu_test cases[] = {
        {"key configurations, signed", test_key_config},
        {"chat and models, KEM key in SoftHSM2", test_round_trip_token},
        {"chat and models, KEM key in software", test_round_trip_software},
        {"completions and embeddings, KEM key in SoftHSM2", test_texts_token},
        {"completions and embeddings, KEM key in software",
         test_texts_software},
        {"every route: tier 403 and backend errors inside",
         test_route_refusals},
        {"answer signature inside, verified, kept by ID",
         test_answer_signature},
        {"a signature only for its API key or an operator",
         test_signature_owner},
        {"errors travel encrypted", test_errors_encrypted},
        {"inner field names in upper case (RFC 9292 3.6)",
         test_inner_field_case},
        {"inner framings, truncation, padding, content-length",
         test_inner_framings},
        {"the well-known resource: HEAD, and Allow on a 405",
         test_well_known_methods},
        {"one answer for tampering and replays", test_uniform_and_replay},
        {"API key and rate limit inside", test_api_key_inside},
        {"rotation: grace, then destroyed (forward secrecy)", test_rotation},
        {"v2 = off", test_v2_off},
        {"gateways exit 0", test_exit},
    };
    int rc;

    signal(SIGPIPE, SIG_IGN);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return 1;
    if (setup() != 0) {
        teardown();
        curl_global_cleanup();
        return 1;
    }
    TU_ADD_SUITE("protocol v2", NULL, NULL, cases);
    rc = tu_run_tests();
    teardown();
    curl_global_cleanup();
    return rc;
}
