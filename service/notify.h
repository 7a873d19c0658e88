/* service/notify.h: telling systemd how a veil daemon is doing
 * (sd_notify(3), for Type=notify units).  Not installed; knows nothing of
 * the gateway.
 *
 *   svc_notify_ready      READY=1 with STATUS=: listening, and after each
 *                         reload (whether it took or not)
 *   svc_notify_reloading  RELOADING=1 with MONOTONIC_USEC= (what
 *                         Type=notify-reload, systemd 253 and later, asks
 *                         for), when a reload begins
 *   svc_notify_stopping   STOPPING=1, when a graceful stop begins
 *
 * Each does nothing when $NOTIFY_SOCKET is not set (not under systemd),
 * or when veil was built --without-systemd.  A message that cannot be
 * sent is not an error of the daemon's (it goes on). */
#ifndef VEIL_SVC_NOTIFY_H
#define VEIL_SVC_NOTIFY_H

#pragma GCC visibility push(hidden)

/* 1 when built with libsystemd (sd_notify), else 0. */
int svc_notify_built(void);
/* status: one line for `systemctl status` (never a secret); may be NULL. */
void svc_notify_ready(const char *status);
void svc_notify_reloading(void);
void svc_notify_stopping(void);

#pragma GCC visibility pop

#endif /* VEIL_SVC_NOTIFY_H */
