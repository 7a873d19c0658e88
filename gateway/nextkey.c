/* gateway/nextkey.c: the next server key of a rotation, opened and
 * checked (gateway.h, gw_next_key).  A unit below the routes: the live
 * configuration (live.c) owns one, rotation.c and v1.c use it. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exitcode.h"
#include "gateway.h"
#include "package.h"

void gw_next_key_free(gw_next_key *n)
{
    if (n == NULL)
        return;
    veil_key_free(n->key);
    free(n->pem);
    free(n);
}

gw_rc gw_next_key_open(veil_engine *e, const char *ref, const veil_key *current,
                       gw_next_key **out, int *exit_code, char *err,
                       size_t err_size)
{
    gw_next_key *n = calloc(1, sizeof *n);
    veil_key_info info;
    uint8_t cur[32];
    char hex[65];

    *out = NULL;
    *exit_code = VEIL_EXIT_FAIL;
    if (n == NULL) {
        snprintf(err, err_size, "out of memory");
        return GW_NOMEM;
    }
    if (veil_key_open(e, ref, &n->key) != VEIL_OK) {
        snprintf(err, err_size, "server_key_next %s: %s", ref,
                 veil_last_error()->message);
        *exit_code = veil_exit_for(veil_last_error());
        goto fail;
    }
    if (veil_key_get_info(n->key, &info) != VEIL_OK ||
        info.type != VEIL_KEY_RSA || info.bits < VEIL_PKG_MIN_RSA_BITS ||
        !info.has_private) {
        snprintf(err, err_size,
                 "server_key_next %s must be an RSA private key of at least "
                 "%u bits",
                 ref, VEIL_PKG_MIN_RSA_BITS);
        *exit_code = VEIL_EXIT_USAGE;
        goto fail;
    }
    if (veil_key_fingerprint(n->key, n->sha256) != VEIL_OK ||
        veil_key_fingerprint(current, cur) != VEIL_OK ||
        veil_key_public_pem(n->key, &n->pem) != VEIL_OK) {
        snprintf(err, err_size, "server_key_next %s: %s", ref,
                 veil_last_error()->message);
        goto fail;
    }
    if (memcmp(cur, n->sha256, sizeof cur) == 0) {
        snprintf(err, err_size,
                 "server_key_next %s is the current server_key (the same "
                 "public key): name the new key (veil-keys rotate)",
                 ref);
        *exit_code = VEIL_EXIT_USAGE;
        goto fail;
    }
    veil_hex(n->sha256, sizeof n->sha256, hex);
    snprintf(n->pin, sizeof n->pin, "sha256:%s", hex);
    *out = n;
    return GW_OK;
fail:
    gw_next_key_free(n);
    return GW_REFUSED;
}
