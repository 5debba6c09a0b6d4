/* SPDX-License-Identifier: MIT */
#pragma once

#include "error.h"
#include "spec.h"

/* The cloud-init NoCloud seed for a cloud-image VM, rendered from the spec: what start-vm.sh writes, with every
 * value from the spec emitted as a JSON-compatible (double-quoted, escaped) YAML scalar, so no field can inject
 * YAML. Pure: no I/O. */

typedef struct CloudInitBlob {
        const char *name;          /* ctr-enc, ctd-decoder, rimd-keyprovider-proxy */
        const void *data;
        size_t size;
} CloudInitBlob;

typedef struct CloudInitInput {
        const VmSpec *spec;        /* defaults applied and validated */
        const char *debian_arch;   /* "amd64" / "arm64" (csi-grpc-proxy URL suffix) */
        const CloudInitBlob *tools;/* encrypted-container tools embedded as base64 write_files, or NULL */
        size_t n_tools;
        const char *crismux_installer; /* contents of install_crismux.sh (k3s_diod), or NULL: not installed */
} CloudInitInput;

typedef struct CloudInitFiles {
        char *user_data;
        char *meta_data;
        char *network_config;
        char *vendor_data;
} CloudInitFiles;

void cloud_init_files_done(CloudInitFiles *f);

/* Returns 0, -EINVAL (err: a value that cannot be rendered safely, naming the field), or -ENOMEM. On success
 * ret owns four NUL-terminated texts (vendor_data may be empty); release them with cloud_init_files_done(). */
int cloud_init_render(const CloudInitInput *in, CloudInitFiles *ret, HydraError *err);
