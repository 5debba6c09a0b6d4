/* SPDX-License-Identifier: MIT */
#pragma once

/* daemon/core: the supervisor: the Manager (this file) and its two Vms (vm.h: the object; vm_state.h: the table
 * every state change goes through; restart.h: the restart policy), and hydrad.conf (config.h). The Vm's insides
 * (struct Vm, VmServices) are in core/internal/, which nothing above core/ can include. core/ sees qemu/,
 * provision/, net/ and base/; main.c and api.c see core/. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "vm.h"

/* The manager owns the loop's view of the world: both Vm objects, the downloader they share, and the subscriptions
 * to their events. It gives each Vm a VmContext whose callbacks come back here (events, "does the other VM use this
 * download?"); a Vm never sees the Manager. Everything here runs on the sd-event thread. */

typedef struct Manager Manager;

typedef void (*manager_event_handler_t)(Manager *m, const HydraEvent *ev, Vm *vm, void *userdata);

typedef struct Subscription Subscription;

int manager_new(sd_event *e, const HydraConfig *config, const SpecCodec *codec, Manager **ret);
Manager *manager_free(Manager *m);

/* Loads the stored specs. A spec that cannot be read is logged with its file name and skipped; the other VM
 * is still loaded. Then queues the sweep of the download cache: off the loop, and before any preparation, what no
 * loaded spec names goes (not when a spec could not be read: it may name what is there). Returns 0, or a negative
 * errno for a state dir that cannot be created. */
int manager_load(Manager *m, HydraError *err);

/* After manager_load, once clients can watch: starts the VMs whose spec says autostart, and a VM that crashed
 * before hydrad restarted if its restart policy says so. Failures go the way of the restart policy. */
void manager_autostart(Manager *m);

Vm *manager_get_vm(Manager *m, Role role);
/* containerd readiness probes (gRPC lives outside the core); NULL: they never pass. */
void manager_set_grpc_prober(Manager *m, const GrpcProber *prober);

/* role < 0: both VMs. */
int manager_subscribe(Manager *m, int role, manager_event_handler_t handler, void *userdata, Subscription **ret);
Subscription *subscription_free(Subscription *s);


/* StartVm and StopVm go through the Manager: a VM whose spec names supervision.start_after starts only once the
 * VM it names is ready (running, for a probe of none), and that VM is started first if it is not running.
 *
 * manager_start: as vm_start (1 done, 0 pending, negative errno with err), but the handle is a ManagerOp. A VM that
 * waits for its dependency stays in its resting state; a notice on its role says "waiting for host to be ready".
 * The dependency's failure (failed, crashed, stopped, not ready within its ready_timeout or within an hour)
 * fails the start with HYDRA_EDEPENDENCY naming the dependency and why; so does a dependency that is not
 * registered (at once). The client's timeout_usec covers the wait and the VM's own start. */
typedef struct ManagerOp ManagerOp;
int manager_start(Manager *m, Role role, bool wait_ready, uint64_t timeout_usec, vm_op_done_t done, void *userdata,
                  ManagerOp **ret_op, HydraError *err);
/* The caller lost interest: done will not be called. The start carries on. */
ManagerOp *manager_op_cancel(ManagerOp *op);

/* As vm_stop. A start of this VM that waits for its dependency is cancelled. A VM that starts after this one and
 * is not down is named in a warning (log and a notice on this VM's role): it is not stopped with it (stop it
 * first: hydractl stop --all does). */
int manager_stop(Manager *m, Role role, bool force, uint64_t timeout_usec, vm_op_done_t done, void *userdata,
                 VmOp **ret_op, HydraError *err);

/* The registered roles in start order (each after the one it starts after; stop in the reverse). Returns how many
 * were written to ret (at most _ROLE_MAX). */
size_t manager_start_order(Manager *m, Role ret[static _ROLE_MAX]);

/* Stops every running VM gracefully (on-exit = stop), a VM that starts after another before that one, and calls
 * done once all have stopped. Returns 1 if
 * nothing was running (done not called), 0 if pending. */
int manager_stop_all(Manager *m, void (*done)(Manager *m, void *userdata), void *userdata);
