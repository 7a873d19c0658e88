/* The echo model: a chat.completion repeating the last user message, a
 * text_completion repeating each prompt, or the deterministic embedding of
 * each input (protocol/openai.c), with word counts as usage.  For trying
 * veild out without an inference server; only the member the route reads
 * ("messages", "prompt", "input") is parsed (into a tree: the echo is not
 * for load).  The prompt and the answer are secret here as anywhere: every
 * copy is wiped before it is freed. */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "openai.h"
#include "package.h"
#include "upstream_int.h"

/* A JSON text printed here never needs more than this. */
#define ECHO_PRINT_MAX ((size_t)1 << 30)

static void wipe_free_str(char *s)
{
    if (s != NULL) {
        veil_wipe(s, strlen(s));
        free(s);
    }
}

static size_t count_words(const char *s)
{
    size_t n = 0;
    int in = 0;

    for (; *s; s++) {
        int space = *s == ' ' || *s == '\t' || *s == '\n' || *s == '\r' ||
                    *s == '\f' || *s == '\v';

        if (!space && !in)
            n++;
        in = !space;
    }
    return n;
}

/* prefix ("chatcmpl-echo-", "cmpl-echo-") and 24 random hex digits (a
 * counter if the random source fails). */
static void answer_id(char id[64], const char *prefix)
{
    static unsigned long counter;
    uint8_t rnd[12];
    char hex[2 * sizeof rnd + 1];

    if (getrandom(rnd, sizeof rnd, 0) == (ssize_t)sizeof rnd) {
        veil_hex(rnd, sizeof rnd, hex);
        snprintf(id, 64, "%s%s", prefix, hex);
    } else {
        snprintf(id, 64, "%s%lx%lx", prefix, (unsigned long)time(0),
                 __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED));
    }
}

/* The chat.completion answering with content. */
static cJSON *completion(const char *model, const char *content,
                         size_t prompt_words)
{
    size_t completion_words = count_words(content);
    char id[64];

    answer_id(id, "chatcmpl-echo-");
    return veil_openai_completion(id, model, content, (double)prompt_words,
                                  (double)completion_words);
}

/* The tree printed into a malloc'd string (the caller wipes it); NULL: no
 * memory. */
static char *print_answer(const cJSON *a)
{
    veil_secbuf *b = NULL;
    char *text = NULL;

    if (veil_json_print_secret(a, ECHO_PRINT_MAX, &b) != VEIL_OK)
        return NULL;
    if ((text = malloc(veil_secbuf_len(b))) != NULL)
        memcpy(text, veil_secbuf_data(b), veil_secbuf_len(b));
    veil_secbuf_free(b);
    return text;
}

/* The echo answer to a request scanned into rq, or NULL with *why saying
 * what is wrong with the request (*why NULL: no memory). */
static char *echo_answer(const char *request, size_t len, const gw_request *rq,
                         const char **why)
{
    cJSON *messages = NULL, *a = NULL;
    const cJSON *mm;
    const char *model = rq->model_len >= 0 ? rq->model : "";
    char *content = NULL, *text = NULL;
    size_t prompt_words = 0;

    *why = NULL;
    if (rq->has_messages && rq->m_messages.value_end <= len)
        messages = cJSON_ParseWithLength(request + rq->m_messages.value,
                                         rq->m_messages.value_end -
                                             rq->m_messages.value);
    if (!cJSON_IsArray(messages)) {
        *why =
            "request is not a chat completion request: no \"messages\" array";
        goto out;
    }
    cJSON_ArrayForEach(mm, messages)
    {
        char *t = veil_openai_content_text(mm);

        if (t == NULL)
            goto out;
        prompt_words += count_words(t);
        wipe_free_str(t);
    }
    mm = veil_openai_last_user(messages);
    content = mm ? veil_openai_content_text(mm) : strdup("");
    if (content != NULL && (a = completion(model, content, prompt_words)))
        text = print_answer(a);
out:
    wipe_free_str(content);
    veil_json_wipe_free(a);
    veil_json_wipe_free(messages);
    return text;
}

/* The answer of the completions or embeddings route: the request's
 * "prompt" or "input" (a string or strings), echoed or embedded. */
static char *echo_texts(gw_infer route, const char *request, size_t len,
                        const gw_request *rq, const char **why)
{
    const char *name = route == GW_INFER_EMBEDDINGS ? "input" : "prompt";
    const char *model = rq->model_len >= 0 ? rq->model : "";
    cJSON *req = cJSON_ParseWithLength(request, len), *a = NULL;
    const char **texts = NULL;
    size_t n = 0, words = 0;
    char *text = NULL, id[64];
    veil_rc rc = veil_openai_texts(cJSON_GetObjectItemCaseSensitive(req, name),
                                   &texts, &n);

    *why = NULL;
    if (rc == VEIL_E_ARG)
        *why = route == GW_INFER_EMBEDDINGS
                   ? "\"input\" must be a string or an array of strings"
                   : "\"prompt\" must be a string or an array of strings";
    for (size_t i = 0; i < n; i++)
        words += count_words(texts[i]);
    if (rc == VEIL_OK && route == GW_INFER_EMBEDDINGS) {
        a = veil_openai_embeddings(model, texts, n, (double)words);
    } else if (rc == VEIL_OK) {
        answer_id(id, "cmpl-echo-");
        a = veil_openai_text_completion(id, model, texts, n, (double)words,
                                        (double)words);
    }
    if (a != NULL)
        text = print_answer(a);
    free(texts);
    veil_json_wipe_free(a);
    veil_json_wipe_free(req);
    return text;
}

char *gw_echo_answer(const char *request, size_t len)
{
    const char *why;
    gw_request rq;
    char err[320];

    if (request == NULL ||
        gw_request_scan(NULL, request, len, &rq, err, sizeof err) != 0)
        return NULL;
    return echo_answer(request, len, &rq, &why);
}

gw_rc gw_echo_call(const gw_model *m, gw_infer route, const char *request,
                   size_t len, const gw_request *rq, const veil_logger *log,
                   gw_upstream_result *out, char *err, size_t err_size)
{
    const char *why;
    char *a = route == GW_INFER_CHAT
                  ? echo_answer(request, len, rq, &why)
                  : echo_texts(route, request, len, rq, &why);

    if (a == NULL && why != NULL) {
        veil_logf(log, VEIL_LOG_INFO,
                  "upstream: %s: bad request for the echo model (%s)", m->id,
                  why);
        gw_put_err(err, err_size, "%s", why);
        return GW_REFUSED;
    }
    if (a == NULL) {
        gw_put_err(err, err_size, "out of memory");
        return GW_NOMEM;
    }
    if (gw_answer_scan(a, strlen(a), out) != VEIL_JSON_OK) {
        wipe_free_str(a); /* cannot be: echo_answer prints JSON */
        gw_put_err(err, err_size, "the echo answer is not JSON");
        return GW_INTERNAL;
    }
    out->body = a;
    out->len = strlen(a);
    return GW_OK;
}
