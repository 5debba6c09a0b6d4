/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "instance.h"
#include "macro.h"
#include "store.h"

static void close_all(int *fds, size_t n) {
        for (size_t i = 0; i < n; i++)
                fds[i] = safe_close(fds[i]);
}

int instance_lock(const char *const *dirs, const char *const *whats, size_t n, int *ret_fds, HydraError *err) {
        struct stat st[INSTANCE_LOCK_MAX];
        int fds[INSTANCE_LOCK_MAX];
        int r;

        if (n > INSTANCE_LOCK_MAX)
                return hydra_error_set(err, -EINVAL, "too many directories to lock");
        for (size_t i = 0; i < n; i++)
                fds[i] = -EBADF;

        for (size_t i = 0; i < n; i++) {
                _cleanup_free_ char *path = NULL;
                bool dup = false;

                r = mkdir_p(dirs[i], 0750);
                if (r < 0) {
                        hydra_error_set(err, r, "create %s '%s': %s", whats[i], dirs[i], strerror(-r));
                        goto fail;
                }
                if (asprintf(&path, "%s/%s", dirs[i], INSTANCE_LOCK_FILE) < 0) {
                        path = NULL;
                        r = hydra_error_set(err, -ENOMEM, "out of memory");
                        goto fail;
                }
                fds[i] = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
                if (fds[i] < 0) {
                        r = hydra_error_set(err, -errno, "open lock file '%s': %s", path, strerror(errno));
                        goto fail;
                }
                if (fstat(fds[i], &st[i]) < 0) {
                        r = hydra_error_set(err, -errno, "stat lock file '%s': %s", path, strerror(errno));
                        goto fail;
                }
                /* flock() locks belong to the open file description: our own second lock would conflict. */
                for (size_t j = 0; j < i; j++)
                        if (fds[j] >= 0 && st[j].st_dev == st[i].st_dev && st[j].st_ino == st[i].st_ino)
                                dup = true;
                if (dup) {
                        fds[i] = safe_close(fds[i]);
                        continue;
                }
                if (flock(fds[i], LOCK_EX | LOCK_NB) < 0) {
                        if (errno == EWOULDBLOCK)
                                r = hydra_error_set(err, -EADDRINUSE,
                                                    "another hydrad is already serving %s '%s' (it holds '%s')",
                                                    whats[i], dirs[i], path);
                        else
                                r = hydra_error_set(err, -errno, "lock '%s': %s", path, strerror(errno));
                        goto fail;
                }
        }
        memcpy(ret_fds, fds, n * sizeof(*fds));
        return 0;

fail:
        close_all(fds, n);
        return r;
}
