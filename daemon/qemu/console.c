/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>

#include "console.h"
#include "listener.h"
#include "log.h"
#include "macro.h"

/* The serial console relay. Three kinds of fd on the loop: the connection to QEMU's chardev socket, the
 * listening console.sock, and one per attached client.
 *
 * Guest output is read until EAGAIN and handed, chunk by chunk, to the log, to every client and to on_data. Two
 * exceptions, both lossless since epoll is level-triggered and what is left is read on the next iteration (QEMU
 * meanwhile holds the guest back): at most CONSOLE_READS_PER_WAKEUP chunks, so that a guest printing flat out
 * cannot starve the loop; and only one chunk while a client has output queued, so that the loop gets to write
 * to it between reads. Otherwise a client that reads perfectly well would be overrun within one wakeup and
 * dropped; one that really does not read still fills its buffer, a chunk at a time, and is dropped.
 *
 * A write to a client or to QEMU is tried at once when nothing is queued for it; only the rest is queued, and
 * EPOLLOUT is asked for only while something is queued. */

#define CONSOLE_READ_CHUNK (16U * 1024U)
#define CONSOLE_READS_PER_WAKEUP 64U /* 1 MiB */
#define CONSOLE_LOG_ERROR_INTERVAL_USEC (60ULL * 1000000ULL)
#define CONSOLE_REFUSAL "hydrad: too many clients on this console, try again later\r\n"

/* Bytes [start, end) of data are queued. */
typedef struct Buffer {
        char *data;
        size_t start, end, allocated;
} Buffer;

typedef struct ConsoleClient ConsoleClient;

struct ConsoleClient {
        Console *console; /* borrowed */
        unsigned id;      /* for debug messages */
        int fd;
        sd_event_source *io;
        uint32_t io_events;
        bool read_closed; /* the client shut down its sending side; it may still be reading */
        Buffer out;
        ConsoleClient *prev, *next;
};

struct Console {
        unsigned n_ref;
        bool freed;
        sd_event *event;

        char *log_path;
        uint64_t log_max_bytes;
        unsigned log_keep;
        int log_fd;
        uint64_t log_size;
        uint64_t log_error_usec; /* when a failure to write the log was last reported; 0: writing fine */
        uint64_t log_lost;       /* bytes not written since then */

        char *listen_path;
        Listener *listener;
        bool listening;      /* console.sock is ours to remove */

        char *qemu_path;
        int qemu_fd;
        sd_event_source *qemu_source;
        uint32_t qemu_events;
        Buffer input;        /* for QEMU */
        bool input_dropping; /* already said that input is being dropped */

        ConsoleClient *clients;
        unsigned n_clients, next_client_id;

        void (*on_data)(Console *c, const void *data, size_t size, void *userdata);
        void *userdata;
};

static uint64_t now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

/* --- buffers --- */

static size_t buffer_size(const Buffer *b) {
        return b->end - b->start;
}

static void buffer_done(Buffer *b) {
        b->data = mfree(b->data);
        b->start = b->end = b->allocated = 0;
}

/* Appends all of p or nothing: -ENOBUFS if the buffer would hold more than max bytes. */
static int buffer_append(Buffer *b, const char *p, size_t n, size_t max) {
        size_t used = buffer_size(b);

        if (n == 0)
                return 0;
        if (used + n > max)
                return -ENOBUFS;
        if (b->end + n > b->allocated && b->start > 0) {
                memmove(b->data, b->data + b->start, used);
                b->start = 0;
                b->end = used;
        }
        if (b->end + n > b->allocated) {
                size_t a = b->allocated * 2;
                char *d;

                if (a < b->end + n)
                        a = b->end + n;
                if (a < 4096)
                        a = 4096;
                if (a > max)
                        a = max;
                d = realloc(b->data, a);
                if (!d)
                        return -ENOMEM;
                b->data = d;
                b->allocated = a;
        }
        memcpy(b->data + b->end, p, n);
        b->end += n;
        return 0;
}

/* Sends what is queued. Returns 0 when everything is sent or the socket is full, <0 on error. */
static int buffer_flush(Buffer *b, int fd) {
        while (b->start < b->end) {
                ssize_t n = send(fd, b->data + b->start, b->end - b->start, MSG_NOSIGNAL | MSG_DONTWAIT);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                return 0;
                        return -errno;
                }
                b->start += (size_t) n;
        }
        /* Drained: an idle client keeps no memory. */
        buffer_done(b);
        return 0;
}

/* Sends at once what the socket takes. Returns the number of bytes sent, or <0 on error. */
static ssize_t send_now(int fd, const char *p, size_t n) {
        size_t done = 0;

        while (done < n) {
                ssize_t k = send(fd, p + done, n - done, MSG_NOSIGNAL | MSG_DONTWAIT);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                break;
                        return -errno;
                }
                done += (size_t) k;
        }
        return (ssize_t) done;
}

static int update_io_events(sd_event_source *s, uint32_t *current, uint32_t want) {
        int r;

        if (!s || want == *current)
                return 0;
        r = sd_event_source_set_io_events(s, want);
        if (r < 0)
                return r;
        *current = want;
        return 0;
}

/* --- reference counting: on_data may free the console while we dispatch --- */

static Console *console_ref(Console *c) {
        if (c)
                c->n_ref++;
        return c;
}

static Console *console_destroy(Console *c) {
        free(c->log_path);
        free(c->listen_path);
        free(c->qemu_path);
        sd_event_unref(c->event);
        free(c);
        return NULL;
}

static Console *console_unref(Console *c) {
        if (!c)
                return NULL;
        if (--c->n_ref > 0)
                return NULL;
        return console_destroy(c);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(Console *, console_unref);

/* --- the log --- */

static int console_log_open(Console *c, int extra_flags) {
        _cleanup_close_ int fd = -EBADF;
        struct stat st;

        fd = open(c->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | extra_flags,
                  0640);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        /* Rotation renames the file: never a device or a FIFO. */
        if (!S_ISREG(st.st_mode))
                return -EINVAL;

        safe_close(c->log_fd);
        c->log_fd = TAKE_FD(fd);
        c->log_size = (uint64_t) st.st_size;
        return 0;
}

/* console.log.(N-1) -> .N, ..., console.log -> .1, then a new console.log. */
static int log_rotate(Console *c) {
        int r;

        c->log_fd = safe_close(c->log_fd);

        for (unsigned i = c->log_keep; i > 0; i--) {
                _cleanup_free_ char *from = NULL, *to = NULL;

                if (asprintf(&to, "%s.%u", c->log_path, i) < 0)
                        return -ENOMEM;
                if (i > 1 && asprintf(&from, "%s.%u", c->log_path, i - 1) < 0)
                        return -ENOMEM;
                if (rename(from ?: c->log_path, to) < 0 && errno != ENOENT) {
                        r = -errno;
                        if (i > 1) {
                                log_debug_errno(r, "console: cannot rename '%s' to '%s', ignoring: %m", from, to);
                                continue;
                        }
                        /* Keep the log bounded even so: start it again. */
                        log_warning_errno(r, "console: cannot rename '%s' to '%s', truncating it instead: %m",
                                          c->log_path, to);
                        return console_log_open(c, O_TRUNC);
                }
        }

        return console_log_open(c, 0);
}

/* Reports a failure the first time and then at most once a minute, not on every chunk. */
static void log_write_failed(Console *c, int error, size_t lost) {
        uint64_t now = now_usec();

        c->log_lost += lost;
        if (c->log_error_usec != 0 && now < c->log_error_usec + CONSOLE_LOG_ERROR_INTERVAL_USEC)
                return;
        log_warning_errno(error, "console: cannot write '%s', guest output goes to attached clients only: %m",
                          c->log_path);
        c->log_error_usec = now;
}

static void log_write_succeeded(Console *c) {
        if (c->log_error_usec == 0)
                return;
        log_info("console: writing '%s' again, %" PRIu64 " bytes of guest output are missing from it", c->log_path,
                 c->log_lost);
        c->log_error_usec = 0;
        c->log_lost = 0;
}

/* Fills console.log up to log_max_bytes, then rotates: no file ever exceeds the limit, whatever the chunk size. */
static void log_append(Console *c, const char *p, size_t n) {
        int r;

        if (!c->log_path)
                return;

        while (n > 0) {
                size_t k;
                ssize_t w;

                if (c->log_fd < 0) {
                        r = console_log_open(c, 0);
                        if (r < 0) {
                                log_write_failed(c, r, n);
                                return;
                        }
                }
                if (c->log_size >= c->log_max_bytes) {
                        r = log_rotate(c);
                        if (r < 0) {
                                log_write_failed(c, r, n);
                                return;
                        }
                        continue;
                }

                k = c->log_max_bytes - c->log_size < n ? (size_t) (c->log_max_bytes - c->log_size) : n;
                w = write(c->log_fd, p, k);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        log_write_failed(c, -errno, n);
                        return;
                }
                c->log_size += (uint64_t) w;
                p += w;
                n -= (size_t) w;
                log_write_succeeded(c);
        }
}

/* --- attached clients --- */

static void client_free(ConsoleClient *cl) {
        Console *c;

        if (!cl)
                return;
        c = cl->console;
        if (cl->prev)
                cl->prev->next = cl->next;
        else if (c->clients == cl)
                c->clients = cl->next;
        if (cl->next)
                cl->next->prev = cl->prev;
        c->n_clients--;

        cl->io = sd_event_source_disable_unref(cl->io);
        safe_close(cl->fd);
        buffer_done(&cl->out);
        free(cl);
        listener_connection_closed(c->listener);
}

static void client_drop(ConsoleClient *cl, int error, const char *why) {
        if (error != 0)
                log_debug_errno(error, "console '%s': client %u %s, disconnecting it: %m", cl->console->listen_path,
                                cl->id, why);
        else
                log_debug("console '%s': client %u %s, disconnecting it", cl->console->listen_path, cl->id, why);
        client_free(cl);
}

static int client_update_io_events(ConsoleClient *cl) {
        uint32_t want = (cl->read_closed ? 0 : EPOLLIN) | (buffer_size(&cl->out) > 0 ? EPOLLOUT : 0);

        /* With no events asked for, epoll still reports EPOLLHUP and EPOLLERR: a client that closed is noticed. */
        return update_io_events(cl->io, &cl->io_events, want);
}

/* Queues guest output for one client. The client may be freed. */
static void client_send(ConsoleClient *cl, const char *p, size_t n) {
        ssize_t k = 0;
        int r;

        if (buffer_size(&cl->out) == 0) {
                k = send_now(cl->fd, p, n);
                if (k < 0) {
                        client_drop(cl, (int) k, "is gone");
                        return;
                }
        }
        r = buffer_append(&cl->out, p + k, n - (size_t) k, CONSOLE_CLIENT_BUFFER_MAX);
        if (r == -ENOBUFS) {
                client_drop(cl, 0, "does not read its output");
                return;
        }
        if (r >= 0)
                r = client_update_io_events(cl);
        if (r < 0)
                client_drop(cl, r, "cannot be served");
}

static void qemu_queue_input(Console *c, const char *p, size_t n);

static int on_client_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        ConsoleClient *cl = userdata;
        int r;

        if ((revents & EPOLLIN) && !cl->read_closed)
                for (unsigned i = 0; i < CONSOLE_READS_PER_WAKEUP; i++) {
                        char buf[4096];
                        ssize_t n;

                        n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
                        if (n < 0) {
                                if (errno == EINTR)
                                        continue;
                                if (errno == EAGAIN)
                                        break;
                                /* ECONNRESET: it closed with our output unread. */
                                client_drop(cl, errno == ECONNRESET ? 0 : -errno,
                                            errno == ECONNRESET ? "closed the connection" : "failed");
                                return 0;
                        }
                        if (n == 0) {
                                /* It may only have shut down its sending side: keep feeding it. */
                                cl->read_closed = true;
                                break;
                        }
                        qemu_queue_input(cl->console, buf, (size_t) n);
                }

        if (revents & (EPOLLHUP | EPOLLERR)) {
                client_drop(cl, 0, "closed the connection");
                return 0;
        }

        if (revents & EPOLLOUT) {
                r = buffer_flush(&cl->out, fd);
                if (r < 0) {
                        client_drop(cl, r, "is gone");
                        return 0;
                }
        }

        r = client_update_io_events(cl);
        if (r < 0)
                client_drop(cl, r, "cannot be served");
        return 0;
}

static int client_add(Console *c, int fd_in) {
        _cleanup_close_ int fd = fd_in;
        ConsoleClient *cl;
        int r;

        cl = calloc(1, sizeof(*cl));
        if (!cl)
                return -ENOMEM;
        cl->console = c;
        cl->fd = -EBADF;

        r = sd_event_add_io(c->event, &cl->io, fd, EPOLLIN, on_client_io, cl);
        if (r < 0) {
                free(cl);
                return r;
        }
        (void) sd_event_source_set_description(cl->io, "console-client");
        cl->io_events = EPOLLIN;
        cl->fd = TAKE_FD(fd);
        cl->id = ++c->next_client_id;

        cl->next = c->clients;
        if (c->clients)
                c->clients->prev = cl;
        c->clients = cl;
        c->n_clients++;

        log_debug("console '%s': client %u attached (%u attached)", c->listen_path, cl->id, c->n_clients);
        return 0;
}

static int on_connection(int fd, void *userdata) {
        return client_add(userdata, fd);
}

static unsigned count_clients(void *userdata) {
        Console *c = userdata;
        return c->n_clients;
}

static void refuse_client(int fd, void *userdata) {
        (void) send(fd, CONSOLE_REFUSAL, strlen(CONSOLE_REFUSAL), MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* --- QEMU --- */

static int qemu_update_io_events(Console *c) {
        return update_io_events(c->qemu_source, &c->qemu_events,
                                EPOLLIN | (buffer_size(&c->input) > 0 ? EPOLLOUT : 0));
}

static void input_failed(Console *c, int error) {
        log_debug_errno(error, "console: cannot write to QEMU at '%s', dropping %zu bytes of input: %m",
                        c->qemu_path, buffer_size(&c->input));
        buffer_done(&c->input);
        (void) qemu_update_io_events(c);
}

/* What clients type. Dropped while QEMU is away, and beyond CONSOLE_INPUT_BUFFER_MAX while it does not read. */
static void qemu_queue_input(Console *c, const char *p, size_t n) {
        size_t room;
        ssize_t k = 0;

        if (c->qemu_fd < 0)
                return;

        if (buffer_size(&c->input) == 0) {
                k = send_now(c->qemu_fd, p, n);
                if (k < 0) {
                        input_failed(c, (int) k);
                        return;
                }
                p += k;
                n -= (size_t) k;
        }
        if (n == 0)
                return;

        room = CONSOLE_INPUT_BUFFER_MAX - buffer_size(&c->input);
        if (n > room) {
                if (!c->input_dropping)
                        log_debug("console: QEMU at '%s' does not read its input, dropping some", c->qemu_path);
                c->input_dropping = true;
                n = room;
        }
        if (n > 0 && buffer_append(&c->input, p, n, CONSOLE_INPUT_BUFFER_MAX) < 0)
                return;
        (void) qemu_update_io_events(c);
}

static bool clients_behind(const Console *c) {
        for (const ConsoleClient *cl = c->clients; cl; cl = cl->next)
                if (buffer_size(&cl->out) > 0)
                        return true;
        return false;
}

/* on_data may disconnect or free the console: the caller pins it. */
static void console_dispatch_output(Console *c, const char *p, size_t n) {
        ConsoleClient *next;

        log_append(c, p, n);
        for (ConsoleClient *cl = c->clients; cl; cl = next) {
                next = cl->next;
                client_send(cl, p, n);
        }
        if (c->on_data)
                c->on_data(c, p, n, c->userdata);
}

static int on_qemu_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        _cleanup_(console_unrefp) Console *c = console_ref(userdata);
        int r;

        if (revents & (EPOLLIN | EPOLLHUP | EPOLLERR))
                for (unsigned i = 0; i < CONSOLE_READS_PER_WAKEUP; i++) {
                        char buf[CONSOLE_READ_CHUNK];
                        ssize_t n;

                        n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
                        if (n < 0) {
                                if (errno == EINTR)
                                        continue;
                                if (errno == EAGAIN)
                                        break;
                                r = -errno;
                                if (r == -ECONNRESET)
                                        log_debug("console: QEMU closed '%s'", c->qemu_path);
                                else
                                        log_warning_errno(r, "console: cannot read from QEMU at '%s': %m",
                                                          c->qemu_path);
                                console_disconnect(c);
                                return 0;
                        }
                        if (n == 0) {
                                /* QEMU's exit itself is noticed through its pidfd. */
                                log_debug("console: QEMU closed '%s'", c->qemu_path);
                                console_disconnect(c);
                                return 0;
                        }

                        console_dispatch_output(c, buf, (size_t) n);
                        if (c->qemu_fd != fd) /* on_data disconnected or freed us */
                                return 0;
                        if (clients_behind(c))
                                break;
                }

        if (revents & EPOLLOUT) {
                r = buffer_flush(&c->input, fd);
                if (r < 0) {
                        /* What QEMU wrote before going away is still read above, then EOF. */
                        input_failed(c, r);
                        return 0;
                }
                if (buffer_size(&c->input) == 0)
                        c->input_dropping = false;
        }

        r = qemu_update_io_events(c);
        if (r < 0) {
                log_warning_errno(r, "console: cannot watch QEMU at '%s', disconnecting: %m", c->qemu_path);
                console_disconnect(c);
        }
        return 0;
}

int console_connect(Console *c, const char *qemu_socket_path, HydraError *err) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_close_ int fd = -EBADF;
        char *path;
        int r;

        if (!c || isempty(qemu_socket_path))
                return hydra_error_set(err, -EINVAL, "console: no QEMU socket path");
        if (c->freed)
                return hydra_error_set(err, -ESTALE, "console: already freed");
        if (strlen(qemu_socket_path) >= sizeof(sa.sun_path))
                return hydra_error_set(err, -ENAMETOOLONG, "console socket path '%s' is too long",
                                       qemu_socket_path);
        strcpy(sa.sun_path, qemu_socket_path);

        console_disconnect(c);

        path = strdup(qemu_socket_path);
        if (!path)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        free_and_replace(c->qemu_path, path);

        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return hydra_error_set(err, -errno, "console socket: %s", strerror(errno));
        /* A unix socket connect completes or fails at once; with O_NONBLOCK a full backlog is EAGAIN, not a wait. */
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return hydra_error_set(err, -errno, "connect to QEMU console '%s': %s", qemu_socket_path,
                                       strerror(errno));

        r = sd_event_add_io(c->event, &c->qemu_source, fd, EPOLLIN, on_qemu_io, c);
        if (r < 0)
                return hydra_error_set(err, r, "watch QEMU console '%s': %s", qemu_socket_path, strerror(-r));
        (void) sd_event_source_set_description(c->qemu_source, "console-qemu");
        c->qemu_events = EPOLLIN;
        c->qemu_fd = TAKE_FD(fd);

        log_debug("console: connected to QEMU at '%s'", qemu_socket_path);
        return 0;
}

void console_disconnect(Console *c) {
        if (!c)
                return;
        /* Unregister from epoll before closing the fd. */
        c->qemu_source = sd_event_source_disable_unref(c->qemu_source);
        c->qemu_fd = safe_close(c->qemu_fd);
        c->qemu_events = 0;
        buffer_done(&c->input);
        c->input_dropping = false;
}

bool console_is_connected(const Console *c) {
        return c && c->qemu_fd >= 0;
}

unsigned console_get_n_clients(const Console *c) {
        return c ? c->n_clients : 0;
}

/* --- life --- */

static int console_listen(Console *c, mode_t mode, gid_t gid, HydraError *err) {
        int r;

        r = listener_new_unix(c->event, "console socket", c->listen_path, mode, gid, &(ListenerConfig) {
                                      .description = "console-listen",
                                      .max_connections = CONSOLE_CLIENTS_MAX,
                                      .on_connection = on_connection,
                                      .count = count_clients,
                                      .refuse = refuse_client,
                                      .userdata = c,
                              }, &c->listener, err);
        if (r < 0)
                return r;
        c->listening = true; /* from here on, console_free() removes the path */
        return 0;
}

int console_new(sd_event *e, const ConsoleConfig *cfg, Console **ret, HydraError *err) {
        _cleanup_(console_freep) Console *c = NULL;
        int r;

        if (!e || !cfg || !ret)
                return hydra_error_set(err, -EINVAL, "console: invalid arguments");

        c = calloc(1, sizeof(*c));
        if (!c)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        c->n_ref = 1;
        c->event = sd_event_ref(e);
        c->log_fd = c->qemu_fd = -EBADF;
        c->log_max_bytes = cfg->log_max_bytes ?: CONSOLE_LOG_MAX_BYTES_DEFAULT;
        c->log_keep = cfg->log_keep ?: CONSOLE_LOG_KEEP_DEFAULT;
        c->on_data = cfg->on_data;
        c->userdata = cfg->userdata;

        if ((cfg->log_path && !(c->log_path = strdup(cfg->log_path))) ||
            (cfg->listen_path && !(c->listen_path = strdup(cfg->listen_path))))
                return hydra_error_set(err, -ENOMEM, "out of memory");

        if (c->log_path) {
                r = console_log_open(c, 0);
                if (r == -EINVAL)
                        return hydra_error_set(err, r, "console log '%s' is not a regular file", c->log_path);
                if (r < 0)
                        return hydra_error_set(err, r, "open console log '%s': %s", c->log_path, strerror(-r));
        }

        if (c->listen_path) {
                r = console_listen(c, cfg->listen_mode ?: 0660, cfg->listen_gid, err);
                if (r < 0)
                        return r;
        }

        *ret = TAKE_PTR(c);
        return 0;
}

Console *console_free(Console *c) {
        if (!c || c->freed)
                return NULL;

        c->freed = true;
        console_disconnect(c);
        while (c->clients)
                client_free(c->clients);

        c->listener = listener_free(c->listener);
        if (c->listening) {
                c->listening = false;
                (void) unlink(c->listen_path);
        }
        c->log_fd = safe_close(c->log_fd);

        console_unref(c);
        return NULL;
}

/* --- the stored log, for readers --- */

struct ConsoleLogSnapshot {
        size_t n, i;             /* files, the one being read */
        struct {
                int fd;
                uint64_t offset, end;
        } files[];
};

int console_log_snapshot(const char *log_path, unsigned keep, uint64_t tail_bytes, uint64_t max_bytes,
                         ConsoleLogSnapshot **ret) {
        _cleanup_(console_log_snapshot_freep) ConsoleLogSnapshot *s = NULL;
        uint64_t total = 0, skip, limit;

        s = calloc(1, sizeof(*s) + ((size_t) keep + 1) * sizeof(s->files[0]));
        if (!s)
                return -ENOMEM;
        s->n = (size_t) keep + 1;
        for (size_t i = 0; i < s->n; i++)
                s->files[i].fd = -EBADF;

        /* index 0: console.log.KEEP (oldest) ... index KEEP: console.log */
        for (size_t i = 0; i < s->n; i++) {
                _cleanup_close_ int fd = -EBADF;
                _cleanup_free_ char *path = NULL;
                unsigned gen = keep - (unsigned) i;
                struct stat st;

                if (gen > 0 ? asprintf(&path, "%s.%u", log_path, gen) < 0 : !(path = strdup(log_path)))
                        return -ENOMEM;
                fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
                if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
                        continue; /* never there, rotated away, or not a log */
                s->files[i].fd = TAKE_FD(fd);
                s->files[i].end = (uint64_t) st.st_size;
                total += (uint64_t) st.st_size;
        }

        limit = tail_bytes > 0 ? tail_bytes : total;
        if (max_bytes > 0 && limit > max_bytes)
                limit = max_bytes;
        skip = limit < total ? total - limit : 0;
        for (size_t i = 0; i < s->n; i++) {
                uint64_t size = s->files[i].end;

                s->files[i].offset = skip < size ? skip : size;
                skip -= s->files[i].offset;
        }

        *ret = TAKE_PTR(s);
        return 0;
}

uint64_t console_log_snapshot_size(const ConsoleLogSnapshot *s) {
        uint64_t n = 0;

        for (size_t i = 0; i < s->n; i++)
                n += s->files[i].end - s->files[i].offset;
        return n;
}

size_t console_log_snapshot_read(ConsoleLogSnapshot *s, void *buf, size_t size) {
        for (; s->i < s->n; s->i++) {
                uint64_t left = s->files[s->i].end - s->files[s->i].offset;
                ssize_t k;

                if (s->files[s->i].fd < 0 || left == 0)
                        continue;
                do
                        k = pread(s->files[s->i].fd, buf, left < size ? (size_t) left : size,
                                  (off_t) s->files[s->i].offset);
                while (k < 0 && errno == EINTR);
                if (k <= 0)
                        continue; /* unreadable or truncated: the rest of this file is gone */
                s->files[s->i].offset += (uint64_t) k;
                return (size_t) k;
        }
        return 0;
}

ConsoleLogSnapshot *console_log_snapshot_free(ConsoleLogSnapshot *s) {
        if (!s)
                return NULL;
        for (size_t i = 0; i < s->n; i++)
                safe_close(s->files[i].fd);
        free(s);
        return NULL;
}
