/* One chat completion, from request to decrypted and verified answer,
 * with retries: the request checked and serialised, sealed to the server
 * key and posted; the answer opened, its members checked and verified
 * (verify.c).  Uses client.c (the client object), keys.c, verify.c and
 * the bottom layer (client_int.h); nothing calls back into it
 * (docs/ARCHITECTURE.md). */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "keys.h"
#include "package.h"
#include "tier.h"
#include "verify.h"

/* A package has about a dozen values (docs/CLIENT.md): anything with more,
 * or nested deeper, is refused before cJSON parses it. */
#define PACKAGE_MAX_VALUES 64
#define PACKAGE_MAX_DEPTH 4

/* ---- small helpers ----------------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int retryable(long status)
{
    return status == 429 || status == 500 || status == 502 || status == 503 ||
           status == 504;
}

/* ---- one chat completion ------------------------------------------------ */

/* Everything one call needs, resolved once. */
typedef struct call {
    veil_client *c;
    const char *url;
    const char *tier;
    const char *api_key;
    veil_cl_keyref *own;
    veil_cl_keyref *server;
    veil_chat_stats *stats;
    char **evidence; /* opts->evidence */
} call;

/* Backoff before retry number `attempt` (1-based): Retry-After when the
 * server sent one, else base * 2^(attempt-1), with the upper half jittered;
 * both capped. */
static unsigned backoff_ms(veil_client *c, unsigned attempt,
                           long retry_after_ms)
{
    unsigned cap = c->cfg.retry_max_ms;
    if (retry_after_ms >= 0)
        return retry_after_ms > (long)cap ? cap : (unsigned)retry_after_ms;
    uint64_t d = (uint64_t)c->cfg.retry_base_ms
                 << (attempt > 20 ? 20 : attempt - 1);
    if (d > cap)
        d = cap;
    uint32_t r = 0;
    veil_random(c->engine, (uint8_t *)&r, sizeof r);
    return (unsigned)(d / 2 + (d / 2 + 1) * (uint64_t)r / UINT32_MAX);
}

/* Refuses an answer: the one security message, and what was wrong with it
 * in the log (debug) and after the message. */
static veil_client_status refuse(call *k, const char *payload_id, veil_rc rc,
                                 const char *why, veil_client_error *err)
{
    veil_logf(&k->c->log, VEIL_LOG_DEBUG, "answer to %s refused: %s",
              payload_id, why);
    return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, rc, "%s (%s)",
                        VEIL_CLIENT_SECURITY_MESSAGE, why);
}

/* Refuses an answer without saying why after the message (what was wrong
 * goes to the debug log only). */
static veil_client_status refuse_quietly(call *k, const char *payload_id,
                                         veil_rc rc, const char *why,
                                         veil_client_error *err)
{
    veil_logf(&k->c->log, VEIL_LOG_DEBUG, "answer to %s refused: %s",
              payload_id, why);
    return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, rc, "%s",
                        VEIL_CLIENT_SECURITY_MESSAGE);
}

/* open_answer, step 1: the package opened and its plaintext parsed into
 * a JSON object whose _metadata, when present, is an object.  Before the
 * package is opened nothing in it is trusted: it is parsed only when it
 * is package-sized in values (its strings may be large). */
static veil_client_status open_package(call *k, const veil_cl_http_response *r,
                                       const char *payload_id, cJSON **out,
                                       veil_client_error *err)
{
    veil_secbuf *pt = NULL;
    *out = NULL;
    if (r->body == NULL ||
        !veil_cl_json_small(r->body, r->len, PACKAGE_MAX_VALUES,
                            PACKAGE_MAX_DEPTH))
        return refuse_quietly(k, payload_id, VEIL_E_ARG,
                              "not a package (too many values or too deep)",
                              err);
    veil_rc rc =
        veil_pkg_open(k->c->engine, k->own->key, r->body, r->len, &pt, NULL);
    if (rc != VEIL_OK)
        return refuse_quietly(k, payload_id, rc, veil_last_error()->message,
                              err);
    cJSON *tree = cJSON_ParseWithLength((const char *)veil_secbuf_data(pt),
                                        veil_secbuf_len(pt));
    veil_secbuf_free(pt);
    cJSON *md = cJSON_GetObjectItemCaseSensitive(tree, "_metadata");
    if (!cJSON_IsObject(tree) || (md != NULL && !cJSON_IsObject(md))) {
        veil_chat_response_free(tree);
        return refuse_quietly(k, payload_id, VEIL_E_DECRYPT,
                              "its plaintext is not a JSON object", err);
    }
    *out = tree;
    return VEIL_CLIENT_OK;
}

/* Step 2: no member twice where a reader looks (the answer, _metadata,
 * _metadata.tpm_attestation), and the payload ID inside the encryption,
 * if any, this request's.  A reader of the tree gets the first of two
 * members, a JSON parser elsewhere the last: neither may be the server's
 * choice.  With a long-lived client key an earlier answer still opens. */
static veil_client_status answer_members(call *k, const cJSON *tree,
                                         const char *payload_id,
                                         veil_client_error *err)
{
    const cJSON *md = cJSON_GetObjectItemCaseSensitive(tree, "_metadata");
    const char *dup = veil_cl_json_dup_key(tree);
    const char *where = "";
    char why[160];
    if (dup == NULL && (dup = veil_cl_json_dup_key(md)) != NULL)
        where = "_metadata.";
    if (dup == NULL &&
        (dup = veil_cl_json_dup_key(
             cJSON_GetObjectItemCaseSensitive(md, "tpm_attestation"))) != NULL)
        where = "_metadata.tpm_attestation.";
    if (dup != NULL) {
        snprintf(why, sizeof why, "the answer has the member \"%s%.40s\" twice",
                 where, dup);
        return refuse(k, payload_id, VEIL_E_VERIFY, why, err);
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(md, "payload_id");
    if (id != NULL &&
        (!cJSON_IsString(id) || strcmp(id->valuestring, payload_id) != 0))
        return refuse(k, payload_id, VEIL_E_VERIFY,
                      "the answer is for another payload ID than this "
                      "request's (a replayed answer?)",
                      err);
    return VEIL_CLIENT_OK;
}

/* Step 3: _metadata says what the client knows, not what the server
 * wrote: this payload ID, encrypted, with veil's algorithm.  Nothing from
 * outside the encryption (the package's "algorithm" and "processed_at")
 * reaches the answer. */
static int answer_metadata(cJSON *tree, const char *payload_id)
{
    cJSON *md = cJSON_GetObjectItemCaseSensitive(tree, "_metadata");
    if (md == NULL)
        md = cJSON_AddObjectToObject(tree, "_metadata");
    cJSON_DeleteItemFromObjectCaseSensitive(md, "payload_id");
    cJSON_DeleteItemFromObjectCaseSensitive(md, "is_encrypted");
    cJSON_DeleteItemFromObjectCaseSensitive(md, "encryption_algorithm");
    return md != NULL &&
           cJSON_AddStringToObject(md, "payload_id", payload_id) &&
           cJSON_AddTrueToObject(md, "is_encrypted") &&
           cJSON_AddStringToObject(md, "encryption_algorithm",
                                   VEIL_PKG_ALGORITHM);
}

/* Opens a 200 answer into the caller's tree and fills _metadata.  Any
 * failure is the one security error. */
static veil_client_status open_answer(call *k, const veil_cl_http_response *r,
                                      const char *payload_id, cJSON **out,
                                      veil_client_error *err)
{
    cJSON *tree;
    veil_client_status st = open_package(k, r, payload_id, &tree, err);
    if (st == VEIL_CLIENT_OK)
        st = answer_members(k, tree, payload_id, err);
    if (st == VEIL_CLIENT_OK && !answer_metadata(tree, payload_id))
        st = veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_NOMEM,
                          "out of memory");
    if (st != VEIL_CLIENT_OK) {
        veil_chat_response_free(tree);
        tree = NULL;
    }
    *out = tree;
    return st;
}

/* The header lines of one POST.  h_key and h_auth are malloc'd; the
 * Authorization line is wiped when they are freed. */
typedef struct post_headers {
    const char *lines[8]; /* NULL-ended */
    char h_id[64], h_tier[64];
    char *h_key, *h_auth;
    size_t auth_len;
} post_headers;

static void post_headers_free(post_headers *h)
{
    if (h->h_auth)
        veil_wipe(h->h_auth, h->auth_len);
    free(h->h_auth);
    free(h->h_key);
}

/* 0 when out of memory. */
static int post_headers_make(const call *k, const char *payload_id,
                             post_headers *h)
{
    int n = 0;
    size_t key_len = strlen(k->own->pem_header) + 16;
    memset(h, 0, sizeof *h);
    h->auth_len = k->api_key ? strlen(k->api_key) + 32 : 0;
    h->h_auth = h->auth_len ? malloc(h->auth_len) : NULL;
    h->h_key = malloc(key_len);
    if ((h->auth_len && h->h_auth == NULL) || h->h_key == NULL)
        return 0;
    snprintf(h->h_id, sizeof h->h_id, "X-Payload-ID: %s", payload_id);
    snprintf(h->h_key, key_len, "X-Public-Key: %s", k->own->pem_header);
    h->lines[n++] = "Content-Type: application/octet-stream";
    h->lines[n++] = "Accept: application/json";
    h->lines[n++] = "Expect:"; /* no 100-continue round trip */
    h->lines[n++] = h->h_id;
    h->lines[n++] = h->h_key;
    if (k->tier) {
        snprintf(h->h_tier, sizeof h->h_tier, "X-Security-Tier: %s", k->tier);
        h->lines[n++] = h->h_tier;
    }
    if (h->h_auth) {
        snprintf(h->h_auth, h->auth_len, "Authorization: Bearer %s",
                 k->api_key);
        h->lines[n++] = h->h_auth;
    }
    h->lines[n] = NULL;
    return 1;
}

/* Seals pt to the server key and posts it once.  *sent receives the
 * request body (ciphertext) as sent, or NULL; the caller frees it. */
static veil_client_status post_once(call *k, veil_secbuf *pt,
                                    char payload_id[37], char **sent,
                                    veil_cl_http_response *r,
                                    veil_client_error *err)
{
    veil_client *c = k->c;
    char *pkg = NULL, url[2048], shown[2048];
    post_headers h;
    veil_client_status st;
    *sent = NULL;
    uint64_t t0 = now_ns();
    veil_rc rc = veil_uuid4(c->engine, payload_id);
    if (rc == VEIL_OK)
        rc = veil_pkg_seal(c->engine, k->server->key, veil_secbuf_data(pt),
                           veil_secbuf_len(pt) - 1,
                           c->cfg.tag_mode == VEIL_CLIENT_TAG_APPENDED
                               ? VEIL_TAG_APPENDED
                               : VEIL_TAG_SEPARATE,
                           -1, &pkg);
    if (rc != VEIL_OK) {
        memset(r, 0, sizeof *r);
        return veil_cl_engine_fail(err, VEIL_CLIENT_E_SECURITY, rc,
                                   "sealing the request");
    }
    uint64_t t1 = now_ns();
    if (!post_headers_make(k, payload_id, &h)) {
        st = veil_cl_fail(err, VEIL_CLIENT_E_CONNECTION, 0, VEIL_E_NOMEM,
                          "out of memory");
        memset(r, 0, sizeof *r);
    } else {
        snprintf(url, sizeof url, "%s/v1/chat/secure_completion", k->url);
        veil_cl_redact_url(url, shown, sizeof shown);
        veil_logf(&c->log, VEIL_LOG_DEBUG, "POST %s payload %s (%zu bytes)",
                  shown, payload_id, strlen(pkg));
        st = veil_cl_transport_send(c->tx, url, h.lines, pkg, strlen(pkg), 0, r,
                                    err);
    }
    if (k->stats) {
        k->stats->encrypt_ns += t1 - t0;
        k->stats->network_ns += now_ns() - t1;
        k->stats->attempts++;
    }
    post_headers_free(&h);
    *sent = pkg;
    return st;
}

/* Logs each check made on an answer (debug). */
static void log_check(void *ctx, const char *check, int ok, const char *detail)
{
    const call *k = ctx;
    veil_logf(&k->c->log, VEIL_LOG_DEBUG, "answer check: %s %s: %s",
              ok ? "ok" : "FAIL", check, detail);
}

/* Verifies an opened answer (veil_cl_verify_answer) when there is
 * something to verify: a trust file, the maximum tier, or evidence to
 * record.  A failure wipes and drops the answer. */
static veil_client_status verify_answer(call *k, const veil_cl_http_response *r,
                                        const char *payload_id,
                                        const char *sent, cJSON **response,
                                        veil_client_error *err)
{
    veil_client *c = k->c;
    const char *tier = k->tier ? k->tier : "standard";
    int maximum = !strcmp(tier, "maximum");
    if (c->trust == NULL && !maximum && k->evidence == NULL)
        return VEIL_CLIENT_OK;
    const cJSON *md = cJSON_GetObjectItemCaseSensitive(*response, "_metadata");
    veil_cl_answer a = {
        .url = k->url,
        .payload_id = payload_id,
        .tier = tier,
        .request = sent,
        .request_len = strlen(sent),
        .response = r,
        .server_key_sha256 = k->server->fp,
        .tpm_attestation =
            cJSON_GetObjectItemCaseSensitive(md, "tpm_attestation"),
        .allow_foreign = c->cfg.allow_foreign_attestation,
    };
    veil_client_status st = veil_cl_verify_answer(
        c->engine, c->trust, &a, log_check, k, k->evidence, err);
    if (st != VEIL_CLIENT_OK) {
        veil_logf(&c->log, VEIL_LOG_DEBUG, "answer to %s refused: %s",
                  payload_id, err->detail);
        veil_chat_response_free(*response);
        *response = NULL;
        return st;
    }
    if (maximum && c->trust == NULL)
        veil_logf(&c->log, VEIL_LOG_WARN,
                  a.quote_checked
                      ? "answer %s: its TPM quote matches this request and "
                        "server key, but the attestation key is not enrolled, "
                        "so nothing shows it is a TPM's (set a trust file from "
                        "'veil attest enroll')"
                      : "answer %s: the maximum tier answer carries a TPM "
                        "attestation in another format than veil's; it was not "
                        "verified (accepted as foreign attestation is allowed)",
                  payload_id);
    return VEIL_CLIENT_OK;
}

/* A 200 answer opened and verified into *response. */
static veil_client_status take_answer(call *k, const veil_cl_http_response *r,
                                      const char *payload_id, const char *sent,
                                      cJSON **response, veil_client_error *err)
{
    uint64_t t = now_ns();
    veil_client_status st = open_answer(k, r, payload_id, response, err);
    if (st == VEIL_CLIENT_OK)
        st = verify_answer(k, r, payload_id, sent, response, err);
    if (k->stats) {
        k->stats->decrypt_ns += now_ns() - t;
        if (st == VEIL_CLIENT_OK)
            memcpy(k->stats->payload_id, payload_id, 37);
    }
    return st;
}

/* After a 400 that says the server could not decrypt: its key may have
 * rotated.  Refetches it: 1 when it changed (send again with it), else 0
 * and *st is what the caller hears (the 400, or the refusal of the new
 * key: pin, trust file, check). */
static int server_key_changed(call *k, veil_client_status *st,
                              veil_client_error *err)
{
    veil_client_error e2;
    veil_cl_keyref *fresh;
    uint64_t t = now_ns();
    veil_client_status got =
        veil_cl_server_key(k->c, k->url, k->server, &fresh, &e2);
    if (k->stats)
        k->stats->network_ns += now_ns() - t;
    if (got == VEIL_CLIENT_OK) {
        int changed = CRYPTO_memcmp(fresh->fp, k->server->fp, 32);
        veil_cl_keyref_put(k->server);
        k->server = fresh;
        if (changed) {
            veil_logf(&k->c->log, VEIL_LOG_INFO,
                      "server key changed; resending with the new key");
            return 1;
        }
    } else if (got == VEIL_CLIENT_E_SECURITY) {
        *err = e2;
        *st = got;
    }
    return 0;
}

/* Waits before retry number `attempt` (status 0: a network error). */
static void wait_retry(call *k, unsigned attempt, long status,
                       long retry_after_ms)
{
    veil_client *c = k->c;
    unsigned ms = backoff_ms(c, attempt, status ? retry_after_ms : -1);
    veil_logf(&c->log, VEIL_LOG_INFO, "retry %u of %u in %u ms after %s",
              attempt, c->cfg.max_retries, ms,
              status ? "an HTTP error" : "a network error");
    if (c->cfg.on_retry)
        c->cfg.on_retry(c->cfg.retry_ctx, attempt, (int)status, ms);
    uint64_t t = now_ns();
    sleep_ms(ms);
    if (k->stats)
        k->stats->network_ns += now_ns() - t;
}

/* Posts until an answer is taken or refused, with one key refetch and
 * the configured retries. */
static veil_client_status exchange(call *k, veil_secbuf *pt, cJSON **response,
                                   veil_client_error *err)
{
    int refetched = 0;
    for (unsigned attempt = 0;;) {
        char payload_id[37];
        char *sent = NULL;
        veil_cl_http_response r;
        veil_client_status st = post_once(k, pt, payload_id, &sent, &r, err);
        long status = st == VEIL_CLIENT_OK ? r.status : 0;
        if (status == 200)
            st = take_answer(k, &r, payload_id, sent, response, err);
        else if (st == VEIL_CLIENT_OK)
            st = veil_cl_http_fail(&r, err);
        free(sent);
        free(r.body);
        if (status == 200 || st == VEIL_CLIENT_E_SECURITY)
            return st; /* a TLS verification failure is never retried */
        if (status == 400 && !refetched &&
            strcasestr(err->detail, "decrypt") != NULL) {
            refetched = 1;
            if (server_key_changed(k, &st, err))
                continue;
            return st;
        }
        if (attempt >= k->c->cfg.max_retries ||
            !(st == VEIL_CLIENT_E_CONNECTION || retryable(status)))
            return st;
        wait_retry(k, ++attempt, status, r.retry_after_ms);
    }
}

/* veil_chat_create, step 1: the call's base URL (into url, no trailing
 * slash), tier and API key, from opts or the client, checked. */
static veil_client_status call_resolve(call *k, const veil_request_opts *opts,
                                       char url[2048], veil_client_error *err)
{
    veil_client *c = k->c;
    veil_client_status st;
    if (opts->evidence)
        *opts->evidence = NULL;
    k->evidence = opts->evidence;
    k->url = opts->base_url ? opts->base_url : c->base_url;
    k->tier = opts->security_tier ? opts->security_tier : c->tier;
    k->api_key = opts->api_key ? opts->api_key
                 : c->api_key  ? (const char *)veil_secbuf_data(c->api_key)
                               : NULL;
    if (k->api_key && (k->api_key[0] == '\0' || strpbrk(k->api_key, "\r\n")))
        return veil_cl_fail(err, VEIL_CLIENT_E_INVALID_REQUEST, 0, VEIL_E_ARG,
                            "the API key is empty or contains a line break");
    if (k->tier && !veil_tier_parse(k->tier))
        return veil_cl_fail(err, VEIL_CLIENT_E_INVALID_REQUEST, 0, VEIL_E_ARG,
                            "security tier must be standard, high or "
                            "maximum, not \"%.32s\"",
                            k->tier);
    if ((st = veil_cl_check_url(c, k->url, err)) != VEIL_CLIENT_OK)
        return st;
    if (snprintf(url, 2048, "%s", k->url) >= 2048 - 64)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "the base URL is too long");
    for (size_t n = strlen(url); n > 0 && url[n - 1] == '/';)
        url[--n] = '\0';
    k->url = url;
    if (c->trust && strcmp(url, veil_trust_url(c->trust)) != 0) {
        char a[512], b[512];
        veil_cl_redact_url(veil_trust_url(c->trust), a, sizeof a);
        veil_cl_redact_url(url, b, sizeof b);
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "the trust file is for %s, not %s", a, b);
    }
    return VEIL_CLIENT_OK;
}

/* Step 2: the request checked and serialised into secret memory. */
static veil_client_status call_plaintext(call *k, const cJSON *request,
                                         veil_secbuf **pt,
                                         veil_client_error *err)
{
    char why[256];
    if (!veil_cl_request_check(request, why, sizeof why))
        return veil_cl_fail(err, VEIL_CLIENT_E_INVALID_REQUEST, 0, VEIL_E_ARG,
                            "%s", why);
    uint64_t t0 = now_ns();
    veil_rc rc = veil_json_print_secret(request, VEIL_PKG_MAX_PLAINTEXT, pt);
    if (k->stats)
        k->stats->encrypt_ns += now_ns() - t0;
    if (rc == VEIL_E_BUFFER)
        return veil_cl_fail(err, VEIL_CLIENT_E_INVALID_REQUEST, 0, rc,
                            "the request is larger than %u MiB; nothing was "
                            "sent",
                            VEIL_PKG_MAX_PLAINTEXT >> 20);
    if (rc != VEIL_OK)
        return veil_cl_fail(err, VEIL_CLIENT_E_INVALID_REQUEST, 0, rc,
                            "the request could not be serialised");
    return VEIL_CLIENT_OK;
}

/* Step 3: our key and the server's.  A rotation (key generation) counts
 * as encrypting, a server key fetch as network. */
static veil_client_status call_keys(call *k, veil_client_error *err)
{
    uint64_t t0 = now_ns();
    veil_client_status st = veil_cl_own_key(k->c, &k->own, err);
    uint64_t t1 = now_ns();
    if (st == VEIL_CLIENT_OK)
        st = veil_cl_server_key(k->c, k->url, NULL, &k->server, err);
    if (k->stats) {
        k->stats->encrypt_ns += t1 - t0;
        k->stats->network_ns += now_ns() - t1;
    }
    return st;
}

veil_client_status veil_chat_create(veil_client *c, const cJSON *request,
                                    const veil_request_opts *opts,
                                    cJSON **response, veil_chat_stats *stats,
                                    veil_client_error *err)
{
    veil_request_opts none = {0};
    call k = {.c = c, .stats = stats};
    veil_secbuf *pt = NULL;
    char url[2048];
    veil_client_error local; /* the retry logic reads the detail */
    if (err == NULL)
        err = &local;
    memset(err, 0, sizeof *err);
    if (stats)
        memset(stats, 0, sizeof *stats);
    if (response == NULL)
        return veil_cl_fail(err, VEIL_CLIENT_E_INVALID_REQUEST, 0, VEIL_E_ARG,
                            "response must not be NULL");
    *response = NULL;
    veil_client_status st = veil_cl_disposed(c, err);
    if (st == VEIL_CLIENT_OK &&
        (st = call_resolve(&k, opts ? opts : &none, url, err)) ==
            VEIL_CLIENT_OK &&
        (st = call_plaintext(&k, request, &pt, err)) == VEIL_CLIENT_OK &&
        (st = call_keys(&k, err)) == VEIL_CLIENT_OK)
        st = exchange(&k, pt, response, err);
    veil_cl_keyref_put(k.own);
    veil_cl_keyref_put(k.server);
    veil_secbuf_free(pt);
    return st;
}
