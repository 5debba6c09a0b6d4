/* SPDX-License-Identifier: MIT */
/* The synchronous file steps of provisioning, on real files in a temporary directory: where the bare kernel is
 * found in an unpacked artifact (issue 9 item 9), and which shared-memory backing files hydrad may create, grow
 * and map (issue 9 item 7). And the pure decision of which steps a preparation runs, as a table: each change to
 * the spec or to what is on disk, and exactly the steps it must run. */
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

/* --- which steps a preparation runs (provision_steps) --- */

/* The table's baseline: a cloud-image VM prepared before, nothing changed since. Its image came packed and was
 * unpacked from download "img-1", its seed built from files hashing to "seed-1", its 4 GiB disk made from both
 * (the record holds what provision_disk_identity makes of them, as the chain writes it). */
static char baseline_disk_record[65];

static void baseline(VmSpec *s, ProvisionFacts *f) {
        *s = (VmSpec) { .disk_size_gib = 4, .shares.kubelet = KUBELET_SHARES_NONE };
        set(&s->image.url, "https://example.com/debian.qcow2.xz");
        *f = (ProvisionFacts) {
                .image_digest = "img-1", .image_packed = true, .image_unpacked_from = "img-1", .image_unpacked = true,
                .seed_digest = "seed-1", .seed_built_from = "seed-1", .seed_built = true,
                .base_identity = "img-1", .disk_made_from = baseline_disk_record, .disk_exists = true,
                .disk_size = 4 * GIB, .firmware_vars_copied = true,
        };
}

static void unchanged(VmSpec *s, ProvisionFacts *f) {}
static void first_start(VmSpec *s, ProvisionFacts *f) { *f = (ProvisionFacts) {}; }
static void new_download(VmSpec *s, ProvisionFacts *f) { f->image_digest = f->base_identity = "img-2"; }
static void new_download_unpacked(VmSpec *s, ProvisionFacts *f) {
        new_download(s, f);
        f->image_packed = false;
}
static void unpacked_image_gone(VmSpec *s, ProvisionFacts *f) { f->image_unpacked = false; }
static void unpack_record_lost(VmSpec *s, ProvisionFacts *f) { f->image_unpacked_from = NULL; }
static void seed_changed(VmSpec *s, ProvisionFacts *f) { f->seed_digest = "seed-2"; }
static void seed_changed_reuse(VmSpec *s, ProvisionFacts *f) {
        seed_changed(s, f);
        s->reuse_disk_on_change = true;
}
static void reuse_unchanged(VmSpec *s, ProvisionFacts *f) { s->reuse_disk_on_change = true; }
static void seed_iso_gone(VmSpec *s, ProvisionFacts *f) { f->seed_built = false; }
static void pristine_toggled(VmSpec *s, ProvisionFacts *f) { s->keep_pristine = true; }
static void disk_gone(VmSpec *s, ProvisionFacts *f) {
        f->disk_exists = false;
        f->disk_size = 0;
}
static void disk_record_lost(VmSpec *s, ProvisionFacts *f) { f->disk_made_from = NULL; }
static void disk_size_raised(VmSpec *s, ProvisionFacts *f) { s->disk_size_gib = 10; }
static void disk_size_lowered(VmSpec *s, ProvisionFacts *f) { s->disk_size_gib = 2; }
static void disk_size_unknown(VmSpec *s, ProvisionFacts *f) { f->disk_size = 0; }
static void disk_size_unset(VmSpec *s, ProvisionFacts *f) {
        s->disk_size_gib = 0;
        f->disk_size = 0;
}
static void firmware_copied(VmSpec *s, ProvisionFacts *f) { set(&s->firmware_vars, "/usr/share/OVMF/OVMF_VARS.fd"); }
static void firmware_not_copied(VmSpec *s, ProvisionFacts *f) {
        firmware_copied(s, f);
        f->firmware_vars_copied = false;
}
static void shmem_asked(VmSpec *s, ProvisionFacts *f) { s->devices.shmem = SHMEM_IVSHMEM; }
static void kubelet_virtio(VmSpec *s, ProvisionFacts *f) { s->shares.kubelet = KUBELET_SHARES_VIRTIO; }
static void kubelet_tcp(VmSpec *s, ProvisionFacts *f) { s->shares.kubelet = KUBELET_SHARES_TCP; }
static void extra_share(VmSpec *s, ProvisionFacts *f) {
        s->shares.extra = calloc(1, sizeof(Share));
        ck_assert_ptr_nonnull(s->shares.extra);
        s->shares.n_extra = 1;
}

/* A bare-kernel VM prepared before from artifact "art-1" (its rootfs the disk's base). */
static void bare(VmSpec *s, ProvisionFacts *f) {
        set(&s->image.url, NULL);
        set(&s->bare.artifact.url, "https://example.com/rimd.tar.gz");
        *f = (ProvisionFacts) { .artifact_digest = "art-1", .artifact_unpacked_from = "art-1",
                                .artifact_unpacked = true, .base_identity = "art-1:rootfs.qcow2",
                                .disk_exists = true, .disk_size = 4 * GIB };
}
static char bare_disk_record[65];
static void bare_unchanged(VmSpec *s, ProvisionFacts *f) {
        bare(s, f);
        f->disk_made_from = bare_disk_record;
}
static void bare_new_artifact(VmSpec *s, ProvisionFacts *f) {
        bare_unchanged(s, f);
        f->artifact_digest = "art-2";
        f->base_identity = "art-2:rootfs.qcow2";
}
static void bare_artifact_gone(VmSpec *s, ProvisionFacts *f) {
        bare_unchanged(s, f);
        f->artifact_unpacked = false;
}
static void bare_first_start(VmSpec *s, ProvisionFacts *f) {
        bare(s, f);
        *f = (ProvisionFacts) {};
}
/* A cloud image with the encrypted-container tools from an artifact. */
static void image_and_tools(VmSpec *s, ProvisionFacts *f) {
        set(&s->bare.artifact.url, "https://example.com/rimd.tar.gz");
        s->bare.encrypted_tools = true;
        f->artifact_digest = f->artifact_unpacked_from = "art-1";
        f->artifact_unpacked = true;
}
/* Local files only: nothing is fetched or made, whatever is (not) on disk. */
static void local(VmSpec *s, ProvisionFacts *f) {
        set(&s->image.url, NULL);
        set(&s->disk, "/srv/vm/disk.qcow2");
        *f = (ProvisionFacts) {};
}

enum {
        FETCH_IMAGE = PROVISION_STEP_FETCH_IMAGE,
        UNPACK_IMAGE = PROVISION_STEP_UNPACK_IMAGE,
        FETCH_ARTIFACT = PROVISION_STEP_FETCH_ARTIFACT,
        UNPACK_ARTIFACT = PROVISION_STEP_UNPACK_ARTIFACT,
        LOCATE = PROVISION_STEP_LOCATE,
        SEED = PROVISION_STEP_BUILD_SEED,
        RESET = PROVISION_STEP_RESET_DISK,
        KEEP = PROVISION_STEP_KEEP_DISK,
        MAKE = PROVISION_STEP_MAKE_DISK,
        GROW = PROVISION_STEP_GROW_DISK,
        FIRMWARE = PROVISION_STEP_COPY_FIRMWARE_VARS,
        SHARES = PROVISION_STEP_SHARES,
        SHMEM = PROVISION_STEP_SHMEM,
};

static const char *const step_names[] = {
        "fetch-image", "unpack-image", "fetch-artifact", "unpack-artifact", "locate", "build-seed", "reset-disk",
        "keep-disk", "make-disk", "grow-disk", "copy-firmware-vars", "shares", "shmem",
};

/* Every step not listed must not run. */
static const struct {
        const char *what;
        void (*change)(VmSpec *s, ProvisionFacts *f);
        unsigned steps;
} step_cases[] = {
        { "nothing changed",                        unchanged,              FETCH_IMAGE },
        { "first start, nothing on disk",           first_start,            FETCH_IMAGE | SEED | MAKE | GROW },
        { "a new download of the image",            new_download,           FETCH_IMAGE | UNPACK_IMAGE | RESET | MAKE },
        { "a new download, used where it lies",     new_download_unpacked,  FETCH_IMAGE | RESET | MAKE },
        { "unpacked image removed from the cache",  unpacked_image_gone,    FETCH_IMAGE | UNPACK_IMAGE },
        { "unpack record lost",                     unpack_record_lost,     FETCH_IMAGE | UNPACK_IMAGE },
        { "cloud-init files changed",               seed_changed,           FETCH_IMAGE | SEED | RESET | MAKE },
        { "cloud-init changed, reuse_disk_on_change", seed_changed_reuse,   FETCH_IMAGE | SEED | KEEP },
        { "reuse_disk_on_change, nothing changed",  reuse_unchanged,        FETCH_IMAGE },
        { "seed.iso removed",                       seed_iso_gone,          FETCH_IMAGE | SEED },
        { "keep_pristine turned on",                pristine_toggled,       FETCH_IMAGE | RESET | MAKE },
        { "disk removed",                           disk_gone,              FETCH_IMAGE | MAKE | GROW },
        { "disk record lost",                       disk_record_lost,       FETCH_IMAGE | RESET | MAKE },
        { "disk_size raised",                       disk_size_raised,       FETCH_IMAGE | GROW },
        { "disk_size lowered (never shrunk)",       disk_size_lowered,      FETCH_IMAGE },
        { "disk's size not known",                  disk_size_unknown,      FETCH_IMAGE | GROW },
        { "disk_size unset",                        disk_size_unset,        FETCH_IMAGE },
        { "firmware vars copied before",            firmware_copied,        FETCH_IMAGE },
        { "firmware vars not copied yet",           firmware_not_copied,    FETCH_IMAGE | FIRMWARE },
        { "shared memory asked for",                shmem_asked,            FETCH_IMAGE | SHMEM },
        { "kubelet shares over virtio",             kubelet_virtio,         FETCH_IMAGE | SHARES },
        { "kubelet shares over TCP (the guest's)",  kubelet_tcp,            FETCH_IMAGE },
        { "an extra share",                         extra_share,            FETCH_IMAGE | SHARES },
        { "bare kernel, nothing changed",           bare_unchanged,         FETCH_ARTIFACT | LOCATE },
        { "bare kernel, new artifact",              bare_new_artifact,
          FETCH_ARTIFACT | UNPACK_ARTIFACT | LOCATE | RESET | MAKE },
        { "bare kernel, unpacked artifact removed", bare_artifact_gone,     FETCH_ARTIFACT | UNPACK_ARTIFACT | LOCATE },
        { "bare kernel, first start",               bare_first_start,
          FETCH_ARTIFACT | UNPACK_ARTIFACT | LOCATE | MAKE | GROW },
        { "cloud image + encrypted-container tools", image_and_tools,       FETCH_IMAGE | FETCH_ARTIFACT | LOCATE },
        { "local files",                            local,                  0 },
};

static const char *step_list(unsigned steps, char *buf, size_t size) {
        size_t n = 0;

        buf[0] = '\0';
        for (size_t i = 0; i < ELEMENTSOF(step_names); i++)
                if (steps & (1U << i))
                        n += (size_t) snprintf(buf + n, size - n, "%s%s", n ? " " : "", step_names[i]);
        return n ? buf : "none";
}

START_TEST(test_steps_table) {
        _cleanup_(vm_spec_done) VmSpec s = {};
        ProvisionFacts f;
        char want[256], got[256];
        unsigned steps = ~0U;

        ck_assert_int_eq(provision_disk_identity("img-1", "seed-1", false, baseline_disk_record), 0);
        ck_assert_int_eq(provision_disk_identity("art-1:rootfs.qcow2", NULL, false, bare_disk_record), 0);

        baseline(&s, &f);
        step_cases[_i].change(&s, &f);
        ck_assert_int_eq(provision_steps(&s, &f, &steps), 0);
        ck_assert_msg(steps == step_cases[_i].steps, "%s: want %s, got %s", step_cases[_i].what,
                      step_list(step_cases[_i].steps, want, sizeof(want)), step_list(steps, got, sizeof(got)));
}
END_TEST

/* What the disk record stands for: each of its three inputs counts, and nothing else. */
START_TEST(test_disk_identity) {
        char a[65], b[65];

        ck_assert_int_eq(provision_disk_identity("img-1", "seed-1", false, a), 0);
        ck_assert_uint_eq(strlen(a), 64);
        ck_assert_uint_eq(strspn(a, "0123456789abcdef"), 64);
        ck_assert_int_eq(provision_disk_identity("img-1", "seed-1", false, b), 0);
        ck_assert_str_eq(a, b);
        ck_assert_int_eq(provision_disk_identity("img-2", "seed-1", false, b), 0);
        ck_assert_str_ne(a, b);
        ck_assert_int_eq(provision_disk_identity("img-1", "seed-2", false, b), 0);
        ck_assert_str_ne(a, b);
        ck_assert_int_eq(provision_disk_identity("img-1", "seed-1", true, b), 0);
        ck_assert_str_ne(a, b);
        /* The fields cannot be shifted into each other. */
        ck_assert_int_eq(provision_disk_identity("img-1seed", "-1", false, b), 0);
        ck_assert_str_ne(a, b);
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

        tc = tcase_create("steps");
        tcase_add_loop_test(tc, test_steps_table, 0, ELEMENTSOF(step_cases));
        tcase_add_test(tc, test_disk_identity);
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
