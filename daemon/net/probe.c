/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "macro.h"
#include "probe.h"
#include "utf8.h"

/* --- console pattern --- */

struct LineMatcher {
        regex_t regex;
        bool compiled;
        bool matched;
        bool keep_last;                         /* line_matcher_new_last() */
        bool after_cr;                          /* the last byte was CR: an LF now ends no other line */
        size_t len;
        char line[LINE_MATCHER_LINE_MAX + 1];   /* the tail of the current line, NUL-terminated when matched */
        char *clean;                            /* keep_last: the line cleaned (LINE_MATCHER_LINE_MAX + 1) */
        char last[LINE_MATCHER_LAST_MAX + 1];   /* keep_last: the last line that matched; "" none */
};

/* --- console text --- */

/* The length of the escape sequence at p[0] == ESC (n bytes available): CSI "ESC [ params final", OSC "ESC ] ...
 * BEL" or "... ESC \\", else ESC and the byte after it. An unfinished one runs to the end. */
static size_t escape_length(const unsigned char *p, size_t n) {
        size_t i;

        if (n < 2)
                return n;
        if (p[1] == '[') {
                for (i = 2; i < n; i++)
                        if (p[i] >= 0x40 && p[i] <= 0x7e)
                                return i + 1;
                return n;
        }
        if (p[1] == ']') {
                for (i = 2; i < n; i++) {
                        if (p[i] == 0x07)
                                return i + 1;
                        if (p[i] == 0x1b && i + 1 < n && p[i + 1] == '\\')
                                return i + 2;
                }
                return n;
        }
        return 2;
}

/* The length of the UTF-8 sequence its lead byte announces, 0 for a byte that leads none. */
static size_t utf8_lead_length(unsigned char c) {
        if (c >= 0xc2 && c <= 0xdf)
                return 2;
        if (c >= 0xe0 && c <= 0xef)
                return 3;
        if (c >= 0xf0 && c <= 0xf4)
                return 4;
        return 0;
}

size_t console_text_clean(const void *src, size_t n, char *dst, size_t size) {
        const unsigned char *p = src;
        _cleanup_free_ char *buf = NULL;
        size_t len = 0, i = 0, start = 0, cap;
        bool pending_break = false;

        assert(size >= 1);
        /* Each byte gives at most one, a line break three (" | "). */
        cap = 3 * n + 1;
        buf = malloc(cap);
        if (!buf) {
                dst[0] = '\0';
                return 0;
        }

        while (i < n) {
                unsigned char c = p[i];
                size_t k;

                if (c == 0x1b) {
                        i += escape_length(p + i, n - i);
                        continue;
                }
                if (c == '\n' || c == '\r') {
                        pending_break = len > 0;
                        i++;
                        continue;
                }
                if ((c < 0x20 && c != '\t') || c == 0x7f) {
                        i++;
                        continue;
                }
                if (pending_break) {
                        memcpy(buf + len, " | ", 3);
                        len += 3;
                        pending_break = false;
                }
                if (c < 0x80) {
                        buf[len++] = c == '\t' ? ' ' : (char) c;
                        i++;
                        continue;
                }
                k = utf8_lead_length(c);
                if (k > 0 && i + k <= n && utf8_valid(p + i, k)) {
                        memcpy(buf + len, p + i, k);
                        len += k;
                        i += k;
                } else {
                        buf[len++] = '?';
                        i++;
                }
        }

        /* Too long: its end, from a whole character, and from a line's start if one is in it. */
        if (len > size - 1) {
                const char *sep;

                start = len - (size - 1);
                while (start < len && ((unsigned char) buf[start] & 0xc0) == 0x80)
                        start++;
                buf[len] = '\0';
                /* From 3 bytes before: a separator the cut fell into, or that ends just before it, counts. */
                sep = strstr(buf + (start > 3 ? start - 3 : 0), " | ");
                if (sep)
                        start = (size_t) (sep - buf) + 3;
        }
        memcpy(dst, buf + start, len - start);
        dst[len - start] = '\0';
        return len - start;
}

/* --- console pattern --- */

int line_matcher_new_last(const char *regex, LineMatcher **ret, HydraError *err) {
        LineMatcher *m;
        int r;

        r = line_matcher_new(regex, &m, err);
        if (r < 0)
                return r;
        m->clean = malloc(LINE_MATCHER_LINE_MAX + 1);
        if (!m->clean) {
                line_matcher_free(m);
                return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        m->keep_last = true;
        *ret = m;
        return 0;
}

const char *line_matcher_last(const LineMatcher *m) {
        return m && m->last[0] ? m->last : NULL;
}

int line_matcher_new(const char *regex, LineMatcher **ret, HydraError *err) {
        _cleanup_(line_matcher_freep) LineMatcher *m = NULL;
        char msg[256];
        int r;

        if (!regex || !ret)
                return hydra_error_set(err, -EINVAL, "readiness pattern: invalid arguments");

        m = calloc(1, sizeof(*m));
        if (!m)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        r = regcomp(&m->regex, regex, REG_EXTENDED | REG_NOSUB);
        if (r == REG_ESPACE)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        if (r != 0) {
                (void) regerror(r, &m->regex, msg, sizeof(msg));
                return hydra_error_set(err, -EINVAL, "bad readiness pattern '%s': %s", regex, msg);
        }
        m->compiled = true;

        *ret = TAKE_PTR(m);
        return 0;
}

LineMatcher *line_matcher_free(LineMatcher *m) {
        if (!m)
                return NULL;
        if (m->compiled)
                regfree(&m->regex);
        free(m->clean);
        free(m);
        return NULL;
}

void line_matcher_reset(LineMatcher *m) {
        if (!m)
                return;
        m->matched = false;
        m->after_cr = false;
        m->len = 0;
        m->last[0] = '\0';
}

/* Appends n bytes but NULs, keeping the last LINE_MATCHER_LINE_MAX bytes of the line: a prompt is at its end. */
static void line_append(LineMatcher *m, const char *p, size_t n) {
        size_t count = 0, skip = 0;

        for (size_t i = 0; i < n; i++)
                count += p[i] != '\0';
        if (count == 0)
                return;

        if (count >= LINE_MATCHER_LINE_MAX) {
                skip = count - LINE_MATCHER_LINE_MAX;
                m->len = 0;
        } else if (m->len + count > LINE_MATCHER_LINE_MAX) {
                size_t drop = m->len + count - LINE_MATCHER_LINE_MAX;

                memmove(m->line, m->line + drop, m->len - drop);
                m->len -= drop;
        }

        for (size_t i = 0; i < n; i++) {
                if (p[i] == '\0')
                        continue;
                if (skip > 0) {
                        skip--;
                        continue;
                }
                m->line[m->len++] = p[i];
        }
}

static bool line_matches(LineMatcher *m) {
        m->line[m->len] = '\0';
        return regexec(&m->regex, m->line, 0, NULL, 0) == 0;
}

/* keep_last: a complete line, cleaned, matched and kept if it matches. Returns whether it did. */
static bool line_keep_if_matches(LineMatcher *m) {
        size_t n;

        n = console_text_clean(m->line, m->len, m->clean, LINE_MATCHER_LINE_MAX + 1);
        if (n == 0 || regexec(&m->regex, m->clean, 0, NULL, 0) != 0)
                return false;
        if (n > LINE_MATCHER_LAST_MAX) {
                /* Its beginning says what failed; cut on a whole character. */
                n = LINE_MATCHER_LAST_MAX - 3;
                while (n > 0 && ((unsigned char) m->clean[n] & 0xc0) == 0x80)
                        n--;
                memcpy(m->clean + n, "...", 4);
        }
        memcpy(m->last, m->clean, strlen(m->clean) + 1);
        return true;
}

bool line_matcher_feed(LineMatcher *m, const void *data, size_t size) {
        const char *p = data, *end = p + size;
        bool kept = false;

        if (!m)
                return false;

        while ((m->keep_last || !m->matched) && p < end) {
                const char *q = p;

                while (q < end && *q != '\n' && *q != '\r')
                        q++;
                if (q > p) {
                        line_append(m, p, (size_t) (q - p));
                        m->after_cr = false;
                }
                if (q == end)
                        break;

                /* A line ends here, unless this is the LF of a CR LF. */
                if (*q == '\n' && m->after_cr)
                        m->after_cr = false;
                else {
                        m->after_cr = *q == '\r';
                        if (m->keep_last)
                                kept |= m->len > 0 && line_keep_if_matches(m);
                        else if (line_matches(m))
                                m->matched = true;
                        m->len = 0;
                }
                p = q + 1;
        }
        if (m->keep_last)
                return kept;

        /* A prompt: the guest waits at the end of a line it has not finished. */
        if (!m->matched && m->len > 0 && line_matches(m))
                m->matched = true;
        return m->matched;
}

/* --- TCP --- */

struct TcpProbe {
        sd_event *event;
        int fd;
        sd_event_source *io;
        sd_event_source *timer;   /* the connect timeout, then the hold */
        sd_event_source *defer;   /* the connect failed at once: report it from the loop */
        int connect_error;
        bool connected;
        bool dispatching;         /* in the callback: tcp_probe_cancel() must not free us */
        uint64_t hold_usec;
        tcp_probe_done_t cb;
        void *userdata;
        char why[128];
};

static TcpProbe *tcp_probe_free(TcpProbe *p) {
        if (!p)
                return NULL;
        p->io = sd_event_source_disable_unref(p->io);
        p->timer = sd_event_source_disable_unref(p->timer);
        p->defer = sd_event_source_disable_unref(p->defer);
        p->fd = safe_close(p->fd);
        sd_event_unref(p->event);
        free(p);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(TcpProbe *, tcp_probe_free);

/* Words a readiness detail can carry, lower case like the rest of it. */
static const char *why_from_errno(int error) {
        switch (abs(error)) {
        case ECONNREFUSED:
                return "connection refused";
        case ECONNRESET:
                return "connection reset by peer";
        case ETIMEDOUT:
                return "timed out";
        case EHOSTUNREACH:
                return "host unreachable";
        case ENETUNREACH:
                return "network unreachable";
        default:
                return NULL;
        }
}

static void tcp_probe_finish(TcpProbe *p, bool ready, int error, const char *why) {
        const char *w = why_from_errno(error);

        if (w)
                (void) snprintf(p->why, sizeof(p->why), "%s", w);
        else if (error != 0)
                (void) snprintf(p->why, sizeof(p->why), "%s", strerror(abs(error)));
        else
                (void) snprintf(p->why, sizeof(p->why), "%s", why);

        /* The connection goes before the callback, which may start the next probe. */
        p->io = sd_event_source_disable_unref(p->io);
        p->timer = sd_event_source_disable_unref(p->timer);
        p->defer = sd_event_source_disable_unref(p->defer);
        p->fd = safe_close(p->fd);

        p->dispatching = true;
        p->cb(p, ready, p->why, p->userdata);
        tcp_probe_free(p);
}

static int tcp_probe_connected(TcpProbe *p) {
        int error = 0, r;
        socklen_t len = sizeof(error);

        if (getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &error, &len) < 0)
                return -errno;
        if (error != 0)
                return -error;

        p->connected = true;
        /* A nudge that most services answer: an HTTP server its headers, an HTTP/2 or gRPC server an error or a
         * GOAWAY, line protocols an error; SSH and SMTP speak first anyway. Nothing answers through a forward
         * whose guest side is not listening yet. */
        (void) send(p->fd, TCP_PROBE_NUDGE, strlen(TCP_PROBE_NUDGE), MSG_NOSIGNAL | MSG_DONTWAIT);
        r = sd_event_source_set_io_events(p->io, EPOLLIN);
        if (r < 0)
                return r;
        /* From the connect timeout to the hold. */
        r = sd_event_source_set_time_relative(p->timer, p->hold_usec);
        if (r < 0)
                return r;
        return sd_event_source_set_enabled(p->timer, SD_EVENT_ONESHOT);
}

static int on_tcp_probe_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        TcpProbe *p = userdata;
        char buf[256];
        ssize_t n;
        int r;

        if (!p->connected) {
                r = tcp_probe_connected(p);
                if (r < 0) {
                        tcp_probe_finish(p, false, r, NULL);
                        return 0;
                }
                /* The peer may have closed in the same breath: read below if so. */
                if (!(revents & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                        return 0;
        }

        n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n < 0) {
                if (errno == EAGAIN || errno == EINTR)
                        return 0;
                tcp_probe_finish(p, false, -errno, NULL);
        } else if (n == 0)
                tcp_probe_finish(p, false, 0, "closed by peer");
        else
                tcp_probe_finish(p, true, 0, "data received");
        return 0;
}

static int on_tcp_probe_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        TcpProbe *p = userdata;

        if (p->connected)
                tcp_probe_finish(p, false, 0, "no answer");
        else
                tcp_probe_finish(p, false, -ETIMEDOUT, NULL);
        return 0;
}

static int on_tcp_probe_defer(sd_event_source *s, void *userdata) {
        TcpProbe *p = userdata;

        tcp_probe_finish(p, false, p->connect_error, NULL);
        return 0;
}

int tcp_probe_start(sd_event *e, const char *host, uint16_t port, uint64_t hold_usec, uint64_t timeout_usec,
                    tcp_probe_done_t cb, void *userdata, TcpProbe **ret) {
        _cleanup_(tcp_probe_freep) TcpProbe *p = NULL;
        struct addrinfo hints = {
                .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV,
                .ai_family = AF_UNSPEC,
                .ai_socktype = SOCK_STREAM,
        };
        struct addrinfo *ai = NULL;
        char service[8];
        int r;

        if (!e || isempty(host) || port == 0 || !cb)
                return -EINVAL;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->fd = -EBADF;
        p->event = sd_event_ref(e);
        p->hold_usec = hold_usec;
        p->cb = cb;
        p->userdata = userdata;

        (void) snprintf(service, sizeof(service), "%u", (unsigned) port);
        r = getaddrinfo(host, service, &hints, &ai);
        if (r != 0)
                return r == EAI_MEMORY ? -ENOMEM : -EINVAL;
        p->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
        if (p->fd < 0) {
                r = -errno;
                freeaddrinfo(ai);
                return r;
        }
        r = connect(p->fd, ai->ai_addr, ai->ai_addrlen) < 0 ? -errno : 0;
        freeaddrinfo(ai);

        if (r < 0 && r != -EINPROGRESS) {
                /* Refused or unreachable at once: still a result, delivered like the others. */
                p->connect_error = r;
                r = sd_event_add_defer(e, &p->defer, on_tcp_probe_defer, p);
                if (r < 0)
                        return r;
                (void) sd_event_source_set_description(p->defer, "tcp-probe");
        } else {
                /* Connected at once (loopback may) or in progress: either way EPOLLOUT says so. */
                r = sd_event_add_io(e, &p->io, p->fd, EPOLLOUT, on_tcp_probe_io, p);
                if (r < 0)
                        return r;
                (void) sd_event_source_set_description(p->io, "tcp-probe");
                r = sd_event_add_time_relative(e, &p->timer, CLOCK_MONOTONIC, timeout_usec, 0, on_tcp_probe_timer,
                                               p);
                if (r < 0)
                        return r;
                (void) sd_event_source_set_description(p->timer, "tcp-probe-timer");
        }

        if (ret)
                *ret = p;
        TAKE_PTR(p);
        return 0;
}

TcpProbe *tcp_probe_cancel(TcpProbe *p) {
        if (!p || p->dispatching)
                return NULL;
        return tcp_probe_free(p);
}
