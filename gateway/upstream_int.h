/* What the three parts of the upstream share, and nothing else of the
 * gateway sees:
 *
 *   upstream.c       the request scan and its edits, the answer check, and
 *                    gw_upstream_call choosing the backend
 *   upstream_http.c  an OpenAI-compatible server over libcurl (the real
 *                    backend): the handle pool, the answer sink, mapping
 *   echo.c           the echo model (for trying out)
 *
 * A backend is one function of the shape below: it answers a request
 * already edited for it (request, len) into out, or returns the outcome
 * with the client's detail text in err (never a prompt or an answer). */
#ifndef VEIL_UPSTREAM_INT_H
#define VEIL_UPSTREAM_INT_H

#include "gateway.h"

/* Longest detail text passed on from a backend's 4xx answer (bytes). */
#define UP_DETAIL_MAX 300

/* Checks an answer (one JSON object, no key twice) and notes in out where
 * its "_metadata" and its '}' are. */
veil_json_rc gw_answer_scan(const char *text, size_t len,
                            gw_upstream_result *out);

/* The echo model (echo.c): the unedited request, as scanned into rq. */
gw_rc gw_echo_call(const gw_model *m, gw_infer route, const char *request,
                   size_t len, const gw_request *rq, const veil_logger *log,
                   gw_upstream_result *out, char *err, size_t err_size);

/* POST <upstream><path> (upstream_http.c); path: "/chat/completions",
 * "/completions" or "/embeddings". */
gw_rc gw_http_call(const gw_config *cfg, const gw_model *m, const char *path,
                   const char *request, size_t len, const veil_logger *log,
                   gw_upstream_result *out, char *err, size_t err_size);

#endif /* VEIL_UPSTREAM_INT_H */
