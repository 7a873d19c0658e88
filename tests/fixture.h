/* The protocol test server: an in-process stand-in for a NOMYO v1 server
 * (docs/PROTOCOL-NOMYO.md) with fault injection, on libmicrohttpd.
 *
 * It listens on 127.0.0.1 on an ephemeral port (optionally over TLS) and
 * serves
 *   GET  /pki/public_key             the server key's SPKI PEM (or raw text
 *                                    the test chose)
 *   POST /v1/chat/secure_completion  opens the request package with the
 *                                    server key and answers an OpenAI
 *                                    chat.completion that echoes the last
 *                                    user message, sealed to the client key
 *                                    from X-Public-Key in the tag convention
 *                                    the request used.
 *
 * Faults come from a FIFO of scripted replies (each POST consumes one; an
 * empty queue means a normal answer: see fx_reply for what a hostile
 * server can be made to do) or from the request's model name:
 *   fixture/status-NNN     HTTP NNN, {"detail": "fixture: status NNN"}
 *   fixture/slow-MS        wait MS ms, then answer normally
 *   fixture/tamper-MODE    MODE: ciphertext, tag, wrapped-key,
 *                          missing-field, missing-nonce, bad-base64,
 *                          not-json, nonce-size
 *   fixture/retry-after-S  429 with Retry-After: S, "fixture: slow down"
 *   fixture/hostile-KIND   a hostile answer, sealed as usual: KIND escapes
 *                          (terminal escapes, C1 controls and bidi
 *                          overrides in the content), badutf8 (invalid
 *                          UTF-8 in it), deep (400000 members 900 objects
 *                          deep), detail (a 500 whose detail has the
 *                          escapes)
 * A model name containing "reason" adds reasoning_content; a non-empty
 * "tools" array makes the answer a tool call.
 *
 * Every counter and record is thread-safe.  Plaintext is never logged.
 */
#ifndef VEIL_FIXTURE_H
#define VEIL_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#include "veil/engine.h"

typedef struct fx_server fx_server;

/* What a scripted reply does to a normal, sealed answer. */
typedef enum fx_tamper {
    FX_TAMPER_NONE = 0,
    FX_TAMPER_CIPHERTEXT,    /* one ciphertext byte flipped */
    FX_TAMPER_TAG,           /* one tag byte flipped (either convention) */
    FX_TAMPER_WRAPPED_KEY,   /* sealed to another key of the same size */
    FX_TAMPER_MISSING_FIELD, /* no "encrypted_aes_key" */
    FX_TAMPER_MISSING_NONCE, /* no "nonce" in "encrypted_payload" */
    FX_TAMPER_BAD_BASE64,    /* "ciphertext" is not base64 */
    FX_TAMPER_NOT_JSON,      /* the body is not JSON at all */
    FX_TAMPER_NONCE_SIZE,    /* an 8-byte nonce */
    FX_TAMPER_OUTER_FIELDS   /* the unencrypted "algorithm" and
                                "processed_at" changed (the answer still
                                opens) */
} fx_tamper;

/* "ciphertext", "tag", ... as in the model names above; NULL when out of
 * range.  fx_tamper_parse returns -1 for an unknown name. */
const char *fx_tamper_name(fx_tamper t);
int fx_tamper_parse(const char *name);

/* Tag convention of answers: as the request, or forced. */
#define FX_TAG_AS_REQUEST (-1)

/* One scripted reply.  Zero it, then set what you need (tag_mode must be
 * FX_TAG_AS_REQUEST, VEIL_TAG_SEPARATE or VEIL_TAG_APPENDED). */
typedef struct fx_reply {
    int status;              /* non-zero: this status and {"detail": ...},
                                no crypto; 0: a normal answer */
    const char *detail;      /* NULL: "fixture: status NNN" (copied) */
    const char *retry_after; /* Retry-After header value, NULL: none */
    unsigned delay_ms;       /* wait before answering */
    int tag_mode;            /* answer tag convention (FX_TAG_AS_REQUEST) */
    fx_tamper tamper;        /* applied to a normal answer */
    const char *raw_body;    /* sent as-is with `status` (200 when 0) */
    /* A hostile server's answer: this JSON text, with every "$PAYLOAD_ID"
     * replaced by the request's X-Payload-ID, is sealed to the client's
     * key instead of the normal answer (tamper still applies). */
    const char *plaintext;
    int replay; /* send the last 200 package this server sent, again */
    int drop;   /* read the request, then close the connection unanswered */
} fx_reply;

/* Initialises r: a normal answer, tag as the request. */
void fx_reply_init(fx_reply *r);

typedef struct fx_config {
    veil_engine *engine;      /* for every key operation (borrowed) */
    veil_key *server_key;     /* RSA with a private half (borrowed) */
    const char *api_key;      /* when set, a POST needs "Bearer <api_key>" */
    const char *tls_cert_pem; /* both set: serve https (PEM text) */
    const char *tls_key_pem;
    int verbose; /* one line per request on stderr (no payload) */
} fx_config;

/* Starts the server.  0 on success; -1 with a message on stderr. */
int fx_start(const fx_config *cfg, fx_server **out);
/* Cuts scripted delays short, stops the daemon, frees.  Accepts NULL. */
void fx_stop(fx_server *s);

unsigned short fx_port(const fx_server *s);
/* "http://127.0.0.1:PORT" or "https://127.0.0.1:PORT" (owned by s). */
const char *fx_url(const fx_server *s);

/* Appends a scripted reply (strings are copied).  0, or -1: no memory. */
int fx_push(fx_server *s, const fx_reply *r);
/* Shorthands: a status with a detail (NULL: the default detail). */
int fx_push_status(fx_server *s, int status, const char *detail);
int fx_push_tamper(fx_server *s, fx_tamper t);
/* Drops every reply still queued. */
void fx_clear_script(fx_server *s);
size_t fx_script_left(fx_server *s);

/* Key rotation: from now on serve this key and open requests with it
 * (requests sealed to the previous key then fail to open).  Borrowed: it
 * and every key used before must outlive the server. */
void fx_set_server_key(fx_server *s, veil_key *k);
/* Serves this text (copied) on GET /pki/public_key instead of the key's
 * PEM; NULL serves the key again.  Requests are still opened with the
 * server key. */
int fx_serve_pem(fx_server *s, const char *pem);
/* Changes the API key check (NULL: none).  0, or -1: no memory. */
int fx_set_api_key(fx_server *s, const char *api_key);

/* ---- a raw HTTP/1.1 server ------------------------------------------------ */

/* For what libmicrohttpd will not send (an interim 1xx response with
 * headers, say): a one-thread server on 127.0.0.1 that answers GET
 * /pki/public_key with key_pem and any other request with post_reply,
 * written to the socket byte for byte, then closes the connection. */
typedef struct fx_raw fx_raw;
int fx_raw_start(const char *key_pem, const char *post_reply, fx_raw **out);
/* The same, with `repeat` sent after post_reply again and again until the
 * client hangs up or `limit` bytes of it went: an endless answer (of
 * trailer fields, say). */
int fx_raw_start_endless(const char *key_pem, const char *post_reply,
                         const char *repeat, size_t limit, fx_raw **out);
const char *fx_raw_url(const fx_raw *r);
/* Requests answered so far. */
unsigned fx_raw_requests(fx_raw *r);
void fx_raw_stop(fx_raw *r);

/* ---- what the server saw ------------------------------------------------ */

typedef struct fx_request {
    char payload_id[64];     /* X-Payload-ID ("" when absent) */
    char security_tier[32];  /* X-Security-Tier ("" when absent) */
    char authorization[256]; /* Authorization ("" when absent) */
    char content_type[128];  /* Content-Type ("" when absent) */
    char model[128];         /* the request's model (when opened) */
    int opened;              /* the package opened with the server key */
    int tag_mode;            /* VEIL_TAG_* the request used, -1 unknown */
    uint64_t arrival_ns;     /* CLOCK_MONOTONIC when the body was complete */
    size_t body_len;
    int status; /* the HTTP status answered (0 while being answered) */
} fx_request;

unsigned fx_key_fetches(fx_server *s);
unsigned fx_posts(fx_server *s);
/* TCP connections accepted so far. */
unsigned fx_connections(fx_server *s);
/* The index-th POST (0 = first).  0, or -1 when there is none. */
int fx_request_get(fx_server *s, unsigned index, fx_request *out);
/* Zeroes the counters and forgets the records. */
void fx_reset_counters(fx_server *s);

#endif /* VEIL_FIXTURE_H */
