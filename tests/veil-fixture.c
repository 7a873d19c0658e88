/* veil-fixture: the protocol test server (tests/fixture.h) as a program,
 * for the CLI tests and the client benchmark.
 *
 *   veil-fixture --port-file FILE [--tls-cert FILE --tls-key FILE]
 *                [--api-key-file FILE]
 *                [--server-key REF --pkcs11-module MODULE --pin-source SPEC]
 *                [--verbose]
 *
 * Listens on 127.0.0.1 on an ephemeral port and writes the port number and
 * a newline to FILE (atomically: FILE.tmp, then rename) once listening.
 * Without --server-key it generates a 2048-bit software RSA key.  Faults
 * are chosen by the request's model name (see fixture.h):
 * fixture/status-NNN, fixture/slow-MS, fixture/tamper-MODE,
 * fixture/retry-after-S, fixture/hostile-KIND.  Runs until SIGTERM or SIGINT, then stops the
 * daemon and exits 0.  Exit status 1: could not start; 2: usage.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fixture.h"
#include "veil/engine.h"

static const char usage[] =
    "usage: veil-fixture --port-file FILE [--tls-cert FILE --tls-key FILE]\n"
    "                    [--api-key-file FILE] [--server-key REF\n"
    "                    [--pkcs11-module MODULE] [--pin-source SPEC]]\n"
    "                    [--verbose]\n";

/* The whole file, NUL-terminated (malloc'd), or NULL with a message. */
static char *slurp(const char *path)
{
    FILE *fp = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0, n;

    if (fp == NULL) {
        fprintf(stderr, "veil-fixture: cannot open %s\n", path);
        return NULL;
    }
    for (;;) {
        if (cap - len < 4096) {
            char *b = realloc(buf, cap + 65536);

            if (b == NULL) {
                free(buf);
                fclose(fp);
                return NULL;
            }
            buf = b;
            cap += 65536;
        }
        n = fread(buf + len, 1, cap - len - 1, fp);
        len += n;
        if (n == 0)
            break;
    }
    if (ferror(fp)) {
        fprintf(stderr, "veil-fixture: cannot read %s\n", path);
        free(buf);
        fclose(fp);
        return NULL;
    }
    fclose(fp);
    buf[len] = '\0';
    return buf;
}

/* Writes "PORT\n" to path.tmp and renames it to path. */
static int write_port_file(const char *path, unsigned port)
{
    char tmp[4096];
    FILE *fp;

    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return -1;
    fp = fopen(tmp, "w");
    if (fp == NULL)
        return -1;
    if (fprintf(fp, "%u\n", port) < 0 || fflush(fp) != 0 ||
        fsync(fileno(fp)) != 0) {
        fclose(fp);
        unlink(tmp);
        return -1;
    }
    if (fclose(fp) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *port_file = NULL, *cert_file = NULL, *key_file = NULL;
    const char *api_file = NULL, *server_key = NULL, *module = NULL;
    const char *pin_spec = NULL;
    char *cert = NULL, *tls_key = NULL, *api_key = NULL;
    int verbose = 0, status = 1, sig = 0;
    veil_engine_config ecfg;
    veil_engine *e = NULL;
    veil_key *k = NULL;
    fx_config fcfg;
    fx_server *s = NULL;
    sigset_t set;

    for (int i = 1; i < argc; i++) {
        const char **slot = NULL;

        if (strcmp(argv[i], "--port-file") == 0)
            slot = &port_file;
        else if (strcmp(argv[i], "--tls-cert") == 0)
            slot = &cert_file;
        else if (strcmp(argv[i], "--tls-key") == 0)
            slot = &key_file;
        else if (strcmp(argv[i], "--api-key-file") == 0)
            slot = &api_file;
        else if (strcmp(argv[i], "--server-key") == 0)
            slot = &server_key;
        else if (strcmp(argv[i], "--pkcs11-module") == 0)
            slot = &module;
        else if (strcmp(argv[i], "--pin-source") == 0)
            slot = &pin_spec;
        else if (strcmp(argv[i], "--verbose") == 0) {
            verbose = 1;
            continue;
        } else if (strcmp(argv[i], "--help") == 0) {
            fputs(usage, stdout);
            return 0;
        }
        if (slot == NULL || i + 1 >= argc) {
            fprintf(stderr, "veil-fixture: bad argument %s\n%s", argv[i],
                    usage);
            return 2;
        }
        *slot = argv[++i];
    }
    if (port_file == NULL || (!cert_file != !key_file)) {
        fputs(usage, stderr);
        return 2;
    }

    /* Signals are taken with sigwait: block them before any thread starts,
     * so that the daemon's threads inherit the mask. */
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    memset(&ecfg, 0, sizeof ecfg);
    ecfg.pkcs11_module = module;
    if (pin_spec && veil_pin_source_parse(pin_spec, &ecfg.pin) != VEIL_OK) {
        fprintf(stderr, "veil-fixture: bad --pin-source: %s\n",
                veil_last_error()->message);
        return 2;
    }
    if (veil_engine_new(&ecfg, &e) != VEIL_OK) {
        fprintf(stderr, "veil-fixture: engine: %s\n",
                veil_last_error()->message);
        goto out;
    }
    if (server_key) {
        if (veil_key_open(e, server_key, &k) != VEIL_OK) {
            fprintf(stderr, "veil-fixture: server key: %s\n",
                    veil_last_error()->message);
            goto out;
        }
    } else {
        veil_keygen_params kp = {.type = VEIL_KEY_RSA, .bits = 2048};

        if (veil_key_generate(e, "software", &kp, &k) != VEIL_OK) {
            fprintf(stderr, "veil-fixture: key generation: %s\n",
                    veil_last_error()->message);
            goto out;
        }
    }
    if (cert_file && ((cert = slurp(cert_file)) == NULL ||
                      (tls_key = slurp(key_file)) == NULL))
        goto out;
    if (api_file) {
        if ((api_key = slurp(api_file)) == NULL)
            goto out;
        api_key[strcspn(api_key, "\r\n")] = '\0';
    }

    memset(&fcfg, 0, sizeof fcfg);
    fcfg.engine = e;
    fcfg.server_key = k;
    fcfg.api_key = api_key;
    fcfg.tls_cert_pem = cert;
    fcfg.tls_key_pem = tls_key;
    fcfg.verbose = verbose;
    if (fx_start(&fcfg, &s) != 0)
        goto out;
    if (write_port_file(port_file, fx_port(s)) != 0) {
        fprintf(stderr, "veil-fixture: cannot write %s\n", port_file);
        goto out;
    }
    if (verbose)
        fprintf(stderr, "veil-fixture: listening on %s\n", fx_url(s));
    while (sig != SIGTERM && sig != SIGINT)
        if (sigwait(&set, &sig) != 0)
            break;
    status = 0;
out:
    fx_stop(s);
    veil_key_free(k);
    veil_engine_free(e);
    free(cert);
    if (tls_key) {
        explicit_bzero(tls_key, strlen(tls_key));
        free(tls_key);
    }
    if (api_key) {
        explicit_bzero(api_key, strlen(api_key));
        free(api_key);
    }
    return status;
}
