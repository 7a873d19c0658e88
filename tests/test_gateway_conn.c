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

typedef struct proc {
    pid_t pid; /* 0: not running */
    unsigned port;
    char name[40];
    char log[600];
} proc;

static proc upstream;

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0)
        ;
}

static double now_s(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void dump_log(const proc *p)
{
    char *text = tu_read_file(p->log, NULL);

    fprintf(stderr, "---- %s ----\n%s---- (%s) ----\n", p->log,
            text ? text : "(none)\n", p->name);
    free(text);
}

/* Starts argv with its output in $VEIL_TEST_DIR/NAME.log and, when
 * port_file is set, waits until the port is written there.  0, or -1 when
 * it exited first. */
static int spawn(proc *p, const char *name, const char *const *argv,
                 const char *port_file)
{
    const char *dir = tu_env("VEIL_TEST_DIR");
    int status;
    pid_t pid;

    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    snprintf(p->log, sizeof p->log, "%s/%s.log", dir, name);
    unlink(p->log);
    if (port_file)
        unlink(port_file);
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        int nul = open("/dev/null", O_RDONLY);

        if (fd < 0 || nul < 0 || dup2(nul, 0) < 0 || dup2(fd, 1) < 0 ||
            dup2(fd, 2) < 0)
            _exit(126);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    p->pid = pid;
    while (port_file) {
        char *text =
            access(port_file, R_OK) == 0 ? tu_read_file(port_file, NULL) : NULL;

        if (text && strchr(text, '\n')) {
            p->port = (unsigned)strtoul(text, NULL, 10);
            free(text);
            break;
        }
        free(text);
        if (waitpid(pid, &status, WNOHANG) == pid) {
            fprintf(stderr, "%s exited before listening\n", name);
            p->pid = 0;
            dump_log(p);
            return -1;
        }
        sleep_ms(10);
    }
    return 0;
}

/* The wait status after SIGTERM (-1: was not running). */
static int proc_stop(proc *p)
{
    int status = -1;

    if (p->pid <= 0)
        return -1;
    kill(p->pid, SIGTERM);
    while (waitpid(p->pid, &status, 0) < 0 && errno == EINTR)
        ;
    p->pid = 0;
    return status;
}

static void stop_ok(proc *p)
{
    int status = proc_stop(p);
    int ok = status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;

    if (!ok) {
        fprintf(stderr, "%s: wait status %d\n", p->name, status);
        dump_log(p);
    }
    CU_ASSERT_TRUE(ok);
}

/* veild with the software key and the echo model, then EXTRA flags (later
 * flags override earlier ones). */
static int gw_start(proc *p, const char *name, const char *const *extra)
{
    char exe[600], port_file[700];
    const char *argv[64];
    size_t n = 0;

    snprintf(exe, sizeof exe, "%s/veild", builddir);
    snprintf(port_file, sizeof port_file, "%s/%s.port", tu_env("VEIL_TEST_DIR"),
             name);
    argv[n++] = exe;
    argv[n++] = "--port";
    argv[n++] = "0";
    argv[n++] = "--port-file";
    argv[n++] = port_file;
    argv[n++] = "--server-key";
    argv[n++] = key_ref;
    argv[n++] = "--model";
    argv[n++] = "echo=echo";
    argv[n++] = "--rate";
    argv[n++] = "1000";
    argv[n++] = "--burst";
    argv[n++] = "1000";
    for (size_t i = 0; extra[i] && n < 63; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    return spawn(p, name, argv, port_file);
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
    double until = now_s() + SOCK_WAIT_S;
    int n;

    while ((n = log_count(p, texts)) < want && now_s() < until)
        sleep_ms(50);
    return n;
}

/* ---- sockets ------------------------------------------------------------- */

/* A TCP connection to 127.0.0.1:port from source address src (NULL: the
 * kernel's choice); rcvbuf > 0 shrinks the receive buffer first (a reader
 * that holds back).  Waits on it give up after SOCK_WAIT_S. */
static int connect_from(const char *src, unsigned port, int rcvbuf)
{
    struct sockaddr_in sa;
    struct timeval tv = {SOCK_WAIT_S, 0};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    if (src) {
        inet_pton(AF_INET, src, &sa.sin_addr);
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
            close(fd);
            return -1;
        }
    }
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    sa.sin_port = htons((uint16_t)port);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;

        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* 0 when all of buf went, else -1 with errno. */
static int send_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

typedef struct answer {
    int status; /* 0: none (closed, reset or nothing in time) */
    int whole;  /* the body came up to its Content-Length */
    char head[2048];
    char *body; /* NUL-terminated */
    size_t len;
} answer;

static void answer_free(answer *a)
{
    free(a->body);
    memset(a, 0, sizeof *a);
}

/* Reads one answer: the head, then the body up to its Content-Length (or
 * until the connection ends). */
static void read_answer(int fd, answer *a)
{
    size_t cap = 65536, got = 0, want = 0, head_len = 0;
    char *buf = malloc(cap + 1);

    memset(a, 0, sizeof *a);
    if (buf == NULL)
        return;
    for (;;) {
        ssize_t n;

        if (got == cap) {
            char *b = realloc(buf, 2 * cap + 1);

            if (b == NULL)
                break;
            buf = b;
            cap *= 2;
        }
        n = recv(fd, buf + got, cap - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
        buf[got] = '\0';
        if (head_len == 0) {
            char *end = strstr(buf, "\r\n\r\n");
            const char *cl;

            if (end == NULL)
                continue;
            head_len = (size_t)(end + 4 - buf);
            snprintf(a->head, sizeof a->head, "%.*s", (int)head_len, buf);
            cl = strcasestr(a->head, "\r\nContent-Length:");
            want = cl ? strtoul(cl + 17, NULL, 10) : 0;
        }
        if (got - head_len >= want)
            break;
    }
    buf[got] = '\0';
    if (head_len && strncmp(buf, "HTTP/1.", 7) == 0) {
        a->status = (int)strtol(buf + 9, NULL, 10);
        a->len = got - head_len;
        a->whole = a->len >= want;
        a->body = malloc(a->len + 1);
        if (a->body) {
            memcpy(a->body, buf + head_len, a->len);
            a->body[a->len] = '\0';
        }
    }
    free(buf);
}

/* A header's value in a's head, or "" (into out). */
static const char *head_value(const answer *a, const char *name, char *out,
                              size_t size)
{
    char pat[64];
    const char *h, *e;

    snprintf(pat, sizeof pat, "\r\n%s:", name);
    out[0] = '\0';
    if ((h = strcasestr(a->head, pat)) == NULL)
        return out;
    h += strlen(pat);
    while (*h == ' ')
        h++;
    e = strstr(h, "\r\n");
    snprintf(out, size, "%.*s", e ? (int)(e - h) : 0, h);
    return out;
}

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
static char *content(const answer *a)
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
    int fd = connect_from(src, g->port, 0), ok = 0;
    answer a = {0};

    if (req && fd >= 0 && send_all(fd, req, len) == 0) {
        read_answer(fd, &a);
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
    answer_free(&a);
    return ok;
}

/* A GET: the status (0: closed without an answer). */
static int get_status(const proc *g, const char *src, const char *path)
{
    char req[256];
    int fd = connect_from(src, g->port, 0), st = 0;
    answer a;

    if (fd < 0)
        return -1;
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
             path);
    if (send_all(fd, req, strlen(req)) == 0) {
        read_answer(fd, &a);
        st = a.status;
        answer_free(&a);
    }
    close(fd);
    return st;
}

/* ---- 3. slowloris: header deadline and per-address cap ------------------- */

#define HALF_OPEN 8

static void test_slowloris(void)
{
    const char *extra[] = {"--header-timeout", "3", "--connections-per-address",
                           "8", NULL};
    static const char partial[] = "POST " COMPLETION " HTTP/1.1\r\n"
                                  "Host: 127.0.0.1\r\n";
    int fd[HALF_OPEN], closed = 0;
    double until;
    proc g;

    CU_ASSERT_EQUAL_FATAL(gw_start(&g, "conn-slowloris", extra), 0);
    for (int i = 0; i < HALF_OPEN; i++) {
        fd[i] = connect_from(NULL, g.port, 0);
        CU_ASSERT_FATAL(fd[i] >= 0);
        CU_ASSERT_EQUAL(send_all(fd[i], partial, sizeof partial - 1), 0);
    }
    /* one more from the same address is over the cap: closed unanswered */
    CU_ASSERT_EQUAL(get_status(&g, NULL, "/pki/public_key"), 0);
    /* another address is served meanwhile */
    CU_ASSERT_EQUAL(get_status(&g, "127.0.0.2", "/pki/public_key"), 200);
    CU_ASSERT_TRUE(legit(&g, "127.0.0.2", "past the slowloris"));

    /* The half-open ones keep trickling a header byte every 200 ms (never
     * idle): the header deadline closes them all the same. */
    until = now_s() + SOCK_WAIT_S;
    while (closed < HALF_OPEN && now_s() < until) {
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
    for (int i = 0; i < HALF_OPEN; i++)
        if (fd[i] >= 0)
            close(fd[i]);
    /* and the address is welcome again, once veild has counted those
     * connections out (its threads end a moment after the close) */
    until = now_s() + SOCK_WAIT_S;
    while (get_status(&g, NULL, "/pki/public_key") != 200 && now_s() < until)
        sleep_ms(50);
    CU_ASSERT_TRUE(legit(&g, NULL, "after the slowloris"));
    stop_ok(&g);
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
    double until = now_s() + SOCK_WAIT_S;

    while (now_s() < until) {
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
        rd[i] = connect_from(NULL, g.port, 4096);
        CU_ASSERT_FATAL(req && rd[i] >= 0);
        CU_ASSERT_EQUAL(send_all(rd[i], req, len), 0);
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
        up[i].fd = connect_from(NULL, g.port, 0);
        up[i].closed = 0;
        CU_ASSERT_FATAL(up[i].fd >= 0);
        CU_ASSERT_EQUAL(send_all(up[i].fd, head, strlen(head)), 0);
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
        answer a;

        read_answer(rd[i], &a);
        CU_ASSERT_FALSE(a.whole); /* closed part-way */
        answer_free(&a);
        close(rd[i]);
    }
    CU_ASSERT_TRUE(legit(&g, NULL, "after the slow clients"));
    stop_ok(&g);
}

/* Two bodies that do not fit in body_memory together: the second waits
 * for the first (the oldest always goes on), and both are answered. */
static void test_body_memory(void)
{
    const char *extra[] = {"--body-limit", "64K", "--body-memory", "64K", NULL};
    char *pa, *pb, *qa, *qb, *got;
    size_t la, lb;
    int fa, fb;
    answer a;
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
    fa = connect_from(NULL, g.port, 0);
    fb = connect_from(NULL, g.port, 0);
    CU_ASSERT_FATAL(fa >= 0 && fb >= 0);
    /* the first body half in, the second whole: it must wait */
    CU_ASSERT_EQUAL(send_all(fa, qa, la / 2), 0);
    sleep_ms(300);
    CU_ASSERT_EQUAL(send_all(fb, qb, lb), 0);
    sleep_ms(300);
    CU_ASSERT_EQUAL(send_all(fa, qa + la / 2, la - la / 2), 0);
    read_answer(fa, &a);
    got = content(&a);
    CU_ASSERT_TRUE(got && strcmp(got, pa) == 0);
    free(got);
    answer_free(&a);
    read_answer(fb, &a);
    got = content(&a);
    CU_ASSERT_TRUE(got && strcmp(got, pb) == 0);
    free(got);
    answer_free(&a);
    close(fa);
    close(fb);
    stop_ok(&g);
    free(qa);
    free(qb);
    free(pa);
    free(pb);
}

/* ---- 8. early refusals reach a client sending its body first ------------- */

/* Sends head + a body of body_len bytes (declared as such) in one go, as
 * httpx and Node do without Expect: 100-continue, then reads the answer. */
static int whole_body_first(const proc *g, const char *head, size_t body_len,
                            answer *a)
{
    char *buf = malloc(strlen(head) + body_len);
    int fd = connect_from(NULL, g->port, 0), sent;

    memset(a, 0, sizeof *a);
    if (buf == NULL || fd < 0) {
        free(buf);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    memcpy(buf, head, strlen(head));
    memset(buf + strlen(head), 'x', body_len);
    sent = send_all(fd, buf, strlen(head) + body_len);
    if (sent != 0)
        fprintf(stderr, "(sending the body: %s) ", strerror(errno));
    read_answer(fd, a);
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
    answer a;
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
    answer_free(&a);

    /* 413: 20 MiB declared and sent, over the 16 MiB limit */
    snprintf(head, sizeof head,
             "POST " COMPLETION " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             "Authorization: Bearer good key\r\nX-Payload-ID: %s\r\n"
             "Content-Length: %zu\r\n\r\n",
             pid, (size_t)20 * MIB);
    CU_ASSERT_EQUAL(whole_body_first(&g, head, 20 * MIB, &a), 0);
    CU_ASSERT_EQUAL(a.status, 413);
    answer_free(&a);

    /* 429: the good key's one token goes to a first request (a bad
     * package: 400), the second is over the rate */
    snprintf(head, sizeof head,
             "POST " COMPLETION " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             "Authorization: Bearer good key\r\nX-Payload-ID: %s\r\n"
             "X-Public-Key: %s\r\nContent-Length: %zu\r\n\r\n",
             pid, cli_hdr, body);
    CU_ASSERT_EQUAL(whole_body_first(&g, head, body, &a), 0);
    CU_ASSERT_EQUAL(a.status, 400);
    answer_free(&a);
    CU_ASSERT_EQUAL(whole_body_first(&g, head, body, &a), 0);
    CU_ASSERT_EQUAL(a.status, 429);
    CU_ASSERT_TRUE(
        strtol(head_value(&a, "Retry-After", v, sizeof v), NULL, 10) >= 1);
    answer_free(&a);
    stop_ok(&g);
}

/* ---- 10. SIGTERM --------------------------------------------------------- */

static double mock_requests(void)
{
    int fd = connect_from(NULL, upstream.port, 0);
    static const char req[] =
        "GET /mock/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    double n = -1;
    answer a;

    if (fd < 0)
        return -1;
    if (send_all(fd, req, sizeof req - 1) == 0) {
        read_answer(fd, &a);
        if (a.status == 200) {
            cJSON *j = cJSON_Parse(a.body);
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "requests");

            if (cJSON_IsNumber(v))
                n = v->valuedouble;
            cJSON_Delete(j);
        }
        answer_free(&a);
    }
    close(fd);
    return n;
}

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
    answer a;
    proc g;

    snprintf(fast, sizeof fast, "mock/slow-700=http://127.0.0.1:%u/v1",
             upstream.port);
    snprintf(slow, sizeof slow, "mock/slow-6000=http://127.0.0.1:%u/v1",
             upstream.port);
    CU_ASSERT_EQUAL_FATAL(gw_start(&g, "conn-term", extra), 0);
    base = mock_requests();
    CU_ASSERT_FATAL(base >= 0);

    /* both workers busy at the backend */
    req = request("mock/slow-700", "fast", "", &len, pid_fast);
    fa = connect_from(NULL, g.port, 0);
    CU_ASSERT_FATAL(req && fa >= 0);
    CU_ASSERT_EQUAL(send_all(fa, req, len), 0);
    free(req);
    req = request("mock/slow-6000", "slow", "", &len, pid_slow);
    fs = connect_from(NULL, g.port, 0);
    CU_ASSERT_FATAL(req && fs >= 0);
    CU_ASSERT_EQUAL(send_all(fs, req, len), 0);
    free(req);
    while (mock_requests() < base + 2)
        sleep_ms(20);
    /* a third waits for a worker */
    req = request("echo", "waiting", "", &len, pid_wait);
    fw = connect_from(NULL, g.port, 0);
    CU_ASSERT_FATAL(req && fw >= 0);
    CU_ASSERT_EQUAL(send_all(fw, req, len), 0);
    free(req);
    sleep_ms(300);

    kill(g.pid, SIGTERM);
    CU_ASSERT_EQUAL(log_wait(&g, stopping, 1), 1);
    /* nothing listens any more, at once */
    fd = connect_from(NULL, g.port, 0);
    e = errno;
    if (fd >= 0)
        close(fd);
    CU_ASSERT_TRUE(fd < 0 && e == ECONNREFUSED);

    /* the waiting one: 503 with Retry-After */
    read_answer(fw, &a);
    CU_ASSERT_EQUAL(a.status, 503);
    CU_ASSERT_TRUE(
        strtol(head_value(&a, "Retry-After", v, sizeof v), NULL, 10) >= 1);
    answer_free(&a);
    /* the one within the grace: its answer */
    read_answer(fa, &a);
    {
        char *got = content(&a);

        CU_ASSERT_PTR_NOT_NULL(got);
        if (got)
            CU_ASSERT_STRING_EQUAL(got, "mock: fast");
        free(got);
    }
    answer_free(&a);
    /* the one past it: closed without an answer */
    read_answer(fs, &a);
    CU_ASSERT_EQUAL(a.status, 0);
    answer_free(&a);
    close(fa);
    close(fs);
    close(fw);

    /* it exits (a request left waiting for a slot kept it alive) */
    {
        double until = now_s() + SOCK_WAIT_S;
        int done;

        status = -1;
        while (!(done = waitpid(g.pid, &status, WNOHANG) == g.pid) &&
               now_s() < until)
            sleep_ms(20);
        if (!done) {
            fprintf(stderr, "veild does not exit after SIGTERM\n");
            kill(g.pid, SIGKILL);
            waitpid(g.pid, &status, 0);
        }
    }
    g.pid = 0;
    CU_ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* logged as cut, never as 200 */
    CU_ASSERT_EQUAL(log_count(&g, cut_line), 1);
    CU_ASSERT_EQUAL(log_count(&g, as_200), 0);
    if (log_count(&g, cut_line) != 1 || log_count(&g, as_200) != 0)
        dump_log(&g);
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
    stop_ok(&g);
}

/* A FIFO as the PIN file is refused at once (it blocked start-up). */
static void test_pin_fifo(void)
{
    const char *label = tu_env("VEIL_TEST_SOFTHSM_TOKEN");
    char fifo[600], pin[700], ref[300], exe[600];
    const char *argv[16];
    const char *refused[] = {"not a regular file", NULL};
    double until;
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
    CU_ASSERT_EQUAL_FATAL(spawn(&p, "conn-pin-fifo", argv, NULL), 0);
    until = now_s() + SOCK_WAIT_S;
    while (!(done = waitpid(p.pid, &status, WNOHANG) == p.pid) &&
           now_s() < until)
        sleep_ms(20);
    if (!done) {
        fprintf(stderr, "veild still waits on the FIFO\n");
        kill(p.pid, SIGKILL);
        waitpid(p.pid, &status, 0);
    }
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
    char dir[512], exe[600], port_file[700], *pem = NULL;
    const char *argv[4];

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
    snprintf(exe, sizeof exe, "%s/tests/mock-upstream", builddir);
    snprintf(port_file, sizeof port_file, "%s/conn-mock.port",
             tu_env("VEIL_TEST_DIR"));
    argv[0] = exe;
    argv[1] = "--port-file";
    argv[2] = port_file;
    argv[3] = NULL;
    return spawn(&upstream, "conn-mock", argv, port_file);
}

static void teardown(void)
{
    proc_stop(&upstream);
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
    double t0 = now_s();

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
    fprintf(stderr, "test_gateway_conn: %.1f s\n", now_s() - t0);
    return rc;
}
