/* veild's connections under attack, for real: the daemon started as a
 * process (a software server key in a key directory, the echo model and
 * tests/mock-upstream's slow models) and spoken to over plain sockets, as
 * a hostile or careless client would: half-sent header blocks, trickled
 * bodies, answers never read, whole bodies sent before reading a refusal,
 * SIGTERM with requests waiting.  Every case checks what a client sees
 * (an answer, its status, a closed connection) and what veild logged.
 *
 * Deadlines are set small in veild's flags (1 to 3 s) and the test asserts
 * outcomes, never durations; a socket wait gives up after SOCK_WAIT_S so a
 * broken gateway fails the test instead of hanging it.
 *
 * Needs VEIL_BUILDDIR (veild and tests/mock-upstream), VEIL_TEST_DIR and,
 * for the PIN-source case, the SoftHSM2 token of tests/env/with-tokens.sh.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <openssl/sha.h>

#include "gateway.h"
#include "gwtest.h"
#include "package.h"
#include "testutil.h"
#include "util.h"
#include "veil/client.h"

#define COMPLETION "/v1/chat/secure_completion"
/* The longest any socket wait here lasts before the test gives up. */
#define SOCK_WAIT_S 60
#define MIB (1024u * 1024u)

static const char *builddir;
static veil_engine *sw_e;
static veil_key *srv_key; /* the server key (software, in key_dir) */
static veil_key *cli_key; /* the client's */
static char *cli_hdr;     /* its PEM, percent-encoded (X-Public-Key) */
static char key_ref[600]; /* dir:KEY_DIR */

/* ---- processes ----------------------------------------------------------- */

typedef tu_proc proc;

static proc upstream;

/* veild with the software key and the echo model, then EXTRA flags (later
 * flags override earlier ones); a fresh log. */
static int gw_start(proc *p, const char *name, const char *const *extra)
{
    const char *base[] = {"--server-key", key_ref,  "--model",
                          "echo=echo",    "--rate", "1000",
                          "--burst",      "1000",   NULL};

    return gt_veild_start(p, name, base, extra, TU_LOG_FRESH);
}

/* Lines of p's log holding every one of the texts (NULL-terminated). */
static int log_count(const proc *p, const char *const *texts)
{
    char *log = tu_read_file(p->log, NULL), *line, *save = NULL;
    int n = 0;

    for (line = log ? strtok_r(log, "\n", &save) : NULL; line;
         line = strtok_r(NULL, "\n", &save)) {
        int all = 1;

        for (size_t i = 0; texts[i] && all; i++)
            all = strstr(line, texts[i]) != NULL;
        n += all;
    }
    free(log);
    return n;
}

/* Waits (at most SOCK_WAIT_S) until p's log has `want` such lines. */
static int log_wait(const proc *p, const char *const *texts, int want)
{
    double until = tu_now() + SOCK_WAIT_S;
    int n;

    while ((n = log_count(p, texts)) < want && tu_now() < until)
        tu_sleep_ms(50);
    return n;
}

/* ---- sockets ------------------------------------------------------------- */

/* 1 when the server closed fd (end of input or reset) before sending
 * anything; waits at most SOCK_WAIT_S. */
static int closed_by_server(int fd)
{
    char c;
    ssize_t n;

    while ((n = recv(fd, &c, 1, 0)) < 0 && errno == EINTR)
        ;
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

/* ---- requests ------------------------------------------------------------ */

/* A complete completion request (head and body) for model with the prompt,
 * sealed to the server key; extra: more header lines ("" or "Name: v\r\n").
 * Its payload ID goes to pid (may be NULL). */
static char *request(const char *model, const char *prompt, const char *extra,
                     size_t *len, char pid[37])
{
    cJSON *req = veil_chat_request_new(model);
    char *text = NULL, *pkg = NULL, *out = NULL, id[37];
    size_t head_max, n;

    if (req && veil_chat_request_add_message(req, "user", prompt))
        text = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    if (text == NULL || veil_uuid4(sw_e, id) != VEIL_OK ||
        veil_pkg_seal(sw_e, srv_key, (const uint8_t *)text, strlen(text),
                      VEIL_TAG_SEPARATE, -1, &pkg) != VEIL_OK) {
        free(text);
        return NULL;
    }
    free(text);
    head_max = 1024 + strlen(cli_hdr) + strlen(extra);
    out = malloc(head_max + strlen(pkg));
    if (out) {
        n = (size_t)snprintf(out, head_max,
                             "POST " COMPLETION " HTTP/1.1\r\n"
                             "Host: 127.0.0.1\r\n"
                             "Content-Type: application/octet-stream\r\n"
                             "X-Payload-ID: %s\r\nX-Public-Key: %s\r\n"
                             "X-Security-Tier: standard\r\n%s"
                             "Content-Length: %zu\r\n\r\n",
                             id, cli_hdr, extra, strlen(pkg));
        memcpy(out + n, pkg, strlen(pkg));
        *len = n + strlen(pkg);
    }
    free(pkg);
    if (pid)
        memcpy(pid, id, 37);
    return out;
}

/* The answer's message content opened with the client key (malloc'd), or
 * NULL. */
static char *content(const gt_answer *a)
{
    veil_secbuf *pt = NULL;
    veil_pkg_meta meta;
    cJSON *j;
    const cJSON *choices, *msg, *c;
    char *out = NULL;

    if (a->status != 200 || a->body == NULL ||
        veil_pkg_open(sw_e, cli_key, a->body, a->len, &pt, &meta) != VEIL_OK)
        return NULL;
    j = cJSON_ParseWithLength((const char *)veil_secbuf_data(pt),
                              veil_secbuf_len(pt));
    choices = cJSON_GetObjectItemCaseSensitive(j, "choices");
    msg = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(choices, 0),
                                           "message");
    c = cJSON_GetObjectItemCaseSensitive(msg, "content");
    if (cJSON_IsString(c))
        out = strdup(c->valuestring);
    cJSON_Delete(j);
    veil_secbuf_free(pt);
    return out;
}

/* One exchange from source address src: 1 when the echo came back. */
static int legit(const proc *g, const char *src, const char *prompt)
{
    size_t len;
    char *req = request("echo", prompt, "", &len, NULL), *got = NULL;
    int fd = tu_tcp_connect(src, g->port, 0, SOCK_WAIT_S), ok = 0;
    gt_answer a = {0};

    if (req && fd >= 0 && tu_send_all(fd, req, len) == 0) {
        gt_read_answer(fd, &a);
        got = content(&a);
        ok = got && strcmp(got, prompt) == 0;
        if (!ok)
            fprintf(stderr, "legitimate client from %s: status %d\n%s\n",
                    src ? src : "127.0.0.1", a.status, a.head);
    } else {
        fprintf(stderr, "legitimate client: cannot connect or send: %s\n",
                strerror(errno));
    }
    if (fd >= 0)
        close(fd);
    free(got);
    free(req);
    gt_answer_free(&a);
    return ok;
}

/* A GET: the status (0: closed without an answer). */
static int req_status(const proc *g, const char *src, const char *method,
                      const char *path)
{
    char req[256];
    int fd = tu_tcp_connect(src, g->port, 0, SOCK_WAIT_S), st = 0;
    gt_answer a;

    if (fd < 0)
        return -1;
    snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
             method, path);
    if (tu_send_all(fd, req, strlen(req)) == 0) {
        gt_read_answer(fd, &a);
        st = a.status;
        gt_answer_free(&a);
    }
    close(fd);
    return st;
}

static int get_status(const proc *g, const char *src, const char *path)
{
    return req_status(g, src, "GET", path);
}

/* ---- 3. slowloris: header deadline and per-address cap ------------------- */

#define HALF_OPEN 8

static void test_slowloris(void)
{
    const char *extra[] = {"--header-timeout",
                           "3",
                           "--connections-per-address",
                           "8",
                           "--log-level",
                           "debug",
                           NULL};
    /* the connections it closed, each with the client's address */
    const char *closed_line[] = {"connection closed: header_timeout",
                                 "(client 127.0.0.1)", NULL};
    /* a method no route takes is logged as it came, not as GET */
    const char *patch_line[] = {"PATCH /v1/models", NULL};
    static const char partial[] = "POST " COMPLETION " HTTP/1.1\r\n"
                                  "Host: 127.0.0.1\r\n";
    int fd[HALF_OPEN], closed = 0;
    double until;
    proc g;

    CU_ASSERT_EQUAL_FATAL(gw_start(&g, "conn-slowloris", extra), 0);
    for (int i = 0; i < HALF_OPEN; i++) {
        fd[i] = tu_tcp_connect(NULL, g.port, 0, SOCK_WAIT_S);
        CU_ASSERT_FATAL(fd[i] >= 0);
        CU_ASSERT_EQUAL(tu_send_all(fd[i], partial, sizeof partial - 1), 0);
    }
    /* one more from the same address is over the cap: closed unanswered */
    CU_ASSERT_EQUAL(get_status(&g, NULL, "/pki/public_key"), 0);
    /* another address is served meanwhile */
    CU_ASSERT_EQUAL(get_status(&g, "127.0.0.2", "/pki/public_key"), 200);
    CU_ASSERT_TRUE(legit(&g, "127.0.0.2", "past the slowloris"));

    /* The half-open ones keep trickling a header byte every 200 ms (never
     * idle): the header deadline closes them all the same. */
    until = tu_now() + SOCK_WAIT_S;
    while (closed < HALF_OPEN && tu_now() < until) {
        struct pollfd p[HALF_OPEN];

        for (int i = 0; i < HALF_OPEN; i++)
            p[i] = (struct pollfd){fd[i], POLLIN, 0};
        if (poll(p, HALF_OPEN, 200) == 0) {
            for (int i = 0; i < HALF_OPEN; i++)
                if (fd[i] >= 0)
                    send(fd[i], "X", 1, MSG_NOSIGNAL);
            continue;
        }
        for (int i = 0; i < HALF_OPEN; i++)
            if (fd[i] >= 0 && p[i].revents) {
                CU_ASSERT_TRUE(closed_by_server(fd[i]));
                close(fd[i]);
                fd[i] = -1;
                closed++;
            }
    }
    CU_ASSERT_EQUAL(closed, HALF_OPEN);
    CU_ASSERT_EQUAL(log_wait(&g, closed_line, HALF_OPEN), HALF_OPEN);
    for (int i = 0; i < HALF_OPEN; i++)
        if (fd[i] >= 0)
            close(fd[i]);
    /* and the address is welcome again, once veild has counted those
     * connections out (its threads end a moment after the close) */
    until = tu_now() + SOCK_WAIT_S;
    while (get_status(&g, NULL, "/pki/public_key") != 200 && tu_now() < until)
        tu_sleep_ms(50);
    CU_ASSERT_TRUE(legit(&g, NULL, "after the slowloris"));
    CU_ASSERT_EQUAL(req_status(&g, NULL, "PATCH", "/v1/models"), 405);
    CU_ASSERT_EQUAL(log_wait(&g, patch_line, 1), 1);
    gt_stop_ok(&g);
}

/* ---- 2. slow uploaders and slow readers hold no worker ------------------- */

#define SLOW 4 /* of each kind: 4 x workers (1) */

typedef struct trickler {
    int fd;
    int closed; /* the server closed it */
} trickler;

/* Sends a body byte every 200 ms until the server closes the connection
 * (or SOCK_WAIT_S pass). */
static void *trickle(void *arg)
{
    trickler *t = arg;
    double until = tu_now() + SOCK_WAIT_S;

    while (tu_now() < until) {
        struct pollfd p = {t->fd, POLLIN, 0};

        if (poll(&p, 1, 200) > 0) {
            t->closed = closed_by_server(t->fd);
            return NULL;
        }
        if (send(t->fd, "a", 1, MSG_NOSIGNAL) < 0) {
            t->closed = 1;
            return NULL;
        }
    }
    return NULL;
}

static void test_slow_clients(void)
{
    const char *extra[] = {"--workers",
                           "1",
                           "--body-min-rate",
                           "4K",
                           "--answer-timeout",
                           "2",
                           "--connections-per-address",
                           "64",
                           NULL};
    const char *body_cut[] = {"cut (body below body_min_rate; no answer)",
                              NULL};
    const char *answer_cut[] = {
        "cut (answer_timeout; its 200 answer was not delivered)", NULL};
    char head[512], pid[37], *big, *req = NULL;
    int rd[SLOW];
    trickler up[SLOW];
    pthread_t th[SLOW];
    size_t len, prompt_len = 6 * MIB;
    proc g;

    CU_ASSERT_EQUAL_FATAL(gw_start(&g, "conn-slow", extra), 0);

    /* slow readers: a 6 MiB echo each, never read (a 4 KiB window) */
    big = malloc(prompt_len + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(big, 'r', prompt_len);
    big[prompt_len] = '\0';
    for (int i = 0; i < SLOW; i++) {
        req = request("echo", big, "", &len, NULL);
        rd[i] = tu_tcp_connect(NULL, g.port, 4096, SOCK_WAIT_S);
        CU_ASSERT_FATAL(req && rd[i] >= 0);
        CU_ASSERT_EQUAL(tu_send_all(rd[i], req, len), 0);
        free(req);
    }
    free(big);

    /* slow uploaders: a body of 64 KiB declared, a byte every 200 ms */
    CU_ASSERT_EQUAL_FATAL(veil_uuid4(sw_e, pid), VEIL_OK);
    snprintf(head, sizeof head,
             "POST " COMPLETION " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             "X-Payload-ID: %s\r\nContent-Length: 65536\r\n\r\n",
             pid);
    for (int i = 0; i < SLOW; i++) {
        up[i].fd = tu_tcp_connect(NULL, g.port, 0, SOCK_WAIT_S);
        up[i].closed = 0;
        CU_ASSERT_FATAL(up[i].fd >= 0);
        CU_ASSERT_EQUAL(tu_send_all(up[i].fd, head, strlen(head)), 0);
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, trickle, &up[i]), 0);
    }

    /* with all of them connected, a legitimate client is answered */
    CU_ASSERT_TRUE(legit(&g, NULL, "between slow clients"));

    /* the uploaders are cut for their rate, the readers for their time */
    for (int i = 0; i < SLOW; i++) {
        pthread_join(th[i], NULL);
        CU_ASSERT_TRUE(up[i].closed);
        close(up[i].fd);
    }
    CU_ASSERT_EQUAL(log_wait(&g, body_cut, SLOW), SLOW);
    CU_ASSERT_EQUAL(log_wait(&g, answer_cut, SLOW), SLOW);
    for (int i = 0; i < SLOW; i++) {
        gt_answer a;

        gt_read_answer(rd[i], &a);
        CU_ASSERT_FALSE(a.whole); /* closed part-way */
        gt_answer_free(&a);
        close(rd[i]);
    }
    CU_ASSERT_TRUE(legit(&g, NULL, "after the slow clients"));
    gt_stop_ok(&g);
}

/* Two bodies that do not fit in body_memory together: the second waits
 * for the first (the oldest always goes on), and both are answered. */
static void test_body_memory(void)
{
    const char *extra[] = {"--body-limit", "64K", "--body-memory", "64K", NULL};
    char *pa, *pb, *qa, *qb, *got;
    size_t la, lb;
    int fa, fb;
    gt_answer a;
    proc g;

    pa = malloc(25001);
    pb = malloc(35001);
    CU_ASSERT_FATAL(pa && pb);
    memset(pa, 'a', 25000);
    pa[25000] = '\0';
    memset(pb, 'b', 35000);
    pb[35000] = '\0';
    qa = request("echo", pa, "", &la, NULL);
    qb = request("echo", pb, "", &lb, NULL);
    CU_ASSERT_FATAL(qa && qb);
    CU_ASSERT_EQUAL_FATAL(gw_start(&g, "conn-bodymem", extra), 0);
    fa = tu_tcp_connect(NULL, g.port, 0, SOCK_WAIT_S);
    fb = tu_tcp_connect(NULL, g.port, 0, SOCK_WAIT_S);
    CU_ASSERT_FATAL(fa >= 0 && fb >= 0);
    /* the first body half in, the second whole: it must wait */
    CU_ASSERT_EQUAL(tu_send_all(fa, qa, la / 2), 0);
    tu_sleep_ms(300);
    CU_ASSERT_EQUAL(tu_send_all(fb, qb, lb), 0);
    tu_sleep_ms(300);
    CU_ASSERT_EQUAL(tu_send_all(fa, qa + la / 2, la - la / 2), 0);
    gt_read_answer(fa, &a);
    got = content(&a);
    CU_ASSERT_TRUE(got && strcmp(got, pa) == 0);
    free(got);
    gt_answer_free(&a);
    gt_read_answer(fb, &a);
    got = content(&a);
    CU_ASSERT_TRUE(got && strcmp(got, pb) == 0);
    free(got);
    gt_answer_free(&a);
    close(fa);
    close(fb);
    gt_stop_ok(&g);
    free(qa);
    free(qb);
    free(pa);
    free(pb);
}

/* ---- 8. early refusals reach a client sending its body first ------------- */

/* Sends head + a body of body_len bytes (declared as such) in one go, as
 * httpx and Node do without Expect: 100-continue, then reads the answer. */
static int whole_body_first(const proc *g, const char *head, size_t body_len,
                            gt_answer *a)
{
    char *buf = malloc(strlen(head) + body_len);
    int fd = tu_tcp_connect(NULL, g->port, 0, SOCK_WAIT_S), sent;

    memset(a, 0, sizeof *a);
    if (buf == NULL || fd < 0) {
        free(buf);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    memcpy(buf, head, strlen(head));
    memset(buf + strlen(head), 'x', body_len);
    sent = tu_send_all(fd, buf, strlen(head) + body_len);
    if (sent != 0)
        fprintf(stderr, "(sending the body: %s) ", strerror(errno));
    gt_read_answer(fd, a);
    free(buf);
    close(fd);
    return sent;
}

static void test_early_refusals(void)
{
    static const char hash_of_key[] = /* SHA-256("good key") */
        "sha256:";
    char keys[700], line[160], head[4096], pid[37], v[32];
    const char *extra[] = {"--api-keys", keys, "--rate", "0.001",
                           "--burst",    "1",  NULL};
    uint8_t h[32];
    size_t body = 8 * MIB;
    gt_answer a;
    proc g;

    snprintf(keys, sizeof keys, "%s/conn-keys", tu_env("VEIL_TEST_DIR"));
    SHA256((const uint8_t *)"good key", 8, h);
    snprintf(line, sizeof line, "%s", hash_of_key);
    for (int i = 0; i < 32; i++)
        snprintf(line + 7 + 2 * i, 3, "%02x", h[i]);
    snprintf(line + 7 + 64, sizeof line - 7 - 64, " tester\n");
    {
        int fd = open(keys, O_WRONLY | O_CREAT | O_TRUNC, 0600);

        CU_ASSERT_FATAL(fd >= 0);
        CU_ASSERT_EQUAL(write(fd, line, strlen(line)), (ssize_t)strlen(line));
        close(fd);
    }
    CU_ASSERT_EQUAL_FATAL(gw_start(&g, "conn-early", extra), 0);

    /* 401: a wrong key, the whole 8 MiB body sent before reading */
    CU_ASSERT_EQUAL_FATAL(veil_uuid4(sw_e, pid), VEIL_OK);
    snprintf(head, sizeof head,
             "POST " COMPLETION " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             "Authorization: Bearer bad key\r\nX-Payload-ID: %s\r\n"
             "Content-Length: %zu\r\n\r\n",
             pid, body);
    CU_ASSERT_EQUAL(whole_body_first(&g, head, body, &a), 0);
    CU_ASSERT_EQUAL(a.status, 401);
    CU_ASSERT_PTR_NOT_NULL(a.body ? strstr(a.body, "invalid API key") : NULL);
    gt_answer_free(&a);

    /* 413: 20 MiB declared and sent, over the 16 MiB limit */
    snprintf(head, sizeof head,
             "POST " COMPLETION " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             "Authorization: Bearer good key\r\nX-Payload-ID: %s\r\n"
             "Content-Length: %zu\r\n\r\n",
             pid, (size_t)20 * MIB);
    CU_ASSERT_EQUAL(whole_body_first(&g, head, 20 * MIB, &a), 0);
    CU_ASSERT_EQUAL(a.status, 413);
    gt_answer_free(&a);

    /* 429: the good key's one token goes to a first request (a bad
     * package: 400), the second is over the rate */
    snprintf(head, sizeof head,
             "POST " COMPLETION " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             "Authorization: Bearer good key\r\nX-Payload-ID: %s\r\n"
             "X-Public-Key: %s\r\nContent-Length: %zu\r\n\r\n",
             pid, cli_hdr, body);
    CU_ASSERT_EQUAL(whole_body_first(&g, head, body, &a), 0);
    CU_ASSERT_EQUAL(a.status, 400);
    gt_answer_free(&a);
    CU_ASSERT_EQUAL(whole_body_first(&g, head, body, &a), 0);
    CU_ASSERT_EQUAL(a.status, 429);
    CU_ASSERT_TRUE(
        strtol(gt_head_value(&a, "Retry-After", v, sizeof v), NULL, 10) >= 1);
    gt_answer_free(&a);
    gt_stop_ok(&g);
}

/* ---- 10. SIGTERM --------------------------------------------------------- */

static void test_sigterm(void)
{
    char fast[160], slow[160], pid_fast[37], pid_slow[37], pid_wait[37], v[32];
    const char *extra[] = {"--workers", "2",       "--shutdown-grace",
                           "3",         "--model", fast,
                           "--model",   slow,      NULL};
    const char *stopping[] = {"listener closed", NULL};
    const char *cut_line[] = {pid_slow, "cut (shutdown; its 200 answer", NULL};
    const char *as_200[] = {pid_slow, COMPLETION " 200 ", NULL};
    char *req;
    size_t len;
    int fa, fs, fw, fd, e, status;
    double base;
    gt_answer a;
    proc g;

    snprintf(fast, sizeof fast, "mock/slow-700=http://127.0.0.1:%u/v1",
             upstream.port);
    snprintf(slow, sizeof slow, "mock/slow-6000=http://127.0.0.1:%u/v1",
             upstream.port);
    CU_ASSERT_EQUAL_FATAL(gw_start(&g, "conn-term", extra), 0);
    base = gt_mock_requests(&upstream);
    CU_ASSERT_FATAL(base >= 0);

    /* both workers busy at the backend */
    req = request("mock/slow-700", "fast", "", &len, pid_fast);
    fa = tu_tcp_connect(NULL, g.port, 0, SOCK_WAIT_S);
    CU_ASSERT_FATAL(req && fa >= 0);
    CU_ASSERT_EQUAL(tu_send_all(fa, req, len), 0);
    free(req);
    req = request("mock/slow-6000", "slow", "", &len, pid_slow);
    fs = tu_tcp_connect(NULL, g.port, 0, SOCK_WAIT_S);
    CU_ASSERT_FATAL(req && fs >= 0);
    CU_ASSERT_EQUAL(tu_send_all(fs, req, len), 0);
    free(req);
    while (gt_mock_requests(&upstream) < base + 2)
        tu_sleep_ms(20);
    /* a third waits for a worker */
    req = request("echo", "waiting", "", &len, pid_wait);
    fw = tu_tcp_connect(NULL, g.port, 0, SOCK_WAIT_S);
    CU_ASSERT_FATAL(req && fw >= 0);
    CU_ASSERT_EQUAL(tu_send_all(fw, req, len), 0);
    free(req);
    tu_sleep_ms(300);

    kill(g.pid, SIGTERM);
    CU_ASSERT_EQUAL(log_wait(&g, stopping, 1), 1);
    /* nothing listens any more, at once */
    fd = tu_tcp_connect(NULL, g.port, 0, SOCK_WAIT_S);
    e = errno;
    if (fd >= 0)
        close(fd);
    CU_ASSERT_TRUE(fd < 0 && e == ECONNREFUSED);

    /* the waiting one: 503 with Retry-After */
    gt_read_answer(fw, &a);
    CU_ASSERT_EQUAL(a.status, 503);
    CU_ASSERT_TRUE(
        strtol(gt_head_value(&a, "Retry-After", v, sizeof v), NULL, 10) >= 1);
    gt_answer_free(&a);
    /* the one within the grace: its answer */
    gt_read_answer(fa, &a);
    {
        char *got = content(&a);

        CU_ASSERT_PTR_NOT_NULL(got);
        if (got)
            CU_ASSERT_STRING_EQUAL(got, "mock: fast");
        free(got);
    }
    gt_answer_free(&a);
    /* the one past it: closed without an answer */
    gt_read_answer(fs, &a);
    CU_ASSERT_EQUAL(a.status, 0);
    gt_answer_free(&a);
    close(fa);
    close(fs);
    close(fw);

    /* it exits (a request left waiting for a slot kept it alive) */
    if (!tu_proc_wait(&g, SOCK_WAIT_S, &status))
        fprintf(stderr, "veild does not exit after SIGTERM\n");
    CU_ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* logged as cut, never as 200 */
    CU_ASSERT_EQUAL(log_count(&g, cut_line), 1);
    CU_ASSERT_EQUAL(log_count(&g, as_200), 0);
    if (log_count(&g, cut_line) != 1 || log_count(&g, as_200) != 0)
        tu_proc_log_tail(&g);
}

/* ---- 11. IPv6 clients by prefix; the PIN source -------------------------- */

static void v6(const char *text, struct sockaddr_in6 *sa)
{
    memset(sa, 0, sizeof *sa);
    sa->sin6_family = AF_INET6;
    CU_ASSERT_EQUAL(inet_pton(AF_INET6, text, &sa->sin6_addr), 1);
}

/* gw_rate_address_id itself: no second IPv6 address on one /64 can be had
 * here without configuring the host, so this part is a unit test. */
static void test_ipv6_prefix(void)
{
    struct sockaddr_in6 a, b;
    struct sockaddr_in v4;
    uint8_t ia[32], ib[32];

    v6("2001:db8:1:2::1", &a);
    v6("2001:db8:1:2:ffff:1234:5678:9abc", &b);
    gw_rate_address_id((struct sockaddr *)&a, 64, ia);
    gw_rate_address_id((struct sockaddr *)&b, 64, ib);
    CU_ASSERT_EQUAL(memcmp(ia, ib, 32), 0); /* one /64, one bucket */
    gw_rate_address_id((struct sockaddr *)&b, 128, ib);
    CU_ASSERT_NOT_EQUAL(memcmp(ia, ib, 32), 0);
    v6("2001:db8:1:3::1", &b); /* the next /64 */
    gw_rate_address_id((struct sockaddr *)&b, 64, ib);
    CU_ASSERT_NOT_EQUAL(memcmp(ia, ib, 32), 0);
    gw_rate_address_id((struct sockaddr *)&a, 48, ia);
    gw_rate_address_id((struct sockaddr *)&b, 48, ib);
    CU_ASSERT_EQUAL(memcmp(ia, ib, 32), 0);
    v6("2001:db8:1:2::1", &b);
    gw_rate_address_id((struct sockaddr *)&b, 61, ib);
    v6("2001:db8:1:7::1", &b); /* same first 61 bits */
    gw_rate_address_id((struct sockaddr *)&b, 61, ia);
    CU_ASSERT_EQUAL(memcmp(ia, ib, 32), 0);

    /* IPv4, plain or mapped, by the whole address */
    memset(&v4, 0, sizeof v4);
    v4.sin_family = AF_INET;
    inet_pton(AF_INET, "192.0.2.7", &v4.sin_addr);
    gw_rate_address_id((struct sockaddr *)&v4, 64, ia);
    v6("::ffff:192.0.2.7", &b);
    gw_rate_address_id((struct sockaddr *)&b, 64, ib);
    CU_ASSERT_EQUAL(memcmp(ia, ib, 32), 0);
    v6("::ffff:192.0.2.8", &b);
    gw_rate_address_id((struct sockaddr *)&b, 64, ib);
    CU_ASSERT_NOT_EQUAL(memcmp(ia, ib, 32), 0);
}

/* A dual-stack veild keeps two IPv4 clients apart (a /64 of their mapped
 * addresses would put every IPv4 client in one bucket). */
static void test_dual_stack_rate(void)
{
    const char *extra[] = {"--listen", "::", "--rate", "0.001",
                           "--burst",  "1",  NULL};
    char path[80], pid[37];
    proc g;

    if (gw_start(&g, "conn-dual", extra) != 0) {
        fprintf(stderr, "(no IPv6 here: skipped) ");
        return;
    }
    CU_ASSERT_EQUAL_FATAL(veil_uuid4(sw_e, pid), VEIL_OK);
    snprintf(path, sizeof path, "/v1/signatures/%s", pid);
    CU_ASSERT_EQUAL(get_status(&g, "127.0.0.1", path), 404);
    CU_ASSERT_EQUAL(get_status(&g, "127.0.0.1", path), 429);
    CU_ASSERT_EQUAL(get_status(&g, "127.0.0.3", path), 404);
    gt_stop_ok(&g);
}

/* A FIFO as the PIN file is refused at once (it blocked start-up). */
static void test_pin_fifo(void)
{
    const char *label = tu_env("VEIL_TEST_SOFTHSM_TOKEN");
    char fifo[600], pin[700], ref[300], exe[600];
    const char *argv[16];
    const char *refused[] = {"not a regular file", NULL};
    int status = -1, done = 0;
    proc p;

    snprintf(fifo, sizeof fifo, "%s/conn-pin.fifo", tu_env("VEIL_TEST_DIR"));
    unlink(fifo);
    CU_ASSERT_EQUAL_FATAL(mkfifo(fifo, 0600), 0);
    snprintf(pin, sizeof pin, "file:%s", fifo);
    snprintf(ref, sizeof ref, "pkcs11:token=%s;object=gw-none", label);
    snprintf(exe, sizeof exe, "%s/veild", builddir);
    argv[0] = exe;
    argv[1] = "--server-key";
    argv[2] = strncmp(label, "pkcs11:", 7) == 0 ? label : ref;
    argv[3] = "--pkcs11-module";
    argv[4] = tu_env("VEIL_TEST_SOFTHSM_MODULE");
    argv[5] = "--pin-source";
    argv[6] = pin;
    argv[7] = "--model";
    argv[8] = "echo=echo";
    argv[9] = "--port";
    argv[10] = "0";
    argv[11] = NULL;
    CU_ASSERT_EQUAL_FATAL(
        tu_proc_start(&p, NULL, "conn-pin-fifo", argv, NULL, TU_LOG_FRESH), 0);
    done = tu_proc_wait(&p, SOCK_WAIT_S, &status);
    if (!done)
        fprintf(stderr, "veild still waits on the FIFO\n");
    CU_ASSERT_TRUE(done);
    CU_ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0);
    CU_ASSERT_EQUAL(log_count(&p, refused), 1);
    unlink(fifo);
}

/* ---- set-up -------------------------------------------------------------- */

static int setup(void)
{
    veil_engine_config ecfg;
    veil_keygen_params kp = {.type = VEIL_KEY_RSA, .bits = 2048};
    char dir[512], *pem = NULL;

    builddir = tu_env("VEIL_BUILDDIR");
    memset(&ecfg, 0, sizeof ecfg);
    if (veil_engine_new(&ecfg, &sw_e) != VEIL_OK ||
        tu_scratch_dir("conn-key", dir, sizeof dir) != 0 ||
        veil_key_generate(sw_e, "software", &kp, &srv_key) != VEIL_OK ||
        veil_key_save(sw_e, srv_key, dir, NULL) != VEIL_OK ||
        veil_key_generate(sw_e, "software", &kp, &cli_key) != VEIL_OK ||
        veil_key_public_pem(cli_key, &pem) != VEIL_OK)
        return -1;
    snprintf(key_ref, sizeof key_ref, "dir:%s", dir);
    cli_hdr = veil_percent_encode(pem);
    free(pem);
    if (cli_hdr == NULL)
        return -1;
    return gt_mock_start(&upstream, "conn-mock");
}

static void teardown(void)
{
    tu_proc_stop(&upstream);
    free(cli_hdr);
    veil_key_free(cli_key);
    veil_key_free(srv_key);
    veil_engine_free(sw_e);
}

int main(void)
{
    static const tu_test attacks[] = {
        {"slowloris: header deadline, per-address cap", test_slowloris},
        {"slow uploaders and slow readers hold no worker", test_slow_clients},
        {"bodies over body_memory wait, none is lost", test_body_memory},
        {"early refusals reach a client sending its body first",
         test_early_refusals},
        {"SIGTERM: listener closed, waiting 503, cut logged as cut",
         test_sigterm},
    };
    static const tu_test smaller[] = {
        {"IPv6 clients rate limited by prefix", test_ipv6_prefix},
        {"dual stack: IPv4 clients apart", test_dual_stack_rate},
        {"a FIFO as PIN file is refused", test_pin_fifo},
    };
    int rc;
    double t0 = tu_now();

    signal(SIGPIPE, SIG_IGN);
    if (setup() != 0) {
        fprintf(stderr, "setup failed: %s\n", veil_last_error()->message);
        teardown();
        return 1;
    }
    TU_ADD_SUITE("connections under attack", NULL, NULL, attacks);
    TU_ADD_SUITE("smaller ones", NULL, NULL, smaller);
    rc = tu_run_tests();
    teardown();
    fprintf(stderr, "test_gateway_conn: %.1f s\n", tu_now() - t0);
    return rc;
}
