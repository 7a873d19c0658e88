/* Secret memory, PIN sources and error names (engine/secmem.c, pin.c,
 * error.c).
 *
 * Checks that need a different process state (a lower RLIMIT_MEMLOCK,
 * core dumps off, no controlling terminal) run in a forked child, which
 * reports through its exit status; the parent asserts on that status.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CUnit/CUnit.h>

#include "testutil.h"
#include "engine_int.h"

/* AddressSanitizer intercepts mlock() and makes it a no-op that reports
 * success, so under ASan a failed lock cannot be observed. */
#if defined(__SANITIZE_ADDRESS__)
#define VEIL_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define VEIL_TEST_ASAN 1
#endif
#endif
#ifndef VEIL_TEST_ASAN
#define VEIL_TEST_ASAN 0
#endif

/* ---- helpers ------------------------------------------------------------ */

/* Scratch directory for PIN files: a fresh directory under $VEIL_TEST_DIR
 * (set by tests/env/with-tokens.sh), or under $TMPDIR or /tmp when run
 * directly. */
static char scratch[512];

static int make_scratch(void)
{
    return tu_scratch_dir("secmem", scratch, sizeof scratch);
}

static void scratch_path(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/%s", scratch, name);
}

/* Creates scratch/name with exactly `mode` (umask does not apply) and
 * writes len bytes of data into it.  Returns 0 on success. */
static int write_file(const char *name, mode_t mode, const char *data,
                      size_t len)
{
    char path[600];
    ssize_t w;
    int fd;

    scratch_path(path, sizeof path, name);
    unlink(path);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    if (fchmod(fd, mode) != 0) {
        close(fd);
        return -1;
    }
    w = len ? write(fd, data, len) : 0;
    close(fd);
    return w == (ssize_t)len ? 0 : -1;
}

static const char *scratch_files[] = {"pin_ok",    "pin_crlf", "pin_644",
                                      "pin_empty", "pin_link", NULL};

static void remove_scratch(void)
{
    char path[600];

    if (!scratch[0])
        return;
    for (size_t i = 0; scratch_files[i]; i++) {
        scratch_path(path, sizeof path, scratch_files[i]);
        unlink(path);
    }
    rmdir(scratch);
}

/* Runs fn in a forked child and returns its exit status (0 = all good),
 * or -1 when the child could not run or died from a signal.  The child
 * leaves with _exit so that it runs no CUnit or atexit code of ours. */
static int run_in_child(int (*fn)(void))
{
    int status;
    pid_t pid;

    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0)
        _exit(fn());
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    if (!WIFEXITED(status)) {
        fprintf(stderr, "child ended abnormally (status 0x%x)\n", status);
        return -1;
    }
    return WEXITSTATUS(status);
}

/* 1 when the calling process may lock memory beyond RLIMIT_MEMLOCK
 * (CAP_IPC_LOCK, bit 14, in the effective set). */
static int can_bypass_memlock(void)
{
    unsigned long long eff = 0;
    char line[256];
    int found = 0;
    FILE *f = fopen("/proc/self/status", "re");

    if (!f)
        return geteuid() == 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "CapEff: %llx", &eff) == 1) {
            found = 1;
            break;
        }
    fclose(f);
    if (!found)
        return geteuid() == 0;
    return (eff >> 14) & 1;
}

/* ---- secret buffers ----------------------------------------------------- */

static void test_secbuf_basic(void)
{
    veil_secbuf *b = NULL;
    uint8_t *d;

    CU_ASSERT_EQUAL(veil_secbuf_new(32, &b), VEIL_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    d = veil_secbuf_data(b);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    CU_ASSERT_EQUAL(veil_secbuf_len(b), 32);
    memset(d, 0xAA, 32);
    CU_ASSERT_EQUAL(d[0], 0xAA);
    CU_ASSERT_EQUAL(d[31], 0xAA);
    veil_secbuf_free(b);

    /* accessors on NULL are harmless */
    CU_ASSERT_PTR_NULL(veil_secbuf_data(NULL));
    CU_ASSERT_EQUAL(veil_secbuf_len(NULL), 0);
    CU_ASSERT_EQUAL(veil_secbuf_locked(NULL), 0);
    veil_secbuf_truncate(NULL, 0);
    veil_secbuf_free(NULL);

    /* no output pointer */
    CU_ASSERT_EQUAL(veil_secbuf_new(8, NULL), VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_last_error()->code, VEIL_E_ARG);
}

static void test_secbuf_zero_len(void)
{
    veil_secbuf *b = NULL;

    CU_ASSERT_EQUAL(veil_secbuf_new(0, &b), VEIL_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(veil_secbuf_len(b), 0);
    CU_ASSERT_PTR_NOT_NULL(veil_secbuf_data(b));
    veil_secbuf_truncate(b, 0);
    CU_ASSERT_EQUAL(veil_secbuf_len(b), 0);
    veil_secbuf_free(b);
}

static void test_secbuf_large(void)
{
    const size_t n = (size_t)10 << 20; /* 10 MiB */
    veil_secbuf *b = NULL;
    uint8_t *d;

    CU_ASSERT_EQUAL(veil_secbuf_new(n, &b), VEIL_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(veil_secbuf_len(b), n);
    d = veil_secbuf_data(b);
    /* fresh anonymous pages are zero */
    CU_ASSERT_EQUAL(d[0], 0);
    CU_ASSERT_EQUAL(d[n - 1], 0);
    memset(d, 0x5C, n);
    CU_ASSERT_EQUAL(d[n / 2], 0x5C);
    CU_ASSERT_EQUAL(d[n - 1], 0x5C);
    veil_secbuf_free(b);
}

static void test_secbuf_overflow(void)
{
    veil_secbuf *b = NULL;
    veil_rc rc;

    CU_ASSERT_EQUAL(veil_secbuf_new(SIZE_MAX, &b), VEIL_E_ARG);
    CU_ASSERT_PTR_NULL(b);
    /* Just below SIZE_MAX the header fits but the page rounding does not:
     * must fail too (which code is not the point), never succeed. */
    rc = veil_secbuf_new(SIZE_MAX - 64, &b);
    CU_ASSERT_NOT_EQUAL(rc, VEIL_OK);
    CU_ASSERT_PTR_NULL(b);
    if (rc == VEIL_OK)
        veil_secbuf_free(b);
}

static void test_secbuf_truncate(void)
{
    veil_secbuf *b = NULL;
    uint8_t *d;
    int tail_zero = 1, head_kept = 1;

    CU_ASSERT_EQUAL(veil_secbuf_new(64, &b), VEIL_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    d = veil_secbuf_data(b);
    memset(d, 0xAA, 64);

    veil_secbuf_truncate(b, 10);
    CU_ASSERT_EQUAL(veil_secbuf_len(b), 10);
    /* The bytes past the new length are still mapped: read them before
     * the buffer is freed. */
    for (size_t i = 0; i < 10; i++)
        head_kept &= d[i] == 0xAA;
    for (size_t i = 10; i < 64; i++)
        tail_zero &= d[i] == 0;
    CU_ASSERT_TRUE(head_kept);
    CU_ASSERT_TRUE(tail_zero);

    /* never grows */
    veil_secbuf_truncate(b, 64);
    CU_ASSERT_EQUAL(veil_secbuf_len(b), 10);
    veil_secbuf_truncate(b, 10);
    CU_ASSERT_EQUAL(veil_secbuf_len(b), 10);
    CU_ASSERT_EQUAL(d[9], 0xAA);

    veil_secbuf_truncate(b, 0);
    CU_ASSERT_EQUAL(veil_secbuf_len(b), 0);
    CU_ASSERT_EQUAL(d[0], 0);
    veil_secbuf_free(b);
}

static void test_secbuf_locking(void)
{
    veil_memory_status st;
    veil_secbuf *b = NULL;
    struct rlimit rl;
    int enough;

    CU_ASSERT_EQUAL_FATAL(getrlimit(RLIMIT_MEMLOCK, &rl), 0);
    enough = can_bypass_memlock() || rl.rlim_cur == RLIM_INFINITY ||
             rl.rlim_cur >= 256 * 1024;

    CU_ASSERT_EQUAL(veil_secbuf_new(64, &b), VEIL_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    if (enough) {
        CU_ASSERT_EQUAL(veil_secbuf_locked(b), 1);
    } else {
        printf("\n  note: RLIMIT_MEMLOCK is %llu bytes; not asserting that "
               "a buffer is locked\n",
               (unsigned long long)rl.rlim_cur);
    }

    veil_memory_status_get(&st);
    CU_ASSERT_EQUAL(st.locking, veil_secbuf_locked(b));
    CU_ASSERT_EQUAL(st.zeroing, 1);
#ifdef __linux__
    CU_ASSERT_EQUAL(st.dontdump, 1);
#endif
    veil_secbuf_free(b);

    veil_memory_status_get(NULL); /* harmless */
}

/* Child: RLIMIT_MEMLOCK 0.  Returns 0 when all is well (or the check
 * cannot apply here), else a code, after saying what went wrong. */
static int child_no_memlock(void)
{
    struct rlimit zero = {0, 0};
    veil_memory_status before, after;
    veil_secbuf *small = NULL, *big = NULL;
    int small_locked, big_locked;

    if (setrlimit(RLIMIT_MEMLOCK, &zero) != 0)
        return 2;
    /* A root process can lock memory whatever the limit (CAP_IPC_LOCK).
     * Become an unprivileged user if possible, which clears the
     * capabilities; otherwise only check that nothing breaks. */
    if (can_bypass_memlock() && geteuid() == 0)
        (void)!setresuid(65534, 65534, 65534);
    veil_memory_status_get(&before);
    if (veil_secbuf_new(64, &small) != VEIL_OK ||
        veil_secbuf_new(4096, &big) != VEIL_OK)
        return 3;
    /* usable even when not locked */
    memset(veil_secbuf_data(small), 0x11, 64);
    memset(veil_secbuf_data(big), 0x11, 4096);
    if (veil_secbuf_data(big)[4095] != 0x11)
        return 7;
    small_locked = veil_secbuf_locked(small);
    big_locked = veil_secbuf_locked(big);
    veil_memory_status_get(&after);
    veil_secbuf_free(small);
    veil_secbuf_free(big);
    if (VEIL_TEST_ASAN) {
        printf("\n  note: built with AddressSanitizer, whose mlock() always "
               "succeeds; not asserting that locking fails\n");
        fflush(stdout);
        return 0;
    }
    if (can_bypass_memlock()) {
        printf("\n  note: this process can lock memory beyond "
               "RLIMIT_MEMLOCK (root/CAP_IPC_LOCK) and could not drop that; "
               "not asserting that locking fails\n");
        fflush(stdout);
        return 0;
    }
    if (big_locked) {
        fprintf(stderr, "\n  RLIMIT_MEMLOCK 0: a new 2-page buffer says "
                        "it is locked\n");
        return 4;
    }
    if (small_locked) {
        fprintf(stderr, "\n  RLIMIT_MEMLOCK 0: a new 1-page buffer says "
                        "it is locked (a pooled buffer from before fork?)\n");
        return 8;
    }
    if (after.locking != 0) {
        fprintf(stderr, "\n  RLIMIT_MEMLOCK 0: veil_memory_status_get() "
                        "still reports locking=1\n");
        return 5;
    }
    if (after.lock_failures <= before.lock_failures) {
        fprintf(stderr,
                "\n  RLIMIT_MEMLOCK 0: lock_failures did not grow "
                "(%lu -> %lu)\n",
                before.lock_failures, after.lock_failures);
        return 6;
    }
    return 0;
}

static void test_secbuf_lock_fails(void)
{
    int rc = run_in_child(child_no_memlock);

    if (rc != 0)
        fprintf(stderr, "\n  child_no_memlock exit %d (see codes in source)\n",
                rc);
    CU_ASSERT_EQUAL(rc, 0);
}

/* The kernel's view of the mapping that holds p, from the VmFlags line of
 * /proc/self/smaps: *locked ("lo") and *dontdump ("dd").  Returns 0, or -1
 * when it cannot be told (no /proc, old kernel). */
static int kernel_flags(const void *p, int *locked, int *dontdump)
{
    FILE *f = fopen("/proc/self/smaps", "re");
    uintptr_t a = (uintptr_t)p;
    char line[1024];
    int in = 0, rc = -1;

    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;

        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
            in = lo <= a && a < hi;
            continue;
        }
        if (in && strncmp(line, "VmFlags:", 8) == 0) {
            *locked = strstr(line, " lo") != NULL;
            *dontdump = strstr(line, " dd") != NULL;
            rc = 0;
            break;
        }
    }
    fclose(f);
    return rc;
}

/* 0 when what veil says about b matches the kernel (or cannot be told),
 * else 1 after saying what differs. */
static int check_truth(veil_secbuf *b, const char *what)
{
    int locked, dontdump;

    if (kernel_flags(b, &locked, &dontdump) != 0)
        return 0;
    if (veil_secbuf_locked(b) != locked) {
        fprintf(stderr,
                "\n  %s: veil_secbuf_locked() says %d, the kernel "
                "says %d\n",
                what, veil_secbuf_locked(b), locked);
        return 1;
    }
    if (!dontdump) {
        fprintf(stderr, "\n  %s: not MADV_DONTDUMP\n", what);
        return 1;
    }
    return 0;
}

static void test_secbuf_truth(void)
{
    veil_secbuf *a = NULL, *b = NULL, *c = NULL;
    int locked, dontdump;

    if (VEIL_TEST_ASAN) {
        printf("\n  note: AddressSanitizer fakes mlock(); skipped\n");
        return;
    }
    CU_ASSERT_EQUAL_FATAL(veil_secbuf_new(64, &a), VEIL_OK);
    if (kernel_flags(a, &locked, &dontdump) != 0) {
        printf("\n  note: /proc/self/smaps has no VmFlags; skipped\n");
        veil_secbuf_free(a);
        return;
    }
    CU_ASSERT_EQUAL_FATAL(veil_secbuf_new(3 * 4096, &b), VEIL_OK);
    CU_ASSERT_EQUAL(check_truth(a, "1-page buffer"), 0);
    CU_ASSERT_EQUAL(check_truth(b, "4-page buffer"), 0);
    veil_secbuf_free(a);
    /* possibly the same one-page buffer again */
    CU_ASSERT_EQUAL_FATAL(veil_secbuf_new(100, &c), VEIL_OK);
    CU_ASSERT_EQUAL(check_truth(c, "reused 1-page buffer"), 0);
    veil_secbuf_free(b);
    veil_secbuf_free(c);
}

/* Child: memory locks are not inherited across fork(); buffers the child
 * gets must not claim to be locked when they are not. */
static int child_truth_after_fork(void)
{
    veil_secbuf *a = NULL, *b = NULL;
    int bad;

    if (veil_secbuf_new(64, &a) != VEIL_OK ||
        veil_secbuf_new(64, &b) != VEIL_OK)
        return 3;
    bad = check_truth(a, "after fork, 1-page buffer") |
          check_truth(b, "after fork, 1-page buffer");
    veil_secbuf_free(a);
    veil_secbuf_free(b);
    return bad ? 4 : 0;
}

static void test_secbuf_truth_after_fork(void)
{
    veil_secbuf *warm[4] = {NULL};

    if (VEIL_TEST_ASAN) {
        printf("\n  note: AddressSanitizer fakes mlock(); skipped\n");
        return;
    }
    /* use and free some one-page buffers first, as a process does before
     * it forks (a daemon, a pre-forking server) */
    for (size_t i = 0; i < 4; i++)
        CU_ASSERT_EQUAL(veil_secbuf_new(32, &warm[i]), VEIL_OK);
    for (size_t i = 0; i < 4; i++)
        veil_secbuf_free(warm[i]);
    CU_ASSERT_EQUAL(run_in_child(child_truth_after_fork), 0);
}

/* A new buffer never shows what an earlier (freed) one held. */
static void test_secbuf_reuse_wiped(void)
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    veil_secbuf *bufs[8] = {NULL};
    int clean = 1;

    for (size_t i = 0; i < 8; i++) {
        CU_ASSERT_EQUAL_FATAL(veil_secbuf_new(200, &bufs[i]), VEIL_OK);
        memset(veil_secbuf_data(bufs[i]), 0xC3, 200);
    }
    for (size_t i = 0; i < 8; i++)
        veil_secbuf_free(bufs[i]);
    for (size_t i = 0; i < 8; i++) {
        uint8_t *d;
        /* a larger visible length than before, within the same page */
        CU_ASSERT_EQUAL_FATAL(veil_secbuf_new(page / 2, &bufs[i]), VEIL_OK);
        d = veil_secbuf_data(bufs[i]);
        for (size_t j = 0; j < page / 2; j++)
            clean &= d[j] == 0;
    }
    CU_ASSERT_TRUE(clean);
    for (size_t i = 0; i < 8; i++)
        veil_secbuf_free(bufs[i]);
}

/* Child: exit 0 when core dumps are off after veil_disable_core_dumps. */
static int child_core_dumps(void)
{
    veil_memory_status st;

    if (veil_disable_core_dumps() != VEIL_OK)
        return 2;
    veil_memory_status_get(&st);
    if (st.core_dumps_off != 1)
        return 3;
    if (st.zeroing != 1)
        return 4;
    return 0;
}

static void test_core_dumps(void)
{
    veil_memory_status st;
    struct rlimit rl;

    CU_ASSERT_EQUAL(run_in_child(child_core_dumps), 0);

    /* The parent did not disable anything. */
    CU_ASSERT_EQUAL_FATAL(getrlimit(RLIMIT_CORE, &rl), 0);
    veil_memory_status_get(&st);
    if (rl.rlim_cur != 0) {
        CU_ASSERT_EQUAL(st.core_dumps_off, 0);
    } else {
        printf("\n  note: RLIMIT_CORE is already 0 here; not asserting the "
               "parent's core_dumps_off\n");
    }
}

/* ---- PIN sources -------------------------------------------------------- */

static void test_pin_parse_ok(void)
{
    veil_pin_source s;

    CU_ASSERT_EQUAL(veil_pin_source_parse("file:/x", &s), VEIL_OK);
    CU_ASSERT_EQUAL(s.kind, VEIL_PIN_FILE);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s.where);
    CU_ASSERT_STRING_EQUAL(s.where, "/x");

    CU_ASSERT_EQUAL(veil_pin_source_parse("file:///x", &s), VEIL_OK);
    CU_ASSERT_EQUAL(s.kind, VEIL_PIN_FILE);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s.where);
    CU_ASSERT_STRING_EQUAL(s.where, "/x");

    CU_ASSERT_EQUAL(veil_pin_source_parse("env:NAME", &s), VEIL_OK);
    CU_ASSERT_EQUAL(s.kind, VEIL_PIN_ENV);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s.where);
    CU_ASSERT_STRING_EQUAL(s.where, "NAME");

    CU_ASSERT_EQUAL(veil_pin_source_parse("prompt", &s), VEIL_OK);
    CU_ASSERT_EQUAL(s.kind, VEIL_PIN_PROMPT);

    CU_ASSERT_EQUAL(veil_pin_source_parse("none", &s), VEIL_OK);
    CU_ASSERT_EQUAL(s.kind, VEIL_PIN_NONE);

    CU_ASSERT_EQUAL(veil_pin_source_parse("credential:token-pin", &s),
                    VEIL_OK);
    CU_ASSERT_EQUAL(s.kind, VEIL_PIN_CREDENTIAL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s.where);
    CU_ASSERT_STRING_EQUAL(s.where, "token-pin");
}

static void test_pin_parse_bad(void)
{
    static const char *const bad[] = {"1234",   "",        "pin:1234",
                                      "file:",  "env:",    "prompt:x",
                                      "PROMPT", " prompt", "credential:",
                                      NULL};
    veil_pin_source s;

    for (size_t i = 0; bad[i]; i++) {
        veil_rc rc = veil_pin_source_parse(bad[i], &s);
        CU_ASSERT_EQUAL(rc, VEIL_E_ARG);
        CU_ASSERT_EQUAL(veil_last_error()->code, VEIL_E_ARG);
        CU_ASSERT_PTR_NOT_NULL(
            strstr(veil_last_error()->message, "command line"));
        if (rc != VEIL_E_ARG)
            fprintf(stderr, "\n  PIN spec \"%s\" was accepted\n", bad[i]);
    }
    CU_ASSERT_EQUAL(veil_pin_source_parse(NULL, &s), VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_pin_source_parse("prompt", NULL), VEIL_E_ARG);
}

/* Reads a PIN from `spec`; returns the code and, on success, the PIN in
 * out (NUL-terminated, at most out_size - 1 bytes) and its length. */
static veil_rc read_pin(const veil_pin_source *src, char *out, size_t out_size,
                        size_t *len)
{
    veil_secbuf *pin = (veil_secbuf *)&scratch; /* must be reset */
    veil_rc rc = veil_pin_read(src, "PIN: ", &pin);

    *len = 0;
    out[0] = '\0';
    if (rc != VEIL_OK) {
        CU_ASSERT_PTR_NULL(pin);
        return rc;
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(pin);
    *len = veil_secbuf_len(pin);
    if (*len < out_size) {
        memcpy(out, veil_secbuf_data(pin), *len);
        out[*len] = '\0';
    }
    veil_secbuf_free(pin);
    return rc;
}

static void test_pin_file(void)
{
    veil_pin_source s = {VEIL_PIN_FILE, NULL};
    char path[600], got[64];
    size_t len;

    CU_ASSERT_EQUAL_FATAL(write_file("pin_ok", 0600, "123456\n", 7), 0);
    scratch_path(path, sizeof path, "pin_ok");
    s.where = path;
    CU_ASSERT_EQUAL(read_pin(&s, got, sizeof got, &len), VEIL_OK);
    CU_ASSERT_EQUAL(len, 6);
    CU_ASSERT_STRING_EQUAL(got, "123456");

    /* CRLF line end, further lines ignored */
    CU_ASSERT_EQUAL_FATAL(
        write_file("pin_crlf", 0600, "654321\r\nsecond\n", 15), 0);
    scratch_path(path, sizeof path, "pin_crlf");
    CU_ASSERT_EQUAL(read_pin(&s, got, sizeof got, &len), VEIL_OK);
    CU_ASSERT_EQUAL(len, 6);
    CU_ASSERT_STRING_EQUAL(got, "654321");

    /* world-readable: refused, and the message says how to fix it */
    CU_ASSERT_EQUAL_FATAL(write_file("pin_644", 0644, "123456\n", 7), 0);
    scratch_path(path, sizeof path, "pin_644");
    CU_ASSERT_EQUAL(read_pin(&s, got, sizeof got, &len), VEIL_E_IO);
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, "chmod"));

    /* missing */
    scratch_path(path, sizeof path, "no_such_pin");
    CU_ASSERT_EQUAL(read_pin(&s, got, sizeof got, &len), VEIL_E_IO);

    /* empty */
    CU_ASSERT_EQUAL_FATAL(write_file("pin_empty", 0600, "", 0), 0);
    scratch_path(path, sizeof path, "pin_empty");
    CU_ASSERT_EQUAL(read_pin(&s, got, sizeof got, &len), VEIL_E_PIN_REQUIRED);

    /* a symbolic link is not followed */
    {
        char target[600];
        scratch_path(target, sizeof target, "pin_ok");
        scratch_path(path, sizeof path, "pin_link");
        unlink(path);
        CU_ASSERT_EQUAL_FATAL(symlink(target, path), 0);
        CU_ASSERT_EQUAL(read_pin(&s, got, sizeof got, &len), VEIL_E_IO);
    }

    /* a directory is not a PIN file */
    s.where = scratch;
    CU_ASSERT_EQUAL(read_pin(&s, got, sizeof got, &len), VEIL_E_IO);
}

static void test_pin_env(void)
{
    static const char var[] = "VEIL_TEST_SECMEM_PIN";
    veil_pin_source s = {VEIL_PIN_ENV, var};
    char got[64];
    size_t len;

    CU_ASSERT_EQUAL_FATAL(setenv(var, "987654", 1), 0);
    CU_ASSERT_EQUAL(read_pin(&s, got, sizeof got, &len), VEIL_OK);
    CU_ASSERT_EQUAL(len, 6);
    CU_ASSERT_STRING_EQUAL(got, "987654");

    CU_ASSERT_EQUAL_FATAL(setenv(var, "", 1), 0);
    CU_ASSERT_EQUAL(read_pin(&s, got, sizeof got, &len), VEIL_E_PIN_REQUIRED);

    CU_ASSERT_EQUAL_FATAL(unsetenv(var), 0);
    CU_ASSERT_EQUAL(read_pin(&s, got, sizeof got, &len), VEIL_E_PIN_REQUIRED);
    /* the message names the variable, never a value */
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, var));
}

/* credential:NAME is NAME in $CREDENTIALS_DIRECTORY (systemd), with the
 * checks of a PIN file. */
static void test_pin_credential(void)
{
    veil_pin_source s = {VEIL_PIN_CREDENTIAL, "pin_ok"};
    char got[64];
    size_t len;

    CU_ASSERT_EQUAL_FATAL(write_file("pin_ok", 0400, "123456\n", 7), 0);
    CU_ASSERT_EQUAL_FATAL(setenv("CREDENTIALS_DIRECTORY", scratch, 1), 0);
    CU_ASSERT_EQUAL(read_pin(&s, got, sizeof got, &len), VEIL_OK);
    CU_ASSERT_STRING_EQUAL(got, "123456");

    s.where = "no_such_pin"; /* a credential systemd did not load */
    CU_ASSERT_EQUAL(read_pin(&s, got, sizeof got, &len), VEIL_E_IO);
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, "no_such_pin"));

    s.where = "pin_ok"; /* not under systemd: says what is missing */
    CU_ASSERT_EQUAL_FATAL(unsetenv("CREDENTIALS_DIRECTORY"), 0);
    CU_ASSERT_EQUAL(read_pin(&s, got, sizeof got, &len), VEIL_E_PIN_REQUIRED);
    CU_ASSERT_PTR_NOT_NULL(
        strstr(veil_last_error()->message, "CREDENTIALS_DIRECTORY"));
    s.where = ".."; /* never a path out of the directory */
    CU_ASSERT_EQUAL_FATAL(setenv("CREDENTIALS_DIRECTORY", scratch, 1), 0);
    CU_ASSERT_EQUAL(read_pin(&s, got, sizeof got, &len), VEIL_E_PIN_REQUIRED);
    CU_ASSERT_EQUAL_FATAL(unsetenv("CREDENTIALS_DIRECTORY"), 0);
}

static void test_pin_none(void)
{
    veil_pin_source s = {VEIL_PIN_NONE, NULL};
    veil_secbuf *pin = NULL;
    char got[64];
    size_t len;

    CU_ASSERT_EQUAL(read_pin(&s, got, sizeof got, &len), VEIL_E_PIN_REQUIRED);
    CU_ASSERT_EQUAL(veil_pin_read(NULL, NULL, &pin), VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_pin_read(&s, NULL, NULL), VEIL_E_ARG);
}

/* Child: in a new session there is no controlling terminal, so a prompt
 * cannot be shown.  Exit 0 when that gives VEIL_E_PIN_REQUIRED. */
static int child_prompt_no_tty(void)
{
    veil_pin_source s = {VEIL_PIN_PROMPT, NULL};
    veil_secbuf *pin = NULL;
    veil_rc rc;

    if (setsid() < 0)
        return 2;
    rc = veil_pin_read(&s, "PIN: ", &pin);
    if (rc == VEIL_OK) {
        veil_secbuf_free(pin);
        return 3;
    }
    if (pin)
        return 4;
    return rc == VEIL_E_PIN_REQUIRED ? 0 : 10 + (int)rc;
}

static void test_pin_prompt_no_tty(void)
{
    CU_ASSERT_EQUAL(run_in_child(child_prompt_no_tty), 0);
}

/* ---- error names -------------------------------------------------------- */

static void test_rc_names(void)
{
    const char *names[19];

    for (int i = 0; i <= 18; i++) {
        const char *n = veil_rc_name((veil_rc)i);
        names[i] = n;
        CU_ASSERT_PTR_NOT_NULL_FATAL(n);
        CU_ASSERT_EQUAL(strncmp(n, "VEIL_", 5), 0);
        CU_ASSERT_STRING_NOT_EQUAL(n, "VEIL_E_UNKNOWN");
        for (int j = 0; j < i; j++)
            CU_ASSERT_STRING_NOT_EQUAL(n, names[j]);
    }
    CU_ASSERT_STRING_EQUAL(veil_rc_name(VEIL_OK), "VEIL_OK");
    CU_ASSERT_STRING_EQUAL(veil_rc_name(VEIL_E_PIN), "VEIL_E_PIN");
    CU_ASSERT_STRING_EQUAL(veil_rc_name(VEIL_E_DECRYPT), "VEIL_E_DECRYPT");
    CU_ASSERT_STRING_EQUAL(veil_rc_name(VEIL_E_PROVIDER), "VEIL_E_PROVIDER");
    CU_ASSERT_STRING_EQUAL(veil_rc_name((veil_rc)19), "VEIL_E_UNKNOWN");
    CU_ASSERT_STRING_EQUAL(veil_rc_name((veil_rc)1000), "VEIL_E_UNKNOWN");
    CU_ASSERT_STRING_EQUAL(veil_rc_name((veil_rc)-1), "VEIL_E_UNKNOWN");
}

static void test_last_error(void)
{
    veil_pin_source s;

    CU_ASSERT_PTR_NOT_NULL_FATAL(veil_last_error());
    CU_ASSERT_EQUAL(veil_pin_source_parse("bogus", &s), VEIL_E_ARG);
    CU_ASSERT_EQUAL(veil_last_error()->code, VEIL_E_ARG);
    CU_ASSERT_STRING_EQUAL(veil_last_error()->provider, "engine");
    CU_ASSERT_STRING_EQUAL(veil_last_error()->provider_code, "");
    /* "engine: ..." — the message names its layer */
    CU_ASSERT_EQUAL(strncmp(veil_last_error()->message, "engine: ", 8), 0);
}

/* ---- main --------------------------------------------------------------- */

static int suite_init(void)
{
    return make_scratch();
}

static int suite_cleanup(void)
{
    remove_scratch();
    return 0;
}

int main(void)
{
    static const tu_test tests[] = {
        {"secbuf basic", test_secbuf_basic},
        {"secbuf length 0", test_secbuf_zero_len},
        {"secbuf 10 MiB", test_secbuf_large},
        {"secbuf size overflow", test_secbuf_overflow},
        {"secbuf truncate zeroes the tail", test_secbuf_truncate},
        {"secbuf locking and memory status", test_secbuf_locking},
        {"secbuf locked/dontdump agree with the kernel", test_secbuf_truth},
        {"secbuf state is true after fork (child)",
         test_secbuf_truth_after_fork},
        {"a reused secbuf is wiped", test_secbuf_reuse_wiped},
        {"secbuf with RLIMIT_MEMLOCK 0 (child)", test_secbuf_lock_fails},
        {"core dumps off (child)", test_core_dumps},
        {"PIN source parse: accepted", test_pin_parse_ok},
        {"PIN source parse: refused", test_pin_parse_bad},
        {"PIN from file", test_pin_file},
        {"PIN from a systemd credential", test_pin_credential},
        {"PIN from environment", test_pin_env},
        {"PIN source none", test_pin_none},
        {"PIN prompt without a terminal (child)", test_pin_prompt_no_tty},
        {"veil_rc_name", test_rc_names},
        {"veil_last_error", test_last_error},
    };

    TU_ADD_SUITE("secmem", suite_init, suite_cleanup, tests);
    return tu_run_tests();
}
