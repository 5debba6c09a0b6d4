/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "console.h"
#include "macro.h"

/* A plain blocking program around one poll(2): the socket is non-blocking so that typing never stalls reading
 * (hydrad drops a client whose output backs up), stdout is written with blocking writes (a slow reader of ours
 * slows us down, and hydrad then drops us: that is its rule, not ours to work around). */

#define CONSOLE_ESCAPE 0x1d /* Ctrl-] */
#define CONSOLE_BUFFER 16384

static volatile sig_atomic_t got_signal = 0;

static void on_signal(int sig) {
        got_signal = sig;
}

typedef struct Session {
        int fd;
        bool tty;                  /* stdin is a terminal: raw mode, Ctrl-] */
        bool raw;                  /* saved holds the terminal's modes to restore */
        struct termios saved;
        struct sigaction old_int, old_term, old_hup, old_pipe;
        bool handlers;
} Session;

static uint64_t now_msec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000U + (uint64_t) ts.tv_nsec / 1000000U;
}

static int connect_socket(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_close_ int fd = -EBADF;

        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, path);

        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return -errno;
        /* Non-blocking only once connected: a unix connect does not wait anyway, but this keeps errors plain. */
        if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
                return -errno;
        return TAKE_FD(fd);
}

/* Writes all of p, waiting when fd is non-blocking and full. A signal that ends the session stops it. */
static int write_all(int fd, const char *p, size_t n) {
        while (n > 0) {
                ssize_t k = write(fd, p, n);

                if (k < 0) {
                        if (errno == EINTR) {
                                if (got_signal)
                                        return -EINTR;
                                continue;
                        }
                        if (errno == EAGAIN) {
                                struct pollfd pfd = { .fd = fd, .events = POLLOUT };

                                if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
                                        return -errno;
                                continue;
                        }
                        return -errno;
                }
                p += k;
                n -= (size_t) k;
        }
        return 0;
}

static void session_setup_signals(Session *s) {
        struct sigaction sa = { .sa_handler = on_signal }; /* no SA_RESTART: wake the poll */
        struct sigaction ign = { .sa_handler = SIG_IGN };

        got_signal = 0;
        sigemptyset(&sa.sa_mask);
        sigemptyset(&ign.sa_mask);
        (void) sigaction(SIGINT, &sa, &s->old_int);
        (void) sigaction(SIGTERM, &sa, &s->old_term);
        (void) sigaction(SIGHUP, &sa, &s->old_hup);
        /* The socket uses MSG_NOSIGNAL; stdout may be a pipe whose reader left: an error, not a death. */
        (void) sigaction(SIGPIPE, &ign, &s->old_pipe);
        s->handlers = true;
}

static void session_done(Session *s) {
        if (s->raw) {
                (void) tcsetattr(STDIN_FILENO, TCSANOW, &s->saved);
                s->raw = false;
        }
        if (s->handlers) {
                (void) sigaction(SIGINT, &s->old_int, NULL);
                (void) sigaction(SIGTERM, &s->old_term, NULL);
                (void) sigaction(SIGHUP, &s->old_hup, NULL);
                (void) sigaction(SIGPIPE, &s->old_pipe, NULL);
                s->handlers = false;
        }
        s->fd = safe_close(s->fd);
}

static int session_raw(Session *s) {
        struct termios raw;

        if (tcgetattr(STDIN_FILENO, &s->saved) < 0)
                return -errno;
        raw = s->saved;
        /* What the guest's getty expects of a serial line: every byte as typed, Ctrl-C included, no local echo. */
        cfmakeraw(&raw);
        if (tcsetattr(STDIN_FILENO, TCSANOW, &raw) < 0)
                return -errno;
        s->raw = true;
        return 0;
}

typedef enum Outcome {
        OUTCOME_DETACHED,  /* Ctrl-], a signal, stdin gone on a terminal */
        OUTCOME_DONE,      /* stdin EOF and the linger time over */
        OUTCOME_CLOSED,    /* hydrad closed the console */
        OUTCOME_STDOUT,    /* our reader went away */
        OUTCOME_FAILED,    /* errno in error */
} Outcome;

static Outcome session_run(Session *s, double linger_seconds, int *ret_error) {
        char in[CONSOLE_BUFFER], out[CONSOLE_BUFFER];
        size_t in_start = 0, in_end = 0; /* bytes of in still to send */
        bool stdin_open = true, escape = false;
        uint64_t deadline = 0;

        for (;;) {
                struct pollfd pfd[2] = {
                        { .fd = s->fd, .events = POLLIN | (in_start < in_end ? POLLOUT : 0) },
                        { .fd = -1 },
                };
                int timeout = -1, r;

                if (got_signal)
                        return OUTCOME_DETACHED;

                if (in_start == in_end) {
                        if (escape)
                                return OUTCOME_DETACHED;
                        if (!stdin_open) {
                                uint64_t now = now_msec();

                                if (linger_seconds >= 0 && now >= deadline)
                                        return OUTCOME_DONE;
                                if (linger_seconds >= 0)
                                        timeout = (int) (deadline - now < INT32_MAX ? deadline - now : INT32_MAX);
                        } else
                                pfd[1] = (struct pollfd) { .fd = STDIN_FILENO, .events = POLLIN };
                }

                r = poll(pfd, 2, timeout);
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        *ret_error = errno;
                        return OUTCOME_FAILED;
                }

                if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) {
                        ssize_t n = recv(s->fd, out, sizeof(out), MSG_DONTWAIT);

                        if (n == 0 || (n < 0 && errno == ECONNRESET))
                                return OUTCOME_CLOSED;
                        if (n < 0 && errno != EAGAIN && errno != EINTR) {
                                *ret_error = errno;
                                return OUTCOME_FAILED;
                        }
                        if (n > 0) {
                                r = write_all(STDOUT_FILENO, out, (size_t) n);
                                if (r == -EINTR)
                                        return OUTCOME_DETACHED;
                                if (r < 0)
                                        return OUTCOME_STDOUT;
                        }
                }

                if (in_start < in_end && (pfd[0].revents & POLLOUT)) {
                        ssize_t n = send(s->fd, in + in_start, in_end - in_start, MSG_NOSIGNAL | MSG_DONTWAIT);

                        if (n < 0 && errno != EAGAIN && errno != EINTR) {
                                if (errno == EPIPE || errno == ECONNRESET)
                                        return OUTCOME_CLOSED;
                                *ret_error = errno;
                                return OUTCOME_FAILED;
                        }
                        if (n > 0)
                                in_start += (size_t) n;
                        if (in_start == in_end)
                                in_start = in_end = 0;
                }

                if (pfd[1].revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL)) {
                        ssize_t n = (pfd[1].revents & POLLNVAL) ? 0 : read(STDIN_FILENO, in, sizeof(in));

                        if (n < 0 && (errno == EINTR || errno == EAGAIN))
                                continue;
                        if (n <= 0) {
                                /* A terminal that hangs up is a detach; a pipe's end is the script's end. */
                                if (s->tty)
                                        return OUTCOME_DETACHED;
                                stdin_open = false;
                                if (linger_seconds > 0)
                                        deadline = now_msec() + (uint64_t) (linger_seconds * 1000 + 0.999);
                                else
                                        deadline = now_msec();
                                continue;
                        }
                        in_end = (size_t) n;
                        if (s->tty) {
                                char *e = memchr(in, CONSOLE_ESCAPE, in_end);

                                /* What was typed before Ctrl-] still goes out; the rest never does. */
                                if (e) {
                                        in_end = (size_t) (e - in);
                                        escape = true;
                                }
                        }
                }
        }
}

int console_attach(const char *socket_path, const char *role, double linger_seconds) {
        Session s = { .fd = -EBADF };
        Outcome o;
        int error = 0, r;

        r = connect_socket(socket_path);
        if (r < 0) {
                fprintf(stderr, "hydractl: cannot attach to the console of '%s' at %s: %s\n", role, socket_path,
                        strerror(-r));
                return 1;
        }
        s.fd = r;

        session_setup_signals(&s);
        s.tty = isatty(STDIN_FILENO);
        if (s.tty) {
                fprintf(stderr, "Connected to %s console (Ctrl-] to detach)\n", role);
                r = session_raw(&s);
                if (r < 0) {
                        fprintf(stderr, "hydractl: cannot put the terminal in raw mode: %s\n", strerror(-r));
                        session_done(&s);
                        return 1;
                }
        }

        o = session_run(&s, linger_seconds, &error);
        session_done(&s);

        switch (o) {
        case OUTCOME_DETACHED:
                if (s.tty)
                        fprintf(stderr, "\nDetached\n");
                return 0;
        case OUTCOME_CLOSED:
                if (s.tty)
                        fprintf(stderr, "\nhydrad closed the console of '%s'\n", role);
                return 0;
        case OUTCOME_DONE:
        case OUTCOME_STDOUT:
                return 0;
        case OUTCOME_FAILED:
        default:
                fprintf(stderr, "%shydractl: console of '%s' at %s: %s\n", s.tty ? "\n" : "", role, socket_path,
                        strerror(error));
                return 1;
        }
}
