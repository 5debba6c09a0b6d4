/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdio.h>

#include "error.h"
#include "hydra/v1/hydra.pb-c.h"

/* `hydractl register ROLE --from-env`: a VmSpec from start-vm.sh's environment variables, with the script's
 * defaults, so that a setup driven by the script migrates with its environment unchanged. The mapping, variable
 * by variable, is in client/SPEC-FORMAT.md ("--from-env").
 *
 * preset (may be NULL) applies the `: ${VAR:=value}` defaults of one of the wrapper scripts (run-host.sh,
 * run-isolated.sh, ...) before the script's own, exactly as the wrapper would.
 *
 * Notes for the user (a variable whose setting lives elsewhere now, one that is ignored) are printed on notes,
 * one line each. Secrets (RIMD_ARTIFACT_URL_PASS, RIMD_ARTIFACT_URL_TOKEN, VM_PASSWORD) are never printed.
 * Returns 0, or -EINVAL with err set: a value the script would refuse, a macOS-only variable, a missing
 * firmware file. */
int spec_from_env(Hydra__V1__VmSpec *spec, const char *preset, FILE *notes, HydraError *err);

/* The preset names, for --help and for checking --preset: "host, isolated, isolated-bare, isolated-crypt". */
bool fromenv_preset_known(const char *name);
const char *fromenv_preset_names(void);
