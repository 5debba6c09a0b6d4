/* SPDX-License-Identifier: MIT */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spec.h"

/* Replaces an owned string field. */
static void set(char **field, const char *value) {
        free(*field);
        *field = value ? strdup(value) : NULL;
        if (value)
                ck_assert_ptr_nonnull(*field);
}

static void add_forward(VmSpec *s, const char *addr, uint32_t host_port, uint32_t guest_port, ForwardProtocol p) {
        PortForward *f = reallocarray(s->forwards, s->n_forwards + 1, sizeof(PortForward));

        ck_assert_ptr_nonnull(f);
        s->forwards = f;
        f = &s->forwards[s->n_forwards++];
        *f = (PortForward) { .host_port = host_port, .guest_port = guest_port, .protocol = p };
        set(&f->host_addr, addr);
}

/* A spec that uses every field and passes validation. */
static void make_valid(VmSpec *s) {
        *s = (VmSpec) {
                .cpus = 4,
                .memory_mib = 1024,
                .accel = ACCEL_KVM,
                .arch = ARCH_X86_64,
        };
        set(&s->machine, "q35");
        set(&s->cpu_model, "host,+avx2,-svm,hv-relaxed=on");
        set(&s->kernel, "/var/lib/hydra/isolated/vmlinuz");
        set(&s->initrd, "/var/lib/hydra/isolated/initrd.img");
        set(&s->cmdline, "console=ttyS0 root=/dev/vda rw quiet");
        set(&s->disk, "/var/lib/hydra/isolated/disk,1.qcow2");
        add_forward(s, NULL, 2222, 22, FORWARD_TCP);
        add_forward(s, "0.0.0.0", 5353, 53, FORWARD_UDP);
        add_forward(s, "192.168.1.10", 35000, 35000, FORWARD_TCP);
        /* What defaults make of a local-files VM: no kubelet shares. */
        s->shares.kubelet = KUBELET_SHARES_NONE;
}

/* Validation fails with -EINVAL, and the message names the field and the value (as printed: control characters
 * escaped), and carries no raw newline. */
#define assert_rejected(spec, field, value)                                                                     \
        do {                                                                                                    \
                HydraError _e = {};                                                                             \
                int _r = vm_spec_validate((spec), &_e);                                                         \
                ck_assert_int_eq(_r, -EINVAL);                                                                  \
                ck_assert_int_eq(_e.code, -EINVAL);                                                             \
                ck_assert_msg(strncmp(_e.message, field ": ", strlen(field ": ")) == 0,                        \
                              "message does not start with the field '%s': %s", field, _e.message);            \
                ck_assert_msg(strstr(_e.message, value), "message does not name the value '%s': %s", value,   \
                              _e.message);                                                                      \
                ck_assert_msg(!strpbrk(_e.message, "\n\r\t"), "raw control character in message: %s",         \
                              _e.message);                                                                      \
                /* NULL err is allowed: same verdict. */                                                        \
                ck_assert_int_eq(vm_spec_validate((spec), NULL), -EINVAL);                                      \
        } while (0)

static const char *validate_message(const VmSpec *s) {
        static HydraError e;

        hydra_error_clear(&e);
        ck_assert_int_eq(vm_spec_validate(s, &e), -EINVAL);
        return e.message;
}

/* --- string tables --- */

START_TEST(test_string_tables) {
        ck_assert_str_eq(role_to_string(ROLE_HOST), "host");
        ck_assert_str_eq(role_to_string(ROLE_ISOLATED), "isolated");
        ck_assert_int_eq(role_from_string("host"), ROLE_HOST);
        ck_assert_int_eq(role_from_string("isolated"), ROLE_ISOLATED);
        ck_assert_int_eq(role_from_string("guest"), -EINVAL);
        ck_assert_int_eq(role_from_string(NULL), -EINVAL);
        ck_assert_ptr_null(role_to_string(_ROLE_MAX));

        ck_assert_str_eq(accel_to_string(ACCEL_AUTO), "auto");
        ck_assert_str_eq(accel_to_string(ACCEL_KVM), "kvm");
        ck_assert_str_eq(accel_to_string(ACCEL_TCG), "tcg");
        ck_assert_int_eq(accel_from_string("tcg"), ACCEL_TCG);
        ck_assert_int_eq(accel_from_string("KVM"), -EINVAL);
        ck_assert_ptr_null(accel_to_string(_ACCEL_INVALID));

        ck_assert_str_eq(arch_to_string(ARCH_X86_64), "x86_64");
        ck_assert_str_eq(arch_to_string(ARCH_AARCH64), "aarch64");
        ck_assert_int_eq(arch_from_string("aarch64"), ARCH_AARCH64);
        ck_assert_int_eq(arch_from_string("arm64"), -EINVAL);

        ck_assert_str_eq(forward_protocol_to_string(FORWARD_TCP), "tcp");
        ck_assert_str_eq(forward_protocol_to_string(FORWARD_UDP), "udp");
        ck_assert_int_eq(forward_protocol_from_string("udp"), FORWARD_UDP);
        ck_assert_int_eq(forward_protocol_from_string("sctp"), -EINVAL);
        ck_assert_ptr_null(forward_protocol_to_string(_FORWARD_PROTOCOL_MAX));

        for (int i = 0; i < _ROLE_MAX; i++)
                ck_assert_int_eq(role_from_string(role_to_string((Role) i)), i);
        for (int i = 0; i < _ACCEL_MAX; i++)
                ck_assert_int_eq(accel_from_string(accel_to_string((Accel) i)), i);
        for (int i = 0; i < _ARCH_MAX; i++)
                ck_assert_int_eq(arch_from_string(arch_to_string((Arch) i)), i);
        for (int i = 0; i < _FORWARD_PROTOCOL_MAX; i++)
                ck_assert_int_eq(forward_protocol_from_string(forward_protocol_to_string((ForwardProtocol) i)), i);
}
END_TEST

/* --- defaults --- */

START_TEST(test_defaults) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        set(&s.machine, "");
        set(&s.cmdline, "");
        add_forward(&s, NULL, 2222, 22, FORWARD_TCP);
        add_forward(&s, "", 8080, 80, FORWARD_TCP);
        add_forward(&s, "0.0.0.0", 5353, 53, FORWARD_UDP);

        /* Without defaults the zero cpus are refused. */
        ck_assert_int_eq(vm_spec_validate(&s, NULL), -EINVAL);

        ck_assert_int_eq(vm_spec_apply_defaults(&s), 0);
        ck_assert_uint_eq(s.cpus, SPEC_DEFAULT_CPUS);
        ck_assert_uint_eq(s.memory_mib, SPEC_DEFAULT_MEMORY_MIB);
        ck_assert_int_eq(s.accel, ACCEL_AUTO);
        ck_assert_int_eq(s.arch, ARCH_X86_64);
        ck_assert_ptr_null(s.machine); /* "" is "not set" */
        ck_assert_ptr_null(s.cmdline);
        ck_assert_ptr_null(s.cpu_model);
        ck_assert_ptr_null(s.kernel);
        ck_assert_str_eq(s.forwards[0].host_addr, "127.0.0.1");
        ck_assert_str_eq(s.forwards[1].host_addr, "127.0.0.1");
        ck_assert_str_eq(s.forwards[2].host_addr, "0.0.0.0");

        ck_assert_int_eq(vm_spec_validate(&s, NULL), 0);

        /* Idempotent. */
        _cleanup_(vm_spec_done) VmSpec again = {};
        ck_assert_int_eq(vm_spec_copy(&again, &s), 0);
        ck_assert_int_eq(vm_spec_apply_defaults(&again), 0);
        ck_assert(vm_spec_equal(&again, &s));
}
END_TEST

START_TEST(test_defaults_keep_values) {
        _cleanup_(vm_spec_done) VmSpec s = {}, orig = {};

        make_valid(&s);
        ck_assert_int_eq(vm_spec_copy(&orig, &s), 0);
        ck_assert_int_eq(vm_spec_apply_defaults(&s), 0);
        ck_assert_uint_eq(s.cpus, 4);
        ck_assert_uint_eq(s.memory_mib, 1024);
        ck_assert_str_eq(s.machine, "q35");
        ck_assert_str_eq(s.forwards[1].host_addr, "0.0.0.0");
        ck_assert(vm_spec_equal(&s, &orig));
}
END_TEST

/* --- accepted specs --- */

START_TEST(test_valid) {
        _cleanup_(vm_spec_done) VmSpec s = {};
        HydraError e = {};

        make_valid(&s);
        ck_assert_int_eq(vm_spec_validate(&s, &e), 0);
        ck_assert_int_eq(e.code, 0);
        ck_assert_int_eq(vm_spec_apply_defaults(&s), 0);
        ck_assert_int_eq(vm_spec_validate(&s, &e), 0);
}
END_TEST

START_TEST(test_valid_minimal) {
        VmSpec s = { .cpus = 1, .memory_mib = 64 };

        ck_assert_int_eq(vm_spec_validate(&s, NULL), 0);
        s.cpus = 255;
        s.memory_mib = SPEC_MAX_MEMORY_MIB;
        s.accel = ACCEL_TCG;
        s.arch = ARCH_AARCH64;
        ck_assert_int_eq(vm_spec_validate(&s, NULL), 0);
}
END_TEST

START_TEST(test_valid_edges) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        /* Commas in paths are fine (the argv builder doubles them); so are "a..b" names and "." components. */
        set(&s.kernel, "/boot/vmlinuz-6.1,custom..x");
        set(&s.initrd, "/boot/./initrd.img");
        set(&s.disk, "/srv/images//disk,a,,b.raw");
        /* Commas and UTF-8 in the kernel command line are fine. */
        set(&s.cmdline, "console=ttyS0,115200 hydra.note=caf\xc3\xa9");
        set(&s.machine, "pc-q35-7.2");
        set(&s.cpu_model, "Skylake-Client-v4,+vmx,-hle,l3-cache=on,x-force_features=on");
        /* Same host port under another protocol or another address; same guest port twice. */
        add_forward(&s, "127.0.0.1", 5353, 53, FORWARD_TCP);
        add_forward(&s, "127.0.0.2", 2222, 22, FORWARD_TCP);
        add_forward(&s, NULL, 1, 65535, FORWARD_TCP);
        add_forward(&s, NULL, 65535, 1, FORWARD_UDP);
        ck_assert_int_eq(vm_spec_validate(&s, NULL), 0);

        set(&s.cmdline, NULL);
        set(&s.cpu_model, "cortex-a76");
        set(&s.machine, "virt");
        ck_assert_int_eq(vm_spec_validate(&s, NULL), 0);

        /* Longest allowed cmdline. */
        char *big = malloc(4097);
        ck_assert_ptr_nonnull(big);
        memset(big, 'x', 4096);
        big[4096] = '\0';
        free(s.cmdline);
        s.cmdline = big;
        ck_assert_int_eq(vm_spec_validate(&s, NULL), 0);
}
END_TEST

/* --- rejected values, one test each --- */

START_TEST(test_reject_cpus_0) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        s.cpus = 0;
        assert_rejected(&s, "cpus", "0 is out of range (allowed: 1-255)");
}
END_TEST

/* supervision.ready_timeout: 0 (no limit) to a day, and only with a probe (a guest with none is never ready). */
START_TEST(test_ready_timeout) {
        _cleanup_(vm_spec_done) VmSpec s = {};
        HydraError e = {};

        make_valid(&s);
        s.supervision.ready_timeout_sec = SPEC_MAX_READY_TIMEOUT_SEC;
        ck_assert_msg(vm_spec_validate(&s, &e) == 0, "%s", e.message);
        s.supervision.ready_timeout_sec = SPEC_MAX_READY_TIMEOUT_SEC + 1;
        assert_rejected(&s, "supervision.ready_timeout", "86401 s is out of range (allowed: 0-86400 s; 0 is no limit)");
        s.supervision.ready_timeout_sec = 300;
        s.supervision.probe = PROBE_NONE;
        assert_rejected(&s, "supervision.ready_timeout", "given for probe none");
        s.supervision.ready_timeout_sec = 0;
        ck_assert_msg(vm_spec_validate(&s, &e) == 0, "%s", e.message);

        /* A field of the spec like the others: copied and compared. */
        {
                _cleanup_(vm_spec_done) VmSpec copy = {};

                s.supervision.probe = PROBE_CONSOLE;
                s.supervision.ready_timeout_sec = 300;
                ck_assert_int_eq(vm_spec_copy(&copy, &s), 0);
                ck_assert_uint_eq(copy.supervision.ready_timeout_sec, 300);
                ck_assert(vm_spec_equal(&copy, &s));
                copy.supervision.ready_timeout_sec = 301;
                ck_assert(!vm_spec_equal(&copy, &s));
        }
}
END_TEST

/* resources: systemd's CPUQuota= and MemoryMax= for the QEMU scope (issue 13). */
START_TEST(test_resources) {
        _cleanup_(vm_spec_done) VmSpec s = {};
        HydraError e = {};

        make_valid(&s);                /* 1024 MiB of guest memory */
        s.resources.cpu_quota_percent = 150;
        s.resources.memory_max = (1024 + 64) * 1024 * 1024;
        ck_assert_msg(vm_spec_validate(&s, &e) == 0, "%s", e.message);
        s.resources.cpu_quota_percent = 25500;
        ck_assert_msg(vm_spec_validate(&s, &e) == 0, "%s", e.message);
        s.resources.cpu_quota_percent = 25501;
        assert_rejected(&s, "resources.cpu_quota", "25501% is out of range (allowed: 1%-25500%");
        s.resources.cpu_quota_percent = 0;

        /* Below the guest's memory plus QEMU's own: the OOM killer would take QEMU as the guest boots. */
        s.resources.memory_max = (1024 + 64) * 1024 * 1024 - 1;
        assert_rejected(&s, "resources.memory_max", "1140850687 bytes is less than the guest's memory (1024 MiB) "
                        "plus 64 MiB for QEMU itself (allowed: at least 1140850688 bytes");
        s.memory_mib = 2048;
        s.resources.memory_max = UINT64_C(2048) * 1024 * 1024;
        assert_rejected(&s, "resources.memory_max", "guest's memory (2048 MiB)");
        s.memory_mib = 1024;
        s.resources.memory_max = UINT64_MAX;
        assert_rejected(&s, "resources.memory_max", "18446744073709551615 bytes is out of range");
        s.resources.memory_max = 0;
        ck_assert_msg(vm_spec_validate(&s, &e) == 0, "%s", e.message);

        /* Fields of the spec like the others: copied and compared. */
        {
                _cleanup_(vm_spec_done) VmSpec copy = {};

                s.resources.cpu_quota_percent = 150;
                s.resources.memory_max = UINT64_C(3) << 30;
                ck_assert_int_eq(vm_spec_copy(&copy, &s), 0);
                ck_assert_uint_eq(copy.resources.cpu_quota_percent, 150);
                ck_assert_uint_eq(copy.resources.memory_max, UINT64_C(3) << 30);
                ck_assert(vm_spec_equal(&copy, &s));
                copy.resources.memory_max++;
                ck_assert(!vm_spec_equal(&copy, &s));
                copy.resources.memory_max--;
                copy.resources.cpu_quota_percent = 151;
                ck_assert(!vm_spec_equal(&copy, &s));
        }
}
END_TEST

START_TEST(test_reject_cpus_256) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        s.cpus = 256;
        assert_rejected(&s, "cpus", "256 is out of range (allowed: 1-255)");
}
END_TEST

START_TEST(test_reject_memory_32) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        s.memory_mib = 32;
        assert_rejected(&s, "memory_mib", "32 is below the minimum (allowed: at least 64 MiB)");
}
END_TEST

START_TEST(test_reject_memory_huge) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        s.memory_mib = SPEC_MAX_MEMORY_MIB + 1;
        assert_rejected(&s, "memory_mib", "16777217 is above the maximum");
}
END_TEST

START_TEST(test_reject_accel) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        s.accel = _ACCEL_MAX;
        assert_rejected(&s, "accel", "3 is not a known accelerator (allowed: auto, kvm, tcg)");
}
END_TEST

START_TEST(test_reject_arch) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        s.arch = (Arch) 7;
        assert_rejected(&s, "arch", "7 is not a known architecture (allowed: x86_64, aarch64)");
}
END_TEST

START_TEST(test_reject_host_port_0) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        s.forwards[1].host_port = 0;
        assert_rejected(&s, "forwards[1].host_port", "0 is out of range (allowed: 1-65535)");
}
END_TEST

START_TEST(test_reject_host_port_70000) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        s.forwards[0].host_port = 70000;
        assert_rejected(&s, "forwards[0].host_port", "70000 is out of range (allowed: 1-65535)");
}
END_TEST

START_TEST(test_reject_guest_port_0) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        s.forwards[2].guest_port = 0;
        assert_rejected(&s, "forwards[2].guest_port", "0 is out of range (allowed: 1-65535)");
}
END_TEST

START_TEST(test_reject_guest_port_70000) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        s.forwards[0].guest_port = 70000;
        assert_rejected(&s, "forwards[0].guest_port", "70000 is out of range (allowed: 1-65535)");
}
END_TEST

START_TEST(test_reject_host_port_twice) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        /* forwards[0] is tcp 127.0.0.1:2222 by default; the same written out explicitly collides. */
        add_forward(&s, "127.0.0.1", 2222, 2200, FORWARD_TCP);
        assert_rejected(&s, "forwards[3].host_port", "2222 is used twice (also forwards[0]");
}
END_TEST

START_TEST(test_reject_host_port_twice_wildcard) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        /* forwards[1] is udp 0.0.0.0:5353: any address collides with the wildcard. */
        add_forward(&s, "127.0.0.1", 5353, 5353, FORWARD_UDP);
        assert_rejected(&s, "forwards[3].host_port", "5353 is used twice (also forwards[1]");
}
END_TEST

START_TEST(test_reject_protocol) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        s.forwards[0].protocol = (ForwardProtocol) 9;
        assert_rejected(&s, "forwards[0].protocol", "9 is not a known protocol (allowed: tcp, udp)");
}
END_TEST

static const char *const bad_host_addrs[] = {
        "localhost", "::1", "1.2.3", "256.1.1.1", "127.0.0.1:80", " 127.0.0.1", "0x7f.0.0.1", "127.0.0.1,x",
};

START_TEST(test_reject_host_addr) {
        _cleanup_(vm_spec_done) VmSpec s = {};
        char want[128];

        make_valid(&s);
        set(&s.forwards[2].host_addr, bad_host_addrs[_i]);
        snprintf(want, sizeof(want), "'%s' is not an IPv4 address", bad_host_addrs[_i]);
        assert_rejected(&s, "forwards[2].host_addr", want);
}
END_TEST

START_TEST(test_reject_host_addr_newline) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        set(&s.forwards[1].host_addr, "127.0.0.1\n");
        assert_rejected(&s, "forwards[1].host_addr", "'127.0.0.1\\n' contains a newline");
}
END_TEST

START_TEST(test_reject_kernel_relative) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        set(&s.kernel, "vmlinuz");
        assert_rejected(&s, "kernel", "'vmlinuz' is not an absolute path");
}
END_TEST

START_TEST(test_reject_initrd_relative) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        set(&s.initrd, "./initrd.img");
        assert_rejected(&s, "initrd", "'./initrd.img' is not an absolute path");
}
END_TEST

START_TEST(test_reject_disk_relative) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        set(&s.disk, "disk.qcow2");
        assert_rejected(&s, "disk", "'disk.qcow2' is not an absolute path");
}
END_TEST

START_TEST(test_reject_initrd_without_kernel) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        set(&s.kernel, NULL);
        set(&s.cmdline, NULL);
        assert_rejected(&s, "initrd", "'/var/lib/hydra/isolated/initrd.img' given without kernel");
}
END_TEST

START_TEST(test_reject_cmdline_without_kernel) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        set(&s.kernel, "");
        set(&s.initrd, NULL);
        assert_rejected(&s, "cmdline", "'console=ttyS0 root=/dev/vda rw quiet' given without kernel");
}
END_TEST

START_TEST(test_reject_cmdline_newline) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        set(&s.cmdline, "console=ttyS0\ninit=/bin/sh");
        assert_rejected(&s, "cmdline",
                        "'console=ttyS0\\ninit=/bin/sh' contains a newline (control characters are not allowed)");
}
END_TEST

START_TEST(test_reject_cmdline_too_long) {
        _cleanup_(vm_spec_done) VmSpec s = {};
        char *big = malloc(4098);

        ck_assert_ptr_nonnull(big);
        memset(big, 'y', 4097);
        big[4097] = '\0';
        make_valid(&s);
        free(s.cmdline);
        s.cmdline = big;
        /* The value is quoted shortened. */
        assert_rejected(&s, "cmdline", "'yyyyyyyy");
        ck_assert_ptr_nonnull(strstr(validate_message(&s), "...' is 4097 bytes long (allowed: at most 4096 bytes)"));
}
END_TEST

START_TEST(test_reject_path_too_long) {
        _cleanup_(vm_spec_done) VmSpec s = {};
        char *big = malloc(4097);

        ck_assert_ptr_nonnull(big);
        memset(big, 'd', 4096);
        big[0] = '/';
        big[4096] = '\0';
        make_valid(&s);
        free(s.disk);
        s.disk = big;
        assert_rejected(&s, "disk", "'/ddddddd");
        ck_assert_ptr_nonnull(strstr(validate_message(&s), "is 4096 bytes long (allowed: at most 4095 bytes)"));
}
END_TEST

START_TEST(test_reject_tab_in_machine) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        set(&s.machine, "q35\t");
        assert_rejected(&s, "machine", "'q35\\t' contains a tab");
}
END_TEST

START_TEST(test_reject_comma_in_machine) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        set(&s.machine, "q35,accel=kvm");
        assert_rejected(&s, "machine",
                        "'q35,accel=kvm' contains ',' which QEMU would read as an option separator; set accel with "
                        "the accel field");
}
END_TEST

START_TEST(test_reject_machine_charset) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        set(&s.machine, "q35 -device foo");
        assert_rejected(&s, "machine", "'q35 -device foo' contains a space");
}
END_TEST

START_TEST(test_reject_machine_non_ascii) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        /* Non-ASCII bytes are quoted escaped: the message may travel in a proto3 string (UTF-8 only). */
        set(&s.machine, "q35\xc3");
        assert_rejected(&s, "machine", "'q35\\xc3' contains byte 0xc3");
}
END_TEST

static const char *const bad_cpu_models[] = {
        "host,",            /* empty trailing element */
        "host,,+avx",       /* empty element: would also be QEMU's comma escape */
        "qemu64,avx",       /* bare name: neither +/- nor =VALUE */
        "qemu64,+",         /* sign without a name */
        "qemu64,-",
        "qemu64,a=b=c",     /* "=" in the value */
        "qemu64,x=",        /* empty value */
        "qemu64,=on",       /* empty name */
        "qemu64,+a b",      /* space in a name */
        "qemu64,+a;b",
        "model=qemu64",     /* "=" in the model */
        ",+avx",            /* no model */
        "+avx",
        "qemu64 ,+avx",
        "host,+avx,fsgsbase=on,-,x",
};

START_TEST(test_reject_cpu_model) {
        _cleanup_(vm_spec_done) VmSpec s = {};
        char want[128];

        make_valid(&s);
        set(&s.cpu_model, bad_cpu_models[_i]);
        snprintf(want, sizeof(want), "'%s'", bad_cpu_models[_i]);
        assert_rejected(&s, "cpu_model", want);
        ck_assert_ptr_nonnull(strstr(validate_message(&s), "allowed: MODEL[,+FEATURE|,-FEATURE|,FEATURE=VALUE]"));
}
END_TEST

START_TEST(test_reject_cpu_model_names_feature) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        set(&s.cpu_model, "qemu64,+avx,sse4");
        assert_rejected(&s, "cpu_model", "'qemu64,+avx,sse4' has a malformed feature 'sse4'");
}
END_TEST

START_TEST(test_reject_control_in_disk) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        set(&s.disk, "/var/lib/hydra/\001disk.qcow2");
        assert_rejected(&s, "disk", "'/var/lib/hydra/\\x01disk.qcow2' contains control character 0x01");
}
END_TEST

START_TEST(test_reject_del_in_kernel) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        set(&s.kernel, "/boot/vmlinuz\177");
        assert_rejected(&s, "kernel", "'/boot/vmlinuz\\x7f' contains control character 0x7f");
}
END_TEST

START_TEST(test_reject_cr_in_cpu_model) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        set(&s.cpu_model, "host\r");
        assert_rejected(&s, "cpu_model", "'host\\r' contains a carriage return");
}
END_TEST

static const char *const dotdot_paths[] = {
        "/var/lib/hydra/../../etc/shadow",
        "/..",
        "/boot/..",
        "/boot/../vmlinuz",
        "/boot//..//vmlinuz",
};

START_TEST(test_reject_dotdot) {
        _cleanup_(vm_spec_done) VmSpec s = {};
        char want[128];

        make_valid(&s);
        set(&s.disk, dotdot_paths[_i]);
        snprintf(want, sizeof(want), "'%s' contains a '..' component", dotdot_paths[_i]);
        assert_rejected(&s, "disk", want);
}
END_TEST

START_TEST(test_reject_dotdot_kernel) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        set(&s.kernel, "/srv/../boot/vmlinuz");
        assert_rejected(&s, "kernel", "'/srv/../boot/vmlinuz' contains a '..' component");
}
END_TEST

START_TEST(test_reject_quotes_escaped) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        make_valid(&s);
        set(&s.kernel, "it's");
        assert_rejected(&s, "kernel", "'it\\'s' is not an absolute path");
}
END_TEST

/* --- the guest password: hashed by hydrad when a client sends it in the clear --- */

START_TEST(test_hash_password_limit) {
        _cleanup_(vm_spec_done) VmSpec a = {};
        HydraError err = {};
        char pw[600];

        /* libcrypt hashes at most 511 bytes: longer is the client's error, said up front, not a hashing failure. */
        memset(pw, 'p', 512);
        pw[512] = '\0';
        set(&a.guest.password, pw);
        ck_assert_int_eq(vm_spec_hash_password(&a, &err), -EINVAL);
        ck_assert_str_eq(err.message, "guest.password: the password is longer than 511 bytes (value not shown: it is "
                         "a secret)");
        ck_assert_ptr_null(a.guest.password_hash);

        pw[511] = '\0';
        set(&a.guest.password, pw);
        ck_assert_int_eq(vm_spec_hash_password(&a, &err), 0);
        ck_assert_ptr_null(a.guest.password);
        ck_assert_ptr_nonnull(a.guest.password_hash);
        ck_assert(strncmp(a.guest.password_hash, "$y$", 3) == 0);
        ck_assert(vm_spec_password_matches(pw, a.guest.password_hash));
}
END_TEST

/* --- copy / equal / done --- */

START_TEST(test_copy_equal) {
        _cleanup_(vm_spec_done) VmSpec a = {}, b = {};

        make_valid(&a);
        ck_assert_int_eq(vm_spec_copy(&b, &a), 0);
        ck_assert(vm_spec_equal(&a, &b));
        ck_assert(vm_spec_equal(&a, &a));

        /* Deep: nothing is shared. */
        ck_assert_ptr_ne(a.machine, b.machine);
        ck_assert_ptr_ne(a.forwards, b.forwards);
        ck_assert_ptr_ne(a.forwards[1].host_addr, b.forwards[1].host_addr);
        ck_assert_str_eq(b.forwards[1].host_addr, "0.0.0.0");
        ck_assert_ptr_null(b.forwards[0].host_addr);
        ck_assert_uint_eq(b.n_forwards, 3);

        b.cpus++;
        ck_assert(!vm_spec_equal(&a, &b));
        b.cpus--;
        set(&b.cmdline, "console=ttyS0");
        ck_assert(!vm_spec_equal(&a, &b));
        set(&b.cmdline, a.cmdline);
        ck_assert(vm_spec_equal(&a, &b));
        b.forwards[2].protocol = FORWARD_UDP;
        ck_assert(!vm_spec_equal(&a, &b));
        b.forwards[2].protocol = FORWARD_TCP;
        b.forwards[2].guest_port++;
        ck_assert(!vm_spec_equal(&a, &b));
        b.forwards[2].guest_port--;
        set(&b.forwards[2].host_addr, "192.168.1.11");
        ck_assert(!vm_spec_equal(&a, &b));
        set(&b.forwards[2].host_addr, "192.168.1.10");
        ck_assert(vm_spec_equal(&a, &b));
        b.n_forwards--;
        ck_assert(!vm_spec_equal(&a, &b));
        b.n_forwards++;
        b.accel = ACCEL_TCG;
        ck_assert(!vm_spec_equal(&a, &b));
        b.accel = a.accel;
        ck_assert(vm_spec_equal(&a, &b));

        /* The seed-affecting booleans take part in the comparison and the copy. */
        b.software.package_update = !a.software.package_update;
        ck_assert(!vm_spec_equal(&a, &b));
        b.software.package_update = a.software.package_update;
        b.software.package_upgrade = !a.software.package_upgrade;
        ck_assert(!vm_spec_equal(&a, &b));
        b.software.package_upgrade = a.software.package_upgrade;
        ck_assert(vm_spec_equal(&a, &b));
        {
                _cleanup_(vm_spec_done) VmSpec c = {};

                b.software.package_update = true;
                b.software.package_upgrade = true;
                ck_assert_int_eq(vm_spec_copy(&c, &b), 0);
                ck_assert(c.software.package_update && c.software.package_upgrade);
        }
}
END_TEST

/* One choice of the NIC's MAC for QEMU and the cloud-init seed: the spec's, else start-vm.sh's per boot mode. */
START_TEST(test_mac) {
        VmSpec s = { .arch = ARCH_X86_64 };

        ck_assert_str_eq(vm_spec_mac(&s), "52:54:00:08:06:8b"); /* local boot: the image's */
        s.image.url = (char *) "https://example.org/debian.qcow2";
        ck_assert_str_eq(vm_spec_mac(&s), "52:54:00:08:06:8b");
        s.image.url = NULL;
        s.bare.artifact.url = (char *) "https://example.org/rimd.tar.gz";
        ck_assert_str_eq(vm_spec_mac(&s), "52:54:00:94:33:ca");
        s.network.mac = (char *) "";
        ck_assert_str_eq(vm_spec_mac(&s), "52:54:00:94:33:ca");
        s.network.mac = (char *) "52:54:00:AB:CD:EF";
        ck_assert_str_eq(vm_spec_mac(&s), "52:54:00:AB:CD:EF");
}
END_TEST

START_TEST(test_equal_unset_forms) {
        _cleanup_(vm_spec_done) VmSpec a = {}, b = {};

        make_valid(&a);
        ck_assert_int_eq(vm_spec_copy(&b, &a), 0);

        /* NULL and "" are both "not set"; an empty host address is the default one. */
        set(&a.machine, NULL);
        set(&b.machine, "");
        set(&b.forwards[0].host_addr, "127.0.0.1");
        ck_assert(vm_spec_equal(&a, &b));
        set(&a.forwards[0].host_addr, "");
        ck_assert(vm_spec_equal(&a, &b));

        /* Order of forwards matters: it is the order on the command line. */
        PortForward t = b.forwards[0];
        b.forwards[0] = b.forwards[2];
        b.forwards[2] = t;
        ck_assert(!vm_spec_equal(&a, &b));
}
END_TEST

START_TEST(test_copy_empty_and_done) {
        _cleanup_(vm_spec_done) VmSpec a = {}, b = {};

        ck_assert_int_eq(vm_spec_copy(&b, &a), 0);
        ck_assert(vm_spec_equal(&a, &b));
        ck_assert_ptr_null(b.forwards);

        make_valid(&a);
        vm_spec_done(&a);
        ck_assert_ptr_null(a.machine);
        ck_assert_ptr_null(a.forwards);
        ck_assert_uint_eq(a.n_forwards, 0);
        ck_assert_uint_eq(a.cpus, 0);
        vm_spec_done(&a); /* twice is fine */
        vm_spec_done(NULL);
}
END_TEST

static Suite *spec_suite(void) {
        Suite *s = suite_create("spec");
        TCase *tc;

        tc = tcase_create("basics");
        tcase_add_test(tc, test_string_tables);
        tcase_add_test(tc, test_defaults);
        tcase_add_test(tc, test_defaults_keep_values);
        tcase_add_test(tc, test_copy_equal);
        tcase_add_test(tc, test_equal_unset_forms);
        tcase_add_test(tc, test_copy_empty_and_done);
        tcase_add_test(tc, test_mac);
        tcase_add_test(tc, test_hash_password_limit);
        suite_add_tcase(s, tc);

        tc = tcase_create("accepted");
        tcase_add_test(tc, test_valid);
        tcase_add_test(tc, test_valid_minimal);
        tcase_add_test(tc, test_valid_edges);
        suite_add_tcase(s, tc);

        tc = tcase_create("rejected");
        tcase_add_test(tc, test_reject_cpus_0);
        tcase_add_test(tc, test_resources);
        tcase_add_test(tc, test_ready_timeout);
        tcase_add_test(tc, test_reject_cpus_256);
        tcase_add_test(tc, test_reject_memory_32);
        tcase_add_test(tc, test_reject_memory_huge);
        tcase_add_test(tc, test_reject_accel);
        tcase_add_test(tc, test_reject_arch);
        tcase_add_test(tc, test_reject_host_port_0);
        tcase_add_test(tc, test_reject_host_port_70000);
        tcase_add_test(tc, test_reject_guest_port_0);
        tcase_add_test(tc, test_reject_guest_port_70000);
        tcase_add_test(tc, test_reject_host_port_twice);
        tcase_add_test(tc, test_reject_host_port_twice_wildcard);
        tcase_add_test(tc, test_reject_protocol);
        tcase_add_loop_test(tc, test_reject_host_addr, 0, (int) (sizeof(bad_host_addrs) / sizeof(bad_host_addrs[0])));
        tcase_add_test(tc, test_reject_host_addr_newline);
        tcase_add_test(tc, test_reject_kernel_relative);
        tcase_add_test(tc, test_reject_initrd_relative);
        tcase_add_test(tc, test_reject_disk_relative);
        tcase_add_test(tc, test_reject_initrd_without_kernel);
        tcase_add_test(tc, test_reject_cmdline_without_kernel);
        tcase_add_test(tc, test_reject_cmdline_newline);
        tcase_add_test(tc, test_reject_cmdline_too_long);
        tcase_add_test(tc, test_reject_path_too_long);
        tcase_add_test(tc, test_reject_tab_in_machine);
        tcase_add_test(tc, test_reject_comma_in_machine);
        tcase_add_test(tc, test_reject_machine_charset);
        tcase_add_test(tc, test_reject_machine_non_ascii);
        tcase_add_loop_test(tc, test_reject_cpu_model, 0, (int) (sizeof(bad_cpu_models) / sizeof(bad_cpu_models[0])));
        tcase_add_test(tc, test_reject_cpu_model_names_feature);
        tcase_add_test(tc, test_reject_control_in_disk);
        tcase_add_test(tc, test_reject_del_in_kernel);
        tcase_add_test(tc, test_reject_cr_in_cpu_model);
        tcase_add_loop_test(tc, test_reject_dotdot, 0, (int) (sizeof(dotdot_paths) / sizeof(dotdot_paths[0])));
        tcase_add_test(tc, test_reject_dotdot_kernel);
        tcase_add_test(tc, test_reject_quotes_escaped);
        suite_add_tcase(s, tc);

        return s;
}

int main(void) {
        SRunner *sr = srunner_create(spec_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
