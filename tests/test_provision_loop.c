/* SPDX-License-Identifier: MIT */
/* A whole cloud-image preparation (file:// image, cloud-init seed through genisoimage, disk through qemu-img) on a
 * private sd_event: it succeeds, leaves its records, and never fsyncs one of them on the loop's thread (issue 10:
 * image.source, seed.digest, the cloud-init files and disk.identity are written by a worker); with the
 * encrypted-container tools of an artifact, the loop never reads them either (they are base64'd into user-data by
 * a worker). fsync and read are interposed: this executable's definitions win over libc's for hydra_core's calls. */
#include <check.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fetch.h"
#include "fs.h"
#include "macro.h"
#include "provision.h"
#include "spec.h"
#include "store.h"

static char tmpdir[] = "/tmp/test-provision-loop-XXXXXX";
static char state_dir[PATH_MAX];
static pthread_t loop_thread;
static atomic_bool watching;
static atomic_uint fsyncs_off_loop, fsyncs_on_loop;
static char on_loop_path[PATH_MAX]; /* the first record fsync'd on the loop */
static char tools_dir[PATH_MAX];
static atomic_uint tool_reads_off_loop, tool_reads_on_loop;

ssize_t read(int fd, void *buf, size_t size) {
        char link[64], path[PATH_MAX];
        ssize_t n;

        if (atomic_load(&watching) && tools_dir[0]) {
                (void) snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
                n = readlink(link, path, sizeof(path) - 1);
                path[n > 0 ? n : 0] = '\0';
                if (strncmp(path, tools_dir, strlen(tools_dir)) == 0)
                        atomic_fetch_add(pthread_equal(pthread_self(), loop_thread) ? &tool_reads_on_loop
                                                                                    : &tool_reads_off_loop, 1);
        }
        return syscall(SYS_read, fd, buf, size);
}

int fsync(int fd) {
        char link[64], path[PATH_MAX];
        ssize_t n;

        if (atomic_load(&watching)) {
                (void) snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
                n = readlink(link, path, sizeof(path) - 1);
                path[n > 0 ? n : 0] = '\0';
                if (strncmp(path, state_dir, strlen(state_dir)) == 0) {
                        if (pthread_equal(pthread_self(), loop_thread)) {
                                if (atomic_fetch_add(&fsyncs_on_loop, 1) == 0)
                                        (void) snprintf(on_loop_path, sizeof(on_loop_path), "%s", path);
                        } else
                                atomic_fetch_add(&fsyncs_off_loop, 1);
                }
        }
        return (int) syscall(SYS_fsync, fd);
}

typedef struct Result {
        bool done;
        int r;
        char message[1024];
        ProvisionOutput out;
} Result;

static void on_done(int r, const HydraError *err, ProvisionOutput *out, void *userdata) {
        Result *res = userdata;

        res->done = true;
        res->r = r;
        if (err)
                (void) snprintf(res->message, sizeof(res->message), "%s", err->message);
        if (out) {
                res->out = *out;
                *out = (ProvisionOutput) {};
        }
}

static char *at(const char *rel) {
        char *p;

        ck_assert_int_ge(asprintf(&p, "%s/%s", tmpdir, rel), 0);
        return p;
}

static void run_preparation(sd_event *e, Fetcher *fr, const VmSpec *spec, Result *res) {
        _cleanup_free_ char *cache = at("cache");
        ProvisionContext ctx = { .event = e, .fetcher = fr, .name = "host", .state_dir = state_dir,
                                 .cache_dir = cache };
        ProvisionCallbacks cb = { .done = on_done };
        Provision *p = NULL;
        HydraError err;

        hydra_error_clear(&err);
        *res = (Result) {};
        ck_assert_int_eq(provision_start(&ctx, spec, &cb, res, &p, &err), 0);
        while (!res->done)
                ck_assert_int_ge(sd_event_run(e, 5ULL * 1000000ULL), 0);
        ck_assert_msg(res->r == 0, "preparation failed: %s", res->message);
}

START_TEST(test_records_written_off_the_loop) {
        _cleanup_free_ char *image = at("image.raw"), *cache = at("cache"), *url = NULL, *identity = NULL,
                            *cloud = NULL;
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        Fetcher *fr = NULL;
        VmSpec spec = {};
        HydraError err;
        Result res;
        int fd;

        ck_assert_int_ge(snprintf(state_dir, sizeof(state_dir), "%s/host", tmpdir), 0);
        ck_assert_int_eq(mkdir_p(state_dir, 0700), 0);
        ck_assert_int_eq(mkdir_p(cache, 0700), 0);
        fd = open(image, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(ftruncate(fd, 1024 * 1024), 0);
        close(fd);

        ck_assert_int_ge(asprintf(&url, "file://%s", image), 0);
        spec.cpus = 1;
        spec.memory_mib = 256;
        spec.accel = ACCEL_TCG;
        spec.image.url = TAKE_PTR(url);
        spec.guest.hostname = strdup("loop");
        hydra_error_clear(&err);
        ck_assert_int_eq(vm_spec_apply_defaults(&spec), 0);
        ck_assert_msg(vm_spec_validate(&spec, &err) >= 0, "spec: %s", err.message);

        ck_assert_int_eq(sd_event_new(&e), 0);
        ck_assert_int_eq(fetcher_new(e, &fr), 0);
        loop_thread = pthread_self();
        atomic_store(&watching, true);
        run_preparation(e, fr, &spec, &res);
        atomic_store(&watching, false);

        ck_assert_ptr_nonnull(res.out.disk_path);
        ck_assert_int_eq(access(res.out.disk_path, F_OK), 0);
        ck_assert_int_eq(access(res.out.seed_path, F_OK), 0);
        identity = NULL;
        ck_assert_int_eq(store_read(state_dir, "disk.identity", 4096, (void **) &identity, &(size_t) { 0 }, NULL), 0);
        ck_assert_int_eq(strlen(identity), 64);
        cloud = at("host/cloud-init");
        ck_assert_int_eq(access(cloud, F_OK), 0);
        /* The records were fsync'd (durable), and never on the loop's thread. */
        ck_assert_msg(atomic_load(&fsyncs_on_loop) == 0, "%u fsync(s) on the loop, the first of '%s'",
                      atomic_load(&fsyncs_on_loop), on_loop_path);
        ck_assert_uint_ge(atomic_load(&fsyncs_off_loop), 6); /* 4 cloud-init files, seed.digest, disk.identity */

        /* A second preparation finds everything in place: nothing is written again. */
        provision_output_done(&res.out);
        atomic_store(&fsyncs_off_loop, 0);
        atomic_store(&watching, true);
        run_preparation(e, fr, &spec, &res);
        atomic_store(&watching, false);
        ck_assert_uint_eq(atomic_load(&fsyncs_off_loop) + atomic_load(&fsyncs_on_loop), 0);

        provision_output_done(&res.out);
        vm_spec_done(&spec);
        fetcher_free(fr);
}
END_TEST

/* A cloud image with an artifact that supplies the encrypted-container tools (1 MiB each). */
START_TEST(test_tools_read_off_the_loop) {
        _cleanup_free_ char *image = at("image.raw"), *cache = at("cache"), *art = at("art/executables"),
                            *tar = at("artifact.tar.gz"), *cmd = NULL, *user_data = NULL;
        static const char *const tools[] = { "ctr-enc", "ctd-decoder", "rimd-keyprovider-proxy" };
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        Fetcher *fr = NULL;
        VmSpec spec = {};
        HydraError err;
        Result res;
        size_t size;
        int fd;

        ck_assert_int_ge(snprintf(state_dir, sizeof(state_dir), "%s/host", tmpdir), 0);
        ck_assert_int_ge(snprintf(tools_dir, sizeof(tools_dir), "%s/artifact/executables/", state_dir), 0);
        ck_assert_int_eq(mkdir_p(state_dir, 0700), 0);
        ck_assert_int_eq(mkdir_p(cache, 0700), 0);
        ck_assert_int_eq(mkdir_p(art, 0755), 0);
        for (size_t i = 0; i < ELEMENTSOF(tools); i++) {
                _cleanup_free_ char *t = NULL;

                ck_assert_int_ge(asprintf(&t, "%s/%s", art, tools[i]), 0);
                fd = open(t, O_WRONLY | O_CREAT | O_CLOEXEC, 0755);
                ck_assert_int_ge(fd, 0);
                ck_assert_int_eq(ftruncate(fd, 1024 * 1024), 0);
                close(fd);
        }
        ck_assert_int_ge(asprintf(&cmd, "tar -C %s/art -czf %s executables", tmpdir, tar), 0);
        ck_assert_int_eq(system(cmd), 0);
        fd = open(image, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(ftruncate(fd, 1024 * 1024), 0);
        close(fd);

        spec.cpus = 1;
        spec.memory_mib = 256;
        spec.accel = ACCEL_TCG;
        ck_assert_int_ge(asprintf(&spec.image.url, "file://%s", image), 0);
        ck_assert_int_ge(asprintf(&spec.bare.artifact.url, "file://%s", tar), 0);
        spec.bare.encrypted_tools = true;
        spec.guest.hostname = strdup("tools");
        hydra_error_clear(&err);
        ck_assert_int_eq(vm_spec_apply_defaults(&spec), 0);
        ck_assert_msg(vm_spec_validate(&spec, &err) >= 0, "spec: %s", err.message);

        ck_assert_int_eq(sd_event_new(&e), 0);
        ck_assert_int_eq(fetcher_new(e, &fr), 0);
        loop_thread = pthread_self();
        atomic_store(&watching, true);
        run_preparation(e, fr, &spec, &res);
        atomic_store(&watching, false);

        /* The tools went into user-data (base64: 4/3 of 3 MiB), read by a worker only. */
        ck_assert_int_eq(store_read(state_dir, "cloud-init/user-data", 64 * 1024 * 1024, (void **) &user_data, &size,
                                    NULL), 0);
        ck_assert_uint_gt(size, 4 * 1024 * 1024);
        ck_assert_msg(atomic_load(&tool_reads_on_loop) == 0, "%u read(s) of the tools on the loop",
                      atomic_load(&tool_reads_on_loop));
        ck_assert_uint_gt(atomic_load(&tool_reads_off_loop), 0);

        provision_output_done(&res.out);
        vm_spec_done(&spec);
        fetcher_free(fr);
}
END_TEST

static void setup(void) {
        ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void) {
        (void) rm_rf(tmpdir);
        tools_dir[0] = '\0';
        strcpy(tmpdir, "/tmp/test-provision-loop-XXXXXX");
}

int main(void) {
        Suite *s = suite_create("provision-loop");
        TCase *tc = tcase_create("core");
        SRunner *sr;
        sigset_t mask;
        int failed;

        /* As hydrad does: sd-event watches children only with SIGCHLD blocked, in every thread. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGCHLD);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return EXIT_FAILURE;
        if (access("/usr/bin/genisoimage", X_OK) < 0 || system("qemu-img --version >/dev/null 2>&1") != 0) {
                printf("SKIP: genisoimage or qemu-img missing\n");
                return 77;
        }
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_records_written_off_the_loop);
        tcase_add_test(tc, test_tools_read_off_the_loop);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
