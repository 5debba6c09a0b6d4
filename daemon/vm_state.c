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
        [VM_EVENT_QMP_READY] = "qmp-ready",
        [VM_EVENT_STOP] = "stop",
        [VM_EVENT_STOP_FORCE] = "stop-force",
        [VM_EVENT_EXIT_CLEAN] = "exit-clean",
        [VM_EVENT_EXIT_UNEXPECTED] = "exit-unexpected",
};
DEFINE_STRING_TABLE_LOOKUP(vm_event, VmEvent, _VM_EVENT_MAX);

static const char *const vm_action_table[_VM_ACTION_MAX] = {
        [VM_ACTION_NONE] = "none",     [VM_ACTION_PREPARE] = "prepare", [VM_ACTION_LAUNCH] = "launch",
        [VM_ACTION_STOP] = "stop",     [VM_ACTION_KILL] = "kill",       [VM_ACTION_CANCEL] = "cancel",
        [VM_ACTION_REAP] = "reap",
};
DEFINE_STRING_TABLE_LOOKUP(vm_action, VmAction, _VM_ACTION_MAX);

/* A cell; the zero cell (allowed = false) is a refusal, so only accepted transitions are written below. */
typedef struct Cell {
        bool allowed;
        VmState next;
        VmAction action;
} Cell;

#define GO(n, a) { .allowed = true, .next = VM_STATE_##n, .action = VM_ACTION_##a }

/* Stopping and starting from the resting states: STOP there is a no-op rather than a refusal, so that StopVm and
 * DestroyVm are idempotent. */
#define RESTING(s)                                               \
        [VM_STATE_##s] = {                                       \
                [VM_EVENT_START] = GO(PREPARING, PREPARE),       \
                [VM_EVENT_STOP] = GO(s, NONE),                   \
                [VM_EVENT_STOP_FORCE] = GO(s, NONE),             \
        }

static const Cell table[_VM_STATE_MAX][_VM_EVENT_MAX] = {
        [VM_STATE_DEFINED] = {
                [VM_EVENT_START] = GO(PREPARING, PREPARE),
                [VM_EVENT_STOP] = GO(DEFINED, NONE),
                [VM_EVENT_STOP_FORCE] = GO(DEFINED, NONE),
        },
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
                /* Spawned, but the QMP handshake failed: the process must not outlive the failure. */
                [VM_EVENT_PREPARE_FAILED] = GO(FAILED, KILL),
                [VM_EVENT_STOP] = GO(STOPPING, KILL),
                [VM_EVENT_STOP_FORCE] = GO(STOPPING, KILL),
                /* Any exit before QMP answered is a failed launch, even with status 0. */
                [VM_EVENT_EXIT_CLEAN] = GO(FAILED, REAP),
                [VM_EVENT_EXIT_UNEXPECTED] = GO(FAILED, REAP),
        },
        [VM_STATE_RUNNING] = {
                [VM_EVENT_START] = GO(RUNNING, NONE),
                [VM_EVENT_STOP] = GO(STOPPING, STOP),
                [VM_EVENT_STOP_FORCE] = GO(STOPPING, KILL),
                [VM_EVENT_EXIT_CLEAN] = GO(STOPPED, REAP),
                [VM_EVENT_EXIT_UNEXPECTED] = GO(CRASHED, REAP),
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
