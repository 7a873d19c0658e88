/* The TPM provider: EC P-256 key-agreement keys made inside a TPM 2.0, over
 * tpm2-tss ESAPI, for protocol v2's KEM keys (docs/PROTOCOL-V2.md 4.2).
 * tpm2-pkcs11 1.9.0 offers no ECDH, so this table talks to the TPM itself.
 *
 * References (docs/ENGINE.md, "The tpm2 provider"):
 *   tpm2:            the process's TPM: the ESYS context its owner lent
 *                    (veil_engine_tpm2_lend, engine/tpm2_hook.h: veild's TPM
 *                    module, so that its attestation key can certify the
 *                    keys), else a connection of its own through the TCTI
 *                    named by $TPM2TOOLS_TCTI, else $TCTI, else the tss2
 *                    default (/dev/tpmrm0, tabrmd, ...)
 *   tpm2:tcti=CONF   a connection of its own through the TCTI CONF
 *                    (device:/dev/tpmrm0, tabrmd:bus_type=session,
 *                    swtpm:port=2321), lent context or not
 *
 * Keys.  Each key is an ordinary (not restricted) ECC P-256 object with
 * the attributes decrypt, fixedTPM, fixedParent, sensitiveDataOrigin and
 * userWithAuth, without sign, scheme ECDH: its private part is drawn by the
 * TPM's own generator and never leaves it.  It is made by TPM2_Create under
 * a storage primary of the NULL hierarchy and loaded; the primary is made
 * for that and flushed again at once (a TPM without a resource manager has
 * three object slots).  Nothing is persistent: a TPM reset, or the end of
 * the connection behind a resource manager, removes every key, and the
 * NULL hierarchy's seed changes at every reset.  Each key has a random
 * 32-byte auth value, known only to the ESYS context (sent as a password
 * session: the bus is not protected, docs/ATTESTATION.md).
 *
 * ecdh_derive is TPM2_ECDH_ZGen: Z is the x-coordinate of the answer, the
 * TPM's answer is wiped.  What the TPM answers is checked before it is
 * used (a made key's public area, the ZGen point: veil_tpm2_check_public,
 * veil_tpm2_z; docs/PROVIDERS.md, "What veil checks of the TPM's
 * answers").  key_delete (and key_release) is TPM2_FlushContext:
 * the key is gone from the TPM, which is what forward secrecy asks of a
 * rotated KEM key.  The keys cannot be opened by reference or listed: they
 * live as long as their handle.
 *
 * An ESYS context is not thread-safe: every command runs under one lock,
 * the provider's own or the one lent with the context.
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>

#include <tss2/tss2_esys.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include "engine_int.h"
#include "tpm2_hook.h"

#define T2 "tpm2"
#define PREFIX "tpm2:"
#define TCTI_OPT "tcti="
#define AUTH_LEN 32
#define COORD 32 /* a P-256 coordinate */

typedef struct t2_state {
    TSS2_TCTI_CONTEXT *tcti; /* our own connection (NULL: lent) */
    ESYS_CONTEXT *own;
    pthread_mutex_t own_lock;
    int lock_up;
    int lent; /* commands go to the engine's lent context */
} t2_state;

typedef struct t2_key {
    ESYS_CONTEXT *ctx; /* the context the key was loaded in */
    ESYS_TR obj;       /* ESYS_TR_NONE once flushed */
} t2_key;

static int t2_claims(const char *where)
{
    return strncmp(where, PREFIX, strlen(PREFIX)) == 0;
}

/* The TCTI of a reference: tcti=CONF, else "" (lend or environment).  -1:
 * a reference this provider does not understand. */
static int t2_parse(const char *where, const char **conf)
{
    const char *rest = where + strlen(PREFIX);

    *conf = NULL;
    if (*rest == '\0')
        return 0;
    if (strncmp(rest, TCTI_OPT, strlen(TCTI_OPT)) == 0 &&
        rest[strlen(TCTI_OPT)] != '\0') {
        *conf = rest + strlen(TCTI_OPT);
        return 0;
    }
    return -1;
}

static veil_rc bad_ref(const char *where)
{
    return veil_err(VEIL_E_ARG, T2, NULL,
                    "\"%.64s\": expected tpm2: or tpm2:tcti=CONF", where);
}

static veil_rc t2_instance_id(const veil_engine *e, const char *where, char *id,
                              size_t id_size)
{
    const char *conf;

    if (t2_parse(where, &conf) != 0)
        return bad_ref(where);
    snprintf(id, id_size, "%s", conf ? where : PREFIX);
    return VEIL_OK;
}

static veil_rc tss_err(veil_rc rc, const char *what, TSS2_RC trc)
{
    const char *d = Tss2_RC_Decode(trc);

    return veil_err(rc, T2, d, "TPM: %s: %s", what, d);
}

static void t2_close(veil_provider *p)
{
    t2_state *s = p->state;

    if (s->own)
        Esys_Finalize(&s->own);
    if (s->tcti)
        Tss2_TctiLdr_Finalize(&s->tcti);
    if (s->lock_up)
        pthread_mutex_destroy(&s->own_lock);
    s->lock_up = 0;
}

static veil_rc t2_open(veil_provider *p, const char *where)
{
    t2_state *s = p->state;
    const char *conf;
    veil_rc vrc;
    TSS2_RC rc;

    if (t2_parse(where, &conf) != 0)
        return bad_ref(where);
    if (conf == NULL && p->engine->tpm2_esys) {
        s->lent = 1;
        snprintf(p->caps.description, sizeof p->caps.description,
                 "TPM 2.0 (ESAPI, the connection lent by its owner)");
        return VEIL_OK;
    }
    if (conf == NULL && (conf = getenv("TPM2TOOLS_TCTI")) == NULL)
        conf = getenv("TCTI");
    if (pthread_mutex_init(&s->own_lock, NULL) != 0)
        return veil_err(VEIL_E_NOMEM, T2, NULL, "cannot make a lock");
    s->lock_up = 1;
    rc = Tss2_TctiLdr_Initialize(conf, &s->tcti);
    if (rc != TSS2_RC_SUCCESS) {
        s->tcti = NULL;
        vrc = veil_err(VEIL_E_PROVIDER, T2, Tss2_RC_Decode(rc),
                       "TPM: TCTI \"%.64s\": %s", conf ? conf : "(default)",
                       Tss2_RC_Decode(rc));
        goto fail;
    }
    rc = Esys_Initialize(&s->own, s->tcti, NULL);
    if (rc != TSS2_RC_SUCCESS) {
        s->own = NULL;
        vrc = tss_err(VEIL_E_PROVIDER, "Esys_Initialize", rc);
        goto fail;
    }
    snprintf(p->caps.description, sizeof p->caps.description,
             "TPM 2.0 (ESAPI, TCTI %.64s)", conf ? conf : "default");
    return VEIL_OK;
fail: /* the engine calls no close after a failed open */
    t2_close(p);
    return vrc;
}

/* The context to use, its lock taken; NULL (lock not taken) when a lent
 * context was withdrawn. */
static ESYS_CONTEXT *t2_enter(veil_provider *p, pthread_mutex_t **lock)
{
    t2_state *s = p->state;
    veil_engine *e = p->engine;

    if (!s->lent) {
        *lock = &s->own_lock;
        pthread_mutex_lock(*lock);
        return s->own;
    }
    if (e->tpm2_esys == NULL) {
        veil_err(VEIL_E_PROVIDER, T2, NULL,
                 "the TPM connection was withdrawn by its owner");
        return NULL;
    }
    *lock = e->tpm2_lock;
    pthread_mutex_lock(*lock);
    return e->tpm2_esys;
}

/* The public key of a P-256 point a TPM returned, as an EVP_PKEY; NULL
 * unless both coordinates are 32 bytes (a TPM pads them to the curve's
 * size) and the point is on P-256. */
static EVP_PKEY *t2_pkey(const TPMS_ECC_POINT *q)
{
    uint8_t point[1 + 2 * COORD] = {0x04};
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    EVP_PKEY_CTX *cctx = NULL;
    EVP_PKEY *pkey = NULL;

    if (q->x.size != COORD || q->y.size != COORD || !bld || !pctx)
        goto done;
    memcpy(point + 1, q->x.buffer, COORD);
    memcpy(point + 1 + COORD, q->y.buffer, COORD);
    if (OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME,
                                        "prime256v1", 0) &&
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point,
                                         sizeof point) &&
        (params = OSSL_PARAM_BLD_to_param(bld)) != NULL &&
        EVP_PKEY_fromdata_init(pctx) == 1 &&
        EVP_PKEY_fromdata(pctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pkey = NULL;
    /* import may or may not test the point: test it */
    if (pkey && (!(cctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL)) ||
                 EVP_PKEY_public_check_quick(cctx) != 1)) {
        EVP_PKEY_free(pkey);
        pkey = NULL;
    }
done:
    EVP_PKEY_CTX_free(cctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    EVP_PKEY_CTX_free(pctx);
    ERR_clear_error();
    return pkey;
}

/* The storage primary the keys are made under: restricted decrypt ECC
 * P-256, AES-128-CFB, in the NULL hierarchy. */
static const TPM2B_PUBLIC primary_template = {
    .publicArea =
        {
            .type = TPM2_ALG_ECC,
            .nameAlg = TPM2_ALG_SHA256,
            .objectAttributes = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT |
                                TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                TPMA_OBJECT_SENSITIVEDATAORIGIN |
                                TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA,
            .parameters.eccDetail =
                {
                    .symmetric = {.algorithm = TPM2_ALG_AES,
                                  .keyBits.aes = 128,
                                  .mode.aes = TPM2_ALG_CFB},
                    .scheme.scheme = TPM2_ALG_NULL,
                    .curveID = TPM2_ECC_NIST_P256,
                    .kdf.scheme = TPM2_ALG_NULL,
                },
        },
};

/* A KEM key: decrypt only (ECDH), not restricted, never leaves the TPM. */
static const TPM2B_PUBLIC kem_template = {
    .publicArea =
        {
            .type = TPM2_ALG_ECC,
            .nameAlg = TPM2_ALG_SHA256,
            .objectAttributes = TPMA_OBJECT_DECRYPT | TPMA_OBJECT_FIXEDTPM |
                                TPMA_OBJECT_FIXEDPARENT |
                                TPMA_OBJECT_SENSITIVEDATAORIGIN |
                                TPMA_OBJECT_USERWITHAUTH,
            .parameters.eccDetail =
                {
                    .symmetric.algorithm = TPM2_ALG_NULL,
                    .scheme = {.scheme = TPM2_ALG_ECDH,
                               .details.ecdh.hashAlg = TPM2_ALG_SHA256},
                    .curveID = TPM2_ECC_NIST_P256,
                    .kdf.scheme = TPM2_ALG_NULL,
                },
        },
};

/* Create and Load under a fresh primary (flushed again); *obj loaded with
 * its auth value set. */
static veil_rc t2_make(ESYS_CONTEXT *ctx, ESYS_TR *obj, TPM2B_PUBLIC **pub)
{
    TPM2B_SENSITIVE_CREATE none = {0}, sens = {0};
    TPM2B_DATA outside = {0};
    TPML_PCR_SELECTION pcrs = {0};
    TPM2B_PRIVATE *priv = NULL;
    ESYS_TR primary = ESYS_TR_NONE;
    TPM2B_AUTH auth = {.size = AUTH_LEN};
    veil_rc vrc = VEIL_OK;
    TSS2_RC rc;

    *obj = ESYS_TR_NONE;
    *pub = NULL;
    if (RAND_priv_bytes(auth.buffer, AUTH_LEN) != 1)
        return veil_err_ossl(VEIL_E_CRYPTO, T2, "no random auth value");
    sens.sensitive.userAuth = auth;
    rc =
        Esys_CreatePrimary(ctx, ESYS_TR_RH_NULL, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                           ESYS_TR_NONE, &none, &primary_template, &outside,
                           &pcrs, &primary, NULL, NULL, NULL, NULL);
    if (rc != TSS2_RC_SUCCESS) {
        vrc = tss_err(VEIL_E_PROVIDER, "CreatePrimary (NULL hierarchy)", rc);
        goto done;
    }
    rc = Esys_Create(ctx, primary, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                     &sens, &kem_template, &outside, &pcrs, &priv, pub, NULL,
                     NULL, NULL);
    if (rc != TSS2_RC_SUCCESS) {
        vrc = tss_err(VEIL_E_PROVIDER, "Create (ECDH P-256)", rc);
        goto done;
    }
    rc = Esys_Load(ctx, primary, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                   priv, *pub, obj);
    if (rc != TSS2_RC_SUCCESS) {
        *obj = ESYS_TR_NONE;
        vrc = tss_err(VEIL_E_PROVIDER, "Load", rc);
        goto done;
    }
    rc = Esys_TR_SetAuth(ctx, *obj, &auth);
    if (rc != TSS2_RC_SUCCESS)
        vrc = tss_err(VEIL_E_PROVIDER, "TR_SetAuth", rc);
done:
    veil_wipe(&auth, sizeof auth);
    veil_wipe(&sens, sizeof sens);
    Esys_Free(priv); /* the private part, sealed to the primary */
    if (primary != ESYS_TR_NONE)
        Esys_FlushContext(ctx, primary);
    if (vrc != VEIL_OK) {
        if (*obj != ESYS_TR_NONE)
            Esys_FlushContext(ctx, *obj);
        *obj = ESYS_TR_NONE;
        Esys_Free(*pub);
        *pub = NULL;
    }
    return vrc;
}

veil_rc veil_tpm2_check_public(const TPM2B_PUBLIC *pub, EVP_PKEY **pkey)
{
    const TPMT_PUBLIC *a = &pub->publicArea;

    *pkey = NULL;
    /* the type first: it says which member of the unions is there */
    if (a->type != TPM2_ALG_ECC ||
        a->parameters.eccDetail.curveID != TPM2_ECC_NIST_P256 ||
        a->objectAttributes != kem_template.publicArea.objectAttributes)
        return veil_err(VEIL_E_PROVIDER, T2, NULL,
                        "the TPM made another key than asked for (type "
                        "0x%04x, attributes 0x%08x), not a P-256 ECDH key",
                        (unsigned)a->type, (unsigned)a->objectAttributes);
    if ((*pkey = t2_pkey(&a->unique.ecc)) == NULL)
        return veil_err(VEIL_E_PROVIDER, T2, NULL,
                        "the TPM's public key is not a P-256 point");
    return VEIL_OK;
}

static veil_rc t2_generate(veil_provider *p, const veil_keygen_params *kp,
                           veil_key *k)
{
    t2_key *tk = k->state;
    TPM2B_PUBLIC *pub = NULL;
    pthread_mutex_t *lock;
    ESYS_CONTEXT *ctx;
    veil_rc rc;

    tk->obj = ESYS_TR_NONE;
    if (kp->type != VEIL_KEY_EC_P256 || !kp->derive)
        return veil_err(VEIL_E_UNSUPPORTED, T2, NULL,
                        "the TPM provider makes EC P-256 key-agreement "
                        "(derive) keys only");
    if ((ctx = t2_enter(p, &lock)) == NULL)
        return veil_last_error()->code;
    rc = t2_make(ctx, &tk->obj, &pub);
    if (rc == VEIL_OK)
        tk->ctx = ctx;
    pthread_mutex_unlock(lock);
    if (rc != VEIL_OK)
        return rc;
    rc = veil_tpm2_check_public(pub, &k->pub);
    Esys_Free(pub);
    if (rc != VEIL_OK)
        return rc; /* key_release flushes the object */
    k->type = VEIL_KEY_EC_P256;
    k->bits = 256;
    k->has_private = 1;
    k->persistent = 0;
    snprintf(k->label, sizeof k->label, "%s", kp->label ? kp->label : "");
    if (kp->id && kp->id_len) {
        k->id_len = kp->id_len < sizeof k->id ? kp->id_len : sizeof k->id;
        memcpy(k->id, kp->id, k->id_len);
    }
    return VEIL_OK;
}

static veil_rc t2_key_open(veil_provider *p, const char *ref, veil_key *k)
{
    return veil_err(VEIL_E_UNSUPPORTED, T2, NULL,
                    "TPM keys are transient: they live as long as the handle "
                    "that made them and cannot be opened by reference");
}

static veil_rc t2_key_list(veil_provider *p, const char *where,
                           veil_key_list_fn cb, void *ctx)
{
    return VEIL_OK; /* nothing to list: see t2_key_open */
}

/* Flushes k from the TPM (lock taken here). */
static veil_rc t2_flush(veil_provider *p, veil_key *k)
{
    t2_key *tk = k->state;
    pthread_mutex_t *lock;
    ESYS_CONTEXT *ctx;
    TSS2_RC rc;

    if (tk->obj == ESYS_TR_NONE || tk->ctx == NULL)
        return VEIL_OK;
    if ((ctx = t2_enter(p, &lock)) == NULL)
        return veil_last_error()->code; /* the context went, and the key */
    rc = ctx == tk->ctx ? Esys_FlushContext(ctx, tk->obj) : TSS2_RC_SUCCESS;
    tk->obj = ESYS_TR_NONE;
    pthread_mutex_unlock(lock);
    return rc == TSS2_RC_SUCCESS ? VEIL_OK
                                 : tss_err(VEIL_E_PROVIDER, "FlushContext", rc);
}

static veil_rc t2_key_delete(veil_provider *p, veil_key *k)
{
    return t2_flush(p, k);
}

static void t2_key_release(veil_provider *p, veil_key *k)
{
    t2_flush(p, k);
}

static veil_rc t2_key_info(veil_provider *p, const veil_key *k,
                           veil_key_info *info)
{
    info->sensitive = 1;
    info->extractable = 0;
    return VEIL_OK;
}

veil_rc veil_tpm2_z(const TPM2B_ECC_POINT *out, veil_secbuf **z)
{
    EVP_PKEY *check;
    veil_rc vrc;

    *z = NULL;
    /* The answer is the point d*Q: 32-byte coordinates on P-256.  A short
     * x would make a Z of mostly zeros that anyone can guess. */
    if ((check = t2_pkey(&out->point)) == NULL)
        return veil_err(VEIL_E_PROVIDER, T2, NULL,
                        "ECDH_ZGen: the TPM's answer is not a P-256 point "
                        "(coordinates of %u and %u bytes)",
                        (unsigned)out->point.x.size,
                        (unsigned)out->point.y.size);
    EVP_PKEY_free(check);
    if ((vrc = veil_secbuf_new(COORD, z)) == VEIL_OK)
        memcpy(veil_secbuf_data(*z), out->point.x.buffer, COORD);
    return vrc;
}

static veil_rc t2_ecdh_derive(veil_provider *p, const veil_key *k,
                              const uint8_t *peer, size_t peer_len,
                              veil_secbuf **z)
{
    const t2_key *tk = k->state;
    TPM2B_ECC_POINT in = {.size = 0};
    TPM2B_ECC_POINT *out = NULL;
    pthread_mutex_t *lock;
    ESYS_CONTEXT *ctx;
    veil_rc vrc;
    TSS2_RC rc;

    *z = NULL;
    if (peer_len != 1 + 2 * COORD || peer[0] != 0x04)
        return veil_err(VEIL_E_ARG, T2, NULL,
                        "ECDH: the peer is not an uncompressed P-256 point");
    in.point.x.size = COORD;
    in.point.y.size = COORD;
    memcpy(in.point.x.buffer, peer + 1, COORD);
    memcpy(in.point.y.buffer, peer + 1 + COORD, COORD);
    if ((ctx = t2_enter(p, &lock)) == NULL)
        return veil_last_error()->code;
    if (tk->obj == ESYS_TR_NONE || ctx != tk->ctx) {
        pthread_mutex_unlock(lock);
        return veil_err(VEIL_E_KEY, T2, NULL,
                        "ECDH: the key is no longer in the TPM");
    }
    rc = Esys_ECDH_ZGen(ctx, tk->obj, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                        ESYS_TR_NONE, &in, &out);
    pthread_mutex_unlock(lock);
    if (rc != TSS2_RC_SUCCESS)
        return tss_err(VEIL_E_PROVIDER, "ECDH_ZGen", rc);
    vrc = veil_tpm2_z(out, z);
    veil_wipe(out, sizeof *out);
    Esys_Free(out);
    return vrc;
}

veil_rc veil_tpm2_key_object(const veil_key *k, const void *esys,
                             uint32_t *esys_tr)
{
    const t2_key *tk;

    if (!k || !esys || k->prov->ops != &veil_provider_tpm2)
        return VEIL_E_ARG;
    tk = k->state;
    if (tk->obj == ESYS_TR_NONE || tk->ctx == NULL || tk->ctx != esys)
        return VEIL_E_ARG;
    *esys_tr = tk->obj;
    return VEIL_OK;
}

const veil_provider_ops veil_provider_tpm2 = {
    .abi = VEIL_PROVIDER_ABI,
    .ops_size = sizeof(veil_provider_ops),
    .name = T2,
    .static_caps = VEIL_CAP_EC_GEN | VEIL_CAP_ECDH,
    .state_size = sizeof(t2_state),
    .key_state_size = sizeof(t2_key),
    .claims = t2_claims,
    .instance_id = t2_instance_id,
    .open = t2_open,
    .close = t2_close,
    .key_generate = t2_generate,
    .key_open = t2_key_open,
    .key_list = t2_key_list,
    .key_delete = t2_key_delete,
    .key_release = t2_key_release,
    .key_info = t2_key_info,
    .ecdh_derive = t2_ecdh_derive,
};
