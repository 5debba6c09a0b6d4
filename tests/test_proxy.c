/* SPDX-License-Identifier: MIT */
/* The unix-to-TCP proxy with real sockets: a TCP server on 127.0.0.1 in threads of the test (echo, or collect and
 * answer after EOF), clients on the unix side driven between runs of a private sd_event. Set PROXY_TEST_DEBUG=1
 * to see the proxy's debug log. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>

#include "log.h"
#include "macro.h"
#include "proxy.h"

#define USEC_PER_MSEC 1000ULL
#define RUN_BOUND_USEC (30ULL * 1000000ULL) /* no wait in this file may take longer */
#define SERVER_CONNS_MAX 512U

static uint64_t now_usec(void) {
        struct timespec ts;

        ck_assert_int_eq(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

/* --- the TCP server, in threads --- */

typedef enum ServerMode {
        SERVER_ECHO,    /* sends back what it reads as it reads it; EOF -> shutdown(SHUT_WR) */
        SERVER_COLLECT, /* reads until EOF, waits 100 ms, answers "got: " + everything, closes */
        SERVER_SOURCE,  /* sends source_data, then shutdown(SHUT_WR) */
        SERVER_SILENT,  /* never accepts: connections wait in the backlog */
} ServerMode;

static const uint8_t *source_data;
static size_t source_size;
static atomic_size_t source_sent;

typedef struct Server {
        int fd;
        uint16_t port;
        ServerMode mode;
        pthread_t thread;
        bool running;
        pthread_t conns[SERVER_CONNS_MAX]; /* written by the server thread, read after it was joined */
        size_t n_conns;
        atomic_uint n_accepted;
} Server;

static void write_all(int fd, const void *p, size_t n) {
        const char *c = p;

        while (n > 0) {
                ssize_t k = send(fd, c, n, MSG_NOSIGNAL);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return; /* the proxy went away: the test notices on its side */
                }
                c += k;
                n -= (size_t) k;
        }
}

typedef struct ServerConn {
        int fd;
        ServerMode mode;
} ServerConn;

static void *server_conn_thread(void *userdata) {
        ServerConn *sc = userdata;
        int fd = sc->fd;
        ServerMode mode = sc->mode;
        char buf[65536];
        char *all = NULL;
        size_t len = 0;
        ssize_t n;

        free(sc);

        if (mode == SERVER_SOURCE) {
                for (size_t done = 0; done < source_size;) {
                        size_t chunk = source_size - done > 65536 ? 65536 : source_size - done;
                        ssize_t k = send(fd, source_data + done, chunk, MSG_NOSIGNAL);

                        if (k < 0 && errno == EINTR)
                                continue;
                        if (k <= 0)
                                break;
                        done += (size_t) k;
                        atomic_store(&source_sent, done);
                }
                (void) shutdown(fd, SHUT_WR);
        }

        for (;;) {
                n = recv(fd, buf, sizeof(buf), 0);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                if (mode == SERVER_ECHO)
                        write_all(fd, buf, (size_t) n);
                else if (mode == SERVER_COLLECT) {
                        char *a = realloc(all, len + (size_t) n);

                        if (!a)
                                break;
                        all = a;
                        memcpy(all + len, buf, (size_t) n);
                        len += (size_t) n;
                }
        }

        if (mode == SERVER_COLLECT && n == 0) {
                struct timespec ts = { .tv_nsec = 100 * 1000 * 1000 };

                (void) nanosleep(&ts, NULL);
                write_all(fd, "got: ", 5);
                write_all(fd, all, len);
        } else if (mode == SERVER_ECHO && n == 0)
                (void) shutdown(fd, SHUT_WR);
        free(all);
        /* Until the proxy closes: a close with its data unread would be a reset. */
        while ((n = recv(fd, buf, sizeof(buf), 0)) > 0 || (n < 0 && errno == EINTR))
                ;
        close(fd);
        return NULL;
}

static void *server_thread(void *userdata) {
        Server *s = userdata;

        for (;;) {
                int fd = accept4(s->fd, NULL, NULL, SOCK_CLOEXEC);

                if (fd < 0) {
                        if (errno == EINTR || errno == ECONNABORTED)
                                continue;
                        break; /* shutdown() by server_stop() */
                }
                ServerConn *sc = malloc(sizeof(*sc));

                atomic_fetch_add(&s->n_accepted, 1);
                if (!sc || s->n_conns >= SERVER_CONNS_MAX) {
                        free(sc);
                        close(fd);
                        continue;
                }
                *sc = (ServerConn) { .fd = fd, .mode = s->mode };
                if (pthread_create(&s->conns[s->n_conns], NULL, server_conn_thread, sc) != 0) {
                        free(sc);
                        close(fd);
                        continue;
                }
                s->n_conns++;
        }
        return NULL;
}

static void server_start(Server *s, ServerMode mode) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sa);

        *s = (Server) { .mode = mode };
        s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(s->fd, 0);
        ck_assert_int_eq(bind(s->fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        ck_assert_int_eq(getsockname(s->fd, (struct sockaddr *) &sa, &len), 0);
        s->port = ntohs(sa.sin_port);
        ck_assert_int_eq(listen(s->fd, 1024), 0);
        if (mode == SERVER_SILENT)
                return;
        ck_assert_int_eq(pthread_create(&s->thread, NULL, server_thread, s), 0);
        s->running = true;
}

/* The connection threads end once the proxy closed their connections. */
static void server_stop(Server *s) {
        (void) shutdown(s->fd, SHUT_RDWR); /* wakes accept() */
        if (s->running) {
                ck_assert_int_eq(pthread_join(s->thread, NULL), 0);
                for (size_t i = 0; i < s->n_conns; i++)
                        ck_assert_int_eq(pthread_join(s->conns[i], NULL), 0);
        }
        s->fd = safe_close(s->fd);
}

/* A TCP port of ours where nothing listens: connecting is refused. */
static int refusing_port(uint16_t *ret_port) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sa);
        int fd;

        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        ck_assert_int_eq(getsockname(fd, (struct sockaddr *) &sa, &len), 0);
        *ret_port = ntohs(sa.sin_port);
        return fd;
}

/* --- clients on the unix side, driven from the loop --- */

typedef struct Client {
        int fd;
        const uint8_t *out;   /* borrowed */
        size_t out_len, out_pos;
        bool shut_when_sent;
        bool shut;
        bool reading;         /* false: a client that does not read (backpressure) */
        uint8_t *in;
        size_t in_len, in_cap;
        bool eof;
        int error;
} Client;

static sd_event *event;
static char tmpdir[] = "/tmp/test-proxy-XXXXXX";
static char sock_path[PATH_MAX];
static Proxy *proxy;
static Server server;

static void client_connect(Client *c) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };

        *c = (Client) { .reading = true };
        strcpy(sa.sun_path, sock_path);
        c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        ck_assert_int_ge(c->fd, 0);
        ck_assert_int_eq(connect(c->fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
}

static void client_close(Client *c) {
        c->fd = safe_close(c->fd);
        c->in = mfree(c->in);
}

static void client_step(Client *c) {
        if (c->fd < 0)
                return;

        while (c->out_pos < c->out_len) {
                size_t n = c->out_len - c->out_pos;
                ssize_t k = send(c->fd, c->out + c->out_pos, n > 65536 ? 65536 : n, MSG_NOSIGNAL | MSG_DONTWAIT);

                if (k < 0) {
                        ck_assert_msg(errno == EAGAIN || errno == EINTR, "send: %s", strerror(errno));
                        break;
                }
                c->out_pos += (size_t) k;
        }
        if (c->out_pos == c->out_len && c->shut_when_sent && !c->shut) {
                ck_assert_int_eq(shutdown(c->fd, SHUT_WR), 0);
                c->shut = true;
        }

        while (c->reading && !c->eof) {
                ssize_t k;

                if (c->in_cap - c->in_len < 65536) {
                        c->in_cap = c->in_cap * 2 + 65536;
                        c->in = realloc(c->in, c->in_cap);
                        ck_assert_ptr_nonnull(c->in);
                }
                k = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, MSG_DONTWAIT);
                if (k < 0) {
                        if (errno == EAGAIN || errno == EINTR)
                                break;
                        c->error = errno;
                        c->eof = true;
                        break;
                }
                if (k == 0) {
                        c->eof = true;
                        break;
                }
                c->in_len += (size_t) k;
        }
}

static Client *clients[300];
static size_t n_clients;
static unsigned peak_connections;

static void step(void) {
        ck_assert_int_ge(sd_event_run(event, 5 * USEC_PER_MSEC), 0);
        for (size_t i = 0; i < n_clients; i++)
                client_step(clients[i]);
        if (proxy_connections(proxy) > peak_connections)
                peak_connections = proxy_connections(proxy);
}

static bool all_eof(void) {
        for (size_t i = 0; i < n_clients; i++)
                if (!clients[i]->eof)
                        return false;
        return true;
}

#define RUN_UNTIL(cond)                                                                  \
        do {                                                                             \
                uint64_t _deadline = now_usec() + RUN_BOUND_USEC;                        \
                while (!(cond)) {                                                        \
                        ck_assert_msg(now_usec() < _deadline, "timed out waiting for " #cond); \
                        step();                                                          \
                }                                                                        \
        } while (0)

static void run_for(uint64_t usec) {
        uint64_t end = now_usec() + usec;

        while (now_usec() < end)
                step();
}

static Client *client_new(void) {
        Client *c = malloc(sizeof(*c));

        ck_assert_ptr_nonnull(c);
        client_connect(c);
        ck_assert_uint_lt(n_clients, ELEMENTSOF(clients));
        clients[n_clients++] = c;
        return c;
}

/* --- fixtures --- */

/* What the fallback of the tests without a target holds (test_no_target). */
static int held[PROXY_CONNECTIONS_MAX + 8];
static unsigned n_held;

static void proxy_open(uint16_t port) {
        HydraError err = {};

        ck_assert_msg(proxy_new(event, sock_path, 0660, (gid_t) -1, "127.0.0.1", port, &proxy, &err) == 0, "%s",
                      err.message);
}

static void setup(void) {
        ck_assert_ptr_nonnull(mkdtemp(tmpdir));
        (void) snprintf(sock_path, sizeof(sock_path), "%s/containerd.sock", tmpdir);
        ck_assert_int_ge(sd_event_new(&event), 0);
        if (getenv("PROXY_TEST_DEBUG"))
                log_set_max_level(LOG_DEBUG);
        /* A client the proxy closed on: a send gets EPIPE, not a signal. */
        signal(SIGPIPE, SIG_IGN);
        server.fd = -EBADF;
        n_clients = 0;
        peak_connections = 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

static void teardown(void) {
        proxy = proxy_free(proxy);
        for (unsigned i = 0; i < n_held; i++)
                held[i] = safe_close(held[i]);
        n_held = 0;
        for (size_t i = 0; i < n_clients; i++) {
                client_close(clients[i]);
                free(clients[i]);
        }
        n_clients = 0;
        if (server.fd >= 0)
                server_stop(&server);
        event = sd_event_unref(event);
        (void) nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
        strcpy(tmpdir, "/tmp/test-proxy-XXXXXX");
}

/* --- tests --- */

static void fill_pattern(uint8_t *p, size_t n, uint32_t seed) {
        uint32_t x = seed * 2654435761U + 1;

        for (size_t i = 0; i < n; i++) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                p[i] = (uint8_t) x;
        }
}

START_TEST(test_parallel_echo) {
        const size_t size = 1024 * 1024, n = 20;
        uint8_t *data[20];
        Client *c[20];

        server_start(&server, SERVER_ECHO);
        proxy_open(server.port);

        for (size_t i = 0; i < n; i++) {
                data[i] = malloc(size);
                ck_assert_ptr_nonnull(data[i]);
                fill_pattern(data[i], size, (uint32_t) i + 1);
                c[i] = client_new();
                c[i]->out = data[i];
                c[i]->out_len = size;
                c[i]->shut_when_sent = true;
        }

        RUN_UNTIL(all_eof());

        for (size_t i = 0; i < n; i++) {
                ck_assert_int_eq(c[i]->error, 0);
                ck_assert_uint_eq(c[i]->in_len, size);
                ck_assert_msg(memcmp(c[i]->in, data[i], size) == 0, "client %zu got other data back", i);
        }
        ck_assert_uint_eq(peak_connections, n);
        ck_assert_uint_eq(atomic_load(&server.n_accepted), n);

        /* Both directions ended: every pair is closed without the clients closing theirs. */
        RUN_UNTIL(proxy_connections(proxy) == 0);
        for (size_t i = 0; i < n; i++)
                free(data[i]);
}
END_TEST

START_TEST(test_half_close) {
        static const uint8_t hello[] = "hello through the proxy";
        Client *c;

        server_start(&server, SERVER_COLLECT);
        proxy_open(server.port);

        c = client_new();
        c->out = hello;
        c->out_len = sizeof(hello) - 1;
        c->shut_when_sent = true;

        /* The server answers only after our EOF reached it; the answer still reaches us, then EOF. */
        RUN_UNTIL(c->eof);
        ck_assert_int_eq(c->error, 0);
        ck_assert_uint_eq(c->in_len, 5 + sizeof(hello) - 1);
        ck_assert_mem_eq(c->in, "got: hello through the proxy", c->in_len);
        RUN_UNTIL(proxy_connections(proxy) == 0);
}
END_TEST

/* A target that does not read: the proxy's buffer fills, it stops reading the client, the client's sends stop
 * going through. Then the target reads, and everything arrives intact. */
START_TEST(test_backpressure_to_target) {
        /* Several times what the kernel buffers on the way (here: 4 MiB of TCP send buffer, 200 KiB of unix). */
        const size_t size = 16 * 1024 * 1024;
        _cleanup_free_ uint8_t *data = malloc(size), *got = malloc(size);
        _cleanup_close_ int fd = -EBADF;
        size_t stalled_at, got_len = 0;
        Client *c;

        ck_assert_ptr_nonnull(data);
        ck_assert_ptr_nonnull(got);
        fill_pattern(data, size, 99);
        server_start(&server, SERVER_SILENT);
        proxy_open(server.port);

        c = client_new();
        c->out = data;
        c->out_len = size;
        c->shut_when_sent = true;
        run_for(500 * USEC_PER_MSEC);
        stalled_at = c->out_pos;
        ck_assert_uint_lt(stalled_at, size);
        run_for(300 * USEC_PER_MSEC);
        ck_assert_uint_eq(c->out_pos, stalled_at);
        ck_assert_uint_eq(proxy_connections(proxy), 1);

        fd = accept4(server.fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        ck_assert_int_ge(fd, 0);
        for (uint64_t deadline = now_usec() + RUN_BOUND_USEC;;) {
                ssize_t k = recv(fd, got + got_len, size - got_len, MSG_DONTWAIT);

                if (k == 0)
                        break;
                if (k < 0)
                        ck_assert_int_eq(errno, EAGAIN);
                else
                        got_len += (size_t) k;
                ck_assert_msg(now_usec() < deadline, "timed out reading what the client sent");
                step();
        }
        ck_assert_uint_eq(got_len, size);
        ck_assert(memcmp(got, data, size) == 0);
        ck_assert_uint_eq(c->out_pos, size);
        ck_assert(!c->eof); /* the target's direction is still open */

        fd = safe_close(fd);
        RUN_UNTIL(c->eof);
        ck_assert_int_eq(c->error, 0);
        RUN_UNTIL(proxy_connections(proxy) == 0);
}
END_TEST

/* A client that does not read: the proxy stops reading the target, whose sends stop going through. */
START_TEST(test_backpressure_to_client) {
        const size_t size = 32 * 1024 * 1024;
        _cleanup_free_ uint8_t *data = malloc(size);
        size_t stalled_at;
        Client *c;

        ck_assert_ptr_nonnull(data);
        fill_pattern(data, size, 7);
        source_data = data;
        source_size = size;
        atomic_store(&source_sent, 0);
        server_start(&server, SERVER_SOURCE);
        proxy_open(server.port);

        c = client_new();
        c->reading = false;
        run_for(500 * USEC_PER_MSEC);
        stalled_at = atomic_load(&source_sent);
        ck_assert_uint_lt(stalled_at, size);
        run_for(300 * USEC_PER_MSEC);
        ck_assert_uint_eq(atomic_load(&source_sent), stalled_at);

        c->reading = true;
        c->shut_when_sent = true; /* nothing to send: shut at once, the other direction goes on */
        RUN_UNTIL(c->eof);
        ck_assert_int_eq(c->error, 0);
        ck_assert_uint_eq(c->in_len, size);
        ck_assert(memcmp(c->in, data, size) == 0);
        RUN_UNTIL(proxy_connections(proxy) == 0);
}
END_TEST

START_TEST(test_target_down) {
        _cleanup_close_ int reserved = -EBADF;
        uint16_t port;
        uint64_t start;
        Client *c;

        reserved = refusing_port(&port);
        proxy_open(port);

        start = now_usec();
        c = client_new();
        RUN_UNTIL(c->eof);
        ck_assert_uint_lt(now_usec() - start, 2000 * USEC_PER_MSEC);
        ck_assert_int_eq(c->error, 0);
        ck_assert_uint_eq(c->in_len, 0);
        ck_assert_uint_eq(proxy_connections(proxy), 0);

        /* The listener is fine: the next client gets the same. */
        c = client_new();
        RUN_UNTIL(c->eof);
}
END_TEST

START_TEST(test_socket_mode) {
        struct stat st;
        HydraError err = {};
        gid_t gid = geteuid() == 0 ? 4242 : getegid();
        mode_t old = umask(0);
        int fd;

        /* A stale socket is replaced; the umask does not leak into the mode. */
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fd, 0);
        {
                struct sockaddr_un sa = { .sun_family = AF_UNIX };

                strcpy(sa.sun_path, sock_path);
                ck_assert_int_eq(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        }
        safe_close(fd);

        ck_assert_msg(proxy_new(event, sock_path, 0660, gid, "127.0.0.1", 1, &proxy, &err) == 0, "%s", err.message);
        umask(old);
        ck_assert_int_eq(lstat(sock_path, &st), 0);
        ck_assert(S_ISSOCK(st.st_mode));
        ck_assert_uint_eq(st.st_mode & 07777, 0660);
        ck_assert_uint_eq(st.st_gid, gid);

        proxy = proxy_free(proxy);
        ck_assert_int_eq(lstat(sock_path, &st), -1);
        ck_assert_int_eq(errno, ENOENT);
}
END_TEST

START_TEST(test_bad_arguments) {
        _cleanup_free_ char *long_path = NULL;
        HydraError err = {};
        struct stat st;
        Proxy *p = NULL;
        int fd;

        /* Something that is not a socket is not removed. */
        fd = open(sock_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        safe_close(fd);
        ck_assert_int_eq(proxy_new(event, sock_path, 0660, (gid_t) -1, "127.0.0.1", 80, &p, &err), -EEXIST);
        ck_assert_ptr_nonnull(strstr(err.message, sock_path));
        ck_assert_int_eq(lstat(sock_path, &st), 0);
        ck_assert(S_ISREG(st.st_mode));
        ck_assert_int_eq(unlink(sock_path), 0);

        /* No name lookups. */
        ck_assert_int_eq(proxy_new(event, sock_path, 0660, (gid_t) -1, "localhost", 80, &p, &err), -EINVAL);
        ck_assert_ptr_nonnull(strstr(err.message, "localhost"));
        ck_assert_int_eq(lstat(sock_path, &st), -1);

        ck_assert_int_ge(asprintf(&long_path, "%s/%0200d", tmpdir, 0), 0);
        ck_assert_int_eq(proxy_new(event, long_path, 0660, (gid_t) -1, "127.0.0.1", 80, &p, &err), -ENAMETOOLONG);
        ck_assert_ptr_null(p);

        /* A target has a port, and no target none. */
        ck_assert_int_eq(proxy_new(event, sock_path, 0660, (gid_t) -1, NULL, 80, &p, &err), -EINVAL);
        ck_assert_int_eq(proxy_new(event, sock_path, 0660, (gid_t) -1, "127.0.0.1", 0, &p, &err), -EINVAL);
        ck_assert_int_eq(lstat(sock_path, &st), -1);

        /* IPv6 is fine. */
        ck_assert_int_eq(proxy_new(event, sock_path, 0660, (gid_t) -1, "::1", 80, &p, &err), 0);
        ck_assert_ptr_null(proxy_free(p));
        ck_assert_ptr_null(proxy_free(NULL));
        ck_assert_uint_eq(proxy_connections(NULL), 0);
}
END_TEST

START_TEST(test_clients_close) {
        static const uint8_t ping[] = "ping";
        Client *c[3];

        server_start(&server, SERVER_ECHO);
        proxy_open(server.port);
        for (size_t i = 0; i < ELEMENTSOF(c); i++) {
                c[i] = client_new();
                c[i]->out = ping;
                c[i]->out_len = 4;
        }
        RUN_UNTIL(c[0]->in_len == 4 && c[1]->in_len == 4 && c[2]->in_len == 4);
        ck_assert_uint_eq(proxy_connections(proxy), 3);

        /* Clients that close without a word: their pairs go. */
        for (size_t i = 0; i < ELEMENTSOF(c); i++)
                client_close(c[i]);
        RUN_UNTIL(proxy_connections(proxy) == 0);
}
END_TEST

START_TEST(test_free_closes_everything) {
        static const uint8_t ping[] = "ping";
        Client *c[3];
        struct stat st;

        server_start(&server, SERVER_ECHO);
        proxy_open(server.port);
        for (size_t i = 0; i < ELEMENTSOF(c); i++) {
                c[i] = client_new();
                c[i]->out = ping;
                c[i]->out_len = 4;
        }
        RUN_UNTIL(c[0]->in_len == 4 && c[1]->in_len == 4 && c[2]->in_len == 4);
        ck_assert_uint_eq(proxy_connections(proxy), 3);

        proxy = proxy_free(proxy);
        ck_assert_int_eq(lstat(sock_path, &st), -1);
        ck_assert_int_eq(errno, ENOENT);
        for (size_t i = 0; i < ELEMENTSOF(c); i++) {
                client_step(c[i]);
                ck_assert(c[i]->eof);
        }
        /* The server's side was closed too: its threads end (teardown joins them). */
        server_stop(&server);
}
END_TEST

START_TEST(test_connection_cap) {
        Client *extra;

        /* Pairs whose target never answers (the connect completes in the backlog) stay open. */
        server_start(&server, SERVER_SILENT);
        proxy_open(server.port);
        for (size_t i = 0; i < PROXY_CONNECTIONS_MAX; i++)
                (void) client_new();
        RUN_UNTIL(proxy_connections(proxy) == PROXY_CONNECTIONS_MAX);

        extra = client_new();
        RUN_UNTIL(extra->eof);
        ck_assert_uint_eq(proxy_connections(proxy), PROXY_CONNECTIONS_MAX);
        for (size_t i = 0; i < PROXY_CONNECTIONS_MAX; i++)
                ck_assert(!clients[i]->eof);

        /* One goes, another can come. */
        client_close(clients[0]);
        RUN_UNTIL(proxy_connections(proxy) == PROXY_CONNECTIONS_MAX - 1);
        extra = client_new();
        RUN_UNTIL(proxy_connections(proxy) == PROXY_CONNECTIONS_MAX);
        run_for(50 * USEC_PER_MSEC);
        ck_assert(!extra->eof);
}
END_TEST

/* --- without a target: the fallback --- */

/* A fallback that holds what it is given, as hydrad's gRPC server does, and says so on it. */
static int hold_serve(int fd, void *userdata) {
        ck_assert_uint_lt(n_held, ELEMENTSOF(held));
        ck_assert_int_eq(send(fd, "unavailable", 11, MSG_NOSIGNAL | MSG_DONTWAIT), 11);
        held[n_held++] = fd;
        return 0;
}

static unsigned hold_count(void *userdata) {
        return n_held;
}

static const ProxyFallback holder = { .serve = hold_serve, .count = hold_count };

static void proxy_open_without_target(void) {
        HydraError err = {};

        ck_assert_msg(proxy_new(event, sock_path, 0660, (gid_t) -1, NULL, 0, &proxy, &err) == 0, "%s", err.message);
        ck_assert(!proxy_has_target(proxy));
}

START_TEST(test_no_target) {
        static const uint8_t ping[] = "ping";
        HydraError err = {};
        Client *c, *echo;
        uint64_t start;

        /* Nobody to answer: closed at once. */
        proxy_open_without_target();
        start = now_usec();
        c = client_new();
        RUN_UNTIL(c->eof);
        ck_assert_uint_lt(now_usec() - start, 2000 * USEC_PER_MSEC);
        ck_assert_uint_eq(c->in_len, 0);

        /* The fallback takes it, and keeps it: not one of the proxy's. */
        proxy_set_fallback(proxy, &holder);
        c = client_new();
        RUN_UNTIL(c->in_len == 11);
        ck_assert_mem_eq(c->in, "unavailable", 11);
        ck_assert_uint_eq(n_held, 1);
        ck_assert_uint_eq(proxy_connections(proxy), 0);

        /* A target: new connections are forwarded; the fallback's stays where it is. */
        server_start(&server, SERVER_ECHO);
        ck_assert_int_eq(proxy_set_target(proxy, "127.0.0.1", server.port, &err), 0);
        ck_assert(proxy_has_target(proxy));
        echo = client_new();
        echo->out = ping;
        echo->out_len = 4;
        RUN_UNTIL(echo->in_len == 4);
        ck_assert_mem_eq(echo->in, "ping", 4);
        ck_assert_uint_eq(proxy_connections(proxy), 1);
        ck_assert_uint_eq(n_held, 1);
        ck_assert(!c->eof);

        /* A bad target changes nothing. */
        ck_assert_int_eq(proxy_set_target(proxy, "localhost", 80, &err), -EINVAL);
        ck_assert(proxy_has_target(proxy));

        /* The target goes (the VM stopped): its connections close, the next one is the fallback's. */
        proxy_clear_target(proxy);
        ck_assert(!proxy_has_target(proxy));
        RUN_UNTIL(echo->eof);
        ck_assert_uint_eq(proxy_connections(proxy), 0);
        c = client_new();
        RUN_UNTIL(c->in_len == 11);
        ck_assert_uint_eq(n_held, 2);
        ck_assert_int_eq(atomic_load(&server.n_accepted), 1);
        proxy_clear_target(proxy); /* twice: nothing */
}
END_TEST

/* The fallback's connections count toward the cap: a client holding them all cannot take one more. */
START_TEST(test_fallback_cap) {
        Client *extra;

        proxy_open_without_target();
        proxy_set_fallback(proxy, &holder);
        for (size_t i = 0; i < PROXY_CONNECTIONS_MAX; i++)
                (void) client_new();
        RUN_UNTIL(n_held == PROXY_CONNECTIONS_MAX);

        extra = client_new();
        RUN_UNTIL(extra->eof);
        ck_assert_uint_eq(extra->in_len, 0);
        ck_assert_uint_eq(n_held, PROXY_CONNECTIONS_MAX);

        /* One of the fallback's goes: room for another. */
        n_held--;
        held[n_held] = safe_close(held[n_held]);
        extra = client_new();
        RUN_UNTIL(n_held == PROXY_CONNECTIONS_MAX);
        RUN_UNTIL(extra->in_len == 11);
}
END_TEST

static Suite *proxy_suite(void) {
        Suite *s = suite_create("proxy");
        TCase *tc;

        tc = tcase_create("proxy");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_parallel_echo);
        tcase_add_test(tc, test_half_close);
        tcase_add_test(tc, test_backpressure_to_target);
        tcase_add_test(tc, test_backpressure_to_client);
        tcase_add_test(tc, test_target_down);
        tcase_add_test(tc, test_socket_mode);
        tcase_add_test(tc, test_bad_arguments);
        tcase_add_test(tc, test_clients_close);
        tcase_add_test(tc, test_free_closes_everything);
        tcase_add_test(tc, test_connection_cap);
        tcase_add_test(tc, test_no_target);
        tcase_add_test(tc, test_fallback_cap);
        suite_add_tcase(s, tc);

        return s;
}

int main(void) {
        SRunner *sr = srunner_create(proxy_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
