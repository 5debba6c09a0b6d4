/* SPDX-License-Identifier: MIT */
#pragma once

#include "error.h"
#include "hydra/v1/hydra.pb-c.h"

/* The spec file (INI, read with libinih) and --set overrides, turned into a hydra.v1.VmSpec. The format is
 * described in client/SPEC-FORMAT.md. The message is built on the heap so that
 * hydra__v1__vm_spec__free_unpacked(spec, NULL) (spec_free) releases all of it. */

Hydra__V1__VmSpec *spec_new(void);
Hydra__V1__VmSpec *spec_free(Hydra__V1__VmSpec *spec);
DEFINE_TRIVIAL_CLEANUP_FUNC(Hydra__V1__VmSpec *, spec_free);

/* Reads the spec file at path ("-": standard input) into spec, on top of what spec holds. Relative paths in
 * the file are resolved against the file's directory (standard input: the current directory). On failure returns
 * a negative errno and err reads "FILE:LINE: what: why" (or "FILE: why" when the file cannot be read). */
int spec_load_file(Hydra__V1__VmSpec *spec, const char *path, HydraError *err);

/* Applies one "SECTION.KEY=VALUE" override, as if the line were in the file (network.forward appends; an empty
 * value resets the key). Relative paths are resolved against the current directory. On failure returns -EINVAL
 * and err says why, without naming the assignment (the caller does). */
int spec_apply_set(Hydra__V1__VmSpec *spec, const char *assignment, HydraError *err);

/* Drops parts that ended up empty (a [kernel] section whose keys were all reset). Call before sending. */
void spec_finish(Hydra__V1__VmSpec *spec);
