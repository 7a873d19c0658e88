/* Writes the seed corpora of the fuzzing harnesses (fuzz/README in
 * docs/SECURITY.md, "Fuzzing"):
 *
 *   gen_corpus FUZZDIR
 *
 * FUZZDIR is the source tree's fuzz/.  The fuzzing-only keys in
 * FUZZDIR/data are made on the first run and then reused (the seeds depend
 * on them): server-key/ (RSA-2048, a NOMYO key directory; it protects
 * nothing), client-key.pem (the public half of an RSA-2048 key whose
 * private half is thrown away), ek.pub (the TPM2B_PUBLIC of an RSA-2048
 * endorsement key made in software).  Seeds are rewritten every run;
 * packages are sealed afresh, so their bytes change.  The corpora of the
 * attestation harness (trust files, evidence) come from the test suite's
 * real TPM run instead (scripts/fuzz.sh --seed-attest). */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"
#include "package.h"
#include "tpmsim.h"

static const char *dir;
static unsigned written;

static void mkdirs(const char *sub)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, sub);
    if (mkdir(p, 0755) != 0 && errno != EEXIST)
        fuzz_die(p);
}

static void put(const char *sub, const char *name, const void *d, size_t n)
{
    char p[4096];
    FILE *f;
    snprintf(p, sizeof p, "%s/%s/%s", dir, sub, name);
    if ((f = fopen(p, "wb")) == NULL || fwrite(d, 1, n, f) != n ||
        fclose(f) != 0)
        fuzz_die(p);
    written++;
}

static int exists(const char *sub)
{
    char p[4096];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, sub);
    return stat(p, &st) == 0;
}

static char *slurp(const char *sub, size_t *len)
{
    char p[4096];
    FILE *f;
    static char buf[65536];
    snprintf(p, sizeof p, "%s/%s", dir, sub);
    if ((f = fopen(p, "rb")) == NULL)
        fuzz_die(p);
    *len = fread(buf, 1, sizeof buf - 1, f);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

/* ---- keys --------------------------------------------------------------- */

static veil_key *rsa2048(void)
{
    veil_keygen_params p = {.type = VEIL_KEY_RSA, .bits = 2048};
    veil_key *k = NULL;
    if (veil_key_generate(fuzz_engine(), "software", &p, &k) != VEIL_OK)
        fuzz_die("RSA key");
    return k;
}

static void make_keys(void)
{
    char p[4096];
    mkdirs("data");
    if (!exists("data/server-key")) {
        veil_key *k = rsa2048();
        snprintf(p, sizeof p, "%s/data/server-key", dir);
        if (mkdir(p, 0700) != 0 || veil_key_save(fuzz_engine(), k, p, NULL))
            fuzz_die(p);
        veil_key_free(k);
    }
    if (!exists("data/client-key.pem")) {
        veil_key *k = rsa2048();
        char *pem = NULL;
        if (veil_key_public_pem(k, &pem) != VEIL_OK)
            fuzz_die("client key");
        put("data", "client-key.pem", pem, strlen(pem));
        free(pem);
        veil_key_free(k);
    }
    if (!exists("data/ek.pub")) {
        veil_key *k = rsa2048();
        uint8_t pub[1024];
        size_t len;
        if (!fsim_public(k, FSIM_EK_ATTRS, pub, sizeof pub, &len))
            fuzz_die("EK public area");
        put("data", "ek.pub", pub, len);
        veil_key_free(k);
    }
}

/* ---- chat requests (plaintexts) ---------------------------------------- */

/* Decrypted requests: what the gateway checks before forwarding. */
static const char *const requests[] = {
    "{\"model\":\"echo\",\"messages\":[{\"role\":\"user\",\"content\":"
    "\"hello\"}]}",
    "{\"model\":\"echo\",\"messages\":[{\"role\":\"system\",\"content\":"
    "\"be brief\"},{\"role\":\"user\",\"content\":\"a\\u0000b\"}],"
    "\"temperature\":0.5,\"max_tokens\":16}",
    "{\"model\":\"std-only\",\"messages\":[{\"role\":\"user\",\"content\":"
    "\"x\"}],\"model\":\"echo\"}",
    "{\"model\":\"echo\",\"MODEL\":\"std-only\",\"stream\":false,"
    "\"Stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"y\"}]}",
    "{\"model\":\"echo\",\"stream\":true,\"messages\":[{\"role\":\"user\","
    "\"content\":\"\\ud800 \\u2028 \\ud83d\\ude00 \xf0\x9f\x98\x80\"}]}",
    "{\"model\":\"echo\",\"messages\":[],\"tools\":[{\"type\":\"function\","
    "\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\"}}}]}",
    "{\"model\":\"echo\",\"messages\":[{\"role\":\"user\",\"content\":"
    "[{\"type\":\"text\",\"text\":\"parts\"}]}],\"_metadata\":{\"x\":1}}",
    "{\"messages\":[{\"role\":\"user\",\"content\":\"no model\"}]}",
    "[1,2,3]",
    "{\"model\":\"salted\",\"cache_salt\":\"theirs\",\"messages\":"
    "[{\"role\":\"user\",\"content\":\"salt\"}],\"stream_options\":"
    "{\"include_usage\":true}}",
    "{\"model\":\"echo\",\"messages\":[{\"role\":\"user\",\"content\":"
    "\"deep\"}],\"n\":[[[[[[[[[[{\"a\":{\"b\":[null,true,false,-0.0e+1]}}]]"
    "]]]]]]]]}",
};
#define N_REQUESTS (sizeof requests / sizeof requests[0])

static void json_seeds(void)
{
    static const char *const extra[] = {
        "{}",
        "{\"a\":1,\"a\":2}",
        "{\"a\":1,\"\\u0061\":2}",
        "{\"model\":\"m\",\"Model\":\"n\"}",
        "{\"k\":\"\\\"}\\\\\",\"l\":{\"k\":1,\"k\":2}}",
        "  {\"x\" : [ 1 , { \"y\" : \"}\" } ] }  ",
        "{\"x\":1",
        "{\"x\":1}}",
        "{\"\\ud800\":1,\"\\udc00\":2}",
        "\"just a string\"",
        "{\"a\":1e999,\"b\":-1.5E-3,\"c\":0}",
    };
    char name[32];
    mkdirs("corpus/json_scan");
    for (size_t i = 0; i < N_REQUESTS; i++) {
        snprintf(name, sizeof name, "request-%02zu.json", i);
        put("corpus/json_scan", name, requests[i], strlen(requests[i]));
    }
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++) {
        snprintf(name, sizeof name, "edge-%02zu.json", i);
        put("corpus/json_scan", name, extra[i], strlen(extra[i]));
    }
}

/* ---- packages ----------------------------------------------------------- */

static void package_seeds(veil_key *server)
{
    char name[48], *pkg = NULL;
    mkdirs("corpus/package");
    for (size_t i = 0; i < N_REQUESTS; i++) {
        veil_tag_mode mode = i % 2 ? VEIL_TAG_APPENDED : VEIL_TAG_SEPARATE;
        if (veil_pkg_seal(fuzz_engine(), server, (const uint8_t *)requests[i],
                          strlen(requests[i]), mode, i % 3 ? -1 : 1733500000.25,
                          &pkg) != VEIL_OK)
            fuzz_die("sealing a seed");
        /* padded with spaces to a multiple of 8 bytes: the length the
         * harness opens with the private key */
        size_t n = strlen(pkg), padded = (n + 7) / 8 * 8;
        char *p = realloc(pkg, padded + 1);
        if (p == NULL)
            fuzz_die("out of memory");
        pkg = p;
        memset(pkg + n, ' ', padded - n);
        pkg[padded] = '\0';
        snprintf(name, sizeof name, "sealed-%02zu.json", i);
        put("corpus/package", name, pkg, padded);
        free(pkg);
    }
    static const char *const bad[] = {
        "{\"encrypted_payload\":{\"ciphertext\":\"\",\"nonce\":"
        "\"AAAAAAAAAAAAAAAA\",\"tag\":\"AAAAAAAAAAAAAAAAAAAAAA==\"},"
        "\"encrypted_aes_key\":\"AAAA\"}",
        ("{\"encrypted_payload\":{\"ciphertext\":\"QUJD\",\"nonce\":"
         "\"AAAAAAAAAAAAAAAA\"},\"encrypted_aes_key\":\"====\"}"),
        "{\"version\":\"1.0\",\"encrypted_payload\":[]}",
        "%2D%2D%2D%2D%2DBEGIN%20PUBLIC%20KEY%2D%2D%2D%2D%2D%0A",
        "0b6b2ef0-9f1e-4c4e-8a39-5b0b1f7e1d2a",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(name, sizeof name, "malformed-%02zu", i);
        put("corpus/package", name, bad[i], strlen(bad[i]));
    }
}

/* ---- TPM structures ----------------------------------------------------- */

static void put_mode(const char *name, uint8_t mode, const uint8_t *a,
                     size_t an, const uint8_t *b, size_t bn, int len_prefix)
{
    uint8_t buf[4096];
    size_t n = 0;
    buf[n++] = mode;
    if (len_prefix) {
        buf[n++] = (uint8_t)(an >> 8);
        buf[n++] = (uint8_t)an;
    }
    memcpy(buf + n, a, an);
    n += an;
    if (b) {
        memcpy(buf + n, b, bn);
        n += bn;
    }
    put("corpus/tpm", name, buf, n);
}

static void tpm_seeds(void)
{
    veil_keygen_params p = {.type = VEIL_KEY_EC_P256};
    veil_key *ak = NULL;
    uint8_t ak_pub[1024], attest[2048], cert[2048], sig[256], qual[32];
    uint8_t values[VEIL_EV_MAX_PCRS][32];
    size_t ak_len, alen, clen, slen, ek_len;
    veil_pcr_sel sel;
    veil_tpm_pub ek;

    mkdirs("corpus/tpm");
    const uint8_t *ek_pub = (const uint8_t *)slurp("data/ek.pub", &ek_len);
    uint8_t ek_copy[1024];
    memcpy(ek_copy, ek_pub, ek_len);
    if (veil_tpm_pub_parse(fuzz_engine(), ek_copy, ek_len, &ek) != VEIL_OK ||
        veil_key_generate(fuzz_engine(), "software", &p, &ak) != VEIL_OK ||
        !fsim_public(ak, FSIM_AK_ATTRS, ak_pub, sizeof ak_pub, &ak_len) ||
        veil_pcr_sel_parse(FSIM_PCRS, &sel) != VEIL_OK)
        fuzz_die("TPM seeds");
    fsim_qualifying(qual);
    fsim_pcr_values(&sel, values);
    if (!fsim_attest(qual, &sel, (const uint8_t(*)[32])values, NULL, attest,
                     sizeof attest, &alen) ||
        !fsim_attest(qual, &sel, NULL, ek.name, cert, sizeof cert, &clen) ||
        !fsim_sign(fuzz_engine(), ak, attest, alen, sig, sizeof sig, &slen))
        fuzz_die("TPM seeds");
    put_mode("pub-ak-p256", 0, ak_pub, ak_len, NULL, 0, 0);
    put_mode("pub-ek-rsa2048", 0, ek_copy, ek_len, NULL, 0, 0);
    put_mode("quote-received-p256", 1, attest, alen, sig, slen, 1);
    put_mode("quote-received-rsa", 2, attest, alen, sig, slen, 1);
    put_mode("quote-signed", 3, attest, alen, NULL, 0, 0);
    put_mode("certify-signed", 4, cert, clen, NULL, 0, 0);
    uint8_t cred[1 + 34 + 32];
    cred[0] = 34;
    memcpy(cred + 1, ek.name, 34);
    memset(cred + 35, 0x5a, 32);
    put_mode("make-credential", 5, cred, sizeof cred, NULL, 0, 0);
    put_mode("pcr-selection", 6, (const uint8_t *)"sha256:10,0,7,23", 16, NULL,
             0, 0);
    veil_tpm_pub_clear(&ek);
    veil_key_free(ak);
}

/* ---- HTTP requests ------------------------------------------------------ */

static void http_seeds(veil_key *server)
{
    size_t pem_len;
    char *pem = slurp("data/client-key.pem", &pem_len);
    char *xpk = veil_percent_encode(pem);
    char name[48], head[8192];
    static const char *const tiers[] = {"standard", "high", "maximum"};
    static const char pid[] = "6f1c2a9e-3b4d-4e5f-8a6b-7c8d9e0f1a2b";
    if (xpk == NULL)
        fuzz_die("percent-encoding");
    mkdirs("corpus/http");

    /* completions: flags bit 0 = the harness seals the body; bit 2 = it
     * adds X-Public-Key (completion-package carries the header itself) */
    for (size_t i = 0; i < N_REQUESTS; i++) {
        int n = snprintf(head, sizeof head,
                         "%cPOST /v1/chat/secure_completion HTTP/1.1\r\n"
                         "Host: 127.0.0.1\r\n"
                         "Authorization: Bearer veil-fuzz-api-key\r\n"
                         "Content-Type: application/json\r\n"
                         "X-Payload-ID: %.35s%x\r\n"
                         "X-Security-Tier: %s\r\n\r\n%s",
                         (char)(1 | (i % 2) << 1 | 4), pid, (unsigned)i % 16,
                         tiers[i % 5 < 3 ? i % 5 : 0], requests[i]);
        snprintf(name, sizeof name, "completion-%02zu", i);
        put("corpus/http", name, head, (size_t)n);
    }
    /* a package as the body, as received (flags 0) */
    char *pkg = NULL;
    if (veil_pkg_seal(fuzz_engine(), server, (const uint8_t *)requests[0],
                      strlen(requests[0]), VEIL_TAG_SEPARATE, -1,
                      &pkg) != VEIL_OK)
        fuzz_die("sealing");
    int n = snprintf(head, sizeof head,
                     "%cPOST /v1/chat/secure_completion HTTP/1.1\r\n"
                     "Host: h\r\nAuthorization: Bearer veil-fuzz-api-key\r\n"
                     "X-Payload-ID: %s\r\nX-Security-Tier: standard\r\n"
                     "X-Public-Key: %s\r\n\r\n%s",
                     0, pid, xpk, pkg);
    put("corpus/http", "completion-package", head, (size_t)n);
    free(pkg);
    static const char *const others[] = {
        "GET /pki/public_key HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /v1/models HTTP/1.1\r\nHost: h\r\n"
        "Authorization: Bearer veil-fuzz-api-key\r\n\r\n",
        "HEAD /healthz HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /healthz HTTP/1.0\r\n\r\n",
        "GET /v1/signatures/6f1c2a9e-3b4d-4e5f-8a6b-7c8d9e0f1a20 HTTP/1.1\r\n"
        "Host: h\r\nAuthorization: Bearer veil-fuzz-api-key\r\n\r\n",
        "GET /v1/attestation/report?nonce=00112233445566778899aabbccddeeff "
        "HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer "
        "veil-fuzz-api-key\r\n\r\n",
        "POST /v1/attestation/activate HTTP/1.1\r\nHost: h\r\n"
        "Authorization: Bearer veil-fuzz-api-key\r\n\r\n"
        "{\"credential_blob_b64\":\"AAA=\",\"encrypted_secret_b64\":\"AAA=\"}",
        "POST /v1/chat/secure_completion HTTP/1.1\r\nHost: h\r\n"
        "Authorization: Bearer wrong\r\n\r\n{}",
        "POST /v1/chat/secure_completion HTTP/1.1\r\nHost: h\r\n\r\n{}",
        "DELETE /v1/models HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /nowhere HTTP/1.1\r\nHost: h\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        snprintf(head, sizeof head, "%c%s", 0, others[i]);
        snprintf(name, sizeof name, "route-%02zu", i);
        put("corpus/http", name, head, strlen(others[i]) + 1);
    }
    free(xpk);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s FUZZDIR (the source tree's fuzz/)\n",
                argv[0]);
        return 2;
    }
    dir = argv[1];
    char data[4096];
    snprintf(data, sizeof data, "%s/data", dir);
    setenv("VEIL_FUZZ_DATA", data, 1);
    mkdirs("corpus");
    make_keys();
    veil_key *server = fuzz_key("server-key");
    json_seeds();
    package_seeds(server);
    tpm_seeds();
    http_seeds(server);
    veil_key_free(server);
    printf("gen_corpus: %u files written under %s\n", written, dir);
    return 0;
}
