/* SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "child.h"
#include "log.h"
#include "macro.h"
#include "process.h"

#define CHILD_OUT_MAX (1024U * 1024U)
#define CHILD_ERR_TAIL 4096U

struct Child {
        char *name;                /* argv[0], for messages */
        pid_t pid;
        sd_event_source *exit_source;
        sd_event_source *out_source;
        sd_event_source *err_source;

        char *out;
        size_t out_len;
        char err[CHILD_ERR_TAIL + 1];
        size_t err_len;

        bool exited;
        int code;
        int signal;

        child_done_t done;
        void *userdata;
};

static Child *child_free(Child *c) {
        if (!c)
                return NULL;
        sd_event_source_disable_unref(c->out_source);
        sd_event_source_disable_unref(c->err_source);
        sd_event_source_disable_unref(c->exit_source);
        free(c->out);
        free(c->name);
        free(c);
        return NULL;
}

static void child_maybe_finish(Child *c) {
        ChildResult res;

        if (!c->exited || c->out_source || c->err_source)
                return;

        while (c->err_len > 0 && c->err[c->err_len - 1] == '\n')
                c->err_len--;
        c->err[c->err_len] = '\0';
        res = (ChildResult) {
                .code = c->code,
                .signal = c->signal,
                .out = c->out ? c->out : "",
                .out_len = c->out_len,
                .err_tail = c->err,
        };
        c->done(c, &res, c->userdata);
        child_free(c);
}

static int on_child_exit(sd_event_source *s, const siginfo_t *si, void *userdata) {
        Child *c = userdata;

        c->exited = true;
        if (si->si_code == CLD_EXITED) {
                c->code = si->si_status;
                c->signal = 0;
        } else {
                c->code = -1;
                c->signal = si->si_status;
        }
        c->exit_source = sd_event_source_disable_unref(c->exit_source);
        child_maybe_finish(c);
        return 0;
}

static void append_err(Child *c, const char *buf, size_t n) {
        /* Keep the tail: a tool's last words are the ones that explain its failure. */
        if (n >= CHILD_ERR_TAIL) {
                memcpy(c->err, buf + n - CHILD_ERR_TAIL, CHILD_ERR_TAIL);
                c->err_len = CHILD_ERR_TAIL;
                return;
        }
        if (c->err_len + n > CHILD_ERR_TAIL) {
                size_t drop = c->err_len + n - CHILD_ERR_TAIL;
                memmove(c->err, c->err + drop, c->err_len - drop);
                c->err_len -= drop;
        }
        memcpy(c->err + c->err_len, buf, n);
        c->err_len += n;
}

static int on_child_output(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Child *c = userdata;
        bool is_out = s == c->out_source;
        char buf[16384];
        ssize_t n;

        n = read(fd, buf, sizeof(buf));
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return 0;
        if (n <= 0) {
                if (is_out)
                        c->out_source = sd_event_source_disable_unref(c->out_source);
                else
                        c->err_source = sd_event_source_disable_unref(c->err_source);
                child_maybe_finish(c);
                return 0;
        }
        if (!is_out) {
                append_err(c, buf, (size_t) n);
                return 0;
        }
        /* Keep reading so the child never blocks, but keep no more than the first CHILD_OUT_MAX bytes (all of
         * them: a read that crosses the cap keeps its part below it). */
        if (c->out_len >= CHILD_OUT_MAX)
                return 0;
        if ((size_t) n > CHILD_OUT_MAX - c->out_len)
                n = (ssize_t) (CHILD_OUT_MAX - c->out_len);
        char *p = realloc(c->out, c->out_len + (size_t) n + 1);
        if (!p)
                return 0;
        c->out = p;
        memcpy(c->out + c->out_len, buf, (size_t) n);
        c->out_len += (size_t) n;
        c->out[c->out_len] = '\0';
        return 0;
}

static int watch_pipe(sd_event *event, Child *c, int fd, sd_event_source **ret) {
        int r;

        r = sd_event_add_io(event, ret, fd, EPOLLIN, on_child_output, c);
        if (r < 0)
                return r;
        (void) sd_event_source_set_io_fd_own(*ret, true);
        return 0;
}

int child_run(sd_event *event, char *const *argv, child_done_t done, void *userdata, Child **ret, HydraError *err) {
        _cleanup_close_ int out_r = -EBADF, out_w = -EBADF, err_r = -EBADF, err_w = -EBADF, pidfd = -EBADF;
        _cleanup_free_ char *path = NULL;
        Child *c;
        int fds[2], r;

        r = process_find_binary(argv[0], &path);
        if (r < 0)
                return hydra_error_set(err, r, "cannot find '%s': %s", argv[0], strerror(-r));
        if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0)
                return hydra_error_set(err, -errno, "pipe: %s", strerror(errno));
        out_r = fds[0], out_w = fds[1];
        if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0)
                return hydra_error_set(err, -errno, "pipe: %s", strerror(errno));
        err_r = fds[0], err_w = fds[1];
        /* The child's ends block like any ordinary stdout. */
        (void) fcntl(out_w, F_SETFL, 0);
        (void) fcntl(err_w, F_SETFL, 0);

        c = calloc(1, sizeof(*c));
        if (!c || !(c->name = strdup(argv[0]))) {
                free(c);
                return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        c->done = done;
        c->userdata = userdata;

        r = process_spawn(&(ProcessSpawn) { .path = path, .argv = argv, .stdout_fd = out_w, .stderr_fd = err_w },
                          &c->pid, &pidfd, err);
        if (r < 0) {
                child_free(c);
                return r;
        }
        out_w = safe_close(out_w);
        err_w = safe_close(err_w);

        r = sd_event_add_child_pidfd(event, &c->exit_source, pidfd, WEXITED, on_child_exit, c);
        if (r < 0) {
                (void) process_pidfd_signal(pidfd, SIGKILL);
                (void) waitpid(c->pid, NULL, 0);
                child_free(c);
                return hydra_error_set(err, r, "watch '%s': %s", argv[0], strerror(-r));
        }
        (void) sd_event_source_set_child_pidfd_own(c->exit_source, true);
        TAKE_FD(pidfd);
        (void) sd_event_source_set_description(c->exit_source, "child-exit");

        r = watch_pipe(event, c, out_r, &c->out_source);
        if (r >= 0) {
                TAKE_FD(out_r);
                r = watch_pipe(event, c, err_r, &c->err_source);
                if (r >= 0)
                        TAKE_FD(err_r);
        }
        if (r < 0) {
                child_cancel(c);
                return hydra_error_set(err, r, "watch '%s' output: %s", argv[0], strerror(-r));
        }

        log_debug("started %s (pid %d)", argv[0], (int) c->pid);
        if (ret)
                *ret = c;
        return 0;
}

void child_cancel(Child *c) {
        if (!c)
                return;
        if (!c->exited && c->exit_source) {
                /* SIGKILL cannot be ignored, but a process in uninterruptible I/O dies only when the I/O ends
                 * (seconds, for qemu-img flushing a large write): the loop reaps it then, without waiting. */
                int fd;

                (void) sd_event_source_send_child_signal(c->exit_source, SIGKILL, NULL, 0);
                fd = fcntl(sd_event_source_get_child_pidfd(c->exit_source), F_DUPFD_CLOEXEC, 3);
                if (fd < 0 || process_reap_async(sd_event_source_get_event(c->exit_source), fd) < 0)
                        (void) waitpid(c->pid, NULL, 0); /* cannot hand it over: wait here rather than leak it */
        }
        child_free(c);
}

void child_describe_failure(const char *what, const ChildResult *res, HydraError *err) {
        if (res->signal > 0)
                (void) hydra_error_set(err, -EIO, "%s was killed by signal %d%s%s", what, res->signal,
                                       isempty(res->err_tail) ? "" : ": ", res->err_tail);
        else
                (void) hydra_error_set(err, -EIO, "%s exited with status %d%s%s", what, res->code,
                                       isempty(res->err_tail) ? "" : ": ", res->err_tail);
}
