/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

#include "error.h"
#include "hydra/v1/hydra.pb-c.h"

/* The spec file (INI, read with libinih) and --set overrides, turned into a hydra.v1.VmSpec. The format is
 * described in client/SPEC-FORMAT.md. The message is built on the heap so that spec_free() releases all of it
 * (after wiping the secrets it holds). */

Hydra__V1__VmSpec *spec_new(void);
Hydra__V1__VmSpec *spec_free(Hydra__V1__VmSpec *spec);
DEFINE_TRIVIAL_CLEANUP_FUNC(Hydra__V1__VmSpec *, spec_free);

/* What spec_load_file() noticed about the file itself. */
typedef struct SpecFileInfo {
        bool secrets_exposed;  /* it holds a secret and users other than its owner may read it */
        mode_t mode;           /* its permission bits, when secrets_exposed */
        char secrets[128];     /* the secret keys it sets, e.g. "image.token, guest.password" */
} SpecFileInfo;

/* Reads the spec file at path ("-": standard input) into spec, on top of what spec holds. Relative paths in
 * the file are resolved against the file's directory (standard input: the current directory). On failure returns
 * a negative errno and err reads "FILE:LINE: what: why" (or "FILE: why" when the file cannot be read).
 * ret_info (may be NULL) is filled on success. */
int spec_load_file(Hydra__V1__VmSpec *spec, const char *path, SpecFileInfo *ret_info, HydraError *err);

/* Applies one "SECTION.KEY=VALUE" override, as if the line were in the file (repeatable keys append; an empty
 * value resets the key). Relative paths are resolved against the current directory. Secrets are refused (argv is
 * visible to every user in ps). On failure returns -EINVAL and err reads "--set 'ASSIGNMENT': why" (a refused
 * secret's value is never quoted). */
int spec_apply_set(Hydra__V1__VmSpec *spec, const char *assignment, HydraError *err);

/* Checks what no single line can (guest.password together with guest.password_hash) and drops the parts that
 * ended up empty (a section whose keys were all reset). Call before sending. */
int spec_finish(Hydra__V1__VmSpec *spec, HydraError *err);

/* Replaces *field with a copy of value (empty: protobuf-c's empty string). For code that builds a spec from
 * elsewhere (fromenv.c). Returns 0 or -ENOMEM. */
int spec_field_set(char **field, const char *value);
int spec_strv_append(char ***strv, size_t *n, const char *value);

/* The sub-messages of spec, created empty on first use; NULL on OOM. */
Hydra__V1__KernelBoot *spec_kernel(Hydra__V1__VmSpec *spec);
Hydra__V1__Firmware *spec_firmware(Hydra__V1__VmSpec *spec);
Hydra__V1__Source *spec_image(Hydra__V1__VmSpec *spec);
Hydra__V1__BareKernel *spec_bare(Hydra__V1__VmSpec *spec);
Hydra__V1__Source *spec_bare_artifact(Hydra__V1__VmSpec *spec);
Hydra__V1__Guest *spec_guest(Hydra__V1__VmSpec *spec);
Hydra__V1__Software *spec_software(Hydra__V1__VmSpec *spec);
Hydra__V1__Network *spec_network(Hydra__V1__VmSpec *spec);
Hydra__V1__Shares *spec_shares(Hydra__V1__VmSpec *spec);
Hydra__V1__Devices *spec_devices(Hydra__V1__VmSpec *spec);
Hydra__V1__Supervision *spec_supervision(Hydra__V1__VmSpec *spec);

/* Appends a forward / a share. Returns 0 or -ENOMEM. */
int spec_add_forward(Hydra__V1__VmSpec *spec, const char *host_addr, uint32_t host_port, uint32_t guest_port,
                     const char *protocol);
int spec_add_share(Hydra__V1__VmSpec *spec, const char *host_path, const char *guest_path);

/* The words of the spec format for the API's enums: "auto", "tcp", "nvdimm", "on-failure"... NULL when out of
 * range. */
const char *accel_to_name(Hydra__V1__Accel a);
const char *kubelet_shares_to_name(Hydra__V1__KubeletShares k);
const char *shmem_to_name(Hydra__V1__Shmem s);
const char *restart_policy_to_name(Hydra__V1__RestartPolicy p);
const char *probe_kind_to_name(Hydra__V1__ProbeKind k);
int accel_from_name(const char *s);          /* -EINVAL when unknown */
int kubelet_shares_from_name(const char *s);
int shmem_from_name(const char *s);
int restart_policy_from_name(const char *s);
int probe_kind_from_name(const char *s);

/* A boolean of the spec format: true/false, yes/no, on/off, 1/0 (any case). Returns 1, 0, or -EINVAL. */
int spec_parse_bool(const char *s);
