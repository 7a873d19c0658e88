/* service/http_int.h: what service/http.c (requests, routes, answers,
 * start and stop) and service/http_conn.c (connections, the watchdog,
 * worker slots, body memory) share.  Nothing outside service/ includes
 * it. */
#ifndef VEIL_SVC_HTTP_INT_H
#define VEIL_SVC_HTTP_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include <microhttpd.h>

#include "http.h"

#pragma GCC visibility push(hidden)

/* Body bytes past the limit read (and dropped) to deliver the 413; also
 * the most a refused connection's drain reads. */
#define DISCARD_MAX ((size_t)64 << 20)
/* A body's rate is judged after this many seconds. */
#define BODY_GRACE_S 2
/* How often the watchdog looks at the deadlines. */
#define WATCH_TICK_MS 200
/* Refused connections drained at once; more are closed at once. */
#define LINGER_MAX 256
/* Retry-After of a 503 at shutdown, seconds. */
#define STOP_RETRY_S 5

/* One connection (MHD's socket context), from accept to close: what the
 * watchdog holds to its deadlines.  Fields under svc_http.conn_lock. */
enum phase {
    P_HEAD, /* waiting for a complete header block */
    P_BODY, /* reading a body */
    P_WAIT, /* waiting for a worker slot, or for body_memory */
    P_WORK, /* being answered: no deadline here (the handler's own) */
    P_SEND  /* answer queued, being written */
};

typedef struct conn {
    struct conn *prev, *next;
    svc_http *h; /* its server (the TLS handshake looks it up) */
    int fd;
    enum phase phase;
    double since;    /* when the phase began (svc_now) */
    size_t got;      /* body bytes read in P_BODY */
    int linger;      /* refused before its body: drain it after the close */
    const char *cut; /* why the server closed it, or NULL */
    char addr[46];   /* the client's address, for the log */
} conn;

/* A refused connection being drained (a dup of its socket). */
struct drain_fd {
    int fd;
    double since;
    size_t got;
};

struct svc_http {
    svc_http_config cfg;
    struct MHD_Daemon *mhd;
    unsigned port;
    pthread_mutex_t tls_lock;  /* tls: swapped by a reload */
    struct svc_tls *tls;       /* NULL: plain HTTP (http_tls.c) */
    pthread_mutex_t slot_lock; /* the worker slots and their queue */
    unsigned slots_free;
    struct slot_waiter *wait_head, *wait_tail;
    pthread_mutex_t lock; /* in_flight, body_mem */
    pthread_cond_t idle;
    unsigned in_flight;
    size_t body_mem, body_mem_cap; /* body bytes held; the cap */
    size_t partial_mem;            /* of body_mem: bodies still being read */
    pthread_cond_t body_room;      /* body_mem fell, or the oldest changed */
    struct svc_req *body_head, *body_tail; /* reading a body, oldest first */
    atomic_int stopping;
    pthread_mutex_t conn_lock; /* conns, lingering, watch_stop */
    conn *conns;
    struct drain_fd lingering[LINGER_MAX];
    int n_linger;
    int watch_stop;
    int watching; /* the watchdog thread runs */
    pthread_t watchdog;
    MHD_socket listen_fd; /* after MHD_quiesce_daemon, ours to close */
    int bound_fd;         /* svc_listen_socket's, until MHD runs on it */
};

/* One request's state, from its first byte to its completion callback. */
struct svc_req {
    svc_http *h;
    struct MHD_Connection *c; /* NULL: injected (svc_http_inject) */
    const svc_inject *inj;    /* the injected request, or NULL */
    svc_answer *out;          /* where an injected request's answer goes */
    size_t n_headers;         /* its header pairs */
    char **args;              /* its query: name, value pairs (malloc'd) */
    size_t n_args;
    char clen[24];                 /* its Content-Length */
    struct svc_req *bprev, *bnext; /* the list of bodies being read */
    int reading;                   /* in that list */
    const svc_route *route;        /* NULL: none (404, 405) */
    const char *method;  /* "GET", "HEAD", "POST" or "OTHER" (metrics) */
    char log_method[24]; /* as on the request line, for the log */
    int admitted;        /* went through admission: counted in in_flight */
    size_t limit;        /* largest body accepted */
    size_t reserved;     /* of body_mem */
    size_t answer_len;   /* the answer's size when it counts (svc_send) */
    size_t answer_held;  /* of body_mem, until the answer is sent */
    conn *conn;          /* its connection (NULL: untracked) */
    int has_slot;
    int answered;         /* a response is queued */
    int queue_failed;     /* an answer could not be queued: close */
    int refused;          /* 413 or 503 decided while the body was arriving */
    size_t seen;          /* body bytes received, kept or not */
    const char *key_name; /* the API key's name, or NULL */
    void *app_ref;        /* svc_set_app_ref: released at completion */
    void (*app_release)(void *ref);
    void *app_hold; /* svc_set_app_hold: released at completion */
    void (*hold_release)(void *ref);
    int status;
    char *body;
    size_t len, cap;
    uint8_t id[32]; /* whom the request counts for (the admit hook's) */
    struct timespec t0;
    char tail[SVC_ID_MAX + 1];    /* a prefix route's tail, once checked */
    char log_id[SVC_ID_MAX + 1];  /* svc_set_log_id */
    char log_url[SVC_ID_MAX + 4]; /* an unrouted path, for the log */
    /* the application's state (cfg.req_data_size bytes: svc_req_data) */
    _Alignas(max_align_t) unsigned char data[];
};
/* A new request's state, zeroed (with the application's); NULL: no
 * memory. */
struct svc_req *svc_req_alloc(const svc_http *h);

/* One answer as a handler gives it, before it goes to its connection or,
 * for an injected request, to its capture. */
struct svc_reply {
    const char *type; /* Content-Type */
    const char *body;
    size_t len;
    char *owned;                /* the body given over (svc_send), or NULL */
    const char *const *headers; /* name, value pairs, NULL-terminated */
    const struct svc_response *pre; /* svc_send_prebuilt's, kept */
};

/* a's Cache-Control: the one among its headers (any case), else
 * "no-store". */
const char *svc_reply_cache(const struct svc_reply *a);

void svc_log(const svc_http *h, veil_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The steps of a request, read from a connection (http.c's MHD callbacks)
 * or injected (http_inject.c), in http.c.  head: the route, then the
 * answer at once or admission; data: a piece of the body; end: the
 * handler once the body is in; done: the log line, r freed (toe: how the
 * request ended).  head and data: 1 when the request goes on, 0 when its
 * connection is to be closed; end: 1 when answered. */
/* An IPv4 or IPv6 address as text ("?" when it is neither). */
void svc_addr_text(const struct sockaddr *sa, char *out, size_t size);

int svc_request_head(svc_http *h, svc_req *r, const char *url,
                     const char *method);
int svc_request_data(svc_http *h, svc_req *r, const char *upload, size_t n);
int svc_request_end(svc_http *h, svc_req *r);
void svc_request_done(svc_http *h, svc_req *r,
                      enum MHD_RequestTerminationCode toe);

/* http_inject.c: an injected request's headers and query, and its answer
 * captured into r->out (a->owned freed): 0, or -1 (no memory). */
const char *svc_inject_header(svc_req *r, const char *name);
const char *svc_inject_query(svc_req *r, const char *name);
int svc_capture(svc_req *r, int status, const struct svc_reply *a);
/* The 405 of a path served with other methods: {"detail": "method not
 * allowed"} and the Allow header RFC 9110 15.5.6 requires ("GET, HEAD"). */
void svc_fail_allow(svc_req *r, const char *allow);
/* http_tls.c: the certificate and key (and the chain of replaced ones,
 * freed by svc_tls_free) */
typedef struct svc_tls svc_tls;
/* Reads and checks a PEM certificate chain and its key: an unencrypted
 * PEM file, or a pkcs11: URI opened through GnuTLS with the module and
 * PIN source of cfg (the key must be the first certificate's).  NULL with
 * err naming the setting and file (or URI) that is wrong. */
svc_tls *svc_tls_load(const char *cert, const char *key,
                      const svc_http_config *cfg, char *err, size_t err_size);
void svc_tls_free(svc_tls *t);
/* The MHD_OPTION_HTTPS_CERT_CALLBACK function. */
void *svc_tls_callback(void);

/* http_listen.c: a socket bound to ss and listening (non-blocking,
 * close-on-exec), or -1 with err naming the address and port configured
 * and what to do (a port in use, a privileged port). */
int svc_listen_socket(const svc_http_config *cfg,
                      const struct sockaddr_storage *ss, char *err,
                      size_t err_size);

/* http_conn.c */
void svc_set_phase(svc_http *h, conn *k, enum phase p);
int svc_take_slot(svc_http *h, struct svc_req *r);
void svc_release_slot(svc_http *h, struct svc_req *r);
void svc_body_done(svc_http *h, struct svc_req *r);
void svc_charge_body(svc_http *h, struct svc_req *r, size_t n);
void svc_drop_body(svc_http *h, struct svc_req *r);
void svc_hold_answer(svc_http *h, struct svc_req *r);
void svc_on_connection(void *cls, struct MHD_Connection *c,
                       void **socket_context,
                       enum MHD_ConnectionNotificationCode code);
void *svc_watchdog(void *arg);
void svc_wake_all(svc_http *h);
void svc_cut_all(svc_http *h);
void svc_linger(svc_http *h, conn *k);
void svc_count_body(svc_http *h, conn *k, size_t n);
const char *svc_conn_cut(svc_http *h, conn *k);

#pragma GCC visibility pop

#endif /* VEIL_SVC_HTTP_INT_H */
