/* The OpenAI formats (protocol/openai.h). */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/sha.h>

#include "openai.h"
#include "package.h"
#include "util.h"

char *veil_openai_content_text(const cJSON *message)
{
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(message, "content");
    const cJSON *part;
    size_t n = 0;
    char *out;

    if (cJSON_IsString(content))
        return strdup(content->valuestring);
    if (!cJSON_IsArray(content))
        return strdup("");
    cJSON_ArrayForEach(part, content)
    {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");

        if (cJSON_IsString(t))
            n += strlen(t->valuestring);
    }
    if ((out = malloc(n + 1)) == NULL)
        return NULL;
    n = 0;
    cJSON_ArrayForEach(part, content)
    {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");

        if (cJSON_IsString(t)) {
            size_t l = strlen(t->valuestring);

            memcpy(out + n, t->valuestring, l);
            n += l;
        }
    }
    out[n] = '\0';
    return out;
}

const cJSON *veil_openai_last_user(const cJSON *messages)
{
    const cJSON *m, *last = NULL;

    if (!cJSON_IsArray(messages))
        return NULL;
    cJSON_ArrayForEach(m, messages)
    {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");

        if (cJSON_IsString(role) && strcmp(role->valuestring, "user") == 0)
            last = m;
    }
    return last;
}

cJSON *veil_openai_completion(const char *id, const char *model,
                              const char *content, double prompt_tokens,
                              double completion_tokens)
{
    cJSON *a = cJSON_CreateObject(), *choices = NULL, *choice = NULL;
    cJSON *msg = NULL, *usage = NULL;
    int ok = a != NULL;

    ok = ok && cJSON_AddStringToObject(a, "id", id);
    ok = ok && cJSON_AddStringToObject(a, "object", "chat.completion");
    ok = ok && cJSON_AddNumberToObject(a, "created", (double)time(NULL));
    ok = ok && cJSON_AddStringToObject(a, "model", model);
    ok = ok && (choices = cJSON_AddArrayToObject(a, "choices")) != NULL;
    ok = ok && (choice = cJSON_CreateObject()) != NULL;
    ok = ok && cJSON_AddItemToArray(choices, choice);
    ok = ok && cJSON_AddNumberToObject(choice, "index", 0);
    ok = ok && (msg = cJSON_AddObjectToObject(choice, "message")) != NULL;
    ok = ok && cJSON_AddStringToObject(msg, "role", "assistant");
    ok = ok && cJSON_AddStringToObject(msg, "content", content);
    ok = ok && cJSON_AddStringToObject(choice, "finish_reason", "stop");
    ok = ok && (usage = cJSON_AddObjectToObject(a, "usage")) != NULL;
    ok = ok && cJSON_AddNumberToObject(usage, "prompt_tokens", prompt_tokens);
    ok = ok &&
         cJSON_AddNumberToObject(usage, "completion_tokens", completion_tokens);
    ok = ok && cJSON_AddNumberToObject(usage, "total_tokens",
                                       prompt_tokens + completion_tokens);
    if (!ok) {
        veil_json_wipe_free(a);
        return NULL;
    }
    return a;
}

veil_rc veil_openai_texts(const cJSON *v, const char ***texts, size_t *n)
{
    const cJSON *e;
    size_t k = 0;

    *texts = NULL;
    *n = 0;
    if (cJSON_IsString(v)) {
        if ((*texts = malloc(sizeof **texts)) == NULL)
            return VEIL_E_NOMEM;
        (*texts)[0] = v->valuestring;
        *n = 1;
        return VEIL_OK;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) < 1)
        return VEIL_E_ARG;
    cJSON_ArrayForEach(e, v)
    {
        if (!cJSON_IsString(e))
            return VEIL_E_ARG;
        k++;
    }
    if ((*texts = malloc(k * sizeof **texts)) == NULL)
        return VEIL_E_NOMEM;
    cJSON_ArrayForEach(e, v)(*texts)[(*n)++] = e->valuestring;
    return VEIL_OK;
}

/* usage: {"prompt_tokens", ["completion_tokens",] "total_tokens"} */
static int add_usage(cJSON *a, double prompt_tokens, double completion_tokens,
                     int with_completion)
{
    cJSON *usage = cJSON_AddObjectToObject(a, "usage");

    return usage &&
           cJSON_AddNumberToObject(usage, "prompt_tokens", prompt_tokens) &&
           (!with_completion ||
            cJSON_AddNumberToObject(usage, "completion_tokens",
                                    completion_tokens)) &&
           cJSON_AddNumberToObject(usage, "total_tokens",
                                   prompt_tokens + completion_tokens);
}

cJSON *veil_openai_text_completion(const char *id, const char *model,
                                   const char *const *texts, size_t n,
                                   double prompt_tokens,
                                   double completion_tokens)
{
    cJSON *a = cJSON_CreateObject(), *choices = NULL;
    int ok = a != NULL;

    ok = ok && cJSON_AddStringToObject(a, "id", id);
    ok = ok && cJSON_AddStringToObject(a, "object", "text_completion");
    ok = ok && cJSON_AddNumberToObject(a, "created", (double)time(NULL));
    ok = ok && cJSON_AddStringToObject(a, "model", model);
    ok = ok && (choices = cJSON_AddArrayToObject(a, "choices")) != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        cJSON *c = cJSON_CreateObject();

        ok = c != NULL && cJSON_AddItemToArray(choices, c);
        if (!ok)
            cJSON_Delete(c);
        ok = ok && cJSON_AddStringToObject(c, "text", texts[i]);
        ok = ok && cJSON_AddNumberToObject(c, "index", (double)i);
        ok = ok && cJSON_AddNullToObject(c, "logprobs");
        ok = ok && cJSON_AddStringToObject(c, "finish_reason", "stop");
    }
    ok = ok && add_usage(a, prompt_tokens, completion_tokens, 1);
    if (!ok) {
        veil_json_wipe_free(a);
        return NULL;
    }
    return a;
}

void veil_openai_embedding(const char *text, double out[VEIL_OPENAI_EMBED_DIM])
{
    uint8_t h[SHA256_DIGEST_LENGTH];

    SHA256((const uint8_t *)text, strlen(text), h);
    for (size_t i = 0; i < VEIL_OPENAI_EMBED_DIM; i++)
        out[i] = ((double)((unsigned)h[2 * i] << 8 | h[2 * i + 1]) - 32768.0) /
                 32768.0;
}

cJSON *veil_openai_embeddings(const char *model, const char *const *texts,
                              size_t n, double prompt_tokens)
{
    cJSON *a = cJSON_CreateObject(), *data = NULL;
    int ok = a != NULL;

    ok = ok && cJSON_AddStringToObject(a, "object", "list");
    ok = ok && (data = cJSON_AddArrayToObject(a, "data")) != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        double v[VEIL_OPENAI_EMBED_DIM];
        cJSON *o = cJSON_CreateObject(), *vec;

        ok = o != NULL && cJSON_AddItemToArray(data, o);
        if (!ok)
            cJSON_Delete(o);
        veil_openai_embedding(texts[i], v);
        ok = ok && cJSON_AddStringToObject(o, "object", "embedding");
        ok = ok && cJSON_AddNumberToObject(o, "index", (double)i);
        ok = ok && (vec = cJSON_CreateDoubleArray(v, VEIL_OPENAI_EMBED_DIM)) &&
             cJSON_AddItemToObject(o, "embedding", vec);
        veil_wipe(v, sizeof v);
    }
    ok = ok && cJSON_AddStringToObject(a, "model", model);
    ok = ok && add_usage(a, prompt_tokens, 0, 0);
    if (!ok) {
        veil_json_wipe_free(a);
        return NULL;
    }
    return a;
}
