/* Secret memory: locked, excluded from core dumps, wiped on free.
 *
 * Each veil_secbuf is its own anonymous mapping, so locking and
 * MADV_DONTDUMP apply to exactly its pages and unlocking one buffer never
 * unlocks another's.  Freed one-page buffers (the common size: keys, PINs,
 * RSA blocks) are wiped and kept, still locked, in a small pool, so the
 * hot paths do not pay mmap+mlock+munmap per operation.  Software private keys
 * live in OpenSSL's secure heap (CRYPTO_secure_malloc_init), which does the
 * same for BIGNUMs.
 */
#include "config.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "engine_int.h"

struct veil_secbuf {
    size_t len;     /* visible length */
    size_t map_len; /* whole mapping, header included */
    int locked;
    int dontdump;
    uint8_t data[];
};

static atomic_ulong lock_failures;
static atomic_ulong lock_successes;
static atomic_int dontdump_failed;
#define POOL_MAX 64
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static veil_secbuf *pool[POOL_MAX];
static size_t pool_n;

/* Memory locks are not inherited across fork(): a child drops the pool
 * (its pages are not locked there) rather than hand out buffers that claim
 * to be locked. */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void pool_prepare(void)
{
    pthread_mutex_lock(&pool_lock);
}

static void pool_parent(void)
{
    pthread_mutex_unlock(&pool_lock);
}

static void pool_child(void)
{
    while (pool_n > 0) {
        veil_secbuf *b = pool[--pool_n];
        munmap(b, b->map_len); /* already wiped when pooled */
    }
    pthread_mutex_unlock(&pool_lock);
}

static void pool_atfork_register(void)
{
    pthread_atfork(pool_prepare, pool_parent, pool_child);
}

static pthread_once_t secure_heap_once = PTHREAD_ONCE_INIT;
static size_t secure_heap_size;
static int secure_heap_ok;

static void secure_heap_init(void)
{
    size_t n = secure_heap_size ? secure_heap_size : (size_t)1 << 20;

    /* Returns 1 on success, 2 when the heap works but mlock failed. */
    if (CRYPTO_secure_malloc_initialized())
        secure_heap_ok = 1;
    else
        secure_heap_ok = CRYPTO_secure_malloc_init(n, 16) == 1;
}

void veil_secmem_init(size_t secure_heap)
{
    secure_heap_size = secure_heap;
    pthread_once(&secure_heap_once, secure_heap_init);
}

/* A fresh anonymous mapping, excluded from dumps and locked where the
 * system allows; NULL when it cannot be mapped. */
static void *map_secret(size_t len, int *dontdump, int *locked)
{
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    if (m == MAP_FAILED)
        return NULL;
    *dontdump = madvise(m, len, MADV_DONTDUMP) == 0;
    *locked = mlock(m, len) == 0;
    return m;
}

veil_rc veil_secbuf_new(size_t len, veil_secbuf **out)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t need, map_len;
    int dontdump, locked;
    veil_secbuf *b;
    void *m;

    if (!out)
        return veil_err(VEIL_E_ARG, "engine", NULL, "secbuf: no output");
    *out = NULL;
    need = sizeof(veil_secbuf) + (len ? len : 1);
    if (need < len || need > SIZE_MAX - page)
        return veil_err(VEIL_E_ARG, "engine", NULL, "secbuf: size overflow");
    pthread_once(&atfork_once, pool_atfork_register);
    map_len = (need + page - 1) / page * page;
    if (map_len == page) {
        pthread_mutex_lock(&pool_lock);
        b = pool_n ? pool[--pool_n] : NULL;
        pthread_mutex_unlock(&pool_lock);
        if (b) { /* wiped when it was freed */
            b->len = len;
            *out = b;
            return VEIL_OK;
        }
    }
    m = map_secret(map_len, &dontdump, &locked);
    if (!m)
        return veil_err(VEIL_E_NOMEM, "engine", NULL,
                        "secbuf: cannot map %zu bytes", map_len);
    b = m;
    b->len = len;
    b->map_len = map_len;
    b->dontdump = dontdump;
    if (!b->dontdump)
        atomic_store(&dontdump_failed, 1);
    b->locked = locked;
    if (b->locked)
        atomic_fetch_add(&lock_successes, 1);
    else
        atomic_fetch_add(&lock_failures, 1);
    *out = b;
    return VEIL_OK;
}

uint8_t *veil_secbuf_data(veil_secbuf *b)
{
    return b ? b->data : NULL;
}

size_t veil_secbuf_len(const veil_secbuf *b)
{
    return b ? b->len : 0;
}

void veil_secbuf_truncate(veil_secbuf *b, size_t len)
{
    if (!b || len >= b->len)
        return;
    veil_wipe(b->data + len, b->len - len);
    b->len = len;
}

int veil_secbuf_locked(const veil_secbuf *b)
{
    return b ? b->locked : 0;
}

void veil_secbuf_free(veil_secbuf *b)
{
    size_t map_len;
    int locked;

    if (!b)
        return;
    map_len = b->map_len;
    locked = b->locked;
    if (map_len == (size_t)sysconf(_SC_PAGESIZE) && locked && b->dontdump) {
        veil_wipe(b->data, map_len - sizeof *b);
        b->len = 0;
        pthread_mutex_lock(&pool_lock);
        if (pool_n < POOL_MAX) {
            pool[pool_n++] = b;
            b = NULL;
        }
        pthread_mutex_unlock(&pool_lock);
        if (!b)
            return;
    }
    veil_wipe(b, map_len);
    if (locked)
        munlock(b, map_len);
    munmap(b, map_len);
}

void veil_memory_status_get(veil_memory_status *st)
{
    struct rlimit rl;

    if (!st)
        return;
    memset(st, 0, sizeof *st);
    /* Probe: can a fresh page be locked right now?  (Not through the pool,
     * whose pages were locked earlier.) */
    {
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        void *m = map_secret(page, &st->dontdump, &st->locking);
        if (m) {
            if (st->locking)
                munlock(m, page);
            munmap(m, page);
        }
    }
    st->zeroing = 1;
    st->core_dumps_off = getrlimit(RLIMIT_CORE, &rl) == 0 && rl.rlim_cur == 0 &&
                         prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0;
    st->secure_heap = secure_heap_ok && CRYPTO_secure_malloc_initialized();
    st->lock_failures = atomic_load(&lock_failures);
    if (atomic_load(&dontdump_failed))
        st->dontdump = 0;
}

veil_rc veil_disable_core_dumps(void)
{
    struct rlimit rl = {0, 0};

    if (setrlimit(RLIMIT_CORE, &rl) != 0)
        return veil_err(VEIL_E_ARG, "engine", NULL,
                        "setrlimit(RLIMIT_CORE): %s", strerror(errno));
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        return veil_err(VEIL_E_ARG, "engine", NULL,
                        "prctl(PR_SET_DUMPABLE): %s", strerror(errno));
    return VEIL_OK;
}
