/* SPDX-License-Identifier: MIT */
#pragma once

#include <stddef.h>
#include <systemd/sd-event.h>

#include "error.h"

/* Runs a helper program (qemu-img, genisoimage, cp) as a child watched by the loop: its exit through a pidfd,
 * its stdout and stderr through pipes. Nothing waits. */

typedef struct Child Child;

typedef struct ChildResult {
        int code;                  /* exit status, or -1 when killed by a signal */
        int signal;                /* the signal, or 0 */
        const char *out;           /* stdout, NUL-terminated (at most 1 MiB kept) */
        size_t out_len;
        const char *err_tail;      /* the last 4 KiB of stderr, NUL-terminated, trailing newline removed */
} ChildResult;

/* Called once on the loop after the process exited and both pipes reached EOF. The Child is freed after the
 * callback returns. */
typedef void (*child_done_t)(Child *c, const ChildResult *res, void *userdata);

/* argv[0] is resolved against $PATH. Returns 0, or a negative errno with err naming the program. */
int child_run(sd_event *event, char *const *argv, child_done_t done, void *userdata, Child **ret, HydraError *err);

/* Kills the process (SIGKILL), reaps it and frees the Child: no callback. */
void child_cancel(Child *c);

/* "qemu-img exited with status 1: qemu-img: Could not open 'x': No such file" (or "killed by signal 9"). */
void child_describe_failure(const char *what, const ChildResult *res, HydraError *err);
