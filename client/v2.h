/* client/v2.h: protocol v2 for the client (v2.c, docs/PROTOCOL-V2.md):
 * the gateway's signed key configurations fetched, verified and cached,
 * and one inner request carried in Oblivious HTTP with v1's retries and
 * error classes.  Not installed.
 *
 * Layering (docs/ARCHITECTURE.md): v2.c uses keys.h (the client object),
 * trust.c and client_int.h; chat.c calls it. */
#ifndef VEIL_CLIENT_V2_H
#define VEIL_CLIENT_V2_H

#include "keys.h"

#pragma GCC visibility push(hidden)

/* Which protocol a call to url takes: c's choice, with auto resolved by
 * the gateway's GET /.well-known/ohttp-gateway (a verified, signed
 * configuration: v2; a 404 or an unsigned one: v1).  *v2 receives 1 or
 * 0.  A configuration that is signed but fails its checks (pin,
 * signature, expiry) is an error, also under auto.  A server-key pin
 * (v1's key) without an anchor for v2 (a signing-key pin, or a trust
 * file for url) makes auto take v1 and v2 a VEIL_CLIENT_E_CONFIG
 * (veil_cl_v2_pin_gap): the pin is never left unchecked. */
veil_client_status veil_cl_v2_pick(veil_client *c, const char *url, int *v2,
                                   veil_client_error *err);

/* VEIL_CLIENT_E_CONFIG, nothing sent, when c pins v1's server key and has
 * no anchor for v2's (see above): for the calls that need v2. */
veil_client_status veil_cl_v2_pin_gap(veil_client *c, const char *url,
                                      veil_client_error *err);

/* What a verifier of an answer needs beyond its content (verify.c, as
 * chat.c calls it): filled when veil_cl_v2_send succeeds. */
typedef struct veil_cl_v2_seen {
    char request_id[65];    /* hex SHA-256 of enc: the answer's payload ID */
    uint8_t key_sha256[32]; /* SHA-256 of the KEM public key (pkR) */
    /* the inner answer's x-veil-signature, -signed-at, -signing-key, as
     * veil_cl_verify_answer reads them (only those members are set) */
    veil_cl_http_response headers;
} veil_cl_v2_seen;

/* One inner request. */
typedef struct veil_cl_v2_call {
    const char *url;     /* base URL, no trailing slash */
    const char *method;  /* "GET" or "POST" */
    const char *path;    /* e.g. "/v1/chat/completions" */
    const char *tier;    /* NULL: no x-security-tier */
    const char *api_key; /* NULL: no authorization */
    const uint8_t *body; /* JSON (secret), or NULL */
    size_t body_len;
    veil_chat_stats *stats; /* may be NULL */
    veil_cl_v2_seen *seen;  /* out, may be NULL */
} veil_cl_v2_call;

/* Sends the call (encapsulated afresh for each attempt), with the
 * configured retries and one refetch of the key configurations after the
 * uniform 400, and returns the inner 200 answer parsed as a JSON object
 * with "_metadata" (protocol, request_id, is_encrypted,
 * encryption_algorithm) set by the client.  The answer to a request with a
 * body must carry a valid answer signature (section 8) under the signing
 * key its key configurations are checked under, or it is refused; its
 * TPM quote (maximum) is the caller's to verify, with k->seen.  An
 * inner error status is mapped as v1 maps an outer one (error.c). */
veil_client_status veil_cl_v2_send(veil_client *c, const veil_cl_v2_call *k,
                                   cJSON **response, veil_client_error *err);

#pragma GCC visibility pop

#endif /* VEIL_CLIENT_V2_H */
