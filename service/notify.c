/* service/notify.c: sd_notify for Type=notify units (service/notify.h). */
#include "config.h"

#include <stdio.h>
#include <time.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "notify.h"

int svc_notify_built(void)
{
#ifdef HAVE_LIBSYSTEMD
    return 1;
#else
    return 0;
#endif
}

static void notify(const char *state)
{
#ifdef HAVE_LIBSYSTEMD
    /* 0: NOTIFY_SOCKET stays set, for the next message */
    (void)sd_notify(0, state);
#else
    (void)state;
#endif
}

void svc_notify_ready(const char *status)
{
    char m[600];

    snprintf(m, sizeof m, "READY=1%s%s", status ? "\nSTATUS=" : "",
             status ? status : "");
    notify(m);
}

void svc_notify_reloading(void)
{
    struct timespec t;
    char m[96];

    clock_gettime(CLOCK_MONOTONIC, &t);
    snprintf(m, sizeof m,
             "RELOADING=1\nSTATUS=reloading the configuration\n"
             "MONOTONIC_USEC=%llu",
             (unsigned long long)t.tv_sec * 1000000ull +
                 (unsigned long long)t.tv_nsec / 1000ull);
    notify(m);
}

void svc_notify_stopping(void)
{
    notify("STOPPING=1\nSTATUS=stopping: requests in flight finish");
}
