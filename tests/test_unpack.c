/* SPDX-License-Identifier: MIT */
/* unpack_image and unpack_tree on a private sd_event. Every fixture is made at test time in a temporary
 * directory with libarchive's write API: no binary fixtures in the repository. */
#include <archive.h>
#include <archive_entry.h>
#include <check.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>

#include "macro.h"
#include "unpack.h"

#define USEC_PER_MSEC 1000ULL
#define RUN_BOUND_USEC (60ULL * 1000000ULL) /* no wait in this file may take longer (ASan included) */
#define MiB (1024ULL * 1024ULL)

typedef struct Result {
        Unpack *u;
        int n_done;
        int r;
        char message[1024];
        int n_progress;
        uint64_t last_in, last_total;
        bool progress_went_back;
        bool cancel_in_done;
} Result;

typedef struct Entry {
        const char *path;
        mode_t type; /* AE_IFREG, AE_IFDIR, AE_IFLNK, AE_IFIFO */
        mode_t perm;
        const char *data;     /* AE_IFREG */
        const char *symlink;  /* AE_IFLNK */
        const char *hardlink; /* AE_IFREG: a hard link to this earlier entry */
} Entry;

static sd_event *event;
static pthread_t loop_thread;
static char tmp[] = "/tmp/test-unpack-XXXXXX";

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path) < 0 ? -1 : 0;
}

static void setup(void) {
        ck_assert_int_ge(sd_event_new(&event), 0);
        loop_thread = pthread_self();
        memcpy(tmp + strlen(tmp) - 6, "XXXXXX", 6);
        ck_assert_ptr_nonnull(mkdtemp(tmp));
}

static void teardown(void) {
        event = sd_event_unref(event);
        (void) nftw(tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* A path in the temporary directory; lives until the next 8 calls. */
static const char *P(const char *name) {
        static char bufs[8][PATH_MAX];
        static unsigned i;
        char *b = bufs[i++ % ELEMENTSOF(bufs)];

        (void) snprintf(b, PATH_MAX, "%s/%s", tmp, name);
        return b;
}

static uint64_t now_usec(void) {
        struct timespec ts;

        ck_assert_int_eq(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

static void run_until(const int *counter, int value) {
        uint64_t deadline = now_usec() + RUN_BOUND_USEC;

        while (*counter < value) {
                ck_assert_msg(now_usec() < deadline, "timed out waiting for a callback");
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
        }
}

static void run_for(uint64_t usec) {
        uint64_t end = now_usec() + usec;

        while (now_usec() < end)
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
}

static bool exists(const char *path) {
        struct stat st;

        return lstat(path, &st) == 0;
}

/* --- data --- */

/* Deterministic bytes that do not compress: xorshift64. */
static void fill_random(uint8_t *p, size_t n, uint64_t seed) {
        uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 1;

        for (size_t i = 0; i < n; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p[i] = (uint8_t) x;
        }
}

/* size bytes of random data with every fourth 64 KiB block zero: both kinds of block, and compressible. */
static uint8_t *make_data(size_t size, uint64_t seed) {
        uint8_t *p = malloc(size);

        ck_assert_ptr_nonnull(p);
        fill_random(p, size, seed);
        for (size_t off = 0; off < size; off += 4 * 64 * 1024)
                memset(p + off, 0, size - off < 64 * 1024 ? size - off : 64 * 1024);
        return p;
}

static void write_file(const char *path, const void *data, size_t size) {
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write(fd, data, size), (ssize_t) size);
}

static uint8_t *read_file(const char *path, size_t *ret_size) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        uint8_t *p;
        size_t have = 0;

        ck_assert_msg(fd >= 0, "cannot open '%s'", path);
        ck_assert_int_eq(fstat(fd, &st), 0);
        p = malloc((size_t) st.st_size + 1);
        ck_assert_ptr_nonnull(p);
        while (have < (size_t) st.st_size) {
                ssize_t n = read(fd, p + have, (size_t) st.st_size - have);
                ck_assert_int_gt(n, 0);
                have += (size_t) n;
        }
        p[have] = 0;
        *ret_size = have;
        return p;
}

static void assert_file_is(const char *path, const void *data, size_t size) {
        _cleanup_free_ uint8_t *p = NULL;
        size_t n;

        p = read_file(path, &n);
        ck_assert_uint_eq(n, size);
        ck_assert_msg(memcmp(p, data, size) == 0, "'%s' differs from what was packed", path);
}

/* --- fixtures, with libarchive's write API --- */

static struct archive *archive_new(const char *path, int filter, int format) {
        struct archive *a = archive_write_new();

        ck_assert_ptr_nonnull(a);
        ck_assert_int_eq(archive_write_add_filter(a, filter), ARCHIVE_OK);
        ck_assert_int_eq(archive_write_set_format(a, format), ARCHIVE_OK);
        if (filter == ARCHIVE_FILTER_GZIP || filter == ARCHIVE_FILTER_XZ || filter == ARCHIVE_FILTER_BZIP2)
                ck_assert_int_eq(archive_write_set_filter_option(a, NULL, "compression-level", "1"), ARCHIVE_OK);
        /* No padding after the stream. */
        ck_assert_int_eq(archive_write_set_bytes_in_last_block(a, 1), ARCHIVE_OK);
        ck_assert_int_eq(archive_write_open_filename(a, path), ARCHIVE_OK);
        return a;
}

static void archive_done(struct archive *a) {
        ck_assert_int_eq(archive_write_close(a), ARCHIVE_OK);
        ck_assert_int_eq(archive_write_free(a), ARCHIVE_OK);
}

/* A bare compressed stream (.gz, .xz, .bz2) of data, repeated zeros_chunks times if data is NULL (1 MiB of
 * zeros each). */
static void write_stream(const char *path, int filter, const void *data, size_t size) {
        struct archive *a = archive_new(path, filter, ARCHIVE_FORMAT_RAW);
        struct archive_entry *e = archive_entry_new();

        archive_entry_set_pathname(e, "data");
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_perm(e, 0644);
        ck_assert_int_eq(archive_write_header(a, e), ARCHIVE_OK);
        for (size_t off = 0; off < size;) {
                la_ssize_t n = archive_write_data(a, (const uint8_t *) data + off, size - off);
                ck_assert_int_gt(n, 0);
                off += (size_t) n;
        }
        archive_entry_free(e);
        archive_done(a);
}

static void write_archive(const char *path, int filter, int format, const Entry *entries, size_t n) {
        struct archive *a = archive_new(path, filter, format);

        for (size_t i = 0; i < n; i++) {
                const Entry *x = entries + i;
                struct archive_entry *e = archive_entry_new();
                size_t size = x->data ? strlen(x->data) : 0;

                archive_entry_set_pathname(e, x->path);
                archive_entry_set_filetype(e, x->type ?: AE_IFREG);
                archive_entry_set_perm(e, x->perm ?: 0644);
                archive_entry_set_mtime(e, 1700000000, 0);
                if (x->symlink)
                        archive_entry_set_symlink(e, x->symlink);
                if (x->hardlink)
                        archive_entry_set_hardlink(e, x->hardlink);
                archive_entry_set_size(e, (la_int64_t) size);
                ck_assert_int_eq(archive_write_header(a, e), ARCHIVE_OK);
                if (size > 0)
                        ck_assert_int_eq(archive_write_data(a, x->data, size), (la_ssize_t) size);
                archive_entry_free(e);
        }
        archive_done(a);
}

/* A gzip stream of n_members members of 64 MiB of zeros each: gigabytes of output from a small file, made in
 * a fraction of a second (one member compressed, then copied). */
static void write_big_zero_gz(const char *path, unsigned n_members) {
        _cleanup_free_ uint8_t *zeros = calloc(1, 64 * MiB);
        _cleanup_free_ uint8_t *member = NULL;
        _cleanup_close_ int fd = -EBADF;
        size_t size;

        ck_assert_ptr_nonnull(zeros);
        write_stream(P("member.gz"), ARCHIVE_FILTER_GZIP, zeros, 64 * MiB);
        member = read_file(P("member.gz"), &size);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        ck_assert_int_ge(fd, 0);
        for (unsigned i = 0; i < n_members; i++)
                ck_assert_int_eq(write(fd, member, size), (ssize_t) size);
        ck_assert_int_eq(unlink(P("member.gz")), 0);
}

/* --- running --- */

static void on_progress(Unpack *u, uint64_t in_bytes, uint64_t in_total, void *userdata) {
        Result *res = userdata;

        ck_assert(pthread_equal(pthread_self(), loop_thread));
        ck_assert_ptr_eq(u, res->u);
        ck_assert_uint_le(in_bytes, in_total);
        if (res->n_progress > 0 && in_bytes < res->last_in)
                res->progress_went_back = true;
        res->n_progress++;
        res->last_in = in_bytes;
        res->last_total = in_total;
}

static void on_done(Unpack *u, int r, const HydraError *err, void *userdata) {
        Result *res = userdata;

        ck_assert(pthread_equal(pthread_self(), loop_thread));
        ck_assert_ptr_eq(u, res->u);
        ck_assert(r >= 0 ? err == NULL : err && err->code == r);
        res->n_done++;
        res->r = r;
        if (err)
                (void) snprintf(res->message, sizeof(res->message), "%s", err->message);
        if (err && getenv("UNPACK_TEST_DEBUG"))
                fprintf(stderr, "done: %d %s\n", r, err->message);
        if (res->cancel_in_done)
                unpack_cancel(u); /* a no-op from inside done */
}

typedef int (*unpack_fn)(sd_event *, const char *, const char *, const char *, unpack_progress_t, unpack_done_t,
                         void *, Unpack **, HydraError *);

static int run_unpack(unpack_fn fn, const char *src, const char *hint, const char *dest, Result *res) {
        HydraError err = {};

        ck_assert_int_eq(fn(event, src, hint, dest, on_progress, on_done, res, &res->u, &err), 0);
        run_until(&res->n_done, 1);
        return res->r;
}

/* Neither DEST nor DEST.part. */
static void assert_no_output(const char *dest) {
        char part[PATH_MAX];

        (void) snprintf(part, sizeof(part), "%s.part", dest);
        ck_assert_msg(!exists(dest), "'%s' exists", dest);
        ck_assert_msg(!exists(part), "'%s' exists", part);
}

/* --- unpack_image --- */

static const int stream_filters[] = { ARCHIVE_FILTER_GZIP, ARCHIVE_FILTER_XZ, ARCHIVE_FILTER_BZIP2 };

START_TEST(test_image_stream) {
        _cleanup_free_ uint8_t *data = make_data(3 * MiB + 12345, 1);
        Result res = {};

        write_stream(P("img.z"), stream_filters[_i], data, 3 * MiB + 12345);
        ck_assert_int_eq(run_unpack(unpack_image, P("img.z"), "img.z", P("disk.img"), &res), 0);
        assert_file_is(P("disk.img"), data, 3 * MiB + 12345);
        ck_assert(!exists(P("disk.img.part")));

        ck_assert_int_ge(res.n_progress, 1);
        ck_assert(!res.progress_went_back);
        ck_assert_uint_eq(res.last_in, res.last_total);
}
END_TEST

static const struct {
        int filter, format;
} single_archives[] = {
        { ARCHIVE_FILTER_NONE, ARCHIVE_FORMAT_ZIP },
        { ARCHIVE_FILTER_GZIP, ARCHIVE_FORMAT_TAR_PAX_RESTRICTED },
        { ARCHIVE_FILTER_NONE, ARCHIVE_FORMAT_TAR_PAX_RESTRICTED },
};

/* A zip or tar holding one regular file, next to a directory and a symlink (passed over). */
START_TEST(test_image_single_in_archive) {
        _cleanup_free_ uint8_t *data = make_data(2 * MiB + 7, 2);
        struct archive *a = archive_new(P("one.arc"), single_archives[_i].filter, single_archives[_i].format);
        struct archive_entry *e;
        Result res = {};

        e = archive_entry_new();
        archive_entry_set_pathname(e, "images/");
        archive_entry_set_filetype(e, AE_IFDIR);
        archive_entry_set_perm(e, 0755);
        ck_assert_int_eq(archive_write_header(a, e), ARCHIVE_OK);
        archive_entry_clear(e);
        archive_entry_set_pathname(e, "images/disk.qcow2");
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_perm(e, 0644);
        archive_entry_set_size(e, 2 * MiB + 7);
        ck_assert_int_eq(archive_write_header(a, e), ARCHIVE_OK);
        ck_assert_int_eq(archive_write_data(a, data, 2 * MiB + 7), (la_ssize_t) (2 * MiB + 7));
        archive_entry_clear(e);
        archive_entry_set_pathname(e, "latest");
        archive_entry_set_filetype(e, AE_IFLNK);
        archive_entry_set_symlink(e, "images/disk.qcow2");
        archive_entry_set_perm(e, 0777);
        ck_assert_int_eq(archive_write_header(a, e), ARCHIVE_OK);
        archive_entry_free(e);
        archive_done(a);

        ck_assert_int_eq(run_unpack(unpack_image, P("one.arc"), NULL, P("disk.img"), &res), 0);
        assert_file_is(P("disk.img"), data, 2 * MiB + 7);
        ck_assert(!exists(P("disk.img.part")));
}
END_TEST

/* An uncompressed file is copied as is, holes included; an existing DEST is replaced. */
START_TEST(test_image_plain) {
        _cleanup_free_ uint8_t *data = make_data(8 * MiB, 3), *a = NULL;
        _cleanup_close_ int fd = -EBADF;
        struct stat src_st, dst_st;
        Result res = {};

        /* "QFI\xfb": what libarchive sees is a file it does not know, like a qcow2. */
        memcpy(data, "QFI\xfb", 4);
        memset(data + 3 * MiB, 0, 3 * MiB);
        fd = open(P("disk.qcow2"), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(pwrite(fd, data, 3 * MiB, 0), (ssize_t) (3 * MiB));
        ck_assert_int_eq(pwrite(fd, data + 6 * MiB, 2 * MiB, 6 * MiB), (ssize_t) (2 * MiB));
        fd = safe_close(fd);
        write_file(P("disk.img"), "old", 3);

        ck_assert_int_eq(run_unpack(unpack_image, P("disk.qcow2"), "disk.qcow2", P("disk.img"), &res), 0);
        assert_file_is(P("disk.img"), data, 8 * MiB);
        ck_assert(!exists(P("disk.img.part")));

        ck_assert_int_eq(stat(P("disk.qcow2"), &src_st), 0);
        ck_assert_int_eq(stat(P("disk.img"), &dst_st), 0);
        ck_assert_msg(dst_st.st_blocks <= src_st.st_blocks + 64, "the source's hole was filled: %lld > %lld blocks",
                      (long long) dst_st.st_blocks, (long long) src_st.st_blocks);
        ck_assert_uint_eq(res.last_in, 8 * MiB);
        ck_assert_uint_eq(res.last_total, 8 * MiB);
}
END_TEST

/* An uncompressed image that starts with zeros (ext4 does) looks like an empty tar to libarchive: still copied. */
START_TEST(test_image_plain_zero_start) {
        _cleanup_free_ uint8_t *data = make_data(1 * MiB + 3, 6);
        Result res = {};

        write_file(P("fs.img"), data, 1 * MiB + 3);
        ck_assert_int_eq(run_unpack(unpack_image, P("fs.img"), "fs.img", P("disk.img"), &res), 0);
        assert_file_is(P("disk.img"), data, 1 * MiB + 3);
}
END_TEST

/* A mostly-zero image decompresses to a sparse file. */
START_TEST(test_image_sparse) {
        const size_t size = 64 * MiB + 100;
        _cleanup_free_ uint8_t *data = calloc(1, size);
        struct stat st;
        Result res = {};

        ck_assert_ptr_nonnull(data);
        for (size_t off = 0; off + 4096 <= size; off += 16 * MiB)
                fill_random(data + off, 4096, off);
        fill_random(data + size - 100, 100, 99);
        write_stream(P("sparse.gz"), ARCHIVE_FILTER_GZIP, data, size);

        ck_assert_int_eq(run_unpack(unpack_image, P("sparse.gz"), NULL, P("disk.img"), &res), 0);
        assert_file_is(P("disk.img"), data, size);
        ck_assert_int_eq(stat(P("disk.img"), &st), 0);
        ck_assert_msg((uint64_t) st.st_blocks * 512 <= 2 * MiB, "%lld bytes allocated for a mostly-zero image",
                      (long long) st.st_blocks * 512);
}
END_TEST

START_TEST(test_image_two_files) {
        const Entry entries[] = {
                { .path = "a.img", .data = "first" },
                { .path = "b.img", .data = "second" },
        };
        Result res = {};

        write_archive(P("two.zip"), ARCHIVE_FILTER_NONE, ARCHIVE_FORMAT_ZIP, entries, ELEMENTSOF(entries));
        ck_assert_int_eq(run_unpack(unpack_image, P("two.zip"), "two.zip", P("disk.img"), &res), -EBADMSG);
        ck_assert_str_eq(res.message, "'two.zip' holds 2 files (a.img, b.img); expected one image");
        assert_no_output(P("disk.img"));
}
END_TEST

START_TEST(test_image_truncated) {
        _cleanup_free_ uint8_t *data = make_data(4 * MiB, 4);
        struct stat st;
        Result res = {};

        write_stream(P("x.gz"), ARCHIVE_FILTER_GZIP, data, 4 * MiB);
        ck_assert_int_eq(stat(P("x.gz"), &st), 0);
        ck_assert_int_eq(truncate(P("x.gz"), st.st_size / 2), 0);

        ck_assert_int_eq(run_unpack(unpack_image, P("x.gz"), "x.gz", P("disk.img"), &res), -EBADMSG);
        ck_assert_str_eq(res.message, "'x.gz': truncated gzip stream");
        assert_no_output(P("disk.img"));
}
END_TEST

START_TEST(test_image_errors) {
        Result res = {};
        HydraError err = {};
        Unpack *u = NULL;

        ck_assert_int_eq(run_unpack(unpack_image, P("missing.gz"), NULL, P("disk.img"), &res), -ENOENT);
        ck_assert_ptr_nonnull(strstr(res.message, "missing.gz"));
        assert_no_output(P("disk.img"));

        res = (Result) {};
        write_file(P("empty.img"), "", 0);
        ck_assert_int_eq(run_unpack(unpack_image, P("empty.img"), "empty.img", P("disk.img"), &res), -EBADMSG);
        ck_assert_str_eq(res.message, "'empty.img' is empty");
        assert_no_output(P("disk.img"));

        ck_assert_int_eq(unpack_image(event, P("x"), NULL, "", NULL, on_done, &res, &u, &err), -EINVAL);
        ck_assert_int_eq(unpack_image(event, P("x"), NULL, P("dir/"), NULL, on_done, &res, &u, &err), -EINVAL);
        ck_assert_ptr_null(u);
        unpack_cancel(NULL);
}
END_TEST

/* Cancel while gigabytes are being written: returns at once, leaves nothing, calls nothing. */
START_TEST(test_image_cancel) {
        Result res = {};
        HydraError err = {};
        uint64_t t;

        write_big_zero_gz(P("big.gz"), 256); /* 16 GiB of zeros */
        ck_assert_int_eq(unpack_image(event, P("big.gz"), NULL, P("disk.img"), on_progress, on_done, &res, &res.u,
                                      &err),
                         0);
        t = now_usec() + RUN_BOUND_USEC;
        while (res.n_progress == 0 || res.last_in == 0) {
                ck_assert(now_usec() < t);
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
        }
        ck_assert_int_eq(res.n_done, 0);
        ck_assert_msg(res.last_in < res.last_total, "finished before it could be cancelled");
        ck_assert(exists(P("disk.img.part")));

        t = now_usec();
        unpack_cancel(res.u);
        t = now_usec() - t;
        if (getenv("UNPACK_TEST_DEBUG"))
                fprintf(stderr, "cancel at %llu of %llu bytes took %llu us\n", (unsigned long long) res.last_in,
                        (unsigned long long) res.last_total, (unsigned long long) t);
        ck_assert_msg(t < 500 * USEC_PER_MSEC, "cancel took %llu ms", (unsigned long long) (t / 1000));
        assert_no_output(P("disk.img"));

        run_for(300 * USEC_PER_MSEC);
        ck_assert_int_eq(res.n_done, 0);
}
END_TEST

START_TEST(test_image_progress) {
        struct stat st;
        Result res = { .cancel_in_done = true };

        write_big_zero_gz(P("big.gz"), 64); /* 4 GiB of zeros: more than one 250 ms progress period */
        ck_assert_int_eq(stat(P("big.gz"), &st), 0);
        ck_assert_int_eq(run_unpack(unpack_image, P("big.gz"), NULL, P("disk.img"), &res), 0);

        ck_assert_int_ge(res.n_progress, 2);
        ck_assert(!res.progress_went_back);
        ck_assert_uint_eq(res.last_total, (uint64_t) st.st_size);
        ck_assert_uint_eq(res.last_in, (uint64_t) st.st_size);

        ck_assert_int_eq(stat(P("disk.img"), &st), 0);
        ck_assert_uint_eq((uint64_t) st.st_size, 64 * 64 * MiB);
        ck_assert_int_eq(st.st_blocks, 0);

        run_for(100 * USEC_PER_MSEC);
        ck_assert_int_eq(res.n_done, 1);
}
END_TEST

/* --- unpack_tree --- */

static const Entry tree_entries[] = {
        { .path = "top.txt", .data = "top\n" },
        { .path = "sub/", .type = AE_IFDIR, .perm = 0755 },
        { .path = "sub/deeper/", .type = AE_IFDIR, .perm = 0750 },
        { .path = "sub/deeper/file.txt", .perm = 0600, .data = "deep\n" },
        { .path = "bin/run.sh", .perm = 0755, .data = "#!/bin/sh\necho hi\n" },
        { .path = "bin/suid", .perm = 04755, .data = "not set-id after unpacking\n" },
        { .path = "link", .type = AE_IFLNK, .perm = 0777, .symlink = "sub/deeper/file.txt" },
        { .path = "sub/up", .type = AE_IFLNK, .perm = 0777, .symlink = "../top.txt" },
        { .path = "./sub/./deeper//again.txt", .data = "again\n" },
};

static const struct {
        int filter, format;
} tree_archives[] = {
        { ARCHIVE_FILTER_GZIP, ARCHIVE_FORMAT_TAR_PAX_RESTRICTED },
        { ARCHIVE_FILTER_XZ, ARCHIVE_FORMAT_TAR_PAX_RESTRICTED },
        { ARCHIVE_FILTER_BZIP2, ARCHIVE_FORMAT_TAR_PAX_RESTRICTED },
        { ARCHIVE_FILTER_NONE, ARCHIVE_FORMAT_TAR_PAX_RESTRICTED },
        { ARCHIVE_FILTER_NONE, ARCHIVE_FORMAT_ZIP },
};

static mode_t mode_of(const char *path) {
        struct stat st;

        ck_assert_msg(lstat(path, &st) == 0, "'%s' is missing", path);
        return st.st_mode & 07777;
}

START_TEST(test_tree) {
        char target[PATH_MAX];
        ssize_t n;
        Result res = {};

        write_archive(P("tree.arc"), tree_archives[_i].filter, tree_archives[_i].format, tree_entries,
                      ELEMENTSOF(tree_entries));
        /* An existing tree is replaced as a whole. */
        ck_assert_int_eq(mkdir(P("kernel"), 0755), 0);
        write_file(P("kernel/stale.txt"), "stale", 5);

        ck_assert_int_eq(run_unpack(unpack_tree, P("tree.arc"), "tree.arc", P("kernel"), &res), 0);

        assert_file_is(P("kernel/top.txt"), "top\n", 4);
        assert_file_is(P("kernel/sub/deeper/file.txt"), "deep\n", 5);
        assert_file_is(P("kernel/sub/deeper/again.txt"), "again\n", 6);
        assert_file_is(P("kernel/bin/run.sh"), "#!/bin/sh\necho hi\n", 18);
        ck_assert_uint_eq(mode_of(P("kernel/bin/run.sh")), 0755);
        ck_assert_uint_eq(mode_of(P("kernel/bin/suid")), 0755);
        ck_assert_uint_eq(mode_of(P("kernel/sub/deeper/file.txt")), 0600);
        ck_assert_uint_eq(mode_of(P("kernel/sub/deeper")), 0750);
        ck_assert_int_eq(access(P("kernel/bin/run.sh"), X_OK), 0);

        n = readlink(P("kernel/link"), target, sizeof(target) - 1);
        ck_assert_int_gt(n, 0);
        target[n] = 0;
        ck_assert_str_eq(target, "sub/deeper/file.txt");
        assert_file_is(P("kernel/link"), "deep\n", 5);
        assert_file_is(P("kernel/sub/up"), "top\n", 4);

        ck_assert(!exists(P("kernel/stale.txt")));
        ck_assert(!exists(P("kernel.part")));
        ck_assert(!exists(P("kernel.old")));
}
END_TEST

START_TEST(test_tree_hardlink) {
        const Entry entries[] = {
                { .path = "a.txt", .data = "shared\n" },
                { .path = "dir/b.txt", .hardlink = "a.txt" },
        };
        struct stat a, b;
        Result res = {};

        write_archive(P("links.tar"), ARCHIVE_FILTER_NONE, ARCHIVE_FORMAT_TAR_PAX_RESTRICTED, entries,
                      ELEMENTSOF(entries));
        ck_assert_int_eq(run_unpack(unpack_tree, P("links.tar"), NULL, P("t"), &res), 0);
        ck_assert_int_eq(stat(P("t/a.txt"), &a), 0);
        ck_assert_int_eq(stat(P("t/dir/b.txt"), &b), 0);
        ck_assert_uint_eq(a.st_ino, b.st_ino);
        assert_file_is(P("t/dir/b.txt"), "shared\n", 7);
}
END_TEST

START_TEST(test_tree_not_an_archive) {
        _cleanup_free_ uint8_t *data = make_data(1 * MiB, 5);
        Result res = {};

        /* make_data() starts with a zero block, which is what an empty tar looks like. */
        write_stream(P("zeros.gz"), ARCHIVE_FILTER_GZIP, data, 1 * MiB);
        ck_assert_int_eq(run_unpack(unpack_tree, P("zeros.gz"), "zeros.gz", P("t"), &res), -EBADMSG);
        ck_assert_str_eq(res.message, "'zeros.gz' holds no files");
        assert_no_output(P("t"));

        res = (Result) {};
        fill_random(data, 512, 5);
        write_stream(P("disk.gz"), ARCHIVE_FILTER_GZIP, data, 1 * MiB);
        ck_assert_int_eq(run_unpack(unpack_tree, P("disk.gz"), "disk.gz", P("t"), &res), -EBADMSG);
        ck_assert_str_eq(res.message, "'disk.gz' is not a tar or zip archive");
        assert_no_output(P("t"));
}
END_TEST

/* Each archive starts with a harmless file, so that something was written before the refusal. */
static const struct {
        const char *name;
        Entry evil;
        Entry evil2;
        const char *message; /* with "%s" for the temporary directory where it appears */
        const char *outside; /* must not exist afterwards; relative to the temporary directory */
} evil_archives[] = {
        { "dotdot", { .path = "../evil", .data = "x" }, {}, "'evil.tar': entry '../evil' leaves the directory; refusing",
          "evil" },
        { "dotdot-deep", { .path = "sub/../../evil", .data = "x" }, {},
          "'evil.tar': entry 'sub/../../evil' leaves the directory; refusing", "evil" },
        { "absolute", { .path = "%s/abs-evil", .data = "x" }, {},
          "'evil.tar': entry '%s/abs-evil' leaves the directory; refusing", "abs-evil" },
        { "symlink-up",
          { .path = "out", .type = AE_IFLNK, .symlink = "../.." },
          { .path = "out/evil", .data = "x" },
          "'evil.tar': symlink 'out' -> '../..' points outside the directory; refusing", "evil" },
        { "symlink-absolute",
          { .path = "etc", .type = AE_IFLNK, .symlink = "%s" },
          { .path = "etc/evil", .data = "x" },
          "'evil.tar': symlink 'etc' -> '%s' points outside the directory; refusing", "evil" },
        /* Lexically d/l/.. is inside; d/l is the root, so it is the root's parent. */
        { "symlink-chain",
          { .path = "d/l", .type = AE_IFLNK, .symlink = ".." },
          { .path = "m", .type = AE_IFLNK, .symlink = "d/l/.." },
          "'evil.tar': symlink 'm' points outside the directory; refusing", NULL },
        { "hardlink-up", { .path = "h", .hardlink = "../victim" }, {},
          "'evil.tar': hard link 'h' -> '../victim' leaves the directory; refusing", NULL },
        { "fifo", { .path = "pipe", .type = AE_IFIFO, .perm = 0644 }, {},
          "'evil.tar': 'pipe' is a fifo; only files, directories and symlinks are allowed", NULL },
};

START_TEST(test_tree_refused) {
        char path[PATH_MAX], link_target[PATH_MAX], message[PATH_MAX * 2];
        Entry entries[3] = { { .path = "good.txt", .data = "good\n" }, evil_archives[_i].evil,
                             evil_archives[_i].evil2 };
        size_t n = evil_archives[_i].evil2.path ? 3 : 2;
        Result res = {};

        /* Paths and messages that name the temporary directory. */
        (void) snprintf(path, sizeof(path), entries[1].path, tmp);
        entries[1].path = path;
        if (entries[1].symlink) {
                (void) snprintf(link_target, sizeof(link_target), entries[1].symlink, tmp);
                entries[1].symlink = link_target;
        }
        (void) snprintf(message, sizeof(message), evil_archives[_i].message, tmp);

        /* The tree goes one level down, so that "../evil" would land in tmp. */
        ck_assert_int_eq(mkdir(P("out"), 0755), 0);
        write_archive(P("evil.tar"), ARCHIVE_FILTER_NONE, ARCHIVE_FORMAT_TAR_PAX_RESTRICTED, entries, n);

        ck_assert_int_eq(run_unpack(unpack_tree, P("evil.tar"), "evil.tar", P("out/tree"), &res), -EBADMSG);
        ck_assert_str_eq(res.message, message);
        assert_no_output(P("out/tree"));
        if (evil_archives[_i].outside)
                ck_assert_msg(!exists(P(evil_archives[_i].outside)), "%s: '%s' was written",
                              evil_archives[_i].name, P(evil_archives[_i].outside));
        ck_assert(!exists(P("out/evil")));
        ck_assert(!exists(P("evil")));
}
END_TEST

/* A failed unpack leaves an existing tree alone. */
START_TEST(test_tree_refused_keeps_old) {
        const Entry entries[] = {
                { .path = "good.txt", .data = "good\n" },
                { .path = "../evil", .data = "x" },
        };
        Result res = {};

        ck_assert_int_eq(mkdir(P("t"), 0755), 0);
        write_file(P("t/old.txt"), "old", 3);
        write_archive(P("evil.zip"), ARCHIVE_FILTER_NONE, ARCHIVE_FORMAT_ZIP, entries, ELEMENTSOF(entries));
        ck_assert_int_eq(run_unpack(unpack_tree, P("evil.zip"), NULL, P("t"), &res), -EBADMSG);
        assert_file_is(P("t/old.txt"), "old", 3);
        ck_assert(!exists(P("t/good.txt")));
        ck_assert(!exists(P("t.part")));
}
END_TEST

static Suite *unpack_suite(void) {
        Suite *s = suite_create("unpack");
        TCase *tc;

        tc = tcase_create("image");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 120);
        tcase_add_loop_test(tc, test_image_stream, 0, ELEMENTSOF(stream_filters));
        tcase_add_loop_test(tc, test_image_single_in_archive, 0, ELEMENTSOF(single_archives));
        tcase_add_test(tc, test_image_plain);
        tcase_add_test(tc, test_image_plain_zero_start);
        tcase_add_test(tc, test_image_sparse);
        tcase_add_test(tc, test_image_two_files);
        tcase_add_test(tc, test_image_truncated);
        tcase_add_test(tc, test_image_errors);
        tcase_add_test(tc, test_image_cancel);
        tcase_add_test(tc, test_image_progress);
        suite_add_tcase(s, tc);

        tc = tcase_create("tree");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_loop_test(tc, test_tree, 0, ELEMENTSOF(tree_archives));
        tcase_add_test(tc, test_tree_hardlink);
        tcase_add_test(tc, test_tree_not_an_archive);
        tcase_add_loop_test(tc, test_tree_refused, 0, ELEMENTSOF(evil_archives));
        tcase_add_test(tc, test_tree_refused_keeps_old);
        suite_add_tcase(s, tc);

        return s;
}

int main(void) {
        SRunner *sr = srunner_create(unpack_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
