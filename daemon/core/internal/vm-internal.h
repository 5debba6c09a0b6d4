/* SPDX-License-Identifier: MIT */
#pragma once

/* struct Vm and what the vm*.c files share. Nothing outside vm.c, vm_qemu.c and vm_records.c includes this. */

#include <time.h>

#include "console.h"
#include "disk_queue.h"
#include "provision.h"
#include "qmp.h"
#include "restart.h"
#include "vm.h"
#include "vm_services.h"

typedef struct VmRegister VmRegister;

struct Vm {
        VmContext ctx;
        Role role;
        const char *name;          /* "host" / "isolated" (static) */

        VmState state;
        bool registered;
        VmSpec spec;
        uint64_t generation;

        char *state_dir;           /* STATE_DIR/ROLE: spec.pb, state.json, console.log, qemu.log */
        char *run_dir;             /* RUN_DIR/ROLE: qmp.sock, runtime.json, the sockets */
        char *qmp_path;
        char *console_path;
        char *stderr_path;
        char *console_sock_path;   /* RUN_DIR/ROLE/console.sock: people attach here */
        char *qemu_console_path;   /* RUN_DIR/ROLE/qemu-console.sock: QEMU's end */
        char *cri_path;            /* isolated: RUN_DIR/isolated/containerd.sock */

        /* The QEMU process, while there is one (vm_qemu.c). */
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
        MachineJob *machine_job;   /* its scope and machined registration, until machined answers (machine.h) */
        char *machine_name;        /* "hydra-ROLE" once machined registered this QEMU; NULL: not (or not yet) */
        char *machine_scope;       /* and its scope, machine-hydra\x2dROLE.scope */

        sd_event_source *start_timer; /* QMP lost during start-up: wait for the exit before failing */
        sd_event_source *ready_timer; /* supervision.ready_timeout after QEMU started, until the guest is ready */
        bool ready_timed_out;         /* this QEMU is being stopped because of it: its exit is "ready-timeout" */

        StopStage stop_stage;
        sd_event_source *stop_timer;
        uint64_t stop_timeout_usec;
        bool destroy_pending;
        bool destroy_keep_cache;
        /* The download URLs of replaced specs, removed from the cache once no preparation of the old spec is in
         * flight (vm.c: vm_drop_stale). */
        char **stale_urls;

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

        /* Around the running QEMU: console relay, readiness, CRI socket. */
        VmServices *services;

        /* The records and removals, in order, off the loop. An op completes, and a preparation begins, only
         * once what was queued before is durable. */
        DiskQueue *disk;
        VmRegister *reg;           /* a RegisterVm in flight (vm.c) */
        bool prepare_pending;      /* PREPARING: the provision starts once the "preparing" record is durable */
        StopStage stop_pending;    /* the stop begins at this stage once the "stopping" record is durable */
};

/* --- vm.c --- */

/* Applies the table: looks the cell up, logs "VM 'isolated': running -> stopping (stop)", changes state, acts.
 * Returns 0, or -EBUSY if the event is refused in this state. */
int vm_dispatch(Vm *vm, VmEvent event, const char *reason);
/* No process and nothing being prepared. */
bool vm_is_down(const Vm *vm);
/* Completes the ops whose wait is over. */
void vm_check_ops(Vm *vm);
void vm_emit(Vm *vm, HydraEvent *ev);
uint64_t vm_now_usec(clockid_t clock);

/* --- vm_qemu.c --- */

int vm_launch(Vm *vm, HydraError *err);
int vm_adopt_qmp(Vm *vm, HydraError *err);
/* QEMU is gone (or never was): QMP, console connection, timers and sockets go. The runtime record stays until
 * the state that follows is recorded (the REAP action removes it). */
void vm_teardown_process(Vm *vm);
/* Arms the readiness deadline (supervision.ready_timeout after QEMU started) if the spec has one and the guest is
 * not ready; when it passes, the VM is failed (VM_EVENT_READY_TIMEOUT) with what the probe and the console said. */
void vm_ready_timer_arm(Vm *vm);
void vm_ready_timer_disarm(Vm *vm);
/* The staged stop from stage on: powerdown, quit, SIGTERM, SIGKILL, each with its timer. */
void vm_stop_advance(Vm *vm, StopStage stage);
void vm_drives_clear(Vm *vm);
int vm_qemu_binary(Vm *vm, char **ret, HydraError *err);
int vm_build_argv(Vm *vm, const ProvisionOutput *out, char ***ret_argv, HydraError *err);
/* Whether QEMU runs as hydrad.conf's qemu_user with what out prepared: 1 yes; 0 no, as hydrad's user (no
 * qemu_user, or *ret_reasons (a strv) says what keeps it root: a feature, a device or a file it cannot reach);
 * -ENOMEM. */
int vm_qemu_user_decide(Vm *vm, const ProvisionOutput *out, char ***ret_reasons);
uint64_t vm_uptime_usec(const Vm *vm);

/* --- vm_records.c --- */

/* RUN_DIR/ROLE/runtime.json: what a restarted hydrad needs to find its QEMU again. */
typedef struct VmRuntimeRecord {
        pid_t pid;
        uint64_t start_ticks;
        uint64_t spawn_realtime_usec;    /* 0: unknown */
        uint64_t ready_since_usec;       /* 0: not ready */
        char *qmp_socket;
        char *state;                     /* NULL: unknown */
        char *disk_path, *seed_path;
} VmRuntimeRecord;
void vm_runtime_record_done(VmRuntimeRecord *r);

/* The records are queued on vm->disk: the loop never waits for them. */
void vm_runtime_save(Vm *vm);
/* Rewrites the runtime record while there is a process: readiness is part of it. */
void vm_runtime_update(Vm *vm);
/* Returns 1 with *ret filled, 0 if there is no record (or it was invalid: then it is removed, with a warning). */
int vm_runtime_load(Vm *vm, VmRuntimeRecord *ret);
void vm_runtime_remove(Vm *vm);

/* STATE_DIR/ROLE/state.json: a resting state with the last exit and error, or "preparing". */
void vm_state_save(Vm *vm);
void vm_state_load(Vm *vm);

/* STATE_DIR/ROLE/spec.pb: the registered spec, packed by ctx.codec (on the loop) and queued; done follows once it is
 * durable or failed. Returns 0, or a negative errno with err (nothing queued). */
int vm_spec_store(Vm *vm, const VmSpec *spec, disk_job_done_t done, void *userdata, HydraError *err);
/* Returns 1 with *ret, 0 if there is none, or a negative errno with err naming the file. */
int vm_spec_read(Vm *vm, VmSpec *ret, HydraError *err);
