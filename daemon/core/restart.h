/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "spec.h"

/* The restart policy as pure arithmetic: what to do after a death, given the policy, the deaths so far and how
 * long the VM was up. No clock is read here; times are CLOCK_MONOTONIC microseconds passed in. */

#define RESTART_DELAY_MIN_USEC (1ULL * 1000000ULL)
#define RESTART_DELAY_MAX_USEC (60ULL * 1000000ULL)
/* A VM that ran this long before dying starts the backoff again from RESTART_DELAY_MIN_USEC. */
#define RESTART_STABLE_USEC (5ULL * 60ULL * 1000000ULL)
/* More deaths than this are never remembered, whatever max_restarts says. */
#define RESTART_HISTORY_MAX 1001U

typedef enum RestartVerdict {
        RESTART_VERDICT_NONE,      /* the policy does not restart after this death */
        RESTART_VERDICT_SCHEDULE,  /* restart after *ret_delay_usec */
        RESTART_VERDICT_GIVE_UP,   /* too many deaths within the window */
} RestartVerdict;

typedef struct RestartTracker {
        uint64_t *deaths;          /* CLOCK_MONOTONIC usec, oldest first */
        unsigned n_deaths;
        unsigned backoff_step;     /* the next delay is RESTART_DELAY_MIN_USEC << backoff_step, capped */
} RestartTracker;

/* failure: the death was a crash (QEMU died, guest panic, a restart that failed to launch); false for a guest
 * that shut itself down. up_usec: how long the VM ran before this death (0 if it never ran).
 * Records the death, then decides. */
RestartVerdict restart_decide(RestartTracker *t, RestartPolicy policy, uint32_t max_restarts,
                              uint32_t window_sec, bool failure, uint64_t now_usec, uint64_t up_usec,
                              uint64_t *ret_delay_usec);

/* Deaths recorded within the window ending at now. */
unsigned restart_deaths_in_window(const RestartTracker *t, uint32_t window_sec, uint64_t now_usec);

/* Forgets every death and the backoff (a StopVm, a new spec). */
void restart_tracker_reset(RestartTracker *t);
void restart_tracker_done(RestartTracker *t);
