/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdint.h>
#include <systemd/sd-event.h>

#include "error.h"

/* Unpacking with libarchive, run on a worker thread so the loop never blocks; completion is delivered on the
 * loop. The worker touches nothing but its own job and the files it was given.
 *
 * unpack_image: a cloud image file -> one file. .gz/.xz/.bz2 (raw compressed stream), .zip (the single
 *   regular file inside), .tar.* (the single regular file inside); anything else is copied as is. Written to
 *   DEST.part, fsync'd, renamed to DEST.
 * unpack_tree: an archive (.tar, .tar.gz/.tgz, .tar.xz, .tar.bz2, .zip) -> a directory. Refuses absolute
 *   paths, "..", and links leaving the directory (ARCHIVE_EXTRACT_SECURE_*). Extracted into DEST.part/,
 *   renamed to DEST when complete.
 *
 * Details of both:
 * - Detection is by content; name_hint (the file's original name, e.g. the URL's last component) is only what
 *   messages call the file: "'x.gz': truncated gzip stream". NULL: src.
 * - unpack_image writes decompressed data sparse (all-zero 64 KiB blocks become holes); an uncompressed file
 *   is copied with copy_file_range(), its holes kept. A zip or tar with several regular files is refused,
 *   naming them: "'x.zip' holds 2 files (a, b); expected one image". Mode 0644.
 * - unpack_tree keeps permission bits (minus set-uid/set-gid) and mtimes, never owners; refuses device nodes,
 *   fifos and sockets, and symlinks whose target resolves outside DEST, through other links included. An
 *   existing DEST is swapped out (RENAME_EXCHANGE where the filesystem can) and removed.
 * - On any failure nothing is left: no DEST.part, and an existing DEST untouched.
 * - Two jobs must not write the same DEST at once.
 *
 * Callbacks run on the loop. progress (may be NULL) gets the compressed bytes consumed and the size of src,
 * every 250 ms while they grow and once more before done; in_bytes never decreases.
 *
 * unpack_image/unpack_tree return 0 (the job runs; done will be called) or -errno with err set (no callback).
 * ret may be NULL when the caller never cancels; the Unpack * is valid until done returns or unpack_cancel(). */

typedef struct Unpack Unpack;

typedef void (*unpack_progress_t)(Unpack *u, uint64_t in_bytes, uint64_t in_total, void *userdata);
/* Called once on the loop; the Unpack is freed after it returns. r is 0 or -errno; err is non-NULL iff r < 0. */
typedef void (*unpack_done_t)(Unpack *u, int r, const HydraError *err, void *userdata);

int unpack_image(sd_event *event, const char *src, const char *name_hint, const char *dest,
                 unpack_progress_t progress, unpack_done_t done, void *userdata, Unpack **ret, HydraError *err);
int unpack_tree(sd_event *event, const char *src, const char *name_hint, const char *dest,
                unpack_progress_t progress, unpack_done_t done, void *userdata, Unpack **ret, HydraError *err);

/* Asks the worker to stop, waits for it (it checks between blocks), removes the partial output. No callback.
 * Accepts NULL; a no-op from inside done. A job that had already finished keeps its (complete) DEST. */
void unpack_cancel(Unpack *u);
