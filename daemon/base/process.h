/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "error.h"

/* Spawning and signalling child processes through pidfds, so that a reused PID can never fool us. */

typedef struct ProcessSpawn {
        const char *path;          /* absolute path of the binary (see process_find_binary) */
        char *const *argv;
        const int *pass_fds;       /* become fds 3, 4, ... in the child, close-on-exec cleared */
        size_t n_pass_fds;
        int stdout_fd;             /* < 0: /dev/null */
        int stderr_fd;             /* < 0: /dev/null */
} ProcessSpawn;

/* The whole environment of every child: nothing of hydrad's (secrets an operator exported, $LISTEN_FDS,
 * $NOTIFY_SOCKET, $JOURNAL_STREAM) is handed on. C locale: hydrad reads some of QEMU's messages. */
#define PROCESS_ENV_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* Forks and execs. The child gets an empty signal mask, default signal dispositions, its own session (so a
 * Ctrl-C on a foreground hydrad does not reach QEMU, and QEMU outlives hydrad), stdin from /dev/null, no
 * other fds, and only PATH=PROCESS_ENV_PATH and LC_ALL=C in its environment. Returns 0 with the pid and a pidfd, or a negative errno with err naming the step (an exec failure
 * is reported from the child through a close-on-exec pipe). */
int process_spawn(const ProcessSpawn *p, pid_t *ret_pid, int *ret_pidfd, HydraError *err);

/* Resolves name against $PATH (or returns it if it contains '/'). Returns 0, -ENOENT, or -ENOMEM. */
int process_find_binary(const char *name, char **ret_path);

int process_pidfd_open(pid_t pid);
int process_pidfd_signal(int pidfd, int sig);

/* Our child, already sent SIGKILL: reaped on the loop when it dies, so that the caller does not wait for it (a
 * process in uninterruptible I/O dies when the I/O ends: seconds, for a large write). Takes over pidfd (closed on
 * failure too). If the loop ends first, the process is reaped by whoever inherits it. */
int process_reap_async(sd_event *event, int pidfd);

/* Field 22 of /proc/PID/stat: the start time in clock ticks since boot; with the pid, a process identity.
 * -ESRCH for a process that is gone or a zombie (exited, not reaped yet). */
int process_get_start_time(pid_t pid, uint64_t *ret);

/* The first process (other than us) that runs the binary exe (an absolute path), with hydrad's effective uid, and
 * whose arguments hold option followed by exactly value (e.g. "-chardev" and the console chardev hydrad wrote).
 * Returns its pid, or 0 if there is none. For finding a QEMU that was spawned but never recorded: the whole-argument
 * match, the uid and the executable keep another user's process that merely mentions our path from being taken. */
pid_t process_find_by_option(const char *exe, const char *option, const char *value);
