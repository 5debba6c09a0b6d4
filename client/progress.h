/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdio.h>

#include "hydra/v1/hydra.pb-c.h"
#include "macro.h"

/* How `hydractl start` shows a preparation (Event.progress, Event.notice) on stderr. */
typedef enum ProgressMode {
        PROGRESS_NONE,  /* --json: nothing but the final result */
        PROGRESS_BAR,   /* a terminal: one line redrawn in place, at most about 10 times a second */
        PROGRESS_LINES, /* a pipe or a file: a line when the step changes and about every 10% */
} ProgressMode;

typedef struct ProgressDisplay ProgressDisplay;

/* PROGRESS_BAR when f is a terminal, else PROGRESS_LINES; PROGRESS_NONE with json. */
ProgressMode progress_mode_for(FILE *f, bool json);

/* role names the VM in the lines ("isolated"). Returns NULL on OOM. */
ProgressDisplay *progress_display_new(FILE *f, ProgressMode mode, const char *role);
/* Erases the bar, if one is shown. Accepts NULL; returns NULL. */
ProgressDisplay *progress_display_free(ProgressDisplay *d);
DEFINE_TRIVIAL_CLEANUP_FUNC(ProgressDisplay *, progress_display_free);

void progress_display_update(ProgressDisplay *d, const Hydra__V1__Progress *p);
void progress_display_notice(ProgressDisplay *d, const char *message);
/* Draws what a rate-limited update held back. Call a few times a second. */
void progress_display_tick(ProgressDisplay *d);
