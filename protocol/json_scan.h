/* A strict JSON scanner (RFC 8259) for texts the gateway passes through:
 * it checks a text without building a tree, lists the members of its
 * top-level object as byte ranges, refuses a key that appears twice, and
 * splices edits into the text, so that what is forwarded is byte for byte
 * what was checked.  Internal to libveil; not installed.
 *
 * Strict means: exactly one value with optional whitespace (space, tab,
 * CR, LF) around it; UTF-8 only (no overlong forms, no surrogates, nothing
 * past U+10FFFF, no byte-order mark); no control character unescaped in a
 * string; the escapes of RFC 8259 section 7 only (an escaped lone
 * surrogate such as \ud800 is grammatical and kept); numbers as the
 * grammar has them (no leading zeros, no "+", no "NaN").  Nesting deeper
 * than VEIL_JSON_MAX_DEPTH is refused.  The scan is one pass without
 * recursion; its memory is 4 bytes per member of the top-level object
 * (for the duplicate check), nothing else.
 *
 * Keys are compared after unescaping ("mod\u0065l" is "model"); an escaped
 * lone surrogate is a code unit of its own, unequal to anything else. */
#ifndef VEIL_JSON_SCAN_H
#define VEIL_JSON_SCAN_H

#include <stddef.h>

#pragma GCC visibility push(hidden)

#define VEIL_JSON_MAX_DEPTH 256

typedef enum veil_json_rc {
    VEIL_JSON_OK = 0,
    VEIL_JSON_SYNTAX,     /* not JSON by RFC 8259 (or bytes after it) */
    VEIL_JSON_UTF8,       /* a byte sequence that is not UTF-8 */
    VEIL_JSON_DEPTH,      /* nested deeper than VEIL_JSON_MAX_DEPTH */
    VEIL_JSON_NOT_OBJECT, /* JSON, but its value is not an object */
    VEIL_JSON_DUPLICATE,  /* a key twice in the top-level object */
    VEIL_JSON_TOO_BIG,    /* 4 GiB or more */
    VEIL_JSON_STOPPED,    /* the member callback said stop */
    VEIL_JSON_NOMEM
} veil_json_rc;

/* "a key appears twice", ...: for error details. */
const char *veil_json_rc_text(veil_json_rc rc);

/* One member of the top-level object, as offsets into the text. */
typedef struct veil_json_member {
    size_t key;       /* the key's opening '"' */
    size_t key_end;   /* just past its closing '"' */
    size_t value;     /* the value's first byte */
    size_t value_end; /* just past the value's last byte */
    size_t prev_end;  /* just past the previous member's value (for the
                         first member: just past the '{') */
} veil_json_member;

/* Called for each member of the top-level object, in text order, as the
 * scan reaches it (a later byte may still make the text invalid: act on
 * what it saw only when the scan returns OK).  Non-zero: stop the scan,
 * which then returns VEIL_JSON_STOPPED. */
typedef int (*veil_json_member_fn)(void *ctx, const char *text,
                                   const veil_json_member *m);

/* Checks that text[0, len) is one JSON text whose value is an object with
 * no key twice, calling fn (may be NULL) for each of its members.  On
 * success the offsets of the object's '{' and '}' go to *open and *close
 * (either may be NULL).  On failure *where (may be NULL) is the offset of
 * the offending byte (for DUPLICATE: the second key's). */
veil_json_rc veil_json_scan_object(const char *text, size_t len,
                                   veil_json_member_fn fn, void *ctx,
                                   size_t *open, size_t *close, size_t *where);

/* Checks that text[0, len) is one JSON text (any value). */
veil_json_rc veil_json_scan(const char *text, size_t len, size_t *where);

/* Compares the key of m, unescaped, with name (UTF-8, NUL-terminated):
 * 1 when equal.  The _nocase form folds ASCII letters only. */
int veil_json_key_is(const char *text, const veil_json_member *m,
                     const char *name);
int veil_json_key_is_nocase(const char *text, const veil_json_member *m,
                            const char *name);

/* When the value of m is a string: unescaped into out (NUL-terminated; a
 * U+0000 in it stays, so the length is what counts) and its length in
 * bytes returned.  -1 when it is not a string or needs more than size - 1
 * bytes. */
long veil_json_string_value(const char *text, const veil_json_member *m,
                            char *out, size_t size);

/* One edit: text[at, at + drop) is replaced by insert[0, insert_len). */
typedef struct veil_json_edit {
    size_t at, drop;
    const char *insert;
    size_t insert_len;
} veil_json_edit;

/* The edits that remove the members rm[0, n) (members of one object,
 * distinct, in text order), each with one comma, so that what is left is
 * still an object: at most n edits go to out; their number is returned.
 * They are in text order and end before the object's '}'. */
size_t veil_json_remove_members(const char *text, size_t len,
                                const veil_json_member *rm, size_t n,
                                veil_json_edit *out);

/* Length of text after the edits (sorted by at, not overlapping, within
 * the text); (size_t)-1 when they are not. */
size_t veil_json_spliced_len(size_t len, const veil_json_edit *edits, size_t n);
/* Writes text with the edits applied to out, which has room for
 * veil_json_spliced_len bytes (no NUL is added). */
void veil_json_splice(const char *text, size_t len, const veil_json_edit *edits,
                      size_t n, char *out);

#pragma GCC visibility pop

#endif /* VEIL_JSON_SCAN_H */
