/* Answer signatures kept by payload ID (GET /v1/signatures/ID), for
 * `retention_s` seconds, at most `capacity` of them.
 *
 * Layout, all of it sized by the capacity:
 *
 *  - a ring of `capacity` entries in the order they were stored (a payload
 *    ID, a time, and a copy of the JSON body).  Entries leave from the
 *    oldest end: once older than the retention, or to make room when the
 *    ring is full.  Times only grow along the ring, so expiry never needs
 *    a sweep;
 *  - a chained hash index: one bucket head per slot (2 to 4 slots per
 *    entry, a power of two) and a `next` position in each entry.
 *
 * Bodies are copies of at most BODY_MAX bytes (a signature body is about
 * 1 KiB), so the whole store is bounded by capacity * (BODY_MAX + the
 * entry), whatever is put into it.
 *
 * Payload IDs are chosen by clients, so the bucket does not come from the
 * ID itself but from SHA-256(secret || ID) with a secret drawn per
 * process: nobody can choose IDs that pile into one chain.
 *
 * An entry may name its owner (the SHA-256 of the API key that made the
 * request): then only that key, or a lookup for an operator (who NULL),
 * finds it; to anyone else it is as absent as an unknown ID.
 *
 * The same ID stored again (possible once the replay window has passed)
 * while the first entry is live keeps the first: whoever reuses a payload
 * ID later must not be able to replace the signature another client may
 * still fetch.
 *
 * An entry stored at t is found while now - t < retention_s.  A clock that
 * steps back only keeps entries longer.
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "gateway.h"
#include "package.h"

#define NONE UINT32_MAX
#define CAPACITY_MAX (1u << 24)
#define ID_MAX VEIL_PAYLOAD_ID_MAX /* the canonical form (server.c) */
#define BODY_MAX 4096

typedef struct entry {
    char id[ID_MAX + 1]; /* "" when unused */
    int64_t t;
    char *body;
    int owned;         /* owner is set: only it may read the entry */
    uint8_t owner[32]; /* SHA-256 of the API key that made the request */
    uint32_t next;     /* next entry in the same bucket, or NONE */
} entry;

struct gw_signlog {
    pthread_mutex_t mu;
    int64_t retention;
    uint32_t cap;   /* entries in the ring */
    uint32_t head;  /* oldest entry */
    uint32_t count; /* entries in the ring, from head on */
    uint32_t mask;  /* buckets - 1 */
    entry *ring;
    uint32_t *bucket; /* first ring position of each chain, or NONE */
    uint8_t secret[32];
};

gw_signlog *gw_signlog_new(unsigned retention_s, unsigned capacity)
{
    gw_signlog *l;
    size_t slots = 1;

    if (retention_s == 0 || capacity == 0 || capacity > CAPACITY_MAX)
        return NULL;
    while (slots < 2 * (size_t)capacity)
        slots <<= 1;
    l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->retention = retention_s;
    l->cap = capacity;
    l->mask = (uint32_t)(slots - 1);
    l->ring = calloc(capacity, sizeof *l->ring);
    l->bucket = malloc(slots * sizeof *l->bucket);
    if (!l->ring || !l->bucket ||
        RAND_bytes(l->secret, sizeof l->secret) != 1 ||
        pthread_mutex_init(&l->mu, NULL) != 0) {
        free(l->ring);
        free(l->bucket);
        veil_wipe(l->secret, sizeof l->secret);
        free(l);
        return NULL;
    }
    memset(l->bucket, 0xff, slots * sizeof *l->bucket); /* all NONE */
    return l;
}

void gw_signlog_free(gw_signlog *l)
{
    if (!l)
        return;
    for (uint32_t i = 0; i < l->cap; i++)
        free(l->ring[i].body);
    pthread_mutex_destroy(&l->mu);
    free(l->ring);
    free(l->bucket);
    veil_wipe(l->secret, sizeof l->secret);
    free(l);
}

/* The bucket of an ID; -1 when the digest cannot be made. */
static int64_t bucket_of(const gw_signlog *l, const char *id, size_t len)
{
    uint8_t h[32];
    unsigned int n = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, l->secret, sizeof l->secret) == 1 &&
             EVP_DigestUpdate(ctx, id, len) == 1 &&
             EVP_DigestFinal_ex(ctx, h, &n) == 1;
    uint32_t v;

    EVP_MD_CTX_free(ctx);
    if (!ok)
        return -1;
    memcpy(&v, h, sizeof v);
    return (int64_t)(v & l->mask);
}

/* Takes the entry at ring position pos out of its chain. */
static void unlink_entry(gw_signlog *l, uint32_t b, uint32_t pos)
{
    uint32_t *link = &l->bucket[b];

    while (*link != NONE && *link != pos)
        link = &l->ring[*link].next;
    if (*link == pos)
        *link = l->ring[pos].next;
}

/* Unlinks the entry at pos and frees its body. */
static void clear_entry(gw_signlog *l, uint32_t pos)
{
    entry *e = &l->ring[pos];

    int64_t b = bucket_of(l, e->id, strlen(e->id));

    /* the digest was made once for this ID, so it is made again; if it
     * were not, a lookup would no longer reach this entry either, and it
     * is only freed */
    if (b >= 0)
        unlink_entry(l, (uint32_t)b, pos);
    free(e->body);
    memset(e, 0, sizeof *e);
    e->next = NONE;
}

/* Drops the oldest entry. */
static void drop_oldest(gw_signlog *l)
{
    clear_entry(l, l->head);
    l->head = (l->head + 1) % l->cap;
    l->count--;
}

static int live(const gw_signlog *l, const entry *e, int64_t now)
{
    return now - e->t < l->retention;
}

static void expire(gw_signlog *l, int64_t now)
{
    while (l->count > 0) {
        const entry *e = &l->ring[l->head];

        if (live(l, e, now))
            break;
        drop_oldest(l);
    }
}

/* Ring position of id in bucket b, or NONE. */
static uint32_t find(const gw_signlog *l, uint32_t b, const char *id)
{
    for (uint32_t pos = l->bucket[b]; pos != NONE; pos = l->ring[pos].next)
        if (strcmp(l->ring[pos].id, id) == 0)
            return pos;
    return NONE;
}

int gw_signlog_put(gw_signlog *l, const char *payload_id, const char *json,
                   const uint8_t *owner, time_t now)
{
    size_t id_len, body_len;
    int64_t b;
    char *copy;
    uint32_t pos;

    if (!l || !payload_id || !json)
        return -1;
    id_len = strlen(payload_id);
    body_len = strlen(json);
    if (id_len == 0 || id_len > ID_MAX || body_len > BODY_MAX)
        return -1;
    if ((b = bucket_of(l, payload_id, id_len)) < 0)
        return -1;
    if ((copy = malloc(body_len + 1)) == NULL)
        return -1;
    memcpy(copy, json, body_len + 1);

    pthread_mutex_lock(&l->mu);
    expire(l, (int64_t)now);
    pos = find(l, (uint32_t)b, payload_id);
    if (pos != NONE) {
        pthread_mutex_unlock(&l->mu);
        free(copy);
        return 0; /* the first signature stays */
    }
    if (l->count == l->cap)
        drop_oldest(l);
    pos = (l->head + l->count) % l->cap;
    l->count++;
    memcpy(l->ring[pos].id, payload_id, id_len + 1);
    l->ring[pos].t = (int64_t)now;
    l->ring[pos].body = copy;
    l->ring[pos].owned = owner != NULL;
    if (owner)
        memcpy(l->ring[pos].owner, owner, sizeof l->ring[pos].owner);
    l->ring[pos].next = l->bucket[b];
    l->bucket[b] = pos;
    pthread_mutex_unlock(&l->mu);
    return 0;
}

char *gw_signlog_get(gw_signlog *l, const char *payload_id, const uint8_t *who,
                     time_t now)
{
    size_t id_len;
    int64_t b;
    uint32_t pos;
    char *out = NULL;

    if (!l || !payload_id)
        return NULL;
    id_len = strlen(payload_id);
    if (id_len == 0 || id_len > ID_MAX ||
        (b = bucket_of(l, payload_id, id_len)) < 0)
        return NULL;
    pthread_mutex_lock(&l->mu);
    pos = find(l, (uint32_t)b, payload_id);
    if (pos != NONE && live(l, &l->ring[pos], (int64_t)now) &&
        (!l->ring[pos].owned || who == NULL ||
         CRYPTO_memcmp(l->ring[pos].owner, who, 32) == 0))
        out = strdup(l->ring[pos].body);
    pthread_mutex_unlock(&l->mu);
    return out;
}
