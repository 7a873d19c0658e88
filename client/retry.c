/* Retries of the client (chat.c, v2.c, keys.c): which statuses are worth
 * another try, and the wait before it (docs/CLIENT.md, "Retries"). */
#include "config.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "keys.h"

uint64_t veil_cl_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int veil_cl_retryable(long status)
{
    return status == 429 || status == 500 || status == 502 || status == 503 ||
           status == 504;
}

int veil_cl_retry_worth(long status, const veil_client_error *err)
{
    return veil_cl_retryable(status) &&
           !(status == 503 && err != NULL &&
             strstr(err->detail, "no TPM attestation available") != NULL);
}

int veil_cl_v2_retry_worth(long status, const veil_client_error *err)
{
    return (status == 429 || status == 503) && veil_cl_retry_worth(status, err);
}

/* Backoff before retry number `attempt` (1-based): Retry-After when the
 * server sent one, else base * 2^(attempt-1), with the upper half jittered;
 * both capped. */
static unsigned backoff_ms(veil_client *c, unsigned attempt,
                           long retry_after_ms)
{
    unsigned cap = c->cfg.retry_max_ms;
    if (retry_after_ms >= 0)
        return retry_after_ms > (long)cap ? cap : (unsigned)retry_after_ms;
    uint64_t d = (uint64_t)c->cfg.retry_base_ms
                 << (attempt > 20 ? 20 : attempt - 1);
    if (d > cap)
        d = cap;
    uint32_t r = 0;
    veil_random(c->engine, (uint8_t *)&r, sizeof r);
    return (unsigned)(d / 2 + (d / 2 + 1) * (uint64_t)r / UINT32_MAX);
}

void veil_cl_wait_retry(veil_client *c, unsigned attempt, long status,
                        long retry_after_ms, veil_chat_stats *stats)
{
    unsigned ms = backoff_ms(c, attempt, status ? retry_after_ms : -1);
    veil_logf(&c->log, VEIL_LOG_INFO, "retry %u of %u in %u ms after %s",
              attempt, c->cfg.max_retries, ms,
              status ? "an HTTP error" : "a network error");
    if (c->cfg.on_retry)
        c->cfg.on_retry(c->cfg.retry_ctx, attempt, (int)status, ms);
    uint64_t t = veil_cl_now_ns();
    sleep_ms(ms);
    if (stats)
        stats->network_ns += veil_cl_now_ns() - t;
}
