/* The libmicrohttpd plumbing of the tests' stand-in HTTP servers: the
 * NOMYO protocol fixture (tests/fixture.c) and the stand-in inference
 * server (tests/mock-upstream.c).  One daemon on 127.0.0.1 (a port of the
 * kernel's choice, plain HTTP or TLS) or on a Unix socket, a thread per
 * connection, request
 * bodies gathered up to a limit, connections counted, and the responses
 * they send.  Each server keeps only its routes and answers. */
#ifndef VEIL_TEST_STUB_HTTP_H
#define VEIL_TEST_STUB_HTTP_H

#include <stdatomic.h>
#include <stddef.h>

#include <microhttpd.h>

/* A request's body as it came (NUL-terminated when data is set). */
typedef struct stub_body {
    char *data;
    size_t len, cap;
    int too_large; /* more than max_body came: data holds none of it */
} stub_body;

/* Called once per request, with its whole body. */
typedef enum MHD_Result stub_handler(void *ctx, struct MHD_Connection *conn,
                                     const char *url, const char *method,
                                     stub_body *body);

typedef struct stub_config {
    stub_handler *handle;
    void *ctx;
    size_t max_body;
    const char *tls_cert, *tls_key; /* PEM, both or neither (plain HTTP) */
    unsigned connection_timeout;    /* seconds; 0: libmicrohttpd's */
    const char *who;                /* names the server in messages */
    const char *unix_path;          /* listen on a Unix socket made at this path
                                       (removed at stop) instead of 127.0.0.1 */
} stub_config;

typedef struct stub_http {
    struct MHD_Daemon *d;
    unsigned short port; /* 0 on a Unix socket */
    stub_config cfg;
    atomic_ulong connections; /* opened since the start or the last reset */
} stub_http;

/* Starts the daemon.  0; -1 with a message on stderr. */
int stub_start(stub_http *s, const stub_config *cfg);

/* Stops it (waits for its threads).  Accepts one never started. */
void stub_stop(stub_http *s);

/* Queues body (len bytes, copied) with status, a Content-Type (may be
 * NULL) and a Retry-After (may be NULL). */
enum MHD_Result stub_send(struct MHD_Connection *conn, unsigned status,
                          const char *body, size_t len,
                          const char *content_type, const char *retry_after);

/* stub_send() of a malloc'd NUL-terminated text, which it takes (and
 * frees, also on failure); NULL text: MHD_NO. */
enum MHD_Result stub_send_owned(struct MHD_Connection *conn, unsigned status,
                                char *text, const char *content_type);

#endif /* VEIL_TEST_STUB_HTTP_H */
