/* SPDX-License-Identifier: MIT */
/* disk_queue.c: jobs run in the order queued, on a thread of their own (the loop keeps running while one blocks),
 * each done callback on the loop in order, the idle callback once everything queued is durable, errors carried
 * back with their message, and a free that runs what is left before it returns. A real sd-event loop, real files. */
#include <check.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "disk_queue.h"
#include "store.h"

static char dir[] = "/tmp/hydra-test-diskq.XXXXXX";
static sd_event *event;

static void setup(void) {
        strcpy(dir, "/tmp/hydra-test-diskq.XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(dir));
        ck_assert_int_ge(sd_event_new(&event), 0);
}

static void teardown(void) {
        event = sd_event_unref(event);
        ck_assert_int_eq(rm_rf(dir), 0);
}

static char *read_file(const char *name) {
        static char buf[256];
        void *data = NULL;
        size_t size;

        if (store_read(dir, name, sizeof(buf) - 1, &data, &size, NULL) < 0)
                return NULL;
        memcpy(buf, data, size);
        buf[size] = '\0';
        free(data);
        return buf;
}

typedef struct Log {
        char order[64];   /* one letter per done callback, "I" for idle */
        int results[16];
        char messages[16][1100];
        unsigned n;
        bool exit_on_idle;
} Log;

static void on_done(int r, const HydraError *err, void *userdata) {
        Log *log = userdata;

        ck_assert_uint_lt(log->n, 16);
        log->results[log->n] = r;
        (void) snprintf(log->messages[log->n], sizeof(log->messages[0]), "%s", r < 0 ? err->message : "");
        log->order[strlen(log->order)] = (char) ('0' + log->n);
        log->n++;
}

static void on_idle(DiskQueue *q, void *userdata) {
        Log *log = userdata;

        ck_assert(disk_queue_idle(q));
        log->order[strlen(log->order)] = 'I';
        if (log->exit_on_idle)
                (void) sd_event_exit(event, 0);
}

START_TEST(test_order_and_idle) {
        Log log = { .exit_on_idle = true };
        DiskQueue *q;

        ck_assert_int_eq(disk_queue_new(event, "test-disk", on_idle, &log, &q), 0);
        ck_assert(disk_queue_idle(q));
        ck_assert_int_eq(disk_queue_replace(q, dir, "rec", "one", 3, 0600, on_done, &log), 0);
        ck_assert_int_eq(disk_queue_replace(q, dir, "rec", "two", 3, 0600, on_done, &log), 0);
        ck_assert_int_eq(disk_queue_remove(q, dir, "rec", on_done, &log), 0);
        ck_assert_int_eq(disk_queue_replace(q, dir, "rec", "three", 5, 0640, on_done, &log), 0);
        ck_assert_int_eq(disk_queue_replace(q, dir, "other", "x", 1, 0600, on_done, &log), 0);
        ck_assert(!disk_queue_idle(q));

        ck_assert_int_ge(sd_event_loop(event), 0);
        /* Every done in the order queued, then idle once. */
        ck_assert_str_eq(log.order, "01234I");
        for (unsigned i = 0; i < 5; i++)
                ck_assert_int_eq(log.results[i], 0);
        ck_assert_str_eq(read_file("rec"), "three");
        ck_assert_str_eq(read_file("other"), "x");
        {
                char *p;
                struct stat st;

                ck_assert_int_ge(asprintf(&p, "%s/rec", dir), 0);
                ck_assert_int_eq(stat(p, &st), 0);
                ck_assert_int_eq(st.st_mode & 07777, 0640);
                free(p);
        }
        ck_assert(disk_queue_idle(q));
        disk_queue_free(q);
}
END_TEST

/* A job that blocks holds the queue's thread, not the loop: a timer due 20 ms later fires while it still runs. */
static pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;

static int blocking_job(void *arg, HydraError *err) {
        pthread_mutex_lock(&gate);   /* held by the test until the loop has proved it runs */
        pthread_mutex_unlock(&gate);
        return 7;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Log *log = userdata;

        log->order[strlen(log->order)] = 'T';
        pthread_mutex_unlock(&gate);
        return 0;
}

START_TEST(test_loop_not_blocked) {
        Log log = { .exit_on_idle = true };
        DiskQueue *q;

        pthread_mutex_lock(&gate);
        ck_assert_int_eq(disk_queue_new(event, "test-disk", on_idle, &log, &q), 0);
        ck_assert_int_eq(disk_queue_call(q, blocking_job, NULL, NULL, on_done, &log), 0);
        ck_assert_int_ge(sd_event_add_time_relative(event, NULL, CLOCK_MONOTONIC, 20 * 1000, 0, on_timer, &log), 0);
        ck_assert_int_ge(sd_event_loop(event), 0);
        /* The timer ran while the job was blocked (it is what unblocked it), then the job's done, then idle. */
        ck_assert_str_eq(log.order, "T0I");
        ck_assert_int_eq(log.results[0], 7);
        disk_queue_free(q);
}
END_TEST

START_TEST(test_errors_carried_back) {
        Log log = { .exit_on_idle = true };
        DiskQueue *q;
        char *missing, *tree, *file;

        ck_assert_int_ge(asprintf(&missing, "%s/no/such/dir", dir), 0);
        ck_assert_int_ge(asprintf(&tree, "%s/tree", dir), 0);
        ck_assert_int_ge(asprintf(&file, "%s/tree/a/b", dir), 0);
        ck_assert_int_eq(mkdir_p(file, 0700), 0);

        ck_assert_int_eq(disk_queue_new(event, "test-disk", on_idle, &log, &q), 0);
        ck_assert_int_eq(disk_queue_replace(q, missing, "rec", "x", 1, 0600, on_done, &log), 0);
        ck_assert_int_eq(disk_queue_rm_rf(q, tree, on_done, &log), 0);
        ck_assert_int_eq(disk_queue_remove(q, dir, "never-was", on_done, &log), 0);
        ck_assert_int_ge(sd_event_loop(event), 0);

        ck_assert_str_eq(log.order, "012I");
        ck_assert_int_eq(log.results[0], -ENOENT);
        ck_assert_msg(strstr(log.messages[0], missing), "the error names the directory: %s", log.messages[0]);
        ck_assert_int_eq(log.results[1], 0);
        ck_assert_int_eq(access(tree, F_OK), -1);
        ck_assert_int_eq(log.results[2], 0); /* absent is fine */
        disk_queue_free(q);
        free(missing);
        free(tree);
        free(file);
}
END_TEST

/* hydrad's exit: what was queued is written before free returns, and no callback follows. */
START_TEST(test_free_drains) {
        Log log = {};
        DiskQueue *q;

        ck_assert_int_eq(disk_queue_new(event, "test-disk", on_idle, &log, &q), 0);
        for (int i = 0; i < 10; i++) {
                char v[8];

                (void) snprintf(v, sizeof(v), "v%d", i);
                ck_assert_int_eq(disk_queue_replace(q, dir, "rec", v, strlen(v), 0600, on_done, &log), 0);
        }
        disk_queue_free(q);
        ck_assert_str_eq(read_file("rec"), "v9");
        ck_assert_str_eq(log.order, "");
        /* The loop has nothing left of the queue. */
        ck_assert_int_eq(sd_event_run(event, 0), 0);
}
END_TEST

static Suite *disk_queue_suite(void) {
        Suite *s = suite_create("disk_queue");
        TCase *tc = tcase_create("queue");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_order_and_idle);
        tcase_add_test(tc, test_loop_not_blocked);
        tcase_add_test(tc, test_errors_carried_back);
        tcase_add_test(tc, test_free_drains);
        suite_add_tcase(s, tc);
        return s;
}

int main(void) {
        SRunner *sr = srunner_create(disk_queue_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
