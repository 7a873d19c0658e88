/* The protocol test server (see fixture.h). */
#include "fixture.h"
#include "openai.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

#include "harness.h"
#include "package.h"
#include "stub_http.h"

#define FX_KEY_PATH "/pki/public_key"
#define FX_CHAT_PATH "/v1/chat/secure_completion"
/* Request bodies above this are refused (a 10 MiB plaintext in base64
 * inside the package stays well below it). */
#define FX_MAX_BODY (32u * 1024u * 1024u)
#define FX_MODEL_PREFIX "fixture/"

typedef struct fx_entry {
    fx_reply r; /* strings point at the copies below */
    char *detail, *retry_after, *raw_body, *plaintext;
    struct fx_entry *next;
} fx_entry;

struct fx_server {
    stub_http http; /* the daemon (tests/stub_http.c) */
    veil_engine *e;
    unsigned short port;
    char url[64];
    int verbose;
    char *tls_cert, *tls_key;

    pthread_mutex_t lock; /* everything below */
    pthread_cond_t cond;  /* signalled when stopping */
    int stopping;
    veil_key *key;
    char *served_pem;
    char *api_key;
    fx_entry *head, *tail;
    size_t queued;
    fx_request *recs;
    size_t nrec, caprec;
    unsigned key_fetches, posts;
    unsigned gen; /* bumped by fx_reset_counters */
    unsigned long answers;
    char *last_sealed; /* the last 200 package sent (fx_reply.replay) */

    pthread_mutex_t other_lock; /* other[]: keys for FX_TAMPER_WRAPPED_KEY */
    veil_key *other[3];         /* 2048, 3072, 4096 bits */
};

/* Where a POST is recorded: its index in recs, valid while gen is the
 * server's (fx_reset_counters starts a new generation, so that a late
 * answer never writes into a later test's record). */
typedef struct fx_slot {
    long idx; /* -1: not recorded */
    unsigned gen;
} fx_slot;

/* ---- small helpers ------------------------------------------------------ */

static const char *const tamper_names[] = {
    NULL,           "ciphertext",    "tag",
    "wrapped-key",  "missing-field", "missing-nonce",
    "bad-base64",   "not-json",      "nonce-size",
    "outer-fields",
};

const char *fx_tamper_name(fx_tamper t)
{
    if ((int)t <= 0 ||
        (size_t)t >= sizeof tamper_names / sizeof tamper_names[0])
        return NULL;
    return tamper_names[t];
}

int fx_tamper_parse(const char *name)
{
    for (size_t i = 1; i < sizeof tamper_names / sizeof tamper_names[0]; i++)
        if (strcmp(name, tamper_names[i]) == 0)
            return (int)i;
    return -1;
}

void fx_reply_init(fx_reply *r)
{
    memset(r, 0, sizeof *r);
    r->tag_mode = FX_TAG_AS_REQUEST;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double real_seconds(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void copy_str(char *dst, size_t size, const char *src)
{
    snprintf(dst, size, "%s", src ? src : "");
}

/* Wipes every string in a tree (it may hold a prompt). */
static void json_wipe(cJSON *j)
{
    for (cJSON *c = j; c; c = c->next) {
        if (c->valuestring)
            explicit_bzero(c->valuestring, strlen(c->valuestring));
        if (c->child)
            json_wipe(c->child);
    }
}

static void json_wipe_delete(cJSON *j)
{
    if (j == NULL)
        return;
    json_wipe(j);
    cJSON_Delete(j);
}

static void fx_log(fx_server *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void fx_log(fx_server *s, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    int n;

    if (!s->verbose)
        return;
    n = snprintf(line, sizeof line, "fixture: ");
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    n = (int)strlen(line);
    line[n] = '\n';
    line[n + 1] = '\0';
    fputs(line, stderr); /* one call: lines of threads do not mix */
}

/* Waits up to ms milliseconds; returns early when the server stops. */
static void wait_ms(fx_server *s, unsigned ms)
{
    struct timespec dl;

    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += ms / 1000;
    dl.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->lock);
    while (!s->stopping) {
        int rc = pthread_cond_timedwait(&s->cond, &s->lock, &dl);

        if (rc == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&s->lock);
}

/* ---- answers ------------------------------------------------------------ */

/* The record of slot, or NULL when it is gone.  Call with s->lock held. */
static fx_request *slot_rec(fx_server *s, const fx_slot *slot)
{
    if (slot == NULL || slot->idx < 0 || slot->gen != s->gen ||
        (size_t)slot->idx >= s->nrec)
        return NULL;
    return &s->recs[slot->idx];
}

/* Queues body (copied) with status; records the status in slot (when not
 * NULL) first, so a test that reads the record after its call returned
 * sees it. */
static enum MHD_Result send_body(fx_server *s, struct MHD_Connection *conn,
                                 const fx_slot *slot, int status,
                                 const char *body, size_t len,
                                 const char *content_type,
                                 const char *retry_after)
{
    if (slot) {
        fx_request *rec;

        pthread_mutex_lock(&s->lock);
        if ((rec = slot_rec(s, slot)) != NULL)
            rec->status = status;
        pthread_mutex_unlock(&s->lock);
    }
    return stub_send(conn, (unsigned)status, body, len, content_type,
                     retry_after);
}

/* {"detail": detail} with status. */
static enum MHD_Result send_detail(fx_server *s, struct MHD_Connection *conn,
                                   const fx_slot *slot, int status,
                                   const char *detail, const char *retry_after)
{
    cJSON *j = cJSON_CreateObject();
    char *text = NULL;
    enum MHD_Result ret;

    if (j && cJSON_AddStringToObject(j, "detail", detail))
        text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (text == NULL)
        return MHD_NO;
    fx_log(s, "answer %d (%s)", status, detail);
    ret = send_body(s, conn, slot, status, text, strlen(text),
                    "application/json", retry_after);
    free(text);
    return ret;
}

/* The content of the last user message ("" when there is none; a list of
 * parts joined from its text parts: protocol/openai.c), and in
 * *prompt_chars the length of every string content.  malloc'd; NULL: no
 * memory. */
static char *last_user_content(const cJSON *messages, size_t *prompt_chars)
{
    const cJSON *m;
    size_t total = 0;

    cJSON_ArrayForEach(m, messages)
    {
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");

        if (cJSON_IsString(content))
            total += strlen(content->valuestring);
    }
    *prompt_chars = total;
    return veil_openai_content_text(veil_openai_last_user(messages));
}

/* The chat.completion answer to req (a parsed request).  NULL: no memory. */
static cJSON *make_answer(fx_server *s, const cJSON *req, const char *model,
                          const char *payload_id, const char *tier)
{
    const cJSON *messages = cJSON_GetObjectItemCaseSensitive(req, "messages");
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(req, "tools");
    cJSON *a = cJSON_CreateObject(), *choices, *choice, *msg, *usage, *meta;
    cJSON *mp;
    char id[64], *content = NULL;
    size_t prompt_chars = 0;
    long prompt_tokens, completion_tokens;
    unsigned long n;
    veil_memory_status ms;
    int ok = a != NULL;

    pthread_mutex_lock(&s->lock);
    n = ++s->answers;
    pthread_mutex_unlock(&s->lock);
    snprintf(id, sizeof id, "chatcmpl-fixture-%lu", n);
    content = last_user_content(messages, &prompt_chars);
    ok = ok && content;
    ok = ok && cJSON_AddStringToObject(a, "id", id);
    ok = ok && cJSON_AddStringToObject(a, "object", "chat.completion");
    ok = ok && cJSON_AddNumberToObject(a, "created", (double)time(NULL));
    ok = ok && cJSON_AddStringToObject(a, "model", model);
    ok = ok && (choices = cJSON_AddArrayToObject(a, "choices")) != NULL;
    ok = ok && (choice = cJSON_CreateObject()) != NULL &&
         cJSON_AddItemToArray(choices, choice);
    ok = ok && cJSON_AddNumberToObject(choice, "index", 0);
    ok = ok && (msg = cJSON_AddObjectToObject(choice, "message")) != NULL;
    ok = ok && cJSON_AddStringToObject(msg, "role", "assistant");
    if (ok && cJSON_IsArray(tools) && cJSON_GetArraySize(tools) > 0) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetArrayItem(tools, 0), "function");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
        cJSON *calls, *call, *f;

        ok = ok && cJSON_AddNullToObject(msg, "content");
        ok = ok && (calls = cJSON_AddArrayToObject(msg, "tool_calls"));
        ok = ok && (call = cJSON_CreateObject()) != NULL &&
             cJSON_AddItemToArray(calls, call);
        ok = ok && cJSON_AddStringToObject(call, "id", "call_fixture_1");
        ok = ok && cJSON_AddStringToObject(call, "type", "function");
        ok = ok && (f = cJSON_AddObjectToObject(call, "function")) != NULL;
        ok = ok && cJSON_AddStringToObject(
                       f, "name",
                       cJSON_IsString(name) ? name->valuestring : "unknown");
        ok = ok && cJSON_AddStringToObject(f, "arguments", "{}");
        ok = ok &&
             cJSON_AddStringToObject(choice, "finish_reason", "tool_calls");
        completion_tokens = 5;
    } else {
        ok = ok && cJSON_AddStringToObject(msg, "content", content);
        ok = ok && cJSON_AddStringToObject(choice, "finish_reason", "stop");
        completion_tokens = content ? (long)(strlen(content) / 4 + 1) : 1;
    }
    if (ok && strstr(model, "reason"))
        ok = cJSON_AddStringToObject(msg, "reasoning_content",
                                     "fixture reasoning") != NULL;
    prompt_tokens = (long)(prompt_chars / 4 + 1);
    ok = ok && (usage = cJSON_AddObjectToObject(a, "usage")) != NULL;
    ok = ok &&
         cJSON_AddNumberToObject(usage, "prompt_tokens", (double)prompt_tokens);
    ok = ok && cJSON_AddNumberToObject(usage, "completion_tokens",
                                       (double)completion_tokens);
    ok = ok &&
         cJSON_AddNumberToObject(usage, "total_tokens",
                                 (double)(prompt_tokens + completion_tokens));
    veil_memory_status_get(&ms);
    ok = ok && (meta = cJSON_AddObjectToObject(a, "_metadata")) != NULL;
    ok = ok && cJSON_AddStringToObject(meta, "payload_id", payload_id);
    ok = ok && cJSON_AddStringToObject(meta, "security_tier",
                                       tier && *tier ? tier : "standard");
    ok = ok && cJSON_AddStringToObject(meta, "response_status", "success");
    ok = ok && (mp = cJSON_AddObjectToObject(meta, "memory_protection"));
    ok = ok && cJSON_AddStringToObject(mp, "platform", "linux");
    ok = ok && cJSON_AddBoolToObject(mp, "memory_locking", ms.locking != 0);
    ok = ok && cJSON_AddBoolToObject(mp, "secure_zeroing", ms.zeroing != 0);
    ok = ok && cJSON_AddBoolToObject(mp, "core_dump_prevention",
                                     ms.core_dumps_off != 0);
    /* maximum: an attestation in NOMYO's shape, which is not veil's (no
     * "format"): a client without a trust file accepts it with a warning,
     * since it cannot check a foreign quote, but refuses none at all. */
    if (ok && tier && strcmp(tier, "maximum") == 0) {
        cJSON *ta = cJSON_AddObjectToObject(meta, "tpm_attestation");
        ok = ta && cJSON_AddBoolToObject(ta, "is_available", 1) &&
             cJSON_AddStringToObject(ta, "pcr_banks", "sha256:0,7,10") &&
             cJSON_AddObjectToObject(ta, "pcr_values") &&
             cJSON_AddStringToObject(ta, "aik_pubkey_b64", "");
    }
    if (content) {
        explicit_bzero(content, strlen(content));
        free(content);
    }
    if (!ok) {
        json_wipe_delete(a);
        return NULL;
    }
    return a;
}

/* A key of `bits` bits other than the client's, for FX_TAMPER_WRAPPED_KEY
 * (made once per size). */
static veil_key *other_key(fx_server *s, unsigned bits)
{
    int i = bits >= 4096 ? 2 : bits >= 3072 ? 1 : 0;
    veil_key *k;

    pthread_mutex_lock(&s->other_lock);
    if (s->other[i] == NULL) {
        veil_keygen_params kp = {.type = VEIL_KEY_RSA,
                                 .bits = 2048u + 1024u * (unsigned)i};

        if (veil_key_generate(s->e, "software", &kp, &s->other[i]) != VEIL_OK) {
            fprintf(stderr, "fixture: cannot generate a second key: %s\n",
                    veil_last_error()->message);
            s->other[i] = NULL;
        }
    }
    k = s->other[i];
    pthread_mutex_unlock(&s->other_lock);
    return k;
}

/* Applies t to a sealed package (JSON text); returns the new text
 * (malloc'd) or NULL. */
static char *tamper_package(const char *json, fx_tamper t, veil_tag_mode mode)
{
    cJSON *p = cJSON_Parse(json);
    cJSON *ep =
        p ? cJSON_GetObjectItemCaseSensitive(p, "encrypted_payload") : NULL;
    const char *field = NULL;
    cJSON *item;
    uint8_t *raw = NULL;
    size_t raw_len = 0;
    char *out = NULL, *b64;
    int ok = 1;

    if (t == FX_TAMPER_NOT_JSON) {
        cJSON_Delete(p);
        return strdup("<html><body>fixture: this is not JSON</body></html>");
    }
    if (!cJSON_IsObject(ep)) {
        cJSON_Delete(p);
        return NULL;
    }
    switch (t) {
    case FX_TAMPER_CIPHERTEXT:
        field = "ciphertext";
        break;
    case FX_TAMPER_TAG:
        field = mode == VEIL_TAG_SEPARATE ? "tag" : "ciphertext";
        break;
    case FX_TAMPER_MISSING_FIELD:
        cJSON_DeleteItemFromObjectCaseSensitive(p, "encrypted_aes_key");
        break;
    case FX_TAMPER_MISSING_NONCE:
        cJSON_DeleteItemFromObjectCaseSensitive(ep, "nonce");
        break;
    case FX_TAMPER_BAD_BASE64:
        ok = cJSON_ReplaceItemInObjectCaseSensitive(
            ep, "ciphertext", cJSON_CreateString("not*base64!?"));
        break;
    case FX_TAMPER_NONCE_SIZE:
        ok = cJSON_ReplaceItemInObjectCaseSensitive(
            ep, "nonce", cJSON_CreateString("AAECAwQFBgc=")); /* 8 bytes */
        break;
    case FX_TAMPER_OUTER_FIELDS:
        cJSON_DeleteItemFromObjectCaseSensitive(p, "algorithm");
        cJSON_DeleteItemFromObjectCaseSensitive(p, "processed_at");
        ok = cJSON_AddStringToObject(p, "algorithm", "fixture-forged") &&
             cJSON_AddNumberToObject(p, "processed_at", 12345);
        break;
    default:
        break;
    }
    if (field) {
        item = cJSON_GetObjectItemCaseSensitive(ep, field);
        ok = cJSON_IsString(item) &&
             veil_b64_decode(item->valuestring, strlen(item->valuestring), &raw,
                             &raw_len) == VEIL_OK &&
             raw_len > 0;
        if (ok) {
            /* the tag is the last 16 bytes when appended; byte 0 is
             * always ciphertext (answers are never empty) */
            if (t == FX_TAMPER_TAG)
                raw[raw_len - 1] ^= 0x01;
            else
                raw[0] ^= 0x01;
            b64 = veil_b64_encode(raw, raw_len);
            ok = b64 && cJSON_SetValuestring(item, b64) != NULL;
            free(b64);
        }
        free(raw);
    }
    if (ok)
        out = cJSON_PrintUnformatted(p);
    cJSON_Delete(p);
    return out;
}

/* ---- POST /v1/chat/secure_completion ------------------------------------ */

/* Terminal escapes, C1 controls and bidi overrides in an answer: a clear
 * screen, a window title, a forged line and a right-to-left override. */
#define FX_ESCAPES                                                             \
    "\x1b]0;fixture title\x07\x1b[2J\x1b[31mred\x1b[0m\r"                      \
    "verdict: VALID\n\xc2\x9b"                                                 \
    "1mC1\xe2\x80\xae"                                                         \
    "desrever\xe2\x80\xac\tend"

/* The plaintext of a "fixture/hostile-KIND" answer (malloc'd), or NULL
 * for an unknown KIND (*bad set) or no memory. */
static char *hostile_answer(const char *kind, int *bad)
{
    static const char head[] =
        "{\"id\":\"chatcmpl-fixture-hostile\",\"object\":\"chat.completion\","
        "\"model\":\"fixture/hostile\",\"choices\":[{\"index\":0,"
        "\"message\":{\"role\":\"assistant\",\"content\":";
    static const char tail[] = "},\"finish_reason\":\"stop\"}]";
    char *out = NULL;

    *bad = 0;
    if (strcmp(kind, "escapes") == 0) {
        cJSON *c = cJSON_CreateString(FX_ESCAPES);
        char *t = c ? cJSON_PrintUnformatted(c) : NULL;
        size_t n = t ? strlen(head) + strlen(t) + strlen(tail) + 2 : 0;

        if (t && (out = malloc(n)) != NULL)
            snprintf(out, n, "%s%s%s}", head, t, tail);
        free(t);
        cJSON_Delete(c);
    } else if (strcmp(kind, "badutf8") == 0) {
        size_t n = strlen(head) + strlen(tail) + 64;

        if ((out = malloc(n)) != NULL)
            snprintf(out, n, "%s\"bad \xff\xfe bytes \xc3(\xed\xa0\x80\"%s}",
                     head, tail);
    } else if (strcmp(kind, "deep") == 0) {
        /* 400000 members in an object 900 objects deep: 2.4 MB as compact
         * JSON, over 300 MB indented (a line of 900 tabs per member) */
        const size_t depth = 900, values = 400000;
        size_t n = strlen(head) + strlen(tail) + 6 * depth + 6 * values + 64;
        char *o;

        if ((out = o = malloc(n)) != NULL) {
            o += snprintf(o, n, "%s\"deep\"%s,\"deep\":", head, tail);
            for (size_t i = 0; i < depth; i++) {
                memcpy(o, "{\"d\":", 5);
                o += 5;
            }
            *o++ = '{';
            for (size_t i = 0; i < values; i++) {
                memcpy(o, "\"a\":0,", 6);
                o += 6;
            }
            o[-1] = '}'; /* the last comma */
            memset(o, '}', depth + 1);
            o += depth + 1;
            *o = '\0';
        }
    } else {
        *bad = 1;
    }
    return out;
}

/* text with every `name` replaced by value (malloc'd; NULL: no memory). */
static char *substitute(const char *text, const char *name, const char *value)
{
    size_t nl = strlen(name), vl = strlen(value), n = 0, len;
    const char *p;
    char *out, *o;

    for (p = strstr(text, name); p; p = strstr(p + nl, name))
        n++;
    len = strlen(text) + n * vl + 1;
    if ((out = malloc(len)) == NULL)
        return NULL;
    o = out;
    p = text;
    for (;;) {
        const char *hit = strstr(p, name);
        size_t k = hit ? (size_t)(hit - p) : strlen(p);

        memcpy(o, p, k);
        o += k;
        if (hit == NULL)
            break;
        memcpy(o, value, vl);
        o += vl;
        p = hit + nl;
    }
    *o = '\0';
    return out;
}

/* A header value or "". */
static const char *header(struct MHD_Connection *conn, const char *name)
{
    const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);

    return v ? v : "";
}

/* Reads "fixture/NAME-ARG" from a model name: 1 when the model starts with
 * prefix (e.g. "fixture/status-"), with the rest in *arg. */
static int model_fault(const char *model, const char *what, const char **arg)
{
    size_t pl = strlen(FX_MODEL_PREFIX), wl = strlen(what);

    if (strncmp(model, FX_MODEL_PREFIX, pl) != 0 ||
        strncmp(model + pl, what, wl) != 0 || model[pl + wl] != '-')
        return 0;
    *arg = model + pl + wl + 1;
    return 1;
}

/* A decimal number in [min, max]; -1 when it is not one. */
static long parse_num(const char *s, long min, long max)
{
    char *end;
    long v;

    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -1;
    return v;
}

static int tier_valid(const char *t)
{
    return strcmp(t, "standard") == 0 || strcmp(t, "high") == 0 ||
           strcmp(t, "maximum") == 0;
}

static fx_entry *pop_entry(fx_server *s)
{
    fx_entry *e = s->head;

    if (e) {
        s->head = e->next;
        if (s->head == NULL)
            s->tail = NULL;
        s->queued--;
    }
    return e;
}

static void free_entry(fx_entry *e)
{
    if (e == NULL)
        return;
    free(e->detail);
    free(e->retry_after);
    free(e->raw_body);
    free(e->plaintext);
    free(e);
}

static enum MHD_Result handle_chat(fx_server *s, struct MHD_Connection *conn,
                                   stub_body *body)
{
    fx_request rec;
    fx_entry *entry;
    fx_reply none;
    const fx_reply *r;
    char *api_key = NULL, *pem = NULL, *sealed = NULL, *text = NULL;
    char detail[400];
    fx_slot slot = {-1, 0};
    fx_request *rp;
    veil_key *skey, *ckey = NULL, *recipient;
    veil_secbuf *pt = NULL;
    veil_pkg_meta meta;
    veil_key_info cinfo;
    veil_rc rc = VEIL_E_ARG;
    cJSON *req = NULL, *answer = NULL;
    const cJSON *model_j = NULL;
    const char *model = "", *arg, *auth, *tier;
    fx_tamper tamper;
    int tag_mode;
    enum MHD_Result ret;

    memset(&rec, 0, sizeof rec);
    memset(&meta, 0, sizeof meta);
    copy_str(rec.payload_id, sizeof rec.payload_id,
             header(conn, "X-Payload-ID"));
    copy_str(rec.security_tier, sizeof rec.security_tier,
             header(conn, "X-Security-Tier"));
    copy_str(rec.authorization, sizeof rec.authorization,
             header(conn, MHD_HTTP_HEADER_AUTHORIZATION));
    copy_str(rec.content_type, sizeof rec.content_type,
             header(conn, MHD_HTTP_HEADER_CONTENT_TYPE));
    rec.tag_mode = -1;
    rec.arrival_ns = mono_ns();
    rec.body_len = body->len;

    pthread_mutex_lock(&s->lock);
    s->posts++;
    if (s->nrec == s->caprec) {
        size_t cap = s->caprec ? 2 * s->caprec : 16;
        fx_request *n = realloc(s->recs, cap * sizeof *n);

        if (n) {
            s->recs = n;
            s->caprec = cap;
        }
    }
    if (s->nrec < s->caprec) {
        slot.idx = (long)s->nrec;
        slot.gen = s->gen;
        s->recs[s->nrec++] = rec;
    }
    entry = pop_entry(s);
    skey = s->key;
    api_key = dup_or_null(s->api_key);
    pthread_mutex_unlock(&s->lock);

    fx_reply_init(&none);
    r = entry ? &entry->r : &none;
    tamper = r->tamper;
    tag_mode = r->tag_mode;
    fx_log(s, "POST #%ld payload-id=%s tier=%s body=%zu bytes%s", slot.idx,
           rec.payload_id, rec.security_tier, rec.body_len,
           entry ? " (scripted)" : "");

    /* 1. the API key */
    auth = header(conn, MHD_HTTP_HEADER_AUTHORIZATION);
    if (api_key) {
        size_t al = strlen(api_key);

        if (strncmp(auth, "Bearer ", 7) != 0 || strlen(auth + 7) != al ||
            memcmp(auth + 7, api_key, al) != 0) {
            ret = send_detail(s, conn, &slot, 401,
                              "fixture: invalid or missing API key", NULL);
            goto done;
        }
    }
    /* 2. scripted delay, a dropped connection, replays and raw bodies */
    if (r->delay_ms)
        wait_ms(s, r->delay_ms);
    if (r->drop) {
        fx_log(s, "connection dropped (scripted)");
        ret = MHD_NO; /* closes the connection */
        goto done;
    }
    if (r->replay) {
        char *old;

        pthread_mutex_lock(&s->lock);
        old = dup_or_null(s->last_sealed);
        pthread_mutex_unlock(&s->lock);
        if (old == NULL) {
            ret = send_detail(s, conn, &slot, 500,
                              "fixture: no answer to replay yet", NULL);
            goto done;
        }
        fx_log(s, "answer 200 (scripted replay)");
        ret = send_body(s, conn, &slot, 200, old, strlen(old),
                        "application/json", NULL);
        free(old);
        goto done;
    }
    if (r->raw_body) {
        int st = r->status ? r->status : 200;

        fx_log(s, "answer %d (scripted raw body)", st);
        ret = send_body(s, conn, &slot, st, r->raw_body, strlen(r->raw_body),
                        "application/json", r->retry_after);
        goto done;
    }
    /* 3. open the package (also to record what it was) */
    if (body->too_large) {
        ret = send_detail(s, conn, &slot, 413, "fixture: request too large",
                          NULL);
        goto done;
    }
    rc = veil_pkg_open(s->e, skey, body->data ? body->data : "", body->len, &pt,
                       &meta);
    if (rc == VEIL_E_ARG)
        snprintf(detail, sizeof detail, "invalid request package: %s",
                 veil_last_error()->message);
    if (rc == VEIL_OK) {
        req = cJSON_ParseWithLength((const char *)veil_secbuf_data(pt),
                                    veil_secbuf_len(pt));
        veil_secbuf_free(pt);
        pt = NULL;
        model_j = cJSON_GetObjectItemCaseSensitive(req, "model");
        if (cJSON_IsString(model_j))
            model = model_j->valuestring;
        pthread_mutex_lock(&s->lock);
        if ((rp = slot_rec(s, &slot)) != NULL) {
            rp->opened = 1;
            rp->tag_mode = (int)meta.tag_mode;
            copy_str(rp->model, sizeof rp->model, model);
        }
        pthread_mutex_unlock(&s->lock);
    }
    /* 4. a scripted status */
    if (r->status) {
        char def[64];

        snprintf(def, sizeof def, "fixture: status %d", r->status);
        ret = send_detail(s, conn, &slot, r->status,
                          r->detail ? r->detail : def, r->retry_after);
        goto done;
    }
    /* 5. what any server checks */
    if (!veil_uuid_valid(header(conn, "X-Payload-ID"))) {
        ret =
            send_detail(s, conn, &slot, 400,
                        "fixture: X-Payload-ID is missing or not a UUID", NULL);
        goto done;
    }
    tier = header(conn, "X-Security-Tier");
    if (*tier && !tier_valid(tier)) {
        ret = send_detail(s, conn, &slot, 400,
                          "fixture: X-Security-Tier must be standard, high "
                          "or maximum",
                          NULL);
        goto done;
    }
    if (veil_percent_decode(header(conn, "X-Public-Key"), &pem) != VEIL_OK ||
        veil_key_from_public(s->e, (const uint8_t *)pem, strlen(pem), &ckey) !=
            VEIL_OK) {
        ret = send_detail(s, conn, &slot, 400,
                          "fixture: X-Public-Key is missing or not a public "
                          "key",
                          NULL);
        goto done;
    }
    if (veil_key_get_info(ckey, &cinfo) != VEIL_OK ||
        cinfo.type != VEIL_KEY_RSA || cinfo.bits < VEIL_PKG_MIN_RSA_BITS) {
        ret = send_detail(s, conn, &slot, 400,
                          "fixture: X-Public-Key is not an RSA key of at "
                          "least 2048 bits",
                          NULL);
        goto done;
    }
    if (rc == VEIL_E_DECRYPT) {
        ret = send_detail(s, conn, &slot, 400, VEIL_PKG_DECRYPT_DETAIL, NULL);
        goto done;
    }
    if (rc != VEIL_OK) {
        ret = send_detail(s, conn, &slot, rc == VEIL_E_ARG ? 400 : 500,
                          rc == VEIL_E_ARG ? detail : "fixture: internal error",
                          NULL);
        goto done;
    }
    if (!cJSON_IsObject(req) || !cJSON_IsString(model_j) ||
        !cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(req, "messages"))) {
        ret = send_detail(s, conn, &slot, 400,
                          "fixture: the payload is not a chat completion "
                          "request (model and messages are required)",
                          NULL);
        goto done;
    }
    /* 6. faults chosen by the model name */
    if (model_fault(model, "status", &arg)) {
        long st = parse_num(arg, 100, 599);
        char d[64];

        if (st < 0) {
            ret = send_detail(s, conn, &slot, 400,
                              "fixture: bad status in the model name", NULL);
            goto done;
        }
        snprintf(d, sizeof d, "fixture: status %ld", st);
        ret = send_detail(s, conn, &slot, (int)st, d, NULL);
        goto done;
    }
    if (model_fault(model, "retry-after", &arg)) {
        if (parse_num(arg, 0, 86400) < 0) {
            ret =
                send_detail(s, conn, &slot, 400,
                            "fixture: bad Retry-After in the model name", NULL);
            goto done;
        }
        ret = send_detail(s, conn, &slot, 429, "fixture: slow down", arg);
        goto done;
    }
    if (model_fault(model, "slow", &arg)) {
        long ms = parse_num(arg, 0, 600000);

        if (ms < 0) {
            ret = send_detail(s, conn, &slot, 400,
                              "fixture: bad delay in the model name", NULL);
            goto done;
        }
        wait_ms(s, (unsigned)ms);
    }
    if (model_fault(model, "tamper", &arg)) {
        int t = fx_tamper_parse(arg);

        if (t < 0) {
            ret = send_detail(s, conn, &slot, 400,
                              "fixture: unknown tamper mode in the model name",
                              NULL);
            goto done;
        }
        if (tamper == FX_TAMPER_NONE)
            tamper = (fx_tamper)t;
    }
    if (model_fault(model, "hostile", &arg)) {
        int bad;

        if (strcmp(arg, "detail") == 0) {
            ret =
                send_detail(s, conn, &slot, 500, "fixture: " FX_ESCAPES, NULL);
            goto done;
        }
        text = hostile_answer(arg, &bad);
        if (text == NULL) {
            ret = send_detail(s, conn, &slot, bad ? 400 : 500,
                              bad ? "fixture: unknown hostile answer in the "
                                    "model name"
                                  : "fixture: out of memory",
                              NULL);
            goto done;
        }
    }
    /* 7. the answer */
    if (text)
        ; /* a hostile one */
    else if (r->plaintext)
        text = substitute(r->plaintext, "$PAYLOAD_ID",
                          header(conn, "X-Payload-ID"));
    else if ((answer = make_answer(s, req, model, header(conn, "X-Payload-ID"),
                                   tier)) != NULL)
        text = cJSON_PrintUnformatted(answer);
    if (text == NULL) {
        ret = send_detail(s, conn, &slot, 500, "fixture: out of memory", NULL);
        goto done;
    }
    if (tag_mode != VEIL_TAG_SEPARATE && tag_mode != VEIL_TAG_APPENDED)
        tag_mode = (int)meta.tag_mode;
    recipient = ckey;
    if (tamper == FX_TAMPER_WRAPPED_KEY) {
        if ((recipient = other_key(s, cinfo.bits)) == NULL) {
            ret = send_detail(s, conn, &slot, 500,
                              "fixture: cannot make a second key", NULL);
            goto done;
        }
    }
    if (veil_pkg_seal(s->e, recipient, (const uint8_t *)text, strlen(text),
                      (veil_tag_mode)tag_mode, real_seconds(),
                      &sealed) != VEIL_OK) {
        ret = send_detail(s, conn, &slot, 500,
                          "fixture: cannot seal the answer", NULL);
        goto done;
    }
    if (tamper != FX_TAMPER_NONE && tamper != FX_TAMPER_WRAPPED_KEY) {
        char *t = tamper_package(sealed, tamper, (veil_tag_mode)tag_mode);

        free(sealed);
        sealed = t;
        if (sealed == NULL) {
            ret = send_detail(s, conn, &slot, 500,
                              "fixture: cannot tamper with the answer", NULL);
            goto done;
        }
    }
    pthread_mutex_lock(&s->lock);
    free(s->last_sealed);
    s->last_sealed = strdup(sealed);
    pthread_mutex_unlock(&s->lock);
    fx_log(s, "answer 200 (%s tag%s%s)",
           tag_mode == VEIL_TAG_SEPARATE ? "separate" : "appended",
           tamper ? ", tampered: " : "", tamper ? fx_tamper_name(tamper) : "");
    ret = send_body(s, conn, &slot, 200, sealed, strlen(sealed),
                    "application/json", NULL);
done:
    if (text) {
        explicit_bzero(text, strlen(text));
        free(text);
    }
    json_wipe_delete(answer);
    json_wipe_delete(req);
    veil_secbuf_free(pt);
    veil_key_free(ckey);
    free(pem);
    free(sealed);
    free(api_key);
    free_entry(entry);
    return ret;
}

/* ---- the daemon --------------------------------------------------------- */

static enum MHD_Result handle_key(fx_server *s, struct MHD_Connection *conn)
{
    char *pem = NULL;
    enum MHD_Result ret;
    veil_rc rc = VEIL_OK;

    pthread_mutex_lock(&s->lock);
    s->key_fetches++;
    if (s->served_pem)
        pem = strdup(s->served_pem);
    else
        rc = veil_key_public_pem(s->key, &pem);
    pthread_mutex_unlock(&s->lock);
    if (rc != VEIL_OK || pem == NULL)
        return send_detail(s, conn, NULL, 500, "fixture: no server key", NULL);
    fx_log(s, "GET %s", FX_KEY_PATH);
    ret = send_body(s, conn, NULL, 200, pem, strlen(pem),
                    "application/x-pem-file", NULL);
    free(pem);
    return ret;
}

/* The routes, once a request's body is in (tests/stub_http.c). */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  stub_body *b)
{
    fx_server *s = cls;

    if (strcmp(url, FX_KEY_PATH) == 0) {
        if (strcmp(method, MHD_HTTP_METHOD_GET) != 0)
            return send_detail(s, conn, NULL, 405, "Method Not Allowed", NULL);
        return handle_key(s, conn);
    }
    if (strcmp(url, FX_CHAT_PATH) == 0) {
        if (strcmp(method, MHD_HTTP_METHOD_POST) != 0)
            return send_detail(s, conn, NULL, 405, "Method Not Allowed", NULL);
        return handle_chat(s, conn, b);
    }
    return send_detail(s, conn, NULL, 404, "Not Found", NULL);
}

int fx_start(const fx_config *cfg, fx_server **out)
{
    fx_server *s;
    pthread_condattr_t ca;
    stub_config sc;
    int tls;

    *out = NULL;
    if (cfg == NULL || cfg->engine == NULL || cfg->server_key == NULL) {
        fprintf(stderr, "fixture: engine and server key are required\n");
        return -1;
    }
    tls = cfg->tls_cert_pem && cfg->tls_key_pem;
    s = calloc(1, sizeof *s);
    if (s == NULL)
        return -1;
    s->e = cfg->engine;
    s->key = cfg->server_key;
    s->verbose = cfg->verbose;
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->other_lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (cfg->api_key && (s->api_key = strdup(cfg->api_key)) == NULL)
        goto fail;
    if (tls) {
        s->tls_cert = strdup(cfg->tls_cert_pem);
        s->tls_key = strdup(cfg->tls_key_pem);
        if (!s->tls_cert || !s->tls_key)
            goto fail;
    }
    memset(&sc, 0, sizeof sc);
    sc.handle = on_request;
    sc.ctx = s;
    sc.max_body = FX_MAX_BODY;
    sc.tls_cert = s->tls_cert;
    sc.tls_key = s->tls_key;
    sc.who = "fixture";
    if (stub_start(&s->http, &sc) != 0)
        goto fail;
    s->port = s->http.port;
    snprintf(s->url, sizeof s->url, "%s://127.0.0.1:%u", tls ? "https" : "http",
             (unsigned)s->port);
    *out = s;
    return 0;
fail:
    fx_stop(s);
    return -1;
}

void fx_stop(fx_server *s)
{
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->lock);
    s->stopping = 1;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    stub_stop(&s->http);
    fx_clear_script(s);
    for (size_t i = 0; i < sizeof s->other / sizeof s->other[0]; i++)
        veil_key_free(s->other[i]);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->other_lock);
    pthread_mutex_destroy(&s->lock);
    free(s->recs);
    free(s->last_sealed);
    free(s->served_pem);
    free(s->api_key);
    free(s->tls_cert);
    free(s->tls_key);
    free(s);
}

unsigned short fx_port(const fx_server *s)
{
    return s->port;
}

const char *fx_url(const fx_server *s)
{
    return s->url;
}

/* ---- script ------------------------------------------------------------- */

int fx_push(fx_server *s, const fx_reply *r)
{
    fx_entry *e = calloc(1, sizeof *e);

    if (e == NULL)
        return -1;
    e->r = *r;
    e->detail = dup_or_null(r->detail);
    e->retry_after = dup_or_null(r->retry_after);
    e->raw_body = dup_or_null(r->raw_body);
    e->plaintext = dup_or_null(r->plaintext);
    if ((r->detail && !e->detail) || (r->retry_after && !e->retry_after) ||
        (r->raw_body && !e->raw_body) || (r->plaintext && !e->plaintext)) {
        free_entry(e);
        return -1;
    }
    e->r.detail = e->detail;
    e->r.retry_after = e->retry_after;
    e->r.raw_body = e->raw_body;
    e->r.plaintext = e->plaintext;
    pthread_mutex_lock(&s->lock);
    if (s->tail)
        s->tail->next = e;
    else
        s->head = e;
    s->tail = e;
    s->queued++;
    pthread_mutex_unlock(&s->lock);
    return 0;
}

int fx_push_status(fx_server *s, int status, const char *detail)
{
    fx_reply r;

    fx_reply_init(&r);
    r.status = status;
    r.detail = detail;
    return fx_push(s, &r);
}

int fx_push_tamper(fx_server *s, fx_tamper t)
{
    fx_reply r;

    fx_reply_init(&r);
    r.tamper = t;
    return fx_push(s, &r);
}

void fx_clear_script(fx_server *s)
{
    fx_entry *e;

    pthread_mutex_lock(&s->lock);
    while ((e = pop_entry(s)) != NULL)
        free_entry(e);
    pthread_mutex_unlock(&s->lock);
}

size_t fx_script_left(fx_server *s)
{
    size_t n;

    pthread_mutex_lock(&s->lock);
    n = s->queued;
    pthread_mutex_unlock(&s->lock);
    return n;
}

void fx_set_server_key(fx_server *s, veil_key *k)
{
    pthread_mutex_lock(&s->lock);
    s->key = k;
    pthread_mutex_unlock(&s->lock);
}

int fx_serve_pem(fx_server *s, const char *pem)
{
    char *c = dup_or_null(pem);

    if (pem && !c)
        return -1;
    pthread_mutex_lock(&s->lock);
    free(s->served_pem);
    s->served_pem = c;
    pthread_mutex_unlock(&s->lock);
    return 0;
}

int fx_set_api_key(fx_server *s, const char *api_key)
{
    char *c = dup_or_null(api_key);

    if (api_key && !c)
        return -1;
    pthread_mutex_lock(&s->lock);
    free(s->api_key);
    s->api_key = c;
    pthread_mutex_unlock(&s->lock);
    return 0;
}

/* ---- records ------------------------------------------------------------ */

unsigned fx_key_fetches(fx_server *s)
{
    unsigned n;

    pthread_mutex_lock(&s->lock);
    n = s->key_fetches;
    pthread_mutex_unlock(&s->lock);
    return n;
}

unsigned fx_posts(fx_server *s)
{
    unsigned n;

    pthread_mutex_lock(&s->lock);
    n = s->posts;
    pthread_mutex_unlock(&s->lock);
    return n;
}

unsigned fx_connections(fx_server *s)
{
    return (unsigned)atomic_load(&s->http.connections);
}

int fx_request_get(fx_server *s, unsigned index, fx_request *out)
{
    int rc = -1;

    pthread_mutex_lock(&s->lock);
    if (index < s->nrec) {
        *out = s->recs[index];
        rc = 0;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void fx_reset_counters(fx_server *s)
{
    pthread_mutex_lock(&s->lock);
    s->key_fetches = 0;
    s->posts = 0;
    atomic_store(&s->http.connections, 0);
    s->nrec = 0;
    s->gen++;
    pthread_mutex_unlock(&s->lock);
}

/* ---- a raw HTTP/1.1 server ------------------------------------------------
 */

struct fx_raw {
    int fd;
    pthread_t thread;
    char url[64];
    char *pem, *reply;
    char *repeat; /* sent after reply, again and again (NULL: not) */
    size_t repeat_limit;
    pthread_mutex_t lock;
    unsigned requests;
    int stopping;
};

/* Reads one request (head and Content-Length body) and answers it. */
static void raw_serve(fx_raw *r, int c)
{
    char buf[16384], head[256], *end = NULL;
    size_t len = 0, body = 0, have;
    const char *cl;
    int is_key;

    while (end == NULL && len < sizeof buf - 1) {
        ssize_t n = recv(c, buf + len, sizeof buf - 1 - len, 0);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        len += (size_t)n;
        buf[len] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    if (end == NULL)
        return;
    *end = '\0';
    if ((cl = strcasestr(buf, "\r\nContent-Length:")) != NULL)
        body = strtoul(cl + 17, NULL, 10);
    have = len - (size_t)(end + 4 - buf);
    while (have < body) {
        ssize_t n = recv(c, buf, sizeof buf, 0);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        have += (size_t)n;
    }
    is_key = strncmp(buf, "GET " FX_KEY_PATH " ", strlen(FX_KEY_PATH) + 5) == 0;
    if (is_key) {
        snprintf(head, sizeof head,
                 "HTTP/1.1 200 OK\r\nContent-Type: application/x-pem-file\r\n"
                 "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                 strlen(r->pem));
        if (tu_send_all(c, head, strlen(head)) == 0)
            tu_send_all(c, r->pem, strlen(r->pem));
    } else if (tu_send_all(c, r->reply, strlen(r->reply)) == 0 && r->repeat) {
        /* until the client hangs up (or the limit, should it not) */
        for (size_t sent = 0; sent < r->repeat_limit &&
                              tu_send_all(c, r->repeat, strlen(r->repeat)) == 0;
             sent += strlen(r->repeat))
            ;
    }
    pthread_mutex_lock(&r->lock);
    r->requests++;
    pthread_mutex_unlock(&r->lock);
}

static void *raw_main(void *arg)
{
    fx_raw *r = arg;

    for (;;) {
        int c = accept(r->fd, NULL, NULL), stop;

        if (c < 0 && errno == EINTR)
            continue;
        pthread_mutex_lock(&r->lock);
        stop = r->stopping;
        pthread_mutex_unlock(&r->lock);
        if (c < 0 || stop) {
            if (c >= 0)
                close(c);
            break;
        }
        raw_serve(r, c);
        shutdown(c, SHUT_RDWR);
        close(c);
    }
    return NULL;
}

int fx_raw_start(const char *key_pem, const char *post_reply, fx_raw **out)
{
    return fx_raw_start_endless(key_pem, post_reply, NULL, 0, out);
}

int fx_raw_start_endless(const char *key_pem, const char *post_reply,
                         const char *repeat, size_t limit, fx_raw **out)
{
    fx_raw *r = calloc(1, sizeof *r);
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;

    *out = NULL;
    if (r == NULL)
        return -1;
    r->fd = -1;
    pthread_mutex_init(&r->lock, NULL);
    r->pem = strdup(key_pem);
    r->reply = strdup(post_reply);
    r->repeat = repeat ? strdup(repeat) : NULL;
    r->repeat_limit = limit;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (r->pem == NULL || r->reply == NULL || (repeat && r->repeat == NULL) ||
        (r->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
        bind(r->fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        listen(r->fd, 8) != 0 ||
        getsockname(r->fd, (struct sockaddr *)&sa, &sl) != 0 ||
        pthread_create(&r->thread, NULL, raw_main, r) != 0) {
        fprintf(stderr, "fixture: cannot start the raw server\n");
        if (r->fd >= 0)
            close(r->fd);
        free(r->pem);
        free(r->reply);
        free(r->repeat);
        pthread_mutex_destroy(&r->lock);
        free(r);
        return -1;
    }
    snprintf(r->url, sizeof r->url, "http://127.0.0.1:%u",
             (unsigned)ntohs(sa.sin_port));
    *out = r;
    return 0;
}

const char *fx_raw_url(const fx_raw *r)
{
    return r->url;
}

unsigned fx_raw_requests(fx_raw *r)
{
    unsigned n;

    pthread_mutex_lock(&r->lock);
    n = r->requests;
    pthread_mutex_unlock(&r->lock);
    return n;
}

void fx_raw_stop(fx_raw *r)
{
    if (r == NULL)
        return;
    pthread_mutex_lock(&r->lock);
    r->stopping = 1;
    pthread_mutex_unlock(&r->lock);
    shutdown(r->fd, SHUT_RDWR); /* wakes accept() */
    pthread_join(r->thread, NULL);
    close(r->fd);
    free(r->pem);
    free(r->reply);
    free(r->repeat);
    pthread_mutex_destroy(&r->lock);
    free(r);
}
