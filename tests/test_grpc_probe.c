/* SPDX-License-Identifier: MIT */
/* The containerd probe: the VersionResponse decoder (pure), gRPC failures against listeners of the test (refused,
 * silent until the deadline, cancelled), that the loop keeps running meanwhile, and a real containerd (Debian's
 * package) started on a private root, state and sockets.
 *
 * containerd's own tcp_address serves only the services that register for TCP (in 1.6: CRI), so Version over it
 * is UNIMPLEMENTED. The guest exposes the whole API instead through csi-grpc-proxy (TCP 35000 -> containerd.sock,
 * see cloudinit.c); the test plays that part with a small TCP-to-unix forwarder of its own, and puts hydra's CRI
 * socket proxy (proxy.c) in front of it as hydrad does.
 *
 * The containerd cases are skipped, saying why, when containerd is not installed or we are not root. Set
 * GRPC_PROBE_TEST_DEBUG=1 for the probe's debug log. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>

#include "grpc_probe.h"
#include "log.h"
#include "macro.h"
#include "manager.h"
#include "process.h"
#include "proxy.h"

#define USEC_PER_MSEC 1000ULL
#define RUN_BOUND_USEC (30ULL * 1000000ULL) /* no wait in this file may take longer */

static uint64_t now_usec(void) {
        struct timespec ts;

        ck_assert_int_eq(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

/* --- the decoder --- */

static int parse(const char *bytes, size_t n, char *ret, size_t ret_size) {
        return grpc_probe_parse_version(bytes, n, ret, ret_size);
}
#define PARSE(lit, ret) parse(lit, sizeof(lit) - 1, ret, sizeof(ret))

START_TEST(test_parse_version) {
        char v[32];

        /* containerd's own answer: version, revision. */
        ck_assert_int_eq(PARSE("\x0a\x0a" "1.6.20~ds1" "\x12\x14" "1.6.20~ds1-1+deb12u3", v), 0);
        ck_assert_str_eq(v, "1.6.20~ds1");
        /* Revision first, unknown fields of every wire type around it. */
        ck_assert_int_eq(PARSE("\x12\x03" "abc" "\x18\x96\x01" "\x21" "12345678" "\x2d" "1234" "\x0a\x05" "v1.7."
                               "\x32\x00",
                               v),
                         0);
        ck_assert_str_eq(v, "v1.7.");
        /* The last occurrence wins. */
        ck_assert_int_eq(PARSE("\x0a\x01" "a" "\x0a\x01" "b", v), 0);
        ck_assert_str_eq(v, "b");
        /* Empty message, absent field. */
        ck_assert_int_eq(parse(NULL, 0, v, sizeof(v)), 0);
        ck_assert_str_eq(v, "");
        ck_assert_int_eq(PARSE("\x12\x01" "r", v), 0);
        ck_assert_str_eq(v, "");
        /* A long length varint. */
        ck_assert_int_eq(PARSE("\x0a\x82\x00" "ab", v), 0);
        ck_assert_str_eq(v, "ab");
}
END_TEST

START_TEST(test_parse_garbage) {
        char v[8];

        ck_assert_int_eq(PARSE("\x0a\x05" "abc", v), -EBADMSG);              /* truncated string */
        ck_assert_int_eq(PARSE("\x0a", v), -EBADMSG);                        /* no length */
        ck_assert_int_eq(PARSE("\x0a\x80", v), -EBADMSG);                    /* truncated varint */
        ck_assert_int_eq(PARSE("\x08\x01", v), -EBADMSG);                    /* field 1 as a varint */
        ck_assert_int_eq(PARSE("\x02\x00", v), -EBADMSG);                    /* field 0 */
        ck_assert_int_eq(PARSE("\x0b\x0c", v), -EBADMSG);                    /* a group */
        ck_assert_int_eq(PARSE("\x21" "123", v), -EBADMSG);                  /* truncated fixed64 */
        ck_assert_int_eq(PARSE("\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", v), -EBADMSG); /* 11-byte varint */
        ck_assert_int_eq(PARSE("\x0a\x03" "a\0b", v), -EBADMSG);             /* NUL in the version */
        ck_assert_int_eq(PARSE("\x0a\x08" "12345678", v), -ENOBUFS);         /* no room for the NUL */
        ck_assert_int_eq(PARSE("\x0a\x07" "1234567", v), 0);
        ck_assert_str_eq(v, "1234567");
        ck_assert_int_eq(parse("", 0, NULL, 8), -EINVAL);
}
END_TEST

/* --- probes on the loop --- */

typedef struct Result {
        GrpcProbe *probe;
        unsigned n_done;
        bool ready;
        char detail[512];
        uint64_t at;
        bool cancel_in_callback;
} Result;

static sd_event *event;
static unsigned ticks;
static sd_event_source *ticker;

static int on_tick(sd_event_source *s, uint64_t usec, void *userdata) {
        ticks++;
        (void) sd_event_source_set_time_relative(s, 10 * USEC_PER_MSEC);
        (void) sd_event_source_set_enabled(s, SD_EVENT_ON);
        return 0;
}

static void setup(void) {
        ck_assert_int_ge(sd_event_new(&event), 0);
        if (getenv("GRPC_PROBE_TEST_DEBUG"))
                log_set_max_level(LOG_DEBUG);
        /* A loop that waits for the probe would starve this. */
        ticks = 0;
        ck_assert_int_ge(sd_event_add_time_relative(event, &ticker, CLOCK_MONOTONIC, 10 * USEC_PER_MSEC, 0, on_tick,
                                                    NULL),
                         0);
}

static void teardown(void) {
        ticker = sd_event_source_disable_unref(ticker);
        event = sd_event_unref(event);
}

static void on_probe_done(GrpcProbe *p, bool ready, const char *detail, void *userdata) {
        Result *res = userdata;

        ck_assert_ptr_eq(p, res->probe);
        res->n_done++;
        res->ready = ready;
        res->at = now_usec();
        ck_assert_ptr_nonnull(detail);
        (void) snprintf(res->detail, sizeof(res->detail), "%s", detail);
        if (res->cancel_in_callback)
                ck_assert_ptr_null(grpc_probe_cancel(p)); /* does nothing: freed when we return */
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

static uint64_t probe(Result *res, const char *target, uint64_t timeout_usec) {
        uint64_t start = now_usec();

        ck_assert_int_eq(grpc_probe_start(event, target, timeout_usec, on_probe_done, res, &res->probe), 0);
        ck_assert_ptr_nonnull(res->probe);
        return start;
}

/* A TCP socket on 127.0.0.1; backlog < 0: bound only, so that connecting is refused. */
static int tcp_socket(int backlog, uint16_t *ret_port) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sa);
        int fd;

        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        ck_assert_int_eq(getsockname(fd, (struct sockaddr *) &sa, &len), 0);
        if (backlog >= 0)
                ck_assert_int_eq(listen(fd, backlog), 0);
        *ret_port = ntohs(sa.sin_port);
        return fd;
}

START_TEST(test_refused) {
        _cleanup_close_ int fd = -EBADF;
        Result res = { .cancel_in_callback = true };
        char target[64];
        uint16_t port;
        uint64_t start;

        fd = tcp_socket(-1, &port);
        (void) snprintf(target, sizeof(target), "127.0.0.1:%u", port);
        start = probe(&res, target, 5000 * USEC_PER_MSEC);
        run_until_done(&res);
        ck_assert(!res.ready);
        ck_assert_msg(strncmp(res.detail, "UNAVAILABLE: ", 13) == 0, "detail: %s", res.detail);
        ck_assert_uint_lt(res.at - start, 2000 * USEC_PER_MSEC);
        run_for(50 * USEC_PER_MSEC);
        ck_assert_uint_eq(res.n_done, 1);
}
END_TEST

/* A peer that accepts TCP and never speaks HTTP/2, like QEMU's forward to a guest whose containerd is not up. */
START_TEST(test_deadline) {
        _cleanup_close_ int fd = -EBADF;
        Result res = {};
        char target[64];
        uint16_t port;
        uint64_t start;
        unsigned ticks_before;

        fd = tcp_socket(16, &port);
        (void) snprintf(target, sizeof(target), "127.0.0.1:%u", port);
        ticks_before = ticks;
        start = probe(&res, target, 500 * USEC_PER_MSEC);
        run_until_done(&res);
        ck_assert(!res.ready);
        ck_assert_msg(strncmp(res.detail, "DEADLINE_EXCEEDED: ", 19) == 0, "detail: %s", res.detail);
        ck_assert_uint_ge(res.at - start, 450 * USEC_PER_MSEC);
        ck_assert_uint_lt(res.at - start, 3000 * USEC_PER_MSEC);
        /* The loop ran all along: ~50 ticks of 10 ms in 500 ms (a loop that waited would see one). */
        ck_assert_uint_ge(ticks - ticks_before, 10);
}
END_TEST

START_TEST(test_cancel) {
        _cleanup_close_ int fd = -EBADF;
        Result res = {};
        char target[64];
        uint16_t port;
        uint64_t start;

        fd = tcp_socket(16, &port);
        (void) snprintf(target, sizeof(target), "127.0.0.1:%u", port);
        probe(&res, target, 10000 * USEC_PER_MSEC);
        run_for(100 * USEC_PER_MSEC);
        start = now_usec();
        ck_assert_ptr_null(grpc_probe_cancel(res.probe));
        ck_assert_uint_lt(now_usec() - start, 1000 * USEC_PER_MSEC);
        run_for(200 * USEC_PER_MSEC);
        ck_assert_uint_eq(res.n_done, 0);

        /* At once, before the thread got anywhere. */
        res = (Result) {};
        probe(&res, target, 10000 * USEC_PER_MSEC);
        ck_assert_ptr_null(grpc_probe_cancel(res.probe));
        run_for(100 * USEC_PER_MSEC);
        ck_assert_uint_eq(res.n_done, 0);

        ck_assert_ptr_null(grpc_probe_cancel(NULL));
        ck_assert_int_eq(grpc_probe_start(event, "", 1, on_probe_done, &res, NULL), -EINVAL);
        ck_assert_int_eq(grpc_probe_start(event, target, 1, NULL, &res, NULL), -EINVAL);
}
END_TEST

/* --- a real containerd --- */

static char tmpdir[] = "/tmp/test-grpc-probe-XXXXXX";
static char sock_path[PATH_MAX];
static uint16_t containerd_port;
static pid_t containerd_pid;
static char server_version[128];

static uint16_t free_port(void) {
        uint16_t port;

        safe_close(tcp_socket(-1, &port));
        return port;
}

static bool tcp_connects(uint16_t port) {
        struct sockaddr_in sa = {
                .sin_family = AF_INET,
                .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                .sin_port = htons(port),
        };
        _cleanup_close_ int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        return fd >= 0 && connect(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0;
}

/* What `ctr version` prints as the server's version: the reference the probe must agree with. */
static void read_server_version(void) {
        _cleanup_free_ char *cmd = NULL;
        char line[256];
        bool server = false;
        FILE *f;

        ck_assert_int_ge(asprintf(&cmd, "ctr --address '%s' version 2>&1", sock_path), 0);
        f = popen(cmd, "r");
        ck_assert_ptr_nonnull(f);
        while (fgets(line, sizeof(line), f)) {
                char *v;

                if (strncmp(line, "Server:", 7) == 0)
                        server = true;
                v = strstr(line, "Version:");
                if (server && v && !server_version[0]) {
                        v += strlen("Version:");
                        v += strspn(v, " \t");
                        v[strcspn(v, "\r\n")] = '\0';
                        (void) snprintf(server_version, sizeof(server_version), "%s", v);
                }
        }
        ck_assert_int_eq(pclose(f), 0);
        ck_assert_msg(server_version[0], "ctr version printed no server version");
}

static void containerd_start(void) {
        _cleanup_free_ char *config = NULL, *log_path = NULL;
        uint64_t deadline;
        FILE *f;

        ck_assert_ptr_nonnull(mkdtemp(tmpdir));
        (void) snprintf(sock_path, sizeof(sock_path), "%s/c.sock", tmpdir);
        containerd_port = free_port();

        /* Everything under tmpdir; the plugins that need more than that (CRI, the /opt installer, snapshotters for
         * other filesystems) off, which also makes it start in tens of milliseconds. */
        ck_assert_int_ge(asprintf(&config, "%s/config.toml", tmpdir), 0);
        f = fopen(config, "we");
        ck_assert_ptr_nonnull(f);
        fprintf(f,
                "version = 2\n"
                "root = \"%1$s/root\"\n"
                "state = \"%1$s/state\"\n"
                "disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.internal.v1.opt\",\n"
                "  \"io.containerd.snapshotter.v1.aufs\", \"io.containerd.snapshotter.v1.btrfs\",\n"
                "  \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\"]\n"
                "[grpc]\n"
                "  address = \"%2$s\"\n"
                "  tcp_address = \"127.0.0.1:%3$u\"\n"
                "[ttrpc]\n"
                "  address = \"%2$s.ttrpc\"\n"
                "[debug]\n"
                "  address = \"\"\n"
                "[metrics]\n"
                "  address = \"\"\n",
                tmpdir, sock_path, (unsigned) containerd_port);
        ck_assert_int_eq(fclose(f), 0);

        ck_assert_int_ge(asprintf(&log_path, "%s/containerd.log", tmpdir), 0);
        containerd_pid = fork();
        ck_assert_int_ge(containerd_pid, 0);
        if (containerd_pid == 0) {
                int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

                /* Not outliving the test, whatever happens to it. */
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (fd >= 0) {
                        (void) dup2(fd, STDOUT_FILENO);
                        (void) dup2(fd, STDERR_FILENO);
                }
                execlp("containerd", "containerd", "--config", config, (char *) NULL);
                _exit(127);
        }

        deadline = now_usec() + 20ULL * 1000000ULL;
        for (;;) {
                struct timespec ts = { .tv_nsec = 20 * 1000 * 1000 };
                struct stat st;
                int status;

                if (stat(sock_path, &st) == 0 && tcp_connects(containerd_port))
                        break;
                ck_assert_msg(waitpid(containerd_pid, &status, WNOHANG) == 0, "containerd exited, see %s", log_path);
                ck_assert_msg(now_usec() < deadline, "containerd did not come up, see %s", log_path);
                (void) nanosleep(&ts, NULL);
        }
        read_server_version();
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

static void containerd_stop(void) {
        if (containerd_pid > 0) {
                uint64_t deadline = now_usec() + 10ULL * 1000000ULL;
                int status;

                /* Only the process we started. */
                (void) kill(containerd_pid, SIGTERM);
                while (waitpid(containerd_pid, &status, WNOHANG) == 0) {
                        struct timespec ts = { .tv_nsec = 20 * 1000 * 1000 };

                        if (now_usec() > deadline) {
                                (void) kill(containerd_pid, SIGKILL);
                                (void) waitpid(containerd_pid, &status, 0);
                                break;
                        }
                        (void) nanosleep(&ts, NULL);
                }
                containerd_pid = 0;
        }
        (void) nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* --- csi-grpc-proxy's part: TCP on 127.0.0.1 to containerd's unix socket, a thread per connection --- */

static int fwd_fd = -EBADF;
static uint16_t fwd_port;
static pthread_t fwd_thread;

static bool write_all(int fd, const char *p, size_t n) {
        while (n > 0) {
                ssize_t k = send(fd, p, n, MSG_NOSIGNAL);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return false;
                p += k;
                n -= (size_t) k;
        }
        return true;
}

static void *fwd_conn_thread(void *userdata) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fds[2] = { (int) (intptr_t) userdata, -EBADF };
        bool eof[2] = {};

        strcpy(sa.sun_path, sock_path);
        fds[1] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fds[1] < 0 || connect(fds[1], (struct sockaddr *) &sa, sizeof(sa)) < 0)
                goto out;

        while (!eof[0] || !eof[1]) {
                /* A side at EOF is left out (fd -1): its hangup would wake poll() for ever. */
                struct pollfd p[2] = {
                        { .fd = eof[0] ? -1 : fds[0], .events = POLLIN },
                        { .fd = eof[1] ? -1 : fds[1], .events = POLLIN },
                };

                if (poll(p, 2, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        break;
                }
                for (int i = 0; i < 2; i++) {
                        char buf[16384];
                        ssize_t n;

                        if (eof[i] || !p[i].revents)
                                continue;
                        n = recv(fds[i], buf, sizeof(buf), 0);
                        if (n < 0 && errno == EINTR)
                                continue;
                        if (n <= 0) {
                                eof[i] = true;
                                (void) shutdown(fds[1 - i], SHUT_WR);
                                continue;
                        }
                        if (!write_all(fds[1 - i], buf, (size_t) n))
                                goto out;
                }
        }
out:
        safe_close(fds[0]);
        safe_close(fds[1]);
        return NULL;
}

static void *fwd_accept_thread(void *userdata) {
        for (;;) {
                int fd = accept4(fwd_fd, NULL, NULL, SOCK_CLOEXEC);
                pthread_t t;

                if (fd < 0) {
                        if (errno == EINTR || errno == ECONNABORTED)
                                continue;
                        return NULL; /* shutdown() by fwd_stop() */
                }
                if (pthread_create(&t, NULL, fwd_conn_thread, (void *) (intptr_t) fd) != 0) {
                        close(fd);
                        continue;
                }
                (void) pthread_detach(t);
        }
}

static void fwd_start(void) {
        fwd_fd = tcp_socket(64, &fwd_port);
        ck_assert_int_eq(pthread_create(&fwd_thread, NULL, fwd_accept_thread, NULL), 0);
}

static void fwd_stop(void) {
        if (fwd_fd < 0)
                return;
        (void) shutdown(fwd_fd, SHUT_RDWR);
        ck_assert_int_eq(pthread_join(fwd_thread, NULL), 0);
        fwd_fd = safe_close(fwd_fd);
}

/* Threads do not survive the fork of each test: the forwarder starts in the test's process. */
static void setup_containerd(void) {
        setup();
        fwd_start();
}

static void teardown_containerd(void) {
        fwd_stop();
        teardown();
}

/* The guest's way: TCP through csi-grpc-proxy. */
START_TEST(test_containerd_forward) {
        Result res = {};
        char target[64];

        (void) snprintf(target, sizeof(target), "127.0.0.1:%u", fwd_port);
        probe(&res, target, 5000 * USEC_PER_MSEC);
        run_until_done(&res);
        ck_assert_msg(res.ready, "not ready: %s", res.detail);
        ck_assert_str_eq(res.detail, server_version);
}
END_TEST

/* hydrad's CRI socket in front of the forward, as a kubelet on the host sees it. */
START_TEST(test_containerd_through_proxy) {
        _cleanup_(proxy_freep) Proxy *proxy = NULL;
        _cleanup_free_ char *path = NULL, *target = NULL;
        HydraError err = {};

        ck_assert_int_ge(asprintf(&path, "%s/cri-%d.sock", tmpdir, (int) getpid()), 0);
        ck_assert_msg(proxy_new(event, path, 0660, (gid_t) -1, "127.0.0.1", fwd_port, &proxy, &err) == 0, "%s",
                      err.message);
        ck_assert_int_ge(asprintf(&target, "unix:%s", path), 0);

        for (int i = 0; i < 3; i++) {
                Result res = {};

                probe(&res, target, 5000 * USEC_PER_MSEC);
                run_until_done(&res);
                ck_assert_msg(res.ready, "not ready: %s", res.detail);
                ck_assert_str_eq(res.detail, server_version);
        }
        /* Each probe's channel is gone, and with it its connection. */
        for (uint64_t deadline = now_usec() + RUN_BOUND_USEC; proxy_connections(proxy) > 0;) {
                ck_assert_msg(now_usec() < deadline, "proxy connections left open");
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
        }
}
END_TEST

/* containerd's own tcp_address: the gRPC server answers, but Version is not served there (see the top). */
START_TEST(test_containerd_tcp_address) {
        Result res = {};
        char target[64];

        (void) snprintf(target, sizeof(target), "127.0.0.1:%u", containerd_port);
        probe(&res, target, 5000 * USEC_PER_MSEC);
        run_until_done(&res);
        if (res.ready)
                ck_assert_str_eq(res.detail, server_version);
        else
                ck_assert_msg(strncmp(res.detail, "UNIMPLEMENTED: ", 15) == 0, "detail: %s", res.detail);
}
END_TEST

START_TEST(test_containerd_unix) {
        Result res = {};
        _cleanup_free_ char *target = NULL;

        ck_assert_int_ge(asprintf(&target, "unix:%s", sock_path), 0);
        probe(&res, target, 5000 * USEC_PER_MSEC);
        run_until_done(&res);
        ck_assert_msg(res.ready, "not ready: %s", res.detail);
        ck_assert_str_eq(res.detail, server_version);
}
END_TEST

/* Through manager.h's GrpcProber, as vm_services.c calls it; twice, the second while the first runs. */
typedef struct ProberResult {
        void *probe;
        unsigned n_done;
        bool ready;
        char detail[512];
} ProberResult;

static void on_prober_done(void *p, bool ready, const char *detail, void *userdata) {
        ProberResult *res = userdata;

        ck_assert_ptr_eq(p, res->probe);
        res->n_done++;
        res->ready = ready;
        (void) snprintf(res->detail, sizeof(res->detail), "%s", detail);
}

START_TEST(test_containerd_prober) {
        const GrpcProber *prober = &grpc_probe_prober;
        ProberResult a = {}, b = {}, c = {};
        char target[64];
        uint64_t deadline = now_usec() + RUN_BOUND_USEC;

        (void) snprintf(target, sizeof(target), "127.0.0.1:%u", fwd_port);
        ck_assert_int_eq(prober->start(event, target, 5000 * USEC_PER_MSEC, on_prober_done, &a, &a.probe), 0);
        ck_assert_int_eq(prober->start(event, target, 5000 * USEC_PER_MSEC, on_prober_done, &b, &b.probe), 0);
        ck_assert_int_eq(prober->start(event, target, 5000 * USEC_PER_MSEC, on_prober_done, &c, &c.probe), 0);
        prober->cancel(c.probe);
        while (a.n_done == 0 || b.n_done == 0) {
                ck_assert_msg(now_usec() < deadline, "timed out waiting for the probes");
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
        }
        ck_assert_msg(a.ready && b.ready, "not ready: %s / %s", a.detail, b.detail);
        ck_assert_str_eq(a.detail, server_version);
        ck_assert_str_eq(b.detail, server_version);
        run_for(50 * USEC_PER_MSEC);
        ck_assert_uint_eq(a.n_done + b.n_done + c.n_done, 2);
}
END_TEST

/* containerd gone: not ready, quickly. */
START_TEST(test_containerd_gone) {
        Result res = {};
        char target[64];
        uint64_t start;

        (void) snprintf(target, sizeof(target), "127.0.0.1:%u", free_port());
        start = probe(&res, target, 5000 * USEC_PER_MSEC);
        run_until_done(&res);
        ck_assert(!res.ready);
        ck_assert_msg(strncmp(res.detail, "UNAVAILABLE: ", 13) == 0, "detail: %s", res.detail);
        ck_assert_uint_lt(res.at - start, 2000 * USEC_PER_MSEC);
}
END_TEST

static const char *containerd_unavailable(void) {
        _cleanup_free_ char *path = NULL;

        if (process_find_binary("containerd", &path) < 0)
                return "containerd is not installed (Debian package 'containerd')";
        free(path);
        path = NULL;
        if (process_find_binary("ctr", &path) < 0)
                return "ctr is not installed (Debian package 'containerd')";
        if (geteuid() != 0)
                return "containerd needs root";
        return NULL;
}

static bool containerd_skipped;

static Suite *grpc_probe_suite(void) {
        Suite *s = suite_create("grpc-probe");
        const char *why;
        TCase *tc;

        tc = tcase_create("decode");
        tcase_add_test(tc, test_parse_version);
        tcase_add_test(tc, test_parse_garbage);
        suite_add_tcase(s, tc);

        tc = tcase_create("failures");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_refused);
        tcase_add_test(tc, test_deadline);
        tcase_add_test(tc, test_cancel);
        suite_add_tcase(s, tc);

        why = containerd_unavailable();
        if (why) {
                fprintf(stderr, "test_grpc_probe: skipping the containerd cases: %s\n", why);
                containerd_skipped = true;
                return s;
        }
        tc = tcase_create("containerd");
        /* One containerd for the case, started in the runner's process; each test forks from there. */
        tcase_add_unchecked_fixture(tc, containerd_start, containerd_stop);
        tcase_add_checked_fixture(tc, setup_containerd, teardown_containerd);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_containerd_unix);
        tcase_add_test(tc, test_containerd_forward);
        tcase_add_test(tc, test_containerd_through_proxy);
        tcase_add_test(tc, test_containerd_tcp_address);
        tcase_add_test(tc, test_containerd_prober);
        tcase_add_test(tc, test_containerd_gone);
        suite_add_tcase(s, tc);

        return s;
}

int main(void) {
        SRunner *sr = srunner_create(grpc_probe_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        if (failed > 0)
                return EXIT_FAILURE;
        return containerd_skipped ? 77 : EXIT_SUCCESS; /* CTest's SKIP_RETURN_CODE: "skipped", not "passed" */
}
