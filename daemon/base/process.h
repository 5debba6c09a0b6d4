/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "error.h"

/* Spawning and signalling child processes through pidfds, so that a reused PID can never fool us. */

/* Who a child runs as: set in the child before exec (groups, then gid, then uid). Needs hydrad to be root. */
typedef struct ProcessUser {
        uid_t uid;
        gid_t gid;
        const gid_t *groups;       /* the supplementary groups, exactly */
        size_t n_groups;
} ProcessUser;

typedef struct ProcessSpawn {
        const char *path;          /* absolute path of the binary (see process_find_binary) */
        char *const *argv;
        const int *pass_fds;       /* become fds 3, 4, ... in the child, close-on-exec cleared */
        size_t n_pass_fds;
        int stdout_fd;             /* < 0: /dev/null */
        int stderr_fd;             /* < 0: /dev/null */
        const ProcessUser *user;   /* NULL: hydrad's own user and groups */
        const char *cwd;           /* the child's working directory (entered before user is taken); NULL: ours */
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

/* The first process (other than us) of one of the n_uids effective uids that runs the binary exe (an absolute
 * path) and holds, as its descriptor fd, a listening unix socket bound at socket_path (e.g. the QMP socket hydrad
 * bound and passed to QEMU as fd 3). Returns its pid, or 0 if there is none. For finding a QEMU that was spawned
 * but never recorded: a socket is held only by whom it was given to, so another user's process that merely mentions
 * our paths is never taken, nor a QEMU of another hydrad (its sockets are bound elsewhere); the uids (hydrad's and
 * qemu_user's) are a second lock. */
pid_t process_find_by_socket(const char *exe, int fd, const char *socket_path, const uid_t *uids, size_t n_uids);