/* SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "process.h"
#include "qemu_argv.h"
#include "store.h"
#include "vm.h"
#include "vm_services.h"

#define SPEC_FILE "spec.pb"
#define SPEC_MAX_SIZE (1024U * 1024U)
#define QMP_HANDSHAKE_TIMEOUT_USEC (30ULL * 1000000ULL)
#define STOP_QUIT_GRACE_USEC (5ULL * 1000000ULL)
#define STOP_SIGTERM_GRACE_USEC (5ULL * 1000000ULL)
#define STOP_SIGKILL_GRACE_USEC (10ULL * 1000000ULL)
#define STDERR_TAIL_MAX 2048
#define QMP_LOST_GRACE_USEC (5ULL * 1000000ULL)

typedef enum VmOpKind {
        VM_OP_START,
        VM_OP_STOP,
        VM_OP_DESTROY,
} VmOpKind;

struct VmOp {
        Vm *vm;
        VmOpKind kind;
        vm_op_done_t done;
        void *userdata;
        sd_event_source *timer;
        uint64_t timeout_usec;
        bool wait_ready;       /* VM_OP_START: until the readiness probe passes, not just running */
        VmOp *next, *prev;
};

static const char *const stop_stage_table[_STOP_STAGE_MAX] = {
        [STOP_STAGE_NONE] = "none",
        [STOP_STAGE_POWERDOWN] = "powerdown",
        [STOP_STAGE_QUIT] = "quit",
        [STOP_STAGE_SIGTERM] = "sigterm",
        [STOP_STAGE_SIGKILL] = "sigkill",
};

const char *stop_stage_to_string(StopStage s) {
        return s < _STOP_STAGE_MAX ? stop_stage_table[s] : NULL;
}

static uint64_t now_usec(clockid_t clock) {
        struct timespec ts;
        (void) clock_gettime(clock, &ts);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

uint64_t vm_uptime_usec(const Vm *vm) {
        if (vm->pid <= 0 || vm->spawn_usec == 0)
                return 0;
        return now_usec(CLOCK_MONOTONIC) - vm->spawn_usec;
}

static int vm_error(Vm *vm, HydraError *err) {
        if (err)
                *err = vm->last_error;
        return vm->last_error.code < 0 ? vm->last_error.code : -EIO;
}

/* --- ops: API calls waiting for a state --- */

static void op_unlink(VmOp *op) {
        Vm *vm = op->vm;

        if (op->prev)
                op->prev->next = op->next;
        else if (vm->ops == op)
                vm->ops = op->next;
        if (op->next)
                op->next->prev = op->prev;
        op->next = op->prev = NULL;
}

static VmOp *op_free(VmOp *op) {
        if (!op)
                return NULL;
        op_unlink(op);
        sd_event_source_disable_unref(op->timer);
        free(op);
        return NULL;
}

VmOp *vm_op_cancel(VmOp *op) {
        return op_free(op);
}

static void op_complete(VmOp *op, int r, const HydraError *err) {
        vm_op_done_t done = op->done;
        void *userdata = op->userdata;
        Vm *vm = op->vm;

        op_free(op);
        done(vm, r, err, userdata);
}

static int on_op_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        VmOp *op = userdata;
        HydraError err;

        hydra_error_set(&err, -ETIMEDOUT, "VM '%s' did not become %s within %llu s (it is %s%s%s%s; the start goes on)",
                        op->vm->name, op->wait_ready ? "ready" : "running",
                        (unsigned long long) (op->timeout_usec / 1000000ULL), vm_state_to_string(op->vm->state),
                        op->vm->state == VM_STATE_RUNNING && !op->vm->ready ? ", not ready" : "",
                        op->vm->ready_detail ? ": " : "", strempty(op->vm->ready_detail));
        op_complete(op, err.code, &err);
        return 0;
}

static int op_new(Vm *vm, VmOpKind kind, uint64_t timeout_usec, vm_op_done_t done, void *userdata, VmOp **ret) {
        VmOp *op;
        int r;

        op = calloc(1, sizeof(*op));
        if (!op)
                return -ENOMEM;
        *op = (VmOp) { .vm = vm, .kind = kind, .done = done, .userdata = userdata, .timeout_usec = timeout_usec };
        if (timeout_usec > 0) {
                r = sd_event_add_time_relative(manager_get_event(vm->manager), &op->timer, CLOCK_MONOTONIC,
                                               timeout_usec, 0, on_op_timeout, op);
                if (r < 0) {
                        free(op);
                        return r;
                }
                (void) sd_event_source_set_description(op->timer, "vm-op-timeout");
        }
        op->next = vm->ops;
        if (vm->ops)
                vm->ops->prev = op;
        vm->ops = op;
        *ret = op;
        return 0;
}

static bool vm_is_down(const Vm *vm) {
        return !vm_state_has_process(vm->state) && vm->state != VM_STATE_PREPARING;
}

/* Completes the ops whose wait is over. Callbacks may start new ops, so restart from the head each time. */
static void vm_check_ops(Vm *vm) {
        bool again = true;

        while (again) {
                again = false;
                for (VmOp *op = vm->ops; op; op = op->next) {
                        HydraError err;

                        hydra_error_clear(&err);
                        if (op->kind == VM_OP_START) {
                                if (vm->state == VM_STATE_RUNNING && (!op->wait_ready || vm->ready)) {
                                        op_complete(op, 0, NULL);
                                } else if (vm->state == VM_STATE_FAILED || vm->state == VM_STATE_CRASHED) {
                                        int r = vm_error(vm, &err);
                                        op_complete(op, r, &err);
                                } else if (vm->state == VM_STATE_STOPPING || vm->state == VM_STATE_STOPPED ||
                                           vm->state == VM_STATE_DEFINED || !vm->registered) {
                                        hydra_error_set(&err, -ECANCELED, "start of VM '%s' was cancelled by a %s",
                                                        vm->name, vm->registered ? "stop" : "destroy");
                                        op_complete(op, err.code, &err);
                                } else
                                        continue;
                        } else if (op->kind == VM_OP_STOP) {
                                if (!vm_is_down(vm))
                                        continue;
                                op_complete(op, 0, NULL);
                        } else {
                                if (vm->registered)
                                        continue;
                                op_complete(op, 0, NULL);
                        }
                        again = true;
                        break;
                }
        }
}

/* --- state --- */

static int vm_remove(Vm *vm);

#define RUNTIME_FILE "runtime.json"
#define ADOPT_QMP_TIMEOUT_USEC (10ULL * 1000000ULL)

/* RUN_DIR/ROLE/runtime.json: what a restarted hydrad needs to find its QEMU again. Replaced atomically at every
 * state with a process; removed when the process is gone. */
static void vm_runtime_save(Vm *vm) {
        _cleanup_free_ char *data = NULL;
        HydraError err;
        json_t *o;
        int r;

        o = json_pack("{s:I, s:I, s:s, s:I, s:I, s:s, s:s*, s:s*, s:I}", "pid", (json_int_t) vm->pid, "start_time",
                      (json_int_t) vm->start_ticks, "qmp_socket", vm->qmp_path, "spec_generation",
                      (json_int_t) vm->generation, "spawn_realtime_usec",
                      (json_int_t) (now_usec(CLOCK_REALTIME) - (now_usec(CLOCK_MONOTONIC) - vm->spawn_usec)),
                      "state", vm_state_to_string(vm->state), "disk_path", vm->prepared.disk_path, "seed_path",
                      vm->prepared.seed_path, "ready_since_usec", (json_int_t) (vm->ready ? vm->ready_since_usec : 0));
        data = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        hydra_error_clear(&err);
        r = data ? store_write_atomic(vm->run_dir, RUNTIME_FILE, data, strlen(data), 0600, &err) : -ENOMEM;
        if (r < 0)
                log_vm_warning(vm->name, "VM '%s': cannot record the runtime state (a restarted hydrad will not find "
                               "this QEMU): %s", vm->name, r == -ENOMEM ? "out of memory" : err.message);
}

void vm_runtime_update(Vm *vm) {
        if (vm->pid > 0 && vm_state_has_process(vm->state))
                vm_runtime_save(vm);
}

#define STATE_FILE "state.json"

/* STATE_DIR/ROLE/state.json: a resting state (stopped, failed, crashed) with the last exit and error, so that a
 * restarted hydrad shows what happened instead of "defined"; or "preparing", so that a hydrad that dies during the
 * preparation is followed by one that says so. */
static void vm_state_save(Vm *vm) {
        _cleanup_free_ char *data = NULL;
        HydraError err;
        json_t *o;
        int r;

        o = json_pack("{s:s, s:{s:b, s:i, s:i, s:s, s:I}, s:s}", "state", vm_state_to_string(vm->state), "last_exit",
                      "exited", vm->last_exit.exited, "code", vm->last_exit.code, "signal", vm->last_exit.signal,
                      "reason", vm->last_exit.reason, "time_usec", (json_int_t) vm->last_exit.time_usec, "last_error",
                      vm->last_error.code < 0 ? vm->last_error.message : "");
        data = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        hydra_error_clear(&err);
        r = data ? store_write_atomic(vm->state_dir, STATE_FILE, data, strlen(data), 0600, &err) : -ENOMEM;
        if (r < 0)
                log_vm_warning(vm->name, "VM '%s': cannot record its state: %s", vm->name,
                               r == -ENOMEM ? "out of memory" : err.message);
}

static void vm_state_load(Vm *vm) {
        _cleanup_free_ void *data = NULL;
        const char *state = NULL, *reason = NULL, *error = NULL;
        json_int_t time_usec = 0;
        int exited = 0, code = 0, sig = 0;
        VmState st;
        size_t size;
        json_t *o;

        if (store_read(vm->state_dir, STATE_FILE, 64 * 1024, &data, &size, NULL) < 0)
                return;
        o = json_loadb(data, size, 0, NULL);
        if (!o || json_unpack(o, "{s:s, s:{s:b, s:i, s:i, s:s, s:I}, s:s}", "state", &state, "last_exit", "exited",
                              &exited, "code", &code, "signal", &sig, "reason", &reason, "time_usec", &time_usec,
                              "last_error", &error) < 0 ||
            (st = vm_state_from_string(state)) < 0 ||
            (st != VM_STATE_STOPPED && st != VM_STATE_FAILED && st != VM_STATE_CRASHED && st != VM_STATE_PREPARING)) {
                log_vm_warning(vm->name, "VM '%s': '%s/%s' is not a valid state record; ignoring it", vm->name,
                               vm->state_dir, STATE_FILE);
                json_decref(o);
                return;
        }
        vm->state = st;
        vm->last_exit = (VmExit) { .exited = exited, .code = code, .signal = sig, .time_usec = (uint64_t) time_usec };
        (void) snprintf(vm->last_exit.reason, sizeof(vm->last_exit.reason), "%s", reason);
        if (!isempty(error))
                (void) hydra_error_set(&vm->last_error, -EIO, "%s", error);
        json_decref(o);

        /* The record is written when the preparation begins. With a runtime record the preparation got as far as
         * spawning QEMU, and adoption tells the rest; without one, hydrad stopped while preparing. */
        if (st == VM_STATE_PREPARING) {
                _cleanup_free_ char *runtime = NULL;

                vm->state = VM_STATE_STOPPED;
                if (asprintf(&runtime, "%s/%s", vm->run_dir, RUNTIME_FILE) < 0 || access(runtime, F_OK) == 0)
                        return;
                (void) hydra_error_set(&vm->last_error, HYDRA_ELAUNCH, "the preparation (download, disk, cloud-init "
                                       "seed) was interrupted: hydrad stopped during it; start the VM again");
                vm->prepare_interrupted = true;
                log_vm_warning(vm->name, "VM '%s': %s", vm->name, vm->last_error.message);
                vm_state_save(vm);
        }
}

/* --- restart policy --- */

static void vm_notice(Vm *vm, const char *fmt, ...) _printf_(2, 3);
static void vm_notice(Vm *vm, const char *fmt, ...) {
        _cleanup_free_ char *msg = NULL;
        HydraEvent ev = { .role = vm->role, .type = HYDRA_EVENT_NOTICE };
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&msg, fmt, ap);
        va_end(ap);
        if (r < 0)
                return;
        log_vm_info(vm->name, "VM '%s': %s", vm->name, msg);
        ev.notice = msg;
        manager_emit(vm->manager, &ev, vm);
}

static void vm_restart_cancel(Vm *vm) {
        vm->restart_timer = sd_event_source_disable_unref(vm->restart_timer);
        vm->next_restart_usec = 0;
}

static int on_restart_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Vm *vm = userdata;
        int r;

        vm_restart_cancel(vm);
        if (!vm->registered || !vm_is_down(vm) || vm->pid > 0)
                return 0;
        vm->restarting = true;
        vm->restart_count++;
        log_vm_info(vm->name, "VM '%s': restarting (restart %u, policy %s)", vm->name, vm->restart_count,
                    restart_policy_to_string(vm->spec.supervision.restart));
        r = vm_dispatch(vm, VM_EVENT_START, "restart");
        if (r < 0)
                log_vm_warning_errno(vm->name, r, "VM '%s': restart refused in state %s: %m", vm->name,
                                     vm_state_to_string(vm->state));
        return 0;
}

/* After a death: the policy decides between nothing, a restart after the backoff, and giving up. A client's
 * StopVm never gets here (stopping -> stopped is not a death). */
static void vm_consider_restart(Vm *vm, VmState from, VmState to) {
        const typeof(vm->spec.supervision) *sv = &vm->spec.supervision;
        uint64_t delay, now = now_usec(CLOCK_MONOTONIC);
        RestartVerdict verdict;
        bool failure;
        int r;

        if (!vm->registered || vm->destroy_pending)
                return;
        if (to == VM_STATE_CRASHED)
                failure = true;
        else if (to == VM_STATE_FAILED && vm->restarting)
                failure = true;
        else if (to == VM_STATE_STOPPED && from == VM_STATE_RUNNING)
                failure = false; /* the guest shut itself down */
        else
                return;

        verdict = restart_decide(&vm->restarts, sv->restart, sv->max_restarts, sv->restart_window_sec, failure, now,
                                 to == VM_STATE_FAILED ? 0 : vm->last_up_usec, &delay);
        switch (verdict) {
        case RESTART_VERDICT_NONE:
                vm->restarting = false;
                return;
        case RESTART_VERDICT_GIVE_UP: {
                char last[512];

                vm->restarting = false;
                (void) snprintf(last, sizeof(last), "%.400s", vm->last_error.code < 0 ? vm->last_error.message
                                                                                 : vm->last_exit.reason);
                (void) hydra_error_set(&vm->last_error, HYDRA_ELAUNCH, "restart policy %s gave up: %u deaths within "
                                       "%" PRIu32 " s (max_restarts %" PRIu32 "); last: %s",
                                       restart_policy_to_string(sv->restart),
                                       restart_deaths_in_window(&vm->restarts, sv->restart_window_sec, now),
                                       sv->restart_window_sec, sv->max_restarts, last);
                vm_state_save(vm);
                vm_notice(vm, "%s", vm->last_error.message);
                return;
        }
        case RESTART_VERDICT_SCHEDULE:
                break;
        }

        vm_restart_cancel(vm);
        r = sd_event_add_time_relative(manager_get_event(vm->manager), &vm->restart_timer, CLOCK_MONOTONIC, delay, 0,
                                       on_restart_timer, vm);
        if (r < 0) {
                log_vm_error_errno(vm->name, r, "VM '%s': cannot schedule the restart: %m", vm->name);
                return;
        }
        (void) sd_event_source_set_description(vm->restart_timer, "vm-restart");
        vm->next_restart_usec = now_usec(CLOCK_REALTIME) + delay;
        vm_notice(vm, "restarting in %llu s (policy %s, %s)", (unsigned long long) (delay / 1000000ULL),
                  restart_policy_to_string(sv->restart), failure ? vm->last_exit.reason : "the guest shut down");
}

/* Enters a state: the records and services the table in vm_state.c names for it, the event, then what follows
 * (ops that were waiting, a pending destroy, the restart policy). Only vm_dispatch() calls it. */
static void vm_set_state(Vm *vm, VmState next, const char *reason, bool announce) {
        VmState from = vm->state;
        HydraEvent ev = {
                .role = vm->role,
                .type = HYDRA_EVENT_STATE,
                .from = from,
                .to = next,
                .reason = reason,
        };

        if (from == next && !announce)
                return;
        vm->state = next;
        log_vm_info(vm->name, "VM '%s': %s -> %s (%s)", vm->name, vm_state_to_string(from), vm_state_to_string(next),
                    reason);
        switch (vm_state_record(next)) {
        case VM_RECORD_RUNTIME:
                if (vm->pid > 0)
                        vm_runtime_save(vm);
                break;
        case VM_RECORD_STATE:
                vm_state_save(vm);
                break;
        default:
                break;
        }
        manager_emit(vm->manager, &ev, vm);

        if (next == VM_STATE_RUNNING)
                vm->restarting = false;
        if (vm_state_has_services(next) && !vm_state_has_services(from))
                vm_services_up(vm);
        else if (!vm_state_has_services(next) && vm_state_has_services(from))
                vm_services_down(vm);
        if (vm->destroy_pending && vm_is_down(vm))
                (void) vm_dispatch(vm, VM_EVENT_DESTROY, "destroyed");
        else
                vm_consider_restart(vm, from, next);
        vm_check_ops(vm);
}

/* --- the process --- */

static void vm_drives_clear(Vm *vm);

static void vm_teardown_process(Vm *vm) {
        vm_services_down(vm);
        console_disconnect(vm->console);
        if (vm->qemu_console_path)
                (void) unlink(vm->qemu_console_path);
        vm_drives_clear(vm);
        vm->qmp = qmp_client_free(vm->qmp);
        vm->qmp_ready = false;
        vm->child_source = sd_event_source_disable_unref(vm->child_source);
        vm->stop_timer = sd_event_source_disable_unref(vm->stop_timer);
        vm->start_timer = sd_event_source_disable_unref(vm->start_timer);
        vm->stop_stage = STOP_STAGE_NONE;
        vm->pid = 0;
        vm->start_ticks = 0;
        vm->spawn_usec = 0;
        vm->adopted = false;
        vm->resume_stop = false;
        if (vm->qmp_path)
                (void) unlink(vm->qmp_path);
        (void) store_remove(vm->run_dir, RUNTIME_FILE);
}

/* The last lines QEMU wrote to stderr, on one line, for an error message. */
static void read_stderr_tail(const char *path, char *buf, size_t size) {
        _cleanup_close_ int fd = -EBADF;
        struct stat st;
        off_t off;
        ssize_t n;

        buf[0] = '\0';
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &st) < 0)
                return;
        off = st.st_size > (off_t) (size - 1) ? st.st_size - (off_t) (size - 1) : 0;
        n = pread(fd, buf, size - 1, off);
        if (n <= 0)
                return;
        buf[n] = '\0';
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
                buf[--n] = '\0';
        for (char *p = buf; *p; p++)
                if (*p == '\n')
                        *p = ' ';
                else if ((unsigned char) *p < 0x20)
                        *p = '?';
}

static const char *exit_reason(Vm *vm) {
        if (vm->guest_shutdown_seen)
                return "guest-shutdown";
        switch (vm->stop_stage) {
        case STOP_STAGE_POWERDOWN:
                return "guest-shutdown";
        case STOP_STAGE_QUIT:
                return "quit";
        case STOP_STAGE_SIGTERM:
                return "sigterm";
        case STOP_STAGE_SIGKILL:
                return "sigkill";
        default:
                return "crashed";
        }
}

/* code/signal as waitid() reports them; an adopted QEMU is not our child, so its status is unknown (both -1). */
static void vm_process_exited(Vm *vm, int code, int signal) {
        VmState state = vm->state;
        const char *reason;
        VmEvent event;

        vm->last_exit = (VmExit) { .exited = true, .time_usec = now_usec(CLOCK_REALTIME), .code = code,
                                   .signal = signal > 0 ? signal : 0 };
        vm->last_up_usec = vm_uptime_usec(vm);

        if (state == VM_STATE_STARTING && vm->adopted) {
                /* Gone while we were reconnecting to it: not a failed launch. A stop in progress has finished;
                 * otherwise it died while no hydrad watched it closely enough to know why. */
                bool stopping = vm->resume_stop;

                (void) snprintf(vm->last_exit.reason, sizeof(vm->last_exit.reason), "%s", stopping ? "quit" : "lost");
                if (!stopping)
                        (void) hydra_error_set(&vm->last_error, HYDRA_ELAUNCH, "the adopted QEMU (pid %d) exited while "
                                               "hydrad was reconnecting to it; its exit status is unknown",
                                               (int) vm->pid);
                log_vm_info(vm->name, "VM '%s': adopted QEMU (pid %d) exited during the adoption", vm->name,
                            (int) vm->pid);
                vm_teardown_process(vm);
                (void) vm_dispatch(vm, stopping ? VM_EVENT_LOST_STOPPING : VM_EVENT_LOST, stopping ? "stopped" : "lost");
                return;
        }

        if (state == VM_STATE_RUNNING && vm->guest_panicked) {
                reason = "guest-panic";
                event = VM_EVENT_EXIT_UNEXPECTED;
                hydra_error_set(&vm->last_error, HYDRA_ELAUNCH, "the guest kernel panicked (QMP GUEST_PANICKED)");
        } else if (state == VM_STATE_STARTING) {
                char tail[STDERR_TAIL_MAX];

                reason = "launch-failed";
                event = VM_EVENT_EXIT_UNEXPECTED;
                read_stderr_tail(vm->stderr_path, tail, sizeof(tail));
                if (vm->last_exit.signal)
                        hydra_error_set(&vm->last_error, HYDRA_ELAUNCH, "QEMU was killed by signal %d during start-up%s%s",
                                        vm->last_exit.signal, *tail ? ": " : "", tail);
                else
                        hydra_error_set(&vm->last_error, HYDRA_ELAUNCH, "QEMU exited with status %d during start-up%s%s",
                                        vm->last_exit.code, *tail ? ": " : "", tail);
        } else if (state == VM_STATE_STOPPING) {
                reason = exit_reason(vm);
                event = VM_EVENT_EXIT_CLEAN;
        } else if (state == VM_STATE_RUNNING && vm->guest_shutdown_seen) {
                reason = "guest-shutdown";
                event = VM_EVENT_EXIT_CLEAN;
        } else {
                char tail[STDERR_TAIL_MAX];

                reason = "crashed";
                event = VM_EVENT_EXIT_UNEXPECTED;
                read_stderr_tail(vm->stderr_path, tail, sizeof(tail));
                if (vm_state_has_process(state))
                        hydra_error_set(&vm->last_error, HYDRA_ELAUNCH, "QEMU died unexpectedly (%s %d)%s%s",
                                        vm->last_exit.signal ? "signal" : "status",
                                        vm->last_exit.signal ? vm->last_exit.signal : vm->last_exit.code,
                                        *tail ? ": " : "", tail);
        }
        (void) snprintf(vm->last_exit.reason, sizeof(vm->last_exit.reason), "%s", reason);

        if (code < 0 && signal < 0)
                log_vm_info(vm->name, "VM '%s': adopted QEMU (pid %d) exited (status unknown: not our child), reason "
                            "%s", vm->name, (int) vm->pid, reason);
        else
                log_vm_info(vm->name, "VM '%s': QEMU (pid %d) exited: %s %d, reason %s", vm->name, (int) vm->pid,
                            vm->last_exit.signal ? "signal" : "status",
                            vm->last_exit.signal ? vm->last_exit.signal : vm->last_exit.code, reason);

        vm_teardown_process(vm);
        if (vm_state_has_process(state))
                (void) vm_dispatch(vm, event, reason);
        else
                /* A QEMU we were already killing after a failed start: nothing changes but ops may finish. */
                vm_check_ops(vm);
}

static int on_qemu_exit(sd_event_source *s, const siginfo_t *si, void *userdata) {
        if (si->si_code == CLD_EXITED)
                vm_process_exited(userdata, si->si_status, 0);
        else
                vm_process_exited(userdata, -1, si->si_status);
        return 0;
}

/* An adopted QEMU's pidfd became readable: it exited. Not our child: no status to collect. */
static int on_adopted_exit(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        vm_process_exited(userdata, -1, -1);
        return 0;
}

/* --- staged stop --- */

static int vm_signal(Vm *vm, int sig) {
        if (!vm->child_source)
                return -ESRCH;
        if (vm->adopted)
                return process_pidfd_signal(sd_event_source_get_io_fd(vm->child_source), sig);
        return sd_event_source_send_child_signal(vm->child_source, sig, NULL, 0);
}

static void stop_advance(Vm *vm, StopStage stage);

static int on_stop_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Vm *vm = userdata;

        switch (vm->stop_stage) {
        case STOP_STAGE_POWERDOWN:
                log_vm_warning(vm->name, "VM '%s': the guest did not power off within %llu s, sending QMP quit",
                               vm->name, (unsigned long long) (vm->stop_timeout_usec / 1000000ULL));
                stop_advance(vm, STOP_STAGE_QUIT);
                break;
        case STOP_STAGE_QUIT:
                log_vm_warning(vm->name, "VM '%s': QEMU did not exit after QMP quit, sending SIGTERM", vm->name);
                stop_advance(vm, STOP_STAGE_SIGTERM);
                break;
        case STOP_STAGE_SIGTERM:
                log_vm_warning(vm->name, "VM '%s': QEMU did not exit after SIGTERM, sending SIGKILL", vm->name);
                stop_advance(vm, STOP_STAGE_SIGKILL);
                break;
        default:
                log_vm_error(vm->name, "VM '%s': QEMU (pid %d) is still alive after SIGKILL; is it stuck in the kernel?",
                             vm->name, (int) vm->pid);
                vm->stop_timer = sd_event_source_disable_unref(vm->stop_timer);
        }
        return 0;
}

static void on_stop_reply(QmpClient *q, json_t *result, int error, const char *desc, void *userdata) {
        Vm *vm = userdata;

        if (error == -ETIMEDOUT) {
                (void) hydra_error_set(&vm->last_error, -ETIMEDOUT, "QMP %s: QEMU did not answer within %llu s (hung or "
                                       "stopped?); the stop goes on with signals", stop_stage_to_string(vm->stop_stage),
                                       (unsigned long long) (manager_get_config(vm->manager)->qmp_timeout_usec /
                                                             1000000ULL));
                log_vm_warning(vm->name, "VM '%s': %s", vm->name, vm->last_error.message);
        } else if (error < 0 && error != -ECANCELED && error != -ECONNRESET)
                log_vm_warning(vm->name, "VM '%s': QMP %s failed: %s", vm->name, stop_stage_to_string(vm->stop_stage),
                               desc ? desc : strerror(-error));
}

static void stop_advance(Vm *vm, StopStage stage) {
        uint64_t wait = 0;
        int r;

        vm->stop_stage = stage;
        vm->stop_timer = sd_event_source_disable_unref(vm->stop_timer);

        switch (stage) {
        case STOP_STAGE_POWERDOWN:
                if (!vm->qmp_ready)
                        return stop_advance(vm, STOP_STAGE_QUIT);
                log_vm_info(vm->name, "VM '%s': asking the guest to power off (ACPI), waiting up to %llu s", vm->name,
                            (unsigned long long) (vm->stop_timeout_usec / 1000000ULL));
                r = qmp_invoke(vm->qmp, "system_powerdown", NULL, manager_get_config(vm->manager)->qmp_timeout_usec,
                               on_stop_reply, vm);
                if (r < 0)
                        return stop_advance(vm, STOP_STAGE_QUIT);
                wait = vm->stop_timeout_usec;
                break;
        case STOP_STAGE_QUIT:
                if (!vm->qmp_ready)
                        return stop_advance(vm, STOP_STAGE_SIGTERM);
                log_vm_info(vm->name, "VM '%s': sending QMP quit", vm->name);
                r = qmp_invoke(vm->qmp, "quit", NULL, manager_get_config(vm->manager)->qmp_timeout_usec,
                               on_stop_reply, vm);
                if (r < 0)
                        return stop_advance(vm, STOP_STAGE_SIGTERM);
                wait = STOP_QUIT_GRACE_USEC;
                break;
        case STOP_STAGE_SIGTERM:
        case STOP_STAGE_SIGKILL: {
                int sig = stage == STOP_STAGE_SIGTERM ? SIGTERM : SIGKILL;

                log_vm_info(vm->name, "VM '%s': sending %s to QEMU (pid %d)", vm->name, sig == SIGTERM ? "SIGTERM" : "SIGKILL",
                            (int) vm->pid);
                r = vm_signal(vm, sig);
                if (r < 0 && stage == STOP_STAGE_SIGTERM) {
                        log_vm_warning_errno(vm->name, r, "VM '%s': SIGTERM failed: %m", vm->name);
                        return stop_advance(vm, STOP_STAGE_SIGKILL);
                }
                if (r < 0)
                        log_vm_error_errno(vm->name, r, "VM '%s': SIGKILL failed: %m", vm->name);
                wait = stage == STOP_STAGE_SIGTERM ? STOP_SIGTERM_GRACE_USEC : STOP_SIGKILL_GRACE_USEC;
                break;
        }
        default:
                return;
        }

        r = sd_event_add_time_relative(manager_get_event(vm->manager), &vm->stop_timer, CLOCK_MONOTONIC, wait, 0,
                                       on_stop_timer, vm);
        if (r < 0)
                log_vm_error_errno(vm->name, r, "VM '%s': cannot arm the stop timer: %m", vm->name);
        else
                (void) sd_event_source_set_description(vm->stop_timer, "vm-stop");
}

/* --- QMP --- */

static void vm_drives_clear(Vm *vm) {
        for (size_t i = 0; i < vm->n_drives; i++) {
                free(vm->drives[i].id);
                free(vm->drives[i].file);
                free(vm->drives[i].format);
        }
        vm->drives = mfree(vm->drives);
        vm->n_drives = 0;
}

static int json_strdup(json_t *o, const char *key, char **ret) {
        const char *v = json_string_value(json_object_get(o, key));

        *ret = strdup(v ? v : "");
        return *ret ? 0 : -ENOMEM;
}

static void vm_qmp_ready_done(Vm *vm);

/* The console is connected before the guest runs (QEMU starts with -S), so the log has the whole boot. A
 * console that cannot be connected costs the log, not the VM. */
static void vm_console_attach(Vm *vm) {
        HydraError err;

        hydra_error_clear(&err);
        if (!vm->console || console_connect(vm->console, vm->qemu_console_path, &err) < 0)
                log_vm_warning(vm->name, "VM '%s': the serial console is not connected: %s", vm->name,
                               vm->console ? err.message : "no console");
}

static void on_cont(QmpClient *q, json_t *result, int error, const char *desc, void *userdata) {
        Vm *vm = userdata;

        if (error == -ECANCELED)
                return;
        if (error < 0) {
                (void) hydra_error_set(&vm->last_error, HYDRA_ELAUNCH, "QMP cont (start the paused guest) failed: %s",
                                       desc ? desc : strerror(-error));
                log_vm_error(vm->name, "VM '%s': %s", vm->name, vm->last_error.message);
                if (vm->state == VM_STATE_STARTING)
                        (void) vm_dispatch(vm, VM_EVENT_QMP_FAILED, "cont-failed");
                return;
        }
        vm_qmp_ready_done(vm);
}

/* An adopted QEMU: running as it was, unless the previous hydrad died between spawn and cont. */
static void on_query_status(QmpClient *q, json_t *result, int error, const char *desc, void *userdata) {
        const char *status = json_string_value(json_object_get(result, "status"));
        Vm *vm = userdata;

        if (error == -ECANCELED)
                return;
        if (error >= 0 && status && streq(status, "prelaunch")) {
                log_vm_info(vm->name, "VM '%s': the adopted QEMU never ran its guest; starting it", vm->name);
                if (qmp_invoke(q, "cont", NULL, manager_get_config(vm->manager)->qmp_timeout_usec, on_cont, vm) >= 0)
                        return;
        } else if (error >= 0 && status)
                log_vm_debug(vm->name, "VM '%s': adopted QEMU status %s", vm->name, status);
        vm_qmp_ready_done(vm);
}

static void vm_resume_guest(Vm *vm) {
        const uint64_t timeout = manager_get_config(vm->manager)->qmp_timeout_usec;
        int r;

        vm_console_attach(vm);
        if (vm->adopted)
                r = qmp_invoke(vm->qmp, "query-status", NULL, timeout, on_query_status, vm);
        else
                r = qmp_invoke(vm->qmp, "cont", NULL, timeout, on_cont, vm);
        if (r < 0)
                vm_qmp_ready_done(vm);
}

/* The block devices QEMU has, as GetVm shows them: what a start really attached. */
static void on_query_block(QmpClient *q, json_t *result, int error, const char *desc, void *userdata) {
        Vm *vm = userdata;
        size_t i, n = 0;
        json_t *b;

        vm_drives_clear(vm);
        if (error == -ECANCELED)
                return; /* the client is being freed: the VM is going away or hydrad is exiting */
        if (error < 0)
                log_vm_warning(vm->name, "VM '%s': query-block failed: %s", vm->name, desc ? desc : strerror(-error));
        else if (json_is_array(result) && json_array_size(result) > 0) {
                vm->drives = calloc(json_array_size(result), sizeof(VmDrive));
                json_array_foreach(result, i, b) {
                        json_t *ins = json_object_get(b, "inserted");
                        VmDrive *d;

                        if (!vm->drives || !json_is_object(ins))
                                continue;
                        d = &vm->drives[n++];
                        vm->n_drives = n;
                        if (json_strdup(b, "device", &d->id) < 0 || json_strdup(ins, "file", &d->file) < 0 ||
                            json_strdup(ins, "drv", &d->format) < 0)
                                break;
                        d->read_only = json_is_true(json_object_get(ins, "ro"));
                        log_vm_debug(vm->name, "VM '%s': drive %s: %s (%s%s)", vm->name, d->id, d->file, d->format,
                                     d->read_only ? ", read-only" : "");
                }
        }
        vm_resume_guest(vm);
}

/* QMP answers and the drives are known: the guest may run. */
static void vm_qmp_ready_done(Vm *vm) {
        (void) vm_dispatch(vm, VM_EVENT_QMP_READY, vm->adopted ? "adopted" : "qmp-ready");
        if (vm->resume_stop && vm->state == VM_STATE_RUNNING) {
                vm->resume_stop = false;
                log_vm_info(vm->name, "VM '%s': finishing the stop that was in progress when hydrad stopped",
                            vm->name);
                vm->stop_timeout_usec = manager_get_config(vm->manager)->stop_timeout_usec;
                (void) vm_dispatch(vm, VM_EVENT_STOP, "stop-resumed");
        }
}

static void on_qmp_ready(QmpClient *q, void *userdata) {
        Vm *vm = userdata;

        vm->qmp_ready = true;
        log_vm_debug(vm->name, "VM '%s': QMP ready", vm->name);
        if (qmp_invoke(q, "query-block", NULL, 0, on_query_block, vm) < 0)
                vm_resume_guest(vm);
}

static void on_qmp_event(QmpClient *q, const char *name, json_t *data, void *userdata) {
        _cleanup_free_ char *json = data ? json_dumps(data, JSON_COMPACT) : NULL;
        Vm *vm = userdata;
        HydraEvent ev = {
                .role = vm->role,
                .type = HYDRA_EVENT_QMP,
                .qmp_name = name,
                .qmp_data = json,
        };

        if (streq(name, "SHUTDOWN") && data && json_is_true(json_object_get(data, "guest")))
                vm->guest_shutdown_seen = true;
        if (streq(name, "RESET") && vm->state == VM_STATE_RUNNING) {
                /* The guest rebooted: it has to become ready again. */
                vm_ready_begin(vm);
                vm_services_up(vm);
        }
        if (streq(name, "GUEST_PANICKED") && !vm->guest_panicked) {
                /* Whatever QEMU's panic action (shutdown, pause), a panicked guest is over: end it here so the
                 * restart policy can act, and remember why it ended. */
                vm->guest_panicked = true;
                if (vm->state == VM_STATE_RUNNING)
                        (void) qmp_invoke(q, "quit", NULL, manager_get_config(vm->manager)->qmp_timeout_usec,
                                          NULL, NULL);
        }

        log_vm_info(vm->name, "VM '%s': QMP event %s %s", vm->name, name, strempty(json));
        manager_emit(vm->manager, &ev, vm);
}

/* QMP went away during start-up without a handshake timeout: QEMU is almost surely exiting, and its exit
 * (with its stderr) is the better error. Give it a moment; a QEMU that lives on without QMP is failed. */
static int on_start_qmp_lost(sd_event_source *s, uint64_t usec, void *userdata) {
        Vm *vm = userdata;

        vm->start_timer = sd_event_source_disable_unref(vm->start_timer);
        if (vm->state != VM_STATE_STARTING)
                return 0;
        log_vm_error(vm->name, "VM '%s': %s", vm->name, vm->last_error.message);
        (void) vm_dispatch(vm, VM_EVENT_QMP_FAILED, "qmp-failed");
        return 0;
}

static void on_qmp_disconnect(QmpClient *q, int error, void *userdata) {
        Vm *vm = userdata;
        bool was_ready = vm->qmp_ready;

        vm->qmp = qmp_client_free(vm->qmp);
        vm->qmp_ready = false;

        if (vm->state != VM_STATE_STARTING || was_ready) {
                log_vm_debug(vm->name, "VM '%s': QMP disconnected: %s", vm->name, strerror(-error));
                return;
        }

        hydra_error_set(&vm->last_error, HYDRA_ELAUNCH, "QMP handshake with QEMU failed: %s", strerror(-error));
        if (error == -ETIMEDOUT) {
                log_vm_error(vm->name, "VM '%s': %s", vm->name, vm->last_error.message);
                (void) vm_dispatch(vm, VM_EVENT_QMP_FAILED, "qmp-timeout");
                return;
        }
        if (sd_event_add_time_relative(manager_get_event(vm->manager), &vm->start_timer, CLOCK_MONOTONIC,
                                       QMP_LOST_GRACE_USEC, 0, on_start_qmp_lost, vm) < 0)
                (void) on_start_qmp_lost(NULL, 0, vm);
        else
                (void) sd_event_source_set_description(vm->start_timer, "vm-qmp-lost");
}

static const QmpCallbacks qmp_callbacks = {
        .on_ready = on_qmp_ready,
        .on_event = on_qmp_event,
        .on_disconnect = on_qmp_disconnect,
};

/* --- preparation and launch --- */

static Accel resolve_accel(Accel a) {
        _cleanup_close_ int fd = -EBADF;

        if (a != ACCEL_AUTO)
                return a;
        fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
        if (fd < 0 || ioctl(fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
                return ACCEL_TCG;
        return ACCEL_KVM;
}

/* The QEMU binary for the spec's arch: the configured one, or the default name on $PATH. */
static int vm_qemu_binary(Vm *vm, char **ret, HydraError *err) {
        const HydraConfig *cfg = manager_get_config(vm->manager);
        const char *configured = vm->spec.arch == ARCH_AARCH64 ? cfg->qemu_aarch64 : cfg->qemu_x86_64;
        const char *name = configured ? configured : qemu_binary_name(vm->spec.arch);
        int r;

        r = process_find_binary(name, ret);
        if (r < 0)
                return hydra_error_set(err, r, "cannot find QEMU '%s': %s", name, strerror(-r));
        return 0;
}

static int vm_build_argv(Vm *vm, const ProvisionOutput *out, char ***ret_argv, HydraError *err) {
        _cleanup_free_ char *binary = NULL;
        QemuRuntime rt;
        int r;

        r = vm_qemu_binary(vm, &binary, err);
        if (r < 0)
                return r;

        rt = (QemuRuntime) {
                .binary = binary,
                .name = vm->name,
                .accel = resolve_accel(vm->spec.accel),
                .qmp_fd = 3, /* the listening socket is the child's first passed fd */
                .console_socket = vm->qemu_console_path,
                .disk_path = out->disk_path ? out->disk_path : vm->spec.disk,
                .disk_format = out->disk_path ? out->disk_format
                                              : (vm->spec.disk ? disk_format_probe(vm->spec.disk) : NULL),
                .seed_path = out->seed_path,
                .kernel = out->kernel ? out->kernel : vm->spec.kernel,
                .initrd = out->kernel ? out->initrd : vm->spec.initrd,
                .bare_kernel = out->bare_kernel,
                .firmware_vars = out->firmware_vars,
                .shmem_path = out->shmem_path,
        };
        return qemu_argv_build(&vm->spec, &rt, ret_argv, err);
}

static ProvisionContext vm_provision_context(Vm *vm) {
        return (ProvisionContext) {
                .event = manager_get_event(vm->manager),
                .fetcher = manager_get_fetcher(vm->manager),
                .name = vm->name,
                .state_dir = vm->state_dir,
                .cache_dir = manager_get_cache_dir(vm->manager),
        };
}

int vm_plan(Vm *vm, char ***ret_argv, CloudInitFiles *ret_files, HydraError *err) {
        _cleanup_(provision_output_done) ProvisionOutput out = {};
        _cleanup_(cloud_init_files_done) CloudInitFiles files = {};
        ProvisionContext ctx = vm_provision_context(vm);
        int r;

        if (!vm->registered)
                return hydra_error_set(err, HYDRA_ENOTREGISTERED, "VM '%s' is not registered", vm->name);
        r = provision_plan(&ctx, &vm->spec, &out, &files, err);
        if (r < 0)
                return r;
        r = vm_build_argv(vm, &out, ret_argv, err);
        if (r < 0)
                return r;
        *ret_files = files;
        files = (CloudInitFiles) {};
        return 0;
}

char *vm_cloud_init_path(const Vm *vm, const char *name) {
        char *p;

        return asprintf(&p, "%s/cloud-init/%s", vm->state_dir, name) < 0 ? NULL : p;
}

static int check_readable(const char *field, const char *path, HydraError *err) {
        struct stat st;

        if (!path)
                return 0;
        if (stat(path, &st) < 0)
                return hydra_error_set(err, -errno, "%s '%s': %s", field, path, strerror(errno));
        if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
                return hydra_error_set(err, -EINVAL, "%s '%s' is not a regular file", field, path);
        if (access(path, R_OK) < 0)
                return hydra_error_set(err, -errno, "%s '%s': %s", field, path, strerror(errno));
        return 0;
}

static void vm_progress_clear(Vm *vm) {
        vm->progress.step = mfree(vm->progress.step);
        vm->progress.what = mfree(vm->progress.what);
        vm->progress.bytes = vm->progress.total = vm->progress.rate = 0;
}

static void on_provision_progress(const ProvisionProgress *pp, void *userdata) {
        Vm *vm = userdata;
        HydraEvent ev = { .role = vm->role, .type = HYDRA_EVENT_PROGRESS };

        if (!vm->progress.step || !streq(vm->progress.step, pp->step)) {
                free(vm->progress.step);
                vm->progress.step = strdup(pp->step);
                log_vm_info(vm->name, "VM '%s': %s %s", vm->name, pp->step, strempty(pp->what));
        }
        if (!vm->progress.what || !streq(vm->progress.what, strempty(pp->what))) {
                free(vm->progress.what);
                vm->progress.what = strdup(strempty(pp->what));
        }
        vm->progress.bytes = pp->bytes;
        vm->progress.total = pp->total;
        vm->progress.rate = pp->rate;
        manager_emit(vm->manager, &ev, vm);
}

static void on_provision_notice(const char *message, void *userdata) {
        Vm *vm = userdata;
        HydraEvent ev = { .role = vm->role, .type = HYDRA_EVENT_NOTICE, .notice = message };

        manager_emit(vm->manager, &ev, vm);
}

static void on_provision_done(int r, const HydraError *perr, ProvisionOutput *out, void *userdata) {
        Vm *vm = userdata;
        HydraError err;

        vm->provision = NULL;
        vm_progress_clear(vm);
        hydra_error_clear(&err);
        if (r >= 0) {
                provision_output_done(&vm->prepared);
                vm->prepared = *out;
                *out = (ProvisionOutput) {};
                vm->argv = strv_free(vm->argv);
                r = vm_build_argv(vm, &vm->prepared, &vm->argv, &err);
        } else
                err = *perr;
        if (r < 0) {
                vm->last_error = err;
                log_vm_error(vm->name, "VM '%s': preparation failed: %s", vm->name, err.message);
                (void) vm_dispatch(vm, VM_EVENT_PREPARE_FAILED, "prepare-failed");
                return;
        }
        (void) vm_dispatch(vm, VM_EVENT_PREPARED, "prepared");
}

static const ProvisionCallbacks provision_callbacks = {
        .progress = on_provision_progress,
        .notice = on_provision_notice,
        .done = on_provision_done,
};

/* What can be checked at once, then the asynchronous chain (provision.c). */
static int vm_prepare(Vm *vm, HydraError *err) {
        ProvisionContext ctx = vm_provision_context(vm);
        int r;

        r = check_readable("kernel", vm->spec.kernel, err);
        if (r < 0)
                return r;
        r = check_readable("initrd", vm->spec.initrd, err);
        if (r < 0)
                return r;
        r = check_readable("disk", vm->spec.disk, err);
        if (r < 0)
                return r;
        if (vm->spec.disk && access(vm->spec.disk, W_OK) < 0)
                return hydra_error_set(err, -errno, "disk '%s' is not writable: %s", vm->spec.disk, strerror(errno));
        r = check_readable("firmware.code", vm->spec.firmware_code, err);
        if (r < 0)
                return r;

        r = mkdir_p(vm->state_dir, 0750);
        if (r < 0)
                return hydra_error_set(err, r, "create '%s': %s", vm->state_dir, strerror(-r));
        r = mkdir_p(vm->run_dir, 0750);
        if (r < 0)
                return hydra_error_set(err, r, "create '%s': %s", vm->run_dir, strerror(-r));
        r = mkdir_p(ctx.cache_dir, 0750);
        if (r < 0)
                return hydra_error_set(err, r, "create '%s': %s", ctx.cache_dir, strerror(-r));

        vm_progress_clear(vm);
        return provision_start(&ctx, &vm->spec, &provision_callbacks, vm, &vm->provision, err);
}

static int qmp_listen(const char *path, int *ret_listen_fd, int *ret_client_fd, HydraError *err) {
        _cleanup_close_ int lfd = -EBADF, cfd = -EBADF;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };

        if (strlen(path) >= sizeof(sa.sun_path))
                return hydra_error_set(err, -ENAMETOOLONG, "QMP socket path '%s' is too long", path);
        strcpy(sa.sun_path, path);
        (void) unlink(path);

        lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (lfd < 0)
                return hydra_error_set(err, -errno, "QMP socket: %s", strerror(errno));
        if (bind(lfd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return hydra_error_set(err, -errno, "bind QMP socket '%s': %s", path, strerror(errno));
        (void) chmod(path, 0600);
        if (listen(lfd, 1) < 0)
                return hydra_error_set(err, -errno, "listen on '%s': %s", path, strerror(errno));

        /* Connect now: the connection waits in the backlog until QEMU's monitor accepts it, so there is no
         * polling for the socket to appear. */
        cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (cfd < 0)
                return hydra_error_set(err, -errno, "QMP socket: %s", strerror(errno));
        if (connect(cfd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return hydra_error_set(err, -errno, "connect to '%s': %s", path, strerror(errno));

        *ret_listen_fd = TAKE_FD(lfd);
        *ret_client_fd = TAKE_FD(cfd);
        return 0;
}

static int vm_launch(Vm *vm, HydraError *err) {
        _cleanup_close_ int lfd = -EBADF, cfd = -EBADF, efd = -EBADF, pidfd = -EBADF;
        sd_event *e = manager_get_event(vm->manager);
        ProcessSpawn spawn;
        pid_t pid;
        int r;

        r = vm_console_open(vm, err);
        if (r < 0)
                return hydra_error_prefix(err, "serial console: ");
        (void) unlink(vm->qemu_console_path);
        vm_ready_begin(vm);

        r = qmp_listen(vm->qmp_path, &lfd, &cfd, err);
        if (r < 0)
                return r;

        efd = open(vm->stderr_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0640);
        if (efd < 0)
                return hydra_error_set(err, -errno, "open '%s': %s", vm->stderr_path, strerror(errno));

        spawn = (ProcessSpawn) {
                .path = vm->argv[0],
                .argv = vm->argv,
                .pass_fds = &lfd,
                .n_pass_fds = 1,
                .stdout_fd = efd,
                .stderr_fd = efd,
        };
        r = process_spawn(&spawn, &pid, &pidfd, err);
        if (r < 0)
                return hydra_error_prefix(err, "spawn QEMU: ");

        vm->pid = pid;
        vm->spawn_usec = now_usec(CLOCK_MONOTONIC);
        vm->guest_shutdown_seen = false;
        vm->guest_panicked = false;
        vm->stop_stage = STOP_STAGE_NONE;
        (void) process_get_start_time(pid, &vm->start_ticks);

        r = sd_event_add_child_pidfd(e, &vm->child_source, pidfd, WEXITED, on_qemu_exit, vm);
        if (r < 0) {
                (void) process_pidfd_signal(pidfd, SIGKILL);
                (void) waitpid(pid, NULL, 0);
                vm->pid = 0;
                return hydra_error_set(err, r, "watch QEMU (pid %d): %s", (int) pid, strerror(-r));
        }
        (void) sd_event_source_set_child_pidfd_own(vm->child_source, true);
        TAKE_FD(pidfd);
        (void) sd_event_source_set_description(vm->child_source, "qemu-exit");

        log_vm_info(vm->name, "VM '%s': QEMU started (pid %d)", vm->name, (int) pid);
        vm_runtime_save(vm);

        r = qmp_client_new(e, TAKE_FD(cfd), vm->name, QMP_HANDSHAKE_TIMEOUT_USEC, &qmp_callbacks, vm, &vm->qmp);
        if (r < 0)
                return hydra_error_set(err, r, "QMP client: %s", strerror(-r));
        return 0;
}


/* --- re-adoption --- */

static void vm_adopt_lost(Vm *vm, pid_t pid, const char *recorded_state, const char *why) {
        bool was_stopping = recorded_state && streq(recorded_state, "stopping");

        vm->last_exit = (VmExit) { .exited = true, .time_usec = now_usec(CLOCK_REALTIME), .code = -1 };
        (void) snprintf(vm->last_exit.reason, sizeof(vm->last_exit.reason), "%s", was_stopping ? "quit" : "lost");
        if (!was_stopping)
                (void) hydra_error_set(&vm->last_error, HYDRA_ELAUNCH,
                                       "QEMU (pid %d) of the previous hydrad %s while hydrad was not running; its "
                                       "exit status is unknown", (int) pid, why);
        log_vm_warning(vm->name, "VM '%s': QEMU (pid %d) of the previous hydrad %s; not adopted", vm->name, (int) pid,
                       why);
        (void) vm_dispatch(vm, was_stopping ? VM_EVENT_LOST_STOPPING : VM_EVENT_LOST, was_stopping ? "stopped" : "lost");
}

/* A QEMU a previous hydrad spawned but died before recording: our uid, our QEMU binary, and our console chardev as
 * a whole argument (a path only it was given). Returns its pid or 0. */
static pid_t vm_find_unrecorded_qemu(Vm *vm) {
        _cleanup_free_ char *binary = NULL, *exe = NULL, *chardev = NULL;
        HydraError err;

        hydra_error_clear(&err);
        if (vm_qemu_binary(vm, &binary, &err) < 0)
                return 0;
        exe = realpath(binary, NULL);
        chardev = qemu_console_chardev(vm->qemu_console_path);
        if (!exe || !chardev)
                return 0;
        return process_find_by_option(exe, "-chardev", chardev);
}

int vm_adopt(Vm *vm) {
        _cleanup_close_ int pidfd = -EBADF;
        _cleanup_free_ void *data = NULL;
        const char *qmp = NULL, *state = NULL, *disk = NULL, *seed = NULL;
        json_int_t pid = 0, ticks = 0, spawned = 0, ready_since = 0;
        uint64_t now_ticks = 0, mono, real;
        HydraError err;
        json_t *o;
        size_t size;
        int r;

        hydra_error_clear(&err);
        r = store_read(vm->run_dir, RUNTIME_FILE, 64 * 1024, &data, &size, &err);
        if (r < 0 && r != -ENOENT)
                log_vm_warning(vm->name, "VM '%s': %s; ignoring it", vm->name, err.message);
        o = r >= 0 ? json_loadb(data, size, 0, NULL) : NULL;
        if (r >= 0 && (!o || json_unpack(o, "{s:I, s:I, s:s, s?I, s?s, s?s, s?s, s?I}", "pid", &pid, "start_time",
                                         &ticks, "qmp_socket", &qmp, "spawn_realtime_usec", &spawned, "state", &state,
                                         "disk_path", &disk, "seed_path", &seed, "ready_since_usec",
                                         &ready_since) < 0 || pid <= 1)) {
                log_vm_warning(vm->name, "VM '%s': '%s/%s' is not a valid runtime record; ignoring it", vm->name,
                               vm->run_dir, RUNTIME_FILE);
                (void) store_remove(vm->run_dir, RUNTIME_FILE);
                pid = 0;
        }

        /* The identity is pid + start time, checked again once we hold a pidfd: a pid reused in between would
         * be caught by the second check, and from then on the pidfd pins the process. */
        if (pid > 1)
                pidfd = process_pidfd_open((pid_t) pid);
        if (pid <= 1 || pidfd < 0 || process_get_start_time((pid_t) pid, &now_ticks) < 0 ||
            now_ticks != (uint64_t) ticks) {
                /* A previous hydrad that died between spawning QEMU and recording it leaves a QEMU no record names:
                 * it is found by its console socket, a path given to no other process, and taken back. */
                const char *why = pidfd < 0 || now_ticks == 0 ? "exited"
                                                              : "exited (its pid now belongs to another process)";
                pid_t found = vm_find_unrecorded_qemu(vm);
                uint64_t found_ticks = 0;

                pidfd = safe_close(pidfd);
                if (found > 1 && (pidfd = process_pidfd_open(found)) >= 0 &&
                    process_get_start_time(found, &found_ticks) >= 0) {
                        log_vm_warning(vm->name, "VM '%s': QEMU (pid %d) was started by the previous hydrad but not "
                                       "recorded (it stopped during the start); adopting it", vm->name, (int) found);
                        if (vm->prepare_interrupted) /* it was not: it got as far as this QEMU */
                                hydra_error_clear(&vm->last_error);
                        pid = found;
                        ticks = (json_int_t) found_ticks;
                        spawned = 0;
                        state = "starting";
                        disk = seed = NULL;
                        ready_since = 0;
                } else {
                        pidfd = safe_close(pidfd);
                        if (pid > 1)
                                vm_adopt_lost(vm, (pid_t) pid, state, why);
                        json_decref(o);
                        return 0;
                }
        }
        if (!qmp)
                qmp = vm->qmp_path;
        if (!streq(qmp, vm->qmp_path))
                log_vm_warning(vm->name, "VM '%s': the recorded QMP socket '%s' is not this hydrad's '%s'", vm->name,
                               qmp, vm->qmp_path);

        vm->pid = (pid_t) pid;
        vm->start_ticks = (uint64_t) ticks;
        vm->adopted = true;
        vm->resume_stop = state && streq(state, "stopping");
        mono = now_usec(CLOCK_MONOTONIC);
        real = now_usec(CLOCK_REALTIME);
        vm->spawn_usec = spawned > 0 && (uint64_t) spawned <= real && real - (uint64_t) spawned < mono
                                 ? mono - (real - (uint64_t) spawned)
                                 : mono;
        if (disk)
                vm->prepared.disk_path = strdup(disk);
        if (seed)
                vm->prepared.seed_path = strdup(seed);
        json_decref(o);
        if (ready_since > 0)
                vm_services_restore_ready(vm, (uint64_t) ready_since);
        else
                vm_ready_begin(vm);
        if (vm_console_open(vm, &err) < 0)
                log_vm_warning(vm->name, "VM '%s': serial console: %s", vm->name, err.message);

        r = sd_event_add_io(manager_get_event(vm->manager), &vm->child_source, pidfd, EPOLLIN, on_adopted_exit, vm);
        if (r < 0) {
                log_vm_error_errno(vm->name, r, "VM '%s': cannot watch the adopted QEMU (pid %d): %m", vm->name,
                                   (int) pid);
                vm->pid = 0;
                vm->adopted = false;
                return 0;
        }
        (void) sd_event_source_set_io_fd_own(vm->child_source, true);
        TAKE_FD(pidfd);
        (void) sd_event_source_set_description(vm->child_source, "qemu-exit-adopted");

        log_vm_info(vm->name, "VM '%s': adopting QEMU (pid %d) of the previous hydrad%s", vm->name, (int) pid,
                    vm->resume_stop ? "; it was stopping" : "");
        (void) vm_dispatch(vm, VM_EVENT_ADOPT, "adopting");
        return 1;
}

/* The ADOPT action. QEMU's QMP server accepts a new client once the old one (the previous hydrad) is gone. A QEMU
 * that does not answer in time goes the way of a failed start: stopped in stages, never left behind. */
static int vm_adopt_qmp(Vm *vm, HydraError *err) {
        _cleanup_close_ int fd = -EBADF;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int r;

        if (strlen(vm->qmp_path) >= sizeof(sa.sun_path))
                return hydra_error_set(err, -ENAMETOOLONG, "adopting QEMU (pid %d): QMP socket path '%s' is too long",
                                       (int) vm->pid, vm->qmp_path);
        strcpy(sa.sun_path, vm->qmp_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return hydra_error_set(err, -errno, "adopting QEMU (pid %d): cannot connect to QMP at '%s': %m",
                                       (int) vm->pid, vm->qmp_path);
        r = qmp_client_new(manager_get_event(vm->manager), TAKE_FD(fd), vm->name, ADOPT_QMP_TIMEOUT_USEC,
                           &qmp_callbacks, vm, &vm->qmp);
        if (r < 0)
                return hydra_error_set(err, r, "adopting QEMU (pid %d): QMP client: %s", (int) vm->pid, strerror(-r));
        return 0;
}

/* --- the executor --- */

static int vm_act(Vm *vm, VmAction action) {
        HydraError err;
        int r;

        hydra_error_clear(&err);
        switch (action) {
        case VM_ACTION_NONE:
                return 0;
        case VM_ACTION_PREPARE:
                hydra_error_clear(&vm->last_error);
                r = vm_prepare(vm, &err);
                if (r < 0) {
                        vm->last_error = err;
                        log_vm_error(vm->name, "VM '%s': preparation failed: %s", vm->name, err.message);
                        return vm_dispatch(vm, VM_EVENT_PREPARE_FAILED, "prepare-failed");
                }
                return 0;
        case VM_ACTION_LAUNCH:
                r = vm_launch(vm, &err);
                if (r < 0) {
                        vm->last_error = err;
                        log_vm_error(vm->name, "VM '%s': launch failed: %s", vm->name, err.message);
                        return vm_dispatch(vm, VM_EVENT_LAUNCH_FAILED, "launch-failed");
                }
                return 0;
        case VM_ACTION_ADOPT:
                r = vm_adopt_qmp(vm, &err);
                if (r < 0) {
                        (void) hydra_error_set(&vm->last_error, HYDRA_ELAUNCH, "%s", err.message);
                        log_vm_error(vm->name, "VM '%s': %s", vm->name, err.message);
                        return vm_dispatch(vm, VM_EVENT_ADOPT_FAILED, "adopt-failed");
                }
                return 0;
        case VM_ACTION_STOP:
                stop_advance(vm, STOP_STAGE_POWERDOWN);
                return 0;
        case VM_ACTION_KILL:
                if (vm->pid <= 0)
                        return 0;
                if (vm->stop_stage < STOP_STAGE_QUIT)
                        stop_advance(vm, STOP_STAGE_QUIT);
                return 0;
        case VM_ACTION_CANCEL:
                /* The download, unpack or helper in flight stops and its partial files go. */
                provision_cancel(vm->provision);
                vm->provision = NULL;
                vm_progress_clear(vm);
                return 0;
        case VM_ACTION_REAP:
                vm_teardown_process(vm);
                return 0;
        case VM_ACTION_REMOVE:
                return vm_remove(vm);
        default:
                return -EINVAL;
        }
}

int vm_dispatch(Vm *vm, VmEvent event, const char *reason) {
        VmTransition t;
        int r;

        r = vm_state_transition(vm->state, event, &t);
        if (r < 0) {
                log_vm_debug(vm->name, "VM '%s': event %s refused in state %s", vm->name, vm_event_to_string(event),
                             vm_state_to_string(vm->state));
                return r;
        }
        if (t.action == VM_ACTION_REMOVE) {
                /* Forgetting comes before the state, which is announced even when it stays "defined": a
                 * subscriber that reads the VM on the event finds it gone. */
                r = vm_act(vm, t.action);
                vm_set_state(vm, t.next, reason ? reason : vm_event_to_string(event), true);
                return r;
        }
        vm_set_state(vm, t.next, reason ? reason : vm_event_to_string(event), false);
        return vm_act(vm, t.action);
}

/* --- operations --- */

/* A client that read the spec back (GetVm) and registers it again sends secrets as "(set)": they mean "keep the
 * one stored". */
static int keep_secret(char **s, const char *stored) {
        if (!*s || !streq(*s, "(set)"))
                return 0;
        free(*s);
        *s = stored ? strdup(stored) : NULL;
        return !stored || *s ? 0 : -ENOMEM;
}

int vm_register(Vm *vm, VmSpec *spec, bool apply_on_next_start, bool *ret_changed, HydraError *err) {
        const SpecCodec *codec = manager_get_codec(vm->manager);
        const VmSpec *old = vm->registered ? &vm->spec : &(VmSpec) {};
        _cleanup_free_ void *data = NULL;
        size_t size;
        int r;

        if (keep_secret(&spec->image.password, old->image.password) < 0 ||
            keep_secret(&spec->image.token, old->image.token) < 0 ||
            keep_secret(&spec->bare.artifact.password, old->bare.artifact.password) < 0 ||
            keep_secret(&spec->bare.artifact.token, old->bare.artifact.token) < 0)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        if (spec->guest.password && streq(spec->guest.password, "(set)"))
                spec->guest.password = mfree(spec->guest.password);
        /* A cleartext password from a client other than hydractl: hashed before anything else sees it, keeping
         * the stored hash when it is the same password (a new salt would change the guest configuration and
         * reset the disk on every register). */
        if (spec->guest.password && old->guest.password_hash && !spec->guest.password_hash &&
            vm_spec_password_matches(spec->guest.password, old->guest.password_hash)) {
                explicit_bzero(spec->guest.password, strlen(spec->guest.password));
                spec->guest.password = mfree(spec->guest.password);
                spec->guest.password_hash = strdup(old->guest.password_hash);
                if (!spec->guest.password_hash)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        r = vm_spec_hash_password(spec, err);
        if (r < 0)
                return r;

        r = vm_spec_apply_defaults(spec);
        if (r < 0)
                return hydra_error_set(err, r, "out of memory");
        r = vm_spec_validate(spec, err);
        if (r < 0)
                return r;

        if (vm->registered && vm_spec_equal(&vm->spec, spec)) {
                vm_spec_done(spec);
                *ret_changed = false;
                return 0;
        }
        if (vm->registered && !vm_is_down(vm) && !apply_on_next_start)
                return hydra_error_set(err, -EBUSY,
                                       "VM '%s' is %s: stop it first, or register with apply_on_next_start to use "
                                       "the new spec at its next start",
                                       vm->name, vm_state_to_string(vm->state));

        r = codec->encode(spec, &data, &size);
        if (r < 0)
                return hydra_error_set(err, r, "encode spec: %s", strerror(-r));
        r = mkdir_p(vm->state_dir, 0750);
        if (r < 0)
                return hydra_error_set(err, r, "create '%s': %s", vm->state_dir, strerror(-r));
        /* 0600: the spec may hold download credentials. */
        r = store_write_atomic(vm->state_dir, SPEC_FILE, data, size, 0600, err);
        if (r < 0)
                return r;

        vm_spec_done(&vm->spec);
        vm->spec = *spec;
        *spec = (VmSpec) {};
        vm->generation++;
        log_vm_info(vm->name, "VM '%s': spec registered (generation %llu)", vm->name,
                    (unsigned long long) vm->generation);
        if (!vm->registered) {
                vm->registered = true;
                vm->state = VM_STATE_DEFINED;
                HydraEvent ev = { .role = vm->role, .type = HYDRA_EVENT_STATE, .from = VM_STATE_DEFINED,
                                  .to = VM_STATE_DEFINED, .reason = "registered" };
                manager_emit(vm->manager, &ev, vm);
                /* A QEMU left running under a stored spec that could not be read: registering again takes it
                 * back instead of leaving it unknown. */
                if (vm->pid <= 0)
                        (void) vm_adopt(vm);
        }
        *ret_changed = true;
        return 0;
}

int vm_load(Vm *vm, HydraError *err) {
        const SpecCodec *codec = manager_get_codec(vm->manager);
        _cleanup_free_ void *data = NULL;
        VmSpec spec = {};
        size_t size;
        int r;

        r = store_read_trusted(vm->state_dir, SPEC_FILE, SPEC_MAX_SIZE, &data, &size, err);
        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return r;
        /* An empty message decodes as an all-defaults spec: a stored spec is never empty, so this is a truncation. */
        if (size == 0)
                return hydra_error_set(err, -EBADMSG, "'%s/%s' is empty (truncated)", vm->state_dir, SPEC_FILE);
        r = codec->decode(data, size, &spec, err);
        if (r < 0)
                return hydra_error_prefix(err, "'%s/%s': ", vm->state_dir, SPEC_FILE);
        r = vm_spec_apply_defaults(&spec);
        if (r >= 0)
                r = vm_spec_validate(&spec, err);
        if (r < 0) {
                vm_spec_done(&spec);
                return hydra_error_prefix(err, "'%s/%s': ", vm->state_dir, SPEC_FILE);
        }
        vm->spec = spec;
        vm->generation = 1;
        vm->registered = true;
        vm->state = VM_STATE_DEFINED;
        vm_state_load(vm);
        return 1;
}

void vm_ready_changed(Vm *vm) {
        vm_check_ops(vm);
}

int vm_start(Vm *vm, bool wait_ready, uint64_t timeout_usec, vm_op_done_t done, void *userdata, VmOp **ret_op,
             HydraError *err) {
        int r;

        if (!vm->registered)
                return hydra_error_set(err, HYDRA_ENOTREGISTERED, "VM '%s' is not registered", vm->name);
        if (wait_ready && vm->spec.supervision.probe == PROBE_NONE)
                return hydra_error_set(err, -EINVAL, "VM '%s' has no readiness probe (supervision.probe is none): "
                                       "it never becomes ready; wait for running instead", vm->name);
        if (vm->state == VM_STATE_RUNNING && (!wait_ready || vm->ready))
                return 1;
        if (vm->pid > 0 && !vm_state_has_process(vm->state))
                return hydra_error_set(err, -EBUSY, "the previous QEMU of VM '%s' (pid %d) is still exiting",
                                       vm->name, (int) vm->pid);

        /* A client's start: now, not after the backoff, and the restart policy counts afresh. */
        if (vm_is_down(vm)) {
                vm_restart_cancel(vm);
                restart_tracker_reset(&vm->restarts);
                vm->restarting = false;
        }
        r = vm_dispatch(vm, VM_EVENT_START, "start");
        if (r == -EBUSY)
                return hydra_error_set(err, r, "VM '%s' is %s; start it once it has stopped", vm->name,
                                       vm_state_to_string(vm->state));
        if (r < 0)
                return hydra_error_set(err, r, "start VM '%s': %s", vm->name, strerror(-r));

        if (vm->state == VM_STATE_RUNNING && (!wait_ready || vm->ready))
                return 1;
        if (vm->state == VM_STATE_FAILED)
                return vm_error(vm, err);

        r = op_new(vm, VM_OP_START, timeout_usec, done, userdata, ret_op);
        if (r < 0)
                return hydra_error_set(err, r, "out of memory");
        (*ret_op)->wait_ready = wait_ready;
        return 0;
}

int vm_autostart(Vm *vm) {
        const char *why;
        int r;

        if (!vm->registered || !vm_is_down(vm) || vm->pid > 0)
                return 0;
        if (vm->spec.supervision.autostart)
                why = "autostart";
        else if (vm->state == VM_STATE_CRASHED && vm->spec.supervision.restart != RESTART_NO)
                why = "restart"; /* it crashed before hydrad restarted: the policy still applies */
        else
                return 0;

        log_vm_info(vm->name, "VM '%s': starting (%s)", vm->name, why);
        vm->restarting = true;
        r = vm_dispatch(vm, VM_EVENT_START, why);
        if (r < 0) {
                log_vm_warning_errno(vm->name, r, "VM '%s': %s refused in state %s: %m", vm->name, why,
                                     vm_state_to_string(vm->state));
                vm->restarting = false;
                return 0;
        }
        return 1;
}

int vm_stop(Vm *vm, bool force, uint64_t timeout_usec, vm_op_done_t done, void *userdata, VmOp **ret_op,
            HydraError *err) {
        int r;

        if (!vm->registered)
                return hydra_error_set(err, HYDRA_ENOTREGISTERED, "VM '%s' is not registered", vm->name);
        /* A stop also means: no more restarts until the next start. */
        if (vm->restart_timer)
                vm_notice(vm, "restart cancelled by a stop");
        vm_restart_cancel(vm);
        restart_tracker_reset(&vm->restarts);
        vm->restarting = false;
        if (vm_is_down(vm))
                return 1;

        /* A later, shorter timeout never lengthens one already running; force escalates. */
        if (vm->state != VM_STATE_STOPPING)
                vm->stop_timeout_usec = timeout_usec > 0 ? timeout_usec
                                        : vm->spec.supervision.stop_timeout_sec > 0
                                                ? vm->spec.supervision.stop_timeout_sec * 1000000ULL
                                                : manager_get_config(vm->manager)->stop_timeout_usec;
        r = vm_dispatch(vm, force ? VM_EVENT_STOP_FORCE : VM_EVENT_STOP, force ? "stop-force" : "stop");
        if (r < 0)
                return hydra_error_set(err, r, "stop VM '%s' (%s): %s", vm->name, vm_state_to_string(vm->state),
                                       strerror(-r));
        if (vm_is_down(vm))
                return 1;

        r = op_new(vm, VM_OP_STOP, 0, done, userdata, ret_op);
        if (r < 0)
                return hydra_error_set(err, r, "out of memory");
        return 0;
}

static bool other_vm_uses(Vm *vm, const char *url) {
        for (Role role = 0; role < _ROLE_MAX; role++) {
                Vm *o = manager_get_vm(vm->manager, role);

                if (o == vm || !o->registered)
                        continue;
                if ((o->spec.image.url && streq(o->spec.image.url, url)) ||
                    (o->spec.bare.artifact.url && streq(o->spec.bare.artifact.url, url)))
                        return true;
        }
        return false;
}

static void remove_cached(Vm *vm, const char *url) {
        _cleanup_free_ char *entry = NULL;
        int r;

        if (isempty(url) || other_vm_uses(vm, url))
                return;
        entry = fetch_cache_entry(manager_get_cache_dir(vm->manager), url);
        if (!entry)
                return;
        r = rm_rf(entry);
        if (r < 0)
                log_vm_warning_errno(vm->name, r, "VM '%s': cannot remove '%s', ignoring: %m", vm->name, entry);
        else
                log_vm_info(vm->name, "VM '%s': removed cached download %s", vm->name, entry);
}

/* The REMOVE action: forgets the VM: stored spec, disk-side state, runtime files, and unless asked to keep them,
 * the downloads no other VM uses. */
static int vm_remove(Vm *vm) {
        int r;

        vm->destroy_pending = false;
        if (!vm->destroy_keep_cache) {
                remove_cached(vm, vm->spec.image.url);
                remove_cached(vm, vm->spec.bare.artifact.url);
        }
        provision_output_done(&vm->prepared);
        vm_services_free(vm);
        r = rm_rf(vm->state_dir);
        if (r < 0)
                log_vm_warning_errno(vm->name, r, "VM '%s': cannot remove '%s', ignoring: %m", vm->name, vm->state_dir);
        r = rm_rf(vm->run_dir);
        if (r < 0)
                log_vm_warning_errno(vm->name, r, "VM '%s': cannot remove '%s', ignoring: %m", vm->name, vm->run_dir);

        vm_spec_done(&vm->spec);
        vm->argv = strv_free(vm->argv);
        vm->registered = false;
        vm->generation = 0;
        vm->restart_count = 0;
        vm->last_exit = (VmExit) {};
        hydra_error_clear(&vm->last_error);
        log_vm_info(vm->name, "VM '%s': destroyed", vm->name);
        return 0;
}

int vm_destroy(Vm *vm, bool keep_cache, vm_op_done_t done, void *userdata, VmOp **ret_op, HydraError *err) {
        int r;

        if (!vm->registered)
                return hydra_error_set(err, HYDRA_ENOTREGISTERED, "VM '%s' is not registered", vm->name);
        vm->destroy_keep_cache = keep_cache;
        vm_restart_cancel(vm);
        restart_tracker_reset(&vm->restarts);
        if (vm_is_down(vm)) {
                r = vm_dispatch(vm, VM_EVENT_DESTROY, "destroyed");
                if (r < 0)
                        return hydra_error_set(err, r, "destroy VM '%s' (%s): %s", vm->name,
                                               vm_state_to_string(vm->state), strerror(-r));
                return 1;
        }

        r = op_new(vm, VM_OP_DESTROY, 0, done, userdata, ret_op);
        if (r < 0)
                return hydra_error_set(err, r, "out of memory");
        vm->destroy_pending = true;
        r = vm_dispatch(vm, VM_EVENT_STOP_FORCE, "destroy");
        if (r < 0) {
                *ret_op = op_free(*ret_op);
                vm->destroy_pending = false;
                return hydra_error_set(err, r, "destroy VM '%s' (%s): %s", vm->name, vm_state_to_string(vm->state),
                                       strerror(-r));
        }
        return 0;
}

/* --- object --- */

int vm_new(Manager *m, Role role, Vm **ret) {
        const HydraConfig *cfg = manager_get_config(m);
        Vm *vm;

        vm = calloc(1, sizeof(*vm));
        if (!vm)
                return -ENOMEM;
        vm->manager = m;
        vm->role = role;
        vm->name = role_to_string(role);
        vm->state = VM_STATE_DEFINED;

        if (asprintf(&vm->state_dir, "%s/%s", cfg->state_dir, vm->name) < 0 ||
            asprintf(&vm->run_dir, "%s/%s", cfg->run_dir, vm->name) < 0 ||
            asprintf(&vm->qmp_path, "%s/qmp.sock", vm->run_dir) < 0 ||
            asprintf(&vm->console_path, "%s/console.log", vm->state_dir) < 0 ||
            asprintf(&vm->stderr_path, "%s/qemu.log", vm->state_dir) < 0 ||
            asprintf(&vm->console_sock_path, "%s/console.sock", vm->run_dir) < 0 ||
            asprintf(&vm->qemu_console_path, "%s/qemu-console.sock", vm->run_dir) < 0 ||
            asprintf(&vm->cri_path, "%s/containerd.sock", vm->run_dir) < 0) {
                vm_free(vm);
                return -ENOMEM;
        }
        *ret = vm;
        return 0;
}

Vm *vm_free(Vm *vm) {
        if (!vm)
                return NULL;
        while (vm->ops)
                op_free(vm->ops);
        provision_cancel(vm->provision);
        vm_progress_clear(vm);
        provision_output_done(&vm->prepared);
        vm_drives_clear(vm);
        /* Drop our handles only: the QEMU process keeps running (on-exit = leave). */
        vm->qmp = qmp_client_free(vm->qmp);
        vm->child_source = sd_event_source_disable_unref(vm->child_source);
        vm->stop_timer = sd_event_source_disable_unref(vm->stop_timer);
        vm->start_timer = sd_event_source_disable_unref(vm->start_timer);
        vm_restart_cancel(vm);
        restart_tracker_done(&vm->restarts);
        vm_services_free(vm);
        vm_spec_done(&vm->spec);
        strv_free(vm->argv);
        free(vm->console_sock_path);
        free(vm->qemu_console_path);
        free(vm->cri_path);
        free(vm->state_dir);
        free(vm->run_dir);
        free(vm->qmp_path);
        free(vm->console_path);
        free(vm->stderr_path);
        free(vm);
        return NULL;
}
