/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdint.h>

#include "error.h"

typedef struct Vm Vm;

/* Around a running QEMU (vm_services.c): the serial console relay, the readiness probe, the CRI socket. */

/* Creates the console relay (console.log, console.sock) if the VM has none yet; it lives until the VM is
 * destroyed or hydrad exits, so a person attached sees a crash and the restart that follows. */
int vm_console_open(Vm *vm, HydraError *err);

/* A new guest boot is about to run (a new QEMU, or a guest reset): not ready, the probe starts over. */
void vm_ready_begin(Vm *vm);

/* The guest runs (state running): periodic TCP / containerd probes, the CRI socket of the isolated VM. */
void vm_services_up(Vm *vm);

/* The guest no longer runs (stopping, or QEMU gone): probes stop, not ready, the CRI socket goes. The console
 * stays connected while QEMU lives, so a shutdown is in the log. */
void vm_services_down(Vm *vm);

/* Everything above, and the console relay itself. */
void vm_services_free(Vm *vm);

/* An adopted QEMU whose guest was ready under the previous hydrad. */
void vm_services_restore_ready(Vm *vm, uint64_t since_usec);
