/* The OpenAI chat-completions format (protocol/openai.h). */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "openai.h"
#include "package.h"

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
