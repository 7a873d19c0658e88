/* client/keys.h: the client object (struct veil_client, client.c) and its
 * keys (keys.c), shared by client.c, keys.c and chat.c.  Not installed.
 *
 * Layering (docs/ARCHITECTURE.md): keys.c uses trust.c, tpmobj.c and
 * client_int.h; client.c uses keys.c; chat.c uses both. */
#ifndef VEIL_CLIENT_KEYS_H
#define VEIL_CLIENT_KEYS_H

#include <time.h>

#include "ohttp.h"
#include "trust.h"

#pragma GCC visibility push(hidden)

#define VEIL_CL_SERVER_CACHE 8

/* A key with the text forms the protocol needs, shared by reference so
 * that a rotation or a refetch never frees a key another thread uses. */
typedef struct veil_cl_keyref {
    veil_key *key;
    char *pem;        /* SPKI PEM */
    char *pem_header; /* percent-encoded PEM (client keys) */
    uint8_t fp[32];
    char fp_text[72]; /* "sha256:<hex>" */
    char *url;        /* server keys: the base URL it came from */
    time_t born;
    atomic_uint refs;
} veil_cl_keyref;

/* Protocol v2 state of one base URL (v2.c): the gateway's signing key as
 * first seen (first contact), the key configuration chosen from its
 * last verified GET /.well-known/ohttp-gateway and until when it holds,
 * or, under auto, that the gateway answered no signed configuration
 * (v1 is used until `until`). */
#define VEIL_CL_SPKI_MAX 256
typedef struct veil_cl_v2_slot {
    char *url; /* NULL: a free slot */
    uint8_t sign_spki[VEIL_CL_SPKI_MAX];
    size_t sign_spki_len; /* 0: not fetched yet */
    uint8_t sign_fp[32];
    int state; /* 0 nothing known, 1 a key configuration, 2 no v2 */
    veil_ohttp_keyconfig kc;
    veil_ohttp_alg alg;
    time_t until;
    unsigned long gen; /* counts the fetches of this URL */
    /* maximum: the KEM key last found certified by the enrolled AK
     * (v2_cert.c), its key ID and point, trusted until cert_until (the
     * configuration's own lifetime when it was checked) */
    uint8_t cert_pk[VEIL_HPKE_ENC_MAX];
    size_t cert_pk_len; /* 0: none */
    uint8_t cert_key_id;
    time_t cert_until;
} veil_cl_v2_slot;

struct veil_client {
    veil_client_config cfg; /* strings below replace the borrowed ones */
    char *base_url, *ca_file, *tier, *key_ref, *module, *pin_where, *pw_where;
    char *relay_url;      /* cfg.relay_url, or NULL */
    veil_secbuf *api_key; /* NUL-terminated, or NULL */
    uint8_t pin[32];
    char pin_text[72]; /* "sha256:<hex>" as configured */
    int has_pin;
    uint8_t sign_pin[32]; /* cfg.signing_key_pin */
    char sign_pin_text[72];
    int has_sign_pin;
    veil_logger log; /* cfg.log, cfg.log_ctx, cfg.log_level */
    veil_engine *engine;
    int own_engine;
    veil_cl_transport *tx;
    pthread_mutex_t lock; /* guards own, servers[], and rotation */
    veil_cl_keyref *own;
    veil_cl_keyref *servers[VEIL_CL_SERVER_CACHE];
    veil_trust *trust; /* cfg.trust_file, loaded; NULL when none */
    veil_cl_v2_slot v2[VEIL_CL_SERVER_CACHE]; /* guarded by lock */
    atomic_int disposed;
};

/* ---- the client object (client.c) -------------------------------------- */

/* VEIL_CLIENT_OK, or VEIL_CLIENT_E_DISPOSED when c is NULL or disposed. */
veil_client_status veil_cl_disposed(const veil_client *c,
                                    veil_client_error *err);

/* Checks a base URL: https, or http when the client allows it. */
veil_client_status veil_cl_check_url(const veil_client *c, const char *url,
                                     veil_client_error *err);

/* Monotonic time in ns; whether an HTTP status is retried (429, 500,
 * 502, 503, 504); and the wait before retry number `attempt` (1-based;
 * status 0: a network error), Retry-After first, else backoff with
 * jitter, reported to cfg.on_retry and counted in stats (may be NULL). */
uint64_t veil_cl_now_ns(void);
int veil_cl_retryable(long status);
/* 1 when a failed request is worth another try: a retryable status
 * (veil_cl_retryable), but not the 503 of a gateway that has no TPM at
 * all ("no TPM attestation available"), which no retry changes. */
int veil_cl_retry_worth(long status, const veil_client_error *err);
/* The same for a v2 POST that got an answer: only 429 and 503, which say
 * the request was not processed (RFC 9458 6.5 allows no retry without
 * such a signal); a 500, 502 or 504 may come after the backend ran. */
int veil_cl_v2_retry_worth(long status, const veil_client_error *err);
void veil_cl_wait_retry(veil_client *c, unsigned attempt, long status,
                        long retry_after_ms, veil_chat_stats *stats);

/* ---- keys (keys.c) ----------------------------------------------------- */

/* Drops a reference (k may be NULL); the last one frees the key. */
void veil_cl_keyref_put(veil_cl_keyref *k);
/* Takes another reference to k (may be NULL); returns k. */
veil_cl_keyref *veil_cl_keyref_get(veil_cl_keyref *k);

/* Loads or makes the key the config names into a new keyref. */
veil_client_status veil_cl_load_key(veil_client *c, veil_cl_keyref **out,
                                    veil_client_error *err);

/* The current own key (a reference), rotated first when due. */
veil_client_status veil_cl_own_key(veil_client *c, veil_cl_keyref **out,
                                   veil_client_error *err);

/* The cached server key for url (a reference), fetched when missing or
 * when `stale` (the key the caller found wanting) is still the cached
 * one.  A fetched key passes veil_cl_key_check, the pin and the trust
 * file, or nothing is sent to it (VEIL_CLIENT_E_SECURITY). */
veil_client_status veil_cl_server_key(veil_client *c, const char *url,
                                      const veil_cl_keyref *stale,
                                      veil_cl_keyref **out,
                                      veil_client_error *err);

/* Protocol v2's state of url (v2.c, v2_cert.c; c->lock held): its slot,
 * made (a free one, else the last one evicted) when `make`; NULL when
 * absent or out of memory. */
veil_cl_v2_slot *veil_cl_v2_slot_find(veil_client *c, const char *url,
                                      int make);

#pragma GCC visibility pop

#endif /* VEIL_CLIENT_KEYS_H */
