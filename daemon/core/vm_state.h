/* SPDX-License-Identifier: MIT */
#pragma once

#include <errno.h>
#include <stdbool.h>

/* The VM state machine as pure data: a [state][event] -> {next, action} table (s6-supervise's actions[][]).
 * vm.c performs the action; nothing here does I/O. */

typedef enum VmState {
        VM_STATE_DEFINED,    /* registered, never started */
        VM_STATE_PREPARING,  /* artifacts being prepared */
        VM_STATE_STARTING,   /* QEMU spawned, QMP handshake not done */
        VM_STATE_RUNNING,
        VM_STATE_STOPPING,
        VM_STATE_STOPPED,
        VM_STATE_FAILED,     /* preparation or launch failed */
        VM_STATE_CRASHED,    /* QEMU died unexpectedly */
        _VM_STATE_MAX,
        _VM_STATE_INVALID = -EINVAL,
} VmState;

typedef enum VmEvent {
        VM_EVENT_START,            /* StartVm, autostart, the restart policy */
        VM_EVENT_PREPARED,         /* preparation finished */
        VM_EVENT_PREPARE_FAILED,   /* preparation failed (download, disk, seed, argv) */
        VM_EVENT_LAUNCH_FAILED,    /* QEMU could not be spawned or watched */
        VM_EVENT_QMP_READY,        /* QMP handshake done, the guest runs */
        VM_EVENT_QMP_FAILED,       /* QMP handshake or cont failed, or QMP went away during start-up */
        VM_EVENT_ADOPT,            /* a QEMU of the previous hydrad still runs: take it back */
        VM_EVENT_ADOPT_FAILED,     /* its QMP socket cannot be reached */
        VM_EVENT_STOP,             /* StopVm, graceful */
        VM_EVENT_STOP_FORCE,       /* StopVm --force, DestroyVm */
        VM_EVENT_EXIT_CLEAN,       /* QEMU exited and we expected it (guest shutdown seen, or we asked) */
        VM_EVENT_EXIT_UNEXPECTED,  /* QEMU exited and nobody asked */
        VM_EVENT_LOST,             /* a QEMU of the previous hydrad went away while no hydrad watched it */
        VM_EVENT_LOST_STOPPING,    /* the same, but it was being stopped: the stop is over */
        VM_EVENT_DESTROY,          /* DestroyVm, once nothing runs: forget the VM */
        VM_EVENT_READY_TIMEOUT,    /* the readiness probe has not passed within supervision.ready_timeout */
        _VM_EVENT_MAX,
        _VM_EVENT_INVALID = -EINVAL,
} VmEvent;

typedef enum VmAction {
        VM_ACTION_NONE,
        VM_ACTION_PREPARE,  /* begin preparing artifacts */
        VM_ACTION_LAUNCH,   /* spawn QEMU and connect QMP */
        VM_ACTION_STOP,     /* staged stop: system_powerdown, quit, SIGTERM, SIGKILL */
        VM_ACTION_KILL,     /* staged stop without the ACPI step: quit, SIGTERM, SIGKILL */
        VM_ACTION_CANCEL,   /* abandon a preparation in progress */
        VM_ACTION_REAP,     /* QEMU is gone: record the exit, drop QMP and runtime files */
        VM_ACTION_ADOPT,    /* connect to the adopted QEMU's QMP socket */
        VM_ACTION_REMOVE,   /* forget the spec, remove the VM's files (and its downloads unless kept) */
        _VM_ACTION_MAX,
        _VM_ACTION_INVALID = -EINVAL,
} VmAction;

typedef struct VmTransition {
        VmState next;
        VmAction action;
} VmTransition;

const char *vm_state_to_string(VmState s);  /* "defined", "preparing", ... as the API and hydractl print */
VmState vm_state_from_string(const char *s);
const char *vm_event_to_string(VmEvent e);  /* "start", "prepared", ... for logs */
const char *vm_action_to_string(VmAction a);

/* Looks up the cell. Returns 0 and fills *ret, or -EBUSY if the event is refused in that state (the API maps
 * that to FAILED_PRECONDITION), or -EINVAL for an out-of-range state or event. A valid no-op (start while
 * running) is {next = state, action = NONE}. */
int vm_state_transition(VmState state, VmEvent event, VmTransition *ret);

/* True where QEMU may be alive: STARTING, RUNNING, STOPPING. */
bool vm_state_has_process(VmState s);

/* What entering a state writes down, so that a restarted hydrad knows where things stood: the runtime record
 * (RUN_DIR/ROLE/runtime.json: the process to adopt) where there is a process, the state record
 * (STATE_DIR/ROLE/state.json: the last exit and error) in the resting states and while preparing. */
typedef enum VmRecord {
        VM_RECORD_NONE,
        VM_RECORD_RUNTIME,
        VM_RECORD_STATE,
        _VM_RECORD_MAX,
        _VM_RECORD_INVALID = -EINVAL,
} VmRecord;
VmRecord vm_state_record(VmState s);

/* True in the state whose guest services (readiness probes, the CRI socket) run: RUNNING. Entering it starts
 * them, leaving it stops them. */
bool vm_state_has_services(VmState s);
