/* veil client: end-to-end encrypted chat completions, over the NOMYO v1
 * protocol or veil protocol v2 (Oblivious HTTP, docs/PROTOCOL-V2.md).
 *
 * The shape follows NOMYO's SecureChatCompletion: make a client from a
 * config, then create chat completions from OpenAI-style requests.  Each
 * request is sealed to the server's key (AES-256-GCM, key wrapped with
 * RSA-OAEP-SHA256) and the answer is opened with the client's own private
 * key, which may live in a PKCS#11 token and never leave it.
 *
 * Conventions (as in veil/engine.h): every *_new has a *_free that accepts
 * NULL; returned strings and trees are owned by the caller unless a
 * comment says otherwise.  Calls that talk to a server return a
 * veil_client_status (VEIL_CLIENT_OK == 0) and fill a veil_client_error.
 *
 * Thread safety: one veil_client may be used from many threads at once;
 * veil_client_dispose and veil_client_free must not race with calls that
 * are still running.  See docs/CLIENT.md.
 */
#ifndef VEIL_CLIENT_H
#define VEIL_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "veil/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- error classes ---------------------------------------------------- */

/* One class per NOMYO client error (stable numbers; new ones appended).
 * The veil CLI exits with 10 + the class number. */
typedef enum veil_client_status {
    VEIL_CLIENT_OK = 0,
    VEIL_CLIENT_E_INVALID_REQUEST = 1,     /* 400, or refused before sending */
    VEIL_CLIENT_E_AUTHENTICATION = 2,      /* 401 */
    VEIL_CLIENT_E_FORBIDDEN = 3,           /* 403 */
    VEIL_CLIENT_E_API = 4,                 /* 404 and any status not below */
    VEIL_CLIENT_E_RATE_LIMIT = 5,          /* 429 */
    VEIL_CLIENT_E_SERVER = 6,              /* 500 */
    VEIL_CLIENT_E_SERVICE_UNAVAILABLE = 7, /* 503 */
    VEIL_CLIENT_E_CONNECTION = 8,          /* network failure or timeout */
    VEIL_CLIENT_E_SECURITY = 9,            /* answer refused, pin, http, TLS */
    VEIL_CLIENT_E_DISPOSED = 10,           /* the client was disposed */
    VEIL_CLIENT_E_CONFIG = 11              /* bad configuration or key source */
} veil_client_status;

/* "InvalidRequestError", "AuthenticationError", ... (the NOMYO names). */
const char *veil_client_status_name(veil_client_status s);

/* Every crypto failure on an answer carries this one message. */
#define VEIL_CLIENT_SECURITY_MESSAGE                                           \
    "the response could not be verified or decrypted"

typedef struct veil_client_error {
    veil_client_status status;
    int http_status;  /* the server's status; 0 when none was received */
    veil_rc rc;       /* the engine's code behind a local failure, or 0 */
    char detail[512]; /* the server's "detail", or what went wrong here:
                         one line, no control characters (C0, DEL, C1),
                         UTF-8 */
} veil_client_error;

/* ---- configuration ---------------------------------------------------- */

typedef enum veil_client_key_source {
    VEIL_CLIENT_KEY_EPHEMERAL = 0, /* generated in memory, once per client */
    VEIL_CLIENT_KEY_TOKEN = 1,     /* key_ref: a PKCS#11 URI (a bare label
                                      only with an engine that has a
                                      default token) */
    VEIL_CLIENT_KEY_DIR = 2        /* key_ref: a NOMYO key directory */
} veil_client_key_source;

typedef enum veil_client_tag_mode {
    VEIL_CLIENT_TAG_SEPARATE = 0, /* "tag" field (the Python client) */
    VEIL_CLIENT_TAG_APPENDED = 1  /* tag after the ciphertext (JavaScript) */
} veil_client_tag_mode;

/* Which protocol carries requests (docs/CLIENT.md, "Protocols"). */
typedef enum veil_client_protocol {
    VEIL_CLIENT_PROTOCOL_V1 = 0,  /* NOMYO v1 (the default) */
    VEIL_CLIENT_PROTOCOL_V2 = 1,  /* veil v2: Oblivious HTTP (RFC 9458) */
    VEIL_CLIENT_PROTOCOL_AUTO = 2 /* v2 when the gateway's GET
                                     /.well-known/ohttp-gateway answers a
                                     signed key configuration, else v1 */
} veil_client_protocol;

/* Called before each retry: attempt is 1 for the first retry; status is
 * the HTTP status that caused it (0: a network failure). */
typedef void (*veil_client_retry_fn)(void *ctx, unsigned attempt,
                                     int http_status, unsigned delay_ms);

typedef struct veil_client_config {
    const char *base_url;      /* the server; required (no default) */
    const char *api_key;       /* NULL: no Authorization header; copied */
    int allow_http;            /* permit http:// (warns); default 0 */
    const char *ca_file;       /* PEM CA bundle for https; NULL: system CAs */
    unsigned timeout_ms;       /* per HTTP exchange; default 60000 */
    unsigned max_retries;      /* default 2 */
    unsigned retry_base_ms;    /* first backoff; default 1000, then doubles */
    unsigned retry_max_ms;     /* cap for backoff and Retry-After; 60000 */
    const char *security_tier; /* "standard", "high", "maximum" or NULL */
    /* SPKI SHA-256 of the expected server key: "sha256:<64 hex>" (or the
     * bare hex).  A different key is a security error; nothing is sent.
     * It is protocol v1's key: without signing_key_pin or a trust file
     * for the URL, auto takes v1, and protocol v2 (or a call that needs
     * it) is VEIL_CLIENT_E_CONFIG with nothing sent (docs/CLIENT.md). */
    const char *server_key_pin;
    veil_client_tag_mode tag_mode; /* for requests; answers: either */

    veil_client_key_source key_source;
    const char *key_ref;          /* TOKEN: URI/label; DIR: directory path */
    unsigned key_bits;            /* generated keys: 2048..4096; 4096 */
    veil_pin_source key_password; /* DIR: encrypt the saved private key */
    unsigned rotate_seconds;      /* EPHEMERAL: new key pair every N s; 0 */

    /* Keys in tokens: use this engine (borrowed; must outlive the client),
     * or, when NULL, the client makes its own from these two.  A key
     * directory with key_password always gets the client's own engine,
     * whose PIN source is that password. */
    veil_engine *engine;
    const char *pkcs11_module;
    veil_pin_source pin;

    veil_log_fn log; /* NULL: no log */
    void *log_ctx;
    veil_log_level log_level;
    veil_client_retry_fn on_retry; /* NULL: none */
    void *retry_ctx;
    /* A trust file from veil_attest_enroll (veil/attest.h).  When set,
     * every answer is verified against it: its signature, and on
     * `maximum` its TPM quote.  On `maximum` without one, an answer with
     * no attestation is refused, and a veil quote is still checked for
     * this request and server key, but its attestation key is not known
     * to be genuine (a warning is logged).  An attestation that is not a
     * veil TPM quote of the shape docs/ATTESTATION.md gives is refused
     * there unless allow_foreign_attestation is set.  A failed check is
     * VEIL_CLIENT_E_SECURITY and the answer is not returned. */
    const char *trust_file;
    /* maximum without a trust file: accept an attestation in another
     * format than veil's (NOMYO's, say), which cannot be checked; a
     * warning is logged.  Default 0: such an answer is refused. */
    int allow_foreign_attestation;
    /* Every server key (fetched, pinned, enrolled) must pass OpenSSL's
     * public key check and, being RSA, have a public exponent of at least
     * 65537.  Set this to accept an odd exponent from 3 up (legacy keys);
     * an exponent of 1 or an even one is never accepted. */
    int allow_small_exponent;

    /* Appended in libveil 1 (version-info 1:0:0). */
    veil_client_protocol protocol; /* default VEIL_CLIENT_PROTOCOL_V1 */
    /* v2: the SPKI SHA-256 of the gateway's signing key, "sha256:<64
     * hex>" (or the bare hex), which must sign its key configurations.
     * NULL: the trust file's signing key when there is one, else the key
     * the gateway names at first contact (GET /pki/signing_key), kept
     * while the client remembers the gateway (its 8 most recent base
     * URLs; the oldest is then forgotten, and its next contact is a
     * first contact again).  A configuration signed by another key, or
     * expired, is VEIL_CLIENT_E_SECURITY and nothing is sent. */
    const char *signing_key_pin;
    /* Appended in libveil 3 (version-info 3:0:0: a binary built against an
     * older veil_client_config must be rebuilt).  v2 through
     * an Oblivious HTTP relay (RFC 9458 2: an Oblivious Relay Resource,
     * e.g. "https://relay.example/ohttp/gw1"): the encapsulated requests
     * are posted to this URL exactly as given (nothing appended; user
     * information dropped), while the key configurations, the signing key
     * and the KEM key certifications are still fetched from base_url.
     * https, or http when allow_http; else VEIL_CLIENT_E_CONFIG.  It makes
     * v2 necessary: with protocol v1 it is VEIL_CLIENT_E_CONFIG, auto
     * means v2 (a gateway without v2 is then an error, never a v1 request
     * around the relay), and a per-request base_url other than the
     * client's is VEIL_CLIENT_E_CONFIG (a relay forwards to one gateway).
     * NULL (the default): posted to the gateway itself. */
    const char *relay_url;
} veil_client_config;

/* Fills cfg with the defaults above.  Always start from this. */
void veil_client_config_init(veil_client_config *cfg);

typedef struct veil_client veil_client;

/* Makes the client and loads or generates its key pair (the server key is
 * fetched at the first request).  On failure err says why. */
veil_client_status veil_client_new(const veil_client_config *cfg,
                                   veil_client **out, veil_client_error *err);

/* Releases the client's key (wiping it), its connections and its cached
 * server key.  Every later call fails with VEIL_CLIENT_E_DISPOSED. */
void veil_client_dispose(veil_client *c);
/* Disposes (when not done yet) and frees.  Accepts NULL. */
void veil_client_free(veil_client *c);

/* ---- requests --------------------------------------------------------- */

/* Per-request overrides of the client's config; NULL fields keep it. */
typedef struct veil_request_opts {
    const char *security_tier;
    const char *api_key;
    const char *base_url;
    /* Output, optional: when not NULL, receives the evidence of the
     * answer (veil-evidence-v1 JSON text, malloc'd; the caller frees it;
     * it holds no plaintext) for veil_verify_evidence. */
    char **evidence;
} veil_request_opts;

/* Where the time of one call went (wall clock, nanoseconds). */
typedef struct veil_chat_stats {
    uint64_t encrypt_ns; /* serialising and sealing the request (and a
                            key rotation, when one falls due) */
    uint64_t network_ns; /* HTTP exchanges, server key fetches and
                            backoff waits */
    uint64_t decrypt_ns; /* opening and parsing the answer */
    unsigned attempts;   /* packages sent */
    char payload_id[37]; /* v1: the payload ID of the answered package */
    /* Appended in libveil 1. */
    int protocol;        /* 1 or 2: the protocol that carried the answer */
    char request_id[65]; /* v2: hex SHA-256 of the answered request's enc */
} veil_chat_stats;

/* Sends an OpenAI chat-completions request (model, messages, and any of
 * temperature, top_p, max_tokens, stop, n, presence_penalty,
 * frequency_penalty, logit_bias, user, tools, tool_choice, stream; other
 * members pass through) and returns the decrypted chat.completion object
 * with "_metadata" filled in (payload_id, is_encrypted,
 * encryption_algorithm, and what the server put inside the encrypted
 * answer, processed_at among it; nothing from outside the encryption).
 * An answer with a member twice (at its top level, in _metadata or in its
 * tpm_attestation), or
 * whose _metadata.payload_id is not this request's (a replayed answer),
 * is VEIL_CLIENT_E_SECURITY.  The request is
 * checked first: a wrong type or a payload over 10 MiB is refused before
 * anything is encrypted.  Free the answer with veil_chat_response_free.
 * opts and stats may be NULL. */
veil_client_status veil_chat_create(veil_client *c, const cJSON *request,
                                    const veil_request_opts *opts,
                                    cJSON **response, veil_chat_stats *stats,
                                    veil_client_error *err);

/* Over protocol v2 (or auto picking v2) the request travels as a
 * binary HTTP POST /v1/chat/completions inside Oblivious HTTP; the answer
 * is the backend's JSON with "_metadata" filled by the client: protocol
 * "v2", request_id (hex SHA-256 of the request's enc), is_encrypted,
 * encryption_algorithm.  The client's own key is not used.  An inner
 * error status maps to the same classes and retries as v1's outer one. */

/* Protocol v2 only (an error class VEIL_CLIENT_E_API with http_status 404
 * when the gateway does not speak it, VEIL_CLIENT_E_CONFIG when the
 * client is set to v1): POST /v1/embeddings and POST /v1/completions,
 * the OpenAI request as given (a "model" string is required), the answer
 * with "_metadata" as above. */
veil_client_status veil_embeddings_create(veil_client *c, const cJSON *request,
                                          const veil_request_opts *opts,
                                          cJSON **response,
                                          veil_chat_stats *stats,
                                          veil_client_error *err);
veil_client_status veil_completions_create(veil_client *c, const cJSON *request,
                                           const veil_request_opts *opts,
                                           cJSON **response,
                                           veil_chat_stats *stats,
                                           veil_client_error *err);

/* The models the gateway serves on the call's tier: over v2, GET
 * /v1/models inside Oblivious HTTP (with "_metadata" as above); over v1,
 * the gateway's public GET /v1/models (not encrypted: it holds no
 * secret; "_metadata" says protocol "v1", is_encrypted false). */
veil_client_status veil_models_list(veil_client *c,
                                    const veil_request_opts *opts,
                                    cJSON **response, veil_chat_stats *stats,
                                    veil_client_error *err);

/* Wipes every string in the tree, then deletes it.  Accepts NULL.  Use it
 * for answers and for request trees that held a prompt. */
void veil_chat_response_free(cJSON *response);

/* Building requests without touching cJSON: a request object with model
 * and an empty messages array (NULL: no memory), and appending a message
 * to it (content NULL gives "content": null); 1 on success, 0 when the
 * request has no messages array or memory ran out. */
cJSON *veil_chat_request_new(const char *model);
int veil_chat_request_add_message(cJSON *request, const char *role,
                                  const char *content);

/* ---- reading answers -------------------------------------------------- */

/* The first choice's message content, reasoning content, or tool calls
 * array; NULL when absent.  Borrowed from the answer. */
const char *veil_chat_content(const cJSON *response);
const char *veil_chat_reasoning(const cJSON *response);
const cJSON *veil_chat_tool_calls(const cJSON *response);

typedef struct veil_chat_usage {
    long prompt_tokens; /* -1 when absent */
    long completion_tokens;
    long total_tokens;
} veil_chat_usage;

/* 1 when the answer has a usage object (fields it lacks are -1), else 0. */
int veil_chat_get_usage(const cJSON *response, veil_chat_usage *usage);

/* ---- the server's key ------------------------------------------------- */

/* Fetches the server's public key (or returns the cached one) and checks
 * it against the pin.  pem is malloc'd; fingerprint is "sha256:<hex>". */
veil_client_status veil_client_server_key(veil_client *c, char **pem,
                                          char fingerprint[72],
                                          veil_client_error *err);

/* The client's own public key (PEM, malloc'd) and its fingerprint. */
veil_client_status veil_client_public_key(veil_client *c, char **pem,
                                          char fingerprint[72],
                                          veil_client_error *err);

#ifdef __cplusplus
}
#endif

#endif /* VEIL_CLIENT_H */
