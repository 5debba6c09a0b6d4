/* SPDX-License-Identifier: MIT */
#pragma once

#include <jansson.h>
#include <stdio.h>

#include "grpc/health/v1/health.pb-c.h"
#include "hydra/v1/hydra.pb-c.h"

/* What hydractl prints: the human forms and the --json objects (jansson) of the API's messages. The words are the
 * API's, lower-cased: roles host/isolated, states defined...crashed, accel auto/kvm/tcg. */

const char *role_to_name(Hydra__V1__Role role);          /* "host", "isolated"; "-" for unspecified */
Hydra__V1__Role role_from_name(const char *name);        /* ROLE_UNSPECIFIED when unknown */
const char *vm_state_to_name(Hydra__V1__VmState state);  /* "running", ...; "unspecified" */
const char *serving_status_to_name(Grpc__Health__V1__HealthCheckResponse__ServingStatus s);

/* New references; NULL only on OOM. */
json_t *json_from_vm_spec(const Hydra__V1__VmSpec *spec);
json_t *json_from_vm(const Hydra__V1__Vm *vm);
json_t *json_from_event(const Hydra__V1__Event *event);
json_t *json_from_plan(Hydra__V1__Role role, const Hydra__V1__PlanVmResponse *plan);

/* One compact JSON object and a newline. Returns 0 or -errno (e.g. -EPIPE when the reader went away). */
int print_json(FILE *f, const json_t *j);

/* "isolated: running (pid 1234)", "host: stopped (guest-shutdown, exit code 0)", "isolated: failed (...)". */
void print_vm_line(FILE *f, const Hydra__V1__Vm *vm);
/* key: value lines, everything GetVm says. */
void print_vm_block(FILE *f, const Hydra__V1__Vm *vm);
/* A table, one row per VM, then the last error of each VM that has one. */
void print_vm_table(FILE *f, Hydra__V1__Vm *const *vms, size_t n_vms);
/* One line: local time, role, what happened. */
void print_event_line(FILE *f, const Hydra__V1__Event *event);
/* The argv, an option and its value on one line; then every planned file. */
void print_plan(FILE *f, const Hydra__V1__PlanVmResponse *plan);
