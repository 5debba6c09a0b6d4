/* SPDX-License-Identifier: MIT */
#include <check.h>
#include <stdint.h>

#include "restart.h"

#define SEC 1000000ULL

static RestartVerdict decide(RestartTracker *t, RestartPolicy p, bool failure, uint64_t now, uint64_t up,
                             uint64_t *delay) {
        return restart_decide(t, p, 5, 600, failure, now, up, delay);
}

START_TEST(test_policy_no) {
        RestartTracker t = {};
        uint64_t d = 123;

        ck_assert_int_eq(decide(&t, RESTART_NO, true, 1000 * SEC, 10 * SEC, &d), RESTART_VERDICT_NONE);
        ck_assert_uint_eq(d, 0);
        ck_assert_uint_eq(t.n_deaths, 0);
        restart_tracker_done(&t);
}
END_TEST

START_TEST(test_on_failure_ignores_clean_exit) {
        RestartTracker t = {};
        uint64_t d;

        ck_assert_int_eq(decide(&t, RESTART_ON_FAILURE, false, 1000 * SEC, 10 * SEC, &d), RESTART_VERDICT_NONE);
        ck_assert_int_eq(decide(&t, RESTART_ON_FAILURE, true, 1001 * SEC, 10 * SEC, &d), RESTART_VERDICT_SCHEDULE);
        ck_assert_uint_eq(d, 1 * SEC);
        /* always restarts a guest that shut itself down too */
        ck_assert_int_eq(decide(&t, RESTART_ALWAYS, false, 1002 * SEC, 10 * SEC, &d), RESTART_VERDICT_SCHEDULE);
        ck_assert_uint_eq(d, 2 * SEC);
        restart_tracker_done(&t);
}
END_TEST

/* 1 s doubling to 60 s: 1 2 4 8 16 32 60 60. Deaths spaced wider than the window so the limit never hits. */
START_TEST(test_backoff_doubles_to_cap) {
        static const uint64_t want[] = { 1, 2, 4, 8, 16, 32, 60, 60, 60 };
        RestartTracker t = {};
        uint64_t now = 1000 * SEC, d;

        for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
                now += 601 * SEC;
                ck_assert_int_eq(decide(&t, RESTART_ALWAYS, true, now, 1 * SEC, &d), RESTART_VERDICT_SCHEDULE);
                ck_assert_uint_eq(d, want[i] * SEC);
        }
        restart_tracker_done(&t);
}
END_TEST

START_TEST(test_backoff_resets_after_stable_run) {
        RestartTracker t = {};
        uint64_t d;

        ck_assert_int_eq(decide(&t, RESTART_ON_FAILURE, true, 100 * SEC, 1 * SEC, &d), RESTART_VERDICT_SCHEDULE);
        ck_assert_int_eq(decide(&t, RESTART_ON_FAILURE, true, 102 * SEC, 1 * SEC, &d), RESTART_VERDICT_SCHEDULE);
        ck_assert_int_eq(decide(&t, RESTART_ON_FAILURE, true, 106 * SEC, 1 * SEC, &d), RESTART_VERDICT_SCHEDULE);
        ck_assert_uint_eq(d, 4 * SEC);
        /* up 5 minutes: back to 1 s */
        ck_assert_int_eq(decide(&t, RESTART_ON_FAILURE, true, 410 * SEC, RESTART_STABLE_USEC, &d),
                         RESTART_VERDICT_SCHEDULE);
        ck_assert_uint_eq(d, 1 * SEC);
        /* just under 5 minutes: the backoff goes on */
        ck_assert_int_eq(decide(&t, RESTART_ON_FAILURE, true, 710 * SEC, RESTART_STABLE_USEC - 1, &d),
                         RESTART_VERDICT_SCHEDULE);
        ck_assert_uint_eq(d, 2 * SEC);
        restart_tracker_done(&t);
}
END_TEST

/* max_restarts 5 within 600 s: the sixth death within the window gives up. */
START_TEST(test_give_up_in_window) {
        RestartTracker t = {};
        uint64_t now = 5000 * SEC, d;

        for (int i = 0; i < 5; i++) {
                now += 10 * SEC;
                ck_assert_int_eq(decide(&t, RESTART_ON_FAILURE, true, now, 1 * SEC, &d), RESTART_VERDICT_SCHEDULE);
        }
        ck_assert_uint_eq(restart_deaths_in_window(&t, 600, now), 5);
        ck_assert_int_eq(decide(&t, RESTART_ON_FAILURE, true, now + 10 * SEC, 1 * SEC, &d), RESTART_VERDICT_GIVE_UP);
        ck_assert_uint_eq(d, 0);
        restart_tracker_done(&t);
}
END_TEST

/* Deaths that fall out of the window no longer count. */
START_TEST(test_window_slides) {
        RestartTracker t = {};
        uint64_t d;

        for (int i = 0; i < 5; i++)
                ck_assert_int_eq(restart_decide(&t, RESTART_ALWAYS, 5, 60, true, (100 + i) * SEC, 0, &d),
                                 RESTART_VERDICT_SCHEDULE);
        /* 61 s after the first: the first is out, 5 in the window including this one */
        ck_assert_int_eq(restart_decide(&t, RESTART_ALWAYS, 5, 60, true, 161 * SEC, 0, &d),
                         RESTART_VERDICT_SCHEDULE);
        ck_assert_uint_eq(restart_deaths_in_window(&t, 60, 161 * SEC), 5);
        /* one more at the same moment: the death at 101 s is exactly 60 s old and still counts: 6 */
        ck_assert_int_eq(restart_decide(&t, RESTART_ALWAYS, 5, 60, true, 161 * SEC, 0, &d),
                         RESTART_VERDICT_GIVE_UP);
        restart_tracker_done(&t);
}
END_TEST

/* Memory is bounded by max_restarts, not by how often the VM died. */
START_TEST(test_history_bounded) {
        RestartTracker t = {};
        uint64_t d;

        for (unsigned i = 0; i < 10000; i++)
                (void) restart_decide(&t, RESTART_ALWAYS, 3, 1, true, (uint64_t) i * 2 * SEC, 0, &d);
        ck_assert_uint_le(t.n_deaths, 4);
        restart_tracker_reset(&t);
        ck_assert_uint_eq(t.n_deaths, 0);
        ck_assert_int_eq(restart_decide(&t, RESTART_ALWAYS, 3, 1, true, 1, 0, &d), RESTART_VERDICT_SCHEDULE);
        ck_assert_uint_eq(d, 1 * SEC);
        restart_tracker_done(&t);
}
END_TEST

int main(void) {
        Suite *s = suite_create("restart");
        TCase *tc = tcase_create("core");
        SRunner *sr;
        int failed;

        tcase_add_test(tc, test_policy_no);
        tcase_add_test(tc, test_on_failure_ignores_clean_exit);
        tcase_add_test(tc, test_backoff_doubles_to_cap);
        tcase_add_test(tc, test_backoff_resets_after_stable_run);
        tcase_add_test(tc, test_give_up_in_window);
        tcase_add_test(tc, test_window_slides);
        tcase_add_test(tc, test_history_bounded);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? 0 : 1;
}
