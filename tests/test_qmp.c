/* SPDX-License-Identifier: MIT */
/* The QMP client against a scripted peer: the test holds the other end of a socketpair and plays QEMU, driving a
 * private sd_event between its moves. Set QMP_TEST_DEBUG=1 to see the client's transcript. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>

#include "log.h"
#include "macro.h"
#include "qmp.h"

#define GREETING                                                                                                  \
        "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, \"package\": \"\"}, "     \
        "\"capabilities\": [\"oob\"]}}\r\n"

#define USEC_PER_MSEC 1000ULL
#define RUN_BOUND_USEC (20ULL * 1000000ULL) /* no wait in this file may take longer */
/* For timeouts that are not under test: long enough for a loaded CI machine. */
#define LONG_USEC (30ULL * 1000000ULL)

/* One command's outcome, filled by on_reply. */
typedef struct Call {
        const char *name;
        bool free_client; /* qmp_client_free() from inside the handler */
        int n;
        int error;
        char desc[256];
        bool had_result;
        char result[512]; /* compact, sorted keys */
} Call;

typedef enum FreeWhere {
        FREE_NOWHERE,
        FREE_IN_READY,
        FREE_IN_EVENT,
        FREE_IN_DISCONNECT,
} FreeWhere;

static sd_event *event;
static QmpClient *client;
static int peer_fd = -EBADF;
static char *peer_buf;
static size_t peer_len, peer_allocated;

static FreeWhere free_where;
static int n_ready, n_disconnect, disconnect_error, n_events;
static char last_event_data[512];
static bool last_event_had_data;
static char trace[4096]; /* every callback, in order: "ready;event STOP;reply stop 0;disconnect -104;" */

static void trace_add(const char *fmt, ...) _printf_(1, 2);
static void trace_add(const char *fmt, ...) {
        size_t l = strlen(trace);
        va_list ap;

        va_start(ap, fmt);
        (void) vsnprintf(trace + l, sizeof(trace) - l, fmt, ap);
        va_end(ap);
        l = strlen(trace);
        (void) snprintf(trace + l, sizeof(trace) - l, ";");
}

static uint64_t now_usec(void) {
        struct timespec ts;

        ck_assert_int_eq(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

static void dump_json(json_t *v, char *buf, size_t size) {
        _cleanup_free_ char *s = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);

        ck_assert_ptr_nonnull(s);
        (void) snprintf(buf, size, "%s", s);
}

/* --- the client's callbacks --- */

static void on_ready(QmpClient *q, void *userdata) {
        ck_assert_ptr_eq(q, client);
        ck_assert(qmp_client_is_ready(q));
        n_ready++;
        trace_add("ready");
        if (free_where == FREE_IN_READY)
                client = qmp_client_free(client);
}

static void on_event(QmpClient *q, const char *name, json_t *data, void *userdata) {
        ck_assert_ptr_eq(q, client);
        n_events++;
        trace_add("event %s", name);
        last_event_had_data = data;
        if (data)
                dump_json(data, last_event_data, sizeof(last_event_data));
        if (free_where == FREE_IN_EVENT)
                client = qmp_client_free(client);
}

static void on_disconnect(QmpClient *q, int error, void *userdata) {
        ck_assert_ptr_eq(q, client);
        ck_assert(!qmp_client_is_ready(q));
        n_disconnect++;
        disconnect_error = error;
        trace_add("disconnect %d", error);
        if (free_where == FREE_IN_DISCONNECT)
                client = qmp_client_free(client);
}

static const QmpCallbacks callbacks = {
        .on_ready = on_ready,
        .on_event = on_event,
        .on_disconnect = on_disconnect,
};

static void on_reply(QmpClient *q, json_t *result, int error, const char *desc, void *userdata) {
        Call *c = userdata;

        ck_assert_ptr_eq(q, client);
        c->n++;
        c->error = error;
        (void) snprintf(c->desc, sizeof(c->desc), "%s", strempty(desc));
        c->had_result = result;
        if (result)
                dump_json(result, c->result, sizeof(c->result));
        trace_add("reply %s %d", c->name, error);

        /* A failed command has no result; a successful one has no desc. */
        ck_assert(error == 0 ? result && !desc : !result);

        if (c->free_client)
                client = qmp_client_free(client);
}

/* --- driving the loop --- */

static void run_until(const int *counter, int value) {
        uint64_t deadline = now_usec() + RUN_BOUND_USEC;

        while (*counter < value) {
                ck_assert_msg(now_usec() < deadline, "timed out waiting for a callback");
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
        }
}

static void run_for(uint64_t usec) {
        uint64_t deadline = now_usec() + usec;

        while (now_usec() < deadline)
                ck_assert_int_ge(sd_event_run(event, 5 * USEC_PER_MSEC), 0);
}

static void client_start_full(uint64_t handshake_timeout_usec, int sndbuf) {
        int fds[2];

        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
        if (sndbuf > 0)
                ck_assert_int_eq(setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
        peer_fd = fds[1];
        ck_assert_int_eq(qmp_client_new(event, fds[0], "test", handshake_timeout_usec, &callbacks, NULL, &client),
                         0);
        ck_assert_ptr_nonnull(client);
        ck_assert(!qmp_client_is_ready(client));
}

static void client_start(uint64_t handshake_timeout_usec) {
        client_start_full(handshake_timeout_usec, 0);
}

/* --- the peer --- */

/* Writes all of s, running the loop whenever the socket is full. With may_fail, stops quietly once the client
 * has hung up. */
static void peer_write(const char *s, size_t len, bool may_fail) {
        uint64_t deadline = now_usec() + RUN_BOUND_USEC;
        size_t done = 0;

        while (done < len) {
                ssize_t n = send(peer_fd, s + done, len - done, MSG_NOSIGNAL | MSG_DONTWAIT);

                if (n < 0) {
                        if (may_fail && (errno == EPIPE || errno == ECONNRESET))
                                return;
                        ck_assert_int_eq(errno, EAGAIN);
                        ck_assert_msg(now_usec() < deadline, "peer could not write");
                        ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
                        continue;
                }
                done += (size_t) n;
        }
}

static void peer_send(const char *s) {
        peer_write(s, strlen(s), false);
}

static void peer_sendf(const char *fmt, ...) _printf_(1, 2);
static void peer_sendf(const char *fmt, ...) {
        _cleanup_free_ char *s = NULL;
        va_list ap;

        va_start(ap, fmt);
        ck_assert_int_ge(vasprintf(&s, fmt, ap), 0);
        va_end(ap);
        peer_send(s);
}

/* Sends s in pieces of chunk bytes; after each piece the client gets one loop iteration to read it alone. */
static void peer_send_fragmented(const char *s, size_t chunk) {
        size_t len = strlen(s);

        for (size_t i = 0; i < len; i += chunk) {
                peer_write(s + i, len - i < chunk ? len - i : chunk, false);
                ck_assert_int_gt(sd_event_run(event, 100 * USEC_PER_MSEC), 0);
        }
}

/* Reads what is there without waiting. Returns 0 on EOF, 1 otherwise. */
static int peer_read_available(void) {
        for (;;) {
                ssize_t n;

                if (peer_allocated - peer_len < 65536) {
                        peer_allocated = peer_len + 65536;
                        peer_buf = realloc(peer_buf, peer_allocated);
                        ck_assert_ptr_nonnull(peer_buf);
                }
                n = recv(peer_fd, peer_buf + peer_len, peer_allocated - peer_len, MSG_DONTWAIT);
                if (n < 0) {
                        ck_assert_int_eq(errno, EAGAIN);
                        return 1;
                }
                if (n == 0)
                        return 0;
                peer_len += (size_t) n;
        }
}

/* Runs the loop until the client has sent one complete message, and returns it. */
static json_t *peer_recv(void) {
        uint64_t deadline = now_usec() + RUN_BOUND_USEC;

        for (;;) {
                char *nl = peer_len > 0 ? memchr(peer_buf, '\n', peer_len) : NULL;

                if (nl) {
                        size_t len = (size_t) (nl - peer_buf);
                        json_error_t err;
                        json_t *v;

                        ck_assert_msg(len > 0 && peer_buf[len - 1] == '\r', "message not ended by \\r\\n");
                        v = json_loadb(peer_buf, len - 1, 0, &err);
                        ck_assert_msg(v, "client sent invalid JSON: %s", err.text);
                        ck_assert(json_is_object(v));
                        memmove(peer_buf, nl + 1, peer_len - len - 1);
                        peer_len -= len + 1;
                        return v;
                }

                ck_assert_msg(peer_read_available(), "client hung up");
                if (peer_len > 0 && memchr(peer_buf, '\n', peer_len))
                        continue;
                ck_assert_msg(now_usec() < deadline, "timed out waiting for the client");
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
        }
}

/* Receives one command, checks its name, returns its id (and the message, if asked). */
static json_int_t peer_expect(const char *command, json_t **ret_msg) {
        json_t *msg = peer_recv();
        json_t *id = json_object_get(msg, "id");
        json_int_t r;

        ck_assert_str_eq(strempty(json_string_value(json_object_get(msg, "execute"))), command);
        ck_assert(json_is_integer(id));
        r = json_integer_value(id);
        if (ret_msg)
                *ret_msg = msg;
        else
                json_decref(msg);
        return r;
}

/* Runs the loop for a while and checks that the client wrote nothing. */
static void peer_expect_silence(void) {
        run_for(30 * USEC_PER_MSEC);
        ck_assert_int_eq(peer_read_available(), 1);
        ck_assert_msg(peer_len == 0, "client sent: %.*s", (int) peer_len, peer_buf);
}

/* Runs the loop until the client's end of the socket is closed. */
static void peer_expect_eof(void) {
        uint64_t deadline = now_usec() + RUN_BOUND_USEC;

        while (peer_read_available()) {
                ck_assert_msg(now_usec() < deadline, "client did not hang up");
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
        }
}

static void handshake(void) {
        json_int_t id;

        peer_send(GREETING);
        id = peer_expect("qmp_capabilities", NULL);
        peer_sendf("{\"return\": {}, \"id\": %" JSON_INTEGER_FORMAT "}\r\n", id);
        run_until(&n_ready, 1);
        ck_assert(qmp_client_is_ready(client));
}

static void reply_return(json_int_t id, const char *ret) {
        peer_sendf("{\"return\": %s, \"id\": %" JSON_INTEGER_FORMAT "}\r\n", ret, id);
}

static void setup(void) {
        if (getenv("QMP_TEST_DEBUG"))
                log_set_max_level(LOG_DEBUG);
        ck_assert_int_ge(sd_event_new(&event), 0);
        free_where = FREE_NOWHERE;
        n_ready = n_disconnect = disconnect_error = n_events = 0;
        last_event_had_data = false;
        last_event_data[0] = '\0';
        trace[0] = '\0';
        peer_len = 0;
}

static void teardown(void) {
        client = qmp_client_free(client);
        peer_fd = safe_close(peer_fd);
        free(peer_buf);
        peer_buf = NULL;
        peer_len = peer_allocated = 0;
        event = sd_event_unref(event);
}

/* --- tests --- */

START_TEST(test_handshake) {
        json_t *msg;

        client_start(LONG_USEC);

        /* Nothing is said before QEMU's greeting. */
        peer_expect_silence();
        ck_assert(!qmp_client_is_ready(client));

        peer_send(GREETING);
        msg = peer_recv();
        ck_assert_str_eq(json_string_value(json_object_get(msg, "execute")), "qmp_capabilities");
        ck_assert(json_is_integer(json_object_get(msg, "id")));
        ck_assert_ptr_null(json_object_get(msg, "arguments"));

        /* Not ready until qmp_capabilities is answered. */
        peer_expect_silence();
        ck_assert_int_eq(n_ready, 0);
        ck_assert(!qmp_client_is_ready(client));

        reply_return(json_integer_value(json_object_get(msg, "id")), "{}");
        json_decref(msg);
        run_until(&n_ready, 1);
        ck_assert(qmp_client_is_ready(client));
        ck_assert_int_eq(n_disconnect, 0);

        /* Idle: no timer left armed and no EPOLLOUT while nothing is queued (it would fire at once). */
        ck_assert_int_eq(sd_event_run(event, 0), 0);
        ck_assert_str_eq(trace, "ready;");
}
END_TEST

START_TEST(test_command_reply) {
        Call hmp = { .name = "hmp" }, status = { .name = "status" }, cont = { .name = "cont" };
        json_int_t id_hmp, id_status;
        json_t *args, *msg;

        client_start(LONG_USEC);
        handshake();

        args = json_pack("{s:s}", "command-line", "info version");
        ck_assert_int_eq(qmp_invoke(client, "human-monitor-command", args, LONG_USEC, on_reply, &hmp), 0);
        json_decref(args); /* the client holds its own reference */

        id_hmp = peer_expect("human-monitor-command", &msg);
        ck_assert_str_eq(json_string_value(json_object_get(json_object_get(msg, "arguments"), "command-line")),
                         "info version");
        json_decref(msg);
        ck_assert_int_eq(hmp.n, 0);
        reply_return(id_hmp, "\"7.2.0\\r\\n\"");
        run_until(&hmp.n, 1);
        ck_assert_int_eq(hmp.error, 0);
        ck_assert(hmp.had_result);
        ck_assert_str_eq(hmp.result, "\"7.2.0\\r\\n\"");

        /* Without arguments there is no "arguments" member, and ids are not reused. */
        ck_assert_int_eq(qmp_invoke(client, "query-status", NULL, LONG_USEC, on_reply, &status), 0);
        id_status = peer_expect("query-status", &msg);
        ck_assert_ptr_null(json_object_get(msg, "arguments"));
        json_decref(msg);
        ck_assert_int_ne(id_status, id_hmp);
        reply_return(id_status, "{\"status\": \"running\", \"singlestep\": false, \"running\": true}");
        run_until(&status.n, 1);
        ck_assert_int_eq(status.error, 0);
        ck_assert_str_eq(status.result, "{\"running\":true,\"singlestep\":false,\"status\":\"running\"}");

        /* Fire and forget: no handler; the reply is consumed and the next command still works. */
        ck_assert_int_eq(qmp_invoke(client, "stop", NULL, LONG_USEC, NULL, NULL), 0);
        reply_return(peer_expect("stop", NULL), "{}");
        ck_assert_int_eq(qmp_invoke(client, "cont", NULL, LONG_USEC, on_reply, &cont), 0);
        reply_return(peer_expect("cont", NULL), "{}");
        run_until(&cont.n, 1);
        ck_assert_int_eq(cont.error, 0);

        ck_assert_int_eq(hmp.n, 1);
        ck_assert_int_eq(status.n, 1);
        ck_assert_int_eq(n_disconnect, 0);
        ck_assert_str_eq(trace, "ready;reply hmp 0;reply status 0;reply cont 0;");
}
END_TEST

START_TEST(test_event_before_reply) {
        Call stop = { .name = "stop" };
        json_int_t id;

        client_start(LONG_USEC);
        handshake();

        ck_assert_int_eq(qmp_invoke(client, "stop", NULL, LONG_USEC, on_reply, &stop), 0);
        id = peer_expect("stop", NULL);

        /* QEMU emits STOP before it answers; both arrive in one read. */
        peer_sendf("{\"timestamp\": {\"seconds\": 1700000000, \"microseconds\": 1}, \"event\": \"STOP\"}\r\n"
                   "{\"return\": {}, \"id\": %" JSON_INTEGER_FORMAT "}\r\n",
                   id);
        run_until(&stop.n, 1);
        ck_assert_int_eq(stop.error, 0);
        ck_assert_str_eq(stop.result, "{}");
        ck_assert_int_eq(n_events, 1);
        ck_assert(!last_event_had_data);
        ck_assert_str_eq(trace, "ready;event STOP;reply stop 0;");

        /* An event with data, on its own. */
        peer_send("{\"timestamp\": {\"seconds\": 1700000001, \"microseconds\": 2}, \"event\": \"RESET\", "
                  "\"data\": {\"guest\": true, \"reason\": \"guest-reset\"}}\r\n");
        run_until(&n_events, 2);
        ck_assert(last_event_had_data);
        ck_assert_str_eq(last_event_data, "{\"guest\":true,\"reason\":\"guest-reset\"}");
        ck_assert_str_eq(trace, "ready;event STOP;reply stop 0;event RESET;");
}
END_TEST

START_TEST(test_error_reply) {
        Call bad = { .name = "bad" }, ok = { .name = "ok" };
        json_int_t id;

        client_start(LONG_USEC);
        handshake();

        ck_assert_int_eq(qmp_invoke(client, "no-such-command", NULL, LONG_USEC, on_reply, &bad), 0);
        id = peer_expect("no-such-command", NULL);
        peer_sendf("{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command no-such-command has not "
                   "been found\"}, \"id\": %" JSON_INTEGER_FORMAT "}\r\n",
                   id);
        run_until(&bad.n, 1);
        ck_assert_int_eq(bad.error, -EIO);
        ck_assert(!bad.had_result);
        ck_assert_str_eq(bad.desc, "The command no-such-command has not been found");

        /* An error is the command's business, not the connection's. */
        ck_assert(qmp_client_is_ready(client));
        ck_assert_int_eq(qmp_invoke(client, "query-name", NULL, LONG_USEC, on_reply, &ok), 0);
        reply_return(peer_expect("query-name", NULL), "{}");
        run_until(&ok.n, 1);
        ck_assert_int_eq(ok.error, 0);
        ck_assert_int_eq(n_disconnect, 0);
}
END_TEST

START_TEST(test_command_timeout) {
        Call slow = { .name = "slow" }, next = { .name = "next" };
        json_int_t id_slow;
        uint64_t start, elapsed;

        client_start(LONG_USEC);
        handshake();

        /* Relative timers count from the loop's time of its last iteration, which is where we measure from. */
        ck_assert_int_ge(sd_event_now(event, CLOCK_MONOTONIC, &start), 0);
        ck_assert_int_eq(qmp_invoke(client, "query-status", NULL, 100 * USEC_PER_MSEC, on_reply, &slow), 0);
        id_slow = peer_expect("query-status", NULL);
        run_until(&slow.n, 1); /* the peer says nothing */
        elapsed = now_usec() - start;
        ck_assert_int_eq(slow.error, -ETIMEDOUT);
        ck_assert_uint_ge(elapsed, 100 * USEC_PER_MSEC);
        ck_assert_uint_lt(elapsed, QMP_DEFAULT_TIMEOUT_USEC);
        ck_assert(qmp_client_is_ready(client));

        /* The late reply is dropped; the connection lives on. */
        reply_return(id_slow, "{\"status\": \"running\"}");
        ck_assert_int_eq(qmp_invoke(client, "query-name", NULL, LONG_USEC, on_reply, &next), 0);
        reply_return(peer_expect("query-name", NULL), "{\"name\": \"isolated\"}");
        run_until(&next.n, 1);
        ck_assert_int_eq(next.error, 0);
        ck_assert_str_eq(next.result, "{\"name\":\"isolated\"}");
        ck_assert_int_eq(slow.n, 1);
        ck_assert_int_eq(n_disconnect, 0);
        ck_assert_str_eq(trace, "ready;reply slow -110;reply next 0;");
}
END_TEST

START_TEST(test_handshake_timeout) {
        Call queued = { .name = "queued" };
        uint64_t start = now_usec(), elapsed;

        client_start(100 * USEC_PER_MSEC);
        ck_assert_int_eq(qmp_invoke(client, "query-status", NULL, LONG_USEC, on_reply, &queued), 0);

        /* No greeting. */
        run_until(&n_disconnect, 1);
        elapsed = now_usec() - start;
        ck_assert_int_eq(disconnect_error, -ETIMEDOUT);
        ck_assert_uint_ge(elapsed, 100 * USEC_PER_MSEC);
        ck_assert_uint_lt(elapsed, QMP_DEFAULT_TIMEOUT_USEC);
        ck_assert_int_eq(queued.n, 1);
        ck_assert_int_eq(queued.error, -ECONNRESET);
        ck_assert_int_eq(n_ready, 0);
        ck_assert_str_eq(trace, "reply queued -104;disconnect -110;");

        ck_assert(!qmp_client_is_ready(client));
        ck_assert_int_eq(qmp_invoke(client, "query-status", NULL, 0, on_reply, &queued), -ENOTCONN);
        peer_expect_eof();
        run_for(150 * USEC_PER_MSEC);
        ck_assert_int_eq(n_disconnect, 1);
        ck_assert_int_eq(queued.n, 1);
}
END_TEST

START_TEST(test_handshake_timeout_no_capabilities_reply) {
        client_start(300 * USEC_PER_MSEC);
        peer_send(GREETING);
        (void) peer_expect("qmp_capabilities", NULL);

        /* Greeting seen, qmp_capabilities never answered. */
        run_until(&n_disconnect, 1);
        ck_assert_int_eq(disconnect_error, -ETIMEDOUT);
        ck_assert_int_eq(n_ready, 0);
        peer_expect_eof();
}
END_TEST

START_TEST(test_capabilities_error) {
        Call queued = { .name = "queued" };
        json_int_t id;

        client_start(LONG_USEC);
        ck_assert_int_eq(qmp_invoke(client, "query-status", NULL, LONG_USEC, on_reply, &queued), 0);
        peer_send(GREETING);
        id = peer_expect("qmp_capabilities", NULL);
        peer_sendf("{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}, \"id\": %" JSON_INTEGER_FORMAT
                   "}\r\n",
                   id);
        run_until(&n_disconnect, 1);
        ck_assert_int_eq(disconnect_error, -EPROTO);
        ck_assert_int_eq(queued.error, -ECONNRESET);
        ck_assert_str_eq(trace, "reply queued -104;disconnect -71;");
        peer_expect_eof(); /* the queued command never went out */
        ck_assert_int_eq(peer_len, 0);
}
END_TEST

START_TEST(test_peer_disconnect) {
        Call a = { .name = "a" }, b = { .name = "b" };

        client_start(LONG_USEC);
        handshake();

        ck_assert_int_eq(qmp_invoke(client, "query-status", NULL, 300 * USEC_PER_MSEC, on_reply, &a), 0);
        ck_assert_int_eq(qmp_invoke(client, "query-name", NULL, 300 * USEC_PER_MSEC, on_reply, &b), 0);
        (void) peer_expect("query-status", NULL);
        (void) peer_expect("query-name", NULL);

        peer_fd = safe_close(peer_fd);
        run_until(&n_disconnect, 1);
        ck_assert_int_eq(disconnect_error, -ECONNRESET);
        ck_assert_int_eq(a.error, -ECONNRESET);
        ck_assert_int_eq(b.error, -ECONNRESET);
        ck_assert_str_eq(trace, "ready;reply a -104;reply b -104;disconnect -104;");

        ck_assert(!qmp_client_is_ready(client));
        ck_assert_int_eq(qmp_invoke(client, "query-status", NULL, 0, on_reply, &a), -ENOTCONN);

        /* Past the commands' timeouts: their timers went with them, and on_disconnect came once. */
        run_for(400 * USEC_PER_MSEC);
        ck_assert_int_eq(a.n, 1);
        ck_assert_int_eq(b.n, 1);
        ck_assert_int_eq(n_disconnect, 1);
}
END_TEST

START_TEST(test_split_reads) {
        Call status = { .name = "status" };
        json_int_t id;
        char buf[512];

        client_start(LONG_USEC);

        /* The greeting one byte at a time, "\r" and "\n" in separate reads: nothing happens before the end. */
        peer_send_fragmented(GREETING, 1);
        id = peer_expect("qmp_capabilities", NULL);

        /* The capabilities reply in 7-byte pieces, ended by a bare "\n" (tolerated). */
        (void) snprintf(buf, sizeof(buf), "{\"return\": {}, \"id\": %" JSON_INTEGER_FORMAT "}\n", id);
        peer_send_fragmented(buf, 7);
        ck_assert_int_eq(n_ready, 1);

        /* An event and a reply in 3-byte pieces, the boundary between them inside a piece. */
        ck_assert_int_eq(qmp_invoke(client, "query-status", NULL, LONG_USEC, on_reply, &status), 0);
        id = peer_expect("query-status", NULL);
        (void) snprintf(buf, sizeof(buf),
                        "{\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 0}}\r\n"
                        "{\"return\": {\"status\": \"running\"}, \"id\": %" JSON_INTEGER_FORMAT "}\r\n",
                        id);
        peer_send_fragmented(buf, 3);
        ck_assert_int_eq(status.n, 1);
        ck_assert_int_eq(status.error, 0);
        ck_assert_str_eq(status.result, "{\"status\":\"running\"}");
        ck_assert_str_eq(trace, "ready;event RESUME;reply status 0;");
}
END_TEST

START_TEST(test_partial_writes) {
        Call big = { .name = "big" }, small = { .name = "small" };
        size_t size = 512 * 1024;
        _cleanup_free_ char *payload = malloc(size + 1);
        json_int_t id_big, id_small;
        json_t *args, *msg;

        client_start_full(LONG_USEC, 4096);
        handshake();

        for (size_t i = 0; i < size; i++)
                payload[i] = (char) ('a' + (i * 7 + i / 1000) % 26);
        payload[size] = '\0';
        args = json_pack("{s:s}", "command-line", payload);
        ck_assert_int_eq(qmp_invoke(client, "human-monitor-command", args, LONG_USEC, on_reply, &big), 0);
        json_decref(args);
        ck_assert_int_eq(qmp_invoke(client, "query-status", NULL, LONG_USEC, on_reply, &small), 0);

        /* One loop iteration writes until the socket is full: the peer finds only part of the message, and the
         * rest is still queued on the client's side. */
        ck_assert_int_gt(sd_event_run(event, 100 * USEC_PER_MSEC), 0);
        ck_assert_int_eq(peer_read_available(), 1);
        ck_assert_uint_gt(peer_len, 0);
        ck_assert_uint_lt(peer_len, size);
        ck_assert(!memchr(peer_buf, '\n', peer_len));
        /* The socket has room again and output is pending: EPOLLOUT is armed and the client writes more. */
        ck_assert_int_gt(sd_event_run(event, 0), 0);

        /* The rest arrives intact, then the second command, in order. */
        id_big = peer_expect("human-monitor-command", &msg);
        ck_assert_str_eq(json_string_value(json_object_get(json_object_get(msg, "arguments"), "command-line")),
                         payload);
        json_decref(msg);
        id_small = peer_expect("query-status", NULL);
        ck_assert_int_gt(id_small, id_big);

        /* Replies out of order are matched by id. */
        reply_return(id_small, "{\"status\": \"paused\"}");
        reply_return(id_big, "\"ok\"");
        run_until(&big.n, 1);
        run_until(&small.n, 1);
        ck_assert_int_eq(big.error, 0);
        ck_assert_str_eq(big.result, "\"ok\"");
        ck_assert_str_eq(small.result, "{\"status\":\"paused\"}");
        ck_assert_str_eq(trace, "ready;reply small 0;reply big 0;");

        /* Everything written: EPOLLOUT is off again, so the loop is idle. */
        ck_assert_int_eq(sd_event_run(event, 0), 0);
}
END_TEST

START_TEST(test_large_message_accepted) {
        Call big = { .name = "big" };
        size_t size = QMP_MAX_MESSAGE_SIZE - 100;
        _cleanup_free_ char *line = malloc(size + 64);
        json_int_t id;
        int n;

        client_start(LONG_USEC);
        handshake();

        ck_assert_int_eq(qmp_invoke(client, "query-big", NULL, LONG_USEC, on_reply, &big), 0);
        id = peer_expect("query-big", NULL);

        /* Just under the cap: {"return": "xxx...", "id": N} */
        n = snprintf(line, 64, "{\"id\": %" JSON_INTEGER_FORMAT ", \"return\": \"", id);
        memset(line + n, 'x', size - (size_t) n - 2);
        memcpy(line + size - 2, "\"}\r\n", 5);
        ck_assert_uint_le(strlen(line) - 2, QMP_MAX_MESSAGE_SIZE);
        peer_send(line);
        run_until(&big.n, 1);
        ck_assert_int_eq(big.error, 0);
        ck_assert_int_eq(n_disconnect, 0);
        ck_assert(qmp_client_is_ready(client));
}
END_TEST

START_TEST(test_oversized_message) {
        Call a = { .name = "a" };
        size_t size = QMP_MAX_MESSAGE_SIZE + 4096;
        _cleanup_free_ char *junk = malloc(size);

        client_start(LONG_USEC);
        handshake();
        ck_assert_int_eq(qmp_invoke(client, "query-status", NULL, LONG_USEC, on_reply, &a), 0);
        (void) peer_expect("query-status", NULL);

        /* A message that never ends: the client must give up rather than buffer it. */
        memcpy(junk, "{\"return\": \"", 12);
        memset(junk + 12, 'y', size - 12);
        peer_write(junk, size, true);
        run_until(&n_disconnect, 1);
        ck_assert_int_eq(disconnect_error, -EMSGSIZE);
        ck_assert_int_eq(a.n, 1);
        ck_assert_int_eq(a.error, -ECONNRESET);
        ck_assert_str_eq(trace, "ready;reply a -104;disconnect -90;");
        ck_assert_int_eq(qmp_invoke(client, "query-status", NULL, 0, on_reply, &a), -ENOTCONN);
}
END_TEST

START_TEST(test_queued_before_handshake) {
        Call a = { .name = "a" }, b = { .name = "b" };
        json_int_t id_caps, id_a, id_b;
        json_t *args, *msg;

        client_start(LONG_USEC);
        ck_assert_int_eq(qmp_invoke(client, "query-version", NULL, LONG_USEC, on_reply, &a), 0);
        args = json_pack("{s:b}", "force", 1);
        ck_assert_int_eq(qmp_invoke(client, "eject", args, LONG_USEC, on_reply, &b), 0);
        json_decref(args);
        peer_expect_silence();

        /* qmp_capabilities goes first and alone. */
        peer_send(GREETING);
        id_caps = peer_expect("qmp_capabilities", NULL);
        peer_expect_silence();
        reply_return(id_caps, "{}");

        /* Then the queued commands, in the order they were invoked. */
        id_a = peer_expect("query-version", NULL);
        id_b = peer_expect("eject", &msg);
        ck_assert(json_is_true(json_object_get(json_object_get(msg, "arguments"), "force")));
        json_decref(msg);
        ck_assert_int_eq(n_ready, 1);
        ck_assert_int_ne(id_a, id_caps);
        ck_assert_int_ne(id_b, id_caps);
        ck_assert_int_ne(id_a, id_b);

        reply_return(id_b, "{}");
        reply_return(id_a, "{\"qemu\": {\"major\": 7}}");
        run_until(&a.n, 1);
        run_until(&b.n, 1);
        ck_assert_int_eq(a.error, 0);
        ck_assert_int_eq(b.error, 0);
        ck_assert_str_eq(a.result, "{\"qemu\":{\"major\":7}}");
        ck_assert_str_eq(trace, "ready;reply b 0;reply a 0;");
}
END_TEST

START_TEST(test_unknown_messages_ignored) {
        Call a = { .name = "a" };
        json_int_t id;

        client_start(LONG_USEC);
        handshake();
        ck_assert_int_eq(qmp_invoke(client, "query-status", NULL, LONG_USEC, on_reply, &a), 0);
        id = peer_expect("query-status", NULL);

        peer_send("this is not JSON\r\n"
                  "\r\n"
                  "[1, 2, 3]\r\n"
                  "{\"foo\": 1}\r\n"
                  "{\"return\": {}}\r\n"
                  "{\"return\": {}, \"id\": \"a-string\"}\r\n"
                  "{\"return\": {}, \"id\": 99999}\r\n"
                  "{\"event\": 42}\r\n"
                  "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n");
        reply_return(id, "{\"status\": \"running\"}");
        run_until(&a.n, 1);
        ck_assert_int_eq(a.error, 0);
        ck_assert_str_eq(a.result, "{\"status\":\"running\"}");
        ck_assert_int_eq(n_events, 0);
        ck_assert_str_eq(trace, "ready;reply a 0;");
        ck_assert_int_eq(n_disconnect, 0);
        ck_assert(qmp_client_is_ready(client));
        peer_expect_silence(); /* a second greeting does not restart the handshake */
}
END_TEST

START_TEST(test_uint64_above_int64) {
        Call a = { .name = "a" };
        json_int_t id;

        client_start(LONG_USEC);
        handshake();

        /* QEMU sends uint64 members that jansson cannot hold as integers: the event still arrives. */
        peer_send("{\"event\": \"GUEST_PANICKED\", \"data\": {\"action\": \"pause\", \"info\": {\"type\": "
                  "\"hyper-v\", \"arg1\": 18446744073709551615, \"arg2\": 0}}}\r\n");
        run_until(&n_events, 1);
        ck_assert_str_eq(trace, "ready;event GUEST_PANICKED;");
        ck_assert_str_eq(last_event_data,
                         "{\"action\":\"pause\",\"info\":{\"arg1\":1.8446744073709552e19,\"arg2\":0.0,"
                         "\"type\":\"hyper-v\"}}");

        /* And a reply carrying one still finds its command by id. */
        ck_assert_int_eq(qmp_invoke(client, "query-big", NULL, LONG_USEC, on_reply, &a), 0);
        id = peer_expect("query-big", NULL);
        peer_sendf("{\"return\": {\"n\": 18446744073709551615}, \"id\": %" JSON_INTEGER_FORMAT "}\r\n", id);
        run_until(&a.n, 1);
        ck_assert_int_eq(a.error, 0);
        ck_assert_str_eq(a.result, "{\"n\":1.8446744073709552e19}");
        ck_assert_int_eq(n_disconnect, 0);
}
END_TEST

START_TEST(test_free_outside_callback) {
        Call a = { .name = "a" }, b = { .name = "b" };

        client_start(LONG_USEC);
        handshake();
        ck_assert_int_eq(qmp_invoke(client, "query-status", NULL, 100 * USEC_PER_MSEC, on_reply, &a), 0);
        ck_assert_int_eq(qmp_invoke(client, "query-name", NULL, 100 * USEC_PER_MSEC, on_reply, &b), 0);

        /* The handlers run during qmp_client_free() and see the client they belong to. */
        ck_assert_ptr_null(qmp_client_free(client));
        client = NULL;
        ck_assert_int_eq(a.error, -ECANCELED);
        ck_assert_int_eq(b.error, -ECANCELED);
        ck_assert_int_eq(n_disconnect, 0);
        ck_assert_str_eq(trace, "ready;reply a -125;reply b -125;");

        peer_expect_eof();
        run_for(200 * USEC_PER_MSEC); /* their timers are gone too */
        ck_assert_int_eq(a.n, 1);
        ck_assert_int_eq(b.n, 1);
}
END_TEST

static void expect_freed(void) {
        ck_assert_ptr_null(client);
        peer_expect_eof();
        run_for(100 * USEC_PER_MSEC);
}

START_TEST(test_free_in_ready) {
        Call a = { .name = "a" };

        free_where = FREE_IN_READY;
        client_start(LONG_USEC);
        ck_assert_int_eq(qmp_invoke(client, "query-status", NULL, LONG_USEC, on_reply, &a), 0);
        peer_send(GREETING);
        reply_return(peer_expect("qmp_capabilities", NULL), "{}");
        run_until(&n_ready, 1);
        expect_freed();
        ck_assert_int_eq(a.n, 1);
        ck_assert_int_eq(a.error, -ECANCELED);
        ck_assert_int_eq(n_disconnect, 0);
        ck_assert_str_eq(trace, "ready;reply a -125;");
}
END_TEST

START_TEST(test_free_in_event) {
        Call a = { .name = "a" }, b = { .name = "b" };
        json_int_t id;

        client_start(LONG_USEC);
        handshake();
        free_where = FREE_IN_EVENT;
        ck_assert_int_eq(qmp_invoke(client, "stop", NULL, LONG_USEC, on_reply, &a), 0);
        ck_assert_int_eq(qmp_invoke(client, "cont", NULL, LONG_USEC, on_reply, &b), 0);
        id = peer_expect("stop", NULL);

        /* The reply after the event is in the same read, but must not be dispatched to a freed client. */
        peer_sendf("{\"event\": \"STOP\"}\r\n{\"return\": {}, \"id\": %" JSON_INTEGER_FORMAT "}\r\n", id);
        run_until(&n_events, 1);
        expect_freed();
        ck_assert_int_eq(a.error, -ECANCELED);
        ck_assert_int_eq(b.error, -ECANCELED);
        ck_assert_int_eq(n_events, 1);
        ck_assert_str_eq(trace, "ready;event STOP;reply a -125;reply b -125;");
}
END_TEST

START_TEST(test_free_in_reply) {
        Call a = { .name = "a", .free_client = true }, b = { .name = "b" };
        json_int_t id;

        client_start(LONG_USEC);
        handshake();
        ck_assert_int_eq(qmp_invoke(client, "stop", NULL, LONG_USEC, on_reply, &a), 0);
        ck_assert_int_eq(qmp_invoke(client, "cont", NULL, LONG_USEC, on_reply, &b), 0);
        id = peer_expect("stop", NULL);
        peer_sendf("{\"return\": {}, \"id\": %" JSON_INTEGER_FORMAT "}\r\n{\"event\": \"STOP\"}\r\n", id);
        run_until(&a.n, 1);
        expect_freed();
        ck_assert_int_eq(a.error, 0);
        ck_assert_int_eq(b.error, -ECANCELED);
        ck_assert_int_eq(n_events, 0);
        ck_assert_str_eq(trace, "ready;reply a 0;reply b -125;");
}
END_TEST

START_TEST(test_free_in_timeout) {
        Call a = { .name = "a", .free_client = true }, b = { .name = "b" };

        client_start(LONG_USEC);
        handshake();
        ck_assert_int_eq(qmp_invoke(client, "stop", NULL, 50 * USEC_PER_MSEC, on_reply, &a), 0);
        ck_assert_int_eq(qmp_invoke(client, "cont", NULL, LONG_USEC, on_reply, &b), 0);
        run_until(&a.n, 1);
        expect_freed();
        ck_assert_int_eq(a.error, -ETIMEDOUT);
        ck_assert_int_eq(b.error, -ECANCELED);
        ck_assert_str_eq(trace, "ready;reply a -110;reply b -125;");
}
END_TEST

START_TEST(test_free_in_disconnect) {
        Call a = { .name = "a" };

        client_start(LONG_USEC);
        handshake();
        free_where = FREE_IN_DISCONNECT;
        ck_assert_int_eq(qmp_invoke(client, "stop", NULL, LONG_USEC, on_reply, &a), 0);
        (void) peer_expect("stop", NULL);
        peer_fd = safe_close(peer_fd);
        run_until(&n_disconnect, 1);
        ck_assert_ptr_null(client);
        run_for(100 * USEC_PER_MSEC);
        ck_assert_int_eq(a.n, 1);
        ck_assert_int_eq(a.error, -ECONNRESET);
        ck_assert_int_eq(n_disconnect, 1);
        ck_assert_str_eq(trace, "ready;reply a -104;disconnect -104;");
}
END_TEST

START_TEST(test_free_in_connreset_handler) {
        Call a = { .name = "a", .free_client = true }, b = { .name = "b" };

        client_start(LONG_USEC);
        handshake();
        ck_assert_int_eq(qmp_invoke(client, "stop", NULL, LONG_USEC, on_reply, &a), 0);
        ck_assert_int_eq(qmp_invoke(client, "cont", NULL, LONG_USEC, on_reply, &b), 0);
        peer_fd = safe_close(peer_fd);
        run_until(&a.n, 1);
        ck_assert_ptr_null(client);
        run_for(100 * USEC_PER_MSEC);

        /* Freed while failing the pending commands: the rest are cancelled and on_disconnect never comes. */
        ck_assert_int_eq(a.error, -ECONNRESET);
        ck_assert_int_eq(b.error, -ECANCELED);
        ck_assert_int_eq(n_disconnect, 0);
        ck_assert_str_eq(trace, "ready;reply a -104;reply b -125;");
}
END_TEST

START_TEST(test_bad_arguments) {
        Call a = { .name = "a" };
        json_t *not_an_object;
        int fds[2];

        /* qmp_client_new() owns the fd even when it fails. */
        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
        ck_assert_int_eq(qmp_client_new(NULL, fds[0], "test", 0, &callbacks, NULL, &client), -EINVAL);
        ck_assert_ptr_null(client);
        ck_assert_int_eq(fcntl(fds[0], F_GETFD), -1);
        ck_assert_int_eq(errno, EBADF);
        safe_close(fds[1]);
        ck_assert_int_eq(qmp_client_new(event, -1, "test", 0, &callbacks, NULL, &client), -EINVAL);

        client_start(LONG_USEC);
        not_an_object = json_integer(1);
        ck_assert_int_eq(qmp_invoke(client, "stop", not_an_object, 0, on_reply, &a), -EINVAL);
        json_decref(not_an_object);
        ck_assert_int_eq(qmp_invoke(client, "", NULL, 0, on_reply, &a), -EINVAL);
        ck_assert_int_eq(qmp_invoke(client, NULL, NULL, 0, on_reply, &a), -EINVAL);
        ck_assert_int_eq(qmp_invoke(NULL, "stop", NULL, 0, on_reply, &a), -EINVAL);
        ck_assert(!qmp_client_is_ready(NULL));
        ck_assert_ptr_null(qmp_client_free(NULL));
        ck_assert_int_eq(a.n, 0);

        /* Nothing was queued by the refused calls. */
        handshake();
        peer_expect_silence();
}
END_TEST

static Suite *qmp_suite(void) {
        Suite *s = suite_create("qmp");
        TCase *tc;

        tc = tcase_create("protocol");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_handshake);
        tcase_add_test(tc, test_command_reply);
        tcase_add_test(tc, test_event_before_reply);
        tcase_add_test(tc, test_error_reply);
        tcase_add_test(tc, test_queued_before_handshake);
        tcase_add_test(tc, test_unknown_messages_ignored);
        tcase_add_test(tc, test_uint64_above_int64);
        tcase_add_test(tc, test_bad_arguments);
        suite_add_tcase(s, tc);

        tc = tcase_create("io");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_split_reads);
        tcase_add_test(tc, test_partial_writes);
        tcase_add_test(tc, test_large_message_accepted);
        tcase_add_test(tc, test_oversized_message);
        suite_add_tcase(s, tc);

        tc = tcase_create("failures");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_command_timeout);
        tcase_add_test(tc, test_handshake_timeout);
        tcase_add_test(tc, test_handshake_timeout_no_capabilities_reply);
        tcase_add_test(tc, test_capabilities_error);
        tcase_add_test(tc, test_peer_disconnect);
        suite_add_tcase(s, tc);

        tc = tcase_create("lifetime");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_free_outside_callback);
        tcase_add_test(tc, test_free_in_ready);
        tcase_add_test(tc, test_free_in_event);
        tcase_add_test(tc, test_free_in_reply);
        tcase_add_test(tc, test_free_in_timeout);
        tcase_add_test(tc, test_free_in_disconnect);
        tcase_add_test(tc, test_free_in_connreset_handler);
        suite_add_tcase(s, tc);

        return s;
}

int main(void) {
        SRunner *sr = srunner_create(qmp_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
