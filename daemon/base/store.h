/* SPDX-License-Identifier: MIT */
#pragma once

#include <stddef.h>
#include <sys/types.h>

#include "error.h"
#include "fs.h" /* mkdir_p, rm_rf: most users of the store want them too */

/* Files that must never be seen half-written: written to a temp file in the same directory, fsync'd, renamed
 * over the old one, and the directory fsync'd (systemd's machine.c, crun's status.c). */

/* Replaces dir/name with data atomically. On failure the old file is intact and no temp file is left.
 * Returns 0 or a negative errno with err naming the file and step (e.g. ENOSPC on write). */
int store_write_atomic(const char *dir, const char *name, const void *data, size_t size, mode_t mode,
                       HydraError *err);

/* Reads dir/name whole (at most max_size bytes; larger: -EFBIG). Returns 0, -ENOENT if absent, or another
 * negative errno with err set. *ret_data is NUL-terminated for convenience. */
int store_read(const char *dir, const char *name, size_t max_size, void **ret_data, size_t *ret_size,
               HydraError *err);

/* store_read() for a file hydrad acts on without further question (the stored spec: what QEMU runs, which
 * host paths it shares): refused with -EPERM and the reason in err unless it is owned by hydrad's effective
 * user and neither group- nor world-writable, so that nobody else can have put it there. */
int store_read_trusted(const char *dir, const char *name, size_t max_size, void **ret_data, size_t *ret_size,
                       HydraError *err);

/* Removes dir/name; absent is fine. */
int store_remove(const char *dir, const char *name);

