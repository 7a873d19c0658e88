/* veil-bench: operations per second through each veil provider, next to
 * the same operation done directly in the same process, and the ratio
 * veil / baseline.
 *
 *   software  RSA-OAEP-SHA256 decrypt vs bare OpenSSL EVP_PKEY_decrypt,
 *             AES-256-GCM seal vs bare OpenSSL EVP
 *   pkcs11    RSA-OAEP-SHA256 decrypt vs a bare C_Decrypt loop on the same
 *             token key (SoftHSM2), and AES-256-GCM seal in the token vs
 *             a bare C_Encrypt loop
 *   client    the client's cost per request against a protocol server,
 *             and its cold start (see bench_client.c)
 *   gateway   veild under load next to the machine's bare RSA limit,
 *             refusal timing, and veild's memory (see bench_gateway.c)
 *   attest    the latency signing and TPM attestation add to an answer:
 *             four veild configurations, interleaved (bench_gateway.c)
 *
 * The machines this runs on are shared and noisy, so each measurement is
 * made of interleaved rounds (veil, baseline, veil, baseline, ...), each a
 * fixed wall-clock slice, and the median rate of each side is compared.
 * A ratio below the target is printed as BELOW but never changes the exit
 * status: there are no timed assertions.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>

#include "bench.h"

#define TARGET 0.90 /* veil should reach 90% of the bare rate */

static const char *const USAGE =
    "Usage: veil-bench [ENGINE] [OPTIONS]\n"
    "\n"
    "Measures operations per second through veil next to the same operation\n"
    "done directly (bare OpenSSL, bare PKCS#11) in the same process, and\n"
    "prints ratio = veil / baseline.  Rounds are interleaved (veil, baseline,\n"
    "veil, ...) and the median rate of each side is compared.\n"
    "\n"
    "ENGINE:\n"
    "  all        software and pkcs11 measurements (default)\n"
    "  software   RSA-OAEP-SHA256 decrypt (2048/3072/4096) vs OpenSSL,\n"
    "             AES-256-GCM seal (1 KiB, 64 KiB, 10 MiB) vs OpenSSL\n"
    "  pkcs11     RSA decrypt in a PKCS#11 token vs a bare C_Decrypt loop,\n"
    "             AES-256-GCM seal in the token vs a bare C_Encrypt loop\n"
    "  client     the veil client against a NOMYO protocol server (--url;\n"
    "             scripts/bench.sh client starts tests/veil-fixture): time\n"
    "             per request split into encrypt, network and decrypt (100 B\n"
    "             and 1 MiB prompts) vs a bare OpenSSL seal, a bare libcurl\n"
    "             POST and a bare OpenSSL (or PKCS#11) open; and cold start\n"
    "             (client_new + first request) vs a warm request, for\n"
    "             ephemeral RSA-4096 and RSA-2048 keys and a token key.\n"
    "             Not part of all.\n"
    "  gateway    veild (started here: --veild) with the echo model,\n"
    "             driven by N concurrent clients (--clients) for a fixed\n"
    "             count of requests (--requests): req/s, p50/p99 latency\n"
    "             and errors, next to the machine's bare private-RSA rate\n"
    "             with the same key on all cores (the limit), measured in\n"
    "             the same run; for a software key (bare EVP_PKEY_decrypt)\n"
    "             and a token key (bare C_Decrypt); then the timing of\n"
    "             refused packages and veild's memory under 64 concurrent\n"
    "             1 MiB requests.  scripts/bench.sh gateway runs it under a\n"
    "             fresh SoftHSM2 token.  Not part of all.\n"
    "  attest     the added latency per answer of signing and TPM\n"
    "             attestation: four veild instances (started here, the\n"
    "             same software server key, the echo model), one client,\n"
    "             sequential requests, interleaved: A standard tier, no\n"
    "             signing key; B standard, signing key (ECDSA P-256 made in\n"
    "             the token for this run); C maximum, TPM quote per answer;\n"
    "             D maximum, tpm_ak_per_request (fresh AK + TPM2_Certify +\n"
    "             quote).  Medians and p90, added ms B-A, C-B, D-B, D-C and\n"
    "             the ratio to A; sampled answers opened and checked.\n"
    "             Needs a TPM (--tcti); scripts/bench.sh attest runs it\n"
    "             under a fresh SoftHSM2 token and swtpm.  Not part of all.\n"
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

static int usage_error(const char *fmt, const char *arg)
{
    fputs("veil-bench: ", stderr);
    fprintf(stderr, "%s%s\n", fmt, arg ? arg : "");
    fputs("Try 'veil-bench --help'.\n", stderr);
    return EXIT_USAGE;
}

static int parse_seconds(const char *s, double *out)
{
    char *end = NULL;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v <= 0.0 ||
        v > MAX_SECONDS)
        return -1;
    *out = v;
    return 0;
}

static int parse_rounds(const char *s, unsigned *out)
{
    char *end = NULL;
    unsigned long v;

    if (*s == '-' || *s == '+')
        return -1;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v < 1 || v > MAX_ROUNDS)
        return -1;
    *out = (unsigned)v;
    return 0;
}

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

/* "1,8,64": up to GW_MAX_LEVELS levels of 1 to GW_MAX_CLIENTS clients. */
static int parse_levels(const char *s, bench_opts *o)
{
    char buf[128], *p, *comma;

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

/* Returns -1 when all went well and the program should run, else an exit
 * status. */
static int parse_args(int argc, char **argv, bench_opts *o)
{
    enum {
        O_SECONDS = 256,
        O_ROUNDS,
        O_MODULE,
        O_TOKEN,
        O_PIN,
        O_NOP11,
        O_QUICK,
        O_URL,
        O_CAFILE,
        O_VEILD,
        O_REQUESTS,
        O_CLIENTS,
        O_BITS,
        O_WORKERS,
        O_TIMING,
        O_MEMWAVES,
        O_TCTI
    };
    static const struct option longopts[] = {
        {"seconds", required_argument, NULL, O_SECONDS},
        {"rounds", required_argument, NULL, O_ROUNDS},
        {"module", required_argument, NULL, O_MODULE},
        {"token", required_argument, NULL, O_TOKEN},
        {"pin-source", required_argument, NULL, O_PIN},
        {"no-pkcs11", no_argument, NULL, O_NOP11},
        {"quick", no_argument, NULL, O_QUICK},
        {"url", required_argument, NULL, O_URL},
        {"ca-file", required_argument, NULL, O_CAFILE},
        {"veild", required_argument, NULL, O_VEILD},
        {"requests", required_argument, NULL, O_REQUESTS},
        {"clients", required_argument, NULL, O_CLIENTS},
        {"bits", required_argument, NULL, O_BITS},
        {"workers", required_argument, NULL, O_WORKERS},
        {"timing", required_argument, NULL, O_TIMING},
        {"memory-waves", required_argument, NULL, O_MEMWAVES},
        {"tcti", required_argument, NULL, O_TCTI},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    /* gw_opt: an option of gateway and attest; gw_only: of gateway only */
    int c, have_seconds = 0, have_rounds = 0, no_pkcs11 = 0, gw_opt = 0;
    int gw_only = 0;
    int have_requests = 0, have_bits = 0, have_timing = 0, have_waves = 0;
    double seconds = 0;
    unsigned rounds = 0, v;
    const char *eng = "all";

    memset(o, 0, sizeof *o);
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case O_SECONDS:
            if (parse_seconds(optarg, &seconds) != 0)
                return usage_error("--seconds wants a number of seconds in "
                                   "(0, 60], not: ",
                                   optarg);
            have_seconds = 1;
            break;
        case O_ROUNDS:
            if (parse_rounds(optarg, &rounds) != 0)
                return usage_error("--rounds wants an integer in [1, 1000], "
                                   "not: ",
                                   optarg);
            have_rounds = 1;
            break;
        case O_MODULE:
            o->module = optarg;
            break;
        case O_TOKEN:
            o->token = optarg;
            break;
        case O_PIN:
            o->pin_spec = optarg;
            break;
        case O_NOP11:
            no_pkcs11 = 1;
            break;
        case O_QUICK:
            o->quick = 1;
            break;
        case O_URL:
            o->url = optarg;
            break;
        case O_CAFILE:
            o->ca_file = optarg;
            break;
        case O_VEILD:
            o->veild = optarg;
            gw_opt = 1;
            break;
        case O_REQUESTS:
            if (parse_uint(optarg, 1, GW_MAX_REQUESTS, &o->requests) != 0)
                return usage_error("--requests wants an integer in "
                                   "[1, 1000000], not: ",
                                   optarg);
            have_requests = gw_opt = 1;
            break;
        case O_CLIENTS:
            if (parse_levels(optarg, o) != 0)
                return usage_error("--clients wants up to 8 comma-separated "
                                   "integers in [1, 512], not: ",
                                   optarg);
            gw_only = 1;
            break;
        case O_BITS:
            if (parse_uint(optarg, 2048, 4096, &v) != 0 ||
                (v != 2048 && v != 3072 && v != 4096))
                return usage_error("--bits wants 2048, 3072 or 4096, not: ",
                                   optarg);
            o->bits = v;
            have_bits = gw_opt = 1;
            break;
        case O_WORKERS:
            if (parse_uint(optarg, 1, 256, &o->workers) != 0)
                return usage_error("--workers wants an integer in [1, 256], "
                                   "not: ",
                                   optarg);
            gw_opt = 1;
            break;
        case O_TIMING:
            if (parse_uint(optarg, 0, 100000, &o->timing_n) != 0)
                return usage_error("--timing wants an integer in "
                                   "[0, 100000], not: ",
                                   optarg);
            have_timing = gw_only = 1;
            break;
        case O_MEMWAVES:
            if (parse_uint(optarg, 0, 100, &o->mem_waves) != 0)
                return usage_error("--memory-waves wants an integer in "
                                   "[0, 100], not: ",
                                   optarg);
            have_waves = gw_only = 1;
            break;
        case O_TCTI:
            if (!*optarg)
                return usage_error("--tcti wants a TCTI string", NULL);
            o->tcti = optarg;
            break;
        case 'h':
            fputs(USAGE, stdout);
            return 0;
        case ':':
            return usage_error("option needs an argument: ", argv[optind - 1]);
        default:
            return usage_error("unknown option: ", argv[optind - 1]);
        }
    }
    if (optind < argc)
        eng = argv[optind++];
    if (optind < argc)
        return usage_error("unexpected argument: ", argv[optind]);

    if (strcmp(eng, "all") == 0) {
        o->run_software = 1;
        o->run_pkcs11 = !no_pkcs11;
    } else if (strcmp(eng, "software") == 0) {
        o->run_software = 1;
    } else if (strcmp(eng, "pkcs11") == 0) {
        if (no_pkcs11)
            return usage_error("ENGINE pkcs11 contradicts --no-pkcs11", NULL);
        o->run_pkcs11 = 1;
        o->pkcs11_required = 1;
    } else if (strcmp(eng, "gateway") == 0) {
        o->run_gateway = 1;
        o->run_pkcs11 = !no_pkcs11; /* the token key */
    } else if (strcmp(eng, "attest") == 0) {
        if (no_pkcs11)
            return usage_error("ENGINE attest contradicts --no-pkcs11 (the "
                               "signing key is in the token)",
                               NULL);
        o->run_attest = 1;
        o->run_pkcs11 = 1;
        o->pkcs11_required = 1;
    } else if (strcmp(eng, "client") == 0) {
        o->run_client = 1;
        o->run_pkcs11 = !no_pkcs11; /* the token key */
        if (!o->url)
            return usage_error("client: --url is required (or run "
                               "scripts/bench.sh client)",
                               NULL);
    } else {
        return usage_error("ENGINE must be all, software, pkcs11, client, "
                           "gateway or attest, not: ",
                           eng);
    }
    if (!o->run_client && (o->url || o->ca_file))
        return usage_error("--url and --ca-file apply to ENGINE client only",
                           NULL);
    if (!o->run_gateway && gw_only)
        return usage_error("--clients, --timing and --memory-waves apply to "
                           "ENGINE gateway only",
                           NULL);
    if (!o->run_gateway && !o->run_attest && gw_opt)
        return usage_error("--veild, --requests, --bits and --workers apply "
                           "to ENGINE gateway and attest only",
                           NULL);
    if (!o->run_attest && o->tcti)
        return usage_error("--tcti applies to ENGINE attest only", NULL);
    if (o->run_attest && have_seconds)
        return usage_error("attest: --seconds does not apply (it counts "
                           "requests: --requests, --rounds)",
                           NULL);

    o->seconds = o->quick ? 0.05 : 0.3;
    o->rounds = o->quick ? 1 : 5;
    if (o->run_gateway) {
        o->seconds = o->quick ? 0.2 : 1.0;
        o->rounds = o->quick ? 1 : 3;
        if (!have_requests)
            o->requests = o->quick ? 50 : 1000;
        if (!have_bits)
            o->bits = o->quick ? 2048 : 4096;
        if (!have_timing)
            o->timing_n = o->quick ? 10 : 200;
        if (!have_waves)
            o->mem_waves = o->quick ? 1 : 3;
        if (o->n_clients == 0) {
            o->clients[0] = 1;
            o->clients[1] = 8;
            o->clients[2] = 64;
            o->n_clients = 3;
        }
        if (!o->veild && default_veild(o) != 0)
            return usage_error("gateway: cannot tell where veild is; give "
                               "--veild PATH",
                               NULL);
    }
    if (o->run_attest) {
        o->rounds = o->quick ? 2 : 20;
        if (!have_requests)
            o->requests = o->quick ? 3 : 50;
        if (!have_bits)
            o->bits = o->quick ? 2048 : 4096;
        if (!o->tcti)
            o->tcti = env_nonempty("TPM2TOOLS_TCTI");
        if (!o->tcti)
            return usage_error("attest: no TPM: give --tcti, set "
                               "TPM2TOOLS_TCTI, or run scripts/bench.sh "
                               "attest (it starts swtpm)",
                               NULL);
        if (!o->veild && default_veild(o) != 0)
            return usage_error("attest: cannot tell where veild is; give "
                               "--veild PATH",
                               NULL);
    }
    if (have_seconds)
        o->seconds = seconds;
    if (have_rounds)
        o->rounds = rounds;

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
            return usage_error("VEIL_TEST_PIN_FILE is too long", NULL);
        o->pin_spec = o->pin_spec_buf;
    }

    if (o->run_pkcs11 && (!o->module || !o->token)) {
        if (o->run_attest)
            return usage_error(!o->module
                                   ? "attest: no module for the signing key "
                                     "(--module or VEIL_TEST_SOFTHSM_MODULE, "
                                     "or run scripts/bench.sh attest)"
                                   : "attest: no token for the signing key "
                                     "(--token or VEIL_TEST_SOFTHSM_TOKEN, "
                                     "or run scripts/bench.sh attest)",
                               NULL);
        if (o->pkcs11_required)
            return usage_error(!o->module ? "pkcs11: no module (--module or "
                                            "VEIL_TEST_SOFTHSM_MODULE)"
                                          : "pkcs11: no token (--token or "
                                            "VEIL_TEST_SOFTHSM_TOKEN)",
                               NULL);
        if (o->run_gateway)
            o->skip_note = !o->module
                               ? "# token key: skipped (no module: set "
                                 "--module or VEIL_TEST_SOFTHSM_MODULE, or "
                                 "run scripts/bench.sh gateway)"
                               : "# token key: skipped (no token: set "
                                 "--token or VEIL_TEST_SOFTHSM_TOKEN, or "
                                 "run scripts/bench.sh gateway)";
        else if (o->run_client)
            o->skip_note = !o->module
                               ? "# token key: skipped (no module: set "
                                 "--module or VEIL_TEST_SOFTHSM_MODULE, or "
                                 "run scripts/bench.sh client)"
                               : "# token key: skipped (no token: set "
                                 "--token or VEIL_TEST_SOFTHSM_TOKEN, or "
                                 "run scripts/bench.sh client)";
        else
            o->skip_note = !o->module
                               ? "# pkcs11: skipped (no module: set --module "
                                 "or VEIL_TEST_SOFTHSM_MODULE, or run "
                                 "scripts/bench.sh)"
                               : "# pkcs11: skipped (no token: set --token or "
                                 "VEIL_TEST_SOFTHSM_TOKEN, or run "
                                 "scripts/bench.sh)";
        o->run_pkcs11 = 0;
    }
    return -1;
}

/* ---- errors ------------------------------------------------------------- */

const char *ckr_name(CK_RV rv)
{
    switch (rv) {
    case CKR_OK:
        return "CKR_OK";
    case CKR_ARGUMENTS_BAD:
        return "CKR_ARGUMENTS_BAD";
    case CKR_BUFFER_TOO_SMALL:
        return "CKR_BUFFER_TOO_SMALL";
    case CKR_CRYPTOKI_NOT_INITIALIZED:
        return "CKR_CRYPTOKI_NOT_INITIALIZED";
    case CKR_CRYPTOKI_ALREADY_INITIALIZED:
        return "CKR_CRYPTOKI_ALREADY_INITIALIZED";
    case CKR_DEVICE_ERROR:
        return "CKR_DEVICE_ERROR";
    case CKR_ENCRYPTED_DATA_INVALID:
        return "CKR_ENCRYPTED_DATA_INVALID";
    case CKR_ENCRYPTED_DATA_LEN_RANGE:
        return "CKR_ENCRYPTED_DATA_LEN_RANGE";
    case CKR_FUNCTION_FAILED:
        return "CKR_FUNCTION_FAILED";
    case CKR_GENERAL_ERROR:
        return "CKR_GENERAL_ERROR";
    case CKR_HOST_MEMORY:
        return "CKR_HOST_MEMORY";
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
        return "CKR_KEY_FUNCTION_NOT_PERMITTED";
    case CKR_KEY_HANDLE_INVALID:
        return "CKR_KEY_HANDLE_INVALID";
    case CKR_KEY_TYPE_INCONSISTENT:
        return "CKR_KEY_TYPE_INCONSISTENT";
    case CKR_MECHANISM_INVALID:
        return "CKR_MECHANISM_INVALID";
    case CKR_MECHANISM_PARAM_INVALID:
        return "CKR_MECHANISM_PARAM_INVALID";
    case CKR_OPERATION_ACTIVE:
        return "CKR_OPERATION_ACTIVE";
    case CKR_SESSION_HANDLE_INVALID:
        return "CKR_SESSION_HANDLE_INVALID";
    case CKR_TEMPLATE_INCOMPLETE:
        return "CKR_TEMPLATE_INCOMPLETE";
    case CKR_TEMPLATE_INCONSISTENT:
        return "CKR_TEMPLATE_INCONSISTENT";
    case CKR_TOKEN_NOT_PRESENT:
        return "CKR_TOKEN_NOT_PRESENT";
    case CKR_USER_NOT_LOGGED_IN:
        return "CKR_USER_NOT_LOGGED_IN";
    default:
        return "CKR_?";
    }
}

int ckr_fail(const char *what, CK_RV rv)
{
    fprintf(stderr, "veil-bench: %s failed: %s (0x%lx)\n", what, ckr_name(rv),
            (unsigned long)rv);
    return -1;
}

/* ---- measuring ---------------------------------------------------------- */

static void print_table_header(void)
{
    printf("%-36s %12s %12s %-4s %7s %6s  %s\n", "measurement", "veil",
           "baseline", "unit", "ratio", "target", "result");
}

/* Interleaved rounds of veil_op and base_op; prints one table line.
 * `scale` turns operations per second into `unit`. */
static int measure(const bench_opts *o, const char *name, const char *unit,
                   double scale, bench_op veil_op, void *veil_ctx,
                   bench_op base_op, void *base_ctx, double *ratio_out)
{
    double vr[MAX_ROUNDS], br[MAX_ROUNDS];
    double v, b, ratio;
    unsigned r;

    for (r = 0; r < o->rounds; r++) {
        if (time_slice(veil_op, veil_ctx, o->seconds, &vr[r]) != 0 ||
            time_slice(base_op, base_ctx, o->seconds, &br[r]) != 0)
            return -1;
    }
    v = median(vr, o->rounds) * scale;
    b = median(br, o->rounds) * scale;
    ratio = b > 0 ? v / b : 0;
    printf("%-36s %12.1f %12.1f %-4s %7.3f %6.2f  %s\n", name, v, b, unit,
           ratio, TARGET, ratio >= TARGET ? "ok" : "BELOW");
    fflush(stdout);
    if (ratio_out)
        *ratio_out = ratio;
    return 0;
}

/* ---- software RSA ------------------------------------------------------- */

typedef struct rsa_sw_ctx {
    veil_engine *e;
    veil_key *key;  /* veil's copy of the key (software provider) */
    EVP_PKEY *pkey; /* the same key, for bare OpenSSL */
    uint8_t ct[512];
    size_t ct_len;
    uint8_t out[512];
    size_t out_len;
} rsa_sw_ctx;

static int op_veil_rsa_decrypt(void *arg)
{
    rsa_sw_ctx *c = arg;
    veil_secbuf *pt = NULL;

    if (veil_rsa_decrypt(c->e, c->key, NULL, c->ct, c->ct_len, &pt) != VEIL_OK)
        return veil_fail("veil_rsa_decrypt");
    veil_secbuf_free(pt);
    return 0;
}

/* The baseline makes a fresh EVP_PKEY_CTX per operation: that is what a
 * straightforward caller of EVP_PKEY_decrypt does, and a fair match for an
 * engine call that carries no per-key context between calls. */
static int op_ossl_rsa_decrypt(void *arg)
{
    rsa_sw_ctx *c = arg;
    size_t outlen = sizeof c->out;

    if (ossl_oaep_decrypt(c->pkey, c->ct, c->ct_len, c->out, &outlen) != 0)
        return ossl_fail("EVP_PKEY_decrypt");
    c->out_len = outlen;
    return 0;
}

static int write_pem_file(const char *path, EVP_PKEY *pkey, int priv)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    FILE *fp;
    int ok;

    if (fd < 0) {
        fprintf(stderr, "veil-bench: cannot create %s: %s\n", path,
                strerror(errno));
        return -1;
    }
    fp = fdopen(fd, "w");
    if (!fp) {
        fprintf(stderr, "veil-bench: fdopen %s: %s\n", path, strerror(errno));
        close(fd);
        return -1;
    }
    ok = priv ? PEM_write_PrivateKey(fp, pkey, NULL, NULL, 0, NULL, NULL)
              : PEM_write_PUBKEY(fp, pkey);
    if (fclose(fp) != 0)
        ok = 0;
    if (ok != 1) {
        ERR_clear_error();
        fprintf(stderr, "veil-bench: cannot write %s\n", path);
        return -1;
    }
    return 0;
}

/* 1 when veil's key and pkey have the same public key. */
static int same_public_key(const veil_key *k, EVP_PKEY *pkey)
{
    uint8_t *vder = NULL, *oder = NULL;
    size_t vlen = 0;
    int olen, same;

    if (veil_key_public_der(k, &vder, &vlen) != VEIL_OK)
        return veil_fail("veil_key_public_der");
    olen = i2d_PUBKEY(pkey, &oder);
    if (olen <= 0) {
        free(vder);
        return ossl_fail("i2d_PUBKEY");
    }
    same = (size_t)olen == vlen && memcmp(vder, oder, vlen) == 0;
    free(vder);
    OPENSSL_free(oder);
    return same;
}

/* Generates an RSA key with OpenSSL and loads the very same key into veil
 * through a temporary key directory (the public API exports no private
 * keys, so this is how both sides get one key).  The files are removed as
 * soon as veil has read them. */
static int make_shared_rsa_key(veil_engine *e, unsigned bits,
                               EVP_PKEY **pkey_out, veil_key **key_out)
{
    const char *tmp = env_nonempty("TMPDIR");
    char dir[PATH_MAX], priv[PATH_MAX + 32], pub[PATH_MAX + 32];
    char ref[PATH_MAX + 8];
    EVP_PKEY *pkey;
    veil_key *key = NULL;
    veil_rc rc;
    int n, ret = -1, have_priv = 0, have_pub = 0;

    *pkey_out = NULL;
    *key_out = NULL;
    pkey = EVP_RSA_gen(bits);
    if (!pkey)
        return ossl_fail("EVP_RSA_gen");

    n = snprintf(dir, sizeof dir, "%s/veil-bench.XXXXXX", tmp ? tmp : "/tmp");
    if (n < 0 || (size_t)n >= sizeof dir) {
        fprintf(stderr, "veil-bench: TMPDIR is too long\n");
        EVP_PKEY_free(pkey);
        return -1;
    }
    if (!mkdtemp(dir)) {
        fprintf(stderr, "veil-bench: mkdtemp %s: %s\n", dir, strerror(errno));
        EVP_PKEY_free(pkey);
        return -1;
    }
    snprintf(priv, sizeof priv, "%s/private_key.pem", dir);
    snprintf(pub, sizeof pub, "%s/public_key.pem", dir);
    snprintf(ref, sizeof ref, "dir:%s", dir);

    have_priv = write_pem_file(priv, pkey, 1) == 0;
    have_pub = have_priv && write_pem_file(pub, pkey, 0) == 0;
    if (have_pub) {
        rc = veil_key_open(e, ref, &key);
        if (rc != VEIL_OK)
            veil_fail("veil_key_open(dir:...)");
    }
    if (have_pub && unlink(pub) != 0)
        fprintf(stderr, "veil-bench: unlink %s: %s\n", pub, strerror(errno));
    if (have_priv && unlink(priv) != 0)
        fprintf(stderr, "veil-bench: unlink %s: %s\n", priv, strerror(errno));
    if (rmdir(dir) != 0)
        fprintf(stderr, "veil-bench: rmdir %s: %s\n", dir, strerror(errno));

    if (key) {
        int same = same_public_key(key, pkey);
        if (same == 1) {
            ret = 0;
        } else if (same == 0) {
            fprintf(stderr,
                    "veil-bench: the key veil loaded from %s is not "
                    "the key that was written there\n",
                    ref);
        }
    }
    if (ret != 0) {
        veil_key_free(key);
        EVP_PKEY_free(pkey);
        return -1;
    }
    *pkey_out = pkey;
    *key_out = key;
    return 0;
}

static int check_plaintext(const char *who, const uint8_t *got, size_t len,
                           const uint8_t *want, size_t want_len)
{
    if (len != want_len || memcmp(got, want, len) != 0) {
        fprintf(stderr, "veil-bench: %s returned the wrong plaintext\n", who);
        return -1;
    }
    return 0;
}

static int bench_rsa_software(const bench_opts *o, veil_engine *e,
                              unsigned bits)
{
    rsa_sw_ctx c;
    uint8_t msg[RSA_MSG_LEN];
    veil_secbuf *pt = NULL;
    char name[64];
    int ret = -1;

    memset(&c, 0, sizeof c);
    c.e = e;
    if (make_shared_rsa_key(e, bits, &c.pkey, &c.key) != 0)
        return -1;
    if (veil_random(e, msg, sizeof msg) != VEIL_OK) {
        veil_fail("veil_random");
        goto out;
    }
    c.ct_len = sizeof c.ct;
    if (veil_rsa_encrypt(e, c.key, NULL, msg, sizeof msg, c.ct, &c.ct_len) !=
        VEIL_OK) {
        veil_fail("veil_rsa_encrypt");
        goto out;
    }
    /* Both sides must recover the message before anything is timed. */
    if (veil_rsa_decrypt(e, c.key, NULL, c.ct, c.ct_len, &pt) != VEIL_OK) {
        veil_fail("veil_rsa_decrypt");
        goto out;
    }
    if (check_plaintext("veil_rsa_decrypt", veil_secbuf_data(pt),
                        veil_secbuf_len(pt), msg, sizeof msg) != 0 ||
        op_ossl_rsa_decrypt(&c) != 0 ||
        check_plaintext("EVP_PKEY_decrypt", c.out, c.out_len, msg,
                        sizeof msg) != 0)
        goto out;

    snprintf(name, sizeof name, "software rsa%u oaep-decrypt", bits);
    ret = measure(o, name, "op/s", 1.0, op_veil_rsa_decrypt, &c,
                  op_ossl_rsa_decrypt, &c, NULL);
out:
    veil_secbuf_free(pt);
    OPENSSL_cleanse(c.out, sizeof c.out);
    OPENSSL_cleanse(msg, sizeof msg);
    veil_key_free(c.key);
    EVP_PKEY_free(c.pkey);
    return ret;
}

/* ---- software AES-GCM --------------------------------------------------- */

typedef struct aes_ctx {
    veil_engine *e;
    uint8_t key[32];
    uint8_t iv[GCM_IV_LEN]; /* reused on purpose: nothing here is secret */
    const uint8_t *pt;
    size_t len;
    uint8_t *ct_veil;
    uint8_t tag_veil[VEIL_GCM_TAG_LEN];
    uint8_t *ct_base; /* baseline output; for PKCS#11 len + tag bytes */
    uint8_t tag_base[VEIL_GCM_TAG_LEN];
} aes_ctx;

static int op_veil_gcm_seal(void *arg)
{
    aes_ctx *c = arg;

    if (veil_aes_gcm_seal(c->e, c->key, sizeof c->key, c->iv, sizeof c->iv,
                          NULL, 0, c->pt, c->len, c->ct_veil,
                          c->tag_veil) != VEIL_OK)
        return veil_fail("veil_aes_gcm_seal");
    return 0;
}

/* Bare EVP, a fresh EVP_CIPHER_CTX per operation. */
static int op_ossl_gcm_seal(void *arg)
{
    aes_ctx *c = arg;

    if (ossl_gcm_seal(c->key, c->iv, sizeof c->iv, c->pt, c->len, c->ct_base,
                      c->tag_base) != 0)
        return ossl_fail("EVP AES-256-GCM seal");
    return 0;
}

/* Allocates the buffers for one message size; fills key, iv and pt. */
static int aes_ctx_init(aes_ctx *c, veil_engine *e, size_t len,
                        size_t base_extra)
{
    uint8_t *pt;
    size_t i;

    memset(c, 0, sizeof *c);
    c->e = e;
    c->len = len;
    pt = malloc(len);
    c->ct_veil = malloc(len);
    c->ct_base = malloc(len + base_extra);
    if (!pt || !c->ct_veil || !c->ct_base) {
        free(pt);
        fprintf(stderr, "veil-bench: out of memory\n");
        return -1;
    }
    for (i = 0; i < len; i++)
        pt[i] = (uint8_t)(i * 131u + 7u);
    c->pt = pt;
    if (veil_random(e, c->key, sizeof c->key) != VEIL_OK ||
        veil_random(e, c->iv, sizeof c->iv) != VEIL_OK)
        return veil_fail("veil_random");
    return 0;
}

static void aes_ctx_free(aes_ctx *c)
{
    free((void *)c->pt);
    free(c->ct_veil);
    free(c->ct_base);
    memset(c, 0, sizeof *c);
}

static int bench_aes_software(const bench_opts *o, veil_engine *e, size_t len)
{
    aes_ctx c;
    char name[96], sz[32];
    int ret = -1;

    if (len > INT_MAX)
        return -1;
    if (aes_ctx_init(&c, e, len, 0) != 0)
        goto out;
    /* One call each, compared, before anything is timed (also warms up). */
    if (op_veil_gcm_seal(&c) != 0 || op_ossl_gcm_seal(&c) != 0)
        goto out;
    if (memcmp(c.ct_veil, c.ct_base, len) != 0 ||
        memcmp(c.tag_veil, c.tag_base, sizeof c.tag_veil) != 0) {
        fprintf(stderr,
                "veil-bench: veil_aes_gcm_seal and OpenSSL disagree "
                "(%zu bytes)\n",
                len);
        goto out;
    }
    size_name(len, sz, sizeof sz);
    snprintf(name, sizeof name, "software aes256-gcm seal %s", sz);
    ret = measure(o, name, "MB/s", (double)len / 1e6, op_veil_gcm_seal, &c,
                  op_ossl_gcm_seal, &c, NULL);
out:
    aes_ctx_free(&c);
    return ret;
}

/* ---- PKCS#11: the bare side --------------------------------------------- */

static int token_label_is(const CK_UTF8CHAR label[32], const char *want)
{
    size_t n = strlen(want), i;

    if (n > 32 || memcmp(label, want, n) != 0)
        return 0;
    for (i = n; i < 32; i++)
        if (label[i] != ' ')
            return 0;
    return 1;
}

static int p11_open_session(p11_bare *b)
{
    CK_RV rv =
        b->f->C_OpenSession(b->slot, CKF_SERIAL_SESSION, NULL, NULL, &b->s);
    if (rv != CKR_OK)
        return ckr_fail("C_OpenSession", rv);
    b->have_session = 1;
    return 0;
}

static void p11_close_session(p11_bare *b)
{
    if (b->have_session)
        b->f->C_CloseSession(b->s);
    b->have_session = 0;
}

/* Loads the module the engine already uses (the same shared object, so the
 * same initialised library and login state), finds the token by label and
 * opens a session of our own.  The user login is per application, so the
 * new session is logged in already. */
int p11_bare_open(p11_bare *b, const char *module, const char *token)
{
    CK_C_INITIALIZE_ARGS args;
    CK_SLOT_ID *slots = NULL;
    CK_ULONG n = 0, i;
    CK_RV rv;
    int found = 0;

    memset(b, 0, sizeof *b);
    b->f = p11_kit_module_load(module, P11_KIT_MODULE_UNMANAGED);
    if (!b->f) {
        const char *m = p11_kit_message();
        fprintf(stderr, "veil-bench: p11_kit_module_load %s failed: %s\n",
                module, m ? m : "unknown error");
        return -1;
    }
    memset(&args, 0, sizeof args);
    args.flags = CKF_OS_LOCKING_OK;
    rv = b->f->C_Initialize(&args);
    if (rv == CKR_OK) {
        /* The engine's instance of the module is not this one: the token
         * key will most likely not be visible from here. */
        b->we_initialized = 1;
        fprintf(stderr,
                "veil-bench: warning: C_Initialize returned CKR_OK: "
                "the engine did not initialise %s in this process\n",
                module);
    } else if (rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        return ckr_fail("C_Initialize", rv);
    }

    rv = b->f->C_GetSlotList(CK_TRUE, NULL, &n);
    if (rv != CKR_OK)
        return ckr_fail("C_GetSlotList", rv);
    slots = calloc(n ? n : 1, sizeof *slots);
    if (!slots) {
        fprintf(stderr, "veil-bench: out of memory\n");
        return -1;
    }
    rv = b->f->C_GetSlotList(CK_TRUE, slots, &n);
    if (rv != CKR_OK) {
        free(slots);
        return ckr_fail("C_GetSlotList", rv);
    }
    for (i = 0; i < n && !found; i++) {
        CK_TOKEN_INFO ti;
        if (b->f->C_GetTokenInfo(slots[i], &ti) == CKR_OK &&
            token_label_is(ti.label, token)) {
            b->slot = slots[i];
            found = 1;
        }
    }
    free(slots);
    if (!found) {
        fprintf(stderr, "veil-bench: no token labelled '%s' in %s\n", token,
                module);
        return -1;
    }
    return p11_open_session(b);
}

void p11_bare_close(p11_bare *b)
{
    if (!b->f)
        return;
    p11_close_session(b);
    if (b->we_initialized)
        b->f->C_Finalize(NULL);
    p11_kit_module_release(b->f);
    memset(b, 0, sizeof *b);
}

static int hex_decode(const char *hex, uint8_t *out, size_t cap, size_t *len)
{
    size_t n = strlen(hex), i;

    if (n % 2 || n / 2 > cap)
        return -1;
    for (i = 0; i < n / 2; i++) {
        char pair[3] = {hex[2 * i], hex[2 * i + 1], 0};
        char *end = NULL;
        unsigned long v = strtoul(pair, &end, 16);
        if (!end || *end || pair[0] == '+' || pair[0] == '-' || v > 255)
            return -1;
        out[i] = (uint8_t)v;
    }
    *len = n / 2;
    return 0;
}

/* Finds the private key veil generated: CKO_PRIVATE_KEY + CKA_LABEL, plus
 * the CKA_ID veil reports, so that a leftover key never gets in the way.
 * (Session objects are visible to every session of the application.) */
int p11_find_private_key(p11_bare *b, const veil_key *k, CK_OBJECT_HANDLE *out)
{
    veil_key_info info;
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    uint8_t id[64];
    size_t id_len = 0;
    CK_ATTRIBUTE tmpl[3];
    CK_ULONG nt = 0, found = 0;
    CK_OBJECT_HANDLE h[2];
    CK_RV rv;

    if (veil_key_get_info(k, &info) != VEIL_OK)
        return veil_fail("veil_key_get_info");
    tmpl[nt++] = (CK_ATTRIBUTE){CKA_CLASS, &cls, sizeof cls};
    tmpl[nt++] = (CK_ATTRIBUTE){CKA_LABEL, info.label, strlen(info.label)};
    if (info.id_hex[0]) {
        if (hex_decode(info.id_hex, id, sizeof id, &id_len) != 0) {
            fprintf(stderr, "veil-bench: veil_key_get_info: bad id_hex '%s'\n",
                    info.id_hex);
            return -1;
        }
        tmpl[nt++] = (CK_ATTRIBUTE){CKA_ID, id, id_len};
    }
    rv = b->f->C_FindObjectsInit(b->s, tmpl, nt);
    if (rv != CKR_OK)
        return ckr_fail("C_FindObjectsInit", rv);
    rv = b->f->C_FindObjects(b->s, h, 2, &found);
    b->f->C_FindObjectsFinal(b->s);
    if (rv != CKR_OK)
        return ckr_fail("C_FindObjects", rv);
    if (found != 1) {
        fprintf(stderr,
                "veil-bench: %lu private keys labelled '%s' (id %s) "
                "visible from a new session; expected 1\n",
                (unsigned long)found, info.label, info.id_hex);
        return -1;
    }
    *out = h[0];
    return 0;
}

/* ---- PKCS#11 RSA -------------------------------------------------------- */

CK_RV p11_decrypt_once(p11_rsa_ctx *c)
{
    CK_RV rv = c->b->f->C_DecryptInit(c->b->s, &c->mech, c->h);

    if (rv != CKR_OK)
        return rv;
    c->out_len = (CK_ULONG)c->k;
    return c->b->f->C_Decrypt(c->b->s, c->ct, (CK_ULONG)c->ct_len, c->out,
                              &c->out_len);
}

/* The bare loop: C_DecryptInit + C_Decrypt into a k-byte buffer. */
static int op_p11_decrypt(void *arg)
{
    p11_rsa_ctx *c = arg;
    CK_RV rv = p11_decrypt_once(c);

    if (rv != CKR_OK)
        return ckr_fail("C_DecryptInit/C_Decrypt", rv);
    return 0;
}

static int op_veil_p11_decrypt(void *arg)
{
    p11_rsa_ctx *c = arg;
    veil_secbuf *pt = NULL;

    if (veil_rsa_decrypt(c->e, c->key, NULL, c->ct, c->ct_len, &pt) != VEIL_OK)
        return veil_fail("veil_rsa_decrypt (pkcs11)");
    veil_secbuf_free(pt);
    return 0;
}

/* Picks the baseline mechanism: native OAEP with SHA-256 if the token
 * takes it, else CKM_RSA_X_509 (what veil itself falls back to, doing the
 * OAEP decoding on the host).  Checks the result either way. */
int p11_pick_mechanism(p11_rsa_ctx *c, const uint8_t *msg, size_t msg_len,
                       const char **mech_name)
{
    CK_RV rv;

    c->oaep.hashAlg = CKM_SHA256;
    c->oaep.mgf = CKG_MGF1_SHA256;
    c->oaep.source = CKZ_DATA_SPECIFIED;
    c->oaep.pSourceData = NULL;
    c->oaep.ulSourceDataLen = 0;
    c->mech.mechanism = CKM_RSA_PKCS_OAEP;
    c->mech.pParameter = &c->oaep;
    c->mech.ulParameterLen = sizeof c->oaep;
    rv = p11_decrypt_once(c);
    if (rv == CKR_OK && c->out_len == msg_len &&
        memcmp(c->out, msg, msg_len) == 0) {
        *mech_name = "OAEP";
        return 0;
    }
    printf("#   rsa%zu: token refused CKM_RSA_PKCS_OAEP with SHA-256 (%s); "
           "bare loop uses CKM_RSA_X_509\n",
           c->k * 8, rv == CKR_OK ? "wrong plaintext" : ckr_name(rv));
    /* Start again from a clean session: no operation left half-done. */
    p11_close_session(c->b);
    if (p11_open_session(c->b) != 0)
        return -1;
    c->mech.mechanism = CKM_RSA_X_509;
    c->mech.pParameter = NULL;
    c->mech.ulParameterLen = 0;
    rv = p11_decrypt_once(c);
    if (rv != CKR_OK)
        return ckr_fail("C_Decrypt(CKM_RSA_X_509)", rv);
    /* The raw result is the k-byte OAEP encoding: it starts with 0x00. */
    if (c->out_len != c->k || c->out[0] != 0) {
        fprintf(stderr,
                "veil-bench: C_Decrypt(CKM_RSA_X_509) returned %lu "
                "bytes that are not an OAEP encoding\n",
                (unsigned long)c->out_len);
        return -1;
    }
    *mech_name = "X_509";
    return 0;
}

static int bench_rsa_pkcs11(const bench_opts *o, veil_engine *e,
                            const char *token_uri, p11_bare *b, unsigned bits)
{
    p11_rsa_ctx c;
    uint8_t msg[RSA_MSG_LEN];
    char label[32], name[64];
    const char *mech_name = "?";
    veil_keygen_params kp;
    veil_secbuf *pt = NULL;
    int ret = -1;

    memset(&c, 0, sizeof c);
    c.e = e;
    c.b = b;
    c.k = bits / 8;
    snprintf(label, sizeof label, "bench-%u", bits);
    memset(&kp, 0, sizeof kp);
    kp.type = VEIL_KEY_RSA;
    kp.bits = bits;
    kp.label = label;
    kp.session_only = 1;
    if (veil_key_generate(e, token_uri, &kp, &c.key) != VEIL_OK)
        return veil_fail("veil_key_generate(pkcs11)");

    if (veil_random(e, msg, sizeof msg) != VEIL_OK) {
        veil_fail("veil_random");
        goto out;
    }
    c.ct_len = sizeof c.ct;
    if (veil_rsa_encrypt(e, c.key, NULL, msg, sizeof msg, c.ct, &c.ct_len) !=
        VEIL_OK) {
        veil_fail("veil_rsa_encrypt");
        goto out;
    }
    if (c.ct_len != c.k) {
        fprintf(stderr,
                "veil-bench: veil_rsa_encrypt gave %zu bytes for a "
                "%u-bit key\n",
                c.ct_len, bits);
        goto out;
    }
    if (veil_rsa_decrypt(e, c.key, NULL, c.ct, c.ct_len, &pt) != VEIL_OK) {
        veil_fail("veil_rsa_decrypt (pkcs11)");
        goto out;
    }
    if (check_plaintext("veil_rsa_decrypt (pkcs11)", veil_secbuf_data(pt),
                        veil_secbuf_len(pt), msg, sizeof msg) != 0)
        goto out;
    /* The engine has surely initialised the module and logged in by now:
     * only then do we load it ourselves (see p11_bare_open). */
    if (!b->f && p11_bare_open(b, o->module, o->token) != 0)
        goto out;
    if (p11_find_private_key(b, c.key, &c.h) != 0 ||
        p11_pick_mechanism(&c, msg, sizeof msg, &mech_name) != 0)
        goto out;

    snprintf(name, sizeof name, "pkcs11 rsa%u oaep-decrypt [%s]", bits,
             mech_name);
    ret = measure(o, name, "op/s", 1.0, op_veil_p11_decrypt, &c, op_p11_decrypt,
                  &c, NULL);
out:
    veil_secbuf_free(pt);
    OPENSSL_cleanse(c.out, sizeof c.out);
    OPENSSL_cleanse(msg, sizeof msg);
    if (c.key && veil_key_delete(e, c.key) != VEIL_OK) {
        veil_fail("veil_key_delete(pkcs11)");
        ret = -1;
    }
    return ret;
}

/* ---- PKCS#11 AES-GCM ---------------------------------------------------- */

/* What a bare PKCS#11 caller with a raw AES key does per message: import
 * the key as a session object, C_EncryptInit(CKM_AES_GCM) + C_Encrypt
 * (ciphertext || tag), destroy the object. */
typedef struct p11_aes_ctx {
    aes_ctx a;
    p11_bare *b;
} p11_aes_ctx;

static int op_p11_gcm_seal(void *arg)
{
    p11_aes_ctx *c = arg;
    CK_FUNCTION_LIST *f = c->b->f;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof cls},
        {CKA_KEY_TYPE, &kt, sizeof kt},
        {CKA_TOKEN, &no, sizeof no},
        {CKA_ENCRYPT, &yes, sizeof yes},
        {CKA_VALUE, c->a.key, sizeof c->a.key},
    };
    CK_GCM_PARAMS gp;
    CK_MECHANISM m;
    CK_OBJECT_HANDLE h;
    CK_ULONG out_len = (CK_ULONG)(c->a.len + VEIL_GCM_TAG_LEN);
    CK_RV rv;

    memset(&gp, 0, sizeof gp);
    gp.pIv = c->a.iv;
    gp.ulIvLen = sizeof c->a.iv;
    gp.ulIvBits = sizeof c->a.iv * 8;
    gp.pAAD = NULL;
    gp.ulAADLen = 0;
    gp.ulTagBits = VEIL_GCM_TAG_LEN * 8;
    m.mechanism = CKM_AES_GCM;
    m.pParameter = &gp;
    m.ulParameterLen = sizeof gp;

    rv = f->C_CreateObject(c->b->s, tmpl, sizeof tmpl / sizeof tmpl[0], &h);
    if (rv != CKR_OK)
        return ckr_fail("C_CreateObject(AES key)", rv);
    rv = f->C_EncryptInit(c->b->s, &m, h);
    if (rv == CKR_OK)
        rv = f->C_Encrypt(c->b->s, (CK_BYTE_PTR)c->a.pt, (CK_ULONG)c->a.len,
                          c->a.ct_base, &out_len);
    f->C_DestroyObject(c->b->s, h);
    if (rv != CKR_OK)
        return ckr_fail("C_EncryptInit/C_Encrypt(CKM_AES_GCM)", rv);
    if (out_len != c->a.len + VEIL_GCM_TAG_LEN) {
        fprintf(stderr,
                "veil-bench: C_Encrypt(CKM_AES_GCM) returned %lu "
                "bytes for %zu\n",
                (unsigned long)out_len, c->a.len);
        return -1;
    }
    return 0;
}

static int bench_aes_pkcs11(const bench_opts *o, veil_engine *e, p11_bare *b,
                            size_t len)
{
    p11_aes_ctx c;
    char name[96], sz[32];
    double ratio = 0;
    int ret = -1;

    c.b = b;
    if (aes_ctx_init(&c.a, e, len, VEIL_GCM_TAG_LEN) != 0)
        goto out;
    if (op_veil_gcm_seal(&c.a) != 0 || op_p11_gcm_seal(&c) != 0)
        goto out;
    if (memcmp(c.a.ct_veil, c.a.ct_base, len) != 0 ||
        memcmp(c.a.tag_veil, c.a.ct_base + len, VEIL_GCM_TAG_LEN) != 0) {
        fprintf(stderr,
                "veil-bench: veil_aes_gcm_seal (token) and "
                "C_Encrypt disagree (%zu bytes)\n",
                len);
        goto out;
    }
    size_name(len, sz, sizeof sz);
    snprintf(name, sizeof name, "pkcs11 aes256-gcm seal %s", sz);
    ret = measure(o, name, "MB/s", (double)len / 1e6, op_veil_gcm_seal, &c.a,
                  op_p11_gcm_seal, &c, &ratio);
    /* Much faster than the token itself: the seal cannot have run there. */
    if (ret == 0 && ratio > 3.0)
        printf("#   note: veil is %.0fx faster than the token's own "
               "C_Encrypt: the seal probably ran in software, not in the "
               "token\n",
               ratio);
out:
    aes_ctx_free(&c.a);
    return ret;
}

/* ---- the runs ----------------------------------------------------------- */

static const unsigned RSA_BITS[] = {2048, 3072, 4096};
static const size_t AES_SIZES[] = {1024, 64 * 1024, 10 * 1024 * 1024};

static size_t n_rsa(const bench_opts *o)
{
    return o->quick ? 1 : sizeof RSA_BITS / sizeof RSA_BITS[0];
}

static size_t n_aes(const bench_opts *o)
{
    return o->quick ? 2 : sizeof AES_SIZES / sizeof AES_SIZES[0];
}

static int run_software(const bench_opts *o, veil_engine *e)
{
    size_t i;

    printf("# software provider vs bare OpenSSL in this process\n"
           "#   rsa: EVP_PKEY_decrypt OAEP/SHA-256/MGF1-SHA-256, fresh "
           "EVP_PKEY_CTX per op, same key\n"
           "#   aes: EVP aes-256-gcm, 12-byte IV, fresh EVP_CIPHER_CTX per "
           "op (MB = 10^6 bytes)\n");
    fflush(stdout);
    for (i = 0; i < n_rsa(o); i++)
        if (bench_rsa_software(o, e, RSA_BITS[i]) != 0)
            return -1;
    for (i = 0; i < n_aes(o); i++)
        if (bench_aes_software(o, e, AES_SIZES[i]) != 0)
            return -1;
    return 0;
}

static void print_caps(const char *what, const veil_caps *caps)
{
    printf("#   %s: %s (%s)%s%s%s%s\n", what, caps->description, caps->provider,
           caps->mechs & VEIL_CAP_RSA_OAEP_SHA256 ? " oaep-sha256" : "",
           caps->mechs & VEIL_CAP_RSA_RAW ? " rsa-raw" : "",
           caps->mechs & VEIL_CAP_AES_GCM ? " aes-gcm" : "",
           caps->mechs & VEIL_CAP_RANDOM ? " random" : "");
}

static int run_pkcs11(const bench_opts *o, veil_engine *e,
                      const veil_engine_config *base_cfg, const char *uri)
{
    p11_bare b;
    veil_caps caps;
    veil_engine *e2 = NULL;
    veil_engine_config cfg2;
    size_t i;
    int ret = -1;

    memset(&b, 0, sizeof b);
    if (veil_engine_caps(e, uri, &caps) != VEIL_OK)
        return veil_fail("veil_engine_caps(pkcs11)");
    printf("# pkcs11 provider vs bare PKCS#11 calls on the same token key in "
           "this process\n"
           "#   module %s, %s\n",
           o->module, uri);
    print_caps("token", &caps);
    printf("#   rsa: bare loop = C_DecryptInit + C_Decrypt per op; [X_509] "
           "means the token has no\n"
           "#        OAEP-SHA256, so veil decodes OAEP on the host and the "
           "bare loop does not\n");
    fflush(stdout);

    for (i = 0; i < n_rsa(o); i++)
        if (bench_rsa_pkcs11(o, e, uri, &b, RSA_BITS[i]) != 0)
            goto out;

    /* AES-GCM in the token: a second engine asking for symmetric
     * operations in the token. */
    cfg2 = *base_cfg;
    cfg2.flags |= VEIL_ENGINE_SYMMETRIC_IN_TOKEN;
    if (veil_engine_new(&cfg2, &e2) != VEIL_OK) {
        veil_fail("veil_engine_new(SYMMETRIC_IN_TOKEN)");
        goto out;
    }
    if (veil_engine_caps(e2, NULL, &caps) != VEIL_OK) {
        veil_fail("veil_engine_caps(default token)");
        goto out;
    }
    if (!(caps.mechs & VEIL_CAP_AES_GCM)) {
        printf("#   aes: skipped: the token has no AES-GCM per veil's caps\n");
        ret = 0;
        goto out;
    }
    printf("#   aes: engine with VEIL_ENGINE_SYMMETRIC_IN_TOKEN; bare loop = "
           "C_CreateObject(key) +\n"
           "#        C_EncryptInit(CKM_AES_GCM) + C_Encrypt + "
           "C_DestroyObject per op\n");
    fflush(stdout);
    for (i = 0; i < n_aes(o); i++)
        if (bench_aes_pkcs11(o, e2, &b, AES_SIZES[i]) != 0)
            goto out;
    ret = 0;
out:
    /* Our session and module reference go first; the engines own the
     * module's initialisation. */
    p11_bare_close(&b);
    veil_engine_free(e2);
    return ret;
}

int main(int argc, char **argv)
{
    bench_opts o;
    veil_engine_config cfg;
    veil_engine *e = NULL;
    char uri[512];
    int st, failed = 0;

    st = parse_args(argc, argv, &o);
    if (st >= 0)
        return st;
    if (o.run_client)
        return bench_client_run(&o);
    if (o.run_gateway)
        return bench_gateway_run(&o);
    if (o.run_attest)
        return bench_attest_run(&o);

    memset(&cfg, 0, sizeof cfg);
    cfg.log = log_to_stderr;
    cfg.log_level = VEIL_LOG_WARN;
    if (o.run_pkcs11) {
        if (token_uri(o.token, uri, sizeof uri) != 0)
            return usage_error("token label too long: ", o.token);
        cfg.pkcs11_module = o.module;
        cfg.default_token = uri;
        if (o.pin_spec &&
            veil_pin_source_parse(o.pin_spec, &cfg.pin) != VEIL_OK)
            return usage_error("--pin-source: ", veil_last_error()->message);
    }

    print_machine(&o, "rates are medians; ratio = veil / baseline");
    if (veil_engine_new(&cfg, &e) != VEIL_OK) {
        veil_fail("veil_engine_new");
        return EXIT_FAIL;
    }
    print_table_header();
    if (o.skip_note)
        printf("%s\n", o.skip_note);
    if (o.run_software && run_software(&o, e) != 0)
        failed = 1;
    if (!failed && o.run_pkcs11 && run_pkcs11(&o, e, &cfg, uri) != 0)
        failed = 1;
    veil_engine_free(e);
    return failed ? EXIT_FAIL : 0;
}
