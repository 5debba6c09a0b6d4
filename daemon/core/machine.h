/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "error.h"

/* Each QEMU in a transient scope of its own under machine.slice, registered with systemd-machined as a machine of
 * class vm (`machinectl list` shows hydra-host and hydra-isolated), with the spec's CPU and memory limits and
 * hydrad.service's device allow-list on the scope. Over the system bus, asynchronously: the bus is attached to the
 * loop and nothing here waits for a reply.
 *
 * One call, machined's CreateMachine: machined starts the scope (machine-hydra\x2dROLE.scope in machine.slice, with
 * our properties added to its own) through systemd, waits for the scope's job, and only then replies. The other way,
 * systemd's StartTransientUnit followed by machined's RegisterMachine, needs us to wait for the scope's JobRemoved
 * signal in between: machined records the unit the leader is in at RegisterMachine, and one asked too early records
 * hydrad.service, which `machinectl terminate` would then stop. The scope is referenced by machined, not by our bus
 * connection: it outlives hydrad, and a restarted hydrad finds its QEMU still in it (nothing to do at adoption). It
 * goes away when QEMU exits.
 *
 * Library-like: no logging; the caller says what happened (once per start). */

typedef struct Machined Machined;
typedef struct MachineJob MachineJob;

/* What the scope gets from us besides machined's own properties. Always DevicePolicy=closed with hydrad.service's
 * DeviceAllow= list (/dev/kvm, /dev/net/tun, /dev/vhost-net, /dev/vhost-vsock, rw): the scope is outside the
 * unit's cgroup, so its device list does not reach QEMU there. */
typedef struct MachineProperties {
        uint64_t cpu_quota_per_sec_usec;  /* systemd's CPUQuotaPerSecUSec: CPUQuota=150% is 1500000; 0: none */
        uint64_t memory_max;              /* bytes: MemoryMax=; 0: none */
        bool gpu;                         /* also DeviceAllow=char-drm rw (devices.gpu: the DRM render node) */
} MachineProperties;

/* CPUQuota=P% as CPUQuotaPerSecUSec (P * 10000), 0 for 0. */
uint64_t machine_cpu_quota_usec(uint32_t percent);

/* Decides once, at start-up, whether hydrad uses machined, and connects to the system bus ($DBUS_SYSTEM_BUS_ADDRESS,
 * else the standard socket) if so: a connect to a unix socket, then authentication and Hello asynchronously on e.
 *   no:   returns 0, *ret NULL, why "machined = no".
 *   auto: returns 0, *ret NULL, why "systemd is not PID 1" without systemd (sd_booted()), or why naming the bus
 *         error when the system bus cannot be reached; else 1 with *ret.
 *   yes:  returns 1 with *ret. A bus that cannot be reached is no error: why says so (code < 0), and each
 *         registration tries to connect again and fails with that reason.
 * Returns -ENOMEM on allocation failure. why's code is 0 when there is nothing to say. */
int machined_new(sd_event *e, MachinedMode mode, Machined **ret, HydraError *why);
/* As machined_new, with sd_booted()'s answer given (> 0: systemd is PID 1, 0: not; < 0: ask sd_booted()): the tests
 * take the path of a host without systemd on any host. */
int machined_new_full(sd_event *e, MachinedMode mode, int booted, Machined **ret, HydraError *why);
/* Cancels what is pending (no callback follows) and closes the bus. The scopes stay. */
Machined *machined_free(Machined *m);

/* Called once on the loop: r >= 0, registered (path: machined's object path of the machine, borrowed for the call);
 * r < 0 with err naming the call and machined's (or the bus's) error. The process is never touched either way. */
typedef void (*machine_done_t)(MachineJob *j, int r, const char *path, const HydraError *err, void *userdata);

/* Asks machined to put pid in a new scope with props (NULL: no limits, no GPU; the device list either way) and to
 * register it as machine name (class vm, service "hydra", no id, no root directory). A name that machined still
 * holds from a QEMU that just exited (machined forgets it when the old scope goes, a moment after the exit) is asked
 * again a few times, 300 ms apart, before the job fails. Returns 0 with *ret (done follows), or a negative errno
 * with err when nothing could be sent (no bus: err says why; done is not called). The job belongs to the caller:
 * free it once done ran, or before to cancel. */
int machine_register(Machined *m, const char *name, pid_t pid, const MachineProperties *props, machine_done_t done,
                     void *userdata, MachineJob **ret, HydraError *err);
/* done will not be called. The scope and the registration, if machined made them meanwhile, stay. */
MachineJob *machine_job_free(MachineJob *j);

/* Is pid in the cgroup of the systemd unit scope (/proc/PID/cgroup, the unified hierarchy's line, or the systemd
 * one's)? Returns 1, 0, or a negative errno (no such process). */
int machine_pid_in_scope(pid_t pid, const char *scope);
/* One line of /proc/PID/cgroup: does it put the process in scope? */
bool machine_cgroup_has_scope(const char *line, const char *scope);

/* The scope machined makes for a machine name: "machine-" + the unit-name escape of name + ".scope"
 * (machine-hydra\x2disolated.scope). Returns a new string or NULL (ENOMEM). */
char *machine_scope_name(const char *name);
