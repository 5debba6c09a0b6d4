/* SPDX-License-Identifier: MIT */
#include <stdbool.h>

#include "macro.h"
#include "vm_state.h"

static const char *const vm_state_table[_VM_STATE_MAX] = {
        [VM_STATE_DEFINED] = "defined",   [VM_STATE_PREPARING] = "preparing", [VM_STATE_STARTING] = "starting",
        [VM_STATE_RUNNING] = "running",   [VM_STATE_STOPPING] = "stopping",   [VM_STATE_STOPPED] = "stopped",
        [VM_STATE_FAILED] = "failed",     [VM_STATE_CRASHED] = "crashed",
};
DEFINE_STRING_TABLE_LOOKUP(vm_state, VmState, _VM_STATE_MAX);

static const char *const vm_event_table[_VM_EVENT_MAX] = {
        [VM_EVENT_START] = "start",
        [VM_EVENT_PREPARED] = "prepared",
        [VM_EVENT_PREPARE_FAILED] = "prepare-failed",
        [VM_EVENT_LAUNCH_FAILED] = "launch-failed",
        [VM_EVENT_QMP_READY] = "qmp-ready",
        [VM_EVENT_QMP_FAILED] = "qmp-failed",
        [VM_EVENT_ADOPT] = "adopt",
        [VM_EVENT_ADOPT_FAILED] = "adopt-failed",
        [VM_EVENT_STOP] = "stop",
        [VM_EVENT_STOP_FORCE] = "stop-force",
        [VM_EVENT_EXIT_CLEAN] = "exit-clean",
        [VM_EVENT_EXIT_UNEXPECTED] = "exit-unexpected",
        [VM_EVENT_LOST] = "lost",
        [VM_EVENT_LOST_STOPPING] = "lost-stopping",
        [VM_EVENT_DESTROY] = "destroy",
        [VM_EVENT_READY_TIMEOUT] = "ready-timeout",
};
DEFINE_STRING_TABLE_LOOKUP(vm_event, VmEvent, _VM_EVENT_MAX);

static const char *const vm_action_table[_VM_ACTION_MAX] = {
        [VM_ACTION_NONE] = "none",     [VM_ACTION_PREPARE] = "prepare", [VM_ACTION_LAUNCH] = "launch",
        [VM_ACTION_STOP] = "stop",     [VM_ACTION_KILL] = "kill",       [VM_ACTION_CANCEL] = "cancel",
        [VM_ACTION_REAP] = "reap",     [VM_ACTION_ADOPT] = "adopt",     [VM_ACTION_REMOVE] = "remove",
};
DEFINE_STRING_TABLE_LOOKUP(vm_action, VmAction, _VM_ACTION_MAX);

/* A cell; the zero cell (allowed = false) is a refusal, so only accepted transitions are written below. */
typedef struct Cell {
        bool allowed;
        VmState next;
        VmAction action;
} Cell;

#define GO(n, a) { .allowed = true, .next = VM_STATE_##n, .action = VM_ACTION_##a }

/* The resting states (no process, nothing in flight): START prepares; STOP is a no-op rather than a refusal, so
 * that StopVm and DestroyVm are idempotent; a QEMU the previous hydrad left is adopted, or recorded as lost (the
 * runtime record goes); DESTROY forgets the VM. */
#define RESTING(s)                                               \
        [VM_STATE_##s] = {                                       \
                [VM_EVENT_START] = GO(PREPARING, PREPARE),       \
                [VM_EVENT_ADOPT] = GO(STARTING, ADOPT),          \
                [VM_EVENT_STOP] = GO(s, NONE),                   \
                [VM_EVENT_STOP_FORCE] = GO(s, NONE),             \
                [VM_EVENT_LOST] = GO(CRASHED, REAP),             \
                [VM_EVENT_LOST_STOPPING] = GO(STOPPED, REAP),    \
                [VM_EVENT_DESTROY] = GO(DEFINED, REMOVE),        \
        }

static const Cell table[_VM_STATE_MAX][_VM_EVENT_MAX] = {
        RESTING(DEFINED),
        [VM_STATE_PREPARING] = {
                [VM_EVENT_START] = GO(PREPARING, NONE),
                [VM_EVENT_PREPARED] = GO(STARTING, LAUNCH),
                [VM_EVENT_PREPARE_FAILED] = GO(FAILED, NONE),
                [VM_EVENT_STOP] = GO(STOPPED, CANCEL),
                [VM_EVENT_STOP_FORCE] = GO(STOPPED, CANCEL),
        },
        [VM_STATE_STARTING] = {
                [VM_EVENT_START] = GO(STARTING, NONE),
                [VM_EVENT_QMP_READY] = GO(RUNNING, NONE),
                /* Spawned (or adopted), but QEMU cannot be driven: the process must not outlive the failure. */
                [VM_EVENT_LAUNCH_FAILED] = GO(FAILED, KILL),
                [VM_EVENT_QMP_FAILED] = GO(FAILED, KILL),
                [VM_EVENT_ADOPT_FAILED] = GO(FAILED, KILL),
                [VM_EVENT_STOP] = GO(STOPPING, KILL),
                [VM_EVENT_STOP_FORCE] = GO(STOPPING, KILL),
                /* Any exit before QMP answered is a failed launch, even with status 0. */
                [VM_EVENT_EXIT_CLEAN] = GO(FAILED, REAP),
                [VM_EVENT_EXIT_UNEXPECTED] = GO(FAILED, REAP),
                /* An adopted QEMU that exits while hydrad reconnects: not a failed launch, and its status is
                 * unknown (not our child). */
                [VM_EVENT_LOST] = GO(CRASHED, REAP),
                [VM_EVENT_LOST_STOPPING] = GO(STOPPED, REAP),
                /* Not ready in time (QMP itself hung, or an adopted QEMU whose time was up): as a failed start. */
                [VM_EVENT_READY_TIMEOUT] = GO(FAILED, KILL),
        },
        [VM_STATE_RUNNING] = {
                [VM_EVENT_START] = GO(RUNNING, NONE),
                [VM_EVENT_STOP] = GO(STOPPING, STOP),
                [VM_EVENT_STOP_FORCE] = GO(STOPPING, KILL),
                [VM_EVENT_EXIT_CLEAN] = GO(STOPPED, REAP),
                [VM_EVENT_EXIT_UNEXPECTED] = GO(CRASHED, REAP),
                /* The guest never became ready: failed at once, and its QEMU must not outlive the failure (no ACPI
                 * step: a guest that did not boot will not power off). Its exit then changes nothing. */
                [VM_EVENT_READY_TIMEOUT] = GO(FAILED, KILL),
        },
        [VM_STATE_STOPPING] = {
                /* START is refused: the caller waits for the stop to finish. */
                [VM_EVENT_STOP] = GO(STOPPING, NONE),
                /* Escalates a graceful stop in progress. */
                [VM_EVENT_STOP_FORCE] = GO(STOPPING, KILL),
                /* We asked it to go: however it went, it is stopped. */
                [VM_EVENT_EXIT_CLEAN] = GO(STOPPED, REAP),
                [VM_EVENT_EXIT_UNEXPECTED] = GO(STOPPED, REAP),
        },
        RESTING(STOPPED),
        RESTING(FAILED),
        RESTING(CRASHED),
};

int vm_state_transition(VmState state, VmEvent event, VmTransition *ret) {
        const Cell *c;

        if ((int) state < 0 || state >= _VM_STATE_MAX || (int) event < 0 || event >= _VM_EVENT_MAX)
                return -EINVAL;

        c = &table[state][event];
        if (!c->allowed)
                return -EBUSY;

        if (ret)
                *ret = (VmTransition) { .next = c->next, .action = c->action };
        return 0;
}

bool vm_state_has_process(VmState s) {
        return s == VM_STATE_STARTING || s == VM_STATE_RUNNING || s == VM_STATE_STOPPING;
}

static const VmRecord record_table[_VM_STATE_MAX] = {
        [VM_STATE_DEFINED] = VM_RECORD_NONE,    [VM_STATE_PREPARING] = VM_RECORD_STATE,
        [VM_STATE_STARTING] = VM_RECORD_RUNTIME, [VM_STATE_RUNNING] = VM_RECORD_RUNTIME,
        [VM_STATE_STOPPING] = VM_RECORD_RUNTIME, [VM_STATE_STOPPED] = VM_RECORD_STATE,
        [VM_STATE_FAILED] = VM_RECORD_STATE,     [VM_STATE_CRASHED] = VM_RECORD_STATE,
};

VmRecord vm_state_record(VmState s) {
        if ((int) s < 0 || s >= _VM_STATE_MAX)
                return _VM_RECORD_INVALID;
        return record_table[s];
}

bool vm_state_has_services(VmState s) {
        return s == VM_STATE_RUNNING;
}
