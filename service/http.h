/* service/http.h: the one HTTP layer (libmicrohttpd) of veild and of what
 * comes after it (the proxy, the test servers).  Not installed; it knows
 * nothing of the gateway (never includes gateway.h).
 *
 * It owns the request state, the early refusals (shutdown, Content-Length,
 * then the application's admit hook), the body (read under body_limit and
 * body_memory), the worker slots, the connection deadlines (watchdog), the
 * response helpers and the route table.  A route row carries its own
 * policy: path (or prefix), method, whether it goes through admission,
 * whether it needs a worker slot, and its largest body.  Handlers answer
 * through svc_fail/svc_json/svc_text/svc_send; nothing below the route
 * handlers queues a response. */
#ifndef VEIL_SVC_HTTP_H
#define VEIL_SVC_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "util.h"

#pragma GCC visibility push(hidden)

typedef struct svc_http svc_http;
typedef struct svc_req svc_req;
typedef struct svc_response svc_response;

/* The longest ID a request keeps for its log line (and a prefix route's
 * tail). */
#define SVC_ID_MAX 128

/* Answers r (or leaves it unanswered: the connection is closed). */
typedef void svc_handler_fn(void *app, svc_req *r);

typedef struct svc_route {
    const char *path;   /* exact path, or the prefix with `prefix` */
    const char *method; /* "GET" (HEAD too, unless no_head) or "POST" */
    unsigned prefix : 1;
    /* Admitted: counted in flight, early refusals (shutdown, Content-
     * Length, the admit hook), the body read, then the handler, logged at
     * info.  Not admitted: the handler runs on the request line at once,
     * logged at debug. */
    unsigned admit : 1;
    unsigned needs_slot : 1; /* a worker slot once the body is in */
    unsigned no_head : 1;    /* HEAD not taken (a costly GET) */
    size_t body_max;         /* largest body; 0: the config's body_limit */
    /* a prefix route's tail is kept (svc_tail, and the log line) only
     * when this says 1 */
    int (*tail_ok)(const char *tail);
    svc_handler_fn *handle;
    const char *log_path; /* the path in the log line; NULL: path */
    unsigned tag; /* the application's, for its admit hook (svc_route_tag) */
    /* Admitted routes: called once the body is in, before the worker slot
     * is taken (NULL: none).  It may refuse by answering (then no slot is
     * taken and the handler does not run), e.g. when a line of the
     * application's own (the TPM's) is full, so that an excess request
     * costs nothing. */
    svc_handler_fn *before_slot;
} svc_route;

/* What a request came to, for the application's completion hook. */
typedef struct svc_done {
    const char *route;  /* the route's log path; NULL: no route (404, 405) */
    const char *method; /* "GET", "HEAD", "POST", or "OTHER" (a 405) */
    int status;         /* the status answered; 0: none */
    int delivered;      /* the answer went out whole */
    int admitted;       /* the route goes through admission */
    double seconds;     /* from its request line to its end */
} svc_done;

typedef struct svc_http_config {
    const char *listen_addr;        /* an IPv4 or IPv6 address */
    unsigned port;                  /* 0: any free port (svc_http_port) */
    const char *tls_cert, *tls_key; /* PEM files; both or neither */
    /* A tls_key that is a pkcs11: URI: the key stays in the token and
     * GnuTLS signs with it there (http_tls.c).  The module (a path to a
     * .so; NULL or a p11-kit name: p11-kit's registered modules) and
     * where its PIN comes from (engine's veil_pin_source syntax; NULL:
     * none), as veild's module and pin_source. */
    const char *tls_module, *tls_pin_source;
    size_t body_limit;
    unsigned workers;                 /* worker slots */
    unsigned header_timeout;          /* seconds to a complete header block */
    size_t body_min_rate;             /* bytes/s a body averages after 2 s */
    unsigned body_timeout;            /* seconds a body may take at most */
    unsigned answer_timeout;          /* seconds a client may take to read */
    unsigned connection_timeout;      /* MHD's idle limit, seconds */
    unsigned connections_per_address; /* open at once */
    size_t body_memory; /* body bytes held at once; 0: 2 x workers x
                           body_limit */
    const svc_route *routes;
    size_t n_routes;
    /* Called for an admitted request after the length checks and before
     * its body: refuses by answering (svc_fail...), or sets svc_client_id
     * (and svc_set_key_name) and returns. */
    svc_handler_fn *admit;
    void *app; /* given to admit and the handlers */
    veil_logger log;
    /* Called once for every request (NULL: none), when it is over: after
     * its log line, before its app ref is released (svc_app_ref is still
     * good).  In the request's thread; it must not answer. */
    void (*done)(void *app, svc_req *r, const svc_done *d);
    /* Bytes of the application's own state per request (svc_req_data),
     * zeroed when the request starts; 0: none. */
    size_t req_data_size;
} svc_http_config;

/* Starts listening (the config is copied; routes and log are borrowed);
 * listen_addr NULL: no listener, no threads, requests come only through
 * svc_http_inject.  NULL with err. */
svc_http *svc_http_start(const svc_http_config *cfg, char *err,
                         size_t err_size);
unsigned svc_http_port(const svc_http *h);
/* The worker slots now: in use (*busy), how many there are (*total), and
 * requests waiting for one (*waiting).  For metrics. */
void svc_http_slots(svc_http *h, unsigned *busy, unsigned *total,
                    unsigned *waiting);
/* Reads the TLS certificate chain and key again (a reload): new
 * connections get them, open ones keep theirs.  0; or -1 with err naming
 * the file that is wrong (the running ones stay), also when h serves
 * plain HTTP. */
int svc_http_reload_tls(svc_http *h, const char *cert, const char *key,
                        char *err, size_t err_size);
/* Reads and checks a TLS certificate chain and its key as a start would
 * (veild --check-config): 0, or -1 with err naming the file.  A key in a
 * token (a pkcs11: URI) is not opened here: only the chain is read. */
int svc_http_check_tls(const char *cert, const char *key, char *err,
                       size_t err_size);
/* Stops accepting, lets requests in flight finish (at most grace_s
 * seconds), then stops and frees h.  Returns the number of requests cut
 * off. */
unsigned svc_http_stop(svc_http *h, unsigned grace_s);

/* ---- a request without a socket ----------------------------------------
 * For the fuzzing harness and the tests: one request as libmicrohttpd
 * would hand it over, run through the same code as a request read from a
 * connection (route, early refusals, body limit and memory, worker slot,
 * handler, log line), in the caller's thread.  The answer is captured
 * instead of sent.  What this does not run is libmicrohttpd itself: the
 * parsing of the request line, headers and framing, the connection and
 * its deadlines. */

typedef struct svc_inject {
    const char *method; /* as on the request line */
    const char *url;    /* path and ?query, percent-encoded as sent */
    /* header name, value pairs, NULL-terminated (may be NULL); looked up
     * without regard to case, the first one counts.  Content-Length is
     * the body's length (as libmicrohttpd's framing makes it): one in the
     * list is not seen. */
    const char *const *headers;
    const char *body;
    size_t len;
    const struct sockaddr *client; /* may be NULL */
} svc_inject;

typedef struct svc_answer {
    int status;    /* 0: no answer (the connection would be closed) */
    char *headers; /* "Name: value\r\n" lines: Content-Type,
                      Cache-Control and the handler's (not the ones
                      libmicrohttpd adds: Date, Content-Length, Connection) */
    char *body;    /* NUL-terminated; as the handler gave it, also for a
                      HEAD (whose body libmicrohttpd does not send) */
    size_t len;
} svc_answer;

/* Runs the request in (borrowed) through h and fills out (svc_answer_free).
 * 0, or -1 when there was no memory to begin it. */
int svc_http_inject(svc_http *h, const svc_inject *in, svc_answer *out);
void svc_answer_free(svc_answer *a);

/* Monotonic seconds (the clock of the deadlines and rate limits). */
double svc_now(void);

/* ---- a request, for its handler ---------------------------------------- */

const char *svc_header(svc_req *r, const char *name);
const char *svc_query(svc_req *r, const char *name);
/* The body as received (NUL-terminated; NULL when empty). */
const char *svc_body(const svc_req *r, size_t *len);
/* The tag of the request's route (0 when unrouted). */
unsigned svc_route_tag(const svc_req *r);
/* A prefix route's tail when tail_ok took it, else "". */
const char *svc_tail(const svc_req *r);
/* The client's address (NULL when unknown). */
const struct sockaddr *svc_client_addr(svc_req *r);
/* 32 bytes naming whom the request counts for (set by the admit hook). */
uint8_t *svc_client_id(svc_req *r);
/* Names the API key in the log line (borrowed: must outlive the request). */
void svc_set_key_name(svc_req *r, const char *name);
/* An ID for the log line; give it only once checked (no text a client
 * chose goes to the log). */
void svc_set_log_id(svc_req *r, const char *id);
/* Something of the application's that the request holds until it is
 * complete (after its log line): release(ref) is called then, once.  At
 * most one per request (set again: the first stays, and 0 is returned
 * then; else 1).  svc_app_ref: it, or NULL. */
int svc_set_app_ref(svc_req *r, void *ref, void (*release)(void *ref));
void *svc_app_ref(const svc_req *r);
/* The application's state of r (req_data_size bytes, zeroed at its
 * start, suitably aligned); NULL when req_data_size is 0. */
void *svc_req_data(svc_req *r);
/* A second such hold, for a place the request keeps in a line of the
 * application's (released at completion, after the log line; set once:
 * 0 when one is held already, else 1). */
int svc_set_app_hold(svc_req *r, void *ref, void (*release)(void *ref));

/* ---- the worker slot, from a handler ------------------------------------
 * A handler that waits for something other than the CPU (the TPM, behind
 * a line of its own) gives its worker slot back meanwhile, so that it
 * delays nobody, and takes one again (first come, first served) when it
 * goes on.  svc_slot_yield: 1 when it held one.  svc_slot_retake: 1, or
 * 0 when the server began to stop (answer 503). */
int svc_slot_yield(svc_req *r);
int svc_slot_retake(svc_req *r);

/* ---- answers (each queues one response, at most once) ------------------ */

/* {"detail": "..."} with the status. */
void svc_fail(svc_req *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The same with Retry-After: retry_s. */
void svc_fail_retry(svc_req *r, int status, unsigned retry_s, const char *fmt,
                    ...) __attribute__((format(printf, 4, 5)));
/* The JSON j (deleted here); j NULL: 500 "out of memory". */
void svc_json(svc_req *r, int status, cJSON *j);
/* A copy of body, with Content-Type type and Cache-Control: no-store. */
void svc_text(svc_req *r, int status, const char *type, const char *body,
              size_t len);
/* body (malloc'd; owned from here, freed once sent) with Content-Type
 * type, Cache-Control: no-store and the extra headers (name, value pairs,
 * NULL-terminated; may be NULL; a Cache-Control among them replaces
 * no-store); its size counts in body_memory until it is sent.  0, or -1 (body
 * freed, nothing queued) when the response could not be made, -2 when a header
 * could not be added. */
int svc_send(svc_req *r, int status, const char *type, char *body, size_t len,
             const char *const *headers);
/* A response made once and sent as often as needed (Cache-Control:
 * no-store).  NULL: no memory. */
svc_response *svc_response_new(const char *type, const char *body, size_t len);
void svc_response_free(svc_response *resp);
void svc_send_prebuilt(svc_req *r, int status, svc_response *resp);

#pragma GCC visibility pop

#endif /* VEIL_SVC_HTTP_H */
