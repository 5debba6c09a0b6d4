/* SPDX-License-Identifier: MIT */
#pragma once

#include "error.h"
#include "spec.h"

/* spec -> QEMU argv. Pure: no I/O, no environment; everything decided at run time comes in QemuRuntime. */

typedef struct QemuRuntime {
        const char *binary;        /* argv[0], e.g. "qemu-system-x86_64" or an absolute path */
        const char *name;          /* -name, the role: "host" / "isolated" */
        Accel accel;               /* resolved: ACCEL_KVM or ACCEL_TCG, never ACCEL_AUTO */
        int qmp_fd;                /* >= 0: QMP listens on this inherited, already-bound socket fd */
        const char *qmp_path;      /* used when qmp_fd < 0: -chardev socket,id=qmp,path=PATH,server=on,wait=off */
        int console_fd;            /* >= 0: the serial console listens on this inherited, already-bound socket fd
                                    * (hydrad binds every socket QEMU serves: QEMU needs no writable directory) */
        const char *console_socket;   /* used when console_fd < 0: a socket QEMU binds and listens on */
        const char *disk_path;     /* the VM's disk: made by hydrad (cloud image, bare-kernel rootfs) or spec->disk;
                                    * NULL: no disk */
        const char *disk_format;   /* "qcow2" or "raw", when disk_path is set */
        const char *seed_path;     /* cloud-init NoCloud seed ISO or NULL: an IDE cdrom on x86_64, a read-only
                                    * virtio disk on aarch64 (virt has no IDE); drive id seed0 (the disk's: disk0) */
        const char *kernel;        /* resolved kernel: from the bare-kernel artifact or spec->kernel; NULL: none */
        const char *initrd;        /* resolved initrd or NULL */
        bool bare_kernel;          /* bare-kernel boot: -append gets start-vm.sh's line (ip=..., console=...,
                                    * ENABLE_SSH=true, 9P_TRANSPORT=virtio|tcp, then spec->cmdline) */
        const char *firmware_vars; /* the VM's own copy of spec->firmware_vars, or NULL */
        const char *shmem_path;    /* resolved shared-memory backing file (spec->devices.shmem != NONE) */
} QemuRuntime;

/* Builds a NULL-terminated argv (strv; free with strv_free). Values spliced into QEMU's key=value option
 * strings have ',' doubled. Returns 0, -EINVAL (the spec does not validate, or the runtime is not resolved: accel
 * auto, a file the spec needs missing, e.g. shmem without shmem_path; err names the field), or -ENOMEM. */
int qemu_argv_build(const VmSpec *spec, const QemuRuntime *rt, char ***ret_argv, HydraError *err);

/* The default -machine and -cpu for an arch and resolved accel (x86_64: pc, as start-vm.sh; aarch64: virt; host
 * under kvm; qemu64 / cortex-a76 under tcg). On aarch64 the builder appends ",gic-version=max" to any virt machine
 * type that does not set a GIC version itself. */
const char *qemu_default_machine(Arch arch);
const char *qemu_default_cpu(Arch arch, Accel accel);
const char *qemu_binary_name(Arch arch); /* "qemu-system-x86_64" / "qemu-system-aarch64" */

/* Appends s to a buffer-less string with every ',' doubled; returns a new string or NULL on ENOMEM. */
char *qemu_escape_comma(const char *s);

/* The features of spec whose host side needs QEMU to run as root, each as a phrase for a person, put in reasons (at
 * most max; static strings). Returns how many. Devices and files that another user may or may not reach are the
 * caller's to check (vm_qemu.c): these need root whatever the host's permissions. */
size_t qemu_root_features(const VmSpec *spec, const char **reasons, size_t max);

/* A host port of a forward that another process holds, as a person reads it: "host port 127.0.0.1:35000 (forward to
 * guest port 35000) is in use by another process" ("host port 0.0.0.0:5353/udp ..." for UDP). Truncated to size. */
void qemu_hostfwd_busy_message(char *buf, size_t size, ForwardProtocol protocol, const char *host_addr,
                               uint32_t host_port, uint32_t guest_port);

/* QEMU's "Could not set up host forwarding rule 'tcp:127.0.0.1:35000-:35000'" (on stderr, when it cannot bind a
 * forward's host port) found in text, said as qemu_hostfwd_busy_message() does. Returns 1 with buf set, 0 when
 * text holds no such rule (buf untouched). */
int qemu_hostfwd_error(const char *text, char *buf, size_t size);
