/* SPDX-License-Identifier: MIT */
/* One rule per fact (issue 9 item 6): for every value in the table, RegisterVm's check (vm_spec_apply_defaults +
 * vm_spec_validate) refuses it if and only if PlanVm/StartVm would: provision_plan (the cloud-init renderer,
 * the bare-kernel search) followed by qemu_argv_build, run on the same spec the way vm_plan() runs them. Before
 * the fix RegisterVm accepted values (a '}' in an extra deb URL, '=' in a share's guest path, a hostname with a
 * trailing dot, a DNS address equal to the gateway...) that the renderer or the argv builder then refused. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "provision.h"
#include "qemu_argv.h"
#include "spec.h"

typedef enum Base {
        BASE_CLOUD,                /* cloud image, containerd proxy, k3s + diod, an extra deb, an extra share */
        BASE_LOCAL,                /* local kernel boot: no cloud-init */
        BASE_BARE,                 /* bare-kernel artifact */
} Base;

typedef enum Field {
        F_EXTRA_DEB,
        F_CSI_URL,
        F_GUEST_PATH,
        F_HOSTNAME,
        F_USERNAME,
        F_PASSWORD_HASH,
        F_SSH_KEY,
        F_K3S_VERSION,
        F_KERNEL_PACKAGE,
        F_GUEST_IP,
        F_GATEWAY,
        F_DNS,
        F_PREFIX_LEN,
        F_DIOD_PORT,
} Field;

typedef struct Case {
        Base base;
        Field field;
        const char *value;         /* F_PREFIX_LEN, F_DIOD_PORT: a number */
        bool bad;                  /* what both sides must say; good values guard against a rule too strict */
} Case;

static const Case cases[] = {
        /* software.extra_debs: the value, and the other URL characters wget and install_debs.sh take
         * differently. */
        { BASE_CLOUD, F_EXTRA_DEB, "http://x/a.deb#}]", true },
        { BASE_CLOUD, F_EXTRA_DEB, "http://x/{a}.deb", true },
        { BASE_CLOUD, F_EXTRA_DEB, "http://x/a|b.deb", true },
        { BASE_CLOUD, F_EXTRA_DEB, "http://x/a^b.deb", true },
        { BASE_CLOUD, F_EXTRA_DEB, "http://x/a$b.deb", true },
        { BASE_CLOUD, F_EXTRA_DEB, "http://:80/a.deb", true },
        { BASE_CLOUD, F_EXTRA_DEB, "http://u:p@x/a.deb", true },
        { BASE_CLOUD, F_EXTRA_DEB, "ftp://x/a.deb", true },
        { BASE_CLOUD, F_EXTRA_DEB, "file:///srv/a.deb", true },
        { BASE_CLOUD, F_EXTRA_DEB, "http://x/a b.deb", true },
        { BASE_CLOUD, F_EXTRA_DEB, "http://x/a.deb#frag", false },
        { BASE_CLOUD, F_EXTRA_DEB, "https://x:8443/p/a_1.0+b~1.deb?x=1&y=%20", false },
        /* software.csi_grpc_proxy_url */
        { BASE_CLOUD, F_CSI_URL, "https://x/{v}/proxy-", true },
        { BASE_CLOUD, F_CSI_URL, "https://x/a|b-", true },
        { BASE_CLOUD, F_CSI_URL, "http://:1/p-", true },
        { BASE_CLOUD, F_CSI_URL, "https://x/p\"-", true },
        { BASE_CLOUD, F_CSI_URL, "https://github.com/x/releases/download/v1/proxy-linux-", false },
        /* shares.extra[0].guest_path: fstab and mkdir */
        { BASE_CLOUD, F_GUEST_PATH, "/mnt/a=b", true },
        { BASE_CLOUD, F_GUEST_PATH, "/mnt/100%", true },
        { BASE_CLOUD, F_GUEST_PATH, "/", true },
        { BASE_CLOUD, F_GUEST_PATH, "/a/./b", true },
        { BASE_CLOUD, F_GUEST_PATH, "/a/../b", true },
        { BASE_CLOUD, F_GUEST_PATH, "/a b", true },
        { BASE_CLOUD, F_GUEST_PATH, "/a#b", true },
        { BASE_CLOUD, F_GUEST_PATH, "models", true },
        { BASE_CLOUD, F_GUEST_PATH, "/mnt/a+b@c:d~e_f.g-h", false },
        /* guest.hostname */
        { BASE_CLOUD, F_HOSTNAME, "hydra.", true },
        { BASE_CLOUD, F_HOSTNAME, "-hydra", true },
        { BASE_CLOUD, F_HOSTNAME, "a..b", true },
        { BASE_CLOUD, F_HOSTNAME, "a_b", true },
        { BASE_CLOUD, F_HOSTNAME, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", true },
        { BASE_CLOUD, F_HOSTNAME, "host-1.example", false },
        /* guest.username */
        { BASE_CLOUD, F_USERNAME, "-x", true },
        { BASE_CLOUD, F_USERNAME, "Root", true },
        { BASE_CLOUD, F_USERNAME, "a b", true },
        { BASE_CLOUD, F_USERNAME, "\xc3\xbc", true },
        { BASE_CLOUD, F_USERNAME, "_svc-1", false },
        /* guest.password_hash */
        { BASE_CLOUD, F_PASSWORD_HASH, "$6$a b$c", true },
        { BASE_CLOUD, F_PASSWORD_HASH, "nodollar", true },
        { BASE_CLOUD, F_PASSWORD_HASH, "$6$salt$abc/def.ghi", false },
        /* guest.ssh_authorized_keys[0] */
        { BASE_CLOUD, F_SSH_KEY, "ssh-ed25519 AAAA \xff", true },
        { BASE_CLOUD, F_SSH_KEY, "ssh-rsa AAAA\nssh-rsa BBBB", true },
        { BASE_CLOUD, F_SSH_KEY, "ssh-rsa AAAA x\ty", true },
        { BASE_CLOUD, F_SSH_KEY, "not-a-key AAAA", true },
        { BASE_CLOUD, F_SSH_KEY, "ssh-ed25519 AAAA \"q\" ]: { x: 1 } # \xe2\x80\xa8 \xf0\x9f\x94\x91", false },
        /* software.k3s_version */
        { BASE_CLOUD, F_K3S_VERSION, "-rc1", true },
        { BASE_CLOUD, F_K3S_VERSION, "v1.32.6+k3s1-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", true },
        { BASE_CLOUD, F_K3S_VERSION, "v1 2", true },
        { BASE_CLOUD, F_K3S_VERSION, "v1/2", true },
        { BASE_CLOUD, F_K3S_VERSION, "..", true },
        { BASE_CLOUD, F_K3S_VERSION, "v1.32.6+k3s1", false },
        /* software.kernel_package */
        { BASE_CLOUD, F_KERNEL_PACKAGE, "A", true },
        { BASE_CLOUD, F_KERNEL_PACKAGE, "x", true },
        { BASE_CLOUD, F_KERNEL_PACKAGE, "linux image", true },
        { BASE_CLOUD, F_KERNEL_PACKAGE, "-linux", true },
        { BASE_CLOUD, F_KERNEL_PACKAGE, "linux-image-6.12.0-1-amd64", false },
        /* network: the addresses alone, and what slirp refuses about them together (with the defaults of the
         * fields left unset) */
        { BASE_CLOUD, F_GUEST_IP, "10.0.2", true },
        { BASE_CLOUD, F_GUEST_IP, "10.0.2.300", true },
        { BASE_CLOUD, F_GUEST_IP, "10.0.2.3", true },
        { BASE_CLOUD, F_GUEST_IP, "10.0.2.16", false },
        { BASE_CLOUD, F_GATEWAY, "192.168.1.1", true },
        { BASE_CLOUD, F_GATEWAY, "10.0.2.3", true },
        { BASE_CLOUD, F_GATEWAY, "10.0.2.1", false },
        { BASE_CLOUD, F_DNS, "10.0.2.2", true },
        { BASE_CLOUD, F_DNS, "10.0.2.15", true },
        { BASE_CLOUD, F_DNS, "1.1.1.1 ", true },
        { BASE_CLOUD, F_DNS, "10.0.2.4", false },
        { BASE_CLOUD, F_PREFIX_LEN, "31", true },
        { BASE_CLOUD, F_PREFIX_LEN, "32", true },
        { BASE_CLOUD, F_PREFIX_LEN, "30", true }, /* 10.0.2.15/30 leaves the default gateway outside */
        { BASE_CLOUD, F_PREFIX_LEN, "16", false },
        { BASE_LOCAL, F_GUEST_IP, "192.168.1.5", true }, /* the default gateway is not in its network */
        { BASE_LOCAL, F_DNS, "10.0.2.2", true },
        { BASE_LOCAL, F_GUEST_IP, "10.0.2.20", false },
        { BASE_BARE, F_GATEWAY, "10.0.2.3", true },
        { BASE_BARE, F_GUEST_IP, "10.0.2.2", true },
        { BASE_BARE, F_GUEST_IP, "10.0.2.21", false },
        /* shares.diod_port */
        { BASE_CLOUD, F_DIOD_PORT, "70000", true },
        { BASE_CLOUD, F_DIOD_PORT, "564", false },
};

static void set(char **field, const char *value) {
        free(*field);
        *field = value ? strdup(value) : NULL;
        if (value)
                ck_assert_ptr_nonnull(*field);
}

static char **strv_one(const char *a) {
        char **l = calloc(2, sizeof(char *));

        ck_assert_ptr_nonnull(l);
        l[0] = strdup(a);
        ck_assert_ptr_nonnull(l[0]);
        return l;
}

static void make_base(VmSpec *s, Base base) {
        *s = (VmSpec) { .cpus = 1, .memory_mib = 512, .accel = ACCEL_TCG, .arch = ARCH_X86_64 };
        switch (base) {
        case BASE_CLOUD:
                set(&s->image.url, "https://cloud.debian.org/images/debian-13-generic-amd64.qcow2");
                s->software.k3s_diod = true;
                s->software.extra_debs = strv_one("http://deb.example/a.deb");
                s->guest.ssh_authorized_keys = strv_one("ssh-ed25519 AAAAC3Nza user@host");
                s->shares.extra = calloc(1, sizeof(Share));
                ck_assert_ptr_nonnull(s->shares.extra);
                s->shares.n_extra = 1;
                set(&s->shares.extra[0].host_path, "/srv/models");
                set(&s->shares.extra[0].guest_path, "/models");
                break;
        case BASE_LOCAL:
                set(&s->kernel, "/boot/vmlinuz");
                break;
        case BASE_BARE:
                set(&s->bare.artifact.url, "https://example.com/rimd.tar.gz");
                break;
        }
}

static void set_field(VmSpec *s, Field f, const char *v) {
        switch (f) {
        case F_EXTRA_DEB:
                set(&s->software.extra_debs[0], v);
                break;
        case F_CSI_URL:
                set(&s->software.csi_grpc_proxy_url, v);
                break;
        case F_GUEST_PATH:
                set(&s->shares.extra[0].guest_path, v);
                break;
        case F_HOSTNAME:
                set(&s->guest.hostname, v);
                break;
        case F_USERNAME:
                set(&s->guest.username, v);
                break;
        case F_PASSWORD_HASH:
                set(&s->guest.password_hash, v);
                break;
        case F_SSH_KEY:
                set(&s->guest.ssh_authorized_keys[0], v);
                break;
        case F_K3S_VERSION:
                set(&s->software.k3s_version, v);
                break;
        case F_KERNEL_PACKAGE:
                set(&s->software.kernel_package, v);
                break;
        case F_GUEST_IP:
                set(&s->network.guest_ip, v);
                break;
        case F_GATEWAY:
                set(&s->network.gateway, v);
                break;
        case F_DNS:
                set(&s->network.dns, v);
                break;
        case F_PREFIX_LEN:
                s->network.prefix_len = (uint32_t) strtoul(v, NULL, 10);
                break;
        case F_DIOD_PORT:
                s->shares.diod_port = (uint32_t) strtoul(v, NULL, 10);
                break;
        }
}

/* RegisterVm: vm_register's checks. */
static bool register_refuses(const VmSpec *spec, HydraError *e) {
        _cleanup_(vm_spec_done) VmSpec s = {};

        ck_assert_int_eq(vm_spec_copy(&s, spec), 0);
        ck_assert_int_eq(vm_spec_apply_defaults(&s), 0);
        return vm_spec_validate(&s, e) < 0;
}

/* PlanVm / StartVm: vm_plan's steps on the spec as RegisterVm would have stored it (defaults applied), but
 * without RegisterVm's validation. */
static bool start_refuses(const VmSpec *spec, HydraError *e) {
        _cleanup_(vm_spec_done) VmSpec s = {};
        _cleanup_(provision_output_done) ProvisionOutput out = {};
        _cleanup_(cloud_init_files_done) CloudInitFiles files = {};
        ProvisionContext ctx = { .name = "isolated", .state_dir = "/nonexistent/hydra/isolated",
                                 .cache_dir = "/nonexistent/hydra/cache" };
        char **argv = NULL;
        QemuRuntime rt;

        ck_assert_int_eq(vm_spec_copy(&s, spec), 0);
        ck_assert_int_eq(vm_spec_apply_defaults(&s), 0);
        if (provision_plan(&ctx, &s, &out, &files, e) < 0)
                return true;
        rt = (QemuRuntime) {
                .binary = "qemu-system-x86_64",
                .name = "isolated",
                .accel = ACCEL_TCG,
                .qmp_fd = 3,
                .console_socket = "/run/hydra/isolated/qemu-console.sock",
                .disk_path = out.disk_path ? out.disk_path : s.disk,
                .disk_format = out.disk_path ? out.disk_format : "raw",
                .seed_path = out.seed_path,
                .kernel = out.kernel ? out.kernel : s.kernel,
                .initrd = out.kernel ? out.initrd : s.initrd,
                .bare_kernel = out.bare_kernel,
                .firmware_vars = out.firmware_vars,
                .shmem_path = out.shmem_path,
        };
        if (qemu_argv_build(&s, &rt, &argv, e) < 0)
                return true;
        strv_free(argv);
        return false;
}

START_TEST(test_bases_start) {
        static const Base bases[] = { BASE_CLOUD, BASE_LOCAL, BASE_BARE };

        for (size_t i = 0; i < ELEMENTSOF(bases); i++) {
                _cleanup_(vm_spec_done) VmSpec s = {};
                HydraError e = {};

                make_base(&s, bases[i]);
                ck_assert_msg(!register_refuses(&s, &e), "base %zu: %s", i, e.message);
                ck_assert_msg(!start_refuses(&s, &e), "base %zu: %s", i, e.message);
        }
}
END_TEST

/* A cloud image with the artifact's encrypted-container tools: valid at RegisterVm, so PlanVm must not refuse it
 * for want of the tool binaries, which only a start downloads. */
START_TEST(test_plan_encrypted_tools) {
        _cleanup_(vm_spec_done) VmSpec s = {};
        HydraError e = {};

        make_base(&s, BASE_CLOUD);
        set(&s.bare.artifact.url, "https://example.com/rimd.tar.gz");
        s.bare.encrypted_tools = true;
        ck_assert_msg(!register_refuses(&s, &e), "%s", e.message);
        ck_assert_msg(!start_refuses(&s, &e), "%s", e.message);
}
END_TEST

START_TEST(test_register_refuses_iff_start_refuses) {
        const Case *c = &cases[_i];
        _cleanup_(vm_spec_done) VmSpec s = {};
        HydraError reg = {}, start = {};
        bool r, st;

        make_base(&s, c->base);
        set_field(&s, c->field, c->value);
        r = register_refuses(&s, &reg);
        st = start_refuses(&s, &start);

        ck_assert_msg(r == st, "case %d '%s': RegisterVm %s (%s) but PlanVm/StartVm %s (%s)", _i, c->value,
                      r ? "refuses" : "accepts", r ? reg.message : "-", st ? "refuses" : "accepts",
                      st ? start.message : "-");
        ck_assert_msg(r == c->bad, "case %d '%s': expected %s, both %s (%s)", _i, c->value,
                      c->bad ? "a refusal" : "acceptance", r ? "refuse" : "accept", r ? reg.message : "-");
        /* Both name the same field. */
        if (r)
                ck_assert_msg(strncmp(reg.message, start.message, strcspn(reg.message, ":")) == 0,
                              "case %d: RegisterVm says '%s', StartVm says '%s'", _i, reg.message, start.message);
}
END_TEST

static Suite *suite(void) {
        Suite *s = suite_create("one-rule");
        TCase *tc = tcase_create("fields");

        tcase_add_test(tc, test_bases_start);
        tcase_add_test(tc, test_plan_encrypted_tools);
        tcase_add_loop_test(tc, test_register_refuses_iff_start_refuses, 0, (int) ELEMENTSOF(cases));
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
