/* What the libFuzzer harnesses in fuzz/ share (docs/SECURITY.md,
 * "Fuzzing").  Each harness is one file defining LLVMFuzzerTestOneInput
 * and, when it needs an engine, keys or a server, LLVMFuzzerInitialize,
 * which sets them up once and aborts when that fails: a harness that
 * cannot start must not pass.
 *
 * FUZZ_DATA_DIR (set by Makefile.am to $(abs_srcdir)/fuzz/data; the
 * environment variable VEIL_FUZZ_DATA overrides it) holds the fuzzing-only
 * keys the seed corpora were made with. */
#ifndef VEIL_FUZZ_H
#define VEIL_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <openssl/crypto.h>
#include <sanitizer/lsan_interface.h>

#include "veil/engine.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Set-up, before the first input: OpenSSL's lazily made state (random
 * generators, RSA blinding) is made here by one warm-up operation, so that
 * libFuzzer's per-input leak check does not take it for a leak. */
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Stops the run with a message: set-up failed (not a finding). */
__attribute__((noreturn)) static inline void fuzz_die(const char *what)
{
    const veil_error *e = veil_last_error();
    fprintf(stderr, "fuzz harness set-up: %s: %s\n", what,
            e && e->message[0] ? e->message : "failed");
    abort();
}

/* VEIL_FUZZ_VERBOSE=1: each harness says on stderr what became of an
 * input (for checking that the seeds reach what they are meant to). */
static inline void fuzz_say(const char *what, veil_rc rc)
{
    static int verbose = -1;
    if (verbose < 0)
        verbose = getenv("VEIL_FUZZ_VERBOSE") != NULL;
    if (verbose)
        fprintf(stderr, "%s: %s%s%s\n", what, veil_rc_name(rc), rc ? ": " : "",
                rc ? veil_last_error()->message : "");
}

/* The data directory, and path = data dir + "/" + name. */
static inline void fuzz_data_path(const char *name, char *path, size_t size)
{
    const char *dir = getenv("VEIL_FUZZ_DATA");
    if (dir == NULL || dir[0] == '\0')
        dir = FUZZ_DATA_DIR;
    if (snprintf(path, size, "%s/%s", dir, name) >= (int)size)
        fuzz_die("data path too long");
}

/* OpenSSL's secure heap (where the engine keeps private keys; OpenSSL
 * also keeps its random generators' state there) is a mapping that
 * LeakSanitizer does not scan, so what is reachable only from it would be
 * reported as leaked whenever libFuzzer's per-input leak check runs.  The
 * mapping holding a secure allocation is registered as a root region. */
static inline void fuzz_scan_secure_heap(void)
{
    char line[512];
    void *p = CRYPTO_secure_malloc(1, __FILE__, __LINE__);
    FILE *f = fopen("/proc/self/maps", "r");
    int found = 0;
    if (p == NULL || f == NULL)
        fuzz_die("finding the secure heap");
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && (unsigned long)p >= lo &&
            (unsigned long)p < hi) {
            __lsan_register_root_region((void *)lo, hi - lo);
            found = 1;
        }
    }
    fclose(f);
    CRYPTO_secure_free(p, __FILE__, __LINE__);
    if (!found)
        fuzz_die("finding the secure heap");
}

/* One software engine for the whole run (no PKCS#11 token). */
static inline veil_engine *fuzz_engine(void)
{
    static veil_engine *e;
    if (e == NULL) {
        /* tss2-mu logs every unmarshaling refusal on stderr */
        setenv("TSS2_LOG", "all+NONE", 0);
        if (veil_engine_new(NULL, &e) != VEIL_OK)
            fuzz_die("engine");
        if (CRYPTO_secure_malloc_initialized())
            fuzz_scan_secure_heap();
    }
    return e;
}

/* A fuzzing-only key from the data directory ("server-key", "client-key"
 * hold NOMYO key directories). */
static inline veil_key *fuzz_key(const char *dirname)
{
    char path[4096], ref[4200];
    veil_key *k = NULL;
    fuzz_data_path(dirname, path, sizeof path);
    snprintf(ref, sizeof ref, "dir:%s", path);
    if (veil_key_open(fuzz_engine(), ref, &k) != VEIL_OK)
        fuzz_die(ref);
    return k;
}

#endif /* VEIL_FUZZ_H */
