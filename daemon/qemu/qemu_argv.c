/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/un.h>

#include "macro.h"
#include "qemu_argv.h"

#define SUN_PATH_SIZE sizeof(((struct sockaddr_un) {}).sun_path)

/* Fixed parts of start-vm.sh's command line that the guest side relies on: cloud-init and the rimd initramfs
 * mount the kubelet shares by tag (host0, host1; extra shares from host100), and the drive ids are what QMP
 * query-block reports. */
#define KUBELET_DIR "/var/lib/kubelet"
#define PODS_LOG_DIR "/var/log/pods"
#define EXTRA_SHARE_FIRST_TAG 100U
#define SHMEM_SLOTS 2U

const char *qemu_default_machine(Arch arch) {
        switch (arch) {
        case ARCH_X86_64:
                return "pc"; /* start-vm.sh's: the seed goes on its IDE cdrom */
        case ARCH_AARCH64:
                return "virt"; /* the builder adds gic-version=max (machine_wants_gic) */
        default:
                return NULL;
        }
}

const char *qemu_default_cpu(Arch arch, Accel accel) {
        if (accel == ACCEL_KVM && (arch == ARCH_X86_64 || arch == ARCH_AARCH64))
                return "host";
        if (accel != ACCEL_TCG)
                return NULL;
        switch (arch) {
        case ARCH_X86_64:
                return "qemu64";
        case ARCH_AARCH64:
                return "cortex-a76";
        default:
                return NULL;
        }
}

const char *qemu_binary_name(Arch arch) {
        switch (arch) {
        case ARCH_X86_64:
                return "qemu-system-x86_64";
        case ARCH_AARCH64:
                return "qemu-system-aarch64";
        default:
                return NULL;
        }
}

char *qemu_escape_comma(const char *s) {
        size_t n = 0;
        char *ret, *p;

        for (const char *i = s; *i; i++)
                n += *i == ',' ? 2 : 1;

        ret = malloc(n + 1);
        if (!ret)
                return NULL;
        p = ret;
        for (const char *i = s; *i; i++) {
                *p++ = *i;
                if (*i == ',')
                        *p++ = ',';
        }
        *p = '\0';
        return ret;
}

/* A strv under construction. The first failure sticks in r and later calls do nothing, so that the builder reads
 * as a straight list of arguments with one check at the end. */
typedef struct ArgvBuilder {
        char **v;
        size_t n;
        size_t allocated;
        int r;
} ArgvBuilder;

static void builder_take(ArgvBuilder *b, char *s) {
        if (b->r < 0 || !s) {
                free(s);
                if (b->r >= 0)
                        b->r = -ENOMEM;
                return;
        }
        if (b->n + 2 > b->allocated) {
                size_t a = b->allocated ? b->allocated * 2 : 64;
                char **v = reallocarray(b->v, a, sizeof(char *));

                if (!v) {
                        free(s);
                        b->r = -ENOMEM;
                        return;
                }
                b->v = v;
                b->allocated = a;
        }
        b->v[b->n++] = s;
        b->v[b->n] = NULL;
}

static void builder_add(ArgvBuilder *b, const char *s) {
        builder_take(b, b->r < 0 ? NULL : strdup(s));
}

_printf_(2, 3) static void builder_addf(ArgvBuilder *b, const char *fmt, ...) {
        char *s = NULL;
        va_list ap;

        if (b->r < 0)
                return;
        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        va_end(ap);
        builder_take(b, s);
}

/* Appends to a heap string; returns 0 or -ENOMEM (then *s is left as it was). */
_printf_(2, 3) static int strextendf(char **s, const char *fmt, ...) {
        _cleanup_free_ char *tail = NULL;
        char *joined = NULL;
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&tail, fmt, ap);
        va_end(ap);
        if (r < 0) {
                tail = NULL;
                return -ENOMEM;
        }
        if (asprintf(&joined, "%s%s", strempty(*s), tail) < 0)
                return -ENOMEM;
        free(*s);
        *s = joined;
        return 0;
}

static bool has_control(const char *s) {
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || *s == 0x7f)
                        return true;
        return false;
}

/* The runtime comes from the daemon, not from a request, but a wrong one must still fail here rather than as
 * a QEMU error (or a split golden file) later. */
static int check_runtime(const VmSpec *spec, const QemuRuntime *rt, BootMode mode, HydraError *err) {
        const struct {
                const char *field;
                const char *value;
        } strings[] = {
                { "binary", rt->binary },
                { "name", rt->name },
                { "qmp_path", rt->qmp_fd >= 0 ? NULL : rt->qmp_path },
                { "console_socket", rt->console_fd >= 0 ? NULL : rt->console_socket },
                { "disk_path", rt->disk_path },
                { "disk_format", rt->disk_path ? rt->disk_format : NULL },
                { "seed_path", rt->seed_path },
                { "kernel", rt->kernel },
                { "initrd", rt->initrd },
                { "firmware_vars", rt->firmware_vars },
                { "shmem_path", rt->shmem_path },
        };

        if (rt->accel != ACCEL_KVM && rt->accel != ACCEL_TCG)
                return hydra_error_set(err, -EINVAL,
                                       "runtime accel: '%s' is not resolved (allowed: kvm, tcg; auto must be resolved "
                                       "before the command line is built)",
                                       strempty(accel_to_string(rt->accel)));
        if (isempty(rt->binary))
                return hydra_error_set(err, -EINVAL, "runtime binary: not set");
        if (isempty(rt->name))
                return hydra_error_set(err, -EINVAL, "runtime name: not set");
        if (rt->qmp_fd < 0 && isempty(rt->qmp_path))
                return hydra_error_set(err, -EINVAL, "runtime qmp: neither a socket fd nor a path is set");
        if (rt->console_fd < 0 && isempty(rt->console_socket))
                return hydra_error_set(err, -EINVAL, "runtime console: neither a socket fd nor a path is set");

        /* What the spec asks for must have been resolved to a file by the caller. */
        if (!isempty(spec->disk) && isempty(rt->disk_path))
                return hydra_error_set(err, -EINVAL, "runtime disk_path: not set (the spec has a disk)");
        if (!isempty(spec->kernel) && isempty(rt->kernel))
                return hydra_error_set(err, -EINVAL, "runtime kernel: not set (the spec has a kernel)");
        if (!isempty(spec->initrd) && isempty(rt->initrd))
                return hydra_error_set(err, -EINVAL, "runtime initrd: not set (the spec has an initrd)");
        if (mode == BOOT_CLOUD_IMAGE && isempty(rt->disk_path))
                return hydra_error_set(err, -EINVAL, "runtime disk_path: not set (a cloud-image boot needs the disk "
                                       "made from image.url)");
        if (mode == BOOT_CLOUD_IMAGE && isempty(rt->seed_path))
                return hydra_error_set(err, -EINVAL, "runtime seed_path: not set (a cloud-image boot needs the "
                                       "cloud-init seed)");
        if (mode == BOOT_BARE_KERNEL && !rt->bare_kernel)
                return hydra_error_set(err, -EINVAL, "runtime bare_kernel: not set (the spec boots the bare kernel "
                                       "of bare.artifact.url)");
        if (mode != BOOT_BARE_KERNEL && rt->bare_kernel)
                return hydra_error_set(err, -EINVAL, "runtime bare_kernel: set, but the spec does not boot a bare "
                                       "kernel (allowed: only with bare.artifact.url and no image.url)");
        if (rt->bare_kernel && (isempty(rt->kernel) || isempty(rt->initrd) || isempty(rt->disk_path)))
                return hydra_error_set(err, -EINVAL, "runtime %s: not set (a bare-kernel boot needs the kernel, "
                                       "initrd and rootfs of the artifact)",
                                       isempty(rt->kernel) ? "kernel" : isempty(rt->initrd) ? "initrd" : "disk_path");
        if (!isempty(rt->initrd) && isempty(rt->kernel))
                return hydra_error_set(err, -EINVAL, "runtime initrd: set without a kernel");
        if (!isempty(rt->disk_path) && (!rt->disk_format || (!streq(rt->disk_format, "qcow2") &&
                                                             !streq(rt->disk_format, "raw"))))
                return hydra_error_set(err, -EINVAL, "runtime disk_format: '%s' is not supported (allowed: qcow2, raw)",
                                       strempty(rt->disk_format));
        if (!isempty(spec->firmware_vars) && isempty(rt->firmware_vars))
                return hydra_error_set(err, -EINVAL, "runtime firmware_vars: not set (the spec has firmware vars; "
                                       "each VM gets its own copy)");
        if (!isempty(rt->firmware_vars) && isempty(spec->firmware_code))
                return hydra_error_set(err, -EINVAL, "runtime firmware_vars: set without firmware code in the spec");
        if (spec->devices.shmem != SHMEM_NONE && isempty(rt->shmem_path))
                return hydra_error_set(err, -EINVAL, "runtime shmem_path: not set (devices.shmem is %s)",
                                       strempty(shmem_to_string(spec->devices.shmem)));

        for (size_t i = 0; i < ELEMENTSOF(strings); i++)
                if (strings[i].value && has_control(strings[i].value))
                        return hydra_error_set(err, -EINVAL,
                                               "runtime %s: contains a control character (not allowed)",
                                               strings[i].field);

        if (rt->qmp_fd < 0 && strlen(rt->qmp_path) >= SUN_PATH_SIZE)
                return hydra_error_set(err, -EINVAL,
                                       "runtime qmp_path: '%s' is longer than a unix socket path may be (allowed: at "
                                       "most %zu bytes)",
                                       rt->qmp_path, SUN_PATH_SIZE - 1);
        return 0;
}

/* The guest network, resolved: unset fields take start-vm.sh's defaults, which are also slirp's. */
typedef struct NetConfig {
        char guest[INET_ADDRSTRLEN];
        char gateway[INET_ADDRSTRLEN];
        char dns[INET_ADDRSTRLEN];
        char network[INET_ADDRSTRLEN];
        char netmask[INET_ADDRSTRLEN];
        uint32_t prefix_len;
        bool slirp_default; /* nothing to tell slirp: its own 10.0.2.0/24 layout */
} NetConfig;

/* The addresses come from vm_spec_network(), the rule vm_spec_validate() applies at RegisterVm. */
static int resolve_network(const VmSpec *spec, NetConfig *ret, HydraError *err) {
        SpecNetwork n;
        NetConfig c = {};
        int r;

        r = vm_spec_network(spec, &n, err);
        if (r < 0)
                return r;
        if (!inet_ntop(AF_INET, &n.guest, c.guest, sizeof(c.guest)) ||
            !inet_ntop(AF_INET, &n.gateway, c.gateway, sizeof(c.gateway)) ||
            !inet_ntop(AF_INET, &n.dns, c.dns, sizeof(c.dns)) ||
            !inet_ntop(AF_INET, &n.network, c.network, sizeof(c.network)) ||
            !inet_ntop(AF_INET, &n.netmask, c.netmask, sizeof(c.netmask)))
                return hydra_error_set(err, -EINVAL, "network: cannot format an address");
        c.prefix_len = n.prefix_len;
        c.slirp_default = streq(c.guest, SPEC_DEFAULT_GUEST_IP) && streq(c.gateway, SPEC_DEFAULT_GATEWAY) &&
                          streq(c.dns, SPEC_DEFAULT_DNS) && n.prefix_len == SPEC_DEFAULT_PREFIX_LEN;
        *ret = c;
        return 0;
}

/* aarch64's virt board defaults to GICv2, which KVM on GICv3-only hosts cannot provide and which caps the guest
 * at 8 vCPUs: ask for the best the accelerator has, as start-vm.sh does, unless the machine sets a version. */
static bool machine_wants_gic(Arch arch, const char *machine) {
        size_t type_len = strcspn(machine, ",");

        if (arch != ARCH_AARCH64)
                return false;
        if (!(type_len == 4 && strncmp(machine, "virt", 4) == 0) && strncmp(machine, "virt-", 5) != 0)
                return false;
        return !strstr(machine, "gic-version=");
}

/* Sizes: what the spec says, or start-vm.sh's default where a spec without defaults applied left them 0. */
static uint32_t shmem_size_gib(const VmSpec *spec) {
        return spec->devices.shmem_size_gib ? spec->devices.shmem_size_gib : SPEC_DEFAULT_SHMEM_SIZE_GIB;
}

static uint32_t gpu_vram_gib(const VmSpec *spec) {
        return spec->devices.gpu_vram_gib ? spec->devices.gpu_vram_gib : SPEC_DEFAULT_GPU_VRAM_GIB;
}

static int oom(HydraError *err) {
        return hydra_error_set(err, -ENOMEM, "qemu argv: out of memory");
}

/* Doubles the commas of a value for a key=value option. On ENOMEM the failure sticks in b and NULL comes back,
 * which the builder functions then ignore. */
static char *builder_escape(ArgvBuilder *b, const char *s) {
        char *e;

        if (b->r < 0)
                return NULL;
        e = qemu_escape_comma(s);
        if (!e)
                b->r = -ENOMEM;
        return e;
}

static void add_machine(ArgvBuilder *b, const VmSpec *spec, const QemuRuntime *rt) {
        const char *machine = isempty(spec->machine) ? qemu_default_machine(spec->arch) : spec->machine;
        const char *cpu = isempty(spec->cpu_model) ? qemu_default_cpu(spec->arch, rt->accel) : spec->cpu_model;
        uint64_t maxmem_mib;

        /* machine is a validated type name (or our default): its commas, if any, are meant. The GPU's RAM must be
         * a memfd the host's GPU stack can map; nvdimm needs the machine's ACPI NFIT. */
        builder_add(b, "-machine");
        builder_addf(b, "%s%s,accel=%s%s%s", machine,
                     machine_wants_gic(spec->arch, machine) ? ",gic-version=max" : "",
                     accel_to_string(rt->accel), spec->devices.shmem == SHMEM_NVDIMM ? ",nvdimm=on" : "",
                     spec->devices.gpu ? ",memory-backend=mem1" : "");
        /* cpu_model's commas separate features by design; validation allowed only MODEL(,FEATURE)*. */
        builder_add(b, "-cpu");
        builder_add(b, cpu);
        builder_add(b, "-smp");
        builder_addf(b, "%u", spec->cpus);
        builder_add(b, "-m");
        if (spec->devices.shmem == SHMEM_NVDIMM) {
                /* The nvdimm sits in hot-pluggable memory: start-vm.sh leaves two slots and twice its size. */
                maxmem_mib = spec->memory_mib + (uint64_t) SHMEM_SLOTS * shmem_size_gib(spec) * 1024;
                builder_addf(b, "%" PRIu64 "M,slots=%u,maxmem=%" PRIu64 "M", spec->memory_mib, SHMEM_SLOTS,
                             maxmem_mib);
        } else
                builder_addf(b, "%" PRIu64 "M", spec->memory_mib);
}

static void add_firmware(ArgvBuilder *b, const VmSpec *spec, const QemuRuntime *rt) {
        _cleanup_free_ char *code = NULL, *vars = NULL;

        if (isempty(spec->firmware_code))
                return;
        code = builder_escape(b, spec->firmware_code);
        builder_add(b, "-drive");
        builder_addf(b, "if=pflash,format=raw,readonly=on,file=%s", code);
        if (isempty(rt->firmware_vars))
                return;
        vars = builder_escape(b, rt->firmware_vars);
        builder_add(b, "-drive");
        builder_addf(b, "if=pflash,format=raw,file=%s", vars);
}

static void add_monitor_and_console(ArgvBuilder *b, const QemuRuntime *rt) {
        _cleanup_free_ char *qmp = NULL, *console = NULL;

        builder_add(b, "-chardev");
        if (rt->qmp_fd >= 0)
                builder_addf(b, "socket,id=qmp,fd=%d,server=on,wait=off", rt->qmp_fd);
        else {
                qmp = builder_escape(b, rt->qmp_path);
                builder_addf(b, "socket,id=qmp,path=%s,server=on,wait=off", qmp);
        }
        builder_add(b, "-mon");
        builder_add(b, "chardev=qmp,mode=control");

        /* The serial console is a socket QEMU listens on and hydrad reads (console.c): hydrad keeps the log and
         * lets people attach. wait=off: a guest never blocks on a missing reader. */
        builder_add(b, "-chardev");
        if (rt->console_fd >= 0)
                builder_addf(b, "socket,id=console,fd=%d,server=on,wait=off", rt->console_fd);
        else {
                console = builder_escape(b, rt->console_socket);
                builder_addf(b, "socket,id=console,path=%s,server=on,wait=off", console);
        }
        builder_add(b, "-serial");
        builder_add(b, "chardev:console");
}

static void add_network(ArgvBuilder *b, const VmSpec *spec, const QemuRuntime *rt, const NetConfig *net) {
        _cleanup_free_ char *netdev = NULL, *mac = NULL;

        if (b->r < 0)
                return;
        netdev = strdup("user,id=net0");
        if (!netdev) {
                b->r = -ENOMEM;
                return;
        }
        /* slirp's defaults are start-vm.sh's; anything else must be told, or the guest's static address (cloud-init,
         * ip= on the kernel command line) would sit outside slirp's network. */
        if (!net->slirp_default &&
            strextendf(&netdev, ",net=%s/%" PRIu32 ",host=%s,dns=%s,dhcpstart=%s", net->network, net->prefix_len,
                       net->gateway, net->dns, net->guest) < 0) {
                b->r = -ENOMEM;
                return;
        }
        for (size_t i = 0; i < spec->n_forwards; i++) {
                const PortForward *f = &spec->forwards[i];

                /* host_addr is a validated IPv4 literal: nothing to escape. Unset binds loopback, not the
                 * script's 0.0.0.0 (containerd's API has no authentication). */
                if (strextendf(&netdev, ",hostfwd=%s:%s:%" PRIu32 "-:%" PRIu32,
                               forward_protocol_to_string(f->protocol),
                               isempty(f->host_addr) ? "127.0.0.1" : f->host_addr, f->host_port, f->guest_port) < 0) {
                        b->r = -ENOMEM;
                        return;
                }
        }
        builder_add(b, "-netdev");
        builder_take(b, TAKE_PTR(netdev));

        /* The cloud-init seed matches the guest's interface by this address (vm_spec_mac() chooses for both). */
        mac = builder_escape(b, vm_spec_mac(spec));
        builder_add(b, "-device");
        builder_addf(b, "virtio-net-pci,netdev=net0,mac=%s", mac);
}

static void add_disks(ArgvBuilder *b, const VmSpec *spec, const QemuRuntime *rt) {
        _cleanup_free_ char *disk = NULL, *seed = NULL;

        /* Drive ids are an interface: hydrad and the tests find the drives by them in query-block. */
        if (!isempty(rt->disk_path)) {
                disk = builder_escape(b, rt->disk_path);
                builder_add(b, "-drive");
                builder_addf(b, "if=none,id=disk0,format=%s,file=%s,discard=unmap", rt->disk_format, disk);
                builder_add(b, "-device");
                builder_add(b, "virtio-blk-pci,drive=disk0");
        }
        if (isempty(rt->seed_path))
                return;

        /* cloud-init finds its NoCloud seed by the "cidata" label on any block device: a cdrom where the machine
         * has IDE (x86_64's pc and q35), a read-only virtio disk on aarch64's virt, which has none. */
        seed = builder_escape(b, rt->seed_path);
        builder_add(b, "-drive");
        if (spec->arch == ARCH_X86_64) {
                builder_addf(b, "file=%s,id=seed0,if=none,format=raw,media=cdrom,readonly=on", seed);
                builder_add(b, "-device");
                builder_add(b, "ide-cd,drive=seed0");
        } else {
                builder_addf(b, "file=%s,id=seed0,if=none,format=raw,readonly=on", seed);
                builder_add(b, "-device");
                builder_add(b, "virtio-blk-pci,drive=seed0");
        }
}

static void add_virtfs(ArgvBuilder *b, const char *path, const char *tag) {
        _cleanup_free_ char *p = builder_escape(b, path);

        builder_add(b, "-virtfs");
        builder_addf(b, "local,path=%s,mount_tag=%s,security_model=passthrough,id=%s", p, tag, tag);
}

static void add_shares(ArgvBuilder *b, const VmSpec *spec) {
        if (spec->shares.kubelet == KUBELET_SHARES_VIRTIO) {
                _cleanup_free_ char *kubelet = NULL, *pods = NULL;
                const char *dir = isempty(spec->shares.kubelet_host_dir) ? "/" : spec->shares.kubelet_host_dir;
                int len = (int) strlen(dir);

                /* "/" and "/srv/k3s/" must not give "//var/lib/kubelet". */
                while (len > 0 && dir[len - 1] == '/')
                        len--;
                if (b->r >= 0 && (asprintf(&kubelet, "%.*s" KUBELET_DIR, len, dir) < 0 ||
                                  asprintf(&pods, "%.*s" PODS_LOG_DIR, len, dir) < 0)) {
                        kubelet = pods = NULL; /* asprintf leaves them undefined on failure */
                        b->r = -ENOMEM;
                }
                add_virtfs(b, kubelet, "host0");
                add_virtfs(b, pods, "host1");
        }
        /* KUBELET_SHARES_TCP: the guest mounts them from diod over the network; nothing to add here. */

        for (size_t i = 0; i < spec->shares.n_extra; i++) {
                char tag[32];

                (void) snprintf(tag, sizeof(tag), "host%zu", EXTRA_SHARE_FIRST_TAG + i);
                add_virtfs(b, spec->shares.extra[i].host_path, tag);
        }
}

size_t qemu_root_features(const VmSpec *spec, const char **reasons, size_t max) {
        size_t n = 0;

        /* As add_shares() and add_devices() decide. */
        if (spec->shares.kubelet == KUBELET_SHARES_VIRTIO && n < max)
                reasons[n++] = "shares.kubelet virtio: QEMU's 9p server (security_model=passthrough) serves "
                               "/var/lib/kubelet and /var/log/pods as their owners, which only root can";
        if (spec->shares.n_extra > 0 && n < max)
                reasons[n++] = "shares.extra: QEMU's 9p server (security_model=passthrough) serves the host "
                               "directories as their files' owners, which only root can";
        if (spec->devices.gpu && n < max)
                reasons[n++] = "devices.gpu: virtio-gpu-gl renders with the host's GPU stack (a DRM render node, EGL), "
                               "not tried as another user";
        return n;
}

static void add_devices(ArgvBuilder *b, const VmSpec *spec, const QemuRuntime *rt) {
        _cleanup_free_ char *shmem = NULL;

        if (spec->devices.vsock) {
                builder_add(b, "-device");
                builder_addf(b, "vhost-vsock-pci,id=vhost-vsock-pci0,guest-cid=%" PRIu32, spec->devices.vsock_cid);
        }

        if (spec->devices.gpu) {
                /* The guest RAM object named by -machine memory-backend=mem1. */
                builder_add(b, "-object");
                builder_addf(b, "memory-backend-memfd,id=mem1,size=%" PRIu64 "M", spec->memory_mib);
                builder_add(b, "-device");
                builder_addf(b, "virtio-gpu-gl-pci,hostmem=%" PRIu32 "G,blob=true,venus=true", gpu_vram_gib(spec));
        }

        if (spec->devices.shmem == SHMEM_NONE)
                return;
        shmem = builder_escape(b, rt->shmem_path);
        builder_add(b, "-object");
        builder_addf(b, "memory-backend-file,id=hostmem,mem-path=%s,size=%" PRIu32 "G,share=on", shmem,
                     shmem_size_gib(spec));
        builder_add(b, "-device");
        builder_add(b, spec->devices.shmem == SHMEM_NVDIMM ? "nvdimm,memdev=hostmem" : "ivshmem-plain,memdev=hostmem");
}

/* -kernel, -initrd and -append take their argument whole (not key=value): no escaping. */
static void add_kernel(ArgvBuilder *b, const VmSpec *spec, const QemuRuntime *rt, const NetConfig *net) {
        if (isempty(rt->kernel))
                return;
        builder_add(b, "-kernel");
        builder_add(b, rt->kernel);
        if (!isempty(rt->initrd)) {
                builder_add(b, "-initrd");
                builder_add(b, rt->initrd);
        }

        if (rt->bare_kernel) {
                /* The rimd initramfs configures itself from these: a static address ("rimd" is its host name
                 * there), the console, sshd, and how to reach the kubelet shares. */
                builder_add(b, "-append");
                builder_addf(b, "ip=%s::%s:%s:rimd:eth0:off console=%s ENABLE_SSH=true 9P_TRANSPORT=%s%s%s",
                             net->guest, net->gateway, net->netmask, spec->arch == ARCH_AARCH64 ? "ttyAMA0" : "ttyS0",
                             spec->shares.kubelet == KUBELET_SHARES_TCP ? "tcp" : "virtio",
                             isempty(spec->cmdline) ? "" : " ", strempty(spec->cmdline));
        } else if (!isempty(spec->cmdline)) {
                builder_add(b, "-append");
                builder_add(b, spec->cmdline);
        }
}

int qemu_argv_build(const VmSpec *spec, const QemuRuntime *rt, char ***ret_argv, HydraError *err) {
        _cleanup_free_ char *name = NULL;
        ArgvBuilder b = {};
        NetConfig net;
        BootMode mode;
        int r;

        if (!spec || !rt || !ret_argv)
                return hydra_error_set(err, -EINVAL, "qemu argv: missing spec or runtime");

        /* Whatever reaches QEMU is validated here too, so that no caller can splice an unchecked value. */
        r = vm_spec_validate(spec, err);
        if (r < 0)
                return r;
        mode = vm_spec_boot_mode(spec);
        r = check_runtime(spec, rt, mode, err);
        if (r < 0)
                return r;
        /* The switches below know these values only. */
        if ((int) spec->shares.kubelet < 0 || spec->shares.kubelet >= _KUBELET_SHARES_MAX)
                return hydra_error_set(err, -EINVAL, "shares.kubelet: %d is not known (allowed: virtio, tcp, none)",
                                       (int) spec->shares.kubelet);
        if ((int) spec->devices.shmem < 0 || spec->devices.shmem >= _SHMEM_MAX)
                return hydra_error_set(err, -EINVAL, "devices.shmem: %d is not known (allowed: none, nvdimm, ivshmem)",
                                       (int) spec->devices.shmem);
        /* Spliced whole into -append after our own words: one line, whatever the validator let through. */
        if (rt->bare_kernel && !isempty(spec->cmdline) && has_control(spec->cmdline))
                return hydra_error_set(err, -EINVAL, "cmdline: contains a control character (not allowed)");
        r = resolve_network(spec, &net, err);
        if (r < 0)
                return r;

        builder_add(&b, rt->binary);
        name = builder_escape(&b, rt->name);
        builder_add(&b, "-name");
        builder_addf(&b, "guest=%s,debug-threads=on", name);
        builder_add(&b, "-nodefaults");
        builder_add(&b, "-no-user-config");
        /* QEMU's seccomp filter: no obsolete system calls, no setuid/setgid, no fork/exec, no scheduler or CPU
         * affinity changes. Nothing QEMU needs after start-up (hydrad opens the sockets, files and devices). */
        builder_add(&b, "-sandbox");
        builder_add(&b, "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
        /* Paused until hydrad has the console connected and says cont: no boot output is lost. */
        builder_add(&b, "-S");
        /* hydrad runs on a headless device: the GPU renders through EGL without a window (the script's gtk,gl=on
         * needs a desktop). */
        builder_add(&b, "-display");
        builder_add(&b, spec->devices.gpu ? "egl-headless" : "none");

        add_machine(&b, spec, rt);
        add_firmware(&b, spec, rt);
        add_monitor_and_console(&b, rt);

        builder_add(&b, "-object");
        builder_add(&b, "rng-random,id=rng0,filename=/dev/urandom");
        builder_add(&b, "-device");
        builder_add(&b, "virtio-rng-pci,rng=rng0,max-bytes=1048576,period=1000");
        /* The guest reports a kernel panic (QMP GUEST_PANICKED): the VM is crashed, not shut down. */
        builder_add(&b, "-device");
        builder_add(&b, spec->arch == ARCH_AARCH64 ? "pvpanic-pci" : "pvpanic");

        add_network(&b, spec, rt, &net);
        add_disks(&b, spec, rt);
        add_shares(&b, spec);
        add_devices(&b, spec, rt);
        add_kernel(&b, spec, rt, &net);

        if (b.r < 0) {
                strv_free(b.v);
                return oom(err);
        }
        *ret_argv = b.v;
        return 0;
}

void qemu_hostfwd_busy_message(char *buf, size_t size, ForwardProtocol protocol, const char *host_addr,
                               uint32_t host_port, uint32_t guest_port) {
        (void) snprintf(buf, size, "host port %s:%" PRIu32 "%s (forward to guest port %" PRIu32 ") is in use by "
                        "another process", isempty(host_addr) ? "127.0.0.1" : host_addr, host_port,
                        protocol == FORWARD_UDP ? "/udp" : "", guest_port);
}

int qemu_hostfwd_error(const char *text, char *buf, size_t size) {
        static const char marker[] = "Could not set up host forwarding rule '";
        char proto[8], addr[INET_ADDRSTRLEN], rule[128];
        const char *p, *end, *dash, *colon;
        unsigned host_port, guest_port;
        int n = 0;

        p = text ? strstr(text, marker) : NULL;
        if (!p)
                return 0;
        p += strlen(marker);
        end = strchr(p, '\'');
        if (!end || (size_t) (end - p) >= sizeof(rule))
                return 0;
        memcpy(rule, p, end - p);
        rule[end - p] = '\0';

        /* PROTO:ADDR:PORT-[GUEST_ADDR]:GUEST_PORT, as the builder writes hostfwd= */
        dash = strchr(rule, '-');
        colon = dash ? strrchr(dash, ':') : NULL;
        if (!colon || sscanf(rule, "%7[a-z]:%15[0-9.]:%u-%n", proto, addr, &host_port, &n) != 3 || n == 0 ||
            sscanf(colon + 1, "%u", &guest_port) != 1 || host_port > 65535 || guest_port > 65535)
                return 0;
        qemu_hostfwd_busy_message(buf, size, streq(proto, "udp") ? FORWARD_UDP : FORWARD_TCP, addr, host_port,
                                  guest_port);
        return 1;
}
