/* veil: end-to-end encrypted chat (and embeddings and models) with a veil
 * gateway over protocol v2 (Oblivious HTTP) or with a NOMYO v1 server, from
 * the command line.  Over v1 the answer key may live in a PKCS#11 token.  No
 * API key, PIN, prompt or answer is ever put in a log line or an error message;
 * prompts and answers are held in memory that is wiped before it is released.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#include <cjson/cJSON.h>

#include "veil/engine.h"
#include "veil/client.h"
#include "veil/attest.h"

#include "cmdtable.h"
#include "exitcode.h"
#include "json_scan.h" /* veil_utf8_seq */
#include "tier.h"
#include "toolenv.h"
#include "util.h" /* veil_wipe */

/* 0 to 5: the codes of every veil tool (exitcode.h); then the classes */
enum {
    EXIT_OK = VEIL_EXIT_OK,
    EXIT_FAIL = VEIL_EXIT_FAIL,   /* anything else (output not written) */
    EXIT_USAGE = VEIL_EXIT_USAGE, /* bad command line */
    EXIT_CLASS_BASE = 10          /* + veil_client_status: 11..21 */
};

/* The protocol's limit on a request; a bigger prompt cannot be sent. */
#define MAX_PROMPT (10u * 1024u * 1024u)
#define MAX_API_KEY 4096
/* Evidence holds two packages of up to a 10 MiB prompt each, in base64. */
#define MAX_EVIDENCE (64u * 1024u * 1024u)

static const char usage_main[] =
    "usage: veil COMMAND [OPTIONS]\n"
    "\n"
    "End-to-end encrypted chat with a veil gateway or a NOMYO v1 server:\n"
    "over veil protocol v2 (Oblivious HTTP, RFC 9458) the request is sealed\n"
    "to the gateway's signed key configuration; over NOMYO v1 it is sealed to\n"
    "the server's key and the answer to a key of this client (in memory, in\n"
    "a key directory or in a PKCS#11 token).\n"
    "\n"
    "Commands:\n"
    "  chat           send a prompt, print the answer\n"
    "  embed          print the embedding of a text (protocol v2)\n"
    "  models         list the models the gateway serves\n"
    "  server-key     print the server's public key or its fingerprint\n"
    "  attest enroll  verify a gateway's TPM (EK certificate, credential\n"
    "                 activation, quote) and write a trust file\n"
    "  attest update  follow the gateway's certified AK hand-over into a\n"
    "                 trust file\n"
    "  verify         check saved evidence of an answer against a trust "
    "file\n"
    "\n"
    "Options of chat and server-key (embed and models take --url,\n"
    "--api-key-file, --allow-http, --ca-file, --timeout, --retries and -v;\n"
    "attest enroll takes --url, --api-key-file, --allow-http, --ca-file,\n"
    "--timeout and -v; attest update the same except --url; verify takes only\n"
    "-v):\n"
    "  --url URL              server base URL (default: $VEIL_URL, else\n"
    "                         'url = URL' in ~/.config/veil/config; there is\n"
    "                         no other default: without one nothing is sent)\n"
    "  --api-key-file FILE    the API key: first line of FILE (default:\n"
    "                         $VEIL_API_KEY); never taken on the command line\n"
    "  --allow-http           permit a plain http:// URL (local development\n"
    "                         only; a warning is printed)\n"
    "  --ca-file FILE         PEM CA bundle for https (default: system CAs)\n"
    "  --timeout SECONDS      time limit of each HTTP exchange (default 60)\n"
    "  --retries N            retries after 429, 500, 502, 503, 504 and\n"
    "                         network failures (default 2; over v2 only\n"
    "                         429, 503 and a connection never made)\n"
    "  --module M             PKCS#11 module: a .so path or p11-kit name\n"
    "                         (default: $VEIL_PKCS11_MODULE)\n"
    "  --pin-source SPEC      token PIN: file:PATH, credential:NAME,\n"
    "                         env:NAME, prompt or none\n"
    "                         (default: $VEIL_PIN_SOURCE, else prompt when\n"
    "                         stdin is a terminal)\n"
    "  --password-source SPEC password of a --key-dir private key (same "
    "forms)\n"
    "  --tag MODE             where requests carry the GCM tag: separate\n"
    "                         (default) or appended\n"
    "  -v, --verbose          debug log on stderr (never keys, PINs, prompts\n"
    "                         or answers)\n"
    "  -h, --help             this help; 'veil COMMAND --help' for a command\n"
    "  --version              print the version\n"
    "\n"
    "Run 'veil COMMAND --help' for a command's options.\n"
    "\n";

static const char usage_chat[] =
    "usage: veil chat -m MODEL [--system TEXT] [--tier standard|high|maximum]\n"
    "                 [--token-key URI | --key-dir DIR]\n"
    "                 [--server-key-pin sha256:HEX] [--protocol v1|v2|auto]\n"
    "                 [--signing-key-pin sha256:HEX] [--relay URL]\n"
    "                 [--temperature X] [--max-tokens N] [--json] [OPTIONS]\n"
    "                 [PROMPT | -]\n"
    "Sends PROMPT as a user message and prints the answer's content. With "
    "'-',\n"
    "or with no PROMPT when stdin is not a terminal, the prompt is read from\n"
    "stdin (trailing newlines removed): this keeps it out of the process "
    "list.\n"
    "  -m, --model MODEL      model ID, e.g. Qwen/Qwen3-0.6B (required)\n"
    "  --system TEXT          a system message before the prompt\n"
    "  --tier TIER            security tier: standard, high or maximum\n"
    "  --protocol P           v2 (Oblivious HTTP to the gateway's signed key\n"
    "                         configuration), v1 (NOMYO), or auto (default:\n"
    "                         v2 when the gateway offers a signed key\n"
    "                         configuration, else v1; v1 with --evidence,\n"
    "                         or --server-key-pin without --signing-key-pin\n"
    "                         or --trust)\n"
    "  --signing-key-pin sha256:HEX  v2: the gateway's signing key, which "
    "must\n"
    "                         sign its key configurations and answers\n"
    "                         (default: the --trust file's, else the key it\n"
    "                         names at first contact)\n"
    "  --relay URL            v2 through an Oblivious HTTP relay (RFC 9458):\n"
    "                         the sealed requests are posted to URL as given\n"
    "                         (the relay resource, e.g.\n"
    "                         https://relay.example/ohttp/gw1), the key\n"
    "                         configuration still fetched from --url\n"
    "                         (default: $VEIL_RELAY). https only (http with\n"
    "                         --allow-http); implies v2: --protocol v1 is\n"
    "                         refused (exit 21), and auto never falls back\n"
    "                         to v1\n"
    "  --token-key URI        v1: the answer key is in a PKCS#11 token:\n"
    "                         'pkcs11:token=...;object=...' (RSA, 2048+ bits)\n"
    "  --key-dir DIR          v1: the answer key is in a NOMYO key directory;\n"
    "                         made there (RSA-4096) when DIR has none\n"
    "  --server-key-pin sha256:HEX  pin the server key: its SPKI SHA-256\n"
    "                         fingerprint as 'veil server-key --fingerprint'\n"
    "                         prints it; any other key is refused before\n"
    "                         anything is sent. During a server-key rotation\n"
    "                         the pin may name the gateway's next key\n"
    "                         (/pki/next_public_key), which is then used.\n"
    "                         v2 does not use that key: with this pin and\n"
    "                         neither --signing-key-pin nor a --trust file\n"
    "                         for the URL, auto takes v1 and --protocol v2\n"
    "                         is refused (exit 21). Not a token PIN (that\n"
    "                         is --pin-source)\n"
    "  --temperature X        sampling temperature, sent in the request\n"
    "  --max-tokens N         answer length limit, sent in the request\n"
    "  --json                 print the whole answer JSON, with _metadata\n"
    "                         (compact when large; invalid UTF-8 replaced);\n"
    "                         an error is then also printed on stdout as\n"
    "                         {\"error\": {\"class\", \"status\", "
    "\"exit_code\",\n"
    "                         \"detail\"}}\n"
    "  --trust FILE           verify the answer against a trust file from\n"
    "                         'veil attest enroll': its signature and, on\n"
    "                         maximum, its TPM quote; a failed check is exit\n"
    "                         19 and nothing is printed. The URL defaults to\n"
    "                         the one enrolled\n"
    "  --evidence FILE        save the answer's evidence (no plaintext) for\n"
    "                         'veil verify'; FILE must not exist (made 0600)\n"
    "  --allow-foreign-attestation  on maximum without --trust, accept a TPM\n"
    "                         attestation in another format than veil's,\n"
    "                         unchecked (default: refused, exit 19)\n"
    "  --allow-small-exponent accept a server RSA key with a public exponent\n"
    "                         below 65537 (odd, 3 or more; default: refused)\n"
    "  --raw                  print the answer as it came, even to a\n"
    "                         terminal (default there: control characters,\n"
    "                         bidi overrides and bytes that are not UTF-8\n"
    "                         are shown as '?' or U+FFFD)\n"
    "Without --token-key or --key-dir a fresh RSA-4096 key is made in memory\n"
    "for this run only, when v1 is used (v2 needs no client key). Tool calls\n"
    "in an answer are printed as JSON (after its content, if any). A PROMPT\n"
    "argument is wiped from the command line once read. Common OPTIONS: see\n"
    "'veil --help'.\n";

static const char usage_server_key[] =
    "usage: veil server-key [--fingerprint] [--server-key-pin sha256:HEX]\n"
    "                       [--allow-small-exponent] [OPTIONS]\n"
    "Fetches the server's public key and prints it (PEM), or with\n"
    "--fingerprint only 'sha256:<hex>': the SHA-256 of its "
    "SubjectPublicKeyInfo,\n"
    "the value 'veil chat --server-key-pin' takes. With --server-key-pin a\n"
    "different key is an error (exit 19).\n";

static const char usage_embed[] =
    "usage: veil embed -m MODEL [--tier TIER] [--protocol v2|auto]\n"
    "                  [--signing-key-pin sha256:HEX] [--relay URL]\n"
    "                  [--json] [OPTIONS] [TEXT | -]\n"
    "Sends TEXT (or stdin, as for chat) to POST /v1/embeddings over protocol\n"
    "v2 and prints its embedding as a JSON array of numbers on one line. A\n"
    "gateway without v2 is an error (exit 14).\n"
    "  -m, --model MODEL      embedding model ID (required)\n"
    "  --json                 print the whole answer JSON, with _metadata\n"
    "Also --tier, --protocol, --signing-key-pin, --relay: see 'veil chat\n"
    "--help'.\n";

static const char usage_models[] =
    "usage: veil models [--tier TIER] [--protocol v1|v2|auto]\n"
    "                   [--signing-key-pin sha256:HEX] [--relay URL]\n"
    "                   [--json] [OPTIONS]\n"
    "Prints the IDs of the models the gateway serves (on TIER, over v2), one\n"
    "a line; --json prints the whole list. Over v1 the list is the\n"
    "gateway's public GET /v1/models. Also --tier, --protocol,\n"
    "--signing-key-pin, --relay: see 'veil chat --help'.\n";

static const char usage_enroll[] =
    "usage: veil attest enroll --url URL --out FILE\n"
    "                          (--ek-ca FILE | --allow-unverified-ek)\n"
    "                          (--golden FILE | --accept-current)\n"
    "                          [--pcrs SEL] [--force] [OPTIONS]\n"
    "Fetches the gateway's attestation report on a fresh nonce and checks\n"
    "it: the EK certificate against --ek-ca, that the certificate holds the\n"
    "reported EK, the attestation key's attributes, credential activation\n"
    "(only the TPM holding the EK can answer it for that AK), the server's\n"
    "encryption and signing keys, and the quote over both keys and the\n"
    "nonce; when the report says the v2 KEM keys are TPM objects, the key\n"
    "configurations' signature and each KEM key's certification by the AK\n"
    "(GET /v2/keys/certify). Prints one line per check ('ok   ...' or\n"
    "'FAIL ...') and the verdict; then writes the trust file that 'veil\n"
    "chat --trust' and 'veil verify' use. Any failed check: exit 19 and no\n"
    "file (an existing one is left as it was).\n"
    "  --url URL              the gateway (default: $VEIL_URL)\n"
    "  --out FILE             the trust file to write (0644)\n"
    "  --ek-ca FILE           PEM: the TPM vendor's CA certificate(s) that\n"
    "                         must have issued the EK certificate (a root,\n"
    "                         an intermediate, or both)\n"
    "  --allow-unverified-ek  enrol without checking the EK certificate\n"
    "                         (recorded in the trust file as unverified)\n"
    "  --golden FILE          the PCR values you expect, JSON {\"sha256\":\n"
    "                         {\"0\": \"<64 hex>\", ...}}: each must be "
    "quoted\n"
    "                         and equal, or enrolment fails naming the PCR\n"
    "  --accept-current       trust the values quoted now (trust on first\n"
    "                         use), each printed; one of the two is needed\n"
    "  --pcrs SEL             PCRs the gateway must quote, e.g. sha256:0,7\n"
    "  --force                replace an existing trust file\n"
    "Also --api-key-file, --allow-http, --ca-file, --timeout, -v: see\n"
    "'veil --help'.\n";

static const char usage_update[] =
    "usage: veil attest update --trust FILE [OPTIONS]\n"
    "Follows an attestation key rotation of the gateway enrolled in FILE:\n"
    "fetches its report on a fresh nonce, checks the EK and keys are the\n"
    "enrolled ones and, when its AK is new, that the enrolled AK certified\n"
    "it (the report's ak_handover) and that it quotes the enrolled PCR\n"
    "values; then rewrites FILE with the new AK, its policy kept. Prints\n"
    "one line per check and 'verdict: UPDATED' or 'verdict: CURRENT'\n"
    "(exit 0); a new AK without a valid hand-over: 'verdict: NOT UPDATED',\n"
    "exit 19, FILE unchanged (re-enrol).\n"
    "Also --api-key-file, --allow-http, --ca-file, --timeout, -v: see\n"
    "'veil --help'.\n";

static const char usage_verify[] =
    "usage: veil verify --trust FILE EVIDENCE\n"
    "Checks evidence saved by 'veil chat --evidence' against a trust file,\n"
    "offline: the packages' hashes, the answer signature under the enrolled\n"
    "signing key and, on maximum, the TPM quote (enrolled attestation key,\n"
    "this request, enrolled keys, PCR values as enrolled). Prints one line\n"
    "per check and 'verdict: VALID' (exit 0) or 'verdict: INVALID (...)'\n"
    "(exit 19); unreadable evidence or trust file: exit 21. It cannot check\n"
    "that the quote came out of that response package: that needs the\n"
    "private key the answer was sealed to.\n";

struct opts {
    const char *url, *api_key_file, *ca_file, *module, *pin_source;
    const char *relay; /* --relay, else $VEIL_RELAY: v2's relay */
    const char *password_source, *model, *system, *tier, *token_key, *key_dir;
    const char *trust, *evidence, *ek_ca, *out_file, *evidence_in;
    char pin[72];     /* normalised "sha256:<64 lowercase hex>", or "" */
    char *prompt_arg; /* PROMPT from argv (wiped there once copied) */
    int prompt_stdin; /* "-" */
    unsigned timeout_ms, retries;
    veil_client_tag_mode tag;
    double temperature;
    long max_tokens; /* 0: not sent */
    int has_temperature;
    int allow_http, verbose, help, json, fingerprint;
    int allow_unverified_ek, force;
    const char *pcrs, *golden; /* attest enroll: the PCR policy */
    int accept_current;
    int url_given; /* --url on the command line (not $VEIL_URL) */
    int raw, allow_foreign, allow_small_exponent;
    veil_client_protocol protocol;
    char signing_pin[72]; /* as pin, for --signing-key-pin */
};

/* ---- secrets ---------------------------------------------------------- */

/* A secret NUL-terminated string of len bytes in a new secret buffer. */
static veil_secbuf *secstr(const char *s, size_t len)
{
    veil_secbuf *b = NULL;

    if (veil_secbuf_new(len + 1, &b) != VEIL_OK)
        return NULL;
    memcpy(veil_secbuf_data(b), s, len);
    veil_secbuf_data(b)[len] = 0;
    return b;
}

/* Writes all of buf to fd; 0 on failure (errno set). */
static int write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        buf += n;
        len -= (size_t)n;
    }
    return 1;
}

/* ---- text from the server on a terminal -------------------------------- */

/* The length (1..4) of the well-formed UTF-8 sequence at p (n bytes left)
 * and its code point in *cp; 0 when the bytes there are not one
 * (veil_utf8_seq: overlong forms, surrogates and values above U+10FFFF
 * are not). */
static size_t utf8_next(const unsigned char *p, size_t n, unsigned *cp)
{
    size_t len = veil_utf8_seq(p, n);
    unsigned c = p[0];

    if (len > 1) {
        c &= 0x3fu >> (len - 1);
        for (size_t i = 1; i < len; i++)
            c = c << 6 | (p[i] & 0x3fu);
    }
    *cp = c;
    return len;
}

/* Characters a terminal acts on instead of showing: C0 and C1 controls,
 * DEL, and the bidirectional formatting characters that reorder what
 * follows them (U+061C, U+200E, U+200F, U+202A..U+202E, U+2066..U+2069). */
static int term_unsafe(unsigned cp)
{
    return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp == 0x61c ||
           cp == 0x200e || cp == 0x200f || (cp >= 0x202a && cp <= 0x202e) ||
           (cp >= 0x2066 && cp <= 0x2069);
}

/* Copies text from the server into out (room for 3 * len + 1 bytes) so
 * that a terminal shows it and does nothing else: every character
 * term_unsafe names becomes '?' (newline and tab stay when keep_lines is
 * set), every byte that is not UTF-8 becomes U+FFFD.  Returns the length
 * written (out is NUL-terminated). */
static size_t term_safe(const char *text, size_t len, char *out, int keep_lines)
{
    const unsigned char *p = (const unsigned char *)text;
    size_t i = 0, o = 0;

    while (i < len) {
        unsigned cp;
        size_t n = utf8_next(p + i, len - i, &cp);

        if (n == 0) {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        } else if (term_unsafe(cp) &&
                   !(keep_lines && (cp == '\n' || cp == '\t'))) {
            out[o++] = '?';
            i += n;
        } else {
            memcpy(out + o, p + i, n);
            o += n;
            i += n;
        }
    }
    out[o] = '\0';
    return o;
}

/* stdout is a terminal and --raw was not given: answers are filtered
 * through term_safe. */
static int tty_filter;

/* Writes answer text (len bytes) to stdout, through term_safe when
 * tty_filter is set (in a secret buffer: it is the answer).  0 on a
 * failure (errno set). */
static int write_out(const char *text, size_t len)
{
    veil_secbuf *b = NULL;
    int ok;

    if (!tty_filter)
        return write_all(STDOUT_FILENO, text, len);
    if (len > SIZE_MAX / 3 - 1 || veil_secbuf_new(3 * len + 1, &b) != VEIL_OK) {
        errno = ENOMEM;
        return 0;
    }
    len = term_safe(text, len, (char *)veil_secbuf_data(b), 1);
    ok = write_all(STDOUT_FILENO, (const char *)veil_secbuf_data(b), len);
    veil_secbuf_free(b);
    return ok;
}

/* ---- stderr: log lines and the spinner --------------------------------- */

/* The spinner runs in its own thread while the main thread blocks in the
 * library; log lines and the spinner share stderr under one mutex. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    int running, stop, shown;
    unsigned frame, retry;
    int retry_status;
    const char *what;
    struct timespec start;
} spin = {.mu = PTHREAD_MUTEX_INITIALIZER};

static volatile sig_atomic_t spin_on_screen;

static void spin_clear_locked(void)
{
    if (spin.shown) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        spin.shown = 0;
        spin_on_screen = 0;
    }
}

static void spin_draw_locked(void)
{
    static const char frames[] = "|/-\\";
    struct timespec now;
    char extra[64] = "";
    long secs;

    clock_gettime(CLOCK_MONOTONIC, &now);
    secs = (long)(now.tv_sec - spin.start.tv_sec);
    if (spin.retry && spin.retry_status)
        snprintf(extra, sizeof extra, ", retry %u after HTTP %d", spin.retry,
                 spin.retry_status);
    else if (spin.retry)
        snprintf(extra, sizeof extra, ", retry %u after a network failure",
                 spin.retry);
    fprintf(stderr, "\r\033[K%c %s (%lds%s)", frames[spin.frame++ % 4],
            spin.what, secs, extra);
    fflush(stderr);
    spin.shown = 1;
    spin_on_screen = 1;
}

static void *spin_main(void *arg)
{
    pthread_mutex_lock(&spin.mu);
    while (!spin.stop) {
        struct timespec t;
        spin_draw_locked();
        clock_gettime(CLOCK_MONOTONIC, &t);
        t.tv_nsec += 125000000L; /* eight frames a second */
        if (t.tv_nsec >= 1000000000L) {
            t.tv_sec++;
            t.tv_nsec -= 1000000000L;
        }
        while (!spin.stop &&
               pthread_cond_timedwait(&spin.cv, &spin.mu, &t) != ETIMEDOUT)
            ;
    }
    spin_clear_locked();
    pthread_mutex_unlock(&spin.mu);
    return NULL;
}

/* Interrupted while the spinner is on the screen: leave a clean line. */
static void spin_signal(int sig)
{
    if (spin_on_screen)
        (void)!write(STDERR_FILENO, "\r\033[K", 4);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void spin_start(const char *what)
{
    pthread_condattr_t ca;

    if (spin.running) { /* the next step: a new label, a new clock */
        pthread_mutex_lock(&spin.mu);
        spin.what = what;
        spin.retry = 0;
        clock_gettime(CLOCK_MONOTONIC, &spin.start);
        pthread_mutex_unlock(&spin.mu);
        return;
    }
    spin.what = what;
    spin.stop = 0;
    clock_gettime(CLOCK_MONOTONIC, &spin.start);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&spin.cv, &ca);
    pthread_condattr_destroy(&ca);
    signal(SIGINT, spin_signal);
    signal(SIGTERM, spin_signal);
    if (pthread_create(&spin.thread, NULL, spin_main, NULL) == 0)
        spin.running = 1;
    else
        pthread_cond_destroy(&spin.cv);
}

static void spin_stop(void)
{
    if (!spin.running)
        return;
    pthread_mutex_lock(&spin.mu);
    spin.stop = 1;
    pthread_cond_signal(&spin.cv);
    pthread_mutex_unlock(&spin.mu);
    pthread_join(spin.thread, NULL);
    pthread_cond_destroy(&spin.cv);
    spin.running = 0;
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
}

/* A message on stderr; clears the spinner line first.  A server's detail
 * text is untrusted: control characters (C0 and C1), bidi overrides and
 * bytes that are not UTF-8 are neutralised (write_safe). */
static void say(const char *kind, const char *text)
{
    pthread_mutex_lock(&spin.mu);
    spin_clear_locked();
    size_t len = strlen(text);
    char *clean = len < 65536 ? malloc(3 * len + 1) : NULL;
    fputs("veil: ", stderr);
    if (kind)
        fprintf(stderr, "%s: ", kind);
    if (clean) {
        term_safe(text, len, clean, 0);
        fputs(clean, stderr);
    } else {
        fputs("(a message that cannot be shown)", stderr);
    }
    free(clean);
    fputc('\n', stderr);
    fflush(stderr);
    pthread_mutex_unlock(&spin.mu);
}

static void log_stderr(void *ctx, veil_log_level level, const char *line)
{
    static const char *const names[] = {"error", "warning", "info", "debug"};

    say(level <= VEIL_LOG_DEBUG ? names[level] : "log", line);
}

/* Retries show on the spinner line; the library logs them (-v). */
static void on_retry(void *ctx, unsigned attempt, int http_status,
                     unsigned delay_ms)
{
    pthread_mutex_lock(&spin.mu);
    spin.retry = attempt;
    spin.retry_status = http_status;
    pthread_mutex_unlock(&spin.mu);
}

/* ---- errors ----------------------------------------------------------- */

/* The URL is plain http and --allow-http was not given. */
static int http_hint;
/* --json: errors are also reported as a JSON object on stdout. */
static int json_errors;

static int print_json(cJSON *j);

/* With --json: {"error": {"class", "status", "exit_code", "detail"}} on
 * stdout (status: the HTTP status, or null when none came). */
static void json_error(const char *class_name, int http_status, int code,
                       const char *detail)
{
    cJSON *j = json_errors ? cJSON_CreateObject() : NULL;
    cJSON *e = j ? cJSON_AddObjectToObject(j, "error") : NULL;

    if (e && cJSON_AddStringToObject(e, "class", class_name) &&
        (http_status ? cJSON_AddNumberToObject(e, "status", http_status)
                     : cJSON_AddNullToObject(e, "status")) &&
        cJSON_AddNumberToObject(e, "exit_code", code) &&
        cJSON_AddStringToObject(e, "detail", detail))
        print_json(j);
    cJSON_Delete(j);
}

static int usage_error(const char *msg)
{
    fprintf(stderr, "veil: %s\n", msg);
    json_error("UsageError", 0, EXIT_USAGE, msg);
    return EXIT_USAGE;
}

/* The exit code of a failure: 10 + its class, except a local
 * configuration failure of the token (wrong token or key, PIN, module):
 * those have the codes all veil tools share (engine/exitcode.h). */
static int exit_code(const veil_client_error *err)
{
    if (err->status == VEIL_CLIENT_E_CONFIG && err->rc != VEIL_OK) {
        veil_error e = {.code = err->rc};
        /* exitcode.h looks at the message's first words only */
        memcpy(e.message, err->detail, sizeof e.message - 1);
        int code = veil_exit_for(&e);
        if (code == VEIL_EXIT_NOT_FOUND || code == VEIL_EXIT_PIN ||
            code == VEIL_EXIT_TOKEN)
            return code;
    }
    return EXIT_CLASS_BASE + (int)err->status;
}

/* Prints "veil: <ClassName> (HTTP nnn): detail" and returns its exit
 * code. */
static int client_fail(const veil_client_error *err)
{
    char head[96];
    const char *name = veil_client_status_name(err->status);

    spin_stop();
    if (err->http_status)
        snprintf(head, sizeof head, "%s (HTTP %d)", name, err->http_status);
    else
        snprintf(head, sizeof head, "%s", name);
    if (err->detail[0]) {
        say(head, err->detail);
    } else {
        pthread_mutex_lock(&spin.mu);
        fprintf(stderr, "veil: %s\n", head);
        pthread_mutex_unlock(&spin.mu);
    }
    if (err->status == VEIL_CLIENT_E_SECURITY && http_hint)
        fputs("veil: --allow-http permits plain http (for local development "
              "only)\n",
              stderr);
    json_error(name, err->http_status, exit_code(err), err->detail);
    return exit_code(err);
}

/* A local failure of class st with a message of our own. */
static int local_fail(veil_client_status st, const char *what)
{
    veil_client_error err = {0};

    err.status = st;
    snprintf(err.detail, sizeof err.detail, "%s", what);
    return client_fail(&err);
}

/* ---- option parsing --------------------------------------------------- */

static int parse_uint(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    unsigned long v;

    if (*s < '0' || *s > '9')
        return 0;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (*end || errno || v > max)
        return 0;
    *out = v;
    return 1;
}

/* "sha256:<64 hex>" or the bare hex, any case -> "sha256:<lowercase>". */
static int parse_fingerprint(const char *s, char out[72])
{
    size_t i;

    if (strncmp(s, "sha256:", 7) == 0)
        s += 7;
    if (strlen(s) != 64)
        return 0;
    memcpy(out, "sha256:", 7);
    for (i = 0; i < 64; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'F')
            c = (char)(c - 'A' + 'a');
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return 0;
        out[7 + i] = c;
    }
    out[71] = 0;
    return 1;
}

enum cmd {
    CMD_CHAT,
    CMD_SERVER_KEY,
    CMD_ENROLL,
    CMD_VERIFY,
    CMD_EMBED,
    CMD_MODELS,
    CMD_UPDATE
};

static const char *const cmd_names[] = {
    "veil chat",  "veil server-key", "veil attest enroll", "veil verify",
    "veil embed", "veil models",     "veil attest update"};

#define ON(c) (1u << (c))
#define V2 (ON(CMD_CHAT) | ON(CMD_EMBED) | ON(CMD_MODELS))
#define NET (V2 | ON(CMD_SERVER_KEY) | ON(CMD_ENROLL) | ON(CMD_UPDATE))
#define KEYS (ON(CMD_CHAT) | ON(CMD_SERVER_KEY))
#define ALL (NET | ON(CMD_VERIFY))

/* The commands that take an option (by its getopt value). */
static unsigned option_cmds(int c)
{
    switch (c) {
    case 'u': /* --url (update: the trust file's) */
        return NET & ~ON(CMD_UPDATE);
    case 'A': /* --api-key-file */
    case 'H': /* --allow-http */
    case 'C': /* --ca-file */
    case 'o': /* --timeout */
        return NET;
    case 'r': /* --retries */
        return KEYS | ON(CMD_EMBED) | ON(CMD_MODELS);
    case 'y': /* --protocol */
    case 'k': /* --signing-key-pin */
    case 'L': /* --relay */
    case 'T': /* --tier */
    case 'j': /* --json */
        return V2;
    case 'm': /* --model */
        return ON(CMD_CHAT) | ON(CMD_EMBED);
    case 'M': /* --module */
    case 'P': /* --pin-source */
    case 'W': /* --password-source */
    case 'g': /* --tag */
    case 'p': /* --server-key-pin */
    case 'e': /* --allow-small-exponent */
        return KEYS;
    case 'f': /* --fingerprint */
        return ON(CMD_SERVER_KEY);
    case 'R': /* --trust */
        return ON(CMD_CHAT) | ON(CMD_VERIFY) | ON(CMD_UPDATE);
    case 'E': /* --ek-ca */
    case 'U': /* --allow-unverified-ek */
    case 'z': /* --pcrs */
    case 'G': /* --golden */
    case 'c': /* --accept-current */
    case 'O': /* --out */
    case 'F': /* --force */
        return ON(CMD_ENROLL);
    case 's':
    case 'K':
    case 'D':
    case 't':
    case 'x':
    case 'V': /* --evidence */
    case 'w': /* --raw */
    case 'a': /* --allow-foreign-attestation */
        return ON(CMD_CHAT);
    default:
        return ALL;
    }
}

/* "'veil chat'" or "'veil chat' and 'veil verify'" into out. */
static void cmds_text(unsigned mask, char *out, size_t size)
{
    size_t n = 0;
    unsigned left = mask;
    out[0] = '\0';
    for (unsigned i = 0; i < sizeof cmd_names / sizeof cmd_names[0]; i++) {
        if (!(mask & ON(i)))
            continue;
        left &= ~ON(i);
        n += (size_t)snprintf(out + n, size - n, "%s'%s'",
                              n == 0 ? ""
                              : left ? ", "
                                     : " and ",
                              cmd_names[i]);
        if (n >= size)
            return;
    }
}

/* The user's config file: $XDG_CONFIG_HOME/veil/config, else
 * ~/.config/veil/config, into path ("" when neither variable is set). */
static void config_path(char *path, size_t size)
{
    const char *xdg = getenv("XDG_CONFIG_HOME");
    const char *home = getenv("HOME");

    path[0] = '\0';
    if (xdg && xdg[0] == '/')
        snprintf(path, size, "%s/veil/config", xdg);
    else if (home && home[0])
        snprintf(path, size, "%s/.config/veil/config", home);
}

/* The server URL from the config file's "url = URL" line (blank lines
 * and lines starting with '#' are skipped; nothing else is known) into
 * url.  1: found; 0: no file or no url line; -1: a bad file (printed). */
static int config_url(const char *path, char *url, size_t size)
{
    char line[4096];
    unsigned n = 0;
    int found = 0;
    FILE *f = path[0] ? fopen(path, "r") : NULL;

    if (f == NULL) {
        if (path[0] && errno != ENOENT) {
            fprintf(stderr, "veil: %s: %s\n", path, strerror(errno));
            return -1;
        }
        return 0;
    }
    while (fgets(line, sizeof line, f)) {
        char *p = line, *end, *val;
        n++;
        p += strspn(p, " \t");
        end = p + strcspn(p, "\r\n");
        *end = '\0';
        while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
            *--end = '\0';
        if (*p == '\0' || *p == '#')
            continue;
        val = strncmp(p, "url", 3) == 0 ? p + 3 + strspn(p + 3, " \t") : NULL;
        if (val == NULL || *val != '=') {
            fprintf(stderr, "veil: %s:%u: only 'url = URL' is known here\n",
                    path, n);
            fclose(f);
            return -1;
        }
        val++;
        val += strspn(val, " \t");
        if (*val == '\0' || strlen(val) >= size) {
            fprintf(stderr, "veil: %s:%u: url needs a value (a URL)\n", path,
                    n);
            fclose(f);
            return -1;
        }
        snprintf(url, size, "%s", val);
        found = 1;
    }
    fclose(f);
    return found;
}

/* 1: parsed; 0: a bad command line, the command's usage follows the
 * message; -1: a bad command line whose message says what to do. */
/* 1 when url's path ends in /v1 or /v1/ (before any ?query). */
static int url_ends_v1(const char *url)
{
    const char *host = strstr(url, "://");
    const char *path = strchr(host ? host + 3 : url, '/');
    size_t n;

    if (path == NULL)
        return 0;
    n = strcspn(path, "?#");
    if (n > 0 && path[n - 1] == '/')
        n--;
    return n >= 3 && strncmp(path + n - 3, "/v1", 3) == 0;
}

static int parse_opts(int argc, char **argv, enum cmd cmd, struct opts *o)
{
    static const struct option longopts[] = {
        {"url", required_argument, NULL, 'u'},
        {"api-key-file", required_argument, NULL, 'A'},
        {"allow-http", no_argument, NULL, 'H'},
        {"ca-file", required_argument, NULL, 'C'},
        {"timeout", required_argument, NULL, 'o'},
        {"retries", required_argument, NULL, 'r'},
        {"module", required_argument, NULL, 'M'},
        {"pin-source", required_argument, NULL, 'P'},
        {"password-source", required_argument, NULL, 'W'},
        {"tag", required_argument, NULL, 'g'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {"model", required_argument, NULL, 'm'},
        {"system", required_argument, NULL, 's'},
        {"tier", required_argument, NULL, 'T'},
        {"token-key", required_argument, NULL, 'K'},
        {"key-dir", required_argument, NULL, 'D'},
        {"server-key-pin", required_argument, NULL, 'p'},
        {"pin", optional_argument, NULL, 'Q'},
        {"json", no_argument, NULL, 'j'},
        {"temperature", required_argument, NULL, 't'},
        {"max-tokens", required_argument, NULL, 'x'},
        {"fingerprint", no_argument, NULL, 'f'},
        {"api-key", required_argument, NULL, 'X'},
        {"trust", required_argument, NULL, 'R'},
        {"evidence", required_argument, NULL, 'V'},
        {"ek-ca", required_argument, NULL, 'E'},
        {"pcrs", required_argument, NULL, 'z'},
        {"golden", required_argument, NULL, 'G'},
        {"accept-current", no_argument, NULL, 'c'},
        {"allow-unverified-ek", no_argument, NULL, 'U'},
        {"out", required_argument, NULL, 'O'},
        {"force", no_argument, NULL, 'F'},
        {"raw", no_argument, NULL, 'w'},
        {"allow-foreign-attestation", no_argument, NULL, 'a'},
        {"allow-small-exponent", no_argument, NULL, 'e'},
        {"protocol", required_argument, NULL, 'y'},
        {"signing-key-pin", required_argument, NULL, 'k'},
        {"relay", required_argument, NULL, 'L'},
        {NULL, 0, NULL, 0},
    };
    /* the same flags with underscores too (engine/toolenv.h) */
    static struct option both[2 * sizeof longopts / sizeof longopts[0]];
    static char names[1024];
    unsigned long n;
    double d;
    char *end;
    int c;

    if (both[0].name == NULL &&
        veil_longopts_both(longopts, both, sizeof both / sizeof both[0], names,
                           sizeof names) < 0) {
        fputs("veil: internal error: the option table is too large\n", stderr);
        return -1;
    }
    o->url = veil_env(VEIL_ENV_URL);
    o->relay = cmd == CMD_CHAT || cmd == CMD_EMBED || cmd == CMD_MODELS
                   ? veil_env(VEIL_ENV_RELAY)
                   : NULL;
    o->module = veil_env(VEIL_ENV_MODULE);
    o->pin_source = veil_env(VEIL_ENV_PIN_SOURCE);
    o->timeout_ms = 60000;
    o->retries = 2;
    o->tag = VEIL_CLIENT_TAG_SEPARATE;
    o->protocol = VEIL_CLIENT_PROTOCOL_AUTO;
    optind = 1;
    opterr = 0; /* our own messages: never echo an option's value */
    while ((c = getopt_long(argc, argv, ":m:vh", both, NULL)) != -1) {
        if (c == '?' || c == ':') {
            const char *arg = argv[optind - 1];
            int len = (int)strcspn(arg, "=");
            if (strncmp(arg, "--", 2) != 0)
                fprintf(stderr, "veil: option -%c %s\n", optopt,
                        c == ':' ? "needs an argument" : "is unknown");
            else
                fprintf(stderr, "veil: option %.*s %s\n", len, arg,
                        c == ':' ? "needs an argument" : "is unknown");
            return 0;
        }
        if (!(option_cmds(c) & ON(cmd))) {
            const char *name = "?";
            char where[128];
            for (const struct option *lo = longopts; lo->name; lo++)
                if (lo->val == c)
                    name = lo->name;
            cmds_text(option_cmds(c), where, sizeof where);
            fprintf(stderr, "veil: --%s is an option of %s\n", name, where);
            return 0;
        }
        switch (c) {
        case 'u':
            o->url = optarg;
            o->url_given = 1;
            break;
        case 'L':
            o->relay = optarg;
            break;
        case 'R':
            o->trust = optarg;
            break;
        case 'V':
            o->evidence = optarg;
            break;
        case 'E':
            o->ek_ca = optarg;
            break;
        case 'U':
            o->allow_unverified_ek = 1;
            break;
        case 'z':
            o->pcrs = optarg;
            break;
        case 'G':
            o->golden = optarg;
            break;
        case 'c':
            o->accept_current = 1;
            break;
        case 'O':
            o->out_file = optarg;
            break;
        case 'F':
            o->force = 1;
            break;
        case 'A':
            o->api_key_file = optarg;
            break;
        case 'H':
            o->allow_http = 1;
            break;
        case 'C':
            o->ca_file = optarg;
            break;
        case 'o':
            d = strtod(optarg, &end);
            if (end == optarg || *end || !isfinite(d) || d <= 0 || d > 86400) {
                fprintf(stderr, "veil: --timeout takes seconds (a number "
                                "above 0, at most 86400)\n");
                return 0;
            }
            o->timeout_ms = (unsigned)(d * 1000 + 0.5);
            if (!o->timeout_ms)
                o->timeout_ms = 1;
            break;
        case 'r':
            if (!parse_uint(optarg, 100, &n)) {
                fprintf(stderr, "veil: --retries takes a number, 0 to 100\n");
                return 0;
            }
            o->retries = (unsigned)n;
            break;
        case 'M':
            o->module = optarg;
            break;
        case 'P':
            o->pin_source = optarg;
            break;
        case 'W':
            o->password_source = optarg;
            break;
        case 'g':
            if (strcmp(optarg, "separate") == 0) {
                o->tag = VEIL_CLIENT_TAG_SEPARATE;
            } else if (strcmp(optarg, "appended") == 0) {
                o->tag = VEIL_CLIENT_TAG_APPENDED;
            } else {
                fprintf(stderr, "veil: --tag is separate or appended\n");
                return 0;
            }
            break;
        case 'v':
            o->verbose = 1;
            break;
        case 'h':
            o->help = 1;
            break;
        case 'm':
            o->model = optarg;
            break;
        case 's':
            o->system = optarg;
            break;
        case 'T':
            if (!veil_tier_parse(optarg)) {
                fprintf(stderr, "veil: --tier is standard, high or maximum\n");
                return 0;
            }
            o->tier = optarg;
            break;
        case 'K':
            o->token_key = optarg;
            break;
        case 'D':
            o->key_dir = optarg;
            break;
        case 'p':
            /* Never echo the value: someone may have typed a token PIN. */
            if (!parse_fingerprint(optarg, o->pin)) {
                fprintf(stderr,
                        "veil: --server-key-pin takes the server key's "
                        "fingerprint, sha256:<64 hex digits> (see 'veil "
                        "server-key --fingerprint'); it is not a token PIN, "
                        "which is never taken on the command line: use "
                        "--pin-source\n");
                return -1;
            }
            break;
        case 'y':
            if (strcmp(optarg, "v1") == 0) {
                o->protocol = VEIL_CLIENT_PROTOCOL_V1;
            } else if (strcmp(optarg, "v2") == 0) {
                o->protocol = VEIL_CLIENT_PROTOCOL_V2;
            } else if (strcmp(optarg, "auto") == 0) {
                o->protocol = VEIL_CLIENT_PROTOCOL_AUTO;
            } else {
                fprintf(stderr, "veil: --protocol is v1, v2 or auto\n");
                return 0;
            }
            break;
        case 'k':
            if (!parse_fingerprint(optarg, o->signing_pin)) {
                fprintf(stderr, "veil: --signing-key-pin takes the gateway "
                                "signing key's fingerprint, sha256:<64 hex "
                                "digits>\n");
                return -1;
            }
            break;
        case 'Q':
            /* --pin: refused whatever its value, which is never echoed
             * (someone may have typed a token PIN). */
            fprintf(stderr,
                    "veil: there is no --pin: a token PIN is never taken on "
                    "the command line (use --pin-source file:PATH, env:NAME "
                    "or prompt); to pin the server key's fingerprint use "
                    "--server-key-pin sha256:<64 hex digits>\n");
            return -1;
        case 'j':
            o->json = 1;
            json_errors = 1;
            break;
        case 'w':
            o->raw = 1;
            break;
        case 'a':
            o->allow_foreign = 1;
            break;
        case 'e':
            o->allow_small_exponent = 1;
            break;
        case 't':
            d = strtod(optarg, &end);
            if (end == optarg || *end || !isfinite(d) || d < 0) {
                fprintf(stderr, "veil: --temperature takes a number >= 0\n");
                return 0;
            }
            o->temperature = d;
            o->has_temperature = 1;
            break;
        case 'x':
            if (!parse_uint(optarg, 100000000, &n) || n == 0) {
                fprintf(stderr, "veil: --max-tokens takes a number above 0\n");
                return 0;
            }
            o->max_tokens = (long)n;
            break;
        case 'f':
            o->fingerprint = 1;
            break;
        case 'X':
            fprintf(stderr, "veil: an API key is never taken on the command "
                            "line; use --api-key-file FILE or the "
                            "environment variable VEIL_API_KEY\n");
            return -1;
        default:
            return 0;
        }
    }
    if (o->help)
        return 1;
    /* --url, else $VEIL_URL, else the config file */
    if (!o->url || !o->url[0]) {
        static char url[2048];
        char path[4200];
        config_path(path, sizeof path);
        int got = config_url(path, url, sizeof url);
        if (got < 0)
            return -1;
        o->url = got ? url : NULL;
    }
    /* The OpenAI habit: a base URL ending in /v1.  veil adds the paths
     * (/v1/chat/secure_completion, /.well-known/ohttp-gateway, ...). */
    if (o->url && url_ends_v1(o->url)) {
        fprintf(stderr,
                "veil: the URL ends in /v1: give the gateway's base URL "
                "without it (veil adds /v1/... itself); nothing was sent\n");
        return -1;
    }
    /* Never echo a positional argument: it may be a prompt. */
    if ((cmd == CMD_SERVER_KEY || cmd == CMD_ENROLL || cmd == CMD_MODELS ||
         cmd == CMD_UPDATE) &&
        optind < argc) {
        fprintf(stderr, "veil: %s takes no arguments\n", cmd_names[cmd] + 5);
        return 0;
    }
    if (cmd == CMD_ENROLL) {
        if (!o->url) {
            fprintf(stderr, "veil: attest enroll needs --url URL (or "
                            "$VEIL_URL, or 'url = URL' in the config file)\n");
            return 0;
        }
        if (!o->out_file) {
            fprintf(stderr, "veil: attest enroll needs --out FILE\n");
            return 0;
        }
        if (!o->ek_ca && !o->allow_unverified_ek) {
            fprintf(stderr,
                    "veil: give --ek-ca FILE (the TPM vendor's CA), or "
                    "--allow-unverified-ek to enrol without checking the EK "
                    "certificate\n");
            return 0;
        }
    }
    if (cmd == CMD_UPDATE && !o->trust) {
        fprintf(stderr, "veil: attest update needs --trust FILE\n");
        return 0;
    }
    if (cmd == CMD_VERIFY) {
        if (!o->trust) {
            fprintf(stderr, "veil: verify needs --trust FILE\n");
            return 0;
        }
        if (argc - optind != 1) {
            fprintf(stderr, "veil: verify takes one EVIDENCE file\n");
            return 0;
        }
        o->evidence_in = argv[optind];
    }
    if (cmd == CMD_CHAT || cmd == CMD_EMBED) {
        if (argc - optind > 1) {
            fprintf(stderr,
                    "veil: give the %s as one argument (quote "
                    "it), or '-' to read it from stdin\n",
                    cmd == CMD_CHAT ? "prompt" : "text");
            return 0;
        }
        if (optind < argc) {
            if (strcmp(argv[optind], "-") == 0)
                o->prompt_stdin = 1;
            else
                o->prompt_arg = argv[optind];
        }
        if (!o->model) {
            fprintf(stderr, "veil: -m MODEL is required\n");
            return 0;
        }
        if (o->token_key && o->key_dir) {
            fprintf(stderr,
                    "veil: --token-key and --key-dir exclude each other\n");
            return 0;
        }
    }
    /* No default server: nothing is sent anywhere not named. */
    if ((cmd == CMD_SERVER_KEY || cmd == CMD_EMBED || cmd == CMD_MODELS ||
         (cmd == CMD_CHAT && !o->trust)) &&
        (!o->url || !o->url[0])) {
        char path[4200];
        config_path(path, sizeof path);
        fprintf(stderr,
                "veil: no server: give --url URL, set VEIL_URL or put "
                "'url = URL' in %s (there is no default; nothing was sent)\n",
                path[0] ? path : "~/.config/veil/config");
        return -1;
    }
    return 1;
}

/* ---- reading secrets -------------------------------------------------- */

/* The prompt: from argv (then wiped there) or all of stdin.  Returns an
 * exit code; *out holds a NUL-terminated string on success. */
static int read_prompt(struct opts *o, veil_secbuf **out)
{
    veil_secbuf *b = NULL, *nb;
    size_t cap = 65536, len = 0;
    uint8_t *d;

    if (o->prompt_arg) {
        len = strlen(o->prompt_arg);
        b = secstr(o->prompt_arg, len);
        veil_wipe(o->prompt_arg,
                  len); /* out of /proc/PID/cmdline from now on */
        if (!b)
            return local_fail(VEIL_CLIENT_E_CONFIG, "out of memory");
    } else {
        if (!o->prompt_stdin && isatty(STDIN_FILENO))
            return usage_error("no prompt: give PROMPT, or '-' to read it "
                               "from stdin");
        if (veil_secbuf_new(cap + 1, &b) != VEIL_OK)
            return local_fail(VEIL_CLIENT_E_CONFIG, "out of memory");
        if (isatty(STDIN_FILENO) && isatty(STDERR_FILENO))
            say(NULL, "type the prompt, then Ctrl-D on a line of its own");
        for (;;) {
            ssize_t n;
            if (len == cap) {
                if (cap > MAX_PROMPT) {
                    veil_secbuf_free(b);
                    return local_fail(VEIL_CLIENT_E_INVALID_REQUEST,
                                      "the prompt is larger than 10 MiB");
                }
                cap *= 2;
                if (veil_secbuf_new(cap + 1, &nb) != VEIL_OK) {
                    veil_secbuf_free(b);
                    return local_fail(VEIL_CLIENT_E_CONFIG, "out of memory");
                }
                memcpy(veil_secbuf_data(nb), veil_secbuf_data(b), len);
                veil_secbuf_free(b);
                b = nb;
            }
            n = read(STDIN_FILENO, veil_secbuf_data(b) + len, cap - len);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                char msg[128];
                snprintf(msg, sizeof msg, "cannot read stdin: %s",
                         strerror(errno));
                veil_secbuf_free(b);
                say(NULL, msg);
                return EXIT_FAIL;
            }
            if (n == 0)
                break;
            len += (size_t)n;
        }
        if (len > MAX_PROMPT) {
            veil_secbuf_free(b);
            return local_fail(VEIL_CLIENT_E_INVALID_REQUEST,
                              "the prompt is larger than 10 MiB");
        }
    }
    d = veil_secbuf_data(b);
    if (memchr(d, 0, len)) {
        veil_secbuf_free(b);
        return usage_error("the prompt contains a NUL byte");
    }
    if (!o->prompt_arg)
        while (len && (d[len - 1] == '\n' || d[len - 1] == '\r'))
            d[--len] = 0;
    d[len] = 0;
    if (!len) {
        veil_secbuf_free(b);
        return usage_error("the prompt is empty");
    }
    *out = b;
    return EXIT_OK;
}

/* The API key: first line of --api-key-file, else $VEIL_API_KEY, else
 * none (*out NULL).  Returns an exit code. */
static int read_api_key(const struct opts *o, veil_secbuf **out)
{
    char msg[600];
    const char *env;
    veil_secbuf *b;
    struct stat st;
    size_t len = 0;
    char *d;
    int fd;

    *out = NULL;
    if (!o->api_key_file) {
        env = veil_env(VEIL_ENV_API_KEY);
        if (!env || !*env)
            return EXIT_OK;
        if (!(*out = secstr(env, strlen(env))))
            return local_fail(VEIL_CLIENT_E_CONFIG, "out of memory");
        return EXIT_OK;
    }
    fd = open(o->api_key_file, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(msg, sizeof msg, "cannot read the API key file %s: %s",
                 o->api_key_file, strerror(errno));
        if (fd >= 0)
            close(fd);
        return local_fail(VEIL_CLIENT_E_CONFIG, msg);
    }
    if (st.st_mode & S_IRWXO) {
        close(fd);
        snprintf(msg, sizeof msg,
                 "the API key file %s is accessible to other users "
                 "(chmod 600 it)",
                 o->api_key_file);
        return local_fail(VEIL_CLIENT_E_CONFIG, msg);
    }
    if (veil_secbuf_new(MAX_API_KEY + 1, &b) != VEIL_OK) {
        close(fd);
        return local_fail(VEIL_CLIENT_E_CONFIG, "out of memory");
    }
    d = (char *)veil_secbuf_data(b);
    for (;;) {
        ssize_t n = read(fd, d + len, MAX_API_KEY - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        if (memchr(d, '\n', len) || len == MAX_API_KEY)
            break;
    }
    close(fd);
    d[len] = 0;
    len = strcspn(d, "\r\n");
    veil_wipe(d + len, MAX_API_KEY + 1 - len);
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)d[i] < 0x20 || d[i] == 0x7f) {
            veil_secbuf_free(b);
            snprintf(msg, sizeof msg,
                     "the API key in %s contains control characters",
                     o->api_key_file);
            return local_fail(VEIL_CLIENT_E_CONFIG, msg);
        }
    if (!len) {
        veil_secbuf_free(b);
        snprintf(msg, sizeof msg, "the API key file %s is empty",
                 o->api_key_file);
        return local_fail(VEIL_CLIENT_E_CONFIG, msg);
    }
    *out = b;
    return EXIT_OK;
}

/* ---- output ----------------------------------------------------------- */

/* Replaces every byte of the strings (and member names) of a tree that
 * is not UTF-8 by U+FFFD, so that the JSON printed is valid: a server
 * may put any byte in an answer.  0 when memory ran out. */
static int json_fix_utf8(cJSON *it)
{
    for (; it != NULL; it = it->next) {
        char **slots[2] = {cJSON_IsString(it) ? &it->valuestring : NULL,
                           (it->type & cJSON_StringIsConst) ? NULL
                                                            : &it->string};
        for (int k = 0; k < 2; k++) {
            char *v = slots[k] ? *slots[k] : NULL, *nv;
            size_t len, i = 0, o = 0;
            unsigned cp;

            if (v == NULL)
                continue;
            len = strlen(v);
            while (i < len &&
                   utf8_next((const unsigned char *)v + i, len - i, &cp) > 0)
                i += utf8_next((const unsigned char *)v + i, len - i, &cp);
            if (i == len)
                continue;
            if ((nv = cJSON_malloc(3 * len + 1)) == NULL)
                return 0;
            for (i = 0; i < len;) {
                size_t n =
                    utf8_next((const unsigned char *)v + i, len - i, &cp);
                if (n == 0) {
                    memcpy(nv + o, "\xef\xbf\xbd", 3);
                    o += 3;
                    i++;
                } else {
                    memcpy(nv + o, v + i, n);
                    o += n;
                    i += n;
                }
            }
            nv[o] = '\0';
            veil_wipe(v, len);
            cJSON_free(v);
            *slots[k] = nv;
        }
        if (it->child && !json_fix_utf8(it->child))
            return 0;
    }
    return 1;
}

/* A rough size of a tree printed with indentation: each value on its own
 * line behind one tab per level. */
static size_t json_formatted_size(const cJSON *it, size_t depth)
{
    size_t n = 0;

    for (; it != NULL; it = it->next) {
        n += depth + 8;
        if (it->string)
            n += strlen(it->string);
        if (cJSON_IsString(it) && it->valuestring)
            n += strlen(it->valuestring);
        n += json_formatted_size(it->child, depth + 1);
    }
    return n;
}

/* The largest JSON text printed, and the size above which it is printed
 * compactly (deep nesting can make the indentation alone hundreds of
 * times larger than the answer). */
#define MAX_JSON_OUT (256u * 1024 * 1024)
#define MAX_JSON_FORMATTED (16u * 1024 * 1024)

/* Prints a JSON tree and a newline through a secret buffer (cJSON_Print
 * would leave copies behind in freed memory): indented, or compact when
 * asked or when indented would be large; invalid UTF-8 in it replaced.
 * 1 on success, 0 when writing failed (errno set), -1 when it is larger
 * than MAX_JSON_OUT even compact (or memory ran out). */
static int print_json_as(cJSON *j, int compact)
{
    int formatted = !compact && json_formatted_size(j, 0) <= MAX_JSON_FORMATTED;
    size_t cap = 65536;

    if (!json_fix_utf8(j))
        return -1;
    for (;;) {
        veil_secbuf *b = NULL;
        int ok;
        if (cap > MAX_JSON_OUT || veil_secbuf_new(cap, &b) != VEIL_OK)
            return -1;
        if (cJSON_PrintPreallocated(j, (char *)veil_secbuf_data(b),
                                    (int)cap - 8, formatted)) {
            char *s = (char *)veil_secbuf_data(b);
            size_t len = strlen(s);
            s[len] = '\n'; /* room: 8 bytes were kept */
            ok = write_out(s, len + 1);
            veil_secbuf_free(b);
            return ok;
        }
        veil_secbuf_free(b);
        cap *= 2;
    }
}

static int print_json(cJSON *j)
{
    return print_json_as(j, 0);
}

/* s and a newline (for a PEM: a newline only when it lacks one). */
static int print_text(const char *s, int pem)
{
    size_t len = strlen(s);
    int nl = !(pem && len && s[len - 1] == '\n');

    return write_out(s, len) && (!nl || write_all(STDOUT_FILENO, "\n", 1));
}

/* printed: what print_json or print_text returned. */
static int write_failed(int printed)
{
    char msg[128];

    if (printed < 0)
        snprintf(msg, sizeof msg,
                 "cannot print the answer: it is larger than %u MiB as "
                 "JSON, or memory ran out",
                 MAX_JSON_OUT >> 20);
    else
        snprintf(msg, sizeof msg, "cannot write the answer: %s",
                 strerror(errno));
    say(NULL, msg);
    json_error("OutputError", 0, EXIT_FAIL, msg);
    return EXIT_FAIL;
}

/* ---- commands --------------------------------------------------------- */

static void verbose_fingerprints(veil_client *c)
{
    veil_client_error err;
    char fp[72], line[128];
    char *pem = NULL;

    if (veil_client_public_key(c, &pem, fp, &err) == VEIL_CLIENT_OK) {
        snprintf(line, sizeof line, "client key %s", fp);
        say("info", line);
    }
    free(pem);
}

/* Writes text and a newline to a new file (0600: evidence holds no
 * plaintext, but the sealed packages and what the request went to are
 * the user's business); an existing file is never replaced.  0 with
 * errno set. */
static int write_new_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    int ok, e;

    if (fd < 0)
        return 0;
    ok = write_all(fd, text, strlen(text)) && write_all(fd, "\n", 1);
    e = errno;
    if (close(fd) != 0 && ok) {
        ok = 0;
        e = errno;
    }
    if (!ok)
        unlink(path);
    errno = e;
    return ok;
}

/* What -v says of an answer: attempts, times and token usage. */
static void say_stats(const veil_chat_stats *stats, const cJSON *resp)
{
    char line[256];
    veil_chat_usage u;
    snprintf(line, sizeof line,
             "protocol v%d, %s %s: %u attempt(s); encrypt %.1f ms, network "
             "%.1f ms, decrypt %.1f ms",
             stats->protocol, stats->protocol == 2 ? "request" : "payload",
             stats->protocol == 2 ? stats->request_id : stats->payload_id,
             stats->attempts, stats->encrypt_ns / 1e6, stats->network_ns / 1e6,
             stats->decrypt_ns / 1e6);
    say("info", line);
    if (veil_chat_get_usage(resp, &u)) {
        snprintf(line, sizeof line,
                 "usage: %ld prompt + %ld completion = %ld tokens",
                 u.prompt_tokens, u.completion_tokens, u.total_tokens);
        say("info", line);
    }
}

/* Where the gateway sent the prompt, as its verified TPM quote states
 * (_metadata.attested_backend, set by the library only then). */
static void say_backend(const cJSON *resp)
{
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(resp, "_metadata"),
        "attested_backend");
    const char *model =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "model"));
    const char *up =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "upstream"));
    const char *tr =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "transport"));
    const char *loc =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "location"));
    char line[4400];
    if (!model || !up || !tr || !loc)
        return;
    snprintf(line, sizeof line,
             "attested backend of model %s: %s (transport %s, %s)%s", model, up,
             tr, loc,
             strcmp(loc, "this-host") == 0
                 ? ""
                 : ": the prompt left the attested machine");
    say("info", line);
}

static int cmd_chat(veil_client *c, const struct opts *o, veil_secbuf *prompt,
                    int spinner)
{
    veil_client_error err = {0};
    veil_chat_stats stats = {0};
    veil_request_opts ropts = {0};
    char *evidence = NULL;
    cJSON *req, *resp = NULL;
    const cJSON *calls;
    const char *content;
    veil_client_status st;
    int ok = 1, evidence_failed = 0; /* ok: as print_json returns */

    req = veil_chat_request_new(o->model);
    if (!req ||
        (o->system &&
         !veil_chat_request_add_message(req, "system", o->system)) ||
        !veil_chat_request_add_message(
            req, "user", (const char *)veil_secbuf_data(prompt)) ||
        (o->has_temperature &&
         !cJSON_AddNumberToObject(req, "temperature", o->temperature)) ||
        (o->max_tokens &&
         !cJSON_AddNumberToObject(req, "max_tokens", (double)o->max_tokens))) {
        veil_chat_response_free(req);
        return local_fail(VEIL_CLIENT_E_CONFIG, "out of memory");
    }
    if (spinner)
        spin_start("waiting for the answer");
    if (o->evidence)
        ropts.evidence = &evidence;
    st = veil_chat_create(c, req, &ropts, &resp, &stats, &err);
    spin_stop();
    veil_chat_response_free(req);
    if (st != VEIL_CLIENT_OK)
        return client_fail(&err);
    if (o->trust && o->verbose) {
        char line[4200];
        snprintf(line, sizeof line, "answer %s verified against %s",
                 stats.protocol == 2 ? stats.request_id : stats.payload_id,
                 o->trust);
        say("info", line);
    }
    say_backend(resp);
    /* The answer was verified and is printed either way; a lost evidence
     * file still makes the exit status say so. */
    if (o->evidence && !write_new_file(o->evidence, evidence)) {
        char msg[4200];
        snprintf(msg, sizeof msg, "cannot write the evidence file %s: %s",
                 o->evidence, strerror(errno));
        say(NULL, msg);
        evidence_failed = 1;
    }
    free(evidence);
    /* auto made the client key only when it took v1 */
    if (o->verbose && stats.protocol == 1 &&
        o->protocol != VEIL_CLIENT_PROTOCOL_V1)
        verbose_fingerprints(c);
    if (o->verbose)
        say_stats(&stats, resp);
    content = veil_chat_content(resp);
    calls = veil_chat_tool_calls(resp);
    if (o->json) {
        ok = print_json(resp);
    } else {
        int has_calls = calls && cJSON_GetArraySize(calls) > 0;
        if (content && (*content || !has_calls))
            ok = print_text(content, 0);
        if (ok > 0 && has_calls)
            ok = print_json((cJSON *)calls);
        if (!content && !has_calls)
            say(NULL, "the answer has no content");
    }
    veil_chat_response_free(resp);
    if (ok <= 0)
        return write_failed(ok);
    return evidence_failed ? EXIT_FAIL : EXIT_OK;
}

/* Each embedding of the answer on a line of its own: a JSON array of
 * numbers (or the base64 string a base64 request asked for). */
static int print_embeddings(const cJSON *resp)
{
    const cJSON *d, *data = cJSON_GetObjectItemCaseSensitive(resp, "data");
    int ok = 1, n = 0;

    cJSON_ArrayForEach(d, data)
    {
        cJSON *emb = cJSON_GetObjectItemCaseSensitive(d, "embedding");
        if (!cJSON_IsArray(emb) && !cJSON_IsString(emb))
            continue;
        /* compact, through a secret buffer: an embedding is the answer
         * (cJSON_PrintUnformatted would leave copies in freed memory) */
        ok = cJSON_IsString(emb) ? print_text(emb->valuestring, 0)
                                 : print_json_as(emb, 1);
        n++;
        if (ok <= 0)
            return ok;
    }
    if (n == 0)
        say(NULL, "the answer has no embedding");
    return ok;
}

static int cmd_embed(veil_client *c, const struct opts *o, veil_secbuf *text)
{
    veil_client_error err = {0};
    veil_chat_stats stats = {0};
    cJSON *req = cJSON_CreateObject(), *resp = NULL;
    veil_client_status st;
    int ok;

    if (!req || !cJSON_AddStringToObject(req, "model", o->model) ||
        !cJSON_AddStringToObject(req, "input",
                                 (const char *)veil_secbuf_data(text))) {
        veil_chat_response_free(req);
        return local_fail(VEIL_CLIENT_E_CONFIG, "out of memory");
    }
    st = veil_embeddings_create(c, req, NULL, &resp, &stats, &err);
    veil_chat_response_free(req);
    if (st != VEIL_CLIENT_OK)
        return client_fail(&err);
    if (o->verbose)
        say_stats(&stats, resp);
    ok = o->json ? print_json(resp) : print_embeddings(resp);
    veil_chat_response_free(resp);
    return ok <= 0 ? write_failed(ok) : EXIT_OK;
}

static int cmd_models(veil_client *c, const struct opts *o)
{
    veil_client_error err = {0};
    veil_chat_stats stats = {0};
    cJSON *resp = NULL;
    const cJSON *m;
    int ok = 1;

    if (veil_models_list(c, NULL, &resp, &stats, &err) != VEIL_CLIENT_OK)
        return client_fail(&err);
    if (o->verbose)
        say_stats(&stats, resp);
    if (o->json) {
        ok = print_json(resp);
    } else {
        cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(resp, "data"))
        {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "id");
            if (cJSON_IsString(id) &&
                (ok = print_text(id->valuestring, 0)) <= 0)
                break;
        }
    }
    veil_chat_response_free(resp);
    return ok <= 0 ? write_failed(ok) : EXIT_OK;
}

static int cmd_server_key(veil_client *c, const struct opts *o)
{
    veil_client_error err = {0};
    char fp[72];
    char *pem = NULL;
    int ok;

    if (veil_client_server_key(c, &pem, fp, &err) != VEIL_CLIENT_OK)
        return client_fail(&err);
    if (o->verbose) {
        char line[128];
        snprintf(line, sizeof line, "server key %s", fp);
        say("info", line);
    }
    ok = o->fingerprint ? print_text(fp, 0) : print_text(pem, 1);
    free(pem);
    return ok ? EXIT_OK : write_failed(ok);
}

/* Text on stdout that may quote the gateway: neutralised as in say(). */
static void put_clean(const char *text)
{
    size_t len = strlen(text);
    char *clean = malloc(3 * len + 1);

    if (clean) {
        term_safe(text, len, clean, 0);
        fputs(clean, stdout);
    }
    free(clean);
}

/* One line per check on stdout: "ok   NAME: detail" or "FAIL NAME: ...". */
static void print_check(void *ctx, const char *check, int ok,
                        const char *detail)
{
    (void)ctx;
    fputs(ok ? "ok   " : "FAIL ", stdout);
    put_clean(check);
    fputs(": ", stdout);
    put_clean(detail);
    putchar('\n');
    fflush(stdout);
}

/* "verdict: VERDICT" and, for a failure, " (why)". */
static void print_verdict(const char *verdict, const char *why)
{
    printf("verdict: %s", verdict);
    if (why) {
        fputs(" (", stdout);
        put_clean(why);
        putchar(')');
    }
    putchar('\n');
    fflush(stdout);
}

static int cmd_enroll(const struct opts *o, veil_secbuf *api_key)
{
    veil_enroll_options eo = {0};
    veil_client_error err = {0};

    http_hint = strncmp(o->url, "http://", 7) == 0 && !o->allow_http;
    eo.url = o->url;
    eo.ek_ca_file = o->ek_ca;
    eo.allow_unverified_ek = o->allow_unverified_ek;
    eo.required_pcrs = o->pcrs;
    eo.golden_file = o->golden;
    eo.accept_current = o->accept_current;
    eo.trust_file = o->out_file;
    eo.overwrite = o->force;
    eo.api_key = api_key ? (const char *)veil_secbuf_data(api_key) : NULL;
    eo.ca_file = o->ca_file;
    eo.allow_http = o->allow_http;
    eo.timeout_ms = o->timeout_ms;
    eo.on_check = print_check;
    if (veil_attest_enroll(&eo, &err) != VEIL_CLIENT_OK) {
        print_verdict("NOT ENROLLED", err.detail);
        return client_fail(&err);
    }
    print_verdict("ENROLLED", NULL);
    return EXIT_OK;
}

static int cmd_update(const struct opts *o, veil_secbuf *api_key)
{
    veil_update_options uo = {0};
    veil_client_error err = {0};
    int updated = 0;

    uo.trust_file = o->trust;
    uo.api_key = api_key ? (const char *)veil_secbuf_data(api_key) : NULL;
    uo.ca_file = o->ca_file;
    uo.allow_http = o->allow_http;
    uo.timeout_ms = o->timeout_ms;
    uo.on_check = print_check;
    if (veil_attest_update(&uo, &updated, &err) != VEIL_CLIENT_OK) {
        print_verdict("NOT UPDATED", err.detail);
        return client_fail(&err);
    }
    print_verdict(updated ? "UPDATED" : "CURRENT", NULL);
    return EXIT_OK;
}

/* Reads a whole evidence file (NUL-terminated). */
static char *read_evidence(const char *path, size_t *len, char *why,
                           size_t why_size)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0;

    if (!f) {
        snprintf(why, why_size, "cannot read %s: %s", path, strerror(errno));
        return NULL;
    }
    for (;;) {
        size_t got;
        if (n + 1 >= cap) {
            char *nb;
            cap = cap ? cap * 2 : 65536;
            if (cap > MAX_EVIDENCE + 1 || !(nb = realloc(buf, cap))) {
                snprintf(why, why_size, "%s is larger than %u MiB", path,
                         MAX_EVIDENCE >> 20);
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        snprintf(why, why_size, "cannot read %s: %s", path, strerror(errno));
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int cmd_verify(const struct opts *o)
{
    veil_client_error err = {0};
    veil_trust *trust = NULL;
    char why[4200];
    size_t len = 0;
    char *text;
    veil_client_status st;

    if (veil_trust_load(o->trust, &trust, &err) != VEIL_CLIENT_OK)
        return client_fail(&err);
    if (!(text = read_evidence(o->evidence_in, &len, why, sizeof why))) {
        veil_trust_free(trust);
        return local_fail(VEIL_CLIENT_E_CONFIG, why);
    }
    st = veil_verify_evidence(NULL, trust, text, len, print_check, NULL, &err);
    free(text);
    veil_trust_free(trust);
    if (st == VEIL_CLIENT_OK) {
        print_verdict("VALID", NULL);
        return EXIT_OK;
    }
    if (st == VEIL_CLIENT_E_SECURITY)
        print_verdict("INVALID", err.detail);
    return client_fail(&err);
}

/* Parses a PIN or password source; 0 on a bad spec (message printed). */
static int pin_source(const char *spec, const char *opt, veil_pin_source *out)
{
    char msg[400];

    if (veil_pin_source_parse(spec, out) == VEIL_OK)
        return 1;
    snprintf(msg, sizeof msg, "%s: %s", opt, veil_last_error()->message);
    say(NULL, msg);
    return 0;
}

/* The PIN and password sources the flags name, and the engine: a key
 * directory's password is what the engine asks for there; a token's PIN
 * everywhere else. */
static int open_engine(const struct opts *o, veil_pin_source *pin,
                       veil_pin_source *password, veil_engine **e)
{
    veil_engine_config ecfg = {0};

    if (o->pin_source && !pin_source(o->pin_source, "--pin-source", pin))
        return EXIT_USAGE;
    if (!o->pin_source && isatty(STDIN_FILENO))
        pin->kind = VEIL_PIN_PROMPT;
    if (o->password_source &&
        !pin_source(o->password_source, "--password-source", password))
        return EXIT_USAGE;
    ecfg.pkcs11_module = o->module;
    ecfg.pin = o->key_dir ? *password : *pin;
    ecfg.log = log_stderr;
    ecfg.log_level = o->verbose ? VEIL_LOG_DEBUG : VEIL_LOG_WARN;
    if (veil_engine_new(&ecfg, e) != VEIL_OK) {
        veil_client_error err = {.status = VEIL_CLIENT_E_CONFIG,
                                 .rc = veil_last_error()->code};
        snprintf(err.detail, sizeof err.detail, "%s",
                 veil_last_error()->message);
        return client_fail(&err);
    }
    return EXIT_OK;
}

/* The client configuration of a chat or server-key run. */
static void client_config(enum cmd cmd, const struct opts *o,
                          veil_secbuf *api_key, const veil_pin_source *pin,
                          const veil_pin_source *password, veil_engine *e,
                          veil_client_config *cfg)
{
    veil_client_config_init(cfg);
    http_hint = o->url && strncmp(o->url, "http://", 7) == 0 && !o->allow_http;
    if (o->url)
        cfg->base_url = o->url;
    cfg->api_key = api_key ? (const char *)veil_secbuf_data(api_key) : NULL;
    cfg->allow_http = o->allow_http;
    cfg->ca_file = o->ca_file;
    cfg->timeout_ms = o->timeout_ms;
    cfg->max_retries = o->retries;
    cfg->security_tier = o->tier;
    cfg->server_key_pin = o->pin[0] ? o->pin : NULL;
    cfg->tag_mode = o->tag;
    if (o->token_key) {
        cfg->key_source = VEIL_CLIENT_KEY_TOKEN;
        cfg->key_ref = o->token_key;
    } else if (o->key_dir) {
        cfg->key_source = VEIL_CLIENT_KEY_DIR;
        cfg->key_ref = o->key_dir;
    } else {
        cfg->key_source = VEIL_CLIENT_KEY_EPHEMERAL;
        /* server-key never uses its own key: make a quick one */
        if (cmd == CMD_SERVER_KEY)
            cfg->key_bits = 2048;
    }
    cfg->key_password = *password;
    cfg->engine = e;
    cfg->pkcs11_module = o->module;
    cfg->pin = *pin;
    cfg->log = log_stderr;
    cfg->log_level = o->verbose ? VEIL_LOG_DEBUG : VEIL_LOG_WARN;
    cfg->on_retry = on_retry;
    cfg->trust_file = o->trust;
    cfg->allow_foreign_attestation = o->allow_foreign;
    cfg->allow_small_exponent = o->allow_small_exponent;
    /* server-key is v1's; embed and models never use the client key */
    cfg->protocol =
        cmd == CMD_SERVER_KEY ? VEIL_CLIENT_PROTOCOL_V1 : o->protocol;
    cfg->signing_key_pin = o->signing_pin[0] ? o->signing_pin : NULL;
    cfg->relay_url = cmd == CMD_SERVER_KEY ? NULL : o->relay;
}

static int run(enum cmd cmd, struct opts *o)
{
    veil_client_config cfg;
    veil_client_error err = {0};
    veil_pin_source pin = {0}, password = {0};
    veil_secbuf *prompt = NULL, *api_key = NULL, *sysmsg = NULL;
    veil_engine *e = NULL;
    veil_client *c = NULL;
    veil_trust *trust = NULL;
    int code, spinner, prompting;

    if (cmd == CMD_VERIFY)
        return cmd_verify(o);
    if ((cmd == CMD_CHAT || cmd == CMD_EMBED) &&
        (code = read_prompt(o, &prompt)) != EXIT_OK)
        return code;
    /* --system TEXT is part of the prompt: copied, and wiped from argv
     * (out of /proc/PID/cmdline) as PROMPT is */
    if (o->system) {
        size_t len = strlen(o->system);
        if ((sysmsg = secstr(o->system, len)) == NULL) {
            code = local_fail(VEIL_CLIENT_E_CONFIG, "out of memory");
            goto out;
        }
        veil_wipe((char *)o->system, len);
        o->system = (const char *)veil_secbuf_data(sysmsg);
    }
    if (cmd == CMD_CHAT && o->evidence && access(o->evidence, F_OK) == 0) {
        char msg[4200];
        snprintf(msg, sizeof msg,
                 "the evidence file %s already exists; nothing was sent",
                 o->evidence);
        code = local_fail(VEIL_CLIENT_E_CONFIG, msg);
        goto out;
    }
    /* With a trust file the gateway is the one enrolled there, unless a
     * URL is given (which must then be that one). */
    if (cmd == CMD_CHAT && o->trust && !o->url_given) {
        if (veil_trust_load(o->trust, &trust, &err) != VEIL_CLIENT_OK) {
            code = client_fail(&err);
            goto out;
        }
        o->url = veil_trust_url(trust);
    }
    if ((code = read_api_key(o, &api_key)) != EXIT_OK)
        goto out;
    if (cmd == CMD_ENROLL) {
        code = cmd_enroll(o, api_key);
        goto out;
    }
    if (cmd == CMD_UPDATE) {
        code = cmd_update(o, api_key);
        goto out;
    }
    if ((code = open_engine(o, &pin, &password, &e)) != EXIT_OK)
        goto out;

    client_config(cmd, o, api_key, &pin, &password, e, &cfg);
    tty_filter = !o->raw && isatty(STDOUT_FILENO);

    /* No spinner when stderr is not a terminal, nor when a PIN or password
     * may be asked for on the terminal. */
    prompting = (o->token_key && pin.kind == VEIL_PIN_PROMPT) ||
                (o->key_dir && password.kind == VEIL_PIN_PROMPT);
    spinner = cmd == CMD_CHAT && isatty(STDERR_FILENO) && !prompting;
    if (spinner && !o->token_key && o->protocol == VEIL_CLIENT_PROTOCOL_V1) {
        char path[4200];
        snprintf(path, sizeof path, "%s/private_key.pem",
                 o->key_dir ? o->key_dir : ".");
        spin_start(o->key_dir && access(path, F_OK) == 0 ? "loading the key"
                                                         : "making a key");
    }
    if (veil_client_new(&cfg, &c, &err) != VEIL_CLIENT_OK) {
        code = client_fail(&err);
        goto out;
    }
    if (o->verbose && cfg.protocol == VEIL_CLIENT_PROTOCOL_V1)
        verbose_fingerprints(c);
    if (cmd == CMD_CHAT)
        code = cmd_chat(c, o, prompt, spinner);
    else if (cmd == CMD_EMBED)
        code = cmd_embed(c, o, prompt);
    else if (cmd == CMD_MODELS)
        code = cmd_models(c, o);
    else
        code = cmd_server_key(c, o);
out:
    spin_stop();
    veil_client_free(c);
    veil_engine_free(e);
    veil_secbuf_free(api_key);
    veil_secbuf_free(prompt);
    veil_secbuf_free(sysmsg);
    veil_trust_free(trust);
    return code;
}

/* help adds the exit codes and the environment veil reads (to stderr too,
 * with no command) */
static void help_more(FILE *f, int asked)
{
    (void)asked;
    fputs("Exit codes (0 to 5 the same in veil-keys and veild): 0 "
          "success,\n1 other error, 2 usage, 3 token or key not found, "
          "4 PIN wrong, locked,\nmissing or unreadable, 5 module or "
          "token failure; else 10 + the error class:\n",
          f);
    for (int s = VEIL_CLIENT_E_INVALID_REQUEST; s <= VEIL_CLIENT_E_CONFIG;
         s++) {
        static const char *const why[] = {
            "",
            "400, or refused before sending",
            "401: missing or wrong API key",
            "403: model not allowed on this tier",
            "404, or another status",
            "429",
            "500",
            "503",
            "network failure or timeout",
            "bad or unverified answer, key pin, TLS, http",
            "the client was disposed",
            "bad configuration, key or file",
        };
        fprintf(f, "  %d %-25s %s\n", EXIT_CLASS_BASE + s,
                veil_client_status_name((veil_client_status)s), why[s]);
    }
    veil_env_help(f, VEIL_TOOL_VEIL);
}

int main(int argc, char **argv)
{
    static const veil_cmd cmds[] = {
        {"chat", CMD_CHAT, usage_chat},
        {"server-key", CMD_SERVER_KEY, usage_server_key},
        {"attest", CMD_ENROLL, usage_enroll},
        {"verify", CMD_VERIFY, usage_verify},
        {"embed", CMD_EMBED, usage_embed},
        {"models", CMD_MODELS, usage_models},
    };
    /* an unknown command is echoed only when it looks like a command
     * word, not like a prompt */
    static const veil_cmdtable table = {
        "veil", usage_main, cmds, sizeof cmds / sizeof cmds[0], help_more, 1};
    struct opts o = {0};
    int code;
    const veil_cmd *c;

    /* Before anything secret is read (a PIN, key password, API key, the
     * prompt, the answer): no core file, and no ptrace or /proc/PID/mem
     * from other processes of the user, as in veild. */
    if (veil_disable_core_dumps() != VEIL_OK)
        fprintf(stderr,
                "veil: warning: core dumps could not be turned off: "
                "%s\n",
                veil_last_error()->message);
    c = veil_cmdtable_find(&table, argc, argv, &code);
    if (c == NULL)
        return code;
    /* "attest" has two subcommands: "attest enroll", "attest update". */
    enum cmd cmd = (enum cmd)c->id;
    const char *usage = c->usage;
    if (cmd == CMD_ENROLL) {
        if (argc > 2 &&
            (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0)) {
            fputs(usage, stdout);
            fputs(usage_update, stdout);
            return EXIT_OK;
        }
        if (argc > 2 && strcmp(argv[2], "update") == 0) {
            cmd = CMD_UPDATE;
            usage = usage_update;
        } else if (argc < 3 || strcmp(argv[2], "enroll") != 0) {
            fputs("veil: attest takes a subcommand: enroll or update\n",
                  stderr);
            fputs(usage, stderr);
            fputs(usage_update, stderr);
            return EXIT_USAGE;
        }
        argc--;
        argv++;
    }
    int parsed = parse_opts(argc - 1, argv + 1, cmd, &o);
    if (parsed <= 0) {
        /* -1: the message says what to do; no usage after it */
        if (parsed == 0)
            fputs(usage, stderr);
        return EXIT_USAGE;
    }
    if (o.help) {
        fputs(usage, stdout);
        return EXIT_OK;
    }
    return run(cmd, &o);
}
