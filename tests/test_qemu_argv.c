/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <check.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "process.h"
#include "qemu_argv.h"

/* Golden files, as libvirt's qemuxmlconftest: tests/data/argv/NAME.args holds the expected argv, one argument per
 * line. HYDRA_REGENERATE_GOLDEN=1 rewrites them from the builder's output (review the diff before committing);
 * otherwise the test compares. */

#define QMP_PATH "/run/hydra/isolated/qmp.sock"
#define CONSOLE_SOCKET "/run/hydra/isolated/qemu-console.sock"
#define ISO "/var/lib/hydra/isolated"
#define HOST "/var/lib/hydra/host"
#define DEBIAN_IMAGE_URL                                                                                          \
        "https://cloud.debian.org/images/cloud/trixie/20250814-2204/debian-13-generic-amd64-20250814-2204.qcow2"
#define DEBIAN_IMAGE_URL_ARM64                                                                                    \
        "https://cloud.debian.org/images/cloud/trixie/20250814-2204/debian-13-generic-arm64-20250814-2204.qcow2"
#define RIMD_URL                                                                                                  \
        "https://gitlab.arm.com/api/v4/projects/10711/packages/generic/rimdworkspace/Q2_2026_1/rimdworkspace.tar.gz"
#define RIMD ISO "/rimdworkspace_Q2_2026_1"

static PortForward forwards_full[] = {
        { .host_addr = NULL, .host_port = 2222, .guest_port = 22, .protocol = FORWARD_TCP },
        { .host_addr = NULL, .host_port = 5353, .guest_port = 53, .protocol = FORWARD_UDP },
        { .host_addr = "0.0.0.0", .host_port = 35000, .guest_port = 35000, .protocol = FORWARD_TCP },
};

static PortForward forwards_one[] = {
        { .host_addr = "127.0.0.1", .host_port = 2200, .guest_port = 22, .protocol = FORWARD_TCP },
};

/* run-host.sh's DEFAULT_KVM_PORTS_REDIRECT plus the sshd and diod ports start-vm.sh adds. */
static PortForward forwards_host_preset[] = {
        { .host_port = 6443, .guest_port = 6443 },   { .host_port = 30123, .guest_port = 30123 },
        { .host_port = 31883, .guest_port = 31883 }, { .host_port = 30443, .guest_port = 443 },
        { .host_port = 30080, .guest_port = 80 },    { .host_port = 30700, .guest_port = 30700 },
        { .host_port = 30900, .guest_port = 30900 }, { .host_port = 5555, .guest_port = 22 },
        { .host_port = 30564, .guest_port = 564 },
};

/* run-isolated-bare.sh's: sshd, three service ports, and rimd's 35001. */
static PortForward forwards_bare[] = {
        { .host_port = 5556, .guest_port = 22 },
        { .host_addr = "0.0.0.0", .host_port = 30800, .guest_port = 8000 },
        { .host_port = 30801, .guest_port = 8001 },
        { .host_port = 30802, .guest_port = 8002 },
        { .host_addr = "127.0.0.1", .host_port = 35001, .guest_port = 35001 },
};

static Share shares_two[] = {
        { .host_path = "/srv/datasets", .guest_path = "/mnt/datasets" },
        { .host_path = "/home/dev/src/", .guest_path = "/mnt/src" },
};

static Share shares_commas[] = {
        { .host_path = "/srv/a,b", .guest_path = "/mnt/ab" },
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
                        .qmp_path = QMP_PATH, .console_fd = -1, .console_socket = CONSOLE_SOCKET },
        },
        {
                /* Same as above, QMP and the console on inherited listening fds (as hydrad runs QEMU) instead of
                 * paths, no kubelet shares. */
                .name = "x86_64-tcg-qmp-fd",
                .spec = { .cpus = 1, .memory_mib = 256, .accel = ACCEL_AUTO, .arch = ARCH_X86_64,
                          .shares.kubelet = KUBELET_SHARES_NONE },
                .rt = { .binary = "qemu-system-x86_64", .name = "isolated", .accel = ACCEL_TCG, .qmp_fd = 3,
                        .qmp_path = QMP_PATH, .console_fd = 4, .console_socket = CONSOLE_SOCKET },
        },
        {
                /* Local kernel boot: a disk whose path has a comma, forwards (default address, udp, explicit
                 * address), a command line with commas that must reach the kernel untouched. */
                .name = "x86_64-kvm-full",
                .spec = { .cpus = 4, .memory_mib = 4096, .accel = ACCEL_KVM, .arch = ARCH_X86_64,
                          .kernel = ISO "/vmlinuz", .initrd = ISO "/initrd.img",
                          .cmdline = "console=ttyS0,115200 root=/dev/vda rw quiet",
                          .disk = ISO "/disk,v2.qcow2", .forwards = forwards_full, .n_forwards = 3,
                          .shares.kubelet = KUBELET_SHARES_NONE },
                .rt = { .binary = "/usr/bin/qemu-system-x86_64", .name = "isolated", .accel = ACCEL_KVM,
                        .qmp_fd = 3, .console_fd = -1, .console_socket = CONSOLE_SOCKET, .disk_path = ISO "/disk,v2.qcow2",
                        .disk_format = "qcow2", .kernel = ISO "/vmlinuz", .initrd = ISO "/initrd.img" },
        },
        {
                /* Explicit machine and CPU features; runtime paths with commas are doubled too. */
                .name = "x86_64-kvm-machine-cpu",
                .spec = { .cpus = 2, .memory_mib = 2048, .accel = ACCEL_KVM, .arch = ARCH_X86_64,
                          .machine = "pc-q35-7.2", .cpu_model = "host,+vmx,-hle,l3-cache=on",
                          .disk = "/srv/images/host.raw", .forwards = forwards_one, .n_forwards = 1,
                          .shares.kubelet = KUBELET_SHARES_NONE },
                .rt = { .binary = "qemu-system-x86_64", .name = "host", .accel = ACCEL_KVM, .qmp_fd = -1,
                        .qmp_path = "/run/hydra,a/host/qmp.sock", .console_fd = -1, .console_socket = "/run/hydra,a/host/qemu-console.sock",
                        .disk_path = "/srv/images/host.raw", .disk_format = "raw" },
        },
        {
                /* Cloud image with everything on: firmware, vsock, gpu, nvdimm, kubelet shares from a prefix
                 * (trailing '/'), extra shares, a network of its own, forwards with and without an address. */
                .name = "x86_64-cloud-full",
                .spec = { .cpus = 4, .memory_mib = 8192, .accel = ACCEL_KVM, .arch = ARCH_X86_64,
                          .image.url = DEBIAN_IMAGE_URL, .disk_size_gib = 16,
                          .firmware_code = "/usr/share/OVMF/OVMF_CODE_4M.fd",
                          .firmware_vars = "/usr/share/OVMF/OVMF_VARS_4M.fd",
                          .forwards = forwards_full, .n_forwards = 3,
                          .network = { .guest_ip = "192.168.100.20", .gateway = "192.168.100.1",
                                       .dns = "192.168.100.53", .prefix_len = 24, .mac = "52:54:00:12:34:56" },
                          .shares = { .kubelet = KUBELET_SHARES_VIRTIO, .kubelet_host_dir = "/srv/k3s/",
                                      .extra = shares_two, .n_extra = 2 },
                          .devices = { .vsock = true, .vsock_cid = 7, .gpu = true, .gpu_vram_gib = 8,
                                       .shmem = SHMEM_NVDIMM, .shmem_size_gib = 2,
                                       .shmem_path = "/dev/shm/shmem-hydravm" } },
                .rt = { .binary = "qemu-system-x86_64", .name = "isolated", .accel = ACCEL_KVM, .qmp_fd = 3,
                        .console_fd = -1, .console_socket = CONSOLE_SOCKET, .disk_path = ISO "/disk.qcow2", .disk_format = "qcow2",
                        .seed_path = ISO "/seed.iso", .firmware_vars = ISO "/OVMF_VARS_4M.fd",
                        .shmem_path = "/dev/shm/shmem-hydravm" },
        },
        {
                /* run-host.sh: k3s host, no kubelet shares, a list of forwards, defaults elsewhere. */
                .name = "x86_64-host-preset",
                .spec = { .cpus = 2, .memory_mib = 8192, .accel = ACCEL_AUTO, .arch = ARCH_X86_64,
                          .image.url = DEBIAN_IMAGE_URL, .disk_size_gib = 25, .keep_pristine = true,
                          .software = { .disable_containerd_proxy = true, .k3s_diod = true },
                          .forwards = forwards_host_preset, .n_forwards = ELEMENTSOF(forwards_host_preset),
                          .shares.kubelet = KUBELET_SHARES_NONE },
                .rt = { .binary = "qemu-system-x86_64", .name = "host", .accel = ACCEL_KVM, .qmp_fd = 3,
                        .console_fd = -1, .console_socket = "/run/hydra/host/qemu-console.sock", .disk_path = HOST "/disk.qcow2", .disk_format = "qcow2",
                        .seed_path = HOST "/seed.iso" },
        },
        {
                /* Bare kernel on x86_64: ttyS0, a /16 network (netmask in ip=), kubelet shares over virtio. */
                .name = "x86_64-bare-kernel",
                .spec = { .cpus = 2, .memory_mib = 2048, .accel = ACCEL_TCG, .arch = ARCH_X86_64,
                          .bare.artifact.url = RIMD_URL,
                          .network = { .guest_ip = "172.16.5.15", .gateway = "172.16.0.2", .dns = "172.16.0.3",
                                       .prefix_len = 16 } },
                .rt = { .binary = "qemu-system-x86_64", .name = "isolated", .accel = ACCEL_TCG, .qmp_fd = 3,
                        .console_fd = -1, .console_socket = CONSOLE_SOCKET, .bare_kernel = true, .kernel = RIMD "/Image.gz",
                        .initrd = RIMD "/initramfs.linux_arm64.cpio", .disk_path = RIMD "/something.qcow2",
                        .disk_format = "qcow2" },
        },
        {
                /* ivshmem on a local disk. */
                .name = "x86_64-ivshmem",
                .spec = { .cpus = 2, .memory_mib = 1024, .accel = ACCEL_TCG, .arch = ARCH_X86_64,
                          .disk = "/srv/images/isolated.qcow2", .shares.kubelet = KUBELET_SHARES_NONE,
                          .devices = { .shmem = SHMEM_IVSHMEM, .shmem_size_gib = 4 } },
                .rt = { .binary = "qemu-system-x86_64", .name = "isolated", .accel = ACCEL_TCG, .qmp_fd = 3,
                        .console_fd = -1, .console_socket = CONSOLE_SOCKET, .disk_path = "/srv/images/isolated.qcow2",
                        .disk_format = "qcow2", .shmem_path = "/dev/shm/shmem-isolated" },
        },
        {
                /* A comma in every path that reaches a key=value option: each one doubled. */
                .name = "x86_64-commas",
                .spec = { .cpus = 1, .memory_mib = 512, .accel = ACCEL_TCG, .arch = ARCH_X86_64,
                          .image.url = DEBIAN_IMAGE_URL, .firmware_code = "/srv/fw,1/OVMF_CODE.fd",
                          .firmware_vars = "/srv/fw,1/OVMF_VARS.fd",
                          .shares = { .kubelet = KUBELET_SHARES_VIRTIO, .kubelet_host_dir = "/srv/k3s,var",
                                      .extra = shares_commas, .n_extra = 1 },
                          .devices = { .shmem = SHMEM_NVDIMM, .shmem_path = "/dev/shm/shm,em" } },
                .rt = { .binary = "qemu-system-x86_64", .name = "iso,lated", .accel = ACCEL_TCG, .qmp_fd = -1,
                        .qmp_path = "/run/hydra,1/qmp.sock", .console_fd = -1, .console_socket = "/run/hydra,1/qemu-console.sock",
                        .disk_path = "/var/lib/hydra,1/disk.qcow2", .disk_format = "qcow2",
                        .seed_path = "/var/lib/hydra,1/seed.iso", .firmware_vars = "/var/lib/hydra,1/OVMF_VARS.fd",
                        .shmem_path = "/dev/shm/shm,em" },
        },
        {
                /* Local kernel boot on aarch64. */
                .name = "aarch64-tcg",
                .spec = { .cpus = 2, .memory_mib = 1024, .accel = ACCEL_TCG, .arch = ARCH_AARCH64,
                          .kernel = ISO "/Image", .initrd = ISO "/initrd.img", .cmdline = "console=ttyAMA0",
                          .forwards = forwards_one, .n_forwards = 1, .shares.kubelet = KUBELET_SHARES_NONE },
                .rt = { .binary = "qemu-system-aarch64", .name = "isolated", .accel = ACCEL_TCG, .qmp_fd = -1,
                        .qmp_path = QMP_PATH, .console_fd = -1, .console_socket = CONSOLE_SOCKET, .kernel = ISO "/Image",
                        .initrd = ISO "/initrd.img" },
        },
        {
                /* "virt" written out gets the same GIC as the default. */
                .name = "aarch64-kvm-virt",
                .spec = { .cpus = 8, .memory_mib = 8192, .accel = ACCEL_AUTO, .arch = ARCH_AARCH64,
                          .machine = "virt", .disk = HOST "/disk.qcow2", .shares.kubelet = KUBELET_SHARES_NONE },
                .rt = { .binary = "qemu-system-aarch64", .name = "host", .accel = ACCEL_KVM, .qmp_fd = 5,
                        .console_fd = -1, .console_socket = "/run/hydra/host/qemu-console.sock", .disk_path = HOST "/disk.qcow2", .disk_format = "qcow2" },
        },
        {
                /* A versioned virt gets it too; the CPU is taken as written. */
                .name = "aarch64-tcg-machine",
                .spec = { .cpus = 1, .memory_mib = 512, .accel = ACCEL_TCG, .arch = ARCH_AARCH64,
                          .machine = "virt-7.2", .cpu_model = "max,pauth-impdef=on",
                          .shares.kubelet = KUBELET_SHARES_NONE },
                .rt = { .binary = "qemu-system-aarch64", .name = "isolated", .accel = ACCEL_TCG, .qmp_fd = -1,
                        .qmp_path = QMP_PATH, .console_fd = -1, .console_socket = CONSOLE_SOCKET },
        },
        {
                /* The same as x86_64-cloud-full on aarch64: the seed is a virtio disk, the network slirp's. */
                .name = "aarch64-cloud-full",
                .spec = { .cpus = 4, .memory_mib = 8192, .accel = ACCEL_KVM, .arch = ARCH_AARCH64,
                          .image.url = DEBIAN_IMAGE_URL_ARM64, .disk_size_gib = 16,
                          .firmware_code = "/usr/share/AAVMF/AAVMF_CODE.fd",
                          .firmware_vars = "/usr/share/AAVMF/AAVMF_VARS.fd",
                          .forwards = forwards_full, .n_forwards = 3,
                          .shares = { .kubelet = KUBELET_SHARES_VIRTIO, .extra = shares_two, .n_extra = 2 },
                          .devices = { .vsock = true, .vsock_cid = 3, .gpu = true, .shmem = SHMEM_NVDIMM,
                                       .shmem_path = "/dev/shm/shmem-hydravm" } },
                .rt = { .binary = "qemu-system-aarch64", .name = "isolated", .accel = ACCEL_KVM, .qmp_fd = 3,
                        .console_fd = -1, .console_socket = CONSOLE_SOCKET, .disk_path = ISO "/disk.qcow2", .disk_format = "qcow2",
                        .seed_path = ISO "/seed.iso", .firmware_vars = ISO "/AAVMF_VARS.fd",
                        .shmem_path = "/dev/shm/shmem-hydravm" },
        },
        {
                .name = "aarch64-host-preset",
                .spec = { .cpus = 2, .memory_mib = 8192, .accel = ACCEL_AUTO, .arch = ARCH_AARCH64,
                          .image.url = DEBIAN_IMAGE_URL_ARM64, .disk_size_gib = 25, .keep_pristine = true,
                          .software = { .disable_containerd_proxy = true, .k3s_diod = true },
                          .forwards = forwards_host_preset, .n_forwards = ELEMENTSOF(forwards_host_preset),
                          .shares.kubelet = KUBELET_SHARES_NONE },
                .rt = { .binary = "qemu-system-aarch64", .name = "host", .accel = ACCEL_KVM, .qmp_fd = 3,
                        .console_fd = -1, .console_socket = "/run/hydra/host/qemu-console.sock", .disk_path = HOST "/disk.qcow2", .disk_format = "qcow2",
                        .seed_path = HOST "/seed.iso" },
        },
        {
                /* run-isolated-bare.sh: rimd kernel, 9p over TCP, vsock, an extra command line. */
                .name = "aarch64-bare-kernel",
                .spec = { .cpus = 4, .memory_mib = 4096, .accel = ACCEL_AUTO, .arch = ARCH_AARCH64,
                          .bare.artifact.url = RIMD_URL, .bare.dir = "rimdworkspace_Q2_2026_1",
                          .cmdline = "loglevel=7 rimd.debug=1", .forwards = forwards_bare,
                          .n_forwards = ELEMENTSOF(forwards_bare), .shares.kubelet = KUBELET_SHARES_TCP,
                          .devices = { .vsock = true, .vsock_cid = 3 } },
                .rt = { .binary = "qemu-system-aarch64", .name = "isolated", .accel = ACCEL_KVM, .qmp_fd = 3,
                        .console_fd = -1, .console_socket = CONSOLE_SOCKET, .bare_kernel = true, .kernel = RIMD "/Image.gz",
                        .initrd = RIMD "/initramfs.linux_arm64.cpio", .disk_path = RIMD "/something.qcow2",
                        .disk_format = "qcow2" },
        },
        {
                .name = "aarch64-ivshmem",
                .spec = { .cpus = 2, .memory_mib = 1024, .accel = ACCEL_TCG, .arch = ARCH_AARCH64,
                          .disk = "/srv/images/isolated.raw", .shares.kubelet = KUBELET_SHARES_NONE,
                          .devices = { .shmem = SHMEM_IVSHMEM } },
                .rt = { .binary = "qemu-system-aarch64", .name = "isolated", .accel = ACCEL_TCG, .qmp_fd = 3,
                        .console_fd = -1, .console_socket = CONSOLE_SOCKET, .disk_path = "/srv/images/isolated.raw", .disk_format = "raw",
                        .shmem_path = "/dev/shm/shmem-isolated" },
        },
        {
                /* Commas on aarch64, bare kernel: kernel and initrd go through whole, the rest doubled. */
                .name = "aarch64-commas",
                .spec = { .cpus = 1, .memory_mib = 512, .accel = ACCEL_TCG, .arch = ARCH_AARCH64,
                          .bare.artifact.url = RIMD_URL, .firmware_code = "/srv/fw,1/AAVMF_CODE.fd",
                          .firmware_vars = "/srv/fw,1/AAVMF_VARS.fd",
                          .shares = { .kubelet = KUBELET_SHARES_VIRTIO, .kubelet_host_dir = "/srv/k3s,var",
                                      .extra = shares_commas, .n_extra = 1 },
                          .devices = { .shmem = SHMEM_IVSHMEM, .shmem_path = "/dev/shm/shm,em" } },
                .rt = { .binary = "qemu-system-aarch64", .name = "iso,lated", .accel = ACCEL_TCG, .qmp_fd = -1,
                        .qmp_path = "/run/hydra,1/qmp.sock", .console_fd = -1, .console_socket = "/run/hydra,1/qemu-console.sock",
                        .bare_kernel = true, .kernel = "/var/lib/hydra,1/Image,gz",
                        .initrd = "/var/lib/hydra,1/initramfs,cpio", .disk_path = "/var/lib/hydra,1/root,fs.qcow2",
                        .disk_format = "qcow2", .firmware_vars = "/var/lib/hydra,1/AAVMF_VARS.fd",
                        .shmem_path = "/dev/shm/shm,em" },
        },
};

static const GoldenCase *find_case(const char *name) {
        for (size_t i = 0; i < ELEMENTSOF(golden_cases); i++)
                if (streq(golden_cases[i].name, name))
                        return &golden_cases[i];
        ck_abort_msg("no golden case '%s'", name);
        return NULL;
}

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
        const GoldenCase *c = find_case("x86_64-cloud-full");
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
                               .qmp_path = QMP_PATH, .console_fd = -1, .console_socket = CONSOLE_SOCKET };
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

static char **build_ok(const VmSpec *spec, const QemuRuntime *rt);

/* What keeps QEMU root whatever the host's permissions (issue 13): 9p passthrough shares and the GPU; nothing else. */
START_TEST(test_root_features) {
        Share extra = { .host_path = (char *) "/srv/data", .guest_path = (char *) "/data" };
        VmSpec s = minimal_spec();
        const char *r[8];
        size_t n;

        s.shares.kubelet = KUBELET_SHARES_NONE;
        ck_assert_uint_eq(qemu_root_features(&s, r, ELEMENTSOF(r)), 0);
        s.shares.kubelet = KUBELET_SHARES_TCP; /* diod in the host VM serves them: QEMU has no part */
        ck_assert_uint_eq(qemu_root_features(&s, r, ELEMENTSOF(r)), 0);
        s.devices.vsock = true; /* a device: the caller checks whether qemu_user may open it */
        ck_assert_uint_eq(qemu_root_features(&s, r, ELEMENTSOF(r)), 0);
        s.shares.kubelet = KUBELET_SHARES_VIRTIO; /* the default */
        n = qemu_root_features(&s, r, ELEMENTSOF(r));
        ck_assert_uint_eq(n, 1);
        ck_assert_msg(strstr(r[0], "shares.kubelet virtio") && strstr(r[0], "9p"), "%s", r[0]);
        s.shares.extra = &extra;
        s.shares.n_extra = 1;
        s.devices.gpu = true;
        n = qemu_root_features(&s, r, ELEMENTSOF(r));
        ck_assert_uint_eq(n, 3);
        ck_assert_msg(strstr(r[1], "shares.extra"), "%s", r[1]);
        ck_assert_msg(strstr(r[2], "devices.gpu"), "%s", r[2]);
        ck_assert_uint_eq(qemu_root_features(&s, r, 2), 2); /* never more than max */
}
END_TEST

START_TEST(test_runtime_refused) {
        VmSpec s = minimal_spec();
        QemuRuntime rt = minimal_rt();

        rt.qmp_path = NULL;
        assert_build_fails(&s, &rt, -EINVAL, "neither a socket fd nor a path");
        rt = minimal_rt();
        rt.console_socket = "";
        assert_build_fails(&s, &rt, -EINVAL, "console: neither a socket fd nor a path is set");
        rt.console_fd = 4; /* an inherited socket needs no path */
        strv_free(build_ok(&s, &rt));
        rt = minimal_rt();
        rt.binary = NULL;
        assert_build_fails(&s, &rt, -EINVAL, "binary: not set");
        rt = minimal_rt();
        rt.console_socket = "/var/log/a\nb";
        assert_build_fails(&s, &rt, -EINVAL, "console_socket: contains a control character");
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

        /* A disk needs a resolved path and a known format. */
        rt = minimal_rt();
        s.disk = "/srv/disk.img";
        assert_build_fails(&s, &rt, -EINVAL, "runtime disk_path: not set (the spec has a disk)");
        rt.disk_path = "/srv/disk.img";
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

/* Builds and asserts success. */
static char **build_ok(const VmSpec *spec, const QemuRuntime *rt) {
        char **argv = NULL;
        HydraError e = {};

        ck_assert_msg(qemu_argv_build(spec, rt, &argv, &e) == 0, "build failed: %s", e.message);
        ck_assert_ptr_nonnull(argv);
        return argv;
}

/* The value after the first "opt" whose value starts with prefix, or NULL. */
static const char *find_option(char **argv, const char *opt, const char *prefix) {
        for (char **a = argv; *a && a[1]; a++)
                if (streq(*a, opt) && strncmp(a[1], prefix, strlen(prefix)) == 0)
                        return a[1];
        return NULL;
}

static void assert_option(char **argv, const char *opt, const char *value) {
        ck_assert_msg(find_option(argv, opt, value) && streq(find_option(argv, opt, value), value),
                      "no '%s %s' in the argv", opt, value);
}

/* Values that QEMU does not split on ',': argv[0] and what -kernel, -initrd and -append take. */
static bool is_whole_value(char **argv, char **a) {
        return a == argv || (a > argv && (streq(a[-1], "-kernel") || streq(a[-1], "-initrd") ||
                                          streq(a[-1], "-append")));
}

/* Every path of the case that holds a comma reaches a key=value option doubled, never as written. */
static void assert_commas_doubled(const GoldenCase *c, const char *const *paths, size_t n_paths) {
        _cleanup_strv_free_ char **argv = build_ok(&c->spec, &c->rt);

        for (size_t i = 0; i < n_paths; i++) {
                _cleanup_free_ char *escaped = qemu_escape_comma(paths[i]);
                bool found = false;

                ck_assert_ptr_nonnull(strchr(paths[i], ','));
                for (char **a = argv; *a; a++) {
                        if (is_whole_value(argv, a)) {
                                found = found || streq(*a, paths[i]);
                                continue;
                        }
                        ck_assert_msg(!strstr(*a, paths[i]), "%s: '%s' reaches '%s' with a single comma", c->name,
                                      paths[i], *a);
                        found = found || strstr(*a, escaped);
                }
                ck_assert_msg(found, "%s: '%s' is in no option", c->name, paths[i]);
        }
}

/* The exact option strings where escaping matters, independent of the golden files. */
START_TEST(test_escaping_in_argv) {
        const GoldenCase *c = find_case("x86_64-kvm-machine-cpu"); /* commas in qmp_path and console_socket */
        const GoldenCase *full = find_case("x86_64-kvm-full");     /* comma in the disk path and cmdline */
        const GoldenCase *x86 = find_case("x86_64-commas"), *arm = find_case("aarch64-commas");
        _cleanup_strv_free_ char **a = build_ok(&c->spec, &c->rt), **b = build_ok(&full->spec, &full->rt);
        _cleanup_strv_free_ char **x = build_ok(&x86->spec, &x86->rt), **y = build_ok(&arm->spec, &arm->rt);

        assert_option(a, "-chardev", "socket,id=qmp,path=/run/hydra,,a/host/qmp.sock,server=on,wait=off");
        assert_option(a, "-chardev", "socket,id=console,path=/run/hydra,,a/host/qemu-console.sock,server=on,wait=off");

        assert_option(b, "-drive", "if=none,id=disk0,format=qcow2,file=/var/lib/hydra/isolated/disk,,v2.qcow2,"
                                   "discard=unmap");
        /* -append is not key=value: the command line goes through as written. */
        assert_option(b, "-append", "console=ttyS0,115200 root=/dev/vda rw quiet");

        assert_option(x, "-name", "guest=iso,,lated,debug-threads=on");
        assert_option(x, "-chardev", "socket,id=qmp,path=/run/hydra,,1/qmp.sock,server=on,wait=off");
        assert_option(x, "-chardev", "socket,id=console,path=/run/hydra,,1/qemu-console.sock,server=on,wait=off");
        assert_option(x, "-drive", "if=pflash,format=raw,readonly=on,file=/srv/fw,,1/OVMF_CODE.fd");
        assert_option(x, "-drive", "if=pflash,format=raw,file=/var/lib/hydra,,1/OVMF_VARS.fd");
        assert_option(x, "-drive", "if=none,id=disk0,format=qcow2,file=/var/lib/hydra,,1/disk.qcow2,discard=unmap");
        assert_option(x, "-drive", "file=/var/lib/hydra,,1/seed.iso,id=seed0,if=none,format=raw,media=cdrom,"
                                   "readonly=on");
        assert_option(x, "-virtfs", "local,path=/srv/k3s,,var/var/lib/kubelet,mount_tag=host0,"
                                    "security_model=passthrough,id=host0");
        assert_option(x, "-virtfs", "local,path=/srv/k3s,,var/var/log/pods,mount_tag=host1,"
                                    "security_model=passthrough,id=host1");
        assert_option(x, "-virtfs", "local,path=/srv/a,,b,mount_tag=host100,security_model=passthrough,id=host100");
        assert_option(x, "-object", "memory-backend-file,id=hostmem,mem-path=/dev/shm/shm,,em,size=1G,share=on");

        assert_option(y, "-kernel", "/var/lib/hydra,1/Image,gz");
        assert_option(y, "-initrd", "/var/lib/hydra,1/initramfs,cpio");
        assert_option(y, "-drive", "if=none,id=disk0,format=qcow2,file=/var/lib/hydra,,1/root,,fs.qcow2,"
                                   "discard=unmap");
        assert_option(y, "-drive", "if=pflash,format=raw,readonly=on,file=/srv/fw,,1/AAVMF_CODE.fd");
        assert_option(y, "-drive", "if=pflash,format=raw,file=/var/lib/hydra,,1/AAVMF_VARS.fd");
        assert_option(y, "-object", "memory-backend-file,id=hostmem,mem-path=/dev/shm/shm,,em,size=1G,share=on");
        assert_option(y, "-device", "ivshmem-plain,memdev=hostmem");

        {
                static const char *const x86_paths[] = {
                        "/run/hydra,1/qmp.sock",         "/run/hydra,1/qemu-console.sock", "/srv/fw,1/OVMF_CODE.fd",
                        "/var/lib/hydra,1/OVMF_VARS.fd", "/var/lib/hydra,1/disk.qcow2",  "/var/lib/hydra,1/seed.iso",
                        "/srv/k3s,var",                  "/srv/a,b",                     "/dev/shm/shm,em",
                        "iso,lated",
                };
                static const char *const arm_paths[] = {
                        "/run/hydra,1/qmp.sock",          "/run/hydra,1/qemu-console.sock",
                        "/srv/fw,1/AAVMF_CODE.fd",        "/var/lib/hydra,1/AAVMF_VARS.fd",
                        "/var/lib/hydra,1/root,fs.qcow2", "/var/lib/hydra,1/Image,gz",
                        "/var/lib/hydra,1/initramfs,cpio", "/srv/k3s,var",
                        "/srv/a,b",                       "/dev/shm/shm,em",
                        "iso,lated",
                };

                assert_commas_doubled(x86, x86_paths, ELEMENTSOF(x86_paths));
                assert_commas_doubled(arm, arm_paths, ELEMENTSOF(arm_paths));
        }
}
END_TEST

START_TEST(test_defaults) {
        ck_assert_str_eq(qemu_default_machine(ARCH_X86_64), "pc");
        ck_assert_str_eq(qemu_default_machine(ARCH_AARCH64), "virt");
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

START_TEST(test_machine) {
        static const struct {
                Arch arch;
                const char *machine, *want;
        } cases[] = {
                { ARCH_X86_64, NULL, "pc,accel=tcg" },
                { ARCH_X86_64, "q35", "q35,accel=tcg" },
                { ARCH_AARCH64, NULL, "virt,gic-version=max,accel=tcg" },
                { ARCH_AARCH64, "virt", "virt,gic-version=max,accel=tcg" },
                { ARCH_AARCH64, "virt-7.2", "virt-7.2,gic-version=max,accel=tcg" },
                /* Not the virt board: no GIC option to set. */
                { ARCH_AARCH64, "sbsa-ref", "sbsa-ref,accel=tcg" },
                { ARCH_AARCH64, "virtual", "virtual,accel=tcg" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                VmSpec s = { .cpus = 1, .memory_mib = 256, .arch = cases[i].arch, .machine = (char *) cases[i].machine,
                             .shares.kubelet = KUBELET_SHARES_NONE };
                QemuRuntime rt = { .binary = "qemu", .name = "isolated", .accel = ACCEL_TCG, .qmp_fd = 3,
                                   .console_fd = -1, .console_socket = CONSOLE_SOCKET };
                _cleanup_strv_free_ char **argv = build_ok(&s, &rt);

                assert_option(argv, "-machine", cases[i].want);
        }

        /* nvdimm and the GPU's memfd RAM fold into -machine; the nvdimm needs room beyond RAM. */
        {
                const GoldenCase *c = find_case("x86_64-cloud-full");
                _cleanup_strv_free_ char **argv = build_ok(&c->spec, &c->rt);

                assert_option(argv, "-machine", "pc,accel=kvm,nvdimm=on,memory-backend=mem1");
                assert_option(argv, "-m", "8192M,slots=2,maxmem=12288M");
                assert_option(argv, "-object", "memory-backend-memfd,id=mem1,size=8192M");
                assert_option(argv, "-device", "virtio-gpu-gl-pci,hostmem=8G,blob=true,venus=true");
                assert_option(argv, "-display", "egl-headless");
                assert_option(argv, "-device", "vhost-vsock-pci,id=vhost-vsock-pci0,guest-cid=7");
                assert_option(argv, "-device", "nvdimm,memdev=hostmem");
        }
}
END_TEST

/* The daemon supervises QEMU itself: nothing that forks it away or writes a pid file of its own. */
START_TEST(test_no_daemonize) {
        for (size_t i = 0; i < ELEMENTSOF(golden_cases); i++) {
                _cleanup_strv_free_ char **argv = build_ok(&golden_cases[i].spec, &golden_cases[i].rt);

                for (char **a = argv; *a; a++)
                        ck_assert_msg(!streq(*a, "-pidfile") && !streq(*a, "-daemonize") &&
                                              !streq(*a, "-enable-kvm") && !streq(*a, "-nographic"),
                                      "%s: %s", golden_cases[i].name, *a);
        }
}
END_TEST

START_TEST(test_network) {
        VmSpec s = minimal_spec();
        QemuRuntime rt = minimal_rt();

        s.shares.kubelet = KUBELET_SHARES_NONE;
        {
                _cleanup_strv_free_ char **argv = build_ok(&s, &rt);

                /* slirp's own layout: nothing to say. */
                assert_option(argv, "-netdev", "user,id=net0");
                assert_option(argv, "-device", "virtio-net-pci,netdev=net0,mac=" SPEC_DEFAULT_MAC_IMAGE);
        }

        /* The defaults written out are still the defaults. */
        s.network.guest_ip = "10.0.2.15";
        s.network.gateway = "10.0.2.2";
        s.network.dns = "10.0.2.3";
        s.network.prefix_len = 24;
        {
                _cleanup_strv_free_ char **argv = build_ok(&s, &rt);

                assert_option(argv, "-netdev", "user,id=net0");
        }

        /* One field off the defaults: slirp is told the whole layout. */
        s.network.guest_ip = "10.0.2.20";
        {
                _cleanup_strv_free_ char **argv = build_ok(&s, &rt);

                assert_option(argv, "-netdev", "user,id=net0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,"
                                               "dhcpstart=10.0.2.20");
        }
        s.network.guest_ip = "10.0.2.15";
        s.network.prefix_len = 16;
        {
                _cleanup_strv_free_ char **argv = build_ok(&s, &rt);

                assert_option(argv, "-netdev", "user,id=net0,net=10.0.0.0/16,host=10.0.2.2,dns=10.0.2.3,"
                                               "dhcpstart=10.0.2.15");
        }

        /* What slirp itself would refuse, in the spec's words. */
        s.network.prefix_len = 24;
        s.network.dns = "10.0.2.2";
        assert_build_fails(&s, &rt, -EINVAL, "network.dns: 10.0.2.2 is the gateway's address");
        s.network.dns = "10.0.2.15";
        assert_build_fails(&s, &rt, -EINVAL, "network.guest_ip: 10.0.2.15 is the DNS server's address");
        s.network.dns = "10.0.2.3";

        /* The bare-kernel line: start-vm.sh's words, the netmask from the prefix, the console per arch. */
        {
                const GoldenCase *arm = find_case("aarch64-bare-kernel"), *x86 = find_case("x86_64-bare-kernel");
                _cleanup_strv_free_ char **a = build_ok(&arm->spec, &arm->rt), **b = build_ok(&x86->spec, &x86->rt);

                assert_option(a, "-append", "ip=10.0.2.15::10.0.2.2:255.255.255.0:rimd:eth0:off console=ttyAMA0 "
                                            "ENABLE_SSH=true 9P_TRANSPORT=tcp loglevel=7 rimd.debug=1");
                assert_option(a, "-device", "virtio-net-pci,netdev=net0,mac=" SPEC_DEFAULT_MAC_BARE);
                ck_assert_ptr_null(find_option(a, "-virtfs", ""));
                assert_option(b, "-append", "ip=172.16.5.15::172.16.0.2:255.255.0.0:rimd:eth0:off console=ttyS0 "
                                            "ENABLE_SSH=true 9P_TRANSPORT=virtio");
                assert_option(b, "-netdev", "user,id=net0,net=172.16.0.0/16,host=172.16.0.2,dns=172.16.0.3,"
                                            "dhcpstart=172.16.5.15");
        }
}
END_TEST

START_TEST(test_runtime_needs) {
        const GoldenCase *cloud = find_case("x86_64-host-preset"), *bare = find_case("aarch64-bare-kernel");
        VmSpec s;
        QemuRuntime rt;

        s = cloud->spec, rt = cloud->rt;
        rt.disk_path = NULL;
        assert_build_fails(&s, &rt, -EINVAL, "runtime disk_path: not set (a cloud-image boot");
        rt = cloud->rt;
        rt.seed_path = NULL;
        assert_build_fails(&s, &rt, -EINVAL, "runtime seed_path: not set");
        rt = cloud->rt;
        rt.seed_path = "/var/lib/hydra/host/seed\n.iso";
        assert_build_fails(&s, &rt, -EINVAL, "runtime seed_path: contains a control character");
        rt = cloud->rt;
        rt.bare_kernel = true;
        assert_build_fails(&s, &rt, -EINVAL, "runtime bare_kernel: set, but the spec does not boot a bare kernel");

        s = bare->spec, rt = bare->rt;
        rt.bare_kernel = false;
        assert_build_fails(&s, &rt, -EINVAL, "runtime bare_kernel: not set");
        rt = bare->rt;
        rt.initrd = NULL;
        assert_build_fails(&s, &rt, -EINVAL, "runtime initrd: not set (a bare-kernel boot");
        rt = bare->rt;
        rt.disk_path = NULL;
        assert_build_fails(&s, &rt, -EINVAL, "runtime disk_path: not set (a bare-kernel boot");
        rt = bare->rt;
        s.cmdline = "quiet\ninit=/bin/sh";
        assert_build_fails(&s, &rt, -EINVAL, "cmdline: ");

        s = minimal_spec(), rt = minimal_rt();
        s.kernel = "/boot/vmlinuz";
        assert_build_fails(&s, &rt, -EINVAL, "runtime kernel: not set (the spec has a kernel)");
        s.kernel = NULL;
        rt.initrd = "/boot/initrd.img";
        assert_build_fails(&s, &rt, -EINVAL, "runtime initrd: set without a kernel");
        rt.initrd = NULL;

        s.firmware_code = "/usr/share/OVMF/OVMF_CODE_4M.fd";
        s.firmware_vars = "/usr/share/OVMF/OVMF_VARS_4M.fd";
        assert_build_fails(&s, &rt, -EINVAL, "runtime firmware_vars: not set");
        s.firmware_code = s.firmware_vars = NULL;
        rt.firmware_vars = "/var/lib/hydra/isolated/OVMF_VARS_4M.fd";
        assert_build_fails(&s, &rt, -EINVAL, "runtime firmware_vars: set without firmware code");
        rt.firmware_vars = NULL;

        s.devices.shmem = SHMEM_NVDIMM;
        assert_build_fails(&s, &rt, -EINVAL, "runtime shmem_path: not set (devices.shmem is nvdimm)");
        rt.shmem_path = "/dev/shm/shmem-hydravm";
        {
                _cleanup_strv_free_ char **argv = build_ok(&s, &rt);

                /* Defaults where a spec without vm_spec_apply_defaults() left sizes 0. */
                assert_option(argv, "-object", "memory-backend-file,id=hostmem,mem-path=/dev/shm/shmem-hydravm,"
                                               "size=1G,share=on");
                assert_option(argv, "-m", "256M,slots=2,maxmem=2304M");
        }
        s.devices.vsock = true;
        s.devices.vsock_cid = 3;
        s.devices.gpu = true;
        {
                _cleanup_strv_free_ char **argv = build_ok(&s, &rt);

                assert_option(argv, "-device", "vhost-vsock-pci,id=vhost-vsock-pci0,guest-cid=3");
                assert_option(argv, "-device", "virtio-gpu-gl-pci,hostmem=4G,blob=true,venus=true");
        }
}
END_TEST

/* --- QEMU itself accepts what the builder makes ---
 *
 * Each golden case again, with its files made for real in a scratch directory (every name with a comma, so that
 * QEMU reads the doubled commas back), forwards moved to free ports, and TCG instead of KVM. QEMU starts paused
 * (-S); QMP must answer, and query-block must list the drives by the ids the daemon relies on. Without the QEMU
 * binary the case passes with a note. Two devices need what a test host may lack: vhost-vsock needs
 * /dev/vhost-vsock, and virtio-gpu-gl with blob and venus needs QEMU 9.2 or later, udmabuf and a render node; a
 * case runs without them then, and says so. */

#define SCRATCH_MAX_PATHS 32

typedef struct Scratch {
        char dir[64];
        char *paths[SCRATCH_MAX_PATHS];
        size_t n_paths;
        PortForward forwards[16];
        Share shares[8];
} Scratch;

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        (void) remove(path);
        return 0;
}

static void scratch_done(Scratch *s) {
        if (s->dir[0])
                (void) nftw(s->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
        for (size_t i = 0; i < s->n_paths; i++)
                free(s->paths[i]);
}

static const char *scratch_path(Scratch *s, const char *name) {
        char *p = NULL;

        ck_assert_uint_lt(s->n_paths, SCRATCH_MAX_PATHS);
        ck_assert_int_ge(asprintf(&p, "%s/%s", s->dir, name), 0);
        s->paths[s->n_paths++] = p;
        return p;
}

static const char *scratch_file(Scratch *s, const char *name, off_t size, const void *head, size_t head_size) {
        const char *p = scratch_path(s, name);
        _cleanup_close_ int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

        ck_assert_msg(fd >= 0, "create %s: %m", p);
        if (head_size > 0)
                ck_assert_int_eq(write(fd, head, head_size), (ssize_t) head_size);
        ck_assert_int_eq(ftruncate(fd, size), 0);
        return p;
}

/* mkdir -p of name (relative to the scratch directory). */
static const char *scratch_dir(Scratch *s, const char *name) {
        const char *p = scratch_path(s, name);
        _cleanup_free_ char *partial = strdup(p);

        ck_assert_ptr_nonnull(partial);
        for (char *slash = partial + strlen(s->dir) + 1;; slash++) {
                slash = strchr(slash, '/');
                if (slash)
                        *slash = '\0';
                ck_assert_msg(mkdir(partial, 0755) == 0 || errno == EEXIST, "mkdir %s: %m", partial);
                if (!slash)
                        break;
                *slash = '/';
        }
        return p;
}

/* The binary's path on $PATH, or NULL: process.c's lookup, the one hydrad makes. */
static char *find_in_path(const char *name) {
        char *p = NULL;

        return process_find_binary(name, &p) >= 0 ? p : NULL;
}

static int run_quiet(char **argv) {
        posix_spawn_file_actions_t fa;
        int status;
        pid_t pid;

        ck_assert_int_eq(posix_spawn_file_actions_init(&fa), 0);
        ck_assert_int_eq(posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0), 0);
        ck_assert_int_eq(posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO), 0);
        if (posix_spawn(&pid, argv[0], &fa, NULL, argv, environ) != 0) {
                posix_spawn_file_actions_destroy(&fa);
                return -1;
        }
        posix_spawn_file_actions_destroy(&fa);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* A port nothing listens on now (the kernel's pick), for a forward's host side. */
static uint32_t free_port(ForwardProtocol protocol) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(a);
        _cleanup_close_ int fd = socket(AF_INET, (protocol == FORWARD_UDP ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC,
                                        0);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(bind(fd, (struct sockaddr *) &a, sizeof(a)), 0);
        ck_assert_int_eq(getsockname(fd, (struct sockaddr *) &a, &len), 0);
        return ntohs(a.sin_port);
}

/* Just enough of a bzImage for QEMU's x86 loader (boot protocol 2.15 header, loadable high). */
static void fake_bzimage(unsigned char buf[static 65536]) {
        memset(buf, 0, 65536);
        buf[0x1f1] = 4;                          /* setup_sects */
        memcpy(buf + 0x202, "HdrS", 4);          /* header magic */
        buf[0x206] = 0x0f, buf[0x207] = 0x02;    /* version 2.15 */
        buf[0x211] = 0x01;                       /* loadflags: LOADED_HIGH */
        buf[0x22c] = 0xff, buf[0x22d] = 0xff, buf[0x22e] = 0xff, buf[0x22f] = 0x37; /* initrd_addr_max */
        buf[0x238] = 0x00, buf[0x239] = 0x08;    /* cmdline_size 2048 */
}

/* Whether this QEMU and host can run the GPU as the builder asks for it (venus: QEMU >= 9.2). */
static bool gpu_available(const char *binary) {
        _cleanup_free_ char *cmd = NULL;
        char line[512];
        bool venus = false;
        FILE *p;

        if (access("/dev/udmabuf", R_OK | W_OK) < 0 || access("/dev/dri/renderD128", R_OK | W_OK) < 0)
                return false;
        ck_assert_int_ge(asprintf(&cmd, "'%s' -device virtio-gpu-gl-pci,help 2>&1", binary), 0);
        p = popen(cmd, "re");
        if (!p)
                return false;
        while (fgets(line, sizeof(line), p))
                venus = venus || strstr(line, "venus=");
        pclose(p);
        return venus;
}

/* The case's spec and runtime pointed at real files in s. Returns false (with a note) when QEMU is missing. */
static bool prepare_qemu_case(const GoldenCase *c, Scratch *s, VmSpec *spec, QemuRuntime *rt, char **ret_binary) {
        static unsigned char kernel[65536];
        _cleanup_free_ char *binary = find_in_path(qemu_binary_name(c->spec.arch));

        if (!binary) {
                fprintf(stderr, "%s: %s not found, QEMU check skipped\n", c->name, qemu_binary_name(c->spec.arch));
                return false;
        }
        *spec = c->spec;
        *rt = c->rt;
        rt->binary = binary;
        rt->accel = ACCEL_TCG;
        rt->qmp_fd = -1;
        rt->qmp_path = scratch_path(s, "qmp,sock");
        rt->console_fd = -1;
        rt->console_socket = scratch_path(s, "console,sock");
        /* A test host may be small: RAM is only reserved under -S, but overcommit may still refuse 8 GiB. */
        if (spec->memory_mib > 1024)
                spec->memory_mib = 1024;
        if (spec->cpu_model && strncmp(spec->cpu_model, "host", 4) == 0)
                spec->cpu_model = NULL; /* "host" is KVM's */

        if (rt->disk_path) {
                const char *p = scratch_path(s, "disk,0.img");
                char *qemu_img = find_in_path("qemu-img");
                char *argv[] = { qemu_img, "create", "-q", "-f", "qcow2", (char *) p, "64M", NULL };

                if (streq(rt->disk_format, "qcow2") && qemu_img && run_quiet(argv) == 0)
                        ;
                else {
                        rt->disk_format = "raw";
                        (void) scratch_file(s, "disk,0.img", 64 << 20, NULL, 0);
                }
                free(qemu_img);
                rt->disk_path = p;
                if (spec->disk)
                        spec->disk = (char *) p;
        }
        if (rt->seed_path)
                rt->seed_path = scratch_file(s, "seed,0.iso", 1 << 20, NULL, 0);
        if (rt->kernel) {
                /* aarch64 loads any file as a raw image; x86's loader wants a bzImage header. */
                fake_bzimage(kernel);
                rt->kernel = scratch_file(s, "kernel,0", sizeof(kernel), kernel, sizeof(kernel));
                if (spec->kernel)
                        spec->kernel = (char *) rt->kernel;
        }
        if (rt->initrd) {
                rt->initrd = scratch_file(s, "initrd,0", 4096, "initrd", 6);
                if (spec->initrd)
                        spec->initrd = (char *) rt->initrd;
        }
        if (spec->firmware_code) {
                /* virt maps each flash bank as 64 MiB and wants files of that size; pc takes any 4 KiB multiple. */
                off_t size = spec->arch == ARCH_AARCH64 ? 64 << 20 : 2 << 20;

                spec->firmware_code = (char *) scratch_file(s, "code,0.fd", size, NULL, 0);
                if (rt->firmware_vars) {
                        rt->firmware_vars = scratch_file(s, "vars,0.fd", spec->arch == ARCH_AARCH64 ? size : 128 << 10,
                                                         NULL, 0);
                        spec->firmware_vars = (char *) rt->firmware_vars;
                }
        }
        if (spec->shares.kubelet == KUBELET_SHARES_VIRTIO) {
                (void) scratch_dir(s, "k3s,var/var/lib/kubelet");
                (void) scratch_dir(s, "k3s,var/var/log/pods");
                spec->shares.kubelet_host_dir = (char *) scratch_path(s, "k3s,var");
        }
        ck_assert_uint_le(spec->shares.n_extra, ELEMENTSOF(s->shares));
        for (size_t i = 0; i < spec->shares.n_extra; i++) {
                char name[32];

                (void) snprintf(name, sizeof(name), "share,%zu", i);
                s->shares[i] = spec->shares.extra[i];
                s->shares[i].host_path = (char *) scratch_dir(s, name);
        }
        spec->shares.extra = s->shares;
        if (spec->devices.shmem != SHMEM_NONE) {
                /* QEMU creates it, sparse. */
                rt->shmem_path = scratch_path(s, "shm,em");
                spec->devices.shmem_path = (char *) rt->shmem_path;
        }
        ck_assert_uint_le(spec->n_forwards, ELEMENTSOF(s->forwards));
        for (size_t i = 0; i < spec->n_forwards; i++) {
                s->forwards[i] = spec->forwards[i];
                s->forwards[i].host_port = free_port(s->forwards[i].protocol);
        }
        spec->forwards = s->forwards;

        if (spec->devices.vsock && access("/dev/vhost-vsock", R_OK | W_OK) < 0) {
                fprintf(stderr, "%s: QEMU check without vsock (no usable /dev/vhost-vsock here)\n", c->name);
                spec->devices.vsock = false;
        }
        if (spec->devices.gpu && !gpu_available(binary)) {
                fprintf(stderr, "%s: QEMU check without gpu (virtio-gpu-gl-pci needs venus/hostmem, i.e. QEMU >= "
                                "9.2, plus /dev/udmabuf and a render node)\n", c->name);
                spec->devices.gpu = false;
        }
        *ret_binary = TAKE_PTR(binary);
        return true;
}

/* One line from the QMP socket (responses and events are one JSON object per line). */
static char *qmp_read_line(int fd) {
        char *buf = NULL;
        size_t size = 0;
        FILE *out = open_memstream(&buf, &size);
        char c;

        ck_assert_ptr_nonnull(out);
        for (;;) {
                ssize_t n = read(fd, &c, 1);

                if (n <= 0) {
                        fclose(out);
                        free(buf);
                        return NULL;
                }
                if (c == '\n')
                        break;
                fputc(c, out);
        }
        fclose(out);
        return buf;
}

/* Sends a command and returns its reply, skipping events; NULL if QEMU went away. */
static json_t *qmp_execute(int fd, const char *command) {
        ck_assert_int_eq(write(fd, command, strlen(command)), (ssize_t) strlen(command));
        for (;;) {
                _cleanup_free_ char *line = qmp_read_line(fd);
                json_t *reply;

                if (!line)
                        return NULL;
                reply = json_loads(line, 0, NULL);
                ck_assert_msg(reply, "QMP sent what is not JSON: %s", line);
                if (json_object_get(reply, "return") || json_object_get(reply, "error"))
                        return reply;
                json_decref(reply);
        }
}

/* Starts QEMU with its output in log_path. It dies with the test process (PR_SET_PDEATHSIG), so that a failed
 * assertion cannot leave a paused VM behind. */
static pid_t spawn_qemu(char **argv, const char *log_path) {
        pid_t parent = getpid(), pid = fork();

        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
                int out = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

                if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent || in < 0 || out < 0 ||
                    dup2(in, STDIN_FILENO) < 0 || dup2(out, STDOUT_FILENO) < 0 || dup2(out, STDERR_FILENO) < 0)
                        _exit(127);
                execv(argv[0], argv);
                _exit(127);
        }
        return pid;
}

/* QEMU went away (QMP closed, or never listened): fail with what it said. */
_Noreturn static void qemu_died(const char *name, pid_t pid, Scratch *s, const char *log_path, const char *args) {
        _cleanup_free_ char *log = NULL;
        int status = 0;

        for (unsigned tries = 0; waitpid(pid, &status, WNOHANG) != pid; tries++) {
                if (tries >= 100) {
                        (void) kill(pid, SIGKILL);
                        (void) waitpid(pid, &status, 0);
                        break;
                }
                (void) usleep(50 * 1000);
        }
        log = read_file(log_path);
        scratch_done(s);
        ck_abort_msg("%s: QEMU exited (wait status %d):\n%s\nargv:\n%s", name, status, strempty(log), args);
        abort();
}

static bool block_has(json_t *blocks, const char *device) {
        size_t i;
        json_t *b;

        json_array_foreach(blocks, i, b) {
                const char *d = json_string_value(json_object_get(b, "device"));

                if (d && streq(d, device))
                        return true;
        }
        return false;
}

static bool argv_has(char **argv, const char *arg) {
        for (char **a = argv; *a; a++)
                if (streq(*a, arg))
                        return true;
        return false;
}

START_TEST(test_qemu_accepts) {
        const GoldenCase *c = &golden_cases[_i];
        _cleanup_strv_free_ char **argv = NULL;
        _cleanup_free_ char *binary = NULL, *greeting = NULL, *log_path = NULL, *args = NULL, **full = NULL;
        _cleanup_close_ int fd = -EBADF;
        struct timeval tv = { .tv_sec = 20 };
        bool want_disk, want_seed, want_code, want_vars, has_disk, has_seed, has_code, has_vars;
        Scratch s = {};
        VmSpec spec;
        QemuRuntime rt;
        HydraError e = {};
        json_t *reply, *blocks;
        size_t n;
        pid_t pid;
        int status = 0;

        strcpy(s.dir, "/tmp/hydra-argv-XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(s.dir));
        if (!prepare_qemu_case(c, &s, &spec, &rt, &binary)) {
                scratch_done(&s);
                return;
        }
        rt.binary = binary;
        ck_assert_msg(qemu_argv_build(&spec, &rt, &argv, &e) == 0, "%s: %s", c->name, e.message);
        want_disk = rt.disk_path, want_seed = rt.seed_path;
        want_code = spec.firmware_code, want_vars = rt.firmware_vars;

        /* The builder's argv has -S: QEMU starts paused, nothing runs. */
        ck_assert_msg(argv_has(argv, "-S"), "%s: no -S in the argv", c->name);
        n = strv_length(argv);
        full = calloc(n + 1, sizeof(char *));
        ck_assert_ptr_nonnull(full);
        memcpy(full, argv, n * sizeof(char *));
        args = join_lines(argv);
        ck_assert_int_ge(asprintf(&log_path, "%s/qemu.log", s.dir), 0);
        pid = spawn_qemu(full, log_path);

        /* The QMP socket exists early; a bad device may still make QEMU exit after we connected. Either way the
         * reply that never comes tells, and QEMU's own words go into the failure. */
        for (unsigned tries = 0;; tries++) {
                struct sockaddr_un sa = { .sun_family = AF_UNIX };

                fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
                ck_assert_int_ge(fd, 0);
                strncpy(sa.sun_path, rt.qmp_path, sizeof(sa.sun_path) - 1);
                if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0)
                        break;
                fd = safe_close(fd);
                if (waitpid(pid, &status, WNOHANG) == pid || tries >= 400)
                        qemu_died(c->name, pid, &s, log_path, args);
                (void) usleep(50 * 1000);
        }
        ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);

        greeting = qmp_read_line(fd);
        reply = greeting ? qmp_execute(fd, "{\"execute\": \"qmp_capabilities\"}\n") : NULL;
        if (!reply)
                qemu_died(c->name, pid, &s, log_path, args);
        json_decref(reply);

        reply = qmp_execute(fd, "{\"execute\": \"query-block\"}\n");
        if (!reply)
                qemu_died(c->name, pid, &s, log_path, args);
        blocks = json_object_get(reply, "return");
        has_disk = block_has(blocks, "disk0"), has_seed = block_has(blocks, "seed0");
        has_code = block_has(blocks, "pflash0"), has_vars = block_has(blocks, "pflash1");
        json_decref(reply);

        reply = qmp_execute(fd, "{\"execute\": \"quit\"}\n");
        json_decref(reply);
        for (unsigned tries = 0; waitpid(pid, &status, WNOHANG) != pid; tries++) {
                if (tries >= 200) {
                        (void) kill(pid, SIGKILL);
                        (void) waitpid(pid, &status, 0);
                        break;
                }
                (void) usleep(50 * 1000);
        }
        scratch_done(&s);

        /* The drive ids are the daemon's interface to its disks. */
        ck_assert_msg(has_disk == want_disk, "%s: disk0 %s in query-block", c->name, has_disk ? "is" : "is not");
        ck_assert_msg(has_seed == want_seed, "%s: seed0 %s in query-block", c->name, has_seed ? "is" : "is not");
        ck_assert_msg(has_code == want_code, "%s: pflash0 %s in query-block", c->name, has_code ? "is" : "is not");
        ck_assert_msg(has_vars == want_vars, "%s: pflash1 %s in query-block", c->name, has_vars ? "is" : "is not");
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
        tcase_add_test(tc, test_root_features);
        tcase_add_test(tc, test_runtime_needs);
        suite_add_tcase(s, tc);

        tc = tcase_create("options");
        tcase_add_test(tc, test_escape_comma);
        tcase_add_test(tc, test_escaping_in_argv);
        tcase_add_test(tc, test_defaults);
        tcase_add_test(tc, test_machine);
        tcase_add_test(tc, test_network);
        tcase_add_test(tc, test_no_daemonize);
        suite_add_tcase(s, tc);

        tc = tcase_create("qemu");
        tcase_set_timeout(tc, 60);
        tcase_add_loop_test(tc, test_qemu_accepts, 0, (int) ELEMENTSOF(golden_cases));
        suite_add_tcase(s, tc);

        return s;
}

/* Exit 77 (CTest's SKIP_RETURN_CODE) when a QEMU binary is missing, so that a run without it says "skipped" rather
 * than "passed": the goldens still ran, the real-QEMU checks of that arch did not. Devices this host cannot give
 * (vsock without /dev/vhost-vsock, venus on QEMU < 9.2) are left out of the QEMU check and said so, not counted:
 * no install step can add them here. */
int main(void) {
        SRunner *sr = srunner_create(qemu_argv_suite());
        bool skipped = false;
        int failed;

        for (Arch arch = 0; arch < _ARCH_MAX; arch++) {
                _cleanup_free_ char *binary = find_in_path(qemu_binary_name(arch));
                if (!binary) {
                        fprintf(stderr, "test_qemu_argv: %s not found: its QEMU checks are skipped\n",
                                qemu_binary_name(arch));
                        skipped = true;
                }
        }
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        if (failed > 0)
                return EXIT_FAILURE;
        return skipped ? 77 : EXIT_SUCCESS;
}
