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
json_t *json_from_progress(const Hydra__V1__Progress *p); /* null for NULL */

/* "512 B", "1.5 MiB", "3.2 GiB". */
void format_bytes(char *buf, size_t size, uint64_t bytes);
/* "download https://host/x.qcow2: 45% (150.0 MiB of 330.0 MiB, 12.3 MiB/s)"; "seed" alone when there is no count. */
void format_progress(char *buf, size_t size, const Hydra__V1__Progress *p);
/* The last element of a path or URL: what a progress bar has room for. */
const char *progress_what_short(const char *what);

/* One compact JSON object and a newline. Returns 0 or -errno (e.g. -EPIPE when the reader went away). */
int print_json(FILE *f, const json_t *j);

/* "isolated: running (pid 1234)", "isolated: running (pid 1234, ready)", "host: stopped (guest-shutdown, exit code
 * 0)", "isolated: failed (...)". */
void print_vm_line(FILE *f, const Hydra__V1__Vm *vm);
/* key: value lines, everything GetVm says (ready, sockets and the next restart included). */
void print_vm_block(FILE *f, const Hydra__V1__Vm *vm);
/* A table, one row per VM, then the last error of each VM that has one. */
/* One row per VM: state, readiness, pid, uptime, restarts, last exit, the VM it starts after, forwards. */
void print_vm_table(FILE *f, Hydra__V1__Vm *const *vms, size_t n_vms);
/* The role the VM starts after (spec.supervision.start_after), or NULL. */
const char *vm_start_after(const Hydra__V1__Vm *vm);
/* One line: local time, role, what happened ("running -> stopped (...)", "ready", "not ready: DETAIL",
 * "lost 3 events"...). */
void print_event_line(FILE *f, const Hydra__V1__Event *event);
/* The argv, an option and its value on one line; then every planned file. */
void print_plan(FILE *f, const Hydra__V1__PlanVmResponse *plan);
