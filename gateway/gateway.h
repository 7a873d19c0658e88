/* veild internals: the pieces of the gateway and how they meet.  Not
 * installed.
 *
 *   veild.c     main: flags, config, signals, start and clean shutdown
 *   config.c    one table of settings, read from a file and from flags
 *   server.c    libmicrohttpd: routes, body limits, the exchange itself
 *   upstream.c  the inference backend over libcurl, and the echo model
 *   auth.c      API keys stored as SHA-256 hashes, constant-time compare
 *   strikes.c   the replay register (bounded)
 *   ratelimit.c token buckets per API key (bounded)
 */
#ifndef VEIL_GATEWAY_H
#define VEIL_GATEWAY_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include "veil/engine.h"

/* Writes one formatted line to err (ignored when err is NULL or
 * err_size 0): how config.c and auth.c report problems. */
void gw_put_err(char *err, size_t err_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- configuration (config.c) ----------------------------------------- */

#define GW_MAX_MODELS 64
#define GW_TIER_STANDARD (1u << 0)
#define GW_TIER_HIGH (1u << 1)
#define GW_TIER_MAXIMUM (1u << 2)
#define GW_TIER_ALL (GW_TIER_STANDARD | GW_TIER_HIGH | GW_TIER_MAXIMUM)

typedef struct gw_model {
    char *id;                /* model ID as clients name it */
    char *upstream;          /* base URL (".../v1") or "echo" */
    char *upstream_key_file; /* file holding the upstream's API key, or NULL */
    unsigned tiers;          /* GW_TIER_* allowed */
} gw_model;

typedef struct gw_config {
    char *listen_addr;        /* "127.0.0.1" */
    unsigned port;            /* 8443; 0: any free port (see port_file) */
    char *port_file;          /* write the bound port here (tests, scripts) */
    char *tls_cert, *tls_key; /* PEM files; both or neither */
    char *server_key; /* PKCS#11 URI, or "dir:PATH" (software, trying out) */
    char *pkcs11_module;
    char *pin_source;  /* "file:...", "env:..." */
    char *api_keys;    /* file of "sha256:<hex> [name]" lines; NULL: no auth */
    double rate;       /* requests per second per API key (1) */
    unsigned burst;    /* bucket size (2) */
    size_t body_limit; /* bytes (16 MiB) */
    unsigned workers;  /* threads (4) */
    unsigned replay_window;    /* seconds (600) */
    unsigned replay_capacity;  /* entries (262144) */
    unsigned upstream_timeout; /* seconds (300) */
    unsigned connect_timeout;  /* seconds (10) */
    char *log_level;           /* error, warn, info, debug */
    gw_model models[GW_MAX_MODELS];
    size_t n_models;
} gw_config;

void gw_config_init(gw_config *cfg);
void gw_config_free(gw_config *cfg);
/* Reads a config file (format: docs/veild.conf.example).  0, or -1 with a
 * line naming file, line and problem in err ("veild.conf:12: unknown
 * setting 'prot'").  Refuses a file writable by others.  Load the file
 * first, then apply flags (they override it), then gw_config_check. */
int gw_config_load(gw_config *cfg, const char *path, char *err,
                   size_t err_size);
/* Sets one setting by name, as a flag --NAME VALUE does (and a file line
 * NAME = VALUE); '-' and '_' are the same and a leading "--" is allowed.
 * "model" takes "ID=UPSTREAM[,tiers=a+b][,key-file=F]" and adds a model.
 * 0, or -1 with "--NAME: problem" (or "unknown option '--NAME' ...") in
 * err; err may be NULL. */
int gw_config_set(gw_config *cfg, const char *name, const char *value,
                  char *err, size_t err_size);
/* Checks the whole config once everything is read: server_key set (and
 * no pin-value in it), pin_source a source and not a PIN, tls_cert and
 * tls_key both or neither, at least one model, no ID twice. */
int gw_config_check(const gw_config *cfg, char *err, size_t err_size);
/* Prints the settings table (for --help). */
void gw_config_help(FILE *out);
const gw_model *gw_config_model(const gw_config *cfg, const char *id);

/* ---- API keys (auth.c) ------------------------------------------------ */

typedef struct gw_auth gw_auth;
/* Loads "sha256:<64 hex> [name]" lines ('#' comments); the file must be
 * a regular file owned by root or by us and writable by neither group nor
 * others, and hold at least one key.  NULL with err filled on failure
 * ("FILE:LINE: ..." for a malformed line). */
gw_auth *gw_auth_load(const char *path, char *err, size_t err_size);
void gw_auth_free(gw_auth *a);
/* 1 when `key` hashes to a stored hash (every entry compared, constant
 * time); the hash goes to id (used for rate limiting). */
int gw_auth_check(const gw_auth *a, const char *key, uint8_t id[32]);
/* How many keys the file holds (for the startup log). */
size_t gw_auth_count(const gw_auth *a);
/* The name written after the hash of the key with this id, or NULL (no
 * such key, or no name).  For logs, after gw_auth_check said 1; not
 * constant time. */
const char *gw_auth_name(const gw_auth *a, const uint8_t id[32]);

/* ---- replay register (strikes.c) -------------------------------------- */

typedef struct gw_strikes gw_strikes;
/* capacity: marks held (two per package), 2 to 2^24; all memory is
 * allocated here.  NULL on bad arguments or no memory. */
gw_strikes *gw_strikes_new(unsigned window_s, unsigned capacity);
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
/* Memory held, bytes (constant after gw_strikes_new). */
size_t gw_strikes_bytes(const gw_strikes *s);

/* ---- rate limits (ratelimit.c) ---------------------------------------- */

typedef struct gw_rate gw_rate;
/* At most max_keys buckets (1 to 2^24), allocated here; when all are in
 * use, the one idle longest is reused.  NULL on bad arguments. */
gw_rate *gw_rate_new(double per_second, unsigned burst, unsigned max_keys);
void gw_rate_free(gw_rate *r);
/* 1 when a request from `id` may go now; else 0 and *retry_after_s says
 * when one will (whole seconds, at least 1). */
int gw_rate_take(gw_rate *r, const uint8_t id[32], double now,
                 unsigned *retry_after_s);

/* ---- upstream (upstream.c) -------------------------------------------- */

typedef struct gw_upstream_result {
    int status; /* HTTP status to give the client: 200, 400, 502, ... */
    char *body; /* 200: the chat.completion JSON; else the detail text */
    size_t len;
} gw_upstream_result;

/* Sends the plaintext chat request to the model's upstream (or answers it
 * with the echo model) and maps failures: unreachable 503, timeout 504,
 * upstream 4xx 400 with its message, 5xx 502.  body is secret: the
 * caller wipes and frees it. */
void gw_upstream_call(const gw_config *cfg, const gw_model *m,
                      const char *request, size_t len, gw_upstream_result *out);
/* Answers an echo request (a chat.completion repeating the last user
 * message); also used by the tests. */
char *gw_echo_answer(const char *request, size_t len);
/* 1 when the upstream answers (for /healthz). */
int gw_upstream_alive(const gw_config *cfg, const gw_model *m);
/* Releases the upstream connection pool (at shutdown). */
void gw_upstream_cleanup(void);

/* ---- the HTTP server (server.c) --------------------------------------- */

typedef struct gw_server gw_server;

/* What the server needs, made by veild.c; borrowed for the server's life. */
typedef struct gw_deps {
    const gw_config *cfg;
    veil_engine *engine;
    veil_key *server_key; /* RSA private key (token or software) */
    gw_auth *auth;        /* NULL: no authentication */
    gw_strikes *strikes;
    gw_rate *rate;
    veil_log_fn log;
    void *log_ctx;
    veil_log_level log_level;
} gw_deps;

/* Starts listening (the bound port is gw_server_port).  NULL with err. */
gw_server *gw_server_start(const gw_deps *deps, char *err, size_t err_size);
unsigned gw_server_port(const gw_server *s);
/* Stops accepting, lets requests in flight finish (at most grace_s
 * seconds), then stops.  Returns the number of requests cut off. */
unsigned gw_server_stop(gw_server *s, unsigned grace_s);

#endif /* VEIL_GATEWAY_H */
