/* SPDX-License-Identifier: MIT */
/* The worker helper on a private sd_event: where callbacks run, what the thread's signal mask is, progress,
 * cancellation (before the job starts, while it runs, from inside callbacks) and many jobs at once. */
#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#include "macro.h"
#include "worker.h"

#define USEC_PER_MSEC 1000ULL
#define RUN_BOUND_USEC (20ULL * 1000000ULL) /* no wait in this file may take longer */

typedef enum JobKind {
        JOB_RETURN,          /* returns id after sleep_ms */
        JOB_UNTIL_CANCELLED, /* spins (1 ms steps) until cancelled */
        JOB_PROGRESS,        /* reports 0..100 over ~600 ms */
} JobKind;

typedef struct Job {
        JobKind kind;
        int id;
        int sleep_ms;
        bool cancel_in_done;
        bool cancel_in_progress;

        /* Set by the thread. */
        atomic_bool started;
        atomic_bool finished;
        pthread_t run_thread;
        bool signals_blocked;

        /* Set on the loop. */
        Worker *w;
        int n_done;
        int r;
        pthread_t done_thread;
        int n_progress;
        uint64_t last_done, last_total;
        bool progress_went_back;
        bool progress_after_done;
} Job;

static sd_event *event;
static pthread_t loop_thread;
static atomic_int running, max_running;

static void setup(void) {
        ck_assert_int_ge(sd_event_new(&event), 0);
        loop_thread = pthread_self();
        running = max_running = 0;
}

static void teardown(void) {
        event = sd_event_unref(event);
}

static uint64_t now_usec(void) {
        struct timespec ts;

        ck_assert_int_eq(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

static void sleep_msec(unsigned ms) {
        struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000L };

        while (nanosleep(&ts, &ts) < 0)
                ;
}

static void run_until(const int *counter, int value) {
        uint64_t deadline = now_usec() + RUN_BOUND_USEC;

        while (*counter < value) {
                ck_assert_msg(now_usec() < deadline, "timed out waiting for a callback");
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
        }
}

static void run_for(uint64_t usec) {
        uint64_t end = now_usec() + usec;

        while (now_usec() < end)
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
}

/* --- the job --- */

static int job_run(Worker *w, void *userdata) {
        Job *j = userdata;
        sigset_t mask;
        int n, r = 0;

        /* No ck_assert here: Check's failure path is not for other threads. */
        j->run_thread = pthread_self();
        j->signals_blocked = pthread_sigmask(SIG_SETMASK, NULL, &mask) == 0 && sigismember(&mask, SIGTERM) == 1 && sigismember(&mask, SIGINT) == 1 &&
                             sigismember(&mask, SIGCHLD) == 1 && sigismember(&mask, SIGUSR1) == 1;
        atomic_store(&j->started, true);
        n = atomic_fetch_add(&running, 1) + 1;
        for (int m = atomic_load(&max_running); n > m && !atomic_compare_exchange_weak(&max_running, &m, n);)
                ;

        switch (j->kind) {
        case JOB_RETURN:
                sleep_msec((unsigned) j->sleep_ms);
                r = j->id;
                break;
        case JOB_UNTIL_CANCELLED:
                while (!worker_cancelled(w))
                        sleep_msec(1);
                r = -ECANCELED;
                break;
        case JOB_PROGRESS:
                for (uint64_t i = 0; i <= 100; i++) {
                        if (worker_cancelled(w)) {
                                r = -ECANCELED;
                                break;
                        }
                        worker_set_progress(w, i, 100);
                        sleep_msec(6);
                }
                break;
        }

        atomic_fetch_sub(&running, 1);
        atomic_store(&j->finished, true);
        return r;
}

static void job_done(Worker *w, int r, void *userdata) {
        Job *j = userdata;

        ck_assert_ptr_eq(w, j->w);
        j->n_done++;
        j->r = r;
        j->done_thread = pthread_self();
        if (j->cancel_in_done)
                worker_cancel(w); /* a no-op here; the Worker is freed when we return */
}

static void job_progress(Worker *w, uint64_t done, uint64_t total, void *userdata) {
        Job *j = userdata;

        ck_assert(pthread_equal(pthread_self(), loop_thread));
        ck_assert_ptr_eq(w, j->w);
        if (j->n_done > 0)
                j->progress_after_done = true;
        if (j->n_progress > 0 && done < j->last_done)
                j->progress_went_back = true;
        j->n_progress++;
        j->last_done = done;
        j->last_total = total;
        if (j->cancel_in_progress)
                worker_cancel(w);
}

static void job_start(Job *j) {
        ck_assert_int_eq(worker_start(event, "test-job", job_run, j->kind == JOB_PROGRESS ? job_progress : NULL,
                                      job_done, j, &j->w),
                         0);
        ck_assert_ptr_nonnull(j->w);
}

/* --- tests --- */

START_TEST(test_done_on_loop_thread) {
        Job j = { .kind = JOB_RETURN, .id = 42, .sleep_ms = 20 };

        job_start(&j);
        run_until(&j.n_done, 1);

        ck_assert_int_eq(j.r, 42);
        ck_assert(pthread_equal(j.done_thread, loop_thread));
        ck_assert(!pthread_equal(j.run_thread, loop_thread));
        ck_assert_msg(j.signals_blocked, "the worker thread must start with every signal blocked");

        /* Exactly once. */
        run_for(100 * USEC_PER_MSEC);
        ck_assert_int_eq(j.n_done, 1);
}
END_TEST

START_TEST(test_bad_arguments) {
        Job j = { .kind = JOB_RETURN };
        Worker *w = NULL;

        ck_assert_int_eq(worker_start(NULL, "x", job_run, NULL, job_done, &j, &w), -EINVAL);
        ck_assert_int_eq(worker_start(event, "x", NULL, NULL, job_done, &j, &w), -EINVAL);
        ck_assert_int_eq(worker_start(event, "x", job_run, NULL, NULL, &j, &w), -EINVAL);
        ck_assert_ptr_null(w);
        worker_cancel(NULL);
}
END_TEST

/* Cancelled right after worker_start(): most jobs never get to run, and none reports. */
START_TEST(test_cancel_before_start) {
        Job jobs[32] = {};
        int n_started = 0;

        for (size_t i = 0; i < ELEMENTSOF(jobs); i++) {
                jobs[i] = (Job) { .kind = JOB_UNTIL_CANCELLED, .id = (int) i };
                job_start(&jobs[i]);
                worker_cancel(jobs[i].w);
        }
        for (size_t i = 0; i < ELEMENTSOF(jobs); i++) {
                /* worker_cancel() joined the thread: a job that started has finished. */
                ck_assert_int_eq(atomic_load(&jobs[i].started), atomic_load(&jobs[i].finished));
                n_started += atomic_load(&jobs[i].started);
        }
        ck_assert_int_le(n_started, (int) ELEMENTSOF(jobs));

        run_for(300 * USEC_PER_MSEC);
        for (size_t i = 0; i < ELEMENTSOF(jobs); i++)
                ck_assert_int_eq(jobs[i].n_done, 0);
}
END_TEST

START_TEST(test_cancel_running) {
        Job j = { .kind = JOB_UNTIL_CANCELLED };
        uint64_t t;

        job_start(&j);
        t = now_usec() + RUN_BOUND_USEC;
        while (!atomic_load(&j.started)) {
                ck_assert(now_usec() < t);
                run_for(USEC_PER_MSEC);
        }

        t = now_usec();
        worker_cancel(j.w);
        t = now_usec() - t;
        /* The job checks every millisecond; the margin is for loaded machines. */
        ck_assert_msg(t < 250 * USEC_PER_MSEC, "cancel took %llu us", (unsigned long long) t);
        ck_assert(atomic_load(&j.finished));

        run_for(300 * USEC_PER_MSEC);
        ck_assert_int_eq(j.n_done, 0);
}
END_TEST

/* The job finished, its completion is queued on the loop, and it is cancelled before the loop runs. */
START_TEST(test_cancel_after_finish) {
        Job j = { .kind = JOB_RETURN, .id = 7 };
        uint64_t t = now_usec() + RUN_BOUND_USEC;

        job_start(&j);
        while (!atomic_load(&j.finished))
                ck_assert(now_usec() < t);
        worker_cancel(j.w);

        run_for(200 * USEC_PER_MSEC);
        ck_assert_int_eq(j.n_done, 0);
}
END_TEST

START_TEST(test_parallel) {
        Job jobs[64] = {};
        int n_done = 0;
        uint64_t t = now_usec();

        for (size_t i = 0; i < ELEMENTSOF(jobs); i++) {
                jobs[i] = (Job) { .kind = JOB_RETURN, .id = (int) i, .sleep_ms = 50 };
                job_start(&jobs[i]);
        }
        while (n_done < (int) ELEMENTSOF(jobs)) {
                ck_assert(now_usec() < t + RUN_BOUND_USEC);
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
                n_done = 0;
                for (size_t i = 0; i < ELEMENTSOF(jobs); i++)
                        n_done += jobs[i].n_done;
        }
        t = now_usec() - t;

        for (size_t i = 0; i < ELEMENTSOF(jobs); i++) {
                ck_assert_int_eq(jobs[i].n_done, 1);
                ck_assert_int_eq(jobs[i].r, (int) i);
                ck_assert(pthread_equal(jobs[i].done_thread, loop_thread));
        }
        ck_assert_int_gt(atomic_load(&max_running), 1);
        /* One after the other would take 3.2 s. */
        ck_assert_msg(t < 2000 * USEC_PER_MSEC, "64 jobs of 50 ms took %llu ms", (unsigned long long) (t / 1000));
}
END_TEST

START_TEST(test_progress) {
        Job j = { .kind = JOB_PROGRESS };

        job_start(&j);
        run_until(&j.n_done, 1);

        ck_assert_int_eq(j.r, 0);
        ck_assert_int_ge(j.n_progress, 2); /* ~600 ms of work, a sample every 250 ms, and the final one */
        ck_assert(!j.progress_went_back);
        ck_assert(!j.progress_after_done);
        ck_assert_uint_eq(j.last_done, 100);
        ck_assert_uint_eq(j.last_total, 100);
}
END_TEST

START_TEST(test_cancel_in_done) {
        Job j = { .kind = JOB_RETURN, .id = 3, .cancel_in_done = true };

        job_start(&j);
        run_until(&j.n_done, 1);
        run_for(100 * USEC_PER_MSEC);
        ck_assert_int_eq(j.n_done, 1);
        ck_assert_int_eq(j.r, 3);
}
END_TEST

/* Cancelling from a progress callback suppresses done, whether the job still runs or has just finished. */
START_TEST(test_cancel_in_progress) {
        Job j = { .kind = JOB_PROGRESS, .cancel_in_progress = true };

        job_start(&j);
        run_until(&j.n_progress, 1);
        run_for(800 * USEC_PER_MSEC);
        ck_assert_int_eq(j.n_progress, 1);
        ck_assert_int_eq(j.n_done, 0);
        ck_assert(atomic_load(&j.finished));
}
END_TEST

static Suite *worker_suite(void) {
        Suite *s = suite_create("worker");
        TCase *tc = tcase_create("worker");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_done_on_loop_thread);
        tcase_add_test(tc, test_bad_arguments);
        tcase_add_test(tc, test_cancel_before_start);
        tcase_add_test(tc, test_cancel_running);
        tcase_add_test(tc, test_cancel_after_finish);
        tcase_add_test(tc, test_parallel);
        tcase_add_test(tc, test_progress);
        tcase_add_test(tc, test_cancel_in_done);
        tcase_add_test(tc, test_cancel_in_progress);
        suite_add_tcase(s, tc);
        return s;
}

int main(void) {
        SRunner *sr = srunner_create(worker_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
