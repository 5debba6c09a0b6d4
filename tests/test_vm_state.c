/* SPDX-License-Identifier: MIT */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vm_state.h"

/* The expected table, written out by hand from the design (not derived from vm_state.c): one row per state in
 * enum order, one column per event in enum order; "next/action", or "-" for a refused event (-EBUSY). */
static const char *const expected_states[] = {
        "defined", "preparing", "starting", "running", "stopping", "stopped", "failed", "crashed",
};
static const char *const expected_events[] = {
        "start",     "prepared", "prepare-failed", "launch-failed", "qmp-ready",       "qmp-failed",
        "adopt",     "adopt-failed", "stop",       "stop-force",    "exit-clean",      "exit-unexpected",
        "lost",      "lost-stopping", "destroy",    "ready-timeout",
};
static const char *const expected_actions[] = {
        "none", "prepare", "launch", "stop", "kill", "cancel", "reap", "adopt", "remove",
};

#define N_STATES 8
#define N_EVENTS 16

/* A resting state (no process, nothing in flight) S: start prepares, stop is a no-op, a QEMU the previous hydrad
 * left is adopted or recorded lost, destroy forgets the VM. */
#define RESTING(S)                                                                                          \
        { "preparing/prepare", "-", "-", "-", "-", "-", "starting/adopt", "-", S "/none", S "/none", "-", "-", \
          "crashed/reap", "stopped/reap", "defined/remove", "-" }

static const char *const expected[N_STATES][N_EVENTS] = {
        /* columns: start, prepared, prepare-failed, launch-failed, qmp-ready, qmp-failed, adopt, adopt-failed,
         *          stop, stop-force, exit-clean, exit-unexpected, lost, lost-stopping, destroy, ready-timeout */
        /* defined */
        RESTING("defined"),
        /* preparing */
        { "preparing/none", "starting/launch", "failed/none", "-", "-", "-", "-", "-", "stopped/cancel",
          "stopped/cancel", "-", "-", "-", "-", "-", "-" },
        /* starting (spawned or being adopted) */
        { "starting/none", "-", "-", "failed/kill", "running/none", "failed/kill", "-", "failed/kill",
          "stopping/kill", "stopping/kill", "failed/reap", "failed/reap", "crashed/reap", "stopped/reap", "-",
          "failed/kill" },
        /* running */
        { "running/none", "-", "-", "-", "-", "-", "-", "-", "stopping/stop", "stopping/kill", "stopped/reap",
          "crashed/reap", "-", "-", "-", "failed/kill" },
        /* stopping */
        { "-", "-", "-", "-", "-", "-", "-", "-", "stopping/none", "stopping/kill", "stopped/reap", "stopped/reap",
          "-", "-", "-", "-" },
        /* stopped */
        RESTING("stopped"),
        /* failed */
        RESTING("failed"),
        /* crashed */
        RESTING("crashed"),
};

/* One test per cell (a loop test: _i is the cell number), so that a wrong cell names itself. */
START_TEST(test_cell) {
        VmState s = (VmState) (_i / _VM_EVENT_MAX);
        VmEvent e = (VmEvent) (_i % _VM_EVENT_MAX);
        VmTransition t = { .next = _VM_STATE_INVALID, .action = _VM_ACTION_INVALID };
        const char *want = expected[s][e];
        char got[64];
        int r;

        r = vm_state_transition(s, e, &t);
        if (strcmp(want, "-") == 0) {
                ck_assert_msg(r == -EBUSY, "%s + %s: expected refusal (-EBUSY), got %d (%s/%s)", expected_states[s],
                              expected_events[e], r, vm_state_to_string(t.next), vm_action_to_string(t.action));
                /* A refusal leaves *ret alone. */
                ck_assert_int_eq(t.next, _VM_STATE_INVALID);
                ck_assert_int_eq(t.action, _VM_ACTION_INVALID);
                return;
        }

        ck_assert_msg(r == 0, "%s + %s: expected %s, got %d", expected_states[s], expected_events[e], want, r);
        snprintf(got, sizeof(got), "%s/%s", vm_state_to_string(t.next), vm_action_to_string(t.action));
        ck_assert_msg(strcmp(got, want) == 0, "%s + %s: expected %s, got %s", expected_states[s], expected_events[e],
                      want, got);
}
END_TEST

START_TEST(test_table_size) {
        /* If a state or event is added, the expected table above must grow with it. */
        ck_assert_int_eq(_VM_STATE_MAX, N_STATES);
        ck_assert_int_eq(_VM_EVENT_MAX, N_EVENTS);
        ck_assert_int_eq(_VM_ACTION_MAX, 9);
}
END_TEST

START_TEST(test_transition_out_of_range) {
        VmTransition t;

        ck_assert_int_eq(vm_state_transition(_VM_STATE_MAX, VM_EVENT_START, &t), -EINVAL);
        ck_assert_int_eq(vm_state_transition((VmState) -1, VM_EVENT_START, &t), -EINVAL);
        ck_assert_int_eq(vm_state_transition(VM_STATE_RUNNING, _VM_EVENT_MAX, &t), -EINVAL);
        ck_assert_int_eq(vm_state_transition(VM_STATE_RUNNING, (VmEvent) -1, &t), -EINVAL);
        ck_assert_int_eq(vm_state_transition(_VM_STATE_INVALID, _VM_EVENT_INVALID, &t), -EINVAL);
        /* ret may be NULL: the caller only asks whether the event is accepted. */
        ck_assert_int_eq(vm_state_transition(VM_STATE_RUNNING, VM_EVENT_STOP, NULL), 0);
        ck_assert_int_eq(vm_state_transition(VM_STATE_STOPPING, VM_EVENT_START, NULL), -EBUSY);
}
END_TEST

START_TEST(test_has_process) {
        static const bool want[] = { false, false, true, true, true, false, false, false };

        for (int s = 0; s < _VM_STATE_MAX; s++)
                ck_assert_msg(vm_state_has_process((VmState) s) == want[s], "has_process(%s)", expected_states[s]);
        ck_assert(!vm_state_has_process(_VM_STATE_MAX));
        ck_assert(!vm_state_has_process(_VM_STATE_INVALID));
}
END_TEST

START_TEST(test_records_services) {
        /* What entering each state writes down, and where the guest services run. */
        static const VmRecord want_record[N_STATES] = {
                VM_RECORD_NONE,    VM_RECORD_STATE,   VM_RECORD_RUNTIME, VM_RECORD_RUNTIME,
                VM_RECORD_RUNTIME, VM_RECORD_STATE,   VM_RECORD_STATE,   VM_RECORD_STATE,
        };
        static const bool want_services[N_STATES] = { false, false, false, true, false, false, false, false };

        for (int s = 0; s < N_STATES; s++) {
                ck_assert_msg(vm_state_record((VmState) s) == want_record[s], "record(%s)", expected_states[s]);
                ck_assert_msg(vm_state_has_services((VmState) s) == want_services[s], "services(%s)",
                              expected_states[s]);
                /* A state with a process records the process; one without never does. */
                ck_assert_int_eq(vm_state_has_process((VmState) s), want_record[s] == VM_RECORD_RUNTIME);
        }
        ck_assert_int_eq(vm_state_record(_VM_STATE_MAX), _VM_RECORD_INVALID);
        ck_assert_int_eq(vm_state_record(_VM_STATE_INVALID), _VM_RECORD_INVALID);
        ck_assert(!vm_state_has_services(_VM_STATE_MAX));
}
END_TEST

/* The lives of an adopted QEMU and of a destroyed VM, through the table only. */
START_TEST(test_adopt_destroy_walk) {
        static const struct {
                VmState from;
                VmEvent event;
                VmState next;
                VmAction action;
        } steps[] = {
                /* adopted, answers, later stopped and destroyed */
                { VM_STATE_STOPPED, VM_EVENT_ADOPT, VM_STATE_STARTING, VM_ACTION_ADOPT },
                { VM_STATE_STARTING, VM_EVENT_QMP_READY, VM_STATE_RUNNING, VM_ACTION_NONE },
                { VM_STATE_RUNNING, VM_EVENT_STOP, VM_STATE_STOPPING, VM_ACTION_STOP },
                { VM_STATE_STOPPING, VM_EVENT_EXIT_UNEXPECTED, VM_STATE_STOPPED, VM_ACTION_REAP },
                { VM_STATE_STOPPED, VM_EVENT_DESTROY, VM_STATE_DEFINED, VM_ACTION_REMOVE },
                /* adopted, QMP unreachable: killed, failed */
                { VM_STATE_DEFINED, VM_EVENT_ADOPT, VM_STATE_STARTING, VM_ACTION_ADOPT },
                { VM_STATE_STARTING, VM_EVENT_ADOPT_FAILED, VM_STATE_FAILED, VM_ACTION_KILL },
                /* adopted, gone during the reconnection: lost, or the stop it was in is over */
                { VM_STATE_FAILED, VM_EVENT_ADOPT, VM_STATE_STARTING, VM_ACTION_ADOPT },
                { VM_STATE_STARTING, VM_EVENT_LOST, VM_STATE_CRASHED, VM_ACTION_REAP },
                { VM_STATE_CRASHED, VM_EVENT_ADOPT, VM_STATE_STARTING, VM_ACTION_ADOPT },
                { VM_STATE_STARTING, VM_EVENT_LOST_STOPPING, VM_STATE_STOPPED, VM_ACTION_REAP },
                /* recorded, but gone before hydrad came back */
                { VM_STATE_DEFINED, VM_EVENT_LOST, VM_STATE_CRASHED, VM_ACTION_REAP },
                { VM_STATE_CRASHED, VM_EVENT_DESTROY, VM_STATE_DEFINED, VM_ACTION_REMOVE },
        };

        for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
                VmTransition t;

                ck_assert_int_eq(vm_state_transition(steps[i].from, steps[i].event, &t), 0);
                ck_assert_int_eq(t.next, steps[i].next);
                ck_assert_int_eq(t.action, steps[i].action);
        }
        /* Nothing is destroyed or adopted from under a process or a preparation. */
        for (VmState s = 0; s < _VM_STATE_MAX; s++)
                if (vm_state_has_process(s) || s == VM_STATE_PREPARING) {
                        ck_assert_int_eq(vm_state_transition(s, VM_EVENT_DESTROY, NULL), -EBUSY);
                        ck_assert_int_eq(vm_state_transition(s, VM_EVENT_ADOPT, NULL), -EBUSY);
                }
}
END_TEST

/* A guest that never becomes ready within supervision.ready_timeout: failed with its QEMU killed, from starting
 * or running, never from a state where nothing runs or a stop is already under way; its exit then changes no
 * state (the table refuses exits in failed), and the restart policy's start prepares again. */
START_TEST(test_ready_timeout_walk) {
        static const struct {
                VmState from;
                VmEvent event;
                VmState next;
                VmAction action;
        } steps[] = {
                { VM_STATE_STOPPED, VM_EVENT_START, VM_STATE_PREPARING, VM_ACTION_PREPARE },
                { VM_STATE_PREPARING, VM_EVENT_PREPARED, VM_STATE_STARTING, VM_ACTION_LAUNCH },
                { VM_STATE_STARTING, VM_EVENT_QMP_READY, VM_STATE_RUNNING, VM_ACTION_NONE },
                { VM_STATE_RUNNING, VM_EVENT_READY_TIMEOUT, VM_STATE_FAILED, VM_ACTION_KILL },
                { VM_STATE_FAILED, VM_EVENT_START, VM_STATE_PREPARING, VM_ACTION_PREPARE },
                { VM_STATE_PREPARING, VM_EVENT_PREPARED, VM_STATE_STARTING, VM_ACTION_LAUNCH },
                { VM_STATE_STARTING, VM_EVENT_READY_TIMEOUT, VM_STATE_FAILED, VM_ACTION_KILL },
        };

        for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
                VmTransition t;

                ck_assert_int_eq(vm_state_transition(steps[i].from, steps[i].event, &t), 0);
                ck_assert_int_eq(t.next, steps[i].next);
                ck_assert_int_eq(t.action, steps[i].action);
        }
        ck_assert_int_eq(vm_state_transition(VM_STATE_FAILED, VM_EVENT_EXIT_UNEXPECTED, NULL), -EBUSY);
        ck_assert_int_eq(vm_state_transition(VM_STATE_FAILED, VM_EVENT_EXIT_CLEAN, NULL), -EBUSY);
        for (VmState s = 0; s < _VM_STATE_MAX; s++)
                if (s != VM_STATE_STARTING && s != VM_STATE_RUNNING)
                        ck_assert_int_eq(vm_state_transition(s, VM_EVENT_READY_TIMEOUT, NULL), -EBUSY);
}
END_TEST

START_TEST(test_state_strings) {
        for (int i = 0; i < _VM_STATE_MAX; i++) {
                ck_assert_str_eq(vm_state_to_string((VmState) i), expected_states[i]);
                ck_assert_int_eq(vm_state_from_string(expected_states[i]), i);
        }
        ck_assert_ptr_null(vm_state_to_string(_VM_STATE_MAX));
        ck_assert_ptr_null(vm_state_to_string(_VM_STATE_INVALID));
        ck_assert_int_eq(vm_state_from_string("RUNNING"), -EINVAL);
        ck_assert_int_eq(vm_state_from_string(""), -EINVAL);
        ck_assert_int_eq(vm_state_from_string("runnin"), -EINVAL);
        ck_assert_int_eq(vm_state_from_string(NULL), -EINVAL);
}
END_TEST

START_TEST(test_event_action_strings) {
        for (int i = 0; i < _VM_EVENT_MAX; i++)
                ck_assert_str_eq(vm_event_to_string((VmEvent) i), expected_events[i]);
        ck_assert_ptr_null(vm_event_to_string(_VM_EVENT_MAX));
        ck_assert_ptr_null(vm_event_to_string(_VM_EVENT_INVALID));

        for (int i = 0; i < _VM_ACTION_MAX; i++)
                ck_assert_str_eq(vm_action_to_string((VmAction) i), expected_actions[i]);
        ck_assert_ptr_null(vm_action_to_string(_VM_ACTION_MAX));
        ck_assert_ptr_null(vm_action_to_string(_VM_ACTION_INVALID));
}
END_TEST

/* Walks the life the daemon expects, through the table only. */
START_TEST(test_lifecycle_walk) {
        static const struct {
                VmEvent event;
                VmState next;
                VmAction action;
        } steps[] = {
                { VM_EVENT_START, VM_STATE_PREPARING, VM_ACTION_PREPARE },
                { VM_EVENT_PREPARED, VM_STATE_STARTING, VM_ACTION_LAUNCH },
                { VM_EVENT_QMP_READY, VM_STATE_RUNNING, VM_ACTION_NONE },
                { VM_EVENT_STOP, VM_STATE_STOPPING, VM_ACTION_STOP },
                { VM_EVENT_STOP_FORCE, VM_STATE_STOPPING, VM_ACTION_KILL },
                { VM_EVENT_EXIT_CLEAN, VM_STATE_STOPPED, VM_ACTION_REAP },
                { VM_EVENT_START, VM_STATE_PREPARING, VM_ACTION_PREPARE },
                { VM_EVENT_PREPARED, VM_STATE_STARTING, VM_ACTION_LAUNCH },
                { VM_EVENT_QMP_READY, VM_STATE_RUNNING, VM_ACTION_NONE },
                { VM_EVENT_EXIT_UNEXPECTED, VM_STATE_CRASHED, VM_ACTION_REAP },
                { VM_EVENT_START, VM_STATE_PREPARING, VM_ACTION_PREPARE },
                { VM_EVENT_PREPARE_FAILED, VM_STATE_FAILED, VM_ACTION_NONE },
        };
        VmState s = VM_STATE_DEFINED;

        for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
                VmTransition t;

                ck_assert_int_eq(vm_state_transition(s, steps[i].event, &t), 0);
                ck_assert_int_eq(t.next, steps[i].next);
                ck_assert_int_eq(t.action, steps[i].action);
                s = t.next;
        }
}
END_TEST

static Suite *vm_state_suite(void) {
        Suite *s = suite_create("vm_state");
        TCase *tc;

        tc = tcase_create("table");
        tcase_add_test(tc, test_table_size);
        tcase_add_loop_test(tc, test_cell, 0, N_STATES * N_EVENTS);
        tcase_add_test(tc, test_transition_out_of_range);
        tcase_add_test(tc, test_has_process);
        tcase_add_test(tc, test_lifecycle_walk);
        tcase_add_test(tc, test_records_services);
        tcase_add_test(tc, test_adopt_destroy_walk);
        tcase_add_test(tc, test_ready_timeout_walk);
        suite_add_tcase(s, tc);

        tc = tcase_create("strings");
        tcase_add_test(tc, test_state_strings);
        tcase_add_test(tc, test_event_action_strings);
        suite_add_tcase(s, tc);

        return s;
}

int main(void) {
        SRunner *sr = srunner_create(vm_state_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
