/* SPDX-License-Identifier: MIT */
/* process.c with real processes: spawn (an exec failure reported with its errno, fds passed as 3, 4, ..., a
 * setsid'd child with stdin from /dev/null and no blocked or ignored signal of ours), the $PATH search, the
 * start-time identity (a zombie reads as gone), signals through the pidfd, and finding an unrecorded QEMU by its
 * exact option (issue 9, item 3): the executable, the uid and the whole argument must all match. perl stands in
 * for QEMU: it runs with any trailing arguments. */
#include <check.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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

START_TEST(test_find_by_option) {
        const char *value = "socket,id=console,path=/run/hydra-test/isolated/qemu-console.sock,server=on,wait=off";
        char *argv[] = { (char *) PERL, (char *) "-e", (char *) "sleep 30", (char *) "--", (char *) "-chardev",
                         (char *) value, NULL };
        _cleanup_free_ char *perl = realpath(PERL, NULL), *other = realpath("/bin/sh", NULL), *longer = NULL;
        int pidfd;
        pid_t pid = spawn(argv, &pidfd);

        ck_assert_ptr_nonnull(perl);
        ck_assert_ptr_nonnull(other);
        /* perl may not have exec'd yet when spawn returns: the error pipe closes at exec, so it has. */
        ck_assert_int_eq(process_find_by_option(perl, "-chardev", value), pid);
        ck_assert_int_eq(process_find_by_option(other, "-chardev", value), 0);
        ck_assert_int_ge(asprintf(&longer, "%s,x=y", value), 0);
        ck_assert_int_eq(process_find_by_option(perl, "-chardev", longer), 0);
        ck_assert_int_eq(process_find_by_option(perl, "-chardev", "socket,id=console"), 0);
        ck_assert_int_eq(process_find_by_option(perl, "-serial", value), 0);
        /* The option's value must follow the option: the path alone, as a value of -e, is no match. */
        ck_assert_int_eq(process_find_by_option(perl, "-e", value), 0);
        kill_and_reap(pid, pidfd);
        ck_assert_int_eq(process_find_by_option(perl, "-chardev", value), 0);
}
END_TEST

static bool wait_exe(pid_t pid, const char *exe) {
        char path[64], target[PATH_MAX + 1];

        (void) snprintf(path, sizeof(path), "/proc/%d/exe", (int) pid);
        for (int i = 0; i < 500; i++) {
                ssize_t n = readlink(path, target, sizeof(target) - 1);

                if (n > 0) {
                        target[n] = '\0';
                        if (strcmp(target, exe) == 0)
                                return true;
                }
                usleep(10000);
        }
        return false;
}

/* Another user's process with our exact arguments is not ours. */
START_TEST(test_find_by_option_other_uid) {
        const char *value = "socket,id=console,path=/run/hydra-test/host/qemu-console.sock,server=on,wait=off";
        char *argv[] = { (char *) "/usr/bin/setpriv", (char *) "--reuid=65534", (char *) "--regid=65534",
                         (char *) "--clear-groups", (char *) PERL, (char *) "-e", (char *) "sleep 30", (char *) "--",
                         (char *) "-chardev", (char *) value, NULL };
        _cleanup_free_ char *perl = realpath(PERL, NULL);
        int pidfd;
        pid_t pid;

        if (geteuid() != 0 || access(argv[0], X_OK) < 0) {
                fprintf(stderr, "test_process: the other-uid case needs root and setpriv, not run\n");
                return;
        }
        pid = spawn(argv, &pidfd);
        /* setpriv execs perl in the same process: wait until it has, so that the check below means something. */
        ck_assert_msg(wait_exe(pid, perl), "the stand-in never became perl");
        ck_assert_int_eq(process_find_by_option(perl, "-chardev", value), 0);
        kill_and_reap(pid, pidfd);
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
        tcase_add_test(tc, test_find_by_option);
        tcase_add_test(tc, test_find_by_option_other_uid);
        tcase_add_test(tc, test_find_binary);
        tcase_add_test(tc, test_clean_signals_and_session);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
