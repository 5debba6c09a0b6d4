/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "fetch_meta.h"

/* The disk side of the downloader (fetch.c): one worker thread per Fetcher that does every write, hash, fsync,
 * rename and unlink of the cache, so that none of them stalls the sd-event loop (a disk may take tens of
 * milliseconds for an fsync, an unlink or rename of a large file frees its blocks, SHA-256 runs at about network
 * speed).
 *
 * Contract:
 * - A Sink is one cache entry as one Fetch sees it (CACHE_DIR/<key>: data, data.part, meta.json). The loop asks
 *   for work with the sink_*() calls below; each queues a job and returns at once (0, or -errno if it could not
 *   be queued). The worker runs all jobs of a SinkWorker one at a time in the order they were queued: what a job
 *   relies on (meta.json durable before the rename, data.part unlinked before it is created again) is queued
 *   before it.
 * - The jobs marked "reported" come back on the loop through the done callback, with every job queued before
 *   them done. Until then the sink's size, digests and error are the worker's; in the callback, the loop's
 *   (sink_size, sink_error, sink_digests).
 * - A failed write, create or read sets the sink's error (the first one wins): later data jobs of the sink are
 *   skipped and the next reported job says so. Meta.json failures are not errors (the entry is simply not a cache
 *   hit next time): sink_meta_error() tells the loop, which logs them.
 * - sink_release(): the owner lets go. With cancel, what is still queued for the sink is skipped except an
 *   unlink; without, it still runs (a .part kept for resuming gets all that arrived). No callback follows either
 *   way. The worker never calls into the owner; the loop never waits for the worker except in
 *   sink_worker_free(), which lets it finish what it was handed. */

#define FETCH_WRITE_BUFFER_SIZE (1024 * 1024) /* libcurl's 16 KiB pieces, gathered for one write() */

typedef struct FetchBuffer {
        struct FetchBuffer *next;
        size_t len;
        char data[FETCH_WRITE_BUFFER_SIZE];
} FetchBuffer;

typedef struct SinkWorker SinkWorker;
typedef struct Sink Sink;

/* The reported jobs. */
typedef enum SinkOp {
        SINK_PREPARE,
        SINK_FINISH,
        SINK_COMMIT,
        SINK_BARRIER,
} SinkOp;

/* On the loop: a reported job of s came back; owner is what sink_new() was given (never after sink_release()).
 * The callback may release s and may free the SinkWorker (sink_worker_free). */
typedef void (*sink_done_t)(Sink *s, SinkOp op, void *owner);
/* On the loop, after the done callbacks of one wake-up: buffers_free says a buffer came back after
 * sink_worker_buffer_get() had found none (a paused transfer may go on). */
typedef void (*sink_wakeup_t)(bool buffers_free, void *userdata);

int sink_worker_new(sd_event *event, sink_done_t done, sink_wakeup_t wakeup, void *userdata, SinkWorker **ret);
/* Lets the worker finish its queue, then ends it. May be called from the callbacks. */
SinkWorker *sink_worker_free(SinkWorker *w);

/* The loop: the ticket of the last job queued so far. Any other thread: sink_worker_wait() returns once the
 * worker has run that job and every one before it (a released sink's last write, commit or unlink included). The
 * SinkWorker must outlive the wait. */
uint64_t sink_worker_ticket(SinkWorker *w);
void sink_worker_wait(SinkWorker *w, uint64_t ticket);

/* A free buffer (at most 32 of 1 MiB in flight), or NULL: then the wakeup callback says when one is back. */
FetchBuffer *sink_worker_buffer_get(SinkWorker *w);
/* For a transfer libcurl cannot pause (file://, read whole within one call): waits until the worker hands a
 * buffer back (it blocks the loop, which libcurl's read of the file holds anyway); when none is in the worker's
 * hands (the buffers are being filled), maps one more. NULL only when mapping fails. */
FetchBuffer *sink_worker_buffer_wait(SinkWorker *w);
void sink_worker_buffer_put(SinkWorker *w, FetchBuffer *b);
/* Unmaps the free buffers: up to 32 MiB an idle daemon has no use for. */
void sink_worker_buffers_trim(SinkWorker *w);

/* The sink of the cache entry directory entry (which exists). NULL on ENOMEM. */
Sink *sink_new(SinkWorker *w, const char *entry, void *owner);
void sink_release(Sink *s, bool cancel);

/* Reported. With resume, a data.part that is a regular non-empty file is kept, opened and hashed (sink_size()
 * says how much); otherwise any data.part is removed. sha512: hash with SHA-512 too. */
int sink_prepare(Sink *s, bool resume, bool sha512);
/* data.part from zero (created, or truncated if open), digests restarted. */
int sink_create(Sink *s);
/* Appends and hashes b; the buffer goes back to the free list. */
int sink_write(Sink *s, FetchBuffer *b);
/* meta.json replaced (store_write_atomic: durable before the next job runs). */
int sink_save_meta(Sink *s, const char *text);
/* Reported. Everything before it written; with fsync, data.part synced. */
int sink_finish(Sink *s, bool fsync);
/* Reported. data.part becomes data, in the order that keeps the entry whole across a crash: the old meta.json
 * removed and the directory synced (data without meta.json is never a hit), data.part renamed over data,
 * meta_text written (durably) last. On failure sink_error() says which step ("remove", "rename"). */
int sink_commit(Sink *s, const char *meta_text);
/* data and meta.json removed (a checksum mismatch: neither is what the server serves). */
int sink_discard(Sink *s);
/* data.part closed and removed; queued data before it skipped. */
int sink_unlink(Sink *s);
/* Reported, and does nothing: everything queued before it is done. */
int sink_barrier(Sink *s);

/* Any thread: a data job failed (a transfer may stop early). */
bool sink_failed(Sink *s);

/* On the loop, in the done callback (or when nothing is queued for s): */
uint64_t sink_size(const Sink *s);
/* 0, or the first failure as a negative errno with the step ("write", "create", ...) in *ret_op. */
int sink_error(const Sink *s, const char **ret_op);
/* The last meta.json failure (negative errno, cleared by reading it), 0 if none. */
int sink_meta_error(Sink *s);
/* Finishes the digests of what was written: lowercase hex into sha256, and sha512 ("" unless asked for). */
int sink_digests(Sink *s, char sha256[static FETCH_HEX_MAX], char sha512[static FETCH_HEX_MAX]);
