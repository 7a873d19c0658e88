/* veild internals: the pieces of the gateway and how they meet.  Not
 * installed.
 *
 *   veild.c     main: flags, config, start, reload (SIGHUP) and clean
 *               shutdown (signals: service/run.c)
 *   config.c    veild's rows of the settings table (service/settings.c
 *               reads them from a file and from flags), models
 *   server.c    the server: the route table over service/http.c (the one
 *               HTTP layer), admission (API key, rate), the small routes
 *   live.c      the live configuration a reload swaps and a request holds
 *   respond.c   gw_respond: a gw_rc answered over HTTP (status from rc.c)
 *   rc.c        the one map of gw_rc to an HTTP status and default detail
 *   v1.c        the NOMYO v1 exchange, as named steps returning gw_rc
 *   v2.c        protocol v2 (Oblivious HTTP) at /.well-known/ohttp-gateway
 *   keycache.c  clients' public keys: checked once, kept by use
 *   attest_routes.c  the attestation routes and GET /v1/signatures/ID
 *   (routes.h: what these share; not for the units below)
 *   upstream.c  the request scan and gw_upstream_call, which hands the
 *               request to upstream_http.c (the inference backend over
 *               libcurl) or to echo.c (the echo model)
 *   auth.c      API keys stored as SHA-256 hashes, constant-time compare
 *   strikes.c   the replay register (bounded, a file in state_dir) and
 *               the state directory
 *   ratelimit.c token buckets per API key (bounded)
 *   tpm.c       the TPM over tpm2-tss ESAPI: the device and session
 *               (tpm_ak.c: EK, attestation keys, credential activation;
 *               tpm_quote.c: PCRs, quotes, certification; tpm_int.h)
 *   signlog.c   answer signatures kept by payload ID for a retention period
 *   kemkeys.c   protocol v2's KEM keys: made, rotated, destroyed
 *   metrics.c   the Prometheus metrics veild keeps (over service/metrics.c)
 *   audit.c     the audit log: one JSON line per inference request
 *   observe.c   what a request came to: metrics, usage, the audit line;
 *               GET /metrics and its own listener (metrics_listen)
 *   rc.c        gw_rc_status: an outcome's HTTP status
 */
#ifndef VEIL_GATEWAY_H
#define VEIL_GATEWAY_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "json_scan.h"
#include "settings.h"
#include "tier.h"
#include "util.h"
#include "veil/engine.h"

/* The outcome of a gateway step.  Only gw_respond (respond.c) turns one
 * into an HTTP answer; the status of each is in rc.c's table, the one
 * place (gw_rc_status).  Below the HTTP layer nothing answers a client:
 * a step returns its outcome, with the reason in the caller's err buffer. */
typedef enum gw_rc {
    GW_OK = 0,
    GW_REFUSED,       /* 400: the request is wrong (the detail says how) */
    GW_UNAUTHORIZED,  /* 401: no API key, or an unknown one */
    GW_FORBIDDEN,     /* 403: not allowed (a model on a tier) */
    GW_NOT_FOUND,     /* 404 */
    GW_REPLAY,        /* 409: a request package seen before */
    GW_RATE_LIMITED,  /* 429, with Retry-After */
    GW_INTERNAL,      /* 500 */
    GW_UPSTREAM,      /* 502: the inference backend failed */
    GW_UNAVAILABLE,   /* 503: try again later (token, TPM, register full) */
    GW_NOMEM,         /* 503: out of memory */
    GW_TIMEOUT,       /* 504: the inference backend timed out */
    GW_UNDECRYPTABLE, /* 400: the one answer for every package that does
                         not open (VEIL_PKG_DECRYPT_DETAIL) */
    GW_MEDIA_TYPE,    /* 415: a body of another Content-Type */
    GW_OHTTP_KEY,     /* 400: v2's one answer for every request that does not
                         open (RFC 9458 5.3's key-configuration problem) */
    GW_BUSY,          /* 503 with Retry-After: a line of limited work (the
                         TPM's) is full, or its turn did not come in time */
    GW_METHOD         /* 405: a route that takes another method (with Allow) */
} gw_rc;

/* The HTTP status of an outcome (200 for GW_OK, 500 for an unknown one)
 * and its default detail.  rc.c. */
int gw_rc_status(gw_rc rc);
const char *gw_rc_detail(gw_rc rc);

/* Writes one formatted line to err (ignored when err is NULL or
 * err_size 0): service/settings.h's svc_put_err, under the gateway's name. */
#define gw_put_err svc_put_err

/* ---- configuration (config.c) ----------------------------------------- */

#define GW_MAX_MODELS 64
/* the tiers' bits: protocol/tier.h */
#define GW_TIER_STANDARD VEIL_TIER_STANDARD
#define GW_TIER_HIGH VEIL_TIER_HIGH
#define GW_TIER_MAXIMUM VEIL_TIER_MAXIMUM
#define GW_TIER_ALL VEIL_TIER_ALL

typedef struct gw_model {
    char *id;                /* model ID as clients name it */
    char *upstream;          /* base URL (".../v1"), unix:PATH or "echo" */
    char *upstream_key_file; /* file holding the upstream's API key, or NULL */
    unsigned tiers;          /* GW_TIER_* allowed */
    char *cache_salt_field;  /* request field isolating the backend's prompt
                                cache per API key ("cache_salt"), or NULL */
} gw_model;

typedef struct gw_config {
    char *listen_addr;        /* "127.0.0.1" */
    unsigned port;            /* 8443; 0: any free port (see port_file) */
    char *port_file;          /* write the bound port here (tests, scripts) */
    char *tls_cert, *tls_key; /* PEM files (the key: or a pkcs11: URI) */
    char *server_key; /* PKCS#11 URI, or "dir:PATH" (software, trying out) */
    char *server_key_next; /* the next one during a rotation, or NULL */
    char *pkcs11_module;
    char *pin_source; /* "file:...", "env:..." */
    char *api_keys;   /* file of "sha256:<hex> [name]" lines; NULL: no auth */
    char *operator_keys;     /* names in api_keys with operator rights: "a,b" */
    double rate;             /* requests per second per API key (1) */
    unsigned burst;          /* bucket size (2) */
    size_t body_limit;       /* bytes (16 MiB) */
    unsigned workers;        /* threads (4) */
    unsigned header_timeout; /* seconds to a complete header block (5) */
    size_t body_min_rate;    /* bytes/s a body averages after 2 s (16 KiB) */
    unsigned body_timeout;   /* seconds a body may take at most (120) */
    unsigned answer_timeout; /* seconds a client may take to read (60) */
    unsigned connections_per_address; /* open at once (16) */
    size_t body_memory;        /* body bytes held at once; 0: 2 x workers x
                                  body_limit */
    unsigned ipv6_prefix;      /* rate-limit key of an IPv6 client, bits (64) */
    unsigned shutdown_grace;   /* seconds for requests in flight (30) */
    char *state_dir;           /* what veild keeps across restarts */
    unsigned replay_window;    /* seconds (86400) */
    unsigned replay_capacity;  /* marks (4194304) */
    unsigned replay_sync;      /* seconds between write-backs (1) */
    unsigned upstream_timeout; /* seconds (300) */
    unsigned connect_timeout;  /* seconds (10) */
    char *log_level;           /* error, warn, info, debug */
    char *log_format;          /* text, json */
    /* answer signatures and attestation (docs/ATTESTATION.md) */
    char *signing_key; /* ECDSA P-256: PKCS#11 URI or "dir:PATH"; NULL: none */
    unsigned signature_retention; /* seconds (86400) */
    unsigned signature_capacity;  /* entries (65536) */
    int tpm;                      /* 1: attest with the TPM (0) */
    char *tpm_tcti;               /* NULL: the tss2 default */
    char *tpm_pcrs;               /* "sha256:0,7,10", canonical form */
    int tpm_ak_per_request;       /* (0) */
    int tpm_ak_rotate;            /* a new long-term AK at this start (0) */
    char *tpm_event_log;          /* NULL: the platform's (hardware TPM) */
    char *tpm_certify_key;        /* TSS2 PRIVATE KEY PEM of the server key */
    char *tpm_certify_key_auth;   /* its auth value's PIN source */
    int tpm_remote_https;    /* maximum may use an https:// backend on another
                                host (0: only echo, unix: and loopback) */
    unsigned tpm_workers;    /* TPM operations at once (1) */
    unsigned tpm_queue;      /* requests waiting for the TPM (8) */
    unsigned tpm_queue_wait; /* seconds one waits at most (10) */
    unsigned tpm_test_delay; /* test stand-in: ms added to each TPM
                                operation (0) */
    /* protocol v2 (docs/PROTOCOL-V2.md) */
    int v2;              /* 1: /.well-known/ohttp-gateway is served (1) */
    unsigned kem_rotate; /* seconds between KEM keys (3600) */
    unsigned kem_grace;  /* seconds a replaced KEM key still opens (300) */
    char *kem_keys;      /* where KEM keys are made: auto, software, tpm */
    int kem_x25519;      /* 1: each KEM key has an X25519 companion (0) */
    /* metrics and usage (docs/GATEWAY.md, "Metrics and the audit log") */
    char *metrics_listen;  /* a listener of GET /metrics only; NULL: none */
    unsigned metrics_port; /* its port (9464; 0: any, logged) */
    char *audit_log;       /* the audit log's path; NULL: none */
    int audit_fsync;       /* 1: fdatasync after every line (0) */
    gw_model models[GW_MAX_MODELS];
    size_t n_models;
} gw_config;

void gw_config_init(gw_config *cfg);
void gw_config_free(gw_config *cfg);
/* Reads a config file (format: docs/veild.conf.example).  GW_OK, or
 * GW_REFUSED with a line naming file, line and problem in err
 * ("veild.conf:12: unknown setting 'prot'").  Refuses a file writable by
 * others.  Load the file first, then apply flags (they override it), then
 * gw_config_check. */
gw_rc gw_config_load(gw_config *cfg, const char *path, char *err,
                     size_t err_size);
/* Sets one setting by name, as a flag --NAME VALUE does (and a file line
 * NAME = VALUE); '-' and '_' are the same and a leading "--" is allowed.
 * "model" takes "ID=UPSTREAM[,tiers=a+b][,key-file=F]" and adds a model.
 * 0, or -1 with "--NAME: problem" (or "unknown option '--NAME' ...") in
 * err; err may be NULL. */
int gw_config_set(gw_config *cfg, const char *name, const char *value,
                  char *err, size_t err_size);
/* Checks the whole config once everything is read: server_key set (and
 * no pin-value in it, nor in signing_key), pin_source and
 * tpm_certify_key_auth sources and not PINs, tpm_pcrs a selection,
 * tpm_certify_key only with tpm on (and its auth only with it), tls_cert
 * and tls_key both or neither, at least one model, no ID twice.  A model
 * allowing `maximum` without tpm is fine: such requests answer 503. */
int gw_config_check(const gw_config *cfg, char *err, size_t err_size);
/* Prints the settings table (for --help). */
void gw_config_help(FILE *out);
const gw_model *gw_config_model(const gw_config *cfg, const char *id);
/* The 403 detail of a tier that model m does not allow, naming the tiers
 * it does: "model 'M' is not allowed on the T tier (its tiers: ...)". */
void gw_model_tier_refusal(const gw_model *m, const char *tier, char *why,
                           size_t why_size);
/* 1 when a reload (SIGHUP) changes setting `name` in a running veild:
 * tls_cert, tls_key, api_keys, rate, burst, log_level, log_format,
 * upstream_timeout, connect_timeout, ipv6_prefix, shutdown_grace and the
 * models. */
int gw_config_live(const char *name);

/* Every file cfg names, checked at once (check.c): the API keys file (and
 * operator_keys), each model's upstream_key_file, the TLS certificate and
 * key as a pair, tpm_certify_key; with_secrets also reads the PIN sources
 * that name a file or variable (veild --check-config; a start leaves that
 * to the token login).  Each problem goes to report; returns how many.
 * No token is opened. */
unsigned gw_config_check_files(const gw_config *cfg, int with_secrets,
                               void (*report)(void *ctx, const char *problem),
                               void *ctx);
/* For a reload: every other setting that differs in next (just read and
 * checked) from now (running) gets now's value back, and report(ctx,
 * name) says so (it needs a restart; values are never passed: some are
 * key references); also tls_cert when TLS would be turned on or off.
 * The number kept, or -1 when out of memory. */
int gw_config_keep_fixed(const gw_config *now, gw_config *next,
                         void (*report)(void *ctx, const char *name),
                         void *ctx);

/* The configuration a request runs with: taken by reference when the
 * request starts and released when it is complete, so that a reload
 * (which swaps the server's current one, gw_server_reload) never changes
 * it under a request in flight.  It owns cfg and auth (auth.c; NULL: no
 * API keys). */
typedef struct gw_auth gw_auth;
typedef struct gw_next_key gw_next_key;
typedef struct gw_live {
    _Atomic unsigned refs;
    gw_config *cfg;
    gw_auth *auth;
    gw_next_key *next; /* server_key_next opened (nextkey.c); NULL: none */
    int borrowed; /* cfg, auth and next are the caller's (gw_live_borrow) */
} gw_live;
/* One reference, its own cfg initialised (defaults) and no auth yet;
 * NULL: no memory. */
gw_live *gw_live_new(void);
/* One reference to cfg and auth, which stay the caller's (they must
 * outlive it).  NULL: no memory. */
gw_live *gw_live_borrow(const gw_config *cfg, gw_auth *auth);
gw_live *gw_live_ref(gw_live *l);
/* The last release frees it (and cfg and auth, unless borrowed). */
void gw_live_release(gw_live *l);

/* ---- server-key rotation (nextkey.c, rotation.c) ---------------------- */

/* The next server key (server_key_next), opened: during a rotation it
 * opens the v1 requests sealed to it as the current key does, and GET
 * /pki/next_public_key serves it, so that clients can pin it before the
 * swap (docs/GATEWAY.md, "Rotating the server key"). */
struct gw_next_key {
    veil_key *key;
    char *pem;          /* its SPKI PEM */
    uint8_t sha256[32]; /* of its SPKI DER */
    char pin[72];       /* "sha256:<hex>", as clients pin it */
};
/* Opens ref on e (the engine of the current key: the same token login)
 * as the next server key: an RSA private key of 2048 bits or more, and
 * not current itself.  GW_OK with *out; else the reason in err, which
 * names server_key_next, and *exit_code (engine/exitcode.h: 3 not found,
 * 4 PIN, 2 the wrong kind of key). */
gw_rc gw_next_key_open(veil_engine *e, const char *ref, const veil_key *current,
                       gw_next_key **out, int *exit_code, char *err,
                       size_t err_size);
void gw_next_key_free(gw_next_key *n);

/* ---- API keys (auth.c) ------------------------------------------------ */

/* Loads "sha256:<64 hex> [name]" lines ('#' comments); the file must be
 * a regular file owned by root or by us and writable by neither group nor
 * others, and hold at least one key.  NULL with err filled on failure
 * ("FILE:LINE: ..." for a malformed line). */
gw_auth *gw_auth_load(const char *path, char *err, size_t err_size);
void gw_auth_free(gw_auth *a);
/* GW_OK when `key` hashes to a stored hash (every entry compared,
 * constant time), else GW_UNAUTHORIZED; the hash goes to id (used for
 * rate limiting). */
gw_rc gw_auth_check(const gw_auth *a, const char *key, uint8_t id[32]);
/* How many keys the file holds (for the startup log). */
size_t gw_auth_count(const gw_auth *a);
/* The name written after the hash of the key with this id, or NULL (no
 * such key, or no name).  For logs, after gw_auth_check said GW_OK; not
 * constant time. */
const char *gw_auth_name(const gw_auth *a, const uint8_t id[32]);
/* Gives operator rights (every signature at GET /v1/signatures/ID) to the
 * keys named in names ("alice,bob": names of the api_keys file).  0, or -1
 * with the reason in err (a name no key has, or no memory). */
int gw_auth_set_operators(gw_auth *a, const char *names, char *err,
                          size_t err_size);
/* 1 when id (gw_auth_check's) is an operator key's. */
int gw_auth_is_operator(const gw_auth *a, const uint8_t id[32]);

/* ---- replay register (strikes.c) -------------------------------------- */

typedef struct gw_strikes gw_strikes;
/* The register kept in dir/replay.db (made if missing; see strikes.c),
 * written back every sync_s seconds (1 or more).  capacity: marks held
 * (two per package), 2 to 2^24; it must match a file made before.  All
 * memory is allocated here.  NULL with err on bad arguments, no memory, or
 * a file that is damaged, of another capacity or version, not ours, or in
 * use; *conflict (may be NULL) is then 1 for a file that conflicts with
 * the settings (damaged, another capacity or version, not ours: a restart
 * would not cure it), else 0. */
gw_strikes *gw_strikes_open(const char *dir, unsigned window_s,
                            unsigned capacity, unsigned sync_s, int *conflict,
                            char *err, size_t err_size);
/* The same in memory only (forgotten at exit): for tests. */
gw_strikes *gw_strikes_new(unsigned window_s, unsigned capacity);
/* Frees it; a file register is written back first. */
void gw_strikes_free(gw_strikes *s);
typedef enum gw_strike {
    GW_STRIKE_NEW = 0,  /* recorded */
    GW_STRIKE_SEEN = 1, /* seen within the window: a replay */
    GW_STRIKE_FULL = 2  /* register full of live entries: refuse */
} gw_strike;
/* Records both marks of one package (payload ID hash, wrapped-key hash)
 * atomically: SEEN when either was recorded at most window_s seconds
 * before now, and then records nothing; FULL when no room is left after
 * dropping expired marks (answer 503; also on an internal failure). */
gw_strike gw_strikes_add(gw_strikes *s, const uint8_t a[32],
                         const uint8_t b[32], time_t now);
/* Memory held (the mapping and the index), bytes: constant after
 * gw_strikes_open. */
size_t gw_strikes_bytes(const gw_strikes *s);
/* Marks held now (expired ones go at the next add) and the capacity. */
void gw_strikes_usage(gw_strikes *s, unsigned *held, unsigned *capacity);

/* ---- the state directory (strikes.c) ---------------------------------- */

/* Makes dir (0700) when missing, and checks that it is a directory of ours
 * that nobody else may write.  0, or -1 with err. */
int gw_state_dir(const char *dir, char *err, size_t err_size);
/* The 32-byte secret in dir/name, made (random, 0600) when missing.  0, or
 * -1 with err. */
int gw_state_secret(const char *dir, const char *name, uint8_t out[32],
                    char *err, size_t err_size);

/* ---- rate limits (ratelimit.c) ---------------------------------------- */

typedef struct gw_rate gw_rate;
/* At most max_keys buckets (1 to 2^24), allocated here; when all are in
 * use, the one idle longest is reused.  NULL on bad arguments. */
gw_rate *gw_rate_new(double per_second, unsigned burst, unsigned max_keys);
/* New limits for every bucket (a reload); the buckets keep their tokens
 * (at most the new burst from their next request on).  0, or -1 on bad
 * arguments. */
int gw_rate_set(gw_rate *r, double per_second, unsigned burst);
void gw_rate_free(gw_rate *r);
/* GW_OK when a request from `id` may go now; else GW_RATE_LIMITED and
 * *retry_after_s says when one will (whole seconds, at least 1). */
gw_rc gw_rate_take(gw_rate *r, const uint8_t id[32], double now,
                   unsigned *retry_after_s);

/* The bucket id of a client without an API key: SHA-256 of its IPv4
 * address, or of the first ipv6_prefix bits of its IPv6 address (the rest
 * zero: one host may hold a whole /64); an IPv4-mapped IPv6 address counts
 * as its IPv4 address.  32 zero bytes for another family or NULL. */
struct sockaddr;
void gw_rate_address_id(const struct sockaddr *sa, unsigned ipv6_prefix,
                        uint8_t id[32]);

/* ---- upstream (upstream.c) -------------------------------------------- */

/* What the gateway reads of a decrypted request: one scan of its text
 * (protocol/json_scan.h), no tree. */
typedef struct gw_request {
    long model_len;  /* -1: no "model" string (or one over 255 bytes) */
    char model[256]; /* its value, unescaped */
    int stream;      /* "stream" is true */
    int has_stream_options, has_messages;
    veil_json_member m_stream, m_stream_options, m_messages;
    /* by model (index in cfg->models): the member named by its
     * cache_salt_field, when the request has one */
    int has_salt[GW_MAX_MODELS];
    veil_json_member m_salt[GW_MAX_MODELS];
    size_t close;   /* offset of the object's '}' */
    size_t members; /* how many it has */
} gw_request;

/* Scans a decrypted request: one JSON object (RFC 8259), no key twice, no
 * key that is "model" or "stream" in another case (backends differ on
 * which of two they take, and some match names in any case: the gateway
 * forwards only what it checked).  0, or -1 with the reason in why (the
 * client's 400). */
int gw_request_scan(const gw_config *cfg, const char *text, size_t len,
                    gw_request *out, char *why, size_t why_size);
/* (cfg may be NULL: no salt fields are looked for.) */

typedef struct gw_upstream_result {
    char *body; /* the answer's JSON (secret: the caller wipes and
                   frees it) */
    size_t len;
    /* the body is one JSON object with no key twice; where its
     * "_metadata" member (the backend's: never passed on) and its '}' are */
    int has_metadata;
    veil_json_member metadata;
    size_t close, members;
} gw_upstream_result;

/* The token counts of an OpenAI-style answer's top-level "usage" object
 * (prompt_tokens, completion_tokens: -1 each when absent, or not a whole
 * number below 2^53), read without a tree and without touching the
 * rest of the answer (scan.c).  0 when the answer is one JSON object with
 * a "usage" object, else -1 (both -1). */
int gw_usage_read(const char *body, size_t len, long long *prompt,
                  long long *completion);

/* What an inference request asks of the backend: the route, and so the
 * backend's path under the model's base URL (PROTOCOL-V2.md 5.3). */
typedef enum gw_infer {
    GW_INFER_CHAT,        /* POST <base>/chat/completions */
    GW_INFER_COMPLETIONS, /* POST <base>/completions */
    GW_INFER_EMBEDDINGS,  /* POST <base>/embeddings */
} gw_infer;

/* Sends the plaintext request (scanned into rq) for route to the model's
 * upstream (upstream_http.c), or answers it with the echo model (echo.c).
 * The request goes byte for byte as it came, but for "stream": true (sent
 * as false, without "stream_options") and, when the model has a
 * cache_salt_field and salt is not NULL, that field set to salt.  GW_OK
 * with the answer in out; else the outcome, with the detail text for the
 * client in err (one line; never the prompt):
 *   GW_REFUSED      the backend answered 4xx (err: its message, at most
 *                   300 bytes), or a request the echo model cannot take;
 *   GW_UNAVAILABLE  unreachable, or busy (429);
 *   GW_TIMEOUT      no answer within upstream_timeout;
 *   GW_UPSTREAM     5xx, another status, an answer too large or not a
 *                   JSON object with unique keys;
 *   GW_NOMEM, GW_INTERNAL (a key file that cannot be read among them).
 * Log lines (model, statuses and sizes) go to log (NULL: none). */
gw_rc gw_upstream_call(const gw_config *cfg, const gw_model *m, gw_infer route,
                       const char *request, size_t len, const gw_request *rq,
                       const char *salt, const veil_logger *log,
                       gw_upstream_result *out, char *err, size_t err_size);
/* Answers an echo request (a chat.completion repeating the last user
 * message); NULL when it is not one.  Also used by the tests. */
char *gw_echo_answer(const char *request, size_t len);
/* 1 when the upstream answers (for /healthz). */
int gw_upstream_alive(const gw_config *cfg, const gw_model *m,
                      const veil_logger *log);
/* Releases the upstream connection pool (at shutdown). */
void gw_upstream_cleanup(void);

/* The backend statement of model m for a maximum answer
 * (protocol/backend.h) into out (VEIL_BACKEND_STATEMENT_MAX bytes
 * suffice): GW_OK when its backend is on this host (echo, unix:,
 * loopback) or https:// elsewhere with tpm_remote_https on; else
 * GW_FORBIDDEN with the client's detail in why (backend_stmt.c). */
gw_rc gw_backend_statement(const gw_config *cfg, const gw_model *m, char *out,
                           size_t size, char *why, size_t why_size);
/* m's tiers as GET /v1/models shows them: without maximum when
 * gw_backend_statement refuses it. */
unsigned gw_model_tiers(const gw_config *cfg, const gw_model *m);

/* ---- the TPM (tpm.c) -------------------------------------------------- */

/* Formats on the wire: docs/ATTESTATION.md and protocol/evidence.h.  All
 * TPM structures are base64 of their marshaled form. */
typedef struct gw_tpm gw_tpm;

typedef struct gw_tpm_options {
    const char *tcti;   /* tss2 TCTI string ("device:/dev/tpmrm0",
                           "tabrmd:bus_type=session", "swtpm:port=2321");
                           NULL: the tss2 default */
    const char *pcrs;   /* "sha256:0,7,10" */
    int ak_per_request; /* a fresh AK for every answer, certified by the
                           long-term AK */
    /* The long-term AK is kept across restarts in state_dir/tpm-ak (NULL:
     * a new AK at every start); ak_rotate: make a new one at this start,
     * certified by the kept one (the hand-over in reports). */
    const char *state_dir;
    int ak_rotate;
    /* Optional: the gateway's encryption key as a TPM object, so reports
     * and answers carry a TPM2_Certify of it.  tss2_key: a "TSS2 PRIVATE
     * KEY" PEM (tpm2_ptool export --format=pem); its auth value is read
     * from tss2_key_auth (a veil PIN source: "file:PATH", "env:NAME").
     * Its public key must be the one in encryption_spki. */
    const char *tss2_key;
    const char *tss2_key_auth;
    /* The TCG event log reports carry: a file read at start-up; NULL:
     * the platform's securityfs log, with a hardware TPM only. */
    const char *event_log;
    const uint8_t *encryption_spki; /* the gateway key's SPKI DER */
    size_t encryption_spki_len;
    /* A test stand-in for a slow hardware TPM: every quote, report and
     * activation holds the TPM this many ms longer (0: never, as in
     * production). */
    unsigned test_delay_ms;
    veil_log_fn log;
    void *log_ctx;
    veil_log_level log_level;
} gw_tpm_options;

/* Connects to the TPM, makes (or reads) the EK, reads the EK certificate
 * from NV (RSA, 0x01c00002: the one for this EK; absent is not an error),
 * creates the attestation key (restricted ECDSA P-256 signing primary in
 * the endorsement hierarchy) and checks the PCR selection is readable.
 * GW_OK with the TPM in *out; else *out is NULL and err says why ("TPM:
 * ..."): GW_REFUSED for options that cannot work (none, a bad PCR
 * selection), GW_UNAVAILABLE when the TPM cannot be reached or used,
 * GW_NOMEM, GW_INTERNAL. */
gw_rc gw_tpm_open(const gw_tpm_options *opt, gw_tpm **out, char *err,
                  size_t err_size);
void gw_tpm_free(gw_tpm *t);

/* 1 when the TPM says it is a software TPM (swtpm, the IBM simulator):
 * its evidence proves nothing about the machine. */
int gw_tpm_is_software(const gw_tpm *t);
/* "IBM SW TPM firmware 1.59" or similar, for the start-up log. */
const char *gw_tpm_describe(const gw_tpm *t);

/* Quotes the PCR selection with `qualifying` as extraData and returns the
 * NOMYO-shaped object that goes in _metadata.tpm_attestation:
 *   is_available, format, pcr_banks, pcr_values, aik_pubkey_b64,
 *   aik_name, quote_b64, signature_b64, qualifying_data, software_tpm,
 *   and, when ak_per_request, aik_certify {attest_b64, signature_b64}
 *   (the per-request AK certified by the long-term AK, same qualifying
 *   data); when an encryption key object was given and certify_key,
 *   key_certify likewise (else null: v2's requests do not go to that key).
 * Thread-safe (one TPM context behind a lock).  NULL with err. */
cJSON *gw_tpm_quote(gw_tpm *t, const uint8_t qualifying[32], int certify_key,
                    char *err, size_t err_size);

/* Adds the report fields to `report` (docs/ATTESTATION.md): tpm {...},
 * ek_pubkey_b64, ek_spki_b64, ek_cert_b64 (or null), aik_pubkey_b64,
 * aik_name, pcr_banks, pcr_values, quote_b64, signature_b64,
 * qualifying_data, key_certify (or null), event_log_b64 (or null).  The
 * quote is by the long-term AK.  0, or -1 with err. */
int gw_tpm_report(gw_tpm *t, const uint8_t qualifying[32], cJSON *report,
                  char *err, size_t err_size);

/* TPM2_ActivateCredential of a credential made for the long-term AK's
 * name under the EK: blob is a marshaled TPM2B_ID_OBJECT, enc_secret a
 * TPM2B_ENCRYPTED_SECRET.  The recovered secret (at most 64 bytes) goes
 * to out.  GW_OK; GW_REFUSED when the TPM refused the credential (not
 * for this AK or EK, malformed, or tampered); GW_UNAVAILABLE with err on a
 * TPM failure. */
gw_rc gw_tpm_activate(gw_tpm *t, const uint8_t *blob, size_t blob_len,
                      const uint8_t *enc_secret, size_t enc_len,
                      uint8_t out[64], size_t *out_len, char *err,
                      size_t err_size);

/* (tpm_kem.c) Lends t's ESYS context and lock to e's tpm2 provider, so
 * that KEM keys made with "tpm2:" are objects of this connection
 * (engine/tpm2_hook.h); t NULL withdraws it (before gw_tpm_free, with no
 * tpm2 key left).  Single-threaded: at start and at exit. */
void gw_tpm_lend(gw_tpm *t, veil_engine *e);
/* TPM2_Certify of the KEM key `kem` (made with "tpm2:" in the lent
 * context) by the long-term AK, qualifying data
 * veil_ev_kem_certify_qualifying(key_id, pk): the JSON of
 * docs/PROTOCOL-V2.md 4.4 (key_id, certify_info_b64, signature_b64,
 * public_b64, ak_name_hex; malloc'd) in *json.  GW_OK, GW_NOMEM, or
 * GW_INTERNAL with err. */
gw_rc gw_tpm_certify_kem(gw_tpm *t, const veil_key *kem, uint8_t key_id,
                         const uint8_t *pk, size_t pk_len, char **json,
                         char *err, size_t err_size);

/* ---- answer signatures kept by payload ID (signlog.c) ----------------- */

typedef struct gw_signlog gw_signlog;
/* Keeps at most `capacity` entries for `retention_s` seconds; the oldest
 * goes first when full.  NULL on bad arguments or no memory. */
gw_signlog *gw_signlog_new(unsigned retention_s, unsigned capacity);
void gw_signlog_free(gw_signlog *l);
/* Stores a copy of `json` (the GET /v1/signatures/ID body) under the
 * payload ID, for owner (32 bytes: the SHA-256 of the API key that made
 * the request; NULL: anyone); a live entry for the same ID is kept, not
 * replaced.  0, or -1 on no memory or a body over 4 KiB. */
int gw_signlog_put(gw_signlog *l, const char *payload_id, const char *json,
                   const uint8_t *owner, time_t now);
/* A malloc'd copy of the stored body, or NULL when unknown, expired, or
 * owned by another than who (32 bytes; NULL: whoever asks, as for an
 * operator): a caller cannot tell another's entry from none. */
char *gw_signlog_get(gw_signlog *l, const char *payload_id, const uint8_t *who,
                     time_t now);

/* ---- protocol v2's KEM keys (kemkeys.c) ------------------------------- */

/* The set of KEM keys (DHKEM(P-256), docs/PROTOCOL-V2.md 4.2): the
 * current one, listed, and the one it replaced, accepted for the grace
 * period and then destroyed in its provider.  A thread of its own rotates
 * and destroys on time, whether requests come or not.  With x25519 each
 * has a DHKEM(X25519) companion made in software (kem_x25519 = on), its
 * key ID the P-256 key's ^ 0x80, listed after it, opening requests and
 * destroyed on the same schedule.  Thread-safe. */
typedef struct gw_kem gw_kem;
struct veil_ohttp_ctx;

/* Makes the first key where the server key lives (`where`: its reference)
 * when that provider has VEIL_CAP_ECDH, in software otherwise (the log
 * says which), as a session object where the token allows it; `where`
 * "software": in software.  x25519: companions too, refused (NULL with
 * err) when the keys would be in a token.  NULL with err. */
gw_kem *gw_kem_open(veil_engine *e, const char *where, int x25519,
                    unsigned rotate_s, unsigned grace_s, const veil_logger *log,
                    char *err, size_t err_size);
/* 1 when gw_kem_open would make the keys in the token of `where` (a
 * PKCS#11 reference whose token derives, VEIL_CAP_ECDH). */
int gw_kem_token_derives(veil_engine *e, const char *where);
/* The same with every key a TPM object (the engine's tpm2 provider in the
 * context t lent it, gw_tpm_lend), certified by t's long-term AK when it
 * is made (gw_kem_certify) and flushed at destruction (kem_keys = tpm). */
gw_kem *gw_kem_open_tpm(veil_engine *e, gw_tpm *t, unsigned rotate_s,
                        unsigned grace_s, const veil_logger *log, char *err,
                        size_t err_size);
/* GET /v2/keys/certify?key_id=N: the certification of KEM key N (current
 * or in grace) made with it, a malloc'd JSON copy in *json.  GW_OK;
 * GW_NOT_FOUND for a key ID that names no key; GW_UNAVAILABLE when the
 * keys are not TPM objects (kem_keys is not tpm); GW_NOMEM. */
gw_rc gw_kem_certify(gw_kem *k, unsigned key_id, char **json);
/* Stops the thread and destroys every key. */
void gw_kem_free(gw_kem *k);
/* "token", "software" or "tpm": where the keys are made. */
const char *gw_kem_where(const gw_kem *k);
/* The application/ohttp-keys body (the current key, then its X25519
 * companion if any; malloc'd) and when
 * the current key stops being listed (*rotate_at) and stops opening
 * (*not_after).  GW_OK or GW_NOMEM. */
gw_rc gw_kem_keys(gw_kem *k, uint8_t **body, size_t *len, time_t *rotate_at,
                  time_t *not_after);
/* Opens a message/ohttp-req body with the key its header names (current,
 * or in grace): the binary HTTP request in *req and the context for the
 * answer in *ctx.  GW_OK; GW_UNDECRYPTABLE for every failure that is the
 * request's (malformed, unknown or retired key ID, another suite, bad enc
 * or ciphertext); GW_UNAVAILABLE when the provider failed (err says how);
 * GW_NOMEM. */
gw_rc gw_kem_open_request(gw_kem *k, const uint8_t *in, size_t len,
                          veil_secbuf **req, struct veil_ohttp_ctx **ctx,
                          char *err, size_t err_size);

/* ---- metrics (metrics.c) ---------------------------------------------- */

/* The families veild exposes at GET /metrics (docs/GATEWAY.md lists them
 * with their labels).  Every label value comes from the configuration or
 * from constants: route paths of the route table, model IDs, API key
 * names of the api_keys file, provider and operation names.  Never a
 * payload ID, an address or a key.  Every function accepts m NULL (no
 * metrics: nothing done).  Thread-safe. */
typedef struct gw_metrics gw_metrics;
gw_metrics *gw_metrics_new(void);
void gw_metrics_free(gw_metrics *m);
/* The engine's observer (veil_engine_set_observer; ctx: a gw_metrics). */
void gw_metrics_engine_op(void *ctx, const char *provider,
                          const char *operation, double seconds, veil_rc rc);
/* A request over: its route (a route-table path; NULL: none matched),
 * method, status (0: none answered), tier and model (NULL: not known). */
void gw_metrics_request(gw_metrics *m, const char *route, const char *method,
                        int status, const char *tier, const char *model,
                        double seconds);
/* An inference request's usage, by API key name (NULL: no API keys) and
 * model; tokens < 0: not reported by the backend. */
void gw_metrics_usage(gw_metrics *m, const char *key, const char *model,
                      long long prompt_tokens, long long completion_tokens);
/* An upstream exchange of model (its outcome) and a TPM quote (what:
 * "answer" or "report"), with the time taken. */
void gw_metrics_upstream(gw_metrics *m, const char *model, gw_rc rc,
                         double seconds);
void gw_metrics_quote(gw_metrics *m, const char *what, int ok, double seconds);
/* The gauges read at a scrape. */
typedef struct gw_metrics_now {
    unsigned slots_busy, slots_total, slots_waiting;
    unsigned replay_held, replay_capacity;
} gw_metrics_now;
/* The exposition (text format 0.0.4), malloc'd, its length in *len;
 * NULL: no memory. */
char *gw_metrics_render(gw_metrics *m, const gw_metrics_now *now, size_t *len);

/* ---- the audit log (audit.c) ------------------------------------------ */

/* One line of JSON per finished inference request, appended (O_APPEND:
 * lines of parallel requests never mix); no prompt, no answer, no key.
 * Thread-safe. */
typedef struct gw_audit gw_audit;
typedef struct gw_audit_line {
    const char *key;   /* the API key's name; NULL: none (JSON null) */
    const char *model; /* NULL: none */
    const char *tier;
    const char *route;    /* the route-table path */
    const char *protocol; /* "v1", "v2" */
    int status;           /* what the client got; 0: no answer */
    long long prompt_tokens, completion_tokens; /* < 0: null */
    const char *payload_sha256; /* hex SHA-256 of the payload ID, or NULL */
    double seconds;
} gw_audit_line;
/* Opens (makes, 0600) path for appending; fsync_each: fdatasync after
 * every line.  GW_OK, or GW_REFUSED with err naming the file. */
gw_rc gw_audit_open(const char *path, int fsync_each, gw_audit **out, char *err,
                    size_t err_size);
void gw_audit_free(gw_audit *a);
/* Opens the path again (a SIGHUP, after a log rotation moved the file);
 * on failure the old file stays in use.  0, or -1 with err. */
int gw_audit_reopen(gw_audit *a, char *err, size_t err_size);
/* Appends one line.  0, or -1 (errno: the write failed; the line is
 * lost, and the caller logs it). */
int gw_audit_write(gw_audit *a, const gw_audit_line *l);

/* ---- the server (server.c over service/http.c) ------------------------ */

typedef struct gw_server gw_server;

/* What the server needs, made by veild.c; borrowed for the server's life. */
typedef struct gw_deps {
    /* the configuration it starts with: the settings a reload never
     * changes are read here; the others through gw_req_live (routes.h),
     * which starts as this and auth, borrowed */
    const gw_config *cfg;
    veil_engine *engine;
    veil_key *server_key;         /* RSA private key (token or software) */
    gw_next_key *server_key_next; /* NULL: none (a reload may set one) */
    gw_auth *auth;                /* NULL: no authentication */
    gw_strikes *strikes;
    gw_rate *rate;
    /* Answer signatures: the ECDSA P-256 private key (NULL: answers are
     * not signed) and the store behind GET /v1/signatures/ID (NULL with
     * no signing key). */
    veil_key *signing_key;
    gw_signlog *signlog;
    /* SHA-256 of each key's SPKI DER (the signing key's: 32 zero bytes
     * when there is none), as the evidence formats use them. */
    uint8_t encryption_key_sha256[32];
    uint8_t signing_key_sha256[32];
    gw_tpm *tpm; /* NULL: no TPM (maximum and the attestation routes: 503) */
    gw_kem *kem; /* NULL: protocol v2 is off */
    gw_metrics *metrics; /* NULL: no metrics (GET /metrics answers 404) */
    gw_audit *audit;     /* NULL: no audit log */
    veil_log_fn log;
    void *log_ctx;
    veil_log_level log_level;
    veil_log_fields_fn log_fields; /* optional: lines with their fields */
    /* 1: no listener; requests come only through svc_http_inject on
     * gw_server_http (the fuzzing harness) */
    int no_listen;
} gw_deps;

/* Starts listening (the bound port is gw_server_port).  NULL with err. */
gw_server *gw_server_start(const gw_deps *deps, char *err, size_t err_size);
unsigned gw_server_port(const gw_server *s);
/* The server's HTTP layer, to run a request through it without a socket
 * (svc_http_inject, service/http.h). */
struct svc_http *gw_server_http(gw_server *s);
/* Stops accepting, lets requests in flight finish (at most grace_s
 * seconds), then stops.  Returns the number of requests cut off. */
unsigned gw_server_stop(gw_server *s, unsigned grace_s);
/* A reference to the live configuration new requests get (release it). */
gw_live *gw_server_live(gw_server *s);
/* A reload: from now on new requests get next (whose reference the server
 * takes on success); requests in flight keep theirs.  The rate limits
 * follow next's rate and burst, and with TLS the certificate and key are
 * read again from next's tls_cert and tls_key.  0; or -1 with err (a
 * certificate or key that does not load, no memory), next untouched and
 * the running configuration kept. */
int gw_server_reload(gw_server *s, gw_live *next, char *err, size_t err_size);
/* At a SIGHUP, before the configuration is read: the files veild writes
 * (the audit log) opened again, for a log rotation.  A failure is logged
 * and the file open before is kept. */
void gw_server_reopen_logs(gw_server *s);

#endif /* VEIL_GATEWAY_H */
