/* SPDX-License-Identifier: MIT */
/* The synchronous file steps of provisioning, on real files in a temporary directory: where the bare kernel is
 * found in an unpacked artifact (issue 9 item 9), and which shared-memory backing files hydrad may create, grow
 * and map (issue 9 item 7). */
#include <check.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "macro.h"
#include "provision.h"
#include "spec.h"

#define GIB (UINT64_C(1024) * 1024 * 1024)
#define SHMEM_XATTR "user.hydra.shmem"

static char tmpdir[] = "/tmp/test-provision-XXXXXX";

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

static void setup(void) {
        ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void) {
        (void) nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
        strcpy(tmpdir, "/tmp/test-provision-XXXXXX");
}

static char *at(const char *rel) {
        char *p;

        ck_assert_int_ge(asprintf(&p, "%s/%s", tmpdir, rel), 0);
        return p;
}

static void make_dir(const char *rel) {
        _cleanup_free_ char *p = at(rel);

        ck_assert_int_eq(mkdir(p, 0755), 0);
}

static void write_file(const char *rel, const char *data) {
        _cleanup_free_ char *p = at(rel);
        FILE *f = fopen(p, "we");

        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(fputs(data, f) >= 0, 1);
        ck_assert_int_eq(fclose(f), 0);
}

static void set(char **field, const char *value) {
        free(*field);
        *field = value ? strdup(value) : NULL;
}

/* --- item 9: the bare-kernel search --- */

static void bare_spec(VmSpec *s, const char *dir, const char *version) {
        *s = (VmSpec) {};
        set(&s->bare.artifact.url, "https://example.com/rimd.tar.gz");
        set(&s->bare.kernel, "vmlinuz");
        set(&s->bare.kernel_version, version);
        set(&s->bare.initrd, "initrd.img");
        set(&s->bare.rootfs, "rootfs.qcow2");
        set(&s->bare.dir, dir);
}

/* The case: hydractl's from-env defaults give kernel_version -6.16 and a dir, the artifact has a plain
 * vmlinuz at its top (and the rest in the dir). */
START_TEST(test_bare_plain_kernel_at_top) {
        _cleanup_(vm_spec_done) VmSpec s;
        _cleanup_free_ char *art = at("artifact"), *want = at("artifact/vmlinuz");
        char *k = NULL, *i = NULL, *r = NULL;
        HydraError e = {};

        make_dir("artifact");
        make_dir("artifact/tiny");
        write_file("artifact/vmlinuz", "kernel");
        write_file("artifact/tiny/initrd.img", "initrd");
        write_file("artifact/tiny/rootfs.qcow2", "rootfs");
        bare_spec(&s, "tiny", "-6.16");

        ck_assert_msg(provision_locate_bare(&s, art, true, &k, &i, &r, &e) == 0, "%s", e.message);
        ck_assert_str_eq(k, want);
        free(k), free(i), free(r);
}
END_TEST

START_TEST(test_bare_plain_kernel_at_top_no_dir) {
        _cleanup_(vm_spec_done) VmSpec s;
        _cleanup_free_ char *art = at("artifact"), *want = at("artifact/vmlinuz");
        char *k = NULL, *i = NULL, *r = NULL;
        HydraError e = {};

        make_dir("artifact");
        write_file("artifact/vmlinuz", "kernel");
        write_file("artifact/initrd.img", "initrd");
        write_file("artifact/rootfs.qcow2", "rootfs");
        bare_spec(&s, NULL, NULL);

        ck_assert_msg(provision_locate_bare(&s, art, true, &k, &i, &r, &e) == 0, "%s", e.message);
        ck_assert_str_eq(k, want);
        free(k), free(i), free(r);
}
END_TEST

/* Nothing there: the error names every path that was tried, in order. */
START_TEST(test_bare_error_lists_paths_tried) {
        _cleanup_(vm_spec_done) VmSpec s;
        _cleanup_free_ char *art = at("artifact"), *p1 = at("artifact/vmlinuz-6.16"), *p2 = at("artifact/vmlinuz"),
                            *p3 = at("artifact/tiny/vmlinuz-6.16"), *p4 = at("artifact/tiny/vmlinuz");
        char *k = NULL, *i = NULL, *r = NULL, *m;
        HydraError e = {};

        make_dir("artifact");
        make_dir("artifact/tiny");
        write_file("artifact/tiny/initrd.img", "initrd");
        write_file("artifact/tiny/rootfs.qcow2", "rootfs");
        bare_spec(&s, "tiny", "-6.16");

        ck_assert_int_eq(provision_locate_bare(&s, art, true, &k, &i, &r, &e), -ENOENT);
        m = e.message;
        ck_assert_msg(strstr(m, "tried"), "%s", m);
        /* Each path appears as a whole word, in the order of the search. */
        const char *paths[] = { p1, p2, p3, p4 };
        const char *prev = m;
        for (size_t n = 0; n < ELEMENTSOF(paths); n++) {
                _cleanup_free_ char *quoted = NULL;
                const char *hit;

                ck_assert_int_ge(asprintf(&quoted, "'%s'", paths[n]), 0);
                hit = strstr(prev, quoted);
                ck_assert_msg(hit, "%s not listed (in order) in: %s", quoted, m);
                prev = hit + strlen(quoted);
        }
}
END_TEST

/* --- item 7: the shared-memory backing file --- */

static void shmem_spec(VmSpec *s, const char *path, uint32_t gib) {
        *s = (VmSpec) { .devices.shmem = SHMEM_IVSHMEM, .devices.shmem_size_gib = gib };
        set(&s->devices.shmem_path, path);
}

static off_t size_of(const char *path) {
        struct stat st;

        ck_assert_int_eq(stat(path, &st), 0);
        return st.st_size;
}

static void assert_content(const char *path, const char *want) {
        char buf[256] = {};
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t n;

        ck_assert_int_ge(fd, 0);
        n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        ck_assert_int_eq(n, (ssize_t) strlen(want));
        ck_assert_str_eq(buf, want);
}

/* The defect: a typo names a real file outside the state dir; hydrad grew it to 1 GiB and QEMU mapped it. */
START_TEST(test_shmem_foreign_file_untouched) {
        _cleanup_(vm_spec_done) VmSpec s;
        _cleanup_free_ char *state = at("state"), *file = at("precious.db");
        char *path = NULL;
        uint64_t grown = 0;
        HydraError e = {};

        make_dir("state");
        write_file("precious.db", "precious data");
        shmem_spec(&s, file, 1);

        ck_assert_int_lt(provision_shmem(state, "isolated", &s, &path, &grown, &e), 0);
        ck_assert_ptr_null(path);
        ck_assert_msg(strstr(e.message, "not created by hydrad"), "%s", e.message);
        ck_assert_msg(strstr(e.message, file), "%s", e.message);
        ck_assert_int_eq(size_of(file), (off_t) strlen("precious data"));
        assert_content(file, "precious data");
}
END_TEST

/* A file without the marker inside the state dir is not hydrad's either. */
START_TEST(test_shmem_unmarked_in_state_dir_untouched) {
        _cleanup_(vm_spec_done) VmSpec s;
        _cleanup_free_ char *state = at("state"), *file = at("state/mine");
        char *path = NULL;
        uint64_t grown = 0;
        HydraError e = {};

        make_dir("state");
        write_file("state/mine", "mine");
        shmem_spec(&s, file, 1);

        ck_assert_int_lt(provision_shmem(state, "isolated", &s, &path, &grown, &e), 0);
        ck_assert_msg(strstr(e.message, "not created by hydrad"), "%s", e.message);
        assert_content(file, "mine");
}
END_TEST

START_TEST(test_shmem_missing_outside_not_created) {
        _cleanup_(vm_spec_done) VmSpec s;
        _cleanup_free_ char *state = at("state"), *file = at("elsewhere-shmem");
        char *path = NULL;
        uint64_t grown = 0;
        HydraError e = {};

        make_dir("state");
        shmem_spec(&s, file, 1);

        ck_assert_int_lt(provision_shmem(state, "isolated", &s, &path, &grown, &e), 0);
        ck_assert_msg(strstr(e.message, "does not exist"), "%s", e.message);
        ck_assert_msg(strstr(e.message, state), "%s", e.message);
        ck_assert_int_ne(access(file, F_OK), 0);
}
END_TEST

START_TEST(test_shmem_not_regular) {
        _cleanup_(vm_spec_done) VmSpec s;
        _cleanup_free_ char *state = at("state"), *dir = at("state/adir");
        char *path = NULL;
        uint64_t grown = 0;
        HydraError e = {};

        make_dir("state");
        make_dir("state/adir");
        shmem_spec(&s, dir, 1);

        ck_assert_int_lt(provision_shmem(state, "isolated", &s, &path, &grown, &e), 0);
        ck_assert_msg(strstr(e.message, "not a regular file"), "%s", e.message);
}
END_TEST

/* Unset: hydrad's own file in the state dir, created sparse at the size, marked; grown (never shrunk) later. */
START_TEST(test_shmem_default_created_marked_grown) {
        _cleanup_(vm_spec_done) VmSpec s;
        _cleanup_free_ char *state = at("state"), *want = at("state/shmem");
        char *path = NULL, mark[64] = {};
        uint64_t grown = 0;
        HydraError e = {};

        make_dir("state");
        shmem_spec(&s, NULL, 1);
        ck_assert_msg(provision_shmem(state, "isolated", &s, &path, &grown, &e) == 0, "%s", e.message);
        ck_assert_str_eq(path, want);
        ck_assert_int_eq(size_of(want), (off_t) GIB);
        ck_assert_int_eq(grown, GIB);
        ck_assert_int_gt(getxattr(want, SHMEM_XATTR, mark, sizeof(mark) - 1), 0);
        path = mfree(path);

        /* The same again: nothing to do. */
        ck_assert_msg(provision_shmem(state, "isolated", &s, &path, &grown, &e) == 0, "%s", e.message);
        ck_assert_int_eq(grown, 0);
        path = mfree(path);

        /* Larger: grown. */
        s.devices.shmem_size_gib = 2;
        ck_assert_msg(provision_shmem(state, "isolated", &s, &path, &grown, &e) == 0, "%s", e.message);
        ck_assert_int_eq(size_of(want), (off_t) (2 * GIB));
        path = mfree(path);
}
END_TEST

/* Another VM's hydrad-made file (ivshmem between the two VMs): accepted if large enough, never grown. */
START_TEST(test_shmem_other_vms_file) {
        _cleanup_(vm_spec_done) VmSpec s;
        _cleanup_free_ char *host = at("host"), *iso = at("isolated"), *file = at("host/shmem");
        char *path = NULL;
        uint64_t grown = 0;
        HydraError e = {};

        make_dir("host");
        make_dir("isolated");
        shmem_spec(&s, NULL, 1);
        ck_assert_msg(provision_shmem(host, "host", &s, &path, &grown, &e) == 0, "%s", e.message);
        path = mfree(path);

        set(&s.devices.shmem_path, file);
        ck_assert_msg(provision_shmem(iso, "isolated", &s, &path, &grown, &e) == 0, "%s", e.message);
        ck_assert_str_eq(path, file);
        ck_assert_int_eq(grown, 0);
        path = mfree(path);

        s.devices.shmem_size_gib = 2;
        ck_assert_int_lt(provision_shmem(iso, "isolated", &s, &path, &grown, &e), 0);
        ck_assert_msg(strstr(e.message, "size"), "%s", e.message);
        ck_assert_int_eq(size_of(file), (off_t) GIB);
}
END_TEST

static Suite *suite(void) {
        Suite *s = suite_create("provision");
        TCase *tc = tcase_create("files");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_bare_plain_kernel_at_top);
        tcase_add_test(tc, test_bare_plain_kernel_at_top_no_dir);
        tcase_add_test(tc, test_bare_error_lists_paths_tried);
        tcase_add_test(tc, test_shmem_foreign_file_untouched);
        tcase_add_test(tc, test_shmem_unmarked_in_state_dir_untouched);
        tcase_add_test(tc, test_shmem_missing_outside_not_created);
        tcase_add_test(tc, test_shmem_not_regular);
        tcase_add_test(tc, test_shmem_default_created_marked_grown);
        tcase_add_test(tc, test_shmem_other_vms_file);
        suite_add_tcase(s, tc);
        return s;
}

int main(void) {
        SRunner *sr = srunner_create(suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
