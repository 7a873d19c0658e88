/* The OpenAI formats (chat completions, completions, embeddings), as veil
 * reads and makes them: pure functions
 * over a parsed request (cJSON), no HTTP.  Used by the gateway's echo
 * model; the proxy, the client and the test servers are to use it too.
 * Internal to libveil; not installed. */
#ifndef VEIL_OPENAI_H
#define VEIL_OPENAI_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "veil/engine.h"

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

/* The texts of an OpenAI "prompt" or "input" value: a string, or an array
 * of strings (at least one).  *texts (malloc'd) points into v.  VEIL_OK,
 * VEIL_E_ARG (anything else: token arrays among them) or VEIL_E_NOMEM. */
veil_rc veil_openai_texts(const cJSON *v, const char ***texts, size_t *n);

/* A text_completion object: choice i's "text" is texts[i], finish_reason
 * "stop", and usage from the two token counts.  NULL: no memory.  The
 * caller frees it (veil_json_wipe_free). */
cJSON *veil_openai_text_completion(const char *id, const char *model,
                                   const char *const *texts, size_t n,
                                   double prompt_tokens,
                                   double completion_tokens);

/* The deterministic embedding of a text, for the echo model and the test
 * servers: component i is (BE16(SHA-256(text)[2i..2i+1]) - 32768) / 32768,
 * so every value is exact in binary and in its JSON text. */
#define VEIL_OPENAI_EMBED_DIM 16
void veil_openai_embedding(const char *text, double out[VEIL_OPENAI_EMBED_DIM]);

/* An embeddings answer: {"object": "list", "data": [{"object":
 * "embedding", "index": i, "embedding": [...]}...], "model", "usage":
 * {"prompt_tokens", "total_tokens"}}, one embedding per text.  NULL: no
 * memory.  The caller frees it (veil_json_wipe_free). */
cJSON *veil_openai_embeddings(const char *model, const char *const *texts,
                              size_t n, double prompt_tokens);

#pragma GCC visibility pop

#endif /* VEIL_OPENAI_H */
