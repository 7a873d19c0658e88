/* The backend statement of a maximum answer (docs/ATTESTATION.md, "The
 * backend statement"): where veild sends a model's plaintext, as text
 * whose SHA-256 the TPM quote's qualifying data covers.  The gateway
 * makes it from its configuration; the client parses it, checks that it
 * is in canonical form and that what it says of the upstream (transport,
 * location) follows from the upstream itself, and shows it.  No HTTP
 * here: an upstream is only read as text.  Internal to libveil. */
#ifndef VEIL_BACKEND_H
#define VEIL_BACKEND_H

#include <stddef.h>

#include "veil/engine.h"

#pragma GCC visibility push(hidden)

#define VEIL_BACKEND_HEAD "veil-backend-v1"
/* Longest statement (and so longest upstream that can be stated). */
#define VEIL_BACKEND_STATEMENT_MAX 2048
/* Longest Unix socket path (sockaddr_un.sun_path without its NUL). */
#define VEIL_BACKEND_UNIX_PATH_MAX 107

/* Where an upstream (as veild's configuration spells it) is. */
typedef enum veil_backend_kind {
    VEIL_BACKEND_BAD = 0,      /* not an upstream, or one with credentials
                                  (user:password@) that cannot be stated */
    VEIL_BACKEND_ECHO,         /* "echo": inside veild */
    VEIL_BACKEND_UNIX,         /* unix:/ABSOLUTE/PATH: a Unix socket */
    VEIL_BACKEND_LOOPBACK,     /* http(s):// to 127.0.0.0/8, [::1] or
                                  localhost */
    VEIL_BACKEND_HTTPS_REMOTE, /* https:// to any other host */
    VEIL_BACKEND_HTTP_REMOTE,  /* http:// to any other host (never stated) */
} veil_backend_kind;

/* The kind of an upstream. */
veil_backend_kind veil_backend_classify(const char *upstream);

/* 1 when the kind's backend is on the gateway's own host (echo, unix,
 * loopback). */
int veil_backend_on_host(veil_backend_kind k);

/* The statement's words for a kind: transport ("echo", "unix",
 * "loopback", "https"; "http" and "bad" are never stated) and location
 * ("this-host", "remote"). */
const char *veil_backend_transport(veil_backend_kind k);
const char *veil_backend_location(veil_backend_kind k);

/* The statement for a model served by upstream, ASCII, each line ended
 * by "\n":
 *   veil-backend-v1
 *   model=<model ID>
 *   upstream=<the upstream as configured>
 *   transport=<echo|unix|loopback|https>
 *   location=<this-host|remote>
 * Written into out (NUL-terminated); returns its length, or 0 when out is
 * too small, the model or upstream holds a byte outside 0x21..0x7e, or
 * the upstream cannot be stated (VEIL_BACKEND_BAD or _HTTP_REMOTE). */
size_t veil_backend_statement(const char *model, const char *upstream,
                              char *out, size_t size);

/* A statement, parsed. */
typedef struct veil_backend_info {
    char model[256];
    char upstream[VEIL_BACKEND_STATEMENT_MAX];
    veil_backend_kind kind;
} veil_backend_info;

/* Parses a statement and checks it: the exact canonical form above (the
 * text is what veil_backend_statement makes of its model and upstream),
 * and transport and location as the upstream's own kind says.  A remote
 * upstream claimed to be on this host, or a line out of place, is
 * VEIL_E_VERIFY with veil_last_error() saying what is wrong. */
veil_rc veil_backend_parse(const char *text, size_t len,
                           veil_backend_info *out);

/* "model M: UPSTREAM, WHERE" for a person, into out (NUL-terminated). */
void veil_backend_describe(const veil_backend_info *b, char *out, size_t size);

#pragma GCC visibility pop

#endif /* VEIL_BACKEND_H */
