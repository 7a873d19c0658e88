/* The OpenAI chat-completions format (protocol/openai.h). */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "openai.h"

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
