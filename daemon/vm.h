/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "error.h"
#include "manager.h"
#include "console.h"
#include "probe.h"
#include "provision.h"
#include "proxy.h"
#include "restart.h"
#include "qmp.h"
#include "spec.h"
#include "vm_state.h"

/* The Vm object: one per role. It performs what the state table (vm_state.c) asks, through one entry point,
 * vm_dispatch(). API operations that wait for a state (start until running, stop until stopped) are VmOps. */

/* Returned by operations on a role that has no registered spec; the API maps it to NOT_FOUND. */
#define HYDRA_ENOTREGISTERED (-ENXIO)
/* A start that failed because QEMU exited or never answered QMP; the API maps it to ABORTED. */
#define HYDRA_ELAUNCH (-ECHILD)

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

struct Vm {
        Manager *manager;          /* borrowed */
        Role role;
        const char *name;          /* "host" / "isolated" (static) */

        VmState state;
        bool registered;
        VmSpec spec;
        uint64_t generation;

        char *state_dir;           /* STATE_DIR/ROLE: spec.pb, console.log, qemu.log */
        char *run_dir;             /* RUN_DIR/ROLE: qmp.sock */
        char *qmp_path;
        char *console_path;
        char *stderr_path;

        /* The QEMU process, while there is one. */
        pid_t pid;
        uint64_t start_ticks;      /* /proc/PID/stat start time: the process identity with pid */
        uint64_t spawn_usec;       /* CLOCK_MONOTONIC */
        sd_event_source *child_source; /* our child: a child pidfd source; adopted: an io source on its pidfd */
        bool adopted;              /* started by an earlier hydrad: not our child, its exit status is unknown */
        bool resume_stop;          /* adopted while a stop was in progress: finish it once QMP answers */
        bool prepare_interrupted;  /* the state record said a preparation was under way when hydrad stopped */
        QmpClient *qmp;
        bool qmp_ready;
        bool guest_shutdown_seen;
        bool guest_panicked;       /* QMP GUEST_PANICKED: the exit that follows is a crash */
        VmDrive *drives;           /* query-block once QMP is ready */
        size_t n_drives;
        char **argv;               /* as prepared for launch */

        sd_event_source *start_timer; /* QMP lost during start-up: wait for the exit before failing */

        StopStage stop_stage;
        sd_event_source *stop_timer;
        uint64_t stop_timeout_usec;
        bool destroy_pending;
        bool destroy_keep_cache;

        VmExit last_exit;
        HydraError last_error;     /* code 0: none */
        unsigned restart_count;

        /* Restart policy (spec.supervision): the deaths so far, the restart waiting for its backoff. */
        RestartTracker restarts;
        sd_event_source *restart_timer;
        uint64_t next_restart_usec;   /* CLOCK_REALTIME; 0: none scheduled */
        bool restarting;              /* the current start came from the policy or autostart, not a client */
        uint64_t last_up_usec;        /* how long the last QEMU ran */

        VmOp *ops;

        /* Preparation (PREPARING): the chain in flight, its last progress, what it produced. */
        Provision *provision;
        struct {
                char *step;
                char *what;
                uint64_t bytes, total, rate;
        } progress;
        ProvisionOutput prepared;

        /* Around the running QEMU (vm_services.c). */
        Console *console;             /* serial console relay: console.log, console.sock */
        char *console_sock_path;      /* RUN_DIR/ROLE/console.sock: people attach here */
        char *qemu_console_path;      /* RUN_DIR/ROLE/qemu-console.sock: QEMU's end */
        LineMatcher *ready_matcher;   /* probe console */
        TcpProbe *tcp_probe;          /* probe tcp, in flight */
        void *grpc_probe;             /* probe containerd, in flight (GrpcProber) */
        sd_event_source *probe_timer;
        bool ready;
        uint64_t ready_since_usec;    /* CLOCK_REALTIME */
        char *ready_detail;
        Proxy *cri;                   /* isolated: RUN_DIR/isolated/containerd.sock -> containerd's forward */
        char *cri_path;
};

int vm_new(Manager *m, Role role, Vm **ret);
Vm *vm_free(Vm *vm);  /* leaves a running QEMU running */

/* Applies the table: looks the cell up, logs "VM 'isolated': running -> stopping (stop)", changes state, acts.
 * Returns 0, or -EBUSY if the event is refused in this state. */
int vm_dispatch(Vm *vm, VmEvent event, const char *reason);

/* Reads the stored spec at start-up. Returns 1 if loaded, 0 if there is none, or a negative errno with err
 * naming the file (truncated, corrupt, or no longer valid). */
int vm_load(Vm *vm, HydraError *err);

/* After vm_load: a QEMU that an earlier hydrad started and that still runs with the identity recorded in
 * RUN_DIR/ROLE/runtime.json (pid + /proc start time) is adopted: watched through a pidfd, QMP reconnected,
 * never restarted. A recorded QEMU that is gone, or is now another process, is recorded as such and never
 * touched. Returns 1 if adopted, 0 if there was nothing to adopt. */
int vm_adopt(Vm *vm);

/* Validates and stores the spec (taking ownership of its contents). Returns 0 with *ret_changed, -EINVAL with
 * err naming the field, -EBUSY if the VM is not stopped and !apply_on_next_start, or a store error. */
int vm_register(Vm *vm, VmSpec *spec, bool apply_on_next_start, bool *ret_changed, HydraError *err);

/* The operations below return 1 when already done (done is not called), 0 when pending (done will be called
 * exactly once, unless the op is cancelled first; *ret_op is the handle), or a negative errno with err set. */
/* wait_ready: done once the readiness probe passes (not just once QEMU runs). */
int vm_start(Vm *vm, bool wait_ready, uint64_t timeout_usec, vm_op_done_t done, void *userdata, VmOp **ret_op,
             HydraError *err);
/* The readiness changed (vm_services.c): ops waiting for it finish. */
void vm_ready_changed(Vm *vm);
int vm_stop(Vm *vm, bool force, uint64_t timeout_usec, vm_op_done_t done, void *userdata, VmOp **ret_op,
            HydraError *err);
/* keep_cache: downloaded images and artifacts stay in the cache (else the ones no other VM's spec names go). */
int vm_destroy(Vm *vm, bool keep_cache, vm_op_done_t done, void *userdata, VmOp **ret_op, HydraError *err);

/* autostart (hydrad start-up) and a crashed VM with a restart policy: started as the policy would, so that a
 * failure is retried with backoff. Returns 1 if a start began, 0 if there was nothing to do. */
int vm_autostart(Vm *vm);

/* The caller lost interest (the client went away): done will not be called. The VM carries on. */
VmOp *vm_op_cancel(VmOp *op);

/* The exact argv a start would run now, and the cloud-init files it would write (PlanVm). Nothing is started,
 * downloaded or written. */
int vm_plan(Vm *vm, char ***ret_argv, CloudInitFiles *ret_files, HydraError *err);

/* Where the seed's files live: STATE_DIR/ROLE/cloud-init/NAME. */
char *vm_cloud_init_path(const Vm *vm, const char *name);

uint64_t vm_uptime_usec(const Vm *vm);
/* Rewrites RUN_DIR/ROLE/runtime.json (while there is a process): readiness is part of it. */
void vm_runtime_update(Vm *vm);
const char *stop_stage_to_string(StopStage s);
