/* SPDX-License-Identifier: MIT */
#pragma once

/* daemon/base: the vocabulary and the tools every layer of hydrad uses: the spec (this file), atomic files
 * (store.h), the disk queue and worker threads (disk_queue.h, worker.h), processes and helper programs (process.h,
 * child.h), listening sockets (listener.h), how URLs are shown and taken apart (url.h). It includes nothing of
 * hydrad above it; a tool belongs here when two layers need it and it knows no VM. */

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* The VM spec as the core sees it: plain C, no protobuf. api.c converts hydra.v1.VmSpec to and from this; the
 * stored form on disk is the packed protobuf (see SpecCodec below). */

typedef enum Role {
        ROLE_HOST,
        ROLE_ISOLATED,
        _ROLE_MAX,
        _ROLE_INVALID = -EINVAL,
} Role;

typedef enum Accel {
        ACCEL_AUTO,
        ACCEL_KVM,
        ACCEL_TCG,
        _ACCEL_MAX,
        _ACCEL_INVALID = -EINVAL,
} Accel;

typedef enum Arch {
        ARCH_X86_64,
        ARCH_AARCH64,
        _ARCH_MAX,
        _ARCH_INVALID = -EINVAL,
} Arch;

typedef enum ForwardProtocol {
        FORWARD_TCP,
        FORWARD_UDP,
        _FORWARD_PROTOCOL_MAX,
        _FORWARD_PROTOCOL_INVALID = -EINVAL,
} ForwardProtocol;

typedef struct PortForward {
        char *host_addr;           /* IPv4 literal; NULL or "" means 127.0.0.1 once defaults are applied */
        uint32_t host_port;        /* 1-65535 */
        uint32_t guest_port;       /* 1-65535 */
        ForwardProtocol protocol;
} PortForward;

typedef enum KubeletShares {
        KUBELET_SHARES_VIRTIO,     /* virtio 9p, mount tags host0 (/var/lib/kubelet) and host1 (/var/log/pods) */
        KUBELET_SHARES_TCP,        /* 9p over TCP to diod on the gateway */
        KUBELET_SHARES_NONE,
        _KUBELET_SHARES_MAX,
        _KUBELET_SHARES_INVALID = -EINVAL,
} KubeletShares;

typedef enum Shmem {
        SHMEM_NONE,
        SHMEM_NVDIMM,
        SHMEM_IVSHMEM,
        _SHMEM_MAX,
        _SHMEM_INVALID = -EINVAL,
} Shmem;

typedef enum RestartPolicy {
        RESTART_NO,
        RESTART_ON_FAILURE,        /* after a crash (QEMU died, guest panic), not after a clean shutdown */
        RESTART_ALWAYS,            /* also after the guest shut itself down; never after StopVm */
        _RESTART_POLICY_MAX,
        _RESTART_POLICY_INVALID = -EINVAL,
} RestartPolicy;

typedef enum ProbeKind {
        PROBE_CONSOLE,             /* a pattern on the serial console (default: a login prompt) */
        PROBE_TCP,                 /* a TCP connection through the forward of probe_port that stays open */
        PROBE_CONTAINERD,          /* containerd's Version over gRPC through the forward of probe_port */
        PROBE_NONE,                /* never ready */
        _PROBE_KIND_MAX,
        _PROBE_KIND_INVALID = -EINVAL,
} ProbeKind;

/* A remote file. password and token are secrets: never in argv, logs or errors (see source_redacted_url). */
typedef struct Source {
        char *url;                 /* http://, https:// or file:///ABS; NULL: none */
        char *checksum;            /* "sha256:HEX" / "sha512:HEX" or NULL */
        char *sums_url;            /* SHA256SUMS / SHA512SUMS URL or NULL */
        char *user;
        char *password;
        char *token;
        char *token_header;        /* NULL: PRIVATE-TOKEN */
} Source;

typedef struct Share {
        char *host_path;           /* absolute */
        char *guest_path;          /* absolute */
} Share;

typedef struct VmSpec {
        unsigned cpus;             /* 1-255 */
        uint64_t memory_mib;       /* >= 64 */
        Accel accel;
        Arch arch;
        char *machine;             /* QEMU machine type, e.g. "q35"; NULL: per-arch default */
        char *cpu_model;           /* QEMU -cpu model (+ features); NULL: per-accel default */
        char *kernel;              /* absolute path; NULL: no direct kernel boot */
        char *initrd;              /* absolute path or NULL */
        char *cmdline;             /* kernel command line or NULL */
        char *disk;                /* absolute path of a local disk image or NULL */
        PortForward *forwards;
        size_t n_forwards;

        uint32_t disk_size_gib;    /* grow the VM's disk to this; 0: leave it */
        char *firmware_code;       /* absolute path or NULL */
        char *firmware_vars;       /* absolute path (template, copied per VM) or NULL */

        Source image;              /* cloud image; image.url NULL: none */
        bool keep_pristine;        /* disk = qcow2 overlay on the cached base, else a copy */
        bool reuse_disk_on_change;

        struct {
                Source artifact;   /* artifact.url NULL: no bare-kernel boot */
                char *dir;
                char *kernel;
                char *kernel_version;
                char *initrd;
                char *rootfs;
                bool encrypted_tools;
        } bare;

        struct {
                char *username;
                char *password;         /* cleartext: only between decode and vm_spec_hash_password() */
                char *password_hash;
                char *hostname;
                char **ssh_authorized_keys;  /* strv or NULL */
        } guest;

        struct {
                bool disable_containerd_proxy;
                char *csi_grpc_proxy_url;
                bool k3s_diod;
                char *k3s_version;
                char *kernel_package;
                char **extra_debs;      /* strv or NULL */
                bool reboot_after_install;
                bool package_update;    /* cloud-init package_update: apt-get update at first boot */
                bool package_upgrade;   /* cloud-init package_upgrade: apt-get upgrade at first boot */
                char *sandbox_image;    /* containerd's CRI sandbox image; NULL: SPEC_DEFAULT_SANDBOX_IMAGE */
                char *sandbox_image_url;/* an OCI archive of it the guest imports at first boot, or NULL */
                char *crismux_url;      /* k3s_diod: the installer's CRISMUX_ARTIFACT_URL, or NULL: its default */
                char *crismux_sha256;   /* k3s_diod: the installer's CRISMUX_SHA256, or NULL */
        } software;

        struct {
                char *guest_ip;
                char *gateway;
                char *dns;
                uint32_t prefix_len;
                char *mac;
        } network;

        struct {
                KubeletShares kubelet;
                char *kubelet_host_dir;
                uint32_t diod_port;
                Share *extra;
                size_t n_extra;
        } shares;

        struct {
                bool vsock;
                uint32_t vsock_cid;
                bool gpu;
                uint32_t gpu_vram_gib;
                Shmem shmem;
                uint32_t shmem_size_gib;
                char *shmem_path;
        } devices;

        struct {
                RestartPolicy restart;
                uint32_t max_restarts;       /* deaths within the window before giving up */
                uint32_t restart_window_sec;
                bool autostart;              /* started when hydrad starts */
                uint32_t stop_timeout_sec;   /* 0: the daemon's stop_timeout */
                ProbeKind probe;
                char *probe_pattern;         /* PROBE_CONSOLE: POSIX extended regex; NULL: a login prompt */
                uint32_t probe_port;         /* PROBE_TCP, PROBE_CONTAINERD: the guest port of a TCP forward */
                uint32_t ready_timeout_sec;  /* not ready this long after QEMU started: stopped, failed; 0: none */
                char *start_after;           /* "host" / "isolated": the other role, started first and waited for
                                              * until ready; NULL: none */
        } supervision;

        /* Limits of the QEMU process, set on its systemd scope (core/machine.h): applied only where hydrad
         * registers its VMs with systemd-machined (hydrad.conf machined). */
        struct {
                uint32_t cpu_quota_percent;  /* systemd's CPUQuota=: 100 is one CPU's time; 0: no limit */
                uint64_t memory_max;         /* bytes, systemd's MemoryMax=; 0: no limit */
        } resources;
} VmSpec;

#define SPEC_DEFAULT_CPUS 2U
#define SPEC_DEFAULT_MEMORY_MIB 2048U
#define SPEC_MIN_MEMORY_MIB 64U
#define SPEC_MAX_CPUS 255U
#define SPEC_MAX_MEMORY_MIB (UINT64_C(16) * 1024 * 1024) /* 16 TiB */

/* Defaults taken from start-vm.sh, applied by vm_spec_apply_defaults(). */
#define SPEC_DEFAULT_USERNAME "hailhydra"
#define SPEC_DEFAULT_HOSTNAME "hydravm"
#define SPEC_DEFAULT_GUEST_IP "10.0.2.15"
#define SPEC_DEFAULT_GATEWAY "10.0.2.2"
#define SPEC_DEFAULT_DNS "10.0.2.3"
#define SPEC_DEFAULT_PREFIX_LEN 24U
#define SPEC_DEFAULT_MAC_IMAGE "52:54:00:08:06:8b"
#define SPEC_DEFAULT_MAC_BARE "52:54:00:94:33:ca"
#define SPEC_DEFAULT_K3S_VERSION "v1.32.6+k3s1"
/* containerd 1.6's own default (Debian 12's containerd), written out so that a device knows what to provide. */
#define SPEC_DEFAULT_SANDBOX_IMAGE "registry.k8s.io/pause:3.6"
#define SPEC_DEFAULT_CSI_GRPC_PROXY_URL \
        "https://github.com/democratic-csi/csi-grpc-proxy/releases/download/v0.5.6/csi-grpc-proxy-v0.5.6-linux-"
#define SPEC_DEFAULT_DIOD_PORT 30564U
#define SPEC_DEFAULT_VSOCK_CID 3U
#define SPEC_DEFAULT_GPU_VRAM_GIB 4U
#define SPEC_DEFAULT_SHMEM_SIZE_GIB 1U
#define SPEC_DEFAULT_TOKEN_HEADER "PRIVATE-TOKEN"
#define SPEC_DEFAULT_BARE_KERNEL "Image.gz"
#define SPEC_DEFAULT_BARE_INITRD "initramfs.linux_arm64.cpio"
#define SPEC_DEFAULT_BARE_ROOTFS "something.qcow2"
#define SPEC_DEFAULT_MAX_RESTARTS 5U
#define SPEC_DEFAULT_RESTART_WINDOW_SEC 600U
#define SPEC_DEFAULT_CONTAINERD_PORT 35000U
#define SPEC_MAX_PROBE_PATTERN 256U
#define SPEC_MAX_READY_TIMEOUT_SEC 86400U
/* resources.cpu_quota_percent: up to every CPU a spec may have. */
#define SPEC_MAX_CPU_QUOTA_PERCENT (SPEC_MAX_CPUS * 100U)
/* resources.memory_max leaves QEMU itself at least this much above the guest's memory: below it, the guest touching
 * its own RAM gets QEMU killed by the kernel's OOM killer. */
#define SPEC_MIN_QEMU_OVERHEAD_MIB 64U

/* What a spec boots: decided by which fields are set (see vm_spec_boot_mode). */
typedef enum BootMode {
        BOOT_LOCAL,                /* spec->disk and/or spec->kernel: local files only */
        BOOT_CLOUD_IMAGE,          /* image.url: disk made from the cached image, plus a cloud-init seed */
        BOOT_BARE_KERNEL,          /* bare.artifact.url: kernel, initrd and rootfs from the artifact */
} BootMode;

BootMode vm_spec_boot_mode(const VmSpec *spec);

const char *role_to_string(Role r);
Role role_from_string(const char *s);
const char *accel_to_string(Accel a);
Accel accel_from_string(const char *s);
const char *arch_to_string(Arch a);
Arch arch_from_string(const char *s);
const char *forward_protocol_to_string(ForwardProtocol p);
const char *kubelet_shares_to_string(KubeletShares k);
KubeletShares kubelet_shares_from_string(const char *s);
const char *shmem_to_string(Shmem s);
Shmem shmem_from_string(const char *s);
ForwardProtocol forward_protocol_from_string(const char *s);
const char *restart_policy_to_string(RestartPolicy p);
RestartPolicy restart_policy_from_string(const char *s);
const char *probe_kind_to_string(ProbeKind k);
ProbeKind probe_kind_from_string(const char *s);

/* Frees what the spec owns and zeroes it. Accepts a zeroed spec. */
void vm_spec_done(VmSpec *spec);

/* Deep copy; dst must not own anything. Returns 0 or -ENOMEM. */
int vm_spec_copy(VmSpec *dst, const VmSpec *src);

/* Equal field by field (after defaults). */
bool vm_spec_equal(const VmSpec *a, const VmSpec *b);

/* Fills in the defaults for fields a request left empty (cpus 0, memory 0, forward host_addr empty or NULL).
 * Returns 0 or -ENOMEM. */
int vm_spec_apply_defaults(VmSpec *spec);

/* Checks every field. On failure returns -EINVAL and fills err with a message that names the field, the
 * value and what is allowed, e.g. "forwards[1].host_port: 70000 is out of range (allowed: 1-65535)". */
int vm_spec_validate(const VmSpec *spec, HydraError *err);

/* What only the spec's own role decides: supervision.start_after names the other role, never its own. Returns 0 or
 * -EINVAL with err naming the field. */
int vm_spec_validate_role(const VmSpec *spec, Role role, HydraError *err);

/* The role the spec starts after, or _ROLE_INVALID for none (an invalid name too: vm_spec_validate refuses it). */
Role vm_spec_start_after(const VmSpec *spec);

/* Two VMs' host forwards collide when they have the same protocol and host port, and their host addresses are
 * equal or either is 0.0.0.0 (QEMU's hostfwd of the second would fail to bind). Returns the index in a of the
 * first clashing forward and sets *ret_b to its partner's index in b, or -ENOENT when nothing clashes. */
int vm_spec_forwards_clash(const VmSpec *a, const VmSpec *b, size_t *ret_b);

/* A forward's host address with the default applied ("127.0.0.1" for an empty one). */
const char *port_forward_host_addr(const PortForward *f);

/* The guest network as slirp and the guest see it: unset fields take start-vm.sh's defaults (which are slirp's).
 * vm_spec_validate() runs this; the QEMU argv builder and the cloud-init renderer take their addresses from it,
 * so that no address passes RegisterVm and fails at StartVm. Returns 0 or -EINVAL (err set). */
typedef struct SpecNetwork {
        struct in_addr guest, gateway, dns, network, netmask;
        uint32_t prefix_len;
} SpecNetwork;

int vm_spec_network(const VmSpec *spec, SpecNetwork *ret, HydraError *err);

/* The guest NIC's MAC address: network.mac, else the default of the boot mode (start-vm.sh's two). The QEMU argv
 * builder gives the NIC this address and the cloud-init renderer matches the guest's interface by it: one choice
 * for both. Borrowed from the spec or a constant. */
const char *vm_spec_mac(const VmSpec *spec);

/* Replaces guest.password (cleartext) by a yescrypt hash in guest.password_hash and wipes the cleartext. No-op
 * without a password. Returns 0, or -errno with err set (never quoting the password). */
int vm_spec_hash_password(VmSpec *spec, HydraError *err);

/* True if password hashes to hash (crypt(3)). */
bool vm_spec_password_matches(const char *password, const char *hash);

/* For replies: every secret (source passwords and tokens, guest.password) that is set becomes "(set)". */
int vm_spec_redact(VmSpec *spec);

/* How a spec is stored: the packed hydra.v1.VmSpec. The codec lives with the protobuf code (api_pb.c),
 * so the core never includes a .pb-c.h; tests pass their own. */
typedef struct SpecCodec {
        int (*encode)(const VmSpec *spec, void **ret_data, size_t *ret_size);
        /* Returns 0, or -EBADMSG for bytes that are not a VmSpec, with err saying why (naming the field when
         * a string is not UTF-8 or holds a NUL byte). */
        int (*decode)(const void *data, size_t size, VmSpec *ret_spec, HydraError *err);
} SpecCodec;
