/* libFuzzer harness: the NOMYO v1 package parser (protocol/package.c).
 *
 * The input is a request package as it arrives in a POST body.  It is
 * opened with the fuzzing-only server key (fuzz/data/server-key, the key
 * the seeds in fuzz/corpus/package were sealed to), so a seed that still
 * decrypts after a mutation reaches the success path, and everything else
 * the refusal paths (see below for the one input in eight rule).  The same
 * bytes also go through the encodings the gateway decodes from headers and
 * package fields: strict base64 (whose output must survive encoding and
 * decoding again unchanged), percent-decoding (X-Public-Key) and the payload-ID
 * check. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "package.h"

static void check_encodings(const uint8_t *data, size_t size)
{
    uint8_t *bin = NULL, *again = NULL;
    size_t bin_len = 0, again_len = 0;

    if (veil_b64_decode((const char *)data, size, &bin, &bin_len) == VEIL_OK) {
        char *text = veil_b64_encode(bin, bin_len);
        if (text == NULL ||
            veil_b64_decode(text, strlen(text), &again, &again_len) !=
                VEIL_OK ||
            again_len != bin_len || memcmp(again, bin, bin_len) != 0)
            abort(); /* what was decoded must encode and decode back */
        free(text);
        free(again);
    }
    free(bin);

    /* percent-decoding and the ID check take C strings */
    char *s = malloc(size + 1), *dec = NULL;
    if (s == NULL)
        return;
    memcpy(s, data, size);
    s[size] = '\0';
    if (veil_percent_decode(s, &dec) == VEIL_OK) {
        char *enc = veil_percent_encode(dec), *back = NULL;
        /* every byte but the unreserved ones comes back escaped */
        if (enc == NULL || veil_percent_decode(enc, &back) != VEIL_OK ||
            strcmp(back, dec) != 0)
            abort();
        free(enc);
        free(back);
    }
    free(dec);
    if (veil_uuid_valid(s) && strlen(s) != 36)
        abort();
    /* payload IDs: 1 to VEIL_PAYLOAD_ID_MAX printable ASCII, no space */
    size_t n = strlen(s), bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += s[i] <= ' ' || s[i] > '~';
    if (veil_payload_id_valid(s) !=
        (n >= 1 && n <= VEIL_PAYLOAD_ID_MAX && !bad))
        abort();
    free(s);
}

static veil_key *key, *pub;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const char hello[] = "{\"model\":\"warm-up\"}";
    char *pkg = NULL;
    veil_secbuf *pt = NULL;
    key = fuzz_key("server-key");
    uint8_t *der = NULL;
    size_t der_len = 0;
    if (veil_key_public_der(key, &der, &der_len) != VEIL_OK ||
        veil_key_from_public(fuzz_engine(), der, der_len, &pub) != VEIL_OK)
        fuzz_die("public key");
    free(der);
    if (veil_pkg_seal(fuzz_engine(), key, (const uint8_t *)hello,
                      sizeof hello - 1, VEIL_TAG_SEPARATE, -1,
                      &pkg) != VEIL_OK ||
        veil_pkg_open(fuzz_engine(), key, pkg, strlen(pkg), &pt, NULL) !=
            VEIL_OK)
        fuzz_die("warm-up");
    veil_secbuf_free(pt);
    /* and the refusal paths once (OpenSSL's error state) */
    pkg[strlen(pkg) / 2] ^= 1;
    LLVMFuzzerTestOneInput((const uint8_t *)pkg, strlen(pkg));
    free(pkg);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    veil_secbuf *pt = NULL;
    veil_pkg_meta meta;
    /* The RSA unwrap is most of the cost of an input that reaches it, and
     * it is OpenSSL's, not the parser's: one input in eight (by length) is
     * opened with the private key, the others with its public half, whose
     * unwrap fails at once and takes the same refusal path as a bad
     * wrapped key. */
    veil_rc rc = veil_pkg_open(fuzz_engine(), size % 8 ? pub : key,
                               (const char *)data, size, &pt, &meta);
    fuzz_say(size % 8 ? "package (public half)" : "package", rc);
    if (rc == VEIL_OK) {
        /* an opened package has a plaintext no longer than its ciphertext
         * and one of the two tag conventions */
        if (veil_secbuf_len(pt) > size || (meta.tag_mode != VEIL_TAG_SEPARATE &&
                                           meta.tag_mode != VEIL_TAG_APPENDED))
            abort();
    } else if (pt != NULL || (rc != VEIL_E_ARG && rc != VEIL_E_DECRYPT &&
                              rc != VEIL_E_NOMEM)) {
        abort(); /* a refusal leaves no plaintext and says which kind */
    }
    veil_secbuf_free(pt);
    check_encodings(data, size);
    return 0;
}
