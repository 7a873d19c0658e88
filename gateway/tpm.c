/* The gateway's TPM (gateway.h, "the TPM"): evidence for docs/ATTESTATION.md
 * over tpm2-tss ESAPI.  This file: the device and the session, what the
 * TPM says of itself, the encryption key as a TPM object, the event log;
 * the keys are in tpm_ak.c, quotes in tpm_quote.c, the small helpers all
 * three use in tpm_util.c (tpm_int.h).  tpm.c opens the others' parts;
 * they never call back into it.
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
 * Every command that uses the AK or the certified key (and the AK's
 * creation, which carries its auth value) runs in one of two salted HMAC
 * sessions with encrypted parameters (tpm_sessions, tpm_util.c): no auth
 * value crosses to the TPM.  The long-term AK's auth value is kept with
 * its unique in state_dir/tpm-ak (tpm_akstore.c).
 *
 * One ESYS context serves every thread, behind t->lock.  What never
 * changes after open (descriptions, public areas, the EK certificate) is
 * encoded once at open.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
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

#include "package.h"
#include "tpm_int.h"

#define DEFAULT_PCRS "sha256:0,7,10"
#define EVENT_LOG_PATH "/sys/kernel/security/tpm0/binary_bios_measurements"
#define EVENT_LOG_MAX (8u << 20)
#define TSS2_KEY_OID "2.23.133.10.1.3" /* TSS2 PRIVATE KEY, loadable */

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

static int get_property(gw_tpm *t, TPM2_PT pt, uint32_t *value, char *err,
                        size_t err_size)
{
    TPMS_CAPABILITY_DATA *cap;

    *value = 0;
    if (tpm_capability(t, TPM2_CAP_TPM_PROPERTIES, pt, "GetCapability", &cap,
                       err, err_size) != 0)
        return -1;
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

/* A key worth certifying: made in the TPM and not duplicable, the
 * gateway's encryption key, under a persistent parent.  0, or -1 with
 * err. */
static int key_check(const gw_tpm_options *opt, const tss2_blob *blob,
                     char *err, size_t err_size)
{
    uint32_t attrs = blob->pub.publicArea.objectAttributes;
    const unsigned char *p = opt->encryption_spki;
    EVP_PKEY *mine = NULL, *given = NULL;
    int same;

    if (!(attrs & TPMA_OBJECT_FIXEDTPM) ||
        !(attrs & TPMA_OBJECT_SENSITIVEDATAORIGIN)) {
        gw_put_err(err, err_size,
                   "TPM: tss2_key: the key is not fixedTPM and "
                   "sensitiveDataOrigin (made outside the TPM or "
                   "duplicable): certifying it proves nothing");
        return -1;
    }
    mine = tpm_pkey_from_public(&blob->pub.publicArea);
    given = d2i_PUBKEY(NULL, &p, (long)opt->encryption_spki_len);
    same = mine && given && EVP_PKEY_eq(mine, given) == 1;
    EVP_PKEY_free(mine);
    EVP_PKEY_free(given);
    if (!same) {
        gw_put_err(err, err_size,
                   "TPM: tss2_key: not the gateway's encryption key");
        return -1;
    }
    if ((blob->parent >> 24) != TPM2_HT_PERSISTENT) {
        gw_put_err(err, err_size,
                   "TPM: tss2_key: parent 0x%08llx is not a persistent "
                   "handle (only those are supported)",
                   (unsigned long long)blob->parent);
        return -1;
    }
    return 0;
}

/* The key's auth value, read from tss2_key_auth (empty without one, when
 * the key has none).  0, or -1 with err. */
static int key_auth(const gw_tpm_options *opt, const tss2_blob *blob,
                    TPM2B_AUTH *auth, char *err, size_t err_size)
{
    veil_pin_source src;
    veil_secbuf *pin = NULL;
    int ret = -1;

    if (!opt->tss2_key_auth) {
        if (blob->empty_auth)
            return 0;
        gw_put_err(err, err_size,
                   "TPM: tss2_key: the key has an auth value; set "
                   "tpm_certify_key_auth");
        return -1;
    }
    if (veil_pin_source_parse(opt->tss2_key_auth, &src) != VEIL_OK ||
        veil_pin_read(&src, "TPM key auth: ", &pin) != VEIL_OK) {
        gw_put_err(err, err_size, "TPM: tss2_key_auth: %s",
                   veil_last_error()->message);
    } else if (veil_secbuf_len(pin) > sizeof auth->buffer) {
        gw_put_err(err, err_size, "TPM: tss2_key_auth: longer than %zu",
                   sizeof auth->buffer);
    } else {
        auth->size = (uint16_t)veil_secbuf_len(pin);
        memcpy(auth->buffer, veil_secbuf_data(pin), auth->size);
        ret = 0;
    }
    veil_secbuf_free(pin);
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
    TPM2B_AUTH auth = {0};
    TPM2B_ATTEST *info = NULL;
    TPMT_SIGNATURE *sig = NULL;
    uint8_t zero[32] = {0};
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
    if (key_check(opt, &blob, err, err_size) != 0 ||
        key_auth(opt, &blob, &auth, err, err_size) != 0)
        goto out;
    rc = Esys_TR_FromTPMPublic(t->ctx, (TPM2_HANDLE)blob.parent, ESYS_TR_NONE,
                               ESYS_TR_NONE, ESYS_TR_NONE, &parent);
    if (rc != TSS2_RC_SUCCESS) {
        snprintf(msg, sizeof msg, "tss2_key: parent 0x%08llx",
                 (unsigned long long)blob.parent);
        tpm_put_rc(err, err_size, msg, rc);
        goto out;
    }
    rc = Esys_Load(t->ctx, parent, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                   &blob.priv, &blob.pub, &t->key);
    if (rc != TSS2_RC_SUCCESS) {
        t->key = ESYS_TR_NONE;
        tpm_put_rc(err, err_size, "tss2_key: loading", rc);
        goto out;
    }
    rc = Esys_TR_SetAuth(t->ctx, t->key, &auth);
    if (rc != TSS2_RC_SUCCESS) {
        tpm_put_rc(err, err_size, "tss2_key: auth", rc);
        goto out;
    }
    /* One certification now: a wrong auth value shows at start-up, not as
     * an authorization failure (and a step towards dictionary-attack
     * lockout) in every answer. */
    if (tpm_certify(t, t->key, t->ak, t->ak_key, zero, &info, &sig, msg,
                    sizeof msg) != 0) {
        gw_put_err(err, err_size, "%s (of tss2_key; is its auth right?)", msg);
        goto out;
    }
    if (!(t->key_pub_b64 = tpm_b64_public(&blob.pub))) {
        gw_put_err(err, err_size, "TPM: out of memory");
        goto out;
    }
    ret = 0;
out:
    if (parent != ESYS_TR_NONE)
        Esys_TR_Close(t->ctx, &parent);
    veil_wipe(&auth, sizeof auth);
    Esys_Free(info);
    Esys_Free(sig);
    veil_wipe(&blob, sizeof blob);
    return ret;
}

/* ---- event log ----------------------------------------------------------- */

/* The event log named by tpm_event_log (path), which must be readable;
 * without one, the firmware's measurement log when the kernel shows it to
 * us.  That belongs to the platform's TPM (tpm0), so a software TPM gets
 * none: it would describe PCRs the quote is not about.  0, or -1 with err
 * (a named log that cannot be read). */
static int event_log_read(gw_tpm *t, const char *path, char *err,
                          size_t err_size)
{
    FILE *f;
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0, n;

    if (path == NULL && t->software)
        return 0;
    if (!(f = fopen(path ? path : EVENT_LOG_PATH, "rb"))) {
        if (path == NULL)
            return 0;
        gw_put_err(err, err_size, "TPM: tpm_event_log %s: %s", path,
                   strerror(errno));
        return -1;
    }
    if (path == NULL)
        path = EVENT_LOG_PATH;
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
    int bad = ferror(f) || len == 0 || len >= EVENT_LOG_MAX;
    if (bad)
        veil_logf(&t->log, VEIL_LOG_WARN,
                  "TPM: %s: unreadable, empty or larger than %u MiB; no "
                  "event log",
                  path, EVENT_LOG_MAX >> 20);
    else if ((t->event_log_b64 = veil_b64_encode(buf, len)) != NULL)
        veil_logf(&t->log, VEIL_LOG_INFO,
                  "TPM: reports carry the event log %s (%zu bytes)", path, len);
    fclose(f);
    free(buf);
    return 0;
}

/* ---- the API ------------------------------------------------------------- */

/* The long-term AK's template unique: the kept one (state_dir/tpm-ak),
 * a new one written there at the first start, or, with rotate, a new one
 * certified by the kept one.  0, or -1 with err. */
static int ak_state(gw_tpm *t, int rotate, char *err, size_t err_size)
{
    int r = tpm_akstate_load(t->state_dir, &t->akstate, err, err_size);

    if (r < 0)
        return -1;
    if (r == 1) {
        if (RAND_bytes(t->akstate.unique, TPM_AK_UNIQUE_LEN) != 1 ||
            RAND_bytes(t->akstate.auth, TPM_AK_AUTH_LEN) != 1) {
            gw_put_err(err, err_size, "TPM: no random bytes for the AK");
            return -1;
        }
        t->akstate.has_auth = 1;
        veil_logf(&t->log, VEIL_LOG_INFO,
                  "TPM: a new long-term AK, kept in %s/tpm-ak", t->state_dir);
        return tpm_akstate_save(t->state_dir, &t->akstate, err, err_size);
    }
    if (!t->akstate.has_auth) {
        /* an older veild's file: the same AK (the auth value is no part
         * of its derivation), from now on with an auth value */
        if (RAND_bytes(t->akstate.auth, TPM_AK_AUTH_LEN) != 1) {
            gw_put_err(err, err_size, "TPM: no random bytes for the AK");
            return -1;
        }
        t->akstate.has_auth = 1;
        if (tpm_akstate_save(t->state_dir, &t->akstate, err, err_size) != 0)
            return -1;
        veil_logf(&t->log, VEIL_LOG_INFO,
                  "TPM: %s/tpm-ak had no auth value (an older veild's); the "
                  "same AK has one now, kept there (enrolments stay valid)",
                  t->state_dir);
    }
    if (!rotate)
        return 0;
    if (tpm_ak_rotate(t, &t->akstate, err, err_size) != 0)
        return -1;
    veil_logf(&t->log, VEIL_LOG_WARN,
              "TPM: the long-term AK was rotated; the previous AK %s "
              "certified the new one (reports carry it as ak_handover)",
              t->akstate.previous_name_hex);
    return 0;
}

/* The long-term AK, its encodings in t, and the first PCR read (which
 * shows a selection the TPM cannot read).  0, or -1 with err. */
static int open_ak(gw_tpm *t, int rotate, char *err, size_t err_size)
{
    TPM2B_PUBLIC *ak_pub = NULL;
    TPM2B_NAME *name = NULL;
    uint8_t values[VEIL_EV_MAX_PCRS][32];
    double t0 = tpm_now_ms();
    int ret = -1;

    if (t->state_dir && ak_state(t, rotate, err, err_size) != 0)
        goto out;
    if (tpm_ak_make(t, t->state_dir ? t->akstate.unique : NULL,
                    t->state_dir ? t->akstate.auth : NULL, &t->ak, &ak_pub, err,
                    err_size) != 0)
        goto out;
    veil_logf(&t->log, VEIL_LOG_DEBUG, "TPM: AK created in %.0f ms",
              tpm_now_ms() - t0);
    if (tpm_object_name(t, t->ak, &name, err, err_size) != 0)
        goto out;
    /* tpm_ak_make checked the public area: NULL is no memory */
    if (!(t->ak_key = tpm_pkey_from_public(&ak_pub->publicArea))) {
        gw_put_err(err, err_size, "TPM: out of memory");
        goto out;
    }
    if (!(t->ak_pub_b64 = tpm_b64_public(ak_pub)) ||
        !(t->ak_name_hex = tpm_hex(name->name, name->size))) {
        gw_put_err(err, err_size, "TPM: out of memory");
        goto out;
    }
    ret = tpm_pcr_read(t, values, err, err_size);
out:
    Esys_Free(ak_pub);
    Esys_Free(name);
    return ret;
}

gw_rc gw_tpm_open(const gw_tpm_options *opt, gw_tpm **out, char *err,
                  size_t err_size)
{
    gw_tpm *t;
    TSS2_RC rc;

    if (!out)
        return GW_INTERNAL;
    *out = NULL;
    if (!opt) {
        gw_put_err(err, err_size, "TPM: no options");
        return GW_REFUSED;
    }
    if (!(t = calloc(1, sizeof *t))) {
        gw_put_err(err, err_size, "TPM: out of memory");
        return GW_NOMEM;
    }
    t->ak = ESYS_TR_NONE;
    t->key = ESYS_TR_NONE;
    t->sess[0] = t->sess[1] = ESYS_TR_NONE;
    t->log = (veil_logger){
        .fn = opt->log, .ctx = opt->log_ctx, .level = opt->log_level};
    t->ak_per_request = opt->ak_per_request;
    t->test_delay_ms = opt->test_delay_ms;
    t->state_dir = opt->state_dir;
    if (pthread_mutex_init(&t->lock, NULL) != 0) {
        free(t);
        gw_put_err(err, err_size, "TPM: cannot make a lock");
        return GW_INTERNAL;
    }
    if (veil_pcr_sel_parse(opt->pcrs ? opt->pcrs : DEFAULT_PCRS, &t->sel) !=
        VEIL_OK) {
        gw_put_err(err, err_size, "TPM: tpm_pcrs: %s",
                   veil_last_error()->message);
        gw_tpm_free(t);
        return GW_REFUSED;
    }
    if (t->sel.n == 0) {
        gw_put_err(err, err_size, "TPM: tpm_pcrs: no PCR selected");
        gw_tpm_free(t);
        return GW_REFUSED;
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
        tpm_put_rc(err, err_size, "ESYS", rc);
        goto fail;
    }
    if (read_identity(t, err, err_size) != 0 || tpm_ek_make(t, err, err_size) ||
        tpm_ek_cert_read(t, err, err_size) != 0)
        goto fail;
    tpm_ek_cert_check(t);
    if (open_ak(t, opt->ak_rotate, err, err_size) != 0)
        goto fail;
    if (opt->tss2_key && key_load(t, opt, err, err_size) != 0)
        goto fail;
    if (event_log_read(t, opt->event_log, err, err_size) != 0)
        goto fail;
    *out = t;
    return GW_OK;
fail:
    gw_tpm_free(t);
    return GW_UNAVAILABLE;
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
        if (t->ak != ESYS_TR_NONE) {
            TPM2B_AUTH none = {0};
            Esys_TR_SetAuth(t->ctx, t->ak, &none);
            Esys_FlushContext(t->ctx, t->ak);
        }
        tpm_sessions_drop(t);
        Esys_Finalize(&t->ctx);
    }
    if (t->tcti)
        Tss2_TctiLdr_Finalize(&t->tcti);
    Esys_Free(t->ek_saved);
    free(t->ek_pub_b64);
    free(t->ek_spki_b64);
    free(t->ek_cert_b64);
    EVP_PKEY_free(t->ak_key);
    free(t->ak_pub_b64);
    free(t->ak_name_hex);
    free(t->key_pub_b64);
    free(t->event_log_b64);
    tpm_akstate_free(&t->akstate);
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
