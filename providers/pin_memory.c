/* PINs a token rejected, remembered on disk (pin_memory.h). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "pin_memory.h"
#include "util.h"

#define KEY_FILE "pin-memory.key"
#define KEY_LEN 32
#define RECORD_PREFIX "pin-rejected-"

/* dir/pin-rejected-SERIAL; a serial that is not plain letters and digits
 * (or is empty) is written in hex.  0, or -1 when it does not fit. */
static int record_path(const char *dir, const char *serial, char *out,
                       size_t size)
{
    size_t n = strlen(serial);
    int plain = n > 0 && strspn(serial, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                        "abcdefghijklmnopqrstuvwxyz"
                                        "0123456789") == n;
    char hex[2 * 64 + 1];

    if (!plain) {
        if (n > 64)
            return -1;
        veil_hex((const uint8_t *)serial, n, hex);
        hex[2 * n] = '\0';
    }
    int w = snprintf(out, size, "%s/" RECORD_PREFIX "%s%s", dir,
                     plain ? "" : "x", plain ? serial : hex);
    return w > 0 && (size_t)w < size ? 0 : -1;
}

/* Reads exactly len bytes of a regular file, not following links. */
static int read_exact(const char *path, uint8_t *buf, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    ssize_t n;

    if (fd < 0)
        return -1;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return -1;
    }
    n = read(fd, buf, len);
    close(fd);
    return n == (ssize_t)len ? 0 : -1;
}

/* Writes a new file 0600 (O_EXCL: never through a link or over one). */
static int write_new(const char *path, const void *buf, size_t len)
{
    int fd =
        open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    int ok;

    if (fd < 0)
        return -1;
    ok = write(fd, buf, len) == (ssize_t)len;
    ok &= fsync(fd) == 0;
    ok &= close(fd) == 0;
    if (!ok)
        unlink(path);
    return ok ? 0 : -1;
}

/* The host's key: read, or made (32 random bytes) when create is set. */
static int host_key(const char *dir, int create, uint8_t key[KEY_LEN])
{
    char path[4200];

    snprintf(path, sizeof path, "%s/" KEY_FILE, dir);
    if (read_exact(path, key, KEY_LEN) == 0)
        return 0;
    if (!create || errno != ENOENT)
        return -1;
    if (RAND_priv_bytes(key, KEY_LEN) != 1)
        return -1;
    if (write_new(path, key, KEY_LEN) == 0)
        return 0;
    /* made by another process meanwhile: use that one */
    return errno == EEXIST ? read_exact(path, key, KEY_LEN) : -1;
}

/* HMAC-SHA256(key, serial || 0 || PIN) as 64 hex digits. */
static int pin_mac(const uint8_t key[KEY_LEN], const char *serial,
                   const veil_secbuf *pin, char hex[65])
{
    uint8_t mac[32];
    int ok = 0;
    EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *c = m ? EVP_MAC_CTX_new(m) : NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    size_t out_len = 0;

    if (c && EVP_MAC_init(c, key, KEY_LEN, params) == 1 &&
        EVP_MAC_update(c, (const uint8_t *)serial, strlen(serial) + 1) == 1 &&
        EVP_MAC_update(c, veil_secbuf_data((veil_secbuf *)pin),
                       veil_secbuf_len(pin)) == 1 &&
        EVP_MAC_final(c, mac, &out_len, sizeof mac) == 1 && out_len == 32) {
        veil_hex(mac, 32, hex);
        hex[64] = '\0';
        ok = 1;
    }
    EVP_MAC_CTX_free(c);
    EVP_MAC_free(m);
    veil_wipe(mac, sizeof mac);
    return ok ? 0 : -1;
}

int pinmem_rejected_before(const char *dir, const char *serial,
                           const veil_secbuf *pin, char *file, size_t size)
{
    uint8_t key[KEY_LEN];
    char want[65], got[65];
    int hit = 0;

    if (record_path(dir, serial, file, size) != 0 ||
        read_exact(file, (uint8_t *)got, 64) != 0)
        return 0;
    got[64] = '\0';
    if (host_key(dir, 0, key) == 0 && pin_mac(key, serial, pin, want) == 0)
        hit = CRYPTO_memcmp(want, got, 64) == 0;
    veil_wipe(key, sizeof key);
    veil_wipe(want, sizeof want);
    return hit;
}

int pinmem_remember(const char *dir, const char *serial, const veil_secbuf *pin,
                    char *why, size_t size)
{
    uint8_t key[KEY_LEN];
    char path[4200], tmp[4210], line[66];
    int rc = -1;

    if (record_path(dir, serial, path, sizeof path) != 0) {
        snprintf(why, size, "the token serial is too long for a file name");
        return -1;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (host_key(dir, 1, key) != 0) {
        snprintf(why, size, "%s/" KEY_FILE ": %s", dir, strerror(errno));
    } else if (pin_mac(key, serial, pin, line) != 0) {
        snprintf(why, size, "HMAC-SHA256 failed");
    } else {
        line[64] = '\n';
        unlink(tmp);
        if (write_new(tmp, line, 65) != 0 || rename(tmp, path) != 0) {
            snprintf(why, size, "%s: %s", path, strerror(errno));
            unlink(tmp);
        } else {
            rc = 0;
        }
    }
    veil_wipe(key, sizeof key);
    veil_wipe(line, sizeof line);
    return rc;
}

void pinmem_forget(const char *dir, const char *serial)
{
    char path[4200];

    if (record_path(dir, serial, path, sizeof path) == 0)
        unlink(path);
}
