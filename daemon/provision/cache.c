/* SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache.h"
#include "fetch_meta.h"
#include "fs.h"
#include "macro.h"
#include "spec.h"

char **cache_vm_disks(const char *state_dir, int except_role) {
        char **l = calloc(_ROLE_MAX + 1, sizeof(char *));
        size_t n = 0;

        if (!l)
                return NULL;
        for (Role role = 0; role < _ROLE_MAX; role++) {
                if ((int) role == except_role)
                        continue;
                if (asprintf(&l[n], "%s/%s/disk.qcow2", state_dir, role_to_string(role)) < 0) {
                        l[n] = NULL;
                        return strv_free(l);
                }
                n++;
        }
        return l;
}

static uint64_t be(const unsigned char *p, size_t n) {
        uint64_t v = 0;

        for (size_t i = 0; i < n; i++)
                v = (v << 8) | p[i];
        return v;
}

/* The entry under dir that path lies in ("dir/KEY/..." -> "dir/KEY"), or NULL. */
static char *entry_of(const char *dir, const char *path) {
        size_t n = strlen(dir);
        const char *rest, *slash;
        char *s;

        while (n > 1 && dir[n - 1] == '/')
                n--;
        if (strncmp(path, dir, n) != 0 || path[n] != '/')
                return NULL;
        rest = path + n + 1;
        slash = strchr(rest, '/');
        if (!slash || slash == rest)
                return NULL;
        return asprintf(&s, "%.*s", (int) (slash - path), path) < 0 ? NULL : s;
}

int qcow2_backing_file(const char *disk, char **ret) {
        _cleanup_close_ int fd = open(disk, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        _cleanup_free_ char *name = NULL;
        unsigned char h[20];
        uint64_t offset, size;
        ssize_t n;

        if (fd < 0)
                return errno == ENOENT ? 0 : -errno;
        /* magic, version, backing_file_offset (u64), backing_file_size (u32), all big-endian */
        n = pread(fd, h, sizeof(h), 0);
        if (n < 0)
                return -errno;
        if (n != (ssize_t) sizeof(h) || memcmp(h, "QFI\xfb", 4) != 0)
                return 0;
        offset = be(h + 8, 8);
        size = be(h + 16, 4);
        if (offset == 0 || size == 0 || size > 1023) /* qcow2 caps the name at 1023 bytes */
                return 0;
        name = calloc(1, size + 1);
        if (!name)
                return -ENOMEM;
        n = pread(fd, name, size, (off_t) offset);
        if (n < 0)
                return -errno;
        if ((uint64_t) n != size)
                return 0;
        if (name[0] != '/') {
                /* relative to the overlay's directory */
                const char *slash = strrchr(disk, '/');
                char *abs;

                if (asprintf(&abs, "%.*s/%s", slash ? (int) (slash - disk) : 1, slash ? disk : ".", name) < 0)
                        return -ENOMEM;
                *ret = abs;
        } else
                *ret = TAKE_PTR(name);
        return 1;
}

int cache_disk_backing_entry(const char *cache_dir, const char *disk, char **ret) {
        _cleanup_free_ char *name = NULL, *real_cache = NULL, *real_name = NULL;
        char *entry;
        int r;

        r = qcow2_backing_file(disk, &name);
        if (r <= 0)
                return r;
        entry = entry_of(cache_dir, name);
        if (!entry) {
                /* the same directory by another path (a symlink, "..") */
                real_cache = realpath(cache_dir, NULL);
                real_name = realpath(name, NULL);
                if (real_cache && real_name) {
                        _cleanup_free_ char *e = entry_of(real_cache, real_name);
                        const char *key = e ? e + strlen(real_cache) + 1 : NULL;

                        if (key && asprintf(&entry, "%s/%s", cache_dir, key) < 0)
                                return -ENOMEM;
                }
        }
        if (!entry)
                return 0;
        *ret = entry;
        return 1;
}

static void closedirp(DIR **d) {
        if (*d)
                (void) closedir(*d);
}

static _Thread_local uint64_t tree_size;

static int add_size(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        tree_size += (uint64_t) st->st_blocks * 512;
        return 0;
}

uint64_t cache_tree_size(const char *path) {
        tree_size = 0;
        (void) nftw(path, add_size, 16, FTW_PHYS | FTW_MOUNT);
        return tree_size;
}

const char *cache_format_size(uint64_t bytes, char buf[static 32]) {
        const uint64_t mib = UINT64_C(1024) * 1024, gib = mib * 1024;

        if (bytes >= 10 * gib)
                (void) snprintf(buf, 32, "%llu GiB", (unsigned long long) ((bytes + gib / 2) / gib));
        else if (bytes >= gib)
                (void) snprintf(buf, 32, "%.1f GiB", (double) bytes / (double) gib);
        else if (bytes >= mib)
                (void) snprintf(buf, 32, "%llu MiB", (unsigned long long) ((bytes + mib / 2) / mib));
        else
                (void) snprintf(buf, 32, "%llu KiB", (unsigned long long) ((bytes + 1023) / 1024));
        return buf;
}

/* The entries the VMs' disks lean on: NULL-terminated, NULL on ENOMEM. A disk that cannot be read protects
 * nothing (it cannot be an overlay QEMU opens either). */
static char **backing_entries(const char *cache_dir, char *const *disks) {
        char **l = calloc(1, sizeof(char *));

        if (!l)
                return NULL;
        for (size_t i = 0; disks && disks[i]; i++) {
                _cleanup_free_ char *e = NULL;

                if (cache_disk_backing_entry(cache_dir, disks[i], &e) > 0 && strv_push_copy(&l, e) < 0)
                        return strv_free(l);
        }
        return l;
}

/* --- one entry --- */

int cache_drop_new(const char *cache_dir, const char *url, const char *state_dir, int except_role, Fetcher *fr,
                   CacheDrop **ret) {
        CacheDrop *d = calloc(1, sizeof(*d));

        if (!d)
                return -ENOMEM;
        d->url = strdup(url);
        d->entry = fetch_cache_entry(cache_dir, url);
        d->disks = cache_vm_disks(state_dir, except_role);
        if (!d->url || !d->entry || !d->disks) {
                cache_drop_free(d);
                return -ENOMEM;
        }
        d->fetcher = fr;
        d->ticket = fetcher_ticket(fr);
        *ret = d;
        return 0;
}

void cache_drop_free(void *p) {
        CacheDrop *d = p;

        if (!d)
                return;
        free(d->url);
        free(d->entry);
        strv_free(d->disks);
        free(d);
}

int cache_drop_run(void *p, HydraError *err) {
        CacheDrop *d = p;
        _cleanup_strv_free_ char **backing = NULL;
        const char *slash = strrchr(d->entry, '/');
        _cleanup_free_ char *dir = NULL;
        int r;

        /* A cancelled download's last write or unlink first: nothing of it comes after the removal. */
        fetcher_wait(d->fetcher, d->ticket);

        if (!slash || asprintf(&dir, "%.*s", (int) (slash - d->entry), d->entry) < 0)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        backing = backing_entries(dir, d->disks);
        if (!backing)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        if (strv_contains(backing, d->entry)) {
                d->backs_disk = true;
                return 0;
        }
        d->found = access(d->entry, F_OK) == 0;
        if (!d->found)
                return 0;
        d->size = cache_tree_size(d->entry);
        r = rm_rf(d->entry);
        if (r < 0)
                return hydra_error_set(err, r, "remove the cached download '%s': %s", d->entry, strerror(-r));
        return 0;
}

/* --- the sweep --- */

int cache_sweep_new(const char *cache_dir, const char *const *keep, size_t n_keep, const char *state_dir,
                    CacheSweep **ret) {
        CacheSweep *s = calloc(1, sizeof(*s));

        if (!s)
                return -ENOMEM;
        s->cache_dir = strdup(cache_dir);
        s->keep = calloc(1, sizeof(char *));
        s->disks = cache_vm_disks(state_dir, -1);
        if (!s->cache_dir || !s->keep || !s->disks)
                goto oom;
        for (size_t i = 0; i < n_keep; i++) {
                char key[65];

                if (isempty(keep[i]))
                        continue;
                if (fetch_cache_key(keep[i], key) < 0 || strv_push_copy(&s->keep, key) < 0)
                        goto oom;
        }
        *ret = s;
        return 0;
oom:
        cache_sweep_free(s);
        return -ENOMEM;
}

void cache_sweep_free(void *p) {
        CacheSweep *s = p;

        if (!s)
                return;
        free(s->cache_dir);
        strv_free(s->keep);
        strv_free(s->disks);
        strv_free(s->removed);
        free(s->sizes);
        strv_free(s->failed);
        free(s);
}

static int sweep_note(CacheSweep *s, const char *name, uint64_t size) {
        uint64_t *sizes = realloc(s->sizes, (s->n_removed + 1) * sizeof(uint64_t));

        if (!sizes)
                return -ENOMEM;
        s->sizes = sizes;
        if (strv_push_copy(&s->removed, name) < 0)
                return -ENOMEM;
        s->sizes[s->n_removed++] = size;
        return 0;
}

int cache_sweep_run(void *p, HydraError *err) {
        CacheSweep *s = p;
        _cleanup_strv_free_ char **backing = NULL;
        _cleanup_(closedirp) DIR *d = NULL;

        d = opendir(s->cache_dir);
        if (!d)
                return errno == ENOENT ? 0 : hydra_error_set(err, -errno, "read '%s': %m", s->cache_dir);
        backing = backing_entries(s->cache_dir, s->disks);
        if (!backing)
                return hydra_error_set(err, -ENOMEM, "out of memory");

        for (;;) {
                _cleanup_free_ char *path = NULL;
                struct dirent *de;
                uint64_t size;
                int r;

                errno = 0;
                de = readdir(d);
                if (!de) {
                        if (errno != 0)
                                return hydra_error_set(err, -errno, "read '%s': %m", s->cache_dir);
                        break;
                }
                if (streq(de->d_name, ".") || streq(de->d_name, "..") || strv_contains(s->keep, de->d_name))
                        continue;
                if (asprintf(&path, "%s/%s", s->cache_dir, de->d_name) < 0)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
                if (strv_contains(backing, path))
                        continue;
                size = cache_tree_size(path);
                r = rm_rf_at(dirfd(d), de->d_name);
                if (r < 0) {
                        _cleanup_free_ char *msg = NULL;

                        if (asprintf(&msg, "%s: %s", de->d_name, strerror(-r)) < 0 ||
                            strv_push_copy(&s->failed, msg) < 0)
                                return hydra_error_set(err, -ENOMEM, "out of memory");
                        continue;
                }
                if (sweep_note(s, de->d_name, size) < 0)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        return 0;
}
