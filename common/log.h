/* SPDX-License-Identifier: MIT */
#pragma once

#include <syslog.h>

#include "macro.h"

/* Levels are syslog's: LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG. Under systemd ($JOURNAL_STREAM names our
 * stderr) lines go to the journal with PRIORITY= and, where given, VM= and HYDRA_STATE= (a VM's new state:
 * `journalctl -u hydrad VM=isolated HYDRA_STATE=crashed`); otherwise plain lines on stderr.
 * Thread-safe: gRPC's log callback calls in from its own threads. */

void log_set_max_level(int level);
int log_get_max_level(void);
int log_level_from_string(const char *s); /* "error", "warning", "info", "debug"; -EINVAL otherwise */
void log_open(void);                      /* decides journal vs stderr */

/* Returns -abs(error) so that callers can `return log_error_errno(r, "...: %m")`; %m prints strerror(error). */
int log_internal(int level, int error, const char *vm, const char *state, const char *file, int line, const char *fmt,
                 ...) _printf_(7, 8);

#define log_full_errno(level, error, ...) log_internal(level, error, NULL, NULL, __FILE__, __LINE__, __VA_ARGS__)
#define log_full(level, ...) (void) log_full_errno(level, 0, __VA_ARGS__)

#define log_debug(...) log_full(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_full(LOG_INFO, __VA_ARGS__)
#define log_notice(...) log_full(LOG_NOTICE, __VA_ARGS__)
#define log_warning(...) log_full(LOG_WARNING, __VA_ARGS__)
#define log_error(...) log_full(LOG_ERR, __VA_ARGS__)

#define log_debug_errno(e, ...) log_full_errno(LOG_DEBUG, e, __VA_ARGS__)
#define log_info_errno(e, ...) log_full_errno(LOG_INFO, e, __VA_ARGS__)
#define log_warning_errno(e, ...) log_full_errno(LOG_WARNING, e, __VA_ARGS__)
#define log_error_errno(e, ...) log_full_errno(LOG_ERR, e, __VA_ARGS__)

/* Per-VM variants: the journal gets VM=role; stderr lines are prefixed with nothing extra (messages quote the VM). */
#define log_vm_full_errno(level, vm, error, ...) log_internal(level, error, vm, NULL, __FILE__, __LINE__, __VA_ARGS__)
/* A VM's state change: the journal gets HYDRA_STATE=state too. level: LOG_INFO, or worse for failed and crashed. */
#define log_vm_state(level, vm, state, ...) (void) log_internal(level, 0, vm, state, __FILE__, __LINE__, __VA_ARGS__)
#define log_vm_debug(vm, ...) (void) log_vm_full_errno(LOG_DEBUG, vm, 0, __VA_ARGS__)
#define log_vm_info(vm, ...) (void) log_vm_full_errno(LOG_INFO, vm, 0, __VA_ARGS__)
#define log_vm_warning(vm, ...) (void) log_vm_full_errno(LOG_WARNING, vm, 0, __VA_ARGS__)
#define log_vm_error(vm, ...) (void) log_vm_full_errno(LOG_ERR, vm, 0, __VA_ARGS__)
#define log_vm_warning_errno(vm, e, ...) log_vm_full_errno(LOG_WARNING, vm, e, __VA_ARGS__)
#define log_vm_error_errno(vm, e, ...) log_vm_full_errno(LOG_ERR, vm, e, __VA_ARGS__)
