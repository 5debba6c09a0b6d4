/* SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "macro.h"

#include "process.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

int process_pidfd_open(pid_t pid) {
        int fd = (int) syscall(SYS_pidfd_open, pid, 0);
        return fd < 0 ? -errno : fd;
}

int process_pidfd_signal(int pidfd, int sig) {
        if (syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) < 0)
                return -errno;
        return 0;
}

int process_find_binary(const char *name, char **ret_path) {
        const char *path;

        if (strchr(name, '/')) {
                if (access(name, X_OK) < 0)
                        return -errno;
                *ret_path = strdup(name);
                return *ret_path ? 0 : -ENOMEM;
        }

        path = getenv("PATH");
        if (isempty(path))
                path = "/usr/local/bin:/usr/bin:/bin";

        for (const char *p = path; *p;) {
                size_t n = strcspn(p, ":");
                _cleanup_free_ char *candidate = NULL;
                struct stat st;

                if (n > 0 && asprintf(&candidate, "%.*s/%s", (int) n, p, name) < 0)
                        return -ENOMEM;
                if (candidate && stat(candidate, &st) == 0 && S_ISREG(st.st_mode) && access(candidate, X_OK) == 0) {
                        *ret_path = TAKE_PTR(candidate);
                        return 0;
                }
                p += n;
                if (*p == ':')
                        p++;
        }
        return -ENOENT;
}

/* Runs in the forked child: only async-signal-safe calls from here to execv. Reports errno on error_fd. */
_Noreturn static void child_exec(const ProcessSpawn *p, int null_fd, int error_fd) {
        struct sigaction sa = { .sa_handler = SIG_DFL };
        sigset_t none;
        int r;

        (void) setsid();
        /* Not inherited from whatever the daemon's umask is at fork time (libarchive briefly sets it to 0 on a
         * worker thread): what QEMU and the helpers create is not world-accessible. */
        (void) umask(0027);
        for (int sig = 1; sig < _NSIG; sig++)
                (void) sigaction(sig, &sa, NULL);
        sigemptyset(&none);
        (void) sigprocmask(SIG_SETMASK, &none, NULL);

        /* Move every fd we hand on out of the way of its target number first. */
        int moved[16];
        if (p->n_pass_fds > ELEMENTSOF(moved)) {
                r = E2BIG;
                goto fail;
        }
        for (size_t i = 0; i < p->n_pass_fds; i++) {
                moved[i] = fcntl(p->pass_fds[i], F_DUPFD_CLOEXEC, 3 + (int) p->n_pass_fds + 8);
                if (moved[i] < 0)
                        goto fail_errno;
        }
        int out = p->stdout_fd >= 0 ? p->stdout_fd : null_fd;
        int errfd = p->stderr_fd >= 0 ? p->stderr_fd : null_fd;
        if (dup2(null_fd, STDIN_FILENO) < 0 || dup2(out, STDOUT_FILENO) < 0 || dup2(errfd, STDERR_FILENO) < 0)
                goto fail_errno;
        for (size_t i = 0; i < p->n_pass_fds; i++)
                if (dup2(moved[i], 3 + (int) i) < 0)
                        goto fail_errno;

        /* Raw system calls: they change this thread only, which is all a forked child has (glibc's wrappers would
         * signal the parent's other threads, which exist only in its own bookkeeping). Groups first, uid last:
         * after setresuid nothing can be changed any more. */
        if (p->cwd && chdir(p->cwd) < 0)
                goto fail_errno;
        if (p->user) {
                if (syscall(SYS_setgroups, p->user->n_groups, p->user->groups) < 0 ||
                    syscall(SYS_setresgid, p->user->gid, p->user->gid, p->user->gid) < 0 ||
                    syscall(SYS_setresuid, p->user->uid, p->user->uid, p->user->uid) < 0)
                        goto fail_errno;
        }

        /* Everything else closes on exec; error_fd must stay open until then. */
        if (syscall(SYS_close_range, 3 + (unsigned) p->n_pass_fds, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
                goto fail_errno;

        execve(p->path, p->argv, (char *const[]) { (char *) "PATH=" PROCESS_ENV_PATH, (char *) "LC_ALL=C", NULL });
fail_errno:
        r = errno;
fail:
        (void) !write(error_fd, &r, sizeof(r));
        _exit(127);
}

int process_spawn(const ProcessSpawn *p, pid_t *ret_pid, int *ret_pidfd, HydraError *err) {
        _cleanup_close_ int null_fd = -EBADF, pidfd = -EBADF;
        int pipefd[2], child_errno = 0;
        ssize_t n;
        pid_t pid;

        null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null_fd < 0)
                return hydra_error_set(err, -errno, "open /dev/null: %s", strerror(errno));
        if (pipe2(pipefd, O_CLOEXEC) < 0)
                return hydra_error_set(err, -errno, "pipe: %s", strerror(errno));

        pid = fork();
        if (pid < 0) {
                int e = errno;
                safe_close(pipefd[0]);
                safe_close(pipefd[1]);
                return hydra_error_set(err, -e, "fork: %s", strerror(e));
        }
        if (pid == 0) {
                safe_close(pipefd[0]);
                child_exec(p, null_fd, pipefd[1]);
        }

        safe_close(pipefd[1]);
        /* The child is ours and unreaped (SIGCHLD is blocked, nobody waits), so the pid cannot be reused
         * before we hold a pidfd for it. */
        pidfd = process_pidfd_open(pid);

        /* Blocks only until the child has exec'd or failed to: microseconds. */
        do
                n = read(pipefd[0], &child_errno, sizeof(child_errno));
        while (n < 0 && errno == EINTR);
        safe_close(pipefd[0]);

        if (n == sizeof(child_errno)) {
                (void) waitpid(pid, NULL, 0);
                return hydra_error_set(err, -child_errno, "exec '%s': %s", p->path, strerror(child_errno));
        }
        if (pidfd < 0) {
                int r = pidfd;
                (void) kill(pid, SIGKILL);
                (void) waitpid(pid, NULL, 0);
                return hydra_error_set(err, r, "pidfd_open: %s", strerror(-r));
        }

        *ret_pid = pid;
        *ret_pidfd = TAKE_FD(pidfd);
        return 0;
}

int process_get_start_time(pid_t pid, uint64_t *ret) {
        char path[64], buf[4096];
        _cleanup_close_ int fd = -EBADF;
        unsigned long long start;
        const char *p;
        ssize_t n;

        (void) snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        n = read(fd, buf, sizeof(buf) - 1);
        if (n < 0)
                return -errno;
        buf[n] = '\0';

        /* comm may contain spaces and parentheses: fields restart after the last ')'. */
        p = strrchr(buf, ')');
        if (!p)
                return -EIO;
        p++;
        /* Field 3, the state: a zombie has exited already; whoever reaps it, it is not a live process. */
        p += strspn(p, " ");
        if (*p == 'Z' || *p == 'X')
                return -ESRCH;
        /* Fields 3..21 precede starttime (22). */
        for (int field = 3; field <= 22; field++) {
                p += strspn(p, " ");
                if (field == 22)
                        break;
                p += strcspn(p, " ");
                if (!*p)
                        return -EIO;
        }
        if (sscanf(p, "%llu", &start) != 1)
                return -EIO;
        *ret = start;
        return 0;
}

static void closedirp(DIR **d) {
        if (*d)
                (void) closedir(*d);
}

/* Whether /proc/PID/exe is exe: the same path, or the same path of a binary replaced since (a package upgrade while
 * the VM runs leaves " (deleted)" behind it). */
static bool process_exe_is(long pid, const char *exe) {
        char path[64], target[PATH_MAX + 16];
        size_t n = strlen(exe);
        ssize_t len;

        (void) snprintf(path, sizeof(path), "/proc/%ld/exe", pid);
        len = readlink(path, target, sizeof(target) - 1);
        if (len < 0)
                return false;
        target[len] = 0;
        return strncmp(target, exe, n) == 0 && (target[n] == 0 || streq(target + n, " (deleted)"));
}

/* The inodes of the listening unix sockets bound at path, from /proc/net/unix (this network namespace's). Returns how
 * many were found (at most max): an old socket that was unlinked and replaced still shows its path. */
static size_t unix_listening_inodes(const char *path, unsigned long *inodes, size_t max) {
        _cleanup_fclose_ FILE *f = fopen("/proc/net/unix", "re");
        char line[PATH_MAX + 128];
        size_t n = 0;

        if (!f)
                return 0;
        /* "Num RefCount Protocol Flags Type St Inode Path"; Flags has __SO_ACCEPTCON (0x10000) when listening. */
        while (n < max && fgets(line, sizeof(line), f)) {
                unsigned long flags, inode;
                int offset = 0;
                char *p;

                if (sscanf(line, "%*s %*x %*x %lx %*x %*x %lu %n", &flags, &inode, &offset) != 2 || offset == 0)
                        continue;
                p = line + offset;
                p[strcspn(p, "\n")] = 0;
                if ((flags & 0x10000) && streq(p, path))
                        inodes[n++] = inode;
        }
        return n;
}

static bool uid_in(uid_t uid, const uid_t *uids, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (uids[i] == uid)
                        return true;
        return false;
}

pid_t process_find_by_socket(const char *exe, int fd, const char *socket_path, const uid_t *uids, size_t n_uids) {
        _cleanup_(closedirp) DIR *d = NULL;
        unsigned long inodes[8];
        struct dirent *de;
        size_t n;

        n = unix_listening_inodes(socket_path, inodes, ELEMENTSOF(inodes));
        if (n == 0)
                return 0;
        d = opendir("/proc");
        if (!d)
                return 0;
        while ((de = readdir(d))) {
                char path[64], target[64], *end;
                unsigned long inode;
                ssize_t len;
                long pid;

                pid = strtol(de->d_name, &end, 10);
                if (*end || pid <= 1 || pid == (long) getpid())
                        continue;
                (void) snprintf(path, sizeof(path), "/proc/%ld/fd/%d", pid, fd);
                len = readlink(path, target, sizeof(target) - 1);
                if (len < 0)
                        continue;
                target[len] = 0;
                if (sscanf(target, "socket:[%lu]", &inode) != 1)
                        continue;
                for (size_t i = 0; i < n; i++) {
                        struct stat st;

                        if (inode != inodes[i])
                                continue;
                        /* The owner of /proc/PID is the process's effective uid. */
                        (void) snprintf(path, sizeof(path), "/proc/%ld", pid);
                        if (stat(path, &st) == 0 && uid_in(st.st_uid, uids, n_uids) && process_exe_is(pid, exe))
                                return (pid_t) pid;
                }
        }
        return 0;
}

static int on_reaped(sd_event_source *s, const siginfo_t *si, void *userdata) {
        /* sd-event has reaped it (WEXITED); the event loop's reference comes back to us, and goes. */
        (void) sd_event_source_set_floating(s, false);
        sd_event_source_disable_unref(s);
        return 0;
}

int process_reap_async(sd_event *event, int pidfd) {
        sd_event_source *s = NULL;
        int r;

        r = sd_event_add_child_pidfd(event, &s, pidfd, WEXITED, on_reaped, NULL);
        if (r < 0) {
                safe_close(pidfd);
                return r;
        }
        (void) sd_event_source_set_child_pidfd_own(s, true);
        (void) sd_event_source_set_description(s, "reap");
        r = sd_event_source_set_floating(s, true);
        sd_event_source_unref(s);
        return r;
}
