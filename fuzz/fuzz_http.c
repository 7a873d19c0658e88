/* libFuzzer harness: veild's HTTP request path, in this process, without
 * a socket.
 *
 * The harness starts the real server (gateway/server.c, its route modules
 * and the HTTP layer service/http.c) through its public entry points
 * (gateway/gateway.h: gw_server_start with a gw_deps as veild.c makes it,
 * but with no_listen): echo models (one per tier set, one with a
 * prompt-cache salt field), a software server key (the fuzzing-only
 * RSA-2048 key fuzz/data/server-key), a software answer-signing key, an
 * API key file, the replay register in a fresh state directory under /tmp
 * (window 1 s, so that a seed is not only ever a replay), rate limits (set
 * high) and the signature store; no TPM.  Each input is one request handed
 * to the server's HTTP layer by svc_http_inject (service/http.h), in this
 * thread: the same code as a request read from a socket runs on it (route,
 * Content-Length and body limits, the API key and rate limit, body memory,
 * worker slot, handler, answer), and the answer is captured.  What does
 * not run is libmicrohttpd's own parsing of the request and its framing,
 * and the connection handling (deadlines, drains): that is MHD's code and
 * tests/test_gateway_conn's.
 *
 * Input: [flags][request head][\r\n\r\n][body]
 *   flags bit 0: the body is the plaintext of a chat request, which the
 *                harness seals to the server key (bit 1: tag appended, as
 *                the JavaScript client does; else separate) so that the
 *                decrypted-request checks are reached; otherwise the body
 *                is given as it is (the package parser behind HTTP).
 *         bit 2: the harness adds X-Public-Key (the fuzzing-only client
 *                key fuzz/data/client-key.pem, percent-encoded) after the
 *                input's headers, so that mutations go to the rest of the
 *                request (and the parsed key stays in the server's key
 *                cache); the seed completion-package carries the header
 *                itself, and the key's parse is fuzzed through it.
 *   the head:    request line ("METHOD URL VERSION") and header lines
 *                ("Name: value"), as the fuzzer made them, parsed by the
 *                harness where libmicrohttpd would: stray CR, LF and NUL
 *                inside a line become spaces, a value loses its leading
 *                and trailing blanks, a line without a colon is dropped
 *                (MHD would answer 400 without reaching veild's code), and
 *                so are Content-Length, Transfer-Encoding, Connection and
 *                Expect: the body is the framing (svc_http_inject gives it
 *                its Content-Length).
 * Every request must get an answer (a status and its Content-Type):
 * none would be a connection closed without a word, a finding (abort). */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "fuzz.h"
#include "gateway.h"
#include "http.h"
#include "package.h"
#include "util.h"

/* the API key the seeds send (Authorization: Bearer ...) */
#define FUZZ_API_KEY "veil-fuzz-api-key"
#define MAX_HEAD 16384

static struct {
    gw_config cfg;
    gw_server *server;
    svc_http *http;
    veil_key *key;
    char *xpk;              /* X-Public-Key for flags bit 2 */
    unsigned long next_src; /* client address rotation, 127.0.0.0/8 */
    char state[64];         /* the state directory, removed at exit */
} H;

static void remove_state(void)
{
    static const char *const files[] = {"replay.db", "cache-salt.key"};
    char p[128];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", H.state, files[i]);
        unlink(p);
    }
    rmdir(H.state);
}

static void setup(void)
{
    char path[4096], ref[4200], err[512], keys[] = "/tmp/veil-fuzz-keysXXXXXX";
    char state[] = "/tmp/veil-fuzz-stateXXXXXX";
    veil_key *signer = NULL;
    uint8_t hash[32];
    char hex[65];

    gw_config_init(&H.cfg);
    fuzz_data_path("client-key.pem", path, sizeof path);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(path, 1, sizeof path - 1, f) : 0;
    if (f)
        fclose(f);
    path[n] = '\0';
    if (n == 0 || (H.xpk = veil_percent_encode(path)) == NULL)
        fuzz_die("client key");
    fuzz_data_path("server-key", path, sizeof path);
    snprintf(ref, sizeof ref, "dir:%s", path);
    /* the API key file: one key, its name "fuzz" */
    int fd = mkstemp(keys);
    SHA256((const uint8_t *)FUZZ_API_KEY, strlen(FUZZ_API_KEY), hash);
    veil_hex(hash, 32, hex);
    if (fd < 0 || dprintf(fd, "sha256:%s fuzz\n", hex) < 0)
        fuzz_die("API key file");
    close(fd);
    /* clang-format off */
    static const char *const settings[][2] = {
        {"model", "echo=echo"},
        {"model", "std-only=echo,tiers=standard"},
        {"model", "salted=echo,cache-salt=cache_salt"},
        {"rate", "1000000"},
        {"burst", "1000000"},
        {"body_limit", "64K"},
        {"workers", "2"},
        {"replay_window", "1"},
        {"replay_capacity", "65536"},
        {"log_level", "error"},
    };
    /* clang-format on */
    for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++)
        if (gw_config_set(&H.cfg, settings[i][0], settings[i][1], err,
                          sizeof err) != 0)
            fuzz_die(err);
    if (mkdtemp(state) == NULL)
        fuzz_die("state directory");
    snprintf(H.state, sizeof H.state, "%s", state);
    atexit(remove_state);
    if (gw_config_set(&H.cfg, "server_key", ref, err, sizeof err) != 0 ||
        gw_config_set(&H.cfg, "state_dir", state, err, sizeof err) != 0 ||
        gw_config_set(&H.cfg, "api_keys", keys, err, sizeof err) != 0 ||
        gw_config_check(&H.cfg, err, sizeof err) != 0)
        fuzz_die(err);

    veil_keygen_params p = {.type = VEIL_KEY_EC_P256};
    gw_deps d = {
        .cfg = &H.cfg,
        .engine = fuzz_engine(),
        .server_key = H.key = fuzz_key("server-key"),
        .auth = gw_auth_load(keys, err, sizeof err),
        .strikes =
            gw_strikes_open(state, H.cfg.replay_window, H.cfg.replay_capacity,
                            H.cfg.replay_sync, NULL, err, sizeof err),
        .rate = gw_rate_new(H.cfg.rate, H.cfg.burst, 1024),
        .signlog = gw_signlog_new(60, 4096),
        .log_level = VEIL_LOG_ERROR,
        .no_listen = 1,
    };
    unlink(keys);
    if (d.auth == NULL || d.strikes == NULL || d.rate == NULL ||
        d.signlog == NULL ||
        veil_key_generate(fuzz_engine(), "software", &p, &signer) != VEIL_OK ||
        veil_key_fingerprint(H.key, d.encryption_key_sha256) != VEIL_OK ||
        veil_key_fingerprint(signer, d.signing_key_sha256) != VEIL_OK)
        fuzz_die("gateway parts");
    d.signing_key = signer;
    /* gw_deps is borrowed for the server's life: the parts live until
     * the process ends. */
    if ((H.server = gw_server_start(&d, err, sizeof err)) == NULL)
        fuzz_die(err);
    H.http = gw_server_http(H.server);
}

/* A framing header: the harness's (svc_http_inject's) to set. */
static int framing(const char *name)
{
    static const char *const names[] = {"content-length", "transfer-encoding",
                                        "connection", "expect"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(name, names[i]) == 0)
            return 1;
    return 0;
}

static char *trim(char *s)
{
    char *e = s + strlen(s);
    while (*s == ' ' || *s == '\t')
        s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
        *--e = '\0';
    return s;
}

/* One request: the head parsed in place in head (its lines
 * NUL-terminated), header pairs into hdr (room for max pairs).  The number
 * of pairs, or -1 when there is no request line. */
static int parse(char *head, const char **method, const char **url,
                 const char **hdr, size_t max)
{
    size_t n = 0;
    char *line = head, *next;

    for (; line; line = next) {
        if ((next = strstr(line, "\r\n")) != NULL) {
            *next = '\0';
            next += 2;
        }
        for (char *p = line; *p; p++)
            if (*p == '\r' || *p == '\n')
                *p = ' ';
        if (line == head) { /* METHOD SP URL [SP VERSION] */
            char *sp = strchr(line, ' '), *u;
            if (sp == line || sp == NULL)
                return -1;
            *sp = '\0';
            for (u = sp + 1; *u == ' '; u++)
                ;
            if (*u == '\0')
                return -1;
            u[strcspn(u, " ")] = '\0';
            *method = line;
            *url = u;
            continue;
        }
        char *colon = strchr(line, ':');
        if (colon == NULL || colon == line || n == max)
            continue;
        *colon = '\0';
        if (strpbrk(line, " \t") || framing(line))
            continue;
        hdr[2 * n] = line;
        hdr[2 * n + 1] = trim(colon + 1);
        n++;
    }
    return (int)n;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    setup();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char head[MAX_HEAD + 1];
    static const char *hdr[2 * (MAX_HEAD / 4 + 1) + 1];
    const char *in = (const char *)data + 1, *end = (const char *)data + size;
    const char *method, *url, *sep;
    char *sealed = NULL;
    svc_answer out;

    if (size < 2)
        return 0;
    sep = memmem(in, (size_t)(end - in), "\r\n\r\n", 4);
    size_t head_len = (size_t)((sep ? sep : end) - in);
    if (head_len == 0 || head_len > MAX_HEAD)
        return 0;
    for (size_t i = 0; i < head_len; i++) /* a NUL ends no line */
        head[i] = in[i] ? in[i] : ' ';
    head[head_len] = '\0';
    int n = parse(head, &method, &url, hdr, MAX_HEAD / 4);
    if (n < 0)
        return 0;
    if (data[0] & 4) {
        hdr[2 * n] = "X-Public-Key";
        hdr[2 * n++ + 1] = H.xpk;
    }
    hdr[2 * n] = NULL;
    svc_inject req = {.method = method, .url = url, .headers = hdr};
    req.body = sep ? sep + 4 : end;
    req.len = (size_t)(end - req.body);
    if (data[0] & 1) {
        if (veil_pkg_seal(fuzz_engine(), H.key, (const uint8_t *)req.body,
                          req.len,
                          data[0] & 2 ? VEIL_TAG_APPENDED : VEIL_TAG_SEPARATE,
                          -1, &sealed) != VEIL_OK)
            return 0;
        req.body = sealed;
        req.len = strlen(sealed);
    }
    /* a different client address each time, as before over loopback */
    struct sockaddr_in src = {.sin_family = AF_INET};
    H.next_src = H.next_src % 0xfffffe + 1;
    src.sin_addr.s_addr = htonl(0x7f000000u | (uint32_t)H.next_src);
    req.client = (const struct sockaddr *)&src;
    if (svc_http_inject(H.http, &req, &out) != 0)
        fuzz_die("out of memory");
    free(sealed);
    if (getenv("VEIL_FUZZ_VERBOSE"))
        fprintf(stderr, "answer: %d %s\n", out.status,
                out.body ? out.body : "(none)");
    /* every request gets an answer with its type: none would be a closed
     * connection, which only a failed allocation may cause (and here an
     * allocation does not fail: it aborts) */
    if (out.status < 100 || out.status > 599 || out.headers == NULL ||
        strncmp(out.headers, "Content-Type: ", 14) != 0) {
        fprintf(stderr, "fuzz_http: %s (status %d)\n",
                out.status ? "an answer without its headers" : "no answer",
                out.status);
        abort();
    }
    svc_answer_free(&out);
    return 0;
}
