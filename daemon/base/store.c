/* SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"
#include "store.h"

int store_write_atomic(const char *dir, const char *name, const void *data, size_t size, mode_t mode,
                       HydraError *err) {
        _cleanup_free_ char *tmp = NULL, *final = NULL;
        _cleanup_close_ int fd = -EBADF;
        int r;

        if (asprintf(&tmp, "%s/.%s.XXXXXX", dir, name) < 0 || asprintf(&final, "%s/%s", dir, name) < 0)
                return hydra_error_set(err, -ENOMEM, "out of memory");

        fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0)
                return hydra_error_set(err, -errno, "create temporary file for '%s': %s", final, strerror(errno));

        r = write_all(fd, data, size);
        if (r < 0) {
                hydra_error_set(err, r, "write '%s': %s", final, strerror(-r));
                goto fail;
        }
        if (fchmod(fd, mode) < 0 || fsync(fd) < 0) {
                r = hydra_error_set(err, -errno, "sync '%s': %s", final, strerror(errno));
                goto fail;
        }
        if (rename(tmp, final) < 0) {
                r = hydra_error_set(err, -errno, "rename into '%s': %s", final, strerror(errno));
                goto fail;
        }
        r = fsync_dir(dir);
        if (r < 0)
                return hydra_error_set(err, r, "sync directory '%s': %s", dir, strerror(-r));
        return 0;

fail:
        (void) unlink(tmp);
        return r;
}

static int read_file(const char *dir, const char *name, size_t max_size, bool trusted, void **ret_data,
                     size_t *ret_size, HydraError *err) {
        _cleanup_free_ char *path = NULL, *buf = NULL;
        _cleanup_close_ int fd = -EBADF;
        struct stat st;
        size_t have = 0;

        if (asprintf(&path, "%s/%s", dir, name) < 0)
                return hydra_error_set(err, -ENOMEM, "out of memory");

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) {
                if (errno == ENOENT)
                        return -ENOENT;
                return hydra_error_set(err, -errno, "open '%s': %s", path, strerror(errno));
        }
        if (fstat(fd, &st) < 0)
                return hydra_error_set(err, -errno, "stat '%s': %s", path, strerror(errno));
        if (!S_ISREG(st.st_mode))
                return hydra_error_set(err, -EBADFD, "'%s' is not a regular file", path);
        if (trusted && st.st_uid != geteuid())
                return hydra_error_set(err, -EPERM, "'%s' is owned by uid %u, not by hydrad's user (uid %u): "
                                       "refusing to trust it", path, (unsigned) st.st_uid, (unsigned) geteuid());
        if (trusted && (st.st_mode & (S_IWGRP | S_IWOTH)) != 0)
                return hydra_error_set(err, -EPERM, "'%s' is %s-writable (mode %04o): refusing to trust it "
                                       "(chmod go-w it if its contents are right)", path,
                                       (st.st_mode & S_IWOTH) ? "world" : "group", (unsigned) (st.st_mode & 07777));
        if ((size_t) st.st_size > max_size)
                return hydra_error_set(err, -EFBIG, "'%s' is %lld bytes, more than the %zu allowed", path,
                                       (long long) st.st_size, max_size);

        buf = malloc((size_t) st.st_size + 1);
        if (!buf)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        while (have < (size_t) st.st_size) {
                ssize_t n = read(fd, buf + have, (size_t) st.st_size - have);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return hydra_error_set(err, -errno, "read '%s': %s", path, strerror(errno));
                }
                if (n == 0)
                        break;
                have += (size_t) n;
        }
        buf[have] = '\0';
        *ret_data = TAKE_PTR(buf);
        *ret_size = have;
        return 0;
}

int store_read(const char *dir, const char *name, size_t max_size, void **ret_data, size_t *ret_size,
               HydraError *err) {
        return read_file(dir, name, max_size, false, ret_data, ret_size, err);
}

int store_read_trusted(const char *dir, const char *name, size_t max_size, void **ret_data, size_t *ret_size,
                       HydraError *err) {
        return read_file(dir, name, max_size, true, ret_data, ret_size, err);
}

int store_remove(const char *dir, const char *name) {
        _cleanup_free_ char *path = NULL;

        if (asprintf(&path, "%s/%s", dir, name) < 0)
                return -ENOMEM;
        if (unlink(path) < 0 && errno != ENOENT)
                return -errno;
        return 0;
}

