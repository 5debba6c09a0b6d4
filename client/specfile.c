/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <inttypes.h>
#include <regex.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "field.h"
#include "password.h"
#include "specfile.h"
#include "utf8.h"

/* Longest line we accept; inih's buffer is made larger so that it never splits a line (see spec_load_file). */
#define SPEC_MAX_LINE 4096
/* Largest file ssh_key_file reads: a few keys, not a mistake such as a disk image. */
#define SSH_KEY_FILE_MAX (64 * 1024)

/* What a value is; each type has one parser (spec_set) and one line in SPEC-FORMAT.md. */
typedef enum ValueType {
        VT_CPUS,          /* decimal number */
        VT_MEMORY,        /* size; a plain number is MiB */
        VT_SIZE_GIB,      /* size; a plain number is GiB */
        VT_ACCEL,
        VT_ARCH,
        VT_KUBELET,
        VT_SHMEM,
        VT_BOOL,
        VT_BOOL_NEGATED,  /* software.containerd_proxy: the API says disable_containerd_proxy */
        VT_WORD,          /* one word: no blanks, no control characters */
        VT_TEXT,          /* a line of text, taken literally */
        VT_PATH,          /* a host path; relative: resolved */
        VT_GUEST_PATH,    /* an absolute path in the guest */
        VT_ARCHIVE_NAME,  /* a file name inside an archive: relative, no ".." */
        VT_URL,           /* a URL hydrad fetches */
        VT_GUEST_URL,     /* a URL the guest fetches (field_check_guest_url) */
        VT_K3S_VERSION,
        VT_IMAGE_REF,     /* a container image reference (field_check_image_ref) */
        VT_SHA256,        /* 64 hex digits */
        VT_CHECKSUM,
        VT_SECRET,
        VT_HEADER,
        VT_USERNAME,
        VT_HOSTNAME,
        VT_PASSWORD_HASH,
        VT_PACKAGE,
        VT_PORT,
        VT_IPV4,
        VT_PREFIX_LEN,
        VT_MAC,
        VT_VSOCK_CID,
        VT_FORWARD,       /* the repeatable ones: each line appends, an empty value clears */
        VT_SHARE,
        VT_SSH_KEY,
        VT_SSH_KEY_FILE,
        VT_URL_LIST,      /* of guest URLs */
        VT_RESTART,       /* no, on-failure, always */
        VT_PROBE,         /* console, tcp, containerd, none */
        VT_MAX_RESTARTS,  /* 1-1000 */
        VT_DURATION,      /* seconds: a plain number or with a unit (s, m, h, d); 1 to the key's max */
        VT_REGEX,         /* a POSIX extended regular expression, one line */
        VT_ROLE,          /* host, isolated */
        VT_CPU_QUOTA,     /* a percentage with %, as systemd's CPUQuota=: 150% is one and a half CPUs */
        VT_BYTES,         /* size; a plain number is bytes, as systemd's MemoryMax= */
} ValueType;

typedef enum SpecKey {
        KEY_VM_CPUS,
        KEY_VM_MEMORY,
        KEY_VM_ACCEL,
        KEY_VM_ARCH,
        KEY_VM_MACHINE,
        KEY_VM_CPU,
        KEY_VM_DISK_SIZE,
        KEY_KERNEL_PATH,
        KEY_KERNEL_INITRD,
        KEY_KERNEL_CMDLINE,
        KEY_DISK_PATH,
        KEY_FIRMWARE_CODE,
        KEY_FIRMWARE_VARS,
        /* The Source keys of [image] and [bare], in the same order (source_field). */
        KEY_IMAGE_URL,
        KEY_IMAGE_CHECKSUM,
        KEY_IMAGE_SUMS_URL,
        KEY_IMAGE_USER,
        KEY_IMAGE_PASSWORD,
        KEY_IMAGE_TOKEN,
        KEY_IMAGE_TOKEN_HEADER,
        KEY_IMAGE_KEEP_PRISTINE,
        KEY_IMAGE_REUSE_DISK_ON_CHANGE,
        KEY_BARE_URL,
        KEY_BARE_CHECKSUM,
        KEY_BARE_SUMS_URL,
        KEY_BARE_USER,
        KEY_BARE_PASSWORD,
        KEY_BARE_TOKEN,
        KEY_BARE_TOKEN_HEADER,
        KEY_BARE_DIR,
        KEY_BARE_KERNEL,
        KEY_BARE_KERNEL_VERSION,
        KEY_BARE_INITRD,
        KEY_BARE_ROOTFS,
        KEY_BARE_ENCRYPTED_TOOLS,
        KEY_BARE_CMDLINE,
        KEY_GUEST_USERNAME,
        KEY_GUEST_PASSWORD,
        KEY_GUEST_PASSWORD_HASH,
        KEY_GUEST_HOSTNAME,
        KEY_GUEST_SSH_AUTHORIZED_KEY,
        KEY_GUEST_SSH_KEY_FILE,
        KEY_SOFTWARE_CONTAINERD_PROXY,
        KEY_SOFTWARE_CSI_GRPC_PROXY_URL,
        KEY_SOFTWARE_K3S_DIOD,
        KEY_SOFTWARE_K3S_VERSION,
        KEY_SOFTWARE_KERNEL_PACKAGE,
        KEY_SOFTWARE_EXTRA_DEB,
        KEY_SOFTWARE_REBOOT_AFTER_INSTALL,
        KEY_SOFTWARE_PACKAGE_UPDATE,
        KEY_SOFTWARE_PACKAGE_UPGRADE,
        KEY_SOFTWARE_SANDBOX_IMAGE,
        KEY_SOFTWARE_SANDBOX_IMAGE_URL,
        KEY_SOFTWARE_CRISMUX_URL,
        KEY_SOFTWARE_CRISMUX_SHA256,
        KEY_NETWORK_FORWARD,
        KEY_NETWORK_GUEST_IP,
        KEY_NETWORK_GATEWAY,
        KEY_NETWORK_DNS,
        KEY_NETWORK_PREFIX_LEN,
        KEY_NETWORK_MAC,
        KEY_SHARES_KUBELET,
        KEY_SHARES_KUBELET_HOST_DIR,
        KEY_SHARES_DIOD_PORT,
        KEY_SHARES_SHARE,
        KEY_DEVICES_VSOCK,
        KEY_DEVICES_VSOCK_CID,
        KEY_DEVICES_GPU,
        KEY_DEVICES_GPU_VRAM,
        KEY_DEVICES_SHMEM,
        KEY_DEVICES_SHMEM_SIZE,
        KEY_DEVICES_SHMEM_PATH,
        KEY_SUPERVISION_RESTART,
        KEY_SUPERVISION_MAX_RESTARTS,
        KEY_SUPERVISION_RESTART_WINDOW,
        KEY_SUPERVISION_AUTOSTART,
        KEY_SUPERVISION_STOP_TIMEOUT,
        KEY_SUPERVISION_PROBE,
        KEY_SUPERVISION_PROBE_PATTERN,
        KEY_SUPERVISION_PROBE_PORT,
        KEY_SUPERVISION_READY_TIMEOUT,
        KEY_SUPERVISION_START_AFTER,
        KEY_RESOURCES_CPU_QUOTA,
        KEY_RESOURCES_MEMORY_MAX,
        _KEY_MAX,
        _KEY_INVALID = -EINVAL,
} SpecKey;

static const char *const section_table[] = {
        "vm",    "kernel",   "disk",    "firmware", "image",   "bare",
        "guest", "software", "network", "shares",   "devices", "supervision",
        "resources",
};

static const struct {
        const char *section;
        const char *name;
        ValueType type;
        bool secret; /* refused by --set; wiped from memory; never quoted */
        uint32_t max; /* VT_DURATION: the largest value, in seconds (hydrad's limit) */
} key_table[_KEY_MAX] = {
        [KEY_VM_CPUS] = { "vm", "cpus", VT_CPUS },
        [KEY_VM_MEMORY] = { "vm", "memory", VT_MEMORY },
        [KEY_VM_ACCEL] = { "vm", "accel", VT_ACCEL },
        [KEY_VM_ARCH] = { "vm", "arch", VT_ARCH },
        [KEY_VM_MACHINE] = { "vm", "machine", VT_WORD },
        [KEY_VM_CPU] = { "vm", "cpu", VT_WORD },
        [KEY_VM_DISK_SIZE] = { "vm", "disk_size", VT_SIZE_GIB },
        [KEY_KERNEL_PATH] = { "kernel", "path", VT_PATH },
        [KEY_KERNEL_INITRD] = { "kernel", "initrd", VT_PATH },
        [KEY_KERNEL_CMDLINE] = { "kernel", "cmdline", VT_TEXT },
        [KEY_DISK_PATH] = { "disk", "path", VT_PATH },
        [KEY_FIRMWARE_CODE] = { "firmware", "code", VT_PATH },
        [KEY_FIRMWARE_VARS] = { "firmware", "vars", VT_PATH },
        [KEY_IMAGE_URL] = { "image", "url", VT_URL },
        [KEY_IMAGE_CHECKSUM] = { "image", "checksum", VT_CHECKSUM },
        [KEY_IMAGE_SUMS_URL] = { "image", "sums_url", VT_URL },
        [KEY_IMAGE_USER] = { "image", "user", VT_TEXT },
        [KEY_IMAGE_PASSWORD] = { "image", "password", VT_SECRET, true },
        [KEY_IMAGE_TOKEN] = { "image", "token", VT_SECRET, true },
        [KEY_IMAGE_TOKEN_HEADER] = { "image", "token_header", VT_HEADER },
        [KEY_IMAGE_KEEP_PRISTINE] = { "image", "keep_pristine", VT_BOOL },
        [KEY_IMAGE_REUSE_DISK_ON_CHANGE] = { "image", "reuse_disk_on_change", VT_BOOL },
        [KEY_BARE_URL] = { "bare", "url", VT_URL },
        [KEY_BARE_CHECKSUM] = { "bare", "checksum", VT_CHECKSUM },
        [KEY_BARE_SUMS_URL] = { "bare", "sums_url", VT_URL },
        [KEY_BARE_USER] = { "bare", "user", VT_TEXT },
        [KEY_BARE_PASSWORD] = { "bare", "password", VT_SECRET, true },
        [KEY_BARE_TOKEN] = { "bare", "token", VT_SECRET, true },
        [KEY_BARE_TOKEN_HEADER] = { "bare", "token_header", VT_HEADER },
        [KEY_BARE_DIR] = { "bare", "dir", VT_ARCHIVE_NAME },
        [KEY_BARE_KERNEL] = { "bare", "kernel", VT_ARCHIVE_NAME },
        [KEY_BARE_KERNEL_VERSION] = { "bare", "kernel_version", VT_WORD },
        [KEY_BARE_INITRD] = { "bare", "initrd", VT_ARCHIVE_NAME },
        [KEY_BARE_ROOTFS] = { "bare", "rootfs", VT_ARCHIVE_NAME },
        [KEY_BARE_ENCRYPTED_TOOLS] = { "bare", "encrypted_tools", VT_BOOL },
        [KEY_BARE_CMDLINE] = { "bare", "cmdline", VT_TEXT },
        [KEY_GUEST_USERNAME] = { "guest", "username", VT_USERNAME },
        [KEY_GUEST_PASSWORD] = { "guest", "password", VT_SECRET, true },
        [KEY_GUEST_PASSWORD_HASH] = { "guest", "password_hash", VT_PASSWORD_HASH },
        [KEY_GUEST_HOSTNAME] = { "guest", "hostname", VT_HOSTNAME },
        [KEY_GUEST_SSH_AUTHORIZED_KEY] = { "guest", "ssh_authorized_key", VT_SSH_KEY },
        [KEY_GUEST_SSH_KEY_FILE] = { "guest", "ssh_key_file", VT_SSH_KEY_FILE },
        [KEY_SOFTWARE_CONTAINERD_PROXY] = { "software", "containerd_proxy", VT_BOOL_NEGATED },
        [KEY_SOFTWARE_CSI_GRPC_PROXY_URL] = { "software", "csi_grpc_proxy_url", VT_GUEST_URL },
        [KEY_SOFTWARE_K3S_DIOD] = { "software", "k3s_diod", VT_BOOL },
        [KEY_SOFTWARE_K3S_VERSION] = { "software", "k3s_version", VT_K3S_VERSION },
        [KEY_SOFTWARE_KERNEL_PACKAGE] = { "software", "kernel_package", VT_PACKAGE },
        [KEY_SOFTWARE_EXTRA_DEB] = { "software", "extra_deb", VT_URL_LIST },
        [KEY_SOFTWARE_REBOOT_AFTER_INSTALL] = { "software", "reboot_after_install", VT_BOOL },
        [KEY_SOFTWARE_PACKAGE_UPDATE] = { "software", "package_update", VT_BOOL },
        [KEY_SOFTWARE_PACKAGE_UPGRADE] = { "software", "package_upgrade", VT_BOOL },
        [KEY_SOFTWARE_SANDBOX_IMAGE] = { "software", "sandbox_image", VT_IMAGE_REF },
        [KEY_SOFTWARE_SANDBOX_IMAGE_URL] = { "software", "sandbox_image_url", VT_GUEST_URL },
        [KEY_SOFTWARE_CRISMUX_URL] = { "software", "crismux_url", VT_GUEST_URL },
        [KEY_SOFTWARE_CRISMUX_SHA256] = { "software", "crismux_sha256", VT_SHA256 },
        [KEY_NETWORK_FORWARD] = { "network", "forward", VT_FORWARD },
        [KEY_NETWORK_GUEST_IP] = { "network", "guest_ip", VT_IPV4 },
        [KEY_NETWORK_GATEWAY] = { "network", "gateway", VT_IPV4 },
        [KEY_NETWORK_DNS] = { "network", "dns", VT_IPV4 },
        [KEY_NETWORK_PREFIX_LEN] = { "network", "prefix_len", VT_PREFIX_LEN },
        [KEY_NETWORK_MAC] = { "network", "mac", VT_MAC },
        [KEY_SHARES_KUBELET] = { "shares", "kubelet", VT_KUBELET },
        [KEY_SHARES_KUBELET_HOST_DIR] = { "shares", "kubelet_host_dir", VT_PATH },
        [KEY_SHARES_DIOD_PORT] = { "shares", "diod_port", VT_PORT },
        [KEY_SHARES_SHARE] = { "shares", "share", VT_SHARE },
        [KEY_DEVICES_VSOCK] = { "devices", "vsock", VT_BOOL },
        [KEY_DEVICES_VSOCK_CID] = { "devices", "vsock_cid", VT_VSOCK_CID },
        [KEY_DEVICES_GPU] = { "devices", "gpu", VT_BOOL },
        [KEY_DEVICES_GPU_VRAM] = { "devices", "gpu_vram", VT_SIZE_GIB },
        [KEY_DEVICES_SHMEM] = { "devices", "shmem", VT_SHMEM },
        [KEY_DEVICES_SHMEM_SIZE] = { "devices", "shmem_size", VT_SIZE_GIB },
        [KEY_DEVICES_SHMEM_PATH] = { "devices", "shmem_path", VT_PATH },
        [KEY_SUPERVISION_RESTART] = { "supervision", "restart", VT_RESTART },
        [KEY_SUPERVISION_MAX_RESTARTS] = { "supervision", "max_restarts", VT_MAX_RESTARTS },
        [KEY_SUPERVISION_RESTART_WINDOW] = { "supervision", "restart_window", VT_DURATION, .max = 7 * 86400 },
        [KEY_SUPERVISION_AUTOSTART] = { "supervision", "autostart", VT_BOOL },
        [KEY_SUPERVISION_STOP_TIMEOUT] = { "supervision", "stop_timeout", VT_DURATION, .max = 3600 },
        [KEY_SUPERVISION_PROBE] = { "supervision", "probe", VT_PROBE },
        [KEY_SUPERVISION_PROBE_PATTERN] = { "supervision", "probe_pattern", VT_REGEX },
        [KEY_SUPERVISION_PROBE_PORT] = { "supervision", "probe_port", VT_PORT },
        [KEY_SUPERVISION_READY_TIMEOUT] = { "supervision", "ready_timeout", VT_DURATION, .max = 86400 },
        [KEY_SUPERVISION_START_AFTER] = { "supervision", "start_after", VT_ROLE },
        [KEY_RESOURCES_CPU_QUOTA] = { "resources", "cpu_quota", VT_CPU_QUOTA },
        [KEY_RESOURCES_MEMORY_MAX] = { "resources", "memory_max", VT_BYTES },
};

static bool type_is_list(ValueType t) {
        return t == VT_FORWARD || t == VT_SHARE || t == VT_SSH_KEY || t == VT_SSH_KEY_FILE || t == VT_URL_LIST;
}

static bool startswith(const char *s, const char *prefix) {
        return strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool endswith(const char *s, const char *suffix) {
        size_t n = strlen(s), m = strlen(suffix);

        return n >= m && streq(s + n - m, suffix);
}

/* --- names of the API's enums --- */

static const char *const accel_table[] = {
        [HYDRA__V1__ACCEL__ACCEL_AUTO] = "auto",
        [HYDRA__V1__ACCEL__ACCEL_KVM] = "kvm",
        [HYDRA__V1__ACCEL__ACCEL_TCG] = "tcg",
};

static const char *const kubelet_shares_table[] = {
        [HYDRA__V1__KUBELET_SHARES__KUBELET_SHARES_VIRTIO] = "virtio",
        [HYDRA__V1__KUBELET_SHARES__KUBELET_SHARES_TCP] = "tcp",
        [HYDRA__V1__KUBELET_SHARES__KUBELET_SHARES_NONE] = "none",
};

static const char *const shmem_table[] = {
        [HYDRA__V1__SHMEM__SHMEM_NONE] = "none",
        [HYDRA__V1__SHMEM__SHMEM_NVDIMM] = "nvdimm",
        [HYDRA__V1__SHMEM__SHMEM_IVSHMEM] = "ivshmem",
};

static const char *const restart_policy_table[] = {
        [HYDRA__V1__RESTART_POLICY__RESTART_NO] = "no",
        [HYDRA__V1__RESTART_POLICY__RESTART_ON_FAILURE] = "on-failure",
        [HYDRA__V1__RESTART_POLICY__RESTART_ALWAYS] = "always",
};

static const char *const probe_kind_table[] = {
        [HYDRA__V1__PROBE_KIND__PROBE_CONSOLE] = "console",
        [HYDRA__V1__PROBE_KIND__PROBE_TCP] = "tcp",
        [HYDRA__V1__PROBE_KIND__PROBE_CONTAINERD] = "containerd",
        [HYDRA__V1__PROBE_KIND__PROBE_NONE] = "none",
};

static const char *const arch_table[] = { "x86_64", "aarch64" };

static const char *table_name(const char *const *table, size_t n, int i) {
        return i >= 0 && (size_t) i < n ? table[i] : NULL;
}

static int table_find(const char *const *table, size_t n, const char *s) {
        for (size_t i = 0; i < n; i++)
                if (table[i] && s && streq(table[i], s))
                        return (int) i;
        return -EINVAL;
}

const char *accel_to_name(Hydra__V1__Accel a) {
        return table_name(accel_table, ELEMENTSOF(accel_table), (int) a);
}
const char *kubelet_shares_to_name(Hydra__V1__KubeletShares k) {
        return table_name(kubelet_shares_table, ELEMENTSOF(kubelet_shares_table), (int) k);
}
const char *shmem_to_name(Hydra__V1__Shmem s) {
        return table_name(shmem_table, ELEMENTSOF(shmem_table), (int) s);
}
int accel_from_name(const char *s) {
        return table_find(accel_table, ELEMENTSOF(accel_table), s);
}
int kubelet_shares_from_name(const char *s) {
        return table_find(kubelet_shares_table, ELEMENTSOF(kubelet_shares_table), s);
}
int shmem_from_name(const char *s) {
        return table_find(shmem_table, ELEMENTSOF(shmem_table), s);
}
const char *restart_policy_to_name(Hydra__V1__RestartPolicy p) {
        return table_name(restart_policy_table, ELEMENTSOF(restart_policy_table), (int) p);
}
const char *probe_kind_to_name(Hydra__V1__ProbeKind k) {
        return table_name(probe_kind_table, ELEMENTSOF(probe_kind_table), (int) k);
}
int restart_policy_from_name(const char *s) {
        return table_find(restart_policy_table, ELEMENTSOF(restart_policy_table), s);
}
int probe_kind_from_name(const char *s) {
        return table_find(probe_kind_table, ELEMENTSOF(probe_kind_table), s);
}

/* --- the message --- */

Hydra__V1__VmSpec *spec_new(void) {
        Hydra__V1__VmSpec *spec = malloc(sizeof(*spec));

        if (spec)
                hydra__v1__vm_spec__init(spec);
        return spec;
}

static void wipe_string(char *s) {
        if (s && s != protobuf_c_empty_string)
                explicit_bzero(s, strlen(s));
}

static void source_wipe(Hydra__V1__Source *s) {
        if (s) {
                wipe_string(s->password);
                wipe_string(s->token);
        }
}

Hydra__V1__VmSpec *spec_free(Hydra__V1__VmSpec *spec) {
        if (!spec)
                return NULL;
        source_wipe(spec->image);
        if (spec->bare)
                source_wipe(spec->bare->artifact);
        if (spec->guest)
                wipe_string(spec->guest->password);
        hydra__v1__vm_spec__free_unpacked(spec, NULL);
        return NULL;
}

/* String fields are either protobuf-c's shared empty string or ours to free. */
static void field_reset(char **field) {
        if (*field != protobuf_c_empty_string) {
                wipe_string(*field); /* cheap, and secrets need it */
                free(*field);
        }
        *field = (char *) protobuf_c_empty_string;
}

int spec_field_set(char **field, const char *value) {
        char *s;

        if (isempty(value)) {
                field_reset(field);
                return 0;
        }
        s = strdup(value);
        if (!s)
                return -ENOMEM;
        field_reset(field);
        *field = s;
        return 0;
}

int spec_strv_append(char ***strv, size_t *n, const char *value) {
        char *s = strdup(value), **a;

        if (!s)
                return -ENOMEM;
        a = realloc(*strv, (*n + 1) * sizeof(*a));
        if (!a) {
                free(s);
                return -ENOMEM;
        }
        a[(*n)++] = s;
        *strv = a;
        return 0;
}

static void strv_clear(char ***strv, size_t *n) {
        for (size_t i = 0; i < *n; i++)
                free((*strv)[i]);
        free(*strv);
        *strv = NULL;
        *n = 0;
}

#define DEFINE_SUBMESSAGE(func, type, field, init)       \
        type *func(Hydra__V1__VmSpec *spec) {            \
                if (!spec->field) {                      \
                        spec->field = malloc(sizeof(type)); \
                        if (spec->field)                 \
                                init(spec->field);       \
                }                                        \
                return spec->field;                      \
        }

DEFINE_SUBMESSAGE(spec_kernel, Hydra__V1__KernelBoot, kernel, hydra__v1__kernel_boot__init)
DEFINE_SUBMESSAGE(spec_firmware, Hydra__V1__Firmware, firmware, hydra__v1__firmware__init)
DEFINE_SUBMESSAGE(spec_image, Hydra__V1__Source, image, hydra__v1__source__init)
DEFINE_SUBMESSAGE(spec_bare, Hydra__V1__BareKernel, bare, hydra__v1__bare_kernel__init)
DEFINE_SUBMESSAGE(spec_guest, Hydra__V1__Guest, guest, hydra__v1__guest__init)
DEFINE_SUBMESSAGE(spec_software, Hydra__V1__Software, software, hydra__v1__software__init)
DEFINE_SUBMESSAGE(spec_network, Hydra__V1__Network, network, hydra__v1__network__init)
DEFINE_SUBMESSAGE(spec_shares, Hydra__V1__Shares, shares, hydra__v1__shares__init)
DEFINE_SUBMESSAGE(spec_devices, Hydra__V1__Devices, devices, hydra__v1__devices__init)
DEFINE_SUBMESSAGE(spec_supervision, Hydra__V1__Supervision, supervision, hydra__v1__supervision__init)
DEFINE_SUBMESSAGE(spec_resources, Hydra__V1__Resources, resources, hydra__v1__resources__init)

Hydra__V1__Source *spec_bare_artifact(Hydra__V1__VmSpec *spec) {
        Hydra__V1__BareKernel *bare = spec_bare(spec);

        if (!bare)
                return NULL;
        if (!bare->artifact) {
                bare->artifact = malloc(sizeof(*bare->artifact));
                if (bare->artifact)
                        hydra__v1__source__init(bare->artifact);
        }
        return bare->artifact;
}

int spec_add_forward(Hydra__V1__VmSpec *spec, const char *host_addr, uint32_t host_port, uint32_t guest_port,
                     const char *protocol) {
        Hydra__V1__PortForward *fw = malloc(sizeof(*fw)), **a;

        if (!fw)
                return -ENOMEM;
        hydra__v1__port_forward__init(fw);
        fw->host_port = host_port;
        fw->guest_port = guest_port;
        a = realloc(spec->forwards, (spec->n_forwards + 1) * sizeof(*a));
        if (!a || spec_field_set(&fw->host_addr, host_addr) < 0 || spec_field_set(&fw->protocol, protocol) < 0) {
                hydra__v1__port_forward__free_unpacked(fw, NULL);
                if (a)
                        spec->forwards = a;
                return -ENOMEM;
        }
        a[spec->n_forwards++] = fw;
        spec->forwards = a;
        return 0;
}

static void spec_forwards_clear(Hydra__V1__VmSpec *spec) {
        for (size_t i = 0; i < spec->n_forwards; i++)
                hydra__v1__port_forward__free_unpacked(spec->forwards[i], NULL);
        free(spec->forwards);
        spec->forwards = NULL;
        spec->n_forwards = 0;
}

int spec_add_share(Hydra__V1__VmSpec *spec, const char *host_path, const char *guest_path) {
        Hydra__V1__Shares *shares = spec_shares(spec);
        Hydra__V1__Share *sh, **a;

        if (!shares)
                return -ENOMEM;
        sh = malloc(sizeof(*sh));
        if (!sh)
                return -ENOMEM;
        hydra__v1__share__init(sh);
        a = realloc(shares->extra, (shares->n_extra + 1) * sizeof(*a));
        if (!a || spec_field_set(&sh->host_path, host_path) < 0 || spec_field_set(&sh->guest_path, guest_path) < 0) {
                hydra__v1__share__free_unpacked(sh, NULL);
                if (a)
                        shares->extra = a;
                return -ENOMEM;
        }
        a[shares->n_extra++] = sh;
        shares->extra = a;
        return 0;
}

static void spec_shares_clear(Hydra__V1__Shares *shares) {
        for (size_t i = 0; i < shares->n_extra; i++)
                hydra__v1__share__free_unpacked(shares->extra[i], NULL);
        free(shares->extra);
        shares->extra = NULL;
        shares->n_extra = 0;
}

/* --- values --- */

/* Base-10 digits only: no sign, no blanks, no 0x (strtoull accepts all three). */
static int parse_u64(const char *s, uint64_t *ret) {
        uint64_t v = 0;

        if (isempty(s))
                return -EINVAL;
        for (const char *p = s; *p; p++) {
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                if (v > (UINT64_MAX - (uint64_t) (*p - '0')) / 10)
                        return -ERANGE;
                v = v * 10 + (uint64_t) (*p - '0');
        }
        *ret = v;
        return 0;
}

/* value as one printable line: control characters as C escapes (\n, \x1b). */
static void escape_value(char *buf, size_t size, const char *value) {
        size_t o = 0;

        for (const unsigned char *p = (const unsigned char *) value; *p && o + 5 < size; p++) {
                if (*p == '\n')
                        o += (size_t) snprintf(buf + o, size - o, "\\n");
                else if (*p == '\t')
                        o += (size_t) snprintf(buf + o, size - o, "\\t");
                else if (*p < 0x20 || *p == 0x7f)
                        o += (size_t) snprintf(buf + o, size - o, "\\x%02x", *p);
                else
                        buf[o++] = (char) *p;
        }
        buf[o] = '\0';
}

/* "KEY: 'VALUE' " + what, for errors; key is "section.name". */
_printf_(4, 5) static int bad_value(HydraError *err, const char *key, const char *value, const char *fmt, ...) {
        char what[512], shown[512];
        va_list ap;

        va_start(ap, fmt);
        (void) vsnprintf(what, sizeof(what), fmt, ap);
        va_end(ap);
        escape_value(shown, sizeof(shown), value);
        return hydra_error_set(err, -EINVAL, "%s: '%s' %s", key, shown, what);
}

/* A size: a plain number in the field's unit, or a number with K, M, G or T (binary units, optional B or iB).
 * unit_shift is log2 of the field's unit in KiB: 10 for MiB, 20 for GiB, -10 for bytes. */
static int parse_size(const char *key, const char *s, int unit_shift, uint64_t *ret, HydraError *err) {
        static const char units[] = "KMGT";
        const char *unit_name = unit_shift == 10 ? "MiB" : unit_shift == 20 ? "GiB" : "bytes";
        _cleanup_free_ char *digits = NULL;
        size_t len = strspn(s, "0123456789");
        const char *suffix = s + len, *u;
        uint64_t n;
        int shift; /* log2 of the value's unit in KiB */

        digits = strndup(s, len);
        if (!digits)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        if (parse_u64(digits, &n) < 0)
                goto bad;

        if (*suffix == '\0')
                shift = unit_shift;
        else {
                char c = (char) toupper((unsigned char) suffix[0]);

                u = c ? strchr(units, c) : NULL;
                if (!u)
                        goto bad;
                if (!streq(suffix + 1, "") && !streq(suffix + 1, "B") && !streq(suffix + 1, "iB"))
                        goto bad;
                shift = 10 * (int) (u - units);
        }

        if (shift < unit_shift) {
                uint64_t div = UINT64_C(1) << (unit_shift - shift);
                if (n % div != 0)
                        return bad_value(err, key, s, "is not a whole number of %s%s", unit_name,
                                         unit_shift == 10 ? " (sizes below 1M are refused)" : "");
                *ret = n / div;
        } else {
                int up = shift - unit_shift;
                if (up > 0 && n > (UINT64_MAX >> up))
                        return bad_value(err, key, s, "is too large");
                *ret = n << up;
        }
        return 0;

bad:
        if (unit_shift < 0)
                return bad_value(err, key, s, "is not a size (expected bytes, or a number with a K, M, G or T "
                                 "suffix, e.g. 3G)");
        if (unit_shift == 10)
                return bad_value(err, key, s, "is not a size (expected MiB, or a number with a K, M, G or T suffix, "
                                 "e.g. 512M or 2G)");
        return bad_value(err, key, s, "is not a size (expected GiB, or a number with a K, M, G or T suffix, e.g. "
                         "16G or 1T)");
}

int spec_parse_bool(const char *s) {
        static const char *const yes[] = { "true", "yes", "on", "1" }, *const no[] = { "false", "no", "off", "0" };

        for (size_t i = 0; i < ELEMENTSOF(yes); i++) {
                if (strcasecmp(s, yes[i]) == 0)
                        return 1;
                if (strcasecmp(s, no[i]) == 0)
                        return 0;
        }
        return -EINVAL;
}

static int parse_port_value(const char *s, uint32_t *ret) {
        uint64_t v;

        if (parse_u64(s, &v) < 0 || v < 1 || v > 65535)
                return -EINVAL;
        *ret = (uint32_t) v;
        return 0;
}

/* Seconds: a plain number, or a number with one unit: s, m, h or d ("600", "90s", "10m", "1h"). */
static int parse_duration(const char *s, uint64_t *ret) {
        static const struct {
                char unit;
                uint64_t seconds;
        } units[] = { { 's', 1 }, { 'm', 60 }, { 'h', 3600 }, { 'd', 86400 } };
        _cleanup_free_ char *digits = NULL;
        size_t len = strspn(s, "0123456789");
        uint64_t n, mult = 1;

        if (s[len] != '\0') {
                size_t i;

                if (s[len + 1] != '\0')
                        return -EINVAL;
                for (i = 0; i < ELEMENTSOF(units) && units[i].unit != s[len]; i++)
                        ;
                if (i == ELEMENTSOF(units))
                        return -EINVAL;
                mult = units[i].seconds;
        }
        digits = strndup(s, len);
        if (!digits)
                return -ENOMEM;
        if (parse_u64(digits, &n) < 0 || n > UINT32_MAX)
                return -EINVAL;
        *ret = n * mult;
        return 0;
}

static bool has_control(const char *s) {
        for (const unsigned char *p = (const unsigned char *) s; *p; p++)
                if (*p < 0x20 || *p == 0x7f)
                        return true;
        return false;
}

static bool all_chars_in(const char *s, const char *extra) {
        for (const char *p = s; *p; p++)
                if (!isalnum((unsigned char) *p) && !strchr(extra, *p))
                        return false;
        return true;
}

/* http://HOST..., https://HOST... or file:///PATH */
static bool url_valid(const char *s) {
        const char *rest;

        if (has_control(s) || strpbrk(s, " \t"))
                return false;
        if (startswith(s, "http://"))
                rest = s + strlen("http://");
        else if (startswith(s, "https://"))
                rest = s + strlen("https://");
        else
                return startswith(s, "file:///");
        return *rest != '\0' && *rest != '/';
}

static bool checksum_valid(const char *s) {
        size_t hex;

        if (startswith(s, "sha256:"))
                hex = 64, s += 7;
        else if (startswith(s, "sha512:"))
                hex = 128, s += 7;
        else
                return false;
        return strlen(s) == hex && strspn(s, "0123456789abcdefABCDEF") == hex;
}

/* An authorized_keys line: [OPTIONS] TYPE BASE64 [COMMENT]. Options may hold quoted blanks, so look for any word
 * that is a key type followed by a word that is base64 of one ("AAAA..."). */
static bool ssh_key_valid(const char *line) {
        static const char *const types[] = { "ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-" };
        const char *p = line;

        while (*p) {
                size_t n = strcspn(p, " \t");
                const char *next = p + n + strspn(p + n, " \t");

                for (size_t i = 0; i < ELEMENTSOF(types); i++)
                        if (strncmp(p, types[i], strlen(types[i])) == 0 && n > strlen(types[i]) &&
                            strncmp(next, "AAAA", 4) == 0)
                                return true;
                p = next;
        }
        return false;
}

static bool mac_valid(const char *s) {
        if (strlen(s) != 17)
                return false;
        for (int i = 0; i < 17; i++)
                if (i % 3 == 2 ? s[i] != ':' : !isxdigit((unsigned char) s[i]))
                        return false;
        /* A guest NIC needs a unicast address: the low bit of the first octet clear. */
        return (strtoul(s, NULL, 16) & 1) == 0;
}

/* Lexically cleans base + "/" + rel (base absolute): no "//", "." or "x/.." left; symlinks are not resolved, so
 * a link such as /boot/vmlinuz keeps following the kernel it points to. */
static char *path_join_clean(const char *base, const char *rel) {
        _cleanup_free_ char *joined = NULL;
        char *out, *o, *save = NULL;

        if (asprintf(&joined, "%s/%s", base, rel) < 0)
                return NULL;
        out = malloc(strlen(joined) + 2);
        if (!out)
                return NULL;
        o = out;
        for (char *c = strtok_r(joined, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
                if (streq(c, "."))
                        continue;
                if (streq(c, "..")) {
                        while (o > out && *--o != '/')
                                ;
                        continue;
                }
                *o++ = '/';
                o = stpcpy(o, c);
        }
        if (o == out)
                *o++ = '/';
        *o = '\0';
        return out;
}

/* value made absolute against base_dir; NULL on OOM. */
static char *path_absolute(const char *value, const char *base_dir) {
        return value[0] == '/' ? strdup(value) : path_join_clean(base_dir, value);
}

/* [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp] */
static int parse_forward(Hydra__V1__VmSpec *spec, const char *value, HydraError *err) {
        _cleanup_free_ char *s = strdup(value);
        char *proto, *guest, *host, *addr = NULL;
        uint32_t host_port, guest_port;
        struct in_addr ia;

        if (!s)
                return hydra_error_set(err, -ENOMEM, "out of memory");

        proto = strchr(s, '/');
        if (proto) {
                *proto++ = '\0';
                if (!streq(proto, "tcp") && !streq(proto, "udp"))
                        return hydra_error_set(err, -EINVAL,
                                               "network.forward: protocol '%s' is not supported (allowed: tcp, udp)",
                                               proto);
        }
        guest = strrchr(s, ':');
        if (!guest)
                goto bad;
        *guest++ = '\0';
        host = strrchr(s, ':');
        if (host) {
                *host++ = '\0';
                addr = s;
                if (isempty(addr))
                        return hydra_error_set(err, -EINVAL,
                                               "network.forward: '%s': empty host address (leave it out for "
                                               "127.0.0.1)", value);
                if (inet_pton(AF_INET, addr, &ia) != 1)
                        return hydra_error_set(err, -EINVAL, "network.forward: host address '%s' is not an IPv4 "
                                               "address (e.g. 127.0.0.1 or 0.0.0.0)", addr);
        } else
                host = s;

        if (isempty(host) || strspn(host, "0123456789") != strlen(host))
                return hydra_error_set(err, -EINVAL, "network.forward: host port '%s' is not a number", host);
        if (parse_port_value(host, &host_port) < 0)
                return hydra_error_set(err, -EINVAL, "network.forward: host port %s is out of range (allowed: "
                                       "1-65535)", host);
        if (isempty(guest) || strspn(guest, "0123456789") != strlen(guest))
                return hydra_error_set(err, -EINVAL, "network.forward: guest port '%s' is not a number", guest);
        if (parse_port_value(guest, &guest_port) < 0)
                return hydra_error_set(err, -EINVAL, "network.forward: guest port %s is out of range (allowed: "
                                       "1-65535)", guest);
        if (spec_add_forward(spec, addr, host_port, guest_port, proto ?: "tcp") < 0)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        return 0;

bad:
        return hydra_error_set(err, -EINVAL,
                               "network.forward: '%s' is not [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]", value);
}

/* HOST_PATH:GUEST_PATH, split at the first ':' */
static int parse_share(Hydra__V1__VmSpec *spec, const char *value, const char *base_dir, HydraError *err) {
        _cleanup_free_ char *host = NULL;
        const char *colon = strchr(value, ':'), *guest;
        int r;

        if (!colon || colon == value || isempty(colon + 1))
                return bad_value(err, "shares.share", value, "is not HOST_PATH:GUEST_PATH (e.g. "
                                 "/srv/data:/mnt/data)");
        guest = colon + 1;
        r = field_check_guest_path("shares.share", guest, err);
        if (r < 0)
                return r;
        host = strndup(value, (size_t) (colon - value));
        if (!host)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        if (host[0] != '/') {
                char *abs = path_join_clean(base_dir, host);
                if (!abs)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
                free(host);
                host = abs;
        }
        if (spec_add_share(spec, host, guest) < 0)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        return 0;
}

/* Each line of an OpenSSH public key file that is not blank or a comment is a key. */
static int read_ssh_key_file(Hydra__V1__Guest *guest, const char *path, HydraError *err) {
        _cleanup_free_ char *line = NULL;
        size_t size = 0, total = 0;
        unsigned added = 0;
        ssize_t n;
        FILE *f;
        int r = 0;

        f = fopen(path, "re");
        if (!f)
                return hydra_error_set(err, -errno, "guest.ssh_key_file: cannot read '%s': %m", path);
        while ((n = getline(&line, &size, f)) >= 0) {
                char *s = line, *e;

                total += (size_t) n;
                if (total > SSH_KEY_FILE_MAX) {
                        r = hydra_error_set(err, -EFBIG, "guest.ssh_key_file: '%s' is larger than %d KiB: not a "
                                            "public key file", path, SSH_KEY_FILE_MAX / 1024);
                        break;
                }
                s += strspn(s, " \t");
                e = s + strlen(s);
                while (e > s && strchr(" \t\r\n", e[-1]))
                        *--e = '\0';
                if (*s == '\0' || *s == '#')
                        continue;
                if (has_control(s) || !utf8_valid(s, strlen(s)) || !ssh_key_valid(s)) {
                        r = hydra_error_set(err, -EINVAL, "guest.ssh_key_file: '%s' is not an OpenSSH public key "
                                            "file (expected lines such as 'ssh-ed25519 AAAA... user@host')", path);
                        break;
                }
                if (spec_strv_append(&guest->ssh_authorized_keys, &guest->n_ssh_authorized_keys, s) < 0) {
                        r = hydra_error_set(err, -ENOMEM, "out of memory");
                        break;
                }
                added++;
        }
        if (r == 0 && ferror(f))
                r = hydra_error_set(err, -EIO, "guest.ssh_key_file: cannot read '%s'", path);
        if (r == 0 && added == 0)
                r = hydra_error_set(err, -EINVAL, "guest.ssh_key_file: '%s' holds no key", path);
        fclose(f);
        return r;
}

/* --- keys --- */

static SpecKey key_lookup(const char *section, const char *name, HydraError *err) {
        char known[512] = "";
        size_t len = 0;
        bool section_known = false;

        for (size_t i = 0; i < ELEMENTSOF(section_table); i++)
                section_known = section_known || streq(section, section_table[i]);
        if (!section_known) {
                char sections[256] = "";
                size_t slen = 0;

                for (size_t i = 0; i < ELEMENTSOF(section_table); i++)
                        slen += (size_t) snprintf(sections + slen, sizeof(sections) - slen, "%s%s",
                                                  i > 0 ? ", " : "", section_table[i]);
                if (isempty(section))
                        return hydra_error_set(err, -EINVAL, "key '%s' outside any section (sections: %s)", name,
                                               sections);
                return hydra_error_set(err, -EINVAL, "unknown section [%s] (known: %s)", section, sections);
        }

        for (size_t k = 0; k < _KEY_MAX; k++) {
                if (!streq(key_table[k].section, section))
                        continue;
                if (streq(key_table[k].name, name))
                        return (SpecKey) k;
                if (len < sizeof(known))
                        len += (size_t) snprintf(known + len, sizeof(known) - len, "%s%s", len > 0 ? ", " : "",
                                                 key_table[k].name);
        }
        return hydra_error_set(err, -EINVAL, "unknown key '%s' in [%s] (known: %s)", name, section, known);
}

/* [bare] cmdline is [kernel] cmdline: one field, so one line may set it. */
static SpecKey key_slot(SpecKey key) {
        return key == KEY_BARE_CMDLINE ? KEY_KERNEL_CMDLINE : key;
}

static char **source_field(Hydra__V1__Source *src, int i) {
        char **fields[] = { &src->url,      &src->checksum, &src->sums_url,     &src->user,
                            &src->password, &src->token,    &src->token_header };

        return fields[i];
}

/* Where key's value goes, creating the sub-messages on the way. NULL on OOM. */
static void *key_field(Hydra__V1__VmSpec *spec, SpecKey key) {
        Hydra__V1__KernelBoot *k;
        Hydra__V1__Firmware *fw;
        Hydra__V1__Source *src;
        Hydra__V1__BareKernel *b;
        Hydra__V1__Guest *g;
        Hydra__V1__Software *sw;
        Hydra__V1__Network *n;
        Hydra__V1__Shares *sh;
        Hydra__V1__Devices *d;
        Hydra__V1__Supervision *sv;
        Hydra__V1__Resources *rs;

        switch (key) {
        case KEY_VM_CPUS: return &spec->cpus;
        case KEY_VM_MEMORY: return &spec->memory_mib;
        case KEY_VM_ACCEL: return &spec->accel;
        case KEY_VM_ARCH: return &spec->arch;
        case KEY_VM_MACHINE: return &spec->machine;
        case KEY_VM_CPU: return &spec->cpu_model;
        case KEY_VM_DISK_SIZE: return &spec->disk_size_gib;
        case KEY_DISK_PATH: return &spec->disk;
        case KEY_NETWORK_FORWARD: return spec;
        case KEY_IMAGE_KEEP_PRISTINE: return &spec->keep_pristine;
        case KEY_IMAGE_REUSE_DISK_ON_CHANGE: return &spec->reuse_disk_on_change;
        case KEY_KERNEL_PATH:
        case KEY_KERNEL_INITRD:
        case KEY_KERNEL_CMDLINE:
        case KEY_BARE_CMDLINE:
                k = spec_kernel(spec);
                if (!k)
                        return NULL;
                return key == KEY_KERNEL_PATH ? &k->kernel : key == KEY_KERNEL_INITRD ? &k->initrd : &k->cmdline;
        case KEY_FIRMWARE_CODE:
        case KEY_FIRMWARE_VARS:
                fw = spec_firmware(spec);
                return !fw ? NULL : key == KEY_FIRMWARE_CODE ? &fw->code : &fw->vars;
        case KEY_IMAGE_URL ... KEY_IMAGE_TOKEN_HEADER:
                src = spec_image(spec);
                return src ? source_field(src, key - KEY_IMAGE_URL) : NULL;
        case KEY_BARE_URL ... KEY_BARE_TOKEN_HEADER:
                src = spec_bare_artifact(spec);
                return src ? source_field(src, key - KEY_BARE_URL) : NULL;
        case KEY_BARE_DIR ... KEY_BARE_ENCRYPTED_TOOLS:
                b = spec_bare(spec);
                if (!b)
                        return NULL;
                switch (key) {
                case KEY_BARE_DIR: return &b->dir;
                case KEY_BARE_KERNEL: return &b->kernel;
                case KEY_BARE_KERNEL_VERSION: return &b->kernel_version;
                case KEY_BARE_INITRD: return &b->initrd;
                case KEY_BARE_ROOTFS: return &b->rootfs;
                default: return &b->encrypted_tools;
                }
        case KEY_GUEST_USERNAME ... KEY_GUEST_SSH_KEY_FILE:
                g = spec_guest(spec);
                if (!g)
                        return NULL;
                switch (key) {
                case KEY_GUEST_USERNAME: return &g->username;
                case KEY_GUEST_PASSWORD: return &g->password;
                case KEY_GUEST_PASSWORD_HASH: return &g->password_hash;
                case KEY_GUEST_HOSTNAME: return &g->hostname;
                default: return g;
                }
        case KEY_SOFTWARE_CONTAINERD_PROXY ... KEY_SOFTWARE_CRISMUX_SHA256:
                sw = spec_software(spec);
                if (!sw)
                        return NULL;
                switch (key) {
                case KEY_SOFTWARE_CONTAINERD_PROXY: return &sw->disable_containerd_proxy;
                case KEY_SOFTWARE_CSI_GRPC_PROXY_URL: return &sw->csi_grpc_proxy_url;
                case KEY_SOFTWARE_K3S_DIOD: return &sw->k3s_diod;
                case KEY_SOFTWARE_K3S_VERSION: return &sw->k3s_version;
                case KEY_SOFTWARE_KERNEL_PACKAGE: return &sw->kernel_package;
                case KEY_SOFTWARE_EXTRA_DEB: return sw;
                case KEY_SOFTWARE_PACKAGE_UPDATE: return &sw->package_update;
                case KEY_SOFTWARE_PACKAGE_UPGRADE: return &sw->package_upgrade;
                case KEY_SOFTWARE_SANDBOX_IMAGE: return &sw->sandbox_image;
                case KEY_SOFTWARE_SANDBOX_IMAGE_URL: return &sw->sandbox_image_url;
                case KEY_SOFTWARE_CRISMUX_URL: return &sw->crismux_url;
                case KEY_SOFTWARE_CRISMUX_SHA256: return &sw->crismux_sha256;
                default: return &sw->reboot_after_install;
                }
        case KEY_NETWORK_GUEST_IP ... KEY_NETWORK_MAC:
                n = spec_network(spec);
                if (!n)
                        return NULL;
                switch (key) {
                case KEY_NETWORK_GUEST_IP: return &n->guest_ip;
                case KEY_NETWORK_GATEWAY: return &n->gateway;
                case KEY_NETWORK_DNS: return &n->dns;
                case KEY_NETWORK_PREFIX_LEN: return &n->prefix_len;
                default: return &n->mac;
                }
        case KEY_SHARES_KUBELET ... KEY_SHARES_SHARE:
                sh = spec_shares(spec);
                if (!sh)
                        return NULL;
                switch (key) {
                case KEY_SHARES_KUBELET: return &sh->kubelet;
                case KEY_SHARES_KUBELET_HOST_DIR: return &sh->kubelet_host_dir;
                case KEY_SHARES_DIOD_PORT: return &sh->diod_port;
                default: return sh;
                }
        case KEY_DEVICES_VSOCK ... KEY_DEVICES_SHMEM_PATH:
                d = spec_devices(spec);
                if (!d)
                        return NULL;
                switch (key) {
                case KEY_DEVICES_VSOCK: return &d->vsock;
                case KEY_DEVICES_VSOCK_CID: return &d->vsock_cid;
                case KEY_DEVICES_GPU: return &d->gpu;
                case KEY_DEVICES_GPU_VRAM: return &d->gpu_vram_gib;
                case KEY_DEVICES_SHMEM: return &d->shmem;
                case KEY_DEVICES_SHMEM_SIZE: return &d->shmem_size_gib;
                default: return &d->shmem_path;
                }
        case KEY_SUPERVISION_RESTART ... KEY_SUPERVISION_START_AFTER:
                sv = spec_supervision(spec);
                if (!sv)
                        return NULL;
                switch (key) {
                case KEY_SUPERVISION_RESTART: return &sv->restart;
                case KEY_SUPERVISION_MAX_RESTARTS: return &sv->max_restarts;
                case KEY_SUPERVISION_RESTART_WINDOW: return &sv->restart_window_seconds;
                case KEY_SUPERVISION_AUTOSTART: return &sv->autostart;
                case KEY_SUPERVISION_STOP_TIMEOUT: return &sv->stop_timeout_seconds;
                case KEY_SUPERVISION_PROBE: return &sv->probe;
                case KEY_SUPERVISION_PROBE_PATTERN: return &sv->probe_pattern;
                case KEY_SUPERVISION_PROBE_PORT: return &sv->probe_port;
                case KEY_SUPERVISION_START_AFTER: return &sv->start_after;
                default: return &sv->ready_timeout_seconds;
                }
        case KEY_RESOURCES_CPU_QUOTA ... KEY_RESOURCES_MEMORY_MAX:
                rs = spec_resources(spec);
                if (!rs)
                        return NULL;
                return key == KEY_RESOURCES_CPU_QUOTA ? (void *) &rs->cpu_quota_percent : (void *) &rs->memory_max_bytes;
        default:
                abort();
        }
}

/* Resets key to its default: the field's zero, an empty list. */
static void key_reset(Hydra__V1__VmSpec *spec, SpecKey key, void *field) {
        switch (key_table[key].type) {
        case VT_CPUS:
        case VT_SIZE_GIB:
        case VT_PORT:
        case VT_PREFIX_LEN:
        case VT_VSOCK_CID:
        case VT_MAX_RESTARTS:
        case VT_DURATION:
        case VT_CPU_QUOTA:
                *(uint32_t *) field = 0;
                break;
        case VT_MEMORY:
        case VT_BYTES:
                *(uint64_t *) field = 0;
                break;
        case VT_ACCEL:
        case VT_KUBELET:
        case VT_SHMEM:
        case VT_RESTART:
        case VT_PROBE:
                *(int *) field = 0;
                break;
        case VT_BOOL:
        case VT_BOOL_NEGATED:
                *(protobuf_c_boolean *) field = 0;
                break;
        case VT_FORWARD:
                spec_forwards_clear(spec);
                break;
        case VT_SHARE:
                spec_shares_clear(field);
                break;
        case VT_SSH_KEY:
        case VT_SSH_KEY_FILE: {
                Hydra__V1__Guest *g = field;
                strv_clear(&g->ssh_authorized_keys, &g->n_ssh_authorized_keys);
                break;
        }
        case VT_URL_LIST: {
                Hydra__V1__Software *sw = field;
                strv_clear(&sw->extra_debs, &sw->n_extra_debs);
                break;
        }
        default:
                field_reset(field);
        }
}

/* Sets key from value (non-empty). key_name is "section.name". */
static int key_set(Hydra__V1__VmSpec *spec, SpecKey key, void *field, const char *key_name, const char *value,
                   const char *base_dir, HydraError *err) {
        ValueType type = key_table[key].type;
        _cleanup_free_ char *abs = NULL;
        uint64_t v;
        int i, r;

        /* Checks every string type shares: UTF-8 (protobuf strings must be; protobuf-c does not check, the
         * daemon's other clients do), one line. A secret is never quoted, nor bytes that are not UTF-8. */
        if (!utf8_valid(value, strlen(value)))
                return hydra_error_set(err, -EINVAL, "%s: the value is not valid UTF-8", key_name);
        if (has_control(value)) {
                if (key_table[key].secret)
                        return hydra_error_set(err, -EINVAL, "%s: the value holds a control character", key_name);
                return bad_value(err, key_name, value, "holds a control character");
        }

        switch (type) {
        case VT_CPUS:
                if (parse_u64(value, &v) < 0 || v > UINT32_MAX)
                        return bad_value(err, key_name, value, "is not a number (allowed: 1-255)");
                /* 0 on the wire means "the default": refused here rather than silently turned into 2. */
                if (v < 1 || v > 255)
                        return bad_value(err, key_name, value, "is out of range (allowed: 1-255)");
                *(uint32_t *) field = (uint32_t) v;
                return 0;
        case VT_MEMORY:
                r = parse_size(key_name, value, 10, &v, err);
                if (r < 0)
                        return r;
                if (v == 0) /* the same: 0 would mean the default (2048 MiB) */
                        return bad_value(err, key_name, value, "is out of range (allowed: at least 64M; leave the "
                                         "key out for the default)");
                *(uint64_t *) field = v;
                return 0;
        case VT_CPU_QUOTA: {
                size_t len = strspn(value, "0123456789");
                _cleanup_free_ char *digits = strndup(value, len);

                if (!digits)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
                if (len == 0 || !streq(value + len, "%") || parse_u64(digits, &v) < 0 || v > UINT32_MAX)
                        return bad_value(err, key_name, value, "is not a CPU quota (expected a percentage of one "
                                         "CPU's time, as systemd's CPUQuota=, e.g. 150%%)");
                if (v < 1 || v > 25500)
                        return bad_value(err, key_name, value, "is out of range (allowed: 1%%-25500%%, 100%% being "
                                         "one CPU; leave the key out for no limit)");
                *(uint32_t *) field = (uint32_t) v;
                return 0;
        }
        case VT_BYTES:
                r = parse_size(key_name, value, -10, &v, err);
                if (r < 0)
                        return r;
                if (v == 0)
                        return bad_value(err, key_name, value, "is out of range (allowed: more than 0; leave the key "
                                         "out for no limit)");
                *(uint64_t *) field = v;
                return 0;
        case VT_SIZE_GIB:
                r = parse_size(key_name, value, 20, &v, err);
                if (r < 0)
                        return r;
                if (v > UINT32_MAX)
                        return bad_value(err, key_name, value, "is too large");
                *(uint32_t *) field = (uint32_t) v;
                return 0;
        case VT_ACCEL:
                i = accel_from_name(value);
                if (i < 0)
                        return bad_value(err, key_name, value, "is not an accelerator (allowed: auto, kvm, tcg)");
                *(int *) field = i;
                return 0;
        case VT_KUBELET:
                i = kubelet_shares_from_name(value);
                if (i < 0)
                        return bad_value(err, key_name, value, "is not a way to share the kubelet directories "
                                         "(allowed: virtio, tcp, none)");
                *(int *) field = i;
                return 0;
        case VT_SHMEM:
                i = shmem_from_name(value);
                if (i < 0)
                        return bad_value(err, key_name, value, "is not a shared memory type (allowed: none, "
                                         "nvdimm, ivshmem)");
                *(int *) field = i;
                return 0;
        case VT_ARCH:
                if (table_find(arch_table, ELEMENTSOF(arch_table), value) < 0)
                        return bad_value(err, key_name, value, "is not an architecture (allowed: x86_64, aarch64)");
                break;
        case VT_BOOL:
        case VT_BOOL_NEGATED:
                i = spec_parse_bool(value);
                if (i < 0)
                        return bad_value(err, key_name, value, "is not a boolean (allowed: true, false, yes, no, "
                                         "on, off, 1, 0)");
                *(protobuf_c_boolean *) field = type == VT_BOOL ? i : !i;
                return 0;
        case VT_RESTART:
                i = restart_policy_from_name(value);
                if (i < 0)
                        return bad_value(err, key_name, value, "is not a restart policy (allowed: no, on-failure, "
                                         "always)");
                *(int *) field = i;
                return 0;
        case VT_PROBE:
                i = probe_kind_from_name(value);
                if (i < 0)
                        return bad_value(err, key_name, value, "is not a readiness probe (allowed: console, tcp, "
                                         "containerd, none)");
                *(int *) field = i;
                return 0;
        case VT_MAX_RESTARTS:
                if (parse_u64(value, &v) < 0 || v < 1 || v > 1000)
                        return bad_value(err, key_name, value, "is not a number of restarts (allowed: 1-1000)");
                *(uint32_t *) field = (uint32_t) v;
                return 0;
        case VT_DURATION:
                r = parse_duration(value, &v);
                if (r == -ENOMEM)
                        return hydra_error_set(err, r, "out of memory");
                if (r < 0 || v < 1 || v > key_table[key].max)
                        return bad_value(err, key_name, value, "is not a duration (allowed: 1-%" PRIu32 " seconds, "
                                         "a plain number or with a unit s, m, h or d, e.g. 600 or 10m)",
                                         key_table[key].max);
                *(uint32_t *) field = (uint32_t) v;
                return 0;
        case VT_REGEX: {
                regex_t re;
                char why[128];

                r = regcomp(&re, value, REG_EXTENDED | REG_NOSUB);
                if (r != 0) {
                        regerror(r, &re, why, sizeof(why));
                        return bad_value(err, key_name, value, "is not a POSIX extended regular expression (%s)",
                                         why);
                }
                regfree(&re);
                break;
        }
        case VT_ROLE:
                if (!streq(value, "host") && !streq(value, "isolated"))
                        return bad_value(err, key_name, value, "is not a role (allowed: host, isolated: the other "
                                         "VM)");
                break;
        case VT_WORD:
                if (strpbrk(value, " \t"))
                        return bad_value(err, key_name, value, "is not one word (blanks are not allowed)");
                break;
        case VT_TEXT:
        case VT_SECRET:
                /* Checked here, not when hashing: hydractl would otherwise ask hydrad first and fail after. */
                if (key == KEY_GUEST_PASSWORD && strlen(value) > PASSWORD_MAX_BYTES)
                        return hydra_error_set(err, -EINVAL, "%s: the password is longer than %d bytes", key_name,
                                               PASSWORD_MAX_BYTES);
                break;
        case VT_PATH:
                abs = path_absolute(value, base_dir);
                if (!abs)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
                value = abs;
                break;
        case VT_GUEST_PATH:
                r = field_check_guest_path(key_name, value, err);
                if (r < 0)
                        return r;
                break;
        case VT_ARCHIVE_NAME:
                if (value[0] == '/' || streq(value, "..") || startswith(value, "../") ||
                    strstr(value, "/../") || endswith(value, "/.."))
                        return bad_value(err, key_name, value, "is not a name inside the archive (relative, "
                                         "without '..')");
                break;
        case VT_URL:
                if (!url_valid(value))
                        return bad_value(err, key_name, value, "is not a URL (allowed: http://..., https://..., "
                                         "file:///ABSOLUTE/PATH)");
                break;
        case VT_GUEST_URL:
                r = field_check_guest_url(key_name, value, err);
                if (r < 0)
                        return r;
                break;
        case VT_K3S_VERSION:
                r = field_check_k3s_version(key_name, value, err);
                if (r < 0)
                        return r;
                break;
        case VT_IMAGE_REF:
                r = field_check_image_ref(key_name, value, err);
                if (r < 0)
                        return r;
                break;
        case VT_SHA256:
                r = field_check_sha256(key_name, value, err);
                if (r < 0)
                        return r;
                break;
        case VT_CHECKSUM:
                if (!checksum_valid(value))
                        return bad_value(err, key_name, value, "is not a checksum (allowed: sha256:64 hex digits, "
                                         "sha512:128 hex digits)");
                break;
        case VT_HEADER:
                if (!all_chars_in(value, "!#$%&'*+-.^_`|~"))
                        return bad_value(err, key_name, value, "is not an HTTP header name (e.g. PRIVATE-TOKEN)");
                break;
        /* hydrad's rules for these fields (field.h): what passes here passes RegisterVm and StartVm. */
        case VT_USERNAME:
                r = field_check_username(key_name, value, err);
                if (r < 0)
                        return r;
                break;
        case VT_HOSTNAME:
                r = field_check_hostname(key_name, value, err);
                if (r < 0)
                        return r;
                break;
        case VT_PASSWORD_HASH:
                r = field_check_password_hash(key_name, value, err);
                if (r < 0)
                        return r;
                break;
        case VT_PACKAGE:
                r = field_check_package(key_name, value, err);
                if (r < 0)
                        return r;
                break;
        case VT_PORT:
                if (parse_port_value(value, field) < 0)
                        return bad_value(err, key_name, value, "is not a port (allowed: 1-65535)");
                return 0;
        case VT_IPV4:
                r = field_check_ipv4(key_name, value, err);
                if (r < 0)
                        return r;
                break;
        case VT_PREFIX_LEN:
                /* hydrad's limit: slirp needs room for the guest, the gateway and the DNS server. */
                if (parse_u64(value, &v) < 0 || v < 1 || v > 30)
                        return bad_value(err, key_name, value, "is not a prefix length (allowed: 1-30)");
                *(uint32_t *) field = (uint32_t) v;
                return 0;
        case VT_MAC:
                if (!mac_valid(value))
                        return bad_value(err, key_name, value, "is not a unicast MAC address (e.g. "
                                         "52:54:00:12:34:56)");
                break;
        case VT_VSOCK_CID:
                if (parse_u64(value, &v) < 0 || v < 3 || v > UINT32_MAX - 1)
                        return bad_value(err, key_name, value, "is not a guest CID (allowed: 3-4294967294)");
                *(uint32_t *) field = (uint32_t) v;
                return 0;
        case VT_FORWARD:
                return parse_forward(spec, value, err);
        case VT_SHARE:
                return parse_share(spec, value, base_dir, err);
        case VT_SSH_KEY: {
                Hydra__V1__Guest *g = field;
                if (!ssh_key_valid(value))
                        return bad_value(err, key_name, value, "is not an OpenSSH public key (e.g. 'ssh-ed25519 "
                                         "AAAA... user@host')");
                r = field_check_ssh_key(key_name, value, err);
                if (r < 0)
                        return r;
                if (spec_strv_append(&g->ssh_authorized_keys, &g->n_ssh_authorized_keys, value) < 0)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
                return 0;
        }
        case VT_SSH_KEY_FILE:
                abs = path_absolute(value, base_dir);
                if (!abs)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
                return read_ssh_key_file(field, abs, err);
        case VT_URL_LIST: {
                Hydra__V1__Software *sw = field;
                r = field_check_guest_url(key_name, value, err);
                if (r < 0)
                        return r;
                if (spec_strv_append(&sw->extra_debs, &sw->n_extra_debs, value) < 0)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
                return 0;
        }
        }

        /* The string types that passed their check. */
        if (spec_field_set(field, value) < 0)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        return 0;
}

static int spec_set(Hydra__V1__VmSpec *spec, SpecKey key, const char *value, const char *base_dir,
                    HydraError *err) {
        char key_name[64];
        void *field;

        snprintf(key_name, sizeof(key_name), "%s.%s", key_table[key].section, key_table[key].name);
        field = key_field(spec, key);
        if (!field)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        if (isempty(value)) {
                key_reset(spec, key, field);
                return 0;
        }
        return key_set(spec, key, field, key_name, value, base_dir, err);
}

/* --- the file --- */

typedef struct ParseContext {
        Hydra__V1__VmSpec *spec; /* borrowed */
        const char *name;        /* the file as messages name it */
        const char *base_dir;    /* borrowed */
        FILE *f;                 /* borrowed */
        unsigned line;           /* the physical line inih is on */
        size_t line_len;
        unsigned nul_line;       /* a line that holds a NUL byte, not yet reported (inih sees it cut short) */
        bool at_line_start;
        bool failed;             /* err is set; ignore the rest */
        unsigned seen[_KEY_MAX]; /* line that set a non-repeatable key, 0 if none did (by key_slot) */
        SpecKey seen_as[_KEY_MAX]; /* the key that line named */
        bool secret_set[_KEY_MAX];
        HydraError *err;
} ParseContext;

/* A NUL byte cuts a line short for inih (and for every C string after it): a value would be silently truncated
 * ("a\0b" read as "a"). on_ini_entry() reports it naming the key; a NUL elsewhere (a comment, a section header)
 * is reported here, once inih is done with its line. */
static int nul_line_fail(ParseContext *ctx) {
        if (ctx->nul_line == 0 || ctx->failed)
                return 0;
        hydra_error_set(ctx->err, -EINVAL, "%s:%u: the line holds a NUL byte", ctx->name, ctx->nul_line);
        ctx->failed = true;
        return -EINVAL;
}

/* fgets() for inih, counting lines: inih does not pass line numbers to the handler in Debian's build. Byte by
 * byte rather than fgets(), which would hide a NUL byte. The buffer is wiped before each line and at the end, so
 * that no secret stays in inih's buffer. */
static char *ini_read_line(char *buf, int size, void *userdata) {
        ParseContext *ctx = userdata;
        size_t n = 0;
        int c;

        explicit_bzero(buf, (size_t) size);
        if (ctx->failed)
                return NULL;
        if (ctx->at_line_start && nul_line_fail(ctx) < 0)
                return NULL;
        while (n + 1 < (size_t) size && (c = getc_unlocked(ctx->f)) != EOF) {
                buf[n++] = (char) c;
                if (c == '\n')
                        break;
        }
        if (n == 0)
                return NULL;
        if (ctx->at_line_start) {
                ctx->line++;
                ctx->line_len = 0;
        }
        if (memchr(buf, '\0', n) && ctx->nul_line == 0)
                ctx->nul_line = ctx->line;
        ctx->line_len += n;
        ctx->at_line_start = buf[n - 1] == '\n';
        if (ctx->line_len > SPEC_MAX_LINE) {
                hydra_error_set(ctx->err, -EINVAL, "%s:%u: line is longer than %d bytes", ctx->name, ctx->line,
                                SPEC_MAX_LINE);
                ctx->failed = true;
                return NULL;
        }
        return buf;
}

static int on_ini_entry(void *userdata, const char *section, const char *name, const char *value) {
        ParseContext *ctx = userdata;
        SpecKey key, slot;
        int r;

        if (ctx->failed)
                return 0;
        if (ctx->nul_line == ctx->line) {
                /* Never the value: it may be a secret. */
                hydra_error_set(ctx->err, -EINVAL, "%s.%s: the value holds a NUL byte", section, name);
                goto fail;
        }

        key = key_lookup(section, name, ctx->err);
        if (key < 0)
                goto fail;
        slot = key_slot(key);
        if (!type_is_list(key_table[key].type) && ctx->seen[slot] != 0) {
                SpecKey other = ctx->seen_as[slot];

                if (other == key)
                        hydra_error_set(ctx->err, -EINVAL, "%s.%s: already set on line %u", section, name,
                                        ctx->seen[slot]);
                else
                        hydra_error_set(ctx->err, -EINVAL, "%s.%s: already set on line %u (as %s.%s: the same "
                                        "field)", section, name, ctx->seen[slot], key_table[other].section,
                                        key_table[other].name);
                goto fail;
        }
        r = spec_set(ctx->spec, key, value, ctx->base_dir, ctx->err);
        if (r < 0)
                goto fail;
        ctx->seen[slot] = ctx->line;
        ctx->seen_as[slot] = key;
        if (key_table[key].secret)
                ctx->secret_set[key] = !isempty(value);
        return 1;

fail:
        hydra_error_prefix(ctx->err, "%s:%u: ", ctx->name, ctx->line);
        ctx->failed = true;
        return 0;
}

static char *dir_of(const char *path) {
        _cleanup_free_ char *cwd = NULL, *dir = NULL;
        const char *slash = strrchr(path, '/');

        if (slash == path)
                return strdup("/");
        dir = slash ? strndup(path, (size_t) (slash - path)) : strdup(".");
        if (!dir)
                return NULL;
        if (dir[0] == '/')
                return TAKE_PTR(dir);
        cwd = get_current_dir_name();
        if (!cwd)
                return NULL;
        return path_join_clean(cwd, dir);
}

static void fill_info(const ParseContext *ctx, FILE *f, bool is_stdin, SpecFileInfo *info) {
        struct stat st;
        size_t len = 0;

        *info = (SpecFileInfo) {};
        for (size_t k = 0; k < _KEY_MAX; k++)
                if (ctx->secret_set[k] && len < sizeof(info->secrets))
                        len += (size_t) snprintf(info->secrets + len, sizeof(info->secrets) - len, "%s%s.%s",
                                                 len > 0 ? ", " : "", key_table[k].section, key_table[k].name);
        if (len == 0 || is_stdin || fstat(fileno(f), &st) < 0)
                return;
        if ((st.st_mode & (S_IRGRP | S_IROTH)) != 0) {
                info->secrets_exposed = true;
                info->mode = st.st_mode & 07777;
        }
}

int spec_load_file(Hydra__V1__VmSpec *spec, const char *path, SpecFileInfo *ret_info, HydraError *err) {
        _cleanup_free_ char *base_dir = NULL;
        bool is_stdin = streq(path, "-");
        ParseContext ctx = {
                .spec = spec,
                .name = is_stdin ? "<stdin>" : path,
                .at_line_start = true,
                .err = err,
        };
        char iobuf[BUFSIZ];
        FILE *f;
        int r;

        /* Debian's libinih (55-1) makes its compile-time switches run-time variables. Heap buffer growing to
         * twice our line limit, so that a long kernel command line is never split into two "lines" (the default
         * is a 200-byte stack buffer); values taken literally (no inline ';' comments); no indented
         * continuation lines; stop at the first error so that the returned line number is the one we report. */
        ini_use_stack = false;
        ini_allow_realloc = true;
        ini_max_line = 2 * SPEC_MAX_LINE;
        ini_allow_inline_comments = false;
        ini_allow_multiline = false;
        ini_stop_on_first_error = true;

        base_dir = dir_of(is_stdin ? "./-" : path);
        if (!base_dir)
                return hydra_error_set(err, -errno ?: -ENOMEM, "%s: cannot find its directory: %m", ctx.name);

        if (is_stdin) {
                /* A FILE of our own on a copy of fd 0, so that its buffer is ours to wipe and to close. */
                int fd = fcntl(STDIN_FILENO, F_DUPFD_CLOEXEC, 3);

                f = fd >= 0 ? fdopen(fd, "r") : NULL;
                if (!f) {
                        r = -errno;
                        safe_close(fd);
                        return hydra_error_set(err, r, "%s: %m", ctx.name);
                }
        } else
                f = fopen(path, "re");
        if (!f)
                return hydra_error_set(err, -errno, "%s: %m", path);
        /* Our own stdio buffer, wiped at the end: the file may hold secrets. */
        (void) setvbuf(f, iobuf, _IOFBF, sizeof(iobuf));
        ctx.f = f;
        ctx.base_dir = base_dir;

        r = ini_parse_stream(ini_read_line, &ctx, on_ini_entry, &ctx);
        /* A NUL on the last line, or one that made inih see a syntax error: the NUL is the news. */
        (void) nul_line_fail(&ctx);
        if (ctx.failed)
                r = err ? err->code : -EINVAL;
        else if (ferror(f))
                r = hydra_error_set(err, -EIO, "%s: cannot read: %m", ctx.name);
        else if (r == -2)
                r = hydra_error_set(err, -ENOMEM, "%s: out of memory", ctx.name);
        else if (r > 0)
                r = hydra_error_set(err, -EINVAL, "%s:%d: syntax error: expected '[section]', 'key = value', or a "
                                    "comment starting with '#' or ';'", ctx.name, r);
        else if (r < 0)
                r = hydra_error_set(err, -EIO, "%s: cannot read", ctx.name);
        if (r >= 0 && ret_info)
                fill_info(&ctx, f, is_stdin, ret_info);
        fclose(f);
        explicit_bzero(iobuf, sizeof(iobuf));
        return r < 0 ? r : 0;
}

int spec_apply_set(Hydra__V1__VmSpec *spec, const char *assignment, HydraError *err) {
        _cleanup_free_ char *cwd = NULL, *lhs = NULL;
        const char *eq = strchr(assignment, '='), *value;
        char *dot, *section, *name;
        SpecKey key;
        int r;

        if (!eq)
                goto syntax;
        lhs = strndup(assignment, (size_t) (eq - assignment));
        if (!lhs)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        value = eq + 1;
        dot = strchr(lhs, '.');
        if (!dot)
                goto syntax;
        *dot = '\0';
        section = lhs;
        name = dot + 1;

        key = key_lookup(section, name, err);
        if (key < 0)
                return hydra_error_prefix(err, "--set '%s': ", assignment);
        if (key_table[key].secret)
                /* Not even the value in the message: it is in the terminal's scrollback already, not in logs. */
                return hydra_error_set(err, -EINVAL, "--set %s.%s: secrets are not accepted on the command line: put "
                                       "them in the spec file (mode 0600) or use --from-env", section, name);
        cwd = get_current_dir_name();
        if (!cwd)
                return hydra_error_set(err, -errno, "cannot get the current directory: %m");
        r = spec_set(spec, key, value, cwd, err);
        if (r < 0)
                return hydra_error_prefix(err, "--set '%s': ", assignment);
        return 0;

syntax:
        return hydra_error_set(err, -EINVAL, "--set '%s': expected SECTION.KEY=VALUE, e.g. vm.cpus=2", assignment);
}

/* A sub-message whose fields are all defaults packs to nothing: send none rather than an empty one, so that a
 * spec reads the same whichever way it was written. */
#define DROP_IF_EMPTY(ptr, free_fn)                                                              \
        do {                                                                                     \
                if ((ptr) && protobuf_c_message_get_packed_size(&(ptr)->base) == 0) {            \
                        free_fn((ptr), NULL);                                                    \
                        (ptr) = NULL;                                                            \
                }                                                                                \
        } while (0)

int spec_finish(Hydra__V1__VmSpec *spec, HydraError *err) {
        if (spec->guest && !isempty(spec->guest->password) && !isempty(spec->guest->password_hash))
                return hydra_error_set(err, -EINVAL, "guest.password and guest.password_hash are both set: give one");

        if (spec->bare)
                DROP_IF_EMPTY(spec->bare->artifact, hydra__v1__source__free_unpacked);
        DROP_IF_EMPTY(spec->kernel, hydra__v1__kernel_boot__free_unpacked);
        DROP_IF_EMPTY(spec->firmware, hydra__v1__firmware__free_unpacked);
        DROP_IF_EMPTY(spec->image, hydra__v1__source__free_unpacked);
        DROP_IF_EMPTY(spec->bare, hydra__v1__bare_kernel__free_unpacked);
        DROP_IF_EMPTY(spec->guest, hydra__v1__guest__free_unpacked);
        DROP_IF_EMPTY(spec->software, hydra__v1__software__free_unpacked);
        DROP_IF_EMPTY(spec->network, hydra__v1__network__free_unpacked);
        DROP_IF_EMPTY(spec->shares, hydra__v1__shares__free_unpacked);
        DROP_IF_EMPTY(spec->devices, hydra__v1__devices__free_unpacked);
        DROP_IF_EMPTY(spec->supervision, hydra__v1__supervision__free_unpacked);
        DROP_IF_EMPTY(spec->resources, hydra__v1__resources__free_unpacked);
        return 0;
}
