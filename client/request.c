/* Requests and answers as JSON: checking a request before it is sealed,
 * reading answers, and the cheap JSON checks made on what a server
 * sends before it is parsed or trusted. */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
#include "package.h"

/* ---- checking a request ------------------------------------------------ */

static int is_int(const cJSON *it, double min)
{
    return cJSON_IsNumber(it) && isfinite(it->valuedouble) &&
           it->valuedouble == floor(it->valuedouble) && it->valuedouble >= min;
}

static int is_number(const cJSON *it)
{
    return cJSON_IsNumber(it) && isfinite(it->valuedouble);
}

static int all_strings(const cJSON *arr)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) if (!cJSON_IsString(it)) return 0;
    return 1;
}

static int all_numbers(const cJSON *obj)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, obj) if (!is_number(it)) return 0;
    return 1;
}

static int all_objects(const cJSON *arr)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) if (!cJSON_IsObject(it)) return 0;
    return 1;
}

static int check_messages(const cJSON *msgs, char *why, size_t why_size)
{
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0)
        VEIL_CL_REFUSE("request member \"messages\" must be a non-empty array");
    int i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs)
    {
        if (!cJSON_IsObject(m))
            VEIL_CL_REFUSE("messages[%d] must be an object", i);
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsString(role) || role->valuestring[0] == '\0')
            VEIL_CL_REFUSE("messages[%d].role must be a non-empty string", i);
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (content && !cJSON_IsString(content) && !cJSON_IsArray(content) &&
            !cJSON_IsNull(content))
            VEIL_CL_REFUSE(
                "messages[%d].content must be a string, an array or null", i);
        i++;
    }
    return 1;
}

int veil_cl_request_check(const cJSON *r, char *why, size_t why_size)
{
    if (!cJSON_IsObject(r))
        VEIL_CL_REFUSE("the request must be a JSON object");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(r, "model");
    if (!cJSON_IsString(model) || model->valuestring[0] == '\0')
        VEIL_CL_REFUSE("request member \"model\" must be a non-empty string");
    if (!check_messages(cJSON_GetObjectItemCaseSensitive(r, "messages"), why,
                        why_size))
        return 0;

    const cJSON *it;
    cJSON_ArrayForEach(it, r)
    {
        const char *k = it->string;
        if (!strcmp(k, "temperature") || !strcmp(k, "top_p") ||
            !strcmp(k, "presence_penalty") || !strcmp(k, "frequency_penalty")) {
            if (!is_number(it))
                VEIL_CL_REFUSE("request member \"%s\" must be a number", k);
        } else if (!strcmp(k, "max_tokens") || !strcmp(k, "n")) {
            if (!is_int(it, 1))
                VEIL_CL_REFUSE(
                    "request member \"%s\" must be a positive integer", k);
        } else if (!strcmp(k, "stop")) {
            if (!cJSON_IsString(it) && !cJSON_IsNull(it) &&
                !(cJSON_IsArray(it) && all_strings(it)))
                VEIL_CL_REFUSE(
                    "request member \"stop\" must be a string or an array "
                    "of strings");
        } else if (!strcmp(k, "logit_bias")) {
            if (!cJSON_IsObject(it) || !all_numbers(it))
                VEIL_CL_REFUSE(
                    "request member \"logit_bias\" must be an object of "
                    "numbers");
        } else if (!strcmp(k, "user")) {
            if (!cJSON_IsString(it))
                VEIL_CL_REFUSE("request member \"user\" must be a string");
        } else if (!strcmp(k, "tools")) {
            if (!cJSON_IsArray(it) || !all_objects(it))
                VEIL_CL_REFUSE(
                    "request member \"tools\" must be an array of objects");
        } else if (!strcmp(k, "tool_choice")) {
            if (!cJSON_IsString(it) && !cJSON_IsObject(it))
                VEIL_CL_REFUSE(
                    "request member \"tool_choice\" must be a string or an "
                    "object");
        } else if (!strcmp(k, "stream")) {
            if (!cJSON_IsBool(it))
                VEIL_CL_REFUSE(
                    "request member \"stream\" must be true or false");
        }
    }
    return 1;
}

int veil_cl_json_small(const char *text, size_t len, unsigned max_values,
                       unsigned max_depth)
{
    /* Every value cJSON makes follows one of these outside a string, or is
     * the top one: counting them bounds the nodes it allocates. */
    size_t marks = 0, depth = 0;
    int in_string = 0;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = 0;
            continue;
        }
        switch (c) {
        case '"':
            in_string = 1;
            break;
        case '{':
        case '[':
            if (++depth > max_depth)
                return 0;
            /* fall through */
        case ',':
        case ':':
            if (++marks >= max_values)
                return 0;
            break;
        case '}':
        case ']':
            if (depth > 0)
                depth--;
            break;
        default:
            break;
        }
    }
    return 1;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

const char *veil_cl_json_dup_key(const cJSON *obj)
{
    if (!cJSON_IsObject(obj))
        return NULL;
    size_t n = 0;
    for (const cJSON *a = obj->child; a != NULL; a = a->next)
        n++;
    /* sorted, so that a server's answer with many members costs n log n */
    const char **names = malloc((n ? n : 1) * sizeof *names);
    const char *dup = NULL;
    if (names == NULL)
        return "(out of memory)";
    n = 0;
    for (const cJSON *a = obj->child; a != NULL; a = a->next)
        names[n++] = a->string ? a->string : "";
    qsort(names, n, sizeof *names, cmp_names);
    for (size_t i = 1; i < n && dup == NULL; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            dup = names[i];
    free(names);
    return dup;
}

void veil_cl_redact_url(const char *url, char *out, size_t out_size)
{
    const char *scheme = strstr(url, "://");
    const char *auth = scheme ? scheme + 3 : url;
    size_t host_len = strcspn(auth, "/?#");
    const char *at = memchr(auth, '@', host_len);
    /* the last '@' before the path ends the user part */
    for (const char *p = at; p != NULL && p < auth + host_len;
         p = memchr(p + 1, '@', (size_t)(auth + host_len - p - 1)))
        at = p;
    const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    if (colon == NULL) {
        snprintf(out, out_size, "%s", url);
        return;
    }
    snprintf(out, out_size, "%.*s:***%s", (int)(colon - url), url, at);
}

/* ---- building requests ------------------------------------------------- */

cJSON *veil_chat_request_new(const char *model)
{
    cJSON *r = cJSON_CreateObject();
    if (r == NULL || !cJSON_AddStringToObject(r, "model", model ? model : "") ||
        !cJSON_AddArrayToObject(r, "messages")) {
        cJSON_Delete(r);
        return NULL;
    }
    return r;
}

int veil_chat_request_add_message(cJSON *request, const char *role,
                                  const char *content)
{
    cJSON *msgs = cJSON_GetObjectItemCaseSensitive(request, "messages");
    cJSON *m = cJSON_CreateObject();
    if (!cJSON_IsArray(msgs) || m == NULL || role == NULL ||
        !cJSON_AddStringToObject(m, "role", role) ||
        !(content ? cJSON_AddStringToObject(m, "content", content)
                  : cJSON_AddNullToObject(m, "content")) ||
        !cJSON_AddItemToArray(msgs, m)) {
        veil_chat_response_free(m);
        return 0;
    }
    return 1;
}

/* ---- reading answers --------------------------------------------------- */

static const cJSON *first_message(const cJSON *r)
{
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(r, "choices");
    const cJSON *c0 = cJSON_GetArrayItem(choices, 0);
    return cJSON_GetObjectItemCaseSensitive(c0, "message");
}

static const char *message_string(const cJSON *r, const char *name)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(first_message(r), name);
    return cJSON_IsString(s) ? s->valuestring : NULL;
}

const char *veil_chat_content(const cJSON *response)
{
    return message_string(response, "content");
}

const char *veil_chat_reasoning(const cJSON *response)
{
    return message_string(response, "reasoning_content");
}

const cJSON *veil_chat_tool_calls(const cJSON *response)
{
    const cJSON *t =
        cJSON_GetObjectItemCaseSensitive(first_message(response), "tool_calls");
    return cJSON_IsArray(t) ? t : NULL;
}

static long usage_field(const cJSON *u, const char *name)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(u, name);
    return is_int(it, 0) ? (long)it->valuedouble : -1;
}

int veil_chat_get_usage(const cJSON *response, veil_chat_usage *usage)
{
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(response, "usage");
    usage->prompt_tokens = usage_field(u, "prompt_tokens");
    usage->completion_tokens = usage_field(u, "completion_tokens");
    usage->total_tokens = usage_field(u, "total_tokens");
    return cJSON_IsObject(u);
}

void veil_chat_response_free(cJSON *response)
{
    veil_json_wipe_free(response);
}
