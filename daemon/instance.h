/* SPDX-License-Identifier: MIT */
#pragma once

#include <stddef.h>

#include "error.h"

/* One hydrad per run directory and per state directory (issue 9). A second daemon started on the same
 * directories by mistake must be refused before it touches anything there: before it adopts a QEMU (rebinding the
 * live console.sock, rewriting runtime.json) and before it binds the API socket. The lock is a flock(2) on
 * DIR/hydrad.lock, held for the daemon's life through the returned fds and released by the kernel when the
 * daemon dies, however it dies: a lock file left behind is harmless. */

#define INSTANCE_LOCK_FILE "hydrad.lock"
#define INSTANCE_LOCK_MAX 4

/* Creates each of the n (at most INSTANCE_LOCK_MAX) dirs (mode 0750 for what it creates) and locks DIR/hydrad.lock in each, without waiting.
 * A directory named twice (the same inode) is locked once. ret_fds (n entries) gets the fds to keep open, -EBADF
 * for a duplicate. Returns 0; -EADDRINUSE with err naming the lock file if another process holds one; another
 * negative errno with err set. On failure no fd is left open. */
int instance_lock(const char *const *dirs, const char *const *whats, size_t n, int *ret_fds, HydraError *err);
