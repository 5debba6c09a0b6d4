/* SPDX-License-Identifier: MIT */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu_argv.h"

/* Golden files, as libvirt's qemuxmlconftest: tests/data/argv/NAME.args holds the expected argv, one argument per
 * line. HYDRA_REGENERATE_GOLDEN=1 rewrites them from the builder's output (review the diff before committing);
 * otherwise the test compares. */

#define QMP_PATH "/run/hydra/isolated/qmp.sock"
#define CONSOLE_LOG "/var/lib/hydra/isolated/console.log"

static PortForward forwards_full[] = {
        { .host_addr = NULL, .host_port = 2222, .guest_port = 22, .protocol = FORWARD_TCP },
        { .host_addr = NULL, .host_port = 5353, .guest_port = 53, .protocol = FORWARD_UDP },
        { .host_addr = "0.0.0.0", .host_port = 35000, .guest_port = 35000, .protocol = FORWARD_TCP },
};

static PortForward forwards_one[] = {
        { .host_addr = "127.0.0.1", .host_port = 2200, .guest_port = 22, .protocol = FORWARD_TCP },
};

typedef struct GoldenCase {
        const char *name;
        VmSpec spec;
        QemuRuntime rt;
} GoldenCase;

static const GoldenCase golden_cases[] = {
        {
                .name = "x86_64-tcg-minimal",
                .spec = { .cpus = 1, .memory_mib = 256, .accel = ACCEL_AUTO, .arch = ARCH_X86_64 },
                .rt = { .binary = "qemu-system-x86_64", .name = "isolated", .accel = ACCEL_TCG, .qmp_fd = -1,
                        .qmp_path = QMP_PATH, .console_log = CONSOLE_LOG },
        },
        {
                /* Same as above, QMP on an inherited listening fd instead of a path. */
                .name = "x86_64-tcg-qmp-fd",
                .spec = { .cpus = 1, .memory_mib = 256, .accel = ACCEL_AUTO, .arch = ARCH_X86_64 },
                .rt = { .binary = "qemu-system-x86_64", .name = "isolated", .accel = ACCEL_TCG, .qmp_fd = 3,
                        .qmp_path = QMP_PATH, .console_log = CONSOLE_LOG },
        },
        {
                /* Everything: bare kernel, a disk whose path has a comma, forwards (default address, udp,
                 * explicit address), a command line with commas that must reach the kernel untouched. */
                .name = "x86_64-kvm-full",
                .spec = { .cpus = 4, .memory_mib = 4096, .accel = ACCEL_KVM, .arch = ARCH_X86_64,
                          .kernel = "/var/lib/hydra/isolated/vmlinuz",
                          .initrd = "/var/lib/hydra/isolated/initrd.img",
                          .cmdline = "console=ttyS0,115200 root=/dev/vda rw quiet",
                          .disk = "/var/lib/hydra/isolated/disk,v2.qcow2",
                          .forwards = forwards_full, .n_forwards = 3 },
                .rt = { .binary = "/usr/bin/qemu-system-x86_64", .name = "isolated", .accel = ACCEL_KVM,
                        .qmp_fd = 3, .console_log = CONSOLE_LOG, .disk_format = "qcow2" },
        },
        {
                /* Explicit machine and CPU features; runtime paths with commas are doubled too. */
                .name = "x86_64-kvm-machine-cpu",
                .spec = { .cpus = 2, .memory_mib = 2048, .accel = ACCEL_KVM, .arch = ARCH_X86_64,
                          .machine = "pc-q35-7.2", .cpu_model = "host,+vmx,-hle,l3-cache=on",
                          .disk = "/srv/images/host.raw", .forwards = forwards_one, .n_forwards = 1 },
                .rt = { .binary = "qemu-system-x86_64", .name = "host", .accel = ACCEL_KVM, .qmp_fd = -1,
                        .qmp_path = "/run/hydra,a/host/qmp.sock", .console_log = "/var/lib/hydra,a/host/console.log",
                        .disk_format = "raw" },
        },
        {
                .name = "aarch64-tcg",
                .spec = { .cpus = 2, .memory_mib = 1024, .accel = ACCEL_TCG, .arch = ARCH_AARCH64,
                          .kernel = "/var/lib/hydra/isolated/Image", .initrd = "/var/lib/hydra/isolated/initrd.img",
                          .cmdline = "console=ttyAMA0", .forwards = forwards_one, .n_forwards = 1 },
                .rt = { .binary = "qemu-system-aarch64", .name = "isolated", .accel = ACCEL_TCG, .qmp_fd = -1,
                        .qmp_path = QMP_PATH, .console_log = CONSOLE_LOG },
        },
        {
                /* "virt" written out gets the same GIC as the default. */
                .name = "aarch64-kvm-virt",
                .spec = { .cpus = 8, .memory_mib = 8192, .accel = ACCEL_AUTO, .arch = ARCH_AARCH64,
                          .machine = "virt", .disk = "/var/lib/hydra/host/disk.qcow2" },
                .rt = { .binary = "qemu-system-aarch64", .name = "host", .accel = ACCEL_KVM, .qmp_fd = 5,
                        .console_log = "/var/lib/hydra/host/console.log", .disk_format = "qcow2" },
        },
        {
                /* Any other machine type is taken as written. */
                .name = "aarch64-tcg-machine",
                .spec = { .cpus = 1, .memory_mib = 512, .accel = ACCEL_TCG, .arch = ARCH_AARCH64,
                          .machine = "virt-7.2", .cpu_model = "max,pauth-impdef=on" },
                .rt = { .binary = "qemu-system-aarch64", .name = "isolated", .accel = ACCEL_TCG, .qmp_fd = -1,
                        .qmp_path = QMP_PATH, .console_log = CONSOLE_LOG },
        },
};

static char *read_file(const char *path) {
        FILE *f = fopen(path, "re");
        char *buf = NULL;
        size_t size = 0;

        if (!f)
                return NULL;
        FILE *out = open_memstream(&buf, &size);
        ck_assert_ptr_nonnull(out);
        for (int c; (c = fgetc(f)) != EOF;)
                fputc(c, out);
        fclose(out);
        fclose(f);
        return buf;
}

static char *join_lines(char **argv) {
        char *buf = NULL;
        size_t size = 0;
        FILE *out = open_memstream(&buf, &size);

        ck_assert_ptr_nonnull(out);
        for (char **a = argv; *a; a++) {
                /* One argument per line only works if no argument holds a newline. */
                ck_assert_msg(!strchr(*a, '\n'), "argument with a newline: %s", *a);
                fprintf(out, "%s\n", *a);
        }
        fclose(out);
        return buf;
}

/* The first line where two texts differ, for a readable failure. */
static void assert_same_text(const char *name, const char *want, const char *got) {
        unsigned line = 1;
        const char *w = want, *g = got;

        if (strcmp(want, got) == 0)
                return;
        while (*w && *w == *g) {
                if (*w == '\n')
                        line++;
                w++, g++;
        }
        while (w > want && w[-1] != '\n')
                w--, g--;
        ck_abort_msg("%s.args differs at line %u:\n  want: %.*s\n  got:  %.*s\n(HYDRA_REGENERATE_GOLDEN=1 rewrites the "
                     "golden files)",
                     name, line, (int) strcspn(w, "\n"), w, (int) strcspn(g, "\n"), g);
}

START_TEST(test_golden) {
        const GoldenCase *c = &golden_cases[_i];
        _cleanup_strv_free_ char **argv = NULL;
        _cleanup_free_ char *got = NULL, *want = NULL, *path = NULL;
        HydraError e = {};
        const char *regen = getenv("HYDRA_REGENERATE_GOLDEN");

        ck_assert_int_ge(asprintf(&path, "%s/argv/%s.args", TEST_DATA_DIR, c->name), 0);
        ck_assert_msg(qemu_argv_build(&c->spec, &c->rt, &argv, &e) == 0, "%s: %s", c->name, e.message);
        ck_assert_str_eq(argv[0], c->rt.binary);
        got = join_lines(argv);

        if (regen && streq(regen, "1")) {
                FILE *f = fopen(path, "we");

                ck_assert_msg(f, "cannot write %s", path);
                fputs(got, f);
                ck_assert_int_eq(fclose(f), 0);
                fprintf(stderr, "regenerated %s\n", path);
                return;
        }

        want = read_file(path);
        ck_assert_msg(want, "cannot read %s (HYDRA_REGENERATE_GOLDEN=1 creates it)", path);
        assert_same_text(c->name, want, got);
}
END_TEST

/* The same spec builds the same argv every time (no hidden state, no environment). */
START_TEST(test_deterministic) {
        const GoldenCase *c = &golden_cases[2];
        _cleanup_strv_free_ char **a = NULL, **b = NULL;
        _cleanup_free_ char *ja = NULL, *jb = NULL;

        ck_assert_int_eq(qemu_argv_build(&c->spec, &c->rt, &a, NULL), 0);
        ck_assert_int_eq(qemu_argv_build(&c->spec, &c->rt, &b, NULL), 0);
        ja = join_lines(a);
        jb = join_lines(b);
        ck_assert_str_eq(ja, jb);
}
END_TEST

static VmSpec minimal_spec(void) {
        return (VmSpec) { .cpus = 1, .memory_mib = 256, .arch = ARCH_X86_64 };
}

static QemuRuntime minimal_rt(void) {
        return (QemuRuntime) { .binary = "qemu-system-x86_64", .name = "isolated", .accel = ACCEL_TCG, .qmp_fd = -1,
                               .qmp_path = QMP_PATH, .console_log = CONSOLE_LOG };
}

#define assert_build_fails(spec, rt, want_code, text)                                                   \
        do {                                                                                       \
                char **_argv = NULL;                                                               \
                HydraError _e = {};                                                                \
                ck_assert_int_eq(qemu_argv_build((spec), (rt), &_argv, &_e), (want_code));             \
                ck_assert_ptr_null(_argv);                                                         \
                ck_assert_int_eq(_e.code, (want_code));                                                 \
                ck_assert_msg(strstr(_e.message, (text)), "message lacks '%s': %s", (text), _e.message); \
        } while (0)

START_TEST(test_accel_auto_refused) {
        VmSpec s = minimal_spec();
        QemuRuntime rt = minimal_rt();

        rt.accel = ACCEL_AUTO;
        assert_build_fails(&s, &rt, -EINVAL, "'auto' is not resolved (allowed: kvm, tcg");
        rt.accel = (Accel) 42;
        assert_build_fails(&s, &rt, -EINVAL, "is not resolved");
}
END_TEST

START_TEST(test_invalid_spec_refused) {
        VmSpec s = minimal_spec();
        QemuRuntime rt = minimal_rt();

        /* The builder validates: nothing unchecked reaches QEMU, whoever the caller. */
        s.machine = "q35,accel=kvm";
        assert_build_fails(&s, &rt, -EINVAL, "machine: 'q35,accel=kvm' contains ','");
        s.machine = NULL;
        s.cmdline = "quiet\ninit=/bin/sh";
        assert_build_fails(&s, &rt, -EINVAL, "cmdline: ");
        s.cmdline = NULL;
        s.cpus = 0;
        assert_build_fails(&s, &rt, -EINVAL, "cpus: 0 is out of range");
}
END_TEST

START_TEST(test_runtime_refused) {
        VmSpec s = minimal_spec();
        QemuRuntime rt = minimal_rt();

        rt.qmp_path = NULL;
        assert_build_fails(&s, &rt, -EINVAL, "neither a socket fd nor a path");
        rt = minimal_rt();
        rt.console_log = "";
        assert_build_fails(&s, &rt, -EINVAL, "console_log: not set");
        rt = minimal_rt();
        rt.binary = NULL;
        assert_build_fails(&s, &rt, -EINVAL, "binary: not set");
        rt = minimal_rt();
        rt.console_log = "/var/log/a\nb";
        assert_build_fails(&s, &rt, -EINVAL, "console_log: contains a control character");
        rt = minimal_rt();
        /* 108 bytes: one more than sun_path holds with its NUL. */
        rt.qmp_path = "/run/hydra/isolated/"
                      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/qmp.sock";
        ck_assert_uint_eq(strlen(rt.qmp_path), 108);
        assert_build_fails(&s, &rt, -EINVAL, "is longer than a unix socket path may be (allowed: at most 107 bytes)");
        /* 107 bytes fit. */
        {
                _cleanup_free_ char *fits = strndup(rt.qmp_path, 107);
                char **argv = NULL;

                ck_assert_ptr_nonnull(fits);
                rt.qmp_path = fits;
                ck_assert_int_eq(qemu_argv_build(&s, &rt, &argv, NULL), 0);
                strv_free(argv);
        }

        /* A disk needs a known format. */
        rt = minimal_rt();
        s.disk = "/srv/disk.img";
        assert_build_fails(&s, &rt, -EINVAL, "disk_format: '' is not supported (allowed: qcow2, raw)");
        rt.disk_format = "vmdk";
        assert_build_fails(&s, &rt, -EINVAL, "disk_format: 'vmdk' is not supported");
        rt.disk_format = "raw";
        {
                char **argv = NULL;

                ck_assert_int_eq(qemu_argv_build(&s, &rt, &argv, NULL), 0);
                strv_free(argv);
        }
}
END_TEST

START_TEST(test_escape_comma) {
        static const struct {
                const char *in, *out;
        } cases[] = {
                { "", "" },
                { "a", "a" },
                { ",", ",," },
                { "a,b", "a,,b" },
                { "a,,b", "a,,,,b" },
                { ",start", ",,start" },
                { "end,", "end,," },
                { "/var/lib/hydra/disk,v2.qcow2", "/var/lib/hydra/disk,,v2.qcow2" },
                { "no commas = fine", "no commas = fine" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *s = qemu_escape_comma(cases[i].in);

                ck_assert_ptr_nonnull(s);
                ck_assert_str_eq(s, cases[i].out);
        }
}
END_TEST

/* The exact option strings where escaping matters, independent of the golden files. */
START_TEST(test_escaping_in_argv) {
        const GoldenCase *c = &golden_cases[3]; /* commas in qmp_path and console_log */
        const GoldenCase *full = &golden_cases[2]; /* comma in the disk path and cmdline */
        _cleanup_strv_free_ char **a = NULL, **b = NULL;
        bool qmp = false, console = false, drive = false, append = false;

        ck_assert_int_eq(qemu_argv_build(&c->spec, &c->rt, &a, NULL), 0);
        for (char **i = a; *i; i++) {
                qmp = qmp || streq(*i, "socket,id=qmp,path=/run/hydra,,a/host/qmp.sock,server=on,wait=off");
                console = console || streq(*i, "file,id=console,path=/var/lib/hydra,,a/host/console.log,append=on");
        }
        ck_assert(qmp);
        ck_assert(console);

        ck_assert_int_eq(qemu_argv_build(&full->spec, &full->rt, &b, NULL), 0);
        for (char **i = b; *i; i++) {
                drive = drive ||
                        streq(*i, "file=/var/lib/hydra/isolated/disk,,v2.qcow2,if=virtio,format=qcow2,discard=unmap");
                /* -append is not key=value: the command line goes through as written. */
                if (streq(*i, "-append")) {
                        ck_assert_str_eq(i[1], "console=ttyS0,115200 root=/dev/vda rw quiet");
                        append = true;
                }
        }
        ck_assert(drive);
        ck_assert(append);
}
END_TEST

START_TEST(test_defaults) {
        ck_assert_str_eq(qemu_default_machine(ARCH_X86_64), "q35");
        ck_assert_str_eq(qemu_default_machine(ARCH_AARCH64), "virt,gic-version=max");
        ck_assert_ptr_null(qemu_default_machine(_ARCH_MAX));

        ck_assert_str_eq(qemu_default_cpu(ARCH_X86_64, ACCEL_KVM), "host");
        ck_assert_str_eq(qemu_default_cpu(ARCH_X86_64, ACCEL_TCG), "qemu64");
        ck_assert_str_eq(qemu_default_cpu(ARCH_AARCH64, ACCEL_KVM), "host");
        ck_assert_str_eq(qemu_default_cpu(ARCH_AARCH64, ACCEL_TCG), "cortex-a76");
        ck_assert_ptr_null(qemu_default_cpu(ARCH_X86_64, ACCEL_AUTO));
        ck_assert_ptr_null(qemu_default_cpu(_ARCH_MAX, ACCEL_TCG));

        ck_assert_str_eq(qemu_binary_name(ARCH_X86_64), "qemu-system-x86_64");
        ck_assert_str_eq(qemu_binary_name(ARCH_AARCH64), "qemu-system-aarch64");
        ck_assert_ptr_null(qemu_binary_name(_ARCH_INVALID));
}
END_TEST

static Suite *qemu_argv_suite(void) {
        Suite *s = suite_create("qemu_argv");
        TCase *tc;

        tc = tcase_create("golden");
        tcase_add_loop_test(tc, test_golden, 0, (int) ELEMENTSOF(golden_cases));
        tcase_add_test(tc, test_deterministic);
        suite_add_tcase(s, tc);

        tc = tcase_create("refused");
        tcase_add_test(tc, test_accel_auto_refused);
        tcase_add_test(tc, test_invalid_spec_refused);
        tcase_add_test(tc, test_runtime_refused);
        suite_add_tcase(s, tc);

        tc = tcase_create("escaping");
        tcase_add_test(tc, test_escape_comma);
        tcase_add_test(tc, test_escaping_in_argv);
        tcase_add_test(tc, test_defaults);
        suite_add_tcase(s, tc);

        return s;
}

int main(void) {
        SRunner *sr = srunner_create(qemu_argv_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
