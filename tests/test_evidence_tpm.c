/* The software checks of TPM 2.0 structures (protocol/tpm.c) against the
 * real test TPM: public areas and names, quotes and certifications made by
 * the TPM, and credentials made in software that the TPM must accept (and
 * refuse for another object).
 *
 * Runs under tests/env/with-tokens.sh, which starts a fresh swtpm behind
 * tpm2-abrmd (the name has "tpm") and exports TPM2TOOLS_TCTI; the TPM is
 * driven with tpm2-tools in a scratch directory.  Because the TPM is new
 * for every run, the persistent handles below are free.
 *
 * tpm2_certify (tpm2-tools 5.4) has no option for qualifying data (it
 * always sends 00ff55aa), so certifications are made by sending a raw
 * TPM2_Certify with tpm2_send, on persistent handles. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <CUnit/CUnit.h>
#include <openssl/rand.h>
#include <tss2/tss2_mu.h>

#include "evidence.h"
#include "engine_int.h"
#include "testutil.h"

/* Persistent handles (owner range) of the objects the TPM quotes with,
 * certifies and activates credentials for. */
#define H_AK_ECC 0x81017e01u
#define H_AK_RSA 0x81017e02u
#define H_UNRESTRICTED 0x81017e03u /* a signing key that is not restricted */
#define H_ENC 0x81017e04u          /* a decryption key with fixedTPM */
#define H_NOFIXED 0x81017e05u      /* a decryption key without fixedTPM */

#define AK_ATTRS                                                               \
    (VEIL_TPMA_FIXEDTPM | VEIL_TPMA_FIXEDPARENT |                              \
     VEIL_TPMA_SENSITIVEDATAORIGIN | VEIL_TPMA_RESTRICTED | VEIL_TPMA_SIGN)

/* Under ASan: full unwinding through libraries without frame pointers (as
 * in the other TPM tests).  Ignored in builds without ASan. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "fast_unwind_on_malloc=0";
}

typedef struct {
    uint8_t *p;
    size_t n;
} bytes;

static veil_engine *eng;
static char dir[512];

static struct {
    veil_tpm_pub ek, ak_ecc, ak_rsa, unrestricted, enc, nofixed;
    bytes ek_raw, ak_ecc_raw, ak_ecc_name;
    bytes p384_raw, hmac_raw, rsa1024_raw;
    uint8_t qual[32];
    veil_pcr_sel sel; /* sha256:0,7,10 */
    uint8_t pcrs[3][32];
    /* quotes over sha256:0,7,10 with qual: attest (q) and signature (s) */
    bytes q_ecc, s_ecc, q_rsa, s_rsa, q_unr, s_unr;
    bytes q_sha1, s_sha1, q_two, s_two; /* other banks */
    /* certifications with qual: c_X_by_Y certifies X, signed by Y */
    bytes c_rsa_by_ecc, cs_rsa_by_ecc, c_ecc_by_rsa, cs_ecc_by_rsa;
    bytes c_enc, cs_enc, c_nofixed, cs_nofixed;
} fx;

/* ---- helpers ----------------------------------------------------------- */

static void bytes_free(bytes *b)
{
    free(b->p);
    b->p = NULL;
    b->n = 0;
}

static bytes bytes_dup(const bytes *b)
{
    bytes c = {malloc(b->n ? b->n : 1), b->n};

    if (c.p)
        memcpy(c.p, b->p, b->n);
    return c;
}

static void hex(const uint8_t *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

/* Runs a shell command in the scratch directory, its output appended to
 * tools.log.  Returns its exit status (-1 when it could not run). */
static int vsh(int quiet, const char *fmt, va_list ap)
{
    char cmd[4096], full[5000];
    int n = vsnprintf(cmd, sizeof cmd, fmt, ap), st;

    if (n < 0 || (size_t)n >= sizeof cmd)
        return -1;
    snprintf(full, sizeof full, "cd '%s' && { %s ; } >>tools.log 2>&1", dir,
             cmd);
    st = system(full);
    st = st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
    if (st != 0 && !quiet) {
        char tail[700];

        fprintf(stderr, "\ncommand failed (%d): %s\n", st, cmd);
        snprintf(tail, sizeof tail, "tail -n 15 '%s/tools.log' >&2", dir);
        if (system(tail) != 0)
            fprintf(stderr, "(no tools.log)\n");
    }
    return st;
}

/* 1 when the command succeeded (a failure is printed). */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    va_list ap;
    int st;

    va_start(ap, fmt);
    st = vsh(0, fmt, ap);
    va_end(ap);
    return st == 0;
}

/* The exit status, printing nothing: for commands expected to fail. */
static int sh_status(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
static int sh_status(const char *fmt, ...)
{
    va_list ap;
    int st;

    va_start(ap, fmt);
    st = vsh(1, fmt, ap);
    va_end(ap);
    return st;
}

static int load(const char *name, bytes *out)
{
    char path[700];

    snprintf(path, sizeof path, "%s/%s", dir, name);
    out->p = (uint8_t *)tu_read_file(path, &out->n);
    return out->p != NULL;
}

static int save(const char *name, const uint8_t *p, size_t n)
{
    char path[700];
    FILE *f;
    int ok;

    snprintf(path, sizeof path, "%s/%s", dir, name);
    f = fopen(path, "wb");
    if (!f)
        return 0;
    ok = fwrite(p, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

static int parse_file(const char *name, veil_tpm_pub *out, bytes *raw)
{
    bytes b;
    int ok;

    if (!load(name, &b))
        return 0;
    ok = veil_tpm_pub_parse(eng, b.p, b.n, out) == VEIL_OK;
    if (!ok)
        fprintf(stderr, "%s: %s\n", name, veil_last_error()->message);
    if (raw)
        *raw = b;
    else
        bytes_free(&b);
    return ok;
}

static int msg_has(const char *s)
{
    return strstr(veil_last_error()->message, s) != NULL;
}

static uint8_t *put16(uint8_t *p, unsigned v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
    return p + 2;
}

static uint8_t *put32(uint8_t *p, uint32_t v)
{
    p = put16(p, v >> 16);
    return put16(p, v & 0xffff);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           p[3];
}

/* TPM2_Certify (Part 3, 18.2) of `object` by `signer`, both persistent and
 * with empty passwords, qualifying data fx.qual, the signer's own scheme.
 * Sent raw with tpm2_send; the response's TPM2B_ATTEST contents and
 * TPMT_SIGNATURE go to attest and sig. */
static int certify(uint32_t object, uint32_t signer, const char *tag,
                   bytes *attest, bytes *sig)
{
    uint8_t cmd[128], *p = cmd;
    char name[64];
    bytes rsp;
    TPM2B_ATTEST att;
    TPMT_SIGNATURE s;
    size_t off = 14, sig_at; /* header (10) and parameterSize (4) */
    int ok;

    p = put16(p, TPM2_ST_SESSIONS);
    p = put32(p, 0); /* commandSize, set below */
    p = put32(p, TPM2_CC_Certify);
    p = put32(p, object);
    p = put32(p, signer);
    p = put32(p, 2 * 9); /* two password sessions */
    for (int i = 0; i < 2; i++) {
        p = put32(p, TPM2_RS_PW);
        p = put16(p, 0); /* nonce */
        *p++ = 0;        /* sessionAttributes */
        p = put16(p, 0); /* empty password */
    }
    p = put16(p, sizeof fx.qual);
    memcpy(p, fx.qual, sizeof fx.qual);
    p += sizeof fx.qual;
    p = put16(p, TPM2_ALG_NULL); /* inScheme: the key's own */
    put32(cmd + 2, (uint32_t)(p - cmd));

    snprintf(name, sizeof name, "%s.cmd", tag);
    if (!save(name, cmd, (size_t)(p - cmd)) ||
        !sh("tpm2_send <%s.cmd >%s.rsp", tag, tag))
        return 0;
    snprintf(name, sizeof name, "%s.rsp", tag);
    if (!load(name, &rsp))
        return 0;
    memset(&att, 0, sizeof att);
    memset(&s, 0, sizeof s);
    ok = rsp.n >= 14 && get32(rsp.p + 6) == TPM2_RC_SUCCESS &&
         Tss2_MU_TPM2B_ATTEST_Unmarshal(rsp.p, rsp.n, &off, &att) ==
             TSS2_RC_SUCCESS;
    sig_at = off;
    ok = ok && Tss2_MU_TPMT_SIGNATURE_Unmarshal(rsp.p, rsp.n, &off, &s) ==
                   TSS2_RC_SUCCESS;
    if (ok) {
        attest->n = att.size;
        attest->p = malloc(att.size);
        sig->n = off - sig_at;
        sig->p = malloc(sig->n);
        ok = attest->p && sig->p;
        if (ok) {
            memcpy(attest->p, att.attestationData, att.size);
            memcpy(sig->p, rsp.p + sig_at, sig->n);
        }
    } else {
        fprintf(stderr, "TPM2_Certify (%s): bad response (rc 0x%08x)\n", tag,
                rsp.n >= 10 ? (unsigned)get32(rsp.p + 6) : 0u);
    }
    bytes_free(&rsp);
    return ok;
}

static int quote(const char *key, const char *pcrs, const char *tag,
                 bytes *attest, bytes *sig)
{
    char qhex[65], name[64];

    hex(fx.qual, sizeof fx.qual, qhex);
    if (!sh("tpm2_quote -c %s -l %s -q %s -m %s.msg -s %s.sig -g sha256", key,
            pcrs, qhex, tag, tag))
        return 0;
    snprintf(name, sizeof name, "%s.msg", tag);
    if (!load(name, attest))
        return 0;
    snprintf(name, sizeof name, "%s.sig", tag);
    return load(name, sig);
}

/* Creates a key under prim.ctx with these attributes; with `handle`, also
 * loads it and makes it persistent there. */
static int make_key(const char *tag, const char *alg, const char *attrs,
                    uint32_t handle)
{
    if (!sh("tpm2_create -C prim.ctx -G %s -a '%s' -u %s.pub -r %s.priv", alg,
            attrs, tag, tag))
        return 0;
    return !handle ||
           (sh("tpm2_load -C prim.ctx -u %s.pub -r %s.priv -c %s.ctx", tag, tag,
               tag) &&
            sh("tpm2_evictcontrol -C o -c %s.ctx 0x%08x", tag,
               (unsigned)handle));
}

static int read_pcrs(uint8_t out[3][32])
{
    bytes b;
    int ok;

    if (!sh("tpm2_pcrread sha256:0,7,10 -o pcrs.bin") || !load("pcrs.bin", &b))
        return 0;
    ok = b.n == 3 * 32;
    if (ok)
        memcpy(out, b.p, b.n);
    bytes_free(&b);
    return ok;
}

/* ---- fixture ----------------------------------------------------------- */

static int suite_init(void)
{
    tu_env("TPM2TOOLS_TCTI");
    if (veil_engine_new(NULL, &eng) != VEIL_OK) {
        fprintf(stderr, "engine: %s\n", veil_last_error()->message);
        return -1;
    }
    if (tu_scratch_dir("evidence", dir, sizeof dir) != 0) {
        fprintf(stderr, "cannot make a scratch directory\n");
        return -1;
    }
    if (RAND_bytes(fx.qual, sizeof fx.qual) != 1)
        return -1;
    fx.sel.n = 3;
    fx.sel.index[0] = 0;
    fx.sel.index[1] = 7;
    fx.sel.index[2] = 10;

    /* The EK (default template: RSA 2048, AES-128-CFB, SHA-256), two AKs
     * under it, and keys under an owner primary. */
    if (!sh("tpm2_createek -c ek.ctx -G rsa -u ek.pub") ||
        !sh("tpm2_createak -C ek.ctx -c ak_ecc.ctx -G ecc -g sha256 -s ecdsa "
            "-u ak_ecc.pub -n ak_ecc.name") ||
        !sh("tpm2_createak -C ek.ctx -c ak_rsa.ctx -G rsa -g sha256 -s rsassa "
            "-u ak_rsa.pub -n ak_rsa.name") ||
        !sh("tpm2_evictcontrol -C o -c ak_ecc.ctx 0x%08x", H_AK_ECC) ||
        !sh("tpm2_evictcontrol -C o -c ak_rsa.ctx 0x%08x", H_AK_RSA) ||
        !sh("tpm2_createprimary -C o -G ecc -c prim.ctx") ||
        !make_key("unr", "ecc",
                  "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
                  H_UNRESTRICTED) ||
        !make_key("enc", "rsa2048",
                  "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|"
                  "decrypt",
                  H_ENC) ||
        !make_key("nofixed", "rsa2048",
                  "sensitivedataorigin|userwithauth|decrypt", H_NOFIXED) ||
        !make_key("p384", "ecc384",
                  "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
                  0) ||
        !make_key("hmac", "hmac",
                  "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
                  0) ||
        !make_key("rsa1024", "rsa1024",
                  "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|"
                  "decrypt",
                  0))
        return -1;
    if (!parse_file("ek.pub", &fx.ek, &fx.ek_raw) ||
        !parse_file("ak_ecc.pub", &fx.ak_ecc, &fx.ak_ecc_raw) ||
        !parse_file("ak_rsa.pub", &fx.ak_rsa, NULL) ||
        !parse_file("unr.pub", &fx.unrestricted, NULL) ||
        !parse_file("enc.pub", &fx.enc, NULL) ||
        !parse_file("nofixed.pub", &fx.nofixed, NULL) ||
        !load("ak_ecc.name", &fx.ak_ecc_name) ||
        !load("p384.pub", &fx.p384_raw) || !load("hmac.pub", &fx.hmac_raw) ||
        !load("rsa1024.pub", &fx.rsa1024_raw))
        return -1;

    /* PCR 10 gets a value so that not every quoted PCR is zero. */
    if (!sh("tpm2_pcrextend 10:sha256=%064x", 0x5ee1) ||
        !quote("0x81017e01", "sha256:0,7,10", "q_ecc", &fx.q_ecc, &fx.s_ecc) ||
        !quote("0x81017e02", "sha256:0,7,10", "q_rsa", &fx.q_rsa, &fx.s_rsa) ||
        !quote("0x81017e03", "sha256:0,7,10", "q_unr", &fx.q_unr, &fx.s_unr) ||
        !quote("0x81017e01", "sha1:0,7,10", "q_sha1", &fx.q_sha1, &fx.s_sha1) ||
        !quote("0x81017e01", "sha1:0+sha256:0,7,10", "q_two", &fx.q_two,
               &fx.s_two) ||
        !read_pcrs(fx.pcrs))
        return -1;
    if (!certify(H_AK_RSA, H_AK_ECC, "c_rsa_by_ecc", &fx.c_rsa_by_ecc,
                 &fx.cs_rsa_by_ecc) ||
        !certify(H_AK_ECC, H_AK_RSA, "c_ecc_by_rsa", &fx.c_ecc_by_rsa,
                 &fx.cs_ecc_by_rsa) ||
        !certify(H_ENC, H_AK_ECC, "c_enc", &fx.c_enc, &fx.cs_enc) ||
        !certify(H_NOFIXED, H_AK_ECC, "c_nofixed", &fx.c_nofixed,
                 &fx.cs_nofixed))
        return -1;
    return 0;
}

static int suite_clean(void)
{
    veil_tpm_pub *pubs[] = {&fx.ek,           &fx.ak_ecc, &fx.ak_rsa,
                            &fx.unrestricted, &fx.enc,    &fx.nofixed};
    bytes *bufs[] = {&fx.ek_raw,       &fx.ak_ecc_raw,    &fx.ak_ecc_name,
                     &fx.p384_raw,     &fx.hmac_raw,      &fx.rsa1024_raw,
                     &fx.q_ecc,        &fx.s_ecc,         &fx.q_rsa,
                     &fx.s_rsa,        &fx.q_unr,         &fx.s_unr,
                     &fx.q_sha1,       &fx.s_sha1,        &fx.q_two,
                     &fx.s_two,        &fx.c_rsa_by_ecc,  &fx.cs_rsa_by_ecc,
                     &fx.c_ecc_by_rsa, &fx.cs_ecc_by_rsa, &fx.c_enc,
                     &fx.cs_enc,       &fx.c_nofixed,     &fx.cs_nofixed};

    for (size_t i = 0; i < sizeof pubs / sizeof pubs[0]; i++)
        veil_tpm_pub_clear(pubs[i]);
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        bytes_free(bufs[i]);
    veil_engine_free(eng);
    eng = NULL;
    return 0;
}

/* ---- public areas ------------------------------------------------------ */

/* Name and SPKI hash of a parsed public area against what the TPM says:
 * tpm2_readpublic's name and PEM. */
static void check_against_tpm(const veil_tpm_pub *p, const char *ctx,
                              const char *tag)
{
    char name[64];
    bytes tname, pem;
    veil_key *k = NULL;
    uint8_t fp[32];

    CU_ASSERT_TRUE_FATAL(sh(
        "tpm2_readpublic -c %s -n %s.rname -f pem -o %s.pem", ctx, tag, tag));
    snprintf(name, sizeof name, "%s.rname", tag);
    CU_ASSERT_TRUE_FATAL(load(name, &tname));
    CU_ASSERT_EQUAL(tname.n, sizeof p->name);
    CU_ASSERT_TRUE(tname.n == sizeof p->name &&
                   memcmp(tname.p, p->name, sizeof p->name) == 0);
    bytes_free(&tname);
    snprintf(name, sizeof name, "%s.pem", tag);
    CU_ASSERT_TRUE_FATAL(load(name, &pem));
    CU_ASSERT_EQUAL_FATAL(veil_key_from_public(eng, pem.p, pem.n, &k), VEIL_OK);
    CU_ASSERT_EQUAL(veil_key_fingerprint(k, fp), VEIL_OK);
    CU_ASSERT_EQUAL(memcmp(fp, p->spki_sha256, 32), 0);
    CU_ASSERT_EQUAL(veil_key_fingerprint(p->key, fp), VEIL_OK);
    CU_ASSERT_EQUAL(memcmp(fp, p->spki_sha256, 32), 0);
    veil_key_free(k);
    bytes_free(&pem);
}

static void test_pub_parse(void)
{
    veil_key_info info;

    CU_ASSERT_EQUAL(fx.ak_ecc.type, TPM2_ALG_ECC);
    CU_ASSERT_EQUAL(fx.ak_ecc.name_alg, TPM2_ALG_SHA256);
    /* tpm2_createak's template */
    CU_ASSERT_EQUAL(fx.ak_ecc.attributes, AK_ATTRS | TPMA_OBJECT_USERWITHAUTH);
    CU_ASSERT_EQUAL(fx.ak_ecc.name[0], 0x00);
    CU_ASSERT_EQUAL(fx.ak_ecc.name[1], 0x0b);
    CU_ASSERT_EQUAL(fx.ak_ecc_name.n, sizeof fx.ak_ecc.name);
    CU_ASSERT_TRUE(fx.ak_ecc_name.n == 34 &&
                   memcmp(fx.ak_ecc_name.p, fx.ak_ecc.name, 34) == 0);
    CU_ASSERT_EQUAL(veil_key_get_info(fx.ak_ecc.key, &info), VEIL_OK);
    CU_ASSERT_EQUAL(info.type, VEIL_KEY_EC_P256);
    check_against_tpm(&fx.ak_ecc, "0x81017e01", "ak_ecc");

    CU_ASSERT_EQUAL(fx.ak_rsa.type, TPM2_ALG_RSA);
    CU_ASSERT_EQUAL(fx.ak_rsa.attributes & AK_ATTRS, AK_ATTRS);
    CU_ASSERT_EQUAL(veil_key_get_info(fx.ak_rsa.key, &info), VEIL_OK);
    CU_ASSERT_EQUAL(info.type, VEIL_KEY_RSA);
    CU_ASSERT_EQUAL(info.bits, 2048);
    check_against_tpm(&fx.ak_rsa, "0x81017e02", "ak_rsa");

    CU_ASSERT_EQUAL(fx.ek.type, TPM2_ALG_RSA);
    CU_ASSERT_EQUAL(
        fx.ek.attributes & (VEIL_TPMA_FIXEDTPM | VEIL_TPMA_RESTRICTED |
                            VEIL_TPMA_DECRYPT | VEIL_TPMA_SIGN),
        VEIL_TPMA_FIXEDTPM | VEIL_TPMA_RESTRICTED | VEIL_TPMA_DECRYPT);
    check_against_tpm(&fx.ek, "ek.ctx", "ek");
    check_against_tpm(&fx.enc, "0x81017e04", "enc");
    CU_ASSERT_EQUAL(fx.nofixed.attributes & VEIL_TPMA_FIXEDTPM, 0);
}

static veil_rc parse_bytes(const uint8_t *p, size_t n)
{
    veil_tpm_pub pub;
    veil_rc rc = veil_tpm_pub_parse(eng, p, n, &pub);

    if (rc == VEIL_OK)
        veil_tpm_pub_clear(&pub);
    else
        CU_ASSERT_PTR_NULL(pub.key);
    return rc;
}

static void test_pub_malformed(void)
{
    bytes b = bytes_dup(&fx.ak_ecc_raw);
    veil_tpm_pub pub;
    uint8_t *longer;

    CU_ASSERT_PTR_NOT_NULL_FATAL(b.p);
    CU_ASSERT_EQUAL(parse_bytes(b.p, b.n), VEIL_OK);
    CU_ASSERT_EQUAL(veil_tpm_pub_parse(NULL, b.p, b.n, &pub), VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_tpm_pub_parse(eng, NULL, b.n, &pub), VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_tpm_pub_parse(eng, b.p, b.n, NULL), VEIL_E_ARG);
    /* every truncation, with and without the size field adjusted */
    for (size_t n = 0; n < b.n; n++) {
        CU_ASSERT_EQUAL(parse_bytes(b.p, n), VEIL_E_ARG);
        if (n >= 2) {
            bytes c = bytes_dup(&b);
            put16(c.p, (unsigned)(n - 2));
            CU_ASSERT_EQUAL(parse_bytes(c.p, n), VEIL_E_ARG);
            bytes_free(&c);
        }
    }
    /* a trailing byte, with and without the size field adjusted */
    longer = malloc(b.n + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(longer);
    memcpy(longer, b.p, b.n);
    longer[b.n] = 0;
    CU_ASSERT_EQUAL(parse_bytes(longer, b.n + 1), VEIL_E_ARG);
    put16(longer, (unsigned)(b.n - 1));
    CU_ASSERT_EQUAL(parse_bytes(longer, b.n + 1), VEIL_E_ARG);
    free(longer);

    /* nameAlg SHA-1 (TPM2B size, type, then nameAlg at offset 4) */
    b.p[5] = 0x04;
    CU_ASSERT_EQUAL(parse_bytes(b.p, b.n), VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("nameAlg"));
    b.p[5] = 0x0b;
    /* a point off the curve: the last byte of y */
    b.p[b.n - 1] ^= 0x01;
    CU_ASSERT_EQUAL(parse_bytes(b.p, b.n), VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("not on P-256"));
    bytes_free(&b);

    CU_ASSERT_EQUAL(parse_bytes(fx.p384_raw.p, fx.p384_raw.n), VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("curve"));
    CU_ASSERT_EQUAL(parse_bytes(fx.hmac_raw.p, fx.hmac_raw.n), VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("neither RSA nor ECC"));
    CU_ASSERT_EQUAL(parse_bytes(fx.rsa1024_raw.p, fx.rsa1024_raw.n),
                    VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("RSA key size"));

    /* clearing is idempotent and takes NULL */
    CU_ASSERT_EQUAL_FATAL(
        veil_tpm_pub_parse(eng, fx.ek_raw.p, fx.ek_raw.n, &pub), VEIL_OK);
    veil_tpm_pub_clear(&pub);
    CU_ASSERT_PTR_NULL(pub.key);
    veil_tpm_pub_clear(&pub);
    veil_tpm_pub_clear(NULL);
}

/* ---- quotes ------------------------------------------------------------ */

static veil_rc check_q(const veil_tpm_pub *ak, const bytes *q, const bytes *s,
                       const uint8_t *qual, const veil_pcr_sel *sel,
                       const uint8_t (*pcrs)[32])
{
    return veil_tpm_check_quote(eng, ak, q->p, q->n, s->p, s->n, qual, sel,
                                pcrs);
}

static void test_quote_good(void)
{
    CU_ASSERT_EQUAL(
        check_q(&fx.ak_ecc, &fx.q_ecc, &fx.s_ecc, fx.qual, &fx.sel, fx.pcrs),
        VEIL_OK);
    CU_ASSERT_EQUAL(
        check_q(&fx.ak_rsa, &fx.q_rsa, &fx.s_rsa, fx.qual, &fx.sel, fx.pcrs),
        VEIL_OK);
    CU_ASSERT_EQUAL(veil_last_error()->code, VEIL_OK);
    CU_ASSERT_EQUAL(veil_tpm_check_quote(eng, &fx.ak_ecc, fx.q_ecc.p,
                                         fx.q_ecc.n, fx.s_ecc.p, fx.s_ecc.n,
                                         fx.qual, &fx.sel, NULL),
                    VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_tpm_check_quote(NULL, &fx.ak_ecc, fx.q_ecc.p,
                                         fx.q_ecc.n, fx.s_ecc.p, fx.s_ecc.n,
                                         fx.qual, &fx.sel, fx.pcrs),
                    VEIL_E_ARG);
}

/* Every single-bit change of the quote breaks the signature. */
static void flip_every_attest_byte(const veil_tpm_pub *ak, const bytes *q,
                                   const bytes *s)
{
    bytes c = bytes_dup(q);
    int bad = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(c.p);
    for (size_t i = 0; i < c.n; i++) {
        c.p[i] ^= 0x01;
        if (check_q(ak, &c, s, fx.qual, &fx.sel, fx.pcrs) != VEIL_E_VERIFY ||
            !msg_has("quote signature does not verify"))
            bad++;
        c.p[i] ^= 0x01;
    }
    CU_ASSERT_EQUAL(bad, 0);
    c.n--; /* truncated */
    CU_ASSERT_EQUAL(check_q(ak, &c, s, fx.qual, &fx.sel, fx.pcrs),
                    VEIL_E_VERIFY);
    bytes_free(&c);
}

static void test_quote_tampered(void)
{
    flip_every_attest_byte(&fx.ak_ecc, &fx.q_ecc, &fx.s_ecc);
    flip_every_attest_byte(&fx.ak_rsa, &fx.q_rsa, &fx.s_rsa);
}

/* 1 when byte i of a TPMT_SIGNATURE is part of a signature value (ECDSA r
 * or s, or the RSA signature) rather than an algorithm or size field. */
static int is_value_byte(const bytes *s, size_t i)
{
    size_t rlen = (size_t)s->p[4] << 8 | s->p[5];

    if ((s->p[0] << 8 | s->p[1]) == TPM2_ALG_ECDSA)
        return (i >= 6 && i < 6 + rlen) || i >= 8 + rlen;
    return i >= 6;
}

/* Every single-bit change of the signature fails: a changed value does not
 * verify, a changed algorithm or size is refused. */
static void flip_every_sig_byte(const veil_tpm_pub *ak, const bytes *q,
                                const bytes *s)
{
    bytes c = bytes_dup(s);
    int bad = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(c.p);
    for (size_t i = 0; i < c.n; i++) {
        veil_rc rc;

        c.p[i] ^= 0x01;
        rc = check_q(ak, q, &c, fx.qual, &fx.sel, fx.pcrs);
        if (is_value_byte(s, i) ? rc != VEIL_E_VERIFY
                                : rc != VEIL_E_VERIFY && rc != VEIL_E_ARG)
            bad++;
        c.p[i] ^= 0x01;
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(check_q(ak, q, &c, fx.qual, &fx.sel, fx.pcrs), VEIL_OK);
    c.n--;
    CU_ASSERT_EQUAL(check_q(ak, q, &c, fx.qual, &fx.sel, fx.pcrs), VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("TPMT_SIGNATURE"));
    bytes_free(&c);
}

static void test_quote_bad_signature(void)
{
    bytes c;

    /* ECDSA: sigAlg, hash, size of r, r, size of s, s */
    flip_every_sig_byte(&fx.ak_ecc, &fx.q_ecc, &fx.s_ecc);
    c = bytes_dup(&fx.s_ecc);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c.p);
    c.p[6 + 3] ^= 0x80; /* inside r */
    CU_ASSERT_EQUAL(
        check_q(&fx.ak_ecc, &fx.q_ecc, &c, fx.qual, &fx.sel, fx.pcrs),
        VEIL_E_VERIFY);
    CU_ASSERT_TRUE(msg_has("quote signature does not verify"));
    c.p[6 + 3] ^= 0x80;
    c.p[c.n - 1] ^= 0x01; /* inside s */
    CU_ASSERT_EQUAL(
        check_q(&fx.ak_ecc, &fx.q_ecc, &c, fx.qual, &fx.sel, fx.pcrs),
        VEIL_E_VERIFY);
    bytes_free(&c);

    /* RSASSA: sigAlg, hash, size, then the signature */
    flip_every_sig_byte(&fx.ak_rsa, &fx.q_rsa, &fx.s_rsa);
    c = bytes_dup(&fx.s_rsa);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c.p);
    c.p[100] ^= 0x01;
    CU_ASSERT_EQUAL(
        check_q(&fx.ak_rsa, &fx.q_rsa, &c, fx.qual, &fx.sel, fx.pcrs),
        VEIL_E_VERIFY);
    CU_ASSERT_TRUE(msg_has("quote signature does not verify"));
    bytes_free(&c);

    /* a signature of the other kind, and one by another key */
    CU_ASSERT_EQUAL(
        check_q(&fx.ak_ecc, &fx.q_ecc, &fx.s_rsa, fx.qual, &fx.sel, fx.pcrs),
        VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("not ECDSA"));
    CU_ASSERT_EQUAL(
        check_q(&fx.ak_rsa, &fx.q_rsa, &fx.s_ecc, fx.qual, &fx.sel, fx.pcrs),
        VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("not RSASSA"));
    CU_ASSERT_EQUAL(
        check_q(&fx.ak_ecc, &fx.q_ecc, &fx.s_unr, fx.qual, &fx.sel, fx.pcrs),
        VEIL_E_VERIFY);
    CU_ASSERT_EQUAL(
        check_q(&fx.ak_ecc, &fx.q_rsa, &fx.s_ecc, fx.qual, &fx.sel, fx.pcrs),
        VEIL_E_VERIFY);
}

static void test_quote_qualifying(void)
{
    uint8_t other[32];

    memcpy(other, fx.qual, sizeof other);
    other[31] ^= 0x01;
    CU_ASSERT_EQUAL(
        check_q(&fx.ak_ecc, &fx.q_ecc, &fx.s_ecc, other, &fx.sel, fx.pcrs),
        VEIL_E_VERIFY);
    CU_ASSERT_TRUE(msg_has("quote qualifying data does not match"));
    CU_ASSERT_EQUAL(
        check_q(&fx.ak_rsa, &fx.q_rsa, &fx.s_rsa, other, &fx.sel, fx.pcrs),
        VEIL_E_VERIFY);
    CU_ASSERT_TRUE(msg_has("quote qualifying data does not match"));
}

static void test_quote_pcr_values(void)
{
    uint8_t pcrs[3][32], now[3][32];

    for (int i = 0; i < 3; i++) {
        memcpy(pcrs, fx.pcrs, sizeof pcrs);
        pcrs[i][17] ^= 0x01;
        CU_ASSERT_EQUAL(
            check_q(&fx.ak_ecc, &fx.q_ecc, &fx.s_ecc, fx.qual, &fx.sel, pcrs),
            VEIL_E_VERIFY);
        CU_ASSERT_TRUE(
            msg_has("PCR digest does not match the reported values"));
    }
    /* the right values in the wrong order */
    memcpy(pcrs[0], fx.pcrs[2], 32);
    memcpy(pcrs[1], fx.pcrs[1], 32);
    memcpy(pcrs[2], fx.pcrs[0], 32);
    CU_ASSERT_EQUAL(
        check_q(&fx.ak_ecc, &fx.q_ecc, &fx.s_ecc, fx.qual, &fx.sel, pcrs),
        VEIL_E_VERIFY);

    /* The platform changes after the quote: PCR 10 is extended again and
     * the new values no longer match the old quote. */
    CU_ASSERT_TRUE_FATAL(sh("tpm2_pcrextend 10:sha256=%064x", 0xbad));
    CU_ASSERT_TRUE_FATAL(read_pcrs(now));
    CU_ASSERT_EQUAL(memcmp(now[0], fx.pcrs[0], 64), 0);
    CU_ASSERT_NOT_EQUAL(memcmp(now[2], fx.pcrs[2], 32), 0);
    CU_ASSERT_EQUAL(
        check_q(&fx.ak_ecc, &fx.q_ecc, &fx.s_ecc, fx.qual, &fx.sel, now),
        VEIL_E_VERIFY);
    CU_ASSERT_TRUE(msg_has("PCR digest does not match the reported values"));
}

static void test_quote_selection(void)
{
    veil_pcr_sel sel = {0};

    /* a subset, a superset, a different PCR */
    sel.n = 2;
    sel.index[0] = 0;
    sel.index[1] = 7;
    CU_ASSERT_EQUAL(
        check_q(&fx.ak_ecc, &fx.q_ecc, &fx.s_ecc, fx.qual, &sel, fx.pcrs),
        VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("PCR selection"));
    sel.n = 4;
    sel.index[2] = 10;
    sel.index[3] = 11;
    CU_ASSERT_EQUAL(check_q(&fx.ak_ecc, &fx.q_ecc, &fx.s_ecc, fx.qual, &sel,
                            fx.pcrs), /* not read past: selection fails */
                    VEIL_E_ARG);
    sel.n = 3;
    sel.index[2] = 11;
    CU_ASSERT_EQUAL(
        check_q(&fx.ak_ecc, &fx.q_ecc, &fx.s_ecc, fx.qual, &sel, fx.pcrs),
        VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("quote PCR selection is not the expected one"));
    /* malformed selections */
    sel.index[0] = 10;
    sel.index[1] = 7;
    sel.index[2] = 0;
    CU_ASSERT_EQUAL(
        check_q(&fx.ak_ecc, &fx.q_ecc, &fx.s_ecc, fx.qual, &sel, fx.pcrs),
        VEIL_E_ARG);
    sel.n = 0;
    CU_ASSERT_EQUAL(
        check_q(&fx.ak_ecc, &fx.q_ecc, &fx.s_ecc, fx.qual, &sel, fx.pcrs),
        VEIL_E_ARG);
    sel.n = 1;
    sel.index[0] = 24;
    CU_ASSERT_EQUAL(
        check_q(&fx.ak_ecc, &fx.q_ecc, &fx.s_ecc, fx.qual, &sel, fx.pcrs),
        VEIL_E_ARG);
    /* the same PCRs in another bank, and two banks */
    CU_ASSERT_EQUAL(
        check_q(&fx.ak_ecc, &fx.q_sha1, &fx.s_sha1, fx.qual, &fx.sel, fx.pcrs),
        VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("is not sha256"));
    CU_ASSERT_EQUAL(
        check_q(&fx.ak_ecc, &fx.q_two, &fx.s_two, fx.qual, &fx.sel, fx.pcrs),
        VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("2 banks"));
}

static void test_quote_attributes(void)
{
    veil_tpm_pub k;

    /* A real quote by a signing key that is not restricted: such a key
     * signs anything, so its "quote" proves nothing. */
    CU_ASSERT_EQUAL(check_q(&fx.unrestricted, &fx.q_unr, &fx.s_unr, fx.qual,
                            &fx.sel, fx.pcrs),
                    VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("attestation key attributes: not restricted"));
    /* ... and that is the only thing wrong with it */
    k = fx.unrestricted;
    k.attributes |= VEIL_TPMA_RESTRICTED;
    CU_ASSERT_EQUAL(
        check_q(&k, &fx.q_unr, &fx.s_unr, fx.qual, &fx.sel, fx.pcrs), VEIL_OK);
    /* a key with the right attributes but not the AK */
    CU_ASSERT_EQUAL(
        check_q(&k, &fx.q_ecc, &fx.s_ecc, fx.qual, &fx.sel, fx.pcrs),
        VEIL_E_VERIFY);

    k = fx.ak_ecc;
    k.attributes &= ~VEIL_TPMA_FIXEDTPM;
    CU_ASSERT_EQUAL(
        check_q(&k, &fx.q_ecc, &fx.s_ecc, fx.qual, &fx.sel, fx.pcrs),
        VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("attestation key attributes: not fixedTPM"));
    k = fx.ak_ecc;
    k.attributes &= ~VEIL_TPMA_SENSITIVEDATAORIGIN;
    CU_ASSERT_EQUAL(
        check_q(&k, &fx.q_ecc, &fx.s_ecc, fx.qual, &fx.sel, fx.pcrs),
        VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("not sensitiveDataOrigin"));
    /* the EK is restricted but decrypts */
    CU_ASSERT_EQUAL(
        check_q(&fx.ek, &fx.q_ecc, &fx.s_ecc, fx.qual, &fx.sel, fx.pcrs),
        VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("attestation key attributes: not sign"));
}

/* A certification is not a quote and the other way round, though both are
 * genuine and signed by the AK. */
static void test_attest_type(void)
{
    CU_ASSERT_EQUAL(check_q(&fx.ak_ecc, &fx.c_rsa_by_ecc, &fx.cs_rsa_by_ecc,
                            fx.qual, &fx.sel, fx.pcrs),
                    VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("attestation type"));
    CU_ASSERT_EQUAL(veil_tpm_check_certify(eng, &fx.ak_ecc, fx.q_ecc.p,
                                           fx.q_ecc.n, fx.s_ecc.p, fx.s_ecc.n,
                                           fx.qual, &fx.ak_rsa, 0),
                    VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("attestation type"));
}

/* ---- certifications ---------------------------------------------------- */

static veil_rc check_c(const veil_tpm_pub *signer, const bytes *a,
                       const bytes *s, const uint8_t *qual,
                       const veil_tpm_pub *certified, uint32_t required)
{
    return veil_tpm_check_certify(eng, signer, a->p, a->n, s->p, s->n, qual,
                                  certified, required);
}

static void test_certify_good(void)
{
    /* a per-request AK certified by the long-term AK, both ways round */
    CU_ASSERT_EQUAL(check_c(&fx.ak_ecc, &fx.c_rsa_by_ecc, &fx.cs_rsa_by_ecc,
                            fx.qual, &fx.ak_rsa, AK_ATTRS),
                    VEIL_OK);
    CU_ASSERT_EQUAL(check_c(&fx.ak_rsa, &fx.c_ecc_by_rsa, &fx.cs_ecc_by_rsa,
                            fx.qual, &fx.ak_ecc, AK_ATTRS),
                    VEIL_OK);
    /* an encryption key in the TPM */
    CU_ASSERT_EQUAL(check_c(&fx.ak_ecc, &fx.c_enc, &fx.cs_enc, fx.qual, &fx.enc,
                            VEIL_TPMA_FIXEDTPM | VEIL_TPMA_SENSITIVEDATAORIGIN),
                    VEIL_OK);
    CU_ASSERT_EQUAL(
        check_c(&fx.ak_ecc, &fx.c_enc, &fx.cs_enc, fx.qual, &fx.enc, 0),
        VEIL_OK);
}

static void test_certify_wrong_name(void)
{
    veil_tpm_pub k;

    CU_ASSERT_EQUAL(check_c(&fx.ak_ecc, &fx.c_rsa_by_ecc, &fx.cs_rsa_by_ecc,
                            fx.qual, &fx.ak_ecc, AK_ATTRS),
                    VEIL_E_VERIFY);
    CU_ASSERT_TRUE(msg_has("certified name does not match"));
    CU_ASSERT_EQUAL(
        check_c(&fx.ak_ecc, &fx.c_enc, &fx.cs_enc, fx.qual, &fx.nofixed, 0),
        VEIL_E_VERIFY);
    k = fx.enc;
    k.name[20] ^= 0x01;
    CU_ASSERT_EQUAL(check_c(&fx.ak_ecc, &fx.c_enc, &fx.cs_enc, fx.qual, &k, 0),
                    VEIL_E_VERIFY);
    CU_ASSERT_TRUE(msg_has("certified name does not match"));
}

static void test_certify_attributes(void)
{
    veil_tpm_pub k;

    /* a genuine certification of a key that can leave the TPM */
    CU_ASSERT_EQUAL(check_c(&fx.ak_ecc, &fx.c_nofixed, &fx.cs_nofixed, fx.qual,
                            &fx.nofixed,
                            VEIL_TPMA_FIXEDTPM | VEIL_TPMA_SENSITIVEDATAORIGIN),
                    VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("certified key attributes: not fixedTPM"));
    CU_ASSERT_EQUAL(check_c(&fx.ak_ecc, &fx.c_nofixed, &fx.cs_nofixed, fx.qual,
                            &fx.nofixed, VEIL_TPMA_SENSITIVEDATAORIGIN),
                    VEIL_OK);
    /* a per-request AK must be an AK */
    CU_ASSERT_EQUAL(
        check_c(&fx.ak_ecc, &fx.c_enc, &fx.cs_enc, fx.qual, &fx.enc, AK_ATTRS),
        VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("certified key attributes: not restricted"));
    /* the signer must be an AK */
    k = fx.ak_ecc;
    k.attributes &= ~VEIL_TPMA_RESTRICTED;
    CU_ASSERT_EQUAL(check_c(&k, &fx.c_enc, &fx.cs_enc, fx.qual, &fx.enc, 0),
                    VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("attestation key attributes: not restricted"));
}

static void test_certify_tampered(void)
{
    bytes c = bytes_dup(&fx.c_rsa_by_ecc);
    uint8_t other[32];
    int bad = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(c.p);
    for (size_t i = 0; i < c.n; i++) {
        c.p[i] ^= 0x01;
        if (check_c(&fx.ak_ecc, &c, &fx.cs_rsa_by_ecc, fx.qual, &fx.ak_rsa,
                    AK_ATTRS) != VEIL_E_VERIFY ||
            !msg_has("certification signature does not verify"))
            bad++;
        c.p[i] ^= 0x01;
    }
    CU_ASSERT_EQUAL(bad, 0);
    bytes_free(&c);
    /* the signature of another certification, and by the other AK */
    CU_ASSERT_EQUAL(check_c(&fx.ak_ecc, &fx.c_rsa_by_ecc, &fx.cs_enc, fx.qual,
                            &fx.ak_rsa, AK_ATTRS),
                    VEIL_E_VERIFY);
    CU_ASSERT_EQUAL(check_c(&fx.ak_rsa, &fx.c_rsa_by_ecc, &fx.cs_rsa_by_ecc,
                            fx.qual, &fx.ak_rsa, AK_ATTRS),
                    VEIL_E_ARG); /* an ECDSA signature for an RSA key */
    memcpy(other, fx.qual, sizeof other);
    other[0] ^= 0x01;
    CU_ASSERT_EQUAL(check_c(&fx.ak_ecc, &fx.c_rsa_by_ecc, &fx.cs_rsa_by_ecc,
                            other, &fx.ak_rsa, AK_ATTRS),
                    VEIL_E_VERIFY);
    CU_ASSERT_TRUE(msg_has("certification qualifying data does not match"));
}

/* ---- MakeCredential ---------------------------------------------------- */

/* The file tpm2_makecredential writes and tpm2_activatecredential reads:
 * 0xBADCC0DE, version 1 (both 32-bit big-endian), TPM2B_ID_OBJECT,
 * TPM2B_ENCRYPTED_SECRET. */
static int write_cred(const char *name, const uint8_t *blob, size_t blob_len,
                      const uint8_t *enc, size_t enc_len)
{
    uint8_t buf[1100], *p = buf;

    if (blob_len + enc_len + 8 > sizeof buf)
        return 0;
    p = put32(p, 0xBADCC0DEu);
    p = put32(p, 1);
    memcpy(p, blob, blob_len);
    memcpy(p + blob_len, enc, enc_len);
    return save(name, buf, 8 + blob_len + enc_len);
}

/* TPM2_ActivateCredential of cred (a file as above) for the object at ak,
 * with the EK under a policy session (PolicySecret of the endorsement
 * hierarchy, the EK's policy).  Returns the tool's exit status; the
 * recovered secret goes to out; the tool's output to TAG.log. */
static int activate(const char *tag, const char *ak, bytes *out)
{
    char name[64];
    int st;

    st = sh_status("tpm2_startauthsession --policy-session -S %s.sess && "
                   "tpm2_policysecret -S %s.sess -c e && "
                   "tpm2_activatecredential -c %s -C ek.ctx -i %s.cred "
                   "-o %s.out -P session:%s.sess >%s.log 2>&1; st=$?; "
                   "tpm2_flushcontext %s.sess; exit $st",
                   tag, tag, ak, tag, tag, tag, tag, tag);
    if (st == 0 && out) {
        snprintf(name, sizeof name, "%s.out", tag);
        if (!load(name, out))
            return -1;
    }
    return st;
}

static int log_has(const char *tag, const char *what)
{
    char name[64];
    bytes b;
    int has;

    snprintf(name, sizeof name, "%s.log", tag);
    if (!load(name, &b))
        return 0;
    has = strstr((const char *)b.p, what) != NULL;
    bytes_free(&b);
    return has;
}

static veil_rc make_cred(const veil_tpm_pub *ek, const uint8_t *name,
                         size_t name_len, const uint8_t *secret,
                         size_t secret_len, const char *file, uint8_t *blob,
                         size_t *blob_len, uint8_t *enc, size_t *enc_len)
{
    veil_rc rc;

    *blob_len = 512;
    *enc_len = 512;
    rc = veil_tpm_make_credential(eng, ek, name, name_len, secret, secret_len,
                                  blob, blob_len, enc, enc_len);
    if (rc == VEIL_OK && file)
        CU_ASSERT_TRUE(write_cred(file, blob, *blob_len, enc, *enc_len));
    return rc;
}

static void test_credential_roundtrip(void)
{
    uint8_t secret[32], blob[512], enc[512], blob2[512], enc2[512];
    size_t blob_len, enc_len, blob2_len, enc2_len;
    bytes out = {0};

    CU_ASSERT_EQUAL_FATAL(veil_random(eng, secret, sizeof secret), VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(make_cred(&fx.ek, fx.ak_ecc.name, 34, secret, 32,
                                    "cr1.cred", blob, &blob_len, enc, &enc_len),
                          VEIL_OK);
    /* size || TPM2B_DIGEST(HMAC) || TPM2B_DIGEST(secret), encrypted; and
     * size || RSA-2048 ciphertext */
    CU_ASSERT_EQUAL(blob_len, 2 + 34 + 34);
    CU_ASSERT_EQUAL(blob[0] << 8 | blob[1], 68);
    CU_ASSERT_EQUAL(blob[2] << 8 | blob[3], 32);
    CU_ASSERT_EQUAL(enc_len, 2 + 256);
    CU_ASSERT_EQUAL(enc[0] << 8 | enc[1], 256);
    CU_ASSERT_EQUAL(activate("cr1", "0x81017e01", &out), 0);
    CU_ASSERT_EQUAL(out.n, sizeof secret);
    CU_ASSERT_TRUE(out.p && out.n == 32 && memcmp(out.p, secret, 32) == 0);
    bytes_free(&out);

    /* a fresh seed every time */
    CU_ASSERT_EQUAL_FATAL(make_cred(&fx.ek, fx.ak_ecc.name, 34, secret, 32,
                                    NULL, blob2, &blob2_len, enc2, &enc2_len),
                          VEIL_OK);
    CU_ASSERT_NOT_EQUAL(memcmp(enc + 2, enc2 + 2, 256), 0);
    CU_ASSERT_NOT_EQUAL(memcmp(blob + 4, blob2 + 4, 32), 0);

    /* a short secret, for the RSA AK */
    CU_ASSERT_EQUAL_FATAL(make_cred(&fx.ek, fx.ak_rsa.name, 34, secret, 5,
                                    "cr2.cred", blob, &blob_len, enc, &enc_len),
                          VEIL_OK);
    CU_ASSERT_EQUAL(blob_len, 2 + 34 + 2 + 5);
    CU_ASSERT_EQUAL(activate("cr2", "0x81017e02", &out), 0);
    CU_ASSERT_TRUE(out.p && out.n == 5 && memcmp(out.p, secret, 5) == 0);
    bytes_free(&out);
}

static void test_credential_refused(void)
{
    uint8_t secret[32], blob[512], enc[512];
    size_t blob_len, enc_len;

    memset(secret, 0x5c, sizeof secret);
    /* made for the RSA AK, presented with the ECC AK: the outer HMAC and
     * the key both depend on the name */
    CU_ASSERT_EQUAL_FATAL(make_cred(&fx.ek, fx.ak_rsa.name, 34, secret, 32,
                                    "bad1.cred", blob, &blob_len, enc,
                                    &enc_len),
                          VEIL_OK);
    CU_ASSERT_NOT_EQUAL(activate("bad1", "0x81017e01", NULL), 0);
    CU_ASSERT_TRUE(log_has("bad1", "integrity"));
    /* the right object, once it is the right one */
    CU_ASSERT_EQUAL(activate("bad1", "0x81017e02", NULL), 0);

    /* a changed byte of encIdentity, of the HMAC, of the wrapped seed */
    CU_ASSERT_EQUAL_FATAL(make_cred(&fx.ek, fx.ak_ecc.name, 34, secret, 32,
                                    NULL, blob, &blob_len, enc, &enc_len),
                          VEIL_OK);
    blob[blob_len - 1] ^= 0x01;
    CU_ASSERT_TRUE(write_cred("bad2.cred", blob, blob_len, enc, enc_len));
    CU_ASSERT_NOT_EQUAL(activate("bad2", "0x81017e01", NULL), 0);
    CU_ASSERT_TRUE(log_has("bad2", "integrity"));
    blob[blob_len - 1] ^= 0x01;
    blob[10] ^= 0x01;
    CU_ASSERT_TRUE(write_cred("bad3.cred", blob, blob_len, enc, enc_len));
    CU_ASSERT_NOT_EQUAL(activate("bad3", "0x81017e01", NULL), 0);
    CU_ASSERT_TRUE(log_has("bad3", "integrity"));
    blob[10] ^= 0x01;
    enc[100] ^= 0x01;
    CU_ASSERT_TRUE(write_cred("bad4.cred", blob, blob_len, enc, enc_len));
    CU_ASSERT_NOT_EQUAL(activate("bad4", "0x81017e01", NULL), 0);
    enc[100] ^= 0x01;
    CU_ASSERT_TRUE(write_cred("good.cred", blob, blob_len, enc, enc_len));
    CU_ASSERT_EQUAL(activate("good", "0x81017e01", NULL), 0);
}

/* tpm2_makecredential (offline, no TPM) writes the same structures: the
 * same sizes, and the TPM activates its credential as well as ours. */
static void test_credential_tools_format(void)
{
    static const uint8_t secret[20] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10,
                                       11, 12, 13, 14, 15, 16, 17, 18, 19, 20};
    uint8_t blob[512], enc[512];
    size_t blob_len, enc_len;
    char name_hex[69];
    bytes tools = {0}, out = {0};

    CU_ASSERT_EQUAL_FATAL(make_cred(&fx.ek, fx.ak_ecc.name, 34, secret,
                                    sizeof secret, "ours.cred", blob, &blob_len,
                                    enc, &enc_len),
                          VEIL_OK);
    CU_ASSERT_TRUE_FATAL(save("secret20.bin", secret, sizeof secret));
    hex(fx.ak_ecc.name, 34, name_hex);
    CU_ASSERT_TRUE_FATAL(sh("tpm2_makecredential -T none -e ek.pub "
                            "-s secret20.bin -n %s -o tools.cred",
                            name_hex));
    CU_ASSERT_TRUE_FATAL(load("tools.cred", &tools));
    CU_ASSERT_EQUAL(tools.n, 8 + blob_len + enc_len);
    if (tools.n == 8 + blob_len + enc_len) {
        CU_ASSERT_EQUAL(get32(tools.p), 0xBADCC0DEu);
        CU_ASSERT_EQUAL(get32(tools.p + 4), 1);
        /* the size fields: ID object, its HMAC, the wrapped seed */
        CU_ASSERT_EQUAL(memcmp(tools.p + 8, blob, 4), 0);
        CU_ASSERT_EQUAL(memcmp(tools.p + 8 + blob_len, enc, 2), 0);
    }
    bytes_free(&tools);
    CU_ASSERT_EQUAL(activate("tools", "0x81017e01", &out), 0);
    CU_ASSERT_TRUE(out.p && out.n == sizeof secret &&
                   memcmp(out.p, secret, sizeof secret) == 0);
    bytes_free(&out);
    CU_ASSERT_EQUAL(activate("ours", "0x81017e01", &out), 0);
    CU_ASSERT_TRUE(out.p && out.n == sizeof secret &&
                   memcmp(out.p, secret, sizeof secret) == 0);
    bytes_free(&out);
}

static void test_credential_args(void)
{
    uint8_t secret[33] = {1}, blob[512], enc[512];
    size_t blob_len = sizeof blob, enc_len = sizeof enc;
    const uint8_t *name = fx.ak_ecc.name;

    CU_ASSERT_EQUAL(make_cred(&fx.ek, name, 34, secret, 0, NULL, blob,
                              &blob_len, enc, &enc_len),
                    VEIL_E_ARG);
    CU_ASSERT_EQUAL(make_cred(&fx.ek, name, 34, secret, 33, NULL, blob,
                              &blob_len, enc, &enc_len),
                    VEIL_E_ARG);
    CU_ASSERT_EQUAL(make_cred(&fx.ek, name, 1, secret, 32, NULL, blob,
                              &blob_len, enc, &enc_len),
                    VEIL_E_ARG);
    CU_ASSERT_EQUAL(make_cred(&fx.ek, name, sizeof(TPMU_NAME) + 1, secret, 32,
                              NULL, blob, &blob_len, enc, &enc_len),
                    VEIL_E_ARG);
    CU_ASSERT_EQUAL(make_cred(&fx.ak_ecc, name, 34, secret, 32, NULL, blob,
                              &blob_len, enc, &enc_len),
                    VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("not RSA"));
    CU_ASSERT_EQUAL(make_cred(&fx.ak_rsa, name, 34, secret, 32, NULL, blob,
                              &blob_len, enc, &enc_len),
                    VEIL_E_ARG);
    CU_ASSERT_TRUE(msg_has("endorsement key attributes: not decrypt"));
    CU_ASSERT_EQUAL(veil_tpm_make_credential(eng, &fx.ek, name, 34, secret, 32,
                                             NULL, &blob_len, enc, &enc_len),
                    VEIL_E_ARG);
    blob_len = 2 + 34 + 34 - 1;
    enc_len = sizeof enc;
    CU_ASSERT_EQUAL(veil_tpm_make_credential(eng, &fx.ek, name, 34, secret, 32,
                                             blob, &blob_len, enc, &enc_len),
                    VEIL_E_BUFFER);
    blob_len = sizeof blob;
    enc_len = 2 + 256 - 1;
    CU_ASSERT_EQUAL(veil_tpm_make_credential(eng, &fx.ek, name, 34, secret, 32,
                                             blob, &blob_len, enc, &enc_len),
                    VEIL_E_BUFFER);
    /* exactly enough */
    blob_len = 2 + 34 + 34;
    enc_len = 2 + 256;
    CU_ASSERT_EQUAL(veil_tpm_make_credential(eng, &fx.ek, name, 34, secret, 32,
                                             blob, &blob_len, enc, &enc_len),
                    VEIL_OK);
}

/* ---- main -------------------------------------------------------------- */

int main(void)
{
    static const tu_test tests[] = {
        {"public areas: names, SPKI, attributes", test_pub_parse},
        {"public areas: malformed and unsupported", test_pub_malformed},
        {"quote: ECDSA and RSASSA AKs verify", test_quote_good},
        {"quote: any changed byte fails", test_quote_tampered},
        {"quote: bad signatures fail", test_quote_bad_signature},
        {"quote: wrong qualifying data", test_quote_qualifying},
        {"quote: wrong PCR values", test_quote_pcr_values},
        {"quote: wrong PCR selection", test_quote_selection},
        {"quote: AK attributes", test_quote_attributes},
        {"quote and certification are not interchangeable", test_attest_type},
        {"certify: AKs and a TPM key verify", test_certify_good},
        {"certify: wrong name", test_certify_wrong_name},
        {"certify: required attributes", test_certify_attributes},
        {"certify: changed bytes, signature, qualifying data",
         test_certify_tampered},
        {"MakeCredential: TPM activates it", test_credential_roundtrip},
        {"MakeCredential: TPM refuses wrong name or changed bytes",
         test_credential_refused},
        {"MakeCredential: same format as tpm2_makecredential",
         test_credential_tools_format},
        {"MakeCredential: argument checks", test_credential_args},
    };

    TU_ADD_SUITE("TPM evidence (swtpm)", suite_init, suite_clean, tests);
    return tu_run_tests();
}
