/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-event.h>

#include "macro.h"

/* How long the loop is kept busy: a timer due every millisecond fires late by as long as some other handler (or a
 * blocking call in one) held the loop. A developer's instrument for finding the loop's stalls (bench/bench_loop.py
 * reads it), switched on with HYDRA_LOOP_STATS=1 in hydrad's environment; off by default, since it wakes the loop
 * a thousand times a second. Each SIGUSR2 logs the lateness seen since the previous report (count, p50, p99, max)
 * and starts over. */

typedef struct LoopStat LoopStat;

/* Returns 0 with *ret set, or a negative errno. */
int loopstat_new(sd_event *e, LoopStat **ret);
LoopStat *loopstat_free(LoopStat *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(LoopStat *, loopstat_free);

/* Logs "loop lag: ..." at info level with label, and resets. */
void loopstat_report(LoopStat *s, const char *label);
