/* libFuzzer harness: the decrypted-request scan: the JSON scanner
 * (protocol/json_scan.c), which checks a chat request without building a
 * tree, finds the members of its top-level object and refuses a key that
 * appears twice, so that veild forwards byte for byte what it checked; and
 * veild's scan of a request on top of it (gw_request_scan,
 * gateway/upstream.c), with a model that has a prompt-cache salt field.
 *
 * The input is the text.  Besides the sanitizers, the harness checks what
 * the scanner promises:
 *   - a text scan_object accepts, scan accepts too;
 *   - the members it reports lie in order inside the object, each key a
 *     string and each value non-empty;
 *   - no two keys of an accepted object are equal once unescaped (keys
 *     compared as byte strings, U+0000 included);
 *   - removing some members (chosen by the input's length) with
 *     veil_json_remove_members and veil_json_splice leaves an object the
 *     scanner accepts, with exactly the other members' keys in order;
 *   - a request gw_request_scan accepts is an object the scanner accepts,
 *     with as many members, and its model (when it has one) fits. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "gateway.h"
#include "json_scan.h"

#define MAX_MEMBERS 512
#define MAX_KEY 256

typedef struct {
    veil_json_member m[MAX_MEMBERS];
    size_t n, dropped;
} members;

static int collect(void *ctx, const char *text, const veil_json_member *m)
{
    members *ms = ctx;
    (void)text;
    if (ms->n < MAX_MEMBERS)
        ms->m[ms->n++] = *m;
    else
        ms->dropped++;
    return 0;
}

/* The key of m unescaped into out; its length, or -1 when too long. */
static long key_of(const char *text, const veil_json_member *m, char *out)
{
    veil_json_member k = *m;
    k.value = m->key;
    k.value_end = m->key_end;
    return veil_json_string_value(text, &k, out, MAX_KEY);
}

static void check_members(const char *t, size_t open, size_t close,
                          const members *ms)
{
    size_t prev = open + 1;
    for (size_t i = 0; i < ms->n; i++) {
        const veil_json_member *m = &ms->m[i];
        if (m->prev_end != prev || m->key < m->prev_end ||
            m->key_end <= m->key + 1 || t[m->key] != '"' ||
            t[m->key_end - 1] != '"' || m->value < m->key_end ||
            m->value_end <= m->value || m->value_end > close)
            abort();
        prev = m->value_end;
    }
    if (ms->dropped)
        return;
    /* distinct keys */
    static char a[MAX_KEY], b[MAX_KEY];
    for (size_t i = 0; i < ms->n; i++) {
        long la = key_of(t, &ms->m[i], a);
        if (la < 0)
            continue;
        for (size_t j = i + 1; j < ms->n; j++) {
            long lb = key_of(t, &ms->m[j], b);
            if (lb == la && memcmp(a, b, (size_t)la) == 0)
                abort(); /* accepted with a key twice */
        }
    }
}

static void check_removal(const char *t, size_t len, const members *ms)
{
    veil_json_member rm[MAX_MEMBERS];
    veil_json_edit ed[MAX_MEMBERS];
    size_t nrm = 0, keep[MAX_MEMBERS], nkeep = 0;
    static char a[MAX_KEY], b[MAX_KEY];

    if (ms->dropped || ms->n == 0)
        return;
    for (size_t i = 0; i < ms->n; i++) {
        if ((len >> (i % 16)) & 1)
            rm[nrm++] = ms->m[i];
        else
            keep[nkeep++] = i;
    }
    size_t ne = veil_json_remove_members(t, len, rm, nrm, ed);
    size_t out_len = veil_json_spliced_len(len, ed, ne);
    if (ne > nrm || out_len == (size_t)-1)
        abort();
    char *out = malloc(out_len ? out_len : 1);
    if (out == NULL)
        return;
    veil_json_splice(t, len, ed, ne, out);
    members after = {.n = 0};
    veil_json_rc rc =
        veil_json_scan_object(out, out_len, collect, &after, NULL, NULL, NULL);
    if (rc != VEIL_JSON_OK || after.n != nkeep)
        abort(); /* what is left must still be the object, less the members */
    for (size_t i = 0; i < nkeep; i++) {
        long la = key_of(t, &ms->m[keep[i]], a);
        long lb = key_of(out, &after.m[i], b);
        if (la != lb || (la > 0 && memcmp(a, b, (size_t)la) != 0))
            abort();
    }
    free(out);
}

static gw_config cfg;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[256];
    gw_config_init(&cfg);
    if (gw_config_set(&cfg, "model", "echo=echo", err, sizeof err) != 0 ||
        gw_config_set(&cfg, "model", "salted=echo,cache-salt=cache_salt", err,
                      sizeof err) != 0)
        fuzz_die(err);
    return 0;
}

static void check_request(const char *t, size_t size, veil_json_rc rc,
                          const members *ms)
{
    static gw_request rq;
    char why[256];
    if (gw_request_scan(&cfg, t, size, &rq, why, sizeof why) != 0) {
        if (why[0] == '\0')
            abort(); /* a refusal says why */
        return;
    }
    if (rc != VEIL_JSON_OK || (!ms->dropped && rq.members != ms->n) ||
        rq.model_len > 255 || t[rq.close] != '}')
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *t = (const char *)data;
    static members ms;
    size_t open = 0, close = 0, where = 0;

    ms.n = ms.dropped = 0;
    veil_json_rc rc =
        veil_json_scan_object(t, size, collect, &ms, &open, &close, &where);
    veil_json_rc any = veil_json_scan(t, size, NULL);
    if (veil_json_rc_text(rc) == NULL)
        abort();
    if (rc == VEIL_JSON_OK) {
        if (any != VEIL_JSON_OK || open >= close || close >= size ||
            t[open] != '{' || t[close] != '}')
            abort();
        check_members(t, open, close, &ms);
        check_removal(t, size, &ms);
    } else if (rc != VEIL_JSON_STOPPED && rc != VEIL_JSON_NOMEM &&
               where > size) {
        abort(); /* the offending byte is in the text */
    }
    check_request(t, size, rc, &ms);
    return 0;
}
