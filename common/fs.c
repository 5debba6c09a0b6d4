/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"
#include "macro.h"

int fsync_dir(const char *dir) {
        _cleanup_close_ int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

        if (fd < 0)
                return -errno;
        return fsync(fd) < 0 ? -errno : 0;
}

int fsync_parent(const char *path) {
        _cleanup_free_ char *dir = strdup(path);
        char *slash;

        if (!dir)
                return -ENOMEM;
        slash = strrchr(dir, '/');
        if (!slash)
                return fsync_dir(".");
        slash[slash == dir] = '\0'; /* "/x" -> "/" */
        return fsync_dir(dir);
}

int write_all(int fd, const void *data, size_t size) {
        const char *p = data;

        while (size > 0) {
                ssize_t n = write(fd, p, size);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += n;
                size -= (size_t) n;
        }
        return 0;
}

int mkdir_p(const char *path, mode_t mode) {
        _cleanup_free_ char *p = strdup(path);

        if (!p)
                return -ENOMEM;
        for (char *s = p + 1; *s; s++) {
                if (*s != '/')
                        continue;
                *s = '\0';
                if (mkdir(p, mode) < 0 && errno != EEXIST)
                        return -errno;
                *s = '/';
        }
        if (mkdir(p, mode) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

int mkdir_private(const char *path, gid_t traverse_gid) {
        int r = mkdir_p(path, 0750);

        if (r < 0)
                return r;
        if (traverse_gid != (gid_t) -1 && chown(path, (uid_t) -1, traverse_gid) < 0)
                return -errno;
        if (chmod(path, traverse_gid != (gid_t) -1 ? 0710 : 0700) < 0)
                return -errno;
        return 0;
}

static bool mode_allows(const struct stat *st, uid_t uid, const gid_t *groups, size_t n_groups, int mode) {
        mode_t bits = st->st_mode & 07;
        int want = (mode & R_OK ? 4 : 0) | (mode & W_OK ? 2 : 0) | (mode & X_OK ? 1 : 0);

        if (st->st_uid == uid)
                bits = (st->st_mode >> 6) & 07;
        else
                for (size_t i = 0; i < n_groups; i++)
                        if (groups[i] == st->st_gid) {
                                bits = (st->st_mode >> 3) & 07;
                                break;
                        }
        return ((int) bits & want) == want;
}

int path_access_as(const char *path, uid_t uid, const gid_t *groups, size_t n_groups, int mode) {
        _cleanup_free_ char *p = strdup(path);
        struct stat st;

        if (!p)
                return -ENOMEM;
        if (uid == 0)
                return 0;
        /* Every directory on the way needs its search bit: "/a/b/c" checks "/", "/a", "/a/b". */
        for (char *slash = strchr(p + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
                *slash = '\0';
                if (stat(p, &st) < 0)
                        return -errno;
                *slash = '/';
                if (!mode_allows(&st, uid, groups, n_groups, X_OK))
                        return -EACCES;
        }
        if (p[0] == '/' && stat("/", &st) == 0 && !mode_allows(&st, uid, groups, n_groups, X_OK))
                return -EACCES;
        if (stat(path, &st) < 0)
                return -errno;
        return mode_allows(&st, uid, groups, n_groups, mode) ? 0 : -EACCES;
}

static void closedirp(DIR **d) {
        if (*d)
                (void) closedir(*d);
}

/* dev: the device of the tree's top (0: take it from name, which is the top). */
static int rm_rf_dev(int dir_fd, const char *name, dev_t dev) {
        _cleanup_(closedirp) DIR *d = NULL;
        struct stat st;
        int fd, r = 0;

        if (unlinkat(dir_fd, name, 0) >= 0 || errno == ENOENT)
                return 0;
        if (errno != EISDIR && errno != EPERM)
                return -errno;

        fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return errno == ENOENT ? 0 : -errno;
        if (fstat(fd, &st) < 0) {
                r = -errno;
                safe_close(fd);
                return r;
        }
        /* Another file system mounted inside the tree is not ours to empty. */
        if (dev != 0 && st.st_dev != dev) {
                safe_close(fd);
                return -EXDEV;
        }
        (void) fchmod(fd, 0700); /* an archive's 0555 directory must not keep us from emptying it */
        d = fdopendir(fd);
        if (!d) {
                r = -errno;
                safe_close(fd);
                return r;
        }
        for (;;) {
                struct dirent *de;
                int k;

                errno = 0;
                de = readdir(d);
                if (!de) {
                        if (errno != 0 && r == 0)
                                r = -errno;
                        break;
                }
                if (streq(de->d_name, ".") || streq(de->d_name, ".."))
                        continue;
                k = rm_rf_dev(dirfd(d), de->d_name, st.st_dev);
                if (k < 0 && r == 0)
                        r = k;
        }
        if (unlinkat(dir_fd, name, AT_REMOVEDIR) < 0 && errno != ENOENT && r == 0)
                r = -errno;
        return r;
}

int rm_rf_at(int dir_fd, const char *name) {
        return rm_rf_dev(dir_fd, name, 0);
}

int rm_rf(const char *path) {
        return rm_rf_at(AT_FDCWD, path);
}

const char *disk_format_probe(const char *path) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        unsigned char magic[4];

        if (fd >= 0 && read(fd, magic, sizeof(magic)) == sizeof(magic) && memcmp(magic, "QFI\xfb", 4) == 0)
                return "qcow2";
        return "raw";
}
