/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "cloudinit.h"
#include "config.h"
#include "disk_queue.h"
#include "error.h"
#include "fetch.h"
#include "machine.h"
#include "probe.h"
#include "proxy.h"
#include "spec.h"
#include "vm_state.h"

/* The Vm object: one per role. It performs what the state table (vm_state.c) asks, through one entry point,
 * vm_dispatch(). API operations that wait for a state (start until running, stop until stopped) are VmOps.
 *
 * struct Vm is private to the vm*.c files (vm-internal.h): the Manager owns the two Vms, api.c reads a VmStatus.
 * A Vm knows nothing of the Manager: it gets a VmContext (the loop, the settings, the downloader, the spec codec)
 * and reports through its callbacks. Its files: vm.c (the object, the executor, the operations), vm_qemu.c (launch,
 * QMP, the staged stop, exit, adoption), vm_records.c (spec, state and runtime records on disk), vm_services.c
 * (console relay, readiness probes, CRI socket). */

typedef struct Vm Vm;

/* Returned by operations on a role that has no registered spec; the API maps it to NOT_FOUND. */
#define HYDRA_ENOTREGISTERED (-ENXIO)
/* A start that failed because QEMU exited or never answered QMP; the API maps it to ABORTED. */
#define HYDRA_ELAUNCH (-ECHILD)
/* A start refused or failed because of the VM it starts after (supervision.start_after): not registered, failed,
 * not ready in time, stopped meanwhile; the API maps it to FAILED_PRECONDITION. */
#define HYDRA_EDEPENDENCY (-ENOLINK)

typedef enum StopStage {
        STOP_STAGE_NONE,
        STOP_STAGE_POWERDOWN,  /* QMP system_powerdown, wait up to the stop timeout */
        STOP_STAGE_QUIT,       /* QMP quit */
        STOP_STAGE_SIGTERM,
        STOP_STAGE_SIGKILL,
        _STOP_STAGE_MAX,
} StopStage;

typedef struct VmExit {
        bool exited;
        int code;
        int signal;
        char reason[32];       /* guest-shutdown, quit, sigterm, sigkill, crashed, launch-failed */
        uint64_t time_usec;    /* CLOCK_REALTIME */
} VmExit;

typedef struct VmOp VmOp;

typedef struct VmDrive {
        char *id;
        char *file;
        char *format;
        bool read_only;
} VmDrive;

/* r: 0 on success or a negative errno; err: what failed (valid during the call). */
typedef void (*vm_op_done_t)(Vm *vm, int r, const HydraError *err, void *userdata);

/* What the VM tells the world. time and seq are filled by the emitter. */
typedef enum HydraEventType {
        HYDRA_EVENT_STATE,
        HYDRA_EVENT_QMP,
        HYDRA_EVENT_PROGRESS,     /* preparation progress */
        HYDRA_EVENT_NOTICE,       /* something the user should know ("disk reset: ...") */
        HYDRA_EVENT_READY,        /* the readiness changed: the Vm's ready, ready_detail */
        HYDRA_EVENT_CONSOLE,      /* bytes the guest printed (data, size); not a WatchEvents event */
} HydraEventType;

typedef struct HydraEvent {
        uint64_t seq;             /* filled by the emitter (manager_emit) */
        uint64_t time_usec;       /* CLOCK_REALTIME, filled by the emitter (manager_emit) */
        Role role;
        HydraEventType type;
        VmState from, to;         /* HYDRA_EVENT_STATE */
        const char *reason;       /* HYDRA_EVENT_STATE: why ("start", "guest-shutdown", ...) */
        const char *qmp_name;     /* HYDRA_EVENT_QMP */
        const char *qmp_data;     /* HYDRA_EVENT_QMP: the event's data as JSON, or NULL */
        const char *notice;       /* HYDRA_EVENT_NOTICE */
        const void *data;         /* HYDRA_EVENT_CONSOLE */
        size_t size;
        /* HYDRA_EVENT_PROGRESS, HYDRA_EVENT_READY: the VM's status carries them (vm_get_status) */
} HydraEvent;

typedef struct VmContext {
        sd_event *event;
        const HydraConfig *config;
        const SpecCodec *codec;         /* how spec.pb is stored */
        Fetcher *fetcher;               /* downloads, shared by both VMs */
        const char *cache_dir;          /* STATE_DIR/cache */
        /* Every event (state changes, QMP events, progress, notices, readiness, console bytes). */
        void (*emit)(HydraEvent *ev, Vm *vm, void *userdata);
        /* Does another VM use this download (vm_uses_url)? A destroy or a new spec keeps what another VM still
         * uses. */
        bool (*url_in_use)(const Vm *vm, const char *url, void *userdata);
        /* Removals from the cache (the Manager's, shared; NULL: the VM's own disk queue). A preparation begins,
         * and a destroy completes, only once it is idle: nothing downloads into an entry being removed. */
        DiskQueue *cache_queue;
        /* What a new spec must agree on with the other VM (host forwards that would collide, a start_after cycle);
         * run by vm_register after the spec's own validation. Returns 0 or a negative errno with err. NULL: none. */
        int (*check_spec)(const Vm *vm, const VmSpec *spec, HydraError *err, void *userdata);
        /* Each QEMU in a scope of its own, registered with systemd-machined (machine.h); the Manager's, shared.
         * NULL: hydrad does not use machined, for the reason in no_machined (borrowed; a resources limit of a spec
         * is then not applied, and each start says so and why). */
        Machined *machined;
        const char *no_machined;
        void *userdata;
} VmContext;

/* A VM as GetVm shows it. The strings and arrays are borrowed from the Vm: valid until it next changes, that is,
 * for the current loop callback. */
typedef struct VmStatus {
        Role role;
        const char *name;
        bool registered;
        const VmSpec *spec;             /* NULL unless registered */
        uint64_t generation;
        VmState state;
        pid_t pid;
        uint64_t uptime_usec;
        const VmExit *last_exit;
        const char *last_error;         /* NULL: none */
        unsigned restart_count;
        uint64_t next_restart_usec;     /* CLOCK_REALTIME; 0: none scheduled */
        const char *console_log;        /* STATE_DIR/ROLE/console.log */
        const char *qmp_socket;
        const char *console_socket;     /* NULL while there is no relay */
        const char *cri_socket;         /* NULL while there is no CRI socket */
        const char *disk_path, *seed_path;
        struct {
                const char *step;       /* NULL: no preparation in flight */
                const char *what;
                uint64_t bytes, total, rate;
        } progress;
        bool ready;
        uint64_t ready_since_usec;      /* CLOCK_REALTIME */
        const char *ready_detail;
        const char *machine;            /* NULL: QEMU is not registered with systemd-machined */
        const char *machine_scope;      /* its scope, or NULL */
        const VmDrive *drives;
        size_t n_drives;
} VmStatus;

int vm_new(const VmContext *ctx, Role role, Vm **ret);
Vm *vm_free(Vm *vm);  /* leaves a running QEMU running */

/* containerd probes need gRPC, which lives outside the core; NULL: they never pass. */
void vm_set_grpc_prober(Vm *vm, const GrpcProber *prober);

/* The VM's CRI socket (RUN_DIR/ROLE/containerd.sock, the isolated VM's) is bound for as long as its spec has the
 * TCP forward to the guest's containerd, running or not. While the guest runs, its connections are forwarded;
 * otherwise each goes to fallback, the daemon's top, which answers every gRPC call UNAVAILABLE with
 * vm_cri_unavailable_reason() (gRPC lives outside the core). Borrowed until replaced; NULL: such a connection
 * is closed at once. */
void vm_set_cri_fallback(Vm *vm, const ProxyFallback *fallback);

/* The last error's first line, cut at this many bytes, in vm_cri_unavailable_reason(). */
#define VM_CRI_REASON_ERROR_MAX 160U
/* Why a call on the CRI socket does not reach the guest's containerd now, for the client, from the VM's status:
 * "VM 'isolated' is stopped: its containerd is not running (hydractl start isolated)", "VM 'isolated' is
 * starting: containerd is not ready yet", "VM 'isolated' failed (ERROR): ...". Pure. */
void vm_cri_unavailable_reason(const VmStatus *st, char *buf, size_t size);

Role vm_role(const Vm *vm);
const char *vm_name(const Vm *vm);
bool vm_is_registered(const Vm *vm);
const VmSpec *vm_get_spec(const Vm *vm);   /* NULL unless registered */
const char *vm_console_log(const Vm *vm);  /* STATE_DIR/ROLE/console.log (rotated: .1, .2) */
void vm_get_status(const Vm *vm, VmStatus *ret);
/* The VM's spec names url (image.url, bare.artifact.url), or a preparation of an earlier spec that names it is
 * still in flight. */
bool vm_uses_url(const Vm *vm, const char *url);
/* The cache queue (VmContext.cache_queue) became idle: a preparation or a destroy that waited for it goes on. */
void vm_cache_idle(Vm *vm);
/* RUN_DIR/ROLE exists: a QEMU may have been left there (a message for a spec that cannot be loaded). */
bool vm_has_run_dir(const Vm *vm);

/* Reads the stored spec at start-up. Returns 1 if loaded, 0 if there is none, or a negative errno with err
 * naming the file (truncated, corrupt, or no longer valid). */
int vm_load(Vm *vm, HydraError *err);

/* After vm_load: a QEMU that an earlier hydrad started and that still runs with the identity recorded in
 * RUN_DIR/ROLE/runtime.json (pid + /proc start time) is adopted: watched through a pidfd, QMP reconnected,
 * never restarted. A recorded QEMU that is gone, or is now another process, is recorded as such and never
 * touched. Returns 1 if adopted, 0 if there was nothing to adopt. */
int vm_adopt(Vm *vm);

/* Validates and stores the spec (taking ownership of its contents). A cleartext password is hashed on a worker
 * thread and spec.pb written by the disk queue: the loop never waits. Returns 1 when done at once (the spec is
 * unchanged: done is not called), 0 when pending (done is called with r = 1 if the spec changed, 0 if not, or a
 * negative errno: -EINVAL with err naming the field, -EBUSY if the VM is not stopped and !apply_on_next_start,
 * a store error, -ECANCELED if the VM was destroyed meanwhile), or a negative errno with err set. One at a time:
 * -EBUSY while another registration of the VM is in flight. */
int vm_register(Vm *vm, VmSpec *spec, bool apply_on_next_start, vm_op_done_t done, void *userdata, VmOp **ret_op,
                HydraError *err);

/* The operations below return 1 when already done (done is not called), 0 when pending (done will be called
 * exactly once, unless the op is cancelled first; *ret_op is the handle), or a negative errno with err set. */
/* wait_ready: done once the readiness probe passes (not just once QEMU runs). */
int vm_start(Vm *vm, bool wait_ready, uint64_t timeout_usec, vm_op_done_t done, void *userdata, VmOp **ret_op,
             HydraError *err);
int vm_stop(Vm *vm, bool force, uint64_t timeout_usec, vm_op_done_t done, void *userdata, VmOp **ret_op,
            HydraError *err);
/* keep_cache: downloaded images and artifacts stay in the cache (else the ones no other VM's spec names go). */
int vm_destroy(Vm *vm, bool keep_cache, vm_op_done_t done, void *userdata, VmOp **ret_op, HydraError *err);

/* autostart (hydrad start-up) and a crashed VM with a restart policy: started as the policy would, so that a
 * failure is retried with backoff. Returns 1 if a start began, 0 if there was nothing to do. */
int vm_autostart(Vm *vm);

/* The caller lost interest (the client went away): done will not be called. The VM carries on. */
VmOp *vm_op_cancel(VmOp *op);

/* The exact argv a start would run now, and the cloud-init files it would write (PlanVm), who QEMU would run as
 * (hydrad.conf's qemu_user, "root", or "uid N") and, with a qemu_user, what keeps it root (a strv, or NULL). Nothing
 * is started, downloaded or written. */
int vm_plan(Vm *vm, char ***ret_argv, CloudInitFiles *ret_files, char **ret_qemu_user, char ***ret_root_reasons,
            HydraError *err);

/* Where the seed's files live: STATE_DIR/ROLE/cloud-init/NAME. */
char *vm_cloud_init_path(const Vm *vm, const char *name);

const char *stop_stage_to_string(StopStage s);
