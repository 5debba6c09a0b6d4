/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>

#include "log.h"
#include "macro.h"
#include "qmp.h"

/* QMP client. A library-like file: it returns errors and reports through the callback table; it logs only the
 * transcript and what it tolerates, at debug level.
 *
 * Framing: QEMU ends every message with "\r\n" and escapes control characters inside JSON strings, so a newline
 * always ends a message. Each line is parsed on its own with json_loadb().
 *
 * What kills the connection: EOF, a read/write error, a line (or an unfinished line) longer than
 * QMP_MAX_MESSAGE_SIZE (-EMSGSIZE), a failed qmp_capabilities (-EPROTO), the handshake timeout (-ETIMEDOUT).
 * What does not: a line that is not valid JSON, and valid JSON of a shape we do not know (a reply without an id,
 * a non-object, ...). Both are dropped with a debug log: a bad line cannot desynchronize us (the next newline is
 * the next message), and losing the monitor over one line would be worse than letting the one command it may
 * have answered time out.
 *
 * jansson refuses integers above INT64_MAX, which QEMU legitimately sends for uint64 members (the Hyper-V
 * arguments of GUEST_PANICKED, say). Such a message is decoded again with every number as a real, so that it is
 * still delivered; ids are accepted in either form.
 *
 * Timeouts: a command's timer starts when qmp_invoke() is called, not when the command is written, so that a
 * caller's wait is bounded even while the handshake is still running. A timeout of 0 means
 * QMP_DEFAULT_TIMEOUT_USEC, for commands and for the handshake alike. */

#define QMP_READ_CHUNK (64U * 1024U)
#define QMP_TIMER_ACCURACY_USEC 1000ULL

typedef enum QmpState {
        QMP_STATE_GREETING,     /* waiting for {"QMP": {...}} */
        QMP_STATE_CAPABILITIES, /* qmp_capabilities sent, waiting for its reply */
        QMP_STATE_READY,
        QMP_STATE_DISCONNECTED, /* after on_disconnect or qmp_client_free(): nothing more happens */
} QmpState;

typedef struct QmpPending QmpPending;

struct QmpPending {
        QmpClient *client; /* borrowed */
        uint64_t id;
        char *command;
        json_t *request; /* the message while it waits for the handshake; NULL once queued for writing */
        qmp_reply_handler_t handler;
        void *userdata;
        sd_event_source *timer;
        QmpPending *prev, *next;
};

struct QmpClient {
        unsigned n_ref;
        bool freed; /* the owner called qmp_client_free(); we only live on while a dispatcher pins us */
        QmpState state;

        sd_event *event;
        sd_event_source *io;
        sd_event_source *handshake_timer;
        int fd;
        uint32_t io_events;

        char *name;
        QmpCallbacks callbacks;
        void *userdata;

        uint64_t next_id;
        uint64_t capabilities_id;
        QmpPending *pending_first, *pending_last; /* in id order */

        /* Input: bytes [0, in_size) are unconsumed; [0, in_scanned) are known to hold no newline. */
        char *in;
        size_t in_size, in_scanned, in_allocated;

        /* Output: bytes [out_done, out_size) are still to be written. */
        char *out;
        size_t out_size, out_done, out_allocated;
};

static QmpClient *qmp_client_ref(QmpClient *q) {
        if (q)
                q->n_ref++;
        return q;
}

static QmpPending *pending_free(QmpPending *p) {
        if (!p)
                return NULL;
        sd_event_source_disable_unref(p->timer);
        json_decref(p->request);
        free(p->command);
        free(p);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(QmpPending *, pending_free);

static void pending_unlink(QmpClient *q, QmpPending *p) {
        if (p->prev)
                p->prev->next = p->next;
        else
                q->pending_first = p->next;
        if (p->next)
                p->next->prev = p->prev;
        else
                q->pending_last = p->prev;
        p->prev = p->next = NULL;
}

static void pending_link(QmpClient *q, QmpPending *p) {
        p->prev = q->pending_last;
        p->next = NULL;
        if (q->pending_last)
                q->pending_last->next = p;
        else
                q->pending_first = p;
        q->pending_last = p;
}

static QmpPending *pending_find(QmpClient *q, uint64_t id) {
        for (QmpPending *p = q->pending_first; p; p = p->next)
                if (p->id == id)
                        return p;
        return NULL;
}

/* Takes p off the list before calling its handler, so that the handler may do anything to the client. */
static void pending_complete(QmpClient *q, QmpPending *p, json_t *result, int error, const char *desc) {
        pending_unlink(q, p);
        p->timer = sd_event_source_disable_unref(p->timer);
        if (p->handler)
                p->handler(q, result, error, desc, p->userdata);
        pending_free(p);
}

/* Fails every pending command. A handler may free the client: qmp_client_free() then cancels the rest itself
 * (-ECANCELED) and the list is empty when we get back here. */
static void pending_fail_all(QmpClient *q, int error) {
        QmpPending *p;

        while ((p = q->pending_first))
                pending_complete(q, p, NULL, error, NULL);
}

static void client_drop_transport(QmpClient *q) {
        /* Unregister from epoll before closing the fd. */
        q->io = sd_event_source_disable_unref(q->io);
        q->fd = safe_close(q->fd);
        q->handshake_timer = sd_event_source_disable_unref(q->handshake_timer);
}

static QmpClient *client_destroy(QmpClient *q) {
        QmpPending *p;

        /* Normally empty by now (free and disconnect drain it); a half-built client may get here too. */
        while ((p = q->pending_first)) {
                pending_unlink(q, p);
                pending_free(p);
        }
        client_drop_transport(q);
        free(q->in);
        free(q->out);
        free(q->name);
        sd_event_unref(q->event);
        free(q);
        return NULL;
}

static QmpClient *qmp_client_unref(QmpClient *q) {
        if (!q)
                return NULL;
        if (--q->n_ref > 0)
                return NULL;
        return client_destroy(q);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(QmpClient *, qmp_client_unref);

static int client_update_io_events(QmpClient *q) {
        uint32_t want;
        int r;

        if (!q->io)
                return 0;

        /* EPOLLOUT only while there is something to write, or the loop would spin. */
        want = EPOLLIN | (q->out_done < q->out_size ? EPOLLOUT : 0);
        if (want == q->io_events)
                return 0;

        r = sd_event_source_set_io_events(q->io, want);
        if (r < 0)
                return r;
        q->io_events = want;
        return 0;
}

/* Serializes v, appends it with QEMU's "\r\n" to the output queue and asks for EPOLLOUT. On failure the queue
 * is left as it was. */
static int client_queue_json(QmpClient *q, json_t *v) {
        _cleanup_free_ char *s = NULL;
        size_t n, need, saved;
        int r;

        s = json_dumps(v, JSON_COMPACT);
        if (!s)
                return -ENOMEM;
        n = strlen(s);

        if (q->out_done == q->out_size)
                q->out_done = q->out_size = 0;

        need = q->out_size + n + 2;
        if (need > q->out_allocated && q->out_done > 0) {
                memmove(q->out, q->out + q->out_done, q->out_size - q->out_done);
                q->out_size -= q->out_done;
                q->out_done = 0;
                need = q->out_size + n + 2;
        }
        if (need > q->out_allocated) {
                size_t a = q->out_allocated * 2;
                char *b;

                if (a < need)
                        a = need;
                if (a < 4096)
                        a = 4096;
                b = realloc(q->out, a);
                if (!b)
                        return -ENOMEM;
                q->out = b;
                q->out_allocated = a;
        }

        saved = q->out_size;
        memcpy(q->out + q->out_size, s, n);
        memcpy(q->out + q->out_size + n, "\r\n", 2);
        q->out_size += n + 2;

        r = client_update_io_events(q);
        if (r < 0) {
                q->out_size = saved;
                return r;
        }

        log_debug("QMP '%s' -> %s", q->name, s);
        return 0;
}

static int pending_send(QmpClient *q, QmpPending *p) {
        int r;

        r = client_queue_json(q, p->request);
        if (r < 0)
                return r;
        json_decref(p->request);
        p->request = NULL;
        return 0;
}

/* Fails everything and tells the owner, once. */
static void client_disconnect(QmpClient *q, int error) {
        _cleanup_(qmp_client_unrefp) QmpClient *pin = qmp_client_ref(q);

        if (q->state == QMP_STATE_DISCONNECTED)
                return;

        q->state = QMP_STATE_DISCONNECTED;
        client_drop_transport(q);
        log_debug_errno(error, "QMP '%s': disconnected: %m", q->name);

        pending_fail_all(q, -ECONNRESET);

        if (!q->freed && q->callbacks.on_disconnect)
                q->callbacks.on_disconnect(q, error, q->userdata);
}

/* Returns 0 once everything is written or the socket is full, <0 on error. */
static int client_write(QmpClient *q) {
        while (q->out_done < q->out_size) {
                ssize_t n;

                n = send(q->fd, q->out + q->out_done, q->out_size - q->out_done, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                break;
                        return -errno;
                }
                q->out_done += (size_t) n;
        }

        if (q->out_done == q->out_size)
                q->out_done = q->out_size = 0;

        return client_update_io_events(q);
}

/* Returns 1 if bytes were read, 0 if none were available, <0 on error (-ECONNRESET on EOF). */
static int client_read(QmpClient *q) {
        ssize_t n;

        if (q->in_allocated - q->in_size < QMP_READ_CHUNK) {
                size_t a = q->in_size + QMP_READ_CHUNK;
                char *b;

                b = realloc(q->in, a);
                if (!b)
                        return -ENOMEM;
                q->in = b;
                q->in_allocated = a;
        }

        n = recv(q->fd, q->in + q->in_size, QMP_READ_CHUNK, MSG_DONTWAIT);
        if (n < 0) {
                if (errno == EAGAIN || errno == EINTR)
                        return 0;
                return -errno;
        }
        if (n == 0) {
                if (q->in_size > 0)
                        log_debug("QMP '%s': EOF with %zu bytes of an unfinished message, dropping them", q->name,
                                  q->in_size);
                return -ECONNRESET;
        }

        q->in_size += (size_t) n;
        return 1;
}

static int client_handshake_done(QmpClient *q, json_t *msg) {
        json_t *error;
        int r;

        error = json_object_get(msg, "error");
        if (error || !json_object_get(msg, "return")) {
                log_debug("QMP '%s': qmp_capabilities failed: %s", q->name,
                          strempty(json_string_value(json_object_get(error, "desc"))));
                return -EPROTO;
        }

        q->state = QMP_STATE_READY;
        q->handshake_timer = sd_event_source_disable_unref(q->handshake_timer);

        /* Commands invoked during the handshake go out first, in the order they were invoked. */
        for (QmpPending *p = q->pending_first; p; p = p->next)
                if (p->request) {
                        r = pending_send(q, p);
                        if (r < 0)
                                return r;
                }

        if (q->callbacks.on_ready)
                q->callbacks.on_ready(q, q->userdata);
        return 0;
}

static int client_dispatch_greeting(QmpClient *q, json_t *msg) {
        _cleanup_(json_decrefp) json_t *cmd = NULL;
        uint64_t id;
        int r;

        if (q->state != QMP_STATE_GREETING) {
                log_debug("QMP '%s': ignoring a second greeting", q->name);
                return 0;
        }
        if (!json_is_object(json_object_get(msg, "QMP"))) {
                log_debug("QMP '%s': ignoring a malformed greeting", q->name);
                return 0;
        }

        id = q->next_id++;
        cmd = json_pack("{s:s, s:I}", "execute", "qmp_capabilities", "id", (json_int_t) id);
        if (!cmd)
                return -ENOMEM;

        r = client_queue_json(q, cmd);
        if (r < 0)
                return r;

        q->capabilities_id = id;
        q->state = QMP_STATE_CAPABILITIES;
        return 0;
}

static int client_dispatch_event(QmpClient *q, json_t *msg) {
        const char *name;

        name = json_string_value(json_object_get(msg, "event"));
        if (isempty(name)) {
                log_debug("QMP '%s': ignoring an event without a name", q->name);
                return 0;
        }

        if (q->callbacks.on_event)
                q->callbacks.on_event(q, name, json_object_get(msg, "data"), q->userdata);
        return 0;
}

/* Our ids are integers, but a message with a huge number elsewhere is decoded with reals only. */
static int json_get_id(json_t *v, uint64_t *ret) {
        if (json_is_integer(v)) {
                if (json_integer_value(v) < 0)
                        return -ERANGE;
                *ret = (uint64_t) json_integer_value(v);
                return 0;
        }
        if (json_is_real(v)) {
                double d = json_real_value(v);

                if (!(d >= 0 && d < 9007199254740992.0) || d != (double) (uint64_t) d) /* 2^53: exact */
                        return -ERANGE;
                *ret = (uint64_t) d;
                return 0;
        }
        return -EINVAL;
}

static int client_dispatch_reply(QmpClient *q, json_t *msg) {
        json_t *idv, *error;
        QmpPending *p;
        uint64_t id;

        idv = json_object_get(msg, "id");
        if (json_get_id(idv, &id) < 0) {
                /* QEMU answers a command it could not parse with an error without an id. */
                log_debug("QMP '%s': ignoring a reply without a numeric id", q->name);
                return 0;
        }

        if (q->state == QMP_STATE_CAPABILITIES && id == q->capabilities_id)
                return client_handshake_done(q, msg);

        p = pending_find(q, id);
        if (!p) {
                log_debug("QMP '%s': ignoring a reply to unknown or timed-out command id %" PRIu64, q->name, id);
                return 0;
        }

        error = json_object_get(msg, "error");
        if (error) {
                const char *desc = json_string_value(json_object_get(error, "desc"));

                if (!desc)
                        desc = json_string_value(json_object_get(error, "class"));
                pending_complete(q, p, NULL, -EIO, desc ?: "unknown QMP error");
        } else
                pending_complete(q, p, json_object_get(msg, "return"), 0, NULL);

        return 0;
}

/* line is NUL-terminated, without its "\r\n". Returns <0 only for errors that end the connection. */
static int client_dispatch_line(QmpClient *q, const char *line, size_t len) {
        json_auto_t *msg = NULL;
        json_error_t err;

        if (len == 0)
                return 0;

        log_debug("QMP '%s' <- %s", q->name, line);

        msg = json_loadb(line, len, 0, &err);
        if (!msg && json_error_code(&err) == json_error_numeric_overflow)
                msg = json_loadb(line, len, JSON_DECODE_INT_AS_REAL, &err);
        if (!msg) {
                log_debug("QMP '%s': ignoring a message that is not valid JSON: %s", q->name, err.text);
                return 0;
        }
        if (!json_is_object(msg)) {
                log_debug("QMP '%s': ignoring a message that is not an object", q->name);
                return 0;
        }

        if (json_object_get(msg, "QMP"))
                return client_dispatch_greeting(q, msg);
        if (json_object_get(msg, "event"))
                return client_dispatch_event(q, msg);
        if (json_object_get(msg, "return") || json_object_get(msg, "error"))
                return client_dispatch_reply(q, msg);

        log_debug("QMP '%s': ignoring a message of unknown shape", q->name);
        return 0;
}

/* Dispatches every complete line in the input buffer. Callbacks may disconnect or free the client (the caller
 * pins it), so the state is checked after each line. */
static int client_process_input(QmpClient *q) {
        size_t start = 0;
        int r = 0;

        while (q->state != QMP_STATE_DISCONNECTED) {
                size_t scan = q->in_scanned > start ? q->in_scanned : start;
                char *nl, *line;
                size_t len;

                nl = memchr(q->in + scan, '\n', q->in_size - scan);
                if (!nl)
                        break;

                line = q->in + start;
                len = (size_t) (nl - line);
                *nl = '\0';
                if (len > 0 && line[len - 1] == '\r')
                        line[--len] = '\0';
                start = (size_t) (nl - q->in) + 1;

                if (len > QMP_MAX_MESSAGE_SIZE) {
                        r = -EMSGSIZE;
                        break;
                }

                r = client_dispatch_line(q, line, len);
                if (r < 0)
                        break;
        }

        if (start > 0) {
                memmove(q->in, q->in + start, q->in_size - start);
                q->in_size -= start;
        }
        q->in_scanned = q->in_size;

        if (r < 0)
                return r;
        if (q->state != QMP_STATE_DISCONNECTED && q->in_size > QMP_MAX_MESSAGE_SIZE)
                return -EMSGSIZE;
        return 0;
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        _cleanup_(qmp_client_unrefp) QmpClient *pin = qmp_client_ref(userdata);
        QmpClient *q = userdata;
        int r;

        if (revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                r = client_read(q);
                if (r > 0)
                        r = client_process_input(q);
                if (r < 0)
                        goto fail;
                if (q->state == QMP_STATE_DISCONNECTED)
                        return 0;
        }

        /* Also write what reading just queued (the capabilities, say) without waiting for EPOLLOUT. */
        if (q->out_done < q->out_size) {
                r = client_write(q);
                if (r < 0)
                        goto fail;
        }
        return 0;

fail:
        client_disconnect(q, r);
        return 0;
}

static int on_handshake_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        _cleanup_(qmp_client_unrefp) QmpClient *pin = qmp_client_ref(userdata);
        QmpClient *q = userdata;

        log_debug("QMP '%s': handshake timed out", q->name);
        client_disconnect(q, -ETIMEDOUT);
        return 0;
}

static int on_command_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        QmpPending *p = userdata;
        _cleanup_(qmp_client_unrefp) QmpClient *pin = qmp_client_ref(p->client);

        log_debug("QMP '%s': command '%s' (id %" PRIu64 ") timed out", pin->name, p->command, p->id);
        pending_complete(pin, p, NULL, -ETIMEDOUT, NULL);
        return 0;
}

int qmp_client_new(sd_event *e, int fd_in, const char *name, uint64_t handshake_timeout_usec,
                   const QmpCallbacks *callbacks, void *userdata, QmpClient **ret) {
        _cleanup_close_ int fd = fd_in;
        _cleanup_(qmp_client_unrefp) QmpClient *q = NULL;
        int flags, r;

        if (!e || fd < 0 || !ret)
                return -EINVAL;

        flags = fcntl(fd, F_GETFL);
        if (flags < 0)
                return -errno;
        if (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
                return -errno;

        q = calloc(1, sizeof(*q));
        if (!q)
                return -ENOMEM;
        q->n_ref = 1;
        q->fd = -EBADF;
        q->next_id = 1;
        q->state = QMP_STATE_GREETING;
        q->event = sd_event_ref(e);
        if (callbacks)
                q->callbacks = *callbacks;
        q->userdata = userdata;

        q->name = strdup(name ?: "qmp");
        if (!q->name)
                return -ENOMEM;

        r = sd_event_add_io(e, &q->io, fd, EPOLLIN, on_io, q);
        if (r < 0)
                return r;
        q->io_events = EPOLLIN;
        q->fd = TAKE_FD(fd);
        (void) sd_event_source_set_description(q->io, "qmp-io");

        r = sd_event_add_time_relative(e, &q->handshake_timer, CLOCK_MONOTONIC,
                                       handshake_timeout_usec ?: QMP_DEFAULT_TIMEOUT_USEC, QMP_TIMER_ACCURACY_USEC,
                                       on_handshake_timeout, q);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(q->handshake_timer, "qmp-handshake-timeout");

        *ret = TAKE_PTR(q);
        return 0;
}

int qmp_invoke(QmpClient *q, const char *command, json_t *args, uint64_t timeout_usec, qmp_reply_handler_t handler,
               void *userdata) {
        _cleanup_(pending_freep) QmpPending *p = NULL;
        int r;

        if (!q || isempty(command))
                return -EINVAL;
        if (args && !json_is_object(args))
                return -EINVAL;
        if (q->state == QMP_STATE_DISCONNECTED)
                return -ENOTCONN;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->client = q;
        p->handler = handler;
        p->userdata = userdata;

        p->command = strdup(command);
        if (!p->command)
                return -ENOMEM;

        p->id = q->next_id;
        p->request = json_pack("{s:s, s:I}", "execute", command, "id", (json_int_t) p->id);
        if (!p->request)
                return -ENOMEM;
        if (args && json_object_set(p->request, "arguments", args) < 0)
                return -ENOMEM;

        r = sd_event_add_time_relative(q->event, &p->timer, CLOCK_MONOTONIC,
                                       timeout_usec ?: QMP_DEFAULT_TIMEOUT_USEC, QMP_TIMER_ACCURACY_USEC,
                                       on_command_timeout, p);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(p->timer, "qmp-command-timeout");

        if (q->state == QMP_STATE_READY) {
                r = pending_send(q, p);
                if (r < 0)
                        return r;
        }

        q->next_id++;
        pending_link(q, TAKE_PTR(p));
        return 0;
}

int qmp_client_is_ready(QmpClient *q) {
        return q && q->state == QMP_STATE_READY;
}

QmpClient *qmp_client_free(QmpClient *q) {
        if (!q)
                return NULL;
        if (q->freed) /* a handler that got -ECANCELED freed us again */
                return NULL;

        q->freed = true;
        q->state = QMP_STATE_DISCONNECTED;
        client_drop_transport(q);
        pending_fail_all(q, -ECANCELED);
        qmp_client_unref(q);
        return NULL;
}
