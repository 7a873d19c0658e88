/* service/http_listen.c: the listening socket, made here and handed to
 * libmicrohttpd (MHD_OPTION_LISTEN_SOCKET), so that a failure names the
 * address and port configured and says what to do ("port 8443 on
 * 127.0.0.1 is in use"), where MHD would say "Failed to bind to port 0". */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "http_int.h"

int svc_listen_socket(const svc_http_config *cfg,
                      const struct sockaddr_storage *ss, char *err,
                      size_t err_size)
{
    int one = 1, fam = ss->ss_family;
    socklen_t len = fam == AF_INET6 ? sizeof(struct sockaddr_in6)
                                    : sizeof(struct sockaddr_in);
    int fd = socket(fam, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

    if (fd < 0) {
        snprintf(err, err_size, "cannot make a socket for %s: %s",
                 cfg->listen_addr, strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fam == AF_INET6) {
        /* "::" takes IPv4 too; a specific IPv6 address only IPv6 */
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        int v6only = !IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr);
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
    }
    if (bind(fd, (const struct sockaddr *)ss, len) != 0) {
        int e = errno;

        close(fd);
        if (e == EADDRINUSE)
            snprintf(err, err_size,
                     "port %u on %s is in use: another program listens "
                     "there (ss -ltnp shows which); stop it, or set another "
                     "port",
                     cfg->port, cfg->listen_addr);
        else if (e == EACCES)
            snprintf(err, err_size,
                     "port %u on %s needs privileges (a port below 1024: "
                     "CAP_NET_BIND_SERVICE, or a port above 1023)",
                     cfg->port, cfg->listen_addr);
        else if (e == EADDRNOTAVAIL)
            snprintf(err, err_size,
                     "cannot listen on %s port %u: %s is not an address of "
                     "this host",
                     cfg->listen_addr, cfg->port, cfg->listen_addr);
        else
            snprintf(err, err_size, "cannot listen on %s port %u: %s",
                     cfg->listen_addr, cfg->port, strerror(e));
        return -1;
    }
    if (listen(fd, SOMAXCONN) != 0) {
        snprintf(err, err_size, "cannot listen on %s port %u: %s",
                 cfg->listen_addr, cfg->port, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}
