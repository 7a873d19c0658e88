/* gateway/rotation.c: the routes of the server keys, GET /pki/public_key
 * and GET /pki/next_public_key (the next key: nextkey.c).
 *
 * A rotation (docs/GATEWAY.md): veil-keys rotate makes the next key in
 * the token; server_key_next names it and a reload opens it; from then on
 * v1 requests sealed to either key are answered (v1.c tries the current
 * key, then the next), /pki/public_key stays the current key (what NOMYO
 * clients fetch) and says the next one's hash in X-Veil-Next-Key, and
 * /pki/next_public_key serves the next one, so that clients pin it ahead;
 * the swap is a restart with server_key set to the next key.  The key
 * lives in the live configuration (gw_live.next), so a request keeps the
 * keys it started with across a reload. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routes.h"

/* GET /pki/next_public_key: the next server key (SPKI PEM, like
 * /pki/public_key) with its hash in X-Veil-Next-Key; 404 when no rotation
 * is under way. */
void gw_pki_next_key(void *app, svc_req *r)
{
    gw_server *s = app;
    const gw_next_key *n = gw_req_live(s, r)->next;
    const char *headers[] = {"X-Veil-Next-Key", n ? n->pin : NULL, NULL};
    char *body;

    if (n == NULL) {
        gw_respond(s, r, GW_NOT_FOUND,
                   "no next server key (server_key_next is not set)");
        return;
    }
    if ((body = strdup(n->pem)) == NULL) {
        gw_respond(s, r, GW_NOMEM, "out of memory");
        return;
    }
    svc_send(r, 200, "text/plain; charset=utf-8", body, strlen(body), headers);
}

/* GET /pki/public_key: the current server key; during a rotation the
 * next one's hash in X-Veil-Next-Key. */
void gw_pki_key(void *app, svc_req *r)
{
    gw_server *s = app;
    const gw_next_key *n = gw_req_live(s, r)->next;
    const char *headers[] = {"X-Veil-Next-Key", n ? n->pin : NULL, NULL};
    char *body = strdup(s->pem);

    if (body == NULL) {
        gw_respond(s, r, GW_NOMEM, "out of memory");
        return;
    }
    svc_send(r, 200, "text/plain; charset=utf-8", body, strlen(body),
             n ? headers : NULL);
}
