/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <crypt.h>
#include <inttypes.h>
#include <regex.h>
#include <stdio.h>
#include <string.h>

#include "field.h"
#include "macro.h"
#include "spec.h"

static const char *const role_table[_ROLE_MAX] = {
        [ROLE_HOST] = "host",
        [ROLE_ISOLATED] = "isolated",
};
DEFINE_STRING_TABLE_LOOKUP(role, Role, _ROLE_MAX);

static const char *const accel_table[_ACCEL_MAX] = {
        [ACCEL_AUTO] = "auto",
        [ACCEL_KVM] = "kvm",
        [ACCEL_TCG] = "tcg",
};
DEFINE_STRING_TABLE_LOOKUP(accel, Accel, _ACCEL_MAX);

static const char *const arch_table[_ARCH_MAX] = {
        [ARCH_X86_64] = "x86_64",
        [ARCH_AARCH64] = "aarch64",
};
DEFINE_STRING_TABLE_LOOKUP(arch, Arch, _ARCH_MAX);

static const char *const forward_protocol_table[_FORWARD_PROTOCOL_MAX] = {
        [FORWARD_TCP] = "tcp",
        [FORWARD_UDP] = "udp",
};
DEFINE_STRING_TABLE_LOOKUP(forward_protocol, ForwardProtocol, _FORWARD_PROTOCOL_MAX);

static const char *const kubelet_shares_table[_KUBELET_SHARES_MAX] = {
        [KUBELET_SHARES_VIRTIO] = "virtio",
        [KUBELET_SHARES_TCP] = "tcp",
        [KUBELET_SHARES_NONE] = "none",
};
DEFINE_STRING_TABLE_LOOKUP(kubelet_shares, KubeletShares, _KUBELET_SHARES_MAX);

static const char *const shmem_table[_SHMEM_MAX] = {
        [SHMEM_NONE] = "none",
        [SHMEM_NVDIMM] = "nvdimm",
        [SHMEM_IVSHMEM] = "ivshmem",
};
DEFINE_STRING_TABLE_LOOKUP(shmem, Shmem, _SHMEM_MAX);

static const char *const restart_policy_table[_RESTART_POLICY_MAX] = {
        [RESTART_NO] = "no",
        [RESTART_ON_FAILURE] = "on-failure",
        [RESTART_ALWAYS] = "always",
};
DEFINE_STRING_TABLE_LOOKUP(restart_policy, RestartPolicy, _RESTART_POLICY_MAX);

static const char *const probe_kind_table[_PROBE_KIND_MAX] = {
        [PROBE_CONSOLE] = "console",
        [PROBE_TCP] = "tcp",
        [PROBE_CONTAINERD] = "containerd",
        [PROBE_NONE] = "none",
};
DEFINE_STRING_TABLE_LOOKUP(probe_kind, ProbeKind, _PROBE_KIND_MAX);

#define SPEC_DEFAULT_HOST_ADDR "127.0.0.1"
#define SPEC_MAX_PATH 4095U    /* PATH_MAX - 1 */
#define SPEC_MAX_CMDLINE 4096U
#define SPEC_MAX_MACHINE 128U
#define SPEC_MAX_CPU_MODEL 1024U

#define QUOTE_MAX FIELD_QUOTE_MAX

/* Every string the spec owns, every scalar, every string list: copy, free and compare walk these lists, so a
 * new field is added in one place. */
#define SPEC_STRINGS(X)                                                                                          \
        X(machine) X(cpu_model) X(kernel) X(initrd) X(cmdline) X(disk) X(firmware_code) X(firmware_vars)        \
        X(image.url) X(image.checksum) X(image.sums_url) X(image.user) X(image.password) X(image.token)         \
        X(image.token_header) X(bare.artifact.url) X(bare.artifact.checksum) X(bare.artifact.sums_url)          \
        X(bare.artifact.user) X(bare.artifact.password) X(bare.artifact.token) X(bare.artifact.token_header)    \
        X(bare.dir) X(bare.kernel) X(bare.kernel_version) X(bare.initrd) X(bare.rootfs) X(guest.username)        \
        X(guest.password) X(guest.password_hash) X(guest.hostname) X(software.csi_grpc_proxy_url)                \
        X(software.k3s_version) X(software.kernel_package) X(software.sandbox_image)                            \
        X(software.sandbox_image_url) X(software.crismux_url) X(software.crismux_sha256) X(network.guest_ip)     \
        X(network.gateway) X(network.dns) X(network.mac) X(shares.kubelet_host_dir) X(devices.shmem_path)       \
        X(supervision.probe_pattern) X(supervision.start_after)

#define SPEC_SCALARS(X)                                                                                          \
        X(cpus) X(memory_mib) X(accel) X(arch) X(disk_size_gib) X(keep_pristine) X(reuse_disk_on_change)        \
        X(bare.encrypted_tools) X(software.disable_containerd_proxy) X(software.k3s_diod)                       \
        X(software.reboot_after_install) X(software.package_update) X(software.package_upgrade)                 \
        X(network.prefix_len) X(shares.kubelet) X(shares.diod_port) X(devices.vsock) X(devices.vsock_cid)       \
        X(devices.gpu) X(devices.gpu_vram_gib) X(devices.shmem)                                                 \
        X(devices.shmem_size_gib) X(supervision.restart) X(supervision.max_restarts)                             \
        X(supervision.restart_window_sec) X(supervision.autostart) X(supervision.stop_timeout_sec)               \
        X(supervision.probe) X(supervision.probe_port) X(supervision.ready_timeout_sec)                          \
        X(resources.cpu_quota_percent) X(resources.memory_max)

#define SPEC_STRVS(X) X(guest.ssh_authorized_keys) X(software.extra_debs)

void vm_spec_done(VmSpec *spec) {
        if (!spec)
                return;

#define FREE_STRING(f) free(spec->f);
        SPEC_STRINGS(FREE_STRING)
#undef FREE_STRING
#define FREE_STRV(f) strv_free(spec->f);
        SPEC_STRVS(FREE_STRV)
#undef FREE_STRV
        for (size_t i = 0; i < spec->n_forwards; i++)
                free(spec->forwards[i].host_addr);
        free(spec->forwards);
        for (size_t i = 0; i < spec->shares.n_extra; i++) {
                free(spec->shares.extra[i].host_path);
                free(spec->shares.extra[i].guest_path);
        }
        free(spec->shares.extra);
        *spec = (VmSpec) {};
}

static int strv_copy_or_null(char ***dst, char *const *src) {
        *dst = NULL;
        if (!src)
                return 0;
        *dst = strv_copy(src);
        return *dst ? 0 : -ENOMEM;
}

int vm_spec_copy(VmSpec *dst, const VmSpec *src) {
        _cleanup_(vm_spec_done) VmSpec copy = {};

#define COPY_SCALAR(f) copy.f = src->f;
        SPEC_SCALARS(COPY_SCALAR)
#undef COPY_SCALAR
#define COPY_STRING(f)                                                                                           \
        if (strdup_or_null(&copy.f, src->f) < 0)                                                                 \
                return -ENOMEM;
        SPEC_STRINGS(COPY_STRING)
#undef COPY_STRING
#define COPY_STRV(f)                                                                                             \
        if (strv_copy_or_null(&copy.f, src->f) < 0)                                                              \
                return -ENOMEM;
        SPEC_STRVS(COPY_STRV)
#undef COPY_STRV

        if (src->n_forwards > 0) {
                copy.forwards = calloc(src->n_forwards, sizeof(PortForward));
                if (!copy.forwards)
                        return -ENOMEM;
                for (size_t i = 0; i < src->n_forwards; i++) {
                        copy.forwards[i] = src->forwards[i];
                        copy.forwards[i].host_addr = NULL;
                        /* Count it now so that vm_spec_done() frees what was copied so far. */
                        copy.n_forwards = i + 1;
                        if (strdup_or_null(&copy.forwards[i].host_addr, src->forwards[i].host_addr) < 0)
                                return -ENOMEM;
                }
        }
        if (src->shares.n_extra > 0) {
                copy.shares.extra = calloc(src->shares.n_extra, sizeof(Share));
                if (!copy.shares.extra)
                        return -ENOMEM;
                for (size_t i = 0; i < src->shares.n_extra; i++) {
                        copy.shares.n_extra = i + 1;
                        if (strdup_or_null(&copy.shares.extra[i].host_path, src->shares.extra[i].host_path) < 0 ||
                            strdup_or_null(&copy.shares.extra[i].guest_path, src->shares.extra[i].guest_path) < 0)
                                return -ENOMEM;
                }
        }

        *dst = copy;
        copy = (VmSpec) {};
        return 0;
}

/* Optional strings: NULL and "" both mean "not set" (proto3 cannot tell them apart). */
static bool optional_streq(const char *a, const char *b) {
        return streq(strempty(a), strempty(b));
}

static bool optional_strv_equal(char *const *a, char *const *b) {
        size_t na = strv_length((char **) a), nb = strv_length((char **) b);

        if (na != nb)
                return false;
        for (size_t i = 0; i < na; i++)
                if (!streq(a[i], b[i]))
                        return false;
        return true;
}

const char *port_forward_host_addr(const PortForward *f) {
        return isempty(f->host_addr) ? SPEC_DEFAULT_HOST_ADDR : f->host_addr;
}

/* Two listeners on one host port collide if their addresses are equal or either is the wildcard (the kernel refuses
 * the second bind). Guest ports may repeat. */
static bool forwards_collide(const PortForward *f, const PortForward *g) {
        const char *a = port_forward_host_addr(f), *b = port_forward_host_addr(g);

        if (f->protocol != g->protocol || f->host_port != g->host_port)
                return false;
        return streq(a, b) || streq(a, "0.0.0.0") || streq(b, "0.0.0.0");
}

int vm_spec_forwards_clash(const VmSpec *a, const VmSpec *b, size_t *ret_b) {
        for (size_t i = 0; i < a->n_forwards; i++)
                for (size_t j = 0; j < b->n_forwards; j++)
                        if (forwards_collide(&a->forwards[i], &b->forwards[j])) {
                                if (ret_b)
                                        *ret_b = j;
                                return (int) i;
                        }
        return -ENOENT;
}

bool vm_spec_equal(const VmSpec *a, const VmSpec *b) {
        if (a == b)
                return true;
        if (!a || !b)
                return false;

#define CMP_SCALAR(f)                                                                                            \
        if (a->f != b->f)                                                                                        \
                return false;
        SPEC_SCALARS(CMP_SCALAR)
#undef CMP_SCALAR
#define CMP_STRING(f)                                                                                            \
        if (!optional_streq(a->f, b->f))                                                                         \
                return false;
        SPEC_STRINGS(CMP_STRING)
#undef CMP_STRING
#define CMP_STRV(f)                                                                                              \
        if (!optional_strv_equal(a->f, b->f))                                                                    \
                return false;
        SPEC_STRVS(CMP_STRV)
#undef CMP_STRV

        /* Order matters: it is the order of hostfwd= entries on the command line. */
        if (a->n_forwards != b->n_forwards)
                return false;
        for (size_t i = 0; i < a->n_forwards; i++) {
                const PortForward *x = &a->forwards[i], *y = &b->forwards[i];

                if (x->host_port != y->host_port || x->guest_port != y->guest_port || x->protocol != y->protocol ||
                    !streq(port_forward_host_addr(x), port_forward_host_addr(y)))
                        return false;
        }
        if (a->shares.n_extra != b->shares.n_extra)
                return false;
        for (size_t i = 0; i < a->shares.n_extra; i++)
                if (!optional_streq(a->shares.extra[i].host_path, b->shares.extra[i].host_path) ||
                    !optional_streq(a->shares.extra[i].guest_path, b->shares.extra[i].guest_path))
                        return false;
        return true;
}

BootMode vm_spec_boot_mode(const VmSpec *spec) {
        if (!isempty(spec->image.url))
                return BOOT_CLOUD_IMAGE;
        if (!isempty(spec->bare.artifact.url))
                return BOOT_BARE_KERNEL;
        return BOOT_LOCAL;
}

const char *vm_spec_mac(const VmSpec *spec) {
        if (!isempty(spec->network.mac))
                return spec->network.mac;
        return vm_spec_boot_mode(spec) == BOOT_BARE_KERNEL ? SPEC_DEFAULT_MAC_BARE : SPEC_DEFAULT_MAC_IMAGE;
}

static void empty_to_null(char **s) {
        if (*s && !**s) {
                free(*s);
                *s = NULL;
        }
}

static int default_string(char **s, const char *value) {
        char *v;

        if (!isempty(*s))
                return 0;
        v = strdup(value);
        if (!v)
                return -ENOMEM;
        free(*s);
        *s = v;
        return 0;
}

int vm_spec_apply_defaults(VmSpec *spec) {
        BootMode mode;

        if (spec->cpus == 0)
                spec->cpus = SPEC_DEFAULT_CPUS;
        if (spec->memory_mib == 0)
                spec->memory_mib = SPEC_DEFAULT_MEMORY_MIB;

#define EMPTY_TO_NULL(f) empty_to_null(&spec->f);
        SPEC_STRINGS(EMPTY_TO_NULL)
#undef EMPTY_TO_NULL
        if (strv_isempty(spec->guest.ssh_authorized_keys))
                spec->guest.ssh_authorized_keys = strv_free(spec->guest.ssh_authorized_keys);
        if (strv_isempty(spec->software.extra_debs))
                spec->software.extra_debs = strv_free(spec->software.extra_debs);

        for (size_t i = 0; i < spec->n_forwards; i++)
                if (default_string(&spec->forwards[i].host_addr, SPEC_DEFAULT_HOST_ADDR) < 0)
                        return -ENOMEM;

        /* The guest-facing defaults only where they are used, so that a plain local-kernel spec stays short;
         * such a VM gets no kubelet shares (the zero value of the field means virtio). */
        mode = vm_spec_boot_mode(spec);
        if (mode == BOOT_LOCAL)
                spec->shares.kubelet = KUBELET_SHARES_NONE;
        if (mode != BOOT_LOCAL) {
                if (default_string(&spec->network.guest_ip, SPEC_DEFAULT_GUEST_IP) < 0 ||
                    default_string(&spec->network.gateway, SPEC_DEFAULT_GATEWAY) < 0 ||
                    default_string(&spec->network.dns, SPEC_DEFAULT_DNS) < 0)
                        return -ENOMEM;
                if (spec->network.prefix_len == 0)
                        spec->network.prefix_len = SPEC_DEFAULT_PREFIX_LEN;
                if (spec->shares.diod_port == 0)
                        spec->shares.diod_port = SPEC_DEFAULT_DIOD_PORT;
        }
        if (mode == BOOT_CLOUD_IMAGE) {
                if (default_string(&spec->guest.username, SPEC_DEFAULT_USERNAME) < 0 ||
                    default_string(&spec->guest.hostname, SPEC_DEFAULT_HOSTNAME) < 0 ||
                    default_string(&spec->software.k3s_version, SPEC_DEFAULT_K3S_VERSION) < 0 ||
                    default_string(&spec->software.csi_grpc_proxy_url, SPEC_DEFAULT_CSI_GRPC_PROXY_URL) < 0)
                        return -ENOMEM;
        }
        if (!isempty(spec->bare.artifact.url)) {
                if (default_string(&spec->bare.kernel, SPEC_DEFAULT_BARE_KERNEL) < 0 ||
                    default_string(&spec->bare.initrd, SPEC_DEFAULT_BARE_INITRD) < 0 ||
                    default_string(&spec->bare.rootfs, SPEC_DEFAULT_BARE_ROOTFS) < 0)
                        return -ENOMEM;
        }
        if (!isempty(spec->image.token) && default_string(&spec->image.token_header, SPEC_DEFAULT_TOKEN_HEADER) < 0)
                return -ENOMEM;
        if (!isempty(spec->bare.artifact.token) &&
            default_string(&spec->bare.artifact.token_header, SPEC_DEFAULT_TOKEN_HEADER) < 0)
                return -ENOMEM;

        if (spec->devices.vsock && spec->devices.vsock_cid == 0)
                spec->devices.vsock_cid = SPEC_DEFAULT_VSOCK_CID;
        if (spec->devices.gpu && spec->devices.gpu_vram_gib == 0)
                spec->devices.gpu_vram_gib = SPEC_DEFAULT_GPU_VRAM_GIB;
        if (spec->devices.shmem != SHMEM_NONE) {
                if (spec->devices.shmem_size_gib == 0)
                        spec->devices.shmem_size_gib = SPEC_DEFAULT_SHMEM_SIZE_GIB;
        }

        if (spec->supervision.restart != RESTART_NO) {
                if (spec->supervision.max_restarts == 0)
                        spec->supervision.max_restarts = SPEC_DEFAULT_MAX_RESTARTS;
                if (spec->supervision.restart_window_sec == 0)
                        spec->supervision.restart_window_sec = SPEC_DEFAULT_RESTART_WINDOW_SEC;
        }
        if (spec->supervision.probe == PROBE_CONTAINERD && spec->supervision.probe_port == 0)
                spec->supervision.probe_port = SPEC_DEFAULT_CONTAINERD_PORT;
        return 0;
}

/* --- validation --- */

#define QUOTE_BUF_SIZE FIELD_QUOTE_SIZE

static int check_no_control(const char *field, const char *value, HydraError *err) {
        char q[QUOTE_BUF_SIZE];

        for (const char *p = value; *p; p++) {
                unsigned char c = (unsigned char) *p;
                const char *what;
                char other[32];

                if (c >= 0x20 && c != 0x7f)
                        continue;
                if (c == '\n')
                        what = "a newline";
                else if (c == '\r')
                        what = "a carriage return";
                else if (c == '\t')
                        what = "a tab";
                else {
                        (void) snprintf(other, sizeof(other), "control character 0x%02x", c);
                        what = other;
                }
                return hydra_error_set(err, -EINVAL, "%s: '%s' contains %s (control characters are not allowed)",
                                       field, field_quote(q, value), what);
        }
        return 0;
}

static int check_length(const char *field, const char *value, size_t max, HydraError *err) {
        char q[QUOTE_BUF_SIZE];
        size_t n = strlen(value);

        if (n > max)
                return hydra_error_set(err, -EINVAL, "%s: '%s' is %zu bytes long (allowed: at most %zu bytes)",
                                       field, field_quote(q, value), n, max);
        return 0;
}

static int check_path(const char *field, const char *path, HydraError *err) {
        char q[QUOTE_BUF_SIZE];
        int r;

        r = check_no_control(field, path, err);
        if (r < 0)
                return r;
        r = check_length(field, path, SPEC_MAX_PATH, err);
        if (r < 0)
                return r;
        if (path[0] != '/')
                return hydra_error_set(err, -EINVAL,
                                       "%s: '%s' is not an absolute path (allowed: a path starting with '/')", field,
                                       field_quote(q, path));

        /* A ".." component: refused so that a spec names its files plainly. "a..b" is a fine name. */
        for (const char *p = path; *p;) {
                size_t len;

                p += strspn(p, "/");
                len = strcspn(p, "/");
                if (len == 2 && p[0] == '.' && p[1] == '.')
                        return hydra_error_set(err, -EINVAL,
                                               "%s: '%s' contains a '..' component (allowed: an absolute path "
                                               "without '..')",
                                               field, field_quote(q, path));
                p += len;
        }
        return 0;
}

static bool is_name_char(char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
               c == '_' || c == '-';
}

/* Length of the longest prefix of s made of [A-Za-z0-9._-]. */
static size_t name_span(const char *s, size_t max) {
        size_t n = 0;

        while (n < max && is_name_char(s[n]))
                n++;
        return n;
}

static int check_machine(const char *machine, HydraError *err) {
        char q[QUOTE_BUF_SIZE], c[16];
        size_t n;
        int r;

        r = check_no_control("machine", machine, err);
        if (r < 0)
                return r;
        r = check_length("machine", machine, SPEC_MAX_MACHINE, err);
        if (r < 0)
                return r;

        n = name_span(machine, SIZE_MAX);
        if (machine[n] == ',')
                return hydra_error_set(err, -EINVAL,
                                       "machine: '%s' contains ',' which QEMU would read as an option separator; "
                                       "set accel with the accel field (allowed: a machine type name of letters, "
                                       "digits, '.', '_', '-')",
                                       field_quote(q, machine));
        if (machine[n])
                return hydra_error_set(err, -EINVAL,
                                       "machine: '%s' contains %s (allowed: a machine type name of letters, digits, "
                                       "'.', '_', '-')",
                                       field_quote(q, machine), field_describe_char(c, machine[n]));
        return 0;
}

/* One element after the model, len bytes at elem: "+NAME", "-NAME" or "NAME=VALUE". */
static bool cpu_feature_ok(const char *elem, size_t len) {
        size_t k;

        if (elem[0] == '+' || elem[0] == '-')
                return len > 1 && name_span(elem + 1, len - 1) == len - 1;

        k = name_span(elem, len);
        return k > 0 && k < len - 1 && elem[k] == '=' && name_span(elem + k + 1, len - k - 1) == len - k - 1;
}

#define CPU_MODEL_ALLOWED                                                                                        \
        "allowed: MODEL[,+FEATURE|,-FEATURE|,FEATURE=VALUE]... with names and values of letters, digits, '.', " \
        "'_', '-'"

static int check_cpu_model(const char *model, HydraError *err) {
        char q[QUOTE_BUF_SIZE], c[16];
        const char *p;
        size_t n;
        int r;

        r = check_no_control("cpu_model", model, err);
        if (r < 0)
                return r;
        r = check_length("cpu_model", model, SPEC_MAX_CPU_MODEL, err);
        if (r < 0)
                return r;

        n = name_span(model, SIZE_MAX);
        if (n == 0)
                return hydra_error_set(err, -EINVAL, "cpu_model: '%s' does not start with a model name (%s)",
                                       field_quote(q, model), CPU_MODEL_ALLOWED);
        if (model[n] && model[n] != ',')
                return hydra_error_set(err, -EINVAL, "cpu_model: '%s' has %s in the model name (%s)",
                                       field_quote(q, model), field_describe_char(c, model[n]), CPU_MODEL_ALLOWED);

        /* Each element after the model: +NAME, -NAME or NAME=VALUE. */
        p = model + n;
        for (unsigned idx = 1; *p; idx++) {
                const char *elem = p + 1; /* skip the ',' */
                size_t len = strcspn(elem, ",");
                char f[QUOTE_BUF_SIZE], fe[QUOTE_MAX + 1];

                if (len == 0)
                        return hydra_error_set(err, -EINVAL, "cpu_model: '%s' has an empty feature (element %u) (%s)",
                                               field_quote(q, model), idx, CPU_MODEL_ALLOWED);
                if (!cpu_feature_ok(elem, len)) {
                        (void) snprintf(fe, sizeof(fe), "%.*s", (int) (len < QUOTE_MAX ? len : QUOTE_MAX), elem);
                        return hydra_error_set(err, -EINVAL, "cpu_model: '%s' has a malformed feature '%s' (%s)",
                                               field_quote(q, model), field_quote(f, fe), CPU_MODEL_ALLOWED);
                }
                p = elem + len;
        }
        return 0;
}

static int check_forwards(const VmSpec *spec, HydraError *err) {
        char field[64], q[QUOTE_BUF_SIZE];
        int r;

        for (size_t i = 0; i < spec->n_forwards; i++) {
                const PortForward *f = &spec->forwards[i];
                const char *addr = port_forward_host_addr(f);
                struct in_addr in;

                if ((int) f->protocol < 0 || f->protocol >= _FORWARD_PROTOCOL_MAX)
                        return hydra_error_set(err, -EINVAL,
                                               "forwards[%zu].protocol: %d is not a known protocol (allowed: tcp, udp)",
                                               i, (int) f->protocol);
                if (f->host_port < 1 || f->host_port > 65535)
                        return hydra_error_set(err, -EINVAL,
                                               "forwards[%zu].host_port: %" PRIu32
                                               " is out of range (allowed: 1-65535)",
                                               i, f->host_port);
                if (f->guest_port < 1 || f->guest_port > 65535)
                        return hydra_error_set(err, -EINVAL,
                                               "forwards[%zu].guest_port: %" PRIu32
                                               " is out of range (allowed: 1-65535)",
                                               i, f->guest_port);

                (void) snprintf(field, sizeof(field), "forwards[%zu].host_addr", i);
                r = check_no_control(field, addr, err);
                if (r < 0)
                        return r;
                if (inet_pton(AF_INET, addr, &in) != 1)
                        return hydra_error_set(err, -EINVAL,
                                               "%s: '%s' is not an IPv4 address (allowed: a dotted-quad literal such "
                                               "as 127.0.0.1 or 0.0.0.0; empty means 127.0.0.1)",
                                               field, field_quote(q, addr));

                for (size_t j = 0; j < i; j++) {
                        const PortForward *g = &spec->forwards[j];
                        const char *gaddr = port_forward_host_addr(g);

                        if (!forwards_collide(f, g))
                                continue;
                        return hydra_error_set(err, -EINVAL,
                                               "forwards[%zu].host_port: %" PRIu32
                                               " is used twice (also forwards[%zu]: %s %s:%" PRIu32
                                               "; allowed: each %s host port once per address)",
                                               i, f->host_port, j, forward_protocol_to_string(g->protocol), gaddr,
                                               g->host_port, forward_protocol_to_string(f->protocol));
                }
        }
        return 0;
}

static int validate_basic(const VmSpec *spec, HydraError *err) {
        char q[QUOTE_BUF_SIZE];
        int r;

        if (spec->cpus < 1 || spec->cpus > SPEC_MAX_CPUS)
                return hydra_error_set(err, -EINVAL, "cpus: %u is out of range (allowed: 1-%u)", spec->cpus,
                                       SPEC_MAX_CPUS);
        if (spec->memory_mib < SPEC_MIN_MEMORY_MIB)
                return hydra_error_set(err, -EINVAL,
                                       "memory_mib: %" PRIu64 " is below the minimum (allowed: at least %u MiB)",
                                       spec->memory_mib, SPEC_MIN_MEMORY_MIB);
        if (spec->memory_mib > SPEC_MAX_MEMORY_MIB)
                return hydra_error_set(err, -EINVAL,
                                       "memory_mib: %" PRIu64 " is above the maximum (allowed: at most %" PRIu64
                                       " MiB)",
                                       spec->memory_mib, SPEC_MAX_MEMORY_MIB);
        if ((int) spec->accel < 0 || spec->accel >= _ACCEL_MAX)
                return hydra_error_set(err, -EINVAL, "accel: %d is not a known accelerator (allowed: auto, kvm, tcg)",
                                       (int) spec->accel);
        if ((int) spec->arch < 0 || spec->arch >= _ARCH_MAX)
                return hydra_error_set(err, -EINVAL, "arch: %d is not a known architecture (allowed: x86_64, aarch64)",
                                       (int) spec->arch);

        if (!isempty(spec->machine)) {
                r = check_machine(spec->machine, err);
                if (r < 0)
                        return r;
        }
        if (!isempty(spec->cpu_model)) {
                r = check_cpu_model(spec->cpu_model, err);
                if (r < 0)
                        return r;
        }

        if (!isempty(spec->kernel)) {
                r = check_path("kernel", spec->kernel, err);
                if (r < 0)
                        return r;
        }
        if (!isempty(spec->initrd)) {
                r = check_path("initrd", spec->initrd, err);
                if (r < 0)
                        return r;
                if (isempty(spec->kernel))
                        return hydra_error_set(err, -EINVAL,
                                               "initrd: '%s' given without kernel (allowed: an initrd only with a "
                                               "kernel)",
                                               field_quote(q, spec->initrd));
        }
        if (!isempty(spec->cmdline)) {
                /* -append is not a key=value option: commas are fine, control characters are not. */
                r = check_no_control("cmdline", spec->cmdline, err);
                if (r < 0)
                        return r;
                r = check_length("cmdline", spec->cmdline, SPEC_MAX_CMDLINE, err);
                if (r < 0)
                        return r;
                /* A bare kernel comes from the artifact: its cmdline is the extra part of start-vm.sh's line. */
                if (isempty(spec->kernel) && vm_spec_boot_mode(spec) != BOOT_BARE_KERNEL)
                        return hydra_error_set(err, -EINVAL,
                                               "cmdline: '%s' given without kernel (allowed: a command line only "
                                               "with a kernel or a bare-kernel artifact)",
                                               field_quote(q, spec->cmdline));
        }
        if (!isempty(spec->disk)) {
                r = check_path("disk", spec->disk, err);
                if (r < 0)
                        return r;
        }

        return check_forwards(spec, err);
}


/* --- the provisioning fields --- */

#define SPEC_MAX_URL 4096U
#define SPEC_MAX_SECRET 4096U
#define SPEC_MAX_SSH_KEYS 64U
#define SPEC_MAX_EXTRA_DEBS 64U
#define SPEC_MAX_SHARES 64U
#define SPEC_MAX_DISK_GIB (64U * 1024U)

/* A URL: scheme among the allowed ones, no whitespace or control characters, no quotes, a host (or an absolute
 * path for file://). Credentials in the URL are refused: they belong in the user/password fields. */
static int check_url(const char *field, const char *url, bool allow_file, HydraError *err) {
        char q[QUOTE_BUF_SIZE], c[16];
        const char *rest, *authority_end, *at;
        int r;

        r = check_no_control(field, url, err);
        if (r < 0)
                return r;
        r = check_length(field, url, SPEC_MAX_URL, err);
        if (r < 0)
                return r;
        for (const char *p = url; *p; p++)
                if (*p == ' ' || *p == '"' || *p == '\'' || *p == '`' || *p == '\\' || *p == '<' || *p == '>' ||
                    *p == '$' || (unsigned char) *p >= 0x7f)
                        return hydra_error_set(err, -EINVAL,
                                               "%s: '%s' contains %s (allowed: a URL with special characters "
                                               "percent-encoded)",
                                               field, field_quote_url(q, url), field_describe_char(c, *p));

        if (strncmp(url, "http://", 7) == 0)
                rest = url + 7;
        else if (strncmp(url, "https://", 8) == 0)
                rest = url + 8;
        else if (allow_file && strncmp(url, "file://", 7) == 0) {
                if (url[7] != '/')
                        return hydra_error_set(err, -EINVAL,
                                               "%s: '%s' is not a file URL with an absolute path (allowed: "
                                               "file:///PATH)",
                                               field, field_quote_url(q, url));
                return 0;
        } else
                return hydra_error_set(err, -EINVAL, "%s: '%s' has an unsupported scheme (allowed: %s)", field,
                                       field_quote_url(q, url), allow_file ? "http://, https://, file://" : "http://, https://");

        authority_end = rest + strcspn(rest, "/?#");
        if (authority_end == rest)
                return hydra_error_set(err, -EINVAL, "%s: '%s' has no host (allowed: SCHEME://HOST/PATH)", field,
                                       field_quote_url(q, url));
        at = memchr(rest, '@', (size_t) (authority_end - rest));
        if (at)
                /* Do not quote it: what precedes '@' may be a password. */
                return hydra_error_set(err, -EINVAL,
                                       "%s: the URL contains credentials (user@ or user:password@ before the host); "
                                       "put them in the user and password fields, which never appear in logs",
                                       field);
        return 0;
}

static int check_checksum(const char *field, const char *checksum, HydraError *err) {
        char q[QUOTE_BUF_SIZE];
        const char *hex;
        size_t want;

        if (strncmp(checksum, "sha256:", 7) == 0)
                hex = checksum + 7, want = 64;
        else if (strncmp(checksum, "sha512:", 7) == 0)
                hex = checksum + 7, want = 128;
        else
                return hydra_error_set(err, -EINVAL, "%s: '%s' has an unknown algorithm (allowed: sha256:HEX, "
                                       "sha512:HEX)", field, field_quote(q, checksum));
        if (strlen(hex) != want || strspn(hex, "0123456789abcdefABCDEF") != want)
                return hydra_error_set(err, -EINVAL, "%s: '%s' is not %zu hex digits after the algorithm", field,
                                       field_quote(q, checksum), want);
        return 0;
}

/* A secret is never quoted back: only what is wrong with it. */
static int check_secret(const char *field, const char *value, HydraError *err) {
        for (const char *p = value; *p; p++)
                if ((unsigned char) *p < 0x20 || *p == 0x7f)
                        return hydra_error_set(err, -EINVAL,
                                               "%s: contains a control character (value not shown: it is a secret)",
                                               field);
        if (strlen(value) > SPEC_MAX_SECRET)
                return hydra_error_set(err, -EINVAL, "%s: longer than %u bytes (value not shown: it is a secret)",
                                       field, SPEC_MAX_SECRET);
        return 0;
}

static int check_source(const char *name, const Source *src, HydraError *err) {
        char field[64], q[QUOTE_BUF_SIZE];
        int r;

        (void) snprintf(field, sizeof(field), "%s.url", name);
        r = check_url(field, src->url, true, err);
        if (r < 0)
                return r;
        if (!isempty(src->checksum)) {
                (void) snprintf(field, sizeof(field), "%s.checksum", name);
                r = check_checksum(field, src->checksum, err);
                if (r < 0)
                        return r;
        }
        if (!isempty(src->sums_url)) {
                (void) snprintf(field, sizeof(field), "%s.sums_url", name);
                r = check_url(field, src->sums_url, true, err);
                if (r < 0)
                        return r;
                if (!isempty(src->checksum))
                        return hydra_error_set(err, -EINVAL,
                                               "%s.sums_url: given together with %s.checksum (allowed: one of them)",
                                               name, name);
                /* fetch.c looks the URL's file name up in the sums file: there must be one. */
                const char *path = strstr(src->url, "://"), *end, *slash;

                path = path ? path + 3 : src->url;
                path += strcspn(path, "/?#");
                end = path + strcspn(path, "?#");
                slash = memrchr(path, '/', (size_t) (end - path));
                if (!slash || slash + 1 == end)
                        return hydra_error_set(err, -EINVAL, "%s.url: '%s' names no file to look up in %s.sums_url "
                                               "(allowed: a URL ending in a file name)",
                                               name, field_quote_url(q, src->url), name);
        }
        if (!isempty(src->user)) {
                (void) snprintf(field, sizeof(field), "%s.user", name);
                r = check_no_control(field, src->user, err);
                if (r < 0)
                        return r;
                if (strchr(src->user, ':'))
                        return hydra_error_set(err, -EINVAL, "%s: '%s' contains ':' (allowed: a user name without "
                                               "':')", field, field_quote(q, src->user));
        }
        if (!isempty(src->password)) {
                (void) snprintf(field, sizeof(field), "%s.password", name);
                r = check_secret(field, src->password, err);
                if (r < 0)
                        return r;
                if (isempty(src->user))
                        return hydra_error_set(err, -EINVAL, "%s.password: given without %s.user", name, name);
        }
        if (!isempty(src->token)) {
                (void) snprintf(field, sizeof(field), "%s.token", name);
                r = check_secret(field, src->token, err);
                if (r < 0)
                        return r;
        }
        if (!isempty(src->token_header)) {
                (void) snprintf(field, sizeof(field), "%s.token_header", name);
                if (strspn(src->token_header, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") !=
                            strlen(src->token_header) ||
                    strlen(src->token_header) > 64)
                        return hydra_error_set(err, -EINVAL,
                                               "%s: '%s' is not an HTTP header name (allowed: up to 64 letters, "
                                               "digits, '-', '_')",
                                               field, field_quote(q, src->token_header));
        }
        return 0;
}

/* A file name inside the artifact: no directory part. */
static int check_file_name(const char *field, const char *name, HydraError *err) {
        char q[QUOTE_BUF_SIZE], c[16];
        size_t n = name_span(name, SIZE_MAX);

        if (name[n] && name[n] != '+')
                return hydra_error_set(err, -EINVAL, "%s: '%s' contains %s (allowed: a file name of letters, digits, "
                                       "'.', '_', '-', '+')", field, field_quote(q, name), field_describe_char(c, name[n]));
        for (const char *p = name; *p; p++)
                if (!is_name_char(*p) && *p != '+')
                        return hydra_error_set(err, -EINVAL, "%s: '%s' contains %s (allowed: a file name of letters, "
                                               "digits, '.', '_', '-', '+')", field, field_quote(q, name),
                                               field_describe_char(c, *p));
        if (streq(name, ".") || streq(name, ".."))
                return hydra_error_set(err, -EINVAL, "%s: '%s' is not a file name", field, name);
        return 0;
}

static int check_relative_dir(const char *field, const char *dir, HydraError *err) {
        char q[QUOTE_BUF_SIZE];

        if (dir[0] == '/')
                return hydra_error_set(err, -EINVAL, "%s: '%s' is absolute (allowed: a directory inside the archive, "
                                       "e.g. rimdworkspace_Q2_2026_1)", field, field_quote(q, dir));
        for (const char *p = dir; *p;) {
                size_t len = strcspn(p, "/");
                char comp[256];
                int r;

                if (len == 0 || len >= sizeof(comp))
                        return hydra_error_set(err, -EINVAL, "%s: '%s' has an empty or overlong component", field,
                                               field_quote(q, dir));
                memcpy(comp, p, len);
                comp[len] = '\0';
                r = check_file_name(field, comp, err);
                if (r < 0)
                        return r;
                p += len;
                p += *p == '/';
        }
        return 0;
}

static int parse_ipv4(const char *field, const char *value, const char *fallback, struct in_addr *ret,
                      HydraError *err) {
        int r;

        if (isempty(value))
                value = fallback;
        r = field_check_ipv4(field, value, err);
        if (r < 0)
                return r;
        return inet_pton(AF_INET, value, ret) == 1 ? 0 : hydra_error_set(err, -EINVAL, "%s: not an IPv4 address",
                                                                       field);
}

/* QEMU's slirp refuses these at start-up ("DNS must be different from host",
 * "DHCP must be different from host and DNS"; the DHCP start is the guest's address): said here in the spec's
 * words, for the defaults too, so that RegisterVm refuses what StartVm would. */
int vm_spec_network(const VmSpec *spec, SpecNetwork *ret, HydraError *err) {
        SpecNetwork n = {};
        char a[INET_ADDRSTRLEN], b[INET_ADDRSTRLEN];
        int r;

        n.prefix_len = spec->network.prefix_len ? spec->network.prefix_len : SPEC_DEFAULT_PREFIX_LEN;
        if (n.prefix_len > 30)
                return hydra_error_set(err, -EINVAL, "network.prefix_len: %" PRIu32 " is out of range (allowed: "
                                       "1-30)", n.prefix_len);
        if ((r = parse_ipv4("network.guest_ip", spec->network.guest_ip, SPEC_DEFAULT_GUEST_IP, &n.guest, err)) < 0 ||
            (r = parse_ipv4("network.gateway", spec->network.gateway, SPEC_DEFAULT_GATEWAY, &n.gateway, err)) < 0 ||
            (r = parse_ipv4("network.dns", spec->network.dns, SPEC_DEFAULT_DNS, &n.dns, err)) < 0)
                return r;
        n.netmask.s_addr = htonl(~UINT32_C(0) << (32 - n.prefix_len));
        n.network.s_addr = n.guest.s_addr & n.netmask.s_addr;
        (void) inet_ntop(AF_INET, &n.network, a, sizeof(a));

        if ((n.gateway.s_addr & n.netmask.s_addr) != n.network.s_addr)
                return hydra_error_set(err, -EINVAL, "network.gateway: %s is not in the guest's network %s/%" PRIu32
                                       " (allowed: an address in that network)",
                                       inet_ntop(AF_INET, &n.gateway, b, sizeof(b)), a, n.prefix_len);
        if (n.gateway.s_addr == n.dns.s_addr)
                return hydra_error_set(err, -EINVAL, "network.dns: %s is the gateway's address (allowed: an address "
                                       "apart from network.gateway)",
                                       inet_ntop(AF_INET, &n.dns, b, sizeof(b)));
        if (n.guest.s_addr == n.gateway.s_addr || n.guest.s_addr == n.dns.s_addr)
                return hydra_error_set(err, -EINVAL, "network.guest_ip: %s is the %s's address (allowed: an address "
                                       "apart from network.gateway and network.dns)",
                                       inet_ntop(AF_INET, &n.guest, b, sizeof(b)),
                                       n.guest.s_addr == n.gateway.s_addr ? "gateway" : "DNS server");
        *ret = n;
        return 0;
}

static int check_network(const VmSpec *spec, HydraError *err) {
        SpecNetwork net;
        int r;

        r = vm_spec_network(spec, &net, err);
        if (r < 0)
                return r;
        if (spec->network.mac && (r = field_check_mac("network.mac", spec->network.mac, err)) < 0)
                return r;
        return 0;
}

static int check_guest(const VmSpec *spec, HydraError *err) {
        char field[64];
        size_t n;
        int r;

        if (spec->guest.password)
                return hydra_error_set(err, -EINVAL, "guest.password: a cleartext password cannot be stored; it "
                                       "must be hashed first (value not shown: it is a secret)");
        if (spec->guest.username && (r = field_check_username("guest.username", spec->guest.username, err)) < 0)
                return r;
        if (spec->guest.password_hash &&
            (r = field_check_password_hash("guest.password_hash", spec->guest.password_hash, err)) < 0)
                return r;
        if (spec->guest.hostname && (r = field_check_hostname("guest.hostname", spec->guest.hostname, err)) < 0)
                return r;
        n = strv_length(spec->guest.ssh_authorized_keys);
        if (n > SPEC_MAX_SSH_KEYS)
                return hydra_error_set(err, -EINVAL, "guest.ssh_authorized_keys: %zu keys (allowed: at most %u)", n,
                                       SPEC_MAX_SSH_KEYS);
        for (size_t i = 0; i < n; i++) {
                (void) snprintf(field, sizeof(field), "guest.ssh_authorized_keys[%zu]", i);
                r = field_check_ssh_key(field, spec->guest.ssh_authorized_keys[i], err);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int check_software(const VmSpec *spec, HydraError *err) {
        char field[64];
        size_t n;
        int r;

        if (spec->software.csi_grpc_proxy_url) {
                r = field_check_guest_url("software.csi_grpc_proxy_url", spec->software.csi_grpc_proxy_url, err);
                if (r < 0)
                        return r;
        }
        if (spec->software.k3s_version) {
                r = field_check_k3s_version("software.k3s_version", spec->software.k3s_version, err);
                if (r < 0)
                        return r;
        }
        if (spec->software.kernel_package) {
                r = field_check_package("software.kernel_package", spec->software.kernel_package, err);
                if (r < 0)
                        return r;
        }
        if (spec->software.sandbox_image &&
            (r = field_check_image_ref("software.sandbox_image", spec->software.sandbox_image, err)) < 0)
                return r;
        if (spec->software.sandbox_image_url &&
            (r = field_check_guest_url("software.sandbox_image_url", spec->software.sandbox_image_url, err)) < 0)
                return r;
        if (spec->software.crismux_url &&
            (r = field_check_guest_url("software.crismux_url", spec->software.crismux_url, err)) < 0)
                return r;
        if (spec->software.crismux_sha256 &&
            (r = field_check_sha256("software.crismux_sha256", spec->software.crismux_sha256, err)) < 0)
                return r;
        n = strv_length(spec->software.extra_debs);
        if (n > SPEC_MAX_EXTRA_DEBS)
                return hydra_error_set(err, -EINVAL, "software.extra_debs: %zu entries (allowed: at most %u)", n,
                                       SPEC_MAX_EXTRA_DEBS);
        for (size_t i = 0; i < n; i++) {
                (void) snprintf(field, sizeof(field), "software.extra_debs[%zu]", i);
                r = field_check_guest_url(field, spec->software.extra_debs[i], err);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int check_shares(const VmSpec *spec, HydraError *err) {
        char field[64];
        int r;

        if ((int) spec->shares.kubelet < 0 || spec->shares.kubelet >= _KUBELET_SHARES_MAX)
                return hydra_error_set(err, -EINVAL, "shares.kubelet: %d is not known (allowed: virtio, tcp, none)",
                                       (int) spec->shares.kubelet);
        if (spec->shares.kubelet_host_dir) {
                r = check_path("shares.kubelet_host_dir", spec->shares.kubelet_host_dir, err);
                if (r < 0)
                        return r;
        }
        if (spec->shares.diod_port > 65535)
                return hydra_error_set(err, -EINVAL, "shares.diod_port: %" PRIu32 " is out of range (allowed: "
                                       "1-65535)", spec->shares.diod_port);
        if (spec->shares.n_extra > SPEC_MAX_SHARES)
                return hydra_error_set(err, -EINVAL, "shares.extra: %zu shares (allowed: at most %u)",
                                       spec->shares.n_extra, SPEC_MAX_SHARES);
        for (size_t i = 0; i < spec->shares.n_extra; i++) {
                const Share *sh = &spec->shares.extra[i];

                (void) snprintf(field, sizeof(field), "shares.extra[%zu].host_path", i);
                if (isempty(sh->host_path))
                        return hydra_error_set(err, -EINVAL, "%s: empty (allowed: an absolute path)", field);
                r = check_path(field, sh->host_path, err);
                if (r < 0)
                        return r;
                (void) snprintf(field, sizeof(field), "shares.extra[%zu].guest_path", i);
                r = field_check_guest_path(field, strempty(sh->guest_path), err);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int check_devices(const VmSpec *spec, HydraError *err) {
        int r;

        if (spec->devices.vsock && (spec->devices.vsock_cid < 3 || spec->devices.vsock_cid == UINT32_MAX))
                return hydra_error_set(err, -EINVAL, "devices.vsock_cid: %" PRIu32 " is reserved (allowed: "
                                       "3-4294967294)", spec->devices.vsock_cid);
        if (spec->devices.gpu && spec->devices.gpu_vram_gib > 64)
                return hydra_error_set(err, -EINVAL, "devices.gpu_vram_gib: %" PRIu32 " is out of range (allowed: "
                                       "1-64)", spec->devices.gpu_vram_gib);
        if ((int) spec->devices.shmem < 0 || spec->devices.shmem >= _SHMEM_MAX)
                return hydra_error_set(err, -EINVAL, "devices.shmem: %d is not known (allowed: none, nvdimm, "
                                       "ivshmem)", (int) spec->devices.shmem);
        if (spec->devices.shmem != SHMEM_NONE) {
                if (spec->devices.shmem_size_gib > 1024)
                        return hydra_error_set(err, -EINVAL, "devices.shmem_size_gib: %" PRIu32 " is out of range "
                                               "(allowed: 1-1024)", spec->devices.shmem_size_gib);
                if (spec->devices.shmem_path) {
                        r = check_path("devices.shmem_path", spec->devices.shmem_path, err);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

/* The forward that carries a probe: a TCP forward to that guest port. */
static const PortForward *find_tcp_forward(const VmSpec *spec, uint32_t guest_port) {
        for (size_t i = 0; i < spec->n_forwards; i++)
                if (spec->forwards[i].protocol == FORWARD_TCP && spec->forwards[i].guest_port == guest_port)
                        return &spec->forwards[i];
        return NULL;
}

static int check_supervision(const VmSpec *spec, HydraError *err) {
        const typeof(spec->supervision) *s = &spec->supervision;
        int r;

        if ((int) s->restart < 0 || s->restart >= _RESTART_POLICY_MAX)
                return hydra_error_set(err, -EINVAL, "supervision.restart: %d is not known (allowed: no, "
                                       "on-failure, always)", (int) s->restart);
        if (s->max_restarts > 1000)
                return hydra_error_set(err, -EINVAL, "supervision.max_restarts: %" PRIu32 " is out of range "
                                       "(allowed: 1-1000)", s->max_restarts);
        if (s->restart_window_sec > 7 * 86400)
                return hydra_error_set(err, -EINVAL, "supervision.restart_window: %" PRIu32 " s is out of range "
                                       "(allowed: 1-604800 s)", s->restart_window_sec);
        if (s->stop_timeout_sec > 3600)
                return hydra_error_set(err, -EINVAL, "supervision.stop_timeout: %" PRIu32 " s is out of range "
                                       "(allowed: 0-3600 s; 0 is the daemon's setting)", s->stop_timeout_sec);
        if (s->ready_timeout_sec > SPEC_MAX_READY_TIMEOUT_SEC)
                return hydra_error_set(err, -EINVAL, "supervision.ready_timeout: %" PRIu32 " s is out of range "
                                       "(allowed: 0-%u s; 0 is no limit)", s->ready_timeout_sec,
                                       SPEC_MAX_READY_TIMEOUT_SEC);
        if ((int) s->probe < 0 || s->probe >= _PROBE_KIND_MAX)
                return hydra_error_set(err, -EINVAL, "supervision.probe: %d is not known (allowed: console, tcp, "
                                       "containerd, none)", (int) s->probe);

        if (s->probe_pattern) {
                regex_t re;
                char msg[128];

                if (s->probe != PROBE_CONSOLE)
                        return hydra_error_set(err, -EINVAL, "supervision.probe_pattern: given for probe %s "
                                               "(allowed: only with probe console)", probe_kind_to_string(s->probe));
                r = check_length("supervision.probe_pattern", s->probe_pattern, SPEC_MAX_PROBE_PATTERN, err);
                if (r < 0)
                        return r;
                r = check_no_control("supervision.probe_pattern", s->probe_pattern, err);
                if (r < 0)
                        return r;
                r = regcomp(&re, s->probe_pattern, REG_EXTENDED | REG_NOSUB);
                if (r != 0) {
                        regerror(r, &re, msg, sizeof(msg));
                        return hydra_error_set(err, -EINVAL, "supervision.probe_pattern: not a valid extended "
                                               "regular expression: %s", msg);
                }
                regfree(&re);
        }

        if (s->probe == PROBE_TCP || s->probe == PROBE_CONTAINERD) {
                if (s->probe_port == 0 || s->probe_port > 65535)
                        return hydra_error_set(err, -EINVAL, "supervision.probe_port: %" PRIu32 " is out of range "
                                               "(allowed: 1-65535, the guest port of a TCP forward)",
                                               s->probe_port);
                if (!find_tcp_forward(spec, s->probe_port))
                        return hydra_error_set(err, -EINVAL, "supervision.probe_port: no TCP forward to guest port "
                                               "%" PRIu32 " (allowed: the guest port of one of forwards[])",
                                               s->probe_port);
        } else if (s->probe_port != 0)
                return hydra_error_set(err, -EINVAL, "supervision.probe_port: given for probe %s (allowed: only "
                                       "with probe tcp or containerd)", probe_kind_to_string(s->probe));
        /* A guest with no probe is never ready: a limit would fail every start. */
        if (s->ready_timeout_sec > 0 && s->probe == PROBE_NONE)
                return hydra_error_set(err, -EINVAL, "supervision.ready_timeout: given for probe none (allowed: "
                                       "only with probe console, tcp or containerd)");
        if (s->start_after && role_from_string(s->start_after) < 0) {
                char q[QUOTE_BUF_SIZE];

                return hydra_error_set(err, -EINVAL, "supervision.start_after: '%s' is not a role (allowed: host, "
                                       "isolated: the other VM; empty for none)",
                                       field_quote(q, s->start_after));
        }
        return 0;
}

Role vm_spec_start_after(const VmSpec *spec) {
        if (isempty(spec->supervision.start_after))
                return _ROLE_INVALID;
        return role_from_string(spec->supervision.start_after);
}

int vm_spec_validate_role(const VmSpec *spec, Role role, HydraError *err) {
        if (vm_spec_start_after(spec) == role)
                return hydra_error_set(err, -EINVAL, "supervision.start_after: '%s' is this VM's own role (allowed: "
                                       "the other VM, %s, or empty for none)", role_to_string(role),
                                       role_to_string(role == ROLE_HOST ? ROLE_ISOLATED : ROLE_HOST));
        return 0;
}

static int check_resources(const VmSpec *spec, HydraError *err) {
        uint64_t memory_mib = spec->memory_mib; /* checked before: at least 64 */
        uint64_t floor_bytes = (memory_mib + SPEC_MIN_QEMU_OVERHEAD_MIB) * UINT64_C(1024) * 1024;
        uint64_t max_bytes = (SPEC_MAX_MEMORY_MIB + SPEC_MIN_QEMU_OVERHEAD_MIB) * UINT64_C(1024) * 1024 * 2;

        if (spec->resources.cpu_quota_percent > SPEC_MAX_CPU_QUOTA_PERCENT)
                return hydra_error_set(err, -EINVAL, "resources.cpu_quota: %" PRIu32 "%% is out of range (allowed: "
                                       "1%%-%u%%, 100%% being one CPU's time; 0: no limit)",
                                       spec->resources.cpu_quota_percent, SPEC_MAX_CPU_QUOTA_PERCENT);
        if (spec->resources.memory_max == 0)
                return 0;
        if (spec->resources.memory_max < floor_bytes)
                return hydra_error_set(err, -EINVAL, "resources.memory_max: %" PRIu64 " bytes is less than the "
                                       "guest's memory (%" PRIu64 " MiB) plus %u MiB for QEMU itself (allowed: at "
                                       "least %" PRIu64 " bytes, or 0: no limit); QEMU would be killed by the OOM "
                                       "killer as the guest uses its memory", spec->resources.memory_max, memory_mib,
                                       SPEC_MIN_QEMU_OVERHEAD_MIB, floor_bytes);
        if (spec->resources.memory_max > max_bytes)
                return hydra_error_set(err, -EINVAL, "resources.memory_max: %" PRIu64 " bytes is out of range "
                                       "(allowed: up to %" PRIu64 " bytes, or 0: no limit)",
                                       spec->resources.memory_max, max_bytes);
        return 0;
}

static int check_bare(const VmSpec *spec, HydraError *err) {
        int r;

        r = check_source("bare.artifact", &spec->bare.artifact, err);
        if (r < 0)
                return r;
        if (spec->bare.dir && (r = check_relative_dir("bare.dir", spec->bare.dir, err)) < 0)
                return r;
        if (spec->bare.kernel && (r = check_file_name("bare.kernel", spec->bare.kernel, err)) < 0)
                return r;
        if (spec->bare.kernel_version &&
            (r = check_file_name("bare.kernel_version", spec->bare.kernel_version, err)) < 0)
                return r;
        if (spec->bare.initrd && (r = check_file_name("bare.initrd", spec->bare.initrd, err)) < 0)
                return r;
        if (spec->bare.rootfs && (r = check_file_name("bare.rootfs", spec->bare.rootfs, err)) < 0)
                return r;
        return 0;
}

int vm_spec_validate(const VmSpec *spec, HydraError *err) {
        BootMode mode = vm_spec_boot_mode(spec);
        char q[QUOTE_BUF_SIZE];
        int r;

        r = validate_basic(spec, err);
        if (r < 0)
                return r;

        if (spec->disk_size_gib > SPEC_MAX_DISK_GIB)
                return hydra_error_set(err, -EINVAL, "disk_size_gib: %" PRIu32 " is out of range (allowed: 0-%u)",
                                       spec->disk_size_gib, SPEC_MAX_DISK_GIB);
        if (spec->firmware_code && (r = check_path("firmware.code", spec->firmware_code, err)) < 0)
                return r;
        if (spec->firmware_vars) {
                r = check_path("firmware.vars", spec->firmware_vars, err);
                if (r < 0)
                        return r;
                if (!spec->firmware_code)
                        return hydra_error_set(err, -EINVAL, "firmware.vars: '%s' given without firmware.code",
                                               field_quote(q, spec->firmware_vars));
        }

        if (mode == BOOT_CLOUD_IMAGE) {
                r = check_source("image", &spec->image, err);
                if (r < 0)
                        return r;
                if (spec->disk)
                        return hydra_error_set(err, -EINVAL, "disk: '%s' given together with image.url (allowed: "
                                               "one of them; the disk is made from the image)",
                                               field_quote(q, spec->disk));
                if (!isempty(spec->bare.artifact.url) && !spec->bare.encrypted_tools)
                        return hydra_error_set(err, -EINVAL, "bare.artifact.url: given together with image.url "
                                               "(allowed: with a cloud image, the artifact only supplies the "
                                               "encrypted-container tools: set bare.encrypted_tools)");
        }
        if (!isempty(spec->bare.artifact.url)) {
                r = check_bare(spec, err);
                if (r < 0)
                        return r;
        }
        if (mode == BOOT_BARE_KERNEL) {
                if (spec->kernel)
                        return hydra_error_set(err, -EINVAL, "kernel.kernel: '%s' given together with "
                                               "bare.artifact.url (allowed: one of them)", field_quote(q, spec->kernel));
                if (spec->disk)
                        return hydra_error_set(err, -EINVAL, "disk: '%s' given together with bare.artifact.url "
                                               "(allowed: one of them; the rootfs comes from the artifact)",
                                               field_quote(q, spec->disk));
        }
        if (mode != BOOT_CLOUD_IMAGE && (spec->keep_pristine || spec->reuse_disk_on_change) &&
            mode != BOOT_BARE_KERNEL)
                return hydra_error_set(err, -EINVAL, "keep_pristine/reuse_disk_on_change: set without image.url or "
                                       "bare.artifact.url (allowed: only when hydrad makes the disk)");
        if (mode == BOOT_LOCAL && spec->disk_size_gib > 0)
                return hydra_error_set(err, -EINVAL, "disk_size_gib: %" PRIu32 " set for a local disk (allowed: "
                                       "only when hydrad makes the disk from image.url or bare.artifact.url)",
                                       spec->disk_size_gib);

        r = check_network(spec, err);
        if (r < 0)
                return r;
        r = check_guest(spec, err);
        if (r < 0)
                return r;
        r = check_software(spec, err);
        if (r < 0)
                return r;
        r = check_shares(spec, err);
        if (r < 0)
                return r;
        r = check_devices(spec, err);
        if (r < 0)
                return r;
        r = check_resources(spec, err);
        if (r < 0)
                return r;
        return check_supervision(spec, err);
}

int vm_spec_hash_password(VmSpec *spec, HydraError *err) {
        char setting[CRYPT_GENSALT_OUTPUT_SIZE];
        struct crypt_data *data = NULL;
        char *hash;

        if (!spec->guest.password)
                return 0;
        /* crypt_rn() refuses longer phrases (ERANGE): the client's input, not our failure. */
        if (strlen(spec->guest.password) >= CRYPT_MAX_PASSPHRASE_SIZE)
                return hydra_error_set(err, -EINVAL, "guest.password: the password is longer than %d bytes "
                                       "(value not shown: it is a secret)", CRYPT_MAX_PASSPHRASE_SIZE - 1);

        data = calloc(1, sizeof(*data));
        if (!data)
                return hydra_error_set(err, -ENOMEM, "guest.password: out of memory");
        if (!crypt_gensalt_rn("$y$", 0, NULL, 0, setting, sizeof(setting)) ||
            !crypt_rn(spec->guest.password, setting, data, sizeof(*data)) || data->output[0] == '*') {
                explicit_bzero(data, sizeof(*data));
                free(data);
                return hydra_error_set(err, -EIO, "guest.password: hashing with yescrypt failed");
        }
        hash = strdup(data->output);
        explicit_bzero(data, sizeof(*data));
        free(data);
        if (!hash)
                return hydra_error_set(err, -ENOMEM, "guest.password: out of memory");

        explicit_bzero(spec->guest.password, strlen(spec->guest.password));
        free(spec->guest.password);
        spec->guest.password = NULL;
        free(spec->guest.password_hash);
        spec->guest.password_hash = hash;
        return 0;
}

bool vm_spec_password_matches(const char *password, const char *hash) {
        struct crypt_data *data = calloc(1, sizeof(*data));
        bool match;

        if (!data)
                return false;
        match = crypt_rn(password, hash, data, sizeof(*data)) && data->output[0] != '*' &&
                streq(data->output, hash);
        explicit_bzero(data, sizeof(*data));
        free(data);
        return match;
}

static int redact(char **s) {
        char *v;

        if (isempty(*s))
                return 0;
        v = strdup("(set)");
        if (!v)
                return -ENOMEM;
        explicit_bzero(*s, strlen(*s));
        free(*s);
        *s = v;
        return 0;
}

int vm_spec_redact(VmSpec *spec) {
        if (redact(&spec->image.password) < 0 || redact(&spec->image.token) < 0 ||
            redact(&spec->bare.artifact.password) < 0 || redact(&spec->bare.artifact.token) < 0 ||
            redact(&spec->guest.password) < 0)
                return -ENOMEM;
        return 0;
}
