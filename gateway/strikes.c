/* The replay register: every package leaves two marks (the hash of its
 * payload ID and the hash of its wrapped AES key); a package with a mark
 * seen within the window is a replay.
 *
 * Memory is bounded and allocated once, in gw_strikes_new:
 *
 *  - a ring of `capacity` records (a 32-byte digest and a time: 40 bytes),
 *    in the order they were recorded.  Records leave from the oldest end
 *    once older than the window, so expiry costs O(1) per record and never
 *    needs a sweep;
 *  - an open-addressing index (linear probing) of 4-byte ring positions,
 *    2 to 4 times `capacity` slots (a power of two), so probes stay short.
 *    Removal shifts the following entries back (Knuth's algorithm R): no
 *    tombstones, and every lookup stays correct.
 *
 * In all: about 48 to 56 bytes per record (gw_strikes_bytes says exactly);
 * the default 262144 records take 12 MiB and hold 131072 requests.
 *
 * When the ring is full of records still inside the window, gw_strikes_add
 * says FULL and records nothing: the gateway then refuses (503) rather than
 * forget a mark early.
 *
 * An attacker chooses payload IDs (and could grind wrapped keys), so the
 * index is not taken from the marks themselves: each mark is stored as
 * SHA-256(secret || tag || mark) with a 32-byte secret drawn per process,
 * and the index comes from that digest.  The tag ('a' or 'b') keeps the two
 * kinds of marks apart.
 *
 * Times are whole seconds from the caller (time(NULL)); a mark recorded at
 * t is live while now - t <= window.  A clock that steps back only keeps
 * marks longer.
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "gateway.h"

#define EMPTY UINT32_MAX
#define CAPACITY_MAX (1u << 24)

typedef struct record {
    uint8_t h[32]; /* SHA-256(secret || tag || mark) */
    int64_t t;     /* when recorded */
} record;

struct gw_strikes {
    pthread_mutex_t mu;
    int64_t window;
    uint32_t cap;   /* records in the ring */
    uint32_t head;  /* oldest record */
    uint32_t count; /* records held */
    uint32_t mask;  /* index slots - 1 */
    record *ring;
    uint32_t *index; /* ring positions; EMPTY */
    uint8_t secret[32];
};

gw_strikes *gw_strikes_new(unsigned window_s, unsigned capacity)
{
    gw_strikes *s;
    size_t slots = 1;

    if (capacity < 2 || capacity > CAPACITY_MAX)
        return NULL;
    while (slots < 2 * (size_t)capacity)
        slots <<= 1;
    s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->window = window_s;
    s->cap = capacity;
    s->mask = (uint32_t)(slots - 1);
    s->ring = calloc(capacity, sizeof *s->ring);
    s->index = malloc(slots * sizeof *s->index);
    if (!s->ring || !s->index || RAND_bytes(s->secret, sizeof s->secret) != 1 ||
        pthread_mutex_init(&s->mu, NULL) != 0) {
        free(s->ring);
        free(s->index);
        OPENSSL_cleanse(s->secret, sizeof s->secret);
        free(s);
        return NULL;
    }
    memset(s->index, 0xff, slots * sizeof *s->index); /* all EMPTY */
    return s;
}

void gw_strikes_free(gw_strikes *s)
{
    if (!s)
        return;
    pthread_mutex_destroy(&s->mu);
    free(s->ring);
    free(s->index);
    OPENSSL_cleanse(s->secret, sizeof s->secret);
    free(s);
}

size_t gw_strikes_bytes(const gw_strikes *s)
{
    if (!s)
        return 0;
    return sizeof *s + (size_t)s->cap * sizeof *s->ring +
           ((size_t)s->mask + 1) * sizeof *s->index;
}

static int digest(const gw_strikes *s, char tag, const uint8_t mark[32],
                  uint8_t out[32])
{
    uint8_t in[32 + 1 + 32];
    unsigned int len = 0;
    int ok;

    memcpy(in, s->secret, 32);
    in[32] = (uint8_t)tag;
    memcpy(in + 33, mark, 32);
    ok = EVP_Digest(in, sizeof in, out, &len, EVP_sha256(), NULL) == 1 &&
         len == 32;
    OPENSSL_cleanse(in, sizeof in);
    return ok;
}

static uint32_t home(const gw_strikes *s, const uint8_t h[32])
{
    uint32_t v;

    memcpy(&v, h, sizeof v);
    return v & s->mask;
}

static int expired(const gw_strikes *s, int64_t t, int64_t now)
{
    return now > t && now - t > s->window;
}

/* The index slot of the record with digest h, or EMPTY. */
static uint32_t find(const gw_strikes *s, const uint8_t h[32])
{
    for (uint32_t i = home(s, h);; i = (i + 1) & s->mask) {
        if (s->index[i] == EMPTY)
            return EMPTY;
        if (memcmp(s->ring[s->index[i]].h, h, 32) == 0)
            return i;
    }
}

/* Empties index slot i, moving later entries of its cluster back so that
 * each stays reachable from its home slot (algorithm R). */
static void index_remove(gw_strikes *s, uint32_t i)
{
    uint32_t j = i;

    for (;;) {
        uint32_t k;
        int between;

        j = (j + 1) & s->mask;
        if (s->index[j] == EMPTY)
            break;
        k = home(s, s->ring[s->index[j]].h);
        /* the entry at j may move to i unless its home lies in (i, j] */
        between = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (!between) {
            s->index[i] = s->index[j];
            i = j;
        }
    }
    s->index[i] = EMPTY;
}

/* Drops the oldest records while they are past the window. */
static void expire(gw_strikes *s, int64_t now)
{
    while (s->count > 0 && expired(s, s->ring[s->head].t, now)) {
        uint32_t slot = find(s, s->ring[s->head].h);

        /* the index may already point at a newer record of the same mark */
        if (slot != EMPTY && s->index[slot] == s->head)
            index_remove(s, slot);
        s->head = s->head + 1 == s->cap ? 0 : s->head + 1;
        s->count--;
    }
}

/* Records h at time now; slot is its index slot when an expired record of
 * the same mark is still indexed, else EMPTY. */
static void record_mark(gw_strikes *s, const uint8_t h[32], uint32_t slot,
                        int64_t now)
{
    uint32_t pos = (uint32_t)(((uint64_t)s->head + s->count) % s->cap);

    memcpy(s->ring[pos].h, h, 32);
    s->ring[pos].t = now;
    s->count++;
    if (slot == EMPTY) {
        slot = home(s, h);
        while (s->index[slot] != EMPTY)
            slot = (slot + 1) & s->mask;
    }
    s->index[slot] = pos;
}

gw_strike gw_strikes_add(gw_strikes *s, const uint8_t a[32],
                         const uint8_t b[32], time_t now)
{
    uint8_t ha[32], hb[32];
    uint32_t sa, sb;
    int64_t t = (int64_t)now;
    gw_strike r;

    if (!s || !a || !b)
        return GW_STRIKE_FULL;
    if (!digest(s, 'a', a, ha) || !digest(s, 'b', b, hb))
        return GW_STRIKE_FULL; /* fail closed */
    pthread_mutex_lock(&s->mu);
    expire(s, t);
    sa = find(s, ha);
    sb = find(s, hb);
    if ((sa != EMPTY && !expired(s, s->ring[s->index[sa]].t, t)) ||
        (sb != EMPTY && !expired(s, s->ring[s->index[sb]].t, t))) {
        r = GW_STRIKE_SEEN;
    } else if (s->cap - s->count < 2) {
        r = GW_STRIKE_FULL;
    } else {
        /* Recording ha fills an empty slot or rewrites slot sa; neither
         * moves other entries, so sb stays valid. */
        record_mark(s, ha, sa, t);
        record_mark(s, hb, sb, t);
        r = GW_STRIKE_NEW;
    }
    pthread_mutex_unlock(&s->mu);
    return r;
}
