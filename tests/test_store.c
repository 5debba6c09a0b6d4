/* SPDX-License-Identifier: MIT */
/* store.c: atomic replacement (also when the write fails half-way: the old file is intact and no temporary file is
 * left), reading with limits, the trusted read's ownership and mode rules, mkdir_p, rm_rf without following
 * symlinks. Each test runs in a fresh temporary directory (Check forks per test, so the file-size limit one test
 * sets ends with it). */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"
#include "macro.h"
#include "store.h"

static char dir[] = "/tmp/hydra-test-store.XXXXXX";

static void setup(void) {
        strcpy(dir, "/tmp/hydra-test-store.XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void) {
        ck_assert_int_eq(rm_rf(dir), 0);
}

static char *path_in(const char *name) {
        char *p;
        ck_assert_int_ge(asprintf(&p, "%s/%s", dir, name), 0);
        return p;
}

/* Entries of dir other than . and .., as "a b c". */
static char *listing(const char *d) {
        static char buf[1024];
        DIR *dp = opendir(d);
        struct dirent *de;

        ck_assert_ptr_nonnull(dp);
        buf[0] = '\0';
        while ((de = readdir(dp)))
                if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
                        if (buf[0])
                                strcat(buf, " ");
                        strncat(buf, de->d_name, sizeof(buf) - strlen(buf) - 2);
                }
        closedir(dp);
        return buf;
}

START_TEST(test_write_read_replace) {
        HydraError err;
        void *data = NULL;
        size_t size = 0;
        struct stat st;
        char *p = path_in("state.json");

        ck_assert_int_eq(store_write_atomic(dir, "state.json", "first", 5, 0600, &err), 0);
        ck_assert_int_eq(stat(p, &st), 0);
        ck_assert_uint_eq(st.st_mode & 07777, 0600);
        ck_assert_int_eq(store_write_atomic(dir, "state.json", "second!", 7, 0640, &err), 0);
        ck_assert_int_eq(store_read(dir, "state.json", 1024, &data, &size, &err), 0);
        ck_assert_uint_eq(size, 7);
        ck_assert_str_eq(data, "second!"); /* NUL-terminated for convenience */
        ck_assert_int_eq(stat(p, &st), 0);
        ck_assert_uint_eq(st.st_mode & 07777, 0640);
        ck_assert_str_eq(listing(dir), "state.json");
        free(data);
        free(p);
}
END_TEST

/* The write fails half-way (the file-size limit: EFBIG, as ENOSPC would on a full disk): the old file keeps its
 * bytes, no temporary file is left, and the error names the file and the step. */
START_TEST(test_failed_write_keeps_old) {
        static char big[256 * 1024];
        struct rlimit rl = { .rlim_cur = 64 * 1024, .rlim_max = RLIM_INFINITY };
        HydraError err;
        void *data = NULL;
        size_t size = 0;

        ck_assert_int_eq(store_write_atomic(dir, "spec.pb", "old spec", 8, 0600, &err), 0);
        memset(big, 'x', sizeof(big));
        signal(SIGXFSZ, SIG_IGN);
        ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);

        hydra_error_clear(&err);
        ck_assert_int_eq(store_write_atomic(dir, "spec.pb", big, sizeof(big), 0600, &err), -EFBIG);
        ck_assert_msg(strstr(err.message, "write") && strstr(err.message, "spec.pb"), "%s", err.message);
        ck_assert_int_eq(store_read(dir, "spec.pb", 1024, &data, &size, &err), 0);
        ck_assert_uint_eq(size, 8);
        ck_assert_str_eq(data, "old spec");
        ck_assert_str_eq(listing(dir), "spec.pb");
        free(data);
}
END_TEST

START_TEST(test_read_limits) {
        HydraError err;
        void *data = NULL;
        size_t size = 0;
        char *sub = path_in("sub");

        hydra_error_clear(&err);
        ck_assert_int_eq(store_read(dir, "absent", 1024, &data, &size, &err), -ENOENT);
        ck_assert_int_eq(store_write_atomic(dir, "big", "0123456789", 10, 0600, &err), 0);
        ck_assert_int_eq(store_read(dir, "big", 9, &data, &size, &err), -EFBIG);
        ck_assert_msg(strstr(err.message, "10 bytes"), "%s", err.message);
        ck_assert_int_eq(mkdir(sub, 0700), 0);
        ck_assert_int_eq(store_read(dir, "sub", 1024, &data, &size, &err), -EBADFD);
        /* A symlink is not followed: O_NOFOLLOW. */
        free(sub);
        sub = path_in("link");
        ck_assert_int_eq(symlink("big", sub), 0);
        ck_assert_int_lt(store_read(dir, "link", 1024, &data, &size, &err), 0);
        ck_assert_ptr_null(data);
        free(sub);
}
END_TEST

/* The stored spec decides what QEMU runs: only a file nobody else could have written is read. */
START_TEST(test_read_trusted) {
        HydraError err;
        void *data = NULL;
        size_t size = 0;
        char *p = path_in("spec.pb");

        ck_assert_int_eq(store_write_atomic(dir, "spec.pb", "spec", 4, 0600, &err), 0);
        ck_assert_int_eq(store_read_trusted(dir, "spec.pb", 1024, &data, &size, &err), 0);
        free(data);
        data = NULL;

        ck_assert_int_eq(chmod(p, 0620), 0);
        hydra_error_clear(&err);
        ck_assert_int_eq(store_read_trusted(dir, "spec.pb", 1024, &data, &size, &err), -EPERM);
        ck_assert_msg(strstr(err.message, "group"), "%s", err.message);
        ck_assert_int_eq(chmod(p, 0606), 0);
        ck_assert_int_eq(store_read_trusted(dir, "spec.pb", 1024, &data, &size, &err), -EPERM);
        ck_assert_msg(strstr(err.message, "world") || strstr(err.message, "other"), "%s", err.message);
        ck_assert_int_eq(chmod(p, 0600), 0);
        if (geteuid() == 0) {
                ck_assert_int_eq(chown(p, 65534, 65534), 0);
                ck_assert_int_eq(store_read_trusted(dir, "spec.pb", 1024, &data, &size, &err), -EPERM);
                ck_assert_msg(strstr(err.message, "owned"), "%s", err.message);
        }
        ck_assert_ptr_null(data);
        free(p);
}
END_TEST

/* Another user's access by the permission bits: owner, group (any of the groups), other, and the search bit of every
 * directory on the way (issue 13: whether QEMU as qemu_user reaches a file of the user's). */
START_TEST(test_path_access_as) {
        _cleanup_free_ char *sub = path_in("sub"), *file = path_in("sub/disk.img");
        const gid_t mine[] = { 4242, 100 }, others[] = { 5353 };
        int fd;

        ck_assert_int_eq(chmod(dir, 0755), 0);
        ck_assert_int_eq(mkdir(sub, 0750), 0);
        ck_assert_int_eq(chown(sub, 0, 100), 0);
        fd = open(file, O_CREAT | O_WRONLY | O_CLOEXEC, 0640);
        ck_assert_int_ge(fd, 0);
        close(fd);
        ck_assert_int_eq(chown(file, 4242, 100), 0);
        ck_assert_int_eq(chmod(file, 0640), 0);

        ck_assert_int_eq(path_access_as(file, 4242, mine, 2, R_OK | W_OK), 0);  /* owner rw-, through group 100 */
        ck_assert_int_eq(path_access_as(file, 4343, mine, 2, R_OK), 0);         /* group r-- */
        ck_assert_int_eq(path_access_as(file, 4343, mine, 2, R_OK | W_OK), -EACCES);
        ck_assert_int_eq(path_access_as(file, 4242, others, 1, R_OK), -EACCES); /* owner, but sub/ is 0750 root:100 */
        ck_assert_int_eq(chmod(sub, 0751), 0);
        ck_assert_int_eq(path_access_as(file, 4242, others, 1, R_OK | W_OK), 0); /* o+x on sub/ lets it through */
        ck_assert_int_eq(path_access_as(file, 4343, others, 1, R_OK), -EACCES);  /* other: --- */
        ck_assert_int_eq(path_access_as(file, 0, NULL, 0, R_OK | W_OK), 0);      /* root may */
        ck_assert_int_eq(path_access_as(sub, 4343, mine, 2, X_OK), 0);
        _cleanup_free_ char *missing = path_in("sub/missing");
        ck_assert_int_eq(path_access_as(missing, 4242, mine, 2, R_OK), -ENOENT);
}
END_TEST

START_TEST(test_mkdir_p_and_rm_rf) {
        _cleanup_free_ char *deep = path_in("a/b/c"), *outside = NULL, *link = path_in("a/b/escape");
        char outside_dir[] = "/tmp/hydra-test-store-outside.XXXXXX";
        struct stat st;
        int fd;

        ck_assert_int_eq(mkdir_p(deep, 0750), 0);
        ck_assert_int_eq(stat(deep, &st), 0);
        ck_assert(S_ISDIR(st.st_mode));
        ck_assert_int_eq(mkdir_p(deep, 0750), 0); /* existing is fine */

        /* rm_rf removes the tree but not what a symlink in it points at. */
        ck_assert_ptr_nonnull(mkdtemp(outside_dir));
        ck_assert_int_ge(asprintf(&outside, "%s/precious", outside_dir), 0);
        fd = open(outside, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        close(fd);
        ck_assert_int_eq(symlink(outside_dir, link), 0);
        char *a = path_in("a");
        ck_assert_int_eq(rm_rf(a), 0);
        ck_assert_int_lt(lstat(a, &st), 0);
        ck_assert_int_eq(stat(outside, &st), 0);
        ck_assert_int_eq(rm_rf(a), 0); /* absent is fine */
        ck_assert_int_eq(rm_rf(outside_dir), 0);
        free(a);
}
END_TEST

/* An archive's read-only directories (0555, files inside) go too (unpack.c relies on it as non-root); a top that is
 * a symlink is removed, not its target; rm_rf_at works relative to a directory fd. */
START_TEST(test_rm_rf_read_only_and_at) {
        _cleanup_free_ char *ro = path_in("t/ro"), *f = path_in("t/ro/file"), *top = path_in("t"),
                            *link = path_in("link"), *kept = path_in("kept"), *kept_file = path_in("kept/x");
        _cleanup_close_ int dfd = -EBADF;
        struct stat st;
        int fd;

        ck_assert_int_eq(mkdir_p(ro, 0755), 0);
        fd = open(f, O_WRONLY | O_CREAT | O_CLOEXEC, 0400);
        ck_assert_int_ge(fd, 0);
        close(fd);
        ck_assert_int_eq(chmod(ro, 0555), 0);
        ck_assert_int_eq(rm_rf(top), 0);
        ck_assert_int_lt(lstat(top, &st), 0);

        ck_assert_int_eq(mkdir_p(kept, 0755), 0);
        fd = open(kept_file, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        close(fd);
        ck_assert_int_eq(symlink(kept, link), 0);
        ck_assert_int_eq(rm_rf(link), 0);
        ck_assert_int_lt(lstat(link, &st), 0);
        ck_assert_int_eq(stat(kept_file, &st), 0);

        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        ck_assert_int_ge(dfd, 0);
        ck_assert_int_eq(rm_rf_at(dfd, "kept"), 0);
        ck_assert_int_lt(lstat(kept, &st), 0);
        ck_assert_int_eq(rm_rf_at(dfd, "kept"), 0); /* absent is fine */
}
END_TEST

int main(void) {
        Suite *s = suite_create("store");
        TCase *tc = tcase_create("core");
        SRunner *sr;
        int failed;

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_write_read_replace);
        tcase_add_test(tc, test_failed_write_keeps_old);
        tcase_add_test(tc, test_read_limits);
        tcase_add_test(tc, test_read_trusted);
        tcase_add_test(tc, test_mkdir_p_and_rm_rf);
        tcase_add_test(tc, test_rm_rf_read_only_and_at);
        tcase_add_test(tc, test_path_access_as);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
