/* Binary HTTP messages (RFC 9292), the inner message of protocol v2
 * (docs/PROTOCOL-V2.md): known-length encoding, and decoding of both
 * known-length and indeterminate-length requests and responses, with
 * informational (1xx) responses, trailers, truncation and padding.
 *
 * Decoding is strict (every peer may be hostile): a varint, a length or a
 * count that runs past the input or past the limits, a field name that is
 * not a token (RFC 9292 3.6: RFC 9110 5.1; upper case is valid), a field
 * value an HTTP/2 message could not carry (RFC 9113 8.2.1), a
 * pseudo-field, a status out of range, non-zero padding or a cut inside a
 * section is VEIL_E_ARG with a message naming the part and its offset
 * (never its bytes: they may be a prompt or an API key).
 *
 * A decoded message points into the input for names, values and
 * known-length content: the input must outlive it.  Indeterminate-length
 * content (chunks) is joined into a secret buffer the message owns.
 * Internal to libveil; not installed. */
#ifndef VEIL_BHTTP_H
#define VEIL_BHTTP_H

#include <stddef.h>
#include <stdint.h>

#include "veil/engine.h"

#pragma GCC visibility push(hidden)

/* A length-delimited byte string (not NUL-terminated). */
typedef struct veil_bstr {
    const uint8_t *p;
    size_t len;
} veil_bstr;

#define VEIL_BSTR(s) ((veil_bstr){(const uint8_t *)(s), sizeof(s) - 1})

typedef struct veil_bhttp_field {
    veil_bstr name, value;
} veil_bhttp_field;

typedef struct veil_bhttp_section {
    const veil_bhttp_field *fields;
    size_t n;
} veil_bhttp_section;

typedef struct veil_bhttp_info {
    unsigned status; /* 100..199 */
    veil_bhttp_section headers;
} veil_bhttp_info;

typedef struct veil_bhttp_msg {
    int is_request;
    int known_length; /* decoded: which framing the sender used */
    /* request control data */
    veil_bstr method, scheme, authority, path;
    /* response control data */
    const veil_bhttp_info *info; /* informational responses, in order */
    size_t n_info;
    unsigned status; /* the final status, 200..599 */
    veil_bhttp_section headers, trailers;
    veil_bstr content;
} veil_bhttp_msg;

/* What a decoder accepts at most; NULL: the defaults below. */
typedef struct veil_bhttp_limits {
    size_t max_fields;        /* field lines per section */
    size_t max_section_bytes; /* names + values per section */
    size_t max_content;       /* content bytes */
    size_t max_info;          /* informational responses */
    size_t max_chunks;        /* indeterminate-length content chunks */
} veil_bhttp_limits;

#define VEIL_BHTTP_DEFAULT_MAX_FIELDS 128
#define VEIL_BHTTP_DEFAULT_MAX_SECTION (64u * 1024u)
#define VEIL_BHTTP_DEFAULT_MAX_CONTENT (16u * 1024u * 1024u)
#define VEIL_BHTTP_DEFAULT_MAX_INFO 8
#define VEIL_BHTTP_DEFAULT_MAX_CHUNKS 4096

/* Known-length encoding (framing 0 or 1) into a new secret buffer.  With
 * VEIL_BHTTP_TRUNCATE, empty trailing parts are left out (RFC 9292 3.8):
 * empty trailers, then empty content, then an empty header section.
 * The message is checked as a decoder would check it. */
#define VEIL_BHTTP_TRUNCATE 1u
veil_rc veil_bhttp_encode(const veil_bhttp_msg *m, unsigned flags,
                          veil_secbuf **out);

/* Which kind the caller expects. */
typedef enum veil_bhttp_kind {
    VEIL_BHTTP_REQUEST = 0,
    VEIL_BHTTP_RESPONSE = 1
} veil_bhttp_kind;

/* Decodes one whole message of the expected kind; *out is freed with
 * veil_bhttp_msg_free. */
veil_rc veil_bhttp_decode(const uint8_t *in, size_t len, veil_bhttp_kind kind,
                          const veil_bhttp_limits *lim, veil_bhttp_msg **out);
void veil_bhttp_msg_free(veil_bhttp_msg *m);

/* The first field of a section with this name, compared without regard
 * to case (RFC 9110 5.1), or NULL. */
const veil_bhttp_field *veil_bhttp_field_get(const veil_bhttp_section *s,
                                             const char *name);
/* How many fields of a section have this name (compared as above). */
size_t veil_bhttp_field_count(const veil_bhttp_section *s, const char *name);

#pragma GCC visibility pop

#endif /* VEIL_BHTTP_H */
