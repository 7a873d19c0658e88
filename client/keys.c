/* The client's keys: its own key (made, loaded or rotated as the config
 * says) and the server keys it fetched, each shared by reference
 * (veil_cl_keyref) so that a rotation or a refetch never frees a key
 * another thread uses.  A server key is checked (veil_cl_key_check), held
 * against the pin and the trust file, and cached per base URL.  Uses
 * tpmobj.c, trust.c and client_int.h; never calls client.c. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/crypto.h>

#include "keys.h"
#include "package.h"

/* The largest /pki/public_key body read: an SPKI PEM of RSA-16384 is
 * about 3 KiB. */
#define MAX_KEY_BODY (64u * 1024u)

/* ---- key references ---------------------------------------------------- */

void veil_cl_keyref_put(veil_cl_keyref *k)
{
    if (k == NULL || atomic_fetch_sub(&k->refs, 1) != 1)
        return;
    veil_key_free(k->key);
    free(k->pem);
    free(k->pem_header);
    free(k->url);
    free(k);
}

veil_cl_keyref *veil_cl_keyref_get(veil_cl_keyref *k)
{
    if (k != NULL)
        atomic_fetch_add(&k->refs, 1);
    return k;
}

/* Wraps a key: its PEM, fingerprint and (for our own key) the header. */
static veil_rc keyref_new(veil_key *key, int header, veil_cl_keyref **out)
{
    veil_cl_keyref *k = calloc(1, sizeof *k);
    veil_key_info info;
    veil_rc rc = VEIL_E_NOMEM;
    *out = NULL;
    if (k == NULL)
        return rc;
    k->key = key;
    atomic_init(&k->refs, 1);
    k->born = time(NULL);
    if ((rc = veil_key_public_pem(key, &k->pem)) != VEIL_OK ||
        (rc = veil_key_fingerprint(key, k->fp)) != VEIL_OK ||
        (rc = veil_key_get_info(key, &info)) != VEIL_OK)
        goto fail;
    memcpy(k->fp_text, info.fingerprint, sizeof k->fp_text);
    if (header && (k->pem_header = veil_percent_encode(k->pem)) == NULL) {
        rc = VEIL_E_NOMEM;
        goto fail;
    }
    *out = k;
    return VEIL_OK;
fail:
    k->key = NULL; /* the caller still owns key */
    veil_cl_keyref_put(k);
    return rc;
}

/* ---- the client's own key ---------------------------------------------- */

static veil_client_status check_rsa(const veil_key *key, veil_client_error *err)
{
    veil_key_info info;
    if (veil_key_get_info(key, &info) != VEIL_OK)
        return veil_cl_engine_fail(err, VEIL_CLIENT_E_CONFIG, VEIL_E_KEY,
                                   "client key");
    if (info.type != VEIL_KEY_RSA || info.bits < VEIL_PKG_MIN_RSA_BITS ||
        !info.has_private)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_KEY,
                            "the client key must be an RSA private key of at "
                            "least %u bits",
                            VEIL_PKG_MIN_RSA_BITS);
    return VEIL_CLIENT_OK;
}

static veil_rc generate(veil_client *c, veil_key **out)
{
    veil_keygen_params p = {.type = VEIL_KEY_RSA, .bits = c->cfg.key_bits};
    return veil_key_generate(c->engine, "software", &p, out);
}

/* Loads or makes the key the config names into a new veil_cl_keyref. */
veil_client_status veil_cl_load_key(veil_client *c, veil_cl_keyref **out,
                                    veil_client_error *err)
{
    veil_key *key = NULL;
    veil_rc rc;
    *out = NULL;
    switch (c->cfg.key_source) {
    case VEIL_CLIENT_KEY_EPHEMERAL:
        if ((rc = generate(c, &key)) != VEIL_OK)
            return veil_cl_engine_fail(err, VEIL_CLIENT_E_CONFIG, rc,
                                       "generating the client key");
        break;
    case VEIL_CLIENT_KEY_TOKEN:
        if ((rc = veil_key_open(c->engine, c->key_ref, &key)) != VEIL_OK)
            return veil_cl_engine_fail(err, VEIL_CLIENT_E_CONFIG, rc,
                                       "opening the client key");
        break;
    case VEIL_CLIENT_KEY_DIR: {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/private_key.pem", c->key_ref);
        if (stat(path, &st) == 0) {
            snprintf(path, sizeof path, "dir:%s", c->key_ref);
            if ((rc = veil_key_open(c->engine, path, &key)) != VEIL_OK)
                return veil_cl_engine_fail(err, VEIL_CLIENT_E_CONFIG, rc,
                                           "loading the client key");
            break;
        }
        if ((rc = generate(c, &key)) != VEIL_OK)
            return veil_cl_engine_fail(err, VEIL_CLIENT_E_CONFIG, rc,
                                       "generating the client key");
        if ((rc = veil_key_save(c->engine, key, c->key_ref,
                                &c->cfg.key_password)) != VEIL_OK) {
            veil_client_status st2 = veil_cl_engine_fail(
                err, VEIL_CLIENT_E_CONFIG, rc, "saving the client key");
            veil_key_free(key);
            return st2;
        }
        veil_logf(&c->log, VEIL_LOG_INFO, "client key saved in %s", c->key_ref);
        break;
    }
    default:
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "unknown key source %d", (int)c->cfg.key_source);
    }
    veil_client_status st = check_rsa(key, err);
    if (st == VEIL_CLIENT_OK && (rc = keyref_new(key, 1, out)) != VEIL_OK)
        st = veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, rc, "out of memory");
    if (st != VEIL_CLIENT_OK)
        veil_key_free(key);
    return st;
}

/* The current own key (a reference), rotated first when due. */
veil_client_status veil_cl_own_key(veil_client *c, veil_cl_keyref **out,
                                   veil_client_error *err)
{
    veil_client_status st = VEIL_CLIENT_OK;
    pthread_mutex_lock(&c->lock);
    veil_cl_keyref *k = c->own;
    /* v2 and auto make the key at its first use over v1 */
    if (k == NULL && !atomic_load(&c->disposed) &&
        (st = veil_cl_load_key(c, &c->own, err)) == VEIL_CLIENT_OK)
        k = c->own;
    if (k != NULL && c->cfg.rotate_seconds > 0 &&
        time(NULL) - k->born >= (time_t)c->cfg.rotate_seconds) {
        veil_cl_keyref *fresh;
        st = veil_cl_load_key(c, &fresh, err);
        if (st == VEIL_CLIENT_OK) {
            veil_logf(&c->log, VEIL_LOG_INFO, "client key rotated");
            veil_cl_keyref_put(c->own);
            c->own = k = fresh;
        }
    }
    *out = st == VEIL_CLIENT_OK ? veil_cl_keyref_get(k) : NULL;
    pthread_mutex_unlock(&c->lock);
    if (st != VEIL_CLIENT_OK)
        return st;
    if (*out == NULL)
        st = veil_cl_fail(err, VEIL_CLIENT_E_DISPOSED, 0, 0,
                          "the client was disposed");
    return st;
}

/* ---- server keys ------------------------------------------------------- */

/* fetch_server_key, step 1: the key in a 200 /pki/public_key body (a PEM
 * public key, white space around it allowed), RSA of the protocol's size
 * that passes veil_cl_key_check.  *bits receives its size. */
static veil_client_status key_from_body(veil_client *c,
                                        const veil_cl_http_response *r,
                                        veil_key **out, unsigned *bits,
                                        veil_client_error *err)
{
    veil_key *key = NULL;
    veil_key_info info;
    veil_rc rc = VEIL_E_KEY;
    char why[160];
    const char *pem = r->body ? r->body : "";
    size_t pem_len = r->body ? r->len : 0;
    *out = NULL;
    while (pem_len > 0 && strchr(" \t\r\n", *pem) && *pem) {
        pem++;
        pem_len--;
    }
    while (pem_len > 0 && pem[pem_len - 1] &&
           strchr(" \t\r\n", pem[pem_len - 1]))
        pem_len--;
    if (pem_len > 26 && !strncmp(pem, "-----BEGIN PUBLIC KEY-----", 26) &&
        memchr(pem, 0, pem_len) == NULL)
        rc = veil_key_from_public(c->engine, (const uint8_t *)pem, pem_len,
                                  &key);
    if (rc != VEIL_OK)
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, rc,
                            "the server's /pki/public_key is not a PEM "
                            "public key");
    if (veil_key_get_info(key, &info) != VEIL_OK || info.type != VEIL_KEY_RSA ||
        info.bits < VEIL_PKG_MIN_RSA_BITS) {
        veil_key_free(key);
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_KEY,
                            "the server key is not RSA of at least %u bits; "
                            "refused",
                            VEIL_PKG_MIN_RSA_BITS);
    }
    if (!veil_cl_key_check(key, c->cfg.allow_small_exponent, why, sizeof why)) {
        veil_key_free(key);
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_KEY,
                            "the server key is refused: %s; nothing was sent",
                            why);
    }
    *bits = info.bits;
    *out = key;
    return VEIL_CLIENT_OK;
}

/* Step 2: the key is the pinned one, and for the enrolled gateway the
 * enrolled one (its quotes bind that key: a request sealed to another
 * could never be verified, so it is not sent). */
static veil_client_status key_allowed(const veil_client *c, const char *url,
                                      const veil_cl_keyref *k,
                                      veil_client_error *err)
{
    if (c->has_pin && CRYPTO_memcmp(k->fp, c->pin, 32) != 0)
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 0, VEIL_E_VERIFY,
                            "the server key %s does not match the pinned %s "
                            "(nor does a next key at /pki/next_public_key); "
                            "nothing was sent",
                            k->fp_text, c->pin_text);
    if (c->trust && !strcmp(url, veil_trust_url(c->trust)) &&
        CRYPTO_memcmp(k->fp, veil_cl_trust_encryption_key(c->trust), 32))
        return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 0, VEIL_E_VERIFY,
                            "the server key %s is not the key enrolled in the "
                            "trust file; nothing was sent (enrol again if the "
                            "gateway's key was replaced)",
                            k->fp_text);
    return VEIL_CLIENT_OK;
}

/* GETs url + path (a PEM public key) into a new keyref, checked (step
 * 1). */
static veil_client_status get_key(veil_client *c, const char *url,
                                  const char *path, veil_cl_keyref **out,
                                  unsigned *bits, veil_client_error *err)
{
    char full[2048];
    veil_cl_http_response r;
    veil_key *key;
    veil_cl_keyref *k;
    *out = NULL;
    if (snprintf(full, sizeof full, "%s%s", url, path) >= (int)sizeof full)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "the base URL is too long");
    /* a GET: a network failure, 429 or 5xx is retried as a request is */
    veil_client_status st;
    for (unsigned n = 0;; free(r.body)) {
        st = veil_cl_transport_send(c->tx, full, NULL, NULL, 0, MAX_KEY_BODY,
                                    &r, err);
        long s = st == VEIL_CLIENT_OK ? r.status : 0;
        if ((st == VEIL_CLIENT_OK && !veil_cl_retryable(s)) ||
            (st != VEIL_CLIENT_OK && st != VEIL_CLIENT_E_CONNECTION) ||
            n >= c->cfg.max_retries)
            break;
        veil_cl_wait_retry(c, ++n, s, s ? r.retry_after_ms : -1, NULL);
    }
    if (st != VEIL_CLIENT_OK)
        return st;
    st = r.status == 200 ? key_from_body(c, &r, &key, bits, err)
                         : veil_cl_http_fail(&r, err);
    free(r.body);
    if (st != VEIL_CLIENT_OK)
        return st;
    veil_rc rc = keyref_new(key, 0, &k);
    if (rc != VEIL_OK || (k->url = strdup(url)) == NULL) {
        if (rc == VEIL_OK)
            veil_cl_keyref_put(k);
        else
            veil_key_free(key);
        return veil_cl_fail(err, VEIL_CLIENT_E_CONNECTION, 0, VEIL_E_NOMEM,
                            "out of memory");
    }
    *out = k;
    return VEIL_CLIENT_OK;
}

/* During a rotation a pin may name the gateway's next key: when
 * /pki/next_public_key serves the pinned key, it replaces *k (the
 * current key, which the pin refused) and 1 is returned; else 0 and *k
 * stays. */
static int pinned_next_key(veil_client *c, const char *url, veil_cl_keyref **k,
                           unsigned *bits)
{
    veil_client_error ignored;
    veil_cl_keyref *n = NULL;

    if (!c->has_pin || get_key(c, url, "/pki/next_public_key", &n, bits,
                               &ignored) != VEIL_CLIENT_OK)
        return 0;
    if (CRYPTO_memcmp(n->fp, c->pin, 32) != 0) {
        veil_cl_keyref_put(n);
        return 0;
    }
    veil_logf(&c->log, VEIL_LOG_INFO,
              "the pinned key %s is the gateway's next key "
              "(/pki/next_public_key, a rotation under way): sealing to it",
              n->fp_text);
    veil_cl_keyref_put(*k);
    *k = n;
    return 1;
}

/* GETs url/pki/public_key into a new keyref, checked (steps 1 and 2); a
 * pin that names the gateway's next key takes that one. */
static veil_client_status fetch_server_key(veil_client *c, const char *url,
                                           veil_cl_keyref **out,
                                           veil_client_error *err)
{
    char shown[512];
    veil_cl_keyref *k;
    unsigned bits = 0;
    veil_client_status st = get_key(c, url, "/pki/public_key", &k, &bits, err);

    *out = NULL;
    if (st != VEIL_CLIENT_OK)
        return st;
    if (c->has_pin && CRYPTO_memcmp(k->fp, c->pin, 32) != 0)
        pinned_next_key(c, url, &k, &bits);
    if ((st = key_allowed(c, url, k, err)) != VEIL_CLIENT_OK) {
        veil_cl_keyref_put(k);
        return st;
    }
    veil_cl_redact_url(url, shown, sizeof shown);
    veil_logf(&c->log, VEIL_LOG_INFO, "server key of %s: RSA-%u %s", shown,
              bits, k->fp_text);
    *out = k;
    return VEIL_CLIENT_OK;
}

/* The cached key for url, fetched when missing or when `stale` (the key
 * the caller found wanting) is still the cached one. */
veil_client_status veil_cl_server_key(veil_client *c, const char *url,
                                      const veil_cl_keyref *stale,
                                      veil_cl_keyref **out,
                                      veil_client_error *err)
{
    pthread_mutex_lock(&c->lock);
    int slot = -1;
    for (int i = 0; i < VEIL_CL_SERVER_CACHE && slot < 0; i++)
        if (c->servers[i] && !strcmp(c->servers[i]->url, url))
            slot = i;
    if (slot >= 0 && c->servers[slot] != stale) {
        *out = veil_cl_keyref_get(c->servers[slot]);
        pthread_mutex_unlock(&c->lock);
        return VEIL_CLIENT_OK;
    }
    pthread_mutex_unlock(&c->lock);

    veil_cl_keyref *k;
    veil_client_status st = fetch_server_key(c, url, &k, err);
    if (st != VEIL_CLIENT_OK)
        return st;
    pthread_mutex_lock(&c->lock);
    if (slot < 0 || c->servers[slot] == NULL ||
        strcmp(c->servers[slot]->url, url) != 0) {
        slot = VEIL_CL_SERVER_CACHE - 1;
        for (int i = 0; i < VEIL_CL_SERVER_CACHE; i++)
            if (c->servers[i] == NULL) {
                slot = i;
                break;
            }
    }
    veil_cl_keyref_put(c->servers[slot]);
    c->servers[slot] = veil_cl_keyref_get(k);
    pthread_mutex_unlock(&c->lock);
    *out = k;
    return VEIL_CLIENT_OK;
}

/* ---- protocol v2's per-URL state (c->lock held) ------------------------ */

/* The slot of url, made (a free one, else the last evicted) when `make`;
 * NULL when absent or out of memory. */
veil_cl_v2_slot *veil_cl_v2_slot_find(veil_client *c, const char *url, int make)
{
    veil_cl_v2_slot *free_slot = NULL;
    for (int i = 0; i < VEIL_CL_SERVER_CACHE; i++) {
        if (c->v2[i].url && !strcmp(c->v2[i].url, url))
            return &c->v2[i];
        if (c->v2[i].url == NULL && free_slot == NULL)
            free_slot = &c->v2[i];
    }
    if (!make)
        return NULL;
    if (free_slot == NULL) {
        free_slot = &c->v2[VEIL_CL_SERVER_CACHE - 1];
        free(free_slot->url);
    }
    memset(free_slot, 0, sizeof *free_slot);
    if ((free_slot->url = strdup(url)) == NULL)
        return NULL;
    return free_slot;
}
