/* The gateway's TPM (gateway.h, "the TPM"): evidence for docs/ATTESTATION.md
 * over tpm2-tss ESAPI.
 *
 * Objects in the TPM:
 *   - the EK, made from the TCG default template (EK Credential Profile,
 *     template L-1: RSA 2048, policy A, AES-128-CFB), so that its public
 *     key is the one in the EK certificate in NV.  It is needed only for
 *     credential activation, so after reading its public area we keep a
 *     saved context of it and load it for each activation: a TPM without a
 *     resource manager in front of it (swtpm over TCP, /dev/tpm0) holds
 *     three transient objects, and a quote with a fresh AK and a certified
 *     key already needs three;
 *   - the long-term AK: a restricted ECDSA P-256 signing primary in the
 *     endorsement hierarchy with a random `unique`, so each start makes a
 *     new key (a verifier enrols it by credential activation);
 *   - with ak_per_request, a fresh AK of the same kind for every quote,
 *     certified by the long-term AK and flushed afterwards;
 *   - with tss2_key, the gateway's encryption key, loaded from its TSS2
 *     PRIVATE KEY blob under its persistent parent, certified per quote.
 *
 * One ESYS context serves every thread, behind t->lock.  What never
 * changes after open (descriptions, public areas, the EK certificate) is
 * encoded once at open.
 */
#include "config.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include "evidence.h"
#include "gateway.h"
#include "package.h"

#define DEFAULT_PCRS "sha256:0,7,10"
#define EK_CERT_NV_RSA 0x01c00002u
#define EK_CERT_MAX 4096u /* DER certificates in NV are ~1 KiB */
#define EVENT_LOG_PATH "/sys/kernel/security/tpm0/binary_bios_measurements"
#define EVENT_LOG_MAX (8u << 20)
#define TSS2_KEY_OID "2.23.133.10.1.3" /* TSS2 PRIVATE KEY, loadable */

/* TCG EK Credential Profile, policy A: PolicySecret(TPM_RH_ENDORSEMENT). */
static const uint8_t ek_policy_a[32] = {
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc,
    0x8d, 0x46, 0xa5, 0xd7, 0x24, 0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52,
    0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa};

struct gw_tpm {
    pthread_mutex_t lock;
    TSS2_TCTI_CONTEXT *tcti;
    ESYS_CONTEXT *ctx;

    veil_log_fn log;
    void *log_ctx;
    veil_log_level log_level;

    int ak_per_request;
    veil_pcr_sel sel;
    char pcr_banks[96];

    /* what the TPM says of itself */
    int software;
    char manufacturer[8];
    char vendor[20];
    char firmware[48];
    char describe[128];
    uint32_t nv_buffer_max;

    /* the EK: public parts, and a saved context to load for activation */
    TPMS_CONTEXT *ek_saved;
    char *ek_pub_b64;
    char *ek_spki_b64;
    char *ek_cert_b64; /* NULL: no certificate in NV */

    /* the long-term AK */
    ESYS_TR ak;
    char *ak_pub_b64;
    char *ak_name_hex;

    /* the encryption key as a TPM object (ESYS_TR_NONE: none) */
    ESYS_TR key;
    char *key_pub_b64;

    char *event_log_b64; /* NULL: none readable */
};

/* ---- small helpers ------------------------------------------------------ */

static void tlog(const gw_tpm *t, veil_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void tlog(const gw_tpm *t, veil_log_level level, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    int n;

    if (!t->log || level > t->log_level)
        return;
    n = snprintf(line, sizeof line, "TPM: ");
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    t->log(t->log_ctx, level, line);
}

/* "TPM: <what>: <tss2 decoding of rc>" into err. */
static void put_rc(char *err, size_t err_size, const char *what, TSS2_RC rc)
{
    gw_put_err(err, err_size, "TPM: %s: %s", what, Tss2_RC_Decode(rc));
}

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static char *hex_encode(const uint8_t *in, size_t len)
{
    static const char digits[] = "0123456789abcdef";
    char *out = malloc(2 * len + 1);

    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * len] = '\0';
    return out;
}

/* obj[key] = string made by enc(in, len); 0, or -1 on no memory. */
static int add_encoded(cJSON *obj, const char *key, const uint8_t *in,
                       size_t len, char *(*enc)(const uint8_t *, size_t))
{
    char *s = enc(in, len);
    int rc = -1;

    if (s && cJSON_AddStringToObject(obj, key, s))
        rc = 0;
    free(s);
    return rc;
}

static int add_b64(cJSON *obj, const char *key, const uint8_t *in, size_t len)
{
    return add_encoded(obj, key, in, len, veil_b64_encode);
}

static int add_hex(cJSON *obj, const char *key, const uint8_t *in, size_t len)
{
    return add_encoded(obj, key, in, len, hex_encode);
}

/* obj[key] = s, or null when s is NULL. */
static int add_str_or_null(cJSON *obj, const char *key, const char *s)
{
    if (s)
        return cJSON_AddStringToObject(obj, key, s) ? 0 : -1;
    return cJSON_AddNullToObject(obj, key) ? 0 : -1;
}

static char *b64_public(const TPM2B_PUBLIC *pub)
{
    uint8_t buf[sizeof(TPM2B_PUBLIC)];
    size_t off = 0;

    if (Tss2_MU_TPM2B_PUBLIC_Marshal(pub, buf, sizeof buf, &off) !=
        TSS2_RC_SUCCESS)
        return NULL;
    return veil_b64_encode(buf, off);
}

/* The public key of an RSA or ECC P-256 TPM object as an EVP_PKEY. */
static EVP_PKEY *pkey_from_public(const TPMT_PUBLIC *p)
{
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *pctx = NULL;
    EVP_PKEY *pkey = NULL;
    BIGNUM *n = NULL, *e = NULL;
    uint8_t point[1 + 2 * 32];
    int ok = 0;

    if (!bld)
        return NULL;
    if (p->type == TPM2_ALG_RSA) {
        uint32_t exp = p->parameters.rsaDetail.exponent;

        n = BN_bin2bn(p->unique.rsa.buffer, p->unique.rsa.size, NULL);
        e = BN_new();
        ok = n && e && BN_set_word(e, exp ? exp : 65537) &&
             OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) &&
             OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) &&
             (pctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL));
    } else if (p->type == TPM2_ALG_ECC &&
               p->parameters.eccDetail.curveID == TPM2_ECC_NIST_P256 &&
               p->unique.ecc.x.size == 32 && p->unique.ecc.y.size == 32) {
        point[0] = 0x04; /* uncompressed */
        memcpy(point + 1, p->unique.ecc.x.buffer, 32);
        memcpy(point + 33, p->unique.ecc.y.buffer, 32);
        ok = OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME,
                                             "prime256v1", 0) &&
             OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY,
                                              point, sizeof point) &&
             (pctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL));
    }
    if (ok && (params = OSSL_PARAM_BLD_to_param(bld)) != NULL &&
        EVP_PKEY_fromdata_init(pctx) == 1 &&
        EVP_PKEY_fromdata(pctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pkey = NULL;
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    EVP_PKEY_CTX_free(pctx);
    BN_free(n);
    BN_free(e);
    return pkey;
}

/* ---- what the TPM says of itself -------------------------------------- */

/* Appends the four characters of a TPM2_PT_VENDOR_STRING_x / MANUFACTURER
 * value (big-endian, NUL-padded). */
static void put_chars(char *out, size_t size, uint32_t v)
{
    size_t n = strlen(out);

    for (int shift = 24; shift >= 0 && n + 1 < size; shift -= 8) {
        char c = (char)((v >> shift) & 0xff);
        if (c == '\0')
            continue;
        out[n++] = (c >= 0x20 && c < 0x7f) ? c : '?';
    }
    out[n] = '\0';
}

static void trim_right(char *s)
{
    size_t n = strlen(s);

    while (n > 0 && s[n - 1] == ' ')
        s[--n] = '\0';
}

/* One fixed property; 0 when the TPM does not report it. */
static int get_property(gw_tpm *t, TPM2_PT pt, uint32_t *value, char *err,
                        size_t err_size)
{
    TPMS_CAPABILITY_DATA *cap = NULL;
    TPMI_YES_NO more;
    TSS2_RC rc;

    *value = 0;
    rc = Esys_GetCapability(t->ctx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                            TPM2_CAP_TPM_PROPERTIES, pt, 1, &more, &cap);
    if (rc != TSS2_RC_SUCCESS) {
        put_rc(err, err_size, "GetCapability", rc);
        return -1;
    }
    if (cap->data.tpmProperties.count > 0 &&
        cap->data.tpmProperties.tpmProperty[0].property == pt)
        *value = cap->data.tpmProperties.tpmProperty[0].value;
    Esys_Free(cap);
    return 0;
}

static int read_identity(gw_tpm *t, char *err, size_t err_size)
{
    static const TPM2_PT vendor_pts[] = {
        TPM2_PT_VENDOR_STRING_1, TPM2_PT_VENDOR_STRING_2,
        TPM2_PT_VENDOR_STRING_3, TPM2_PT_VENDOR_STRING_4};
    uint32_t v, fw1, fw2;
    char squeezed[sizeof t->vendor];
    size_t n = 0;

    if (get_property(t, TPM2_PT_MANUFACTURER, &v, err, err_size) != 0)
        return -1;
    put_chars(t->manufacturer, sizeof t->manufacturer, v);
    trim_right(t->manufacturer);
    for (size_t i = 0; i < sizeof vendor_pts / sizeof vendor_pts[0]; i++) {
        if (get_property(t, vendor_pts[i], &v, err, err_size) != 0)
            return -1;
        put_chars(t->vendor, sizeof t->vendor, v);
    }
    trim_right(t->vendor);
    if (get_property(t, TPM2_PT_FIRMWARE_VERSION_1, &fw1, err, err_size) ||
        get_property(t, TPM2_PT_FIRMWARE_VERSION_2, &fw2, err, err_size) ||
        get_property(t, TPM2_PT_NV_BUFFER_MAX, &t->nv_buffer_max, err,
                     err_size))
        return -1;
    /* The usual reading: four 16-bit parts, most significant first. */
    snprintf(t->firmware, sizeof t->firmware, "%u.%u.%u.%u", fw1 >> 16,
             fw1 & 0xffff, fw2 >> 16, fw2 & 0xffff);

    /* The IBM simulator and swtpm (built on it) say "IBM" and "SW   TPM";
     * IBM makes no hardware TPM. */
    for (const char *c = t->vendor; *c && n + 1 < sizeof squeezed; c++)
        if (*c != ' ')
            squeezed[n++] = *c;
    squeezed[n] = '\0';
    t->software =
        strcmp(t->manufacturer, "IBM") == 0 || strcmp(squeezed, "SWTPM") == 0;

    /* For the log: runs of spaces in the vendor string collapsed. */
    n = (size_t)snprintf(t->describe, sizeof t->describe, "%s ",
                         t->manufacturer[0] ? t->manufacturer : "unknown");
    for (const char *c = t->vendor; *c && n + 1 < sizeof t->describe; c++)
        if (!(*c == ' ' && t->describe[n - 1] == ' '))
            t->describe[n++] = *c;
    t->describe[n] = '\0';
    trim_right(t->describe);
    n = strlen(t->describe);
    snprintf(t->describe + n, sizeof t->describe - n, " firmware %s",
             t->firmware);
    return 0;
}

/* ---- EK ------------------------------------------------------------------ */

static int ek_make(gw_tpm *t, char *err, size_t err_size)
{
    TPM2B_PUBLIC tmpl = {
        .publicArea = {
            .type = TPM2_ALG_RSA,
            .nameAlg = TPM2_ALG_SHA256,
            .objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                TPMA_OBJECT_SENSITIVEDATAORIGIN |
                                TPMA_OBJECT_ADMINWITHPOLICY |
                                TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT,
            .authPolicy = {.size = sizeof ek_policy_a},
            .parameters.rsaDetail =
                {
                    .symmetric = {.algorithm = TPM2_ALG_AES,
                                  .keyBits.aes = 128,
                                  .mode.aes = TPM2_ALG_CFB},
                    .scheme = {.scheme = TPM2_ALG_NULL},
                    .keyBits = 2048,
                    .exponent = 0,
                },
            /* 256 zero bytes, as the profile says */
            .unique.rsa = {.size = 256},
        }};
    TPM2B_SENSITIVE_CREATE sens = {0};
    TPM2B_DATA outside = {0};
    TPML_PCR_SELECTION no_pcrs = {0};
    TPM2B_PUBLIC *pub = NULL;
    ESYS_TR ek = ESYS_TR_NONE;
    EVP_PKEY *pkey = NULL;
    unsigned char *spki = NULL;
    int spki_len, ret = -1;
    double t0 = now_ms();
    TSS2_RC rc;

    memcpy(tmpl.publicArea.authPolicy.buffer, ek_policy_a, sizeof ek_policy_a);
    rc = Esys_CreatePrimary(t->ctx, ESYS_TR_RH_ENDORSEMENT, ESYS_TR_PASSWORD,
                            ESYS_TR_NONE, ESYS_TR_NONE, &sens, &tmpl, &outside,
                            &no_pcrs, &ek, &pub, NULL, NULL, NULL);
    if (rc != TSS2_RC_SUCCESS) {
        put_rc(err, err_size, "creating the EK", rc);
        return -1;
    }
    tlog(t, VEIL_LOG_DEBUG, "EK created in %.0f ms", now_ms() - t0);
    pkey = pkey_from_public(&pub->publicArea);
    if (!pkey || (spki_len = i2d_PUBKEY(pkey, &spki)) <= 0 ||
        !(t->ek_pub_b64 = b64_public(pub)) ||
        !(t->ek_spki_b64 = veil_b64_encode(spki, (size_t)spki_len))) {
        gw_put_err(err, err_size, "TPM: EK public key: encoding failed");
        goto out;
    }
    /* Kept as a saved context, loaded again for each activation. */
    rc = Esys_ContextSave(t->ctx, ek, &t->ek_saved);
    if (rc != TSS2_RC_SUCCESS) {
        put_rc(err, err_size, "saving the EK context", rc);
        goto out;
    }
    ret = 0;
out:
    Esys_FlushContext(t->ctx, ek);
    Esys_Free(pub);
    EVP_PKEY_free(pkey);
    OPENSSL_free(spki);
    return ret;
}

/* 1 when the TPM has an NV index `index`, 0 when not, -1 on failure.
 * Asked first because ESYS logs an error for every absent handle it is
 * given. */
static int nv_exists(gw_tpm *t, TPM2_HANDLE index, char *err, size_t err_size)
{
    TPMS_CAPABILITY_DATA *cap = NULL;
    TPMI_YES_NO more;
    TSS2_RC rc;
    int found;

    rc = Esys_GetCapability(t->ctx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                            TPM2_CAP_HANDLES, index, 1, &more, &cap);
    if (rc != TSS2_RC_SUCCESS) {
        put_rc(err, err_size, "listing NV indices", rc);
        return -1;
    }
    found = cap->data.handles.count > 0 && cap->data.handles.handle[0] == index;
    Esys_Free(cap);
    return found;
}

/* Reads the RSA EK certificate from NV, in chunks of at most
 * TPM2_PT_NV_BUFFER_MAX; absent is not an error. */
static int ek_cert_read(gw_tpm *t, char *err, size_t err_size)
{
    ESYS_TR nv = ESYS_TR_NONE;
    TPM2B_NV_PUBLIC *nv_pub = NULL;
    uint8_t *der = NULL;
    uint16_t size, done = 0, chunk;
    ESYS_TR auth;
    TPMA_NV attrs;
    TSS2_RC rc;
    int ret = -1, exists;

    exists = nv_exists(t, EK_CERT_NV_RSA, err, err_size);
    if (exists <= 0)
        return exists;
    rc = Esys_TR_FromTPMPublic(t->ctx, EK_CERT_NV_RSA, ESYS_TR_NONE,
                               ESYS_TR_NONE, ESYS_TR_NONE, &nv);
    if (rc == TSS2_RC_SUCCESS)
        rc = Esys_NV_ReadPublic(t->ctx, nv, ESYS_TR_NONE, ESYS_TR_NONE,
                                ESYS_TR_NONE, &nv_pub, NULL);
    if (rc != TSS2_RC_SUCCESS) {
        put_rc(err, err_size, "EK certificate index", rc);
        goto out;
    }
    size = nv_pub->nvPublic.dataSize;
    attrs = nv_pub->nvPublic.attributes;
    if (size == 0 || size > EK_CERT_MAX) {
        gw_put_err(err, err_size, "TPM: EK certificate index: %u bytes",
                   (unsigned)size);
        goto out;
    }
    if (attrs & TPMA_NV_AUTHREAD)
        auth = nv;
    else if (attrs & TPMA_NV_OWNERREAD)
        auth = ESYS_TR_RH_OWNER;
    else {
        tlog(t, VEIL_LOG_WARN, "the EK certificate in NV is not readable");
        ret = 0;
        goto out;
    }
    /* TPM2_PT_NV_BUFFER_MAX, within what a TPM2B_MAX_NV_BUFFER holds */
    chunk = t->nv_buffer_max > 0 && t->nv_buffer_max < TPM2_MAX_NV_BUFFER_SIZE
                ? (uint16_t)t->nv_buffer_max
                : TPM2_MAX_NV_BUFFER_SIZE;
    if (!(der = malloc(size)))
        goto out;
    while (done < size) {
        TPM2B_MAX_NV_BUFFER *part = NULL;
        uint16_t want =
            (uint16_t)(size - done) < chunk ? (uint16_t)(size - done) : chunk;

        rc = Esys_NV_Read(t->ctx, auth, nv, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                          ESYS_TR_NONE, want, done, &part);
        if (rc != TSS2_RC_SUCCESS || part->size != want) {
            if (rc == TSS2_RC_SUCCESS)
                gw_put_err(err, err_size, "TPM: EK certificate: short read");
            else
                put_rc(err, err_size, "reading the EK certificate", rc);
            Esys_Free(part);
            goto out;
        }
        memcpy(der + done, part->buffer, want);
        done = (uint16_t)(done + want);
        Esys_Free(part);
    }
    /* NV indices are often larger than the certificate: keep exactly the
     * DER object. */
    {
        const unsigned char *p = der;
        X509 *cert = d2i_X509(NULL, &p, size);

        if (!cert) {
            tlog(t, VEIL_LOG_WARN, "the EK certificate in NV is not DER X.509");
            ret = 0;
            goto out;
        }
        X509_free(cert);
        t->ek_cert_b64 = veil_b64_encode(der, (size_t)(p - der));
    }
    ret = t->ek_cert_b64 ? 0 : -1;
    if (ret != 0)
        gw_put_err(err, err_size, "TPM: out of memory");
out:
    if (nv != ESYS_TR_NONE)
        Esys_TR_Close(t->ctx, &nv);
    Esys_Free(nv_pub);
    free(der);
    return ret;
}

/* Warns when the certificate in NV is not for the EK we made (a TPM whose
 * EK is not the default template, or a certificate written for another
 * key): verifiers will refuse it, and the operator should know why. */
static void ek_cert_check(gw_tpm *t)
{
    uint8_t *der = NULL, *spki = NULL;
    size_t der_len = 0, spki_len = 0;
    const unsigned char *p;
    X509 *cert = NULL;
    EVP_PKEY *ek = NULL;

    if (!t->ek_cert_b64 ||
        veil_b64_decode(t->ek_cert_b64, strlen(t->ek_cert_b64), &der,
                        &der_len) != VEIL_OK ||
        veil_b64_decode(t->ek_spki_b64, strlen(t->ek_spki_b64), &spki,
                        &spki_len) != VEIL_OK)
        goto out;
    p = der;
    cert = d2i_X509(NULL, &p, (long)der_len);
    p = spki;
    ek = d2i_PUBKEY(NULL, &p, (long)spki_len);
    if (cert && ek && EVP_PKEY_eq(X509_get0_pubkey(cert), ek) != 1)
        tlog(t, VEIL_LOG_WARN,
             "the EK certificate in NV is not for the EK of the default "
             "template: verifiers will refuse it");
out:
    X509_free(cert);
    EVP_PKEY_free(ek);
    free(der);
    free(spki);
}

/* ---- AK ------------------------------------------------------------------ */

/* A restricted ECDSA P-256/SHA-256 signing primary in the endorsement
 * hierarchy; a random `unique` makes it a new key each time. */
static int ak_make(gw_tpm *t, ESYS_TR *ak, TPM2B_PUBLIC **pub, char *err,
                   size_t err_size)
{
    TPM2B_PUBLIC tmpl = {
        .publicArea = {
            .type = TPM2_ALG_ECC,
            .nameAlg = TPM2_ALG_SHA256,
            .objectAttributes =
                TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT,
            .parameters.eccDetail =
                {
                    .symmetric = {.algorithm = TPM2_ALG_NULL},
                    .scheme = {.scheme = TPM2_ALG_ECDSA,
                               .details.ecdsa.hashAlg = TPM2_ALG_SHA256},
                    .curveID = TPM2_ECC_NIST_P256,
                    .kdf = {.scheme = TPM2_ALG_NULL},
                },
            .unique.ecc = {.x = {.size = 32}, .y = {.size = 32}},
        }};
    TPM2B_SENSITIVE_CREATE sens = {0};
    TPM2B_DATA outside = {0};
    TPML_PCR_SELECTION no_pcrs = {0};
    TSS2_RC rc;

    *ak = ESYS_TR_NONE;
    if (RAND_bytes(tmpl.publicArea.unique.ecc.x.buffer, 32) != 1 ||
        RAND_bytes(tmpl.publicArea.unique.ecc.y.buffer, 32) != 1) {
        gw_put_err(err, err_size, "TPM: no random bytes for the AK");
        return -1;
    }
    rc = Esys_CreatePrimary(t->ctx, ESYS_TR_RH_ENDORSEMENT, ESYS_TR_PASSWORD,
                            ESYS_TR_NONE, ESYS_TR_NONE, &sens, &tmpl, &outside,
                            &no_pcrs, ak, pub, NULL, NULL, NULL);
    if (rc != TSS2_RC_SUCCESS) {
        *ak = ESYS_TR_NONE;
        put_rc(err, err_size, "creating an attestation key", rc);
        return -1;
    }
    return 0;
}

/* The name (nameAlg || H(TPMT_PUBLIC)) of a loaded object. */
static int object_name(gw_tpm *t, ESYS_TR obj, TPM2B_NAME **name, char *err,
                       size_t err_size)
{
    TSS2_RC rc = Esys_TR_GetName(t->ctx, obj, name);

    if (rc != TSS2_RC_SUCCESS) {
        put_rc(err, err_size, "object name", rc);
        return -1;
    }
    return 0;
}

/* ---- PCRs and quotes ----------------------------------------------------- */

static void selection_of(const veil_pcr_sel *sel, TPML_PCR_SELECTION *out)
{
    memset(out, 0, sizeof *out);
    out->count = 1;
    out->pcrSelections[0].hash = TPM2_ALG_SHA256;
    out->pcrSelections[0].sizeofSelect = 3;
    for (unsigned i = 0; i < sel->n; i++)
        out->pcrSelections[0].pcrSelect[sel->index[i] / 8] |=
            (uint8_t)(1u << (sel->index[i] % 8));
}

/* Reads the selected PCRs into values (sel order, ascending).  A TPM
 * answers at most 8 digests a call, so this asks for the rest until every
 * PCR has come back. */
static int pcr_read(gw_tpm *t, uint8_t (*values)[32], char *err,
                    size_t err_size)
{
    TPML_PCR_SELECTION want;
    int got[VEIL_EV_MAX_PCRS] = {0};
    unsigned left = t->sel.n;

    selection_of(&t->sel, &want);
    while (left > 0) {
        TPML_PCR_SELECTION *out_sel = NULL;
        TPML_DIGEST *digests = NULL;
        UINT32 counter;
        unsigned k = 0, before = left;
        TSS2_RC rc;

        rc = Esys_PCR_Read(t->ctx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                           &want, &counter, &out_sel, &digests);
        if (rc != TSS2_RC_SUCCESS) {
            put_rc(err, err_size, "reading PCRs", rc);
            return -1;
        }
        /* Digests come in the order of the returned selection: banks in
         * order, PCRs ascending within a bank. */
        for (UINT32 b = 0; b < out_sel->count; b++) {
            const TPMS_PCR_SELECTION *s = &out_sel->pcrSelections[b];
            for (unsigned idx = 0; idx < 8u * s->sizeofSelect; idx++) {
                if (!(s->pcrSelect[idx / 8] & (1u << (idx % 8))))
                    continue;
                if (k >= digests->count)
                    break;
                if (s->hash == TPM2_ALG_SHA256 && idx < 24 &&
                    digests->digests[k].size == 32) {
                    for (unsigned i = 0; i < t->sel.n; i++) {
                        if (t->sel.index[i] != idx || got[i])
                            continue;
                        memcpy(values[i], digests->digests[k].buffer, 32);
                        got[i] = 1;
                        left--;
                        want.pcrSelections[0].pcrSelect[idx / 8] &=
                            (uint8_t) ~(1u << (idx % 8));
                    }
                }
                k++;
            }
        }
        Esys_Free(out_sel);
        Esys_Free(digests);
        if (left == before) {
            gw_put_err(err, err_size,
                       "TPM: PCRs %s: the TPM returns no value for some "
                       "(is the sha256 bank active?)",
                       t->pcr_banks);
            return -1;
        }
    }
    return 0;
}

/* A TPM2_Quote of the selection by `ak` and the PCR values it covers.  A
 * PCR can be extended between the read and the quote; the values are then
 * read and quoted once more, and a second mismatch is an error (a verifier
 * would refuse the evidence). */
static int quote_pcrs(gw_tpm *t, ESYS_TR ak, const uint8_t qualifying[32],
                      uint8_t (*values)[32], TPM2B_ATTEST **quoted,
                      TPMT_SIGNATURE **sig, char *err, size_t err_size)
{
    TPM2B_DATA qd = {.size = 32};
    TPMT_SIG_SCHEME scheme = {.scheme = TPM2_ALG_ECDSA,
                              .details.ecdsa.hashAlg = TPM2_ALG_SHA256};
    TPML_PCR_SELECTION sel;

    memcpy(qd.buffer, qualifying, 32);
    selection_of(&t->sel, &sel);
    for (int attempt = 0; attempt < 2; attempt++) {
        TPMS_ATTEST info;
        size_t off = 0;
        uint8_t digest[32];
        unsigned dlen = 0;
        EVP_MD_CTX *md;
        TSS2_RC rc;
        int same;

        memset(&info, 0, sizeof info);
        if (pcr_read(t, values, err, err_size) != 0)
            return -1;
        rc = Esys_Quote(t->ctx, ak, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                        ESYS_TR_NONE, &qd, &scheme, &sel, quoted, sig);
        if (rc != TSS2_RC_SUCCESS) {
            put_rc(err, err_size, "quote", rc);
            return -1;
        }
        rc = Tss2_MU_TPMS_ATTEST_Unmarshal((*quoted)->attestationData,
                                           (*quoted)->size, &off, &info);
        md = EVP_MD_CTX_new();
        if (rc != TSS2_RC_SUCCESS || !md ||
            EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
            EVP_DigestUpdate(md, values, 32u * t->sel.n) != 1 ||
            EVP_DigestFinal_ex(md, digest, &dlen) != 1) {
            EVP_MD_CTX_free(md);
            gw_put_err(err, err_size, "TPM: cannot check the quote");
            goto fail;
        }
        EVP_MD_CTX_free(md);
        same = info.type == TPM2_ST_ATTEST_QUOTE &&
               info.attested.quote.pcrDigest.size == 32 &&
               memcmp(info.attested.quote.pcrDigest.buffer, digest, 32) == 0;
        if (same)
            return 0;
        tlog(t, VEIL_LOG_DEBUG, "PCRs changed during the quote%s",
             attempt == 0 ? "; once more" : "");
        if (attempt == 1)
            break;
        Esys_Free(*quoted);
        Esys_Free(*sig);
        *quoted = NULL;
        *sig = NULL;
    }
    gw_put_err(err, err_size, "TPM: the PCRs keep changing during quotes");
fail:
    Esys_Free(*quoted);
    Esys_Free(*sig);
    *quoted = NULL;
    *sig = NULL;
    return -1;
}

/* TPM2_Certify of `obj` by `signer` (both with password sessions). */
static int certify(gw_tpm *t, ESYS_TR obj, ESYS_TR signer,
                   const uint8_t qualifying[32], TPM2B_ATTEST **info,
                   TPMT_SIGNATURE **sig, char *err, size_t err_size)
{
    TPM2B_DATA qd = {.size = 32};
    TPMT_SIG_SCHEME scheme = {.scheme = TPM2_ALG_ECDSA,
                              .details.ecdsa.hashAlg = TPM2_ALG_SHA256};
    TSS2_RC rc;

    memcpy(qd.buffer, qualifying, 32);
    rc = Esys_Certify(t->ctx, obj, signer, ESYS_TR_PASSWORD, ESYS_TR_PASSWORD,
                      ESYS_TR_NONE, &qd, &scheme, info, sig);
    if (rc != TSS2_RC_SUCCESS) {
        put_rc(err, err_size, "certify", rc);
        return -1;
    }
    return 0;
}

/* obj[key] = {"attest_b64", "signature_b64"} (+ "pubkey_b64" when given). */
static int add_attestation(cJSON *obj, const char *key,
                           const TPM2B_ATTEST *info, const TPMT_SIGNATURE *sig,
                           const char *pub_b64)
{
    uint8_t buf[sizeof(TPMT_SIGNATURE)];
    size_t off = 0;
    cJSON *a = cJSON_CreateObject();

    if (!a || !cJSON_AddItemToObject(obj, key, a))
        return cJSON_Delete(a), -1;
    if (Tss2_MU_TPMT_SIGNATURE_Marshal(sig, buf, sizeof buf, &off) !=
            TSS2_RC_SUCCESS ||
        add_b64(a, "attest_b64", info->attestationData, info->size) != 0 ||
        add_b64(a, "signature_b64", buf, off) != 0 ||
        (pub_b64 && !cJSON_AddStringToObject(a, "pubkey_b64", pub_b64)))
        return -1;
    return 0;
}

/* The fields a quote and a report share: pcr_banks, pcr_values, quote_b64,
 * signature_b64, qualifying_data. */
static int add_quote_fields(gw_tpm *t, cJSON *obj, const uint8_t (*values)[32],
                            const TPM2B_ATTEST *quoted,
                            const TPMT_SIGNATURE *sig,
                            const uint8_t qualifying[32])
{
    uint8_t buf[sizeof(TPMT_SIGNATURE)];
    size_t off = 0;
    cJSON *banks, *bank;
    char idx[4];

    if (!cJSON_AddStringToObject(obj, "pcr_banks", t->pcr_banks) ||
        !(banks = cJSON_AddObjectToObject(obj, "pcr_values")) ||
        !(bank = cJSON_AddObjectToObject(banks, "sha256")))
        return -1;
    for (unsigned i = 0; i < t->sel.n; i++) {
        snprintf(idx, sizeof idx, "%u", t->sel.index[i]);
        if (add_hex(bank, idx, values[i], 32) != 0)
            return -1;
    }
    if (Tss2_MU_TPMT_SIGNATURE_Marshal(sig, buf, sizeof buf, &off) !=
            TSS2_RC_SUCCESS ||
        add_b64(obj, "quote_b64", quoted->attestationData, quoted->size) ||
        add_b64(obj, "signature_b64", buf, off) ||
        add_hex(obj, "qualifying_data", qualifying, 32))
        return -1;
    return 0;
}

/* ---- the encryption key as a TPM object (tss2_key) ----------------------- */

typedef struct tss2_blob {
    int empty_auth;
    uint64_t parent;
    TPM2B_PUBLIC pub;
    TPM2B_PRIVATE priv;
} tss2_blob;

/* Parses a "TSS2 PRIVATE KEY" DER:
 *   TPMKey ::= SEQUENCE {
 *     type        OBJECT IDENTIFIER,      -- 2.23.133.10.1.3: loadable
 *     emptyAuth   [0] EXPLICIT BOOLEAN OPTIONAL,
 *     policy      [1] EXPLICIT SEQUENCE OF TPMPolicy OPTIONAL,
 *     secret      [2] EXPLICIT OCTET STRING OPTIONAL,
 *     authPolicy  [3] EXPLICIT SEQUENCE OF TPMAuthPolicy OPTIONAL,
 *     parent      INTEGER,
 *     pubkey      OCTET STRING,           -- TPM2B_PUBLIC
 *     privkey     OCTET STRING }          -- TPM2B_PRIVATE
 * Keys with a policy or an import secret are refused: we can only give a
 * key its auth value. */
static int tss2_parse(const uint8_t *der, long len, tss2_blob *out, char *err,
                      size_t err_size)
{
    const unsigned char *p = der, *end;
    ASN1_OBJECT *oid = NULL;
    ASN1_INTEGER *parent = NULL;
    ASN1_OCTET_STRING *pub = NULL, *priv = NULL;
    char oid_text[64];
    long l;
    int tag, cls, r, ret = -1;
    size_t off;

    memset(out, 0, sizeof *out);
    r = ASN1_get_object(&p, &l, &tag, &cls, len);
    if ((r & 0x80) || r != V_ASN1_CONSTRUCTED || tag != V_ASN1_SEQUENCE ||
        cls != V_ASN1_UNIVERSAL)
        goto bad;
    end = p + l;
    if (!(oid = d2i_ASN1_OBJECT(NULL, &p, end - p)) ||
        OBJ_obj2txt(oid_text, sizeof oid_text, oid, 1) <= 0)
        goto bad;
    if (strcmp(oid_text, TSS2_KEY_OID) != 0) {
        gw_put_err(err, err_size,
                   "tss2_key: type %s is not a loadable key (%s)", oid_text,
                   TSS2_KEY_OID);
        goto out;
    }
    while (p < end && (*p & 0xc0) == 0x80) { /* context-specific tags */
        const unsigned char *q = p;

        r = ASN1_get_object(&q, &l, &tag, &cls, end - p);
        if ((r & 0x80) || r != V_ASN1_CONSTRUCTED)
            goto bad;
        if (tag != 0) {
            gw_put_err(err, err_size,
                       "tss2_key: keys with a policy or an import secret "
                       "([%d]) are not supported",
                       tag);
            goto out;
        }
        {
            const unsigned char *b = q;
            long bl;
            int btag, bcls;

            r = ASN1_get_object(&b, &bl, &btag, &bcls, l);
            if ((r & 0x80) || btag != V_ASN1_BOOLEAN || bl != 1)
                goto bad;
            out->empty_auth = b[0] != 0;
        }
        p = q + l;
    }
    if (!(parent = d2i_ASN1_INTEGER(NULL, &p, end - p)) ||
        ASN1_INTEGER_get_uint64(&out->parent, parent) != 1 ||
        !(pub = d2i_ASN1_OCTET_STRING(NULL, &p, end - p)) ||
        !(priv = d2i_ASN1_OCTET_STRING(NULL, &p, end - p)) || p != end)
        goto bad;
    off = 0;
    if (Tss2_MU_TPM2B_PUBLIC_Unmarshal(ASN1_STRING_get0_data(pub),
                                       (size_t)ASN1_STRING_length(pub), &off,
                                       &out->pub) != TSS2_RC_SUCCESS ||
        off != (size_t)ASN1_STRING_length(pub))
        goto bad;
    off = 0;
    if (Tss2_MU_TPM2B_PRIVATE_Unmarshal(ASN1_STRING_get0_data(priv),
                                        (size_t)ASN1_STRING_length(priv), &off,
                                        &out->priv) != TSS2_RC_SUCCESS ||
        off != (size_t)ASN1_STRING_length(priv))
        goto bad;
    ret = 0;
    goto out;
bad:
    gw_put_err(err, err_size, "tss2_key: not a valid TSS2 PRIVATE KEY");
out:
    ASN1_OBJECT_free(oid);
    ASN1_INTEGER_free(parent);
    ASN1_OCTET_STRING_free(pub);
    ASN1_OCTET_STRING_free(priv);
    return ret;
}

static int tss2_read_file(const char *path, tss2_blob *blob, char *err,
                          size_t err_size)
{
    BIO *bio = BIO_new_file(path, "r");
    unsigned char *der = NULL;
    char *name = NULL, *header = NULL;
    long len = 0;
    int ret = -1;

    if (!bio) {
        gw_put_err(err, err_size, "tss2_key: cannot read %s", path);
        return -1;
    }
    if (PEM_read_bio(bio, &name, &header, &der, &len) != 1 ||
        strcmp(name, "TSS2 PRIVATE KEY") != 0)
        gw_put_err(err, err_size, "tss2_key: %s holds no TSS2 PRIVATE KEY",
                   path);
    else
        ret = tss2_parse(der, len, blob, err, err_size);
    BIO_free(bio);
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(der);
    return ret;
}

/* Loads the key under its persistent parent, checks it is the gateway's
 * encryption key and can be certified, and sets its auth value. */
static int key_load(gw_tpm *t, const gw_tpm_options *opt, char *err,
                    size_t err_size)
{
    tss2_blob blob;
    char msg[384];
    ESYS_TR parent = ESYS_TR_NONE;
    EVP_PKEY *mine = NULL, *given = NULL;
    const unsigned char *p;
    veil_pin_source src;
    veil_secbuf *pin = NULL;
    TPM2B_AUTH auth = {0};
    TPM2B_ATTEST *info = NULL;
    TPMT_SIGNATURE *sig = NULL;
    uint8_t zero[32] = {0};
    uint32_t attrs;
    TSS2_RC rc;
    int ret = -1;

    if (!opt->encryption_spki || opt->encryption_spki_len == 0) {
        gw_put_err(err, err_size,
                   "TPM: tpm_certify_key needs the encryption key's SPKI");
        return -1;
    }
    if (tss2_read_file(opt->tss2_key, &blob, msg, sizeof msg) != 0) {
        gw_put_err(err, err_size, "TPM: %s", msg);
        return -1;
    }
    attrs = blob.pub.publicArea.objectAttributes;
    if (!(attrs & TPMA_OBJECT_FIXEDTPM) ||
        !(attrs & TPMA_OBJECT_SENSITIVEDATAORIGIN)) {
        gw_put_err(err, err_size,
                   "TPM: tss2_key: the key is not fixedTPM and "
                   "sensitiveDataOrigin (made outside the TPM or "
                   "duplicable): certifying it proves nothing");
        goto out;
    }
    mine = pkey_from_public(&blob.pub.publicArea);
    p = opt->encryption_spki;
    given = d2i_PUBKEY(NULL, &p, (long)opt->encryption_spki_len);
    if (!mine || !given || EVP_PKEY_eq(mine, given) != 1) {
        gw_put_err(err, err_size,
                   "TPM: tss2_key: not the gateway's encryption key");
        goto out;
    }
    if ((blob.parent >> 24) != TPM2_HT_PERSISTENT) {
        gw_put_err(err, err_size,
                   "TPM: tss2_key: parent 0x%08llx is not a persistent "
                   "handle (only those are supported)",
                   (unsigned long long)blob.parent);
        goto out;
    }
    if (opt->tss2_key_auth) {
        if (veil_pin_source_parse(opt->tss2_key_auth, &src) != VEIL_OK ||
            veil_pin_read(&src, "TPM key auth: ", &pin) != VEIL_OK) {
            gw_put_err(err, err_size, "TPM: tss2_key_auth: %s",
                       veil_last_error()->message);
            goto out;
        }
        if (veil_secbuf_len(pin) > sizeof auth.buffer) {
            gw_put_err(err, err_size, "TPM: tss2_key_auth: longer than %zu",
                       sizeof auth.buffer);
            goto out;
        }
        auth.size = (uint16_t)veil_secbuf_len(pin);
        memcpy(auth.buffer, veil_secbuf_data(pin), auth.size);
    } else if (!blob.empty_auth) {
        gw_put_err(err, err_size,
                   "TPM: tss2_key: the key has an auth value; set "
                   "tpm_certify_key_auth");
        goto out;
    }
    rc = Esys_TR_FromTPMPublic(t->ctx, (TPM2_HANDLE)blob.parent, ESYS_TR_NONE,
                               ESYS_TR_NONE, ESYS_TR_NONE, &parent);
    if (rc != TSS2_RC_SUCCESS) {
        snprintf(msg, sizeof msg, "tss2_key: parent 0x%08llx",
                 (unsigned long long)blob.parent);
        put_rc(err, err_size, msg, rc);
        goto out;
    }
    rc = Esys_Load(t->ctx, parent, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                   &blob.priv, &blob.pub, &t->key);
    if (rc != TSS2_RC_SUCCESS) {
        t->key = ESYS_TR_NONE;
        put_rc(err, err_size, "tss2_key: loading", rc);
        goto out;
    }
    rc = Esys_TR_SetAuth(t->ctx, t->key, &auth);
    if (rc != TSS2_RC_SUCCESS) {
        put_rc(err, err_size, "tss2_key: auth", rc);
        goto out;
    }
    /* One certification now: a wrong auth value shows at start-up, not as
     * an authorization failure (and a step towards dictionary-attack
     * lockout) in every answer. */
    if (certify(t, t->key, t->ak, zero, &info, &sig, msg, sizeof msg) != 0) {
        gw_put_err(err, err_size, "%s (of tss2_key; is its auth right?)", msg);
        goto out;
    }
    if (!(t->key_pub_b64 = b64_public(&blob.pub))) {
        gw_put_err(err, err_size, "TPM: out of memory");
        goto out;
    }
    ret = 0;
out:
    if (parent != ESYS_TR_NONE)
        Esys_TR_Close(t->ctx, &parent);
    OPENSSL_cleanse(&auth, sizeof auth);
    veil_secbuf_free(pin);
    EVP_PKEY_free(mine);
    EVP_PKEY_free(given);
    Esys_Free(info);
    Esys_Free(sig);
    OPENSSL_cleanse(&blob, sizeof blob);
    return ret;
}

/* ---- event log ----------------------------------------------------------- */

/* The firmware's measurement log, when the kernel shows it to us.  It
 * belongs to the platform's TPM (tpm0), so a software TPM gets none: it
 * would describe PCRs the quote is not about. */
static void event_log_read(gw_tpm *t)
{
    FILE *f;
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0, n;

    if (t->software || !(f = fopen(EVENT_LOG_PATH, "rb")))
        return;
    /* securityfs reports size 0: read until the end. */
    for (;;) {
        if (len == cap) {
            uint8_t *bigger;
            if (cap >= EVENT_LOG_MAX)
                break;
            cap = cap ? 2 * cap : 65536;
            if (!(bigger = realloc(buf, cap)))
                break;
            buf = bigger;
        }
        n = fread(buf + len, 1, cap - len, f);
        if (n == 0)
            break;
        len += n;
    }
    if (ferror(f) || len == 0 || len >= EVENT_LOG_MAX)
        tlog(t, VEIL_LOG_WARN, "%s: unreadable or too large; no event log",
             EVENT_LOG_PATH);
    else
        t->event_log_b64 = veil_b64_encode(buf, len);
    fclose(f);
    free(buf);
}

/* ---- the API ------------------------------------------------------------- */

gw_tpm *gw_tpm_open(const gw_tpm_options *opt, char *err, size_t err_size)
{
    gw_tpm *t;
    TPM2B_PUBLIC *ak_pub = NULL;
    TPM2B_NAME *name = NULL;
    uint8_t values[VEIL_EV_MAX_PCRS][32];
    double t0;
    TSS2_RC rc;

    if (!opt) {
        gw_put_err(err, err_size, "TPM: no options");
        return NULL;
    }
    if (!(t = calloc(1, sizeof *t))) {
        gw_put_err(err, err_size, "TPM: out of memory");
        return NULL;
    }
    t->ak = ESYS_TR_NONE;
    t->key = ESYS_TR_NONE;
    t->log = opt->log;
    t->log_ctx = opt->log_ctx;
    t->log_level = opt->log_level;
    t->ak_per_request = opt->ak_per_request;
    if (pthread_mutex_init(&t->lock, NULL) != 0) {
        free(t);
        gw_put_err(err, err_size, "TPM: cannot make a lock");
        return NULL;
    }
    if (veil_pcr_sel_parse(opt->pcrs ? opt->pcrs : DEFAULT_PCRS, &t->sel) !=
        VEIL_OK) {
        gw_put_err(err, err_size, "TPM: tpm_pcrs: %s",
                   veil_last_error()->message);
        goto fail;
    }
    if (t->sel.n == 0) {
        gw_put_err(err, err_size, "TPM: tpm_pcrs: no PCR selected");
        goto fail;
    }
    veil_pcr_sel_format(&t->sel, t->pcr_banks, sizeof t->pcr_banks);

    rc = Tss2_TctiLdr_Initialize(opt->tcti, &t->tcti);
    if (rc != TSS2_RC_SUCCESS) {
        gw_put_err(err, err_size, "TPM: TCTI \"%s\": %s",
                   opt->tcti ? opt->tcti : "(default)", Tss2_RC_Decode(rc));
        t->tcti = NULL;
        goto fail;
    }
    rc = Esys_Initialize(&t->ctx, t->tcti, NULL);
    if (rc != TSS2_RC_SUCCESS) {
        t->ctx = NULL;
        put_rc(err, err_size, "ESYS", rc);
        goto fail;
    }
    if (read_identity(t, err, err_size) != 0 || ek_make(t, err, err_size) ||
        ek_cert_read(t, err, err_size) != 0)
        goto fail;
    ek_cert_check(t);

    t0 = now_ms();
    if (ak_make(t, &t->ak, &ak_pub, err, err_size) != 0)
        goto fail;
    tlog(t, VEIL_LOG_DEBUG, "AK created in %.0f ms", now_ms() - t0);
    if (object_name(t, t->ak, &name, err, err_size) != 0)
        goto fail;
    if (!(t->ak_pub_b64 = b64_public(ak_pub)) ||
        !(t->ak_name_hex = hex_encode(name->name, name->size))) {
        gw_put_err(err, err_size, "TPM: out of memory");
        goto fail;
    }
    if (pcr_read(t, values, err, err_size) != 0)
        goto fail;
    if (opt->tss2_key && key_load(t, opt, err, err_size) != 0)
        goto fail;
    event_log_read(t);
    Esys_Free(ak_pub);
    Esys_Free(name);
    return t;
fail:
    Esys_Free(ak_pub);
    Esys_Free(name);
    gw_tpm_free(t);
    return NULL;
}

void gw_tpm_free(gw_tpm *t)
{
    if (!t)
        return;
    if (t->ctx) {
        if (t->key != ESYS_TR_NONE) {
            /* ESYS keeps the auth value with the object: wipe it. */
            TPM2B_AUTH none = {0};
            Esys_TR_SetAuth(t->ctx, t->key, &none);
            Esys_FlushContext(t->ctx, t->key);
        }
        if (t->ak != ESYS_TR_NONE)
            Esys_FlushContext(t->ctx, t->ak);
        Esys_Finalize(&t->ctx);
    }
    if (t->tcti)
        Tss2_TctiLdr_Finalize(&t->tcti);
    Esys_Free(t->ek_saved);
    free(t->ek_pub_b64);
    free(t->ek_spki_b64);
    free(t->ek_cert_b64);
    free(t->ak_pub_b64);
    free(t->ak_name_hex);
    free(t->key_pub_b64);
    free(t->event_log_b64);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

int gw_tpm_is_software(const gw_tpm *t)
{
    return t ? t->software : 0;
}

const char *gw_tpm_describe(const gw_tpm *t)
{
    return t ? t->describe : "no TPM";
}

/* The quote object; called with the lock held. */
static cJSON *quote_locked(gw_tpm *t, const uint8_t qualifying[32], char *err,
                           size_t err_size)
{
    ESYS_TR signer = t->ak, fresh = ESYS_TR_NONE;
    TPM2B_PUBLIC *fresh_pub = NULL;
    TPM2B_NAME *fresh_name = NULL;
    TPM2B_ATTEST *quoted = NULL, *ak_cert = NULL, *key_cert = NULL;
    TPMT_SIGNATURE *sig = NULL, *ak_sig = NULL, *key_sig = NULL;
    uint8_t values[VEIL_EV_MAX_PCRS][32];
    char *fresh_pub_b64 = NULL, *fresh_name_hex = NULL;
    cJSON *q = NULL;
    int ok = 0;

    if (t->ak_per_request) {
        if (ak_make(t, &fresh, &fresh_pub, err, err_size) != 0 ||
            object_name(t, fresh, &fresh_name, err, err_size) != 0 ||
            certify(t, fresh, t->ak, qualifying, &ak_cert, &ak_sig, err,
                    err_size) != 0)
            goto out;
        signer = fresh;
        fresh_pub_b64 = b64_public(fresh_pub);
        fresh_name_hex = hex_encode(fresh_name->name, fresh_name->size);
        if (!fresh_pub_b64 || !fresh_name_hex)
            goto nomem;
    }
    if (quote_pcrs(t, signer, qualifying, values, &quoted, &sig, err,
                   err_size) != 0)
        goto out;
    if (t->key != ESYS_TR_NONE &&
        certify(t, t->key, signer, qualifying, &key_cert, &key_sig, err,
                err_size) != 0)
        goto out;

    if (!(q = cJSON_CreateObject()) ||
        !cJSON_AddBoolToObject(q, "is_available", 1) ||
        !cJSON_AddStringToObject(q, "format", "veil-tpm2-quote-v1") ||
        add_quote_fields(t, q, (const uint8_t(*)[32])values, quoted, sig,
                         qualifying) != 0 ||
        !cJSON_AddStringToObject(q, "aik_pubkey_b64",
                                 fresh_pub_b64 ? fresh_pub_b64
                                               : t->ak_pub_b64) ||
        !cJSON_AddStringToObject(
            q, "aik_name", fresh_name_hex ? fresh_name_hex : t->ak_name_hex) ||
        !cJSON_AddBoolToObject(q, "software_tpm", t->software))
        goto nomem;
    if (ak_cert ? add_attestation(q, "aik_certify", ak_cert, ak_sig, NULL)
                : !cJSON_AddNullToObject(q, "aik_certify"))
        goto nomem;
    if (key_cert ? add_attestation(q, "key_certify", key_cert, key_sig,
                                   t->key_pub_b64)
                 : !cJSON_AddNullToObject(q, "key_certify"))
        goto nomem;
    ok = 1;
    goto out;
nomem:
    gw_put_err(err, err_size, "TPM: out of memory");
out:
    if (fresh != ESYS_TR_NONE)
        Esys_FlushContext(t->ctx, fresh);
    Esys_Free(fresh_pub);
    Esys_Free(fresh_name);
    Esys_Free(quoted);
    Esys_Free(sig);
    Esys_Free(ak_cert);
    Esys_Free(ak_sig);
    Esys_Free(key_cert);
    Esys_Free(key_sig);
    free(fresh_pub_b64);
    free(fresh_name_hex);
    if (!ok) {
        cJSON_Delete(q);
        return NULL;
    }
    return q;
}

cJSON *gw_tpm_quote(gw_tpm *t, const uint8_t qualifying[32], char *err,
                    size_t err_size)
{
    cJSON *q;

    if (!t || !qualifying) {
        gw_put_err(err, err_size, "TPM: no TPM");
        return NULL;
    }
    pthread_mutex_lock(&t->lock);
    q = quote_locked(t, qualifying, err, err_size);
    pthread_mutex_unlock(&t->lock);
    return q;
}

int gw_tpm_report(gw_tpm *t, const uint8_t qualifying[32], cJSON *report,
                  char *err, size_t err_size)
{
    TPM2B_ATTEST *quoted = NULL, *key_cert = NULL;
    TPMT_SIGNATURE *sig = NULL, *key_sig = NULL;
    uint8_t values[VEIL_EV_MAX_PCRS][32];
    cJSON *info;
    int rc = -1;

    if (!t || !qualifying || !report) {
        gw_put_err(err, err_size, "TPM: no TPM");
        return -1;
    }
    pthread_mutex_lock(&t->lock);
    if (quote_pcrs(t, t->ak, qualifying, values, &quoted, &sig, err,
                   err_size) != 0 ||
        (t->key != ESYS_TR_NONE &&
         certify(t, t->key, t->ak, qualifying, &key_cert, &key_sig, err,
                 err_size) != 0)) {
        pthread_mutex_unlock(&t->lock);
        goto out;
    }
    pthread_mutex_unlock(&t->lock);

    if (!(info = cJSON_AddObjectToObject(report, "tpm")) ||
        !cJSON_AddStringToObject(info, "manufacturer", t->manufacturer) ||
        !cJSON_AddStringToObject(info, "vendor", t->vendor) ||
        !cJSON_AddStringToObject(info, "firmware", t->firmware) ||
        !cJSON_AddBoolToObject(info, "software_tpm", t->software) ||
        !cJSON_AddStringToObject(report, "ek_pubkey_b64", t->ek_pub_b64) ||
        !cJSON_AddStringToObject(report, "ek_spki_b64", t->ek_spki_b64) ||
        add_str_or_null(report, "ek_cert_b64", t->ek_cert_b64) ||
        !cJSON_AddStringToObject(report, "aik_pubkey_b64", t->ak_pub_b64) ||
        !cJSON_AddStringToObject(report, "aik_name", t->ak_name_hex) ||
        add_quote_fields(t, report, (const uint8_t(*)[32])values, quoted, sig,
                         qualifying) != 0 ||
        (key_cert ? add_attestation(report, "key_certify", key_cert, key_sig,
                                    t->key_pub_b64)
                  : !cJSON_AddNullToObject(report, "key_certify")) ||
        add_str_or_null(report, "event_log_b64", t->event_log_b64)) {
        gw_put_err(err, err_size, "TPM: out of memory");
        goto out;
    }
    rc = 0;
out:
    Esys_Free(quoted);
    Esys_Free(sig);
    Esys_Free(key_cert);
    Esys_Free(key_sig);
    return rc;
}

/* 1 when rc from TPM2_ActivateCredential is the TPM refusing the
 * credential rather than failing: an error on its first two parameters
 * (the credential blob or the encrypted secret: wrong name, wrong EK,
 * tampered or malformed; TPM_RC_INTEGRITY, _VALUE, _SIZE, ...).
 *
 * libtpms before 0.10 answers TPM_RC_FAILURE when the secret does not
 * decrypt under the EK (stefanberger/libtpms#445 made it TPM_RC_VALUE), so
 * anyone could make a swtpm-backed gateway report a TPM failure.  The TPM
 * is not in failure mode then: the commands just before succeeded, and a
 * TPM that really failed refuses the next command, where it shows. */
static int refused_credential(TSS2_RC rc)
{
    unsigned n;

    if ((rc & TSS2_RC_LAYER_MASK) != TSS2_TPM_RC_LAYER)
        return 0;
    if (rc == TPM2_RC_FAILURE)
        return 1;
    if (!(rc & TPM2_RC_FMT1) || !(rc & TPM2_RC_P))
        return 0;
    n = (rc & TPM2_RC_N_MASK) >> 8;
    return n == 1 || n == 2;
}

static int activate_locked(gw_tpm *t, const TPM2B_ID_OBJECT *blob,
                           const TPM2B_ENCRYPTED_SECRET *secret,
                           uint8_t out[64], size_t *out_len, char *err,
                           size_t err_size)
{
    TPMT_SYM_DEF no_sym = {.algorithm = TPM2_ALG_NULL};
    ESYS_TR ek = ESYS_TR_NONE, session = ESYS_TR_NONE;
    TPM2B_DIGEST *cert_info = NULL;
    TSS2_RC rc;
    int ret = -1;

    rc = Esys_ContextLoad(t->ctx, t->ek_saved, &ek);
    if (rc != TSS2_RC_SUCCESS) {
        ek = ESYS_TR_NONE;
        put_rc(err, err_size, "loading the EK", rc);
        goto out;
    }
    /* The EK's policy A: PolicySecret(TPM_RH_ENDORSEMENT). */
    rc = Esys_StartAuthSession(t->ctx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                               ESYS_TR_NONE, ESYS_TR_NONE, NULL, TPM2_SE_POLICY,
                               &no_sym, TPM2_ALG_SHA256, &session);
    if (rc != TSS2_RC_SUCCESS) {
        session = ESYS_TR_NONE;
        put_rc(err, err_size, "policy session", rc);
        goto out;
    }
    rc = Esys_PolicySecret(t->ctx, ESYS_TR_RH_ENDORSEMENT, session,
                           ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, NULL,
                           NULL, NULL, 0, NULL, NULL);
    if (rc != TSS2_RC_SUCCESS) {
        put_rc(err, err_size, "PolicySecret", rc);
        goto out;
    }
    rc = Esys_ActivateCredential(t->ctx, t->ak, ek, ESYS_TR_PASSWORD, session,
                                 ESYS_TR_NONE, blob, secret, &cert_info);
    if (rc != TSS2_RC_SUCCESS) {
        if (refused_credential(rc)) {
            gw_put_err(err, err_size, "TPM: credential refused: %s",
                       Tss2_RC_Decode(rc));
            ret = 1;
        } else {
            put_rc(err, err_size, "ActivateCredential", rc);
        }
        goto out;
    }
    if (cert_info->size > 64) {
        gw_put_err(err, err_size, "TPM: the secret is over 64 bytes");
        goto out;
    }
    memcpy(out, cert_info->buffer, cert_info->size);
    *out_len = cert_info->size;
    ret = 0;
out:
    if (cert_info) {
        OPENSSL_cleanse(cert_info, sizeof *cert_info);
        Esys_Free(cert_info);
    }
    if (session != ESYS_TR_NONE)
        Esys_FlushContext(t->ctx, session);
    if (ek != ESYS_TR_NONE)
        Esys_FlushContext(t->ctx, ek);
    return ret;
}

int gw_tpm_activate(gw_tpm *t, const uint8_t *blob, size_t blob_len,
                    const uint8_t *enc_secret, size_t enc_len, uint8_t out[64],
                    size_t *out_len, char *err, size_t err_size)
{
    TPM2B_ID_OBJECT id = {0};
    TPM2B_ENCRYPTED_SECRET secret = {0};
    size_t off = 0;
    int ret;

    if (!t || !out || !out_len) {
        gw_put_err(err, err_size, "TPM: no TPM");
        return -1;
    }
    *out_len = 0;
    /* Malformed input is the client's credential being wrong, like a
     * credential the TPM refuses. */
    if (!blob ||
        Tss2_MU_TPM2B_ID_OBJECT_Unmarshal(blob, blob_len, &off, &id) !=
            TSS2_RC_SUCCESS ||
        off != blob_len) {
        gw_put_err(err, err_size,
                   "TPM: credential blob: not a TPM2B_ID_OBJECT");
        return 1;
    }
    off = 0;
    if (!enc_secret ||
        Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal(enc_secret, enc_len, &off,
                                                 &secret) != TSS2_RC_SUCCESS ||
        off != enc_len) {
        gw_put_err(err, err_size,
                   "TPM: encrypted secret: not a TPM2B_ENCRYPTED_SECRET");
        return 1;
    }
    pthread_mutex_lock(&t->lock);
    ret = activate_locked(t, &id, &secret, out, out_len, err, err_size);
    pthread_mutex_unlock(&t->lock);
    return ret;
}
