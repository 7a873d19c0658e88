/* The OpenAI chat-completions format, as veil reads it: pure functions
 * over a parsed request (cJSON), no HTTP.  Used by the gateway's echo
 * model; the proxy, the client and the test servers are to use it too.
 * Internal to libveil; not installed. */
#ifndef VEIL_OPENAI_H
#define VEIL_OPENAI_H

#include <cjson/cJSON.h>

#pragma GCC visibility push(hidden)

/* A message's "content" as text: a string as it is, or the "text" parts
 * of a list of parts joined; "" when there is neither.  malloc'd (it may
 * hold a prompt: the caller wipes it); NULL: no memory. */
char *veil_openai_content_text(const cJSON *message);

/* The last element of a "messages" array whose "role" is "user", or NULL
 * (none, or messages is not an array). */
const cJSON *veil_openai_last_user(const cJSON *messages);

/* A chat.completion object: one choice, the assistant's content,
 * finish_reason "stop", and usage from the two token counts.  NULL: no
 * memory.  The caller frees it (veil_json_wipe_free: content is secret). */
cJSON *veil_openai_completion(const char *id, const char *model,
                              const char *content, double prompt_tokens,
                              double completion_tokens);

#pragma GCC visibility pop

#endif /* VEIL_OPENAI_H */
