/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "restart.h"

unsigned restart_deaths_in_window(const RestartTracker *t, uint32_t window_sec, uint64_t now_usec) {
        uint64_t window = (uint64_t) window_sec * 1000000ULL;
        unsigned n = 0;

        for (unsigned i = 0; i < t->n_deaths; i++)
                if (now_usec - t->deaths[i] <= window)
                        n++;
        return n;
}

/* Keeps the deaths that can still count: those within the window, and never more than the limit needs. */
static int record_death(RestartTracker *t, uint32_t window_sec, unsigned keep, uint64_t now_usec) {
        uint64_t window = (uint64_t) window_sec * 1000000ULL;
        unsigned first = 0;

        while (first < t->n_deaths && now_usec - t->deaths[first] > window)
                first++;
        if (t->n_deaths - first >= keep)
                first = t->n_deaths - (keep - 1);
        if (first > 0) {
                memmove(t->deaths, t->deaths + first, (t->n_deaths - first) * sizeof(uint64_t));
                t->n_deaths -= first;
        }
        if (!t->deaths) {
                t->deaths = calloc(RESTART_HISTORY_MAX, sizeof(uint64_t));
                if (!t->deaths)
                        return -ENOMEM;
        }
        t->deaths[t->n_deaths++] = now_usec;
        return 0;
}

RestartVerdict restart_decide(RestartTracker *t, RestartPolicy policy, uint32_t max_restarts,
                              uint32_t window_sec, bool failure, uint64_t now_usec, uint64_t up_usec,
                              uint64_t *ret_delay_usec) {
        unsigned keep;
        uint64_t delay;

        *ret_delay_usec = 0;
        if (policy == RESTART_NO || (policy == RESTART_ON_FAILURE && !failure))
                return RESTART_VERDICT_NONE;

        if (max_restarts == 0)
                max_restarts = SPEC_DEFAULT_MAX_RESTARTS;
        if (window_sec == 0)
                window_sec = SPEC_DEFAULT_RESTART_WINDOW_SEC;
        keep = max_restarts + 1 < RESTART_HISTORY_MAX ? max_restarts + 1 : RESTART_HISTORY_MAX;

        if (up_usec >= RESTART_STABLE_USEC)
                t->backoff_step = 0;
        if (record_death(t, window_sec, keep, now_usec) < 0)
                return RESTART_VERDICT_GIVE_UP;
        /* max_restarts restarts are allowed within the window: the death after them is one too many. */
        if (restart_deaths_in_window(t, window_sec, now_usec) > max_restarts)
                return RESTART_VERDICT_GIVE_UP;

        delay = t->backoff_step >= 6 ? RESTART_DELAY_MAX_USEC : RESTART_DELAY_MIN_USEC << t->backoff_step;
        *ret_delay_usec = delay < RESTART_DELAY_MAX_USEC ? delay : RESTART_DELAY_MAX_USEC;
        if (t->backoff_step < 6)
                t->backoff_step++;
        return RESTART_VERDICT_SCHEDULE;
}

void restart_tracker_reset(RestartTracker *t) {
        t->n_deaths = 0;
        t->backoff_step = 0;
}

void restart_tracker_done(RestartTracker *t) {
        t->deaths = mfree(t->deaths);
        restart_tracker_reset(t);
}
