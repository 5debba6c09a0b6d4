/* SPDX-License-Identifier: MIT */
#pragma once

#include "macro.h"

/* A failure a person will read: the negative errno plus context, in a fixed buffer so that error paths never
 * allocate (crun's libcrun_error_t idea). Functions that can fail in a user-visible way take a HydraError *
 * (which may be NULL) and return hydra_error_set(err, -errno, "what failed '%s'", name). */
typedef struct HydraError {
        int code;            /* negative errno; 0 when unset */
        char message[1024];
} HydraError;

/* Sets the error (if err is non-NULL) and returns code, which must be negative. */
int hydra_error_set(HydraError *err, int code, const char *fmt, ...) _printf_(3, 4);

/* Prefixes context to an error already set: "start 'isolated': " + old message. Returns err->code. */
int hydra_error_prefix(HydraError *err, const char *fmt, ...) _printf_(2, 3);

static inline void hydra_error_clear(HydraError *err) {
        if (err) {
                err->code = 0;
                err->message[0] = '\0';
        }
}
