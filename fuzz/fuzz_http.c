/* libFuzzer harness: veild's HTTP request path, in this process.
 *
 * The harness starts the real server (gateway/server.c, its route modules
 * and the HTTP layer service/http.c) through its public
 * entry points only (gateway/gateway.h: gw_server_start with a gw_deps as
 * veild.c makes it): echo models (one per tier set, one with a prompt-cache
 * salt field), a software server key (the fuzzing-only
 * fuzz/data/server-key), a software answer-signing key, an API key file,
 * the replay register in a fresh state directory under /tmp (window 1 s,
 * so that a seed is not only ever a replay), rate limits (set high) and
 * the signature store; no TPM.  It listens on 127.0.0.1 on a free port, so
 * every input is one real HTTP exchange over loopback handled by the
 * server's own threads in this process: the sanitizers and libFuzzer's
 * coverage see the handler, and nothing leaves the machine.
 *
 * Input: [flags][request head][\r\n\r\n][body]
 *   flags bit 0: the body is the plaintext of a chat request, which the
 *                harness seals to the server key (bit 1: tag appended, as
 *                the JavaScript client does; else separate) so that the
 *                decrypted-request checks are reached; otherwise the body
 *                is sent as it is (the package parser behind HTTP).
 *   the head:    request line and header lines, as the fuzzer made them.
 *                The harness frames the message itself: it drops any
 *                Content-Length, Transfer-Encoding, Connection and Expect
 *                line, turns stray CR and LF inside a line into spaces,
 *                and adds Content-Length and Connection: close.  (MHD's
 *                own parsing is not the target; a body the server would
 *                wait for forever would only stall the run.)
 * The exchange must end with a complete HTTP answer within the timeout:
 * a server that does not answer is a finding (abort). */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "fuzz.h"
#include "gateway.h"
#include "package.h"
#include "util.h"

/* the API key the seeds send (Authorization: Bearer ...) */
#define FUZZ_API_KEY "veil-fuzz-api-key"
#define ANSWER_TIMEOUT_MS 20000
#define MAX_HEAD 16384

static struct {
    gw_config cfg;
    gw_server *server;
    veil_key *key;
    struct sockaddr_in addr;
    unsigned long next_src; /* source address rotation, 127.0.0.0/8 */
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

    signal(SIGPIPE, SIG_IGN);
    gw_config_init(&H.cfg);
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
        {"listen", "127.0.0.1"},
        {"port", "0"},
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
                            H.cfg.replay_sync, err, sizeof err),
        .rate = gw_rate_new(H.cfg.rate, H.cfg.burst, 1024),
        .signlog = gw_signlog_new(60, 4096),
        .log_level = VEIL_LOG_ERROR,
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
    H.addr.sin_family = AF_INET;
    H.addr.sin_port = htons((uint16_t)gw_server_port(H.server));
    H.addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

/* A framing header the harness sets itself. */
static int framing(const char *line, size_t n)
{
    static const char *const names[] = {"content-length", "transfer-encoding",
                                        "connection", "expect"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        size_t k = strlen(names[i]);
        if (n > k && strncasecmp(line, names[i], k) == 0 &&
            (line[k] == ':' || line[k] == ' ' || line[k] == '\t'))
            return 1;
    }
    return 0;
}

/* The message to send, malloc'd; NULL when the input cannot be one. */
static char *build(const uint8_t *data, size_t size, size_t *out_len)
{
    const char *in = (const char *)data + 1, *end = (const char *)data + size;
    const char *sep = memmem(in, (size_t)(end - in), "\r\n\r\n", 4);
    const char *head_end = sep ? sep : end;
    const char *body = sep ? sep + 4 : end;
    size_t body_len = (size_t)(end - body);
    char *sealed = NULL;

    if (head_end - in > MAX_HEAD || head_end == in)
        return NULL;
    if (data[0] & 1) {
        if (veil_pkg_seal(fuzz_engine(), H.key, (const uint8_t *)body, body_len,
                          data[0] & 2 ? VEIL_TAG_APPENDED : VEIL_TAG_SEPARATE,
                          -1, &sealed) != VEIL_OK)
            return NULL;
        body = sealed;
        body_len = strlen(sealed);
    }
    size_t cap = (size_t)(head_end - in) + body_len + 128, n = 0;
    char *msg = malloc(cap);
    if (msg == NULL) {
        free(sealed);
        return NULL;
    }
    for (const char *l = in; l < head_end;) {
        const char *nl = memmem(l, (size_t)(head_end - l), "\r\n", 2);
        const char *le = nl ? nl : head_end;
        if (l == in || !framing(l, (size_t)(le - l))) {
            for (const char *p = l; p < le; p++)
                msg[n++] = (*p == '\r' || *p == '\n' || *p == '\0') ? ' ' : *p;
            msg[n++] = '\r';
            msg[n++] = '\n';
        }
        l = nl ? nl + 2 : head_end;
    }
    n += (size_t)snprintf(msg + n, cap - n,
                          "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                          body_len);
    memcpy(msg + n, body, body_len);
    *out_len = n + body_len;
    free(sealed);
    return msg;
}

/* Sends msg and reads the answer to the end; 1 when it was an HTTP
 * answer (or the server closed the connection on a request it could not
 * parse), 0 when none came in time. */
static int exchange(const char *msg, size_t len, char *status, size_t size)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in src = {.sin_family = AF_INET};
    char buf[8192];
    size_t got = 0;
    int ok = 0;

    if (fd < 0)
        fuzz_die("socket");
    /* a different source address each time: no TIME_WAIT pile-up on one
     * address, and no per-address limit is reached by the run itself */
    H.next_src = H.next_src % 0xfffffe + 1;
    src.sin_addr.s_addr = htonl(0x7f000000u | (uint32_t)H.next_src);
    /* the port is picked at connect time, unique per address pair: a bound
     * port would come from one range shared by all addresses, which the
     * run's closed connections exhaust */
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&src, sizeof src) != 0 ||
        connect(fd, (struct sockaddr *)&H.addr, sizeof H.addr) != 0) {
        fprintf(stderr, "fuzz_http: connect from 127.%lu.%lu.%lu: %s\n",
                H.next_src >> 16, H.next_src >> 8 & 255, H.next_src & 255,
                strerror(errno));
        fuzz_die("connecting to the in-process gateway");
    }
    for (size_t off = 0; off < len;) {
        ssize_t w = send(fd, msg + off, len - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break; /* the server may close early (413, 400): read what it said
                    */
        off += (size_t)w;
    }
    status[0] = '\0';
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, ANSWER_TIMEOUT_MS);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0)
            break; /* no answer in time */
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            ok = 1; /* closed: the answer (if any) is complete */
            break;
        }
        if (got == 0)
            snprintf(status, size, "%.*s", (int)r, buf);
        got += (size_t)r;
    }
    close(fd);
    return ok;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    setup();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char status[2048];
    size_t len;
    char *msg;

    if (size < 2 || (msg = build(data, size, &len)) == NULL)
        return 0;
    int answered = exchange(msg, len, status, sizeof status);
    free(msg);
    if (getenv("VEIL_FUZZ_VERBOSE"))
        fprintf(stderr, "answer: %.12s ... %s\n", status,
                strstr(status, "\r\n\r\n") ? strstr(status, "\r\n\r\n") + 4
                                           : "");
    if (!answered) {
        fprintf(stderr, "fuzz_http: no answer within %d ms\n",
                ANSWER_TIMEOUT_MS);
        abort();
    }
    return 0;
}
