/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "log.h"
#include "service.h"
#include "vm_state.h"

static const char *family_name(int family) {
        switch (family) {
        case AF_UNIX:
                return "unix";
        case AF_INET:
                return "IPv4";
        case AF_INET6:
                return "IPv6";
        case AF_NETLINK:
                return "netlink";
        default:
                return "non-unix";
        }
}

static const char *type_name(int type) {
        switch (type) {
        case SOCK_STREAM:
                return "stream";
        case SOCK_DGRAM:
                return "datagram";
        case SOCK_SEQPACKET:
                return "seqpacket";
        default:
                return "non-stream";
        }
}

/* What fd is, for the error: "a datagram socket (unix)", "a stream socket (unix) that is not listening", "not a
 * socket". */
static void describe_fd(int fd, char *buf, size_t size) {
        int family = 0, type = 0, listening = 0;
        socklen_t l = sizeof(int);

        if (sd_is_socket(fd, AF_UNSPEC, 0, -1) <= 0) {
                (void) snprintf(buf, size, "not a socket");
                return;
        }
        (void) getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &l);
        l = sizeof(int);
        (void) getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l);
        l = sizeof(int);
        (void) getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &l);
        (void) snprintf(buf, size, "a %s socket (%s)%s", type_name(type), family_name(family),
                        family == AF_UNIX && type == SOCK_STREAM && !listening ? " that is not listening" : "");
}

int service_take_activated_socket(const char *socket_path, int *ret_fd, HydraError *err) {
        struct sockaddr_un sa = {};
        socklen_t salen = sizeof(sa);
        char what[96];
        int n, r;

        *ret_fd = -EBADF;
        n = sd_listen_fds(true);
        if (n < 0)
                return hydra_error_set(err, n, "cannot take the sockets systemd passed ($LISTEN_FDS): %s",
                                       strerror(-n));
        if (n == 0)
                return 0;
        if (n > 1) {
                for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + n; fd++)
                        (void) close(fd);
                return hydra_error_set(err, -EINVAL,
                                       "systemd passed %d sockets; hydrad takes one, the API socket (hydrad.socket "
                                       "must have exactly one ListenStream=, a path)", n);
        }

        r = sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1, NULL, 0);
        if (r <= 0) {
                describe_fd(SD_LISTEN_FDS_START, what, sizeof(what));
                (void) close(SD_LISTEN_FDS_START);
                return hydra_error_set(err, -EINVAL,
                                       "the socket systemd passed is %s; hydrad needs a listening unix stream socket "
                                       "(hydrad.socket: ListenStream=%s, no Accept=)", what, socket_path);
        }
        r = fcntl(SD_LISTEN_FDS_START, F_GETFL);
        if (r < 0 || fcntl(SD_LISTEN_FDS_START, F_SETFL, r | O_NONBLOCK) < 0) {
                r = -errno;
                (void) close(SD_LISTEN_FDS_START);
                return hydra_error_set(err, r, "the socket systemd passed: cannot make it non-blocking: %s",
                                       strerror(-r));
        }
        if (sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1, socket_path, 0) <= 0) {
                if (getsockname(SD_LISTEN_FDS_START, (struct sockaddr *) &sa, &salen) < 0 || sa.sun_path[0] == '\0')
                        (void) snprintf(sa.sun_path, sizeof(sa.sun_path), "(unnamed)");
                log_warning("systemd passes the API socket at '%.*s', but hydrad's socket setting is '%s': clients "
                            "must use the former (make hydrad.socket's ListenStream= and hydrad.conf's socket agree)",
                            (int) sizeof(sa.sun_path), sa.sun_path, socket_path);
        }
        *ret_fd = SD_LISTEN_FDS_START;
        return 0;
}

void service_status_text(const VmStatus *sts, size_t n, char *buf, size_t size) {
        size_t off = 0;

        if (size == 0)
                return;
        buf[0] = '\0';
        for (size_t i = 0; i < n && off < size; i++) {
                const VmStatus *st = &sts[i];
                int k;

                if (!st->registered)
                        k = snprintf(buf + off, size - off, "%s%s: not registered", i > 0 ? "; " : "", st->name);
                else
                        k = snprintf(buf + off, size - off, "%s%s: %s%s", i > 0 ? "; " : "", st->name,
                                     vm_state_to_string(st->state), st->ready ? ", ready" : "");
                if (k < 0)
                        return;
                off += (size_t) k;
        }
}
