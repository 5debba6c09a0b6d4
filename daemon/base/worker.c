/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#include "log.h"
#include "macro.h"
#include "worker.h"

/* What the two threads share: the job function, its userdata and the eventfd are set before pthread_create()
 * and never change; cancel and the progress values are atomics; result is written by the thread before it
 * signals and read by the loop only after pthread_join(). Everything else belongs to the loop. */

#define WORKER_PROGRESS_USEC (250ULL * 1000ULL)
#define WORKER_PROGRESS_ACCURACY_USEC (10ULL * 1000ULL)

struct Worker {
        sd_event *event;
        sd_event_source *io;
        sd_event_source *timer;
        int efd;
        char *description;

        worker_run_t run;
        worker_progress_t progress;
        worker_done_t done;
        void *userdata;

        pthread_t thread;
        bool thread_started;
        bool joined;

        atomic_bool cancel;
        _Atomic uint64_t progress_done;
        _Atomic uint64_t progress_total;
        int result;

        /* Loop side. */
        uint64_t reported_done, reported_total;
        bool dispatching;      /* inside on_worker_io's callbacks: worker_cancel() must not free us */
        bool cancel_requested; /* worker_cancel() was called from the final progress callback */
};

static Worker *worker_free(Worker *w) {
        if (!w)
                return NULL;

        if (w->thread_started && !w->joined) {
                atomic_store(&w->cancel, true);
                (void) pthread_join(w->thread, NULL);
        }
        sd_event_source_disable_unref(w->io);
        sd_event_source_disable_unref(w->timer);
        safe_close(w->efd);
        sd_event_unref(w->event);
        free(w->description);
        free(w);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(Worker *, worker_free);

bool worker_cancelled(Worker *w) {
        return atomic_load_explicit(&w->cancel, memory_order_relaxed);
}

void worker_set_progress(Worker *w, uint64_t done, uint64_t total) {
        atomic_store_explicit(&w->progress_done, done, memory_order_relaxed);
        atomic_store_explicit(&w->progress_total, total, memory_order_relaxed);
}

static void *worker_thread(void *userdata) {
        Worker *w = userdata;
        char name[16];

        /* Shows in top -H and in gdb; the kernel allows 15 characters. */
        (void) snprintf(name, sizeof(name), "%s", w->description);
        (void) pthread_setname_np(pthread_self(), name);

        w->result = worker_cancelled(w) ? -ECANCELED : w->run(w, w->userdata);
        /* Only fails if the counter would overflow, which one write cannot do. */
        (void) eventfd_write(w->efd, 1);
        return NULL;
}

/* Returns true if there is something new to report. done never goes backwards. */
static bool worker_take_progress(Worker *w, uint64_t *ret_done, uint64_t *ret_total) {
        uint64_t done = atomic_load_explicit(&w->progress_done, memory_order_relaxed);
        uint64_t total = atomic_load_explicit(&w->progress_total, memory_order_relaxed);

        if (done < w->reported_done)
                done = w->reported_done;
        if (done == w->reported_done && total == w->reported_total)
                return false;
        *ret_done = w->reported_done = done;
        *ret_total = w->reported_total = total;
        return true;
}

static int on_progress_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Worker *w = userdata;
        uint64_t done, total;
        int r;

        r = sd_event_source_set_time_relative(s, WORKER_PROGRESS_USEC);
        if (r >= 0)
                r = sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        if (r < 0)
                log_debug_errno(r, "Worker '%s': cannot re-arm the progress timer, ignoring: %m", w->description);

        /* Last: the callback may cancel, which frees w. */
        if (worker_take_progress(w, &done, &total))
                w->progress(w, done, total, w->userdata);
        return 0;
}

static int on_worker_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Worker *w = userdata;
        uint64_t done, total;
        eventfd_t v;

        (void) eventfd_read(w->efd, &v);
        /* The thread's last act was to signal us: this join does not wait for anything but its return. */
        (void) pthread_join(w->thread, NULL);
        w->joined = true;
        w->io = sd_event_source_disable_unref(w->io);
        w->timer = sd_event_source_disable_unref(w->timer);

        w->dispatching = true;
        if (w->progress && worker_take_progress(w, &done, &total)) {
                w->progress(w, done, total, w->userdata);
                if (w->cancel_requested) {
                        worker_free(w);
                        return 0;
                }
        }
        w->done(w, w->result, w->userdata);
        worker_free(w);
        return 0;
}

int worker_start(sd_event *event, const char *description, worker_run_t run, worker_progress_t progress,
                 worker_done_t done, void *userdata, Worker **ret) {
        _cleanup_(worker_freep) Worker *w = NULL;
        sigset_t all, saved;
        int r;

        if (!event || !run || !done)
                return -EINVAL;

        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->efd = -EBADF;
        w->event = sd_event_ref(event);
        w->description = strdup(isempty(description) ? "worker" : description);
        if (!w->description)
                return -ENOMEM;
        w->run = run;
        w->progress = progress;
        w->done = done;
        w->userdata = userdata;

        w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (w->efd < 0)
                return -errno;
        r = sd_event_add_io(event, &w->io, w->efd, EPOLLIN, on_worker_io, w);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(w->io, w->description);

        if (progress) {
                r = sd_event_add_time_relative(event, &w->timer, CLOCK_MONOTONIC, WORKER_PROGRESS_USEC,
                                               WORKER_PROGRESS_ACCURACY_USEC, on_progress_timer, w);
                if (r < 0)
                        return r;
                (void) sd_event_source_set_description(w->timer, w->description);
        }

        /* The thread inherits our mask: block everything around pthread_create() so that signals keep going
         * to the loop thread. */
        sigfillset(&all);
        r = pthread_sigmask(SIG_SETMASK, &all, &saved);
        if (r != 0)
                return -r;
        r = pthread_create(&w->thread, NULL, worker_thread, w);
        (void) pthread_sigmask(SIG_SETMASK, &saved, NULL);
        if (r != 0)
                return -r;
        w->thread_started = true;

        if (ret)
                *ret = w;
        TAKE_PTR(w);
        return 0;
}

void worker_cancel(Worker *w) {
        if (!w)
                return;
        if (w->dispatching) {
                /* on_worker_io frees us once the callback returns. */
                w->cancel_requested = true;
                return;
        }
        worker_free(w);
}
