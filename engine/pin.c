/* PIN sources: a file, a systemd credential, an environment variable or a
 * terminal prompt.
 * Never argv.  The PIN is read straight into a secret buffer. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "engine_int.h"

#define PIN_MAX 256

veil_rc veil_pin_source_parse(const char *spec, veil_pin_source *out)
{
    if (!spec || !out)
        return veil_err(VEIL_E_ARG, "engine", NULL, "PIN source: missing");
    memset(out, 0, sizeof *out);
    if (strncmp(spec, "file:", 5) == 0 && spec[5]) {
        out->kind = VEIL_PIN_FILE;
        out->where = spec + 5;
        /* RFC 8089 form file:///path (a host part is not supported) */
        if (strncmp(out->where, "///", 3) == 0)
            out->where += 2;
        else if (strncmp(out->where, "//", 2) == 0)
            return veil_err(VEIL_E_ARG, "engine", NULL,
                            "PIN source file://HOST/... is not supported; "
                            "use file:/path");
    } else if (strncmp(spec, "env:", 4) == 0 && spec[4]) {
        out->kind = VEIL_PIN_ENV;
        out->where = spec + 4;
    } else if (strncmp(spec, VEIL_CREDENTIAL_PREFIX,
                       sizeof VEIL_CREDENTIAL_PREFIX - 1) == 0 &&
               spec[sizeof VEIL_CREDENTIAL_PREFIX - 1]) {
        out->kind = VEIL_PIN_CREDENTIAL;
        out->where = spec + sizeof VEIL_CREDENTIAL_PREFIX - 1;
        if (strchr(out->where, '/'))
            return veil_err(VEIL_E_ARG, "engine", NULL,
                            "PIN source credential:NAME needs the name of "
                            "one credential (no '/')");
    } else if (strcmp(spec, "prompt") == 0) {
        out->kind = VEIL_PIN_PROMPT;
    } else if (strcmp(spec, "none") == 0) {
        out->kind = VEIL_PIN_NONE;
    } else {
        return veil_err(VEIL_E_ARG, "engine", NULL,
                        "PIN source must be file:PATH, credential:NAME, "
                        "env:NAME, prompt or none (a PIN is never taken "
                        "from the command line)");
    }
    return VEIL_OK;
}

/* Copies src[0..n) up to the first newline into a new secret buffer. */
static veil_rc pin_from_bytes(const char *src, size_t n, veil_secbuf **pin)
{
    size_t len = 0;
    veil_rc rc;

    while (len < n && src[len] != '\n' && src[len] != '\r')
        len++;
    if (len == 0)
        return veil_err(VEIL_E_PIN_REQUIRED, "engine", NULL,
                        "the PIN is empty");
    rc = veil_secbuf_new(len, pin);
    if (rc != VEIL_OK)
        return rc;
    memcpy(veil_secbuf_data(*pin), src, len);
    return VEIL_OK;
}

static veil_rc pin_from_file(const char *path, veil_secbuf **pin)
{
    veil_secbuf *raw = NULL;
    struct stat st;
    ssize_t n;
    int fd;
    veil_rc rc;

    /* O_NONBLOCK: opening a FIFO (or a device) must not wait for a
     * writer; it is refused just below. */
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return veil_err(VEIL_E_IO, "engine", NULL, "PIN file %s: %s", path,
                        strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return veil_err(VEIL_E_IO, "engine", NULL,
                        "PIN file %s: not a regular file", path);
    }
    if (st.st_mode & S_IROTH) {
        close(fd);
        return veil_err(VEIL_E_IO, "engine", NULL,
                        "PIN file %s is readable by everyone; chmod 600 it",
                        path);
    }
    rc = veil_secbuf_new(PIN_MAX, &raw);
    if (rc != VEIL_OK) {
        close(fd);
        return rc;
    }
    n = read(fd, veil_secbuf_data(raw), PIN_MAX);
    close(fd);
    if (n < 0)
        rc = veil_err(VEIL_E_IO, "engine", NULL, "PIN file %s: %s", path,
                      strerror(errno));
    else
        rc =
            pin_from_bytes((const char *)veil_secbuf_data(raw), (size_t)n, pin);
    veil_secbuf_free(raw);
    return rc;
}

/* systemd's credential NAME: a file in $CREDENTIALS_DIRECTORY. */
static veil_rc pin_from_credential(const char *name, veil_secbuf **pin)
{
    char spec[256], path[4096];
    const char *why = NULL;

    snprintf(spec, sizeof spec, "%s%s", VEIL_CREDENTIAL_PREFIX, name);
    if (veil_secret_path(spec, path, sizeof path, &why) != 0)
        return veil_err(VEIL_E_PIN_REQUIRED, "engine", NULL,
                        "PIN credential %s: %s", name, why);
    return pin_from_file(path, pin);
}

static veil_rc pin_from_prompt(const char *prompt, veil_secbuf **pin)
{
    struct termios old, quiet;
    veil_secbuf *raw = NULL;
    size_t len = 0;
    int fd, c = 0;
    veil_rc rc;
    FILE *tty;

    fd = open("/dev/tty", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return veil_err(VEIL_E_PIN_REQUIRED, "engine", NULL,
                        "PIN prompt: no terminal (use file: or env:)");
    tty = fdopen(fd, "r+");
    if (!tty) {
        close(fd);
        return veil_err(VEIL_E_IO, "engine", NULL, "PIN prompt: %s",
                        strerror(errno));
    }
    rc = veil_secbuf_new(PIN_MAX, &raw);
    if (rc != VEIL_OK) {
        fclose(tty);
        return rc;
    }
    fprintf(tty, "%s", prompt ? prompt : "PIN: ");
    fflush(tty);
    tcgetattr(fd, &old);
    quiet = old;
    quiet.c_lflag &= ~(tcflag_t)ECHO;
    tcsetattr(fd, TCSAFLUSH, &quiet);
    setvbuf(tty, NULL, _IONBF, 0); /* no stdio copy of the PIN */
    while (len < PIN_MAX && (c = fgetc(tty)) != EOF && c != '\n')
        veil_secbuf_data(raw)[len++] = (uint8_t)c;
    tcsetattr(fd, TCSAFLUSH, &old);
    fprintf(tty, "\n");
    fclose(tty);
    rc = pin_from_bytes((const char *)veil_secbuf_data(raw), len, pin);
    veil_secbuf_free(raw);
    return rc;
}

veil_rc veil_pin_read(const veil_pin_source *src, const char *prompt,
                      veil_secbuf **pin)
{
    const char *v;

    if (!src || !pin)
        return veil_err(VEIL_E_ARG, "engine", NULL, "PIN: missing argument");
    *pin = NULL;
    switch (src->kind) {
    case VEIL_PIN_FILE:
        return pin_from_file(src->where, pin);
    case VEIL_PIN_ENV:
        v = getenv(src->where);
        if (!v)
            return veil_err(VEIL_E_PIN_REQUIRED, "engine", NULL,
                            "PIN variable %s is not set", src->where);
        return pin_from_bytes(v, strlen(v), pin);
    case VEIL_PIN_CREDENTIAL:
        return pin_from_credential(src->where, pin);
    case VEIL_PIN_PROMPT:
        return pin_from_prompt(prompt, pin);
    case VEIL_PIN_NONE:
    default:
        return veil_err(VEIL_E_PIN_REQUIRED, "engine", NULL,
                        "a PIN is needed and no PIN source was given");
    }
}
