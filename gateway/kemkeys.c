/* gateway/kemkeys.c: protocol v2's KEM keys (docs/PROTOCOL-V2.md 4.2).
 *
 * Two slots: the current key, listed in the key configurations, and the
 * one it replaced, which still opens requests for the grace period and is
 * then destroyed in its provider (C_DestroyObject in a token).  A thread
 * of its own rotates and destroys on time, whether requests come or not:
 * forward secrecy must not wait for traffic.  Requests open under a read
 * lock (many at once); rotation makes the new key outside the lock and
 * swaps under the write lock, so no key is destroyed while a request uses
 * it.  With kem_keys = tpm the keys are TPM objects (the tpm2 provider in
 * the TPM module's connection), each certified by the long-term AK when
 * it is made, the certification kept with it (GET /v2/keys/certify), and
 * flushed from the TPM at destruction.  With kem_x25519 = on (software
 * keys only), each P-256 key has an X25519 companion made in software
 * with it, listed after it, and destroyed with it: one schedule for
 * both.  Its key ID is the P-256 key's with the top bit flipped, so that
 * the four keys alive at once (two of each KEM) never share an ID.  Knows
 * nothing of HTTP. */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway.h"
#include "ohttp.h"

#define LABEL_MAX 32
#define RETRY_S 10    /* after a failed rotation */
#define X_ID_BIT 0x80 /* a companion's key ID: its P-256 key's ^ this */

/* One KEM key and its key configuration. */
typedef struct kem_key {
    veil_key *key;      /* the P-256 private key in its provider; NULL for
                           an X25519 companion */
    veil_hpke_key *hpk; /* HPKE's view of it (borrows key); a companion's
                           own software key */
    veil_ohttp_keyconfig cfg;
    time_t made, retired;   /* retired: 0 while current */
    char *certify;          /* the TPM's certification (JSON), or NULL */
    struct kem_key *x25519; /* the companion (kem_x25519 = on), or NULL */
} kem_key;

struct gw_kem {
    veil_engine *e;
    char *where; /* the token's reference, "software" or "tpm2:" */
    int in_token;
    int x25519;  /* each key has an X25519 companion */
    gw_tpm *tpm; /* the keys are its TPM's objects; NULL: they are not */
    unsigned rotate_s, grace_s;
    veil_logger log;
    pthread_rwlock_t lock; /* the slots */
    kem_key *cur, *prev;
    pthread_mutex_t tick_lock; /* the thread's sleep and stop */
    pthread_cond_t tick;
    int stop, thread_up;
    pthread_t thread;
};

/* The suites a veil key configuration lists: AES-256-GCM first. */
static const veil_ohttp_alg suites[] = {
    {VEIL_HPKE_KDF_SHA256, VEIL_HPKE_AEAD_AES256GCM},
    {VEIL_HPKE_KDF_SHA256, VEIL_HPKE_AEAD_AES128GCM},
};

static void key_destroy(gw_kem *k, kem_key *kk)
{
    if (kk == NULL)
        return;
    key_destroy(k, kk->x25519);
    veil_hpke_key_free(kk->hpk);
    if (kk->key && veil_key_delete(k->e, kk->key) != VEIL_OK)
        veil_logf(&k->log, VEIL_LOG_ERROR,
                  "v2: KEM key %u could not be destroyed: %s",
                  (unsigned)kk->cfg.key_id, veil_last_error()->message);
    else
        veil_logf(&k->log, VEIL_LOG_INFO, "v2: KEM key %u destroyed%s",
                  (unsigned)kk->cfg.key_id,
                  k->tpm ? " (flushed from the TPM)" : "");
    free(kk->certify);
    free(kk);
}

static void config_fill(veil_ohttp_keyconfig *cfg, uint8_t key_id, uint16_t kem,
                        size_t pk_len)
{
    cfg->key_id = key_id;
    cfg->kem = kem;
    cfg->pk_len = pk_len;
    memcpy(cfg->algs, suites, sizeof suites);
    cfg->n_algs = sizeof suites / sizeof suites[0];
}

/* The X25519 companion of P-256 key key_id, in software. */
static kem_key *x25519_make(uint8_t key_id, char *err, size_t err_size)
{
    kem_key *kx = calloc(1, sizeof *kx);
    size_t pk_len = sizeof kx->cfg.pk;

    if (kx == NULL) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    if (veil_hpke_key_generate(VEIL_HPKE_KEM_X25519, &kx->hpk) != VEIL_OK ||
        veil_hpke_key_public(kx->hpk, kx->cfg.pk, &pk_len) != VEIL_OK) {
        snprintf(err, err_size, "v2: an X25519 KEM key could not be made: %s",
                 veil_last_error()->message);
        veil_hpke_key_free(kx->hpk);
        free(kx);
        return NULL;
    }
    config_fill(&kx->cfg, (uint8_t)(key_id ^ X_ID_BIT), VEIL_HPKE_KEM_X25519,
                pk_len);
    return kx;
}

/* A new key with this key ID, in the provider of the set, and its
 * companion when the set has them. */
static kem_key *key_make(gw_kem *k, uint8_t key_id, char *err, size_t err_size)
{
    char label[LABEL_MAX];
    veil_keygen_params kp = {.type = VEIL_KEY_EC_P256,
                             .label = label,
                             .session_only = k->in_token,
                             .derive = 1};
    kem_key *kk = calloc(1, sizeof *kk);
    size_t pk_len = sizeof kk->cfg.pk;

    snprintf(label, sizeof label, "veil-kem-%u", (unsigned)key_id);
    if (kk == NULL) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    veil_rc rc = veil_key_generate(k->e, k->where, &kp, &kk->key);
    if (rc == VEIL_E_UNSUPPORTED && kp.session_only) {
        /* a token without session keys (its quirk row): a token object,
         * deleted at destruction all the same */
        kp.session_only = 0;
        rc = veil_key_generate(k->e, k->where, &kp, &kk->key);
    }
    if (rc != VEIL_OK ||
        veil_hpke_key_from_engine(kk->key, &kk->hpk) != VEIL_OK ||
        veil_hpke_key_public(kk->hpk, kk->cfg.pk, &pk_len) != VEIL_OK) {
        snprintf(err, err_size, "v2: a KEM key could not be made: %s",
                 veil_last_error()->message);
        key_destroy(k, kk);
        return NULL;
    }
    if (k->tpm &&
        gw_tpm_certify_kem(k->tpm, kk->key, key_id, kk->cfg.pk, pk_len,
                           &kk->certify, err, err_size) != GW_OK) {
        key_destroy(k, kk);
        return NULL;
    }
    config_fill(&kk->cfg, key_id, VEIL_HPKE_KEM_P256, pk_len);
    if (k->x25519 &&
        (kk->x25519 = x25519_make(key_id, err, err_size)) == NULL) {
        key_destroy(k, kk);
        return NULL;
    }
    kk->made = time(NULL);
    return kk;
}

/* Destroys the previous key once its grace is over, and replaces the
 * current one when its time has come.  The thread's one step. */
static void kem_step(gw_kem *k, time_t now)
{
    kem_key *old = NULL, *fresh = NULL;
    char err[320];

    pthread_rwlock_rdlock(&k->lock);
    int expire = k->prev && now >= k->prev->retired + (time_t)k->grace_s;
    int rotate = now >= k->cur->made + (time_t)k->rotate_s;
    uint8_t next_id = (uint8_t)(k->cur->cfg.key_id + 1);
    pthread_rwlock_unlock(&k->lock);
    if (rotate && (fresh = key_make(k, next_id, err, sizeof err)) == NULL) {
        veil_logf(&k->log, VEIL_LOG_ERROR,
                  "%s (the current key stays; next try in %d s)", err, RETRY_S);
        pthread_rwlock_wrlock(&k->lock);
        k->cur->made = now + RETRY_S - (time_t)k->rotate_s;
        pthread_rwlock_unlock(&k->lock);
    }
    if (!expire && fresh == NULL)
        return;
    pthread_rwlock_wrlock(&k->lock);
    if (fresh) { /* the one in grace goes now: grace <= rotate */
        old = k->prev;
        k->prev = k->cur;
        k->prev->retired = now;
        k->cur = fresh;
    } else if (expire) {
        old = k->prev;
        k->prev = NULL;
    }
    pthread_rwlock_unlock(&k->lock);
    if (fresh)
        veil_logf(&k->log, VEIL_LOG_INFO, "v2: KEM key %u replaces key %u%s",
                  (unsigned)fresh->cfg.key_id, (unsigned)(next_id - 1),
                  fresh->x25519 ? " (and its X25519 companion)" : "");
    key_destroy(k, old);
}

/* The next time kem_step has work. */
static time_t next_event(gw_kem *k)
{
    pthread_rwlock_rdlock(&k->lock);
    time_t t = k->cur->made + (time_t)k->rotate_s;
    if (k->prev && k->prev->retired + (time_t)k->grace_s < t)
        t = k->prev->retired + (time_t)k->grace_s;
    pthread_rwlock_unlock(&k->lock);
    return t;
}

static void *kem_thread(void *arg)
{
    gw_kem *k = arg;

    pthread_mutex_lock(&k->tick_lock);
    while (!k->stop) {
        struct timespec until = {.tv_sec = next_event(k)};
        int rc = 0;

        while (!k->stop && rc != ETIMEDOUT)
            rc = pthread_cond_timedwait(&k->tick, &k->tick_lock, &until);
        if (k->stop)
            break;
        pthread_mutex_unlock(&k->tick_lock);
        kem_step(k, time(NULL));
        pthread_mutex_lock(&k->tick_lock);
    }
    pthread_mutex_unlock(&k->tick_lock);
    return NULL;
}

int gw_kem_token_derives(veil_engine *e, const char *where)
{
    veil_caps caps;

    return where && strncmp(where, "pkcs11:", 7) == 0 &&
           veil_engine_caps(e, where, &caps) == VEIL_OK &&
           (caps.mechs & VEIL_CAP_ECDH);
}

/* Where the keys are made: the TPM (k->tpm set), or the server key's
 * token when it derives, or software. */
static int kem_place(gw_kem *k, const char *where, char *err, size_t err_size)
{
    int token = !k->tpm && gw_kem_token_derives(k->e, where);

    k->in_token = token;
    if (k->x25519 && (token || k->tpm)) { /* veild.c refuses it first */
        snprintf(err, err_size,
                 "kem_x25519 = on needs the KEM keys in software");
        return -1;
    }
    k->where = strdup(k->tpm ? "tpm2:" : token ? where : "software");
    if (k->where == NULL) {
        snprintf(err, err_size, "out of memory");
        return -1;
    }
    veil_logf(&k->log, VEIL_LOG_INFO,
              "v2: KEM keys (P-256%s) are made %s, replaced every %u s, "
              "destroyed %u s later",
              k->x25519 ? ", each with an X25519 companion" : "",
              k->tpm  ? "in the TPM (transient objects, each certified by "
                        "the attestation key)"
              : token ? "in the server key's token"
                      : "in software",
              k->rotate_s, k->grace_s);
    return 0;
}

static gw_kem *kem_open(veil_engine *e, gw_tpm *t, const char *where,
                        int x25519, unsigned rotate_s, unsigned grace_s,
                        const veil_logger *log, char *err, size_t err_size)
{
    gw_kem *k = calloc(1, sizeof *k);
    uint8_t id0;

    if (k == NULL) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    k->e = e;
    k->tpm = t;
    k->x25519 = x25519;
    k->rotate_s = rotate_s;
    k->grace_s = grace_s;
    k->log = *log;
    pthread_rwlock_init(&k->lock, NULL);
    pthread_mutex_init(&k->tick_lock, NULL);
    {
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_REALTIME);
        pthread_cond_init(&k->tick, &ca);
        pthread_condattr_destroy(&ca);
    }
    if (kem_place(k, where, err, err_size) != 0 ||
        veil_random(e, &id0, 1) != VEIL_OK ||
        (k->cur = key_make(k, id0, err, err_size)) == NULL)
        goto fail;
    if (pthread_create(&k->thread, NULL, kem_thread, k) != 0) {
        snprintf(err, err_size, "v2: no thread for the KEM keys");
        goto fail;
    }
    k->thread_up = 1;
    return k;
fail:
    gw_kem_free(k);
    return NULL;
}

gw_kem *gw_kem_open(veil_engine *e, const char *where, int x25519,
                    unsigned rotate_s, unsigned grace_s, const veil_logger *log,
                    char *err, size_t err_size)
{
    return kem_open(e, NULL, where, x25519, rotate_s, grace_s, log, err,
                    err_size);
}

gw_kem *gw_kem_open_tpm(veil_engine *e, gw_tpm *t, unsigned rotate_s,
                        unsigned grace_s, const veil_logger *log, char *err,
                        size_t err_size)
{
    return kem_open(e, t, NULL, 0, rotate_s, grace_s, log, err, err_size);
}

void gw_kem_free(gw_kem *k)
{
    if (k == NULL)
        return;
    if (k->thread_up) {
        pthread_mutex_lock(&k->tick_lock);
        k->stop = 1;
        pthread_cond_signal(&k->tick);
        pthread_mutex_unlock(&k->tick_lock);
        pthread_join(k->thread, NULL);
    }
    key_destroy(k, k->prev);
    key_destroy(k, k->cur);
    free(k->where);
    pthread_cond_destroy(&k->tick);
    pthread_mutex_destroy(&k->tick_lock);
    pthread_rwlock_destroy(&k->lock);
    free(k);
}

const char *gw_kem_where(const gw_kem *k)
{
    return k->tpm ? "tpm" : k->in_token ? "token" : "software";
}

gw_rc gw_kem_keys(gw_kem *k, uint8_t **body, size_t *len, time_t *rotate_at,
                  time_t *not_after)
{
    veil_ohttp_keyconfig cfgs[2];

    pthread_rwlock_rdlock(&k->lock);
    cfgs[0] = k->cur->cfg; /* P-256 first */
    if (k->cur->x25519)
        cfgs[1] = k->cur->x25519->cfg;
    veil_rc rc =
        veil_ohttp_keys_encode(cfgs, k->cur->x25519 ? 2 : 1, body, len);
    *rotate_at = k->cur->made + (time_t)k->rotate_s;
    *not_after = *rotate_at + (time_t)k->grace_s;
    pthread_rwlock_unlock(&k->lock);
    return rc == VEIL_OK ? GW_OK : GW_NOMEM;
}

/* The key with this ID in slot kk or its companion. */
static const kem_key *key_or_companion(const kem_key *kk, uint8_t key_id)
{
    if (kk->cfg.key_id == key_id)
        return kk;
    if (kk->x25519 && kk->x25519->cfg.key_id == key_id)
        return kk->x25519;
    return NULL;
}

/* The key with this ID, current or in grace (read lock held). */
static const kem_key *key_find(const gw_kem *k, uint8_t key_id, time_t now)
{
    const kem_key *kk = key_or_companion(k->cur, key_id);

    if (kk == NULL && k->prev && now < k->prev->retired + (time_t)k->grace_s)
        kk = key_or_companion(k->prev, key_id);
    return kk;
}

gw_rc gw_kem_certify(gw_kem *k, unsigned key_id, char **json)
{
    const kem_key *kk;

    *json = NULL;
    if (k->tpm == NULL)
        return GW_UNAVAILABLE;
    if (key_id > 255)
        return GW_NOT_FOUND;
    pthread_rwlock_rdlock(&k->lock);
    kk = key_find(k, (uint8_t)key_id, time(NULL));
    if (kk)
        *json = strdup(kk->certify);
    pthread_rwlock_unlock(&k->lock);
    if (kk == NULL)
        return GW_NOT_FOUND;
    return *json ? GW_OK : GW_NOMEM;
}

gw_rc gw_kem_open_request(gw_kem *k, const uint8_t *in, size_t len,
                          veil_secbuf **req, struct veil_ohttp_ctx **ctx,
                          char *err, size_t err_size)
{
    veil_ohttp_header h;
    veil_rc rc;

    *req = NULL;
    *ctx = NULL;
    if (veil_ohttp_parse_header(in, len, &h) != VEIL_OK)
        return GW_UNDECRYPTABLE;
    pthread_rwlock_rdlock(&k->lock);
    const kem_key *kk = key_find(k, h.key_id, time(NULL));
    rc = kk ? veil_ohttp_decap_request(k->e, &kk->cfg, kk->hpk, in, len, req,
                                       ctx)
            : VEIL_E_NOT_FOUND;
    pthread_rwlock_unlock(&k->lock);
    switch (rc) {
    case VEIL_OK:
        return GW_OK;
    case VEIL_E_ARG:
    case VEIL_E_UNSUPPORTED:
    case VEIL_E_NOT_FOUND:
    case VEIL_E_DECRYPT:
    case VEIL_E_KEY:
        return GW_UNDECRYPTABLE;
    case VEIL_E_NOMEM:
        return GW_NOMEM;
    default: /* the provider, not the request */
        snprintf(err, err_size, "the KEM key's provider failed (%s): %s",
                 veil_rc_name(rc), veil_last_error()->message);
        return GW_UNAVAILABLE;
    }
}
