/* SPDX-License-Identifier: MIT */
/* Readiness probes: the console line matcher (pure), and the TCP probe against real listeners on 127.0.0.1 that the
 * test serves from its own sd_event. */
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>

#include "macro.h"
#include "probe.h"

#define USEC_PER_MSEC 1000ULL
#define RUN_BOUND_USEC (20ULL * 1000000ULL) /* no wait in this file may take longer */

static uint64_t now_usec(void) {
        struct timespec ts;

        ck_assert_int_eq(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

/* --- the line matcher --- */

static LineMatcher *matcher(const char *regex) {
        LineMatcher *m = NULL;
        HydraError err = {};

        ck_assert_msg(line_matcher_new(regex, &m, &err) == 0, "%s", err.message);
        ck_assert_ptr_nonnull(m);
        return m;
}

static bool feed(LineMatcher *m, const char *s) {
        return line_matcher_feed(m, s, strlen(s));
}

START_TEST(test_default_pattern) {
        _cleanup_(line_matcher_freep) LineMatcher *m = matcher(PROBE_DEFAULT_CONSOLE_PATTERN);

        ck_assert(!feed(m, "[    1.234] Run /init as init process\r\n"));
        ck_assert(!feed(m, "Debian GNU/Linux 12 debian ttyS0\r\n\r\n"));
        ck_assert(feed(m, "debian login: "));
        /* Stays matched whatever follows, until a reset. */
        ck_assert(feed(m, "root\r\nPassword: "));
        line_matcher_reset(m);
        ck_assert(!feed(m, "\r\n"));

        /* The test guest's prompt, in pieces as a slow serial line delivers it. */
        ck_assert(!feed(m, "hydra-guest: booted\n\nhydra-gu"));
        ck_assert(!feed(m, "est log"));
        ck_assert(!feed(m, "in"));
        ck_assert(feed(m, ": "));
}
END_TEST

/* What a systemd guest prints when a unit fails, colours and all: the last such line is kept, cleaned. */
START_TEST(test_failure_line) {
        _cleanup_(line_matcher_freep) LineMatcher *m = NULL;
        HydraError err = {};

        ck_assert_int_eq(line_matcher_new_last(GUEST_FAILURE_PATTERN, &m, &err), 0);
        ck_assert_ptr_null(line_matcher_last(m));
        ck_assert(!feed(m, "[  OK  ] Started containerd.service - containerd container runtime.\r\n"));
        ck_assert_ptr_null(line_matcher_last(m));

        /* systemd's colours around FAILED, the line split across chunks. */
        ck_assert(!feed(m, "[\x1b[0;1;31mFAI"));
        ck_assert(feed(m, "LED\x1b[0m] Failed to start \x1b[0;1;39mcsi-grpc-proxy.service\x1b[0m - CSI gRPC proxy.\r\n"));
        ck_assert_str_eq(line_matcher_last(m), "[FAILED] Failed to start csi-grpc-proxy.service - CSI gRPC proxy.");

        /* Lines that do not match leave it; a later match replaces it. */
        ck_assert(!feed(m, "[  OK  ] Reached target multi-user.target.\r\n"));
        ck_assert_str_eq(line_matcher_last(m), "[FAILED] Failed to start csi-grpc-proxy.service - CSI gRPC proxy.");
        ck_assert(feed(m, "[   42.1] systemd[1]: csi-grpc-proxy.service: Main process exited, code=exited, "
                          "status=203/EXEC\n"));
        ck_assert_str_eq(line_matcher_last(m),
                         "[   42.1] systemd[1]: csi-grpc-proxy.service: Main process exited, code=exited, status=203/EXEC");

        /* A line still being printed does not count; once finished it does. */
        ck_assert(!feed(m, "x.service: Failed to start"));
        ck_assert_str_eq(line_matcher_last(m),
                         "[   42.1] systemd[1]: csi-grpc-proxy.service: Main process exited, code=exited, status=203/EXEC");
        ck_assert(feed(m, "\r\n"));
        ck_assert_str_eq(line_matcher_last(m), "x.service: Failed to start");

        /* Case matters: a kernel's "failed" is not systemd's. */
        ck_assert(!feed(m, "hydra-guest: failed to load modules: 9p\n"));

        /* A very long line is cut, on a whole character, with "...". */
        {
                char line[1000];

                memset(line, 'a', sizeof(line));
                memcpy(line, "[FAILED] \xc3\xa9", 11);
                memcpy(line + LINE_MATCHER_LAST_MAX - 4, "\xc3\xa9", 2);
                ck_assert(!line_matcher_feed(m, line, sizeof(line)));
                ck_assert(feed(m, "\n"));
                ck_assert_uint_le(strlen(line_matcher_last(m)), LINE_MATCHER_LAST_MAX);
                ck_assert(strncmp(line_matcher_last(m), "[FAILED] \xc3\xa9" "aaa", 14) == 0);
                ck_assert_str_eq(line_matcher_last(m) + strlen(line_matcher_last(m)) - 3, "...");
        }

        /* A new boot forgets it. */
        line_matcher_reset(m);
        ck_assert_ptr_null(line_matcher_last(m));
}
END_TEST

static const char *clean(const char *s, size_t size) {
        static char buf[512];

        ck_assert_uint_le(size, sizeof(buf));
        console_text_clean(s, strlen(s), buf, size);
        return buf;
}

START_TEST(test_console_text_clean) {
        /* Line breaks (any run of CR and LF) become " | ", none at the ends; escapes and control bytes go. */
        ck_assert_str_eq(clean("\r\nhydra-guest: booted\r\n\r\nhydra-guest login: ", 512),
                         "hydra-guest: booted | hydra-guest login: ");
        ck_assert_str_eq(clean("[\x1b[0;32m  OK  \x1b[0m] Started\x07 x\ty\x7f.\n", 512), "[  OK  ] Started x y.");
        ck_assert_str_eq(clean("\x1b]0;title\x07" "a\x1b]2;t\x1b\\b\x1b" "cc\x1b[", 512), "abc");
        /* Well-formed UTF-8 stays; anything else is '?'. */
        ck_assert_str_eq(clean("caf\xc3\xa9 \xff\xc3 \xe2\x80\x94!", 512), "caf\xc3\xa9 ?? \xe2\x80\x94!");
        ck_assert_str_eq(clean("", 512), "");
        ck_assert_str_eq(clean("\r\n\x1b[0m\r\n", 512), "");

        /* Too long: the end is kept, from the start of a line when one begins in it. */
        ck_assert_str_eq(clean("first line\nsecond\nthird", 16), "second | third");
        ck_assert_str_eq(clean("first line\nsecond\nthird", 8), "third");
        ck_assert_str_eq(clean("first line\nsecond\nthird", 15), "second | third");
        ck_assert_str_eq(clean("first line\nsecond\nthird", 14), "third");
        ck_assert_str_eq(clean("ab\ncd", 5), "cd");
        /* ... and from a whole character. */
        ck_assert_str_eq(clean("\xe2\x80\x94\xe2\x80\x94x", 6), "\xe2\x80\x94x");
        ck_assert_str_eq(clean("abc", 1), "");
}
END_TEST

START_TEST(test_default_pattern_text) {
        _cleanup_(line_matcher_freep) LineMatcher *m = matcher(PROBE_DEFAULT_CONSOLE_PATTERN);

        /* "login:" in the middle of a line of text is not a prompt. */
        ck_assert(!feed(m, "Last login: Mon Jan  1 00:00:00 UTC 2024 on ttyS0\r\n"));
        ck_assert(!feed(m, "You can login: as root with no password\n"));
        ck_assert(!feed(m, "login: "));  /* no host name before it */
        ck_assert(!feed(m, "\r\n"));
        /* A prompt that was printed with its newline (some gettys redraw it) counts too. */
        ck_assert(feed(m, "hydra-guest login: \r\n"));
}
END_TEST

START_TEST(test_lines_across_chunks) {
        _cleanup_(line_matcher_freep) LineMatcher *m = matcher("^booted ok$");

        ck_assert(!feed(m, "boo"));
        ck_assert(!feed(m, "ted o"));
        ck_assert(!feed(m, "k, not quite\r\n"));
        ck_assert(!feed(m, "xbooted ok\n"));
        ck_assert(!feed(m, "boo"));
        ck_assert(!feed(m, "ted"));
        ck_assert(!feed(m, " o"));
        /* Unfinished, yet it matches: "$" is the end of what was printed so far. */
        ck_assert(feed(m, "k"));
}
END_TEST

START_TEST(test_line_ends) {
        _cleanup_(line_matcher_freep) LineMatcher *m = matcher("^abc$");
        _cleanup_(line_matcher_freep) LineMatcher *empty = matcher("^$");

        /* A CR ends a line (a redrawn line starts over). */
        ck_assert(!feed(m, "xx\r"));
        ck_assert(feed(m, "abc\r\n"));

        /* CR LF is one line end: no empty line between them. An LF after a CR in another chunk too. */
        ck_assert(!feed(empty, "a\r"));
        ck_assert(!feed(empty, "\nb\r\nc\r"));
        ck_assert(!feed(empty, "\n"));
        ck_assert(feed(empty, "\n"));
}
END_TEST

START_TEST(test_nul_bytes) {
        _cleanup_(line_matcher_freep) LineMatcher *m = matcher(PROBE_DEFAULT_CONSOLE_PATTERN);
        static const char data[] = "deb\0ian lo\0\0gin: ";

        ck_assert(line_matcher_feed(m, data, sizeof(data) - 1));
}
END_TEST

START_TEST(test_long_lines) {
        _cleanup_(line_matcher_freep) LineMatcher *fits = matcher("^yx*z$");
        _cleanup_(line_matcher_freep) LineMatcher *head = matcher("^yx*z$");
        _cleanup_(line_matcher_freep) LineMatcher *m = matcher(PROBE_DEFAULT_CONSOLE_PATTERN);
        const size_t size = 1024 * 1024;
        _cleanup_free_ char *x = malloc(size);

        ck_assert_ptr_nonnull(x);
        memset(x, 'x', size);

        /* Exactly the last LINE_MATCHER_LINE_MAX bytes of a line are kept: with one more, its head is gone. */
        ck_assert(!feed(fits, "y"));
        ck_assert(!line_matcher_feed(fits, x, LINE_MATCHER_LINE_MAX - 2));
        ck_assert(feed(fits, "z"));
        ck_assert(!feed(head, "y"));
        for (size_t i = 0; i < LINE_MATCHER_LINE_MAX - 1; i += 100) {
                size_t n = LINE_MATCHER_LINE_MAX - 1 - i < 100 ? LINE_MATCHER_LINE_MAX - 1 - i : 100;

                ck_assert(!line_matcher_feed(head, x, n));
        }
        ck_assert(!feed(head, "z"));
        ck_assert(!feed(head, "\n"));

        /* A megabyte without a newline, in one chunk and in pieces, and then a prompt at its end. */
        ck_assert(!line_matcher_feed(m, x, size));
        for (size_t i = 0; i < size; i += 3000)
                ck_assert(!line_matcher_feed(m, x + i, size - i < 3000 ? size - i : 3000));
        ck_assert(feed(m, " hydra-guest login: "));
}
END_TEST

START_TEST(test_bad_regex) {
        LineMatcher *m = NULL;
        HydraError err = {};

        ck_assert_int_eq(line_matcher_new("([a-z", &m, &err), -EINVAL);
        ck_assert_ptr_null(m);
        ck_assert_int_eq(err.code, -EINVAL);
        ck_assert_msg(strstr(err.message, "'([a-z'"), "message: %s", err.message);

        ck_assert_int_eq(line_matcher_new("a{2,1}", &m, NULL), -EINVAL);
        ck_assert_ptr_null(line_matcher_free(NULL));
        ck_assert(!line_matcher_feed(NULL, "x", 1));
}
END_TEST

/* --- the TCP probe --- */

typedef enum ListenerMode {
        LISTENER_SILENT,   /* never accepts: the kernel completes the handshake, nothing more happens */
        LISTENER_BANNER,   /* accepts and sends a line, like sshd */
        LISTENER_CLOSE,    /* accepts and closes at once, like QEMU's forward with nothing behind it */
        LISTENER_QUIET,    /* accepts and never says a word, like QEMU's forward while the guest still boots */
        LISTENER_ANSWER,   /* accepts and answers what it is sent, like an HTTP server's 400 */
} ListenerMode;

typedef struct Listener {
        int fd;
        uint16_t port;
        ListenerMode mode;
        sd_event_source *source;
        int accepted[8];
        sd_event_source *answer[8];
        size_t n_accepted;
} Listener;

typedef struct Result {
        TcpProbe *probe;
        unsigned n_done;
        bool ready;
        char why[128];
        uint64_t at;
        bool cancel_in_callback;
} Result;

static sd_event *event;

static void setup(void) {
        ck_assert_int_ge(sd_event_new(&event), 0);
}

static void teardown(void) {
        event = sd_event_unref(event);
}

static int on_answer(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        char buf[64];

        if (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
                (void) send(fd, "HTTP/1.0 400 Bad Request\r\n\r\n", 28, MSG_NOSIGNAL);
        (void) sd_event_source_set_enabled(s, SD_EVENT_OFF);
        return 0;
}

static int on_listener(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Listener *l = userdata;
        int c;

        c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0)
                return 0;
        if (l->mode == LISTENER_BANNER)
                ck_assert_int_eq(send(c, "SSH-2.0-test\r\n", 14, MSG_NOSIGNAL), 14);
        if (l->mode == LISTENER_CLOSE || l->n_accepted >= ELEMENTSOF(l->accepted)) {
                safe_close(c);
                return 0;
        }
        if (l->mode == LISTENER_ANSWER)
                ck_assert_int_ge(sd_event_add_io(event, &l->answer[l->n_accepted], c, EPOLLIN, on_answer, NULL), 0);
        l->accepted[l->n_accepted++] = c;
        return 0;
}

/* A TCP socket on 127.0.0.1 and a free port; backlog < 0: bound only, so that connecting is refused. */
static void listener_open(Listener *l, ListenerMode mode, int backlog) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sa);

        *l = (Listener) { .mode = mode };
        l->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        ck_assert_int_ge(l->fd, 0);
        ck_assert_int_eq(bind(l->fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        ck_assert_int_eq(getsockname(l->fd, (struct sockaddr *) &sa, &len), 0);
        l->port = ntohs(sa.sin_port);
        if (backlog < 0)
                return;
        ck_assert_int_eq(listen(l->fd, backlog), 0);
        if (mode != LISTENER_SILENT)
                ck_assert_int_ge(sd_event_add_io(event, &l->source, l->fd, EPOLLIN, on_listener, l), 0);
}

static void listener_close(Listener *l) {
        l->source = sd_event_source_disable_unref(l->source);
        for (size_t i = 0; i < l->n_accepted; i++) {
                l->answer[i] = sd_event_source_disable_unref(l->answer[i]);
                safe_close(l->accepted[i]);
        }
        l->fd = safe_close(l->fd);
}

static void on_probe_done(TcpProbe *p, bool ready, const char *why, void *userdata) {
        Result *res = userdata;

        ck_assert_ptr_eq(p, res->probe);
        res->n_done++;
        res->ready = ready;
        res->at = now_usec();
        ck_assert_ptr_nonnull(why);
        (void) snprintf(res->why, sizeof(res->why), "%s", why);
        if (res->cancel_in_callback)
                ck_assert_ptr_null(tcp_probe_cancel(p)); /* does nothing: freed when we return */
}

static void run_until_done(Result *res) {
        uint64_t deadline = now_usec() + RUN_BOUND_USEC;

        while (res->n_done == 0) {
                ck_assert_msg(now_usec() < deadline, "timed out waiting for the probe");
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
        }
}

static void run_for(uint64_t usec) {
        uint64_t end = now_usec() + usec;

        while (now_usec() < end)
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
}

/* Starts a probe of 127.0.0.1:port and returns the time it started. */
static uint64_t probe(Result *res, uint16_t port, uint64_t hold_usec, uint64_t timeout_usec) {
        uint64_t start = now_usec();

        ck_assert_int_eq(tcp_probe_start(event, "127.0.0.1", port, hold_usec, timeout_usec, on_probe_done, res,
                                         &res->probe),
                         0);
        ck_assert_ptr_nonnull(res->probe);
        return start;
}

START_TEST(test_tcp_banner) {
        Listener l;
        Result res = { .cancel_in_callback = true };
        uint64_t start;

        listener_open(&l, LISTENER_BANNER, 16);
        start = probe(&res, l.port, 5000 * USEC_PER_MSEC, 2000 * USEC_PER_MSEC);
        run_until_done(&res);
        ck_assert(res.ready);
        ck_assert_str_eq(res.why, "data received");
        /* Data ends the wait: no hold. */
        ck_assert_uint_lt(res.at - start, 2000 * USEC_PER_MSEC);
        run_for(50 * USEC_PER_MSEC);
        ck_assert_uint_eq(res.n_done, 1);
        listener_close(&l);
}
END_TEST

/* A connection that is merely open is not a service: QEMU's forward holds one open while the guest boots. */
START_TEST(test_tcp_silent) {
        static const ListenerMode modes[] = { LISTENER_SILENT, LISTENER_QUIET };

        for (size_t i = 0; i < ELEMENTSOF(modes); i++) {
                Listener l;
                Result res = {};
                uint64_t start;

                listener_open(&l, modes[i], 16);
                start = probe(&res, l.port, 300 * USEC_PER_MSEC, 2000 * USEC_PER_MSEC);
                run_until_done(&res);
                ck_assert(!res.ready);
                ck_assert_str_eq(res.why, "no answer");
                ck_assert_uint_ge(res.at - start, 300 * USEC_PER_MSEC);
                listener_close(&l);
        }
}
END_TEST

/* A service that speaks only when spoken to (HTTP) answers the probe's nudge. */
START_TEST(test_tcp_answers_nudge) {
        Listener l;
        Result res = {};

        listener_open(&l, LISTENER_ANSWER, 16);
        (void) probe(&res, l.port, 2000 * USEC_PER_MSEC, 2000 * USEC_PER_MSEC);
        run_until_done(&res);
        ck_assert(res.ready);
        ck_assert_str_eq(res.why, "data received");
        listener_close(&l);
}
END_TEST

START_TEST(test_tcp_closed_by_peer) {
        Listener l;
        Result res = {};
        uint64_t start;

        listener_open(&l, LISTENER_CLOSE, 16);
        start = probe(&res, l.port, 2000 * USEC_PER_MSEC, 2000 * USEC_PER_MSEC);
        run_until_done(&res);
        ck_assert(!res.ready);
        ck_assert_str_eq(res.why, "closed by peer");
        ck_assert_uint_lt(res.at - start, 1000 * USEC_PER_MSEC);
        listener_close(&l);
}
END_TEST

START_TEST(test_tcp_refused) {
        Listener l;
        Result res = {};
        uint64_t start;

        listener_open(&l, LISTENER_SILENT, -1); /* bound, not listening: the port is ours and refuses */
        start = probe(&res, l.port, 300 * USEC_PER_MSEC, 2000 * USEC_PER_MSEC);
        run_until_done(&res);
        ck_assert(!res.ready);
        ck_assert_str_eq(res.why, "connection refused");
        ck_assert_uint_lt(res.at - start, 1000 * USEC_PER_MSEC);
        listener_close(&l);
}
END_TEST

/* A listener whose accept queue is full drops new SYNs: the connect neither succeeds nor fails. */
START_TEST(test_tcp_timeout) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        Listener l;
        Result res = {};
        int fill[4];
        uint64_t start;

        listener_open(&l, LISTENER_SILENT, 0);
        sa.sin_port = htons(l.port);
        for (size_t i = 0; i < ELEMENTSOF(fill); i++) {
                fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
                ck_assert_int_ge(fill[i], 0);
                (void) connect(fill[i], (struct sockaddr *) &sa, sizeof(sa));
        }
        run_for(100 * USEC_PER_MSEC);

        start = probe(&res, l.port, 100 * USEC_PER_MSEC, 400 * USEC_PER_MSEC);
        run_until_done(&res);
        ck_assert_msg(!res.ready, "ready: %s", res.why);
        ck_assert_str_eq(res.why, "timed out");
        ck_assert_uint_ge(res.at - start, 400 * USEC_PER_MSEC);
        ck_assert_uint_lt(res.at - start, 2000 * USEC_PER_MSEC);

        for (size_t i = 0; i < ELEMENTSOF(fill); i++)
                safe_close(fill[i]);
        listener_close(&l);
}
END_TEST

START_TEST(test_tcp_cancel) {
        Listener l;
        Result res = {}, refused = {};

        /* While connected and holding. */
        listener_open(&l, LISTENER_SILENT, 16);
        probe(&res, l.port, 200 * USEC_PER_MSEC, 2000 * USEC_PER_MSEC);
        run_for(50 * USEC_PER_MSEC);
        ck_assert_ptr_null(tcp_probe_cancel(res.probe));
        run_for(400 * USEC_PER_MSEC);
        ck_assert_uint_eq(res.n_done, 0);
        listener_close(&l);

        /* Before a failure it would have reported. */
        listener_open(&l, LISTENER_SILENT, -1);
        probe(&refused, l.port, 200 * USEC_PER_MSEC, 2000 * USEC_PER_MSEC);
        ck_assert_ptr_null(tcp_probe_cancel(refused.probe));
        run_for(100 * USEC_PER_MSEC);
        ck_assert_uint_eq(refused.n_done, 0);
        listener_close(&l);

        ck_assert_ptr_null(tcp_probe_cancel(NULL));
}
END_TEST

START_TEST(test_tcp_bad_arguments) {
        Result res = {};
        TcpProbe *p = NULL;

        ck_assert_int_eq(tcp_probe_start(event, "localhost", 22, 0, 0, on_probe_done, &res, &p), -EINVAL);
        ck_assert_int_eq(tcp_probe_start(event, "127.0.0.1", 0, 0, 0, on_probe_done, &res, &p), -EINVAL);
        ck_assert_int_eq(tcp_probe_start(event, "127.0.0.1", 22, 0, 0, NULL, &res, &p), -EINVAL);
        ck_assert_ptr_null(p);
}
END_TEST

static Suite *probe_suite(void) {
        Suite *s = suite_create("probe");
        TCase *tc;

        tc = tcase_create("line-matcher");
        tcase_add_test(tc, test_default_pattern);
        tcase_add_test(tc, test_default_pattern_text);
        tcase_add_test(tc, test_lines_across_chunks);
        tcase_add_test(tc, test_line_ends);
        tcase_add_test(tc, test_nul_bytes);
        tcase_add_test(tc, test_long_lines);
        tcase_add_test(tc, test_bad_regex);
        tcase_add_test(tc, test_failure_line);
        tcase_add_test(tc, test_console_text_clean);
        suite_add_tcase(s, tc);

        tc = tcase_create("tcp");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_tcp_banner);
        tcase_add_test(tc, test_tcp_silent);
        tcase_add_test(tc, test_tcp_answers_nudge);
        tcase_add_test(tc, test_tcp_closed_by_peer);
        tcase_add_test(tc, test_tcp_refused);
        tcase_add_test(tc, test_tcp_timeout);
        tcase_add_test(tc, test_tcp_cancel);
        tcase_add_test(tc, test_tcp_bad_arguments);
        suite_add_tcase(s, tc);

        return s;
}

int main(void) {
        SRunner *sr = srunner_create(probe_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
