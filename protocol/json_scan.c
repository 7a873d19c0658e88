/* The strict JSON scanner: see json_scan.h.
 *
 * One loop over the text with an explicit stack (one bit per level: object
 * or array), so no input can make it recurse.  Keys of the top-level
 * object are kept as 4-byte offsets; once the text is scanned they are
 * sorted by their unescaped bytes and neighbours compared.
 *
 * Unescaped bytes: a string's raw UTF-8 is taken as it is; \uXXXX becomes
 * the UTF-8 of its code point (a surrogate pair one 4-byte character);
 * an escaped lone surrogate becomes the 3 bytes its code unit would have
 * in UTF-8, which raw (strict) UTF-8 never holds, so two keys give the
 * same bytes exactly when they are the same string. */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json_scan.h"
#include "util.h"

const char *veil_json_rc_text(veil_json_rc rc)
{
    static const char *const text[] = {
        [VEIL_JSON_OK] = "valid",
        [VEIL_JSON_SYNTAX] = "not valid JSON",
        [VEIL_JSON_UTF8] = "not valid UTF-8",
        [VEIL_JSON_DEPTH] = "nested too deeply",
        [VEIL_JSON_NOT_OBJECT] = "not a JSON object",
        [VEIL_JSON_DUPLICATE] = "a key appears twice",
        [VEIL_JSON_TOO_BIG] = "too large",
        [VEIL_JSON_STOPPED] = "stopped",
        [VEIL_JSON_NOMEM] = "out of memory",
    };
    return (unsigned)rc < sizeof text / sizeof text[0] ? text[rc] : "?";
}

/* ---- lexical pieces ---------------------------------------------------- */

static int is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static size_t skip_ws(const unsigned char *s, size_t len, size_t i)
{
    while (i < len && is_ws(s[i]))
        i++;
    return i;
}

/* Four hex digits at s (the caller made sure there are four bytes). */
static long hex4(const unsigned char *s)
{
    long v = 0;

    for (int k = 0; k < 4; k++) {
        int h = veil_hex_digit(s[k]);

        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

size_t veil_utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t want;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        want = 2;
    else if (c >= 0xe0 && c <= 0xef)
        want = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        want = 4;
    else
        return 0;
    if (want > n)
        return 0;
    for (size_t k = 1; k < want; k++)
        if ((s[k] & 0xc0) != 0x80)
            return 0;
    if (want == 3 && ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] > 0x9f)))
        return 0;
    if (want == 4 && ((c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] > 0x8f)))
        return 0;
    return want;
}

/* A string starting at s[i] == '"': *end just past its closing quote. */
static veil_json_rc scan_string(const unsigned char *s, size_t len, size_t i,
                                size_t *end)
{
    i++;
    while (i < len) {
        unsigned char c = s[i];

        if (c == '"') {
            *end = i + 1;
            return VEIL_JSON_OK;
        }
        if (c < 0x20) {
            *end = i;
            return VEIL_JSON_SYNTAX;
        }
        if (c == '\\') {
            if (i + 1 >= len)
                break;
            switch (s[i + 1]) {
            case '"':
            case '\\':
            case '/':
            case 'b':
            case 'f':
            case 'n':
            case 'r':
            case 't':
                i += 2;
                continue;
            case 'u':
                if (len - i < 6 || hex4(s + i + 2) < 0) {
                    *end = i;
                    return VEIL_JSON_SYNTAX;
                }
                i += 6;
                continue;
            default:
                *end = i;
                return VEIL_JSON_SYNTAX;
            }
        }
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n = veil_utf8_seq(s + i, len - i);

        if (n == 0) {
            *end = i;
            return VEIL_JSON_UTF8;
        }
        i += n;
    }
    *end = len;
    return VEIL_JSON_SYNTAX;
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* A number starting at s[i]: *end just past it. */
static veil_json_rc scan_number(const unsigned char *s, size_t len, size_t i,
                                size_t *end)
{
    if (i < len && s[i] == '-')
        i++;
    if (i < len && s[i] == '0') {
        i++;
    } else if (i < len && s[i] >= '1' && s[i] <= '9') {
        while (i < len && is_digit(s[i]))
            i++;
    } else {
        *end = i;
        return VEIL_JSON_SYNTAX;
    }
    if (i < len && s[i] == '.') {
        i++;
        if (i >= len || !is_digit(s[i])) {
            *end = i;
            return VEIL_JSON_SYNTAX;
        }
        while (i < len && is_digit(s[i]))
            i++;
    }
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-'))
            i++;
        if (i >= len || !is_digit(s[i])) {
            *end = i;
            return VEIL_JSON_SYNTAX;
        }
        while (i < len && is_digit(s[i]))
            i++;
    }
    *end = i;
    return VEIL_JSON_OK;
}

static veil_json_rc scan_literal(const unsigned char *s, size_t len, size_t i,
                                 size_t *end)
{
    static const char *const words[] = {"true", "false", "null"};

    for (size_t k = 0; k < sizeof words / sizeof words[0]; k++) {
        size_t n = strlen(words[k]);

        if (len - i >= n && memcmp(s + i, words[k], n) == 0) {
            *end = i + n;
            return VEIL_JSON_OK;
        }
    }
    *end = i;
    return VEIL_JSON_SYNTAX;
}

/* ---- unescaped bytes of a string --------------------------------------- */

/* Yields the unescaped bytes of a string already checked by scan_string. */
typedef struct unesc {
    const unsigned char *p; /* next byte of the text */
    unsigned char pend[4];  /* bytes of the current escape still to give */
    int n_pend, i_pend;
} unesc;

static void unesc_init(unesc *u, const char *text, size_t open_quote)
{
    u->p = (const unsigned char *)text + open_quote + 1;
    u->n_pend = u->i_pend = 0;
}

static int put_utf8(unsigned char *out, unsigned long cp)
{
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xc0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) { /* lone surrogates too: see the top of the file */
        out[0] = (unsigned char)(0xe0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (unsigned char)(0xf0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

/* The next unescaped byte, or -1 at the closing quote. */
static int unesc_next(unesc *u)
{
    unsigned long cp;

    if (u->i_pend < u->n_pend)
        return u->pend[u->i_pend++];
    if (*u->p == '"')
        return -1;
    if (*u->p != '\\')
        return *u->p++;
    switch (u->p[1]) {
    case 'b':
        u->p += 2;
        return '\b';
    case 'f':
        u->p += 2;
        return '\f';
    case 'n':
        u->p += 2;
        return '\n';
    case 'r':
        u->p += 2;
        return '\r';
    case 't':
        u->p += 2;
        return '\t';
    case 'u':
        break;
    default: /* " \ / */
        u->p += 2;
        return u->p[-1];
    }
    cp = (unsigned long)hex4(u->p + 2);
    u->p += 6;
    if (cp >= 0xd800 && cp <= 0xdbff && u->p[0] == '\\' && u->p[1] == 'u') {
        long lo = hex4(u->p + 2);

        if (lo >= 0xdc00 && lo <= 0xdfff) {
            cp = 0x10000 + ((cp - 0xd800) << 10) + ((unsigned long)lo - 0xdc00);
            u->p += 6;
        }
    }
    u->n_pend = put_utf8(u->pend, cp);
    u->i_pend = 1;
    return u->pend[0];
}

/* Compares two checked strings (offsets of their opening quotes). */
static int string_cmp(const char *text, size_t a, size_t b)
{
    unesc ua, ub;

    unesc_init(&ua, text, a);
    unesc_init(&ub, text, b);
    for (;;) {
        int ca = unesc_next(&ua), cb = unesc_next(&ub);

        if (ca != cb)
            return ca < cb ? -1 : 1;
        if (ca < 0)
            return 0;
    }
}

static int key_is(const char *text, const veil_json_member *m, const char *name,
                  int nocase)
{
    const unsigned char *n = (const unsigned char *)name;
    unesc u;
    int c;

    unesc_init(&u, text, m->key);
    while ((c = unesc_next(&u)) >= 0) {
        int w = *n++;

        if (nocase) {
            if (c >= 'A' && c <= 'Z')
                c += 'a' - 'A';
            if (w >= 'A' && w <= 'Z')
                w += 'a' - 'A';
        }
        if (w == 0 || c != w)
            return 0;
    }
    return *n == 0;
}

int veil_json_key_is(const char *text, const veil_json_member *m,
                     const char *name)
{
    return key_is(text, m, name, 0);
}

int veil_json_key_is_nocase(const char *text, const veil_json_member *m,
                            const char *name)
{
    return key_is(text, m, name, 1);
}

long veil_json_string_value(const char *text, const veil_json_member *m,
                            char *out, size_t size)
{
    unesc u;
    size_t n = 0;
    int c;

    if (size == 0 || text[m->value] != '"')
        return -1;
    unesc_init(&u, text, m->value);
    while ((c = unesc_next(&u)) >= 0) {
        if (n + 1 >= size)
            return -1;
        out[n++] = (char)c;
    }
    out[n] = '\0';
    return (long)n;
}

/* ---- the scan ---------------------------------------------------------- */

typedef struct keys {
    uint32_t *at; /* offsets of the top-level keys' opening quotes */
    size_t n, cap;
} keys;

static int keys_add(keys *k, size_t at)
{
    if (k->n == k->cap) {
        size_t cap = k->cap ? k->cap * 2 : 64;
        uint32_t *a = realloc(k->at, cap * sizeof *a);

        if (a == NULL)
            return 0;
        k->at = a;
        k->cap = cap;
    }
    k->at[k->n++] = (uint32_t)at;
    return 1;
}

static int key_order(const void *a, const void *b, void *text)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    int c = string_cmp(text, x, y);

    /* equal keys in text order, so the later one is reported */
    return c ? c : (x < y ? -1 : x > y);
}

/* The first of two equal keys found, as the offset of the later one. */
static int find_duplicate(const char *text, keys *k, size_t *where)
{
    int found = 0;

    if (k->n < 2)
        return 0;
    qsort_r(k->at, k->n, sizeof *k->at, key_order, (void *)text);
    for (size_t i = 1; i < k->n; i++) {
        if (string_cmp(text, k->at[i - 1], k->at[i]) == 0 &&
            (!found || k->at[i] < *where)) {
            *where = k->at[i];
            found = 1;
        }
    }
    return found;
}

#define STACK_BYTES (VEIL_JSON_MAX_DEPTH / 8)

/* The state of one scan: where it is (i, end), the stack of open
 * containers, and what the top-level object's members are so far. */
typedef struct scanner {
    const unsigned char *s;
    const char *text;
    size_t len;
    int want_object; /* the value must be an object; report its members */
    veil_json_member_fn fn;
    void *ctx;
    size_t *open, *close, *where;
    unsigned char stack[STACK_BYTES]; /* bit set: object */
    unsigned depth;
    size_t i, end;
    veil_json_member m;
    size_t prev_end;
    keys k;
    veil_json_rc rc;
} scanner;

/* What the scan looks at next. */
typedef enum scan_step {
    AT_VALUE,    /* a value starts at i */
    AFTER_VALUE, /* a value ended just before end */
    AT_MEMBER,   /* a key starts at i, inside an object */
    SCAN_DONE,
    SCAN_FAILED
} scan_step;

static scan_step scan_fail(scanner *sc, veil_json_rc code, size_t at)
{
    sc->rc = code;
    *sc->where = at;
    return SCAN_FAILED;
}

static int top_is_object(const scanner *sc)
{
    return (sc->stack[(sc->depth - 1) / 8] >> ((sc->depth - 1) % 8)) & 1u;
}

/* An object or an array opens at i. */
static scan_step open_container(scanner *sc)
{
    const unsigned char *s = sc->s;
    int obj = s[sc->i] == '{';
    unsigned d = sc->depth;

    if (d == VEIL_JSON_MAX_DEPTH)
        return scan_fail(sc, VEIL_JSON_DEPTH, sc->i);
    if (d == 0) {
        sc->prev_end = sc->i + 1;
        if (sc->open)
            *sc->open = sc->i;
    }
    if (obj)
        sc->stack[d / 8] |= (unsigned char)(1u << (d % 8));
    else
        sc->stack[d / 8] &= (unsigned char)~(1u << (d % 8));
    sc->depth++;
    sc->i = skip_ws(s, sc->len, sc->i + 1);
    if (sc->i < sc->len && s[sc->i] == (obj ? '}' : ']')) {
        sc->end = sc->i + 1;
        sc->depth--;
        return AFTER_VALUE;
    }
    return obj ? AT_MEMBER : AT_VALUE;
}

static scan_step at_value(scanner *sc)
{
    veil_json_rc rc;

    if (sc->i >= sc->len)
        return scan_fail(sc, VEIL_JSON_SYNTAX, sc->i);
    switch (sc->s[sc->i]) {
    case '{':
    case '[':
        return open_container(sc);
    case '"':
        rc = scan_string(sc->s, sc->len, sc->i, &sc->end);
        break;
    case 't':
    case 'f':
    case 'n':
        rc = scan_literal(sc->s, sc->len, sc->i, &sc->end);
        break;
    default:
        rc = scan_number(sc->s, sc->len, sc->i, &sc->end);
        break;
    }
    return rc == VEIL_JSON_OK ? AFTER_VALUE : scan_fail(sc, rc, sc->end);
}

static scan_step after_value(scanner *sc)
{
    const unsigned char *s = sc->s;
    size_t end = sc->end;

    if (sc->depth == 0) {
        if (sc->want_object && sc->close)
            *sc->close = end - 1;
        sc->i = skip_ws(s, sc->len, end);
        return sc->i == sc->len ? SCAN_DONE
                                : scan_fail(sc, VEIL_JSON_SYNTAX, sc->i);
    }
    if (sc->want_object && sc->depth == 1) {
        sc->m.value_end = end;
        sc->m.prev_end = sc->prev_end;
        sc->prev_end = end;
        if (sc->fn && sc->fn(sc->ctx, sc->text, &sc->m) != 0)
            return scan_fail(sc, VEIL_JSON_STOPPED, sc->m.key);
    }
    sc->i = skip_ws(s, sc->len, end);
    if (sc->i >= sc->len)
        return scan_fail(sc, VEIL_JSON_SYNTAX, sc->i);
    if (s[sc->i] == ',') {
        sc->i = skip_ws(s, sc->len, sc->i + 1);
        return top_is_object(sc) ? AT_MEMBER : AT_VALUE;
    }
    if (s[sc->i] == (top_is_object(sc) ? '}' : ']')) {
        sc->end = sc->i + 1;
        sc->depth--;
        return AFTER_VALUE;
    }
    return scan_fail(sc, VEIL_JSON_SYNTAX, sc->i);
}

static scan_step at_member(scanner *sc)
{
    const unsigned char *s = sc->s;
    int top = sc->want_object && sc->depth == 1;
    veil_json_rc rc;

    if (sc->i >= sc->len || s[sc->i] != '"')
        return scan_fail(sc, VEIL_JSON_SYNTAX, sc->i);
    if ((rc = scan_string(s, sc->len, sc->i, &sc->end)) != VEIL_JSON_OK)
        return scan_fail(sc, rc, sc->end);
    if (top) {
        if (!keys_add(&sc->k, sc->i))
            return scan_fail(sc, VEIL_JSON_NOMEM, sc->i);
        sc->m.key = sc->i;
        sc->m.key_end = sc->end;
    }
    sc->i = skip_ws(s, sc->len, sc->end);
    if (sc->i >= sc->len || s[sc->i] != ':')
        return scan_fail(sc, VEIL_JSON_SYNTAX, sc->i);
    sc->i = skip_ws(s, sc->len, sc->i + 1);
    if (top)
        sc->m.value = sc->i;
    return AT_VALUE;
}

/* The one scanning loop: a step at a time, without recursion.  With
 * want_object, the value must be an object and its members are reported
 * and their keys checked. */
static veil_json_rc scan(const char *text, size_t len, int want_object,
                         veil_json_member_fn fn, void *ctx, size_t *open,
                         size_t *close, size_t *where)
{
    size_t dummy;
    scanner sc = {.s = (const unsigned char *)text,
                  .text = text,
                  .len = len,
                  .want_object = want_object,
                  .fn = fn,
                  .ctx = ctx,
                  .open = open,
                  .close = close,
                  .where = where ? where : &dummy};
    scan_step st = AT_VALUE;

    if (len >= UINT32_MAX) {
        *sc.where = 0;
        return VEIL_JSON_TOO_BIG;
    }
    sc.i = skip_ws(sc.s, len, 0);
    if (want_object && (sc.i >= len || sc.s[sc.i] != '{'))
        st = scan_fail(&sc,
                       sc.i < len && strchr("[\"-0123456789tfn", sc.s[sc.i]) &&
                               sc.s[sc.i]
                           ? VEIL_JSON_NOT_OBJECT
                           : VEIL_JSON_SYNTAX,
                       sc.i);
    while (st != SCAN_DONE && st != SCAN_FAILED)
        st = st == AT_VALUE      ? at_value(&sc)
             : st == AFTER_VALUE ? after_value(&sc)
                                 : at_member(&sc);
    if (st == SCAN_DONE && want_object && find_duplicate(text, &sc.k, sc.where))
        sc.rc = VEIL_JSON_DUPLICATE;
    free(sc.k.at);
    return sc.rc;
}

veil_json_rc veil_json_scan_object(const char *text, size_t len,
                                   veil_json_member_fn fn, void *ctx,
                                   size_t *open, size_t *close, size_t *where)
{
    if (text == NULL) {
        if (where)
            *where = 0;
        return VEIL_JSON_SYNTAX;
    }
    return scan(text, len, 1, fn, ctx, open, close, where);
}

veil_json_rc veil_json_scan(const char *text, size_t len, size_t *where)
{
    if (text == NULL) {
        if (where)
            *where = 0;
        return VEIL_JSON_SYNTAX;
    }
    return scan(text, len, 0, NULL, NULL, NULL, NULL, where);
}

/* ---- editing ----------------------------------------------------------- */

/* 1 when b is the member right after a. */
static int adjacent(const unsigned char *s, size_t len,
                    const veil_json_member *a, const veil_json_member *b)
{
    size_t i = skip_ws(s, len, a->value_end);

    return i < len && s[i] == ',' && skip_ws(s, len, i + 1) == b->key;
}

size_t veil_json_remove_members(const char *text, size_t len,
                                const veil_json_member *rm, size_t n,
                                veil_json_edit *out)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t run = n, k = 0, i;

    if (n == 0)
        return 0;
    /* The members removed at the end of the object (a run of neighbours
     * up to the last) go with the comma before them; any other one goes
     * with the comma after it. */
    i = skip_ws(s, len, rm[n - 1].value_end);
    if (i < len && s[i] == '}') {
        run = n - 1;
        while (run > 0 && adjacent(s, len, &rm[run - 1], &rm[run]))
            run--;
    }
    for (; k < run; k++) {
        i = skip_ws(s, len, rm[k].value_end); /* at its comma */
        out[k] = (veil_json_edit){rm[k].key, skip_ws(s, len, i + 1) - rm[k].key,
                                  NULL, 0};
    }
    if (run < n) {
        out[k] = (veil_json_edit){
            rm[run].prev_end, rm[n - 1].value_end - rm[run].prev_end, NULL, 0};
        k++;
    }
    return k;
}

size_t veil_json_spliced_len(size_t len, const veil_json_edit *edits, size_t n)
{
    size_t out = len, pos = 0;

    for (size_t k = 0; k < n; k++) {
        if (edits[k].at < pos || edits[k].at > len ||
            edits[k].drop > len - edits[k].at ||
            out - edits[k].drop > SIZE_MAX - edits[k].insert_len - 1)
            return (size_t)-1;
        pos = edits[k].at + edits[k].drop;
        out = out - edits[k].drop + edits[k].insert_len;
    }
    return out;
}

void veil_json_splice(const char *text, size_t len, const veil_json_edit *edits,
                      size_t n, char *out)
{
    size_t pos = 0, o = 0;

    for (size_t k = 0; k < n; k++) {
        memcpy(out + o, text + pos, edits[k].at - pos);
        o += edits[k].at - pos;
        if (edits[k].insert_len)
            memcpy(out + o, edits[k].insert, edits[k].insert_len);
        o += edits[k].insert_len;
        pos = edits[k].at + edits[k].drop;
    }
    memcpy(out + o, text + pos, len - pos);
}
