/* Attestation on the client side (veil/attest.h, docs/ATTESTATION.md)
 * without a TPM: trust files, enrolment, per-answer verification and
 * offline evidence checks, against an in-process mock gateway whose "TPM"
 * is software made here: an RSA endorsement key with a certificate from a
 * test CA, an ECDSA attestation key, quotes and certifications marshaled
 * with tss2-mu and signed with OpenSSL, and TPM2_ActivateCredential
 * written out from TPM 2.0 Part 1 (24.4) so that credential activation
 * is checked against an implementation independent of the library's.
 * The qualifying data and the signed statement are also computed here
 * from the document, not with the library's functions.
 *
 * The real thing (veild with swtpm) is tests/test_attest_tpm.sh.  Run this
 * through tests/env/with-tokens.sh (make check does).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <microhttpd.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <tss2/tss2_mu.h>

#include "eventlog.h"
#include "package.h"
#include "testutil.h"
#include "util.h"
#include "veil/attest.h"
#include "veil/client.h"

#define MODEL "test/echo"
#define SECMSG "the response could not be verified or decrypted"

/* ---- small helpers ---------------------------------------------------- */

static void sha256(const void *p, size_t n, uint8_t out[32])
{
    unsigned len = 32;
    EVP_Digest(p, n, out, &len, EVP_sha256(), NULL);
}

static void hex(const uint8_t *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", in[i]);
}

static char *b64(const uint8_t *p, size_t n)
{
    return veil_b64_encode(p, n);
}

static char scratch[4096]; /* this run's directory */

static void path_in(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/%s", scratch, name);
}

static int write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return 0;
    int ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok;
}

/* ---- the software TPM ------------------------------------------------- */

typedef struct sw_obj {
    EVP_PKEY *pkey;
    uint8_t pub[1024]; /* marshaled TPM2B_PUBLIC */
    size_t pub_len;
    uint8_t name[34];
} sw_obj;

#define AK_ATTRIBUTES                                                          \
    (TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |                          \
     TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |              \
     TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT)

/* The public area's marshaled form and its name (nameAlg || H(TPMT)). */
static void sw_marshal(TPM2B_PUBLIC *p, sw_obj *o)
{
    size_t off = 0;
    CU_ASSERT_EQUAL_FATAL(
        Tss2_MU_TPM2B_PUBLIC_Marshal(p, o->pub, sizeof o->pub, &off),
        TSS2_RC_SUCCESS);
    o->pub_len = off;
    o->name[0] = 0x00;
    o->name[1] = 0x0b;
    sha256(o->pub + 2, off - 2, o->name + 2);
}

static void sw_ecc(sw_obj *o, TPMA_OBJECT attrs)
{
    TPM2B_PUBLIC p;
    BIGNUM *x = NULL, *y = NULL;
    memset(&p, 0, sizeof p);
    o->pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    CU_ASSERT_PTR_NOT_NULL_FATAL(o->pkey);
    CU_ASSERT_FATAL(
        EVP_PKEY_get_bn_param(o->pkey, OSSL_PKEY_PARAM_EC_PUB_X, &x) &&
        EVP_PKEY_get_bn_param(o->pkey, OSSL_PKEY_PARAM_EC_PUB_Y, &y));
    TPMT_PUBLIC *a = &p.publicArea;
    a->type = TPM2_ALG_ECC;
    a->nameAlg = TPM2_ALG_SHA256;
    a->objectAttributes = attrs;
    a->parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
    a->parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDSA;
    a->parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
    a->parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
    a->parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
    a->unique.ecc.x.size = 32;
    a->unique.ecc.y.size = 32;
    BN_bn2binpad(x, a->unique.ecc.x.buffer, 32);
    BN_bn2binpad(y, a->unique.ecc.y.buffer, 32);
    BN_free(x);
    BN_free(y);
    sw_marshal(&p, o);
}

/* An RSA-2048 object: the EK (standard template: policy, AES-128-CFB
 * parent) or, with pkey given, a plain decryption key. */
static void sw_rsa(sw_obj *o, EVP_PKEY *pkey, TPMA_OBJECT attrs, int ek)
{
    static const uint8_t ek_policy[32] = {
        0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc,
        0x8d, 0x46, 0xa5, 0xd7, 0x24, 0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52,
        0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa};
    TPM2B_PUBLIC p;
    BIGNUM *n = NULL;
    memset(&p, 0, sizeof p);
    o->pkey = pkey ? pkey : EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    CU_ASSERT_PTR_NOT_NULL_FATAL(o->pkey);
    CU_ASSERT_FATAL(EVP_PKEY_get_bn_param(o->pkey, OSSL_PKEY_PARAM_RSA_N, &n));
    TPMT_PUBLIC *a = &p.publicArea;
    a->type = TPM2_ALG_RSA;
    a->nameAlg = TPM2_ALG_SHA256;
    a->objectAttributes = attrs;
    if (ek) {
        a->authPolicy.size = 32;
        memcpy(a->authPolicy.buffer, ek_policy, 32);
        a->parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_AES;
        a->parameters.rsaDetail.symmetric.keyBits.aes = 128;
        a->parameters.rsaDetail.symmetric.mode.aes = TPM2_ALG_CFB;
    } else {
        a->parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_NULL;
    }
    a->parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
    a->parameters.rsaDetail.keyBits = 2048;
    a->parameters.rsaDetail.exponent = 0;
    a->unique.rsa.size = 256;
    BN_bn2binpad(n, a->unique.rsa.buffer, 256);
    BN_free(n);
    sw_marshal(&p, o);
}

static void sw_free(sw_obj *o)
{
    EVP_PKEY_free(o->pkey);
    memset(o, 0, sizeof *o);
}

/* A signed TPMS_ATTEST: a quote of three SHA-256 PCRs (0, 7, 10) or, with
 * certified given, a certification of that name.  b64 strings out. */
static void sw_attest(const sw_obj *signer, const uint8_t qualifying[32],
                      const uint8_t values[3][32], const uint8_t *certified,
                      char **attest_b64, char **sig_b64)
{
    TPMS_ATTEST at;
    TPMT_SIGNATURE ts;
    uint8_t buf[2048], sbuf[256], digest[32], der[80];
    size_t off = 0, soff = 0, der_len = sizeof der;
    memset(&at, 0, sizeof at);
    at.magic = TPM2_GENERATED_VALUE;
    at.qualifiedSigner.size = 34;
    memcpy(at.qualifiedSigner.name, signer->name, 34);
    at.extraData.size = 32;
    memcpy(at.extraData.buffer, qualifying, 32);
    at.clockInfo.clock = 123456;
    at.clockInfo.resetCount = 1;
    at.clockInfo.restartCount = 2;
    at.clockInfo.safe = 1;
    at.firmwareVersion = 0x2019102300000000ull;
    if (certified) {
        at.type = TPM2_ST_ATTEST_CERTIFY;
        at.attested.certify.name.size = 34;
        memcpy(at.attested.certify.name.name, certified, 34);
        at.attested.certify.qualifiedName.size = 34;
        memcpy(at.attested.certify.qualifiedName.name, certified, 34);
    } else {
        uint8_t cat[96];
        at.type = TPM2_ST_ATTEST_QUOTE;
        TPML_PCR_SELECTION *sel = &at.attested.quote.pcrSelect;
        sel->count = 1;
        sel->pcrSelections[0].hash = TPM2_ALG_SHA256;
        sel->pcrSelections[0].sizeofSelect = 3;
        sel->pcrSelections[0].pcrSelect[0] = 0x81; /* 0 and 7 */
        sel->pcrSelections[0].pcrSelect[1] = 0x04; /* 10 */
        memcpy(cat, values, 96);
        at.attested.quote.pcrDigest.size = 32;
        sha256(cat, 96, at.attested.quote.pcrDigest.buffer);
    }
    CU_ASSERT_EQUAL_FATAL(
        Tss2_MU_TPMS_ATTEST_Marshal(&at, buf, sizeof buf, &off),
        TSS2_RC_SUCCESS);
    sha256(buf, off, digest);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(signer->pkey, NULL);
    CU_ASSERT_FATAL(ctx && EVP_PKEY_sign_init(ctx) == 1 &&
                    EVP_PKEY_sign(ctx, der, &der_len, digest, 32) == 1);
    EVP_PKEY_CTX_free(ctx);
    const unsigned char *p = der;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(es);
    memset(&ts, 0, sizeof ts);
    ts.sigAlg = TPM2_ALG_ECDSA;
    ts.signature.ecdsa.hash = TPM2_ALG_SHA256;
    ts.signature.ecdsa.signatureR.size = 32;
    ts.signature.ecdsa.signatureS.size = 32;
    BN_bn2binpad(ECDSA_SIG_get0_r(es), ts.signature.ecdsa.signatureR.buffer,
                 32);
    BN_bn2binpad(ECDSA_SIG_get0_s(es), ts.signature.ecdsa.signatureS.buffer,
                 32);
    ECDSA_SIG_free(es);
    CU_ASSERT_EQUAL_FATAL(
        Tss2_MU_TPMT_SIGNATURE_Marshal(&ts, sbuf, sizeof sbuf, &soff),
        TSS2_RC_SUCCESS);
    *attest_b64 = b64(buf, off);
    *sig_b64 = b64(sbuf, soff);
}

/* KDFa with SHA-256 (TPM 2.0 Part 1, 11.4.10.2): counter-mode HMAC over
 * [i] || label || 0x00 || contextU || contextV || [bits]. */
static void kdfa(const uint8_t *key, size_t key_len, const char *label,
                 const uint8_t *u, size_t u_len, uint8_t *out, size_t bytes)
{
    uint8_t block[32], msg[128];
    uint32_t bits = htonl((uint32_t)(bytes * 8));
    for (uint32_t i = 1, done = 0; done < bytes; i++) {
        uint32_t be = htonl(i);
        size_t n = 0, ll = strlen(label) + 1;
        unsigned len = 32;
        memcpy(msg, &be, 4);
        n += 4;
        memcpy(msg + n, label, ll);
        n += ll;
        if (u_len)
            memcpy(msg + n, u, u_len);
        n += u_len;
        memcpy(msg + n, &bits, 4);
        n += 4;
        HMAC(EVP_sha256(), key, (int)key_len, msg, n, block, &len);
        size_t take = bytes - done < 32 ? bytes - done : 32;
        memcpy(out + done, block, take);
        done += (uint32_t)take;
    }
}

/* TPM2_ActivateCredential in software with the EK's private key and the
 * name of the object (the AK): the secret, or -1 when refused. */
static int sw_activate(const sw_obj *ek, const uint8_t *name,
                       const uint8_t *blob, size_t blob_len, const uint8_t *enc,
                       size_t enc_len, uint8_t secret[64])
{
    TPM2B_ID_OBJECT id;
    TPM2B_ENCRYPTED_SECRET es;
    size_t off = 0;
    uint8_t seed[512], sym[16], hkey[32], mac[32], plain[256];
    size_t seed_len = sizeof seed;
    unsigned mac_len = 32;
    int out = -1;
    memset(&id, 0, sizeof id);
    memset(&es, 0, sizeof es);
    if (Tss2_MU_TPM2B_ID_OBJECT_Unmarshal(blob, blob_len, &off, &id) ||
        off != blob_len)
        return -1;
    off = 0;
    if (Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal(enc, enc_len, &off, &es) ||
        off != enc_len)
        return -1;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(ek->pkey, NULL);
    unsigned char *label = OPENSSL_memdup("IDENTITY", 9);
    if (ctx == NULL || label == NULL || EVP_PKEY_decrypt_init(ctx) != 1 ||
        EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) != 1 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha256()) != 1 ||
        EVP_PKEY_CTX_set0_rsa_oaep_label(ctx, label, 9) != 1) {
        OPENSSL_free(label);
        goto done;
    }
    if (EVP_PKEY_decrypt(ctx, seed, &seed_len, es.secret, es.size) != 1 ||
        seed_len != 32)
        goto done;
    kdfa(seed, 32, "STORAGE", name, 34, sym, sizeof sym);
    kdfa(seed, 32, "INTEGRITY", NULL, 0, hkey, sizeof hkey);
    /* credential = integrityHMAC (TPM2B_DIGEST) || encIdentity */
    const uint8_t *c = id.credential;
    size_t hlen = (size_t)(c[0] << 8 | c[1]);
    if (hlen != 32 || id.size < 2 + hlen + 2)
        goto done;
    const uint8_t *ident = c + 2 + hlen;
    size_t ilen = id.size - 2 - hlen;
    uint8_t hm[512];
    memcpy(hm, ident, ilen);
    memcpy(hm + ilen, name, 34);
    HMAC(EVP_sha256(), hkey, 32, hm, ilen + 34, mac, &mac_len);
    if (memcmp(mac, c + 2, 32) != 0)
        goto done;
    EVP_CIPHER_CTX *cc = EVP_CIPHER_CTX_new();
    uint8_t iv[16] = {0};
    int n1 = 0, n2 = 0;
    if (cc && EVP_DecryptInit_ex(cc, EVP_aes_128_cfb128(), NULL, sym, iv) &&
        EVP_DecryptUpdate(cc, plain, &n1, ident, (int)ilen) &&
        EVP_DecryptFinal_ex(cc, plain + n1, &n2) && n1 + n2 >= 2) {
        size_t slen = (size_t)(plain[0] << 8 | plain[1]);
        if (slen <= 64 && slen + 2 == (size_t)(n1 + n2)) {
            memcpy(secret, plain + 2, slen);
            out = (int)slen;
        }
    }
    EVP_CIPHER_CTX_free(cc);
done:
    EVP_PKEY_CTX_free(ctx);
    return out;
}

/* ---- the mock gateway ---------------------------------------------------- */

enum fault {
    F_NONE = 0,
    /* the report */
    F_NONCE,           /* answers another nonce */
    F_REPORT_QUAL,     /* quote over the wrong qualifying data */
    F_OTHER_ENC,       /* reports a key /pki/public_key does not serve */
    F_CERT_OTHER,      /* EK certificate for another key */
    F_NO_CERT,         /* ek_cert_b64 null */
    F_ACT_WRONG,       /* activation answers another secret */
    F_ACT_400,         /* the TPM refuses the credential */
    F_BAD_AK_ATTRS,    /* the AK is not restricted */
    F_KEY_CERTIFY,     /* key_certify of the encryption key, correct */
    F_KEY_CERTIFY_BAD, /* key_certify of another key */
    /* answers */
    F_NO_SIG,       /* no X-Veil-* headers */
    F_BAD_SIG,      /* a signature over another statement */
    F_OTHER_SIGNER, /* signed by another key, which it names */
    F_DUP_SIG,      /* X-Veil-Signature twice */
    F_PCR,          /* PCR 7 changed (the quote is consistent) */
    F_REPLAY,       /* the quote of another payload ID */
    F_PER_REQ_AK,   /* a per-request AK certified by the long-term one */
    F_UNCERT_AK,    /* a per-request AK, not certified */
    F_NO_QUOTE,     /* maximum without tpm_attestation */
    /* the backend statement (the quote always covers what is sent, but
     * for F_BACKEND_SWAP) */
    F_NO_BACKEND,     /* no backend_statement (a gateway hiding it) */
    F_BACKEND_CLAIM,  /* a remote https upstream claimed on this host */
    F_BACKEND_SWAP,   /* another statement than the one quoted */
    F_BACKEND_MODEL,  /* a statement for another model */
    F_BACKEND_REMOTE, /* an honest remote https backend (accepted, shown) */
};

/* The backend statements of the mock, as docs/ATTESTATION.md spells
 * them. */
#define STMT_LOCAL                                                             \
    "veil-backend-v1\nmodel=" MODEL "\nupstream=unix:/run/llama.sock\n"        \
    "transport=unix\nlocation=this-host\n"
#define STMT_REMOTE                                                            \
    "veil-backend-v1\nmodel=" MODEL "\nupstream=https://10.1.2.3/v1\n"         \
    "transport=https\nlocation=remote\n"
#define STMT_CLAIM                                                             \
    "veil-backend-v1\nmodel=" MODEL "\nupstream=https://10.1.2.3/v1\n"         \
    "transport=loopback\nlocation=this-host\n"
#define STMT_OTHER_MODEL                                                       \
    "veil-backend-v1\nmodel=other/model\nupstream=unix:/run/llama.sock\n"      \
    "transport=unix\nlocation=this-host\n"

static struct mock {
    struct MHD_Daemon *d;
    char url[64];
    veil_engine *e;
    veil_key *enc, *enc2, *sign, *sign2;
    uint8_t enc_sha[32], enc2_sha[32], sign_sha[32], sign2_sha[32];
    char *enc_pem, *enc2_pem, *enc_spki_b64, *enc2_spki_b64, *sign_spki_b64,
        *sign2_spki_b64;
    sw_obj ek, other_ek, ak, ak2, enc_obj, other_obj;
    EVP_PKEY *ca_key, *other_ca_key;
    X509 *ca, *other_ca;
    char *ek_cert_b64, *other_cert_b64;
    uint8_t pcr[3][32];
    pthread_mutex_t lock;
    enum fault fault;
    int serve_enc2; /* /pki/public_key serves enc2 */
    unsigned posts;
} M = {.lock = PTHREAD_MUTEX_INITIALIZER};

static enum fault fault_get(void)
{
    pthread_mutex_lock(&M.lock);
    enum fault f = M.fault;
    pthread_mutex_unlock(&M.lock);
    return f;
}

static void fault_set(enum fault f)
{
    pthread_mutex_lock(&M.lock);
    M.fault = f;
    pthread_mutex_unlock(&M.lock);
}

typedef struct body {
    char *p;
    size_t len;
} body;

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status,
                             const char *text, const char *const *headers)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(r, "Content-Type", "application/json");
    for (const char *const *h = headers; h && *h; h += 2)
        MHD_add_response_header(r, h[0], h[1]);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result reply_json(struct MHD_Connection *c, unsigned status,
                                  cJSON *j)
{
    char *t = cJSON_PrintUnformatted(j);
    enum MHD_Result ret = reply(c, status, t ? t : "{}", NULL);
    free(t);
    cJSON_Delete(j);
    return ret;
}

static void add_pcrs(cJSON *o, const uint8_t values[3][32])
{
    static const char *const idx[] = {"0", "7", "10"};
    cJSON_AddStringToObject(o, "pcr_banks", "sha256:0,7,10");
    cJSON *bank = cJSON_AddObjectToObject(
        cJSON_AddObjectToObject(o, "pcr_values"), "sha256");
    for (int i = 0; i < 3; i++) {
        char h[65];
        hex(values[i], 32, h);
        cJSON_AddStringToObject(bank, idx[i], h);
    }
}

static void add_b64(cJSON *o, const char *k, const uint8_t *p, size_t n)
{
    char *s = b64(p, n);
    cJSON_AddStringToObject(o, k, s);
    free(s);
}

static void add_owned(cJSON *o, const char *k, char *s)
{
    cJSON_AddStringToObject(o, k, s);
    free(s);
}

/* key_certify: {attest_b64, signature_b64, pubkey_b64} by signer. */
static void add_key_certify(cJSON *o, const sw_obj *signer,
                            const uint8_t qual[32], const sw_obj *key)
{
    char *a, *s;
    cJSON *kc = cJSON_AddObjectToObject(o, "key_certify");
    sw_attest(signer, qual, NULL, key->name, &a, &s);
    add_owned(kc, "attest_b64", a);
    add_owned(kc, "signature_b64", s);
    add_b64(kc, "pubkey_b64", key->pub, key->pub_len);
}

static enum MHD_Result handle_report(struct MHD_Connection *c)
{
    enum fault f = fault_get();
    const char *nh =
        MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "nonce");
    uint8_t nonce[64], qual[32], msg[256];
    size_t nl = nh ? strlen(nh) / 2 : 0;
    if (nh == NULL || strlen(nh) % 2 || nl < 16 || nl > 64 ||
        !veil_hex_decode(nh, nl, nonce))
        return reply(c, 400, "{\"detail\": \"bad nonce\"}", NULL);
    const uint8_t *enc = f == F_OTHER_ENC ? M.enc2_sha : M.enc_sha;
    /* H("veil-report-quote-v1" 0x00 || nonce || enc || sign) */
    size_t n = 0;
    memcpy(msg, "veil-report-quote-v1", 21);
    n = 21;
    memcpy(msg + n, nonce, nl);
    n += nl;
    memcpy(msg + n, enc, 32);
    n += 32;
    memcpy(msg + n, M.sign_sha, 32);
    n += 32;
    sha256(msg, n, qual);
    if (f == F_REPORT_QUAL)
        qual[0] ^= 1;

    cJSON *j = cJSON_CreateObject();
    char h[80], *a, *s;
    cJSON_AddStringToObject(j, "format", "veil-attestation-report-v1");
    if (f == F_NONCE) {
        char other[129];
        snprintf(other, sizeof other, "%s", nh);
        other[0] = other[0] == '0' ? '1' : '0';
        cJSON_AddStringToObject(j, "nonce", other);
    } else {
        cJSON_AddStringToObject(j, "nonce", nh);
    }
    cJSON *tpm = cJSON_AddObjectToObject(j, "tpm");
    cJSON_AddStringToObject(tpm, "manufacturer", "IBM");
    cJSON_AddStringToObject(tpm, "vendor", "SW   TPM");
    cJSON_AddStringToObject(tpm, "firmware", "test");
    cJSON_AddTrueToObject(tpm, "software_tpm");
    add_b64(j, "ek_pubkey_b64", M.ek.pub, M.ek.pub_len);
    {
        unsigned char *der = NULL;
        int dl = i2d_PUBKEY(M.ek.pkey, &der);
        add_b64(j, "ek_spki_b64", der, (size_t)dl);
        OPENSSL_free(der);
    }
    if (f == F_NO_CERT)
        cJSON_AddNullToObject(j, "ek_cert_b64");
    else
        cJSON_AddStringToObject(j, "ek_cert_b64",
                                f == F_CERT_OTHER ? M.other_cert_b64
                                                  : M.ek_cert_b64);
    const sw_obj *ak = f == F_BAD_AK_ATTRS ? &M.other_obj : &M.ak;
    add_b64(j, "aik_pubkey_b64", ak->pub, ak->pub_len);
    hex(ak->name, 34, h);
    cJSON_AddStringToObject(j, "aik_name", h);
    cJSON_AddStringToObject(j, "encryption_key_spki_b64",
                            f == F_OTHER_ENC ? M.enc2_spki_b64
                                             : M.enc_spki_b64);
    hex(enc, 32, h);
    cJSON_AddStringToObject(j, "encryption_key_sha256", h);
    cJSON_AddStringToObject(j, "signing_key_spki_b64", M.sign_spki_b64);
    hex(M.sign_sha, 32, h);
    cJSON_AddStringToObject(j, "signing_key_sha256", h);
    add_pcrs(j, (const uint8_t(*)[32])M.pcr);
    sw_attest(&M.ak, qual, (const uint8_t(*)[32])M.pcr, NULL, &a, &s);
    add_owned(j, "quote_b64", a);
    add_owned(j, "signature_b64", s);
    hex(qual, 32, h);
    cJSON_AddStringToObject(j, "qualifying_data", h);
    if (f == F_KEY_CERTIFY || f == F_KEY_CERTIFY_BAD)
        add_key_certify(j, &M.ak, qual,
                        f == F_KEY_CERTIFY ? &M.enc_obj : &M.other_obj);
    else
        cJSON_AddNullToObject(j, "key_certify");
    cJSON_AddNullToObject(j, "event_log_b64");
    return reply_json(c, 200, j);
}

static enum MHD_Result handle_activate(struct MHD_Connection *c, const body *b)
{
    enum fault f = fault_get();
    cJSON *j = cJSON_ParseWithLength(b->p ? b->p : "", b->len);
    const char *bs = cJSON_GetStringValue(
        cJSON_GetObjectItemCaseSensitive(j, "credential_blob_b64"));
    const char *es = cJSON_GetStringValue(
        cJSON_GetObjectItemCaseSensitive(j, "encrypted_secret_b64"));
    uint8_t *blob = NULL, *enc = NULL, secret[64];
    size_t bl = 0, el = 0;
    int n = -1;
    if (bs && es && veil_b64_decode(bs, strlen(bs), &blob, &bl) == VEIL_OK &&
        veil_b64_decode(es, strlen(es), &enc, &el) == VEIL_OK)
        n = sw_activate(&M.ek, M.ak.name, blob, bl, enc, el, secret);
    free(blob);
    free(enc);
    cJSON_Delete(j);
    if (n < 0 || f == F_ACT_400)
        return reply(c, 400, "{\"detail\": \"the TPM refused the credential\"}",
                     NULL);
    if (f == F_ACT_WRONG)
        secret[0] ^= 1;
    j = cJSON_CreateObject();
    add_b64(j, "secret_b64", secret, (size_t)n);
    return reply_json(c, 200, j);
}

/* The _metadata.tpm_attestation of one answer. */
static cJSON *answer_quote(enum fault f, const char *pid,
                           const uint8_t req_sha[32])
{
    uint8_t qual[32], msg[192], values[3][32];
    char h[80], *a, *s;
    const char *stmt = f == F_BACKEND_CLAIM    ? STMT_CLAIM
                       : f == F_BACKEND_MODEL  ? STMT_OTHER_MODEL
                       : f == F_BACKEND_REMOTE ? STMT_REMOTE
                                               : STMT_LOCAL;
    memcpy(msg, "veil-answer-quote-v2", 21);
    memcpy(msg + 21,
           f == F_REPLAY ? "00000000-0000-4000-8000-000000000000" : pid, 36);
    memcpy(msg + 57, req_sha, 32);
    memcpy(msg + 89, M.enc_sha, 32);
    memcpy(msg + 121, M.sign_sha, 32);
    sha256(stmt, strlen(stmt), msg + 153);
    sha256(msg, 185, qual);
    memcpy(values, M.pcr, sizeof values);
    if (f == F_PCR)
        values[1][5] ^= 0x40;
    const sw_obj *signer =
        f == F_PER_REQ_AK || f == F_UNCERT_AK ? &M.ak2 : &M.ak;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddTrueToObject(o, "is_available");
    cJSON_AddStringToObject(o, "format", "veil-tpm2-quote-v1");
    add_pcrs(o, (const uint8_t(*)[32])values);
    add_b64(o, "aik_pubkey_b64", signer->pub, signer->pub_len);
    hex(signer->name, 34, h);
    cJSON_AddStringToObject(o, "aik_name", h);
    sw_attest(signer, qual, (const uint8_t(*)[32])values, NULL, &a, &s);
    add_owned(o, "quote_b64", a);
    add_owned(o, "signature_b64", s);
    hex(qual, 32, h);
    cJSON_AddStringToObject(o, "qualifying_data", h);
    cJSON_AddTrueToObject(o, "software_tpm");
    if (f != F_NO_BACKEND)
        cJSON_AddStringToObject(o, "backend_statement",
                                f == F_BACKEND_SWAP ? STMT_REMOTE : stmt);
    if (f == F_PER_REQ_AK) {
        cJSON *ac = cJSON_AddObjectToObject(o, "aik_certify");
        sw_attest(&M.ak, qual, NULL, M.ak2.name, &a, &s);
        add_owned(ac, "attest_b64", a);
        add_owned(ac, "signature_b64", s);
    } else {
        cJSON_AddNullToObject(o, "aik_certify");
    }
    if (f == F_KEY_CERTIFY || f == F_KEY_CERTIFY_BAD)
        add_key_certify(o, signer, qual,
                        f == F_KEY_CERTIFY ? &M.enc_obj : &M.other_obj);
    else
        cJSON_AddNullToObject(o, "key_certify");
    return o;
}

static enum MHD_Result handle_chat(struct MHD_Connection *c, const body *b)
{
    enum fault f = fault_get();
    const char *pid =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Payload-ID");
    const char *tier =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Security-Tier");
    const char *pk =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Public-Key");
    veil_secbuf *pt = NULL;
    char *pem = NULL, *sealed = NULL;
    veil_key *client = NULL;
    cJSON *req = NULL, *ans = NULL;
    enum MHD_Result ret;
    pthread_mutex_lock(&M.lock);
    M.posts++;
    pthread_mutex_unlock(&M.lock);
    if (!tier)
        tier = "standard";
    if (!pid || !pk || veil_percent_decode(pk, &pem) != VEIL_OK ||
        veil_key_from_public(M.e, (const uint8_t *)pem, strlen(pem), &client) !=
            VEIL_OK ||
        veil_pkg_open(M.e, M.enc, b->p, b->len, &pt, NULL) != VEIL_OK) {
        ret = reply(c, 400,
                    "{\"detail\": \"the request could not be "
                    "decrypted\"}",
                    NULL);
        goto out;
    }
    req = cJSON_ParseWithLength((const char *)veil_secbuf_data(pt),
                                veil_secbuf_len(pt));
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(req, "messages");
    const cJSON *last = cJSON_GetArrayItem(msgs, cJSON_GetArraySize(msgs) - 1);
    ans = cJSON_CreateObject();
    cJSON_AddStringToObject(ans, "object", "chat.completion");
    cJSON *msg = cJSON_CreateObject();
    cJSON_AddStringToObject(msg, "role", "assistant");
    cJSON_AddStringToObject(
        msg, "content",
        cJSON_GetStringValue(
            cJSON_GetObjectItemCaseSensitive(last, "content")));
    cJSON *choice = cJSON_CreateObject();
    cJSON_AddItemToObject(choice, "message", msg);
    cJSON_AddItemToArray(cJSON_AddArrayToObject(ans, "choices"), choice);
    cJSON *md = cJSON_AddObjectToObject(ans, "_metadata");
    cJSON_AddStringToObject(md, "security_tier", tier);
    uint8_t req_sha[32], resp_sha[32];
    sha256(b->p, b->len, req_sha);
    if (!strcmp(tier, "maximum") && f != F_NO_QUOTE)
        cJSON_AddItemToObject(md, "tpm_attestation",
                              answer_quote(f, pid, req_sha));
    char *text = cJSON_PrintUnformatted(ans);
    veil_pkg_seal(M.e, client, (const uint8_t *)text, strlen(text),
                  VEIL_TAG_SEPARATE, 1795000000.0, &sealed);
    free(text);
    sha256(sealed, strlen(sealed), resp_sha);

    /* the statement, as the document spells it */
    const uint8_t *ssha = f == F_OTHER_SIGNER ? M.sign2_sha : M.sign_sha;
    char stmt[600], rq[65], rs[65], sk[65], sig_b64[160], at[24], skh[80];
    hex(req_sha, 32, rq);
    hex(resp_sha, 32, rs);
    hex(ssha, 32, sk);
    snprintf(stmt, sizeof stmt,
             "veil-response-signature-v1\npayload_id=%s\nsecurity_tier=%s\n"
             "request_sha256=%s\nresponse_sha256=%s\nsigning_key_sha256=%s\n"
             "signed_at=%d\n",
             pid, tier, rq, rs, sk, 1795000001 + (f == F_BAD_SIG));
    uint8_t sig[VEIL_ECDSA_SIG_MAX];
    size_t sig_len = sizeof sig;
    veil_ecdsa_sign(M.e, f == F_OTHER_SIGNER ? M.sign2 : M.sign,
                    (const uint8_t *)stmt, strlen(stmt), sig, &sig_len);
    char *sb = b64(sig, sig_len);
    snprintf(sig_b64, sizeof sig_b64, "%s", sb);
    free(sb);
    snprintf(at, sizeof at, "%d", 1795000001);
    snprintf(skh, sizeof skh, "sha256:%s", sk);
    const char *hdrs[] = {"X-Veil-Signature",
                          sig_b64,
                          "X-Veil-Signed-At",
                          at,
                          "X-Veil-Signing-Key",
                          skh,
                          f == F_DUP_SIG ? "X-Veil-Signature" : NULL,
                          sig_b64,
                          NULL};
    ret = reply(c, 200, sealed, f == F_NO_SIG ? NULL : hdrs);
out:
    veil_chat_response_free(req);
    veil_chat_response_free(ans);
    veil_secbuf_free(pt);
    veil_key_free(client);
    free(pem);
    free(sealed);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c,
                                  const char *url, const char *method,
                                  const char *version, const char *data,
                                  size_t *data_size, void **state)
{
    (void)cls;
    (void)version;
    body *b = *state;
    if (b == NULL) {
        *state = calloc(1, sizeof(body));
        return *state ? MHD_YES : MHD_NO;
    }
    if (*data_size) {
        char *p = realloc(b->p, b->len + *data_size + 1);
        if (p == NULL)
            return MHD_NO;
        memcpy(p + b->len, data, *data_size);
        b->p = p;
        b->len += *data_size;
        b->p[b->len] = '\0';
        *data_size = 0;
        return MHD_YES;
    }
    if (!strcmp(method, "GET") && !strcmp(url, "/pki/public_key")) {
        pthread_mutex_lock(&M.lock);
        const char *pem = M.serve_enc2 ? M.enc2_pem : M.enc_pem;
        pthread_mutex_unlock(&M.lock);
        return reply(c, 200, pem, NULL);
    }
    if (!strcmp(method, "GET") && !strcmp(url, "/v1/attestation/report"))
        return handle_report(c);
    if (!strcmp(method, "POST") && !strcmp(url, "/v1/attestation/activate"))
        return handle_activate(c, b);
    if (!strcmp(method, "POST") && !strcmp(url, "/v1/chat/secure_completion"))
        return handle_chat(c, b);
    return reply(c, 404, "{\"detail\": \"not found\"}", NULL);
}

static void on_done(void *cls, struct MHD_Connection *c, void **state,
                    enum MHD_RequestTerminationCode why)
{
    (void)cls;
    (void)c;
    (void)why;
    body *b = *state;
    if (b) {
        free(b->p);
        free(b);
    }
    *state = NULL;
}

static char *spki_b64_of(veil_key *k, uint8_t sha[32])
{
    uint8_t *der = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(veil_key_public_der(k, &der, &len), VEIL_OK);
    sha256(der, len, sha);
    char *s = b64(der, len);
    free(der);
    return s;
}

static char *cert_b64(EVP_PKEY *key, EVP_PKEY *ca_key, X509 *ca, long serial)
{
    X509 *x = tu_make_ek_cert(key, ca_key, ca, "id:49424D00", serial);
    unsigned char *der = NULL;
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    int n = i2d_X509(x, &der);
    /* NV holds the certificate padded with zeros: the client allows it */
    unsigned char *padded = calloc(1, (size_t)n + 16);
    memcpy(padded, der, (size_t)n);
    char *s = b64(padded, (size_t)n + 16);
    free(padded);
    OPENSSL_free(der);
    X509_free(x);
    return s;
}

static char ca_file[4200], other_ca_file[4200];

static int write_pem_cert(const char *path, X509 *x)
{
    FILE *f = fopen(path, "w");
    int ok = f && PEM_write_X509(f, x);
    return f && fclose(f) == 0 && ok;
}

static int mock_start(void)
{
    veil_keygen_params rsa = {.type = VEIL_KEY_RSA, .bits = 2048};
    veil_keygen_params ec = {.type = VEIL_KEY_EC_P256};
    struct sockaddr_in sa;
    if (veil_engine_new(NULL, &M.e) != VEIL_OK ||
        veil_key_generate(M.e, "software", &rsa, &M.enc) != VEIL_OK ||
        veil_key_generate(M.e, "software", &rsa, &M.enc2) != VEIL_OK ||
        veil_key_generate(M.e, "software", &ec, &M.sign) != VEIL_OK ||
        veil_key_generate(M.e, "software", &ec, &M.sign2) != VEIL_OK ||
        veil_key_public_pem(M.enc, &M.enc_pem) != VEIL_OK ||
        veil_key_public_pem(M.enc2, &M.enc2_pem) != VEIL_OK)
        return -1;
    M.enc_spki_b64 = spki_b64_of(M.enc, M.enc_sha);
    M.enc2_spki_b64 = spki_b64_of(M.enc2, M.enc2_sha);
    M.sign_spki_b64 = spki_b64_of(M.sign, M.sign_sha);
    M.sign2_spki_b64 = spki_b64_of(M.sign2, M.sign2_sha);

    sw_rsa(&M.ek, NULL,
           TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
               TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_ADMINWITHPOLICY |
               TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT,
           1);
    sw_rsa(&M.other_ek, NULL,
           TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
               TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_ADMINWITHPOLICY |
               TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT,
           1);
    sw_ecc(&M.ak, AK_ATTRIBUTES);
    sw_ecc(&M.ak2, AK_ATTRIBUTES);
    /* not restricted: could sign anything, quotes included */
    sw_ecc(&M.other_obj, AK_ATTRIBUTES & ~TPMA_OBJECT_RESTRICTED);
    {
        uint8_t *der = NULL;
        size_t len = 0;
        const unsigned char *p;
        CU_ASSERT_EQUAL_FATAL(veil_key_public_der(M.enc, &der, &len), VEIL_OK);
        p = der;
        EVP_PKEY *pk = d2i_PUBKEY(NULL, &p, (long)len);
        free(der);
        sw_rsa(&M.enc_obj, pk,
               TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                   TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                   TPMA_OBJECT_DECRYPT,
               0);
    }
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 32; j++)
            M.pcr[i][j] = (uint8_t)(i * 32 + j);

    M.ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    M.other_ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    /* same subject names: only the signature tells them apart */
    M.ca = tu_make_cert(M.ca_key, M.ca_key, NULL, "test EK CA", 1);
    M.other_ca =
        tu_make_cert(M.other_ca_key, M.other_ca_key, NULL, "test EK CA", 1);
    if (!M.ca || !M.other_ca)
        return -1;
    M.ek_cert_b64 = cert_b64(M.ek.pkey, M.ca_key, M.ca, 2);
    M.other_cert_b64 = cert_b64(M.other_ek.pkey, M.ca_key, M.ca, 3);
    path_in(ca_file, sizeof ca_file, "ek-ca.pem");
    path_in(other_ca_file, sizeof other_ca_file, "other-ek-ca.pem");
    if (!write_pem_cert(ca_file, M.ca) ||
        !write_pem_cert(other_ca_file, M.other_ca))
        return -1;

    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    M.d = MHD_start_daemon(MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG, 0,
                           NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR,
                           (struct sockaddr *)&sa, MHD_OPTION_NOTIFY_COMPLETED,
                           on_done, NULL, MHD_OPTION_END);
    if (M.d == NULL)
        return -1;
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(M.d, MHD_DAEMON_INFO_BIND_PORT);
    if (info == NULL || info->port == 0)
        return -1;
    snprintf(M.url, sizeof M.url, "http://127.0.0.1:%u", (unsigned)info->port);
    return 0;
}

static void mock_stop(void)
{
    if (M.d)
        MHD_stop_daemon(M.d);
    sw_free(&M.ek);
    sw_free(&M.other_ek);
    sw_free(&M.ak);
    sw_free(&M.ak2);
    sw_free(&M.other_obj);
    sw_free(&M.enc_obj);
    EVP_PKEY_free(M.ca_key);
    EVP_PKEY_free(M.other_ca_key);
    X509_free(M.ca);
    X509_free(M.other_ca);
    free(M.ek_cert_b64);
    free(M.other_cert_b64);
    free(M.enc_pem);
    free(M.enc2_pem);
    free(M.enc_spki_b64);
    free(M.enc2_spki_b64);
    free(M.sign_spki_b64);
    free(M.sign2_spki_b64);
    veil_key_free(M.enc);
    veil_key_free(M.enc2);
    veil_key_free(M.sign);
    veil_key_free(M.sign2);
    veil_engine_free(M.e);
}

/* ---- checks as reported ------------------------------------------------ */

typedef struct seen {
    char lines[64][400];
    int n, failed;
} seen;

static void on_check(void *ctx, const char *check, int ok, const char *detail)
{
    seen *s = ctx;
    if (!ok)
        s->failed++;
    if (s->n < 64)
        snprintf(s->lines[s->n++], sizeof s->lines[0], "%s %s: %s",
                 ok ? "ok" : "FAIL", check, detail);
}

/* 1 when a reported line starts with prefix ("ok quote", "FAIL ..."). */
static int saw(const seen *s, const char *prefix)
{
    for (int i = 0; i < s->n; i++)
        if (!strncmp(s->lines[i], prefix, strlen(prefix)))
            return 1;
    return 0;
}

static void dump(const seen *s)
{
    for (int i = 0; i < s->n; i++)
        fprintf(stderr, "    %s\n", s->lines[i]);
}

/* ---- enrolment -------------------------------------------------------- */

static char trust_path[4200]; /* a good enrolment, made by test_enroll */

static veil_client_status enroll(const char *out, const char *ca,
                                 int allow_unverified, int overwrite, seen *s,
                                 veil_client_error *err)
{
    veil_enroll_options o = {0};
    memset(s, 0, sizeof *s);
    o.url = M.url;
    o.ek_ca_file = ca;
    o.allow_unverified_ek = allow_unverified;
    o.accept_current = 1;
    o.trust_file = out;
    o.overwrite = overwrite;
    o.allow_http = 1;
    o.timeout_ms = 30000;
    o.on_check = on_check;
    o.check_ctx = s;
    return veil_attest_enroll(&o, err);
}

static void test_enroll(void)
{
    seen s;
    veil_client_error err;
    struct stat st;
    veil_trust *t = NULL;

    path_in(trust_path, sizeof trust_path, "trust.json");
    fault_set(F_NONE);
    veil_client_status rc = enroll(trust_path, ca_file, 0, 0, &s, &err);
    if (rc != VEIL_CLIENT_OK) {
        fprintf(stderr, "enrol: %s\n", err.detail);
        dump(&s);
    }
    CU_ASSERT_EQUAL_FATAL(rc, VEIL_CLIENT_OK);
    CU_ASSERT_EQUAL(s.failed, 0);
    CU_ASSERT(saw(&s, "ok attestation report: TPM IBM"));
    CU_ASSERT(saw(&s, "ok EK public key"));
    CU_ASSERT(saw(&s, "ok EK certificate chain"));
    CU_ASSERT(saw(&s, "ok EK certificate key"));
    CU_ASSERT(saw(&s, "ok attestation key"));
    CU_ASSERT(saw(&s, "ok encryption key"));
    CU_ASSERT(saw(&s, "ok signing key"));
    CU_ASSERT(saw(&s, "ok credential activation"));
    CU_ASSERT(saw(&s, "ok quote"));
    CU_ASSERT(saw(&s, "ok trust file"));
    CU_ASSERT_EQUAL_FATAL(stat(trust_path, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0644);

    CU_ASSERT_EQUAL_FATAL(veil_trust_load(trust_path, &t, &err),
                          VEIL_CLIENT_OK);
    CU_ASSERT_STRING_EQUAL(veil_trust_url(t), M.url);
    veil_trust_free(t);
    cJSON *j = tu_json_file(trust_path);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_STRING_EQUAL(tu_json_str(j, "format"), "veil-trust-v1");
    CU_ASSERT(cJSON_IsTrue(cJSON_GetObjectItem(j, "ek_verified")));
    CU_ASSERT(cJSON_IsTrue(cJSON_GetObjectItem(j, "software_tpm")));
    CU_ASSERT_STRING_EQUAL(tu_json_str(j, "pcr_banks"), "sha256:0,7,10");
    char h[80];
    hex(M.sign_sha, 32, h);
    CU_ASSERT_STRING_EQUAL(tu_json_str(j, "signing_key_sha256"), h);
    hex(M.ak.name, 34, h);
    CU_ASSERT_STRING_EQUAL(tu_json_str(j, "aik_name"), h);
    cJSON_Delete(j);

    /* an existing file is kept unless overwriting was asked for */
    rc = enroll(trust_path, ca_file, 0, 0, &s, &err);
    CU_ASSERT_EQUAL(rc, VEIL_CLIENT_E_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "already exists"));
    rc = enroll(trust_path, ca_file, 0, 1, &s, &err);
    CU_ASSERT_EQUAL(rc, VEIL_CLIENT_OK);

    /* key_certify of the encryption key, as a TPM object */
    char p2[4200];
    path_in(p2, sizeof p2, "trust-kc.json");
    fault_set(F_KEY_CERTIFY);
    rc = enroll(p2, ca_file, 0, 0, &s, &err);
    if (rc != VEIL_CLIENT_OK)
        dump(&s);
    CU_ASSERT_EQUAL(rc, VEIL_CLIENT_OK);
    CU_ASSERT(saw(&s, "ok key certification"));
    fault_set(F_NONE);
}

/* One enrolment that must fail at check `name`, with no file left. */
static void enroll_fails(enum fault f, const char *ca, int allow,
                         veil_client_status want, const char *name)
{
    seen s;
    veil_client_error err;
    char p[4200], prefix[128];
    path_in(p, sizeof p, "trust-bad.json");
    unlink(p);
    fault_set(f);
    veil_client_status rc = enroll(p, ca, allow, 0, &s, &err);
    fault_set(F_NONE);
    snprintf(prefix, sizeof prefix, "FAIL %s", name);
    if (rc != want || !saw(&s, prefix) || getenv("VEIL_TEST_VERBOSE")) {
        fprintf(stderr, "fault %d: status %d, want %d at \"%s\": %s\n", f, rc,
                want, name, err.detail);
        dump(&s);
    }
    CU_ASSERT_EQUAL(rc, want);
    CU_ASSERT(saw(&s, prefix));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, name));
    CU_ASSERT_NOT_EQUAL(access(p, F_OK), 0);
}

static void test_enroll_refused(void)
{
    const veil_client_status SEC = VEIL_CLIENT_E_SECURITY;
    enroll_fails(F_NONE, other_ca_file, 0, SEC, "EK certificate chain");
    enroll_fails(F_NONE, NULL, 0, SEC, "EK certificate chain");
    enroll_fails(F_NO_CERT, ca_file, 0, SEC, "EK certificate chain");
    enroll_fails(F_CERT_OTHER, ca_file, 0, SEC, "EK certificate key");
    enroll_fails(F_NONCE, ca_file, 0, SEC, "attestation report");
    enroll_fails(F_REPORT_QUAL, ca_file, 0, SEC, "quote");
    enroll_fails(F_OTHER_ENC, ca_file, 0, SEC, "encryption key");
    enroll_fails(F_ACT_WRONG, ca_file, 0, SEC, "credential activation");
    enroll_fails(F_ACT_400, ca_file, 0, SEC, "credential activation");
    enroll_fails(F_BAD_AK_ATTRS, ca_file, 0, SEC, "attestation key");
    enroll_fails(F_KEY_CERTIFY_BAD, ca_file, 0, SEC, "key certification");

    /* without a CA, only when asked for; recorded as unverified */
    seen s;
    veil_client_error err;
    char p[4200];
    path_in(p, sizeof p, "trust-unverified.json");
    CU_ASSERT_EQUAL(enroll(p, NULL, 1, 0, &s, &err), VEIL_CLIENT_OK);
    CU_ASSERT(saw(&s, "FAIL EK certificate chain: not checked"));
    cJSON *j = tu_json_file(p);
    CU_ASSERT(cJSON_IsFalse(cJSON_GetObjectItem(j, "ek_verified")));
    cJSON_Delete(j);

    /* plain http needs allow_http */
    veil_enroll_options o = {.url = M.url,
                             .trust_file = p,
                             .overwrite = 1,
                             .allow_unverified_ek = 1};
    CU_ASSERT_EQUAL(veil_attest_enroll(&o, &err), VEIL_CLIENT_E_SECURITY);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "plain http"));
}

/* ---- trust files --------------------------------------------------------- */

/* Loads the good trust file with one member replaced (value NULL: removed;
 * raw JSON text otherwise) and expects a config error naming `why`. */
static void trust_bad(const char *member, const char *value, const char *why)
{
    cJSON *j = tu_json_file(trust_path);
    char p[4200];
    veil_trust *t = NULL;
    veil_client_error err;
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    cJSON_DeleteItemFromObject(j, member);
    if (value)
        cJSON_AddItemToObject(j, member, cJSON_Parse(value));
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    path_in(p, sizeof p, "trust-edit.json");
    CU_ASSERT_FATAL(write_text(p, text));
    free(text);
    veil_client_status rc = veil_trust_load(p, &t, &err);
    if (rc != VEIL_CLIENT_E_CONFIG || !strstr(err.detail, why))
        fprintf(stderr, "%s=%s: %d %s\n", member, value ? value : "(none)", rc,
                err.detail);
    CU_ASSERT_EQUAL(rc, VEIL_CLIENT_E_CONFIG);
    CU_ASSERT_PTR_NULL(t);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, why));
    veil_trust_free(t);
}

static void test_trust_files(void)
{
    veil_trust *t = NULL;
    veil_client_error err;
    char p[4200], quoted[200];

    CU_ASSERT_EQUAL(veil_trust_load("/nonexistent/trust.json", &t, &err),
                    VEIL_CLIENT_E_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "No such file"));
    path_in(p, sizeof p, "not-json.json");
    CU_ASSERT_FATAL(write_text(p, "{\"format\": \"veil-trust-v1\""));
    CU_ASSERT_EQUAL(veil_trust_load(p, &t, &err), VEIL_CLIENT_E_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "not JSON"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, p));

    trust_bad("format", "\"veil-trust-v2\"", "\"format\"");
    trust_bad("url", "\"ftp://x\"", "\"url\"");
    trust_bad("url", NULL, "\"url\"");
    trust_bad("enrolled_at", "\"yesterday\"", "\"enrolled_at\"");
    /* beyond any long long: refused, not converted (fuzz/fuzz_attest) */
    trust_bad("enrolled_at", "9e96", "\"enrolled_at\"");
    trust_bad("enrolled_at", "-1", "\"enrolled_at\"");
    trust_bad("ek_verified", "1", "\"ek_verified\"");
    trust_bad("software_tpm", NULL, "\"software_tpm\"");
    trust_bad("ek_cert_sha256", "\"abcd\"", "\"ek_cert_sha256\"");
    trust_bad("aik_name", "\"000b\"", "\"aik_name\"");
    trust_bad("aik_pubkey_b64", "\"not base64!\"", "\"aik_pubkey_b64\"");
    trust_bad("ek_pubkey_b64", "\"AAAA\"", "\"ek_pubkey_b64\"");
    trust_bad("encryption_key_sha256", "\"zz\"", "\"encryption_key_sha256\"");
    trust_bad("signing_key_spki_b64", "null", "\"signing_key_spki_b64\"");
    trust_bad("pcr_banks", "\"sha1:0\"", "\"pcr_banks\"");
    trust_bad("pcr_values", "{\"sha256\": {\"0\": \"00\"}}", "\"pcr_values\"");
    trust_bad("pcr_values", "{}", "\"pcr_values\"");
    /* a name for another key, a hash for another signing key, the EK in
     * place of the AK */
    char h[80];
    hex(M.ak2.name, 34, h);
    snprintf(quoted, sizeof quoted, "\"%s\"", h);
    trust_bad("aik_name", quoted, "\"aik_name\"");
    hex(M.sign2_sha, 32, h);
    snprintf(quoted, sizeof quoted, "\"%s\"", h);
    trust_bad("signing_key_sha256", quoted, "\"signing_key_sha256\"");
    {
        char *ek = b64(M.ek.pub, M.ek.pub_len), *v = malloc(strlen(ek) + 3);
        snprintf(v, strlen(ek) + 3, "\"%s\"", ek);
        trust_bad("aik_pubkey_b64", v, "\"aik_pubkey_b64\"");
        free(v);
        free(ek);
        char *sv = malloc(strlen(M.enc_spki_b64) + 3);
        snprintf(sv, strlen(M.enc_spki_b64) + 3, "\"%s\"", M.enc_spki_b64);
        trust_bad("signing_key_spki_b64", sv, "P-256");
        free(sv);
    }
    /* an EK whose modulus is even: a well-formed public area, but not an
     * RSA key (OpenSSL's public key check refuses it) */
    {
        TPM2B_PUBLIC pa;
        uint8_t buf[1024];
        size_t off = 0, len = 0;
        memset(&pa, 0, sizeof pa);
        CU_ASSERT_EQUAL_FATAL(
            Tss2_MU_TPM2B_PUBLIC_Unmarshal(M.ek.pub, M.ek.pub_len, &off, &pa),
            TSS2_RC_SUCCESS);
        pa.publicArea.unique.rsa.buffer[pa.publicArea.unique.rsa.size - 1] &=
            0xfe;
        CU_ASSERT_EQUAL_FATAL(
            Tss2_MU_TPM2B_PUBLIC_Marshal(&pa, buf, sizeof buf, &len),
            TSS2_RC_SUCCESS);
        char *ek = b64(buf, len), *v = malloc(strlen(ek) + 3);
        snprintf(v, strlen(ek) + 3, "\"%s\"", ek);
        trust_bad("ek_pubkey_b64", v, "public key check");
        free(v);
        free(ek);
    }
}

/* ---- answers ------------------------------------------------------------- */

static veil_client *client_with(const char *trust, veil_log_fn log,
                                void *log_ctx)
{
    veil_client_config cfg;
    veil_client *c = NULL;
    veil_client_error err;
    veil_client_config_init(&cfg);
    cfg.base_url = M.url;
    cfg.allow_http = 1;
    cfg.key_bits = 2048;
    cfg.max_retries = 0;
    cfg.trust_file = trust;
    cfg.log = log;
    cfg.log_ctx = log_ctx;
    cfg.log_level = VEIL_LOG_DEBUG;
    veil_client_status st = veil_client_new(&cfg, &c, &err);
    if (st != VEIL_CLIENT_OK)
        fprintf(stderr, "veil_client_new: %s\n", err.detail);
    CU_ASSERT_EQUAL_FATAL(st, VEIL_CLIENT_OK);
    return c;
}

static veil_client_status ask(veil_client *c, const char *tier, char **evidence,
                              cJSON **answer, veil_client_error *err)
{
    cJSON *req = veil_chat_request_new(MODEL);
    veil_request_opts o = {.security_tier = tier, .evidence = evidence};
    CU_ASSERT_FATAL(veil_chat_request_add_message(req, "user", "hello"));
    veil_client_status st = veil_chat_create(c, req, &o, answer, NULL, err);
    veil_chat_response_free(req);
    return st;
}

/* The answer must be refused at check `name` (in err.detail). */
static void answer_fails(veil_client *c, enum fault f, const char *tier,
                         const char *name)
{
    cJSON *ans = (cJSON *)1;
    veil_client_error err;
    char *ev = NULL;
    fault_set(f);
    veil_client_status st = ask(c, tier, &ev, &ans, &err);
    fault_set(F_NONE);
    if (st != VEIL_CLIENT_E_SECURITY || !strstr(err.detail, name) ||
        getenv("VEIL_TEST_VERBOSE"))
        fprintf(stderr, "fault %d on %s: %d %s\n", f, tier, st, err.detail);
    CU_ASSERT_EQUAL(st, VEIL_CLIENT_E_SECURITY);
    CU_ASSERT_EQUAL(err.http_status, 200);
    CU_ASSERT_PTR_NULL(ans);
    CU_ASSERT_PTR_NULL(ev);
    CU_ASSERT_EQUAL(strncmp(err.detail, SECMSG, strlen(SECMSG)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, name));
    free(ev);
}

static char evidence_max[4200]; /* a maximum answer's evidence */

static void test_answers_trusted(void)
{
    veil_client *c = client_with(trust_path, NULL, NULL);
    veil_client_error err;
    cJSON *ans = NULL;
    char *ev = NULL;

    fault_set(F_NONE);
    CU_ASSERT_EQUAL(ask(c, NULL, NULL, &ans, &err), VEIL_CLIENT_OK);
    CU_ASSERT_STRING_EQUAL(veil_chat_content(ans), "hello");
    veil_chat_response_free(ans);
    ans = NULL;
    CU_ASSERT_EQUAL(ask(c, "maximum", &ev, &ans, &err), VEIL_CLIENT_OK);
    if (ans == NULL)
        fprintf(stderr, "maximum: %s\n", err.detail);
    CU_ASSERT_STRING_EQUAL(veil_chat_content(ans), "hello");
    CU_ASSERT_PTR_NOT_NULL_FATAL(ev);
    CU_ASSERT_PTR_NULL(strstr(ev, "hello")); /* no plaintext */
    path_in(evidence_max, sizeof evidence_max, "evidence-max.json");
    CU_ASSERT(write_text(evidence_max, ev));
    {
        cJSON *j = cJSON_Parse(ev);
        const cJSON *md = cJSON_GetObjectItem(ans, "_metadata");
        CU_ASSERT_STRING_EQUAL(tu_json_str(j, "format"), "veil-evidence-v1");
        CU_ASSERT_STRING_EQUAL(tu_json_str(j, "payload_id"),
                               tu_json_str(md, "payload_id"));
        CU_ASSERT_STRING_EQUAL(tu_json_str(j, "security_tier"), "maximum");
        CU_ASSERT(cJSON_IsObject(cJSON_GetObjectItem(j, "tpm_attestation")));
        CU_ASSERT_EQUAL(
            cJSON_GetNumberValue(cJSON_GetObjectItem(j, "signed_at")),
            1795000001.0);
        cJSON_Delete(j);
    }
    free(ev);
    veil_chat_response_free(ans);

    /* per-request AK certified by the enrolled one; key certification */
    ans = NULL;
    fault_set(F_PER_REQ_AK);
    CU_ASSERT_EQUAL(ask(c, "maximum", NULL, &ans, &err), VEIL_CLIENT_OK);
    veil_chat_response_free(ans);
    ans = NULL;
    fault_set(F_KEY_CERTIFY);
    CU_ASSERT_EQUAL(ask(c, "maximum", NULL, &ans, &err), VEIL_CLIENT_OK);
    veil_chat_response_free(ans);
    fault_set(F_NONE);

    answer_fails(c, F_NO_SIG, "standard", "signing key");
    answer_fails(c, F_BAD_SIG, "high", "answer signature");
    answer_fails(c, F_OTHER_SIGNER, "standard", "signing key");
    answer_fails(c, F_DUP_SIG, "standard", "signature headers");
    answer_fails(c, F_PCR, "maximum", "PCR values");
    answer_fails(c, F_REPLAY, "maximum", "quote");
    answer_fails(c, F_UNCERT_AK, "maximum", "attestation key");
    answer_fails(c, F_NO_QUOTE, "maximum", "TPM attestation");
    answer_fails(c, F_KEY_CERTIFY_BAD, "maximum", "key certification");

    /* where the plaintext went: the verified statement is returned in
     * _metadata.attested_backend; a hidden, lying, swapped or foreign
     * statement is refused */
    ans = NULL;
    fault_set(F_NONE);
    CU_ASSERT_EQUAL(ask(c, "maximum", NULL, &ans, &err), VEIL_CLIENT_OK);
    {
        const cJSON *b = cJSON_GetObjectItem(
            cJSON_GetObjectItem(ans, "_metadata"), "attested_backend");
        CU_ASSERT_STRING_EQUAL(tu_json_str(b, "model"), MODEL);
        CU_ASSERT_STRING_EQUAL(tu_json_str(b, "upstream"),
                               "unix:/run/llama.sock");
        CU_ASSERT_STRING_EQUAL(tu_json_str(b, "transport"), "unix");
        CU_ASSERT_STRING_EQUAL(tu_json_str(b, "location"), "this-host");
    }
    veil_chat_response_free(ans);
    ans = NULL;
    fault_set(F_BACKEND_REMOTE);
    CU_ASSERT_EQUAL(ask(c, "maximum", NULL, &ans, &err), VEIL_CLIENT_OK);
    {
        const cJSON *b = cJSON_GetObjectItem(
            cJSON_GetObjectItem(ans, "_metadata"), "attested_backend");
        CU_ASSERT_STRING_EQUAL(tu_json_str(b, "transport"), "https");
        CU_ASSERT_STRING_EQUAL(tu_json_str(b, "location"), "remote");
    }
    veil_chat_response_free(ans);
    fault_set(F_NONE);
    answer_fails(c, F_NO_BACKEND, "maximum",
                 "backend statement: the quote does not state where the "
                 "plaintext goes");
    answer_fails(c, F_BACKEND_CLAIM, "maximum",
                 "a remote backend claimed to be local");
    answer_fails(c, F_BACKEND_SWAP, "maximum",
                 "quote qualifying data does not match (it covers "
                 "the payload ID, this request, the keys and the backend "
                 "statement");
    answer_fails(c, F_BACKEND_MODEL, "maximum",
                 "the statement is for model 'other/model', the request "
                 "named '" MODEL "'");

    /* another base URL for one request: not what the trust file covers */
    veil_request_opts o = {.base_url = "http://127.0.0.1:1"};
    cJSON *req = veil_chat_request_new(MODEL);
    veil_chat_request_add_message(req, "user", "x");
    ans = NULL;
    CU_ASSERT_EQUAL(veil_chat_create(c, req, &o, &ans, NULL, &err),
                    VEIL_CLIENT_E_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "trust file"));
    veil_chat_response_free(req);
    veil_client_free(c);
}

typedef struct logbuf {
    pthread_mutex_t lock;
    char text[16384];
} logbuf;

static void log_keep(void *ctx, veil_log_level level, const char *line)
{
    logbuf *l = ctx;
    pthread_mutex_lock(&l->lock);
    size_t n = strlen(l->text);
    snprintf(l->text + n, sizeof l->text - n, "%d %s\n", (int)level, line);
    pthread_mutex_unlock(&l->lock);
}

static void test_answers_untrusted(void)
{
    logbuf lb = {.lock = PTHREAD_MUTEX_INITIALIZER};
    veil_client *c = client_with(NULL, log_keep, &lb);
    veil_client_error err;
    cJSON *ans = NULL;
    char *ev = NULL;

    /* the quote is checked against this request and server key; a warning
     * says the AK is not known */
    fault_set(F_NONE);
    CU_ASSERT_EQUAL(ask(c, "maximum", &ev, &ans, &err), VEIL_CLIENT_OK);
    CU_ASSERT_PTR_NOT_NULL(ev);
    CU_ASSERT_PTR_NOT_NULL(strstr(lb.text, "1 answer "));
    CU_ASSERT_PTR_NOT_NULL(strstr(lb.text, "not enrolled"));
    CU_ASSERT_PTR_NOT_NULL(strstr(lb.text, "answer check: ok quote"));
    free(ev);
    veil_chat_response_free(ans);
    answer_fails(c, F_REPLAY, "maximum", "quote");
    answer_fails(c, F_DUP_SIG, "maximum", "signature headers");
    /* no attestation at all on maximum: refused, nothing returned (an
     * attestation in another shape is accepted with a warning: see
     * test_client, whose fixture answers in NOMYO's shape) */
    ans = NULL;
    fault_set(F_NO_QUOTE);
    CU_ASSERT_EQUAL(ask(c, "maximum", NULL, &ans, &err),
                    VEIL_CLIENT_E_SECURITY);
    CU_ASSERT_PTR_NULL(ans);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "no TPM attestation"));
    /* signatures are not checked without an enrolled key */
    ans = NULL;
    fault_set(F_BAD_SIG);
    CU_ASSERT_EQUAL(ask(c, "standard", NULL, &ans, &err), VEIL_CLIENT_OK);
    veil_chat_response_free(ans);
    fault_set(F_NONE);
    veil_client_free(c);
}

static void test_trust_config(void)
{
    veil_client_config cfg;
    veil_client *c = NULL;
    veil_client_error err;

    veil_client_config_init(&cfg);
    cfg.base_url = "http://127.0.0.1:1/";
    cfg.allow_http = 1;
    cfg.key_bits = 2048;
    cfg.trust_file = trust_path;
    CU_ASSERT_EQUAL(veil_client_new(&cfg, &c, &err), VEIL_CLIENT_E_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "was enrolled for"));
    CU_ASSERT_PTR_NULL(c);
    cfg.trust_file = "/nonexistent";
    CU_ASSERT_EQUAL(veil_client_new(&cfg, &c, &err), VEIL_CLIENT_E_CONFIG);

    /* the gateway now serves another key: nothing is sealed to it */
    char slash[80];
    snprintf(slash, sizeof slash, "%s/", M.url); /* a trailing slash is ok */
    cfg.base_url = slash;
    cfg.trust_file = trust_path;
    cfg.max_retries = 0;
    CU_ASSERT_EQUAL_FATAL(veil_client_new(&cfg, &c, &err), VEIL_CLIENT_OK);
    pthread_mutex_lock(&M.lock);
    M.serve_enc2 = 1;
    unsigned before = M.posts;
    pthread_mutex_unlock(&M.lock);
    cJSON *ans = NULL;
    CU_ASSERT_EQUAL(ask(c, NULL, NULL, &ans, &err), VEIL_CLIENT_E_SECURITY);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "not the key enrolled"));
    pthread_mutex_lock(&M.lock);
    M.serve_enc2 = 0;
    CU_ASSERT_EQUAL(M.posts, before);
    pthread_mutex_unlock(&M.lock);
    veil_client_free(c);
}

/* ---- offline evidence ------------------------------------------------------
 */

static veil_client_status verify_text(const char *trust, const char *text,
                                      seen *s, veil_client_error *err)
{
    veil_trust *t = NULL;
    memset(s, 0, sizeof *s);
    CU_ASSERT_EQUAL_FATAL(veil_trust_load(trust, &t, err), VEIL_CLIENT_OK);
    veil_client_status st =
        veil_verify_evidence(NULL, t, text, strlen(text), on_check, s, err);
    veil_trust_free(t);
    return st;
}

/* The maximum evidence with one member replaced by raw JSON (NULL: gone),
 * expected to fail with status want at check `name`. */
static void evidence_bad(const char *member, const char *value,
                         veil_client_status want, const char *name)
{
    cJSON *j = tu_json_file(evidence_max);
    seen s;
    veil_client_error err;
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    cJSON_DeleteItemFromObject(j, member);
    if (value)
        cJSON_AddItemToObject(j, member, cJSON_Parse(value));
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    veil_client_status st = verify_text(trust_path, text, &s, &err);
    if (st != want || !strstr(err.detail, name) ||
        getenv("VEIL_TEST_VERBOSE")) {
        fprintf(stderr, "evidence %s: %d %s\n", member, st, err.detail);
        dump(&s);
    }
    CU_ASSERT_EQUAL(st, want);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, name));
    free(text);
}

static void test_evidence(void)
{
    seen s;
    veil_client_error err;
    size_t len;
    char *text = tu_read_file(evidence_max, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    veil_client_status st = verify_text(trust_path, text, &s, &err);
    if (st != VEIL_CLIENT_OK) {
        fprintf(stderr, "evidence: %s\n", err.detail);
        dump(&s);
    }
    CU_ASSERT_EQUAL(st, VEIL_CLIENT_OK);
    CU_ASSERT_EQUAL(s.failed, 0);
    CU_ASSERT(saw(&s, "ok gateway"));
    CU_ASSERT(saw(&s, "ok request hash"));
    CU_ASSERT(saw(&s, "ok response hash"));
    CU_ASSERT(saw(&s, "ok answer signature"));
    CU_ASSERT(saw(&s, "ok quote"));
    CU_ASSERT(saw(&s, "ok PCR values"));

    /* golden values edited in the trust file: a policy this gateway does
     * not meet */
    {
        cJSON *t = tu_json_file(trust_path);
        char p[4200];
        cJSON *bank =
            cJSON_GetObjectItem(cJSON_GetObjectItem(t, "pcr_values"), "sha256");
        cJSON_ReplaceItemInObject(
            bank, "10",
            cJSON_CreateString("00000000000000000000000000000000"
                               "00000000000000000000000000000000"));
        char *tt = cJSON_Print(t);
        cJSON_Delete(t);
        path_in(p, sizeof p, "trust-golden.json");
        CU_ASSERT_FATAL(write_text(p, tt));
        free(tt);
        CU_ASSERT_EQUAL(verify_text(p, text, &s, &err), VEIL_CLIENT_E_SECURITY);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "PCR values: PCR 10"));
    }
    free(text);

    const veil_client_status SEC = VEIL_CLIENT_E_SECURITY,
                             CFG = VEIL_CLIENT_E_CONFIG;
    evidence_bad("response_package", "\"{}\"", SEC, "response hash");
    evidence_bad("request_package", "\"{}\"", SEC, "request hash");
    evidence_bad("url", "\"https://elsewhere.example\"", SEC, "gateway");
    evidence_bad("security_tier", "\"high\"", SEC, "answer signature");
    evidence_bad("signed_at", "1795000002", SEC, "answer signature");
    evidence_bad("signature_b64", "null", SEC, "answer signature");
    evidence_bad("signing_key_sha256", "null", SEC, "signing key");
    evidence_bad("tpm_attestation", "null", SEC, "TPM attestation");
    evidence_bad("payload_id", "\"00000000-0000-4000-8000-000000000000\"", SEC,
                 "answer signature");
    evidence_bad("format", "\"veil-evidence-v0\"", CFG, "\"format\"");
    evidence_bad("payload_id", "\"not an id\"", CFG, "\"payload_id\"");
    evidence_bad("request_sha256", "\"00\"", CFG, "\"request_sha256\"");
    evidence_bad("signed_at", "\"now\"", CFG, "\"signed_at\"");
    evidence_bad("tpm_attestation", "[]", CFG, "\"tpm_attestation\"");
    evidence_bad("response_package", NULL, CFG, "\"response_package\"");

    /* recorded hashes edited together with the package: the signature
     * still covers the original */
    {
        cJSON *j = tu_json_file(evidence_max);
        const char *resp = tu_json_str(j, "response_package");
        char *edited = strdup(resp), h[65];
        uint8_t d[32];
        edited[strlen(edited) / 2] ^= 1;
        sha256(edited, strlen(edited), d);
        hex(d, 32, h);
        cJSON_ReplaceItemInObject(j, "response_package",
                                  cJSON_CreateString(edited));
        cJSON_ReplaceItemInObject(j, "response_sha256", cJSON_CreateString(h));
        char *t2 = cJSON_Print(j);
        CU_ASSERT_EQUAL(verify_text(trust_path, t2, &s, &err), SEC);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "answer signature"));
        free(t2);
        free(edited);
        cJSON_Delete(j);
    }
    CU_ASSERT_EQUAL(verify_text(trust_path, "not json", &s, &err), CFG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "not JSON"));
}

/* ---- the TCG event log parser (protocol/eventlog.c) --------------------- */

static size_t le32(uint8_t *b, size_t o, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        b[o + (size_t)i] = (uint8_t)(v >> (8 * i));
    return o + 4;
}

static size_t le16(uint8_t *b, size_t o, uint32_t v)
{
    b[o] = (uint8_t)v;
    b[o + 1] = (uint8_t)(v >> 8);
    return o + 2;
}

/* A crypto-agile log (Spec ID event listing SHA-1 and, unless sha1_only,
 * SHA-256), then three events: PCR 16 "fw", PCR 23 "sep", PCR last
 * "boot".  Returns its length. */
static size_t evlog_build(uint8_t *b, int sha1_only, uint32_t last)
{
    static const char *data[] = {"fw", "sep", "boot"};
    const uint32_t pcr[] = {16, 23, last}, type[] = {8, 4, 0x80000007u};
    unsigned algs = sha1_only ? 1 : 2;
    size_t o = 0;
    o = le32(b, o, 0);
    o = le32(b, o, 3); /* EV_NO_ACTION */
    memset(b + o, 0, 20);
    o += 20;
    o = le32(b, o, 16 + 4 + 4 + 4 + 4 * algs + 1);
    memcpy(b + o, "Spec ID Event03", 16);
    o += 16;
    o = le32(b, o, 0);
    b[o++] = 0, b[o++] = 2, b[o++] = 0, b[o++] = 2;
    o = le32(b, o, algs);
    o = le16(b, o, 0x0004);
    o = le16(b, o, 20);
    if (!sha1_only) {
        o = le16(b, o, 0x000b);
        o = le16(b, o, 32);
    }
    b[o++] = 0;
    for (int i = 0; i < 3; i++) {
        o = le32(b, o, pcr[i]);
        o = le32(b, o, type[i]);
        o = le32(b, o, algs);
        o = le16(b, o, 0x0004);
        memset(b + o, 0x11, 20);
        o += 20;
        if (!sha1_only) {
            o = le16(b, o, 0x000b);
            EVP_Digest(data[i], strlen(data[i]), b + o, NULL, EVP_sha256(),
                       NULL);
            o += 32;
        }
        o = le32(b, o, (uint32_t)strlen(data[i]));
        memcpy(b + o, data[i], strlen(data[i]));
        o += strlen(data[i]);
    }
    return o;
}

/* 1 when every event of a parsed log lies inside its len bytes. */
static int evlog_inside(const veil_evlog *l, size_t len)
{
    for (size_t i = 0; i < l->n; i++)
        if (l->ev[i].pcr >= VEIL_EVLOG_PCRS || l->ev[i].data_off > len ||
            l->ev[i].data_len > len - l->ev[i].data_off)
            return 0;
    return 1;
}

/* The parser takes a log as the gateway sends it: a good one replays; one
 * cut anywhere, or with any byte changed, is refused or parsed inside its
 * bounds (ASan watches); a SHA-1-only log, a log without SHA-256 and an
 * event for PCR 24 are refused, saying so. */
static void test_event_log(void)
{
    uint8_t b[512], pcr[VEIL_EVLOG_PCRS][32], want[32], buf[64];
    int used[VEIL_EVLOG_PCRS];
    veil_evlog l;
    size_t len = evlog_build(b, 0, 23);

    CU_ASSERT_EQUAL_FATAL(veil_evlog_parse(b, len, &l), VEIL_OK);
    CU_ASSERT_EQUAL(l.n, 3);
    CU_ASSERT_STRING_EQUAL(veil_evlog_type_name(l.ev[2].type), "EV_EFI_ACTION");
    veil_evlog_replay(&l, pcr, used);
    CU_ASSERT(used[16] && used[23] && !used[0] && !used[7]);
    memset(buf, 0, 32);
    EVP_Digest("fw", 2, buf + 32, NULL, EVP_sha256(), NULL);
    EVP_Digest(buf, 64, want, NULL, EVP_sha256(), NULL);
    CU_ASSERT_EQUAL(memcmp(pcr[16], want, 32), 0);
    veil_evlog_free(&l);

    for (size_t cut = 0; cut < len; cut++) {
        veil_rc rc = veil_evlog_parse(b, cut, &l);
        CU_ASSERT(rc != VEIL_OK || (l.n < 3 && evlog_inside(&l, cut)));
        veil_evlog_free(&l);
    }
    for (size_t i = 0; i < len; i++) {
        b[i] ^= 0xff;
        if (veil_evlog_parse(b, len, &l) == VEIL_OK) {
            CU_ASSERT(evlog_inside(&l, len));
            veil_evlog_replay(&l, pcr, used);
        }
        veil_evlog_free(&l);
        b[i] ^= 0xff;
    }

    len = evlog_build(b, 0, 24);
    CU_ASSERT_EQUAL(veil_evlog_parse(b, len, &l), VEIL_E_ARG);
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, "PCR 24"));
    veil_evlog_free(&l);
    len = evlog_build(b, 1, 23);
    CU_ASSERT_EQUAL(veil_evlog_parse(b, len, &l), VEIL_E_ARG);
    CU_ASSERT_PTR_NOT_NULL(
        strstr(veil_last_error()->message, "no SHA-256 digests"));
    veil_evlog_free(&l);
    len = evlog_build(b, 0, 23);
    b[4] = 1; /* the first event is no Spec ID event: a SHA-1 log */
    CU_ASSERT_EQUAL(veil_evlog_parse(b, len, &l), VEIL_E_ARG);
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, "SHA-1-only"));
    veil_evlog_free(&l);
}

/* The mock's keys and objects are made with CUnit assertions, so this is
 * a test of its own; nothing after it can run without it. */
static void test_mock(void)
{
    int rc = mock_start();
    if (rc != 0) {
        fprintf(stderr, "cannot start the mock gateway\n");
        exit(99);
    }
    CU_PASS("mock gateway up");
}

int main(void)
{
    /* in order: later tests use the mock, trust file and evidence of
     * earlier ones */
    static const tu_test tests[] = {
        {"mock gateway", test_mock},
        {"enrolment", test_enroll},
        {"enrolment refused", test_enroll_refused},
        {"trust files", test_trust_files},
        {"answers with a trust file", test_answers_trusted},
        {"answers without one", test_answers_untrusted},
        {"trust file and configuration", test_trust_config},
        {"offline evidence", test_evidence},
        {"event log parser", test_event_log},
    };
    int rc;

    if (tu_scratch_dir("attest", scratch, sizeof scratch) != 0) {
        fprintf(stderr, "cannot make a scratch directory\n");
        return 99;
    }
    TU_ADD_SUITE("attest", NULL, NULL, tests);
    rc = tu_run_tests();
    mock_stop();
    return rc;
}
