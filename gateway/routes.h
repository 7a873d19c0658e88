/* gateway/routes.h: what the server (server.c) and its route modules
 * (v1.c, v2.c, attest_routes.c, keycache.c) share.  Not for the units below
 * them (config, auth, strikes, rate, upstream, tpm, signlog), which know
 * nothing of HTTP. */
#ifndef VEIL_GW_ROUTES_H
#define VEIL_GW_ROUTES_H

#include <pthread.h>

#include "gateway.h"
#include "http.h"
#include "package.h"

#pragma GCC visibility push(hidden)

/* The longest payload ID taken. */
#define PID_MAX VEIL_PAYLOAD_ID_MAX

/* ---- clients' public keys (keycache.c) -------------------------------- */

typedef struct gw_keycache gw_keycache;
gw_keycache *gw_keycache_new(void);
void gw_keycache_free(gw_keycache *kc);

/* A client key for one request: from the cache (entry set) or the
 * request's own (entry NULL). */
typedef struct gw_ckey {
    veil_key *key;
    struct gw_ckey_entry *entry;
} gw_ckey;

/* The caller's key from the X-Public-Key header (h; NULL: absent), kept
 * by the header and the caller's id.  GW_OK, or GW_REFUSED with the reason
 * in why. */
gw_rc gw_client_key(gw_keycache *kc, veil_engine *e, const char *h,
                    const uint8_t id[32], gw_ckey *out, char *why,
                    size_t why_size);
void gw_ckey_release(gw_keycache *kc, gw_ckey *k);

/* ---- the TPM's own line (tpmline.c) ----------------------------------- */

typedef struct gw_tpm_line gw_tpm_line;
/* At most workers TPM operations at once, queue more requests waiting,
 * each at most wait_s seconds.  NULL: no memory. */
gw_tpm_line *gw_tpm_line_new(unsigned workers, unsigned queue, unsigned wait_s);
void gw_tpm_line_free(gw_tpm_line *l);

/* Route hooks (svc_route.before_slot): a place in the TPM's line for the
 * request, held until it is complete, or the 503 with Retry-After (GW_BUSY)
 * when the line is full.  gw_tpm_place_maximum: only for a request whose
 * X-Security-Tier is maximum.  Without a TPM: nothing (the handler answers
 * the permanent 503). */
void gw_tpm_place(void *app, svc_req *r);
void gw_tpm_place_maximum(void *app, svc_req *r);

/* One request's turn at the TPM. */
typedef struct gw_tpm_turn {
    int had_slot; /* gave its worker slot back: takes one again after */
    int held;
    double t0;
} gw_tpm_turn;
/* Gives the request's worker slot back and waits for its turn at the TPM
 * (first come, first served, at most tpm_queue_wait).  GW_OK; GW_BUSY
 * with *retry_s and why when no turn came in time; GW_UNAVAILABLE ("no
 * TPM attestation available", no Retry-After) without a TPM. */
gw_rc gw_tpm_turn_take(gw_server *s, svc_req *r, gw_tpm_turn *t,
                       unsigned *retry_s, char *why, size_t why_size);
/* Ends the turn (t may hold none) and takes a worker slot again when the
 * request had one.  GW_OK, or GW_UNAVAILABLE with why when the server
 * began to stop. */
gw_rc gw_tpm_turn_give(gw_server *s, svc_req *r, gw_tpm_turn *t, char *why,
                       size_t why_size);

/* A place in the TPM's line for a request already in its handler (v2's
 * maximum tier, known only once the request is open), held until it is
 * complete: GW_OK, or GW_BUSY with *retry_s and why when the line is
 * full.  Without a TPM: GW_OK, nothing held (gw_tpm_turn_take answers). */
gw_rc gw_tpm_place_take(gw_server *s, svc_req *r, unsigned *retry_s, char *why,
                        size_t why_size);

/* ---- the high and maximum tiers (maximum.c) ---------------------------- */

/* The high tier's condition (maximum's too): the gateway's memory locked,
 * undumpable, and the plaintext's buffer locked.  GW_OK, or GW_UNAVAILABLE
 * with why. */
gw_rc gw_tier_memory(gw_server *s, unsigned tier, const veil_secbuf *plain,
                     char *why, size_t why_size);

/* What a maximum answer's quote binds (docs/ATTESTATION.md): the
 * qualifying data's payload ID, request hash and encryption key hash,
 * and the backend statement.  v1: the X-Payload-ID, the package's hash,
 * the server key's SPKI hash; v2: the request identifier (hex SHA-256 of
 * enc), the inner content's hash, the hash of the KEM public key. */
typedef struct gw_max_binding {
    const char *id;
    const uint8_t *request_sha256; /* 32 bytes each */
    const uint8_t *key_sha256;
    const char *backend;
    int certify_key; /* key_certify of the server key (tpm_certify_key) */
} gw_max_binding;

/* The quote of a maximum answer, taken before the backend runs: a turn in
 * the TPM's own line (the worker slot given back while waiting), the
 * quote, the backend statement added.  GW_OK with *attestation (the
 * caller's), or: GW_BUSY with *retry_s (no turn in time), GW_UNAVAILABLE
 * ("no TPM attestation available" without a TPM; a quote that failed,
 * logged), with why. */
gw_rc gw_max_quote(gw_server *s, svc_req *r, const gw_max_binding *b,
                   cJSON **attestation, unsigned *retry_s, char *why,
                   size_t why_size);

/* The "_metadata" member veild adds to an answer, as text: ",\"_metadata\":
 * {...}" (the comma when the answer keeps other members).  *attestation
 * (the TPM's quote object, or NULL) goes in as tpm_attestation and is then
 * owned here (*attestation set to NULL).  malloc'd; NULL: no memory. */
char *gw_metadata_member(gw_server *s, const char *payload_id, const char *tier,
                         cJSON **attestation, int comma);

/* The edits that make the answer sent from the backend's: its own
 * "_metadata" removed (whatever it holds: only veild's reaches the
 * client), and metadata (gw_metadata_member's, or NULL: none) spliced in
 * before the closing brace.  Returns how many (at most 2). */
size_t gw_answer_edits(const gw_upstream_result *up, const char *metadata,
                       veil_json_edit edits[2]);

/* ---- the server ---------------------------------------------------------- */

struct gw_server {
    gw_deps d;
    pthread_mutex_t live_lock; /* live: swapped by a reload */
    gw_live *live;             /* what new requests get (a reference) */
    veil_logger log;
    svc_http *http;
    char *pem;
    char *sign_pem; /* the signing key's SPKI PEM, or NULL */
    gw_keycache *keys;
    veil_memory_status mem;
    svc_response *undecryptable; /* one answer for every failure */
    svc_response *ohttp_key;     /* v2's one answer (PROTOCOL-V2.md 7) */
    /* v2's signed key configuration, signed once per key (v2.c) */
    pthread_mutex_t keys_lock;
    uint8_t keys_sha256[32]; /* of the body signed */
    char *keys_sig_b64;      /* NULL: none yet */
    char keys_at[24], keys_until[24];
    pthread_mutex_t health_lock; /* the health cache; held while probing */
    time_t health_at;
    char *health;
    int health_ok;
    /* the two keys as the evidence formats name them */
    char enc_hex[65], sign_hex[65];     /* SHA-256 of the SPKI DER */
    char *enc_spki_b64, *sign_spki_b64; /* sign_spki_b64: NULL, no signer */
    char sign_key_header[72];           /* "sha256:<hex>" */
    gw_tpm_line *tpm_line;              /* NULL: no TPM */
    uint8_t salt_secret[32];            /* cache_salt's key */
    svc_http *metrics_http;             /* the metrics listener, or NULL */
    int has_salt_secret;                /* salt_secret is read */
};

/* The live configuration of request r: the one current when it first
 * asked (admission, or its handler), held until it is complete.  Never
 * NULL. */
gw_live *gw_req_live(gw_server *s, svc_req *r);

/* Answers r for the outcome rc (not GW_OK) with the detail: the one map
 * of gw_rc to an HTTP status.  GW_UNDECRYPTABLE sends the one prebuilt
 * answer whatever the detail. */
void gw_respond(gw_server *s, svc_req *r, gw_rc rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The same with Retry-After (GW_RATE_LIMITED). */
void gw_respond_retry(gw_server *s, svc_req *r, gw_rc rc, unsigned retry_s,
                      const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* A payload ID's canonical form (docs/PROTOCOL-NOMYO.md); 1 when id is
 * one (out may be NULL). */
int gw_payload_id_canonical(const char *id, char out[PID_MAX + 1]);
/* tail_ok of the signature route */
int gw_payload_id_ok(const char *id);

/* The value of a model's cache_salt_field for the caller id (hex of an
 * HMAC under the gateway's secret; respond.c). */
void gw_cache_salt(gw_server *s, const uint8_t id[32], char out[65]);

/* ---- answer signatures (attest_routes.c) -------------------------------- */

/* An answer's signature, as it goes out in the headers. */
typedef struct gw_answer_sig {
    char *sig_b64; /* malloc'd; NULL: the gateway has no signing key */
    char signed_at[24];
} gw_answer_sig;

/* Signs the statement of an answer (docs/ATTESTATION.md) with the
 * signing key and keeps it for GET /v1/signatures/ID under key, the
 * canonical form of id, for owner (the caller's API key hash: only it, or
 * an operator key, may fetch it; NULL: anyone).  id is the payload ID as
 * sent (v1) or the hex SHA-256 of enc (v2); the hashes are of the request
 * and answer bytes the client holds.  GW_OK (sig->sig_b64 NULL without a
 * signing key), or GW_INTERNAL (logged): never an unsigned answer from a
 * gateway that signs.  Free sig->sig_b64. */
gw_rc gw_answer_sign(gw_server *s, const char *id, const char *key,
                     const char *tier, const uint8_t request_sha256[32],
                     const uint8_t response_sha256[32], const uint8_t *owner,
                     gw_answer_sig *sig);

/* The kept signature of the answer to id (GET /v1/signatures/ID, outer
 * in v1, inner in v2) for caller (its API key's hash, under the request's
 * API keys auth; NULL auth: no API keys, anyone): the store's JSON
 * in *body (malloc'd), or the outcome with the reason in why: GW_REFUSED
 * (not an ID), GW_NOT_FOUND (unknown, expired, or another API key's: the
 * same answer, so that nobody learns another's ID exists). */
gw_rc gw_signature_find(gw_server *s, const gw_auth *auth, const char *id,
                        const uint8_t caller[32], char **body, char *why,
                        size_t why_size);

/* ---- what a request came to (observe.c) ------------------------------- */

/* A request's own state in the HTTP layer (svc_req_data, zeroed at its
 * start): what the route modules note of an inference request for the
 * completion hook, which counts it in the metrics and writes its audit
 * line.  Never a prompt or an answer. */
typedef struct gw_req_rec {
    int noted;            /* an inference request whose API key was taken */
    const char *protocol; /* "v1", "v2" */
    const char *key;      /* the API key's name (held by the request's live
                             auth); NULL: none, or no API keys */
    const char *tier;     /* veil_tier_name's; NULL: not known */
    const char *model;    /* the model's ID (held by the request's live
                             cfg); NULL: not known */
    int inner_status;     /* v2: the inner answer's status; 0: none */
    int has_usage;
    long long prompt_tokens, completion_tokens; /* -1: not reported */
    char pid_sha256[65]; /* hex SHA-256 of the canonical payload ID */
} gw_req_rec;

/* Notes an inference request of protocol ("v1", "v2") once its API key is
 * taken (key: its name, or NULL), with its tier (NULL: not yet known) and
 * payload ID (canonical; NULL: none yet). */
void gw_note_request(svc_req *r, const char *protocol, const char *key,
                     const char *tier, const char *pid);
/* The model, once known; the inner status (v2); the backend's answer,
 * whose "usage" holds the token counts (read without the content). */
void gw_note_model(svc_req *r, const gw_model *m);
void gw_note_status(svc_req *r, int status);
void gw_note_usage(svc_req *r, const gw_upstream_result *up);
/* gw_upstream_call, timed into the metrics (veild_upstream_*). */
gw_rc gw_upstream_timed(gw_server *s, const gw_config *cfg, const gw_model *m,
                        gw_infer route, const char *request, size_t len,
                        const gw_request *rq, const char *salt,
                        gw_upstream_result *out, char *err, size_t err_size);

/* The HTTP layer's completion hook (svc_http_config.done). */
void gw_observe_done(void *app, svc_req *r, const svc_done *d);
/* GET /metrics on the main port: for operator API keys only. */
void gw_metrics_get(void *app, svc_req *r);
/* The metrics listener (metrics_listen), started and stopped with the
 * server: 0, or -1 with err. */
int gw_observe_start(gw_server *s, char *err, size_t err_size);
void gw_observe_stop(gw_server *s);
/* A reload: the audit log opened again (logged when it fails). */
void gw_observe_reload(gw_server *s);

/* A route's tag (svc_route_tag): its API key travels inside the request
 * (protocol v2), so the admit hook checks none. */
#define GW_TAG_INNER_KEY 1u

/* the route handlers (the table is in server.c) */
void gw_v1_completion(void *app, svc_req *r);
void gw_attest_report(void *app, svc_req *r);
void gw_attest_activate(void *app, svc_req *r);
void gw_signature_get(void *app, svc_req *r);
/* GET /pki/public_key and /pki/next_public_key (rotation.c) */
void gw_pki_key(void *app, svc_req *r);
void gw_pki_next_key(void *app, svc_req *r);
/* GET /healthz/ready (and /healthz), /healthz/live (health.c) */
void gw_health_ready(void *app, svc_req *r);
void gw_health_live(void *app, svc_req *r);
/* protocol v2 (v2.c): GET and POST /.well-known/ohttp-gateway */
void gw_v2_keys(void *app, svc_req *r);
void gw_v2_request(void *app, svc_req *r);
/* GET /v2/keys/certify?key_id=N (v2_certify.c) */
void gw_v2_certify(void *app, svc_req *r);

#pragma GCC visibility pop

#endif /* VEIL_GW_ROUTES_H */
