/* One call, from request to decrypted and verified answer, with retries:
 * the request checked and serialised, the protocol chosen; over v1 sealed
 * to the server key and posted, the answer opened, its members checked
 * and verified (verify.c); over v2 handed to v2.c.  Also the v2 routes
 * beyond chat (embeddings, completions) and the model list.  Uses v2.c,
 * client.c (the client object), keys.c, verify.c and the bottom layer
 * (client_int.h); nothing calls back into it (docs/ARCHITECTURE.md). */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "backend.h"
#include "keys.h"
#include "package.h"
#include "tier.h"
#include "v2.h"
#include "verify.h"

/* A package has about a dozen values (docs/CLIENT.md): anything with more,
 * or nested deeper, is refused before cJSON parses it. */
#define PACKAGE_MAX_VALUES 64
#define PACKAGE_MAX_DEPTH 4

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
    char **evidence;   /* opts->evidence */
    const char *model; /* the request's "model" (chat), or NULL */
} call;

/* fmt into out through veil_cl_vline: one line, no control characters. */
static void clean_line(char *out, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void clean_line(char *out, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    veil_cl_vline(out, size, fmt, ap);
    va_end(ap);
}

/* The debug log line of a refused answer.  why may quote the answer (a
 * member name the server sent twice): cleaned as an error detail is. */
static void log_refusal(call *k, const char *payload_id, const char *why)
{
    char line[320];
    clean_line(line, sizeof line, "%s", why);
    veil_logf(&k->c->log, VEIL_LOG_DEBUG, "answer to %s refused: %s",
              payload_id, line);
}

/* Refuses an answer: the one security message, and what was wrong with it
 * in the log (debug) and after the message. */
static veil_client_status refuse(call *k, const char *payload_id, veil_rc rc,
                                 const char *why, veil_client_error *err)
{
    log_refusal(k, payload_id, why);
    return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, rc, "%s (%s)",
                        VEIL_CLIENT_SECURITY_MESSAGE, why);
}

/* Refuses an answer without saying why after the message (what was wrong
 * goes to the debug log only). */
static veil_client_status refuse_quietly(call *k, const char *payload_id,
                                         veil_rc rc, const char *why,
                                         veil_client_error *err)
{
    log_refusal(k, payload_id, why);
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
    /* only the client states what it verified (verify_answer) */
    cJSON_DeleteItemFromObjectCaseSensitive(md, "attested_backend");
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
    uint64_t t0 = veil_cl_now_ns();
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
    uint64_t t1 = veil_cl_now_ns();
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
        k->stats->network_ns += veil_cl_now_ns() - t1;
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

/* _metadata.attested_backend of an answer whose quote verified: the
 * backend statement the quote covers, as members (docs/CLIENT.md).  0: no
 * memory. */
static int attested_backend(cJSON *md, const cJSON *tpm)
{
    const char *text = cJSON_GetStringValue(
        cJSON_GetObjectItemCaseSensitive(tpm, "backend_statement"));
    veil_backend_info b;
    cJSON *o;
    if (text == NULL || veil_backend_parse(text, strlen(text), &b) != VEIL_OK)
        return 1; /* not reached: the quote check parsed it */
    return (o = cJSON_AddObjectToObject(md, "attested_backend")) != NULL &&
           cJSON_AddStringToObject(o, "model", b.model) &&
           cJSON_AddStringToObject(o, "upstream", b.upstream) &&
           cJSON_AddStringToObject(o, "transport",
                                   veil_backend_transport(b.kind)) &&
           cJSON_AddStringToObject(o, "location",
                                   veil_backend_location(b.kind));
}

/* Verifies an opened answer a (veil_cl_verify_answer) when there is
 * something to verify: a trust file, the maximum tier, or evidence to
 * record.  A failure wipes and drops the answer. */
static veil_client_status verify_answer(call *k, veil_cl_answer *a_in,
                                        const char *payload_id,
                                        cJSON **response,
                                        veil_client_error *err)
{
    veil_client *c = k->c;
    int maximum = !strcmp(a_in->tier, "maximum");
    if (c->trust == NULL && !maximum && k->evidence == NULL)
        return VEIL_CLIENT_OK;
    const cJSON *md = cJSON_GetObjectItemCaseSensitive(*response, "_metadata");
    veil_cl_answer a = *a_in;
    a.tpm_attestation = cJSON_GetObjectItemCaseSensitive(md, "tpm_attestation");
    a.model = k->model;
    veil_client_status st = veil_cl_verify_answer(
        c->engine, c->trust, &a, log_check, k, k->evidence, err);
    if (st == VEIL_CLIENT_OK && a.quote_checked &&
        !attested_backend((cJSON *)md, a.tpm_attestation))
        st = veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_NOMEM,
                          "out of memory");
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

/* A 200 answer verified and opened into *response: with a trust file its
 * signature is checked first, so that a forged answer never reaches the
 * client's key; the TPM quote, inside the answer, after opening. */
static veil_client_status take_answer(call *k, const veil_cl_http_response *r,
                                      const char *payload_id, const char *sent,
                                      cJSON **response, veil_client_error *err)
{
    uint64_t t = veil_cl_now_ns();
    veil_cl_answer a = {
        .url = k->url,
        .payload_id = payload_id,
        .tier = k->tier ? k->tier : "standard",
        .request = sent,
        .request_len = strlen(sent),
        .response = r,
        .server_key_sha256 = k->server->fp,
        .allow_foreign = k->c->cfg.allow_foreign_attestation,
    };
    veil_client_status st = veil_cl_verify_signature(k->c->engine, k->c->trust,
                                                     &a, log_check, k, err);
    if (st == VEIL_CLIENT_OK)
        st = open_answer(k, r, payload_id, response, err);
    if (st == VEIL_CLIENT_OK)
        st = verify_answer(k, &a, payload_id, response, err);
    if (k->stats) {
        k->stats->decrypt_ns += veil_cl_now_ns() - t;
        if (st == VEIL_CLIENT_OK) {
            memcpy(k->stats->payload_id, payload_id, 37);
            k->stats->protocol = 1;
        }
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
    uint64_t t = veil_cl_now_ns();
    veil_client_status got =
        veil_cl_server_key(k->c, k->url, k->server, &fresh, &e2);
    if (k->stats)
        k->stats->network_ns += veil_cl_now_ns() - t;
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
            !(st == VEIL_CLIENT_E_CONNECTION ||
              veil_cl_retry_worth(status, err)))
            return st;
        veil_cl_wait_retry(k->c, ++attempt, status, r.retry_after_ms, k->stats);
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
    if (c->relay_url && strcmp(url, c->base_url) != 0)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "the client posts through a relay, which "
                            "forwards to its own gateway: a request to "
                            "another base URL is refused; nothing was sent");
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
    uint64_t t0 = veil_cl_now_ns();
    veil_rc rc = veil_json_print_secret(request, VEIL_PKG_MAX_PLAINTEXT, pt);
    if (k->stats)
        k->stats->encrypt_ns += veil_cl_now_ns() - t0;
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
    uint64_t t0 = veil_cl_now_ns();
    veil_client_status st = veil_cl_own_key(k->c, &k->own, err);
    uint64_t t1 = veil_cl_now_ns();
    if (st == VEIL_CLIENT_OK)
        st = veil_cl_server_key(k->c, k->url, NULL, &k->server, err);
    if (k->stats) {
        k->stats->encrypt_ns += t1 - t0;
        k->stats->network_ns += veil_cl_now_ns() - t1;
    }
    return st;
}

/* Step 4: the protocol (auto asks the gateway).  Evidence is v1's (its
 * format holds v1 packages): auto takes v1 for it and v2 refuses it.  The
 * maximum tier goes either way: its quote is verified the same. */
static veil_client_status call_protocol(call *k, int *v2,
                                        veil_client_error *err)
{
    veil_client *c = k->c;
    *v2 = 0;
    if (k->evidence && c->cfg.protocol == VEIL_CLIENT_PROTOCOL_AUTO)
        return VEIL_CLIENT_OK;
    if (k->evidence && c->cfg.protocol == VEIL_CLIENT_PROTOCOL_V2)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "evidence is recorded for protocol v1 answers "
                            "only: use protocol v1 or auto, without a "
                            "relay");
    uint64_t t = veil_cl_now_ns();
    veil_client_status st = veil_cl_v2_pick(c, k->url, v2, err);
    if (k->stats)
        k->stats->network_ns += veil_cl_now_ns() - t;
    return st;
}

/* One inner request over v2 with the call's tier and API key; body: the
 * serialised request (NUL-terminated, not counted), or NULL.  The answer
 * to a request with a body (an inference) is verified as v1's
 * (verify_answer; its signature checked already, in v2.c): on maximum
 * its TPM quote, whose qualifying data binds the request identifier, this
 * inner request's content, the KEM key it was encapsulated to and the
 * backend statement (docs/ATTESTATION.md), with the same trust file. */
static veil_client_status call_v2(call *k, const char *method, const char *path,
                                  veil_secbuf *body, cJSON **response,
                                  veil_client_error *err)
{
    veil_cl_v2_seen seen;
    veil_cl_v2_call v = {
        .url = k->url,
        .method = method,
        .path = path,
        .tier = k->tier,
        .api_key = k->api_key,
        .body = body ? veil_secbuf_data(body) : NULL,
        .body_len = body ? veil_secbuf_len(body) - 1 : 0,
        .stats = k->stats,
        .seen = body ? &seen : NULL,
    };
    veil_client_status st = veil_cl_v2_send(k->c, &v, response, err);
    if (st != VEIL_CLIENT_OK || body == NULL)
        return st;
    veil_cl_answer a = {
        .url = k->url,
        .payload_id = seen.request_id,
        .tier = k->tier ? k->tier : "standard",
        .request = (const char *)v.body,
        .request_len = v.body_len,
        .response = &seen.headers,
        .server_key_sha256 = seen.key_sha256,
        .kem_key = 1,
        .allow_foreign = k->c->cfg.allow_foreign_attestation,
        .signature_checked = 1,
    };
    return verify_answer(k, &a, seen.request_id, response, err);
}

/* The start of every call: err and stats cleared, response checked,
 * the client alive, the call resolved. */
static veil_client_status call_begin(call *k, const veil_request_opts *opts,
                                     char url[2048], cJSON **response,
                                     veil_client_error *err)
{
    veil_request_opts none = {0};
    memset(err, 0, sizeof *err);
    if (k->stats)
        memset(k->stats, 0, sizeof *k->stats);
    if (response == NULL)
        return veil_cl_fail(err, VEIL_CLIENT_E_INVALID_REQUEST, 0, VEIL_E_ARG,
                            "response must not be NULL");
    *response = NULL;
    veil_client_status st = veil_cl_disposed(k->c, err);
    if (st == VEIL_CLIENT_OK)
        st = call_resolve(k, opts ? opts : &none, url, err);
    return st;
}

veil_client_status veil_chat_create(veil_client *c, const cJSON *request,
                                    const veil_request_opts *opts,
                                    cJSON **response, veil_chat_stats *stats,
                                    veil_client_error *err)
{
    call k = {.c = c, .stats = stats};
    veil_secbuf *pt = NULL;
    char url[2048];
    int v2 = 0;
    veil_client_error local; /* the retry logic reads the detail */
    if (err == NULL)
        err = &local;
    k.model = cJSON_GetStringValue(
        cJSON_GetObjectItemCaseSensitive(request, "model"));
    veil_client_status st = call_begin(&k, opts, url, response, err);
    if (st == VEIL_CLIENT_OK &&
        (st = call_plaintext(&k, request, &pt, err)) == VEIL_CLIENT_OK &&
        (st = call_protocol(&k, &v2, err)) == VEIL_CLIENT_OK) {
        if (v2)
            st = call_v2(&k, "POST", "/v1/chat/completions", pt, response, err);
        else if ((st = call_keys(&k, err)) == VEIL_CLIENT_OK)
            st = exchange(&k, pt, response, err);
    }
    veil_cl_keyref_put(k.own);
    veil_cl_keyref_put(k.server);
    veil_secbuf_free(pt);
    return st;
}

/* ---- the other routes (v2) --------------------------------------------- */

/* A request for a route other than chat: an object with a "model" string
 * and the member the route needs, serialised into secret memory. */
static veil_client_status route_plaintext(const cJSON *request,
                                          const char *needs, veil_secbuf **pt,
                                          veil_client_error *err)
{
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(request, "model");
    if (!cJSON_IsObject(request) || !cJSON_IsString(model) ||
        model->valuestring[0] == '\0')
        return veil_cl_fail(err, VEIL_CLIENT_E_INVALID_REQUEST, 0, VEIL_E_ARG,
                            "the request must be an object with a \"model\" "
                            "string");
    if (cJSON_GetObjectItemCaseSensitive(request, needs) == NULL)
        return veil_cl_fail(err, VEIL_CLIENT_E_INVALID_REQUEST, 0, VEIL_E_ARG,
                            "the request has no \"%s\"", needs);
    veil_rc rc = veil_json_print_secret(request, VEIL_PKG_MAX_PLAINTEXT, pt);
    if (rc != VEIL_OK)
        return veil_cl_fail(err, VEIL_CLIENT_E_INVALID_REQUEST, 0, rc,
                            rc == VEIL_E_BUFFER
                                ? "the request is larger than 10 MiB; "
                                  "nothing was sent"
                                : "the request could not be serialised");
    return VEIL_CLIENT_OK;
}

/* POST path over v2 only. */
static veil_client_status v2_only(veil_client *c, const char *path,
                                  const char *needs, const cJSON *request,
                                  const veil_request_opts *opts,
                                  cJSON **response, veil_chat_stats *stats,
                                  veil_client_error *err)
{
    call k = {.c = c, .stats = stats};
    veil_secbuf *pt = NULL;
    char url[2048];
    int v2 = 0;
    veil_client_error local;
    if (err == NULL)
        err = &local;
    k.model = cJSON_GetStringValue(
        cJSON_GetObjectItemCaseSensitive(request, "model"));
    veil_client_status st = call_begin(&k, opts, url, response, err);
    if (st == VEIL_CLIENT_OK && c->cfg.protocol == VEIL_CLIENT_PROTOCOL_V1)
        st = veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                          "%s needs protocol v2 (the client is set to v1, "
                          "which carries chat completions only)",
                          path);
    if (st == VEIL_CLIENT_OK)
        st = veil_cl_v2_pin_gap(c, k.url, err);
    if (st == VEIL_CLIENT_OK && k.evidence)
        st = veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                          "evidence is recorded for protocol v1 answers only");
    if (st == VEIL_CLIENT_OK &&
        (st = route_plaintext(request, needs, &pt, err)) == VEIL_CLIENT_OK &&
        (st = veil_cl_v2_pick(c, k.url, &v2, err)) == VEIL_CLIENT_OK) {
        if (v2 || c->cfg.protocol == VEIL_CLIENT_PROTOCOL_V2)
            st = call_v2(&k, "POST", path, pt, response, err);
        else
            st = veil_cl_fail(err, VEIL_CLIENT_E_API, 404, 0,
                              "%s needs protocol v2, and the gateway offers "
                              "no signed v2 key configuration",
                              path);
    }
    veil_secbuf_free(pt);
    return st;
}

veil_client_status veil_embeddings_create(veil_client *c, const cJSON *request,
                                          const veil_request_opts *opts,
                                          cJSON **response,
                                          veil_chat_stats *stats,
                                          veil_client_error *err)
{
    return v2_only(c, "/v1/embeddings", "input", request, opts, response, stats,
                   err);
}

veil_client_status veil_completions_create(veil_client *c, const cJSON *request,
                                           const veil_request_opts *opts,
                                           cJSON **response,
                                           veil_chat_stats *stats,
                                           veil_client_error *err)
{
    return v2_only(c, "/v1/completions", "prompt", request, opts, response,
                   stats, err);
}

/* The models list over v1: the gateway's public GET /v1/models. */
static veil_client_status models_v1(call *k, cJSON **response,
                                    veil_client_error *err)
{
    char full[2048];
    veil_cl_http_response r;
    uint64_t t = veil_cl_now_ns();
    snprintf(full, sizeof full, "%s/v1/models", k->url);
    veil_client_status st = veil_cl_transport_send(k->c->tx, full, NULL, NULL,
                                                   0, 1u << 20, &r, err);
    if (k->stats) {
        k->stats->network_ns += veil_cl_now_ns() - t;
        k->stats->attempts++;
    }
    if (st != VEIL_CLIENT_OK)
        return st;
    if (r.status != 200) {
        st = veil_cl_http_fail(&r, err);
        free(r.body);
        return st;
    }
    cJSON *j = r.body && veil_cl_json_small(r.body, r.len, 100000, 16)
                   ? cJSON_ParseWithLength(r.body, r.len)
                   : NULL;
    cJSON *md = cJSON_IsObject(j) && !veil_cl_json_dup_key(j) &&
                        !cJSON_GetObjectItemCaseSensitive(j, "_metadata")
                    ? cJSON_AddObjectToObject(j, "_metadata")
                    : NULL;
    free(r.body);
    if (md == NULL || !cJSON_AddStringToObject(md, "protocol", "v1") ||
        !cJSON_AddFalseToObject(md, "is_encrypted")) {
        cJSON_Delete(j);
        return veil_cl_fail(err, VEIL_CLIENT_E_API, 200, VEIL_E_ARG,
                            "the gateway's /v1/models is not a JSON object "
                            "(or has a member twice)");
    }
    if (k->stats)
        k->stats->protocol = 1;
    *response = j;
    return VEIL_CLIENT_OK;
}

veil_client_status veil_models_list(veil_client *c,
                                    const veil_request_opts *opts,
                                    cJSON **response, veil_chat_stats *stats,
                                    veil_client_error *err)
{
    call k = {.c = c, .stats = stats};
    char url[2048];
    int v2 = 0;
    veil_client_error local;
    if (err == NULL)
        err = &local;
    veil_client_status st = call_begin(&k, opts, url, response, err);
    if (st == VEIL_CLIENT_OK && k.evidence)
        st = veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                          "evidence is recorded for chat answers only");
    if (st == VEIL_CLIENT_OK &&
        (st = veil_cl_v2_pick(c, k.url, &v2, err)) == VEIL_CLIENT_OK)
        st = v2 ? call_v2(&k, "GET", "/v1/models", NULL, response, err)
                : models_v1(&k, response, err);
    return st;
}
