/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api_pb.h"
#include "macro.h"
#include "pbcheck.h"
#include "url.h"

Hydra__V1__VmState state_to_pb(VmState s) {
        return (Hydra__V1__VmState) (s + 1); /* the proto has UNSPECIFIED at 0, then the same order */
}

Hydra__V1__Role role_to_pb(Role r) {
        return r == ROLE_HOST ? HYDRA__V1__ROLE__ROLE_HOST : HYDRA__V1__ROLE__ROLE_ISOLATED;
}

int role_from_pb(Hydra__V1__Role r, Role *ret) {
        switch (r) {
        case HYDRA__V1__ROLE__ROLE_HOST:
                *ret = ROLE_HOST;
                return 0;
        case HYDRA__V1__ROLE__ROLE_ISOLATED:
                *ret = ROLE_ISOLATED;
                return 0;
        default:
                return -EINVAL;
        }
}

char *pb_str(const char *s) {
        return (char *) (s ? s : "");
}

static int dup_str(char **dst, const char *s) {
        if (isempty(s)) {
                *dst = NULL;
                return 0;
        }
        *dst = strdup(s);
        return *dst ? 0 : -ENOMEM;
}


#define SECRET_SHOWN "(set)"

/* A secret in a reply: "(set)" or "". On disk (redact false): the value. */
static char *pb_secret(const char *s, bool redact) {
        if (isempty(s))
                return (char *) "";
        return (char *) (redact ? SECRET_SHOWN : s);
}

/* A URL in a reply: its query values and user:password@ hidden (a signed URL's credentials are there). On disk
 * (redact false): whole. NULL on ENOMEM. */
static char *pb_url(SpecPb *sp, const char *url, bool redact) {
        _cleanup_free_ char *s = NULL;
        char **l;

        if (!redact || isempty(url))
                return pb_str(url);
        s = url_display(url);
        l = s ? realloc(sp->shown, (sp->n_shown + 2) * sizeof(char *)) : NULL;
        if (!l)
                return NULL;
        sp->shown = l;
        sp->shown[sp->n_shown++] = s;
        sp->shown[sp->n_shown] = NULL;
        return TAKE_PTR(s);
}

static int source_pb_init(SpecPb *sp, Hydra__V1__Source *p, const Source *s, bool redact) {
        hydra__v1__source__init(p);
        p->url = pb_url(sp, s->url, redact);
        p->checksum = pb_str(s->checksum);
        p->sums_url = pb_url(sp, s->sums_url, redact);
        if (!p->url || !p->sums_url)
                return -ENOMEM;
        p->user = pb_str(s->user);
        p->password = pb_secret(s->password, redact);
        p->token = pb_secret(s->token, redact);
        p->token_header = pb_str(s->token_header);
        return 0;
}

int spec_pb_init(SpecPb *p, const VmSpec *s, bool redact) {
        *p = (SpecPb) { .spec = HYDRA__V1__VM_SPEC__INIT, .kernel = HYDRA__V1__KERNEL_BOOT__INIT };

        p->spec.cpus = s->cpus;
        p->spec.memory_mib = s->memory_mib;
        p->spec.accel = (Hydra__V1__Accel) s->accel;
        p->spec.machine = pb_str(s->machine);
        p->spec.cpu_model = pb_str(s->cpu_model);
        p->spec.disk = pb_str(s->disk);
        p->spec.arch = pb_str(arch_to_string(s->arch));
        if (s->kernel || s->initrd || s->cmdline) {
                p->kernel.kernel = pb_str(s->kernel);
                p->kernel.initrd = pb_str(s->initrd);
                p->kernel.cmdline = pb_str(s->cmdline);
                p->spec.kernel = &p->kernel;
        }
        if (s->n_forwards > 0) {
                p->forwards = calloc(s->n_forwards, sizeof(*p->forwards));
                p->forward_ptrs = calloc(s->n_forwards, sizeof(*p->forward_ptrs));
                if (!p->forwards || !p->forward_ptrs)
                        return -ENOMEM;
                for (size_t i = 0; i < s->n_forwards; i++) {
                        Hydra__V1__PortForward *f = &p->forwards[i];
                        hydra__v1__port_forward__init(f);
                        f->host_addr = pb_str(s->forwards[i].host_addr);
                        f->host_port = s->forwards[i].host_port;
                        f->guest_port = s->forwards[i].guest_port;
                        f->protocol = pb_str(forward_protocol_to_string(s->forwards[i].protocol));
                        p->forward_ptrs[i] = f;
                }
                p->spec.n_forwards = s->n_forwards;
                p->spec.forwards = p->forward_ptrs;
        }

        p->spec.disk_size_gib = s->disk_size_gib;
        p->spec.keep_pristine = s->keep_pristine;
        p->spec.reuse_disk_on_change = s->reuse_disk_on_change;
        if (s->firmware_code || s->firmware_vars) {
                hydra__v1__firmware__init(&p->firmware);
                p->firmware.code = pb_str(s->firmware_code);
                p->firmware.vars = pb_str(s->firmware_vars);
                p->spec.firmware = &p->firmware;
        }
        if (s->image.url) {
                if (source_pb_init(p, &p->image, &s->image, redact) < 0)
                        return -ENOMEM;
                p->spec.image = &p->image;
        }
        if (s->bare.artifact.url || s->bare.encrypted_tools) {
                hydra__v1__bare_kernel__init(&p->bare);
                if (source_pb_init(p, &p->artifact, &s->bare.artifact, redact) < 0)
                        return -ENOMEM;
                p->bare.artifact = &p->artifact;
                p->bare.dir = pb_str(s->bare.dir);
                p->bare.kernel = pb_str(s->bare.kernel);
                p->bare.kernel_version = pb_str(s->bare.kernel_version);
                p->bare.initrd = pb_str(s->bare.initrd);
                p->bare.rootfs = pb_str(s->bare.rootfs);
                p->bare.encrypted_tools = s->bare.encrypted_tools;
                p->spec.bare = &p->bare;
        }

        hydra__v1__guest__init(&p->guest);
        p->guest.username = pb_str(s->guest.username);
        p->guest.password = pb_secret(s->guest.password, redact);
        p->guest.password_hash = pb_str(s->guest.password_hash);
        p->guest.hostname = pb_str(s->guest.hostname);
        p->guest.n_ssh_authorized_keys = strv_length(s->guest.ssh_authorized_keys);
        p->guest.ssh_authorized_keys = s->guest.ssh_authorized_keys;
        p->spec.guest = &p->guest;

        hydra__v1__software__init(&p->software);
        p->software.disable_containerd_proxy = s->software.disable_containerd_proxy;
        p->software.csi_grpc_proxy_url = pb_url(p, s->software.csi_grpc_proxy_url, redact);
        if (!p->software.csi_grpc_proxy_url)
                return -ENOMEM;
        p->software.k3s_diod = s->software.k3s_diod;
        p->software.k3s_version = pb_str(s->software.k3s_version);
        p->software.kernel_package = pb_str(s->software.kernel_package);
        p->software.n_extra_debs = strv_length(s->software.extra_debs);
        p->software.extra_debs = s->software.extra_debs;
        if (redact && p->software.n_extra_debs > 0) {
                p->extra_debs = calloc(p->software.n_extra_debs, sizeof(char *));
                if (!p->extra_debs)
                        return -ENOMEM;
                for (size_t i = 0; i < p->software.n_extra_debs; i++)
                        if (!(p->extra_debs[i] = pb_url(p, s->software.extra_debs[i], redact)))
                                return -ENOMEM;
                p->software.extra_debs = p->extra_debs;
        }
        p->software.reboot_after_install = s->software.reboot_after_install;
        p->software.package_update = s->software.package_update;
        p->software.package_upgrade = s->software.package_upgrade;
        p->software.sandbox_image = pb_str(s->software.sandbox_image);
        p->software.sandbox_image_url = pb_url(p, s->software.sandbox_image_url, redact);
        p->software.crismux_url = pb_url(p, s->software.crismux_url, redact);
        if (!p->software.sandbox_image_url || !p->software.crismux_url)
                return -ENOMEM;
        p->software.crismux_sha256 = pb_str(s->software.crismux_sha256);
        p->spec.software = &p->software;

        hydra__v1__network__init(&p->network);
        p->network.guest_ip = pb_str(s->network.guest_ip);
        p->network.gateway = pb_str(s->network.gateway);
        p->network.dns = pb_str(s->network.dns);
        p->network.prefix_len = s->network.prefix_len;
        p->network.mac = pb_str(s->network.mac);
        p->spec.network = &p->network;

        hydra__v1__shares__init(&p->shares);
        p->shares.kubelet = (Hydra__V1__KubeletShares) s->shares.kubelet;
        p->shares.kubelet_host_dir = pb_str(s->shares.kubelet_host_dir);
        p->shares.diod_port = s->shares.diod_port;
        if (s->shares.n_extra > 0) {
                p->extra = calloc(s->shares.n_extra, sizeof(*p->extra));
                p->extra_ptrs = calloc(s->shares.n_extra, sizeof(*p->extra_ptrs));
                if (!p->extra || !p->extra_ptrs)
                        return -ENOMEM;
                for (size_t i = 0; i < s->shares.n_extra; i++) {
                        hydra__v1__share__init(&p->extra[i]);
                        p->extra[i].host_path = pb_str(s->shares.extra[i].host_path);
                        p->extra[i].guest_path = pb_str(s->shares.extra[i].guest_path);
                        p->extra_ptrs[i] = &p->extra[i];
                }
                p->shares.n_extra = s->shares.n_extra;
                p->shares.extra = p->extra_ptrs;
        }
        p->spec.shares = &p->shares;

        hydra__v1__devices__init(&p->devices);
        p->devices.vsock = s->devices.vsock;
        p->devices.vsock_cid = s->devices.vsock_cid;
        p->devices.gpu = s->devices.gpu;
        p->devices.gpu_vram_gib = s->devices.gpu_vram_gib;
        p->devices.shmem = (Hydra__V1__Shmem) s->devices.shmem;
        p->devices.shmem_size_gib = s->devices.shmem_size_gib;
        p->devices.shmem_path = pb_str(s->devices.shmem_path);
        p->spec.devices = &p->devices;

        hydra__v1__supervision__init(&p->supervision);
        p->supervision.restart = (Hydra__V1__RestartPolicy) s->supervision.restart;
        p->supervision.max_restarts = s->supervision.max_restarts;
        p->supervision.restart_window_seconds = s->supervision.restart_window_sec;
        p->supervision.autostart = s->supervision.autostart;
        p->supervision.stop_timeout_seconds = s->supervision.stop_timeout_sec;
        p->supervision.probe = (Hydra__V1__ProbeKind) s->supervision.probe;
        p->supervision.probe_pattern = pb_str(s->supervision.probe_pattern);
        p->supervision.probe_port = s->supervision.probe_port;
        p->supervision.ready_timeout_seconds = s->supervision.ready_timeout_sec;
        p->supervision.start_after = pb_str(s->supervision.start_after);
        p->spec.supervision = &p->supervision;

        hydra__v1__resources__init(&p->resources);
        p->resources.cpu_quota_percent = s->resources.cpu_quota_percent;
        p->resources.memory_max_bytes = s->resources.memory_max;
        p->spec.resources = &p->resources;
        return 0;
}

void spec_pb_done(SpecPb *p) {
        free(p->forwards);
        free(p->forward_ptrs);
        free(p->extra);
        free(p->extra_ptrs);
        strv_free(p->shown);
        free(p->extra_debs);
}

static int dup_strv(char ***dst, char **src, size_t n) {
        _cleanup_strv_free_ char **l = NULL;
        size_t k = 0;

        *dst = NULL;
        if (n == 0)
                return 0;
        l = calloc(n + 1, sizeof(char *));
        if (!l)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                if (isempty(src[i]))
                        continue;
                l[k] = strdup(src[i]);
                if (!l[k])
                        return -ENOMEM;
                k++;
        }
        *dst = TAKE_PTR(l);
        return 0;
}

static int source_from_pb(const Hydra__V1__Source *p, Source *s) {
        if (!p)
                return 0;
        if (dup_str(&s->url, p->url) < 0 || dup_str(&s->checksum, p->checksum) < 0 ||
            dup_str(&s->sums_url, p->sums_url) < 0 || dup_str(&s->user, p->user) < 0 ||
            dup_str(&s->password, p->password) < 0 || dup_str(&s->token, p->token) < 0 ||
            dup_str(&s->token_header, p->token_header) < 0)
                return -ENOMEM;
        return 0;
}

/* Returns 0, -ENOMEM, or -EINVAL with err naming the field. */
int spec_from_pb(const Hydra__V1__VmSpec *p, VmSpec *ret, HydraError *err) {
        _cleanup_(vm_spec_done) VmSpec s = {};
        int r;

        s.cpus = p->cpus;
        s.memory_mib = p->memory_mib;
        if ((int) p->accel < 0 || p->accel >= (int) _ACCEL_MAX)
                return hydra_error_set(err, -EINVAL, "accel: %d is not allowed (allowed: auto, kvm, tcg)", (int) p->accel);
        s.accel = (Accel) p->accel;
        if (isempty(p->arch))
                s.arch = ARCH_X86_64;
        else {
                s.arch = arch_from_string(p->arch);
                if ((int) s.arch < 0)
                        return hydra_error_set(err, -EINVAL, "arch: '%s' is not supported (allowed: x86_64, aarch64)",
                                               p->arch);
        }
        r = dup_str(&s.machine, p->machine);
        if (r >= 0)
                r = dup_str(&s.cpu_model, p->cpu_model);
        if (r >= 0)
                r = dup_str(&s.disk, p->disk);
        if (r >= 0 && p->kernel) {
                r = dup_str(&s.kernel, p->kernel->kernel);
                if (r >= 0)
                        r = dup_str(&s.initrd, p->kernel->initrd);
                if (r >= 0)
                        r = dup_str(&s.cmdline, p->kernel->cmdline);
        }
        if (r < 0)
                return hydra_error_set(err, r, "out of memory");

        if (p->n_forwards > 0) {
                s.forwards = calloc(p->n_forwards, sizeof(*s.forwards));
                if (!s.forwards)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
                s.n_forwards = p->n_forwards;
                for (size_t i = 0; i < p->n_forwards; i++) {
                        const Hydra__V1__PortForward *f = p->forwards[i];
                        PortForward *d = &s.forwards[i];

                        if (dup_str(&d->host_addr, f->host_addr) < 0)
                                return hydra_error_set(err, -ENOMEM, "out of memory");
                        d->host_port = f->host_port;
                        d->guest_port = f->guest_port;
                        if (isempty(f->protocol))
                                d->protocol = FORWARD_TCP;
                        else {
                                d->protocol = forward_protocol_from_string(f->protocol);
                                if ((int) d->protocol < 0)
                                        return hydra_error_set(err, -EINVAL,
                                                               "forwards[%zu].protocol: '%s' is not allowed (allowed: tcp, udp)",
                                                               i, f->protocol);
                        }
                }
        }

        s.disk_size_gib = p->disk_size_gib;
        s.keep_pristine = p->keep_pristine;
        s.reuse_disk_on_change = p->reuse_disk_on_change;
        if (p->firmware && (dup_str(&s.firmware_code, p->firmware->code) < 0 ||
                            dup_str(&s.firmware_vars, p->firmware->vars) < 0))
                return hydra_error_set(err, -ENOMEM, "out of memory");
        if (source_from_pb(p->image, &s.image) < 0)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        if (p->bare) {
                if (source_from_pb(p->bare->artifact, &s.bare.artifact) < 0 ||
                    dup_str(&s.bare.dir, p->bare->dir) < 0 || dup_str(&s.bare.kernel, p->bare->kernel) < 0 ||
                    dup_str(&s.bare.kernel_version, p->bare->kernel_version) < 0 ||
                    dup_str(&s.bare.initrd, p->bare->initrd) < 0 || dup_str(&s.bare.rootfs, p->bare->rootfs) < 0)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
                s.bare.encrypted_tools = p->bare->encrypted_tools;
        }
        if (p->guest) {
                if (dup_str(&s.guest.username, p->guest->username) < 0 ||
                    dup_str(&s.guest.password, p->guest->password) < 0 ||
                    dup_str(&s.guest.password_hash, p->guest->password_hash) < 0 ||
                    dup_str(&s.guest.hostname, p->guest->hostname) < 0 ||
                    dup_strv(&s.guest.ssh_authorized_keys, p->guest->ssh_authorized_keys,
                             p->guest->n_ssh_authorized_keys) < 0)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        if (p->software) {
                s.software.disable_containerd_proxy = p->software->disable_containerd_proxy;
                s.software.k3s_diod = p->software->k3s_diod;
                s.software.reboot_after_install = p->software->reboot_after_install;
                s.software.package_update = p->software->package_update;
                s.software.package_upgrade = p->software->package_upgrade;
                if (dup_str(&s.software.csi_grpc_proxy_url, p->software->csi_grpc_proxy_url) < 0 ||
                    dup_str(&s.software.k3s_version, p->software->k3s_version) < 0 ||
                    dup_str(&s.software.sandbox_image, p->software->sandbox_image) < 0 ||
                    dup_str(&s.software.sandbox_image_url, p->software->sandbox_image_url) < 0 ||
                    dup_str(&s.software.crismux_url, p->software->crismux_url) < 0 ||
                    dup_str(&s.software.crismux_sha256, p->software->crismux_sha256) < 0 ||
                    dup_str(&s.software.kernel_package, p->software->kernel_package) < 0 ||
                    dup_strv(&s.software.extra_debs, p->software->extra_debs, p->software->n_extra_debs) < 0)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        if (p->network) {
                s.network.prefix_len = p->network->prefix_len;
                if (dup_str(&s.network.guest_ip, p->network->guest_ip) < 0 ||
                    dup_str(&s.network.gateway, p->network->gateway) < 0 ||
                    dup_str(&s.network.dns, p->network->dns) < 0 || dup_str(&s.network.mac, p->network->mac) < 0)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        if (p->shares) {
                if ((int) p->shares->kubelet < 0 || p->shares->kubelet >= (int) _KUBELET_SHARES_MAX)
                        return hydra_error_set(err, -EINVAL, "shares.kubelet: %d is not allowed (allowed: virtio, "
                                               "tcp, none)", (int) p->shares->kubelet);
                s.shares.kubelet = (KubeletShares) p->shares->kubelet;
                s.shares.diod_port = p->shares->diod_port;
                if (dup_str(&s.shares.kubelet_host_dir, p->shares->kubelet_host_dir) < 0)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
                if (p->shares->n_extra > 0) {
                        s.shares.extra = calloc(p->shares->n_extra, sizeof(Share));
                        if (!s.shares.extra)
                                return hydra_error_set(err, -ENOMEM, "out of memory");
                        s.shares.n_extra = p->shares->n_extra;
                        for (size_t i = 0; i < p->shares->n_extra; i++)
                                if (dup_str(&s.shares.extra[i].host_path, p->shares->extra[i]->host_path) < 0 ||
                                    dup_str(&s.shares.extra[i].guest_path, p->shares->extra[i]->guest_path) < 0)
                                        return hydra_error_set(err, -ENOMEM, "out of memory");
                }
        }
        if (p->devices) {
                if ((int) p->devices->shmem < 0 || p->devices->shmem >= (int) _SHMEM_MAX)
                        return hydra_error_set(err, -EINVAL, "devices.shmem: %d is not allowed (allowed: none, "
                                               "nvdimm, ivshmem)", (int) p->devices->shmem);
                s.devices.vsock = p->devices->vsock;
                s.devices.vsock_cid = p->devices->vsock_cid;
                s.devices.gpu = p->devices->gpu;
                s.devices.gpu_vram_gib = p->devices->gpu_vram_gib;
                s.devices.shmem = (Shmem) p->devices->shmem;
                s.devices.shmem_size_gib = p->devices->shmem_size_gib;
                if (dup_str(&s.devices.shmem_path, p->devices->shmem_path) < 0)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        if (p->supervision) {
                const Hydra__V1__Supervision *sv = p->supervision;

                if ((int) sv->restart < 0 || sv->restart >= (int) _RESTART_POLICY_MAX)
                        return hydra_error_set(err, -EINVAL, "supervision.restart: %d is not allowed (allowed: no, "
                                               "on-failure, always)", (int) sv->restart);
                if ((int) sv->probe < 0 || sv->probe >= (int) _PROBE_KIND_MAX)
                        return hydra_error_set(err, -EINVAL, "supervision.probe: %d is not allowed (allowed: "
                                               "console, tcp, containerd, none)", (int) sv->probe);
                s.supervision.restart = (RestartPolicy) sv->restart;
                s.supervision.max_restarts = sv->max_restarts;
                s.supervision.restart_window_sec = sv->restart_window_seconds;
                s.supervision.autostart = sv->autostart;
                s.supervision.stop_timeout_sec = sv->stop_timeout_seconds;
                s.supervision.probe = (ProbeKind) sv->probe;
                s.supervision.probe_port = sv->probe_port;
                s.supervision.ready_timeout_sec = sv->ready_timeout_seconds;
                if (dup_str(&s.supervision.probe_pattern, sv->probe_pattern) < 0 ||
                    dup_str(&s.supervision.start_after, sv->start_after) < 0)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        if (p->resources) {
                s.resources.cpu_quota_percent = p->resources->cpu_quota_percent;
                s.resources.memory_max = p->resources->memory_max_bytes;
        }

        *ret = s;
        s = (VmSpec) {};
        return 0;
}

static int codec_encode(const VmSpec *spec, void **ret_data, size_t *ret_size) {
        SpecPb p;
        uint8_t *buf;
        size_t n;
        int r;

        r = spec_pb_init(&p, spec, false);
        if (r < 0) {
                spec_pb_done(&p);
                return r;
        }
        n = hydra__v1__vm_spec__get_packed_size(&p.spec);
        buf = malloc(n ? n : 1);
        if (!buf) {
                spec_pb_done(&p);
                return -ENOMEM;
        }
        hydra__v1__vm_spec__pack(&p.spec, buf);
        spec_pb_done(&p);
        *ret_data = buf;
        *ret_size = n;
        return 0;
}

static int codec_decode(const void *data, size_t size, VmSpec *ret, HydraError *err) {
        Hydra__V1__VmSpec *p;
        int r;

        /* A string protobuf-c would take but no conformant client could decode when served (or cut at a NUL). */
        r = pb_check_strings(&hydra__v1__vm_spec__descriptor, data, size, err);
        if (r == -ENOMEM)
                return r;
        if (r == -EINVAL)
                goto bad; /* err names the field */
        p = r < 0 ? NULL : hydra__v1__vm_spec__unpack(NULL, size, data);
        if (!p)
                return hydra_error_set(err, -EBADMSG, "not a valid stored spec (truncated or corrupt)");
        r = spec_from_pb(p, ret, err);
        hydra__v1__vm_spec__free_unpacked(p, NULL);
        if (r != -EINVAL)
                return r;
bad:
        if (err)
                err->code = -EBADMSG;
        return -EBADMSG;
}

const SpecCodec api_spec_codec = {
        .encode = codec_encode,
        .decode = codec_decode,
};


int vm_pb_init(VmPb *p, const Vm *vm) {
        static const VmSpec none = {};
        VmStatus status;
        const VmStatus *st = &status;
        int r;

        vm_get_status(vm, &status);

        *p = (VmPb) { .vm = HYDRA__V1__VM__INIT, .exit = HYDRA__V1__EXIT_INFO__INIT,
                      .progress = HYDRA__V1__PROGRESS__INIT };
        r = spec_pb_init(&p->spec, st->spec ? st->spec : &none, true);
        if (r < 0)
                return r;

        p->vm.role = role_to_pb(st->role);
        p->vm.state = state_to_pb(st->state);
        p->vm.pid = st->pid;
        p->vm.uptime_usec = st->uptime_usec;
        p->exit.exited = st->last_exit->exited;
        p->exit.code = st->last_exit->code;
        p->exit.signal = st->last_exit->signal;
        p->exit.reason = (char *) st->last_exit->reason;
        p->exit.time_unix_usec = (int64_t) st->last_exit->time_usec;
        p->vm.last_exit = &p->exit;
        p->vm.last_error = (char *) strempty(st->last_error);
        p->vm.restart_count = st->restart_count;
        p->vm.n_forwards = p->spec.spec.n_forwards;
        p->vm.forwards = p->spec.spec.forwards;
        p->vm.console_log = pb_str(st->console_log);
        p->vm.qmp_socket = pb_str(st->qmp_socket);
        p->vm.spec = st->registered ? &p->spec.spec : NULL;
        p->vm.spec_generation = st->generation;
        if (st->progress.step) {
                p->progress.step = (char *) st->progress.step;
                p->progress.what = pb_str(st->progress.what);
                p->progress.bytes = st->progress.bytes;
                p->progress.total = st->progress.total;
                p->progress.rate = st->progress.rate;
                p->vm.progress = &p->progress;
        }
        p->vm.disk_path = pb_str(st->disk_path);
        p->vm.seed_path = pb_str(st->seed_path);
        p->vm.ready = st->ready;
        p->vm.ready_since_unix_usec = st->ready ? (int64_t) st->ready_since_usec : 0;
        p->vm.ready_detail = pb_str(st->ready_detail);
        p->vm.console_socket = pb_str(st->console_socket);
        p->vm.cri_socket = pb_str(st->cri_socket);
        p->vm.machine = pb_str(st->machine);
        p->vm.machine_scope = pb_str(st->machine_scope);
        p->vm.next_restart_unix_usec = (int64_t) st->next_restart_usec;
        if (st->n_drives > 0) {
                p->drives = calloc(st->n_drives, sizeof(*p->drives));
                p->drive_ptrs = calloc(st->n_drives, sizeof(*p->drive_ptrs));
                if (!p->drives || !p->drive_ptrs)
                        return -ENOMEM;
                for (size_t i = 0; i < st->n_drives; i++) {
                        hydra__v1__drive__init(&p->drives[i]);
                        p->drives[i].id = pb_str(st->drives[i].id);
                        p->drives[i].file = pb_str(st->drives[i].file);
                        p->drives[i].format = pb_str(st->drives[i].format);
                        p->drives[i].read_only = st->drives[i].read_only;
                        p->drive_ptrs[i] = &p->drives[i];
                }
                p->vm.n_drives = st->n_drives;
                p->vm.drives = p->drive_ptrs;
        }
        return 0;
}

void vm_pb_done(VmPb *p) {
        free(p->drives);
        free(p->drive_ptrs);
        spec_pb_done(&p->spec);
}

