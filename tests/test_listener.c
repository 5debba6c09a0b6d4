/* SPDX-License-Identifier: MIT */
/* The listener (accept loop with a cap and a pause when fds run out), unix_listen() and the instance lock, with
 * real sockets on a private sd_event. The fd exhaustion tests lower RLIMIT_NOFILE in the forked test process. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "instance.h"
#include "listener.h"
#include "log.h"
#include "macro.h"

#define USEC_PER_MSEC 1000ULL
#define RUN_BOUND_USEC (20ULL * 1000000ULL)
#define MAX_FDS 256

static char tmpdir[] = "/tmp/test-listener.XXXXXX";
static char sock_path[PATH_MAX];
static sd_event *event;

/* What the owner of the listener sees. */
static int conns[MAX_FDS];
static unsigned n_conns;
static int connection_result; /* what on_connection returns */
static unsigned refusals;

static uint64_t now_usec(void) {
        struct timespec ts;

        ck_assert_int_eq(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

static int on_connection(int fd, void *userdata) {
        if (connection_result < 0) {
                safe_close(fd);
                return connection_result;
        }
        ck_assert_uint_lt(n_conns, MAX_FDS);
        conns[n_conns++] = fd;
        return 0;
}

static unsigned count(void *userdata) {
        return n_conns;
}

static void refuse(int fd, void *userdata) {
        refusals++;
        (void) send(fd, "full\n", 5, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static void run_for(uint64_t usec) {
        uint64_t end = now_usec() + usec;

        while (now_usec() < end)
                ck_assert_int_ge(sd_event_run(event, end - now_usec()), 0);
}

#define RUN_UNTIL(cond)                                                                     \
        do {                                                                                \
                uint64_t _deadline = now_usec() + RUN_BOUND_USEC;                           \
                while (!(cond)) {                                                           \
                        ck_assert_msg(now_usec() < _deadline, "timed out waiting for " #cond); \
                        ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);         \
                }                                                                           \
        } while (0)

static int client_connect(void) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd;

        strcpy(sa.sun_path, sock_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fd, 0);
        /* Completes in the backlog whether or not the listener accepts. */
        ck_assert_int_eq(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        return fd;
}

/* What the client reads until EOF (up to size-1 bytes, NUL-terminated); -1 if no EOF within a second. */
static ssize_t client_read_all(int fd, char *buf, size_t size) {
        struct timeval tv = { .tv_sec = 1 };
        size_t n = 0;

        ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
        for (;;) {
                ssize_t k = recv(fd, buf + n, size - 1 - n, 0);
                if (k < 0)
                        return -1;
                if (k == 0)
                        break;
                n += (size_t) k;
        }
        buf[n] = 0;
        return (ssize_t) n;
}

static Listener *listener_open(unsigned max, uint64_t retry_usec) {
        HydraError err = {};
        Listener *l = NULL;
        int fd;

        ck_assert_msg(unix_listen("test socket", sock_path, 0600, (gid_t) -1, &fd, NULL, &err) == 0, "%s",
                      err.message);
        ck_assert_int_eq(listener_new(event, fd, &(ListenerConfig) {
                                              .name = "test",
                                              .max_connections = max,
                                              .retry_usec = retry_usec,
                                              .on_connection = on_connection,
                                              .count = count,
                                              .refuse = refuse,
                                      }, &l), 0);
        return l;
}

/* Opens fds until the process has none left; returns how many (in fds). */
static unsigned exhaust_fds(int *fds, unsigned max) {
        unsigned n = 0;

        for (;;) {
                int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                if (fd < 0) {
                        ck_assert_int_eq(errno, EMFILE);
                        return n;
                }
                ck_assert_uint_lt(n, max);
                fds[n++] = fd;
        }
}

static void setup(void) {
        ck_assert_ptr_nonnull(mkdtemp(tmpdir));
        ck_assert_int_lt(snprintf(sock_path, sizeof(sock_path), "%s/l.sock", tmpdir), (int) sizeof(sock_path));
        ck_assert_int_ge(sd_event_new(&event), 0);
        n_conns = refusals = 0;
        connection_result = 0;
        if (!getenv("LISTENER_TEST_DEBUG"))
                log_set_max_level(LOG_ERR);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

static void teardown(void) {
        for (unsigned i = 0; i < n_conns; i++)
                safe_close(conns[i]);
        event = sd_event_unref(event);
        (void) nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        strcpy(tmpdir, "/tmp/test-listener.XXXXXX");
}

START_TEST(test_accept_and_cap) {
        _cleanup_(listener_freep) Listener *l = listener_open(2, 0);
        ListenerStats stats;
        int c[8];
        char buf[64];

        c[0] = client_connect();
        c[1] = client_connect();
        RUN_UNTIL(n_conns == 2);

        /* Over the cap: accepted, told, closed; one warning for all of them. */
        for (size_t i = 2; i < ELEMENTSOF(c); i++)
                c[i] = client_connect();
        RUN_UNTIL(refusals == ELEMENTSOF(c) - 2);
        for (size_t i = 2; i < ELEMENTSOF(c); i++) {
                ck_assert_int_eq(client_read_all(c[i], buf, sizeof(buf)), 5);
                ck_assert_str_eq(buf, "full\n");
                safe_close(c[i]);
        }
        listener_get_stats(l, &stats);
        ck_assert_uint_eq(stats.accepted, 2);
        ck_assert_uint_eq(stats.refused, ELEMENTSOF(c) - 2);
        ck_assert_uint_eq(stats.warnings, 1);
        ck_assert_uint_eq(n_conns, 2);

        /* One goes, the next one comes in. */
        conns[1] = safe_close(conns[1]);
        n_conns = 1;
        listener_connection_closed(l);
        c[2] = client_connect();
        RUN_UNTIL(n_conns == 2);
        ck_assert_uint_eq(refusals, ELEMENTSOF(c) - 2);

        for (size_t i = 0; i < 3; i++)
                safe_close(c[i]);
}
END_TEST

START_TEST(test_no_spin_when_out_of_fds) {
        struct rlimit rl = { .rlim_cur = 64, .rlim_max = 64 };
        static int fds[MAX_FDS];
        _cleanup_(listener_freep) Listener *l = NULL;
        ListenerStats stats;
        unsigned n;
        int c1, c2;

        ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
        l = listener_open(0, 50 * USEC_PER_MSEC);
        c1 = client_connect();
        c2 = client_connect();
        n = exhaust_fds(fds, ELEMENTSOF(fds));
        ck_assert_uint_gt(n, 0);

        /* accept4() fails with EMFILE: a pause, a warning, no busy loop. 300 ms with 50 ms pauses: a handful of
         * tries where a spinning loop makes hundreds of thousands. */
        run_for(300 * USEC_PER_MSEC);
        listener_get_stats(l, &stats);
        ck_assert_uint_eq(stats.accepted, 0);
        ck_assert_uint_ge(stats.paused, 1);
        ck_assert_uint_le(stats.paused, 10);
        ck_assert_uint_eq(stats.warnings, 1);
        RUN_UNTIL(listener_is_paused(l)); /* not between a timer and the next try */

        /* A connection of ours closes: accepting resumes at once (long before the timer). */
        n--;
        fds[n] = safe_close(fds[n]);
        listener_connection_closed(l);
        ck_assert(!listener_is_paused(l));
        ck_assert_int_ge(sd_event_run(event, 0), 0);
        ck_assert_uint_eq(n_conns, 1);

        /* Out again, then an fd is freed behind the listener's back: the timer finds it. */
        RUN_UNTIL(listener_is_paused(l));
        n--;
        fds[n] = safe_close(fds[n]);
        RUN_UNTIL(n_conns == 2);

        while (n > 0) {
                n--;
                fds[n] = safe_close(fds[n]);
        }
        safe_close(c1);
        safe_close(c2);
}
END_TEST

START_TEST(test_connection_errors) {
        _cleanup_(listener_freep) Listener *l = listener_open(0, 50 * USEC_PER_MSEC);
        ListenerStats stats;
        char buf[16];
        int c;

        /* The owner runs out (e.g. the proxy cannot make its target socket): a pause, as for accept4(). */
        connection_result = -EMFILE;
        c = client_connect();
        RUN_UNTIL(listener_is_paused(l));
        ck_assert_int_eq(client_read_all(c, buf, sizeof(buf)), 0);
        safe_close(c);

        /* Any other failure: the connection is closed and the listener goes on. */
        connection_result = -EIO;
        listener_connection_closed(l);
        for (int i = 0; i < 5; i++) {
                c = client_connect();
                RUN_UNTIL(({ listener_get_stats(l, &stats); stats.accepted == (uint64_t) i + 2; }));
                ck_assert_int_eq(client_read_all(c, buf, sizeof(buf)), 0);
                safe_close(c);
        }
        ck_assert(!listener_is_paused(l));
        listener_get_stats(l, &stats);
        ck_assert_uint_eq(stats.paused, 1);
        ck_assert_uint_eq(stats.warnings, 1); /* the pause said it; the rest waits for the next interval */

        connection_result = 0;
        c = client_connect();
        RUN_UNTIL(n_conns == 1);
        safe_close(c);
}
END_TEST

START_TEST(test_unix_listen) {
        _cleanup_free_ char *long_path = NULL;
        HydraError err = {};
        struct stat st, got;
        mode_t old;
        int fd;

        /* A stale socket is replaced; the mode is what was asked, whatever the umask. */
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        {
                struct sockaddr_un sa = { .sun_family = AF_UNIX };
                strcpy(sa.sun_path, sock_path);
                ck_assert_int_eq(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        }
        safe_close(fd);
        old = umask(0);
        ck_assert_msg(unix_listen("test socket", sock_path, 0660, getegid(), &fd, &got, &err) == 0, "%s",
                      err.message);
        umask(old);
        ck_assert_int_eq(lstat(sock_path, &st), 0);
        ck_assert(S_ISSOCK(st.st_mode));
        ck_assert_uint_eq(st.st_mode & 07777, 0660);
        ck_assert_uint_eq(st.st_ino, got.st_ino);
        ck_assert_int_eq(fcntl(fd, F_GETFL) & O_NONBLOCK, O_NONBLOCK);
        ck_assert_int_eq(fcntl(fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
        safe_close(client_connect());
        safe_close(fd);
        ck_assert_int_eq(unlink(sock_path), 0);

        /* Anything else at the path is left alone. */
        fd = open(sock_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        safe_close(fd);
        ck_assert_int_eq(unix_listen("test socket", sock_path, 0660, (gid_t) -1, &fd, NULL, &err), -EEXIST);
        ck_assert_ptr_nonnull(strstr(err.message, sock_path));
        ck_assert_int_eq(lstat(sock_path, &st), 0);
        ck_assert(S_ISREG(st.st_mode));

        ck_assert_int_ge(asprintf(&long_path, "%s/%0200d", tmpdir, 0), 0);
        ck_assert_int_eq(unix_listen("test socket", long_path, 0660, (gid_t) -1, &fd, NULL, &err), -ENAMETOOLONG);
        ck_assert_ptr_nonnull(strstr(err.message, "test socket"));
}
END_TEST

START_TEST(test_instance_lock) {
        _cleanup_free_ char *run = NULL, *state = NULL, *lock = NULL;
        HydraError err = {};
        int fds[2], again[2], status;
        pid_t pid;

        ck_assert_int_ge(asprintf(&run, "%s/run/sub", tmpdir), 0);
        ck_assert_int_ge(asprintf(&state, "%s/state", tmpdir), 0);
        ck_assert_int_ge(asprintf(&lock, "%s/hydrad.lock", run), 0);
        const char *dirs[] = { run, state }, *whats[] = { "run directory", "state directory" };

        /* The directories are created, each lock is held. */
        ck_assert_msg(instance_lock(dirs, whats, 2, fds, &err) == 0, "%s", err.message);
        ck_assert_int_ge(fds[0], 0);
        ck_assert_int_ge(fds[1], 0);
        ck_assert_int_eq(access(lock, F_OK), 0);

        /* Another process (here: another open file description) is refused, naming the lock file. */
        ck_assert_int_eq(instance_lock(dirs, whats, 2, again, &err), -EADDRINUSE);
        ck_assert_ptr_nonnull(strstr(err.message, "already serving run directory"));
        ck_assert_ptr_nonnull(strstr(err.message, lock));
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0)
                _exit(instance_lock((const char *[]) { state }, whats + 1, 1, again, &err) == -EADDRINUSE ? 0 : 1);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);

        /* Released with the fds (the kernel does it when a daemon dies). */
        safe_close(fds[0]);
        safe_close(fds[1]);
        ck_assert_int_eq(instance_lock(dirs, whats, 2, fds, &err), 0);
        safe_close(fds[0]);
        safe_close(fds[1]);

        /* The same directory as run and state directory is locked once, not refused by ourselves. */
        ck_assert_msg(instance_lock((const char *[]) { run, run }, whats, 2, fds, &err) == 0, "%s", err.message);
        ck_assert_int_ge(fds[0], 0);
        ck_assert_int_eq(fds[1], -EBADF);
        safe_close(fds[0]);
}
END_TEST

static Suite *listener_suite(void) {
        Suite *s = suite_create("listener");
        TCase *tc;

        tc = tcase_create("listener");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_accept_and_cap);
        tcase_add_test(tc, test_no_spin_when_out_of_fds);
        tcase_add_test(tc, test_connection_errors);
        tcase_add_test(tc, test_unix_listen);
        tcase_add_test(tc, test_instance_lock);
        suite_add_tcase(s, tc);
        return s;
}

int main(void) {
        SRunner *sr = srunner_create(listener_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
