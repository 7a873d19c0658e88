/* The engine: provider instances, routing and dispatch.
 *
 * This is the only file that looks at optional provider slots.  Routing:
 *  - a private-key operation runs in the provider holding the key, and a
 *    failure there is returned as is (no fallback);
 *  - public-key and symmetric operations run in software unless the engine
 *    was configured to use the token; when the token lacks the mechanism
 *    the engine says so at debug level and uses software.
 */
#include "config.h"

#include <limits.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "engine_int.h"
#include "tpm2_hook.h"

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* ---- provider instances ----------------------------------------------- */

/* A table is accepted when its ABI and size match and every capability
 * it claims has the slot behind it; then no other code checks slots. */
static veil_rc check_ops(const veil_provider_ops *ops)
{
    unsigned c = ops->static_caps;
    int ok = ops->abi == VEIL_PROVIDER_ABI && ops->ops_size >= sizeof *ops &&
             ops->name && ops->claims && ops->open && ops->close;

    if (c & (VEIL_CAP_RSA_OAEP_SHA256 | VEIL_CAP_RSA_OAEP_SHA1))
        ok = ok && ops->rsa_decrypt && ops->rsa_encrypt;
    if (c & VEIL_CAP_RSA_RAW)
        ok = ok && ops->rsa_decrypt;
    if (c & (VEIL_CAP_RSA_GEN | VEIL_CAP_EC_GEN))
        ok = ok && ops->key_generate && ops->key_open && ops->key_list &&
             ops->key_delete;
    if (c & VEIL_CAP_ECDSA)
        ok = ok && ops->ecdsa_sign && ops->ecdsa_verify;
    if (c & VEIL_CAP_AES_GCM)
        ok = ok && ops->aes_gcm;
    if (c & VEIL_CAP_HKDF)
        ok = ok && ops->hkdf_sha256;
    if (c & VEIL_CAP_RANDOM)
        ok = ok && ops->random;
    if (c & VEIL_CAP_ECDH)
        ok = ok && ops->ecdh_derive;
    if (!ok)
        return veil_err(VEIL_E_PROVIDER, "engine", NULL,
                        "provider %s: table rejected (ABI %u, size %zu, or a "
                        "capability without its operation)",
                        ops->name ? ops->name : "?", ops->abi, ops->ops_size);
    return VEIL_OK;
}

static const veil_provider_ops *ops_for(const veil_engine *e, const char *where)
{
    if (e->extra_ops && e->extra_ops->claims(where))
        return e->extra_ops;
    for (size_t i = 0; veil_provider_registry[i]; i++)
        if (veil_provider_registry[i]->claims(where))
            return veil_provider_registry[i];
    return NULL;
}

static void provider_free(veil_provider *p)
{
    if (!p)
        return;
    if (p->ops)
        p->ops->close(p);
    if (p->state) {
        veil_wipe(p->state, p->ops->state_size);
        free(p->state);
    }
    free(p);
}

/* The instance serving `where`, opened on first use. */
static veil_rc provider_get(veil_engine *e, const char *where,
                            veil_provider **out)
{
    const veil_provider_ops *ops;
    veil_provider *p = NULL;
    char id[256];
    veil_rc rc;

    if (!where) {
        veil_provider *d = atomic_load(&e->default_prov);
        if (d) {
            *out = d;
            return VEIL_OK;
        }
        where = e->default_token;
    }
    if (!where)
        return veil_err(VEIL_E_ARG, "engine", NULL,
                        "no token named and no default token configured");
    ops = ops_for(e, where);
    if (!ops)
        return veil_err(
            VEIL_E_ARG, "engine", NULL,
            "no provider for \"%.64s\" (expected software, dir:PATH, "
            "a pkcs11: URI or tpm2:)",
            where);
    rc = check_ops(ops);
    if (rc != VEIL_OK)
        return rc;
    if (ops->instance_id) {
        rc = ops->instance_id(e, where, id, sizeof id);
        if (rc != VEIL_OK)
            return rc;
    } else {
        snprintf(id, sizeof id, "%s", ops->name);
    }

    pthread_mutex_lock(&e->lock);
    for (size_t i = 0; i < e->n_providers; i++) {
        if (e->providers[i]->ops == ops &&
            strcmp(e->providers[i]->id, id) == 0) {
            *out = e->providers[i];
            if (where == e->default_token)
                atomic_store(&e->default_prov, *out);
            pthread_mutex_unlock(&e->lock);
            return VEIL_OK;
        }
    }
    if (e->n_providers == VEIL_MAX_PROVIDERS) {
        pthread_mutex_unlock(&e->lock);
        return veil_err(VEIL_E_NOMEM, "engine", NULL,
                        "too many tokens open (at most %d)",
                        VEIL_MAX_PROVIDERS);
    }
    p = calloc(1, sizeof *p);
    if (p && ops->state_size)
        p->state = calloc(1, ops->state_size);
    if (!p || (ops->state_size && !p->state)) {
        pthread_mutex_unlock(&e->lock);
        if (p)
            free(p);
        return veil_err(VEIL_E_NOMEM, "engine", NULL, "out of memory");
    }
    p->ops = ops;
    p->engine = e;
    snprintf(p->id, sizeof p->id, "%s", id);
    p->caps.mechs = ops->static_caps;
    snprintf(p->caps.provider, sizeof p->caps.provider, "%s", ops->name);
    /* Opening under the lock keeps one instance per token even when many
     * threads ask at once; it happens once per token. */
    rc = ops->open(p, where);
    if (rc != VEIL_OK) {
        pthread_mutex_unlock(&e->lock);
        p->ops = NULL; /* open failed: nothing to close */
        if (p->state) {
            veil_wipe(p->state, ops->state_size);
            free(p->state);
        }
        free(p);
        return rc;
    }
    /* open() may only narrow what the table promised. */
    p->caps.mechs &= ops->static_caps;
    e->providers[e->n_providers++] = p;
    pthread_mutex_unlock(&e->lock);
    veil_log(e, VEIL_LOG_DEBUG, "%s: opened %s (%s)", ops->name, p->id,
             p->caps.description);
    if (where == e->default_token)
        atomic_store(&e->default_prov, p);
    *out = p;
    return VEIL_OK;
}

void veil_engine_set_observer(veil_engine *e, veil_op_observer_fn fn, void *ctx)
{
    if (e) {
        e->observe = fn;
        e->observe_ctx = ctx;
    }
}

static double mono_now(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

double veil_op_start(const veil_engine *e)
{
    return e->observe ? mono_now() : 0.0;
}

veil_rc veil_op_done(const veil_engine *e, const veil_provider *p,
                     const char *operation, double t0, veil_rc rc)
{
    if (e->observe) {
        double dt = mono_now() - t0;
        e->observe(e->observe_ctx, p->ops->name, operation, dt > 0 ? dt : 0.0,
                   rc);
    }
    return rc;
}

void veil_engine_test_set_extra_provider(veil_engine *e,
                                         const veil_provider_ops *ops)
{
    e->extra_ops = ops;
}

/* ---- engine ----------------------------------------------------------- */

void veil_engine_tpm2_lend(veil_engine *e, void *esys, pthread_mutex_t *lock)
{
    e->tpm2_esys = esys;
    e->tpm2_lock = esys ? lock : NULL;
}

veil_rc veil_engine_new(const veil_engine_config *cfg, veil_engine **out)
{
    veil_engine_config none = {0};
    veil_engine *e;
    veil_rc rc;

    veil_err_clear();
    if (!out)
        return veil_err(VEIL_E_ARG, "engine", NULL, "no output handle");
    *out = NULL;
    if (!cfg)
        cfg = &none;
    veil_secmem_init(cfg->secure_heap);
    e = calloc(1, sizeof *e);
    if (!e)
        return veil_err(VEIL_E_NOMEM, "engine", NULL, "out of memory");
    e->cfg = *cfg;
    e->pkcs11_module = dup_or_null(cfg->pkcs11_module);
    e->default_token = dup_or_null(cfg->default_token);
    e->pin_where = dup_or_null(cfg->pin.where);
    e->pin_memory_dir = dup_or_null(cfg->pin_memory_dir);
    e->cfg.pin_memory_dir = e->pin_memory_dir;
    e->cfg.pkcs11_module = e->pkcs11_module;
    e->cfg.default_token = e->default_token;
    e->cfg.pin.where = e->pin_where;
    pthread_mutex_init(&e->lock, NULL);
    if ((cfg->pkcs11_module && !e->pkcs11_module) ||
        (cfg->default_token && !e->default_token) ||
        (cfg->pin.where && !e->pin_where) ||
        (cfg->pin_memory_dir && !e->pin_memory_dir)) {
        veil_engine_free(e);
        return veil_err(VEIL_E_NOMEM, "engine", NULL, "out of memory");
    }
    rc = provider_get(e, "software", &e->software);
    if (rc != VEIL_OK) {
        veil_engine_free(e);
        return rc;
    }
    *out = e;
    return VEIL_OK;
}

void veil_engine_free(veil_engine *e)
{
    if (!e)
        return;
    /* Tokens first, in reverse order of opening. */
    for (size_t i = e->n_providers; i-- > 0;)
        provider_free(e->providers[i]);
    pthread_mutex_destroy(&e->lock);
    free(e->pkcs11_module);
    free(e->default_token);
    free(e->pin_where);
    free(e->pin_memory_dir);
    free(e);
}

veil_rc veil_engine_caps(veil_engine *e, const char *where, veil_caps *caps)
{
    veil_provider *p;
    veil_rc rc;

    veil_err_clear();
    if (!e || !caps)
        return veil_err(VEIL_E_ARG, "engine", NULL, "caps: missing argument");
    rc = provider_get(e, where, &p);
    if (rc != VEIL_OK)
        return rc;
    *caps = p->caps;
    return VEIL_OK;
}

/* ---- keys ------------------------------------------------------------- */

static veil_rc key_alloc(veil_provider *p, veil_key **out)
{
    veil_key *k = calloc(1, sizeof *k);

    if (k && p->ops->key_state_size)
        k->state = calloc(1, p->ops->key_state_size);
    if (!k || (p->ops->key_state_size && !k->state)) {
        free(k);
        return veil_err(VEIL_E_NOMEM, "engine", NULL, "out of memory");
    }
    k->prov = p;
    *out = k;
    return VEIL_OK;
}

void veil_key_free(veil_key *k)
{
    if (!k)
        return;
    if (k->prov && k->prov->ops->key_release)
        k->prov->ops->key_release(k->prov, k);
    EVP_PKEY_free(k->pub);
    if (k->state) {
        veil_wipe(k->state, k->prov->ops->key_state_size);
        free(k->state);
    }
    free(k);
}

/* Result of a key-making provider call: hands the key out or frees it. */
static veil_rc key_finish(veil_rc rc, veil_key *k, veil_key **out)
{
    if (rc == VEIL_OK && !k->pub)
        rc = veil_err(VEIL_E_PROVIDER, k->prov->ops->name, NULL,
                      "provider returned a key without its public half");
    if (rc != VEIL_OK) {
        veil_key_free(k);
        return rc;
    }
    *out = k;
    return VEIL_OK;
}

struct ticker {
    veil_progress_fn fn;
    void *ctx;
    atomic_int done;
};

static void *ticker_main(void *arg)
{
    struct ticker *t = arg;
    struct timespec ts = {0, 200 * 1000 * 1000};

    while (!atomic_load(&t->done)) {
        t->fn(t->ctx);
        nanosleep(&ts, NULL);
    }
    return NULL;
}

veil_rc veil_key_generate(veil_engine *e, const char *where,
                          const veil_keygen_params *kp, veil_key **out)
{
    struct ticker t = {0};
    pthread_t thread;
    int ticking = 0;
    veil_provider *p;
    veil_key *k;
    veil_rc rc;

    veil_err_clear();
    if (!e || !kp || !out)
        return veil_err(VEIL_E_ARG, "engine", NULL,
                        "generate: missing argument");
    *out = NULL;
    if (kp->type == VEIL_KEY_RSA && kp->bits != 2048 && kp->bits != 3072 &&
        kp->bits != 4096)
        return veil_err(VEIL_E_ARG, "engine", NULL,
                        "RSA key size %u not offered (2048, 3072 or 4096)",
                        kp->bits);
    if (kp->type != VEIL_KEY_RSA && kp->type != VEIL_KEY_EC_P256)
        return veil_err(VEIL_E_ARG, "engine", NULL, "unknown key type %d",
                        (int)kp->type);
    rc = provider_get(e, where, &p);
    if (rc != VEIL_OK)
        return rc;
    if (!p->ops->key_generate)
        return veil_err(VEIL_E_UNSUPPORTED, p->ops->name, NULL,
                        "cannot generate keys");
    if (kp->type == VEIL_KEY_RSA &&
        (!(p->caps.mechs & VEIL_CAP_RSA_GEN) ||
         (p->caps.rsa_max_bits && kp->bits > p->caps.rsa_max_bits) ||
         kp->bits < p->caps.rsa_min_bits))
        return veil_err(VEIL_E_UNSUPPORTED, p->ops->name, NULL,
                        "%s cannot generate RSA-%u (supports %u..%u bits)",
                        p->caps.description, kp->bits, p->caps.rsa_min_bits,
                        p->caps.rsa_max_bits);
    if (kp->type == VEIL_KEY_EC_P256 && !(p->caps.mechs & VEIL_CAP_EC_GEN))
        return veil_err(VEIL_E_UNSUPPORTED, p->ops->name, NULL,
                        "%s cannot generate EC keys", p->caps.description);
    rc = key_alloc(p, &k);
    if (rc != VEIL_OK)
        return rc;
    if (kp->progress) {
        t.fn = kp->progress;
        t.ctx = kp->progress_ctx;
        ticking = pthread_create(&thread, NULL, ticker_main, &t) == 0;
    }
    rc = p->ops->key_generate(p, kp, k);
    if (ticking) {
        atomic_store(&t.done, 1);
        pthread_join(thread, NULL);
    }
    if (rc == VEIL_OK)
        veil_log(e, VEIL_LOG_INFO, "%s: generated %s-%u key \"%s\"",
                 p->ops->name, k->type == VEIL_KEY_RSA ? "RSA" : "EC", k->bits,
                 k->label);
    return key_finish(rc, k, out);
}

/* A reference some provider claims ("pkcs11:", "dir:", ...), as opposed
 * to a bare label for the default token. */
static int is_provider_ref(const veil_engine *e, const char *ref)
{
    return ops_for(e, ref) != NULL;
}

veil_rc veil_key_open(veil_engine *e, const char *ref, veil_key **out)
{
    veil_provider *p;
    veil_key *k;
    veil_rc rc;

    veil_err_clear();
    if (!e || !ref || !*ref || !out)
        return veil_err(VEIL_E_ARG, "engine", NULL, "open: missing argument");
    *out = NULL;
    /* A bare label is looked up in the default token. */
    rc = provider_get(e, is_provider_ref(e, ref) ? ref : NULL, &p);
    if (rc != VEIL_OK)
        return rc;
    if (!p->ops->key_open)
        return veil_err(VEIL_E_UNSUPPORTED, p->ops->name, NULL,
                        "cannot open keys");
    rc = key_alloc(p, &k);
    if (rc != VEIL_OK)
        return rc;
    return key_finish(p->ops->key_open(p, ref, k), k, out);
}

veil_rc veil_key_from_public(veil_engine *e, const uint8_t *data, size_t len,
                             veil_key **out)
{
    const unsigned char *q = data;
    EVP_PKEY *pkey = NULL;
    veil_key *k;
    veil_rc rc;

    veil_err_clear();
    if (!e || !data || !len || !out)
        return veil_err(VEIL_E_ARG, "engine", NULL,
                        "public key: missing argument");
    *out = NULL;
    if (len > INT_MAX)
        return veil_err(VEIL_E_ARG, "engine", NULL, "public key too long");
    if (len > 11 && memcmp(data, "-----BEGIN ", 11) == 0) {
        BIO *bio = BIO_new_mem_buf(data, (int)len);
        if (bio)
            pkey = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
        BIO_free(bio);
    } else if (len <= LONG_MAX) {
        pkey = d2i_PUBKEY(NULL, &q, (long)len);
        if (pkey && q != data + len) { /* trailing garbage */
            EVP_PKEY_free(pkey);
            pkey = NULL;
        }
    }
    if (!pkey)
        return veil_err_ossl(VEIL_E_KEY, "software", "not an SPKI public key");
    rc = key_alloc(e->software, &k);
    if (rc != VEIL_OK) {
        EVP_PKEY_free(pkey);
        return rc;
    }
    k->pub = pkey;
    k->bits = (unsigned)EVP_PKEY_get_bits(pkey);
    if (EVP_PKEY_is_a(pkey, "RSA")) {
        k->type = VEIL_KEY_RSA;
    } else if (EVP_PKEY_is_a(pkey, "EC")) {
        char group[32] = "";
        EVP_PKEY_get_utf8_string_param(pkey, "group", group, sizeof group,
                                       NULL);
        if (strcmp(group, "prime256v1") != 0 && strcmp(group, "P-256") != 0) {
            veil_key_free(k);
            return veil_err(VEIL_E_KEY, "software", NULL,
                            "EC curve %s not supported (P-256 only)",
                            group[0] ? group : "unknown");
        }
        k->type = VEIL_KEY_EC_P256;
    } else {
        veil_key_free(k);
        return veil_err(VEIL_E_KEY, "software", NULL,
                        "public key is neither RSA nor EC P-256");
    }
    *out = k;
    return VEIL_OK;
}

veil_rc veil_spki_der(EVP_PKEY *pkey, uint8_t **der, size_t *len)
{
    unsigned char *buf = NULL;
    int n = i2d_PUBKEY(pkey, &buf);

    if (n <= 0)
        return veil_err_ossl(VEIL_E_CRYPTO, "engine", "cannot encode SPKI");
    *der = malloc((size_t)n);
    if (!*der) {
        OPENSSL_free(buf);
        return veil_err(VEIL_E_NOMEM, "engine", NULL, "out of memory");
    }
    memcpy(*der, buf, (size_t)n);
    OPENSSL_free(buf);
    *len = (size_t)n;
    return VEIL_OK;
}

veil_rc veil_key_public_der(const veil_key *k, uint8_t **der, size_t *len)
{
    veil_err_clear();
    if (!k || !der || !len)
        return veil_err(VEIL_E_ARG, "engine", NULL, "missing argument");
    return veil_spki_der(k->pub, der, len);
}

veil_rc veil_key_public_pem(const veil_key *k, char **pem)
{
    BIO *bio;
    char *data;
    long n;

    veil_err_clear();
    if (!k || !pem)
        return veil_err(VEIL_E_ARG, "engine", NULL, "missing argument");
    bio = BIO_new(BIO_s_mem());
    if (!bio || !PEM_write_bio_PUBKEY(bio, k->pub)) {
        BIO_free(bio);
        return veil_err_ossl(VEIL_E_CRYPTO, "engine", "cannot encode PEM");
    }
    n = BIO_get_mem_data(bio, &data);
    *pem = malloc((size_t)n + 1);
    if (!*pem) {
        BIO_free(bio);
        return veil_err(VEIL_E_NOMEM, "engine", NULL, "out of memory");
    }
    memcpy(*pem, data, (size_t)n);
    (*pem)[n] = '\0';
    BIO_free(bio);
    return VEIL_OK;
}

veil_rc veil_key_fingerprint(const veil_key *k, uint8_t out[32])
{
    uint8_t *der;
    size_t len;
    veil_rc rc;

    veil_err_clear();
    if (!k || !out)
        return veil_err(VEIL_E_ARG, "engine", NULL, "missing argument");
    rc = veil_spki_der(k->pub, &der, &len);
    if (rc != VEIL_OK)
        return rc;
    if (!EVP_Digest(der, len, out, NULL, EVP_sha256(), NULL))
        rc = veil_err_ossl(VEIL_E_CRYPTO, "engine", "SHA-256");
    free(der);
    return rc;
}

void veil_key_info_base(const veil_key *k, veil_key_info *info)
{
    uint8_t fp[32];

    memset(info, 0, sizeof *info);
    info->type = k->type;
    info->bits = k->bits;
    snprintf(info->provider, sizeof info->provider, "%s", k->prov->ops->name);
    snprintf(info->label, sizeof info->label, "%s", k->label);
    veil_hex(k->id, k->id_len < 64 ? k->id_len : 64, info->id_hex);
    info->has_private = k->has_private;
    info->persistent = k->persistent;
    info->sensitive = -1;
    info->extractable = -1;
    if (veil_key_fingerprint(k, fp) == VEIL_OK) {
        memcpy(info->fingerprint, "sha256:", 7);
        veil_hex(fp, 32, info->fingerprint + 7);
    }
}

veil_rc veil_key_get_info(const veil_key *k, veil_key_info *info)
{
    veil_err_clear();
    if (!k || !info)
        return veil_err(VEIL_E_ARG, "engine", NULL, "missing argument");
    veil_key_info_base(k, info);
    if (k->prov->ops->key_info)
        return k->prov->ops->key_info(k->prov, k, info);
    return VEIL_OK;
}

veil_rc veil_key_list(veil_engine *e, const char *where, veil_key_list_fn cb,
                      void *ctx)
{
    veil_provider *p;
    veil_rc rc;

    veil_err_clear();
    if (!e || !cb)
        return veil_err(VEIL_E_ARG, "engine", NULL, "list: missing argument");
    rc = provider_get(e, where, &p);
    if (rc != VEIL_OK)
        return rc;
    if (!p->ops->key_list)
        return veil_err(VEIL_E_UNSUPPORTED, p->ops->name, NULL,
                        "cannot list keys");
    return p->ops->key_list(p, where ? where : e->default_token, cb, ctx);
}

veil_rc veil_key_delete(veil_engine *e, veil_key *k)
{
    veil_rc rc = VEIL_OK;

    veil_err_clear();
    if (!e || !k)
        return veil_err(VEIL_E_ARG, "engine", NULL, "delete: missing argument");
    if (k->prov->ops->key_delete)
        rc = k->prov->ops->key_delete(k->prov, k);
    veil_key_free(k);
    return rc;
}

veil_rc veil_key_save(veil_engine *e, const veil_key *k, const char *dir,
                      const veil_pin_source *password)
{
    veil_err_clear();
    if (!e || !k || !dir)
        return veil_err(VEIL_E_ARG, "engine", NULL, "save: missing argument");
    if (!k->has_private || !k->prov->ops->key_save)
        return veil_err(VEIL_E_UNSUPPORTED, k->prov->ops->name, NULL,
                        "only software private keys can be saved to files "
                        "(token keys stay in the token)");
    return k->prov->ops->key_save(k->prov, k, dir, password);
}

/* ---- routing ---------------------------------------------------------- */

/* The token to use for a public or symmetric operation, or NULL for
 * software.  `cap` is the mechanism needed (check_ops guarantees the slot
 * behind each capability exists). */
static veil_provider *route(veil_engine *e, unsigned flag, const veil_key *k,
                            unsigned cap, const char *what)
{
    veil_provider *p = NULL;

    if (!(e->cfg.flags & flag))
        return NULL;
    if (k && k->prov != e->software) {
        p = k->prov;
    } else if (!e->default_token) {
        return NULL;
    } else if (provider_get(e, NULL, &p) != VEIL_OK) {
        veil_log(e, VEIL_LOG_DEBUG,
                 "%s: default token unavailable (%s); using software", what,
                 veil_last_error()->message);
        veil_err_clear();
        return NULL;
    }
    if (!(p->caps.mechs & cap)) {
        veil_log(e, VEIL_LOG_DEBUG,
                 "%s: %s lacks the mechanism; computing in software", what,
                 p->caps.description);
        return NULL;
    }
    return p;
}

static veil_rc need_key(const veil_key *k, veil_key_type type, int priv,
                        const char *what)
{
    if (!k)
        return veil_err(VEIL_E_ARG, "engine", NULL, "%s: no key", what);
    if (k->type != type)
        return veil_err(VEIL_E_KEY, k->prov->ops->name, NULL, "%s needs %s key",
                        what, type == VEIL_KEY_RSA ? "an RSA" : "an EC P-256");
    if (priv && !k->has_private)
        return veil_err(VEIL_E_KEY, k->prov->ops->name, NULL,
                        "%s needs a private key; this is a public key", what);
    return VEIL_OK;
}

/* OAEP parameters a provider may be given: a hash from the enum, and a
 * label pointer whenever a label length is.  Anything else is refused here,
 * before a provider indexes a table with it. */
static veil_rc oaep_args(const veil_oaep *oaep, const char *what)
{
    if (!oaep)
        return VEIL_OK;
    if (oaep->hash != VEIL_HASH_SHA256 && oaep->hash != VEIL_HASH_SHA1)
        return veil_err(VEIL_E_ARG, "engine", NULL,
                        "%s: unknown OAEP hash %d (VEIL_HASH_SHA256 or "
                        "VEIL_HASH_SHA1)",
                        what, (int)oaep->hash);
    if (oaep->label_len && !oaep->label)
        return veil_err(VEIL_E_ARG, "engine", NULL, "OAEP label missing");
    return VEIL_OK;
}

veil_rc veil_rsa_encrypt(veil_engine *e, const veil_key *pub,
                         const veil_oaep *oaep, const uint8_t *in,
                         size_t in_len, uint8_t *out, size_t *out_len)
{
    veil_provider *p;
    veil_rc rc;

    veil_err_clear();
    if (!e || !in || !out || !out_len)
        return veil_err(VEIL_E_ARG, "engine", NULL,
                        "encrypt: missing argument");
    rc = need_key(pub, VEIL_KEY_RSA, 0, "RSA-OAEP encrypt");
    if (rc == VEIL_OK)
        rc = oaep_args(oaep, "RSA-OAEP encrypt");
    if (rc != VEIL_OK)
        return rc;
    p = route(e, VEIL_ENGINE_PUBLIC_IN_TOKEN, pub, veil_oaep_cap(oaep),
              "RSA-OAEP encrypt");
    if (p) {
        double t0 = veil_op_start(e);
        rc = p->ops->rsa_encrypt(p, pub, oaep, in, in_len, out, out_len);
        if (rc != VEIL_E_UNSUPPORTED)
            return veil_op_done(e, p, "rsa_encrypt", t0, rc);
        veil_log(e, VEIL_LOG_DEBUG, "RSA-OAEP encrypt: %s; using software",
                 veil_last_error()->message);
        veil_err_clear();
    }
    p = e->software;
    double t0 = veil_op_start(e);
    rc = p->ops->rsa_encrypt(p, pub, oaep, in, in_len, out, out_len);
    return veil_op_done(e, p, "rsa_encrypt", t0, rc);
}

static int rsa_ciphertext_in_range(const veil_key *k, const uint8_t *in,
                                   size_t in_len)
{
    BIGNUM *n = NULL, *c;
    int ok;

    if (in_len != (k->bits + 7) / 8 || !EVP_PKEY_get_bn_param(k->pub, "n", &n))
        return 0;
    c = BN_bin2bn(in, (int)in_len, NULL);
    ok = c && BN_cmp(c, n) < 0;
    BN_free(c);
    BN_free(n);
    return ok;
}

veil_rc veil_rsa_decrypt(veil_engine *e, const veil_key *priv,
                         const veil_oaep *oaep, const uint8_t *in,
                         size_t in_len, veil_secbuf **out)
{
    veil_rc rc;

    veil_err_clear();
    if (!e || !in || !out)
        return veil_err(VEIL_E_ARG, "engine", NULL,
                        "decrypt: missing argument");
    *out = NULL;
    rc = need_key(priv, VEIL_KEY_RSA, 1, "RSA-OAEP decrypt");
    if (rc == VEIL_OK)
        rc = oaep_args(oaep, "RSA-OAEP decrypt");
    if (rc != VEIL_OK)
        return rc;
    /* A ciphertext of the wrong length or not below the modulus is refused
     * here, from public facts, before any token sees it (a TPM can fail
     * hard on such input); same code and message as any other failure. */
    if (!rsa_ciphertext_in_range(priv, in, in_len))
        return veil_err(VEIL_E_DECRYPT, priv->prov->ops->name, NULL,
                        "decryption failed");
    if (!priv->prov->ops->rsa_decrypt)
        return veil_err(VEIL_E_UNSUPPORTED, priv->prov->ops->name, NULL,
                        "cannot decrypt");
    /* Private-key operation: always the holder, never a fallback. */
    double t0 = veil_op_start(e);
    rc = priv->prov->ops->rsa_decrypt(priv->prov, priv, oaep, in, in_len, out);
    return veil_op_done(e, priv->prov, "rsa_decrypt", t0, rc);
}

static veil_rc gcm_args(const uint8_t *key, size_t key_len, const uint8_t *iv,
                        size_t iv_len, const uint8_t *aad, size_t aad_len,
                        const uint8_t *in, size_t len, const uint8_t *out,
                        const uint8_t *tag)
{
    if (!key || (key_len != 16 && key_len != 24 && key_len != 32))
        return veil_err(VEIL_E_ARG, "engine", NULL,
                        "AES-GCM key must be 16, 24 or 32 bytes (got %zu)",
                        key_len);
    if (!iv || iv_len == 0)
        return veil_err(VEIL_E_ARG, "engine", NULL,
                        "AES-GCM nonce must not be empty");
    if ((aad_len && !aad) || (len && (!in || !out)) || !tag)
        return veil_err(VEIL_E_ARG, "engine", NULL, "AES-GCM: missing buffer");
    if (len > ((uint64_t)1 << 36) - 32 || len > INT32_MAX ||
        aad_len > INT32_MAX)
        return veil_err(VEIL_E_ARG, "engine", NULL, "AES-GCM: input too long");
    return VEIL_OK;
}

static veil_rc aes_gcm(veil_engine *e, int enc, const uint8_t *key,
                       size_t key_len, const uint8_t *iv, size_t iv_len,
                       const uint8_t *aad, size_t aad_len, const uint8_t *in,
                       size_t len, uint8_t *out, uint8_t *tag)
{
    veil_provider *p;
    veil_rc rc;

    veil_err_clear();
    if (!e)
        return veil_err(VEIL_E_ARG, "engine", NULL, "AES-GCM: no engine");
    rc = gcm_args(key, key_len, iv, iv_len, aad, aad_len, in, len, out, tag);
    if (rc != VEIL_OK)
        return rc;
    p = route(e, VEIL_ENGINE_SYMMETRIC_IN_TOKEN, NULL, VEIL_CAP_AES_GCM,
              "AES-GCM");
    const char *op = enc ? "aes_gcm_seal" : "aes_gcm_open";
    if (p) {
        double t0 = veil_op_start(e);
        rc = p->ops->aes_gcm(p, enc, key, key_len, iv, iv_len, aad, aad_len, in,
                             len, out, tag);
        if (rc != VEIL_E_UNSUPPORTED)
            return veil_op_done(e, p, op, t0, rc);
        veil_log(e, VEIL_LOG_DEBUG, "AES-GCM: %s; computing in software",
                 veil_last_error()->message);
        veil_err_clear();
    }
    p = e->software;
    double t0 = veil_op_start(e);
    rc = p->ops->aes_gcm(p, enc, key, key_len, iv, iv_len, aad, aad_len, in,
                         len, out, tag);
    return veil_op_done(e, p, op, t0, rc);
}

veil_rc veil_aes_gcm_seal(veil_engine *e, const uint8_t *key, size_t key_len,
                          const uint8_t *iv, size_t iv_len, const uint8_t *aad,
                          size_t aad_len, const uint8_t *pt, size_t len,
                          uint8_t *ct, uint8_t tag[VEIL_GCM_TAG_LEN])
{
    return aes_gcm(e, 1, key, key_len, iv, iv_len, aad, aad_len, pt, len, ct,
                   tag);
}

veil_rc veil_aes_gcm_open(veil_engine *e, const uint8_t *key, size_t key_len,
                          const uint8_t *iv, size_t iv_len, const uint8_t *aad,
                          size_t aad_len, const uint8_t *ct, size_t len,
                          const uint8_t tag[VEIL_GCM_TAG_LEN], uint8_t *pt)
{
    return aes_gcm(e, 0, key, key_len, iv, iv_len, aad, aad_len, ct, len, pt,
                   (uint8_t *)tag);
}

veil_rc veil_ecdsa_sign(veil_engine *e, const veil_key *priv,
                        const uint8_t *msg, size_t len, uint8_t *sig,
                        size_t *sig_len)
{
    veil_rc rc;

    veil_err_clear();
    if (!e || (len && !msg) || !sig || !sig_len)
        return veil_err(VEIL_E_ARG, "engine", NULL, "sign: missing argument");
    rc = need_key(priv, VEIL_KEY_EC_P256, 1, "ECDSA sign");
    if (rc != VEIL_OK)
        return rc;
    if (*sig_len < VEIL_ECDSA_SIG_MAX)
        return veil_err(VEIL_E_BUFFER, "engine", NULL,
                        "signature buffer must hold %d bytes",
                        VEIL_ECDSA_SIG_MAX);
    if (!priv->prov->ops->ecdsa_sign)
        return veil_err(VEIL_E_UNSUPPORTED, priv->prov->ops->name, NULL,
                        "cannot sign");
    double t0 = veil_op_start(e);
    rc = priv->prov->ops->ecdsa_sign(priv->prov, priv, msg, len, sig, sig_len);
    return veil_op_done(e, priv->prov, "ecdsa_sign", t0, rc);
}

veil_rc veil_ecdsa_verify(veil_engine *e, const veil_key *pub,
                          const uint8_t *msg, size_t len, const uint8_t *sig,
                          size_t sig_len)
{
    veil_provider *p;
    veil_rc rc;

    veil_err_clear();
    if (!e || (len && !msg) || (sig_len && !sig))
        return veil_err(VEIL_E_ARG, "engine", NULL, "verify: missing argument");
    rc = need_key(pub, VEIL_KEY_EC_P256, 0, "ECDSA verify");
    if (rc != VEIL_OK)
        return rc;
    p = route(e, VEIL_ENGINE_PUBLIC_IN_TOKEN, pub, VEIL_CAP_ECDSA,
              "ECDSA verify");
    if (p) {
        double t0 = veil_op_start(e);
        rc = p->ops->ecdsa_verify(p, pub, msg, len, sig, sig_len);
        if (rc != VEIL_E_UNSUPPORTED)
            return veil_op_done(e, p, "ecdsa_verify", t0, rc);
        veil_log(e, VEIL_LOG_DEBUG, "ECDSA verify: %s; using software",
                 veil_last_error()->message);
        veil_err_clear();
    }
    p = e->software;
    double t0 = veil_op_start(e);
    rc = p->ops->ecdsa_verify(p, pub, msg, len, sig, sig_len);
    return veil_op_done(e, p, "ecdsa_verify", t0, rc);
}

veil_rc veil_hkdf_sha256(veil_engine *e, const uint8_t *salt, size_t salt_len,
                         const uint8_t *ikm, size_t ikm_len,
                         const uint8_t *info, size_t info_len, uint8_t *out,
                         size_t out_len)
{
    veil_provider *p;

    veil_err_clear();
    if (!e || (salt_len && !salt) || (ikm_len && !ikm) || (info_len && !info) ||
        !out)
        return veil_err(VEIL_E_ARG, "engine", NULL, "HKDF: missing argument");
    if (out_len == 0 || out_len > 255 * 32)
        return veil_err(VEIL_E_ARG, "engine", NULL,
                        "HKDF-SHA256 output must be 1..8160 bytes (got %zu)",
                        out_len);
    p = route(e, VEIL_ENGINE_SYMMETRIC_IN_TOKEN, NULL, VEIL_CAP_HKDF,
              "HKDF-SHA256 (hkdf)");
    if (!p)
        p = e->software;
    double t0 = veil_op_start(e);
    veil_rc rc = p->ops->hkdf_sha256(p, salt, salt_len, ikm, ikm_len, info,
                                     info_len, out, out_len);
    return veil_op_done(e, p, "hkdf_sha256", t0, rc);
}

veil_rc veil_random(veil_engine *e, uint8_t *buf, size_t len)
{
    veil_provider *p;

    veil_err_clear();
    if (!e || (len && !buf))
        return veil_err(VEIL_E_ARG, "engine", NULL, "random: missing argument");
    if (!len)
        return VEIL_OK;
    p = route(e, VEIL_ENGINE_SYMMETRIC_IN_TOKEN, NULL, VEIL_CAP_RANDOM,
              "random");
    if (!p)
        p = e->software;
    double t0 = veil_op_start(e);
    veil_rc rc = p->ops->random(p, buf, len);
    return veil_op_done(e, p, "random", t0, rc);
}
