/* SPDX-License-Identifier: MIT */
/* child.c with real processes on a real sd_event loop: an exit status, a death by signal, stdout kept (up to its
 * cap), the tail of stderr, a cancel while the child runs (killed, then reaped by the loop, no callback), and a program that is
 * not there. SIGCHLD is blocked, as hydrad's main() blocks it. */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "child.h"
#include "macro.h"

#define USEC_PER_MSEC 1000ULL
#define USEC_PER_SEC 1000000ULL
#define RUN_BOUND_USEC (20 * USEC_PER_SEC)

static sd_event *event;

typedef struct Outcome {
        int calls;
        int code, signal;
        char *out;
        size_t out_len;
        char *err_tail;
        char message[sizeof(((HydraError *) NULL)->message)]; /* child_describe_failure's words */
} Outcome;

static void outcome_done(Outcome *o) {
        free(o->out);
        free(o->err_tail);
}

static void on_done(Child *c, const ChildResult *res, void *userdata) {
        Outcome *o = userdata;
        HydraError err;

        o->calls++;
        o->code = res->code;
        o->signal = res->signal;
        o->out = malloc(res->out_len + 1);
        ck_assert_ptr_nonnull(o->out);
        memcpy(o->out, res->out, res->out_len + 1);
        o->out_len = res->out_len;
        o->err_tail = strdup(res->err_tail);
        ck_assert_ptr_nonnull(o->err_tail);
        hydra_error_clear(&err);
        child_describe_failure("the tool", res, &err);
        (void) snprintf(o->message, sizeof(o->message), "%s", err.message);
}

static uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

static void setup(void) {
        ck_assert_int_ge(sd_event_new(&event), 0);
}

static void teardown(void) {
        event = sd_event_unref(event);
}

/* Runs sh -c script to its end on the loop. */
static void run_sh(const char *script, Outcome *o) {
        char *argv[] = { (char *) "sh", (char *) "-c", (char *) script, NULL };
        uint64_t deadline = now_usec() + RUN_BOUND_USEC;
        HydraError err;
        Child *c = NULL;

        hydra_error_clear(&err);
        ck_assert_msg(child_run(event, argv, on_done, o, &c, &err) == 0, "%s", err.message);
        ck_assert_ptr_nonnull(c);
        while (o->calls == 0) {
                ck_assert_msg(now_usec() < deadline, "the child never finished: %s", script);
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
        }
        ck_assert_int_eq(o->calls, 1);
}

START_TEST(test_success_captures_output) {
        Outcome o = {};

        run_sh("printf 'hello\\nworld'; echo 'a warning' >&2", &o);
        ck_assert_int_eq(o.code, 0);
        ck_assert_int_eq(o.signal, 0);
        ck_assert_uint_eq(o.out_len, strlen("hello\nworld"));
        ck_assert_str_eq(o.out, "hello\nworld");
        /* The trailing newline of stderr is removed. */
        ck_assert_str_eq(o.err_tail, "a warning");
        outcome_done(&o);
}
END_TEST

START_TEST(test_no_output) {
        Outcome o = {};

        run_sh("exit 0", &o);
        ck_assert_int_eq(o.code, 0);
        ck_assert_uint_eq(o.out_len, 0);
        ck_assert_str_eq(o.out, "");
        ck_assert_str_eq(o.err_tail, "");
        outcome_done(&o);
}
END_TEST

START_TEST(test_exit_code_and_message) {
        Outcome o = {};

        run_sh("echo 'first line' >&2; echo \"No such file: 'x'\" >&2; exit 3", &o);
        ck_assert_int_eq(o.code, 3);
        ck_assert_int_eq(o.signal, 0);
        ck_assert_str_eq(o.err_tail, "first line\nNo such file: 'x'");
        ck_assert_str_eq(o.message, "the tool exited with status 3: first line\nNo such file: 'x'");
        outcome_done(&o);
}
END_TEST

/* The cap is exact whatever the pipe's chunks: here the last chunk crosses it (1 MiB - 1 bytes, then, after a
 * pause so that they arrive apart, 10 more) and its first byte is kept. */
START_TEST(test_output_cap_exact) {
        Outcome o = {};

        run_sh("head -c 1048575 /dev/zero | tr '\\0' o; sleep 0.5; printf abcdefghij", &o);
        ck_assert_int_eq(o.code, 0);
        ck_assert_uint_eq(o.out_len, 1024 * 1024);
        ck_assert_uint_eq(strspn(o.out, "o"), 1024 * 1024 - 1);
        ck_assert_int_eq(o.out[1024 * 1024 - 1], 'a');
        outcome_done(&o);
}
END_TEST

START_TEST(test_killed_by_signal) {
        Outcome o = {};

        run_sh("kill -TERM $$", &o);
        ck_assert_int_eq(o.code, -1);
        ck_assert_int_eq(o.signal, SIGTERM);
        ck_assert_msg(strcmp(o.message, "the tool was killed by signal 15") == 0, "%s", o.message);
        outcome_done(&o);
}
END_TEST

/* A child that writes more than is kept is read to its end (it never blocks on a full pipe): stdout keeps its
 * first MiB, stderr its last 4 KiB, which hold the last line. */
START_TEST(test_large_output_capped) {
        Outcome o = {};

        run_sh("head -c 3000000 /dev/zero | tr '\\0' o; "
               "i=0; while [ $i -lt 2000 ]; do echo \"stderr line $i\" >&2; i=$((i+1)); done; exit 4", &o);
        ck_assert_int_eq(o.code, 4);
        ck_assert_uint_eq(o.out_len, 1024 * 1024);
        ck_assert_uint_eq(strlen(o.out), 1024 * 1024);
        ck_assert_uint_eq(strspn(o.out, "o"), 1024 * 1024);
        ck_assert_uint_le(strlen(o.err_tail), 4096);
        ck_assert_uint_gt(strlen(o.err_tail), 4000);
        ck_assert_msg(strstr(o.err_tail, "stderr line 1999") && !strstr(o.err_tail, "stderr line 0\n"), "%s",
                      o.err_tail);
        ck_assert_str_eq(o.err_tail + strlen(o.err_tail) - strlen("stderr line 1999"), "stderr line 1999");
        outcome_done(&o);
}
END_TEST

/* Cancelled while it runs: the process is killed, reaped by the loop, and done never runs. */
START_TEST(test_cancel_while_running) {
        char pidfile[] = "/tmp/test-child-XXXXXX", script[256];
        char *argv[] = { (char *) "sh", (char *) "-c", script, NULL };
        uint64_t deadline = now_usec() + RUN_BOUND_USEC;
        Outcome o = {};
        HydraError err;
        Child *c = NULL;
        pid_t pid = 0;
        int fd;

        fd = mkstemp(pidfile);
        ck_assert_int_ge(fd, 0);
        close(fd);
        (void) snprintf(script, sizeof(script), "echo $$ > %s.tmp && mv %s.tmp %s; exec sleep 30", pidfile, pidfile,
                        pidfile);
        (void) unlink(pidfile);
        hydra_error_clear(&err);
        ck_assert_msg(child_run(event, argv, on_done, &o, &c, &err) == 0, "%s", err.message);
        while (pid <= 0) {
                FILE *f = fopen(pidfile, "re");
                int v = 0;

                if (f) {
                        if (fscanf(f, "%d", &v) == 1)
                                pid = v;
                        fclose(f);
                }
                ck_assert_msg(now_usec() < deadline, "the child never wrote its pid");
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
        }
        (void) unlink(pidfile);
        ck_assert_int_eq(kill(pid, 0), 0);

        child_cancel(c);
        /* Killed at once, and reaped by the loop when it dies (child_cancel does not wait: a process in
         * uninterruptible I/O dies only when the I/O ends): not left a zombie. */
        deadline = now_usec() + RUN_BOUND_USEC;
        while (kill(pid, 0) == 0) {
                ck_assert_msg(now_usec() < deadline, "the cancelled child (pid %d) was never reaped", (int) pid);
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
        }
        ck_assert_int_eq(errno, ESRCH);
        for (int i = 0; i < 10; i++)
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
        ck_assert_int_eq(o.calls, 0);
        child_cancel(NULL);
}
END_TEST

START_TEST(test_missing_program) {
        char *argv[] = { (char *) "hydra-no-such-program", NULL };
        Outcome o = {};
        HydraError err;
        Child *c = NULL;

        hydra_error_clear(&err);
        ck_assert_int_eq(child_run(event, argv, on_done, &o, &c, &err), -ENOENT);
        ck_assert_ptr_null(c);
        ck_assert_int_eq(err.code, -ENOENT);
        ck_assert_msg(strstr(err.message, "'hydra-no-such-program'"), "%s", err.message);
        /* A path with a slash is not searched for: it must be there itself. */
        argv[0] = (char *) "/nonexistent/hydra-tool";
        hydra_error_clear(&err);
        ck_assert_int_eq(child_run(event, argv, on_done, &o, &c, &err), -ENOENT);
        ck_assert_ptr_null(c);
        ck_assert_msg(strstr(err.message, "/nonexistent/hydra-tool"), "%s", err.message);
        for (int i = 0; i < 5; i++)
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
        ck_assert_int_eq(o.calls, 0);
}
END_TEST

int main(void) {
        Suite *s = suite_create("child");
        TCase *tc = tcase_create("core");
        SRunner *sr;
        sigset_t mask;
        int failed;

        sigemptyset(&mask);
        sigaddset(&mask, SIGCHLD);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return EXIT_FAILURE;

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_success_captures_output);
        tcase_add_test(tc, test_no_output);
        tcase_add_test(tc, test_exit_code_and_message);
        tcase_add_test(tc, test_killed_by_signal);
        tcase_add_test(tc, test_large_output_capped);
        tcase_add_test(tc, test_output_cap_exact);
        tcase_add_test(tc, test_cancel_while_running);
        tcase_add_test(tc, test_missing_program);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
