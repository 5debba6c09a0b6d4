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
        const char *console_log;   /* serial console appended to this file */
        const char *disk_format;   /* "qcow2" or "raw", when spec->disk is set */
} QemuRuntime;

/* Builds a NULL-terminated argv (strv; free with strv_free). Values spliced into QEMU's key=value option
 * strings have ',' doubled. Returns 0, -EINVAL (runtime not resolved, e.g. accel auto; err says what), or
 * -ENOMEM. */
int qemu_argv_build(const VmSpec *spec, const QemuRuntime *rt, char ***ret_argv, HydraError *err);

/* The default -machine and -cpu for an arch and resolved accel (x86_64: q35, host under kvm, qemu64 under tcg;
 * aarch64: virt,gic-version=max, host under kvm, cortex-a76 under tcg). */
const char *qemu_default_machine(Arch arch);
const char *qemu_default_cpu(Arch arch, Accel accel);
const char *qemu_binary_name(Arch arch); /* "qemu-system-x86_64" / "qemu-system-aarch64" */

/* Appends s to a buffer-less string with every ',' doubled; returns a new string or NULL on ENOMEM. */
char *qemu_escape_comma(const char *s);
