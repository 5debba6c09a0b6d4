/* SPDX-License-Identifier: MIT */
/* hydrad as a systemd service (daemon/service.c) and the API's authorization rule (daemon/authz.c), without
 * systemd: the socket systemd would pass is made here and handed over as $LISTEN_FDS says (fd 3, LISTEN_PID);
 * each case runs in a child of its own (Check's fork mode), so fd 3 and the environment are its own. */
#include <check.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "authz.h"
#include "service.h"

typedef struct Result {
        int r, fd;
        bool nonblock, cloexec, fd3_open, fd4_open, env_left;
        char message[sizeof(((HydraError *) 0)->message)];
} Result;

/* In a child of its own (Check's own fds may be at 3): puts fds at 3, 4, ... and says so in the environment, as
 * systemd does before exec, then takes the socket as hydrad does. Closes fds here. */
static Result activate(const char *socket_path, int *fds, int n) {
        Result res = {};
        int p[2], status;
        pid_t pid;

        ck_assert_int_eq(pipe(p), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                HydraError err;
                char buf[32];
                int out = fcntl(p[1], F_DUPFD, 100);

                hydra_error_clear(&err);
                for (int i = 0; i < n; i++)
                        if (fds[i] < 3 + n) /* out of the way first */
                                fds[i] = fcntl(fds[i], F_DUPFD, 3 + n);
                for (int i = 0; i < n; i++)
                        if (fds[i] < 0 || dup2(fds[i], 3 + i) < 0 || close(fds[i]) < 0)
                                _exit(2);
                (void) snprintf(buf, sizeof(buf), "%d", (int) getpid());
                (void) setenv("LISTEN_PID", buf, 1);
                (void) snprintf(buf, sizeof(buf), "%d", n);
                if (n > 0)
                        (void) setenv("LISTEN_FDS", buf, 1);
                else
                        (void) unsetenv("LISTEN_FDS");
                res.r = service_take_activated_socket(socket_path, &res.fd, &err);
                (void) snprintf(res.message, sizeof(res.message), "%s", res.r < 0 ? err.message : "");
                if (res.fd >= 0) {
                        res.nonblock = fcntl(res.fd, F_GETFL) & O_NONBLOCK;
                        res.cloexec = fcntl(res.fd, F_GETFD) & FD_CLOEXEC;
                }
                res.fd3_open = fcntl(3, F_GETFD) >= 0;
                res.fd4_open = n > 1 && fcntl(4, F_GETFD) >= 0;
                res.env_left = getenv("LISTEN_FDS") || getenv("LISTEN_PID");
                _exit(write(out, &res, sizeof(res)) == sizeof(res) ? 0 : 3);
        }
        close(p[1]);
        for (int i = 0; i < n; i++)
                close(fds[i]);
        ck_assert_int_eq(read(p[0], &res, sizeof(res)), sizeof(res));
        close(p[0]);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        return res;
}

static int unix_socket(int type, const char *path, bool listening) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, type, 0);

        ck_assert_int_ge(fd, 0);
        (void) snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        (void) unlink(path);
        ck_assert_int_eq(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        if (listening)
                ck_assert_int_eq(listen(fd, 8), 0);
        return fd;
}

static char path_a[64], path_b[64];

static void setup(void) {
        (void) snprintf(path_a, sizeof(path_a), "/tmp/hydra-test-service-%d-a.sock", (int) getpid());
        (void) snprintf(path_b, sizeof(path_b), "/tmp/hydra-test-service-%d-b.sock", (int) getpid());
}

static void teardown(void) {
        (void) unlink(path_a);
        (void) unlink(path_b);
}

START_TEST(test_not_activated) {
        Result res = activate(path_a, NULL, 0);

        ck_assert_int_eq(res.r, 0);
        ck_assert_int_lt(res.fd, 0);
}
END_TEST

START_TEST(test_activated_unix_stream) {
        int s = unix_socket(SOCK_STREAM, path_a, true);
        Result res = activate(path_a, &s, 1);

        ck_assert_msg(res.r == 0, "%s", res.message);
        ck_assert_int_eq(res.fd, 3);
        ck_assert(res.nonblock && res.cloexec);
        /* Unset: QEMU and the helpers must not think they were activated. */
        ck_assert(!res.env_left);
}
END_TEST

/* A socket at another path is served (it is what systemd holds), with a warning. */
START_TEST(test_activated_other_path) {
        int s = unix_socket(SOCK_STREAM, path_b, true);
        Result res = activate(path_a, &s, 1);

        ck_assert_msg(res.r == 0, "%s", res.message);
        ck_assert_int_eq(res.fd, 3);
}
END_TEST

/* Refused with what was passed and what hydrad.socket must say; nothing half-done: every passed fd is closed, not
 * left to leak into QEMU. */
static void expect_refused(int *fds, int n, const char *what) {
        Result res = activate(path_a, fds, n);

        ck_assert_int_eq(res.r, -EINVAL);
        ck_assert_int_lt(res.fd, 0);
        ck_assert_msg(strstr(res.message, what), "%s", res.message);
        ck_assert(!res.fd3_open && !res.fd4_open);
}

START_TEST(test_activated_datagram) {
        int s = unix_socket(SOCK_DGRAM, path_a, false);

        expect_refused(&s, 1, "the socket systemd passed is a datagram socket (unix); hydrad needs a listening unix "
                              "stream socket (hydrad.socket: ListenStream=");
}
END_TEST

START_TEST(test_activated_tcp) {
        struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        int s = socket(AF_INET, SOCK_STREAM, 0);

        ck_assert_int_eq(bind(s, (struct sockaddr *) &sin, sizeof(sin)), 0);
        ck_assert_int_eq(listen(s, 8), 0);
        expect_refused(&s, 1, "is a stream socket (IPv4)");
}
END_TEST

START_TEST(test_activated_not_listening) {
        int s = unix_socket(SOCK_STREAM, path_a, false);

        expect_refused(&s, 1, "is a stream socket (unix) that is not listening");
}
END_TEST

START_TEST(test_activated_pipe) {
        int p[2];

        ck_assert_int_eq(pipe(p), 0);
        close(p[1]);
        expect_refused(&p[0], 1, "is not a socket");
}
END_TEST

START_TEST(test_activated_two) {
        int s[2] = { unix_socket(SOCK_STREAM, path_a, true), unix_socket(SOCK_STREAM, path_b, true) };

        expect_refused(s, 2, "systemd passed 2 sockets; hydrad takes one, the API socket");
}
END_TEST

START_TEST(test_status_text) {
        VmStatus sts[2] = {
                { .role = ROLE_HOST, .name = "host", .registered = true, .state = VM_STATE_RUNNING, .ready = true },
                { .role = ROLE_ISOLATED, .name = "isolated" },
        };
        char buf[128];

        service_status_text(sts, 2, buf, sizeof(buf));
        ck_assert_str_eq(buf, "host: running, ready; isolated: not registered");
        sts[0].ready = false;
        sts[0].state = VM_STATE_STARTING;
        sts[1].registered = true;
        sts[1].state = VM_STATE_CRASHED;
        service_status_text(sts, 2, buf, sizeof(buf));
        ck_assert_str_eq(buf, "host: starting; isolated: crashed");
        /* Cut, never overrun. */
        service_status_text(sts, 2, buf, 10);
        ck_assert_str_eq(buf, "host: sta");
}
END_TEST

static const AuthzPolicy policy = {
        .daemon_uid = 0, .full_gid = 900, .read_gid = 901, .full_group = "hydra", .read_group = "hydra-ro",
};

START_TEST(test_authz_access) {
        const gid_t none[] = { 5, 6 }, full[] = { 5, 900 }, read[] = { 901 }, both[] = { 901, 900 };
        AuthzPolicy own = policy;

        ck_assert_int_eq(authz_access(&policy, 0, 0, NULL, 0), API_ACCESS_FULL);
        ck_assert_int_eq(authz_access(&policy, 1000, 1000, none, 2), API_ACCESS_NONE);
        ck_assert_int_eq(authz_access(&policy, 1000, 1000, full, 2), API_ACCESS_FULL);
        ck_assert_int_eq(authz_access(&policy, 1000, 900, NULL, 0), API_ACCESS_FULL); /* primary group */
        ck_assert_int_eq(authz_access(&policy, 1000, 1000, read, 1), API_ACCESS_READ);
        ck_assert_int_eq(authz_access(&policy, 1000, 1000, both, 2), API_ACCESS_FULL);
        /* hydrad run by a user (tests, a developer): that user has it all. */
        own.daemon_uid = 1000;
        ck_assert_int_eq(authz_access(&own, 1000, 1000, NULL, 0), API_ACCESS_FULL);
        /* No groups configured: gid -1 matches no one, even a peer whose group list says -1. */
        own = (AuthzPolicy) { .daemon_uid = 0, .full_gid = (gid_t) -1, .read_gid = (gid_t) -1 };
        ck_assert_int_eq(authz_access(&own, 1000, (gid_t) -1, NULL, 0), API_ACCESS_NONE);

        ck_assert(authz_allows(API_ACCESS_FULL, true) && authz_allows(API_ACCESS_FULL, false));
        ck_assert(!authz_allows(API_ACCESS_READ, true) && authz_allows(API_ACCESS_READ, false));
        ck_assert(!authz_allows(API_ACCESS_NONE, true) && !authz_allows(API_ACCESS_NONE, false));
}
END_TEST

START_TEST(test_authz_messages) {
        AuthzPolicy nogroup = { .daemon_uid = 0, .full_gid = (gid_t) -1, .read_gid = (gid_t) -1 };
        AuthzPolicy oneg = { .daemon_uid = 0, .full_gid = 900, .read_gid = (gid_t) -1, .full_group = "hydra" };
        char buf[384];

        authz_denied_message(&policy, "StartVm", true, API_ACCESS_NONE, 65534, buf, sizeof(buf));
        ck_assert_str_eq(buf, "permission denied: StartVm changes VMs and needs root or membership of group 'hydra' "
                              "(you are uid 65534)");
        authz_denied_message(&policy, "StartVm", true, API_ACCESS_READ, 65534, buf, sizeof(buf));
        ck_assert_str_eq(buf, "permission denied: StartVm changes VMs and needs root or membership of group 'hydra' "
                              "(you are uid 65534, with read-only access through group 'hydra-ro')");
        authz_denied_message(&policy, "GetVm", false, API_ACCESS_NONE, 65534, buf, sizeof(buf));
        ck_assert_str_eq(buf, "permission denied: GetVm needs root or membership of group 'hydra' or 'hydra-ro' "
                              "(you are uid 65534)");
        authz_denied_message(&oneg, "GetVm", false, API_ACCESS_NONE, 65534, buf, sizeof(buf));
        ck_assert_str_eq(buf, "permission denied: GetVm needs root or membership of group 'hydra' (you are uid 65534)");
        authz_denied_message(&nogroup, "DestroyVm", true, API_ACCESS_NONE, 1000, buf, sizeof(buf));
        ck_assert_str_eq(buf, "permission denied: DestroyVm changes VMs and needs root or hydrad's own user (uid 0); "
                              "no socket_group is configured in hydrad.conf (you are uid 1000)");
}
END_TEST

int main(void) {
        Suite *s = suite_create("service");
        TCase *tc = tcase_create("core");
        SRunner *sr;
        int failed;

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_not_activated);
        tcase_add_test(tc, test_activated_unix_stream);
        tcase_add_test(tc, test_activated_other_path);
        tcase_add_test(tc, test_activated_datagram);
        tcase_add_test(tc, test_activated_tcp);
        tcase_add_test(tc, test_activated_not_listening);
        tcase_add_test(tc, test_activated_pipe);
        tcase_add_test(tc, test_activated_two);
        tcase_add_test(tc, test_status_text);
        tcase_add_test(tc, test_authz_access);
        tcase_add_test(tc, test_authz_messages);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed ? 1 : 0;
}
