/* The replay register: every package leaves two marks (the hash of its
 * canonical payload ID and the hash of its wrapped AES key); a package with
 * a mark seen within the window is a replay.  So a wrapped key is never
 * taken twice while it is remembered, whatever payload ID comes with it.
 *
 * It survives restarts: the marks live in a file, STATE_DIR/replay.db,
 * mapped into memory (MAP_SHARED) and written back with msync(MS_SYNC)
 * every sync_s seconds by a thread of its own, and once more when the
 * register is freed.  A crash of veild loses nothing (the pages are the
 * kernel's); a crash of the machine loses at most the marks of the last
 * sync_s seconds.  At start the file is checked (magic, version, sizes,
 * positions) and the index rebuilt from it; a file that fails the check,
 * or that another veild holds (flock), stops the start-up.  Without a
 * directory (gw_strikes_new) the same register lives in anonymous memory.
 *
 * Memory is bounded and allocated once:
 *
 *  - a ring of `capacity` records (a 16-byte digest and a 4-byte time: 20
 *    bytes), in the order they were recorded: the file, after a 4 KiB
 *    header.  Records leave from the oldest end once older than the
 *    window, so expiry costs O(1) per record and never needs a sweep;
 *  - an open-addressing index (linear probing) of 4-byte ring positions
 *    plus one (0: empty), 2 to 4 times `capacity` slots (a power of two),
 *    in anonymous memory, rebuilt at start.  Removal shifts the following
 *    entries back (Knuth's algorithm R): no tombstones.
 *
 * In all 28 to 36 bytes per mark, two marks per request: the default
 * 4194304 marks (2097152 requests, enough for 24 requests a second around
 * the clock for the default 24 h window) take an 80 MiB file and a 32 MiB
 * index.  gw_strikes_bytes says exactly.
 *
 * When the ring is full of records still inside the window, gw_strikes_add
 * says FULL and records nothing: the gateway then refuses (503) rather than
 * forget a mark early.
 *
 * An attacker chooses payload IDs (and could grind wrapped keys), so the
 * index is not taken from the marks themselves: each mark is stored as the
 * first 16 bytes of SHA-256(secret || tag || mark) with a 32-byte secret
 * drawn when the file is made (and kept in it: the file is 0600 in a
 * directory only veild may write).  The tag ('a' or 'b') keeps the two
 * kinds of marks apart.
 *
 * Times are whole seconds from the caller (time(NULL)); a mark recorded at
 * t is live while now - t <= window.  A clock that steps back only keeps
 * marks longer.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "gateway.h"

#define EMPTY 0u /* an index slot holds a ring position + 1 */
#define CAPACITY_MAX (1u << 24)
#define DIGEST_LEN 16
#define HEAD_SIZE 4096
#define FILE_NAME "replay.db"
#define MAGIC "VEILRPL\n"
#define FILE_VERSION 1u

typedef struct record {
    uint8_t h[DIGEST_LEN]; /* SHA-256(secret || tag || mark), cut */
    uint32_t t;            /* when recorded */
} record;

/* The file's first page (host byte order: the file is this machine's). */
typedef struct head {
    char magic[8];
    uint32_t version;
    uint32_t record_size;
    uint32_t cap;   /* records in the ring */
    uint32_t head;  /* oldest record */
    uint32_t count; /* records held */
    uint32_t reserved;
    uint8_t secret[32];
} head;

struct gw_strikes {
    pthread_mutex_t mu;
    int64_t window;
    uint32_t mask; /* index slots - 1 */
    head *hd;      /* in the mapping (or in anonymous memory) */
    record *ring;  /* right after the header page */
    uint32_t *index;
    void *map;
    size_t map_size;
    int fd; /* -1: anonymous */
    /* the sync thread */
    unsigned sync_s;
    int syncing, stop;
    pthread_t th;
    pthread_cond_t wake;
};

static size_t file_size(uint32_t cap)
{
    return HEAD_SIZE + (size_t)cap * sizeof(record);
}

static size_t slots_for(uint32_t cap)
{
    size_t slots = 1;

    while (slots < 2 * (size_t)cap)
        slots <<= 1;
    return slots;
}

static uint32_t home(const gw_strikes *s, const uint8_t h[DIGEST_LEN])
{
    uint32_t v;

    memcpy(&v, h, sizeof v);
    return v & s->mask;
}

static const record *at(const gw_strikes *s, uint32_t slot)
{
    return &s->ring[s->index[slot] - 1];
}

/* The index slot of the record with digest h, or UINT32_MAX. */
static uint32_t find(const gw_strikes *s, const uint8_t h[DIGEST_LEN])
{
    for (uint32_t i = home(s, h);; i = (i + 1) & s->mask) {
        if (s->index[i] == EMPTY)
            return UINT32_MAX;
        if (memcmp(at(s, i)->h, h, DIGEST_LEN) == 0)
            return i;
    }
}

/* Points the index at ring position pos for its digest: the slot of an
 * older record of the same mark, or a free one. */
static void index_put(gw_strikes *s, uint32_t pos, uint32_t slot)
{
    if (slot == UINT32_MAX) {
        slot = home(s, s->ring[pos].h);
        while (s->index[slot] != EMPTY)
            slot = (slot + 1) & s->mask;
    }
    s->index[slot] = pos + 1;
}

/* Rebuilds the index from the ring (at start). */
static void index_rebuild(gw_strikes *s)
{
    for (uint32_t k = 0; k < s->hd->count; k++) {
        uint32_t pos = (uint32_t)(((uint64_t)s->hd->head + k) % s->hd->cap);

        /* later records are newer: they take the slot of an older one */
        index_put(s, pos, find(s, s->ring[pos].h));
    }
}

/* ---- the file ----------------------------------------------------------- */

static void *sync_thread(void *arg)
{
    gw_strikes *s = arg;

    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        struct timespec until;

        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += s->sync_s;
        pthread_cond_timedwait(&s->wake, &s->mu, &until);
        pthread_mutex_unlock(&s->mu);
        /* only dirty pages are written; writers go on meanwhile */
        msync(s->map, s->map_size, MS_SYNC);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* 1 when the file's first HEAD_SIZE bytes are there and all zero: a
 * register whose making a crash cut short. */
static int head_blank(int fd)
{
    uint8_t h[HEAD_SIZE], acc = 0;

    if (pread(fd, h, sizeof h, 0) != (ssize_t)sizeof h)
        return 0;
    for (size_t i = 0; i < sizeof h; i++)
        acc |= h[i];
    return acc == 0;
}

/* Checks the header of an existing file against what is configured: 0,
 * or -2 (err set) when it conflicts, which no restart would cure. */
static int head_check(const head *h, size_t size, uint32_t cap,
                      const char *path, char *err, size_t err_size)
{
    if (size < HEAD_SIZE || memcmp(h->magic, MAGIC, 8) != 0 ||
        h->version != FILE_VERSION || h->record_size != sizeof(record)) {
        gw_put_err(err, err_size,
                   "%s is not a replay register of this version; move it "
                   "away only if no request it remembers may come again",
                   path);
        return -2;
    }
    if (h->cap != cap) {
        gw_put_err(err, err_size,
                   "%s holds %u marks, replay_capacity says %u: set "
                   "replay_capacity = %u (or move the file away once its "
                   "marks are past the window)",
                   path, h->cap, cap, h->cap);
        return -2;
    }
    if (size != file_size(cap) || h->head >= cap || h->count > cap) {
        gw_put_err(err, err_size,
                   "%s is damaged (size or positions do not fit); move it "
                   "away only if no request it remembers may come again",
                   path);
        return -2;
    }
    return 0;
}

/* Opens or makes dir/replay.db and maps it.  0, or with err: -2 when the
 * file conflicts with the settings (not a regular file of ours, another
 * version or capacity, damaged), which no restart cures; else -1. */
static int open_file(gw_strikes *s, const char *dir, uint32_t cap, char *err,
                     size_t err_size)
{
    char path[4096];
    struct stat st;
    int made = 0;

    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, FILE_NAME) >=
        sizeof path) {
        gw_put_err(err, err_size, "state_dir: path too long");
        return -1;
    }
    s->fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (s->fd < 0 && errno == ENOENT) {
        s->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                     0600);
        made = s->fd >= 0;
    }
    if (s->fd < 0 && (errno == ELOOP || errno == EISDIR)) {
        /* a symbolic link (O_NOFOLLOW) or a directory: not ours, as
         * below, and no restart would change it */
        gw_put_err(err, err_size,
                   "%s must be a regular file of ours, mode 0600", path);
        return -2;
    }
    if (s->fd < 0) {
        gw_put_err(err, err_size, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(s->fd, LOCK_EX | LOCK_NB) != 0) {
        gw_put_err(err, err_size,
                   "%s is in use by another veild (one state_dir each)", path);
        return -1;
    }
    if (fstat(s->fd, &st) != 0 || !S_ISREG(st.st_mode) ||
        st.st_uid != geteuid() || (st.st_mode & 077) != 0) {
        gw_put_err(err, err_size,
                   "%s must be a regular file of ours, mode 0600", path);
        return -2;
    }
    if (!made && (size_t)st.st_size == 0)
        made = 1; /* made, but not sized, before a crash */
    else if (!made && head_blank(s->fd))
        made = 1; /* sized, but its header not yet written, before a crash:
                     nothing was ever remembered in it (made is on disk
                     only with its header, before the first mark) */
    s->map_size = file_size(cap);
    if (made && ftruncate(s->fd, (off_t)s->map_size) != 0) {
        gw_put_err(err, err_size, "cannot size %s: %s", path, strerror(errno));
        return -1;
    }
    if (!made && (size_t)st.st_size != s->map_size) {
        head h;

        if (pread(s->fd, &h, sizeof h, 0) != (ssize_t)sizeof h)
            memset(&h, 0, sizeof h);
        head_check(&h, (size_t)st.st_size, cap, path, err, err_size);
        return -2; /* whatever the header says: mapped, it would not fit */
    }
    s->map =
        mmap(NULL, s->map_size, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
    if (s->map == MAP_FAILED) {
        s->map = NULL;
        gw_put_err(err, err_size, "cannot map %s: %s", path, strerror(errno));
        return -1;
    }
    s->hd = s->map;
    s->ring = (record *)((char *)s->map + HEAD_SIZE);
    if (made) {
        memcpy(s->hd->magic, MAGIC, 8);
        s->hd->version = FILE_VERSION;
        s->hd->record_size = sizeof(record);
        s->hd->cap = cap;
        if (RAND_bytes(s->hd->secret, sizeof s->hd->secret) != 1) {
            gw_put_err(err, err_size, "no random secret");
            return -1;
        }
        /* the file and its name on disk before anything is remembered */
        if (msync(s->map, HEAD_SIZE, MS_SYNC) != 0 || fsync(s->fd) != 0) {
            gw_put_err(err, err_size, "cannot write %s: %s", path,
                       strerror(errno));
            return -1;
        }
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
        return 0;
    }
    return head_check(s->hd, s->map_size, cap, path, err, err_size);
}

gw_strikes *gw_strikes_open(const char *dir, unsigned window_s,
                            unsigned capacity, unsigned sync_s, int *conflict,
                            char *err, size_t err_size)
{
    gw_strikes *s;
    size_t slots;
    int rc;

    if (conflict)
        *conflict = 0;

    if (capacity < 2 || capacity > CAPACITY_MAX || (dir && sync_s == 0)) {
        gw_put_err(err, err_size, "replay register: bad sizes");
        return NULL;
    }
    if ((s = calloc(1, sizeof *s)) == NULL) {
        gw_put_err(err, err_size, "out of memory");
        return NULL;
    }
    s->fd = -1;
    s->window = window_s;
    s->sync_s = sync_s;
    slots = slots_for(capacity);
    s->mask = (uint32_t)(slots - 1);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    /* calloc: pages of the index cost memory only once used */
    s->index = calloc(slots, sizeof *s->index);
    if (s->index == NULL) {
        gw_put_err(err, err_size, "out of memory");
        goto fail;
    }
    if (dir) {
        if ((rc = open_file(s, dir, capacity, err, err_size)) != 0) {
            if (conflict)
                *conflict = rc == -2;
            goto fail;
        }
        index_rebuild(s);
        if (pthread_create(&s->th, NULL, sync_thread, s) != 0) {
            gw_put_err(err, err_size, "cannot start the sync thread");
            goto fail;
        }
        s->syncing = 1;
    } else {
        s->map_size = file_size(capacity);
        s->map = mmap(NULL, s->map_size, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (s->map == MAP_FAILED) {
            s->map = NULL;
            gw_put_err(err, err_size, "out of memory");
            goto fail;
        }
        s->hd = s->map;
        s->ring = (record *)((char *)s->map + HEAD_SIZE);
        s->hd->cap = capacity;
        if (RAND_bytes(s->hd->secret, sizeof s->hd->secret) != 1) {
            gw_put_err(err, err_size, "no random secret");
            goto fail;
        }
    }
    return s;
fail:
    gw_strikes_free(s);
    return NULL;
}

gw_strikes *gw_strikes_new(unsigned window_s, unsigned capacity)
{
    return gw_strikes_open(NULL, window_s, capacity, 0, NULL, NULL, 0);
}

void gw_strikes_free(gw_strikes *s)
{
    if (!s)
        return;
    if (s->syncing) {
        pthread_mutex_lock(&s->mu);
        s->stop = 1;
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->th, NULL);
    }
    if (s->map) {
        if (s->fd >= 0)
            msync(s->map, s->map_size, MS_SYNC);
        else
            veil_wipe(s->hd->secret, sizeof s->hd->secret);
        munmap(s->map, s->map_size);
    }
    if (s->fd >= 0)
        close(s->fd); /* and with it the lock */
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->mu);
    free(s->index);
    free(s);
}

size_t gw_strikes_bytes(const gw_strikes *s)
{
    if (!s)
        return 0;
    return sizeof *s + s->map_size + ((size_t)s->mask + 1) * sizeof *s->index;
}

void gw_strikes_usage(gw_strikes *s, unsigned *held, unsigned *capacity)
{
    *held = *capacity = 0;
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    *held = s->hd->count;
    *capacity = s->hd->cap;
    pthread_mutex_unlock(&s->mu);
}

/* ---- marks -------------------------------------------------------------- */

static int digest(const gw_strikes *s, char tag, const uint8_t mark[32],
                  uint8_t out[DIGEST_LEN])
{
    uint8_t in[32 + 1 + 32], full[32];
    unsigned int len = 0;
    int ok;

    memcpy(in, s->hd->secret, 32);
    in[32] = (uint8_t)tag;
    memcpy(in + 33, mark, 32);
    ok = EVP_Digest(in, sizeof in, full, &len, EVP_sha256(), NULL) == 1 &&
         len == 32;
    memcpy(out, full, DIGEST_LEN);
    veil_wipe(in, sizeof in);
    veil_wipe(full, sizeof full);
    return ok;
}

static int expired(const gw_strikes *s, int64_t t, int64_t now)
{
    return now > t && now - t > s->window;
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
        k = home(s, at(s, j)->h);
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
    head *h = s->hd;

    while (h->count > 0 && expired(s, s->ring[h->head].t, now)) {
        uint32_t slot = find(s, s->ring[h->head].h);

        /* the index may already point at a newer record of the same mark */
        if (slot != UINT32_MAX && s->index[slot] == h->head + 1)
            index_remove(s, slot);
        h->head = h->head + 1 == h->cap ? 0 : h->head + 1;
        h->count--;
    }
}

/* Records h at time now; slot is its index slot when an expired record of
 * the same mark is still indexed, else UINT32_MAX. */
static void record_mark(gw_strikes *s, const uint8_t h[DIGEST_LEN],
                        uint32_t slot, int64_t now)
{
    uint32_t pos =
        (uint32_t)(((uint64_t)s->hd->head + s->hd->count) % s->hd->cap);

    memcpy(s->ring[pos].h, h, DIGEST_LEN);
    s->ring[pos].t = (uint32_t)now;
    s->hd->count++;
    index_put(s, pos, slot);
}

gw_strike gw_strikes_add(gw_strikes *s, const uint8_t a[32],
                         const uint8_t b[32], time_t now)
{
    uint8_t ha[DIGEST_LEN], hb[DIGEST_LEN];
    uint32_t sa, sb;
    int64_t t = (int64_t)now;
    gw_strike r;

    if (!s || !a || !b || t < 0 || t > UINT32_MAX)
        return GW_STRIKE_FULL;
    if (!digest(s, 'a', a, ha) || !digest(s, 'b', b, hb))
        return GW_STRIKE_FULL; /* fail closed */
    pthread_mutex_lock(&s->mu);
    expire(s, t);
    sa = find(s, ha);
    sb = find(s, hb);
    if ((sa != UINT32_MAX && !expired(s, at(s, sa)->t, t)) ||
        (sb != UINT32_MAX && !expired(s, at(s, sb)->t, t))) {
        r = GW_STRIKE_SEEN;
    } else if (s->hd->cap - s->hd->count < 2) {
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

/* ---- the state directory ------------------------------------------------ */

int gw_state_dir(const char *dir, char *err, size_t err_size)
{
    struct stat st;

    if (dir == NULL || *dir == '\0') {
        gw_put_err(err, err_size, "state_dir is not set");
        return -1;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        gw_put_err(err, err_size, "cannot make state_dir %s: %s", dir,
                   strerror(errno));
        return -1;
    }
    if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        gw_put_err(err, err_size, "state_dir %s is not a directory", dir);
        return -1;
    }
    if (st.st_uid != geteuid() || (st.st_mode & 022) != 0) {
        gw_put_err(err, err_size,
                   "state_dir %s must be ours and writable by nobody else",
                   dir);
        return -1;
    }
    return 0;
}

int gw_state_secret(const char *dir, const char *name, uint8_t out[32],
                    char *err, size_t err_size)
{
    char path[4096];
    struct stat st;
    int fd, ok = 0;

    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >=
        sizeof path) {
        gw_put_err(err, err_size, "state_dir: path too long");
        return -1;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 && errno == ENOENT) {
        /* a new secret: written whole under a temporary name, then named */
        char tmp[4200];
        uint8_t fresh[32];

        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        unlink(tmp);
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                  0600);
        ok = fd >= 0 && RAND_bytes(fresh, sizeof fresh) == 1 &&
             write(fd, fresh, sizeof fresh) == (ssize_t)sizeof fresh &&
             fsync(fd) == 0;
        if (fd >= 0)
            close(fd);
        if (ok && link(tmp, path) != 0 && errno != EEXIST)
            ok = 0;
        unlink(tmp);
        veil_wipe(fresh, sizeof fresh);
        if (!ok) {
            gw_put_err(err, err_size, "cannot write %s: %s", path,
                       strerror(errno));
            return -1;
        }
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    }
    if (fd < 0) {
        gw_put_err(err, err_size, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
         (st.st_mode & 077) == 0 && st.st_size == 32 && read(fd, out, 32) == 32;
    close(fd);
    if (!ok) {
        veil_wipe(out, 32);
        gw_put_err(err, err_size,
                   "%s must be a file of ours, mode 0600, of 32 bytes", path);
        return -1;
    }
    return 0;
}
