/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "fetch.h"
#include "spec.h"
#include "vm_state.h"

/* The manager owns the loop's view of the world: both Vm objects, the subscriptions to their events, and the
 * daemon settings. Everything here runs on the sd-event thread. */

typedef struct Manager Manager;
typedef struct Vm Vm;

/* How a spec is stored: the packed hydra.v1.VmSpec. The codec lives with the protobuf code in api.c, so the
 * core never includes a .pb-c.h; tests pass their own. */
typedef struct SpecCodec {
        int (*encode)(const VmSpec *spec, void **ret_data, size_t *ret_size);
        /* Returns 0, or -EBADMSG for bytes that are not a VmSpec, with err saying why (naming the field when
         * a string is not UTF-8 or holds a NUL byte). */
        int (*decode)(const void *data, size_t size, VmSpec *ret_spec, HydraError *err);
} SpecCodec;

/* containerd's Version over gRPC, for the readiness probe. gRPC lives outside the core (daemon/grpc_probe.c, in
 * hydrad), so the core reaches it through this; NULL: containerd probes never pass. */
typedef void (*grpc_prober_done_t)(void *probe, bool ready, const char *detail, void *userdata);
typedef struct GrpcProber {
        int (*start)(sd_event *e, const char *target, uint64_t timeout_usec, grpc_prober_done_t done,
                     void *userdata, void **ret);
        void (*cancel)(void *probe);
} GrpcProber;

typedef enum HydraEventType {
        HYDRA_EVENT_STATE,
        HYDRA_EVENT_QMP,
        HYDRA_EVENT_PROGRESS,     /* preparation progress */
        HYDRA_EVENT_NOTICE,       /* something the user should know ("disk reset: ...") */
        HYDRA_EVENT_READY,        /* the readiness changed: the Vm's ready, ready_detail */
        HYDRA_EVENT_CONSOLE,      /* bytes the guest printed (data, size); not a WatchEvents event */
} HydraEventType;

typedef struct HydraEvent {
        uint64_t seq;             /* filled by manager_emit */
        uint64_t time_usec;       /* CLOCK_REALTIME, filled by manager_emit */
        Role role;
        HydraEventType type;
        VmState from, to;         /* HYDRA_EVENT_STATE */
        const char *reason;       /* HYDRA_EVENT_STATE: why ("start", "guest-shutdown", ...) */
        const char *qmp_name;     /* HYDRA_EVENT_QMP */
        const char *qmp_data;     /* HYDRA_EVENT_QMP: the event's data as JSON, or NULL */
        const char *notice;       /* HYDRA_EVENT_NOTICE */
        const void *data;         /* HYDRA_EVENT_CONSOLE */
        size_t size;
        /* HYDRA_EVENT_PROGRESS: the Vm's progress fields carry it (see vm.h) */
} HydraEvent;

typedef void (*manager_event_handler_t)(Manager *m, const HydraEvent *ev, Vm *vm, void *userdata);

typedef struct Subscription Subscription;

int manager_new(sd_event *e, const HydraConfig *config, const SpecCodec *codec, Manager **ret);
Manager *manager_free(Manager *m);

/* Loads the stored specs. A spec that cannot be read is logged with its file name and skipped; the other VM
 * is still loaded. Returns 0, or a negative errno for a state dir that cannot be created. */
int manager_load(Manager *m, HydraError *err);

/* After manager_load, once clients can watch: starts the VMs whose spec says autostart, and a VM that crashed
 * before hydrad restarted if its restart policy says so. Failures go the way of the restart policy. */
void manager_autostart(Manager *m);

Vm *manager_get_vm(Manager *m, Role role);
sd_event *manager_get_event(Manager *m);
const HydraConfig *manager_get_config(Manager *m);
const SpecCodec *manager_get_codec(Manager *m);
Fetcher *manager_get_fetcher(Manager *m);
void manager_set_grpc_prober(Manager *m, const GrpcProber *prober);
const GrpcProber *manager_get_grpc_prober(Manager *m);
const char *manager_get_cache_dir(Manager *m);   /* STATE_DIR/cache */

/* role < 0: both VMs. */
int manager_subscribe(Manager *m, int role, manager_event_handler_t handler, void *userdata, Subscription **ret);
Subscription *subscription_free(Subscription *s);

void manager_emit(Manager *m, HydraEvent *ev, Vm *vm);

/* Stops every running VM gracefully (on-exit = stop) and calls done once all have stopped. Returns 1 if
 * nothing was running (done not called), 0 if pending. */
int manager_stop_all(Manager *m, void (*done)(Manager *m, void *userdata), void *userdata);
