/* Child processes, ports and sockets for the tests and veil-bench; see
 * harness.h for the deadline policy. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#define MAX_LIVE 32
#define TAIL_LINES 30

static tu_proc *live[MAX_LIVE]; /* started and not yet stopped */

static void track(tu_proc *p, int on)
{
    for (int i = 0; i < MAX_LIVE; i++) {
        if (on && live[i] == NULL) {
            live[i] = p;
            return;
        }
        if (!on && live[i] == p)
            live[i] = NULL;
    }
}

double tu_now(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

void tu_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

void tu_proc_log_tail(const tu_proc *p)
{
    char buf[16384];
    const char *from;
    size_t len;
    long size;
    int lines = 0;
    FILE *f = fopen(p->log, "r");

    if (f == NULL) {
        fprintf(stderr, "---- %s: no log (%s) ----\n", p->name, p->log);
        return;
    }
    if (fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) > (long)sizeof buf - 1)
        fseek(f, size - (long)(sizeof buf - 1), SEEK_SET);
    else
        fseek(f, 0, SEEK_SET);
    len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';
    from = buf + len;
    while (from > buf && lines <= TAIL_LINES)
        if (*--from == '\n')
            lines++;
    if (*from == '\n')
        from++;
    fprintf(stderr, "---- end of %s ----\n%s---- (%s) ----\n", p->log, from,
            p->name);
}

ssize_t tu_read_text(const char *path, char *buf, size_t size)
{
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return -1;
    n = read(fd, buf, size - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    return n;
}

int tu_read_port(const char *path, unsigned *port)
{
    char buf[32], *end;
    unsigned long v;

    if (tu_read_text(path, buf, sizeof buf) < 0)
        return -1;
    errno = 0;
    v = strtoul(buf, &end, 10);
    if (errno || end == buf || *end != '\n' || v == 0 || v > 65535)
        return -1;
    *port = (unsigned)v;
    return 0;
}

/* In the child: stdin /dev/null, stdout and stderr to the log, then exec.
 * Never returns. */
static void child(const tu_proc *p, const char *const *argv, pid_t parent,
                  unsigned flags)
{
    int mode = O_WRONLY | O_CREAT | (flags & TU_LOG_FRESH ? O_TRUNC : O_APPEND);
    int fd = open(p->log, mode, 0600);
    int nul = open("/dev/null", O_RDONLY);

    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        _exit(127);
    if (fd < 0 || nul < 0 || dup2(nul, 0) < 0 || dup2(fd, 1) < 0 ||
        dup2(fd, 2) < 0)
        _exit(126);
    execv(argv[0], (char *const *)argv);
    fprintf(stderr, "%s: cannot run: %s\n", argv[0], strerror(errno));
    _exit(127);
}

int tu_proc_start(tu_proc *p, const char *log_dir, const char *name,
                  const char *const *argv, const char *port_file,
                  unsigned flags)
{
    pid_t parent = getpid();
    double until;
    int status;

    memset(p, 0, sizeof *p);
    if (log_dir == NULL && (log_dir = getenv("VEIL_TEST_DIR")) == NULL) {
        fprintf(stderr, "%s: VEIL_TEST_DIR is not set\n", name);
        return -1;
    }
    snprintf(p->name, sizeof p->name, "%s", name);
    snprintf(p->log, sizeof p->log, "%s/%s.log", log_dir, name);
    if (port_file)
        unlink(port_file);
    fflush(NULL);
    p->pid = fork();
    if (p->pid < 0) {
        fprintf(stderr, "%s: fork: %s\n", name, strerror(errno));
        p->pid = 0;
        return -1;
    }
    if (p->pid == 0)
        child(p, argv, parent, flags);
    track(p, 1);
    until = tu_now() + TU_START_WAIT_S;
    while (port_file && tu_read_port(port_file, &p->port) != 0) {
        if (waitpid(p->pid, &status, WNOHANG) == p->pid) {
            fprintf(stderr, "%s exited before listening (status %d)\n", name,
                    WIFEXITED(status) ? WEXITSTATUS(status) : -1);
            track(p, 0);
            p->pid = 0;
            tu_proc_log_tail(p);
            return -1;
        }
        if (tu_now() > until) {
            fprintf(stderr, "%s wrote no port file in %.0f s\n", name,
                    TU_START_WAIT_S);
            tu_proc_stop(p);
            tu_proc_log_tail(p);
            return -1;
        }
        tu_sleep_ms(10);
    }
    return 0;
}

int tu_proc_wait(tu_proc *p, double secs, int *status)
{
    double until = tu_now() + secs;
    pid_t pid = p->pid, r = -1;

    *status = -1;
    if (pid <= 0)
        return 0;
    for (;;) {
        r = waitpid(pid, status, WNOHANG);
        if (r < 0 && errno == EINTR)
            continue;
        if (r != 0 || tu_now() >= until)
            break;
        tu_sleep_ms(10);
    }
    if (r == 0) {
        fprintf(stderr, "%s did not exit in %.0f s: SIGKILL\n", p->name, secs);
        kill(pid, SIGKILL);
        while (waitpid(pid, status, 0) < 0 && errno == EINTR)
            ;
    }
    track(p, 0);
    p->pid = 0;
    if (r != pid) {
        *status = -1;
        return 0;
    }
    return 1;
}

int tu_proc_stop(tu_proc *p)
{
    int status;

    if (p->pid <= 0)
        return -1;
    kill(p->pid, SIGTERM);
    return tu_proc_wait(p, TU_STOP_WAIT_S, &status) ? status : -1;
}

int tu_proc_stop_ok(tu_proc *p)
{
    int status = tu_proc_stop(p);

    if (status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 1;
    if (status != -1 && WIFSIGNALED(status))
        fprintf(stderr, "%s died of signal %d\n", p->name, WTERMSIG(status));
    else
        fprintf(stderr, "%s: exit status %d\n", p->name,
                status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    tu_proc_log_tail(p);
    return 0;
}

void tu_proc_stop_all(void)
{
    for (int i = 0; i < MAX_LIVE; i++)
        if (live[i])
            tu_proc_stop(live[i]);
}

unsigned tu_dead_port(void)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    unsigned port = 0;

    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

int tu_tcp_connect(const char *src, unsigned port, int rcvbuf, int wait_s)
{
    struct sockaddr_in sa;
    struct timeval tv = {wait_s, 0};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), e;

    if (fd < 0)
        return -1;
    if (wait_s > 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    if (src) {
        if (inet_pton(AF_INET, src, &sa.sin_addr) != 1 ||
            bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
            goto fail;
    }
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((uint16_t)port);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
        return fd;
fail:
    e = errno;
    close(fd);
    errno = e;
    return -1;
}

int tu_send_all(int fd, const char *buf, size_t len)
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
