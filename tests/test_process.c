/* SPDX-License-Identifier: MIT */
/* process.c with real processes: spawn (an exec failure reported with its errno, fds passed as 3, 4, ..., a
 * setsid'd child with stdin from /dev/null and no blocked or ignored signal of ours), the $PATH search, the
 * start-time identity (a zombie reads as gone), signals through the pidfd, a child run as another user (issue 13),
 * and finding an unrecorded QEMU by the QMP socket it holds (the executable and the socket must match). perl stands
 * in for QEMU. */
#include <check.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "macro.h"
#include "process.h"

#define PERL "/usr/bin/perl"

static pid_t spawn(char *const *argv, int *ret_pidfd) {
        ProcessSpawn p = { .path = argv[0], .argv = argv, .stdout_fd = -1, .stderr_fd = -1 };
        HydraError err;
        pid_t pid = 0;

        hydra_error_clear(&err);
        ck_assert_msg(process_spawn(&p, &pid, ret_pidfd, &err) == 0, "%s", err.message);
        return pid;
}

static void kill_and_reap(pid_t pid, int pidfd) {
        ck_assert_int_eq(process_pidfd_signal(pidfd, SIGKILL), 0);
        ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
        close(pidfd);
}

START_TEST(test_exec_failure_reported) {
        char *argv[] = { (char *) "/nonexistent/qemu", NULL };
        ProcessSpawn p = { .path = argv[0], .argv = argv, .stdout_fd = -1, .stderr_fd = -1 };
        HydraError err;
        pid_t pid = 0;
        int pidfd = -1;

        hydra_error_clear(&err);
        ck_assert_int_eq(process_spawn(&p, &pid, &pidfd, &err), -ENOENT);
        ck_assert_msg(strstr(err.message, "exec '/nonexistent/qemu'"), "%s", err.message);
        ck_assert_int_eq(pidfd, -1);
}
END_TEST

/* The child sees a passed fd as 3, nothing else of ours, and /dev/null on stdin. */
START_TEST(test_pass_fds_and_stdio) {
        char *argv[] = { (char *) "/bin/sh", (char *) "-c",
                         (char *) "read x; echo \"stdin:${x:-eof} fd3:$(cat <&3) fd4:$( (: <&4) 2>/dev/null && echo open || echo closed)\"",
                         NULL };
        int data[2], out[2], pidfd, status;
        ProcessSpawn p = { .path = argv[0], .argv = argv, .pass_fds = data, .n_pass_fds = 1, .stderr_fd = -1 };
        char buf[256] = "";
        HydraError err;
        pid_t pid;
        ssize_t n;

        ck_assert_int_eq(pipe2(data, O_CLOEXEC), 0);
        ck_assert_int_eq(pipe2(out, O_CLOEXEC), 0);
        ck_assert_int_eq(write(data[1], "hello", 5), 5);
        close(data[1]);
        p.stdout_fd = out[1];
        ck_assert_msg(process_spawn(&p, &pid, &pidfd, &err) == 0, "%s", err.message);
        close(out[1]);
        close(data[0]);
        n = read(out[0], buf, sizeof(buf) - 1);
        ck_assert_int_gt(n, 0);
        ck_assert_str_eq(buf, "stdin:eof fd3:hello fd4:closed\n");
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        close(out[0]);
        close(pidfd);
}
END_TEST

/* Nothing of hydrad's environment reaches a child (issue 13: a secret an operator exported, $NOTIFY_SOCKET), and no
 * fd beyond stdio, even one hydrad left without close-on-exec. */
START_TEST(test_environment_and_fds_cleared) {
        char *argv[] = { (char *) PERL, (char *) "-e",
                         (char *) "print \"$_=$ENV{$_}\\n\" for sort keys %ENV; opendir D, '/proc/self/fd';"
                                  "for (sort grep { !/^\\./ } readdir D) { print \"fd $_ \", readlink(\"/proc/self/fd/$_\"), \"\\n\" }",
                         NULL };
        ProcessSpawn p = { .path = argv[0], .argv = argv, .stderr_fd = -1 };
        int out[2], pidfd, status, leaked;
        char buf[512] = "";
        HydraError err;
        size_t len = 0;
        pid_t pid;
        ssize_t n;

        ck_assert_int_eq(setenv("HYDRA_TEST_PASSWORD", "s3cret-password", 1), 0);
        ck_assert_int_eq(setenv("NOTIFY_SOCKET", "/run/systemd/notify", 1), 0);
        leaked = open("/dev/null", O_RDONLY); /* no O_CLOEXEC */
        ck_assert_int_ge(leaked, 3);
        ck_assert_int_eq(pipe2(out, O_CLOEXEC), 0);
        p.stdout_fd = out[1];
        ck_assert_msg(process_spawn(&p, &pid, &pidfd, &err) == 0, "%s", err.message);
        close(out[1]);
        while (len < sizeof(buf) - 1 && (n = read(out[0], buf + len, sizeof(buf) - 1 - len)) > 0)
                len += (size_t) n;
        buf[len] = '\0';
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        ck_assert_msg(strstr(buf, "LC_ALL=C\nPATH=" PROCESS_ENV_PATH "\n"), "%s", buf);
        ck_assert_msg(!strstr(buf, "s3cret") && !strstr(buf, "NOTIFY_SOCKET"), "%s", buf);
        /* Each fd: 0 (/dev/null), 1 (our pipe), 2 (/dev/null); perl holds the fd directory open while it lists it.
         * The fd left without close-on-exec is not there. */
        ck_assert_msg(strstr(buf, "fd 0 /dev/null\n") && strstr(buf, "fd 1 pipe:") && strstr(buf, "fd 2 /dev/null\n"),
                      "%s", buf);
        for (char *l = strstr(buf, "fd "); l; l = strstr(l + 1, "\nfd ")) {
                int fd;
                char target[64];
                ck_assert_int_eq(sscanf(l[0] == '\n' ? l + 1 : l, "fd %d %63s", &fd, target), 2);
                ck_assert_msg(fd <= 2 || strncmp(target, "/proc/", 6) == 0, "fd %d (%s) reached the child:\n%s", fd,
                              target, buf);
        }
        close(out[0]);
        close(pidfd);
        close(leaked);
        unsetenv("HYDRA_TEST_PASSWORD");
        unsetenv("NOTIFY_SOCKET");
}
END_TEST

START_TEST(test_start_time_and_zombie) {
        char *argv[] = { (char *) "/bin/sleep", (char *) "30", NULL };
        uint64_t t1 = 0, t2 = 0;
        struct pollfd pfd;
        int pidfd;
        pid_t pid = spawn(argv, &pidfd);

        ck_assert_int_eq(process_get_start_time(pid, &t1), 0);
        ck_assert_int_eq(process_get_start_time(pid, &t2), 0);
        ck_assert_uint_gt(t1, 0);
        ck_assert_uint_eq(t1, t2);
        ck_assert_int_eq(process_pidfd_signal(pidfd, SIGTERM), 0);
        /* The pidfd turns readable when the process exits; unreaped, it is a zombie, which counts as gone. */
        pfd = (struct pollfd) { .fd = pidfd, .events = POLLIN };
        ck_assert_int_eq(poll(&pfd, 1, 10000), 1);
        ck_assert_int_eq(process_get_start_time(pid, &t2), -ESRCH);
        ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
        ck_assert_int_eq(process_get_start_time(pid, &t2), -ENOENT);
        close(pidfd);
}
END_TEST

/* A listening unix socket bound at dir/name; its path in ret_path. */
static int listen_at(const char *dir, const char *name, char *ret_path, size_t size) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        ck_assert_int_ge(fd, 0);
        (void) snprintf(ret_path, size, "%s/%s", dir, name);
        (void) snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", ret_path);
        ck_assert_int_eq(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        ck_assert_int_eq(listen(fd, 1), 0);
        return fd;
}

static pid_t spawn_holding(char *const *argv, int fd, const ProcessUser *user, int *ret_pidfd) {
        ProcessSpawn p = { .path = argv[0], .argv = argv, .pass_fds = &fd, .n_pass_fds = 1, .stdout_fd = -1,
                           .stderr_fd = -1, .user = user };
        HydraError err;
        pid_t pid = 0;

        hydra_error_clear(&err);
        ck_assert_msg(process_spawn(&p, &pid, ret_pidfd, &err) == 0, "%s", err.message);
        return pid;
}

/* An unrecorded QEMU is the process of our binary that holds, as fd 3, the socket bound at our QMP path (issue 13:
 * it replaces issue 9's match on the -chardev argument, which an fd-passed console no longer has). */
START_TEST(test_find_by_socket) {
        char dir[] = "/tmp/test-process-XXXXXX", path[256], other_path[256];
        char *argv[] = { (char *) PERL, (char *) "-e", (char *) "sleep 30", NULL };
        _cleanup_free_ char *perl = realpath(PERL, NULL), *sh = realpath("/bin/sh", NULL);
        const uid_t me[] = { geteuid() }, nobody[] = { 65534 };
        int pidfd, other_pidfd, fd, other_fd, unpassed_fd;
        pid_t pid, other;

        ck_assert_ptr_nonnull(mkdtemp(dir));
        ck_assert_ptr_nonnull(perl);
        ck_assert_ptr_nonnull(sh);
        fd = listen_at(dir, "qmp.sock", path, sizeof(path));
        other_fd = listen_at(dir, "other.sock", other_path, sizeof(other_path));
        pid = spawn_holding(argv, fd, NULL, &pidfd);
        other = spawn_holding(argv, other_fd, NULL, &other_pidfd); /* perl too, with another socket as fd 3 */

        /* spawn returns once the child has exec'd (the error pipe closes at exec). */
        ck_assert_int_eq(process_find_by_socket(perl, 3, path, me, 1), pid);
        ck_assert_int_eq(process_find_by_socket(perl, 3, other_path, me, 1), other);
        ck_assert_int_eq(process_find_by_socket(sh, 3, path, me, 1), 0);   /* not our binary */
        ck_assert_int_eq(process_find_by_socket(perl, 3, path, nobody, 1), 0); /* not a uid we run QEMU as */
        ck_assert_int_eq(process_find_by_socket(perl, 4, path, me, 1), 0); /* held, but not as that fd */
        /* A socket bound at a path nobody was given: even we, who hold it, are no match. */
        (void) snprintf(other_path, sizeof(other_path), "%s/unpassed.sock", dir);
        unpassed_fd = listen_at(dir, "unpassed.sock", other_path, sizeof(other_path));
        ck_assert_int_eq(process_find_by_socket(perl, 3, other_path, me, 1), 0);
        ck_assert_int_eq(process_find_by_socket(perl, 3, "/nonexistent/qmp.sock", me, 1), 0);

        kill_and_reap(pid, pidfd);
        ck_assert_int_eq(process_find_by_socket(perl, 3, path, me, 1), 0);
        kill_and_reap(other, other_pidfd);
        close(fd);
        close(other_fd);
        close(unpassed_fd);
        (void) unlink(path);
        (void) unlink(other_path);
        (void) snprintf(path, sizeof(path), "%s/other.sock", dir);
        (void) unlink(path);
        ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

/* Read a "Key:\tvalue" line of /proc/PID/status. */
static void status_line(pid_t pid, const char *key, char *buf, size_t size) {
        char path[64], line[256];
        FILE *f;

        (void) snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
        f = fopen(path, "re");
        ck_assert_ptr_nonnull(f);
        buf[0] = '\0';
        while (fgets(line, sizeof(line), f))
                if (strncmp(line, key, strlen(key)) == 0 && line[strlen(key)] == ':') {
                        const char *v = line + strlen(key) + 1;

                        v += strspn(v, " \t");
                        (void) snprintf(buf, size, "%.*s", (int) strcspn(v, "\n"), v);
                }
        fclose(f);
}

/* QEMU as hydrad.conf's qemu_user: the child switches uid, gid and groups before exec, exactly to those given
 * (nothing of ours left), and an unrecorded QEMU of that user is still found by its socket. */
START_TEST(test_spawn_as_user) {
        char dir[] = "/tmp/test-process-XXXXXX", path[256], buf[256];
        char *argv[] = { (char *) PERL, (char *) "-e", (char *) "sleep 30", NULL };
        _cleanup_free_ char *perl = realpath(PERL, NULL);
        const gid_t groups[] = { 65534, 100 };
        ProcessUser user = { .uid = 65534, .gid = 65534, .groups = groups, .n_groups = ELEMENTSOF(groups) };
        const uid_t me[] = { geteuid() }, both[] = { geteuid(), 65534 };
        int pidfd, fd;
        pid_t pid;

        if (geteuid() != 0) {
                fprintf(stderr, "test_process: the qemu_user case needs root, not run\n");
                return;
        }
        ck_assert_ptr_nonnull(mkdtemp(dir));
        fd = listen_at(dir, "qmp.sock", path, sizeof(path));
        pid = spawn_holding(argv, fd, &user, &pidfd);
        status_line(pid, "Uid", buf, sizeof(buf));
        ck_assert_str_eq(buf, "65534\t65534\t65534\t65534");
        status_line(pid, "Gid", buf, sizeof(buf));
        ck_assert_str_eq(buf, "65534\t65534\t65534\t65534");
        status_line(pid, "Groups", buf, sizeof(buf));
        ck_assert_str_eq(buf, "100 65534 ");
        ck_assert_int_eq(process_find_by_socket(perl, 3, path, me, 1), 0);  /* not a uid given */
        ck_assert_int_eq(process_find_by_socket(perl, 3, path, both, 2), pid);
        kill_and_reap(pid, pidfd);
        close(fd);
        (void) unlink(path);
        ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

/* $PATH in order, skipping an empty entry, a directory and a file that is not executable of the same name. */
START_TEST(test_find_binary) {
        char dir[] = "/tmp/test-process-XXXXXX", path[512];
        _cleanup_free_ char *found = NULL, *plain = NULL, *exe = NULL, *sub = NULL;
        const char *old = getenv("PATH");
        _cleanup_free_ char *saved = old ? strdup(old) : NULL;
        int fd;

        ck_assert_ptr_nonnull(mkdtemp(dir));
        ck_assert_int_ge(asprintf(&sub, "%s/a", dir), 0);
        ck_assert_int_eq(mkdir(sub, 0755), 0);
        ck_assert_int_ge(asprintf(&plain, "%s/a/hydra-tool", dir), 0);
        ck_assert_int_ge(fd = open(plain, O_CREAT | O_WRONLY | O_CLOEXEC, 0644), 0);
        close(fd);
        ck_assert_int_ge(asprintf(&exe, "%s/hydra-tool", dir), 0);
        ck_assert_int_ge(fd = open(exe, O_CREAT | O_WRONLY | O_CLOEXEC, 0755), 0);
        close(fd);

        /* dir/a has a plain file, dir itself a directory a/ ... and the executable. */
        (void) snprintf(path, sizeof(path), "::%s:%s/nonexistent:%s", sub, dir, dir);
        ck_assert_int_eq(setenv("PATH", path, 1), 0);
        ck_assert_int_eq(process_find_binary("hydra-tool", &found), 0);
        ck_assert_str_eq(found, exe);
        ck_assert_int_eq(process_find_binary("hydra-no-such-tool", &found), -ENOENT);
        ck_assert_int_eq(process_find_binary("a", &found), -ENOENT);      /* a directory, not a program */
        /* With a slash: that file or nothing. */
        ck_assert_int_eq(process_find_binary(plain, &found), -EACCES);
        ck_assert_int_eq(process_find_binary("/nonexistent/hydra-tool", &found), -ENOENT);

        if (saved)
                ck_assert_int_eq(setenv("PATH", saved, 1), 0);
        (void) unlink(plain);
        (void) unlink(exe);
        (void) rmdir(sub);
        (void) rmdir(dir);
}
END_TEST

static bool status_mask_is_empty(pid_t pid, const char *field) {
        char path[64], line[256];
        bool empty = false;
        FILE *f;

        (void) snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
        f = fopen(path, "re");
        ck_assert_ptr_nonnull(f);
        while (fgets(line, sizeof(line), f))
                if (strncmp(line, field, strlen(field)) == 0)
                        empty = strspn(line + strlen(field), "\t0") == strlen(line + strlen(field)) - 1;
        fclose(f);
        return empty;
}

/* What we block or ignore is not inherited, and the child leads a session of its own. */
START_TEST(test_clean_signals_and_session) {
        char *argv[] = { (char *) "/bin/sleep", (char *) "30", NULL };
        struct sigaction ign = { .sa_handler = SIG_IGN };
        char path[64], stat[512];
        sigset_t mask;
        int pidfd, sid = 0;
        pid_t pid;
        FILE *f;

        sigemptyset(&mask);
        sigaddset(&mask, SIGUSR1);
        sigaddset(&mask, SIGCHLD);
        ck_assert_int_eq(sigprocmask(SIG_BLOCK, &mask, NULL), 0);
        ck_assert_int_eq(sigaction(SIGUSR2, &ign, NULL), 0);
        ck_assert(!status_mask_is_empty(getpid(), "SigBlk:"));
        ck_assert(!status_mask_is_empty(getpid(), "SigIgn:"));

        pid = spawn(argv, &pidfd);
        ck_assert_msg(status_mask_is_empty(pid, "SigBlk:"), "the child inherited a blocked signal");
        ck_assert_msg(status_mask_is_empty(pid, "SigIgn:"), "the child inherited an ignored signal");
        (void) snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
        f = fopen(path, "re");
        ck_assert_ptr_nonnull(f);
        ck_assert_ptr_nonnull(fgets(stat, sizeof(stat), f));
        fclose(f);
        /* pid (comm) state ppid pgrp session: comm is "sleep", no spaces or parentheses in it. */
        ck_assert_int_eq(sscanf(strrchr(stat, ')') + 1, " %*c %*d %*d %d", &sid), 1);
        ck_assert_int_eq(sid, pid);
        kill_and_reap(pid, pidfd);
}
END_TEST

int main(void) {
        Suite *s = suite_create("process");
        TCase *tc = tcase_create("core");
        SRunner *sr;
        int failed;

        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_exec_failure_reported);
        tcase_add_test(tc, test_pass_fds_and_stdio);
        tcase_add_test(tc, test_environment_and_fds_cleared);
        tcase_add_test(tc, test_start_time_and_zombie);
        tcase_add_test(tc, test_find_by_socket);
        tcase_add_test(tc, test_spawn_as_user);
        tcase_add_test(tc, test_find_binary);
        tcase_add_test(tc, test_clean_signals_and_session);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
