/* Rate limits: a token bucket per API key (id: the key's SHA-256).
 *
 * A bucket holds up to `burst` tokens and gains `per_second` tokens a
 * second; a request takes one.  A key seen for the first time gets a full
 * bucket.
 *
 * The table is bounded: at most max_keys buckets, allocated once, in an
 * open-addressing index (linear probing, removal by backward shift) and a
 * list from least to most recently used.  When every bucket is in use, a
 * new key takes the bucket idle longest.  That loses nothing in the usual
 * case: a bucket left idle long enough has refilled, and a full bucket is
 * exactly what a fresh one would be, so evicting it changes no answer.
 * Only when more than max_keys keys are active within burst/per_second
 * seconds does an evicted key come back to a full bucket early; the daemon
 * sizes max_keys above the number of API keys so that it cannot happen for
 * keys of the key file.
 *
 * Ids are indexed through SHA-256(secret || id) with a per-process secret,
 * so nobody can choose keys that pile up in one part of the index.
 *
 * `now` is in seconds (a monotonic clock, fractions kept); time that goes
 * back adds no tokens.
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "gateway.h"

#define NIL UINT32_MAX
#define MAX_KEYS_LIMIT (1u << 24)
#define RETRY_MAX (365u * 86400u)

typedef struct bucket {
    uint8_t h[32]; /* SHA-256(secret || id) */
    double tokens;
    double last;         /* time of the last refill */
    uint32_t prev, next; /* least recently used first */
} bucket;

struct gw_rate {
    pthread_mutex_t mu;
    double rate, burst;
    uint32_t max, used; /* buckets, buckets in use */
    uint32_t lru, mru;  /* list ends; NIL when empty */
    uint32_t mask;      /* index slots - 1 */
    bucket *b;
    uint32_t *index; /* bucket numbers; NIL */
    uint8_t secret[32];
};

gw_rate *gw_rate_new(double per_second, unsigned burst, unsigned max_keys)
{
    gw_rate *r;
    size_t slots = 1;

    if (!(per_second > 0 && per_second <= 1e9) || burst < 1 || max_keys < 1 ||
        max_keys > MAX_KEYS_LIMIT)
        return NULL;
    while (slots < 2 * (size_t)max_keys)
        slots <<= 1;
    r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->rate = per_second;
    r->burst = burst;
    r->max = max_keys;
    r->lru = r->mru = NIL;
    r->mask = (uint32_t)(slots - 1);
    r->b = calloc(max_keys, sizeof *r->b);
    r->index = malloc(slots * sizeof *r->index);
    if (!r->b || !r->index || RAND_bytes(r->secret, sizeof r->secret) != 1 ||
        pthread_mutex_init(&r->mu, NULL) != 0) {
        free(r->b);
        free(r->index);
        veil_wipe(r->secret, sizeof r->secret);
        free(r);
        return NULL;
    }
    memset(r->index, 0xff, slots * sizeof *r->index); /* all NIL */
    return r;
}

int gw_rate_set(gw_rate *r, double per_second, unsigned burst)
{
    if (!r || !(per_second > 0 && per_second <= 1e9) || burst < 1)
        return -1;
    pthread_mutex_lock(&r->mu);
    r->rate = per_second;
    r->burst = burst;
    pthread_mutex_unlock(&r->mu);
    return 0;
}

void gw_rate_free(gw_rate *r)
{
    if (!r)
        return;
    pthread_mutex_destroy(&r->mu);
    free(r->b);
    free(r->index);
    veil_wipe(r->secret, sizeof r->secret);
    free(r);
}

static uint32_t home(const gw_rate *r, const uint8_t h[32])
{
    uint32_t v;

    memcpy(&v, h, sizeof v);
    return v & r->mask;
}

/* The index slot holding h, or (when absent) the empty slot ending its
 * probe; *found says which. */
static uint32_t find(const gw_rate *r, const uint8_t h[32], int *found)
{
    uint32_t i = home(r, h);

    for (; r->index[i] != NIL; i = (i + 1) & r->mask)
        if (memcmp(r->b[r->index[i]].h, h, 32) == 0) {
            *found = 1;
            return i;
        }
    *found = 0;
    return i;
}

/* Empties index slot i; later entries of the cluster move back (Knuth's
 * algorithm R), so no tombstones are needed. */
static void index_remove(gw_rate *r, uint32_t i)
{
    uint32_t j = i;

    for (;;) {
        uint32_t k;
        int between;

        j = (j + 1) & r->mask;
        if (r->index[j] == NIL)
            break;
        k = home(r, r->b[r->index[j]].h);
        between = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (!between) {
            r->index[i] = r->index[j];
            i = j;
        }
    }
    r->index[i] = NIL;
}

static void list_unlink(gw_rate *r, uint32_t n)
{
    bucket *x = &r->b[n];

    if (x->prev != NIL)
        r->b[x->prev].next = x->next;
    else
        r->lru = x->next;
    if (x->next != NIL)
        r->b[x->next].prev = x->prev;
    else
        r->mru = x->prev;
    x->prev = x->next = NIL;
}

static void list_push_mru(gw_rate *r, uint32_t n)
{
    bucket *x = &r->b[n];

    x->prev = r->mru;
    x->next = NIL;
    if (r->mru != NIL)
        r->b[r->mru].next = n;
    else
        r->lru = n;
    r->mru = n;
}

/* A bucket for h: a free one, else the one idle longest (see the top). */
static uint32_t bucket_for(gw_rate *r, const uint8_t h[32], uint32_t slot,
                           double now)
{
    uint32_t n;
    int found;

    if (r->used < r->max) {
        n = r->used++;
    } else {
        n = r->lru;
        list_unlink(r, n);
        index_remove(r, find(r, r->b[n].h, &found));
        /* the removal may have moved the empty slot that ends h's probe */
        slot = find(r, h, &found);
    }
    memcpy(r->b[n].h, h, 32);
    r->b[n].tokens = r->burst;
    r->b[n].last = now;
    r->index[slot] = n;
    list_push_mru(r, n);
    return n;
}

gw_rc gw_rate_take(gw_rate *r, const uint8_t id[32], double now,
                   unsigned *retry_after_s)
{
    uint8_t in[64], h[32];
    unsigned int hlen = 0;
    uint32_t slot, n;
    int found, ok;
    bucket *x;

    if (retry_after_s)
        *retry_after_s = 1;
    if (!r || !id)
        return GW_RATE_LIMITED;
    memcpy(in, r->secret, 32);
    memcpy(in + 32, id, 32);
    ok = EVP_Digest(in, sizeof in, h, &hlen, EVP_sha256(), NULL) == 1 &&
         hlen == 32;
    veil_wipe(in, sizeof in);
    if (!ok)
        return GW_RATE_LIMITED;

    pthread_mutex_lock(&r->mu);
    slot = find(r, h, &found);
    if (found) {
        n = r->index[slot];
        list_unlink(r, n);
        list_push_mru(r, n);
    } else {
        n = bucket_for(r, h, slot, now);
    }
    x = &r->b[n];
    if (now > x->last) {
        x->tokens += (now - x->last) * r->rate;
        if (x->tokens > r->burst)
            x->tokens = r->burst;
        x->last = now;
    }
    /* the slack absorbs rounding in the refill sums (0.999999999...) */
    if (x->tokens >= 1.0 - 1e-9) {
        x->tokens -= 1.0;
        ok = 1;
    } else {
        /* whole seconds until one token, rounded up, at least 1; the
         * small slack keeps 1.0000000001 from becoming 2 */
        double wait = (1.0 - x->tokens) / r->rate - 1e-9;
        unsigned secs;

        if (wait <= 0) {
            secs = 1;
        } else if (wait >= RETRY_MAX) {
            secs = RETRY_MAX;
        } else {
            secs = (unsigned)wait;
            if ((double)secs < wait)
                secs++;
        }
        if (retry_after_s)
            *retry_after_s = secs < 1 ? 1 : secs;
        ok = 0;
    }
    pthread_mutex_unlock(&r->mu);
    return ok ? GW_OK : GW_RATE_LIMITED;
}

void gw_rate_address_id(const struct sockaddr *sa, unsigned ipv6_prefix,
                        uint8_t id[32])
{
    uint8_t b[16];

    memset(id, 0, 32);
    if (sa && sa->sa_family == AF_INET6) {
        const struct in6_addr *a =
            &((const struct sockaddr_in6 *)sa)->sin6_addr;

        memcpy(b, a->s6_addr, 16);
        if (IN6_IS_ADDR_V4MAPPED(a)) {
            SHA256(b + 12, 4, id);
            return;
        }
        for (unsigned i = 0, bits = ipv6_prefix < 128 ? ipv6_prefix : 128;
             i < 16; i++) {
            if (bits >= 8) {
                bits -= 8;
                continue;
            }
            b[i] &= (uint8_t)(0xff00u >> bits);
            bits = 0;
        }
        SHA256(b, 16, id);
    } else if (sa && sa->sa_family == AF_INET) {
        memcpy(b, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        SHA256(b, 4, id);
    }
}
