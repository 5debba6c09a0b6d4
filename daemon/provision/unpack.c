/* SPDX-License-Identifier: MIT */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fs.h"
#include "log.h"
#include "macro.h"
#include "unpack.h"
#include "worker.h"

/* Everything below unpack_start() runs on the worker thread: it reads the Unpack's immutable fields, writes its
 * error, and touches no other state of the daemon. The job checks worker_cancelled() between blocks and, on any
 * failure or cancellation, removes what it wrote before returning, so that the loop never does file I/O here.
 *
 * Detection is libarchive's, by content: its filters (gzip, xz, bzip2, ...) and the zip, tar and (for images)
 * raw formats. "raw" takes whatever is neither zip nor tar, so a bare compressed stream comes out as its one
 * file, and an uncompressed file (a qcow2) as raw with no filter: that case skips libarchive and is copied with
 * copy_file_range(), hole by hole. One catch: libarchive takes a stream that starts with 512 zero bytes for an
 * empty tar, so an image with no entry is read again as raw only.
 *
 * Decompressed images are written sparse: an all-zero 64 KiB block is skipped, and ftruncate() sets the size at
 * the end (cloud images are mostly zeros). Writeback is started as the output grows so that the final fsync()
 * is short: a cancel has to wait for it.
 *
 * Trees go through archive_write_disk. Its paths are relative to the process's working directory, which a
 * thread cannot change, so every entry is rewritten to "<canonical DEST.part>/<entry>". That prefix is absolute,
 * which rules out ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS; clean_path() refuses absolute names and ".." itself,
 * before the prefix is added. SECURE_NODOTDOT and SECURE_SYMLINKS apply to the rewritten path (hence a
 * canonical prefix: no "..", no symlink). A full path stays below PATH_MAX, beyond which libarchive would
 * chdir() (process-wide). Caveat: for every entry libarchive reads the umask with umask(0) + umask(old), which
 * is process-wide too: a file another thread creates in that instant, or a child forked then, sees umask 0.
 * The daemon passes explicit modes everywhere; a spawned child should set its own umask. */

#define UNPACK_READ_SIZE (128U * 1024U)               /* what libarchive reads from the source at a time */
#define UNPACK_SPARSE_BLOCK (64U * 1024U)             /* an all-zero block of this size becomes a hole */
#define UNPACK_COPY_CHUNK (8U * 1024U * 1024U)        /* per copy_file_range() call: cancel is checked between */
#define UNPACK_WRITEBACK_WINDOW (8ULL * 1024ULL * 1024ULL)
#define UNPACK_NAMES_MAX 512                          /* entry names quoted in "holds 3 files (a, b, c)" */

/* archive_errno() values from libarchive's private archive_platform.h, as it defines them on Linux. */
#define UNPACK_ARCHIVE_ERRNO_FILE_FORMAT EILSEQ
#define UNPACK_ARCHIVE_ERRNO_PROGRAMMER EINVAL

typedef enum UnpackMode {
        UNPACK_IMAGE,
        UNPACK_TREE,
} UnpackMode;

struct Unpack {
        UnpackMode mode;
        char *src;
        char *name; /* for messages: the name hint, else src */
        char *dest;
        char *part; /* DEST.part */

        Worker *worker;
        unpack_progress_t progress;
        unpack_done_t done;
        void *userdata;
        bool dispatching; /* inside the done callback: unpack_cancel() is a no-op */

        /* Written by the worker thread; the loop reads error once the thread is joined. */
        HydraError error;
        uint64_t in_total;
};

static Unpack *unpack_free(Unpack *u) {
        if (!u)
                return NULL;
        worker_cancel(u->worker);
        free(u->src);
        free(u->name);
        free(u->dest);
        free(u->part);
        free(u);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(Unpack *, unpack_free);

static inline void archive_read_freep(struct archive **a) {
        if (*a)
                (void) archive_read_free(*a);
}

static inline void archive_write_freep(struct archive **a) {
        if (*a)
                (void) archive_write_free(*a);
}

static inline void closedirp(DIR **d) {
        if (*d)
                (void) closedir(*d);
}

static inline uint64_t u64_min(uint64_t a, uint64_t b) {
        return a < b ? a : b;
}

/* --- errors --- */

/* "write '/x/y.part': No space left on device" */
static int unpack_fail(Unpack *u, int r, const char *what, const char *path) {
        return hydra_error_set(&u->error, r, "%s '%s': %s", what, path, strerror(-r));
}

/* A read error from libarchive. Running out of input in the middle of a stream is by far the most common
 * cause and libarchive words it differently for each filter ("truncated gzip input", xz's "No progress is
 * possible"), so it is recognized by position: everything was consumed. */
static int archive_fail(Unpack *u, struct archive *a) {
        const char *msg = archive_error_string(a);
        int e = archive_errno(a);

        if (e > 0 && e != UNPACK_ARCHIVE_ERRNO_FILE_FORMAT && e != UNPACK_ARCHIVE_ERRNO_PROGRAMMER)
                return hydra_error_set(&u->error, -e, "'%s': %s", u->name, msg ?: strerror(e));

        if ((uint64_t) archive_filter_bytes(a, -1) >= u->in_total) {
                if (archive_filter_code(a, 0) == ARCHIVE_FILTER_NONE)
                        return hydra_error_set(&u->error, -EBADMSG, "'%s': truncated archive", u->name);
                return hydra_error_set(&u->error, -EBADMSG, "'%s': truncated %s stream", u->name,
                                       archive_filter_name(a, 0));
        }
        return hydra_error_set(&u->error, -EBADMSG, "'%s': %s", u->name, msg ?: "unreadable archive");
}

/* --- output helpers --- */

static int pwrite_all(int fd, const uint8_t *p, size_t n, uint64_t offset) {
        while (n > 0) {
                ssize_t k = pwrite(fd, p, n, (off_t) offset);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += k;
                n -= (size_t) k;
                offset += (uint64_t) k;
        }
        return 0;
}

/* Keeps the dirty part of the output bounded: start writeback of each window as it fills, and wait for the
 * window before it (write-behind). Best effort: fsync() at the end reports what matters. */
typedef struct Writeback {
        int fd;
        uint64_t start;                /* first byte not yet handed to writeback */
        uint64_t prev_start, prev_len; /* the window in flight */
} Writeback;

static void writeback_advance(Writeback *wb, uint64_t end) {
        if (end < wb->start + UNPACK_WRITEBACK_WINDOW)
                return;
        (void) sync_file_range(wb->fd, (off_t) wb->start, (off_t) (end - wb->start), SYNC_FILE_RANGE_WRITE);
        if (wb->prev_len > 0)
                (void) sync_file_range(wb->fd, (off_t) wb->prev_start, (off_t) wb->prev_len,
                                       SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                               SYNC_FILE_RANGE_WAIT_AFTER);
        wb->prev_start = wb->start;
        wb->prev_len = end - wb->start;
        wb->start = end;
}

/* Writes a stream of blocks at increasing offsets, leaving holes for all-zero UNPACK_SPARSE_BLOCK blocks and
 * for gaps between blocks (a sparse tar entry). Data is staged so that holes fall on block boundaries. */
typedef struct SparseWriter {
        int fd;
        uint8_t *buf;  /* UNPACK_SPARSE_BLOCK bytes */
        uint64_t base; /* output offset of buf[0] */
        size_t fill;
        Writeback wb;
} SparseWriter;

static bool is_zero(const uint8_t *p, size_t n) {
        return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* p holds the n bytes that belong at sw->base. */
static int sparse_flush(SparseWriter *sw, const uint8_t *p, size_t n) {
        if (!is_zero(p, n)) {
                int r = pwrite_all(sw->fd, p, n, sw->base);
                if (r < 0)
                        return r;
                writeback_advance(&sw->wb, sw->base + n);
        }
        sw->base += n;
        sw->fill = 0;
        return 0;
}

static int sparse_zeros(SparseWriter *sw, uint64_t n) {
        while (n > 0) {
                size_t k;

                if (sw->fill == 0 && n >= UNPACK_SPARSE_BLOCK) {
                        uint64_t skip = n - n % UNPACK_SPARSE_BLOCK;
                        sw->base += skip;
                        n -= skip;
                        continue;
                }
                k = (size_t) u64_min(n, UNPACK_SPARSE_BLOCK - sw->fill);
                memset(sw->buf + sw->fill, 0, k);
                sw->fill += k;
                n -= k;
                if (sw->fill == UNPACK_SPARSE_BLOCK) {
                        int r = sparse_flush(sw, sw->buf, UNPACK_SPARSE_BLOCK);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

static int sparse_write(SparseWriter *sw, uint64_t offset, const uint8_t *p, size_t n) {
        uint64_t pos = sw->base + sw->fill;
        int r;

        if (offset < pos) /* libarchive hands out blocks in order */
                return -EINVAL;
        r = sparse_zeros(sw, offset - pos);
        if (r < 0)
                return r;

        while (n > 0) {
                size_t k;

                if (sw->fill == 0 && n >= UNPACK_SPARSE_BLOCK) {
                        /* A whole block straight from libarchive's buffer: no copy. */
                        r = sparse_flush(sw, p, UNPACK_SPARSE_BLOCK);
                        if (r < 0)
                                return r;
                        p += UNPACK_SPARSE_BLOCK;
                        n -= UNPACK_SPARSE_BLOCK;
                        continue;
                }
                k = (size_t) u64_min(n, UNPACK_SPARSE_BLOCK - sw->fill);
                memcpy(sw->buf + sw->fill, p, k);
                sw->fill += k;
                p += k;
                n -= k;
                if (sw->fill == UNPACK_SPARSE_BLOCK) {
                        r = sparse_flush(sw, sw->buf, UNPACK_SPARSE_BLOCK);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

static int sparse_finish(SparseWriter *sw) {
        uint64_t size = sw->base + sw->fill;
        int r;

        r = sparse_flush(sw, sw->buf, sw->fill);
        if (r < 0)
                return r;
        /* Trailing holes: nothing was written there, the size says they exist. */
        return ftruncate(sw->fd, (off_t) size) < 0 ? -errno : 0;
}

/* --- reading --- */

static int open_source(Unpack *u, Worker *w, int *ret_fd) {
        _cleanup_close_ int fd = -EBADF;
        struct stat st;

        fd = open(u->src, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return unpack_fail(u, -errno, "open", u->src);
        if (fstat(fd, &st) < 0)
                return unpack_fail(u, -errno, "stat", u->src);
        if (!S_ISREG(st.st_mode))
                return hydra_error_set(&u->error, -EINVAL, "'%s' is not a regular file", u->name);
        if (st.st_size == 0)
                return hydra_error_set(&u->error, -EBADMSG, "'%s' is empty", u->name);

        u->in_total = (uint64_t) st.st_size;
        worker_set_progress(w, 0, u->in_total);
        *ret_fd = TAKE_FD(fd);
        return 0;
}

/* Opens fd from its start. raw_only: no zip or tar, the (decompressed) stream is the one entry. */
static int open_archive(Unpack *u, int fd, bool raw_only, struct archive **ret) {
        _cleanup_(archive_read_freep) struct archive *a = NULL;

        if (lseek(fd, 0, SEEK_SET) < 0)
                return unpack_fail(u, -errno, "seek in", u->src);
        a = archive_read_new();
        if (!a)
                return hydra_error_set(&u->error, -ENOMEM, "out of memory");
        /* ARCHIVE_WARN: some filters would run an external program; that is still support. */
        /* The compressions libarchive implements itself: filter_all would also run external programs (lrzip,
         * lzop, grzip) for the formats it has no library for. */
        if (archive_read_support_filter_gzip(a) < ARCHIVE_WARN || archive_read_support_filter_xz(a) < ARCHIVE_WARN ||
            archive_read_support_filter_bzip2(a) < ARCHIVE_WARN || archive_read_support_filter_lzma(a) < ARCHIVE_WARN ||
            archive_read_support_filter_zstd(a) < ARCHIVE_WARN ||
            (!raw_only && archive_read_support_format_zip(a) < ARCHIVE_WARN) ||
            (!raw_only && archive_read_support_format_tar(a) < ARCHIVE_WARN) ||
            (u->mode == UNPACK_IMAGE && archive_read_support_format_raw(a) < ARCHIVE_WARN))
                return hydra_error_set(&u->error, -EIO, "libarchive: %s", strempty(archive_error_string(a)));
        /* With an fd libarchive can seek: zip is read through its central directory. The format is detected
         * here already. */
        if (archive_read_open_fd(a, fd, UNPACK_READ_SIZE) < ARCHIVE_WARN) {
                if (u->mode == UNPACK_TREE && archive_errno(a) == UNPACK_ARCHIVE_ERRNO_FILE_FORMAT)
                        return hydra_error_set(&u->error, -EBADMSG, "'%s' is not a tar or zip archive", u->name);
                return hydra_error_set(&u->error, -EBADMSG, "'%s': %s", u->name,
                                       archive_error_string(a) ?: "cannot be read");
        }
        *ret = TAKE_PTR(a);
        return 0;
}

static void report_progress(Unpack *u, Worker *w, struct archive *a) {
        int64_t b = archive_filter_bytes(a, -1);

        worker_set_progress(w, u64_min(b > 0 ? (uint64_t) b : 0, u->in_total), u->in_total);
}

/* Reads past an entry's data. Skipping in an uncompressed archive is a seek; in a compressed stream libarchive
 * would decompress the whole entry in one call, so read it here block by block and stay cancellable. */
static int skip_entry(Unpack *u, Worker *w, struct archive *a) {
        if (archive_filter_code(a, 0) == ARCHIVE_FILTER_NONE)
                return archive_read_data_skip(a) < ARCHIVE_WARN ? archive_fail(u, a) : 0;

        for (;;) {
                const void *p;
                size_t n;
                la_int64_t offset;
                int r;

                if (worker_cancelled(w))
                        return -ECANCELED;
                r = archive_read_data_block(a, &p, &n, &offset);
                if (r == ARCHIVE_EOF)
                        return 0;
                if (r < ARCHIVE_WARN)
                        return archive_fail(u, a);
                report_progress(u, w, a);
        }
}

/* --- unpack_image --- */

static int copy_entry(Unpack *u, Worker *w, struct archive *a, struct archive_entry *e, SparseWriter *sw) {
        int r;

        for (;;) {
                const void *p;
                size_t n;
                la_int64_t offset;

                if (worker_cancelled(w))
                        return -ECANCELED;
                r = archive_read_data_block(a, &p, &n, &offset);
                if (r == ARCHIVE_EOF)
                        break;
                if (r < ARCHIVE_WARN)
                        return archive_fail(u, a);
                r = sparse_write(sw, (uint64_t) offset, p, n);
                if (r < 0)
                        return unpack_fail(u, r, "write", u->part);
                report_progress(u, w, a);
        }

        /* A sparse tar entry may end in a hole that no block covers. */
        if (archive_entry_size_is_set(e) && (uint64_t) archive_entry_size(e) > sw->base + sw->fill) {
                r = sparse_zeros(sw, (uint64_t) archive_entry_size(e) - (sw->base + sw->fill));
                if (r < 0)
                        return unpack_fail(u, r, "write", u->part);
        }
        return 0;
}

static void names_add(char *names, size_t size, const char *name) {
        size_t l = strlen(names);
        const char *sep = l > 0 ? ", " : "";

        if (l > 0 && streq(names + l - 3, "..."))
                return;
        if (l + strlen(sep) + strlen(name) + strlen(", ...") + 1 > size) {
                (void) snprintf(names + l, size - l, "%s...", sep);
                return;
        }
        (void) snprintf(names + l, size - l, "%s%s", sep, name);
}

/* The one regular file of whatever libarchive found (for raw, the stream itself). Directories, links and the
 * like are passed over; a second regular file is an error that names them all. */
static int extract_single(Unpack *u, Worker *w, struct archive *a, struct archive_entry *e, int out) {
        _cleanup_free_ uint8_t *buf = NULL;
        char names[UNPACK_NAMES_MAX] = "";
        unsigned n_files = 0;
        SparseWriter sw;
        int r;

        buf = malloc(UNPACK_SPARSE_BLOCK);
        if (!buf)
                return hydra_error_set(&u->error, -ENOMEM, "out of memory");
        sw = (SparseWriter) { .fd = out, .buf = buf, .wb.fd = out };

        for (;;) {
                bool regular = archive_entry_filetype(e) == AE_IFREG && !archive_entry_hardlink(e);

                if (regular) {
                        n_files++;
                        names_add(names, sizeof(names), archive_entry_pathname(e) ?: "?");
                }
                if (regular && n_files == 1)
                        r = copy_entry(u, w, a, e, &sw);
                else
                        r = skip_entry(u, w, a);
                if (r < 0)
                        return r;

                r = archive_read_next_header(a, &e);
                if (r == ARCHIVE_EOF)
                        break;
                if (r < ARCHIVE_WARN)
                        return archive_fail(u, a);
        }

        if (n_files == 0)
                return hydra_error_set(&u->error, -EBADMSG, "'%s' holds no file; expected one image", u->name);
        if (n_files > 1)
                return hydra_error_set(&u->error, -EBADMSG, "'%s' holds %u files (%s); expected one image", u->name,
                                       n_files, names);

        r = sparse_finish(&sw);
        if (r < 0)
                return unpack_fail(u, r, "write", u->part);
        return 0;
}

/* An uncompressed image (a qcow2, a raw disk): the kernel copies with copy_file_range(), sharing extents where
 * the filesystem can (XFS, btrfs). Only the source's data segments are copied, so its holes stay holes. Falls
 * back to read/write where copy_file_range() cannot be used. */
static int copy_plain(Unpack *u, Worker *w, int in, int out) {
        _cleanup_free_ uint8_t *buf = NULL;
        Writeback wb = { .fd = out };
        uint64_t pos = 0, size = u->in_total;
        bool use_cfr = true;

        while (pos < size) {
                off_t data, hole;

                data = lseek(in, (off_t) pos, SEEK_DATA);
                if (data < 0 && errno == ENXIO) /* only a hole is left */
                        break;
                if (data < 0) {
                        if (errno != EINVAL && errno != EOPNOTSUPP)
                                return unpack_fail(u, -errno, "seek in", u->src);
                        data = (off_t) pos; /* no SEEK_DATA here: it is all data */
                        hole = (off_t) size;
                } else {
                        hole = lseek(in, data, SEEK_HOLE);
                        if (hole < 0)
                                return unpack_fail(u, -errno, "seek in", u->src);
                }
                hole = (off_t) u64_min((uint64_t) hole, size);

                for (pos = (uint64_t) data; pos < (uint64_t) hole;) {
                        size_t n = (size_t) u64_min((uint64_t) hole - pos, UNPACK_COPY_CHUNK);
                        ssize_t k;

                        if (worker_cancelled(w))
                                return -ECANCELED;

                        if (use_cfr) {
                                loff_t off_in = (loff_t) pos, off_out = (loff_t) pos;

                                k = copy_file_range(in, &off_in, out, &off_out, n, 0);
                                if (k < 0 && (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP ||
                                              errno == EINVAL)) {
                                        use_cfr = false;
                                        continue;
                                }
                        } else {
                                if (!buf) {
                                        buf = malloc(UNPACK_COPY_CHUNK);
                                        if (!buf)
                                                return hydra_error_set(&u->error, -ENOMEM, "out of memory");
                                }
                                k = pread(in, buf, n, (off_t) pos);
                                if (k > 0) {
                                        int r = pwrite_all(out, buf, (size_t) k, pos);
                                        if (r < 0)
                                                return unpack_fail(u, r, "write", u->part);
                                }
                        }
                        if (k < 0) {
                                if (errno == EINTR)
                                        continue;
                                return unpack_fail(u, -errno, "copy to", u->part);
                        }
                        if (k == 0)
                                return hydra_error_set(&u->error, -EIO, "'%s' shrank while being copied", u->name);

                        pos += (uint64_t) k;
                        writeback_advance(&wb, pos);
                        worker_set_progress(w, pos, size);
                }
        }

        if (ftruncate(out, (off_t) size) < 0)
                return unpack_fail(u, -errno, "write", u->part);
        return 0;
}

static int image_unpack(Unpack *u, Worker *w) {
        _cleanup_(archive_read_freep) struct archive *a = NULL;
        _cleanup_close_ int in = -EBADF, out = -EBADF;
        struct archive_entry *e;
        int r;

        r = open_source(u, w, &in);
        if (r < 0)
                return r;
        r = open_archive(u, in, false, &a);
        if (r < 0)
                return r;
        r = archive_read_next_header(a, &e);
        if (r == ARCHIVE_EOF) {
                /* libarchive takes a stream that starts with a 512-byte zero block for an empty tar archive
                 * (that block is tar's end mark), and many disk images start so (ext4: 1 KiB of zeros). An
                 * image it is, then: read again as raw only. */
                (void) archive_read_free(TAKE_PTR(a));
                r = open_archive(u, in, true, &a);
                if (r < 0)
                        return r;
                r = archive_read_next_header(a, &e);
        }
        if (r == ARCHIVE_EOF)
                return hydra_error_set(&u->error, -EBADMSG, "'%s' holds no file; expected one image", u->name);
        if (r < ARCHIVE_WARN)
                return archive_fail(u, a);

        if (unlink(u->part) < 0 && errno != ENOENT)
                return unpack_fail(u, -errno, "remove stale", u->part);
        out = open(u->part, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (out < 0)
                return unpack_fail(u, -errno, "create", u->part);

        if (archive_format(a) == ARCHIVE_FORMAT_RAW && archive_filter_code(a, 0) == ARCHIVE_FILTER_NONE)
                r = copy_plain(u, w, in, out);
        else
                r = extract_single(u, w, a, e, out);
        if (r < 0)
                return r;

        if (fsync(out) < 0)
                return unpack_fail(u, -errno, "sync", u->part);
        if (close(TAKE_FD(out)) < 0)
                return unpack_fail(u, -errno, "write", u->part);
        if (rename(u->part, u->dest) < 0)
                return unpack_fail(u, -errno, "rename into", u->dest);
        r = fsync_parent(u->dest);
        if (r < 0)
                return unpack_fail(u, r, "sync the directory of", u->dest);

        worker_set_progress(w, u->in_total, u->in_total);
        return 0;
}

static int image_run(Worker *w, void *userdata) {
        Unpack *u = userdata;
        int r;

        r = image_unpack(u, w);
        if (r < 0)
                (void) unlink(u->part);
        return r;
}

/* --- unpack_tree --- */

/* Normalizes an entry name into buf ("./a//b/" -> "a/b"). Returns the number of components, -EPERM for an
 * absolute name or a ".." component, -ENAMETOOLONG. */
static int clean_path(const char *path, char *buf, size_t size) {
        size_t len = 0;
        int n = 0;

        if (path[0] == '/')
                return -EPERM;
        for (const char *p = path; *p;) {
                size_t k = strcspn(p, "/");

                if (k == 2 && p[0] == '.' && p[1] == '.')
                        return -EPERM;
                if (k > 0 && !(k == 1 && p[0] == '.')) {
                        if (len + 1 + k + 1 > size)
                                return -ENAMETOOLONG;
                        if (len > 0)
                                buf[len++] = '/';
                        memcpy(buf + len, p, k);
                        len += k;
                        n++;
                }
                p += k;
                while (*p == '/')
                        p++;
        }
        buf[len] = '\0';
        return n;
}

/* Whether a symlink whose directory is depth components below the root climbs above it by its own "..", or is
 * absolute. The lexical half of the check: tree_walk() catches a climb through another link. */
static bool symlink_escapes(int depth, const char *target) {
        if (isempty(target) || target[0] == '/')
                return true;
        for (const char *p = target; *p;) {
                size_t k = strcspn(p, "/");

                if (k == 2 && p[0] == '.' && p[1] == '.') {
                        if (--depth < 0)
                                return true;
                } else if (k > 0 && !(k == 1 && p[0] == '.'))
                        depth++;
                p += k;
                while (*p == '/')
                        p++;
        }
        return false;
}

static const char *filetype_to_string(mode_t type) {
        switch (type) {
        case AE_IFCHR:
                return "character device";
        case AE_IFBLK:
                return "block device";
        case AE_IFIFO:
                return "fifo";
        case AE_IFSOCK:
                return "socket";
        default:
                return "file of unknown type";
        }
}

static int tree_entry(Unpack *u, Worker *w, struct archive *a, struct archive *ext, struct archive_entry *e,
                      const char *prefix) {
        char clean[PATH_MAX], full[PATH_MAX];
        const char *path = archive_entry_pathname(e), *link;
        mode_t type = archive_entry_filetype(e);
        int depth, r;

        if (!path)
                return hydra_error_set(&u->error, -EBADMSG, "'%s': an entry's name cannot be decoded", u->name);
        depth = clean_path(path, clean, sizeof(clean));
        if (depth == -ENAMETOOLONG)
                return hydra_error_set(&u->error, -EBADMSG, "'%s': entry name '%.64s...' is too long", u->name, path);
        if (depth < 0)
                return hydra_error_set(&u->error, -EBADMSG, "'%s': entry '%s' leaves the directory; refusing",
                                       u->name, path);
        if (depth == 0) /* "./": the root, which is ours */
                return skip_entry(u, w, a);

        link = archive_entry_hardlink(e);
        if (link) {
                /* A second name for an earlier entry, which passed these checks itself; tar stores no type. */
                char target[PATH_MAX];

                if (clean_path(link, target, sizeof(target)) <= 0 ||
                    (size_t) snprintf(full, sizeof(full), "%s/%s", prefix, target) >= sizeof(full))
                        return hydra_error_set(&u->error, -EBADMSG,
                                               "'%s': hard link '%s' -> '%s' leaves the directory; refusing",
                                               u->name, clean, link);
                archive_entry_copy_hardlink(e, full);
        } else
                switch (type) {
                case AE_IFREG:
                case AE_IFDIR:
                        break;
                case AE_IFLNK:
                        link = archive_entry_symlink(e);
                        if (!link || symlink_escapes(depth - 1, link))
                                return hydra_error_set(
                                        &u->error, -EBADMSG,
                                        "'%s': symlink '%s' -> '%s' points outside the directory; refusing", u->name,
                                        clean, strempty(link));
                        break;
                default:
                        return hydra_error_set(&u->error, -EBADMSG,
                                               "'%s': '%s' is a %s; only files, directories and symlinks are allowed",
                                               u->name, clean, filetype_to_string(type));
                }

        /* Below PATH_MAX, or libarchive would chdir(). */
        if ((size_t) snprintf(full, sizeof(full), "%s/%s", prefix, clean) >= sizeof(full))
                return hydra_error_set(&u->error, -EBADMSG, "'%s': entry name '%.64s...' is too long", u->name, clean);
        archive_entry_copy_pathname(e, full);
        /* We run as root and do not restore owners: a set-id bit would make the file set-id root. */
        archive_entry_set_perm(e, archive_entry_perm(e) & ~(mode_t) (S_ISUID | S_ISGID));

        if (archive_write_header(ext, e) < ARCHIVE_WARN)
                return hydra_error_set(&u->error, -EBADMSG, "'%s': cannot extract '%s': %s", u->name, clean,
                                       strempty(archive_error_string(ext)));

        for (;;) {
                const void *p;
                size_t n;
                la_int64_t offset;

                if (worker_cancelled(w))
                        return -ECANCELED;
                r = archive_read_data_block(a, &p, &n, &offset);
                if (r == ARCHIVE_EOF)
                        break;
                if (r < ARCHIVE_WARN)
                        return archive_fail(u, a);
                if (archive_write_data_block(ext, p, n, offset) < ARCHIVE_WARN)
                        return hydra_error_set(&u->error, archive_errno(ext) > 0 ? -archive_errno(ext) : -EIO,
                                               "'%s': cannot write '%s': %s", u->name, clean,
                                               strempty(archive_error_string(ext)));
                report_progress(u, w, a);
        }

        if (archive_write_finish_entry(ext) < ARCHIVE_WARN)
                return hydra_error_set(&u->error, archive_errno(ext) > 0 ? -archive_errno(ext) : -EIO,
                                       "'%s': cannot extract '%s': %s", u->name, clean,
                                       strempty(archive_error_string(ext)));
        return 0;
}

/* Refuses a symlink whose resolution leaves the tree, through other links included: openat2() with
 * RESOLVE_BENEATH fails with EXDEV exactly then. A link that resolves to nothing (dangling, looping) reaches
 * nothing outside either. */
static int tree_check_symlink(Unpack *u, int rootfd, const char *rel) {
        struct open_how how = {
                .flags = O_PATH | O_CLOEXEC,
                .resolve = RESOLVE_BENEATH,
        };
        int fd;

        for (unsigned attempt = 0;; attempt++) {
                fd = (int) syscall(SYS_openat2, rootfd, rel, &how, sizeof(how));
                if (fd >= 0) {
                        safe_close(fd);
                        return 0;
                }
                /* EAGAIN: a rename elsewhere on the system raced with the ".." check. */
                if (errno != EAGAIN || attempt >= 8)
                        break;
        }

        switch (errno) {
        case EXDEV:
                return hydra_error_set(&u->error, -EBADMSG,
                                       "'%s': symlink '%s' points outside the directory; refusing", u->name, rel);
        case ENOENT:
        case ENOTDIR:
        case ELOOP:
                return 0;
        case ENOSYS:
        case EPERM:
                /* No openat2() (before Linux 5.6, or a seccomp filter): the per-entry check stands alone. */
                return 0;
        default:
                return unpack_fail(u, -errno, "resolve", rel);
        }
}

/* Walks the extracted tree (fd: a directory, taken over): checks every symlink, fsyncs every file and
 * directory so that the rename publishes complete data. rel holds the path below the root (len bytes). */
static int tree_walk(Unpack *u, Worker *w, int rootfd, int fd, char *rel, size_t len) {
        _cleanup_(closedirp) DIR *d = NULL;
        int r;

        d = fdopendir(fd);
        if (!d) {
                r = -errno;
                safe_close(fd);
                return unpack_fail(u, r, "read directory", u->part);
        }

        for (;;) {
                struct dirent *de;
                struct stat st;
                size_t n;

                errno = 0;
                de = readdir(d);
                if (!de) {
                        if (errno != 0)
                                return unpack_fail(u, -errno, "read directory", u->part);
                        break;
                }
                if (streq(de->d_name, ".") || streq(de->d_name, ".."))
                        continue;
                if (worker_cancelled(w))
                        return -ECANCELED;

                n = (size_t) snprintf(rel + len, PATH_MAX - len, "%s%s", len > 0 ? "/" : "", de->d_name);
                if (len + n >= PATH_MAX)
                        return hydra_error_set(&u->error, -ENAMETOOLONG, "'%s': a path is too long", u->name);
                if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                        return unpack_fail(u, -errno, "stat", rel);

                if (S_ISLNK(st.st_mode))
                        r = tree_check_symlink(u, rootfd, rel);
                else if (S_ISDIR(st.st_mode)) {
                        int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                        if (sub < 0)
                                return unpack_fail(u, -errno, "open", rel);
                        r = tree_walk(u, w, rootfd, sub, rel, len + n);
                } else if (S_ISREG(st.st_mode)) {
                        _cleanup_close_ int f = openat(dirfd(d), de->d_name,
                                                       O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC);
                        if (f < 0 || fsync(f) < 0)
                                return unpack_fail(u, -errno, "sync", rel);
                        r = 0;
                } else
                        r = hydra_error_set(&u->error, -EBADMSG, "'%s': '%s' is not a file, directory or symlink",
                                            u->name, rel);
                if (r < 0)
                        return r;
                rel[len] = '\0';
        }

        if (fsync(dirfd(d)) < 0)
                return unpack_fail(u, -errno, "sync", len > 0 ? rel : u->part);
        return 0;
}

/* "<realpath of DEST's directory>/<basename of DEST>.part": the same directory as u->part, spelled without
 * symlinks or "..", as SECURE_SYMLINKS and SECURE_NODOTDOT need. */
static int tree_prefix(Unpack *u, char **ret) {
        _cleanup_free_ char *dir = strdup(u->dest), *canonical = NULL;
        const char *parent, *base;
        char *slash;

        if (!dir)
                return hydra_error_set(&u->error, -ENOMEM, "out of memory");
        slash = strrchr(dir, '/');
        if (!slash) {
                parent = ".";
                base = dir;
        } else {
                *slash = '\0';
                parent = slash == dir ? "/" : dir;
                base = slash + 1;
        }
        canonical = realpath(parent, NULL);
        if (!canonical)
                return unpack_fail(u, -errno, "resolve", parent);
        if (asprintf(ret, "%s/%s.part", streq(canonical, "/") ? "" : canonical, base) < 0)
                return hydra_error_set(&u->error, -ENOMEM, "out of memory");
        return 0;
}

/* Puts DEST.part in DEST's place. An existing DEST is swapped out atomically with RENAME_EXCHANGE where the
 * filesystem can, else renamed away first; either way the old tree is removed afterwards. */
static int tree_commit(Unpack *u) {
        _cleanup_free_ char *old = NULL;
        int r;

        if (renameat2(AT_FDCWD, u->part, AT_FDCWD, u->dest, RENAME_NOREPLACE) >= 0)
                return 0;
        if (errno == EEXIST) {
                if (renameat2(AT_FDCWD, u->part, AT_FDCWD, u->dest, RENAME_EXCHANGE) >= 0) {
                        r = rm_rf_at(AT_FDCWD, u->part); /* now the old tree */
                        if (r < 0)
                                log_warning_errno(r, "Cannot remove the replaced '%s' (now '%s'), ignoring: %m",
                                                  u->dest, u->part);
                        return 0;
                }
        }
        if (errno != EINVAL && errno != ENOSYS)
                return unpack_fail(u, -errno, "rename into", u->dest);

        if (asprintf(&old, "%s.old", u->dest) < 0)
                return hydra_error_set(&u->error, -ENOMEM, "out of memory");
        r = rm_rf_at(AT_FDCWD, old);
        if (r < 0)
                return unpack_fail(u, r, "remove stale", old);
        if (rename(u->dest, old) < 0 && errno != ENOENT)
                return unpack_fail(u, -errno, "rename away", u->dest);
        if (rename(u->part, u->dest) < 0) {
                r = -errno;
                (void) rename(old, u->dest);
                return unpack_fail(u, r, "rename into", u->dest);
        }
        r = rm_rf_at(AT_FDCWD, old);
        if (r < 0)
                log_warning_errno(r, "Cannot remove the replaced '%s', ignoring: %m", old);
        return 0;
}

static int tree_unpack(Unpack *u, Worker *w) {
        _cleanup_(archive_read_freep) struct archive *a = NULL;
        _cleanup_(archive_write_freep) struct archive *ext = NULL;
        _cleanup_close_ int in = -EBADF, root = -EBADF;
        _cleanup_free_ char *prefix = NULL;
        char rel[PATH_MAX] = "";
        bool first = true;
        int r, fd;

        r = open_source(u, w, &in);
        if (r < 0)
                return r;
        r = tree_prefix(u, &prefix);
        if (r < 0)
                return r;

        r = rm_rf_at(AT_FDCWD, u->part);
        if (r < 0)
                return unpack_fail(u, r, "remove stale", u->part);
        if (mkdir(u->part, 0755) < 0)
                return unpack_fail(u, -errno, "create", u->part);
        root = open(u->part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (root < 0 || fchmod(root, 0755) < 0)
                return unpack_fail(u, -errno, "open", u->part);

        r = open_archive(u, in, false, &a);
        if (r < 0)
                return r;
        ext = archive_write_disk_new();
        if (!ext)
                return hydra_error_set(&u->error, -ENOMEM, "out of memory");
        /* No ARCHIVE_EXTRACT_OWNER (root would chown to the archive's uids), XATTR (security.capability), ACL,
         * FFLAGS; no SECURE_NOABSOLUTEPATHS, see the top of the file. */
        if (archive_write_disk_set_options(ext, ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME |
                                                        ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                                                        ARCHIVE_EXTRACT_SECURE_SYMLINKS) < ARCHIVE_WARN)
                return hydra_error_set(&u->error, -EIO, "libarchive: %s", strempty(archive_error_string(ext)));

        for (;;) {
                struct archive_entry *e;

                r = archive_read_next_header(a, &e);
                if (r == ARCHIVE_EOF && first)
                        /* Also what a stream starting with 512 zero bytes looks like: tar's end mark. */
                        return hydra_error_set(&u->error, -EBADMSG, "'%s' holds no files", u->name);
                if (r == ARCHIVE_EOF)
                        break;
                if (r < ARCHIVE_WARN)
                        return archive_fail(u, a);
                first = false;
                r = tree_entry(u, w, a, ext, e, prefix);
                if (r < 0)
                        return r;
        }
        /* Applies the deferred directory modes and times. */
        if (archive_write_close(ext) < ARCHIVE_WARN)
                return hydra_error_set(&u->error, -EIO, "'%s': %s", u->name, strempty(archive_error_string(ext)));

        fd = fcntl(root, F_DUPFD_CLOEXEC, 3);
        if (fd < 0)
                return unpack_fail(u, -errno, "open", u->part);
        r = tree_walk(u, w, root, fd, rel, 0);
        if (r < 0)
                return r;

        r = tree_commit(u);
        if (r < 0)
                return r;
        r = fsync_parent(u->dest);
        if (r < 0)
                return unpack_fail(u, r, "sync the directory of", u->dest);

        worker_set_progress(w, u->in_total, u->in_total);
        return 0;
}

static int tree_run(Worker *w, void *userdata) {
        Unpack *u = userdata;
        int r, k;

        r = tree_unpack(u, w);
        if (r < 0) {
                k = rm_rf_at(AT_FDCWD, u->part);
                if (k < 0)
                        log_warning_errno(k, "Cannot remove '%s', ignoring: %m", u->part);
        }
        return r;
}

/* --- the loop side --- */

static void on_worker_progress(Worker *w, uint64_t done, uint64_t total, void *userdata) {
        Unpack *u = userdata;

        u->progress(u, done, total, u->userdata);
}

static void on_worker_done(Worker *w, int r, void *userdata) {
        Unpack *u = userdata;

        u->worker = NULL; /* the worker frees itself when we return */
        if (r < 0 && u->error.code == 0)
                hydra_error_set(&u->error, r, "unpack '%s': %s", u->name, strerror(-r));

        u->dispatching = true;
        u->done(u, r < 0 ? r : 0, r < 0 ? &u->error : NULL, u->userdata);
        unpack_free(u);
}

static int unpack_start(UnpackMode mode, sd_event *event, const char *src, const char *name_hint,
                        const char *dest, unpack_progress_t progress, unpack_done_t done, void *userdata,
                        Unpack **ret, HydraError *err) {
        _cleanup_(unpack_freep) Unpack *u = NULL;
        size_t l;
        int r;

        if (!event || isempty(src) || isempty(dest) || !done)
                return hydra_error_set(err, -EINVAL, "unpack: source, destination and callback are required");
        l = strlen(dest);
        if (dest[l - 1] == '/')
                return hydra_error_set(err, -EINVAL, "unpack: destination '%s' must not end in '/'", dest);

        u = calloc(1, sizeof(*u));
        if (!u)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        u->mode = mode;
        u->progress = progress;
        u->done = done;
        u->userdata = userdata;
        u->src = strdup(src);
        u->name = strdup(isempty(name_hint) ? src : name_hint);
        u->dest = strdup(dest);
        if (!u->src || !u->name || !u->dest || asprintf(&u->part, "%s.part", dest) < 0)
                return hydra_error_set(err, -ENOMEM, "out of memory");

        r = worker_start(event, mode == UNPACK_IMAGE ? "unpack-image" : "unpack-tree",
                         mode == UNPACK_IMAGE ? image_run : tree_run, progress ? on_worker_progress : NULL,
                         on_worker_done, u, &u->worker);
        if (r < 0)
                return hydra_error_set(err, r, "unpack '%s': cannot start a worker: %s", u->name, strerror(-r));

        if (ret)
                *ret = u;
        TAKE_PTR(u); /* on_worker_done or unpack_cancel frees it */
        return 0;
}

int unpack_image(sd_event *event, const char *src, const char *name_hint, const char *dest,
                 unpack_progress_t progress, unpack_done_t done, void *userdata, Unpack **ret, HydraError *err) {
        return unpack_start(UNPACK_IMAGE, event, src, name_hint, dest, progress, done, userdata, ret, err);
}

int unpack_tree(sd_event *event, const char *src, const char *name_hint, const char *dest,
                unpack_progress_t progress, unpack_done_t done, void *userdata, Unpack **ret, HydraError *err) {
        return unpack_start(UNPACK_TREE, event, src, name_hint, dest, progress, done, userdata, ret, err);
}

void unpack_cancel(Unpack *u) {
        if (!u || u->dispatching)
                return;
        /* Joins the thread, which removed its partial output on the way out. From the final progress callback
         * the worker only notes the cancel (and skips done): either way u is ours to free. */
        worker_cancel(TAKE_PTR(u->worker));
        unpack_free(u);
}
