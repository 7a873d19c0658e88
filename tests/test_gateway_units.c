/* The gateway's small modules, each on its own: the configuration (file,
 * flags, checks, the example file), API keys, the replay register, the
 * rate limiter and the store of answer signatures.
 *
 * Nothing here needs a token or a network.  Every time is an explicit value
 * handed to the module: no sleeps, no clocks.
 */
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <openssl/evp.h>

#include "backend.h"
#include "testutil.h"
#include "gateway.h"
#include "metrics.h"

static char scratch[512]; /* a fresh directory for the files of this run */
/* every name write_file is given, removed at the end */
static const char *const scratch_files[] = {"veild.conf", "nul.conf", "ww.conf",
                                            "keys"};

/* ==== helpers ============================================================= */

/* Writes text to scratch/name with mode; returns the path (static buffer,
 * one at a time) or NULL. */
static const char *write_file(const char *name, const char *text, mode_t mode)
{
    static char path[700];
    FILE *f;

    if (snprintf(path, sizeof path, "%s/%s", scratch, name) >= (int)sizeof path)
        return NULL;
    unlink(path);
    f = fopen(path, "w");
    if (!f)
        return NULL;
    fputs(text, f);
    if (fclose(f) != 0 || chmod(path, mode) != 0)
        return NULL;
    return path;
}

/* Loads text as a config file into a fresh cfg; returns what
 * gw_config_load returned (-99: no scratch file).  err gets the message. */
static int load_text(gw_config *cfg, const char *text, char *err, size_t size)
{
    const char *path = write_file("veild.conf", text, 0644);

    gw_config_init(cfg);
    err[0] = '\0';
    if (!path)
        return -99;
    return gw_config_load(cfg, path, err, size);
}

/* The part of a file error after "PATH:": "LINE: message". */
static const char *after_path(const char *err)
{
    const char *p = strstr(err, "veild.conf:");

    return p ? p + strlen("veild.conf:") : err;
}

/* 1 when text, loaded as a config file, fails with exactly "PATH:want". */
static int load_fails_with(const char *text, const char *want)
{
    gw_config cfg;
    char err[512];
    int rc = load_text(&cfg, text, err, sizeof err);
    int ok = rc == GW_REFUSED && strcmp(after_path(err), want) == 0;

    if (!ok)
        fprintf(stderr, "\n  config %s: got rc %d, '%s'; wanted '%s'\n", text,
                rc, err, want);
    gw_config_free(&cfg);
    return ok;
}

/* 1 when gw_config_set(name, value) fails with exactly want. */
static int set_fails_with(const char *name, const char *value, const char *want)
{
    gw_config cfg;
    char err[512] = "";
    int rc, ok;

    gw_config_init(&cfg);
    rc = gw_config_set(&cfg, name, value, err, sizeof err);
    ok = rc == -1 && (!want || strcmp(err, want) == 0);
    if (!ok)
        fprintf(stderr, "\n  --%s %s: got rc %d, '%s'; wanted '%s'\n", name,
                value ? value : "(null)", rc, err, want ? want : "(any)");
    gw_config_free(&cfg);
    return ok;
}

static int set_ok(gw_config *cfg, const char *name, const char *value)
{
    char err[512] = "";
    int rc = gw_config_set(cfg, name, value, err, sizeof err);

    if (rc != 0)
        fprintf(stderr, "\n  --%s %s: %s\n", name, value, err);
    return rc == 0;
}

static void sha256(const void *data, size_t len, uint8_t out[32])
{
    unsigned int n = 0;

    CU_ASSERT_FATAL(EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) == 1);
}

static void to_hex(const uint8_t *b, size_t n, char *out)
{
    static const char d[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[b[i] >> 4];
        out[2 * i + 1] = d[b[i] & 15];
    }
    out[2 * n] = '\0';
}

/* A distinct 32-byte mark for each (kind, n). */
static void mark(uint8_t out[32], int kind, unsigned n)
{
    memset(out, 0, 32);
    out[0] = (uint8_t)kind;
    memcpy(out + 1, &n, sizeof n);
}

/* ==== configuration ======================================================= */

static void test_config_defaults(void)
{
    gw_config cfg;
    char err[256];

    gw_config_init(&cfg);
    CU_ASSERT_STRING_EQUAL(cfg.listen_addr, "127.0.0.1");
    CU_ASSERT_EQUAL(cfg.port, 8443);
    CU_ASSERT_PTR_NULL(cfg.port_file);
    CU_ASSERT_PTR_NULL(cfg.tls_cert);
    CU_ASSERT_PTR_NULL(cfg.tls_key);
    CU_ASSERT_PTR_NULL(cfg.server_key);
    CU_ASSERT_PTR_NULL(cfg.pkcs11_module);
    CU_ASSERT_PTR_NULL(cfg.pin_source);
    CU_ASSERT_PTR_NULL(cfg.api_keys);
    CU_ASSERT_DOUBLE_EQUAL(cfg.rate, 1.0, 1e-12);
    CU_ASSERT_EQUAL(cfg.burst, 2);
    CU_ASSERT_EQUAL(cfg.body_limit, (size_t)16 * 1024 * 1024);
    CU_ASSERT_EQUAL(cfg.workers, 4);
    CU_ASSERT_STRING_EQUAL(cfg.state_dir, "/var/lib/veild");
    CU_ASSERT_EQUAL(cfg.replay_window, 86400);
    CU_ASSERT_EQUAL(cfg.replay_capacity, 4194304);
    CU_ASSERT_EQUAL(cfg.replay_sync, 1);
    CU_ASSERT_EQUAL(cfg.upstream_timeout, 300);
    CU_ASSERT_EQUAL(cfg.connect_timeout, 10);
    CU_ASSERT_STRING_EQUAL(cfg.log_level, "info");
    CU_ASSERT_PTR_NULL(cfg.signing_key);
    CU_ASSERT_EQUAL(cfg.signature_retention, 86400);
    CU_ASSERT_EQUAL(cfg.signature_capacity, 65536);
    CU_ASSERT_EQUAL(cfg.tpm, 0);
    CU_ASSERT_PTR_NULL(cfg.tpm_tcti);
    CU_ASSERT_STRING_EQUAL(cfg.tpm_pcrs, "sha256:0,7,10");
    CU_ASSERT_EQUAL(cfg.tpm_ak_per_request, 0);
    CU_ASSERT_PTR_NULL(cfg.tpm_certify_key);
    CU_ASSERT_PTR_NULL(cfg.tpm_certify_key_auth);
    CU_ASSERT_EQUAL(cfg.n_models, 0);
    /* not usable as it is: no server key, no model */
    CU_ASSERT_EQUAL(gw_config_check(&cfg, err, sizeof err), -1);
    gw_config_free(&cfg);
    gw_config_free(&cfg); /* a freed config is an empty one */
}

static void test_config_every_setting(void)
{
    static const char text[] =
        "listen = ::1\n"
        "port = 0\n"
        "port_file = /run/veild.port\n"
        "tls_cert = /etc/veil/cert.pem\n"
        "tls_key = /etc/veil/key.pem\n"
        "server_key = pkcs11:token=veil;object=server\n"
        "pkcs11_module = /usr/lib/softhsm/libsofthsm2.so\n"
        "pin_source = env:VEIL_PIN\n"
        "api_keys = /etc/veil/api-keys\n"
        "rate = 0.5\n"
        "burst = 7\n"
        "body_limit = 2M\n"
        "workers = 256\n"
        "replay_window = 30\n"
        "replay_capacity = 1024\n"
        "upstream_timeout = 60\n"
        "connect_timeout = 3\n"
        "log_level = debug\n"
        "signing_key = pkcs11:token=veil;object=signer\n"
        "signature_retention = 3600\n"
        "signature_capacity = 100\n"
        "tpm = on\n"
        "tpm_tcti = swtpm:host=127.0.0.1,port=2321\n"
        "tpm_pcrs = sha256:10,0,7,1\n"
        "tpm_ak_per_request = yes\n"
        "tpm_certify_key = /etc/veil/server.tss2.pem\n"
        "tpm_certify_key_auth = file:/etc/veil/server.auth\n"
        "tpm_remote_https = on\n"
        "metrics_listen = 127.0.0.2\n"
        "metrics_port = 9100\n"
        "audit_log = /var/log/veild/audit.log\n"
        "audit_fsync = on\n"
        "model = a/b=echo\n"
        "model = c=https://llm.example:8443/v1/,tiers=high+maximum,"
        "key-file=/etc/veil/c.key\n";
    gw_config cfg;
    char err[512];

    CU_ASSERT_EQUAL_FATAL(load_text(&cfg, text, err, sizeof err), GW_OK);
    CU_ASSERT_STRING_EQUAL(cfg.listen_addr, "::1");
    CU_ASSERT_EQUAL(cfg.port, 0);
    CU_ASSERT_STRING_EQUAL(cfg.port_file, "/run/veild.port");
    CU_ASSERT_STRING_EQUAL(cfg.tls_cert, "/etc/veil/cert.pem");
    CU_ASSERT_STRING_EQUAL(cfg.tls_key, "/etc/veil/key.pem");
    CU_ASSERT_STRING_EQUAL(cfg.server_key, "pkcs11:token=veil;object=server");
    CU_ASSERT_STRING_EQUAL(cfg.pkcs11_module,
                           "/usr/lib/softhsm/libsofthsm2.so");
    CU_ASSERT_STRING_EQUAL(cfg.pin_source, "env:VEIL_PIN");
    CU_ASSERT_STRING_EQUAL(cfg.api_keys, "/etc/veil/api-keys");
    CU_ASSERT_DOUBLE_EQUAL(cfg.rate, 0.5, 1e-12);
    CU_ASSERT_EQUAL(cfg.burst, 7);
    CU_ASSERT_EQUAL(cfg.body_limit, (size_t)2 * 1024 * 1024);
    CU_ASSERT_EQUAL(cfg.workers, 256);
    CU_ASSERT_EQUAL(cfg.replay_window, 30);
    CU_ASSERT_EQUAL(cfg.replay_capacity, 1024);
    CU_ASSERT_EQUAL(cfg.upstream_timeout, 60);
    CU_ASSERT_EQUAL(cfg.connect_timeout, 3);
    CU_ASSERT_STRING_EQUAL(cfg.log_level, "debug");
    CU_ASSERT_STRING_EQUAL(cfg.signing_key, "pkcs11:token=veil;object=signer");
    CU_ASSERT_EQUAL(cfg.signature_retention, 3600);
    CU_ASSERT_EQUAL(cfg.signature_capacity, 100);
    CU_ASSERT_EQUAL(cfg.tpm, 1);
    CU_ASSERT_STRING_EQUAL(cfg.tpm_tcti, "swtpm:host=127.0.0.1,port=2321");
    /* kept in canonical form, as the evidence carries it */
    CU_ASSERT_STRING_EQUAL(cfg.tpm_pcrs, "sha256:0,1,7,10");
    CU_ASSERT_EQUAL(cfg.tpm_ak_per_request, 1);
    CU_ASSERT_STRING_EQUAL(cfg.tpm_certify_key, "/etc/veil/server.tss2.pem");
    CU_ASSERT_STRING_EQUAL(cfg.tpm_certify_key_auth,
                           "file:/etc/veil/server.auth");
    CU_ASSERT_EQUAL(cfg.tpm_remote_https, 1);
    CU_ASSERT_STRING_EQUAL(cfg.metrics_listen, "127.0.0.2");
    CU_ASSERT_EQUAL(cfg.metrics_port, 9100);
    CU_ASSERT_STRING_EQUAL(cfg.audit_log, "/var/log/veild/audit.log");
    CU_ASSERT_EQUAL(cfg.audit_fsync, 1);
    CU_ASSERT_EQUAL_FATAL(cfg.n_models, 2);
    CU_ASSERT_STRING_EQUAL(cfg.models[0].id, "a/b");
    CU_ASSERT_STRING_EQUAL(cfg.models[0].upstream, "echo");
    CU_ASSERT_PTR_NULL(cfg.models[0].upstream_key_file);
    CU_ASSERT_EQUAL(cfg.models[0].tiers, GW_TIER_ALL);
    CU_ASSERT_STRING_EQUAL(cfg.models[1].id, "c");
    /* the trailing '/' is dropped */
    CU_ASSERT_STRING_EQUAL(cfg.models[1].upstream,
                           "https://llm.example:8443/v1");
    CU_ASSERT_STRING_EQUAL(cfg.models[1].upstream_key_file, "/etc/veil/c.key");
    CU_ASSERT_EQUAL(cfg.models[1].tiers, GW_TIER_HIGH | GW_TIER_MAXIMUM);
    CU_ASSERT_EQUAL(gw_config_check(&cfg, err, sizeof err), 0);
    gw_config_free(&cfg);
}

static void test_config_sections_comments(void)
{
    static const char text[] = "# a comment\n"
                               "\n"
                               "   # an indented comment\n"
                               "  port=9000  \r\n"
                               "\tserver-key = dir:/var/lib/veil/keys\n"
                               "log-level=warn\n"
                               "\n"
                               "[model Qwen/Qwen3-0.6B]\n"
                               "upstream = http://127.0.0.1:8080/v1\n"
                               "# comments inside a section\n"
                               "tiers = standard, high\n"
                               "\n"
                               "[ model   llama3.2:3b ]\n"
                               "upstream-key-file = /etc/veil/ollama key\n"
                               "upstream = http://127.0.0.1:11434/v1\n"
                               "[model echo-1]\n"
                               "upstream = echo\n"
                               "tiers = maximum";
    gw_config cfg;
    char err[512];
    const gw_model *m;

    CU_ASSERT_EQUAL_FATAL(load_text(&cfg, text, err, sizeof err), GW_OK);
    CU_ASSERT_EQUAL(cfg.port, 9000);
    CU_ASSERT_STRING_EQUAL(cfg.server_key, "dir:/var/lib/veil/keys");
    CU_ASSERT_STRING_EQUAL(cfg.log_level, "warn");
    CU_ASSERT_EQUAL_FATAL(cfg.n_models, 3);
    m = gw_config_model(&cfg, "Qwen/Qwen3-0.6B");
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    CU_ASSERT_STRING_EQUAL(m->upstream, "http://127.0.0.1:8080/v1");
    CU_ASSERT_EQUAL(m->tiers, GW_TIER_STANDARD | GW_TIER_HIGH);
    CU_ASSERT_PTR_NULL(m->upstream_key_file);
    m = gw_config_model(&cfg, "llama3.2:3b");
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    CU_ASSERT_STRING_EQUAL(m->upstream, "http://127.0.0.1:11434/v1");
    CU_ASSERT_STRING_EQUAL(m->upstream_key_file, "/etc/veil/ollama key");
    CU_ASSERT_EQUAL(m->tiers, GW_TIER_ALL);
    m = gw_config_model(&cfg, "echo-1");
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    CU_ASSERT_STRING_EQUAL(m->upstream, "echo");
    CU_ASSERT_EQUAL(m->tiers, GW_TIER_MAXIMUM);
    /* exact IDs only */
    CU_ASSERT_PTR_NULL(gw_config_model(&cfg, "qwen/qwen3-0.6b"));
    CU_ASSERT_PTR_NULL(gw_config_model(&cfg, "Qwen/Qwen3"));
    CU_ASSERT_PTR_NULL(gw_config_model(&cfg, "Qwen/Qwen3-0.6B "));
    CU_ASSERT_PTR_NULL(gw_config_model(&cfg, NULL));
    CU_ASSERT_EQUAL(gw_config_check(&cfg, err, sizeof err), 0);
    /* flags after the file: override settings, add models */
    CU_ASSERT_TRUE(set_ok(&cfg, "port", "9001"));
    CU_ASSERT_TRUE(set_ok(&cfg, "model", "extra=echo"));
    CU_ASSERT_EQUAL(cfg.port, 9001);
    CU_ASSERT_EQUAL(cfg.n_models, 4);
    gw_config_free(&cfg);

    /* a later line overrides an earlier one */
    CU_ASSERT_EQUAL_FATAL(
        load_text(&cfg, "workers = 2\nworkers = 3\n", err, sizeof err), GW_OK);
    CU_ASSERT_EQUAL(cfg.workers, 3);
    gw_config_free(&cfg);

    /* an empty file is a valid (if useless) one */
    CU_ASSERT_EQUAL(load_text(&cfg, "", err, sizeof err), GW_OK);
    gw_config_free(&cfg);
}

static void test_config_file_errors(void)
{
    gw_config cfg;
    char err[512];

    CU_ASSERT_TRUE(load_fails_with("port = 1\n\n# c\nprot = 2\n",
                                   "4: unknown setting 'prot'"));
    CU_ASSERT_TRUE(load_fails_with("port 8443\n", "1: expected NAME = VALUE"));
    CU_ASSERT_TRUE(load_fails_with("= 8443\n", "1: expected NAME = VALUE"));
    CU_ASSERT_TRUE(load_fails_with("\n\nport =\n", "3: port: needs a value"));
    CU_ASSERT_TRUE(load_fails_with(
        "#\nport = 70000\n", "2: port: '70000' is not a port (1-65535, or 0)"));
    /* a '#' after a blank starts a comment */
    CU_ASSERT_EQUAL(load_text(&cfg, "port = 8443 # https\n", err, sizeof err),
                    GW_OK);
    CU_ASSERT_EQUAL(cfg.port, 8443);
    gw_config_free(&cfg);
    /* every problem of a file at once, one a line, none cascading */
    {
        char all[1024];
        const char *nl;

        CU_ASSERT_EQUAL(load_text(&cfg,
                                  "rate = abc\n[model a]\nupstream = ftp://x\n"
                                  "[model b]\nupstream = echo\nworkers = 0\n",
                                  all, sizeof all),
                        GW_REFUSED);
        nl = strchr(all, '\n');
        CU_ASSERT_PTR_NOT_NULL(strstr(all, "veild.conf:1: rate: 'abc'"));
        CU_ASSERT_PTR_NOT_NULL(strstr(all, "veild.conf:3: 'ftp://x'"));
        CU_ASSERT_PTR_NOT_NULL(strstr(all, "veild.conf:6: "));
        CU_ASSERT_PTR_NULL(strstr(all, "has no upstream")); /* no cascade */
        CU_ASSERT_PTR_NOT_NULL(nl);
        gw_config_free(&cfg);
    }
    CU_ASSERT_TRUE(load_fails_with(
        "workers = 0\n", "1: workers: '0' is not a whole number from 1 to "
                         "256"));
    CU_ASSERT_TRUE(load_fails_with(
        "log_level = loud\n",
        "1: log_level: 'loud' is not a log level (error, warn, info, "
        "debug)"));
    CU_ASSERT_TRUE(load_fails_with(
        "upstream = echo\n", "1: 'upstream' belongs in a [model ID] section "
                             "(or use model = ID=UPSTREAM)"));
    CU_ASSERT_TRUE(load_fails_with(
        "[server]\n", "1: unknown section '[server]' (expected [model ID])"));
    CU_ASSERT_TRUE(load_fails_with("[model]\n",
                                   "1: [model] needs a model ID: [model ID]"));
    CU_ASSERT_TRUE(
        load_fails_with("[model a\n", "1: a section header ends with ']'"));
    CU_ASSERT_TRUE(load_fails_with(
        "[model a b]\n", "1: 'a b' is not a model ID (letters, digits and "
                         ". _ - : / @ +; at most 200)"));
    CU_ASSERT_TRUE(load_fails_with("\n[model a]\ntiers = high\n",
                                   "2: [model a] has no upstream"));
    CU_ASSERT_TRUE(
        load_fails_with("[model a]\ntiers = high\n[model b]\nupstream = echo\n",
                        "1: [model a] has no upstream"));
    CU_ASSERT_TRUE(load_fails_with(
        "[model a]\nupstream = echo\nport = 1\n",
        "3: 'port' is a global setting: put it before the first [model] "
        "section"));
    CU_ASSERT_TRUE(
        load_fails_with("[model a]\nupstream = echo\ncolour = red\n",
                        "3: unknown setting 'colour' in [model a] (upstream, "
                        "upstream_key_file, tiers, cache_salt_field)"));
    CU_ASSERT_TRUE(load_fails_with(
        "[model a]\nupstream = ftp://x\n",
        "2: 'ftp://x' is not an upstream (echo, unix:/PATH, or an http:// "
        "or https:// base URL such as http://127.0.0.1:8080/v1)"));
    CU_ASSERT_TRUE(
        load_fails_with("[model a]\nupstream = echo\ntiers = standard,ultra\n",
                        "3: 'ultra' is not a tier (standard, high, maximum)"));
    CU_ASSERT_TRUE(load_fails_with(
        "[model a]\nupstream = echo\ntiers = standard,\n",
        "3: 'standard,' is not a list of tiers (standard, high, maximum)"));
    CU_ASSERT_TRUE(load_fails_with(
        "[model a]\nupstream = echo\n[model a]\nupstream = echo\n",
        "3: model 'a' is configured twice"));
    CU_ASSERT_TRUE(load_fails_with("model = a=echo\nmodel = a=echo\n",
                                   "2: model: model 'a' is configured twice"));
    CU_ASSERT_TRUE(
        load_fails_with("pin_source = 123456\n",
                        "1: pin_source: must be file:PATH, credential:NAME, "
                        "env:NAME, prompt or none (a PIN "
                        "itself is never accepted)"));

    /* a line too long, and a NUL byte */
    {
        char big[5000];

        memset(big, 'x', sizeof big - 1);
        memcpy(big, "api_keys=", 9);
        big[sizeof big - 1] = '\0';
        CU_ASSERT_TRUE(
            load_fails_with(big, "1: line too long (at most 4096 bytes)"));
    }
    {
        const char *path = write_file("nul.conf", "", 0644);
        FILE *f = path ? fopen(path, "w") : NULL;

        CU_ASSERT_PTR_NOT_NULL_FATAL(f);
        fwrite("port = 1\nport\0 = 2\n", 1, 19, f);
        fclose(f);
        gw_config_init(&cfg);
        CU_ASSERT_EQUAL(gw_config_load(&cfg, path, err, sizeof err),
                        GW_REFUSED);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, "nul.conf:2: contains a NUL byte"));
        gw_config_free(&cfg);
    }

    /* the whole message names the file */
    CU_ASSERT_EQUAL(load_text(&cfg, "prot = 1\n", err, sizeof err), GW_REFUSED);
    {
        char want[700];

        snprintf(want, sizeof want, "%s/veild.conf:1: unknown setting 'prot'",
                 scratch);
        CU_ASSERT_STRING_EQUAL(err, want);
    }
    gw_config_free(&cfg);

    /* a missing file, a directory, a world-writable file */
    gw_config_init(&cfg);
    CU_ASSERT_EQUAL(
        gw_config_load(&cfg, "/nonexistent/veild.conf", err, sizeof err),
        GW_REFUSED);
    CU_ASSERT_STRING_EQUAL(
        err, "/nonexistent/veild.conf: No such file or directory");
    CU_ASSERT_EQUAL(gw_config_load(&cfg, scratch, err, sizeof err), GW_REFUSED);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "not a regular file"));
    CU_ASSERT_PTR_NOT_NULL_FATAL(write_file("ww.conf", "port = 1\n", 0666));
    CU_ASSERT_EQUAL(gw_config_load(&cfg,
                                   write_file("ww.conf", "port = 1\n", 0666),
                                   err, sizeof err),
                    GW_REFUSED);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "ww.conf: writable by others"));
    CU_ASSERT_EQUAL(cfg.port, 8443);
    gw_config_free(&cfg);
}

static void test_config_sizes(void)
{
    static const struct {
        const char *v;
        size_t want; /* 0: refused */
    } cases[] = {
        {"16M", 16u << 20},
        {"16m", 16u << 20},
        {"1K", 1024},
        {"1k", 1024},
        {"1024", 1024},
        {"1G", 1u << 30},
        {"1048576", 1u << 20},
        {"1023", 0},
        {"0K", 0},
        {"2G", 0},
        {"1025M", 0},
        {"1T", 0},
        {"16MB", 0},
        {"16 M", 0},
        {"M", 0},
        {"-1K", 0},
        {"1.5M", 0},
        {"0x400", 0},
        {" 1024", 0},
        {"99999999999999999999999K", 0},
    };
    gw_config cfg;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gw_config_init(&cfg);
        if (cases[i].want) {
            CU_ASSERT_TRUE(set_ok(&cfg, "body_limit", cases[i].v));
            CU_ASSERT_EQUAL(cfg.body_limit, cases[i].want);
        } else {
            char want[256];

            snprintf(want, sizeof want,
                     "--body-limit: '%s' is not a size from 1K to 1G (bytes, "
                     "or with a suffix K, M or G)",
                     cases[i].v);
            CU_ASSERT_TRUE(set_fails_with("body_limit", cases[i].v, want));
        }
        gw_config_free(&cfg);
    }
}

static void test_config_numbers(void)
{
    gw_config cfg;

    /* ports */
    CU_ASSERT_TRUE(set_fails_with(
        "port", "70000", "--port: '70000' is not a port (1-65535, or 0)"));
    CU_ASSERT_TRUE(set_fails_with(
        "port", "-1", "--port: '-1' is not a port (1-65535, or 0)"));
    CU_ASSERT_TRUE(set_fails_with("port", "8443x", NULL));
    CU_ASSERT_TRUE(set_fails_with("port", " 80", NULL));
    CU_ASSERT_TRUE(set_fails_with("port", "0x50", NULL));
    CU_ASSERT_TRUE(set_fails_with("port", "+80", NULL));
    CU_ASSERT_TRUE(set_fails_with("port", "", "--port: needs a value"));
    CU_ASSERT_TRUE(set_fails_with("port", NULL, "--port: needs a value"));
    CU_ASSERT_TRUE(set_fails_with("port", "18446744073709551617", NULL));
    gw_config_init(&cfg);
    CU_ASSERT_TRUE(set_ok(&cfg, "port", "65535"));
    CU_ASSERT_EQUAL(cfg.port, 65535);
    CU_ASSERT_TRUE(set_ok(&cfg, "port", "0"));
    CU_ASSERT_EQUAL(cfg.port, 0);
    gw_config_free(&cfg);

    /* whole numbers with ranges: both ends */
    CU_ASSERT_TRUE(
        set_fails_with("workers", "257",
                       "--workers: '257' is not a whole number from 1 to "
                       "256"));
    CU_ASSERT_TRUE(set_fails_with("workers", "0", NULL));
    CU_ASSERT_TRUE(set_fails_with("workers", "four", NULL));
    CU_ASSERT_TRUE(set_fails_with("burst", "0", NULL));
    CU_ASSERT_TRUE(set_fails_with(
        "replay_capacity", "1023",
        "--replay-capacity: '1023' is not a whole number from 1024 to "
        "16777216"));
    CU_ASSERT_TRUE(set_fails_with("replay_window", "0", NULL));
    CU_ASSERT_TRUE(set_fails_with("upstream_timeout", "0", NULL));
    CU_ASSERT_TRUE(set_fails_with("connect_timeout", "1.5", NULL));
    gw_config_init(&cfg);
    CU_ASSERT_TRUE(set_ok(&cfg, "workers", "1"));
    CU_ASSERT_TRUE(set_ok(&cfg, "burst", "1"));
    CU_ASSERT_TRUE(set_ok(&cfg, "replay_capacity", "16777216"));
    CU_ASSERT_EQUAL(cfg.workers, 1);
    CU_ASSERT_EQUAL(cfg.burst, 1);
    CU_ASSERT_EQUAL(cfg.replay_capacity, 16777216);
    gw_config_free(&cfg);

    /* rates: positive decimals only */
    gw_config_init(&cfg);
    CU_ASSERT_TRUE(set_ok(&cfg, "rate", "2"));
    CU_ASSERT_DOUBLE_EQUAL(cfg.rate, 2.0, 1e-12);
    CU_ASSERT_TRUE(set_ok(&cfg, "rate", ".25"));
    CU_ASSERT_DOUBLE_EQUAL(cfg.rate, 0.25, 1e-12);
    CU_ASSERT_TRUE(set_ok(&cfg, "rate", "1e3"));
    CU_ASSERT_DOUBLE_EQUAL(cfg.rate, 1000.0, 1e-9);
    gw_config_free(&cfg);
    CU_ASSERT_TRUE(
        set_fails_with("rate", "0",
                       "--rate: '0' is not a rate (requests per second: a "
                       "number above 0, at most 1000000)"));
    CU_ASSERT_TRUE(set_fails_with("rate", "-1", NULL));
    CU_ASSERT_TRUE(set_fails_with("rate", "nan", NULL));
    CU_ASSERT_TRUE(set_fails_with("rate", "inf", NULL));
    CU_ASSERT_TRUE(set_fails_with("rate", "0x10", NULL));
    CU_ASSERT_TRUE(set_fails_with("rate", "1/s", NULL));
    CU_ASSERT_TRUE(set_fails_with("rate", "1e400", NULL));
    CU_ASSERT_TRUE(set_fails_with("rate", "2000000", NULL));

    /* other checked values */
    CU_ASSERT_TRUE(set_fails_with(
        "listen", "localhost",
        "--listen: 'localhost' is not an IP address (such as 127.0.0.1, ::1, "
        "0.0.0.0)"));
    CU_ASSERT_TRUE(set_fails_with("log_level", "INFO", NULL));
    CU_ASSERT_TRUE(set_fails_with("server_key", "server",
                                  "--server-key: must be a pkcs11: URI or "
                                  "dir:PATH"));
    CU_ASSERT_TRUE(set_fails_with("server_key", "pkcs11:", NULL));
    /* a PIN is never repeated in a message */
    CU_ASSERT_TRUE(set_fails_with(
        "server_key", "pkcs11:token=veil;object=s?pin-value=4711",
        "--server-key: a PIN in the URI (pin-value) is refused; use "
        "pin_source"));
    CU_ASSERT_TRUE(
        set_fails_with("pin_source", "4711",
                       "--pin-source: must be file:PATH, credential:NAME, "
                       "env:NAME, prompt or none (a PIN "
                       "itself is never accepted)"));
    CU_ASSERT_TRUE(set_fails_with("pin_source", "file:", NULL));
    gw_config_init(&cfg);
    CU_ASSERT_TRUE(set_ok(&cfg, "pin_source", "prompt"));
    CU_ASSERT_TRUE(set_ok(&cfg, "pin_source", "file:/etc/veil/pin"));
    CU_ASSERT_TRUE(set_ok(&cfg, "listen", "0.0.0.0"));
    CU_ASSERT_STRING_EQUAL(cfg.pin_source, "file:/etc/veil/pin");
    CU_ASSERT_STRING_EQUAL(cfg.listen_addr, "0.0.0.0");
    gw_config_free(&cfg);
}

static void test_config_flags(void)
{
    gw_config cfg;

    gw_config_init(&cfg);
    CU_ASSERT_TRUE(set_ok(&cfg, "body-limit", "1M"));
    CU_ASSERT_EQUAL(cfg.body_limit, (size_t)1 << 20);
    CU_ASSERT_TRUE(set_ok(&cfg, "body_limit", "2M"));
    CU_ASSERT_EQUAL(cfg.body_limit, (size_t)2 << 20);
    CU_ASSERT_TRUE(set_ok(&cfg, "--replay-window", "60"));
    CU_ASSERT_EQUAL(cfg.replay_window, 60);
    CU_ASSERT_TRUE(set_ok(&cfg, "server-key", "dir:/tmp/k"));
    CU_ASSERT_TRUE(set_ok(&cfg, "pin-source", "env:PIN"));
    CU_ASSERT_TRUE(set_ok(&cfg, "api-keys", "/etc/veil/keys"));
    CU_ASSERT_TRUE(set_ok(&cfg, "tls-cert", "c.pem"));
    CU_ASSERT_TRUE(set_ok(&cfg, "tls_key", "k.pem"));
    CU_ASSERT_TRUE(set_ok(&cfg, "port-file", "p"));
    CU_ASSERT_TRUE(set_ok(&cfg, "pkcs11-module", "softhsm2"));
    CU_ASSERT_TRUE(set_ok(&cfg, "upstream-timeout", "5"));
    CU_ASSERT_TRUE(set_ok(&cfg, "connect-timeout", "2"));
    CU_ASSERT_TRUE(set_ok(&cfg, "log-level", "error"));
    CU_ASSERT_TRUE(set_ok(&cfg, "replay-capacity", "2048"));
    /* strings set twice: the second wins, nothing leaks */
    CU_ASSERT_TRUE(set_ok(&cfg, "tls_cert", "cert.pem"));
    CU_ASSERT_STRING_EQUAL(cfg.tls_cert, "cert.pem");
    CU_ASSERT_STRING_EQUAL(cfg.server_key, "dir:/tmp/k");
    CU_ASSERT_STRING_EQUAL(cfg.pkcs11_module, "softhsm2");
    CU_ASSERT_EQUAL(cfg.upstream_timeout, 5);
    CU_ASSERT_EQUAL(cfg.connect_timeout, 2);
    CU_ASSERT_STRING_EQUAL(cfg.log_level, "error");
    CU_ASSERT_EQUAL(cfg.replay_capacity, 2048);
    gw_config_free(&cfg);

    CU_ASSERT_TRUE(set_fails_with(
        "prot", "1", "unknown option '--prot' (veild --help lists them)"));
    CU_ASSERT_TRUE(set_fails_with(
        "--prot", "1", "unknown option '--prot' (veild --help lists them)"));
    CU_ASSERT_TRUE(set_fails_with("body--limit", "1M", NULL));
    CU_ASSERT_TRUE(set_fails_with("upstream", "echo", NULL));
    CU_ASSERT_TRUE(
        set_fails_with("body-limit", "1",
                       "--body-limit: '1' is not a size from 1K to 1G "
                       "(bytes, or with a suffix K, M or G)"));
}

static void test_config_model_flag(void)
{
    gw_config cfg;

    gw_config_init(&cfg);
    CU_ASSERT_TRUE(set_ok(&cfg, "model", "Qwen/Qwen3-0.6B=echo"));
    CU_ASSERT_TRUE(set_ok(&cfg, "model",
                          "m2=http://127.0.0.1:8080/v1/,tiers=standard+high,"
                          "key-file=/etc/veil/m2.key"));
    CU_ASSERT_TRUE(
        set_ok(&cfg, "model", "m3=https://h/v1,key_file=k,tiers=maximum"));
    CU_ASSERT_TRUE(set_ok(&cfg, "model", "user@org/x.y_z+1=echo,tiers=high"));
    CU_ASSERT_TRUE(set_ok(&cfg, "model", "u=unix:/run/llama.sock"));
    CU_ASSERT_EQUAL_FATAL(cfg.n_models, 5);
    CU_ASSERT_STRING_EQUAL(cfg.models[4].upstream, "unix:/run/llama.sock");
    CU_ASSERT_STRING_EQUAL(cfg.models[0].id, "Qwen/Qwen3-0.6B");
    CU_ASSERT_STRING_EQUAL(cfg.models[0].upstream, "echo");
    CU_ASSERT_EQUAL(cfg.models[0].tiers, GW_TIER_ALL);
    CU_ASSERT_PTR_NULL(cfg.models[0].upstream_key_file);
    CU_ASSERT_STRING_EQUAL(cfg.models[1].upstream, "http://127.0.0.1:8080/v1");
    CU_ASSERT_EQUAL(cfg.models[1].tiers, GW_TIER_STANDARD | GW_TIER_HIGH);
    CU_ASSERT_STRING_EQUAL(cfg.models[1].upstream_key_file, "/etc/veil/m2.key");
    CU_ASSERT_STRING_EQUAL(cfg.models[2].upstream, "https://h/v1");
    CU_ASSERT_STRING_EQUAL(cfg.models[2].upstream_key_file, "k");
    CU_ASSERT_EQUAL(cfg.models[2].tiers, GW_TIER_MAXIMUM);
    CU_ASSERT_EQUAL(cfg.models[3].tiers, GW_TIER_HIGH);
    CU_ASSERT_PTR_NOT_NULL(gw_config_model(&cfg, "user@org/x.y_z+1"));
    /* a refused model leaves the list as it was */
    CU_ASSERT_EQUAL(gw_config_set(&cfg, "model", "m2=echo", NULL, 0), -1);
    CU_ASSERT_EQUAL(gw_config_set(&cfg, "model", "m5=echo,tiers=gold", NULL, 0),
                    -1);
    CU_ASSERT_EQUAL(cfg.n_models, 5);
    gw_config_free(&cfg);

    CU_ASSERT_TRUE(set_fails_with(
        "model", "noequals",
        "--model: expected ID=UPSTREAM[,tiers=A+B][,key-file=FILE]"));
    CU_ASSERT_TRUE(
        set_fails_with("model", "=echo",
                       "--model: '' is not a model ID (letters, digits and "
                       ". _ - : / @ +; at most 200)"));
    CU_ASSERT_TRUE(
        set_fails_with("model", "x=",
                       "--model: '' is not an upstream (echo, unix:/PATH, or "
                       "an http:// or https:// base URL such as "
                       "http://127.0.0.1:8080/v1)"));
    CU_ASSERT_TRUE(set_fails_with("model", "x=ftp://h/v1", NULL));
    CU_ASSERT_TRUE(set_fails_with("model", "x=http://", NULL));
    CU_ASSERT_TRUE(set_fails_with("model", "x=http:///v1", NULL));
    CU_ASSERT_TRUE(set_fails_with("model", "x=http://h/ v1", NULL));
    CU_ASSERT_TRUE(set_fails_with("model", "x=ECHO", NULL));
    /* a Unix socket: an absolute path that fits sockaddr_un */
    CU_ASSERT_TRUE(set_fails_with(
        "model", "x=unix:run/llama.sock",
        "--model: 'unix:run/llama.sock' is not a Unix socket upstream (unix: "
        "and an absolute path of at most 107 characters, no spaces, such as "
        "unix:/run/llama.sock)"));
    CU_ASSERT_TRUE(set_fails_with("model", "x=unix:", NULL));
    CU_ASSERT_TRUE(set_fails_with("model", "x=unix:/", NULL));
    {
        char spec[160];

        snprintf(spec, sizeof spec, "x=unix:/%0107d", 0);
        CU_ASSERT_TRUE(set_fails_with("model", spec, NULL));
    }
    CU_ASSERT_TRUE(set_fails_with(
        "model", "x=echo,tiers=",
        "--model: unknown model option 'tiers=' (tiers=A+B, key-file=FILE, "
        "cache-salt=FIELD)"));
    CU_ASSERT_TRUE(set_fails_with(
        "model", "x=echo,tiers=ultra",
        "--model: 'ultra' is not a tier (standard, high, maximum)"));
    CU_ASSERT_TRUE(set_fails_with("model", "x=echo,tiers=high+", NULL));
    CU_ASSERT_TRUE(
        set_fails_with("model", "x=echo,colour=red",
                       "--model: unknown model option 'colour=red' (tiers=A+B, "
                       "key-file=FILE, cache-salt=FIELD)"));
    CU_ASSERT_TRUE(set_fails_with("model", "x=echo,cache-salt=a b",
                                  "--model: cache_salt_field: 1 to 64 of "
                                  "A-Z a-z 0-9 _ . - (such as cache_salt)"));
    CU_ASSERT_TRUE(set_fails_with("model", "x=echo,cache-salt=a\"b", NULL));
    CU_ASSERT_TRUE(set_fails_with("model", "x=echo,", NULL));
    CU_ASSERT_TRUE(set_fails_with("model", "bad id=echo", NULL));
    CU_ASSERT_TRUE(set_fails_with("model", "a,b=echo", NULL));

    /* at most GW_MAX_MODELS */
    gw_config_init(&cfg);
    for (int i = 0; i < GW_MAX_MODELS; i++) {
        char spec[32];

        snprintf(spec, sizeof spec, "m%d=echo", i);
        CU_ASSERT_TRUE(set_ok(&cfg, "model", spec));
    }
    {
        char err[256];

        CU_ASSERT_EQUAL(
            gw_config_set(&cfg, "model", "one-more=echo", err, sizeof err), -1);
        CU_ASSERT_STRING_EQUAL(err, "--model: too many models (at most 64)");
    }
    CU_ASSERT_EQUAL(cfg.n_models, GW_MAX_MODELS);
    gw_config_free(&cfg);
}

/* check() on cfg after a few flags; returns 1 when the message is want. */
static int check_says(gw_config *cfg, const char *want)
{
    char err[512] = "";
    int rc = gw_config_check(cfg, err, sizeof err);
    int ok = want ? rc == -1 && strcmp(err, want) == 0 : rc == 0;

    if (!ok)
        fprintf(stderr, "\n  check: rc %d '%s', wanted '%s'\n", rc, err,
                want ? want : "(success)");
    return ok;
}

static void test_config_check(void)
{
    gw_config cfg;

    gw_config_init(&cfg);
    CU_ASSERT_TRUE(
        check_says(&cfg, "server_key is not set (a pkcs11: URI, or dir:PATH)"));
    CU_ASSERT_TRUE(set_ok(&cfg, "server_key", "pkcs11:token=veil;object=s"));
    CU_ASSERT_TRUE(check_says(&cfg, "no model configured (model = "
                                    "ID=UPSTREAM, or a [model ID] section)"));
    CU_ASSERT_TRUE(set_ok(&cfg, "model", "m=echo"));
    CU_ASSERT_TRUE(check_says(&cfg, NULL));
    CU_ASSERT_TRUE(set_ok(&cfg, "tls_cert", "c.pem"));
    CU_ASSERT_TRUE(check_says(
        &cfg, "tls_cert is set but tls_key is not: give both or neither"));
    CU_ASSERT_TRUE(set_ok(&cfg, "tls_key", "k.pem"));
    CU_ASSERT_TRUE(check_says(&cfg, NULL));
    free(cfg.tls_cert);
    cfg.tls_cert = NULL;
    CU_ASSERT_TRUE(check_says(
        &cfg, "tls_key is set but tls_cert is not: give both or neither"));
    free(cfg.tls_key);
    cfg.tls_key = NULL;

    /* values put into the struct directly are checked too */
    cfg.pin_source = strdup("123456");
    CU_ASSERT_TRUE(check_says(&cfg,
                              "pin_source: must be file:PATH, credential:NAME, "
                              "env:NAME, prompt or none (a "
                              "PIN itself is never accepted)"));
    free(cfg.pin_source);
    cfg.pin_source = strdup("env:VEIL_PIN");
    CU_ASSERT_TRUE(check_says(&cfg, NULL));
    free(cfg.server_key);
    cfg.server_key = strdup("pkcs11:token=veil;pin-value=1234");
    CU_ASSERT_TRUE(check_says(&cfg, "server_key: a PIN in the URI "
                                    "(pin-value) is refused; use pin_source"));
    free(cfg.server_key);
    cfg.server_key = strdup("dir:/k");
    CU_ASSERT_TRUE(check_says(&cfg, NULL));

    /* protocol v2: defaults, and a grace longer than the rotation */
    CU_ASSERT_EQUAL(cfg.v2, 1);
    CU_ASSERT_EQUAL(cfg.kem_rotate, 3600);
    CU_ASSERT_EQUAL(cfg.kem_grace, 300);
    CU_ASSERT_TRUE(set_ok(&cfg, "kem_rotate", "10"));
    CU_ASSERT_TRUE(set_ok(&cfg, "kem_grace", "11"));
    CU_ASSERT_TRUE(check_says(&cfg,
                              "kem_grace (11 s) is above kem_rotate (10 s): a "
                              "replaced key must be gone before the next one "
                              "is replaced"));
    CU_ASSERT_TRUE(set_ok(&cfg, "kem_grace", "10"));
    CU_ASSERT_TRUE(check_says(&cfg, NULL));
    /* where the KEM keys are made: tpm needs the TPM */
    CU_ASSERT_STRING_EQUAL(cfg.kem_keys, "auto");
    CU_ASSERT_TRUE(set_ok(&cfg, "kem_keys", "tpm"));
    CU_ASSERT_TRUE(check_says(&cfg, "kem_keys: tpm needs tpm = on"));
    CU_ASSERT_TRUE(set_ok(&cfg, "kem_keys", "token"));
    CU_ASSERT_TRUE(check_says(&cfg, "kem_keys: auto, software or tpm"));
    CU_ASSERT_TRUE(set_ok(&cfg, "kem_keys", "software"));
    CU_ASSERT_TRUE(check_says(&cfg, NULL));
    CU_ASSERT_TRUE(set_ok(&cfg, "v2", "off"));
    CU_ASSERT_EQUAL(cfg.v2, 0);

    /* duplicate model IDs (set() refuses them; a struct filled by hand) */
    cfg.models[1].id = strdup("m");
    cfg.models[1].upstream = strdup("echo");
    cfg.models[1].tiers = GW_TIER_ALL;
    cfg.n_models = 2;
    CU_ASSERT_TRUE(check_says(&cfg, "model 'm' is configured twice"));
    free(cfg.models[1].id);
    cfg.models[1].id = strdup("n");
    CU_ASSERT_TRUE(check_says(&cfg, NULL));
    cfg.models[1].tiers = 0;
    CU_ASSERT_TRUE(
        check_says(&cfg, "model 2 lacks an ID, an upstream or a tier"));
    gw_config_free(&cfg);
}

static void test_config_attestation(void)
{
    gw_config cfg;

    /* the signing key: a reference like the server key's, never a PIN */
    CU_ASSERT_TRUE(set_fails_with("signing_key", "signer",
                                  "--signing-key: must be a pkcs11: URI or "
                                  "dir:PATH"));
    CU_ASSERT_TRUE(set_fails_with(
        "signing_key", "pkcs11:token=veil;object=s;pin-value=4711",
        "--signing-key: a PIN in the URI (pin-value) is refused; use "
        "pin_source"));
    CU_ASSERT_TRUE(set_fails_with("tpm_certify_key_auth", "4711",
                                  "--tpm-certify-key-auth: must be file:PATH, "
                                  "credential:NAME, env:NAME, prompt or none "
                                  "(a PIN itself is never accepted)"));

    /* retention and capacity: both ends */
    CU_ASSERT_TRUE(set_fails_with(
        "signature_retention", "0",
        "--signature-retention: '0' is not a whole number from 1 to "
        "31536000"));
    CU_ASSERT_TRUE(set_fails_with("signature_retention", "31536001", NULL));
    CU_ASSERT_TRUE(set_fails_with(
        "signature_capacity", "16777217",
        "--signature-capacity: '16777217' is not a whole number from 1 to "
        "16777216"));
    CU_ASSERT_TRUE(set_fails_with("signature_capacity", "0", NULL));

    /* on and off, in the usual spellings only */
    gw_config_init(&cfg);
    CU_ASSERT_TRUE(set_ok(&cfg, "tpm", "on"));
    CU_ASSERT_EQUAL(cfg.tpm, 1);
    CU_ASSERT_TRUE(set_ok(&cfg, "tpm", "off"));
    CU_ASSERT_EQUAL(cfg.tpm, 0);
    CU_ASSERT_TRUE(set_ok(&cfg, "tpm", "true"));
    CU_ASSERT_EQUAL(cfg.tpm, 1);
    CU_ASSERT_TRUE(set_ok(&cfg, "tpm-ak-per-request", "1"));
    CU_ASSERT_EQUAL(cfg.tpm_ak_per_request, 1);
    CU_ASSERT_TRUE(set_ok(&cfg, "tpm_ak_per_request", "no"));
    CU_ASSERT_EQUAL(cfg.tpm_ak_per_request, 0);
    gw_config_free(&cfg);
    CU_ASSERT_TRUE(set_fails_with("tpm", "ON", "--tpm: 'ON' is not on or off"));
    CU_ASSERT_TRUE(set_fails_with("tpm", "2", NULL));
    CU_ASSERT_TRUE(set_fails_with("tpm", "", "--tpm: needs a value"));

    /* PCR selections */
    gw_config_init(&cfg);
    CU_ASSERT_TRUE(set_ok(&cfg, "tpm_pcrs", "sha256:7"));
    CU_ASSERT_STRING_EQUAL(cfg.tpm_pcrs, "sha256:7");
    CU_ASSERT_TRUE(set_ok(&cfg, "tpm-pcrs", "sha256:23,0"));
    CU_ASSERT_STRING_EQUAL(cfg.tpm_pcrs, "sha256:0,23");
    gw_config_free(&cfg);
    CU_ASSERT_TRUE(set_fails_with(
        "tpm_pcrs", "sha1:0,7",
        "--tpm-pcrs: 'sha1:0,7' is not a PCR selection such as "
        "sha256:0,7,10 (the sha256 bank, PCRs 0 to 23, each once)"));
    CU_ASSERT_TRUE(set_fails_with("tpm_pcrs", "sha256:24", NULL));
    CU_ASSERT_TRUE(set_fails_with("tpm_pcrs", "sha256:0,0", NULL));
    CU_ASSERT_TRUE(set_fails_with("tpm_pcrs", "sha256:", NULL));
    CU_ASSERT_TRUE(set_fails_with("tpm_pcrs", "0,7,10", NULL));

    /* check(): what goes together */
    gw_config_init(&cfg);
    CU_ASSERT_TRUE(set_ok(&cfg, "server_key", "dir:/k"));
    /* a model allowing maximum is fine without a TPM (it answers 503) */
    CU_ASSERT_TRUE(set_ok(&cfg, "model", "m=echo,tiers=maximum"));
    CU_ASSERT_TRUE(check_says(&cfg, NULL));
    CU_ASSERT_TRUE(set_ok(&cfg, "signing_key", "pkcs11:token=veil;object=g"));
    CU_ASSERT_TRUE(check_says(&cfg, NULL));
    CU_ASSERT_TRUE(set_ok(&cfg, "tpm_certify_key", "/k.pem"));
    CU_ASSERT_TRUE(check_says(&cfg, "tpm_certify_key is set but tpm is off: "
                                    "set tpm = on, or drop tpm_certify_key"));
    CU_ASSERT_TRUE(set_ok(&cfg, "tpm", "on"));
    CU_ASSERT_TRUE(check_says(&cfg, NULL));
    CU_ASSERT_TRUE(set_ok(&cfg, "tpm_certify_key_auth", "env:KEY_AUTH"));
    CU_ASSERT_TRUE(check_says(&cfg, NULL));
    free(cfg.tpm_certify_key);
    cfg.tpm_certify_key = NULL;
    CU_ASSERT_TRUE(check_says(
        &cfg, "tpm_certify_key_auth is set but tpm_certify_key is not"));
    free(cfg.tpm_certify_key_auth);
    cfg.tpm_certify_key_auth = NULL;
    /* values put into the struct directly are checked too */
    free(cfg.tpm_pcrs);
    cfg.tpm_pcrs = strdup("sha256:99");
    CU_ASSERT_TRUE(check_says(
        &cfg, "tpm_pcrs: 'sha256:99' is not a PCR selection such as "
              "sha256:0,7,10 (the sha256 bank, PCRs 0 to 23, each once)"));
    free(cfg.tpm_pcrs);
    cfg.tpm_pcrs = NULL;
    CU_ASSERT_TRUE(check_says(&cfg, "tpm = on needs tpm_pcrs"));
    cfg.tpm = 0;
    CU_ASSERT_TRUE(check_says(&cfg, NULL));
    /* an event log to ship, but no TPM whose reports would carry it */
    CU_ASSERT_TRUE(set_ok(&cfg, "tpm_event_log", "/sys/log.bin"));
    CU_ASSERT_TRUE(check_says(&cfg, "tpm_event_log is set but tpm is off: "
                                    "set tpm = on, or drop tpm_event_log"));
    free(cfg.tpm_event_log);
    cfg.tpm_event_log = NULL;
    CU_ASSERT_TRUE(check_says(&cfg, NULL));
    free(cfg.signing_key);
    cfg.signing_key = strdup("pkcs11:object=g;pin-value=1");
    CU_ASSERT_TRUE(check_says(&cfg, "signing_key: a PIN in the URI "
                                    "(pin-value) is refused; use pin_source"));
    gw_config_free(&cfg);
}

/* Where the plaintext goes: each upstream's place in the statement of a
 * maximum answer, the refusal of one on another host unless
 * tpm_remote_https allows https, and the statement parsed back as the
 * client does (a remote backend claimed local is refused). */
static void test_backend_statement(void)
{
    static const struct {
        const char *upstream;
        const char *stated; /* transport and location, or NULL: refused */
        const char *stated_remote_on;
    } cases[] = {
        {"echo", "transport=echo\nlocation=this-host\n", NULL},
        {"unix:/run/llama.sock", "transport=unix\nlocation=this-host\n", NULL},
        {"http://127.0.0.1:8080/v1", "transport=loopback\nlocation=this-host\n",
         NULL},
        {"https://127.9.9.9/v1", "transport=loopback\nlocation=this-host\n",
         NULL},
        {"http://[::1]:8080/v1", "transport=loopback\nlocation=this-host\n",
         NULL},
        {"http://localhost:8080/v1", "transport=loopback\nlocation=this-host\n",
         NULL},
        {"https://llm.example/v1", NULL, "transport=https\nlocation=remote\n"},
        {"https://10.0.0.5:8443/v1", NULL,
         "transport=https\nlocation=remote\n"},
        /* not loopback however it looks */
        {"https://127.0.0.1.example/v1", NULL,
         "transport=https\nlocation=remote\n"},
        {"http://localhost.example/v1", NULL, NULL},
        {"http://10.0.0.5:8080/v1", NULL, NULL},
        {"http://[::ffff:127.0.0.1]/v1", NULL, NULL},
        /* credentials cannot be stated */
        {"https://u:p@127.0.0.1/v1", NULL, NULL},
    };
    gw_config cfg;
    char stmt[VEIL_BACKEND_STATEMENT_MAX], why[512];

    gw_config_init(&cfg);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char spec[128];
        gw_model *m;

        snprintf(spec, sizeof spec, "m%zu=%s", i, cases[i].upstream);
        CU_ASSERT_TRUE_FATAL(set_ok(&cfg, "model", spec));
        m = &cfg.models[cfg.n_models - 1];
        for (int remote_on = 0; remote_on < 2; remote_on++) {
            const char *want = cases[i].stated ? cases[i].stated
                               : remote_on     ? cases[i].stated_remote_on
                                               : NULL;
            char expect[512];
            gw_rc rc;

            cfg.tpm_remote_https = remote_on;
            rc = gw_backend_statement(&cfg, m, stmt, sizeof stmt, why,
                                      sizeof why);
            if ((rc == GW_OK) != (want != NULL))
                fprintf(stderr, "\n  %s (remote %d): %s\n", cases[i].upstream,
                        remote_on, rc == GW_OK ? stmt : why);
            CU_ASSERT_EQUAL(rc, want ? GW_OK : GW_FORBIDDEN);
            CU_ASSERT_EQUAL(!!(gw_model_tiers(&cfg, m) & GW_TIER_MAXIMUM),
                            want != NULL);
            if (want == NULL) {
                CU_ASSERT_PTR_NOT_NULL(strstr(why, "is not allowed on the "
                                                   "maximum tier: its "
                                                   "upstream"));
                continue;
            }
            snprintf(expect, sizeof expect,
                     "veil-backend-v1\nmodel=m%zu\nupstream=%s\n%s", i,
                     cases[i].upstream, want);
            CU_ASSERT_STRING_EQUAL(stmt, expect);
            veil_backend_info b;
            CU_ASSERT_EQUAL(veil_backend_parse(stmt, strlen(stmt), &b),
                            VEIL_OK);
            CU_ASSERT_STRING_EQUAL(b.upstream, cases[i].upstream);
        }
    }
    cfg.tpm_remote_https = 0;
    CU_ASSERT_EQUAL(gw_backend_statement(&cfg, &cfg.models[6], stmt,
                                         sizeof stmt, why, sizeof why),
                    GW_FORBIDDEN);
    CU_ASSERT_STRING_EQUAL(
        why, "model 'm6' is not allowed on the maximum tier: its upstream is "
             "on another host, not on the attested host (maximum takes echo, "
             "a unix: socket or a loopback upstream; tpm_remote_https = on "
             "allows an https:// one)");
    gw_config_free(&cfg);

    /* hostile statements, as a client parses them */
    static const struct {
        const char *text, *says;
    } bad[] = {
        {"veil-backend-v1\nmodel=m\nupstream=https://10.0.0.5/v1\n"
         "transport=loopback\nlocation=this-host\n",
         "a remote backend claimed to be local"},
        {"veil-backend-v1\nmodel=m\nupstream=https://10.0.0.5/v1\n"
         "transport=https\nlocation=this-host\n",
         "a remote backend claimed to be local"},
        {"veil-backend-v1\nmodel=m\nupstream=unix:/s\ntransport=unix\n"
         "location=remote\n",
         "which is transport=unix, location=this-host"},
        {"veil-backend-v1\nmodel=m\nupstream=http://10.0.0.5/v1\n"
         "transport=http\nlocation=remote\n",
         "plain http to another host"},
        {"veil-backend-v1\nmodel=m\nupstream=unix:/s\nlocation=this-host\n"
         "transport=unix\n",
         "in that order"},
        {"veil-backend-v1\nmodel=m\nupstream=unix:/s\ntransport=unix\n"
         "location=this-host\nextra=1\n",
         "in that order"},
        {"veil-backend-v1\nmodel=m\nupstream=unix:/s\ntransport=unix\n"
         "location=this-host",
         "in that order"},
        {"veil-backend-v2\n", "does not start with"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        veil_backend_info b;

        CU_ASSERT_EQUAL(
            veil_backend_parse(bad[i].text, strlen(bad[i].text), &b),
            VEIL_E_VERIFY);
        if (!strstr(veil_last_error()->message, bad[i].says))
            fprintf(stderr, "\n  statement %zu: %s\n", i,
                    veil_last_error()->message);
        CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, bad[i].says));
    }
}

static void test_config_example(void)
{
    char path[1024], err[512];
    gw_config cfg;
    const gw_model *m;
    int n_echo = 0, n_standard_high = 0;

    snprintf(path, sizeof path, "%s/docs/veild.conf.example",
             tu_env("VEIL_SRCDIR"));
    gw_config_init(&cfg);
    CU_ASSERT_EQUAL(gw_config_load(&cfg, path, err, sizeof err), GW_OK);
    if (err[0] && cfg.n_models == 0)
        fprintf(stderr, "\n  %s\n", err);
    CU_ASSERT_TRUE(check_says(&cfg, NULL));
    for (size_t i = 0; i < cfg.n_models; i++) {
        m = &cfg.models[i];
        if (strcmp(m->upstream, "echo") == 0)
            n_echo++;
        if (m->tiers == (GW_TIER_STANDARD | GW_TIER_HIGH))
            n_standard_high++;
    }
    CU_ASSERT(n_echo >= 1);
    CU_ASSERT(n_standard_high >= 1);
    m = gw_config_model(&cfg, "Qwen/Qwen3-0.6B");
    CU_ASSERT_PTR_NOT_NULL(m);
    if (m)
        CU_ASSERT_STRING_EQUAL(m->upstream, "http://127.0.0.1:8080/v1");
    m = gw_config_model(&cfg, "llama3.2:3b");
    CU_ASSERT_PTR_NOT_NULL(m);
    if (m)
        CU_ASSERT_STRING_EQUAL(m->upstream, "http://127.0.0.1:11434/v1");
    m = gw_config_model(&cfg, "Qwen/Qwen3-8B");
    CU_ASSERT_PTR_NOT_NULL(m);
    if (m)
        CU_ASSERT_STRING_EQUAL(m->cache_salt_field, "cache_salt");
    gw_config_free(&cfg);
}

static void test_config_help(void)
{
    static const char *const names[] = {
        "--listen ",
        "--port ",
        "--port-file ",
        "--tls-cert ",
        "--tls-key ",
        "--server-key ",
        "--module ",
        "--pin-source ",
        "--api-keys ",
        "--rate ",
        "--burst ",
        "--body-limit ",
        "--workers ",
        "--state-dir ",
        "--replay-window ",
        "--replay-capacity ",
        "--replay-sync ",
        "--upstream-timeout ",
        "--connect-timeout ",
        "--log-level ",
        "--signing-key ",
        "--signature-retention ",
        "--signature-capacity ",
        "--tpm off|on",
        "--tpm-tcti ",
        "--tpm-pcrs ",
        "--tpm-ak-per-request ",
        "--tpm-certify-key ",
        "--tpm-certify-key-auth ",
        "(default: sha256:0,7,10)",
        "(default: 86400)",
        "(default: 65536)",
        "--model ",
        "[model ID]",
        "upstream = ",
        "upstream_key_file = ",
        "tiers = ",
        "cache_salt_field = ",
        "(default: /var/lib/veild)",
        "(default: 16M)",
        "(default: 127.0.0.1)",
        "(default: 8443)",
    };
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    gw_config_help(f);
    fclose(f);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (!strstr(text, names[i]))
            fprintf(stderr, "\n  help lacks '%s'\n", names[i]);
        CU_ASSERT_PTR_NOT_NULL(strstr(text, names[i]));
    }
    free(text);
}

/* ==== API keys ============================================================ */

static const char *const KEY_ALICE = "vk-alice-0123456789";
static const char *const KEY_BOB = "vk-bob-9876543210";

/* "sha256:<hex>" of key */
static void key_line(const char *key, char *out)
{
    uint8_t h[32];

    sha256(key, strlen(key), h);
    memcpy(out, "sha256:", 7);
    to_hex(h, 32, out + 7);
}

static void test_auth_good(void)
{
    char la[80], lb[80], text[600], err[256];
    uint8_t id[32], want[32];
    const char *path;
    gw_auth *a;

    key_line(KEY_ALICE, la);
    key_line(KEY_BOB, lb);
    /* bob's hash in upper case, without a name */
    for (char *p = lb + 7; *p; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    snprintf(text, sizeof text,
             "# API keys of veild\n\n  %s   alice (ops team)\n%s\n"
             "\t# the end\n",
             la, lb);
    path = write_file("keys", text, 0600);
    CU_ASSERT_PTR_NOT_NULL_FATAL(path);
    a = gw_auth_load(path, err, sizeof err);
    if (!a)
        fprintf(stderr, "\n  %s\n", err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_EQUAL(gw_auth_count(a), 2);

    CU_ASSERT_EQUAL(gw_auth_check(a, KEY_ALICE, id), GW_OK);
    sha256(KEY_ALICE, strlen(KEY_ALICE), want);
    CU_ASSERT_EQUAL(memcmp(id, want, 32), 0);
    CU_ASSERT_PTR_NOT_NULL(gw_auth_name(a, id));
    if (gw_auth_name(a, id))
        CU_ASSERT_STRING_EQUAL(gw_auth_name(a, id), "alice (ops team)");

    CU_ASSERT_EQUAL(gw_auth_check(a, KEY_BOB, id), GW_OK);
    sha256(KEY_BOB, strlen(KEY_BOB), want);
    CU_ASSERT_EQUAL(memcmp(id, want, 32), 0);
    CU_ASSERT_PTR_NULL(gw_auth_name(a, id)); /* no name given */

    /* wrong keys: near misses, empty, NULL */
    CU_ASSERT_EQUAL(gw_auth_check(a, "vk-alice-012345678", id),
                    GW_UNAUTHORIZED);
    sha256("vk-alice-012345678", strlen("vk-alice-012345678"), want);
    CU_ASSERT_EQUAL(memcmp(id, want, 32), 0); /* the id is still given */
    CU_ASSERT_PTR_NULL(gw_auth_name(a, id));
    CU_ASSERT_EQUAL(gw_auth_check(a, "vk-alice-0123456789\n", id),
                    GW_UNAUTHORIZED);
    CU_ASSERT_EQUAL(gw_auth_check(a, "", id), GW_UNAUTHORIZED);
    CU_ASSERT_EQUAL(gw_auth_check(a, NULL, id), GW_UNAUTHORIZED);
    CU_ASSERT_EQUAL(gw_auth_check(NULL, KEY_ALICE, id), GW_UNAUTHORIZED);
    gw_auth_free(a);
    gw_auth_free(NULL);

    /* operator_keys: by name, with blanks; a name no key has is refused */
    a = gw_auth_load(path, err, sizeof err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_EQUAL(
        gw_auth_set_operators(a, " alice (ops team) ", err, sizeof err), 0);
    sha256(KEY_ALICE, strlen(KEY_ALICE), want);
    CU_ASSERT_TRUE(gw_auth_is_operator(a, want));
    sha256(KEY_BOB, strlen(KEY_BOB), want);
    CU_ASSERT_FALSE(gw_auth_is_operator(a, want));
    CU_ASSERT_EQUAL(
        gw_auth_set_operators(a, "alice (ops team),carol", err, sizeof err),
        -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "'carol' names no key"));
    CU_ASSERT_EQUAL(gw_auth_set_operators(NULL, "alice", err, sizeof err), -1);
    gw_auth_free(a);

    /* mode 0640 is fine too */
    path = write_file("keys", text, 0640);
    a = gw_auth_load(path, err, sizeof err);
    CU_ASSERT_PTR_NOT_NULL(a);
    gw_auth_free(a);
}

static void test_auth_refused(void)
{
    char la[80], text[600], err[256], want[700];
    const char *path;
    const char *bad[] = {
        "sha256:%.63s\n",       /* one digit short */
        "sha256:%sf\n",         /* one digit more */
        "sha1:%s\n",            /* another hash */
        "%s\n",                 /* no prefix */
        "sha256:%.63sg\n",      /* not hex */
        "sha256: %s\n",         /* space after the colon */
        "sha256:%s\x01name\n",  /* glued control character */
        "sha256:%s na\x7fme\n", /* control character in the name */
    };

    key_line(KEY_ALICE, la);
    snprintf(text, sizeof text, "%s alice\n", la);
    /* writable by others, or by the group */
    path = write_file("keys", text, 0666);
    CU_ASSERT_PTR_NULL(gw_auth_load(path, err, sizeof err));
    snprintf(want, sizeof want,
             "%s: writable by group or others (chmod 600 or 640)", path);
    CU_ASSERT_STRING_EQUAL(err, want);
    path = write_file("keys", text, 0620);
    CU_ASSERT_PTR_NULL(gw_auth_load(path, err, sizeof err));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "writable by group or others"));
    /* not a regular file, missing */
    CU_ASSERT_PTR_NULL(gw_auth_load(scratch, err, sizeof err));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "not a regular file"));
    CU_ASSERT_PTR_NULL(gw_auth_load("/nonexistent/keys", err, sizeof err));
    CU_ASSERT_STRING_EQUAL(err, "/nonexistent/keys: No such file or directory");
    /* empty, or only comments */
    path = write_file("keys", "", 0600);
    CU_ASSERT_PTR_NULL(gw_auth_load(path, err, sizeof err));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, ": no API keys in the file"));
    path = write_file("keys", "# nobody yet\n\n", 0600);
    CU_ASSERT_PTR_NULL(gw_auth_load(path, err, sizeof err));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, ": no API keys in the file"));

    /* malformed lines, named by number (here line 3) */
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char line[200];
        gw_auth *a;

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
        snprintf(line, sizeof line, bad[i], la + 7);
#pragma GCC diagnostic pop
        snprintf(text, sizeof text, "# keys\n%s bob\n%s", la, line);
        path = write_file("keys", text, 0600);
        a = gw_auth_load(path, err, sizeof err);
        CU_ASSERT_PTR_NULL(a);
        snprintf(want, sizeof want,
                 "%s:3: expected \"sha256:<64 hex digits> [name]\"", path);
        if (strcmp(err, want) != 0)
            fprintf(stderr, "\n  case %zu: %s\n", i, err);
        CU_ASSERT_STRING_EQUAL(err, want);
        gw_auth_free(a);
    }
}

/* ==== replay register ===================================================== */

static void test_strikes_basic(void)
{
    gw_strikes *s = gw_strikes_new(600, 1024);
    uint8_t a1[32], a2[32], a3[32], b1[32], b2[32], b3[32];

    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    mark(a1, 'a', 1);
    mark(a2, 'a', 2);
    mark(a3, 'a', 3);
    mark(b1, 'b', 1);
    mark(b2, 'b', 2);
    mark(b3, 'b', 3);
    CU_ASSERT_EQUAL(gw_strikes_add(s, a1, b1, 1000), GW_STRIKE_NEW);
    /* the same package again */
    CU_ASSERT_EQUAL(gw_strikes_add(s, a1, b1, 1001), GW_STRIKE_SEEN);
    /* replay by payload ID, with a new wrapped key */
    CU_ASSERT_EQUAL(gw_strikes_add(s, a1, b2, 1002), GW_STRIKE_SEEN);
    /* replay by wrapped key, with a new payload ID */
    CU_ASSERT_EQUAL(gw_strikes_add(s, a2, b1, 1003), GW_STRIKE_SEEN);
    /* a replay records nothing: neither b2 nor a2 is known now */
    CU_ASSERT_EQUAL(gw_strikes_add(s, a2, b2, 1004), GW_STRIKE_NEW);
    /* the two kinds of marks are apart: b1's bytes as a payload ID are
     * new (and a1's bytes as a wrapped key) */
    CU_ASSERT_EQUAL(gw_strikes_add(s, b1, a1, 1005), GW_STRIKE_NEW);
    CU_ASSERT_EQUAL(gw_strikes_add(s, a3, b3, 1006), GW_STRIKE_NEW);
    gw_strikes_free(s);
    gw_strikes_free(NULL);

    CU_ASSERT_PTR_NULL(gw_strikes_new(600, 1));
    CU_ASSERT_PTR_NULL(gw_strikes_new(600, (1u << 24) + 1));
}

static void test_strikes_expiry(void)
{
    gw_strikes *s = gw_strikes_new(10, 1024);
    uint8_t a1[32], b1[32], a2[32], b2[32];

    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    mark(a1, 'a', 1);
    mark(b1, 'b', 1);
    mark(a2, 'a', 2);
    mark(b2, 'b', 2);
    CU_ASSERT_EQUAL(gw_strikes_add(s, a1, b1, 100), GW_STRIKE_NEW);
    CU_ASSERT_EQUAL(gw_strikes_add(s, a2, b2, 105), GW_STRIKE_NEW);
    /* 10 s old: still inside the window */
    CU_ASSERT_EQUAL(gw_strikes_add(s, a1, b1, 110), GW_STRIKE_SEEN);
    /* 11 s old: forgotten, so it is recorded anew (at 111) */
    CU_ASSERT_EQUAL(gw_strikes_add(s, a1, b1, 111), GW_STRIKE_NEW);
    CU_ASSERT_EQUAL(gw_strikes_add(s, a2, b2, 115), GW_STRIKE_SEEN);
    CU_ASSERT_EQUAL(gw_strikes_add(s, a2, b2, 116), GW_STRIKE_NEW);
    CU_ASSERT_EQUAL(gw_strikes_add(s, a1, b1, 121), GW_STRIKE_SEEN);
    CU_ASSERT_EQUAL(gw_strikes_add(s, a1, b1, 122), GW_STRIKE_NEW);
    /* a clock that steps back keeps marks longer */
    CU_ASSERT_EQUAL(gw_strikes_add(s, a2, b2, 50), GW_STRIKE_SEEN);
    gw_strikes_free(s);
}

static void test_strikes_full(void)
{
    /* room for 4 packages */
    gw_strikes *s = gw_strikes_new(10, 8);
    uint8_t a[32], b[32];
    size_t bytes;

    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    bytes = gw_strikes_bytes(s);
    CU_ASSERT(bytes >= 8 * (32 + sizeof(time_t)));
    for (unsigned i = 0; i < 4; i++) {
        mark(a, 'a', i);
        mark(b, 'b', i);
        CU_ASSERT_EQUAL(gw_strikes_add(s, a, b, 100 + i), GW_STRIKE_NEW);
    }
    mark(a, 'a', 4);
    mark(b, 'b', 4);
    /* full of live marks: refused, fail closed */
    CU_ASSERT_EQUAL(gw_strikes_add(s, a, b, 105), GW_STRIKE_FULL);
    CU_ASSERT_EQUAL(gw_strikes_add(s, a, b, 110), GW_STRIKE_FULL);
    /* a replay is still recognised as one */
    mark(a, 'a', 3);
    mark(b, 'b', 99);
    CU_ASSERT_EQUAL(gw_strikes_add(s, a, b, 110), GW_STRIKE_SEEN);
    /* at 111 the package of 100 has expired: room for one more */
    mark(a, 'a', 4);
    mark(b, 'b', 4);
    CU_ASSERT_EQUAL(gw_strikes_add(s, a, b, 111), GW_STRIKE_NEW);
    mark(a, 'a', 5);
    mark(b, 'b', 5);
    CU_ASSERT_EQUAL(gw_strikes_add(s, a, b, 111), GW_STRIKE_FULL);
    /* the package of 100 is gone: new again */
    mark(a, 'a', 0);
    mark(b, 'b', 0);
    CU_ASSERT_EQUAL(gw_strikes_add(s, a, b, 112), GW_STRIKE_NEW);
    /* the refused package 4 at 105 was not recorded then: it was new at
     * 111, and is seen now */
    mark(a, 'a', 4);
    mark(b, 'b', 4);
    CU_ASSERT_EQUAL(gw_strikes_add(s, a, b, 112), GW_STRIKE_SEEN);
    /* long after: everything expired, all new */
    for (unsigned i = 10; i < 14; i++) {
        mark(a, 'a', i);
        mark(b, 'b', i);
        CU_ASSERT_EQUAL(gw_strikes_add(s, a, b, 200), GW_STRIKE_NEW);
    }
    CU_ASSERT_EQUAL(gw_strikes_bytes(s), bytes);
    gw_strikes_free(s);
}

/* 10x the capacity over time, with replays mixed in: every fresh package is
 * NEW, every replay inside the window SEEN, the memory never grows. */
static void test_strikes_bounded(void)
{
    /* 40 packages a second, 11 seconds live (age 0 to 10): 880 of the 1024
     * entries, plus a few for the expired replays below */
    const unsigned cap = 1024, window = 10, per_second = 40;
    const unsigned packages = 10 * cap;
    gw_strikes *s = gw_strikes_new(window, cap);
    uint8_t a[32], b[32];
    size_t bytes;
    unsigned new_ok = 0, seen_ok = 0, expired_new = 0, expired_tries = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    bytes = gw_strikes_bytes(s);
    for (unsigned i = 0; i < packages; i++) {
        time_t now = 1000 + i / per_second;

        mark(a, 'a', i);
        mark(b, 'b', i);
        new_ok += gw_strikes_add(s, a, b, now) == GW_STRIKE_NEW;
        if (i >= 7 * per_second) {
            unsigned j = i - 7 * per_second; /* 7 s old: still live */

            mark(a, 'a', j);
            mark(b, 'b', 100000 + j);
            seen_ok += gw_strikes_add(s, a, b, now) == GW_STRIKE_SEEN;
        }
        if (i >= 12 * per_second && i % 97 == 0) {
            unsigned j = i - 12 * per_second; /* 12 s old: forgotten */

            mark(a, 'a', 200000 + j);
            mark(b, 'b', j);
            expired_new += gw_strikes_add(s, a, b, now) == GW_STRIKE_NEW;
            expired_tries++;
        }
        CU_ASSERT_EQUAL(gw_strikes_bytes(s), bytes);
    }
    CU_ASSERT_EQUAL(new_ok, packages);
    CU_ASSERT_EQUAL(seen_ok, packages - 7 * per_second);
    CU_ASSERT(expired_tries > 50);
    CU_ASSERT_EQUAL(expired_new, expired_tries);
    /* at most 56 bytes an entry (documented: about 48) */
    CU_ASSERT(bytes <= 512 + (size_t)cap * 56);
    gw_strikes_free(s);
}

typedef struct race {
    gw_strikes *s;
    unsigned news;
} race;

static void *race_thread(void *arg)
{
    race *r = arg;
    uint8_t a[32], b[32];

    for (unsigned i = 0; i < 2000; i++) {
        mark(a, 'a', i);
        mark(b, 'b', i);
        r->news += gw_strikes_add(r->s, a, b, 5000) == GW_STRIKE_NEW;
    }
    return NULL;
}

/* Threads racing with the same packages: each is NEW exactly once. */
static void test_strikes_threads(void)
{
    gw_strikes *s = gw_strikes_new(600, 8192);
    race r[4];
    pthread_t t[4];
    unsigned total = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    for (int i = 0; i < 4; i++) {
        r[i].s = s;
        r[i].news = 0;
        CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, race_thread, &r[i]),
                              0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        total += r[i].news;
    }
    CU_ASSERT_EQUAL(total, 2000);
    gw_strikes_free(s);
}

/* ==== rate limits ========================================================= */

static void test_rate_burst(void)
{
    gw_rate *r = gw_rate_new(1.0, 2, 16);
    uint8_t k[32];
    unsigned retry = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    mark(k, 'k', 1);
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 100.0, &retry), GW_OK);
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 100.0, &retry), GW_OK);
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 100.0, &retry), GW_RATE_LIMITED);
    CU_ASSERT_EQUAL(retry, 1);
    /* half a token back after 0.5 s: still no, retry in 1 s (rounded up) */
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 100.5, &retry), GW_RATE_LIMITED);
    CU_ASSERT_EQUAL(retry, 1);
    /* a full token at 101 */
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 101.0, &retry), GW_OK);
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 101.0, &retry), GW_RATE_LIMITED);
    /* long idle: back to a full bucket of 2, not more */
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 1000.0, &retry), GW_OK);
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 1000.0, &retry), GW_OK);
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 1000.0, &retry), GW_RATE_LIMITED);
    /* time going back gives nothing */
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 500.0, &retry), GW_RATE_LIMITED);
    gw_rate_free(r);
    gw_rate_free(NULL);

    /* a slow rate: retry_after is whole seconds, rounded up */
    r = gw_rate_new(0.25, 1, 4);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 0.0, &retry), GW_OK);
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 0.0, &retry), GW_RATE_LIMITED);
    CU_ASSERT_EQUAL(retry, 4);
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 1.5, &retry), GW_RATE_LIMITED);
    CU_ASSERT_EQUAL(retry, 3); /* 2.5 s to go */
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 3.9, &retry), GW_RATE_LIMITED);
    CU_ASSERT_EQUAL(retry, 1);
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 4.0, &retry), GW_OK);
    gw_rate_free(r);

    CU_ASSERT_PTR_NULL(gw_rate_new(0.0, 2, 4));
    CU_ASSERT_PTR_NULL(gw_rate_new(1.0, 0, 4));
    CU_ASSERT_PTR_NULL(gw_rate_new(1.0, 2, 0));
}

static void test_rate_keys_apart(void)
{
    gw_rate *r = gw_rate_new(1.0, 2, 16);
    uint8_t k1[32], k2[32];
    unsigned retry = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    mark(k1, 'k', 1);
    mark(k2, 'k', 2);
    CU_ASSERT_EQUAL(gw_rate_take(r, k1, 10.0, &retry), GW_OK);
    CU_ASSERT_EQUAL(gw_rate_take(r, k1, 10.0, &retry), GW_OK);
    CU_ASSERT_EQUAL(gw_rate_take(r, k1, 10.0, &retry), GW_RATE_LIMITED);
    /* k1 spent its bucket; k2 has its own */
    CU_ASSERT_EQUAL(gw_rate_take(r, k2, 10.0, &retry), GW_OK);
    CU_ASSERT_EQUAL(gw_rate_take(r, k2, 10.0, &retry), GW_OK);
    CU_ASSERT_EQUAL(gw_rate_take(r, k2, 10.0, &retry), GW_RATE_LIMITED);
    CU_ASSERT_EQUAL(gw_rate_take(r, k1, 11.0, &retry), GW_OK);
    CU_ASSERT_EQUAL(gw_rate_take(r, k1, 11.0, &retry), GW_RATE_LIMITED);
    gw_rate_free(r);
}

static void test_rate_bounded(void)
{
    const unsigned max = 8;
    gw_rate *r = gw_rate_new(1.0, 2, max);
    uint8_t k[32], hot[32];
    unsigned retry = 0, ok = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    /* a hot key spends its bucket */
    mark(hot, 'h', 0);
    CU_ASSERT_EQUAL(gw_rate_take(r, hot, 0.0, &retry), GW_OK);
    CU_ASSERT_EQUAL(gw_rate_take(r, hot, 0.0, &retry), GW_OK);
    CU_ASSERT_EQUAL(gw_rate_take(r, hot, 0.0, &retry), GW_RATE_LIMITED);
    /* many keys pass through the table; the hot key is used between them,
     * so it is never the one idle longest and keeps its (empty) bucket */
    for (unsigned i = 0; i < 1000; i++) {
        mark(k, 'k', i);
        ok += gw_rate_take(r, k, 0.0, &retry) == GW_OK;
        if (i % 4 == 0)
            CU_ASSERT_EQUAL(gw_rate_take(r, hot, 0.0, &retry), GW_RATE_LIMITED);
    }
    CU_ASSERT_EQUAL(ok, 1000); /* each new key: a full bucket */
    /* an early key was evicted long ago: it comes back with a full bucket
     * (which it would have anyway after 2 s idle) */
    mark(k, 'k', 0);
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 0.0, &retry), GW_OK);
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 0.0, &retry), GW_OK);
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 0.0, &retry), GW_RATE_LIMITED);
    /* the most recent keys are still there, with one token left */
    mark(k, 'k', 999);
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 0.0, &retry), GW_OK);
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 0.0, &retry), GW_RATE_LIMITED);
    CU_ASSERT_EQUAL(gw_rate_take(r, hot, 0.0, &retry), GW_RATE_LIMITED);
    gw_rate_free(r);

    /* a table of one bucket */
    r = gw_rate_new(1.0, 1, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    mark(k, 'k', 1);
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 0.0, &retry), GW_OK);
    CU_ASSERT_EQUAL(gw_rate_take(r, k, 0.0, &retry), GW_RATE_LIMITED);
    mark(hot, 'k', 2);
    CU_ASSERT_EQUAL(gw_rate_take(r, hot, 0.0, &retry), GW_OK);
    CU_ASSERT_EQUAL(gw_rate_take(r, hot, 0.0, &retry), GW_RATE_LIMITED);
    gw_rate_free(r);
}

/* ==== the signature store ================================================ */

/* A payload ID for n (a UUID in form) and a body naming it and a version. */
static void sl_id(unsigned n, char out[37])
{
    snprintf(out, 37, "%08x-0000-4000-8000-%012x", n, n);
}

static void sl_body(unsigned n, int version, char *out, size_t size)
{
    snprintf(out, size, "{\"n\":%u,\"v\":%d}", n, version);
}

/* 1 when id is stored at now with exactly want (NULL: not found). */
static int sl_has(gw_signlog *l, const char *id, time_t now, const char *want)
{
    char *got = gw_signlog_get(l, id, NULL, now);
    int ok = want ? got && strcmp(got, want) == 0 : got == NULL;

    if (!ok)
        fprintf(stderr, "\n  signlog %s at %lld: got %s, wanted %s\n", id,
                (long long)now, got ? got : "(none)", want ? want : "(none)");
    free(got);
    return ok;
}

static void test_signlog_basic(void)
{
    gw_signlog *l = gw_signlog_new(100, 8);
    char id[37], other[37], body[64];
    char *copy;

    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    sl_id(1, id);
    sl_body(1, 1, body, sizeof body);
    CU_ASSERT_EQUAL(gw_signlog_put(l, id, body, NULL, 1000), 0);
    CU_ASSERT_TRUE(sl_has(l, id, 1000, body));
    /* a copy each time, owned by the caller */
    copy = gw_signlog_get(l, id, NULL, 1001);
    CU_ASSERT_PTR_NOT_NULL_FATAL(copy);
    copy[0] = 'X';
    free(copy);
    CU_ASSERT_TRUE(sl_has(l, id, 1001, body));
    /* unknown IDs, and nothing for things that are not IDs */
    sl_id(2, other);
    CU_ASSERT_TRUE(sl_has(l, other, 1000, NULL));
    CU_ASSERT_TRUE(sl_has(l, "", 1000, NULL));
    CU_ASSERT_TRUE(
        sl_has(l, "0123456789012345678901234567890123456", 1000, NULL));
    CU_ASSERT_PTR_NULL(gw_signlog_get(l, NULL, NULL, 1000));
    CU_ASSERT_PTR_NULL(gw_signlog_get(NULL, id, NULL, 1000));
    CU_ASSERT_EQUAL(gw_signlog_put(l, NULL, body, NULL, 1000), -1);
    CU_ASSERT_EQUAL(gw_signlog_put(l, id, NULL, NULL, 1000), -1);
    CU_ASSERT_EQUAL(gw_signlog_put(NULL, id, body, NULL, 1000), -1);
    gw_signlog_free(l);
    gw_signlog_free(NULL);

    /* bad arguments */
    CU_ASSERT_PTR_NULL(gw_signlog_new(0, 8));
    CU_ASSERT_PTR_NULL(gw_signlog_new(100, 0));
    CU_ASSERT_PTR_NULL(gw_signlog_new(100, (1u << 24) + 1));
}

/* An entry with an owner: found by its owner and by an operator lookup
 * (who NULL), and for anyone else as absent as an unknown ID. */
static void test_signlog_owner(void)
{
    gw_signlog *l = gw_signlog_new(100, 8);
    uint8_t a[32], b[32];
    char id[37], open_id[37], body[64];
    char *got;

    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    memset(a, 0xaa, sizeof a);
    memset(b, 0xaa, sizeof b);
    b[31] = 0xab;
    sl_id(1, id);
    sl_id(2, open_id);
    sl_body(1, 1, body, sizeof body);
    CU_ASSERT_EQUAL(gw_signlog_put(l, id, body, a, 1000), 0);
    CU_ASSERT_EQUAL(gw_signlog_put(l, open_id, body, NULL, 1000), 0);
    got = gw_signlog_get(l, id, a, 1001);
    CU_ASSERT(got && strcmp(got, body) == 0);
    free(got);
    CU_ASSERT_PTR_NULL(gw_signlog_get(l, id, b, 1001));
    got = gw_signlog_get(l, id, NULL, 1001);
    CU_ASSERT(got && strcmp(got, body) == 0);
    free(got);
    /* an entry without an owner: anyone */
    got = gw_signlog_get(l, open_id, b, 1001);
    CU_ASSERT(got && strcmp(got, body) == 0);
    free(got);
    /* another's ID stored again keeps its owner */
    CU_ASSERT_EQUAL(gw_signlog_put(l, id, body, b, 1002), 0);
    CU_ASSERT_PTR_NULL(gw_signlog_get(l, id, b, 1003));
    gw_signlog_free(l);
}

static void test_signlog_retention(void)
{
    gw_signlog *l = gw_signlog_new(60, 16);
    char a[37], b[37], ba[64], bb[64];

    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    sl_id(1, a);
    sl_id(2, b);
    sl_body(1, 1, ba, sizeof ba);
    sl_body(2, 1, bb, sizeof bb);
    CU_ASSERT_EQUAL(gw_signlog_put(l, a, ba, NULL, 1000), 0);
    CU_ASSERT_EQUAL(gw_signlog_put(l, b, bb, NULL, 1030), 0);
    /* kept for 60 s: found at 1059, gone at 1060 */
    CU_ASSERT_TRUE(sl_has(l, a, 1059, ba));
    CU_ASSERT_TRUE(sl_has(l, a, 1060, NULL));
    CU_ASSERT_TRUE(sl_has(l, b, 1060, bb));
    CU_ASSERT_TRUE(sl_has(l, b, 1089, bb));
    CU_ASSERT_TRUE(sl_has(l, b, 1090, NULL));
    /* a clock that steps back keeps entries, it loses none */
    CU_ASSERT_TRUE(sl_has(l, b, 900, bb));
    /* a put long after drops both; new ones are found */
    CU_ASSERT_EQUAL(gw_signlog_put(l, a, bb, NULL, 5000), 0);
    CU_ASSERT_TRUE(sl_has(l, a, 5000, bb));
    CU_ASSERT_TRUE(sl_has(l, b, 5000, NULL));
    gw_signlog_free(l);
}

static void test_signlog_capacity(void)
{
    enum { CAP = 32 };
    gw_signlog *l = gw_signlog_new(1000000, CAP);
    char id[37], body[64];

    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    for (unsigned i = 0; i < 3 * CAP; i++) {
        sl_id(i, id);
        sl_body(i, 1, body, sizeof body);
        CU_ASSERT_EQUAL(gw_signlog_put(l, id, body, NULL, 1000 + (time_t)i), 0);
    }
    /* the last CAP are kept, the older ones went first */
    for (unsigned i = 0; i < 3 * CAP; i++) {
        sl_id(i, id);
        sl_body(i, 1, body, sizeof body);
        CU_ASSERT_TRUE(sl_has(l, id, 2000, i >= 2 * CAP ? body : NULL));
    }
    /* a body over 4 KiB is refused (memory stays bounded), and changes
     * nothing */
    {
        char *big = malloc(4098);

        CU_ASSERT_PTR_NOT_NULL_FATAL(big);
        memset(big, 'a', 4097);
        big[4097] = '\0';
        sl_id(9999, id);
        CU_ASSERT_EQUAL(gw_signlog_put(l, id, big, NULL, 2000), -1);
        big[4096] = '\0';
        CU_ASSERT_EQUAL(gw_signlog_put(l, id, big, NULL, 2000), 0);
        CU_ASSERT_TRUE(sl_has(l, id, 2000, big));
        free(big);
    }
    gw_signlog_free(l);

    /* capacity 1: each put replaces the one before */
    l = gw_signlog_new(10, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    for (unsigned i = 0; i < 5; i++) {
        sl_id(i, id);
        sl_body(i, 1, body, sizeof body);
        CU_ASSERT_EQUAL(gw_signlog_put(l, id, body, NULL, 1000), 0);
        CU_ASSERT_TRUE(sl_has(l, id, 1000, body));
    }
    sl_id(3, id);
    CU_ASSERT_TRUE(sl_has(l, id, 1000, NULL));
    gw_signlog_free(l);
}

static void test_signlog_same_id(void)
{
    gw_signlog *l = gw_signlog_new(100, 4);
    char a[37], b[37], c[37], v1[64], v2[64], bb[64], bc[64];

    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    sl_id(1, a);
    sl_id(2, b);
    sl_id(3, c);
    sl_body(1, 1, v1, sizeof v1);
    sl_body(1, 2, v2, sizeof v2);
    sl_body(2, 1, bb, sizeof bb);
    sl_body(3, 1, bc, sizeof bc);
    CU_ASSERT_EQUAL(gw_signlog_put(l, a, v1, NULL, 1000), 0);
    CU_ASSERT_EQUAL(gw_signlog_put(l, b, bb, NULL, 1010), 0);
    /* the same ID again while the first is live (an answer after the
     * replay window): the first body stays, with its own time, so a
     * later user of the ID cannot replace a signature others may fetch */
    CU_ASSERT_EQUAL(gw_signlog_put(l, a, v2, NULL, 1050), 0);
    CU_ASSERT_TRUE(sl_has(l, a, 1050, v1));
    CU_ASSERT_TRUE(sl_has(l, a, 1099, v1));
    CU_ASSERT_TRUE(sl_has(l, a, 1100, NULL)); /* expired at 1000 + 100 */
    /* once it has expired, the ID can be stored afresh */
    CU_ASSERT_EQUAL(gw_signlog_put(l, a, v2, NULL, 1101), 0);
    CU_ASSERT_TRUE(sl_has(l, a, 1101, v2));
    CU_ASSERT_TRUE(sl_has(l, b, 1110, NULL));
    /* many puts of one ID never take more than one place */
    CU_ASSERT_EQUAL(gw_signlog_put(l, b, bb, NULL, 1102), 0);
    CU_ASSERT_EQUAL(gw_signlog_put(l, c, bc, NULL, 1103), 0);
    for (int i = 0; i < 20; i++)
        CU_ASSERT_EQUAL(gw_signlog_put(l, a, v1, NULL, 1104), 0);
    CU_ASSERT_TRUE(sl_has(l, a, 1104, v2));
    CU_ASSERT_TRUE(sl_has(l, b, 1104, bb));
    CU_ASSERT_TRUE(sl_has(l, c, 1104, bc));
    gw_signlog_free(l);
}

typedef struct sl_worker {
    gw_signlog *l;
    unsigned base;
    int failed;
} sl_worker;

static void *sl_work(void *arg)
{
    sl_worker *w = arg;
    char id[37], body[64];

    for (unsigned i = 0; i < 2000; i++) {
        char *got;

        sl_id(w->base + i, id);
        sl_body(w->base + i, 1, body, sizeof body);
        if (gw_signlog_put(w->l, id, body, NULL, 1000) != 0)
            w->failed++;
        got = gw_signlog_get(w->l, id, NULL, 1000);
        /* just stored: found unless three other threads pushed it out */
        if (got && strcmp(got, body) != 0)
            w->failed++;
        free(got);
    }
    return NULL;
}

static void test_signlog_threads(void)
{
    gw_signlog *l = gw_signlog_new(100, 512);
    pthread_t th[4];
    sl_worker w[4];

    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    for (unsigned i = 0; i < 4; i++) {
        w[i] = (sl_worker){l, i * 100000u, 0};
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, sl_work, &w[i]), 0);
    }
    for (unsigned i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CU_ASSERT_EQUAL(w[i].failed, 0);
    }
    gw_signlog_free(l);
}

/* The register in a state directory: kept across a reopen, refused when
 * its capacity changed, damaged, or held by another opener. */
static void test_strikes_file(void)
{
    char dir[700], db[800], err[512];
    uint8_t a[32], b[32], c[32];
    gw_strikes *s, *s2;
    int conflict = -1;
    FILE *f;

    memset(a, 1, sizeof a);
    memset(b, 2, sizeof b);
    memset(c, 3, sizeof c);
    snprintf(dir, sizeof dir, "%s/state", scratch);
    snprintf(db, sizeof db, "%s/replay.db", dir);
    CU_ASSERT_EQUAL_FATAL(gw_state_dir(dir, err, sizeof err), 0);
    s = gw_strikes_open(dir, 600, 1024, 1, NULL, err, sizeof err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(gw_strikes_add(s, a, b, 1000), GW_STRIKE_NEW);
    /* one opener at a time */
    s2 = gw_strikes_open(dir, 600, 1024, 1, &conflict, err, sizeof err);
    CU_ASSERT_PTR_NULL(s2);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "in use by another veild"));
    CU_ASSERT_EQUAL(conflict, 0); /* a restart may cure it */
    gw_strikes_free(s);

    s = gw_strikes_open(dir, 600, 1024, 1, NULL, err, sizeof err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(gw_strikes_add(s, c, b, 1001), GW_STRIKE_SEEN);
    CU_ASSERT_EQUAL(gw_strikes_add(s, a, c, 1002), GW_STRIKE_SEEN);
    CU_ASSERT_EQUAL(gw_strikes_add(s, a, b, 1600), GW_STRIKE_SEEN);
    CU_ASSERT_EQUAL(gw_strikes_add(s, a, b, 1601), GW_STRIKE_NEW);
    gw_strikes_free(s);

    s = gw_strikes_open(dir, 600, 2048, 1, &conflict, err, sizeof err);
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "set replay_capacity = 1024"));
    CU_ASSERT_EQUAL(conflict, 1); /* veild: exit 2, not restarted */
    f = fopen(db, "r+b");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs("garbage!", f);
    fclose(f);
    s = gw_strikes_open(dir, 600, 1024, 1, &conflict, err, sizeof err);
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "is not a replay register"));
    CU_ASSERT_EQUAL(conflict, 1);
    CU_ASSERT_EQUAL(truncate(db, 100), 0);
    s = gw_strikes_open(dir, 600, 1024, 1, NULL, err, sizeof err);
    CU_ASSERT_PTR_NULL(s);
    unlink(db);
    /* a replay.db that is not a regular file of ours (a directory, a
     * symbolic link) conflicts as a file of the wrong mode does: no
     * restart cures it (veild: exit 2) */
    CU_ASSERT_EQUAL_FATAL(mkdir(db, 0700), 0);
    s = gw_strikes_open(dir, 600, 1024, 1, &conflict, err, sizeof err);
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_EQUAL(conflict, 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "must be a regular file of ours"));
    rmdir(db);
    CU_ASSERT_EQUAL_FATAL(symlink("/dev/null", db), 0);
    s = gw_strikes_open(dir, 600, 1024, 1, &conflict, err, sizeof err);
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_EQUAL(conflict, 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "must be a regular file of ours"));
    unlink(db);
    /* sized but never given its header (a crash while it was made): all
     * zeros, nothing was remembered in it, so it is made anew */
    f = fopen(db, "wb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    for (int i = 0; i < 8192; i++)
        fputc(0, f);
    fclose(f);
    CU_ASSERT_EQUAL(chmod(db, 0600), 0);
    s = gw_strikes_open(dir, 600, 1024, 1, &conflict, err, sizeof err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(gw_strikes_add(s, a, b, 1000), GW_STRIKE_NEW);
    gw_strikes_free(s);
    s = gw_strikes_open(dir, 600, 1024, 1, &conflict, err, sizeof err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(gw_strikes_add(s, a, b, 1001), GW_STRIKE_SEEN);
    gw_strikes_free(s);
    unlink(db);

    /* a directory others may write is refused */
    CU_ASSERT_EQUAL(chmod(dir, 0770), 0);
    CU_ASSERT_EQUAL(gw_state_dir(dir, err, sizeof err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "writable by nobody else"));
    CU_ASSERT_EQUAL(chmod(dir, 0700), 0);
    {
        uint8_t k1[32], k2[32];

        CU_ASSERT_EQUAL(gw_state_secret(dir, "x.key", k1, err, sizeof err), 0);
        CU_ASSERT_EQUAL(gw_state_secret(dir, "x.key", k2, err, sizeof err), 0);
        CU_ASSERT_EQUAL(memcmp(k1, k2, 32), 0);
        snprintf(db, sizeof db, "%s/x.key", dir);
        unlink(db);
    }
    rmdir(dir);
}

/* ==== the JSON scanner (protocol/json_scan.c) ============================= */

#define JS_MAX_MEMBERS 16

typedef struct js_members {
    veil_json_member m[JS_MAX_MEMBERS];
    size_t n;
} js_members;

static int js_collect(void *ctx, const char *text, const veil_json_member *m)
{
    js_members *c = ctx;

    (void)text;
    if (c->n < JS_MAX_MEMBERS)
        c->m[c->n] = *m;
    c->n++;
    return 0;
}

static veil_json_rc js_scan(const char *text, size_t len, js_members *out)
{
    memset(out, 0, sizeof *out);
    return veil_json_scan_object(text, len, js_collect, out, NULL, NULL, NULL);
}

static void test_json_grammar(void)
{
    static const struct {
        const char *text; /* NUL-terminated */
        veil_json_rc want;
    } cases[] = {
        {"{}", VEIL_JSON_OK},
        {" \t\r\n{ } \n", VEIL_JSON_OK},
        {"{\"a\":[1,-0,0.5,1e9,1E+2,-2.5e-3,true,false,null,{},[]]}",
         VEIL_JSON_OK},
        {"{\"a\":\"\\u0000 \\ud800 \\udc00 \\ud83d\\ude00 \\\" \\\\ \\/ \\b\\f"
         "\\n\\r\\t\"}",
         VEIL_JSON_OK},
        {"{\"a\":\"\xe2\x80\xa8 \xf0\x9f\x99\x82 \xc3\xa9 \x7f\"}",
         VEIL_JSON_OK},
        {"{\"a\":{\"x\":1,\"x\":2}}", VEIL_JSON_OK}, /* only the top level */
        {"", VEIL_JSON_SYNTAX},
        {"   ", VEIL_JSON_SYNTAX},
        {"{", VEIL_JSON_SYNTAX},
        {"{\"a\":01}", VEIL_JSON_SYNTAX},
        {"{\"a\":1,}", VEIL_JSON_SYNTAX},
        {"{,}", VEIL_JSON_SYNTAX},
        {"{\"a\" 1}", VEIL_JSON_SYNTAX},
        {"{'a':1}", VEIL_JSON_SYNTAX},
        {"{a:1}", VEIL_JSON_SYNTAX},
        {"{\"a\":+1}", VEIL_JSON_SYNTAX},
        {"{\"a\":1.}", VEIL_JSON_SYNTAX},
        {"{\"a\":.5}", VEIL_JSON_SYNTAX},
        {"{\"a\":1e}", VEIL_JSON_SYNTAX},
        {"{\"a\":-}", VEIL_JSON_SYNTAX},
        {"{\"a\":NaN}", VEIL_JSON_SYNTAX},
        {"{\"a\":tru}", VEIL_JSON_SYNTAX},
        {"{\"a\":nul}", VEIL_JSON_SYNTAX},
        {"{\"a\":\"\\x\"}", VEIL_JSON_SYNTAX},
        {"{\"a\":\"\\u12\"}", VEIL_JSON_SYNTAX},
        {"{\"a\":\"\\u12g4\"}", VEIL_JSON_SYNTAX},
        {"{\"a\":\"tab\there\"}", VEIL_JSON_SYNTAX},
        {"{\"a\":\"unterminated}", VEIL_JSON_SYNTAX},
        {"{\"a\":1}x", VEIL_JSON_SYNTAX},
        {"{\"a\":1} {}", VEIL_JSON_SYNTAX},
        {"{\"a\":[1,]}", VEIL_JSON_SYNTAX},
        {"{\"a\":[1 2]}", VEIL_JSON_SYNTAX},
        {"{\"a\":[1}", VEIL_JSON_SYNTAX},
        {"{\"a\":{]}", VEIL_JSON_SYNTAX},
        {"\xef\xbb\xbf{}", VEIL_JSON_SYNTAX},         /* a byte-order mark */
        {"{\"a\":\"\xc0\xaf\"}", VEIL_JSON_UTF8},     /* overlong */
        {"{\"a\":\"\xed\xa0\x80\"}", VEIL_JSON_UTF8}, /* a raw surrogate */
        {"{\"a\":\"\xf4\x90\x80\x80\"}", VEIL_JSON_UTF8}, /* > U+10FFFF */
        {"{\"a\":\"\xe2\x80\"}", VEIL_JSON_UTF8},         /* cut short */
        {"{\"\xff\":1}", VEIL_JSON_UTF8},
        {"[1]", VEIL_JSON_NOT_OBJECT},
        {"\"s\"", VEIL_JSON_NOT_OBJECT},
        {"1", VEIL_JSON_NOT_OBJECT},
        {"{\"a\":1,\"a\":2}", VEIL_JSON_DUPLICATE},
        {"{\"a\":1,\"b\":2,\"\\u0061\":3}", VEIL_JSON_DUPLICATE},
        {"{\"\\ud800\":1,\"\\uD800\":2}", VEIL_JSON_DUPLICATE},
        {"{\"\\ud83d\\ude00\":1,\"\xf0\x9f\x98\x80\":2}", VEIL_JSON_DUPLICATE},
        {"{\"\\/\":1,\"/\":2}", VEIL_JSON_DUPLICATE},
        {"{\"\\ud800\":1,\"\\udc00\":2,\"\\ud800\\udc00\":3}", VEIL_JSON_OK},
        {"{\"a\":1,\"A\":2,\"a \":3}", VEIL_JSON_OK},
    };
    js_members c;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        veil_json_rc rc = js_scan(cases[i].text, strlen(cases[i].text), &c);

        if (rc != cases[i].want)
            fprintf(stderr, "case %zu: %s, want %s\n", i, veil_json_rc_text(rc),
                    veil_json_rc_text(cases[i].want));
        CU_ASSERT_EQUAL(rc, cases[i].want);
    }
    /* a U+0000 byte in the text itself is a control character */
    CU_ASSERT_EQUAL(js_scan("{\"a\":\"\0\"}", 9, &c), VEIL_JSON_SYNTAX);
    /* len is what counts, not a NUL */
    CU_ASSERT_EQUAL(js_scan("{\"a\":1}GARBAGE", 7, &c), VEIL_JSON_OK);
    CU_ASSERT_EQUAL(veil_json_scan("[1,{\"a\":[]}]", 12, NULL), VEIL_JSON_OK);
    CU_ASSERT_EQUAL(veil_json_scan("[1,{\"a\":[]}", 11, NULL),
                    VEIL_JSON_SYNTAX);
}

/* VEIL_JSON_MAX_DEPTH levels are fine, one more is not; 10^6 of them cost
 * no stack. */
static void test_json_depth(void)
{
    size_t deep = 1000000, len;
    char *t = malloc(2 * deep + 16);
    size_t n = 0;
    js_members c;

    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    for (unsigned extra = 0; extra < 2; extra++) {
        size_t levels = VEIL_JSON_MAX_DEPTH - 1 + extra; /* + the object */

        n = 0;
        n += (size_t)snprintf(t, 8, "{\"a\":");
        memset(t + n, '[', levels);
        n += levels;
        memset(t + n, ']', levels);
        n += levels;
        t[n++] = '}';
        CU_ASSERT_EQUAL(js_scan(t, n, &c),
                        extra ? VEIL_JSON_DEPTH : VEIL_JSON_OK);
    }
    memset(t, '[', deep);
    memset(t + deep, ']', deep);
    len = 2 * deep;
    CU_ASSERT_EQUAL(veil_json_scan(t, len, NULL), VEIL_JSON_DEPTH);
    free(t);
}

static void test_json_members(void)
{
    static const char text[] =
        "{ \"model\" : \"m\\u00e9\\u0000x\" , \"MOD\\u0045L\":1,\"n\":[1,{}]}";
    js_members c;
    size_t open = 9, close = 0, where;
    char v[16];

    CU_ASSERT_EQUAL_FATAL(veil_json_scan_object(text, strlen(text), js_collect,
                                                &c, &open, &close, &where),
                          VEIL_JSON_OK);
    memset(&c, 0, sizeof c);
    CU_ASSERT_EQUAL_FATAL(js_scan(text, strlen(text), &c), VEIL_JSON_OK);
    CU_ASSERT_EQUAL(open, 0);
    CU_ASSERT_EQUAL(close, strlen(text) - 1);
    CU_ASSERT_EQUAL_FATAL(c.n, 3);
    CU_ASSERT_EQUAL(c.m[0].key, 2);
    CU_ASSERT_EQUAL(c.m[0].key_end, 9);
    CU_ASSERT_EQUAL(c.m[0].value, 12);
    CU_ASSERT_EQUAL(text[c.m[0].value_end - 1], '"');
    CU_ASSERT_EQUAL(c.m[0].prev_end, 1);
    CU_ASSERT_EQUAL(c.m[1].prev_end, c.m[0].value_end);
    CU_ASSERT_TRUE(veil_json_key_is(text, &c.m[0], "model"));
    CU_ASSERT_FALSE(veil_json_key_is(text, &c.m[0], "mode"));
    CU_ASSERT_FALSE(veil_json_key_is(text, &c.m[0], "models"));
    CU_ASSERT_FALSE(veil_json_key_is(text, &c.m[1], "model"));
    CU_ASSERT_TRUE(veil_json_key_is_nocase(text, &c.m[1], "model"));
    CU_ASSERT_EQUAL(veil_json_string_value(text, &c.m[0], v, sizeof v), 5);
    CU_ASSERT_EQUAL(memcmp(v, "m\xc3\xa9\0x", 6), 0);
    CU_ASSERT_EQUAL(veil_json_string_value(text, &c.m[0], v, 5), -1);
    CU_ASSERT_EQUAL(veil_json_string_value(text, &c.m[1], v, sizeof v), -1);
    /* the duplicate's place: the later key */
    CU_ASSERT_EQUAL(veil_json_scan_object("{\"a\":1,\"b\":2,\"a\":3}", 19, NULL,
                                          NULL, NULL, NULL, &where),
                    VEIL_JSON_DUPLICATE);
    CU_ASSERT_EQUAL(where, 13);
}

/* Removing any set of members leaves an object, every other byte kept. */
static void test_json_remove(void)
{
    static const char text[] = "{\"a\":1, \"b\":[2] ,\"c\":{\"d\":3}\n}";
    static const struct {
        unsigned set; /* bit i: member i goes */
        const char *want;
    } cases[] = {
        {0, "{\"a\":1, \"b\":[2] ,\"c\":{\"d\":3}\n}"},
        {1, "{\"b\":[2] ,\"c\":{\"d\":3}\n}"},
        {2, "{\"a\":1, \"c\":{\"d\":3}\n}"},
        {4, "{\"a\":1, \"b\":[2]\n}"},
        {3, "{\"c\":{\"d\":3}\n}"},
        {5, "{\"b\":[2]\n}"},
        {6, "{\"a\":1\n}"},
        {7, "{\n}"},
    };
    js_members c;

    CU_ASSERT_EQUAL_FATAL(js_scan(text, strlen(text), &c), VEIL_JSON_OK);
    CU_ASSERT_EQUAL_FATAL(c.n, 3);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        veil_json_member rm[3];
        veil_json_edit e[4];
        size_t n = 0, ne, len;
        char out[64];
        js_members after;

        for (unsigned b = 0; b < 3; b++)
            if (cases[i].set & (1u << b))
                rm[n++] = c.m[b];
        ne = veil_json_remove_members(text, strlen(text), rm, n, e);
        CU_ASSERT_TRUE(ne <= n);
        /* and a member added before the brace */
        e[ne++] = (veil_json_edit){strlen(text) - 1, 0, "", 0};
        len = veil_json_spliced_len(strlen(text), e, ne);
        CU_ASSERT_FATAL(len < sizeof out);
        veil_json_splice(text, strlen(text), e, ne, out);
        out[len] = '\0';
        if (strcmp(out, cases[i].want) != 0)
            fprintf(stderr, "case %zu: got '%s'\n", i, out);
        CU_ASSERT_STRING_EQUAL(out, cases[i].want);
        CU_ASSERT_EQUAL(js_scan(out, len, &after), VEIL_JSON_OK);
    }
    /* edits out of order or past the end are refused */
    {
        veil_json_edit bad[2] = {{5, 1, NULL, 0}, {4, 1, NULL, 0}};

        CU_ASSERT_EQUAL(veil_json_spliced_len(10, bad, 2), (size_t)-1);
        bad[1] = (veil_json_edit){9, 2, NULL, 0};
        CU_ASSERT_EQUAL(veil_json_spliced_len(10, bad, 2), (size_t)-1);
    }
}

/* ==== metrics and usage =================================================== */

/* The usage of an answer: whole numbers of the top-level "usage" only;
 * anything else is "not reported" (-1), never a guess. */
static void test_usage_read(void)
{
    static const struct {
        const char *body;
        int rc;
        long long prompt, completion;
    } cases[] = {
        {"{\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":30,"
         "\"total_tokens\":42}}",
         0, 12, 30},
        /* embeddings: no completion tokens */
        {"{\"data\":[],\"usage\":{\"prompt_tokens\":5,\"total_tokens\":5}}", 0,
         5, -1},
        {"{\"usage\":{\"prompt_tokens\":1e3,\"completion_tokens\":2.0}}", 0,
         1000, 2},
        /* not whole, negative, too big, strings, null: not reported */
        {"{\"usage\":{\"prompt_tokens\":1.5,\"completion_tokens\":-3}}", 0,
         -1, -1},
        {"{\"usage\":{\"prompt_tokens\":\"7\",\"completion_tokens\":null}}",
         0, -1, -1},
        {"{\"usage\":{\"prompt_tokens\":1e300,\"completion_tokens\":"
         "9007199254740993}}",
         0, -1, -1},
        /* only the top level's usage counts */
        {"{\"choices\":[{\"usage\":{\"prompt_tokens\":9}}]}", -1, -1, -1},
        {"{\"x\":{\"usage\":{\"prompt_tokens\":9}},\"usage\":{}}", 0, -1,
         -1},
        {"{\"usage\":[1,2]}", -1, -1, -1},
        /* a key twice, or not JSON: nothing read */
        {"{\"usage\":{\"prompt_tokens\":1,\"prompt_tokens\":2}}", 0, -1, -1},
        {"{\"usage\":{\"prompt_tokens\":1},\"usage\":{}}", -1, -1, -1},
        {"not json", -1, -1, -1},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        long long p = 7, c = 7;
        int rc = gw_usage_read(cases[i].body, strlen(cases[i].body), &p, &c);
        if (rc != cases[i].rc || p != cases[i].prompt ||
            c != cases[i].completion)
            fprintf(stderr, "\n  case %zu: rc %d, %lld, %lld\n", i, rc, p, c);
        CU_ASSERT_EQUAL(rc, cases[i].rc);
        CU_ASSERT_EQUAL(p, cases[i].prompt);
        CU_ASSERT_EQUAL(c, cases[i].completion);
    }
    long long p, c;
    CU_ASSERT_EQUAL(gw_usage_read(NULL, 0, &p, &c), -1);
}

/* The registry's text: labels escaped, histograms cumulative, counters
 * that only go up, series bounded. */
static void test_metrics_render(void)
{
    static const double buckets[] = {0.1, 1, 10};
    svc_metrics *m = svc_metrics_new();
    svc_family *c = svc_metrics_family(m, SVC_COUNTER, "t_total", "a counter",
                                       (const char *const[]){"a", "b", NULL},
                                       NULL, 0);
    svc_family *h = svc_metrics_family(m, SVC_HISTOGRAM, "t_seconds", "times",
                                       (const char *const[]){"op", NULL},
                                       buckets, 3);
    svc_family *g = svc_metrics_family(m, SVC_GAUGE, "t_gauge", "a gauge",
                                       NULL, NULL, 0);
    size_t len;

    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    /* buckets out of order, too many labels: refused */
    CU_ASSERT_PTR_NULL(svc_metrics_family(m, SVC_HISTOGRAM, "x_seconds", "x",
                                          NULL, (const double[]){2, 1}, 2));
    CU_ASSERT_PTR_NULL(svc_metrics_family(
        m, SVC_COUNTER, "y_total", "y",
        (const char *const[]){"1", "2", "3", "4", "5", "6", "7", NULL}, NULL,
        0));
    svc_metric_add(c, (const char *const[]){"q\"uote", "back\\slash\nline"},
                   2);
    svc_metric_add(c, (const char *const[]){"q\"uote", "back\\slash\nline"},
                   -5); /* a counter never goes down */
    svc_metric_add(c, (const char *const[]){"x", NULL}, 1);
    svc_metric_observe(h, (const char *const[]){"op1"}, 0.05);
    svc_metric_observe(h, (const char *const[]){"op1"}, 0.5);
    svc_metric_observe(h, (const char *const[]){"op1"}, 50);
    svc_metric_set(g, NULL, 3);
    svc_metric_set(g, NULL, 1.25);
    svc_metric_add(g, NULL, 1); /* not a counter: ignored */
    char *text = svc_metrics_render(m, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_EQUAL(len, strlen(text));
    static const char *const want[] = {
        "# HELP t_total a counter\n# TYPE t_total counter\n",
        "t_total{a=\"q\\\"uote\",b=\"back\\\\slash\\nline\"} 2\n",
        "t_total{a=\"x\",b=\"\"} 1\n",
        "# TYPE t_seconds histogram\n",
        "t_seconds_bucket{op=\"op1\",le=\"0.1\"} 1\n",
        "t_seconds_bucket{op=\"op1\",le=\"1\"} 2\n",
        "t_seconds_bucket{op=\"op1\",le=\"10\"} 2\n",
        "t_seconds_bucket{op=\"op1\",le=\"+Inf\"} 3\n",
        "t_seconds_sum{op=\"op1\"} 50.55\n",
        "t_seconds_count{op=\"op1\"} 3\n",
        "# TYPE t_gauge gauge\nt_gauge 1.25\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        if (strstr(text, want[i]) == NULL)
            fprintf(stderr, "\n  missing: %s", want[i]);
        CU_ASSERT_PTR_NOT_NULL(strstr(text, want[i]));
    }
    free(text);
    /* series past the cap are dropped and counted, never grown */
    char v[32];
    for (unsigned i = 0; i < SVC_SERIES_MAX + 10; i++) {
        snprintf(v, sizeof v, "%u", i);
        svc_metric_add(c, (const char *const[]){v, "n"}, 1);
    }
    CU_ASSERT_EQUAL(svc_metrics_dropped(m), 12); /* 2 series were there */
    svc_metrics_free(m);
    /* the gateway's families without a registry: nothing done */
    gw_metrics_request(NULL, "/x", "GET", 200, NULL, NULL, 0.1);
    gw_metrics_usage(NULL, "k", "m", 1, 2);
    gw_metrics_engine_op(NULL, "software", "random", 0.1, VEIL_OK);
    svc_metrics_free(NULL);
    gw_metrics_free(NULL);
}

/* ==== main ================================================================ */

int main(void)
{
    static const tu_test config[] = {
        {"defaults", test_config_defaults},
        {"a file with every setting", test_config_every_setting},
        {"sections, comments, overrides", test_config_sections_comments},
        {"file errors name their line", test_config_file_errors},
        {"sizes with suffixes", test_config_sizes},
        {"numbers and checked values", test_config_numbers},
        {"flags: '-' and '_' alike", test_config_flags},
        {"model flag syntax", test_config_model_flag},
        {"check()", test_config_check},
        {"signatures and the TPM", test_config_attestation},
        {"backend statement of maximum answers", test_backend_statement},
        {"docs/veild.conf.example", test_config_example},
        {"--help lists the table", test_config_help},
    };
    static const tu_test auth[] = {
        {"a good key file", test_auth_good},
        {"refused files and lines", test_auth_refused},
    };
    static const tu_test strikes[] = {
        {"new and replays", test_strikes_basic},
        {"expiry after the window", test_strikes_expiry},
        {"full, then free again", test_strikes_full},
        {"10x capacity, bounded memory", test_strikes_bounded},
        {"threads", test_strikes_threads},
        {"in a file: reopened, checked", test_strikes_file},
    };
    static const tu_test signlog[] = {
        {"put, get, unknown IDs", test_signlog_basic},
        {"an entry for its owner or an operator", test_signlog_owner},
        {"retention", test_signlog_retention},
        {"capacity: the oldest go first", test_signlog_capacity},
        {"the same ID twice", test_signlog_same_id},
        {"threads", test_signlog_threads},
    };
    static const tu_test json[] = {
        {"strict RFC 8259, duplicate keys", test_json_grammar},
        {"depth bounded, no recursion", test_json_depth},
        {"members, keys, string values", test_json_members},
        {"removing members, splicing", test_json_remove},
    };
    static const tu_test metrics[] = {
        {"usage read from an answer", test_usage_read},
        {"the text format", test_metrics_render},
    };
    static const tu_test rate[] = {
        {"burst, refusal, refill", test_rate_burst},
        {"keys apart", test_rate_keys_apart},
        {"bounded table", test_rate_bounded},
    };
    int rc;

    if (tu_scratch_dir("gwunits", scratch, sizeof scratch) != 0) {
        fprintf(stderr, "cannot make a scratch directory: %s\n",
                strerror(errno));
        return 99;
    }
    TU_ADD_SUITE("configuration", NULL, NULL, config);
    TU_ADD_SUITE("API keys", NULL, NULL, auth);
    TU_ADD_SUITE("replay register", NULL, NULL, strikes);
    TU_ADD_SUITE("rate limits", NULL, NULL, rate);
    TU_ADD_SUITE("signature store", NULL, NULL, signlog);
    TU_ADD_SUITE("JSON scanner", NULL, NULL, json);
    TU_ADD_SUITE("metrics and usage", NULL, NULL, metrics);
    rc = tu_run_tests();
    for (size_t i = 0; i < sizeof scratch_files / sizeof scratch_files[0];
         i++) {
        char path[700];

        snprintf(path, sizeof path, "%s/%s", scratch, scratch_files[i]);
        unlink(path);
    }
    rmdir(scratch);
    return rc;
}
