/* veild configuration: one table of settings drives the config file, the
 * command-line flags and --help.
 *
 * File format (docs/veild.conf.example):
 *
 *   # a comment (whole lines only)
 *   NAME = VALUE            a setting of the table below
 *   model = ID=UPSTREAM[,tiers=standard+high][,key-file=FILE]
 *                      [,cache-salt=FIELD]
 *   [model ID]              a model section; its lines until the next
 *   upstream = URL|echo     section: upstream (required),
 *   upstream_key_file = F   upstream_key_file,
 *   tiers = standard,high   tiers (default: all three) and
 *   cache_salt_field = F    cache_salt_field
 *
 * Names are the flag names without "--"; '-' and '_' are the same.  The
 * value is the rest of the line, trimmed (no quoting).  A later line, and
 * then a flag, overrides an earlier setting; "model" adds a model each
 * time.  Global settings come before the first section.
 *
 * Error messages are one line and never repeat the value of a key
 * reference or a PIN source (server_key, signing_key, pin_source,
 * tpm_certify_key_auth): an operator may have put a PIN there by mistake.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "evidence.h"
#include "gateway.h"

#define LINE_MAX_LEN 4096
#define MODEL_ID_MAX 200
#define MSG_SIZE 256
/* veil_pcr_sel_format wants at least 96 bytes */
#define PCRS_TEXT_MAX 128

typedef enum kind {
    K_STR,    /* char *: any non-empty text (a path, a module) */
    K_ADDR,   /* char *: a numeric IPv4 or IPv6 address */
    K_KEYREF, /* char *: "pkcs11:..." or "dir:PATH" */
    K_PIN,    /* char *: file:PATH, env:NAME, prompt or none */
    K_LEVEL,  /* char *: error, warn, info or debug */
    K_PORT,   /* unsigned: 0..65535 */
    K_UINT,   /* unsigned: min..max */
    K_RATE,   /* double: > 0, at most 1e6 */
    K_SIZE,   /* size_t: bytes, min..max, suffixes K M G */
    K_BOOL,   /* int: on/off, true/false, yes/no, 1/0 */
    K_PCRS,   /* char *: a PCR selection, "sha256:0,7,10" (canonical form) */
    K_MODEL   /* appends to models[] */
} kind;

typedef struct setting {
    const char *name; /* file name; flag is "--" + name */
    const char *metavar;
    kind kind;
    size_t off; /* offset in gw_config */
    unsigned long min, max;
    const char *def; /* default, parsed like a value; NULL: unset */
    const char *help;
} setting;

#define OFF(field) offsetof(gw_config, field)
#define KIB 1024ul
#define MIB (1024ul * 1024ul)
#define GIB (1024ul * 1024ul * 1024ul)

/* clang-format off */
static const setting settings[] = {
    {"listen", "ADDR", K_ADDR, OFF(listen_addr), 0, 0, "127.0.0.1",
     "IP address to listen on (IPv4 or IPv6; 0.0.0.0 for all IPv4, :: for all IPv4 and IPv6)"},
    {"port", "PORT", K_PORT, OFF(port), 0, 65535, "8443",
     "TCP port; 0 takes any free port (see port_file)"},
    {"port_file", "FILE", K_STR, OFF(port_file), 0, 0, NULL,
     "write the bound port to FILE once listening"},
    {"tls_cert", "FILE", K_STR, OFF(tls_cert), 0, 0, NULL,
     "TLS certificate chain (PEM); with tls_key.  Neither: plain HTTP"},
    {"tls_key", "FILE", K_STR, OFF(tls_key), 0, 0, NULL,
     "TLS private key (PEM); with tls_cert"},
    {"server_key", "REF", K_KEYREF, OFF(server_key), 0, 0, NULL,
     "the server's RSA key: a pkcs11: URI, or dir:PATH (a software key, "
     "for trying out); required"},
    {"pkcs11_module", "MODULE", K_STR, OFF(pkcs11_module), 0, 0, NULL,
     "PKCS#11 module: a path to a .so or a p11-kit module name"},
    {"pin_source", "SOURCE", K_PIN, OFF(pin_source), 0, 0, NULL,
     "where the token PIN comes from: file:PATH, env:NAME, prompt or none "
     "(never the PIN itself)"},
    {"api_keys", "FILE", K_STR, OFF(api_keys), 0, 0, NULL,
     "API key hashes, lines \"sha256:<64 hex> [name]\"; unset: no API key "
     "needed"},
    {"rate", "N", K_RATE, OFF(rate), 0, 0, "1",
     "requests per second per API key (> 0; fractions allowed)"},
    {"burst", "N", K_UINT, OFF(burst), 1, 1000000, "2",
     "requests an API key may send at once before the rate applies"},
    {"body_limit", "SIZE", K_SIZE, OFF(body_limit), KIB, GIB, "16M",
     "largest request body in bytes (suffixes K, M, G; 1K to 1G)"},
    {"workers", "N", K_UINT, OFF(workers), 1, 256, "4",
     "requests processed at once (1 to 256); others wait, their bodies unread"},
    {"state_dir", "DIR", K_STR, OFF(state_dir), 0, 0, "/var/lib/veild",
     "what veild keeps across restarts (the replay register, the cache "
     "salt secret); made 0700 if missing, must be ours"},
    {"replay_window", "SECONDS", K_UINT, OFF(replay_window), 1, 604800,
     "86400", "how long a request is remembered against replay"},
    {"replay_capacity", "N", K_UINT, OFF(replay_capacity), 1024, 16777216,
     "4194304",
     "marks of the replay register, two per request (28 to 36 bytes each, "
     "in state_dir/replay.db and memory; full: 503)"},
    {"replay_sync", "SECONDS", K_UINT, OFF(replay_sync), 1, 60, "1",
     "how often the replay register is written to disk (a machine crash "
     "loses at most this much)"},
    {"upstream_timeout", "SECONDS", K_UINT, OFF(upstream_timeout), 1, 86400,
     "300", "longest wait for an upstream answer"},
    {"connect_timeout", "SECONDS", K_UINT, OFF(connect_timeout), 1, 3600, "10",
     "longest wait for an upstream connection"},
    {"log_level", "LEVEL", K_LEVEL, OFF(log_level), 0, 0, "info",
     "error, warn, info or debug"},
    {"signing_key", "REF", K_KEYREF, OFF(signing_key), 0, 0, NULL,
     "ECDSA P-256 key that signs every answer: a pkcs11: URI, or dir:PATH; "
     "unset: answers are not signed"},
    {"signature_retention", "SECONDS", K_UINT, OFF(signature_retention), 1,
     31536000, "86400",
     "how long GET /v1/signatures/ID finds an answer's signature"},
    {"signature_capacity", "N", K_UINT, OFF(signature_capacity), 1, 16777216,
     "65536",
     "signatures kept for GET /v1/signatures/ID (about 1 KiB each; the "
     "oldest go first)"},
    {"tpm", "off|on", K_BOOL, OFF(tpm), 0, 0, "off",
     "attest with the TPM: the maximum tier, /v1/attestation/*; on: start-up "
     "fails without a usable TPM"},
    {"tpm_tcti", "TCTI", K_STR, OFF(tpm_tcti), 0, 0, NULL,
     "how to reach the TPM (device:/dev/tpmrm0, tabrmd:, swtpm:port=2321); "
     "unset: the tss2 default"},
    {"tpm_pcrs", "SELECTION", K_PCRS, OFF(tpm_pcrs), 0, 0, "sha256:0,7,10",
     "the PCRs every quote covers (only the sha256 bank)"},
    {"tpm_ak_per_request", "off|on", K_BOOL, OFF(tpm_ak_per_request), 0, 0,
     "off",
     "a fresh attestation key for every maximum answer, certified by the "
     "long-term one (slower)"},
    {"tpm_certify_key", "FILE", K_STR, OFF(tpm_certify_key), 0, 0, NULL,
     "the server key as a TPM object (a TSS2 PRIVATE KEY PEM), so that quotes "
     "carry a TPM2_Certify of it; needs tpm = on"},
    {"tpm_certify_key_auth", "SOURCE", K_PIN, OFF(tpm_certify_key_auth), 0, 0,
     NULL,
     "where the auth value of tpm_certify_key comes from: file:PATH, "
     "env:NAME, prompt or none"},
    {"model", "ID=UPSTREAM[,tiers=A+B][,key-file=FILE][,cache-salt=FIELD]",
     K_MODEL, 0, 0, 0,
     NULL,
     "a model clients may name; UPSTREAM is echo or a base URL such as "
     "http://127.0.0.1:8080/v1; repeatable (or a [model ID] section)"},
};

/* The lines of a [model ID] section. */
static const struct {
    const char *name, *metavar, *help;
} section_keys[] = {
    {"upstream", "URL|echo",
     "base URL of an OpenAI-compatible server (.../v1), or echo; required"},
    {"upstream_key_file", "FILE",
     "file holding the upstream's API key (sent as a Bearer token)"},
    {"tiers", "standard,high,maximum",
     "security tiers this model serves (default: all three)"},
    {"cache_salt_field", "FIELD",
     "request field by which the backend keeps prompt caches apart (vLLM: "
     "cache_salt); veild sets it per API key.  Unset: one shared cache"},
};
/* clang-format on */

#define N_SETTINGS (sizeof settings / sizeof settings[0])

static const char *const levels[] = {"error", "warn", "info", "debug"};

static const struct {
    const char *name;
    int value;
} bools[] = {
    {"on", 1},  {"off", 0}, {"true", 1}, {"false", 0},
    {"yes", 1}, {"no", 0},  {"1", 1},    {"0", 0},
};

static const struct {
    const char *name;
    unsigned bit;
} tier_names[] = {
    {"standard", GW_TIER_STANDARD},
    {"high", GW_TIER_HIGH},
    {"maximum", GW_TIER_MAXIMUM},
};

/* ---- small helpers ------------------------------------------------------ */

void gw_put_err(char *err, size_t err_size, const char *fmt, ...)
{
    va_list ap;

    if (!err || err_size == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, err_size, fmt, ap);
    va_end(ap);
}

/* Names compare equal when they differ only in '-' versus '_'. */
static int name_eq(const char *a, const char *b)
{
    for (;; a++, b++) {
        char x = *a == '-' ? '_' : *a;
        char y = *b == '-' ? '_' : *b;

        if (x != y)
            return 0;
        if (!x)
            return 1;
    }
}

static const setting *find_setting(const char *name)
{
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (name_eq(settings[i].name, name))
            return &settings[i];
    return NULL;
}

static int is_section_key(const char *name)
{
    for (size_t i = 0; i < sizeof section_keys / sizeof section_keys[0]; i++)
        if (name_eq(section_keys[i].name, name))
            return 1;
    return 0;
}

/* A value as it may appear in a message: at most 48 characters, anything
 * unprintable shown as '?'. */
static const char *shown(const char *v, size_t len, char *buf, size_t size)
{
    size_t n = 0, i;

    for (i = 0; i < len && n + 4 < size && i < 48; i++) {
        unsigned char c = (unsigned char)v[i];

        buf[n++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    if (i < len && n + 4 < size) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
    return buf;
}

static const char *shown_str(const char *v, char *buf, size_t size)
{
    return shown(v, strlen(v), buf, size);
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' ||
           c == '\f';
}

/* Trims s in place; returns the first non-space character. */
static char *trim(char *s)
{
    size_t n;

    while (is_space(*s))
        s++;
    n = strlen(s);
    while (n > 0 && is_space(s[n - 1]))
        s[--n] = '\0';
    return s;
}

static int set_str(char **slot, const char *v, size_t len, char *msg,
                   size_t msize)
{
    char *copy = strndup(v, len);

    if (!copy) {
        gw_put_err(msg, msize, "out of memory");
        return -1;
    }
    free(*slot);
    *slot = copy;
    return 0;
}

/* Decimal digits only (no sign, no space, no 0x), no overflow. */
static int parse_ulong(const char *v, size_t len, unsigned long *out,
                       size_t *used)
{
    unsigned long n = 0;
    size_t i;

    for (i = 0; i < len && v[i] >= '0' && v[i] <= '9'; i++) {
        unsigned d = (unsigned)(v[i] - '0');

        if (n > (~0ul - d) / 10)
            return -1;
        n = n * 10 + d;
    }
    if (i == 0)
        return -1;
    *out = n;
    *used = i;
    return 0;
}

/* ---- models -------------------------------------------------------------- */

static int model_id_ok(const char *id, size_t len)
{
    if (len == 0 || len > MODEL_ID_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || strchr("._-:/@+", c)))
            return 0;
    }
    return 1;
}

static void model_clear(gw_model *m)
{
    free(m->id);
    free(m->upstream);
    free(m->upstream_key_file);
    free(m->cache_salt_field);
    memset(m, 0, sizeof *m);
}

/* The name of a request field for the prompt cache's salt: 1 to 64 of
 * A-Z a-z 0-9 _ . - (it goes into JSON unescaped). */
static int set_salt_field(gw_model *m, const char *v, size_t len, char *msg,
                          size_t msize)
{
    int ok = len >= 1 && len <= 64;

    for (size_t i = 0; ok && i < len; i++)
        ok = (v[i] >= 'a' && v[i] <= 'z') || (v[i] >= 'A' && v[i] <= 'Z') ||
             (v[i] >= '0' && v[i] <= '9') || v[i] == '_' || v[i] == '.' ||
             v[i] == '-';
    if (!ok) {
        gw_put_err(msg, msize,
                   "cache_salt_field: 1 to 64 of A-Z a-z 0-9 _ . - "
                   "(such as cache_salt)");
        return -1;
    }
    return set_str(&m->cache_salt_field, v, len, msg, msize);
}

static int model_check_id(const gw_config *cfg, const char *id, size_t len,
                          char *msg, size_t msize)
{
    char b[64];

    if (!model_id_ok(id, len)) {
        gw_put_err(msg, msize,
                   "'%s' is not a model ID (letters, digits and . _ - : / @ +; "
                   "at most %d)",
                   shown(id, len, b, sizeof b), MODEL_ID_MAX);
        return -1;
    }
    for (size_t i = 0; i < cfg->n_models; i++)
        if (cfg->models[i].id && strlen(cfg->models[i].id) == len &&
            memcmp(cfg->models[i].id, id, len) == 0) {
            gw_put_err(msg, msize, "model '%.*s' is configured twice", (int)len,
                       id);
            return -1;
        }
    if (cfg->n_models >= GW_MAX_MODELS) {
        gw_put_err(msg, msize, "too many models (at most %d)", GW_MAX_MODELS);
        return -1;
    }
    return 0;
}

/* "echo", or http:// or https:// with a host; trailing '/' dropped. */
static int model_set_upstream(gw_model *m, const char *v, size_t len, char *msg,
                              size_t msize)
{
    size_t skip = 0;
    char b[64];

    if (len == 4 && memcmp(v, "echo", 4) == 0)
        return set_str(&m->upstream, v, len, msg, msize);
    if (len > 7 && strncmp(v, "http://", 7) == 0)
        skip = 7;
    else if (len > 8 && strncmp(v, "https://", 8) == 0)
        skip = 8;
    for (size_t i = 0; skip && i < len; i++)
        if ((unsigned char)v[i] <= 0x20 || (unsigned char)v[i] >= 0x7f)
            skip = 0;
    if (skip && v[skip] != '/') {
        while (len > skip && v[len - 1] == '/')
            len--;
        return set_str(&m->upstream, v, len, msg, msize);
    }
    gw_put_err(msg, msize,
               "'%s' is not an upstream (echo, or an http:// or https:// base "
               "URL such as http://127.0.0.1:8080/v1)",
               shown(v, len, b, sizeof b));
    return -1;
}

/* Tier names separated by ',' or '+' (spaces allowed around them). */
static int parse_tiers(const char *v, size_t len, unsigned *out, char *msg,
                       size_t msize)
{
    unsigned tiers = 0;
    size_t i = 0;
    char b[64];

    while (i <= len) {
        size_t start, end, j;

        while (i < len && is_space(v[i]))
            i++;
        start = i;
        while (i < len && v[i] != ',' && v[i] != '+')
            i++;
        end = i;
        while (end > start && is_space(v[end - 1]))
            end--;
        for (j = 0; j < sizeof tier_names / sizeof tier_names[0]; j++)
            if (strlen(tier_names[j].name) == end - start &&
                memcmp(tier_names[j].name, v + start, end - start) == 0)
                break;
        if (j == sizeof tier_names / sizeof tier_names[0]) {
            if (end == start)
                gw_put_err(msg, msize,
                           "'%s' is not a list of tiers (standard, high, "
                           "maximum)",
                           shown(v, len, b, sizeof b));
            else
                gw_put_err(msg, msize,
                           "'%s' is not a tier (standard, high, maximum)",
                           shown(v + start, end - start, b, sizeof b));
            return -1;
        }
        tiers |= tier_names[j].bit;
        i++; /* past the separator, or past the end */
    }
    *out = tiers;
    return 0;
}

/* "ID=UPSTREAM[,tiers=a+b][,key-file=FILE]" */
static int model_from_spec(gw_config *cfg, const char *spec, char *msg,
                           size_t msize)
{
    const char *eq = strchr(spec, '='), *p, *comma;
    gw_model m;

    memset(&m, 0, sizeof m);
    m.tiers = GW_TIER_ALL;
    if (!eq) {
        gw_put_err(msg, msize,
                   "expected ID=UPSTREAM[,tiers=A+B][,key-file=FILE]");
        return -1;
    }
    if (model_check_id(cfg, spec, (size_t)(eq - spec), msg, msize) != 0)
        return -1;
    if (set_str(&m.id, spec, (size_t)(eq - spec), msg, msize) != 0)
        return -1;
    p = eq + 1;
    comma = strchr(p, ',');
    if (model_set_upstream(&m, p, comma ? (size_t)(comma - p) : strlen(p), msg,
                           msize) != 0)
        goto fail;
    while (comma) {
        size_t len;
        const char *val;

        p = comma + 1;
        comma = strchr(p, ',');
        len = comma ? (size_t)(comma - p) : strlen(p);
        if (len > 6 && strncmp(p, "tiers=", 6) == 0) {
            if (parse_tiers(p + 6, len - 6, &m.tiers, msg, msize) != 0)
                goto fail;
        } else if (len > 9 && (strncmp(p, "key-file=", 9) == 0 ||
                               strncmp(p, "key_file=", 9) == 0)) {
            val = p + 9;
            if (set_str(&m.upstream_key_file, val, len - 9, msg, msize) != 0)
                goto fail;
        } else if (len > 11 && (strncmp(p, "cache-salt=", 11) == 0 ||
                                strncmp(p, "cache_salt=", 11) == 0)) {
            if (set_salt_field(&m, p + 11, len - 11, msg, msize) != 0)
                goto fail;
        } else {
            char b[64];

            gw_put_err(msg, msize,
                       "unknown model option '%s' (tiers=A+B, key-file=FILE, "
                       "cache-salt=FIELD)",
                       shown(p, len, b, sizeof b));
            goto fail;
        }
    }
    cfg->models[cfg->n_models++] = m;
    return 0;
fail:
    model_clear(&m);
    return -1;
}

/* ---- one setting ------------------------------------------------------- */

/* Neither message repeats the value: it may hold a PIN by mistake. */
static int check_keyref(const char *v, char *msg, size_t msize)
{
    if (!((strncmp(v, "pkcs11:", 7) == 0 && v[7]) ||
          (strncmp(v, "dir:", 4) == 0 && v[4]))) {
        gw_put_err(msg, msize, "must be a pkcs11: URI or dir:PATH");
        return -1;
    }
    if (strcasestr(v, "pin-value")) {
        gw_put_err(msg, msize,
                   "a PIN in the URI (pin-value) is refused; use pin_source");
        return -1;
    }
    return 0;
}

static int check_pin_source(const char *v, char *msg, size_t msize)
{
    veil_pin_source ps;

    if (veil_pin_source_parse(v, &ps) != VEIL_OK) {
        gw_put_err(msg, msize,
                   "must be file:PATH, env:NAME, prompt or none (a PIN itself "
                   "is never accepted)");
        return -1;
    }
    return 0;
}

/* A PCR selection, as the TPM module and the evidence formats take it;
 * its canonical form (indices ascending) goes to canon. */
static int check_pcrs(const char *v, char *canon, size_t csize, char *msg,
                      size_t msize)
{
    veil_pcr_sel sel;
    char b[64];

    if (veil_pcr_sel_parse(v, &sel) != VEIL_OK || sel.n == 0) {
        gw_put_err(msg, msize,
                   "'%s' is not a PCR selection such as sha256:0,7,10 (the "
                   "sha256 bank, PCRs 0 to 23, each once)",
                   shown_str(v, b, sizeof b));
        return -1;
    }
    veil_pcr_sel_format(&sel, canon, csize);
    return 0;
}

/* Applies value to setting s; 0, or -1 with the problem in msg. */
static int apply(gw_config *cfg, const setting *s, const char *v, char *msg,
                 size_t msize)
{
    void *field = (char *)cfg + s->off;
    size_t len = strlen(v), used;
    unsigned long n;
    char b[64];

    if (len == 0) {
        gw_put_err(msg, msize, "needs a value");
        return -1;
    }
    switch (s->kind) {
    case K_STR:
        return set_str(field, v, len, msg, msize);
    case K_ADDR: {
        unsigned char addr[16];

        if (inet_pton(AF_INET, v, addr) != 1 &&
            inet_pton(AF_INET6, v, addr) != 1) {
            gw_put_err(msg, msize,
                       "'%s' is not an IP address (such as 127.0.0.1, ::1, "
                       "0.0.0.0)",
                       shown_str(v, b, sizeof b));
            return -1;
        }
        return set_str(field, v, len, msg, msize);
    }
    case K_KEYREF:
        if (check_keyref(v, msg, msize) != 0)
            return -1;
        return set_str(field, v, len, msg, msize);
    case K_PIN:
        if (check_pin_source(v, msg, msize) != 0)
            return -1;
        return set_str(field, v, len, msg, msize);
    case K_LEVEL:
        for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++)
            if (strcmp(v, levels[i]) == 0)
                return set_str(field, v, len, msg, msize);
        gw_put_err(msg, msize,
                   "'%s' is not a log level (error, warn, info, debug)",
                   shown_str(v, b, sizeof b));
        return -1;
    case K_PORT:
        if (parse_ulong(v, len, &n, &used) != 0 || used != len || n > 65535) {
            gw_put_err(msg, msize, "'%s' is not a port (1-65535, or 0)",
                       shown_str(v, b, sizeof b));
            return -1;
        }
        *(unsigned *)field = (unsigned)n;
        return 0;
    case K_UINT:
        if (parse_ulong(v, len, &n, &used) != 0 || used != len || n < s->min ||
            n > s->max) {
            gw_put_err(msg, msize, "'%s' is not a whole number from %lu to %lu",
                       shown_str(v, b, sizeof b), s->min, s->max);
            return -1;
        }
        *(unsigned *)field = (unsigned)n;
        return 0;
    case K_RATE: {
        char *end = NULL;
        double d;

        /* plain decimal only: no sign, no hex, no inf or nan */
        errno = 0;
        d = ((v[0] >= '0' && v[0] <= '9') || v[0] == '.') &&
                    v[strspn(v, "0123456789.eE+-")] == '\0'
                ? strtod(v, &end)
                : -1;
        if (!end || *end || errno || !(d > 0 && d <= 1e6)) {
            gw_put_err(msg, msize,
                       "'%s' is not a rate (requests per second: a number "
                       "above 0, at most 1000000)",
                       shown_str(v, b, sizeof b));
            return -1;
        }
        *(double *)field = d;
        return 0;
    }
    case K_SIZE: {
        unsigned long mult = 1;
        int ok = parse_ulong(v, len, &n, &used) == 0;

        if (ok && used + 1 == len) {
            switch (v[used]) {
            case 'k':
            case 'K':
                mult = KIB;
                break;
            case 'm':
            case 'M':
                mult = MIB;
                break;
            case 'g':
            case 'G':
                mult = GIB;
                break;
            default:
                ok = 0;
            }
        } else if (used != len) {
            ok = 0;
        }
        if (!ok || n > s->max / mult || n * mult < s->min) {
            gw_put_err(msg, msize,
                       "'%s' is not a size from 1K to 1G (bytes, or with a "
                       "suffix K, M or G)",
                       shown_str(v, b, sizeof b));
            return -1;
        }
        *(size_t *)field = (size_t)(n * mult);
        return 0;
    }
    case K_BOOL:
        for (size_t i = 0; i < sizeof bools / sizeof bools[0]; i++)
            if (strcmp(v, bools[i].name) == 0) {
                *(int *)field = bools[i].value;
                return 0;
            }
        gw_put_err(msg, msize, "'%s' is not on or off",
                   shown_str(v, b, sizeof b));
        return -1;
    case K_PCRS: {
        char canon[PCRS_TEXT_MAX];

        if (check_pcrs(v, canon, sizeof canon, msg, msize) != 0)
            return -1;
        return set_str(field, canon, strlen(canon), msg, msize);
    }
    case K_MODEL:
        return model_from_spec(cfg, v, msg, msize);
    }
    gw_put_err(msg, msize, "internal error");
    return -1;
}

/* ---- public ------------------------------------------------------------ */

void gw_config_init(gw_config *cfg)
{
    char msg[MSG_SIZE];

    memset(cfg, 0, sizeof *cfg);
    /* Defaults are parsed like any value; they are known to be valid, so
     * the only possible failure is out of memory, which leaves the string
     * NULL and makes gw_config_check fail. */
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (settings[i].def)
            (void)apply(cfg, &settings[i], settings[i].def, msg, sizeof msg);
}

void gw_config_free(gw_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < N_SETTINGS; i++) {
        kind k = settings[i].kind;

        if (k == K_STR || k == K_ADDR || k == K_KEYREF || k == K_PIN ||
            k == K_LEVEL || k == K_PCRS)
            free(*(char **)((char *)cfg + settings[i].off));
    }
    for (size_t i = 0; i < cfg->n_models && i < GW_MAX_MODELS; i++)
        model_clear(&cfg->models[i]);
    memset(cfg, 0, sizeof *cfg);
}

int gw_config_set(gw_config *cfg, const char *name, const char *value,
                  char *err, size_t err_size)
{
    const setting *s;
    char msg[MSG_SIZE], b[64];

    if (!cfg || !name) {
        gw_put_err(err, err_size, "no setting named");
        return -1;
    }
    if (strncmp(name, "--", 2) == 0)
        name += 2;
    s = find_setting(name);
    if (!s) {
        gw_put_err(err, err_size,
                   "unknown option '--%s' (veild --help lists them)",
                   shown_str(name, b, sizeof b));
        return -1;
    }
    if (!value) {
        gw_put_err(err, err_size, "--%s: needs a value", name);
        return -1;
    }
    if (apply(cfg, s, value, msg, sizeof msg) != 0) {
        gw_put_err(err, err_size, "--%s: %s", name, msg);
        return -1;
    }
    return 0;
}

/* Loader state: the [model ID] section being read. */
typedef struct section {
    int open;
    unsigned line; /* of its header */
    gw_model m;
} section;

/* Ends the open section: it needs an upstream; then it joins the models. */
static int section_close(gw_config *cfg, section *sec, const char *path,
                         char *err, size_t err_size)
{
    if (!sec->open)
        return 0;
    sec->open = 0;
    if (!sec->m.upstream) {
        gw_put_err(err, err_size, "%s:%u: [model %s] has no upstream", path,
                   sec->line, sec->m.id);
        model_clear(&sec->m);
        return -1;
    }
    cfg->models[cfg->n_models++] = sec->m;
    memset(&sec->m, 0, sizeof sec->m);
    return 0;
}

static int section_open(gw_config *cfg, section *sec, char *inner,
                        unsigned line, char *msg, size_t msize)
{
    char *id;
    char b[64];

    if (strncmp(inner, "model", 5) != 0 || (inner[5] && !is_space(inner[5]))) {
        gw_put_err(msg, msize, "unknown section '[%s]' (expected [model ID])",
                   shown_str(inner, b, sizeof b));
        return -1;
    }
    id = trim(inner + 5);
    if (!*id) {
        gw_put_err(msg, msize, "[model] needs a model ID: [model ID]");
        return -1;
    }
    if (model_check_id(cfg, id, strlen(id), msg, msize) != 0)
        return -1;
    memset(&sec->m, 0, sizeof sec->m);
    sec->m.tiers = GW_TIER_ALL;
    if (set_str(&sec->m.id, id, strlen(id), msg, msize) != 0)
        return -1;
    sec->open = 1;
    sec->line = line;
    return 0;
}

static int section_set(section *sec, const char *name, const char *v, char *msg,
                       size_t msize)
{
    if (!*v) {
        gw_put_err(msg, msize, "%s: needs a value", name);
        return -1;
    }
    if (name_eq("upstream", name))
        return model_set_upstream(&sec->m, v, strlen(v), msg, msize);
    if (name_eq("upstream_key_file", name))
        return set_str(&sec->m.upstream_key_file, v, strlen(v), msg, msize);
    if (name_eq("cache_salt_field", name))
        return set_salt_field(&sec->m, v, strlen(v), msg, msize);
    return parse_tiers(v, strlen(v), &sec->m.tiers, msg, msize);
}

/* One line (trimmed, not a comment); 0 or -1 with the problem in msg. */
static int load_line(gw_config *cfg, section *sec, char *s, unsigned line,
                     char *msg, size_t msize)
{
    const setting *st;
    char *eq, *name, *value;
    char b[64];
    size_t n = strlen(s);

    if (s[0] == '[') {
        if (s[n - 1] != ']') {
            gw_put_err(msg, msize, "a section header ends with ']'");
            return -1;
        }
        s[n - 1] = '\0';
        return section_open(cfg, sec, trim(s + 1), line, msg, msize);
    }
    eq = strchr(s, '=');
    if (!eq) {
        gw_put_err(msg, msize, "expected NAME = VALUE");
        return -1;
    }
    *eq = '\0';
    name = trim(s);
    value = trim(eq + 1);
    if (!*name) {
        gw_put_err(msg, msize, "expected NAME = VALUE");
        return -1;
    }
    if (sec->open) {
        if (is_section_key(name)) {
            if (section_set(sec, name, value, msg, msize) != 0)
                return -1;
            return 0;
        }
        if (find_setting(name)) {
            gw_put_err(msg, msize,
                       "'%s' is a global setting: put it before the first "
                       "[model] section",
                       shown_str(name, b, sizeof b));
            return -1;
        }
        gw_put_err(msg, msize,
                   "unknown setting '%s' in [model %s] (upstream, "
                   "upstream_key_file, tiers, cache_salt_field)",
                   shown_str(name, b, sizeof b), sec->m.id);
        return -1;
    }
    st = find_setting(name);
    if (!st) {
        if (is_section_key(name))
            gw_put_err(msg, msize,
                       "'%s' belongs in a [model ID] section (or use "
                       "model = ID=UPSTREAM)",
                       shown_str(name, b, sizeof b));
        else
            gw_put_err(msg, msize, "unknown setting '%s'",
                       shown_str(name, b, sizeof b));
        return -1;
    }
    if (apply(cfg, st, value, msg, msize) != 0) {
        char tmp[MSG_SIZE];

        snprintf(tmp, sizeof tmp, "%s", msg);
        gw_put_err(msg, msize, "%s: %s", st->name, tmp);
        return -1;
    }
    return 0;
}

int gw_config_load(gw_config *cfg, const char *path, char *err, size_t err_size)
{
    FILE *f;
    struct stat st;
    char *buf = NULL;
    size_t cap = 0;
    ssize_t got;
    unsigned line = 0;
    section sec;
    char msg[MSG_SIZE];
    int rc = 0;

    if (!cfg || !path) {
        gw_put_err(err, err_size, "no config file named");
        return -1;
    }
    f = fopen(path, "re");
    if (!f) {
        gw_put_err(err, err_size, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        gw_put_err(err, err_size, "%s: not a regular file", path);
        fclose(f);
        return -1;
    }
    /* It says which key and which upstream to trust. */
    if (st.st_mode & S_IWOTH) {
        gw_put_err(err, err_size, "%s: writable by others (chmod o-w)", path);
        fclose(f);
        return -1;
    }
    memset(&sec, 0, sizeof sec);
    while ((got = getline(&buf, &cap, f)) >= 0) {
        char *s;

        line++;
        if ((size_t)got > LINE_MAX_LEN) {
            gw_put_err(err, err_size, "%s:%u: line too long (at most %d bytes)",
                       path, line, LINE_MAX_LEN);
            rc = -1;
            break;
        }
        if (strlen(buf) != (size_t)got) {
            gw_put_err(err, err_size, "%s:%u: contains a NUL byte", path, line);
            rc = -1;
            break;
        }
        s = trim(buf);
        if (!*s || *s == '#')
            continue;
        if (*s == '[' && section_close(cfg, &sec, path, err, err_size) != 0) {
            rc = -1;
            break;
        }
        if (load_line(cfg, &sec, s, line, msg, sizeof msg) != 0) {
            gw_put_err(err, err_size, "%s:%u: %s", path, line, msg);
            rc = -1;
            break;
        }
    }
    if (rc == 0 && ferror(f)) {
        gw_put_err(err, err_size, "%s: %s", path, strerror(errno));
        rc = -1;
    }
    if (rc == 0)
        rc = section_close(cfg, &sec, path, err, err_size);
    model_clear(&sec.m);
    free(buf);
    fclose(f);
    return rc;
}

int gw_config_check(const gw_config *cfg, char *err, size_t err_size)
{
    char msg[MSG_SIZE];

    if (!cfg) {
        gw_put_err(err, err_size, "no configuration");
        return -1;
    }
    if (!cfg->listen_addr || !cfg->log_level) {
        gw_put_err(err, err_size, "out of memory");
        return -1;
    }
    if (!cfg->server_key) {
        gw_put_err(err, err_size,
                   "server_key is not set (a pkcs11: URI, or dir:PATH)");
        return -1;
    }
    if (check_keyref(cfg->server_key, msg, sizeof msg) != 0) {
        gw_put_err(err, err_size, "server_key: %s", msg);
        return -1;
    }
    if (cfg->pin_source &&
        check_pin_source(cfg->pin_source, msg, sizeof msg) != 0) {
        gw_put_err(err, err_size, "pin_source: %s", msg);
        return -1;
    }
    if (cfg->signing_key &&
        check_keyref(cfg->signing_key, msg, sizeof msg) != 0) {
        gw_put_err(err, err_size, "signing_key: %s", msg);
        return -1;
    }
    if (cfg->tpm_pcrs) {
        char canon[PCRS_TEXT_MAX];

        if (check_pcrs(cfg->tpm_pcrs, canon, sizeof canon, msg, sizeof msg) !=
            0) {
            gw_put_err(err, err_size, "tpm_pcrs: %s", msg);
            return -1;
        }
    } else if (cfg->tpm) {
        gw_put_err(err, err_size, "tpm = on needs tpm_pcrs");
        return -1;
    }
    /* Certification settings without the TPM would be ignored in silence:
     * an operator who set them expects certified answers. */
    if (cfg->tpm_certify_key && !cfg->tpm) {
        gw_put_err(err, err_size,
                   "tpm_certify_key is set but tpm is off: set tpm = on, or "
                   "drop tpm_certify_key");
        return -1;
    }
    if (cfg->tpm_certify_key_auth && !cfg->tpm_certify_key) {
        gw_put_err(err, err_size,
                   "tpm_certify_key_auth is set but tpm_certify_key is not");
        return -1;
    }
    if (cfg->tpm_certify_key_auth &&
        check_pin_source(cfg->tpm_certify_key_auth, msg, sizeof msg) != 0) {
        gw_put_err(err, err_size, "tpm_certify_key_auth: %s", msg);
        return -1;
    }
    if (!cfg->tls_cert != !cfg->tls_key) {
        gw_put_err(err, err_size,
                   "%s is set but %s is not: give both or neither",
                   cfg->tls_cert ? "tls_cert" : "tls_key",
                   cfg->tls_cert ? "tls_key" : "tls_cert");
        return -1;
    }
    if (cfg->n_models == 0) {
        gw_put_err(err, err_size,
                   "no model configured (model = ID=UPSTREAM, or a [model ID] "
                   "section)");
        return -1;
    }
    if (cfg->n_models > GW_MAX_MODELS) {
        gw_put_err(err, err_size, "too many models (at most %d)",
                   GW_MAX_MODELS);
        return -1;
    }
    for (size_t i = 0; i < cfg->n_models; i++) {
        const gw_model *m = &cfg->models[i];

        if (!m->id || !m->upstream || !(m->tiers & GW_TIER_ALL)) {
            gw_put_err(err, err_size,
                       "model %zu lacks an ID, an upstream or a tier", i + 1);
            return -1;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(cfg->models[j].id, m->id) == 0) {
                gw_put_err(err, err_size, "model '%s' is configured twice",
                           m->id);
                return -1;
            }
    }
    return 0;
}

#define HELP_COL 30
#define HELP_WIDTH 79

/* Prints "  left", then text wrapped into the column from HELP_COL. */
static void help_row(FILE *out, const char *left, const char *text,
                     const char *def)
{
    int col = fprintf(out, "  %s", left);
    char buf[512];
    const char *p = buf;

    if (col < 0)
        return;
    if (def)
        snprintf(buf, sizeof buf, "%s (default:\x1f%s)", text, def);
    else
        snprintf(buf, sizeof buf, "%s", text);
    if (col >= HELP_COL) {
        fputc('\n', out);
        col = 0;
    }
    while (*p) {
        size_t w = strcspn(p, " ");

        if (col > HELP_COL && col + 1 + (int)w > HELP_WIDTH) {
            fputc('\n', out);
            col = 0;
        }
        if (col < HELP_COL) {
            fprintf(out, "%*s", HELP_COL - col, "");
            col = HELP_COL;
        } else {
            fputc(' ', out);
            col++;
        }
        for (size_t i = 0; i < w; i++) /* \x1f: a space not to break at */
            fputc(p[i] == '\x1f' ? ' ' : p[i], out);
        col += (int)w;
        p += w;
        while (*p == ' ')
            p++;
    }
    fputc('\n', out);
}

void gw_config_help(FILE *out)
{
    char left[128];

    fprintf(out, "Settings: \"NAME = VALUE\" lines in the config file, or "
                 "flags --NAME VALUE\n"
                 "('-' and '_' are the same; flags override the file):\n");
    for (size_t i = 0; i < N_SETTINGS; i++) {
        snprintf(left, sizeof left, "--%s %s", settings[i].name,
                 settings[i].metavar);
        help_row(out, left, settings[i].help, settings[i].def);
    }
    fprintf(out, "A model may also be a section of the config file:\n"
                 "  [model ID]\n");
    for (size_t i = 0; i < sizeof section_keys / sizeof section_keys[0]; i++) {
        snprintf(left, sizeof left, "%s = %s", section_keys[i].name,
                 section_keys[i].metavar);
        help_row(out, left, section_keys[i].help, NULL);
    }
}

const gw_model *gw_config_model(const gw_config *cfg, const char *id)
{
    if (!cfg || !id)
        return NULL;
    for (size_t i = 0; i < cfg->n_models && i < GW_MAX_MODELS; i++)
        if (cfg->models[i].id && strcmp(cfg->models[i].id, id) == 0)
            return &cfg->models[i];
    return NULL;
}
