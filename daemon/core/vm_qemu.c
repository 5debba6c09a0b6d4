/* SPDX-License-Identifier: MIT */
/* The QEMU side of a Vm: launching it (argv, QMP socket, console, spawn), driving it over QMP, the staged stop,
 * its exit, and taking back a QEMU that a previous hydrad started (adoption). The state changes all go through
 * vm_dispatch(); this file performs the LAUNCH, ADOPT, STOP, KILL and REAP actions and reports what QEMU does. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <linux/kvm.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cache.h"
#include "fs.h"
#include "log.h"
#include "process.h"
#include "qemu_argv.h"
#include "store.h"
#include "vm-internal.h"

#define QMP_HANDSHAKE_TIMEOUT_USEC (30ULL * 1000000ULL)
#define STOP_QUIT_GRACE_USEC (5ULL * 1000000ULL)
#define STOP_SIGTERM_GRACE_USEC (5ULL * 1000000ULL)
#define STOP_SIGKILL_GRACE_USEC (10ULL * 1000000ULL)
#define STDERR_TAIL_MAX 2048
#define QMP_LOST_GRACE_USEC (5ULL * 1000000ULL)
#define ADOPT_QMP_TIMEOUT_USEC (10ULL * 1000000ULL)
/* The console lines quoted in a ready-timeout error: a few hundred bytes. */
#define READY_TIMEOUT_TAIL_MAX 400
#define READY_TIMEOUT_DETAIL_MAX 480

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


uint64_t vm_uptime_usec(const Vm *vm) {
        if (vm->pid <= 0 || vm->spawn_usec == 0)
                return 0;
        return vm_now_usec(CLOCK_MONOTONIC) - vm->spawn_usec;
}

/* --- the process --- */


void vm_teardown_process(Vm *vm) {
        vm_services_down(vm->services);
        console_disconnect(vm_services_console(vm->services));
        if (vm->qemu_console_path)
                (void) unlink(vm->qemu_console_path);
        vm_drives_clear(vm);
        vm->qmp = qmp_client_free(vm->qmp);
        vm->qmp_ready = false;
        vm->child_source = sd_event_source_disable_unref(vm->child_source);
        vm->stop_timer = sd_event_source_disable_unref(vm->stop_timer);
        vm->start_timer = sd_event_source_disable_unref(vm->start_timer);
        vm_ready_timer_disarm(vm);
        vm->ready_timed_out = false;
        vm->stop_stage = STOP_STAGE_NONE;
        vm->stop_pending = STOP_STAGE_NONE;
        vm->pid = 0;
        vm->start_ticks = 0;
        vm->spawn_usec = 0;
        vm->adopted = false;
        vm->resume_stop = false;
        /* The scope goes with QEMU; machined forgets the machine then. */
        vm->machine_job = machine_job_free(vm->machine_job);
        vm->machine_name = mfree(vm->machine_name);
        vm->machine_scope = mfree(vm->machine_scope);
        if (vm->qmp_path)
                (void) unlink(vm->qmp_path);
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

        vm->last_exit = (VmExit) { .exited = true, .time_usec = vm_now_usec(CLOCK_REALTIME), .code = code,
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
                char tail[STDERR_TAIL_MAX], busy[256];

                reason = "launch-failed";
                event = VM_EVENT_EXIT_UNEXPECTED;
                read_stderr_tail(vm->stderr_path, tail, sizeof(tail));
                if (!vm->last_exit.signal && qemu_hostfwd_error(tail, busy, sizeof(busy)) > 0)
                        /* Taken between hydrad's check at launch and QEMU's bind, or not visible to the check. */
                        hydra_error_set(&vm->last_error, -EADDRINUSE, "%s (QEMU exited with status %d: %s)", busy,
                                        vm->last_exit.code, tail);
                else if (vm->last_exit.signal)
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
        } else if (vm->ready_timed_out) {
                /* hydrad stopped it: the VM is failed already, last_error says why. */
                reason = "ready-timeout";
                event = VM_EVENT_EXIT_UNEXPECTED;
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
        else {
                /* A QEMU we were already killing after a failed start: nothing changes but ops may finish, and
                 * the record gets its exit. */
                vm_state_save(vm);
                vm_runtime_remove(vm);
                vm_check_ops(vm);
        }
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

/* --- the readiness deadline --- */

/* Copies s, cut to at most size - 1 bytes on a whole UTF-8 character (the message is a proto3 string). */
static const char *utf8_copy_cut(char *buf, size_t size, const char *s) {
        size_t n = strlen(s);

        if (n >= size) {
                n = size - 1;
                while (n > 0 && ((unsigned char) s[n] & 0xc0) == 0x80)
                        n--;
        }
        memcpy(buf, s, n);
        buf[n] = '\0';
        return buf;
}

static int on_ready_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        char tail[READY_TIMEOUT_TAIL_MAX + 1], detail_buf[READY_TIMEOUT_DETAIL_MAX + 1];
        Vm *vm = userdata;
        const char *detail;

        vm->ready_timer = sd_event_source_disable_unref(vm->ready_timer);
        if ((vm->state != VM_STATE_STARTING && vm->state != VM_STATE_RUNNING) ||
            vm_services_ready(vm->services, NULL, &detail))
                return 0;

        /* The console as it passed through hydrad (kept in memory): no file is read on the loop. Both parts are
         * bounded so that the message fits HydraError whole. */
        (void) vm_services_console_tail(vm->services, tail, sizeof(tail));
        (void) hydra_error_set(&vm->last_error, HYDRA_ELAUNCH, "not ready within %" PRIu32 " s: %s; console: %s",
                               vm->spec.supervision.ready_timeout_sec,
                               detail ? utf8_copy_cut(detail_buf, sizeof(detail_buf), detail)
                               : vm->state == VM_STATE_STARTING ? "QEMU did not answer QMP"
                               : vm->spec.supervision.probe == PROBE_CONSOLE ? "no console line matched the pattern"
                                                                             : "the probe has not passed",
                               *tail ? tail : "(nothing)");
        log_vm_error(vm->name, "VM '%s': %s; stopping it", vm->name, vm->last_error.message);
        vm->ready_timed_out = true;
        (void) vm_dispatch(vm, VM_EVENT_READY_TIMEOUT, "ready-timeout");
        return 0;
}

void vm_ready_timer_arm(Vm *vm) {
        uint32_t sec = vm->spec.supervision.ready_timeout_sec;
        int r;

        vm_ready_timer_disarm(vm);
        if (sec == 0 || vm->spec.supervision.probe == PROBE_NONE || vm->pid <= 0 || vm->spawn_usec == 0 ||
            vm_services_ready(vm->services, NULL, NULL))
                return;
        /* From QEMU's start: an adopted QEMU keeps the deadline its spawn set (it may have passed: fires at once). */
        r = sd_event_add_time(vm->ctx.event, &vm->ready_timer, CLOCK_MONOTONIC,
                              vm->spawn_usec + (uint64_t) sec * 1000000ULL, 0, on_ready_timeout, vm);
        if (r < 0) {
                log_vm_warning_errno(vm->name, r, "VM '%s': cannot arm the readiness deadline, ignoring: %m",
                                     vm->name);
                return;
        }
        (void) sd_event_source_set_description(vm->ready_timer, "vm-ready-timeout");
}

void vm_ready_timer_disarm(Vm *vm) {
        vm->ready_timer = sd_event_source_disable_unref(vm->ready_timer);
}

/* --- staged stop --- */

static int vm_signal(Vm *vm, int sig) {
        if (!vm->child_source)
                return -ESRCH;
        if (vm->adopted)
                return process_pidfd_signal(sd_event_source_get_io_fd(vm->child_source), sig);
        return sd_event_source_send_child_signal(vm->child_source, sig, NULL, 0);
}


static int on_stop_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Vm *vm = userdata;

        switch (vm->stop_stage) {
        case STOP_STAGE_POWERDOWN:
                log_vm_warning(vm->name, "VM '%s': the guest did not power off within %llu s, sending QMP quit",
                               vm->name, (unsigned long long) (vm->stop_timeout_usec / 1000000ULL));
                vm_stop_advance(vm, STOP_STAGE_QUIT);
                break;
        case STOP_STAGE_QUIT:
                log_vm_warning(vm->name, "VM '%s': QEMU did not exit after QMP quit, sending SIGTERM", vm->name);
                vm_stop_advance(vm, STOP_STAGE_SIGTERM);
                break;
        case STOP_STAGE_SIGTERM:
                log_vm_warning(vm->name, "VM '%s': QEMU did not exit after SIGTERM, sending SIGKILL", vm->name);
                vm_stop_advance(vm, STOP_STAGE_SIGKILL);
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
                                       (unsigned long long) (vm->ctx.config->qmp_timeout_usec /
                                                             1000000ULL));
                log_vm_warning(vm->name, "VM '%s': %s", vm->name, vm->last_error.message);
        } else if (error < 0 && error != -ECANCELED && error != -ECONNRESET)
                log_vm_warning(vm->name, "VM '%s': QMP %s failed: %s", vm->name, stop_stage_to_string(vm->stop_stage),
                               desc ? desc : strerror(-error));
}

void vm_stop_advance(Vm *vm, StopStage stage) {
        uint64_t wait = 0;
        int r;

        vm->stop_stage = stage;
        vm->stop_timer = sd_event_source_disable_unref(vm->stop_timer);

        switch (stage) {
        case STOP_STAGE_POWERDOWN:
                if (!vm->qmp_ready)
                        return vm_stop_advance(vm, STOP_STAGE_QUIT);
                log_vm_info(vm->name, "VM '%s': asking the guest to power off (ACPI), waiting up to %llu s", vm->name,
                            (unsigned long long) (vm->stop_timeout_usec / 1000000ULL));
                r = qmp_invoke(vm->qmp, "system_powerdown", NULL, vm->ctx.config->qmp_timeout_usec,
                               on_stop_reply, vm);
                if (r < 0)
                        return vm_stop_advance(vm, STOP_STAGE_QUIT);
                wait = vm->stop_timeout_usec;
                break;
        case STOP_STAGE_QUIT:
                if (!vm->qmp_ready)
                        return vm_stop_advance(vm, STOP_STAGE_SIGTERM);
                log_vm_info(vm->name, "VM '%s': sending QMP quit", vm->name);
                r = qmp_invoke(vm->qmp, "quit", NULL, vm->ctx.config->qmp_timeout_usec,
                               on_stop_reply, vm);
                if (r < 0)
                        return vm_stop_advance(vm, STOP_STAGE_SIGTERM);
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
                        return vm_stop_advance(vm, STOP_STAGE_SIGKILL);
                }
                if (r < 0)
                        log_vm_error_errno(vm->name, r, "VM '%s': SIGKILL failed: %m", vm->name);
                wait = stage == STOP_STAGE_SIGTERM ? STOP_SIGTERM_GRACE_USEC : STOP_SIGKILL_GRACE_USEC;
                break;
        }
        default:
                return;
        }

        r = sd_event_add_time_relative(vm->ctx.event, &vm->stop_timer, CLOCK_MONOTONIC, wait, 0,
                                       on_stop_timer, vm);
        if (r < 0)
                log_vm_error_errno(vm->name, r, "VM '%s': cannot arm the stop timer: %m", vm->name);
        else
                (void) sd_event_source_set_description(vm->stop_timer, "vm-stop");
}

/* --- QMP --- */

void vm_drives_clear(Vm *vm) {
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
        Console *c = vm_services_console(vm->services);
        HydraError err;

        hydra_error_clear(&err);
        if (!c || console_connect(c, vm->qemu_console_path, &err) < 0)
                log_vm_warning(vm->name, "VM '%s': the serial console is not connected: %s", vm->name,
                               c ? err.message : "no console");
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
                if (qmp_invoke(q, "cont", NULL, vm->ctx.config->qmp_timeout_usec, on_cont, vm) >= 0)
                        return;
        } else if (error >= 0 && status)
                log_vm_debug(vm->name, "VM '%s': adopted QEMU status %s", vm->name, status);
        vm_qmp_ready_done(vm);
}

static void vm_resume_guest(Vm *vm) {
        const uint64_t timeout = vm->ctx.config->qmp_timeout_usec;
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
                vm->stop_timeout_usec = vm->ctx.config->stop_timeout_usec;
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
                vm_services_ready_begin(vm->services);
                vm_services_up(vm->services);
        }
        if (streq(name, "GUEST_PANICKED") && !vm->guest_panicked) {
                /* Whatever QEMU's panic action (shutdown, pause), a panicked guest is over: end it here so the
                 * restart policy can act, and remember why it ended. */
                vm->guest_panicked = true;
                if (vm->state == VM_STATE_RUNNING)
                        (void) qmp_invoke(q, "quit", NULL, vm->ctx.config->qmp_timeout_usec,
                                          NULL, NULL);
        }

        log_vm_info(vm->name, "VM '%s': QMP event %s %s", vm->name, name, strempty(json));
        vm_emit(vm, &ev);
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
        if (sd_event_add_time_relative(vm->ctx.event, &vm->start_timer, CLOCK_MONOTONIC,
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
int vm_qemu_binary(Vm *vm, char **ret, HydraError *err) {
        const HydraConfig *cfg = vm->ctx.config;
        const char *configured = vm->spec.arch == ARCH_AARCH64 ? cfg->qemu_aarch64 : cfg->qemu_x86_64;
        const char *name = configured ? configured : qemu_binary_name(vm->spec.arch);
        int r;

        r = process_find_binary(name, ret);
        if (r < 0)
                return hydra_error_set(err, r, "cannot find QEMU '%s': %s", name, strerror(-r));
        return 0;
}

int vm_build_argv(Vm *vm, const ProvisionOutput *out, char ***ret_argv, HydraError *err) {
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
                .qmp_fd = 3, /* the listening sockets are the child's first passed fds (vm_launch) */
                .console_fd = 4,
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

/* Binds a unix stream socket at path (0600: only hydrad connects, whoever QEMU runs as) and listens; QEMU gets it
 * as an inherited fd, so it needs no directory it may write to. With ret_client_fd, also connects to it now: the
 * connection waits in the backlog until QEMU accepts it, so there is no polling for QEMU to be up. */
static int socket_listen(const char *what, const char *path, int *ret_listen_fd, int *ret_client_fd,
                         HydraError *err) {
        _cleanup_close_ int lfd = -EBADF, cfd = -EBADF;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };

        if (strlen(path) >= sizeof(sa.sun_path))
                return hydra_error_set(err, -ENAMETOOLONG, "%s socket path '%s' is too long", what, path);
        strcpy(sa.sun_path, path);
        (void) unlink(path);

        lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (lfd < 0)
                return hydra_error_set(err, -errno, "%s socket: %s", what, strerror(errno));
        if (bind(lfd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return hydra_error_set(err, -errno, "bind %s socket '%s': %s", what, path, strerror(errno));
        (void) chmod(path, 0600);
        if (listen(lfd, 1) < 0)
                return hydra_error_set(err, -errno, "listen on '%s': %s", path, strerror(errno));

        if (ret_client_fd) {
                cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
                if (cfd < 0)
                        return hydra_error_set(err, -errno, "%s socket: %s", what, strerror(errno));
                if (connect(cfd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                        return hydra_error_set(err, -errno, "connect to '%s': %s", path, strerror(errno));
                *ret_client_fd = TAKE_FD(cfd);
        }
        *ret_listen_fd = TAKE_FD(lfd);
        return 0;
}

/* A forward's host port that another process holds is said before QEMU is spawned, not as QEMU's "Could not set up
 * host forwarding rule". A bind test, as slirp binds (SO_REUSEADDR: a port with connections in TIME_WAIT is free);
 * a socket that cannot be made leaves the word to QEMU. Returns 0 or -EADDRINUSE / -EADDRNOTAVAIL with err. */
static int check_forwards_free(Vm *vm, HydraError *err) {
        for (size_t i = 0; i < vm->spec.n_forwards; i++) {
                const PortForward *f = &vm->spec.forwards[i];
                const char *addr = port_forward_host_addr(f);
                struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t) f->host_port) };
                _cleanup_close_ int fd = -EBADF;
                char msg[256];

                if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
                        continue; /* validated at RegisterVm */
                fd = socket(AF_INET, (f->protocol == FORWARD_UDP ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC, 0);
                if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &(int) { 1 }, sizeof(int)) < 0)
                        continue;
                if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) >= 0)
                        continue;
                if (errno == EADDRINUSE) {
                        qemu_hostfwd_busy_message(msg, sizeof(msg), f->protocol, addr, f->host_port, f->guest_port);
                        return hydra_error_set(err, -EADDRINUSE, "forwards[%zu]: %s", i, msg);
                }
                if (errno == EADDRNOTAVAIL)
                        return hydra_error_set(err, -EADDRNOTAVAIL, "forwards[%zu]: host address %s is not an address "
                                               "of this host (forward of host port %" PRIu32 " to guest port %" PRIu32
                                               ")", i, addr, f->host_port, f->guest_port);
        }
        return 0;
}

/* --- the scope and machined (machine.h) --- */

/* The spec's limits as a phrase for a log line: ", CPUQuota=150%, MemoryMax=1073741824" (+ 2: without the first
 * comma), "" for none. */
static void limits_phrase(const VmSpec *spec, char *buf, size_t size) {
        int n = 0;

        buf[0] = '\0';
        if (spec->resources.cpu_quota_percent > 0)
                n = snprintf(buf, size, ", CPUQuota=%" PRIu32 "%%", spec->resources.cpu_quota_percent);
        if (spec->resources.memory_max > 0 && n >= 0 && (size_t) n < size)
                (void) snprintf(buf + n, size - (size_t) n, ", MemoryMax=%" PRIu64, spec->resources.memory_max);
}

/* Sets machine_name and machine_scope for "hydra-ROLE". */
static void vm_machine_names(Vm *vm) {
        free(vm->machine_name);
        free(vm->machine_scope);
        vm->machine_scope = NULL;
        if (asprintf(&vm->machine_name, "hydra-%s", vm->name) < 0)
                vm->machine_name = NULL;
        else
                vm->machine_scope = machine_scope_name(vm->machine_name);
}

static void log_not_registered(Vm *vm, const char *why) {
        char limits[96];

        limits_phrase(&vm->spec, limits, sizeof(limits));
        log_vm_warning(vm->name, "VM '%s': QEMU (pid %d) is not in a scope of its own nor registered with "
                       "systemd-machined: %s; it runs on as hydrad's child%s%s%s", vm->name, (int) vm->pid, why,
                       limits[0] ? " (its resources are not applied: " : "", limits[0] ? limits + 2 : "",
                       limits[0] ? ")" : "");
}

static void on_machine_registered(MachineJob *j, int r, const char *path, const HydraError *err, void *userdata) {
        char limits[96];
        Vm *vm = userdata;

        vm->machine_job = machine_job_free(vm->machine_job);
        if (r < 0) {
                log_not_registered(vm, err->message);
                return;
        }
        vm_machine_names(vm);
        limits_phrase(&vm->spec, limits, sizeof(limits));
        log_vm_info(vm->name, "VM '%s': QEMU (pid %d) registered with systemd-machined as 'hydra-%s' (scope %s in "
                    "machine.slice%s)", vm->name, (int) vm->pid, vm->name,
                    vm->machine_scope ? vm->machine_scope : "?", limits);
}

/* Right after the spawn: QEMU goes to a scope of its own, registered with machined, asynchronously. Whatever
 * happens, QEMU runs on: a failure is one warning for this start. */
static void vm_machine_register(Vm *vm) {
        _cleanup_free_ char *name = NULL;
        MachineProperties props = {
                .cpu_quota_per_sec_usec = machine_cpu_quota_usec(vm->spec.resources.cpu_quota_percent),
                .memory_max = vm->spec.resources.memory_max,
                .gpu = vm->spec.devices.gpu,
        };
        HydraError err;
        char phrase[96];

        if (!vm->ctx.machined) {
                /* Said once at start-up; the limits a spec asks for, at each of its starts. */
                limits_phrase(&vm->spec, phrase, sizeof(phrase));
                if (phrase[0])
                        log_vm_warning(vm->name, "VM '%s': the spec's resources (%s) are not applied: %s, so QEMU "
                                       "(pid %d) runs without a scope of its own", vm->name, phrase + 2,
                                       vm->ctx.no_machined ? vm->ctx.no_machined : "hydrad does not use machined",
                                       (int) vm->pid);
                return;
        }
        hydra_error_clear(&err);
        if (asprintf(&name, "hydra-%s", vm->name) < 0) {
                name = NULL;
                log_not_registered(vm, "out of memory");
                return;
        }
        if (machine_register(vm->ctx.machined, name, vm->pid, &props, on_machine_registered, vm, &vm->machine_job,
                             &err) < 0)
                log_not_registered(vm, err.message);
}

/* --- who QEMU runs as (hydrad.conf qemu_user) --- */

static bool path_under(const char *path, const char *dir) {
        size_t n = strlen(dir);

        return path && strncmp(path, dir, n) == 0 && path[n] == '/';
}

static int add_reason(char ***reasons, const char *fmt, ...) _printf_(2, 3);
static int add_reason(char ***reasons, const char *fmt, ...) {
        _cleanup_free_ char *s = NULL;
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&s, fmt, ap);
        va_end(ap);
        if (r < 0) {
                s = NULL;
                return -ENOMEM;
        }
        return strv_push_copy(reasons, s);
}

/* A device or a file of the user's (not hydrad's: those are handed over, vm_qemu_hand_over()) that QEMU opens. */
static int check_reach(const HydraConfig *c, char ***reasons, const char *what, const char *path, int mode) {
        int r;

        if (isempty(path))
                return 0;
        r = path_access_as(path, c->qemu_uid, c->qemu_groups, c->n_qemu_groups, mode);
        if (r == -ENOMEM)
                return r;
        if (r == -ENOENT && streq(what, "devices.vsock"))
                return 0; /* no vhost-vsock here: QEMU says so, whoever it runs as */
        if (r < 0)
                return add_reason(reasons, "%s: %s is not %s by %s%s", what, path,
                                  mode & W_OK ? "readable and writable" : "readable", c->qemu_user,
                                  r == -EACCES ? "" : " (it cannot be looked at)");
        return 0;
}

int vm_qemu_user_decide(Vm *vm, const ProvisionOutput *out, char ***ret_reasons) {
        const HydraConfig *c = vm->ctx.config;
        _cleanup_strv_free_ char **reasons = NULL;
        const char *features[8];
        size_t n;
        int r;

        *ret_reasons = NULL;
        if (!c->qemu_user)
                return 0;
        n = qemu_root_features(&vm->spec, features, ELEMENTSOF(features));
        for (size_t i = 0; i < n; i++)
                if (strv_push_copy(&reasons, features[i]) < 0)
                        return -ENOMEM;
        /* What hydrad made in the VM's directory is handed over at launch; everything else must be reachable. */
        if ((r = check_reach(c, &reasons, "accel kvm", resolve_accel(vm->spec.accel) == ACCEL_KVM ? "/dev/kvm" : NULL,
                             R_OK | W_OK)) < 0 ||
            (r = check_reach(c, &reasons, "devices.vsock", vm->spec.devices.vsock ? "/dev/vhost-vsock" : NULL,
                             R_OK | W_OK)) < 0 ||
            (r = check_reach(c, &reasons, "kernel", out->kernel ? NULL : vm->spec.kernel, R_OK)) < 0 ||
            (r = check_reach(c, &reasons, "initrd", out->kernel ? NULL : vm->spec.initrd, R_OK)) < 0 ||
            (r = check_reach(c, &reasons, "disk", out->disk_path ? NULL : vm->spec.disk, R_OK | W_OK)) < 0 ||
            (r = check_reach(c, &reasons, "firmware.code", vm->spec.firmware_code, R_OK)) < 0 ||
            (r = check_reach(c, &reasons, "devices.shmem_path",
                             path_under(out->shmem_path, vm->state_dir) ? NULL : out->shmem_path, R_OK | W_OK)) < 0)
                return r;
        if (reasons) {
                *ret_reasons = TAKE_PTR(reasons);
                return 0;
        }
        return 1;
}

/* file, below top (a directory): top and every directory on the way get gid with g+x, file gid with g+r. */
static int let_group_read(const char *top, const char *file, gid_t gid) {
        _cleanup_free_ char *p = strdup(file);
        size_t n = strlen(top);
        struct stat st;

        if (!p)
                return -ENOMEM;
        if (strncmp(p, top, n) != 0 || p[n] != '/')
                return -EINVAL;
        for (char *slash = p + n; slash; slash = strchr(slash + 1, '/')) {
                *slash = '\0';
                if (lstat(p, &st) < 0)
                        return -errno;
                if (!S_ISDIR(st.st_mode))
                        return -ENOTDIR;
                if (lchown(p, (uid_t) -1, gid) < 0 || chmod(p, (st.st_mode & 07777) | S_IXGRP) < 0)
                        return -errno;
                *slash = '/';
        }
        if (lstat(file, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EINVAL;
        if (lchown(file, (uid_t) -1, gid) < 0 || chmod(file, (st.st_mode & 07777) | S_IRGRP) < 0)
                return -errno;
        return 0;
}

/* A disk hydrad made names, if any, a backing file in the download cache (an overlay on a cloud image) or in the
 * VM's unpacked artifact (a bare-kernel rootfs). Anything else was written into its header since: a QEMU running as
 * qemu_user owns the disk, and a compromised one could name /etc/shadow for a later QEMU run as root to read. */
static int vm_check_disk_backing(Vm *vm, HydraError *err) {
        const char *disk = vm->prepared.disk_path;
        _cleanup_free_ char *backing = NULL, *entry = NULL, *real = NULL, *artifact = NULL;
        int r;

        if (!path_under(disk, vm->state_dir))
                return 0;
        r = qcow2_backing_file(disk, &backing);
        if (r <= 0)
                return r < 0 ? hydra_error_set(err, r, "read the disk '%s': %s", disk, strerror(-r)) : 0;
        if (cache_disk_backing_entry(vm->ctx.cache_dir, disk, &entry) > 0)
                return 0;
        real = realpath(backing, NULL);
        if (asprintf(&artifact, "%s/artifact", vm->state_dir) < 0) {
                artifact = NULL;
                return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        if (real && path_under(real, artifact))
                return 0;
        return hydra_error_set(err, -EPERM, "the disk '%s' names a backing file outside hydrad's download cache and the "
                               "VM's artifact ('%s'): its header was changed after hydrad made it; not started "
                               "(remove the disk: the next start makes it again)", disk, backing);
}

/* What hydrad made for the VM goes to qemu_user as libvirt's DAC driver does, exactly and no more: the files QEMU
 * writes (disk, firmware variables, shared memory) become that user's; those it only reads (the seed, an unpacked
 * kernel and initrd, the base of an overlay in the cache or the artifact) get its group and g+r, the directories
 * down to them g+x. The VM's directory lets the group through (0710); spec.pb and state.json stay root's 0600. A
 * QEMU that runs as hydrad's user gets the directory back at 0700. */
static int vm_qemu_hand_over(Vm *vm, bool as_user, HydraError *err) {
        const HydraConfig *c = vm->ctx.config;
        const ProvisionOutput *out = &vm->prepared;
        const char *written[] = { out->disk_path, out->firmware_vars, out->shmem_path };
        const char *read[] = { out->seed_path, out->kernel, out->initrd };
        _cleanup_free_ char *entry = NULL, *base = NULL;
        int r;

        r = mkdir_private(vm->state_dir, as_user ? c->qemu_gid : (gid_t) -1);
        if (r < 0)
                return hydra_error_set(err, r, "'%s': %s", vm->state_dir, strerror(-r));
        if (!as_user)
                return 0;
        for (size_t i = 0; i < ELEMENTSOF(written); i++)
                if (path_under(written[i], vm->state_dir) && lchown(written[i], c->qemu_uid, c->qemu_gid) < 0)
                        return hydra_error_set(err, -errno, "hand '%s' to %s: %s", written[i], c->qemu_user,
                                               strerror(errno));
        for (size_t i = 0; i < ELEMENTSOF(read); i++)
                if (path_under(read[i], vm->state_dir) && (r = let_group_read(vm->state_dir, read[i], c->qemu_gid)) < 0)
                        return hydra_error_set(err, r, "let %s read '%s': %s", c->qemu_user, read[i], strerror(-r));

        /* The base of an overlay: in the cache (its entry and the directories down to it let the group through) or
         * in the VM's artifact; vm_check_disk_backing() made sure it is one of the two. */
        if (out->disk_path && qcow2_backing_file(out->disk_path, &base) > 0) {
                if (cache_disk_backing_entry(vm->ctx.cache_dir, out->disk_path, &entry) > 0)
                        r = let_group_read(entry, base, c->qemu_gid);
                else
                        r = path_under(base, vm->state_dir) ? let_group_read(vm->state_dir, base, c->qemu_gid) : 0;
                if (r < 0)
                        return hydra_error_set(err, r, "let %s read the base image '%s': %s", c->qemu_user, base,
                                               strerror(-r));
        }
        return 0;
}

int vm_launch(Vm *vm, HydraError *err) {
        _cleanup_close_ int lfd = -EBADF, cfd = -EBADF, console_fd = -EBADF, efd = -EBADF, pidfd = -EBADF;
        _cleanup_strv_free_ char **root_reasons = NULL;
        const HydraConfig *c = vm->ctx.config;
        sd_event *e = vm->ctx.event;
        ProcessUser user;
        ProcessSpawn spawn;
        bool as_user;
        pid_t pid;
        int r;

        r = check_forwards_free(vm, err);
        if (r < 0)
                return r;

        r = vm_check_disk_backing(vm, err);
        if (r < 0)
                return r;
        r = vm_qemu_user_decide(vm, &vm->prepared, &root_reasons);
        if (r < 0)
                return hydra_error_set(err, r, "out of memory");
        as_user = r > 0;
        r = vm_qemu_hand_over(vm, as_user, err);
        if (r < 0)
                return r;
        for (size_t i = 0; root_reasons && root_reasons[i]; i++)
                log_vm_info(vm->name, "VM '%s': QEMU runs as %s, not as %s: %s", vm->name,
                            geteuid() == 0 ? "root" : "hydrad's user", c->qemu_user, root_reasons[i]);

        r = vm_services_console_open(vm->services, err);
        if (r < 0)
                return hydra_error_prefix(err, "serial console: ");
        (void) unlink(vm->qemu_console_path);
        vm_services_ready_begin(vm->services);

        r = socket_listen("QMP", vm->qmp_path, &lfd, &cfd, err);
        if (r < 0)
                return r;
        r = socket_listen("console", vm->qemu_console_path, &console_fd, NULL, err);
        if (r < 0)
                return r;

        efd = open(vm->stderr_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0640);
        if (efd < 0)
                return hydra_error_set(err, -errno, "open '%s': %s", vm->stderr_path, strerror(errno));

        user = (ProcessUser) { .uid = c->qemu_uid, .gid = c->qemu_gid, .groups = c->qemu_groups,
                               .n_groups = c->n_qemu_groups };
        spawn = (ProcessSpawn) {
                .path = vm->argv[0],
                .argv = vm->argv,
                .pass_fds = (const int[]) { lfd, console_fd }, /* fds 3 and 4, as vm_build_argv() says */
                .n_pass_fds = 2,
                .stdout_fd = efd,
                .stderr_fd = efd,
                .user = as_user ? &user : NULL,
                /* Its VM's directory: what QEMU opens by a relative name is there, and `ls -l /proc/PID/cwd` says
                 * which hydrad's VM a QEMU is (its command line names no run or state path of ours any more). */
                .cwd = vm->state_dir,
        };
        r = process_spawn(&spawn, &pid, &pidfd, err);
        if (r < 0)
                return hydra_error_prefix(err, "spawn QEMU: ");

        vm->pid = pid;
        vm->spawn_usec = vm_now_usec(CLOCK_MONOTONIC);
        vm->guest_shutdown_seen = false;
        vm->guest_panicked = false;
        vm->ready_timed_out = false;
        vm->stop_stage = STOP_STAGE_NONE;
        (void) process_get_start_time(pid, &vm->start_ticks);

        r = sd_event_add_child_pidfd(e, &vm->child_source, pidfd, WEXITED, on_qemu_exit, vm);
        if (r < 0) {
                (void) process_pidfd_signal(pidfd, SIGKILL);
                (void) process_reap_async(e, TAKE_FD(pidfd));
                vm->pid = 0;
                return hydra_error_set(err, r, "watch QEMU (pid %d): %s", (int) pid, strerror(-r));
        }
        (void) sd_event_source_set_child_pidfd_own(vm->child_source, true);
        TAKE_FD(pidfd);
        (void) sd_event_source_set_description(vm->child_source, "qemu-exit");

        log_vm_info(vm->name, "VM '%s': QEMU started (pid %d, user %s)", vm->name, (int) pid,
                    as_user ? c->qemu_user : geteuid() == 0 ? "root" : "hydrad's");
        vm_machine_register(vm);
        vm_runtime_save(vm);
        vm_ready_timer_arm(vm);

        r = qmp_client_new(e, TAKE_FD(cfd), vm->name, QMP_HANDSHAKE_TIMEOUT_USEC, &qmp_callbacks, vm, &vm->qmp);
        if (r < 0)
                return hydra_error_set(err, r, "QMP client: %s", strerror(-r));
        return 0;
}


/* --- re-adoption --- */

static void vm_adopt_lost(Vm *vm, pid_t pid, const char *recorded_state, const char *why) {
        bool was_stopping = recorded_state && streq(recorded_state, "stopping");

        vm->last_exit = (VmExit) { .exited = true, .time_usec = vm_now_usec(CLOCK_REALTIME), .code = -1 };
        (void) snprintf(vm->last_exit.reason, sizeof(vm->last_exit.reason), "%s", was_stopping ? "quit" : "lost");
        if (!was_stopping)
                (void) hydra_error_set(&vm->last_error, HYDRA_ELAUNCH,
                                       "QEMU (pid %d) of the previous hydrad %s while hydrad was not running; its "
                                       "exit status is unknown", (int) pid, why);
        log_vm_warning(vm->name, "VM '%s': QEMU (pid %d) of the previous hydrad %s; not adopted", vm->name, (int) pid,
                       why);
        (void) vm_dispatch(vm, was_stopping ? VM_EVENT_LOST_STOPPING : VM_EVENT_LOST, was_stopping ? "stopped" : "lost");
}

/* A QEMU a previous hydrad spawned but died before recording: our QEMU binary, run as hydrad's user or qemu_user,
 * holding as fd 3 the QMP socket bound at our path (a socket is held only by whom it was given to). Returns its pid
 * or 0. */
static pid_t vm_find_unrecorded_qemu(Vm *vm) {
        _cleanup_free_ char *binary = NULL, *exe = NULL;
        HydraError err;
        uid_t uids[2];

        hydra_error_clear(&err);
        if (vm_qemu_binary(vm, &binary, &err) < 0)
                return 0;
        exe = realpath(binary, NULL);
        if (!exe)
                return 0;
        uids[0] = geteuid();
        uids[1] = vm->ctx.config->qemu_uid;
        return process_find_by_socket(exe, 3, vm->qmp_path, uids, vm->ctx.config->qemu_user ? 2 : 1);
}

int vm_adopt(Vm *vm) {
        _cleanup_(vm_runtime_record_done) VmRuntimeRecord rec = {};
        _cleanup_close_ int pidfd = -EBADF;
        uint64_t now_ticks = 0, mono, real;
        HydraError err;
        pid_t pid;
        int r;

        hydra_error_clear(&err);
        r = vm_runtime_load(vm, &rec);
        if (r < 0)
                log_vm_warning_errno(vm->name, r, "VM '%s': cannot read its runtime record: %m", vm->name);
        pid = rec.pid;

        /* The identity is pid + start time, checked again once we hold a pidfd: a pid reused in between would
         * be caught by the second check, and from then on the pidfd pins the process. */
        if (pid > 1)
                pidfd = process_pidfd_open(pid);
        if (pid <= 1 || pidfd < 0 || process_get_start_time(pid, &now_ticks) < 0 || now_ticks != rec.start_ticks) {
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
                        vm_runtime_record_done(&rec);
                        rec = (VmRuntimeRecord) { .pid = found, .start_ticks = found_ticks };
                        pid = found;
                } else {
                        pidfd = safe_close(pidfd);
                        if (pid > 1)
                                vm_adopt_lost(vm, pid, rec.state, why);
                        return 0;
                }
        }
        if (rec.qmp_socket && !streq(rec.qmp_socket, vm->qmp_path))
                log_vm_warning(vm->name, "VM '%s': the recorded QMP socket '%s' is not this hydrad's '%s'", vm->name,
                               rec.qmp_socket, vm->qmp_path);

        vm->pid = pid;
        vm->start_ticks = rec.start_ticks;
        vm->adopted = true;
        vm->resume_stop = rec.state && streq(rec.state, "stopping");
        mono = vm_now_usec(CLOCK_MONOTONIC);
        real = vm_now_usec(CLOCK_REALTIME);
        vm->spawn_usec = rec.spawn_realtime_usec > 0 && rec.spawn_realtime_usec <= real &&
                                         real - rec.spawn_realtime_usec < mono
                                 ? mono - (real - rec.spawn_realtime_usec)
                                 : mono;
        vm->prepared.disk_path = TAKE_PTR(rec.disk_path);
        vm->prepared.seed_path = TAKE_PTR(rec.seed_path);
        if (rec.ready_since_usec > 0)
                vm_services_restore_ready(vm->services, rec.ready_since_usec);
        else
                vm_services_ready_begin(vm->services);
        if (vm_services_console_open(vm->services, &err) < 0)
                log_vm_warning(vm->name, "VM '%s': serial console: %s", vm->name, err.message);

        r = sd_event_add_io(vm->ctx.event, &vm->child_source, pidfd, EPOLLIN, on_adopted_exit, vm);
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

        /* Nothing to ask machined: a QEMU it registered is still in its scope, which GetVm shows again. */
        vm_machine_names(vm);
        if (!vm->machine_scope || machine_pid_in_scope(pid, vm->machine_scope) <= 0) {
                vm->machine_name = mfree(vm->machine_name);
                vm->machine_scope = mfree(vm->machine_scope);
        }
        log_vm_info(vm->name, "VM '%s': adopting QEMU (pid %d) of the previous hydrad%s%s%s", vm->name, (int) pid,
                    vm->resume_stop ? "; it was stopping" : "", vm->machine_scope ? "; it is in its scope " : "",
                    strempty(vm->machine_scope));
        (void) vm_dispatch(vm, VM_EVENT_ADOPT, "adopting");
        /* Not ready yet under the previous hydrad: the deadline still runs from its start. */
        if (!vm->resume_stop && vm_state_has_process(vm->state))
                vm_ready_timer_arm(vm);
        return 1;
}

/* The ADOPT action. QEMU's QMP server accepts a new client once the old one (the previous hydrad) is gone. A QEMU
 * that does not answer in time goes the way of a failed start: stopped in stages, never left behind. */
int vm_adopt_qmp(Vm *vm, HydraError *err) {
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
        r = qmp_client_new(vm->ctx.event, TAKE_FD(fd), vm->name, ADOPT_QMP_TIMEOUT_USEC,
                           &qmp_callbacks, vm, &vm->qmp);
        if (r < 0)
                return hydra_error_set(err, r, "adopting QEMU (pid %d): QMP client: %s", (int) vm->pid, strerror(-r));
        return 0;
}

