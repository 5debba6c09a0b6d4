/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "log.h"
#include "loopstat.h"

#define LOOPSTAT_PERIOD_USEC 1000ULL
#define LOOPSTAT_MAX_SAMPLES (1U << 20) /* about 17 minutes of ticks; past that only max and count go on */

struct LoopStat {
        sd_event *event;
        sd_event_source *timer;
        uint32_t *samples; /* lateness in microseconds */
        size_t n_samples, cap;
        uint64_t count, max_usec;
};

static int on_tick(sd_event_source *s, uint64_t usec, void *userdata) {
        LoopStat *st = userdata;
        uint64_t now = 0, late;

        (void) sd_event_now(st->event, CLOCK_MONOTONIC, &now);
        late = now > usec ? now - usec : 0;
        st->count++;
        if (late > st->max_usec)
                st->max_usec = late;
        if (st->n_samples == st->cap && st->cap < LOOPSTAT_MAX_SAMPLES) {
                size_t cap = st->cap ? st->cap * 2 : 4096;
                uint32_t *n = realloc(st->samples, cap * sizeof(*n));
                if (n) {
                        st->samples = n;
                        st->cap = cap;
                }
        }
        if (st->n_samples < st->cap)
                st->samples[st->n_samples++] = late > UINT32_MAX ? UINT32_MAX : (uint32_t) late;

        /* The next tick a period from now, not from when this one was due: a long stall counts once. */
        (void) sd_event_source_set_time(s, now + LOOPSTAT_PERIOD_USEC);
        return 0;
}

int loopstat_new(sd_event *e, LoopStat **ret) {
        _cleanup_(loopstat_freep) LoopStat *st = calloc(1, sizeof(*st));
        uint64_t now;
        int r;

        if (!st)
                return -ENOMEM;
        st->event = sd_event_ref(e);
        r = sd_event_now(e, CLOCK_MONOTONIC, &now);
        if (r < 0)
                return r;
        /* Accuracy 1 us: the default (250 ms) would let sd-event coalesce the wakeup and hide the stalls. */
        r = sd_event_add_time(e, &st->timer, CLOCK_MONOTONIC, now + LOOPSTAT_PERIOD_USEC, 1, on_tick, st);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(st->timer, SD_EVENT_ON);
        (void) sd_event_source_set_description(st->timer, "loop-stat");
        *ret = TAKE_PTR(st);
        return 0;
}

LoopStat *loopstat_free(LoopStat *st) {
        if (!st)
                return NULL;
        st->timer = sd_event_source_disable_unref(st->timer);
        st->event = sd_event_unref(st->event);
        free(st->samples);
        free(st);
        return NULL;
}

static int cmp_u32(const void *a, const void *b) {
        uint32_t x = *(const uint32_t *) a, y = *(const uint32_t *) b;
        return x < y ? -1 : x > y;
}

void loopstat_report(LoopStat *st, const char *label) {
        uint32_t p50 = 0, p99 = 0;

        if (!st)
                return;
        /* Sorting up to a million samples takes a few ms on the loop; this is a developer's tool, asked for. */
        if (st->n_samples > 0) {
                qsort(st->samples, st->n_samples, sizeof(*st->samples), cmp_u32);
                p50 = st->samples[st->n_samples / 2];
                p99 = st->samples[st->n_samples * 99 / 100];
        }
        log_info("loop lag [%s]: %llu ticks, p50 %u us, p99 %u us, max %llu us", label,
                 (unsigned long long) st->count, p50, p99, (unsigned long long) st->max_usec);
        st->n_samples = 0;
        st->count = st->max_usec = 0;
}
