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
        VM_EVENT_START,            /* StartVm */
        VM_EVENT_PREPARED,         /* preparation finished */
        VM_EVENT_PREPARE_FAILED,   /* preparation or spawn failed */
        VM_EVENT_QMP_READY,        /* QMP handshake done */
        VM_EVENT_STOP,             /* StopVm, graceful */
        VM_EVENT_STOP_FORCE,       /* StopVm --force, DestroyVm */
        VM_EVENT_EXIT_CLEAN,       /* QEMU exited and we expected it (guest shutdown seen, or we asked) */
        VM_EVENT_EXIT_UNEXPECTED,  /* QEMU exited and nobody asked */
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
