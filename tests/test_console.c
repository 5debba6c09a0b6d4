/* SPDX-License-Identifier: MIT */
/* The serial console relay with real unix sockets: the test plays QEMU (a listening socket of its own, the way
 * QEMU's chardev listens) and the people who attach, and drives a private sd_event between its moves. Set
 * CONSOLE_TEST_DEBUG=1 to see the relay's debug log. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>

#include "console.h"
#include "log.h"
#include "macro.h"

#define USEC_PER_MSEC 1000ULL
#define RUN_BOUND_USEC (20ULL * 1000000ULL) /* no wait in this file may take longer */

/* A socket the test holds, and everything read from it. */
typedef struct Peer {
        int fd;
        char *buf;
        size_t len, allocated;
        bool eof;
} Peer;

static sd_event *event;
static char tmpdir[] = "/tmp/test-console-XXXXXX";
static char log_path[PATH_MAX], listen_path[PATH_MAX], qemu_path[PATH_MAX];
static Console *console;
static Peer seen;            /* what on_data got */
static unsigned n_on_data;
static bool free_in_on_data;
static Peer *peers[32];      /* drained on every loop iteration */
static size_t n_peers;

static uint64_t now_usec(void) {
        struct timespec ts;

        ck_assert_int_eq(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

/* --- peers --- */

static void buf_append(Peer *p, const void *data, size_t n) {
        if (p->allocated - p->len < n) {
                p->allocated = p->len + n + 65536;
                p->buf = realloc(p->buf, p->allocated);
                ck_assert_ptr_nonnull(p->buf);
        }
        memcpy(p->buf + p->len, data, n);
        p->len += n;
}

/* capacity: allocated up front, so that a test measuring memory sees only the relay's. */
static Peer *peer_new(int fd, size_t capacity) {
        Peer *p = calloc(1, sizeof(*p));

        ck_assert_ptr_nonnull(p);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
        p->fd = fd;
        p->allocated = capacity ?: 65536;
        p->buf = malloc(p->allocated);
        ck_assert_ptr_nonnull(p->buf);
        ck_assert_uint_lt(n_peers, ELEMENTSOF(peers));
        peers[n_peers++] = p;
        return p;
}

static void peer_free(Peer *p) {
        for (size_t i = 0; i < n_peers; i++)
                if (peers[i] == p) {
                        peers[i] = peers[--n_peers];
                        break;
                }
        safe_close(p->fd);
        free(p->buf);
        free(p);
}

/* Reads what is there without waiting; notes EOF. */
static void peer_drain(Peer *p) {
        for (;;) {
                char buf[65536];
                ssize_t n;

                if (p->eof)
                        return;
                n = recv(p->fd, buf, sizeof(buf), MSG_DONTWAIT);
                if (n < 0) {
                        if (errno == ECONNRESET) {
                                p->eof = true;
                                return;
                        }
                        ck_assert_int_eq(errno, EAGAIN);
                        return;
                }
                if (n == 0) {
                        p->eof = true;
                        return;
                }
                buf_append(p, buf, (size_t) n);
        }
}

static void peer_send(Peer *p, const void *data, size_t n) {
        ck_assert_int_eq(send(p->fd, data, n, MSG_NOSIGNAL), (ssize_t) n);
}

static void peer_send_str(Peer *p, const char *s) {
        peer_send(p, s, strlen(s));
}

static bool peer_has(const Peer *p, const char *s) {
        return p->len == strlen(s) && memcmp(p->buf, s, p->len) == 0;
}

/* --- the loop --- */

static void step(void) {
        ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
        for (size_t i = 0; i < n_peers; i++)
                peer_drain(peers[i]);
}

#define RUN_UNTIL(cond)                                                                           \
        do {                                                                                      \
                uint64_t _deadline = now_usec() + RUN_BOUND_USEC;                                 \
                while (!(cond)) {                                                                 \
                        ck_assert_msg(now_usec() < _deadline, "timed out waiting for: " #cond);   \
                        step();                                                                   \
                }                                                                                 \
        } while (0)

/* Until the loop has nothing left to do. */
static void run_until_idle(void) {
        uint64_t deadline = now_usec() + RUN_BOUND_USEC;
        int r;

        do {
                ck_assert_msg(now_usec() < deadline, "the loop never went idle");
                r = sd_event_run(event, 0);
                ck_assert_int_ge(r, 0);
        } while (r > 0);
        for (size_t i = 0; i < n_peers; i++)
                peer_drain(peers[i]);
}

/* Sends size bytes from p, running the loop whenever its socket is full, then runs until on_data has them all. */
static void pump(Peer *p, const char *data, size_t size) {
        uint64_t deadline = now_usec() + RUN_BOUND_USEC;
        size_t target = seen.len + size, done = 0;

        while (done < size) {
                ssize_t n = send(p->fd, data + done, size - done, MSG_NOSIGNAL | MSG_DONTWAIT);

                if (n < 0) {
                        ck_assert_int_eq(errno, EAGAIN);
                        ck_assert_msg(now_usec() < deadline, "could not send");
                        step();
                        continue;
                }
                done += (size_t) n;
        }
        RUN_UNTIL(seen.len >= target);
}

/* Binary, every byte value, no short period. */
static char *make_data(size_t size, unsigned seed) {
        char *d = malloc(size);

        ck_assert_ptr_nonnull(d);
        for (size_t i = 0; i < size; i++)
                d[i] = (char) ((i * 131 + (i >> 9) * 7 + seed) & 0xff);
        return d;
}

static size_t file_size(const char *path) {
        struct stat st;

        ck_assert_msg(stat(path, &st) == 0, "stat '%s': %s", path, strerror(errno));
        return (size_t) st.st_size;
}

/* Appends the file's contents to p. */
static void read_file_into(const char *path, Peer *p) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        char buf[65536];
        ssize_t n;

        ck_assert_msg(fd >= 0, "open '%s': %s", path, strerror(errno));
        while ((n = read(fd, buf, sizeof(buf))) > 0)
                buf_append(p, buf, (size_t) n);
        ck_assert_int_eq(n, 0);
}

/* --- fake QEMU and attached clients --- */

static int listen_at(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd;

        ck_assert_uint_lt(strlen(path), sizeof(sa.sun_path));
        strcpy(sa.sun_path, path);
        (void) unlink(path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        ck_assert_int_eq(listen(fd, 1), 0);
        return fd;
}

/* Has the console connect to a fresh fake QEMU at path; returns QEMU's end. */
static Peer *qemu_start(const char *path) {
        _cleanup_close_ int lfd = listen_at(path);
        HydraError err = {};
        int fd;

        ck_assert_int_eq(console_connect(console, path, &err), 0);
        ck_assert(console_is_connected(console));
        /* The connection already waits in the backlog: this accept does not block. */
        fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        return peer_new(fd, 0);
}

static Peer *client_attach_sized(size_t capacity) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        unsigned before = console_get_n_clients(console);
        int fd;

        strcpy(sa.sun_path, listen_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        RUN_UNTIL(console_get_n_clients(console) == before + 1);
        return peer_new(fd, capacity);
}

static Peer *client_attach(void) {
        return client_attach_sized(0);
}

static void on_data(Console *c, const void *data, size_t size, void *userdata) {
        ck_assert_ptr_eq(c, console);
        ck_assert_ptr_eq(userdata, &seen);
        ck_assert_uint_gt(size, 0);
        n_on_data++;
        buf_append(&seen, data, size);
        if (free_in_on_data)
                console = console_free(console);
}

static ConsoleConfig config(void) {
        return (ConsoleConfig) {
                .log_path = log_path,
                .listen_path = listen_path,
                .listen_mode = 0660,
                .listen_gid = (gid_t) -1,
                .on_data = on_data,
                .userdata = &seen,
        };
}

static void console_start(const ConsoleConfig *cfg) {
        HydraError err = {};

        ck_assert_msg(console_new(event, cfg, &console, &err) == 0, "console_new: %s", err.message);
        ck_assert_ptr_nonnull(console);
        ck_assert(!console_is_connected(console));
        ck_assert_uint_eq(console_get_n_clients(console), 0);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void) remove(path);
        return 0;
}

static void setup(void) {
        if (getenv("CONSOLE_TEST_DEBUG"))
                log_set_max_level(LOG_DEBUG);
        ck_assert_int_ge(sd_event_new(&event), 0);
        strcpy(tmpdir, "/tmp/test-console-XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(tmpdir));
        (void) snprintf(log_path, sizeof(log_path), "%s/console.log", tmpdir);
        (void) snprintf(listen_path, sizeof(listen_path), "%s/console.sock", tmpdir);
        (void) snprintf(qemu_path, sizeof(qemu_path), "%s/qemu-console.sock", tmpdir);
        seen = (Peer) { .fd = -EBADF };
        n_on_data = 0;
        free_in_on_data = false;
}

static void teardown(void) {
        console = console_free(console);
        while (n_peers > 0)
                peer_free(peers[0]);
        free(seen.buf);
        seen = (Peer) { .fd = -EBADF };
        event = sd_event_unref(event);
        (void) nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* --- tests --- */

START_TEST(test_relay) {
        ConsoleConfig cfg = config();
        _cleanup_free_ char *big = make_data(300 * 1024, 1);
        Peer *qemu, *a, *b, *expect;
        struct stat st;

        /* Only root may give the socket to a group it is not in. */
        cfg.listen_gid = geteuid() == 0 ? 4242 : getegid();
        console_start(&cfg);
        ck_assert_int_eq(stat(listen_path, &st), 0);
        ck_assert(S_ISSOCK(st.st_mode));
        ck_assert_uint_eq(st.st_mode & 0777, 0660);
        ck_assert_uint_eq(st.st_gid, cfg.listen_gid);
        ck_assert_int_eq(stat(log_path, &st), 0);
        ck_assert_uint_eq(st.st_mode & 0777, 0640);

        qemu = qemu_start(qemu_path);
        a = client_attach();
        b = client_attach();

        /* Guest output reaches the log, on_data and both clients. */
        pump(qemu, "Booting Linux\r\n", 15);
        RUN_UNTIL(a->len == 15 && b->len == 15);
        ck_assert(peer_has(&seen, "Booting Linux\r\n"));
        ck_assert(peer_has(a, "Booting Linux\r\n"));
        ck_assert(peer_has(b, "Booting Linux\r\n"));

        /* What clients type reaches the guest, in the order typed. */
        peer_send_str(a, "root\n");
        RUN_UNTIL(qemu->len == 5);
        peer_send_str(b, "uname -a\n");
        RUN_UNTIL(qemu->len == 14);
        ck_assert(peer_has(qemu, "root\nuname -a\n"));

        /* A client that shut down its sending side still gets output. */
        ck_assert_int_eq(shutdown(b->fd, SHUT_WR), 0);
        run_until_idle();
        ck_assert_uint_eq(console_get_n_clients(console), 2);

        /* Much more than one read: nothing lost, nothing reordered, binary clean. */
        pump(qemu, big, 300 * 1024);
        RUN_UNTIL(a->len == 15 + 300 * 1024 && b->len == 15 + 300 * 1024);
        ck_assert_uint_gt(n_on_data, 2);
        ck_assert_uint_eq(seen.len, 15 + 300 * 1024);
        ck_assert_mem_eq(seen.buf + 15, big, 300 * 1024);
        ck_assert_mem_eq(a->buf + 15, big, 300 * 1024);
        ck_assert_mem_eq(b->buf + 15, big, 300 * 1024);

        /* The log holds exactly the same (below the default 1 MiB: not rotated). */
        expect = &(Peer) {};
        read_file_into(log_path, expect);
        ck_assert_uint_eq(expect->len, seen.len);
        ck_assert_mem_eq(expect->buf, seen.buf, seen.len);
        free(expect->buf);

        /* Closing a client detaches it; the other stays. */
        peer_free(a);
        RUN_UNTIL(console_get_n_clients(console) == 1);
        pump(qemu, "login: ", 7);
        RUN_UNTIL(b->len == 15 + 300 * 1024 + 7);
        ck_assert_mem_eq(b->buf + b->len - 7, "login: ", 7);
}
END_TEST

START_TEST(test_existing_log_appended) {
        ConsoleConfig cfg = config();
        _cleanup_close_ int fd = open(log_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        Peer *qemu, content = {};

        ck_assert_int_eq(write(fd, "old boot\n", 9), 9);
        cfg.listen_path = NULL; /* no socket: only the log */
        console_start(&cfg);
        qemu = qemu_start(qemu_path);
        pump(qemu, "new boot\n", 9);

        read_file_into(log_path, &content);
        ck_assert(peer_has(&content, "old boot\nnew boot\n"));
        free(content.buf);
}
END_TEST

START_TEST(test_rotation) {
        static const size_t chunks[] = { 1, 37, 99, 100, 101, 250, 3, 60, 386 }; /* 1037 bytes */
        _cleanup_free_ char *data = make_data(1037, 2), *stream = NULL;
        _cleanup_close_ int fd = open(log_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        ConsoleConfig cfg = config();
        char path[PATH_MAX + 16];
        Peer *qemu, content = {};
        size_t off = 0;

        /* 60 bytes from an earlier run: fstat at open counts them, the first rotation comes 40 bytes in. */
        ck_assert_int_eq(write(fd, "................................................................", 60), 60);
        stream = malloc(60 + 1037);
        ck_assert_ptr_nonnull(stream);
        memset(stream, '.', 60);
        memcpy(stream + 60, data, 1037);

        cfg.log_max_bytes = 100;
        cfg.log_keep = 2;
        console_start(&cfg);
        qemu = qemu_start(qemu_path);
        for (size_t i = 0; i < ELEMENTSOF(chunks); i++) {
                pump(qemu, data + off, chunks[i]);
                off += chunks[i];
                /* Bounded after every write, not only at the end. */
                ck_assert_uint_le(file_size(log_path), 100);
        }
        ck_assert_uint_eq(off, 1037);

        /* Exactly console.log, .1, .2: full files rotated away, the current one holds the rest. */
        ck_assert_uint_eq(file_size(log_path), (60 + 1037) % 100);
        (void) snprintf(path, sizeof(path), "%s.1", log_path);
        ck_assert_uint_eq(file_size(path), 100);
        (void) snprintf(path, sizeof(path), "%s.2", log_path);
        ck_assert_uint_eq(file_size(path), 100);
        (void) snprintf(path, sizeof(path), "%s.3", log_path);
        ck_assert_int_lt(access(path, F_OK), 0);
        ck_assert_int_eq(errno, ENOENT);

        /* .2 + .1 + console.log is the tail of everything, in order. */
        (void) snprintf(path, sizeof(path), "%s.2", log_path);
        read_file_into(path, &content);
        (void) snprintf(path, sizeof(path), "%s.1", log_path);
        read_file_into(path, &content);
        read_file_into(log_path, &content);
        ck_assert_uint_eq(content.len, 297);
        ck_assert_mem_eq(content.buf, stream + 60 + 1037 - 297, 297);
        free(content.buf);

        /* on_data saw everything, rotation or not. */
        ck_assert_uint_eq(seen.len, 1037);
        ck_assert_mem_eq(seen.buf, data, 1037);
}
END_TEST

START_TEST(test_slow_client_dropped) {
        const size_t size = 4U * 1024U * 1024U;
        _cleanup_free_ char *data = make_data(size, 3);
        ConsoleConfig cfg = config();
        Peer *qemu, *stalled, *reader;
        struct mallinfo2 mi;
        size_t base, peak = 0, off = 0;
        uint64_t deadline;

        cfg.log_max_bytes = 8U * 1024U * 1024U;
        console_start(&cfg);
        qemu = qemu_start(qemu_path);
        reader = client_attach_sized(size + 65536);
        stalled = client_attach_sized(size + 65536);
        /* The test stalls it: step() must not read it. */
        n_peers--;
        ck_assert_ptr_eq(peers[n_peers], stalled);
        free(seen.buf);
        seen = (Peer) { .fd = -EBADF, .buf = malloc(size + 65536), .allocated = size + 65536 };
        ck_assert_ptr_nonnull(seen.buf);

        mi = mallinfo2();
        base = mi.uordblks + mi.hblkhd;

        /* Pump in slices, measuring the heap as the relay works. */
        deadline = now_usec() + RUN_BOUND_USEC;
        while (reader->len < size) {
                ck_assert_msg(now_usec() < deadline, "the reader got %zu of %zu bytes", reader->len, size);
                if (off < size) {
                        ssize_t n = send(qemu->fd, data + off, size - off, MSG_NOSIGNAL | MSG_DONTWAIT);
                        if (n > 0)
                                off += (size_t) n;
                        else
                                ck_assert_int_eq(errno, EAGAIN);
                }
                step();
                mi = mallinfo2();
                if (mi.uordblks + mi.hblkhd > base + peak)
                        peak = mi.uordblks + mi.hblkhd - base;
        }

        /* The reader got every byte; the stalled client was dropped; the relay never held much. */
        ck_assert_mem_eq(reader->buf, data, size);
        ck_assert_uint_eq(console_get_n_clients(console), 1);
        ck_assert_msg(peak < 512U * 1024U, "the heap grew by %zu bytes while relaying %zu", peak, size);

        /* The stalled client gets a prefix of the output, then EOF: far less than was sent. */
        peers[n_peers++] = stalled;
        RUN_UNTIL(stalled->eof);
        ck_assert_uint_gt(stalled->len, 0);
        ck_assert_uint_lt(stalled->len, size / 2);
        ck_assert_mem_eq(stalled->buf, data, stalled->len);
}
END_TEST

START_TEST(test_input_bounded) {
        const size_t size = 2U * 1024U * 1024U;
        _cleanup_free_ char *data = make_data(size, 4);
        ConsoleConfig cfg = config();
        Peer *qemu, *typist;
        size_t off = 0;
        uint64_t deadline;

        console_start(&cfg);
        qemu = qemu_start(qemu_path);
        typist = client_attach();
        /* QEMU does not read its input (a guest whose serial port is full): step() must not read it. */
        ck_assert_ptr_eq(peers[0], qemu);
        peers[0] = peers[--n_peers];

        /* The relay keeps reading the client: every send completes. */
        deadline = now_usec() + RUN_BOUND_USEC;
        while (off < size) {
                ssize_t n = send(typist->fd, data + off, size - off, MSG_NOSIGNAL | MSG_DONTWAIT);

                ck_assert_msg(now_usec() < deadline, "the client could send only %zu of %zu bytes", off, size);
                if (n > 0)
                        off += (size_t) n;
                else
                        ck_assert_int_eq(errno, EAGAIN);
                step();
        }
        run_until_idle();
        ck_assert_uint_eq(console_get_n_clients(console), 1);
        ck_assert(console_is_connected(console));

        /* QEMU reads now: it gets what its socket held plus the bounded queue, the start of the input intact. */
        peers[n_peers++] = qemu;
        run_until_idle();
        RUN_UNTIL(qemu->len > CONSOLE_INPUT_BUFFER_MAX);
        run_until_idle();
        ck_assert_uint_lt(qemu->len, size / 2);
        ck_assert_mem_eq(qemu->buf, data, 4096);

        /* And typing works again once it reads. */
        qemu->len = 0;
        peer_send_str(typist, "reboot\n");
        RUN_UNTIL(qemu->len >= 7);
        ck_assert(peer_has(qemu, "reboot\n"));
}
END_TEST

START_TEST(test_reconnect) {
        ConsoleConfig cfg = config();
        char qemu2_path[PATH_MAX + 16], missing[PATH_MAX + 16];
        Peer *qemu, *a;
        HydraError err = {};
        int r;

        console_start(&cfg);
        qemu = qemu_start(qemu_path);
        a = client_attach();
        pump(qemu, "one\n", 4);
        RUN_UNTIL(a->len == 4);

        /* QEMU goes away: the console notices, the client stays and sees nothing. */
        peer_free(qemu);
        RUN_UNTIL(!console_is_connected(console));
        ck_assert_uint_eq(console_get_n_clients(console), 1);
        ck_assert(!a->eof);

        /* Typed while QEMU is away: discarded, not kept for the next QEMU. */
        peer_send_str(a, "lost\n");
        run_until_idle();
        ck_assert(!a->eof);

        /* A new QEMU (a restart of the VM): relaying resumes in both directions. */
        (void) snprintf(qemu2_path, sizeof(qemu2_path), "%s/qemu2.sock", tmpdir);
        qemu = qemu_start(qemu2_path);
        peer_send_str(a, "two-in\n");
        RUN_UNTIL(qemu->len >= 7);
        run_until_idle();
        ck_assert(peer_has(qemu, "two-in\n"));
        pump(qemu, "two\n", 4);
        RUN_UNTIL(a->len == 8);
        ck_assert(peer_has(a, "one\ntwo\n"));
        ck_assert(peer_has(&seen, "one\ntwo\n"));

        /* console_disconnect() by the owner (QEMU's pidfd said it exited): same as EOF. */
        console_disconnect(console);
        ck_assert(!console_is_connected(console));
        RUN_UNTIL(qemu->eof);
        ck_assert_uint_eq(console_get_n_clients(console), 1);

        /* A socket that is not there: the error names it; the console stays usable. */
        (void) snprintf(missing, sizeof(missing), "%s/missing.sock", tmpdir);
        r = console_connect(console, missing, &err);
        ck_assert_int_eq(r, -ENOENT);
        ck_assert_int_eq(err.code, -ENOENT);
        ck_assert_msg(strstr(err.message, missing), "message does not name the path: %s", err.message);
        ck_assert(!console_is_connected(console));
        qemu = qemu_start(qemu_path);
        pump(qemu, "three\n", 6);
        RUN_UNTIL(a->len == 14);
        ck_assert(peer_has(a, "one\ntwo\nthree\n"));

        /* Connecting again replaces the connection. */
        peer_free(qemu);
        qemu = qemu_start(qemu2_path);
        ck_assert(console_is_connected(console));
}
END_TEST

START_TEST(test_too_many_clients) {
        ConsoleConfig cfg = config();
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        Peer *clients[CONSOLE_CLIENTS_MAX], *extra, *qemu;

        console_start(&cfg);
        qemu = qemu_start(qemu_path);
        for (size_t i = 0; i < CONSOLE_CLIENTS_MAX; i++)
                clients[i] = client_attach();
        ck_assert_uint_eq(console_get_n_clients(console), CONSOLE_CLIENTS_MAX);

        /* The next one is told why, in one line, and closed. */
        strcpy(sa.sun_path, listen_path);
        extra = peer_new(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), 0);
        ck_assert_int_eq(connect(extra->fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        RUN_UNTIL(extra->eof);
        ck_assert_uint_gt(extra->len, 0);
        ck_assert_ptr_nonnull(strstr(extra->buf, "too many clients"));
        ck_assert_ptr_eq(memchr(extra->buf, '\n', extra->len), extra->buf + extra->len - 1);
        ck_assert_uint_eq(console_get_n_clients(console), CONSOLE_CLIENTS_MAX);
        peer_free(extra);

        /* Everyone attached still gets output; a freed place can be taken. */
        pump(qemu, "x", 1);
        for (size_t i = 0; i < CONSOLE_CLIENTS_MAX; i++)
                RUN_UNTIL(peer_has(clients[i], "x"));
        peer_free(clients[0]);
        RUN_UNTIL(console_get_n_clients(console) == CONSOLE_CLIENTS_MAX - 1);
        clients[0] = client_attach();
        ck_assert_uint_eq(console_get_n_clients(console), CONSOLE_CLIENTS_MAX);
}
END_TEST

START_TEST(test_free) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        ConsoleConfig cfg = config();
        Peer *qemu, *a;
        int fd;

        /* A stale socket from a hydrad that died: replaced. */
        strcpy(sa.sun_path, listen_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_eq(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        safe_close(fd);
        ck_assert_int_eq(access(listen_path, F_OK), 0);

        console_start(&cfg);
        qemu = qemu_start(qemu_path);
        a = client_attach();

        ck_assert_ptr_null(console_free(console));
        console = NULL;
        ck_assert_int_lt(access(listen_path, F_OK), 0);
        ck_assert_int_eq(errno, ENOENT);
        RUN_UNTIL(a->eof && qemu->eof);
        /* The log is kept. */
        ck_assert_int_eq(access(log_path, F_OK), 0);

        ck_assert_ptr_null(console_free(NULL));
        console_disconnect(NULL);
        ck_assert(!console_is_connected(NULL));
}
END_TEST

START_TEST(test_free_in_on_data) {
        ConsoleConfig cfg = config();
        Peer *qemu, *a;

        console_start(&cfg);
        qemu = qemu_start(qemu_path);
        a = client_attach();
        free_in_on_data = true;
        pump(qemu, "panic\n", 6);
        ck_assert_ptr_null(console);
        ck_assert_uint_eq(n_on_data, 1);
        RUN_UNTIL(a->eof && qemu->eof);
        ck_assert(peer_has(a, "panic\n"));
        ck_assert_int_lt(access(listen_path, F_OK), 0);
}
END_TEST

START_TEST(test_bad_paths) {
        char long_path[200], path[PATH_MAX + 16];
        ConsoleConfig cfg = config();
        HydraError err = {};
        int r;

        /* A directory that does not exist: the error names the socket. */
        cfg.listen_path = "/nonexistent-hydra-test/console.sock";
        r = console_new(event, &cfg, &console, &err);
        ck_assert_int_eq(r, -ENOENT);
        ck_assert_int_eq(err.code, r);
        ck_assert_ptr_null(console);
        ck_assert_msg(strstr(err.message, "/nonexistent-hydra-test/console.sock"), "%s", err.message);

        /* Too long for sun_path. */
        memset(long_path, 'x', sizeof(long_path) - 1);
        long_path[0] = '/';
        long_path[sizeof(long_path) - 1] = '\0';
        cfg.listen_path = long_path;
        hydra_error_clear(&err);
        ck_assert_int_eq(console_new(event, &cfg, &console, &err), -ENAMETOOLONG);
        ck_assert_ptr_nonnull(strstr(err.message, long_path));

        /* The log: a missing directory, a symlink, a device are refused by name. */
        cfg = config();
        cfg.log_path = "/nonexistent-hydra-test/console.log";
        hydra_error_clear(&err);
        ck_assert_int_eq(console_new(event, &cfg, &console, &err), -ENOENT);
        ck_assert_ptr_nonnull(strstr(err.message, "/nonexistent-hydra-test/console.log"));

        (void) snprintf(path, sizeof(path), "%s/elsewhere", tmpdir);
        (void) unlink(log_path); /* the attempts above opened it before failing on the socket */
        ck_assert_int_eq(symlink(path, log_path), 0);
        cfg.log_path = log_path;
        hydra_error_clear(&err);
        ck_assert_int_eq(console_new(event, &cfg, &console, &err), -ELOOP);
        ck_assert_ptr_nonnull(strstr(err.message, log_path));
        ck_assert_int_lt(access(path, F_OK), 0); /* nothing created through the link */

        cfg.log_path = "/dev/null";
        hydra_error_clear(&err);
        ck_assert_int_eq(console_new(event, &cfg, &console, &err), -EINVAL);
        ck_assert_ptr_nonnull(strstr(err.message, "/dev/null"));

        /* None of the failures left a socket behind. */
        ck_assert_int_lt(access(listen_path, F_OK), 0);
        ck_assert_ptr_null(console);
}
END_TEST

START_TEST(test_log_write_error) {
        struct rlimit old, small = { .rlim_cur = 10, .rlim_max = RLIM_INFINITY };
        ConsoleConfig cfg = config();
        struct sigaction sa = { .sa_handler = SIG_IGN }, old_sa;
        Peer *qemu, *a, content = {};

        /* A full disk, as far as the log is concerned: writes past 10 bytes fail with EFBIG. */
        ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
        small.rlim_max = old.rlim_max;
        ck_assert_int_eq(sigaction(SIGXFSZ, &sa, &old_sa), 0);
        ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &small), 0);

        console_start(&cfg);
        qemu = qemu_start(qemu_path);
        a = client_attach();
        for (int i = 0; i < 20; i++)
                pump(qemu, "0123456789abcdef", 16);
        RUN_UNTIL(a->len == 20 * 16);

        ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
        ck_assert_int_eq(sigaction(SIGXFSZ, &old_sa, NULL), 0);

        /* The clients and on_data got everything; the log what fitted. */
        ck_assert_uint_eq(seen.len, 20 * 16);
        ck_assert_mem_eq(a->buf + 19 * 16, "0123456789abcdef", 16);
        read_file_into(log_path, &content);
        ck_assert(peer_has(&content, "0123456789"));
        free(content.buf);

        /* Writing works again once there is room. */
        pump(qemu, "ok\n", 3);
        content = (Peer) {};
        read_file_into(log_path, &content);
        ck_assert(peer_has(&content, "0123456789ok\n"));
        free(content.buf);
}
END_TEST

/* --- the stored log, for ConsoleLog --- */

static void put(const char *suffix, const char *data) {
        char path[PATH_MAX + 8];
        FILE *f;

        (void) snprintf(path, sizeof(path), "%s%s", log_path, suffix);
        f = fopen(path, "we");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(fputs(data, f) >= 0, 1);
        ck_assert_int_eq(fclose(f), 0);
}

/* Everything the snapshot delivers, with "|" where one read ended. */
static char *read_all(ConsoleLogSnapshot *s, size_t chunk) {
        char *out = calloc(1, 4096), buf[64];
        size_t n = 0, k;

        ck_assert_ptr_nonnull(out);
        while ((k = console_log_snapshot_read(s, buf, chunk)) > 0) {
                ck_assert_uint_lt(n + k + 2, 4096);
                memcpy(out + n, buf, k);
                n += k;
                out[n++] = '|';
        }
        return out;
}

static char *snapshot_text(uint64_t tail, uint64_t max, size_t chunk) {
        _cleanup_(console_log_snapshot_freep) ConsoleLogSnapshot *s = NULL;

        ck_assert_int_eq(console_log_snapshot(log_path, 2, tail, max, &s), 0);
        return read_all(s, chunk);
}

START_TEST(test_snapshot_order_and_tail) {
        _cleanup_free_ char *all = NULL, *tail = NULL, *capped = NULL, *small = NULL, *none = NULL;

        none = snapshot_text(0, 0, 64);
        ck_assert_str_eq(none, "");
        put(".2", "oldest ");
        put(".1", "older ");
        put("", "newest");
        all = snapshot_text(0, 0, 64);
        ck_assert_str_eq(all, "oldest |older |newest|");
        tail = snapshot_text(9, 0, 64);
        ck_assert_str_eq(tail, "er |newest|");
        capped = snapshot_text(0, 8, 64); /* max_bytes keeps the newest */
        ck_assert_str_eq(capped, "r |newest|");
        small = snapshot_text(0, 0, 4); /* reads of at most size bytes */
        ck_assert_str_eq(small, "olde|st |olde|r |newe|st|");
}
END_TEST

/* The files are held open: a rotation after the snapshot changes nothing it delivers; a file truncated meanwhile
 * ends early; a missing file or a FIFO counts as empty (and opening the FIFO does not block). */
START_TEST(test_snapshot_stable) {
        _cleanup_(console_log_snapshot_freep) ConsoleLogSnapshot *s = NULL, *t = NULL;
        _cleanup_free_ char *rotated = NULL, *cut = NULL;
        char p1[PATH_MAX + 8], p2[PATH_MAX + 8];

        (void) snprintf(p1, sizeof(p1), "%s.1", log_path);
        (void) snprintf(p2, sizeof(p2), "%s.2", log_path);
        put(".1", "first ");
        put("", "second");
        ck_assert_int_eq(console_log_snapshot(log_path, 2, 0, 0, &s), 0);
        ck_assert_uint_eq(console_log_snapshot_size(s), 12);
        ck_assert_int_eq(rename(p1, p2), 0);
        ck_assert_int_eq(rename(log_path, p1), 0);
        put("", "third, not in the snapshot");
        rotated = read_all(s, 64);
        ck_assert_str_eq(rotated, "first |second|");

        ck_assert_int_eq(unlink(p2), 0);
        ck_assert_int_eq(mkfifo(p2, 0600), 0);
        ck_assert_int_eq(console_log_snapshot(log_path, 2, 0, 0, &t), 0);
        ck_assert_int_eq(truncate(p1, 3), 0);
        cut = read_all(t, 64);
        ck_assert_str_eq(cut, "sec|third, not in the snapshot|");
}
END_TEST

static Suite *console_suite(void) {
        Suite *s = suite_create("console");
        TCase *tc;

        tc = tcase_create("relay");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_relay);
        tcase_add_test(tc, test_existing_log_appended);
        tcase_add_test(tc, test_rotation);
        tcase_add_test(tc, test_slow_client_dropped);
        tcase_add_test(tc, test_input_bounded);
        tcase_add_test(tc, test_reconnect);
        tcase_add_test(tc, test_too_many_clients);
        tcase_add_test(tc, test_log_write_error);
        suite_add_tcase(s, tc);

        tc = tcase_create("lifetime");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_free);
        tcase_add_test(tc, test_free_in_on_data);
        tcase_add_test(tc, test_bad_paths);
        suite_add_tcase(s, tc);

        tc = tcase_create("stored");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_snapshot_order_and_tail);
        tcase_add_test(tc, test_snapshot_stable);
        suite_add_tcase(s, tc);

        return s;
}

int main(void) {
        SRunner *sr = srunner_create(console_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
