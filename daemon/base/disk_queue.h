/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "error.h"

/* The disk work of the loop, in order, on a thread of its own: atomic record writes (each an fsync of the file and
 * of its directory: 7-30 ms here), removals, rm -rf of a VM's directories. The loop queues and goes on; each job's
 * completion comes back on the loop. Jobs run one at a time in the order queued, so a record replaced twice ends
 * as the second, and a removal queued after a write wins. The owner can ask whether everything queued is durable
 * (disk_queue_idle) and is told when it becomes so (the idle callback), which is how a step that must follow a
 * durable record waits for it.
 *
 * The job function runs on the queue's thread: it touches only its argument and the files named in it. */

typedef struct DiskQueue DiskQueue;

/* On the queue's thread. Returns >= 0 or -errno with err set. */
typedef int (*disk_job_run_t)(void *arg, HydraError *err);
/* On the loop, once per job: r and err as the job returned them. */
typedef void (*disk_job_done_t)(int r, const HydraError *err, void *userdata);
/* On the loop, after the last queued job's done callback, when nothing is left queued or running. */
typedef void (*disk_queue_idle_t)(DiskQueue *q, void *userdata);

int disk_queue_new(sd_event *event, const char *description, disk_queue_idle_t idle, void *userdata,
                   DiskQueue **ret);
/* Runs what is still queued (blocking: for hydrad's exit, so that no record is lost), then frees. No callback
 * follows. Accepts NULL. */
DiskQueue *disk_queue_free(DiskQueue *q);

/* Queues run(arg); free_arg (may be NULL) frees arg on the loop after done (may be NULL). Returns 0 or -ENOMEM
 * (then arg is freed and nothing is queued). */
int disk_queue_call(DiskQueue *q, disk_job_run_t run, void *arg, void (*free_arg)(void *arg), disk_job_done_t done,
                    void *userdata);

/* store_write_atomic(dir, name, data) with a copy of data. */
int disk_queue_replace(DiskQueue *q, const char *dir, const char *name, const void *data, size_t size, mode_t mode,
                       disk_job_done_t done, void *userdata);
/* store_remove(dir, name). */
int disk_queue_remove(DiskQueue *q, const char *dir, const char *name, disk_job_done_t done, void *userdata);
/* rm_rf(path). */
int disk_queue_rm_rf(DiskQueue *q, const char *path, disk_job_done_t done, void *userdata);

/* Nothing queued, running, or waiting for its done callback. */
bool disk_queue_idle(const DiskQueue *q);
