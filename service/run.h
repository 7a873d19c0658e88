/* service/run.h: how a veil daemon (veild, the coming `veil proxy`) takes
 * its signals.  Not installed; knows nothing of the gateway.
 *
 *   svc_run_init   before any thread starts: SIGTERM, SIGINT and SIGHUP
 *                  blocked in every thread (taken by svc_run_wait only),
 *                  SIGPIPE ignored (a client that goes away is no signal)
 *   svc_run_wait   blocks until one of them comes; on SIGHUP the caller
 *                  reloads its configuration and waits again, on the
 *                  others it stops gracefully (svc_http_stop with its
 *                  grace period)
 */
#ifndef VEIL_SVC_RUN_H
#define VEIL_SVC_RUN_H

#include <signal.h>

#pragma GCC visibility push(hidden)

typedef struct svc_run {
    sigset_t sigs;
} svc_run;

void svc_run_init(svc_run *run);
/* The signal that came: SIGTERM or SIGINT (stop), or SIGHUP (reload). */
int svc_run_wait(svc_run *run);
/* "SIGTERM", "SIGHUP" or "SIGINT", for the log. */
const char *svc_run_signal_name(int sig);

#pragma GCC visibility pop

#endif /* VEIL_SVC_RUN_H */
