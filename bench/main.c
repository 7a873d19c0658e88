/* veil-bench: operations per second through each veil provider, next to
 * the same operation done directly in the same process, and the ratio
 * veil / baseline.
 *
 *   all, software, pkcs11   the providers (bench/engine.c)
 *   client    the client's cost per request against a protocol server,
 *             and its cold start (bench/client.c)
 *   gateway   veild under load next to the machine's bare RSA limit,
 *             slow clients, refusal timing, and veild's memory
 *             (bench/gateway.c, gateway_slow.c, gateway_memory.c)
 *   attest    the latency signing and TPM attestation add to an answer:
 *             four veild configurations, interleaved (bench/attest.c)
 *
 * This file is the command line: one table of subcommands (COMMANDS) and
 * one of options (OPTIONS); each option row names the subcommands it
 * applies to.
 *
 * The machines this runs on are shared and noisy, so each measurement is
 * made of interleaved rounds (veil, baseline, veil, baseline, ...), each a
 * fixed wall-clock slice, and the median rate of each side is compared.
 * A ratio below the target is printed as BELOW but never changes the exit
 * status: there are no timed assertions.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

/* ---- the subcommands ---------------------------------------------------- */

enum {
    C_ALL = 1u << 0,
    C_SOFTWARE = 1u << 1,
    C_PKCS11 = 1u << 2,
    C_CLIENT = 1u << 3,
    C_GATEWAY = 1u << 4,
    C_ATTEST = 1u << 5,
    C_ANY = (1u << 6) - 1,
};

/* What the command line gave besides bench_opts. */
typedef struct given {
    double seconds;
    unsigned rounds;
    unsigned seen; /* bit i: OPTIONS[i] was given */
    int no_pkcs11;
} given;

typedef struct bench_cmd {
    const char *name;
    unsigned bit;
    int (*run)(const bench_opts *o);
    const char *usage; /* its lines of --help, after the name */
    /* sets what runs; a usage error's exit status, or -1 */
    int (*select)(bench_opts *o, const given *g);
    /* its defaults, after the options were checked; as select */
    int (*defaults)(bench_opts *o, const given *g);
    /* the PKCS#11 side without a module or token: a usage error with
     * these texts when set, else a skip note naming `part` */
    const char *no_module, *no_token;
    const char *part, *script;
} bench_cmd;

static const char *const HEAD =
    "Usage: veil-bench [ENGINE] [OPTIONS]\n"
    "\n"
    "Measures operations per second through veil next to the same operation\n"
    "done directly (bare OpenSSL, bare PKCS#11) in the same process, and\n"
    "prints ratio = veil / baseline.  Rounds are interleaved (veil, baseline,\n"
    "veil, ...) and the median rate of each side is compared.\n"
    "\n"
    "ENGINE:\n";

static const char *const TAIL =
    "\n"
    "Options:\n"
    "  --seconds S        length of one timed slice (default 0.3)\n"
    "  --rounds N         slices per side; the median is used (default 5)\n"
    "  --module PATH      PKCS#11 module (default $VEIL_TEST_SOFTHSM_MODULE)\n"
    "  --token LABEL      token label (default $VEIL_TEST_SOFTHSM_TOKEN)\n"
    "  --pin-source SPEC  user PIN: file:/path or env:NAME (default\n"
    "                     $VEIL_PIN_SOURCE, else file:$VEIL_TEST_PIN_FILE);\n"
    "                     a PIN is never taken from the command line\n"
    "  --no-pkcs11        skip the PKCS#11 measurements (client: the token\n"
    "                     key)\n"
    "  --url URL          client: base URL of the protocol server\n"
    "  --ca-file FILE     client: PEM CA bundle for an https URL\n"
    "  --quick            1 round of 0.05 s, RSA 2048 only, AES 1 KiB and\n"
    "                     64 KiB (smoke test); --seconds/--rounds override;\n"
    "                     client: 1 round of 0.05 s, same sizes and keys;\n"
    "                     gateway: RSA-2048, 1 round of 50 requests, 0.2 s\n"
    "                     limit slices, 10 timing packages, 1 memory wave;\n"
    "                     attest: RSA-2048, 2 rounds of 3 requests each\n"
    "gateway (--seconds: one limit slice [1]; --rounds: load phases per\n"
    "level [3]; --no-pkcs11: no token key):\n"
    "  --veild PATH       the veild program [veild next to veil-bench]\n"
    "  --requests N       requests per load phase [1000]\n"
    "  --clients LIST     concurrency levels [1,8,64]; targets apply at >= 64\n"
    "  --bits N           server key size: 2048, 3072 or 4096 [4096]\n"
    "  --workers N        veild --workers [veild's default, 4]\n"
    "  --timing N         refusal timing: packages of each kind, 0 skips\n"
    "                     [200]\n"
    "  --memory-waves N   waves of 64 concurrent 1 MiB requests; 0 skips [3]\n"
    "  --protocol v1|v2   v2: protocol v2 (Oblivious HTTP) next to the bare\n"
    "                     P-256 ECDH derive rate and to v1 on the same veild\n"
    "                     (software and token KEM key), and one client's\n"
    "                     added p50 over a plain POST to tests/mock-upstream\n"
    "                     (built next to --veild); no timing, memory [v1]\n"
    "                     v2-only: the v2 load lines alone (no v1 phase, no\n"
    "                     latency lines), e.g. to profile veild under v2\n"
    "attest (--rounds: interleaved rounds [20]; --veild, --bits [4096] and\n"
    "--workers as for gateway; the signing key goes in --module/--token):\n"
    "  --requests N       requests per configuration and round [50]\n"
    "  --tcti TCTI        veild --tpm-tcti [$TPM2TOOLS_TCTI]\n"
    "  -h, --help         this text\n"
    "\n"
    "Output: one line per measurement:\n"
    "  name  veil_rate  baseline_rate  unit  ratio  target  ok|BELOW\n"
    "BELOW (ratio under the target) does not change the exit status.\n"
    "client prints times instead of rates, and no target:\n"
    "  name  veil_time  baseline_time  unit  ratio (veil / baseline time)\n"
    "gateway prints, per server key and concurrency level:\n"
    "  name  req/s  limit/s  ratio  p50_ms  p99_ms  p99/p50  errors  result\n"
    "(targets at 64 clients: ratio >= 0.80, p99/p50 <= 4, no errors: ok,\n"
    "else BELOW and what missed), then the refusal timing and memory\n"
    "lines.  Failed requests are counted, not fatal; a failed warm-up\n"
    "request, or veild failing to start or stop, is.\n"
    "attest prints, per configuration, the median and p90 POST time and\n"
    "veild's own time (its log), then the added ms of each comparison\n"
    "(median over the rounds of the difference of the round medians) and\n"
    "the ratio to A; no targets.\n"
    "\n"
    "Exit status:\n"
    "  0  all measurements ran\n"
    "  1  a veil call failed (its message is printed), or a baseline or\n"
    "     setup step failed\n"
    "  2  usage error\n";

int bench_usage_error(const char *fmt, const char *arg)
{
    fputs("veil-bench: ", stderr);
    fprintf(stderr, "%s%s\n", fmt, arg ? arg : "");
    fputs("Try 'veil-bench --help'.\n", stderr);
    return EXIT_USAGE;
}

/* veild next to this program (both sit at the top of the build tree). */
static int default_veild(bench_opts *o)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    char *slash;

    if (n <= 0)
        return -1;
    self[n] = '\0';
    if (!(slash = strrchr(self, '/')))
        return -1;
    *slash = '\0';
    if (snprintf(o->veild_buf, sizeof o->veild_buf, "%s/veild", self) >=
        (int)sizeof o->veild_buf)
        return -1;
    o->veild = o->veild_buf;
    return 0;
}

static int select_all(bench_opts *o, const given *g)
{
    o->run_software = 1;
    o->run_pkcs11 = !g->no_pkcs11;
    return -1;
}

static int select_software(bench_opts *o, const given *g)
{
    (void)g;
    o->run_software = 1;
    return -1;
}

static int select_pkcs11(bench_opts *o, const given *g)
{
    if (g->no_pkcs11)
        return bench_usage_error("ENGINE pkcs11 contradicts --no-pkcs11", NULL);
    o->run_pkcs11 = 1;
    o->pkcs11_required = 1;
    return -1;
}

static int select_client(bench_opts *o, const given *g)
{
    o->run_client = 1;
    o->run_pkcs11 = !g->no_pkcs11; /* the token key */
    if (!o->url)
        return bench_usage_error("client: --url is required (or run "
                                 "scripts/bench.sh client)",
                                 NULL);
    return -1;
}

static int select_gateway(bench_opts *o, const given *g)
{
    o->run_gateway = 1;
    o->run_pkcs11 = !g->no_pkcs11; /* the token key */
    return -1;
}

static int select_attest(bench_opts *o, const given *g)
{
    if (g->no_pkcs11)
        return bench_usage_error("ENGINE attest contradicts --no-pkcs11 (the "
                                 "signing key is in the token)",
                                 NULL);
    o->run_attest = 1;
    o->run_pkcs11 = 1;
    o->pkcs11_required = 1;
    return -1;
}

static int defaults_engine(bench_opts *o, const given *g)
{
    (void)g;
    o->seconds = o->quick ? 0.05 : 0.3;
    o->rounds = o->quick ? 1 : 5;
    return -1;
}

/* 1 when the option NAME was given (with OPTIONS, below). */
static int o_seen(const given *g, const char *name);

static int defaults_gateway(bench_opts *o, const given *g)
{
    o->seconds = o->quick ? 0.2 : 1.0;
    o->rounds = o->quick ? 1 : 3;
    if (!o_seen(g, "requests"))
        o->requests = o->quick ? 50 : 1000;
    if (!o_seen(g, "bits"))
        o->bits = o->quick ? 2048 : 4096;
    if (!o_seen(g, "timing"))
        o->timing_n = o->quick ? 10 : 200;
    if (!o_seen(g, "memory-waves"))
        o->mem_waves = o->quick ? 1 : 3;
    if (o->n_clients == 0) {
        o->clients[0] = 1;
        o->clients[1] = 8;
        o->clients[2] = 64;
        o->n_clients = 3;
    }
    if (!o->veild && default_veild(o) != 0)
        return bench_usage_error("gateway: cannot tell where veild is; give "
                                 "--veild PATH",
                                 NULL);
    return -1;
}

static int defaults_attest(bench_opts *o, const given *g)
{
    o->seconds = o->quick ? 0.05 : 0.3;
    o->rounds = o->quick ? 2 : 20;
    if (!o_seen(g, "requests"))
        o->requests = o->quick ? 3 : 50;
    if (!o_seen(g, "bits"))
        o->bits = o->quick ? 2048 : 4096;
    if (!o->tcti)
        o->tcti = env_nonempty("TPM2TOOLS_TCTI");
    if (!o->tcti)
        return bench_usage_error("attest: no TPM: give --tcti, set "
                                 "TPM2TOOLS_TCTI, or run scripts/bench.sh "
                                 "attest (it starts swtpm)",
                                 NULL);
    if (!o->veild && default_veild(o) != 0)
        return bench_usage_error("attest: cannot tell where veild is; give "
                                 "--veild PATH",
                                 NULL);
    return -1;
}

static const bench_cmd COMMANDS[] = {
    {"all", C_ALL, bench_engine_run,
     "software and pkcs11 measurements (default)\n", select_all,
     defaults_engine, NULL, NULL, "pkcs11", ""},
    {"software", C_SOFTWARE, bench_engine_run,
     "RSA-OAEP-SHA256 decrypt (2048/3072/4096) vs OpenSSL,\n"
     "             AES-256-GCM seal (1 KiB, 64 KiB, 10 MiB) vs OpenSSL\n",
     select_software, defaults_engine, NULL, NULL, "pkcs11", ""},
    {"pkcs11", C_PKCS11, bench_engine_run,
     "RSA decrypt in a PKCS#11 token vs a bare C_Decrypt loop,\n"
     "             AES-256-GCM seal in the token vs a bare C_Encrypt loop\n",
     select_pkcs11, defaults_engine,
     "pkcs11: no module (--module or VEIL_TEST_SOFTHSM_MODULE)",
     "pkcs11: no token (--token or VEIL_TEST_SOFTHSM_TOKEN)", "pkcs11", ""},
    {"client", C_CLIENT, bench_client_run,
     "the veil client against a NOMYO protocol server (--url;\n"
     "             scripts/bench.sh client starts tests/veil-fixture): time\n"
     "             per request split into encrypt, network and decrypt (100 B\n"
     "             and 1 MiB prompts) vs a bare OpenSSL seal, a bare libcurl\n"
     "             POST and a bare OpenSSL (or PKCS#11) open; and cold start\n"
     "             (client_new + first request) vs a warm request, for\n"
     "             ephemeral RSA-4096 and RSA-2048 keys and a token key.\n"
     "             Not part of all.\n",
     select_client, defaults_engine, NULL, NULL, "token key", " client"},
    {"gateway", C_GATEWAY, bench_gateway_run,
     "veild (started here: --veild) with the echo model,\n"
     "             driven by N concurrent clients (--clients) for a fixed\n"
     "             count of requests (--requests): req/s, p50/p99 latency\n"
     "             and errors, next to the machine's bare private-RSA rate\n"
     "             with the same key on all cores (the limit), measured in\n"
     "             the same run; for a software key (bare EVP_PKEY_decrypt)\n"
     "             and a token key (bare C_Decrypt); then the timing of\n"
     "             refused packages and veild's memory under 64 concurrent\n"
     "             1 MiB requests.  scripts/bench.sh gateway runs it under a\n"
     "             fresh SoftHSM2 token.  Not part of all.\n",
     select_gateway, defaults_gateway, NULL, NULL, "token key", " gateway"},
    {"attest", C_ATTEST, bench_attest_run,
     "the added latency per answer of signing and TPM\n"
     "             attestation: four veild instances (started here, the\n"
     "             same software server key, the echo model), one client,\n"
     "             sequential requests, interleaved: A standard tier, no\n"
     "             signing key; B standard, signing key (ECDSA P-256 made in\n"
     "             the token for this run); C maximum, TPM quote per answer;\n"
     "             D maximum, tpm_ak_per_request (fresh AK + TPM2_Certify +\n"
     "             quote).  Medians and p90, added ms B-A, C-B, D-B, D-C and\n"
     "             the ratio to A; sampled answers opened and checked.\n"
     "             Needs a TPM (--tcti); scripts/bench.sh attest runs it\n"
     "             under a fresh SoftHSM2 token and swtpm.  Not part of all.\n",
     select_attest, defaults_attest,
     "attest: no module for the signing key (--module or "
     "VEIL_TEST_SOFTHSM_MODULE, or run scripts/bench.sh attest)",
     "attest: no token for the signing key (--token or "
     "VEIL_TEST_SOFTHSM_TOKEN, or run scripts/bench.sh attest)",
     "token key", " attest"},
};
#define N_COMMANDS (sizeof COMMANDS / sizeof COMMANDS[0])

static void print_usage(void)
{
    fputs(HEAD, stdout);
    for (size_t i = 0; i < N_COMMANDS; i++)
        printf("  %-10s %s", COMMANDS[i].name, COMMANDS[i].usage);
    fputs(TAIL, stdout);
}

/* ---- the options -------------------------------------------------------- */

static int parse_uint(const char *s, unsigned lo, unsigned hi, unsigned *out)
{
    char *end = NULL;
    unsigned long v;

    if (*s == '-' || *s == '+')
        return -1;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = (unsigned)v;
    return 0;
}

static int set_seconds(bench_opts *o, given *g, const char *s)
{
    char *end = NULL;
    double v;

    (void)o;
    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v <= 0.0 ||
        v > MAX_SECONDS)
        return -1;
    g->seconds = v;
    return 0;
}

static int set_rounds(bench_opts *o, given *g, const char *s)
{
    (void)o;
    return parse_uint(s, 1, MAX_ROUNDS, &g->rounds);
}

/* "1,8,64": up to GW_MAX_LEVELS levels of 1 to GW_MAX_CLIENTS clients. */
static int set_clients(bench_opts *o, given *g, const char *s)
{
    char buf[128], *p, *comma;

    (void)g;
    if (snprintf(buf, sizeof buf, "%s", s) >= (int)sizeof buf)
        return -1;
    o->n_clients = 0;
    for (p = buf;; p = comma + 1) {
        comma = strchr(p, ',');
        if (comma)
            *comma = '\0';
        if (o->n_clients == GW_MAX_LEVELS ||
            parse_uint(p, 1, GW_MAX_CLIENTS, &o->clients[o->n_clients]) != 0)
            return -1;
        o->n_clients++;
        if (!comma)
            return 0;
    }
}

static int set_bits(bench_opts *o, given *g, const char *s)
{
    (void)g;
    if (parse_uint(s, 2048, 4096, &o->bits) != 0)
        return -1;
    return o->bits == 2048 || o->bits == 3072 || o->bits == 4096 ? 0 : -1;
}

static int set_requests(bench_opts *o, given *g, const char *s)
{
    (void)g;
    return parse_uint(s, 1, GW_MAX_REQUESTS, &o->requests);
}

static int set_workers(bench_opts *o, given *g, const char *s)
{
    (void)g;
    return parse_uint(s, 1, 256, &o->workers);
}

static int set_timing(bench_opts *o, given *g, const char *s)
{
    (void)g;
    return parse_uint(s, 0, 100000, &o->timing_n);
}

static int set_waves(bench_opts *o, given *g, const char *s)
{
    (void)g;
    return parse_uint(s, 0, 100, &o->mem_waves);
}

static int set_tcti(bench_opts *o, given *g, const char *s)
{
    (void)g;
    o->tcti = s;
    return *s ? 0 : -1;
}

static int set_protocol(bench_opts *o, given *g, const char *s)
{
    (void)g;
    if (strcmp(s, "v1") != 0 && strcmp(s, "v2") != 0 &&
        strcmp(s, "v2-only") != 0)
        return -1;
    o->protocol_v2 = strcmp(s, "v1") != 0;
    o->v2_only = strcmp(s, "v2-only") == 0;
    return 0;
}

static int set_no_pkcs11(bench_opts *o, given *g, const char *s)
{
    (void)o;
    (void)s;
    g->no_pkcs11 = 1;
    return 0;
}

static int set_quick(bench_opts *o, given *g, const char *s)
{
    (void)g;
    (void)s;
    o->quick = 1;
    return 0;
}

/* Options that store their value as it is. */
#define STORE(field) offsetof(bench_opts, field)
#define NO_STORE ((size_t)-1)

/* One option.  `set` checks and stores the value (else `store` is the
 * bench_opts field the value goes to); `bad` is the usage error when set
 * refuses it (the value is appended when the text ends in ": ").
 * `cmds` are the subcommands it applies to; `scope` the usage error
 * otherwise.  The scope checks run in this order. */
typedef struct bench_opt {
    const char *name;
    int has_arg;
    int (*set)(bench_opts *o, given *g, const char *arg);
    size_t store;
    const char *bad;
    unsigned cmds;
    const char *scope;
} bench_opt;

static const char URL_SCOPE[] = "--url and --ca-file apply to ENGINE client "
                                "only";
static const char GW_SCOPE[] = "--clients, --protocol, --timing and "
                               "--memory-waves apply to ENGINE gateway only";
static const char GWA_SCOPE[] = "--veild, --requests, --bits and --workers "
                                "apply to ENGINE gateway and attest only";

static const bench_opt OPTIONS[] = {
    {"url", 1, NULL, STORE(url), NULL, C_CLIENT, URL_SCOPE},
    {"ca-file", 1, NULL, STORE(ca_file), NULL, C_CLIENT, URL_SCOPE},
    {"clients", 1, set_clients, NO_STORE,
     "--clients wants up to 8 comma-separated integers in [1, 512], not: ",
     C_GATEWAY, GW_SCOPE},
    {"protocol", 1, set_protocol, NO_STORE,
     "--protocol wants v1, v2 or v2-only, not: ", C_GATEWAY, GW_SCOPE},
    {"timing", 1, set_timing, NO_STORE,
     "--timing wants an integer in [0, 100000], not: ", C_GATEWAY, GW_SCOPE},
    {"memory-waves", 1, set_waves, NO_STORE,
     "--memory-waves wants an integer in [0, 100], not: ", C_GATEWAY, GW_SCOPE},
    {"veild", 1, NULL, STORE(veild), NULL, C_GATEWAY | C_ATTEST, GWA_SCOPE},
    {"requests", 1, set_requests, NO_STORE,
     "--requests wants an integer in [1, 1000000], not: ", C_GATEWAY | C_ATTEST,
     GWA_SCOPE},
    {"bits", 1, set_bits, NO_STORE,
     "--bits wants 2048, 3072 or 4096, not: ", C_GATEWAY | C_ATTEST, GWA_SCOPE},
    {"workers", 1, set_workers, NO_STORE,
     "--workers wants an integer in [1, 256], not: ", C_GATEWAY | C_ATTEST,
     GWA_SCOPE},
    {"tcti", 1, set_tcti, NO_STORE, "--tcti wants a TCTI string", C_ATTEST,
     "--tcti applies to ENGINE attest only"},
    {"seconds", 1, set_seconds, NO_STORE,
     "--seconds wants a number of seconds in (0, 60], not: ", C_ANY & ~C_ATTEST,
     "attest: --seconds does not apply (it counts requests: --requests, "
     "--rounds)"},
    {"rounds", 1, set_rounds, NO_STORE,
     "--rounds wants an integer in [1, 1000], not: ", C_ANY, NULL},
    {"module", 1, NULL, STORE(module), NULL, C_ANY, NULL},
    {"token", 1, NULL, STORE(token), NULL, C_ANY, NULL},
    {"pin-source", 1, NULL, STORE(pin_spec), NULL, C_ANY, NULL},
    {"no-pkcs11", 0, set_no_pkcs11, NO_STORE, NULL, C_ANY, NULL},
    {"quick", 0, set_quick, NO_STORE, NULL, C_ANY, NULL},
};
#define N_OPTIONS (sizeof OPTIONS / sizeof OPTIONS[0])

static int o_seen(const given *g, const char *name)
{
    for (size_t i = 0; i < N_OPTIONS; i++)
        if (strcmp(OPTIONS[i].name, name) == 0)
            return (g->seen >> i) & 1u;
    return 0;
}

static int apply_option(const bench_opt *r, bench_opts *o, given *g,
                        const char *arg)
{
    size_t n;

    if (!r->set) {
        *(const char **)((char *)o + r->store) = arg;
        return -1;
    }
    if (r->set(o, g, arg) == 0)
        return -1;
    n = strlen(r->bad);
    return bench_usage_error(
        r->bad, n >= 2 && !strcmp(r->bad + n - 2, ": ") ? arg : NULL);
}

/* The PKCS#11 settings from the environment; the PKCS#11 side off (with a
 * skip note) or a usage error when the module or token is missing. */
static int pkcs11_settings(bench_opts *o, const bench_cmd *c)
{
    if (!o->module)
        o->module = env_nonempty("VEIL_TEST_SOFTHSM_MODULE");
    if (!o->token)
        o->token = env_nonempty("VEIL_TEST_SOFTHSM_TOKEN");
    if (!o->pin_spec)
        o->pin_spec = env_nonempty("VEIL_PIN_SOURCE");
    if (!o->pin_spec && env_nonempty("VEIL_TEST_PIN_FILE")) {
        int n = snprintf(o->pin_spec_buf, sizeof o->pin_spec_buf, "file:%s",
                         getenv("VEIL_TEST_PIN_FILE"));
        if (n < 0 || (size_t)n >= sizeof o->pin_spec_buf)
            return bench_usage_error("VEIL_TEST_PIN_FILE is too long", NULL);
        o->pin_spec = o->pin_spec_buf;
    }
    if (!o->run_pkcs11 || (o->module && o->token))
        return -1;
    if (c->no_module)
        return bench_usage_error(!o->module ? c->no_module : c->no_token, NULL);
    if (!o->module)
        snprintf(o->skip_buf, sizeof o->skip_buf,
                 "# %s: skipped (no module: set --module or "
                 "VEIL_TEST_SOFTHSM_MODULE, or run scripts/bench.sh%s)",
                 c->part, c->script);
    else
        snprintf(o->skip_buf, sizeof o->skip_buf,
                 "# %s: skipped (no token: set --token or "
                 "VEIL_TEST_SOFTHSM_TOKEN, or run scripts/bench.sh%s)",
                 c->part, c->script);
    o->skip_note = o->skip_buf;
    o->run_pkcs11 = 0;
    return -1;
}

/* Returns the subcommand to run, or NULL with *status the exit status. */
static const bench_cmd *parse_args(int argc, char **argv, bench_opts *o,
                                   int *status)
{
    struct option longopts[N_OPTIONS + 2];
    const char *name = "all";
    const bench_cmd *c = NULL;
    given g;
    int ch, st;

    memset(o, 0, sizeof *o);
    memset(&g, 0, sizeof g);
    for (size_t i = 0; i < N_OPTIONS; i++)
        longopts[i] = (struct option){OPTIONS[i].name,
                                      OPTIONS[i].has_arg ? required_argument
                                                         : no_argument,
                                      NULL, 256 + (int)i};
    longopts[N_OPTIONS] = (struct option){"help", no_argument, NULL, 'h'};
    longopts[N_OPTIONS + 1] = (struct option){NULL, 0, NULL, 0};

    *status = -1;
    opterr = 0;
    while (*status < 0 &&
           (ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (ch >= 256 && (size_t)(ch - 256) < N_OPTIONS) {
            g.seen |= 1u << (ch - 256);
            *status = apply_option(&OPTIONS[ch - 256], o, &g, optarg);
        } else if (ch == 'h') {
            print_usage();
            *status = 0;
        } else if (ch == ':') {
            *status = bench_usage_error("option needs an argument: ",
                                        argv[optind - 1]);
        } else {
            *status = bench_usage_error("unknown option: ", argv[optind - 1]);
        }
    }
    if (*status >= 0)
        return NULL;
    if (optind < argc)
        name = argv[optind++];
    if (optind < argc) {
        *status = bench_usage_error("unexpected argument: ", argv[optind]);
        return NULL;
    }
    for (size_t i = 0; i < N_COMMANDS && !c; i++)
        if (strcmp(COMMANDS[i].name, name) == 0)
            c = &COMMANDS[i];
    if (!c) {
        *status = bench_usage_error("ENGINE must be all, software, pkcs11, "
                                    "client, gateway or attest, not: ",
                                    name);
        return NULL;
    }
    if ((st = c->select(o, &g)) >= 0)
        goto fail;
    for (size_t i = 0; i < N_OPTIONS; i++)
        if ((g.seen >> i) & 1u && !(OPTIONS[i].cmds & c->bit)) {
            st = bench_usage_error(OPTIONS[i].scope, NULL);
            goto fail;
        }
    if ((st = c->defaults(o, &g)) >= 0)
        goto fail;
    if (o_seen(&g, "seconds"))
        o->seconds = g.seconds;
    if (o_seen(&g, "rounds"))
        o->rounds = g.rounds;
    if ((st = pkcs11_settings(o, c)) >= 0)
        goto fail;
    return c;
fail:
    *status = st;
    return NULL;
}

int main(int argc, char **argv)
{
    bench_opts o;
    int status;
    const bench_cmd *c = parse_args(argc, argv, &o, &status);

    return c ? c->run(&o) : status;
}
