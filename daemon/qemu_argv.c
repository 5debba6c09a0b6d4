/* SPDX-License-Identifier: MIT */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/un.h>

#include "macro.h"
#include "qemu_argv.h"

#define SUN_PATH_SIZE sizeof(((struct sockaddr_un) {}).sun_path)

const char *qemu_default_machine(Arch arch) {
        switch (arch) {
        case ARCH_X86_64:
                return "q35";
        case ARCH_AARCH64:
                /* The best GIC the accelerator offers: GICv3 under TCG and on most KVM hosts. */
                return "virt,gic-version=max";
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
static int check_runtime(const VmSpec *spec, const QemuRuntime *rt, HydraError *err) {
        const struct {
                const char *field;
                const char *value;
        } strings[] = {
                { "binary", rt->binary },
                { "name", rt->name },
                { "qmp_path", rt->qmp_fd >= 0 ? NULL : rt->qmp_path },
                { "console_log", rt->console_log },
                { "disk_format", spec->disk ? rt->disk_format : NULL },
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
        if (isempty(rt->console_log))
                return hydra_error_set(err, -EINVAL, "runtime console_log: not set");
        if (!isempty(spec->disk) && (!rt->disk_format || (!streq(rt->disk_format, "qcow2") &&
                                                          !streq(rt->disk_format, "raw"))))
                return hydra_error_set(err, -EINVAL, "runtime disk_format: '%s' is not supported (allowed: qcow2, raw)",
                                       strempty(rt->disk_format));

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

static int oom(HydraError *err) {
        return hydra_error_set(err, -ENOMEM, "qemu argv: out of memory");
}

int qemu_argv_build(const VmSpec *spec, const QemuRuntime *rt, char ***ret_argv, HydraError *err) {
        _cleanup_free_ char *name = NULL, *qmp = NULL, *console = NULL, *netdev = NULL, *disk = NULL;
        ArgvBuilder b = {};
        const char *machine, *cpu;
        int r;

        if (!spec || !rt || !ret_argv)
                return hydra_error_set(err, -EINVAL, "qemu argv: missing spec or runtime");

        /* Whatever reaches QEMU is validated here too, so that no caller can splice an unchecked value. */
        r = vm_spec_validate(spec, err);
        if (r < 0)
                return r;
        r = check_runtime(spec, rt, err);
        if (r < 0)
                return r;

        machine = spec->machine;
        if (isempty(machine) || (spec->arch == ARCH_AARCH64 && streq(machine, "virt")))
                machine = qemu_default_machine(spec->arch);
        cpu = isempty(spec->cpu_model) ? qemu_default_cpu(spec->arch, rt->accel) : spec->cpu_model;

        name = qemu_escape_comma(rt->name);
        console = qemu_escape_comma(rt->console_log);
        if (!name || !console)
                return oom(err);
        if (rt->qmp_fd < 0) {
                qmp = qemu_escape_comma(rt->qmp_path);
                if (!qmp)
                        return oom(err);
        }

        netdev = strdup("user,id=net0");
        if (!netdev)
                return oom(err);
        for (size_t i = 0; i < spec->n_forwards; i++) {
                const PortForward *f = &spec->forwards[i];

                /* host_addr is a validated IPv4 literal: nothing to escape. */
                r = strextendf(&netdev, ",hostfwd=%s:%s:%" PRIu32 "-:%" PRIu32, forward_protocol_to_string(f->protocol),
                               isempty(f->host_addr) ? "127.0.0.1" : f->host_addr, f->host_port, f->guest_port);
                if (r < 0)
                        return oom(err);
        }

        if (!isempty(spec->disk)) {
                disk = qemu_escape_comma(spec->disk);
                if (!disk)
                        return oom(err);
        }

        builder_add(&b, rt->binary);
        builder_add(&b, "-name");
        builder_addf(&b, "guest=%s,debug-threads=on", name);
        builder_add(&b, "-nodefaults");
        builder_add(&b, "-no-user-config");
        builder_add(&b, "-display");
        builder_add(&b, "none");

        /* machine is a validated type name (or our default): no comma to escape. */
        builder_add(&b, "-machine");
        builder_addf(&b, "%s,accel=%s", machine, accel_to_string(rt->accel));
        /* cpu_model's commas separate features by design; validation allowed only MODEL(,FEATURE)*. */
        builder_add(&b, "-cpu");
        builder_add(&b, cpu);
        builder_add(&b, "-smp");
        builder_addf(&b, "%u", spec->cpus);
        builder_add(&b, "-m");
        builder_addf(&b, "%" PRIu64 "M", spec->memory_mib);

        builder_add(&b, "-chardev");
        if (rt->qmp_fd >= 0)
                builder_addf(&b, "socket,id=qmp,fd=%d,server=on,wait=off", rt->qmp_fd);
        else
                builder_addf(&b, "socket,id=qmp,path=%s,server=on,wait=off", qmp);
        builder_add(&b, "-mon");
        builder_add(&b, "chardev=qmp,mode=control");

        builder_add(&b, "-chardev");
        builder_addf(&b, "file,id=console,path=%s,append=on", console);
        builder_add(&b, "-serial");
        builder_add(&b, "chardev:console");

        builder_add(&b, "-device");
        builder_add(&b, "virtio-rng-pci");

        builder_add(&b, "-netdev");
        builder_add(&b, netdev);
        builder_add(&b, "-device");
        builder_add(&b, "virtio-net-pci,netdev=net0");

        if (disk) {
                builder_add(&b, "-drive");
                builder_addf(&b, "file=%s,if=virtio,format=%s,discard=unmap", disk, rt->disk_format);
        }

        /* -kernel, -initrd and -append take their argument whole (not key=value): no escaping. */
        if (!isempty(spec->kernel)) {
                builder_add(&b, "-kernel");
                builder_add(&b, spec->kernel);
        }
        if (!isempty(spec->initrd)) {
                builder_add(&b, "-initrd");
                builder_add(&b, spec->initrd);
        }
        if (!isempty(spec->cmdline)) {
                builder_add(&b, "-append");
                builder_add(&b, spec->cmdline);
        }

        if (b.r < 0) {
                strv_free(b.v);
                return oom(err);
        }
        *ret_argv = b.v;
        return 0;
}
