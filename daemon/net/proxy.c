/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "listener.h"
#include "log.h"
#include "macro.h"
#include "proxy.h"

/* The unix-to-TCP forwarder. Per connection two sockets on the loop, the client's (accepted on the listening
 * socket) and the target's (a non-blocking TCP connect), and per direction one buffer: what was read from a side
 * waits in that side's buffer until the other side takes it.
 *
 * Backpressure: a side is watched for EPOLLIN only while its buffer has room, for EPOLLOUT only while the other
 * side's buffer holds something for it. Epoll is level-triggered, so what a wakeup leaves behind is seen again.
 *
 * EOF and hangups: a read of 0 marks the side read_eof; once its buffer is delivered the other side gets a
 * shutdown(SHUT_WR). EPOLLHUP on a side means it can receive nothing more (its peer closed, or both directions
 * are shut): what is meant for it is dropped. A direction is done when its EOF was passed on or its receiver hung
 * up; the pair is closed when both are. Any error closes the pair. systemd's socket-proxyd closes a pair at the
 * first EOF; a gRPC client may half-close, so we do not. */

typedef struct ProxyConnection ProxyConnection;

/* One socket of a pair, and what was read from it for the other one. */
typedef struct Side {
        int fd;
        sd_event_source *io;
        uint32_t events;    /* asked for */
        bool enabled;
        bool read_eof;      /* it sent EOF: nothing more comes from it */
        bool write_shut;    /* we passed an EOF on to it */
        bool hup;           /* it can receive nothing more: what is meant for it is dropped */
        char *buf;          /* PROXY_BUFFER_SIZE bytes; [start, end) is not delivered to the other side yet */
        size_t start, end;
} Side;

struct ProxyConnection {
        Proxy *proxy;       /* borrowed */
        unsigned id;        /* for debug messages */
        Side client, target;
        bool connecting;    /* the target's connect is in progress */
        sd_event_source *connect_timer;
        ProxyConnection *prev, *next;
};

struct Proxy {
        sd_event *event;
        char *listen_path;
        Listener *listener;
        bool listening;     /* the socket file is ours to remove */

        bool has_target;
        struct sockaddr_storage target;
        socklen_t target_len;
        char *target_name;  /* "127.0.0.1:35000", for messages; NULL: no target */
        const ProxyFallback *fallback; /* borrowed, may be NULL */

        ProxyConnection *connections;
        unsigned n_connections, next_id;
};

/* --- one side --- */

static size_t side_pending(const Side *s) {
        return s->end - s->start;
}

static void side_done(Side *s) {
        /* Unregister from epoll before closing the fd. */
        s->io = sd_event_source_disable_unref(s->io);
        s->fd = safe_close(s->fd);
        s->buf = mfree(s->buf);
}

/* Reads from s into its buffer while there is room. Returns 0, or <0 on error. */
static int side_read(Side *s) {
        if (s->read_eof)
                return 0;
        if (s->start == s->end)
                s->start = s->end = 0;
        else if (s->end == PROXY_BUFFER_SIZE && s->start > 0) {
                memmove(s->buf, s->buf + s->start, side_pending(s));
                s->end -= s->start;
                s->start = 0;
        }

        while (s->end < PROXY_BUFFER_SIZE) {
                ssize_t n = recv(s->fd, s->buf + s->end, PROXY_BUFFER_SIZE - s->end, MSG_DONTWAIT);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                return 0;
                        return -errno;
                }
                if (n == 0) {
                        s->read_eof = true;
                        return 0;
                }
                s->end += (size_t) n;
        }
        return 0;
}

/* Sends from's buffer to `to`, then passes from's EOF on once all of it is delivered. Returns 0 when done or when
 * `to` is full, <0 on error. */
static int side_flush(Side *from, Side *to) {
        if (to->hup) {
                from->start = from->end = 0;
                return 0;
        }

        while (from->start < from->end) {
                ssize_t n = send(to->fd, from->buf + from->start, side_pending(from), MSG_NOSIGNAL | MSG_DONTWAIT);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                return 0;
                        return -errno;
                }
                from->start += (size_t) n;
        }
        from->start = from->end = 0;

        if (from->read_eof && !to->write_shut) {
                /* ENOTCONN: the peer is gone already, which the next wakeup reports as a hangup. */
                if (shutdown(to->fd, SHUT_WR) < 0 && errno != ENOTCONN)
                        return -errno;
                to->write_shut = true;
        }
        return 0;
}

/* Everything from `from` reached `to` (EOF included), or `to` takes nothing more. */
static bool direction_done(const Side *from, const Side *to) {
        return to->hup || (from->read_eof && side_pending(from) == 0 && to->write_shut);
}

static int socket_error(int fd) {
        int error = 0;
        socklen_t len = sizeof(error);

        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) < 0)
                return -errno;
        return -error;
}

/* --- a connection --- */

static Side *other_side(ProxyConnection *c, Side *s) {
        return s == &c->client ? &c->target : &c->client;
}

static void connection_free(ProxyConnection *c) {
        Proxy *p = c->proxy;

        if (c->prev)
                c->prev->next = c->next;
        else if (p->connections == c)
                p->connections = c->next;
        if (c->next)
                c->next->prev = c->prev;
        p->n_connections--;

        c->connect_timer = sd_event_source_disable_unref(c->connect_timer);
        side_done(&c->client);
        side_done(&c->target);
        free(c);
        listener_connection_closed(p->listener);
}

static void connection_close(ProxyConnection *c, int error, const char *why) {
        if (error != 0)
                log_debug_errno(error, "proxy '%s': connection %u %s, closing it: %m", c->proxy->listen_path, c->id,
                                why);
        else
                log_debug("proxy '%s': connection %u %s, closing it", c->proxy->listen_path, c->id, why);
        connection_free(c);
}

static int side_update_io_events(ProxyConnection *c, Side *s) {
        Side *o = other_side(c, s);
        uint32_t want = 0;
        int r;

        if (c->connecting && s == &c->target)
                want = EPOLLOUT;
        else {
                if (!s->read_eof && !o->hup && side_pending(s) < PROXY_BUFFER_SIZE)
                        want |= EPOLLIN;
                if (!s->hup && side_pending(o) > 0)
                        want |= EPOLLOUT;
        }

        /* Epoll reports EPOLLHUP whatever we ask for: once seen, a side with nothing to do is switched off rather
         * than woken on every iteration. */
        if (want == 0 && s->hup) {
                if (s->enabled) {
                        r = sd_event_source_set_enabled(s->io, SD_EVENT_OFF);
                        if (r < 0)
                                return r;
                        s->enabled = false;
                }
                return 0;
        }
        if (want != s->events) {
                r = sd_event_source_set_io_events(s->io, want);
                if (r < 0)
                        return r;
                s->events = want;
        }
        if (!s->enabled) {
                r = sd_event_source_set_enabled(s->io, SD_EVENT_ON);
                if (r < 0)
                        return r;
                s->enabled = true;
        }
        return 0;
}

/* Moves what can be moved without waiting, closes the pair when both directions are done, and asks for the
 * events that let the rest move. The connection may be freed. */
static void connection_pump(ProxyConnection *c) {
        int r;

        if (!c->connecting) {
                r = side_flush(&c->client, &c->target);
                if (r < 0) {
                        connection_close(c, r, "cannot write to the target");
                        return;
                }
        }
        r = side_flush(&c->target, &c->client);
        if (r < 0) {
                connection_close(c, r, "cannot write to the client");
                return;
        }

        if (!c->connecting && direction_done(&c->client, &c->target) && direction_done(&c->target, &c->client)) {
                connection_close(c, 0, "is finished");
                return;
        }

        r = side_update_io_events(c, &c->client);
        if (r >= 0)
                r = side_update_io_events(c, &c->target);
        if (r < 0)
                connection_close(c, r, "cannot be watched");
}

static int on_connect_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        ProxyConnection *c = userdata;

        connection_close(c, -ETIMEDOUT, "cannot reach the target");
        return 0;
}

static int target_connected(ProxyConnection *c) {
        int r;

        r = socket_error(c->target.fd);
        if (r < 0)
                return r;
        c->connecting = false;
        c->connect_timer = sd_event_source_disable_unref(c->connect_timer);
        log_debug("proxy '%s': connection %u connected to %s", c->proxy->listen_path, c->id, c->proxy->target_name);
        return 0;
}

static int on_side_io(sd_event_source *source, int fd, uint32_t revents, void *userdata) {
        ProxyConnection *c = userdata;
        Side *s = source == c->client.io ? &c->client : &c->target;
        int r;

        if (c->connecting && s == &c->target) {
                r = target_connected(c);
                if (r < 0) {
                        connection_close(c, r, "cannot reach the target");
                        return 0;
                }
        } else if (revents & EPOLLERR) {
                r = socket_error(fd);
                connection_close(c, r < 0 ? r : -EIO, s == &c->client ? "failed on the client side"
                                                                      : "failed on the target side");
                return 0;
        }

        if (revents & EPOLLHUP)
                s->hup = true;
        if (revents & (EPOLLIN | EPOLLHUP)) {
                r = side_read(s);
                if (r < 0) {
                        connection_close(c, r, s == &c->client ? "cannot read from the client"
                                                               : "cannot read from the target");
                        return 0;
                }
        }

        connection_pump(c);
        return 0;
}

static int side_init(ProxyConnection *c, Side *s, int fd, uint32_t events) {
        int r;

        s->buf = malloc(PROXY_BUFFER_SIZE);
        if (!s->buf)
                return -ENOMEM;
        r = sd_event_add_io(c->proxy->event, &s->io, fd, events, on_side_io, c);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(s->io, s == &c->client ? "proxy-client" : "proxy-target");
        s->fd = fd;
        s->events = events;
        s->enabled = true;
        return 0;
}

/* Takes client_fd (closes it on error). */
static int connection_new(Proxy *p, int client_fd) {
        _cleanup_close_ int cfd = client_fd, tfd = -EBADF;
        ProxyConnection *c;
        int r, one = 1;

        tfd = socket(p->target.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
        if (tfd < 0)
                return -errno;
        /* gRPC sends small frames and waits for the answer. */
        (void) setsockopt(tfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->proxy = p;
        c->id = ++p->next_id;
        c->client.fd = c->target.fd = -EBADF;
        c->next = p->connections;
        if (p->connections)
                p->connections->prev = c;
        p->connections = c;
        p->n_connections++;

        if (connect(tfd, (struct sockaddr *) &p->target, p->target_len) < 0) {
                if (errno != EINPROGRESS) {
                        r = -errno;
                        /* The client's fd is closed on return, before the connection's, which holds none yet. */
                        connection_close(c, r, "cannot reach the target");
                        return 0;
                }
                c->connecting = true;
        }

        r = side_init(c, &c->client, cfd, EPOLLIN);
        if (r < 0)
                goto fail;
        TAKE_FD(cfd);
        r = side_init(c, &c->target, tfd, c->connecting ? EPOLLOUT : EPOLLIN);
        if (r < 0)
                goto fail;
        TAKE_FD(tfd);

        if (c->connecting) {
                r = sd_event_add_time_relative(p->event, &c->connect_timer, CLOCK_MONOTONIC,
                                               PROXY_CONNECT_TIMEOUT_USEC, 0, on_connect_timeout, c);
                if (r < 0)
                        goto fail;
                (void) sd_event_source_set_description(c->connect_timer, "proxy-connect");
        }

        log_debug("proxy '%s': connection %u accepted (%u open)%s", p->listen_path, c->id, p->n_connections,
                  c->connecting ? ", connecting" : "");
        return 0;

fail:
        connection_free(c);
        return r;
}

/* --- the listener --- */

static int on_connection(int fd, void *userdata) {
        Proxy *p = userdata;

        if (p->has_target)
                return connection_new(p, fd);
        if (p->fallback)
                return p->fallback->serve(fd, p->fallback->userdata);
        /* Nobody to answer: the client learns at once (EOF) rather than waiting. */
        log_debug("proxy '%s': no target, closing a connection", p->listen_path);
        safe_close(fd);
        return 0;
}

static unsigned count_connections(void *userdata) {
        Proxy *p = userdata;
        unsigned n = p->n_connections;

        if (p->fallback && p->fallback->count)
                n += p->fallback->count(p->fallback->userdata);
        return n;
}

static int proxy_listen(Proxy *p, mode_t mode, gid_t gid, HydraError *err) {
        int r;

        r = listener_new_unix(p->event, "proxy socket", p->listen_path, mode, gid, &(ListenerConfig) {
                                      .description = "proxy-listen",
                                      .max_connections = PROXY_CONNECTIONS_MAX,
                                      .on_connection = on_connection,
                                      .count = count_connections,
                                      .userdata = p,
                              }, &p->listener, err);
        if (r < 0)
                return r;
        p->listening = true; /* from here on, proxy_free() removes the path */
        return 0;
}

/* A numeric address only: getaddrinfo() with AI_NUMERICHOST never asks a resolver. */
int proxy_set_target(Proxy *p, const char *host, uint16_t port, HydraError *err) {
        struct addrinfo hints = {
                .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV,
                .ai_family = AF_UNSPEC,
                .ai_socktype = SOCK_STREAM,
        };
        struct addrinfo *ai = NULL;
        char service[8], *name;
        bool v6;
        int r;

        if (isempty(host) || port == 0)
                return hydra_error_set(err, -EINVAL, "proxy: invalid target");
        (void) snprintf(service, sizeof(service), "%u", (unsigned) port);
        r = getaddrinfo(host, service, &hints, &ai);
        if (r != 0)
                return hydra_error_set(err, r == EAI_MEMORY ? -ENOMEM : -EINVAL,
                                       "proxy target '%s' is not a numeric address: %s", host, gai_strerror(r));
        v6 = strchr(host, ':');
        if (asprintf(&name, "%s%s%s:%u", v6 ? "[" : "", host, v6 ? "]" : "", (unsigned) port) < 0) {
                freeaddrinfo(ai);
                return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        memcpy(&p->target, ai->ai_addr, ai->ai_addrlen);
        p->target_len = ai->ai_addrlen;
        freeaddrinfo(ai);
        free(p->target_name);
        p->target_name = name;
        p->has_target = true;
        log_debug("proxy '%s': forwarding to %s", p->listen_path, p->target_name);
        return 0;
}

void proxy_clear_target(Proxy *p) {
        if (!p || !p->has_target)
                return;
        while (p->connections)
                connection_close(p->connections, 0, "loses its target");
        p->has_target = false;
        p->target_name = mfree(p->target_name);
        log_debug("proxy '%s': no target", p->listen_path);
}

bool proxy_has_target(const Proxy *p) {
        return p && p->has_target;
}

void proxy_set_fallback(Proxy *p, const ProxyFallback *fallback) {
        p->fallback = fallback;
}

int proxy_new(sd_event *e, const char *listen_path, mode_t mode, gid_t gid, const char *target_host,
              uint16_t target_port, Proxy **ret, HydraError *err) {
        _cleanup_(proxy_freep) Proxy *p = NULL;
        int r;

        if (!e || isempty(listen_path) || (target_host ? target_port == 0 : target_port != 0) || !ret)
                return hydra_error_set(err, -EINVAL, "proxy: invalid arguments");

        p = calloc(1, sizeof(*p));
        if (!p)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        p->event = sd_event_ref(e);
        p->listen_path = strdup(listen_path);
        if (!p->listen_path)
                return hydra_error_set(err, -ENOMEM, "out of memory");

        if (target_host) {
                r = proxy_set_target(p, target_host, target_port, err);
                if (r < 0)
                        return r;
        }
        r = proxy_listen(p, mode, gid, err);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(p);
        return 0;
}

Proxy *proxy_free(Proxy *p) {
        if (!p)
                return NULL;

        while (p->connections)
                connection_free(p->connections);
        p->listener = listener_free(p->listener);
        if (p->listening)
                (void) unlink(p->listen_path);
        free(p->listen_path);
        free(p->target_name);
        sd_event_unref(p->event);
        free(p);
        return NULL;
}

unsigned proxy_connections(const Proxy *p) {
        return p ? p->n_connections : 0;
}
