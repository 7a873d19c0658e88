/* GET /v2/keys/certify?key_id=N (docs/PROTOCOL-V2.md 4.4): the TPM's
 * certification of KEM key N, made by the long-term AK when the key was
 * made and kept with it (kemkeys.c, tpm_kem.c); no TPM work here.
 *   200  the JSON of section 4.4
 *   400  key_id missing or not a number 0..255
 *   404  no key N (never made, or destroyed), protocol v2 off, or KEM keys
 *        that are not TPM objects (kem_keys is not tpm): the last two are
 *        permanent, and the message says which. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "routes.h"

void gw_v2_certify(void *app, svc_req *r)
{
    gw_server *s = app;
    const char *q = svc_query(r, "key_id");
    char *end = NULL, *json = NULL;
    unsigned long id = 256;

    if (q && q[0] >= '0' && q[0] <= '9' && strlen(q) <= 3)
        id = strtoul(q, &end, 10);
    if (id > 255 || *end != '\0') {
        gw_respond(s, r, GW_REFUSED, "key_id: a KEM key ID, 0 to 255");
        return;
    }
    if (s->d.kem == NULL) {
        gw_respond(s, r, GW_NOT_FOUND, "protocol v2 is off");
        return;
    }
    switch (gw_kem_certify(s->d.kem, (unsigned)id, &json)) {
    case GW_OK:
        svc_text(r, 200, "application/json", json, strlen(json));
        free(json);
        return;
    case GW_UNAVAILABLE:
        gw_respond(s, r, GW_NOT_FOUND,
                   "the KEM keys of this gateway are not TPM objects "
                   "(they are made in %s; kem_keys = tpm makes them in the "
                   "TPM): nothing to certify",
                   gw_kem_where(s->d.kem));
        return;
    case GW_NOT_FOUND:
        gw_respond(s, r, GW_NOT_FOUND, "no KEM key %lu", id);
        return;
    default:
        gw_respond(s, r, GW_NOMEM, "out of memory");
    }
}
