/* SPDX-License-Identifier: MIT */
#pragma once

#include <sys/types.h>

/* The file-system helpers every part of hydrad shares (one copy each). Each returns 0 or a negative errno. */

/* fsync of a directory, so that a rename or an unlink in it is durable. */
int fsync_dir(const char *dir);
/* fsync_dir of the directory that holds path ("." for a bare name). */
int fsync_parent(const char *path);

/* Writes all of data, retrying on EINTR and short writes. */
int write_all(int fd, const void *data, size_t size);

/* mkdir -p with mode for the directories it creates. */
int mkdir_p(const char *path, mode_t mode);
/* A VM's own directory: made (parents 0750) if missing, and path itself set to 0700, or 0710 with group
 * traverse_gid ((gid_t) -1: none) so that the group's members reach a socket inside by its name (console.sock,
 * containerd.sock: 0660 in that group) and see nothing else. Returns 0 or a negative errno. */
int mkdir_private(const char *path, gid_t traverse_gid);

/* Whether a process of uid with groups (its primary group among them) may open path for mode (R_OK, W_OK, X_OK
 * or'ed), by the permission bits of path and the search bit of every directory on the way. ACLs and capabilities are
 * not read (hydrad's files have none; a file that grants access by ACL only is said to be refused). uid 0 may.
 * Returns 0, -EACCES, or the -errno of a stat (-ENOENT). */
int path_access_as(const char *path, uid_t uid, const gid_t *groups, size_t n_groups, int mode);

/* Removes a file or a directory tree through openat/unlinkat, never following a symlink (a symlink is removed,
 * not what it points at) nor entering another file system mounted inside; read-only directories are made writable
 * first (an archive's 0555). Absent is fine. Carries on past a failure and returns the first error. */
int rm_rf(const char *path);
/* The same for name relative to dir_fd (AT_FDCWD: the working directory). */
int rm_rf_at(int dir_fd, const char *name);

/* "qcow2" if the file starts with qcow2's magic, else "raw" (also when it cannot be read: QEMU says why). */
const char *disk_format_probe(const char *path);
