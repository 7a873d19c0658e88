/* See stub_http.h. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "stub_http.h"

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned status,
                               struct MHD_Response *resp,
                               const char *content_type,
                               const char *retry_after)
{
    enum MHD_Result ret;

    if (resp == NULL)
        return MHD_NO;
    if (content_type)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                                content_type);
    if (retry_after)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, retry_after);
    ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

enum MHD_Result stub_send(struct MHD_Connection *conn, unsigned status,
                          const char *body, size_t len,
                          const char *content_type, const char *retry_after)
{
    return respond(conn, status,
                   MHD_create_response_from_buffer(len, (void *)body,
                                                   MHD_RESPMEM_MUST_COPY),
                   content_type, retry_after);
}

enum MHD_Result stub_send_owned(struct MHD_Connection *conn, unsigned status,
                                char *text, const char *content_type)
{
    struct MHD_Response *resp;

    if (text == NULL)
        return MHD_NO;
    resp = MHD_create_response_from_buffer(strlen(text), text,
                                           MHD_RESPMEM_MUST_FREE);
    if (resp == NULL)
        free(text);
    return respond(conn, status, resp, content_type, NULL);
}

/* Gathers the body; calls the handler once it is all in. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    stub_http *s = cls;
    stub_body *b = *con_cls;

    if (b == NULL) {
        if ((b = calloc(1, sizeof *b)) == NULL)
            return MHD_NO;
        *con_cls = b;
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;

        *upload_size = 0;
        if (b->too_large || n > s->cfg.max_body - b->len) {
            b->too_large = 1;
            return MHD_YES;
        }
        if (b->len + n + 1 > b->cap) {
            size_t cap = b->cap ? b->cap : 4096;
            char *d;

            while (cap < b->len + n + 1)
                cap *= 2;
            if ((d = realloc(b->data, cap)) == NULL) {
                b->too_large = 1;
                return MHD_YES;
            }
            b->data = d;
            b->cap = cap;
        }
        memcpy(b->data + b->len, upload, n);
        b->len += n;
        b->data[b->len] = '\0';
        return MHD_YES;
    }
    return s->cfg.handle(s->cfg.ctx, conn, url, method, b);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    stub_body *b = *con_cls;

    if (b) {
        free(b->data);
        free(b);
        *con_cls = NULL;
    }
}

static void on_connection(void *cls, struct MHD_Connection *conn,
                          void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    stub_http *s = cls;

    if (toe == MHD_CONNECTION_NOTIFY_STARTED)
        atomic_fetch_add(&s->connections, 1);
}

int stub_start(stub_http *s, const stub_config *cfg)
{
    struct sockaddr_in sa;
    struct sockaddr_un su;
    const union MHD_DaemonInfo *info;
    struct MHD_OptionItem opts[6];
    size_t n = 0;
    int fd = -1;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_THREAD_PER_CONNECTION | MHD_USE_AUTO;
    int tls = cfg->tls_cert && cfg->tls_key;

    memset(s, 0, sizeof *s);
    s->cfg = *cfg;
    atomic_init(&s->connections, 0);
    if (tls && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
        fprintf(stderr, "%s: libmicrohttpd was built without TLS\n", cfg->who);
        return -1;
    }
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = 0;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (cfg->unix_path) {
        memset(&su, 0, sizeof su);
        su.sun_family = AF_UNIX;
        if (strlen(cfg->unix_path) >= sizeof su.sun_path ||
            (fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) {
            fprintf(stderr, "%s: cannot make a Unix socket at %s\n", cfg->who,
                    cfg->unix_path);
            return -1;
        }
        memcpy(su.sun_path, cfg->unix_path, strlen(cfg->unix_path));
        if (bind(fd, (struct sockaddr *)&su, sizeof su) != 0 ||
            listen(fd, 64) != 0) {
            fprintf(stderr, "%s: cannot listen on %s: %s\n", cfg->who,
                    cfg->unix_path, strerror(errno));
            close(fd);
            return -1;
        }
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_LISTEN_SOCKET, fd, NULL};
    } else {
        opts[n++] =
            (struct MHD_OptionItem){MHD_OPTION_SOCK_ADDR, 0, (void *)&sa};
    }
    /* a timeout and TLS, each when set */
    if (cfg->connection_timeout)
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_TIMEOUT,
                                            cfg->connection_timeout, NULL};
    if (tls) {
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0,
                                            (void *)cfg->tls_cert};
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0,
                                            (void *)cfg->tls_key};
    }
    opts[n] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
    s->d = MHD_start_daemon(flags | (tls ? MHD_USE_TLS : 0), 0, NULL, NULL,
                            on_request, s, MHD_OPTION_NOTIFY_COMPLETED,
                            on_completed, s, MHD_OPTION_NOTIFY_CONNECTION,
                            on_connection, s, MHD_OPTION_ARRAY, opts,
                            MHD_OPTION_END);
    if (s->d == NULL) {
        fprintf(stderr, "%s: cannot start the HTTP daemon\n", cfg->who);
        if (fd >= 0) {
            close(fd);
            unlink(cfg->unix_path);
        }
        return -1;
    }
    if (cfg->unix_path)
        return 0; /* no port */
    info = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    if (info == NULL || info->port == 0) {
        fprintf(stderr, "%s: cannot read the bound port\n", cfg->who);
        stub_stop(s);
        return -1;
    }
    s->port = info->port;
    return 0;
}

void stub_stop(stub_http *s)
{
    if (s->d) {
        MHD_stop_daemon(s->d); /* closes the listening socket too */
        if (s->cfg.unix_path)
            unlink(s->cfg.unix_path);
    }
    s->d = NULL;
}
