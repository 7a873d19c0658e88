/* Child processes for the tests and for veil-bench: one launcher (start
 * with an argv, output to a log file, wait for the port file), one stop
 * (SIGTERM by PID, wait, the exit status checked), free and dead ports.
 * No CUnit here: bench/ links this file too.
 *
 * Deadlines, one policy for every user (the stricter of those the copies
 * had): a start gives up after TU_START_WAIT_S seconds without a port
 * file, and a stop sends SIGKILL after TU_STOP_WAIT_S seconds without an
 * exit (veild finishes requests in flight for at most 30 s); either is a
 * failure, reported with the end of the log.  They are there so that a
 * hung process fails the run instead of hanging it; nothing asserts a
 * duration.
 *
 * Every child gets SIGTERM should its parent die (PR_SET_PDEATHSIG), and
 * the processes started and not yet stopped are remembered so that
 * tu_proc_stop_all() can end them after a failed test.
 */
#ifndef VEIL_TEST_HARNESS_H
#define VEIL_TEST_HARNESS_H

#include <limits.h>
#include <sys/types.h>

#define TU_START_WAIT_S 30.0
#define TU_STOP_WAIT_S 40.0

typedef struct tu_proc {
    pid_t pid;     /* 0: not running */
    unsigned port; /* from its port file */
    char name[40];
    char log[PATH_MAX]; /* DIR/NAME.log: its stdout and stderr */
} tu_proc;

/* tu_proc_start() flags */
#define TU_LOG_FRESH 1u /* start a new log (else append to it) */

/* Starts argv[0] (argv NULL-terminated) with stdin from /dev/null and its
 * output in log_dir/NAME.log (log_dir NULL: $VEIL_TEST_DIR), then, when
 * port_file is not NULL, removes any old port file first and waits until
 * the child has written "PORT\n" there (p->port).  0; -1 when it could not
 * start, exited first or wrote no port within TU_START_WAIT_S (the log's
 * end is printed; a child still running is killed). */
int tu_proc_start(tu_proc *p, const char *log_dir, const char *name,
                  const char *const *argv, const char *port_file,
                  unsigned flags);

/* SIGTERM, then waits up to TU_STOP_WAIT_S (then SIGKILL).  The wait
 * status; -1 when it was not running or had to be killed. */
int tu_proc_stop(tu_proc *p);

/* tu_proc_stop() and 1 when it exited 0 (a sanitizer report makes that
 * fail); else 0 after printing the status and the end of its log. */
int tu_proc_stop_ok(tu_proc *p);

/* Waits up to secs for p to exit by itself (then SIGKILL): 1 with its
 * wait status in *status when it exited in time, else 0 (*status -1).
 * p is not running afterwards either way. */
int tu_proc_wait(tu_proc *p, double secs, int *status);

/* Stops every process started and not yet stopped (status unchecked). */
void tu_proc_stop_all(void);

/* The last 30 lines of p's log on stderr. */
void tu_proc_log_tail(const tu_proc *p);

/* A small file's text (at most size - 1 bytes, NUL-terminated) into buf:
 * its length, or -1 when it cannot be read or is empty. */
ssize_t tu_read_text(const char *path, char *buf, size_t size);

/* "PORT\n" (1 to 65535) from path into *port: 0, else -1. */
int tu_read_port(const char *path, unsigned *port);

/* A port on 127.0.0.1 where nothing listens (bound, then released); 0
 * when none could be had.  Also what a caller wanting a free port uses. */
unsigned tu_dead_port(void);

/* A TCP connection to 127.0.0.1:port from source address src (NULL: the
 * kernel's choice), close-on-exec; rcvbuf > 0 shrinks the receive buffer
 * first; wait_s > 0 sets send and receive timeouts.  The descriptor, or
 * -1 with errno. */
int tu_tcp_connect(const char *src, unsigned port, int rcvbuf, int wait_s);

/* Sends all of buf (MSG_NOSIGNAL): 0, else -1 with errno. */
int tu_send_all(int fd, const char *buf, size_t len);

/* Seconds on the monotonic clock; sleeping. */
double tu_now(void);
void tu_sleep_ms(unsigned ms);

#endif /* VEIL_TEST_HARNESS_H */
