/* API keys: the gateway stores only SHA-256 hashes of the keys it accepts.
 *
 * The file (setting api_keys) has one key a line:
 *
 *   # comments and blank lines are ignored
 *   sha256:<64 hex digits> [name]
 *
 * An operator makes a line from a key with
 *
 *   printf %s "$KEY" | sha256sum      ->  "<hex>  -"
 *
 * and writes "sha256:<hex> alice" (the name is optional and only shown in
 * logs).  The hash is of the key exactly as clients send it after
 * "Authorization: Bearer ", without a newline.
 *
 * The file must be a regular file, owned by root or by the user veild runs
 * as, and writable by nobody else (mode 600 or 640): whoever can write it
 * can let anyone in.  A malformed line or a file without keys is refused.
 *
 * The setting operator_keys names keys of the file (by the name on their
 * line) that may read every answer signature (GET /v1/signatures/ID);
 * other keys read only those of their own requests.
 *
 * gw_auth_check hashes the presented key and compares the hash with every
 * entry using CRYPTO_memcmp, without stopping at a match, so the time taken
 * does not depend on which entry (if any) matched.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "gateway.h"
#include "package.h"

#define AUTH_FILE_MAX (16u * 1024u * 1024u)
#define NAME_MAX_LEN 128

typedef struct auth_entry {
    uint8_t hash[32];
    char *name;      /* NULL when the line has none */
    int is_operator; /* named in operator_keys */
} auth_entry;

struct gw_auth {
    auth_entry *e;
    size_t n;
};

static int is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

/* Reads the whole file (regular, not writable by group or others, owned
 * by root or us) into a NUL-terminated buffer. */
static char *read_keys_file(const char *path, size_t *len, char *err,
                            size_t err_size)
{
    struct stat st;
    char *buf;
    size_t got = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);

    if (fd < 0) {
        gw_put_err(err, err_size, "%s: %s", path, strerror(errno));
        return NULL;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        gw_put_err(err, err_size, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        gw_put_err(err, err_size,
                   "%s: writable by group or others (chmod 600 or 640)", path);
        close(fd);
        return NULL;
    }
    if (st.st_uid != 0 && st.st_uid != geteuid()) {
        gw_put_err(err, err_size,
                   "%s: owned by uid %lu, neither root nor veild's user", path,
                   (unsigned long)st.st_uid);
        close(fd);
        return NULL;
    }
    if (st.st_size > (off_t)AUTH_FILE_MAX) {
        gw_put_err(err, err_size, "%s: larger than %u bytes", path,
                   AUTH_FILE_MAX);
        close(fd);
        return NULL;
    }
    buf = malloc((size_t)st.st_size + 2);
    if (!buf) {
        gw_put_err(err, err_size, "%s: out of memory", path);
        close(fd);
        return NULL;
    }
    /* read until EOF, but never past st_size + 1 (a file that grows) */
    while (got < (size_t)st.st_size + 1) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size + 1 - got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            gw_put_err(err, err_size, "%s: %s", path, strerror(errno));
            free(buf);
            close(fd);
            return NULL;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    if (got > (size_t)st.st_size) {
        gw_put_err(err, err_size, "%s: changed while being read", path);
        free(buf);
        return NULL;
    }
    buf[got] = '\0';
    *len = got;
    return buf;
}

/* Parses one line (no newline); 1: an entry, 0: blank or comment, -1: bad */
static int parse_line(const char *s, size_t len, auth_entry *out)
{
    size_t i = 0, end;

    while (i < len && is_blank(s[i]))
        i++;
    if (i == len || s[i] == '#')
        return 0;
    if (len - i < 7 + 64 || strncmp(s + i, "sha256:", 7) != 0)
        return -1;
    i += 7;
    if (!veil_hex_decode(s + i, 32, out->hash))
        return -1;
    i += 64;
    end = len;
    while (end > i && is_blank(s[end - 1]))
        end--;
    out->name = NULL;
    if (i == end)
        return 1;
    if (!is_blank(s[i]))
        return -1; /* more hex digits, or text glued to the hash */
    while (i < end && is_blank(s[i]))
        i++;
    if (end - i > NAME_MAX_LEN)
        return -1;
    for (size_t k = i; k < end; k++)
        if ((unsigned char)s[k] < 0x20 || (unsigned char)s[k] >= 0x7f)
            return -1;
    out->name = strndup(s + i, end - i);
    return out->name ? 1 : -2;
}

gw_auth *gw_auth_load(const char *path, char *err, size_t err_size)
{
    gw_auth *a;
    char *buf;
    size_t len, pos = 0, lines = 0, cap = 0;
    unsigned line = 0;

    if (!path) {
        gw_put_err(err, err_size, "no API key file named");
        return NULL;
    }
    buf = read_keys_file(path, &len, err, err_size);
    if (!buf)
        return NULL;
    for (size_t i = 0; i < len; i++)
        if (buf[i] == '\n')
            lines++;
    a = calloc(1, sizeof *a);
    cap = lines + 1;
    if (a)
        a->e = calloc(cap, sizeof *a->e);
    if (!a || !a->e) {
        gw_put_err(err, err_size, "%s: out of memory", path);
        goto fail;
    }
    while (pos < len) {
        const char *s = buf + pos, *nl = memchr(s, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        int r;

        line++;
        pos += n + (nl ? 1 : 0);
        if (memchr(s, '\0', n)) {
            gw_put_err(err, err_size, "%s:%u: contains a NUL byte", path, line);
            goto fail;
        }
        r = parse_line(s, n, &a->e[a->n]);
        if (r == -1) {
            gw_put_err(err, err_size,
                       "%s:%u: expected \"sha256:<64 hex digits> [name]\"",
                       path, line);
            goto fail;
        }
        if (r == -2) {
            gw_put_err(err, err_size, "%s: out of memory", path);
            goto fail;
        }
        if (r == 1)
            a->n++;
    }
    if (a->n == 0) {
        gw_put_err(err, err_size, "%s: no API keys in the file", path);
        goto fail;
    }
    veil_wipe(buf, len);
    free(buf);
    return a;
fail:
    veil_wipe(buf, len);
    free(buf);
    gw_auth_free(a);
    return NULL;
}

void gw_auth_free(gw_auth *a)
{
    if (!a)
        return;
    for (size_t i = 0; a->e && i < a->n; i++)
        free(a->e[i].name);
    free(a->e);
    free(a);
}

gw_rc gw_auth_check(const gw_auth *a, const char *key, uint8_t id[32])
{
    uint8_t h[32];
    unsigned int hlen = 0;
    unsigned match = 0;

    memset(id, 0, 32);
    if (!key ||
        EVP_Digest(key, strlen(key), h, &hlen, EVP_sha256(), NULL) != 1 ||
        hlen != 32)
        return GW_UNAUTHORIZED;
    memcpy(id, h, 32);
    if (!a)
        return GW_UNAUTHORIZED;
    /* every entry, no early exit */
    for (size_t i = 0; i < a->n; i++)
        match |= (unsigned)(CRYPTO_memcmp(h, a->e[i].hash, 32) == 0);
    return match != 0 ? GW_OK : GW_UNAUTHORIZED;
}

size_t gw_auth_count(const gw_auth *a)
{
    return a ? a->n : 0;
}

const char *gw_auth_name(const gw_auth *a, const uint8_t id[32])
{
    for (size_t i = 0; a && i < a->n; i++)
        if (memcmp(a->e[i].hash, id, 32) == 0)
            return a->e[i].name;
    return NULL;
}

int gw_auth_set_operators(gw_auth *a, const char *names, char *err,
                          size_t err_size)
{
    const char *p = names;

    while (a && p && *p) {
        size_t len = strcspn(p, ","), hits = 0;

        while (len > 0 && is_blank(*p)) {
            p++;
            len--;
        }
        for (size_t l = len; l > 0 && is_blank(p[l - 1]); l--)
            len = l - 1;
        for (size_t i = 0; len > 0 && i < a->n; i++)
            if (a->e[i].name && strlen(a->e[i].name) == len &&
                memcmp(a->e[i].name, p, len) == 0) {
                a->e[i].is_operator = 1;
                hits++;
            }
        if (hits == 0) {
            gw_put_err(err, err_size,
                       "operator_keys: '%.*s' names no key of the api_keys "
                       "file",
                       (int)(len < NAME_MAX_LEN ? len : NAME_MAX_LEN), p);
            return -1;
        }
        p += strcspn(p, ",");
        if (*p == ',')
            p++;
    }
    if (a == NULL) {
        gw_put_err(err, err_size, "operator_keys needs api_keys");
        return -1;
    }
    return 0;
}

int gw_auth_is_operator(const gw_auth *a, const uint8_t id[32])
{
    for (size_t i = 0; a && i < a->n; i++)
        if (a->e[i].is_operator && memcmp(a->e[i].hash, id, 32) == 0)
            return 1;
    return 0;
}
