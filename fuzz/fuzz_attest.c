/* libFuzzer harness: the client's attestation parsers (client/trust.c,
 * client/verify.c): trust files (veil_trust_load) and saved evidence
 * checked offline (veil_verify_evidence).
 *
 * Every input goes through both: it is written to a memory file and loaded
 * as a trust file, and it is verified as evidence against the trust file
 * fuzz/data/trust.json.  That trust file and the evidence seeds in
 * fuzz/corpus/attest were written by the test suite's real run on the test
 * TPM (tests/test_attest_tpm.sh; scripts/fuzz.sh --seed-attest copies them),
 * so a seed is a real enrolment or a real answer's evidence, signatures and
 * quotes included.
 *
 * Seeds go stale when the evidence format changes (the backend statement
 * did that: old evidence stops at its check, before the quote): set-up
 * therefore verifies fuzz/data/evidence.json, the seed
 * evidence-maximum.json, and stops unless it passes every check, the
 * quote's included. */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz.h"
#include "veil/attest.h"

static struct {
    veil_trust *trust;
    int fd;
    char path[64];
} A;

/* on_check for the set-up's evidence: *ctx = 1 once the quote check
 * passed. */
static void seen(void *ctx, const char *check, int ok, const char *detail)
{
    int *quote = ctx;
    (void)detail;
    if (ok && strcmp(check, "quote") == 0)
        *quote = 1;
}

/* fuzz/data/evidence.json verifies, its quote included, against the
 * trust file: the seeds are evidence the current client accepts. */
static void seeds_current(void)
{
    char path[4096], *text = NULL;
    long len;
    int quote = 0;
    veil_client_error err;
    FILE *f;
    fuzz_data_path("evidence.json", path, sizeof path);
    if ((f = fopen(path, "rb")) == NULL || fseek(f, 0, SEEK_END) != 0 ||
        (len = ftell(f)) <= 0 || fseek(f, 0, SEEK_SET) != 0 ||
        (text = malloc((size_t)len)) == NULL ||
        fread(text, 1, (size_t)len, f) != (size_t)len)
        fuzz_die("reading fuzz/data/evidence.json");
    fclose(f);
    veil_client_status st = veil_verify_evidence(
        fuzz_engine(), A.trust, text, (size_t)len, seen, &quote, &err);
    free(text);
    if (st != VEIL_CLIENT_OK || !quote) {
        fprintf(stderr, "fuzz_attest: %s\n",
                st != VEIL_CLIENT_OK ? err.detail : "no quote was checked");
        fuzz_die("fuzz/data/evidence.json does not verify against "
                 "fuzz/data/trust.json: the seeds are stale, run "
                 "scripts/fuzz.sh --seed-attest");
    }
}

static void setup(void)
{
    char path[4096];
    veil_client_error err;
    fuzz_data_path("trust.json", path, sizeof path);
    if (veil_trust_load(path, &A.trust, &err) != VEIL_CLIENT_OK) {
        fprintf(stderr, "fuzz_attest: %s\n", err.detail);
        fuzz_die("fuzz/data/trust.json");
    }
    seeds_current();
    if ((A.fd = memfd_create("veil-fuzz-trust", MFD_CLOEXEC)) < 0)
        fuzz_die("memfd_create");
    snprintf(A.path, sizeof A.path, "/proc/self/fd/%d", A.fd);
}

static void as_trust_file(const uint8_t *data, size_t size)
{
    veil_trust *t = NULL;
    veil_client_error err;
    if (ftruncate(A.fd, 0) != 0 ||
        (size && pwrite(A.fd, data, size, 0) != (ssize_t)size))
        fuzz_die("writing the memory file");
    veil_client_status st = veil_trust_load(A.path, &t, &err);
    if (getenv("VEIL_FUZZ_VERBOSE"))
        fprintf(stderr, "trust file: %d %s\n", (int)st, err.detail);
    /* a refusal is a configuration error with a reason, and no trust */
    if (st == VEIL_CLIENT_OK
            ? t == NULL || veil_trust_url(t) == NULL
            : t != NULL || st != VEIL_CLIENT_E_CONFIG || err.detail[0] == '\0')
        abort();
    veil_trust_free(t);
}

static void as_evidence(const uint8_t *data, size_t size)
{
    veil_client_error err;
    veil_client_status st = veil_verify_evidence(
        fuzz_engine(), A.trust, (const char *)data, size, NULL, NULL, &err);
    if (getenv("VEIL_FUZZ_VERBOSE"))
        fprintf(stderr, "evidence: %d %s\n", (int)st, err.detail);
    if (st != VEIL_CLIENT_OK && st != VEIL_CLIENT_E_CONFIG &&
        st != VEIL_CLIENT_E_SECURITY)
        abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    setup();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    as_trust_file(data, size);
    as_evidence(data, size);
    return 0;
}
