/* engine/util.h: the small helpers every layer shares (engine, providers,
 * protocol/, client/, gateway/, bench/).  Not installed, and it declares no
 * engine structure, so that client/ and gateway/ may include it without
 * seeing the engine's internals (engine/engine_int.h includes it).
 *
 * One definition each; a module never rewrites one of these:
 *  - veil_wipe:   wipe memory that held a secret (OPENSSL_cleanse);
 *  - veil_hex*:   lower-case hex and its decoding;
 *  - veil_uuid4:  a random (version 4) UUID, as payload IDs use;
 *  - veil_logger: a log callback with its level filter (veil_logf), and
 *                 the fields of a line for a structured one;
 *  - veil_secret_path: where a secret file named "credential:NAME" is.
 * Tier names and bits are in protocol/tier.h. */
#ifndef VEIL_UTIL_H
#define VEIL_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "veil/engine.h"

#pragma GCC visibility push(hidden)

/* Wipes len bytes at p (p may be NULL when len is 0).  The compiler may
 * not drop it. */
void veil_wipe(void *p, size_t len);

/* Lower-case hex of n bytes into out (2n+1 bytes, NUL-terminated). */
void veil_hex(const uint8_t *in, size_t n, char *out);
/* The value of one hex digit (either case), or -1. */
int veil_hex_digit(int c);
/* Decodes exactly 2n hex digits at s into n bytes: 1, or 0 when a
 * character is not a hex digit (out is then partly written). */
int veil_hex_decode(const char *s, size_t n, uint8_t *out);

/* A random version-4 UUID in lower-case text form (RFC 9562 4.4), from
 * the engine's random source. */
veil_rc veil_uuid4(veil_engine *e, char out[37]);

/* One named value of a log line, for a destination that keeps them apart
 * (veild's JSON lines): the line's text already says it in words.
 * number: value is a decimal number (written without quotes). */
typedef struct veil_log_field {
    const char *name;
    const char *value; /* NULL: the field is left out */
    int number;
} veil_log_field;

/* A destination's way of taking a line with its fields (NULL: it takes
 * the text alone, through fn). */
typedef void (*veil_log_fields_fn)(void *ctx, veil_log_level level,
                                   const char *line,
                                   const veil_log_field *fields, size_t n);

/* A log destination: the callback of veil/engine.h, its context and the
 * most verbose level it takes.  fn NULL: nothing is logged.  A line is
 * at most 511 bytes (longer ones are cut).  Never log a key, a PIN, a
 * prompt or an answer. */
typedef struct veil_logger {
    veil_log_fn fn;
    void *ctx;
    veil_log_level level;
    veil_log_fields_fn fields; /* optional: veil_logf_fields */
} veil_logger;

void veil_logf(const veil_logger *l, veil_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The same line, with its fields given to l->fields when there is one
 * (else only the text goes, to l->fn). */
void veil_logf_fields(const veil_logger *l, veil_log_level level,
                      const veil_log_field *fields, size_t n, const char *fmt,
                      ...) __attribute__((format(printf, 5, 6)));

/* The path of a file that holds a secret (PIN, API keys, the backend's
 * key): "credential:NAME" is NAME in systemd's $CREDENTIALS_DIRECTORY
 * (LoadCredential=, LoadCredentialEncrypted=); anything else is the path
 * itself.  0 with the path in out; -1 with *why (a static message) when
 * NAME is empty, holds '/', is "." or "..", CREDENTIALS_DIRECTORY is not
 * set, or the path does not fit. */
#define VEIL_CREDENTIAL_PREFIX "credential:"
int veil_secret_path(const char *spec, char *out, size_t out_size,
                     const char **why);

#pragma GCC visibility pop

#endif /* VEIL_UTIL_H */
