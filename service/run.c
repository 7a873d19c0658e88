/* service/run.c: the signals of a veil daemon (service/run.h). */
#include "config.h"

#include <pthread.h>
#include <signal.h>

#include "run.h"

void svc_run_init(svc_run *run)
{
    /* Signals are taken by sigwait; every thread inherits the mask. */
    sigemptyset(&run->sigs);
    sigaddset(&run->sigs, SIGTERM);
    sigaddset(&run->sigs, SIGINT);
    sigaddset(&run->sigs, SIGHUP); /* a reload: the caller's to do */
    pthread_sigmask(SIG_BLOCK, &run->sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
}

int svc_run_wait(svc_run *run)
{
    int sig = 0;

    while (sigwait(&run->sigs, &sig) != 0)
        ;
    return sig;
}

const char *svc_run_signal_name(int sig)
{
    return sig == SIGTERM ? "SIGTERM" : sig == SIGHUP ? "SIGHUP" : "SIGINT";
}
