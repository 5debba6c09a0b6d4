/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

/* Runs one function on a thread of its own and delivers its completion on the sd-event loop, so that CPU-heavy
 * or large-file work (unpacking an image, copying a firmware vars file) never blocks the loop.
 *
 * The thread starts with every signal blocked: signals stay with the loop thread. The job function touches
 * nothing but its own job and the files it was given; it publishes progress with worker_set_progress() and polls
 * worker_cancelled() between blocks, often enough to notice within ~100 ms.
 *
 * The loop side: an eventfd watched with sd_event_add_io carries the completion; a 250 ms timer samples the
 * progress atomics. Callbacks run on the loop only. The Worker is freed right after its done callback returns,
 * or by worker_cancel(); a Worker * is valid until then. */

typedef struct Worker Worker;

/* On the worker thread. Returns >= 0 or -errno; the value is handed to the done callback. */
typedef int (*worker_run_t)(Worker *w, void *userdata);
/* On the loop: every 250 ms while the values grow, and once more before done if they changed since. */
typedef void (*worker_progress_t)(Worker *w, uint64_t done, uint64_t total, void *userdata);
/* On the loop, exactly once, unless the worker was cancelled. */
typedef void (*worker_done_t)(Worker *w, int r, void *userdata);

/* Starts run(w, userdata) on a new thread. progress may be NULL; ret may be NULL if the caller never cancels.
 * Returns 0 or -errno (then no callback follows). */
int worker_start(sd_event *event, const char *description, worker_run_t run, worker_progress_t progress,
                 worker_done_t done, void *userdata, Worker **ret);

/* On the loop: asks the job to stop, waits for the thread, frees the Worker. No callback follows. Accepts NULL.
 * Called from the Worker's own done callback it does nothing (the Worker is freed when the callback returns);
 * from its own progress callback it suppresses the done callback. Whatever the job does on its way out
 * (removing partial output) is done when this returns. */
void worker_cancel(Worker *w);

/* On the worker thread. */
bool worker_cancelled(Worker *w);
void worker_set_progress(Worker *w, uint64_t done, uint64_t total);
