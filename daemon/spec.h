/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* The VM spec as the core sees it: plain C, no protobuf. api.c converts hydra.v1.VmSpec to and from this; the
 * stored form on disk is the packed protobuf (see SpecCodec in manager.h). */

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

typedef struct VmSpec {
        unsigned cpus;             /* 1-255 */
        uint64_t memory_mib;       /* >= 64 */
        Accel accel;
        Arch arch;
        char *machine;             /* QEMU machine type, e.g. "q35"; NULL: per-arch default */
        char *cpu_model;           /* QEMU -cpu model (+ features); NULL: per-accel default */
        char *kernel;              /* absolute path; NULL: no bare-kernel boot */
        char *initrd;              /* absolute path or NULL */
        char *cmdline;             /* kernel command line or NULL */
        char *disk;                /* absolute path of a local disk image or NULL */
        PortForward *forwards;
        size_t n_forwards;
} VmSpec;

#define SPEC_DEFAULT_CPUS 2U
#define SPEC_DEFAULT_MEMORY_MIB 2048U
#define SPEC_MIN_MEMORY_MIB 64U
#define SPEC_MAX_CPUS 255U
#define SPEC_MAX_MEMORY_MIB (UINT64_C(16) * 1024 * 1024) /* 16 TiB */

const char *role_to_string(Role r);
Role role_from_string(const char *s);
const char *accel_to_string(Accel a);
Accel accel_from_string(const char *s);
const char *arch_to_string(Arch a);
Arch arch_from_string(const char *s);
const char *forward_protocol_to_string(ForwardProtocol p);
ForwardProtocol forward_protocol_from_string(const char *s);

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
